"""`framesync bots` and `framesync demo`: bots against a lobby, or against their own `up`."""

from __future__ import annotations

import argparse
import json
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import trio

from sim.bots import BotOptions, BotRunner, BotsReport
from sim.impair import GilbertElliott, LinkProfile

_UP_CONFIG = """
[matchmaker]
interval = 0.5
ready_timeout = 20.0

[hosts]
heartbeat_interval = 0.5
lease = 3.0
"""


@asynccontextmanager
async def spawn_up(data_dir: Path, hosts: int, *, log: Path) -> AsyncIterator[tuple[str, int]]:
    """A `framesync up` child on free loopback ports; yields the lobby's client address and
    stops it (SIGTERM: rooms drain, results land) on the way out."""
    data_dir.mkdir(parents=True, exist_ok=True)
    config = data_dir / "up.toml"
    config.write_text(_UP_CONFIG)
    ports = data_dir / "ports.json"
    ports.unlink(missing_ok=True)
    args = [
        sys.executable, "-m", "sim.cli", "up", "--hosts", str(hosts), "--udp-port", "0",
        "--client-port", "0", "--control-port", "0", "--data-dir", str(data_dir),
        "--config", str(config), "--ports-file", str(ports), "--drain-timeout", "10",
        "--log-json",
    ]  # fmt: skip
    with log.open("ab") as out:
        process = await trio.lowlevel.open_process(
            args, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
        )
    try:
        with trio.fail_after(30):
            while not ports.exists():
                if process.returncode is not None:
                    raise RuntimeError(f"framesync up exited early; see {log}")
                await trio.sleep(0.05)
            while _count_events(log, "host_registered") < hosts:
                await trio.sleep(0.05)
        yield "127.0.0.1", int(json.loads(ports.read_text())["client_port"])
    finally:
        with trio.CancelScope(shield=True):
            if process.returncode is None:
                process.send_signal(signal.SIGTERM)
                with trio.move_on_after(30):
                    await process.wait()
            if process.returncode is None:
                process.kill()
                await process.wait()


def _count_events(log: Path, event: str) -> int:
    needle = f'"event": "{event}"'
    try:
        return log.read_text(errors="replace").count(needle)
    except FileNotFoundError:
        return 0


def match_logs(data_dir: Path, match_ids: list[int]) -> list[Path]:
    """The input logs the rooms wrote for these matches (under every host's data dir)."""
    found: list[Path] = []
    for match_id in match_ids:
        found.extend(sorted(data_dir.glob(f"hosts/*/matches/{match_id}-*.fslog")))
    return found


class _Display:
    """A live line of progress (rich when installed), and the events worth a line."""

    def __init__(self, options: BotOptions, quiet: bool) -> None:
        self.options = options
        self.quiet = quiet
        self.started = 0
        self.ended = 0
        self.lines: list[str] = []
        self._live: Any = None
        self._t0 = time.monotonic()

    def __enter__(self) -> _Display:
        if self.quiet:
            return self
        try:
            from rich.live import Live  # noqa: PLC0415 - optional extra

            self._live = Live(self._render(), refresh_per_second=4, transient=True)
            self._live.__enter__()
        except ImportError:
            self._live = None
        return self

    def __exit__(self, *exc: object) -> None:
        if self._live is not None:
            self._live.__exit__(None, None, None)

    def event(self, name: str, fields: dict[str, object]) -> None:
        if name == "match_started":
            self.started += 1
        elif name == "match_ended" and fields.get("bot") == 0:
            self.ended += 1
        text = f"{time.monotonic() - self._t0:6.1f} s  {name} " + " ".join(
            f"{k}={v}" for k, v in fields.items()
        )
        if name != "match_ended":
            self.lines.append(text)
        if self.quiet:
            return
        if self._live is not None:
            self._live.update(self._render())
        else:
            print(text, file=sys.stderr, flush=True)

    def _render(self) -> Any:
        from rich.text import Text  # noqa: PLC0415

        o = self.options
        head = (
            f"framesync bots: {o.bots} bots, {o.mode}, matches started {self.started}, "
            f"{time.monotonic() - self._t0:.0f} s"
        )
        return Text("\n".join([head, *self.lines[-8:]]))


def options_from_args(args: argparse.Namespace) -> BotOptions:
    impairment = None
    if args.loss or args.rtt or args.jitter or args.burst or args.duplicate or args.reorder:
        burst = GilbertElliott.from_loss(args.burst / 100, 4.0) if args.burst else None
        impairment = LinkProfile.from_rtt(
            args.rtt / 1000,
            jitter=args.jitter / 1000,
            loss=args.loss / 100,
            burst_loss=burst,
            duplicate=args.duplicate / 100,
            reorder=args.reorder / 100,
        )
    team_size = int(args.mode.split("v")[0]) if "v" in args.mode else 5
    return BotOptions(
        bots=args.bots,
        matches=args.matches,
        mode=args.mode,
        team_size=team_size,
        region=args.region,
        seconds=args.seconds,
        seed=args.seed,
        impairment=impairment,
        reconnect_every=args.reconnect_every,
        desync_slot=args.desync_player,
        desync_at=args.desync_at,
        dump_dir=Path(args.dump_dir) if args.dump_dir else None,
        timeout=args.timeout,
    )


async def run_bots_against(
    options: BotOptions,
    *,
    lobby: Sequence[tuple[str, int]] | None,
    up_hosts: int,
    data_dir: Path,
    quiet: bool,
) -> tuple[BotsReport, list[Path]]:
    with _Display(options, quiet) as display:
        if lobby is not None:
            report = await BotRunner(lobby, options, display.event).run()
            return report, []
        async with spawn_up(data_dir, up_hosts, log=data_dir / "up.log") as address:
            report = await BotRunner([address], options, display.event).run()
    return report, match_logs(data_dir, report.match_ids)


def add_bot_arguments(parser: argparse.ArgumentParser, *, demo: bool = False) -> None:
    parser.add_argument("--bots", type=int, default=10, help="bots (a multiple of the mode's size)")
    parser.add_argument("--matches", type=int, default=1 if demo else 2)
    parser.add_argument("--mode", default="5v5", choices=["1v1", "3v3", "5v5"])
    parser.add_argument("--region", default="local")
    parser.add_argument("--seconds", type=float, default=60.0, help="game length per match")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--rtt", type=float, default=0.0, help="added round trip, ms")
    parser.add_argument("--jitter", type=float, default=0.0, help="ms, each way")
    parser.add_argument("--loss", type=float, default=5.0 if demo else 0.0, help="%% each way")
    parser.add_argument("--burst", type=float, default=0.0, help="%% Gilbert-Elliott burst loss")
    parser.add_argument("--duplicate", type=float, default=0.0, help="%% each way")
    parser.add_argument("--reorder", type=float, default=0.0, help="%% each way")
    parser.add_argument(
        "--reconnect-every",
        type=float,
        default=20.0 if demo else None,
        metavar="SECONDS",
        help="pull one playing bot's cable this often (back after 3 s)",
    )
    parser.add_argument("--desync-player", type=int, metavar="SLOT", help="slot to desync")
    parser.add_argument("--desync-at", type=int, metavar="FRAME", help="frame to desync at")
    parser.add_argument("--dump-dir", help="state dumps at announced desyncs go here")
    parser.add_argument("--timeout", type=float, default=600.0, help="give up after, seconds")
    parser.add_argument("--json", action="store_true", help="print the summary as JSON")
    parser.add_argument("--quiet", action="store_true", help="no progress display")


def run_bots_command(args: argparse.Namespace, *, demo: bool = False) -> int:
    from battle.logsetup import configure_logging  # noqa: PLC0415

    configure_logging(level="warning")
    try:
        options = options_from_args(args)
    except ValueError as exc:
        print(f"framesync {'demo' if demo else 'bots'}: {exc}", file=sys.stderr)
        return 2
    lobby = None if demo or args.up else args.lobby
    if lobby is None and not demo and not args.up:
        print("framesync bots: give --lobby HOST:PORT or --up", file=sys.stderr)
        return 2
    data_dir = Path(args.data_dir) if args.data_dir else Path(tempfile.mkdtemp(prefix="framesync-"))
    if options.dump_dir is None and lobby is None:
        options = _with_dump_dir(options, data_dir / "dumps")
    report, logs = trio.run(
        lambda: run_bots_against(
            options, lobby=lobby, up_hosts=args.hosts, data_dir=data_dir, quiet=args.quiet
        )
    )
    verified = _verify_logs(logs) if demo else {}
    if args.json:
        print(json.dumps({**report.as_dict(), "logs": [str(p) for p in logs],
                          "replay_verify": verified}, indent=2))  # fmt: skip
    else:
        print(report.render())
        for log in logs:
            note = f"  replay verify: {verified[str(log)]}" if str(log) in verified else ""
            print(f"  input log     {log}{note}")
        if logs and not verified:
            print(f"  replay        framesync replay verify {logs[0]}")
    return 0 if report.ok and all(v.startswith("OK") for v in verified.values()) else 1


def _verify_logs(logs: list[Path]) -> dict[str, str]:
    """Re-run each match from its log, as `framesync replay verify` does."""
    from battle.inputlog import read_log_file  # noqa: PLC0415
    from sim.replay import verify  # noqa: PLC0415

    out = {}
    for path in logs:
        result = verify(read_log_file(path))
        out[str(path)] = (
            f"OK, {result.checked} hashes" if result.ok else f"FAILED {result.mismatches[:1]}"
        )
    return out


def _with_dump_dir(options: BotOptions, path: Path) -> BotOptions:
    import dataclasses  # noqa: PLC0415

    return dataclasses.replace(options, dump_dir=path)
