"""`framesync bench lobby`: how many sessions and 5v5 tickets one lobby process serves.

Two processes on this machine: a real `framesync lobby` (fresh data directory; its CPU time
and peak RSS are read from /proc at every phase boundary) and this one, which is both the
load generator and a stub room host. The generator speaks the client protocol through the
sans-IO codec with one trio task per connection that does everything for it in order, and
keeps its own collector out of the way; its CPU and its event loop's longest stall are
reported anyway, because when it nears one core the numbers measure the generator rather
than the lobby. The stub host answers every CreateRoom at once and runs no room: this
measures the lobby's side of matchmaking and allocation only.

Phase 1 opens N sessions (hello + register_device) and holds them with heartbeats spread
evenly over the interval the lobby's `welcome` asks for. Phase 2 has M of them queue for 5v5
at once and accept every ready check; it times the first queue sent to the last
match_proposed (matching) and to the last match_ready (ready check, room allocation, store
write and ticket sealing included). Matching runs in batches every matchmaker interval, so
the first figure includes up to one interval of waiting; the in-batch rate leaves it out.

`FRAMESYNC_BENCH_PROFILE=FILE` runs the lobby under cProfile and writes its stats to FILE.
"""

from __future__ import annotations

import gc
import json
import math
import os
import resource
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import asdict, dataclass, field
from pathlib import Path

import trio

from battle import control
from lobby.protocol import (
    PROTOCOL_VERSION,
    Accept,
    Error,
    Heartbeat,
    HeartbeatAck,
    Hello,
    Kicked,
    LobbyDecoder,
    LobbyProtocolError,
    LoggedIn,
    MatchCancelled,
    MatchProposed,
    MatchReady,
    Queue,
    Queued,
    RegisterDevice,
    Role,
    Welcome,
    encode_message,
)

_ROOT = Path(__file__).resolve().parent.parent
SESSIONS_GOAL = 10_000
TICKETS_GOAL = 5_000
"""Tickets per second matched at 5v5; also the fewest tickets that can test it."""
MODE = "5v5"
MODE_PLAYERS = 10
REGION = "local"
HEARTBEAT_INTERVAL = 5.0
IDLE_TIMEOUT = 30.0
MATCH_INTERVAL = 1.0
READY_TIMEOUT = 60.0
"""Long enough that no ready check expires while a loaded generator answers it."""
CONNECT_CONCURRENCY = 200
"""Connections opening at once: keeps the lobby's accept backlog from overflowing."""
START_TIMEOUT = 30.0
ESTABLISH_TIMEOUT = 600.0
SETTLE_TIMEOUT = 2.0
"""How long the end of the hold waits for the acks of heartbeats still in flight."""
MATCH_TIMEOUT = 180.0
STOP_TIMEOUT = 20.0
_POLL = 0.02
_READ_SIZE = 65536
_QUEUE_FRAME = encode_message(Queue(MODE, REGION))
_HELLO_FRAME = encode_message(Hello(PROTOCOL_VERSION, "bench", "bench"))


class BenchFailed(RuntimeError):
    """The run itself failed (the lobby died, sessions were refused): no numbers to report."""


@dataclass(frozen=True, slots=True)
class LobbyReport:
    sessions: int
    tickets: int
    hold_seconds: float
    heartbeat_interval: float
    match_interval: float
    # phase 1: sessions
    sessions_logged_in: int
    establish_seconds: float
    """First connect to the last logged_in."""
    login_p50_ms: float
    login_p99_ms: float
    lobby_cpu_establish_seconds: float
    sessions_held: int
    """Still connected at the end of the hold."""
    heartbeats_sent: int
    heartbeat_acks: int
    heartbeat_rtt_p50_ms: float
    heartbeat_rtt_p99_ms: float
    heartbeat_rtt_max_ms: float
    disconnects: int
    kicks: int
    lobby_cpu_hold_share: float
    """Lobby CPU seconds per wall second during the hold (1.0 = one core busy)."""
    generator_cpu_hold_share: float
    generator_max_stall_ms_hold: float
    """Longest the generator's own event loop was late: its share of the round trips."""
    lobby_rss_mb_after_hold: float
    # phase 2: matching
    tickets_queued: int
    tickets_proposed: int
    tickets_ready: int
    matches_cancelled: int
    queue_send_seconds: float
    """First queue sent to the last one sent."""
    match_seconds: float
    """First queue sent to the last match_proposed received."""
    tickets_matched_per_second: float
    batch_seconds: float
    """First match_proposed to the last: the lobby's time inside its batches."""
    tickets_matched_per_second_in_batch: float
    ready_seconds: float
    """First queue sent to the last match_ready received."""
    tickets_ready_per_second: float
    lobby_cpu_match_seconds: float
    generator_cpu_match_seconds: float
    generator_max_stall_ms_match: float
    heartbeat_rtt_p99_ms_while_matching: float
    rooms_created: int
    host_reconnects: int
    """Times the lobby dropped the stub host's control connection (it registers again)."""
    # whole run
    lobby_peak_rss_mb: float
    lobby_exit_code: int | None
    errors: dict[str, int] = field(default_factory=dict)
    """Error answers, cancelled ready checks and disconnects, by reason (none expected)."""
    lobby_log: dict[str, int] = field(default_factory=dict)
    """The lobby's warning and error log lines, by event (and reason where it gives one)."""

    @property
    def sessions_goal(self) -> str:
        if self.sessions < SESSIONS_GOAL:
            return f"not tested (needs --sessions >= {SESSIONS_GOAL})"
        held = (
            self.sessions_held == self.sessions
            and self.disconnects == 0
            and self.kicks == 0
            and self.heartbeat_acks == self.heartbeats_sent
        )
        return "met" if held else "NOT met"

    @property
    def matching_goal(self) -> str:
        if self.tickets < TICKETS_GOAL:
            return f"not tested (needs --tickets >= {TICKETS_GOAL})"
        if self.tickets_proposed != self.tickets:
            return "NOT met (not every ticket was matched)"
        if self.tickets_matched_per_second >= TICKETS_GOAL:
            return "met, end to end"
        if self.tickets_matched_per_second_in_batch >= TICKETS_GOAL:
            return (
                "met by the matching batch; NOT met end to end for this burst "
                "(which includes the wait for the batch)"
            )
        return "NOT met"

    def as_dict(self) -> dict[str, object]:
        return {
            **asdict(self),
            "sessions_goal": self.sessions_goal,
            "matching_goal": self.matching_goal,
        }

    def render(self) -> str:
        return "\n".join(
            [
                f"framesync bench lobby: {self.sessions} sessions, {self.tickets} tickets at "
                f"{MODE}, one lobby process",
                f"  rooms stubbed (the room host answers at once); heartbeat every "
                f"{self.heartbeat_interval:g} s, batch every {self.match_interval:g} s",
                "  sessions",
                f"    logged in                {self.sessions_logged_in} of {self.sessions} in "
                f"{self.establish_seconds:.2f} s, lobby CPU "
                f"{self.lobby_cpu_establish_seconds:.2f} s",
                f"    login                    p50 {self.login_p50_ms:.1f} ms  "
                f"p99 {self.login_p99_ms:.1f} ms",
                f"    held                     {self.sessions_held} for "
                f"{self.hold_seconds:.0f} s: {self.heartbeats_sent} heartbeats, "
                f"{self.heartbeat_acks} acks",
                f"    heartbeat round trip     p50 {self.heartbeat_rtt_p50_ms:.2f} ms  "
                f"p99 {self.heartbeat_rtt_p99_ms:.2f} ms  max {self.heartbeat_rtt_max_ms:.2f} ms",
                f"    disconnects / kicks      {self.disconnects} / {self.kicks}",
                f"    lobby while holding      {self.lobby_cpu_hold_share:.1%} of one core, "
                f"RSS {self.lobby_rss_mb_after_hold:.0f} MB",
                f"    generator while holding  {self.generator_cpu_hold_share:.1%} of one core, "
                f"longest stall {self.generator_max_stall_ms_hold:.0f} ms",
                f"    goal {SESSIONS_GOAL:,} held         {self.sessions_goal}",
                "  matching",
                f"    tickets                  {self.tickets_queued} queued, "
                f"{self.tickets_proposed} proposed, {self.tickets_ready} ready",
                f"    cancelled                {self.matches_cancelled} matches; "
                f"{self.rooms_created} rooms created, {self.host_reconnects} host reconnects",
                f"    queue → last proposed    {self.match_seconds:.2f} s = "
                f"{self.tickets_matched_per_second:,.0f} tickets/s  (queues sent in "
                f"{self.queue_send_seconds:.2f} s)",
                f"    within the batch         {self.batch_seconds:.2f} s = "
                f"{self.tickets_matched_per_second_in_batch:,.0f} tickets/s",
                f"    queue → last ready       {self.ready_seconds:.2f} s = "
                f"{self.tickets_ready_per_second:,.0f} tickets/s",
                f"    lobby CPU                {self.lobby_cpu_match_seconds:.2f} s; heartbeat "
                f"p99 {self.heartbeat_rtt_p99_ms_while_matching:.0f} ms meanwhile",
                f"    generator CPU            {self.generator_cpu_match_seconds:.2f} s, "
                f"longest stall {self.generator_max_stall_ms_match:.0f} ms",
                f"    goal {TICKETS_GOAL:,} tickets/s     {self.matching_goal}",
                f"  lobby peak RSS             {self.lobby_peak_rss_mb:.0f} MB; exit code "
                f"{self.lobby_exit_code}",
                f"  errors                     {_counts(self.errors)}",
                f"  lobby warnings             {_counts(self.lobby_log)}",
            ]
        )


def _counts(counts: dict[str, int]) -> str:
    if not counts:
        return "none"
    return "; ".join(f"{n} × {what}" for what, n in sorted(counts.items(), key=lambda i: -i[1]))


# --- the lobby process ----------------------------------------------------------------------


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


def _memory_mb(pid: int) -> tuple[float, float]:
    """(VmRSS, VmHWM) in MB."""
    values: dict[str, float] = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, rest = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            values[key] = int(rest.split()[0]) / 1024
    return values.get("VmRSS", 0.0), values.get("VmHWM", 0.0)


_CONFIG = f"""\
[listen]
host = "127.0.0.1"

[lobby]
heartbeat_interval = {HEARTBEAT_INTERVAL}
idle_timeout = {IDLE_TIMEOUT}

[matchmaker]
interval = {MATCH_INTERVAL}
ready_timeout = {READY_TIMEOUT}

[hosts]
heartbeat_interval = 1.0
lease = 5.0
"""


class _LobbyProcess:
    """A `framesync lobby` child with a fresh data directory; fails the run if it dies."""

    def __init__(self, workdir: Path) -> None:
        config = workdir / "lobby.toml"
        config.write_text(_CONFIG)
        self.ports_file = workdir / "ports.json"
        self.log_path = workdir / "lobby.log"
        command = [sys.executable]
        profile = os.environ.get("FRAMESYNC_BENCH_PROFILE")
        if profile:
            command += ["-m", "cProfile", "-o", profile]
        command += [
            *("-m", "sim.cli", "lobby", "--config", str(config)),
            *("--client-port", "0", "--control-port", "0"),
            *("--data-dir", str(workdir / "lobby"), "--ports-file", str(self.ports_file)),
            *("--log-level", "warning", "--log-json"),
        ]
        with self.log_path.open("wb") as log:
            self.proc = subprocess.Popen(command, cwd=_ROOT, stdout=log, stderr=subprocess.STDOUT)
        self.pid = self.proc.pid

    def check(self) -> None:
        if self.proc.poll() is not None:
            raise BenchFailed(f"the lobby exited with code {self.proc.returncode}{self._tail()}")

    def _tail(self) -> str:
        lines = self.log_path.read_text(errors="replace").splitlines()[-15:]
        return ":\n" + "\n".join(lines) if lines else ""

    def log_events(self) -> dict[str, int]:
        """Warning and error lines by event, with the reason when the line gives one."""
        counts: Counter[str] = Counter()
        for line in self.log_path.read_text(errors="replace").splitlines():
            try:
                entry = json.loads(line)
            except ValueError:
                counts["(not JSON) " + line[:80]] += 1
                continue
            if isinstance(entry, dict):
                why = entry.get("why") or entry.get("reason") or entry.get("error")
                event = str(entry.get("event"))
                counts[f"{event}: {why}" if why else event] += 1
        return dict(counts)

    async def ports(self) -> tuple[int, int]:
        """(client_port, control_port) once the lobby has written its ports file."""
        with trio.move_on_after(START_TIMEOUT):
            while not self.ports_file.exists():
                self.check()
                await trio.sleep(_POLL)
            ports = json.loads(self.ports_file.read_text())
            return int(ports["client_port"]), int(ports["control_port"])
        raise BenchFailed(f"the lobby did not report its ports in {START_TIMEOUT:g} s")

    def cpu(self) -> float:
        self.check()
        return _cpu_seconds(self.pid)

    def memory_mb(self) -> tuple[float, float]:
        self.check()
        return _memory_mb(self.pid)

    async def stop(self) -> int | None:
        """SIGTERM, then wait (kill after STOP_TIMEOUT); the exit code, None if killed."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            with trio.move_on_after(STOP_TIMEOUT):
                while self.proc.poll() is None:
                    await trio.sleep(0.05)
            if self.proc.poll() is None:
                self.proc.kill()
                await trio.to_thread.run_sync(self.proc.wait)
                return None
        return self.proc.returncode


# --- the stub room host ------------------------------------------------------------------------


class _StubHost:
    """Registers with the lobby, heartbeats, and says yes to every CreateRoom at once.

    Like a real host it registers again (listing its rooms) when the lobby drops it, so a
    lease the lobby let expire shows up as `reconnects` rather than ending the run.
    """

    def __init__(self, port: int) -> None:
        self.port = port
        self.registered = trio.Event()
        self.room_ids: list[int] = []
        self.reconnects = 0

    async def run(self) -> None:
        while True:
            with suppress(OSError, trio.BrokenResourceError, control.ControlProtocolError):
                await self._serve()
            self.reconnects += 1
            await trio.sleep(0.1)

    async def _serve(self) -> None:
        stream = await trio.open_tcp_stream("127.0.0.1", self.port)
        async with stream:
            register = control.Register(
                "bench-host", "127.0.0.1", 9, 1_000_000, 0, "bench", tuple(self.room_ids)
            )
            await stream.send_all(control.encode_message(register))
            decoder = control.ControlDecoder()
            interval = math.inf
            next_beat = math.inf
            while True:
                data = None
                with trio.move_on_at(next_beat):  # only the wait: a cancelled send loses data
                    data = await stream.receive_some(_READ_SIZE)
                if data is not None:
                    if not data:
                        return
                    decoder.feed(data)
                    replies: list[bytes] = []
                    while (msg := decoder.next_message()) is not None:
                        if isinstance(msg, control.Registered):
                            interval = msg.heartbeat_interval
                            next_beat = trio.current_time() + interval
                            self.registered.set()
                        elif isinstance(msg, control.CreateRoom):
                            self.room_ids.append(msg.room_id)
                            created = control.RoomCreated(
                                msg.request_id, msg.room_id, "127.0.0.1", 9
                            )
                            replies.append(control.encode_message(created))
                        elif isinstance(msg, control.Ping):
                            replies.append(control.encode_message(control.Pong(msg.nonce)))
                    if replies:
                        await stream.send_all(b"".join(replies))
                if trio.current_time() >= next_beat:
                    rooms = len(self.room_ids)
                    beat = control.Heartbeat(rooms, rooms, 0, draining=False)
                    await stream.send_all(control.encode_message(beat))
                    next_beat += interval


# --- the load generator ------------------------------------------------------------------------


class _Refused(Exception):
    """The lobby answered hello or register_device with something other than success."""


class _Session:
    __slots__ = ("connected", "index", "proposed", "queue_now", "sent", "wake")

    def __init__(self, index: int) -> None:
        self.index = index
        self.connected = False
        self.queue_now = False
        self.proposed = False
        """Got a match_proposed already (a requeued ticket's second one is not counted)."""
        self.wake: trio.CancelScope | None = None
        self.sent: dict[int, tuple[float, str]] = {}
        """Heartbeat nonce -> (sent at, phase it was sent in)."""


class _Generator:
    """Every client connection and what they saw; phases tag heartbeats and their acks."""

    def __init__(self, port: int, count: int) -> None:
        self.port = port
        self.count = count
        self.sessions = [_Session(i) for i in range(count)]
        self.limiter = trio.CapacityLimiter(CONNECT_CONCURRENCY)
        self.phase = "establish"
        self.heartbeat_interval = HEARTBEAT_INTERVAL
        self.origin = 0.0
        self.nonce = 0
        self.logged_in = 0
        self.refused: Counter[str] = Counter()
        self.login_ms: list[float] = []
        self.first_connect = math.inf
        self.last_login = 0.0
        self.hb_sent: Counter[str] = Counter()
        self.hb_acked: Counter[str] = Counter()
        self.rtt_ms: dict[str, list[float]] = {}
        self.stall_ms: dict[str, float] = {}
        self.disconnects = 0
        self.kicks = 0
        self.errors: Counter[str] = Counter()
        self.first_queue = math.inf
        self.last_queue = 0.0
        self.queued = 0
        self.proposed = 0
        self.first_proposed = math.inf
        self.last_proposed = 0.0
        self.ready = 0
        self.last_ready = 0.0
        self.cancelled = 0

    @property
    def connected(self) -> int:
        return sum(s.connected for s in self.sessions)

    async def watch_stalls(self) -> None:
        """Record how late this event loop wakes a 10 ms sleeper, per phase (its max)."""
        while True:
            before = trio.current_time()
            await trio.sleep(0.01)
            late = (trio.current_time() - before - 0.01) * 1000
            self.stall_ms[self.phase] = max(self.stall_ms.get(self.phase, 0.0), late)

    async def run_session(self, s: _Session) -> None:
        decoder = LobbyDecoder(Role.CLIENT)
        async with self.limiter:
            start = trio.current_time()
            self.first_connect = min(self.first_connect, start)
            sock = trio.socket.socket()
            try:
                await sock.connect(("127.0.0.1", self.port))
                stream = trio.SocketStream(sock)
                frames = _HELLO_FRAME + encode_message(RegisterDevice(f"bench-{s.index}"))
                await stream.send_all(frames)
                await self._log_in(stream, decoder)
            except (OSError, trio.BrokenResourceError, LobbyProtocolError, _Refused) as exc:
                sock.close()
                self.refused[str(exc) or type(exc).__name__] += 1
                return
            now = trio.current_time()
            self.login_ms.append((now - start) * 1000)
            self.last_login = max(self.last_login, now)
            self.logged_in += 1
        s.connected = True
        async with stream:
            try:
                await self._serve(s, stream, decoder)
            except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
                self._lost(s, f"broken: {exc}")
            except LobbyProtocolError as exc:
                self._lost(s, f"protocol: {exc}")

    async def _log_in(self, stream: trio.SocketStream, decoder: LobbyDecoder) -> None:
        while True:
            data = await stream.receive_some(_READ_SIZE)
            if not data:
                raise _Refused("closed before logged_in")
            decoder.feed(data)
            while (msg := decoder.next_message()) is not None:
                if isinstance(msg, Welcome):
                    self.heartbeat_interval = msg.heartbeat_interval
                elif isinstance(msg, LoggedIn):
                    return
                elif isinstance(msg, Error):
                    raise _Refused(f"error {msg.code}")
                else:
                    raise _Refused(f"unexpected {type(msg).__name__}")

    def _lost(self, s: _Session, reason: str) -> None:
        s.connected = False
        if self.phase != "teardown":
            self.disconnects += 1
            self.errors[reason] += 1

    async def _serve(self, s: _Session, stream: trio.SocketStream, decoder: LobbyDecoder) -> None:
        """Heartbeat on this session's slot of the schedule; queue when told; accept always."""
        interval = self.heartbeat_interval
        slot = self.origin + interval * s.index / self.count
        now = trio.current_time()
        next_beat = slot + math.ceil((now - slot) / interval) * interval
        while True:
            if s.queue_now:
                s.queue_now = False
                self.first_queue = min(self.first_queue, trio.current_time())
                await stream.send_all(_QUEUE_FRAME)
                self.last_queue = max(self.last_queue, trio.current_time())
            now = trio.current_time()
            if now >= next_beat:
                self.nonce += 1
                s.sent[self.nonce] = (now, self.phase)
                self.hb_sent[self.phase] += 1
                await stream.send_all(encode_message(Heartbeat(self.nonce)))
                next_beat += interval * max(1, math.ceil((now - next_beat) / interval))
            with trio.move_on_at(next_beat) as scope:
                s.wake = scope
                data = await stream.receive_some(_READ_SIZE)
            s.wake = None
            if scope.cancelled_caught:
                continue
            if not data:
                self._lost(s, "closed by the lobby")
                return
            now = trio.current_time()
            decoder.feed(data)
            replies: list[bytes] = []
            while (msg := decoder.next_message()) is not None:
                if isinstance(msg, HeartbeatAck):
                    sent = s.sent.pop(msg.nonce, None)
                    if sent is not None:
                        self.hb_acked[sent[1]] += 1
                        self.rtt_ms.setdefault(sent[1], []).append((now - sent[0]) * 1000)
                elif isinstance(msg, Queued):
                    self.queued += 1
                elif isinstance(msg, MatchProposed):
                    if not s.proposed:
                        s.proposed = True
                        self.proposed += 1
                        self.first_proposed = min(self.first_proposed, now)
                        self.last_proposed = max(self.last_proposed, now)
                    replies.append(encode_message(Accept(msg.proposal_id)))
                elif isinstance(msg, MatchReady):
                    self.ready += 1
                    self.last_ready = max(self.last_ready, now)
                elif isinstance(msg, MatchCancelled):
                    self.cancelled += 1
                    self.errors[f"match_cancelled: {msg.reason}"] += 1
                elif isinstance(msg, Kicked):
                    if self.phase != "teardown":
                        self.kicks += 1
                    self._lost(s, f"kicked: {msg.reason}")
                    return
                elif isinstance(msg, Error):
                    self.errors[f"error {msg.code}: {msg.message}"] += 1
            if replies:
                await stream.send_all(b"".join(replies))


# --- the run -------------------------------------------------------------------------------------


def _pct(samples: list[float], q: float) -> float:
    if not samples:
        return 0.0
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def _median(samples: list[float]) -> float:
    return statistics.median(samples) if samples else 0.0


def _rate(count: int, seconds: float) -> float:
    return count / seconds if seconds > 0 else 0.0


async def _wait(lobby: _LobbyProcess, done: Callable[[], bool], timeout: float) -> bool:
    """Poll until `done()`; False on timeout. Fails the run if the lobby dies meanwhile."""
    with trio.move_on_after(timeout):
        while not done():
            lobby.check()
            await trio.sleep(_POLL)
        return True
    return False


def _raise_fd_limit(sessions: int) -> None:
    """Lift the soft open-files limit towards the hard one (the lobby child inherits it)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = sessions + 256
    if soft != resource.RLIM_INFINITY and soft < want:
        new = want if hard == resource.RLIM_INFINITY else min(want, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (new, hard))
        if new < want:
            raise BenchFailed(f"open-files limit {hard} is too low for {sessions} sessions")


@contextmanager
def _generator_gc() -> Iterator[Callable[[], None]]:
    """Keep the generator's own collector pauses out of the lobby's round trips.

    The yielded function moves everything alive so far out of the collector's view (call it
    once the sessions exist); on exit the collector is as it was.
    """
    thresholds = gc.get_threshold()

    def freeze() -> None:
        gc.collect()
        gc.freeze()

    gc.set_threshold(50_000, 20, 20)
    freeze()
    try:
        yield freeze
    finally:
        gc.unfreeze()
        gc.set_threshold(*thresholds)


async def _run(sessions: int, tickets: int, hold: float, workdir: Path) -> LobbyReport:
    lobby = _LobbyProcess(workdir)
    try:
        client_port, control_port = await lobby.ports()
        host = _StubHost(control_port)
        gen = _Generator(client_port, sessions)
        with _generator_gc() as freeze_gc:
            async with trio.open_nursery() as outer:
                outer.start_soon(host.run)
                outer.start_soon(gen.watch_stalls)
                if not await _wait(lobby, host.registered.is_set, START_TIMEOUT):
                    raise BenchFailed("the stub room host was not registered")
                async with trio.open_nursery() as clients:
                    # Phase 1: establish every session, then hold them.
                    cpu0 = lobby.cpu()
                    gen.origin = trio.current_time()
                    for s in gen.sessions:
                        clients.start_soon(gen.run_session, s)
                    finished = await _wait(
                        lobby,
                        lambda: gen.logged_in + sum(gen.refused.values()) == sessions,
                        ESTABLISH_TIMEOUT,
                    )
                    if gen.refused or not finished:
                        reasons = dict(gen.refused.most_common(5))
                        raise BenchFailed(
                            f"{gen.logged_in} of {sessions} sessions logged in; refused: {reasons}"
                        )
                    cpu1 = lobby.cpu()
                    freeze_gc()
                    gen.phase = "hold"
                    hold_start, gen_cpu0 = trio.current_time(), time.process_time()
                    await _wait(lobby, lambda: False, hold)
                    cpu2, gen_cpu1 = lobby.cpu(), time.process_time()
                    hold_window = trio.current_time() - hold_start
                    held = gen.connected
                    rss_after_hold, _ = lobby.memory_mb()
                    gen.phase = "settle"
                    await _wait(
                        lobby, lambda: gen.hb_acked["hold"] >= gen.hb_sent["hold"], SETTLE_TIMEOUT
                    )
                    # Phase 2: M live sessions queue at once; everyone accepts.
                    live = [s for s in gen.sessions if s.connected][:tickets]
                    if len(live) < tickets:
                        raise BenchFailed(
                            f"only {len(live)} sessions left to queue {tickets} tickets"
                        )
                    gen.phase = "match"
                    cpu3, gen_cpu2 = lobby.cpu(), time.process_time()
                    for s in live:
                        s.queue_now = True
                        if s.wake is not None:
                            s.wake.cancel()
                    await _wait(lobby, lambda: gen.ready + gen.cancelled >= tickets, MATCH_TIMEOUT)
                    cpu4, gen_cpu3 = lobby.cpu(), time.process_time()
                    _, peak = lobby.memory_mb()
                    gen.phase = "teardown"
                    clients.cancel_scope.cancel()
                outer.cancel_scope.cancel()
    finally:
        with trio.CancelScope(shield=True):
            exit_code = await lobby.stop()
    hold_rtt = gen.rtt_ms.get("hold", [])
    match_seconds = gen.last_proposed - gen.first_queue
    batch_seconds = gen.last_proposed - gen.first_proposed
    ready_seconds = gen.last_ready - gen.first_queue
    return LobbyReport(
        sessions=sessions,
        tickets=tickets,
        hold_seconds=hold_window,
        heartbeat_interval=gen.heartbeat_interval,
        match_interval=MATCH_INTERVAL,
        sessions_logged_in=gen.logged_in,
        establish_seconds=gen.last_login - gen.first_connect,
        login_p50_ms=_median(gen.login_ms),
        login_p99_ms=_pct(gen.login_ms, 0.99),
        lobby_cpu_establish_seconds=cpu1 - cpu0,
        sessions_held=held,
        heartbeats_sent=gen.hb_sent["hold"],
        heartbeat_acks=gen.hb_acked["hold"],
        heartbeat_rtt_p50_ms=_median(hold_rtt),
        heartbeat_rtt_p99_ms=_pct(hold_rtt, 0.99),
        heartbeat_rtt_max_ms=max(hold_rtt, default=0.0),
        disconnects=gen.disconnects,
        kicks=gen.kicks,
        lobby_cpu_hold_share=(cpu2 - cpu1) / hold_window if hold_window > 0 else 0.0,
        generator_cpu_hold_share=(gen_cpu1 - gen_cpu0) / hold_window if hold_window > 0 else 0.0,
        generator_max_stall_ms_hold=gen.stall_ms.get("hold", 0.0),
        lobby_rss_mb_after_hold=rss_after_hold,
        tickets_queued=gen.queued,
        tickets_proposed=gen.proposed,
        tickets_ready=gen.ready,
        matches_cancelled=gen.cancelled // MODE_PLAYERS,
        queue_send_seconds=max(0.0, gen.last_queue - gen.first_queue),
        match_seconds=max(0.0, match_seconds),
        tickets_matched_per_second=_rate(gen.proposed, match_seconds),
        batch_seconds=max(0.0, batch_seconds),
        tickets_matched_per_second_in_batch=_rate(gen.proposed, batch_seconds),
        ready_seconds=max(0.0, ready_seconds),
        tickets_ready_per_second=_rate(gen.ready, ready_seconds),
        lobby_cpu_match_seconds=cpu4 - cpu3,
        generator_cpu_match_seconds=gen_cpu3 - gen_cpu2,
        generator_max_stall_ms_match=gen.stall_ms.get("match", 0.0),
        heartbeat_rtt_p99_ms_while_matching=_pct(gen.rtt_ms.get("match", []), 0.99),
        rooms_created=len(host.room_ids),
        host_reconnects=host.reconnects,
        lobby_peak_rss_mb=peak,
        lobby_exit_code=exit_code,
        errors=dict(gen.errors),
        lobby_log=lobby.log_events(),
    )


def run_lobby_bench(*, sessions: int, tickets: int, hold: float) -> LobbyReport:
    """Run both phases against a fresh lobby; raises BenchFailed if the run itself failed."""
    if sessions < 1 or not 0 < tickets <= sessions or tickets % MODE_PLAYERS or hold < 0:
        raise ValueError(
            f"need sessions >= 1, 0 < tickets <= sessions, tickets a multiple of "
            f"{MODE_PLAYERS}, hold >= 0"
        )
    _raise_fd_limit(sessions)
    with tempfile.TemporaryDirectory(prefix="framesync-bench-lobby-") as tmp:
        try:
            return trio.run(_run, sessions, tickets, hold, Path(tmp))
        except BaseExceptionGroup as group:
            failed, _ = group.split(BenchFailed)
            if failed is None:
                raise
            raise _first(failed) from group


def _first(group: BaseExceptionGroup[BenchFailed]) -> BenchFailed:
    """The first BenchFailed in a (nested) exception group, for a one-line message."""
    first = group.exceptions[0]
    return _first(first) if isinstance(first, BaseExceptionGroup) else first
