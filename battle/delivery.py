"""Getting a room's closed frames to its peers: live updates, spaced copies, catch-up.

Each connected peer gets one SERVER_UPDATE per tick (or heartbeat) holding every frame
after the last one it acknowledged, bounded by the redundancy window and the datagram size.
A peer whose link measured much loss also gets spaced copies of each fresh update. A peer
further behind than the window covers, or one that asked for the agreed snapshot, is
streamed catch-up runs instead, paced and capped by a byte budget. Pure: time is an
argument and output goes to the room's sink.
"""

from __future__ import annotations

from battle.catchup import AgreedSnapshot, CatchupStream, ChunkCache
from battle.config import RoomConfig
from battle.events import CatchUpFinished, CatchUpStarted
from battle.messages import (
    RoomState,
    encode_server_update_parts,
    encode_snapshot_chunk,
    encode_update_tail,
)
from battle.peer import CoreSink, Peer, PeerStatus
from battle.referee import Referee
from battle.session import Session
from battle.wire import MAX_SEALED_BODY, PacketType

_UPDATE_PREFIX_MAX = 128
"""Upper bound of a SERVER_UPDATE body without its frames: eleven msgpack scalars, array
headers and a desync notice naming at most MAX_NOTICE_SLOTS slots."""
FRAME_BUDGET = MAX_SEALED_BODY - _UPDATE_PREFIX_MAX
CATCHUP_BUDGET_FACTOR = 3
CATCHUP_BUDGET_SLACK = 1 << 20
"""A catch-up may send three times what the peer lacked when it began, plus 1 MiB for the
frames that close meanwhile; a peer that exhausts it is disconnected (it may reconnect)."""
_ALIVE = 0.5
"""A peer heard from within this many seconds may be sent a catch-up stream."""


class Delivery:
    """Sends one room's frames to its peers; the room owns it and calls it from its loop."""

    def __init__(
        self,
        room_id: int,
        config: RoomConfig,
        peers: list[Peer],
        encoded_frames: list[bytes],
        referee: Referee,
        sink: CoreSink,
    ) -> None:
        self.room_id = room_id
        self._config = config
        self._peers = peers
        self._frames = encoded_frames
        """The room's closed frames, encoded (the same list the room appends to)."""
        self._referee = referee
        self._sink = sink
        self._limit = config.redundancy_frames
        self._interval = config.tick_interval
        self._chunks = ChunkCache()
        self.pump_at: float | None = None
        """Next catch-up pacing step while any peer is catching up."""
        self.copy_at: float | None = None
        """Next spaced copy of an update to a peer on a lossy link."""
        self.pump_armed = False
        """Set when a catch-up made pacing start (`pump_at` was None); the room clears it."""

    # -- updates -------------------------------------------------------------------------

    def broadcast(self, now: float, state: RoomState, *, arm_copies: bool = False) -> None:
        """One update to every live session; after a frame closes (`arm_copies`), peers whose
        link measured much loss also get spaced copies planned."""
        copy_at: float | None = None
        for peer in self._peers:
            session = peer.session
            if peer.status is not PeerStatus.CONNECTED or session is None:
                continue
            self.send_update(peer, session, now, state)
            if not arm_copies:
                continue
            sent = session.sent
            if sent.lost or sent.recent_loss:  # never anything lost: nothing to decide
                if peer.catchup is None:
                    due = peer.copies.arm(now, sent, self._interval)
                    if due is not None and (copy_at is None or due < copy_at):
                        copy_at = due
                else:
                    peer.copies.cancel()
        if arm_copies:
            self.copy_at = copy_at

    def send_copies(self, now: float, state: RoomState) -> None:
        """Send the spaced copies that are due: fresh updates with whatever is still unacked."""
        copy_at: float | None = None
        last = len(self._frames)
        for peer in self._peers:
            copies = peer.copies
            if copies.due is None:
                continue
            session = peer.session
            if (
                session is None
                or peer.status is not PeerStatus.CONNECTED
                or peer.catchup is not None
                or peer.frame_ack >= last  # everything arrived: nothing to cover
            ):
                copies.cancel()
                continue
            if copies.take(now):
                self.send_update(peer, session, now, state)
                self._sink.stats["update_copies"] += 1
            if copies.due is not None and (copy_at is None or copies.due < copy_at):
                copy_at = copies.due
        self.copy_at = copy_at

    def send_update(self, peer: Peer, session: Session, now: float, state: RoomState) -> None:
        frames = self._frames
        last = len(frames)
        first = peer.frame_ack + 1
        limit = self._limit
        if peer.catchup is not None or last - peer.frame_ack > limit or peer.want_snapshot:
            self.update_catchup(peer, now)
        chunk: list[bytes] = []
        if peer.catchup is None:
            budget = FRAME_BUDGET
            for encoded in frames[first - 1 : min(last, peer.frame_ack + limit)]:
                if len(encoded) > budget:
                    break
                budget -= len(encoded)
                chunk.append(encoded)
        received = session.received
        body = encode_server_update_parts(
            received.ack,
            received.bits,
            received.ack_delay_us(now),
            peer.input_ack,
            first if chunk else 0,
            chunk,
            last,
            state,
            self._tail_for(peer),
        )
        self._emit(session, PacketType.SERVER_UPDATE, body, now)

    def _tail_for(self, peer: Peer) -> bytes:
        """The update's last four fields; they rarely change, so encode on change only."""
        key = (peer.hash_ack, peer.result_acked, self._referee.desync_notice, peer.snapshot_ack)
        if peer.tail_key != key:
            peer.tail_key = key
            peer.tail = encode_update_tail(*key)
        return peer.tail

    # -- catch-up ------------------------------------------------------------------------

    def _snapshot_for(self, peer: Peer) -> AgreedSnapshot | None:
        snap = self._referee.agreed_snapshot
        if peer.want_snapshot and snap is not None and snap.frame > peer.frame_ack:
            return snap
        return None

    def update_catchup(self, peer: Peer, now: float) -> CatchupStream | None:
        """Start or stop streaming to a peer from how far behind it is; returns the stream.

        It starts past twice the redundancy window and stops within it: a peer that is a
        little late (a slow ack) keeps getting live updates, which resend what it lacks.
        """
        last = len(self._frames)
        behind = last - peer.frame_ack
        limit = self._limit
        stream = peer.catchup
        if stream is None:
            snap = self._snapshot_for(peer)
            if behind <= 2 * limit and snap is None:
                return None
            session = peer.session
            if session is None or now - session.last_recv > _ALIVE:
                return None  # silent: streaming would only fill a dead link
            behind_bytes = sum(map(len, self._frames[peer.frame_ack :]))
            budget = CATCHUP_BUDGET_FACTOR * (behind_bytes + (len(snap.data) if snap else 0))
            peer.catchup = CatchupStream(
                self._config.catchup_rate,
                now,
                snap,
                ack_interval=self._interval,
                budget=budget + CATCHUP_BUDGET_SLACK,
            )
            peer.catchup_started = (now, peer.frame_ack)
            self._sink.stats["catch_ups_started"] += 1
            self._sink.events.append(
                CatchUpStarted(
                    self.room_id,
                    peer.entry.slot,
                    peer.frame_ack,
                    last,
                    snap.frame if snap else 0,
                )
            )
            if self.pump_at is None:
                self.pump_at = now
                self.pump_armed = True
            return peer.catchup
        if stream.snapshot is not None and peer.frame_ack >= stream.snapshot.frame:
            stream.snapshot = None
        if behind <= limit and stream.snapshot is None:
            started_at, started_ack = peer.catchup_started
            peer.catchup = None
            self._sink.stats["catch_ups_finished"] += 1
            self._sink.events.append(
                CatchUpFinished(
                    self.room_id, peer.entry.slot, peer.frame_ack - started_ack, now - started_at
                )
            )
        return peer.catchup

    def feed(self, peer: Peer, session: Session, stream: CatchupStream, now: float) -> None:
        """Send a catching-up peer what its stream's pace allows right now."""
        rtt = session.sent.rtt
        heard = session.last_recv
        if stream.snapshot is not None:
            for piece in stream.pump_snapshot(now, rtt, heard):
                self._emit(session, PacketType.SNAPSHOT, encode_snapshot_chunk(piece), now)
            return
        frames = self._frames
        bodies = stream.pump_frames(
            now, rtt, heard, peer.frame_ack, len(frames), self._chunks, frames
        )
        for body in bodies:
            self._emit(session, PacketType.CATCHUP, body, now)
        self._sink.stats["catchup_datagrams"] += len(bodies)

    # -- output --------------------------------------------------------------------------

    def _emit(self, session: Session, ptype: PacketType, body: bytes, now: float) -> None:
        self._sink.outbox.append((session.seal(ptype, body, now), session.address))
