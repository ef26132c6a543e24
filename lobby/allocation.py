"""Room allocation: which room host runs each match's room. Pure policy.

No I/O, no clock, no logging; time is the ``now`` argument. The lobby shell feeds control
messages in (``HostRegistry.register``/``heartbeat``, ``Allocator.on_created``/``on_rejected``),
sends the ``CreateRequest``s it gets back, and calls ``Allocator.poll(now)`` on a timer
(``next_deadline()`` says when) and right after feeding a reply in.

Decisions:

* **Liveness.** A host is live while ``now < last_seen + lease``. Once its lease runs out it is
  dead for good: a late heartbeat is refused (``heartbeat`` returns False) and the host must
  register again. A re-register with the same id replaces the entry (a restarted process) and
  starts a new *generation*; rooms it lists in ``rooms`` are re-adopted, every other match on
  the old generation is lost.
* **Choice.** The live, non-draining host with the most free rooms, where free = capacity −
  reported load − requests sent to it and not yet answered (the report cannot include those
  yet); ties by host id. A host with no free room is never picked; being wrong about load costs
  one ``Rejected("full")`` and a retry elsewhere.
* **One room per match.** ``allocate`` raises ``DuplicateMatch`` for a match that is in flight or
  running, so a shell bug cannot silently double-book. At most one request per match is
  outstanding: a retry is sent only after the previous request was rejected, timed out or its
  host died. Every attempt gets a fresh room id, so rooms from different attempts never clash.
* **Late replies.** A request that timed out (or whose host died) is dead: a ``RoomCreated`` for
  it, or for any request id the allocator does not know, is never used and is reported as
  ``StrayRoom`` so the shell can log it and have that host end the room (no ticket names it, so
  no player can join it). A repeated ``RoomCreated`` for the confirmed request is ignored.
  Replies that name a different host than the request went to are treated as unknown.
* **Retries.** Up to ``max_attempts`` requests per match, never twice to a host that already
  failed that match. Retries come out of ``poll`` as ``CreateRequest`` events; when attempts or
  hosts run out the match ends with ``AllocationFailed``.
* **Host death.** ``poll`` expires leases itself and also notices hosts removed from or
  re-registered in the registry; confirmed matches on a lost host are released and listed in
  ``HostDied`` so the lobby can abort them and tell their players.
"""

from __future__ import annotations

import itertools
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from enum import StrEnum

Address = tuple[str, int]


# --- host registry ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class HostInfo:
    """What the lobby knows about one room host, as of its last register or heartbeat."""

    host_id: str
    udp_host: str
    udp_port: int
    capacity: int
    """Rooms the host will run at most."""
    load: int
    """Rooms it reported running (same unit as capacity)."""
    rooms: int
    players: int
    draining: bool
    adopted_rooms: frozenset[int]
    """Room ids the host said were still running when it registered."""
    last_seen: float
    generation: int
    """Bumped by every register, so a restarted host is distinguishable from its old self."""

    @property
    def address(self) -> Address:
        return (self.udp_host, self.udp_port)


class HostRegistry:
    """Room hosts by id, each alive while its lease lasts."""

    def __init__(self, lease: float) -> None:
        if not lease > 0:
            raise ValueError("lease must be positive")
        self.lease = lease
        self._hosts: dict[str, HostInfo] = {}
        self._generations = itertools.count(1)

    def register(
        self,
        host_id: str,
        udp_host: str,
        udp_port: int,
        capacity: int,
        load: int,
        rooms: Iterable[int],
        now: float,
    ) -> HostInfo:
        """Add or replace a host; ``rooms`` are ids of rooms still running (re-adoption)."""
        adopted = frozenset(rooms)
        info = HostInfo(
            host_id=host_id,
            udp_host=udp_host,
            udp_port=udp_port,
            capacity=capacity,
            load=load,
            rooms=len(adopted),
            players=0,
            draining=False,
            adopted_rooms=adopted,
            last_seen=now,
            generation=next(self._generations),
        )
        self._hosts[host_id] = info
        return info

    def heartbeat(
        self, host_id: str, load: int, rooms: int, players: int, draining: bool, now: float
    ) -> bool:
        """Renew the lease and take the load report. False: unknown or already dead host,
        which must register again (the shell should close its control connection)."""
        info = self._hosts.get(host_id)
        if info is None or not self._alive(info, now):
            return False
        self._hosts[host_id] = replace(
            info,
            load=load,
            rooms=rooms,
            players=players,
            draining=draining,
            last_seen=max(info.last_seen, now),
        )
        return True

    def expire(self, now: float) -> list[str]:
        """Remove and return (sorted) the hosts whose lease ran out: they are dead."""
        dead = sorted(h for h, info in self._hosts.items() if not self._alive(info, now))
        for host_id in dead:
            del self._hosts[host_id]
        return dead

    def live_hosts(self, now: float) -> list[HostInfo]:
        """Hosts within their lease, by host id."""
        return [self._hosts[h] for h in sorted(self._hosts) if self._alive(self._hosts[h], now)]

    def get(self, host_id: str) -> HostInfo | None:
        """The entry even if its lease ran out but ``expire`` has not removed it yet."""
        return self._hosts.get(host_id)

    def remove(self, host_id: str) -> bool:
        """Forget a host (e.g. its control connection closed). False if it was unknown."""
        return self._hosts.pop(host_id, None) is not None

    def next_expiry(self) -> float | None:
        """When the earliest lease runs out, for the shell's timer."""
        return min((i.last_seen + self.lease for i in self._hosts.values()), default=None)

    def _alive(self, info: HostInfo, now: float) -> bool:
        return now < info.last_seen + self.lease


# --- events ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class CreateRequest:
    """Send ``CreateRoom(request_id, room_id, match_id, ...)`` to ``host_id``."""

    match_id: int
    host_id: str
    request_id: int
    room_id: int
    attempt: int
    """1 for the first request of a match."""


@dataclass(frozen=True, slots=True)
class RoomAllocated:
    """The match's room exists: send its players MATCH_READY for this address."""

    match_id: int
    host_id: str
    room_id: int
    udp_address: Address


class FailureReason(StrEnum):
    NO_HOST = "no_host"
    """No live, non-draining host with a free room that has not already failed this match."""
    EXHAUSTED = "exhausted"
    """``max_attempts`` requests failed."""


@dataclass(frozen=True, slots=True)
class AllocationFailed:
    match_id: int
    reason: FailureReason
    detail: str
    """The last attempt's failure, e.g. "h1: full" or "h2: timeout"; empty if none was made."""


class HostLoss(StrEnum):
    LEASE_EXPIRED = "lease_expired"
    REMOVED = "removed"
    RESTARTED = "restarted"
    """Re-registered without listing these matches' rooms: they died with the old process."""


@dataclass(frozen=True, slots=True)
class HostDied:
    """Abort these matches and tell their players; they are no longer tracked."""

    host_id: str
    match_ids: tuple[int, ...]
    reason: HostLoss


@dataclass(frozen=True, slots=True)
class StrayRoom:
    """A room was created that the lobby will not use; have the host end it.

    ``match_id`` is known while the match it was meant for is still tracked.
    """

    host_id: str
    request_id: int
    match_id: int | None


AllocationEvent = CreateRequest | RoomAllocated | AllocationFailed | HostDied | StrayRoom


class DuplicateMatch(ValueError):
    """``allocate`` for a match that is already in flight or running."""


# --- allocator -------------------------------------------------------------------------------


@dataclass(slots=True)
class _Request:
    request_id: int
    match_id: int
    host_id: str
    generation: int
    room_id: int
    deadline: float


@dataclass(slots=True)
class _Match:
    match_id: int
    attempts: int = 0
    failed_hosts: set[str] = field(default_factory=set)
    pending: _Request | None = None
    running: _Request | None = None
    abandoned: list[int] = field(default_factory=list)


class Allocator:
    """Creates each match's room on one host, retrying elsewhere on failure."""

    def __init__(
        self,
        registry: HostRegistry,
        *,
        create_timeout: float = 5.0,
        max_attempts: int = 3,
        first_id: int = 1,
    ) -> None:
        """``first_id`` seeds the request and room id counters (persist it across restarts
        so room ids stay unique per host)."""
        if not create_timeout > 0 or max_attempts < 1:
            raise ValueError("need create_timeout > 0 and max_attempts >= 1")
        self.registry = registry
        self.create_timeout = create_timeout
        self.max_attempts = max_attempts
        self._request_ids = itertools.count(first_id)
        self._room_ids = itertools.count(first_id)
        self._matches: dict[int, _Match] = {}
        self._pending: dict[int, _Request] = {}
        self._confirmed: dict[int, _Request] = {}
        self._abandoned: dict[int, _Request] = {}
        self._events: list[AllocationEvent] = []

    # -- requests from the lobby --

    def allocate(self, match_id: int, now: float) -> CreateRequest | None:
        """The first CreateRoom to send, or None if no host can take a room now (nothing is
        recorded then; the lobby may try again later or give up).

        Raises DuplicateMatch if the match is in flight or running.
        """
        if match_id in self._matches:
            raise DuplicateMatch(f"match {match_id} already has a room or a request in flight")
        host = self._pick(set(), now)
        if host is None:
            return None
        match = _Match(match_id)
        self._matches[match_id] = match
        return self._send(match, host, now)

    def on_match_ended(self, match_id: int) -> bool:
        """Release the match (its room ended or the lobby aborted it). False if unknown.

        A reply to a still-pending request of a released match becomes a StrayRoom.
        """
        match = self._matches.get(match_id)
        if match is None:
            return False
        self._release(match)
        return True

    # -- replies from hosts --

    def on_created(
        self, host_id: str, request_id: int, now: float, udp_address: Address | None = None
    ) -> None:
        """A RoomCreated arrived. ``udp_address`` defaults to the host's registered one."""
        if request_id in self._confirmed and self._confirmed[request_id].host_id == host_id:
            return  # a repeat of the reply we already used
        req = self._pending.get(request_id)
        info = self.registry.get(host_id)
        if (
            req is None
            or req.host_id != host_id
            or info is None
            or info.generation != req.generation
        ):
            self._stray(host_id, request_id)
            return
        del self._pending[request_id]
        match = self._matches[req.match_id]
        match.pending = None
        match.running = req
        self._confirmed[request_id] = req
        address = udp_address if udp_address is not None else info.address
        self._events.append(RoomAllocated(req.match_id, host_id, req.room_id, address))

    def on_rejected(self, host_id: str, request_id: int, reason: str, now: float) -> None:
        """A Rejected arrived: try another host. Unknown or stale rejections are ignored
        (no room was made, so nothing needs undoing)."""
        req = self._pending.get(request_id)
        if req is None or req.host_id != host_id:
            return
        self._fail_attempt(req, f"{host_id}: {reason}", now, room_may_exist=False)

    # -- timer --

    def poll(self, now: float) -> list[AllocationEvent]:
        """Expire leases, time out requests, and return every event queued since last poll."""
        expired = set(self.registry.expire(now))
        tracked: dict[str, list[_Request]] = {}
        for req in itertools.chain(self._pending.values(), self._confirmed.values()):
            tracked.setdefault(req.host_id, []).append(req)
        for host_id in sorted(expired | tracked.keys()):
            self._check_host(host_id, tracked.get(host_id, []), host_id in expired, now)
        for req in sorted(self._pending.values(), key=lambda r: r.request_id):
            if now >= req.deadline:
                self._fail_attempt(req, f"{req.host_id}: timeout", now, room_may_exist=True)
        events, self._events = self._events, []
        return events

    def take_events(self) -> list[AllocationEvent]:
        """The events queued by ``on_created``/``on_rejected`` since the last poll, without
        ``poll``'s scan of every request (the shell calls this per reply, poll per deadline)."""
        events, self._events = self._events, []
        return events

    def next_deadline(self) -> float | None:
        """When ``poll`` can next change anything by itself (a timeout or a lease)."""
        times = [r.deadline for r in self._pending.values()]
        expiry = self.registry.next_expiry()
        if expiry is not None:
            times.append(expiry)
        return min(times, default=None)

    # -- queries --

    def host_of(self, match_id: int) -> str | None:
        """The host running the match's confirmed room."""
        match = self._matches.get(match_id)
        return match.running.host_id if match and match.running else None

    def matches_on(self, host_id: str) -> tuple[int, ...]:
        """Confirmed matches on a host, sorted."""
        return tuple(sorted(r.match_id for r in self._confirmed.values() if r.host_id == host_id))

    # -- internals --

    def _pick(self, exclude: set[str], now: float) -> HostInfo | None:
        in_flight = Counter(r.host_id for r in self._pending.values())
        best: HostInfo | None = None
        best_free = 0
        for host in self.registry.live_hosts(now):  # sorted by id: first max wins ties
            if host.draining or host.host_id in exclude:
                continue
            free = host.capacity - host.load - in_flight[host.host_id]
            if free > best_free:
                best, best_free = host, free
        return best

    def _send(self, match: _Match, host: HostInfo, now: float) -> CreateRequest:
        match.attempts += 1
        req = _Request(
            request_id=next(self._request_ids),
            match_id=match.match_id,
            host_id=host.host_id,
            generation=host.generation,
            room_id=next(self._room_ids),
            deadline=now + self.create_timeout,
        )
        match.pending = req
        self._pending[req.request_id] = req
        return CreateRequest(
            match.match_id, host.host_id, req.request_id, req.room_id, match.attempts
        )

    def _fail_attempt(
        self, req: _Request, detail: str, now: float, *, room_may_exist: bool
    ) -> None:
        del self._pending[req.request_id]
        match = self._matches[req.match_id]
        match.pending = None
        match.failed_hosts.add(req.host_id)
        if room_may_exist:
            self._abandoned[req.request_id] = req
            match.abandoned.append(req.request_id)
        if match.attempts >= self.max_attempts:
            self._fail_match(match, FailureReason.EXHAUSTED, detail)
            return
        host = self._pick(match.failed_hosts, now)
        if host is None:
            self._fail_match(match, FailureReason.NO_HOST, detail)
        else:
            self._events.append(self._send(match, host, now))

    def _fail_match(self, match: _Match, reason: FailureReason, detail: str) -> None:
        self._release(match)
        self._events.append(AllocationFailed(match.match_id, reason, detail))

    def _check_host(self, host_id: str, reqs: list[_Request], expired: bool, now: float) -> None:
        info = self.registry.get(host_id)
        if info is not None and all(r.generation == info.generation for r in reqs):
            return  # alive and the same process
        if expired:
            loss = HostLoss.LEASE_EXPIRED
        elif info is None:
            loss = HostLoss.REMOVED
        else:
            loss = HostLoss.RESTARTED
        lost: list[int] = []
        retry: list[_Request] = []
        for req in sorted(reqs, key=lambda r: r.request_id):
            if info is not None and req.generation == info.generation:
                continue
            if req.request_id in self._pending:
                retry.append(req)
            elif info is not None and req.room_id in info.adopted_rooms:
                req.generation = info.generation  # the restarted process kept this room
            else:
                lost.append(req.match_id)
                self._release(self._matches[req.match_id])
        if lost or info is None:
            self._events.append(HostDied(host_id, tuple(sorted(lost)), loss))
        for req in retry:  # after HostDied, so the shell sees the cause before the retry
            self._fail_attempt(req, f"{host_id}: {loss}", now, room_may_exist=True)

    def _stray(self, host_id: str, request_id: int) -> None:
        old = self._abandoned.get(request_id)
        match_id = old.match_id if old is not None and old.host_id == host_id else None
        self._events.append(StrayRoom(host_id, request_id, match_id))

    def _release(self, match: _Match) -> None:
        del self._matches[match.match_id]
        if match.pending is not None:
            del self._pending[match.pending.request_id]
        if match.running is not None:
            del self._confirmed[match.running.request_id]
        for request_id in match.abandoned:
            self._abandoned.pop(request_id, None)
