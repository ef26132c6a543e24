"""The lobby's storage: one interface (``LobbyStore``), and the embedded SQLite backend.

The lobby keeps accounts, ratings, match results/history and the matches in progress here, so
that a restarted lobby (or, later, another lobby node with the Redis backend) can re-issue join
tickets on reconnect and abort the matches of a dead host. Every method is synchronous and
atomic on its own.

Decisions:

* **Ids.** Player, match and room ids are u64 on the wire; SQLite integers are signed 64-bit,
  so ids are stored as their two's-complement i64 and converted back on the way out.
* **Names** are unique case-insensitively (names are ASCII, see ``accounts.validate_name``).
  **Device ids** are stored only as ``accounts.device_key`` (SHA-256), never in the clear.
* **Results** are idempotent by match id: ``record_result`` checks, writes the result, each
  player's history row and the new ratings, and ends the match in progress in ONE
  transaction, so a duplicate ROOM_RESULT or a crash mid-way can never apply ratings twice.
* **Matches in progress:** a player is in at most one (``put_match`` raises ``PlayerInMatch``).
  ``put_match`` replaces a record with the same match id (e.g. after re-allocation).
* **SQLite:** WAL, ``synchronous=FULL`` (a result acked to the room host must survive a power
  loss), one connection in autocommit mode with explicit ``BEGIN IMMEDIATE`` transactions,
  schema created on open and versioned by ``PRAGMA user_version``. The ticket key of each
  match in progress is stored too (it is needed to seal new tickets after a lobby restart):
  the data directory must be private to the lobby.
"""

from __future__ import annotations

import math
import os
import sqlite3
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Protocol, Self

import msgpack

from battle.config import RosterEntry
from lobby.accounts import device_key, validate_name
from lobby.allocation import HostInfo
from lobby.matchmaker import QueuedPlayer, Ticket
from lobby.ratings import Rating, default_rating

SCHEMA_VERSION = 1


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
    """What the lobby needs from storage; ``SqliteStore`` now, a Redis backend later."""

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
    the core's storage effects. ``LocalStore`` adapts a synchronous store (SQLite); the Redis
    backend (`redisstore.py`) is asynchronous by nature. Semantics and errors are those of the
    ``LobbyStore`` methods of the same name; ``ratings`` reads several players at once.
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


class LocalStore:
    """``AsyncStore`` over a synchronous store in this process (SQLite).

    Every method answers at once, without suspending: an embedded store's calls take
    microseconds (a result's fsync, a millisecond or two), less than a thread hop would.
    """

    def __init__(self, store: LobbyStore) -> None:
        self.store = store

    async def create_account(self, name: str, password_hash: str) -> int:
        return self.store.create_account(name, password_hash)

    async def create_device_account(self, device_id: str) -> int:
        return self.store.create_device_account(device_id)

    async def account(self, player_id: int) -> Account | None:
        return self.store.account(player_id)

    async def account_by_name(self, name: str) -> Account | None:
        return self.store.account_by_name(name)

    async def account_by_device(self, device_id: str) -> Account | None:
        return self.store.account_by_device(device_id)

    async def ratings(self, player_ids: Sequence[int]) -> dict[int, Rating]:
        return {pid: self.store.rating(pid) for pid in player_ids}

    async def matches_played(self, player_id: int) -> int:
        return self.store.matches_played(player_id)

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
    ) -> bool:
        return self.store.record_result(
            match_id, result, teams, ratings_before, ratings_after, ended_at, mode=mode
        )

    async def history(self, player_id: int, limit: int) -> list[HistoryEntry]:
        return self.store.history(player_id, limit)

    async def put_match(self, record: MatchRecord) -> None:
        self.store.put_match(record)

    async def end_match(self, match_id: int) -> bool:
        return self.store.end_match(match_id)

    async def matches_in_progress(self) -> list[MatchRecord]:
        return self.store.matches_in_progress()

    # One node: its queue dies with its connections, so tickets are not kept.

    async def save_ticket(self, ticket: Ticket) -> None:
        pass

    async def drop_tickets(self, ticket_ids: Sequence[int]) -> None:
        pass

    async def load_tickets(self) -> list[Ticket]:
        return []

    async def claim_tickets(self, ticket_ids: Sequence[int], generation: int) -> bool:
        return True

    async def publish_host(self, info: HostInfo, registered: bool, lease: float) -> None:
        pass

    async def remove_host(self, host_id: str) -> None:
        pass

    async def live_hosts(self) -> list[HostInfo]:
        return []


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


# --- SQLite -----------------------------------------------------------------------------------

_SCHEMA = """
CREATE TABLE accounts (
    player_id     INTEGER PRIMARY KEY AUTOINCREMENT,
    name          TEXT UNIQUE COLLATE NOCASE,
    password_hash TEXT,
    device_key    BLOB UNIQUE,
    CHECK ((name IS NULL) = (password_hash IS NULL)),
    CHECK (name IS NOT NULL OR device_key IS NOT NULL)
);
CREATE TABLE ratings (
    player_id INTEGER PRIMARY KEY,
    mu        REAL NOT NULL,
    sigma     REAL NOT NULL
);
CREATE TABLE results (
    match_id INTEGER PRIMARY KEY,
    mode     TEXT NOT NULL,
    ended_at REAL NOT NULL,
    teams    BLOB NOT NULL,
    result   BLOB NOT NULL
);
CREATE TABLE history (
    player_id    INTEGER NOT NULL,
    match_id     INTEGER NOT NULL,
    ended_at     REAL NOT NULL,
    team         INTEGER NOT NULL,
    mu_before    REAL NOT NULL,
    sigma_before REAL NOT NULL,
    mu_after     REAL NOT NULL,
    sigma_after  REAL NOT NULL,
    PRIMARY KEY (player_id, match_id)
) WITHOUT ROWID;
CREATE INDEX history_recent ON history (player_id, ended_at DESC, match_id DESC);
CREATE TABLE matches (
    match_id   INTEGER PRIMARY KEY,
    mode       TEXT NOT NULL,
    host_id    TEXT NOT NULL,
    room_id    INTEGER NOT NULL,
    udp_host   TEXT NOT NULL,
    udp_port   INTEGER NOT NULL,
    tick_rate  INTEGER NOT NULL,
    ticket_key BLOB NOT NULL,
    roster     BLOB NOT NULL,
    started_at REAL NOT NULL
);
CREATE INDEX matches_host ON matches (host_id, match_id);
CREATE TABLE match_players (
    player_id INTEGER PRIMARY KEY,
    match_id  INTEGER NOT NULL
);
CREATE INDEX match_players_match ON match_players (match_id);
"""

_MATCH_COLUMNS = (
    "match_id, mode, host_id, room_id, udp_host, udp_port, tick_rate, ticket_key, roster, "
    "started_at"
)


def _i64(value: int) -> int:
    """A u64 id as SQLite stores it (two's complement)."""
    if not 0 <= value < 2**64:
        raise ValueError(f"id must be a u64, got {value}")
    return value - 2**64 if value >= 2**63 else value


def _u64(value: int) -> int:
    return value + 2**64 if value < 0 else value


def _pack(value: object) -> bytes:
    return msgpack.packb(value, use_bin_type=True)  # type: ignore[no-any-return]


def _unpack(data: bytes) -> Any:
    return msgpack.unpackb(data, raw=False, strict_map_key=False)


def finite_time(value: float, what: str) -> float:
    """A unix time a store keeps: finite, not negative (ValueError naming `what`)."""
    if not (math.isfinite(value) and value >= 0):
        raise ValueError(f"{what} must be a finite time >= 0, got {value}")
    return float(value) + 0.0  # no -0.0, which SQLite would not keep either


class SqliteStore:
    """``LobbyStore`` on one SQLite file (or ``":memory:"``); not thread-safe: one owner."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self._db = sqlite3.connect(os.fspath(path), isolation_level=None)
        try:
            self._db.execute("PRAGMA busy_timeout = 5000")
            self._db.execute("PRAGMA journal_mode = WAL")
            self._db.execute("PRAGMA synchronous = FULL")
            self._migrate()
        except BaseException:
            self._db.close()
            raise

    def _migrate(self) -> None:
        with self._transaction() as db:
            version = int(db.execute("PRAGMA user_version").fetchone()[0])
            if version > SCHEMA_VERSION:
                raise StoreError(
                    f"store schema version {version} is newer than this code ({SCHEMA_VERSION})"
                )
            if version == 0:
                for statement in _SCHEMA.split(";"):
                    if statement.strip():
                        db.execute(statement)
                db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield self._db
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- accounts -------------------------------------------------------------------------------

    def create_account(self, name: str, password_hash: str) -> int:
        validate_name(name)
        if not password_hash:
            raise ValueError("password_hash must not be empty")
        try:
            with self._transaction() as db:
                cur = db.execute(
                    "INSERT INTO accounts (name, password_hash) VALUES (?, ?)",
                    (name, password_hash),
                )
        except sqlite3.IntegrityError:
            raise NameTaken(name) from None
        if cur.lastrowid is None:  # pragma: no cover - sqlite always sets it after an INSERT
            raise StoreError("no player id assigned")
        return _u64(cur.lastrowid)

    def create_device_account(self, device_id: str) -> int:
        key = device_key(device_id)
        with self._transaction() as db:
            db.execute("INSERT OR IGNORE INTO accounts (device_key) VALUES (?)", (key,))
            row = db.execute("SELECT player_id FROM accounts WHERE device_key = ?", (key,))
            return _u64(int(row.fetchone()[0]))

    def account(self, player_id: int) -> Account | None:
        return self._account("player_id = ?", _i64(player_id))

    def account_by_name(self, name: str) -> Account | None:
        return self._account("name = ?", name)

    def account_by_device(self, device_id: str) -> Account | None:
        return self._account("device_key = ?", device_key(device_id))

    def _account(self, where: str, value: object) -> Account | None:
        row = self._db.execute(
            "SELECT player_id, name, password_hash, device_key IS NOT NULL FROM accounts "
            f"WHERE {where}",
            (value,),
        ).fetchone()
        if row is None:
            return None
        return Account(_u64(row[0]), row[1], row[2], bool(row[3]))

    # --- ratings --------------------------------------------------------------------------------

    def rating(self, player_id: int) -> Rating:
        row = self._db.execute(
            "SELECT mu, sigma FROM ratings WHERE player_id = ?", (_i64(player_id),)
        ).fetchone()
        return default_rating() if row is None else Rating(row[0], row[1])

    def set_ratings(self, ratings: Mapping[int, Rating]) -> None:
        with self._transaction() as db:
            self._put_ratings(db, ratings)

    @staticmethod
    def _put_ratings(db: sqlite3.Connection, ratings: Mapping[int, Rating]) -> None:
        db.executemany(
            "INSERT INTO ratings (player_id, mu, sigma) VALUES (?, ?, ?) "
            "ON CONFLICT (player_id) DO UPDATE SET mu = excluded.mu, sigma = excluded.sigma",
            [(_i64(pid), r.mu, r.sigma) for pid, r in sorted(ratings.items())],
        )

    def matches_played(self, player_id: int) -> int:
        row = self._db.execute(
            "SELECT count(*) FROM history WHERE player_id = ?", (_i64(player_id),)
        ).fetchone()
        return int(row[0])

    # --- results and history ----------------------------------------------------------------------

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
    ) -> bool:
        """Record a finished match once: history, new ratings, end of the match in progress.

        Returns False and changes nothing if ``match_id`` was recorded already. Every player in
        ``teams`` needs an entry in ``ratings_before`` and ``ratings_after`` (extra entries are
        refused too, so a mix-up cannot rate a bystander).
        """
        mid = _i64(match_id)
        ended_at = check_result(teams, ratings_before, ratings_after, ended_at)
        teams_blob = _pack([list(team) for team in teams])
        result_blob = _pack(dict(result))
        rows = [
            (
                _i64(pid),
                mid,
                ended_at,
                index,
                ratings_before[pid].mu,
                ratings_before[pid].sigma,
                ratings_after[pid].mu,
                ratings_after[pid].sigma,
            )
            for index, team in enumerate(teams)
            for pid in team
        ]
        with self._transaction() as db:
            if db.execute("SELECT 1 FROM results WHERE match_id = ?", (mid,)).fetchone():
                return False
            db.execute(
                "INSERT INTO results (match_id, mode, ended_at, teams, result) "
                "VALUES (?, ?, ?, ?, ?)",
                (mid, mode, ended_at, teams_blob, result_blob),
            )
            db.executemany("INSERT INTO history VALUES (?, ?, ?, ?, ?, ?, ?, ?)", rows)
            self._put_ratings(db, ratings_after)
            self._end_match(db, mid)
        return True

    def history(self, player_id: int, limit: int) -> list[HistoryEntry]:
        """The player's most recent finished matches, newest first, at most ``limit``."""
        if limit < 0:
            raise ValueError("limit must be >= 0")
        rows = self._db.execute(
            "SELECT h.match_id, r.mode, h.ended_at, h.team, r.teams, r.result, "
            "h.mu_before, h.sigma_before, h.mu_after, h.sigma_after "
            "FROM history AS h JOIN results AS r USING (match_id) "
            "WHERE h.player_id = ? ORDER BY h.ended_at DESC, h.match_id DESC LIMIT ?",
            (_i64(player_id), limit),
        ).fetchall()
        return [
            HistoryEntry(
                match_id=_u64(row[0]),
                mode=row[1],
                ended_at=row[2],
                team=row[3],
                teams=tuple(tuple(team) for team in _unpack(row[4])),
                result=_unpack(row[5]),
                rating_before=Rating(row[6], row[7]),
                rating_after=Rating(row[8], row[9]),
            )
            for row in rows
        ]

    # --- matches in progress ----------------------------------------------------------------------

    def put_match(self, record: MatchRecord) -> None:
        """Store (or replace) a match in progress; PlayerInMatch if a player is in another."""
        mid = _i64(record.match_id)
        finite_time(record.started_at, "started_at")
        roster = [[e.slot, e.player_id, e.team] for e in record.roster]
        players = [_i64(e.player_id) for e in record.roster]
        if len(set(players)) != len(players):
            raise ValueError("a player appears more than once in the roster")
        try:
            with self._transaction() as db:
                self._end_match(db, mid)
                db.execute(
                    f"INSERT INTO matches ({_MATCH_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (
                        mid,
                        record.mode,
                        record.host_id,
                        _i64(record.room_id),
                        record.udp_host,
                        record.udp_port,
                        record.tick_rate,
                        record.ticket_key,
                        _pack(roster),
                        record.started_at,
                    ),
                )
                db.executemany(
                    "INSERT INTO match_players (player_id, match_id) VALUES (?, ?)",
                    [(pid, mid) for pid in players],
                )
        except sqlite3.IntegrityError:
            raise PlayerInMatch("a player of this match is already in another match") from None

    def match(self, match_id: int) -> MatchRecord | None:
        rows = self._matches("match_id = ?", _i64(match_id))
        return rows[0] if rows else None

    def match_for_player(self, player_id: int) -> MatchRecord | None:
        rows = self._matches(
            "match_id = (SELECT match_id FROM match_players WHERE player_id = ?)",
            _i64(player_id),
        )
        return rows[0] if rows else None

    def matches_on_host(self, host_id: str) -> list[MatchRecord]:
        """The host's matches in progress, by match id."""
        return self._matches("host_id = ?", host_id)

    def matches_in_progress(self) -> list[MatchRecord]:
        """Every match in progress, by match id (a restarted lobby checks them with their hosts)."""
        return self._matches("1 = ?", 1)

    def end_match(self, match_id: int) -> bool:
        """Forget a match in progress; False if there was none with that id."""
        with self._transaction() as db:
            return self._end_match(db, _i64(match_id))

    @staticmethod
    def _end_match(db: sqlite3.Connection, mid: int) -> bool:
        db.execute("DELETE FROM match_players WHERE match_id = ?", (mid,))
        return db.execute("DELETE FROM matches WHERE match_id = ?", (mid,)).rowcount > 0

    def _matches(self, where: str, value: object) -> list[MatchRecord]:
        rows = self._db.execute(
            f"SELECT {_MATCH_COLUMNS} FROM matches WHERE {where} ORDER BY match_id", (value,)
        ).fetchall()
        records = [
            MatchRecord(
                match_id=_u64(row[0]),
                mode=row[1],
                host_id=row[2],
                room_id=_u64(row[3]),
                udp_host=row[4],
                udp_port=row[5],
                tick_rate=row[6],
                ticket_key=bytes(row[7]),
                roster=tuple(RosterEntry(s, p, t) for s, p, t in _unpack(row[8])),
                started_at=row[9],
            )
            for row in rows
        ]
        records.sort(key=lambda r: r.match_id)
        return records
