"""Real room host processes for end-to-end tests: a subprocess and a small control server."""

from __future__ import annotations

import hashlib
import os
import random
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

import msgpack
import trio

from battle.config import RoomConfig, RosterEntry
from battle.control import (
    ControlDecoder,
    ControlMessage,
    CreateRoom,
    Heartbeat,
    Ping,
    Pong,
    Register,
    Registered,
    ResultAck,
    RoomCreated,
    RoomEvent,
    RoomResult,
    encode_message,
    room_config_to_plain,
)
from battle.frames import Frame
from battle.messages import encode_frame
from battle.ticket import ClientKeys, issue_ticket
from sim.battleclient import BattleClient

ROOT = Path(__file__).resolve().parent.parent


@dataclass
class ControlServer:
    """Plays the lobby's side of the control channel for one host connection."""

    listener: trio.SocketListener
    stream: trio.SocketStream | None = None
    register: Register | None = None
    events: list[RoomEvent] = field(default_factory=list)
    results: list[RoomResult] = field(default_factory=list)
    replies: dict[int, ControlMessage] = field(default_factory=dict)
    connected: trio.Event = field(default_factory=trio.Event)
    changed: trio.Event = field(default_factory=trio.Event)
    ack_results: bool = True
    ack_delay: float = 0.0
    """Seconds a ResultAck takes (a lobby that is slow to store results)."""
    heartbeat: Heartbeat | None = None
    """The last Heartbeat received."""
    result_messages: list[RoomResult] = field(default_factory=list)
    """Every RoomResult received, re-sends included (`results` keeps one per match)."""
    piggyback: bytes = b""
    """Raw bytes sent in the same write as Registered (to test coalesced reads)."""
    _next_request: int = 1
    _send_lock: trio.Lock = field(default_factory=trio.Lock)
    """The test's requests and the serve task's replies share one stream."""

    @property
    def port(self) -> int:
        port: int = self.listener.socket.getsockname()[1]
        return port

    async def serve(self) -> None:
        while True:
            stream = await self.listener.accept()
            self.stream = stream
            decoder = ControlDecoder()
            async with stream:
                try:
                    while True:
                        data = await stream.receive_some(65536)
                        if not data:
                            break
                        decoder.feed(data)
                        while (message := decoder.next_message()) is not None:
                            await self._on_message(stream, message)
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    pass
            self.stream = None
            self.connected = trio.Event()

    async def _send(self, stream: trio.SocketStream, data: bytes) -> None:
        async with self._send_lock:
            await stream.send_all(data)

    async def _on_message(self, stream: trio.SocketStream, message: ControlMessage) -> None:
        if isinstance(message, Heartbeat):
            self.heartbeat = message
        elif isinstance(message, RoomResult):
            self.result_messages.append(message)
        if isinstance(message, Register):
            self.register = message
            await self._send(
                stream, encode_message(Registered("test-lobby", 0.5, 3.0)) + self.piggyback
            )
            self.connected.set()
        elif isinstance(message, RoomEvent):
            self.events.append(message)
        elif isinstance(message, RoomResult):
            if all(r.match_id != message.match_id for r in self.results):
                self.results.append(message)
            if self.ack_results:
                if self.ack_delay:
                    await trio.sleep(self.ack_delay)
                await self._send(stream, encode_message(ResultAck(message.match_id)))
        elif isinstance(message, RoomCreated):
            self.replies[message.request_id] = message
        elif isinstance(message, Ping):
            await self._send(stream, encode_message(Pong(message.nonce)))
        else:
            self.replies[getattr(message, "request_id", -1)] = message
        self.changed.set()
        self.changed = trio.Event()

    async def create_room(
        self, room_id: int, match_id: int, players: int, config: RoomConfig, key: bytes
    ) -> ControlMessage:
        assert self.stream is not None
        request_id = self._next_request
        self._next_request += 1
        roster = tuple(RosterEntry(s, 1000 * room_id + s, s % 2) for s in range(players))
        await self._send(
            self.stream,
            encode_message(
                CreateRoom(
                    request_id=request_id,
                    room_id=room_id,
                    match_id=match_id,
                    seed=room_id * 7919,
                    roster=roster,
                    config=room_config_to_plain(config),
                    ticket_key=key,
                )
            ),
        )
        with trio.fail_after(5):
            while request_id not in self.replies:
                await self.changed.wait()
        return self.replies[request_id]

    def next_request_id(self) -> int:
        request_id = self._next_request
        self._next_request += 1
        return request_id

    async def request_raw(self, body: dict[str, object], timeout: float = 5.0) -> ControlMessage:
        """Send `body` (a message map, bypassing the encoder's checks) with a fresh "req" and
        wait for the reply to it."""
        assert self.stream is not None
        request_id = self.next_request_id()
        packed = raw_frame({**body, "req": request_id})
        await self._send(self.stream, packed)
        with trio.fail_after(timeout):
            while request_id not in self.replies:
                await self.changed.wait()
        return self.replies[request_id]

    async def wait_ready(self, timeout: float = 20.0) -> tuple[str, int]:
        """Registered, and the host's first heartbeat seen: its session is past registration.
        Returns the host's UDP address."""
        await self.wait_for(
            lambda: self.register is not None and self.heartbeat is not None, timeout=timeout
        )
        assert self.register is not None
        return "127.0.0.1", self.register.udp_port

    async def wait_for(self, predicate: object, timeout: float = 30.0) -> None:
        assert callable(predicate)
        with trio.fail_after(timeout):
            while not predicate():
                await self.changed.wait()


def raw_frame(body: dict[str, object]) -> bytes:
    """One control frame holding `body` as is (no validation)."""
    packed: bytes = msgpack.packb(body, use_bin_type=True)
    return len(packed).to_bytes(4, "big") + packed


@asynccontextmanager
async def control_server(port: int = 0, **options: object) -> AsyncIterator[ControlServer]:
    """A control server on `port` (0: any free port); `options` set ControlServer fields."""
    listeners = await trio.open_tcp_listeners(port, host="127.0.0.1")
    server = ControlServer(listeners[0], **options)  # type: ignore[arg-type]
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(server.serve)
            yield server
            nursery.cancel_scope.cancel()
    finally:
        await server.listener.aclose()


def start_host(lobby_port: int, data_dir: Path, *extra: str) -> subprocess.Popen[bytes]:
    """A real `framesync room-host` process; its log goes to data_dir/host.log."""
    data_dir.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    with open(data_dir / "host.log", "ab") as log:  # the child keeps its own descriptor
        return subprocess.Popen(
            [
                sys.executable,
                "-m",
                "sim.cli",
                "room-host",
                "--bind",
                "127.0.0.1:0",
                "--lobby",
                f"127.0.0.1:{lobby_port}",
                "--data-dir",
                str(data_dir),
                "--log-json",
                *extra,
            ],
            cwd=ROOT,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
        )


def stop_host(process: subprocess.Popen[bytes], sig: int = signal.SIGTERM) -> int:
    if process.poll() is None:
        process.send_signal(sig)
    try:
        return process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        process.kill()
        return process.wait()


def ticket_for(
    key: bytes, match_id: int, room_id: int, slot: int, *, lifetime: float = 120.0
) -> tuple[bytes, ClientKeys]:
    return issue_ticket(
        key,
        match_id,
        room_id,
        1000 * room_id + slot,
        slot,
        time.time() + lifetime,
        team=slot % 2,
    )


class RollingState:
    """Stand-in game state: a digest of every frame applied, hashed like a real game would."""

    def __init__(self) -> None:
        self.state = bytes(32)

    def apply(self, frame: Frame) -> int:
        self.state = hashlib.blake2b(self.state + encode_frame(frame), digest_size=32).digest()
        return int.from_bytes(self.state[:8], "little")


async def play(client: BattleClient, rng: random.Random, stop: trio.Event, hz: int = 30) -> None:
    """Send an input on most ticks until told to stop, like a game loop would."""
    await client.accepted.wait()
    next_at = trio.current_time()
    while not stop.is_set():
        next_at += 1 / hz
        await trio.sleep_until(next_at)
        if client.connected and rng.random() < 0.7:
            client.send_input(rng.randbytes(rng.randint(1, 8)))


async def until(condition: Callable[[], bool], timeout: float, poll: float = 0.05) -> None:
    """Poll `condition` until it holds; TooSlowError after `timeout` seconds."""
    with trio.fail_after(timeout):
        while not condition():
            await trio.sleep(poll)


def free_tcp_port() -> int:
    """A loopback TCP port nobody listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port
