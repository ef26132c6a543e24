"""The lobby node's core: sessions, queues, ready checks, rooms and results. Sans-IO.

No sockets, no clock, no threads: the shell feeds in decoded client and control messages with
``now`` (unix seconds), calls ``poll(now)`` by ``next_deadline()``, and carries out what
``take_outputs()`` returns (`outputs.py`). Storage and the password KDF are effects: the core
hands out a FindAccount, LoadRatings, HashPassword, ... output and its answer comes back
through the method of the same step (``account_found``, ``ratings_loaded``,
``password_hashed``, ...) or ``effect_failed``, so the core never waits on a disk, a network
store or a slow hash. The matches in progress are held in memory by `RoomDesk` and written
through; the shell passes in the ones the store kept when it starts.

Decisions:

* **One live connection per player.** A login elsewhere kicks the old connection (`kicked`,
  then close). The player's queue ticket and ready check are tied to the player, not the
  connection: a dropped connection cancels a *queued* ticket (nobody should be matched who is
  not there to accept) but leaves a ready check running, so a client that reconnects within
  the ready timeout gets `match_proposed` again and can still accept.
* **Parties.** `queue` with `party` queues every listed player (the sender is added) as one
  ticket; each must be logged in and idle. Protocol v1 has no invitations: a member who did
  not want it cancels, which cancels the party's ticket.
* **Rooms.** Everyone accepted → a match id, seed and per-match ticket key are drawn, slots are
  assigned team by team, and the `Allocator` picks a host. While no host has a free room the
  match waits up to ``allocation_wait``; then, or when every attempt failed, its players get
  `match_cancelled` (not requeued: they may queue again at once).
* **Matches in progress** are also kept in the store, so a player who logs in again (also
  after a lobby restart) gets `match_ready` with a fresh ticket for the same slot. A restarted
  lobby gives hosts one lease to re-register; matches whose rooms are not re-adopted by then
  are aborted.
* **Results.** Ratings change only for a result the room decided by vote (reason "result")
  naming a valid winning team, or an explicit draw (``"winner": nil``); anything else is
  recorded as no contest. Results are idempotent by match id (the store) and acked once
  stored; a store that fails leaves the result unacked, so the host sends it again.
* **Storage answers arrive later.** A request waiting on the store holds its place: a second
  login on the same connection is refused while the first is in flight; a queue request
  holds its ticket id (cancel works) until the ratings come; answers for a connection that
  closed meanwhile are dropped. A failed read answers the request `unavailable`.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from battle.control import (
    ControlMessage,
    ControlProtocolError,
)
from lobby import protocol as proto
from lobby.accounts import (
    SessionTokenError,
    issue_session_token,
    validate_device_id,
    validate_name,
    validate_password,
    verify_session_token,
)
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
    CheckPassword,
    Close,
    CreateAccount,
    CreateDeviceAccount,
    Effect,
    FindAccount,
    HashPassword,
    LoadHistory,
    LoadRatings,
    LoadStats,
    Outbox,
    Output,
    RecordResult,
)
from lobby.ratings import Rating
from lobby.rooms import RoomDesk, Settlement, outcome
from lobby.settings import LobbySettings
from lobby.store import Account, HistoryEntry, MatchRecord

_AuthRequest = (
    proto.Register | proto.RegisterDevice | proto.Login | proto.LoginDevice | proto.Resume
)
_FLOOD_CLOSE = 3
"""A connection whose rate-limit debt reaches this many bursts is closed."""
_ERRORS_FOR = {
    "unknown_mode": proto.ErrorCode.UNKNOWN_MODE,
    "already_queued": proto.ErrorCode.ALREADY_QUEUED,
    "duplicate_ticket": proto.ErrorCode.ALREADY_QUEUED,
    "on_cooldown": proto.ErrorCode.ON_COOLDOWN,
    "not_queued": proto.ErrorCode.NOT_QUEUED,
}


@dataclass(slots=True)
class _Client:
    conn: int
    tokens: float
    refilled_at: float
    hello: bool = False
    player_id: int | None = None
    auth: _AuthRequest | None = None
    """The login or register request in flight (waiting on the store or the KDF)."""
    throttled: bool = False
    """Told `too_fast` since its last admitted message."""


@dataclass(frozen=True, slots=True)
class _PendingQueue:
    """A queue request waiting for its players' ratings."""

    conn: int
    player_id: int
    msg: proto.Queue
    members: tuple[int, ...]
    at: float


@dataclass(slots=True)
class _QueueStats:
    wait: float
    samples: int = 0


class LobbyCore:
    def __init__(
        self,
        settings: LobbySettings,
        *,
        session_secret: bytes,
        now: float,
        matches: Sequence[MatchRecord] = (),
        entropy: Callable[[int], bytes] = os.urandom,
    ) -> None:
        """`matches`: the matches in progress the store kept (from a previous run)."""
        self.settings = settings
        self._secret = session_secret
        self._entropy = entropy
        self.matchmaker = Matchmaker(
            settings.modes,
            interval=settings.match_interval,
            widening=settings.widening,
            ready_timeout=settings.ready_timeout,
            decline_cooldown=settings.decline_cooldown,
        )
        self.out = Outbox()
        self.rooms = RoomDesk(settings, self.out, now=now, matches=matches, entropy=entropy)
        self._clients: dict[int, _Client] = {}
        self._online = self.out.online  # player id -> conn
        self._ticket_of: dict[int, int] = {}  # player id -> matchmaker ticket id
        self._tickets: dict[int, Ticket] = {}
        self._pending: dict[int, _PendingQueue] = {}  # ticket id -> queue request
        self._next_ticket = 1
        self._queue_stats: dict[tuple[str, str], _QueueStats] = {}

    # --- outputs and time ---------------------------------------------------------------------

    def take_outputs(self) -> list[Output]:
        return self.out.take()

    @property
    def counters(self) -> Counter[str]:
        return self.out.counters

    def next_deadline(self) -> float | None:
        times = [
            t
            for t in (self.matchmaker.next_deadline(), self.rooms.next_deadline())
            if t is not None
        ]
        return min(times, default=None)

    def poll(self, now: float) -> None:
        self._run_matchmaker(now)
        self.rooms.poll(now)

    # The room host side lives in RoomDesk; these forward to it.

    def host_connected(self, conn: int, now: float) -> None:
        self.rooms.host_connected(conn, now)

    def host_message(self, conn: int, msg: ControlMessage, now: float) -> None:
        self.rooms.host_message(conn, msg, now)

    def host_error(self, conn: int, exc: ControlProtocolError, now: float) -> None:
        self.rooms.host_error(conn, exc, now)

    def host_closed(self, conn: int, now: float) -> None:
        self.rooms.host_closed(conn, now)

    @property
    def online_players(self) -> int:
        return len(self._online)

    @property
    def queued_tickets(self) -> int:
        """Tickets waiting in a queue or in a ready check (or for their players' ratings)."""
        return len(self._tickets) + len(self._pending)

    # --- client connections -------------------------------------------------------------------

    def client_connected(self, conn: int, now: float) -> None:
        self._clients[conn] = _Client(conn, float(self.settings.burst), now)
        self.out.count("client_connections")

    def client_closed(self, conn: int, now: float) -> None:
        client = self._clients.pop(conn, None)
        if client is None or client.player_id is None:
            return
        pid = client.player_id
        if self._online.get(pid) == conn:
            del self._online[pid]
            self._cancel_queued(pid, now)

    def client_error(self, conn: int, exc: proto.LobbyProtocolError, now: float) -> None:
        """A message the decoder refused: answer it; close if the framing broke."""
        client = self._clients.get(conn)
        if client is None:
            return
        self.out.count(f"client_error_{exc.code}")
        if not exc.fatal and not self._admit(client, now):
            return
        self._send(conn, proto.error_for(exc))
        if exc.fatal:
            self.out.append(Close(conn, f"broken framing: {exc.message}"))

    def client_message(self, conn: int, msg: proto.Message, now: float) -> None:
        client = self._clients.get(conn)
        if client is None or not self._admit(client, now):
            return
        self.out.count("client_messages")
        if isinstance(msg, proto.Hello):
            self._on_hello(client, msg)
        elif not client.hello:
            self._error(conn, msg, proto.ErrorCode.HELLO_REQUIRED, "send hello first")
        elif isinstance(msg, proto.Heartbeat):
            self._send(conn, proto.HeartbeatAck(msg.nonce, msg.rid))
        elif isinstance(msg, _AuthRequest):
            self._on_auth(client, msg, now)
        elif client.player_id is None:
            self._error(conn, msg, proto.ErrorCode.NOT_LOGGED_IN, "log in first")
        else:
            self._on_player_request(client, client.player_id, msg, now)

    # --- answers to effects ------------------------------------------------------------------

    def account_found(self, conn: int, account: Account | None, now: float) -> None:
        client = self._clients.get(conn)
        if client is None or client.auth is None:
            return
        msg = client.auth
        if isinstance(msg, proto.Register | proto.RegisterDevice):
            if account is not None:
                taken = (
                    f"{msg.name!r} is taken"
                    if isinstance(msg, proto.Register)
                    else "device already registered: log in"
                )
                self._auth_error(client, proto.ErrorCode.NAME_TAKEN, taken)
            elif isinstance(msg, proto.Register):
                self.out.append(HashPassword(conn, msg.rid, msg.name, msg.password))
            else:
                self.out.append(CreateDeviceAccount(conn, msg.device_id))
        elif isinstance(msg, proto.Login):
            self.out.append(
                CheckPassword(
                    conn,
                    msg.rid,
                    account.player_id if account else None,
                    msg.password,
                    account.password_hash if account else None,
                )
            )
        elif account is None:
            self.out.count("login_failures")
            unknown = "unknown device" if isinstance(msg, proto.LoginDevice) else "no such account"
            self._auth_error(client, proto.ErrorCode.BAD_CREDENTIALS, unknown)
        else:
            self._login(client, account.player_id, account.name, msg.rid, now)

    def password_hashed(
        self, conn: int, rid: int | None, name: str, encoded: str, now: float
    ) -> None:
        client = self._clients.get(conn)
        if client is None or client.auth is None:
            return
        self.out.append(CreateAccount(conn, name, encoded))

    def account_created(self, conn: int, player_id: int | None, now: float) -> None:
        """`player_id` None: the name was taken meanwhile (by another connection or node)."""
        client = self._clients.get(conn)
        if client is None or client.auth is None:
            return
        msg = client.auth
        name = msg.name if isinstance(msg, proto.Register) else None
        if player_id is None:
            taken = f"{name!r} is taken" if name else "device already registered: log in"
            self._auth_error(client, proto.ErrorCode.NAME_TAKEN, taken)
            return
        self.out.count("accounts_created")
        self._login(client, player_id, name, msg.rid, now)

    def password_checked(
        self, conn: int, rid: int | None, player_id: int | None, ok: bool, now: float
    ) -> None:
        client = self._clients.get(conn)
        if client is None or client.auth is None:
            return
        msg = client.auth
        if not ok or player_id is None or not isinstance(msg, proto.Login):
            self.out.count("login_failures")
            self._auth_error(client, proto.ErrorCode.BAD_CREDENTIALS, "wrong name or password")
            return
        self._login(client, player_id, msg.name, rid, now)

    def ratings_loaded(
        self, conn: int, ticket_id: int, ratings: Mapping[int, Rating], now: float
    ) -> None:
        pending = self._pending.pop(ticket_id, None)
        if pending is not None:
            self._enqueue(ticket_id, pending, ratings, now)

    def stats_loaded(
        self, conn: int, rid: int | None, rating: Rating, played: int, now: float
    ) -> None:
        if conn in self._clients:
            self._send(conn, proto.Rating(rating.mu, rating.sigma, rating.ordinal, played, rid))

    def history_loaded(
        self, conn: int, rid: int | None, entries: Sequence[HistoryEntry], now: float
    ) -> None:
        if conn not in self._clients:
            return
        answer = tuple(
            proto.HistoryEntry(
                h.match_id,
                h.mode,
                outcome(h.result, h.team),
                h.ended_at,
                h.rating_before.ordinal,
                h.rating_after.ordinal,
            )
            for h in entries
        )
        self._send(conn, proto.History(answer, rid))

    def result_recorded(
        self, conn: int, record: MatchRecord, settled: Settlement, fresh: bool, now: float
    ) -> None:
        self.rooms.result_recorded(conn, record, settled, fresh, now)

    def effect_failed(self, effect: Effect, error: str, now: float) -> None:
        """The store (or the KDF) could not do it: answer the request that waits on it."""
        self.out.count("store_failures")
        self.out.note("effect_failed", "warning", effect=type(effect).__name__, error=error)
        if isinstance(effect, RecordResult):
            self.rooms.result_not_recorded(effect.record.match_id, error)
            return
        if isinstance(effect, LoadRatings):
            pending = self._pending.pop(effect.ticket_id, None)
            if pending is None:
                return
            self._forget_pending(effect.ticket_id, pending)
            self._error(
                pending.conn, pending.msg, proto.ErrorCode.UNAVAILABLE, "storage unavailable"
            )
            return
        if isinstance(effect, LoadStats | LoadHistory):
            request = "get_rating" if isinstance(effect, LoadStats) else "get_history"
            if effect.conn in self._clients:
                self.out.count(f"client_error_{proto.ErrorCode.UNAVAILABLE}")
                self._send(
                    effect.conn,
                    _err(proto.ErrorCode.UNAVAILABLE, "storage unavailable", request, effect.rid),
                )
            return
        if isinstance(effect, FindAccount | CreateAccount | CreateDeviceAccount):
            client = self._clients.get(effect.conn)
            if client is not None and client.auth is not None:
                self._auth_error(client, proto.ErrorCode.UNAVAILABLE, "storage unavailable")
        # SaveMatch / EndMatch: the shell retries writes; nothing waits on them here.

    def _auth_error(self, client: _Client, code: proto.ErrorCode, text: str) -> None:
        msg = client.auth
        client.auth = None
        if msg is not None:
            self._error(client.conn, msg, code, text)

    # --- requests -------------------------------------------------------------------------------

    def _admit(self, client: _Client, now: float) -> bool:
        """Token bucket per connection; False (and an answer) when the client is too fast."""
        s = self.settings
        elapsed = max(0.0, now - client.refilled_at)
        client.tokens = min(float(s.burst), client.tokens + elapsed * s.rate)
        client.refilled_at = now
        client.tokens -= 1.0
        if client.tokens >= 0:
            client.throttled = False
            return True
        self.out.count("client_too_fast")
        if client.tokens <= -_FLOOD_CLOSE * s.burst:
            self._send(client.conn, _err(proto.ErrorCode.TOO_FAST, "flooding: closing"))
            self.out.append(Close(client.conn, "flooding"))
        elif not client.throttled:  # one answer per episode, not one per flooded message
            client.throttled = True
            self._send(
                client.conn,
                _err(proto.ErrorCode.TOO_FAST, f"over {s.rate:g} messages/s; slow down"),
            )
        return False

    def _on_hello(self, client: _Client, msg: proto.Hello) -> None:
        s = self.settings
        answer = proto.answer_hello(
            msg,
            server_name=s.server_name,
            heartbeat_interval=s.heartbeat_interval,
            idle_timeout=s.idle_timeout,
        )
        self._send(client.conn, answer)
        if isinstance(answer, proto.Error):
            self.out.append(Close(client.conn, "unsupported protocol version"))
        else:
            client.hello = True

    def _on_auth(
        self,
        client: _Client,
        msg: _AuthRequest,
        now: float,
    ) -> None:
        conn = client.conn
        if client.player_id is not None or client.auth is not None:
            self._error(conn, msg, proto.ErrorCode.ALREADY_LOGGED_IN, "already logged in")
            return
        find: FindAccount
        try:
            if isinstance(msg, proto.Register):
                validate_name(msg.name)
                validate_password(msg.password)
                find = FindAccount(conn, "name", msg.name)
            elif isinstance(msg, proto.Login):
                find = FindAccount(conn, "name", msg.name)
            elif isinstance(msg, proto.RegisterDevice | proto.LoginDevice):
                validate_device_id(msg.device_id)
                find = FindAccount(conn, "device", msg.device_id)
            else:
                player_id = self._verify_token(client, msg, now)
                if player_id is None:
                    return
                find = FindAccount(conn, "id", player_id)
        except ValueError as exc:
            self._error(conn, msg, proto.ErrorCode.BAD_FIELD, str(exc))
            return
        client.auth = msg
        self.out.append(find)

    def _verify_token(self, client: _Client, msg: proto.Resume, now: float) -> int | None:
        try:
            return verify_session_token(self._secret, msg.session_token, now)
        except SessionTokenError as exc:
            self.out.count("resume_failures")
            code = (
                proto.ErrorCode.SESSION_EXPIRED
                if exc.reason == "expired"
                else proto.ErrorCode.BAD_CREDENTIALS
            )
            self._error(client.conn, msg, code, f"session token refused: {exc.reason}")
            return None

    def _login(
        self, client: _Client, player_id: int, name: str | None, rid: int | None, now: float
    ) -> None:
        client.auth = None
        old = self._online.get(player_id)
        if old is not None and old != client.conn:
            self._send(old, proto.Kicked("logged in from another connection"))
            self.out.append(Close(old, "replaced by a newer login"))
            old_client = self._clients.get(old)
            if old_client is not None:
                old_client.player_id = None
        client.player_id = player_id
        self._online[player_id] = client.conn
        self.out.count("logins")
        name = name or f"player-{player_id}"
        expires = now + self.settings.session_lifetime
        token = issue_session_token(self._secret, player_id, expires, nonce=self._entropy(16))
        self._send(client.conn, proto.LoggedIn(player_id, name, token, expires, rid))
        # Pick up where the player was: a ready check, or a match in progress.
        for proposal in self.matchmaker.pending_proposals():
            if player_id in proposal.player_ids:
                self._send(client.conn, _proposed(proposal))
        record = self.rooms.match_for_player(player_id)
        if record is not None:
            self.out.count("tickets_reissued")
            self.rooms.send_match_ready(record, player_id, now)

    def _on_player_request(self, client: _Client, pid: int, msg: proto.Message, now: float) -> None:
        conn = client.conn
        if isinstance(msg, proto.Queue):
            self._on_queue(conn, pid, msg, now)
        elif isinstance(msg, proto.CancelQueue):
            tid = self._ticket_of.get(pid)
            if tid is None:
                self._error(conn, msg, proto.ErrorCode.NOT_QUEUED, "not in a queue")
                return
            self._cancel_ticket(tid, now, rid=msg.rid, by=pid)
        elif isinstance(msg, proto.Accept | proto.Decline):
            try:
                if isinstance(msg, proto.Accept):
                    self.matchmaker.accept(msg.proposal_id, pid, now)
                else:
                    self.matchmaker.decline(msg.proposal_id, pid, now)
            except NotFound as exc:
                self._error(conn, msg, proto.ErrorCode.UNKNOWN_PROPOSAL, str(exc))
                return
            self._run_matchmaker(now)  # the last accept releases the match at once
        elif isinstance(msg, proto.GetRating):
            self.out.append(LoadStats(conn, msg.rid, pid))
        elif isinstance(msg, proto.GetHistory):
            self.out.append(LoadHistory(conn, msg.rid, pid, msg.limit))
        elif isinstance(msg, proto.Logout):
            self._cancel_queued(pid, now)
            del self._online[pid]
            client.player_id = None
            self._send(conn, proto.Kicked("logged out"))
            self.out.append(Close(conn, "logged out"))
        else:  # a server-to-client type cannot reach here: the decoder refuses it
            self._error(conn, msg, proto.ErrorCode.UNKNOWN_TYPE, "not a request")

    def _on_queue(self, conn: int, pid: int, msg: proto.Queue, now: float) -> None:
        if msg.region not in self.settings.regions:
            regions = ", ".join(self.settings.regions)
            self._error(conn, msg, proto.ErrorCode.UNKNOWN_REGION, f"regions: {regions}")
            return
        members = tuple(dict.fromkeys((pid, *(msg.party or ()))))
        for member in members:
            if self.rooms.in_match(member):
                self._error(conn, msg, proto.ErrorCode.IN_MATCH, f"player {member} is in a match")
                return
            if member != pid and member not in self._online:
                self._error(conn, msg, proto.ErrorCode.BAD_PARTY, f"player {member} is offline")
                return
        if any(m in self._ticket_of for m in members):
            busy = next(m for m in members if m in self._ticket_of)
            self._error(conn, msg, proto.ErrorCode.ALREADY_QUEUED, f"player {busy} is queued")
            return
        if all(m.name != msg.mode for m in self.settings.modes):
            self._error(conn, msg, proto.ErrorCode.UNKNOWN_MODE, f"unknown mode {msg.mode!r}")
            return
        # The ticket id is taken now, so the request can be cancelled while ratings load.
        tid = self._next_ticket
        self._next_ticket += 1
        self._pending[tid] = _PendingQueue(conn, pid, msg, members, now)
        for member in members:
            self._ticket_of[member] = tid
        self.out.append(LoadRatings(conn, tid, members))

    def _enqueue(
        self, tid: int, pending: _PendingQueue, ratings: Mapping[int, Rating], now: float
    ) -> None:
        conn, pid, msg, members = pending.conn, pending.player_id, pending.msg, pending.members
        self._forget_pending(tid, pending)
        # Things may have changed while the ratings loaded.
        gone = next(
            (m for m in members if self._online.get(m) is None or self.rooms.in_match(m)), None
        )
        if gone is not None or any(m not in ratings for m in members):
            self._error(conn, msg, proto.ErrorCode.BAD_PARTY, f"player {gone} is offline or busy")
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
            self._error(conn, msg, code, text)
            return
        self._tickets[ticket.ticket_id] = ticket
        for member in members:
            self._ticket_of[member] = ticket.ticket_id
        stats = self._queue_stats.get((msg.mode, msg.region))
        wait = stats.wait if stats else self.settings.match_interval
        self.out.count("tickets_queued")
        for member in members:
            rid = msg.rid if member == pid else None
            self._push(member, proto.Queued(ticket.ticket_id, msg.mode, msg.region, wait, rid))

    def _forget_pending(self, tid: int, pending: _PendingQueue) -> None:
        for member in pending.members:
            if self._ticket_of.get(member) == tid:
                del self._ticket_of[member]

    def _cancel_queued(self, pid: int, now: float) -> None:
        """Drop the player's ticket if it is waiting in a queue (not in a ready check)."""
        tid = self._ticket_of.get(pid)
        if tid is not None and (
            tid in self._pending or self.matchmaker.queued_ticket(tid) is not None
        ):
            self._cancel_ticket(tid, now)

    def _cancel_ticket(
        self, tid: int, now: float, *, rid: int | None = None, by: int | None = None
    ) -> None:
        """Cancel a party's ticket; every member is told (the one who asked with `rid`)."""
        pending = self._pending.pop(tid, None)
        if pending is not None:  # still loading ratings: the matchmaker never saw it
            self._forget_pending(tid, pending)
            for member in pending.members:
                self._push(member, proto.QueueCancelled(tid, rid if member == by else None))
            return
        in_check = self.matchmaker.queued_ticket(tid) is None
        try:
            self.matchmaker.cancel(tid, now)
        except NotFound:
            return
        # Taken before the matchmaker runs: a dropped ticket is forgotten there.
        ticket = self._tickets.pop(tid, None)
        if in_check:  # counts as a decline: ProposalCancelled tells everyone
            self._run_matchmaker(now)
        if ticket is None:
            return
        for member in ticket.player_ids:
            if self._ticket_of.get(member) == tid:
                del self._ticket_of[member]
            self._push(member, proto.QueueCancelled(tid, rid if member == by else None))

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
                    self._push(pid, proposed)
            elif isinstance(event, ProposalCancelled):
                self._on_proposal_cancelled(event)
            elif isinstance(event, MatchFound):
                for t in event.proposal.tickets:
                    self._forget_ticket(t.ticket_id)
                self.rooms.start_match(event.proposal, now)

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
        why = {
            "declined": "a player declined",
            "timeout": "not everyone accepted in time",
            "cancelled": "a player left the queue",
        }[event.reason]
        for pid in p.player_ids:
            self._push(pid, proto.MatchCancelled(p.proposal_id, why, pid in requeued))

    def _forget_ticket(self, tid: int) -> None:
        ticket = self._tickets.pop(tid, None)
        if ticket is not None:
            for pid in ticket.player_ids:
                if self._ticket_of.get(pid) == tid:
                    del self._ticket_of[pid]

    # --- helpers ----------------------------------------------------------------------------------

    def _send(self, conn: int, message: proto.ServerMessage) -> None:
        self.out.send(conn, message)

    def _push(self, pid: int, message: proto.ServerMessage) -> None:
        self.out.push(pid, message)

    def _error(self, conn: int, msg: proto.Message, code: proto.ErrorCode, text: str) -> None:
        self.out.count(f"client_error_{code}")
        self._send(conn, _err(code, text, proto.type_name(msg), msg.rid))


def _err(
    code: proto.ErrorCode, text: str, request_type: str | None = None, rid: int | None = None
) -> proto.Error:
    return proto.Error(code, text, request_type, rid)


def _proposed(p: Proposal) -> proto.MatchProposed:
    return proto.MatchProposed(p.proposal_id, p.mode, p.teams, p.expires_at)
