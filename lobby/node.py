"""One lobby node as a process: its data directory, its secret, its store, its signals.

The data directory holds the session-token secret (`session.key`, 32 random bytes made on
first start, mode 0600) and, unless the node is given a Redis URL, the SQLite store
(`lobby.sqlite3`). Both must survive restarts: a new secret logs every player out, a lost
store loses accounts and ratings. Keep them private: the store also holds the ticket keys of
matches in progress. Nodes sharing one Redis must share one `session.key` too.
"""

from __future__ import annotations

import json
import os
import signal
import socket
from contextlib import suppress
from pathlib import Path
from typing import Protocol

import structlog
import trio

from battle.gctune import tune_gc
from lobby.server import LobbyServer
from lobby.settings import ListenSettings, LobbySettings
from lobby.sqlitestore import LocalStore, SqliteStore
from lobby.store import AsyncStore

SECRET_FILE = "session.key"
STORE_FILE = "lobby.sqlite3"
_SECRET_SIZE = 32
_REDIS_TIMEOUT = 2.0
"""Seconds a Redis call may take before it counts as unreachable (reads answer unavailable,
writes are retried)."""
_STARTUP_RETRY = 1.0

log = structlog.get_logger("framesync.lobby")

__all__ = ["load_or_create_secret", "run_lobby_node", "serve_lobby_until_signal", "tune_gc"]


def load_or_create_secret(path: Path) -> bytes:
    """The node's session secret, created (0600, written atomically) if it does not exist."""
    with suppress(FileNotFoundError):
        secret = path.read_bytes()
        if len(secret) != _SECRET_SIZE:
            raise ValueError(f"{path}: expected {_SECRET_SIZE} bytes, found {len(secret)}")
        return secret
    secret = os.urandom(_SECRET_SIZE)
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, secret)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    return secret


async def run_lobby_node(
    settings: LobbySettings,
    listen: ListenSettings,
    *,
    ports_file: Path | None = None,
    metrics_port: int | None = None,
    task_status: trio.TaskStatus[LobbyServer] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Open the data directory and serve until cancelled or the server is stopped."""
    data_dir = listen.data_dir
    data_dir.mkdir(parents=True, exist_ok=True)
    secret = load_or_create_secret(data_dir / SECRET_FILE)
    if listen.redis_url is not None:
        await _run_cluster_node(
            settings,
            listen,
            secret,
            ports_file=ports_file,
            metrics_port=metrics_port,
            task_status=task_status,
        )
        return
    with SqliteStore(data_dir / STORE_FILE) as sqlite:
        server = LobbyServer(
            settings,
            listen,
            LocalStore(sqlite),
            session_secret=secret,
            matches=sqlite.matches_in_progress(),
            immediate_store=True,
        )
        await _serve(server, ports_file, metrics_port, task_status)


async def _serve(
    server: LobbyServer,
    ports_file: Path | None,
    metrics_port: int | None,
    task_status: trio.TaskStatus[LobbyServer],
    *,
    cluster: ClusterNodeLike | None = None,
) -> None:
    async with trio.open_nursery() as nursery:
        client_port, control_port = await nursery.start(server.run)
        if cluster is not None:
            await nursery.start(cluster.run)
        if ports_file is not None:
            _write_ports(ports_file, client_port, control_port)
        if metrics_port is not None:
            nursery.start_soon(_serve_metrics, server, metrics_port)
        task_status.started(server)
        await server.finished.wait()
        nursery.cancel_scope.cancel()
    log.info("lobby_stopped", **server.stats())


class ClusterNodeLike(Protocol):
    async def run(self, *, task_status: trio.TaskStatus[None] = ...) -> None: ...


async def _run_cluster_node(
    settings: LobbySettings,
    listen: ListenSettings,
    secret: bytes,
    *,
    ports_file: Path | None,
    metrics_port: int | None,
    task_status: trio.TaskStatus[LobbyServer],
) -> None:
    """A node of several sharing a Redis: its state there, the matchmaker by lease."""
    try:
        import coredis  # noqa: PLC0415 - the optional redis extra
        from coredis import exceptions  # noqa: PLC0415
    except ImportError:
        raise SystemExit(
            "framesync lobby: --redis needs the redis extra: pip install 'framesync[redis]'"
        ) from None
    from lobby.cluster import ClusterNode  # noqa: PLC0415
    from lobby.redisstore import RedisStore  # noqa: PLC0415

    assert listen.redis_url is not None
    node_id = listen.node_id or f"{socket.gethostname()}-{os.getpid()}"
    client: coredis.Redis[bytes] = coredis.Redis.from_url(
        listen.redis_url,
        decode_responses=False,
        stream_timeout=_REDIS_TIMEOUT,
        connect_timeout=_REDIS_TIMEOUT,
    )
    transient: _Transient = (
        OSError,
        TimeoutError,
        exceptions.ConnectionError,
        exceptions.BusyLoadingError,
        exceptions.TryAgainError,
        exceptions.ReadOnlyError,
        exceptions.ClusterDownError,
    )
    async with client:
        store = RedisStore(client, prefix=listen.redis_prefix)
        await _until_reachable(store, transient)
        server = LobbyServer(
            settings,
            listen,
            store,
            session_secret=secret,
            transient=transient,
            node_id=node_id,
        )
        cluster = ClusterNode(
            server,
            client,
            store,
            prefix=listen.redis_prefix,
            node_id=node_id,
            lease_ttl=settings.matchmaker_lease,
            transient=transient,
        )
        log.info("lobby_node", backend="redis", node_id=node_id, prefix=listen.redis_prefix)
        await _serve(server, ports_file, metrics_port, task_status, cluster=cluster)


_Transient = tuple[type[BaseException], ...]


async def _until_reachable(store: AsyncStore, transient: _Transient) -> None:
    """A Redis that is not up yet (say, started with the nodes) is waited for."""
    while True:
        try:
            await store.matches_in_progress()
            return
        except transient as exc:
            log.warning("store_unreachable", error=f"{type(exc).__name__}: {exc}")
            await trio.sleep(_STARTUP_RETRY)


async def _serve_metrics(server: LobbyServer, port: int) -> None:
    from lobby.metrics import start_lobby_metrics  # noqa: PLC0415 - optional extra

    snapshot = server.stats()
    start_lobby_metrics(port, lambda: snapshot)
    while True:  # the scrape thread reads this copy, never the live counters
        await trio.sleep(0.25)
        snapshot = server.stats()


def _write_ports(path: Path, client_port: int, control_port: int) -> None:
    """Where the node listens, for scripts and tests that asked for port 0."""
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({"client_port": client_port, "control_port": control_port}))
    os.replace(tmp, path)


async def serve_lobby_until_signal(
    settings: LobbySettings,
    listen: ListenSettings,
    *,
    ports_file: Path | None = None,
    metrics_port: int | None = None,
) -> int:
    """`framesync lobby`: serve; SIGTERM or Ctrl-C stops (clients are told why)."""
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
        with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
            async for signum in signals:
                log.info("lobby_stopping", signal=signal.Signals(signum).name)
                server.stop()
                break
    return 0
