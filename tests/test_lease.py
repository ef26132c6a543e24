"""Leases against a real redis-server. Expiry is the server's, so these tests use real time."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
import trio

coredis = pytest.importorskip("coredis", reason="coredis is not installed (the redis extra)")

from redis_server import RedisServer, redis_server  # noqa: E402, F401

from lobby.lease import LeaseStore  # noqa: E402


def _client(server: RedisServer) -> coredis.Redis[bytes]:
    return coredis.Redis(server.host, server.port, decode_responses=False)


@pytest.fixture
async def client(redis_server: RedisServer) -> AsyncIterator[coredis.Redis[bytes]]:  # noqa: F811
    async with _client(redis_server) as c:
        await c.flushdb()
        yield c


@pytest.fixture
def leases(client: coredis.Redis[bytes]) -> LeaseStore:
    return LeaseStore(client)


async def _wait_until_free(leases: LeaseStore, name: str, timeout: float = 5.0) -> None:
    with trio.fail_after(timeout):
        while await leases.read(name) is not None:
            await trio.sleep(0.02)


async def test_acquire_renew_release(leases: LeaseStore) -> None:
    assert await leases.read("mm") is None
    gen = await leases.acquire("mm", "node-a", ttl_ms=5_000, payload=b"load=1")
    assert gen is not None
    info = await leases.read("mm")
    assert info is not None
    assert (info.owner, info.generation, info.payload) == ("node-a", gen, b"load=1")
    assert 0 < info.remaining_ms <= 5_000

    assert await leases.renew("mm", "node-a", gen, ttl_ms=60_000, payload=b"load=2")
    info = await leases.read("mm")
    assert info is not None
    assert info.payload == b"load=2"
    assert info.remaining_ms > 5_000
    # Without a payload, renew keeps the one there.
    assert await leases.renew("mm", "node-a", gen, ttl_ms=60_000)
    info = await leases.read("mm")
    assert info is not None
    assert (info.owner, info.generation, info.payload) == ("node-a", gen, b"load=2")

    assert await leases.release("mm", "node-a", gen)
    assert await leases.read("mm") is None
    assert not await leases.release("mm", "node-a", gen)
    assert not await leases.renew("mm", "node-a", gen, ttl_ms=5_000)
    # The generation survives the lease: the next holder is fenced off from this one.
    assert await leases.acquire("mm", "node-a", ttl_ms=5_000) == gen + 1


async def test_held_lease_refuses_everyone_else(leases: LeaseStore) -> None:
    gen = await leases.acquire("mm", "node-a", ttl_ms=5_000, payload=b"a")
    assert gen is not None
    assert await leases.acquire("mm", "node-b", ttl_ms=5_000) is None
    # No re-entry: the same owner (a restarted process, say) waits for expiry too.
    assert await leases.acquire("mm", "node-a", ttl_ms=5_000) is None
    assert not await leases.renew("mm", "node-b", gen, ttl_ms=5_000, payload=b"b")
    assert not await leases.renew("mm", "node-a", gen + 1, ttl_ms=5_000)
    assert not await leases.release("mm", "node-b", gen)
    assert not await leases.release("mm", "node-a", gen - 1)
    info = await leases.read("mm")
    assert info is not None
    assert (info.owner, info.generation, info.payload) == ("node-a", gen, b"a")


async def test_expiry_hands_over_with_a_higher_generation(leases: LeaseStore) -> None:
    old = await leases.acquire("mm", "node-a", ttl_ms=200)
    assert old is not None
    assert await leases.acquire("mm", "node-b", ttl_ms=5_000) is None
    await trio.sleep(0.25)
    await _wait_until_free(leases, "mm")

    new = await leases.acquire("mm", "node-b", ttl_ms=5_000, payload=b"b")
    assert new is not None
    assert new > old
    # The old holder wakes up: everything it tries with its stale generation fails and leaves
    # the new holder's lease alone, whichever owner name it uses.
    assert not await leases.renew("mm", "node-a", old, ttl_ms=5_000, payload=b"a")
    assert not await leases.renew("mm", "node-a", new, ttl_ms=5_000)
    assert not await leases.release("mm", "node-a", old)
    assert not await leases.renew("mm", "node-b", old, ttl_ms=5_000)
    info = await leases.read("mm")
    assert info is not None
    assert (info.owner, info.generation, info.payload) == ("node-b", new, b"b")


async def test_renewing_keeps_the_lease_past_its_ttl(leases: LeaseStore) -> None:
    gen = await leases.acquire("host:7", "host-7", ttl_ms=400)
    assert gen is not None
    for load in range(8):  # ~0.8 s in all, twice the TTL
        await trio.sleep(0.1)
        assert await leases.renew("host:7", "host-7", gen, ttl_ms=400, payload=bytes([load]))
    info = await leases.read("host:7")
    assert info is not None
    assert (info.owner, info.generation, info.payload) == ("host-7", gen, bytes([7]))


async def test_payload_round_trips(leases: LeaseStore) -> None:
    every_byte = bytes(range(256))
    gen = await leases.acquire("p", "ü-owner", ttl_ms=5_000, payload=every_byte)
    assert gen is not None
    info = await leases.read("p")
    assert info is not None
    assert (info.owner, info.payload) == ("ü-owner", every_byte)
    assert await leases.renew("p", "ü-owner", gen, ttl_ms=5_000, payload=b"")
    info = await leases.read("p")
    assert info is not None
    assert info.payload == b""


async def test_generations_count_per_name(leases: LeaseStore) -> None:
    first_x = await leases.acquire("x", "a", ttl_ms=5_000)
    first_y = await leases.acquire("y", "a", ttl_ms=5_000)
    assert first_x is not None and first_y is not None
    assert await leases.release("x", "a", first_x)
    assert await leases.acquire("x", "a", ttl_ms=5_000) == first_x + 1
    info = await leases.read("y")
    assert info is not None
    assert info.generation == first_y


async def test_concurrent_acquires_have_exactly_one_winner(
    redis_server: RedisServer,  # noqa: F811
    client: coredis.Redis[bytes],
) -> None:
    results: list[tuple[str, int | None]] = []

    async def contend(c: coredis.Redis[bytes], owner: str) -> None:
        gen = await LeaseStore(c).acquire("mm", owner, ttl_ms=5_000, payload=owner.encode())
        results.append((owner, gen))

    # Several clients, as separate lobby nodes would be, each with several tasks.
    async with (
        _client(redis_server) as c1,
        _client(redis_server) as c2,
        trio.open_nursery() as nursery,
    ):
        for i in range(24):
            nursery.start_soon(contend, (client, c1, c2)[i % 3], f"node-{i}")

    winners = [(owner, gen) for owner, gen in results if gen is not None]
    assert len(results) == 24
    assert len(winners) == 1
    owner, gen = winners[0]
    info = await LeaseStore(client).read("mm")
    assert info is not None
    assert (info.owner, info.generation, info.payload) == (owner, gen, owner.encode())


async def test_ttl_must_be_positive(leases: LeaseStore) -> None:
    with pytest.raises(ValueError, match="ttl_ms"):
        await leases.acquire("mm", "a", ttl_ms=0)
    with pytest.raises(ValueError, match="ttl_ms"):
        await leases.renew("mm", "a", 1, ttl_ms=-5)
