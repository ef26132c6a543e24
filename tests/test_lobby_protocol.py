"""Lobby client protocol codec: round trips, stream reassembly, error codes, roles, framing."""

from __future__ import annotations

import dataclasses

import msgpack
import pytest
from hypothesis import given
from hypothesis import strategies as st

from lobby.protocol import (
    MAX_LOBBY_FRAME,
    MAX_SKIPPABLE_FRAME,
    PROTOCOL_VERSION,
    Accept,
    CancelQueue,
    Decline,
    Error,
    ErrorCode,
    GetHistory,
    GetRating,
    Heartbeat,
    HeartbeatAck,
    Hello,
    History,
    HistoryEntry,
    Kicked,
    LobbyDecoder,
    LobbyFramingError,
    LobbyProtocolError,
    LoggedIn,
    Login,
    LoginDevice,
    Logout,
    MatchAborted,
    MatchCancelled,
    MatchEnded,
    MatchProposed,
    MatchReady,
    Message,
    Queue,
    QueueCancelled,
    Queued,
    Rating,
    Register,
    RegisterDevice,
    Resume,
    Role,
    Welcome,
    answer_hello,
    encode_message,
    error_for,
    type_name,
)

U64 = 2**64 - 1
U32 = 2**32 - 1
u64 = st.integers(0, U64)
u32 = st.integers(0, U32)
u8 = st.integers(0, 255)
rid = st.none() | u32
name = st.text(min_size=1, max_size=64)
secret = st.text(min_size=1, max_size=256)
text = st.text(max_size=80)
token = st.binary(min_size=1, max_size=512)
key = st.binary(min_size=32, max_size=32)
secs = st.floats(min_value=0, max_value=1e10, allow_nan=False, allow_infinity=False)
pos_secs = st.floats(min_value=1e-3, max_value=1e6, allow_nan=False, allow_infinity=False)
num = st.floats(allow_nan=False, allow_infinity=False)
ids = st.lists(u64, min_size=1, max_size=10, unique=True).map(tuple)


@st.composite
def teams(draw: st.DrawFn) -> tuple[tuple[int, ...], ...]:
    players = draw(st.lists(u64, min_size=1, max_size=20, unique=True))
    n = draw(st.integers(1, min(4, len(players))))
    return tuple(tuple(players[i::n]) for i in range(n))


history_entries = st.builds(HistoryEntry, u64, name, name, secs, num, num)

client_messages: st.SearchStrategy[Message] = st.one_of(
    st.builds(Hello, u32, name, name, rid),
    st.builds(Register, name, secret, rid),
    st.builds(RegisterDevice, secret, rid),
    st.builds(Login, name, secret, rid),
    st.builds(LoginDevice, secret, rid),
    st.builds(Resume, token, rid),
    st.builds(Heartbeat, u64, rid),
    st.builds(Queue, name, name, st.none() | ids, rid),
    st.builds(CancelQueue, rid),
    st.builds(Accept, u64, rid),
    st.builds(Decline, u64, rid),
    st.builds(GetRating, rid),
    st.builds(GetHistory, st.integers(1, 100), rid),
    st.builds(Logout, rid),
)
server_messages: st.SearchStrategy[Message] = st.one_of(
    st.builds(Welcome, u32, name, pos_secs, pos_secs, rid),
    st.builds(LoggedIn, u64, name, token, secs, rid),
    st.builds(Kicked, text, rid),
    st.builds(HeartbeatAck, u64, rid),
    st.builds(Queued, u64, name, name, secs, rid),
    st.builds(QueueCancelled, u64, rid),
    st.builds(MatchProposed, u64, name, teams(), secs, rid),
    st.builds(MatchCancelled, u64, text, st.booleans(), rid),
    st.builds(
        MatchReady,
        u64,
        name,
        st.integers(1, 65535),
        st.binary(min_size=128, max_size=128),
        key,
        key,
        u8,
        u8,
        st.integers(1, 255),
        rid,
    ),
    st.builds(MatchEnded, u64, name, num, num, rid),
    st.builds(MatchAborted, u64, text, rid),
    st.builds(Rating, num, secs, num, u32, rid),
    st.builds(History, st.lists(history_entries, max_size=5).map(tuple), rid),
    st.builds(Error, st.sampled_from(ErrorCode), text, st.none() | name, rid),
)

K = bytes(range(32))
CLIENT_SAMPLES: list[Message] = [
    Hello(PROTOCOL_VERSION, "bot", "0.1.0", rid=1),
    Register("alice", "hunter2"),
    RegisterDevice("dev-1234"),
    Login("alice", "hunter2", rid=2),
    LoginDevice("dev-1234"),
    Resume(b"\x01" * 40),
    Heartbeat(7, rid=U32),
    Queue("5v5", "eu"),
    Queue("3v3", "na", (10, 11, 12), rid=3),
    CancelQueue(),
    Accept(99),
    Decline(99, rid=0),
    GetRating(),
    GetHistory(20),
    Logout(),
]
SERVER_SAMPLES: list[Message] = [
    Welcome(PROTOCOL_VERSION, "lobby-a", 5.0, 30.0, rid=1),
    LoggedIn(10, "alice", b"tok" * 10, 1.7e9, rid=2),
    Kicked("logged in elsewhere"),
    HeartbeatAck(7, rid=U32),
    Queued(500, "5v5", "eu", 12.5),
    QueueCancelled(500),
    MatchProposed(99, "1v1", ((10,), (11,)), 1.7e9 + 10),
    MatchCancelled(99, "declined", True),
    MatchReady(1, "127.0.0.1", 40000, bytes(128), K, K[::-1], 3, 1, 15),
    MatchEnded(1, "win", 12.0, 13.5),
    MatchAborted(1, "room host lost"),
    Rating(25.0, 8.3, 0.1, 3),
    History((HistoryEntry(1, "5v5", "win", 1.7e9, 12.0, 13.5),)),
    History(()),
    Error(ErrorCode.NOT_LOGGED_IN, "log in first", "queue", rid=4),
    Error(ErrorCode.INTERNAL, "oops"),
]


def frame(obj: object) -> bytes:
    body: bytes = msgpack.packb(obj, use_bin_type=True)
    return len(body).to_bytes(4, "big") + body


def drain(dec: LobbyDecoder) -> list[Message | str]:
    """Every message (or 'error: code') the decoder can produce from what it has."""
    out: list[Message | str] = []
    while True:
        try:
            msg = dec.next_message()
        except LobbyFramingError:
            raise
        except LobbyProtocolError as exc:  # a bad message: skipped, go on
            out.append(f"error: {exc.code}")
            continue
        if msg is None:
            return out
        out.append(msg)


def decode_all(data: bytes, role: Role = Role.SERVER) -> list[Message | str]:
    dec = LobbyDecoder(role)
    dec.feed(data)
    return drain(dec)


def decode_error(obj: object, role: Role = Role.SERVER) -> LobbyProtocolError:
    dec = LobbyDecoder(role)
    dec.feed(frame(obj))
    with pytest.raises(LobbyProtocolError) as info:
        dec.next_message()
    assert not info.value.fatal
    assert dec.next_message() is None  # skipped, not stuck
    return info.value


# --- round trips --------------------------------------------------------------------------


@given(client_messages)
def test_round_trip_client_messages(msg: Message) -> None:
    data = encode_message(msg)
    assert int.from_bytes(data[:4], "big") == len(data) - 4
    assert decode_all(data, Role.SERVER) == [msg]


@given(server_messages)
def test_round_trip_server_messages(msg: Message) -> None:
    assert decode_all(encode_message(msg), Role.CLIENT) == [msg]


def test_samples_round_trip_with_types_restored() -> None:
    assert decode_all(b"".join(map(encode_message, CLIENT_SAMPLES))) == CLIENT_SAMPLES
    decoded = decode_all(b"".join(map(encode_message, SERVER_SAMPLES)), Role.CLIENT)
    assert decoded == SERVER_SAMPLES
    err = decoded[-2]
    assert isinstance(err, Error) and err.code is ErrorCode.NOT_LOGGED_IN
    queue = decoded[0]
    assert isinstance(queue, Welcome) and type(queue.heartbeat_interval) is float
    hist = decoded[12]
    assert isinstance(hist, History) and isinstance(hist.entries[0], HistoryEntry)
    every = {type(m) for m in CLIENT_SAMPLES + SERVER_SAMPLES}
    assert len(every) == 28  # every message type is sampled


def test_wire_uses_short_keys_and_omits_none() -> None:
    body = msgpack.unpackb(encode_message(Queue("5v5", "eu"))[4:])
    assert body == {"t": "queue", "mode": "5v5", "region": "eu"}
    body = msgpack.unpackb(encode_message(Heartbeat(3, rid=9))[4:])
    assert body == {"t": "heartbeat", "n": 3, "rid": 9}
    assert type_name(MatchReady(1, "h", 1, bytes(128), K, K, 0, 0, 15)) == "match_ready"


def test_optional_field_may_be_nil_and_unknown_keys_are_ignored() -> None:
    got = decode_all(frame({"t": "queue", "mode": "1v1", "region": "eu", "party": None, "x": 1}))
    assert got == [Queue("1v1", "eu")]
    assert decode_all(frame({"t": "logout", "rid": None})) == [Logout()]


# --- stream reassembly --------------------------------------------------------------------


def test_split_at_every_byte_boundary() -> None:
    data = b"".join(encode_message(m) for m in CLIENT_SAMPLES[:8])
    data += frame({"t": "nope"}) + encode_message(Logout(rid=5))
    want = [*CLIENT_SAMPLES[:8], "error: unknown_type", Logout(rid=5)]
    for cut in range(len(data) + 1):
        dec = LobbyDecoder(Role.SERVER)
        dec.feed(data[:cut])
        got = drain(dec)
        dec.feed(data[cut:])
        assert got + drain(dec) == want, cut


def test_byte_at_a_time() -> None:
    data = b"".join(encode_message(m) for m in SERVER_SAMPLES)
    dec = LobbyDecoder(Role.CLIENT)
    got: list[Message | str] = []
    for i in range(len(data)):
        dec.feed(data[i : i + 1])
        got += drain(dec)
    assert got == SERVER_SAMPLES


@given(st.lists(client_messages, min_size=1, max_size=5), st.data())
def test_random_splits(msgs: list[Message], data: st.DataObject) -> None:
    stream = b"".join(map(encode_message, msgs))
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=6)))
    dec = LobbyDecoder(Role.SERVER)
    got: list[Message | str] = []
    for a, b in zip([0, *cuts], [*cuts, len(stream)], strict=True):
        dec.feed(stream[a:b])
        got += drain(dec)
    assert got == msgs


# --- error codes --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("obj", "code", "request_type"),
    [
        ({"t": "fly"}, ErrorCode.UNKNOWN_TYPE, None),
        ({"t": 3}, ErrorCode.UNKNOWN_TYPE, None),
        ({"n": 1}, ErrorCode.MISSING_FIELD, None),
        ({"t": "heartbeat"}, ErrorCode.MISSING_FIELD, "heartbeat"),
        ({"t": "login", "name": "a"}, ErrorCode.MISSING_FIELD, "login"),
        ({"t": "heartbeat", "n": "1"}, ErrorCode.BAD_FIELD, "heartbeat"),
        ({"t": "heartbeat", "n": None}, ErrorCode.BAD_FIELD, "heartbeat"),
        ({"t": "heartbeat", "n": True}, ErrorCode.BAD_FIELD, "heartbeat"),  # bool is not an int
        ({"t": "accept", "prop": 1.0}, ErrorCode.BAD_FIELD, "accept"),
        ({"t": "accept", "prop": -1}, ErrorCode.BAD_FIELD, "accept"),
        ({"t": "accept", "prop": -(2**63)}, ErrorCode.BAD_FIELD, "accept"),
        ({"t": "get_history", "limit": 0}, ErrorCode.BAD_FIELD, "get_history"),
        ({"t": "get_history", "limit": 101}, ErrorCode.BAD_FIELD, "get_history"),
        ({"t": "login", "name": "a" * 65, "pw": "x"}, ErrorCode.BAD_FIELD, "login"),
        ({"t": "login", "name": "", "pw": "x"}, ErrorCode.BAD_FIELD, "login"),
        ({"t": "login", "name": b"a", "pw": "x"}, ErrorCode.BAD_FIELD, "login"),
        ({"t": "resume", "tok": "text"}, ErrorCode.BAD_FIELD, "resume"),
        ({"t": "resume", "tok": b""}, ErrorCode.BAD_FIELD, "resume"),
        ({"t": "queue", "mode": "m", "region": "r", "party": [1, 1]}, ErrorCode.BAD_FIELD, "queue"),
        ({"t": "queue", "mode": "m", "region": "r", "party": []}, ErrorCode.BAD_FIELD, "queue"),
        ({"t": "queue", "mode": "m", "region": "r", "party": 5}, ErrorCode.BAD_FIELD, "queue"),
        ({"t": "logout", "rid": -1}, ErrorCode.BAD_FIELD, "logout"),
        ({"t": "logout", "rid": 2**32}, ErrorCode.BAD_FIELD, "logout"),
        ({"t": "logout", "rid": False}, ErrorCode.BAD_FIELD, "logout"),
        ([1, 2], ErrorCode.MALFORMED, None),
        ("hello", ErrorCode.MALFORMED, None),
    ],
)
def test_bad_message_codes(obj: object, code: ErrorCode, request_type: str | None) -> None:
    exc = decode_error(obj)
    assert exc.code is code
    assert exc.request_type == request_type
    assert exc.message  # readable


@pytest.mark.parametrize(
    ("obj", "t"),
    [
        ({"t": "welcome", "ver": 1, "server": "s", "hb": 0, "idle": 1}, "welcome"),
        (
            {
                "t": "match_ready",
                "match": 1,
                "host": "h",
                "port": 0,
                "ticket": bytes(128),
                "c2s": K,
                "s2c": K,
                "slot": 0,
                "team": 0,
                "rate": 15,
            },
            "match_ready",
        ),
        (
            {
                "t": "match_ready",
                "match": 1,
                "host": "h",
                "port": 1,
                "ticket": bytes(127),
                "c2s": K,
                "s2c": K,
                "slot": 0,
                "team": 0,
                "rate": 15,
            },
            "match_ready",
        ),
        (
            {"t": "match_proposed", "prop": 1, "mode": "m", "teams": [[1], [1]], "exp": 0},
            "match_proposed",
        ),
        ({"t": "match_cancelled", "prop": 1, "why": "", "requeued": 1}, "match_cancelled"),
        ({"t": "rating", "mu": float("nan"), "sigma": 1, "ord": 0, "matches": 0}, "rating"),
        ({"t": "rating", "mu": 0, "sigma": -1.0, "ord": 0, "matches": 0}, "rating"),
        ({"t": "kicked", "why": "x" * 4097}, "kicked"),
        ({"t": "error", "code": "nope", "msg": ""}, "error"),
        ({"t": "history", "entries": [[1, "m", "win", 0, 1]]}, "history"),
        ({"t": "history", "entries": [[1, "m", "win", 0, 1, 2]] * 101}, "history"),
    ],
)
def test_bad_server_fields(obj: dict[str, object], t: str) -> None:
    exc = decode_error(obj, Role.CLIENT)
    assert (exc.code, exc.request_type) == (ErrorCode.BAD_FIELD, t)


def test_not_msgpack_is_malformed_and_skipped() -> None:
    dec = LobbyDecoder(Role.SERVER)
    dec.feed(b"\x00\x00\x00\x01\xc1" + encode_message(Logout()))  # 0xc1 is never valid
    with pytest.raises(LobbyProtocolError) as info:
        dec.next_message()
    assert info.value.code is ErrorCode.MALFORMED and not info.value.fatal
    assert dec.next_message() == Logout()


def test_stream_goes_on_after_bad_messages() -> None:
    data = frame({"t": "heartbeat", "n": True, "rid": 8}) + encode_message(Heartbeat(1))
    data += frame({"t": "welcome"}) + encode_message(GetRating(rid=2))
    assert decode_all(data) == [
        "error: bad_field",
        Heartbeat(1),
        "error: unknown_type",
        GetRating(rid=2),
    ]


@pytest.mark.parametrize(
    ("header", "code"),
    [
        (b"\x00\x00\x00\x00", ErrorCode.MALFORMED),
        ((MAX_SKIPPABLE_FRAME + 1).to_bytes(4, "big"), ErrorCode.TOO_LARGE),
        (b"\xff\xff\xff\xff", ErrorCode.TOO_LARGE),
    ],
)
def test_broken_framing_is_fatal_for_good(header: bytes, code: ErrorCode) -> None:
    dec = LobbyDecoder(Role.SERVER)
    dec.feed(encode_message(Logout()))
    assert dec.next_message() == Logout()
    with pytest.raises(LobbyFramingError) as info:
        dec.feed(header + b"x" * 100)
    assert info.value.code is code and info.value.fatal and dec.broken
    for _ in range(2):
        with pytest.raises(LobbyFramingError):
            dec.next_message()
        with pytest.raises(LobbyFramingError):
            dec.feed(encode_message(Logout()))
    err = error_for(info.value)
    assert err.code is code and err.rid is None


def test_good_frame_before_broken_one_is_delivered() -> None:
    dec = LobbyDecoder(Role.SERVER)
    dec.feed(encode_message(Logout(rid=1)) + b"\x00\x00\x00\x00")
    assert dec.next_message() == Logout(rid=1)
    with pytest.raises(LobbyFramingError):
        dec.next_message()


def test_size_cap_is_checked_from_the_prefix_alone() -> None:
    dec = LobbyDecoder(Role.SERVER, max_frame=100)
    dec.feed(b"\x00\x00")
    assert dec.next_message() is None
    dec.feed(b"\x00\x65")  # 101: refused before a byte of body arrives
    with pytest.raises(LobbyProtocolError) as info:
        dec.next_message()
    assert info.value.code is ErrorCode.TOO_LARGE and not info.value.fatal and not dec.broken
    ok = LobbyDecoder(Role.SERVER, max_frame=100)
    ok.feed(b"\x00\x00\x00\x64")
    assert ok.next_message() is None and not ok.broken


@pytest.mark.parametrize("chunk", [1, 7, 4096])
def test_oversized_frame_is_skipped_unbuffered_and_the_stream_goes_on(chunk: int) -> None:
    dec = LobbyDecoder(Role.SERVER, max_frame=100)
    big = (5000).to_bytes(4, "big") + b"\xaa" * 5000
    stream = encode_message(Logout(rid=1)) + big + encode_message(GetRating(rid=2))
    got: list[object] = []
    for i in range(0, len(stream), chunk):
        dec.feed(stream[i : i + chunk])
        while True:
            try:
                msg = dec.next_message()
            except LobbyProtocolError as exc:
                got.append(exc.code)
                continue
            if msg is None:
                break
            got.append(msg)
        assert len(dec._frames._buf) <= max(chunk, 110)  # never holds the oversized body
    assert got == [Logout(rid=1), ErrorCode.TOO_LARGE, GetRating(rid=2)]


def test_encoder_refuses_invalid_messages() -> None:
    bad: list[Message] = [
        Heartbeat(-1),
        Heartbeat(True),
        Hello(1, "", "v"),
        Queue("m", "r", ()),
        GetHistory(0),
        Accept(1, rid=2**32),
        MatchReady(1, "h", 1, bytes(10), K, K, 0, 0, 15),
        Welcome(1, "s", float("inf"), 1.0),
        Kicked("x" * 5000),
    ]
    for msg in bad:
        with pytest.raises(ValueError, match="cannot encode"):
            encode_message(msg)
    with pytest.raises(TypeError):
        encode_message(HistoryEntry(1, "m", "w", 0, 0, 0))  # type: ignore[arg-type]

    # The biggest messages the limits allow still fit in a frame (4-byte UTF-8 everywhere).
    wide = "\U0001d11e"
    entry = HistoryEntry(U64, wide * 64, wide * 64, 1.5, -1.5, 1.5)
    assert len(encode_message(History((entry,) * 100, rid=U32))) <= MAX_LOBBY_FRAME
    big_teams = tuple(tuple(range(U64 - 64 * (i + 1), U64 - 64 * i)) for i in range(16))
    assert len(encode_message(MatchProposed(U64, wide * 64, big_teams, 1.5))) <= MAX_LOBBY_FRAME
    assert len(encode_message(Error(ErrorCode.INTERNAL, wide * 4096, wide * 64))) <= MAX_LOBBY_FRAME


# --- roles --------------------------------------------------------------------------------


@pytest.mark.parametrize("msg", SERVER_SAMPLES)
def test_server_decoder_refuses_server_messages(msg: Message) -> None:
    assert decode_all(encode_message(msg), Role.SERVER) == ["error: unknown_type"]


@pytest.mark.parametrize("msg", CLIENT_SAMPLES)
def test_client_decoder_refuses_client_messages(msg: Message) -> None:
    assert decode_all(encode_message(msg), Role.CLIENT) == ["error: unknown_type"]


# --- rid echo and helpers -----------------------------------------------------------------


def test_rid_is_kept_on_field_errors_and_echoed() -> None:
    exc = decode_error({"t": "accept", "prop": "x", "rid": 77})
    assert (exc.code, exc.request_type, exc.rid) == (ErrorCode.BAD_FIELD, "accept", 77)
    answer = error_for(exc)
    assert answer == Error(ErrorCode.BAD_FIELD, exc.message, "accept", 77)
    assert decode_all(encode_message(answer), Role.CLIENT) == [answer]
    assert decode_error({"t": "nope", "rid": 5}).rid == 5  # unknown type: the rid still counts
    assert decode_error({"rid": 6}).rid == 6
    assert decode_error({"t": "nope", "rid": -1}).rid is None


@given(client_messages, u32)
def test_rid_round_trip_through_an_answer(msg: Message, r: int) -> None:
    request = dataclasses.replace(msg, rid=r)
    (decoded,) = decode_all(encode_message(request), Role.SERVER)
    assert not isinstance(decoded, str) and decoded.rid == r
    answer = Error(ErrorCode.TOO_FAST, "slow down", type_name(decoded), decoded.rid)
    (back,) = decode_all(encode_message(answer), Role.CLIENT)
    assert back == answer and isinstance(back, Error) and back.request_type == type_name(msg)


def test_answer_hello() -> None:
    ok = answer_hello(
        Hello(PROTOCOL_VERSION, "bot", "1", rid=3),
        server_name="lobby",
        heartbeat_interval=5,
        idle_timeout=30,
    )
    assert ok == Welcome(PROTOCOL_VERSION, "lobby", 5, 30, rid=3)
    encode_message(ok)
    bad = answer_hello(
        Hello(99, "bot", "1", rid=4), server_name="lobby", heartbeat_interval=5, idle_timeout=30
    )
    assert isinstance(bad, Error)
    assert (bad.code, bad.request_type, bad.rid) == (ErrorCode.UNSUPPORTED_VERSION, "hello", 4)
    assert "99" in bad.message
    encode_message(bad)


def test_server_side_codes_exist_with_stable_values() -> None:
    for code in (
        "unknown_type",
        "missing_field",
        "bad_field",
        "not_logged_in",
        "already_queued",
        "not_in_match",
        "too_large",
        "too_fast",
        "bad_credentials",
        "unsupported_version",
        "internal",
    ):
        assert ErrorCode(code).value == code


# --- hostile input ------------------------------------------------------------------------

plain_leaf = (
    st.none()
    | st.booleans()
    | st.integers(-(2**63), U64)
    | st.floats()
    | st.text(max_size=10)
    | st.binary(max_size=10)
)
plain = st.recursive(
    plain_leaf,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner),
    max_leaves=10,
)
TYPES = [*map(type_name, CLIENT_SAMPLES + SERVER_SAMPLES), "x"]
KEYS = [
    "ver",
    "client",
    "cver",
    "name",
    "pw",
    "dev",
    "tok",
    "n",
    "mode",
    "region",
    "party",
    "prop",
    "limit",
    "rid",
    "teams",
    "entries",
    "code",
    "msg",
    "req",
    "exp",
    "port",
]
maps = st.fixed_dictionaries(
    {"t": st.sampled_from(TYPES)}, optional=dict.fromkeys(KEYS, plain)
) | st.dictionaries(st.sampled_from(KEYS), plain)


def _only_protocol_errors(data: bytes, role: Role) -> None:
    dec = LobbyDecoder(role)
    for i in range(0, len(data), 7):
        try:
            dec.feed(data[i : i + 7])
            drain(dec)
        except LobbyFramingError:
            assert dec.broken
            return


@given(st.binary(max_size=300), st.sampled_from(Role))
def test_arbitrary_bytes_raise_only_protocol_errors(data: bytes, role: Role) -> None:
    _only_protocol_errors(data, role)


@given(st.lists(maps, max_size=4), st.sampled_from(Role))
def test_hostile_maps_raise_only_protocol_errors(objs: list[object], role: Role) -> None:
    _only_protocol_errors(b"".join(frame(o) for o in objs), role)
    for obj in objs:
        try:
            dec = LobbyDecoder(role)
            dec.feed(frame(obj))
            msg = dec.next_message()
        except LobbyProtocolError:
            continue
        assert msg is not None
        assert decode_all(encode_message(msg), role) == [msg]  # whatever decodes re-encodes
