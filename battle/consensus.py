"""Consensus among clients: desync detection over state hashes, and agreement on the match result.

Pure: no I/O, no clock, no logging; time is the ``now`` argument. The room feeds reports and
votes in as they arrive and polls ``HashBook.decide(now)`` / ``ResultBallot.outcome(now)`` each
tick; ``next_deadline()`` says when polling can next change anything without new input.

Tie rules (deterministic; no rule may depend on arrival order):

* Frame hashes. The majority hash is the one held by strictly more reporters than any other
  hash *and* by at least two of them: two independent simulations agreeing is the evidence.
  Without such a hash the frame is *tied* (e.g. two players who disagree, or 2-2, or 1-1-1):
  nobody can tell who is right, so every reporter is in the minority and there is no majority
  hash. Picking a side by slot number would blame an innocent player half the time. A frame
  with one report is *unverified*: no majority, no minority, nothing to accept snapshots against.
* Match result. Votes are counted over the *electorate*: the expected (connected) slots plus
  every slot that already voted, so a vote cast before disconnecting is not thrown away. The
  plurality result wins; equal pluralities are broken in favour of the group holding the lowest
  voting slot (arbitrary but fixed), and ``Outcome.tied`` says so, so the lobby can treat such a
  result as contested (e.g. no rating change) instead of trusting slot order.
"""

from __future__ import annotations

import heapq
from collections import Counter
from dataclasses import dataclass
from typing import Literal

import msgpack

U64_MAX = (1 << 64) - 1


# --- desync detection ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Verdict:
    """How one frame's reported hashes compare, decided once."""

    frame: int
    majority_hash: int | None
    """None when tied or unverified: only a hash backed by ≥ 2 reporters is ever trusted."""
    hashes: tuple[tuple[int, int], ...]
    """(slot, hash) for every slot that reported this frame, sorted by slot."""
    minority: tuple[int, ...]
    """Slots whose hash differs from the majority; every reporter when tied."""
    agreed: bool
    """No minority. Also true for an unverified frame (one report cannot disagree)."""
    tied: bool = False
    """≥ 2 reports but no majority hash (see the module's tie rules)."""
    verified: bool = True
    """False when only one slot reported before the timeout."""


@dataclass(frozen=True, slots=True)
class DesyncFound:
    """Slots newly diverged at ``frame``: recorded once per divergence, not once per frame."""

    frame: int
    majority_hash: int | None
    minority: tuple[int, ...]
    """Only the slots that entered the minority at this frame (already-diverged ones are not
    repeated); ``hashes`` shows everyone."""
    hashes: tuple[tuple[int, int], ...]


@dataclass(slots=True)
class _Pending:
    first_seen: float
    reports: dict[int, int]


def _judge(frame: int, reports: dict[int, int]) -> Verdict:
    hashes = tuple(sorted(reports.items()))
    if len(hashes) < 2:
        return Verdict(frame, None, hashes, (), agreed=True, verified=False)
    ranked = Counter(reports.values()).most_common(2)
    top_hash, top = ranked[0]
    if top >= 2 and (len(ranked) == 1 or ranked[1][1] < top):
        minority = tuple(slot for slot, h in hashes if h != top_hash)
        return Verdict(frame, top_hash, hashes, minority, agreed=not minority)
    everyone = tuple(slot for slot, _ in hashes)
    return Verdict(frame, None, hashes, everyone, agreed=False, tied=True)


class HashBook:
    """Compares the state hashes clients report per frame; finds who diverged and when.

    Frames are decided strictly in increasing order, each exactly once: when every expected
    slot has reported it, or ``report_timeout`` after its first report (whatever arrived by
    then is compared). A frame waits behind an undecided earlier one, at most the timeout.
    Memory is bounded: at most ``window_frames`` pending frames, and agreed hashes are kept only
    for the last ``window_frames`` frame numbers.

    The caller must only pass frames the room has already closed: a report far ahead that
    times out alone would otherwise move the decided frontier past frames others still report.
    A slot that lags by more than ``report_timeout`` has its reports decided without it, and
    a frame first reported after a later frame was decided is stale: the room receives each
    client's reports in frame order, so that only happens to reports that were far too late.

    Desync state: a slot enters the minority → ``first_desync(slot)`` is that frame and one
    ``DesyncFound`` is appended. It stays diverged (no more records) until it matches the
    majority hash of ``rearm_frames`` verified frames in a row, e.g. after resyncing from a
    snapshot; then it is back in sync and a new divergence is recorded again. So a client that
    lies on every other frame yields one record, not one per frame; ``records_left`` caps the
    records per book all the same (``suppressed`` counts the rest). The caller clears
    ``desyncs`` after reading it.
    """

    def __init__(
        self,
        slots: int,
        *,
        window_frames: int = 450,
        report_timeout: float = 2.0,
        start_frame: int = 0,
        rearm_frames: int = 30,
        max_records: int = 64,
    ) -> None:
        """``start_frame``: frames up to it count as decided (for a book created mid-match)."""
        if slots < 1 or window_frames < 1 or report_timeout < 0:
            raise ValueError("need slots >= 1, window_frames >= 1, report_timeout >= 0")
        self.slots = slots
        self.window_frames = window_frames
        self.report_timeout = report_timeout
        self.decided_through = start_frame
        """Newest decided frame; reports at or below it are stale."""
        self.expected: frozenset[int] = frozenset(range(slots))
        self.desyncs: list[DesyncFound] = []
        self.conflicting_reports = 0
        self.stale_reports = 0
        self.ahead_reports = 0
        self.invalid_reports = 0
        self._pending: dict[int, _Pending] = {}
        self._order: list[int] = []  # heap of the pending frame numbers
        self._agreed: dict[int, int] = {}  # frame -> majority hash, in frame order
        self._diverged: dict[int, int] = {}  # slot -> first frame of its current divergence
        self._agreeing: dict[int, int] = {}  # diverged slot -> verified agreements in a row
        self.rearm_frames = rearm_frames
        self.records_left = max_records
        self.suppressed = 0
        """Divergences not recorded because ``records_left`` ran out."""

    def _check_slot(self, slot: int) -> None:
        if not 0 <= slot < self.slots:
            raise ValueError(f"slot {slot} out of range 0..{self.slots - 1}")

    def set_expected(self, slots: frozenset[int]) -> None:
        """The slots currently connected: a frame is complete once all of them reported it."""
        for slot in slots:
            self._check_slot(slot)
        self.expected = frozenset(slots)

    def report(self, slot: int, frame: int, hash: int, now: float) -> None:
        """Record ``slot``'s state hash (u64) after simulating ``frame``; first report wins."""
        self._check_slot(slot)
        if not 0 <= hash <= U64_MAX:
            self.invalid_reports += 1
            return
        if frame <= self.decided_through:
            self.stale_reports += 1
            return
        if frame > self.decided_through + self.window_frames:
            self.ahead_reports += 1
            return
        pending = self._pending.get(frame)
        if pending is None:
            self._pending[frame] = _Pending(now, {slot: hash})
            heapq.heappush(self._order, frame)
            return
        previous = pending.reports.setdefault(slot, hash)
        if previous != hash:
            self.conflicting_reports += 1

    def decide(self, now: float) -> list[Verdict]:
        """Verdicts for every frame that became decidable, oldest first."""
        verdicts: list[Verdict] = []
        while self._order:
            frame = self._order[0]
            pending = self._pending[frame]
            complete = self.expected.issubset(pending.reports)
            if not complete and now < pending.first_seen + self.report_timeout:
                break
            heapq.heappop(self._order)
            del self._pending[frame]
            verdict = _judge(frame, pending.reports)
            self._record(verdict)
            verdicts.append(verdict)
        return verdicts

    def _record(self, verdict: Verdict) -> None:
        self.decided_through = verdict.frame
        if verdict.majority_hash is not None:
            self._agreed[verdict.frame] = verdict.majority_hash
        floor = verdict.frame - self.window_frames
        while self._agreed:
            oldest = next(iter(self._agreed))
            if oldest > floor:
                break
            del self._agreed[oldest]
        if not verdict.verified:
            return
        minority = set(verdict.minority)
        new: list[int] = []
        for slot, _ in verdict.hashes:
            if slot not in minority:
                if slot in self._diverged:
                    streak = self._agreeing.get(slot, 0) + 1
                    if streak >= self.rearm_frames:  # matched long enough: back in sync
                        del self._diverged[slot]
                        self._agreeing.pop(slot, None)
                    else:
                        self._agreeing[slot] = streak
            elif slot not in self._diverged:
                self._diverged[slot] = verdict.frame
                new.append(slot)
            else:
                self._agreeing.pop(slot, None)
        if new:
            if self.records_left <= 0:
                self.suppressed += 1
                return
            self.records_left -= 1
            self.desyncs.append(
                DesyncFound(verdict.frame, verdict.majority_hash, tuple(new), verdict.hashes)
            )

    def next_deadline(self) -> float | None:
        """When ``decide`` will next decide something by timeout alone."""
        if not self._order:
            return None
        return self._pending[self._order[0]].first_seen + self.report_timeout

    def agreed_hash(self, frame: int) -> int | None:
        """The majority hash of a recently decided frame, for accepting snapshots."""
        return self._agreed.get(frame)

    def first_desync(self, slot: int) -> int | None:
        """First frame of ``slot``'s current divergence; None while it is in sync."""
        return self._diverged.get(slot)

    @property
    def pending_frames(self) -> int:
        return len(self._pending)


# --- result consensus ------------------------------------------------------------------------


def _canonical(obj: object) -> object:
    if isinstance(obj, dict):
        items = [(k, _canonical(v)) for k, v in obj.items()]
        items.sort(key=lambda kv: _pack(kv[0]))  # any packable key type sorts, deterministically
        return dict(items)
    if isinstance(obj, list | tuple):
        return [_canonical(x) for x in obj]
    return obj


def _pack(obj: object) -> bytes:
    out: bytes = msgpack.packb(obj, use_bin_type=True)
    return out


def canonical_result(result: dict[str, object]) -> bytes:
    """msgpack bytes with every map's keys sorted (by their packed bytes), recursively.

    Equal results give equal bytes whatever the insertion order, so votes compare as bytes.
    Tuples pack as arrays, like lists. Raises TypeError for values msgpack cannot pack.
    """
    return _pack(_canonical(result))


Reason = Literal["unanimous", "majority", "split", "timeout"]


@dataclass(frozen=True, slots=True)
class Outcome:
    """The agreed match result and how it was reached."""

    result: bytes
    votes: tuple[tuple[int, bytes], ...]
    """(slot, result) for every vote counted, sorted by slot."""
    dissenters: tuple[int, ...]
    """Voters whose result differs from ``result``."""
    reason: Reason
    """unanimous: every expected slot voted, all alike. majority: a strict majority of the
    electorate agreed (early). split: everyone expected voted, no strict majority. timeout:
    the timeout passed first. split/timeout take the plurality."""
    tied: bool = False
    """The plurality was shared and the lowest-slot rule picked the result: contested."""


class ResultBallot:
    """Collects each client's reported match result and decides one, once.

    Nothing is decided until more than half of the roster has voted (``quorum``): a lone
    player, or a few left in a deserted room, cannot decide a match for everyone. From then
    on it is decided as soon as: every expected slot voted alike ("unanimous"); one result
    holds more than half of the electorate, i.e. expected slots plus slots that voted
    ("majority"); every expected slot voted ("split"); or ``timeout`` passed since the first
    vote ("timeout").
    """

    def __init__(
        self, slots: frozenset[int], *, timeout: float = 10.0, quorum: int | None = None
    ) -> None:
        if not slots or timeout < 0:
            raise ValueError("need at least one slot and timeout >= 0")
        self.quorum = len(slots) // 2 + 1 if quorum is None else quorum
        self.slots = frozenset(slots)
        self.expected = self.slots
        self.timeout = timeout
        self.changed_votes = 0
        self.late_votes = 0
        self._votes: dict[int, bytes] = {}
        self._first_vote_at: float | None = None
        self._outcome: Outcome | None = None

    def set_expected(self, slots: frozenset[int]) -> None:
        """The slots currently connected, whose votes are awaited."""
        if not slots <= self.slots:
            raise ValueError(f"slots {sorted(slots - self.slots)} are not in the roster")
        self.expected = frozenset(slots)

    def vote(self, slot: int, result: bytes, now: float) -> None:
        """Record ``slot``'s result; its first vote counts, a changed one is counted and ignored."""
        if slot not in self.slots:
            raise ValueError(f"slot {slot} is not in the roster")
        previous = self._votes.get(slot)
        if previous is not None:
            if previous != result:
                self.changed_votes += 1
            return
        if self._outcome is not None:
            self.late_votes += 1
            return
        self._votes[slot] = result
        if self._first_vote_at is None:
            self._first_vote_at = now

    def outcome(self, now: float) -> Outcome | None:
        """The decided outcome, or None while undecided (always None before the first vote)."""
        if self._outcome is not None or self._first_vote_at is None:
            return self._outcome
        if len(self._votes) < self.quorum:
            return None
        groups: dict[bytes, list[int]] = {}
        for slot in sorted(self._votes):
            groups.setdefault(self._votes[slot], []).append(slot)
        # Most votes first; equal counts: the group holding the lowest voting slot.
        ranked = sorted(groups.items(), key=lambda g: (-len(g[1]), g[1][0]))
        result, voters = ranked[0]
        everyone_voted = self.expected.issubset(self._votes)
        electorate = len(self.expected.union(self._votes))
        reason: Reason
        if everyone_voted and len(groups) == 1:
            reason = "unanimous"
        elif 2 * len(voters) > electorate:
            reason = "majority"
        elif everyone_voted:
            reason = "split"
        elif now >= self._first_vote_at + self.timeout:
            reason = "timeout"
        else:
            return None
        tied = len(ranked) > 1 and len(ranked[1][1]) == len(voters)
        votes = tuple(sorted(self._votes.items()))
        dissenters = tuple(slot for slot, r in votes if r != result)
        self._outcome = Outcome(result, votes, dissenters, reason, tied)
        return self._outcome

    def next_deadline(self) -> float | None:
        """When ``outcome`` decides by timeout alone, if still undecided."""
        if self._outcome is not None or self._first_vote_at is None:
            return None
        return self._first_vote_at + self.timeout

    @property
    def decided(self) -> bool:
        return self._outcome is not None
