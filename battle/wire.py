"""Datagram framing: the magic/version byte, the type byte and each fixed header.

Layouts are documented byte by byte in docs/PROTOCOL.md. All integers are little-endian.
Parsing is cheap and ordered so garbage is rejected on its size and first bytes, before
any cryptography or msgpack work.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from enum import IntEnum
from typing import NamedTuple

from battle.errors import BadDatagram

PROTOCOL_VERSION = 1
MAGIC = 0xF0 | PROTOCOL_VERSION
"""First byte of every datagram: high nibble 0xF marks framesync, low nibble the version."""
MAX_DATAGRAM = 1200
TICKET_SIZE = 128
COOKIE_SIZE = 20
CONNECT_REQUEST_SIZE = 512
"""Fixed and padded, so no reply sent before the address is proven is larger than a request."""
SEALED_HEADER = struct.Struct("<BBQ")
"""magic, type, sequence number (also the AEAD nonce)."""
SEALED_HEADER_SIZE = SEALED_HEADER.size
SESSION_SALT_SIZE = 16
ACCEPT_HEADER_SIZE = SEALED_HEADER_SIZE + SESSION_SALT_SIZE
"""ACCEPT carries the room's random session salt in the clear after the usual header."""
AEAD_TAG_SIZE = 16
SEALED_OVERHEAD = SEALED_HEADER_SIZE + AEAD_TAG_SIZE
MAX_SEALED_BODY = MAX_DATAGRAM - SEALED_OVERHEAD


class PacketType(IntEnum):
    CONNECT_REQUEST = 0x01
    CHALLENGE = 0x02
    CONNECT_RESPONSE = 0x03
    DENIED = 0x04
    ACCEPT = 0x10
    CLIENT_UPDATE = 0x11
    SERVER_UPDATE = 0x12
    DISCONNECT = 0x13
    CATCHUP = 0x14
    SNAPSHOT = 0x15


SEALED_TYPES = frozenset(
    {
        PacketType.ACCEPT,
        PacketType.CLIENT_UPDATE,
        PacketType.SERVER_UPDATE,
        PacketType.DISCONNECT,
        PacketType.CATCHUP,
        PacketType.SNAPSHOT,
    }
)
_TYPES = {int(t): t for t in PacketType}


class DenyReason(IntEnum):
    """Why a proven address was refused; sent in DENIED."""

    ROOM_ENDED = 1
    ROOM_FULL = 2
    SLOT_TAKEN = 3


@dataclass(frozen=True, slots=True)
class ConnectRequest:
    ticket: bytes


@dataclass(frozen=True, slots=True)
class Challenge:
    cookie: bytes


@dataclass(frozen=True, slots=True)
class ConnectResponse:
    cookie: bytes
    ticket: bytes
    client_salt: bytes
    """Fresh per client instance; mixed into the session keys with the room's salt."""


@dataclass(frozen=True, slots=True)
class Denied:
    reason: DenyReason


class Sealed(NamedTuple):
    """A session datagram whose body is still encrypted; only a session can open it.

    A NamedTuple rather than a frozen dataclass: it is built for every datagram on the hot
    path, and tuple construction costs a fraction of a frozen dataclass's."""

    type: PacketType
    seq: int
    header: bytes
    """Authenticated as associated data: the 10-byte header (26 with ACCEPT's salt)."""
    ciphertext: bytes
    salt: bytes = b""
    """Only on ACCEPT: the salt from which both sides derive this session's keys."""


Datagram = ConnectRequest | Challenge | ConnectResponse | Denied | Sealed

_CONNECT_RESPONSE_SIZE = 2 + COOKIE_SIZE + TICKET_SIZE + SESSION_SALT_SIZE
_CHALLENGE_SIZE = 2 + COOKIE_SIZE
_DENIED_SIZE = 3


def decode_datagram_untrusted(data: bytes) -> Datagram:
    """Split a datagram into its header parts; raises only BadDatagram."""
    size = len(data)
    if size < 2:
        raise BadDatagram("too_short")
    if size > MAX_DATAGRAM:
        raise BadDatagram("too_large")
    first = data[0]
    if first != MAGIC:
        raise BadDatagram("bad_version" if first & 0xF0 == 0xF0 else "bad_magic")
    ptype = _TYPES.get(data[1])
    if ptype is None:
        raise BadDatagram("bad_type")
    if ptype in SEALED_TYPES:
        _, _, seq = SEALED_HEADER.unpack_from(data) if size >= SEALED_HEADER_SIZE else (0, 0, 0)
        if ptype is PacketType.ACCEPT:
            if size < ACCEPT_HEADER_SIZE + AEAD_TAG_SIZE:
                raise BadDatagram("bad_size")
            return Sealed(
                ptype,
                seq,
                data[:ACCEPT_HEADER_SIZE],
                data[ACCEPT_HEADER_SIZE:],
                data[SEALED_HEADER_SIZE:ACCEPT_HEADER_SIZE],
            )
        if size < SEALED_OVERHEAD:
            raise BadDatagram("bad_size")
        return Sealed(ptype, seq, data[:SEALED_HEADER_SIZE], data[SEALED_HEADER_SIZE:])
    if ptype is PacketType.CONNECT_REQUEST:
        if size != CONNECT_REQUEST_SIZE:
            raise BadDatagram("bad_size")
        return ConnectRequest(bytes(data[2 : 2 + TICKET_SIZE]))
    if ptype is PacketType.CONNECT_RESPONSE:
        if size != _CONNECT_RESPONSE_SIZE:
            raise BadDatagram("bad_size")
        at = 2 + COOKIE_SIZE
        return ConnectResponse(
            bytes(data[2:at]),
            bytes(data[at : at + TICKET_SIZE]),
            bytes(data[at + TICKET_SIZE :]),
        )
    if ptype is PacketType.CHALLENGE:
        if size != _CHALLENGE_SIZE:
            raise BadDatagram("bad_size")
        return Challenge(bytes(data[2:]))
    if size != _DENIED_SIZE:
        raise BadDatagram("bad_size")
    try:
        return Denied(DenyReason(data[2]))
    except ValueError:
        raise BadDatagram("bad_field", "deny reason") from None


def encode_connect_request(ticket: bytes) -> bytes:
    if len(ticket) != TICKET_SIZE:
        raise ValueError("ticket has the wrong size")
    head = bytes((MAGIC, PacketType.CONNECT_REQUEST)) + ticket
    return head + bytes(CONNECT_REQUEST_SIZE - len(head))


def encode_challenge(cookie: bytes) -> bytes:
    if len(cookie) != COOKIE_SIZE:
        raise ValueError("cookie has the wrong size")
    return bytes((MAGIC, PacketType.CHALLENGE)) + cookie


def encode_connect_response(cookie: bytes, ticket: bytes, client_salt: bytes) -> bytes:
    if (
        len(cookie) != COOKIE_SIZE
        or len(ticket) != TICKET_SIZE
        or len(client_salt) != SESSION_SALT_SIZE
    ):
        raise ValueError("cookie, ticket or client salt has the wrong size")
    return bytes((MAGIC, PacketType.CONNECT_RESPONSE)) + cookie + ticket + client_salt


def encode_denied(reason: DenyReason) -> bytes:
    return bytes((MAGIC, PacketType.DENIED, reason))


def sealed_header(ptype: PacketType, seq: int) -> bytes:
    return SEALED_HEADER.pack(MAGIC, ptype, seq)
