"""Events the core reports to its shell, which logs them, writes the input log and counts."""

from __future__ import annotations

from dataclasses import dataclass

from battle.frames import Frame


@dataclass(frozen=True, slots=True)
class PlayerConnected:
    room_id: int
    slot: int
    player_id: int
    frame: int
    address: tuple[str, int]
    reconnected: bool


@dataclass(frozen=True, slots=True)
class PlayerDisconnected:
    room_id: int
    slot: int
    player_id: int
    frame: int
    reason: str
    """'timed_out', 'left' or 'replaced' (a newer session of the same player took over)."""


@dataclass(frozen=True, slots=True)
class RoomStarted:
    room_id: int
    at: float
    players: tuple[int, ...]
    """Slots connected when the first frame was scheduled."""


@dataclass(frozen=True, slots=True)
class FrameClosed:
    room_id: int
    frame: Frame
    at: float


@dataclass(frozen=True, slots=True)
class CatchUpNeeded:
    """A peer fell further behind than the redundancy window covers."""

    room_id: int
    slot: int
    frame_ack: int
    last_frame: int


@dataclass(frozen=True, slots=True)
class RoomEnded:
    room_id: int
    frame: int
    reason: str


Event = PlayerConnected | PlayerDisconnected | RoomStarted | FrameClosed | CatchUpNeeded | RoomEnded
