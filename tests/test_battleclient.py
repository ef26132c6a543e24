"""BattleClient as the client SDK: the frame iterator, stats, snapshot upload and a seeded
impaired transport, against a real `framesync room-host` process on loopback."""

from __future__ import annotations

import dataclasses
import os
import random
from pathlib import Path

import pytest
import trio
from hostkit import (
    ControlServer,
    RollingState,
    control_server,
    play,
    start_host,
    stop_host,
    ticket_for,
    until,
)

from battle.config import RoomConfig
from battle.control import RoomCreated
from battle.frames import Frame
from battle.inputlog import read_log_file
from battle.ticket import ClientKeys
from sim.battleclient import BattleClient
from sim.impair import GilbertElliott, LinkProfile
from sim.udplink import ImpairedPath, Transit

HZ = 30
RESULT: dict[str, object] = {"winner": 0}
SNAPSHOT_FRAME = 30


async def _follow(client: BattleClient, seen: list[int]) -> None:
    """A game's frame loop: apply, report a hash every 10 frames, upload one snapshot."""
    state = RollingState()
    async for frame in client.frames_iter():
        seen.append(frame.number)
        value = state.apply(frame)
        if frame.number % 10 == 0:
            client.report_hash(frame.number, value)
        if frame.number == SNAPSHOT_FRAME:
            client.upload_snapshot(frame.number, value, state.state)


async def _collect(client: BattleClient, seen: list[int]) -> None:
    async for frame in client.iter_frames():
        seen.append(frame.number)


async def _create(
    lobby: ControlServer, room_id: int, match_id: int, config: RoomConfig
) -> list[tuple[bytes, ClientKeys]]:
    key = os.urandom(32)
    reply = await lobby.create_room(room_id, match_id, 2, config, key)
    assert isinstance(reply, RoomCreated), reply
    return [ticket_for(key, match_id, room_id, slot) for slot in range(2)]


async def _finish(lobby: ControlServer, clients: list[BattleClient], match_id: int) -> None:
    for client in clients:
        client.report_result(RESULT)
    await lobby.wait_for(lambda: any(r.match_id == match_id for r in lobby.results), 20)
    with trio.fail_after(15):
        for client in clients:
            await client.wait_closed()


def _logged_frames(data_dir: Path, match_id: int, room_id: int) -> list[Frame]:
    contents = read_log_file(data_dir / "matches" / f"{match_id}-{room_id}.fslog")
    assert not contents.truncated
    return contents.frames()


def _log_tail(data_dir: Path) -> str:
    return (data_dir / "host.log").read_text()[-3000:]


# --- against a real room host ------------------------------------------------------------


async def test_frames_iter_is_gapless_across_silence_and_reconnect(tmp_path: Path) -> None:
    config = RoomConfig(tick_rate=HZ, start_timeout=15, disconnect_timeout=1.0, max_duration=120)
    async with control_server() as lobby:
        host = start_host(lobby.port, tmp_path)
        try:
            server = await lobby.wait_ready()
            tickets = await _create(lobby, 1, 101, config)
            stop = trio.Event()
            seen: list[list[int]] = [[], []]
            late: list[int] = []
            with trio.fail_after(60):
                async with trio.open_nursery() as nursery:
                    clients = []
                    for slot, (ticket, keys) in enumerate(tickets):
                        client = BattleClient(ticket, keys, server)
                        assert client.stats.bytes_sent == 0  # readable before it starts
                        await nursery.start(client.run)
                        nursery.start_soon(play, client, random.Random(slot), stop)
                        nursery.start_soon(_follow, client, seen[slot])
                        clients.append(client)
                    steady, silent = clients

                    await until(lambda: min(len(c.frames) for c in clients) >= 10, 15)
                    # A second walk started late still begins at frame 1.
                    nursery.start_soon(_collect, steady, late)
                    await until(lambda: all(c.snapshot_ack >= SNAPSHOT_FRAME for c in clients), 10)

                    stats = steady.stats
                    assert stats.rtt > 0 and stats.jitter >= 0
                    assert stats.datagrams_sent > 0 and stats.bytes_sent > stats.datagrams_sent
                    assert stats.datagrams_received > 0
                    assert stats.bytes_received > stats.datagrams_received
                    assert stats.packets_sent > 0 and stats.packets_acked > 0
                    assert stats.packets_received > 0
                    assert (stats.reconnects, stats.catchup_seconds) == (0, ())
                    assert stats.seconds > 0
                    assert stats.impaired_out is None and stats.impaired_in is None
                    with pytest.raises(dataclasses.FrozenInstanceError):
                        stats.rtt = 1.0  # type: ignore[misc]

                    silent.go_silent(True)
                    held = len(silent.frames)
                    # Its own timeout (the room's disconnect timeout) says the link is gone.
                    await until(lambda: silent.disconnects == ["timed_out"], 5)
                    assert not silent.closed  # lost, not ended: waiting to be told to return
                    missed = len(steady.frames) - held
                    assert missed >= HZ // 2
                    before = silent.stats
                    silent.reconnect()
                    await until(lambda: bool(silent.stats.catchup_seconds), 10)

                    target = len(steady.frames) + HZ
                    await until(lambda: min(len(c.frames) for c in clients) >= target, 10)
                    stop.set()
                    await _finish(lobby, clients, 101)
                # Leaving the nursery means every frame iterator ended by itself.
        finally:
            stop_host(host)
    assert host.returncode == 0, _log_tail(tmp_path)

    logged = _logged_frames(tmp_path, 101, 1)
    numbers = [f.number for f in logged]
    assert numbers == list(range(1, len(logged) + 1))
    for client, walked in zip(clients, seen, strict=True):
        assert walked == numbers
        assert client.frames == logged
    assert late == numbers
    assert silent.disconnects == ["timed_out", "room_ended"]

    after = silent.stats
    assert after.reconnects == 1
    (catchup,) = after.catchup_seconds
    assert 0 < catchup < 10
    assert after.seconds == silent.stats.seconds > catchup  # fixed once closed
    assert after.frames_behind == 0
    # Counters cover both connections; the estimates belong to the new one.
    assert after.packets_sent > before.packets_sent
    assert after.packets_received > before.packets_received
    assert after.bytes_received > before.bytes_received
    assert after.rtt > 0


async def test_impaired_clients_get_every_frame_and_measure_loss(tmp_path: Path) -> None:
    profile = LinkProfile(delay=0.02, loss=0.1)  # each way
    config = RoomConfig(tick_rate=HZ, start_timeout=15, max_duration=120)
    async with control_server() as lobby:
        host = start_host(lobby.port, tmp_path)
        try:
            server = await lobby.wait_ready()
            tickets = await _create(lobby, 2, 202, config)
            stop = trio.Event()
            seen: list[list[int]] = [[], []]
            with trio.fail_after(60):
                async with trio.open_nursery() as nursery:
                    clients = []
                    for slot, (ticket, keys) in enumerate(tickets):
                        client = BattleClient(ticket, keys, server, impairment=profile, seed=slot)
                        await nursery.start(client.run)
                        nursery.start_soon(play, client, random.Random(slot), stop)
                        nursery.start_soon(_collect, client, seen[slot])
                        clients.append(client)
                    await until(lambda: min(len(c.frames) for c in clients) >= 4 * HZ, 20)
                    stop.set()
                    await _finish(lobby, clients, 202)
        finally:
            stop_host(host)
    assert host.returncode == 0, _log_tail(tmp_path)

    numbers = [f.number for f in _logged_frames(tmp_path, 202, 2)]
    assert numbers == list(range(1, len(numbers) + 1))
    for client, walked in zip(clients, seen, strict=True):
        assert walked == numbers
        stats = client.stats
        out, into = stats.impaired_out, stats.impaired_in
        assert out is not None and into is not None
        assert out.lost > 0 and into.lost > 0
        # Measured from the room's acks: some loss, and no more than was injected.
        assert stats.send_loss > 0
        assert 0 < stats.packets_lost <= out.lost
        # Measured from the gaps in the room's sequence numbers: the other direction.
        assert stats.receive_loss > 0
        assert 0 < stats.packets_missing <= into.lost
        assert stats.packets_received > stats.packets_missing
        assert stats.rtt >= 2 * profile.delay
        # The socket carried exactly what the impairment let through (nothing left delayed).
        assert stats.datagrams_sent == out.datagrams - out.lost + out.duplicated
        assert stats.datagrams_received == into.datagrams


# --- the impairment schedule, without sockets --------------------------------------------

SERVER = ("127.0.0.1", 7000)


def _drive(path: ImpairedPath, sends: int, *, receive_every: int = 0) -> list[Transit]:
    """Offer `sends` outgoing datagrams 10 ms apart (and incoming ones every `receive_every`
    steps); return every delivery, in order."""
    out: list[Transit] = []
    now = 0.0
    for i in range(sends):
        path.send(i.to_bytes(2, "big"), SERVER, now)
        if receive_every and i % receive_every == 0:
            path.receive(b"in" + i.to_bytes(2, "big"), SERVER, now)
        now += 0.01
        out.extend(path.due(now))
    out.extend(path.due(float("inf")))
    return out


ROUGH = LinkProfile(
    delay=0.02,
    jitter=0.03,
    loss=0.1,
    burst_loss=GilbertElliott.from_loss(0.05, 3),
    duplicate=0.05,
    reorder=0.05,
)


def test_same_seed_same_fates_other_seed_other_fates() -> None:
    first = _drive(ImpairedPath(ROUGH, ROUGH, 7), 500, receive_every=3)
    again = _drive(ImpairedPath(ROUGH, ROUGH, 7), 500, receive_every=3)
    other = _drive(ImpairedPath(ROUGH, ROUGH, 8), 500, receive_every=3)
    assert first == again
    assert first != other
    outgoing = [t for t in first if t.outgoing]
    assert 350 < len(outgoing) < 500  # ~14 % lost, ~5 % duplicated
    order = [int.from_bytes(t.data, "big") for t in outgoing]
    assert order != sorted(order)  # jitter and reordering shuffle them
    assert [t.at for t in first] == sorted(t.at for t in first)


def test_directions_draw_from_their_own_streams() -> None:
    alone = ImpairedPath(ROUGH, ROUGH, 3)
    mixed = ImpairedPath(ROUGH, ROUGH, 3)
    only_out = [t for t in _drive(alone, 300) if t.outgoing]
    with_in = [t for t in _drive(mixed, 300, receive_every=2) if t.outgoing]
    assert only_out == with_in
    assert alone.outgoing == mixed.outgoing
    assert alone.incoming.datagrams == 0 and mixed.incoming.datagrams == 150


def test_delay_holds_each_datagram_until_its_deadline() -> None:
    path = ImpairedPath(LinkProfile(delay=0.02), LinkProfile(delay=0.05), 0)
    path.send(b"a", SERVER, 1.0)
    path.receive(b"b", SERVER, 1.0)
    path.send(b"c", SERVER, 1.01)
    assert path.pending_out == 2
    assert path.next_deadline() == pytest.approx(1.02)
    assert path.due(1.019) == []
    assert [t.data for t in path.due(1.02)] == [b"a"]
    assert path.next_deadline() == pytest.approx(1.03)
    assert [(t.data, t.outgoing) for t in path.due(1.1)] == [(b"c", True), (b"b", False)]
    assert path.pending_out == 0 and path.next_deadline() is None


def test_duplicates_and_clear() -> None:
    path = ImpairedPath(LinkProfile(delay=0.01, duplicate=1.0), LinkProfile(), 0)
    for i in range(5):
        path.send(bytes([i]), SERVER, 0.0)
    assert path.pending_out == 10
    assert path.outgoing.duplicated == 5
    path.clear()
    assert path.pending_out == 0 and path.next_deadline() is None
    assert path.due(1.0) == []
    assert path.outgoing.datagrams == 5  # counters and random streams carry on


# --- reconnect racing the serve loop ---------------------------------------------------------


@pytest.mark.parametrize("impairment", [None, LinkProfile(delay=0.001)], ids=["plain", "impaired"])
async def test_reconnect_from_inside_the_serve_loop(
    impairment: LinkProfile | None, tmp_path: Path
) -> None:
    """`on_frame` runs inside the serve task, so a reconnect made there swaps the socket while
    no task waits on the old one: the loop must move to the new socket, not touch the closed
    one (the same happens when a reconnect lands after the loop was woken but before it ran)."""
    config = RoomConfig(tick_rate=HZ, start_timeout=15, disconnect_timeout=5.0, max_duration=120)
    async with control_server() as lobby:
        host = start_host(lobby.port, tmp_path)
        try:
            server = await lobby.wait_ready()
            key = os.urandom(32)
            reply = await lobby.create_room(1, 107, 1, config, key)
            assert isinstance(reply, RoomCreated), reply
            ticket, keys = ticket_for(key, 107, 1, 0)
            client = BattleClient(ticket, keys, server, impairment=impairment)
            at = {10, 20}

            def on_frame(frame: Frame) -> None:
                if frame.number in at:
                    at.discard(frame.number)
                    client.reconnect()

            client.on_frame = on_frame
            with trio.fail_after(30):
                async with trio.open_nursery() as nursery:
                    await nursery.start(client.run)
                    await until(lambda: len(client.frames) >= 40, 20)
                    assert client.stats.reconnects == 2
                    numbers = [f.number for f in client.frames]
                    assert numbers == list(range(1, len(numbers) + 1))
                    await _finish(lobby, [client], 107)
            assert client.closed
        finally:
            stop_host(host)
