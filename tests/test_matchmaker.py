"""Matchmaker: pure policy on a fake clock (fairness, widening, parties, ready check, cancel)."""

from __future__ import annotations

import itertools
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lobby.matchmaker import (
    DEFAULT_MODES,
    AlreadyQueued,
    Event,
    InvalidTicket,
    MatchFound,
    Matchmaker,
    MatchmakingError,
    Mode,
    NotFound,
    OnCooldown,
    Proposal,
    ProposalCancelled,
    ProposalMade,
    QueuedPlayer,
    Ticket,
    WideningCurve,
)

WIDE = WideningCurve(initial=1e9, per_second=0.0, cap=1e9)


def solo(tid: int, rating: float, mode: str = "5v5", region: str = "eu", at: float = 0.0) -> Ticket:
    return Ticket(tid, (QueuedPlayer(tid, rating),), mode, region, at)


def party(
    tid: int, ratings: list[float], mode: str = "5v5", region: str = "eu", at: float = 0.0
) -> Ticket:
    players = tuple(QueuedPlayer(tid * 100 + k, r) for k, r in enumerate(ratings))
    return Ticket(tid, players, mode, region, at)


def made(events: list[Event]) -> list[Proposal]:
    return [e.proposal for e in events if isinstance(e, ProposalMade)]


def brute_force_min_diff(tickets: tuple[Ticket, ...], team_size: int) -> float:
    """Try every assignment of tickets to two teams; smallest |A - B| among full splits."""
    best = float("inf")
    for bits in itertools.product((0, 1), repeat=len(tickets)):
        sizes = [0, 0]
        sums = [0.0, 0.0]
        for t, b in zip(tickets, bits, strict=True):
            sizes[b] += len(t.players)
            sums[b] += sum(p.rating for p in t.players)
        if sizes == [team_size, team_size]:
            best = min(best, abs(sums[0] - sums[1]))
    return best


def check_parties_together(p: Proposal) -> None:
    team_of = {pid: k for k, team in enumerate(p.teams) for pid in team}
    for t in p.tickets:
        assert len({team_of[pid] for pid in t.player_ids}) == 1


# --- fairness ------------------------------------------------------------------------------------


def compositions(total: int) -> st.SearchStrategy[list[int]]:
    """Party sizes summing to ``total`` (a team's worth of parties)."""

    def build(cuts: set[int]) -> list[int]:
        points = [0, *sorted(cuts), total]
        return [b - a for a, b in itertools.pairwise(points)]

    if total == 1:
        return st.just([1])
    return st.sets(st.integers(1, total - 1), max_size=total - 1).map(build)


@settings(max_examples=150, deadline=None)
@given(
    team_size=st.sampled_from([1, 3, 5]),
    data=st.data(),
)
def test_teams_are_balanced_exactly(team_size: int, data: st.DataObject) -> None:
    parts = data.draw(compositions(team_size)) + data.draw(compositions(team_size))
    order = data.draw(st.permutations(range(len(parts))))
    rating = st.floats(-50, 50, allow_nan=False).map(lambda x: round(x, 2))
    tickets = [
        party(i + 1, [data.draw(rating) for _ in range(parts[k])], mode=f"{team_size}v{team_size}")
        for i, k in enumerate(order)
    ]
    mm = Matchmaker(widening=WIDE)
    for t in tickets:
        mm.enqueue(t, 0.0)
    [p] = made(mm.poll(0.0))
    assert sorted(p.player_ids) == sorted(pid for t in tickets for pid in t.player_ids)
    assert all(len(team) == team_size for team in p.teams)
    check_parties_together(p)
    optimum = brute_force_min_diff(p.tickets, team_size)
    assert p.strength_diff == pytest.approx(optimum, abs=1e-6)
    rating_of = {q.player_id: q.rating for t in p.tickets for q in t.players}
    sums = [sum(rating_of[pid] for pid in team) for team in p.teams]
    assert p.team_strengths == pytest.approx(sums)


def test_five_v_five_known_split() -> None:
    mm = Matchmaker(widening=WIDE)
    for tid, r in enumerate([10, 9, 8, 7, 6, 5, 4, 3, 2, 1], start=1):
        mm.enqueue(solo(tid, r), 0.0)
    [p] = made(mm.poll(0.0))
    assert p.strength_diff == 1.0  # 55 total: 28 vs 27 is the best possible
    assert 1 in p.teams[0]  # team 0 holds the lowest ticket id


# --- widening ------------------------------------------------------------------------------------


def test_spread_widens_with_wait_and_is_capped() -> None:
    curve = WideningCurve(initial=10.0, per_second=1.0, cap=40.0)
    mm = Matchmaker([Mode("1v1", 1)], widening=curve)
    mm.enqueue(solo(1, 0.0, "1v1"), 0.0)
    mm.enqueue(solo(2, 30.0, "1v1"), 5.0)
    for now in range(20):
        assert made(mm.poll(float(now))) == []
    [p] = made(mm.poll(20.0))  # the oldest ticket has waited 20 s: allowance 30
    assert p.rating_spread == 30.0 <= p.allowed_spread == 30.0

    far = Matchmaker([Mode("1v1", 1)], widening=curve)
    far.enqueue(solo(1, 0.0, "1v1"), 0.0)
    far.enqueue(solo(2, 41.0, "1v1"), 0.0)
    for now in range(0, 5000, 7):
        assert made(far.poll(float(now))) == []  # beyond the cap forever


@settings(max_examples=60, deadline=None)
@given(
    ratings=st.lists(st.floats(0, 60, allow_nan=False), min_size=2, max_size=40),
    waits=st.data(),
)
def test_spread_never_exceeds_allowance(ratings: list[float], waits: st.DataObject) -> None:
    curve = WideningCurve(initial=2.0, per_second=0.5, cap=12.0)
    mm = Matchmaker(widening=curve, ready_timeout=1e9)
    for tid, r in enumerate(ratings, start=1):
        at = waits.draw(st.integers(0, 30))
        mm.enqueue(solo(tid, r, "3v3", at=float(at)), float(at))
    for now in range(0, 80, 3):
        for p in made(mm.poll(float(now))):
            oldest = min(t.enqueued_at for t in p.tickets)
            assert p.rating_spread <= p.allowed_spread <= curve.cap
            assert p.allowed_spread == curve.allowed(now - oldest)


# --- parties -------------------------------------------------------------------------------------


def test_party_of_two_and_of_five_stay_together() -> None:
    mm = Matchmaker(widening=WIDE)
    mm.enqueue(party(1, [30.0, 1.0]), 0.0)
    for tid in range(2, 10):
        mm.enqueue(solo(tid, 15.0 + tid), 0.0)
    [p] = made(mm.poll(0.0))
    check_parties_together(p)
    assert {100, 101} <= set(p.teams[0])

    mm = Matchmaker(widening=WIDE)
    mm.enqueue(party(1, [20.0] * 5), 0.0)
    for tid in range(2, 7):
        mm.enqueue(solo(tid, 19.0 + tid), 0.0)
    [p] = made(mm.poll(0.0))
    assert sorted(p.teams[0]) == [100, 101, 102, 103, 104]
    assert sorted(p.teams[1]) == [2, 3, 4, 5, 6]


def test_parties_that_cannot_fill_teams_wait() -> None:
    mm = Matchmaker(widening=WIDE)
    mm.enqueue(party(1, [1.0] * 4), 0.0)
    mm.enqueue(party(2, [1.0] * 4), 0.0)
    mm.enqueue(party(3, [1.0] * 2), 0.0)  # 4+4+2 = 10 players, but 2 fits on neither team
    assert made(mm.poll(0.0)) == []
    mm.enqueue(solo(4, 1.0), 0.0)
    mm.enqueue(solo(5, 1.0), 0.0)
    [p] = made(mm.poll(1.0))
    check_parties_together(p)
    assert sorted(t.ticket_id for t in p.tickets) == [1, 2, 4, 5]


def test_bad_tickets_are_refused_with_codes() -> None:
    mm = Matchmaker()
    cases = [
        (party(1, [1.0] * 6), "party_too_large"),
        (party(1, [1.0, 2.0], mode="1v1"), "party_too_large"),
        (solo(1, 1.0, mode="9v9"), "unknown_mode"),
        (Ticket(1, (), "5v5", "eu", 0.0), "empty_party"),
        (
            Ticket(1, (QueuedPlayer(7, 1.0), QueuedPlayer(7, 2.0)), "5v5", "eu", 0.0),
            "duplicate_player",
        ),
        (solo(1, float("nan")), "bad_rating"),
    ]
    for ticket, code in cases:
        with pytest.raises(InvalidTicket) as err:
            mm.enqueue(ticket, 0.0)
        assert err.value.code == code
    mm.enqueue(solo(1, 1.0), 0.0)
    with pytest.raises(AlreadyQueued) as dup:
        mm.enqueue(solo(1, 1.0), 0.0)
    assert dup.value.code == "duplicate_ticket"
    with pytest.raises(AlreadyQueued) as again:
        mm.enqueue(Ticket(2, (QueuedPlayer(1, 1.0),), "3v3", "us", 0.0), 0.0)
    assert again.value.code == "already_queued"
    assert mm.queue_size("5v5", "eu") == 1


# --- ready check ---------------------------------------------------------------------------------


def fill(mm: Matchmaker, first: int, count: int, at: float = 0.0, mode: str = "5v5") -> None:
    for tid in range(first, first + count):
        mm.enqueue(solo(tid, 20.0, mode, at=at), at)


def test_all_accept_gives_match() -> None:
    mm = Matchmaker(widening=WIDE)
    fill(mm, 1, 10)
    [p] = made(mm.poll(0.0))
    for pid in p.player_ids[:-1]:
        mm.accept(p.proposal_id, pid, 1.0)
    mm.accept(p.proposal_id, p.player_ids[0], 1.5)  # idempotent
    assert mm.poll(1.5) == []
    mm.accept(p.proposal_id, p.player_ids[-1], 2.0)
    assert mm.poll(2.0) == [MatchFound(p, 2.0)]
    assert mm.pending_proposals() == []
    mm.enqueue(solo(1, 20.0, at=3.0), 3.0)  # matched players may queue again
    with pytest.raises(NotFound) as err:
        mm.accept(p.proposal_id, 1, 3.0)
    assert err.value.code == "unknown_proposal"


def test_decline_puts_decliner_on_cooldown_and_requeues_others() -> None:
    mm = Matchmaker(widening=WIDE, decline_cooldown=30.0)
    mm.enqueue(party(1, [20.0, 20.0]), 0.0)
    for tid in range(2, 10):
        mm.enqueue(solo(tid, 20.0, at=float(tid)), float(tid))
    [p] = made(mm.poll(10.0))
    mm.accept(p.proposal_id, 2, 11.0)
    mm.decline(p.proposal_id, 100, 12.0)  # a party member declines
    [cancelled] = mm.poll(12.0)
    assert isinstance(cancelled, ProposalCancelled)
    assert cancelled.reason == "declined"
    assert cancelled.offenders == (100,)
    assert [t.ticket_id for t in cancelled.dropped] == [1]
    assert [t.ticket_id for t in cancelled.requeued] == list(range(2, 10))
    assert cancelled.cooldown_until == 42.0
    for tid in range(2, 10):
        ticket = mm.queued_ticket(tid)
        assert ticket is not None and ticket.enqueued_at == float(tid)
    assert mm.queued_ticket(1) is None

    with pytest.raises(OnCooldown) as err:
        mm.enqueue(party(1, [20.0, 20.0], at=13.0), 13.0)
    assert err.value.code == "on_cooldown" and err.value.until == 42.0
    mm.enqueue(solo(101, 20.0, at=13.0), 13.0)  # the partner was not the offender
    mm.enqueue(solo(50, 20.0, at=14.0), 14.0)
    [again] = made(mm.poll(14.0))
    assert {t.ticket_id for t in again.tickets} == {*range(2, 10), 101, 50}
    assert mm.cooldown_until(100, 41.9) == 42.0
    assert mm.cooldown_until(100, 42.0) is None
    mm.decline(again.proposal_id, 50, 15.0)
    mm.poll(15.0)
    mm.cancel_player(101, 16.0)
    mm.enqueue(party(1, [20.0, 20.0], at=42.0), 42.0)  # cooldown over


def test_no_show_times_out() -> None:
    mm = Matchmaker(widening=WIDE, ready_timeout=20.0, decline_cooldown=5.0)
    fill(mm, 1, 10)
    [p] = made(mm.poll(0.0))
    assert p.expires_at == 20.0
    assert mm.next_deadline() == 20.0
    accepted = p.player_ids[:7]
    for pid in accepted:
        mm.accept(p.proposal_id, pid, 3.0)
    assert mm.poll(19.9) == []
    [cancelled] = mm.poll(20.0)
    assert isinstance(cancelled, ProposalCancelled) and cancelled.reason == "timeout"
    assert cancelled.offenders == tuple(sorted(p.player_ids[7:]))
    assert sorted(t.ticket_id for t in cancelled.requeued) == sorted(accepted)
    assert mm.queue_size("5v5", "eu") == 7
    with pytest.raises(OnCooldown):
        mm.enqueue(solo(p.player_ids[8], 20.0, at=21.0), 21.0)


def test_late_accept_finds_proposal_expired() -> None:
    mm = Matchmaker(widening=WIDE, ready_timeout=10.0)
    fill(mm, 1, 10)
    [p] = made(mm.poll(0.0))
    with pytest.raises(NotFound) as err:
        mm.accept(p.proposal_id, p.player_ids[0], 10.0)
    assert err.value.code == "proposal_expired"
    [cancelled] = mm.poll(10.0)
    assert isinstance(cancelled, ProposalCancelled) and cancelled.reason == "timeout"
    assert len(cancelled.offenders) == 10
    with pytest.raises(NotFound) as other:
        mm.accept(p.proposal_id, 999, 1.0)
    assert other.value.code == "unknown_proposal"


def test_accept_by_stranger_is_refused() -> None:
    mm = Matchmaker(widening=WIDE)
    fill(mm, 1, 10)
    [p] = made(mm.poll(0.0))
    with pytest.raises(NotFound) as err:
        mm.accept(p.proposal_id, 999, 1.0)
    assert err.value.code == "not_in_proposal"
    assert isinstance(err.value, MatchmakingError)


# --- cancel --------------------------------------------------------------------------------------


def test_cancel_while_queued() -> None:
    mm = Matchmaker(widening=WIDE)
    fill(mm, 1, 11)
    mm.enqueue(party(20, [20.0, 20.0]), 0.0)
    assert mm.cancel(3, 0.0).ticket_id == 3
    assert mm.cancel_player(2001, 0.0).ticket_id == 20  # a member cancels the whole party
    [p] = made(mm.poll(0.0))
    assert 3 not in p.player_ids and 2000 not in p.player_ids
    assert mm.poll(5.0) == []  # everyone else is in the ready check
    with pytest.raises(NotFound) as err:
        mm.cancel(3, 1.0)
    assert err.value.code == "not_queued"
    with pytest.raises(NotFound):
        mm.cancel_player(3, 1.0)
    mm.enqueue(solo(3, 20.0), 1.0)  # cancelling while queued costs no cooldown


def test_cancel_during_ready_check_counts_as_decline() -> None:
    mm = Matchmaker(widening=WIDE, decline_cooldown=30.0)
    fill(mm, 1, 10)
    [p] = made(mm.poll(0.0))
    mm.cancel_player(4, 2.0)
    [cancelled] = mm.poll(2.0)
    assert isinstance(cancelled, ProposalCancelled) and cancelled.reason == "cancelled"
    assert cancelled.offenders == (4,) and cancelled.proposal == p
    assert mm.queue_size("5v5", "eu") == 9
    with pytest.raises(OnCooldown):
        mm.enqueue(solo(4, 20.0), 3.0)

    fill(mm, 11, 1)
    [q] = made(mm.poll(3.0))
    mm.cancel(q.tickets[0].ticket_id, 4.0)
    [c2] = mm.poll(4.0)
    assert isinstance(c2, ProposalCancelled) and c2.offenders == q.tickets[0].player_ids


# --- determinism, exclusivity, starvation, modes, regions ----------------------------------------


def scenario(order: list[int], ratings: list[float]) -> list[Event]:
    mm = Matchmaker(widening=WideningCurve(initial=3.0, per_second=1.0, cap=15.0))
    for i in order:
        mm.enqueue(solo(i + 1, ratings[i], mode="3v3", at=float(i % 4)), 0.0)
    events: list[Event] = []
    for now in range(12):
        events += mm.poll(float(now))
    return events


@settings(max_examples=40, deadline=None)
@given(data=st.data())
def test_same_inputs_same_proposals(data: st.DataObject) -> None:
    ratings = data.draw(st.lists(st.floats(0, 40, allow_nan=False), min_size=6, max_size=40))
    order = data.draw(st.permutations(range(len(ratings))))
    first = scenario(list(range(len(ratings))), ratings)
    assert scenario(list(range(len(ratings))), ratings) == first
    assert scenario(list(order), ratings) == first  # enqueue order within a batch is irrelevant


@settings(max_examples=40, deadline=None)
@given(
    specs=st.lists(
        st.tuples(st.integers(1, 5), st.floats(0, 40, allow_nan=False), st.sampled_from("ab")),
        min_size=1,
        max_size=60,
    ),
    declines=st.lists(st.integers(0, 9), max_size=10),
)
def test_no_player_in_two_proposals(
    specs: list[tuple[int, float, str]], declines: list[int]
) -> None:
    mm = Matchmaker(widening=WideningCurve(initial=5.0, per_second=2.0, cap=30.0))
    for tid, (n, r, region) in enumerate(specs, start=1):
        mm.enqueue(party(tid, [r + k for k in range(n)], region=region), 0.0)
    for now in range(0, 40, 2):
        for e in mm.poll(float(now)):
            if isinstance(e, ProposalMade) and declines:
                idx = declines.pop()
                mm.decline(e.proposal.proposal_id, e.proposal.player_ids[idx], float(now))
        pending = mm.pending_proposals()
        seen = [pid for p in pending for pid in p.player_ids]
        assert len(seen) == len(set(seen))
        for p in pending:
            assert {t.region for t in p.tickets} == {p.region}
            check_parties_together(p)
            for pid in p.player_ids:
                with pytest.raises(AlreadyQueued):
                    mm.enqueue(Ticket(10_000 + pid, (QueuedPlayer(pid, 1.0),), "1v1", "a", 0), 99)


def test_oldest_ticket_is_matched_first() -> None:
    mm = Matchmaker([Mode("1v1", 1)], widening=WideningCurve(initial=1.0, per_second=0, cap=1.0))
    mm.enqueue(solo(9, 50.0, "1v1", at=0.0), 0.0)
    mm.enqueue(solo(1, 50.05, "1v1", at=5.0), 5.0)  # closest pair is 1–2, but 9 waited longest
    mm.enqueue(solo(2, 50.1, "1v1", at=5.0), 5.0)
    [p] = made(mm.poll(5.0))
    assert 9 in p.player_ids


def test_starving_ticket_eventually_matched_among_crowd() -> None:
    curve = WideningCurve(initial=1.0, per_second=1.0, cap=50.0)
    mm = Matchmaker(widening=curve, interval=1.0)
    mm.enqueue(solo(1, 0.0, at=0.0), 0.0)  # an outlier
    matched_at = None
    next_id = 2
    for now in range(40):
        for _ in range(10):  # a steady crowd near 30
            mm.enqueue(solo(next_id, 30.0 + (next_id % 7) * 0.1, at=float(now)), float(now))
            next_id += 1
        for p in made(mm.poll(float(now))):
            for pid in p.player_ids:
                mm.accept(p.proposal_id, pid, float(now))
            if 1 in p.player_ids:
                matched_at = now
    assert matched_at is not None and matched_at <= 31


@pytest.mark.parametrize("mode", DEFAULT_MODES, ids=lambda m: m.name)
def test_modes(mode: Mode) -> None:
    mm = Matchmaker(widening=WIDE)
    fill(mm, 1, mode.players * 2 + 1, mode=mode.name)
    proposals = made(mm.poll(0.0))
    assert len(proposals) == 2
    for p in proposals:
        assert p.mode == mode.name
        assert [len(team) for team in p.teams] == [mode.team_size] * 2
    assert mm.queue_size(mode.name, "eu") == 1


def test_regions_never_mixed() -> None:
    mm = Matchmaker(widening=WIDE)
    for tid in range(1, 6):
        mm.enqueue(solo(tid, 20.0, region="eu"), 0.0)
        mm.enqueue(solo(tid + 100, 20.0, region="na"), 0.0)
    assert made(mm.poll(0.0)) == []
    for tid in range(6, 11):
        mm.enqueue(solo(tid, 20.0, region="eu"), 1.0)
        mm.enqueue(solo(tid + 100, 20.0, region="na"), 1.0)
    proposals = made(mm.poll(1.0))
    assert sorted(p.region for p in proposals) == ["eu", "na"]
    for p in proposals:
        assert {t.region for t in p.tickets} == {p.region}


def test_batches_run_once_per_interval() -> None:
    mm = Matchmaker(widening=WIDE, interval=1.0)
    assert mm.next_deadline() is None
    assert mm.poll(0.0) == []
    fill(mm, 1, 10, at=0.2)
    assert mm.next_deadline() == 1.0
    assert made(mm.poll(0.5)) == []
    assert len(made(mm.poll(1.0))) == 1


# --- throughput sanity ---------------------------------------------------------------------------


def test_twenty_thousand_tickets() -> None:
    rng = random.Random(7)
    mm = Matchmaker(widening=WideningCurve(initial=2.0, per_second=1.0, cap=20.0))
    tid = 1
    while tid <= 20_000:
        size = rng.choice([1, 1, 1, 1, 1, 1, 2, 3, 5])
        ratings = [rng.gauss(25.0, 8.0) for _ in range(size)]
        mm.enqueue(party(tid, ratings, at=rng.uniform(0.0, 10.0)), 10.0)
        tid += 1
    proposals = made(mm.poll(10.0))
    players = [pid for p in proposals for pid in p.player_ids]
    assert len(players) == len(set(players))
    matched = sum(len(p.tickets) for p in proposals)
    assert matched + mm.queue_size("5v5", "eu") == 20_000
    assert matched > 15_000
    for p in proposals[:200]:
        check_parties_together(p)
        assert p.rating_spread <= p.allowed_spread


def test_three_teams_balanced() -> None:
    mode = Mode("2v2v2", team_size=2, teams=3)
    mm = Matchmaker([mode], widening=WIDE)
    mm.enqueue(party(1, [10.0, 10.0], mode="2v2v2"), 0.0)
    for tid, r in zip(range(2, 6), [1.0, 19.0, 5.0, 15.0], strict=True):
        mm.enqueue(solo(tid, r, mode="2v2v2"), 0.0)
    [p] = made(mm.poll(0.0))
    check_parties_together(p)
    assert p.strength_diff == 0.0  # 20 | 1+19 | 5+15
    assert sorted(map(sorted, p.teams)) == [[2, 3], [4, 5], [100, 101]]
