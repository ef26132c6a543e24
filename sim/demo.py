"""`framesync demo`: one whole match in memory, with its input log, and what everyone saw."""

from __future__ import annotations

import io
import statistics
from dataclasses import asdict, dataclass, field

from battle import __version__
from battle.config import RoomConfig
from battle.inputlog import (
    read_log,
)
from battle.matchlog import MatchLog
from sim.impair import LinkProfile
from sim.localmatch import UNIX_EPOCH_OFFSET, LocalMatch


@dataclass(frozen=True, slots=True)
class DemoSummary:
    seed: int
    players: int
    tick_rate: int
    rtt_ms: float
    loss_pct: float
    frames: int
    inputs_sent: int
    inputs_landed: int
    clients_identical: int
    """Clients whose frame sequence equals the room's log exactly."""
    frame_latency_ms: dict[str, float]
    input_latency_ms: dict[str, float]
    over_300ms_pct: float
    down_bytes_per_player_s: float
    up_bytes_per_player_s: float
    log_bytes: int
    log_frames: int
    drops: dict[str, int] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return (
            self.clients_identical == self.players
            and self.inputs_landed == self.inputs_sent
            and self.log_frames == self.frames > 0
        )

    def as_dict(self) -> dict[str, object]:
        out = asdict(self)
        out["ok"] = self.ok
        return out

    def render(self) -> str:
        fl, il = self.frame_latency_ms, self.input_latency_ms
        lines = [
            f"framesync {__version__} demo: {self.players} players, {self.tick_rate} Hz, "
            f"RTT {self.rtt_ms:.0f} ms, {self.loss_pct:.1f}% loss each way, seed {self.seed}",
            f"  frames closed         {self.frames}",
            f"  clients identical     {self.clients_identical}/{self.players} "
            "(frame sequence equal to the room's log)",
            f"  inputs landed         {self.inputs_landed}/{self.inputs_sent} (each exactly once)",
            f"  frame close→client    p50 {fl['p50']:.1f} ms  p99 {fl['p99']:.1f} ms  "
            f"max {fl['max']:.1f} ms  over 300 ms {self.over_300ms_pct:.3f}%",
            f"  input→frame echo      p50 {il['p50']:.1f} ms  p99 {il['p99']:.1f} ms  "
            f"max {il['max']:.1f} ms",
            f"  bandwidth per player  down {self.down_bytes_per_player_s:.0f} B/s  "
            f"up {self.up_bytes_per_player_s:.0f} B/s",
            f"  input log             {self.log_bytes} bytes, {self.log_frames} frames read back",
            f"  host drops            {self.drops or 'none'}",
            "  result                " + ("OK" if self.ok else "MISMATCH"),
        ]
        return "\n".join(lines)


class _KeptBytesIO(io.BytesIO):
    """An in-memory log file whose contents survive close()."""

    kept = b""

    def close(self) -> None:
        self.kept = self.getvalue()
        super().close()


def _percentiles(values: list[float]) -> dict[str, float]:
    if not values:
        return {"p50": 0.0, "p99": 0.0, "max": 0.0}
    ordered = sorted(values)
    return {
        "p50": statistics.median(ordered) * 1000,
        "p99": ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))] * 1000,
        "max": ordered[-1] * 1000,
    }


def run_demo(
    *, seed: int, players: int, seconds: float, tick_rate: int, rtt: float, loss: float
) -> DemoSummary:
    config = RoomConfig(tick_rate=tick_rate, max_duration=seconds)
    profile = LinkProfile.from_rtt(rtt, jitter=rtt / 7, loss=loss)
    match = LocalMatch(seed=seed, players=players, config=config, profile=profile)
    log_file = _KeptBytesIO()
    matchlog = MatchLog(log_file, match.room, 0.0, start_time=UNIX_EPOCH_OFFSET)
    match.event_hooks.append(matchlog.on_event)
    match.stop_inputs(seconds - 2.0)
    match.run_until(seconds + config.end_linger + 1.0)
    matchlog.close(match.now)
    log_frames = read_log(log_file.kept).frames()

    landed = sum(len(f.inputs) for f in match.server_frames)
    frame_lat = match.frame_latencies()
    input_lat = [x for p in match.players for x in p.client.input_latencies]
    stats = match.host.stats
    duration = max(match.closed_at[-1] if match.closed_at else 1.0, 1.0)
    return DemoSummary(
        seed=seed,
        players=players,
        tick_rate=tick_rate,
        rtt_ms=rtt * 1000,
        loss_pct=loss * 100,
        frames=len(match.server_frames),
        inputs_sent=sum(len(p.sent) for p in match.players),
        inputs_landed=landed,
        clients_identical=sum(p.frames == log_frames for p in match.players),
        frame_latency_ms=_percentiles(frame_lat),
        input_latency_ms=_percentiles(input_lat),
        over_300ms_pct=100 * sum(x > 0.3 for x in frame_lat) / max(1, len(frame_lat)),
        down_bytes_per_player_s=stats["bytes_out"] / players / duration,
        up_bytes_per_player_s=stats["bytes_in"] / players / duration,
        log_bytes=len(log_file.kept),
        log_frames=len(log_frames),
        drops=dict(match.host.drops),
    )
