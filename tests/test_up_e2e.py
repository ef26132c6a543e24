"""`framesync up` end to end: real processes, real TCP and UDP, scripted clients.

A lobby and two room host children; clients log in over TCP, queue, accept, are placed in
rooms on both hosts, play over UDP and report a result that moves their ratings. Then the
failures operators meet: a client's TCP connection drops mid-match, a room host is killed.
"""

from __future__ import annotations

import os
import random
import signal
from collections import defaultdict
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path

import trio
from hostkit import play, until
from upkit import Up, accept_all, join_room, pid_alive, run_up

from lobby.protocol import MatchAborted, MatchEnded, MatchReady
from sim.lobbyclient import LobbyClient, open_lobby_client

HZ = 30


@asynccontextmanager
async def _players(up: Up, count: int, prefix: str) -> AsyncIterator[list[LobbyClient]]:
    port = up.ports()["client_port"]
    async with AsyncExitStack() as stack:
        clients = [
            await stack.enter_async_context(open_lobby_client("127.0.0.1", port))
            for _ in range(count)
        ]
        for i, client in enumerate(clients):
            await client.register_device(f"{prefix}-{i}")
        yield clients


async def _match(clients: list[LobbyClient], mode: str) -> list[MatchReady]:
    """Everyone queues and accepts; returns each player's MATCH_READY, in client order."""
    for client in clients:
        await client.queue(mode, "local")
    return await accept_all(clients)


async def test_up_plays_two_5v5_matches_on_two_hosts_and_rates_them(tmp_path: Path) -> None:
    with run_up(tmp_path / "up") as up:
        await up.wait_for_events("host_registered", count=2)
        async with _players(up, 20, "player") as clients:
            readies = await _match(clients, "5v5")
            by_match: dict[int, list[int]] = defaultdict(list)
            for i, r in enumerate(readies):
                by_match[r.match_id].append(i)
            assert sorted(len(v) for v in by_match.values()) == [10, 10]
            ports = {readies[v[0]].room_port for v in by_match.values()}
            assert len(ports) == 2, "the two rooms must be on different hosts"
            started = up.events("match_started")
            assert {e["host_id"] for e in started} == {"host-0", "host-1"}
            for members in by_match.values():
                seats = sorted((readies[i].team, readies[i].slot) for i in members)
                assert [s for _, s in seats] == list(range(10))
                assert [t for t, _ in seats] == [0] * 5 + [1] * 5

            stop = trio.Event()
            async with trio.open_nursery() as nursery:
                battles = [await join_room(nursery, r) for r in readies]
                for i, b in enumerate(battles):
                    nursery.start_soon(play, b, random.Random(i), stop)
                await until(lambda: min(len(b.frames) for b in battles) >= 60, 30)
                stop.set()
                for b in battles:
                    b.report_result({"winner": 0})
                ended = [await c.wait_for(MatchEnded, timeout=30) for c in clients]
                with trio.fail_after(15):
                    for b in battles:
                        await b.wait_closed()
            for i, (r, e) in enumerate(zip(readies, ended, strict=True)):
                assert e.match_id == r.match_id
                assert e.result == ("win" if r.team == 0 else "loss"), i
                if r.team == 0:
                    assert e.rating_after > e.rating_before
                else:
                    assert e.rating_after < e.rating_before
            rating = await clients[0].get_rating()
            assert rating.matches == 1 and rating.ordinal == ended[0].rating_after
            history = await clients[0].get_history(5)
            assert [h.match_id for h in history.entries] == [readies[0].match_id]
            assert up.events("match_ended", rated=True) and len(up.events("match_ended")) == 2
            # every frame each client saw is in order, with no gaps
            for b in battles:
                assert [f.number for f in b.frames] == list(range(1, len(b.frames) + 1))
        pids = [up.host_pid("host-0"), up.host_pid("host-1")]
        up.process.send_signal(signal.SIGTERM)
        assert up.process.wait(timeout=30) == 0
        assert not any(pid_alive(p) for p in pids)
        assert up.events("down")


async def test_tcp_drop_relogin_gets_a_working_ticket_and_a_killed_host_is_reported(
    tmp_path: Path,
) -> None:
    with run_up(tmp_path / "up") as up:
        await up.wait_for_events("host_registered", count=2)
        async with _players(up, 4, "p") as clients:
            readies = await _match(clients, "1v1")
            matches = sorted({r.match_id for r in readies})
            assert len(matches) == 2 and len({r.room_port for r in readies}) == 2
            hosts = {e["match_id"]: e["host_id"] for e in up.events("match_started")}
            stop = trio.Event()
            async with trio.open_nursery() as nursery:
                battles = [await join_room(nursery, r) for r in readies]
                for i, b in enumerate(battles):
                    nursery.start_soon(play, b, random.Random(i), stop)
                await until(lambda: min(len(b.frames) for b in battles) >= 30, 30)

                # A client loses its TCP connection (and its game restarts): it logs in again
                # and the room accepts the new ticket for the same slot.
                dropped = 0
                first = readies[dropped]
                session = clients[dropped].logged_in
                assert session is not None
                await clients[dropped].aclose()
                battles[dropped].go_silent(True)
                port = up.ports()["client_port"]
                async with open_lobby_client("127.0.0.1", port) as again:
                    resumed = await again.resume(session.session_token)  # no password again
                    assert resumed.player_id == session.player_id
                    fresh = await again.wait_for(MatchReady, timeout=10)
                    assert (fresh.match_id, fresh.slot, fresh.team) == (
                        first.match_id,
                        first.slot,
                        first.team,
                    )
                    assert fresh.ticket != first.ticket
                    rejoined = await join_room(nursery, fresh)
                    with trio.fail_after(15):
                        await rejoined.accepted.wait()
                    mate = next(
                        j
                        for j, r in enumerate(readies)
                        if r.match_id == first.match_id and j != dropped
                    )
                    seen = len(battles[mate].frames)
                    await until(lambda: len(rejoined.frames) > seen, 15)
                    frames = rejoined.frames
                    assert [f.number for f in frames] == list(range(1, len(frames) + 1))

                    # Kill -9 the host of the other match: its players hear of it.
                    other = next(m for m in matches if m != first.match_id)
                    victim = hosts[other]
                    pid = up.host_pid(victim)
                    killed_at = trio.current_time()
                    os.kill(pid, signal.SIGKILL)
                    told = [i for i, r in enumerate(readies) if r.match_id == other]
                    for i in told:
                        aborted = await clients[i].wait_for(MatchAborted, timeout=20)
                        assert aborted.match_id == other
                    print(f"players told {trio.current_time() - killed_at:.2f} s after the kill")
                    # Told at the lease's end, or sooner when the supervisor's restart of the
                    # host registers again first (its rooms died with the old process).
                    lost = up.events("host_lost", host_id=victim)
                    assert lost and lost[0]["reason"] in {"lease_expired", "restarted"}
                    # the supervisor restarts the host, which registers again
                    await up.wait_for_events("host_crashed", host_id=victim)
                    await up.wait_for_events("host_registered", count=2, host_id=victim)
                    # the surviving match goes on
                    survivor = rejoined
                    before = len(survivor.frames)
                    await until(lambda: len(survivor.frames) > before + 15, 15)
                stop.set()
                nursery.cancel_scope.cancel()


async def test_hosts_exit_when_up_is_killed(tmp_path: Path) -> None:
    """Hosts run in their own session (Ctrl-C reaches only `up`), so they must notice on
    their own when `up` dies without a word."""
    with run_up(tmp_path / "up", hosts=1) as up:
        await up.wait_for_events("host_registered")
        pid = up.host_pid("host-0")
        up.process.kill()
        up.process.wait()
        await until(lambda: not pid_alive(pid), 20)
        assert up.events("parent_gone")
