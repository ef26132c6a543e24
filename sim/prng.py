"""Seeded PRNG shared by every game client (Python, C#, C++).

Lockstep simulation only stays in sync if every client draws the same numbers
from the match seed, so everything here is integer-only and mirrors the
reference C code bit for bit: SplitMix64 to spread the seed, PCG32 (XSH RR,
pcg-random.org minimal library) for the stream. Python ints are unbounded, so
every 64-bit and 32-bit wrap that C gets for free is an explicit mask here.
docs/PROTOCOL.md ("Seeded PRNG") is the cross-language spec and holds the golden vectors.
"""

from __future__ import annotations

from typing import Self

__all__ = ["Pcg32", "SplitMix64"]

_MASK32 = 0xFFFF_FFFF
_MASK64 = 0xFFFF_FFFF_FFFF_FFFF
_U32_RANGE = 1 << 32

_SM_GAMMA = 0x9E37_79B9_7F4A_7C15
_SM_MUL1 = 0xBF58_476D_1CE4_E5B9
_SM_MUL2 = 0x94D0_49BB_1331_11EB

_PCG_MULT = 6364136223846793005


def _u64(value: int, name: str) -> int:
    # Other clients take an unsigned 64-bit seed; a negative one has no
    # agreed meaning there, so refuse it rather than silently wrapping.
    if value < 0:
        raise ValueError(f"{name} must be non-negative, got {value}")
    return value & _MASK64


class SplitMix64:
    """Seed expander: turns one match seed into well-mixed PCG parameters.

    Consecutive or low-entropy seeds (0, 1, 2, ...) would give PCG32 visibly
    correlated streams; SplitMix64 decorrelates them at negligible cost.
    """

    __slots__ = ("_state",)

    def __init__(self, seed: int) -> None:
        self._state = _u64(seed, "seed")

    def next_u64(self) -> int:
        state = (self._state + _SM_GAMMA) & _MASK64
        self._state = state
        z = ((state ^ (state >> 30)) * _SM_MUL1) & _MASK64
        z = ((z ^ (z >> 27)) * _SM_MUL2) & _MASK64
        return z ^ (z >> 31)


class Pcg32:
    """PCG32 XSH RR: 64-bit LCG state, 32-bit permuted output.

    Chosen because the reference is a dozen lines of integer C that ports
    exactly to C# and C++, and it is fast and statistically solid.
    """

    __slots__ = ("_inc", "_state")

    def __init__(self, initstate: int, initseq: int) -> None:
        """Reference pcg32_srandom_r; initseq picks one of 2**63 streams."""
        initstate = _u64(initstate, "initstate")
        initseq = _u64(initseq, "initseq")
        self._state = 0
        # The top bit of initseq is shifted out, exactly as in C.
        self._inc = ((initseq << 1) | 1) & _MASK64
        self.next_u32()
        self._state = (self._state + initstate) & _MASK64
        self.next_u32()

    @classmethod
    def from_seed(cls, seed: int) -> Self:
        """The way game code seeds: the room's u64 match seed via SplitMix64."""
        sm = SplitMix64(seed)
        initstate = sm.next_u64()
        initseq = sm.next_u64()
        return cls(initstate, initseq)

    def next_u32(self) -> int:
        old = self._state
        self._state = (old * _PCG_MULT + self._inc) & _MASK64
        xorshifted = (((old >> 18) ^ old) >> 27) & _MASK32
        rot = old >> 59
        return ((xorshifted >> rot) | (xorshifted << (-rot & 31))) & _MASK32

    def next_below(self, bound: int) -> int:
        """Uniform in [0, bound) without modulo bias (reference rejection method).

        The number of u32 draws consumed varies, but identically on every client.
        """
        if not 1 <= bound <= _U32_RANGE:
            raise ValueError(f"bound must be in [1, 2**32], got {bound}")
        threshold = (_U32_RANGE - bound) % bound
        while True:
            r = self.next_u32()
            if r >= threshold:
                return r % bound

    def next_range(self, lo: int, hi: int) -> int:
        """Uniform in [lo, hi], both inclusive, so a full die is next_range(1, 6)."""
        if hi < lo:
            raise ValueError(f"empty range [{lo}, {hi}]")
        span = hi - lo + 1
        if span > _U32_RANGE:
            raise ValueError(f"range [{lo}, {hi}] spans more than 2**32 values")
        return lo + self.next_below(span)

    def chance(self, numerator: int, denominator: int) -> bool:
        """True with probability numerator/denominator, exactly, with no floats.

        Always draws once, even for 0 or 1 odds, so streams stay aligned.
        """
        if not 0 <= numerator <= denominator:
            raise ValueError(f"numerator must be in [0, {denominator}], got {numerator}")
        return self.next_below(denominator) < numerator

    def getstate(self) -> tuple[int, int]:
        """(state, inc): enough to resume the stream, e.g. in a snapshot or replay."""
        return self._state, self._inc

    def setstate(self, state: tuple[int, int]) -> None:
        st, inc = state
        if not 0 <= st <= _MASK64:
            raise ValueError(f"state must be a u64, got {st}")
        if not 0 <= inc <= _MASK64 or inc & 1 == 0:
            # An even increment would break the LCG's full period.
            raise ValueError(f"inc must be an odd u64, got {inc}")
        self._state = st
        self._inc = inc

    def copy(self) -> Self:
        """An independent generator at the same point, for speculative rollback."""
        clone = type(self).__new__(type(self))
        clone._state = self._state
        clone._inc = self._inc
        return clone

    def __repr__(self) -> str:
        return f"{type(self).__name__}(state={self._state:#018x}, inc={self._inc:#018x})"
