"""The embedded store: SQLite in the lobby's data directory (``SqliteStore``), and
``LocalStore``, the awaited interface over it that the lobby's shell uses.

Decisions (beyond those every store keeps, in store.py):

* **Ids.** Player, match and room ids are u64 on the wire; SQLite integers are signed 64-bit,
  so ids are stored as their two's-complement i64 and converted back on the way out.
* **SQLite:** WAL, ``synchronous=FULL`` (a result acked to the room host must survive a power
  loss), one connection in autocommit mode with explicit ``BEGIN IMMEDIATE`` transactions,
  schema created on open and versioned by ``PRAGMA user_version``.
* **One node keeps no tickets and no host registry**: its queue dies with its connections,
  and its hosts are in its own memory. Those methods do nothing here.
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any, Self

import msgpack

from battle.config import RosterEntry
from lobby.accounts import device_key, validate_name
from lobby.allocation import HostInfo
from lobby.matchmaker import Ticket
from lobby.ratings import Rating, default_rating
from lobby.store import (
    Account,
    HistoryEntry,
    LobbyStore,
    MatchRecord,
    NameTaken,
    PlayerInMatch,
    StoreError,
    check_result,
    finite_time,
)

SCHEMA_VERSION = 1


def _pack(value: object) -> bytes:
    packed: bytes = msgpack.packb(value, use_bin_type=True)
    return packed


def _unpack(data: bytes) -> Any:
    return msgpack.unpackb(data, raw=False, strict_map_key=False)


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
