"""Room configuration and roster: what the lobby decides and the room enforces."""

from __future__ import annotations

import math
from dataclasses import dataclass

MIN_TICK_RATE = 10
MAX_TICK_RATE = 60

# (low, high, low is allowed) per field: a lobby's config may not hang or break a room, so
# every timing and limit it can set is bounded. The high end is always included.
_BOUNDS: dict[str, tuple[float, float, bool]] = {
    "heartbeat_interval": (0.01, 5.0, True),
    "disconnect_timeout": (0.5, 600.0, True),
    "start_timeout": (0.0, 3600.0, False),
    "max_duration": (0.0, 86400.0, False),
    "empty_timeout": (0.0, 3600.0, False),
    "end_linger": (0.0, 60.0, True),
    "redundancy_window": (0.05, 2.0, True),
    "input_backlog": (0, 1000, True),
    "max_inputs_per_frame": (1, 64, True),
    "hash_timeout": (0.0, 60.0, False),
    "result_timeout": (0.0, 600.0, False),
    "catchup_rate": (10_000.0, 100_000_000.0, True),
}


@dataclass(frozen=True, slots=True)
class RosterEntry:
    """One seat in a match; the slot is the player's index in every frame."""

    slot: int
    player_id: int
    team: int


@dataclass(frozen=True, slots=True)
class RoomConfig:
    """Limits and timings of one room. Seconds everywhere, on the caller's clock."""

    tick_rate: int = 15
    start_timeout: float = 30.0
    """WAITING lasts until everyone connected or this long after creation."""
    min_players: int = 1
    """Players needed to start when the start timeout expires; fewer ends the room."""
    max_input_bytes: int = 32
    max_inputs_per_frame: int = 3
    """Per player per frame; more wait for the next frame (a loss burst delivers several)."""
    input_backlog: int = 12
    """Inputs a player may have waiting beyond the current frame; more are dropped (a flood)."""
    redundancy_window: float = 0.3
    """Frames newer than the peer's ack are resent for this long before catch-up is needed."""
    heartbeat_interval: float = 0.1
    """Send at least this often to an idle peer."""
    disconnect_timeout: float = 5.0
    """A peer silent this long is disconnected; its slot is kept."""
    max_duration: float = 3600.0
    catchup_rate: float = 4_000_000.0
    """Bytes per second streamed to one peer catching up (frames or a snapshot)."""
    max_snapshot_bytes: int = 256 * 1024
    hash_timeout: float = 2.0
    """A frame's state hashes are compared once all connected players reported or after this."""
    result_timeout: float = 10.0
    """After the first result report, accept what has been reported by then."""
    end_linger: float = 2.0
    """After the match ends, keep resending the last frames this long to peers missing them."""
    empty_timeout: float = 60.0
    """A running room with nobody connected for this long ends."""

    def __post_init__(self) -> None:
        if not MIN_TICK_RATE <= self.tick_rate <= MAX_TICK_RATE:
            raise ValueError(f"tick_rate must be in [{MIN_TICK_RATE}, {MAX_TICK_RATE}]")
        if not 1 <= self.max_input_bytes <= 255:
            raise ValueError("max_input_bytes must be in [1, 255] (the wire cap)")
        if not 0 < self.max_snapshot_bytes <= 1 << 20:
            raise ValueError("max_snapshot_bytes must be in (0, 1 MiB]")
        if self.min_players < 1:
            raise ValueError("min_players must be at least 1")
        for name, (low, high, closed) in _BOUNDS.items():
            value = getattr(self, name)
            above = low <= value if closed else low < value
            if not (above and value <= high):  # written so that NaN fails too
                opening = "[" if closed else "("
                raise ValueError(f"{name} must be in {opening}{_num(low)}, {_num(high)}]")

    @property
    def tick_interval(self) -> float:
        return 1.0 / self.tick_rate

    @property
    def redundancy_frames(self) -> int:
        """Bound on frames carried per datagram, from the redundancy window."""
        return max(2, math.ceil(self.redundancy_window * self.tick_rate))


def _num(x: float) -> str:
    return str(int(x)) if x == int(x) else str(x)
