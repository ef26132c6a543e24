"""The replay tool: what a match's input log says, and where and why clients desynced.

An input log (docs/INPUTLOG.md) holds the seed, the roster and every frame, so the reference
game (`sim/game.py`) can be re-run over it exactly. `verify` re-runs it and checks every state
hash the room recorded; `desync` names the first divergent frame, who was on each side, and,
from the state dumps clients wrote when the room announced the desync, which fields differ.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from battle.inputlog import (
    ChecksumRecord,
    DesyncRecord,
    EndRecord,
    LogContents,
    PlayerEvent,
    ResultRecord,
)
from sim.game import FieldDiff, Game, diff_dumps

AGREED = 255
"""The checksum slot the room writes for a hash every reporting slot agreed on."""


def info(log: LogContents) -> dict[str, Any]:
    """Header, roster, duration, inputs per slot and every non-frame record, as plain data."""
    h = log.header
    frames = log.frames()
    inputs = Counter(i.slot for f in frames for i in f.inputs)
    end = next((r for r in log.records if isinstance(r, EndRecord)), None)
    result = next((r for r in log.records if isinstance(r, ResultRecord)), None)
    return {
        "match_id": h.match_id,
        "room_id": h.room_id,
        "seed": h.seed,
        "tick_rate": h.tick_rate,
        "server_version": h.server_version,
        "start_time": h.start_time,
        "roster": [
            {"slot": e.slot, "player_id": e.player_id, "team": e.team, "inputs": inputs[e.slot]}
            for e in h.roster
        ],
        "frames": log.last_frame,
        "duration_seconds": log.last_frame / h.tick_rate,
        "checksums": sum(1 for r in log.records if isinstance(r, ChecksumRecord)),
        "events": [
            {"frame": r.frame, "slot": r.slot, "kind": str(r.kind), "detail": r.detail}
            for r in log.records
            if isinstance(r, PlayerEvent)
        ],
        "desyncs": [
            {"frame": r.frame, "minority": list(r.minority_slots), "hashes": dict(r.hashes)}
            for r in log.records
            if isinstance(r, DesyncRecord)
        ],
        "result": None
        if result is None
        else {
            "frame": result.frame,
            "result": result.result,
            "dissenters": list(result.dissenters),
        },
        "end": None if end is None else {"frame": end.frame, "reason": end.reason},
        "truncated": log.truncated,
    }


@dataclass
class Verification:
    frames: int = 0
    checked: int = 0
    mismatches: list[tuple[int, int, int, int]] = field(default_factory=list)
    """(frame, slot, recorded hash, re-run hash)."""

    @property
    def ok(self) -> bool:
        return not self.mismatches and self.checked > 0


def _hashes_by_frame(log: LogContents) -> dict[int, list[ChecksumRecord]]:
    by_frame: dict[int, list[ChecksumRecord]] = {}
    for r in log.records:
        if isinstance(r, ChecksumRecord):
            by_frame.setdefault(r.frame, []).append(r)
    return by_frame


def verify(log: LogContents, *, max_mismatches: int = 20) -> Verification:
    """Re-run the reference game over every frame; compare with every agreed hash recorded.

    Hashes of slots on the losing side of a recorded desync are not the truth and are skipped:
    the agreed (slot 255) hashes are what the room judged.
    """
    report = Verification()
    recorded = _hashes_by_frame(log)
    game = Game(log.header.seed, log.header.roster)
    for frame in log.frames():
        game.step(frame)
        report.frames += 1
        for record in recorded.get(frame.number, ()):
            if record.slot != AGREED:
                continue
            report.checked += 1
            value = game.state_hash()
            if value != record.hash and len(report.mismatches) < max_mismatches:
                report.mismatches.append((frame.number, record.slot, record.hash, value))
    return report


@dataclass
class DesyncReport:
    frame: int
    majority_hash: int
    majority_slots: list[int]
    minority_slots: list[int]
    hashes: dict[int, int]
    reference_hash: int | None
    """The re-run's hash at that frame (None if the log ends before it)."""
    reference_side: str
    """Which side the reference game agrees with: "majority", "minority" or "neither"."""
    diffs: dict[int, list[FieldDiff]] = field(default_factory=dict)
    """Per minority slot with a dump: its fields that differ from the reference state."""
    missing_dumps: list[int] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {
            "frame": self.frame,
            "majority_hash": self.majority_hash,
            "majority_slots": self.majority_slots,
            "minority_slots": self.minority_slots,
            "hashes": {str(k): v for k, v in self.hashes.items()},
            "reference_hash": self.reference_hash,
            "reference_side": self.reference_side,
            "diffs": {
                str(slot): [{"path": d.path, "reference": d.a, "client": d.b} for d in diffs]
                for slot, diffs in self.diffs.items()
            },
            "missing_dumps": self.missing_dumps,
        }


def desync(log: LogContents, dumps: Path | None = None) -> list[DesyncReport]:
    """Every desync the room recorded, checked against a re-run of the reference game."""
    records = [r for r in log.records if isinstance(r, DesyncRecord)]
    if not records:
        return []
    wanted = {r.frame for r in records}
    states: dict[int, tuple[int, dict[str, object]]] = {}
    game = Game(log.header.seed, log.header.roster)
    for frame in log.frames():
        game.step(frame)
        if frame.number in wanted:
            states[frame.number] = (game.state_hash(), game.dump())
        if frame.number >= max(wanted):
            break
    reports = []
    for r in records:
        hashes = dict(r.hashes)
        minority = sorted(r.minority_slots)
        majority = sorted(s for s in hashes if s not in r.minority_slots)
        ref_hash, ref_dump = states.get(r.frame, (None, None))
        if ref_hash is None:
            side = "neither"
        elif ref_hash == r.majority_hash:
            side = "majority"
        elif any(hashes.get(s) == ref_hash for s in minority):
            side = "minority"
        else:
            side = "neither"
        report = DesyncReport(r.frame, r.majority_hash, majority, minority, hashes, ref_hash, side)
        if dumps is not None and ref_dump is not None:
            for slot in minority:
                dump = _load_dump(dumps, log.header.match_id, slot, r.frame)
                if dump is None:
                    report.missing_dumps.append(slot)
                else:
                    report.diffs[slot] = diff_dumps(ref_dump, dump)
        reports.append(report)
    return reports


def _load_dump(directory: Path, match_id: int, slot: int, frame: int) -> dict[str, object] | None:
    path = directory / f"{match_id}-slot{slot}-frame{frame}.json"
    if not path.exists():
        return None
    data = json.loads(path.read_text())
    state = data.get("state") if isinstance(data, dict) else None
    return state if isinstance(state, dict) else None


def export_lines(log: LogContents) -> list[str]:
    """Frames as JSON lines: {"frame": n, "inputs": [[slot, seq, hex], ...]}."""
    return [
        json.dumps({"frame": f.number, "inputs": [[i.slot, i.seq, i.data.hex()] for i in f.inputs]})
        for f in log.frames()
    ]
