"""The replay tool on logs made here: a match of bot brains, recorded as a room would."""

from __future__ import annotations

import json
from pathlib import Path

from battle.config import RosterEntry
from battle.frames import Frame, FrameInput
from battle.inputlog import (
    ChecksumRecord,
    DesyncRecord,
    EndRecord,
    FrameBatch,
    LogHeader,
    PlayerEvent,
    PlayerEventKind,
    Record,
    ResultRecord,
    encode_header,
    encode_record,
    read_log,
)
from sim.game import Game, encode_command
from sim.gamebot import BotBrain
from sim.replay import AGREED, desync, export_lines, info, verify
from sim.timeline import draw_timeline

ROSTER = tuple(RosterEntry(s, 100 + s, s % 2) for s in range(4))
SEED = 0xC0FFEE


def _match(frames: int = 300, desync_slot: int | None = None, desync_at: int = 0) -> bytes:
    """A log of `frames` frames played by bot brains, with agreed hashes every 10 frames and,
    when asked, a desync record for a slot whose state was perturbed at `desync_at`."""
    game = Game(SEED, ROSTER)
    brains = [BotBrain(e.slot, e.slot) for e in ROSTER]
    seqs = [0] * len(ROSTER)
    header = LogHeader(
        match_id=7, room_id=9, seed=SEED, tick_rate=15, roster=ROSTER, config={},
        server_version="test", start_time=0.0,
    )  # fmt: skip
    records: list[Record] = [PlayerEvent(0, e.slot, e.player_id, PlayerEventKind.CONNECTED)
                             for e in ROSTER]  # fmt: skip
    played: list[Frame] = []
    for number in range(1, frames + 1):
        inputs = []
        for brain in brains:
            command = brain.decide(game)
            if command is not None:
                seqs[brain.slot] += 1
                inputs.append(FrameInput(brain.slot, seqs[brain.slot], encode_command(command)))
        frame = Frame(number, tuple(inputs))
        game.step(frame)
        played.append(frame)
        if number % 10 == 0:
            records.append(FrameBatch(played[0].number, tuple(played)))
            played = []
            records.append(ChecksumRecord(number, AGREED, game.state_hash()))
        if desync_slot is not None and number == desync_at:
            if played:
                records.append(FrameBatch(played[0].number, tuple(played)))
                played = []
            twin = Game.from_state(game.encode_state())
            twin.perturb(desync_slot)
            hashes = tuple((e.slot, game.state_hash()) for e in ROSTER if e.slot != desync_slot)
            records.append(
                DesyncRecord(number, game.state_hash(), (desync_slot,),
                             (*hashes, (desync_slot, twin.state_hash())))
            )  # fmt: skip
    if played:
        records.append(FrameBatch(played[0].number, tuple(played)))
    records += [ResultRecord(frames, {"winner": 0}), EndRecord(frames, "result")]
    return encode_header(header) + b"".join(encode_record(r) for r in records)


def test_verify_passes_on_a_clean_log_and_fails_on_altered_frames() -> None:
    data = _match()
    report = verify(read_log(data))
    assert report.ok and report.frames == 300 and report.checked == 30
    log = read_log(data)
    first = next(r for r in log.records if isinstance(r, FrameBatch))
    frames = list(first.frames)
    k = next(i for i, f in enumerate(frames) if f.inputs)
    victim = frames[k].inputs[0]
    changed = FrameInput(victim.slot, victim.seq, encode_command_elsewhere(victim.data))
    frames[k] = Frame(frames[k].number, (changed, *frames[k].inputs[1:]))
    altered_records = [
        FrameBatch(first.first_frame, tuple(frames)) if r is first else r for r in log.records
    ]
    altered = encode_header(log.header) + b"".join(encode_record(r) for r in altered_records)
    bad = verify(read_log(altered))
    assert not bad.ok and bad.mismatches[0][0] >= frames[k].number


def encode_command_elsewhere(data: bytes) -> bytes:
    """A different valid command: a move to the far corner."""
    from sim.game import Move  # noqa: PLC0415

    other = encode_command(Move(7999, 7999))
    return other if other != data else encode_command(Move(1, 1))


def test_info_and_export_describe_the_log() -> None:
    log = read_log(_match(frames=40))
    data = info(log)
    assert data["frames"] == 40 and data["duration_seconds"] == 40 / 15
    assert [e["slot"] for e in data["roster"]] == [0, 1, 2, 3]
    assert sum(e["inputs"] for e in data["roster"]) == sum(len(f.inputs) for f in log.frames())
    assert data["end"] == {"frame": 40, "reason": "result"} and len(data["events"]) == 4
    lines = [json.loads(line) for line in export_lines(log)]
    assert [x["frame"] for x in lines] == list(range(1, 41))
    first = next(f for f in log.frames() if f.inputs)
    exported = lines[first.number - 1]["inputs"][0]
    assert exported == [first.inputs[0].slot, first.inputs[0].seq, first.inputs[0].data.hex()]


def test_desync_names_frame_and_sides_and_diffs_a_dump(tmp_path: Path) -> None:
    log = read_log(_match(frames=80, desync_slot=2, desync_at=33))
    game = Game(SEED, ROSTER)
    for frame in log.frames()[:33]:
        game.step(frame)
    game.perturb(2)
    dump = {"match_id": 7, "slot": 2, "frame": 33, "state": game.dump()}
    (tmp_path / "7-slot2-frame33.json").write_text(json.dumps(dump))
    (report,) = desync(log, tmp_path)
    assert (report.frame, report.minority_slots, report.majority_slots) == (33, [2], [0, 1, 3])
    assert report.reference_side == "majority"
    assert [d.path for d in report.diffs[2]] == ["heroes[2].deaths"]
    (no_dumps,) = desync(log, tmp_path / "none")
    assert no_dumps.missing_dumps == [2] and not no_dumps.diffs
    assert desync(read_log(_match(frames=20))) == []


def test_timeline_draws_a_png(tmp_path: Path) -> None:
    log = read_log(_match(frames=60, desync_slot=1, desync_at=30))
    (tmp_path / "7-slot0-latency.json").write_text(json.dumps({"latency_ms": [70.0] * 500}))
    out = tmp_path / "t.png"
    assert draw_timeline(log, out, tmp_path) == "latency"
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
