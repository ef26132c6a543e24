"""A real `framesync up` process for end-to-end tests: start it, read its log, stop it."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import trio

from battle.ticket import ClientKeys
from lobby.protocol import MatchProposed, MatchReady
from sim.battleclient import BattleClient
from sim.lobbyclient import LobbyClient

ROOT = Path(__file__).resolve().parent.parent

FAST_CONFIG = """
[lobby]
heartbeat_interval = 1.0
idle_timeout = 10.0

[matchmaker]
interval = 0.2
ready_timeout = 15.0

[hosts]
heartbeat_interval = 0.25
lease = 1.5
create_timeout = 3.0

[room]
tick_rate = 30
start_timeout = 20.0
max_duration = 300.0
"""


class Up:
    """One `framesync up` process whose JSON log lines (its own and its hosts') go to a file."""

    def __init__(self, process: subprocess.Popen[bytes], data_dir: Path) -> None:
        self.process = process
        self.data_dir = data_dir
        self.log_path = data_dir / "up.log"

    def events(self, event: str | None = None, **fields: Any) -> list[dict[str, Any]]:
        """Log records so far (with `event` and `fields`, if given), in order."""
        records = []
        for line in self.log_path.read_text().splitlines():
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue  # a line being written, or a traceback
            if not isinstance(record, dict):
                continue
            if event is not None and record.get("event") != event:
                continue
            if all(record.get(k) == v for k, v in fields.items()):
                records.append(record)
        return records

    async def wait_for_events(
        self, event: str, count: int = 1, timeout: float = 30.0, **fields: Any
    ) -> list[dict[str, Any]]:
        """At least `count` matching records; TooSlowError (with the log) after `timeout`."""
        try:
            with trio.fail_after(timeout):
                while len(found := self.events(event, **fields)) < count:
                    if self.process.poll() is not None:
                        raise AssertionError(f"up exited early:\n{self.log_tail()}")
                    await trio.sleep(0.05)
        except trio.TooSlowError:
            raise AssertionError(f"no {count}x {event} {fields}:\n{self.log_tail()}") from None
        return found

    def ports(self) -> dict[str, int]:
        ports: dict[str, int] = json.loads((self.data_dir / "ports.json").read_text())
        return ports

    def host_pid(self, host_id: str) -> int:
        """The pid of the host's current process."""
        return int(self.events("host_started", host_id=host_id)[-1]["pid"])

    def log_tail(self, lines: int = 60) -> str:
        return "\n".join(self.log_path.read_text().splitlines()[-lines:])


@contextmanager
def run_up(data_dir: Path, hosts: int = 2, config: str = FAST_CONFIG) -> Iterator[Up]:
    """`framesync up` on loopback with free ports; stopped with SIGTERM on exit (killed if
    it does not stop, which fails the test)."""
    data_dir.mkdir(parents=True, exist_ok=True)
    (data_dir / "lobby.toml").write_text(config)
    args = [
        sys.executable,
        "-m",
        "sim.cli",
        "up",
        "--hosts",
        str(hosts),
        "--udp-port",
        "0",
        "--client-port",
        "0",
        "--control-port",
        "0",
        "--data-dir",
        str(data_dir),
        "--config",
        str(data_dir / "lobby.toml"),
        "--ports-file",
        str(data_dir / "ports.json"),
        "--drain-timeout",
        "5",
        "--log-json",
    ]
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    with open(data_dir / "up.log", "ab") as log:
        process = subprocess.Popen(args, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, env=env)
    up = Up(process, data_dir)
    try:
        yield up
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
                raise AssertionError(f"up did not stop on SIGTERM:\n{up.log_tail()}") from None


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


async def accept_all(clients: list[LobbyClient]) -> list[MatchReady]:
    """Every client accepts its next ready check; each one's MATCH_READY, in client order."""
    ready: list[MatchReady | None] = [None] * len(clients)

    async def one(i: int) -> None:
        proposal = await clients[i].wait_for(MatchProposed, timeout=30)
        await clients[i].accept(proposal.proposal_id)
        ready[i] = await clients[i].wait_for(MatchReady, timeout=30)

    async with trio.open_nursery() as nursery:
        for i in range(len(clients)):
            nursery.start_soon(one, i)
    assert all(r is not None for r in ready)
    return [r for r in ready if r is not None]


async def join_room(nursery: trio.Nursery, ready: MatchReady) -> BattleClient:
    """A BattleClient on the room MATCH_READY names, running in `nursery`."""
    client = BattleClient(
        ready.ticket, ClientKeys(ready.c2s_key, ready.s2c_key), (ready.room_host, ready.room_port)
    )
    await nursery.start(client.run)
    return client
