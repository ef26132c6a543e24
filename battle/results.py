"""Match results kept on disk until the lobby acknowledges them.

Delivery is at least once: a result is written (and fsynced) before it is first sent, re-sent
after every reconnect and periodically while unacknowledged, and deleted only on ResultAck.
A lobby outage or a host restart therefore loses none; the lobby de-duplicates by match id.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

import structlog

from battle.control import ControlDecoder, ControlProtocolError, RoomResult, encode_message

_log = structlog.get_logger("framesync.results")


class ResultOutbox:
    """One file per unacknowledged result, named by match id, in the control frame format."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True)
        self.pending: dict[int, RoomResult] = {}
        for leftover in directory.glob("*.tmp"):
            # A crash before the rename: the file may be partial and was never sent or acked;
            # left alone, such files would pile up with every crash.
            _log.warning("result_tmp_removed", path=str(leftover))
            with contextlib.suppress(FileNotFoundError):
                leftover.unlink()
        for path in sorted(directory.glob("*.result")):
            result = self._load(path)
            if result is not None:
                self.pending[result.match_id] = result

    def _load(self, path: Path) -> RoomResult | None:
        decoder = ControlDecoder()
        try:
            decoder.feed(path.read_bytes())
            message = decoder.next_message()
        except (OSError, ControlProtocolError) as exc:
            _log.error("result_file_unreadable", path=str(path), error=str(exc))
            return None
        if not isinstance(message, RoomResult):
            _log.error("result_file_unreadable", path=str(path), error="not a RoomResult")
            return None
        return message

    def _path(self, match_id: int) -> Path:
        return self.directory / f"{match_id}.result"

    def add(self, result: RoomResult) -> None:
        """Persist durably, then remember; call before the first send."""
        path = self._path(result.match_id)
        tmp = path.with_suffix(".tmp")
        with open(tmp, "wb") as f:
            f.write(encode_message(result))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        _fsync_directory(self.directory)  # the rename itself must survive a power loss
        self.pending[result.match_id] = result

    def acknowledge(self, match_id: int) -> bool:
        if self.pending.pop(match_id, None) is None:
            return False
        with contextlib.suppress(FileNotFoundError):
            self._path(match_id).unlink()
        return True


def _fsync_directory(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
