"""Bodies of sealed datagrams: msgpack arrays with fixed field positions.

Arrays rather than maps keep per-packet overhead at a few bytes; positions are documented in
docs/PROTOCOL.md. Decoders accept and ignore extra trailing fields so that a newer peer can
add fields without breaking an older one. Every `*_untrusted` decoder raises only BadDatagram.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from enum import IntEnum
from typing import Any, NamedTuple

import msgpack

from battle.config import MAX_TICK_RATE, MIN_TICK_RATE, RosterEntry
from battle.consensus import canonical_result
from battle.errors import BadDatagram
from battle.frames import Frame, FrameInput
from battle.ticket import ClientKeys

MAX_INPUTS_PER_PACKET = 64
"""Unacknowledged inputs a client may carry in one packet."""
MAX_INPUT_SIZE = 255
"""Hard wire cap on one input; rooms usually configure far less."""
U64_MAX = (1 << 64) - 1


class RoomState(IntEnum):
    WAITING = 0
    RUNNING = 1
    ENDED = 2


class DisconnectReason(IntEnum):
    LEFT = 1
    ROOM_ENDED = 2
    TIMED_OUT = 3
    REPLACED = 4
    KICKED = 5


@dataclass(frozen=True, slots=True)
class Accept:
    """Sent once the address is proven: everything a client needs to start simulating."""

    match_id: int
    room_id: int
    slot: int
    team: int
    seed: int
    tick_rate: int
    roster: tuple[RosterEntry, ...]
    frame: int
    """Last closed frame when the session was accepted (0 before the match starts)."""
    state: RoomState
    input_ack: int
    """Highest input sequence the room holds for this slot; a restarted client goes on after it."""
    reconnect_ticket: bytes
    """A fresh ticket for the same slot, for reconnecting after a drop."""
    reconnect_keys: ClientKeys
    redundancy_frames: int
    heartbeat_ms: int
    timeout_ms: int
    snapshot_frame: int = 0
    """Frame of the latest agreed snapshot the room can send instead of older frames."""


class ClientUpdate(NamedTuple):
    """Client → room: acks, the last contiguous frame held, and every unacknowledged input.

    A NamedTuple (immutable, like the other messages) because the room decodes one per
    player per tick and tuple construction is several times cheaper than a frozen dataclass.
    """

    ack: int
    ack_bits: int
    ack_delay_us: int
    frame_ack: int
    input_first: int
    """Sequence number of inputs[0]; inputs are consecutive."""
    inputs: tuple[bytes, ...] = ()
    hashes: tuple[tuple[int, int], ...] = ()
    """(frame, state hash) reports not yet acknowledged, oldest first."""
    result: bytes | None = None
    """The match result as canonical msgpack, repeated until acknowledged."""
    want_snapshot: bool = False
    """Catch up from the latest agreed snapshot rather than from frame_ack."""


@dataclass(frozen=True, slots=True)
class ServerUpdate:
    """Room → client: acks, the input ack, and every frame after the client's frame ack."""

    ack: int
    ack_bits: int
    ack_delay_us: int
    input_ack: int
    first_frame: int
    frames: tuple[Frame, ...]
    last_frame: int
    state: RoomState
    hash_ack: int = 0
    """Highest frame whose hash report from this client the room holds."""
    result_ack: bool = False
    desync: DesyncNotice | None = None
    snapshot_ack: int = 0
    """Frame of the last snapshot this client uploaded completely."""


@dataclass(frozen=True, slots=True)
class DesyncNotice:
    """The latest detected desync, repeated so clients can dump state for the replay tool."""

    frame: int
    minority: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class Catchup:
    """Room → client: a zlib-compressed run of consecutive frames for a client far behind."""

    first_frame: int
    frames: tuple[Frame, ...]
    last_frame: int
    """The live frame when sent, so the client can show progress."""


@dataclass(frozen=True, slots=True)
class SnapshotChunk:
    """One fragment of an opaque game-state snapshot, in either direction."""

    frame: int
    hash: int
    total_size: int
    offset: int
    data: bytes


@dataclass(frozen=True, slots=True)
class Disconnect:
    reason: DisconnectReason


MAX_HASH_REPORTS = 32
MAX_RESULT_SIZE = 512
MAX_SNAPSHOT_SIZE = 1 << 20
"""Hard wire cap; rooms configure their own, smaller limit."""
SNAPSHOT_CHUNK_SIZE = 1024
MAX_CATCHUP_RAW = 64 * 1024
"""Largest decompressed CATCHUP payload a client accepts (a zlib bomb stops here)."""

_packer = msgpack.Packer(use_bin_type=True, autoreset=True)


def _packb(obj: object) -> bytes:
    packed: bytes = _packer.pack(obj)
    return packed


def _unpack_untrusted(body: bytes) -> list[Any]:
    try:
        obj = msgpack.unpackb(body, raw=False, use_list=True, strict_map_key=True)
    except Exception as exc:  # msgpack raises many types on garbage; all mean one thing
        raise BadDatagram("bad_body", type(exc).__name__) from None
    if not isinstance(obj, list):
        raise BadDatagram("bad_body", "not an array")
    return obj


def _uint(value: object, limit: int = U64_MAX) -> int:
    if type(value) is not int or not 0 <= value <= limit:
        raise BadDatagram("bad_field", "expected unsigned int")
    return value


def _bin(value: object, max_len: int) -> bytes:
    if type(value) is not bytes or len(value) > max_len:
        raise BadDatagram("bad_field", "expected bytes")
    return value


def _key(value: object) -> bytes:
    if type(value) is not bytes or len(value) != 32:
        raise BadDatagram("bad_field", "expected a 32-byte key")
    return value


def _fields(body: bytes, count: int) -> list[Any]:
    fields = _unpack_untrusted(body)
    if len(fields) < count:
        raise BadDatagram("bad_body", "too few fields")
    return fields


def encode_frame(frame: Frame) -> bytes:
    """A frame's inputs as one flat array [slot, seq, data, ...]; an empty frame is 0x90."""
    flat: list[object] = []
    for item in frame.inputs:
        flat.extend((item.slot, item.seq, item.data))
    return _packb(flat)


def _decode_frame(number: int, flat: object) -> Frame:
    if type(flat) is not list or len(flat) % 3:
        raise BadDatagram("bad_field", "frame inputs")
    inputs = tuple(
        FrameInput(_uint(flat[i], 255), _uint(flat[i + 1]), _bin(flat[i + 2], MAX_INPUT_SIZE))
        for i in range(0, len(flat), 3)
    )
    return Frame(number, inputs)


def decode_frame(number: int, encoded: bytes) -> Frame:
    """A frame from its own encoding (as closed by the room; trusted input)."""
    return _decode_frame(number, msgpack.unpackb(encoded, raw=False))


def check_result(data: bytes) -> None:
    """Raise ValueError unless `data` is a result the room accepts (see `_result`)."""
    try:
        _result(data)
    except BadDatagram as exc:
        raise ValueError(f"the room would reject this result: {exc}") from None


def _result(value: object) -> bytes | None:
    """A reported result must be the canonical encoding of a string-keyed map of plain values,
    so that equal results compare equal as bytes and every shell can decode it safely."""
    if value is None:
        return None
    data = _bin(value, MAX_RESULT_SIZE)
    try:
        decoded = msgpack.unpackb(data, raw=False, strict_map_key=True, max_ext_len=0)
        canonical = canonical_result(decoded) if type(decoded) is dict else None
    except Exception:  # garbage msgpack, ext types, unhashable keys: all the same to us
        canonical = None
    if canonical != data or not all(type(k) is str for k in decoded):
        raise BadDatagram("bad_field", "result is not a canonical map")
    return data


def _array_header(n: int) -> bytes:
    if n < 16:
        return bytes((0x90 | n,))
    return b"\xdc" + n.to_bytes(2, "big")


def encode_server_update_parts(
    ack: int,
    ack_bits: int,
    ack_delay_us: int,
    input_ack: int,
    first_frame: int,
    encoded_frames: list[bytes],
    last_frame: int,
    state: RoomState,
    tail: bytes = b"\x00\xc2\xc0\x00",
) -> bytes:
    """Assemble a SERVER_UPDATE body from frames encoded once when they closed (hot path).

    `tail` is the pre-encoded hash_ack, result_ack, desync and snapshot_ack fields
    (`encode_update_tail`); the default is 0, false, nil, 0.
    """
    return b"".join(
        (
            b"\x9c",
            _packb(ack),
            _packb(ack_bits),
            _packb(ack_delay_us),
            _packb(input_ack),
            _packb(first_frame),
            _array_header(len(encoded_frames)),
            *encoded_frames,
            _packb(last_frame),
            _packb(int(state)),
            tail,
        )
    )


def encode_update_tail(
    hash_ack: int, result_ack: bool, desync: DesyncNotice | None, snapshot_ack: int
) -> bytes:
    notice = None if desync is None else [desync.frame, list(desync.minority)]
    return b"".join((_packb(hash_ack), _packb(result_ack), _packb(notice), _packb(snapshot_ack)))


def encode_server_update(msg: ServerUpdate) -> bytes:
    return encode_server_update_parts(
        msg.ack,
        msg.ack_bits,
        msg.ack_delay_us,
        msg.input_ack,
        msg.first_frame,
        [encode_frame(f) for f in msg.frames],
        msg.last_frame,
        msg.state,
        encode_update_tail(msg.hash_ack, msg.result_ack, msg.desync, msg.snapshot_ack),
    )


def decode_server_update_untrusted(body: bytes) -> ServerUpdate:
    f = _fields(body, 8)
    first = _uint(f[4])
    frames_raw = f[5]
    if type(frames_raw) is not list:
        raise BadDatagram("bad_field", "frames")
    if frames_raw and not 1 <= first <= U64_MAX - len(frames_raw) + 1:
        raise BadDatagram("bad_field", "first frame")
    frames = tuple(_decode_frame(first + i, raw) for i, raw in enumerate(frames_raw))
    return ServerUpdate(
        ack=_uint(f[0]),
        ack_bits=_uint(f[1], 0xFFFFFFFF),
        ack_delay_us=_uint(f[2], 0xFFFFFFFF),
        input_ack=_uint(f[3]),
        first_frame=first,
        frames=frames,
        last_frame=_uint(f[6]),
        state=_room_state(f[7]),
        hash_ack=_uint(f[8]) if len(f) > 8 else 0,
        result_ack=_bool(f[9]) if len(f) > 9 else False,
        desync=_desync(f[10]) if len(f) > 10 else None,
        snapshot_ack=_uint(f[11]) if len(f) > 11 else 0,
    )


def _bool(value: object) -> bool:
    if type(value) is not bool:
        raise BadDatagram("bad_field", "expected bool")
    return value


def _desync(value: object) -> DesyncNotice | None:
    if value is None:
        return None
    if type(value) is not list or len(value) < 2 or type(value[1]) is not list:
        raise BadDatagram("bad_field", "desync notice")
    if len(value[1]) > 255:
        raise BadDatagram("bad_field", "desync notice")
    return DesyncNotice(_uint(value[0]), tuple(_uint(s, 255) for s in value[1]))


def _room_state(value: object) -> RoomState:
    try:
        return RoomState(_uint(value, 255))
    except ValueError:
        raise BadDatagram("bad_field", "room state") from None


def encode_client_update(msg: ClientUpdate) -> bytes:
    return _packb(
        [
            msg.ack,
            msg.ack_bits,
            msg.ack_delay_us,
            msg.frame_ack,
            msg.input_first,
            list(msg.inputs),
            [[frame, value] for frame, value in msg.hashes],
            msg.result,
            msg.want_snapshot,
        ]
    )


def decode_client_update_untrusted(body: bytes) -> ClientUpdate:
    f = _fields(body, 6)
    ack, bits, delay, frame_ack, first, inputs_raw = f[0], f[1], f[2], f[3], f[4], f[5]
    # The hot path: one combined check for the five integers (bool is not int here).
    if not (
        type(ack) is int
        and type(bits) is int
        and type(delay) is int
        and type(frame_ack) is int
        and type(first) is int
        and 0 <= ack <= U64_MAX
        and 0 <= bits <= 0xFFFFFFFF
        and 0 <= delay <= 0xFFFFFFFF
        and 0 <= frame_ack <= U64_MAX
        and 0 <= first <= U64_MAX
    ):
        raise BadDatagram("bad_field", "expected unsigned int")
    if type(inputs_raw) is not list or len(inputs_raw) > MAX_INPUTS_PER_PACKET:
        raise BadDatagram("bad_field", "inputs")
    for item in inputs_raw:
        if type(item) is not bytes or len(item) > MAX_INPUT_SIZE:
            raise BadDatagram("bad_field", "expected bytes")
    extra = len(f) > 6
    return ClientUpdate(
        ack,
        bits,
        delay,
        frame_ack,
        first,
        tuple(inputs_raw),
        _hashes(f[6]) if extra else (),
        _result(f[7]) if extra and len(f) > 7 else None,
        _bool(f[8]) if extra and len(f) > 8 else False,
    )


def _hashes(value: object) -> tuple[tuple[int, int], ...]:
    if type(value) is not list or len(value) > MAX_HASH_REPORTS:
        raise BadDatagram("bad_field", "hash reports")
    out = []
    for item in value:
        if type(item) is not list or len(item) < 2:
            raise BadDatagram("bad_field", "hash report")
        out.append((_uint(item[0]), _uint(item[1])))
    return tuple(out)


def encode_accept(msg: Accept) -> bytes:
    return _packb(
        [
            msg.match_id,
            msg.room_id,
            msg.slot,
            msg.team,
            msg.seed,
            msg.tick_rate,
            [[e.slot, e.player_id, e.team] for e in msg.roster],
            msg.frame,
            int(msg.state),
            msg.input_ack,
            msg.reconnect_ticket,
            msg.reconnect_keys.c2s,
            msg.reconnect_keys.s2c,
            msg.redundancy_frames,
            msg.heartbeat_ms,
            msg.timeout_ms,
            msg.snapshot_frame,
        ]
    )


def decode_accept_untrusted(body: bytes) -> Accept:
    f = _fields(body, 16)
    roster_raw = f[6]
    if type(roster_raw) is not list or len(roster_raw) > 255:
        raise BadDatagram("bad_field", "roster")
    roster = []
    for entry in roster_raw:
        if type(entry) is not list or len(entry) < 3:
            raise BadDatagram("bad_field", "roster entry")
        roster.append(RosterEntry(_uint(entry[0], 255), _uint(entry[1]), _uint(entry[2], 255)))
    tick_rate = _uint(f[5], 255)
    redundancy = _uint(f[13], 0xFFFF)
    heartbeat_ms = _uint(f[14], 0xFFFFFFFF)
    timeout_ms = _uint(f[15], 0xFFFFFFFF)
    if (
        not MIN_TICK_RATE <= tick_rate <= MAX_TICK_RATE
        or redundancy < 1
        or heartbeat_ms < 10
        or timeout_ms < 100
    ):
        raise BadDatagram("bad_field", "accept timings out of range")
    return Accept(
        match_id=_uint(f[0]),
        room_id=_uint(f[1]),
        slot=_uint(f[2], 255),
        team=_uint(f[3], 255),
        seed=_uint(f[4]),
        tick_rate=tick_rate,
        roster=tuple(roster),
        frame=_uint(f[7]),
        state=_room_state(f[8]),
        input_ack=_uint(f[9]),
        reconnect_ticket=_bin(f[10], 1024),
        reconnect_keys=ClientKeys(_key(f[11]), _key(f[12])),
        redundancy_frames=redundancy,
        heartbeat_ms=heartbeat_ms,
        timeout_ms=timeout_ms,
        snapshot_frame=_uint(f[16]) if len(f) > 16 else 0,
    )


def encode_disconnect(msg: Disconnect) -> bytes:
    return _packb([int(msg.reason)])


def decode_disconnect_untrusted(body: bytes) -> Disconnect:
    f = _fields(body, 1)
    try:
        return Disconnect(DisconnectReason(_uint(f[0], 255)))
    except ValueError:
        raise BadDatagram("bad_field", "disconnect reason") from None


def encode_catchup_parts(first_frame: int, count: int, last_frame: int, payload: bytes) -> bytes:
    """A CATCHUP body around `payload`: zlib of the frames' encodings, concatenated."""
    return b"".join(
        (b"\x94", _packb(first_frame), _packb(count), _packb(last_frame), _packb(payload))
    )


def compress_frames(encoded_frames: list[bytes]) -> bytes:
    return zlib.compress(b"".join(encoded_frames), 6)


def encode_catchup(msg: Catchup) -> bytes:
    payload = compress_frames([encode_frame(f) for f in msg.frames])
    return encode_catchup_parts(msg.first_frame, len(msg.frames), msg.last_frame, payload)


def decode_catchup_untrusted(body: bytes) -> Catchup:
    f = _fields(body, 4)
    first, count = _uint(f[0]), _uint(f[1], 0xFFFF)
    if count == 0 or not 1 <= first <= U64_MAX - count + 1:
        raise BadDatagram("bad_field", "catch-up range")
    payload = _bin(f[3], 1200)
    try:
        inflater = zlib.decompressobj()
        raw = inflater.decompress(payload, MAX_CATCHUP_RAW)
        if inflater.unconsumed_tail or inflater.unused_data or not inflater.eof:
            raise BadDatagram("bad_field", "catch-up payload too large or incomplete")
    except zlib.error:
        raise BadDatagram("bad_field", "catch-up payload") from None
    unpacker = msgpack.Unpacker(raw=False, max_buffer_size=MAX_CATCHUP_RAW)
    unpacker.feed(raw)
    frames = []
    try:
        for i in range(count):
            frames.append(_decode_frame(first + i, unpacker.unpack()))
    except BadDatagram:
        raise
    except Exception as exc:  # OutOfData and msgpack's many garbage errors
        raise BadDatagram("bad_field", f"catch-up frames: {type(exc).__name__}") from None
    if unpacker.tell() != len(raw):
        raise BadDatagram("bad_field", "catch-up payload has trailing data")
    return Catchup(first, tuple(frames), _uint(f[2]))


def encode_snapshot_chunk(msg: SnapshotChunk) -> bytes:
    return _packb([msg.frame, msg.hash, msg.total_size, msg.offset, msg.data])


def decode_snapshot_chunk_untrusted(body: bytes) -> SnapshotChunk:
    f = _fields(body, 5)
    total = _uint(f[2], MAX_SNAPSHOT_SIZE)
    offset = _uint(f[3], MAX_SNAPSHOT_SIZE)
    data = _bin(f[4], SNAPSHOT_CHUNK_SIZE)
    if total == 0 or offset + len(data) > total or not data:
        raise BadDatagram("bad_field", "snapshot chunk range")
    return SnapshotChunk(_uint(f[0]), _uint(f[1]), total, offset, data)
