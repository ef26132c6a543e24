"""The lobby's storage: its interfaces (``LobbyStore``, awaited ``AsyncStore``), what they
hold, and what every backend checks.

The lobby keeps accounts, ratings, match results/history, the matches in progress (and, on
several nodes, queued tickets and the room-host registry) in a store, so that a restarted
lobby, or another lobby node, can re-issue join tickets on reconnect, abort the matches of a
dead host, and take the queue over. Backends: SQLite in the data directory
(`sqlitestore.py`, the embedded default) and Redis shared by several nodes
(`redisstore.py`). Every method is atomic on its own.

Decisions (both backends):

* **Names** are unique case-insensitively (names are ASCII, see ``accounts.validate_name``).
  **Device ids** are stored only as ``accounts.device_key`` (SHA-256), never in the clear.
* **Results** are idempotent by match id: ``record_result`` checks, writes the result, each
  player's history row and the new ratings, and ends the match in progress in one atomic
  step, so a duplicate ROOM_RESULT or a crash mid-way can never apply ratings twice.
* **Matches in progress:** a player is in at most one (``put_match`` raises ``PlayerInMatch``).
  ``put_match`` replaces a record with the same match id (e.g. after re-allocation). The
  ticket key of each is stored too (it seals new tickets after a restart): keep stores private.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import msgpack

from battle.config import RosterEntry
from lobby.allocation import HostInfo
from lobby.matchmaker import QueuedPlayer, Ticket
from lobby.ratings import Rating


class StoreError(Exception):
    """Base of the errors a store raises for a refused operation."""


class NameTaken(StoreError):
    """An account with that name (compared case-insensitively) exists already."""


class PlayerInMatch(StoreError):
    """A player of a new match in progress is already in another one."""


@dataclass(frozen=True, slots=True)
class Account:
    player_id: int
    name: str | None
    """None for a device-only account."""
    password_hash: str | None
    """The encoded scrypt hash (``accounts.hash_password``); None for a device-only account."""
    has_device: bool


@dataclass(frozen=True, slots=True)
class MatchRecord:
    """A match in progress: enough to re-issue a join ticket or abort it with its host."""

    match_id: int
    mode: str
    host_id: str
    room_id: int
    udp_host: str
    udp_port: int
    tick_rate: int
    ticket_key: bytes
    roster: tuple[RosterEntry, ...]
    started_at: float

    def seat(self, player_id: int) -> RosterEntry | None:
        return next((e for e in self.roster if e.player_id == player_id), None)


@dataclass(frozen=True, slots=True)
class HistoryEntry:
    """One finished match as seen by one player."""

    match_id: int
    mode: str
    ended_at: float
    team: int
    """Index of the player's team in ``teams``."""
    teams: tuple[tuple[int, ...], ...]
    result: dict[str, Any]
    """The result as reported by the room (``record_result``'s ``result``)."""
    rating_before: Rating
    rating_after: Rating


class LobbyStore(Protocol):
    """What the lobby needs from storage, called synchronously (``SqliteStore``)."""

    # accounts
    def create_account(self, name: str, password_hash: str) -> int: ...
    def create_device_account(self, device_id: str) -> int: ...
    def account(self, player_id: int) -> Account | None: ...
    def account_by_name(self, name: str) -> Account | None: ...
    def account_by_device(self, device_id: str) -> Account | None: ...

    # ratings
    def rating(self, player_id: int) -> Rating: ...
    def set_ratings(self, ratings: Mapping[int, Rating]) -> None: ...
    def matches_played(self, player_id: int) -> int: ...

    # results and history
    def record_result(
        self,
        match_id: int,
        result: Mapping[str, Any],
        teams: Sequence[Sequence[int]],
        ratings_before: Mapping[int, Rating],
        ratings_after: Mapping[int, Rating],
        ended_at: float,
        *,
        mode: str,
    ) -> bool: ...
    def history(self, player_id: int, limit: int) -> list[HistoryEntry]: ...

    # matches in progress
    def put_match(self, record: MatchRecord) -> None: ...
    def match(self, match_id: int) -> MatchRecord | None: ...
    def match_for_player(self, player_id: int) -> MatchRecord | None: ...
    def end_match(self, match_id: int) -> bool: ...
    def matches_on_host(self, host_id: str) -> list[MatchRecord]: ...
    def matches_in_progress(self) -> list[MatchRecord]: ...

    def close(self) -> None: ...


class AsyncStore(Protocol):
    """The same storage as ``LobbyStore``, awaited: what the lobby's shell calls to carry out
    the core's storage effects. ``LocalStore`` (sqlitestore.py) adapts a synchronous store;
    the Redis backend (`redisstore.py`) is asynchronous by nature. Semantics and errors are
    those of the ``LobbyStore`` methods of the same name; ``ratings`` reads several players.
    """

    async def create_account(self, name: str, password_hash: str) -> int: ...
    async def create_device_account(self, device_id: str) -> int: ...
    async def account(self, player_id: int) -> Account | None: ...
    async def account_by_name(self, name: str) -> Account | None: ...
    async def account_by_device(self, device_id: str) -> Account | None: ...
    async def ratings(self, player_ids: Sequence[int]) -> dict[int, Rating]: ...
    async def matches_played(self, player_id: int) -> int: ...
    async def record_result(
        self,
        match_id: int,
        result: Mapping[str, Any],
        teams: Sequence[Sequence[int]],
        ratings_before: Mapping[int, Rating],
        ratings_after: Mapping[int, Rating],
        ended_at: float,
        *,
        mode: str,
    ) -> bool: ...
    async def history(self, player_id: int, limit: int) -> list[HistoryEntry]: ...
    async def put_match(self, record: MatchRecord) -> None: ...
    async def end_match(self, match_id: int) -> bool: ...
    async def matches_in_progress(self) -> list[MatchRecord]: ...

    # queued tickets, for a matchmaker taking over (a single node keeps none)
    async def save_ticket(self, ticket: Ticket) -> None: ...
    async def drop_tickets(self, ticket_ids: Sequence[int]) -> None: ...
    async def load_tickets(self) -> list[Ticket]: ...
    async def claim_tickets(self, ticket_ids: Sequence[int], generation: int) -> bool:
        """Take the tickets out for a match: False (and nothing taken) if one is gone or
        `generation` is no longer the matchmaker lease's."""
        ...

    # the room-host registry, shared with other lobby nodes (a single node keeps none)
    async def publish_host(self, info: HostInfo, registered: bool, lease: float) -> None: ...
    async def remove_host(self, host_id: str) -> None: ...
    async def live_hosts(self) -> list[HostInfo]: ...


def check_result(
    teams: Sequence[Sequence[int]],
    ratings_before: Mapping[int, Rating],
    ratings_after: Mapping[int, Rating],
    ended_at: float,
) -> float:
    """What every store refuses in ``record_result`` (ValueError); the end time, checked."""
    ended_at = finite_time(ended_at, "ended_at")
    players = [pid for team in teams for pid in team]
    if len(set(players)) != len(players):
        raise ValueError("a player appears more than once in teams")
    if set(ratings_before) != set(players) or set(ratings_after) != set(players):
        raise ValueError("ratings_before and ratings_after must cover exactly the players")
    return ended_at


def pack_ticket(ticket: Ticket) -> bytes:
    """A ticket as msgpack, for stores that keep them."""
    players = [[p.player_id, p.rating, p.uncertainty] for p in ticket.players]
    return _pack([ticket.ticket_id, players, ticket.mode, ticket.region, ticket.enqueued_at])


def unpack_ticket(data: bytes) -> Ticket:
    tid, players, mode, region, enqueued_at = _unpack(data)
    return Ticket(
        int(tid),
        tuple(QueuedPlayer(int(p), float(r), float(u)) for p, r, u in players),
        str(mode),
        str(region),
        float(enqueued_at),
    )


def finite_time(value: float, what: str) -> float:
    """A unix time a store keeps: finite, not negative (ValueError naming `what`)."""
    if not (math.isfinite(value) and value >= 0):
        raise ValueError(f"{what} must be a finite time >= 0, got {value}")
    return float(value) + 0.0  # no -0.0, which SQLite would not keep either


def _pack(value: object) -> bytes:
    packed: bytes = msgpack.packb(value, use_bin_type=True)
    return packed


def _unpack(data: bytes) -> Any:
    return msgpack.unpackb(data, raw=False, strict_map_key=False)
