"""The same input/frame stream carried over KCP, on virtual time, for `framesync bench loss`.

A yardstick, not a protocol of ours: each client sends each input as one KCP message to the
server over its own conversation; the server closes a frame every tick with the inputs it
holds (the room's ordering and per-player cap) and sends it to every client as one KCP message.
KCP runs in its "turbo" settings (nodelay 1, interval 10 ms, fast resend after 2 duplicate
acks, no congestion window, windows of 1024 segments) and every message is flushed as soon
as it is queued, so the only wait KCP adds is its own loss recovery. Needs the optional `kcp`
package (`pip install framesync[bench]`).
"""

from __future__ import annotations

import heapq
import random
import struct
from dataclasses import dataclass, field

from kcp.extension import KCP

from battle.frames import Frame, FrameInput
from battle.messages import decode_frame, encode_frame
from sim.impair import LinkProfile
from sim.netsim import Address, SimNetwork

HOST: Address = ("127.0.0.1", 7000)
_U32 = struct.Struct("<I")


@dataclass(frozen=True, slots=True)
class KcpSettings:
    """KCP's fastest documented mode, with windows large enough never to stall a match."""

    nodelay: bool = True
    interval_ms: int = 10
    resend: int = 2
    no_congestion_window: bool = True
    window: int = 1024
    mtu: int = 1200


class KcpEndpoint:
    """One end of one KCP conversation; what it emits is collected for the driver to send."""

    __slots__ = ("_kcp", "outbox")

    def __init__(self, conv: int, settings: KcpSettings, now_ms: int) -> None:
        self.outbox: list[bytes] = []
        self._kcp = KCP(
            conv,
            max_transmission=settings.mtu,
            no_delay=settings.nodelay,
            update_interval=settings.interval_ms,
            resend_count=settings.resend,
            no_congestion_control=settings.no_congestion_window,
            send_window_size=settings.window,
            receive_window_size=settings.window,
        )
        self._kcp.include_outbound_handler(self._out)
        self._kcp.update(now_ms)

    def _out(self, _kcp: KCP, data: bytes) -> None:
        self.outbox.append(bytes(data))

    def send(self, message: bytes, now_ms: int) -> None:
        """Queue one message and flush at once (no write delay)."""
        self._kcp.update(now_ms)
        self._kcp.enqueue(message)
        self._kcp.flush()

    def receive(self, datagram: bytes, now_ms: int) -> list[bytes]:
        """Feed one datagram; returns the messages now deliverable in order."""
        self._kcp.update(now_ms)  # KCP timestamps acks with its last update time
        self._kcp.receive(datagram)
        return [bytes(m) for m in self._kcp.get_all_received()]

    def update(self, now_ms: int) -> None:
        """KCP's timer: acks, fast resends and timeouts go out on its interval grid."""
        self._kcp.update(now_ms)


@dataclass(slots=True)
class _KcpPlayer:
    slot: int
    address: Address
    rng: random.Random
    client: KcpEndpoint
    server: KcpEndpoint
    next_seq: int = 1
    created: dict[int, float] = field(default_factory=dict)
    queued: list[FrameInput] = field(default_factory=list)
    """Server side: inputs received and not yet put in a frame."""
    sent: int = 0


@dataclass(slots=True)
class KcpRun:
    """What one KCP match measured."""

    latencies: list[float]
    inputs_sent: int
    bytes_up: int
    bytes_down: int
    datagrams_up: int
    datagrams_down: int
    frames_closed: int


def _ms(now: float) -> int:
    return round(now * 1000.0)


def run_kcp_match(
    *,
    seed: int,
    players: int,
    tick_rate: int,
    profile: LinkProfile,
    start: float,
    seconds: float,
    drain: float,
    input_chance: float,
    input_size: tuple[int, int],
    tick_phase: float = 0.0,
    max_inputs_per_frame: int = 3,
    settings: KcpSettings | None = None,
) -> KcpRun:
    """Inputs from `start` for `seconds`, then `drain` seconds more; bytes count while inputs
    are made. Frames close at `tick_phase` plus whole tick intervals.

    Inputs are drawn as the framesync match draws them (same per-player seeds, game-tick
    phases and chance per tick), and the network has the same seed and addresses, so each
    link has the same random stream (packet fates differ: the protocols send different
    packets).
    """
    settings = settings or KcpSettings()
    interval = 1.0 / tick_rate
    network = SimNetwork(seed, profile)
    stop = start + seconds
    roster: list[_KcpPlayer] = []
    by_address: dict[Address, _KcpPlayer] = {}
    events: list[tuple[float, int, int]] = []
    """(time, kind, slot): kind 0 game tick, 1 server tick, 2 KCP timers."""
    for slot in range(players):
        rng = random.Random(f"{seed}:player:{slot}")
        conv = 0x1000 + slot
        player = _KcpPlayer(
            slot,
            ("127.0.0.1", 40000 + slot),
            rng,
            KcpEndpoint(conv, settings, 0),
            KcpEndpoint(conv, settings, 0),
        )
        roster.append(player)
        by_address[player.address] = player
        heapq.heappush(events, (rng.random() * interval, 0, slot))
    heapq.heappush(events, (tick_phase if tick_phase > 0 else interval, 1, -1))
    heapq.heappush(events, (0.0, 2, 0))
    run = KcpRun([], 0, 0, 0, 0, 0, 0)
    frames = 0
    end = stop + drain

    def flush(now: float) -> None:
        counted = start <= now < stop
        for player in roster:
            for data in player.client.outbox:
                network.send(player.address, HOST, data, now)
                if counted:
                    run.bytes_up += len(data)
                    run.datagrams_up += 1
            player.client.outbox.clear()
            for data in player.server.outbox:
                network.send(HOST, player.address, data, now)
                if counted:
                    run.bytes_down += len(data)
                    run.datagrams_down += 1
            player.server.outbox.clear()

    def close_frame(now: float) -> None:
        nonlocal frames
        frames += 1
        taken: list[FrameInput] = []
        for player in roster:
            taken.extend(player.queued[:max_inputs_per_frame])
            del player.queued[:max_inputs_per_frame]
        message = _U32.pack(frames) + encode_frame(Frame(frames, tuple(taken)))
        for player in roster:
            player.server.send(message, _ms(now))

    def on_frame(player: _KcpPlayer, message: bytes, now: float) -> None:
        (number,) = _U32.unpack_from(message)
        frame = decode_frame(number, message[_U32.size :])
        for item in frame.inputs:
            if item.slot == player.slot:
                created = player.created.pop(item.seq, None)
                if created is not None:
                    run.latencies.append(now - created)

    while True:
        arrival = network.next_delivery()
        at = events[0][0]
        now = min(at, arrival) if arrival is not None else at
        if now > end:
            break
        if arrival is not None and arrival <= at:
            for delivery in network.deliver_due(now):
                if delivery.dst == HOST:
                    player = by_address[delivery.src]
                    for message in player.server.receive(delivery.data, _ms(now)):
                        (seq,) = _U32.unpack_from(message)
                        data = message[_U32.size :]
                        player.queued.append(FrameInput(player.slot, seq, data))
                else:
                    player = by_address[delivery.dst]
                    for message in player.client.receive(delivery.data, _ms(now)):
                        on_frame(player, message, now)
        else:
            _, kind, slot = heapq.heappop(events)
            if kind == 0:
                player = roster[slot]
                if start <= now < stop and player.rng.random() < input_chance:
                    data = player.rng.randbytes(player.rng.randint(*input_size))
                    seq = player.next_seq
                    player.next_seq += 1
                    player.created[seq] = now
                    player.sent += 1
                    player.client.send(_U32.pack(seq) + data, _ms(now))
                heapq.heappush(events, (at + interval, 0, slot))
            elif kind == 1:
                close_frame(now)
                heapq.heappush(events, (at + interval, 1, -1))
            else:
                for player in roster:
                    player.client.update(_ms(now))
                    player.server.update(_ms(now))
                step = slot + 1  # counted in whole intervals, so the grid never drifts
                heapq.heappush(events, (step * settings.interval_ms / 1000.0, 2, step))
        flush(now)
    run.inputs_sent = sum(p.sent for p in roster)
    run.frames_closed = frames
    return run
