"""Small direct drivers for the room host core and its clients, on a fake clock.

No simulated network: `Net` moves datagrams between one HostCore and a dict of
ClientConnections by hand, logs every datagram it moves (or loses), and collects the host's
events, so a test can see and assert each step. Everything is deterministic: tickets use fixed
nonces and keys, and time only moves when a test says so.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TypeVar

from battle.client import ClientConnection, ClientEvent
from battle.config import RoomConfig, RosterEntry
from battle.errors import BadDatagram
from battle.events import Event
from battle.messages import (
    ClientUpdate,
    ServerUpdate,
    decode_client_update_untrusted,
    decode_server_update_untrusted,
)
from battle.room import Room
from battle.sealing import SessionCipher, derive_session_keys
from battle.server import HostCore
from battle.session import Address
from battle.ticket import ClientKeys, issue_ticket
from battle.wire import (
    ConnectResponse,
    PacketType,
    Sealed,
    decode_datagram_untrusted,
)

KEY = bytes(range(32))
COOKIE_SECRET = bytes(range(100, 132))
OFFSET = 1_800_000_000.0
"""Fake time 0 is this unix time (for ticket expiry)."""
HOST: Address = ("10.0.0.1", 7000)
ROOM_ID = 7
MATCH_ID = 1001
SEED = 0x1234_5678_9ABC_DEF0
EPS = 1e-9
T = TypeVar("T")


def addr(slot: int, port_base: int = 40000) -> Address:
    return (f"10.1.0.{slot + 1}", port_base + slot)


def make_roster(n: int) -> tuple[RosterEntry, ...]:
    return tuple(RosterEntry(slot, 100 + slot, slot % 2) for slot in range(n))


def fixed_keys(label: str) -> ClientKeys:
    return ClientKeys(
        hashlib.sha256(f"c2s:{label}".encode()).digest(),
        hashlib.sha256(f"s2c:{label}".encode()).digest(),
    )


def make_ticket(
    slot: int,
    *,
    room_id: int = ROOM_ID,
    match_id: int = MATCH_ID,
    player_id: int | None = None,
    expires_at: float = OFFSET + 600,
    key: bytes = KEY,
    label: str = "",
) -> tuple[bytes, ClientKeys]:
    """A join ticket as the lobby would issue it, with a fixed nonce and fixed session keys."""
    tag = f"{room_id}:{match_id}:{slot}:{player_id}:{label}"
    return issue_ticket(
        key,
        match_id,
        room_id,
        100 + slot if player_id is None else player_id,
        slot,
        expires_at,
        team=slot % 2,
        nonce=hashlib.sha256(f"nonce:{tag}".encode()).digest()[:12],
        keys=fixed_keys(tag),
    )


def make_host() -> HostCore:
    """A host with fixed keys and a seeded source of session salts."""
    return HostCore(KEY, COOKIE_SECRET, clock_offset=OFFSET, entropy=random.Random(99).randbytes)


def salt_source(seed: int) -> Callable[[int], bytes]:
    """A seeded stand-in for os.urandom, for a client's salt (one source per client)."""
    return random.Random(seed).randbytes


# -- reading sealed datagrams with known keys ---------------------------------------------


def client_salt_of(response: bytes) -> bytes:
    """The client salt a CONNECT_RESPONSE carries (its last 16 bytes)."""
    datagram = decode_datagram_untrusted(response)
    assert isinstance(datagram, ConnectResponse)
    return datagram.client_salt


def accept_keys(ticket_keys: ClientKeys, accept: bytes, client_salt: bytes) -> ClientKeys:
    """The session keys an ACCEPT sets up: the ticket's keys, the room salt it carries and
    the client salt of the CONNECT_RESPONSE it answers."""
    datagram = decode_datagram_untrusted(accept)
    assert isinstance(datagram, Sealed) and datagram.type is PacketType.ACCEPT
    return derive_session_keys(ticket_keys, datagram.salt, client_salt)


def open_from_host(
    keys: ClientKeys, data: bytes, client_salt: bytes | None = None
) -> tuple[PacketType, bytes]:
    """Open a host→client datagram with session keys (fresh replay window).

    An ACCEPT is opened with the *ticket's* keys and the client salt of the CONNECT_RESPONSE
    it answers: it carries the room's salt of its session."""
    datagram = decode_datagram_untrusted(data)
    assert isinstance(datagram, Sealed)
    if datagram.type is PacketType.ACCEPT:
        assert client_salt is not None, "an ACCEPT opens only with the client salt"
        keys = derive_session_keys(keys, datagram.salt, client_salt)
    body = SessionCipher(send_key=keys.c2s, recv_key=keys.s2c).open_untrusted(datagram)
    return datagram.type, body


def open_from_client(keys: ClientKeys, data: bytes) -> tuple[PacketType, bytes]:
    """Open a client→host datagram as the host session would (fresh replay window)."""
    datagram = decode_datagram_untrusted(data)
    assert isinstance(datagram, Sealed)
    body = SessionCipher(send_key=keys.s2c, recv_key=keys.c2s).open_untrusted(datagram)
    return datagram.type, body


def server_update(keys: ClientKeys, data: bytes) -> ServerUpdate:
    ptype, body = open_from_host(keys, data)
    assert ptype is PacketType.SERVER_UPDATE
    return decode_server_update_untrusted(body)


def client_update(keys: ClientKeys, data: bytes) -> ClientUpdate:
    ptype, body = open_from_client(keys, data)
    assert ptype is PacketType.CLIENT_UPDATE
    return decode_client_update_untrusted(body)


def ptype_of(data: bytes) -> int:
    return data[1]


# -- the driver ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Wire:
    """One datagram the driver moved: when, from, to, bytes, and whether it was lost."""

    at: float
    src: Address
    dst: Address
    data: bytes
    lost: bool


@dataclass
class Net:
    """One HostCore with one room, clients by address, a fake clock and a full wire log."""

    players: int = 2
    config: RoomConfig = field(default_factory=RoomConfig)
    now: float = 0.0
    host: HostCore = field(init=False)
    room: Room = field(init=False)
    clients: dict[Address, ClientConnection] = field(init=False, default_factory=dict)
    keys: dict[Address, ClientKeys] = field(init=False, default_factory=dict)
    """The ticket keys each address handshakes with (session keys derive from them)."""
    events: list[Event] = field(init=False, default_factory=list)
    client_events: dict[Address, list[ClientEvent]] = field(init=False, default_factory=dict)
    log: list[Wire] = field(init=False, default_factory=list)
    cut_up: set[Address] = field(init=False, default_factory=set)
    """Datagrams from these client addresses are lost."""
    cut_down: set[Address] = field(init=False, default_factory=set)
    """Datagrams to these client addresses are lost."""
    _instances: int = field(init=False, default=0)

    def __post_init__(self) -> None:
        self.host = make_host()
        self.room = self.host.create_room(
            ROOM_ID, MATCH_ID, SEED, make_roster(self.players), self.config, self.now
        )

    # -- clients -----------------------------------------------------------------------

    def add_client(
        self, slot: int, address: Address | None = None, *, flush: bool = True
    ) -> ClientConnection:
        """A client with a lobby ticket for `slot`; with flush, its handshake completes now."""
        ticket, keys = make_ticket(slot)
        client = ClientConnection(ticket, keys, HOST, self.now, entropy=self.salts())
        return self.attach(client, address or addr(slot), keys, flush)

    def salts(self) -> Callable[[int], bytes]:
        """A fresh seeded salt source: each client instance of this net draws its own salt."""
        self._instances += 1
        return salt_source(self._instances)

    def attach(
        self, client: ClientConnection, address: Address, keys: ClientKeys, flush: bool = True
    ) -> ClientConnection:
        self.clients[address] = client
        self.keys[address] = keys
        self.client_events.setdefault(address, [])
        if flush:
            self.flush()
        return client

    def connect_all(self) -> None:
        for slot in range(self.players):
            self.add_client(slot)

    # -- moving datagrams --------------------------------------------------------------

    def to_host(self, data: bytes, src: Address) -> list[tuple[bytes, Address]]:
        """Deliver one datagram to the host now; return (and log) exactly what it sent back."""
        self.log.append(Wire(self.now, src, HOST, data, False))
        self.host.receive_datagram(data, src, self.now)
        self._collect_events()
        return self.host_output()

    def host_output(self) -> list[tuple[bytes, Address]]:
        out = self.host.datagrams_to_send()
        for data, dst in out:
            self.log.append(Wire(self.now, HOST, dst, data, dst in self.cut_down))
        return out

    def to_client(self, data: bytes, dst: Address) -> None:
        client = self.clients.get(dst)
        if client is not None and dst not in self.cut_down:
            client.receive_datagram(data, HOST, self.now)

    def _collect_events(self) -> None:
        while (event := self.host.next_event()) is not None:
            self.events.append(event)

    def flush(self) -> int:
        """Move datagrams both ways until nobody has anything to send; return how many moved."""
        moved = 0
        while True:
            batch = [(d, dst) for d, dst in self.host_output()]
            for data, dst in batch:
                self.to_client(data, dst)
            ups: list[tuple[bytes, Address]] = []
            for address, client in self.clients.items():
                for data, _ in client.datagrams_to_send():
                    ups.append((data, address))
                events = self.client_events[address]
                while (cevent := client.next_event()) is not None:
                    events.append(cevent)
            for data, src in ups:
                if src in self.cut_up:
                    self.log.append(Wire(self.now, src, HOST, data, True))
                else:
                    self.log.append(Wire(self.now, src, HOST, data, False))
                    self.host.receive_datagram(data, src, self.now)
            self._collect_events()
            if not batch and not ups:
                return moved
            moved += len(batch) + len(ups)

    # -- time --------------------------------------------------------------------------

    def step(self, now: float) -> None:
        """Advance the clock to `now`, tick the host and every client, then flush."""
        assert now >= self.now
        self.now = now
        self.host.tick(now)
        self._collect_events()
        for client in self.clients.values():
            client.tick(now)
        self.flush()

    def next_time(self) -> float | None:
        times = [t for c in self.clients.values() if (t := c.next_deadline()) is not None]
        host = self.host.next_deadline()
        if host is not None:
            times.append(host)
        return min(times) if times else None

    def run_until(self, until: float) -> None:
        """Step through every host and client deadline up to and including `until`."""
        while True:
            nxt = self.next_time()
            target = until if nxt is None else min(until, nxt)
            self.step(max(self.now, target))
            if self.now >= until:
                return

    # -- queries -----------------------------------------------------------------------

    def client_salt(self, address: Address, before: int | None = None) -> bytes:
        """The client salt of the last CONNECT_RESPONSE from `address` (before log index
        `before`): the one an ACCEPT logged after it answers."""
        log = self.log if before is None else self.log[:before]
        for w in reversed(log):
            if w.src == address and w.data[1:2] == bytes((PacketType.CONNECT_RESPONSE,)):
                return client_salt_of(w.data)
        raise AssertionError(f"no CONNECT_RESPONSE came from {address}")

    def session_keys(self, address: Address) -> ClientKeys:
        """Keys of the newest session the host accepted at `address`."""
        for i in range(len(self.log) - 1, -1, -1):
            w = self.log[i]
            if w.src == HOST and w.dst == address and w.data[1] == PacketType.ACCEPT:
                return accept_keys(self.keys[address], w.data, self.client_salt(address, i))
        raise AssertionError(f"no ACCEPT was sent to {address}")

    def opened(self, address: Address) -> list[tuple[Wire, PacketType, bytes]]:
        """Every sealed datagram to or from `address`, opened with the session it belonged to."""
        out: list[tuple[Wire, PacketType, bytes]] = []
        keys: ClientKeys | None = None
        salt: bytes | None = None
        for w in self.log:
            if w.src == address and w.data[1:2] == bytes((PacketType.CONNECT_RESPONSE,)):
                salt = client_salt_of(w.data)
            if address not in (w.src, w.dst) or w.data[1] < PacketType.ACCEPT:
                continue
            if w.dst == address and w.data[1] == PacketType.ACCEPT:
                assert salt is not None, "an ACCEPT answers a CONNECT_RESPONSE"
                keys = accept_keys(self.keys[address], w.data, salt)
            if keys is None:
                continue  # sealed garbage before any session
            try:
                if w.dst == address:
                    ptype, body = open_from_host(
                        self.keys[address] if w.data[1] == PacketType.ACCEPT else keys,
                        w.data,
                        salt,
                    )
                else:
                    ptype, body = open_from_client(keys, w.data)
            except BadDatagram:
                continue  # forged, or sealed under keys this address never had
            out.append((w, ptype, body))
        return out

    def server_updates(self, address: Address) -> list[tuple[Wire, ServerUpdate]]:
        return [
            (w, decode_server_update_untrusted(body))
            for w, ptype, body in self.opened(address)
            if ptype is PacketType.SERVER_UPDATE
        ]

    def client_updates(self, address: Address) -> list[tuple[Wire, ClientUpdate]]:
        return [
            (w, decode_client_update_untrusted(body))
            for w, ptype, body in self.opened(address)
            if ptype is PacketType.CLIENT_UPDATE
        ]

    def sent_to(self, dst: Address, ptype: PacketType | None = None) -> list[Wire]:
        return [
            w
            for w in self.log
            if w.src == HOST and w.dst == dst and (ptype is None or w.data[1] == ptype)
        ]

    def sent_by(self, src: Address, ptype: PacketType | None = None) -> list[Wire]:
        return [
            w
            for w in self.log
            if w.src == src and w.dst == HOST and (ptype is None or w.data[1] == ptype)
        ]

    def events_of(self, kind: type[T]) -> list[T]:
        return [e for e in self.events if isinstance(e, kind)]

    def client_events_of(self, address: Address, kind: type[T]) -> list[T]:
        return [e for e in self.client_events[address] if isinstance(e, kind)]


@dataclass(frozen=True, slots=True)
class Handshake:
    """The datagrams of one handshake, as they crossed the wire."""

    request: bytes
    challenge: bytes
    response: bytes
    accept: bytes
    first_sealed: bytes
    """The client's first sealed datagram; delivered only if `confirm` was set."""
    after_confirm: list[tuple[bytes, Address]]
    """What the host sent when the first sealed datagram arrived."""

    @property
    def client_salt(self) -> bytes:
        """The salt the client instance picked, as its CONNECT_RESPONSE carried it."""
        return client_salt_of(self.response)


def handshake(
    net: Net,
    client: ClientConnection,
    address: Address,
    keys: ClientKeys,
    *,
    confirm: bool = True,
) -> Handshake:
    """Walk one client through the handshake one datagram at a time, checking each step."""
    net.attach(client, address, keys, flush=False)
    (request, _), *more = client.datagrams_to_send()
    assert not more and request[1] == PacketType.CONNECT_REQUEST
    (challenge, to), *more = net.to_host(request, address)
    assert not more and to == address and challenge[1] == PacketType.CHALLENGE
    client.receive_datagram(challenge, HOST, net.now)
    (response, _), *more = client.datagrams_to_send()
    assert not more and response[1] == PacketType.CONNECT_RESPONSE
    (accept, to), *more = net.to_host(response, address)
    assert not more and to == address and accept[1] == PacketType.ACCEPT
    client.receive_datagram(accept, HOST, net.now)
    (first, _), *more = client.datagrams_to_send()
    assert not more and first[1] == PacketType.CLIENT_UPDATE
    after = net.to_host(first, address) if confirm else []
    events = net.client_events[address]
    while (cevent := client.next_event()) is not None:
        events.append(cevent)
    return Handshake(request, challenge, response, accept, first, after)
