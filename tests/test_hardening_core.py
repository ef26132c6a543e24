"""Abuse and edge cases found in review: each test pins down a fix in the core."""

from __future__ import annotations

from battle.catchup import CatchupStream, ChunkCache
from battle.client import ClientConnection, ClientState
from battle.config import RoomConfig
from battle.events import ResultDecided, SnapshotAgreed
from battle.wire import MAX_DATAGRAM
from sim.impair import LinkProfile
from sim.localmatch import HOST, LocalMatch


def _match(seed: int, seconds: float = 60.0, **kwargs: object) -> LocalMatch:
    config = RoomConfig(tick_rate=15, max_duration=seconds, end_linger=2.0)
    return LocalMatch(
        seed=seed,
        players=4,
        config=config,
        profile=LinkProfile.from_rtt(0.04),
        **kwargs,  # type: ignore[arg-type]
    )


def test_a_full_client_update_never_exceeds_a_datagram() -> None:
    match = _match(1)
    match.run_until(2.0)
    player = match.players[0]
    client = player.client
    player.playing = False
    match.network.block(player.address)  # nothing gets acknowledged: everything piles up
    for frame in range(1, 40):
        client.report_hash(frame, 2**64 - 1)
    client.report_result({"winner": 1, "note": "x" * 400})
    for _ in range(60):
        client.send_input(b"i" * 32, match.now)
    sizes = [len(data) for data, _ in client.datagrams_to_send()]
    assert sizes and max(sizes) <= MAX_DATAGRAM
    assert max(sizes) > MAX_DATAGRAM - 200  # it was full: the trimming really happened


def test_a_restarted_client_renumbers_inputs_queued_before_accept() -> None:
    match = _match(2)
    match.run_until(3.0)
    held = max(i.seq for f in match.server_frames for i in f.inputs if i.slot == 1)
    old = match.players[1].client
    assert old.accept is not None
    fresh = ClientConnection(old.accept.reconnect_ticket, old.accept.reconnect_keys, HOST, 3.0)
    fresh.send_input(b"early", 3.0)  # queued before ACCEPT, numbered 1 by this new instance
    player = match.players[1]
    match.network.block(player.address)
    player.client = fresh
    player.address = ("127.0.0.1", 45001)
    player.frames = []
    match.run_until(5.0)
    assert fresh.state is ClientState.CONNECTED
    landed = [(i.seq, i.data) for f in match.server_frames for i in f.inputs if i.slot == 1]
    early = [seq for seq, data in landed if data == b"early"]
    assert len(early) == 1 and early[0] > held  # renumbered after what the room held
    seqs = [seq for seq, _ in landed]
    assert seqs == sorted(set(seqs))


def test_client_forgets_inputs_the_room_dropped() -> None:
    match = _match(3)
    match.run_until(2.0)
    client = match.players[0].client
    for _ in range(40):  # far more than one frame's cap and backlog: most are dropped
        client.send_input(b"x", match.now, flush=False)
    client.tick(match.now + 1.0)
    match.run_until(6.0)
    assert len(client._input_sent_at) <= 2
    assert match.host.drops["input_excess"] > 0


def test_one_uploader_cannot_make_a_snapshot_agreed() -> None:
    match = _match(4, 25.0, hash_every=15, snapshot_every=150)
    # Only slot 0 uploads: slot 1's uploads are discarded before they are sent.
    uploader = match.players[1].client
    uploader.upload_snapshot = lambda *args, **kwargs: None  # type: ignore[method-assign]
    match.stop_inputs(23.0)
    match.run_until(30.0)
    assert not [e for e in match.events if isinstance(e, SnapshotAgreed)]


def test_a_garbage_result_is_dropped_and_never_decides() -> None:
    match = _match(5, 30.0)
    match.run_until(2.0)
    for player in match.players:
        player.client._result = b"\xc1"
    match.run_until(20.0)
    assert match.host.drops["bad_field"] > 0
    assert not [e for e in match.events if isinstance(e, ResultDecided)]


def test_catch_up_stops_at_its_byte_budget() -> None:
    encoded = [bytes([0x93, 0, i % 100, 0xC4, 1, 7]) for i in range(2000)]
    stream = CatchupStream(1e9, 0.0, None, budget=5000.0)
    cache = ChunkCache()
    sent = 0
    for step in range(200):
        now = step * 0.1
        sent += sum(len(b) for b in stream.pump_frames(now, 0.01, now, 0, 2000, cache, encoded))
    assert 0 < sent <= 5000 + MAX_DATAGRAM


def test_report_result_refuses_what_the_room_would_drop() -> None:
    match = _match(6)
    client = match.players[0].client
    for bad_result in ({1: "int key"}, {"nested": {2: "int key"}}, {"big": "x" * 600}):
        try:
            client.report_result(bad_result)  # type: ignore[arg-type]
        except ValueError:
            continue
        raise AssertionError(f"accepted {bad_result!r}")
    client.report_result({"winner": 1})  # a plain string-keyed map is fine


def test_a_one_player_room_adopts_its_players_snapshot() -> None:
    config = RoomConfig(tick_rate=15, max_duration=30.0, end_linger=2.0)
    match = LocalMatch(seed=7, players=1, config=config, hash_every=15, snapshot_every=150)
    match.run_until(15.0)
    assert [e.frame for e in match.events if isinstance(e, SnapshotAgreed)][:1] == [150]
