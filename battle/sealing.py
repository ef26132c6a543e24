"""Session sealing: every datagram after the handshake is encrypted and authenticated.

Each session has its own pair of keys, derived from the ticket's keys, a random salt the client
sends in CONNECT_RESPONSE and a random salt the room picks when it accepts the session (sent in
the clear in ACCEPT). Sequence numbers restart
at 1 in every session, so without the salt a second session from the same ticket (a retry, a
restarted client, or someone who copied the ticket off the wire) would reuse nonces under one
key, and a datagram captured from one session would authenticate in another. Each direction
has its own key, so the sender's sequence number can be the AEAD nonce. The header is
associated data: a flipped type or sequence byte fails authentication like a body byte.
A sliding replay window drops repeats and very old datagrams after (never before)
authentication succeeds.
"""

from __future__ import annotations

import hashlib
import struct

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

from battle.errors import BadDatagram
from battle.ticket import KEY_SIZE, ClientKeys
from battle.wire import SESSION_SALT_SIZE, PacketType, Sealed, sealed_header

REPLAY_WINDOW = 1024
_NONCE = struct.Struct("<Q4x")


def derive_session_keys(keys: ClientKeys, room_salt: bytes, client_salt: bytes) -> ClientKeys:
    """Per-session keys: keyed BLAKE2b of a direction label and both sides' salts.

    The room's salt keeps the room from reusing nonces; the client's keeps the client from
    reusing them when someone replays an old ACCEPT at it."""
    if len(room_salt) != SESSION_SALT_SIZE or len(client_salt) != SESSION_SALT_SIZE:
        raise ValueError("session salts must be 16 bytes")
    salts = room_salt + client_salt
    return ClientKeys(
        hashlib.blake2b(b"framesync c2s" + salts, key=keys.c2s, digest_size=KEY_SIZE).digest(),
        hashlib.blake2b(b"framesync s2c" + salts, key=keys.s2c, digest_size=KEY_SIZE).digest(),
    )


def _nonce(seq: int) -> bytes:
    return _NONCE.pack(seq)


class ReplayWindow:
    """Accepts each sequence number once, within `size` of the highest seen."""

    __slots__ = ("_bits", "highest", "size")

    def __init__(self, size: int = REPLAY_WINDOW) -> None:
        self.size = size
        self.highest = -1
        self._bits = 0  # bit i set: highest - i was seen

    def is_fresh(self, seq: int) -> bool:
        if seq > self.highest:
            return True
        age = self.highest - seq
        return age < self.size and not (self._bits >> age) & 1

    def mark(self, seq: int) -> None:
        if seq > self.highest:
            shift = seq - self.highest
            if shift >= self.size:
                self._bits = 1  # a jump past the window: everything before it is now too old
            else:
                self._bits = ((self._bits << shift) | 1) & ((1 << self.size) - 1)
            self.highest = seq
        else:
            self._bits |= 1 << (self.highest - seq)


class SessionCipher:
    """One side of a session: seals outgoing datagrams, opens and de-duplicates incoming ones."""

    __slots__ = ("_recv", "_send", "next_seq", "replay")

    def __init__(self, send_key: bytes, recv_key: bytes) -> None:
        self._send = ChaCha20Poly1305(send_key)
        self._recv = ChaCha20Poly1305(recv_key)
        self.next_seq = 1
        self.replay = ReplayWindow()

    def seal(self, ptype: PacketType, body: bytes, *, salt: bytes = b"") -> bytes:
        """Seal the next datagram; `salt` is set only on ACCEPT, where it rides in the clear."""
        seq = self.next_seq
        self.next_seq = seq + 1
        header = sealed_header(ptype, seq) + salt
        return header + self._send.encrypt(_nonce(seq), body, header)

    def open_untrusted(self, datagram: Sealed) -> bytes:
        """Authenticate and return the body; raises BadDatagram ('replayed', 'forged')."""
        if not self.replay.is_fresh(datagram.seq):
            raise BadDatagram("replayed")
        try:
            body = self._recv.decrypt(_nonce(datagram.seq), datagram.ciphertext, datagram.header)
        except InvalidTag:
            raise BadDatagram("forged") from None
        self.replay.mark(datagram.seq)
        return body
