"""Load generator for `framesync bench capacity`: many synthetic clients in one process.

Each client is a real ClientConnection (real handshake, sealed datagrams, acks) on its own
non-blocking UDP socket, driven by a plain selector loop rather than trio so the generator
spends its core on the protocol, not on scheduling. Every client sends an input on most of
its ticks. Progress is reported as JSON lines on stdout: `ready` once every client is
accepted, then `done` with what the clients received. When the clients are not all in a
running room within `ready_timeout` seconds (60 by default) it gives up: one error line on
stderr and exit status 1.

Run by the benchmark: `python -m sim.loadgen SPEC_FILE` where the spec (msgpack) holds the
server address, tick rate, duration and each player's ticket and keys.
"""

from __future__ import annotations

import contextlib
import heapq
import json
import random
import resource
import selectors
import socket
import sys
import time
from pathlib import Path

import msgpack

from battle.client import ClientConnection, ClientState, FrameReceived
from battle.ticket import ClientKeys

READY_TIMEOUT = 60.0
"""Seconds every client gets to be in a running room before the run is abandoned."""


class NotReadyError(Exception):
    """Some clients never got into a running room."""


class _Player:
    __slots__ = ("conn", "frames", "next_tick", "sock")

    def __init__(self, conn: ClientConnection, sock: socket.socket, next_tick: float) -> None:
        self.conn = conn
        self.sock = sock
        self.next_tick = next_tick
        self.frames = 0


def _raise_fd_limit(needed: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < needed:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, max(needed, soft)), hard))


def run(spec: dict[str, object]) -> dict[str, object]:
    server = (str(spec["host"]), int(spec["port"]))  # type: ignore[call-overload]
    hz = int(spec["hz"])  # type: ignore[call-overload]
    seconds = float(spec["seconds"])  # type: ignore[arg-type]
    input_chance = float(spec.get("input_chance", 0.6))  # type: ignore[arg-type]
    tickets: list[tuple[bytes, bytes, bytes]] = spec["tickets"]  # type: ignore[assignment]
    ready_timeout = float(spec.get("ready_timeout", READY_TIMEOUT))  # type: ignore[arg-type]
    _raise_fd_limit(len(tickets) + 64)
    rng = random.Random(int(spec.get("seed", 1)))  # type: ignore[call-overload]
    selector = selectors.DefaultSelector()
    now = time.monotonic()
    interval = 1.0 / hz
    players: list[_Player] = []
    ticks: list[tuple[float, int]] = []
    for index, (ticket, c2s, s2c) in enumerate(tickets):
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.setblocking(False)
        sock.bind(("127.0.0.1", 0))
        conn = ClientConnection(ticket, ClientKeys(c2s, s2c), server, now, connect_timeout=30.0)
        player = _Player(conn, sock, now + rng.random() * interval)
        players.append(player)
        heapq.heappush(ticks, (player.next_tick, index))
        selector.register(sock, selectors.EVENT_READ, player)
        _flush(player)

    ready_at: float | None = None
    end = now + ready_timeout
    frames_at_ready = 0
    while True:
        now = time.monotonic()
        if now >= end:
            if ready_at is None:
                running = sum(p.conn.room_state.name == "RUNNING" for p in players)
                raise NotReadyError(
                    f"only {running} of {len(players)} clients were in a running room "
                    f"after {ready_timeout:g} s"
                )
            break
        for key, _ in selector.select(0.002):
            player = key.data
            conn = player.conn
            sock = player.sock
            while True:
                try:
                    data, addr = sock.recvfrom(2048)
                except (BlockingIOError, ConnectionRefusedError):
                    break
                conn.receive_datagram(data, addr, now)
            _flush(player)
        now = time.monotonic()
        while ticks[0][0] <= now:
            at, index = heapq.heappop(ticks)
            heapq.heappush(ticks, (at + interval, index))
            player = players[index]
            conn = player.conn
            playing = conn.state is ClientState.CONNECTED and conn.room_state.name == "RUNNING"
            if playing and rng.random() < input_chance:
                conn.send_input(rng.randbytes(8), now)
            conn.tick(now)
            _flush(player)
        if ready_at is None and all(p.conn.room_state.name == "RUNNING" for p in players):
            ready_at = now
            end = now + seconds
            frames_at_ready = sum(p.frames for p in players)
            print(json.dumps({"event": "ready", "at": ready_at}), flush=True)

    usage = resource.getrusage(resource.RUSAGE_SELF)
    behind = sum(p.conn.frames_behind for p in players)
    latencies = sorted(x for p in players for x in p.conn.input_latencies)
    connected = sum(p.conn.state is ClientState.CONNECTED for p in players)
    return {
        "event": "done",
        "at": time.monotonic(),
        "players": len(players),
        "connected": connected,
        "frames_received": sum(p.frames for p in players) - frames_at_ready,
        "frames_behind_at_end": behind,
        "input_latency_p50_ms": 1000 * latencies[len(latencies) // 2] if latencies else 0.0,
        "input_latency_p99_ms": 1000 * latencies[int(len(latencies) * 0.99)] if latencies else 0.0,
        "cpu_seconds": usage.ru_utime + usage.ru_stime,
    }


def _flush(player: _Player) -> None:
    conn = player.conn
    sendto = player.sock.sendto
    for data, addr in conn.datagrams_to_send():
        with contextlib.suppress(BlockingIOError, ConnectionRefusedError):
            sendto(data, addr)  # a full buffer loses the datagram, like the network would
    while (event := conn.next_event()) is not None:
        if isinstance(event, FrameReceived):
            player.frames += 1


def main() -> None:
    spec = msgpack.unpackb(Path(sys.argv[1]).read_bytes(), raw=False)
    try:
        report = run(spec)
    except NotReadyError as exc:
        print(f"loadgen: giving up: {exc}", file=sys.stderr, flush=True)
        sys.exit(1)
    print(json.dumps(report), flush=True)


if __name__ == "__main__":
    main()
