"""The lobby node's core: sessions, queues, ready checks, rooms and results. Sans-IO.

No sockets, no clock, no threads: the shell feeds in decoded client and control messages with
``now`` (unix seconds), calls ``poll(now)`` by ``next_deadline()``, and carries out what
``take_outputs()`` returns (`outputs.py`). Storage is the synchronous `LobbyStore`. The
password KDF is the one slow step; it is handed out as a HashPassword/CheckPassword output
and its answer comes back through ``password_hashed``/``password_checked``.

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
* **Matches in progress** live in the store, so a player who logs in again (here or, later, on
  another lobby node) gets `match_ready` with a fresh ticket for the same slot. A restarted
  lobby gives hosts one lease to re-register; matches whose rooms are not re-adopted by then
  are aborted.
* **Results.** Ratings change only for a result the room decided by vote (reason "result")
  naming a valid winning team, or an explicit draw (``"winner": nil``); anything else is
  recorded as no contest. Results are idempotent by match id (the store) and always acked.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

from battle.control import (
    ControlMessage,
    ControlProtocolError,
)
from lobby import protocol as proto
from lobby.accounts import (
    SessionTokenError,
    issue_session_token,
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
    HashPassword,
    Outbox,
    Output,
)
from lobby.rooms import RoomDesk, outcome
from lobby.settings import LobbySettings
from lobby.store import LobbyStore, NameTaken

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
    authenticating: bool = False
    throttled: bool = False
    """Told `too_fast` since its last admitted message."""


@dataclass(slots=True)
class _QueueStats:
    wait: float
    samples: int = 0


class LobbyCore:
    def __init__(
        self,
        settings: LobbySettings,
        store: LobbyStore,
        *,
        session_secret: bytes,
        now: float,
        entropy: Callable[[int], bytes] = os.urandom,
    ) -> None:
        self.settings = settings
        self.store = store
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
        self.rooms = RoomDesk(settings, store, self.out, now=now, entropy=entropy)
        self._clients: dict[int, _Client] = {}
        self._online = self.out.online  # player id -> conn
        self._ticket_of: dict[int, int] = {}  # player id -> matchmaker ticket id
        self._tickets: dict[int, Ticket] = {}
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
        """Tickets waiting in a queue or in a ready check."""
        return len(self._tickets)

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

    def password_hashed(
        self, conn: int, rid: int | None, name: str, encoded: str, now: float
    ) -> None:
        client = self._clients.get(conn)
        if client is None:
            return
        client.authenticating = False
        try:
            player_id = self.store.create_account(name, encoded)
        except NameTaken:
            self._send(
                conn, _err(proto.ErrorCode.NAME_TAKEN, f"{name!r} is taken", "register", rid)
            )
            return
        self.out.count("accounts_created")
        self._login(client, player_id, rid, now)

    def password_checked(
        self, conn: int, rid: int | None, player_id: int | None, ok: bool, now: float
    ) -> None:
        client = self._clients.get(conn)
        if client is None:
            return
        client.authenticating = False
        if not ok or player_id is None:
            self.out.count("login_failures")
            self._send(
                conn, _err(proto.ErrorCode.BAD_CREDENTIALS, "wrong name or password", "login", rid)
            )
            return
        self._login(client, player_id, rid, now)

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
        if client.player_id is not None or client.authenticating:
            self._error(conn, msg, proto.ErrorCode.ALREADY_LOGGED_IN, "already logged in")
            return
        try:
            if isinstance(msg, proto.Register):
                validate_name(msg.name)
                validate_password(msg.password)
                if self.store.account_by_name(msg.name) is not None:
                    self._error(conn, msg, proto.ErrorCode.NAME_TAKEN, f"{msg.name!r} is taken")
                    return
                client.authenticating = True
                self.out.append(HashPassword(conn, msg.rid, msg.name, msg.password))
            elif isinstance(msg, proto.Login):
                account = self.store.account_by_name(msg.name)
                client.authenticating = True
                self.out.append(
                    CheckPassword(
                        conn,
                        msg.rid,
                        account.player_id if account else None,
                        msg.password,
                        account.password_hash if account else None,
                    )
                )
            elif isinstance(msg, proto.RegisterDevice):
                if self.store.account_by_device(msg.device_id) is not None:
                    self._error(
                        conn, msg, proto.ErrorCode.NAME_TAKEN, "device already registered: log in"
                    )
                    return
                player_id = self.store.create_device_account(msg.device_id)
                self.out.count("accounts_created")
                self._login(client, player_id, msg.rid, now)
            elif isinstance(msg, proto.LoginDevice):
                account = self.store.account_by_device(msg.device_id)
                if account is None:
                    self.out.count("login_failures")
                    self._error(conn, msg, proto.ErrorCode.BAD_CREDENTIALS, "unknown device")
                    return
                self._login(client, account.player_id, msg.rid, now)
            else:
                self._resume(client, msg, now)
        except ValueError as exc:
            self._error(conn, msg, proto.ErrorCode.BAD_FIELD, str(exc))

    def _resume(self, client: _Client, msg: proto.Resume, now: float) -> None:
        try:
            player_id = verify_session_token(self._secret, msg.session_token, now)
        except SessionTokenError as exc:
            self.out.count("resume_failures")
            code = (
                proto.ErrorCode.SESSION_EXPIRED
                if exc.reason == "expired"
                else proto.ErrorCode.BAD_CREDENTIALS
            )
            self._error(client.conn, msg, code, f"session token refused: {exc.reason}")
            return
        if self.store.account(player_id) is None:
            self._error(client.conn, msg, proto.ErrorCode.BAD_CREDENTIALS, "no such account")
            return
        self._login(client, player_id, msg.rid, now)

    def _login(self, client: _Client, player_id: int, rid: int | None, now: float) -> None:
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
        account = self.store.account(player_id)
        name = account.name if account is not None and account.name else f"player-{player_id}"
        expires = now + self.settings.session_lifetime
        token = issue_session_token(self._secret, player_id, expires, nonce=self._entropy(16))
        self._send(client.conn, proto.LoggedIn(player_id, name, token, expires, rid))
        # Pick up where the player was: a ready check, or a match in progress.
        for proposal in self.matchmaker.pending_proposals():
            if player_id in proposal.player_ids:
                self._send(client.conn, _proposed(proposal))
        record = self.store.match_for_player(player_id)
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
            r = self.store.rating(pid)
            played = self.store.matches_played(pid)
            self._send(conn, proto.Rating(r.mu, r.sigma, r.ordinal, played, msg.rid))
        elif isinstance(msg, proto.GetHistory):
            entries = tuple(
                proto.HistoryEntry(
                    h.match_id,
                    h.mode,
                    outcome(h.result, h.team),
                    h.ended_at,
                    h.rating_before.ordinal,
                    h.rating_after.ordinal,
                )
                for h in self.store.history(pid, msg.limit)
            )
            self._send(conn, proto.History(entries, msg.rid))
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
        ratings = {m: self.store.rating(m) for m in members}
        ticket = Ticket(
            self._next_ticket,
            tuple(QueuedPlayer(m, ratings[m].ordinal, ratings[m].sigma) for m in members),
            msg.mode,
            msg.region,
            now,
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
        self._next_ticket += 1
        self._tickets[ticket.ticket_id] = ticket
        for member in members:
            self._ticket_of[member] = ticket.ticket_id
        stats = self._queue_stats.get((msg.mode, msg.region))
        wait = stats.wait if stats else self.settings.match_interval
        self.out.count("tickets_queued")
        for member in members:
            rid = msg.rid if member == pid else None
            self._push(member, proto.Queued(ticket.ticket_id, msg.mode, msg.region, wait, rid))

    def _cancel_queued(self, pid: int, now: float) -> None:
        """Drop the player's ticket if it is waiting in a queue (not in a ready check)."""
        tid = self._ticket_of.get(pid)
        if tid is not None and self.matchmaker.queued_ticket(tid) is not None:
            self._cancel_ticket(tid, now)

    def _cancel_ticket(
        self, tid: int, now: float, *, rid: int | None = None, by: int | None = None
    ) -> None:
        """Cancel a party's ticket; every member is told (the one who asked with `rid`)."""
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
