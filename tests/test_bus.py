"""The lobby's node bus against a real redis-server: routing, order, and a Redis restart."""

from __future__ import annotations

import gc
import itertools
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
import trio
from structlog.testing import capture_logs

coredis = pytest.importorskip("coredis", reason="coredis is not installed (the redis extra)")

from redis_server import RedisServer, redis_server, restartable_redis  # noqa: E402, F401

from lobby.bus import NodeBus  # noqa: E402

_prefixes = itertools.count()


def _prefix() -> str:
    """A prefix no other test uses, so no test hears another's messages."""
    return f"test-bus-{next(_prefixes)}"


@asynccontextmanager
async def _open(host: str, port: int) -> AsyncIterator[coredis.Redis[bytes]]:
    async with coredis.Redis(host, port, decode_responses=False) as client:
        yield client


class Inbox:
    """What a bus delivered, for a test to wait on."""

    def __init__(self) -> None:
        self.send, self.receive = trio.open_memory_channel[bytes](1_000)
        self.deliver: Callable[[bytes], None] = self.send.send_nowait

    async def take(self, count: int, timeout: float = 5.0) -> list[bytes]:
        with trio.fail_after(timeout):
            return [await self.receive.receive() for _ in range(count)]

    def pending(self) -> list[bytes]:
        out = []
        while True:
            try:
                out.append(self.receive.receive_nowait())
            except trio.WouldBlock:
                return out


async def _wait_until(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    with trio.fail_after(timeout):
        while not condition():
            await trio.sleep(0.01)


def test_channel_names() -> None:
    bus = NodeBus(coredis.Redis(decode_responses=False), prefix="fs", node_id="a")  # not opened
    assert bus.channel("b") == b"{fs}:bus:b"
    assert bus.channel("a") == b"{fs}:bus:a"


async def test_messages_reach_only_their_node_in_order(
    redis_server: RedisServer,  # noqa: F811
) -> None:
    prefix = _prefix()
    host, port = redis_server.host, redis_server.port
    async with _open(host, port) as ca, _open(host, port) as cb, trio.open_nursery() as nursery:
        a = NodeBus(ca, prefix=prefix, node_id="a")
        b = NodeBus(cb, prefix=prefix, node_id="b")
        inbox_a, inbox_b = Inbox(), Inbox()
        await nursery.start(a.run, inbox_a.deliver)
        await nursery.start(b.run, inbox_b.deliver)
        assert a.subscribed and b.subscribed

        sent = [f"msg-{i}".encode() + bytes([i % 256]) * (i % 7) for i in range(200)]
        for payload in sent:
            assert await a.publish("b", payload) == 1
        assert await inbox_b.take(200) == sent

        # a heard none of it: the first thing it receives is what b sends it now.
        assert await b.publish("a", b"reply") == 1
        assert await inbox_a.take(1) == [b"reply"]
        assert inbox_a.pending() == []
        assert inbox_b.pending() == []

        # Nobody listens on c's channel, nor on b's channel under another prefix.
        assert await a.publish("c", b"lost") == 0
        assert await NodeBus(ca, prefix=_prefix(), node_id="a").publish("b", b"lost") == 0
        assert a.reconnects == b.reconnects == 0
        nursery.cancel_scope.cancel()


async def test_a_stopped_bus_no_longer_listens(redis_server: RedisServer) -> None:  # noqa: F811
    prefix = _prefix()
    async with _open(redis_server.host, redis_server.port) as client:
        bus = NodeBus(client, prefix=prefix, node_id="b")
        inbox = Inbox()
        async with trio.open_nursery() as nursery:
            await nursery.start(bus.run, inbox.deliver)
            assert await bus.publish("b", b"hello") == 1
            assert await inbox.take(1) == [b"hello"]
            nursery.cancel_scope.cancel()
        assert not bus.subscribed
        assert await bus.publish("b", b"late") == 0
        # It can run again.
        async with trio.open_nursery() as nursery:
            await nursery.start(bus.run, inbox.deliver)
            assert await bus.publish("b", b"again") == 1
            assert await inbox.take(1) == [b"again"]
            nursery.cancel_scope.cancel()


async def test_an_error_in_deliver_ends_run(redis_server: RedisServer) -> None:  # noqa: F811
    async with _open(redis_server.host, redis_server.port) as client:
        bus = NodeBus(client, prefix=_prefix(), node_id="b")

        def deliver(payload: bytes) -> None:
            raise ValueError(payload)

        with pytest.raises(BaseExceptionGroup) as caught:
            async with trio.open_nursery() as nursery:
                await nursery.start(bus.run, deliver)
                assert await bus.publish("b", b"boom") == 1
        assert caught.group_contains(ValueError, match="boom")
        assert not bus.subscribed


async def test_run_twice_at_once_is_refused(redis_server: RedisServer) -> None:  # noqa: F811
    async with _open(redis_server.host, redis_server.port) as client:
        bus = NodeBus(client, prefix=_prefix(), node_id="b")
        async with trio.open_nursery() as nursery:
            await nursery.start(bus.run, Inbox().deliver)
            with pytest.raises(RuntimeError, match="already running"):
                await bus.run(Inbox().deliver)
            nursery.cancel_scope.cancel()


# coredis 6.9 never closes the anyio memory streams of a connection whose connect() failed, so
# each failed attempt while the server is down leaves garbage that warns when collected. That
# garbage is collected here, before the test ends, so the warnings do not land in a later test.
@pytest.mark.filterwarnings("ignore:Unclosed <MemoryObject:ResourceWarning")
async def test_resubscribes_after_redis_restarts(tmp_path: Path) -> None:
    try:
        await _restart_while_subscribed(tmp_path)
    finally:
        gc.collect()


async def _restart_while_subscribed(tmp_path: Path) -> None:
    prefix = _prefix()
    with restartable_redis(tmp_path / "redis") as redis, capture_logs() as logs:
        async with (
            coredis.Redis.from_url(redis.url, decode_responses=False) as ca,
            coredis.Redis.from_url(redis.url, decode_responses=False) as cb,
            trio.open_nursery() as nursery,
        ):
            a = NodeBus(ca, prefix=prefix, node_id="a")
            b = NodeBus(cb, prefix=prefix, node_id="b")
            inbox = Inbox()
            await nursery.start(b.run, inbox.deliver)
            assert await a.publish("b", b"before") == 1
            assert await inbox.take(1) == [b"before"]

            def disconnects() -> list[float]:
                return [e["retry_in"] for e in logs if e["event"] == "bus_disconnected"]

            redis.kill()
            await _wait_until(lambda: not b.subscribed)
            # The publisher is told, not silently dropped.
            with pytest.raises((coredis.exceptions.ConnectionError, TimeoutError)):
                await a.publish("b", b"while down")
            # b notices the loss, then fails to get back in while the server is down.
            await _wait_until(lambda: len(disconnects()) >= 3)
            assert b.reconnects == 0
            assert not b.subscribed

            redis.start()
            with trio.fail_after(5):
                await b.wait_subscribed()
            assert b.reconnects >= 1
            assert await a.publish("b", b"after") == 1
            assert await inbox.take(1) == [b"after"]
            assert inbox.pending() == []  # "while down" was lost, nothing else came
            nursery.cancel_scope.cancel()

    warnings = [e for e in logs if e["event"] == "bus_disconnected"]
    assert all(e["log_level"] == "warning" and e["node"] == "b" for e in warnings)
    assert [e["retry_in"] for e in warnings[:3]] == [0.05, 0.1, 0.2]  # backing off
    assert "ConnectionError" in warnings[0]["error"]
    resubscribed = [e for e in logs if e["event"] == "bus_resubscribed"]
    assert resubscribed
    assert all(e["node"] == "b" for e in resubscribed)
