"""`framesync replay timeline`: one picture of a match, for the desync post-mortem.

Per player: input latency over the match (from the latency traces bots write beside their
state dumps; without them, inputs per second from the log), connection events as markers,
and every recorded desync as a vertical line. Needs matplotlib (the `replay` extra).
"""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

from battle.inputlog import DesyncRecord, LogContents, PlayerEvent


def latency_trace(directory: Path, match_id: int, slot: int) -> list[float] | None:
    """Input latencies (ms) of one player in input order, as `framesync bots` writes them."""
    path = directory / f"{match_id}-slot{slot}-latency.json"
    if not path.exists():
        return None
    data = json.loads(path.read_text())
    values = data.get("latency_ms") if isinstance(data, dict) else None
    return [float(v) for v in values] if isinstance(values, list) else None


def draw_timeline(log: LogContents, out: Path, traces: Path | None = None) -> str:
    """Write the PNG; returns what the latency panel shows ("latency" or "inputs/s")."""
    try:
        import matplotlib  # noqa: PLC0415 - optional extra

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt  # noqa: PLC0415
    except ImportError as exc:
        raise RuntimeError("timeline needs matplotlib: pip install 'framesync[replay]'") from exc
    h = log.header
    rate = h.tick_rate
    landed: dict[int, list[int]] = defaultdict(list)  # slot -> frame of each input, in seq order
    for frame in log.frames():
        for i in sorted(frame.inputs, key=lambda i: (i.slot, i.seq)):
            landed[i.slot].append(frame.number)
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(12, 7), sharex=True)
    shown = "inputs/s"
    for entry in h.roster:
        frames = landed.get(entry.slot, [])
        trace = latency_trace(traces, h.match_id, entry.slot) if traces else None
        if trace:
            n = min(len(trace), len(frames))
            top.plot([f / rate for f in frames[:n]], trace[:n], lw=0.7, label=f"slot {entry.slot}")
            shown = "latency"
        else:
            per_second: dict[int, int] = defaultdict(int)
            for f in frames:
                per_second[f // rate] += 1
            xs = sorted(per_second)
            top.plot(xs, [per_second[x] for x in xs], lw=0.7, label=f"slot {entry.slot}")
    top.set_ylabel("input → frame latency (ms)" if shown == "latency" else "inputs per second")
    top.legend(fontsize=6, ncol=5)
    events = [r for r in log.records if isinstance(r, PlayerEvent)]
    for e in events:
        marker = {"connected": "^", "reconnected": "o", "disconnected": "v"}.get(str(e.kind), "x")
        bottom.scatter([e.frame / rate], [e.slot], marker=marker, s=30)
    bottom.set_ylabel("slot: ^ connected, v disconnected, o reconnected")
    bottom.set_xlabel("match time (s)")
    for d in (r for r in log.records if isinstance(r, DesyncRecord)):
        for ax in (top, bottom):
            ax.axvline(d.frame / rate, color="red", lw=1.2, ls="--")
        top.annotate(
            f"desync f{d.frame} slots {list(d.minority_slots)}",
            (d.frame / rate, top.get_ylim()[1]),
            color="red",
            fontsize=7,
            va="top",
        )
    fig.suptitle(f"match {h.match_id} (room {h.room_id}), {log.last_frame} frames at {rate} Hz")
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return shown
