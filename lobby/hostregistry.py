"""The room-host registry shared by several lobby nodes, kept in Redis or Valkey.

Same meaning as the in-process ``HostRegistry``, but every lobby node sees the same hosts: a
host is live while its lease ``host:{host_id}`` lasts, each register starts a new generation,
and the room ids listed at register are reported as ``adopted_rooms``.

Decisions:

* **Newest registration wins.** A host id is owned by one process at a time. A restarted
  host must not wait out its old process's lease, so ``register`` takes the lease over in one
  atomic step when it is still held: a new generation is issued and the old process's next
  heartbeat fails on its stale generation (it must stop acting as that host).
* **Heartbeats keep the register fields.** A renew replaces the whole payload, so
  ``heartbeat`` reads the lease first and carries over the address, capacity and adopted
  rooms. That read is safe: if anyone registers in between, the renew fails on generation.
* **Index of host ids.** A set lists every id that registered; ``live_hosts`` reads each
  lease and drops ids whose lease is gone. Pruning can race a register of the same id, so
  ``heartbeat`` re-adds its id: a live host is never missing for longer than one heartbeat.
* **Times.** ``last_seen`` is in seconds on the caller's clock (``now``, by default
  ``trio.current_time()``), derived from the server's remaining TTL; it is as exact as the
  round trip.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import msgpack
import trio
from coredis.client import Client
from coredis.typing import ResponseType

from lobby.allocation import HostInfo
from lobby.lease import LeaseInfo, LeaseStore

__all__ = ["RedisHostRegistry"]

# KEYS: lease, counter. ARGV: owner, ttl_ms, payload. Takes the lease whether or not it is
# held, with a new generation; the same hash layout as LeaseStore's acquire.
_TAKEOVER = """
local gen = redis.call('INCR', KEYS[2])
redis.call('DEL', KEYS[1])
redis.call('HSET', KEYS[1], 'owner', ARGV[1], 'gen', gen, 'payload', ARGV[3])
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return gen
"""


class RedisHostRegistry:
    """Register, heartbeat, list and remove room hosts over one coredis client.

    The client must use ``decode_responses=False`` and be open while these methods run.
    """

    def __init__(self, client: Client[bytes], prefix: str = "framesync:") -> None:
        self._client = client
        self._leases = LeaseStore(client, prefix=f"{prefix}lease:")
        self._index = f"{prefix}hosts"
        self._takeover = client.register_script(_TAKEOVER)

    async def register(
        self,
        host_id: str,
        udp_host: str,
        udp_port: int,
        capacity: int,
        load: int,
        rooms: Iterable[int],
        *,
        ttl_ms: int,
        players: int = 0,
        draining: bool = False,
    ) -> int:
        """Claim ``host_id`` for this process and return its new generation.

        A lease left by an earlier process of the same host is taken over, not waited for.
        """
        adopted = sorted(set(rooms))
        payload = _pack(udp_host, udp_port, capacity, load, len(adopted), players, draining,
                        adopted, ttl_ms)  # fmt: skip
        # Index first: a crash in between leaves only an id that live_hosts prunes.
        await self._client.sadd(self._index, [host_id])
        name = _name(host_id)
        gen = await self._leases.acquire(name, host_id, ttl_ms=ttl_ms, payload=payload)
        if gen is not None:
            return gen
        # Still held by an earlier process of this host: this registration wins.
        return await self._take_over(name, host_id, ttl_ms, payload)

    async def heartbeat(
        self,
        host_id: str,
        generation: int,
        load: int,
        rooms: int,
        players: int,
        draining: bool,
        *,
        ttl_ms: int,
    ) -> bool:
        """Renew the lease with a fresh load report.

        False if the lease expired or a newer registration took it: the host must register
        again.
        """
        name = _name(host_id)
        lease = await self._leases.read(name)
        if lease is None or lease.generation != generation:
            return False
        fields = _unpack(lease.payload)
        payload = _pack(str(fields["h"]), int(fields["p"]), int(fields["c"]), load, rooms,
                        players, draining, list(fields["a"]), ttl_ms)  # fmt: skip
        renewed = await self._leases.renew(
            name, host_id, generation, ttl_ms=ttl_ms, payload=payload
        )
        if renewed:
            await self._client.sadd(self._index, [host_id])
        return renewed

    async def remove(self, host_id: str, generation: int) -> bool:
        """End the host's lease now (e.g. it shut down cleanly). False on a stale generation."""
        released = await self._leases.release(_name(host_id), host_id, generation)
        if released:
            await self._client.srem(self._index, [host_id])
        return released

    async def live_hosts(self, now: float | None = None) -> list[HostInfo]:
        """Hosts whose lease is current, by host id; ids with an expired lease are pruned.

        ``last_seen`` is ``now`` (seconds, default ``trio.current_time()``) minus the time
        since the last register or heartbeat.
        """
        if now is None:
            now = trio.current_time()
        members = await self._client.smembers(self._index)
        ids = sorted(m.decode() for m in members)
        found: dict[str, LeaseInfo | None] = {}

        async def read(host_id: str) -> None:
            found[host_id] = await self._leases.read(_name(host_id))

        async with trio.open_nursery() as nursery:
            for host_id in ids:
                nursery.start_soon(read, host_id)
        gone = [h for h in ids if found[h] is None]
        if gone:
            await self._client.srem(self._index, gone)
        return [_info(h, lease, now) for h in ids if (lease := found[h]) is not None]

    async def _take_over(self, name: str, owner: str, ttl_ms: int, payload: bytes) -> int:
        key = self._leases.key(name)  # the lease's own key layout, so both stay in step
        reply: ResponseType = await self._takeover(
            keys=[key, f"{key}:gen"], args=[owner, ttl_ms, payload]
        )
        if not isinstance(reply, int):
            raise TypeError(f"unexpected takeover reply {reply!r}")
        return reply


def _name(host_id: str) -> str:
    return f"host:{host_id}"


def _pack(
    udp_host: str,
    udp_port: int,
    capacity: int,
    load: int,
    rooms: int,
    players: int,
    draining: bool,
    adopted: list[int],
    ttl_ms: int,
) -> bytes:
    body = {"h": udp_host, "p": udp_port, "c": capacity, "l": load, "r": rooms,
            "n": players, "d": draining, "a": adopted, "t": ttl_ms}  # fmt: skip
    packed: bytes = msgpack.packb(body, use_bin_type=True)
    return packed


def _unpack(payload: bytes) -> dict[str, Any]:
    body = msgpack.unpackb(payload, raw=False)
    if not isinstance(body, dict):
        raise TypeError(f"unexpected host payload {body!r}")
    return body


def _info(host_id: str, lease: LeaseInfo, now: float) -> HostInfo:
    f = _unpack(lease.payload)
    ttl_ms = int(f["t"])
    elapsed_ms = max(0, ttl_ms - lease.remaining_ms) if lease.remaining_ms >= 0 else 0
    return HostInfo(
        host_id=host_id,
        udp_host=str(f["h"]),
        udp_port=int(f["p"]),
        capacity=int(f["c"]),
        load=int(f["l"]),
        rooms=int(f["r"]),
        players=int(f["n"]),
        draining=bool(f["d"]),
        adopted_rooms=frozenset(int(r) for r in f["a"]),
        last_seen=now - elapsed_ms / 1000,
        generation=lease.generation,
    )
