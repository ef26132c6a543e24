"""Session sealing: paired ciphers, tamper detection, replay window semantics."""

from __future__ import annotations

import hashlib
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from battle.errors import BadDatagram
from battle.sealing import REPLAY_WINDOW, ReplayWindow, SessionCipher, derive_session_keys
from battle.ticket import ClientKeys
from battle.wire import (
    MAX_DATAGRAM,
    MAX_SEALED_BODY,
    SEALED_HEADER,
    SEALED_HEADER_SIZE,
    SEALED_OVERHEAD,
    SESSION_SALT_SIZE,
    PacketType,
    Sealed,
    decode_datagram_untrusted,
)

C2S = bytes(range(32))
S2C = bytes(range(32, 64))


def pair() -> tuple[SessionCipher, SessionCipher]:
    """(client, server): the client sends with c2s, the server receives with it."""
    return SessionCipher(C2S, S2C), SessionCipher(S2C, C2S)


def parse(data: bytes) -> Sealed:
    parsed = decode_datagram_untrusted(data)
    assert isinstance(parsed, Sealed)
    return parsed


def raw_sealed(data: bytes, ptype: PacketType = PacketType.CLIENT_UPDATE) -> Sealed:
    """Build a Sealed view of arbitrary bytes without the wire decoder's checks."""
    _, _, seq = SEALED_HEADER.unpack_from(data)
    return Sealed(ptype, seq, data[:SEALED_HEADER_SIZE], data[SEALED_HEADER_SIZE:])


def reason(cipher: SessionCipher, datagram: Sealed) -> str:
    with pytest.raises(BadDatagram) as info:
        cipher.open_untrusted(datagram)
    return info.value.reason


# --- round trips -----------------------------------------------------------------------------


@settings(max_examples=50)
@given(
    st.lists(
        st.tuples(
            st.booleans(),
            st.sampled_from(
                [
                    PacketType.ACCEPT,
                    PacketType.CLIENT_UPDATE,
                    PacketType.SERVER_UPDATE,
                    PacketType.DISCONNECT,
                ]
            ),
            st.binary(max_size=MAX_SEALED_BODY),
        ),
        max_size=20,
    )
)
def test_pair_round_trip_both_directions(
    messages: list[tuple[bool, PacketType, bytes]],
) -> None:
    client, server = pair()
    for to_server, ptype, body in messages:
        sender, receiver = (client, server) if to_server else (server, client)
        expected_seq = sender.next_seq
        salt = bytes(range(16)) if ptype is PacketType.ACCEPT else b""
        data = sender.seal(ptype, body, salt=salt)
        assert len(data) == len(body) + SEALED_OVERHEAD + len(salt)
        assert len(data) <= MAX_DATAGRAM
        sealed = parse(data)
        assert sealed.type is ptype
        assert sealed.seq == expected_seq
        assert receiver.open_untrusted(sealed) == body
        assert sender.next_seq == expected_seq + 1


def test_sequence_numbers_start_at_one_and_increase() -> None:
    client, _ = pair()
    seqs = [parse(client.seal(PacketType.CLIENT_UPDATE, b"x")).seq for _ in range(5)]
    assert seqs == [1, 2, 3, 4, 5]


def test_body_is_encrypted() -> None:
    client, _ = pair()
    body = b"secret input bytes" * 4
    data = client.seal(PacketType.CLIENT_UPDATE, body)
    assert body not in data
    # Same body, next sequence number: a different nonce gives different ciphertext.
    assert (
        client.seal(PacketType.CLIENT_UPDATE, body)[SEALED_HEADER_SIZE:]
        != data[SEALED_HEADER_SIZE:]
    )


def test_a_side_cannot_open_its_own_direction() -> None:
    client, server = pair()
    data = client.seal(PacketType.CLIENT_UPDATE, b"hello")
    assert reason(client, parse(data)) == "forged"
    # A cipher built with the keys the wrong way round cannot open either.
    confused = SessionCipher(C2S, S2C)
    assert reason(confused, parse(data)) == "forged"
    assert server.open_untrusted(parse(data)) == b"hello"


# --- session keys ----------------------------------------------------------------------------

TICKET_KEYS = ClientKeys(C2S, S2C)
ROOM_SALT = bytes(range(0x30, 0x40))
CLIENT_SALT = bytes(range(0x40, 0x50))


def test_session_keys_are_keyed_blake2b_of_label_and_both_salts() -> None:
    keys = derive_session_keys(TICKET_KEYS, ROOM_SALT, CLIENT_SALT)
    message = ROOM_SALT + CLIENT_SALT  # the room's salt first, then the client's
    assert keys.c2s == hashlib.blake2b(b"framesync c2s" + message, key=C2S, digest_size=32).digest()
    assert keys.s2c == hashlib.blake2b(b"framesync s2c" + message, key=S2C, digest_size=32).digest()
    assert len({keys.c2s, keys.s2c, C2S, S2C}) == 4


@settings(max_examples=50)
@given(
    st.binary(min_size=SESSION_SALT_SIZE, max_size=SESSION_SALT_SIZE),
    st.binary(min_size=SESSION_SALT_SIZE, max_size=SESSION_SALT_SIZE),
)
def test_another_client_salt_gives_other_keys(salt_a: bytes, salt_b: bytes) -> None:
    a = derive_session_keys(TICKET_KEYS, ROOM_SALT, salt_a)
    b = derive_session_keys(TICKET_KEYS, ROOM_SALT, salt_b)
    assert (a == b) == (salt_a == salt_b)
    if salt_a != salt_b:
        assert a.c2s != b.c2s and a.s2c != b.s2c


def test_each_salt_counts_and_in_its_own_place() -> None:
    base = derive_session_keys(TICKET_KEYS, ROOM_SALT, CLIENT_SALT)
    assert derive_session_keys(TICKET_KEYS, ROOM_SALT, CLIENT_SALT) == base  # deterministic
    others = [
        derive_session_keys(TICKET_KEYS, bytes(16), CLIENT_SALT),  # another room salt
        derive_session_keys(TICKET_KEYS, ROOM_SALT, bytes(16)),  # another client salt
        derive_session_keys(TICKET_KEYS, CLIENT_SALT, ROOM_SALT),  # the salts swapped
        derive_session_keys(ClientKeys(S2C, C2S), ROOM_SALT, CLIENT_SALT),  # other ticket keys
    ]
    for other in others:
        assert other.c2s != base.c2s and other.s2c != base.s2c


def test_a_session_of_another_client_salt_cannot_open_this_one() -> None:
    mine = derive_session_keys(TICKET_KEYS, ROOM_SALT, CLIENT_SALT)
    theirs = derive_session_keys(TICKET_KEYS, ROOM_SALT, bytes(16))
    room = SessionCipher(send_key=mine.s2c, recv_key=mine.c2s)
    accept = room.seal(PacketType.ACCEPT, b"body", salt=ROOM_SALT)
    assert reason(SessionCipher(theirs.c2s, theirs.s2c), parse(accept)) == "forged"
    assert SessionCipher(mine.c2s, mine.s2c).open_untrusted(parse(accept)) == b"body"


@pytest.mark.parametrize("size", [0, 1, SESSION_SALT_SIZE - 1, SESSION_SALT_SIZE + 1, 32])
def test_session_salts_of_the_wrong_size_are_refused(size: int) -> None:
    with pytest.raises(ValueError):
        derive_session_keys(TICKET_KEYS, bytes(size), CLIENT_SALT)
    with pytest.raises(ValueError):
        derive_session_keys(TICKET_KEYS, ROOM_SALT, bytes(size))
    # Both salts together still make 32 bytes here, but each must be 16 on its own.
    with pytest.raises(ValueError):
        derive_session_keys(TICKET_KEYS, bytes(size), bytes(32 - size))


# --- tampering -------------------------------------------------------------------------------


def test_every_bit_flip_is_forged_and_does_not_mark_the_window() -> None:
    client, server = pair()
    for _ in range(4):  # move to a sequence number with several bits set
        server.open_untrusted(parse(client.seal(PacketType.CLIENT_UPDATE, b"warm-up")))
    data = client.seal(PacketType.CLIENT_UPDATE, b"move:12,-7;cast:3")
    highest = server.replay.highest
    for bit in range(len(data) * 8):
        flipped = bytearray(data)
        flipped[bit // 8] ^= 1 << (bit % 8)
        tampered = raw_sealed(bytes(flipped))
        if not server.replay.is_fresh(tampered.seq):
            # The flip landed the sequence number on one already received.
            assert reason(server, tampered) == "replayed"
        else:
            assert reason(server, tampered) == "forged", f"bit {bit}"
        assert server.replay.highest == highest
    assert server.open_untrusted(parse(data)) == b"move:12,-7;cast:3"


def test_bit_flips_through_the_wire_decoder_never_open() -> None:
    client, server = pair()
    data = client.seal(PacketType.SERVER_UPDATE, b"\x98" + bytes(20))
    for bit in range(len(data) * 8):
        flipped = bytearray(data)
        flipped[bit // 8] ^= 1 << (bit % 8)
        with pytest.raises(BadDatagram):
            datagram = decode_datagram_untrusted(bytes(flipped))
            assert isinstance(datagram, Sealed)
            server.open_untrusted(datagram)
    assert server.open_untrusted(parse(data)) == b"\x98" + bytes(20)


def test_retyped_header_is_forged() -> None:
    client, server = pair()
    data = bytearray(client.seal(PacketType.CLIENT_UPDATE, b"body"))
    data[1] = PacketType.DISCONNECT
    sealed = parse(bytes(data))
    assert sealed.type is PacketType.DISCONNECT
    assert reason(server, sealed) == "forged"


def test_forged_future_sequence_does_not_advance_the_window() -> None:
    client, server = pair()
    genuine = [client.seal(PacketType.CLIENT_UPDATE, bytes([i])) for i in range(3)]
    forged_far = bytearray(genuine[0])
    forged_far[2:10] = (10_000).to_bytes(8, "little")
    assert reason(server, parse(bytes(forged_far))) == "forged"
    assert server.replay.highest == -1
    # Far-future forgery must not have pushed the genuine ones out of the window.
    for i, data in enumerate(genuine):
        assert server.open_untrusted(parse(data)) == bytes([i])
    assert server.replay.highest == 3


def test_forged_then_genuine_same_sequence() -> None:
    client, server = pair()
    data = client.seal(PacketType.CLIENT_UPDATE, b"payload")
    forged = bytearray(data)
    forged[-1] ^= 0x80
    assert reason(server, parse(bytes(forged))) == "forged"
    assert reason(server, parse(bytes(forged))) == "forged"  # still not marked
    assert server.open_untrusted(parse(data)) == b"payload"


def test_truncated_tag_is_forged() -> None:
    client, server = pair()
    data = client.seal(PacketType.CLIENT_UPDATE, b"")
    assert len(data) == SEALED_OVERHEAD
    assert reason(server, raw_sealed(data[:-1])) == "forged"
    assert reason(server, raw_sealed(data + b"\x00")) == "forged"
    assert server.open_untrusted(parse(data)) == b""


# --- replay ----------------------------------------------------------------------------------


def test_replay_is_rejected() -> None:
    client, server = pair()
    data = client.seal(PacketType.CLIENT_UPDATE, b"once")
    assert server.open_untrusted(parse(data)) == b"once"
    assert reason(server, parse(data)) == "replayed"
    assert reason(server, parse(data)) == "replayed"


def test_out_of_order_delivery_is_accepted_once_each() -> None:
    client, server = pair()
    sent = [client.seal(PacketType.CLIENT_UPDATE, bytes([i])) for i in range(50)]
    order = list(range(50))
    random.Random(1234).shuffle(order)
    for i in order:
        assert server.open_untrusted(parse(sent[i])) == bytes([i])
    for i in order:
        assert reason(server, parse(sent[i])) == "replayed"


def test_replay_check_happens_before_decryption() -> None:
    client, server = pair()
    data = client.seal(PacketType.CLIENT_UPDATE, b"x")
    server.open_untrusted(parse(data))
    garbage = bytearray(data)
    garbage[SEALED_HEADER_SIZE:] = bytes(len(garbage) - SEALED_HEADER_SIZE)
    assert reason(server, parse(bytes(garbage))) == "replayed"


def test_datagram_older_than_the_window_is_rejected() -> None:
    client, server = pair()
    sent = [client.seal(PacketType.CLIENT_UPDATE, b"") for _ in range(REPLAY_WINDOW + 2)]
    # Deliver all but the first two; the newest is then REPLAY_WINDOW + 2.
    for data in sent[2:]:
        server.open_untrusted(parse(data))
    assert server.replay.highest == REPLAY_WINDOW + 2
    assert reason(server, parse(sent[0])) == "replayed"  # age REPLAY_WINDOW + 1
    assert reason(server, parse(sent[1])) == "replayed"  # age REPLAY_WINDOW
    # On a receiver that has not seen it, age REPLAY_WINDOW - 1 is still inside.
    fresh_server = SessionCipher(S2C, C2S)
    for data in sent[3:]:
        fresh_server.open_untrusted(parse(data))
    assert fresh_server.open_untrusted(parse(sent[2])) == b""  # age REPLAY_WINDOW - 1


# --- ReplayWindow ----------------------------------------------------------------------------


class WindowModel:
    def __init__(self, size: int) -> None:
        self.size = size
        self.highest = -1
        self.seen: set[int] = set()

    def accept(self, seq: int) -> bool:
        if seq in self.seen:
            return False
        if seq <= self.highest and self.highest - seq >= self.size:
            return False
        self.seen.add(seq)
        self.highest = max(self.highest, seq)
        return True


def feed(window: ReplayWindow, seq: int) -> bool:
    if window.is_fresh(seq):
        window.mark(seq)
        return True
    return False


def test_default_window_is_at_least_256() -> None:
    assert REPLAY_WINDOW >= 256
    assert ReplayWindow().size == REPLAY_WINDOW
    window = ReplayWindow()
    feed(window, 1000)
    assert window.is_fresh(1000 - 255)
    assert window.is_fresh(1000 - (REPLAY_WINDOW - 1))
    assert not window.is_fresh(1000 - REPLAY_WINDOW)


def test_window_edges() -> None:
    window = ReplayWindow(8)
    assert feed(window, 0)  # zero is a valid first sequence number
    assert not feed(window, 0)
    assert feed(window, 20)
    assert not feed(window, 12)  # age 8: outside
    assert feed(window, 13)  # age 7: inside
    assert not feed(window, 13)
    assert feed(window, 21)  # sliding by one keeps 13 (now age 8) rejected as old
    assert not window.is_fresh(13)
    assert feed(window, 14)  # age 7


@settings(max_examples=200)
@given(
    st.sampled_from([1, 8, 32, 64, 256, REPLAY_WINDOW]),
    st.lists(st.integers(min_value=0, max_value=2_000), max_size=300),
)
def test_replay_window_matches_model(size: int, seqs: list[int]) -> None:
    window, model = ReplayWindow(size), WindowModel(size)
    accepted: list[int] = []
    for seq in seqs:
        ok = feed(window, seq)
        assert ok == model.accept(seq), (seq, window.highest)
        if ok:
            accepted.append(seq)
        assert window.highest == model.highest
    assert len(accepted) == len(set(accepted))


@settings(max_examples=100)
@given(st.integers(min_value=1, max_value=600), st.randoms(use_true_random=False), st.data())
def test_permutation_with_duplicates_accepts_each_once(
    count: int, rnd: random.Random, data: st.DataObject
) -> None:
    seqs = list(range(1, count + 1))
    dups = data.draw(st.lists(st.sampled_from(seqs), max_size=count))
    stream = seqs + dups
    rnd.shuffle(stream)
    window, model = ReplayWindow(), WindowModel(REPLAY_WINDOW)
    accepted = [seq for seq in stream if feed(window, seq)]
    assert accepted == [seq for seq in stream if model.accept(seq)]
    assert len(accepted) == len(set(accepted))
    # With fewer sequence numbers than the window, reordering alone loses nothing.
    if count < REPLAY_WINDOW:
        assert sorted(accepted) == seqs


@settings(max_examples=100)
@given(st.lists(st.integers(min_value=1, max_value=50_000), min_size=1, max_size=50))
def test_replay_window_with_jumps_matches_model(deltas: list[int]) -> None:
    window, model = ReplayWindow(), WindowModel(REPLAY_WINDOW)
    seq = 0
    for delta in deltas:
        seq += delta
        for probe in (seq, seq - 1, seq - REPLAY_WINDOW + 1, seq - REPLAY_WINDOW, seq):
            if probe >= 0:
                assert feed(window, probe) == model.accept(probe)


def test_large_authentic_sequence_jump_is_accepted() -> None:
    client, server = pair()
    assert server.open_untrusted(parse(client.seal(PacketType.CLIENT_UPDATE, b"a"))) == b"a"
    client.next_seq = 2**63
    jump = parse(client.seal(PacketType.CLIENT_UPDATE, b"b"))
    # A peer holding the session key may pick any sequence number; the server must not crash.
    assert server.open_untrusted(jump) == b"b"
    assert server.replay.highest == 2**63
    assert not server.replay.is_fresh(1)
    assert server.replay.is_fresh(2**63 - 1)
