"""The client side of the battle protocol, sans-IO: what a game client (or bot) speaks.

It is the reference for clients in other languages. Inputs ride in every packet until the
room acknowledges them; frames are delivered strictly in order with no gaps; the client
acknowledges the last contiguous frame it holds, so the room resends exactly what is missing.
"""

from __future__ import annotations

import itertools
import os
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum

from battle.catchup import AgreedSnapshot, SnapshotAssembler
from battle.consensus import canonical_result
from battle.cookie import COOKIE_EPOCH
from battle.errors import BadDatagram
from battle.frames import Frame
from battle.messages import (
    MAX_HASH_REPORTS,
    MAX_INPUTS_PER_PACKET,
    MAX_SNAPSHOT_SIZE,
    SNAPSHOT_CHUNK_SIZE,
    Accept,
    Catchup,
    ClientUpdate,
    DesyncNotice,
    Disconnect,
    DisconnectReason,
    RoomState,
    SnapshotChunk,
    check_result,
    decode_accept_untrusted,
    decode_catchup_untrusted,
    decode_disconnect_untrusted,
    decode_server_update_untrusted,
    decode_snapshot_chunk_untrusted,
    encode_client_update,
    encode_disconnect,
    encode_snapshot_chunk,
)
from battle.redundancy import CopySchedule, overdue_share
from battle.reliability import LinkStats, ReceivedTracker, SentTracker
from battle.sealing import SessionCipher, derive_session_keys
from battle.session import Address
from battle.ticket import ClientKeys
from battle.wire import (
    MAX_SEALED_BODY,
    SESSION_SALT_SIZE,
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
class SnapshotReceived:
    """An agreed state to load instead of simulating every frame up to `frame`."""

    frame: int
    hash: int
    data: bytes


@dataclass(frozen=True, slots=True)
class DesyncAnnounced:
    """The room found diverging state hashes: dump state for the replay tool."""

    notice: DesyncNotice


@dataclass(frozen=True, slots=True)
class Disconnected:
    reason: str


ClientEvent = Accepted | FrameReceived | SnapshotReceived | DesyncAnnounced | Disconnected

_LEFT_BODY = encode_disconnect(Disconnect(DisconnectReason.LEFT))
_MAX_BUFFERED_RUNS = 256
_LATENCY_SAMPLES = 10_000
"""Input latency samples kept (the newest); enough for percentiles, bounded for long runs."""
_CATCHUP_ACK_DELAY = 0.01
_MAX_PENDING_HASHES = 1024
_UPLOAD_CHUNKS_PER_SEND = 8
_UPLOAD_RETRY = 1.0
RECEIVE_HORIZON = 64
"""A room packet still absent once one this many sequence numbers later has arrived counts
as missing; reordering within that distance is not loss."""
RECEIVE_LOSS_GAIN = 0.05
"""EWMA gain of the receive loss share, like the send side's: about the last 20 packets."""


@dataclass(frozen=True, slots=True)
class ReceiveStats:
    """Loss on the way from the room, from the sequence numbers of its sealed packets."""

    received: int
    """Sealed packets from the room that authenticated (repeats are dropped before this)."""
    missing: int
    """Sequence numbers the room used that have not arrived, although one RECEIVE_HORIZON
    later did."""
    late: int
    """Packets that arrived after being counted missing (they no longer count in `missing`)."""
    loss: float
    """Smoothed share of the room's recent packets that are missing, 0..1."""


class ReceiveLossMeter:
    """Received and missing packets of one session, in O(1) per packet.

    The room numbers its sealed packets 1, 2, 3... in each session. A number is judged once
    the newest received is RECEIVE_HORIZON above it: received, or missing. A packet that
    arrives after that is counted late and taken back out of `missing` and of the share, so
    reordering is not loss however deep. Each number must be fed at most once (the replay
    window drops repeats); a repeat within the horizon is ignored.
    """

    __slots__ = ("_bits", "_newest", "late", "loss", "missing", "received")

    def __init__(self) -> None:
        self._newest = 0
        self._bits = (1 << RECEIVE_HORIZON) - 1
        """Bit i: number `_newest - i` arrived. Numbers below 1 count as arrived: the room
        never sends them."""
        self.received = 0
        self.missing = 0
        self.late = 0
        self.loss = 0.0

    def on_receive(self, seq: int) -> None:
        newest = self._newest
        if seq > newest:
            shift = seq - newest
            bits = self._bits
            if shift <= RECEIVE_HORIZON:
                bits <<= shift
                arrived = (bits >> RECEIVE_HORIZON).bit_count()
                self._bits = (bits | 1) & ((1 << RECEIVE_HORIZON) - 1)
            else:  # every number in the window and every one skipped is judged now
                arrived = bits.bit_count()
                self._bits = 1
            self._newest = seq
            self.received += 1
            # Judged now: numbers newest - H + 1 to seq - H; those below 1 never existed.
            judged = max(0, seq - RECEIVE_HORIZON) - max(0, newest - RECEIVE_HORIZON)
            if judged:
                self._judge(judged, shift - arrived)
        elif seq > newest - RECEIVE_HORIZON:
            bit = 1 << (newest - seq)
            if not self._bits & bit:
                self._bits |= bit
                self.received += 1
        elif seq > 0:
            # Counted missing already: take it back, from the share too (which is linear in
            # its samples: this one's weight is the gain, decayed once per number judged since).
            self.received += 1
            self.late += 1
            if self.missing:
                self.missing -= 1
            since = newest - RECEIVE_HORIZON - seq
            undo = RECEIVE_LOSS_GAIN * (1.0 - RECEIVE_LOSS_GAIN) ** since
            self.loss = max(0.0, self.loss - undo)

    def _judge(self, judged: int, missing: int) -> None:
        """Fold `judged` numbers, `missing` of them absent, into the counts and the share
        (as a batch: one EWMA step per number, with the batch's mean share)."""
        self.missing += missing
        if missing:
            keep = (1.0 - RECEIVE_LOSS_GAIN) ** judged
            self.loss += (1.0 - keep) * (missing / judged - self.loss)
        elif self.loss:
            self.loss *= (1.0 - RECEIVE_LOSS_GAIN) ** judged

    def stats(self) -> ReceiveStats:
        return ReceiveStats(self.received, self.missing, self.late, self.loss)


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
        prefer_snapshot: bool = False,
        entropy: Callable[[int], bytes] = os.urandom,
    ) -> None:
        """`frame_ack` and `next_input_seq` let a reconnecting client continue where it was;
        `prefer_snapshot` asks for the latest agreed snapshot instead of every old frame."""
        self.server = server
        self.state = ClientState.CONNECTING
        self.accept: Accept | None = None
        self.frame_ack = frame_ack
        """Last frame held with none missing before it."""
        self.last_server_frame = 0
        self.room_state = RoomState.WAITING
        self.drops: Counter[str] = Counter()
        self.input_latencies: deque[float] = deque(maxlen=_LATENCY_SAMPLES)
        """Seconds from first sending an input to receiving the frame holding it."""
        self._ticket = ticket
        self._keys = keys
        self._client_salt = entropy(SESSION_SALT_SIZE)
        """Ours alone: an ACCEPT replayed from an earlier session cannot match it."""
        self._entropy = entropy
        self._cipher: SessionCipher | None = None
        """Made from the ticket keys and the room's salt when ACCEPT arrives."""
        self._salt = b""
        self._newest_update = 0
        self._received = ReceivedTracker()
        self._arrivals = ReceiveLossMeter()
        self._sent = SentTracker()
        self._cookie: bytes | None = None
        self._cookie_at = 0.0
        self._started = now
        self._connect_timeout = connect_timeout
        self._resend = resend_interval
        self._send_interval = resend_interval
        self._copies = CopySchedule()
        """Spaced extra updates while the link to the room loses much (redundancy.py)."""
        self._timeout = connect_timeout
        self._last_send = -1e18
        self._last_recv = now
        self._next_seq = next_input_seq
        self._unacked: deque[tuple[int, bytes]] = deque()
        self._input_sent_at: dict[int, float] = {}
        """First send time of own inputs not yet seen in a frame (for input latency)."""
        self._resumed = False
        """Continues an earlier connection's input numbering (see reconnect())."""
        self._outbox: list[tuple[bytes, Address]] = []
        self._events: deque[ClientEvent] = deque()
        self.prefer_snapshot = prefer_snapshot
        self.desync: DesyncNotice | None = None
        self.result_acked = False
        self._runs: dict[int, tuple[Frame, ...]] = {}
        """CATCHUP runs that arrived ahead of a missing one, by first frame."""
        self._hashes: deque[tuple[int, int]] = deque()
        self._result: bytes | None = None
        self._snapshot_in = SnapshotAssembler(MAX_SNAPSHOT_SIZE)
        self._upload: AgreedSnapshot | None = None
        self._upload_offset = 0
        self._upload_pass_at = 0.0
        self.snapshot_ack = 0
        self.tick(now)

    # -- API -----------------------------------------------------------------------------

    @property
    def stats(self) -> LinkStats:
        """This connection's packets to the room, as the room's acks describe them."""
        return self._sent.stats()

    @property
    def receive_stats(self) -> ReceiveStats:
        """This connection's packets from the room, from the gaps in their sequence numbers
        (measured here alone: nothing on the wire)."""
        return self._arrivals.stats()

    @property
    def unacked_inputs(self) -> int:
        return len(self._unacked)

    @property
    def next_input_seq(self) -> int:
        return self._next_seq

    @property
    def frames_behind(self) -> int:
        """Frames the room has closed that this client does not hold yet (catch-up progress)."""
        return max(0, self.last_server_frame - self.frame_ack)

    def report_hash(self, frame: int, state_hash: int) -> None:
        """Queue this client's state hash for a frame; it rides in packets until acknowledged."""
        if not 0 <= state_hash < 1 << 64:
            raise ValueError("state hash must be a u64")
        if self._hashes and frame <= self._hashes[-1][0]:
            raise ValueError("hash reports must be for increasing frames")
        self._hashes.append((frame, state_hash))
        if len(self._hashes) > _MAX_PENDING_HASHES:
            self._hashes.popleft()

    def report_result(self, result: dict[str, object]) -> None:
        """The match result as this client computed it; the room takes the majority."""
        encoded = canonical_result(result)
        check_result(encoded)  # string keys, plain values, at most MAX_RESULT_SIZE encoded
        self._result = encoded

    def upload_snapshot(self, frame: int, state_hash: int, data: bytes, now: float) -> None:
        """Offer the room an opaque state for `frame`; kept if its hash matches the majority."""
        if not data or len(data) > MAX_SNAPSHOT_SIZE:
            raise ValueError("snapshot must be 1 byte to 1 MiB")
        self._upload = AgreedSnapshot(frame, state_hash, data)
        self._upload_offset = 0
        self._upload_pass_at = now

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
        where this one stopped: same frames held, same input sequence, unacked inputs kept,
        an unfinished snapshot upload sent again from its start, `snapshot_ack` kept."""
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
            prefer_snapshot=self.prefer_snapshot,
            entropy=self._entropy,
        )
        successor._hashes.extend(self._hashes)
        successor._result = self._result
        successor._resumed = True
        successor._unacked.extend(self._unacked)
        successor._input_sent_at.update(self._input_sent_at)
        successor.input_latencies = self.input_latencies
        # Sent again from its first piece: what the old socket had in flight may be lost.
        successor._upload = self._upload
        successor._upload_pass_at = now
        successor.snapshot_ack = self.snapshot_ack
        return successor

    def disconnect(self, now: float) -> None:
        if self.state is ClientState.CONNECTED:
            for _ in range(3):
                self._emit_sealed(PacketType.DISCONNECT, _LEFT_BODY, now)
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
            deadline = min(self._last_send + self._send_interval, self._last_recv + self._timeout)
            due = self._copies.due
            return deadline if due is None else min(deadline, due)
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
            keys = derive_session_keys(self._keys, datagram.salt, self._client_salt)
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
        self._arrivals.on_receive(datagram.seq)
        if ptype is PacketType.ACCEPT:
            if self.state is ClientState.RESPONDING:
                self._on_accept(decode_accept_untrusted(body), now)
        elif ptype is PacketType.SERVER_UPDATE:
            if self.state is ClientState.CONNECTED:
                self._on_update(body, datagram.seq, now)
        elif ptype is PacketType.CATCHUP:
            if self.state is ClientState.CONNECTED:
                self._on_catchup(decode_catchup_untrusted(body), now)
        elif ptype is PacketType.SNAPSHOT:
            if self.state is ClientState.CONNECTED:
                self._on_snapshot(decode_snapshot_chunk_untrusted(body), now)
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
        if not self._resumed and self._unacked and self._unacked[0][0] <= accept.input_ack:
            # A fresh instance (say, a restarted program) numbered its inputs from 1, but the
            # room already holds this slot's inputs up to input_ack: renumber after them.
            base = accept.input_ack + 1
            renumbered = [(base + i, data) for i, (_, data) in enumerate(self._unacked)]
            self._input_sent_at = {
                base + i: self._input_sent_at.get(seq, now)
                for i, (seq, _) in enumerate(self._unacked)
            }
            self._unacked = deque(renumbered)
            self._next_seq = base + len(renumbered)
        if self._next_seq <= accept.input_ack:
            self._next_seq = accept.input_ack + 1
        self._ack_inputs(accept.input_ack)
        self._events.append(Accepted(accept))
        self._send_update(now)

    def _on_update(self, body: bytes, seq: int, now: float) -> None:
        msg = decode_server_update_untrusted(body)
        self._sent.on_ack(msg.ack, msg.ack_bits, msg.ack_delay_us, now)
        self._ack_inputs(msg.input_ack)
        hashes = self._hashes
        while hashes and hashes[0][0] <= msg.hash_ack:
            hashes.popleft()
        if msg.result_ack:
            self.result_acked = True
        self.snapshot_ack = max(self.snapshot_ack, msg.snapshot_ack)
        if msg.desync is not None and msg.desync != self.desync:
            self.desync = msg.desync
            self._events.append(DesyncAnnounced(msg.desync))
        if seq > self._newest_update:  # a reordered older update must not roll the state back
            self._newest_update = seq
            self.room_state = msg.state
        self.last_server_frame = max(self.last_server_frame, msg.last_frame)
        if msg.frames and msg.first_frame > self.frame_ack + 1:
            self.drops["frame_gap"] += 1
            return
        self._deliver(msg.frames, now)
        if self.room_state is RoomState.ENDED and self.frame_ack >= msg.last_frame:
            # Nothing more will come: say so (the room stops resending) rather than wait.
            self._emit_sealed(PacketType.DISCONNECT, _LEFT_BODY, now)
            self._close("room_ended")

    def _deliver(self, frames: tuple[Frame, ...], now: float) -> None:
        """Hand frames to the game strictly in order: no gap, no duplicate."""
        assert self.accept is not None
        slot = self.accept.slot
        sent_at_by_seq = self._input_sent_at
        for frame in frames:
            if frame.number != self.frame_ack + 1:
                continue
            self.frame_ack = frame.number
            for item in frame.inputs:
                if item.slot == slot:
                    sent_at = sent_at_by_seq.pop(item.seq, None)
                    if sent_at is not None:
                        self.input_latencies.append(now - sent_at)
                    # Inputs land in order: older ones not seen by now were dropped by the room.
                    while sent_at_by_seq and next(iter(sent_at_by_seq)) < item.seq:
                        del sent_at_by_seq[next(iter(sent_at_by_seq))]
            self._events.append(FrameReceived(frame, now))

    def _on_catchup(self, run: Catchup, now: float) -> None:
        self.last_server_frame = max(self.last_server_frame, run.last_frame)
        end = run.first_frame + len(run.frames) - 1
        if end <= self.frame_ack:
            return
        if run.first_frame > self.frame_ack + 1:
            if len(self._runs) < _MAX_BUFFERED_RUNS:
                self._runs[run.first_frame] = run.frames
            return
        self._deliver(run.frames, now)
        self._drain_runs(now)
        self._ack_soon(now)

    def _drain_runs(self, now: float) -> None:
        runs = self._runs
        while runs:
            for first in sorted(runs):
                frames = runs[first]
                if first + len(frames) - 1 <= self.frame_ack:
                    del runs[first]
                elif first <= self.frame_ack + 1:
                    del runs[first]
                    self._deliver(frames, now)
                    break
            else:
                return

    def _on_snapshot(self, chunk: SnapshotChunk, now: float) -> None:
        if chunk.frame <= self.frame_ack:
            return
        try:
            snap = self._snapshot_in.add(chunk)
        except ValueError as exc:
            self.drops[str(exc)] += 1
            return
        if snap is not None:
            self.frame_ack = snap.frame
            self.prefer_snapshot = False
            self._events.append(SnapshotReceived(snap.frame, snap.hash, snap.data))
            self._ack_soon(now)

    def _ack_soon(self, now: float) -> None:
        """During catch-up, acknowledge within ~10 ms rather than at the next tick, so the
        room neither stalls nor resends what already arrived."""
        if now >= self._last_send + _CATCHUP_ACK_DELAY:
            self._send_update(now)

    def _ack_inputs(self, input_ack: int) -> None:
        unacked = self._unacked
        while unacked and unacked[0][0] <= input_ack:
            unacked.popleft()

    # -- time and output -----------------------------------------------------------------

    def tick(self, now: float) -> None:
        if self.state is ClientState.DISCONNECTED:
            return
        if self.state is ClientState.CONNECTED:
            if now >= self._last_recv + self._timeout:
                self._close("timed_out")
            elif now >= self._last_send + self._send_interval:
                self._send_update(now)
            elif self._copies.take(now):
                self._send_copy(now)
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
            datagram = encode_connect_response(self._cookie, self._ticket, self._client_salt)
        self._last_send = now
        self._outbox.append((datagram, self.server))

    def _send_copy(self, now: float) -> None:
        """A spaced extra update carrying the inputs still unacked; it does not move the
        regular cadence, which stays anchored to the last regular update."""
        if not self._unacked:
            self._copies.cancel()  # all acknowledged meanwhile: nothing to cover
            return
        last_send = self._last_send
        self._send_update(now, copy=True)
        self._last_send = last_send

    def _send_update(self, now: float, *, copy: bool = False) -> None:
        inputs: list[bytes] = []
        budget = _INPUT_BUDGET
        first = self._unacked[0][0] if self._unacked else self._next_seq
        for _, data in self._unacked:
            if len(inputs) >= MAX_INPUTS_PER_PACKET or len(data) + 3 > budget:
                break
            budget -= len(data) + 3
            inputs.append(data)
        received = self._received
        accept = self.accept
        want_snapshot = (
            self.prefer_snapshot
            and accept is not None
            and accept.snapshot_frame > self.frame_ack + accept.redundancy_frames
        )
        hashes = list(itertools.islice(self._hashes, MAX_HASH_REPORTS))
        while True:
            body = encode_client_update(
                ClientUpdate(
                    ack=received.ack,
                    ack_bits=received.bits,
                    ack_delay_us=received.ack_delay_us(now),
                    frame_ack=self.frame_ack,
                    input_first=first,
                    inputs=tuple(inputs),
                    hashes=tuple(hashes),
                    result=None if self.result_acked else self._result,
                    want_snapshot=want_snapshot,
                )
            )
            if len(body) <= MAX_SEALED_BODY:
                break
            # Hash reports and a result share the datagram with inputs: whatever does not
            # fit waits for the next packet (newest inputs first, then hash reports).
            if inputs:
                inputs.pop()
            else:
                hashes.pop()
        self._emit_sealed(PacketType.CLIENT_UPDATE, body, now)
        if copy:
            return
        if inputs:
            interval = self._send_interval
            # Updates from the room that do not acknowledge ours show a loss run on the way
            # up before any hole does (the room does not do this: a peer that stops
            # acknowledging is usually gone, and catch-up covers a far-behind one).
            heard = now - self._last_recv <= 2 * interval
            overdue = overdue_share(self._sent, now, interval) if heard else 0.0
            self._copies.arm(now, self._sent, interval, overdue=overdue)
        elif self._copies.due is not None:
            self._copies.cancel()
        self._send_upload(now)

    def _send_upload(self, now: float) -> None:
        """A few snapshot fragments per packet until the room confirms the whole upload."""
        upload = self._upload
        if upload is None:
            return
        if self.snapshot_ack >= upload.frame:
            self._upload = None
            return
        size = len(upload.data)
        if self._upload_offset >= size:
            if now - self._upload_pass_at < _UPLOAD_RETRY:
                return
            self._upload_offset = 0
        for _ in range(_UPLOAD_CHUNKS_PER_SEND):
            offset = self._upload_offset
            if offset >= size:
                self._upload_pass_at = now
                break
            piece = upload.data[offset : offset + SNAPSHOT_CHUNK_SIZE]
            chunk = SnapshotChunk(upload.frame, upload.hash, size, offset, piece)
            self._emit_sealed(PacketType.SNAPSHOT, encode_snapshot_chunk(chunk), now)
            self._upload_offset = offset + len(piece)

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
