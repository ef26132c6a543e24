"""Match input log: versioned, append-only, and also the replay file.

The format is pure (encode/decode over bytes) so the replay tool, tests and
other languages see exactly what the room wrote; ``InputLogWriter`` only adds
batching and a flush cadence, with time passed in. Byte layout:
``docs/INPUTLOG.md``.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from enum import IntEnum, StrEnum
from pathlib import Path
from typing import Any, BinaryIO

import msgpack

from battle.config import RosterEntry
from battle.frames import Frame, FrameInput

MAGIC = b"FSYNCLOG"
LOG_FORMAT_VERSION = 1

_U64_MAX = 2**64 - 1
_I64_MIN = -(2**63)
_MAX_NESTING = 32
"""Config/result values nest at most this deep, so validation never recurses without bound."""


class InputLogError(Exception):
    """The bytes are not a valid framesync input log (a cut-off tail is not an error)."""


class RecordKind(IntEnum):
    HEADER = 0
    FRAME_BATCH = 1
    PLAYER_EVENT = 2
    CHECKSUM = 3
    DESYNC = 4
    RESULT = 5
    END = 6


class PlayerEventKind(StrEnum):
    CONNECTED = "connected"
    DISCONNECTED = "disconnected"
    RECONNECTED = "reconnected"
    LEFT = "left"


@dataclass(frozen=True, slots=True, kw_only=True)
class LogHeader:
    """Everything needed to re-run the match besides the frames.

    Keyword-only because nine positional fields invite silent swaps.
    """

    format_version: int = LOG_FORMAT_VERSION
    match_id: int
    room_id: int
    seed: int
    """u64 match seed for the PRNG."""
    tick_rate: int
    roster: tuple[RosterEntry, ...]
    config: dict[str, object]
    """Room config as plain values (None, bool, int, float, str, bytes, lists, maps)."""
    server_version: str
    start_time: float
    """Unix seconds; informational only, never used by the simulation."""


@dataclass(frozen=True, slots=True)
class FrameBatch:
    """Consecutive frames stored together, so empty frames cost one byte each."""

    first_frame: int
    frames: tuple[Frame, ...]


@dataclass(frozen=True, slots=True)
class PlayerEvent:
    frame: int
    """Last frame closed when the event happened (0 before the first frame)."""
    slot: int
    player_id: int
    kind: PlayerEventKind
    detail: str = ""


@dataclass(frozen=True, slots=True)
class ChecksumRecord:
    """A client's state hash, kept so the replay tool can locate a desync."""

    frame: int
    slot: int
    hash: int


@dataclass(frozen=True, slots=True)
class DesyncRecord:
    frame: int
    """First frame whose hashes disagreed."""
    majority_hash: int
    minority_slots: tuple[int, ...]
    hashes: tuple[tuple[int, int], ...]
    """(slot, hash) for every slot that reported this frame."""


@dataclass(frozen=True, slots=True)
class ResultRecord:
    frame: int
    result: dict[str, object]
    """Opaque to the server (e.g. winning team); plain values as in LogHeader.config."""
    dissenters: tuple[int, ...] = ()
    """Slots that reported a different result."""


@dataclass(frozen=True, slots=True)
class EndRecord:
    frame: int
    """Last frame of the match."""
    reason: str


Record = FrameBatch | PlayerEvent | ChecksumRecord | DesyncRecord | ResultRecord | EndRecord


@dataclass(frozen=True, slots=True)
class LogContents:
    header: LogHeader
    records: tuple[Record, ...]
    truncated: bool
    """The data ended inside a record, as after a crash; that record is dropped."""
    valid_bytes: int
    """Length of the intact prefix: truncate the file here before appending to it."""

    def frames(self) -> list[Frame]:
        """Every logged frame in order, across batches."""
        return [f for r in self.records if isinstance(r, FrameBatch) for f in r.frames]

    @property
    def last_frame(self) -> int:
        """Number of the last logged frame, 0 if none."""
        for r in reversed(self.records):
            if isinstance(r, FrameBatch):
                return r.first_frame + len(r.frames) - 1
        return 0


# --- validation shared by encoder and decoder -------------------------------------------
# The encoder runs the same checks as the decoder, so the writer can never produce a log
# the reader rejects. Checks raise ValueError; the reader adds the byte offset.


def _int(value: object, what: str, lo: int = 0, hi: int = _U64_MAX) -> None:
    if not isinstance(value, int) or isinstance(value, bool):
        raise ValueError(f"{what} must be an int, got {type(value).__name__}")
    if not lo <= value <= hi:
        raise ValueError(f"{what} out of range: {value}")


def _str(value: object, what: str) -> None:
    if not isinstance(value, str):
        raise ValueError(f"{what} must be a str, got {type(value).__name__}")


def _ints(values: tuple[object, ...], what: str) -> None:
    for i, v in enumerate(values):
        _int(v, f"{what}[{i}]")


def _plain(value: object, what: str, depth: int = 0) -> None:
    if depth > _MAX_NESTING:
        raise ValueError(f"{what} nested too deeply")
    if value is None or isinstance(value, bool | float | str | bytes):
        return
    if isinstance(value, int):
        _int(value, what, _I64_MIN)
    elif isinstance(value, list | tuple):
        for i, v in enumerate(value):
            _plain(v, f"{what}[{i}]", depth + 1)
    elif isinstance(value, dict):
        for k, v in value.items():
            if not isinstance(k, str | int) or isinstance(k, bool):
                raise ValueError(f"{what} has a {type(k).__name__} key")
            _plain(k, what, depth + 1)
            _plain(v, f"{what}[{k!r}]", depth + 1)
    else:
        raise ValueError(f"{what} has unsupported type {type(value).__name__}")


def _plain_map(value: object, what: str) -> None:
    if not isinstance(value, dict):
        raise ValueError(f"{what} must be a map, got {type(value).__name__}")
    for k in value:
        _str(k, f"{what} key")
    _plain(value, what)


def _check_header(h: LogHeader) -> None:
    _int(h.format_version, "format_version", LOG_FORMAT_VERSION, LOG_FORMAT_VERSION)
    _int(h.match_id, "match_id")
    _int(h.room_id, "room_id")
    _int(h.seed, "seed")
    _int(h.tick_rate, "tick_rate", 1)
    for i, e in enumerate(h.roster):
        if not isinstance(e, RosterEntry):
            raise ValueError(f"roster[{i}] must be a RosterEntry")
        _ints((e.slot, e.player_id, e.team), f"roster[{i}]")
    _plain_map(h.config, "config")
    _str(h.server_version, "server_version")
    if not isinstance(h.start_time, float):
        raise ValueError(f"start_time must be a float, got {type(h.start_time).__name__}")


def _check_frame(frame: object, number: int | None = None) -> None:
    if not isinstance(frame, Frame):
        raise ValueError("frames must be Frame objects")
    _int(frame.number, "frame number", 1)
    if number is not None and frame.number != number:
        raise ValueError(f"frames not consecutive: expected frame {number}, got {frame.number}")
    for inp in frame.inputs:
        # Hot path (every input of every frame): exact type tests, message built only on failure.
        if not (
            type(inp) is FrameInput
            and type(inp.slot) is int
            and type(inp.seq) is int
            and type(inp.data) is bytes
            and 0 <= inp.slot <= _U64_MAX
            and 0 <= inp.seq <= _U64_MAX
        ):
            raise ValueError(f"frame {frame.number}: invalid input {inp!r}")


def _check_record(r: Record) -> None:
    if isinstance(r, FrameBatch):
        _int(r.first_frame, "first_frame", 1)
        if not r.frames:
            raise ValueError("a frame batch needs at least one frame")
        for i, f in enumerate(r.frames):
            _check_frame(f, r.first_frame + i)
        return
    _int(r.frame, "frame")
    if isinstance(r, PlayerEvent):
        _ints((r.slot, r.player_id), "player event")
        if not isinstance(r.kind, PlayerEventKind):
            raise ValueError("player event kind must be a PlayerEventKind")
        _str(r.detail, "detail")
    elif isinstance(r, ChecksumRecord):
        _ints((r.slot, r.hash), "checksum")
    elif isinstance(r, DesyncRecord):
        _int(r.majority_hash, "majority_hash")
        _ints(r.minority_slots, "minority_slots")
        for pair in r.hashes:
            if not isinstance(pair, tuple) or len(pair) != 2:
                raise ValueError("desync hashes must be (slot, hash) pairs")
            _ints(pair, "desync hash pair")
    elif isinstance(r, ResultRecord):
        _plain_map(r.result, "result")
        _ints(r.dissenters, "dissenters")
    elif isinstance(r, EndRecord):
        _str(r.reason, "reason")
    else:
        raise ValueError(f"not a log record: {type(r).__name__}")


# --- encoding ----------------------------------------------------------------------------


def _pack(obj: object) -> bytes:
    out: bytes = msgpack.packb(obj, use_bin_type=True)
    return out


def encode_header(h: LogHeader) -> bytes:
    """Magic plus header record: the first bytes of every log."""
    _check_header(h)
    roster = [[e.slot, e.player_id, e.team] for e in h.roster]
    fields: list[object] = [RecordKind.HEADER.value, h.format_version, h.match_id, h.room_id]
    fields += [h.seed, h.tick_rate, roster, h.config, h.server_version, h.start_time]
    return MAGIC + _pack(fields)


def _flat_inputs(frame: Frame) -> list[object]:
    out: list[object] = []
    for inp in frame.inputs:
        out += (inp.slot, inp.seq, inp.data)
    return out


def encode_record(r: Record) -> bytes:
    """One record as a msgpack array; raises ValueError for a record the reader would reject."""
    _check_record(r)
    fields: list[object]
    if isinstance(r, FrameBatch):
        fields = [RecordKind.FRAME_BATCH.value, r.first_frame, [_flat_inputs(f) for f in r.frames]]
    elif isinstance(r, PlayerEvent):
        fields = [RecordKind.PLAYER_EVENT.value, r.frame, r.slot, r.player_id, r.kind.value]
        fields.append(r.detail)
    elif isinstance(r, ChecksumRecord):
        fields = [RecordKind.CHECKSUM.value, r.frame, r.slot, r.hash]
    elif isinstance(r, DesyncRecord):
        pairs = [list(p) for p in r.hashes]
        fields = [RecordKind.DESYNC.value, r.frame, r.majority_hash, list(r.minority_slots), pairs]
    elif isinstance(r, ResultRecord):
        fields = [RecordKind.RESULT.value, r.frame, r.result, list(r.dissenters)]
    else:
        fields = [RecordKind.END.value, r.frame, r.reason]
    return _pack(fields)


# --- decoding ----------------------------------------------------------------------------
# Decoders check shapes (arrays and their lengths), build the dataclass from the raw values,
# then run the encoder's checks on it, so types are validated in exactly one place.

_FIELD_COUNTS = {
    RecordKind.FRAME_BATCH: 3,
    RecordKind.PLAYER_EVENT: 6,
    RecordKind.CHECKSUM: 4,
    RecordKind.DESYNC: 5,
    RecordKind.RESULT: 4,
    RecordKind.END: 3,
}
_HEADER_FIELDS = 10


def _list(value: object, what: str, length: int | None = None) -> list[Any]:
    if not isinstance(value, list):
        raise ValueError(f"{what} must be an array, got {type(value).__name__}")
    if length is not None and len(value) != length:
        raise ValueError(f"{what} must have {length} elements, got {len(value)}")
    return value


def _kind(raw: list[Any]) -> int:
    if not raw:
        raise ValueError("empty record")
    _int(raw[0], "record kind", 0, 255)
    kind: int = raw[0]
    return kind


def _decode_header(raw: object) -> LogHeader:
    raw = _list(raw, "header")
    if _kind(raw) != RecordKind.HEADER:
        raise ValueError(f"first record has kind {raw[0]}, expected a header")
    if len(raw) < 2:
        raise ValueError("header has no format version")
    version = raw[1]
    _int(version, "format_version", 1)
    if version > LOG_FORMAT_VERSION:
        raise InputLogError(
            f"input log format version {version} is newer than this reader "
            f"(supports up to {LOG_FORMAT_VERSION})"
        )
    _list(raw, "header", _HEADER_FIELDS)
    roster = [_list(e, "roster entry", 3) for e in _list(raw[6], "roster")]
    h = LogHeader(
        format_version=version,
        match_id=raw[2],
        room_id=raw[3],
        seed=raw[4],
        tick_rate=raw[5],
        roster=tuple(RosterEntry(*e) for e in roster),
        config=raw[7],
        server_version=raw[8],
        start_time=raw[9],
    )
    _check_header(h)
    return h


def _decode_frame_batch(raw: list[Any]) -> FrameBatch:
    first = raw[1]
    _int(first, "first_frame", 1)
    frames = []
    for i, item in enumerate(_list(raw[2], "frames")):
        flat = _list(item, "frame inputs")
        if len(flat) % 3:
            raise ValueError(f"frame {first + i}: input list length {len(flat)} is not 3*n")
        inputs = tuple(map(FrameInput, flat[0::3], flat[1::3], flat[2::3]))
        frames.append(Frame(first + i, inputs))
    return FrameBatch(first, tuple(frames))


def _decode_record(raw: object) -> Record:
    raw = _list(raw, "record")
    kind = _kind(raw)
    if kind == RecordKind.HEADER:
        raise ValueError("second header record")
    if kind not in _FIELD_COUNTS:
        raise ValueError(f"unknown record kind {kind}")
    kind = RecordKind(kind)
    _list(raw, f"{kind.name} record", _FIELD_COUNTS[kind])
    r: Record
    if kind == RecordKind.FRAME_BATCH:
        r = _decode_frame_batch(raw)
    elif kind == RecordKind.PLAYER_EVENT:
        _str(raw[4], "player event kind")
        r = PlayerEvent(raw[1], raw[2], raw[3], PlayerEventKind(raw[4]), raw[5])
    elif kind == RecordKind.CHECKSUM:
        r = ChecksumRecord(raw[1], raw[2], raw[3])
    elif kind == RecordKind.DESYNC:
        pairs = tuple(tuple(_list(p, "desync hash pair", 2)) for p in _list(raw[4], "hashes"))
        minority = tuple(_list(raw[3], "minority_slots"))
        r = DesyncRecord(raw[1], raw[2], minority, pairs)
    elif kind == RecordKind.RESULT:
        r = ResultRecord(raw[1], raw[2], tuple(_list(raw[3], "dissenters")))
    else:
        r = EndRecord(raw[1], raw[2])
    _check_record(r)
    return r


def _is_past_end(exc: ValueError) -> bool:
    """A length limit hit: with limits set to the data size, the object cannot end inside it."""
    return type(exc) is ValueError and " exceeds max_" in str(exc)


def _raw_records(data: bytes) -> Iterator[tuple[int, int, Any]]:
    """(start, end, raw object) for each complete msgpack object after the magic.

    Stops quietly at an object that runs past the end of the data: that is a cut-off tail.
    """
    n = len(MAGIC)
    body = memoryview(data)[n:]
    limit = max(len(body), 1)  # every element takes at least one byte, so this never rejects
    unpacker = msgpack.Unpacker(
        raw=False,
        strict_map_key=False,
        max_buffer_size=limit,
        max_str_len=limit,
        max_bin_len=limit,
        max_array_len=limit,
        max_map_len=limit,
        max_ext_len=limit,
    )
    unpacker.feed(body)
    pos = n
    while pos < len(data):
        try:
            raw = unpacker.unpack()
        except msgpack.OutOfData:
            return
        except ValueError as e:
            if _is_past_end(e):
                return
            raise InputLogError(f"invalid msgpack at byte offset {pos}: {e}") from None
        except (TypeError, msgpack.UnpackException) as e:
            raise InputLogError(f"invalid msgpack at byte offset {pos}: {e}") from None
        end = n + unpacker.tell()
        yield pos, end, raw
        pos = end


def read_log(data: bytes) -> LogContents:
    """Decode a whole log; a record cut off at the end is reported, not raised.

    Raises InputLogError for anything else that is wrong, with the byte offset.
    """
    if not data or data[: len(MAGIC)] != MAGIC[: len(data)]:
        raise InputLogError("not a framesync input log (bad magic)")
    raws = _raw_records(data)
    first = next(raws, None)
    if first is None:
        raise InputLogError("header truncated")
    try:
        header = _decode_header(first[2])
    except ValueError as e:
        raise InputLogError(f"bad header at byte offset {first[0]}: {e}") from None
    valid = first[1]
    records: list[Record] = []
    next_frame: int | None = None
    for start, end, raw in raws:
        try:
            r = _decode_record(raw)
            if isinstance(r, FrameBatch):
                if next_frame is not None and r.first_frame != next_frame:
                    how = (
                        "overlaps earlier frames" if r.first_frame < next_frame else "skips frames"
                    )
                    raise ValueError(
                        f"frame batch from frame {r.first_frame} {how}; expected {next_frame}"
                    )
                next_frame = r.first_frame + len(r.frames)
        except ValueError as e:
            raise InputLogError(f"bad record at byte offset {start}: {e}") from None
        records.append(r)
        valid = end
    return LogContents(header, tuple(records), valid < len(data), valid)


def read_log_file(path: str | os.PathLike[str]) -> LogContents:
    return read_log(Path(path).read_bytes())


# --- writer ------------------------------------------------------------------------------


class InputLogWriter:
    """Appends one match's log to a binary file, batching frames and flushing on a cadence.

    Guarantee: if the process dies (crash, kill -9), at most the frames added during the last
    ``flush_interval`` of ``now`` time are lost, and the file reads back as a valid log
    (``truncated`` if the death came mid-write). ``flush`` hands bytes to the OS with
    ``file.flush()``; there is no fsync, so an OS crash or power loss can lose more.
    The rule holds because every add checks the cadence; call ``maybe_flush`` from the
    tick as well if frames can stop arriving while records are pending.

    The file stays owned by the caller: ``close`` flushes but does not close it.
    """

    def __init__(
        self,
        file: BinaryIO,
        header: LogHeader,
        now: float,
        *,
        flush_interval: float = 1.0,
        batch_frames: int = 30,
    ) -> None:
        if flush_interval < 0 or batch_frames < 1:
            raise ValueError("flush_interval must be >= 0 and batch_frames >= 1")
        self._file = file
        self._flush_interval = flush_interval
        self._batch_frames = batch_frames
        self._pending: list[Frame] = []
        self._last_frame = 0
        self._closed = False
        file.write(encode_header(header))
        file.flush()
        self._last_flush = now

    @property
    def last_frame(self) -> int:
        """Number of the last frame added, 0 if none."""
        return self._last_frame

    @property
    def closed(self) -> bool:
        return self._closed

    def add_frame(self, frame: Frame, now: float) -> None:
        """Queue the next frame; it must follow the previous one (the first may be any >= 1)."""
        self._check_open()
        _check_frame(frame, self._last_frame + 1 if self._last_frame else None)
        self._pending.append(frame)
        self._last_frame = frame.number
        if len(self._pending) >= self._batch_frames:
            self._write_pending()
        self.maybe_flush(now)

    def add(self, record: Record, now: float) -> None:
        """Append a record after all frames added so far, keeping the log frame-ordered."""
        self._check_open()
        if isinstance(record, FrameBatch):
            _check_record(record)
            for f in record.frames:
                self.add_frame(f, now)
            return
        encoded = encode_record(record)
        self._write_pending()
        self._file.write(encoded)
        self.maybe_flush(now)

    def maybe_flush(self, now: float) -> bool:
        """Flush if ``flush_interval`` has passed since the last flush; True if it did."""
        if now - self._last_flush >= self._flush_interval:
            self.flush(now)
            return True
        return False

    def flush(self, now: float) -> None:
        """Write buffered frames and push everything to the OS (not to disk: no fsync)."""
        self._write_pending()
        self._file.flush()
        self._last_flush = now

    def close(self, now: float) -> None:
        if not self._closed:
            self.flush(now)
            self._closed = True

    def _check_open(self) -> None:
        if self._closed:
            raise ValueError("input log writer is closed")

    def _write_pending(self) -> None:
        if self._pending:
            batch = FrameBatch(self._pending[0].number, tuple(self._pending))
            self._pending = []
            self._file.write(encode_record(batch))
