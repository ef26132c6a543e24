"""Seeded PRNG: reference vectors, the documented golden vectors, and properties."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from docvectors import load_vectors
from hypothesis import given
from hypothesis import strategies as st

from sim.prng import Pcg32, SplitMix64

U32 = 1 << 32
U64 = 1 << 64
DOC = Path(__file__).resolve().parents[1] / "docs" / "PROTOCOL.md"

u64s = st.integers(min_value=0, max_value=U64 - 1)
bounds = st.integers(min_value=1, max_value=U32)


def u32s_hex(rng: Pcg32, n: int) -> list[str]:
    return [f"{rng.next_u32():08x}" for _ in range(n)]


def u64s_dec(rng: SplitMix64, n: int) -> list[str]:
    return [str(rng.next_u64()) for _ in range(n)]


def below_dec(rng: Pcg32, bound: int, n: int) -> list[str]:
    return [str(rng.next_below(bound)) for _ in range(n)]


# --- published reference vectors -------------------------------------------------


def test_pcg32_reference_vector() -> None:
    # pcg32-demo output for pcg32_srandom_r(&rng, 42u, 54u).
    rng = Pcg32(42, 54)
    assert [rng.next_u32() for _ in range(6)] == [
        0xA15C02B7,
        0x7B47F409,
        0xBA1D3330,
        0x83D2F293,
        0xBFA4784B,
        0xCBED606E,
    ]


def test_splitmix64_reference_vector() -> None:
    rng = SplitMix64(1234567)
    assert [rng.next_u64() for _ in range(5)] == [
        6457827717110365317,
        3203168211198807973,
        9817491932198370423,
        4593380528125082431,
        16408922859458223821,
    ]


def test_pcg32_initseq_top_bit_is_shifted_out() -> None:
    # Checked against the reference C code: (initseq << 1) | 1 loses bit 63.
    high = Pcg32(U64 - 1, 0x8000_0000_0000_0036)
    low = Pcg32(U64 - 1, 0x36)
    assert high.getstate() == low.getstate()
    assert u32s_hex(high, 3) == ["11526277", "e6d82672", "af1798ba"]


# --- golden vectors in the docs ----------------------------------------------------

DOC_VECTORS: dict[str, Callable[[], list[str]]] = {
    "prng.splitmix64.seed1234567": lambda: u64s_dec(SplitMix64(1234567), 5),
    "prng.pcg32.42_54": lambda: u32s_hex(Pcg32(42, 54), 6),
    "prng.pcg32.seed0": lambda: u32s_hex(Pcg32.from_seed(0), 8),
    "prng.pcg32.seed_0123456789abcdef": lambda: u32s_hex(Pcg32.from_seed(0x0123_4567_89AB_CDEF), 8),
    "prng.pcg32.seed42.below100": lambda: below_dec(Pcg32.from_seed(42), 100, 10),
    "prng.pcg32.seed7.below3000000000": lambda: below_dec(Pcg32.from_seed(7), 3_000_000_000, 8),
}


def test_doc_has_every_vector_and_no_unchecked_ones() -> None:
    documented = {name for name in load_vectors(DOC) if name.startswith("prng.")}
    assert documented == set(DOC_VECTORS)


@pytest.mark.parametrize("name", sorted(DOC_VECTORS))
def test_doc_vector_matches_code(name: str) -> None:
    assert load_vectors(DOC)[name] == DOC_VECTORS[name]()


def test_seed7_vector_really_exercises_rejection() -> None:
    # Otherwise the doc's rejection-path vector would prove nothing.
    bound = 3_000_000_000
    threshold = (U32 - bound) % bound
    raw = Pcg32.from_seed(7)
    drawn = Pcg32.from_seed(7)
    for _ in range(8):
        drawn.next_below(bound)
    draws = []
    while raw.getstate() != drawn.getstate():
        draws.append(raw.next_u32())
    assert len(draws) > 8
    assert any(r < threshold for r in draws)
    assert any(r >= bound for r in draws)


# --- SplitMix64 ----------------------------------------------------------------------


def test_splitmix64_seed_reduced_mod_2_64() -> None:
    assert u64s_dec(SplitMix64(U64 + 5), 3) == u64s_dec(SplitMix64(5), 3)


@pytest.mark.parametrize("make", [SplitMix64, Pcg32.from_seed, lambda s: Pcg32(s, 0)])
def test_negative_seed_raises(make: Callable[[int], object]) -> None:
    with pytest.raises(ValueError):
        make(-1)


def test_negative_initseq_raises() -> None:
    with pytest.raises(ValueError):
        Pcg32(0, -1)


@given(u64s)
def test_splitmix64_outputs_are_u64(seed: int) -> None:
    rng = SplitMix64(seed)
    assert all(0 <= rng.next_u64() < U64 for _ in range(4))


# --- seeding -------------------------------------------------------------------------


def test_from_seed_goes_through_splitmix64() -> None:
    sm = SplitMix64(99)
    initstate = sm.next_u64()
    initseq = sm.next_u64()
    assert Pcg32.from_seed(99).getstate() == Pcg32(initstate, initseq).getstate()


def test_from_seed_is_deterministic() -> None:
    assert u32s_hex(Pcg32.from_seed(123), 16) == u32s_hex(Pcg32.from_seed(123), 16)


def test_from_seed_neighbouring_seeds_differ() -> None:
    streams = {tuple(u32s_hex(Pcg32.from_seed(seed), 4)) for seed in range(64)}
    assert len(streams) == 64


def test_from_seed_reduced_mod_2_64() -> None:
    assert Pcg32.from_seed(U64 + 42).getstate() == Pcg32.from_seed(42).getstate()


@given(u64s, u64s)
def test_next_u32_outputs_are_u32_and_inc_is_odd(initstate: int, initseq: int) -> None:
    rng = Pcg32(initstate, initseq)
    assert all(0 <= rng.next_u32() < U32 for _ in range(4))
    state, inc = rng.getstate()
    assert 0 <= state < U64
    assert 0 <= inc < U64
    assert inc % 2 == 1


# --- next_below ----------------------------------------------------------------------


def chi_square(counts: list[int], total: int) -> float:
    expected = total / len(counts)
    return sum((c - expected) ** 2 / expected for c in counts)


def test_next_below_is_roughly_uniform_small_bound() -> None:
    rng = Pcg32.from_seed(2024)
    n = 60_000
    counts = [0] * 6
    for _ in range(n):
        counts[rng.next_below(6)] += 1
    # 5 degrees of freedom: p(chi2 > 30) is about 1.5e-5, so this is loose.
    assert chi_square(counts, n) < 30


def test_next_below_is_roughly_uniform_large_bound() -> None:
    # A bound just over 2**31 rejects nearly half of all draws.
    bound = (1 << 31) + 1
    rng = Pcg32.from_seed(77)
    n = 40_000
    counts = [0] * 10
    for _ in range(n):
        counts[rng.next_below(bound) * 10 // bound] += 1
    # 9 degrees of freedom: p(chi2 > 40) is about 7e-6.
    assert chi_square(counts, n) < 40


def test_next_below_one_is_zero_but_still_draws() -> None:
    rng = Pcg32.from_seed(5)
    ref = rng.copy()
    assert rng.next_below(1) == 0
    ref.next_u32()
    assert rng.getstate() == ref.getstate()


def test_next_below_2_pow_32_is_next_u32() -> None:
    rng, ref = Pcg32.from_seed(8), Pcg32.from_seed(8)
    assert [rng.next_below(U32) for _ in range(16)] == [ref.next_u32() for _ in range(16)]


@pytest.mark.parametrize("bound", [0, -1, U32 + 1])
def test_next_below_rejects_bad_bound_without_drawing(bound: int) -> None:
    rng = Pcg32.from_seed(3)
    before = rng.getstate()
    with pytest.raises(ValueError):
        rng.next_below(bound)
    assert rng.getstate() == before


@given(u64s, bounds)
def test_next_below_below_bound_and_matches_reference_method(seed: int, bound: int) -> None:
    rng = Pcg32.from_seed(seed)
    ref = rng.copy()
    value = rng.next_below(bound)
    assert 0 <= value < bound
    threshold = (U32 - bound) % bound
    r = ref.next_u32()
    while r < threshold:
        r = ref.next_u32()
    assert value == r % bound
    assert rng.getstate() == ref.getstate()


# --- next_range ----------------------------------------------------------------------


ranges = st.integers(min_value=-(1 << 63), max_value=(1 << 63) - 1).flatmap(
    lambda lo: st.tuples(st.just(lo), st.integers(min_value=lo, max_value=lo + U32 - 1))
)


@given(u64s, ranges)
def test_next_range_within_inclusive_range(seed: int, lo_hi: tuple[int, int]) -> None:
    lo, hi = lo_hi
    rng = Pcg32.from_seed(seed)
    ref = rng.copy()
    value = rng.next_range(lo, hi)
    assert lo <= value <= hi
    assert value == lo + ref.next_below(hi - lo + 1)


def test_next_range_hits_both_ends() -> None:
    rng = Pcg32.from_seed(11)
    seen = {rng.next_range(-1, 1) for _ in range(200)}
    assert seen == {-1, 0, 1}


def test_next_range_single_value() -> None:
    assert Pcg32.from_seed(1).next_range(7, 7) == 7


def test_next_range_full_u32_span() -> None:
    rng, ref = Pcg32.from_seed(9), Pcg32.from_seed(9)
    assert rng.next_range(-(1 << 31), (1 << 31) - 1) == ref.next_u32() - (1 << 31)


@pytest.mark.parametrize(("lo", "hi"), [(1, 0), (0, U32), (-(1 << 40), 1 << 40)])
def test_next_range_rejects_bad_range_without_drawing(lo: int, hi: int) -> None:
    rng = Pcg32.from_seed(3)
    before = rng.getstate()
    with pytest.raises(ValueError):
        rng.next_range(lo, hi)
    assert rng.getstate() == before


# --- chance --------------------------------------------------------------------------


def test_chance_is_next_below_comparison() -> None:
    rng, ref = Pcg32.from_seed(21), Pcg32.from_seed(21)
    for _ in range(200):
        assert rng.chance(3, 10) == (ref.next_below(10) < 3)


def test_chance_certain_and_impossible_still_draw() -> None:
    rng, ref = Pcg32.from_seed(4), Pcg32.from_seed(4)
    for _ in range(50):
        assert rng.chance(0, 7) is False
        assert rng.chance(7, 7) is True
        ref.next_below(7)
        ref.next_below(7)
    assert rng.getstate() == ref.getstate()


def test_chance_frequency() -> None:
    rng = Pcg32.from_seed(31)
    hits = sum(rng.chance(1, 4) for _ in range(40_000))
    # Mean 10000, sd about 87; 1000 is more than 11 sd.
    assert 9_000 < hits < 11_000


@pytest.mark.parametrize(("num", "den"), [(-1, 4), (5, 4), (0, 0), (1, U32 + 1)])
def test_chance_rejects_bad_odds_without_drawing(num: int, den: int) -> None:
    rng = Pcg32.from_seed(3)
    before = rng.getstate()
    with pytest.raises(ValueError):
        rng.chance(num, den)
    assert rng.getstate() == before


# --- state, copy ---------------------------------------------------------------------


def test_getstate_setstate_round_trip() -> None:
    rng = Pcg32.from_seed(55)
    rng.next_u32()
    saved = rng.getstate()
    first = u32s_hex(rng, 10)
    rng.setstate(saved)
    assert u32s_hex(rng, 10) == first


def test_setstate_moves_state_between_generators() -> None:
    src = Pcg32.from_seed(1)
    dst = Pcg32.from_seed(2)
    dst.setstate(src.getstate())
    assert u32s_hex(dst, 8) == u32s_hex(src, 8)


@pytest.mark.parametrize("state", [(-1, 1), (U64, 1), (0, 2), (0, -1), (0, U64 + 1)], ids=repr)
def test_setstate_rejects_invalid(state: tuple[int, int]) -> None:
    rng = Pcg32.from_seed(6)
    before = rng.getstate()
    with pytest.raises(ValueError):
        rng.setstate(state)
    assert rng.getstate() == before


def test_copy_is_independent() -> None:
    rng = Pcg32.from_seed(13)
    rng.next_u32()
    clone = rng.copy()
    assert clone is not rng
    assert clone.getstate() == rng.getstate()
    # Advancing the clone does not move the original...
    expected = u32s_hex(clone, 5)
    assert clone.getstate() != rng.getstate()
    # ...which then produces the very same stream on its own.
    assert u32s_hex(rng, 5) == expected
    assert clone.getstate() == rng.getstate()
    # Restoring the original does not touch the clone either.
    rng.setstate(Pcg32.from_seed(14).getstate())
    assert clone.getstate() != rng.getstate()


@given(u64s, st.integers(min_value=0, max_value=20))
def test_copy_replays_the_same_stream(seed: int, skip: int) -> None:
    rng = Pcg32.from_seed(seed)
    for _ in range(skip):
        rng.next_u32()
    clone = rng.copy()
    assert u32s_hex(clone, 6) == u32s_hex(rng, 6)


def test_slots_no_instance_dict() -> None:
    assert not hasattr(Pcg32(1, 2), "__dict__")
    assert not hasattr(SplitMix64(1), "__dict__")


# --- docvectors parser ---------------------------------------------------------------


def test_load_vectors_parses_blocks(tmp_path: Path) -> None:
    doc = tmp_path / "doc.md"
    doc.write_text(
        "# T\n\n<!-- vector: a.one -->\n```\n01 02\n 03\n```\n"
        "text\n<!--vector: b.two-->\n\n```text\nff\n```\n"
        "```\nnot a vector\n```\n",
        encoding="utf-8",
    )
    assert load_vectors(doc) == {"a.one": ["01", "02", "03"], "b.two": ["ff"]}


@pytest.mark.parametrize(
    "text",
    [
        "<!-- vector: x -->\ntext\n```\n1\n```\n",
        "<!-- vector: x -->\n```\n1\n",
        "<!-- vector: x -->\n```\n```\n",
        "<!-- vector: x -->\n```\n1\n```\n<!-- vector: x -->\n```\n2\n```\n",
    ],
    ids=["no-fence", "unterminated", "empty", "duplicate"],
)
def test_load_vectors_rejects_malformed(tmp_path: Path, text: str) -> None:
    doc = tmp_path / "doc.md"
    doc.write_text(text, encoding="utf-8")
    with pytest.raises(ValueError):
        load_vectors(doc)
