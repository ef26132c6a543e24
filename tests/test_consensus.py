"""Consensus: HashBook desync detection and ResultBallot match-result agreement."""

from __future__ import annotations

import math
import random

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from battle.consensus import (
    U64_MAX,
    DesyncFound,
    HashBook,
    Outcome,
    ResultBallot,
    Verdict,
    canonical_result,
)

INF = math.inf


def report_all(book: HashBook, frame: int, hashes: dict[int, int], now: float = 0.0) -> None:
    for slot, h in hashes.items():
        book.report(slot, frame, h, now)


# --- HashBook: plain cases -------------------------------------------------------------------


def test_all_agree_decides_once_complete() -> None:
    book = HashBook(3)
    book.report(0, 1, 7, 0.0)
    book.report(1, 1, 7, 0.0)
    assert book.decide(0.1) == []
    book.report(2, 1, 7, 0.1)
    [v] = book.decide(0.1)
    assert v == Verdict(1, 7, ((0, 7), (1, 7), (2, 7)), (), agreed=True)
    assert book.agreed_hash(1) == 7
    assert book.decide(0.2) == []
    assert book.desyncs == []


def test_single_deviator_is_minority_and_recorded_once() -> None:
    book = HashBook(4)
    for frame in range(1, 11):
        report_all(
            book, frame, {s: (frame if s != 2 or frame < 5 else 1000 + frame) for s in range(4)}
        )
    verdicts = book.decide(0.0)
    assert [v.frame for v in verdicts] == list(range(1, 11))
    assert all(v.agreed for v in verdicts[:4])
    assert all(v.minority == (2,) and v.majority_hash == v.frame for v in verdicts[4:])
    assert book.desyncs == [DesyncFound(5, 5, (2,), ((0, 5), (1, 5), (2, 1005), (3, 5)))]
    assert book.first_desync(2) == 5
    assert book.first_desync(0) is None


def test_resync_clears_and_a_new_divergence_is_recorded_again() -> None:
    book = HashBook(3, rearm_frames=1)
    bad = {3, 4, 8}
    for frame in range(1, 10):
        report_all(
            book, frame, {0: frame, 1: frame, 2: -frame % 97 + 1000 if frame in bad else frame}
        )
    book.decide(0.0)
    assert [(d.frame, d.minority) for d in book.desyncs] == [(3, (2,)), (8, (2,))]
    assert book.first_desync(2) is None  # frame 9 agreed again


def test_two_players_disagreeing_is_a_tie_blaming_both() -> None:
    book = HashBook(2, rearm_frames=1)
    report_all(book, 1, {0: 1, 1: 2})
    [v] = book.decide(0.0)
    assert (v.majority_hash, v.minority, v.tied, v.agreed) == (None, (0, 1), True, False)
    assert book.agreed_hash(1) is None
    assert book.desyncs == [DesyncFound(1, None, (0, 1), ((0, 1), (1, 2)))]
    report_all(book, 2, {0: 5, 1: 5})
    [v2] = book.decide(0.0)
    assert v2.agreed and book.first_desync(0) is None and book.first_desync(1) is None


@pytest.mark.parametrize(
    ("hashes", "majority", "minority"),
    [
        ({0: 1, 1: 1, 2: 2, 3: 2}, None, (0, 1, 2, 3)),  # 2-2
        ({0: 1, 1: 2, 2: 3}, None, (0, 1, 2)),  # 1-1-1: nobody corroborated
        ({0: 1, 1: 1, 2: 2, 3: 3}, 1, (2, 3)),  # strict plurality of two
        ({0: 9, 1: 1, 2: 1}, 1, (0,)),  # lowest slot gets no privilege
        ({0: 1, 1: 1, 2: 1, 3: 2, 4: 2}, 1, (3, 4)),
    ],
)
def test_majority_and_tie_rules(
    hashes: dict[int, int], majority: int | None, minority: tuple[int, ...]
) -> None:
    book = HashBook(len(hashes))
    report_all(book, 1, hashes)
    [v] = book.decide(0.0)
    assert (v.majority_hash, v.minority, v.tied) == (majority, minority, majority is None)
    assert book.agreed_hash(1) == majority


def test_timeout_decides_partial_frames() -> None:
    book = HashBook(4, report_timeout=2.0)
    report_all(book, 1, {0: 3, 2: 4, 3: 3}, now=1.0)
    book.report(1, 2, 8, 1.5)
    assert book.next_deadline() == 3.0
    assert book.decide(2.99) == []
    [v] = book.decide(3.0)
    assert (v.frame, v.majority_hash, v.minority, v.verified) == (1, 3, (2,), True)
    assert book.next_deadline() == 3.5
    [u] = book.decide(3.5)
    assert (u.verified, u.agreed, u.minority, u.majority_hash) == (False, True, (), None)
    assert book.agreed_hash(2) is None and book.next_deadline() is None
    book.report(1, 1, 3, 4.0)  # too late
    assert book.stale_reports == 1


def test_frames_decide_in_order_behind_an_incomplete_one() -> None:
    book = HashBook(2, report_timeout=1.0)
    book.report(0, 1, 1, 0.0)
    report_all(book, 2, {0: 2, 1: 2}, now=0.5)
    assert book.decide(0.9) == []
    assert [v.frame for v in book.decide(1.0)] == [1, 2]


def test_set_expected_completes_frames_without_a_disconnected_slot() -> None:
    book = HashBook(3)
    report_all(book, 1, {0: 1, 1: 1})
    assert book.decide(0.0) == []
    book.set_expected(frozenset({0, 1}))
    [v] = book.decide(0.0)
    assert v.agreed and v.verified
    book.report(2, 2, 5, 0.0)  # a late report from a non-expected slot still counts
    report_all(book, 2, {0: 6, 1: 6})
    [v2] = book.decide(0.0)
    assert v2.minority == (2,)
    with pytest.raises(ValueError):
        book.set_expected(frozenset({3}))


def test_report_every_n_frames_compares_equal_frames_only() -> None:
    book = HashBook(3)
    for frame in range(10, 101, 10):
        report_all(book, frame, {0: frame, 1: frame, 2: frame})
    assert [v.frame for v in book.decide(0.0)] == list(range(10, 101, 10))


def test_duplicate_conflicting_stale_ahead_invalid_reports() -> None:
    book = HashBook(2, window_frames=10)
    book.report(0, 1, 5, 0.0)
    book.report(0, 1, 5, 0.0)
    book.report(0, 1, 6, 0.0)
    assert book.conflicting_reports == 1
    book.report(1, 1, 5, 0.0)
    [v] = book.decide(0.0)
    assert v.hashes == ((0, 5), (1, 5))
    book.report(0, 1, 5, 0.0)
    book.report(0, 0, 5, 0.0)
    book.report(0, -3, 5, 0.0)
    assert book.stale_reports == 3
    book.report(0, 11, 5, 0.0)
    assert book.pending_frames == 1
    book.report(0, 12, 5, 0.0)
    assert book.ahead_reports == 1
    book.report(0, 5, -1, 0.0)
    book.report(0, 5, U64_MAX + 1, 0.0)
    assert book.invalid_reports == 2
    book.report(0, 5, U64_MAX, 0.0)
    assert book.pending_frames == 2
    with pytest.raises(ValueError):
        book.report(2, 5, 1, 0.0)


def test_agreed_hash_kept_for_window_frames() -> None:
    book = HashBook(2, window_frames=5)
    for frame in range(1, 21):
        report_all(book, frame, {0: frame * 3, 1: frame * 3})
        book.decide(0.0)
    assert [f for f in range(1, 21) if book.agreed_hash(f) is not None] == list(range(16, 21))
    assert book.agreed_hash(20) == 60


def test_start_frame_for_a_book_created_mid_match() -> None:
    book = HashBook(2, window_frames=10, start_frame=5000)
    book.report(0, 5000, 1, 0.0)
    book.report(0, 5001, 1, 0.0)
    assert (book.stale_reports, book.pending_frames) == (1, 1)


def test_constructor_rejects_nonsense() -> None:
    with pytest.raises(ValueError):
        HashBook(0)
    with pytest.raises(ValueError):
        HashBook(2, window_frames=0)
    with pytest.raises(ValueError):
        HashBook(2, report_timeout=-1)
    with pytest.raises(ValueError):
        ResultBallot(frozenset())


# --- HashBook: properties --------------------------------------------------------------------

op = st.one_of(
    st.tuples(
        st.just("report"),
        st.integers(0, 3),
        st.integers(-2, 40),
        st.integers(0, 2),
    ),
    st.tuples(st.just("time"), st.floats(0, 1.5)),
    st.tuples(st.just("decide")),
    st.tuples(st.just("expect"), st.frozensets(st.integers(0, 3))),
)


@settings(max_examples=300)
@given(st.lists(op, max_size=120))
def test_frames_decided_in_increasing_order_exactly_once(ops: list[tuple[object, ...]]) -> None:
    book = HashBook(4, window_frames=16, report_timeout=1.0)
    now = 0.0
    accepted: set[int] = set()
    decided: list[int] = []
    for o in ops:
        if o[0] == "report":
            _, slot, frame, h = o
            assert isinstance(slot, int) and isinstance(frame, int) and isinstance(h, int)
            ignored = book.stale_reports + book.ahead_reports
            book.report(slot, frame, h, now)
            if book.stale_reports + book.ahead_reports == ignored:
                accepted.add(frame)
            assert book.pending_frames <= 16
        elif o[0] == "time":
            assert isinstance(o[1], float)
            now += o[1]
        elif o[0] == "decide":
            decided += [v.frame for v in book.decide(now)]
        else:
            assert isinstance(o[1], frozenset)
            book.set_expected(o[1])
    decided += [v.frame for v in book.decide(INF)]
    assert decided == sorted(set(decided))
    assert set(decided) == accepted
    assert book.pending_frames == 0


@settings(max_examples=200)
@given(st.integers(1, 8), st.integers(1, 30), st.randoms(use_true_random=False))
def test_all_agreeing_never_yields_a_minority(
    players: int, frames: int, rnd: random.Random
) -> None:
    book = HashBook(players)
    reports = [(s, f) for f in range(1, frames + 1) for s in range(players) if rnd.random() < 0.8]
    rnd.shuffle(reports)
    verdicts: list[Verdict] = []
    for i, (slot, frame) in enumerate(reports):
        book.report(slot, frame, frame * 7919 % 1000, i * 0.05)
        verdicts += book.decide(i * 0.05)
    verdicts += book.decide(INF)
    assert all(v.agreed and not v.minority and not v.tied for v in verdicts)
    assert book.desyncs == []
    for v in verdicts:
        assert book.agreed_hash(v.frame) == (v.majority_hash if len(v.hashes) >= 2 else None)


@settings(max_examples=200)
@given(
    st.integers(3, 8),
    st.data(),
    st.integers(1, 40),
    st.integers(1, 5),
    st.randoms(use_true_random=False),
)
def test_single_deviator_is_sole_minority_with_one_record(
    players: int, data: st.DataObject, bad: int, every: int, rnd: random.Random
) -> None:
    deviator = data.draw(st.integers(0, players - 1))
    frames = [f for f in range(1, 61) if f % every == 0 or f == bad]
    book = HashBook(players)
    queues = [[(s, f) for f in frames] for s in range(players)]
    verdicts: list[Verdict] = []
    while any(queues):  # each slot in frame order, slots interleaved at random
        slot, frame = rnd.choice([q for q in queues if q]).pop(0)
        h = 2 * frame + 1 if slot == deviator and frame >= bad else 2 * frame
        book.report(slot, frame, h, 0.0)
        if rnd.random() < 0.3:
            verdicts += book.decide(0.0)
    verdicts += book.decide(0.0)
    assert [v.frame for v in verdicts] == frames
    first_bad = next(v for v in verdicts if v.frame == bad)
    assert first_bad.minority == (deviator,) and first_bad.majority_hash == 2 * bad
    assert all(v.agreed for v in verdicts if v.frame < bad)
    assert len(book.desyncs) == 1
    assert (book.desyncs[0].frame, book.desyncs[0].minority) == (bad, (deviator,))
    assert book.first_desync(deviator) == bad


@settings(max_examples=200)
@given(st.integers(2, 6), st.integers(1, 20), st.randoms(use_true_random=False))
def test_timeouts_decide_partially_reported_frames(
    players: int, frames: int, rnd: random.Random
) -> None:
    book = HashBook(players, report_timeout=2.0)
    counts: dict[int, int] = {}
    for frame in range(1, frames + 1):
        reporters = rnd.sample(range(players), rnd.randint(1, players - 1))
        counts[frame] = len(reporters)
        for slot in reporters:
            book.report(slot, frame, frame, frame * 0.01)
    assert book.decide(1.9) == []
    verdicts = book.decide(2.0 + frames * 0.01)
    assert [v.frame for v in verdicts] == list(range(1, frames + 1))
    for v in verdicts:
        assert v.verified == (counts[v.frame] >= 2)
        assert v.agreed


@settings(max_examples=100)
@given(
    st.lists(
        st.tuples(
            st.integers(0, 4),
            st.integers(-(10**6), 10**6),
            st.integers(0, U64_MAX),
            st.floats(0, 0.5),
        ),
        max_size=400,
    ),
    st.integers(1, 50),
)
def test_memory_stays_bounded_under_a_flood(
    flood: list[tuple[int, int, int, float]], window: int
) -> None:
    book = HashBook(5, window_frames=window, report_timeout=1.0)
    now = 0.0
    for i, (slot, delta, h, dt) in enumerate(flood):
        now += dt
        frame = book.decided_through + (delta % (2 * window) if i % 2 else delta)
        book.report(slot, frame, h, now)
        book.decide(now)
        assert book.pending_frames <= window
        assert sum(len(p.reports) for p in book._pending.values()) <= window * 5
        assert len(book._agreed) <= window
        assert len(book._order) == book.pending_frames


# --- ResultBallot ----------------------------------------------------------------------------

WIN_A = canonical_result({"winner": 0})
WIN_B = canonical_result({"winner": 1})
DRAW = canonical_result({"winner": None})


def test_early_strict_majority() -> None:
    ballot = ResultBallot(frozenset(range(5)))
    assert ballot.outcome(0.0) is None
    ballot.vote(0, WIN_A, 0.0)
    ballot.vote(1, WIN_B, 0.1)
    ballot.vote(2, WIN_A, 0.2)
    assert ballot.outcome(0.3) is None
    ballot.vote(4, WIN_A, 0.3)
    assert ballot.outcome(0.3) == Outcome(
        WIN_A, ((0, WIN_A), (1, WIN_B), (2, WIN_A), (4, WIN_A)), (1,), "majority"
    )


def test_unanimous_and_it_stays_decided() -> None:
    ballot = ResultBallot(frozenset({0, 1}))
    ballot.vote(0, WIN_A, 0.0)
    assert ballot.outcome(1.0) is None  # 1 of 2 is not a strict majority
    ballot.vote(1, WIN_A, 2.0)
    out = ballot.outcome(2.0)
    assert out is not None and (out.reason, out.dissenters, out.tied) == ("unanimous", (), False)
    ballot.vote(1, WIN_B, 3.0)
    assert ballot.changed_votes == 1
    assert ballot.outcome(100.0) is out and ballot.decided and ballot.next_deadline() is None


def test_split_when_everyone_voted_breaks_tie_by_lowest_slot() -> None:
    ballot = ResultBallot(frozenset(range(4)))
    for slot, r in [(3, WIN_A), (1, WIN_B), (0, WIN_A), (2, WIN_B)]:
        ballot.vote(slot, r, 0.0)
    out = ballot.outcome(0.0)
    assert out is not None
    assert (out.result, out.reason, out.tied, out.dissenters) == (WIN_A, "split", True, (1, 2))


def test_timeout_plurality_and_tie_rule() -> None:
    ballot = ResultBallot(frozenset(range(6)), timeout=10.0)
    ballot.vote(5, WIN_B, 1.0)
    ballot.vote(4, WIN_B, 2.0)
    ballot.vote(2, DRAW, 3.0)
    ballot.vote(1, WIN_A, 3.0)
    assert ballot.next_deadline() == 11.0
    assert ballot.outcome(10.99) is None
    out = ballot.outcome(11.0)
    assert out is not None and (out.result, out.reason, out.tied) == (WIN_B, "timeout", False)
    assert out.dissenters == (1, 2)

    tie = ResultBallot(frozenset(range(6)), timeout=10.0)
    for slot, r in [(5, WIN_B), (4, WIN_B), (3, WIN_A), (2, WIN_A)]:
        tie.vote(slot, r, 0.0)
    out = tie.outcome(10.0)
    assert out is not None and (out.result, out.reason, out.tied) == (WIN_A, "timeout", True)


def test_votes_of_disconnected_players_still_count() -> None:
    ballot = ResultBallot(frozenset(range(4)))
    ballot.vote(0, WIN_A, 0.0)
    ballot.vote(1, WIN_A, 0.0)
    ballot.set_expected(frozenset({2, 3}))
    ballot.vote(2, WIN_B, 0.0)
    assert ballot.outcome(0.0) is None  # 2 of an electorate of 4 is no strict majority
    ballot.set_expected(frozenset({2}))
    out = ballot.outcome(0.0)  # electorate is now {0, 1, 2}: 2 of 3 agree
    assert out is not None and (out.result, out.reason, out.dissenters) == (WIN_A, "majority", (2,))


def test_late_votes_and_bad_slots() -> None:
    ballot = ResultBallot(frozenset({0, 1, 2}))
    ballot.vote(0, WIN_A, 0.0)
    ballot.vote(1, WIN_A, 0.0)
    assert ballot.outcome(0.0) is not None
    ballot.vote(2, WIN_B, 0.0)
    assert ballot.late_votes == 1
    with pytest.raises(ValueError):
        ballot.vote(3, WIN_A, 0.0)
    with pytest.raises(ValueError):
        ballot.set_expected(frozenset({7}))


@settings(max_examples=300)
@given(
    st.dictionaries(st.integers(0, 9), st.sampled_from([WIN_A, WIN_B, DRAW]), min_size=1),
    st.randoms(use_true_random=False),
    st.floats(0, 20),
)
def test_ballot_outcome_does_not_depend_on_vote_order(
    votes: dict[int, bytes], rnd: random.Random, now: float
) -> None:
    outcomes = []
    for _ in range(3):
        items = list(votes.items())
        rnd.shuffle(items)
        ballot = ResultBallot(frozenset(range(10)), timeout=10.0)
        for slot, r in items:
            ballot.vote(slot, r, 0.0)
        outcomes.append(ballot.outcome(now))
    assert outcomes[0] == outcomes[1] == outcomes[2]
    out = outcomes[0]
    counts = {r: list(votes.values()).count(r) for r in set(votes.values())}
    best = max(counts.values())
    if len(votes) < 6:
        assert out is None  # no quorum: fewer than half the roster voted
    elif len(votes) == 10 and len(counts) == 1:
        assert out is not None and out.reason == "unanimous"
    elif 2 * best > 10:
        assert out is not None and out.reason == "majority" and counts[out.result] == best
    elif len(votes) == 10:
        assert out is not None and out.reason == "split" and counts[out.result] == best
    elif now < 10.0:
        assert out is None
    else:
        assert out is not None and out.reason == "timeout" and counts[out.result] == best
    if out is not None and 2 * best <= 10:
        tied = [r for r, c in counts.items() if c == best]
        lowest = min(s for s, r in votes.items() if r in tied)
        assert out.result == votes[lowest] and out.tied == (len(tied) > 1)
        assert set(out.dissenters) == {s for s, r in votes.items() if r != out.result}


# --- canonical_result ------------------------------------------------------------------------

leaf = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**63), 2**64 - 1),
    st.text(max_size=5),
    st.binary(max_size=5),
)
tree = st.recursive(
    leaf,
    lambda kids: (
        st.lists(kids, max_size=3) | st.dictionaries(st.text(max_size=4), kids, max_size=4)
    ),
    max_leaves=20,
)


def reordered(obj: object, rnd: random.Random) -> object:
    if isinstance(obj, dict):
        items = [(k, reordered(v, rnd)) for k, v in obj.items()]
        rnd.shuffle(items)
        return dict(items)
    if isinstance(obj, list):
        return [reordered(x, rnd) for x in obj]
    return obj


@settings(max_examples=300)
@given(st.dictionaries(st.text(max_size=4), tree, max_size=6), st.randoms(use_true_random=False))
def test_canonical_result_ignores_insertion_order(
    result: dict[str, object], rnd: random.Random
) -> None:
    other = reordered(result, rnd)
    assert isinstance(other, dict)
    packed = canonical_result(result)
    assert canonical_result(other) == packed
    assert msgpack.unpackb(packed, raw=False) == result


def test_canonical_result_nested_and_tuples() -> None:
    a = canonical_result({"b": {"y": 1, "x": [2, {"q": 1, "p": 2}]}, "a": (1, 2)})
    b = canonical_result({"a": [1, 2], "b": {"x": [2, {"p": 2, "q": 1}], "y": 1}})
    assert a == b
    assert canonical_result({"winner": 0}) != canonical_result({"winner": 1})
    with pytest.raises(TypeError):
        canonical_result({"x": object()})


def test_a_client_lying_on_every_other_frame_yields_one_record() -> None:
    book = HashBook(3, report_timeout=0.0)
    for frame in range(1, 301):
        lie = frame % 2 == 1
        for slot in range(3):
            book.report(slot, frame, 7 + (lie and slot == 0), 0.0)
        book.decide(1.0)
    assert [(d.frame, d.minority) for d in book.desyncs] == [(1, (0,))]
    assert book.first_desync(0) == 1


def test_a_slot_back_in_sync_long_enough_can_diverge_again() -> None:
    book = HashBook(3, report_timeout=0.0, rearm_frames=5)
    values = {1: 9} | {f: 7 for f in range(2, 7)} | {7: 9}
    for frame, bad in values.items():
        for slot in range(3):
            book.report(slot, frame, bad if slot == 2 else 7, 0.0)
        book.decide(1.0)
    assert [(d.frame, d.minority) for d in book.desyncs] == [(1, (2,)), (7, (2,))]


def test_desync_records_are_capped() -> None:
    book = HashBook(4, report_timeout=0.0, rearm_frames=1, max_records=3)
    for frame in range(1, 41):
        for slot in range(4):
            book.report(slot, frame, 7 + (frame % 2 and slot == frame % 4), 0.0)
        book.decide(1.0)
    assert len(book.desyncs) == 3
    assert book.suppressed > 0


def test_no_result_is_decided_without_a_quorum_of_the_roster() -> None:
    ballot = ResultBallot(frozenset(range(10)), timeout=10.0)
    ballot.set_expected(frozenset({0}))  # everyone else has left
    ballot.vote(0, WIN_A, 0.0)
    assert ballot.outcome(100.0) is None  # one player never decides a match alone
    for slot in range(1, 6):
        ballot.vote(slot, WIN_A, 1.0)
    decided = ballot.outcome(1.0)
    assert decided is not None and decided.result == WIN_A
