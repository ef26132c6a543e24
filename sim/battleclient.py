"""BattleClient: the Python client SDK for rooms, `ClientConnection` driven over UDP with trio.

Bots and tests play with it, and it is the model for clients in other languages. Connect with
the ticket and keys of the lobby's MATCH_READY::

    client = BattleClient(ready.ticket, ClientKeys(ready.c2s_key, ready.s2c_key),
                          (ready.room_host, ready.room_port), auto_reconnect=True)
    async with trio.open_nursery() as nursery:
        await nursery.start(client.run)              # socket open, handshake under way
        nursery.start_soon(game_loop, client)        # client.send_input(data) once per tick
        async for frame in client.frames_iter():     # every frame once, in order, no gaps
            state.apply(frame)
            if frame.number % 10 == 0:
                client.report_hash(frame.number, state.hash())
        # the loop ends once the connection is closed for good (match over, or left)

`report_result(...)` votes on the outcome when the game decides it, `leave()` quits early and
`upload_snapshot(...)` offers the room a state that late joiners can load instead of replaying.
A connection that times out keeps its slot: `reconnect()` resumes it from a new socket with the
room's reconnect ticket (`auto_reconnect=True` does it unasked), and the missed frames then come
through the same iterator. `stats` says how the link is doing; `impairment=LinkProfile(...)` with
a `seed` puts a reproducible bad network between the connection and the socket.
"""

from __future__ import annotations

import contextlib
import math
import socket
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

import trio

from battle.client import (
    Accepted,
    ClientConnection,
    ClientEvent,
    ClientState,
    DesyncAnnounced,
    Disconnected,
    FrameReceived,
    ReceiveStats,
    SnapshotReceived,
)
from battle.frames import Frame
from battle.reliability import LinkStats
from battle.ticket import ClientKeys
from sim.impair import LinkProfile
from sim.udplink import ImpairedPath, ImpairmentCounts

Address = tuple[str, int]
_RECV_BUFFER = 4 * 1024 * 1024
_NO_LINK = LinkStats(0.0, 0.0, 0.0, 0, 0, 0)
_NO_ARRIVALS = ReceiveStats(0, 0, 0, 0.0)


@dataclass(frozen=True, slots=True)
class ClientStats:
    """The link as this client knows it. RTT, jitter and `send_loss` come from the room's acks
    of the client's packets (the client→room direction); `receive_loss` comes from the gaps in
    the sequence numbers of the room's packets (room→client). The estimates restart with each
    connection, the counters cover the client's whole life."""

    rtt: float
    """Smoothed round-trip time, seconds (0 until the first ack of this connection)."""
    jitter: float
    """Smoothed variation of the RTT samples, seconds."""
    send_loss: float
    """Smoothed share of recent client packets the room never acknowledged, 0..1."""
    packets_sent: int
    """Sealed packets the connection sent, silent or not (handshake packets are not tracked)."""
    packets_acked: int
    packets_lost: int
    """Sealed packets that fell out of the room's ack window unacknowledged."""
    datagrams_sent: int
    """Datagrams the socket sent, and their bytes (after impairment, duplicates included)."""
    bytes_sent: int
    datagrams_received: int
    """Datagrams the socket received while not silent, and their bytes (before impairment)."""
    bytes_received: int
    seconds: float
    """Since `run()` started (until it ended, once closed): the span the counters cover."""
    reconnects: int
    catchup_seconds: tuple[float, ...]
    """Seconds from starting each connection that was accepted behind the room to holding
    every frame the room had closed (a reconnect's or a late join's recovery time)."""
    frames_behind: int
    """Frames the room has closed that this client does not hold yet."""
    impaired_out: ImpairmentCounts | None
    """What the configured impairment did to outgoing datagrams (None without impairment)."""
    impaired_in: ImpairmentCounts | None
    receive_loss: float = 0.0
    """Smoothed share of the room's recent packets that never arrived, 0..1."""
    packets_received: int = 0
    """Sealed packets received from the room (repeats not counted)."""
    packets_missing: int = 0
    """Sealed packets the room sent that have not arrived although its sequence numbers have
    moved 64 past them (reordering within that is not loss; the last 64 packets of each
    connection are never judged)."""


class _FrameCursor(AsyncIterator[Frame]):
    """Walks `client.frames` from the first frame, parking until more arrive or it closes."""

    def __init__(self, client: BattleClient) -> None:
        self._client = client
        self._index = 0

    async def __anext__(self) -> Frame:
        client = self._client
        await trio.lowlevel.checkpoint_if_cancelled()
        while self._index >= len(client.frames):
            if client.closed:
                raise StopAsyncIteration
            await client._frame_lot.park()
        frame = client.frames[self._index]
        self._index += 1
        return frame


class BattleClient:
    """One player's connection to a room, with its frames and what happened to it.

    It owns one socket (a reconnect opens a new one, so the room sees a new address) and feeds
    every datagram and every deadline to the connection.
    """

    def __init__(
        self,
        ticket: bytes,
        keys: ClientKeys,
        server: Address,
        *,
        bind_host: str = "127.0.0.1",
        prefer_snapshot: bool = False,
        auto_reconnect: bool = False,
        impairment: LinkProfile | None = None,
        seed: int = 0,
    ) -> None:
        """`impairment` applies to both directions, each with its own random stream from
        `seed`; `prefer_snapshot` asks a late or returning client to load the room's agreed
        snapshot rather than receive every old frame."""
        self.server = server
        self.bind_host = bind_host
        self.frames: list[Frame] = []
        """Every frame held, in order (after a loaded snapshot, from the frame after it)."""
        self.snapshots: list[SnapshotReceived] = []
        self.desyncs: list[DesyncAnnounced] = []
        self.disconnects: list[str] = []
        self.accepted = trio.Event()
        self.on_frame: Callable[[Frame], None] | None = None
        """Called with each frame as it arrives, before iterators see it."""
        self.auto_reconnect = auto_reconnect
        """Reconnect by itself after a timeout (otherwise wait for `reconnect()`)."""
        self._ticket = ticket
        self._keys = keys
        self._prefer_snapshot = prefer_snapshot
        self._conn: ClientConnection | None = None
        self._sock: socket.socket | None = None
        self._silent = False
        self._closed = trio.Event()
        self._resumed = trio.Event()
        self._left = False
        self._frame_lot = trio.lowlevel.ParkingLot()
        self._path = ImpairedPath(impairment, impairment, seed) if impairment is not None else None
        self._wake: trio.CancelScope | None = None
        """The serve loop's wait, pulled earlier when a delayed datagram is due sooner."""
        # Counters of the client's whole life (connections come and go).
        self._datagrams_out = 0
        self._bytes_out = 0
        self._datagrams_in = 0
        self._bytes_in = 0
        self._reconnects = 0
        self._run_started: float | None = None
        self._run_ended: float | None = None
        self._earlier_packets = (0, 0, 0)
        """Sealed packets sent, acked and lost by connections before the current one."""
        self._earlier_received = (0, 0)
        """Sealed packets received and missing in connections before the current one."""
        self._conn_started = 0.0
        self._start_ack = 0
        self._catchup_from: float | None = None
        self._catchups: list[float] = []

    # -- state ---------------------------------------------------------------------------

    @property
    def conn(self) -> ClientConnection:
        assert self._conn is not None, "not started"
        return self._conn

    @property
    def connected(self) -> bool:
        """Accepted and not (yet) disconnected: inputs sent now go out at once."""
        return self._conn is not None and self._conn.state is ClientState.CONNECTED

    @property
    def closed(self) -> bool:
        """The connection has ended for good (`run()` returned)."""
        return self._closed.is_set()

    @property
    def local_address(self) -> Address:
        assert self._sock is not None
        host, port = self._sock.getsockname()[:2]
        return host, port

    @property
    def snapshot_ack(self) -> int:
        """Frame of the newest snapshot upload the room holds complete (0 if none); a
        reconnect keeps it."""
        return self._conn.snapshot_ack if self._conn is not None else 0

    @property
    def stats(self) -> ClientStats:
        sent, acked, lost = self._earlier_packets
        conn = self._conn
        link = conn.stats if conn is not None else _NO_LINK
        arrivals = conn.receive_stats if conn is not None else _NO_ARRIVALS
        received, missing = self._earlier_received
        path = self._path
        return ClientStats(
            rtt=link.rtt,
            jitter=link.jitter,
            send_loss=link.loss,
            packets_sent=sent + link.sent,
            packets_acked=acked + link.acked,
            packets_lost=lost + link.lost,
            datagrams_sent=self._datagrams_out,
            bytes_sent=self._bytes_out,
            datagrams_received=self._datagrams_in,
            bytes_received=self._bytes_in,
            seconds=self._seconds(),
            reconnects=self._reconnects,
            catchup_seconds=tuple(self._catchups),
            frames_behind=conn.frames_behind if conn is not None else 0,
            impaired_out=path.outgoing if path is not None else None,
            impaired_in=path.incoming if path is not None else None,
            receive_loss=arrivals.loss,
            packets_received=received + arrivals.received,
            packets_missing=missing + arrivals.missing,
        )

    def _seconds(self) -> float:
        if self._run_started is None:
            return 0.0
        end = self._run_ended if self._run_ended is not None else trio.current_time()
        return end - self._run_started

    def frames_iter(self) -> AsyncIterator[Frame]:
        """Every frame from the first, exactly once and in order, frames caught up after a
        reconnect included; waits for more and ends once the connection is closed for good.
        Each call starts its own walk from the first frame. A loaded snapshot (`snapshots`)
        stands in for the frames up to it."""
        return _FrameCursor(self)

    iter_frames = frames_iter

    async def wait_closed(self) -> None:
        await self._closed.wait()

    # -- running -------------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Connect, then serve until the connection closes (a `reconnect()` continues it)."""
        self._run_started = trio.current_time()
        self._conn = self._started(
            ClientConnection(
                self._ticket,
                self._keys,
                self.server,
                trio.current_time(),
                prefer_snapshot=self._prefer_snapshot,
            )
        )
        self._sock = self._new_socket()
        task_status.started()
        try:
            while True:
                try:
                    await self._serve()
                except trio.ClosedResourceError:
                    continue  # reconnect() swapped the socket under us
                if self.disconnects[-1:] != ["timed_out"] or self._left:
                    break
                if self.auto_reconnect:
                    self.reconnect()
                    continue
                # Lost, not ended: keep the slot's ticket and wait to be told to come back.
                self._resumed = trio.Event()
                await self._resumed.wait()
        finally:
            self._sock.close()
            self._run_ended = trio.current_time()
            self._closed.set()
            self._frame_lot.unpark_all()

    def _started(self, conn: ClientConnection) -> ClientConnection:
        """Note where a connection starts, to time its catch-up once accepted."""
        self._conn_started = trio.current_time()
        self._start_ack = conn.frame_ack
        self._catchup_from = None
        return conn

    def _new_socket(self) -> socket.socket:
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        with contextlib.suppress(OSError):  # room for a catch-up burst; the OS may cap it
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, _RECV_BUFFER)
        sock.setblocking(False)
        sock.bind((self.bind_host, 0))
        return sock

    async def _serve(self) -> None:
        if self._path is not None:
            await self._serve_impaired(self._path)
            return
        sock = self._sock
        assert sock is not None
        while True:
            conn = self.conn
            self._flush()
            self._check_socket(sock)
            if conn.state is ClientState.DISCONNECTED:
                return
            deadline = conn.next_deadline()
            with trio.move_on_at(deadline if deadline is not None else math.inf):
                await self._receive(sock, conn.receive_datagram)
            self._check_socket(sock)
            conn.tick(trio.current_time())

    async def _serve_impaired(self, path: ImpairedPath) -> None:
        """The serve loop with every datagram held in `path` until its delivery time; it also
        wakes for those deliveries, so one task schedules them all."""
        sock = self._sock
        assert sock is not None
        while True:
            conn = self.conn
            self._flush()
            self._check_socket(sock)
            if conn.state is ClientState.DISCONNECTED and not path.pending_out:
                return  # (goodbyes still delayed on the way out go first)
            deadline = conn.next_deadline()
            wake = deadline if deadline is not None else math.inf
            due = path.next_deadline()
            if due is not None and due < wake:
                wake = due
            with trio.move_on_at(wake) as scope:
                self._wake = scope
                await self._receive(sock, path.receive)
            self._wake = None
            self._check_socket(sock)
            now = trio.current_time()
            for transit in path.due(now):
                if self._silent:
                    continue  # the cable is out: what was on its way in or out is gone
                if transit.outgoing:
                    self._send(sock, transit.data, transit.addr)
                else:
                    conn.receive_datagram(transit.data, transit.addr, now)
            conn.tick(now)

    async def _receive(
        self, sock: socket.socket, deliver: Callable[[bytes, Address, float], None]
    ) -> None:
        """Wait until `sock` is readable, then hand every waiting datagram to `deliver`."""
        await trio.lowlevel.wait_readable(sock)
        self._check_socket(sock)
        now = trio.current_time()
        while True:
            try:
                data, addr = sock.recvfrom(2048)
            except (BlockingIOError, ConnectionRefusedError):
                return
            if not self._silent:
                self._datagrams_in += 1
                self._bytes_in += len(data)
                deliver(data, addr[:2], now)

    def _check_socket(self, sock: socket.socket) -> None:
        """`reconnect()` may swap and close the socket while no task waits on it, where
        `notify_closing` has no one to tell: from `on_frame`, which runs in this task, or after
        this task was woken (by data or by its deadline) but before it ran."""
        if sock is not self._sock:
            raise trio.ClosedResourceError("the socket was replaced by a reconnect")

    def _send(self, sock: socket.socket, data: bytes, addr: Address) -> None:
        with contextlib.suppress(BlockingIOError, ConnectionRefusedError):
            self._bytes_out += sock.sendto(data, addr)
            self._datagrams_out += 1

    def _flush(self) -> None:
        conn = self.conn
        sock = self._sock
        assert sock is not None
        path = self._path
        if path is None:
            for data, addr in conn.datagrams_to_send():
                if self._silent:
                    continue
                with contextlib.suppress(BlockingIOError, ConnectionRefusedError):
                    self._bytes_out += sock.sendto(data, addr)
                    self._datagrams_out += 1
        else:
            now = trio.current_time()
            for data, addr in conn.datagrams_to_send():
                if not self._silent:
                    path.send(data, addr, now)
            due = path.next_deadline()
            scope = self._wake
            if scope is not None and due is not None and due < scope.deadline:
                scope.deadline = due
        held = len(self.frames)
        while (event := conn.next_event()) is not None:
            self._on_event(event)
        if self._catchup_from is not None and conn.frames_behind == 0:
            self._catchups.append(trio.current_time() - self._catchup_from)
            self._catchup_from = None
        if len(self.frames) != held:
            self._frame_lot.unpark_all()

    def _on_event(self, event: ClientEvent) -> None:
        if isinstance(event, FrameReceived):
            self.frames.append(event.frame)
            if self.on_frame is not None:
                self.on_frame(event.frame)
        elif isinstance(event, Accepted):
            self.accepted.set()
            if event.accept.frame > self._start_ack:
                self._catchup_from = self._conn_started
        elif isinstance(event, SnapshotReceived):
            self.snapshots.append(event)
        elif isinstance(event, DesyncAnnounced):
            self.desyncs.append(event)
        elif isinstance(event, Disconnected):
            self._catchup_from = None
            self.disconnects.append(event.reason)

    # -- actions -------------------------------------------------------------------------

    def send_input(self, data: bytes) -> int:
        """Queue this tick's input (carried until the room acknowledges it); returns its
        sequence number. Raises RuntimeError while disconnected."""
        seq = self.conn.send_input(data, trio.current_time())
        self._flush()
        return seq

    def report_hash(self, frame: int, value: int) -> None:
        """This client's u64 state hash after applying `frame`, for desync detection."""
        self.conn.report_hash(frame, value)

    def report_result(self, result: dict[str, object]) -> None:
        """The match result as this client computed it; the room takes the majority."""
        self.conn.report_result(result)

    def upload_snapshot(self, frame: int, state_hash: int, data: bytes) -> None:
        """Offer the room this client's opaque state after `frame` (up to 1 MiB); it is sent
        alongside the updates until `snapshot_ack` reaches `frame`, across reconnects, and
        the room keeps it when another player uploads the same bytes under the majority
        hash."""
        self.conn.upload_snapshot(frame, state_hash, data, trio.current_time())

    def go_silent(self, silent: bool) -> None:
        """Drop everything in both directions (a pulled cable), keeping the connection."""
        self._silent = silent

    def reconnect(self) -> None:
        """Resume from a new socket (a new source port) with the room's reconnect ticket."""
        if self.closed:
            raise RuntimeError("closed for good: nothing serves a new connection")
        old = self._sock
        assert old is not None
        previous = self.conn
        link = previous.stats
        sent, acked, lost = self._earlier_packets
        self._earlier_packets = (sent + link.sent, acked + link.acked, lost + link.lost)
        arrivals = previous.receive_stats
        received, missing = self._earlier_received
        self._earlier_received = (received + arrivals.received, missing + arrivals.missing)
        self._conn = self._started(previous.reconnect(trio.current_time()))
        self._reconnects += 1
        self._silent = False
        if self._path is not None:
            self._path.clear()  # what was in flight belonged to the old socket
        self._sock = self._new_socket()
        trio.lowlevel.notify_closing(old)
        old.close()
        self._resumed.set()

    def leave(self) -> None:
        """Tell the room this player is leaving, and close for good."""
        self._left = True
        self.conn.disconnect(trio.current_time())
        self._flush()
        self._resumed.set()
