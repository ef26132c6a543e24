"""Per-address session state: the cipher, acks and link estimates of one proven client."""

from __future__ import annotations

from battle.reliability import ReceivedTracker, SentTracker
from battle.sealing import SessionCipher, derive_session_keys
from battle.ticket import ClientKeys
from battle.wire import PacketType

Address = tuple[str, int]


class Session:
    """One client address speaking sealed datagrams for one slot (server side)."""

    __slots__ = (
        "address",
        "cipher",
        "client_salt",
        "confirmed",
        "last_recv",
        "last_send",
        "received",
        "salt",
        "sent",
        "ticket_nonce",
    )

    def __init__(
        self,
        address: Address,
        keys: ClientKeys,
        ticket_nonce: bytes,
        salt: bytes,
        client_salt: bytes,
        now: float,
    ) -> None:
        self.address = address
        self.salt = salt
        self.client_salt = client_salt
        session_keys = derive_session_keys(keys, salt, client_salt)
        self.cipher = SessionCipher(send_key=session_keys.s2c, recv_key=session_keys.c2s)
        self.ticket_nonce = ticket_nonce
        self.received = ReceivedTracker()
        self.sent = SentTracker()
        self.last_recv = now
        self.last_send = now
        self.confirmed = False
        """Set by the first authenticated datagram; until then it cannot replace a live session."""

    def seal(self, ptype: PacketType, body: bytes, now: float) -> bytes:
        seq = self.cipher.next_seq
        self.sent.on_send(seq, now)
        self.last_send = now
        salt = self.salt if ptype is PacketType.ACCEPT else b""
        return self.cipher.seal(ptype, body, salt=salt)
