"""`framesync bots --up` and `framesync replay` end to end: real processes, real sockets.

Bots play whole matches of the reference game through the lobby and the rooms, under loss
and cable pulls, with no desync; an injected desync is found by the room and, from the input
log and the bots' state dumps, by the replay tool; the replay tool's verify passes on the
clean log and fails on one whose frames were altered.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from battle.frames import Frame, FrameInput
from battle.inputlog import FrameBatch, LogContents, encode_header, encode_record, read_log_file

ROOT = Path(__file__).resolve().parent.parent


def _framesync(*args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "sim.cli", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def _bots(data_dir: Path, *args: str) -> dict[str, Any]:
    result = _framesync("bots", "--up", "--quiet", "--json", "--data-dir", str(data_dir), *args)
    assert result.stdout, result.stderr
    report: dict[str, Any] = json.loads(result.stdout)
    report["exit_code"] = result.returncode
    report["stderr"] = result.stderr
    return report


def test_bots_play_two_matches_under_loss_and_reconnects_without_desync(tmp_path: Path) -> None:
    report = _bots(
        tmp_path / "run",
        "--bots", "20", "--matches", "2", "--seconds", "15", "--loss", "5",
        "--reconnect-every", "5", "--seed", "7",
    )  # fmt: skip
    assert report["exit_code"] == 0, report
    assert report["ok"] and report["matches_completed"] == 2
    assert report["desyncs_detected"] == [] and report["desyncs_injected"] == 0
    assert report["reconnects"] >= 1 and report["catchup_seconds"]
    assert report["latency"]["count"] > 100
    assert len(report["logs"]) == 2
    for path in report["logs"]:
        verified = _framesync("replay", "verify", path)
        assert verified.returncode == 0, verified.stdout + verified.stderr
        assert verified.stdout.startswith("OK")


def test_injected_desync_is_named_by_the_room_and_the_replay_tool(tmp_path: Path) -> None:
    slot, frame = 2, 45
    report = _bots(
        tmp_path / "run",
        "--bots", "6", "--mode", "3v3", "--matches", "1", "--seconds", "8",
        "--desync-player", str(slot), "--desync-at", str(frame), "--seed", "3",
    )  # fmt: skip
    assert report["desyncs_injected"] == 1
    assert [(d["frame"], d["slots"]) for d in report["desyncs_detected"]] == [(frame, [slot])]
    assert report["exit_code"] == 0, report
    (log_path,) = report["logs"]
    log = read_log_file(log_path)
    recorded = _framesync("replay", "info", "--json", log_path)
    desyncs = json.loads(recorded.stdout)["desyncs"]
    assert [(d["frame"], d["minority"]) for d in desyncs] == [(frame, [slot])]
    dumps = Path(report["logs"][0]).parents[3] / "dumps"
    found = _framesync("replay", "desync", "--json", "--dumps", str(dumps), log_path)
    (desync,) = json.loads(found.stdout)
    assert (desync["frame"], desync["minority_slots"]) == (frame, [slot])
    assert desync["reference_side"] == "majority"
    diffs = desync["diffs"][str(slot)]
    assert diffs, "the desynced bot's dump must differ from the reference state"
    assert log.header.match_id and found.returncode == 0


def test_replay_verify_fails_on_altered_frames(tmp_path: Path) -> None:
    report = _bots(
        tmp_path / "run",
        "--bots",
        "2",
        "--mode",
        "1v1",
        "--matches",
        "1",
        "--seconds",
        "6",
        "--seed",
        "5",
    )
    assert report["exit_code"] == 0, report
    (log_path,) = report["logs"]
    assert _framesync("replay", "verify", log_path).returncode == 0
    altered = tmp_path / "altered.fslog"
    altered.write_bytes(_alter_first_input(read_log_file(log_path)))
    result = _framesync("replay", "verify", str(altered))
    assert result.returncode == 1 and result.stdout.startswith("MISMATCH"), result.stdout
    exported = _framesync("replay", "export", log_path)
    lines = [json.loads(line) for line in exported.stdout.splitlines()]
    assert [x["frame"] for x in lines] == list(range(1, len(lines) + 1))


def _alter_first_input(log: LogContents) -> bytes:
    """The same log with the first input's first byte changed (a move to elsewhere)."""
    out = [encode_header(log.header)]
    done = False
    for record in log.records:
        if isinstance(record, FrameBatch) and not done:
            frames = list(record.frames)
            for k, f in enumerate(frames):
                if f.inputs:
                    first = f.inputs[0]
                    data = bytes([first.data[0]]) + bytes(b ^ 0x55 for b in first.data[1:])
                    changed = FrameInput(first.slot, first.seq, data)
                    frames[k] = Frame(f.number, (changed, *f.inputs[1:]))
                    done = True
                    break
            out.append(encode_record(FrameBatch(record.first_frame, tuple(frames))))
            continue
        out.append(encode_record(record))
    assert done, "the log has no input to alter"
    return b"".join(out)
