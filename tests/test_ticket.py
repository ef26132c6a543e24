"""Join tickets: round trips, determinism, expiry, room binding, tamper resistance, validation."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from battle.errors import TicketRejected
from battle.ticket import (
    FLAG_RECONNECT,
    KEY_SIZE,
    NONCE_SIZE,
    ClientKeys,
    Ticket,
    generate_key,
    issue_ticket,
    open_ticket,
    ticket_room_untrusted,
)
from battle.wire import TICKET_SIZE

U64 = 2**64 - 1
KEY = bytes(range(KEY_SIZE))
OTHER_KEY = bytes(range(1, KEY_SIZE + 1))
NONCE = bytes(range(100, 100 + NONCE_SIZE))
SESSION = ClientKeys(c2s=b"\x11" * KEY_SIZE, s2c=b"\x22" * KEY_SIZE)
NOW = 1_700_000_000.0
EXPIRES = NOW + 60.0
ROOM = 0x0102_0304_0506_0708
REASONS = {"ticket_invalid", "ticket_expired", "ticket_wrong_room"}


def make(**changes: object) -> bytes:
    args: dict[str, object] = {
        "key": KEY,
        "match_id": 77,
        "room_id": ROOM,
        "player_id": 123_456,
        "slot": 3,
        "expires_at": EXPIRES,
        "team": 1,
        "flags": 0,
        "nonce": NONCE,
        "keys": SESSION,
    }
    args.update(changes)
    ticket, _ = issue_ticket(**args)  # type: ignore[arg-type]
    return ticket


def rejected(
    ticket: bytes, *, key: bytes = KEY, room_id: int | None = ROOM, now: float = NOW
) -> str:
    with pytest.raises(TicketRejected) as info:
        open_ticket(key, ticket, room_id=room_id, now=now)
    return info.value.reason


# --- round trips -----------------------------------------------------------------------------


def test_round_trip_of_every_field() -> None:
    ticket, keys = issue_ticket(
        KEY,
        match_id=U64,
        room_id=ROOM,
        player_id=U64 - 1,
        slot=255,
        expires_at=1_700_000_123.456,
        team=255,
        flags=FLAG_RECONNECT | 0x8000,
        nonce=NONCE,
        keys=SESSION,
    )
    assert keys == SESSION
    assert len(ticket) == TICKET_SIZE
    opened = open_ticket(KEY, ticket, room_id=ROOM, now=NOW)
    assert opened == Ticket(
        match_id=U64,
        room_id=ROOM,
        player_id=U64 - 1,
        slot=255,
        team=255,
        expires_at=1_700_000_123.456,
        flags=FLAG_RECONNECT | 0x8000,
        keys=SESSION,
        nonce=NONCE,
    )
    assert type(opened.nonce) is bytes


ids = st.integers(min_value=0, max_value=U64)
bytes8 = st.integers(min_value=0, max_value=255)


@settings(max_examples=200)
@given(
    match_id=ids,
    room_id=ids,
    player_id=ids,
    slot=bytes8,
    team=bytes8,
    flags=st.integers(min_value=0, max_value=0xFFFF),
    expires_ms=st.integers(min_value=int(NOW * 1000) + 1, max_value=2**45),
    nonce=st.binary(min_size=NONCE_SIZE, max_size=NONCE_SIZE),
    c2s=st.binary(min_size=KEY_SIZE, max_size=KEY_SIZE),
    s2c=st.binary(min_size=KEY_SIZE, max_size=KEY_SIZE),
)
def test_round_trip_property(
    match_id: int,
    room_id: int,
    player_id: int,
    slot: int,
    team: int,
    flags: int,
    expires_ms: int,
    nonce: bytes,
    c2s: bytes,
    s2c: bytes,
) -> None:
    expires_at = expires_ms / 1000
    keys = ClientKeys(c2s, s2c)
    ticket, returned = issue_ticket(
        KEY,
        match_id,
        room_id,
        player_id,
        slot,
        expires_at,
        team=team,
        flags=flags,
        nonce=nonce,
        keys=keys,
    )
    assert returned == keys
    assert ticket_room_untrusted(ticket) == (expires_at, room_id)
    for room in (room_id, None):
        opened = open_ticket(KEY, ticket, room_id=room, now=NOW)
        assert opened == Ticket(
            match_id, room_id, player_id, slot, team, expires_at, flags, keys, nonce
        )


def test_random_nonce_and_keys_when_not_given() -> None:
    a, keys_a = issue_ticket(KEY, 1, 2, 3, 4, EXPIRES)
    b, keys_b = issue_ticket(KEY, 1, 2, 3, 4, EXPIRES)
    assert a != b
    assert a[:16] == b[:16]  # same clear part
    assert keys_a != keys_b
    assert len(keys_a.c2s) == len(keys_a.s2c) == KEY_SIZE
    assert keys_a.c2s != keys_a.s2c
    assert open_ticket(KEY, a, room_id=2, now=NOW).keys == keys_a
    assert open_ticket(KEY, b, room_id=2, now=NOW).keys == keys_b


def test_generate_key() -> None:
    a, b = generate_key(), generate_key()
    assert len(a) == len(b) == KEY_SIZE
    assert a != b


# --- determinism and layout ------------------------------------------------------------------


def test_fixed_nonce_and_keys_give_deterministic_bytes() -> None:
    assert make() == make()
    assert make() != make(nonce=bytes(NONCE_SIZE))
    assert make() != make(keys=ClientKeys(SESSION.s2c, SESSION.c2s))
    assert make() != make(key=OTHER_KEY)


def test_clear_part_layout() -> None:
    ticket = make(expires_at=1_700_000_000.5, room_id=ROOM)
    assert ticket[0:8] == (1_700_000_000_500).to_bytes(8, "little")
    assert ticket[8:16] == ROOM.to_bytes(8, "little")
    assert ticket[16:28] == NONCE
    # The session keys never appear in the clear.
    assert SESSION.c2s not in ticket
    assert SESSION.s2c not in ticket


def test_expiry_is_stored_at_millisecond_resolution() -> None:
    opened = open_ticket(KEY, make(expires_at=EXPIRES + 0.0004), room_id=ROOM, now=NOW)
    assert opened.expires_at == EXPIRES
    opened = open_ticket(KEY, make(expires_at=EXPIRES + 0.0006), room_id=ROOM, now=NOW)
    assert opened.expires_at == EXPIRES + 0.001


# --- expiry and room -------------------------------------------------------------------------


def test_expiry_boundary() -> None:
    ticket = make(expires_at=EXPIRES)
    assert open_ticket(KEY, ticket, room_id=ROOM, now=EXPIRES - 0.001).expires_at == EXPIRES
    assert rejected(ticket, now=EXPIRES) == "ticket_expired"
    assert rejected(ticket, now=EXPIRES + 0.001) == "ticket_expired"
    assert rejected(ticket, now=EXPIRES + 1e6) == "ticket_expired"


def test_expiry_is_checked_before_authentication() -> None:
    # A stale ticket under the wrong key still reports expiry: the cheap check runs first.
    assert rejected(make(), key=OTHER_KEY, now=EXPIRES) == "ticket_expired"


def test_wrong_room() -> None:
    ticket = make(room_id=5)
    assert rejected(ticket, room_id=6) == "ticket_wrong_room"
    assert rejected(ticket, room_id=0) == "ticket_wrong_room"
    assert rejected(ticket, room_id=5 + 2**32) == "ticket_wrong_room"
    assert open_ticket(KEY, ticket, room_id=5, now=NOW).room_id == 5


def test_room_none_accepts_any_room() -> None:
    for room in (0, 1, ROOM, U64):
        assert open_ticket(KEY, make(room_id=room), room_id=None, now=NOW).room_id == room


def test_wrong_key_is_invalid() -> None:
    ticket = make()
    assert rejected(ticket, key=OTHER_KEY) == "ticket_invalid"
    assert rejected(ticket, key=bytes(KEY_SIZE)) == "ticket_invalid"


@pytest.mark.parametrize("size", [0, 1, 16, TICKET_SIZE - 1, TICKET_SIZE + 1, 512])
def test_wrong_size_is_invalid(size: int) -> None:
    ticket = (make() * 5)[:size]
    assert rejected(ticket) == "ticket_invalid"


# --- tampering -------------------------------------------------------------------------------


def _expected_reason_for_flip(flipped: bytes, byte_index: int, room_id: int | None) -> str:
    if byte_index < 8:
        expires_ms = int.from_bytes(flipped[:8], "little")
        return "ticket_expired" if expires_ms / 1000 <= NOW else "ticket_invalid"
    if byte_index < 16 and room_id is not None:
        return "ticket_wrong_room"
    return "ticket_invalid"


@pytest.mark.parametrize("room_id", [ROOM, None])
def test_every_single_bit_flip_is_rejected(room_id: int | None) -> None:
    # Pick an expiry whose set bits include some whose loss makes the ticket stale.
    ticket = make(expires_at=EXPIRES)
    original = open_ticket(KEY, ticket, room_id=room_id, now=NOW)
    seen: set[str] = set()
    for bit in range(TICKET_SIZE * 8):
        flipped = bytearray(ticket)
        flipped[bit // 8] ^= 1 << (bit % 8)
        try:
            opened = open_ticket(KEY, bytes(flipped), room_id=room_id, now=NOW)
        except TicketRejected as exc:
            assert exc.reason in REASONS
            assert exc.reason == _expected_reason_for_flip(bytes(flipped), bit // 8, room_id)
            seen.add(exc.reason)
            continue
        pytest.fail(f"bit {bit} flipped, ticket still opened: {opened} (was {original})")
    expected = {"ticket_invalid", "ticket_expired"}
    if room_id is not None:
        expected.add("ticket_wrong_room")
    assert seen == expected


@settings(max_examples=200)
@given(st.binary(min_size=TICKET_SIZE, max_size=TICKET_SIZE))
def test_random_ticket_bytes_never_open(data: bytes) -> None:
    for room in (ROOM, None):
        with pytest.raises(TicketRejected) as info:
            open_ticket(KEY, data, room_id=room, now=NOW)
        assert info.value.reason in REASONS


# --- argument validation ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "changes",
    [
        {"key": bytes(KEY_SIZE - 1)},
        {"key": bytes(KEY_SIZE + 1)},
        {"match_id": -1},
        {"match_id": U64 + 1},
        {"room_id": -1},
        {"room_id": U64 + 1},
        {"player_id": -1},
        {"player_id": U64 + 1},
        {"slot": -1},
        {"slot": 256},
        {"team": -1},
        {"team": 256},
        {"flags": -1},
        {"flags": 0x10000},
        {"nonce": bytes(NONCE_SIZE - 1)},
        {"nonce": bytes(NONCE_SIZE + 1)},
        {"nonce": b""},
        {"keys": ClientKeys(bytes(KEY_SIZE - 1), bytes(KEY_SIZE))},
        {"keys": ClientKeys(bytes(KEY_SIZE), bytes(KEY_SIZE + 1))},
    ],
    ids=lambda c: "-".join(f"{k}={v!r}"[:40] for k, v in c.items()),
)
def test_argument_validation(changes: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        make(**changes)


def test_argument_limits_are_inclusive() -> None:
    ticket = make(match_id=U64, room_id=U64, player_id=U64, slot=255, team=255, flags=0xFFFF)
    opened = open_ticket(KEY, ticket, room_id=U64, now=NOW)
    assert (opened.match_id, opened.player_id, opened.slot, opened.team, opened.flags) == (
        U64,
        U64,
        255,
        255,
        0xFFFF,
    )


@pytest.mark.parametrize("expires_at", [-1.0, 2.0**64])
def test_expiry_out_of_range_is_value_error(expires_at: float) -> None:
    with pytest.raises(ValueError):
        make(expires_at=expires_at)
