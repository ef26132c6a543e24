"""Matchmaker: queues per (mode, region), batched matching, balanced teams, ready checks.

Pure policy: no I/O, no clock, no logging, no randomness; time is the ``now`` argument. The
lobby shell calls ``enqueue``/``cancel``/``accept``/``decline`` as requests arrive and
``poll(now)`` on a timer (``next_deadline()`` says when polling can next change anything).

Decisions (each deterministic: the same calls with the same ``now`` give the same events,
whatever order tickets were enqueued in within one batch):

* **Events.** Every method that changes state queues events; ``poll(now)`` returns all of them
  (including those caused by ``accept``/``decline``/``cancel`` since the last poll). Batches run
  at most once per ``interval``, but ``poll`` is cheap between batches, so the shell calls it
  right after an ``accept`` to release a completed match at once.
* **Strength.** A team's strength is the sum of its players' ``rating`` (teams are equal sized,
  so sum and mean rank splits alike). ``uncertainty`` is carried for the caller (e.g. to pass an
  openskill ordinal as ``rating``) but not used here.
* **Spread.** A group is allowed if max − min over all its players' ratings is within the
  widest allowance among its tickets, each from its own wait (``WideningCurve``, capped). The
  anchor of every search is the oldest unmatched ticket, so its allowance is the widest.
* **Forming matches** per queue in O(n log n): tickets sorted by rating (party mean) in a linked
  list; anchors taken oldest first (ties by ticket id), so nobody starves; from the anchor the
  search widens outward, nearest rating first, adding every ticket that keeps the spread within
  the anchor's allowance and the parties packable onto teams. Greedy and bounded
  (``_SCAN_PER_SLOT`` candidates per slot), not exhaustive: an anchor that fails now is retried
  next batch with a wider allowance.
* **Teams.** Parties stay on one team. The split minimising (strongest − weakest team) is found
  exactly over every assignment of tickets (5v5 solos: 126 distinct splits); ties go to the
  first split in ticket-id order. Team 0 holds the lowest ticket id.
* **Ready check.** Every player must ``accept`` before ``expires_at``. A decline (or a
  ``cancel`` during the check, which counts as one, so cancelling cannot dodge the cooldown) or
  a no-show puts that player on cooldown for ``decline_cooldown`` seconds and removes their
  whole party's ticket; every other ticket is requeued with its original ``enqueued_at``.
  An accept or decline at or after ``expires_at`` finds the proposal expired.
"""

from __future__ import annotations

import heapq
import itertools
import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Literal

_SCAN_PER_SLOT = 8
"""Candidates an anchor may examine per player slot of its mode before it gives up."""


# --- configuration and requests ---------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Mode:
    """A queue type: ``teams`` teams of ``team_size`` players."""

    name: str
    team_size: int
    teams: int = 2

    def __post_init__(self) -> None:
        if self.team_size < 1 or self.teams < 2:
            raise ValueError("need team_size >= 1 and teams >= 2")

    @property
    def players(self) -> int:
        return self.team_size * self.teams


DEFAULT_MODES: tuple[Mode, ...] = (Mode("1v1", 1), Mode("3v3", 3), Mode("5v5", 5))


@dataclass(frozen=True, slots=True)
class QueuedPlayer:
    player_id: int
    rating: float
    """Skill on one scale for everyone, e.g. an openskill ordinal (mu − 3·sigma)."""
    uncertainty: float = 0.0
    """Sigma; carried, not used by the matching."""


@dataclass(frozen=True, slots=True)
class Ticket:
    """One queue entry: a solo player or a party that must land on one team."""

    ticket_id: int
    players: tuple[QueuedPlayer, ...]
    mode: str
    region: str
    enqueued_at: float
    """Wait time counts from here, and survives a failed ready check."""

    @property
    def player_ids(self) -> tuple[int, ...]:
        return tuple(p.player_id for p in self.players)


@dataclass(frozen=True, slots=True)
class WideningCurve:
    """Allowed rating spread after waiting: ``min(cap, initial + per_second * waited)``.

    Defaults suit openskill ordinals (a new player sits near 0, strong players near 40).
    """

    initial: float = 5.0
    per_second: float = 0.5
    cap: float = 25.0

    def __post_init__(self) -> None:
        if not 0 <= self.initial <= self.cap or self.per_second < 0:
            raise ValueError("need 0 <= initial <= cap and per_second >= 0")

    def allowed(self, waited: float) -> float:
        return min(self.cap, self.initial + self.per_second * max(0.0, waited))


# --- errors ------------------------------------------------------------------------------------


class MatchmakingError(Exception):
    """A refused request; ``code`` is stable (it goes to the client), the message readable."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


class InvalidTicket(MatchmakingError):
    """The ticket itself is malformed: unknown_mode, empty_party, party_too_large,
    duplicate_player, bad_rating."""


class AlreadyQueued(MatchmakingError):
    """already_queued (a player is queued or in a ready check) or duplicate_ticket."""


class OnCooldown(MatchmakingError):
    """on_cooldown: a player declined or missed a ready check recently."""

    def __init__(self, code: str, message: str, until: float) -> None:
        super().__init__(code, message)
        self.until = until


class NotFound(MatchmakingError):
    """not_queued, unknown_proposal, not_in_proposal, proposal_expired."""


# --- results and events ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Proposal:
    """A match offered to its players, pending their ready check."""

    proposal_id: int
    mode: str
    region: str
    teams: tuple[tuple[int, ...], ...]
    """Player ids per team; a party's players are adjacent, in ticket-id order."""
    tickets: tuple[Ticket, ...]
    """In ticket-id order."""
    team_strengths: tuple[float, ...]
    strength_diff: float
    """Strongest minus weakest team strength: minimal over all party-respecting splits."""
    rating_spread: float
    """Max minus min player rating in the match; never above ``allowed_spread``."""
    allowed_spread: float
    created_at: float
    expires_at: float

    @property
    def player_ids(self) -> tuple[int, ...]:
        return tuple(pid for team in self.teams for pid in team)


@dataclass(frozen=True, slots=True)
class ProposalMade:
    """Tell the proposal's players to accept or decline."""

    proposal: Proposal


@dataclass(frozen=True, slots=True)
class MatchFound:
    """Everyone accepted: allocate the room. The players have left the matchmaker."""

    proposal: Proposal
    found_at: float


CancelReason = Literal["declined", "timeout", "cancelled"]


@dataclass(frozen=True, slots=True)
class ProposalCancelled:
    """The ready check failed; ``requeued`` tickets are back in the queue, ``dropped`` are not."""

    proposal: Proposal
    reason: CancelReason
    offenders: tuple[int, ...]
    """Players put on cooldown until ``cooldown_until``, sorted."""
    requeued: tuple[Ticket, ...]
    dropped: tuple[Ticket, ...]
    cooldown_until: float


Event = ProposalMade | MatchFound | ProposalCancelled


# --- team building (pure helpers) ----------------------------------------------------------------


@lru_cache(maxsize=4096)
def _packable(sizes: tuple[int, ...], teams: int, team_size: int) -> bool:
    """Whether parties of ``sizes`` (sorted, largest first) fit on ``teams`` teams."""
    free = [team_size] * teams

    def place(i: int) -> bool:
        if i == len(sizes):
            return True
        tried: set[int] = set()
        for t in range(teams):
            if free[t] >= sizes[i] and free[t] not in tried:
                tried.add(free[t])
                free[t] -= sizes[i]
                if place(i + 1):
                    return True
                free[t] += sizes[i]
        return False

    return place(0)


def _splits(sizes: tuple[int, ...], teams: int, team_size: int) -> Iterator[tuple[int, ...]]:
    """Every assignment of tickets to teams (``team[i]`` for ticket i), each team exactly full.

    Teams are canonical: team k holds the lowest ticket not on teams 0..k-1, so each split is
    produced once, in a fixed order.
    """
    n = len(sizes)
    assign = [-1] * n

    def fill(team: int) -> Iterator[tuple[int, ...]]:
        rest = [i for i in range(n) if assign[i] < 0]
        if team == teams - 1:
            if sum(sizes[i] for i in rest) == team_size:
                for i in rest:
                    assign[i] = team
                yield tuple(assign)
                for i in rest:
                    assign[i] = -1
            return
        if not rest:
            return
        first, others = rest[0], rest[1:]
        need = team_size - sizes[first]
        if need < 0:
            return
        assign[first] = team
        biggest = max((sizes[i] for i in others), default=1)
        for r in range(-(-need // biggest), min(need, len(others)) + 1):
            for combo in itertools.combinations(others, r):
                if sum(sizes[i] for i in combo) != need:
                    continue
                for i in combo:
                    assign[i] = team
                yield from fill(team + 1)
                for i in combo:
                    assign[i] = -1
        assign[first] = -1

    yield from fill(0)


def best_split(
    sizes: tuple[int, ...], strengths: tuple[float, ...], teams: int, team_size: int
) -> tuple[tuple[int, ...], tuple[float, ...]] | None:
    """The assignment minimising strongest − weakest team, and the team strengths.

    The first minimal split in ``_splits`` order wins. None if the tickets cannot fill the teams.
    """
    best: tuple[int, ...] | None = None
    best_sums: tuple[float, ...] = ()
    best_diff = math.inf
    for assign in _splits(sizes, teams, team_size):
        sums = [0.0] * teams
        for i, t in enumerate(assign):
            sums[t] += strengths[i]
        diff = max(sums) - min(sums)
        if diff < best_diff:
            best, best_sums, best_diff = assign, tuple(sums), diff
    if best is None:
        return None
    return best, best_sums


# --- the matchmaker ------------------------------------------------------------------------------


@dataclass(slots=True)
class _Pending:
    proposal: Proposal
    accepted: set[int] = field(default_factory=set)


class Matchmaker:
    """Queues, batches and ready checks for every (mode, region); see the module docstring."""

    def __init__(
        self,
        modes: Iterable[Mode] = DEFAULT_MODES,
        *,
        interval: float = 1.0,
        widening: WideningCurve | None = None,
        ready_timeout: float = 20.0,
        decline_cooldown: float = 30.0,
        first_proposal_id: int = 1,
    ) -> None:
        """`first_proposal_id`: where proposal ids start, so that a matchmaker taking over
        from another never reuses an id a client may still hold."""
        if interval < 0 or ready_timeout <= 0 or decline_cooldown < 0:
            raise ValueError("need interval >= 0, ready_timeout > 0, decline_cooldown >= 0")
        self.modes: dict[str, Mode] = {}
        for mode in modes:
            if mode.name in self.modes:
                raise ValueError(f"mode {mode.name!r} given twice")
            self.modes[mode.name] = mode
        self.interval = interval
        self.widening = widening if widening is not None else WideningCurve()
        self.ready_timeout = ready_timeout
        self.decline_cooldown = decline_cooldown
        self._queues: dict[tuple[str, str], dict[int, Ticket]] = {}
        self._queued: dict[int, Ticket] = {}  # ticket id -> ticket waiting in a queue
        self._where: dict[int, int] = {}  # player id -> ticket id (queued or in a ready check)
        self._in_check: dict[int, int] = {}  # ticket id -> proposal id
        self._pending: dict[int, _Pending] = {}
        self._expiries: list[tuple[float, int]] = []  # heap of (expires_at, proposal id)
        self._cooldowns: dict[int, float] = {}
        self._events: list[Event] = []
        self._next_batch = -math.inf
        self._next_proposal_id = first_proposal_id

    # --- requests ---

    def enqueue(self, ticket: Ticket, now: float) -> None:
        """Queue a solo player or party; raises a ``MatchmakingError`` if refused."""
        mode = self.modes.get(ticket.mode)
        if mode is None:
            raise InvalidTicket("unknown_mode", f"no such mode {ticket.mode!r}")
        if not ticket.players:
            raise InvalidTicket("empty_party", "a ticket needs at least one player")
        if len(ticket.players) > mode.team_size:
            raise InvalidTicket(
                "party_too_large",
                f"party of {len(ticket.players)} exceeds team size {mode.team_size}",
            )
        ids = ticket.player_ids
        if len(set(ids)) != len(ids):
            raise InvalidTicket("duplicate_player", "a player appears twice in the party")
        if not all(math.isfinite(p.rating) for p in ticket.players):
            raise InvalidTicket("bad_rating", "ratings must be finite")
        if ticket.ticket_id in self._queued or ticket.ticket_id in self._in_check:
            raise AlreadyQueued("duplicate_ticket", f"ticket {ticket.ticket_id} already exists")
        for pid in ids:
            if pid in self._where:
                raise AlreadyQueued("already_queued", f"player {pid} is already queued")
        for pid in ids:
            until = self._cooldowns.get(pid)
            if until is not None and now < until:
                raise OnCooldown(
                    "on_cooldown", f"player {pid} may queue again at {until:.1f}", until
                )
        self._add(ticket)

    def cancel(self, ticket_id: int, now: float) -> Ticket:
        """Leave the queue. During a ready check this declines for the whole party."""
        proposal_id = self._in_check.get(ticket_id)
        if proposal_id is not None:
            checked = self._ticket_in(proposal_id, ticket_id)
            self._fail(proposal_id, "cancelled", checked.player_ids, now)
            return checked
        ticket = self._queued.get(ticket_id)
        if ticket is None:
            raise NotFound("not_queued", f"ticket {ticket_id} is not queued")
        self._remove(ticket)
        return ticket

    def cancel_player(self, player_id: int, now: float) -> Ticket:
        """Leave the queue with the player's whole party; during a ready check, the player
        alone is the offender."""
        ticket_id = self._where.get(player_id)
        if ticket_id is None:
            raise NotFound("not_queued", f"player {player_id} is not queued")
        proposal_id = self._in_check.get(ticket_id)
        if proposal_id is not None:
            ticket = self._ticket_in(proposal_id, ticket_id)
            self._fail(proposal_id, "cancelled", (player_id,), now)
            return ticket
        return self.cancel(ticket_id, now)

    def accept(self, proposal_id: int, player_id: int, now: float) -> None:
        """Ready. The last accept completes the match (``MatchFound`` on the next poll)."""
        pending = self._live(proposal_id, player_id, now)
        pending.accepted.add(player_id)
        if len(pending.accepted) == len(pending.proposal.player_ids):
            del self._pending[proposal_id]
            for ticket in pending.proposal.tickets:
                del self._in_check[ticket.ticket_id]
                for pid in ticket.player_ids:
                    del self._where[pid]
            self._events.append(MatchFound(pending.proposal, now))

    def decline(self, proposal_id: int, player_id: int, now: float) -> None:
        """Not ready: the proposal fails at once (even after this player accepted)."""
        self._live(proposal_id, player_id, now)
        self._fail(proposal_id, "declined", (player_id,), now)

    # --- time ---

    def poll(self, now: float) -> list[Event]:
        """Expire ready checks, run a batch if one is due, and return every queued event."""
        while self._expiries and self._expiries[0][0] <= now:
            _, proposal_id = heapq.heappop(self._expiries)
            self._expire(proposal_id, now)
        if now >= self._next_batch:
            self._next_batch = now + self.interval
            self._cooldowns = {p: t for p, t in self._cooldowns.items() if t > now}
            for key in sorted(self._queues):
                self._match_queue(key, now)
        events, self._events = self._events, []
        return events

    def next_deadline(self) -> float | None:
        """When ``poll`` can next do something without new requests (None: nothing pending)."""
        while self._expiries and self._expiries[0][1] not in self._pending:
            heapq.heappop(self._expiries)  # settled proposals leave lazily: O(1) amortized
        deadlines = [self._expiries[0][0]] if self._expiries else []
        if self._queued:
            deadlines.append(self._next_batch)
        return min(deadlines) if deadlines else None

    # --- inspection ---

    def queued_ticket(self, ticket_id: int) -> Ticket | None:
        """The ticket if it is waiting in a queue (not in a ready check)."""
        return self._queued.get(ticket_id)

    def queue_size(self, mode: str, region: str) -> int:
        """Tickets waiting in one queue."""
        return len(self._queues.get((mode, region), ()))

    def pending_proposals(self) -> list[Proposal]:
        """Proposals awaiting their ready check, by id."""
        return [self._pending[pid].proposal for pid in sorted(self._pending)]

    def cooldown_until(self, player_id: int, now: float) -> float | None:
        until = self._cooldowns.get(player_id)
        return until if until is not None and now < until else None

    # --- internals ---

    def _add(self, ticket: Ticket) -> None:
        self._queues.setdefault((ticket.mode, ticket.region), {})[ticket.ticket_id] = ticket
        self._queued[ticket.ticket_id] = ticket
        for pid in ticket.player_ids:
            self._where[pid] = ticket.ticket_id

    def _remove(self, ticket: Ticket) -> None:
        key = (ticket.mode, ticket.region)
        queue = self._queues[key]
        del queue[ticket.ticket_id]
        if not queue:
            del self._queues[key]
        del self._queued[ticket.ticket_id]
        for pid in ticket.player_ids:
            del self._where[pid]

    def _ticket_in(self, proposal_id: int, ticket_id: int) -> Ticket:
        tickets = self._pending[proposal_id].proposal.tickets
        return next(t for t in tickets if t.ticket_id == ticket_id)

    def _live(self, proposal_id: int, player_id: int, now: float) -> _Pending:
        pending = self._pending.get(proposal_id)
        if pending is None:
            raise NotFound("unknown_proposal", f"no pending proposal {proposal_id}")
        if player_id not in pending.proposal.player_ids:
            raise NotFound("not_in_proposal", f"player {player_id} is not in this proposal")
        if now >= pending.proposal.expires_at:
            self._expire(proposal_id, now)
            raise NotFound("proposal_expired", f"proposal {proposal_id} has expired")
        return pending

    def _expire(self, proposal_id: int, now: float) -> None:
        pending = self._pending.get(proposal_id)
        if pending is None:
            return
        missing = tuple(p for p in pending.proposal.player_ids if p not in pending.accepted)
        self._fail(proposal_id, "timeout", missing, now)

    def _fail(
        self, proposal_id: int, reason: CancelReason, offenders: Iterable[int], now: float
    ) -> None:
        pending = self._pending.pop(proposal_id)
        culprits = tuple(sorted(set(offenders)))
        until = now + self.decline_cooldown
        for pid in culprits:
            self._cooldowns[pid] = max(until, self._cooldowns.get(pid, -math.inf))
        requeued: list[Ticket] = []
        dropped: list[Ticket] = []
        for ticket in pending.proposal.tickets:
            del self._in_check[ticket.ticket_id]
            for pid in ticket.player_ids:
                del self._where[pid]
            if any(pid in culprits for pid in ticket.player_ids):
                dropped.append(ticket)
            else:
                requeued.append(ticket)
                self._add(ticket)
        self._events.append(
            ProposalCancelled(
                pending.proposal, reason, culprits, tuple(requeued), tuple(dropped), until
            )
        )

    def _match_queue(self, key: tuple[str, str], now: float) -> None:
        mode = self.modes[key[0]]
        tickets = list(self._queues[key].values())
        need = mode.players
        if sum(len(t.players) for t in tickets) < need:
            return
        tickets.sort(key=lambda t: (sum(p.rating for p in t.players) / len(t.players), t.ticket_id))
        n = len(tickets)
        centre = [sum(p.rating for p in t.players) / len(t.players) for t in tickets]
        low = [min(p.rating for p in t.players) for t in tickets]
        high = [max(p.rating for p in t.players) for t in tickets]
        size = [len(t.players) for t in tickets]
        age = [(t.enqueued_at, t.ticket_id) for t in tickets]
        prev = list(range(-1, n - 1))
        nxt = [*range(1, n), -1]
        used = [False] * n
        limit = _SCAN_PER_SLOT * need
        for anchor in sorted(range(n), key=age.__getitem__):
            if used[anchor]:
                continue
            allowance = self.widening.allowed(now - tickets[anchor].enqueued_at)
            chosen = [anchor]
            sizes = [size[anchor]]
            total = size[anchor]
            lo, hi = low[anchor], high[anchor]
            left, right = prev[anchor], nxt[anchor]
            c = centre[anchor]
            scanned = 0
            while total < need and scanned < limit:
                if left < 0 and right < 0:
                    break
                if right < 0 or (
                    left >= 0 and (c - centre[left], age[left]) <= (centre[right] - c, age[right])
                ):
                    j, left = left, prev[left]
                else:
                    j, right = right, nxt[right]
                if abs(centre[j] - c) > allowance:
                    break  # the nearest candidate is already too far: so is everyone else
                scanned += 1
                if total + size[j] > need:
                    continue
                if max(hi, high[j]) - min(lo, low[j]) > allowance:
                    continue
                trial = tuple(sorted([*sizes, size[j]], reverse=True))
                if not _packable(trial, mode.teams, mode.team_size):
                    continue
                chosen.append(j)
                sizes.append(size[j])
                total += size[j]
                lo, hi = min(lo, low[j]), max(hi, high[j])
            if total < need:
                continue
            group = sorted((tickets[i] for i in chosen), key=lambda t: t.ticket_id)
            if not self._propose(mode, key[1], group, allowance, now):
                continue  # cannot happen when packable; kept as a guard
            for i in chosen:
                used[i] = True
                p, q = prev[i], nxt[i]
                if p >= 0:
                    nxt[p] = q
                if q >= 0:
                    prev[q] = p

    def _propose(
        self, mode: Mode, region: str, group: list[Ticket], allowance: float, now: float
    ) -> bool:
        sizes = tuple(len(t.players) for t in group)
        strengths = tuple(sum(p.rating for p in t.players) for t in group)
        found = best_split(sizes, strengths, mode.teams, mode.team_size)
        if found is None:
            return False
        assign, sums = found
        teams = tuple(
            tuple(
                pid
                for t, team in zip(group, assign, strict=True)
                if team == k
                for pid in t.player_ids
            )
            for k in range(mode.teams)
        )
        ratings = [p.rating for t in group for p in t.players]
        proposal_id = self._next_proposal_id
        self._next_proposal_id += 1
        proposal = Proposal(
            proposal_id=proposal_id,
            mode=mode.name,
            region=region,
            teams=teams,
            tickets=tuple(group),
            team_strengths=sums,
            strength_diff=max(sums) - min(sums),
            rating_spread=max(ratings) - min(ratings),
            allowed_spread=allowance,
            created_at=now,
            expires_at=now + self.ready_timeout,
        )
        for ticket in group:
            self._remove(ticket)
            self._in_check[ticket.ticket_id] = proposal_id
            for pid in ticket.player_ids:
                self._where[pid] = ticket.ticket_id
        self._pending[proposal_id] = _Pending(proposal)
        heapq.heappush(self._expiries, (proposal.expires_at, proposal_id))
        self._events.append(ProposalMade(proposal))
        return True
