"""A roster slot's live state inside a room, and the sink rooms report into."""

from __future__ import annotations

import os
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import Enum

from battle.catchup import CatchupStream, SnapshotAssembler
from battle.config import RosterEntry
from battle.events import Event
from battle.frames import FrameInput
from battle.redundancy import CopySchedule
from battle.session import Address, Session


@dataclass(slots=True)
class CoreSink:
    """Where rooms put what the shell must act on; shared by all rooms of one host."""

    outbox: list[tuple[bytes, Address]] = field(default_factory=list)
    events: deque[Event] = field(default_factory=deque)
    drops: Counter[str] = field(default_factory=Counter)
    stats: Counter[str] = field(default_factory=Counter)
    released: list[Address] = field(default_factory=list)
    """Addresses whose sessions ended; the host forgets their routes."""
    entropy: Callable[[int], bytes] = os.urandom
    """Source of session salts; tests pass a seeded one."""


class PeerStatus(Enum):
    NEVER_CONNECTED = "never_connected"
    CONNECTED = "connected"
    DISCONNECTED = "disconnected"


class Peer:
    """A roster slot and whatever session currently speaks for it."""

    __slots__ = (
        "catchup",
        "catchup_started",
        "copies",
        "entry",
        "frame_ack",
        "hash_ack",
        "input_ack",
        "pending",
        "queued",
        "result_acked",
        "session",
        "snapshot_ack",
        "status",
        "tail",
        "tail_key",
        "upload",
        "want_snapshot",
    )

    def __init__(self, entry: RosterEntry, snapshot_limit: int) -> None:
        self.entry = entry
        self.status = PeerStatus.NEVER_CONNECTED
        self.session: Session | None = None
        self.pending: list[Session] = []
        """Proven addresses that were sent ACCEPT but have not yet sent a sealed datagram."""
        self.input_ack = 0
        """Highest input sequence received with none missing before it."""
        self.queued: list[FrameInput] = []
        self.frame_ack = 0
        self.catchup: CatchupStream | None = None
        """Set while the peer is further behind than the redundancy window covers."""
        self.catchup_started = (0.0, 0)
        """(time, frame_ack) when the current catch-up began, for its report."""
        self.want_snapshot = False
        self.hash_ack = 0
        self.result_acked = False
        self.upload = SnapshotAssembler(snapshot_limit)
        self.snapshot_ack = 0
        self.tail_key: tuple[object, ...] = ()
        self.tail = b""
        """SERVER_UPDATE's last fields, encoded; re-encoded only when tail_key changes."""
        self.copies = CopySchedule()
        """Spaced extra updates planned while this peer's link loses much (redundancy.py)."""
