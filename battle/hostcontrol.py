"""The room host's side of the control channel: register, heartbeat, take rooms, report.

Rooms never depend on this connection: when the lobby is unreachable they keep running, room
events queue (bounded) and results wait on disk. The client reconnects with capped
exponential backoff and jitter, re-registers with the rooms it still runs, and re-sends every
unacknowledged result.
"""

from __future__ import annotations

import random
from collections.abc import Awaitable, Callable

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
_CONNECTION_ERRORS = (
    OSError,
    trio.BrokenResourceError,
    trio.ClosedResourceError,
    trio.TooSlowError,
)
BACKOFF_MIN = 0.5
BACKOFF_MAX = 30.0
_log = structlog.get_logger("framesync.control")


class ControlClient:
    """Keeps one control connection to the lobby alive for a RoomHost."""

    def __init__(self, host: RoomHost, lobby: tuple[str, int], *, seed: int | None = None) -> None:
        self.host = host
        self.lobby = lobby
        self.connected = False
        self.registrations = 0
        self._rng = random.Random(seed)
        self._log = _log.bind(host_id=host.settings.host_id, lobby=f"{lobby[0]}:{lobby[1]}")

    async def run(self) -> None:
        attempt = 0
        while True:
            registrations = self.registrations
            try:
                stream = await trio.open_tcp_stream(*self.lobby)
            except OSError as exc:
                self._log.info("lobby_unreachable", error=str(exc))
            else:
                try:
                    async with stream:
                        await self._session(stream)
                except* ControlProtocolError as group:
                    self._log.error("lobby_protocol_error", error=str(group.exceptions[0]))
                except* _CONNECTION_ERRORS as group:
                    self._log.warning("lobby_connection_lost", error=str(group.exceptions[0]))
                finally:
                    self.connected = False
                    self.host.lobby_connected = False
            if self.registrations != registrations:
                # Only a session that got as far as Registered proves the lobby works: one that
                # accepts and then closes must not be reconnected to at the fastest rate.
                attempt = 0
            delay = min(BACKOFF_MAX, BACKOFF_MIN * 2**attempt) * self._rng.uniform(0.5, 1.0)
            attempt += 1
            await trio.sleep(delay)

    async def _session(self, stream: trio.SocketStream) -> None:
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
                    raise trio.BrokenResourceError("lobby closed before registering")
                decoder.feed(data)
                # Stop at Registered: whatever came in the same read stays in the decoder.
                while registered is None and (message := decoder.next_message()) is not None:
                    if isinstance(message, Registered):
                        registered = message
        self.connected = True
        self.host.lobby_connected = True
        self.registrations += 1
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
