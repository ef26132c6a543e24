"""Room configuration and roster: what the lobby decides and the room enforces."""

from __future__ import annotations

import math
from dataclasses import dataclass

MIN_TICK_RATE = 10
MAX_TICK_RATE = 60


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
        if self.max_inputs_per_frame < 1 or self.max_input_bytes < 1:
            raise ValueError("input limits must be positive")
        if self.max_input_bytes > 255:
            raise ValueError("max_input_bytes is at most 255 (the wire cap)")
        if self.catchup_rate <= 0 or not 0 < self.max_snapshot_bytes <= 1 << 20:
            raise ValueError("catchup_rate must be positive, max_snapshot_bytes in (0, 1 MiB]")
        if self.min_players < 1:
            raise ValueError("min_players must be at least 1")

    @property
    def tick_interval(self) -> float:
        return 1.0 / self.tick_rate

    @property
    def redundancy_frames(self) -> int:
        """Bound on frames carried per datagram, from the redundancy window."""
        return max(2, math.ceil(self.redundancy_window * self.tick_rate))
