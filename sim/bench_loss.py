"""`framesync bench loss`: input→frame echo latency under loss, framesync beside KCP.

The question: with 10 players at 15 Hz, how long does a player wait from creating an input
until the frame holding it comes back, at RTT 30/50/70 ms and random loss 1–10 % each way
(plus one burst-loss case)? Goal: no echo over 300 ms up to 10 % loss, and a p99 below that of
the same stream carried over KCP in turbo mode.

How it is measured, on virtual time (seeded, no sockets, no wall clock: the figures are the
protocols', not the machine's):

* framesync: the real room host core and ten real client connections (`sim.localmatch`) over
  the seeded in-memory network (`sim.netsim`). A player creates an input with probability
  `input_chance` on each of its game ticks (15 Hz, its own phase) and hands it to its client
  at once; the latency is what the client itself records: from that moment until it receives
  the frame holding the input.
* KCP: the same players, inputs and network seed (`sim.kcplink`): each input is one KCP
  message to the server, the server closes a frame every tick at the same phase as the
  framesync room did and sends it to every client as one KCP message. Skipped, and said so,
  when the optional `kcp` package is not installed.
* Link: each direction delays by RTT / 2 plus uniform jitter in [0, RTT / 7] and loses packets
  at random (or in Gilbert-Elliott bursts for the burst case).
* Inputs are created for `seconds` (after a 1 s warm-up that covers the handshake), then the
  run goes on 3 s so every input can be echoed. Bytes are every datagram either protocol
  sends during those `seconds`, both directions, plus 28 bytes of IPv4 and UDP header each,
  divided by players and seconds. Each cell runs `seeds` matches; samples are pooled.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Sequence
from dataclasses import asdict, dataclass

from battle import __version__
from battle.config import RoomConfig
from sim.impair import GilbertElliott, LinkProfile
from sim.localmatch import HOST, LocalMatch

UDP_IP_HEADER = 28
"""IPv4 (20) and UDP (8) header bytes counted on top of every datagram."""
WARMUP = 1.0
DRAIN = 3.0
THRESHOLD = 0.3
RTTS_MS = (30, 50, 70)
LOSSES_PCT = (1, 3, 5, 7, 10)


@dataclass(frozen=True, slots=True)
class LossCase:
    rtt_ms: float
    loss_pct: float
    burst: float | None = None
    """Mean burst length in packets (Gilbert-Elliott) when the loss comes in bursts."""

    @property
    def label(self) -> str:
        kind = f"burst {self.burst:g}" if self.burst else "random"
        return f"{self.rtt_ms:g} ms, {self.loss_pct:g}% {kind}"

    def profile(self) -> LinkProfile:
        rtt = self.rtt_ms / 1000
        loss = self.loss_pct / 100
        if self.burst:
            burst = GilbertElliott.from_loss(loss, self.burst)
            return LinkProfile.from_rtt(rtt, jitter=rtt / 7, burst_loss=burst)
        return LinkProfile.from_rtt(rtt, jitter=rtt / 7, loss=loss)


def default_cases() -> list[LossCase]:
    cases = [LossCase(rtt, loss) for rtt in RTTS_MS for loss in LOSSES_PCT]
    cases.append(LossCase(50, 5, burst=3.0))
    return cases


@dataclass(frozen=True, slots=True)
class Measured:
    """One protocol in one cell, every seed pooled."""

    inputs_sent: int
    samples: int
    """Inputs echoed back to their sender (each input's latency once)."""
    avg_ms: float
    p99_ms: float
    max_ms: float
    over_300: int
    bytes_per_player_s: float
    datagrams_per_player_s: float

    @property
    def over_300_pct(self) -> float:
        return 100.0 * self.over_300 / max(1, self.samples)


@dataclass(frozen=True, slots=True)
class Cell:
    case: LossCase
    framesync: Measured
    kcp: Measured | None

    @property
    def meets_300(self) -> bool:
        return self.framesync.over_300 == 0

    @property
    def beats_kcp(self) -> bool | None:
        return None if self.kcp is None else self.framesync.p99_ms < self.kcp.p99_ms


def _measure(
    latencies: Sequence[float], inputs: int, octets: int, datagrams: int, per: float
) -> Measured:
    ordered = sorted(latencies)
    n = len(ordered)
    return Measured(
        inputs_sent=inputs,
        samples=n,
        avg_ms=1000 * sum(ordered) / n if n else 0.0,
        p99_ms=1000 * ordered[min(n - 1, int(n * 0.99))] if n else 0.0,
        max_ms=1000 * ordered[-1] if n else 0.0,
        over_300=sum(1 for x in ordered if x > THRESHOLD),
        bytes_per_player_s=(octets + UDP_IP_HEADER * datagrams) / per,
        datagrams_per_player_s=datagrams / per,
    )


class _MeteredMatch(LocalMatch):
    """A LocalMatch that counts every datagram put on the network inside a time window."""

    def __init__(
        self,
        window: tuple[float, float],
        *,
        seed: int,
        players: int,
        config: RoomConfig,
        profile: LinkProfile,
        input_chance: float,
    ) -> None:
        self.window = window
        self.octets = 0
        self.datagrams = 0
        super().__init__(
            seed=seed, players=players, config=config, profile=profile, input_chance=input_chance
        )

    def _flush(self) -> None:
        now = self.now
        counted = self.window[0] <= now < self.window[1]
        network = self.network
        for data, addr in self.host.datagrams_to_send():
            network.send(HOST, addr, data, now)
            if counted:
                self.octets += len(data)
                self.datagrams += 1
        for player in self.players:
            for data, addr in player.client.datagrams_to_send():
                network.send(player.address, addr, data, now)
                if counted:
                    self.octets += len(data)
                    self.datagrams += 1
        super()._flush()


@dataclass(frozen=True, slots=True)
class _Run:
    latencies: list[float]
    inputs: int
    octets: int
    datagrams: int
    tick_phase: float


def _framesync_run(
    case: LossCase, seed: int, players: int, hz: int, seconds: float, input_chance: float
) -> _Run:
    end = WARMUP + seconds
    config = RoomConfig(tick_rate=hz, max_duration=end + DRAIN + 5.0)
    match = _MeteredMatch(
        (WARMUP, end),
        seed=seed,
        players=players,
        config=config,
        profile=case.profile(),
        input_chance=input_chance,
    )
    for player in match.players:
        player.playing = False

    def start() -> None:
        for player in match.players:
            player.playing = True

    match.at(WARMUP, start)
    match.stop_inputs(end)
    match.run_until(end + DRAIN)
    latencies = [x for p in match.players for x in p.client.input_latencies]
    interval = config.tick_interval
    phase = match.closed_at[0] % interval if match.closed_at else 0.0
    inputs = sum(len(p.sent) for p in match.players)
    return _Run(latencies, inputs, match.octets, match.datagrams, phase)


def kcp_available() -> bool:
    return importlib.util.find_spec("kcp") is not None


def run_cell(
    case: LossCase,
    *,
    seeds: Sequence[int],
    players: int = 10,
    hz: int = 15,
    seconds: float = 60.0,
    input_chance: float = 0.5,
    with_kcp: bool = True,
) -> Cell:
    per = players * seconds * len(seeds)
    fs_lat: list[float] = []
    fs = [0, 0, 0]
    kcp_lat: list[float] = []
    kc = [0, 0, 0]
    use_kcp = with_kcp and kcp_available()
    for seed in seeds:
        run = _framesync_run(case, seed, players, hz, seconds, input_chance)
        fs_lat += run.latencies
        fs[0] += run.inputs
        fs[1] += run.octets
        fs[2] += run.datagrams
        if use_kcp:
            from sim.kcplink import run_kcp_match  # noqa: PLC0415 - optional dependency

            krun = run_kcp_match(
                seed=seed,
                players=players,
                tick_rate=hz,
                profile=case.profile(),
                start=WARMUP,
                seconds=seconds,
                drain=DRAIN,
                input_chance=input_chance,
                input_size=(1, 8),
                tick_phase=run.tick_phase,
            )
            kcp_lat += krun.latencies
            kc[0] += krun.inputs_sent
            kc[1] += krun.bytes_up + krun.bytes_down
            kc[2] += krun.datagrams_up + krun.datagrams_down
    framesync = _measure(fs_lat, fs[0], fs[1], fs[2], per)
    kcp = _measure(kcp_lat, kc[0], kc[1], kc[2], per) if use_kcp else None
    return Cell(case, framesync, kcp)


@dataclass(frozen=True, slots=True)
class LossReport:
    players: int
    hz: int
    seconds: float
    seeds: tuple[int, ...]
    input_chance: float
    kcp: bool
    cells: tuple[Cell, ...]

    @property
    def all_echoed(self) -> bool:
        return all(
            m.samples == m.inputs_sent > 0
            for c in self.cells
            for m in (c.framesync, c.kcp)
            if m is not None
        )

    def as_dict(self) -> dict[str, object]:
        out = asdict(self)
        for cell, plain in zip(self.cells, out["cells"], strict=True):
            plain["meets_300"] = cell.meets_300
            plain["beats_kcp"] = cell.beats_kcp
        out["all_echoed"] = self.all_echoed
        return out

    def render(self) -> str:
        seeds = ",".join(map(str, self.seeds))
        lines = [
            f"framesync {__version__} bench loss: {self.players} players, {self.hz} Hz, "
            f"{self.seconds:g} s × seeds {seeds}, input chance {self.input_chance:g} per tick",
            "  virtual time; jitter RTT/7 each way; bytes include 28 B IPv4+UDP per datagram",
            "  latency = input created → frame holding it received by the same client",
        ]
        if not self.kcp:
            lines.append("  KCP skipped: the optional `kcp` package is not installed")
        head = f"  {'case':<22}{'':>3}{'avg ms':>8}{'p99 ms':>8}{'max ms':>8}{'>300ms':>12}"
        lines.append(head + f"{'B/s/pl':>8}{'dg/s/pl':>9}  goals")
        for cell in self.cells:
            for name, m in (("fs", cell.framesync), ("kcp", cell.kcp)):
                if m is None:
                    continue
                goals = ""
                if name == "fs":
                    goals = "300 ok" if cell.meets_300 else "300 MISSED"
                    if cell.beats_kcp is not None:
                        goals += ", p99<kcp" if cell.beats_kcp else ", p99 NOT < kcp"
                label = cell.case.label if name == "fs" else ""
                over = f"{m.over_300_pct:.2f}% ({m.over_300})"
                lines.append(
                    f"  {label:<22}{name:>3}{m.avg_ms:>8.1f}{m.p99_ms:>8.1f}{m.max_ms:>8.1f}"
                    f"{over:>12}{m.bytes_per_player_s:>8.0f}{m.datagrams_per_player_s:>9.1f}"
                    f"  {goals}".rstrip()
                )
        lines.append("  every input echoed: " + ("yes" if self.all_echoed else "NO"))
        return "\n".join(lines)


def run_loss_bench(
    *,
    seconds: float = 60.0,
    seeds: int = 5,
    seed: int = 1,
    players: int = 10,
    hz: int = 15,
    input_chance: float = 0.5,
    cases: Sequence[LossCase] | None = None,
    with_kcp: bool = True,
) -> LossReport:
    if not 1.0 <= seconds <= 3600.0 or not 1 <= seeds <= 100 or not 1 <= players <= 32:
        raise ValueError("need 1 <= seconds <= 3600, 1 <= seeds <= 100, 1 <= players <= 32")
    if not 0.0 < input_chance <= 1.0:
        raise ValueError("input chance must be in (0, 1]")
    seed_list = tuple(range(seed, seed + seeds))
    use_kcp = with_kcp and kcp_available()
    cells = tuple(
        run_cell(
            case,
            seeds=seed_list,
            players=players,
            hz=hz,
            seconds=seconds,
            input_chance=input_chance,
            with_kcp=use_kcp,
        )
        for case in (cases if cases is not None else default_cases())
    )
    return LossReport(players, hz, seconds, seed_list, input_chance, use_kcp, cells)
