"""`framesync bench reconnect`: how long a client takes to catch up a long match, and how much.

The question (from the issue): a 20-minute, 10-player, 15 Hz match with realistic input
density (about 4 inputs of 8 bytes per player per second); a client joins from nothing and
must hold every frame, or the agreed snapshot plus the frames after it, and be live again
(within the redundancy window of the room's newest frame). Goal: from frame 0 in ≤ 0.5 s.

How it is measured, in one process on loopback:

* A real `RoomHost` (battle/host.py: its UDP socket, ticker, input log) runs under trio.
  Each case gets its own room, created through `RoomHost.create_room(CreateRoom(...))` with a
  ticket key chosen here, so both cases start cold (the room's compressed-run cache is built
  during the measured catch-up, as it is for the first reconnect of a real match).
* History is fast-forwarded, not waited for. The inputs are generated up front from the seed
  (each player sends one input with probability inputs_per_second / hz per frame,
  `input_bytes` random bytes, input sequences from 1). They are then fed through the room's
  own code: each input is queued on its peer exactly as `Room._on_inputs` queues it
  (`peer.queued`, `peer.input_ack`), and `Room.tick(now)` runs once per frame on a fake clock
  that ends at the real trio clock, so `Room._close_frame` itself builds
  `encoded_frames` and `frame_times` and emits `FrameClosed`, which the host writes to the
  match's input log. Nothing is appended behind the room's back, so `last_frame`, the encoded
  frames and the log stay consistent by construction, and the result is checked
  (every frame's inputs equal the generated ones).
  Two private touches remain, because the room has no public way to do this: `Room._start`
  (a room starts only when its roster connected, or at `start_timeout` with `min_players`
  connected — an empty room cannot start), and `Room._next_tick`, re-anchored to the real
  clock after the fast-forward so live frames continue at `hz` instead of bursting to make up
  for the time the fast-forward took. A public `Room.start(now)` / history-restore hook would
  remove both.
  The room's config sets `max_duration` and `empty_timeout` beyond the fake match length (an
  empty room would otherwise end as abandoned during the fast-forward).
* For the snapshot case `room.agreed_snapshot` is set directly to `snapshot_bytes` of seeded
  data at a frame about one minute before the end. In a real match it comes from client
  uploads whose hash the majority agreed on; that path is covered by tests/test_catchup.py.
* One real `BattleClient` connects over loopback UDP with a join ticket for slot 0 (the other
  slots stay empty), `prefer_snapshot` False or True. Time runs from ACCEPT to the moment the
  client is handed a frame within `redundancy_frames` of the newest frame it knows of (what
  `conn.frames_behind <= redundancy_frames` says at that frame). Bytes and datagrams are
  counted on the client's socket (a `socket.socket` subclass counting `recvfrom`;
  BattleClient has no counters), from before the handshake to that moment; the host core's
  `bytes_out`/`datagrams_out` delta over the same span is reported beside it, with the
  kernel's drop count for the client socket (/proc/net/udp) and the longest stall of the trio
  loop seen by a 1 ms watchdog. The client's frames (and snapshot) are compared with the
  room's exactly.
* Each case runs `repeats` times (a fresh room each time); the median run is shown and every
  run's time is kept, because the phase of the room's tick and trio's scheduling order make
  single runs vary.

Host and client share one process and one core (pessimistic: the host's pump, zlib, sealing
and the client's decoding compete for it).
"""

from __future__ import annotations

import functools
import hashlib
import math
import os
import random
import socket
import statistics
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import structlog
import trio

from battle import __version__
from battle.catchup import AgreedSnapshot
from battle.config import RoomConfig, RosterEntry
from battle.control import CreateRoom, RoomCreated, room_config_to_plain
from battle.frames import Frame, FrameInput
from battle.host import HostSettings, RoomHost
from battle.messages import MAX_SNAPSHOT_SIZE, RoomState, encode_frame
from battle.room import Room
from battle.ticket import issue_ticket
from battle.wire import PacketType
from sim.battleclient import BattleClient

GOAL_SECONDS = 0.5
"""The issue's goal for a catch-up from frame 0."""
DEFAULTS: dict[str, Any] = {
    "minutes": 20.0,
    "players": 10,
    "hz": 15,
    "inputs_per_second": 4.0,
    "input_bytes": 8,
    "snapshot_bytes": 64 * 1024,
    "seed": 1,
}
"""The issue's scenario. The snapshot size is an assumption (a small MOBA state)."""
SNAPSHOT_AGE = 60.0
"""Seconds before the end of the history at which the agreed snapshot is taken."""
CATCHUP_TIMEOUT = 60.0


# -- report --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class CatchupCase:
    """One client's catch-up, from frame 0 or from the agreed snapshot."""

    mode: str
    """"frame0" or "snapshot"."""
    start_frame: int
    """Frame the client starts from: 0, or the snapshot's frame."""
    snapshot_bytes: int
    seconds: float
    """ACCEPT → within the redundancy window of the newest frame."""
    first_data_ms: float
    """ACCEPT → first CATCHUP or SNAPSHOT datagram received (the room's start-up share)."""
    handshake_ms: float
    """Connect request sent → ACCEPT handled."""
    frames_received: int
    last_frame: int
    """The room's newest frame when the client was caught up."""
    datagrams: int
    """Received by the client's socket, handshake included."""
    bytes: int
    host_datagrams: int
    """Sent by the host core over the same span (core stats delta)."""
    host_bytes: int
    mb_per_s: float
    """Client-received bytes / seconds, in 10^6 bytes per second."""
    kernel_drops: int | None
    """Datagrams the kernel dropped at the client socket (/proc/net/udp; None if unknown)."""
    loop_stall_ms: float
    """Longest the trio loop (host and client together) did not run a 1 ms watchdog."""
    frames_match: bool
    """The client's frames (and snapshot) equal the room's exactly."""


def _median_case(cases: Sequence[CatchupCase]) -> CatchupCase:
    return sorted(cases, key=lambda c: c.seconds)[(len(cases) - 1) // 2]


@dataclass(frozen=True, slots=True)
class ReconnectReport:
    minutes: float
    players: int
    hz: int
    inputs_per_second: float
    input_bytes: int
    seed: int
    frames: int
    """Frames of fast-forwarded history."""
    inputs: int
    log_bytes: int
    """Sum of the history's encoded frame bytes (what a frame-0 catch-up carries, raw)."""
    catchup_rate: float
    """RoomConfig.catchup_rate used, bytes per second per peer."""
    redundancy_frames: int
    fast_forward_seconds: float
    """Wall time to feed the history through one room (setup, not part of any catch-up)."""
    frame0_runs: tuple[CatchupCase, ...]
    snapshot_runs: tuple[CatchupCase, ...]
    """One per repeat, each against a fresh room (cold caches)."""
    goal_seconds: float = GOAL_SECONDS

    @property
    def frame0(self) -> CatchupCase:
        """The median-time run from frame 0."""
        return _median_case(self.frame0_runs)

    @property
    def snapshot(self) -> CatchupCase:
        return _median_case(self.snapshot_runs)

    @property
    def goal_met(self) -> bool:
        """The median frame-0 catch-up is within the goal (`frame0_runs` has every run)."""
        return self.frame0.seconds <= self.goal_seconds

    @property
    def ok(self) -> bool:
        return all(c.frames_match for c in self.frame0_runs + self.snapshot_runs)

    def as_dict(self) -> dict[str, object]:
        out = asdict(self)
        out["frame0"] = asdict(self.frame0)
        out["snapshot"] = asdict(self.snapshot)
        out["frame0_seconds"] = [c.seconds for c in self.frame0_runs]
        out["snapshot_seconds"] = [c.seconds for c in self.snapshot_runs]
        out["goal_met"] = self.goal_met
        out["goal_met_every_run"] = all(c.seconds <= self.goal_seconds for c in self.frame0_runs)
        out["ok"] = self.ok
        out["same_process"] = True
        return out

    def render(self) -> str:
        a, b = self.frame0, self.snapshot

        def row(label: str, left: str, right: str) -> str:
            return f"  {label:<22}{left:<24}{right}".rstrip()

        def drops(case: CatchupCase) -> str:
            return "n/a" if case.kernel_drops is None else str(case.kernel_drops)

        def spread(runs: tuple[CatchupCase, ...]) -> str:
            times = sorted(c.seconds for c in runs)
            return f"{times[0]:.3f}–{times[-1]:.3f} s"

        def match(case: CatchupCase) -> str:
            return "yes" if case.frames_match else "NO"

        n = len(self.frame0_runs)
        worst = max(c.seconds for c in self.frame0_runs)
        lines = [
            f"framesync {__version__} bench reconnect: {self.minutes:g} min, {self.players} "
            f"players, {self.hz} Hz, seed {self.seed}",
            "  room host and client share one process (one core) on loopback: pessimistic",
            f"  history               {self.frames} frames, {self.inputs} inputs "
            f"({self.inputs_per_second:g}/s/player of {self.input_bytes} B), "
            f"log {self.log_bytes} B encoded",
            f"  catch-up rate         {self.catchup_rate:.0f} B/s per peer, "
            f"redundancy window {self.redundancy_frames} frames",
            f"  fast-forward          {self.fast_forward_seconds:.2f} s per room (setup)",
            f"  runs                  {n} per case, fresh room each; median run shown",
            row("", "from frame 0", "from snapshot"),
            row("start frame", str(a.start_frame), f"{b.start_frame} ({b.snapshot_bytes} B)"),
            row("catch-up time", f"{a.seconds:.3f} s", f"{b.seconds:.3f} s"),
            row("  all runs", spread(self.frame0_runs), spread(self.snapshot_runs)),
            row("  to first data", f"{a.first_data_ms:.1f} ms", f"{b.first_data_ms:.1f} ms"),
            row("handshake", f"{a.handshake_ms:.1f} ms", f"{b.handshake_ms:.1f} ms"),
            row("frames received", str(a.frames_received), str(b.frames_received)),
            row("bytes received", str(a.bytes), str(b.bytes)),
            row("datagrams received", str(a.datagrams), str(b.datagrams)),
            row(
                "host sent",
                f"{a.host_bytes} B, {a.host_datagrams} dg",
                f"{b.host_bytes} B, {b.host_datagrams} dg",
            ),
            row("effective rate", f"{a.mb_per_s:.2f} MB/s", f"{b.mb_per_s:.2f} MB/s"),
            row("kernel drops", drops(a), drops(b)),
            row("longest loop stall", f"{a.loop_stall_ms:.1f} ms", f"{b.loop_stall_ms:.1f} ms"),
            row("frames match room", match(a), match(b)),
            f"  goal                  from frame 0 in ≤ {self.goal_seconds:g} s: "
            + ("MET" if self.goal_met else "NOT MET")
            + f" (median {a.seconds:.3f} s, worst {worst:.3f} s of {n})",
        ]
        return "\n".join(lines)


# -- history ---------------------------------------------------------------------------------


def generate_history(
    *, frames: int, players: int, hz: int, inputs_per_second: float, input_bytes: int, seed: int
) -> list[list[FrameInput]]:
    """Per frame, the inputs that arrive for it, in slot order, from a seeded generator.

    Each player sends floor(p) inputs plus one more with probability frac(p) per frame,
    p = inputs_per_second / hz; sequences run from 1 per player.
    """
    rng = random.Random(seed)
    per_frame = inputs_per_second / hz
    whole = int(per_frame)
    frac = per_frame - whole
    seqs = [0] * players
    history: list[list[FrameInput]] = []
    for _ in range(frames):
        inputs: list[FrameInput] = []
        for slot in range(players):
            count = whole + (rng.random() < frac)
            for _ in range(count):
                seqs[slot] += 1
                inputs.append(FrameInput(slot, seqs[slot], rng.randbytes(input_bytes)))
        history.append(inputs)
    return history


def fast_forward(room: Room, history: Sequence[Sequence[FrameInput]], end: float) -> None:
    """Start `room` and close one frame per entry of `history` through the room's own tick,
    on a fake clock whose last tick is `end` (the caller re-anchors live ticks after)."""
    if room.state is not RoomState.WAITING:
        raise ValueError("fast_forward needs a room that has not started")
    interval = room.config.tick_interval
    start = end - (len(history) + 0.5) * interval
    room.phase = 0.0  # frame n closes exactly n intervals after the start
    room._start(start)  # no public way to start a room nobody has connected to
    peers = room.peers
    first = room.last_frame + 1
    for number, inputs in enumerate(history, first):
        for item in inputs:
            peer = peers[item.slot]
            peer.queued.append(item)  # as Room._on_inputs queues an arriving input
            peer.input_ack = item.seq
        # Mid-interval, so rounding never moves a frame boundary.
        room.tick(start + (number - first + 1.5) * interval)
    if room.last_frame != first - 1 + len(history):
        raise RuntimeError(f"fast-forward closed {room.last_frame} frames, not {len(history)}")
    for frame, inputs in zip(room.frames[first - 1 :], history, strict=True):
        if frame.inputs != tuple(inputs):
            raise RuntimeError(f"frame {frame.number} does not hold the inputs queued for it")


def _resume_live(room: Room, now: float) -> None:
    room._next_tick = now + room.config.tick_interval  # see the module docstring


# -- the client side -------------------------------------------------------------------------


class _CountingSocket(socket.socket):
    """A UDP socket that counts what it receives and notes the first catch-up datagram."""

    datagrams = 0
    bytes_in = 0
    first_data_at: float | None = None

    def recvfrom(self, bufsize: int, flags: int = 0, /) -> tuple[bytes, Any]:
        data, addr = super().recvfrom(bufsize, flags)
        self.datagrams += 1
        self.bytes_in += len(data)
        if self.first_data_at is None and len(data) > 1 and data[1] in _DATA_TYPES:
            self.first_data_at = trio.current_time()
        return data, addr


_DATA_TYPES = frozenset((PacketType.CATCHUP, PacketType.SNAPSHOT))


class _MeteredClient(BattleClient):
    """BattleClient on a counting socket (same socket set-up as BattleClient._new_socket)."""

    meter: _CountingSocket | None = None

    def _new_socket(self) -> socket.socket:
        sock = _CountingSocket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.setblocking(False)
        sock.bind((self.bind_host, 0))
        self.meter = sock
        return sock


class _StallWatch:
    """Longest gap between 1 ms sleeps of a watchdog task: how long the loop was busy."""

    def __init__(self) -> None:
        self.worst = 0.0

    async def run(self) -> None:
        while True:
            before = trio.current_time()
            await trio.sleep(0.001)
            self.worst = max(self.worst, trio.current_time() - before - 0.001)


def _kernel_drops(port: int) -> int | None:
    """Linux: the `drops` column of /proc/net/udp for the socket bound to 127.0.0.1:port."""
    try:
        lines = Path("/proc/net/udp").read_text().splitlines()[1:]
    except OSError:
        return None
    wanted = f"0100007F:{port:04X}"
    for line in lines:
        fields = line.split()
        if len(fields) >= 13 and fields[1] == wanted:
            return int(fields[12])
    return None


# -- one case --------------------------------------------------------------------------------


@dataclass(slots=True)
class _Mark:
    at: float = 0.0
    frames: int = 0
    last_frame: int = 0
    datagrams: int = 0
    bytes_in: int = 0
    host_datagrams: int = 0
    host_bytes: int = 0


async def _case(
    host: RoomHost,
    nursery: trio.Nursery,
    *,
    room_id: int,
    config: RoomConfig,
    players: int,
    seed: int,
    history: Sequence[Sequence[FrameInput]],
    snapshot: AgreedSnapshot | None,
) -> tuple[CatchupCase, float]:
    """Create a room, fast-forward it, catch one client up; (result, fast-forward seconds)."""
    core = host.core
    assert core is not None
    key = os.urandom(32)
    match_id = 10_000 + room_id
    roster = tuple(RosterEntry(s, 1000 * room_id + s, s % 2) for s in range(players))
    reply = host.create_room(
        CreateRoom(
            request_id=room_id,
            room_id=room_id,
            match_id=match_id,
            seed=seed,
            roster=roster,
            config=room_config_to_plain(config),
            ticket_key=key,
        )
    )
    if not isinstance(reply, RoomCreated):
        raise RuntimeError(f"room host refused the room: {reply}")
    room = core.rooms[room_id]
    began = time.perf_counter()
    fast_forward(room, history, trio.current_time())
    ff_seconds = time.perf_counter() - began
    _resume_live(room, trio.current_time())
    if snapshot is not None:
        room.agreed_snapshot = snapshot
    # Let the host write the history to the input log and settle into live ticks.
    with trio.fail_after(30):
        while core.sink.events:
            await trio.sleep(0.01)
    await trio.sleep(0.3)

    entry = roster[0]
    ticket, keys = issue_ticket(
        key, match_id, room_id, entry.player_id, entry.slot, time.time() + 600, team=entry.team
    )
    client = _MeteredClient(ticket, keys, host.public_address, prefer_snapshot=bool(snapshot))
    window = config.redundancy_frames
    caught = trio.Event()
    mark = _Mark()
    watch = _StallWatch()
    host_datagrams0 = core.stats["datagrams_out"]
    host_bytes0 = core.stats["bytes_out"]

    def on_frame(frame: Frame) -> None:
        # Called per frame after the client drained a batch of datagrams, so judge by this
        # frame's number (conn.frame_ack is already past it).
        if caught.is_set() or client.conn.last_server_frame - frame.number > window:
            return
        meter = client.meter
        assert meter is not None
        mark.at = trio.current_time()
        mark.frames = len(client.frames)
        mark.last_frame = room.last_frame
        mark.datagrams = meter.datagrams
        mark.bytes_in = meter.bytes_in
        mark.host_datagrams = core.stats["datagrams_out"] - host_datagrams0
        mark.host_bytes = core.stats["bytes_out"] - host_bytes0
        caught.set()

    client.on_frame = on_frame
    async with trio.open_nursery() as watching:
        watching.start_soon(watch.run)
        connect_at = trio.current_time()
        await nursery.start(client.run)
        with trio.fail_after(10):
            await client.accepted.wait()
        accept_at = trio.current_time()
        watch.worst = 0.0  # the stall that counts is the catch-up's, not the set-up's
        with trio.fail_after(CATCHUP_TIMEOUT):
            await caught.wait()
        watching.cancel_scope.cancel()
    meter = client.meter
    assert meter is not None
    drops = _kernel_drops(meter.getsockname()[1])

    got = client.frames[: mark.frames]
    if snapshot is None:
        start = 0
        matches = not client.snapshots and got == room.frames[: mark.frames]
    else:
        start = snapshot.frame
        snaps = client.snapshots
        matches = (
            len(snaps) == 1
            and (snaps[0].frame, snaps[0].hash, snaps[0].data)
            == (snapshot.frame, snapshot.hash, snapshot.data)
            and got == room.frames[start : start + mark.frames]
        )
    matches = matches and start + mark.frames >= len(history) - window

    client.leave()
    with trio.move_on_after(5):
        await client.wait_closed()
    room.end("bench_done", trio.current_time())

    seconds = mark.at - accept_at
    first_data = meter.first_data_at if meter.first_data_at is not None else mark.at
    case = CatchupCase(
        mode="frame0" if snapshot is None else "snapshot",
        start_frame=start,
        snapshot_bytes=len(snapshot.data) if snapshot else 0,
        seconds=seconds,
        first_data_ms=(first_data - accept_at) * 1000,
        handshake_ms=(accept_at - connect_at) * 1000,
        frames_received=mark.frames,
        last_frame=mark.last_frame,
        datagrams=mark.datagrams,
        bytes=mark.bytes_in,
        host_datagrams=mark.host_datagrams,
        host_bytes=mark.host_bytes,
        mb_per_s=mark.bytes_in / seconds / 1e6 if seconds > 0 else math.inf,
        kernel_drops=drops,
        loop_stall_ms=watch.worst * 1000,
        frames_match=matches,
    )
    return case, ff_seconds


@contextmanager
def _quiet_logs() -> Iterator[None]:
    """The host logs every room and catch-up; keep that off stdout (--json) during the bench."""
    previous = structlog.get_config()
    structlog.configure(
        wrapper_class=structlog.make_filtering_bound_logger(40),  # errors only
        logger_factory=structlog.ReturnLoggerFactory(),
    )
    try:
        yield
    finally:
        structlog.configure(**previous)


async def _run(
    *,
    minutes: float,
    players: int,
    hz: int,
    inputs_per_second: float,
    input_bytes: int,
    snapshot_bytes: int,
    seed: int,
    catchup_rate: float,
    repeats: int,
) -> ReconnectReport:
    frames = round(minutes * 60 * hz)
    config = RoomConfig(
        tick_rate=hz,
        max_input_bytes=max(32, input_bytes),
        max_inputs_per_frame=max(3, math.ceil(inputs_per_second / hz)),
        max_duration=min(86_400.0, minutes * 60 + 3600.0),
        # The room has nobody in it while its history is fast-forwarded: it must not end.
        empty_timeout=min(3600.0, minutes * 60 + 600.0),
        catchup_rate=catchup_rate,
        end_linger=0.2,
    )
    history = generate_history(
        frames=frames,
        players=players,
        hz=hz,
        inputs_per_second=inputs_per_second,
        input_bytes=input_bytes,
        seed=seed,
    )
    rng = random.Random(seed ^ 0x5EED)
    snap_frame = frames - min(round(SNAPSHOT_AGE * hz), frames // 2)
    snap_data = rng.randbytes(snapshot_bytes)
    snap_hash = int.from_bytes(hashlib.blake2b(snap_data, digest_size=8).digest(), "little")
    snapshot = AgreedSnapshot(snap_frame, snap_hash, snap_data)

    frame0_runs: list[CatchupCase] = []
    snapshot_runs: list[CatchupCase] = []
    ff_times: list[float] = []
    with tempfile.TemporaryDirectory(prefix="fs-bench-reconnect-") as tmp:
        host = RoomHost(HostSettings(host_id="bench-reconnect", data_dir=Path(tmp)))
        async with trio.open_nursery() as nursery:
            await nursery.start(host.run)
            for i in range(repeats):
                for snap, runs in ((None, frame0_runs), (snapshot, snapshot_runs)):
                    case, ff_seconds = await _case(
                        host,
                        nursery,
                        room_id=len(ff_times) + 1,
                        config=config,
                        players=players,
                        seed=seed + i,
                        history=history,
                        snapshot=snap,
                    )
                    runs.append(case)
                    ff_times.append(ff_seconds)
            nursery.cancel_scope.cancel()

    log_bytes = sum(len(encode_frame(Frame(i + 1, tuple(x)))) for i, x in enumerate(history))
    return ReconnectReport(
        minutes=minutes,
        players=players,
        hz=hz,
        inputs_per_second=inputs_per_second,
        input_bytes=input_bytes,
        seed=seed,
        frames=frames,
        inputs=sum(len(x) for x in history),
        log_bytes=log_bytes,
        catchup_rate=catchup_rate,
        redundancy_frames=config.redundancy_frames,
        fast_forward_seconds=statistics.median(ff_times),
        frame0_runs=tuple(frame0_runs),
        snapshot_runs=tuple(snapshot_runs),
    )


def run_reconnect_bench(
    *,
    minutes: float,
    players: int,
    hz: int,
    inputs_per_second: float,
    input_bytes: int,
    snapshot_bytes: int,
    seed: int,
    catchup_rate: float = RoomConfig().catchup_rate,
    repeats: int = 5,
) -> ReconnectReport:
    """Run both catch-up cases `repeats` times against one in-process room host, each run
    against a fresh room; see the module docstring. `catchup_rate` defaults to RoomConfig's."""
    if repeats < 1:
        raise ValueError("repeats must be at least 1")
    if minutes > 50:
        raise ValueError("minutes must be at most 50 (a room ends after an hour empty)")
    if minutes <= 0 or players < 1 or inputs_per_second < 0 or input_bytes < 1:
        raise ValueError("need minutes > 0, players >= 1, inputs_per_second >= 0, input_bytes >= 1")
    if input_bytes > 255:
        raise ValueError("input_bytes is at most 255 (the wire cap)")
    if not 1 <= snapshot_bytes <= MAX_SNAPSHOT_SIZE:
        raise ValueError(f"snapshot_bytes must be in [1, {MAX_SNAPSHOT_SIZE}]")
    if round(minutes * 60 * hz) < 2:
        raise ValueError("the history needs at least two frames")
    with _quiet_logs():
        return trio.run(
            functools.partial(
                _run,
                minutes=minutes,
                players=players,
                hz=hz,
                inputs_per_second=inputs_per_second,
                input_bytes=input_bytes,
                snapshot_bytes=snapshot_bytes,
                seed=seed,
                catchup_rate=catchup_rate,
                repeats=repeats,
            )
        )
