"""A whole match on virtual time: one room host core, N clients, an impaired network.

Everything is pure and seeded, so a run is exactly reproducible from its seed. Used by the
protocol property tests and by `framesync demo` before real sockets are involved.
"""

from __future__ import annotations

import hashlib
import heapq
import itertools
import random
from collections.abc import Callable
from dataclasses import dataclass, field

from battle.client import (
    ClientConnection,
    ClientState,
    DesyncAnnounced,
    Disconnected,
    FrameReceived,
    SnapshotReceived,
)
from battle.config import RoomConfig, RosterEntry
from battle.events import Event, FrameClosed, RoomEnded
from battle.frames import Frame
from battle.messages import DesyncNotice, encode_frame
from battle.server import HostCore
from battle.ticket import issue_ticket
from sim.impair import LinkProfile
from sim.netsim import Address, SimNetwork

HOST: Address = ("127.0.0.1", 7000)
ROOM_ID = 1
MATCH_ID = 1001
UNIX_EPOCH_OFFSET = 1_800_000_000.0
"""Virtual time 0 is this unix time, so tickets carry realistic expiry values."""
_MAX_STEPS_AT_ONE_TIME = 10_000
"""A deadline that never moves forward is a bug; fail instead of spinning forever."""


@dataclass(slots=True)
class Player:
    """A scripted client: sends a random input on some of its game ticks."""

    slot: int
    address: Address
    client: ClientConnection
    rng: random.Random
    sent: list[tuple[int, bytes]] = field(default_factory=list)
    frames: list[Frame] = field(default_factory=list)
    received_at: list[float] = field(default_factory=list)
    disconnects: list[str] = field(default_factory=list)
    playing: bool = True
    """False stops input generation (e.g. while a test keeps the player silent)."""
    state: bytes = bytes(32)
    """Stand-in game state: a running digest of every frame applied."""
    snapshots: list[int] = field(default_factory=list)
    """Frames of snapshots this player loaded instead of simulating."""
    desync_at: int | None = None
    """From this frame on the player reports a wrong state hash (an injected desync)."""
    desyncs_seen: list[DesyncNotice] = field(default_factory=list)

    def apply(self, frame: Frame) -> None:
        digest = hashlib.blake2b(self.state, digest_size=32)
        digest.update(encode_frame(frame))
        self.state = digest.digest()

    def state_hash(self, frame: int) -> int:
        value = int.from_bytes(self.state[:8], "little")
        if self.desync_at is not None and frame >= self.desync_at:
            value ^= 0xDEAD
        return value


class LocalMatch:
    """Drive a HostCore and clients over a SimNetwork until a virtual time."""

    def __init__(
        self,
        *,
        seed: int,
        players: int = 10,
        config: RoomConfig | None = None,
        profile: LinkProfile | None = None,
        input_chance: float = 0.5,
        input_size: tuple[int, int] = (1, 8),
        hash_every: int = 0,
        snapshot_every: int = 0,
        snapshot_size: int = 20_000,
    ) -> None:
        """`hash_every` N: players report a state hash every N frames; `snapshot_every` M:
        slots 0 and 1 upload a snapshot (state plus filler to `snapshot_size`) every M frames
        (the room adopts one only when two players uploaded the same bytes)."""
        self.seed = seed
        self.config = config or RoomConfig()
        self.now = 0.0
        self.network = SimNetwork(seed, profile or LinkProfile.perfect())
        rng = random.Random(seed)
        key = rng.randbytes(32)
        salts = random.Random(f"{seed}:salts")
        self.host = HostCore(
            key, rng.randbytes(32), clock_offset=UNIX_EPOCH_OFFSET, entropy=salts.randbytes
        )
        roster = tuple(RosterEntry(slot, 100 + slot, slot % 2) for slot in range(players))
        self.room = self.host.create_room(
            ROOM_ID, MATCH_ID, rng.getrandbits(64), roster, self.config, 0.0
        )
        self.input_chance = input_chance
        self.input_size = input_size
        self.hash_every = hash_every
        self.snapshot_every = snapshot_every
        self.snapshot_size = snapshot_size
        self.events: list[Event] = []
        self.server_frames: list[Frame] = []
        self.closed_at: list[float] = []
        self.ended: RoomEnded | None = None
        self.event_hooks: list[Callable[[Event, float], None]] = []
        """Called with every host event and the virtual time (e.g. to write the input log)."""
        self.players: list[Player] = []
        self._actions: list[tuple[float, int, Callable[[], None]]] = []
        self._order = itertools.count()
        self._game_ticks: list[tuple[float, int]] = []
        interval = self.config.tick_interval
        for entry in roster:
            address = ("127.0.0.1", 40000 + entry.slot)
            ticket, keys = issue_ticket(
                key,
                MATCH_ID,
                ROOM_ID,
                entry.player_id,
                entry.slot,
                UNIX_EPOCH_OFFSET + 600,
                team=entry.team,
                nonce=rng.randbytes(12),
            )
            client = ClientConnection(ticket, keys, HOST, 0.0)
            player_rng = random.Random(f"{seed}:player:{entry.slot}")
            self.players.append(Player(entry.slot, address, client, player_rng))
            heapq.heappush(self._game_ticks, (player_rng.random() * interval, entry.slot))
        self._flush()

    # -- scripting -----------------------------------------------------------------------

    def at(self, when: float, action: Callable[[], None]) -> None:
        heapq.heappush(self._actions, (when, next(self._order), action))

    def stop_inputs(self, when: float) -> None:
        """From `when` on, players send no more inputs (they keep acking and heartbeating)."""

        def stop() -> None:
            for player in self.players:
                player.playing = False

        self.at(when, stop)

    def go_silent(self, slot: int, start: float, end: float) -> None:
        """Cut the player off the network for [start, end); it keeps its connection object."""
        player = self.players[slot]

        def block() -> None:
            player.playing = False
            self.network.block(player.address)

        def unblock() -> None:
            self.network.unblock(player.address)
            player.playing = True

        self.at(start, block)
        self.at(end, unblock)

    def reconnect(self, slot: int, when: float, new_port: int) -> None:
        """Replace the player's connection with a resumed one from a new address."""
        player = self.players[slot]

        def move() -> None:
            self.network.block(player.address)
            player.client = player.client.reconnect(self.now)
            player.address = ("127.0.0.1", new_port)
            player.playing = True
            self._flush()

        self.at(when, move)

    def restart(self, slot: int, when: float, new_port: int, *, prefer_snapshot: bool) -> None:
        """The player's program restarts: no frames, no state, only its reconnect ticket."""
        player = self.players[slot]

        def restart() -> None:
            old = player.client
            assert old.accept is not None
            self.network.block(player.address)
            player.client = ClientConnection(
                old.accept.reconnect_ticket,
                old.accept.reconnect_keys,
                HOST,
                self.now,
                prefer_snapshot=prefer_snapshot,
            )
            player.address = ("127.0.0.1", new_port)
            player.frames = []
            player.received_at = []
            player.state = bytes(32)
            player.playing = True
            self._flush()

        self.at(when, restart)

    # -- driving -------------------------------------------------------------------------

    def run_until(self, until: float) -> None:
        stuck = 0
        while True:
            candidates = [until]
            deadline = self.host.next_deadline()
            if deadline is not None:
                candidates.append(deadline)
            delivery = self.network.next_delivery()
            if delivery is not None:
                candidates.append(delivery)
            if self._actions:
                candidates.append(self._actions[0][0])
            if self._game_ticks:
                candidates.append(self._game_ticks[0][0])
            for player in self.players:
                d = player.client.next_deadline()
                if d is not None:
                    candidates.append(d)
            now = max(self.now, min(candidates))
            if now == self.now:
                stuck += 1
                if stuck > _MAX_STEPS_AT_ONE_TIME:
                    raise RuntimeError(f"simulation makes no progress at t={now}")
            else:
                stuck = 0
            self.now = now
            self._step(now)
            if now >= until:
                return

    def _step(self, now: float) -> None:
        by_address = {p.address: p for p in self.players}
        for delivery in self.network.deliver_due(now):
            if delivery.dst == HOST:
                self.host.receive_datagram(delivery.data, delivery.src, now)
            else:
                player = by_address.get(delivery.dst)
                if player is not None:
                    player.client.receive_datagram(delivery.data, delivery.src, now)
        while self._actions and self._actions[0][0] <= now:
            heapq.heappop(self._actions)[2]()
        self.host.tick(now)
        interval = self.config.tick_interval
        while self._game_ticks and self._game_ticks[0][0] <= now:
            at, slot = heapq.heappop(self._game_ticks)
            self._game_tick(self.players[slot], now)
            heapq.heappush(self._game_ticks, (at + interval, slot))
        for player in self.players:
            player.client.tick(now)
        self._flush()

    def _game_tick(self, player: Player, now: float) -> None:
        client = player.client
        if not player.playing or client.state is not ClientState.CONNECTED:
            return
        if client.room_state.name != "RUNNING":
            return
        if player.rng.random() >= self.input_chance:
            return
        size = player.rng.randint(*self.input_size)
        data = player.rng.randbytes(size)
        seq = client.send_input(data, now)
        player.sent.append((seq, data))

    def _flush(self) -> None:
        now = self.now
        for data, addr in self.host.datagrams_to_send():
            self.network.send(HOST, addr, data, now)
        while (event := self.host.next_event()) is not None:
            self.events.append(event)
            for hook in self.event_hooks:
                hook(event, now)
            if isinstance(event, FrameClosed):
                self.server_frames.append(event.frame)
                self.closed_at.append(event.at)
            elif isinstance(event, RoomEnded):
                self.ended = event
        for player in self.players:
            client = player.client
            for data, addr in client.datagrams_to_send():
                self.network.send(player.address, addr, data, now)
            while (cevent := client.next_event()) is not None:
                if isinstance(cevent, FrameReceived):
                    player.frames.append(cevent.frame)
                    player.received_at.append(cevent.at)
                    self._after_frame(player, cevent.frame.number)
                elif isinstance(cevent, SnapshotReceived):
                    player.state = cevent.data[:32]
                    player.snapshots.append(cevent.frame)
                elif isinstance(cevent, DesyncAnnounced):
                    player.desyncs_seen.append(cevent.notice)
                elif isinstance(cevent, Disconnected):
                    player.disconnects.append(cevent.reason)

    def _after_frame(self, player: Player, number: int) -> None:
        player.apply(player.frames[-1])
        client = player.client
        if self.hash_every and number % self.hash_every == 0:
            client.report_hash(number, player.state_hash(number))
        if player.slot in (0, 1) and self.snapshot_every and number % self.snapshot_every == 0:
            filler = random.Random(f"{self.seed}:snapshot:{number}").randbytes(self.snapshot_size)
            data = player.state + filler
            client.upload_snapshot(number, player.state_hash(number), data, self.now)

    # -- summaries -----------------------------------------------------------------------

    def frame_latencies(self) -> list[float]:
        """Close-to-receipt delay of every frame at every player, in seconds."""
        out: list[float] = []
        for player in self.players:
            for frame, at in zip(player.frames, player.received_at, strict=True):
                out.append(at - self.closed_at[frame.number - 1])
        return out
