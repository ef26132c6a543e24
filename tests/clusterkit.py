"""Real lobby nodes on one Redis, and room hosts that know them all, for end-to-end tests."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import trio
from upkit import FAST_CONFIG, ROOT, Up

CLUSTER_CONFIG = FAST_CONFIG.replace("[hosts]", "lease = 1.5\n\n[hosts]").replace(
    "start_timeout = 20.0", "start_timeout = 5.0"
)
"""Short leases and timeouts; a room nobody joins ends soon, so hosts stop quickly."""


class Process(Up):
    """A lobby node or room host whose JSON log lines go to `log_name` in `data_dir`."""

    def __init__(self, process: subprocess.Popen[bytes], data_dir: Path, log_name: str) -> None:
        super().__init__(process, data_dir)
        self.log_path = data_dir / log_name

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait()


def _spawn(args: Sequence[str], data_dir: Path, log_name: str) -> Process:
    data_dir.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    with open(data_dir / log_name, "ab") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "sim.cli", *args],
            cwd=ROOT,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
        )
    return Process(process, data_dir, log_name)


def _stop(proc: Process) -> None:
    if proc.process.poll() is None:
        proc.process.send_signal(signal.SIGTERM)
        try:
            proc.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.process.kill()
            proc.process.wait()
            raise AssertionError(f"did not stop on SIGTERM:\n{proc.log_tail()}") from None


@contextmanager
def lobby_node(
    data_dir: Path, redis_url: str, node_id: str, config: str = CLUSTER_CONFIG
) -> Iterator[Process]:
    """`framesync lobby --redis` on free ports; its ports are in data_dir/ports.json once up.
    Nodes of one cluster must share the session secret: give them one `data_dir` parent and
    copy it, or start them from the same directory (as here, one secret per test)."""
    data_dir.mkdir(parents=True, exist_ok=True)
    (data_dir / "lobby.toml").write_text(config)
    args = [
        "lobby", "--redis", redis_url, "--node-id", node_id, "--client-port", "0",
        "--control-port", "0", "--data-dir", str(data_dir), "--config",
        str(data_dir / "lobby.toml"), "--ports-file", str(data_dir / "ports.json"),
        "--log-json",
    ]  # fmt: skip
    node = _spawn(args, data_dir, "lobby.log")
    try:
        yield node
    finally:
        _stop(node)


@contextmanager
def room_host(data_dir: Path, control_ports: Sequence[int], host_id: str) -> Iterator[Process]:
    """`framesync room-host` that knows every lobby node's control port."""
    lobbies = ",".join(f"127.0.0.1:{port}" for port in control_ports)
    args = [
        "room-host", "--bind", "127.0.0.1:0", "--lobby", lobbies, "--host-id", host_id,
        "--data-dir", str(data_dir), "--log-json",
    ]  # fmt: skip
    host = _spawn(args, data_dir, "host.log")
    try:
        yield host
    finally:
        _stop(host)


def share_secret(*data_dirs: Path) -> None:
    """One session secret for every node (tokens from one node resume on another)."""
    secret = os.urandom(32)
    for data_dir in data_dirs:
        data_dir.mkdir(parents=True, exist_ok=True)
        path = data_dir / "session.key"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.write(fd, secret)
        finally:
            os.close(fd)


async def wait_ports(node: Process) -> dict[str, int]:
    """The node's bound ports, once it has written them."""
    with trio.fail_after(30):
        while not (node.data_dir / "ports.json").exists():
            assert node.process.poll() is None, node.log_tail()
            await trio.sleep(0.05)
    return node.ports()
