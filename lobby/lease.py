"""Leases (TTL locks) with fencing generations, kept in Redis or Valkey.

A lease says "this owner holds this name until the TTL runs out, unless it renews first". It
is how a process claims something that only one process may do at a time and hands it over
on its own when that process dies: the holder renews well inside the TTL; a dead holder
stops renewing, the key expires, and the next ``acquire`` by anyone succeeds.

Decisions:

* **Fencing.** Every successful ``acquire`` gets a generation from a per-name counter that
  only goes up (it is kept apart from the lease and never expires). ``renew`` and ``release``
  must name both owner and generation, so a holder that stalled past its TTL and woke up
  after someone else took over is told so (False) instead of extending or deleting the new
  holder's lease. Anything else the holder writes can carry the generation, so readers can
  reject writes from a stale holder.
* **No re-entry.** ``acquire`` fails while the lease exists, even for the same owner: a
  restarted process that lost its generation waits for the old lease to expire, rather than
  two copies of one owner both believing they hold it.
* **Atomic.** Each operation is one Lua script, so check-then-write cannot interleave with
  another client, and the TTL is set in the same step as the write.
* **One key per lease.** A hash of owner, generation and payload with a PX expiry; the payload
  is opaque bytes (the caller picks the encoding) so a holder can publish e.g. its load with
  each renew. Both keys of a name share a hash tag, so the scripts also work on a cluster.
* **Redis time.** Expiry is measured by the server's clock alone; holders should renew at a
  fraction of the TTL (a third is usual) to allow for network delay and pauses.
"""

from __future__ import annotations

from dataclasses import dataclass

from coredis.client import Client
from coredis.typing import ResponseType

__all__ = ["LeaseInfo", "LeaseStore"]

# KEYS: lease, counter. ARGV: owner, ttl_ms, payload. Returns the new generation, or nil.
_ACQUIRE = """
if redis.call('EXISTS', KEYS[1]) == 1 then
    return false
end
local gen = redis.call('INCR', KEYS[2])
redis.call('HSET', KEYS[1], 'owner', ARGV[1], 'gen', gen, 'payload', ARGV[3])
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return gen
"""

# KEYS: lease. ARGV: owner, gen, ttl_ms[, payload]. Returns 1 if renewed, else 0.
_RENEW = """
local cur = redis.call('HMGET', KEYS[1], 'owner', 'gen')
if cur[1] ~= ARGV[1] or cur[2] ~= ARGV[2] then
    return 0
end
if #ARGV >= 4 then
    redis.call('HSET', KEYS[1], 'payload', ARGV[4])
end
redis.call('PEXPIRE', KEYS[1], ARGV[3])
return 1
"""

# KEYS: lease. ARGV: owner, gen. Returns 1 if released, else 0.
_RELEASE = """
local cur = redis.call('HMGET', KEYS[1], 'owner', 'gen')
if cur[1] ~= ARGV[1] or cur[2] ~= ARGV[2] then
    return 0
end
redis.call('DEL', KEYS[1])
return 1
"""

# KEYS: lease. Returns {owner, gen, payload, pttl}, or nil. One script, so the fields and the
# remaining time describe the same moment.
_READ = """
local cur = redis.call('HMGET', KEYS[1], 'owner', 'gen', 'payload')
if not cur[1] then
    return false
end
return {cur[1], cur[2], cur[3], redis.call('PTTL', KEYS[1])}
"""


@dataclass(frozen=True, slots=True)
class LeaseInfo:
    """A snapshot of a held lease, as ``LeaseStore.read`` saw it."""

    owner: str
    generation: int
    payload: bytes
    remaining_ms: int  # until expiry, unless renewed; -1 if the key somehow has no expiry


class LeaseStore:
    """Acquire, renew, release and read named leases over one coredis client.

    The client must have been created with ``decode_responses=False`` (payloads are bytes)
    and be open (``async with client:``) while these methods run.
    """

    def __init__(self, client: Client[bytes], prefix: str = "framesync:lease:") -> None:
        self._prefix = prefix
        self._acquire = client.register_script(_ACQUIRE)
        self._renew = client.register_script(_RENEW)
        self._release = client.register_script(_RELEASE)
        self._read = client.register_script(_READ)

    def key(self, name: str) -> str:
        """The Redis key of a lease, for scripts that extend these (its counter is key + ":gen").
        The braces make the lease and its counter hash to the same cluster slot."""
        return f"{self._prefix}{{{name}}}"

    async def acquire(
        self, name: str, owner: str, *, ttl_ms: int, payload: bytes = b""
    ) -> int | None:
        """Take ``name`` for ``owner`` for ``ttl_ms``; the new generation, or None if held."""
        _check_ttl(ttl_ms)
        key = self.key(name)
        keys = [key, f"{key}:gen"]
        reply: ResponseType = await self._acquire(keys=keys, args=[owner, ttl_ms, payload])
        if reply is None:
            return None
        if not isinstance(reply, int):
            raise TypeError(f"unexpected acquire reply {reply!r}")
        return reply

    async def renew(
        self,
        name: str,
        owner: str,
        generation: int,
        *,
        ttl_ms: int,
        payload: bytes | None = None,
    ) -> bool:
        """Extend the lease to ``ttl_ms`` from now, replacing the payload if one is given.

        False if ``owner`` with ``generation`` no longer holds it (expired, released, or taken
        over): the caller has lost the lease and must stop acting as its holder.
        """
        _check_ttl(ttl_ms)
        args: list[str | int | bytes] = [owner, generation, ttl_ms]
        if payload is not None:
            args.append(payload)
        return await self._renew(keys=[self.key(name)], args=args) == 1

    async def release(self, name: str, owner: str, generation: int) -> bool:
        """Give the lease up now, so the next holder need not wait for the TTL.

        False if ``owner`` with ``generation`` did not hold it; someone else's lease is never
        deleted.
        """
        return await self._release(keys=[self.key(name)], args=[owner, generation]) == 1

    async def read(self, name: str) -> LeaseInfo | None:
        """The current holder of ``name``, or None if nobody holds it."""
        reply: ResponseType = await self._read(keys=[self.key(name)])
        if reply is None:
            return None
        match reply:
            case [bytes(owner), bytes(gen), bytes(payload), int(remaining)]:
                return LeaseInfo(owner.decode(), int(gen), payload, remaining)
            case _:
                raise TypeError(f"unexpected read reply {reply!r}")


def _check_ttl(ttl_ms: int) -> None:
    if ttl_ms <= 0:
        raise ValueError(f"ttl_ms must be positive, got {ttl_ms}")
