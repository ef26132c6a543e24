"""A bot brain for the reference game, so soak runs and tests have matches worth replaying.

Bots are players, not part of the simulation: they only read the game state and send
commands like any client, so they may use their own seeded `random.Random`. A brain with
the same slot and seed, fed the same states, makes the same decisions.
"""

from __future__ import annotations

import random

from sim.fixedpoint import dist_sq, within
from sim.game import (
    ATTACK_RANGE,
    BASES,
    BOLT,
    BOLT_RANGE,
    FOUNTAIN_RADIUS,
    HEAL,
    HEAL_RANGE,
    MAP_SIZE,
    MAX_HP,
    ORDER_ATTACK,
    ORDER_MOVE,
    Attack,
    Cast,
    Command,
    Game,
    Hero,
    Move,
)

__all__ = ["BotBrain"]

_FOUNTAIN_MARGIN = 300
"""Enemies this close to their fountain are left alone: chasing them there is a losing trade."""


class BotBrain:
    """Plays one hero: fight the nearest enemy, use skills when ready, retreat when low.

    Decides every 2-5 frames (like a human's reaction time) and returns None when it has
    nothing new to say, so its input stream stays small.
    """

    __slots__ = ("_next_frame", "_rally", "_retreat_at", "_retreating", "_rng", "slot")

    def __init__(self, slot: int, seed: int) -> None:
        self.slot = slot
        self._rng = random.Random(seed)
        # Per-bot temperament, so a team does not move as one block.
        self._retreat_at = self._rng.randint(20, 35) * MAX_HP // 100
        half = MAP_SIZE // 2
        self._rally = (
            half + self._rng.randint(-400, 400),
            half + self._rng.randint(-400, 400),
        )
        self._retreating = False
        self._next_frame = 0

    def decide(self, game: Game) -> Command | None:
        """The command to send after the game's current frame, or None."""
        if game.finished or game.frame < self._next_frame:
            return None
        self._next_frame = game.frame + self._rng.randint(2, 5)
        try:
            me = game.hero(self.slot)
        except KeyError:
            return None
        if not me.alive:
            self._retreating = False
            return None
        return self._choose(game, me)

    def _choose(self, game: Game, me: Hero) -> Command | None:
        bx, by = BASES[me.team]
        if me.hp <= self._retreat_at:
            self._retreating = True
        elif me.hp >= MAX_HP * 9 // 10:
            self._retreating = False
        if self._retreating:
            if me.heal_cd == 0:
                return Cast(HEAL, me.slot)
            return self._move(me, bx, by)

        if me.heal_cd == 0:
            hurt = [
                h
                for h in game.heroes
                if h.alive
                and h.team == me.team
                and h.hp < MAX_HP // 2
                and within(me.x, me.y, h.x, h.y, HEAL_RANGE)
            ]
            if hurt:
                return Cast(HEAL, min(hurt, key=lambda h: (h.hp, h.slot)).slot)

        enemies = [h for h in game.heroes if h.alive and h.team != me.team and not _sheltered(h)]
        if not enemies:
            return self._move(me, *self._rally)
        enemies.sort(key=lambda h: (dist_sq(me.x, me.y, h.x, h.y), h.slot))
        target = enemies[0]
        if len(enemies) > 1 and self._rng.randrange(5) == 0:
            # Now and then focus the weaker of the two closest.
            target = min(enemies[:2], key=lambda h: (h.hp, h.slot))
        if me.bolt_cd == 0 and within(me.x, me.y, target.x, target.y, BOLT_RANGE):
            return Cast(BOLT, target.slot)
        if me.order == ORDER_ATTACK and me.order_target == target.slot:
            return None
        if within(me.x, me.y, target.x, target.y, ATTACK_RANGE * 4):
            return Attack(target.slot)
        return self._move(me, *self._rally)

    @staticmethod
    def _move(me: Hero, x: int, y: int) -> Command | None:
        if (me.x, me.y) == (x, y) or (
            me.order == ORDER_MOVE and (me.order_x, me.order_y) == (x, y)
        ):
            return None
        return Move(x, y)


def _sheltered(h: Hero) -> bool:
    bx, by = BASES[h.team]
    return within(h.x, h.y, bx, by, FOUNTAIN_RADIUS + _FOUNTAIN_MARGIN)
