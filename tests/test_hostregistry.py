"""The shared host registry against a real redis-server; expiry is the server's, so real time."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
import trio

coredis = pytest.importorskip("coredis", reason="coredis is not installed (the redis extra)")

from redis_server import RedisServer, redis_server  # noqa: E402, F401

from lobby.hostregistry import RedisHostRegistry  # noqa: E402

TTL = 5_000


@pytest.fixture
async def client(redis_server: RedisServer) -> AsyncIterator[coredis.Redis[bytes]]:  # noqa: F811
    async with coredis.Redis(redis_server.host, redis_server.port, decode_responses=False) as c:
        await c.flushdb()
        yield c


@pytest.fixture
def registry(client: coredis.Redis[bytes]) -> RedisHostRegistry:
    return RedisHostRegistry(client)


async def test_register_heartbeat_round_trip(registry: RedisHostRegistry) -> None:
    assert await registry.live_hosts() == []
    gen = await registry.register("h1", "10.0.0.1", 7000, 8, 2, [5, 3], ttl_ms=TTL)
    [info] = await registry.live_hosts(now=100.0)
    assert (info.host_id, info.address, info.capacity, info.load) == (
        "h1",
        ("10.0.0.1", 7000),
        8,
        2,
    )
    assert (info.rooms, info.players, info.draining) == (2, 0, False)
    assert info.adopted_rooms == frozenset({3, 5})
    assert info.generation == gen
    assert 99.0 < info.last_seen <= 100.0

    assert await registry.heartbeat("h1", gen, 4, 3, 10, True, ttl_ms=TTL)
    [info] = await registry.live_hosts()
    assert (info.load, info.rooms, info.players, info.draining) == (4, 3, 10, True)
    # Register-time fields survive the heartbeat.
    assert (info.address, info.capacity, info.adopted_rooms) == (
        ("10.0.0.1", 7000), 8, frozenset({3, 5}))  # fmt: skip
    assert info.generation == gen


async def test_reregister_takes_over_and_fences_old_process(registry: RedisHostRegistry) -> None:
    old = await registry.register("h1", "10.0.0.1", 7000, 8, 0, [], ttl_ms=TTL)
    # The restarted process does not wait for the old lease to expire.
    new = await registry.register("h1", "10.0.0.2", 7001, 4, 0, [9], ttl_ms=TTL)
    assert new > old
    assert not await registry.heartbeat("h1", old, 1, 1, 1, False, ttl_ms=TTL)
    assert await registry.heartbeat("h1", new, 2, 1, 2, False, ttl_ms=TTL)
    assert not await registry.remove("h1", old)
    [info] = await registry.live_hosts()
    assert (info.generation, info.address, info.load) == (new, ("10.0.0.2", 7001), 2)
    assert info.adopted_rooms == frozenset({9})


async def test_expired_lease_disappears(
    registry: RedisHostRegistry, client: coredis.Redis[bytes]
) -> None:
    gen = await registry.register("h1", "10.0.0.1", 7000, 8, 0, [], ttl_ms=50)
    await registry.register("h2", "10.0.0.2", 7000, 8, 0, [], ttl_ms=TTL)
    with trio.fail_after(5):
        while [h.host_id for h in await registry.live_hosts()] != ["h2"]:
            await trio.sleep(0.02)
    assert await client.smembers("framesync:hosts") == {b"h2"}  # pruned from the index
    assert not await registry.heartbeat("h1", gen, 0, 0, 0, False, ttl_ms=TTL)
    # Registering again works and starts a new generation.
    assert await registry.register("h1", "10.0.0.1", 7000, 8, 0, [], ttl_ms=TTL) > gen
    assert [h.host_id for h in await registry.live_hosts()] == ["h1", "h2"]


async def test_hosts_sorted_and_remove(registry: RedisHostRegistry) -> None:
    gb = await registry.register("b", "10.0.0.2", 7000, 8, 0, [], ttl_ms=TTL)
    ga = await registry.register("a", "10.0.0.1", 7000, 8, 0, [], ttl_ms=TTL)
    assert [h.host_id for h in await registry.live_hosts()] == ["a", "b"]
    assert not await registry.remove("b", gb + 1)
    assert await registry.remove("b", gb)
    assert not await registry.remove("b", gb)
    assert [h.host_id for h in await registry.live_hosts()] == ["a"]
    assert not await registry.heartbeat("b", gb, 0, 0, 0, False, ttl_ms=TTL)
    assert await registry.heartbeat("a", ga, 0, 0, 0, False, ttl_ms=TTL)
