"""`framesync bench reconnect`: correctness of a small run (no wall-clock thresholds)."""

from __future__ import annotations

import json

from battle.config import RoomConfig, RosterEntry
from battle.frames import FrameInput
from battle.messages import RoomState, encode_frame
from battle.peer import CoreSink
from battle.room import Room
from sim.bench_reconnect import fast_forward, generate_history, run_reconnect_bench


def test_history_is_seeded_and_has_the_asked_density() -> None:
    def make() -> list[list[FrameInput]]:
        return generate_history(
            frames=3000, players=4, hz=15, inputs_per_second=4.0, input_bytes=8, seed=7
        )

    first = make()
    assert first == make()
    inputs = [item for frame in first for item in frame]
    assert all(len(item.data) == 8 for item in inputs)
    per_player_second = len(inputs) / 4 / (3000 / 15)
    assert 3.5 < per_player_second < 4.5
    for slot in range(4):
        seqs = [item.seq for item in inputs if item.slot == slot]
        assert seqs == list(range(1, len(seqs) + 1))


def test_fast_forward_closes_frames_through_the_room() -> None:
    sink = CoreSink()
    roster = tuple(RosterEntry(s, 100 + s, s % 2) for s in range(3))
    config = RoomConfig(tick_rate=15, max_duration=3600, empty_timeout=3600)
    room = Room(1, 2, 3, roster, config, 1000.0, ticket_key=bytes(32), clock_offset=0.0, sink=sink)
    history = generate_history(
        frames=600, players=3, hz=15, inputs_per_second=6.0, input_bytes=5, seed=1
    )
    fast_forward(room, history, 1000.0)
    assert room.state is RoomState.RUNNING
    assert room.last_frame == 600
    assert [f.number for f in room.frames] == list(range(1, 601))
    assert [list(f.inputs) for f in room.frames] == history
    assert room.encoded_frames == [encode_frame(f) for f in room.frames]
    assert list(room.frame_times) == sorted(room.frame_times)
    assert room.frame_times[-1] <= 1000.0
    assert sink.stats["frames_closed"] == 600
    assert sink.stats["tick_overruns"] == 0
    assert room.peers[1].input_ack == max(i.seq for f in history for i in f if i.slot == 1)


def test_small_run_catches_up_exactly_from_frame_zero_and_from_a_snapshot() -> None:
    report = run_reconnect_bench(
        minutes=1.0,
        players=4,
        hz=15,
        inputs_per_second=4.0,
        input_bytes=8,
        snapshot_bytes=1024,
        seed=3,
        repeats=1,
    )
    assert report.ok
    assert report.frames == 900
    a, b = report.frame0, report.snapshot
    assert a.frames_match and b.frames_match
    assert a.start_frame == 0 and a.frames_received >= 900 - report.redundancy_frames
    assert b.start_frame == 450 and b.snapshot_bytes == 1024
    assert b.frames_received >= 450 - report.redundancy_frames
    assert b.bytes < a.bytes
    assert a.bytes > report.log_bytes // 2  # random inputs barely compress

    data = json.loads(json.dumps(report.as_dict()))
    for key in (
        "minutes",
        "players",
        "hz",
        "frames",
        "inputs_per_second",
        "input_bytes",
        "log_bytes",
        "catchup_rate",
        "frame0",
        "snapshot",
        "frame0_seconds",
        "snapshot_seconds",
        "goal_seconds",
        "goal_met",
        "ok",
    ):
        assert key in data, key
    for case in ("frame0", "snapshot"):
        for key in ("seconds", "bytes", "datagrams", "mb_per_s", "frames_match"):
            assert key in data[case], (case, key)
    text = report.render()
    assert "from frame 0" in text and "from snapshot" in text and "goal" in text
