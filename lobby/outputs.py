"""What the lobby core asks its shell to do: the core's only way to reach the world.

The shell drains `LobbyCore.take_outputs()` after every call into the core and carries each
out in order. Connection ids are the shell's; the core never sees a socket.

Storage is an effect too (`Effect`): the core never waits on a store, so the same core runs
over embedded SQLite and over Redis shared by several lobby nodes. Each read or account
effect names the `LobbyCore` method its answer goes to (or `effect_failed`); writes of the
matches in progress (`SaveMatch`, `EndMatch`) and results (`RecordResult`) are carried out
one at a time in the order given, so a match is never ended before it was saved.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Literal

from battle.control import ControlMessage, RoomResult
from lobby.allocation import HostInfo
from lobby.matchmaker import Ticket
from lobby.protocol import Accept, CancelQueue, Decline, Queue, ServerMessage
from lobby.store import MatchRecord

QueueRequest = Queue | CancelQueue | Accept | Decline
"""What a player asks of the matchmaker (wherever it runs)."""


@dataclass(frozen=True, slots=True)
class Send:
    """Write a message to a client connection."""

    conn: int
    message: ServerMessage


@dataclass(frozen=True, slots=True)
class Close:
    """Close a client connection once what was sent before has been written."""

    conn: int
    reason: str


@dataclass(frozen=True, slots=True)
class SendControl:
    """Write a message to a room host's control connection."""

    conn: int
    message: ControlMessage


@dataclass(frozen=True, slots=True)
class CloseControl:
    conn: int
    reason: str


@dataclass(frozen=True, slots=True)
class HashPassword:
    """Run the password KDF off the event loop, then call `LobbyCore.password_hashed`."""

    conn: int
    rid: int | None
    name: str
    password: str = field(repr=False)


@dataclass(frozen=True, slots=True)
class CheckPassword:
    """Verify off the event loop, then call `LobbyCore.password_checked`.

    `encoded` is None for an unknown name: verify against a dummy hash anyway so the answer
    takes as long as for a real account (no name probing by timing).
    """

    conn: int
    rid: int | None
    player_id: int | None
    password: str = field(repr=False)
    encoded: str | None = field(repr=False)


@dataclass(frozen=True, slots=True)
class FindAccount:
    """Look an account up by name, device id or player id; answer `account_found`."""

    conn: int
    by: Literal["name", "device", "id"]
    key: str | int = field(repr=False)


@dataclass(frozen=True, slots=True)
class CreateAccount:
    """Create a name + password account; answer `account_created` (None: name taken)."""

    conn: int
    name: str
    encoded: str = field(repr=False)


@dataclass(frozen=True, slots=True)
class CreateDeviceAccount:
    """Create (or find, if it raced another) a device account; answer `account_created`."""

    conn: int
    device_id: str = field(repr=False)


@dataclass(frozen=True, slots=True)
class LoadRatings:
    """Read the ratings of a queue request's players; answer `ratings_loaded`."""

    ticket_id: int
    player_ids: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class LoadStats:
    """Read one player's rating and matches played; answer `stats_loaded`."""

    conn: int
    rid: int | None
    player_id: int


@dataclass(frozen=True, slots=True)
class LoadHistory:
    """Read one player's recent matches; answer `history_loaded`."""

    conn: int
    rid: int | None
    player_id: int
    limit: int


@dataclass(frozen=True, slots=True)
class SaveMatch:
    """Store a match in progress (a write: in order, retried while the store is down);
    answer `match_saved`, after which its players are sent MATCH_READY."""

    record: MatchRecord


@dataclass(frozen=True, slots=True)
class EndMatch:
    """Forget a match in progress (a write: in order, retried while the store is down)."""

    match_id: int


@dataclass(frozen=True, slots=True)
class RecordResult:
    """Rate a finished match and record it once (`rooms.settle`, then the store's
    ``record_result``); answer `result_recorded`, or `effect_failed` (the result is then
    not acked, so the host sends it again)."""

    conn: int
    record: MatchRecord
    result: RoomResult
    at: float


@dataclass(frozen=True, slots=True)
class SaveTicket:
    """Keep a queued ticket where a matchmaker taking over will find it (a write); answer
    `ticket_saved`."""

    ticket: Ticket


@dataclass(frozen=True, slots=True)
class DropTickets:
    """Forget tickets that left the queue without a match (a write)."""

    ticket_ids: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class ClaimTickets:
    """Take a found match's tickets out of the store, fenced by the matchmaker lease
    generation so a deposed matchmaker cannot match them twice (a write); answer
    `tickets_claimed`."""

    proposal_id: int
    ticket_ids: tuple[int, ...]
    generation: int


@dataclass(frozen=True, slots=True)
class PublishHost:
    """Share a room host's registration (`registered`) or load report in the store's host
    registry, leased for `lease` seconds (a write; nothing on a single node)."""

    info: HostInfo
    registered: bool
    lease: float


@dataclass(frozen=True, slots=True)
class RemoveHost:
    """The host is dead: take it out of the store's host registry (a write)."""

    host_id: str


Effect = (
    FindAccount
    | CreateAccount
    | CreateDeviceAccount
    | LoadRatings
    | LoadStats
    | LoadHistory
    | SaveMatch
    | EndMatch
    | RecordResult
    | SaveTicket
    | DropTickets
    | ClaimTickets
    | PublishHost
    | RemoveHost
)
WRITES = (
    SaveMatch,
    EndMatch,
    RecordResult,
    SaveTicket,
    DropTickets,
    ClaimTickets,
    PublishHost,
    RemoveHost,
)


@dataclass(frozen=True, slots=True)
class Forward:
    """Carry a player's request, or their coming and going, to the matchmaker's node."""

    player_id: int
    kind: Literal["online", "present", "offline", "request"]
    """online: just logged in; present: still here (said again to a new matchmaker)."""
    request: QueueRequest | None = None


@dataclass(frozen=True, slots=True)
class Deliver:
    """Carry a message to a player whose connection is on another lobby node."""

    node: str
    player_id: int
    message: ServerMessage


@dataclass(frozen=True, slots=True)
class Note:
    """Something worth a log line; `fields` are plain values."""

    event: str
    level: str = "info"
    fields: dict[str, Any] = field(default_factory=dict)


Output = (
    Send
    | Close
    | SendControl
    | CloseControl
    | HashPassword
    | CheckPassword
    | Effect
    | Forward
    | Deliver
    | Note
)


class Outbox:
    """The outputs being gathered, shared by the core's parts; also the players online."""

    def __init__(self) -> None:
        self.items: list[Output] = []
        self.counters: Counter[str] = Counter()
        self.online: dict[int, int] = {}
        """Player id -> client connection id, for players connected to this node."""
        self.remote: dict[int, str] = {}
        """Player id -> lobby node id, for players connected to another node (kept by the
        matchmaker; empty on a single node)."""
        self.held: dict[int, list[ServerMessage]] | None = None
        """While a new matchmaker waits for the nodes to say who is connected, pushes to
        players it does not know yet are kept here (by player id) instead of being lost."""

    def take(self) -> list[Output]:
        items, self.items = self.items, []
        return items

    def append(self, output: Output) -> None:
        self.items.append(output)

    def send(self, conn: int, message: ServerMessage) -> None:
        self.items.append(Send(conn, message))

    def push(self, player_id: int, message: ServerMessage) -> None:
        """Send to the player's live connection, here or on another node, if any (pushes to
        offline players are lost)."""
        conn = self.online.get(player_id)
        if conn is not None:
            self.items.append(Send(conn, message))
            return
        node = self.remote.get(player_id)
        if node is not None:
            self.items.append(Deliver(node, player_id, message))
        elif self.held is not None:
            self.held.setdefault(player_id, []).append(message)

    def is_online(self, player_id: int) -> bool:
        return player_id in self.online or player_id in self.remote

    def note(self, event: str, level: str = "info", **fields: Any) -> None:
        self.items.append(Note(event, level, fields))

    def count(self, name: str, n: int = 1) -> None:
        self.counters[name] += n
