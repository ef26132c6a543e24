"""Bodies of sealed datagrams: msgpack arrays with fixed field positions.

Arrays rather than maps keep per-packet overhead at a few bytes; positions are documented in
docs/PROTOCOL.md. Decoders accept and ignore extra trailing fields so that a newer peer can
add fields without breaking an older one. Every `*_untrusted` decoder raises only BadDatagram.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum
from typing import Any

import msgpack

from battle.config import RosterEntry
from battle.errors import BadDatagram
from battle.frames import Frame, FrameInput
from battle.ticket import ClientKeys

MAX_INPUTS_PER_PACKET = 64
"""Unacknowledged inputs a client may carry in one packet."""
MAX_INPUT_SIZE = 255
U64_MAX = (1 << 64) - 1
"""Hard wire cap on one input; rooms usually configure far less."""


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


@dataclass(frozen=True, slots=True)
class ClientUpdate:
    """Client → room: acks, the last contiguous frame held, and every unacknowledged input."""

    ack: int
    ack_bits: int
    ack_delay_us: int
    frame_ack: int
    input_first: int
    """Sequence number of inputs[0]; inputs are consecutive."""
    inputs: tuple[bytes, ...] = ()


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


@dataclass(frozen=True, slots=True)
class Disconnect:
    reason: DisconnectReason


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
) -> bytes:
    """Assemble a SERVER_UPDATE body from frames encoded once when they closed (hot path)."""
    return b"".join(
        (
            b"\x98",
            _packb(ack),
            _packb(ack_bits),
            _packb(ack_delay_us),
            _packb(input_ack),
            _packb(first_frame),
            _array_header(len(encoded_frames)),
            *encoded_frames,
            _packb(last_frame),
            _packb(int(state)),
        )
    )


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
    )


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
        ]
    )


def decode_client_update_untrusted(body: bytes) -> ClientUpdate:
    f = _fields(body, 6)
    inputs_raw = f[5]
    if type(inputs_raw) is not list or len(inputs_raw) > MAX_INPUTS_PER_PACKET:
        raise BadDatagram("bad_field", "inputs")
    return ClientUpdate(
        ack=_uint(f[0]),
        ack_bits=_uint(f[1], 0xFFFFFFFF),
        ack_delay_us=_uint(f[2], 0xFFFFFFFF),
        frame_ack=_uint(f[3]),
        input_first=_uint(f[4]),
        inputs=tuple(_bin(x, MAX_INPUT_SIZE) for x in inputs_raw),
    )


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
    return Accept(
        match_id=_uint(f[0]),
        room_id=_uint(f[1]),
        slot=_uint(f[2], 255),
        team=_uint(f[3], 255),
        seed=_uint(f[4]),
        tick_rate=_uint(f[5], 255),
        roster=tuple(roster),
        frame=_uint(f[7]),
        state=_room_state(f[8]),
        input_ack=_uint(f[9]),
        reconnect_ticket=_bin(f[10], 1024),
        reconnect_keys=ClientKeys(_key(f[11]), _key(f[12])),
        redundancy_frames=_uint(f[13], 0xFFFF),
        heartbeat_ms=_uint(f[14], 0xFFFFFFFF),
        timeout_ms=_uint(f[15], 0xFFFFFFFF),
    )


def encode_disconnect(msg: Disconnect) -> bytes:
    return _packb([int(msg.reason)])


def decode_disconnect_untrusted(body: bytes) -> Disconnect:
    f = _fields(body, 1)
    try:
        return Disconnect(DisconnectReason(_uint(f[0], 255)))
    except ValueError:
        raise BadDatagram("bad_field", "disconnect reason") from None
