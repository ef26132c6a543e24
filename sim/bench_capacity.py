"""`framesync bench capacity`: what one room host process costs per player per tick.

Three processes on this machine: the room host (a real `framesync room-host`), a load
generator (`sim.loadgen`: synthetic clients doing the real handshake, sending inputs and acks
at the tick rate on raw non-blocking sockets) and this driver, which plays the lobby over the
control channel, creates the rooms and measures. The host's CPU time comes from /proc over a
window that starts once every client is in a running room; tick lateness comes from the
host's own samples over the same window. In the same run the driver measures the raw-socket
ceiling: microseconds per sendto+recvfrom pair of the host's average datagram size on
loopback, and reports the ratio of the two.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import msgpack
import trio

from battle.config import RoomConfig, RosterEntry
from battle.control import (
    ControlDecoder,
    CreateRoom,
    Ping,
    Pong,
    Register,
    Registered,
    ResultAck,
    RoomCreated,
    RoomResult,
    encode_message,
    room_config_to_plain,
)
from battle.ticket import issue_ticket

_ROOT = Path(__file__).resolve().parent.parent
READY_TIMEOUT = 120.0
"""Seconds the load generator may take to get every client into a running room."""
DONE_MARGIN = 60.0
"""Seconds beyond the measuring window the load generator may take to report `done`."""


@dataclass(frozen=True, slots=True)
class CapacityReport:
    rooms: int
    players: int
    hz: int
    seconds: float
    host_cpu_us_per_player_tick: float
    host_cpu_share: float
    """Host CPU seconds per wall second in the window (1.0 = one core busy)."""
    raw_pair_us: float
    """µs per sendto+recvfrom pair of the host's average datagram size, same run."""
    ratio: float
    avg_datagram_bytes: float
    lateness_p50_ms: float
    lateness_p99_ms: float
    lateness_max_ms: float
    frames_expected: int
    frames_delivered: int
    frames_missing: int
    loadgen_cpu_share: float
    input_latency_p50_ms: float
    input_latency_p99_ms: float
    drops: dict[str, int]
    catch_ups: int = 0
    """Peers that fell behind the redundancy window and were streamed catch-up runs."""

    def as_dict(self) -> dict[str, object]:
        return asdict(self)

    def render(self) -> str:
        goal_cpu = "met" if self.ratio <= 3.0 else "NOT met"
        goal_late = "met" if self.lateness_p99_ms <= 5.0 else "NOT met"
        return "\n".join(
            [
                f"framesync bench capacity: {self.rooms} rooms x {self.players} players at "
                f"{self.hz} Hz for {self.seconds:.0f} s (one room host process)",
                f"  host CPU per player-tick   {self.host_cpu_us_per_player_tick:8.2f} µs   "
                f"(host busy {self.host_cpu_share:.0%} of one core)",
                f"  raw socket ceiling         {self.raw_pair_us:8.2f} µs per sendto+recvfrom "
                f"pair of {self.avg_datagram_bytes:.0f} bytes",
                f"  ratio                      {self.ratio:8.2f} x   (goal <= 3x: {goal_cpu})",
                f"  tick lateness              p50 {self.lateness_p50_ms:.2f} ms  "
                f"p99 {self.lateness_p99_ms:.2f} ms  max {self.lateness_max_ms:.2f} ms   "
                f"(goal p99 <= 5 ms: {goal_late})",
                f"  frames delivered           {self.frames_delivered} of "
                f"{self.frames_expected} expected, {self.frames_missing} missing at the end",
                f"  input→frame (load gen)     p50 {self.input_latency_p50_ms:.1f} ms  "
                f"p99 {self.input_latency_p99_ms:.1f} ms",
                f"  load generator             busy {self.loadgen_cpu_share:.0%} of one core",
                f"  host drops                 {self.drops or 'none'}",
                f"  catch-ups                  {self.catch_ups}",
            ]
        )


def raw_pair_us(size: int, count: int = 40_000) -> float:
    """Best of three: µs per blocking sendto + recvfrom of `size` bytes over loopback."""
    a = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    b = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    a.bind(("127.0.0.1", 0))
    b.bind(("127.0.0.1", 0))
    target = b.getsockname()
    payload = os.urandom(size)
    best = float("inf")
    try:
        for _ in range(3):
            start = time.perf_counter()
            for _ in range(count):
                a.sendto(payload, target)
                b.recvfrom(2048)
            best = min(best, (time.perf_counter() - start) / count * 1e6)
    finally:
        a.close()
        b.close()
    return best


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = int(fields[11]) + int(fields[12])  # utime, stime
    return ticks / os.sysconf("SC_CLK_TCK")


class _Lobby:
    """The lobby's side of the control channel, just enough to create rooms."""

    def __init__(self) -> None:
        self.stream: trio.SocketStream | None = None
        self.register: Register | None = None
        self.created: dict[int, RoomCreated] = {}
        self.changed = trio.Event()

    async def serve(self, listener: trio.SocketListener) -> None:
        stream = await listener.accept()
        self.stream = stream
        decoder = ControlDecoder()
        async with stream:
            while data := await stream.receive_some(65536):
                decoder.feed(data)
                while (message := decoder.next_message()) is not None:
                    if isinstance(message, Register):
                        self.register = message
                        await stream.send_all(encode_message(Registered("bench", 1.0, 10.0)))
                    elif isinstance(message, RoomCreated):
                        self.created[message.request_id] = message
                    elif isinstance(message, Ping):
                        await stream.send_all(encode_message(Pong(message.nonce)))
                    elif isinstance(message, RoomResult):
                        await stream.send_all(encode_message(ResultAck(message.match_id)))
                    self.changed.set()
                    self.changed = trio.Event()

    async def wait(self, predicate: object, timeout: float) -> None:
        assert callable(predicate)
        with trio.fail_after(timeout):
            while not predicate():
                await self.changed.wait()


async def _run(rooms: int, players: int, hz: int, seconds: float, workdir: Path) -> CapacityReport:
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    lobby = _Lobby()
    stats_file = workdir / "host-stats.json"
    async with trio.open_nursery() as nursery:
        nursery.start_soon(lobby.serve, listeners[0])
        port = listeners[0].socket.getsockname()[1]
        log = open(workdir / "host.log", "wb")  # noqa: SIM115 - closed below
        host = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "sim.cli",
                "room-host",
                "--bind",
                "127.0.0.1:0",
                "--lobby",
                f"127.0.0.1:{port}",
                "--data-dir",
                str(workdir / "host"),
                "--capacity",
                str(rooms),
                "--log-level",
                "warning",
                "--stats-file",
                str(stats_file),
                "--drain-timeout",
                "0",
            ],
            cwd=_ROOT,
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, "FRAMESYNC_PROFILE": os.environ.get("FRAMESYNC_BENCH_PROFILE", "")},
        )
        log.close()
        try:
            await lobby.wait(lambda: lobby.register is not None, 30)
            assert lobby.register is not None and lobby.stream is not None
            config = RoomConfig(tick_rate=hz, start_timeout=60, max_duration=seconds + 600)
            key = os.urandom(32)
            tickets: list[tuple[bytes, bytes, bytes]] = []
            for room in range(1, rooms + 1):
                roster = tuple(RosterEntry(s, room * 100 + s, s % 2) for s in range(players))
                await lobby.stream.send_all(
                    encode_message(
                        CreateRoom(
                            room, room, room, room, roster, room_config_to_plain(config), key
                        )
                    )
                )
                for entry in roster:
                    ticket, keys = issue_ticket(
                        key, room, room, entry.player_id, entry.slot, time.time() + 600
                    )
                    tickets.append((ticket, keys.c2s, keys.s2c))
            await lobby.wait(lambda: len(lobby.created) == rooms, 30)
            spec = {
                "host": "127.0.0.1",
                "port": lobby.register.udp_port,
                "hz": hz,
                "seconds": seconds,
                "tickets": tickets,
            }
            spec_path = workdir / "loadgen.msgpack"
            spec_path.write_bytes(msgpack.packb(spec, use_bin_type=True))
            command = [sys.executable, "-m", "sim.loadgen", str(spec_path)]
            marks: list[tuple[float, float]] = []  # (host CPU seconds, monotonic) at each line

            def mark() -> None:
                marks.append((_cpu_seconds(host.pid), time.monotonic()))

            ready, done = await run_loadgen(command, mark, READY_TIMEOUT, seconds + DONE_MARGIN)
            (cpu_start, window_start), (cpu_end, window_end) = marks
            host_cpu = cpu_end - cpu_start
            window = window_end - window_start
            assert ready["event"] == "ready" and done["event"] == "done"
        finally:
            if host.poll() is None:
                host.terminate()
            await trio.to_thread.run_sync(host.wait)
            nursery.cancel_scope.cancel()
    host_stats = json.loads(stats_file.read_text())
    counters = host_stats["stats"]
    lateness = sorted(
        late for at, late in host_stats["lateness"] if window_start <= at <= window_start + window
    )
    datagrams = counters.get("datagrams_in", 0) + counters.get("datagrams_out", 0)
    total_bytes = counters.get("bytes_in", 0) + counters.get("bytes_out", 0)
    avg_size = total_bytes / max(1, datagrams)
    pair = raw_pair_us(round(avg_size))
    player_ticks = rooms * players * hz * window
    per_player_tick = host_cpu / player_ticks * 1e6
    expected = rooms * players * round(hz * window)

    def pct(q: float) -> float:
        return lateness[min(len(lateness) - 1, int(q * len(lateness)))] * 1000 if lateness else 0.0

    return CapacityReport(
        rooms=rooms,
        players=players,
        hz=hz,
        seconds=window,
        host_cpu_us_per_player_tick=per_player_tick,
        host_cpu_share=host_cpu / window,
        raw_pair_us=pair,
        ratio=per_player_tick / pair,
        avg_datagram_bytes=avg_size,
        lateness_p50_ms=statistics.median(lateness) * 1000 if lateness else 0.0,
        lateness_p99_ms=pct(0.99),
        lateness_max_ms=lateness[-1] * 1000 if lateness else 0.0,
        frames_expected=expected,
        frames_delivered=int(done["frames_received"]),
        frames_missing=int(done["frames_behind_at_end"]),
        loadgen_cpu_share=float(done["cpu_seconds"]) / max(window, 1e-9),
        input_latency_p50_ms=float(done["input_latency_p50_ms"]),
        input_latency_p99_ms=float(done["input_latency_p99_ms"]),
        drops={k: int(v) for k, v in host_stats["drops"].items()},
        catch_ups=int(counters.get("catch_ups_started", 0)),
    )


async def run_loadgen(
    command: list[str],
    on_line: Callable[[], None],
    ready_timeout: float,
    done_timeout: float,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Run the load generator; returns its `ready` and `done` lines.

    `on_line` runs as soon as each of the two arrives (they bound the measuring window).
    Each line has a deadline (trio.TooSlowError: `ready_timeout` from the start, `done_timeout`
    from `ready`), and the process never outlives this call: on any error or cancellation it
    is killed.
    """
    loadgen = await trio.lowlevel.open_process(command, cwd=_ROOT, stdout=subprocess.PIPE)
    assert loadgen.stdout is not None
    try:
        async with contextlib.aclosing(_lines(loadgen.stdout)) as lines:
            with trio.fail_after(ready_timeout):
                ready: dict[str, Any] = json.loads(await _next_line(lines, "ready"))
            on_line()
            with trio.fail_after(done_timeout):
                done: dict[str, Any] = json.loads(await _next_line(lines, "done"))
                on_line()
                await loadgen.wait()
        return ready, done
    finally:
        with trio.CancelScope(shield=True):
            if loadgen.returncode is None:
                loadgen.kill()
            await loadgen.wait()
            await loadgen.stdout.aclose()


async def _next_line(lines: AsyncIterator[str], what: str) -> str:
    line = await anext(lines, None)
    if line is None:
        raise RuntimeError(f"load generator exited before reporting {what!r}")
    return line


async def _lines(stream: trio.abc.ReceiveStream) -> AsyncGenerator[str, None]:
    buffer = b""
    while True:
        while b"\n" in buffer:
            line, buffer = buffer.split(b"\n", 1)
            yield line.decode()
        data = await stream.receive_some(65536)
        if not data:
            return
        buffer += data


def run_capacity_bench(*, rooms: int, players: int, hz: int, seconds: float) -> CapacityReport:
    with tempfile.TemporaryDirectory(prefix="framesync-bench-") as tmp:
        return trio.run(_run, rooms, players, hz, seconds, Path(tmp))
