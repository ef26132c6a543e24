"""100,000 hostile datagrams thrown at a running room: counted drops, nothing else changes."""

from __future__ import annotations

import os
import random
from collections.abc import Callable

from battle.config import RoomConfig
from battle.sealing import SessionCipher
from battle.wire import (
    CONNECT_REQUEST_SIZE,
    MAGIC,
    TICKET_SIZE,
    PacketType,
    encode_connect_request,
    sealed_header,
)
from sim.impair import LinkProfile
from sim.localmatch import LocalMatch
from sim.netsim import Address

TOTAL = 100_000
SECONDS = 10.0


def _match(seed: int) -> LocalMatch:
    config = RoomConfig(tick_rate=15, max_duration=SECONDS, end_linger=2.0)
    return LocalMatch(seed=seed, players=4, config=config, profile=LinkProfile.from_rtt(0.04))


def _flip(data: bytes, rng: random.Random) -> bytes:
    out = bytearray(data)
    for _ in range(rng.randint(1, 3)):
        i = rng.randrange(len(out))
        out[i] ^= 1 << rng.randrange(8)
    return bytes(out)


def _make_attacks(
    rng: random.Random, seen: list[tuple[bytes, Address]], victims: list[Address]
) -> list[tuple[bytes, Address]]:
    def attacker() -> Address:
        return ("127.0.0.2", rng.randint(1024, 65535))

    def source() -> Address:
        return rng.choice(victims) if rng.random() < 0.5 else attacker()

    def garbage() -> tuple[bytes, Address]:
        return rng.randbytes(rng.randint(0, 1300)), source()

    def magic_garbage() -> tuple[bytes, Address]:
        body = rng.randbytes(rng.randint(0, 1200))
        return bytes((MAGIC, rng.choice(list(PacketType)))) + body, source()

    def truncated() -> tuple[bytes, Address]:
        data, addr = rng.choice(seen)
        return data[: rng.randrange(len(data))], addr

    def flipped() -> tuple[bytes, Address]:
        data, addr = rng.choice(seen)
        return _flip(data, rng), addr

    def replayed() -> tuple[bytes, Address]:
        data, addr = rng.choice(seen)
        return data, addr if rng.random() < 0.7 else attacker()

    def wrong_key() -> tuple[bytes, Address]:
        cipher = SessionCipher(os.urandom(32), os.urandom(32))
        cipher.next_seq = rng.randint(1, 10_000)
        ptype = rng.choice([PacketType.CLIENT_UPDATE, PacketType.DISCONNECT])
        return cipher.seal(ptype, rng.randbytes(rng.randint(0, 100))), rng.choice(victims)

    def forged_ticket() -> tuple[bytes, Address]:
        return encode_connect_request(rng.randbytes(TICKET_SIZE)), source()

    def oversize_request() -> tuple[bytes, Address]:
        return bytes((MAGIC, PacketType.CONNECT_REQUEST)) + bytes(CONNECT_REQUEST_SIZE), source()

    def header_only() -> tuple[bytes, Address]:
        return sealed_header(PacketType.CLIENT_UPDATE, rng.getrandbits(64)), rng.choice(victims)

    kinds: list[Callable[[], tuple[bytes, Address]]] = [
        garbage,
        magic_garbage,
        truncated,
        flipped,
        replayed,
        wrong_key,
        forged_ticket,
        oversize_request,
        header_only,
    ]
    return [rng.choice(kinds)() for _ in range(TOTAL // int(SECONDS * 10) + 1)]


def test_hostile_datagrams_are_counted_drops_and_change_nothing() -> None:
    baseline = _match(11)
    baseline.run_until(SECONDS + 4)

    match = _match(11)
    host = match.host
    seen: list[tuple[bytes, Address]] = []
    real_receive = host.receive_datagram

    def recording_receive(data: bytes, addr: Address, now: float) -> None:
        seen.append((data, addr))
        real_receive(data, addr, now)

    host.receive_datagram = recording_receive  # type: ignore[method-assign]
    rng = random.Random(20261122)
    victims = [p.address for p in match.players]
    injected = 0

    def attack() -> None:
        nonlocal injected
        for data, addr in _make_attacks(rng, seen, victims):
            real_receive(data, addr, match.now)  # must never raise
            injected += 1
        # The host's replies to attackers are discarded by the network like any datagram.

    for i in range(1, int(SECONDS * 10) + 1):
        match.at(i * 0.1 + 0.013, attack)
    drops_before = sum(host.drops.values())
    match.run_until(SECONDS + 4)

    assert injected >= TOTAL
    assert match.server_frames == baseline.server_frames
    for player, twin in zip(match.players, baseline.players, strict=True):
        assert player.frames == twin.frames
        assert player.sent == twin.sent
        assert player.disconnects == ["room_ended"]
    dropped = sum(host.drops.values()) - drops_before
    print(dict(host.drops))
    # Nearly everything is a counted drop; the rest are replayed handshakes that were
    # answered (a challenge, or an ACCEPT re-sent to the address that owns the session).
    assert dropped >= injected * 0.97
    for reason in ("forged", "replayed", "bad_magic", "bad_type", "bad_size", "ticket_invalid"):
        assert host.drops[reason] > 0, reason
