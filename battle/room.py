"""The room: a fixed-tick frame state machine that never waits for anyone.

Every tick closes the next frame with the inputs that arrived since the previous one, ordered
by (slot, input sequence), and sends each connected peer one datagram holding every frame
after the last one it acknowledged (bounded by the redundancy window). A slow or silent peer
changes nothing for the others. Inputs beyond the per-frame cap (a burst after packet loss)
wait for the next frame rather than being lost. Peers far behind are streamed catch-up runs
(catchup.py); state hashes and results are judged by majority (consensus.py). Pure: time is
an argument and output goes to a sink.
"""

from __future__ import annotations

from array import array

from battle.catchup import PUMP_INTERVAL, AgreedSnapshot
from battle.config import RoomConfig, RosterEntry
from battle.delivery import FRAME_BUDGET, Delivery
from battle.errors import BadDatagram
from battle.events import (
    FrameClosed,
    PlayerConnected,
    PlayerDisconnected,
    ResultDecided,
    RoomEnded,
    RoomStarted,
)
from battle.frames import Frame, FrameInput
from battle.messages import (
    Accept,
    ClientUpdate,
    Disconnect,
    DisconnectReason,
    RoomState,
    decode_client_update_untrusted,
    decode_disconnect_untrusted,
    decode_frame,
    encode_accept,
    encode_disconnect,
    encode_frame,
)
from battle.peer import CoreSink, Peer, PeerStatus
from battle.referee import Referee
from battle.session import Address, Session
from battle.ticket import FLAG_RECONNECT, ClientKeys, Ticket, issue_ticket
from battle.wire import DenyReason, PacketType, Sealed

MAX_PLAYERS = 32
"""Keeps ACCEPT (which lists the roster) inside one datagram."""
_INPUT_COST = 14
"""Worst-case msgpack bytes of one input in a frame besides its data (slot, seq, bin header)."""
MAX_PENDING_SESSIONS = 4
"""Handshakes per slot awaiting their first sealed datagram; the first to send one wins."""
_ENDED_DISCONNECT_COPIES = 3


class Room:
    """One match's frame loop, its peers and its frame history."""

    def __init__(
        self,
        room_id: int,
        match_id: int,
        seed: int,
        roster: tuple[RosterEntry, ...],
        config: RoomConfig,
        now: float,
        *,
        ticket_key: bytes,
        clock_offset: float,
        sink: CoreSink,
    ) -> None:
        slots = [e.slot for e in roster]
        if not roster or sorted(slots) != list(range(len(roster))):
            raise ValueError("roster slots must be 0..n-1, each once")
        if len(roster) > MAX_PLAYERS:
            raise ValueError(f"at most {MAX_PLAYERS} players per room")
        self.room_id = room_id
        self.match_id = match_id
        self.seed = seed
        self.roster = tuple(sorted(roster, key=lambda e: e.slot))
        self.config = config
        self.created_at = now
        self.state = RoomState.WAITING
        self.started_at: float | None = None
        self.end_reason: str | None = None
        self.peers = [Peer(e, config.max_snapshot_bytes) for e in self.roster]
        self.encoded_frames: list[bytes] = []
        """Every closed frame, encoded once: what updates, catch-up and tools read."""
        self.frame_times = array("d")
        """When each frame closed, on the core's clock (8 bytes a frame)."""
        self.ticket_key = ticket_key
        self._clock_offset = clock_offset
        self._sink = sink
        self._interval = config.tick_interval
        self.deadline_moved = False
        """Set when handling a datagram made the next deadline earlier (the host reschedules
        only then; a deadline that moved later just causes one early, harmless tick)."""
        self.phase = 0.0
        """Fraction of a tick interval by which the first frame is delayed (set by the host)."""
        self._limit = config.redundancy_frames
        self._next_tick = 0.0
        self._next_heartbeat = now
        self._empty_since: float | None = None
        self._linger_until = 0.0
        self.referee = Referee(room_id, match_id, len(self.roster), config, sink)
        self._delivery = Delivery(
            room_id, config, self.peers, self.encoded_frames, self.referee, sink
        )

    # -- queries -------------------------------------------------------------------------

    @property
    def last_frame(self) -> int:
        return len(self.encoded_frames)

    @property
    def frames(self) -> list[Frame]:
        """Every closed frame, decoded (for tools and tests; the room keeps only encodings)."""
        return [decode_frame(n, e) for n, e in enumerate(self.encoded_frames, start=1)]

    def connected_slots(self) -> tuple[int, ...]:
        return tuple(p.entry.slot for p in self.peers if p.status is PeerStatus.CONNECTED)

    def session_for(self, slot: int, address: Address) -> Session | None:
        peer = self.peers[slot]
        session = peer.session
        if session is not None and session.address == address:
            return session
        for pending in peer.pending:
            if pending.address == address:
                return pending
        return None

    def next_deadline(self) -> float | None:
        """Disconnect timeouts are checked on every tick and heartbeat, not scheduled."""
        if self.state is RoomState.RUNNING:
            assert self.started_at is not None
            deadline = min(self._next_tick, self.started_at + self.config.max_duration)
            if self._empty_since is not None:
                deadline = min(deadline, self._empty_since + self.config.empty_timeout)
            copy_at = self._delivery.copy_at
            if copy_at is not None:
                deadline = min(deadline, copy_at)
        elif self.state is RoomState.WAITING:
            deadline = min(self.created_at + self.config.start_timeout, self._next_heartbeat)
        elif self.finished:
            return None
        else:
            deadline = min(self._next_tick, self._linger_until)
        pump_at = self._delivery.pump_at
        if pump_at is not None:
            deadline = min(deadline, pump_at)
        return deadline

    # -- handshake -----------------------------------------------------------------------

    def accept_session(
        self, ticket: Ticket, client_salt: bytes, address: Address, now: float
    ) -> DenyReason | None:
        """Called once the address is proven: (re)send ACCEPT, allocating a pending session."""
        if self.state is RoomState.ENDED:
            return DenyReason.ROOM_ENDED
        peer = self.peers[ticket.slot]
        for existing in (peer.session, *peer.pending):
            if (
                existing is not None
                and existing.address == address
                and existing.ticket_nonce == ticket.nonce
                and existing.client_salt == client_salt
            ):
                # The same client instance again: our ACCEPT was lost. Same session, same
                # keys. Only a pending session's patience is renewed: this datagram is not
                # sealed, so it must not keep a live session from timing out.
                if existing is not peer.session:
                    existing.last_recv = now
                self._send_accept(peer, existing, now)
                return None
        # A new session never displaces the live one or another address's pending one here:
        # it must first prove it holds the keys. An earlier instance's pending session at
        # this same address can no longer answer, so it goes; past the cap the oldest goes.
        peer.pending = [p for p in peer.pending if p.address != address]
        if len(peer.pending) >= MAX_PENDING_SESSIONS:
            self._release(peer.pending.pop(0).address)
        salt = self._sink.entropy(16)
        session = Session(address, ticket.keys, ticket.nonce, salt, client_salt, now)
        peer.pending.append(session)
        self._sink.stats["sessions_pending"] += 1
        self._send_accept(peer, session, now)
        return None

    def _send_accept(self, peer: Peer, session: Session, now: float) -> None:
        cfg = self.config
        lifetime = cfg.start_timeout + cfg.max_duration
        expires = self.created_at + lifetime + self._clock_offset
        entropy = self._sink.entropy
        ticket, keys = issue_ticket(
            self.ticket_key,
            self.match_id,
            self.room_id,
            peer.entry.player_id,
            peer.entry.slot,
            expires,
            team=peer.entry.team,
            flags=FLAG_RECONNECT,
            nonce=entropy(12),
            keys=ClientKeys(entropy(32), entropy(32)),
        )
        body = encode_accept(
            Accept(
                match_id=self.match_id,
                room_id=self.room_id,
                slot=peer.entry.slot,
                team=peer.entry.team,
                seed=self.seed,
                tick_rate=cfg.tick_rate,
                roster=self.roster,
                frame=self.last_frame,
                state=self.state,
                input_ack=peer.input_ack,
                reconnect_ticket=ticket,
                reconnect_keys=keys,
                redundancy_frames=cfg.redundancy_frames,
                heartbeat_ms=round(cfg.heartbeat_interval * 1000),
                timeout_ms=round(cfg.disconnect_timeout * 1000),
                snapshot_frame=self.agreed_snapshot.frame if self.agreed_snapshot else 0,
            )
        )
        self._emit(session, PacketType.ACCEPT, body, now)

    # -- sealed traffic ------------------------------------------------------------------

    def receive_sealed(self, slot: int, datagram: Sealed, address: Address, now: float) -> None:
        """Authenticate, then act on one session datagram. Drops are counted, never raised."""
        peer = self.peers[slot]
        opened = self._open(peer, datagram, address)
        if opened is None:
            return
        session, body = opened
        if not session.confirmed:
            self._confirm(peer, session, now)
        session.last_recv = now
        session.received.on_receive(datagram.seq, now)
        try:
            if datagram.type is PacketType.CLIENT_UPDATE:
                self._on_client_update(peer, session, body, now)
                if self.state is RoomState.ENDED and peer.frame_ack >= self.last_frame:
                    self._finish_peer(peer, now)
            elif datagram.type is PacketType.SNAPSHOT:
                self.referee.on_snapshot_chunk(peer, body, self.last_frame)
            elif datagram.type is PacketType.DISCONNECT:
                decode_disconnect_untrusted(body)
                if self.state is RoomState.ENDED:
                    self._finish_peer(peer, now)
                else:
                    self._drop_session(peer, "left", now, notify=False)
            else:
                self._sink.drops["wrong_direction"] += 1
        except BadDatagram as exc:
            self._sink.drops[exc.reason] += 1

    def _open(self, peer: Peer, datagram: Sealed, address: Address) -> tuple[Session, bytes] | None:
        """Authenticate with the live session at this address, else with a pending one there
        (a client restarted on the same address holds new session keys)."""
        reason = "unknown_address"
        candidates = [peer.session] if peer.session is not None else []
        candidates += peer.pending
        for session in candidates:
            if session.address != address:
                continue
            try:
                return session, session.cipher.open_untrusted(datagram)
            except BadDatagram as exc:
                reason = exc.reason
        self._sink.drops[reason] += 1
        return None

    def _confirm(self, peer: Peer, session: Session, now: float) -> None:
        """The first authenticated datagram proves key possession: the session goes live."""
        reconnected = peer.status is not PeerStatus.NEVER_CONNECTED
        if peer.session is not None:
            same_address = peer.session.address == session.address
            self._drop_session(peer, "replaced", now, notify=not same_address)
        session.confirmed = True
        for other in peer.pending:
            if other is not session:
                self._release(other.address)
        peer.pending = []
        peer.session = session
        peer.status = PeerStatus.CONNECTED
        peer.frame_ack = 0
        peer.catchup = None
        peer.want_snapshot = False
        self._empty_since = None
        self._sink.stats["sessions_connected"] += 1
        self._sink.events.append(
            PlayerConnected(
                self.room_id,
                peer.entry.slot,
                peer.entry.player_id,
                self.last_frame,
                session.address,
                reconnected,
            )
        )
        if self.state is RoomState.WAITING and all(
            p.status is PeerStatus.CONNECTED for p in self.peers
        ):
            self._start(now)

    def _on_client_update(self, peer: Peer, session: Session, body: bytes, now: float) -> None:
        msg = decode_client_update_untrusted(body)
        session.sent.on_ack(msg.ack, msg.ack_bits, msg.ack_delay_us, now)
        if msg.frame_ack > peer.frame_ack:
            peer.frame_ack = min(msg.frame_ack, self.last_frame)
        peer.want_snapshot = msg.want_snapshot
        if peer.catchup is None and (
            msg.want_snapshot or len(self.encoded_frames) - peer.frame_ack > 2 * self._limit
        ):
            self._delivery.update_catchup(peer, now)  # start now, not at the next tick
            self._note_pump()
        if msg.hashes or msg.result is not None:
            self.referee.on_reports(peer, msg, self.last_frame, now)
        if msg.inputs:
            self._on_inputs(peer, msg)

    def _on_inputs(self, peer: Peer, msg: ClientUpdate) -> None:
        cfg = self.config
        drops = self._sink.drops
        expected = peer.input_ack + 1
        start = expected - msg.input_first
        if start < 0:
            drops["input_gap"] += 1
            return
        running = self.state is RoomState.RUNNING
        for data in msg.inputs[start:]:
            seq = expected
            expected += 1
            if not running:
                drops["input_not_running"] += 1
            elif len(data) > cfg.max_input_bytes:
                drops["input_too_large"] += 1
            elif len(peer.queued) >= cfg.max_inputs_per_frame + cfg.input_backlog:
                drops["input_excess"] += 1
            else:
                peer.queued.append(FrameInput(peer.entry.slot, seq, data))
        peer.input_ack = expected - 1

    # -- time ----------------------------------------------------------------------------

    def tick(self, now: float) -> None:
        delivery = self._delivery
        pump_at = delivery.pump_at
        if pump_at is not None and now >= pump_at:
            self._pump(now)
        if self.state is RoomState.WAITING:
            self._check_timeouts(now)
            if now >= self.created_at + self.config.start_timeout:
                if len(self.connected_slots()) >= self.config.min_players:
                    self._start(now)
                else:
                    self.end("not_enough_players", now)
                    return
            elif now >= self._next_heartbeat:
                delivery.broadcast(now, self.state)
                self._next_heartbeat = now + self.config.heartbeat_interval
        if self.state is RoomState.RUNNING:
            self._run(now)
            copy_at = delivery.copy_at
            if copy_at is not None and now >= copy_at:
                delivery.send_copies(now, self.state)
        elif self.state is RoomState.ENDED:
            self._linger(now)
        if delivery.pump_armed:
            self._note_pump()

    def _start(self, now: float) -> None:
        self.state = RoomState.RUNNING
        self.started_at = now
        self.deadline_moved = True
        # Rooms that start together would tick together; the phase spreads them over the
        # interval so one host's ticks never bunch up (at most one interval of extra wait).
        self._next_tick = now + self._interval * (1.0 + self.phase)
        if not self.connected_slots():
            self._empty_since = now
        self._sink.events.append(RoomStarted(self.room_id, now, self.connected_slots()))

    def _run(self, now: float) -> None:
        assert self.started_at is not None
        closed = 0
        while now >= self._next_tick:
            self._close_frame(now)
            closed += 1
            self._next_tick += self._interval
            if closed >= self.config.tick_rate:
                # A stall of a second or more: re-anchor rather than burst-close frames.
                self._sink.stats["tick_overruns"] += 1
                self._next_tick = now + self._interval
                break
        if closed:
            self._delivery.broadcast(now, self.state, arm_copies=True)
            self._judge(now)
        if self.state is not RoomState.RUNNING:
            return
        self._check_timeouts(now)
        if now >= self.started_at + self.config.max_duration:
            self.end("max_duration", now)
        elif self._empty_since is not None and now >= self._empty_since + self.config.empty_timeout:
            self.end("abandoned", now)

    def _close_frame(self, now: float) -> None:
        number = self.last_frame + 1
        budget = FRAME_BUDGET - 3
        cap = self.config.max_inputs_per_frame
        peers = self.peers
        # Who gets the byte budget first rotates with the frame number, so when a frame is
        # full no slot is always the one deferred. The frame itself stays in slot order.
        start = number % len(peers)
        taken_by_slot: dict[int, list[FrameInput]] = {}
        for peer in peers[start:] + peers[:start]:
            queued = peer.queued
            if not queued:
                continue
            taken = 0
            for item in queued:
                cost = len(item.data) + _INPUT_COST
                if taken == cap or cost > budget:
                    break
                budget -= cost
                taken += 1
            if taken:
                taken_by_slot[peer.entry.slot] = queued[:taken]
            if taken < len(queued):
                self._sink.stats["inputs_deferred"] += len(queued) - taken
            peer.queued = queued[taken:]
        inputs = [item for slot in sorted(taken_by_slot) for item in taken_by_slot[slot]]
        frame = Frame(number, tuple(inputs))
        self.encoded_frames.append(encode_frame(frame))
        self.frame_times.append(now)
        self._sink.stats["frames_closed"] += 1
        self._sink.events.append(FrameClosed(self.room_id, frame, now))

    # -- catch-up ------------------------------------------------------------------------

    def _note_pump(self) -> None:
        """A catch-up that starts the pacing steps moves the next deadline earlier."""
        delivery = self._delivery
        if delivery.pump_armed:
            delivery.pump_armed = False
            self.deadline_moved = True

    def _pump(self, now: float) -> None:
        """Feed every catching-up peer what its byte budget allows right now."""
        delivery = self._delivery
        active = False
        for peer in self.peers:
            session = peer.session
            if peer.catchup is None or session is None:
                continue
            stream = delivery.update_catchup(peer, now)
            if stream is None:
                continue
            if stream.budget <= 0:
                # Broken or abusive: it never acknowledged what it was sent. Disconnect it
                # rather than leave it waiting for frames that will never come.
                self._sink.drops["catchup_budget"] += 1
                self._drop_session(peer, "catchup_budget", now, notify=True)
                continue
            active = True
            delivery.feed(peer, session, stream, now)
        delivery.pump_at = now + PUMP_INTERVAL if active else None

    # -- reports: state hashes, results, snapshots (referee.py) -------------------------

    def _judge(self, now: float) -> None:
        """Compare state hashes and count result votes; called every tick."""
        decided = self.referee.judge(frozenset(self.connected_slots()), self.last_frame, now)
        if decided is not None:
            self.end("result", now)

    @property
    def agreed_snapshot(self) -> AgreedSnapshot | None:
        return self.referee.agreed_snapshot

    @agreed_snapshot.setter
    def agreed_snapshot(self, snapshot: AgreedSnapshot | None) -> None:
        self.referee.agreed_snapshot = snapshot

    @property
    def result(self) -> ResultDecided | None:
        return self.referee.result

    @property
    def desyncs_found(self) -> int:
        return self.referee.desyncs_found

    def _check_timeouts(self, now: float) -> None:
        timeout = self.config.disconnect_timeout
        for peer in self.peers:
            session = peer.session
            if (
                peer.status is PeerStatus.CONNECTED
                and session is not None
                and now - session.last_recv >= timeout
            ):
                self._drop_session(peer, "timed_out", now, notify=True)
            if peer.pending:
                for stale in [p for p in peer.pending if now - p.last_recv >= timeout]:
                    peer.pending.remove(stale)
                    self._release(stale.address)

    def _drop_session(self, peer: Peer, reason: str, now: float, *, notify: bool) -> None:
        session = peer.session
        if session is None:
            return
        if notify:
            code = {
                "replaced": DisconnectReason.REPLACED,
                "timed_out": DisconnectReason.TIMED_OUT,
            }.get(reason, DisconnectReason.KICKED)
            self._emit(session, PacketType.DISCONNECT, encode_disconnect(Disconnect(code)), now)
        self._release(session.address)
        peer.session = None
        peer.status = PeerStatus.DISCONNECTED
        self._sink.stats["sessions_disconnected"] += 1
        self._sink.events.append(
            PlayerDisconnected(
                self.room_id, peer.entry.slot, peer.entry.player_id, self.last_frame, reason
            )
        )
        if (
            self.state is RoomState.RUNNING
            and self._empty_since is None
            and not self.connected_slots()
        ):
            self._empty_since = now

    def end(self, reason: str, now: float) -> None:
        """End the match (also called by the host, e.g. on an agreed result or shutdown).

        Frames stop; peers that lack the last frames keep receiving them for `end_linger`
        seconds so every client can finish the simulation, then all sessions close.
        """
        if self.state is RoomState.ENDED:
            return
        self.state = RoomState.ENDED
        self.end_reason = reason
        self.deadline_moved = True
        self._delivery.copy_at = None
        self._linger_until = now + self.config.end_linger
        self._next_tick = now + self._interval
        self._sink.events.append(RoomEnded(self.room_id, self.last_frame, reason))
        for peer in self.peers:
            for pending in peer.pending:
                self._release(pending.address)
            peer.pending = []
            if peer.session is not None and peer.frame_ack >= self.last_frame:
                self._finish_peer(peer, now)

    @property
    def finished(self) -> bool:
        """Ended, and every session is closed: the host may drop the room."""
        return self.state is RoomState.ENDED and all(p.session is None for p in self.peers)

    def _linger(self, now: float) -> None:
        if now >= self._linger_until:
            for peer in self.peers:
                self._finish_peer(peer, now)
        elif now >= self._next_tick:
            self._next_tick = now + self._interval
            self._delivery.broadcast(now, self.state)

    def _finish_peer(self, peer: Peer, now: float) -> None:
        session = peer.session
        if session is None:
            return
        # Says ENDED, with acks, before the goodbyes.
        self._delivery.send_update(peer, session, now, self.state)
        self._note_pump()
        for _ in range(_ENDED_DISCONNECT_COPIES):
            self._emit(session, PacketType.DISCONNECT, _ENDED_BODY, now)
        self._release(session.address)
        peer.session = None
        peer.status = PeerStatus.DISCONNECTED

    # -- output --------------------------------------------------------------------------

    def _emit(self, session: Session, ptype: PacketType, body: bytes, now: float) -> None:
        self._sink.outbox.append((session.seal(ptype, body, now), session.address))

    def _release(self, address: Address) -> None:
        self._sink.released.append(address)


_ENDED_BODY = encode_disconnect(Disconnect(DisconnectReason.ROOM_ENDED))
