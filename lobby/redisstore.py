"""The lobby's storage in Redis or Valkey: ``RedisStore``, an ``AsyncStore`` shared by lobby nodes.

It holds what ``SqliteStore`` holds (accounts, ratings, results and history, the matches in
progress) with the same observable semantics and errors, so any lobby node can serve any
player and re-issue tickets for a match another node started.

Key layout (``p`` is the prefix, ``fs`` by default; ``<mid>`` is a match id as 20 zero-padded
decimal digits, ``<pid>`` a player id in plain decimal)::

    {p}:player_seq          string  last player id handed out (INCR)
    {p}:accounts            hash    <pid> -> msgpack [name | nil, password_hash | nil, has_device]
    {p}:account_names       hash    name lowered (ASCII only, as SQLite's NOCASE) -> <pid>
    {p}:account_devices     hash    accounts.device_key (SHA-256; never the device id) -> <pid>
    {p}:ratings             hash    <pid> -> msgpack [mu, sigma]
    {p}:results             hash    <mid> -> msgpack [mode, ended_at, teams, result]
    {p}:history:<pid>       zset    score ended_at; member <order key> <mid> msgpack [team,
                                    mu_before, sigma_before, mu_after, sigma_after]
    {p}:matches             hash    <mid> -> msgpack MatchRecord
    {p}:match_refs          hash    <mid> -> "<host member> <pid> ..." (what ending it removes)
    {p}:match_players       hash    <pid> -> <mid>
    {p}:host_matches        zset    score 0; member <host id as UTF-8 hex>:<mid> (lex ranges)
    {p}:tickets             hash    <ticket id> -> msgpack ticket (store.pack_ticket)
    {p}:hosts               set     room host ids; each has a lease {p}:lease:{host:<id>}
                                    (hostregistry.py) carrying its address and load

Decisions:

* **One hash tag.** Every key carries ``{p}``, so all keys live in one cluster slot and the
  multi-key scripts below work on a single node or a cluster alike. Every key a script touches
  is passed in KEYS; nothing is derived inside Lua.
* **Atomic steps are Lua scripts** that check before they write: account creation (name or
  device index, counter and account in one step, so two concurrent creations cannot both
  win and a refused one uses no id), ``put_match`` (the one-match-per-player check, replacing
  a record with the same id, and the indexes), ``record_result`` (the idempotence check,
  result, history, ratings and ending the match in progress) and ``end_match``.
* **Ids are never numbers in Lua** (doubles there): they travel as decimal strings, the
  counter's new value is read back with GET rather than taken from INCR's reply, and match ids
  are zero-padded so they sort as text. History members start with an order key so that equal
  ``ended_at`` scores tie-break exactly as SQLite does: match id descending, compared as the
  signed 64-bit value SQLite stores (ids from 2**63 up sort below the others).
* **Reads** are one command or one script each (a consistent snapshot in one round trip);
  ``ratings`` is one HMGET whatever the number of players.
* **Claiming tickets** for a match is fenced: the script checks the ``gen`` field of the
  matchmaker lease (``fence_key``, a `lease.LeaseStore` key that must share the ``{p}``
  hash tag) against the claimer's generation in the same step as it takes the tickets.
* **Durability** is Redis persistence, the operator's choice: AOF with ``appendfsync always``
  matches SQLite's ``synchronous=FULL`` (a result acked to a room host survives a power loss);
  ``everysec`` may lose the last second. Scripts' effects are logged as one transaction. The
  ticket keys of matches in progress are stored here: the Redis server must be private.
"""

from __future__ import annotations

import operator
from collections.abc import Mapping, Sequence
from typing import Any

import msgpack
from coredis.client import Client
from coredis.typing import ResponseType

from battle.config import RosterEntry
from lobby.accounts import device_key, validate_name
from lobby.allocation import HostInfo
from lobby.hostregistry import RedisHostRegistry
from lobby.matchmaker import Ticket
from lobby.ratings import Rating, default_rating
from lobby.store import (
    Account,
    HistoryEntry,
    MatchRecord,
    NameTaken,
    PlayerInMatch,
    StoreError,
    check_result,
    finite_time,
    pack_ticket,
    unpack_ticket,
)

__all__ = ["RedisStore"]

_U64 = 2**64
_SIGN = 2**63

# Shared by the scripts that end a match. Removes the record, its host index entry and the
# players still pointing at it; returns 1 if there was a record, else 0.
_END_MATCH_FN = """
local function end_match(matches, refs, players, by_host, mid)
    local ref = redis.call('HGET', refs, mid)
    redis.call('HDEL', matches, mid)
    if not ref then
        return 0
    end
    local first = true
    for token in string.gmatch(ref, '%S+') do
        if first then
            redis.call('ZREM', by_host, token)
            first = false
        elseif redis.call('HGET', players, token) == mid then
            redis.call('HDEL', players, token)
        end
    end
    redis.call('HDEL', refs, mid)
    return 1
end
"""

# KEYS: names, player_seq, accounts. ARGV: lowered name, account. The new id, or nil if taken.
_CREATE_ACCOUNT = """
if redis.call('HEXISTS', KEYS[1], ARGV[1]) == 1 then
    return false
end
redis.call('INCR', KEYS[2])
local pid = redis.call('GET', KEYS[2])
redis.call('HSET', KEYS[1], ARGV[1], pid)
redis.call('HSET', KEYS[3], pid, ARGV[2])
return pid
"""

# KEYS: devices, player_seq, accounts. ARGV: device key, account. The existing or new id.
_CREATE_DEVICE_ACCOUNT = """
local pid = redis.call('HGET', KEYS[1], ARGV[1])
if pid then
    return pid
end
redis.call('INCR', KEYS[2])
pid = redis.call('GET', KEYS[2])
redis.call('HSET', KEYS[1], ARGV[1], pid)
redis.call('HSET', KEYS[3], pid, ARGV[2])
return pid
"""

# KEYS: index (names or devices), accounts. ARGV: index field. {pid, account}, or nil.
_ACCOUNT_BY = """
local pid = redis.call('HGET', KEYS[1], ARGV[1])
if not pid then
    return false
end
return {pid, redis.call('HGET', KEYS[2], pid)}
"""

# KEYS: matches, match_refs, match_players, host_matches. ARGV: mid. 1 if ended, else 0.
_END_MATCH = (
    _END_MATCH_FN
    + """
return end_match(KEYS[1], KEYS[2], KEYS[3], KEYS[4], ARGV[1])
"""
)

# KEYS: matches, match_refs, match_players, host_matches. ARGV: mid, record, host member,
# pid... Returns 0 (changing nothing) if a player is in another match, else 1.
_PUT_MATCH = (
    _END_MATCH_FN
    + """
for i = 4, #ARGV do
    local current = redis.call('HGET', KEYS[3], ARGV[i])
    if current and current ~= ARGV[1] then
        return 0
    end
end
end_match(KEYS[1], KEYS[2], KEYS[3], KEYS[4], ARGV[1])
local ref = {ARGV[3]}
for i = 4, #ARGV do
    redis.call('HSET', KEYS[3], ARGV[i], ARGV[1])
    ref[#ref + 1] = ARGV[i]
end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
redis.call('HSET', KEYS[2], ARGV[1], table.concat(ref, ' '))
redis.call('ZADD', KEYS[4], 0, ARGV[3])
return 1
"""
)

# KEYS: results, ratings, matches, match_refs, match_players, host_matches, history of each
# player. ARGV: mid, result, ended_at, then per player (in KEYS order): pid, history member,
# rating after. Returns 0 (changing nothing) if the match was recorded already, else 1.
_RECORD_RESULT = (
    _END_MATCH_FN
    + """
if redis.call('HEXISTS', KEYS[1], ARGV[1]) == 1 then
    return 0
end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
for i = 7, #KEYS do
    local j = 4 + (i - 7) * 3
    redis.call('ZADD', KEYS[i], ARGV[3], ARGV[j + 1])
    redis.call('HSET', KEYS[2], ARGV[j], ARGV[j + 2])
end
end_match(KEYS[3], KEYS[4], KEYS[5], KEYS[6], ARGV[1])
return 1
"""
)

# KEYS: history, results. ARGV: last index (limit - 1). {member, result, member, result...}
# newest first.
_HISTORY = """
local members = redis.call('ZREVRANGE', KEYS[1], 0, ARGV[1])
local out = {}
for _, member in ipairs(members) do
    out[#out + 1] = member
    out[#out + 1] = redis.call('HGET', KEYS[2], string.sub(member, 22, 41))
end
return out
"""

# KEYS: match_players, matches. ARGV: pid. The player's match record, or nil.
_MATCH_FOR_PLAYER = """
local mid = redis.call('HGET', KEYS[1], ARGV[1])
if not mid then
    return false
end
return redis.call('HGET', KEYS[2], mid)
"""

# KEYS: host_matches, matches. ARGV: lex min, lex max. The host's match records.
# KEYS: tickets, fence (or tickets again when unfenced). ARGV: generation ('' if unfenced),
# ticket ids. Returns 1 (taken), 0 (a ticket is gone) or -1 (not the lease's generation).
_CLAIM_TICKETS = """
if ARGV[1] ~= '' and redis.call('HGET', KEYS[2], 'gen') ~= ARGV[1] then
    return -1
end
for i = 2, #ARGV do
    if redis.call('HEXISTS', KEYS[1], ARGV[i]) == 0 then
        return 0
    end
end
for i = 2, #ARGV do
    redis.call('HDEL', KEYS[1], ARGV[i])
end
return 1
"""

_MATCHES_ON_HOST = """
local members = redis.call('ZRANGEBYLEX', KEYS[1], ARGV[1], ARGV[2])
local out = {}
for _, member in ipairs(members) do
    out[#out + 1] = redis.call('HGET', KEYS[2], string.sub(member, -20))
end
return out
"""


class RedisStore:
    """``AsyncStore`` on Redis or Valkey, over one coredis client owned by the caller.

    The client must use ``decode_responses=False`` and be open while these methods run.
    Several deployments can share one database with distinct prefixes.
    """

    def __init__(
        self, client: Client[bytes], *, prefix: str = "fs", fence_key: str | None = None
    ) -> None:
        """`fence_key`: the matchmaker lease's key, checked by `claim_tickets`."""
        if not prefix or any(c in prefix for c in "{}"):
            raise ValueError(f"prefix must be non-empty and without braces, got {prefix!r}")
        self._client = client
        tag = f"{{{prefix}}}"
        self._seq = f"{tag}:player_seq"
        self._accounts = f"{tag}:accounts"
        self._names = f"{tag}:account_names"
        self._devices = f"{tag}:account_devices"
        self._ratings = f"{tag}:ratings"
        self._results = f"{tag}:results"
        self._history_prefix = f"{tag}:history:"
        self._matches = f"{tag}:matches"
        self._match_refs = f"{tag}:match_refs"
        self._match_players = f"{tag}:match_players"
        self._host_matches = f"{tag}:host_matches"
        self._tickets = f"{tag}:tickets"
        self._hosts = RedisHostRegistry(client, prefix=f"{tag}:")
        self._host_generations: dict[str, int] = {}
        self.fence_key = fence_key
        self._claim_tickets = client.register_script(_CLAIM_TICKETS)
        self._create_account = client.register_script(_CREATE_ACCOUNT)
        self._create_device_account = client.register_script(_CREATE_DEVICE_ACCOUNT)
        self._account_by = client.register_script(_ACCOUNT_BY)
        self._end_match = client.register_script(_END_MATCH)
        self._put_match = client.register_script(_PUT_MATCH)
        self._record_result = client.register_script(_RECORD_RESULT)
        self._history = client.register_script(_HISTORY)
        self._match_for_player = client.register_script(_MATCH_FOR_PLAYER)
        self._matches_on_host = client.register_script(_MATCHES_ON_HOST)

    async def aclose(self) -> None:
        """Nothing to release: the caller owns and closes the client."""

    def _match_keys(self) -> list[str]:
        return [self._matches, self._match_refs, self._match_players, self._host_matches]

    # --- accounts -------------------------------------------------------------------------------

    async def create_account(self, name: str, password_hash: str) -> int:
        validate_name(name)
        if not password_hash:
            raise ValueError("password_hash must not be empty")
        reply: ResponseType = await self._create_account(
            keys=[self._names, self._seq, self._accounts],
            args=[_fold(name), _pack([name, password_hash, False])],
        )
        if reply is None:
            raise NameTaken(name)
        return _reply_id(reply)

    async def create_device_account(self, device_id: str) -> int:
        reply: ResponseType = await self._create_device_account(
            keys=[self._devices, self._seq, self._accounts],
            args=[device_key(device_id), _pack([None, None, True])],
        )
        return _reply_id(reply)

    async def account(self, player_id: int) -> Account | None:
        blob = await self._client.hget(self._accounts, _pid(player_id))
        return None if blob is None else _account(player_id, blob)

    async def account_by_name(self, name: str) -> Account | None:
        return await self._account_by_index(self._names, _fold(name))

    async def account_by_device(self, device_id: str) -> Account | None:
        return await self._account_by_index(self._devices, device_key(device_id))

    async def _account_by_index(self, index: str, field: bytes) -> Account | None:
        reply: ResponseType = await self._account_by(keys=[index, self._accounts], args=[field])
        match reply:
            case None:
                return None
            case [bytes(pid), bytes(blob)]:
                return _account(int(pid), blob)
            case _:
                raise StoreError(f"unexpected account reply {reply!r}")

    # --- ratings --------------------------------------------------------------------------------

    async def ratings(self, player_ids: Sequence[int]) -> dict[int, Rating]:
        fields = [_pid(pid) for pid in player_ids]
        if not fields:
            return {}
        blobs = await self._client.hmget(self._ratings, fields)
        found: dict[int, Rating] = {}
        for pid, blob in zip(player_ids, blobs, strict=True):
            if blob is None:
                found[pid] = default_rating()
            else:
                mu, sigma = _unpack(blob)
                found[pid] = Rating(mu, sigma)
        return found

    async def matches_played(self, player_id: int) -> int:
        return await self._client.zcard(self._history_key(player_id))

    def _history_key(self, player_id: int) -> str:
        return self._history_prefix + _pid(player_id)

    # --- results and history ----------------------------------------------------------------------

    async def record_result(
        self,
        match_id: int,
        result: Mapping[str, Any],
        teams: Sequence[Sequence[int]],
        ratings_before: Mapping[int, Rating],
        ratings_after: Mapping[int, Rating],
        ended_at: float,
        *,
        mode: str,
    ) -> bool:
        """As ``SqliteStore.record_result``: once per match id, in one script."""
        mid = _mid(match_id)
        ended_at = check_result(teams, ratings_before, ratings_after, ended_at)
        order = _order_key(match_id)
        keys = [self._results, self._ratings, *self._match_keys()]
        args: list[str | bytes] = [
            mid,
            _pack([mode, ended_at, [list(team) for team in teams], dict(result)]),
            repr(ended_at),
        ]
        for index, team in enumerate(teams):
            for pid in team:
                before, after = ratings_before[pid], ratings_after[pid]
                entry = [index, float(before.mu), float(before.sigma)]
                entry += [float(after.mu), float(after.sigma)]
                keys.append(self._history_key(pid))
                args += [_pid(pid), f"{order} {mid} ".encode() + _pack(entry)]
                args.append(_pack([float(after.mu), float(after.sigma)]))
        return await self._record_result(keys=keys, args=args) == 1

    async def history(self, player_id: int, limit: int) -> list[HistoryEntry]:
        """The player's most recent finished matches, newest first, at most ``limit``."""
        if limit < 0:
            raise ValueError("limit must be >= 0")
        key = self._history_key(player_id)
        if limit == 0:  # ZREVRANGE's stop of -1 would mean "all"
            return []
        reply: ResponseType = await self._history(keys=[key, self._results], args=[limit - 1])
        if not isinstance(reply, list) or len(reply) % 2:
            raise StoreError(f"unexpected history reply {reply!r}")
        entries = []
        for member, blob in zip(reply[::2], reply[1::2], strict=True):
            if not isinstance(member, bytes) or not isinstance(blob, bytes):
                raise StoreError(f"history entry without its result: {member!r}")
            team, mu_before, sigma_before, mu_after, sigma_after = _unpack(member[42:])
            mode, ended_at, teams, result = _unpack(blob)
            entries.append(
                HistoryEntry(
                    match_id=int(member[21:41]),
                    mode=mode,
                    ended_at=ended_at,
                    team=team,
                    teams=tuple(tuple(t) for t in teams),
                    result=result,
                    rating_before=Rating(mu_before, sigma_before),
                    rating_after=Rating(mu_after, sigma_after),
                )
            )
        return entries

    # --- matches in progress ----------------------------------------------------------------------

    async def put_match(self, record: MatchRecord) -> None:
        """Store (or replace) a match in progress; PlayerInMatch if a player is in another."""
        mid = _mid(record.match_id)
        started_at = finite_time(record.started_at, "started_at")
        players = [_pid(e.player_id) for e in record.roster]
        if len(set(players)) != len(players):
            raise ValueError("a player appears more than once in the roster")
        _check_u64(record.room_id)
        blob = _pack(
            [
                record.match_id,
                record.mode,
                record.host_id,
                record.room_id,
                record.udp_host,
                record.udp_port,
                record.tick_rate,
                bytes(record.ticket_key),
                [[e.slot, e.player_id, e.team] for e in record.roster],
                started_at,
            ]
        )
        member = f"{_host_hex(record.host_id)}:{mid}"
        reply: ResponseType = await self._put_match(
            keys=self._match_keys(), args=[mid, blob, member, *players]
        )
        if reply != 1:
            raise PlayerInMatch("a player of this match is already in another match")

    async def match(self, match_id: int) -> MatchRecord | None:
        blob = await self._client.hget(self._matches, _mid(match_id))
        return None if blob is None else _match(blob)

    async def match_for_player(self, player_id: int) -> MatchRecord | None:
        reply: ResponseType = await self._match_for_player(
            keys=[self._match_players, self._matches], args=[_pid(player_id)]
        )
        match reply:
            case None:
                return None
            case bytes(blob):
                return _match(blob)
            case _:
                raise StoreError(f"unexpected match reply {reply!r}")

    async def end_match(self, match_id: int) -> bool:
        """Forget a match in progress; False if there was none with that id."""
        return await self._end_match(keys=self._match_keys(), args=[_mid(match_id)]) == 1

    async def matches_on_host(self, host_id: str) -> list[MatchRecord]:
        """The host's matches in progress, by match id."""
        prefix = _host_hex(host_id)
        reply: ResponseType = await self._matches_on_host(
            keys=[self._host_matches, self._matches], args=[f"[{prefix}:", f"({prefix};"]
        )
        if not isinstance(reply, list):
            raise StoreError(f"unexpected matches reply {reply!r}")
        return _sorted_matches(reply)

    async def matches_in_progress(self) -> list[MatchRecord]:
        """Every match in progress, by match id (a restarted lobby checks them with their hosts)."""
        return _sorted_matches(list(await self._client.hvals(self._matches)))

    # --- queued tickets -------------------------------------------------------------------------

    async def save_ticket(self, ticket: Ticket) -> None:
        await self._client.hset(self._tickets, {str(ticket.ticket_id): pack_ticket(ticket)})

    async def drop_tickets(self, ticket_ids: Sequence[int]) -> None:
        if ticket_ids:
            await self._client.hdel(self._tickets, [str(t) for t in ticket_ids])

    async def load_tickets(self) -> list[Ticket]:
        tickets = [unpack_ticket(bytes(b)) for b in await self._client.hvals(self._tickets)]
        return sorted(tickets, key=lambda t: t.ticket_id)

    # --- the room-host registry -----------------------------------------------------------------

    async def publish_host(self, info: HostInfo, registered: bool, lease: float) -> None:
        """A register takes the host's lease over (a new generation); a load report renews
        it, or registers again if this node holds no current generation for it (say, it
        took the matchmaker over since)."""
        ttl_ms = max(1, int(lease * 1000))
        generation = self._host_generations.get(info.host_id)
        renewed = (
            not registered
            and generation is not None
            and await self._hosts.heartbeat(
                info.host_id,
                generation,
                info.load,
                info.rooms,
                info.players,
                info.draining,
                ttl_ms=ttl_ms,
            )
        )
        if renewed:
            return
        self._host_generations[info.host_id] = await self._hosts.register(
            info.host_id,
            info.udp_host,
            info.udp_port,
            info.capacity,
            info.load,
            info.adopted_rooms,
            ttl_ms=ttl_ms,
            players=info.players,
            draining=info.draining,
        )

    async def remove_host(self, host_id: str) -> None:
        generation = self._host_generations.pop(host_id, None)
        if generation is not None:
            await self._hosts.remove(host_id, generation)

    async def live_hosts(self) -> list[HostInfo]:
        """Room hosts within their lease, as the matchmaker node last reported them."""
        return await self._hosts.live_hosts()

    async def claim_tickets(self, ticket_ids: Sequence[int], generation: int) -> bool:
        fence = self.fence_key
        keys = [self._tickets, fence if fence is not None else self._tickets]
        args = [str(generation) if fence is not None else "", *(str(t) for t in ticket_ids)]
        reply: ResponseType = await self._claim_tickets(keys=keys, args=args)
        return reply == 1


# --- encoding ---------------------------------------------------------------------------------


def _check_u64(value: int) -> int:
    value = operator.index(value)
    if not 0 <= value < _U64:
        raise ValueError(f"id must be a u64, got {value}")
    return value


def _pid(player_id: int) -> str:
    """A player id as it appears in keys and fields: plain decimal."""
    return str(_check_u64(player_id))


def _mid(match_id: int) -> str:
    """A match id as it appears in fields and members: 20 digits, so text order is id order."""
    return f"{_check_u64(match_id):020d}"


def _order_key(match_id: int) -> str:
    """Ranks match ids as SQLite's ``ORDER BY match_id`` does on their signed 64-bit form."""
    return f"{match_id ^ _SIGN:020d}"


def _fold(name: str) -> bytes:
    """The name index field: lowered in ASCII only, like SQLite's NOCASE."""
    return name.encode("utf-8", "surrogatepass").lower()


def _host_hex(host_id: str) -> str:
    """Hex digits sort apart from ':' and ';', so a host's members form one lex range."""
    return host_id.encode("utf-8", "surrogatepass").hex()


def _pack(value: object) -> bytes:
    packed: bytes = msgpack.packb(value, use_bin_type=True)
    return packed


def _unpack(data: bytes) -> Any:
    return msgpack.unpackb(data, raw=False, strict_map_key=False)


def _reply_id(reply: ResponseType) -> int:
    match reply:
        case bytes(pid):
            return int(pid)
        case int(pid):
            return pid
        case _:
            raise StoreError(f"unexpected player id reply {reply!r}")


def _account(player_id: int, blob: bytes) -> Account:
    name, password_hash, has_device = _unpack(blob)
    return Account(player_id, name, password_hash, bool(has_device))


def _match(blob: bytes) -> MatchRecord:
    (match_id, mode, host_id, room_id, udp_host, udp_port, tick_rate, ticket_key, roster,
     started_at) = _unpack(blob)  # fmt: skip
    return MatchRecord(
        match_id=match_id,
        mode=mode,
        host_id=host_id,
        room_id=room_id,
        udp_host=udp_host,
        udp_port=udp_port,
        tick_rate=tick_rate,
        ticket_key=bytes(ticket_key),
        roster=tuple(RosterEntry(s, p, t) for s, p, t in roster),
        started_at=started_at,
    )


def _sorted_matches(blobs: list[Any]) -> list[MatchRecord]:
    records = []
    for blob in blobs:
        if not isinstance(blob, bytes):
            raise StoreError(f"unexpected match record {blob!r}")
        records.append(_match(blob))
    records.sort(key=lambda r: r.match_id)
    return records
