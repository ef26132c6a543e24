"""The room host's side of the control channel: register, heartbeat, take rooms, report.

Rooms never depend on this connection: when the lobby is unreachable they keep running, room
events queue (bounded) and results wait on disk. The client reconnects, re-registers with the
rooms it still runs, and re-sends every unacknowledged result.

A lobby may be several nodes, of which only one (the matchmaker's lease holder) serves room
hosts; the others accept a control connection and close it before `Registered`. So the client
takes a list of addresses and tries them in rounds, starting with the one that last served:
a refusal or a close before `Registered` moves on to the next address at once, and only after
every address was tried once does it wait (capped exponential backoff with jitter), so nodes
that accept and close are not hammered. A session that registered resets the backoff; one
that also lasted a whole lease (a serving node that then died) starts a new round at once
with the next address, so a failover costs no wait. A shorter one only finishes its round
before the wait: a node that registers and drops at once must not be reconnected to at full
speed either.
"""

from __future__ import annotations

import random
from collections.abc import Awaitable, Callable, Sequence
from typing import Literal, cast

import structlog
import trio

from battle import __version__
from battle.control import (
    ControlDecoder,
    ControlMessage,
    ControlProtocolError,
    CreateRoom,
    Drain,
    EndRoom,
    Heartbeat,
    Ping,
    Pong,
    Register,
    Registered,
    Rejected,
    RejectReason,
    ResultAck,
    encode_message,
)
from battle.host import RoomHost

_Send = Callable[[ControlMessage], Awaitable[None]]
Address = tuple[str, int]
_CONNECTION_ERRORS = (
    OSError,
    trio.BrokenResourceError,
    trio.ClosedResourceError,
    trio.TooSlowError,
)
BACKOFF_MIN = 0.5
BACKOFF_MAX = 30.0
_log = structlog.get_logger("framesync.control")
_Outcome = Literal["failed", "short", "served"]
"""How one connection went: no `Registered`; registered but ended within its first lease;
registered and lasted at least a lease."""


class _NotServing(trio.BrokenResourceError):
    """The lobby closed the connection before `Registered`: a node that does not serve hosts."""


def _addresses(lobby: Address | Sequence[Address]) -> tuple[Address, ...]:
    """One (host, port) or a sequence of them, as a non-empty tuple."""
    if isinstance(lobby, tuple) and len(lobby) == 2 and isinstance(lobby[0], str):
        return (lobby,)
    addresses = tuple(cast(Sequence[Address], lobby))
    if not addresses:
        raise ValueError("no lobby address")
    return addresses


class ControlClient:
    """Keeps one control connection alive for a RoomHost, to whichever of the lobby addresses
    serves room hosts."""

    def __init__(
        self, host: RoomHost, lobby: Address | Sequence[Address], *, seed: int | None = None
    ) -> None:
        self.host = host
        self.lobbies = _addresses(lobby)
        self.connected = False
        self.registrations = 0
        self._served = 0
        """Index in `lobbies` of the address last registered with: rounds start there."""
        self._registered_at = 0.0
        self._lease = 0.0
        self._rng = random.Random(seed)
        self._host_log = _log.bind(host_id=host.settings.host_id)
        self._log = self._host_log

    @property
    def lobby(self) -> Address:
        """The address last registered with (the first one until then)."""
        return self.lobbies[self._served]

    @lobby.setter
    def lobby(self, lobby: Address | Sequence[Address]) -> None:
        self.lobbies = _addresses(lobby)
        self._served = 0

    def _round(self, first: int) -> list[int]:
        """Every address once, in rotation from `first`."""
        count = len(self.lobbies)
        return [(first + step) % count for step in range(count)]

    async def run(self) -> None:
        failed_rounds = 0
        while True:
            pending = self._round(self._served)
            registered = False
            while pending:
                index = pending.pop(0)
                outcome = await self._connect(index)
                if outcome == "failed":
                    continue  # the next address at once: a follower node, or one that is down
                registered = True
                if outcome == "served":
                    # A node that served us for a lease has died (or dropped us): look for the
                    # one that serves now at once, starting with the next address.
                    pending = self._round(index + 1)
            if registered:
                # Only a session that got as far as Registered proves a lobby works: nodes
                # that accept and then close must not be reconnected to at the fastest rate.
                failed_rounds = 0
            delay = min(BACKOFF_MAX, BACKOFF_MIN * 2**failed_rounds) * self._rng.uniform(0.5, 1.0)
            failed_rounds += 1
            await trio.sleep(delay)

    async def _connect(self, index: int) -> _Outcome:
        """One connection to `lobbies[index]`, and the session on it until it ends."""
        address = self.lobbies[index]
        self._log = self._host_log.bind(lobby=f"{address[0]}:{address[1]}")
        registrations = self.registrations
        try:
            stream = await trio.open_tcp_stream(*address)
        except OSError as exc:
            self._log.info("lobby_unreachable", error=str(exc))
            return "failed"
        try:
            async with stream:
                await self._session(stream, index)
        except* _NotServing:
            self._log.info("lobby_not_serving")
        except* ControlProtocolError as group:
            self._log.error("lobby_protocol_error", error=str(group.exceptions[0]))
        except* _CONNECTION_ERRORS as group:
            self._log.warning("lobby_connection_lost", error=str(group.exceptions[0]))
        finally:
            self.connected = False
            self.host.lobby_connected = False
        if self.registrations == registrations:
            return "failed"
        lasted = trio.current_time() - self._registered_at
        return "served" if lasted >= self._lease else "short"

    async def _session(self, stream: trio.SocketStream, index: int) -> None:
        host = self.host
        rooms, _ = host.load()
        address = host.public_address
        await stream.send_all(
            encode_message(
                Register(
                    host_id=host.settings.host_id,
                    udp_host=address[0],
                    udp_port=address[1],
                    capacity=host.settings.capacity,
                    load=rooms,
                    version=__version__,
                    rooms=tuple(sorted(host.records)),
                    results=tuple(sorted(host.outbox.pending)),
                )
            )
        )
        decoder = ControlDecoder()
        send_lock = trio.Lock()

        async def send(message: ControlMessage) -> None:
            try:
                data = encode_message(message)
            except ValueError as exc:
                # A bug on this side (say an oversized event detail): drop that one message
                # rather than the connection or the process.
                self._log.error(
                    "control_message_invalid", type=type(message).__name__, error=str(exc)
                )
                return
            async with send_lock:
                await stream.send_all(data)

        registered: Registered | None = None
        with trio.fail_after(10):
            while registered is None:
                data = await stream.receive_some(65536)
                if not data:
                    raise _NotServing("lobby closed before registering")
                decoder.feed(data)
                # Stop at Registered: whatever came in the same read stays in the decoder.
                while registered is None and (message := decoder.next_message()) is not None:
                    if isinstance(message, Registered):
                        registered = message
        self.connected = True
        self.host.lobby_connected = True
        self.registrations += 1
        self._served = index
        self._registered_at = trio.current_time()
        self._lease = registered.lease
        self._log.info("registered", lobby_id=registered.lobby_id, lease=registered.lease)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._heartbeats, send, registered.heartbeat_interval)
            nursery.start_soon(self._results, send, registered.lease)
            nursery.start_soon(self._forward, send)
            await self._read(stream, decoder, send, registered.lease)
            nursery.cancel_scope.cancel()

    async def _read(
        self, stream: trio.SocketStream, decoder: ControlDecoder, send: _Send, lease: float
    ) -> None:
        """Handle lobby messages. After half a lease of silence ask (Ping); a lobby silent for
        a whole lease is treated as gone and the connection is made anew."""
        pinged = False
        await self._drain(decoder, send)  # anything that arrived with Registered
        while True:
            with trio.move_on_after(lease / 2) as silence:
                data = await stream.receive_some(65536)
            if silence.cancelled_caught:
                if pinged:
                    raise trio.BrokenResourceError("lobby silent for a whole lease")
                pinged = True
                await send(Ping(self._rng.getrandbits(32)))
                continue
            pinged = False
            if not data:
                return
            decoder.feed(data)
            await self._drain(decoder, send)

    async def _drain(self, decoder: ControlDecoder, send: _Send) -> None:
        """Handle every complete message in the decoder; answer a bad CreateRoom."""
        while True:
            try:
                message = decoder.next_message()
            except ControlProtocolError as exc:
                if exc.fatal:
                    raise
                self._log.warning("bad_control_message", error=str(exc))
                if exc.message_type == "create_room" and exc.request_id is not None:
                    await send(Rejected(exc.request_id, exc.room_id or 0, RejectReason.BAD_REQUEST))
                continue
            if message is None:
                break
            await self._handle(message, send)

    async def _handle(self, message: ControlMessage, send: _Send) -> None:
        host = self.host
        if isinstance(message, CreateRoom):
            await send(host.create_room(message))
        elif isinstance(message, ResultAck):
            if host.outbox.acknowledge(message.match_id):
                self._log.info("result_acknowledged", match_id=message.match_id)
        elif isinstance(message, Ping):
            await send(Pong(message.nonce))
        elif isinstance(message, Drain):
            host.request_drain(message.reason)
        elif isinstance(message, EndRoom):
            if not host.end_room(message.room_id, message.match_id, message.reason):
                self._log.info("end_room_ignored", room_id=message.room_id)
        elif isinstance(message, Pong | Registered):
            pass
        else:
            self._log.warning("unexpected_control_message", type=type(message).__name__)

    async def _heartbeats(self, send: _Send, interval: float) -> None:
        while True:
            rooms, players = self.host.load()
            await send(
                Heartbeat(load=rooms, rooms=rooms, players=players, draining=self.host.draining)
            )
            await trio.sleep(interval)

    async def _results(self, send: _Send, lease: float) -> None:
        """Every unacknowledged result now, and again every lease until acknowledged."""
        while True:
            for result in list(self.host.outbox.pending.values()):
                await send(result)
            await trio.sleep(max(1.0, lease))

    async def _forward(self, send: _Send) -> None:
        """Room events queued by the host, in order; results go through the outbox too.

        A message leaves the queue before it is sent: the queue is bounded, so whatever is
        appended during the send may evict its oldest entry, which must not be one in flight.
        A failed send puts the message back in front (unless the queue filled up meanwhile:
        then it is the oldest, the one the bound drops first).
        """
        outbox = self.host.control
        while True:
            while outbox.queue:
                message = outbox.queue.popleft()
                try:
                    await send(message)
                except BaseException:
                    queue = outbox.queue
                    if queue.maxlen is None or len(queue) < queue.maxlen:
                        queue.appendleft(message)
                    raise
            outbox.wakeup = trio.Event()
            if not outbox.queue:
                await outbox.wakeup.wait()
