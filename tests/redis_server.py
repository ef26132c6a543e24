"""A real, throwaway redis-server for tests: a subprocess on a free loopback port.

Tests that need it take the ``redis_server`` fixture. Without a ``redis-server`` binary on
PATH they are skipped, with the reason in the summary, rather than passed.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

HOST = "127.0.0.1"
_START_TIMEOUT = 15.0
_START_TRIES = 3  # the free port can be taken between finding it and the server binding it


@dataclass(frozen=True)
class RedisServer:
    host: str
    port: int


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def _answers_ping(port: int) -> bool:
    try:
        with socket.create_connection((HOST, port), timeout=1.0) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(64).startswith(b"+PONG")
    except OSError:
        return False


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@contextmanager
def running_redis(binary: str) -> Iterator[RedisServer]:
    """Start ``binary`` in a temporary directory, wait until it answers PING, stop it after."""
    with tempfile.TemporaryDirectory(prefix="framesync-redis-") as tmp:
        log = Path(tmp) / "redis.log"
        for _ in range(_START_TRIES):
            port = _free_port()
            with log.open("wb") as out:
                proc = subprocess.Popen(
                    [binary, "--port", str(port), "--bind", HOST, "--save", "",
                     "--appendonly", "no", "--dir", tmp],
                    stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                )  # fmt: skip
            try:
                deadline = time.monotonic() + _START_TIMEOUT
                while proc.poll() is None and time.monotonic() < deadline:
                    if _answers_ping(port):
                        yield RedisServer(HOST, port)
                        return
                    time.sleep(0.05)
            finally:
                _stop(proc)
        raise RuntimeError(f"redis-server did not start; its log:\n{log.read_text()}")


class RedisProcess:
    """A redis-server a test can kill and start again on the same port, keeping its data
    (append-only file in `directory`), to show clients riding out a restart."""

    def __init__(self, binary: str, directory: Path) -> None:
        self.binary = binary
        self.directory = directory
        self.port = _free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://{HOST}:{self.port}/0"

    def start(self) -> None:
        assert self.proc is None or self.proc.poll() is not None, "already running"
        with (self.directory / "redis.log").open("ab") as out:
            self.proc = subprocess.Popen(
                [self.binary, "--port", str(self.port), "--bind", HOST, "--save", "",
                 "--appendonly", "yes", "--appendfsync", "always", "--dir", str(self.directory)],
                stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            )  # fmt: skip
        deadline = time.monotonic() + _START_TIMEOUT
        while not _answers_ping(self.port):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                log = (self.directory / "redis.log").read_text()
                raise RuntimeError(f"redis-server did not start; its log:\n{log}")
            time.sleep(0.05)

    def kill(self) -> None:
        """SIGKILL: no goodbye to clients, as a crash or a pulled cable."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def stop(self) -> None:
        if self.proc is not None:
            _stop(self.proc)


@contextmanager
def restartable_redis(directory: Path) -> Iterator[RedisProcess]:
    """A `RedisProcess`, started; skips the test when redis-server is not installed."""
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.skip("redis-server is not on PATH: install it (e.g. apt-get install redis-server)")
    directory.mkdir(parents=True, exist_ok=True)
    server = RedisProcess(binary, directory)
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    """One server for the whole session; tests keep apart by flushing or by distinct keys."""
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.skip("redis-server is not on PATH: install it (e.g. apt-get install redis-server)")
    with running_redis(binary) as server:
        yield server
