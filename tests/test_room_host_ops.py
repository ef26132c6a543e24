"""What operators rely on, against a real `framesync room-host` process.

Drain on SIGTERM, results that survive a lobby outage and a restart, the control channel's
answers (idempotent create, duplicate, full, bad request), the Prometheus endpoint, and a
garbage flood that must not disturb a running match.
"""

from __future__ import annotations

import os
import random
import signal
import socket
import subprocess
import urllib.error
import urllib.request
from pathlib import Path

import trio
from hostkit import (
    ControlServer,
    control_server,
    free_tcp_port,
    play,
    raw_frame,
    start_host,
    stop_host,
    ticket_for,
    until,
)

from battle.config import RoomConfig
from battle.control import EndRoom, Rejected, RoomCreated, encode_message, room_config_to_plain
from battle.inputlog import (
    EndRecord,
    LogContents,
    PlayerEvent,
    PlayerEventKind,
    ResultRecord,
    read_log_file,
)
from sim.battleclient import BattleClient

HZ = 30
CONFIG = RoomConfig(tick_rate=HZ, start_timeout=15, max_duration=120)
RESULT = {"winner": 1}


# --- helpers -----------------------------------------------------------------------------


async def _start_match(
    nursery: trio.Nursery,
    lobby: ControlServer,
    server: tuple[str, int],
    room_id: int,
    match_id: int,
    stop: trio.Event,
    players: int = 2,
) -> list[BattleClient]:
    key = os.urandom(32)
    reply = await lobby.create_room(room_id, match_id, players, CONFIG, key)
    assert isinstance(reply, RoomCreated), reply
    clients = []
    for slot in range(players):
        ticket, ckeys = ticket_for(key, match_id, room_id, slot)
        client = BattleClient(ticket, ckeys, server)
        await nursery.start(client.run)
        nursery.start_soon(play, client, random.Random(room_id * 10 + slot), stop)
        clients.append(client)
    return clients


async def _frames_at_least(clients: list[BattleClient], n: int, timeout: float = 15) -> None:
    await until(lambda: min(len(c.frames) for c in clients) >= n, timeout)


async def _finish_match(
    lobby: ControlServer, clients: list[BattleClient], stop: trio.Event, match_id: int
) -> None:
    """Every player reports the same result; the room ends and closes every session."""
    stop.set()
    for client in clients:
        client.report_result(RESULT)
    await lobby.wait_for(lambda: any(r.match_id == match_id for r in lobby.results), 15)
    with trio.fail_after(10):
        for client in clients:
            await client.wait_closed()


async def _exited(process: subprocess.Popen[bytes], timeout: float) -> int:
    await until(lambda: process.poll() is not None, timeout)
    code = process.returncode
    assert code is not None
    return code


def _log_tail(data_dir: Path) -> str:
    return (data_dir / "host.log").read_text()[-3000:]


def _match_log(data_dir: Path, match_id: int, room_id: int) -> LogContents:
    return read_log_file(data_dir / "matches" / f"{match_id}-{room_id}.fslog")


def _check_complete_log(
    contents: LogContents, clients: list[BattleClient], reason: str = "result"
) -> None:
    """Not truncated, ends with an EndRecord, and every client saw exactly the logged frames."""
    assert not contents.truncated
    end = contents.records[-1]
    assert isinstance(end, EndRecord)
    assert end.reason == reason
    frames = contents.frames()
    assert frames and end.frame == frames[-1].number
    for client in clients:
        assert client.frames == frames
        assert client.disconnects == ["room_ended"]


def _pending_results(data_dir: Path) -> list[Path]:
    return sorted((data_dir / "results").glob("*.result"))


def _parse_exposition(text: str) -> dict[str, float]:
    """`name{labels}` -> value for every sample line of the Prometheus text format."""
    samples = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            samples[name] = float(value)
    return samples


async def _scrape(port: int) -> tuple[str, dict[str, float]]:
    def get() -> str:
        url = f"http://127.0.0.1:{port}/metrics"
        with urllib.request.urlopen(url, timeout=5) as response:
            body: bytes = response.read()
            return body.decode()

    text = await trio.to_thread.run_sync(get)
    return text, _parse_exposition(text)


async def _scrape_when_up(port: int, timeout: float = 10) -> tuple[str, dict[str, float]]:
    with trio.fail_after(timeout):
        while True:
            try:
                return await _scrape(port)
            except (urllib.error.URLError, ConnectionError):
                await trio.sleep(0.05)


def _kernel_drops(udp_port: int) -> int:
    """Datagrams the kernel dropped at the host's socket (full receive buffer)."""
    local = f"0100007F:{udp_port:04X}"
    for line in Path("/proc/net/udp").read_text().splitlines()[1:]:
        fields = line.split()
        if fields[1] == local:
            return int(fields[-1])
    return 0


def _blast(address: tuple[str, int], count: int) -> int:
    """Send `count` garbage datagrams (bad magic) as fast as possible; returns how many went."""
    sent = 0
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        payload = bytes(range(32))  # first byte 0x00: not our magic
        for _ in range(count):
            try:
                sock.sendto(payload, address)
            except OSError:  # e.g. ENOBUFS: not sent, not counted
                continue
            sent += 1
    return sent


# --- 1. drain on SIGTERM -----------------------------------------------------------------


async def test_sigterm_drains_running_room_then_exits_zero(tmp_path: Path) -> None:
    async with control_server() as lobby:
        host = start_host(lobby.port, tmp_path)
        try:
            server = await lobby.wait_ready()
            assert lobby.heartbeat is not None and not lobby.heartbeat.draining
            stop = trio.Event()
            async with trio.open_nursery() as nursery:
                clients = await _start_match(nursery, lobby, server, 1, 101, stop)
                await _frames_at_least(clients, HZ)

                host.send_signal(signal.SIGTERM)
                await lobby.wait_for(
                    lambda: lobby.heartbeat is not None and lobby.heartbeat.draining, 5
                )
                reply = await lobby.create_room(2, 102, 2, CONFIG, os.urandom(32))
                assert isinstance(reply, Rejected) and reply.reason == "draining", reply
                assert lobby.heartbeat.rooms == 1 and lobby.heartbeat.players == 2

                # The running room keeps closing frames while the host drains.
                seen = min(len(c.frames) for c in clients)
                await _frames_at_least(clients, seen + 2 * HZ, timeout=10)
                assert host.poll() is None

                await _finish_match(lobby, clients, stop, 101)
            # Nobody signals again: the drained host stops by itself.
            assert await _exited(host, 10) == 0, _log_tail(tmp_path)
        finally:
            stop_host(host)

    (result,) = lobby.results
    assert (result.room_id, result.reason, result.result) == (1, "result", RESULT)
    contents = _match_log(tmp_path, 101, 1)
    _check_complete_log(contents, clients)
    assert result.frames == contents.frames()[-1].number
    assert [r.result for r in contents.records if isinstance(r, ResultRecord)] == [RESULT]
    assert not (tmp_path / "matches" / "102-2.fslog").exists()


async def test_drain_waits_for_result_acknowledgement(tmp_path: Path) -> None:
    # Acks arrive a second late: after the room has closed, yet within half a lease, so the
    # lobby still counts as alive (a longer stall would be a dead lobby by the host's rule).
    async with control_server(ack_delay=1.0) as lobby:
        host = start_host(lobby.port, tmp_path)
        try:
            server = await lobby.wait_ready()
            stop = trio.Event()
            async with trio.open_nursery() as nursery:
                clients = await _start_match(nursery, lobby, server, 12, 1212, stop)
                await _frames_at_least(clients, HZ)
                host.send_signal(signal.SIGTERM)
                await lobby.wait_for(
                    lambda: lobby.heartbeat is not None and lobby.heartbeat.draining, 5
                )
                await _finish_match(lobby, clients, stop, 1212)
            assert await _exited(host, 10) == 0, _log_tail(tmp_path)
        finally:
            stop_host(host)
    assert _pending_results(tmp_path) == []


async def test_sigterm_with_no_rooms_exits_promptly(tmp_path: Path) -> None:
    async with control_server() as lobby:
        host = start_host(lobby.port, tmp_path)
        try:
            await lobby.wait_ready()
            host.send_signal(signal.SIGTERM)
            assert await _exited(host, 3) == 0, _log_tail(tmp_path)
        finally:
            stop_host(host)


async def _second_sigterm(tmp_path: Path) -> tuple[int, list[BattleClient]]:
    """A room plays; SIGTERM drains, a second SIGTERM must stop the process at once."""
    async with control_server() as lobby:
        host = start_host(lobby.port, tmp_path)
        try:
            server = await lobby.wait_ready()
            stop = trio.Event()
            async with trio.open_nursery() as nursery:
                clients = await _start_match(nursery, lobby, server, 11, 1111, stop)
                await _frames_at_least(clients, HZ)
                host.send_signal(signal.SIGTERM)
                await lobby.wait_for(
                    lambda: lobby.heartbeat is not None and lobby.heartbeat.draining, 5
                )
                host.send_signal(signal.SIGTERM)
                code = await _exited(host, 3)
                stop.set()
                nursery.cancel_scope.cancel()
        finally:
            stop_host(host)
    return code, clients


async def test_second_sigterm_stops_at_once_leaving_a_readable_log(tmp_path: Path) -> None:
    code, clients = await _second_sigterm(tmp_path)
    assert code == 1, _log_tail(tmp_path)
    contents = _match_log(tmp_path, 1111, 11)
    assert not contents.truncated  # stopped, not killed: buffered frames were written
    frames = contents.frames()
    assert len(frames) >= HZ
    assert frames == clients[0].frames[: len(frames)]


async def test_second_sigterm_stops_without_a_traceback(tmp_path: Path) -> None:
    code, _ = await _second_sigterm(tmp_path)
    assert code == 1
    assert "Traceback" not in (tmp_path / "host.log").read_text()


async def test_drain_timeout_ends_running_room_as_shutdown(tmp_path: Path) -> None:
    async with control_server() as lobby:
        host = start_host(lobby.port, tmp_path, "--drain-timeout", "1")
        try:
            server = await lobby.wait_ready()
            stop = trio.Event()
            async with trio.open_nursery() as nursery:
                clients = await _start_match(nursery, lobby, server, 3, 303, stop)
                await _frames_at_least(clients, HZ)
                host.send_signal(signal.SIGTERM)
                await lobby.wait_for(lambda: bool(lobby.results), 10)
                with trio.fail_after(10):
                    for client in clients:
                        await client.wait_closed()
                stop.set()
            assert await _exited(host, 10) == 0, _log_tail(tmp_path)
        finally:
            stop_host(host)

    (result,) = lobby.results
    assert (result.match_id, result.reason, result.result) == (303, "shutdown", {})
    _check_complete_log(_match_log(tmp_path, 303, 3), clients, reason="shutdown")


# --- 2. results survive an unacknowledging lobby, a restart and an outage -----------------


async def test_unacknowledged_result_is_resent_and_survives_restart(tmp_path: Path) -> None:
    async with control_server(ack_results=False) as lobby:
        host = start_host(lobby.port, tmp_path)
        try:
            server = await lobby.wait_ready()
            stop = trio.Event()
            async with trio.open_nursery() as nursery:
                clients = await _start_match(nursery, lobby, server, 4, 404, stop)
                await _frames_at_least(clients, HZ)
                await _finish_match(lobby, clients, stop, 404)
            # Re-sent while unacknowledged (every lease: 3 s here).
            await lobby.wait_for(lambda: len(lobby.result_messages) >= 2, 8)
            assert {r.match_id for r in lobby.result_messages} == {404}
            assert [p.name for p in _pending_results(tmp_path)] == ["404.result"]
            assert stop_host(host) == 0, _log_tail(tmp_path)
        finally:
            stop_host(host)
    first = lobby.results[0]
    assert (first.reason, first.result) == ("result", RESULT)

    # A new process on the same data directory delivers it on registration.
    async with control_server() as lobby2:
        host = start_host(lobby2.port, tmp_path)
        try:
            await lobby2.wait_for(lambda: bool(lobby2.results), 10)
            assert lobby2.register is not None
            assert lobby2.results == [first]
            await until(lambda: not _pending_results(tmp_path), 5)
            assert stop_host(host) == 0, _log_tail(tmp_path)
        finally:
            stop_host(host)
    _check_complete_log(_match_log(tmp_path, 404, 4), clients)


async def test_result_produced_while_lobby_is_down_is_delivered_after_reconnect(
    tmp_path: Path,
) -> None:
    host: subprocess.Popen[bytes] | None = None
    try:
        stop = trio.Event()
        async with trio.open_nursery() as nursery:
            async with control_server() as lobby:
                host = start_host(lobby.port, tmp_path)
                server = await lobby.wait_ready()
                clients = await _start_match(nursery, lobby, server, 5, 505, stop)
                await _frames_at_least(clients, HZ)
                port = lobby.port
            # The lobby is gone (listener and connection closed); the match goes on and ends.
            seen = min(len(c.frames) for c in clients)
            await _frames_at_least(clients, seen + HZ // 2, timeout=5)
            stop.set()
            for client in clients:
                client.report_result(RESULT)
            await until(lambda: bool(_pending_results(tmp_path)), 10)
            with trio.fail_after(10):
                for client in clients:
                    await client.wait_closed()
        assert host.poll() is None

        # A lobby comes back on the same port: the host reconnects (backoff) and delivers.
        async with control_server(port) as lobby2:
            await lobby2.wait_for(lambda: bool(lobby2.results), 15)
            (result,) = lobby2.results
            assert (result.match_id, result.reason, result.result) == (505, "result", RESULT)
            await until(lambda: not _pending_results(tmp_path), 5)
            assert lobby2.register is not None and lobby2.register.rooms == ()
            assert stop_host(host) == 0, _log_tail(tmp_path)
    finally:
        if host is not None:
            stop_host(host)
    _check_complete_log(_match_log(tmp_path, 505, 5), clients)


# --- 3. control channel robustness -------------------------------------------------------


async def test_create_room_idempotent_duplicate_full_and_bad_request(tmp_path: Path) -> None:
    async with control_server() as lobby:
        host = start_host(lobby.port, tmp_path, "--capacity", "1")
        try:
            await lobby.wait_ready()
            assert lobby.register is not None and lobby.register.capacity == 1
            key = os.urandom(32)
            config = RoomConfig(tick_rate=HZ, start_timeout=2)  # nobody comes: it ends soon
            first = await lobby.create_room(7, 707, 2, config, key)
            assert isinstance(first, RoomCreated), first
            again = await lobby.create_room(7, 707, 2, config, key)
            assert isinstance(again, RoomCreated), again
            assert (again.room_id, again.udp_port) == (7, first.udp_port)
            assert again.request_id != first.request_id

            other_match = await lobby.create_room(7, 708, 2, config, key)
            assert isinstance(other_match, Rejected) and other_match.reason == "duplicate"
            full = await lobby.create_room(8, 808, 2, config, key)
            assert isinstance(full, Rejected) and full.reason == "full", full
            assert full.room_id == 8

            # Invalid CreateRooms (the encoder refuses them, so they go out raw): rejected as
            # bad requests, each answering its own request id, and the connection lives on.
            valid = {
                "t": "create_room",
                "room": 9,
                "match": 909,
                "seed": 1,
                "roster": [[0, 1, 0], [1, 2, 1]],
                "cfg": room_config_to_plain(config),
                "key": key,
            }
            for bad in (
                {**valid, "cfg": {**room_config_to_plain(config), "tick_rate": 5}},
                {**valid, "cfg": {"no_such_option": 1}},
                {**valid, "key": b"short"},
                {**valid, "roster": [[0, 1, 0], [0, 2, 1]]},
            ):
                reply = await lobby.request_raw(bad)
                assert isinstance(reply, Rejected), (bad, reply)
                assert (reply.reason, reply.room_id) == ("bad_request", 9)

            # Garbage that is not a CreateRoom is skipped without an answer.
            assert lobby.stream is not None
            await lobby.stream.send_all(raw_frame({"t": "no_such_message"}) + raw_frame([1, 2]))
            assert lobby.connected.is_set()
            again = await lobby.create_room(7, 707, 2, config, key)
            assert isinstance(again, RoomCreated), again
            assert lobby.register is not None and lobby.connected.is_set()
            await lobby.wait_for(lambda: bool(lobby.results), 5)
            assert lobby.results[0].reason == "not_enough_players"
            assert stop_host(host) == 0, _log_tail(tmp_path)
        finally:
            stop_host(host)
    assert sorted(p.name for p in (tmp_path / "matches").iterdir()) == ["707-7.fslog"]


async def test_create_room_for_finished_match_keeps_its_log(tmp_path: Path) -> None:
    config = RoomConfig(tick_rate=HZ, start_timeout=0.5)  # nobody comes: it ends soon
    async with control_server() as lobby:
        host = start_host(lobby.port, tmp_path)
        try:
            await lobby.wait_ready()
            key = os.urandom(32)
            assert isinstance(await lobby.create_room(13, 1313, 2, config, key), RoomCreated)
            await lobby.wait_for(lambda: bool(lobby.results), 5)
            await until(lambda: lobby.heartbeat is not None and lobby.heartbeat.rooms == 0, 5)
            before = _match_log(tmp_path, 1313, 13)
            assert isinstance(before.records[-1], EndRecord)
            # The lobby retries (say its first reply was lost): the finished match's log stays.
            await lobby.create_room(13, 1313, 2, config, key)
            await until(lambda: lobby.heartbeat is not None and lobby.heartbeat.rooms == 0, 5)
            assert stop_host(host) == 0, _log_tail(tmp_path)
        finally:
            stop_host(host)
    assert _match_log(tmp_path, 1313, 13).records[: len(before.records)] == before.records


async def test_create_room_in_same_read_as_registered_is_answered(tmp_path: Path) -> None:
    """A CreateRoom coalesced with Registered into one TCP read is not lost (regression)."""
    config = RoomConfig(tick_rate=HZ, start_timeout=0.5)  # nobody comes: it ends soon
    piggyback = raw_frame(
        {
            "t": "create_room",
            "req": 4242,
            "room": 42,
            "match": 4242,
            "seed": 1,
            "roster": [[0, 1, 0], [1, 2, 1]],
            "cfg": room_config_to_plain(config),
            "key": os.urandom(32),
        }
    )
    async with control_server(piggyback=piggyback) as lobby:
        host = start_host(lobby.port, tmp_path)
        try:
            await lobby.wait_ready()
            await lobby.wait_for(lambda: 4242 in lobby.replies, 3)
            assert isinstance(lobby.replies[4242], RoomCreated), lobby.replies[4242]
            await lobby.wait_for(lambda: bool(lobby.results), 5)
            assert lobby.results[0].reason == "not_enough_players"
            assert stop_host(host) == 0, _log_tail(tmp_path)
        finally:
            stop_host(host)


# --- 4. metrics --------------------------------------------------------------------------


async def test_metrics_endpoint(tmp_path: Path) -> None:
    metrics_port = free_tcp_port()
    async with control_server(ack_results=False) as lobby:
        host = start_host(lobby.port, tmp_path, "--metrics-port", str(metrics_port))
        try:
            server = await lobby.wait_ready()
            stop = trio.Event()
            async with trio.open_nursery() as nursery:
                clients = await _start_match(nursery, lobby, server, 6, 606, stop)
                await _frames_at_least(clients, 2 * HZ)
                with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as garbage:
                    for _ in range(3):
                        garbage.sendto(b"\x00garbage", server)

                async def counted() -> dict[str, float]:
                    with trio.fail_after(5):
                        while True:
                            _, samples = await _scrape_when_up(metrics_port)
                            if samples.get('framesync_drops_total{reason="bad_magic"}', 0) >= 3:
                                return samples
                            await trio.sleep(0.05)

                samples = await counted()
                text, _ = await _scrape(metrics_port)
                for name in (
                    "framesync_rooms",
                    "framesync_players_connected",
                    "framesync_datagrams_in",
                    "framesync_bytes_out",
                    "framesync_drops",
                    "framesync_tick_lateness_seconds_bucket",
                    "framesync_catch_ups_in_progress",
                    "framesync_results_pending",
                ):
                    assert f"\n{name}" in text, name
                assert samples['framesync_drops_total{reason="bad_magic"}'] == 3
                assert samples["framesync_rooms"] == 1
                assert samples["framesync_players_connected"] == 2
                assert samples["framesync_catch_ups_in_progress"] == 0
                assert samples["framesync_results_pending"] == 0
                frames_sent = 2 * HZ * 2  # at least this many frame datagrams went out
                assert samples["framesync_datagrams_out_total"] >= frames_sent
                assert samples["framesync_datagrams_in_total"] >= 2 * HZ
                assert (
                    samples["framesync_bytes_out_total"] > samples["framesync_datagrams_out_total"]
                )
                assert samples["framesync_bytes_in_total"] > samples["framesync_datagrams_in_total"]
                ticks = samples['framesync_tick_lateness_seconds_bucket{le="+Inf"}']
                assert ticks >= 2 * HZ
                assert samples["framesync_tick_lateness_seconds_count"] == ticks
                buckets = [v for k, v in samples.items() if "lateness_seconds_bucket" in k]
                assert buckets == sorted(buckets)  # cumulative
                # Most ticks run within 20 ms of their deadline on an idle loopback host.
                assert samples['framesync_tick_lateness_seconds_bucket{le="0.02"}'] >= 0.8 * ticks

                await _finish_match(lobby, clients, stop, 606)

            # After the match: no rooms, nobody connected, the unacknowledged result pending.
            with trio.fail_after(5):
                while True:
                    _, samples = await _scrape(metrics_port)
                    if samples["framesync_rooms"] == 0:
                        break
                    await trio.sleep(0.05)
            assert samples["framesync_players_connected"] == 0
            assert samples["framesync_results_pending"] == 1
        finally:
            stop_host(host)
    assert host.returncode == 0, _log_tail(tmp_path)


# --- 5. flood isolation ------------------------------------------------------------------

FLOOD = 20_000


async def test_garbage_flood_does_not_disturb_a_running_match(tmp_path: Path) -> None:
    metrics_port = free_tcp_port()
    async with control_server() as lobby:
        host = start_host(lobby.port, tmp_path, "--metrics-port", str(metrics_port))
        try:
            server = await lobby.wait_ready()
            stop = trio.Event()
            async with trio.open_nursery() as nursery:
                clients = await _start_match(nursery, lobby, server, 10, 1010, stop)
                await _frames_at_least(clients, HZ)
                _, before = await _scrape_when_up(metrics_port)
                bad_before = before.get('framesync_drops_total{reason="bad_magic"}', 0)
                kernel_before = _kernel_drops(server[1])

                sent = await trio.to_thread.run_sync(_blast, server, FLOOD)
                assert sent >= 0.99 * FLOOD
                seen = min(len(c.frames) for c in clients)
                await _frames_at_least(clients, seen + 2 * HZ, timeout=10)

                def bad_magic(samples: dict[str, float]) -> float:
                    return samples.get('framesync_drops_total{reason="bad_magic"}', 0) - bad_before

                with trio.fail_after(10):
                    while True:
                        _, after = await _scrape(metrics_port)
                        lost = _kernel_drops(server[1]) - kernel_before
                        if bad_magic(after) + lost >= sent:
                            break
                        await trio.sleep(0.05)
                # Every garbage datagram was either counted by the host or dropped by the
                # kernel at a full receive buffer (/proc/net/udp "drops"; a loaded machine
                # shows some, and a few of those may be players' datagrams).
                counted = bad_magic(after)
                assert counted <= sent
                assert sent <= counted + lost <= sent + 200, (counted, lost)
                assert counted >= 0.5 * sent, (counted, lost)
                assert after["framesync_players_connected"] == 2
                await _finish_match(lobby, clients, stop, 1010)
        finally:
            stop_host(host)
    assert host.returncode == 0, _log_tail(tmp_path)

    contents = _match_log(tmp_path, 1010, 10)
    _check_complete_log(contents, clients)
    kinds = [r.kind for r in contents.records if isinstance(r, PlayerEvent)]
    assert kinds == [PlayerEventKind.CONNECTED] * 2


async def test_end_room_ends_only_the_named_room_of_that_match(tmp_path: Path) -> None:
    """The lobby ends a room it will not use (a late reply made it a stray): its players are
    closed, its log ends "cancelled", and its result still reaches the lobby."""
    async with control_server() as lobby:
        host = start_host(lobby.port, tmp_path)
        try:
            server = await lobby.wait_ready()
            stop = trio.Event()
            async with trio.open_nursery() as nursery:
                clients = await _start_match(nursery, lobby, server, 21, 2121, stop)
                await _frames_at_least(clients, HZ)
                assert lobby.stream is not None
                await lobby.stream.send_all(encode_message(EndRoom(21, 9999, "wrong match")))
                seen = min(len(c.frames) for c in clients)
                await _frames_at_least(clients, seen + HZ)  # ignored: the room plays on
                assert not lobby.results
                await lobby.stream.send_all(encode_message(EndRoom(21, 2121, "stray")))
                await lobby.wait_for(lambda: any(r.match_id == 2121 for r in lobby.results), 15)
                with trio.fail_after(10):
                    for client in clients:
                        await client.wait_closed()
                stop.set()
        finally:
            stop_host(host)
    (result,) = [r for r in lobby.results if r.match_id == 2121]
    assert result.reason == "cancelled" and result.result == {}
    contents = _match_log(tmp_path, 2121, 21)
    end = [r for r in contents.records if isinstance(r, EndRecord)]
    assert [e.reason for e in end] == ["cancelled"]
