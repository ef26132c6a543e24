"""The input log of one match, fed by the core's events: one mapping, shared by every shell."""

from __future__ import annotations

from typing import BinaryIO

import msgpack

from battle import __version__
from battle.control import room_config_to_plain
from battle.events import (
    ChecksumAgreed,
    DesyncDetected,
    Event,
    FrameClosed,
    PlayerConnected,
    PlayerDisconnected,
    ResultDecided,
    RoomEnded,
)
from battle.inputlog import (
    ChecksumRecord,
    DesyncRecord,
    EndRecord,
    InputLogWriter,
    LogHeader,
    PlayerEvent,
    PlayerEventKind,
    Record,
    ResultRecord,
)
from battle.room import Room

AGREED_SLOT = 255
"""ChecksumRecord slot meaning 'the hash every reporting client agreed on'."""


def header_for(room: Room, start_time: float) -> LogHeader:
    return LogHeader(
        match_id=room.match_id,
        room_id=room.room_id,
        seed=room.seed,
        tick_rate=room.config.tick_rate,
        roster=room.roster,
        config=room_config_to_plain(room.config),
        server_version=__version__,
        start_time=start_time,
    )


def record_for(event: Event) -> Record | None:
    """The log record for a core event (None for events the log does not keep)."""
    if isinstance(event, PlayerConnected):
        kind = PlayerEventKind.RECONNECTED if event.reconnected else PlayerEventKind.CONNECTED
        return PlayerEvent(event.frame, event.slot, event.player_id, kind)
    if isinstance(event, PlayerDisconnected):
        return PlayerEvent(
            event.frame, event.slot, event.player_id, PlayerEventKind.DISCONNECTED, event.reason
        )
    if isinstance(event, ChecksumAgreed):
        return ChecksumRecord(event.frame, AGREED_SLOT, event.hash)
    if isinstance(event, DesyncDetected):
        majority = event.majority_hash if event.majority_hash is not None else 0
        return DesyncRecord(event.frame, majority, event.minority, event.hashes)
    if isinstance(event, ResultDecided):
        result = msgpack.unpackb(event.result, raw=False)
        return ResultRecord(event.frame, result, event.dissenters)
    if isinstance(event, RoomEnded):
        return EndRecord(event.frame, event.reason)
    return None


class MatchLog:
    """Writes one room's events to its input log; flushes on RoomEnded."""

    def __init__(self, file: BinaryIO, room: Room, now: float, *, start_time: float) -> None:
        self.file = file
        self.writer = InputLogWriter(file, header_for(room, start_time), now)

    def on_event(self, event: Event, now: float) -> None:
        if isinstance(event, FrameClosed):
            self.writer.add_frame(event.frame, now)
            return
        record = record_for(event)
        if record is not None:
            self.writer.add(record, now)
            if isinstance(event, RoomEnded):
                self.writer.flush(now)

    def maybe_flush(self, now: float) -> None:
        self.writer.maybe_flush(now)

    def close(self, now: float) -> None:
        """Flush what is buffered and close the file."""
        if not self.writer.closed:
            self.writer.close(now)
        self.file.close()
