"""Datagram framing: untrusted decoding, fixed sizes, pre-handshake round trips, sealed headers."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from battle.errors import BadDatagram
from battle.wire import (
    ACCEPT_HEADER_SIZE,
    CONNECT_REQUEST_SIZE,
    COOKIE_SIZE,
    MAGIC,
    MAX_DATAGRAM,
    PROTOCOL_VERSION,
    SEALED_HEADER_SIZE,
    SEALED_OVERHEAD,
    SEALED_TYPES,
    SESSION_SALT_SIZE,
    TICKET_SIZE,
    Challenge,
    ConnectRequest,
    ConnectResponse,
    Denied,
    DenyReason,
    PacketType,
    Sealed,
    decode_datagram_untrusted,
    encode_challenge,
    encode_connect_request,
    encode_connect_response,
    encode_denied,
    sealed_header,
)

U64 = 2**64 - 1
TICKET = bytes(range(TICKET_SIZE))
COOKIE = bytes(range(200, 200 + COOKIE_SIZE))
CLIENT_SALT = bytes(range(0x40, 0x40 + SESSION_SALT_SIZE))

# Exact sizes of the fixed-size (pre-handshake) datagrams.
FIXED_SIZES = {
    PacketType.CONNECT_REQUEST: CONNECT_REQUEST_SIZE,
    PacketType.CHALLENGE: 2 + COOKIE_SIZE,
    PacketType.CONNECT_RESPONSE: 2 + COOKIE_SIZE + TICKET_SIZE + SESSION_SALT_SIZE,
    PacketType.DENIED: 3,
}
KNOWN_TYPES = {int(t) for t in PacketType}


def reason_of(data: bytes) -> str:
    with pytest.raises(BadDatagram) as info:
        decode_datagram_untrusted(data)
    return info.value.reason


def valid_datagram(ptype: PacketType) -> bytes:
    if ptype is PacketType.CONNECT_REQUEST:
        return encode_connect_request(TICKET)
    if ptype is PacketType.CHALLENGE:
        return encode_challenge(COOKIE)
    if ptype is PacketType.CONNECT_RESPONSE:
        return encode_connect_response(COOKIE, TICKET, CLIENT_SALT)
    if ptype is PacketType.DENIED:
        return encode_denied(DenyReason.ROOM_FULL)
    return sealed_header(ptype, 7) + bytes(40)


# --- constants -------------------------------------------------------------------------------


def test_magic_byte_layout() -> None:
    assert MAGIC == 0xF0 | PROTOCOL_VERSION
    assert MAGIC >> 4 == 0xF
    assert SEALED_HEADER_SIZE == 10
    assert SEALED_OVERHEAD == SEALED_HEADER_SIZE + 16


def test_fixed_sizes_are_the_documented_ones() -> None:
    assert FIXED_SIZES == {
        PacketType.CONNECT_REQUEST: 512,
        PacketType.CHALLENGE: 22,
        PacketType.CONNECT_RESPONSE: 166,
        PacketType.DENIED: 3,
    }


def test_connect_request_is_fixed_size_and_larger_than_every_pre_handshake_reply() -> None:
    request = encode_connect_request(TICKET)
    assert len(request) == CONNECT_REQUEST_SIZE
    assert len(request) <= MAX_DATAGRAM
    challenge = encode_challenge(COOKIE)
    replies = [challenge] + [encode_denied(reason) for reason in DenyReason]
    for reply in replies:
        assert len(reply) < len(request)
    assert len(challenge) == FIXED_SIZES[PacketType.CHALLENGE]


# --- targeted rejections ---------------------------------------------------------------------


@pytest.mark.parametrize("data", [b"", b"\xf1", b"\x00", bytes((MAGIC,))])
def test_shorter_than_two_bytes_is_too_short(data: bytes) -> None:
    assert reason_of(data) == "too_short"


@pytest.mark.parametrize("ptype", list(PacketType))
def test_over_max_datagram_is_too_large_before_anything_else(ptype: PacketType) -> None:
    assert reason_of(bytes((MAGIC, ptype)) + bytes(MAX_DATAGRAM - 1)) == "too_large"
    # Garbage magic does not change the verdict: size is checked first.
    assert reason_of(b"\x00" * (MAX_DATAGRAM + 1)) == "too_large"
    assert reason_of(b"\x00" * 1500) == "too_large"


def test_sealed_datagram_at_exactly_max_size_is_accepted() -> None:
    data = sealed_header(PacketType.SERVER_UPDATE, 1) + bytes(MAX_DATAGRAM - SEALED_HEADER_SIZE)
    assert len(data) == MAX_DATAGRAM
    parsed = decode_datagram_untrusted(data)
    assert isinstance(parsed, Sealed)
    assert len(parsed.ciphertext) == MAX_DATAGRAM - SEALED_HEADER_SIZE


@pytest.mark.parametrize("first", [0x00, 0x01, 0x11, 0x7F, 0xE1, 0x0F, 0x1F, 0xEF])
def test_wrong_magic(first: int) -> None:
    assert reason_of(bytes((first, PacketType.CHALLENGE)) + COOKIE) == "bad_magic"


@pytest.mark.parametrize("first", [v for v in range(0xF0, 0x100) if v != MAGIC])
def test_wrong_version_has_framesync_high_nibble(first: int) -> None:
    assert reason_of(bytes((first, PacketType.CHALLENGE)) + COOKIE) == "bad_version"


@pytest.mark.parametrize("type_byte", [t for t in range(256) if t not in KNOWN_TYPES])
def test_unknown_type(type_byte: int) -> None:
    assert reason_of(bytes((MAGIC, type_byte)) + bytes(40)) == "bad_type"


@pytest.mark.parametrize("ptype", list(FIXED_SIZES))
@pytest.mark.parametrize("delta", [-1, +1])
def test_fixed_size_types_reject_size_off_by_one(ptype: PacketType, delta: int) -> None:
    good = valid_datagram(ptype)
    assert len(good) == FIXED_SIZES[ptype]
    decode_datagram_untrusted(good)  # the unmodified one is fine
    bad = good[:-1] if delta < 0 else good + b"\x00"
    assert reason_of(bad) == "bad_size"


@pytest.mark.parametrize("ptype", list(FIXED_SIZES))
def test_fixed_size_types_reject_header_only(ptype: PacketType) -> None:
    assert reason_of(bytes((MAGIC, ptype))) == "bad_size"


@pytest.mark.parametrize("ptype", sorted(SEALED_TYPES))
def test_sealed_types_need_header_and_tag(ptype: PacketType) -> None:
    header = sealed_header(ptype, 1) + (bytes(16) if ptype is PacketType.ACCEPT else b"")
    assert reason_of(header + bytes(15)) == "bad_size"
    assert reason_of(bytes((MAGIC, ptype))) == "bad_size"
    parsed = decode_datagram_untrusted(header + bytes(16))
    assert isinstance(parsed, Sealed)
    assert parsed.ciphertext == bytes(16)


@pytest.mark.parametrize("reason_byte", [0, 4, 5, 0x7F, 0xFF])
def test_denied_with_unknown_reason_is_bad_field(reason_byte: int) -> None:
    assert reason_of(bytes((MAGIC, PacketType.DENIED, reason_byte))) == "bad_field"


# --- fuzzing ---------------------------------------------------------------------------------


def _decode_or_bad(data: bytes) -> None:
    try:
        result = decode_datagram_untrusted(data)
    except BadDatagram as exc:
        assert isinstance(exc.reason, str)
        assert exc.reason
        return
    # Anything that parses must have been well-formed on its first bytes and size.
    assert 2 <= len(data) <= MAX_DATAGRAM
    assert data[0] == MAGIC
    assert data[1] in KNOWN_TYPES
    assert isinstance(result, ConnectRequest | Challenge | ConnectResponse | Denied | Sealed)


@settings(max_examples=400)
@given(st.binary(max_size=1500))
def test_arbitrary_bytes_raise_only_bad_datagram(data: bytes) -> None:
    _decode_or_bad(data)


@settings(max_examples=400)
@given(
    st.sampled_from([MAGIC, MAGIC ^ 1, 0xF0, 0x00]),
    st.sampled_from([*sorted(KNOWN_TYPES), 0x00, 0x05, 0xFF]),
    st.one_of(
        st.binary(max_size=40),
        st.sampled_from(sorted(set(FIXED_SIZES.values()))).flatmap(
            lambda n: st.binary(min_size=n - 3, max_size=n - 1)
        ),
        st.binary(min_size=1190, max_size=1210),
    ),
)
def test_plausible_prefixes_raise_only_bad_datagram(first: int, ptype: int, tail: bytes) -> None:
    _decode_or_bad(bytes((first, ptype)) + tail)


# --- round trips -----------------------------------------------------------------------------


@given(st.binary(min_size=TICKET_SIZE, max_size=TICKET_SIZE))
def test_connect_request_round_trip(ticket: bytes) -> None:
    data = encode_connect_request(ticket)
    assert data[:2] == bytes((MAGIC, PacketType.CONNECT_REQUEST))
    assert data[2 + TICKET_SIZE :] == bytes(CONNECT_REQUEST_SIZE - 2 - TICKET_SIZE)  # zero pad
    assert decode_datagram_untrusted(data) == ConnectRequest(ticket)


def test_connect_request_ignores_padding_content() -> None:
    data = bytearray(encode_connect_request(TICKET))
    data[-1] = 0xAB
    assert decode_datagram_untrusted(bytes(data)) == ConnectRequest(TICKET)


@given(st.binary(min_size=COOKIE_SIZE, max_size=COOKIE_SIZE))
def test_challenge_round_trip(cookie: bytes) -> None:
    data = encode_challenge(cookie)
    assert data == bytes((MAGIC, PacketType.CHALLENGE)) + cookie
    assert decode_datagram_untrusted(data) == Challenge(cookie)


@given(
    st.binary(min_size=COOKIE_SIZE, max_size=COOKIE_SIZE),
    st.binary(min_size=TICKET_SIZE, max_size=TICKET_SIZE),
    st.binary(min_size=SESSION_SALT_SIZE, max_size=SESSION_SALT_SIZE),
)
def test_connect_response_round_trip(cookie: bytes, ticket: bytes, salt: bytes) -> None:
    data = encode_connect_response(cookie, ticket, salt)
    assert len(data) == FIXED_SIZES[PacketType.CONNECT_RESPONSE]
    # magic, type, cookie, ticket, client salt: in that order, nothing else
    assert data == bytes((MAGIC, PacketType.CONNECT_RESPONSE)) + cookie + ticket + salt
    parsed = decode_datagram_untrusted(data)
    assert parsed == ConnectResponse(cookie, ticket, salt)
    assert isinstance(parsed, ConnectResponse)
    assert type(parsed.cookie) is bytes
    assert type(parsed.ticket) is bytes
    assert type(parsed.client_salt) is bytes
    assert parsed.client_salt == salt


def test_connect_response_fields_do_not_bleed_into_each_other() -> None:
    parsed = decode_datagram_untrusted(encode_connect_response(COOKIE, TICKET, CLIENT_SALT))
    assert isinstance(parsed, ConnectResponse)
    assert (parsed.cookie, parsed.ticket, parsed.client_salt) == (COOKIE, TICKET, CLIENT_SALT)
    # The 150-byte response of the salt-less handshake is now the wrong size.
    old = bytes((MAGIC, PacketType.CONNECT_RESPONSE)) + COOKIE + TICKET
    assert reason_of(old) == "bad_size"


@pytest.mark.parametrize("reason", list(DenyReason))
def test_denied_round_trip(reason: DenyReason) -> None:
    data = encode_denied(reason)
    assert data == bytes((MAGIC, PacketType.DENIED, int(reason)))
    parsed = decode_datagram_untrusted(data)
    assert parsed == Denied(reason)
    assert isinstance(parsed, Denied)
    assert parsed.reason is reason


@pytest.mark.parametrize("size", [0, TICKET_SIZE - 1, TICKET_SIZE + 1])
def test_encoders_reject_wrong_ticket_size(size: int) -> None:
    with pytest.raises(ValueError):
        encode_connect_request(bytes(size))
    with pytest.raises(ValueError):
        encode_connect_response(COOKIE, bytes(size), CLIENT_SALT)


@pytest.mark.parametrize("size", [0, COOKIE_SIZE - 1, COOKIE_SIZE + 1])
def test_encoders_reject_wrong_cookie_size(size: int) -> None:
    with pytest.raises(ValueError):
        encode_challenge(bytes(size))
    with pytest.raises(ValueError):
        encode_connect_response(bytes(size), TICKET, CLIENT_SALT)


@pytest.mark.parametrize("size", [0, SESSION_SALT_SIZE - 1, SESSION_SALT_SIZE + 1, 32])
def test_encoders_reject_wrong_client_salt_size(size: int) -> None:
    with pytest.raises(ValueError):
        encode_connect_response(COOKIE, TICKET, bytes(size))


# --- sealed headers --------------------------------------------------------------------------


@given(
    st.sampled_from(sorted(SEALED_TYPES - {PacketType.ACCEPT})),
    st.integers(min_value=0, max_value=U64),
    st.binary(min_size=16, max_size=MAX_DATAGRAM - SEALED_HEADER_SIZE),
)
def test_sealed_header_parsing(ptype: PacketType, seq: int, rest: bytes) -> None:
    header = sealed_header(ptype, seq)
    assert len(header) == SEALED_HEADER_SIZE
    assert header == bytes((MAGIC, ptype)) + seq.to_bytes(8, "little")
    parsed = decode_datagram_untrusted(header + rest)
    assert parsed == Sealed(ptype, seq, header, rest)
    assert isinstance(parsed, Sealed)
    assert parsed.type is ptype


@given(
    st.integers(min_value=0, max_value=U64),
    st.binary(min_size=16, max_size=16),
    st.binary(min_size=16, max_size=MAX_DATAGRAM - ACCEPT_HEADER_SIZE),
)
def test_accept_header_carries_the_session_salt(seq: int, salt: bytes, rest: bytes) -> None:
    header = sealed_header(PacketType.ACCEPT, seq) + salt
    parsed = decode_datagram_untrusted(header + rest)
    assert parsed == Sealed(PacketType.ACCEPT, seq, header, rest, salt)


@pytest.mark.parametrize("size", [0, 2, SEALED_HEADER_SIZE, ACCEPT_HEADER_SIZE + 15])
def test_accept_shorter_than_header_salt_and_tag_is_bad_size(size: int) -> None:
    data = (sealed_header(PacketType.ACCEPT, 1) + bytes(64))[:size]
    with pytest.raises(BadDatagram) as info:
        decode_datagram_untrusted(data)
    assert info.value.reason in ("bad_size", "too_short")


def test_sealed_header_sequence_is_little_endian() -> None:
    data = sealed_header(PacketType.CLIENT_UPDATE, 0x0102030405060708) + bytes(16)
    assert data[2:10] == bytes((8, 7, 6, 5, 4, 3, 2, 1))
    parsed = decode_datagram_untrusted(data)
    assert isinstance(parsed, Sealed)
    assert parsed.seq == 0x0102030405060708
