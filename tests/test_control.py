"""Control channel codec: round trips, stream reassembly, bad messages vs broken framing."""

from __future__ import annotations

import math

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from battle.config import RoomConfig, RosterEntry
from battle.control import (
    MAX_CONTROL_FRAME,
    ControlDecoder,
    ControlFramingError,
    ControlMessage,
    ControlProtocolError,
    CreateRoom,
    Drain,
    EndRoom,
    Heartbeat,
    Ping,
    Pong,
    Register,
    Registered,
    Rejected,
    RejectReason,
    ResultAck,
    RoomCreated,
    RoomEvent,
    RoomEventKind,
    RoomResult,
    encode_message,
    room_config_from_plain,
    room_config_to_plain,
)

U64 = 2**64 - 1
U32 = 2**32 - 1
u64 = st.integers(0, U64)
u32 = st.integers(0, U32)
u8 = st.integers(0, 255)
name = st.text(min_size=1, max_size=40)
text = st.text(max_size=60)
seconds = st.floats(min_value=0.001, max_value=1e6, allow_nan=False, allow_infinity=False)
nonneg = st.floats(min_value=0, max_value=1e6, allow_nan=False, allow_infinity=False)
port = st.integers(1, 65535)

plain_leaf = (
    st.none()
    | st.booleans()
    | st.integers(-(2**63), U64)
    | st.floats(allow_nan=False)
    | st.text(max_size=10)
    | st.binary(max_size=10)
)
plain = st.recursive(
    plain_leaf,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=5), inner, max_size=4)
    ),
    max_leaves=12,
)
str_map = st.dictionaries(st.text(max_size=8), plain, max_size=5)


def _within(low: float, high: float, *, closed: bool = True) -> st.SearchStrategy[float]:
    return st.floats(
        min_value=low, max_value=high, exclude_min=not closed, allow_nan=False, allow_infinity=False
    )


# Every field drawn within RoomConfig's own bounds (config.py), edges included.
room_configs = st.builds(
    RoomConfig,
    tick_rate=st.integers(10, 60),
    start_timeout=_within(0, 3600, closed=False),
    min_players=st.integers(1, 10),
    max_input_bytes=st.integers(1, 255),
    max_inputs_per_frame=st.integers(1, 8),
    input_backlog=st.integers(0, 100),
    redundancy_window=_within(0.05, 2),
    heartbeat_interval=_within(0.01, 5),
    disconnect_timeout=_within(0.5, 600),
    max_duration=_within(0, 86400, closed=False),
    end_linger=_within(0, 60),
    empty_timeout=_within(0, 3600, closed=False),
)


@st.composite
def rosters(draw: st.DrawFn) -> tuple[RosterEntry, ...]:
    slots = draw(st.lists(u8, min_size=1, max_size=10, unique=True))
    return tuple(RosterEntry(s, draw(u64), draw(u8)) for s in slots)


messages: st.SearchStrategy[ControlMessage] = st.one_of(
    st.builds(Register, name, name, port, u32, u32, name, st.lists(u64, max_size=5).map(tuple)),
    st.builds(Registered, name, seconds, seconds),
    st.builds(Heartbeat, u32, u32, u32, st.booleans()),
    st.builds(
        CreateRoom,
        u64,
        u64,
        u64,
        u64,
        rosters(),
        room_configs.map(room_config_to_plain),
        st.binary(min_size=32, max_size=32),
    ),
    st.builds(RoomCreated, u64, u64, name, port),
    st.builds(Rejected, u64, u64, st.sampled_from(RejectReason)),
    st.builds(
        RoomEvent,
        u64,
        u64,
        st.sampled_from(RoomEventKind),
        u64,
        st.none() | u8,
        st.none() | u64,
        text,
    ),
    st.builds(RoomResult, u64, u64, str_map, st.lists(u8, max_size=5).map(tuple), u64, text, u32),
    st.builds(ResultAck, u64),
    st.builds(Drain, text),
    st.builds(Ping, u64),
    st.builds(Pong, u64),
)

KEY = bytes(range(32))
SAMPLES: list[ControlMessage] = [
    Register("host-1", "127.0.0.1", 40000, 200, 3, "0.1.0", (7, 9)),
    Registered("lobby-a", 1.0, 5.0),
    Heartbeat(3, 2, 11, False),
    CreateRoom(1, 7, 70, 12345, (RosterEntry(0, 100, 0), RosterEntry(1, 101, 1)), {}, KEY),
    RoomCreated(1, 7, "127.0.0.1", 40000),
    Rejected(2, 8, RejectReason.FULL),
    RoomEvent(7, 70, RoomEventKind.PLAYER_CONNECTED, 0, 1, 101, ""),
    RoomEvent(7, 70, RoomEventKind.STARTED, 1),
    RoomResult(70, 7, {"winner": 1, "score": [3, 1]}, (1,), 9000, "result", 0),
    ResultAck(70),
    EndRoom(7, 70, "placed elsewhere"),
    Drain("maintenance"),
    Ping(5),
    Pong(5),
]


def frame(obj: object) -> bytes:
    body: bytes = msgpack.packb(obj, use_bin_type=True)
    return len(body).to_bytes(4, "big") + body


def drain(dec: ControlDecoder) -> list[ControlMessage | str]:
    """Every message (or error reason) the decoder can produce from what it has."""
    out: list[ControlMessage | str] = []
    while True:
        try:
            msg = dec.next_message()
        except ControlFramingError:
            raise
        except ControlProtocolError as exc:  # a bad message: skipped, go on
            out.append(f"error: {exc.reason}")
            continue
        if msg is None:
            return out
        out.append(msg)


def decode_all(data: bytes) -> list[ControlMessage | str]:
    dec = ControlDecoder()
    dec.feed(data)
    return drain(dec)


# NaN is excluded from the strategies: it never equals itself, so == would fail spuriously.
@given(messages)
def test_round_trip_every_message(msg: ControlMessage) -> None:
    data = encode_message(msg)
    assert int.from_bytes(data[:4], "big") == len(data) - 4
    assert decode_all(data) == [msg]


def test_samples_round_trip_and_decode_to_enums() -> None:
    decoded = decode_all(b"".join(encode_message(m) for m in SAMPLES))
    assert decoded == SAMPLES
    rejected = decoded[5]
    assert isinstance(rejected, Rejected) and type(rejected.reason) is RejectReason
    event = decoded[6]
    assert isinstance(event, RoomEvent) and event.kind is RoomEventKind.PLAYER_CONNECTED
    created = decoded[3]
    assert isinstance(created, CreateRoom) and created.room_config() == RoomConfig()


def test_split_at_every_byte_boundary() -> None:
    data = b"".join(encode_message(m) for m in SAMPLES)
    for cut in range(len(data) + 1):
        dec = ControlDecoder()
        dec.feed(data[:cut])
        got = drain(dec)
        dec.feed(data[cut:])
        got += drain(dec)
        assert got == SAMPLES, cut


def test_byte_at_a_time() -> None:
    data = b"".join(encode_message(m) for m in SAMPLES)
    dec = ControlDecoder()
    got: list[ControlMessage | str] = []
    for i in range(len(data)):
        dec.feed(data[i : i + 1])
        got += drain(dec)
    assert got == SAMPLES


GOOD = {"t": "ping", "n": 1}
BAD_MESSAGES = [
    pytest.param({"t": "nope"}, "unknown message type", id="unknown-t"),
    pytest.param({"n": 1}, "unknown message type", id="no-t"),
    pytest.param({"t": 5}, "unknown message type", id="t-not-str"),
    pytest.param([1, 2], "must be a map", id="not-a-map"),
    pytest.param({"t": "ping"}, "ping.n: missing", id="missing-key"),
    pytest.param({"t": "ping", "n": "1"}, "ping.n", id="wrong-type"),
    pytest.param({"t": "ping", "n": True}, "ping.n", id="bool-as-int"),
    pytest.param(
        {"t": "heartbeat", "load": 2**32, "rooms": 0, "players": 0, "drain": False},
        "load",
        id="u32-too-big",
    ),
    pytest.param({"t": "ping", "n": -1}, "ping.n", id="negative-id"),
    pytest.param({"t": "ping", "n": 1.0}, "ping.n", id="float-as-int"),
    pytest.param({"t": "heartbeat", "load": 1, "rooms": 1, "players": 1, "drain": 1}, "drain"),
    pytest.param({"t": "registered", "lobby": "a", "hb": 0, "lease": 5.0}, "hb", id="zero-hb"),
    pytest.param(
        {"t": "registered", "lobby": "a", "hb": 1.0, "lease": math.inf}, "lease", id="inf-lease"
    ),
    pytest.param({"t": "registered", "lobby": "", "hb": 1, "lease": 5}, "lobby", id="empty-id"),
    pytest.param({"t": "rejected", "req": 1, "room": 2, "why": "bored"}, "why", id="bad-reason"),
    pytest.param(
        {"t": "register", "host": "h", "uhost": "x", "uport": 0, "cap": 1, "load": 0}
        | {"ver": "1", "rooms": []},
        "uport",
        id="port-zero",
    ),
    pytest.param(
        {"t": "room_result", "match": 1, "room": 1, "result": {b"k": 2}, "dis": [], "frames": 1}
        | {"why": "", "desyncs": 0},
        "result",
        id="bytes-result-key",
    ),
    pytest.param(
        {"t": "room_event", "room": 1, "match": 1, "kind": "started", "frame": 0}
        | {"slot": 256, "detail": ""},
        "slot",
        id="slot-too-big",
    ),
]


def create_room_map(**changes: object) -> dict[str, object]:
    m: dict[str, object] = {
        "t": "create_room",
        "req": 9,
        "room": 4,
        "match": 40,
        "seed": 1,
        "roster": [[0, 100, 0]],
        "cfg": {"tick_rate": 20},
        "key": KEY,
    }
    m.update(changes)
    return m


BAD_MESSAGES += [
    pytest.param(create_room_map(key=KEY[:31]), "key", id="short-key"),
    pytest.param(create_room_map(key=KEY.hex()), "key", id="key-as-str"),
    pytest.param(create_room_map(roster=[]), "roster", id="empty-roster"),
    pytest.param(create_room_map(roster=[[0, 1, 0], [0, 2, 1]]), "duplicate", id="dup-slot"),
    pytest.param(create_room_map(roster=[[0, 1]]), "roster", id="short-entry"),
    pytest.param(create_room_map(cfg={"tick_rate": 5}), "tick_rate", id="cfg-invalid"),
    pytest.param(create_room_map(cfg={"nope": 1}), "nope", id="cfg-unknown-key"),
    pytest.param(create_room_map(cfg={"tick_rate": 20.0}), "tick_rate", id="cfg-wrong-type"),
    pytest.param(create_room_map(room=-1), "room", id="negative-room-id"),
]


@pytest.mark.parametrize(("bad", "why"), BAD_MESSAGES)
def test_bad_message_is_skipped_and_next_is_decoded(bad: object, why: str) -> None:
    dec = ControlDecoder()
    dec.feed(frame(bad) + frame(GOOD))
    with pytest.raises(ControlProtocolError, match=why) as info:
        dec.next_message()
    assert type(info.value) is ControlProtocolError and not info.value.fatal
    assert dec.next_message() == Ping(1)
    assert dec.next_message() is None
    assert not dec.broken


def test_bad_create_room_error_carries_request_id() -> None:
    dec = ControlDecoder()
    dec.feed(frame(create_room_map(key=b"short")))
    with pytest.raises(ControlProtocolError) as info:
        dec.next_message()
    err = info.value
    assert (err.message_type, err.request_id, err.room_id) == ("create_room", 9, 4)


@pytest.mark.parametrize(
    "body",
    [
        b"\xc1",
        b"\x92\x01",
        b"\x81\xa1t",
        b"\xa1t\x00",
        b"\xa2\xff\xfe",
        b"\x01\x02",
        b"\x81\x01\x02",
    ],
    ids=[
        "never-used",
        "truncated",
        "truncated-map",
        "extra-data",
        "bad-utf8",
        "two-objects",
        "int-map-key",
    ],
)
def test_garbage_msgpack_in_valid_frame_is_not_fatal(body: bytes) -> None:
    dec = ControlDecoder()
    dec.feed(len(body).to_bytes(4, "big") + body + frame(GOOD))
    with pytest.raises(ControlProtocolError) as info:
        dec.next_message()
    assert not info.value.fatal
    assert dec.next_message() == Ping(1)


@pytest.mark.parametrize("length", [0, MAX_CONTROL_FRAME + 1, 2**32 - 1])
def test_bad_length_is_fatal_and_keeps_raising(length: int) -> None:
    dec = ControlDecoder()
    dec.feed(frame(GOOD) + length.to_bytes(4, "big") + frame(GOOD))
    assert dec.next_message() == Ping(1)
    for _ in range(3):
        with pytest.raises(ControlFramingError) as info:
            dec.next_message()
        assert info.value.fatal and isinstance(info.value, ControlProtocolError)
    assert dec.broken
    with pytest.raises(ControlFramingError):
        dec.feed(frame(GOOD))


def test_oversize_length_detected_before_body_arrives() -> None:
    dec = ControlDecoder()
    dec.feed((MAX_CONTROL_FRAME + 1).to_bytes(4, "big"))
    with pytest.raises(ControlFramingError):
        dec.next_message()


def test_max_frame_is_accepted() -> None:
    def body_with(pad: int) -> bytes:
        out: bytes = msgpack.packb({"t": "ping", "n": 3, "pad": b"x" * pad}, use_bin_type=True)
        return out

    overhead = len(body_with(70_000)) - 70_000  # bin32 header from here to the limit
    body = body_with(MAX_CONTROL_FRAME - overhead)
    assert len(body) == MAX_CONTROL_FRAME
    assert decode_all(len(body).to_bytes(4, "big") + body) == [Ping(3)]


def test_unknown_extra_keys_are_ignored() -> None:
    m = create_room_map(future={"x": [1, 2]}, zz=None)
    (msg,) = decode_all(frame(m))
    assert isinstance(msg, CreateRoom) and msg.request_id == 9
    assert msg.room_config() == RoomConfig(tick_rate=20)
    assert decode_all(frame({"t": "pong", "n": 4, "extra": 1})) == [Pong(4)]
    # Extra trailing roster-entry fields are ignored too.
    (msg,) = decode_all(frame(create_room_map(roster=[[0, 100, 0, "newer"]])))
    assert isinstance(msg, CreateRoom) and msg.roster == (RosterEntry(0, 100, 0),)


def test_optional_event_fields_may_be_absent_or_nil() -> None:
    base = {"t": "room_event", "room": 1, "match": 2, "kind": "ended", "frame": 9, "detail": "x"}
    expected = RoomEvent(1, 2, RoomEventKind.ENDED, 9, None, None, "x")
    assert decode_all(frame(base)) == [expected]
    assert decode_all(frame(base | {"slot": None, "player": None})) == [expected]


@settings(max_examples=300)
@given(st.lists(st.binary(max_size=40), max_size=8))
def test_random_bytes_raise_only_protocol_errors(chunks: list[bytes]) -> None:
    dec = ControlDecoder()
    try:
        for chunk in chunks:
            dec.feed(chunk)
            drain(dec)
    except ControlFramingError:
        assert dec.broken


@settings(max_examples=300)
@given(st.dictionaries(st.sampled_from(["t", "n", "req", "room", "x"]), plain, max_size=5))
def test_random_maps_raise_only_protocol_errors(m: dict[str, object]) -> None:
    assert decode_all(frame(m) + frame(GOOD))[-1] == Ping(1)


@given(messages, st.data())
def test_corrupted_frames_raise_only_protocol_errors(
    msg: ControlMessage, data: st.DataObject
) -> None:
    raw = bytearray(encode_message(msg))
    i = data.draw(st.integers(4, len(raw) - 1))
    raw[i] = data.draw(u8)
    dec = ControlDecoder()
    dec.feed(bytes(raw) + frame(GOOD))
    assert drain(dec)[-1] == Ping(1)


def test_encoder_refuses_what_the_decoder_rejects() -> None:
    with pytest.raises(ValueError, match="key"):
        encode_message(CreateRoom(1, 1, 1, 1, (RosterEntry(0, 1, 0),), {}, b"short"))
    with pytest.raises(ValueError, match="n"):
        encode_message(Ping(True))
    with pytest.raises(ValueError, match="why"):
        encode_message(Rejected(1, 1, "bored"))
    with pytest.raises(ValueError, match="over"):
        encode_message(RoomResult(1, 1, {"x": b"x" * MAX_CONTROL_FRAME}, (), 0, "", 0))
    with pytest.raises(TypeError):
        encode_message(object())  # type: ignore[arg-type]


@given(room_configs)
def test_room_config_plain_round_trip(cfg: RoomConfig) -> None:
    plain = room_config_to_plain(cfg)
    assert room_config_from_plain(plain) == cfg
    assert room_config_from_plain(msgpack.unpackb(msgpack.packb(plain))) == cfg


def test_room_config_from_plain_validation() -> None:
    assert room_config_from_plain({}) == RoomConfig()
    assert room_config_from_plain({"start_timeout": 10}) == RoomConfig(start_timeout=10.0)
    bad_configs: list[object] = [
        {"tick_rate": True},
        {"tick_rate": "15"},
        {"tick_rate": 61},
        {"min_players": 0},
        {"start_timeout": -1.0},
        {"start_timeout": math.nan},
        {"start_timeout": False},
        {"bogus": 1},
        {1: 2},
        [],
    ]
    for bad in bad_configs:
        with pytest.raises(ControlProtocolError):
            room_config_from_plain(bad)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("msg", "hex_frame"),
    [
        (Ping(5), "00 00 00 0b 82 a1 74 a4 70 69 6e 67 a1 6e 05"),
        (
            Rejected(2, 8, RejectReason.FULL),
            "00 00 00 20 84 a1 74 a8 72 65 6a 65 63 74 65 64 a3 72 65 71 02 a4 72 6f 6f 6d 08"
            " a3 77 68 79 a4 66 75 6c 6c",
        ),
    ],
)
def test_documented_example_frames(msg: ControlMessage, hex_frame: str) -> None:
    """The example frames in docs/PROTOCOL.md, "Control channel"."""
    data = bytes.fromhex(hex_frame)
    assert encode_message(msg) == data
    assert decode_all(data) == [msg]
