"""Integer geometry helpers for lockstep game code.

Positions and distances are plain integers in map units; there are no floats anywhere,
because one rounding difference between compilers, JITs or CPUs makes lockstep clients
drift apart. Every helper is defined so that a port to C, C# or C++ gives the same result
bit for bit:

- Division truncates toward zero (C semantics). Python's ``//`` floors instead, which
  differs for negative operands, so game code divides through `div_trunc`.
- Square roots are the exact floor of the real root (`isqrt`). Ports compute it with an
  integer algorithm; ``(int)sqrt((double)n)`` is only exact below 2**52.
- Range checks compare squared distances, so most of them need no root at all.
"""

from __future__ import annotations

from math import isqrt as _isqrt

__all__ = [
    "clamp",
    "dist",
    "dist_sq",
    "div_trunc",
    "isqrt",
    "mul_div",
    "step_toward",
    "within",
]


def div_trunc(a: int, b: int) -> int:
    """a / b rounded toward zero, as C, C# and Java integer division do."""
    if b == 0:
        raise ZeroDivisionError("div_trunc by zero")
    q = abs(a) // abs(b)
    return q if (a < 0) == (b < 0) else -q


def mul_div(value: int, num: int, den: int) -> int:
    """value * num / den, truncated; scales by exact rational factors (percentages)."""
    return div_trunc(value * num, den)


def clamp(value: int, lo: int, hi: int) -> int:
    """value limited to [lo, hi]."""
    if value < lo:
        return lo
    if value > hi:
        return hi
    return value


def isqrt(n: int) -> int:
    """Floor of the square root of n >= 0, exact for every size."""
    if n < 0:
        raise ValueError(f"isqrt of a negative number: {n}")
    return _isqrt(n)


def dist_sq(ax: int, ay: int, bx: int, by: int) -> int:
    """Squared distance: exact, and what range checks compare."""
    dx = bx - ax
    dy = by - ay
    return dx * dx + dy * dy


def dist(ax: int, ay: int, bx: int, by: int) -> int:
    """Distance rounded down."""
    return _isqrt(dist_sq(ax, ay, bx, by))


def within(ax: int, ay: int, bx: int, by: int, radius: int) -> bool:
    """True if the points are at most radius apart (no square root)."""
    dx = bx - ax
    dy = by - ay
    return dx * dx + dy * dy <= radius * radius


def step_toward(x: int, y: int, tx: int, ty: int, step: int) -> tuple[int, int]:
    """Move from (x, y) at most `step` units straight toward (tx, ty).

    Lands exactly on the target once it is within reach, so movers always arrive. Each
    component is dx * step / d truncated toward zero, with d the distance rounded *up*
    (isqrt(d2 - 1) + 1): the step is then never longer than `step`, no component passes
    the target, and for step >= 2 every call gets strictly closer.
    """
    dx = tx - x
    dy = ty - y
    d2 = dx * dx + dy * dy
    if d2 <= step * step:
        return tx, ty
    d = _isqrt(d2 - 1) + 1
    return x + div_trunc(dx * step, d), y + div_trunc(dy * step, d)
