"""Sealed bodies: round trips, the hand-assembled SERVER_UPDATE, forward compatibility, fuzzing."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from battle.config import RosterEntry
from battle.errors import BadDatagram
from battle.frames import Frame, FrameInput
from battle.messages import (
    MAX_INPUT_SIZE,
    MAX_INPUTS_PER_PACKET,
    Accept,
    ClientUpdate,
    Disconnect,
    DisconnectReason,
    RoomState,
    ServerUpdate,
    decode_accept_untrusted,
    decode_client_update_untrusted,
    decode_disconnect_untrusted,
    decode_server_update_untrusted,
    encode_accept,
    encode_client_update,
    encode_disconnect,
    encode_frame,
    encode_server_update,
    encode_server_update_parts,
)
from battle.ticket import ClientKeys
from battle.wire import MAX_DATAGRAM

U64 = 2**64 - 1
U32 = 2**32 - 1
u64 = st.integers(min_value=0, max_value=U64)
u32 = st.integers(min_value=0, max_value=U32)
u16 = st.integers(min_value=0, max_value=0xFFFF)
u8 = st.integers(min_value=0, max_value=255)
key32 = st.binary(min_size=32, max_size=32)

DECODERS: list[Callable[[bytes], object]] = [
    decode_accept_untrusted,
    decode_client_update_untrusted,
    decode_server_update_untrusted,
    decode_disconnect_untrusted,
]


def pack(obj: object) -> bytes:
    packed: bytes = msgpack.packb(obj, use_bin_type=True)
    return packed


def unpack(body: bytes) -> list[Any]:
    obj = msgpack.unpackb(body, raw=False)
    assert isinstance(obj, list)
    return obj


def bad(decoder: Callable[[bytes], object], body: bytes) -> str:
    with pytest.raises(BadDatagram) as info:
        decoder(body)
    return info.value.reason


# --- sample messages -------------------------------------------------------------------------

KEYS = ClientKeys(b"\x01" * 32, b"\x02" * 32)
ACCEPT = Accept(
    match_id=0x1122_3344_5566_7788,
    room_id=9,
    slot=1,
    team=0,
    seed=0xFEDC_BA98_7654_3210,
    tick_rate=15,
    roster=(RosterEntry(0, 1001, 0), RosterEntry(1, 1002, 1)),
    frame=0,
    state=RoomState.WAITING,
    input_ack=0,
    reconnect_ticket=bytes(range(128)),
    reconnect_keys=KEYS,
    redundancy_frames=8,
    heartbeat_ms=250,
    timeout_ms=10_000,
)
CLIENT_UPDATE = ClientUpdate(
    ack=10, ack_bits=0b1011, ack_delay_us=1500, frame_ack=7, input_first=3, inputs=(b"a", b"bc")
)
SERVER_UPDATE = ServerUpdate(
    ack=4,
    ack_bits=0xFFFF_FFFF,
    ack_delay_us=0,
    input_ack=4,
    first_frame=8,
    frames=(
        Frame(8, (FrameInput(0, 5, b"\x01\x02"), FrameInput(1, 9, b""))),
        Frame(9),
        Frame(10, (FrameInput(1, 10, b"z" * 255),)),
    ),
    last_frame=10,
    state=RoomState.RUNNING,
)
DISCONNECT = Disconnect(DisconnectReason.TIMED_OUT)

# Field kinds per position, for structural mutation.
INT, BIN, LIST = "int", "bin", "list"
SAMPLES: list[tuple[Callable[[bytes], object], bytes, list[str]]] = [
    (
        decode_accept_untrusted,
        encode_accept(ACCEPT),
        [INT] * 6 + [LIST] + [INT] * 3 + [BIN] * 3 + [INT] * 3,
    ),
    (decode_client_update_untrusted, encode_client_update(CLIENT_UPDATE), [INT] * 5 + [LIST]),
    (
        decode_server_update_untrusted,
        encode_server_update(SERVER_UPDATE),
        [INT] * 5 + [LIST] + [INT] * 2,
    ),
    (decode_disconnect_untrusted, encode_disconnect(DISCONNECT), [INT]),
]
SAMPLE_IDS = ["accept", "client_update", "server_update", "disconnect"]


def test_samples_round_trip() -> None:
    assert decode_accept_untrusted(encode_accept(ACCEPT)) == ACCEPT
    assert decode_client_update_untrusted(encode_client_update(CLIENT_UPDATE)) == CLIENT_UPDATE
    assert decode_server_update_untrusted(encode_server_update(SERVER_UPDATE)) == SERVER_UPDATE
    assert decode_disconnect_untrusted(encode_disconnect(DISCONNECT)) == DISCONNECT
    for _, body, kinds in SAMPLES:
        assert len(unpack(body)) == len(kinds)


# --- round trips -----------------------------------------------------------------------------

frame_inputs = st.lists(
    st.builds(FrameInput, u8, u64, st.binary(max_size=MAX_INPUT_SIZE)), max_size=5
).map(tuple)


@st.composite
def server_updates(draw: st.DrawFn, max_frames: int = 20) -> ServerUpdate:
    inputs = draw(st.lists(frame_inputs, max_size=max_frames))
    first = draw(st.integers(min_value=1 if inputs else 0, max_value=U64 - len(inputs)))
    frames = tuple(Frame(first + i, items) for i, items in enumerate(inputs))
    return ServerUpdate(
        ack=draw(u64),
        ack_bits=draw(u32),
        ack_delay_us=draw(u32),
        input_ack=draw(u64),
        first_frame=first,
        frames=frames,
        last_frame=draw(u64),
        state=draw(st.sampled_from(RoomState)),
    )


client_updates = st.builds(
    ClientUpdate,
    ack=u64,
    ack_bits=u32,
    ack_delay_us=u32,
    frame_ack=u64,
    input_first=u64,
    inputs=st.lists(st.binary(max_size=MAX_INPUT_SIZE), max_size=MAX_INPUTS_PER_PACKET).map(tuple),
)

accepts = st.builds(
    Accept,
    match_id=u64,
    room_id=u64,
    slot=u8,
    team=u8,
    seed=u64,
    tick_rate=u8,
    roster=st.lists(st.builds(RosterEntry, u8, u64, u8), max_size=12).map(tuple),
    frame=u64,
    state=st.sampled_from(RoomState),
    input_ack=u64,
    reconnect_ticket=st.binary(max_size=1024),
    reconnect_keys=st.builds(ClientKeys, key32, key32),
    redundancy_frames=u16,
    heartbeat_ms=u32,
    timeout_ms=u32,
)


@settings(max_examples=150)
@given(accepts)
def test_accept_round_trip(msg: Accept) -> None:
    decoded = decode_accept_untrusted(encode_accept(msg))
    assert decoded == msg
    assert isinstance(decoded.state, RoomState)


@settings(max_examples=150)
@given(client_updates)
def test_client_update_round_trip(msg: ClientUpdate) -> None:
    assert decode_client_update_untrusted(encode_client_update(msg)) == msg


@settings(max_examples=150)
@given(server_updates())
def test_server_update_round_trip(msg: ServerUpdate) -> None:
    body = encode_server_update(msg)
    decoded = decode_server_update_untrusted(body)
    assert decoded == msg
    assert [f.number for f in decoded.frames] == [
        msg.first_frame + i for i in range(len(msg.frames))
    ]


@settings(max_examples=150)
@given(server_updates())
def test_server_update_assembly_is_standard_msgpack(msg: ServerUpdate) -> None:
    expected = pack(
        [
            msg.ack,
            msg.ack_bits,
            msg.ack_delay_us,
            msg.input_ack,
            msg.first_frame,
            [[x for i in f.inputs for x in (i.slot, i.seq, i.data)] for f in msg.frames],
            msg.last_frame,
            int(msg.state),
        ]
    )
    assert encode_server_update(msg) == expected
    assert (
        encode_server_update_parts(
            msg.ack,
            msg.ack_bits,
            msg.ack_delay_us,
            msg.input_ack,
            msg.first_frame,
            [encode_frame(f) for f in msg.frames],
            msg.last_frame,
            msg.state,
        )
        == expected
    )


@pytest.mark.parametrize("count", [0, 1, 15, 16, 17, 300])
def test_server_update_frame_array_header_sizes(count: int) -> None:
    frames = tuple(Frame(1 + i) for i in range(count))
    msg = ServerUpdate(1, 0, 0, 0, 1, frames, count, RoomState.RUNNING)
    body = encode_server_update(msg)
    assert body == pack([1, 0, 0, 0, 1, [[]] * count, count, int(RoomState.RUNNING)])
    assert unpack(body)[5] == [[]] * count
    assert decode_server_update_untrusted(body) == msg


@pytest.mark.parametrize("reason", list(DisconnectReason))
def test_disconnect_round_trip(reason: DisconnectReason) -> None:
    body = encode_disconnect(Disconnect(reason))
    assert body == bytes((0x91, int(reason)))
    decoded = decode_disconnect_untrusted(body)
    assert decoded == Disconnect(reason)
    assert decoded.reason is reason


def test_encode_frame() -> None:
    assert encode_frame(Frame(1)) == b"\x90"
    assert encode_frame(Frame(12345)) == b"\x90"
    frame = Frame(3, (FrameInput(0, 1, b"\xaa"), FrameInput(2, 300, b"")))
    assert encode_frame(frame) == pack([0, 1, b"\xaa", 2, 300, b""])
    assert encode_frame(frame) == bytes((0x96, 0, 1, 0xC4, 1, 0xAA, 2, 0xCD, 1, 44, 0xC4, 0))


def test_typical_server_update_fits_a_datagram() -> None:
    frames = tuple(
        Frame(100 + i, tuple(FrameInput(s, 50 + i, b"\x00" * 8) for s in range(10)))
        for i in range(8)
    )
    msg = ServerUpdate(U32, U32, U32, 10**6, 100, frames, 107, RoomState.RUNNING)
    assert len(encode_server_update(msg)) < MAX_DATAGRAM - 26


# --- forward compatibility -------------------------------------------------------------------

EXTRA_FIELDS: list[object] = [1, "new", b"field", [1, 2], {"k": 3}, None, 2.5]


@pytest.mark.parametrize(("decoder", "body", "kinds"), SAMPLES, ids=SAMPLE_IDS)
def test_extra_trailing_fields_are_ignored(
    decoder: Callable[[bytes], object], body: bytes, kinds: list[str]
) -> None:
    expected = decoder(body)
    fields = unpack(body)
    for n in range(1, len(EXTRA_FIELDS) + 1):
        assert decoder(pack(fields + EXTRA_FIELDS[:n])) == expected


def test_extra_roster_entry_fields_are_ignored() -> None:
    fields = unpack(encode_accept(ACCEPT))
    fields[6] = [[*entry, "future", 7] for entry in fields[6]]
    assert decode_accept_untrusted(pack(fields)) == ACCEPT


@pytest.mark.parametrize(("decoder", "body", "kinds"), SAMPLES, ids=SAMPLE_IDS)
def test_too_few_fields(decoder: Callable[[bytes], object], body: bytes, kinds: list[str]) -> None:
    fields = unpack(body)
    for n in range(len(fields)):
        assert bad(decoder, pack(fields[:n])) == "bad_body"
    assert bad(decoder, pack([])) == "bad_body"


# --- structurally wrong msgpack --------------------------------------------------------------

WRONG_FOR: dict[str, list[object]] = {
    INT: [-1, -(2**63), 1.0, 0.5, True, False, None, "1", b"\x01", [], {}],
    BIN: [-1, 0, 1.0, True, None, "text", [], {}, [b"x"]],
    LIST: [-1, 0, 1.0, True, None, "text", b"", {}],
}


@pytest.mark.parametrize(("decoder", "body", "kinds"), SAMPLES, ids=SAMPLE_IDS)
def test_every_field_rejects_wrong_types(
    decoder: Callable[[bytes], object], body: bytes, kinds: list[str]
) -> None:
    fields = unpack(body)
    for index, kind in enumerate(kinds):
        for value in WRONG_FOR[kind]:
            mutated = list(fields)
            mutated[index] = value
            assert bad(decoder, pack(mutated)) == "bad_field", (index, value)


@pytest.mark.parametrize(
    ("decoder", "body"),
    [(d, b) for d, b, _ in SAMPLES],
    ids=SAMPLE_IDS,
)
@pytest.mark.parametrize(
    "top",
    [0, -1, None, True, "str", b"bin", {"a": 1}, {}, 1.5],
    ids=lambda v: type(v).__name__ + repr(v)[:10],
)
def test_top_level_not_an_array(
    decoder: Callable[[bytes], object], body: bytes, top: object
) -> None:
    assert bad(decoder, pack(top)) == "bad_body"


@pytest.mark.parametrize("decoder", DECODERS)
@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"\xc1",  # never-used msgpack byte
        b"\x92\x01",  # truncated array
        b"\x91\x01\x01",  # trailing data
        b"\xdd\xff\xff\xff\xff",  # array claiming 4G elements
        b"\xc6\xff\xff\xff\xff",  # bin claiming 4 GB
        b"\xa2\xff\xfe",  # invalid UTF-8 string
        b"\x81\x90\x01",  # map with an array key
        b"\x91" * 5000 + b"\x90",  # very deep nesting
        b"\xd6\xff\x00\x00\x00\x00",  # timestamp ext
        b"\xc7\x01\x05\x00",  # unknown ext
    ],
    ids=lambda b: b[:6].hex() or "empty",
)
def test_garbage_bodies(decoder: Callable[[bytes], object], body: bytes) -> None:
    assert bad(decoder, body) in {"bad_body", "bad_field"}


def _client_fields(**changes: object) -> bytes:
    fields = unpack(encode_client_update(CLIENT_UPDATE))
    names = ["ack", "ack_bits", "ack_delay_us", "frame_ack", "input_first", "inputs"]
    for name, value in changes.items():
        fields[names.index(name)] = value
    return pack(fields)


def test_client_update_limits() -> None:
    decode = decode_client_update_untrusted
    at_limit = [b"x" * MAX_INPUT_SIZE] * MAX_INPUTS_PER_PACKET
    assert decode(_client_fields(inputs=at_limit)).inputs == tuple(at_limit)
    assert bad(decode, _client_fields(inputs=[b"x" * (MAX_INPUT_SIZE + 1)])) == "bad_field"
    assert bad(decode, _client_fields(inputs=[b""] * (MAX_INPUTS_PER_PACKET + 1))) == "bad_field"
    assert bad(decode, _client_fields(inputs=["text"])) == "bad_field"
    assert bad(decode, _client_fields(inputs=[1])) == "bad_field"
    assert bad(decode, _client_fields(inputs=[[b"x"]])) == "bad_field"
    assert decode(_client_fields(ack_bits=U32, ack_delay_us=U32)).ack_bits == U32
    assert bad(decode, _client_fields(ack_bits=U32 + 1)) == "bad_field"
    assert bad(decode, _client_fields(ack_delay_us=U32 + 1)) == "bad_field"
    assert decode(_client_fields(ack=U64, frame_ack=U64, input_first=U64)).ack == U64


def _server_fields(**changes: object) -> bytes:
    fields = unpack(encode_server_update(SERVER_UPDATE))
    names = [
        "ack",
        "ack_bits",
        "ack_delay_us",
        "input_ack",
        "first_frame",
        "frames",
        "last_frame",
        "state",
    ]
    for name, value in changes.items():
        fields[names.index(name)] = value
    return pack(fields)


@pytest.mark.parametrize(
    "changes",
    [
        {"ack_bits": U32 + 1},
        {"ack_delay_us": U32 + 1},
        {"state": 3},
        {"state": 255},
        {"state": 256},
        {"first_frame": 0},  # frames present but numbered from 0
        {"frames": [[0, 1]]},  # flat list not a multiple of three
        {"frames": [[0, 1, b"x", 2]]},
        {"frames": [[256, 1, b"x"]]},  # slot beyond a byte
        {"frames": [[-1, 1, b"x"]]},
        {"frames": [[0, -1, b"x"]]},
        {"frames": [[0, 1, b"x" * (MAX_INPUT_SIZE + 1)]]},
        {"frames": [[0, 1, "x"]]},
        {"frames": [[0, 1, None]]},
        {"frames": [[0, True, b""]]},
        {"frames": [b"\x90"]},  # a pre-encoded frame as bytes is not a frame
        {"frames": [{}]},
        {"frames": [None]},
    ],
    ids=repr,
)
def test_server_update_rejects(changes: dict[str, object]) -> None:
    assert bad(decode_server_update_untrusted, _server_fields(**changes)) == "bad_field"


def test_server_update_without_frames_may_have_first_frame_zero() -> None:
    msg = decode_server_update_untrusted(_server_fields(first_frame=0, frames=[]))
    assert (msg.first_frame, msg.frames) == (0, ())


def test_server_update_frame_numbers_fit_u64() -> None:
    body = _server_fields(first_frame=U64, frames=[[], []])
    with pytest.raises(BadDatagram):
        decode_server_update_untrusted(body)


def _accept_fields(index: int, value: object) -> bytes:
    fields = unpack(encode_accept(ACCEPT))
    fields[index] = value
    return pack(fields)


@pytest.mark.parametrize(
    ("index", "value"),
    [
        (2, 256),  # slot
        (3, 256),  # team
        (5, 256),  # tick_rate
        (6, [[0, 1]]),  # roster entry too short
        (6, [[256, 1, 0]]),  # roster slot
        (6, [[0, -1, 0]]),  # roster player id
        (6, [[0, 1, 256]]),  # roster team
        (6, [(0, 1, 0)] * 256),  # too many roster entries
        (6, [None]),
        (6, [b"\x00\x01\x00"]),
        (8, 3),  # room state
        (10, b"x" * 1025),  # reconnect ticket too long
        (11, b"k" * 31),  # key sizes
        (11, b"k" * 33),
        (12, b"k" * 31),
        (12, b""),
        (13, 0x10000),  # redundancy frames
        (14, U32 + 1),  # heartbeat ms
        (15, U32 + 1),  # timeout ms
    ],
    ids=lambda v: repr(v)[:24],
)
def test_accept_rejects(index: int, value: object) -> None:
    assert bad(decode_accept_untrusted, _accept_fields(index, value)) == "bad_field"


def test_accept_limits_are_inclusive() -> None:
    fields = unpack(encode_accept(ACCEPT))
    fields[6] = [[255, U64, 255]] * 255
    fields[10] = b"t" * 1024
    fields[13] = 0xFFFF
    decoded = decode_accept_untrusted(pack(fields))
    assert len(decoded.roster) == 255
    assert decoded.roster[0] == RosterEntry(255, U64, 255)
    assert len(decoded.reconnect_ticket) == 1024


@pytest.mark.parametrize("value", [0, 6, 255, 256, -1])
def test_disconnect_unknown_reason(value: int) -> None:
    assert bad(decode_disconnect_untrusted, pack([value])) == "bad_field"


# --- fuzzing ---------------------------------------------------------------------------------


def _decode_only_bad_datagram(body: bytes) -> None:
    for decoder in DECODERS:
        try:
            decoder(body)
        except BadDatagram as exc:
            assert exc.reason in {"bad_body", "bad_field"}


@settings(max_examples=400)
@given(st.binary(max_size=1500))
def test_arbitrary_bytes_raise_only_bad_datagram(body: bytes) -> None:
    _decode_only_bad_datagram(body)


msgpack_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=U64)
    | st.floats(allow_nan=False)
    | st.text(max_size=8)
    | st.binary(max_size=300),
    lambda children: (
        st.lists(children, max_size=8) | st.dictionaries(st.text(max_size=4), children, max_size=3)
    ),
    max_leaves=30,
)


@settings(max_examples=300)
@given(msgpack_values)
def test_arbitrary_msgpack_raises_only_bad_datagram(value: object) -> None:
    _decode_only_bad_datagram(pack(value))


@settings(max_examples=300)
@given(st.sampled_from(range(len(SAMPLES))), st.data())
def test_mutated_valid_bodies_raise_only_bad_datagram(which: int, data: st.DataObject) -> None:
    decoder, body, _ = SAMPLES[which]
    fields = unpack(body)
    for _ in range(data.draw(st.integers(min_value=1, max_value=3))):
        index = data.draw(st.integers(min_value=0, max_value=len(fields) - 1))
        fields[index] = data.draw(msgpack_values)
    cut = data.draw(st.integers(min_value=0, max_value=len(fields)))
    mutated = pack(fields[:cut] if data.draw(st.booleans()) else fields)
    try:
        decoded = decoder(mutated)
    except BadDatagram:
        return
    # Whatever decodes re-encodes to something that decodes to the same message.
    reencode: dict[Callable[[bytes], object], Callable[[Any], bytes]] = {
        decode_accept_untrusted: encode_accept,
        decode_client_update_untrusted: encode_client_update,
        decode_server_update_untrusted: encode_server_update,
        decode_disconnect_untrusted: encode_disconnect,
    }
    assert decoder(reencode[decoder](decoded)) == decoded
