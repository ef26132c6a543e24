"""`framesync lobby` and `framesync up`: argument handling around lobby/node.py and
lobby/supervisor.py."""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
from pathlib import Path
from typing import Any

import trio

from battle.logsetup import configure_logging
from lobby.settings import ConfigError, ListenSettings, LobbySettings, load_config

_LEVELS = ["debug", "info", "warning", "error"]


def add_lobby_arguments(parser: argparse.ArgumentParser, *, data_dir: str | None) -> None:
    parser.add_argument("--config", type=Path, help="TOML settings file (see docs/LOBBY.md)")
    parser.add_argument("--host", help="address for the client port (default 127.0.0.1)")
    parser.add_argument("--client-port", type=int, help="TCP port for game clients (7000)")
    parser.add_argument("--control-port", type=int, help="TCP port for room hosts (7001)")
    parser.add_argument(
        "--data-dir",
        default=data_dir,
        help="store and secret (up: the root, holding lobby/ and hosts/)",
    )
    parser.add_argument("--tls-cert", type=Path, help="serve clients over TLS with this cert")
    parser.add_argument("--tls-key", type=Path, help="... and this private key")
    parser.add_argument(
        "--redis",
        dest="redis_url",
        metavar="URL",
        help="keep the lobby's state in this Redis (redis://host:port/db) instead of SQLite",
    )
    parser.add_argument("--node-id", help="this node's name among the lobby nodes sharing a Redis")
    parser.add_argument("--ports-file", type=Path, help="write the bound ports here as JSON")
    parser.add_argument(
        "--metrics-port", type=int, help="serve the lobby's Prometheus metrics on this port"
    )
    parser.add_argument("--log-json", action="store_true", help="log one JSON object per line")
    parser.add_argument(
        "--log-level", default="info", choices=["debug", "info", "warning", "error"]
    )


def _settings(
    args: argparse.Namespace, lobby_subdir: str | None
) -> tuple[LobbySettings, ListenSettings]:
    if args.config is not None:
        settings, listen = load_config(args.config)
    else:
        settings, listen = LobbySettings(), ListenSettings()
    overrides: dict[str, Any] = {}
    if args.data_dir is not None:
        root = Path(args.data_dir)
        overrides["data_dir"] = root / lobby_subdir if lobby_subdir else root
    names = ("host", "client_port", "control_port", "tls_cert", "tls_key", "redis_url", "node_id")
    for name in names:
        value = getattr(args, name)
        if value is not None:
            overrides[name] = value
    try:
        listen = dataclasses.replace(listen, **overrides)
    except (TypeError, ValueError) as exc:
        raise ConfigError(str(exc)) from None
    return settings, listen


def run_lobby(args: argparse.Namespace) -> int:
    from lobby.node import serve_lobby_until_signal, tune_gc  # noqa: PLC0415 - keep --help fast

    configure_logging(json=args.log_json, level=args.log_level)
    try:
        settings, listen = _settings(args, None)
    except ConfigError as exc:
        print(f"framesync lobby: {exc}", file=sys.stderr)
        return 2
    tune_gc()
    return trio.run(
        lambda: serve_lobby_until_signal(
            settings, listen, ports_file=args.ports_file, metrics_port=args.metrics_port
        )
    )


def run_up(args: argparse.Namespace) -> int:
    from lobby.node import tune_gc  # noqa: PLC0415
    from lobby.supervisor import HostSpec  # noqa: PLC0415
    from lobby.supervisor import run_up as serve_up  # noqa: PLC0415

    configure_logging(json=args.log_json, level=args.log_level)
    try:
        settings, listen = _settings(args, "lobby")
    except ConfigError as exc:
        print(f"framesync up: {exc}", file=sys.stderr)
        return 2
    count = args.hosts if args.hosts is not None else (os.cpu_count() or 1)
    if not 0 <= count <= 256 or not 0 <= args.udp_port <= 65535 - count:
        print("framesync up: need 0 <= --hosts <= 256 and the UDP ports in range", file=sys.stderr)
        return 2
    hosts = [
        HostSpec(
            host_id=f"{args.host_prefix}-{i}",
            bind_host=args.udp_host,
            port=args.udp_port + i if args.udp_port else 0,
            data_dir=Path(args.data_dir) / "hosts" / f"{args.host_prefix}-{i}",
            capacity=args.capacity,
            drain_timeout=args.drain_timeout,
            public_host=args.public_host,
            log_json=args.log_json,
            log_level=args.log_level,
            metrics_port=args.metrics_port + 1 + i if args.metrics_port else None,
        )
        for i in range(count)
    ]
    tune_gc()
    return trio.run(
        lambda: serve_up(
            settings, listen, hosts, ports_file=args.ports_file, metrics_port=args.metrics_port
        )
    )


def add_up_arguments(parser: argparse.ArgumentParser) -> None:
    add_lobby_arguments(parser, data_dir="data")
    parser.add_argument("--hosts", type=int, help="room host processes (default: one per core)")
    parser.add_argument("--udp-host", default="127.0.0.1", help="address room hosts bind")
    parser.add_argument(
        "--udp-port", type=int, default=7100, help="first room host UDP port (0: any free port)"
    )
    parser.add_argument("--public-host", help="address clients are told to use for rooms")
    parser.add_argument("--capacity", type=int, default=200, help="rooms per host process")
    parser.add_argument("--drain-timeout", type=float, default=30.0, metavar="SECONDS")
    parser.add_argument("--host-prefix", default="host", help="room host ids are PREFIX-N")
