"""The lobby node's core: sessions here, and the matchmaking desk where it runs. Sans-IO.

No sockets, no clock, no threads: the shell feeds in decoded client and control messages with
``now`` (unix seconds), calls ``poll(now)`` by ``next_deadline()``, and carries out what
``take_outputs()`` returns (`outputs.py`). Storage and the password KDF are effects: the core
hands out a FindAccount, LoadRatings, HashPassword, ... output and its answer comes back
through the method of the same step (``account_found``, ``ratings_loaded``,
``password_hashed``, ...) or ``effect_failed``, so the core never waits on a disk, a network
store or a slow hash. The matches in progress are held in memory by `RoomDesk` and written
through; the shell passes in the ones the store kept when it starts.

Queues, ready checks and rooms live in `QueueDesk` (queuedesk.py). On a single node the core
owns one from the start. On a cluster (``node_id`` given) only the node holding the
matchmaker lease has one (`become_matchmaker`); the others hand their players' queue
requests, logins and logouts on as `Forward` outputs, and take the desk's answers back
through `delivered`.

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
* **Results** are rated as `results.py` says, idempotent by match id (the store), and acked
  once stored; a store that fails leaves the result unacked, so the host sends it again.
* **Storage answers arrive later.** A request waiting on the store holds its place: a second
  login on the same connection is refused while the first is in flight; a queue request
  holds its ticket id (cancel works) until the ratings come; answers for a connection that
  closed meanwhile are dropped. A failed read answers the request `unavailable`.
* **No matchmaker reachable** (a cluster between two lease holders): queue requests are
  answered `unavailable`; logins still work, and the next matchmaker is told who is here.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from battle.control import ControlMessage, ControlProtocolError
from lobby import protocol as proto
from lobby.accounts import (
    SessionTokenError,
    issue_session_token,
    validate_device_id,
    validate_name,
    validate_password,
    verify_session_token,
)
from lobby.matchmaker import Ticket
from lobby.outputs import (
    CheckPassword,
    ClaimTickets,
    Close,
    CloseControl,
    CreateAccount,
    CreateDeviceAccount,
    Effect,
    FindAccount,
    Forward,
    HashPassword,
    LoadHistory,
    LoadRatings,
    LoadStats,
    Outbox,
    Output,
    QueueRequest,
    RecordResult,
)
from lobby.queuedesk import LOCAL, QueueDesk
from lobby.ratings import Rating
from lobby.results import Settlement, outcome
from lobby.settings import LobbySettings
from lobby.store import Account, HistoryEntry, MatchRecord

_AuthRequest = (
    proto.Register | proto.RegisterDevice | proto.Login | proto.LoginDevice | proto.Resume
)
_FLOOD_CLOSE = 3
"""A connection whose rate-limit debt reaches this many bursts is closed."""


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


class LobbyCore:
    def __init__(
        self,
        settings: LobbySettings,
        *,
        session_secret: bytes,
        now: float,
        matches: Sequence[MatchRecord] = (),
        entropy: Callable[[int], bytes] = os.urandom,
        node_id: str | None = None,
    ) -> None:
        """`matches`: the matches in progress the store kept (from a previous run).
        `node_id`: this node's id on a cluster; None for a single node, which runs its own
        matchmaking desk at once (`matches` go to it)."""
        self.settings = settings
        self._secret = session_secret
        self._entropy = entropy
        self.node_id = node_id
        self.out = Outbox()
        self.desk: QueueDesk | None = None
        if node_id is None:
            self.desk = QueueDesk(settings, self.out, now=now, matches=matches, entropy=entropy)
        self._clients: dict[int, _Client] = {}
        self._online = self.out.online  # player id -> conn

    # --- outputs and time ---------------------------------------------------------------------

    def take_outputs(self) -> list[Output]:
        return self.out.take()

    @property
    def counters(self) -> Counter[str]:
        return self.out.counters

    def next_deadline(self) -> float | None:
        return self.desk.next_deadline() if self.desk is not None else None

    def poll(self, now: float) -> None:
        if self.desk is not None:
            self.desk.poll(now)

    @property
    def online_players(self) -> int:
        """Players connected to this node."""
        return len(self._online)

    @property
    def queued_tickets(self) -> int:
        """Tickets waiting in a queue or in a ready check (0 where the desk is elsewhere)."""
        return self.desk.queued_tickets if self.desk is not None else 0

    # --- the matchmaking desk -----------------------------------------------------------------

    def become_matchmaker(
        self,
        generation: int,
        matches: Sequence[MatchRecord],
        tickets: Sequence[Ticket],
        now: float,
    ) -> None:
        """This node took the matchmaker lease: run the desk from what the store kept. Players
        here are known at once; other nodes announce theirs, and kept tickets wait
        ``host_lease`` seconds for them."""
        self.desk = QueueDesk(
            self.settings,
            self.out,
            now=now,
            matches=matches,
            generation=generation,
            entropy=self._entropy,
            kick_local=self._kick_local,
        )
        for pid in self._online:
            self.desk.player_online(pid, LOCAL, now, resume=False)
        self.desk.restore(tickets, self.settings.host_lease, now)
        self.out.note("matchmaker_started", generation=generation, tickets=len(tickets))

    def stop_matchmaking(self, now: float) -> None:
        """The lease is gone: drop the desk (the next matchmaker takes over from the store)."""
        if self.desk is None:
            return
        self.desk = None
        self.out.remote.clear()
        self.out.held = None
        self.out.note("matchmaker_stopped")

    def forwarded(self, node: str, forward: Forward, now: float) -> None:
        """A player event from another node, for the desk here."""
        desk = self.desk
        if desk is None:
            return  # not (or no longer) the matchmaker: that node times the request out
        pid = forward.player_id
        if forward.kind in ("online", "present"):
            desk.player_online(pid, node, now, resume=forward.kind == "online")
        elif forward.kind == "offline":
            desk.player_offline(pid, node, now)
        elif forward.request is not None:
            if not desk.online(pid):  # its node's announcement is still on the way
                desk.player_online(pid, node, now, resume=False)
            desk.request(pid, forward.request, now)

    def node_gone(self, node: str, now: float) -> None:
        """Another lobby node died: its players are offline."""
        if self.desk is not None:
            self.desk.node_gone(node, now)

    def delivered(self, pid: int, message: proto.ServerMessage, now: float) -> None:
        """A message from the desk on another node, for a player connected here."""
        if isinstance(message, proto.Kicked):  # logged in on another node
            self._kick_local(pid, now)
            return
        conn = self._online.get(pid)
        if conn is not None:
            self._send(conn, message)

    def _kick_local(self, pid: int, now: float) -> None:
        """The player logged in on another node: their connection here goes."""
        conn = self._online.pop(pid, None)
        if conn is None:
            return
        self._send(conn, proto.Kicked("logged in from another connection"))
        self.out.append(Close(conn, "replaced by a newer login"))
        client = self._clients.get(conn)
        if client is not None:
            client.player_id = None

    def forward_failed(self, forward: Forward) -> None:
        """No matchmaker could be reached for `forward`: answer its request."""
        request = forward.request
        conn = self._online.get(forward.player_id)
        if request is None or conn is None:
            return
        self._error(conn, request, proto.ErrorCode.UNAVAILABLE, "no matchmaker: try again")

    def announce(self) -> None:
        """Tell a new matchmaker elsewhere who is connected here."""
        if self.desk is None:
            for pid in self._online:
                self.out.append(Forward(pid, "present"))

    def _to_desk(
        self, pid: int, kind: str, now: float, request: QueueRequest | None = None
    ) -> None:
        desk = self.desk
        if desk is None:
            if self.node_id is None:
                return
            self.out.append(Forward(pid, kind, request))  # type: ignore[arg-type]
        elif kind == "online":
            desk.player_online(pid, LOCAL, now)
        elif kind == "offline":
            desk.player_offline(pid, LOCAL, now)
        elif request is not None:
            desk.request(pid, request, now)

    # The room host side lives in the desk's RoomDesk; these forward to it.

    def host_connected(self, conn: int, now: float) -> None:
        if self.desk is None:
            self.out.append(CloseControl(conn, "not the matchmaker: try another lobby node"))
            return
        self.desk.rooms.host_connected(conn, now)

    def host_message(self, conn: int, msg: ControlMessage, now: float) -> None:
        if self.desk is not None:
            self.desk.rooms.host_message(conn, msg, now)

    def host_error(self, conn: int, exc: ControlProtocolError, now: float) -> None:
        if self.desk is not None:
            self.desk.rooms.host_error(conn, exc, now)

    def host_closed(self, conn: int, now: float) -> None:
        if self.desk is not None:
            self.desk.rooms.host_closed(conn, now)

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
            self._to_desk(pid, "offline", now)

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

    def ratings_loaded(self, ticket_id: int, ratings: Mapping[int, Rating], now: float) -> None:
        if self.desk is not None:
            self.desk.ratings_loaded(ticket_id, ratings, now)

    def match_saved(self, match_id: int, now: float) -> None:
        if self.desk is not None:
            self.desk.rooms.match_saved(match_id, now)

    def ticket_saved(self, ticket_id: int, now: float) -> None:
        if self.desk is not None:
            self.desk.ticket_saved(ticket_id)

    def tickets_claimed(self, proposal_id: int, ok: bool, now: float) -> None:
        if self.desk is not None:
            self.desk.tickets_claimed(proposal_id, ok, now)

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
        if self.desk is not None:
            self.desk.rooms.result_recorded(conn, record, settled, fresh, now)

    def effect_failed(self, effect: Effect, error: str, now: float) -> None:
        """The store (or the KDF) could not do it: answer the request that waits on it."""
        self.out.count("store_failures")
        self.out.note("effect_failed", "warning", effect=type(effect).__name__, error=error)
        desk = self.desk
        if isinstance(effect, RecordResult):
            if desk is not None:
                desk.rooms.result_not_recorded(effect.record.match_id, error)
            return
        if isinstance(effect, LoadRatings):
            if desk is not None:
                desk.ratings_failed(effect.ticket_id)
            return
        if isinstance(effect, ClaimTickets):
            if desk is not None:
                desk.tickets_claimed(effect.proposal_id, False, now)
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
        # The other writes: the shell retries them; nothing waits on them here.

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
        # The desk picks up where the player was: a ready check, or a match in progress.
        self._to_desk(player_id, "online", now)

    def _on_player_request(self, client: _Client, pid: int, msg: proto.Message, now: float) -> None:
        conn = client.conn
        if isinstance(msg, proto.Queue | proto.CancelQueue | proto.Accept | proto.Decline):
            if self.desk is None and self.node_id is None:
                self._error(conn, msg, proto.ErrorCode.UNAVAILABLE, "no matchmaker")
            else:
                self._to_desk(pid, "request", now, msg)
        elif isinstance(msg, proto.GetRating):
            self.out.append(LoadStats(conn, msg.rid, pid))
        elif isinstance(msg, proto.GetHistory):
            self.out.append(LoadHistory(conn, msg.rid, pid, msg.limit))
        elif isinstance(msg, proto.Logout):
            self._to_desk(pid, "offline", now)  # first: it tells the player what it cancels
            del self._online[pid]
            client.player_id = None
            self._send(conn, proto.Kicked("logged out"))
            self.out.append(Close(conn, "logged out"))
        else:  # a server-to-client type cannot reach here: the decoder refuses it
            self._error(conn, msg, proto.ErrorCode.UNKNOWN_TYPE, "not a request")

    # --- helpers ----------------------------------------------------------------------------------

    def _send(self, conn: int, message: proto.ServerMessage) -> None:
        self.out.send(conn, message)

    def _error(self, conn: int, msg: proto.Message, code: proto.ErrorCode, text: str) -> None:
        self.out.count(f"client_error_{code}")
        self._send(conn, _err(code, text, proto.type_name(msg), msg.rid))


def _err(
    code: proto.ErrorCode, text: str, request_type: str | None = None, rid: int | None = None
) -> proto.Error:
    return proto.Error(code, text, request_type, rid)
