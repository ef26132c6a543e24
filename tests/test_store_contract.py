"""The storage contract: every ``AsyncStore`` backend behaves as ``LocalStore(SqliteStore)`` does.

Each contract test runs twice: on SQLite in memory, and on ``RedisStore`` against a real
redis-server (that run is skipped, with the reason, without redis-server or coredis). The
Redis run uses three clients, as three lobby nodes would, for the races.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import AsyncIterator, Mapping
from contextlib import AsyncExitStack
from typing import TYPE_CHECKING, Any

import pytest
import trio
from redis_server import RedisServer, redis_server  # noqa: F401

from battle.config import RosterEntry
from lobby.ratings import Rating, default_rating, rate_match
from lobby.sqlitestore import LocalStore, SqliteStore
from lobby.store import (
    Account,
    AsyncStore,
    MatchRecord,
    NameTaken,
    PlayerInMatch,
)

if TYPE_CHECKING:
    import coredis

    from lobby.redisstore import RedisStore

BIG = 2**64 - 1
"""The largest u64 id."""
DOUBLE = 2**53
"""Ids from here up do not survive a trip through a Lua number (a double)."""
NO_COREDIS = "coredis is not installed (the redis extra)"


# --- backends -----------------------------------------------------------------------------------


class Backend:
    """A store under test, its peers (other nodes' stores) and its non-``AsyncStore`` reads."""

    store: AsyncStore
    peers: list[AsyncStore]

    async def match(self, match_id: int) -> MatchRecord | None:
        raise NotImplementedError

    async def match_for_player(self, player_id: int) -> MatchRecord | None:
        raise NotImplementedError

    async def matches_on_host(self, host_id: str) -> list[MatchRecord]:
        raise NotImplementedError

    async def dump(self) -> bytes:
        """Every byte the backend holds, to look for what must not be there."""
        raise NotImplementedError


class SqliteBackend(Backend):
    def __init__(self, sqlite: SqliteStore) -> None:
        self.sqlite = sqlite
        self.store = LocalStore(sqlite)
        self.peers = [self.store]  # one process: there are no other nodes

    async def match(self, match_id: int) -> MatchRecord | None:
        return self.sqlite.match(match_id)

    async def match_for_player(self, player_id: int) -> MatchRecord | None:
        return self.sqlite.match_for_player(player_id)

    async def matches_on_host(self, host_id: str) -> list[MatchRecord]:
        return self.sqlite.matches_on_host(host_id)

    async def dump(self) -> bytes:
        return "\n".join(self.sqlite._db.iterdump()).encode()


class RedisBackend(Backend):
    def __init__(self, stores: list[RedisStore], client: coredis.Redis[bytes]) -> None:
        self.redis = stores[0]
        self.store = stores[0]
        self.peers = list(stores)
        self.client = client

    async def match(self, match_id: int) -> MatchRecord | None:
        return await self.redis.match(match_id)

    async def match_for_player(self, player_id: int) -> MatchRecord | None:
        return await self.redis.match_for_player(player_id)

    async def matches_on_host(self, host_id: str) -> list[MatchRecord]:
        return await self.redis.matches_on_host(host_id)

    async def dump(self) -> bytes:
        return await _redis_dump(self.client)


async def _redis_dump(client: coredis.Redis[bytes]) -> bytes:
    parts: list[bytes] = []
    async for key in client.scan_iter():
        parts.append(key)
        kind = await client.type(key)
        if kind == b"hash":
            for field, value in (await client.hgetall(key)).items():
                parts += [field, value]
        elif kind == b"zset":
            parts += await client.zrange(key, 0, -1)
        elif kind == b"string":
            parts.append(await client.get(key) or b"")
        else:
            raise AssertionError(f"unexpected {kind!r} key {key!r}")
    return b"\n".join(parts)


@pytest.fixture(params=["sqlite", "redis"])
def redis_or_none(request: pytest.FixtureRequest) -> RedisServer | None:
    """None for the SQLite run; the server for the Redis run, skipped if there is none."""
    if request.param == "sqlite":
        return None
    pytest.importorskip("coredis", reason=NO_COREDIS)
    server: RedisServer = request.getfixturevalue("redis_server")
    return server


@pytest.fixture
async def backend(redis_or_none: RedisServer | None) -> AsyncIterator[Backend]:
    if redis_or_none is None:
        sqlite = SqliteStore(":memory:")
        try:
            yield SqliteBackend(sqlite)
        finally:
            sqlite.close()
        return
    import coredis  # noqa: PLC0415 - only when installed (the SQLite run needs neither)

    from lobby.redisstore import RedisStore  # noqa: PLC0415

    async with AsyncExitStack() as stack:
        clients = [
            await stack.enter_async_context(
                coredis.Redis(redis_or_none.host, redis_or_none.port, decode_responses=False)
            )
            for _ in range(3)
        ]
        await clients[0].flushdb()
        yield RedisBackend([RedisStore(c) for c in clients], clients[0])


@pytest.fixture
def redis_only(request: pytest.FixtureRequest) -> RedisServer:
    """The server for the Redis-only tests at the end, skipped without it or coredis."""
    pytest.importorskip("coredis", reason=NO_COREDIS)
    server: RedisServer = request.getfixturevalue("redis_server")
    return server


@pytest.fixture
async def redis_client(redis_only: RedisServer) -> AsyncIterator[coredis.Redis[bytes]]:
    import coredis  # noqa: PLC0415 - only when installed

    async with coredis.Redis(redis_only.host, redis_only.port, decode_responses=False) as c:
        await c.flushdb()
        yield c


# --- helpers ------------------------------------------------------------------------------------


def _record(
    match_id: int,
    host_id: str,
    players: list[int],
    *,
    room_id: int = 7,
    started_at: float = 12.5,
) -> MatchRecord:
    return MatchRecord(
        match_id=match_id,
        mode="2v2" if len(players) == 4 else "1v1",
        host_id=host_id,
        room_id=room_id,
        udp_host="127.0.0.1",
        udp_port=40000,
        tick_rate=15,
        ticket_key=bytes([match_id % 256]) * 31 + b"\x00",
        roster=tuple(RosterEntry(slot, pid, slot % 2) for slot, pid in enumerate(players)),
        started_at=started_at,
    )


RESULT: dict[Any, Any] = {"winner": 0, "frames": 900, "scores": [3, 1], 7: {"b": b"\x00\xff"}}
"""What a room reports; msgpack keeps the int key and the bytes."""


async def _play(
    store: AsyncStore, match_id: int, winner: list[int], loser: list[int], t: float
) -> tuple[bool, dict[int, Rating]]:
    """Report a match won by ``winner``, rated from the stored ratings; (recorded, after)."""
    teams = [winner, loser]
    before = await store.ratings(winner + loser)
    rated = rate_match([[before[p] for p in team] for team in teams], winner_team=0)
    after = {
        pid: r
        for team, rs in zip(teams, rated, strict=True)
        for pid, r in zip(team, rs, strict=True)
    }
    recorded = await store.record_result(match_id, RESULT, teams, before, after, t, mode="1v1")
    return recorded, after


# --- accounts -----------------------------------------------------------------------------------


async def test_accounts_and_case_insensitive_names(backend: Backend) -> None:
    s = backend.store
    alice = await s.create_account("Alice", "scrypt$a")
    with pytest.raises(NameTaken):
        await s.create_account("aLICE", "scrypt$other")
    bob = await s.create_account("bob", "scrypt$b")
    dev = await s.create_device_account("device-1")
    assert 0 < alice < bob < dev  # one increasing sequence for both kinds of account
    for bad in ["", "bad name", "émile", "x" * 33]:
        with pytest.raises(ValueError):
            await s.create_account(bad, "scrypt$c")
    with pytest.raises(ValueError):
        await s.create_account("carol", "")
    assert await s.account_by_name("carol") is None  # refusals write nothing

    expected = Account(alice, "Alice", "scrypt$a", has_device=False)
    assert await s.account_by_name("ALICE") == expected
    assert await s.account_by_name("alice") == expected
    assert await s.account(alice) == expected
    assert await s.account(bob) == Account(bob, "bob", "scrypt$b", has_device=False)
    assert await s.account(999) is None
    assert await s.account_by_name("alic") is None

    # Case folding is ASCII only, as SQLite's NOCASE: the Kelvin sign is not a "k".
    k = await s.create_account("k", "scrypt$k")
    assert (await s.account_by_name("K")) == Account(k, "k", "scrypt$k", has_device=False)
    assert await s.account_by_name("\u212a") is None


async def test_device_accounts_get_or_create(backend: Backend) -> None:
    s = backend.store
    assert await s.account_by_device("device-1") is None
    dev = await s.create_device_account("device-1")
    assert await s.create_device_account("device-1") == dev
    other = await s.create_device_account("device-2")
    assert other > dev
    expected = Account(dev, None, None, has_device=True)
    assert await s.account_by_device("device-1") == expected
    assert await s.account(dev) == expected
    assert await s.account_by_device("device-3") is None
    for bad in ["", "with space", "é"]:
        with pytest.raises(ValueError):
            await s.create_device_account(bad)
        with pytest.raises(ValueError):
            await s.account_by_device(bad)
    assert await s.create_device_account("device-3") > other


async def test_device_id_not_stored_in_clear(backend: Backend) -> None:
    await backend.store.create_account("Visible-Name", "scrypt$x")
    dev = await backend.store.create_device_account("secret-device-id-123")
    dump = await backend.dump()
    assert b"Visible-Name" in dump  # the dump does show what is stored
    assert b"secret-device-id-123" not in dump
    assert await backend.store.create_device_account("secret-device-id-123") == dev


async def test_concurrent_account_creation_has_one_winner(backend: Backend) -> None:
    outcomes: list[int | None] = []

    async def create(store: AsyncStore, i: int) -> None:
        try:
            outcomes.append(await store.create_account("Racer" if i % 2 else "rACER", f"h{i}"))
        except NameTaken:
            outcomes.append(None)

    async with trio.open_nursery() as nursery:
        for i in range(20):
            nursery.start_soon(create, backend.peers[i % len(backend.peers)], i)
    winners = [o for o in outcomes if o is not None]
    assert len(outcomes) == 20
    assert len(winners) == 1
    account = await backend.store.account_by_name("racer")
    assert account is not None
    assert account.player_id == winners[0]
    assert await backend.store.create_account("next", "h") > winners[0]


async def test_concurrent_device_accounts_agree(backend: Backend) -> None:
    ids: list[int] = []

    async def create(store: AsyncStore) -> None:
        ids.append(await store.create_device_account("shared-device"))

    async with trio.open_nursery() as nursery:
        for i in range(20):
            nursery.start_soon(create, backend.peers[i % len(backend.peers)])
    assert len(ids) == 20
    assert len(set(ids)) == 1
    assert await backend.store.account_by_device("shared-device") == Account(
        ids[0], None, None, has_device=True
    )
    assert await backend.store.create_device_account("another-device") > ids[0]


# --- ratings, results and history ---------------------------------------------------------------


async def test_ratings_default_and_updated_by_results(backend: Backend) -> None:
    s = backend.store
    d = default_rating()
    assert await s.ratings([]) == {}
    assert await s.ratings([5, BIG, DOUBLE + 1]) == {5: d, BIG: d, DOUBLE + 1: d}
    recorded, after = await _play(s, 1, [1, 2], [3], 100.0)
    assert recorded
    ratings = await s.ratings([3, 1, 9, 2])
    assert list(ratings) == [3, 1, 9, 2]
    assert ratings == {1: after[1], 2: after[2], 3: after[3], 9: d}
    assert ratings[1].ordinal > 0 > ratings[3].ordinal
    # The next match is rated from the stored ratings.
    recorded, again = await _play(s, 2, [1], [3], 200.0)
    assert recorded
    assert (await s.ratings([1]))[1] == again[1]
    assert again[1].mu > after[1].mu
    assert await s.matches_played(1) == 2
    assert await s.matches_played(2) == 1
    assert await s.matches_played(9) == 0


async def test_record_result_is_idempotent_and_ends_the_match(backend: Backend) -> None:
    s = backend.store
    await s.put_match(_record(1, "h1", [1, 2]))
    await s.put_match(_record(2, "h1", [3, 4]))
    recorded, after = await _play(s, 1, [1], [2], 100.0)
    assert recorded
    assert await backend.match(1) is None  # the result ends the match in progress
    assert await backend.match_for_player(1) is None
    assert await backend.match_for_player(2) is None
    assert [m.match_id for m in await s.matches_in_progress()] == [2]
    assert [m.match_id for m in await backend.matches_on_host("h1")] == [2]
    ratings = await s.ratings([1, 2])
    history = await s.history(1, 10)

    # The same match reported again, even with other data: nothing changes.
    recorded, _ = await _play(s, 1, [2], [1], 200.0)
    assert not recorded
    assert await s.ratings([1, 2]) == ratings
    assert await s.history(1, 10) == history
    assert await s.matches_played(1) == await s.matches_played(2) == 1
    # Nor does a match in progress that reuses the id (e.g. a late re-allocation) get ended.
    await s.put_match(_record(1, "h2", [5, 6]))
    recorded, _ = await _play(s, 1, [5], [6], 300.0)
    assert not recorded
    assert await backend.match(1) == _record(1, "h2", [5, 6])

    (entry,) = history
    assert (entry.match_id, entry.mode, entry.ended_at, entry.team) == (1, "1v1", 100.0, 0)
    assert isinstance(entry.ended_at, float)
    assert entry.teams == ((1,), (2,))
    assert entry.result == RESULT
    assert entry.rating_before == default_rating()
    assert entry.rating_after == after[1]
    (loser,) = await s.history(2, 10)
    assert (loser.team, loser.rating_after) == (1, after[2])

    # A result for a match that was not (or no longer) in progress is recorded all the same.
    recorded, _ = await _play(s, 77, [3], [8], 400.0)
    assert recorded
    assert await backend.match(2) == _record(2, "h1", [3, 4])  # other matches stay


async def test_record_result_validates_before_writing(backend: Backend) -> None:
    s = backend.store
    await s.put_match(_record(1, "h", [1, 2]))
    r = default_rating()
    bad: list[tuple[int, list[list[int]], Mapping[int, Rating], Mapping[int, Rating], float]] = [
        (1, [[1], [2]], {1: r}, {1: r, 2: r}, 1.0),  # ratings_before misses a player
        (1, [[1], [2]], {1: r, 2: r}, {1: r, 2: r, 3: r}, 1.0),  # rates a bystander
        (1, [[1], [1]], {1: r}, {1: r}, 1.0),  # a player twice
        (1, [[1, 2], [2]], {1: r, 2: r}, {1: r, 2: r}, 1.0),
        (1, [[1], [2]], {1: r, 2: r}, {1: r, 2: r}, math.nan),
        (1, [[1], [2]], {1: r, 2: r}, {1: r, 2: r}, math.inf),
        (1, [[1], [2]], {1: r, 2: r}, {1: r, 2: r}, -1.0),
        (2**64, [[1], [2]], {1: r, 2: r}, {1: r, 2: r}, 1.0),  # not a u64
        (-1, [[1], [2]], {1: r, 2: r}, {1: r, 2: r}, 1.0),
        (1, [[1], [-1]], {1: r, -1: r}, {1: r, -1: r}, 1.0),
    ]
    for match_id, teams, before, after, t in bad:
        with pytest.raises(ValueError):
            await s.record_result(match_id, {}, teams, before, after, t, mode="1v1")
    # Too large a player id: SqliteStore packs the teams (msgpack: OverflowError) before it
    # checks the ids (ValueError).
    with pytest.raises((ValueError, OverflowError)):
        await s.record_result(1, {}, [[1], [2**64]], {1: r, 2**64: r}, {1: r, 2**64: r}, 1.0,
                              mode="1v1")  # fmt: skip
    assert await s.history(1, 10) == []
    assert await s.matches_played(1) == 0
    assert await s.ratings([1, 2]) == {1: r, 2: r}
    assert await backend.match(1) == _record(1, "h", [1, 2])
    recorded, _ = await _play(s, 1, [1], [2], 1.0)  # the match id is still free
    assert recorded


async def test_history_newest_first_with_limit(backend: Backend) -> None:
    s = backend.store
    for match_id, winner, loser, t in [  # played in this order
        (4, [2], [1], 0.0),
        (10, [1], [2], 10.0),
        (11, [1], [3], 20.0),
        (12, [3], [1], 20.0),  # the same time as 11: the higher match id comes first
        (5, [1], [2], 30.0),
        (13, [2], [3], 40.0),  # not player 1's
    ]:
        recorded, _ = await _play(s, match_id, winner, loser, t)
        assert recorded
    history = await s.history(1, 10)
    assert [e.match_id for e in history] == [5, 12, 11, 10, 4]
    assert [e.ended_at for e in history] == [30.0, 20.0, 20.0, 10.0, 0.0]
    assert [e.team for e in history] == [0, 1, 0, 0, 1]
    # Each entry's rating_before is what the previous (older) match left.
    for newer, older in itertools.pairwise(history):
        assert newer.rating_before == older.rating_after
    assert history[0].rating_after == (await s.ratings([1]))[1]
    assert await s.history(1, 2) == history[:2]
    assert await s.history(1, 1) == history[:1]
    assert await s.history(1, 0) == []
    assert await s.history(99, 10) == []
    with pytest.raises(ValueError):
        await s.history(1, -1)
    assert await s.matches_played(1) == 5
    assert await s.matches_played(3) == 3


async def test_history_ties_follow_sqlites_signed_order(backend: Backend) -> None:
    """SQLite stores ids from 2**63 up as negative i64, and breaks ``ended_at`` ties on that.

    The lobby allocates match ids below 2**63, so this only pins the two backends together.
    """
    s = backend.store
    for match_id in [2**63 + 1, 11, BIG, 12, 2**63 - 1]:
        recorded, _ = await _play(s, match_id, [1], [2], 20.0)
        assert recorded
    recorded, _ = await _play(s, 2**63 + 5, [1], [2], 25.0)
    assert recorded
    assert [e.match_id for e in await s.history(2, 10)] == [
        2**63 + 5,  # the newest
        2**63 - 1,
        12,
        11,
        BIG,  # -1 as an i64
        2**63 + 1,  # -2**63 + 1
    ]


# --- matches in progress ------------------------------------------------------------------------


async def test_matches_in_progress(backend: Backend) -> None:
    s = backend.store
    big = 2**63 + 7
    await s.put_match(_record(BIG, "host-a", [11, 12]))
    await s.put_match(_record(1, "host-a", [1, 2]))
    await s.put_match(_record(big, "host-a", [3, 4]))
    await s.put_match(_record(2, "host-b", [5, 6]))
    await s.put_match(_record(3, "host-ab", [7, 8]))  # "host-a" is a prefix of this id
    await s.put_match(_record(4, "", [9, 10, 13, 14]))
    await s.put_match(_record(5, "hôte", [15, 16]))
    record = await backend.match(1)
    assert record == _record(1, "host-a", [1, 2])
    assert record is not None
    assert record.seat(2) == RosterEntry(1, 2, 1)
    assert await backend.match_for_player(4) == _record(big, "host-a", [3, 4])
    assert await backend.match_for_player(99) is None
    assert await backend.match(99) is None
    assert [m.match_id for m in await backend.matches_on_host("host-a")] == [1, big, BIG]
    assert [m.match_id for m in await backend.matches_on_host("host-ab")] == [3]
    assert [m.match_id for m in await backend.matches_on_host("")] == [4]
    assert await backend.matches_on_host("hôte") == [_record(5, "hôte", [15, 16])]
    assert await backend.matches_on_host("host-c") == []
    assert [m.match_id for m in await s.matches_in_progress()] == [1, 2, 3, 4, 5, big, BIG]

    # A player in another match: refused, and nothing changes (not even the match replaced).
    with pytest.raises(PlayerInMatch):
        await s.put_match(_record(6, "host-b", [6, 17]))
    with pytest.raises(PlayerInMatch):
        await s.put_match(_record(2, "host-c", [5, 1]))
    assert await backend.match(6) is None
    assert await backend.match_for_player(17) is None
    assert await backend.match(2) == _record(2, "host-b", [5, 6])
    assert await backend.match_for_player(6) == _record(2, "host-b", [5, 6])

    # Re-allocated: the same match id replaces the record, its host and its players.
    moved = _record(2, "host-c", [5, 18], room_id=9, started_at=20.0)
    await s.put_match(moved)
    await s.put_match(moved)  # again: still the same one record
    assert await backend.match(2) == moved
    assert await backend.matches_on_host("host-b") == []
    assert await backend.matches_on_host("host-c") == [moved]
    assert await backend.match_for_player(18) == moved
    assert await backend.match_for_player(5) == moved
    assert await backend.match_for_player(6) is None
    await s.put_match(_record(6, "host-b", [6, 17]))  # player 6 is free again

    assert await s.end_match(1)
    assert not await s.end_match(1)
    assert not await s.end_match(12345)
    assert await backend.match_for_player(1) is None
    assert await backend.match(1) is None
    assert [m.match_id for m in await backend.matches_on_host("host-a")] == [big, BIG]
    await s.put_match(_record(7, "host-a", [1, 2]))  # their players are free again
    assert [m.match_id for m in await s.matches_in_progress()] == [2, 3, 4, 5, 6, 7, big, BIG]


async def test_put_match_validates_before_writing(backend: Backend) -> None:
    s = backend.store
    for record in [
        _record(1, "h", [1, 2, 1]),  # a player twice
        _record(1, "h", [1, 2], started_at=math.nan),
        _record(1, "h", [1, 2], started_at=-1.0),
        _record(2**64, "h", [1, 2]),
        _record(-1, "h", [1, 2]),
        _record(1, "h", [1, 2**64]),
        _record(1, "h", [1, 2], room_id=2**64),
    ]:
        with pytest.raises(ValueError):
            await s.put_match(record)
    assert await s.matches_in_progress() == []
    assert await backend.match_for_player(1) is None
    await s.put_match(_record(1, "h", [1, 2]))
    assert [m.match_id for m in await s.matches_in_progress()] == [1]


async def test_concurrent_put_match_for_one_player_has_one_winner(backend: Backend) -> None:
    placed: list[int] = []
    refused: list[int] = []

    async def put(store: AsyncStore, i: int) -> None:
        try:
            await store.put_match(_record(100 + i, f"host-{i % 3}", [42, 1000 + i]))
            placed.append(i)
        except PlayerInMatch:
            refused.append(i)

    async with trio.open_nursery() as nursery:
        for i in range(20):
            nursery.start_soon(put, backend.peers[i % len(backend.peers)], i)
    assert len(placed) == 1
    assert len(refused) == 19
    (winner,) = placed
    expected = _record(100 + winner, f"host-{winner % 3}", [42, 1000 + winner])
    assert await backend.store.matches_in_progress() == [expected]
    assert await backend.match_for_player(42) == expected
    for i in refused:
        assert await backend.match_for_player(1000 + i) is None


# --- ids ------------------------------------------------------------------------------------------


async def test_u64_ids_round_trip(backend: Backend) -> None:
    s = backend.store
    record = _record(BIG, "h", [BIG, BIG - 1], room_id=BIG)
    await s.put_match(record)
    # Neighbours that a double could not tell apart are different players and matches.
    near = _record(DOUBLE + 1, "h", [DOUBLE + 1, DOUBLE], room_id=DOUBLE + 1)
    await s.put_match(near)
    await s.put_match(_record(DOUBLE, "h", [DOUBLE + 2, DOUBLE + 3]))
    assert await backend.match(BIG) == record
    assert await backend.match(DOUBLE + 1) == near
    assert await backend.match_for_player(BIG) == record
    assert await backend.match_for_player(DOUBLE) == near
    assert [m.match_id for m in await s.matches_in_progress()] == [DOUBLE, DOUBLE + 1, BIG]

    recorded, after = await _play(s, BIG, [BIG], [BIG - 1], 5.0)
    assert recorded
    assert await backend.match(BIG) is None
    (entry,) = await s.history(BIG, 1)
    assert (entry.match_id, entry.teams) == (BIG, ((BIG,), (BIG - 1,)))
    assert await s.ratings([BIG, BIG - 1]) == after
    assert await s.matches_played(BIG) == 1
    recorded, _ = await _play(s, DOUBLE + 1, [DOUBLE + 1], [DOUBLE], 6.0)
    assert recorded
    assert await backend.match(DOUBLE) == _record(DOUBLE, "h", [DOUBLE + 2, DOUBLE + 3])
    assert [e.match_id for e in await s.history(DOUBLE, 5)] == [DOUBLE + 1]
    assert await s.matches_played(DOUBLE + 2) == 0

    for bad in [2**64, -1]:
        with pytest.raises(ValueError):
            await s.account(bad)
        with pytest.raises(ValueError):
            await s.ratings([1, bad])
        with pytest.raises(ValueError):
            await s.matches_played(bad)
        with pytest.raises(ValueError):
            await s.history(bad, 1)
        with pytest.raises(ValueError):
            await s.end_match(bad)
        with pytest.raises(ValueError):
            await backend.match(bad)
        with pytest.raises(ValueError):
            await backend.match_for_player(bad)


# --- Redis only ---------------------------------------------------------------------------------


async def test_redis_prefixes_keep_deployments_apart(redis_client: coredis.Redis[bytes]) -> None:
    from lobby.redisstore import RedisStore  # noqa: PLC0415

    a, b = RedisStore(redis_client, prefix="a"), RedisStore(redis_client, prefix="b")
    assert await a.create_account("alice", "x") == await b.create_account("Alice", "y") == 1
    await a.put_match(_record(1, "h", [1, 2]))
    await b.put_match(_record(2, "h", [1, 2]))
    assert [m.match_id for m in await a.matches_in_progress()] == [1]
    assert [m.match_id for m in await b.matches_on_host("h")] == [2]
    keys = [key async for key in redis_client.scan_iter()]
    assert keys
    assert all(key.startswith((b"{a}:", b"{b}:")) for key in keys)
    for bad in ["", "a{b", "c}"]:
        with pytest.raises(ValueError):
            RedisStore(redis_client, prefix=bad)


async def test_redis_player_ids_past_a_double_stay_exact(
    redis_client: coredis.Redis[bytes],
) -> None:
    from lobby.redisstore import RedisStore  # noqa: PLC0415

    store = RedisStore(redis_client)
    start = 2**62 + 1  # the counter is an i64 in Redis, as AUTOINCREMENT is in SQLite
    await redis_client.set("{fs}:player_seq", start)
    assert await store.create_account("alice", "x") == start + 1
    assert await store.create_device_account("dev") == start + 2
    alice = await store.account_by_name("ALICE")
    assert alice == Account(start + 1, "alice", "x", has_device=False)
    assert await store.account(start + 2) == Account(start + 2, None, None, has_device=True)
    assert await store.create_device_account("dev") == start + 2


async def test_redis_keeps_tickets_and_claims_them_only_under_the_lease(
    redis_client: coredis.Redis[bytes],
) -> None:
    from lobby.cluster import matchmaker_leases  # noqa: PLC0415
    from lobby.matchmaker import QueuedPlayer, Ticket  # noqa: PLC0415
    from lobby.redisstore import RedisStore  # noqa: PLC0415

    leases = matchmaker_leases(redis_client, "fs")
    store = RedisStore(redis_client, fence_key=leases.key("fs"))
    tickets = [
        Ticket(2**40 + i, (QueuedPlayer(10 + i, 12.5, 3.0),), "1v1", "local", 1000.0 + i)
        for i in range(3)
    ]
    for ticket in reversed(tickets):
        await store.save_ticket(ticket)
    assert await store.load_tickets() == tickets  # by id, every field back
    await store.drop_tickets([tickets[2].ticket_id, 12345])
    assert await store.load_tickets() == tickets[:2]
    ids = [t.ticket_id for t in tickets[:2]]

    gen = await leases.acquire("fs", "node-a", ttl_ms=10_000)
    assert gen is not None
    assert not await store.claim_tickets(ids, gen + 1)  # not the lease's generation
    assert not await store.claim_tickets([*ids, tickets[2].ticket_id], gen)  # one is gone
    assert await store.load_tickets() == tickets[:2]  # a refused claim takes nothing
    assert await store.claim_tickets(ids, gen)
    assert await store.load_tickets() == []
    assert not await store.claim_tickets(ids, gen)  # claimed once only
    # The lease key shares the store's hash tag (one cluster slot for the claim script).
    assert leases.key("fs").split("{")[1].split("}")[0] == "fs"


async def test_redis_shares_the_room_hosts_with_their_load(
    redis_client: coredis.Redis[bytes],
) -> None:
    from lobby.allocation import HostInfo  # noqa: PLC0415
    from lobby.redisstore import RedisStore  # noqa: PLC0415

    first = RedisStore(redis_client)
    info = HostInfo("h1", "10.0.0.5", 7100, 200, 0, 0, 0, False, frozenset({9}), 0.0, 1)
    await first.publish_host(info, registered=True, lease=30.0)
    await first.publish_host(
        HostInfo("h1", "10.0.0.5", 7100, 200, 7, 7, 70, False, frozenset({9}), 1.0, 1),
        registered=False,
        lease=30.0,
    )
    (seen,) = await RedisStore(redis_client).live_hosts()  # as any other node reads it
    assert (seen.host_id, seen.udp_port, seen.capacity) == ("h1", 7100, 200)
    assert (seen.load, seen.rooms, seen.players, seen.adopted_rooms) == (7, 7, 70, {9})
    # A matchmaker that took over (no generation of its own yet) registers it again.
    second = RedisStore(redis_client)
    await second.publish_host(info, registered=False, lease=30.0)
    assert [h.host_id for h in await first.live_hosts()] == ["h1"]
    await first.remove_host("h1")  # a stale generation: the newer registration stays
    assert [h.host_id for h in await first.live_hosts()] == ["h1"]
    await second.remove_host("h1")
    assert await first.live_hosts() == []
