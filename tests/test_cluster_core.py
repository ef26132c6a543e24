"""Lobby cores as nodes of one cluster, wired by an in-memory bus, on a fake clock.

Node cores hand players' requests to the matchmaking desk on another node (`Forward`) and
take its answers back (`Deliver`); what the cluster shell does over Redis pub/sub, the
`Cluster` here does by hand, so every hand-over and every takeover step is checked without
sockets. The store is SQLite in memory plus a ticket table fenced by generation, as the
Redis store keeps it.
"""

from __future__ import annotations

import itertools
import random
from collections.abc import Sequence

from battle.control import CreateRoom, Register, Registered, RoomCreated
from lobby.core import LobbyCore
from lobby.effects import EffectRunner, run_now
from lobby.matchmaker import Ticket
from lobby.outputs import Close, CloseControl, Deliver, Effect, Forward, Output, Send, SendControl
from lobby.protocol import (
    PROTOCOL_VERSION,
    Accept,
    Error,
    ErrorCode,
    Hello,
    Kicked,
    LoggedIn,
    LoginDevice,
    MatchAborted,
    MatchCancelled,
    MatchProposed,
    MatchReady,
    Message,
    Queue,
    Queued,
    RegisterDevice,
    ServerMessage,
)
from lobby.settings import LobbySettings
from lobby.sqlitestore import LocalStore, SqliteStore

SECRET = bytes(range(32))
T0 = 1_700_000_000.0
REGION = "local"
UDP = ("10.0.0.5", 5000)


class FencedTickets(LocalStore):
    """SQLite plus kept tickets, claimed only under the current matchmaker generation."""

    def __init__(self, store: SqliteStore) -> None:
        super().__init__(store)
        self.tickets: dict[int, Ticket] = {}
        self.generation = 0

    async def save_ticket(self, ticket: Ticket) -> None:
        self.tickets[ticket.ticket_id] = ticket

    async def drop_tickets(self, ticket_ids: Sequence[int]) -> None:
        for tid in ticket_ids:
            self.tickets.pop(tid, None)

    async def load_tickets(self) -> list[Ticket]:
        return sorted(self.tickets.values(), key=lambda t: t.ticket_id)

    async def claim_tickets(self, ticket_ids: Sequence[int], generation: int) -> bool:
        if generation != self.generation or any(t not in self.tickets for t in ticket_ids):
            return False
        for tid in ticket_ids:
            del self.tickets[tid]
        return True


async def _hash(password: str) -> str:
    return password


async def _check(password: str, encoded: str | None) -> bool:
    return encoded == password


class Cluster:
    """Nodes by name; `settle()` carries every output across until nothing moves."""

    def __init__(self, names: Sequence[str], settings: LobbySettings | None = None) -> None:
        self.settings = settings or LobbySettings()
        self.now = T0
        self.store = FencedTickets(SqliteStore(":memory:"))
        self.cores: dict[str, LobbyCore] = {}
        self.runners: dict[str, EffectRunner] = {}
        self.sent: dict[str, list[Output]] = {}
        self.lost: list[Forward] = []
        self.matchmaker: str | None = None
        self._conns = itertools.count(1)
        for i, name in enumerate(names):
            self.add(name, seed=i)

    def add(self, name: str, seed: int = 0) -> None:
        core = LobbyCore(
            self.settings,
            session_secret=SECRET,
            now=self.now,
            entropy=random.Random(seed).randbytes,
            node_id=name,
        )
        self.cores[name] = core
        self.sent[name] = []
        self.runners[name] = EffectRunner(
            core, self.store, clock=lambda: self.now, hash_password=_hash, check_password=_check
        )

    def lead(self, name: str, *, announce: bool = True) -> None:
        """`name` takes the matchmaker lease (a new generation) from what the store kept;
        the other nodes tell it who is connected (`announce`), or do so later by hand."""
        if self.matchmaker is not None and self.matchmaker in self.cores:
            self.cores[self.matchmaker].stop_matchmaking(self.now)
        self.store.generation += 1
        tickets = run_value(self.store.load_tickets())
        matches = self.store.store.matches_in_progress()
        self.cores[name].become_matchmaker(self.store.generation, matches, tickets, self.now)
        self.matchmaker = name
        for other, core in self.cores.items():
            if other != name and announce:
                core.announce()
        self.settle()

    def kill(self, name: str) -> None:
        del self.cores[name]
        if self.matchmaker == name:
            self.matchmaker = None

    def settle(self) -> None:
        moved = True
        while moved:
            moved = False
            for name, core in list(self.cores.items()):
                for out in core.take_outputs():
                    moved = True
                    self._carry(name, out)

    def _carry(self, name: str, out: Output) -> None:
        core = self.cores[name]
        if isinstance(out, Forward):
            leader = self.matchmaker
            if leader is None or leader == name or leader not in self.cores:
                self.lost.append(out)
                core.forward_failed(out)
            else:
                self.cores[leader].forwarded(name, out, self.now)
        elif isinstance(out, Deliver):
            if out.node in self.cores:
                self.cores[out.node].delivered(out.player_id, out.message, self.now)
        elif isinstance(out, Effect):
            run_now(self.runners[name].run(out))
        else:
            self.sent[name].append(out)

    def at(self, dt: float) -> None:
        self.now += dt
        for core in self.cores.values():
            core.poll(self.now)
        self.settle()

    # players and hosts

    def join(self, node: str, device: str) -> tuple[int, int]:
        """A client on `node` logged in with `device`: (conn, player id)."""
        core = self.cores[node]
        conn = next(self._conns)
        core.client_connected(conn, self.now)
        core.client_message(conn, Hello(PROTOCOL_VERSION, "t", "1"), self.now)
        core.client_message(conn, RegisterDevice(device), self.now)
        self.settle()
        if not any(isinstance(m, LoggedIn) for m in self.messages(node, conn)):
            core.client_message(conn, LoginDevice(device), self.now)
            self.settle()
        logged = [m for m in self.messages(node, conn) if isinstance(m, LoggedIn)]
        return conn, logged[-1].player_id

    def ask(self, node: str, conn: int, msg: Message) -> None:
        self.cores[node].client_message(conn, msg, self.now)
        self.settle()

    def messages(self, node: str, conn: int) -> list[ServerMessage]:
        return [o.message for o in self.sent[node] if isinstance(o, Send) and o.conn == conn]

    def host(self, node: str, host_id: str = "h1") -> int:
        conn = 10_000 + next(self._conns)
        core = self.cores[node]
        core.host_connected(conn, self.now)
        core.host_message(conn, Register(host_id, UDP[0], UDP[1], 4, 0, "1.0", ()), self.now)
        self.settle()
        return conn

    def controls(self, node: str, conn: int) -> list[object]:
        return [o.message for o in self.sent[node] if isinstance(o, SendControl) and o.conn == conn]


def run_value(coro: object) -> list[Ticket]:
    step = coro.__await__()  # type: ignore[attr-defined]
    try:
        step.send(None)
    except StopIteration as done:
        return list(done.value)
    raise RuntimeError("suspended")


def _last(msgs: Sequence[ServerMessage], kind: type[ServerMessage]) -> ServerMessage:
    found = [m for m in msgs if isinstance(m, kind)]
    assert found, msgs
    return found[-1]


def _match(c: Cluster, players: Sequence[tuple[str, int]]) -> MatchProposed:
    c.at(c.settings.match_interval)
    proposals = [_last(c.messages(n, conn), MatchProposed) for n, conn in players]
    assert all(p == proposals[0] for p in proposals)
    proposal = proposals[0]
    assert isinstance(proposal, MatchProposed)
    return proposal


def test_players_on_two_nodes_are_matched_and_told_on_their_own_node() -> None:
    c = Cluster(["a", "b"])
    c.lead("a")
    host = c.host("a")
    assert isinstance(c.controls("a", host)[0], Registered)
    a_conn, a_pid = c.join("a", "dev-a")
    b_conn, b_pid = c.join("b", "dev-b")
    c.ask("a", a_conn, Queue("1v1", REGION, rid=1))
    c.ask("b", b_conn, Queue("1v1", REGION, rid=2))
    queued = _last(c.messages("b", b_conn), Queued)
    assert isinstance(queued, Queued) and queued.rid == 2
    assert c.cores["b"].queued_tickets == 0 and c.cores["a"].queued_tickets == 2
    proposal = _match(c, [("a", a_conn), ("b", b_conn)])
    c.ask("a", a_conn, Accept(proposal.proposal_id))
    c.ask("b", b_conn, Accept(proposal.proposal_id))
    (create,) = [m for m in c.controls("a", host) if isinstance(m, CreateRoom)]
    c.cores["a"].host_message(host, RoomCreated(create.request_id, create.room_id, *UDP), c.now)
    c.settle()
    ready_a = _last(c.messages("a", a_conn), MatchReady)
    ready_b = _last(c.messages("b", b_conn), MatchReady)
    assert isinstance(ready_a, MatchReady) and isinstance(ready_b, MatchReady)
    assert ready_a.match_id == ready_b.match_id == create.match_id
    assert {e.player_id for e in create.roster} == {a_pid, b_pid}
    assert c.store.tickets == {}  # claimed for the match


def test_a_node_that_is_not_the_matchmaker_refuses_room_hosts() -> None:
    c = Cluster(["a", "b"])
    c.lead("a")
    c.cores["b"].host_connected(99, c.now)
    assert [o for o in c.cores["b"].take_outputs() if isinstance(o, CloseControl)]


def test_a_login_on_another_node_kicks_the_first_connection() -> None:
    c = Cluster(["a", "b"])
    c.lead("a")
    first, pid = c.join("b", "dev-x")
    c.ask("b", first, Queue("1v1", REGION))
    _, again = c.join("a", "dev-x")
    assert again == pid
    assert isinstance(_last(c.messages("b", first), Kicked), Kicked)
    assert any(isinstance(o, Close) and o.conn == first for o in c.sent["b"])
    # The old node's close does not take the player offline on the new one.
    c.cores["b"].client_closed(first, c.now)
    c.settle()
    assert c.cores["a"].desk is not None and c.cores["a"].desk.online(pid)


def test_a_dropped_connection_elsewhere_leaves_the_queue() -> None:
    c = Cluster(["a", "b"])
    c.lead("a")
    conn, _ = c.join("b", "dev-b")
    c.ask("b", conn, Queue("1v1", REGION))
    assert c.cores["a"].queued_tickets == 1 and len(c.store.tickets) == 1
    c.cores["b"].client_closed(conn, c.now)
    c.settle()
    assert c.cores["a"].queued_tickets == 0 and c.store.tickets == {}


def test_without_a_matchmaker_queue_requests_are_answered_unavailable() -> None:
    c = Cluster(["a", "b"])
    conn, _ = c.join("b", "dev-b")  # logins need no matchmaker
    c.ask("b", conn, Queue("1v1", REGION, rid=5))
    error = _last(c.messages("b", conn), Error)
    assert isinstance(error, Error) and (error.code, error.rid) == (ErrorCode.UNAVAILABLE, 5)


def test_a_new_matchmaker_matches_the_tickets_the_dead_one_kept() -> None:
    c = Cluster(["a", "b", "c"])
    c.lead("a")
    b1, _ = c.join("b", "dev-1")
    c1, _ = c.join("c", "dev-2")
    gone, _ = c.join("a", "dev-3")  # on the node that dies: its ticket goes with it
    for node, conn in (("b", b1), ("a", gone)):
        c.ask(node, conn, Queue("3v3" if node == "a" else "1v1", REGION))
    first = _last(c.messages("b", b1), Queued)
    assert isinstance(first, Queued)
    assert len(c.store.tickets) == 2
    c.kill("a")
    c.lead("b")  # c and b tell it who is here; b's own players it knows
    # Not queued again before the others had a lease to say who is here...
    assert c.cores["b"].queued_tickets == 2
    c.ask("c", c1, Queue("1v1", REGION))
    c.at(c.settings.host_lease)
    # ...then the ticket of the dead node's player is dropped, the other queued again with
    # its wait, and matched with the new one: nobody had to queue again.
    second = _last(c.messages("c", c1), Queued)
    assert isinstance(second, Queued) and second.ticket_id >> 32 == 2  # the new generation's
    assert set(c.store.tickets) == {first.ticket_id, second.ticket_id}
    proposal = _match(c, [("b", b1), ("c", c1)])
    assert proposal.mode == "1v1"
    assert c.cores["b"].counters["tickets_restored"] == 1
    assert c.cores["b"].counters["tickets_dropped"] == 1
    assert proposal.proposal_id >> 32 == 2


def test_a_deposed_matchmaker_cannot_start_a_match() -> None:
    c = Cluster(["a", "b"])
    c.lead("a")
    host = c.host("a")
    p1, _ = c.join("a", "dev-1")
    p2, _ = c.join("a", "dev-2")
    for conn in (p1, p2):
        c.ask("a", conn, Queue("1v1", REGION))
    proposal = _match(c, [("a", p1), ("a", p2)])
    c.store.generation += 1  # the lease moved on without a knowing it
    for conn in (p1, p2):
        c.ask("a", conn, Accept(proposal.proposal_id))
    assert not [m for m in c.controls("a", host) if isinstance(m, CreateRoom)]
    cancelled = _last(c.messages("a", p1), MatchCancelled)
    assert isinstance(cancelled, MatchCancelled) and not cancelled.requeued
    assert len(c.store.tickets) == 2  # still there for the real matchmaker


def test_players_of_a_dead_node_are_taken_out_of_the_queue() -> None:
    c = Cluster(["a", "b"])
    c.lead("a")
    conn, _ = c.join("b", "dev-b")
    c.ask("b", conn, Queue("1v1", REGION))
    c.cores["a"].node_gone("b", c.now)
    c.settle()
    assert c.cores["a"].queued_tickets == 0 and c.store.tickets == {}
    assert c.cores["a"].desk is not None and not c.cores["a"].desk.online(1)


def test_a_login_elsewhere_kicks_a_connection_on_the_matchmaker_node_too() -> None:
    c = Cluster(["a", "b"])
    c.lead("a")
    first, pid = c.join("a", "dev-y")
    _, again = c.join("b", "dev-y")
    assert again == pid
    assert isinstance(_last(c.messages("a", first), Kicked), Kicked)
    assert any(isinstance(o, Close) and o.conn == first for o in c.sent["a"])
    assert c.cores["a"].online_players == 0
    desk = c.cores["a"].desk
    assert desk is not None and desk.online(pid)


def test_news_for_players_not_yet_announced_to_a_new_matchmaker_waits_for_them() -> None:
    c = Cluster(["a", "b", "c"])
    c.lead("a")
    host = c.host("a")
    p1, _ = c.join("b", "dev-1")
    p2, _ = c.join("c", "dev-2")
    for node, conn in (("b", p1), ("c", p2)):
        c.ask(node, conn, Queue("1v1", REGION))
    proposal = _match(c, [("b", p1), ("c", p2)])
    for node, conn in (("b", p1), ("c", p2)):
        c.ask(node, conn, Accept(proposal.proposal_id))
    (create,) = [m for m in c.controls("a", host) if isinstance(m, CreateRoom)]
    c.cores["a"].host_message(host, RoomCreated(create.request_id, create.room_id, *UDP), c.now)
    c.settle()
    assert isinstance(_last(c.messages("c", p2), MatchReady), MatchReady)
    c.kill("a")
    c.lead("b", announce=False)  # c has not said who is connected yet
    # The host comes back to b without the room and holding no result: the match is over.
    back = c.host("b")
    assert isinstance(c.controls("b", back)[0], Registered)
    assert isinstance(_last(c.messages("b", p1), MatchAborted), MatchAborted)
    assert not [m for m in c.messages("c", p2) if isinstance(m, MatchAborted)]
    c.cores["c"].announce()
    c.settle()
    aborted = _last(c.messages("c", p2), MatchAborted)
    assert isinstance(aborted, MatchAborted) and aborted.match_id == create.match_id
    # Once the settling time is over, nothing more is held.
    c.at(c.settings.host_lease)
    assert c.cores["b"].out.held is None
