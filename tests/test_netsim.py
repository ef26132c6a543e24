"""The simulated network must be exact where it is deterministic and honest where it is random:
protocol tests trust its loss and reorder rates and replay failures from the seed."""

from __future__ import annotations

import math
import random

import pytest

from sim.impair import GilbertElliott, Impairment, LinkProfile
from sim.netsim import MAX_DATAGRAM_SIZE, Address, Delivery, SimNetwork

A: Address = ("10.0.0.1", 4000)
B: Address = ("10.0.0.2", 5000)
C: Address = ("10.0.0.3", 6000)


def drain(net: SimNetwork) -> list[Delivery]:
    return net.deliver_due(math.inf)


def send_numbered(net: SimNetwork, src: Address, dst: Address, count: int, interval: float) -> None:
    for i in range(count):
        net.send(src, dst, i.to_bytes(4, "big"), i * interval)


def numbers(deliveries: list[Delivery]) -> list[int]:
    return [int.from_bytes(d.data, "big") for d in deliveries]


def trace(deliveries: list[Delivery]) -> list[tuple[float, Address, Address, bytes]]:
    return [(d.at, d.src, d.dst, d.data) for d in deliveries]


def test_perfect_link_delivers_in_order_with_exact_delay() -> None:
    net = SimNetwork(seed=1, default=LinkProfile(delay=0.03))
    send_numbered(net, A, B, 100, 0.01)
    assert net.next_delivery() == 0.03
    assert net.deliver_due(0.0299) == []
    got: list[Delivery] = []
    now = 0.0
    while (due := net.next_delivery()) is not None:
        now = due
        got.extend(net.deliver_due(now))
    assert numbers(got) == list(range(100))
    assert [d.at for d in got] == [i * 0.01 + 0.03 for i in range(100)]
    assert all(d.src == A and d.dst == B for d in got)
    assert net.stats(A, B).delivered == 100
    assert net.in_flight == 0


def test_default_link_is_perfect_and_instant() -> None:
    net = SimNetwork(seed=0)
    net.send(A, B, b"x", 1.5)
    assert net.deliver_due(1.5) == [Delivery(1.5, A, B, b"x")]
    assert net.link_profile(A, B) == LinkProfile.perfect()


def test_simultaneous_arrivals_keep_send_order_across_links() -> None:
    net = SimNetwork(seed=3)
    net.set_link(A, B, LinkProfile(delay=0.02))
    net.send(C, B, b"late-send", 0.0)  # arrives at 0.0
    net.send(A, B, b"first", 0.0)  # arrives at 0.02
    net.send(C, B, b"second", 0.02)  # arrives at 0.02 too
    net.send(B, A, b"third", 0.02)
    assert [d.data for d in drain(net)] == [b"late-send", b"first", b"second", b"third"]


def test_random_loss_matches_profile() -> None:
    net = SimNetwork(seed=7, default=LinkProfile(delay=0.01, loss=0.1))
    send_numbered(net, A, B, 20_000, 0.001)
    got = drain(net)
    stats = net.stats(A, B)
    assert stats.sent == 20_000
    assert stats.lost + len(got) == 20_000
    assert abs(stats.lost / 20_000 - 0.1) < 0.01
    assert numbers(got) == sorted(numbers(got))


def burst_lengths(lost: list[bool]) -> list[int]:
    runs: list[int] = []
    run = 0
    for flag in lost:
        if flag:
            run += 1
        elif run:
            runs.append(run)
            run = 0
    if run:
        runs.append(run)
    return runs


def loss_pattern(profile: LinkProfile, seed: int, count: int) -> list[bool]:
    imp = Impairment(profile, seed)
    return [not imp.deliveries(i * 0.01) for i in range(count)]


def test_gilbert_elliott_loses_in_bursts_at_the_right_long_run_rate() -> None:
    ge = GilbertElliott(p_good_to_bad=0.02, p_bad_to_good=0.25)
    profile = LinkProfile(burst_loss=ge)
    lost = loss_pattern(profile, seed=11, count=50_000)
    runs = burst_lengths(lost)
    assert abs(sum(runs) / len(runs) - 1 / 0.25) < 0.5
    assert abs(sum(lost) / len(lost) - ge.mean_loss) < 0.015
    assert profile.expected_loss == pytest.approx(0.02 / 0.27)

    independent = loss_pattern(LinkProfile(loss=ge.mean_loss), seed=11, count=50_000)
    ind_runs = burst_lengths(independent)
    assert sum(ind_runs) / len(ind_runs) < 1.2


def test_gilbert_elliott_from_loss_round_trips() -> None:
    ge = GilbertElliott.from_loss(mean_loss=0.05, mean_burst=3.0)
    assert ge.mean_loss == pytest.approx(0.05)
    assert ge.p_bad_to_good == pytest.approx(1 / 3)
    lost = loss_pattern(LinkProfile(burst_loss=ge), seed=5, count=60_000)
    runs = burst_lengths(lost)
    assert abs(sum(runs) / len(runs) - 3.0) < 0.4
    assert abs(sum(lost) / len(lost) - 0.05) < 0.01


def test_burst_and_independent_loss_combine() -> None:
    ge = GilbertElliott(p_good_to_bad=0.01, p_bad_to_good=0.5, loss_in_bad=0.5, loss_in_good=0.01)
    profile = LinkProfile(loss=0.05, burst_loss=ge)
    lost = loss_pattern(profile, seed=2, count=50_000)
    assert abs(sum(lost) / len(lost) - profile.expected_loss) < 0.01


def test_duplication_rate_and_copies() -> None:
    net = SimNetwork(seed=9, default=LinkProfile(delay=0.02, jitter=0.01, duplicate=0.05))
    send_numbered(net, A, B, 20_000, 0.001)
    got = drain(net)
    stats = net.stats(A, B)
    assert abs(stats.duplicated / 20_000 - 0.05) < 0.01
    assert len(got) == stats.delivered == 20_000 + stats.duplicated
    counts: dict[int, int] = {}
    for n in numbers(got):
        counts[n] = counts.get(n, 0) + 1
    assert sorted(counts) == list(range(20_000))
    assert sum(1 for c in counts.values() if c == 2) == stats.duplicated


def test_jitter_stays_within_bounds() -> None:
    net = SimNetwork(seed=4, default=LinkProfile(delay=0.05, jitter=0.02))
    for i in range(5_000):
        net.send(A, B, i.to_bytes(4, "big"), i * 0.01)
    got = drain(net)
    delays = [d.at - n * 0.01 for d, n in zip(got, numbers(got), strict=True)]
    assert min(delays) >= 0.05 - 1e-12
    assert max(delays) <= 0.07 + 1e-12
    assert abs(sum(delays) / len(delays) - 0.06) < 0.001


def test_reordering_rate_and_reordered_packets_arrive_after_later_ones() -> None:
    net = SimNetwork(seed=12, default=LinkProfile(delay=0.05, reorder=0.1))
    send_numbered(net, A, B, 20_000, 0.005)
    net.set_link(A, B, LinkProfile(delay=0.05))  # a tail that overtakes the last reordered ones
    for i in range(20_000, 20_030):
        net.send(A, B, i.to_bytes(4, "big"), i * 0.005)
    got = numbers(drain(net))
    stats = net.stats(A, B)
    assert abs(stats.reordered / 20_000 - 0.1) < 0.01
    assert sorted(got) == list(range(20_030))
    # Late = some later-sent packet arrived first. With no jitter that is exactly the reordered
    # packets: the extra 0.1 s lets the next 20 sends overtake.
    max_seen = -1
    late: set[int] = set()
    for n in got:
        if n < max_seen:
            late.add(n)
        max_seen = max(max_seen, n)
    assert len(late) == stats.reordered


def test_reorder_delay_default_and_override() -> None:
    assert LinkProfile(delay=0.03, jitter=0.01).effective_reorder_delay == pytest.approx(0.08)
    assert LinkProfile().effective_reorder_delay > 0
    assert LinkProfile(delay=0.03, reorder_delay=0.5).effective_reorder_delay == 0.5


def lossy_trace(seed: int) -> list[tuple[float, Address, Address, bytes]]:
    profile = LinkProfile.from_rtt(
        0.08, jitter=0.02, loss=0.05, duplicate=0.02, reorder=0.02,
        burst_loss=GilbertElliott(0.01, 0.3),
    )  # fmt: skip
    net = SimNetwork(seed=seed, default=profile)
    for i in range(2_000):
        net.send(A, B, i.to_bytes(4, "big"), i * 0.01)
        net.send(B, A, i.to_bytes(4, "big"), i * 0.01 + 0.003)
    return trace(drain(net))


def test_same_seed_same_trace_different_seed_different_trace() -> None:
    assert lossy_trace(42) == lossy_trace(42)
    assert lossy_trace(42) != lossy_trace(43)


def test_links_are_independent() -> None:
    profile = LinkProfile(delay=0.02, jitter=0.03, loss=0.2, duplicate=0.1, reorder=0.1)

    quiet = SimNetwork(seed=5, default=profile)
    send_numbered(quiet, A, B, 1_000, 0.01)
    alone = [d for d in drain(quiet) if d.src == A]

    busy = SimNetwork(seed=5, default=profile)
    for i in range(1_000):
        busy.send(C, B, b"noise", i * 0.01)  # a new endpoint's traffic on another link
        busy.send(A, B, i.to_bytes(4, "big"), i * 0.01)
        busy.send(B, A, b"reverse", i * 0.01)
    shared = [d for d in drain(busy) if d.src == A]

    assert trace(shared) == trace(alone)


def test_directions_have_their_own_random_streams() -> None:
    net = SimNetwork(seed=8, default=LinkProfile(loss=0.5))
    for i in range(200):
        net.send(A, B, i.to_bytes(4, "big"), float(i))
        net.send(B, A, i.to_bytes(4, "big"), float(i))
    got = drain(net)
    forward = numbers([d for d in got if d.src == A])
    backward = numbers([d for d in got if d.src == B])
    assert forward != backward


def test_block_and_unblock() -> None:
    net = SimNetwork(seed=1, default=LinkProfile(delay=0.1))
    net.send(A, B, b"in-flight", 0.0)
    net.block(B)
    assert net.is_blocked(B)
    net.send(A, B, b"to-blocked", 0.01)
    net.send(B, A, b"from-blocked", 0.01)
    net.send(A, C, b"bystander", 0.01)
    assert [d.data for d in net.deliver_due(1.0)] == [b"bystander"]
    assert net.stats(A, B).blocked == 2
    assert net.stats(B, A).blocked == 1
    assert net.stats(A, B).sent == 2

    net.unblock(B)
    assert not net.is_blocked(B)
    net.send(A, B, b"hello", 2.0)
    net.send(B, A, b"back", 2.0)
    assert [d.data for d in net.deliver_due(2.1)] == [b"hello", b"back"]


def test_sender_blocked_after_sending_still_delivers_in_flight() -> None:
    net = SimNetwork(seed=1, default=LinkProfile(delay=0.1))
    net.send(A, B, b"already-sent", 0.0)
    net.block(A)
    assert [d.data for d in drain(net)] == [b"already-sent"]


def test_oversize_datagram_raises_and_limit_is_allowed() -> None:
    net = SimNetwork(seed=1)
    net.send(A, B, bytes(MAX_DATAGRAM_SIZE), 0.0)
    with pytest.raises(ValueError, match="exceeds"):
        net.send(A, B, bytes(MAX_DATAGRAM_SIZE + 1), 0.0)
    net.block(A)
    with pytest.raises(ValueError):
        net.send(A, B, bytes(MAX_DATAGRAM_SIZE + 1), 0.0)
    assert len(drain(net)) == 1


def test_payload_is_copied_from_reused_buffers() -> None:
    net = SimNetwork(seed=1)
    buf = bytearray(b"abc")
    net.send(A, B, buf, 0.0)  # type: ignore[arg-type]  # callers may hand in their send buffer
    buf[0] = ord("z")
    assert drain(net)[0].data == b"abc"


def test_set_link_mid_run_changes_only_new_packets() -> None:
    net = SimNetwork(seed=1, default=LinkProfile(delay=0.01))
    net.send(A, B, b"old", 0.0)
    net.set_link(A, B, LinkProfile(delay=0.5))
    net.send(A, B, b"new", 0.0)
    net.send(B, A, b"other-way", 0.0)
    assert trace(drain(net)) == [
        (0.01, A, B, b"old"),
        (0.01, B, A, b"other-way"),
        (0.5, A, B, b"new"),
    ]
    assert net.link_profile(A, B).delay == 0.5
    assert net.link_profile(B, A).delay == 0.01


def test_set_path_sets_both_directions() -> None:
    net = SimNetwork(seed=1)
    net.set_path(A, B, LinkProfile.from_rtt(0.1))
    assert net.link_profile(A, B).delay == net.link_profile(B, A).delay == 0.05
    assert net.link_profile(A, C) == LinkProfile.perfect()
    assert set(net.all_stats()) == {(A, B), (B, A)}


@pytest.mark.parametrize(
    "kwargs",
    [
        {"delay": -0.01},
        {"delay": math.inf},
        {"jitter": -1.0},
        {"jitter": math.nan},
        {"loss": 1.5},
        {"loss": -0.1},
        {"duplicate": 2.0},
        {"reorder": -0.5},
        {"reorder_delay": -1.0},
    ],
)
def test_profile_rejects_out_of_range_values(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        LinkProfile(**kwargs)  # type: ignore[arg-type]


def test_gilbert_elliott_rejects_bad_parameters() -> None:
    with pytest.raises(ValueError):
        GilbertElliott(p_good_to_bad=1.1, p_bad_to_good=0.5)
    with pytest.raises(ValueError):
        GilbertElliott(p_good_to_bad=0.1, p_bad_to_good=0.5, loss_in_bad=-0.1)
    with pytest.raises(ValueError):
        GilbertElliott.from_loss(mean_loss=0.1, mean_burst=0.5)
    with pytest.raises(ValueError):
        LinkProfile.from_rtt(-0.1)


def test_impairment_accepts_seed_or_rng_and_perfect_profile_draws_nothing() -> None:
    profile = LinkProfile(jitter=0.01, loss=0.3)
    by_seed = Impairment(profile, 99)
    by_rng = Impairment(profile, random.Random(99))
    assert [by_seed.deliveries(i) for i in range(100)] == [by_rng.deliveries(i) for i in range(100)]

    rng = random.Random(1)
    state = rng.getstate()
    perfect = Impairment(LinkProfile(delay=0.02), rng)
    assert perfect.deliveries(1.0) == [1.02]
    assert rng.getstate() == state
    assert (perfect.sent, perfect.lost, perfect.duplicated, perfect.reordered) == (1, 0, 0, 0)
