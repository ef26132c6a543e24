"""A real `framesync lobby --redis` process over a real redis-server that is killed and
started again: the node answers `unavailable` while Redis is down and carries on after."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import trio

pytest.importorskip("coredis", reason="coredis is not installed (the redis extra)")

from redis_server import restartable_redis
from upkit import ROOT

from lobby.protocol import ErrorCode
from sim.lobbyclient import LobbyError, open_lobby_client


@contextmanager
def lobby_node(data_dir: Path, redis_url: str) -> Iterator[subprocess.Popen[bytes]]:
    data_dir.mkdir(parents=True, exist_ok=True)
    args = [
        sys.executable, "-m", "sim.cli", "lobby", "--redis", redis_url,
        "--client-port", "0", "--control-port", "0", "--data-dir", str(data_dir),
        "--ports-file", str(data_dir / "ports.json"), "--log-json",
    ]  # fmt: skip
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    with open(data_dir / "lobby.log", "ab") as log:
        process = subprocess.Popen(args, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, env=env)
    try:
        yield process
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
            raise AssertionError("the lobby did not stop on SIGTERM") from None


async def _client_port(data_dir: Path, process: subprocess.Popen[bytes]) -> int:
    with trio.fail_after(20):
        while not (data_dir / "ports.json").exists():
            assert process.poll() is None, (data_dir / "lobby.log").read_text()
            await trio.sleep(0.05)
    return int(json.loads((data_dir / "ports.json").read_text())["client_port"])


async def test_a_lobby_on_redis_rides_out_a_redis_restart(tmp_path: Path) -> None:
    with (
        restartable_redis(tmp_path / "redis") as redis,
        lobby_node(tmp_path / "lobby", redis.url) as node,
    ):
        port = await _client_port(tmp_path / "lobby", node)
        async with open_lobby_client("127.0.0.1", port) as client:
            me = await client.register("alice", "correct horse")
            rating = await client.get_rating()
            assert rating.matches == 0

            redis.kill()
            with trio.fail_after(20):
                with pytest.raises(LobbyError) as refused:
                    await client.get_rating()
            assert refused.value.code == ErrorCode.UNAVAILABLE
            assert node.poll() is None  # the node stays up and keeps the connection
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
