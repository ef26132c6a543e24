"""What a room's result does: the ratings it settles, and how each player sees it. Pure.

Ratings change only for a result the room decided by vote (reason "result") naming a valid
winning team, or an explicit draw (``"winner": nil``); anything else is recorded as no
contest.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from battle.control import RoomResult
from lobby.ratings import Rating, rate_match
from lobby.store import MatchRecord


@dataclass(frozen=True, slots=True)
class Settlement:
    """What a room's result does to ratings and history (`settle`)."""

    teams: tuple[tuple[int, ...], ...]
    before: dict[int, Rating]
    after: dict[int, Rating]
    stored: dict[str, Any]
    """The result as recorded: reason, rated, winner, frames, desyncs and the room's own."""

    @property
    def rated(self) -> bool:
        return bool(self.stored["rated"])


def settle(record: MatchRecord, msg: RoomResult, before: Mapping[int, Rating]) -> Settlement:
    """Rate a finished match from its players' ratings before it (pure: the shell calls it
    between reading the ratings and recording the result)."""
    team_count = max(e.team for e in record.roster) + 1
    teams = tuple(
        team
        for team in (
            tuple(e.player_id for e in record.roster if e.team == t) for t in range(team_count)
        )
        if team
    )
    start = {pid: before[pid] for team in teams for pid in team}
    winner = msg.result.get("winner", "absent")
    rated = (
        msg.reason == "result"
        and len(teams) >= 2
        and (winner is None or (type(winner) is int and 0 <= winner < len(teams)))
    )
    after: dict[int, Rating] = dict(start)
    if rated:
        won = winner if isinstance(winner, int) else None
        new = rate_match([[start[p] for p in team] for team in teams], won)
        after = {
            pid: r
            for team, rs in zip(teams, new, strict=True)
            for pid, r in zip(team, rs, strict=True)
        }
    stored = {
        "reason": msg.reason,
        "rated": rated,
        "winner": winner if rated else None,
        "frames": msg.frames,
        "desyncs": msg.desyncs,
        "room": msg.result,
    }
    return Settlement(teams, start, after, stored)


def outcome(result: dict[str, object], team: int) -> str:
    """The result as one player sees it: win, loss, draw or no_contest."""
    if not result.get("rated"):
        return "no_contest"
    winner = result.get("winner")
    if winner is None:
        return "draw"
    return "win" if winner == team else "loss"
