"""What a client connection measures and keeps: loss on the way from the room (from the gaps in
the room's sequence numbers), and a snapshot upload and its ack across a reconnect."""

from __future__ import annotations

import math
import random
import statistics
from collections.abc import Iterable

import pytest
from roomkit import Net, addr

from battle.client import (
    RECEIVE_HORIZON,
    RECEIVE_LOSS_GAIN,
    ReceiveLossMeter,
    ReceiveStats,
)
from battle.config import RoomConfig
from battle.messages import SNAPSHOT_CHUNK_SIZE, decode_snapshot_chunk_untrusted
from battle.wire import PacketType
from sim.impair import LinkProfile
from sim.localmatch import HOST, LocalMatch

H = RECEIVE_HORIZON
GAIN = RECEIVE_LOSS_GAIN


def feed(meter: ReceiveLossMeter, seqs: Iterable[int]) -> ReceiveStats:
    for seq in seqs:
        meter.on_receive(seq)
    return meter.stats()


# -- the meter on its own -------------------------------------------------------------------


def test_in_order_packets_are_all_received() -> None:
    assert feed(ReceiveLossMeter(), list(range(1, 501))) == ReceiveStats(500, 0, 0, 0.0)


def test_a_gap_counts_once_the_sequence_has_moved_the_horizon_past_it() -> None:
    meter = ReceiveLossMeter()
    stats = feed(meter, [*range(1, 11), *range(12, 11 + H)])
    assert stats == ReceiveStats(10 + H - 1, 0, 0, 0.0)  # 11 may still come
    stats = feed(meter, [11 + H])
    assert (stats.received, stats.missing, stats.late) == (10 + H, 1, 0)
    assert stats.loss == pytest.approx(GAIN)  # one missing after received ones
    stats = feed(meter, range(12 + H, 12 + 3 * H))
    assert stats.missing == 1
    assert stats.loss == pytest.approx(GAIN * (1 - GAIN) ** (2 * H))  # fading


def test_a_packet_arriving_after_being_counted_missing_is_taken_back() -> None:
    meter = ReceiveLossMeter()
    feed(meter, [*range(1, 11), *range(12, 12 + H + 5)])
    assert meter.stats().missing == 1
    assert meter.stats().loss > 0
    stats = feed(meter, [11])
    assert stats == ReceiveStats(10 + H + 5 + 1, 0, 1, stats.loss)
    assert stats.loss == pytest.approx(0.0, abs=1e-12)


def test_reordering_within_the_horizon_and_repeats_are_not_loss() -> None:
    rng = random.Random(5)
    seqs = list(range(1, 2001))
    # Shuffle within blocks of H: no packet ends up H or more behind a later one.
    shuffled: list[int] = []
    for start in range(0, len(seqs), H // 2):
        block = seqs[start : start + H // 2]
        rng.shuffle(block)
        shuffled.extend(block)
    meter = ReceiveLossMeter()
    for seq in shuffled:
        meter.on_receive(seq)
        if rng.random() < 0.2:
            meter.on_receive(seq)  # a repeat inside the horizon is ignored
    assert meter.stats() == ReceiveStats(2000, 0, 0, 0.0)


def test_a_long_silence_then_a_jump_counts_every_skipped_number() -> None:
    meter = ReceiveLossMeter()
    stats = feed(meter, [1, 1000])
    # 2..(1000 - H) are judged missing; the H - 1 numbers just below 1000 may still come.
    assert (stats.received, stats.missing, stats.late) == (2, 1000 - H - 1, 0)
    judged = 1000 - H
    assert stats.loss == pytest.approx((1 - (1 - GAIN) ** judged) * (judged - 1) / judged)
    assert feed(meter, [999]).missing == 1000 - H - 1  # inside the horizon: no change


def test_numbers_below_one_and_repeats_of_the_newest_change_nothing() -> None:
    meter = ReceiveLossMeter()
    assert feed(meter, [0, -3]) == ReceiveStats(0, 0, 0, 0.0)
    assert feed(meter, [1, 1, 2, 2, 0]) == ReceiveStats(2, 0, 0, 0.0)


@pytest.mark.parametrize("seed", range(6))
def test_counts_match_a_plain_model(seed: int) -> None:
    """Random loss and reordering (some of it deeper than the horizon), against sets."""
    rng = random.Random(seed)
    arrivals: list[tuple[float, int]] = []
    for seq in range(1, 3001):
        if rng.random() < 0.1:
            continue
        delay = rng.expovariate(1 / 5) if rng.random() < 0.2 else 0.0
        if rng.random() < 0.01:
            delay += rng.uniform(H, 3 * H)
        arrivals.append((seq + delay, seq))
    arrivals.sort()
    meter = ReceiveLossMeter()
    seen: set[int] = set()
    newest = 0
    late = 0
    for _, seq in arrivals:
        if seq <= newest - H:
            late += 1
        meter.on_receive(seq)
        seen.add(seq)
        newest = max(newest, seq)
        missing = sum(1 for n in range(1, newest - H + 1) if n not in seen)
        stats = meter.stats()
        assert (stats.received, stats.missing, stats.late) == (len(seen), missing, late)
        assert 0.0 <= stats.loss <= 1.0
    assert late > 0


# -- a connection against a room, on a seeded network ---------------------------------------

TICK_RATE = 30


def _match(seed: int, down: LinkProfile, seconds: float) -> LocalMatch:
    """Two players; `down` applies to everything the room sends them (the other way is clean)."""
    config = RoomConfig(tick_rate=TICK_RATE, max_duration=seconds + 10)
    match = LocalMatch(seed=seed, players=2, config=config)
    for player in match.players:
        match.network.set_link(HOST, player.address, down)
    return match


@pytest.mark.parametrize(("seed", "loss"), [(1, 0.03), (2, 0.1), (3, 0.25)])
def test_receive_loss_follows_the_injected_loss(seed: int, loss: float) -> None:
    match = _match(seed, LinkProfile(delay=0.02, loss=loss), 60.0)
    samples: list[float] = []
    for step in range(4, 121):  # the smoothed share twice a second, from 2 s on
        match.run_until(step / 2)
        samples.append(match.players[0].client.receive_stats.loss)
    client = match.players[0].client
    stats = client.receive_stats
    link = match.network.stats(HOST, match.players[0].address)
    assert 0 < stats.missing <= link.lost
    assert stats.received <= link.delivered and stats.late == 0

    # The counts: a binomial sample of (about) every packet the room sent.
    judged = stats.received + stats.missing
    assert judged > 3000
    sigma = math.sqrt(loss * (1 - loss) / judged)
    assert stats.missing / judged == pytest.approx(loss, abs=4 * sigma)

    # The smoothed share, sampled every half second (about one memory of the average apart,
    # so count half the samples as independent).
    spread = math.sqrt(loss * (1 - loss) * GAIN / (2 - GAIN))
    tolerance = 4 * spread * math.sqrt(2 / len(samples))
    assert statistics.fmean(samples) == pytest.approx(loss, abs=tolerance)


def test_a_clean_link_has_no_receive_loss() -> None:
    match = _match(4, LinkProfile(delay=0.02), 20.0)
    match.run_until(20.0)
    for player in match.players:
        stats = player.client.receive_stats
        assert stats.received > 19 * TICK_RATE
        assert (stats.missing, stats.late, stats.loss) == (0, 0, 0.0)


def test_reordering_and_duplicates_alone_are_not_loss() -> None:
    down = LinkProfile(delay=0.02, jitter=0.03, duplicate=0.2, reorder=0.2)
    match = _match(5, down, 30.0)
    match.run_until(30.0)
    for player in match.players:
        link = match.network.stats(HOST, player.address)
        assert link.lost == 0 and link.reordered > 50 and link.duplicated > 50
        client = player.client
        assert client.drops["replayed"] > 50  # the repeats never reach the count
        stats = client.receive_stats
        assert stats.received > 30 * TICK_RATE
        assert (stats.missing, stats.late, stats.loss) == (0, 0, 0.0)


# -- a snapshot upload across a reconnect ---------------------------------------------------


def _upload_offsets(net: Net, address: tuple[str, int], frame: int) -> list[int]:
    """Offsets of the SNAPSHOT pieces for `frame` that the client at `address` sent, in order."""
    offsets = []
    for wire, ptype, body in net.opened(address):
        if ptype is PacketType.SNAPSHOT and wire.src == address:
            chunk = decode_snapshot_chunk_untrusted(body)
            if chunk.frame == frame:
                offsets.append(chunk.offset)
    return offsets


def test_reconnect_mid_upload_finishes_the_upload_and_keeps_the_ack() -> None:
    net = Net(players=2)
    net.connect_all()
    net.run_until(1.0)
    a, b = addr(0), addr(0, port_base=41000)
    old = net.clients[a]

    # A first, small upload that the room completes.
    first = net.room.last_frame
    old.upload_snapshot(first, 1, b"s" * 100, net.now)
    net.run_until(net.now + 0.3)
    assert old.snapshot_ack == first

    # A large one: the connection is replaced while it is under way.
    second = net.room.last_frame
    assert second > first
    data = random.Random(1).randbytes(200_000)
    old.upload_snapshot(second, 2, data, net.now)
    net.run_until(net.now + 0.2)
    sent_before = _upload_offsets(net, a, second)
    pieces = math.ceil(len(data) / SNAPSHOT_CHUNK_SIZE)
    assert 0 < len(sent_before) < pieces
    assert old.snapshot_ack == first

    assert old.accept is not None
    new = old.reconnect(net.now)
    assert new.snapshot_ack == first
    assert new.receive_stats == ReceiveStats(0, 0, 0, 0.0)  # the room numbers a new session anew
    net.cut_down.add(a)
    net.cut_up.add(a)
    net.attach(new, b, old.accept.reconnect_keys)
    acks = []
    while new.snapshot_ack < second and net.now < 10.0:
        net.step(net.now + 1 / 30)
        acks.append(new.snapshot_ack)
    assert new.snapshot_ack == second
    assert acks == sorted(acks) and acks[0] >= first
    assert net.room.peers[0].session is not None
    assert net.room.peers[0].session.address == b

    sent_after = _upload_offsets(net, b, second)
    assert sent_after[0] == 0  # sent again from its first piece
    assert set(sent_before) | set(sent_after) == set(range(0, len(data), SNAPSHOT_CHUNK_SIZE))
    net.run_until(net.now + 2.0)
    assert len(_upload_offsets(net, b, second)) <= pieces  # done: nothing more is sent


def test_reconnect_without_an_upload_sends_none() -> None:
    net = Net(players=2)
    net.connect_all()
    net.run_until(1.0)
    old = net.clients[addr(0)]
    assert old.accept is not None
    new = old.reconnect(net.now)
    b = addr(0, port_base=41000)
    net.attach(new, b, old.accept.reconnect_keys)
    net.run_until(net.now + 1.0)
    assert not net.sent_by(b, PacketType.SNAPSHOT)
    assert new.snapshot_ack == 0
