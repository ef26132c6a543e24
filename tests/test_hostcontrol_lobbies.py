"""A room host given several lobby nodes finds the one that serves it, and again on failover.

Only the node holding the matchmaker lease serves room hosts; the others accept a control
connection and close it before `Registered`. The fake nodes here are real loopback TCP
listeners. Timing runs on trio's mock clock, autojumping only after real idleness (so loopback
I/O is never skipped over): "no backoff wait" is checked as virtual time that did not pass.
"""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest
import structlog
import trio
import trio.testing
from hostkit import control_server, start_host, stop_host, until

from battle.control import (
    ControlDecoder,
    Ping,
    Pong,
    Register,
    Registered,
    encode_message,
)
from battle.host import HostSettings, RoomHost
from battle.hostcontrol import BACKOFF_MIN, ControlClient
from sim.cli import build_parser

LEASE = 3.0
SHORTEST_WAIT = BACKOFF_MIN * 0.5
"""The shortest backoff wait there is (jitter in [0.5, 1]): less time than this passing means
no wait happened."""


@pytest.fixture
def lazy_clock() -> trio.testing.MockClock:
    """Virtual time that jumps only once everything has been idle for 50 ms of real time."""
    return trio.testing.MockClock(autojump_threshold=0.05)


class FakeNode:
    """One lobby node's control port. A follower accepts and closes at once; a serving node
    answers Register with Registered and keeps the session (answering Ping) until killed."""

    def __init__(self, listener: trio.SocketListener, *, serving: bool) -> None:
        self.listener = listener
        self.serving = serving
        self.register_then_close = False
        """Serving, but drop the session right after Registered (a flapping node)."""
        self.max_connections: int | None = None
        """Fail the test at once past this many (a client reconnecting at full speed would
        otherwise hang it: the mock clock moves only when everything is idle)."""
        self.connections: list[float] = []
        self.registrations: list[float] = []
        self._scope = trio.CancelScope()
        port: int = listener.socket.getsockname()[1]
        self.address = ("127.0.0.1", port)

    async def run(self) -> None:
        async with self.listener:
            with self._scope:
                async with trio.open_nursery() as nursery:
                    while True:
                        stream = await self.listener.accept()
                        self.connections.append(trio.current_time())
                        if self.max_connections is not None:
                            assert len(self.connections) <= self.max_connections, "hammered"
                        nursery.start_soon(self._session, stream)

    async def kill(self) -> None:
        """The node dies: its port refuses from now on and its sessions are closed."""
        self._scope.cancel()
        await self.listener.aclose()

    async def _session(self, stream: trio.SocketStream) -> None:
        async with stream:
            if not self.serving:
                return
            decoder = ControlDecoder()
            try:
                while True:
                    data = await stream.receive_some(65536)
                    if not data:
                        return
                    decoder.feed(data)
                    while (message := decoder.next_message()) is not None:
                        if isinstance(message, Register):
                            await stream.send_all(encode_message(Registered("node", 0.5, LEASE)))
                            self.registrations.append(trio.current_time())
                            if self.register_then_close:
                                return
                        elif isinstance(message, Ping):
                            await stream.send_all(encode_message(Pong(message.nonce)))
            except trio.BrokenResourceError:
                pass


async def _nodes(nursery: trio.Nursery, *serving: bool) -> list[FakeNode]:
    nodes = []
    for flag in serving:
        listener = (await trio.open_tcp_listeners(0, host="127.0.0.1"))[0]
        node = FakeNode(listener, serving=flag)
        nursery.start_soon(node.run)
        nodes.append(node)
    return nodes


def _host(tmp_path: Path) -> RoomHost:
    # Not started: the control client only needs its settings, load, records and queues.
    return RoomHost(HostSettings(host_id="lobbies-test", bind=("127.0.0.1", 9), data_dir=tmp_path))


async def _wait(condition: object, timeout: float = 20.0) -> None:
    """Until `condition()` holds (virtual seconds; the clock moves only when all is idle)."""
    assert callable(condition)
    with trio.fail_after(timeout):
        while not condition():
            await trio.sleep(0.01)


def _label(address: tuple[str, int]) -> str:
    return f"{address[0]}:{address[1]}"


async def test_skips_a_follower_at_once_and_follows_the_failover(
    tmp_path: Path, lazy_clock: trio.testing.MockClock
) -> None:
    with structlog.testing.capture_logs() as logs:
        async with trio.open_nursery() as nursery:
            follower, leader = await _nodes(nursery, False, True)
            client = ControlClient(_host(tmp_path), [follower.address, leader.address], seed=1)
            start = trio.current_time()
            nursery.start_soon(client.run)

            # The follower closes on us: the leader is tried at once, no backoff wait.
            await _wait(lambda: client.connected)
            assert trio.current_time() - start < SHORTEST_WAIT
            assert len(follower.connections) == 1 and len(leader.registrations) == 1
            assert client.lobby == leader.address

            # The leader serves for a while (past its lease), then dies; the other node has
            # taken over meanwhile. The host registers there within one round, with no wait.
            await trio.sleep(2 * LEASE)
            follower.serving = True
            died = trio.current_time()
            await leader.kill()
            await _wait(lambda: len(follower.registrations) == 1)
            assert trio.current_time() - died < SHORTEST_WAIT
            assert len(follower.connections) == 2  # one round: straight to the next node
            assert client.registrations == 2 and client.lobby == follower.address
            nursery.cancel_scope.cancel()

    registered = [e["lobby"] for e in logs if e["event"] == "registered"]
    assert registered == [_label(leader.address), _label(follower.address)]
    assert [e["lobby"] for e in logs if e["event"] == "lobby_not_serving"] == [
        _label(follower.address)
    ]
    # The failover round started with the next node, not by knocking on the dead one.
    assert not [e for e in logs if e["event"] == "lobby_unreachable"]


async def test_a_round_of_followers_waits_with_growing_backoff(
    tmp_path: Path, lazy_clock: trio.testing.MockClock
) -> None:
    """Nodes that all accept and close (no leader yet) are tried once per round, then the
    client waits; the wait grows round after round."""
    async with trio.open_nursery() as nursery:
        first, second = await _nodes(nursery, False, False)
        client = ControlClient(_host(tmp_path), [first.address, second.address], seed=7)
        nursery.start_soon(client.run)
        await trio.sleep(40.0)
        nursery.cancel_scope.cancel()
    assert client.registrations == 0
    # Same pace as a single address: 5-9 rounds in 40 s, each node once per round.
    assert 5 <= len(first.connections) <= 9, first.connections
    assert len(second.connections) in (len(first.connections), len(first.connections) - 1)
    for a, b in zip(first.connections, second.connections, strict=False):
        assert 0 <= b - a < SHORTEST_WAIT  # the second right after the first, in one round
    gaps = [b - a for a, b in itertools.pairwise(first.connections)]
    assert all(later >= earlier * 0.99 for earlier, later in itertools.pairwise(gaps)), gaps
    assert gaps[-1] >= 4.0, gaps


async def test_nodes_that_register_and_drop_at_once_are_not_hammered(
    tmp_path: Path, lazy_clock: trio.testing.MockClock
) -> None:
    """A session that ends within its first lease proves little: the round goes on, then the
    client waits (the short, reset backoff) instead of reconnecting at full speed."""
    async with trio.open_nursery() as nursery:
        nodes = await _nodes(nursery, True, True)
        for node in nodes:
            node.register_then_close = True
            node.max_connections = 100
        client = ControlClient(_host(tmp_path), [node.address for node in nodes], seed=3)
        nursery.start_soon(client.run)
        await trio.sleep(5.0)
        nursery.cancel_scope.cancel()
    arrivals = sorted(nodes[0].connections + nodes[1].connections)
    # One round (both nodes) per 0.25-0.5 s wait: 20-40 connections in 5 s, not thousands.
    assert 20 <= len(arrivals) <= 2 * (5.0 / SHORTEST_WAIT + 1), len(arrivals)
    assert client.registrations == len(arrivals)


async def test_a_single_address_still_works(
    tmp_path: Path, lazy_clock: trio.testing.MockClock
) -> None:
    host = _host(tmp_path)
    async with control_server() as lobby:
        for lobbies in (("127.0.0.1", lobby.port), [("127.0.0.1", lobby.port)]):
            client = ControlClient(host, lobbies)
            assert client.lobbies == (("127.0.0.1", lobby.port),)
            async with trio.open_nursery() as nursery:
                nursery.start_soon(client.run)
                await lobby.wait_for(lambda: lobby.register is not None, timeout=10)
                await _wait(lambda: client.connected)  # noqa: B023 - awaited in the loop
                nursery.cancel_scope.cancel()
            lobby.register = None


def test_room_host_lobby_option_takes_a_list() -> None:
    parser = build_parser()
    one = parser.parse_args(["room-host", "--lobby", "127.0.0.1:7001"])
    assert one.lobby == [("127.0.0.1", 7001)]
    two = parser.parse_args(["room-host", "--lobby", "lobby-a:7001, [::1]:7002"])
    assert two.lobby == [("lobby-a", 7001), ("::1", 7002)]
    for bad in ("lobby-a:7001,", "lobby-a:7001,,lobby-b:7001", "lobby-a:7001,lobby-b"):
        with pytest.raises(SystemExit):
            parser.parse_args(["room-host", "--lobby", bad])


async def test_room_host_process_registers_with_the_serving_node(tmp_path: Path) -> None:
    """`framesync room-host --lobby FOLLOWER,LEADER`, a real process, in real time."""
    async with trio.open_nursery() as nursery, control_server() as leader:
        (follower,) = await _nodes(nursery, False)
        lobbies = f"{_label(follower.address)},127.0.0.1:{leader.port}"
        # start_host passes its own --lobby first; the later one wins.
        process = start_host(leader.port, tmp_path, "--lobby", lobbies)
        try:
            await leader.wait_ready(timeout=30)
            await until(lambda: bool(follower.connections), timeout=5)
        finally:
            assert stop_host(process) == 0
        nursery.cancel_scope.cancel()
