"""`framesync room-host`: the process studios run, one per core."""

from __future__ import annotations

import argparse
import json
import os
import signal
from pathlib import Path

import structlog
import trio

from battle.gctune import tune_gc
from battle.host import HostSettings, RoomHost
from battle.hostcontrol import ControlClient
from battle.logsetup import configure_logging
from battle.metrics import start_metrics_server


async def _watch_signals(host: RoomHost) -> None:
    """First SIGTERM/SIGINT drains; a second one stops at once."""
    log = structlog.get_logger("framesync.host")
    asked = False
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async for signum in signals:
            if asked:
                log.warning("stopping_now", signal=signal.Signals(signum).name)
                host.stop_now()
                return
            asked = True
            log.info("drain_requested", signal=signal.Signals(signum).name)
            host.request_drain("signal")


async def _watch_parent(host: RoomHost, parent: int) -> None:
    """Under `framesync up` the lobby is our parent: once it is gone, so is every player's
    way back, and nobody is left to stop us (we run in our own session)."""
    while os.getppid() == parent:
        await trio.sleep(1.0)
    structlog.get_logger("framesync.host").warning("parent_gone", parent=parent)
    host.stop_now()


async def _main(args: argparse.Namespace) -> int:
    bind: tuple[str, int] = args.bind
    settings = HostSettings(
        host_id=args.host_id or f"host-{bind[1]}-{os.getpid()}",
        bind=bind,
        public_host=args.public_host,
        data_dir=Path(args.data_dir),
        capacity=args.capacity,
        drain_timeout=args.drain_timeout,
    )
    host = RoomHost(settings)
    async with trio.open_nursery() as nursery:
        await nursery.start(host.run)
        nursery.start_soon(_watch_signals, host)
        if args.lobby:
            nursery.start_soon(ControlClient(host, args.lobby).run)
        if args.parent_pid:
            nursery.start_soon(_watch_parent, host, args.parent_pid)
        if args.metrics_port:
            start_metrics_server(args.metrics_port, lambda: host.metrics_snapshot, host.lateness)
        await host.wait_stopped()
        nursery.cancel_scope.cancel()
    if args.stats_file:
        _write_stats(host, Path(args.stats_file))
    return host.exit_code


def _write_stats(host: RoomHost, path: Path) -> None:
    """Counters and raw tick lateness, for benchmarks that run the host as a process."""
    core = host.core
    assert core is not None
    path.write_text(
        json.dumps(
            {
                "stats": dict(core.stats),
                "drops": dict(core.drops),
                "lateness": list(host.lateness_samples),
            }
        )
    )


def run_room_host(args: argparse.Namespace) -> int:
    configure_logging(json=args.log_json, level=args.log_level)
    tune_gc()
    profile_path = os.environ.get("FRAMESYNC_PROFILE")
    try:
        if not profile_path:
            return trio.run(_main, args)
        # Developer aid: cProfile the whole process into this file.
        import cProfile  # noqa: PLC0415

        profiler = cProfile.Profile()
        try:
            return profiler.runcall(trio.run, _main, args)
        finally:
            profiler.dump_stats(profile_path)
    except KeyboardInterrupt:  # pragma: no cover - signal receiver normally handles it
        return 130
