# mypy: disable-error-code="unreachable, comparison-overlap"
# (state changes behind method calls defeat mypy's narrowing of attributes)
"""The UDP handshake of the room host core, one datagram at a time on a fake clock.

CONNECT_REQUEST → CHALLENGE (cookie bound to the source address) → CONNECT_RESPONSE → sealed
ACCEPT → the client's first sealed datagram confirms the session. Nothing is allocated and
nothing larger than the request is sent before the address is proven; a session goes live
only once its keys are proven.
"""

from __future__ import annotations

import random

import pytest
from roomkit import (
    HOST,
    KEY,
    MATCH_ID,
    OFFSET,
    ROOM_ID,
    SEED,
    Net,
    Wire,
    accept_keys,
    addr,
    client_salt_of,
    fixed_keys,
    handshake,
    make_roster,
    make_ticket,
    open_from_host,
    ptype_of,
    salt_source,
)

from battle.client import Accepted, ClientConnection, ClientState, Disconnected, FrameReceived
from battle.config import RoomConfig
from battle.events import PlayerConnected, PlayerDisconnected
from battle.messages import (
    ClientUpdate,
    DisconnectReason,
    RoomState,
    decode_accept_untrusted,
    decode_disconnect_untrusted,
    encode_client_update,
)
from battle.peer import PeerStatus
from battle.sealing import SessionCipher
from battle.server import HostCore
from battle.session import Address
from battle.ticket import FLAG_RECONNECT, ClientKeys, open_ticket
from battle.wire import (
    CONNECT_REQUEST_SIZE,
    COOKIE_SIZE,
    MAGIC,
    SESSION_SALT_SIZE,
    TICKET_SIZE,
    DenyReason,
    PacketType,
    encode_challenge,
    encode_connect_request,
    encode_connect_response,
    encode_denied,
    sealed_header,
)

ATTACKER: Address = ("198.51.100.66", 6666)
SPOOFED: Address = ("203.0.113.5", 1111)
SALT = bytes(range(0x40, 0x50))
"""A client salt for CONNECT_RESPONSEs built by hand."""
ATTACKER_SALT = bytes(range(0xA0, 0xB0))


def nothing_allocated(net: Net) -> bool:
    return not net.host._routes and all(p.session is None and not p.pending for p in net.room.peers)


def seal_as_client(keys: ClientKeys, body: bytes, seq: int) -> bytes:
    cipher = SessionCipher(send_key=keys.c2s, recv_key=keys.s2c)
    cipher.next_seq = seq
    return cipher.seal(PacketType.CLIENT_UPDATE, body)


def idle_update(frame_ack: int = 0) -> bytes:
    return encode_client_update(ClientUpdate(0, 0, 0, frame_ack, 1, ()))


def seq_of(data: bytes) -> int:
    return int.from_bytes(data[2:10], "little")


# -- the happy path ---------------------------------------------------------------------


def test_full_handshake_step_by_step() -> None:
    net = Net(players=2, config=RoomConfig(start_timeout=1.0, min_players=1))
    room = net.room
    a = addr(0)
    ticket, keys = make_ticket(0)
    client = ClientConnection(ticket, keys, HOST, 0.0, entropy=salt_source(1))
    hs = handshake(net, client, a, keys, confirm=False)

    assert len(hs.request) == CONNECT_REQUEST_SIZE
    assert len(hs.challenge) < len(hs.request)
    # The response echoes the cookie and the ticket, then carries the client's own salt.
    assert len(hs.response) == 2 + COOKIE_SIZE + TICKET_SIZE + SESSION_SALT_SIZE == 166
    assert hs.response[2 : 2 + 20] == hs.challenge[2:]
    assert hs.response[22:150] == ticket
    assert hs.response[150:] == hs.client_salt == salt_source(1)(16)

    # ACCEPT sent: a pending session and a route exist, but nothing is live yet.
    peer = room.peers[0]
    assert [p.address for p in peer.pending] == [a]
    assert peer.session is None
    assert peer.status is PeerStatus.NEVER_CONNECTED
    assert net.host._routes == {a: (room, 0)}
    assert net.events_of(PlayerConnected) == []

    ptype, body = open_from_host(keys, hs.accept, hs.client_salt)
    assert ptype is PacketType.ACCEPT
    accept = decode_accept_untrusted(body)
    (session,) = peer.pending
    assert session.client_salt == hs.client_salt
    assert hs.accept[10:26] == session.salt  # the room's salt, in the clear
    assert (accept.match_id, accept.room_id, accept.slot, accept.team) == (MATCH_ID, ROOM_ID, 0, 0)
    assert accept.seed == SEED
    assert accept.tick_rate == 15
    assert accept.roster == make_roster(2) == room.roster
    assert accept.frame == 0
    assert accept.state is RoomState.WAITING
    assert accept.input_ack == 0
    assert accept.redundancy_frames == RoomConfig().redundancy_frames
    assert accept.timeout_ms == 5000
    assert accept.heartbeat_ms == 100
    # The reconnect ticket is a real ticket for the same seat, carrying the keys sent alongside.
    reticket = open_ticket(KEY, accept.reconnect_ticket, room_id=ROOM_ID, now=OFFSET)
    assert reticket.flags & FLAG_RECONNECT
    assert (reticket.match_id, reticket.player_id, reticket.slot) == (MATCH_ID, 100, 0)
    assert reticket.keys == accept.reconnect_keys
    assert reticket.keys != keys
    assert reticket.expires_at == pytest.approx(OFFSET + 1.0 + 3600.0)

    assert client.state is ClientState.CONNECTED
    assert client.accept == accept
    assert net.client_events[a] == [Accepted(accept)]

    # The client's first sealed datagram proves it holds the keys: now the session is live.
    assert net.to_host(hs.first_sealed, a) == []
    assert peer.pending == []
    assert peer.session is not None and peer.session.address == a and peer.session.confirmed
    assert peer.status is PeerStatus.CONNECTED
    assert net.events_of(PlayerConnected) == [PlayerConnected(ROOM_ID, 0, 100, 0, a, False)]
    assert net.host.stats["sessions_connected"] == 1
    assert room.state is RoomState.WAITING  # slot 1 is still missing

    # A late joiner is told the current frame and catches up from frame 1.
    net.run_until(1.0 + 10.5 / 15)
    assert room.state is RoomState.RUNNING
    assert room.last_frame == 10
    b = addr(1)
    ticket1, keys1 = make_ticket(1)
    late = ClientConnection(ticket1, keys1, HOST, net.now, entropy=salt_source(2))
    hs1 = handshake(net, late, b, keys1)
    accept1 = decode_accept_untrusted(open_from_host(keys1, hs1.accept, hs1.client_salt)[1])
    assert (accept1.slot, accept1.team, accept1.frame) == (1, 1, 10)
    assert accept1.state is RoomState.RUNNING
    assert net.events_of(PlayerConnected)[-1] == PlayerConnected(ROOM_ID, 1, 101, 10, b, False)
    net.run_until(net.now + 1.0)
    got = [e.frame for e in net.client_events_of(b, FrameReceived)]
    assert got == room.frames[: len(got)]
    assert len(got) == room.last_frame


# -- before the address is proven ---------------------------------------------------------


def test_spoofed_request_gets_only_a_smaller_challenge_and_allocates_nothing() -> None:
    net = Net(players=2)
    ticket, _ = make_ticket(0)
    request = encode_connect_request(ticket)
    out = net.to_host(request, SPOOFED)
    assert len(out) == 1
    challenge, dst = out[0]
    assert dst == SPOOFED
    assert ptype_of(challenge) == PacketType.CHALLENGE
    assert len(challenge) < len(request)
    assert nothing_allocated(net)
    assert net.events == []
    assert net.host.stats["challenges_sent"] == 1

    # The attacker at B has A's cookie (say, it guessed it), but the cookie is bound to A.
    response = encode_connect_response(challenge[2:], ticket, SALT)
    b: Address = ("198.51.100.7", 2222)
    assert net.to_host(response, b) == []
    assert net.host.drops["bad_cookie"] == 1
    assert nothing_allocated(net)
    assert net.events == []

    # The same response from A itself is good: the cookie was valid, only not for B.
    (accept, dst), *more = net.to_host(response, SPOOFED)
    assert not more and dst == SPOOFED and ptype_of(accept) == PacketType.ACCEPT
    assert SPOOFED in net.host._routes


def _hostile_batch(net: Net, rng: random.Random) -> list[tuple[bytes, Address]]:
    """Valid and invalid pre-handshake datagrams from many addresses."""
    ended = net.host.create_room(8, 2002, 1, make_roster(1), RoomConfig(), 0.0)
    ended.end("test", 0.0)
    assert net.host.next_event() is not None  # its RoomEnded
    ended_ticket, _ = make_ticket(0, room_id=8, match_id=2002)
    t0, _ = make_ticket(0)
    t1, _ = make_ticket(1)
    cookie_a = net.host._cookies.issue(SPOOFED, t0, 0.0)
    ended_cookie = net.host._cookies.issue(SPOOFED, ended_ticket, 0.0)
    tampered = bytearray(t1)
    tampered[60] ^= 1
    batch: list[bytes] = [
        encode_connect_request(t0),
        encode_connect_request(t1),
        encode_connect_request(make_ticket(0, expires_at=OFFSET - 1)[0]),
        encode_connect_request(make_ticket(0, room_id=99)[0]),
        encode_connect_request(make_ticket(0, match_id=5)[0]),
        encode_connect_request(bytes(tampered)),
        encode_connect_request(ended_ticket),
        encode_connect_request(rng.randbytes(128)),
        encode_connect_request(t0)[:-1],
        encode_connect_request(t0) + b"\x00",
        encode_connect_response(bytes(20), t0, SALT),
        encode_connect_response(rng.randbytes(20), t1, SALT),
        encode_connect_response(cookie_a, t0, SALT),  # sent from addresses other than A below
        encode_connect_response(ended_cookie, ended_ticket, SALT),
        encode_connect_response(cookie_a, t0, SALT)[:-1],  # no room for the whole salt
        encode_connect_response(cookie_a, t0, SALT) + b"\x00",
        encode_connect_response(cookie_a, t0, SALT)[:150],  # the old, salt-less size
        encode_challenge(rng.randbytes(20)),
        encode_denied(DenyReason.ROOM_FULL),
        sealed_header(PacketType.CLIENT_UPDATE, 1) + rng.randbytes(40),
        sealed_header(PacketType.ACCEPT, 7) + rng.randbytes(300),
        sealed_header(PacketType.DISCONNECT, 1)[:-1],
        b"",
        bytes((MAGIC,)),
        bytes((MAGIC, 0x7F)) + bytes(10),
        bytes((0xF2, PacketType.CONNECT_REQUEST)) + bytes(510),
        b"\x00\x01" + bytes(510),
        rng.randbytes(1500),
        bytes((MAGIC, PacketType.CONNECT_REQUEST)) + bytes(1300),
    ]
    batch += [rng.randbytes(rng.randint(0, 600)) for _ in range(50)]
    sources = [(f"203.0.113.{rng.randint(1, 250)}", rng.randint(1024, 65535)) for _ in batch]
    sources[13] = SPOOFED  # the ended-room response carries a valid cookie for its source
    return list(zip(batch, sources, strict=True))


def test_no_pre_handshake_reply_is_larger_than_its_cause() -> None:
    net = Net(players=2)
    rng = random.Random(7)
    batch = _hostile_batch(net, rng)
    replies = 0
    for data, src in batch * 2:
        out = net.to_host(data, src)
        assert sum(len(d) for d, _ in out) <= len(data), (data[:2].hex(), out)
        assert all(dst == src for _, dst in out)  # never reflected elsewhere
        replies += len(out)
    assert nothing_allocated(net)
    assert net.events == []
    drops = net.host.drops
    # Two valid requests and one ENDED-room response (a 3-byte DENIED) per pass.
    assert net.host.stats["challenges_sent"] == 4
    assert replies == 6
    for reason in (
        "ticket_expired",
        "ticket_wrong_room",
        "ticket_mismatch",
        "ticket_invalid",
        "room_ended",
        "bad_size",
        "bad_cookie",
        "wrong_direction",
        "unknown_address",
        "too_short",
        "too_large",
        "bad_type",
        "bad_version",
        "bad_magic",
    ):
        assert drops[reason] > 0, reason


# -- tickets ------------------------------------------------------------------------------


def _flip(ticket: bytes, index: int) -> bytes:
    out = bytearray(ticket)
    out[index] ^= 0x01
    return bytes(out)


T0 = make_ticket(0)[0]


@pytest.mark.parametrize(
    ("ticket", "reason"),
    [
        (make_ticket(0, expires_at=OFFSET - 1)[0], "ticket_expired"),
        (make_ticket(0, expires_at=OFFSET)[0], "ticket_expired"),  # expiring now is expired
        (make_ticket(0, room_id=99)[0], "ticket_wrong_room"),
        (_flip(T0, 8), "ticket_wrong_room"),  # room id byte: now names room 6, not here
        (_flip(T0, 6), "ticket_invalid"),  # expiry (associated data) pushed later
        (_flip(T0, 16), "ticket_invalid"),  # nonce
        (_flip(T0, 40), "ticket_invalid"),  # sealed identity
        (_flip(T0, 127), "ticket_invalid"),  # tag
        (make_ticket(0, key=bytes(32))[0], "ticket_invalid"),  # not sealed with our key
        (make_ticket(0, match_id=MATCH_ID + 1)[0], "ticket_mismatch"),
        (make_ticket(0, player_id=555)[0], "ticket_mismatch"),
        (make_ticket(0, player_id=101)[0], "ticket_mismatch"),  # slot 1's player in slot 0
        (make_ticket(2, player_id=102)[0], "ticket_mismatch"),  # no slot 2 in this room
    ],
    ids=[
        "expired",
        "expires-now",
        "other-room",
        "room-byte-flipped",
        "expiry-flipped",
        "nonce-flipped",
        "private-flipped",
        "tag-flipped",
        "wrong-key",
        "other-match",
        "unknown-player",
        "other-slots-player",
        "slot-out-of-range",
    ],
)
def test_bad_ticket_gets_no_reply_and_is_counted(ticket: bytes, reason: str) -> None:
    net = Net(players=2)
    assert net.to_host(encode_connect_request(ticket), SPOOFED) == []
    assert net.host.drops == {reason: 1}
    assert net.host.stats["challenges_sent"] == 0
    # The same ticket in a CONNECT_RESPONSE with a cookie valid for it fares no better.
    cookie = net.host._cookies.issue(SPOOFED, ticket, 0.0)
    assert net.to_host(encode_connect_response(cookie, ticket, SALT), SPOOFED) == []
    assert net.host.drops == {reason: 2}
    assert nothing_allocated(net)
    assert net.events == []


def test_ticket_expiring_between_request_and_response_is_refused() -> None:
    net = Net(players=2)
    ticket, _ = make_ticket(0, expires_at=OFFSET + 5.0)
    (challenge, _), *_ = net.to_host(encode_connect_request(ticket), SPOOFED)
    net.now = 6.0  # same cookie epoch, but the ticket is now stale
    assert net.to_host(encode_connect_response(challenge[2:], ticket, SALT), SPOOFED) == []
    assert net.host.drops == {"ticket_expired": 1}
    assert nothing_allocated(net)


def test_cookie_from_an_old_epoch_is_bad() -> None:
    net = Net(players=2)
    ticket, _ = make_ticket(0)
    (challenge, _), *_ = net.to_host(encode_connect_request(ticket), SPOOFED)
    response = encode_connect_response(challenge[2:], ticket, SALT)

    net.now = 20.5  # two epochs later
    assert net.to_host(response, SPOOFED) == []
    assert net.host.drops == {"bad_cookie": 1}
    assert nothing_allocated(net)

    # A fresh challenge works; and a cookie one epoch old is still accepted.
    (fresh, _), *_ = net.to_host(encode_connect_request(ticket), SPOOFED)
    assert fresh != challenge
    net.now = 29.9
    (accept, _), *_ = net.to_host(encode_connect_response(fresh[2:], ticket, SALT), SPOOFED)
    assert ptype_of(accept) == PacketType.ACCEPT


def test_cookie_is_bound_to_the_ticket() -> None:
    net = Net(players=2)
    t0, _ = make_ticket(0)
    t1, _ = make_ticket(1)
    (challenge, _), *_ = net.to_host(encode_connect_request(t0), SPOOFED)
    assert net.to_host(encode_connect_response(challenge[2:], t1, SALT), SPOOFED) == []
    assert net.host.drops == {"bad_cookie": 1}
    assert nothing_allocated(net)


# -- duplicates ---------------------------------------------------------------------------


def test_duplicated_connect_response_resends_accept_without_a_second_session() -> None:
    net = Net(players=2)
    a = addr(0)
    ticket, keys = make_ticket(0)
    client = ClientConnection(ticket, keys, HOST, 0.0, entropy=salt_source(1))
    hs = handshake(net, client, a, keys, confirm=False)
    peer = net.room.peers[0]
    (pending,) = peer.pending

    net.now = 3.0
    (again, dst), *more = net.to_host(hs.response, a)
    assert not more and dst == a and ptype_of(again) == PacketType.ACCEPT
    assert peer.pending == [pending]
    assert (seq_of(hs.accept), seq_of(again)) == (1, 2)  # same session, next sequence number
    assert again[10:26] == hs.accept[10:26]  # the same room salt, so the same keys
    assert accept_keys(keys, again, hs.client_salt) == accept_keys(keys, hs.accept, hs.client_salt)
    assert net.host.stats["sessions_pending"] == 1
    assert pending.last_recv == 3.0  # the resend refreshed the pending session's timeout
    client.receive_datagram(again, HOST, net.now)  # a CONNECTED client ignores a late ACCEPT
    assert client.next_event() is None
    assert client.datagrams_to_send() == []

    net.to_host(hs.first_sealed, a)
    assert peer.session is pending and peer.pending == []
    assert net.host.stats["sessions_connected"] == 1

    # A late duplicate after confirmation gets one ACCEPT at most and disturbs nothing: the
    # live session stays, and the connected client ignores that ACCEPT.
    late = net.to_host(hs.response, a)
    assert [(ptype_of(d), dst) for d, dst in late] == [(PacketType.ACCEPT, a)]
    assert open_from_host(keys, late[0][0], hs.client_salt)[0] is PacketType.ACCEPT
    client.receive_datagram(late[0][0], HOST, net.now)
    assert client.next_event() is None
    assert client.datagrams_to_send() == []
    assert peer.session is pending and peer.status is PeerStatus.CONNECTED
    assert net.host.stats["sessions_connected"] == 1
    assert len(net.events_of(PlayerConnected)) == 1
    assert net.events_of(PlayerDisconnected) == []
    net.step(3.5)
    assert peer.session is pending and client.state is ClientState.CONNECTED
    assert net.events_of(PlayerDisconnected) == []


def test_resent_connect_response_keeps_the_pending_session_alive() -> None:
    """A client whose ACCEPTs keep getting lost keeps its one pending session by resending its
    CONNECT_RESPONSE; without resends the pending session expires with the disconnect timeout."""
    net = Net(players=2, config=RoomConfig(disconnect_timeout=5.0))
    a = addr(0)
    ticket, keys = make_ticket(0)
    client = ClientConnection(ticket, keys, HOST, 0.0, entropy=salt_source(1))
    hs = handshake(net, client, a, keys, confirm=False)
    peer = net.room.peers[0]
    (pending,) = peer.pending
    for now in (4.0, 8.0):
        net.now = now
        (again, _), *more = net.to_host(hs.response, a)
        assert not more and again[10:26] == hs.accept[10:26]
        net.host.tick(now)
        assert peer.pending == [pending], f"the pending session expired at {now}"
    net.host.tick(8.0 + 5.0)
    assert peer.pending == []
    assert a not in net.host._routes
    assert net.host.stats["sessions_pending"] == 1


def test_client_restarted_on_the_same_address_with_the_same_ticket_gets_a_fresh_session() -> None:
    """Regression: the room once took a CONNECT_RESPONSE with the same ticket from the same
    address for a lost ACCEPT even when it came from a new client instance, and re-sent the old
    session's salt: the restarted client derived the old session's keys, sealed from sequence 1
    again (nonce reuse under the c2s key) and was dropped as 'replayed'."""
    net = Net(players=2)
    net.connect_all()
    net.run_until(2.0)  # the first instance has sealed about 30 datagrams
    a = addr(0)
    first_keys = net.session_keys(a)
    first_salt = net.client_salt(a)
    old_session = net.room.peers[0].session
    assert old_session is not None
    ticket, keys = make_ticket(0)
    restarted = ClientConnection(ticket, keys, HOST, net.now, entropy=net.salts())
    mark = len(net.log)
    net.attach(restarted, a, keys)  # same address, same lobby ticket, from scratch
    assert restarted.state is ClientState.CONNECTED
    assert net.client_salt(a) != first_salt  # a new instance picked a new salt
    (accept,) = [w for w in net.log[mark:] if ptype_of(w.data) == PacketType.ACCEPT]
    assert seq_of(accept.data) == 1  # a new session, not the old one's next ACCEPT
    assert accept.data[10:26] != old_session.salt  # with a new room salt
    restarted.send_input(b"back", net.now)
    net.run_until(2.5)
    new_session = net.room.peers[0].session
    assert new_session is not None and new_session is not old_session
    assert new_session.address == a and new_session.client_salt == net.client_salt(a)
    assert net.session_keys(a) != first_keys, "the restarted client reuses the old session keys"
    assert net.host.drops["replayed"] == 0
    assert net.host.drops["forged"] == 0
    assert [i.data for f in net.room.frames for i in f.inputs if i.slot == 0] == [b"back"]
    # Same address: the old session was replaced silently, the slot reconnected.
    assert [e.reason for e in net.events_of(PlayerDisconnected)] == ["replaced"]
    assert net.events_of(PlayerConnected)[-1].reconnected
    assert net.sent_to(a, PacketType.DISCONNECT) == []
    assert restarted.frame_ack == net.room.last_frame


def test_restarted_client_whose_accept_was_lost_gets_it_again_beside_a_live_session() -> None:
    net = Net(players=2)
    net.connect_all()
    net.run_until(1.0)
    a = addr(0)
    peer = net.room.peers[0]
    live = peer.session
    ticket, keys = make_ticket(0)
    restarted = ClientConnection(ticket, keys, HOST, net.now, entropy=net.salts())
    hs = handshake(net, restarted, a, keys, confirm=False)  # that ACCEPT is "lost" below
    (pending,) = peer.pending
    net.now += 0.1
    (again, _), *_ = net.to_host(hs.response, a)  # the same instance asks again
    assert peer.session is live
    assert peer.pending == [pending], "a second pending session for the same client instance"
    assert again[10:26] == pending.salt and seq_of(again) == 2
    assert pending.last_recv == net.now


def test_replayed_accept_does_not_open_for_a_new_client_instance() -> None:
    """An ACCEPT recorded from an earlier instance's session of the same ticket, replayed from
    the room's address, was made for another client salt: the new instance cannot open it,
    so it never seals with that old session's keys from sequence 1 again."""
    net = Net(players=2)
    a = addr(0)
    ticket, keys = make_ticket(0)
    first = ClientConnection(ticket, keys, HOST, 0.0, entropy=salt_source(1))
    old = handshake(net, first, a, keys)
    assert first.state is ClientState.CONNECTED
    net.run_until(1.0)

    # The client restarts with the same ticket and a fresh salt (its own, not the old one).
    second = ClientConnection(ticket, keys, HOST, net.now, entropy=salt_source(2))
    net.attach(second, a, keys, flush=False)
    (request, _), *_ = second.datagrams_to_send()

    # Before any CHALLENGE it expects no ACCEPT at all: dropped unopened.
    second.receive_datagram(old.accept, HOST, net.now)
    assert second.drops == {"stale_accept": 1}
    assert second.state is ClientState.CONNECTING
    assert second.datagrams_to_send() == []

    # After the CHALLENGE it expects an ACCEPT, but the old one does not authenticate.
    (challenge, _), *_ = net.to_host(request, a)
    second.receive_datagram(challenge, HOST, net.now)
    (response, _), *_ = second.datagrams_to_send()
    assert client_salt_of(response) != old.client_salt
    for _ in range(3):
        second.receive_datagram(old.accept, HOST, net.now)
    assert second.drops["forged"] == 3
    assert second.state is ClientState.RESPONDING
    assert second.accept is None and second.next_event() is None
    assert second.datagrams_to_send() == []  # nothing sealed under the old session's keys

    # The room's own answer to this instance opens, with keys of a new session.
    (accept, _), *_ = net.to_host(response, a)
    assert accept[10:26] != old.accept[10:26]
    second.receive_datagram(accept, HOST, net.now)
    assert second.state is ClientState.CONNECTED
    assert isinstance(second.next_event(), Accepted)
    old_keys = accept_keys(keys, old.accept, old.client_salt)
    new_keys = accept_keys(keys, accept, client_salt_of(response))
    assert {old_keys.c2s, old_keys.s2c}.isdisjoint({new_keys.c2s, new_keys.s2c})
    # Once connected, the old ACCEPT is another session's: dropped as stale.
    second.receive_datagram(old.accept, HOST, net.now)
    assert second.drops == {"stale_accept": 2, "forged": 3}
    assert second.state is ClientState.CONNECTED


def test_each_client_instance_gets_its_own_session() -> None:
    """The same ticket from several client instances: each gets its own room salt and keys;
    only the same instance again (same address, ticket and client salt) gets its ACCEPT re-sent."""
    net = Net(players=2)
    a, b = addr(0), addr(0, port_base=41000)
    ticket, keys = make_ticket(0)
    peer = net.room.peers[0]
    hs1 = handshake(
        net,
        ClientConnection(ticket, keys, HOST, 0.0, entropy=salt_source(1)),
        a,
        keys,
        confirm=False,
    )
    (first,) = peer.pending

    # A second instance at another address: a second pending session beside the first.
    hs2 = handshake(
        net,
        ClientConnection(ticket, keys, HOST, 0.0, entropy=salt_source(2)),
        b,
        keys,
        confirm=False,
    )
    assert [p.address for p in peer.pending] == [a, b]
    second = peer.pending[1]
    # A third instance restarted at the first one's address: it replaces the first's pending
    # session (which can no longer answer) with a new one.
    hs3 = handshake(
        net,
        ClientConnection(ticket, keys, HOST, 0.0, entropy=salt_source(3)),
        a,
        keys,
        confirm=False,
    )
    assert peer.pending[0] is second
    third = peer.pending[1]
    assert first not in peer.pending and third.address == a
    salts = [hs.client_salt for hs in (hs1, hs2, hs3)]
    assert len(set(salts)) == 3
    assert [first.client_salt, second.client_salt, third.client_salt] == salts
    assert len({first.salt, second.salt, third.salt}) == 3
    all_keys = [accept_keys(keys, hs.accept, hs.client_salt).c2s for hs in (hs1, hs2, hs3)]
    assert len(set(all_keys)) == 3
    assert net.host.stats["sessions_pending"] == 3

    # The third instance again (its ACCEPT was lost): the same session, the next sequence.
    (again, _), *_ = net.to_host(hs3.response, a)
    assert again[10:26] == third.salt and seq_of(again) == 2
    assert peer.pending == [second, third]
    # The first instance's response again (delayed): that session is gone, so it gets a new
    # one, and the third instance's pending session gives way to it.
    (again1, _), *_ = net.to_host(hs1.response, a)
    assert seq_of(again1) == 1 and again1[10:26] not in (first.salt, third.salt)
    assert [p.address for p in peer.pending] == [b, a]
    assert peer.pending[1].client_salt == hs1.client_salt
    # The winner is whoever proves its keys first: here the second instance.
    net.to_host(hs2.first_sealed, b)
    assert peer.session is second and peer.pending == []


# -- reconnect ----------------------------------------------------------------------------


def _running_pair() -> Net:
    net = Net(players=2)
    net.connect_all()
    assert net.room.state is RoomState.RUNNING
    net.run_until(1.0)
    return net


def test_reconnect_replaces_the_old_session_only_once_the_new_one_is_proven() -> None:
    net = _running_pair()
    room = net.room
    a, b = addr(0), addr(0, port_base=41000)
    old = net.clients[a]
    old_keys = net.session_keys(a)
    frames_before = old.frame_ack
    assert frames_before == room.last_frame == 15
    # An input the old socket sent but that never arrived: held here, delivered later.
    old.send_input(b"x", net.now)
    (held, _), *_ = old.datagrams_to_send()
    assert old.accept is not None
    new_keys = old.accept.reconnect_keys

    new = old.reconnect(net.now)
    assert old.state is ClientState.DISCONNECTED
    hs = handshake(net, new, b, new_keys, confirm=False)
    accept = decode_accept_untrusted(open_from_host(new_keys, hs.accept, hs.client_salt)[1])
    assert (accept.slot, accept.frame, accept.state) == (0, 15, RoomState.RUNNING)

    # Until the new session proves its keys, the old one stays live and keeps its frames.
    peer = room.peers[0]
    assert peer.session is not None and peer.session.address == a
    assert [p.address for p in peer.pending] == [b]
    mark = len(net.log)
    net.cut_up.add(b)  # whatever the new client sends now is lost
    net.step(net.now + 1 / 15)
    net.cut_up.discard(b)
    fresh = net.log[mark:]
    assert any(w.dst == a and ptype_of(w.data) == PacketType.SERVER_UPDATE for w in fresh)
    assert not any(w.dst == b for w in fresh)
    assert net.events_of(PlayerDisconnected) == []

    # Its first sealed datagram swaps the sessions.
    events_before = len(net.events)
    out = net.to_host(hs.first_sealed, b)
    assert [dst for _, dst in out] == [a]
    ptype, body = open_from_host(old_keys, out[0][0])
    assert ptype is PacketType.DISCONNECT
    assert decode_disconnect_untrusted(body).reason is DisconnectReason.REPLACED
    assert net.events[events_before:] == [
        PlayerDisconnected(ROOM_ID, 0, 100, room.last_frame, "replaced"),
        PlayerConnected(ROOM_ID, 0, 100, room.last_frame, b, True),
    ]
    assert peer.session is not None and peer.session.address == b
    assert peer.pending == [] and peer.status is PeerStatus.CONNECTED
    assert a not in net.host._routes and net.host._routes[b] == (room, 0)

    # The old address is forgotten: even a genuine, never-seen datagram from it is dropped.
    unknown = net.host.drops["unknown_address"]
    assert net.to_host(held, a) == []
    assert net.host.drops["unknown_address"] == unknown + 1

    # The new connection goes on where the old one stopped; the held input lands once.
    net.run_until(net.now + 1.0)
    got = [e.frame for e in net.client_events_of(b, FrameReceived)]
    assert got == room.frames[frames_before:]
    mine = [i for f in room.frames for i in f.inputs if i.slot == 0]
    assert [(i.seq, i.data) for i in mine] == [(1, b"x")]
    assert new.unacked_inputs == 0
    assert net.clients[addr(1)].frame_ack == room.last_frame  # the other player saw nothing


def _hijack_setup() -> tuple[Net, Address, ClientConnection, bytes]:
    """Slot 0 reconnected to `b`; returns the net, b, the live client and its CONNECT_REQUEST."""
    net = _running_pair()
    a, b = addr(0), addr(0, port_base=41000)
    old = net.clients[a]
    assert old.accept is not None
    new = old.reconnect(net.now)
    hs = handshake(net, new, b, old.accept.reconnect_keys)
    assert net.room.peers[0].session is not None
    assert net.room.peers[0].session.address == b
    return net, b, new, hs.request


def test_replayed_ticket_from_a_third_address_does_not_take_the_seat() -> None:
    net, b, live, request = _hijack_setup()
    room = net.room
    peer = room.peers[0]
    live_session = peer.session
    keys = net.keys[b]
    events_before = len(net.events)

    # The attacker copies the reconnect ticket from the wire and runs the handshake at C.
    (challenge, dst), *_ = net.to_host(request, ATTACKER)
    assert dst == ATTACKER
    out = net.to_host(
        encode_connect_response(challenge[2:], request[2:130], ATTACKER_SALT), ATTACKER
    )
    assert [(ptype_of(d), dst) for d, dst in out] == [(PacketType.ACCEPT, ATTACKER)]
    # An ACCEPT it cannot read: sealed under the keys that only the real player holds.
    assert open_from_host(keys, out[0][0], ATTACKER_SALT)[0] is PacketType.ACCEPT
    assert peer.session is live_session
    assert [p.address for p in peer.pending] == [ATTACKER]

    # Without the keys, it can only send garbage or try other keys: all forged.
    forged = net.host.drops["forged"]
    attempts = [
        sealed_header(PacketType.CLIENT_UPDATE, 1) + bytes(40),
        seal_as_client(fixed_keys("guess"), idle_update(), 1),
        seal_as_client(ClientKeys(keys.s2c, keys.c2s), idle_update(), 2),  # keys swapped
    ]
    for data in attempts:
        assert net.to_host(data, ATTACKER) == []
    assert net.host.drops["forged"] == forged + len(attempts)

    # The real player keeps its seat and its frames, and nobody was told otherwise.
    net.run_until(net.now + 2.0)
    assert peer.session is live_session and peer.status is PeerStatus.CONNECTED
    assert not [
        e for e in net.events[events_before:] if isinstance(e, PlayerConnected | PlayerDisconnected)
    ]
    assert live.state is ClientState.CONNECTED
    assert live.frame_ack == room.last_frame
    assert not net.client_events_of(b, Disconnected)
    # The attacker's unconfirmed session expired with the disconnect timeout.
    net.run_until(net.now + 4.0)
    assert peer.pending == []
    assert ATTACKER not in net.host._routes
    assert not any(
        w.dst == ATTACKER and ptype_of(w.data) == PacketType.SERVER_UPDATE for w in net.log
    )


def test_replayed_sealed_datagram_cannot_confirm_a_hijacker() -> None:
    """Regression: sessions from one ticket once shared its keys and a fresh replay window,
    so the real player's captured datagrams, replayed from C, confirmed the attacker."""
    net, b, live, request = _hijack_setup()
    peer = net.room.peers[0]
    live_session = peer.session
    # The attacker also captured the real player's sealed datagrams from the wire.
    net.run_until(net.now + 0.2)
    captured = [w.data for w in net.sent_by(b) if ptype_of(w.data) >= PacketType.ACCEPT]
    assert len(captured) > 3
    (challenge, _), *_ = net.to_host(request, ATTACKER)
    net.to_host(encode_connect_response(challenge[2:], request[2:130], ATTACKER_SALT), ATTACKER)
    forged = net.host.drops["forged"]
    for data in captured:
        assert net.to_host(data, ATTACKER) == []  # replayed byte for byte from C
    assert net.host.drops["forged"] == forged + len(captured)
    assert peer.session is not None
    assert peer.session.address == b, f"the seat went to {peer.session.address}"
    assert peer.session is live_session
    assert [e.reason for e in net.events_of(PlayerDisconnected)] == ["replaced"]  # the genuine one
    net.run_until(net.now + 1.0)
    assert live.state is ClientState.CONNECTED
    assert live.frame_ack == net.room.last_frame


def test_host_never_reuses_a_nonce_under_one_key() -> None:
    """Regression: two sessions from the same ticket bytes once sealed with the same key from
    sequence 1, reusing (key, nonce) pairs for different plaintexts."""
    net, b, _live, request = _hijack_setup()
    net.keys[ATTACKER] = net.keys[b]  # the attacker handshakes with b's ticket
    # It copies the client salt off the wire too: the room's fresh salt still tells them apart.
    copied_salt = net.client_salt(b)
    (challenge, _), *_ = net.to_host(request, ATTACKER)
    net.to_host(encode_connect_response(challenge[2:], request[2:130], copied_salt), ATTACKER)
    net.run_until(net.now + 0.5)
    assert net.client_salt(ATTACKER) == net.client_salt(b)
    assert net.session_keys(ATTACKER) != net.session_keys(b)
    seen: dict[tuple[bytes, int], set[bytes]] = {}
    for address in (b, ATTACKER):
        keys = None
        for index, w in enumerate(net.log):
            if w.src != HOST or w.dst != address:
                continue
            if ptype_of(w.data) == PacketType.ACCEPT:
                salt = net.client_salt(address, before=index)
                keys = accept_keys(net.keys[address], w.data, salt)
            if keys is not None and ptype_of(w.data) >= PacketType.ACCEPT:
                seen.setdefault((keys.s2c, seq_of(w.data)), set()).add(w.data)
    assert len(seen) >= 8
    reused = sorted(seq for (_, seq), v in seen.items() if len(v) > 1)
    assert reused == [], f"sequence numbers (nonces) sealed twice under one key: {reused}"


def test_replayed_ticket_cannot_knock_out_a_pending_handshake() -> None:
    """Regression: a second CONNECT_RESPONSE with the same ticket from another address once
    released the real client's pending session, so its first sealed datagram was dropped."""
    net = Net(players=2)
    net.add_client(1)
    a = addr(0)
    ticket, keys = make_ticket(0)
    client = ClientConnection(ticket, keys, HOST, 0.0)
    hs = handshake(net, client, a, keys, confirm=False)
    # An eavesdropper replays the ticket from the CONNECT_REQUEST before the client confirms.
    (challenge, _), *_ = net.to_host(hs.request, ATTACKER)
    net.to_host(encode_connect_response(challenge[2:], ticket, ATTACKER_SALT), ATTACKER)
    peer = net.room.peers[0]
    assert sorted(p.address for p in peer.pending) == sorted([a, ATTACKER])
    net.to_host(hs.first_sealed, a)
    assert net.host.drops["unknown_address"] == 0, "the real client's datagram was dropped"
    assert peer.session is not None and peer.session.address == a
    assert peer.pending == [] and ATTACKER not in net.host._routes  # the loser is forgotten
    assert net.room.state is RoomState.RUNNING


# -- forged and replayed sealed datagrams -------------------------------------------------


def test_forged_and_replayed_sealed_datagrams_are_dropped_and_counted() -> None:
    net = Net(players=2)
    net.connect_all()
    net.run_until(0.5)
    a = addr(0)
    client = net.clients[a]
    session = net.room.peers[0].session
    assert session is not None
    client.send_input(b"in", net.now)
    (good, _), *_ = client.datagrams_to_send()
    assert net.to_host(good, a) == []
    recv = session.last_recv
    assert net.room.peers[0].input_ack == 1

    drops = net.host.drops
    assert net.to_host(good, a) == []  # byte-for-byte replay
    assert drops["replayed"] == 1

    # A tampered copy of a seen sequence number is rejected before any crypto, as a replay.
    stale = bytearray(good)
    stale[-1] ^= 0x40
    assert net.to_host(bytes(stale), a) == []
    assert drops["replayed"] == 2
    assert drops["forged"] == 0

    client.send_input(b"zz", net.now + 0.01)
    (later, _), *_ = client.datagrams_to_send()

    def flipped(index: int) -> bytes:
        out = bytearray(later)
        out[index] ^= 0x40
        return bytes(out)

    forgeries = [
        flipped(len(later) - 1),  # tag
        flipped(12),  # body
        flipped(2),  # sequence number (associated data)
        bytes((MAGIC, PacketType.DISCONNECT)) + later[2:],  # type byte (associated data)
        later[:-1],  # truncated tag
        seal_as_client(net.session_keys(addr(1)), idle_update(), 99),  # another player's keys
        seal_as_client(net.keys[a], idle_update(), 98),  # the ticket's keys, not the session's
        later[:10] + good[10:],  # a fresh sequence number on an old ciphertext
    ]
    net.now += 0.01
    for data in forgeries:
        assert net.to_host(data, a) == []
    assert drops["forged"] == len(forgeries)
    assert drops["replayed"] == 2
    # Nothing a forgery carried was believed: no refresh, no input, no disconnect.
    assert session.last_recv == recv
    assert net.room.peers[0].input_ack == 1
    assert net.room.peers[0].status is PeerStatus.CONNECTED
    assert net.events_of(PlayerDisconnected) == []
    # The genuine next datagram is still accepted (the forged ones burnt no sequence numbers).
    assert net.to_host(later, a) == []
    assert net.room.peers[0].input_ack == 2
    assert session.last_recv == net.now


def test_forged_datagram_does_not_confirm_a_pending_session() -> None:
    net = Net(players=2)
    a = addr(0)
    ticket, keys = make_ticket(0)
    client = ClientConnection(ticket, keys, HOST, 0.0)
    hs = handshake(net, client, a, keys, confirm=False)
    peer = net.room.peers[0]
    bad = bytearray(hs.first_sealed)
    bad[-1] ^= 1
    assert net.to_host(bytes(bad), a) == []
    assert net.host.drops["forged"] == 1
    assert peer.session is None and peer.status is PeerStatus.NEVER_CONNECTED
    assert net.events_of(PlayerConnected) == []
    net.to_host(hs.first_sealed, a)
    assert peer.session is not None and peer.status is PeerStatus.CONNECTED


def test_wire_log_records_what_crossed() -> None:
    """The driver itself: every handshake datagram is logged in order, both ways."""
    net = Net(players=1)
    net.add_client(0)
    kinds = [(w.src == HOST, ptype_of(w.data)) for w in net.log]
    assert kinds[:5] == [
        (False, PacketType.CONNECT_REQUEST),
        (True, PacketType.CHALLENGE),
        (False, PacketType.CONNECT_RESPONSE),
        (True, PacketType.ACCEPT),
        (False, PacketType.CLIENT_UPDATE),
    ]
    assert all(isinstance(w, Wire) and not w.lost for w in net.log)
    assert net.room.state is RoomState.RUNNING


def test_host_core_rejects_bad_key_sizes() -> None:
    with pytest.raises(ValueError):
        HostCore(bytes(31), bytes(32))
