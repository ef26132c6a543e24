"""The `framesync` command: one entry point, one subcommand per job."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

from battle import __version__


def _demo(args: argparse.Namespace) -> int:
    if not args.virtual:
        from sim.botscmd import run_bots_command  # noqa: PLC0415 - keep `framesync --help` fast

        return run_bots_command(args, demo=True)
    if not 3 <= args.seconds <= 86_400 or not 0 <= args.loss < 100 or args.rtt < 0:
        print(
            "framesync demo: need 3 <= --seconds <= 86400, 0 <= --loss < 100, --rtt >= 0",
            file=sys.stderr,
        )
        return 2
    from sim.demo import run_demo  # noqa: PLC0415

    summary = run_demo(
        seed=args.seed,
        players=args.players,
        seconds=args.seconds,
        tick_rate=args.hz,
        rtt=(args.rtt or 70.0) / 1000,  # a virtual path needs some delay to show anything
        loss=args.loss / 100,
    )
    if args.json:
        print(json.dumps(summary.as_dict(), indent=2))
    else:
        print(summary.render())
    return 0 if summary.ok else 1


def _bots(args: argparse.Namespace) -> int:
    from sim.botscmd import run_bots_command  # noqa: PLC0415

    return run_bots_command(args)


def _replay(args: argparse.Namespace) -> int:
    from sim.replaycmd import run_replay  # noqa: PLC0415

    return run_replay(args)


def _address(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, got {text!r}")
    return host.strip("[]") or "0.0.0.0", int(port)


def _addresses(text: str) -> list[tuple[str, int]]:
    """`HOST:PORT[,HOST:PORT...]`: the lobby nodes a room host may register with."""
    parts = [part.strip() for part in text.split(",")]
    if not all(parts):
        raise argparse.ArgumentTypeError(f"expected HOST:PORT[,HOST:PORT...], got {text!r}")
    return [_address(part) for part in parts]


def _room_host(args: argparse.Namespace) -> int:
    from sim.roomhostcmd import run_room_host  # noqa: PLC0415

    return run_room_host(args)


def _lobby(args: argparse.Namespace) -> int:
    from sim.lobbycmd import run_lobby  # noqa: PLC0415

    return run_lobby(args)


def _up(args: argparse.Namespace) -> int:
    from sim.lobbycmd import run_up  # noqa: PLC0415

    return run_up(args)


def _bench_capacity(args: argparse.Namespace) -> int:
    from sim.bench_capacity import run_capacity_bench  # noqa: PLC0415

    report = run_capacity_bench(
        rooms=args.rooms, players=args.players, hz=args.hz, seconds=args.seconds
    )
    print(json.dumps(report.as_dict(), indent=2) if args.json else report.render())
    return 0


def _bench_reconnect(args: argparse.Namespace) -> int:
    from sim.bench_reconnect import run_reconnect_bench  # noqa: PLC0415

    report = run_reconnect_bench(
        minutes=args.minutes,
        players=args.players,
        hz=args.hz,
        inputs_per_second=args.inputs_per_second,
        input_bytes=args.input_bytes,
        snapshot_bytes=args.snapshot_bytes,
        seed=args.seed,
        repeats=args.repeats,
    )
    print(json.dumps(report.as_dict(), indent=2) if args.json else report.render())
    return 0


def _bench_loss(args: argparse.Namespace) -> int:
    from sim.bench_loss import run_loss_bench  # noqa: PLC0415

    try:
        report = run_loss_bench(
            seconds=args.seconds,
            seeds=args.seeds,
            seed=args.seed,
            players=args.players,
            hz=args.hz,
            input_chance=args.input_chance,
            with_kcp=not args.no_kcp,
        )
    except ValueError as exc:
        print(f"framesync bench loss: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(report.as_dict(), indent=2) if args.json else report.render())
    return 0 if report.all_echoed else 1


def _bench_lobby(args: argparse.Namespace) -> int:
    from sim.bench_lobby import BenchFailed, run_lobby_bench  # noqa: PLC0415

    try:
        report = run_lobby_bench(sessions=args.sessions, tickets=args.tickets, hold=args.hold)
    except ValueError as exc:
        print(f"framesync bench lobby: {exc}", file=sys.stderr)
        return 2
    except BenchFailed as exc:
        print(f"framesync bench lobby: the run failed: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(report.as_dict(), indent=2) if args.json else report.render())
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="framesync",
        description="Lockstep frame-sync battle server: rooms over UDP, lobby, bots, replay.",
    )
    parser.add_argument("--version", action="version", version=f"framesync {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    demo = sub.add_parser(
        "demo",
        help="framesync up plus 10 bots playing one 5v5 match with 5%% loss; prints a summary",
        description=(
            "Start `framesync up` (a lobby and two room hosts on loopback), run ten bots through "
            "login, queue, ready check and one 60-second 5v5 match of the reference game with 5%% "
            "loss each way and one bot's cable pulled every 20 s, and print what they saw. "
            "With --virtual: one match of the room core and clients in memory on virtual time."
        ),
    )
    demo.add_argument(
        "--virtual", action="store_true", help="in memory on virtual time: no sockets, no processes"
    )
    demo.add_argument("--players", type=int, default=10, choices=range(1, 33), metavar="N",
                      help="--virtual: players")  # fmt: skip
    demo.add_argument("--hz", type=int, default=15, choices=range(10, 61), metavar="HZ",
                      help="--virtual: tick rate")  # fmt: skip
    demo.add_argument("--hosts", type=int, default=2, help="room host processes")
    demo.add_argument("--data-dir", default="data/demo", help="up's data: input logs, dumps")
    demo.set_defaults(func=_demo, up=True, lobby=None)
    from sim.botscmd import add_bot_arguments  # noqa: PLC0415

    add_bot_arguments(demo, demo=True)

    bots = sub.add_parser(
        "bots",
        help="headless bots playing whole matches against a lobby (or their own `up`)",
        description=(
            "Bots log in, queue, accept and play whole matches of the reference game over real "
            "UDP, with optional network impairment, cable pulls and desync injection; then a "
            "summary (--json for machines). Exit status 0 only if every match completed, no "
            "error happened, and desyncs were detected exactly when injected."
        ),
    )
    bots.add_argument(
        "--lobby",
        type=_addresses,
        help="a lobby's client HOST:PORT; several nodes comma-separated (bots spread over them)",
    )
    bots.add_argument("--up", action="store_true", help="start `framesync up` for the run")
    bots.add_argument("--hosts", type=int, default=2, help="--up: room host processes")
    bots.add_argument("--data-dir", help="--up: where up keeps its data (default: a temp dir)")
    add_bot_arguments(bots)
    bots.set_defaults(func=_bots)

    replay = sub.add_parser(
        "replay",
        help="inspect, verify and diff input logs (the desync debugging tool)",
        description="Re-run matches from their input logs with the reference game.",
    )
    from sim.replaycmd import add_replay_arguments  # noqa: PLC0415

    add_replay_arguments(replay)
    replay.set_defaults(func=_replay)

    host = sub.add_parser(
        "room-host",
        help="run a room host process: many rooms on one UDP socket",
        description=(
            "Serve rooms over UDP. Rooms are created by the lobby over the control channel; "
            "input logs and undelivered results live under the data directory. SIGTERM or "
            "Ctrl-C drains: no new rooms, running rooms finish (up to --drain-timeout)."
        ),
    )
    host.add_argument("--bind", type=_address, default=("0.0.0.0", 7100), help="UDP HOST:PORT")
    host.add_argument("--public-host", help="host name or IP clients are told to use")
    host.add_argument(
        "--lobby",
        type=_addresses,
        metavar="HOST:PORT[,HOST:PORT...]",
        help=(
            "lobby control channel; with several lobby nodes list them all, comma-separated: "
            "the host registers with whichever serves room hosts and follows it on failover"
        ),
    )
    host.add_argument("--data-dir", default="data", help="input logs and pending results")
    host.add_argument("--host-id", help="stable id of this process (default: host-PORT-PID)")
    host.add_argument("--capacity", type=int, default=200, help="rooms this process accepts")
    host.add_argument("--drain-timeout", type=float, default=600.0, metavar="SECONDS")
    host.add_argument("--metrics-port", type=int, help="serve Prometheus metrics on this port")
    host.add_argument("--log-json", action="store_true", help="log one JSON object per line")
    host.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    host.add_argument("--stats-file", help="write counters and tick lateness here on exit")
    host.add_argument("--parent-pid", type=int, help=argparse.SUPPRESS)
    host.set_defaults(func=_room_host)

    from sim.lobbycmd import add_lobby_arguments, add_up_arguments  # noqa: PLC0415

    up = sub.add_parser(
        "up",
        help="run a lobby and N room host processes on this machine (the main job)",
        description=(
            "Start a lobby node and room host child processes (one per core by default), "
            "restart a host that crashes, and stop everything cleanly on SIGTERM or Ctrl-C "
            "(hosts drain first; a second signal stops at once). No external services: state "
            "lives in SQLite under the data directory."
        ),
    )
    add_up_arguments(up)
    up.set_defaults(func=_up)

    lobby = sub.add_parser(
        "lobby",
        help="run one lobby node: accounts, queues, matchmaking, room allocation",
        description=(
            "Serve game clients (TCP, optional TLS) and room hosts (control channel). Settings "
            "come from a TOML file (--config); the flags override it."
        ),
    )
    add_lobby_arguments(lobby, data_dir=None)
    lobby.set_defaults(func=_lobby)

    bench = sub.add_parser("bench", help="benchmarks (results go in docs/BENCHMARKS.md)")
    benches = bench.add_subparsers(dest="bench", metavar="BENCH", required=True)
    capacity = benches.add_parser(
        "capacity",
        help="room host CPU per player-tick vs the raw socket ceiling, tick lateness",
    )
    capacity.add_argument("--rooms", type=int, default=100)
    capacity.add_argument("--players", type=int, default=10)
    capacity.add_argument("--hz", type=int, default=15, choices=range(10, 61), metavar="HZ")
    capacity.add_argument("--seconds", type=float, default=20.0, help="measurement window")
    capacity.add_argument("--json", action="store_true")
    capacity.set_defaults(func=_bench_capacity)
    reconnect = benches.add_parser(
        "reconnect",
        help="catch-up time and bytes for a client rejoining a long match, from frame 0 "
        "and from an agreed snapshot",
    )
    reconnect.add_argument("--minutes", type=float, default=20.0, help="match history length")
    reconnect.add_argument("--players", type=int, default=10)
    reconnect.add_argument("--hz", type=int, default=15, choices=range(10, 61), metavar="HZ")
    reconnect.add_argument("--inputs-per-second", type=float, default=4.0, help="per player")
    reconnect.add_argument("--input-bytes", type=int, default=8)
    reconnect.add_argument("--snapshot-bytes", type=int, default=64 * 1024)
    reconnect.add_argument("--seed", type=int, default=1)
    reconnect.add_argument("--repeats", type=int, default=5, help="runs per case (median)")
    reconnect.add_argument("--json", action="store_true")
    reconnect.set_defaults(func=_bench_reconnect)
    loss = benches.add_parser(
        "loss",
        help="input→frame echo latency under loss, beside the same stream over KCP",
        description=(
            "On virtual time (seeded, no sockets): RTT 30/50/70 ms × random loss 1-10 % "
            "each way, plus one burst-loss case. Reports average, p99 and share over "
            "300 ms of input→frame echo latency, and bytes per player per second, for "
            "framesync and for KCP in turbo mode (needs the optional `kcp` package: "
            "pip install 'framesync[bench]'; skipped without it)."
        ),
    )
    loss.add_argument("--seconds", type=float, default=60.0, help="virtual seconds of inputs")
    loss.add_argument("--seeds", type=int, default=5, help="matches per case")
    loss.add_argument("--seed", type=int, default=1, help="first seed")
    loss.add_argument("--players", type=int, default=10)
    loss.add_argument("--hz", type=int, default=15, choices=range(10, 61), metavar="HZ")
    loss.add_argument(
        "--input-chance", type=float, default=0.5, help="chance of an input per game tick"
    )
    loss.add_argument("--no-kcp", action="store_true", help="framesync only")
    loss.add_argument("--json", action="store_true")
    loss.set_defaults(func=_bench_loss)
    lobby_bench = benches.add_parser(
        "lobby",
        help="one lobby process: sessions held with heartbeats, 5v5 tickets matched per second",
        description=(
            "Start a lobby, open --sessions client sessions and hold them with heartbeats, then "
            "queue --tickets of them for 5v5 and accept every ready check. Rooms are stubbed: "
            "a fake room host answers every CreateRoom at once."
        ),
    )
    lobby_bench.add_argument("--sessions", type=int, default=10_000)
    lobby_bench.add_argument("--tickets", type=int, default=10_000, help="a multiple of 10")
    lobby_bench.add_argument("--hold", type=float, default=30.0, help="seconds to hold sessions")
    lobby_bench.add_argument("--json", action="store_true")
    lobby_bench.set_defaults(func=_bench_lobby)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    code: int = args.func(args)
    return code


if __name__ == "__main__":
    sys.exit(main())
