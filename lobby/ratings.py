"""Player skill ratings: a thin, deterministic wrapper over openskill's Plackett-Luce model.

Default model parameters (mu 25, sigma 25/3, beta 25/6, tau 25/300). A new player's ordinal
(mu − 3·sigma, what the matchmaker compares and players see) is 0. The wrapper keeps openskill
types out of the rest of the lobby: ``Rating`` is a plain frozen value a store can persist.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from openskill.models import PlackettLuce

_MODEL = PlackettLuce()


@dataclass(frozen=True, slots=True)
class Rating:
    mu: float
    sigma: float

    def __post_init__(self) -> None:
        if not (math.isfinite(self.mu) and math.isfinite(self.sigma) and self.sigma > 0):
            raise ValueError(f"rating needs finite mu and sigma > 0, got {self.mu}, {self.sigma}")

    @property
    def ordinal(self) -> float:
        """The conservative skill estimate ``mu − 3·sigma``."""
        return self.mu - 3.0 * self.sigma


def default_rating() -> Rating:
    """The rating of a player who has not played yet."""
    return Rating(float(_MODEL.mu), float(_MODEL.sigma))


def rate_match(teams: Sequence[Sequence[Rating]], winner_team: int | None) -> list[list[Rating]]:
    """New ratings after a match between ``teams`` won by ``winner_team`` (None: a draw).

    The result has the shape of ``teams``. With more than two teams, every team but the winner
    shares second place.
    """
    if len(teams) < 2 or any(len(team) == 0 for team in teams):
        raise ValueError("need at least two teams, none empty")
    if winner_team is not None and not 0 <= winner_team < len(teams):
        raise ValueError(f"winner_team must be None or 0..{len(teams) - 1}, got {winner_team}")
    ranks: list[float] = [
        1.0 if winner_team is None or i == winner_team else 2.0 for i in range(len(teams))
    ]
    model_teams = [[_MODEL.rating(mu=r.mu, sigma=r.sigma) for r in team] for team in teams]
    rated = _MODEL.rate(model_teams, ranks=ranks)
    return [[Rating(float(r.mu), float(r.sigma)) for r in team] for team in rated]
