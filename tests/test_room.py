# mypy: disable-error-code="unreachable, comparison-overlap"
# (state changes behind method calls defeat mypy's narrowing of attributes)
"""The room state machine, driven through HostCore and real clients on a fake clock.

WAITING → RUNNING → ENDED; one frame per tick on absolute deadlines with exactly the inputs
that arrived since the previous frame, ordered by (slot, input sequence); redundancy instead
of retransmission; heartbeats, timeouts, linger and the end of a match.
"""

from __future__ import annotations

import itertools
import random

import pytest
from roomkit import (
    EPS,
    MATCH_ID,
    ROOM_ID,
    SEED,
    Net,
    addr,
    client_update,
    handshake,
    make_host,
    make_roster,
    open_from_host,
    server_update,
)

from battle.client import ClientState, Disconnected, FrameReceived
from battle.config import RoomConfig
from battle.events import (
    CatchUpFinished,
    CatchUpStarted,
    FrameClosed,
    PlayerConnected,
    PlayerDisconnected,
    RoomEnded,
    RoomStarted,
)
from battle.frames import Frame, FrameInput
from battle.messages import (
    DisconnectReason,
    RoomState,
    decode_client_update_untrusted,
    decode_disconnect_untrusted,
    decode_server_update_untrusted,
    encode_frame,
)
from battle.peer import PeerStatus
from battle.room import FRAME_BUDGET, MAX_PLAYERS
from battle.session import Address
from battle.wire import MAX_DATAGRAM, PacketType

TICK = 1 / 15


def running(players: int, config: RoomConfig | None = None) -> Net:
    net = Net(players=players, config=config or RoomConfig())
    net.connect_all()
    assert net.room.state is RoomState.RUNNING
    return net


def play(net: Net, until: float, slots: tuple[int, ...]) -> dict[int, list[tuple[int, bytes]]]:
    """Step to `until`; after each frame closes every listed slot sends one input.

    Returns what was sent."""
    sent: dict[int, list[tuple[int, bytes]]] = {s: [] for s in slots}
    frames = net.room.last_frame
    while net.now < until:
        nxt = net.next_time()
        net.step(until if nxt is None else min(until, max(nxt, net.now)))
        if net.room.last_frame == frames:
            continue  # one input per player per frame
        frames = net.room.last_frame
        for slot in slots:
            client = net.clients[addr(slot)]
            if client.state is ClientState.CONNECTED and client.room_state is RoomState.RUNNING:
                data = f"{slot}:{len(sent[slot])}".encode()
                sent[slot].append((client.send_input(data, net.now), data))
        net.flush()
    return sent


def landed(net: Net, slot: int) -> list[tuple[int, bytes]]:
    return [(i.seq, i.data) for f in net.room.frames for i in f.inputs if i.slot == slot]


def received(net: Net, address: Address) -> list[Frame]:
    return [e.frame for e in net.client_events_of(address, FrameReceived)]


def gaps(times: list[float]) -> list[float]:
    return [b - a for a, b in itertools.pairwise(times)]


# -- starting -----------------------------------------------------------------------------


def test_room_starts_when_every_roster_slot_is_connected() -> None:
    net = Net(players=3)
    room = net.room
    net.add_client(0)
    net.run_until(0.5)
    net.add_client(1)
    net.run_until(1.2)
    assert room.state is RoomState.WAITING
    assert room.frames == []
    assert net.events_of(RoomStarted) == []
    assert room.connected_slots() == (0, 1)

    net.add_client(2)
    assert room.state is RoomState.RUNNING
    assert net.events_of(RoomStarted) == [RoomStarted(ROOM_ID, 1.2, (0, 1, 2))]
    assert room.started_at == 1.2
    assert net.host.next_deadline() == pytest.approx(1.2 + TICK)
    net.run_until(1.2 + TICK)
    assert room.last_frame == 1
    assert list(room.frame_times) == [pytest.approx(1.2 + TICK)]


def test_a_room_takes_at_most_32_players() -> None:
    assert MAX_PLAYERS == 32
    with pytest.raises(ValueError, match="at most 32"):
        make_host().create_room(ROOM_ID, MATCH_ID, SEED, make_roster(33), RoomConfig(), 0.0)
    # 32 is allowed, and the ACCEPT listing all 32 seats fits one datagram.
    net = Net(players=32)
    net.connect_all()
    assert net.room.state is RoomState.RUNNING
    accepts = [w for w in net.log if w.data[1] == PacketType.ACCEPT]
    assert len(accepts) == 32
    assert all(len(w.data) <= MAX_DATAGRAM for w in accepts)


def test_start_timeout_with_enough_players_starts() -> None:
    net = Net(players=3, config=RoomConfig(start_timeout=3.0, min_players=2))
    net.add_client(0)
    net.add_client(1)
    net.run_until(2.99)
    assert net.room.state is RoomState.WAITING
    net.run_until(3.0)
    assert net.room.state is RoomState.RUNNING
    assert net.events_of(RoomStarted) == [RoomStarted(ROOM_ID, 3.0, (0, 1))]
    net.run_until(4.0 + EPS)
    assert net.room.last_frame == 15
    assert net.room.peers[2].status is PeerStatus.NEVER_CONNECTED
    assert net.clients[addr(0)].room_state is RoomState.RUNNING
    assert received(net, addr(1)) == net.room.frames


def test_start_timeout_with_too_few_players_ends_the_room() -> None:
    net = Net(players=3, config=RoomConfig(start_timeout=3.0, min_players=2))
    net.add_client(0)
    net.run_until(2.99)
    assert net.room.state is RoomState.WAITING
    net.run_until(3.0)
    room = net.room
    assert room.state is RoomState.ENDED
    assert net.events_of(RoomEnded) == [RoomEnded(ROOM_ID, 0, "not_enough_players")]
    assert net.events_of(RoomStarted) == []
    assert room.end_reason == "not_enough_players"
    assert room.frames == []
    assert net.client_events_of(addr(0), Disconnected) == [Disconnected("room_ended")]
    assert room.finished
    assert net.host.next_deadline() is None
    assert net.host._routes == {}
    # A latecomer is not even challenged.
    net.add_client(1)
    assert net.host.drops["room_ended"] >= 1
    assert net.sent_to(addr(1)) == []


# -- frames -------------------------------------------------------------------------------


def test_a_tick_without_inputs_closes_an_empty_frame() -> None:
    net = running(1)
    net.run_until(TICK)
    room = net.room
    assert room.frames == [Frame(1, ())]
    assert room.encoded_frames == [b"\x90"]
    assert [e.frame for e in net.events_of(FrameClosed)] == [Frame(1, ())]
    update = server_update(
        net.session_keys(addr(0)), net.sent_to(addr(0), PacketType.SERVER_UPDATE)[-1].data
    )
    assert (update.first_frame, update.frames, update.last_frame) == (1, (Frame(1, ()),), 1)


@pytest.mark.parametrize("order", list(itertools.permutations(range(3))))
def test_frame_holds_inputs_since_the_previous_close_ordered_by_slot_and_seq(
    order: tuple[int, ...],
) -> None:
    net = running(3)
    room = net.room
    net.run_until(0.5)
    before = room.last_frame
    assert before == 7 and all(not f.inputs for f in room.frames)

    # Between two deadlines every player sends inputs, each in its own packet; the packets
    # reach the host grouped by player in `order`, each player's newest packet first.
    t = 0.51
    net.now = t
    payloads = {0: [b"a1"], 1: [b"b1", b"b2"], 2: [b"c1", b"c2", b"c3"]}
    packets: dict[int, list[bytes]] = {}
    for slot, items in payloads.items():
        client = net.clients[addr(slot)]
        for data in items:
            client.send_input(data, t)
        packets[slot] = [d for d, _ in client.datagrams_to_send()]
        assert len(packets[slot]) == len(items)
    for slot in order:
        for data in reversed(packets[slot]):
            net.to_host(data, addr(slot))

    net.step(8 / 15)
    assert room.last_frame == before + 1
    expected = (
        FrameInput(0, 1, b"a1"),
        FrameInput(1, 1, b"b1"),
        FrameInput(1, 2, b"b2"),
        FrameInput(2, 1, b"c1"),
        FrameInput(2, 2, b"c2"),
        FrameInput(2, 3, b"c3"),
    )
    assert room.frames[-1] == Frame(before + 1, expected)
    assert room.encoded_frames[-1] == encode_frame(Frame(before + 1, expected))

    # An input that arrives after the close belongs to the next frame, and only that one.
    net.clients[addr(0)].send_input(b"a2", net.now)
    net.flush()
    net.step(9 / 15)
    assert room.frames[-2] == Frame(before + 1, expected)
    assert room.frames[-1] == Frame(before + 2, (FrameInput(0, 2, b"a2"),))
    for slot in range(3):
        assert received(net, addr(slot)) == room.frames


@pytest.mark.parametrize("mode", ["irregular", "late", "on-time"])
def test_frames_close_on_absolute_deadlines_without_drift(mode: str) -> None:
    net = running(1)
    rng = random.Random(3)
    n = 0
    while net.now < 10.0:
        n += 1
        if mode == "irregular":
            t = net.now + rng.uniform(0.001, 0.2)
        elif mode == "late":
            t = n * TICK + 0.05
        else:
            t = n * TICK
        net.step(min(t, 10.0))
    net.step(10.0 + TICK / 2)
    room = net.room
    assert room.last_frame == 150
    assert net.host.stats["tick_overruns"] == 0
    for number, closed_at in enumerate(room.frame_times, start=1):
        assert closed_at >= number * TICK - EPS  # never early
        assert closed_at - number * TICK < 0.2 + EPS  # and late only by the tick call's delay
    assert [f.number for f in room.frames] == list(range(1, 151))
    assert received(net, addr(0)) == room.frames


def test_a_stall_over_a_second_re_anchors_and_shorter_ones_catch_up() -> None:
    net = running(1)
    room = net.room
    net.step(0.5)
    assert room.last_frame == 7
    # 0.9 s late: every missed frame is closed and the schedule keeps its phase.
    net.step(1.4)
    assert room.last_frame == 21
    assert net.host.stats["tick_overruns"] == 0
    net.step(22 * TICK - 0.001)
    assert room.last_frame == 21
    net.step(22 * TICK)
    assert room.last_frame == 22
    # 2.4 s late: one second of frames is closed, then the schedule restarts from now.
    net.step(3.9)
    assert room.last_frame == 22 + 15
    assert net.host.stats["tick_overruns"] == 1
    net.step(59 * TICK + 0.001)  # the old phase would close a frame here
    assert room.last_frame == 37
    net.step(3.9 + TICK - 0.001)
    assert room.last_frame == 37
    net.step(3.9 + TICK)
    assert room.last_frame == 38
    net.run_until(4.9 + TICK / 2)
    assert room.last_frame == 37 + 15
    assert net.host.stats["tick_overruns"] == 1


# -- inputs -------------------------------------------------------------------------------


def test_input_limits_drop_and_count_but_still_acknowledge() -> None:
    config = RoomConfig(max_input_bytes=32, max_inputs_per_frame=3, input_backlog=2)
    net = running(1, config)
    room = net.room
    a = addr(0)
    client = net.clients[a]
    net.run_until(0.5)
    net.now = 0.51
    for data in (b"1", bytes(33), b"3", b"4", b"5", b"6", b"7", b"8"):
        client.send_input(data, net.now)
    net.flush()
    drops = net.host.drops
    assert drops["input_too_large"] == 1  # seq 2
    assert drops["input_excess"] == 2  # seqs 7 and 8: beyond 3 per frame plus a backlog of 2
    assert room.peers[0].input_ack == 8
    net.step(8 / 15)
    assert room.frames[-1].inputs == (
        FrameInput(0, 1, b"1"),
        FrameInput(0, 3, b"3"),
        FrameInput(0, 4, b"4"),
    )
    assert net.host.stats["inputs_deferred"] == 2
    # The update carried input_ack 8: the client stops carrying all eight.
    update = server_update(net.session_keys(a), net.sent_to(a, PacketType.SERVER_UPDATE)[-1].data)
    assert update.input_ack == 8
    assert client.unacked_inputs == 0
    net.step(8 / 15 + 0.04)
    net.step(9 / 15 - 0.001)
    last_up = client_update(net.session_keys(a), net.sent_by(a, PacketType.CLIENT_UPDATE)[-1].data)
    assert (last_up.input_first, last_up.inputs) == (9, ())

    # The backlog goes first into the next frame; exactly max_input_bytes is allowed.
    for data in (bytes(32), b"10", b"11"):
        client.send_input(data, net.now)
    net.flush()
    net.step(9 / 15)
    assert [i.seq for i in room.frames[-1].inputs] == [5, 6, 9]
    net.step(10 / 15)
    assert [i.seq for i in room.frames[-1].inputs] == [10, 11]
    net.step(11 / 15)
    assert room.frames[-1].inputs == ()
    # Each input was judged once, not once per packet that carried it.
    assert drops["input_too_large"] == 1 and drops["input_excess"] == 2
    assert len(net.sent_by(a, PacketType.CLIENT_UPDATE)) > 8
    assert landed(net, 0) == [
        (1, b"1"),
        (3, b"3"),
        (4, b"4"),
        (5, b"5"),
        (6, b"6"),
        (9, bytes(32)),
        (10, b"10"),
        (11, b"11"),
    ]


def test_when_a_frame_is_full_no_slot_is_always_the_one_deferred() -> None:
    """Ten players each send three 32-byte inputs every frame: about 22 of the 30 fit a
    frame's byte budget. Who is served first rotates with the frame number, so the inputs left
    over are not always the same players'; each frame is still in slot order."""
    players = 10
    net = running(players, RoomConfig(max_input_bytes=32, max_inputs_per_frame=3))
    room = net.room
    start = room.last_frame
    frames = 2 * players
    for _ in range(frames):
        closed = room.last_frame
        for slot in range(players):
            client = net.clients[addr(slot)]
            for _ in range(3):
                client.send_input(bytes([slot]) * 32, net.now, flush=False)
        net.step(net.now + 0.01)  # each client sends its update; all inputs queued
        net.run_until((closed + 1) / 15 + EPS)
        assert room.last_frame == closed + 1
    played = room.frames[start + 1 :]  # from the second frame on, every queue is non-empty
    assert len(played) == frames - 1
    deferred_in: dict[int, int] = dict.fromkeys(range(players), 0)
    for frame in played:
        assert list(frame.inputs) == sorted(frame.inputs, key=lambda i: (i.slot, i.seq))
        assert len(encode_frame(frame)) <= FRAME_BUDGET
        # Full: the inputs' worst-case cost (data + 14) leaves no room for one more input.
        charged = sum(len(i.data) + 14 for i in frame.inputs)
        assert FRAME_BUDGET - 3 - 46 < charged <= FRAME_BUDGET - 3
        per_slot = [sum(1 for i in frame.inputs if i.slot == s) for s in range(players)]
        assert sum(per_slot) < 3 * players
        for slot, count in enumerate(per_slot):
            if count < 3:
                deferred_in[slot] += 1
    assert net.host.stats["inputs_deferred"] > 0
    # Nobody is deferred in every frame, and everybody gets a full frame now and then.
    assert max(deferred_in.values()) < len(played)
    assert all(n > 0 for n in deferred_in.values())
    landed_per_slot = [len(landed(net, s)) for s in range(players)]
    assert max(landed_per_slot) - min(landed_per_slot) <= 6, landed_per_slot


def test_duplicated_inputs_land_exactly_once() -> None:
    net = running(1)
    room = net.room
    a = addr(0)
    client = net.clients[a]
    net.run_until(0.5)
    net.cut_down.add(a)  # no acks reach the client: it keeps re-sending everything
    net.now = 0.51
    client.send_input(b"i1", net.now)
    net.flush()
    net.step(8 / 15)
    assert room.frames[-1].inputs == (FrameInput(0, 1, b"i1"),)
    assert client.unacked_inputs == 1

    client.send_input(b"i2", net.now)
    client.send_input(b"i3", net.now)
    p2, p3 = (d for d, _ in client.datagrams_to_send())
    assert client_update(net.session_keys(a), p3).inputs == (b"i1", b"i2", b"i3")
    net.to_host(p3, a)  # the newest first
    net.to_host(p2, a)  # then an older packet, carrying i1 and i2 again
    net.run_until(1.0)  # heartbeats re-send i1..i3 a few more times
    resent = [
        client_update(net.session_keys(a), w.data).inputs
        for w in net.sent_by(a, PacketType.CLIENT_UPDATE)
    ]
    assert sum(1 for inputs in resent if b"i1" in inputs) >= 5
    net.cut_down.discard(a)
    net.run_until(1.5)
    assert landed(net, 0) == [(1, b"i1"), (2, b"i2"), (3, b"i3")]
    assert room.frames[7].inputs == (FrameInput(0, 1, b"i1"),)
    assert room.frames[8].inputs == (FrameInput(0, 2, b"i2"), FrameInput(0, 3, b"i3"))
    assert client.unacked_inputs == 0
    assert net.host.drops["input_gap"] == 0


# -- redundancy ---------------------------------------------------------------------------


def _check_every_update(net: Net, address: Address) -> int:
    """Each SERVER_UPDATE holds every frame after the frame_ack the host had, never more than
    the bound; past the bound the frames come by catch-up instead (an update may carry none).

    Returns how many updates were checked."""
    bound = net.config.redundancy_frames
    frames = net.room.frames
    frame_ack = 0
    checked = 0
    for w, ptype, body in net.opened(address):
        if ptype is PacketType.CLIENT_UPDATE and not w.lost:
            frame_ack = max(frame_ack, decode_client_update_untrusted(body).frame_ack)
        elif ptype is PacketType.SERVER_UPDATE:
            update = decode_server_update_untrusted(body)
            last = update.last_frame
            if last - frame_ack <= bound:
                assert update.frames == tuple(frames[frame_ack:last])
            else:
                assert len(update.frames) <= bound
                assert update.frames == tuple(frames[frame_ack : frame_ack + len(update.frames)])
            assert update.first_frame == (frame_ack + 1 if update.frames else 0)
            checked += 1
    return checked


def test_each_update_carries_every_unacked_frame_up_to_the_bound() -> None:
    net = running(1)
    a = addr(0)
    bound = net.config.redundancy_frames
    assert bound == 5
    net.run_until(1.0)
    assert net.clients[a].frame_ack == 15
    assert net.sent_to(a, PacketType.CATCHUP) == []
    net.cut_down.add(a)  # the client hears nothing and keeps acking frame 15
    net.run_until(2.0)
    lost = [
        server_update(net.session_keys(a), w.data)
        for w in net.sent_to(a, PacketType.SERVER_UPDATE)
        if w.lost
    ]
    assert len(lost) == 15
    # The first may still start at 15: the ack for frame 15 had not reached the host yet.
    assert lost[0].first_frame in (15, 16)
    for update in lost[1:]:
        if update.last_frame - 15 <= bound:
            assert [f.number for f in update.frames] == list(range(16, update.last_frame + 1))
        else:
            assert len(update.frames) <= bound
    # Catch-up starts past twice the window (a slow ack alone keeps live updates).
    assert net.events_of(CatchUpStarted) == [CatchUpStarted(ROOM_ID, 0, 15, 15 + 2 * bound + 1, 0)]
    assert _check_every_update(net, a) == len(net.sent_to(a, PacketType.SERVER_UPDATE))

    net.cut_down.discard(a)
    net.run_until(3.0)
    assert received(net, a) == net.room.frames
    assert net.clients[a].frame_ack == net.room.last_frame >= 44
    assert len(net.events_of(CatchUpStarted)) == 1  # once per episode, not once per update
    assert len(net.events_of(CatchUpFinished)) == 1
    assert _check_every_update(net, a) == len(net.sent_to(a, PacketType.SERVER_UPDATE))
    caught_up_at = net.clients[a].frame_ack

    net.cut_down.add(a)  # a second episode is reported again
    net.run_until(4.0)
    assert len(net.events_of(CatchUpStarted)) == 2
    assert caught_up_at - 1 <= net.events_of(CatchUpStarted)[1].frame_ack <= caught_up_at
    net.cut_down.discard(a)
    net.run_until(5.0)
    assert received(net, a) == net.room.frames
    assert len(net.events_of(CatchUpFinished)) == 2
    _check_every_update(net, a)


# -- silence and heartbeats ---------------------------------------------------------------


def test_silent_peer_times_out_but_keeps_its_slot_and_others_play_on() -> None:
    net = running(3)
    room = net.room
    sent = play(net, 1.0, (0, 1))
    c = addr(2)
    net.cut_up.add(c)
    net.cut_down.add(c)
    peer = room.peers[2]
    assert peer.session is not None
    silent_since = peer.session.last_recv
    assert silent_since == pytest.approx(1.0)

    more = play(net, silent_since + 5.0 - 0.01, (0, 1))
    assert peer.status is PeerStatus.CONNECTED
    assert net.events_of(PlayerDisconnected) == []
    more2 = play(net, silent_since + 5.0 + TICK, (0, 1))  # checked on the next tick
    assert peer.status is PeerStatus.DISCONNECTED
    assert peer.session is None and peer.entry.slot == 2
    (bye,) = net.sent_to(c, PacketType.DISCONNECT)
    assert bye.lost and silent_since + 5.0 <= bye.at <= silent_since + 5.0 + TICK + EPS
    frame_at_drop = sum(1 for t in room.frame_times if t <= bye.at)
    assert net.events_of(PlayerDisconnected) == [
        PlayerDisconnected(ROOM_ID, 2, 102, frame_at_drop, "timed_out")
    ]
    _, body = open_from_host(net.session_keys(c), bye.data)
    assert decode_disconnect_untrusted(body).reason is DisconnectReason.TIMED_OUT
    assert c not in net.host._routes

    later = play(net, 8.0, (0, 1))
    assert room.state is RoomState.RUNNING
    assert room.last_frame == 120
    net.run_until(8.0 + TICK * 1.5)  # the inputs sent last are in the next frame
    assert [f.number for f in room.frames] == list(range(1, 122))
    assert not any(w.at > bye.at for w in net.sent_to(c))
    for slot in (0, 1):
        assert landed(net, slot) == sent[slot] + more[slot] + more2[slot] + later[slot]
        assert received(net, addr(slot)) == room.frames

    # The kept slot takes its player back, from where its client stopped.
    old = net.clients[c]
    assert old.accept is not None
    new_address = addr(2, port_base=41000)
    handshake(net, old.reconnect(net.now), new_address, old.accept.reconnect_keys)
    assert net.events_of(PlayerConnected)[-1] == PlayerConnected(
        ROOM_ID, 2, 102, room.last_frame, new_address, True
    )
    net.run_until(11.0)  # about 110 frames behind, 5 per update: catching up takes a while
    assert received(net, c) + received(net, new_address) == room.frames


def test_waiting_room_sends_heartbeats_and_keeps_idle_peers() -> None:
    net = Net(players=2, config=RoomConfig(start_timeout=30.0))
    a = addr(0)
    net.add_client(0)
    net.run_until(6.0)  # longer than the 5 s disconnect timeout
    updates = net.sent_to(a, PacketType.SERVER_UPDATE)
    times = [w.at for w in updates]
    assert times[0] == 0.0
    assert times[-1] >= 6.0 - 0.1
    assert max(gaps(times)) <= net.config.heartbeat_interval + EPS
    for w in updates:
        update = server_update(net.session_keys(a), w.data)
        assert update.state is RoomState.WAITING
        assert (update.frames, update.last_frame) == ((), 0)
    ups = [w.at for w in net.sent_by(a, PacketType.CLIENT_UPDATE)]
    assert max(gaps(ups)) <= TICK + EPS
    assert net.clients[a].state is ClientState.CONNECTED
    assert net.room.peers[0].status is PeerStatus.CONNECTED
    assert net.events_of(PlayerDisconnected) == []


def test_idle_client_sends_at_least_once_per_tick_interval() -> None:
    net = running(2)
    net.run_until(3.0)
    for slot in range(2):
        a = addr(slot)
        ups = net.sent_by(a, PacketType.CLIENT_UPDATE)
        assert max(gaps([w.at for w in ups])) <= TICK + EPS
        assert ups[-1].at >= 3.0 - TICK
        assert all(client_update(net.session_keys(a), w.data).inputs == () for w in ups)
        downs = [w.at for w in net.sent_to(a, PacketType.SERVER_UPDATE)]
        assert max(gaps(downs)) <= TICK + EPS


# -- the end ------------------------------------------------------------------------------


def test_max_duration_ends_the_room() -> None:
    net = running(2, RoomConfig(max_duration=2.02))
    net.run_until(2.01)
    assert net.room.state is RoomState.RUNNING
    net.run_until(2.02)
    room = net.room
    assert room.state is RoomState.ENDED
    assert net.events_of(RoomEnded) == [RoomEnded(ROOM_ID, 30, "max_duration")]
    net.run_until(4.0)
    assert room.last_frame == 30
    assert len(net.events_of(RoomEnded)) == 1
    assert room.finished
    for slot in range(2):
        assert received(net, addr(slot)) == room.frames
        assert net.client_events_of(addr(slot), Disconnected) == [Disconnected("room_ended")]


def test_room_with_nobody_connected_for_empty_timeout_is_abandoned() -> None:
    config = RoomConfig(empty_timeout=2.0, disconnect_timeout=1.0)
    net = running(2, config)
    room = net.room
    net.run_until(1.0)
    net.clients[addr(0)].disconnect(net.now)
    net.flush()
    net.cut_up.add(addr(1))
    net.cut_down.add(addr(1))
    net.run_until(2.5)
    assert [e.reason for e in net.events_of(PlayerDisconnected)] == ["left", "timed_out"]
    assert room.connected_slots() == ()
    assert room.state is RoomState.RUNNING
    # The room is empty since slot 1 timed out (told by a DISCONNECT it never got); timeouts
    # are checked on ticks: the first tick at least 1 s after its last datagram.
    (bye,) = net.sent_to(addr(1), PacketType.DISCONNECT)
    empty_since = bye.at
    assert 2.0 - EPS <= empty_since <= 2.0 + TICK + EPS
    net.run_until(empty_since + 2.0 - 0.01)
    assert room.state is RoomState.RUNNING
    frames = room.last_frame
    net.run_until(empty_since + 2.0)
    assert room.state is RoomState.ENDED
    assert net.events_of(RoomEnded) == [RoomEnded(ROOM_ID, room.last_frame, "abandoned")]
    assert room.last_frame >= frames
    assert room.finished
    assert net.host.next_deadline() is None


def test_a_returning_player_keeps_the_room_from_being_abandoned() -> None:
    config = RoomConfig(empty_timeout=2.0, disconnect_timeout=1.0)
    net = running(1, config)
    a = addr(0)
    net.run_until(1.0)
    net.cut_up.add(a)
    net.cut_down.add(a)
    net.run_until(2.5)
    assert net.room.connected_slots() == ()
    old = net.clients[a]
    assert old.accept is not None
    handshake(net, old.reconnect(net.now), addr(0, 41000), old.accept.reconnect_keys)
    net.run_until(6.0)
    assert net.room.state is RoomState.RUNNING
    assert net.events_of(RoomEnded) == []


def test_after_the_end_laggards_get_the_last_frames_then_room_ended() -> None:
    config = RoomConfig(max_duration=2.02, end_linger=1.0)
    net = running(2, config)
    room = net.room
    a, b = addr(0), addr(1)
    net.run_until(1.5)
    net.cut_down.add(b)  # b misses the frames after 1.5 s, and the end
    net.run_until(2.3)
    assert room.state is RoomState.ENDED and room.last_frame == 30
    # a was current: it acked the last frame and was closed at once.
    assert received(net, a) == room.frames
    assert net.client_events_of(a, Disconnected) == [Disconnected("room_ended")]
    byes = net.sent_to(a, PacketType.DISCONNECT)
    assert len(byes) == 3 and all(w.at <= 2.02 + 2 * TICK for w in byes)
    for w in byes:
        assert decode_disconnect_untrusted(
            open_from_host(net.session_keys(a), w.data)[1]
        ).reason is (DisconnectReason.ROOM_ENDED)
    assert room.peers[1].session is not None
    assert not room.finished

    net.cut_down.discard(b)
    net.run_until(2.9)
    assert received(net, b) == room.frames
    assert net.client_events_of(b, Disconnected) == [Disconnected("room_ended")]
    linger = [
        server_update(net.session_keys(b), w.data)
        for w in net.sent_to(b, PacketType.SERVER_UPDATE)
        if w.at > 2.02
    ]
    assert linger and all(u.state is RoomState.ENDED and u.last_frame == 30 for u in linger)
    byes = [w for w in net.sent_to(b, PacketType.DISCONNECT) if not w.lost]
    assert byes and all(w.at < 2.02 + 1.0 for w in byes)
    for w in byes:
        _, body = open_from_host(net.session_keys(b), w.data)
        assert decode_disconnect_untrusted(body).reason is DisconnectReason.ROOM_ENDED
    assert room.finished
    assert net.host.next_deadline() is None
    assert room.last_frame == 30


def test_linger_expires_for_a_peer_that_never_catches_up() -> None:
    config = RoomConfig(max_duration=2.02, end_linger=1.0)
    net = running(2, config)
    room = net.room
    b = addr(1)
    net.run_until(1.5)
    net.cut_down.add(b)
    net.run_until(2.02 + 1.0 - 0.01)
    assert room.state is RoomState.ENDED
    assert not room.finished
    assert room.peers[1].session is not None
    net.run_until(2.02 + 1.0)
    assert room.finished
    byes = net.sent_to(b, PacketType.DISCONNECT)
    assert len(byes) == 3 and all(w.at == pytest.approx(3.02) for w in byes)
    assert net.host.next_deadline() is None
    assert net.host._routes == {}


def test_client_leaving_is_reported_as_left() -> None:
    net = running(2)
    room = net.room
    a = addr(0)
    net.run_until(0.5)
    client = net.clients[a]
    client.disconnect(net.now)
    unknown = net.host.drops["unknown_address"]
    net.flush()
    assert net.events_of(PlayerDisconnected) == [
        PlayerDisconnected(ROOM_ID, 0, 100, room.last_frame, "left")
    ]
    assert len(net.sent_by(a, PacketType.DISCONNECT)) == 3
    assert net.host.drops["unknown_address"] == unknown + 2  # the spare copies
    assert net.sent_to(a, PacketType.DISCONNECT) == []
    assert room.peers[0].status is PeerStatus.DISCONNECTED
    assert a not in net.host._routes
    assert client.state is ClientState.DISCONNECTED
    assert net.client_events_of(a, Disconnected) == [Disconnected("left")]
    net.run_until(2.0)
    assert room.state is RoomState.RUNNING
    assert received(net, addr(1)) == room.frames
