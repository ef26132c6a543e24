"""BattleClient: the sans-IO ClientConnection driven over a real UDP socket with trio.

What scripted clients, bots and tests use to play against a room host. It owns one socket
(a reconnect opens a new one, so the room sees a new address), feeds every datagram and every
deadline to the connection, and collects frames strictly in order.
"""

from __future__ import annotations

import contextlib
import math
import socket
from collections.abc import Callable

import trio

from battle.client import (
    Accepted,
    ClientConnection,
    ClientEvent,
    ClientState,
    DesyncAnnounced,
    Disconnected,
    FrameReceived,
    SnapshotReceived,
)
from battle.frames import Frame
from battle.ticket import ClientKeys

Address = tuple[str, int]
_RECV_BUFFER = 4 * 1024 * 1024


class BattleClient:
    """One player's connection to a room, with its frames and what happened to it."""

    def __init__(
        self,
        ticket: bytes,
        keys: ClientKeys,
        server: Address,
        *,
        bind_host: str = "127.0.0.1",
        prefer_snapshot: bool = False,
        auto_reconnect: bool = False,
    ) -> None:
        self.server = server
        self.bind_host = bind_host
        self.frames: list[Frame] = []
        self.snapshots: list[SnapshotReceived] = []
        self.desyncs: list[DesyncAnnounced] = []
        self.disconnects: list[str] = []
        self.accepted = trio.Event()
        self.on_frame: Callable[[Frame], None] | None = None
        self._ticket = ticket
        self._keys = keys
        self._prefer_snapshot = prefer_snapshot
        self._conn: ClientConnection | None = None
        self._sock: socket.socket | None = None
        self._silent = False
        self._closed = trio.Event()
        self._resumed = trio.Event()
        self._left = False
        self.auto_reconnect = auto_reconnect
        """Reconnect by itself after a timeout (otherwise wait for `reconnect()`)."""

    @property
    def conn(self) -> ClientConnection:
        assert self._conn is not None, "not started"
        return self._conn

    @property
    def local_address(self) -> Address:
        assert self._sock is not None
        host, port = self._sock.getsockname()[:2]
        return host, port

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Connect, then serve until the connection closes (a `reconnect()` continues it)."""
        self._conn = ClientConnection(
            self._ticket,
            self._keys,
            self.server,
            trio.current_time(),
            prefer_snapshot=self._prefer_snapshot,
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
            self._closed.set()

    def _new_socket(self) -> socket.socket:
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        with contextlib.suppress(OSError):  # room for a catch-up burst; the OS may cap it
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, _RECV_BUFFER)
        sock.setblocking(False)
        sock.bind((self.bind_host, 0))
        return sock

    async def _serve(self) -> None:
        sock = self._sock
        assert sock is not None
        while True:
            conn = self.conn
            self._flush()
            if conn.state is ClientState.DISCONNECTED:
                return
            deadline = conn.next_deadline()
            with trio.move_on_at(deadline if deadline is not None else math.inf):
                await trio.lowlevel.wait_readable(sock)
                now = trio.current_time()
                while True:
                    try:
                        data, addr = sock.recvfrom(2048)
                    except (BlockingIOError, ConnectionRefusedError):
                        break
                    if not self._silent:
                        conn.receive_datagram(data, addr[:2], now)
            conn.tick(trio.current_time())

    def _flush(self) -> None:
        conn = self.conn
        sock = self._sock
        assert sock is not None
        for data, addr in conn.datagrams_to_send():
            if self._silent:
                continue
            with contextlib.suppress(BlockingIOError, ConnectionRefusedError):
                sock.sendto(data, addr)
        while (event := conn.next_event()) is not None:
            self._on_event(event)

    def _on_event(self, event: ClientEvent) -> None:
        if isinstance(event, FrameReceived):
            self.frames.append(event.frame)
            if self.on_frame is not None:
                self.on_frame(event.frame)
        elif isinstance(event, Accepted):
            self.accepted.set()
        elif isinstance(event, SnapshotReceived):
            self.snapshots.append(event)
        elif isinstance(event, DesyncAnnounced):
            self.desyncs.append(event)
        elif isinstance(event, Disconnected):
            self.disconnects.append(event.reason)

    # -- actions -------------------------------------------------------------------------

    def send_input(self, data: bytes) -> int:
        seq = self.conn.send_input(data, trio.current_time())
        self._flush()
        return seq

    def report_hash(self, frame: int, value: int) -> None:
        self.conn.report_hash(frame, value)

    def report_result(self, result: dict[str, object]) -> None:
        self.conn.report_result(result)

    def go_silent(self, silent: bool) -> None:
        """Drop everything in both directions (a pulled cable), keeping the connection."""
        self._silent = silent

    def reconnect(self) -> None:
        """Resume from a new socket (a new source port) with the room's reconnect ticket."""
        old = self._sock
        assert old is not None
        self._conn = self.conn.reconnect(trio.current_time())
        self._silent = False
        self._sock = self._new_socket()
        trio.lowlevel.notify_closing(old)
        old.close()
        self._resumed.set()

    def leave(self) -> None:
        self._left = True
        self.conn.disconnect(trio.current_time())
        self._flush()
        self._resumed.set()

    async def wait_closed(self) -> None:
        await self._closed.wait()
