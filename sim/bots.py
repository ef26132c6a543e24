"""Headless bots: whole matches through the lobby and the rooms, as real players make them.

Each bot is a LobbyClient (log in, queue, accept) and, per match, a BattleClient over real UDP
(optionally impaired) that steps the reference game (`sim/game.py`) from the room's frames,
reports a state hash every frame and the winner at the end, and lets a `BotBrain` pick its
commands. Everything random is seeded from `BotOptions.seed`, so a run can be repeated.

Chaos on demand: `reconnect_every` pulls one playing bot's cable now and then (silent for a
few seconds, then back from a new socket, caught up by the room); `desync_slot`/`desync_at`
make one bot's state diverge at a frame, so the room's desync detection and the replay tool
can be checked against a known answer. On a desync announcement every bot of that match
writes its state at that frame to `dump_dir` for `framesync replay desync`.
"""

from __future__ import annotations

import json
import math
import random
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import trio

from battle.frames import Frame
from battle.ticket import ClientKeys
from lobby.protocol import (
    ErrorCode,
    MatchAborted,
    MatchCancelled,
    MatchEnded,
    MatchProposed,
    MatchReady,
)
from sim.battleclient import BattleClient
from sim.game import (
    MAP_SIZE,
    ORDER_ATTACK,
    ORDER_MOVE,
    Attack,
    Command,
    Game,
    Move,
    encode_command,
)
from sim.gamebot import BotBrain
from sim.impair import LinkProfile
from sim.lobbyclient import LobbyClient, LobbyError, open_lobby_client

_STATE_RING = 256
"""Frames of encoded state each bot keeps, to dump the state at an announced desync."""
_DROP_SECONDS = 3.0
"""How long a pulled cable stays pulled."""
_LATENCY_MARKS = (0.150, 0.250, 0.300)
"""Where players feel stutter, unfairness and breakage."""


@dataclass(frozen=True, slots=True)
class BotOptions:
    bots: int = 10
    matches: int = 1
    mode: str = "5v5"
    team_size: int = 5
    teams: int = 2
    region: str = "local"
    seconds: float = 60.0
    """Game length in frames' time: bots report the result after this long (or a win)."""
    seed: int = 1
    impairment: LinkProfile | None = None
    """Applied both ways on every bot's UDP link."""
    reconnect_every: float | None = None
    desync_slot: int | None = None
    desync_at: int | None = None
    dump_dir: Path | None = None
    think_every: int = 1
    """Frames between asking a bot's brain (which keeps its own reaction time)."""
    timeout: float = 600.0

    @property
    def players(self) -> int:
        return self.team_size * self.teams

    def __post_init__(self) -> None:
        if self.bots < self.players or self.bots % self.players:
            raise ValueError(
                f"--bots must be a positive multiple of {self.players} for {self.mode}"
            )
        if self.matches < 1 or self.seconds <= 0 or self.think_every < 1:
            raise ValueError("need matches >= 1, seconds > 0, think_every >= 1")
        if (self.desync_slot is None) != (self.desync_at is None):
            raise ValueError("--desync-player and --desync-at go together")
        if self.desync_slot is not None and not 0 <= self.desync_slot < self.players:
            raise ValueError(f"--desync-player must be a slot in 0..{self.players - 1}")
        if self.desync_at is not None and self.desync_at < 1:
            raise ValueError("--desync-at is a frame number, from 1")
        if self.reconnect_every is not None and self.reconnect_every <= 0:
            raise ValueError("--reconnect-every must be positive")

    @property
    def rounds(self) -> int:
        """Matches each bot plays: every round, all bots fill bots/players matches at once."""
        return math.ceil(self.matches / (self.bots // self.players))


@dataclass(frozen=True, slots=True)
class DesyncSeen:
    match_id: int
    frame: int
    slots: tuple[int, ...]


@dataclass
class BotsReport:
    bots: int
    matches_wanted: int
    matches_completed: int = 0
    matches_aborted: int = 0
    matches_cancelled: int = 0
    desyncs_injected: int = 0
    desyncs_detected: list[DesyncSeen] = field(default_factory=list)
    latency_ms: list[float] = field(default_factory=list)
    bytes_per_player_second: list[float] = field(default_factory=list)
    reconnects: int = 0
    catchup_seconds: list[float] = field(default_factory=list)
    errors: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0
    match_ids: list[int] = field(default_factory=list)
    winners: dict[int, int | None] = field(default_factory=dict)

    def error(self, what: str) -> None:
        self.errors[what] = self.errors.get(what, 0) + 1

    @property
    def ok(self) -> bool:
        injected_found = self.desyncs_injected == 0 or bool(self.desyncs_detected)
        return (
            self.matches_completed >= self.matches_wanted
            and not self.errors
            and injected_found
            and (self.desyncs_injected > 0 or not self.desyncs_detected)
        )

    def latency(self) -> dict[str, float]:
        samples = sorted(self.latency_ms)
        if not samples:
            return {"count": 0}
        out: dict[str, float] = {
            "count": len(samples),
            "p50_ms": _pct(samples, 0.50),
            "p99_ms": _pct(samples, 0.99),
            "max_ms": samples[-1],
            "avg_ms": sum(samples) / len(samples),
        }
        for mark in _LATENCY_MARKS:
            over = sum(1 for s in samples if s > mark * 1000)
            out[f"over_{int(mark * 1000)}ms_share"] = over / len(samples)
        return out

    def as_dict(self) -> dict[str, object]:
        d = asdict(self)
        d.pop("latency_ms")
        d["desyncs_detected"] = [asdict(x) for x in self.desyncs_detected]
        d["latency"] = self.latency()
        bps = sorted(self.bytes_per_player_second)
        d["bytes_per_player_second"] = {
            "median": _pct(bps, 0.5) if bps else 0.0,
            "max": bps[-1] if bps else 0.0,
        }
        d["ok"] = self.ok
        return d

    def render(self) -> str:
        lat = self.latency()
        lines = [
            f"framesync bots: {self.bots} bots, {self.matches_completed} of "
            f"{self.matches_wanted} matches completed in {self.seconds:.0f} s"
            + (f", {self.matches_aborted} aborted" if self.matches_aborted else ""),
            f"  desyncs       {len(self.desyncs_detected)} detected, {self.desyncs_injected} "
            "injected"
            + "".join(
                f"\n                match {d.match_id}: frame {d.frame}, slot(s) "
                f"{', '.join(map(str, d.slots))}"
                for d in self.desyncs_detected
            ),
        ]
        if lat.get("count"):
            lines += [
                f"  input→frame   p50 {lat['p50_ms']:.0f} ms  p99 {lat['p99_ms']:.0f} ms  "
                f"max {lat['max_ms']:.0f} ms  ({lat['count']:.0f} inputs)",
                "  over          "
                + "  ".join(
                    f"{int(m * 1000)} ms: {lat[f'over_{int(m * 1000)}ms_share']:.2%}"
                    for m in _LATENCY_MARKS
                ),
            ]
        bps = sorted(self.bytes_per_player_second)
        if bps:
            lines.append(
                f"  bandwidth     {_pct(bps, 0.5) / 1000:.1f} kB/s per player (median; both "
                f"ways), max {bps[-1] / 1000:.1f} kB/s"
            )
        if self.reconnects:
            cu = sorted(self.catchup_seconds)
            lines.append(
                f"  reconnects    {self.reconnects}; caught up in "
                + (f"{_pct(cu, 0.5):.2f} s median, {cu[-1]:.2f} s max" if cu else "n/a")
            )
        if self.errors:
            lines.append(
                "  errors        " + "; ".join(f"{n} × {k}" for k, n in sorted(self.errors.items()))
            )
        lines.append("  result        " + ("OK" if self.ok else "FAILED"))
        return "\n".join(lines)


def _leader(game: Game) -> int | None:
    """The team with the most kills when the bots call time (None on a tie)."""
    kills = game.team_kills
    best = max(kills)
    leaders = [team for team, k in enumerate(kills) if k == best]
    return leaders[0] if len(leaders) == 1 else None


def _click_again(game: Game, slot: int, rng: random.Random) -> Command | None:
    """Players click far more often than their plans change: now and then re-issue the
    current order (a move a little off, an attack on the same target)."""
    if rng.random() >= 0.15:
        return None
    hero = game.hero(slot)
    if not hero.alive:
        return None
    if hero.order == ORDER_ATTACK:
        return Attack(hero.order_target)
    if hero.order == ORDER_MOVE:
        x = min(MAP_SIZE - 1, max(0, hero.order_x + rng.randint(-60, 60)))
        y = min(MAP_SIZE - 1, max(0, hero.order_y + rng.randint(-60, 60)))
        return Move(x, y)
    return None


def _pct(sorted_samples: list[float], q: float) -> float:
    if not sorted_samples:
        return 0.0
    return sorted_samples[min(len(sorted_samples) - 1, int(q * len(sorted_samples)))]


class _Match:
    """What the bots of one match share: its clients, for chaos and desync dumps."""

    def __init__(self, match_id: int) -> None:
        self.match_id = match_id
        self.players: dict[int, _Player] = {}


class _Player:
    """One bot's side of one match: its connection, its game, its recent states."""

    def __init__(self, client: BattleClient, slot: int) -> None:
        self.client = client
        self.slot = slot
        self.game: Game | None = None
        self.states: deque[tuple[int, bytes]] = deque(maxlen=_STATE_RING)
        self.new_frames = trio.Event()
        self.pending: deque[Frame] = deque()


Progress = Callable[[str, dict[str, object]], None]


class BotRunner:
    """Runs `options.bots` bots against a lobby until every bot has played its rounds; given
    several lobby nodes, bot i logs in to node i mod n, so matches mix players of all nodes."""

    def __init__(
        self,
        lobbies: Sequence[tuple[str, int]],
        options: BotOptions,
        progress: Progress | None = None,
    ) -> None:
        if not lobbies:
            raise ValueError("no lobby address")
        self.lobbies = list(lobbies)
        self.options = options
        self.report = BotsReport(options.bots, options.matches)
        self._progress = progress or (lambda event, fields: None)
        self._rng = random.Random(options.seed)
        self._matches: dict[int, _Match] = {}
        self._dumped: set[tuple[int, int, int]] = set()

    async def run(self) -> BotsReport:
        start = trio.current_time()
        with trio.move_on_after(self.options.timeout) as timer:
            async with trio.open_nursery() as nursery:
                if self.options.reconnect_every:
                    nursery.start_soon(self._chaos)
                async with trio.open_nursery() as bots:
                    for i in range(self.options.bots):
                        bots.start_soon(self._bot, i)
                nursery.cancel_scope.cancel()
        if timer.cancelled_caught:
            self.report.error(f"timed out after {self.options.timeout:g} s")
        self.report.seconds = trio.current_time() - start
        return self.report

    # --- one bot ---------------------------------------------------------------------------------

    async def _bot(self, index: int) -> None:
        device = f"bot-{self.options.seed}-{index}"
        try:
            address = self.lobbies[index % len(self.lobbies)]
            async with open_lobby_client(*address) as lobby:
                try:
                    await lobby.register_device(device)
                except LobbyError as exc:
                    if exc.code is not ErrorCode.NAME_TAKEN:
                        raise
                    await lobby.login_device(device)
                for _ in range(self.options.rounds):
                    await self._one_match(lobby, index)
        except (LobbyError, OSError, trio.BrokenResourceError) as exc:
            self.report.error(f"bot lobby connection: {exc}")

    async def _one_match(self, lobby: LobbyClient, index: int) -> None:
        await lobby.queue(self.options.mode, self.options.region)
        while True:
            push = await lobby.next_push()
            if isinstance(push, MatchProposed):
                await lobby.accept(push.proposal_id)
            elif isinstance(push, MatchCancelled):
                self.report.matches_cancelled += 1
                if not push.requeued:
                    await lobby.queue(self.options.mode, self.options.region)
            elif isinstance(push, MatchReady):
                break
        outcome = await self._play(lobby, push, index)
        if outcome == "ended":
            self._progress("match_ended", {"match_id": push.match_id, "bot": index})

    async def _play(self, lobby: LobbyClient, ready: MatchReady, index: int) -> str:
        o = self.options
        client = BattleClient(
            ready.ticket,
            ClientKeys(ready.c2s_key, ready.s2c_key),
            (ready.room_host, ready.room_port),
            impairment=o.impairment,
            seed=o.seed * 1000 + index,
        )
        player = _Player(client, ready.slot)

        def on_frame(frame: Frame) -> None:
            player.pending.append(frame)
            player.new_frames.set()

        client.on_frame = on_frame
        match = self._matches.setdefault(ready.match_id, _Match(ready.match_id))
        match.players[ready.slot] = player
        if ready.match_id not in self.report.match_ids:
            self.report.match_ids.append(ready.match_id)
            self._progress("match_started", {"match_id": ready.match_id})
        frames_wanted = max(1, round(o.seconds * ready.tick_rate))
        outcome = "ended"
        async with trio.open_nursery() as nursery:
            await nursery.start(client.run)
            with trio.fail_after(30):
                await client.accepted.wait()
            accept = client.conn.accept
            assert accept is not None
            # The game's own rules only (no frame limit in its state), as the replay re-runs it;
            # the bots stop the match themselves after `seconds`.
            player.game = Game(accept.seed, accept.roster)
            clicks = random.Random(o.seed * 31 + index)
            brain = BotBrain(ready.slot, o.seed * 7919 + ready.match_id % 100_000 + ready.slot)
            aborted, ended = trio.Event(), trio.Event()
            nursery.start_soon(self._watch_lobby, lobby, ready.match_id, aborted, ended)
            reported = False
            decided_at = -o.think_every
            while not client.closed:
                with trio.move_on_after(1.0):
                    await player.new_frames.wait()
                player.new_frames = trio.Event()
                if aborted.is_set():
                    outcome = "aborted"
                    break
                while player.pending:
                    self._step(player, match, player.pending.popleft())
                game = player.game
                over = game.finished or game.frame >= frames_wanted
                if game.frame - decided_at >= o.think_every and not over:
                    decided_at = game.frame
                    command = brain.decide(game) or _click_again(game, ready.slot, clicks)
                    if command is not None and client.conn.state.name == "CONNECTED":
                        client.send_input(encode_command(command))
                if over and not reported:
                    winner = game.winner if game.finished else _leader(game)
                    client.report_result({"winner": winner})
                    self.report.winners[ready.match_id] = winner
                    reported = True
                self._check_desyncs(player, match)
            if outcome == "ended":  # the room closed; the lobby says how it was rated
                with trio.move_on_after(30) as wait:
                    await ended.wait()
                if wait.cancelled_caught:
                    self.report.error("no match_ended from the lobby within 30 s")
            nursery.cancel_scope.cancel()
        self._account(client, ready.tick_rate)
        if o.dump_dir is not None:  # for `framesync replay timeline --traces`
            o.dump_dir.mkdir(parents=True, exist_ok=True)
            trace = o.dump_dir / f"{ready.match_id}-slot{ready.slot}-latency.json"
            latencies = [round(s * 1000, 2) for s in client.conn.input_latencies]
            trace.write_text(json.dumps({"latency_ms": latencies}))
        if outcome == "aborted":
            self.report.matches_aborted += 1 if ready.slot == 0 else 0
        elif ready.slot == 0:
            self.report.matches_completed += 1
        return outcome

    def _step(self, player: _Player, match: _Match, frame: Frame) -> None:
        game = player.game
        assert game is not None
        if frame.number <= game.frame:
            return  # a repeat after a reconnect: frames are applied once
        game.step(frame)
        o = self.options
        if player.slot == o.desync_slot and frame.number == o.desync_at:
            game.perturb(player.slot)
            self.report.desyncs_injected += 1
            self._progress("desync_injected", {"match_id": match.match_id, "slot": player.slot})
        player.client.report_hash(frame.number, game.state_hash())
        if o.dump_dir is not None:
            player.states.append((frame.number, game.encode_state()))

    def _check_desyncs(self, player: _Player, match: _Match) -> None:
        for announced in player.client.desyncs:
            notice = announced.notice
            key = (match.match_id, notice.frame, player.slot)
            seen = DesyncSeen(match.match_id, notice.frame, tuple(notice.minority))
            if player.slot == min(match.players) and seen not in self.report.desyncs_detected:
                self.report.desyncs_detected.append(seen)
                self._progress("desync_detected", asdict(seen))
            if self.options.dump_dir is not None and key not in self._dumped:
                self._dumped.add(key)
                self._dump(player, match.match_id, notice.frame)

    def _dump(self, player: _Player, match_id: int, frame: int) -> None:
        """Write this bot's state at `frame` (kept in the ring) for the replay tool."""
        assert self.options.dump_dir is not None
        state = next((s for f, s in player.states if f == frame), None)
        if state is None:
            self.report.error("desync frame no longer in the state ring")
            return
        dump = Game.from_state(state).dump()
        self.options.dump_dir.mkdir(parents=True, exist_ok=True)
        path = self.options.dump_dir / f"{match_id}-slot{player.slot}-frame{frame}.json"
        path.write_text(
            json.dumps(
                {"match_id": match_id, "slot": player.slot, "frame": frame, "state": dump},
                sort_keys=True,
            )
        )

    async def _watch_lobby(
        self, lobby: LobbyClient, match_id: int, aborted: trio.Event, ended: trio.Event
    ) -> None:
        """The lobby's word on this match: aborted (its host died) or ended and rated."""
        while True:
            push = await lobby.next_push()
            if isinstance(push, MatchAborted) and push.match_id == match_id:
                aborted.set()
                return
            if isinstance(push, MatchEnded) and push.match_id == match_id:
                ended.set()
                return

    def _account(self, client: BattleClient, tick_rate: int) -> None:
        stats = client.stats
        self.report.latency_ms.extend(s * 1000 for s in client.conn.input_latencies)
        if stats.seconds > 0:
            self.report.bytes_per_player_second.append(
                (stats.bytes_sent + stats.bytes_received) / stats.seconds
            )
        self.report.reconnects += stats.reconnects
        self.report.catchup_seconds.extend(stats.catchup_seconds)

    # --- chaos -----------------------------------------------------------------------------------

    async def _chaos(self) -> None:
        """Every `reconnect_every` s, pull one playing bot's cable for a few seconds."""
        assert self.options.reconnect_every is not None
        while True:
            await trio.sleep(self.options.reconnect_every)
            playing = [
                m.players[slot]
                for _, m in sorted(self._matches.items())
                for slot in sorted(m.players)
                if m.players[slot].client.conn.state.name == "CONNECTED"
                and not m.players[slot].client.closed
            ]
            if not playing:
                continue
            victim = self._rng.choice(playing)
            victim.client.go_silent(True)
            self._progress("cable_pulled", {"slot": victim.slot})
            await trio.sleep(_DROP_SECONDS)
            if not victim.client.closed:
                victim.client.reconnect()
