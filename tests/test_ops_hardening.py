"""Operational hardening: control-client backoff and queueing, bounded room configs, durable
result files, and benchmark drivers that cannot hang.

Control-client tests run a real ControlClient against an in-test TCP listener; the backoff
ones use trio's mock clock (autojumping only after real idleness, so loopback I/O is never
skipped over) to watch many virtual seconds of reconnects in a moment of real time.
"""

from __future__ import annotations

import ast
import itertools
import math
import os
import socket
import stat
import sys
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path

import msgpack
import pytest
import structlog
import trio
import trio.testing
from hostkit import ROOT, control_server

from battle.config import RoomConfig
from battle.control import (
    ControlDecoder,
    ControlMessage,
    ControlProtocolError,
    Register,
    Registered,
    Rejected,
    RejectReason,
    RoomEvent,
    RoomEventKind,
    RoomResult,
    encode_message,
    room_config_from_plain,
)
from battle.host import HostSettings, RoomHost
from battle.hostcontrol import ControlClient
from battle.results import ResultOutbox
from battle.ticket import issue_ticket
from sim.bench_capacity import run_loadgen


@pytest.fixture
def lazy_clock() -> trio.testing.MockClock:
    """Virtual time that jumps only once everything has been idle for 50 ms of real time."""
    return trio.testing.MockClock(autojump_threshold=0.05)


def _host(tmp_path: Path) -> RoomHost:
    # Not started: the control client only needs its settings, load, records and queues.
    return RoomHost(HostSettings(host_id="ops-test", bind=("127.0.0.1", 9), data_dir=tmp_path))


def _event(frame: int, detail: str = "") -> RoomEvent:
    return RoomEvent(1, 2, RoomEventKind.STARTED, frame, detail=detail)


async def _connection_times(
    tmp_path: Path, handle: Callable[[trio.SocketStream], object], seconds: float
) -> list[float]:
    """Run a ControlClient for `seconds` against a listener that passes each accepted
    connection to `handle` (an async function); returns when each connection arrived."""
    listener = (await trio.open_tcp_listeners(0, host="127.0.0.1"))[0]
    port = listener.socket.getsockname()[1]
    arrivals: list[float] = []
    client = ControlClient(_host(tmp_path), ("127.0.0.1", port), seed=7)

    async def accept() -> None:
        async with listener:
            while True:
                stream = await listener.accept()
                arrivals.append(trio.current_time())
                async with stream:
                    await handle(stream)  # type: ignore[misc]

    async with trio.open_nursery() as nursery:
        nursery.start_soon(accept)
        nursery.start_soon(client.run)
        await trio.sleep(seconds)
        nursery.cancel_scope.cancel()
    return arrivals


# --- 1. backoff is reset by registering, not by connecting -------------------------------


async def test_lobby_that_accepts_and_closes_gets_growing_backoff(
    tmp_path: Path, lazy_clock: trio.testing.MockClock
) -> None:
    async def close_at_once(stream: trio.SocketStream) -> None:
        pass

    arrivals = await _connection_times(tmp_path, close_at_once, 40.0)
    gaps = [b - a for a, b in itertools.pairwise(arrivals)]
    # Capped exponential backoff with jitter in [0.5, 1]: 0.25–0.5, 0.5–1, 1–2, ... so each
    # gap is at least the one before; at a fixed 0.25–0.5 s there would be ~100 connections.
    assert 5 <= len(arrivals) <= 9, gaps
    assert all(later >= earlier * 0.99 for earlier, later in itertools.pairwise(gaps))
    assert gaps[-1] >= 4.0, gaps


async def test_backoff_restarts_after_a_registered_session(
    tmp_path: Path, lazy_clock: trio.testing.MockClock
) -> None:
    async def register_then_close(stream: trio.SocketStream) -> None:
        decoder = ControlDecoder()
        while (message := decoder.next_message()) is None:
            data = await stream.receive_some(65536)
            if not data:
                return
            decoder.feed(data)
        assert isinstance(message, Register)
        await stream.send_all(encode_message(Registered("lobby", 1.0, 10.0)))

    arrivals = await _connection_times(tmp_path, register_then_close, 10.0)
    gaps = [b - a for a, b in itertools.pairwise(arrivals)]
    assert len(arrivals) >= 15, gaps
    assert max(gaps) <= 0.6, gaps


# --- 2. the event queue: pop before sending ----------------------------------------------


async def test_forward_does_not_lose_a_message_evicted_during_a_send(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    host = _host(tmp_path)
    host.control.queue = deque(maxlen=2)
    a, b, c = _event(1), _event(2), _event(3)
    host.control.put(a)
    host.control.put(b)
    sent: list[ControlMessage] = []

    async def send(message: ControlMessage) -> None:
        if message is a:
            host.control.put(c)  # arrives while `a` is in flight and fills the queue
        await trio.sleep(0.01)
        sent.append(message)

    client = ControlClient(host, ("127.0.0.1", 1))
    async with trio.open_nursery() as nursery:
        nursery.start_soon(client._forward, send)
        with trio.fail_after(5):
            while len(sent) < 3:
                await trio.sleep(0.01)
        nursery.cancel_scope.cancel()
    assert sent == [a, b, c]
    assert not host.control.queue


@pytest.mark.parametrize("fill", [False, True], ids=["room-left", "queue-filled"])
async def test_forward_puts_a_failed_message_back(tmp_path: Path, fill: bool) -> None:
    host = _host(tmp_path)
    host.control.queue = deque(maxlen=2)
    a, b, c = _event(1), _event(2), _event(3)
    host.control.put(a)
    host.control.put(b)

    async def send(message: ControlMessage) -> None:
        if fill:
            host.control.put(c)
        await trio.sleep(0)
        raise trio.BrokenResourceError("lobby went away")

    client = ControlClient(host, ("127.0.0.1", 1))
    with pytest.raises(trio.BrokenResourceError):
        await client._forward(send)
    # With room, the unsent message goes back in front; if the queue filled up meanwhile it
    # is the oldest, which is what the bound drops first.
    assert list(host.control.queue) == ([b, c] if fill else [a, b])


# --- 3. an invalid message is dropped, not fatal -----------------------------------------


async def test_invalid_control_message_is_dropped_and_the_session_survives(
    tmp_path: Path,
) -> None:
    host = _host(tmp_path)
    bad = _event(1, detail="x" * 5000)  # over the control channel's text limit
    with pytest.raises(ValueError, match="detail"):
        encode_message(bad)
    good = _event(2, detail="fine")
    with structlog.testing.capture_logs() as logs:
        client = ControlClient(host, ("127.0.0.1", 1))
        async with control_server() as lobby:
            client.lobby = ("127.0.0.1", lobby.port)
            async with trio.open_nursery() as nursery:
                nursery.start_soon(client.run)
                await lobby.wait_ready(timeout=10)
                host.control.put(bad)
                host.control.put(good)
                await lobby.wait_for(lambda: good in lobby.events, timeout=10)
                assert client.connected and client.registrations == 1
                nursery.cancel_scope.cancel()
    assert bad not in lobby.events
    invalid = [e for e in logs if e["event"] == "control_message_invalid"]
    assert len(invalid) == 1 and invalid[0]["type"] == "RoomEvent", invalid


# --- 4. RejectReason.UNAVAILABLE ---------------------------------------------------------


def test_unavailable_reject_reason_round_trips() -> None:
    assert RejectReason.UNAVAILABLE.value == "unavailable"
    decoder = ControlDecoder()
    decoder.feed(encode_message(Rejected(5, 6, RejectReason.UNAVAILABLE)))
    assert decoder.next_message() == Rejected(5, 6, RejectReason.UNAVAILABLE)
    doc = (ROOT / "docs" / "PROTOCOL.md").read_text(encoding="utf-8")
    assert "`bad_request`, `unavailable` |" in doc and "- `unavailable`:" in doc


# --- 5. room config bounds ---------------------------------------------------------------

# field: (lowest allowed, highest allowed, just below, just above); None where no value is.
_EDGES: dict[str, tuple[float | None, float, float, float]] = {
    "heartbeat_interval": (0.01, 5.0, 0.009, 5.001),
    "disconnect_timeout": (0.5, 600.0, 0.49, 600.5),
    "start_timeout": (None, 3600.0, 0.0, 3600.5),
    "max_duration": (None, 86400.0, 0.0, 86400.5),
    "empty_timeout": (None, 3600.0, 0.0, 3600.5),
    "end_linger": (0.0, 60.0, -0.1, 60.1),
    "redundancy_window": (0.05, 2.0, 0.049, 2.01),
    "input_backlog": (0, 1000, -1, 1001),
    "max_inputs_per_frame": (1, 64, 0, 65),
    "hash_timeout": (None, 60.0, 0.0, 60.1),
    "result_timeout": (None, 600.0, 0.0, 600.1),
    "catchup_rate": (10_000.0, 100_000_000.0, 9_999.0, 100_000_001.0),
}


@pytest.mark.parametrize("name", sorted(_EDGES))
def test_room_config_bounds(name: str) -> None:
    low, high, below, above = _EDGES[name]
    for ok in (high, low if low is not None else high / 1e6):
        RoomConfig(**{name: ok})  # type: ignore[arg-type]
    bad_values: list[float] = [below, above]
    if isinstance(high, float):
        bad_values += [math.nan, math.inf]
    for bad in bad_values:
        with pytest.raises(ValueError, match=name):
            RoomConfig(**{name: bad})  # type: ignore[arg-type]
    # From the lobby the same limits make a create_room a bad request.
    with pytest.raises(ControlProtocolError, match=name):
        room_config_from_plain({name: above})


def test_default_room_config_is_within_bounds() -> None:
    RoomConfig()


# --- 6. result files: directory fsync, leftovers removed ---------------------------------


def _result(match_id: int) -> RoomResult:
    return RoomResult(match_id, 1, {"winner": 1}, (), 100, "finished", 0)


def test_result_outbox_fsyncs_the_directory_after_the_rename(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    outbox = ResultOutbox(tmp_path / "results")
    synced: list[tuple[bool, bool]] = []  # (is a directory, the result file existed then)
    real_fsync = os.fsync

    def fsync(fd: int) -> None:
        synced.append(
            (stat.S_ISDIR(os.fstat(fd).st_mode), (tmp_path / "results" / "7.result").exists())
        )
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    outbox.add(_result(7))
    assert (False, False) in synced  # the file's data, before the rename
    assert (True, True) in synced  # the directory entry, after it


def test_result_outbox_removes_leftover_tmp_files(tmp_path: Path) -> None:
    directory = tmp_path / "results"
    ResultOutbox(directory).add(_result(3))
    (directory / "4.tmp").write_bytes(encode_message(_result(4))[:10])  # a crash mid-write
    outbox = ResultOutbox(directory)
    assert sorted(p.name for p in directory.iterdir()) == ["3.result"]
    assert list(outbox.pending) == [3]


# --- 7. benchmark drivers give up -------------------------------------------------------


async def test_loadgen_gives_up_when_clients_never_run(tmp_path: Path) -> None:
    silent = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)  # a "host" that never answers
    silent.bind(("127.0.0.1", 0))
    try:
        ticket, keys = issue_ticket(bytes(32), 1, 1, 100, 0, time.time() + 60)
        spec = {
            "host": "127.0.0.1",
            "port": silent.getsockname()[1],
            "hz": 15,
            "seconds": 1.0,
            "tickets": [(ticket, keys.c2s, keys.s2c)],
            "ready_timeout": 0.5,
        }
        spec_path = tmp_path / "spec.msgpack"
        spec_path.write_bytes(msgpack.packb(spec, use_bin_type=True))
        with trio.fail_after(30):
            done = await trio.run_process(
                [sys.executable, "-m", "sim.loadgen", str(spec_path)],
                cwd=ROOT,
                capture_stdout=True,
                capture_stderr=True,
                check=False,
            )
    finally:
        silent.close()
    assert done.returncode == 1
    assert done.stdout == b""
    assert b"giving up: only 0 of 1 clients were in a running room" in done.stderr


def _script(tmp_path: Path, body: str) -> list[str]:
    """A stand-in load generator that records its pid, then runs `body`."""
    pid_file = tmp_path / "pid"
    code = f"import json, os, sys, time\nopen({str(pid_file)!r}, 'w').write(str(os.getpid()))\n"
    return [sys.executable, "-c", code + body]


def _assert_gone(tmp_path: Path) -> None:
    pid = int((tmp_path / "pid").read_text())
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)


@pytest.mark.parametrize(
    "body",
    [
        "time.sleep(600)",
        "print(json.dumps({'event': 'ready'}), flush=True)\ntime.sleep(600)",
    ],
    ids=["never-ready", "never-done"],
)
async def test_bench_loadgen_lines_have_deadlines_and_the_process_is_killed(
    tmp_path: Path, body: str
) -> None:
    lines = 0

    def on_line() -> None:
        nonlocal lines
        lines += 1

    started = time.monotonic()
    with pytest.raises(trio.TooSlowError):
        await run_loadgen(_script(tmp_path, body), on_line, 2.0, 0.5)
    assert time.monotonic() - started < 20
    assert lines == body.count("ready")
    _assert_gone(tmp_path)


async def test_bench_loadgen_reports_both_lines(tmp_path: Path) -> None:
    body = "print(json.dumps({'event': 'ready'}))\nprint(json.dumps({'event': 'done', 'n': 1}))"
    lines = 0

    def on_line() -> None:
        nonlocal lines
        lines += 1

    with trio.fail_after(20):
        ready, done = await run_loadgen(_script(tmp_path, body), on_line, 10.0, 10.0)
    assert ready == {"event": "ready"} and done == {"event": "done", "n": 1}
    assert lines == 2


async def test_bench_loadgen_that_exits_early_is_an_error(tmp_path: Path) -> None:
    with trio.fail_after(20), pytest.raises(RuntimeError, match="before reporting 'ready'"):
        await run_loadgen(_script(tmp_path, "sys.exit(3)"), lambda: None, 10.0, 10.0)


# --- 8. docstrings sit under their constants ---------------------------------------------


def _constant_docs(path: Path) -> dict[str, str]:
    body = ast.parse(path.read_text(encoding="utf-8")).body
    docs: dict[str, str] = {}
    for node, following in itertools.pairwise(body):
        if (
            isinstance(node, ast.Assign)
            and isinstance(node.targets[0], ast.Name)
            and isinstance(following, ast.Expr)
            and isinstance(following.value, ast.Constant)
            and isinstance(following.value.value, str)
        ):
            docs[node.targets[0].id] = following.value.value
    return docs


def test_localmatch_constant_docstrings() -> None:
    docs = _constant_docs(ROOT / "sim" / "localmatch.py")
    assert "unix time" in docs["UNIX_EPOCH_OFFSET"]
    assert "deadline" in docs["_MAX_STEPS_AT_ONE_TIME"]
