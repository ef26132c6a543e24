"""LobbyClient: the lobby's TCP client protocol (lobby/protocol.py) driven with trio.

What bots, load tests and tools use to talk to a real lobby, and a reference for clients in
other languages (docs/PROTOCOL.md, "Lobby client protocol"). One connection, three background
tasks: a reader that matches answers to requests by `rid` and queues everything else as a
push, a writer that owns the stream (so a cancelled caller never leaves half a frame on the
wire), and a heartbeat at the interval the server's `welcome` asks for.

    async with open_lobby_client("lobby.example", 7000, ssl_context=ctx) as client:
        me = await client.login("ada", "correct horse")
        await client.queue("1v1", "eu")
        proposal = await client.wait_for(MatchProposed)
        await client.accept(proposal.proposal_id)
        ready = await client.wait_for(MatchReady)   # then join the room over UDP

Requests have no timeout of their own: wrap them in `trio.fail_after` where a hang matters.
(A request the server's rate limit drops gets one rid-less `too_fast` error for the whole
burst, which arrives as a push, and no answer.)
"""

from __future__ import annotations

import math
import ssl
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from importlib import metadata
from typing import TypeVar

import trio

from lobby.protocol import (
    PROTOCOL_VERSION,
    Accept,
    CancelQueue,
    ClientMessage,
    Decline,
    Error,
    ErrorCode,
    GetHistory,
    GetRating,
    Heartbeat,
    HeartbeatAck,
    Hello,
    History,
    Kicked,
    LobbyDecoder,
    LobbyFramingError,
    LobbyProtocolError,
    LoggedIn,
    Login,
    LoginDevice,
    Logout,
    Message,
    Queue,
    QueueCancelled,
    Queued,
    Rating,
    Register,
    RegisterDevice,
    Resume,
    Role,
    ServerMessage,
    Welcome,
    encode_message,
    type_name,
)

__all__ = [
    "CLIENT_VERSION",
    "LobbyClient",
    "LobbyClosed",
    "LobbyError",
    "open_lobby_client",
    "open_lobby_client_on_stream",
]

try:
    CLIENT_VERSION = metadata.version("framesync")
except metadata.PackageNotFoundError:  # running from a source tree that was never installed
    CLIENT_VERSION = "0+unknown"

_READ_SIZE = 65536
_U32 = (1 << 32) - 1
_U64 = (1 << 64) - 1
_CLOSE_TIMEOUT = 2.0
"""How long closing may take to flush queued frames and say goodbye (TLS close_notify)."""

T = TypeVar("T", bound=ServerMessage)
A = TypeVar("A")


class LobbyError(Exception):
    """The lobby refused a request (`code` is its ErrorCode), or the exchange went wrong.

    `code` is None when the failure is the client's own finding (an answer of the wrong type,
    a closed connection) rather than an error the server sent.
    """

    def __init__(
        self, code: ErrorCode | None, message: str, request_type: str | None = None
    ) -> None:
        super().__init__(f"{code}: {message}" if code is not None else message)
        self.code = code
        self.message = message
        self.request_type = request_type

    @classmethod
    def from_error(cls, error: Error) -> LobbyError:
        return cls(error.code, error.message, error.request_type)


class LobbyClosed(LobbyError):
    """The connection is gone (server EOF, `kicked`, broken stream or aclose): log in again."""

    def __init__(self, reason: str) -> None:
        super().__init__(None, reason)


class _Pending:
    """One request waiting for the answer that carries its rid."""

    __slots__ = ("answer", "done", "error")

    def __init__(self) -> None:
        self.done = trio.Event()
        self.answer: ServerMessage | None = None
        self.error: LobbyError | None = None

    def resolve(self, answer: ServerMessage) -> None:
        self.answer = answer
        self.done.set()

    def fail(self, error: LobbyError) -> None:
        self.error = error
        self.done.set()


class LobbyClient:
    """One lobby session over an already-open stream (TCP, TLS, or in-memory in tests).

    Call `start(nursery)` (or use `open_lobby_client_on_stream`) before anything else; it says
    hello and returns the server's `welcome`. Requests may run concurrently from many tasks.
    Everything the server sends that answers no request — match_*, `queued` and
    `queue_cancelled` caused by a party member, `kicked`, and errors whose rid matches no
    waiting request (e.g. for `accept`/`decline`, or a request whose caller gave up) — is a
    *push*, read with `next_push`, `wait_for` or `pushes`. Pushes are buffered without bound
    so that unread pushes can never hold up request answers.
    """

    def __init__(
        self,
        stream: trio.abc.Stream,
        *,
        client_name: str = "framesync-py",
        client_version: str = CLIENT_VERSION,
    ) -> None:
        self.client_name = client_name
        self.client_version = client_version
        self.welcome: Welcome | None = None
        """The server's `welcome`, once `start` returned."""
        self.logged_in: LoggedIn | None = None
        """The last `logged_in`: keep `session_token` to `resume` on a new connection."""
        self.closed = trio.Event()
        """Set once the connection is over; requests then raise LobbyClosed."""
        self.close_reason: str | None = None
        self.kicked_reason: str | None = None
        """The reason from `kicked`, if the server ended the session that way."""
        self.bad_messages = 0
        """Server messages this client could not decode and skipped."""
        self._stream = stream
        self._decoder = LobbyDecoder(Role.CLIENT)
        self._pending: dict[int, _Pending] = {}
        self._next_rid = 0
        self._nonce = 0
        self._out_send, self._out_recv = trio.open_memory_channel[bytes](math.inf)
        self._push_send, self._push_recv = trio.open_memory_channel[ServerMessage](math.inf)
        self._scope = trio.CancelScope()
        self._started = False
        self._running = False
        self._writer_done = trio.Event()
        self._stopped = trio.Event()

    # --- lifecycle -----------------------------------------------------------------------------

    async def start(self, nursery: trio.Nursery) -> Welcome:
        """Say hello, wait for `welcome`, then run the background tasks in `nursery`.

        Raises LobbyError with the server's code if it answers with an error (e.g.
        `unsupported_version`), LobbyClosed if it closes first; the stream is closed then.
        """
        if self._started:
            raise RuntimeError("LobbyClient.start() was already called")
        self._started = True
        try:
            welcome = await self._handshake()
        except BaseException:
            self._mark_closed(self.close_reason or "the handshake failed")
            with trio.CancelScope(shield=True):
                await trio.aclose_forcefully(self._stream)
            self._stopped.set()
            raise
        self.welcome = welcome
        await nursery.start(self._run, welcome.heartbeat_interval)
        return welcome

    async def aclose(self) -> None:
        """Flush what was sent, close the stream and stop the background tasks.

        Waiting requests fail with LobbyClosed. Safe to call more than once, and from a
        cancelled scope (then the stream is closed without waiting).
        """
        try:
            if self._running and not self.closed.is_set():
                self._out_send.close()  # the writer drains what is queued, then stops
                with trio.move_on_after(_CLOSE_TIMEOUT):
                    await self._writer_done.wait()
        finally:
            self._mark_closed("closed by the client")
            self._scope.cancel()
            if self._running or self._stopped.is_set():
                with trio.CancelScope(shield=True):
                    await self._stopped.wait()
            else:  # never started: nobody else will close the stream
                await trio.aclose_forcefully(self._stream)
                self._stopped.set()

    # --- requests ------------------------------------------------------------------------------

    async def register(self, name: str, password: str) -> LoggedIn:
        """Create a name/password account and log in (`name_taken` if the name is used)."""
        return self._remember(await self._request(lambda r: Register(name, password, r), LoggedIn))

    async def register_device(self, device_id: str) -> LoggedIn:
        """Create an account bound to a device id and log in."""
        return self._remember(await self._request(lambda r: RegisterDevice(device_id, r), LoggedIn))

    async def login(self, name: str, password: str) -> LoggedIn:
        """Log in; a session of this player on another connection is kicked."""
        return self._remember(await self._request(lambda r: Login(name, password, r), LoggedIn))

    async def login_device(self, device_id: str) -> LoggedIn:
        return self._remember(await self._request(lambda r: LoginDevice(device_id, r), LoggedIn))

    async def resume(self, token: bytes) -> LoggedIn:
        """Log in again with `logged_in.session_token` from an earlier connection."""
        return self._remember(await self._request(lambda r: Resume(token, r), LoggedIn))

    async def queue(self, mode: str, region: str, party: Sequence[int] | None = None) -> Queued:
        """Join the queue, alone or with `party` (player ids, this player's included).

        Every party member gets `queued` for the one shared ticket (theirs as a push).
        """
        members = tuple(party) if party is not None else None
        return await self._request(lambda r: Queue(mode, region, members, r), Queued)

    async def cancel_queue(self) -> QueueCancelled:
        return await self._request(CancelQueue, QueueCancelled)

    async def get_rating(self) -> Rating:
        return await self._request(GetRating, Rating)

    async def get_history(self, limit: int = 20) -> History:
        return await self._request(lambda r: GetHistory(limit, r), History)

    async def heartbeat(self) -> HeartbeatAck:
        """One heartbeat round trip (the background task already keeps the connection alive)."""
        nonce = self._take_nonce()
        return await self._request(lambda r: Heartbeat(nonce, r), HeartbeatAck)

    async def logout(self) -> None:
        """Log out: the server answers `kicked` ("logged out") and closes the connection."""
        try:
            await self._request(Logout, Kicked)
        except LobbyClosed:
            return

    async def accept(self, proposal_id: int) -> int:
        """Accept a ready check; returns the rid it was sent with.

        Send-only: the server does not answer a successful accept, the next news is a push
        (`match_ready`, or `match_cancelled` if someone else declined). A refusal (e.g.
        `unknown_proposal` for an expired check) arrives as an `Error` push with that rid.
        """
        return await self._send_only(lambda r: Accept(proposal_id, r))

    async def decline(self, proposal_id: int) -> int:
        """Decline a ready check; send-only like `accept`. The server then refuses `queue`
        with `on_cooldown` for a while."""
        return await self._send_only(lambda r: Decline(proposal_id, r))

    # --- pushes --------------------------------------------------------------------------------

    async def next_push(self, timeout: float | None = None) -> ServerMessage:
        """The next push in arrival order.

        Raises trio.TooSlowError after `timeout` seconds, and LobbyClosed once the connection
        is closed and every push that arrived before has been read.
        """
        with trio.fail_after(math.inf if timeout is None else timeout):
            return await self._receive_push()

    async def wait_for(
        self,
        kind: type[T],
        predicate: Callable[[T], bool] | None = None,
        timeout: float | None = None,
    ) -> T:
        """The next push of type `kind` (that satisfies `predicate`).

        Pushes read on the way are discarded: use `next_push` where every one matters.
        `timeout` bounds the whole wait (trio.TooSlowError); LobbyClosed as in `next_push`.
        """
        with trio.fail_after(math.inf if timeout is None else timeout):
            while True:
                msg = await self._receive_push()
                if isinstance(msg, kind) and (predicate is None or predicate(msg)):
                    return msg

    async def pushes(self) -> AsyncIterator[ServerMessage]:
        """Every push in order, ending (without an error) when the connection closes."""
        while True:
            try:
                msg = await self._receive_push()
            except LobbyClosed:
                return
            yield msg

    # --- internals -----------------------------------------------------------------------------

    async def _handshake(self) -> Welcome:
        rid = self._new_rid()
        hello = Hello(PROTOCOL_VERSION, self.client_name, self.client_version, rid)
        try:
            await self._stream.send_all(encode_message(hello))
            while True:
                try:
                    msg = self._decoder.next_message()
                except LobbyProtocolError as exc:
                    raise LobbyError(exc.code, f"bad answer to hello: {exc.message}") from None
                if msg is None:
                    data = await self._stream.receive_some(_READ_SIZE)
                    if not data:
                        raise LobbyClosed("the server closed the connection before welcome")
                    self._decoder.feed(bytes(data))
                    continue
                if isinstance(msg, Welcome):
                    if msg.version != PROTOCOL_VERSION:
                        raise LobbyError(
                            ErrorCode.UNSUPPORTED_VERSION,
                            f"server speaks version {msg.version}, not {PROTOCOL_VERSION}",
                        )
                    return msg
                if isinstance(msg, Error):
                    raise LobbyError.from_error(msg)
                if isinstance(msg, Kicked):
                    self.kicked_reason = msg.reason
                    self.close_reason = f"kicked: {msg.reason}"
                    raise LobbyClosed(self.close_reason)
                raise LobbyError(None, f"expected welcome, got {type_name(msg)}")
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            raise LobbyClosed(f"connection lost during the handshake: {exc!r}") from exc

    async def _run(self, heartbeat_interval: float, *, task_status: trio.TaskStatus[None]) -> None:
        self._running = True
        try:
            with self._scope:
                async with trio.open_nursery() as tasks:
                    tasks.start_soon(self._read_loop)
                    tasks.start_soon(self._write_loop)
                    tasks.start_soon(self._heartbeat_loop, heartbeat_interval)
                    task_status.started()
        finally:
            self._mark_closed("closed by the client")
            with trio.move_on_after(_CLOSE_TIMEOUT) as goodbye:
                goodbye.shield = True
                await self._stream.aclose()  # closed even when this times out
            self._running = False
            self._stopped.set()

    async def _read_loop(self) -> None:
        try:
            while True:
                self._drain()
                if self.closed.is_set():
                    return
                data = await self._stream.receive_some(_READ_SIZE)
                if not data:
                    self._finish("the server closed the connection")
                    return
                self._decoder.feed(bytes(data))
        except LobbyFramingError as exc:
            self._finish(f"broken framing from the server: {exc.message}")
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            self._finish(f"connection lost: {exc!r}")

    def _drain(self) -> None:
        """Dispatch every complete message the decoder holds."""
        while not self.closed.is_set():
            try:
                msg = self._decoder.next_message()
            except LobbyFramingError:
                raise
            except LobbyProtocolError as exc:
                self._on_bad_message(exc)
                continue
            if msg is None:
                return
            self._dispatch(msg)

    def _dispatch(self, msg: Message) -> None:
        if not isinstance(msg, ServerMessage):  # the CLIENT decoder yields only these
            raise AssertionError(f"client message from the server: {msg!r}")
        if isinstance(msg, Kicked):  # ends the session whatever rid it carries
            self.kicked_reason = msg.reason
            self._push_send.send_nowait(msg)
            self._finish(f"kicked: {msg.reason}")
            return
        pending = self._pending.pop(msg.rid, None) if msg.rid is not None else None
        if pending is not None:
            pending.resolve(msg)
        elif not isinstance(msg, HeartbeatAck):  # acks of the background heartbeat
            self._push_send.send_nowait(msg)

    def _on_bad_message(self, exc: LobbyProtocolError) -> None:
        """A server message that failed validation: fail its request if we can tell which."""
        self.bad_messages += 1
        pending = self._pending.pop(exc.rid, None) if exc.rid is not None else None
        if pending is not None:
            pending.fail(
                LobbyError(exc.code, f"bad answer from the server: {exc.message}", exc.request_type)
            )

    async def _write_loop(self) -> None:
        try:
            async for data in self._out_recv:
                await self._stream.send_all(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            self._finish(f"connection lost: {exc!r}")
        finally:
            self._writer_done.set()

    async def _heartbeat_loop(self, interval: float) -> None:
        """Keep the connection from going idle: one heartbeat every `interval` seconds."""
        while True:
            await trio.sleep(interval)
            try:
                self._send(Heartbeat(self._take_nonce()))
            except LobbyClosed:
                return

    async def _request(self, build: Callable[[int], ClientMessage], expect: type[A]) -> A:
        """Send `build(rid)` and wait for the answer carrying that rid."""
        rid = self._new_rid()
        msg = build(rid)
        pending = _Pending()
        self._send(msg)
        self._pending[rid] = pending
        try:
            await pending.done.wait()
        finally:
            self._pending.pop(rid, None)
        if pending.error is not None:
            raise pending.error
        answer = pending.answer
        if isinstance(answer, Error):
            raise LobbyError.from_error(answer)
        if not isinstance(answer, expect):
            got = type_name(answer) if answer is not None else "nothing"
            raise LobbyError(None, f"{type_name(msg)} was answered with {got}", type_name(msg))
        return answer

    async def _send_only(self, build: Callable[[int], ClientMessage]) -> int:
        rid = self._new_rid()
        self._send(build(rid))
        await trio.lowlevel.checkpoint()
        return rid

    def _send(self, msg: ClientMessage) -> None:
        """Queue one frame for the writer; ValueError for a message the server would refuse."""
        if self.welcome is None:
            raise RuntimeError("call start() first")
        data = encode_message(msg)
        if self.closed.is_set():
            raise LobbyClosed(self.close_reason or "closed")
        try:
            self._out_send.send_nowait(data)
        except (trio.ClosedResourceError, trio.BrokenResourceError):
            raise LobbyClosed(self.close_reason or "closing") from None

    async def _receive_push(self) -> ServerMessage:
        try:
            return await self._push_recv.receive()
        except trio.EndOfChannel:
            raise LobbyClosed(self.close_reason or "closed") from None

    def _remember(self, logged_in: LoggedIn) -> LoggedIn:
        self.logged_in = logged_in
        return logged_in

    def _new_rid(self) -> int:
        """A u32 no waiting request uses (0 is never picked, so it is free for tools)."""
        while True:
            self._next_rid = self._next_rid % _U32 + 1
            if self._next_rid not in self._pending:
                return self._next_rid

    def _take_nonce(self) -> int:
        self._nonce = (self._nonce + 1) & _U64
        return self._nonce

    def _mark_closed(self, reason: str) -> None:
        """Fail waiting requests and end the push stream (once; the first reason wins)."""
        if self.closed.is_set():
            return
        self.close_reason = self.close_reason or reason
        self.closed.set()
        self._out_send.close()
        self._push_send.close()
        pending, self._pending = self._pending, {}
        for waiter in pending.values():
            waiter.fail(LobbyClosed(self.close_reason))

    def _finish(self, reason: str) -> None:
        self._mark_closed(reason)
        self._scope.cancel()


@asynccontextmanager
async def open_lobby_client_on_stream(
    stream: trio.abc.Stream,
    *,
    client_name: str = "framesync-py",
    client_version: str = CLIENT_VERSION,
) -> AsyncIterator[LobbyClient]:
    """A started LobbyClient on `stream`, closed (with the stream) when the block exits.

    Exceptions from the block come out as themselves, not wrapped in an ExceptionGroup: the
    background tasks end quietly on every connection failure, so the block's is the only one.
    """
    client = LobbyClient(stream, client_name=client_name, client_version=client_version)
    try:
        async with trio.open_nursery() as nursery:
            try:
                await client.start(nursery)
                yield client
            finally:
                await client.aclose()
    except BaseExceptionGroup as group:
        real = [e for e in group.exceptions if not isinstance(e, trio.Cancelled)]
        if len(real) > 1:
            raise
        exc = real[0] if real else group.exceptions[0]
        context = exc.__context__
        try:
            raise exc  # the group was only a wrapper: keep the exception's own context
        finally:
            exc.__context__ = context


@asynccontextmanager
async def open_lobby_client(
    host: str,
    port: int,
    *,
    ssl_context: ssl.SSLContext | None = None,
    client_name: str = "framesync-py",
    client_version: str = CLIENT_VERSION,
) -> AsyncIterator[LobbyClient]:
    """Connect over TCP (TLS when `ssl_context` is given, checked against `host`) and start.

    Connection and TLS failures raise OSError / trio.BrokenResourceError before the block runs.
    """
    tcp = await trio.open_tcp_stream(host, port)
    stream: trio.abc.Stream = tcp
    if ssl_context is not None:
        tls = trio.SSLStream(tcp, ssl_context, server_hostname=host)
        try:
            await tls.do_handshake()
        except BaseException:
            await trio.aclose_forcefully(tcp)
            raise
        stream = tls
    async with open_lobby_client_on_stream(
        stream, client_name=client_name, client_version=client_version
    ) as client:
        yield client
