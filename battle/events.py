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
class CatchUpStarted:
    """A peer fell further behind than the redundancy window covers."""

    room_id: int
    slot: int
    frame_ack: int
    last_frame: int
    snapshot_frame: int
    """Frame of the agreed snapshot sent first, or 0 when only frames are streamed."""


@dataclass(frozen=True, slots=True)
class CatchUpFinished:
    room_id: int
    slot: int
    frames: int
    """Frames the peer gained during the catch-up."""
    seconds: float


@dataclass(frozen=True, slots=True)
class ChecksumAgreed:
    """Every reporting client had the same state hash for this frame."""

    room_id: int
    frame: int
    hash: int


@dataclass(frozen=True, slots=True)
class DesyncDetected:
    room_id: int
    frame: int
    """First frame at which the minority diverged."""
    majority_hash: int | None
    """None when there was no strict majority (e.g. two players, two hashes)."""
    minority: tuple[int, ...]
    hashes: tuple[tuple[int, int], ...]
    """(slot, hash) of every report for that frame."""


@dataclass(frozen=True, slots=True)
class SnapshotAgreed:
    room_id: int
    frame: int
    hash: int
    size: int
    slot: int
    """Who uploaded it."""


@dataclass(frozen=True, slots=True)
class ResultDecided:
    room_id: int
    match_id: int
    frame: int
    result: bytes
    """Canonical msgpack of the agreed result map."""
    dissenters: tuple[int, ...]
    reason: str
    """'unanimous', 'majority', 'split' or 'timeout' (see consensus.ResultBallot)."""


@dataclass(frozen=True, slots=True)
class RoomEnded:
    room_id: int
    frame: int
    reason: str


Event = (
    PlayerConnected
    | PlayerDisconnected
    | RoomStarted
    | FrameClosed
    | CatchUpStarted
    | CatchUpFinished
    | ChecksumAgreed
    | DesyncDetected
    | SnapshotAgreed
    | ResultDecided
    | RoomEnded
)
