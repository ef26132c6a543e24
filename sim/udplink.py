"""Seeded impairment of a real client's datagrams, both directions, on one heap of deliveries.

The decisions are `sim.impair.Impairment`'s, the ones the in-memory simulator makes, so a bot
against a real room host meets the same kinds of bad network, and the same seed with the same
datagrams in the same order gives the same fates. Pure: the caller owns the clock and the socket.
"""

from __future__ import annotations

import heapq
import random
from dataclasses import dataclass

from sim.impair import Impairment, LinkProfile

Address = tuple[str, int]


@dataclass(frozen=True, slots=True)
class Transit:
    """A datagram whose delay is over: send it (`outgoing`) or hand it to the connection."""

    at: float
    outgoing: bool
    data: bytes
    addr: Address
    """Destination of an outgoing datagram, source of an incoming one."""


@dataclass(frozen=True, slots=True)
class ImpairmentCounts:
    """What one direction's impairment did (injected, not measured); duplicates add copies."""

    datagrams: int = 0
    lost: int = 0
    duplicated: int = 0
    reordered: int = 0


_Pending = tuple[float, int, bool, bytes, Address]


class ImpairedPath:
    """Both directions of one client's path; each has its own random stream from `seed`, so
    traffic in one direction never changes the fates drawn in the other."""

    __slots__ = ("_heap", "_in", "_out", "_pending_out", "_seq")

    def __init__(self, outgoing: LinkProfile, incoming: LinkProfile, seed: int) -> None:
        self._out = Impairment(outgoing, random.Random(f"{seed}:out"))
        self._in = Impairment(incoming, random.Random(f"{seed}:in"))
        self._heap: list[_Pending] = []
        self._seq = 0
        """Ties on arrival time go in scheduling order, so a run replays exactly."""
        self._pending_out = 0

    def send(self, data: bytes, addr: Address, now: float) -> None:
        """Schedule a datagram the connection wants sent (none, one or two copies)."""
        self._schedule(self._out, True, data, addr, now)

    def receive(self, data: bytes, addr: Address, now: float) -> None:
        """Schedule a datagram read from the socket for the connection."""
        self._schedule(self._in, False, data, addr, now)

    def _schedule(
        self, impairment: Impairment, outgoing: bool, data: bytes, addr: Address, now: float
    ) -> None:
        for at in impairment.deliveries(now):
            heapq.heappush(self._heap, (at, self._seq, outgoing, data, addr))
            self._seq += 1
            if outgoing:
                self._pending_out += 1

    def next_deadline(self) -> float | None:
        return self._heap[0][0] if self._heap else None

    def due(self, now: float) -> list[Transit]:
        """Everything whose time has come, in (time, scheduling) order."""
        heap = self._heap
        out: list[Transit] = []
        while heap and heap[0][0] <= now:
            at, _, outgoing, data, addr = heapq.heappop(heap)
            if outgoing:
                self._pending_out -= 1
            out.append(Transit(at, outgoing, data, addr))
        return out

    @property
    def pending_out(self) -> int:
        """Outgoing datagrams still delayed (a closing connection waits for its goodbye)."""
        return self._pending_out

    def clear(self) -> None:
        """Forget what is in flight (the socket it belonged to is gone); the random streams
        carry on."""
        self._heap.clear()
        self._pending_out = 0

    @property
    def outgoing(self) -> ImpairmentCounts:
        return _counts(self._out)

    @property
    def incoming(self) -> ImpairmentCounts:
        return _counts(self._in)


def _counts(impairment: Impairment) -> ImpairmentCounts:
    return ImpairmentCounts(
        impairment.sent, impairment.lost, impairment.duplicated, impairment.reordered
    )
