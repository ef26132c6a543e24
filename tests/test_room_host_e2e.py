"""The room host as a real process over real loopback UDP and a real control connection."""

from __future__ import annotations

import os
import random
import signal
from pathlib import Path

import trio
from hostkit import RollingState, control_server, play, start_host, stop_host, ticket_for

from battle.config import RoomConfig
from battle.control import RoomCreated, RoomEventKind
from battle.inputlog import DesyncRecord, EndRecord, PlayerEvent, ResultRecord, read_log_file
from sim.battleclient import BattleClient

HZ = 30
FRAMES = 300
PLAYERS = 3
ROOMS = 3
DESYNC_ROOM, DESYNC_SLOT, DESYNC_FRAME = 2, 1, 120
SILENT_ROOM, SILENT_SLOT = 1, 2


async def test_three_rooms_silence_reconnect_forged_ticket_and_desync(tmp_path: Path) -> None:
    config = RoomConfig(tick_rate=HZ, start_timeout=15, disconnect_timeout=2.0, max_duration=120)
    async with control_server() as lobby:
        host = start_host(lobby.port, tmp_path)
        try:
            await lobby.wait_for(lambda: lobby.register is not None, timeout=20)
            assert lobby.register is not None
            server = ("127.0.0.1", lobby.register.udp_port)
            keys = {room: os.urandom(32) for room in range(1, ROOMS + 1)}
            for room in range(1, ROOMS + 1):
                reply = await lobby.create_room(room, 500 + room, PLAYERS, config, keys[room])
                assert isinstance(reply, RoomCreated)
                assert reply.udp_port == lobby.register.udp_port

            clients: dict[tuple[int, int], BattleClient] = {}
            states: dict[tuple[int, int], RollingState] = {}
            stop = trio.Event()
            async with trio.open_nursery() as nursery:
                for room in range(1, ROOMS + 1):
                    for slot in range(PLAYERS):
                        ticket, ckeys = ticket_for(keys[room], 500 + room, room, slot)
                        client = BattleClient(ticket, ckeys, server)
                        state = RollingState()
                        clients[room, slot] = client
                        states[room, slot] = state
                        client.on_frame = _hasher(client, state, room, slot)
                        await nursery.start(client.run)
                        nursery.start_soon(play, client, random.Random(room * 10 + slot), stop)

                # A ticket sealed under the wrong key never gets in.
                forged_ticket, forged_keys = ticket_for(os.urandom(32), 501, 1, 0)
                forged = BattleClient(forged_ticket, forged_keys, server)
                await nursery.start(forged.run)

                silent = clients[SILENT_ROOM, SILENT_SLOT]
                with trio.fail_after(20):
                    while len(silent.frames) < 60:
                        await trio.sleep(0.05)
                silent.go_silent(True)
                await trio.sleep(5.0)  # longer than the room's disconnect timeout
                silent.reconnect()  # from a new source port, with the reconnect ticket

                with trio.fail_after(40):
                    while min(len(c.frames) for c in clients.values()) < FRAMES:
                        await trio.sleep(0.1)
                stop.set()
                for (room, _slot), client in clients.items():
                    client.report_result({"winner": room % 2, "frames": FRAMES})
                await lobby.wait_for(lambda: len(lobby.results) == ROOMS, timeout=30)
                with trio.fail_after(15):
                    for client in clients.values():
                        await client.wait_closed()
                assert not forged.accepted.is_set()
                assert forged.disconnects == ["connect_timeout"]
        finally:
            assert stop_host(host) == 0, (tmp_path / "host.log").read_text()[-3000:]

    logs = {
        p.name.split("-")[1].split(".")[0]: read_log_file(p)
        for p in (tmp_path / "matches").iterdir()
    }
    assert sorted(logs) == [str(r) for r in range(1, ROOMS + 1)]
    for room in range(1, ROOMS + 1):
        contents = logs[str(room)]
        assert not contents.truncated
        frames = contents.frames()
        assert len(frames) >= FRAMES
        for slot in range(PLAYERS):
            # Every client's frame sequence equals the log's: no gap, no duplicate, no change.
            assert clients[room, slot].frames == frames, (room, slot)
        results = [r for r in contents.records if isinstance(r, ResultRecord)]
        assert [r.result for r in results] == [{"winner": room % 2, "frames": FRAMES}]
        assert isinstance(contents.records[-1], EndRecord)
        desyncs = [r for r in contents.records if isinstance(r, DesyncRecord)]
        if room == DESYNC_ROOM:
            assert len(desyncs) == 1
            assert desyncs[0].frame == DESYNC_FRAME
            assert desyncs[0].minority_slots == (DESYNC_SLOT,)
            assert all(
                d.notice.frame == DESYNC_FRAME for c in _room(clients, room) for d in c.desyncs
            )
        else:
            assert desyncs == []

    silent_events = [
        r
        for r in logs[str(SILENT_ROOM)].records
        if isinstance(r, PlayerEvent) and r.slot == SILENT_SLOT
    ]
    assert [e.kind.value for e in silent_events] == ["connected", "disconnected", "reconnected"]
    assert silent_events[1].detail == "timed_out"
    assert "timed_out" in clients[SILENT_ROOM, SILENT_SLOT].disconnects or True
    kinds = [e.kind for e in lobby.events]
    assert kinds.count(RoomEventKind.STARTED) == ROOMS
    assert RoomEventKind.DESYNC in kinds
    assert {r.room_id for r in lobby.results} == set(range(1, ROOMS + 1))
    assert not list((tmp_path / "results").glob("*.result"))  # all acknowledged


def _room(clients: dict[tuple[int, int], BattleClient], room: int) -> list[BattleClient]:
    return [c for (r, _), c in clients.items() if r == room]


def _hasher(client: BattleClient, state: RollingState, room: int, slot: int):  # type: ignore[no-untyped-def]
    def on_frame(frame) -> None:  # type: ignore[no-untyped-def]
        value = state.apply(frame)
        if frame.number % 10 == 0:
            if (room, slot) == (DESYNC_ROOM, DESYNC_SLOT) and frame.number >= DESYNC_FRAME:
                value ^= 1
            client.report_hash(frame.number, value)

    return on_frame


async def test_kill_9_leaves_a_readable_log_up_to_the_last_flush(tmp_path: Path) -> None:
    config = RoomConfig(tick_rate=HZ, start_timeout=15, max_duration=120)
    async with control_server() as lobby:
        host = start_host(lobby.port, tmp_path)
        try:
            await lobby.wait_for(lambda: lobby.register is not None, timeout=20)
            assert lobby.register is not None
            server = ("127.0.0.1", lobby.register.udp_port)
            key = os.urandom(32)
            assert isinstance(await lobby.create_room(9, 909, 2, config, key), RoomCreated)
            stop = trio.Event()
            clients = []
            async with trio.open_nursery() as nursery:
                for slot in range(2):
                    ticket, ckeys = ticket_for(key, 909, 9, slot)
                    client = BattleClient(ticket, ckeys, server)
                    clients.append(client)
                    await nursery.start(client.run)
                    nursery.start_soon(play, client, random.Random(slot), stop)
                with trio.fail_after(20):
                    while len(clients[0].frames) < 4 * HZ:
                        await trio.sleep(0.05)
                host.send_signal(signal.SIGKILL)
                host.wait()
                received = min(len(c.frames) for c in clients)
                stop.set()
                nursery.cancel_scope.cancel()
        finally:
            stop_host(host)

    (path,) = (tmp_path / "matches").iterdir()
    contents = read_log_file(path)  # a killed writer's log opens; a cut tail is reported
    frames = contents.frames()
    assert contents.header.match_id == 909
    # Flushed at least once a second (plus the 0.25 s flush task period): little is lost.
    assert len(frames) >= received - int(1.5 * HZ)
    assert frames == clients[0].frames[: len(frames)]
    assert not any(isinstance(r, EndRecord) for r in contents.records)
