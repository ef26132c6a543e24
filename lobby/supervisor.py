"""`framesync up`: a lobby node plus N room host child processes on this machine.

Each room host is a `framesync room-host` child that registers with the lobby over the
control channel on loopback. A child that exits while we are not stopping crashed: it is
logged and restarted after a backoff (0.5 s doubling to 30 s, reset once a child has run a
minute), on the same UDP port so addresses in flight stay right. Its rooms died with it; the
lobby notices through the lease and tells their players.

Stopping (SIGTERM or Ctrl-C): every child is asked to drain (SIGTERM: no new rooms, running
rooms finish, up to the drain timeout), the lobby keeps serving meanwhile so results reach it,
then the lobby stops. A second signal asks the children to stop at once (their second
SIGTERM); a child still alive `drain_timeout + 15` s after the first signal is killed.
"""

from __future__ import annotations

import math
import os
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import structlog
import trio

from lobby.node import run_lobby_node
from lobby.server import LobbyServer
from lobby.settings import ListenSettings, LobbySettings

_BACKOFF_FIRST = 0.5
_BACKOFF_MAX = 30.0
_HEALTHY_AFTER = 60.0
_KILL_GRACE = 15.0

log = structlog.get_logger("framesync.up")


@dataclass(frozen=True, slots=True)
class HostSpec:
    """How to start one room host child."""

    host_id: str
    bind_host: str
    port: int
    """UDP port; 0 lets the kernel pick one on every start."""
    data_dir: Path
    capacity: int
    drain_timeout: float
    public_host: str | None = None
    log_json: bool = False
    log_level: str = "info"
    metrics_port: int | None = None

    def command(self, control_port: int) -> list[str]:
        args = [
            sys.executable,
            "-m",
            "sim.cli",
            "room-host",
            "--bind",
            f"{self.bind_host}:{self.port}",
            "--lobby",
            f"127.0.0.1:{control_port}",
            "--data-dir",
            str(self.data_dir),
            "--host-id",
            self.host_id,
            "--capacity",
            str(self.capacity),
            "--drain-timeout",
            str(self.drain_timeout),
            "--log-level",
            self.log_level,
            "--parent-pid",
            str(os.getpid()),
        ]
        if self.public_host:
            args += ["--public-host", self.public_host]
        if self.log_json:
            args.append("--log-json")
        if self.metrics_port:
            args += ["--metrics-port", str(self.metrics_port)]
        return args


class HostSupervisor:
    """Keeps one room host child running until asked to stop."""

    def __init__(self, spec: HostSpec, control_port: int) -> None:
        self.spec = spec
        self.control_port = control_port
        self.process: trio.Process | None = None
        self.restarts = 0
        self._stopping = False
        self._stop = trio.Event()

    async def run(self) -> None:
        """Start, watch and restart the child; returns once stopping and the child is gone."""
        backoff = _BACKOFF_FIRST
        self.spec.data_dir.mkdir(parents=True, exist_ok=True)
        while not self._stopping:
            started = trio.current_time()
            process = await trio.lowlevel.open_process(
                self.spec.command(self.control_port),
                stdin=subprocess.DEVNULL,
                start_new_session=True,  # Ctrl-C reaches only us; we pass on one SIGTERM
            )
            self.process = process
            log.info("host_started", host_id=self.spec.host_id, pid=process.pid)
            try:
                code = await process.wait()
            finally:
                if process.returncode is None:  # cancelled: never leave an orphan
                    process.kill()
                    with trio.CancelScope(shield=True):
                        await process.wait()
            if self._stop.is_set():
                log.info("host_stopped", host_id=self.spec.host_id, code=code)
                break
            if trio.current_time() - started >= _HEALTHY_AFTER:
                backoff = _BACKOFF_FIRST
            self.restarts += 1
            log.error(
                "host_crashed",
                host_id=self.spec.host_id,
                pid=process.pid,
                code=code,
                restart_in=backoff,
                restarts=self.restarts,
            )
            with trio.move_on_after(backoff):
                await self._stop.wait()
            backoff = min(_BACKOFF_MAX, backoff * 2)

    def signal(self, signum: int) -> None:
        """Stop restarting, and pass the signal to the child (SIGTERM drains, twice stops)."""
        self._stopping = True
        self._stop.set()
        process = self.process
        if process is not None and process.returncode is None:
            process.send_signal(signum)

    def kill(self) -> None:
        self._stopping = True
        self._stop.set()
        if self.process is not None and self.process.returncode is None:
            self.process.kill()


async def run_up(
    settings: LobbySettings,
    listen: ListenSettings,
    hosts: list[HostSpec],
    *,
    ports_file: Path | None = None,
    metrics_port: int | None = None,
) -> int:
    """Serve the lobby and its room hosts until a signal stops them; see the module docstring."""
    drain = max((h.drain_timeout for h in hosts), default=0.0)
    async with trio.open_nursery() as nursery:
        server: LobbyServer = await nursery.start(
            lambda task_status: run_lobby_node(
                settings,
                listen,
                ports_file=ports_file,
                metrics_port=metrics_port,
                task_status=task_status,
            )
        )
        supervisors = [HostSupervisor(spec, server.control_port) for spec in hosts]
        log.info("up", hosts=len(hosts), client_port=server.client_port)
        async with trio.open_nursery() as watch:
            watch.start_soon(_watch_signals, supervisors, drain)
            async with trio.open_nursery() as children:
                for supervisor in supervisors:
                    children.start_soon(supervisor.run)
            watch.cancel_scope.cancel()
        server.stop()
    log.info("down", restarts=sum(s.restarts for s in supervisors))
    return 0


async def _watch_signals(supervisors: list[HostSupervisor], drain: float) -> None:
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        first = True
        deadline = math.inf
        while True:
            with trio.move_on_at(deadline):
                signum = await signals.__anext__()
                name = signal.Signals(signum).name
                log.info("stopping" if first else "stopping_now", signal=name)
                for supervisor in supervisors:
                    supervisor.signal(signal.SIGTERM)
                if first:
                    deadline = trio.current_time() + drain + _KILL_GRACE
                first = False
                continue
            log.warning("killing_hosts", after=drain + _KILL_GRACE)
            for supervisor in supervisors:
                supervisor.kill()
            return
