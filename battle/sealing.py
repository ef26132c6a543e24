"""Session sealing: every datagram after the handshake is encrypted and authenticated.

Each direction has its own key, so the sender's sequence number can be the AEAD nonce
without ever repeating under one key. The 10-byte header is associated data: a flipped type
or sequence byte fails authentication like a flipped body byte. A sliding replay window
drops repeats and very old datagrams after (never before) authentication succeeds.
"""

from __future__ import annotations

import struct

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

from battle.errors import BadDatagram
from battle.wire import PacketType, Sealed, sealed_header

REPLAY_WINDOW = 1024
_NONCE = struct.Struct("<Q4x")


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

    def seal(self, ptype: PacketType, body: bytes) -> bytes:
        seq = self.next_seq
        self.next_seq = seq + 1
        header = sealed_header(ptype, seq)
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
