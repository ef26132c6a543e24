"""A real `framesync lobby --redis` process over a real redis-server that is killed and
started again: the node answers `unavailable` while Redis is down and carries on after."""

from __future__ import annotations

from pathlib import Path

import pytest
import trio

pytest.importorskip("coredis", reason="coredis is not installed (the redis extra)")

from clusterkit import lobby_node, wait_ports
from redis_server import restartable_redis

from lobby.protocol import ErrorCode
from sim.lobbyclient import LobbyError, open_lobby_client


async def test_a_lobby_on_redis_rides_out_a_redis_restart(tmp_path: Path) -> None:
    with (
        restartable_redis(tmp_path / "redis") as redis,
        lobby_node(tmp_path / "lobby", redis.url, "solo") as node,
    ):
        port = (await wait_ports(node))["client_port"]
        async with open_lobby_client("127.0.0.1", port) as client:
            me = await client.register("alice", "correct horse")
            rating = await client.get_rating()
            assert rating.matches == 0

            redis.kill()
            with trio.fail_after(20):
                with pytest.raises(LobbyError) as refused:
                    await client.get_rating()
            assert refused.value.code == ErrorCode.UNAVAILABLE
            assert node.process.poll() is None  # the node stays up and keeps the connection
            await client.heartbeat()

            redis.start()  # same port, same append-only file
            with trio.fail_after(20):
                while True:
                    try:
                        await client.get_rating()
                        break
                    except LobbyError as exc:
                        assert exc.code == ErrorCode.UNAVAILABLE
                        await trio.sleep(0.2)
        # What was written before the restart is still there, for a new connection too.
        async with open_lobby_client("127.0.0.1", port) as again:
            back = await again.login("alice", "correct horse")
            assert back.player_id == me.player_id
        async with open_lobby_client("127.0.0.1", port) as device:
            other = await device.register_device("device-0001")
            assert other.player_id > me.player_id
