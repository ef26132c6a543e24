"""The client side of the battle protocol, sans-IO: what a game client (or bot) speaks.

It is the reference for clients in other languages. Inputs ride in every packet until the
room acknowledges them; frames are delivered strictly in order with no gaps; the client
acknowledges the last contiguous frame it holds, so the room resends exactly what is missing.
"""

from __future__ import annotations

from collections import Counter, deque
from dataclasses import dataclass
from enum import Enum

from battle.cookie import COOKIE_EPOCH
from battle.errors import BadDatagram
from battle.frames import Frame
from battle.messages import (
    MAX_INPUTS_PER_PACKET,
    Accept,
    ClientUpdate,
    Disconnect,
    DisconnectReason,
    RoomState,
    decode_accept_untrusted,
    decode_disconnect_untrusted,
    decode_server_update_untrusted,
    encode_client_update,
    encode_disconnect,
)
from battle.reliability import LinkStats, ReceivedTracker, SentTracker
from battle.sealing import SessionCipher, derive_session_keys
from battle.session import Address
from battle.ticket import ClientKeys
from battle.wire import (
    MAX_SEALED_BODY,
    Challenge,
    Denied,
    PacketType,
    Sealed,
    decode_datagram_untrusted,
    encode_connect_request,
    encode_connect_response,
)

_INPUT_BUDGET = MAX_SEALED_BODY - 64


class ClientState(Enum):
    CONNECTING = "connecting"
    RESPONDING = "responding"
    CONNECTED = "connected"
    DISCONNECTED = "disconnected"


@dataclass(frozen=True, slots=True)
class Accepted:
    accept: Accept


@dataclass(frozen=True, slots=True)
class FrameReceived:
    frame: Frame
    at: float


@dataclass(frozen=True, slots=True)
class Disconnected:
    reason: str


ClientEvent = Accepted | FrameReceived | Disconnected


class ClientConnection:
    """One connection to a room, from handshake to disconnect."""

    def __init__(
        self,
        ticket: bytes,
        keys: ClientKeys,
        server: Address,
        now: float,
        *,
        frame_ack: int = 0,
        next_input_seq: int = 1,
        connect_timeout: float = 10.0,
        resend_interval: float = 0.1,
    ) -> None:
        """`frame_ack` and `next_input_seq` let a reconnecting client continue where it was."""
        self.server = server
        self.state = ClientState.CONNECTING
        self.accept: Accept | None = None
        self.frame_ack = frame_ack
        """Last frame held with none missing before it."""
        self.last_server_frame = 0
        self.room_state = RoomState.WAITING
        self.drops: Counter[str] = Counter()
        self.input_latencies: list[float] = []
        """Seconds from first sending an input to receiving the frame holding it."""
        self._ticket = ticket
        self._keys = keys
        self._cipher: SessionCipher | None = None
        """Made from the ticket keys and the room's salt when ACCEPT arrives."""
        self._salt = b""
        self._newest_update = 0
        self._received = ReceivedTracker()
        self._sent = SentTracker()
        self._cookie: bytes | None = None
        self._cookie_at = 0.0
        self._started = now
        self._connect_timeout = connect_timeout
        self._resend = resend_interval
        self._send_interval = resend_interval
        self._timeout = connect_timeout
        self._last_send = -1e18
        self._last_recv = now
        self._next_seq = next_input_seq
        self._unacked: deque[tuple[int, bytes]] = deque()
        self._input_sent_at: dict[int, float] = {}
        self._outbox: list[tuple[bytes, Address]] = []
        self._events: deque[ClientEvent] = deque()
        self.tick(now)

    # -- API -----------------------------------------------------------------------------

    @property
    def stats(self) -> LinkStats:
        return self._sent.stats()

    @property
    def unacked_inputs(self) -> int:
        return len(self._unacked)

    @property
    def next_input_seq(self) -> int:
        return self._next_seq

    def send_input(self, data: bytes, now: float, *, flush: bool = True) -> int:
        """Queue one input; it is carried in every packet until the room acknowledges it."""
        if self.state is ClientState.DISCONNECTED:
            raise RuntimeError("connection is closed")
        seq = self._next_seq
        self._next_seq += 1
        self._unacked.append((seq, data))
        self._input_sent_at[seq] = now
        if flush and self.state is ClientState.CONNECTED:
            self._send_update(now)
        return seq

    def reconnect(self, now: float) -> ClientConnection:
        """A new connection for the same slot (from a new socket, typically) that continues
        where this one stopped: same frames held, same input sequence, unacked inputs kept."""
        if self.accept is None:
            raise RuntimeError("never accepted: there is no reconnect ticket")
        self._close("reconnecting")
        successor = ClientConnection(
            self.accept.reconnect_ticket,
            self.accept.reconnect_keys,
            self.server,
            now,
            frame_ack=self.frame_ack,
            next_input_seq=self._next_seq,
            connect_timeout=self._connect_timeout,
            resend_interval=self._resend,
        )
        successor._unacked.extend(self._unacked)
        successor._input_sent_at.update(self._input_sent_at)
        successor.input_latencies = self.input_latencies
        return successor

    def disconnect(self, now: float) -> None:
        if self.state is ClientState.CONNECTED:
            body = encode_disconnect(Disconnect(DisconnectReason.LEFT))
            for _ in range(3):
                self._emit_sealed(PacketType.DISCONNECT, body, now)
        self._close("left")

    def datagrams_to_send(self) -> list[tuple[bytes, Address]]:
        out, self._outbox = self._outbox, []
        return out

    def next_event(self) -> ClientEvent | None:
        return self._events.popleft() if self._events else None

    def next_deadline(self) -> float | None:
        if self.state is ClientState.DISCONNECTED:
            return None
        if self.state is ClientState.CONNECTED:
            return min(self._last_send + self._send_interval, self._last_recv + self._timeout)
        return min(self._last_send + self._resend, self._started + self._connect_timeout)

    # -- input ---------------------------------------------------------------------------

    def receive_datagram(self, data: bytes, addr: Address, now: float) -> None:
        if addr != self.server:
            self.drops["unknown_address"] += 1
            return
        if self.state is ClientState.DISCONNECTED:
            return
        try:
            datagram = decode_datagram_untrusted(data)
            if isinstance(datagram, Challenge):
                self._on_challenge(datagram, now)
            elif isinstance(datagram, Denied):
                if self.state is not ClientState.CONNECTED:
                    self._close(f"denied:{datagram.reason.name.lower()}")
            elif isinstance(datagram, Sealed):
                self._on_sealed(datagram, now)
            else:
                self.drops["wrong_direction"] += 1
        except BadDatagram as exc:
            self.drops[exc.reason] += 1

    def _on_challenge(self, challenge: Challenge, now: float) -> None:
        if self.state is ClientState.CONNECTING:
            self.state = ClientState.RESPONDING
        if self.state is ClientState.RESPONDING:
            self._cookie = challenge.cookie
            self._cookie_at = now
            self._send_handshake(now)

    def _on_sealed(self, datagram: Sealed, now: float) -> None:
        ptype = datagram.type
        cipher = self._cipher
        if ptype is PacketType.ACCEPT and self.state is ClientState.RESPONDING:
            keys = derive_session_keys(self._keys, datagram.salt)
            cipher = SessionCipher(send_key=keys.c2s, recv_key=keys.s2c)
        elif ptype is PacketType.ACCEPT and datagram.salt != self._salt:
            self.drops["stale_accept"] += 1  # another session's ACCEPT; ours is settled
            return
        if cipher is None:
            self.drops["unexpected"] += 1
            return
        body = cipher.open_untrusted(datagram)
        if self._cipher is None:
            self._cipher = cipher
            self._salt = datagram.salt
        self._last_recv = now
        self._received.on_receive(datagram.seq, now)
        if ptype is PacketType.ACCEPT:
            if self.state is ClientState.RESPONDING:
                self._on_accept(decode_accept_untrusted(body), now)
        elif ptype is PacketType.SERVER_UPDATE:
            if self.state is ClientState.CONNECTED:
                self._on_update(body, datagram.seq, now)
        elif ptype is PacketType.DISCONNECT:
            msg = decode_disconnect_untrusted(body)
            self._close(msg.reason.name.lower())
        else:
            self.drops["wrong_direction"] += 1

    def _on_accept(self, accept: Accept, now: float) -> None:
        self.accept = accept
        self.state = ClientState.CONNECTED
        self.room_state = accept.state
        self.last_server_frame = accept.frame
        self._timeout = accept.timeout_ms / 1000
        self._send_interval = min(1.0 / accept.tick_rate, accept.heartbeat_ms / 1000)
        if self._next_seq <= accept.input_ack:
            self._next_seq = accept.input_ack + 1
        self._ack_inputs(accept.input_ack)
        self._events.append(Accepted(accept))
        self._send_update(now)

    def _on_update(self, body: bytes, seq: int, now: float) -> None:
        msg = decode_server_update_untrusted(body)
        self._sent.on_ack(msg.ack, msg.ack_bits, msg.ack_delay_us, now)
        self._ack_inputs(msg.input_ack)
        if seq > self._newest_update:  # a reordered older update must not roll the state back
            self._newest_update = seq
            self.room_state = msg.state
        self.last_server_frame = max(self.last_server_frame, msg.last_frame)
        if msg.frames and msg.first_frame > self.frame_ack + 1:
            self.drops["frame_gap"] += 1
            return
        assert self.accept is not None
        slot = self.accept.slot
        for frame in msg.frames:
            if frame.number != self.frame_ack + 1:
                continue
            self.frame_ack = frame.number
            for item in frame.inputs:
                if item.slot == slot:
                    sent_at = self._input_sent_at.pop(item.seq, None)
                    if sent_at is not None:
                        self.input_latencies.append(now - sent_at)
            self._events.append(FrameReceived(frame, now))

    def _ack_inputs(self, input_ack: int) -> None:
        unacked = self._unacked
        while unacked and unacked[0][0] <= input_ack:
            unacked.popleft()

    # -- time and output -----------------------------------------------------------------

    def tick(self, now: float) -> None:
        if self.state is ClientState.DISCONNECTED:
            return
        if self.state is ClientState.CONNECTED:
            if now - self._last_recv >= self._timeout:
                self._close("timed_out")
            elif now >= self._last_send + self._send_interval:
                self._send_update(now)
            return
        if now >= self._started + self._connect_timeout:
            self._close("connect_timeout")
            return
        if self._cookie is not None and now - self._cookie_at >= COOKIE_EPOCH / 2:
            self._cookie = None  # it may expire before the room sees it: ask for a new one
            self.state = ClientState.CONNECTING
        if now >= self._last_send + self._resend:
            self._send_handshake(now)

    def _send_handshake(self, now: float) -> None:
        if self._cookie is None:
            datagram = encode_connect_request(self._ticket)
        else:
            datagram = encode_connect_response(self._cookie, self._ticket)
        self._last_send = now
        self._outbox.append((datagram, self.server))

    def _send_update(self, now: float) -> None:
        inputs: list[bytes] = []
        budget = _INPUT_BUDGET
        first = self._unacked[0][0] if self._unacked else self._next_seq
        for _, data in self._unacked:
            if len(inputs) >= MAX_INPUTS_PER_PACKET or len(data) + 3 > budget:
                break
            budget -= len(data) + 3
            inputs.append(data)
        received = self._received
        body = encode_client_update(
            ClientUpdate(
                ack=received.ack,
                ack_bits=received.bits,
                ack_delay_us=received.ack_delay_us(now),
                frame_ack=self.frame_ack,
                input_first=first,
                inputs=tuple(inputs),
            )
        )
        self._emit_sealed(PacketType.CLIENT_UPDATE, body, now)

    def _emit_sealed(self, ptype: PacketType, body: bytes, now: float) -> None:
        cipher = self._cipher
        assert cipher is not None, "sealed datagrams are only sent once connected"
        self._sent.on_send(cipher.next_seq, now)
        self._last_send = now
        self._outbox.append((cipher.seal(ptype, body), self.server))

    def _close(self, reason: str) -> None:
        if self.state is not ClientState.DISCONNECTED:
            self.state = ClientState.DISCONNECTED
            self._events.append(Disconnected(reason))
