"""The matchmaking side of the lobby: queues, ready checks and the rooms they lead to.
Part of the sans-IO core.

`QueueDesk` serves players by id, wherever their connection is: `LobbyCore` hands it the
requests of its own players, and on a cluster the matchmaker node's core also hands it those
forwarded from the other nodes (`Forward`), and its answers reach players through
`Outbox.push`, which routes to the node holding the connection (`Deliver`). It owns the
`Matchmaker` and the `RoomDesk`. Only one node runs it at a time (the matchmaker lease).

Decisions:

* **Tickets are kept in the store** (`SaveTicket`, `DropTickets`) so that a matchmaker taking
  over finds the queue. Players hear `queued` only once the store has the ticket, so a
  player told they are queued is never lost by a matchmaker dying. A found match's tickets
  are claimed from the store, fenced by the lease generation (`ClaimTickets`), before its
  room is asked for: a matchmaker that lost its lease without knowing it cannot start a
  second room for the same players.
* **Taking over** (`restore`): the kept tickets wait up to `settle` seconds for their players
  to be announced online by their nodes; those complete are queued again with their original
  wait, the others dropped. Ready checks are not kept: their tickets are simply queued again.
  Messages for players not announced yet (a result recorded at once, say) are held for
  them during that time too (`Outbox.held`).
* **Ids** of tickets and proposals start at ``generation << 32``, so those of one matchmaker
  never collide with those of the one before.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from lobby import protocol as proto
from lobby.matchmaker import (
    InvalidTicket,
    MatchFound,
    Matchmaker,
    MatchmakingError,
    NotFound,
    OnCooldown,
    Proposal,
    ProposalCancelled,
    ProposalMade,
    QueuedPlayer,
    Ticket,
)
from lobby.outputs import (
    ClaimTickets,
    Deliver,
    DropTickets,
    LoadRatings,
    Outbox,
    QueueRequest,
    SaveTicket,
)
from lobby.ratings import Rating
from lobby.rooms import RoomDesk
from lobby.settings import LobbySettings
from lobby.store import MatchRecord

LOCAL = ""
"""The node id of players connected to this node."""

_ERRORS_FOR = {
    "unknown_mode": proto.ErrorCode.UNKNOWN_MODE,
    "already_queued": proto.ErrorCode.ALREADY_QUEUED,
    "duplicate_ticket": proto.ErrorCode.ALREADY_QUEUED,
    "on_cooldown": proto.ErrorCode.ON_COOLDOWN,
    "not_queued": proto.ErrorCode.NOT_QUEUED,
}


@dataclass(frozen=True, slots=True)
class _PendingQueue:
    """A queue request waiting for its players' ratings."""

    player_id: int
    msg: proto.Queue
    members: tuple[int, ...]
    at: float


@dataclass(slots=True)
class _QueueStats:
    wait: float
    samples: int = 0


class QueueDesk:
    def __init__(
        self,
        settings: LobbySettings,
        out: Outbox,
        *,
        now: float,
        matches: Sequence[MatchRecord] = (),
        generation: int = 0,
        entropy: Callable[[int], bytes] = os.urandom,
        kick_local: Callable[[int, float], None] | None = None,
    ) -> None:
        """`matches`: the ones in progress the store kept; `generation`: the matchmaker
        lease's (0 on a single node); `kick_local(player_id, now)` closes a connection of
        this node's whose player logged in on another node."""
        self.settings = settings
        self.out = out
        self._kick_local = kick_local
        self.generation = generation
        self.matchmaker = Matchmaker(
            settings.modes,
            interval=settings.match_interval,
            widening=settings.widening,
            ready_timeout=settings.ready_timeout,
            decline_cooldown=settings.decline_cooldown,
            first_proposal_id=(generation << 32) + 1,
        )
        self.rooms = RoomDesk(settings, out, now=now, matches=matches, entropy=entropy)
        self._where: dict[int, str] = {}  # player id -> node id (LOCAL for this node)
        self._ticket_of: dict[int, int] = {}  # player id -> ticket id
        self._tickets: dict[int, Ticket] = {}
        self._pending: dict[int, _PendingQueue] = {}  # ticket id -> queue request
        self._claims: dict[int, Proposal] = {}  # proposal id -> match being claimed
        self._restored: dict[int, Ticket] = {}  # kept tickets waiting for their players
        self._unsaved: dict[int, list[tuple[int, proto.Queued]]] = {}  # answers held back
        self._settle_at: float | None = None
        self._next_ticket = (generation << 32) + 1
        self._queue_stats: dict[tuple[str, str], _QueueStats] = {}

    # --- time -------------------------------------------------------------------------------

    def next_deadline(self) -> float | None:
        times = [
            t
            for t in (self.matchmaker.next_deadline(), self.rooms.next_deadline(), self._settle_at)
            if t is not None
        ]
        return min(times, default=None)

    def poll(self, now: float) -> None:
        if self._settle_at is not None and now >= self._settle_at:
            self._settle(now)
        self._run_matchmaker(now)
        self.rooms.poll(now)

    @property
    def queued_tickets(self) -> int:
        """Tickets waiting in a queue or in a ready check (or for their players' ratings)."""
        return len(self._tickets) + len(self._pending) + len(self._restored)

    # --- players ----------------------------------------------------------------------------

    def player_online(self, pid: int, node: str, now: float, *, resume: bool = True) -> None:
        """A player's connection is live on `node`: pick up where they were (`resume`: send
        their ready check and match again; not for a node re-announcing its players to a
        new matchmaker, whose players have them already)."""
        before = self._where.get(pid)
        if before is not None and before != node:
            # Logged in on another node: the old connection goes (as on one node).
            if before != LOCAL:
                kicked = proto.Kicked("logged in from another connection")
                self.out.append(Deliver(before, pid, kicked))
            elif self._kick_local is not None:
                self._kick_local(pid, now)
        self._where[pid] = node
        if node == LOCAL:
            self.out.remote.pop(pid, None)
        else:
            self.out.remote[pid] = node
        held = self.out.held.pop(pid, []) if self.out.held is not None else []
        for message in held:
            self.out.push(pid, message)
        if not resume:
            return
        for proposal in self.matchmaker.pending_proposals():
            if pid in proposal.player_ids:
                self.out.push(pid, _proposed(proposal))
        record = self.rooms.match_for_player(pid)
        if record is not None:
            self.out.count("tickets_reissued")
            self.rooms.send_match_ready(record, pid, now)

    def player_offline(self, pid: int, node: str, now: float) -> None:
        """A player's connection on `node` ended (ignored if they are now elsewhere)."""
        if self._where.get(pid) != node:
            return
        del self._where[pid]
        self.out.remote.pop(pid, None)
        self._cancel_queued(pid, now)

    def node_gone(self, node: str, now: float) -> None:
        """A lobby node died: its players are offline."""
        for pid in [p for p, n in self._where.items() if n == node]:
            self.player_offline(pid, node, now)

    def online(self, pid: int) -> bool:
        return pid in self._where

    def request(self, pid: int, msg: QueueRequest, now: float) -> None:
        if pid not in self._where:
            return  # gone before its request arrived
        if isinstance(msg, proto.Queue):
            self._on_queue(pid, msg, now)
        elif isinstance(msg, proto.CancelQueue):
            tid = self._ticket_of.get(pid)
            if tid is None:
                self._error(pid, msg, proto.ErrorCode.NOT_QUEUED, "not in a queue")
                return
            self._cancel_ticket(tid, now, rid=msg.rid, by=pid)
        else:
            try:
                if isinstance(msg, proto.Accept):
                    self.matchmaker.accept(msg.proposal_id, pid, now)
                else:
                    self.matchmaker.decline(msg.proposal_id, pid, now)
            except NotFound as exc:
                self._error(pid, msg, proto.ErrorCode.UNKNOWN_PROPOSAL, str(exc))
                return
            self._run_matchmaker(now)  # the last accept releases the match at once

    # --- queueing -----------------------------------------------------------------------------

    def _on_queue(self, pid: int, msg: proto.Queue, now: float) -> None:
        if msg.region not in self.settings.regions:
            regions = ", ".join(self.settings.regions)
            self._error(pid, msg, proto.ErrorCode.UNKNOWN_REGION, f"regions: {regions}")
            return
        members = tuple(dict.fromkeys((pid, *(msg.party or ()))))
        for member in members:
            if self.rooms.in_match(member):
                self._error(pid, msg, proto.ErrorCode.IN_MATCH, f"player {member} is in a match")
                return
            if member != pid and member not in self._where:
                self._error(pid, msg, proto.ErrorCode.BAD_PARTY, f"player {member} is offline")
                return
        busy = next((m for m in members if m in self._ticket_of), None)
        if busy is not None:
            self._error(pid, msg, proto.ErrorCode.ALREADY_QUEUED, f"player {busy} is queued")
            return
        if all(m.name != msg.mode for m in self.settings.modes):
            self._error(pid, msg, proto.ErrorCode.UNKNOWN_MODE, f"unknown mode {msg.mode!r}")
            return
        # The ticket id is taken now, so the request can be cancelled while ratings load.
        tid = self._next_ticket
        self._next_ticket += 1
        self._pending[tid] = _PendingQueue(pid, msg, members, now)
        for member in members:
            self._ticket_of[member] = tid
        self.out.append(LoadRatings(tid, members))

    def ratings_loaded(self, ticket_id: int, ratings: Mapping[int, Rating], now: float) -> None:
        pending = self._pending.pop(ticket_id, None)
        if pending is not None:
            self._enqueue(ticket_id, pending, ratings, now)

    def ratings_failed(self, ticket_id: int) -> None:
        pending = self._pending.pop(ticket_id, None)
        if pending is not None:
            self._forget_pending(ticket_id, pending)
            self._error(
                pending.player_id,
                pending.msg,
                proto.ErrorCode.UNAVAILABLE,
                "storage unavailable",
            )

    def _enqueue(
        self, tid: int, pending: _PendingQueue, ratings: Mapping[int, Rating], now: float
    ) -> None:
        pid, msg, members = pending.player_id, pending.msg, pending.members
        self._forget_pending(tid, pending)
        # Things may have changed while the ratings loaded.
        gone = next((m for m in members if m not in self._where or self.rooms.in_match(m)), None)
        if gone is not None or any(m not in ratings for m in members):
            self._error(pid, msg, proto.ErrorCode.BAD_PARTY, f"player {gone} is offline or busy")
            return
        ticket = Ticket(
            tid,
            tuple(QueuedPlayer(m, ratings[m].ordinal, ratings[m].sigma) for m in members),
            msg.mode,
            msg.region,
            pending.at,
        )
        try:
            self.matchmaker.enqueue(ticket, now)
        except MatchmakingError as exc:
            code = _ERRORS_FOR.get(exc.code)
            if code is None:
                code = (
                    proto.ErrorCode.BAD_PARTY
                    if isinstance(exc, InvalidTicket)
                    else proto.ErrorCode.ALREADY_QUEUED
                )
            text = str(exc)
            if isinstance(exc, OnCooldown):
                text = f"{text} (for {exc.until - now:.0f} s)"
            self._error(pid, msg, code, text)
            return
        self._hold(ticket)
        self.out.append(SaveTicket(ticket))
        stats = self._queue_stats.get((msg.mode, msg.region))
        wait = stats.wait if stats else self.settings.match_interval
        self.out.count("tickets_queued")
        self._unsaved[tid] = [
            (m, proto.Queued(tid, msg.mode, msg.region, wait, msg.rid if m == pid else None))
            for m in members
        ]

    def ticket_saved(self, ticket_id: int) -> None:
        """The store has the ticket: now its players may hear they are queued."""
        for member, queued in self._unsaved.pop(ticket_id, ()):
            self.out.push(member, queued)

    def _hold(self, ticket: Ticket) -> None:
        self._tickets[ticket.ticket_id] = ticket
        for member in ticket.player_ids:
            self._ticket_of[member] = ticket.ticket_id

    def _forget_pending(self, tid: int, pending: _PendingQueue) -> None:
        self._unmark(tid, pending.members)

    def _cancel_queued(self, pid: int, now: float) -> None:
        """Drop the player's ticket if it is waiting in a queue (not in a ready check)."""
        tid = self._ticket_of.get(pid)
        if tid is not None and (
            tid in self._pending
            or tid in self._restored
            or self.matchmaker.queued_ticket(tid) is not None
        ):
            self._cancel_ticket(tid, now)

    def _cancel_ticket(
        self, tid: int, now: float, *, rid: int | None = None, by: int | None = None
    ) -> None:
        """Cancel a party's ticket; every member is told (the one who asked with `rid`)."""
        restored = self._restored.pop(tid, None)
        if restored is not None:  # kept by the previous matchmaker, not queued again yet
            self.out.append(DropTickets((tid,)))
            self._tell_cancelled(tid, restored.player_ids, rid, by)
            return
        pending = self._pending.pop(tid, None)
        if pending is not None:  # still loading ratings: the matchmaker never saw it
            self._tell_cancelled(tid, pending.members, rid, by)
            return
        in_check = self.matchmaker.queued_ticket(tid) is None
        try:
            self.matchmaker.cancel(tid, now)
        except NotFound:
            return
        # Taken before the matchmaker runs: a dropped ticket is forgotten there.
        ticket = self._tickets.pop(tid, None)
        self._unsaved.pop(tid, None)
        self.out.append(DropTickets((tid,)))
        if in_check:  # counts as a decline: ProposalCancelled tells everyone
            self._run_matchmaker(now)
        if ticket is not None:
            self._tell_cancelled(tid, ticket.player_ids, rid, by)

    def _tell_cancelled(
        self, tid: int, members: Sequence[int], rid: int | None, by: int | None
    ) -> None:
        self._unmark(tid, members)
        for member in members:
            self.out.push(member, proto.QueueCancelled(tid, rid if member == by else None))

    def _unmark(self, tid: int, members: Sequence[int]) -> None:
        """The players are no longer held by ticket `tid` (they may hold a newer one)."""
        for member in members:
            if self._ticket_of.get(member) == tid:
                del self._ticket_of[member]

    # --- matchmaking ------------------------------------------------------------------------------

    def _run_matchmaker(self, now: float) -> None:
        for event in self.matchmaker.poll(now):
            if isinstance(event, ProposalMade):
                p = event.proposal
                self.out.count("proposals")
                for t in p.tickets:
                    self._observe_wait(p.mode, p.region, now - t.enqueued_at)
                proposed = _proposed(p)  # one object: the shell encodes it once
                for pid in p.player_ids:
                    self.out.push(pid, proposed)
            elif isinstance(event, ProposalCancelled):
                self._on_proposal_cancelled(event)
            elif isinstance(event, MatchFound):
                p = event.proposal
                self._claims[p.proposal_id] = p
                ids = tuple(t.ticket_id for t in p.tickets)
                self.out.append(ClaimTickets(p.proposal_id, ids, self.generation))

    def tickets_claimed(self, proposal_id: int, ok: bool, now: float) -> None:
        """The store gave (or refused) a found match's tickets: start it, or let it go."""
        p = self._claims.pop(proposal_id, None)
        if p is None:
            return
        for t in p.tickets:
            self._forget_ticket(t.ticket_id)
        if ok:
            self.rooms.start_match(p, now)
            return
        self.out.count("claims_refused")
        self.out.note("tickets_not_claimed", "warning", proposal_id=proposal_id)
        for pid in p.player_ids:
            self.out.push(
                pid, proto.MatchCancelled(proposal_id, "the matchmaker changed; queue again", False)
            )

    def _observe_wait(self, mode: str, region: str, waited: float) -> None:
        stats = self._queue_stats.setdefault((mode, region), _QueueStats(waited))
        stats.samples += 1
        stats.wait += (waited - stats.wait) / min(stats.samples, 20)

    def _on_proposal_cancelled(self, event: ProposalCancelled) -> None:
        p = event.proposal
        self.out.count("proposals_cancelled")
        requeued = {pid for t in event.requeued for pid in t.player_ids}
        for t in event.dropped:
            self._forget_ticket(t.ticket_id)
        if event.dropped:
            self.out.append(DropTickets(tuple(t.ticket_id for t in event.dropped)))
        why = {
            "declined": "a player declined",
            "timeout": "not everyone accepted in time",
            "cancelled": "a player left the queue",
        }[event.reason]
        for pid in p.player_ids:
            self.out.push(pid, proto.MatchCancelled(p.proposal_id, why, pid in requeued))

    def _forget_ticket(self, tid: int) -> None:
        ticket = self._tickets.pop(tid, None)
        if ticket is not None:
            self._unmark(tid, ticket.player_ids)

    # --- taking over --------------------------------------------------------------------------

    def restore(self, tickets: Sequence[Ticket], settle: float, now: float) -> None:
        """Tickets a previous matchmaker kept: queued again once their players are back."""
        for ticket in tickets:
            self._restored[ticket.ticket_id] = ticket
            for pid in ticket.player_ids:
                self._ticket_of.setdefault(pid, ticket.ticket_id)
        self._settle_at = now + settle
        self.out.held = {}

    def _settle(self, now: float) -> None:
        self._settle_at = None
        if self.out.held:
            self.out.count("pushes_unclaimed", sum(len(m) for m in self.out.held.values()))
        self.out.held = None
        dropped: list[int] = []
        for tid, ticket in sorted(self._restored.items()):
            mine = all(self._ticket_of.get(p) == tid for p in ticket.player_ids)
            if mine and all(p in self._where for p in ticket.player_ids):
                try:
                    self.matchmaker.enqueue(ticket, now)
                except MatchmakingError:
                    pass
                else:
                    self._hold(ticket)
                    self.out.count("tickets_restored")
                    continue
            dropped.append(tid)
            self._unmark(tid, ticket.player_ids)
        self._restored.clear()
        if dropped:
            self.out.count("tickets_dropped", len(dropped))
            self.out.append(DropTickets(tuple(dropped)))

    # --- helpers ----------------------------------------------------------------------------------

    def _error(self, pid: int, msg: QueueRequest, code: proto.ErrorCode, text: str) -> None:
        self.out.count(f"client_error_{code}")
        self.out.push(pid, proto.Error(code, text, proto.type_name(msg), msg.rid))


def _proposed(p: Proposal) -> proto.MatchProposed:
    return proto.MatchProposed(p.proposal_id, p.mode, p.teams, p.expires_at)
