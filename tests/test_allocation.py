"""Room allocation policy: pure calls with a fake clock."""

from __future__ import annotations

import pytest

from lobby.allocation import (
    AllocationFailed,
    Allocator,
    CreateRequest,
    DuplicateMatch,
    FailureReason,
    HostDied,
    HostLoss,
    HostRegistry,
    RoomAllocated,
    StrayRoom,
)

LEASE = 10.0


def make(*hosts: tuple[str, int, int], max_attempts: int = 3) -> tuple[HostRegistry, Allocator]:
    """Hosts as (id, capacity, load), registered at t=0."""
    reg = HostRegistry(LEASE)
    for i, (host_id, capacity, load) in enumerate(hosts):
        reg.register(host_id, "10.0.0.1", 4000 + i, capacity, load, (), 0.0)
    return reg, Allocator(reg, create_timeout=5.0, max_attempts=max_attempts)


def alloc(a: Allocator, match_id: int, now: float = 0.0) -> CreateRequest:
    req = a.allocate(match_id, now)
    assert req is not None
    return req


def running(a: Allocator, match_id: int, now: float = 0.0) -> CreateRequest:
    req = alloc(a, match_id, now)
    a.on_created(req.host_id, req.request_id, now)
    assert isinstance(a.poll(now)[0], RoomAllocated)
    return req


def test_least_loaded_host_with_ties_by_id() -> None:
    _, a = make(("b", 10, 2), ("a", 10, 5), ("c", 10, 2))
    req = alloc(a, 1)
    assert (req.host_id, req.attempt) == ("b", 1)
    a.on_created("b", req.request_id, 1.0, ("1.2.3.4", 9))
    assert a.poll(1.0) == [RoomAllocated(1, "b", req.room_id, ("1.2.3.4", 9))]
    assert a.host_of(1) == "b" and a.matches_on("b") == (1,)


def test_confirmed_room_uses_registered_address_by_default() -> None:
    _, a = make(("a", 4, 0))
    req = alloc(a, 1)
    a.on_created("a", req.request_id, 0.0)
    assert a.poll(0.0) == [RoomAllocated(1, "a", req.room_id, ("10.0.0.1", 4000))]


def test_draining_and_full_hosts_are_skipped() -> None:
    reg, a = make(("a", 10, 0), ("b", 10, 9), ("c", 3, 3))
    assert reg.heartbeat("a", 0, 0, 0, True, 1.0)
    assert alloc(a, 1, 1.0).host_id == "b"
    assert a.allocate(2, 1.0) is None  # b's only free room is in flight; c is full


def test_pending_requests_count_against_capacity() -> None:
    _, a = make(("a", 3, 0), ("b", 2, 0))
    hosts = [alloc(a, m).host_id for m in range(1, 6)]
    assert hosts == ["a", "a", "b", "a", "b"]
    assert a.allocate(6, 0.0) is None


def test_rejection_tries_the_next_host() -> None:
    _, a = make(("a", 10, 0), ("b", 10, 1))
    first = alloc(a, 1)
    a.on_rejected("a", first.request_id, "full", 0.5)
    [retry] = a.poll(0.5)
    assert isinstance(retry, CreateRequest)
    assert (retry.host_id, retry.attempt) == ("b", 2)
    assert retry.room_id != first.room_id and retry.request_id != first.request_id
    a.on_created("b", retry.request_id, 0.6)
    assert a.poll(0.6) == [RoomAllocated(1, "b", retry.room_id, ("10.0.0.1", 4001))]


def test_timeout_tries_the_next_host() -> None:
    _, a = make(("a", 10, 0), ("b", 10, 1))
    alloc(a, 1)
    assert a.next_deadline() == 5.0
    assert a.poll(4.99) == []
    [retry] = a.poll(5.0)
    assert isinstance(retry, CreateRequest) and retry.host_id == "b"


def test_all_attempts_failing_fails_the_match() -> None:
    _, a = make(("a", 10, 0), ("b", 10, 0), ("c", 10, 0), ("d", 10, 0))
    req = alloc(a, 7)
    tried = [req.host_id]
    for t in (1.0, 2.0):
        a.on_rejected(req.host_id, req.request_id, "unavailable", t)
        [ev] = a.poll(t)
        assert isinstance(ev, CreateRequest)
        req = ev
        tried.append(req.host_id)
    assert tried == ["a", "b", "c"]  # never the same host twice
    a.on_rejected(req.host_id, req.request_id, "unavailable", 3.0)
    assert a.poll(3.0) == [AllocationFailed(7, FailureReason.EXHAUSTED, "c: unavailable")]
    assert alloc(a, 7, 4.0).attempt == 1  # released: the lobby may try again


def test_running_out_of_hosts_fails_the_match() -> None:
    _, a = make(("a", 10, 0))
    req = alloc(a, 1)
    a.on_rejected("a", req.request_id, "full", 0.0)
    assert a.poll(0.0) == [AllocationFailed(1, FailureReason.NO_HOST, "a: full")]


def test_second_allocate_for_a_match_raises() -> None:
    _, a = make(("a", 10, 0), ("b", 10, 0))
    alloc(a, 1)
    with pytest.raises(DuplicateMatch):
        a.allocate(1, 0.0)  # in flight
    running(a, 2)
    with pytest.raises(DuplicateMatch):
        a.allocate(2, 0.0)  # running
    assert a.on_match_ended(2) and not a.on_match_ended(2)
    assert a.matches_on("a") == a.matches_on("b") == ()


def test_late_room_from_timed_out_host_is_stray_not_a_second_room() -> None:
    _, a = make(("a", 10, 0), ("b", 10, 1))
    first = alloc(a, 1)
    [retry] = a.poll(5.0)
    assert isinstance(retry, CreateRequest) and retry.host_id == "b"
    # a's reply arrives late, while b's request is still in flight: not used.
    a.on_created("a", first.request_id, 5.5)
    assert a.poll(5.5) == [StrayRoom("a", first.request_id, 1)]
    a.on_created("b", retry.request_id, 6.0)
    a.on_created("b", retry.request_id, 6.0)  # a repeated reply is not a stray
    assert a.poll(6.0) == [RoomAllocated(1, "b", retry.room_id, ("10.0.0.1", 4001))]
    assert a.matches_on("a") == () and a.matches_on("b") == (1,)
    a.on_rejected("a", first.request_id, "full", 6.5)  # stale rejection: ignored
    a.on_created("a", 999, 7.0)  # unknown request: reported too
    assert a.poll(7.0) == [StrayRoom("a", 999, None)]


def test_reply_from_the_wrong_host_is_not_trusted() -> None:
    _, a = make(("a", 10, 0), ("b", 10, 5))
    req = alloc(a, 1)
    a.on_created("b", req.request_id, 0.0)
    a.on_rejected("b", req.request_id, "full", 0.0)
    assert a.poll(0.0) == [StrayRoom("b", req.request_id, None)]
    a.on_created("a", req.request_id, 0.1)
    assert isinstance(a.poll(0.1)[0], RoomAllocated)


def test_lease_expiry_reports_dead_host_with_its_matches() -> None:
    reg, a = make(("a", 10, 0), ("b", 10, 1))
    running(a, 1)
    running(a, 2)
    assert a.matches_on("a") == (1, 2)
    assert reg.heartbeat("a", 2, 2, 20, False, 5.0)
    assert reg.heartbeat("a", 2, 2, 20, False, 14.9)
    for t in (5.0, 14.0, 20.0):
        assert reg.heartbeat("b", 1, 1, 0, False, t)
    assert a.poll(24.8) == []
    assert a.next_deadline() == pytest.approx(24.9)  # a's lease
    assert a.poll(24.9) == [HostDied("a", (1, 2), HostLoss.LEASE_EXPIRED)]
    assert [h.host_id for h in reg.live_hosts(24.9)] == ["b"]
    assert a.host_of(1) is None
    assert not reg.heartbeat("a", 0, 0, 0, False, 25.0)  # dead for good


def test_host_without_matches_also_reported_dead() -> None:
    reg, a = make(("a", 10, 0))
    assert reg.live_hosts(9.9) != [] and reg.live_hosts(10.0) == []
    assert not reg.heartbeat("a", 0, 0, 0, False, 10.0)  # the lease ran out exactly
    assert a.allocate(1, 10.0) is None
    assert a.poll(10.0) == [HostDied("a", (), HostLoss.LEASE_EXPIRED)]


def test_pending_request_on_dead_host_is_retried() -> None:
    reg, a = make(("a", 10, 0), ("b", 10, 1))
    first = alloc(a, 1, 0.0)
    reg.heartbeat("b", 1, 1, 0, False, 3.0)
    events = a.poll(10.0)  # a's lease ends before the request times out
    assert events[0] == HostDied("a", (), HostLoss.LEASE_EXPIRED)
    assert isinstance(events[1], CreateRequest) and events[1].host_id == "b"
    a.on_created("a", first.request_id, 10.5)
    assert a.poll(10.5) == [StrayRoom("a", first.request_id, 1)]


def test_reregister_replaces_host_and_keeps_only_adopted_rooms() -> None:
    reg, a = make(("a", 10, 0))
    one = running(a, 1)
    running(a, 2)
    reg.heartbeat("a", 2, 2, 0, True, 1.0)
    info = reg.register("a", "10.0.0.9", 5000, 20, 1, (one.room_id,), 2.0)
    assert reg.get("a") == info and not info.draining and info.rooms == 1
    assert a.poll(2.0) == [HostDied("a", (2,), HostLoss.RESTARTED)]
    assert a.matches_on("a") == (1,)
    req = alloc(a, 3, 2.0)
    a.on_created("a", req.request_id, 2.0)
    assert a.poll(2.0) == [RoomAllocated(3, "a", req.room_id, ("10.0.0.9", 5000))]
    assert a.poll(11.9) == []  # lease runs from the new registration
    assert a.poll(12.0) == [HostDied("a", (1, 3), HostLoss.LEASE_EXPIRED)]


def test_removed_host_reported() -> None:
    reg, a = make(("a", 10, 0))
    running(a, 1)
    assert reg.remove("a") and not reg.remove("a")
    assert a.poll(1.0) == [HostDied("a", (1,), HostLoss.REMOVED)]


def test_same_calls_same_events() -> None:
    def run() -> list[object]:
        _, a = make(("x", 2, 0), ("y", 2, 0), ("z", 1, 0))
        out: list[object] = [alloc(a, m) for m in range(1, 5)]
        out += a.poll(5.0)
        return out

    assert run() == run()
