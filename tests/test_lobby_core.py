"""The sans-IO lobby core: sessions, queues, ready checks, rooms and results.

Plain calls with a fake clock and seeded entropy: no sockets, no event loop. Room hosts are
played by hand through `host_message`; password hashing uses tiny scrypt parameters. Storage
effects are carried out at once by the shell's own `EffectRunner` over SQLite in memory
(`LocalStore` never suspends); the KDF steps are left for each test to answer.
"""

from __future__ import annotations

import itertools
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import TypeVar

from battle.config import RosterEntry
from battle.control import (
    ControlFramingError,
    ControlMessage,
    ControlProtocolError,
    CreateRoom,
    EndRoom,
    Ping,
    Pong,
    Register,
    Registered,
    Rejected,
    ResultAck,
    RoomCreated,
    RoomResult,
    room_config_to_plain,
)
from battle.control import Heartbeat as HostHeartbeat
from battle.ticket import open_ticket
from lobby.accounts import hash_password, issue_session_token, verify_password, verify_session_token
from lobby.core import LobbyCore
from lobby.effects import EffectRunner, run_now
from lobby.outputs import (
    CheckPassword,
    Close,
    CloseControl,
    Effect,
    EndMatch,
    HashPassword,
    LoadRatings,
    Note,
    Output,
    RecordResult,
    SaveMatch,
    SaveTicket,
    Send,
    SendControl,
)
from lobby.protocol import (
    PROTOCOL_VERSION,
    Accept,
    CancelQueue,
    Decline,
    Error,
    ErrorCode,
    GetHistory,
    GetRating,
    Heartbeat,
    HeartbeatAck,
    Hello,
    History,
    Kicked,
    LobbyFramingError,
    LobbyProtocolError,
    LoggedIn,
    Login,
    LoginDevice,
    Logout,
    MatchAborted,
    MatchCancelled,
    MatchEnded,
    MatchProposed,
    MatchReady,
    Message,
    Queue,
    QueueCancelled,
    Queued,
    Rating,
    RegisterDevice,
    Resume,
    ServerMessage,
    Welcome,
)
from lobby.protocol import Register as ClientRegister
from lobby.queuedesk import QueueDesk
from lobby.ratings import default_rating
from lobby.settings import LobbySettings
from lobby.sqlitestore import LocalStore, SqliteStore

SECRET = bytes(range(32))
SALT = b"\x11" * 16
T0 = 1_700_000_000.0
PASSWORD = "correct horse"
REGION = "local"
UDP = ("10.0.0.5", 5000)

M = TypeVar("M")


def seeded(seed: int) -> Callable[[int], bytes]:
    return random.Random(seed).randbytes


def fast_hash(password: str) -> str:
    return hash_password(password, SALT, n=2**4, r=1, p=1)


async def _hash(password: str) -> str:
    return fast_hash(password)


async def _check(password: str, encoded: str | None) -> bool:
    return encoded is not None and verify_password(password, encoded)


# --- output inspection ------------------------------------------------------------------------


def sent(outs: Sequence[Output], conn: int) -> list[ServerMessage]:
    return [o.message for o in outs if isinstance(o, Send) and o.conn == conn]


def only(outs: Sequence[Output], conn: int, cls: type[M]) -> M:
    """The one message sent to `conn`, which must be a `cls`."""
    msgs = sent(outs, conn)
    assert len(msgs) == 1, msgs
    msg = msgs[0]
    assert isinstance(msg, cls), msg
    return msg


def error(outs: Sequence[Output], conn: int) -> Error:
    return only(outs, conn, Error)


def controls(outs: Sequence[Output], conn: int) -> list[ControlMessage]:
    return [o.message for o in outs if isinstance(o, SendControl) and o.conn == conn]


def closes(outs: Sequence[Output]) -> list[int]:
    return [o.conn for o in outs if isinstance(o, Close)]


def notes(outs: Sequence[Output], event: str) -> list[Note]:
    return [o for o in outs if isinstance(o, Note) and o.event == event]


def _is(o: Output, cls: type[object]) -> bool:
    return isinstance(o, Send) and isinstance(o.message, cls)


def of_type(items: Sequence[object], cls: type[M]) -> list[M]:
    return [x for x in items if isinstance(x, cls)]


# --- a lobby driven by hand -------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Player:
    conn: int
    pid: int
    token: bytes


@dataclass(frozen=True, slots=True)
class Started:
    host: int
    create: CreateRoom
    ready: dict[int, MatchReady]
    """By player id."""


class Lobby:
    def __init__(
        self,
        settings: LobbySettings | None = None,
        *,
        store: SqliteStore | None = None,
        seed: int = 7,
        now: float = T0,
        first_conn: int = 1,
    ) -> None:
        self.settings = settings if settings is not None else LobbySettings()
        self.store = store if store is not None else SqliteStore(":memory:")
        self.now = now
        self.core = LobbyCore(
            self.settings,
            session_secret=SECRET,
            now=now,
            matches=self.store.matches_in_progress(),
            entropy=seeded(seed),
        )
        self.effects = EffectRunner(
            self.core,
            LocalStore(self.store),
            clock=lambda: self.now,
            hash_password=_hash,
            check_password=_check,
        )
        self.held: list[Effect] = []
        """Storage effects kept back while `hold_effects` is set, in order."""
        self.hold_effects = False
        self.hold_types: tuple[type[object], ...] = (object,)
        """Which effects `hold_effects` keeps back (all by default)."""
        self._conns = itertools.count(first_conn)
        self._host_conns = itertools.count(first_conn + 1000)

    @property
    def desk(self) -> QueueDesk:
        assert self.core.desk is not None
        return self.core.desk

    def out(self) -> list[Output]:
        """The core's outputs, its storage effects carried out (their answers' outputs come
        after the rest, as they would from the shell)."""
        result: list[Output] = []
        pending = self.core.take_outputs()
        while pending:
            o = pending.pop(0)
            if not isinstance(o, Effect):
                result.append(o)
            elif self.hold_effects and isinstance(o, self.hold_types):
                self.held.append(o)
            else:
                run_now(self.effects.run(o))
                pending.extend(self.core.take_outputs())
        return result

    def release(self) -> list[Output]:
        """Carry out the held storage effects, in order."""
        self.hold_effects = False
        held, self.held = self.held, []
        for effect in held:
            run_now(self.effects.run(effect))
        return self.out()

    def at(self, dt: float) -> float:
        self.now += dt
        return self.now

    # clients

    def connect(self, *, hello: bool = True) -> int:
        conn = next(self._conns)
        self.core.client_connected(conn, self.now)
        if hello:
            only(self.call(conn, Hello(PROTOCOL_VERSION, "test", "1.0")), conn, Welcome)
        return conn

    def call(self, conn: int, msg: Message) -> list[Output]:
        self.core.client_message(conn, msg, self.now)
        return self.out()

    def close(self, conn: int) -> list[Output]:
        self.core.client_closed(conn, self.now)
        return self.out()

    def hashed(self, req: HashPassword) -> list[Output]:
        run_now(self.effects.run(req))
        return self.out()

    def checked(self, req: CheckPassword) -> list[Output]:
        run_now(self.effects.run(req))
        return self.out()

    def register(self, name: str, password: str = PASSWORD) -> Player:
        conn = self.connect()
        (req,) = of_type(self.call(conn, ClientRegister(name, password)), HashPassword)
        li = only(self.hashed(req), conn, LoggedIn)
        return Player(conn, li.player_id, li.session_token)

    def device(self, device_id: str) -> Player:
        conn = self.connect()
        li = only(self.call(conn, RegisterDevice(device_id)), conn, LoggedIn)
        return Player(conn, li.player_id, li.session_token)

    def players(self, n: int, prefix: str = "dev") -> list[Player]:
        return [self.device(f"{prefix}-{i}") for i in range(n)]

    def relogin(self, device_id: str) -> tuple[int, list[Output]]:
        conn = self.connect()
        return conn, self.call(conn, LoginDevice(device_id))

    # room hosts

    def host(
        self, host_id: str = "h1", capacity: int = 4, rooms: tuple[int, ...] = ()
    ) -> tuple[int, list[Output]]:
        conn = next(self._host_conns)
        self.core.host_connected(conn, self.now)
        msg = Register(host_id, UDP[0], UDP[1], capacity, 0, "1.0", rooms)
        return conn, self.to_host(conn, msg)

    def to_host(self, conn: int, msg: ControlMessage) -> list[Output]:
        self.core.host_message(conn, msg, self.now)
        return self.out()

    def beat(self, conn: int, load: int = 0) -> list[Output]:
        return self.to_host(conn, HostHeartbeat(load, load, 0, False))

    def poll(self, dt: float = 0.0) -> list[Output]:
        self.core.poll(self.at(dt))
        return self.out()

    # matches

    def propose(self, players: Sequence[Player], mode: str) -> MatchProposed:
        for p in players:
            only(self.call(p.conn, Queue(mode, REGION)), p.conn, Queued)
        outs = self.poll(self.settings.match_interval)
        proposals = [only(outs, p.conn, MatchProposed) for p in players]
        assert all(pr == proposals[0] for pr in proposals)
        return proposals[0]

    def accept_all(self, players: Sequence[Player], proposal: MatchProposed) -> list[Output]:
        outs: list[Output] = []
        for p in players:
            outs += self.call(p.conn, Accept(proposal.proposal_id))
        return outs

    def start(self, players: Sequence[Player], mode: str, host: int) -> Started:
        proposal = self.propose(players, mode)
        (create,) = of_type(controls(self.accept_all(players, proposal), host), CreateRoom)
        outs = self.to_host(host, RoomCreated(create.request_id, create.room_id, *UDP))
        ready = {p.pid: only(outs, p.conn, MatchReady) for p in players}
        return Started(host, create, ready)

    def result(
        self, started: Started, result: dict[str, object], reason: str = "result"
    ) -> list[Output]:
        c = started.create
        return self.to_host(
            started.host, RoomResult(c.match_id, c.room_id, result, (), 900, reason, 0)
        )


def check_ticket(create: CreateRoom, ready: MatchReady, pid: int, now: float) -> RosterEntry:
    """The ticket opens with the match's key and names this player's seat; returns the seat."""
    ticket = open_ticket(create.ticket_key, ready.ticket, room_id=create.room_id, now=now)
    seat = next(e for e in create.roster if e.player_id == pid)
    assert (ticket.match_id, ticket.room_id, ticket.player_id) == (
        create.match_id,
        create.room_id,
        pid,
    )
    assert (ticket.slot, ticket.team) == (seat.slot, seat.team) == (ready.slot, ready.team)
    assert (ticket.keys.c2s, ticket.keys.s2c) == (ready.c2s_key, ready.s2c_key)
    assert ready.match_id == create.match_id
    return seat


# --- hello, heartbeat -------------------------------------------------------------------------


def test_hello_is_required_before_anything_else() -> None:
    lobby = Lobby()
    conn = lobby.connect(hello=False)
    for msg in (Heartbeat(1, rid=3), RegisterDevice("dev-x", rid=4), Queue("1v1", REGION)):
        e = error(lobby.call(conn, msg), conn)
        assert (e.code, e.rid) == (ErrorCode.HELLO_REQUIRED, msg.rid)
    assert lobby.store.account_by_device("dev-x") is None
    welcome = only(lobby.call(conn, Hello(PROTOCOL_VERSION, "c", "1", rid=9)), conn, Welcome)
    assert welcome.rid == 9
    assert welcome.heartbeat_interval == lobby.settings.heartbeat_interval
    assert welcome.idle_timeout == lobby.settings.idle_timeout
    assert only(lobby.call(conn, Heartbeat(5)), conn, HeartbeatAck).nonce == 5


def test_unsupported_version_is_answered_then_closed() -> None:
    lobby = Lobby()
    conn = lobby.connect(hello=False)
    outs = lobby.call(conn, Hello(PROTOCOL_VERSION + 1, "c", "1", rid=2))
    assert len(outs) == 2
    assert isinstance(outs[0], Send) and isinstance(outs[0].message, Error)
    assert outs[0].message.code == ErrorCode.UNSUPPORTED_VERSION
    assert outs[0].message.rid == 2
    assert outs[1] == Close(conn, "unsupported protocol version")
    # still not past hello
    assert error(lobby.call(conn, Heartbeat(1)), conn).code == ErrorCode.HELLO_REQUIRED


def test_heartbeat_is_acked_with_its_nonce_and_rid() -> None:
    lobby = Lobby()
    conn = lobby.connect()
    nonce = (1 << 64) - 1
    assert lobby.call(conn, Heartbeat(nonce, rid=77)) == [Send(conn, HeartbeatAck(nonce, 77))]


def test_messages_from_unknown_connections_are_ignored() -> None:
    lobby = Lobby()
    lobby.core.client_message(42, Hello(PROTOCOL_VERSION, "c", "1"), T0)
    lobby.core.client_error(42, LobbyProtocolError(ErrorCode.MALFORMED, "x"), T0)
    lobby.core.client_closed(42, T0)
    assert lobby.out() == []


# --- accounts and sessions --------------------------------------------------------------------


def test_register_hashes_the_password_then_logs_in() -> None:
    lobby = Lobby()
    conn = lobby.connect()
    outs = lobby.call(conn, ClientRegister("alice", PASSWORD, rid=5))
    assert outs == [HashPassword(conn, 5, "alice", PASSWORD)]
    assert lobby.store.account_by_name("alice") is None  # nothing stored before the hash
    # a second auth request while the hash runs is refused
    e = error(lobby.call(conn, LoginDevice("dev-1", rid=6)), conn)
    assert (e.code, e.rid) == (ErrorCode.ALREADY_LOGGED_IN, 6)
    (req,) = of_type(outs, HashPassword)
    li = only(lobby.hashed(req), conn, LoggedIn)
    account = lobby.store.account_by_name("alice")
    assert account is not None and account.password_hash is not None
    assert verify_password(PASSWORD, account.password_hash)
    assert (li.player_id, li.name, li.rid) == (account.player_id, "alice", 5)
    assert li.expires_at == T0 + lobby.settings.session_lifetime
    assert verify_session_token(SECRET, li.session_token, T0) == li.player_id
    assert lobby.core.online_players == 1
    assert lobby.core.counters["accounts_created"] == 1
    e = error(lobby.call(conn, ClientRegister("other", PASSWORD)), conn)
    assert e.code == ErrorCode.ALREADY_LOGGED_IN


def test_register_refuses_bad_names_and_short_passwords() -> None:
    lobby = Lobby()
    conn = lobby.connect()
    for msg in (ClientRegister("bad name", PASSWORD, rid=1), ClientRegister("bob", "short", rid=2)):
        outs = lobby.call(conn, msg)
        assert not of_type(outs, HashPassword)
        e = error(outs, conn)
        assert (e.code, e.request_type, e.rid) == (ErrorCode.BAD_FIELD, "register", msg.rid)
    # the connection may still register properly
    assert of_type(lobby.call(conn, ClientRegister("bob", PASSWORD)), HashPassword)


def test_register_of_a_taken_name_is_refused() -> None:
    lobby = Lobby()
    lobby.register("alice")
    conn = lobby.connect()
    outs = lobby.call(conn, ClientRegister("ALICE", PASSWORD, rid=3))
    assert not of_type(outs, HashPassword)
    e = error(outs, conn)
    assert (e.code, e.rid) == (ErrorCode.NAME_TAKEN, 3)


def test_register_race_for_one_name_lets_the_first_hash_win() -> None:
    lobby = Lobby()
    a, b = lobby.connect(), lobby.connect()
    (req_a,) = of_type(lobby.call(a, ClientRegister("bob", PASSWORD, rid=1)), HashPassword)
    (req_b,) = of_type(lobby.call(b, ClientRegister("bob", "another one", rid=2)), HashPassword)
    assert only(lobby.hashed(req_a), a, LoggedIn).name == "bob"
    e = error(lobby.hashed(req_b), b)
    assert (e.code, e.request_type, e.rid) == (ErrorCode.NAME_TAKEN, "register", 2)
    # the loser may try again with another name
    (req,) = of_type(lobby.call(b, ClientRegister("bob2", PASSWORD)), HashPassword)
    assert only(lobby.hashed(req), b, LoggedIn).name == "bob2"


def test_login_checks_the_password() -> None:
    lobby = Lobby()
    alice = lobby.register("alice")
    lobby.close(alice.conn)
    conn = lobby.connect()
    outs = lobby.call(conn, Login("alice", "wrong password", rid=8))
    (req,) = of_type(outs, CheckPassword)
    account = lobby.store.account_by_name("alice")
    assert account is not None
    assert (req.conn, req.rid, req.player_id) == (conn, 8, alice.pid)
    assert req.encoded == account.password_hash
    e = error(lobby.checked(req), conn)
    assert (e.code, e.request_type, e.rid) == (ErrorCode.BAD_CREDENTIALS, "login", 8)
    assert lobby.core.counters["login_failures"] == 1
    assert error(lobby.call(conn, GetRating()), conn).code == ErrorCode.NOT_LOGGED_IN
    # a failed attempt does not block the next one
    (req,) = of_type(lobby.call(conn, Login("alice", PASSWORD, rid=9)), CheckPassword)
    li = only(lobby.checked(req), conn, LoggedIn)
    assert (li.player_id, li.name, li.rid) == (alice.pid, "alice", 9)


def test_login_with_an_unknown_name_still_checks_a_password() -> None:
    lobby = Lobby()
    conn = lobby.connect()
    outs = lobby.call(conn, Login("nobody", PASSWORD, rid=4))
    assert outs == [CheckPassword(conn, 4, None, PASSWORD, None)]
    e = error(lobby.checked(CheckPassword(conn, 4, None, PASSWORD, None)), conn)
    assert (e.code, e.rid) == (ErrorCode.BAD_CREDENTIALS, 4)
    # even a shell that answers ok=True cannot log in as nobody
    lobby.call(conn, Login("nobody", PASSWORD))
    lobby.core.password_checked(conn, None, None, True, lobby.now)
    assert error(lobby.out(), conn).code == ErrorCode.BAD_CREDENTIALS
    assert lobby.core.online_players == 0


def test_password_answers_for_a_closed_connection_are_dropped() -> None:
    lobby = Lobby()
    conn = lobby.connect()
    (req,) = of_type(lobby.call(conn, ClientRegister("carol", PASSWORD)), HashPassword)
    lobby.close(conn)
    assert lobby.hashed(req) == []
    assert lobby.store.account_by_name("carol") is None


def test_device_register_and_login() -> None:
    lobby = Lobby()
    conn = lobby.connect()
    li = only(lobby.call(conn, RegisterDevice("dev-abc", rid=1)), conn, LoggedIn)
    assert li.name == f"player-{li.player_id}" and li.rid == 1
    account = lobby.store.account_by_device("dev-abc")
    assert account is not None and account.player_id == li.player_id
    other = lobby.connect()
    e = error(lobby.call(other, RegisterDevice("dev-abc", rid=2)), other)
    assert (e.code, e.rid) == (ErrorCode.NAME_TAKEN, 2)
    e = error(lobby.call(other, LoginDevice("dev-unknown", rid=3)), other)
    assert (e.code, e.rid) == (ErrorCode.BAD_CREDENTIALS, 3)
    e = error(lobby.call(other, LoginDevice("has space")), other)
    assert e.code == ErrorCode.BAD_FIELD
    outs = lobby.call(other, LoginDevice("dev-abc", rid=4))
    li2 = only(outs, other, LoggedIn)
    assert (li2.player_id, li2.rid) == (li.player_id, 4)


def test_resume_with_the_session_token() -> None:
    lobby = Lobby()
    alice = lobby.register("alice")
    lobby.close(alice.conn)
    assert lobby.core.online_players == 0
    lobby.at(3600.0)
    conn = lobby.connect()
    li = only(lobby.call(conn, Resume(alice.token, rid=11)), conn, LoggedIn)
    assert (li.player_id, li.name, li.rid) == (alice.pid, "alice", 11)
    assert li.session_token != alice.token
    assert li.expires_at == lobby.now + lobby.settings.session_lifetime
    assert lobby.core.online_players == 1


def test_resume_refuses_tampered_foreign_and_expired_tokens() -> None:
    lobby = Lobby()
    alice = lobby.register("alice")
    lobby.close(alice.conn)
    conn = lobby.connect()
    tampered = bytearray(alice.token)
    tampered[5] ^= 0x01  # inside the player id: the MAC no longer matches
    foreign = issue_session_token(b"x" * 32, alice.pid, T0 + 100, nonce=bytes(16))
    no_account = issue_session_token(SECRET, 999_999, T0 + 100, nonce=bytes(16))
    for token in (bytes(tampered), alice.token[:-1], foreign, no_account):
        e = error(lobby.call(conn, Resume(token, rid=1)), conn)
        assert (e.code, e.request_type, e.rid) == (ErrorCode.BAD_CREDENTIALS, "resume", 1)
    lobby.at(lobby.settings.session_lifetime)
    e = error(lobby.call(conn, Resume(alice.token)), conn)
    assert e.code == ErrorCode.SESSION_EXPIRED
    assert lobby.core.online_players == 0


def test_a_second_login_kicks_the_first_connection() -> None:
    lobby = Lobby()
    first = lobby.device("dev-a")
    second, outs = lobby.relogin("dev-a")
    assert sent(outs, first.conn) == [Kicked("logged in from another connection")]
    assert closes(outs) == [first.conn]
    kick_at = outs.index(Close(first.conn, "replaced by a newer login"))
    login_at = next(i for i, o in enumerate(outs) if isinstance(o, Send) and o.conn == second)
    assert kick_at < login_at
    assert only(outs, second, LoggedIn).player_id == first.pid
    assert lobby.core.online_players == 1
    # the old connection is logged out; closing it does not log the player out
    assert error(lobby.call(first.conn, GetRating()), first.conn).code == ErrorCode.NOT_LOGGED_IN
    assert lobby.close(first.conn) == []
    assert lobby.core.online_players == 1
    only(lobby.call(second, GetRating()), second, Rating)


def test_logout_cancels_the_ticket_and_closes() -> None:
    lobby = Lobby()
    p = lobby.device("dev-a")
    ticket = only(lobby.call(p.conn, Queue("1v1", REGION)), p.conn, Queued).ticket_id
    outs = lobby.call(p.conn, Logout(rid=2))
    assert sent(outs, p.conn) == [QueueCancelled(ticket), Kicked("logged out")]
    assert closes(outs) == [p.conn]
    assert lobby.core.online_players == 0
    assert lobby.desk.matchmaker.queue_size("1v1", REGION) == 0


# --- rate limiting and decode errors ----------------------------------------------------------


def test_a_burst_beyond_the_limit_gets_one_too_fast_per_episode() -> None:
    lobby = Lobby(LobbySettings(rate=1.0, burst=5))
    conn = lobby.connect()  # hello took one token
    answers = [sent(lobby.call(conn, Heartbeat(i)), conn) for i in range(8)]
    assert all(isinstance(a[0], HeartbeatAck) for a in answers[:4])
    assert len(answers[4]) == 1
    too_fast = answers[4][0]
    assert isinstance(too_fast, Error) and too_fast.code == ErrorCode.TOO_FAST
    assert answers[5:] == [[], [], []]
    # refilled after a pause: served again, and the next episode is answered once more
    lobby.at(20.0)
    answers = [sent(lobby.call(conn, Heartbeat(i)), conn) for i in range(7)]
    assert all(isinstance(a[0], HeartbeatAck) for a in answers[:5])
    assert len(answers[5]) == 1 and isinstance(answers[5][0], Error)
    assert answers[6] == []
    assert lobby.core.counters["client_too_fast"] == 6


def test_a_partial_refill_stays_in_the_same_episode() -> None:
    lobby = Lobby(LobbySettings(rate=2.0, burst=2))
    conn = lobby.connect()
    lobby.call(conn, Heartbeat(1))
    only(lobby.call(conn, Heartbeat(2)), conn, Error)
    lobby.at(0.5)  # one token back: -1 + 1 = 0, not enough, and no second answer
    assert sent(lobby.call(conn, Heartbeat(3)), conn) == []
    lobby.at(1.0)  # the rate refills two tokens a second
    assert only(lobby.call(conn, Heartbeat(4)), conn, HeartbeatAck).nonce == 4


def test_a_sustained_flood_closes_the_connection() -> None:
    lobby = Lobby(LobbySettings(rate=1.0, burst=5))
    conn = lobby.connect()
    closed_at = None
    for i in range(1, 40):
        outs = lobby.call(conn, Heartbeat(i))
        if closes(outs):
            closed_at = i
            assert error(outs, conn).code == ErrorCode.TOO_FAST
            assert outs[-1] == Close(conn, "flooding")
            break
    # 4 tokens left after hello; debt of 3 bursts (15) reached on the 19th message
    assert closed_at == 19


def test_client_errors_are_answered_and_broken_framing_closes() -> None:
    lobby = Lobby()
    conn = lobby.connect()
    exc = LobbyProtocolError(ErrorCode.BAD_FIELD, "queue.mode: bad", "queue", 7)
    lobby.core.client_error(conn, exc, lobby.now)
    assert lobby.out() == [Send(conn, Error(ErrorCode.BAD_FIELD, "queue.mode: bad", "queue", 7))]
    assert only(lobby.call(conn, Heartbeat(1)), conn, HeartbeatAck).nonce == 1
    lobby.core.client_error(conn, LobbyFramingError(ErrorCode.MALFORMED, "frame length 0"), T0)
    outs = lobby.out()
    assert outs[0] == Send(conn, Error(ErrorCode.MALFORMED, "frame length 0"))
    assert closes(outs) == [conn] and len(outs) == 2
    assert lobby.core.counters["client_error_malformed"] == 1


def test_decode_errors_count_against_the_rate_limit() -> None:
    lobby = Lobby(LobbySettings(rate=1.0, burst=2))
    conn = lobby.connect()
    exc = LobbyProtocolError(ErrorCode.UNKNOWN_TYPE, "unknown message type 'x'")
    lobby.core.client_error(conn, exc, lobby.now)
    assert error(lobby.out(), conn).code == ErrorCode.UNKNOWN_TYPE
    lobby.core.client_error(conn, exc, lobby.now)
    assert error(lobby.out(), conn).code == ErrorCode.TOO_FAST


# --- queueing -----------------------------------------------------------------------------------


def test_queue_requires_login() -> None:
    lobby = Lobby()
    conn = lobby.connect()
    for msg in (Queue("1v1", REGION, rid=1), CancelQueue(rid=2), Accept(1), GetRating()):
        e = error(lobby.call(conn, msg), conn)
        assert (e.code, e.rid) == (ErrorCode.NOT_LOGGED_IN, msg.rid)


def test_queue_and_its_errors() -> None:
    lobby = Lobby()
    p = lobby.device("dev-a")
    cases: list[tuple[Message, ErrorCode]] = [
        (Queue("1v1", "mars", rid=1), ErrorCode.UNKNOWN_REGION),
        (Queue("9v9", REGION, rid=2), ErrorCode.UNKNOWN_MODE),
        (CancelQueue(rid=3), ErrorCode.NOT_QUEUED),
        (Accept(12345, rid=4), ErrorCode.UNKNOWN_PROPOSAL),
        (Decline(12345, rid=5), ErrorCode.UNKNOWN_PROPOSAL),
    ]
    for msg, code in cases:
        e = error(lobby.call(p.conn, msg), p.conn)
        assert (e.code, e.rid) == (code, msg.rid), msg
    queued = only(lobby.call(p.conn, Queue("1v1", REGION, rid=6)), p.conn, Queued)
    assert (queued.mode, queued.region, queued.rid) == ("1v1", REGION, 6)
    assert queued.estimated_wait == lobby.settings.match_interval
    e = error(lobby.call(p.conn, Queue("3v3", REGION, rid=7)), p.conn)
    assert (e.code, e.rid) == (ErrorCode.ALREADY_QUEUED, 7)
    outs = lobby.call(p.conn, CancelQueue(rid=8))
    assert sent(outs, p.conn) == [QueueCancelled(queued.ticket_id, 8)]
    assert error(lobby.call(p.conn, CancelQueue()), p.conn).code == ErrorCode.NOT_QUEUED
    again = only(lobby.call(p.conn, Queue("1v1", REGION)), p.conn, Queued)
    assert again.ticket_id != queued.ticket_id


def test_a_dropped_connection_leaves_the_queue() -> None:
    lobby = Lobby()
    p = lobby.device("dev-a")
    lobby.call(p.conn, Queue("1v1", REGION))
    lobby.close(p.conn)
    assert lobby.desk.matchmaker.queue_size("1v1", REGION) == 0
    conn, _ = lobby.relogin("dev-a")
    only(lobby.call(conn, Queue("1v1", REGION)), conn, Queued)


def test_a_party_queues_on_one_ticket() -> None:
    lobby = Lobby()
    a, b, c = lobby.players(3)
    outs = lobby.call(a.conn, Queue("3v3", REGION, party=(a.pid, b.pid, c.pid), rid=4))
    got = {p.pid: only(outs, p.conn, Queued) for p in (a, b, c)}
    assert len({q.ticket_id for q in got.values()}) == 1
    assert [got[p.pid].rid for p in (a, b, c)] == [4, None, None]
    e = error(lobby.call(b.conn, Queue("3v3", REGION)), b.conn)
    assert e.code == ErrorCode.ALREADY_QUEUED
    # one member cancelling cancels the party's ticket for all
    outs = lobby.call(b.conn, CancelQueue(rid=9))
    tid = got[a.pid].ticket_id
    assert [sent(outs, p.conn) for p in (a, b, c)] == [
        [QueueCancelled(tid)],
        [QueueCancelled(tid, 9)],
        [QueueCancelled(tid)],
    ]
    assert lobby.desk.matchmaker.queue_size("3v3", REGION) == 0


def test_a_party_member_leaving_cancels_the_party() -> None:
    lobby = Lobby()
    a, b = lobby.players(2)
    tid = only(
        lobby.call(a.conn, Queue("3v3", REGION, party=(a.pid, b.pid))), a.conn, Queued
    ).ticket_id
    outs = lobby.close(b.conn)
    assert sent(outs, a.conn) == [QueueCancelled(tid)]
    only(lobby.call(a.conn, Queue("1v1", REGION)), a.conn, Queued)


def test_bad_parties_are_refused() -> None:
    lobby = Lobby()
    a, b, c = lobby.players(3)
    lobby.close(c.conn)
    cases = [
        (a.pid, b.pid, c.pid),  # c is offline
        (a.pid, 424242),  # no such player online
    ]
    for party in cases:
        e = error(lobby.call(a.conn, Queue("3v3", REGION, party=party, rid=1)), a.conn)
        assert (e.code, e.rid) == (ErrorCode.BAD_PARTY, 1)
    e = error(lobby.call(a.conn, Queue("1v1", REGION, party=(a.pid, b.pid))), a.conn)
    assert e.code == ErrorCode.BAD_PARTY  # two players do not fit a team of one
    # nobody was queued by the refused requests
    for p in (a, b):
        only(lobby.call(p.conn, Queue("1v1", REGION)), p.conn, Queued)


# --- matches ------------------------------------------------------------------------------------


def test_host_registration_is_answered() -> None:
    lobby = Lobby()
    conn, outs = lobby.host("h1")
    s = lobby.settings
    assert outs[0] == SendControl(
        conn, Registered(s.lobby_id, s.host_heartbeat_interval, s.host_lease)
    )
    assert notes(outs, "host_registered")
    assert lobby.desk.rooms.live_hosts == 1
    assert lobby.to_host(conn, Ping(5)) == [SendControl(conn, Pong(5))]
    assert lobby.beat(conn) == []


def test_a_host_must_register_first() -> None:
    lobby = Lobby()
    conn = 2000
    lobby.core.host_connected(conn, T0)
    assert lobby.to_host(conn, HostHeartbeat(0, 0, 0, False)) == [
        CloseControl(conn, "register first")
    ]


def test_a_host_registering_again_replaces_its_old_connection() -> None:
    lobby = Lobby()
    old, _ = lobby.host("h1")
    new, outs = lobby.host("h1")
    assert CloseControl(old, "the same host registered again") in outs
    assert controls(outs, new) and isinstance(controls(outs, new)[0], Registered)
    assert lobby.desk.rooms.live_hosts == 1
    lobby.core.host_closed(old, lobby.now)
    assert lobby.desk.rooms.live_hosts == 1


def test_control_errors() -> None:
    lobby = Lobby()
    conn, _ = lobby.host("h1")
    lobby.core.host_error(conn, ControlProtocolError("bad field"), lobby.now)
    outs = lobby.out()
    assert not [o for o in outs if isinstance(o, CloseControl)]
    assert notes(outs, "control_error")
    lobby.core.host_error(conn, ControlFramingError("length 0"), lobby.now)
    assert CloseControl(conn, "broken framing") in lobby.out()


def test_1v1_from_queue_to_match_ready() -> None:
    lobby = Lobby()
    host, _ = lobby.host("h1")
    a, b = lobby.players(2)
    for p in (a, b):
        lobby.call(p.conn, Queue("1v1", REGION))
    assert lobby.core.next_deadline() is not None
    outs = lobby.poll(lobby.settings.match_interval)
    proposal = only(outs, a.conn, MatchProposed)
    assert only(outs, b.conn, MatchProposed) == proposal
    assert proposal.mode == "1v1"
    assert sorted(proposal.teams) == sorted([(a.pid,), (b.pid,)])
    assert proposal.expires_at == lobby.now + lobby.settings.ready_timeout
    outs = lobby.call(a.conn, Accept(proposal.proposal_id))
    assert controls(outs, host) == []
    e = error(lobby.call(a.conn, Queue("1v1", REGION)), a.conn)
    assert e.code == ErrorCode.ALREADY_QUEUED  # in the ready check
    outs = lobby.call(b.conn, Accept(proposal.proposal_id))
    (create,) = of_type(controls(outs, host), CreateRoom)
    assert [o for o in outs if isinstance(o, Send)] == []  # nothing for players yet
    assert create.roster == (
        RosterEntry(0, proposal.teams[0][0], 0),
        RosterEntry(1, proposal.teams[1][0], 1),
    )
    assert create.config == room_config_to_plain(lobby.settings.room)
    assert len(create.ticket_key) == 32
    assert lobby.store.match(create.match_id) is None  # not before the room exists
    # accepted and waiting for a room counts as in a match
    e = error(lobby.call(a.conn, Queue("1v1", REGION)), a.conn)
    assert e.code == ErrorCode.IN_MATCH

    outs = lobby.to_host(host, RoomCreated(create.request_id, create.room_id, *UDP))
    for p in (a, b):
        ready = only(outs, p.conn, MatchReady)
        assert (ready.room_host, ready.room_port) == UDP
        assert ready.tick_rate == lobby.settings.room.tick_rate
        check_ticket(create, ready, p.pid, lobby.now)
    record = lobby.store.match(create.match_id)
    assert record is not None
    assert (record.host_id, record.room_id, record.mode) == ("h1", create.room_id, "1v1")
    assert (record.udp_host, record.udp_port) == UDP
    assert record.roster == create.roster and record.ticket_key == create.ticket_key
    assert lobby.store.match_for_player(a.pid) == record
    assert notes(outs, "match_started")
    assert lobby.core.counters["matches_started"] == 1


def test_5v5_roster_is_grouped_by_team() -> None:
    lobby = Lobby()
    host, _ = lobby.host("h1")
    players = lobby.players(10)
    proposal = lobby.propose(players, "5v5")
    assert len(proposal.teams) == 2 and all(len(t) == 5 for t in proposal.teams)
    assert {pid for t in proposal.teams for pid in t} == {p.pid for p in players}
    (create,) = of_type(controls(lobby.accept_all(players, proposal), host), CreateRoom)
    assert [e.slot for e in create.roster] == list(range(10))
    assert [e.team for e in create.roster] == [0] * 5 + [1] * 5
    assert [e.player_id for e in create.roster] == [*proposal.teams[0], *proposal.teams[1]]
    outs = lobby.to_host(host, RoomCreated(create.request_id, create.room_id, *UDP))
    seats = [
        check_ticket(create, only(outs, p.conn, MatchReady), p.pid, lobby.now) for p in players
    ]
    assert sorted(s.slot for s in seats) == list(range(10))
    tickets = {only(outs, p.conn, MatchReady).ticket for p in players}
    assert len(tickets) == 10
    record = lobby.store.match(create.match_id)
    assert record is not None and len(record.roster) == 10


def test_a_player_back_during_the_match_gets_a_fresh_ticket_for_the_same_seat() -> None:
    lobby = Lobby()
    host, _ = lobby.host("h1")
    a, b = lobby.players(2)
    started = lobby.start([a, b], "1v1", host)
    lobby.close(a.conn)
    lobby.at(2.0)
    lobby.beat(host)
    conn, outs = lobby.relogin("dev-0")
    msgs = sent(outs, conn)
    assert [type(m) for m in msgs] == [LoggedIn, MatchReady]
    again = msgs[1]
    assert isinstance(again, MatchReady)
    first = started.ready[a.pid]
    assert (again.match_id, again.slot, again.team) == (first.match_id, first.slot, first.team)
    assert again.ticket != first.ticket
    check_ticket(started.create, again, a.pid, lobby.now)
    # so does a login that kicks a live connection
    conn2, outs = lobby.relogin("dev-1")
    assert sent(outs, b.conn) == [Kicked("logged in from another connection")]
    msgs = sent(outs, conn2)
    assert [type(m) for m in msgs] == [LoggedIn, MatchReady]
    assert isinstance(msgs[1], MatchReady)
    check_ticket(started.create, msgs[1], b.pid, lobby.now)


def test_queueing_during_a_match_is_refused() -> None:
    lobby = Lobby()
    host, _ = lobby.host("h1")
    a, b, c = lobby.players(3)
    lobby.start([a, b], "1v1", host)
    e = error(lobby.call(a.conn, Queue("1v1", REGION, rid=3)), a.conn)
    assert (e.code, e.rid) == (ErrorCode.IN_MATCH, 3)
    e = error(lobby.call(c.conn, Queue("3v3", REGION, party=(c.pid, b.pid))), c.conn)
    assert e.code == ErrorCode.IN_MATCH
    only(lobby.call(c.conn, Queue("1v1", REGION)), c.conn, Queued)


def test_a_player_back_during_the_ready_check_is_asked_again() -> None:
    lobby = Lobby()
    host, _ = lobby.host("h1")
    a, b = lobby.players(2)
    proposal = lobby.propose([a, b], "1v1")
    lobby.close(a.conn)  # a ready check outlives the connection
    conn, outs = lobby.relogin("dev-0")
    assert sent(outs, conn)[1:] == [proposal]
    lobby.call(b.conn, Accept(proposal.proposal_id))
    outs = lobby.call(conn, Accept(proposal.proposal_id))
    assert of_type(controls(outs, host), CreateRoom)


def test_a_decline_cancels_for_all_and_puts_the_decliner_on_cooldown() -> None:
    lobby = Lobby()
    a, b = lobby.players(2)
    proposal = lobby.propose([a, b], "1v1")
    lobby.call(b.conn, Accept(proposal.proposal_id))
    outs = lobby.call(a.conn, Decline(proposal.proposal_id))
    to_a = only(outs, a.conn, MatchCancelled)
    to_b = only(outs, b.conn, MatchCancelled)
    assert to_a.proposal_id == to_b.proposal_id == proposal.proposal_id
    assert (to_a.requeued, to_b.requeued) == (False, True)
    assert to_a.reason == "a player declined"
    e = error(lobby.call(a.conn, Queue("1v1", REGION, rid=5)), a.conn)
    assert (e.code, e.rid) == (ErrorCode.ON_COOLDOWN, 5)
    # b is still queued, on its old ticket
    assert error(lobby.call(b.conn, Queue("1v1", REGION)), b.conn).code == ErrorCode.ALREADY_QUEUED
    only(lobby.call(b.conn, CancelQueue()), b.conn, QueueCancelled)
    assert error(lobby.call(a.conn, Accept(proposal.proposal_id)), a.conn).code == (
        ErrorCode.UNKNOWN_PROPOSAL
    )
    lobby.at(lobby.settings.decline_cooldown)
    only(lobby.call(a.conn, Queue("1v1", REGION)), a.conn, Queued)


def test_a_ready_check_nobody_answers_times_out() -> None:
    lobby = Lobby()
    a, b = lobby.players(2)
    proposal = lobby.propose([a, b], "1v1")
    lobby.call(a.conn, Accept(proposal.proposal_id))
    deadline = lobby.core.next_deadline()
    assert deadline is not None and deadline <= proposal.expires_at
    outs = lobby.poll(lobby.settings.ready_timeout)
    assert only(outs, a.conn, MatchCancelled).requeued is True
    to_b = only(outs, b.conn, MatchCancelled)
    assert (to_b.requeued, to_b.reason) == (False, "not everyone accepted in time")
    assert error(lobby.call(b.conn, Queue("1v1", REGION)), b.conn).code == ErrorCode.ON_COOLDOWN


def test_cancel_during_the_ready_check_declines_and_is_answered() -> None:
    lobby = Lobby()
    a, b = lobby.players(2)
    lobby.call(a.conn, Queue("1v1", REGION))
    ticket = only(lobby.call(b.conn, Queue("1v1", REGION)), b.conn, Queued).ticket_id
    proposal = only(lobby.poll(1.0), a.conn, MatchProposed)
    outs = lobby.call(b.conn, CancelQueue(rid=6))
    to_a = only(outs, a.conn, MatchCancelled)
    assert (to_a.requeued, to_a.reason) == (True, "a player left the queue")
    # b hears that the check failed, and gets the answer to its request, with its rid
    assert sent(outs, b.conn) == [
        MatchCancelled(proposal.proposal_id, "a player left the queue", False),
        QueueCancelled(ticket, 6),
    ]
    assert error(lobby.call(b.conn, Accept(proposal.proposal_id)), b.conn).code == (
        ErrorCode.UNKNOWN_PROPOSAL
    )
    assert error(lobby.call(b.conn, CancelQueue()), b.conn).code == ErrorCode.NOT_QUEUED
    assert error(lobby.call(b.conn, Queue("1v1", REGION)), b.conn).code == ErrorCode.ON_COOLDOWN
    # a is still queued on its old ticket
    assert error(lobby.call(a.conn, Queue("1v1", REGION)), a.conn).code == ErrorCode.ALREADY_QUEUED


# --- rooms --------------------------------------------------------------------------------------


def accepted_without_host(lobby: Lobby) -> tuple[list[Player], MatchProposed]:
    players = lobby.players(2)
    proposal = lobby.propose(players, "1v1")
    outs = lobby.accept_all(players, proposal)
    assert [o for o in outs if isinstance(o, SendControl | Send)] == []
    return players, proposal


def test_without_a_host_the_match_waits_then_is_cancelled() -> None:
    lobby = Lobby()
    (a, b), proposal = accepted_without_host(lobby)
    give_up = lobby.now + lobby.settings.allocation_wait
    assert lobby.core.next_deadline() == give_up
    assert error(lobby.call(a.conn, Queue("1v1", REGION)), a.conn).code == ErrorCode.IN_MATCH
    assert [
        o for o in lobby.poll(lobby.settings.allocation_wait - 0.5) if isinstance(o, Send)
    ] == []
    outs = lobby.poll(0.5)
    for p in (a, b):
        cancelled = only(outs, p.conn, MatchCancelled)
        assert cancelled.proposal_id == proposal.proposal_id
        assert cancelled.requeued is False
        assert cancelled.reason == "no room host has a free room"
    assert notes(outs, "match_failed")
    assert lobby.core.next_deadline() is None
    for p in (a, b):  # free to queue again at once
        only(lobby.call(p.conn, Queue("1v1", REGION)), p.conn, Queued)


def test_a_host_registering_while_a_match_waits_gets_its_room_request() -> None:
    lobby = Lobby()
    (a, b), _ = accepted_without_host(lobby)
    lobby.poll(10.0)
    host, outs = lobby.host("h1")
    (create,) = of_type(controls(outs, host), CreateRoom)
    assert {e.player_id for e in create.roster} == {a.pid, b.pid}
    outs = lobby.to_host(host, RoomCreated(create.request_id, create.room_id, *UDP))
    for p in (a, b):
        check_ticket(create, only(outs, p.conn, MatchReady), p.pid, lobby.now)
    # the original give-up time passes harmlessly
    for _ in range(25):
        lobby.at(1.0)
        lobby.beat(host, load=1)
        assert [o for o in lobby.poll() if isinstance(o, Send)] == []
    assert lobby.store.match(create.match_id) is not None


def test_a_host_freeing_a_room_takes_a_waiting_match() -> None:
    lobby = Lobby()
    host, _ = lobby.host("h1", capacity=1)
    first = lobby.start(lobby.players(2, "x"), "1v1", host)
    lobby.beat(host, load=1)
    (a, b), _ = accepted_without_host(lobby)
    assert lobby.result(first, {"winner": 0})
    outs = lobby.beat(host, load=0)
    (create,) = of_type(controls(outs, host), CreateRoom)
    assert {e.player_id for e in create.roster} == {a.pid, b.pid}


def test_a_rejected_room_is_retried_on_another_host() -> None:
    lobby = Lobby()
    h1, _ = lobby.host("h1", capacity=4)
    h2, _ = lobby.host("h2", capacity=2)
    a, b = lobby.players(2)
    proposal = lobby.propose([a, b], "1v1")
    (first,) = of_type(controls(lobby.accept_all([a, b], proposal), h1), CreateRoom)
    outs = lobby.to_host(h1, Rejected(first.request_id, first.room_id, "full"))
    assert controls(outs, h1) == []
    (second,) = of_type(controls(outs, h2), CreateRoom)
    assert second.match_id == first.match_id
    assert (second.seed, second.roster, second.ticket_key) == (
        first.seed,
        first.roster,
        first.ticket_key,
    )
    assert second.request_id != first.request_id and second.room_id != first.room_id
    outs = lobby.to_host(h2, RoomCreated(second.request_id, second.room_id, "10.0.0.9", 6000))
    for p in (a, b):
        ready = only(outs, p.conn, MatchReady)
        assert (ready.room_host, ready.room_port) == ("10.0.0.9", 6000)
        check_ticket(second, ready, p.pid, lobby.now)
    record = lobby.store.match(first.match_id)
    assert record is not None and (record.host_id, record.room_id) == ("h2", second.room_id)


def test_a_late_reply_after_a_timeout_gets_its_stray_room_ended() -> None:
    lobby = Lobby()
    h1, _ = lobby.host("h1", capacity=4)
    h2, _ = lobby.host("h2", capacity=2)
    a, b = lobby.players(2)
    proposal = lobby.propose([a, b], "1v1")
    (first,) = of_type(controls(lobby.accept_all([a, b], proposal), h1), CreateRoom)
    for _ in range(2):  # the request times out; the hosts stay alive
        lobby.at(lobby.settings.create_timeout / 2)
        lobby.beat(h1, load=0)
        lobby.beat(h2, load=0)
    (second,) = of_type(controls(lobby.poll(), h2), CreateRoom)
    lobby.to_host(h2, RoomCreated(second.request_id, second.room_id, *UDP))
    outs = lobby.to_host(h1, RoomCreated(first.request_id, first.room_id, *UDP))
    (end,) = of_type(controls(outs, h1), EndRoom)
    assert (end.room_id, end.match_id) == (first.room_id, first.match_id)
    assert [o for o in outs if isinstance(o, Send)] == []  # the players keep their room
    record = lobby.store.match(first.match_id)
    assert record is not None and record.room_id == second.room_id


def test_an_unreadable_room_created_counts_as_a_rejection() -> None:
    lobby = Lobby()
    h1, _ = lobby.host("h1", capacity=4)
    h2, _ = lobby.host("h2", capacity=2)
    a, b = lobby.players(2)
    proposal = lobby.propose([a, b], "1v1")
    (first,) = of_type(controls(lobby.accept_all([a, b], proposal), h1), CreateRoom)
    bad = ControlProtocolError(
        "room_created.port: bad", message_type="room_created", request_id=first.request_id
    )
    lobby.core.host_error(h1, bad, lobby.now)
    (second,) = of_type(controls(lobby.out(), h2), CreateRoom)
    assert second.match_id == first.match_id


def test_when_every_host_rejects_the_players_are_told() -> None:
    lobby = Lobby()
    h1, _ = lobby.host("h1")
    a, b = lobby.players(2)
    proposal = lobby.propose([a, b], "1v1")
    (create,) = of_type(controls(lobby.accept_all([a, b], proposal), h1), CreateRoom)
    outs = lobby.to_host(h1, Rejected(create.request_id, create.room_id, "draining"))
    for p in (a, b):
        cancelled = only(outs, p.conn, MatchCancelled)
        assert cancelled.requeued is False and "h1: draining" in cancelled.reason
    assert lobby.store.match(create.match_id) is None
    only(lobby.call(a.conn, Queue("1v1", REGION)), a.conn, Queued)


def test_a_host_whose_lease_runs_out_aborts_its_matches() -> None:
    lobby = Lobby()
    host, _ = lobby.host("h1")
    players = lobby.players(2)
    started = lobby.start(players, "1v1", host)
    mid = started.create.match_id
    registered_at = T0
    lobby.poll(registered_at + lobby.settings.host_lease - 0.01 - lobby.now)
    assert lobby.store.match(mid) is not None
    outs = lobby.poll(0.01)
    for p in players:
        assert only(outs, p.conn, MatchAborted).match_id == mid
    assert lobby.store.match(mid) is None
    assert notes(outs, "host_lost") and notes(outs, "match_aborted")
    assert lobby.core.counters["matches_aborted"] == 1
    # a late heartbeat is refused: the host must register again
    assert lobby.beat(host) == [CloseControl(host, "lease expired: register again")]
    for p in players:
        only(lobby.call(p.conn, Queue("1v1", REGION)), p.conn, Queued)


def test_heartbeats_keep_a_host_and_its_matches_alive() -> None:
    lobby = Lobby()
    host, _ = lobby.host("h1")
    players = lobby.players(2)
    started = lobby.start(players, "1v1", host)
    for _ in range(30):
        lobby.at(lobby.settings.host_heartbeat_interval)
        assert lobby.beat(host, load=1) == []
        assert lobby.poll() == []
    assert lobby.store.match(started.create.match_id) is not None
    assert lobby.desk.rooms.live_hosts == 1


def test_a_closed_control_connection_is_not_death_until_the_lease_ends() -> None:
    lobby = Lobby()
    host, _ = lobby.host("h1")
    players = lobby.players(2)
    started = lobby.start(players, "1v1", host)
    lobby.core.host_closed(host, lobby.now)
    assert lobby.desk.rooms.live_hosts == 0
    lobby.at(2.0)
    back, outs = lobby.host("h1", rooms=(started.create.room_id,))
    assert [o for o in outs if isinstance(o, Send)] == []
    lobby.poll(4.0)
    assert lobby.store.match(started.create.match_id) is not None
    assert lobby.beat(back) == []


# --- results ------------------------------------------------------------------------------------


def test_a_result_rates_the_players_and_lands_in_history() -> None:
    lobby = Lobby()
    host, _ = lobby.host("h1")
    players = lobby.players(2)
    started = lobby.start(players, "1v1", host)
    mid = started.create.match_id
    seat = {e.player_id: e.team for e in started.create.roster}
    winner = next(p for p in players if seat[p.pid] == 0)
    loser = next(p for p in players if seat[p.pid] == 1)
    lobby.at(600.0)
    lobby.beat(host)
    outs = lobby.result(started, {"winner": 0})
    assert controls(outs, host) == [ResultAck(mid)]
    won = only(outs, winner.conn, MatchEnded)
    lost = only(outs, loser.conn, MatchEnded)
    assert (won.match_id, won.result, lost.result) == (mid, "win", "loss")
    assert won.rating_before == lost.rating_before == default_rating().ordinal
    assert won.rating_after > won.rating_before and lost.rating_after < lost.rating_before
    assert lobby.store.match(mid) is None

    rating = only(lobby.call(winner.conn, GetRating(rid=2)), winner.conn, Rating)
    assert rating.mu > default_rating().mu and rating.matches == 1 and rating.rid == 2
    assert rating.ordinal == won.rating_after
    history = only(lobby.call(loser.conn, GetHistory(10, rid=3)), loser.conn, History)
    assert history.rid == 3 and len(history.entries) == 1
    entry = history.entries[0]
    assert (entry.match_id, entry.mode, entry.result) == (mid, "1v1", "loss")
    assert (entry.ended_at, entry.rating_after) == (lobby.now, lost.rating_after)

    # a duplicate is acked and changes nothing
    before = {p.pid: lobby.store.rating(p.pid) for p in players}
    outs = lobby.result(started, {"winner": 1})
    assert outs == [SendControl(host, ResultAck(mid))]
    assert {p.pid: lobby.store.rating(p.pid) for p in players} == before
    assert lobby.store.matches_played(winner.pid) == 1
    # and the players may queue again
    only(lobby.call(winner.conn, Queue("1v1", REGION)), winner.conn, Queued)


def test_a_draw_is_rated_as_a_draw() -> None:
    lobby = Lobby()
    host, _ = lobby.host("h1")
    players = lobby.players(2)
    started = lobby.start(players, "1v1", host)
    outs = lobby.result(started, {"winner": None})
    assert [only(outs, p.conn, MatchEnded).result for p in players] == ["draw", "draw"]
    assert lobby.store.matches_played(players[0].pid) == 1


def test_an_abandoned_or_unclear_result_is_no_contest() -> None:
    lobby = Lobby()
    host, _ = lobby.host("h1")
    cases: list[tuple[dict[str, object], str]] = [
        ({"winner": 0}, "abandoned"),  # the room did not decide it by vote
        ({"winner": 2}, "result"),  # no such team
        ({"winner": True}, "result"),  # not an int
        ({}, "result"),  # no winner named
    ]
    for n, (result, reason) in enumerate(cases):
        lobby.beat(host)
        players = lobby.players(2, f"r{n}")
        started = lobby.start(players, "1v1", host)
        outs = lobby.result(started, result, reason)
        assert controls(outs, host) == [ResultAck(started.create.match_id)]
        for p in players:
            ended = only(outs, p.conn, MatchEnded)
            assert ended.result == "no_contest"
            assert ended.rating_after == ended.rating_before
            assert lobby.store.rating(p.pid) == default_rating()
            history = only(lobby.call(p.conn, GetHistory(5)), p.conn, History)
            assert [e.result for e in history.entries] == ["no_contest"]
        assert lobby.store.match(started.create.match_id) is None


def test_a_result_for_another_room_or_host_is_acked_but_ignored() -> None:
    lobby = Lobby()
    host, _ = lobby.host("h1")
    other, _ = lobby.host("h2")
    players = lobby.players(2)
    started = lobby.start(players, "1v1", host)
    c = started.create
    wrong_room = RoomResult(c.match_id, c.room_id + 1, {"winner": 0}, (), 10, "result", 0)
    assert lobby.to_host(host, wrong_room) == [SendControl(host, ResultAck(c.match_id))]
    wrong_host = replace(wrong_room, room_id=c.room_id)
    assert lobby.to_host(other, wrong_host) == [SendControl(other, ResultAck(c.match_id))]
    assert lobby.store.match(c.match_id) is not None
    assert lobby.core.counters["results_unknown"] == 2


# --- lobby restart ------------------------------------------------------------------------------


def match_before_restart() -> tuple[SqliteStore, Started, list[Player]]:
    first = Lobby(seed=1)
    host, _ = first.host("h1")
    players = first.players(2)
    return first.store, first.start(players, "1v1", host), players


def test_a_restarted_lobby_aborts_matches_whose_host_does_not_come_back() -> None:
    store, started, _ = match_before_restart()
    mid = started.create.match_id
    lobby = Lobby(store=store, seed=2, now=T0 + 60.0, first_conn=100)
    assert lobby.core.next_deadline() == lobby.now + lobby.settings.host_lease
    # a player who logs in meanwhile gets a ticket sealed with the stored key
    conn, outs = lobby.relogin("dev-0")
    logged_in, ready = sent(outs, conn)
    assert isinstance(logged_in, LoggedIn) and isinstance(ready, MatchReady)
    check_ticket(started.create, ready, logged_in.player_id, lobby.now)
    assert lobby.poll(lobby.settings.host_lease - 0.01) == []
    outs = lobby.poll(0.01)
    assert only(outs, conn, MatchAborted).match_id == mid
    assert store.match(mid) is None
    assert notes(outs, "match_aborted")


def test_a_restarted_lobby_keeps_matches_its_host_readopts() -> None:
    store, started, players = match_before_restart()
    c = started.create
    lobby = Lobby(store=store, seed=2, now=T0 + 60.0, first_conn=100)
    lobby.at(1.0)
    host, outs = lobby.host("h1", rooms=(c.room_id,))
    assert [o for o in outs if isinstance(o, Send)] == []
    for _ in range(8):
        lobby.at(1.0)
        lobby.beat(host, load=1)
        assert notes(lobby.poll(), "match_aborted") == []
    assert store.match(c.match_id) is not None
    conns = [lobby.relogin(f"dev-{i}")[0] for i in range(2)]
    outs = lobby.to_host(host, RoomResult(c.match_id, c.room_id, {"winner": 1}, (), 9, "result", 0))
    assert controls(outs, host) == [ResultAck(c.match_id)]
    results = sorted(only(outs, conn, MatchEnded).result for conn in conns)
    assert results == ["loss", "win"]
    assert lobby.store.matches_played(players[0].pid) == 1


def test_a_restarted_host_without_the_room_aborts_the_match_at_once() -> None:
    store, started, _ = match_before_restart()
    lobby = Lobby(store=store, seed=2, now=T0 + 60.0, first_conn=100)
    _, outs = lobby.host("h1", rooms=())
    assert notes(outs, "match_aborted")
    assert store.match(started.create.match_id) is None


# --- determinism --------------------------------------------------------------------------------


def scenario(seed: int) -> list[Output]:
    lobby = Lobby(seed=seed)
    log: list[Output] = []
    host, outs = lobby.host("h1")
    log += outs
    alice = lobby.register("alice")
    bob = lobby.device("dev-bob")
    proposal = lobby.propose([alice, bob], "1v1")
    log.append(Send(0, proposal))
    log += lobby.accept_all([alice, bob], proposal)
    (create,) = of_type(controls(log, host), CreateRoom)
    log += lobby.to_host(host, RoomCreated(create.request_id, create.room_id, *UDP))
    lobby.close(bob.conn)
    log += lobby.relogin("dev-bob")[1]
    log += lobby.to_host(
        host, RoomResult(create.match_id, create.room_id, {"winner": 0}, (), 9, "result", 0)
    )
    log += lobby.call(alice.conn, GetHistory(5))
    return log


def test_the_same_seed_and_calls_give_the_same_outputs() -> None:
    first, second = scenario(42), scenario(42)
    assert first == second
    assert any(_is(o, MatchReady) for o in first)
    assert scenario(43) != first


# --- storage answers that arrive later, or not at all ---------------------------------------


def test_a_queue_request_holds_its_ticket_while_ratings_load() -> None:
    lobby = Lobby()
    a, b = lobby.players(2)
    lobby.hold_effects = True
    assert lobby.call(a.conn, Queue("1v1", REGION, rid=1)) == []
    (load,) = lobby.held
    assert isinstance(load, LoadRatings) and load.player_ids == (a.pid,)
    assert lobby.core.queued_tickets == 1
    # a second request meanwhile is refused; a cancel drops it before the matchmaker sees it
    e = error(lobby.call(a.conn, Queue("3v3", REGION, rid=2)), a.conn)
    assert (e.code, e.rid) == (ErrorCode.ALREADY_QUEUED, 2)
    outs = lobby.call(a.conn, CancelQueue(rid=3))
    assert sent(outs, a.conn) == [QueueCancelled(load.ticket_id, 3)]
    assert lobby.release() == []  # the late ratings find nothing waiting
    assert lobby.core.queued_tickets == 0
    # loaded late, a ticket keeps the time it was asked for
    lobby.hold_effects = True
    lobby.call(a.conn, Queue("1v1", REGION))
    lobby.at(5.0)
    queued = only(lobby.release(), a.conn, Queued)
    assert queued.ticket_id == load.ticket_id + 1
    only(lobby.call(b.conn, Queue("1v1", REGION)), b.conn, Queued)
    outs = lobby.poll(lobby.settings.match_interval)
    assert only(outs, a.conn, MatchProposed) == only(outs, b.conn, MatchProposed)
    assert lobby.core.counters["tickets_queued"] == 2


def test_a_player_gone_while_ratings_load_is_not_queued() -> None:
    lobby = Lobby()
    a, b = lobby.players(2)
    lobby.hold_effects = True
    lobby.call(a.conn, Queue("3v3", REGION, party=(b.pid,), rid=4))
    lobby.hold_effects = False
    lobby.close(b.conn)  # b's drop cancels the party's request for both
    assert lobby.release() == []
    assert lobby.core.queued_tickets == 0
    only(lobby.call(a.conn, Queue("1v1", REGION)), a.conn, Queued)


def test_an_unreachable_store_answers_unavailable_and_the_client_may_retry() -> None:
    lobby = Lobby()
    p = lobby.device("dev-a")
    conn = lobby.connect()
    lobby.hold_effects = True
    lobby.call(conn, LoginDevice("dev-a", rid=5))
    (find,) = lobby.held
    lobby.held.clear()
    lobby.core.effect_failed(find, "OSError: connection refused", lobby.now)
    e = error(lobby.out(), conn)
    assert (e.code, e.request_type, e.rid) == (ErrorCode.UNAVAILABLE, "login_device", 5)
    for msg in (GetRating(rid=6), GetHistory(5, rid=7), Queue("1v1", REGION, rid=8)):
        lobby.call(p.conn, msg)
        (effect,) = lobby.held
        lobby.held.clear()
        lobby.core.effect_failed(effect, "timeout", lobby.now)
        e = error(lobby.out(), p.conn)
        assert (e.code, e.rid) == (ErrorCode.UNAVAILABLE, msg.rid), msg
    assert lobby.core.queued_tickets == 0
    assert lobby.core.counters["store_failures"] == 4
    lobby.hold_effects = False
    assert only(lobby.call(conn, LoginDevice("dev-a")), conn, LoggedIn).player_id == p.pid
    only(lobby.call(conn, Queue("1v1", REGION)), conn, Queued)


def test_a_result_the_store_could_not_take_is_not_acked_and_counts_when_sent_again() -> None:
    lobby = Lobby()
    host, _ = lobby.host("h1")
    players = lobby.players(2)
    started = lobby.start(players, "1v1", host)
    mid = started.create.match_id
    lobby.hold_effects = True
    assert lobby.result(started, {"winner": 0}) == []
    (record,) = lobby.held
    assert isinstance(record, RecordResult) and record.record.match_id == mid
    lobby.held.clear()
    lobby.core.effect_failed(record, "OSError: down", lobby.now)
    outs = lobby.out()
    assert controls(outs, host) == []  # not acked: the host sends it again
    assert notes(outs, "result_not_recorded")
    assert lobby.store.match(mid) is not None
    lobby.hold_effects = False
    outs = lobby.result(started, {"winner": 0})
    assert controls(outs, host) == [ResultAck(mid)]
    assert {type(m) for p in players for m in sent(outs, p.conn)} == {MatchEnded}
    assert lobby.store.match(mid) is None and lobby.store.matches_played(players[0].pid) == 1


def test_players_hear_of_their_room_once_the_store_has_the_match() -> None:
    lobby = Lobby()
    host, _ = lobby.host("h1")
    players = lobby.players(2)
    lobby.hold_effects, lobby.hold_types = True, (SaveMatch, EndMatch)
    proposal = lobby.propose(players, "1v1")
    (create,) = of_type(controls(lobby.accept_all(players, proposal), host), CreateRoom)
    outs = lobby.to_host(host, RoomCreated(create.request_id, create.room_id, *UDP))
    # Nobody is told where to play before the store has the match; the core's view has it.
    assert not of_type([o.message for o in outs if isinstance(o, Send)], MatchReady)
    assert lobby.store.match(create.match_id) is None
    assert lobby.desk.rooms.in_match(players[0].pid)
    lobby.hold_effects = False
    readies = lobby.release()
    assert {only(readies, p.conn, MatchReady).match_id for p in players} == {create.match_id}
    assert lobby.store.match(create.match_id) is not None
    lobby.hold_effects = True
    lobby.at(lobby.settings.host_lease + 1)
    lobby.poll()  # the host's lease runs out: aborted
    assert [type(e) for e in lobby.held] == [EndMatch]
    lobby.release()
    assert lobby.store.match(create.match_id) is None
    assert lobby.store.matches_in_progress() == []


def test_a_player_hears_queued_only_once_the_store_has_the_ticket() -> None:
    lobby = Lobby()
    p = lobby.device("dev-a")
    lobby.hold_effects, lobby.hold_types = True, (SaveTicket,)
    assert lobby.call(p.conn, Queue("1v1", REGION, rid=3)) == []
    (save,) = lobby.held
    assert isinstance(save, SaveTicket) and save.ticket.player_ids == (p.pid,)
    queued = only(lobby.release(), p.conn, Queued)
    assert (queued.ticket_id, queued.rid) == (save.ticket.ticket_id, 3)


def test_a_host_back_without_the_room_but_with_its_result_gets_it_recorded() -> None:
    """The room ended while the host was away (a lobby restart, or another matchmaker):
    the host says it holds the result, so the match waits for it instead of being aborted."""
    store, started, players = match_before_restart()
    mid = started.create.match_id
    lobby = Lobby(store=store, seed=2, now=T0 + 60.0, first_conn=100)
    conns = [lobby.relogin(f"dev-{i}")[0] for i in range(2)]
    host = next(lobby._host_conns)
    lobby.core.host_connected(host, lobby.now)
    register = Register("h1", UDP[0], UDP[1], 4, 0, "1.0", (), (mid,))
    outs = lobby.to_host(host, register)
    assert not notes(outs, "match_aborted")
    outs = lobby.to_host(
        host, RoomResult(mid, started.create.room_id, {"winner": 0}, (), 900, "result", 0)
    )
    assert controls(outs, host) == [ResultAck(mid)]
    assert {only(outs, c, MatchEnded).match_id for c in conns} == {mid}
    assert store.match(mid) is None and store.matches_played(players[0].pid) == 1


def test_a_result_a_host_said_it_held_but_never_sent_aborts_the_match_after_a_lease() -> None:
    store, started, _ = match_before_restart()
    mid = started.create.match_id
    lobby = Lobby(store=store, seed=2, now=T0 + 60.0, first_conn=100)
    host = next(lobby._host_conns)
    lobby.core.host_connected(host, lobby.now)
    lobby.to_host(host, Register("h1", UDP[0], UDP[1], 4, 0, "1.0", (), (mid,)))
    lobby.beat(host)
    assert not notes(lobby.poll(lobby.settings.host_lease - 0.01), "match_aborted")
    lobby.beat(host)
    assert notes(lobby.poll(0.02), "match_aborted")
    assert store.match(mid) is None
