"""Reconnect catch-up, agreed snapshots, desync detection and result consensus, on virtual time."""

from __future__ import annotations

import msgpack

from battle.config import RoomConfig
from battle.events import (
    CatchUpFinished,
    CatchUpStarted,
    ChecksumAgreed,
    DesyncDetected,
    ResultDecided,
    RoomEnded,
    SnapshotAgreed,
)
from sim.impair import LinkProfile
from sim.localmatch import LocalMatch


def _match(seed: int, seconds: float, **kwargs: object) -> LocalMatch:
    config = RoomConfig(tick_rate=15, max_duration=seconds, end_linger=3.0)
    profile = kwargs.pop("profile", LinkProfile.from_rtt(0.05, jitter=0.005))
    assert isinstance(profile, LinkProfile)
    return LocalMatch(seed=seed, players=4, config=config, profile=profile, **kwargs)  # type: ignore[arg-type]


def _events(match: LocalMatch, kind: type) -> list:  # type: ignore[type-arg]
    return [e for e in match.events if isinstance(e, kind)]


def test_player_silent_past_the_timeout_reconnects_and_catches_up_without_gap() -> None:
    match = _match(1, 40.0)
    match.go_silent(2, 5.0, 40.0)  # unplugged for good on the old address
    match.reconnect(2, 20.0, new_port=41002)
    match.stop_inputs(38.0)
    match.run_until(46.0)

    player = match.players[2]
    assert "timed_out" in player.disconnects  # the old connection gave up after 5 s
    assert player.frames == match.server_frames  # no gap, no duplicate, across the switch
    assert [p.frames for p in match.players] == [match.server_frames] * 4
    started = _events(match, CatchUpStarted)
    assert any(e.slot == 2 and e.last_frame - e.frame_ack > 150 for e in started)
    finished = [e for e in _events(match, CatchUpFinished) if e.slot == 2]
    assert finished and max(e.frames for e in finished) > 150
    assert match.host.stats["catchup_datagrams"] > 0


def test_restarted_client_gets_every_frame_from_one() -> None:
    match = _match(2, 30.0, profile=LinkProfile.from_rtt(0.05, loss=0.05))
    match.restart(1, 20.0, new_port=41001, prefer_snapshot=False)
    match.stop_inputs(28.0)
    match.run_until(36.0)
    player = match.players[1]
    assert player.frames == match.server_frames
    assert player.frames[0].number == 1
    # The restarted client continues its input sequence after what the room already holds.
    seqs = [i.seq for f in match.server_frames for i in f.inputs if i.slot == 1]
    assert seqs == sorted(seqs) and len(seqs) == len(set(seqs))


def test_restart_from_agreed_snapshot_skips_old_frames() -> None:
    match = _match(3, 40.0, hash_every=15, snapshot_every=150)
    match.restart(3, 32.0, new_port=41003, prefer_snapshot=True)
    match.stop_inputs(38.0)
    match.run_until(46.0)

    agreed = _events(match, SnapshotAgreed)
    assert [e.frame for e in agreed] == [150, 300, 450]
    player = match.players[3]
    assert player.snapshots == [450]  # the latest agreed one when it came back
    assert player.frames == match.server_frames[450:]
    # After loading the snapshot its state hashes agree with everyone else's.
    assert player.state == match.players[0].state
    assert not _events(match, DesyncDetected)
    assert _events(match, ChecksumAgreed)


def test_snapshot_with_a_minority_hash_is_not_adopted() -> None:
    match = _match(4, 25.0, hash_every=15, snapshot_every=150)
    match.players[0].desync_at = 1  # the uploader disagrees with the other three
    match.stop_inputs(23.0)
    match.run_until(30.0)
    assert not _events(match, SnapshotAgreed)
    assert match.host.drops["snapshot_disagrees"] >= 1


def test_injected_desync_yields_one_record_naming_the_player_and_frame() -> None:
    match = _match(5, 20.0, hash_every=1)
    match.players[3].desync_at = 90
    match.stop_inputs(18.0)
    match.run_until(26.0)
    desyncs = _events(match, DesyncDetected)
    assert len(desyncs) == 1
    assert desyncs[0].frame == 90
    assert desyncs[0].minority == (3,)
    assert {slot for slot, _ in desyncs[0].hashes} == {0, 1, 2, 3}
    assert match.host.stats["desyncs"] == 1
    # Every client is told, so it can dump its state for the replay tool.
    for player in match.players:
        assert [n.frame for n in player.desyncs_seen] == [90]
        assert player.desyncs_seen[0].minority == (3,)


def test_majority_result_ends_the_room_and_names_the_dissenter() -> None:
    match = _match(6, 60.0)
    winners = {0: 1, 1: 1, 2: 0, 3: 1}

    def report() -> None:
        for player in match.players:
            player.client.report_result({"winner": winners[player.slot], "kills": [3, 4]})

    match.at(10.0, report)
    match.run_until(15.0)
    results = _events(match, ResultDecided)
    assert len(results) == 1
    decided = results[0]
    assert msgpack.unpackb(decided.result) == {"kills": [3, 4], "winner": 1}
    assert decided.dissenters == (2,)
    assert decided.reason == "majority"
    ended = _events(match, RoomEnded)
    assert [e.reason for e in ended] == ["result"]
    assert all(p.client.result_acked for p in match.players)


def test_one_voter_never_decides_and_a_quorum_at_timeout_does() -> None:
    match = _match(7, 60.0)
    match.at(5.0, lambda: match.players[0].client.report_result({"winner": 2}))
    match.run_until(20.0)
    assert not _events(match, ResultDecided)  # 1 of 4 is no quorum, even after the timeout
    match.at(21.0, lambda: match.players[1].client.report_result({"winner": 2}))
    match.at(21.0, lambda: match.players[2].client.report_result({"winner": 3}))
    match.run_until(23.0)
    (decided,) = _events(match, ResultDecided)  # 3 of 4 voted: the timeout now applies
    assert decided.reason == "timeout"
    assert msgpack.unpackb(decided.result) == {"winner": 2}
    assert decided.dissenters == (2,)
