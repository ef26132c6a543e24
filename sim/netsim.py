"""In-memory datagram network on virtual time, for protocol tests and bots.

It only moves bytes: the test driver owns the protocol objects, calls `send` with what they emit
and feeds them `deliver_due(now)`. Each direction of each pair has its own `Impairment` whose RNG
is derived from the network seed and the pair alone, so adding an endpoint or traffic elsewhere
never changes what happens on an existing link.
"""

from __future__ import annotations

import heapq
import random
from dataclasses import dataclass

from sim.impair import Impairment, LinkProfile

Address = tuple[str, int]

MAX_DATAGRAM_SIZE = 1200
"""The protocol's limit; a larger datagram is a sender bug, so it raises instead of dropping."""


@dataclass(frozen=True, slots=True)
class Delivery:
    at: float
    src: Address
    dst: Address
    data: bytes


@dataclass(frozen=True, slots=True)
class LinkStats:
    """Counters of one direction. `sent` counts every `send` call, `blocked` the drops caused by
    `SimNetwork.block`; duplicates make `delivered` count copies, not originals."""

    sent: int = 0
    lost: int = 0
    duplicated: int = 0
    reordered: int = 0
    blocked: int = 0
    delivered: int = 0


class _Link:
    __slots__ = ("blocked_in_flight", "blocked_on_send", "delivered", "impairment")

    def __init__(self, impairment: Impairment) -> None:
        self.impairment = impairment
        self.blocked_on_send = 0
        self.blocked_in_flight = 0
        self.delivered = 0


_PERFECT = LinkProfile.perfect()

_Pending = tuple[float, int, Address, Address, bytes]


class SimNetwork:
    """Seeded lossy network; arrivals pop in (arrival time, send order), so traces are exact."""

    __slots__ = ("_blocked", "_default", "_links", "_queue", "_seed", "_seq")

    def __init__(self, seed: int, default: LinkProfile = _PERFECT) -> None:
        self._seed = seed
        self._default = default
        self._links: dict[tuple[Address, Address], _Link] = {}
        self._queue: list[_Pending] = []
        self._seq = 0
        self._blocked: set[Address] = set()

    def _link(self, src: Address, dst: Address) -> _Link:
        link = self._links.get((src, dst))
        if link is None:
            rng = random.Random(f"{self._seed}:{src[0]}:{src[1]}>{dst[0]}:{dst[1]}")
            link = _Link(Impairment(self._default, rng))
            self._links[(src, dst)] = link
        return link

    def set_link(self, src: Address, dst: Address, profile: LinkProfile) -> None:
        """Conditions for src -> dst only; may be called mid-run (in-flight packets keep
        their arrival times)."""
        self._link(src, dst).impairment.set_profile(profile)

    def set_path(self, a: Address, b: Address, profile: LinkProfile) -> None:
        """Same conditions both ways, each direction with its own random stream."""
        self.set_link(a, b, profile)
        self.set_link(b, a, profile)

    def link_profile(self, src: Address, dst: Address) -> LinkProfile:
        link = self._links.get((src, dst))
        return link.impairment.profile if link is not None else self._default

    def send(self, src: Address, dst: Address, data: bytes, now: float) -> None:
        if len(data) > MAX_DATAGRAM_SIZE:
            raise ValueError(f"datagram of {len(data)} bytes exceeds {MAX_DATAGRAM_SIZE}")
        link = self._link(src, dst)
        if self._blocked and (src in self._blocked or dst in self._blocked):
            link.blocked_on_send += 1
            return
        payload = bytes(data)  # the caller may reuse a bytearray buffer
        queue = self._queue
        for at in link.impairment.deliveries(now):
            heapq.heappush(queue, (at, self._seq, src, dst, payload))
            self._seq += 1

    def next_delivery(self) -> float | None:
        """When the driver must wake next for the network (packets to blocked hosts included)."""
        return self._queue[0][0] if self._queue else None

    def deliver_due(self, now: float) -> list[Delivery]:
        """Pop everything arrived by `now`; a packet whose destination is blocked on arrival
        is dropped, as if the host had been unplugged while it was in flight."""
        queue = self._queue
        out: list[Delivery] = []
        while queue and queue[0][0] <= now:
            at, _, src, dst, data = heapq.heappop(queue)
            link = self._links[(src, dst)]
            if dst in self._blocked:
                link.blocked_in_flight += 1
                continue
            link.delivered += 1
            out.append(Delivery(at, src, dst, data))
        return out

    def block(self, addr: Address) -> None:
        """Make `addr` go silent: what it sends and what is sent to it vanish."""
        self._blocked.add(addr)

    def unblock(self, addr: Address) -> None:
        self._blocked.discard(addr)

    def is_blocked(self, addr: Address) -> bool:
        return addr in self._blocked

    @property
    def in_flight(self) -> int:
        return len(self._queue)

    def stats(self, src: Address, dst: Address) -> LinkStats:
        link = self._links.get((src, dst))
        return _snapshot(link) if link is not None else LinkStats()

    def all_stats(self) -> dict[tuple[Address, Address], LinkStats]:
        """Every direction that has carried (or been configured for) traffic."""
        return {pair: _snapshot(link) for pair, link in self._links.items()}


def _snapshot(link: _Link) -> LinkStats:
    imp = link.impairment
    return LinkStats(
        sent=imp.sent + link.blocked_on_send,
        lost=imp.lost,
        duplicated=imp.duplicated,
        reordered=imp.reordered,
        blocked=link.blocked_on_send + link.blocked_in_flight,
        delivered=link.delivered,
    )
