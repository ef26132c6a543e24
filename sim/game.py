"""The reference lockstep game: a small MOBA-like arena simulated from frames and a seed.

Every client of a lockstep match runs this simulation from the room's frames and the match
seed alone, so the rules only use integer math (sim/fixedpoint.py), iterate heroes in slot
order, never depend on dict order, hash(), the wall clock or Python's `random`, and draw
every random number from the match PRNG (sim/prng.py) in a fixed order. docs/GAME.md is the
specification; a port that follows it produces the same state hash every frame.
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

from battle.config import RosterEntry
from battle.frames import Frame
from sim.fixedpoint import step_toward
from sim.prng import Pcg32

__all__ = [
    "ATTACK_COOLDOWN",
    "ATTACK_DAMAGE",
    "ATTACK_RANGE",
    "BASES",
    "BOLT",
    "BOLT_COOLDOWN",
    "BOLT_DAMAGE",
    "BOLT_RANGE",
    "CRIT_CHANCE",
    "CRIT_MULTIPLIER",
    "FOUNTAIN_DAMAGE",
    "FOUNTAIN_HEAL",
    "FOUNTAIN_RADIUS",
    "HEAL",
    "HEAL_AMOUNT",
    "HEAL_COOLDOWN",
    "HEAL_RANGE",
    "MAP_SIZE",
    "MAX_COMMAND_BYTES",
    "MAX_HP",
    "MAX_TEAMS",
    "MISSING",
    "MOVE_SPEED",
    "ORDER_ATTACK",
    "ORDER_IDLE",
    "ORDER_MOVE",
    "RESPAWN_FRAMES",
    "Attack",
    "Cast",
    "Command",
    "FieldDiff",
    "Game",
    "Hero",
    "Move",
    "decode_command",
    "diff_dumps",
    "encode_command",
]

# --- rules (all lengths in map units, all durations in frames) -------------------------

MAP_SIZE: Final = 8000
"""The map is the square [0, MAP_SIZE] x [0, MAP_SIZE]."""
MAX_TEAMS: Final = 4
BASES: Final[tuple[tuple[int, int], ...]] = ((800, 800), (7200, 7200), (800, 7200), (7200, 800))
"""Base (spawn and fountain centre) of team 0, 1, 2, 3."""
FOUNTAIN_RADIUS: Final = 900
FOUNTAIN_HEAL: Final = 15
"""Healed per frame inside the own fountain: retreating is worth it."""
FOUNTAIN_DAMAGE: Final = 40
"""Taken per frame inside an enemy fountain: nobody camps a base."""
SPAWN_SPACING: Final = 200

MAX_HP: Final = 1000
MOVE_SPEED: Final = 30
ATTACK_RANGE: Final = 500
ATTACK_DAMAGE: Final = 50
ATTACK_COOLDOWN: Final = 12
CRIT_CHANCE: Final = (1, 5)
"""Odds of a critical basic attack, drawn from the match PRNG with `Pcg32.chance`."""
CRIT_MULTIPLIER: Final = 2

BOLT: Final = 0
"""Skill 0: a ranged nuke on one enemy hero."""
BOLT_RANGE: Final = 900
BOLT_DAMAGE: Final = 180
BOLT_COOLDOWN: Final = 90
HEAL: Final = 1
"""Skill 1: heals one allied hero (or oneself)."""
HEAL_RANGE: Final = 700
HEAL_AMOUNT: Final = 250
HEAL_COOLDOWN: Final = 180

RESPAWN_FRAMES: Final = 75

ORDER_IDLE: Final = 0
ORDER_MOVE: Final = 1
ORDER_ATTACK: Final = 2
_ORDER_NAMES: Final = ("idle", "move", "attack")

# --- commands --------------------------------------------------------------------------

MAX_COMMAND_BYTES: Final = 32
"""The room's default max_input_bytes; every encoding is far below it."""
_TAG_MOVE: Final = 1
_TAG_ATTACK: Final = 2
_TAG_CAST: Final = 3
_MOVE = struct.Struct("<BHH")
_ATTACK = struct.Struct("<BB")
_CAST = struct.Struct("<BBB")


@dataclass(frozen=True, slots=True)
class Move:
    """Walk to a point; x and y in [0, MAP_SIZE]."""

    x: int
    y: int


@dataclass(frozen=True, slots=True)
class Attack:
    """Chase an enemy hero and basic-attack it until it dies or another order comes."""

    target_slot: int


@dataclass(frozen=True, slots=True)
class Cast:
    """Cast skill BOLT (on an enemy) or HEAL (on an ally or oneself) at a hero slot."""

    skill: int
    target_slot: int


Command = Move | Attack | Cast


def encode_command(cmd: Command) -> bytes:
    """The input bytes a client sends; raises ValueError for a command no decoder accepts."""
    if isinstance(cmd, Move):
        if not (0 <= cmd.x <= MAP_SIZE and 0 <= cmd.y <= MAP_SIZE):
            raise ValueError(f"move target outside the map: {cmd}")
        return _MOVE.pack(_TAG_MOVE, cmd.x, cmd.y)
    if isinstance(cmd, Attack):
        if not 0 <= cmd.target_slot <= 255:
            raise ValueError(f"target slot must be a u8: {cmd}")
        return _ATTACK.pack(_TAG_ATTACK, cmd.target_slot)
    if cmd.skill not in (BOLT, HEAL) or not 0 <= cmd.target_slot <= 255:
        raise ValueError(f"unknown skill or bad target slot: {cmd}")
    return _CAST.pack(_TAG_CAST, cmd.skill, cmd.target_slot)


def decode_command(data: bytes) -> Command | None:
    """The command in some input bytes, or None for anything malformed (never raises).

    Exact lengths and ranges only, so each command has one encoding and
    encode_command(decode_command(b)) == b whenever decoding succeeds.
    """
    n = len(data)
    if n == 0:
        return None
    tag = data[0]
    if tag == _TAG_MOVE and n == _MOVE.size:
        _, x, y = _MOVE.unpack(data)
        if x <= MAP_SIZE and y <= MAP_SIZE:
            return Move(x, y)
    elif tag == _TAG_ATTACK and n == _ATTACK.size:
        return Attack(data[1])
    elif tag == _TAG_CAST and n == _CAST.size and data[1] in (BOLT, HEAL):
        return Cast(data[1], data[2])
    return None


# --- state -----------------------------------------------------------------------------

_MAGIC: Final = b"FSG1"
_HEADER = struct.Struct("<4sQIQBBQQQ4IB")
_HERO = struct.Struct("<BQBBIIIHBBIIHHHII")
_NO_WINNER: Final = 0xFF
_U32: Final = 1 << 32
_U64: Final = 1 << 64


class Hero:
    """One hero. Bots and tools read these; only Game.step changes them."""

    __slots__ = (
        "alive",
        "attack_cd",
        "bolt_cd",
        "deaths",
        "heal_cd",
        "hit_by",
        "hp",
        "kills",
        "order",
        "order_target",
        "order_x",
        "order_y",
        "pending_skill",
        "pending_target",
        "player_id",
        "respawn",
        "slot",
        "spawn_x",
        "spawn_y",
        "team",
        "x",
        "y",
    )

    def __init__(self, slot: int, player_id: int, team: int, spawn: tuple[int, int]) -> None:
        self.slot = slot
        self.player_id = player_id
        self.team = team
        self.spawn_x, self.spawn_y = spawn
        self.alive = True
        self.hp = MAX_HP
        self.x, self.y = spawn
        self.respawn = 0
        """Frames left until respawn while dead, else 0."""
        self.order = ORDER_IDLE
        self.order_target = 0
        self.order_x = 0
        self.order_y = 0
        """Order fields not used by the current order are 0, so the encoding is canonical."""
        self.attack_cd = 0
        self.bolt_cd = 0
        self.heal_cd = 0
        self.kills = 0
        self.deaths = 0
        # Within one step only (not state): the cast requested this frame and the last
        # damage source (a slot, or -1 - team for a fountain) for kill credit.
        self.pending_skill = -1
        self.pending_target = 0
        self.hit_by = -1

    def cooldown(self, skill: int) -> int:
        """Frames until `skill` can be cast again (0: ready)."""
        return self.bolt_cd if skill == BOLT else self.heal_cd

    def _clear_order(self) -> None:
        self.order = ORDER_IDLE
        self.order_target = self.order_x = self.order_y = 0

    def _dump(self) -> dict[str, object]:
        return {
            "slot": self.slot,
            "player_id": self.player_id,
            "team": self.team,
            "alive": self.alive,
            "hp": self.hp,
            "x": self.x,
            "y": self.y,
            "respawn": self.respawn,
            "order": _ORDER_NAMES[self.order],
            "order_target": self.order_target,
            "order_x": self.order_x,
            "order_y": self.order_y,
            "attack_cd": self.attack_cd,
            "bolt_cd": self.bolt_cd,
            "heal_cd": self.heal_cd,
            "kills": self.kills,
            "deaths": self.deaths,
        }


def _spawn_points(roster: Sequence[RosterEntry]) -> list[tuple[int, int]]:
    """Spawn of each entry (in slot order): a grid at the team base, opening toward the centre."""
    seen = [0] * MAX_TEAMS
    points = []
    half = MAP_SIZE // 2
    for entry in roster:
        k = seen[entry.team]
        seen[entry.team] = k + 1
        bx, by = BASES[entry.team]
        sx = 1 if bx < half else -1
        sy = 1 if by < half else -1
        x = bx + sx * (k % 4) * SPAWN_SPACING
        y = by + sy * (k // 4) * SPAWN_SPACING
        points.append((min(max(x, 0), MAP_SIZE), min(max(y, 0), MAP_SIZE)))
    return points


class Game:
    """One match of the reference game; advance it with step(), one frame at a time."""

    __slots__ = (
        "_fountains",
        "_index",
        "_rng",
        "bad_inputs",
        "finished",
        "frame",
        "heroes",
        "kills_to_win",
        "max_frames",
        "team_kills",
        "winner",
    )

    def __init__(
        self,
        seed: int,
        roster: Sequence[RosterEntry],
        *,
        kills_to_win: int = 10,
        max_frames: int = 0,
    ) -> None:
        if not 0 <= seed < _U64:
            raise ValueError(f"seed must be a u64, got {seed}")
        self._setup(roster, kills_to_win, max_frames)
        self._rng = Pcg32.from_seed(seed)

    def _setup(self, roster: Sequence[RosterEntry], kills_to_win: int, max_frames: int) -> None:
        if not 1 <= kills_to_win < _U32:
            raise ValueError(f"kills_to_win must be in [1, 2**32), got {kills_to_win}")
        if not 0 <= max_frames < _U64:
            raise ValueError(f"max_frames must be a u64 (0: no limit), got {max_frames}")
        entries = sorted(roster, key=lambda e: e.slot)
        if not entries:
            raise ValueError("empty roster")
        for prev, entry in zip([None, *entries], entries, strict=False):
            if not 0 <= entry.slot <= 255 or (prev is not None and prev.slot == entry.slot):
                raise ValueError(f"slots must be distinct u8 values: {entry}")
            if not 0 <= entry.team < MAX_TEAMS:
                raise ValueError(f"team must be in [0, {MAX_TEAMS}): {entry}")
            if not 0 <= entry.player_id < _U64:
                raise ValueError(f"player_id must be a u64: {entry}")
        spawns = _spawn_points(entries)
        self.heroes: tuple[Hero, ...] = tuple(
            Hero(e.slot, e.player_id, e.team, p) for e, p in zip(entries, spawns, strict=True)
        )
        """Every hero, in slot order (the order every rule iterates in)."""
        self._index = {h.slot: h for h in self.heroes}
        teams = sorted({h.team for h in self.heroes})
        self._fountains = tuple((t, *BASES[t]) for t in teams)
        self.kills_to_win = kills_to_win
        self.max_frames = max_frames
        self.frame = 0
        """Last frame applied (0: none yet)."""
        self.finished = False
        self.winner: int | None = None
        self.team_kills = [0] * MAX_TEAMS
        self.bad_inputs = 0
        """Inputs ignored because their bytes or slot were not valid."""

    def hero(self, slot: int) -> Hero:
        """The hero in `slot`; KeyError if no such slot plays."""
        return self._index[slot]

    def perturb(self, slot: int) -> None:
        """Corrupt this copy on purpose (one more death for `slot`), to exercise desync detection.

        A counter no rule reads, so the copy plays on normally, never re-converges, and
        diff_dumps names the field. Never called while playing for real.
        """
        self._index[slot].deaths += 1

    # --- simulation --------------------------------------------------------------------

    def step(self, frame: Frame) -> None:
        """Apply the next frame. Once finished, frames still count but change nothing else."""
        if frame.number != self.frame + 1:
            raise ValueError(f"expected frame {self.frame + 1}, got {frame.number}")
        self.frame = frame.number
        if self.finished:
            return
        heroes = self.heroes
        index = self._index

        # 1. Cooldowns and respawns.
        for h in heroes:
            if h.attack_cd:
                h.attack_cd -= 1
            if h.bolt_cd:
                h.bolt_cd -= 1
            if h.heal_cd:
                h.heal_cd -= 1
            if not h.alive:
                h.respawn -= 1
                if h.respawn == 0:
                    h.alive = True
                    h.hp = MAX_HP
                    h.x = h.spawn_x
                    h.y = h.spawn_y

        # 2. Inputs, in frame order; for each hero the last order and the last cast win.
        for inp in frame.inputs:
            h_or_none = index.get(inp.slot)
            cmd = decode_command(inp.data)
            if h_or_none is None or cmd is None:
                self.bad_inputs += 1
                continue
            h = h_or_none
            if not h.alive:
                continue
            if isinstance(cmd, Move):
                h.order = ORDER_MOVE
                h.order_target = 0
                h.order_x = cmd.x
                h.order_y = cmd.y
            elif isinstance(cmd, Attack):
                t = index.get(cmd.target_slot)
                if t is not None and t.alive and t.team != h.team:
                    h.order = ORDER_ATTACK
                    h.order_target = t.slot
                    h.order_x = h.order_y = 0
            else:
                h.pending_skill = cmd.skill
                h.pending_target = cmd.target_slot

        # 3. Movement.
        reach = ATTACK_RANGE * ATTACK_RANGE
        for h in heroes:
            if not h.alive or h.order == ORDER_IDLE:
                continue
            if h.order == ORDER_MOVE:
                h.x, h.y = step_toward(h.x, h.y, h.order_x, h.order_y, MOVE_SPEED)
                if h.x == h.order_x and h.y == h.order_y:
                    h._clear_order()
            else:
                t = index[h.order_target]
                dx = t.x - h.x
                dy = t.y - h.y
                if dx * dx + dy * dy > reach:
                    h.x, h.y = step_toward(h.x, h.y, t.x, t.y, MOVE_SPEED)

        # 4. Casts, then basic attacks, hero by hero. Everyone alive at the start of the
        # frame acts, even if already at 0 hp: deaths are only settled in step 6.
        rng = self._rng
        crit_num, crit_den = CRIT_CHANCE
        for h in heroes:
            if not h.alive:
                continue
            if h.pending_skill >= 0:
                skill = h.pending_skill
                h.pending_skill = -1
                t_or_none = index.get(h.pending_target)
                if t_or_none is not None and t_or_none.alive:
                    t = t_or_none
                    dx = t.x - h.x
                    dy = t.y - h.y
                    d2 = dx * dx + dy * dy
                    if skill == BOLT:
                        if h.bolt_cd == 0 and t.team != h.team and d2 <= BOLT_RANGE * BOLT_RANGE:
                            t.hp -= BOLT_DAMAGE
                            t.hit_by = h.slot
                            h.bolt_cd = BOLT_COOLDOWN
                    elif h.heal_cd == 0 and t.team == h.team and d2 <= HEAL_RANGE * HEAL_RANGE:
                        t.hp = min(t.hp + HEAL_AMOUNT, MAX_HP)
                        h.heal_cd = HEAL_COOLDOWN
            if h.order == ORDER_ATTACK and h.attack_cd == 0:
                t = index[h.order_target]
                dx = t.x - h.x
                dy = t.y - h.y
                if dx * dx + dy * dy <= reach:
                    damage = ATTACK_DAMAGE
                    if rng.chance(crit_num, crit_den):
                        damage *= CRIT_MULTIPLIER
                    t.hp -= damage
                    t.hit_by = h.slot
                    h.attack_cd = ATTACK_COOLDOWN

        # 5. Enemy fountains burn intruders.
        fountains = self._fountains
        burn = FOUNTAIN_RADIUS * FOUNTAIN_RADIUS
        for h in heroes:
            if not h.alive:
                continue
            for team, bx, by in fountains:
                if team != h.team:
                    dx = bx - h.x
                    dy = by - h.y
                    if dx * dx + dy * dy <= burn:
                        h.hp -= FOUNTAIN_DAMAGE
                        h.hit_by = -1 - team

        # 6. Deaths: the last damage source this frame gets the kill.
        for h in heroes:
            if h.alive and h.hp <= 0:
                self._kill(h)

        # 7. Own fountain heals.
        for h in heroes:
            if h.alive and h.hp < MAX_HP:
                bx, by = BASES[h.team]
                dx = bx - h.x
                dy = by - h.y
                if dx * dx + dy * dy <= burn:
                    h.hp = min(h.hp + FOUNTAIN_HEAL, MAX_HP)

        # 8. End of the match.
        kills = self.team_kills
        if max(kills) >= self.kills_to_win or self.frame == self.max_frames:
            self.finished = True
            best = max(kills)
            self.winner = kills.index(best) if kills.count(best) == 1 else None

    def _kill(self, h: Hero) -> None:
        h.alive = False
        h.hp = 0
        h.deaths += 1
        h.respawn = RESPAWN_FRAMES
        h._clear_order()
        src = h.hit_by
        if src >= 0:
            killer = self._index[src]
            killer.kills += 1
            self.team_kills[killer.team] += 1
        else:
            self.team_kills[-1 - src] += 1
        for other in self.heroes:
            if other.order == ORDER_ATTACK and other.order_target == h.slot:
                other._clear_order()

    # --- state encoding ----------------------------------------------------------------

    def encode_state(self) -> bytes:
        """Canonical little-endian bytes of the whole state; also a snapshot for from_state."""
        rng_state, rng_inc = self._rng.getstate()
        parts = [
            _HEADER.pack(
                _MAGIC,
                self.frame,
                self.kills_to_win,
                self.max_frames,
                self.finished,
                _NO_WINNER if self.winner is None else self.winner,
                rng_state,
                rng_inc,
                self.bad_inputs,
                *self.team_kills,
                len(self.heroes),
            )
        ]
        pack = _HERO.pack
        for h in self.heroes:
            parts.append(
                pack(
                    h.slot,
                    h.player_id,
                    h.team,
                    h.alive,
                    h.hp,
                    h.x,
                    h.y,
                    h.respawn,
                    h.order,
                    h.order_target,
                    h.order_x,
                    h.order_y,
                    h.attack_cd,
                    h.bolt_cd,
                    h.heal_cd,
                    h.kills,
                    h.deaths,
                )
            )
        return b"".join(parts)

    def state_hash(self) -> int:
        """u64: BLAKE2b with an 8-byte digest of encode_state(), read little-endian."""
        return int.from_bytes(
            hashlib.blake2b(self.encode_state(), digest_size=8).digest(), "little"
        )

    @classmethod
    def from_state(cls, data: bytes) -> Game:
        """Restore an encode_state() exactly; ValueError for anything else."""
        if len(data) < _HEADER.size:
            raise ValueError("state too short")
        (
            magic,
            frame,
            kills_to_win,
            max_frames,
            finished,
            winner,
            rng_state,
            rng_inc,
            bad_inputs,
            *team_kills,
            count,
        ) = _HEADER.unpack_from(data)
        if magic != _MAGIC:
            raise ValueError("not a reference game state")
        if len(data) != _HEADER.size + count * _HERO.size:
            raise ValueError("state length does not match its hero count")
        rows = [_HERO.unpack_from(data, _HEADER.size + i * _HERO.size) for i in range(count)]
        roster = [RosterEntry(r[0], r[1], r[2]) for r in rows]
        game = cls.__new__(cls)
        game._setup(roster, kills_to_win, max_frames)
        game._rng = Pcg32(0, 0)
        game._rng.setstate((rng_state, rng_inc))
        if winner != _NO_WINNER and not (finished and winner < MAX_TEAMS):
            raise ValueError("bad winner")
        game.frame = frame
        game.finished = bool(finished)
        game.winner = None if winner == _NO_WINNER else winner
        game.bad_inputs = bad_inputs
        game.team_kills = list(team_kills)
        for h, row in zip(game.heroes, rows, strict=True):
            (_, _, _, alive, hp, x, y, respawn, order, target, ox, oy, acd, bcd, hcd, k, d) = row
            if not (
                hp <= MAX_HP
                and max(x, y, ox, oy) <= MAP_SIZE
                and respawn <= RESPAWN_FRAMES
                and order < len(_ORDER_NAMES)
                and (order != ORDER_ATTACK or target in game._index)
            ):
                raise ValueError(f"hero in slot {h.slot} out of range")
            h.alive = bool(alive)
            h.hp, h.x, h.y, h.respawn = hp, x, y, respawn
            h.order, h.order_target, h.order_x, h.order_y = order, target, ox, oy
            h.attack_cd, h.bolt_cd, h.heal_cd = acd, bcd, hcd
            h.kills, h.deaths = k, d
        for h in game.heroes:
            if h.alive:
                ok = h.hp > 0 and h.respawn == 0
                if h.order == ORDER_ATTACK:
                    t = game._index[h.order_target]
                    ok = ok and t.alive and t.team != h.team
            else:
                ok = h.hp == 0 and h.respawn > 0 and h.order == ORDER_IDLE
            if not ok:
                raise ValueError(f"hero in slot {h.slot} is inconsistent")
        if game.encode_state() != data:
            # Catches every non-canonical spelling (unsorted slots, flags other than 0/1,
            # stale order fields), so equal states always have equal bytes and hashes.
            raise ValueError("state is not canonical")
        return game

    def dump(self) -> dict[str, object]:
        """The state as plain nested values, for field-level diffing (see diff_dumps)."""
        rng_state, rng_inc = self._rng.getstate()
        return {
            "frame": self.frame,
            "finished": self.finished,
            "winner": self.winner,
            "kills_to_win": self.kills_to_win,
            "max_frames": self.max_frames,
            "bad_inputs": self.bad_inputs,
            "rng": {"state": rng_state, "inc": rng_inc},
            "team_kills": list(self.team_kills),
            "heroes": [h._dump() for h in self.heroes],
        }


# --- diffing ---------------------------------------------------------------------------


class _Missing:
    __slots__ = ()

    def __repr__(self) -> str:
        return "MISSING"


MISSING: Final = _Missing()
"""Stands for a key or list element that one side of a diff does not have."""


@dataclass(frozen=True, slots=True)
class FieldDiff:
    """One leaf that differs, e.g. FieldDiff("heroes[3].hp", 640, 590)."""

    path: str
    a: object
    b: object


def diff_dumps(a: dict[str, object], b: dict[str, object]) -> list[FieldDiff]:
    """Every differing leaf of two dump()s, in path order (keys sorted, list indices ascending).

    Pinpoints where two clients' states first disagree, which a hash alone cannot.
    """
    out: list[FieldDiff] = []
    _diff("", a, b, out)
    return out


def _diff(path: str, a: object, b: object, out: list[FieldDiff]) -> None:
    if isinstance(a, dict) and isinstance(b, dict):
        for key in sorted({str(k) for k in a} | {str(k) for k in b}):
            _diff(f"{path}.{key}" if path else key, a.get(key, MISSING), b.get(key, MISSING), out)
    elif isinstance(a, list) and isinstance(b, list):
        for i in range(max(len(a), len(b))):
            _diff(
                f"{path}[{i}]",
                a[i] if i < len(a) else MISSING,
                b[i] if i < len(b) else MISSING,
                out,
            )
    elif type(a) is not type(b) or a != b:
        out.append(FieldDiff(path, a, b))
