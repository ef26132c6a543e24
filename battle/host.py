"""The room host process: the thin trio shell around HostCore.

One UDP socket and one scheduler for every room. The hot path follows the architecture's
budget: after the socket becomes readable it is drained with non-blocking receives (bounded
per wake-up, so a flood from one address cannot starve the ticker), replies go out with
non-blocking `sendto` and only a full kernel buffer makes the shell await, and one ticker
task runs every due room on absolute deadlines. Events from the core become input-log
records, control-channel messages and log lines here, and nowhere else.
"""

from __future__ import annotations

import contextlib
import math
import os
import socket
import time
from collections import Counter, deque
from dataclasses import dataclass, field
from pathlib import Path

import msgpack
import structlog
import trio

from battle.control import (
    ControlMessage,
    CreateRoom,
    Rejected,
    RejectReason,
    RoomCreated,
    RoomEvent,
    RoomEventKind,
    RoomResult,
)
from battle.events import (
    CatchUpFinished,
    CatchUpStarted,
    DesyncDetected,
    Event,
    FrameClosed,
    PlayerConnected,
    PlayerDisconnected,
    ResultDecided,
    RoomEnded,
    RoomStarted,
    SnapshotAgreed,
)
from battle.matchlog import MatchLog
from battle.messages import RoomState
from battle.metrics import LatenessHistogram
from battle.results import ResultOutbox
from battle.room import Room
from battle.server import HostCore
from battle.session import Address

RESULT_ACK_WAIT = 5.0
"""Seconds a draining host waits for the lobby to acknowledge its last results."""
RECV_BATCH = 256
"""Datagrams handled per wake-up before yielding to the ticker."""
SOCKET_BUFFER = 4 * 1024 * 1024
MAX_SEND_BACKLOG = 50_000
_log = structlog.get_logger("framesync.host")


@dataclass(slots=True)
class RoomRecord:
    """What the shell keeps beside a core room: its log file and its logger."""

    room: Room
    matchlog: MatchLog
    log: structlog.typing.FilteringBoundLogger
    path: Path
    result: ResultDecided | None = None


@dataclass(slots=True)
class HostSettings:
    host_id: str
    bind: Address = ("127.0.0.1", 0)
    public_host: str | None = None
    """Address clients are told to use; defaults to the bound host."""
    data_dir: Path = Path("data")
    capacity: int = 200
    """Rooms this process accepts; CREATE_ROOM beyond it is rejected as full."""
    drain_timeout: float = 600.0
    coalesce: float = 0.001
    """Seconds the receive loop waits for datagrams to gather after a small batch."""


@dataclass(slots=True)
class ControlOutbox:
    """Messages for the lobby, buffered while it is unreachable (events bounded, oldest first)."""

    queue: deque[ControlMessage] = field(default_factory=lambda: deque(maxlen=10_000))
    wakeup: trio.Event = field(default_factory=trio.Event)

    def put(self, message: ControlMessage) -> None:
        self.queue.append(message)
        self.wakeup.set()


class RoomHost:
    """Owns the socket, the core, the ticker and each room's input log."""

    def __init__(self, settings: HostSettings, *, cookie_secret: bytes | None = None) -> None:
        self.settings = settings
        self.data_dir = settings.data_dir
        (self.data_dir / "matches").mkdir(parents=True, exist_ok=True)
        self.outbox = ResultOutbox(self.data_dir / "results")
        self.control = ControlOutbox()
        self.core: HostCore | None = None
        self.records: dict[int, RoomRecord] = {}
        self.lateness = LatenessHistogram()
        self.lateness_samples: deque[tuple[float, float]] = deque(maxlen=500_000)
        """(monotonic time, seconds) per ticker wake-up, for benchmarks."""
        self.draining = False
        self.exit_code = 0
        self.lobby_connected = False
        """Set by the control client; drain waits for result acks only while it is."""
        self.metrics_snapshot: tuple[Counter[str], Counter[str], dict[str, float]] = (
            Counter(),
            Counter(),
            {},
        )
        """Copied in the trio thread for the metrics thread, which must not iterate live state."""
        self.coalesce = settings.coalesce
        self.address: Address = settings.bind
        self._cookie_secret = cookie_secret or os.urandom(32)
        self._sock: socket.socket | None = None
        self._wakeup = trio.Event()
        self._send_backlog: deque[tuple[bytes, Address]] = deque()
        self._ended: set[int] = set()
        """Rooms that ended and close once their last sessions are done."""
        self._send_ready = trio.Event()
        self._done = trio.Event()
        self._drain_requested = trio.Event()
        self._drain_reason = "shutdown"
        self._log = _log.bind(host_id=settings.host_id)

    # -- lifecycle -----------------------------------------------------------------------

    def _open_socket(self) -> socket.socket:
        family = socket.AF_INET6 if ":" in self.settings.bind[0] else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_DGRAM)
        for option in (socket.SO_RCVBUF, socket.SO_SNDBUF):
            with contextlib.suppress(OSError):  # platform limits: keep the default
                sock.setsockopt(socket.SOL_SOCKET, option, SOCKET_BUFFER)
        sock.setblocking(False)
        sock.bind(self.settings.bind)
        return sock

    @property
    def public_address(self) -> Address:
        return (self.settings.public_host or self.address[0], self.address[1])

    async def run(
        self, *, task_status: trio.TaskStatus[Address] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Serve until `drain()` completes; reports the bound UDP address when ready."""
        self._sock = self._open_socket()
        self.address = self._sock.getsockname()[:2]
        clock_offset = time.time() - trio.current_time()
        self.core = HostCore(os.urandom(32), self._cookie_secret, clock_offset=clock_offset)
        self._log.info("room_host_started", udp=f"{self.address[0]}:{self.address[1]}")
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._receive_loop)
                nursery.start_soon(self._tick_loop)
                nursery.start_soon(self._send_loop)
                nursery.start_soon(self._flush_loop)
                nursery.start_soon(self._drain_when_asked)
                task_status.started(self.address)
                await self._done.wait()
                nursery.cancel_scope.cancel()
        finally:
            self._close_all_logs()
            self._sock.close()
            self._log.info("room_host_stopped")

    async def drain(self, reason: str = "shutdown") -> None:
        """Stop taking rooms, let running ones finish (up to the drain timeout), then stop."""
        if self.draining:
            return
        self.draining = True
        self._log.info("draining", reason=reason, rooms=len(self.records))
        with trio.move_on_after(self.settings.drain_timeout):
            while self.records:
                await trio.sleep(0.1)
        now = trio.current_time()
        for record in list(self.records.values()):
            record.room.end("shutdown", now)
        self._process(now)
        self._wakeup.set()
        # Rooms linger to hand out their last frames; give them that long.
        linger = max((r.room.config.end_linger for r in self.records.values()), default=0.0)
        with trio.move_on_after(linger + 0.5):
            while self.records:
                await trio.sleep(0.05)
        # Results are safe on disk either way, but a host being retired should hand them
        # over: while the lobby is connected, wait a little for its acknowledgements.
        with trio.move_on_after(RESULT_ACK_WAIT):
            while self.outbox.pending and self.lobby_connected:
                await trio.sleep(0.05)
        if self.outbox.pending:
            self._log.warning("results_left_on_disk", matches=sorted(self.outbox.pending))
        self._done.set()

    def request_drain(self, reason: str) -> None:
        """Ask for a drain from sync code (a signal handler, a control message); the drain
        itself runs as a task of this host, so its errors surface like any other."""
        if not self._drain_requested.is_set():
            self._drain_reason = reason
            self._drain_requested.set()

    async def _drain_when_asked(self) -> None:
        await self._drain_requested.wait()
        await self.drain(self._drain_reason)

    def stop_now(self) -> None:
        """Stop without draining (a second signal): logs are flushed, results stay on disk."""
        self.exit_code = 1
        self._done.set()

    async def wait_stopped(self) -> None:
        await self._done.wait()

    # -- rooms ---------------------------------------------------------------------------

    def end_room(self, room_id: int, match_id: int, reason: str) -> bool:
        """End a room the lobby will not use (END_ROOM); False unless it names a running room
        of that match. Its players are told, its log ends with "cancelled", and its result
        (no winner) still goes to the lobby like any other."""
        record = self.records.get(room_id)
        if record is None or record.room.match_id != match_id:
            return False
        if record.room.state is RoomState.ENDED:
            return False
        now = trio.current_time()
        record.log.info("room_cancelled", reason=reason)
        record.room.end("cancelled", now)
        self._process(now)
        self._wakeup.set()
        return True

    def create_room(self, request: CreateRoom) -> ControlMessage:
        """Handle CREATE_ROOM: idempotent for the same match, rejected when it cannot be run."""
        core = self.core
        assert core is not None
        existing = self.records.get(request.room_id)
        if existing is not None:
            if existing.room.match_id == request.match_id:
                host, port = self.public_address
                return RoomCreated(request.request_id, request.room_id, host, port)
            return Rejected(request.request_id, request.room_id, RejectReason.DUPLICATE)
        if self._log_path(request.match_id, request.room_id).exists():
            # This match already ran here: a second room would append to its replay file.
            return Rejected(request.request_id, request.room_id, RejectReason.DUPLICATE)
        if self.draining:
            return Rejected(request.request_id, request.room_id, RejectReason.DRAINING)
        if len(self.records) >= self.settings.capacity:
            return Rejected(request.request_id, request.room_id, RejectReason.FULL)
        try:
            config = request.room_config()
        except Exception as exc:  # the codec already validated; this is belt and braces
            self._log.warning("bad_room_config", error=str(exc))
            return Rejected(request.request_id, request.room_id, RejectReason.BAD_REQUEST)
        now = trio.current_time()
        try:
            room = core.create_room(
                request.room_id,
                request.match_id,
                request.seed,
                request.roster,
                config,
                now,
                ticket_key=request.ticket_key,
            )
        except ValueError as exc:
            self._log.warning("room_rejected", room_id=request.room_id, error=str(exc))
            return Rejected(request.request_id, request.room_id, RejectReason.BAD_REQUEST)
        try:
            self.records[request.room_id] = self._open_log(room)
        except OSError as exc:  # disk full, permissions: this host cannot keep the replay
            core.remove_room(request.room_id)
            self._log.error("room_log_unavailable", room_id=request.room_id, error=str(exc))
            return Rejected(request.request_id, request.room_id, RejectReason.UNAVAILABLE)
        self._wakeup.set()
        host, port = self.public_address
        return RoomCreated(request.request_id, request.room_id, host, port)

    def _log_path(self, match_id: int, room_id: int) -> Path:
        return self.data_dir / "matches" / f"{match_id}-{room_id}.fslog"

    def _open_log(self, room: Room) -> RoomRecord:
        path = self._log_path(room.match_id, room.room_id)
        f = open(path, "xb")  # noqa: SIM115 - lives as long as the room; never appends
        try:
            matchlog = MatchLog(f, room, trio.current_time(), start_time=time.time())
        except BaseException:
            f.close()
            raise
        log = self._log.bind(room_id=room.room_id, match_id=room.match_id)
        log.info(
            "room_created", players=len(room.roster), tick_rate=room.config.tick_rate, log=str(path)
        )
        return RoomRecord(room, matchlog, log, path)

    def _close_all_logs(self) -> None:
        now = trio.current_time()
        for record in self.records.values():
            record.matchlog.close(now)

    # -- hot path ------------------------------------------------------------------------

    async def _receive_loop(self) -> None:
        sock = self._sock
        core = self.core
        assert sock is not None and core is not None
        recvfrom = sock.recvfrom
        receive = core.receive_datagram
        stats = core.stats
        while True:
            await trio.lowlevel.wait_readable(sock)
            now = trio.current_time()
            before = core.next_deadline()
            handled = 0
            while handled < RECV_BATCH:
                try:
                    data, addr = recvfrom(2048)
                except BlockingIOError:
                    break
                except OSError:  # e.g. ICMP port unreachable surfacing on a UDP socket
                    core.drops["socket_error"] += 1
                    continue
                handled += 1
                receive(data, addr[:2], now)
            stats["receive_wakeups"] += 1
            self._flush()
            after = core.next_deadline()
            if after is not None and (before is None or after < before):
                self._wakeup.set()
            self._process(now)
            if handled < RECV_BATCH and self.coalesce > 0:
                # A light trickle: let datagrams gather briefly instead of waking for each
                # one (interrupt coalescing; costs at most `coalesce` of added latency).
                await trio.sleep(self.coalesce)
            else:
                await trio.lowlevel.checkpoint()

    def _flush(self) -> None:
        """Send what the core produced now; park the rest if the kernel buffer is full."""
        core = self.core
        sock = self._sock
        assert core is not None and sock is not None
        out = core.datagrams_to_send()
        if not out:
            return
        if self._send_backlog:
            self._backlog(out)
            return
        sendto = sock.sendto
        for i, (data, addr) in enumerate(out):
            try:
                sendto(data, addr)
            except BlockingIOError:
                self._backlog(out[i:])
                return
            except OSError:
                core.drops["send_error"] += 1

    def _backlog(self, items: list[tuple[bytes, Address]]) -> None:
        backlog = self._send_backlog
        room = MAX_SEND_BACKLOG - len(backlog)
        if len(items) > room:
            assert self.core is not None
            self.core.drops["send_backlog_full"] += len(items) - max(room, 0)
            items = items[: max(room, 0)]
        backlog.extend(items)
        self._send_ready.set()

    async def _send_loop(self) -> None:
        sock = self._sock
        assert sock is not None
        while True:
            await self._send_ready.wait()
            self._send_ready = trio.Event()
            backlog = self._send_backlog
            while backlog:
                data, addr = backlog[0]
                try:
                    sock.sendto(data, addr)
                except BlockingIOError:
                    await trio.lowlevel.wait_writable(sock)
                    continue
                except OSError:
                    assert self.core is not None
                    self.core.drops["send_error"] += 1
                backlog.popleft()

    async def _tick_loop(self) -> None:
        core = self.core
        assert core is not None
        while True:
            deadline = core.next_deadline()
            with trio.move_on_at(deadline if deadline is not None else math.inf):
                await self._wakeup.wait()
            self._wakeup = trio.Event()
            now = trio.current_time()
            core.tick(now)
            self._flush()
            self._process(now)
            if deadline is not None and now >= deadline:
                # Measured after the work: the last room ticked in this wake-up waited this long.
                late = trio.current_time() - deadline
                self.lateness.observe(late)
                self.lateness_samples.append((time.monotonic(), late))

    async def _flush_loop(self) -> None:
        """Input logs reach the OS at least once a second even when a room is idle; the
        metrics snapshot is refreshed on the same beat."""
        while True:
            await trio.sleep(0.25)
            now = trio.current_time()
            for record in self.records.values():
                record.matchlog.maybe_flush(now)
            self._snapshot_metrics()

    def _snapshot_metrics(self) -> None:
        core = self.core
        assert core is not None
        rooms, players = self.load()
        gauges = {
            "rooms": float(rooms),
            "players_connected": float(players),
            "catch_ups_in_progress": float(
                core.stats["catch_ups_started"] - core.stats["catch_ups_finished"]
            ),
            "results_pending": float(len(self.outbox.pending)),
        }
        self.metrics_snapshot = (Counter(core.stats), Counter(core.drops), gauges)

    # -- events --------------------------------------------------------------------------

    def _process(self, now: float) -> None:
        core = self.core
        assert core is not None
        while (event := core.next_event()) is not None:
            record = self.records.get(event.room_id)
            if record is None:
                continue
            try:
                self._on_event(record, event, now)
            except Exception:
                # A bug (or a disk error) handling one room's event must not take down every
                # room on this host: count it, log it, and end that room only.
                core.stats["shell_errors"] += 1
                record.log.exception("room_event_failed", core_event=type(event).__name__)
                if record.room.state is not RoomState.ENDED:
                    record.room.end("internal_error", now)
        if not self._ended:
            return
        for room_id in [rid for rid in self._ended if self.records[rid].room.finished]:
            self._ended.discard(room_id)
            record = self.records.pop(room_id)
            core.remove_room(room_id)
            record.matchlog.close(now)
            record.log.info("room_closed")

    def _on_event(self, record: RoomRecord, event: Event, now: float) -> None:
        """Input log first (it is the replay file), then the lobby and the log lines."""
        record.matchlog.on_event(event, now)
        if isinstance(event, FrameClosed):
            return
        room = record.room
        log = record.log
        if isinstance(event, PlayerConnected):
            log.info(
                "player_connected",
                slot=event.slot,
                frame=event.frame,
                reconnected=event.reconnected,
            )
            self._room_event(
                room, RoomEventKind.PLAYER_CONNECTED, event.frame, event.slot, event.player_id
            )
        elif isinstance(event, PlayerDisconnected):
            log.info("player_disconnected", slot=event.slot, reason=event.reason)
            self._room_event(
                room,
                RoomEventKind.PLAYER_DISCONNECTED,
                event.frame,
                event.slot,
                event.player_id,
                event.reason,
            )
        elif isinstance(event, RoomStarted):
            log.info("room_started", players=list(event.players))
            self._room_event(room, RoomEventKind.STARTED, 0)
        elif isinstance(event, DesyncDetected):
            log.warning(
                "desync",
                frame=event.frame,
                minority=list(event.minority),
                tied=event.majority_hash is None,
            )
            self._room_event(
                room, RoomEventKind.DESYNC, event.frame, detail=",".join(map(str, event.minority))
            )
        elif isinstance(event, ResultDecided):
            record.result = event
            log.info(
                "result",
                result=msgpack.unpackb(event.result, raw=False),
                dissenters=list(event.dissenters),
                how=event.reason,
            )
        elif isinstance(event, RoomEnded):
            self._on_room_ended(record, event)
        elif isinstance(event, CatchUpStarted):
            log.info(
                "catch_up_started",
                slot=event.slot,
                behind=event.last_frame - event.frame_ack,
                snapshot=event.snapshot_frame,
            )
        elif isinstance(event, CatchUpFinished):
            log.info(
                "catch_up_finished",
                slot=event.slot,
                frames=event.frames,
                seconds=round(event.seconds, 3),
            )
        elif isinstance(event, SnapshotAgreed):
            log.info("snapshot_agreed", frame=event.frame, size=event.size, slot=event.slot)

    def _on_room_ended(self, record: RoomRecord, event: RoomEnded) -> None:
        room = record.room
        self._ended.add(room.room_id)
        decided = record.result
        result = RoomResult(
            match_id=room.match_id,
            room_id=room.room_id,
            result=msgpack.unpackb(decided.result, raw=False) if decided else {},
            dissenters=decided.dissenters if decided else (),
            frames=event.frame,
            reason=event.reason,
            desyncs=room.desyncs_found,
        )
        self.outbox.add(result)
        self.control.put(result)
        self._room_event(room, RoomEventKind.ENDED, event.frame, detail=event.reason)
        record.log.info("room_ended", frame=event.frame, reason=event.reason)

    def _room_event(
        self,
        room: Room,
        kind: RoomEventKind,
        frame: int,
        slot: int | None = None,
        player_id: int | None = None,
        detail: str = "",
    ) -> None:
        self.control.put(
            RoomEvent(room.room_id, room.match_id, kind, frame, slot, player_id, detail)
        )

    # -- load ----------------------------------------------------------------------------

    def load(self) -> tuple[int, int]:
        """(rooms, connected players), reported to the lobby in every heartbeat."""
        players = sum(len(r.room.connected_slots()) for r in self.records.values())
        return len(self.records), players
