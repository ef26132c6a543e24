"""Lobby credentials (scrypt, session tokens), openskill ratings and the SQLite store."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest

from battle.config import RosterEntry
from lobby.accounts import (
    SessionTokenError,
    device_key,
    hash_password,
    issue_session_token,
    needs_rehash,
    validate_device_id,
    validate_name,
    validate_password,
    verify_password,
    verify_session_token,
)
from lobby.ratings import Rating, default_rating, rate_match
from lobby.sqlitestore import SCHEMA_VERSION, SqliteStore
from lobby.store import (
    LobbyStore,
    MatchRecord,
    NameTaken,
    PlayerInMatch,
    StoreError,
)

SECRET = bytes(range(32))
NONCE = b"\x5a" * 16

# --- passwords ----------------------------------------------------------------------------------


def test_scrypt_round_trip_and_wrong_password() -> None:
    encoded = hash_password("correct horse", b"\x01" * 16)  # the real parameters: 2 hashes
    assert encoded.startswith("scrypt$1$16384$8$1$" + "01" * 16 + "$")
    assert len(encoded.rsplit("$", 1)[1]) == 64
    assert verify_password("correct horse", encoded)
    assert not verify_password("correct horsf", encoded)
    assert not needs_rehash(encoded)


def test_scrypt_salt_and_format() -> None:
    cheap = hash_password("pw", n=16)
    assert verify_password("pw", cheap)
    assert needs_rehash(cheap)
    assert hash_password("pw", n=16) != cheap  # a fresh random salt each time
    assert hash_password("pw", b"\x02" * 16, n=16) == hash_password("pw", b"\x02" * 16, n=16)
    with pytest.raises(ValueError):
        hash_password("pw", b"short", n=16)
    with pytest.raises(ValueError):
        hash_password("pw", n=1000)  # not a power of two
    for bad in ["", "bcrypt$1$16$8$1$00$00", cheap.replace("$16$", "$2147483648$"), cheap + "$x"]:
        with pytest.raises(ValueError):
            verify_password("pw", bad)


def test_name_device_and_password_rules() -> None:
    assert validate_name("Alice_01.x-y") == "Alice_01.x-y"
    for bad in ["", "a" * 33, "has space", "émile", "semi;colon"]:
        with pytest.raises(ValueError):
            validate_name(bad)
    assert validate_device_id("ios:1234-ABCD") == "ios:1234-ABCD"
    for bad in ["", "x" * 257, "with space", "tab\t", "é"]:
        with pytest.raises(ValueError):
            validate_device_id(bad)
    assert len(device_key("dev-1")) == 32
    validate_password("longenough")
    with pytest.raises(ValueError):
        validate_password("short")


# --- session tokens -----------------------------------------------------------------------------


def test_token_round_trip_and_layout() -> None:
    token = issue_session_token(SECRET, 2**64 - 1, 1000.5, nonce=NONCE)
    assert len(token) == 65
    assert token[0] == 1
    assert token[1:9] == b"\xff" * 8
    assert int.from_bytes(token[9:17], "big") == 1_000_500
    assert token[17:33] == NONCE
    assert verify_session_token(SECRET, token, now=1000.0) == 2**64 - 1
    assert issue_session_token(SECRET, 7, 10.0, nonce=NONCE) == issue_session_token(
        SECRET, 7, 10.0, nonce=NONCE
    )


def test_token_every_byte_tampered() -> None:
    token = issue_session_token(SECRET, 42, 1000.0, nonce=NONCE)
    for i in range(len(token)):
        forged = bytearray(token)
        forged[i] ^= 0x01
        with pytest.raises(SessionTokenError) as info:
            verify_session_token(SECRET, bytes(forged), now=0.0)
        assert info.value.reason == ("malformed" if i == 0 else "bad_signature")


def test_token_expiry_wrong_secret_and_malformed() -> None:
    token = issue_session_token(SECRET, 42, 1000.0, nonce=NONCE)
    assert verify_session_token(SECRET, token, now=999.999) == 42
    for now in (1000.0, 5000.0, float("nan")):
        with pytest.raises(SessionTokenError) as info:
            verify_session_token(SECRET, token, now=now)
        assert info.value.reason == "expired"
    with pytest.raises(SessionTokenError) as info:
        verify_session_token(b"\x00" * 32, token, now=0.0)
    assert info.value.reason == "bad_signature"
    for bad in (b"", token[:-1], token + b"\x00"):
        with pytest.raises(SessionTokenError) as info:
            verify_session_token(SECRET, bad, now=0.0)
        assert info.value.reason == "malformed"
    with pytest.raises(ValueError):
        issue_session_token(SECRET, 1, 10.0, nonce=b"short")
    with pytest.raises(ValueError):
        issue_session_token(b"tiny", 1, 10.0, nonce=NONCE)


# --- ratings ------------------------------------------------------------------------------------


def test_openskill_winner_up_loser_down_deterministic() -> None:
    new = default_rating()
    assert new.ordinal == pytest.approx(0.0)
    teams = [[new, Rating(27.0, 7.0)], [new, Rating(23.0, 8.0)]]
    after = rate_match(teams, winner_team=1)
    assert after == rate_match(teams, winner_team=1)
    for before, now in zip(teams[1], after[1], strict=True):
        assert now.ordinal > before.ordinal
    for before, now in zip(teams[0], after[0], strict=True):
        assert now.mu < before.mu
    ((winner,), (loser,)) = rate_match([[new], [new]], winner_team=0)
    assert winner.ordinal > new.ordinal > loser.ordinal
    ((a,), (b,)) = rate_match([[new], [new]], winner_team=None)
    assert a == b
    assert a.mu == pytest.approx(new.mu)
    assert a.sigma < new.sigma
    with pytest.raises(ValueError):
        rate_match([[new]], winner_team=0)
    with pytest.raises(ValueError):
        rate_match([[new], [new]], winner_team=2)


# --- SqliteStore ----------------------------------------------------------------------------------


def _record(match_id: int, host: str, players: list[int], started_at: float = 1.0) -> MatchRecord:
    return MatchRecord(
        match_id=match_id,
        mode="1v1" if len(players) == 2 else "5v5",
        host_id=host,
        room_id=match_id + 1000,
        udp_host="127.0.0.1",
        udp_port=40000,
        tick_rate=15,
        ticket_key=bytes([match_id % 256]) * 32,
        roster=tuple(RosterEntry(slot, pid, slot % 2) for slot, pid in enumerate(players)),
        started_at=started_at,
    )


@pytest.fixture
def store(tmp_path: Path) -> Iterator[SqliteStore]:
    with SqliteStore(tmp_path / "lobby.sqlite3") as s:
        yield s


def test_store_satisfies_the_interface(store: SqliteStore) -> None:
    as_interface: LobbyStore = store
    assert as_interface.rating(1) == default_rating()


def test_accounts(store: SqliteStore) -> None:
    alice = store.create_account("Alice", "scrypt$fake")
    bob = store.create_account("bob", "scrypt$fake2")
    assert alice != bob
    with pytest.raises(NameTaken):
        store.create_account("ALICE", "scrypt$other")  # names are unique case-insensitively
    with pytest.raises(ValueError):
        store.create_account("bad name", "x")
    account = store.account_by_name("alice")
    assert account is not None
    assert (account.player_id, account.name, account.password_hash) == (
        alice,
        "Alice",
        "scrypt$fake",
    )
    assert not account.has_device
    assert store.account(bob) is not None
    assert store.account(999) is None
    assert store.account_by_name("carol") is None

    assert store.account_by_device("device-1") is None
    dev = store.create_device_account("device-1")
    assert store.create_device_account("device-1") == dev  # idempotent
    assert store.create_device_account("device-2") not in {dev, alice, bob}
    device_account = store.account_by_device("device-1")
    assert device_account is not None
    assert (device_account.player_id, device_account.name, device_account.has_device) == (
        dev,
        None,
        True,
    )
    with pytest.raises(ValueError):
        store.create_device_account("")


def test_device_id_not_stored_in_clear(tmp_path: Path) -> None:
    with SqliteStore(tmp_path / "s.db") as s:
        s.create_device_account("secret-device-id")
    assert b"secret-device-id" not in (tmp_path / "s.db").read_bytes()
    wal = tmp_path / "s.db-wal"
    assert not wal.exists() or b"secret-device-id" not in wal.read_bytes()


def test_ratings_default_and_set(store: SqliteStore) -> None:
    assert store.rating(5) == default_rating()
    store.set_ratings({5: Rating(30.0, 6.0), 6: Rating(20.0, 7.5)})
    store.set_ratings({5: Rating(31.0, 5.5)})
    assert store.rating(5) == Rating(31.0, 5.5)
    assert store.rating(6) == Rating(20.0, 7.5)


def _play(store: SqliteStore, match_id: int, winner: list[int], loser: list[int], t: float) -> bool:
    teams = [winner, loser]
    before = {pid: store.rating(pid) for pid in winner + loser}
    rated = rate_match([[before[p] for p in team] for team in teams], winner_team=0)
    after = {
        pid: r
        for team, rs in zip(teams, rated, strict=True)
        for pid, r in zip(team, rs, strict=True)
    }
    return store.record_result(
        match_id, {"winner": 0, "frames": 900}, teams, before, after, t, mode="1v1"
    )


def test_record_result_idempotent(store: SqliteStore) -> None:
    store.put_match(_record(1, "h1", [1, 2]))
    assert _play(store, 1, [1], [2], 100.0)
    assert store.match(1) is None  # the result ends the match in progress
    assert store.match_for_player(1) is None
    ratings = (store.rating(1), store.rating(2))
    assert ratings[0].ordinal > 0 > ratings[1].ordinal
    history = store.history(1, 10)

    # the same match reported again (even with other data): nothing changes
    assert not _play(store, 1, [2], [1], 200.0)
    assert (store.rating(1), store.rating(2)) == ratings
    assert store.history(1, 10) == history
    assert store.matches_played(1) == store.matches_played(2) == 1

    (entry,) = history
    assert (entry.match_id, entry.mode, entry.ended_at, entry.team) == (1, "1v1", 100.0, 0)
    assert entry.teams == ((1,), (2,))
    assert entry.result == {"winner": 0, "frames": 900}
    assert entry.rating_before == default_rating()
    assert entry.rating_after == ratings[0]
    assert store.history(2, 10)[0].team == 1


def test_record_result_validates_before_writing(store: SqliteStore) -> None:
    r = default_rating()
    with pytest.raises(ValueError):
        store.record_result(1, {}, [[1], [2]], {1: r}, {1: r, 2: r}, 1.0, mode="1v1")
    with pytest.raises(ValueError):
        store.record_result(1, {}, [[1], [1]], {1: r}, {1: r}, 1.0, mode="1v1")
    assert store.history(1, 10) == []
    assert _play(store, 1, [1], [2], 1.0)  # the match id is still free


def test_history_order_limit_and_u64_ids(store: SqliteStore) -> None:
    big = 2**64 - 5
    assert _play(store, 10, [1], [2], 10.0)
    assert _play(store, big, [2], [1], 30.0)
    assert _play(store, 11, [1], [3], 20.0)
    assert _play(store, 12, [3], [2], 40.0)
    assert [e.match_id for e in store.history(1, 10)] == [big, 11, 10]
    assert [e.match_id for e in store.history(1, 2)] == [big, 11]
    assert store.history(1, 0) == []
    assert store.history(99, 10) == []
    assert not _play(store, big, [1], [2], 50.0)
    assert store.matches_played(1) == 3


def test_matches_in_progress(store: SqliteStore) -> None:
    big = 2**63 + 7
    store.put_match(_record(1, "host-a", [1, 2]))
    store.put_match(_record(big, "host-a", [3, 4]))
    store.put_match(_record(2, "host-b", [5, 6]))
    record = store.match(1)
    assert record == _record(1, "host-a", [1, 2])
    assert record is not None
    assert record.seat(2) == RosterEntry(1, 2, 1)
    assert record.seat(9) is None
    assert store.match_for_player(4) == _record(big, "host-a", [3, 4])
    assert store.match_for_player(7) is None
    assert [m.match_id for m in store.matches_on_host("host-a")] == [1, big]
    assert store.matches_on_host("host-c") == []
    assert [m.match_id for m in store.matches_in_progress()] == [1, 2, big]

    with pytest.raises(PlayerInMatch):
        store.put_match(_record(3, "host-b", [6, 7]))
    assert store.match(3) is None
    assert store.match_for_player(7) is None

    moved = _record(2, "host-c", [5, 8])  # re-allocated: replaces the record
    store.put_match(moved)
    assert store.matches_on_host("host-b") == []
    assert store.match_for_player(8) == moved
    assert store.match_for_player(6) is None

    assert store.end_match(1)
    assert not store.end_match(1)
    assert store.match_for_player(1) is None
    assert [m.match_id for m in store.matches_on_host("host-a")] == [big]


def test_persistence_across_reopen(tmp_path: Path) -> None:
    path = tmp_path / "data" / "lobby.db"
    path.parent.mkdir()
    with SqliteStore(path) as s:
        alice = s.create_account("alice", "scrypt$x")
        dev = s.create_device_account("dev-9")
        s.put_match(_record(5, "h", [alice, dev]))
        s.put_match(_record(6, "h", [77, 78]))
        assert _play(s, 6, [77], [78], 3.0)
        ratings = s.rating(77)
    with SqliteStore(path) as s:
        account = s.account_by_name("alice")
        assert account is not None
        assert account.player_id == alice
        assert s.create_device_account("dev-9") == dev
        assert s.create_account("carol", "scrypt$y") not in {alice, dev}
        assert s.match_for_player(dev) == _record(5, "h", [alice, dev])
        assert s.rating(77) == ratings
        assert [e.match_id for e in s.history(78, 5)] == [6]
        assert not _play(s, 6, [78], [77], 4.0)
    conn = sqlite3.connect(path)
    try:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    finally:
        conn.close()
    with pytest.raises(StoreError):
        SqliteStore(path)
