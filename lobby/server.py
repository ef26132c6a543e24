"""The lobby node's trio shell: TCP listeners, one task pair per connection, one ticker.

Everything that decides lives in the sans-IO core (`core.py`); this file moves bytes, keeps
time, and carries out the core's effects (`effects.py`): the KDF in worker threads; for an
embedded store every effect at once, in order; for a network store reads each in a task of
its own and writes one at a time in order, retried with backoff while it is unreachable.
Per connection a reader task decodes frames into core calls and a writer task drains a
bounded queue of encoded frames: a client that does not read its messages fills its queue
and is disconnected, so one slow client never holds the event loop or the other connections.
"""

from __future__ import annotations

import math
import os
import ssl
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import structlog
import trio

from battle import control
from battle.control import ControlDecoder, ControlProtocolError
from lobby import protocol as proto
from lobby.accounts import hash_password, verify_password
from lobby.core import LobbyCore
from lobby.effects import EffectRunner, Unavailable, Work, is_write, run_now
from lobby.outputs import (
    CheckPassword,
    Close,
    CloseControl,
    Deliver,
    Forward,
    HashPassword,
    Note,
    Output,
    Send,
    SendControl,
)
from lobby.settings import ListenSettings, LobbySettings
from lobby.store import AsyncStore, MatchRecord

_READ_SIZE = 65536
_SEND_QUEUE = 1024
"""Frames waiting for one connection; a client this far behind is dropped."""
_SEND_TIMEOUT = 30.0
_KDF_THREADS = 2
_GOODBYE_TIMEOUT = 2.0
_CONTROL_IDLE_LEASES = 3
"""A control connection silent for this many leases is closed (the host is long dead)."""
_WRITE_RETRY = (0.05, 2.0)
"""First and longest wait between tries of a store write while the store is unreachable."""
_WRITE_FLUSH_TIMEOUT = 5.0
"""How long a stopping lobby waits for its queued store writes."""

log = structlog.get_logger("framesync.lobby")


@dataclass(eq=False)
class _Conn:
    conn_id: int
    stream: trio.abc.Stream
    outbox: trio.MemorySendChannel[bytes | None]
    inbox: trio.MemoryReceiveChannel[bytes | None]
    fd: int | None = None
    """The socket, for plain TCP: frames are written straight to it while nothing waits."""
    scope: trio.CancelScope = field(default_factory=trio.CancelScope)
    closing: str | None = None
    waiting: int = 0
    """Frames handed to the writer task and not yet written."""

    def queue(self, data: bytes) -> bool:
        """False when the client is too far behind (its queue is full).

        Most frames go out at once with one non-blocking write, like the room host's sends;
        only when the kernel buffer is full (or on TLS) does the writer task take over, and
        then everything after goes through it so the order holds.
        """
        if self.closing is not None:
            return True
        if self.fd is not None and self.waiting == 0:
            try:
                written = os.write(self.fd, data)
            except BlockingIOError:
                written = 0
            except OSError:  # the peer is gone: the reader sees it and ends the connection
                return True
            if written == len(data):
                return True
            data = data[written:]
        try:
            self.outbox.send_nowait(data)
        except trio.WouldBlock:
            return False
        self.waiting += 1
        return True

    def close_after_flush(self, reason: str) -> None:
        if self.closing is None:
            self.closing = reason
            try:
                self.outbox.send_nowait(None)
            except trio.WouldBlock:
                self.scope.cancel()


def _check_password(password: str, encoded: str) -> bool:
    try:
        return verify_password(password, encoded)
    except ValueError:  # a stored hash this code cannot read: refuse, never crash
        return False


class LobbyServer:
    """One lobby node. `run` serves until cancelled or `stop()`."""

    def __init__(
        self,
        settings: LobbySettings,
        listen: ListenSettings,
        store: AsyncStore,
        *,
        session_secret: bytes,
        matches: Sequence[MatchRecord] = (),
        clock: Callable[[], float] = time.time,
        entropy: Callable[[int], bytes] = os.urandom,
        hasher: Callable[[str], str] = hash_password,
        transient: tuple[type[BaseException], ...] = (OSError,),
        node_id: str | None = None,
        immediate_store: bool = False,
    ) -> None:
        """`matches`: the matches in progress the store kept; `transient`: the store's
        errors that mean "unreachable, try again" (see `effects.py`); `node_id`: this node's
        id on a cluster (`cluster.py` then decides when it runs the matchmaker);
        `immediate_store`: the store answers without suspending (`LocalStore`), so its effects
        are carried out at once, in order, without a task each."""
        self.immediate_store = immediate_store
        self.settings = settings
        self.listen = listen
        self._clock = clock
        self._hasher = hasher
        self._dummy_hash: str | None = None
        self.core = LobbyCore(
            settings,
            session_secret=session_secret,
            now=clock(),
            matches=matches,
            entropy=entropy,
            node_id=node_id,
        )
        self.effects = EffectRunner(
            self.core,
            store,
            clock=clock,
            hash_password=self._hash_password,
            check_password=self._check_password,
            transient=transient,
        )
        self.relay: Callable[[Forward | Deliver], None] | None = None
        """Carries `Forward` and `Deliver` to other lobby nodes (set on a cluster)."""
        self._writes_in, self._writes = trio.open_memory_channel[Work](math.inf)
        self._writes_waiting = 0
        self._writes_done = trio.Event()
        self._clients: dict[int, _Conn] = {}
        self._hosts: dict[int, _Conn] = {}
        self._next_id = 1
        self._kick = trio.Event()
        self._wake_at = -math.inf
        """The deadline the ticker sleeps toward (-inf while it runs)."""
        self._encoded: dict[int, bytes] = {}
        """Frames encoded while carrying out one batch of outputs, by message identity."""
        self._kdf_limiter = trio.CapacityLimiter(_KDF_THREADS)
        self._nursery: trio.Nursery | None = None
        self._ssl = _ssl_context(listen)
        self.client_port = 0
        self.control_port = 0
        self._stopped = trio.Event()
        self.finished = trio.Event()
        """Set once `run` has returned: every connection is closed."""
        self._client_gone = trio.Event()

    # --- lifecycle -------------------------------------------------------------------------------

    async def run(
        self, *, task_status: trio.TaskStatus[tuple[int, int]] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Bind both ports, report (client_port, control_port), serve until stopped."""
        listen = self.listen
        clients = await trio.open_tcp_listeners(listen.client_port, host=listen.host)
        controls = await trio.open_tcp_listeners(
            listen.control_port, host=listen.control_host or listen.host
        )
        self.client_port = clients[0].socket.getsockname()[1]
        self.control_port = controls[0].socket.getsockname()[1]
        try:
            await self._serve(clients, controls, task_status)
        finally:
            self.finished.set()

    async def _serve(
        self,
        clients: list[trio.SocketListener],
        controls: list[trio.SocketListener],
        task_status: trio.TaskStatus[tuple[int, int]],
    ) -> None:
        listen = self.listen
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            nursery.start_soon(self._ticker)
            nursery.start_soon(self._store_writer)
            nursery.start_soon(trio.serve_listeners, self._accept_client, clients)
            nursery.start_soon(trio.serve_listeners, self.serve_control, controls)
            log.info(
                "lobby_listening",
                client=f"{listen.host}:{self.client_port}",
                control=f"{listen.control_host or listen.host}:{self.control_port}",
                tls=self._ssl is not None,
            )
            task_status.started((self.client_port, self.control_port))
            await self._stopped.wait()
            await self._say_goodbye()
            await self._flush_writes()
            nursery.cancel_scope.cancel()

    def stop(self) -> None:
        self._stopped.set()

    async def _say_goodbye(self) -> None:
        """Tell every client why the connection ends, and give the writes a moment."""
        for conn in list(self._clients.values()):
            conn.queue(proto.encode_message(proto.Kicked("the lobby is shutting down")))
            conn.close_after_flush("shutdown")
        with trio.move_on_after(_GOODBYE_TIMEOUT):
            while self._clients:
                self._client_gone = trio.Event()
                await self._client_gone.wait()

    def stats(self) -> dict[str, Any]:
        """Counters and gauges, for logs, metrics and benchmarks."""
        desk = self.core.desk
        return {
            "clients": len(self._clients),
            "players_online": self.core.online_players,
            "hosts_connected": len(self._hosts),
            "hosts_live": len(desk.rooms.registry.live_hosts(self._clock())) if desk else 0,
            "queued_tickets": self.core.queued_tickets,
            "matches_in_progress": desk.rooms.matches_in_progress if desk else 0,
            "matchmaker": desk is not None,
            "store_writes_waiting": self._writes_waiting,
            **dict(self.core.counters),
        }

    # --- the ticker -----------------------------------------------------------------------------

    async def _ticker(self) -> None:
        """Poll the core at its next deadline. Requests wake us only to look at the deadline
        again (it may have moved closer); polling itself waits until one is due."""
        while True:
            deadline = self.core.next_deadline()
            now = self._clock()
            if deadline is not None and now >= deadline:
                self.core.poll(now)
                self._carry_out()
                self._kick = trio.Event()
                await trio.lowlevel.checkpoint()
                continue
            self._wake_at = math.inf if deadline is None else deadline
            self._kick = trio.Event()
            with trio.move_on_after(self._wake_at - now):
                await self._kick.wait()
            self._wake_at = -math.inf  # awake: any change is seen on the next turn

    # --- client connections ----------------------------------------------------------------------

    async def _accept_client(self, stream: trio.SocketStream) -> None:
        if self._ssl is not None:
            await self.serve_client(trio.SSLStream(stream, self._ssl, server_side=True))
        else:
            await self.serve_client(stream)

    async def serve_client(self, stream: trio.abc.Stream) -> None:
        """Serve one client connection until it closes (any trio stream: tests use memory)."""
        conn = self._open(stream, self._clients)
        self.core.client_connected(conn.conn_id, self._clock())
        decoder = proto.LobbyDecoder(proto.Role.SERVER, self.settings.max_frame)
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._writer, conn, nursery.cancel_scope)
                with conn.scope:
                    await self._read_client(conn, decoder)
                nursery.cancel_scope.cancel()
        finally:
            self._clients.pop(conn.conn_id, None)
            self._client_gone.set()
            self.core.client_closed(conn.conn_id, self._clock())
            self._carry_out()
            with trio.CancelScope(shield=True):
                await trio.aclose_forcefully(stream)

    async def _read_client(self, conn: _Conn, decoder: proto.LobbyDecoder) -> None:
        idle = self.settings.idle_timeout
        with trio.CancelScope() as timer:  # one scope, its deadline pushed back per read
            while True:
                timer.deadline = trio.current_time() + idle
                data = await _receive(conn.stream)
                if not data:
                    return
                if not self._on_client_bytes(conn, decoder, data):
                    break
        if timer.cancelled_caught:
            self.core.out.count("clients_idle_closed")
            conn.queue(proto.encode_message(proto.Kicked(f"idle for {idle:g} s")))
            conn.close_after_flush("idle")
        await trio.sleep_forever()  # the writer flushes what is left, then cancels us

    def _on_client_bytes(self, conn: _Conn, decoder: proto.LobbyDecoder, data: bytes) -> bool:
        """Decode and handle what arrived; False once the connection is closing (nothing more
        is read from it)."""
        try:
            decoder.feed(data)
        except proto.LobbyProtocolError as exc:
            self.core.client_error(conn.conn_id, exc, self._clock())
            self._carry_out()
            return False
        while conn.closing is None:
            try:
                msg = decoder.next_message()
            except proto.LobbyProtocolError as exc:
                self.core.client_error(conn.conn_id, exc, self._clock())
                self._carry_out()
                if exc.fatal:
                    return False
                continue
            if msg is None:
                break
            self.core.client_message(conn.conn_id, msg, self._clock())
            self._carry_out()
        return conn.closing is None

    # --- control connections ---------------------------------------------------------------------

    async def serve_control(self, stream: trio.abc.Stream) -> None:
        """Serve one room host's control connection until it closes."""
        conn = self._open(stream, self._hosts)
        self.core.host_connected(conn.conn_id, self._clock())
        decoder = ControlDecoder()
        idle = _CONTROL_IDLE_LEASES * self.settings.host_lease
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._writer, conn, nursery.cancel_scope)
                with conn.scope:
                    while True:
                        with trio.move_on_after(idle) as timer:
                            data = await _receive(stream)
                        if timer.cancelled_caught or not data:
                            break
                        if not self._feed_control(conn, decoder, data):
                            await trio.sleep_forever()
                nursery.cancel_scope.cancel()
        finally:
            self._hosts.pop(conn.conn_id, None)
            self.core.host_closed(conn.conn_id, self._clock())
            self._carry_out()
            with trio.CancelScope(shield=True):
                await trio.aclose_forcefully(stream)

    def _feed_control(self, conn: _Conn, decoder: ControlDecoder, data: bytes) -> bool:
        """False once the framing broke (the core has asked to close)."""
        try:
            decoder.feed(data)
            while True:
                try:
                    msg = decoder.next_message()
                except ControlProtocolError as exc:
                    self.core.host_error(conn.conn_id, exc, self._clock())
                    if exc.fatal:
                        return False
                    continue
                if msg is None:
                    return True
                self.core.host_message(conn.conn_id, msg, self._clock())
                self._carry_out()
        except ControlProtocolError as exc:
            self.core.host_error(conn.conn_id, exc, self._clock())
            return False
        finally:
            self._carry_out()

    # --- shared plumbing -------------------------------------------------------------------------

    def _open(self, stream: trio.abc.Stream, table: dict[int, _Conn]) -> _Conn:
        send, receive = trio.open_memory_channel[bytes | None](_SEND_QUEUE)
        fd = stream.socket.fileno() if isinstance(stream, trio.SocketStream) else None
        conn = _Conn(self._next_id, stream, send, receive, fd)
        self._next_id += 1
        table[conn.conn_id] = conn
        return conn

    async def _writer(self, conn: _Conn, everything: trio.CancelScope) -> None:
        """Write queued frames in order, all that are waiting in one send; on a close request
        or a stuck peer, end the connection."""
        try:
            async for data in conn.inbox:
                batch = [data]
                while batch[-1] is not None:
                    try:
                        batch.append(conn.inbox.receive_nowait())
                    except trio.WouldBlock:
                        break
                closing = batch[-1] is None
                frames = [d for d in batch if d is not None]
                if frames:
                    with trio.move_on_after(_SEND_TIMEOUT) as timer:
                        await conn.stream.send_all(b"".join(frames))
                    if timer.cancelled_caught:
                        self.core.out.count("connections_send_timeout")
                        break
                    conn.waiting -= len(frames)
                if closing:
                    break
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        everything.cancel()

    def now(self) -> float:
        return self._clock()

    def carry_out(self) -> None:
        """Do what the core asked after a call made from outside the shell (the cluster)."""
        self._carry_out()

    def close_controls(self, reason: str) -> None:
        for host in list(self._hosts.values()):
            host.close_after_flush(reason)

    def _carry_out(self) -> None:
        """Do what the core asked, in order; wake the ticker if a deadline moved closer."""
        self._encoded.clear()
        while outputs := self.core.take_outputs():  # effects done at once add more
            for out in outputs:
                self._do(out)
        self._encoded.clear()
        deadline = self.core.next_deadline()
        if deadline is not None and deadline < self._wake_at:
            self._kick.set()

    def _do(self, out: Output) -> None:
        if isinstance(out, Send):
            client = self._clients.get(out.conn)
            if client is None:
                return
            data = self._encoded.get(id(out.message))
            if data is None:  # a push to many players is one message object: encode it once
                data = self._encoded[id(out.message)] = proto.encode_message(out.message)
            if not client.queue(data):
                self.core.out.count("clients_too_slow")
                log.warning("client_too_slow", conn=out.conn)
                client.closing = "too slow"
                client.scope.cancel()
        elif isinstance(out, Close):
            client = self._clients.get(out.conn)
            if client is not None:
                client.close_after_flush(out.reason)
        elif isinstance(out, SendControl):
            host = self._hosts.get(out.conn)
            if host is not None and not host.queue(control.encode_message(out.message)):
                log.warning("control_too_slow", conn=out.conn)
                host.closing = "too slow"
                host.scope.cancel()
        elif isinstance(out, CloseControl):
            host = self._hosts.get(out.conn)
            if host is not None:
                log.info("control_closed", conn=out.conn, reason=out.reason)
                host.close_after_flush(out.reason)
        elif isinstance(out, Note):
            getattr(log, out.level)(out.event, **out.fields)
        elif isinstance(out, Forward | Deliver):
            if self.relay is None:
                log.error("no_relay", output=type(out).__name__)
            else:
                self.relay(out)
        elif (
            self.immediate_store
            and not isinstance(out, HashPassword | CheckPassword)
            and (not is_write(out) or self._writes_waiting == 0)
        ):
            try:
                run_now(self.effects.run(out))
            except Unavailable:  # a write the store cannot take now: the writer retries it
                self._queue_write(out)
        elif is_write(out):
            self._queue_write(out)
        else:
            assert self._nursery is not None, "serving starts inside run()"
            self._nursery.start_soon(self._effect, out)

    def _queue_write(self, work: Work) -> None:
        self._writes_waiting += 1
        self._writes_in.send_nowait(work)

    async def _effect(self, work: Work) -> None:
        await self.effects.run(work)
        self._carry_out()

    async def _store_writer(self) -> None:
        """Store writes, one at a time and in order; one the store cannot take now is tried
        again (with backoff) until it can, holding back the ones after it."""
        async for work in self._writes:
            wait = _WRITE_RETRY[0]
            while True:
                try:
                    await self.effects.run(work)
                    break
                except Unavailable as exc:
                    self.core.out.count("store_write_retries")
                    log.warning("store_write_retry", effect=type(work).__name__, error=str(exc))
                    await trio.sleep(wait)
                    wait = min(wait * 2, _WRITE_RETRY[1])
            self._writes_waiting -= 1
            if self._writes_waiting == 0:
                self._writes_done.set()
            self._carry_out()

    async def _flush_writes(self) -> None:
        """A stopping lobby gives its queued writes a moment to reach the store."""
        with trio.move_on_after(_WRITE_FLUSH_TIMEOUT):
            while self._writes_waiting:
                self._writes_done = trio.Event()
                await self._writes_done.wait()
        if self._writes_waiting:
            log.error("store_writes_lost", count=self._writes_waiting)

    async def _hash_password(self, password: str) -> str:
        return await trio.to_thread.run_sync(self._hasher, password, limiter=self._kdf_limiter)

    async def _check_password(self, password: str, encoded: str | None) -> bool:
        # An unknown name is checked against a real hash too, so that it takes as long.
        if encoded is None:
            if self._dummy_hash is None:
                self._dummy_hash = await self._hash_password("not a password")
            encoded = self._dummy_hash
        return await trio.to_thread.run_sync(
            _check_password, password, encoded, limiter=self._kdf_limiter
        )


async def _receive(stream: trio.abc.Stream) -> bytes:
    """Bytes from the peer; b"" when it closed or broke the connection (TLS included)."""
    try:
        return bytes(await stream.receive_some(_READ_SIZE))
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        return b""


def _ssl_context(listen: ListenSettings) -> ssl.SSLContext | None:
    if listen.tls_cert is None or listen.tls_key is None:
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(listen.tls_cert, listen.tls_key)
    return context
