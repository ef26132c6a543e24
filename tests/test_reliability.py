"""Acks and link estimates: ReceivedTracker bitfields, SentTracker RTT/jitter/loss and counts."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from battle.reliability import ACK_BITS, LinkStats, ReceivedTracker, SentTracker


def expected_bits(received: set[int], ack: int) -> int:
    """Bit i set iff ack - 1 - i was received, for the ACK_BITS numbers before ack."""
    bits = 0
    for i in range(ACK_BITS):
        if ack - 1 - i in received:
            bits |= 1 << i
    return bits


def received_after(seqs: list[int]) -> ReceivedTracker:
    tracker = ReceivedTracker()
    for t, seq in enumerate(seqs):
        tracker.on_receive(seq, float(t))
    return tracker


# --- ReceivedTracker -------------------------------------------------------------------------


def test_initial_state() -> None:
    tracker = ReceivedTracker()
    assert (tracker.ack, tracker.bits) == (0, 0)


def test_in_order() -> None:
    tracker = ReceivedTracker()
    tracker.on_receive(1, 0.0)
    assert (tracker.ack, tracker.bits) == (1, 0)
    tracker.on_receive(2, 0.0)
    assert (tracker.ack, tracker.bits) == (2, 0b1)
    tracker.on_receive(3, 0.0)
    assert (tracker.ack, tracker.bits) == (3, 0b11)
    for seq in range(4, 41):
        tracker.on_receive(seq, 0.0)
    assert (tracker.ack, tracker.bits) == (40, 0xFFFFFFFF)


def test_out_of_order() -> None:
    tracker = received_after([5])
    assert (tracker.ack, tracker.bits) == (5, 0)
    tracker.on_receive(3, 1.0)
    assert (tracker.ack, tracker.bits) == (5, 0b10)
    tracker.on_receive(4, 1.0)
    assert (tracker.ack, tracker.bits) == (5, 0b11)
    tracker.on_receive(7, 2.0)  # 6 missing: bit 0 clear; 5, 4, 3 at bits 1, 2, 3
    assert (tracker.ack, tracker.bits) == (7, 0b1110)
    tracker.on_receive(6, 3.0)
    assert (tracker.ack, tracker.bits) == (7, 0b1111)


def test_duplicates_change_nothing() -> None:
    tracker = received_after([1, 2, 4])
    state = (tracker.ack, tracker.bits, tracker.received_at)
    for seq in (4, 2, 1, 4):
        tracker.on_receive(seq, 99.0)
        assert (tracker.ack, tracker.bits, tracker.received_at) == state


def test_jump_of_exactly_ack_bits_keeps_old_ack_in_the_top_bit() -> None:
    tracker = received_after([1, 33])
    assert (tracker.ack, tracker.bits) == (33, 1 << 31)


@pytest.mark.parametrize("jump", [33, 34, 100, 10**9])
def test_large_jump_clears_the_field(jump: int) -> None:
    tracker = received_after(list(range(1, 11)))
    assert tracker.bits == 0b1_1111_1111
    tracker.on_receive(10 + jump, 1.0)
    assert (tracker.ack, tracker.bits) == (10 + jump, 0)


def test_old_beyond_the_field_is_ignored() -> None:
    tracker = received_after([100])
    tracker.on_receive(100 - ACK_BITS - 1, 1.0)
    assert tracker.bits == 0
    tracker.on_receive(100 - ACK_BITS, 1.0)
    assert tracker.bits == 1 << (ACK_BITS - 1)


@settings(max_examples=300)
@given(st.lists(st.integers(min_value=1, max_value=120), max_size=200))
def test_bits_match_model(seqs: list[int]) -> None:
    tracker = ReceivedTracker()
    received: set[int] = set()
    for seq in seqs:
        tracker.on_receive(seq, 0.0)
        received.add(seq)
        assert tracker.ack == max(received)
        assert tracker.bits == expected_bits(received, tracker.ack)
        assert 0 <= tracker.bits <= 0xFFFFFFFF


def test_ack_delay_us() -> None:
    tracker = ReceivedTracker()
    tracker.on_receive(5, 10.0)
    assert tracker.ack_delay_us(10.0) == 0
    assert tracker.ack_delay_us(10.0205) == 20_500
    # Only a new newest packet restarts the clock: older or duplicate ones do not.
    tracker.on_receive(3, 11.0)
    tracker.on_receive(5, 11.0)
    assert tracker.ack_delay_us(11.0) == 1_000_000
    tracker.on_receive(6, 11.5)
    assert tracker.ack_delay_us(11.5) == 0
    assert tracker.ack_delay_us(11.501) == 1_000


def test_ack_delay_is_clamped_to_u32() -> None:
    tracker = ReceivedTracker()
    tracker.on_receive(1, 100.0)
    assert tracker.ack_delay_us(99.0) == 0  # clock behind: never negative
    assert tracker.ack_delay_us(100.0 + 10_000.0) == 0xFFFFFFFF


# --- SentTracker: RTT and jitter -------------------------------------------------------------


def test_rtt_subtracts_ack_delay() -> None:
    sent = SentTracker()
    assert sent.stats() == LinkStats(0.0, 0.0, 0.0, 0, 0, 0)
    sent.on_send(1, 0.0)
    sent.on_ack(1, 0, 20_000, 0.1)
    stats = sent.stats()
    assert stats.rtt == pytest.approx(0.080)
    assert stats.jitter == pytest.approx(0.040)  # half the first sample
    assert (stats.sent, stats.acked, stats.lost) == (1, 1, 0)


def test_rtt_and_jitter_smoothing() -> None:
    sent = SentTracker()
    sent.on_send(1, 0.0)
    sent.on_ack(1, 0, 20_000, 0.1)  # 80 ms
    sent.on_send(2, 1.0)
    sent.on_ack(2, 0b1, 0, 1.1)  # 100 ms
    assert sent.rtt == pytest.approx(0.080 + 0.020 / 8)
    assert sent.jitter == pytest.approx(0.040 + (0.020 - 0.040) / 4)


def test_duplicate_ack_gives_no_second_sample() -> None:
    sent = SentTracker()
    sent.on_send(1, 0.0)
    sent.on_ack(1, 0, 0, 0.05)
    sent.on_ack(1, 0, 0, 5.0)  # the same ack again, much later
    assert sent.rtt == pytest.approx(0.05)
    assert sent.acked == 1


def test_sample_only_from_the_newest_acked() -> None:
    sent = SentTracker()
    sent.on_send(1, 0.0)
    sent.on_send(2, 0.5)
    sent.on_ack(2, 0b1, 0, 0.6)  # 1 is acked by the bitfield, but the sample is 2's
    assert sent.rtt == pytest.approx(0.1)
    assert sent.acked == 2


def test_ack_delay_larger_than_elapsed_never_goes_negative() -> None:
    sent = SentTracker()
    sent.on_send(1, 0.0)
    sent.on_ack(1, 0, 500_000, 0.1)
    assert sent.rtt == 0.0
    assert sent.jitter == 0.0


def test_ack_for_unknown_or_zero_sequence_is_harmless() -> None:
    sent = SentTracker()
    sent.on_send(1, 0.0)
    sent.on_ack(0, 0xFFFFFFFF, 0, 1.0)
    sent.on_ack(2, 0, 0, 1.0)  # never sent: no sample; does not ack 1 either
    assert sent.stats() == LinkStats(0.0, 0.0, 0.0, 1, 0, 0)


def _run_samples(samples: list[float]) -> SentTracker:
    sent = SentTracker()
    t = 0.0
    for seq, rtt in enumerate(samples, start=1):
        sent.on_send(seq, t)
        sent.on_ack(seq, 0xFFFFFFFF, 0, t + rtt)
        t += 1.0
    return sent


def test_jitter_grows_with_variable_samples() -> None:
    rnd = random.Random(7)
    steady = _run_samples([0.1] * 200)
    noisy = _run_samples([0.1 + rnd.uniform(-0.04, 0.04) for _ in range(200)])
    wild = _run_samples([rnd.choice((0.05, 0.15)) for _ in range(200)])
    assert steady.rtt == pytest.approx(0.1)
    assert steady.jitter < 1e-6
    assert noisy.rtt == pytest.approx(0.1, abs=0.02)
    assert wild.rtt == pytest.approx(0.1, abs=0.03)
    assert steady.jitter < noisy.jitter < wild.jitter
    assert 0.01 < noisy.jitter < 0.04
    assert 0.03 < wild.jitter < 0.08


def test_rtt_tracks_a_step_change() -> None:
    sent = _run_samples([0.05] * 50 + [0.2] * 100)
    assert sent.rtt == pytest.approx(0.2, abs=0.001)


# --- SentTracker: loss and counts ------------------------------------------------------------


def simulate(
    loss: float, count: int, *, reverse_loss: float = 0.0, seed: int = 1
) -> tuple[SentTracker, set[int], list[float]]:
    """A sender and a real peer: forward packets dropped at `loss`, acks at `reverse_loss`.

    Returns the sender's tracker, the dropped sequence numbers and the loss estimate
    after every packet.
    """
    rnd = random.Random(seed)
    sender, peer = SentTracker(), ReceivedTracker()
    dropped: set[int] = set()
    history: list[float] = []
    t = 0.0
    for seq in range(1, count + 1):
        sender.on_send(seq, t)
        if rnd.random() < loss:
            dropped.add(seq)
        else:
            peer.on_receive(seq, t + 0.02)
        # The peer replies once per tick with its ack state; the reply may be lost too.
        if peer.ack and rnd.random() >= reverse_loss:
            sender.on_ack(peer.ack, peer.bits, peer.ack_delay_us(t + 0.03), t + 0.04)
        history.append(sender.loss)
        t += 1 / 30
    return sender, dropped, history


def check_counts(sender: SentTracker, dropped: set[int], count: int, slack: int = 0) -> None:
    stats = sender.stats()
    assert stats.sent == count
    outstanding = stats.sent - stats.acked - stats.lost
    # Only the ack field (plus anything sent after the last ack that arrived) is unsettled.
    assert 0 <= outstanding <= ACK_BITS + 1 + slack
    # Every dropped packet that fell out of the ack field is counted lost; nothing else is.
    assert stats.lost <= len(dropped)
    assert len(dropped) - stats.lost <= outstanding


@pytest.mark.parametrize("true_loss", [0.0, 0.05, 0.2, 0.4])
def test_loss_converges_to_true_rate(true_loss: float) -> None:
    count = 6000
    sender, dropped, history = simulate(true_loss, count, seed=int(true_loss * 100) + 3)
    check_counts(sender, dropped, count)
    tail = history[2000:]
    mean = sum(tail) / len(tail)
    assert mean == pytest.approx(true_loss, abs=0.02)
    assert sender.lost / (sender.lost + sender.acked) == pytest.approx(true_loss, abs=0.02)
    if true_loss == 0.0:
        assert sender.loss == 0.0
        assert sender.lost == 0
    assert all(0.0 <= value <= 1.0 for value in history)


def test_lost_acks_do_not_count_as_lost_packets() -> None:
    # Half of the acks are lost, but the ack bitfield repeats each ack 32 times.
    sender, dropped, history = simulate(0.1, 6000, reverse_loss=0.5, seed=11)
    check_counts(sender, dropped, 6000, slack=20)
    tail = history[2000:]
    assert sum(tail) / len(tail) == pytest.approx(0.1, abs=0.02)
    assert sender.lost == pytest.approx(len(dropped), abs=ACK_BITS + 1)


def test_loss_estimate_moves_with_the_link() -> None:
    good_then_bad = SentTracker()
    peer = ReceivedTracker()
    rnd = random.Random(9)
    for seq in range(1, 2001):
        good_then_bad.on_send(seq, 0.0)
        if seq <= 1000 or rnd.random() >= 0.5:
            peer.on_receive(seq, 0.0)
        good_then_bad.on_ack(peer.ack, peer.bits, 0, 0.0)
        if seq == 1000:
            assert good_then_bad.loss < 0.01
    assert good_then_bad.loss == pytest.approx(0.5, abs=0.2)


def test_exact_counts_with_known_drops() -> None:
    sender, peer = SentTracker(), ReceivedTracker()
    dropped = {3, 10, 11, 12, 40}
    for seq in range(1, 101):
        sender.on_send(seq, 0.0)
        if seq not in dropped:
            peer.on_receive(seq, 0.0)
        sender.on_ack(peer.ack, peer.bits, 0, 0.0)
    assert sender.stats().sent == 100
    assert sender.acked == 95
    assert sender.lost == 5  # all dropped ones are older than 100 - ACK_BITS
    assert sender.loss > 0.0


def test_late_ack_within_the_field_is_not_lost() -> None:
    sender = SentTracker()
    for seq in range(1, 11):
        sender.on_send(seq, 0.0)
    sender.on_ack(10, 0b1_1111_1011, 0, 0.1)  # 8 (bit 1) not yet received
    assert (sender.acked, sender.lost) == (9, 0)
    sender.on_ack(10, 0b1_1111_1111, 0, 0.2)  # 8 arrives late, still inside the field
    assert (sender.acked, sender.lost) == (10, 0)


def test_missing_packet_is_settled_lost_exactly_when_it_leaves_the_ack_field() -> None:
    sender, peer = SentTracker(), ReceivedTracker()
    for seq in range(1, 41):
        sender.on_send(seq, 0.0)
        if seq != 5:
            peer.on_receive(seq, 0.0)
        sender.on_ack(peer.ack, peer.bits, 0, 0.0)
        if seq == 37:
            # ack 37 still describes 5 (bit 31, clear): not yet lost.
            assert (sender.acked, sender.lost) == (36, 0)
        if seq == 38:
            # ack 38 no longer can: 5 is settled as lost.
            assert (sender.acked, sender.lost) == (37, 1)
    assert (sender.sent, sender.acked, sender.lost) == (40, 39, 1)


def test_unacked_history_overflow_counts_as_lost() -> None:
    sender = SentTracker()
    for seq in range(1, 301):
        sender.on_send(seq, float(seq))
    stats = sender.stats()
    assert (stats.sent, stats.acked, stats.lost) == (300, 0, 300 - 256)
    assert 0.0 < stats.loss <= 1.0
