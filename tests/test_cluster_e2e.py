"""Two lobby nodes on one real redis-server, two room hosts that know both, real clients.

Shown here: bots logged in to both nodes play matches together; when the matchmaker's node
is killed with players queued, the other node takes the lease and matches them; a killed
room host's players are told when its lease runs out; Redis killed and started again under
a running match: the match plays on, and the nodes carry on afterwards.
"""

from __future__ import annotations

import json
import random
import subprocess
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import AsyncExitStack, ExitStack, asynccontextmanager, contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
import trio

pytest.importorskip("coredis", reason="coredis is not installed (the redis extra)")

from clusterkit import Process, lobby_node, room_host, share_secret, wait_ports
from hostkit import play, until
from redis_server import RedisProcess, restartable_redis
from upkit import ROOT, accept_all, join_room

from lobby.protocol import MatchAborted, MatchEnded, MatchReady
from sim.battleclient import BattleClient
from sim.lobbyclient import LobbyClient, LobbyError, open_lobby_client


@dataclass
class Cluster:
    redis: RedisProcess
    nodes: dict[str, Process]
    hosts: dict[str, Process]

    def client_port(self, node: str) -> int:
        return self.nodes[node].ports()["client_port"]

    def matchmaker(self) -> str:
        """The node that took the matchmaker lease last."""
        taken = [
            (e["timestamp"], name)
            for name, node in self.nodes.items()
            for e in node.events("matchmaker_lease_taken")
        ]
        assert taken, "no node took the matchmaker lease"
        return max(taken)[1]


async def shared_hosts(c: Cluster) -> set[str]:
    """The room hosts the shared registry in Redis lists as live."""
    import coredis  # noqa: PLC0415 - skipped above when absent

    from lobby.redisstore import RedisStore  # noqa: PLC0415

    async with coredis.Redis.from_url(c.redis.url, decode_responses=False) as client:
        return {h.host_id for h in await RedisStore(client).live_hosts()}


@contextmanager
def _processes(tmp_path: Path) -> Iterator[tuple[RedisProcess, ExitStack]]:
    with restartable_redis(tmp_path / "redis") as redis, ExitStack() as stack:
        yield redis, stack


@asynccontextmanager
async def cluster(tmp_path: Path) -> AsyncIterator[Cluster]:
    """Node a (started first, so it takes the lease), node b, and two hosts."""
    with _processes(tmp_path) as (redis, stack):
        share_secret(tmp_path / "a", tmp_path / "b")
        nodes = {"a": stack.enter_context(lobby_node(tmp_path / "a", redis.url, "a"))}
        await wait_ports(nodes["a"])
        await nodes["a"].wait_for_events("matchmaker_lease_taken")
        nodes["b"] = stack.enter_context(lobby_node(tmp_path / "b", redis.url, "b"))
        await wait_ports(nodes["b"])
        await nodes["b"].wait_for_events("matchmaker_seen")
        controls = [nodes[n].ports()["control_port"] for n in ("a", "b")]
        hosts = {h: stack.enter_context(room_host(tmp_path / h, controls, h)) for h in ("h1", "h2")}
        await nodes["a"].wait_for_events("host_registered", count=2)
        yield Cluster(redis, nodes, hosts)


@asynccontextmanager
async def players(c: Cluster, spread: list[str], prefix: str) -> AsyncIterator[list[LobbyClient]]:
    """One logged-in client per entry of `spread`, on that node."""
    async with AsyncExitStack() as stack:
        clients = []
        for i, node in enumerate(spread):
            client = await stack.enter_async_context(
                open_lobby_client("127.0.0.1", c.client_port(node))
            )
            await client.register_device(f"{prefix}-{i}")
            clients.append(client)
        yield clients


async def _queue(client: LobbyClient, mode: str = "1v1") -> int:
    """Queue, waiting out a matchmaker changing hands (answered `unavailable`)."""
    with trio.fail_after(20):
        while True:
            try:
                return (await client.queue(mode, "local")).ticket_id
            except LobbyError as exc:
                if exc.code != "unavailable":
                    raise
                await trio.sleep(0.2)


async def until_async(read: Callable[[], Awaitable[object]], want: object) -> None:
    with trio.fail_after(10):
        while await read() != want:
            await trio.sleep(0.05)


@asynccontextmanager
async def playing(readies: list[MatchReady]) -> AsyncIterator[list[BattleClient]]:
    """Everyone in their room, playing, until the block ends."""
    stop = trio.Event()
    async with trio.open_nursery() as nursery:
        battles = [await join_room(nursery, r) for r in readies]
        for i, b in enumerate(battles):
            nursery.start_soon(play, b, random.Random(i), stop)
        await until(lambda: min(len(b.frames) for b in battles) >= 20, 20)
        yield battles
        stop.set()
        nursery.cancel_scope.cancel()


async def test_bots_on_both_nodes_play_matches_together(tmp_path: Path) -> None:
    async with cluster(tmp_path) as c:
        lobbies = ",".join(f"127.0.0.1:{c.client_port(n)}" for n in ("a", "b"))
        args = [
            sys.executable, "-m", "sim.cli", "bots", "--lobby", lobbies, "--bots", "10",
            "--matches", "2", "--mode", "5v5", "--seconds", "4", "--seed", "7", "--json",
            "--quiet", "--timeout", "120",
        ]  # fmt: skip
        done = await trio.to_thread.run_sync(
            lambda: subprocess.run(
                args, check=False, cwd=ROOT, capture_output=True, text=True, timeout=180
            )
        )
        assert done.returncode == 0, done.stdout + done.stderr
        report = json.loads(done.stdout)
        assert report["matches_completed"] == 2, report
        # Half the bots were on each node, and every match mixed them.
        started = c.nodes["a"].events("match_started")
        assert len(started) == 2
        assert {e["host_id"] for e in started} <= {"h1", "h2"}
        for name in ("a", "b"):
            c.nodes[name].process.terminate()
            c.nodes[name].process.wait(timeout=30)
            (stopped,) = c.nodes[name].events("lobby_stopped")
            assert stopped["logins"] >= 5, (name, stopped)
        assert c.nodes["b"].events("lobby_stopped")[0].get("queued_tickets", 0) == 0


async def test_matchmaker_node_killed_mid_queue_and_a_host_killed_mid_match(
    tmp_path: Path,
) -> None:
    async with cluster(tmp_path) as c, players(c, ["b", "b", "b", "b"], "p") as clients:
        assert c.matchmaker() == "a"
        first = await _queue(clients[0])
        c.nodes["a"].kill()  # the matchmaker's node, with a player queued
        await c.nodes["b"].wait_for_events("matchmaker_lease_taken", timeout=15)
        second = await _queue(clients[1])
        assert second != first
        # The queued player was never told to queue again: the new matchmaker found the
        # ticket in Redis, with its wait, and matched it.
        readies = await accept_all(clients[:2])
        assert readies[0].match_id == readies[1].match_id
        assert c.nodes["b"].events("matchmaker_started")[0]["tickets"] == 1
        # Both hosts moved over to b, which shares them in Redis with their load.
        await c.nodes["b"].wait_for_events("host_registered", count=2)
        assert await shared_hosts(c) == {"h1", "h2"}

        # Kill the host of that match: its players are told when its lease runs out.
        host = next(e["host_id"] for e in c.nodes["b"].events("match_started"))
        async with playing(readies):
            killed_at = trio.current_time()
            c.hosts[host].kill()
            for client in clients[:2]:
                aborted = await client.wait_for(MatchAborted, timeout=20)
                assert aborted.match_id == readies[0].match_id
            print(f"players told {trio.current_time() - killed_at:.2f} s after the kill")
            (lost,) = c.nodes["b"].events("host_lost", host_id=host)
            assert lost["reason"] == "lease_expired"
            await until_async(lambda: shared_hosts(c), {"h1", "h2"} - {host})
        # The survivors queue and play on the other host.
        for client in clients[2:]:
            await _queue(client)
        more = await accept_all(clients[2:])
        assert {e["host_id"] for e in c.nodes["b"].events("match_started")[1:]} == (
            {"h1", "h2"} - {host}
        )
        assert more[0].match_id == more[1].match_id


async def test_a_match_plays_on_while_redis_restarts(tmp_path: Path) -> None:
    async with cluster(tmp_path) as c, players(c, ["a", "b"], "r") as clients:
        for client in clients:
            await _queue(client)
        readies = await accept_all(clients)
        async with playing(readies) as battles:
            c.redis.kill()
            held = min(len(b.frames) for b in battles)
            # Rooms do not need Redis: a whole second of frames arrives while it is down.
            await until(lambda: min(len(b.frames) for b in battles) >= held + 30, 10)
            c.redis.start()
            # The nodes reconnect: the player on the other node reads its rating again...
            with trio.fail_after(20):
                while True:
                    try:
                        await clients[1].get_rating()
                        break
                    except LobbyError as exc:
                        assert exc.code == "unavailable"
                        await trio.sleep(0.2)
            # ...and the match ends normally, rated through the matchmaker.
            for b in battles:
                b.report_result({"winner": 0})
            for client in clients:
                ended = await client.wait_for(MatchEnded, timeout=30)
                assert ended.match_id == readies[0].match_id
        assert all(n.process.poll() is None for n in c.nodes.values())
