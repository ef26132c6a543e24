"""Per-direction link impairment: delay, jitter, random and bursty loss, duplication, reordering.

Pure and seeded: every random draw comes from the `random.Random` an `Impairment` owns, so a
simulated match replays exactly from its seed and thousands of them can run without a clock.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass


def _check_probability(name: str, value: float) -> None:
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"{name} must be a probability in [0, 1], got {value!r}")


def _check_duration(name: str, value: float) -> None:
    if not (math.isfinite(value) and value >= 0.0):
        raise ValueError(f"{name} must be a finite number of seconds >= 0, got {value!r}")


@dataclass(frozen=True, slots=True)
class GilbertElliott:
    """Two-state Markov loss: real links lose packets in runs, which hurts redundancy schemes
    far more than the same average loss spread independently.

    The state steps once per packet, before that packet's fate is drawn. With the default
    loss probabilities a burst lasts 1 / p_bad_to_good packets on average.
    """

    p_good_to_bad: float
    p_bad_to_good: float
    loss_in_bad: float = 1.0
    loss_in_good: float = 0.0

    def __post_init__(self) -> None:
        _check_probability("p_good_to_bad", self.p_good_to_bad)
        _check_probability("p_bad_to_good", self.p_bad_to_good)
        _check_probability("loss_in_bad", self.loss_in_bad)
        _check_probability("loss_in_good", self.loss_in_good)

    @classmethod
    def from_loss(cls, mean_loss: float, mean_burst: float) -> GilbertElliott:
        """Parameters people actually think in: long-run loss and mean burst length (packets)."""
        if not 0.0 <= mean_loss < 1.0:
            raise ValueError(f"mean_loss must be in [0, 1), got {mean_loss!r}")
        if not (math.isfinite(mean_burst) and mean_burst >= 1.0):
            raise ValueError(f"mean_burst must be >= 1 packet, got {mean_burst!r}")
        p_bad_to_good = 1.0 / mean_burst
        p_good_to_bad = mean_loss * p_bad_to_good / (1.0 - mean_loss)
        if p_good_to_bad > 1.0:
            raise ValueError("mean_loss too high for that mean_burst")
        return cls(p_good_to_bad=p_good_to_bad, p_bad_to_good=p_bad_to_good)

    @property
    def mean_loss(self) -> float:
        """Stationary loss rate; a chain that never moves stays in its starting (good) state."""
        moves = self.p_good_to_bad + self.p_bad_to_good
        p_bad = self.p_good_to_bad / moves if moves else 0.0
        return p_bad * self.loss_in_bad + (1.0 - p_bad) * self.loss_in_good


@dataclass(frozen=True, slots=True)
class LinkProfile:
    """What one direction of a path does to datagrams.

    A packet is delivered after `delay` plus a uniform draw in [0, jitter], so `delay` is the
    minimum and the mean is delay + jitter / 2. Draws are independent per packet, so jitter larger
    than the send interval reorders packets by itself, as on a real path. Loss is the burst model
    (if any) or-ed with independent `loss`. A duplicate copy draws its own jitter. A reordered
    packet gets `reorder_delay` on top, by default 2 * (delay + jitter) (at least 10 ms), which
    puts it behind packets sent shortly after it.
    """

    delay: float = 0.0
    jitter: float = 0.0
    loss: float = 0.0
    burst_loss: GilbertElliott | None = None
    duplicate: float = 0.0
    reorder: float = 0.0
    reorder_delay: float | None = None

    def __post_init__(self) -> None:
        _check_duration("delay", self.delay)
        _check_duration("jitter", self.jitter)
        _check_probability("loss", self.loss)
        _check_probability("duplicate", self.duplicate)
        _check_probability("reorder", self.reorder)
        if self.reorder_delay is not None:
            _check_duration("reorder_delay", self.reorder_delay)

    @classmethod
    def perfect(cls) -> LinkProfile:
        """Zero delay, nothing lost: the default, so protocol tests opt into impairment."""
        return cls()

    @classmethod
    def from_rtt(
        cls,
        rtt: float,
        *,
        jitter: float = 0.0,
        loss: float = 0.0,
        burst_loss: GilbertElliott | None = None,
        duplicate: float = 0.0,
        reorder: float = 0.0,
    ) -> LinkProfile:
        """Ping is what players quote; split it evenly between the two directions."""
        _check_duration("rtt", rtt)
        return cls(
            delay=rtt / 2.0,
            jitter=jitter,
            loss=loss,
            burst_loss=burst_loss,
            duplicate=duplicate,
            reorder=reorder,
        )

    @property
    def effective_reorder_delay(self) -> float:
        if self.reorder_delay is not None:
            return self.reorder_delay
        return max(2.0 * (self.delay + self.jitter), 0.01)

    @property
    def expected_loss(self) -> float:
        """Long-run fraction of packets lost, for tests and reports."""
        burst = self.burst_loss.mean_loss if self.burst_loss is not None else 0.0
        return 1.0 - (1.0 - burst) * (1.0 - self.loss)

    @property
    def is_perfect(self) -> bool:
        """True when a packet's fate needs no random draw (delay alone is deterministic)."""
        return (
            self.jitter == 0.0
            and self.loss == 0.0
            and self.duplicate == 0.0
            and self.reorder == 0.0
            and (self.burst_loss is None or self.burst_loss.mean_loss == 0.0)
        )


class Impairment:
    """One direction of a link: owns the burst state and the RNG, so directions stay independent.

    Counters are cumulative across profile changes; a perfect profile draws no random numbers,
    which keeps large simulations cheap.
    """

    __slots__ = (
        "_bad",
        "_perfect",
        "_profile",
        "_reorder_delay",
        "_rng",
        "duplicated",
        "lost",
        "reordered",
        "sent",
    )

    def __init__(self, profile: LinkProfile, rng: random.Random | int | str) -> None:
        self._rng = rng if isinstance(rng, random.Random) else random.Random(rng)
        self._bad = False
        self.sent = 0
        self.lost = 0
        self.duplicated = 0
        self.reordered = 0
        self._profile = profile
        self._perfect = profile.is_perfect
        self._reorder_delay = profile.effective_reorder_delay

    @property
    def profile(self) -> LinkProfile:
        return self._profile

    @property
    def in_bad_state(self) -> bool:
        return self._bad

    def set_profile(self, profile: LinkProfile) -> None:
        """Change conditions mid-run (the RNG stream and counters carry on; burst state resets
        only when the new profile has no burst model)."""
        self._profile = profile
        self._perfect = profile.is_perfect
        self._reorder_delay = profile.effective_reorder_delay
        if profile.burst_loss is None:
            self._bad = False

    def deliveries(self, now: float) -> list[float]:
        """Arrival times of one packet sent at `now`: none if lost, two if duplicated."""
        self.sent += 1
        p = self._profile
        if self._perfect:
            return [now + p.delay]
        rng = self._rng
        ge = p.burst_loss
        if ge is not None:
            if self._bad:
                if rng.random() < ge.p_bad_to_good:
                    self._bad = False
            elif rng.random() < ge.p_good_to_bad:
                self._bad = True
            p_loss = ge.loss_in_bad if self._bad else ge.loss_in_good
            if p_loss and rng.random() < p_loss:
                self.lost += 1
                return []
        if p.loss and rng.random() < p.loss:
            self.lost += 1
            return []
        arrival = now + p.delay
        if p.jitter:
            arrival += p.jitter * rng.random()
        if p.reorder and rng.random() < p.reorder:
            arrival += self._reorder_delay
            self.reordered += 1
        if p.duplicate and rng.random() < p.duplicate:
            self.duplicated += 1
            copy = now + p.delay
            if p.jitter:
                copy += p.jitter * rng.random()
            return [arrival, copy]
        return [arrival]
