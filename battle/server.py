"""The room host core: one address space, many rooms, the handshake, and routing.

Shaped after aioquic: `receive_datagram(data, addr, now)`, `tick(now)`,
`datagrams_to_send()`, `next_event()`, `next_deadline()`. No I/O and no clock: the trio shell
(or a test on virtual time) drives it. Before a source address is proven (a valid cookie in
CONNECT_RESPONSE) nothing is allocated and nothing larger than the request is sent.
"""

from __future__ import annotations

import heapq
import os
from collections import Counter
from collections.abc import Callable

from battle.config import RoomConfig, RosterEntry
from battle.cookie import CookieJar
from battle.errors import BadDatagram, TicketRejected
from battle.events import Event
from battle.messages import RoomState
from battle.peer import CoreSink
from battle.room import Room
from battle.session import Address
from battle.ticket import KEY_SIZE, Ticket, open_ticket, ticket_room_untrusted
from battle.wire import (
    ConnectRequest,
    ConnectResponse,
    Sealed,
    decode_datagram_untrusted,
    encode_challenge,
    encode_denied,
)

_GOLDEN = 0.6180339887498949


class HostCore:
    """Every room of one room host process, behind one datagram interface."""

    def __init__(
        self,
        ticket_key: bytes,
        cookie_secret: bytes,
        *,
        clock_offset: float = 0.0,
        entropy: Callable[[int], bytes] = os.urandom,
    ) -> None:
        """`clock_offset` converts the caller's clock to unix time for ticket expiry;
        `entropy` makes session salts (tests pass a seeded source for exact re-runs)."""
        if len(ticket_key) != KEY_SIZE:
            raise ValueError("ticket key must be 32 bytes")
        self.ticket_key = ticket_key
        self.clock_offset = clock_offset
        self.rooms: dict[int, Room] = {}
        self.sink = CoreSink(entropy=entropy)
        self._cookies = CookieJar(cookie_secret)
        self._routes: dict[Address, tuple[Room, int]] = {}
        self._schedule: list[tuple[float, int]] = []
        self._scheduled: dict[int, float] = {}
        self._created = 0

    @property
    def drops(self) -> Counter[str]:
        return self.sink.drops

    @property
    def stats(self) -> Counter[str]:
        return self.sink.stats

    # -- rooms ---------------------------------------------------------------------------

    def create_room(
        self,
        room_id: int,
        match_id: int,
        seed: int,
        roster: tuple[RosterEntry, ...],
        config: RoomConfig,
        now: float,
        *,
        ticket_key: bytes | None = None,
    ) -> Room:
        """`ticket_key` lets the lobby use a key per room, so a host learns only its own."""
        if room_id in self.rooms:
            raise ValueError(f"room {room_id} already exists")
        if ticket_key is not None and len(ticket_key) != KEY_SIZE:
            raise ValueError("ticket key must be 32 bytes")
        room = Room(
            room_id,
            match_id,
            seed,
            roster,
            config,
            now,
            ticket_key=ticket_key or self.ticket_key,
            clock_offset=self.clock_offset,
            sink=self.sink,
        )
        # Successive rooms get phases spread by the golden ratio: any number of rooms
        # starting at once still tick at evenly spread moments.
        room.phase = (self._created * _GOLDEN) % 1.0  # the first room: no delay
        self._created += 1
        self.rooms[room_id] = room
        self._reschedule(room)
        return room

    def remove_room(self, room_id: int) -> None:
        room = self.rooms.pop(room_id, None)
        if room is None:
            return
        self._scheduled.pop(room_id, None)
        for addr in [a for a, (r, _) in self._routes.items() if r is room]:
            del self._routes[addr]

    # -- input ---------------------------------------------------------------------------

    def receive_datagram(self, data: bytes, addr: Address, now: float) -> None:
        """Handle one datagram from the network. Never raises on bad input: it counts it."""
        stats = self.sink.stats
        stats["datagrams_in"] += 1
        stats["bytes_in"] += len(data)
        try:
            datagram = decode_datagram_untrusted(data)
        except BadDatagram as exc:
            self.sink.drops[exc.reason] += 1
            return
        if isinstance(datagram, Sealed):
            route = self._routes.get(addr)
            if route is None:
                self.sink.drops["unknown_address"] += 1
                return
            room, slot = route
            room.receive_sealed(slot, datagram, addr, now)
            if room.deadline_moved or self.sink.released:
                self._after(room)
        elif isinstance(datagram, ConnectRequest):
            self._on_connect_request(datagram, addr, now)
        elif isinstance(datagram, ConnectResponse):
            self._on_connect_response(datagram, addr, now)
        else:
            self.sink.drops["wrong_direction"] += 1

    def _open_ticket(self, raw: bytes, now: float) -> tuple[Room, Ticket] | None:
        drops = self.sink.drops
        unix_now = now + self.clock_offset
        expires_at, room_id = ticket_room_untrusted(raw)
        if expires_at <= unix_now:
            drops["ticket_expired"] += 1
            return None
        room = self.rooms.get(room_id)
        if room is None:
            drops["ticket_wrong_room"] += 1
            return None
        try:
            ticket = open_ticket(room.ticket_key, raw, room_id=room_id, now=unix_now)
        except TicketRejected as exc:
            drops[exc.reason] += 1
            return None
        if (
            ticket.match_id != room.match_id
            or ticket.slot >= len(room.roster)
            or room.roster[ticket.slot].player_id != ticket.player_id
        ):
            drops["ticket_mismatch"] += 1
            return None
        return room, ticket

    def _on_connect_request(self, request: ConnectRequest, addr: Address, now: float) -> None:
        opened = self._open_ticket(request.ticket, now)
        if opened is None:
            return
        room, _ = opened
        if room.state is RoomState.ENDED:
            self.sink.drops["room_ended"] += 1
            return
        self.sink.stats["challenges_sent"] += 1
        self.sink.outbox.append(
            (encode_challenge(self._cookies.issue(addr, request.ticket, now)), addr)
        )

    def _on_connect_response(self, response: ConnectResponse, addr: Address, now: float) -> None:
        if not self._cookies.check(response.cookie, addr, response.ticket, now):
            self.sink.drops["bad_cookie"] += 1
            return
        opened = self._open_ticket(response.ticket, now)
        if opened is None:
            return
        room, ticket = opened
        route = self._routes.get(addr)
        if route is not None and route != (room, ticket.slot):
            other_room, other_slot = route
            if other_room.session_for(other_slot, addr) is not None:
                self.sink.drops["address_in_use"] += 1
                return
        denied = room.accept_session(ticket, response.client_salt, addr, now)
        if denied is not None:
            self.sink.outbox.append((encode_denied(denied), addr))
        self._after(room)
        if denied is None:
            self._routes[addr] = (room, ticket.slot)

    # -- time and output -----------------------------------------------------------------

    def tick(self, now: float) -> None:
        """Tick every room whose deadline has come, each once, in deadline order."""
        schedule = self._schedule
        due: list[Room] = []
        while schedule and schedule[0][0] <= now:
            at, room_id = heapq.heappop(schedule)
            if self._scheduled.get(room_id) != at:
                continue  # stale entry: the room was rescheduled or removed
            del self._scheduled[room_id]
            due.append(self.rooms[room_id])
        for room in due:
            room.tick(now)
            self._after(room)

    def _after(self, room: Room) -> None:
        released = self.sink.released
        if released:
            for addr in released:
                route = self._routes.get(addr)
                if route is not None and route[0].session_for(route[1], addr) is None:
                    del self._routes[addr]
            released.clear()
        room.deadline_moved = False
        self._reschedule(room)

    def _reschedule(self, room: Room) -> None:
        if room.room_id not in self.rooms:
            return
        deadline = room.next_deadline()
        current = self._scheduled.get(room.room_id)
        if deadline == current:
            return
        if deadline is None:
            self._scheduled.pop(room.room_id, None)
            return
        self._scheduled[room.room_id] = deadline
        heapq.heappush(self._schedule, (deadline, room.room_id))

    def next_deadline(self) -> float | None:
        schedule = self._schedule
        while schedule and self._scheduled.get(schedule[0][1]) != schedule[0][0]:
            heapq.heappop(schedule)
        return schedule[0][0] if schedule else None

    def datagrams_to_send(self) -> list[tuple[bytes, Address]]:
        out = self.sink.outbox
        if out:
            self.sink.outbox = []
            stats = self.sink.stats
            stats["datagrams_out"] += len(out)
            stats["bytes_out"] += sum(len(d) for d, _ in out)
        return out

    def next_event(self) -> Event | None:
        events = self.sink.events
        return events.popleft() if events else None
