"""Adaptive redundancy: spaced extra updates when the measured loss is high, none when low."""

from __future__ import annotations

import pytest
from roomkit import EPS, Net, addr, client_update, server_update

from battle.messages import RoomState
from battle.redundancy import (
    COPY_LOSS,
    MIN_SPACING,
    SECOND_COPY_LOSS,
    CopySchedule,
    copies_for,
    copy_spacing,
    measured_loss,
    overdue_share,
)
from battle.reliability import ACK_BITS, SentTracker
from battle.wire import PacketType, Sealed, decode_datagram_untrusted

TICK = 1 / 15


def running(players: int) -> Net:
    net = Net(players=players)
    net.connect_all()
    assert net.room.state is RoomState.RUNNING
    return net


def measured(sent: SentTracker, slow_loss: float) -> None:
    """As a tracker stands after a link lost packets at about `slow_loss` for a while (0: the
    losses are long past)."""
    if slow_loss:
        sent.lost = max(sent.lost, 1)
    sent.slow_loss = slow_loss
    sent.loss = 0.0
    sent.recent_loss = 0.0


def tracker(*, loss: float = 0.0, slow: float = 0.0, rtt: float = 0.0) -> SentTracker:
    sent = SentTracker()
    sent.loss = loss
    sent.slow_loss = slow
    sent.rtt = rtt
    return sent


# -- policy --------------------------------------------------------------------------------


def test_copies_follow_the_loss_thresholds() -> None:
    assert copies_for(0.0) == 0
    assert copies_for(COPY_LOSS - 1e-9) == 0
    assert copies_for(COPY_LOSS) == 1
    assert copies_for(SECOND_COPY_LOSS - 1e-9) == 1
    assert copies_for(SECOND_COPY_LOSS) == 2
    assert copies_for(1.0) == 2


def test_spacing_is_a_quarter_rtt_at_least_the_minimum_and_fits_the_interval() -> None:
    assert copy_spacing(0.0, TICK, 1) == MIN_SPACING
    assert copy_spacing(0.08, TICK, 1) == pytest.approx(0.02)
    assert copy_spacing(0.2, TICK, 1) == pytest.approx(TICK / 2)  # both before the next tick
    assert copy_spacing(0.2, TICK, 2) == pytest.approx(TICK / 3)


def test_the_highest_of_the_three_estimates_decides() -> None:
    sent = tracker(loss=0.02, slow=0.03)
    sent.recent_loss = 0.1
    assert measured_loss(sent) == 0.1
    sent.recent_loss = 0.0
    assert measured_loss(sent) == 0.03


def test_schedule_low_loss_plans_nothing() -> None:
    schedule = CopySchedule()
    assert schedule.arm(5.0, tracker(loss=COPY_LOSS / 2), TICK) is None
    assert schedule.due is None
    assert not schedule.take(100.0)


def test_schedule_high_loss_plans_spaced_copies_in_turn() -> None:
    schedule = CopySchedule()
    sent = tracker(slow=SECOND_COPY_LOSS, rtt=0.06)
    assert schedule.arm(5.0, sent, TICK) == pytest.approx(5.015)
    assert not schedule.take(5.01)
    assert schedule.take(5.015)
    assert schedule.due == pytest.approx(5.03)
    assert schedule.take(5.031)
    assert schedule.due is None  # two copies, then nothing until the next fresh update
    assert not schedule.take(6.0)


def test_schedule_rearm_replaces_the_plan_and_overdue_can_raise_it() -> None:
    schedule = CopySchedule()
    schedule.arm(1.0, tracker(loss=COPY_LOSS), TICK)
    assert schedule.left == 1
    assert schedule.arm(1.05, tracker(), TICK, overdue=SECOND_COPY_LOSS) == pytest.approx(1.06)
    assert schedule.left == 2
    schedule.cancel()
    assert schedule.due is None and not schedule.take(9.0)


# -- estimates -----------------------------------------------------------------------------


def test_a_hole_counts_once_three_later_packets_are_acked() -> None:
    sent = SentTracker()
    for seq in range(1, 11):
        sent.on_send(seq, seq * 0.01)
    # 5 missing; 6 and 7 acked: not yet a hole (a reordered packet may still come).
    sent.on_ack(7, 0b111101, 0, 0.1)
    assert sent.recent_loss == 0.0
    sent.on_ack(8, 0b1111011, 0, 0.11)
    assert sent.recent_loss == pytest.approx(1 / ACK_BITS)
    assert sent.lost == 0  # settled as lost only when it leaves the ack field
    sent.on_ack(8, 0b1111111, 0, 0.12)  # it came after all
    assert sent.recent_loss == 0.0


def test_slow_loss_moves_less_per_packet_than_loss() -> None:
    sent = SentTracker()
    for seq in range(1, 41):
        sent.on_send(seq, 0.0)
    sent.on_ack(40, 0x7FFFFFFF, 0, 1.0)  # 7 leaves the field missing; 1..6 too
    assert sent.lost == 7
    assert 0.0 < sent.slow_loss < sent.loss


def test_overdue_counts_unacked_packets_older_than_the_age() -> None:
    sent = SentTracker()
    for seq in range(1, 6):
        sent.on_send(seq, seq * 0.1)
    sent.on_ack(2, 0b1, 0, 0.25)
    assert sent.overdue(0.5, 0.15) == 1  # 3 (0.3); 4 and 5 are younger than 0.15 s
    assert sent.overdue(1.0, 0.15) == 3
    sent.rtt = 0.05
    sent.jitter = 0.0
    assert overdue_share(sent, 1.0, TICK) == pytest.approx(3 / ACK_BITS)
    assert overdue_share(tracker(), 1.0, TICK) == 0.0  # no RTT yet: no judgement


# -- the room ------------------------------------------------------------------------------


def _updates_to(net: Net, address: tuple[str, int], start: float, end: float) -> list[bytes]:
    return [
        w.data
        for w in net.sent_to(address, PacketType.SERVER_UPDATE)
        if start - EPS <= w.at <= end + EPS
    ]


def _seq_of(data: bytes) -> int:
    sealed = decode_datagram_untrusted(data)
    assert isinstance(sealed, Sealed)
    return sealed.seq


def _to_next_tick(net: Net) -> float:
    frames = net.room.last_frame
    while net.room.last_frame == frames:
        nxt = net.next_time()
        assert nxt is not None
        net.step(max(nxt, net.now))
    return net.now


def test_low_loss_one_update_per_tick_and_deadlines_at_ticks() -> None:
    net = running(2)
    net.run_until(1.0)
    tick = _to_next_tick(net)
    assert net.host.next_deadline() == pytest.approx(tick + TICK)
    net.run_until(2.0)
    assert net.host.stats["update_copies"] == 0
    for slot in range(2):
        assert len(_updates_to(net, addr(slot), 1.0, 2.0)) == pytest.approx(15, abs=1)


def test_high_loss_toward_one_peer_schedules_a_spaced_copy_for_it_alone() -> None:
    net = running(2)
    a, b = addr(0), addr(1)
    net.run_until(1.0)
    session = net.room.peers[0].session
    assert session is not None
    measured(session.sent, COPY_LOSS)
    tick = _to_next_tick(net)
    spacing = copy_spacing(session.sent.rtt, TICK, 1)
    assert net.host.next_deadline() == pytest.approx(tick + spacing)
    (regular,) = _updates_to(net, a, tick, tick)
    net.run_until(tick + spacing)
    (copy,) = _updates_to(net, a, tick + spacing, tick + spacing)
    assert _updates_to(net, b, tick + EPS * 10, tick + spacing) == []
    first, second = (
        server_update(net.session_keys(a), regular),
        server_update(net.session_keys(a), copy),
    )
    # A new datagram (new sequence number) with the frames still unacknowledged then: the
    # newest frame again, and older ones unless the client acknowledged them meanwhile.
    copy_seq, regular_seq = (_seq_of(d) for d in (copy, regular))
    assert copy_seq > regular_seq
    assert second.frames and second.frames[-1] == first.frames[-1]
    assert second.frames == first.frames[len(first.frames) - len(second.frames) :]
    assert net.clients[a].drops == {}  # the replay window keeps it: it is not a repeat
    assert net.host.stats["update_copies"] == 1
    assert net.host.next_deadline() == pytest.approx(tick + TICK)


def test_very_high_loss_sends_two_copies_before_the_next_tick() -> None:
    net = running(1)
    a = addr(0)
    net.run_until(1.0)
    session = net.room.peers[0].session
    assert session is not None
    measured(session.sent, SECOND_COPY_LOSS)
    tick = _to_next_tick(net)
    spacing = copy_spacing(session.sent.rtt, TICK, 2)
    net.run_until(tick + TICK - 1e-6)
    times = [w.at - tick for w in net.sent_to(a, PacketType.SERVER_UPDATE) if w.at >= tick]
    assert times == pytest.approx([0.0, spacing, 2 * spacing])
    assert net.host.stats["update_copies"] == 2


def test_copies_stop_once_the_loss_falls() -> None:
    net = running(1)
    net.run_until(1.0)
    session = net.room.peers[0].session
    assert session is not None
    measured(session.sent, COPY_LOSS)
    _to_next_tick(net)
    measured(session.sent, 0.0)
    tick = _to_next_tick(net)
    assert net.host.next_deadline() == pytest.approx(tick + TICK)
    copies = net.host.stats["update_copies"]
    net.run_until(tick + 1.0)
    assert net.host.stats["update_copies"] == copies


# -- the client ----------------------------------------------------------------------------


def test_client_copies_fresh_inputs_after_it_measured_a_loss() -> None:
    net = running(1)
    a = addr(0)
    client = net.clients[a]
    net.run_until(0.5)
    # Low loss so far: an input goes once, and the next deadline is the regular cadence.
    client.send_input(b"i1", net.now)
    net.flush()
    assert client.next_deadline() == pytest.approx(net.now + TICK)
    # One update is lost on the way up; the room's acks show the hole a few packets later.
    net.run_until(0.7)
    net.cut_up.add(a)
    client.send_input(b"lost", net.now)
    net.flush()
    net.cut_up.discard(a)
    net.run_until(1.2)
    assert client.unacked_inputs == 0
    tick = _to_next_tick(net)
    client.send_input(b"i2", tick)
    net.flush()
    due = client.next_deadline()
    assert due == pytest.approx(tick + MIN_SPACING)  # RTT 0 here: the minimum spacing
    before = len(net.sent_by(a, PacketType.CLIENT_UPDATE))
    net.run_until(due)
    copies = net.sent_by(a, PacketType.CLIENT_UPDATE)[before:]
    assert len(copies) == 1
    assert client_update(net.session_keys(a), copies[0].data).inputs == (b"i2",)
    # The copy does not move the regular cadence.
    assert client.next_deadline() == pytest.approx(tick + TICK)
