"""Join tickets: what the lobby hands a client so that a room will let it in.

Modelled on netcode connect tokens. The lobby and the room hosts share one 32-byte key; the
ticket's private part (identity, slot and the session keys) is sealed with ChaCha20-Poly1305,
and its expiry and room id ride in the clear as associated data so a room can reject stale or
misdirected tickets before any decryption. The client receives the session keys separately,
over its lobby session, so a ticket seen on the wire is useless without them.
"""

from __future__ import annotations

import functools
import os
import struct
from dataclasses import dataclass

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

from battle.errors import TicketRejected
from battle.wire import AEAD_TAG_SIZE, TICKET_SIZE

KEY_SIZE = 32
NONCE_SIZE = 12
_CLEAR = struct.Struct("<QQ")  # expires_at_ms, room_id
_PRIVATE = struct.Struct("<QQBBH32s32s")  # match_id, player_id, slot, team, flags, c2s, s2c
_AD_PREFIX = b"framesync-ticket-v1"
_PRIVATE_AT = _CLEAR.size + NONCE_SIZE
assert _PRIVATE_AT + _PRIVATE.size + AEAD_TAG_SIZE == TICKET_SIZE

FLAG_RECONNECT = 0x0001
"""Set on tickets a room issues itself in ACCEPT, for coming back after a drop."""

U64_MAX = (1 << 64) - 1


@dataclass(frozen=True, slots=True)
class ClientKeys:
    """A ticket's key pair (c2s, s2c); each session derives its own keys from it (sealing.py)."""

    c2s: bytes
    s2c: bytes


@dataclass(frozen=True, slots=True)
class Ticket:
    """An opened, verified ticket."""

    match_id: int
    room_id: int
    player_id: int
    slot: int
    team: int
    expires_at: float
    """Unix seconds."""
    flags: int
    keys: ClientKeys
    nonce: bytes
    """Unique per ticket; binds the handshake cookie to this ticket."""


@functools.lru_cache(maxsize=64)
def _aead(key: bytes) -> ChaCha20Poly1305:
    return ChaCha20Poly1305(key)


def generate_key() -> bytes:
    return os.urandom(KEY_SIZE)


def issue_ticket(
    key: bytes,
    match_id: int,
    room_id: int,
    player_id: int,
    slot: int,
    expires_at: float,
    *,
    team: int = 0,
    flags: int = 0,
    nonce: bytes | None = None,
    keys: ClientKeys | None = None,
) -> tuple[bytes, ClientKeys]:
    """Seal a ticket; `nonce` and `keys` are random unless given (tests and vectors fix them)."""
    if len(key) != KEY_SIZE:
        raise ValueError("ticket key must be 32 bytes")
    for name, value in (("match_id", match_id), ("room_id", room_id), ("player_id", player_id)):
        if not 0 <= value <= U64_MAX:
            raise ValueError(f"{name} must fit in a u64")
    if not 0 <= slot <= 255 or not 0 <= team <= 255 or not 0 <= flags <= 0xFFFF:
        raise ValueError("slot and team must fit in a byte, flags in a u16")
    if not 0 <= round(expires_at * 1000) <= U64_MAX:
        raise ValueError("expires_at must be unix seconds within a u64 of milliseconds")
    if nonce is None:
        nonce = os.urandom(NONCE_SIZE)
    if len(nonce) != NONCE_SIZE:
        raise ValueError("nonce must be 12 bytes")
    if keys is None:
        keys = ClientKeys(os.urandom(KEY_SIZE), os.urandom(KEY_SIZE))
    if len(keys.c2s) != KEY_SIZE or len(keys.s2c) != KEY_SIZE:
        raise ValueError("session keys must be 32 bytes")
    clear = _CLEAR.pack(round(expires_at * 1000), room_id)
    private = _PRIVATE.pack(match_id, player_id, slot, team, flags, keys.c2s, keys.s2c)
    sealed = _aead(key).encrypt(nonce, private, _AD_PREFIX + clear)
    return clear + nonce + sealed, keys


def ticket_room_untrusted(ticket: bytes) -> tuple[float, int]:
    """Expiry (unix seconds) and room id from the clear part; not yet authenticated."""
    if len(ticket) != TICKET_SIZE:
        raise TicketRejected("ticket_invalid")
    expires_ms, room_id = _CLEAR.unpack_from(ticket)
    return expires_ms / 1000.0, room_id


def open_ticket(key: bytes, ticket: bytes, *, room_id: int | None, now: float) -> Ticket:
    """Verify a ticket for `room_id` at unix time `now`; raises TicketRejected(reason).

    Cheap checks (size, expiry, room) run before the AEAD so stale or misdirected tickets
    cost almost nothing. Pass room_id=None to accept any room (the host routes by it).
    """
    if len(ticket) != TICKET_SIZE:
        raise TicketRejected("ticket_invalid")
    expires_at, ticket_room = ticket_room_untrusted(ticket)
    if expires_at <= now:
        raise TicketRejected("ticket_expired")
    if room_id is not None and ticket_room != room_id:
        raise TicketRejected("ticket_wrong_room")
    nonce = ticket[_CLEAR.size : _PRIVATE_AT]
    try:
        private = _aead(key).decrypt(
            nonce, ticket[_PRIVATE_AT:], _AD_PREFIX + ticket[: _CLEAR.size]
        )
    except InvalidTag:
        raise TicketRejected("ticket_invalid") from None
    match_id, player_id, slot, team, flags, c2s, s2c = _PRIVATE.unpack(private)
    return Ticket(
        match_id=match_id,
        room_id=ticket_room,
        player_id=player_id,
        slot=slot,
        team=team,
        expires_at=expires_at,
        flags=flags,
        keys=ClientKeys(c2s, s2c),
        nonce=bytes(nonce),
    )
