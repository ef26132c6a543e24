"""docs/PROTOCOL.md golden vectors: regenerated from the code, decoded, and cross-checked.

The generator is scripts/gen_vectors.py (loaded by path: scripts/ is not a package). Beyond
byte equality, the checks here rebuild layouts with plain hashlib/struct/ChaCha20-Poly1305/
msgpack calls, so the document's prose (offsets, key derivation, nonce, associated data) is
tested too, not only the code's own round trip.
"""

from __future__ import annotations

import hashlib
import importlib.util
import re
import struct
import sys
import zlib
from pathlib import Path
from types import ModuleType

import msgpack
import pytest
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from docvectors import load_vectors
from test_prng import DOC_VECTORS as PRNG_VECTORS

from battle.client import Accepted, ClientConnection
from battle.cookie import CookieJar
from battle.errors import BadDatagram
from battle.messages import (
    decode_accept_untrusted,
    decode_catchup_untrusted,
    decode_client_update_untrusted,
    decode_disconnect_untrusted,
    decode_server_update_untrusted,
    decode_snapshot_chunk_untrusted,
    encode_frame,
)
from battle.sealing import SessionCipher, derive_session_keys
from battle.session import Session
from battle.ticket import FLAG_RECONNECT, ClientKeys, open_ticket
from battle.wire import (
    Challenge,
    ConnectRequest,
    ConnectResponse,
    Denied,
    DenyReason,
    PacketType,
    Sealed,
    decode_datagram_untrusted,
)

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "PROTOCOL.md"


def _load_generator() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "gen_vectors", ROOT / "scripts" / "gen_vectors.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


gen = _load_generator()
GENERATED: dict[str, bytes] = gen.vectors()
DOC_TOKENS = load_vectors(DOC)
_HEX_TOKEN = re.compile(r"^(?:[0-9a-f]{2})+$")


def doc_bytes(name: str) -> bytes:
    tokens = DOC_TOKENS[name]
    bad = [t for t in tokens if not _HEX_TOKEN.match(t)]
    assert not bad, f"{name}: not lowercase hex bytes: {bad[:3]}"
    return bytes.fromhex("".join(tokens))


# -- the document and the generator agree, both ways -----------------------------------------


def test_every_vector_is_known_and_every_known_vector_is_documented() -> None:
    assert set(DOC_TOKENS) == set(GENERATED) | set(PRNG_VECTORS)


def test_vectors_appear_in_generator_order() -> None:
    documented = [name for name in DOC_TOKENS if name in GENERATED]
    assert documented == list(GENERATED)


@pytest.mark.parametrize("name", list(GENERATED))
def test_doc_vector_matches_code(name: str) -> None:
    assert doc_bytes(name) == GENERATED[name]


@pytest.mark.parametrize("name", sorted(PRNG_VECTORS))
def test_prng_vector_matches_code(name: str) -> None:
    assert DOC_TOKENS[name] == PRNG_VECTORS[name]()


def test_generator_prints_parseable_blocks(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert gen.main([]) == 0
    printed = tmp_path / "printed.md"
    printed.write_text(capsys.readouterr().out, encoding="utf-8")
    parsed = load_vectors(printed)
    assert {k: bytes.fromhex("".join(v)) for k, v in parsed.items()} == GENERATED
    assert gen.main(["no.such.vector"]) == 2


# -- ticket ----------------------------------------------------------------------------------

AD_PREFIX = b"framesync-ticket-v1"


def _check_ticket(raw: bytes, expires_ms: int, nonce: bytes) -> bytes:
    assert len(raw) == 128
    assert raw[:16] == struct.pack("<QQ", expires_ms, gen.ROOM_ID)
    assert raw[16:28] == nonce
    return ChaCha20Poly1305(gen.TICKET_KEY).decrypt(nonce, raw[28:], AD_PREFIX + raw[:16])


def test_ticket_layout_and_plaintext() -> None:
    plain = doc_bytes("ticket.private_plaintext")
    assert len(plain) == 84
    assert plain[:8] == gen.MATCH_ID.to_bytes(8, "little")
    assert plain[8:16] == gen.PLAYER_ID.to_bytes(8, "little")
    assert plain[16:20] == bytes((gen.SLOT, gen.TEAM, 0, 0))
    assert plain[20:52] == gen.C2S_KEY
    assert plain[52:84] == gen.S2C_KEY
    opened = _check_ticket(doc_bytes("ticket"), 1_800_000_000_000, gen.TICKET_NONCE)
    assert opened == plain


def test_ticket_opens_with_documented_fields() -> None:
    ticket = open_ticket(
        gen.TICKET_KEY, doc_bytes("ticket"), room_id=gen.ROOM_ID, now=gen.EXPIRES_AT - 1
    )
    assert (ticket.match_id, ticket.room_id, ticket.player_id) == (
        gen.MATCH_ID,
        gen.ROOM_ID,
        gen.PLAYER_ID,
    )
    assert (ticket.slot, ticket.team, ticket.flags) == (gen.SLOT, gen.TEAM, 0)
    assert ticket.expires_at == gen.EXPIRES_AT
    assert (ticket.keys.c2s, ticket.keys.s2c) == (gen.C2S_KEY, gen.S2C_KEY)


def test_reconnect_ticket() -> None:
    raw = doc_bytes("ticket.reconnect")
    plain = _check_ticket(raw, 1_800_003_630_000, gen.RECONNECT_NONCE)
    assert plain[18:20] == b"\x01\x00"
    ticket = open_ticket(gen.TICKET_KEY, raw, room_id=gen.ROOM_ID, now=gen.EXPIRES_AT)
    assert ticket.flags == FLAG_RECONNECT
    assert (ticket.keys.c2s, ticket.keys.s2c) == (gen.RECONNECT_C2S_KEY, gen.RECONNECT_S2C_KEY)


# -- handshake -------------------------------------------------------------------------------


def test_connect_request() -> None:
    raw = doc_bytes("connect_request")
    assert len(raw) == 512
    assert raw[:2] == b"\xf1\x01"
    assert raw[2:130] == doc_bytes("ticket")
    assert raw[130:] == bytes(382)
    assert decode_datagram_untrusted(raw) == ConnectRequest(doc_bytes("ticket"))


def test_challenge_cookie() -> None:
    raw = doc_bytes("challenge")
    assert len(raw) == 22
    assert raw[:2] == b"\xf1\x02"
    cookie = raw[2:]
    assert cookie[:4] == struct.pack("<I", 100)
    assert decode_datagram_untrusted(raw) == Challenge(cookie)
    jar = CookieJar(gen.COOKIE_SECRET)
    ticket = doc_bytes("ticket")
    assert jar.check(cookie, gen.CLIENT_ADDRESS, ticket, gen.COOKIE_NOW)
    assert jar.check(cookie, gen.CLIENT_ADDRESS, ticket, gen.COOKIE_NOW + 19.9)
    assert not jar.check(cookie, gen.CLIENT_ADDRESS, ticket, gen.COOKIE_NOW + 20)
    assert not jar.check(cookie, ("127.0.0.1", 40001), ticket, gen.COOKIE_NOW)


def test_cookie_algorithm_as_documented() -> None:
    epoch = struct.pack("<I", 100)
    epoch_key = hashlib.blake2b(epoch, key=gen.COOKIE_SECRET[:64], digest_size=32).digest()
    host, port = gen.CLIENT_ADDRESS
    address = f"{host}|{port}".encode()  # UTF-8 text `host|port`, as documented
    assert address == b"127.0.0.1|40000"
    mac = hashlib.blake2b(key=epoch_key, digest_size=16)
    mac.update(epoch + struct.pack("<H", len(address)) + address + doc_bytes("ticket"))
    assert struct.pack("<H", len(address)) == b"\x0f\x00"
    assert doc_bytes("challenge")[2:] == epoch + mac.digest()


CLIENT_SALT = bytes(range(0x40, 0x50))
"""The documented client salt of the CONNECT_RESPONSE vector, written out rather than taken
from gen."""


def test_connect_response() -> None:
    raw = doc_bytes("connect_response")
    assert len(raw) == 166
    cookie, ticket = doc_bytes("challenge")[2:], doc_bytes("ticket")
    assert gen.CLIENT_SALT == CLIENT_SALT
    assert raw == b"\xf1\x03" + cookie + ticket + CLIENT_SALT
    assert raw[150:] == bytes.fromhex("404142434445464748494a4b4c4d4e4f")
    assert decode_datagram_untrusted(raw) == ConnectResponse(cookie, ticket, CLIENT_SALT)


def test_no_reply_before_the_address_is_proven_is_larger_than_the_request() -> None:
    request = doc_bytes("connect_request")
    assert len(request) == 512
    assert len(doc_bytes("challenge")) == 22 < len(request)
    assert len(doc_bytes("denied")) == 3 < len(request)


def test_denied() -> None:
    assert decode_datagram_untrusted(doc_bytes("denied")) == Denied(DenyReason.ROOM_ENDED)


# -- session keys and sealed datagrams -------------------------------------------------------

SALT = bytes(range(0x30, 0x40))
"""The documented salt of the ACCEPT vector, written out rather than taken from gen."""


def _documented_key(label: bytes, ticket_key: bytes, client_salt: bytes = CLIENT_SALT) -> bytes:
    """Keyed BLAKE2b, 32-byte output, over the 13-byte label, the room's salt and the client's
    salt (45 bytes)."""
    message = label + SALT + client_salt
    assert len(label) == 13 and len(message) == 45
    return hashlib.blake2b(message, key=ticket_key, digest_size=32).digest()


C2S_SESSION = _documented_key(b"framesync c2s", gen.C2S_KEY)
S2C_SESSION = _documented_key(b"framesync s2c", gen.S2C_KEY)


def test_session_keys_as_documented() -> None:
    assert gen.SESSION_SALT == SALT
    assert doc_bytes("session_keys.c2s") == C2S_SESSION
    assert doc_bytes("session_keys.s2c") == S2C_SESSION
    # A digest size of 32 is a BLAKE2b parameter, not a cut-down 64-byte digest.
    long = hashlib.blake2b(b"framesync c2s" + SALT + CLIENT_SALT, key=gen.C2S_KEY).digest()
    assert long[:32] != C2S_SESSION
    # The session keys are not the ticket's keys, and each direction has its own.
    assert len({C2S_SESSION, S2C_SESSION, gen.C2S_KEY, gen.S2C_KEY}) == 4
    derived = derive_session_keys(ClientKeys(gen.C2S_KEY, gen.S2C_KEY), SALT, CLIENT_SALT)
    assert (derived.c2s, derived.s2c) == (C2S_SESSION, S2C_SESSION)
    # Both salts count: the room's alone (or the salts in the other order) give other keys.
    assert _documented_key(b"framesync c2s", gen.C2S_KEY, bytes(16)) != C2S_SESSION
    swapped = hashlib.blake2b(
        b"framesync c2s" + CLIENT_SALT + SALT, key=gen.C2S_KEY, digest_size=32
    ).digest()
    assert swapped != C2S_SESSION


SEALED = {
    # name: (packet type, sequence number, session key of the sending side)
    "accept": (PacketType.ACCEPT, gen.ACCEPT_SEQ, S2C_SESSION),
    "client_update": (PacketType.CLIENT_UPDATE, gen.CLIENT_UPDATE_SEQ, C2S_SESSION),
    "server_update": (PacketType.SERVER_UPDATE, gen.SERVER_UPDATE_SEQ, S2C_SESSION),
    "catchup": (PacketType.CATCHUP, gen.CATCHUP_SEQ, S2C_SESSION),
    "snapshot": (PacketType.SNAPSHOT, gen.SNAPSHOT_SEQ, C2S_SESSION),
    "disconnect": (PacketType.DISCONNECT, gen.DISCONNECT_SEQ, S2C_SESSION),
}


def test_sealed_vectors_never_reuse_a_nonce_in_one_direction() -> None:
    used = [(key, seq) for _, seq, key in SEALED.values()]
    assert len(set(used)) == len(used)
    assert (gen.CATCHUP_SEQ, gen.SNAPSHOT_SEQ, gen.DISCONNECT_SEQ) == (3, 2, 4)


@pytest.mark.parametrize("name", list(SEALED))
def test_sealed_vector_opens_to_body_as_documented(name: str) -> None:
    ptype, seq, key = SEALED[name]
    raw = doc_bytes(f"{name}.sealed")
    body = doc_bytes(f"{name}.body")
    header = struct.pack("<BBQ", 0xF1, ptype, seq)
    if ptype == PacketType.ACCEPT:
        header += SALT  # ACCEPT: 26-byte header, the salt in the clear, all of it the AD
    assert raw[: len(header)] == header
    assert len(raw) == len(header) + len(body) + 16
    nonce = seq.to_bytes(8, "little") + bytes(4)
    assert ChaCha20Poly1305(key).decrypt(nonce, raw[len(header) :], header) == body


@pytest.mark.parametrize("name", list(SEALED))
def test_sealed_vector_does_not_open_with_the_ticket_keys(name: str) -> None:
    _, _, session_key = SEALED[name]
    ticket_key = gen.C2S_KEY if session_key == C2S_SESSION else gen.S2C_KEY
    datagram = decode_datagram_untrusted(doc_bytes(f"{name}.sealed"))
    assert isinstance(datagram, Sealed)
    receiver = SessionCipher(send_key=bytes(32), recv_key=ticket_key)
    with pytest.raises(BadDatagram, match="forged"):
        receiver.open_untrusted(datagram)


@pytest.mark.parametrize("name", list(SEALED))
def test_sealed_vector_opens_with_session_cipher(name: str) -> None:
    ptype, seq, key = SEALED[name]
    datagram = decode_datagram_untrusted(doc_bytes(f"{name}.sealed"))
    assert isinstance(datagram, Sealed)
    assert (datagram.type, datagram.seq) == (ptype, seq)
    assert datagram.salt == (SALT if ptype == PacketType.ACCEPT else b"")
    receiver = SessionCipher(send_key=bytes(32), recv_key=key)
    assert receiver.open_untrusted(datagram) == doc_bytes(f"{name}.body")


def test_room_session_seals_accept_as_documented() -> None:
    """The room's own Session (not only SessionCipher) puts the salt in ACCEPT's header."""
    session = Session(
        gen.CLIENT_ADDRESS,
        ClientKeys(gen.C2S_KEY, gen.S2C_KEY),
        gen.TICKET_NONCE,
        SALT,
        CLIENT_SALT,
        now=0.0,
    )
    sealed = session.seal(PacketType.ACCEPT, doc_bytes("accept.body"), now=0.0)
    assert sealed == doc_bytes("accept.sealed")


def _client(client_salt: bytes) -> ClientConnection:
    server = ("192.0.2.1", 9000)
    client = ClientConnection(
        doc_bytes("ticket"),
        ClientKeys(gen.C2S_KEY, gen.S2C_KEY),
        server,
        now=0.0,
        entropy=lambda n: client_salt[:n],
    )
    client.receive_datagram(doc_bytes("challenge"), server, 0.0)
    return client


def test_client_with_another_client_salt_cannot_open_the_accept() -> None:
    """An ACCEPT replayed to another connection attempt of the same ticket does not open."""
    server = ("192.0.2.1", 9000)
    client = _client(bytes(16))
    response, _ = client.datagrams_to_send()[-1]
    assert response == doc_bytes("connect_response")[:150] + bytes(16)
    client.receive_datagram(doc_bytes("accept.sealed"), server, 0.01)
    assert client.drops["forged"] == 1
    assert client.accept is None and client.next_event() is None
    assert client.datagrams_to_send() == []


def test_client_takes_keys_from_the_accept_salt_and_ignores_another_salt() -> None:
    server = ("192.0.2.1", 9000)
    client = _client(CLIENT_SALT)
    response, _ = client.datagrams_to_send()[-1]
    assert response == doc_bytes("connect_response")
    client.receive_datagram(doc_bytes("accept.sealed"), server, 0.01)
    accepted = client.next_event()
    assert isinstance(accepted, Accepted)
    assert accepted.accept == gen.accept_message()
    reply, _ = client.datagrams_to_send()[-1]
    header = struct.pack("<BBQ", 0xF1, PacketType.CLIENT_UPDATE, 1)
    assert reply[:10] == header
    nonce = (1).to_bytes(8, "little") + bytes(4)
    ChaCha20Poly1305(C2S_SESSION).decrypt(nonce, reply[10:], header)  # raises if not c2s'
    # An ACCEPT of another session of the same ticket (another room salt) is not taken.
    other_salt = bytes(16)
    keys = derive_session_keys(ClientKeys(gen.C2S_KEY, gen.S2C_KEY), other_salt, CLIENT_SALT)
    cipher = SessionCipher(send_key=keys.s2c, recv_key=keys.c2s)
    other = cipher.seal(PacketType.ACCEPT, doc_bytes("accept.body"), salt=other_salt)
    client.receive_datagram(other, server, 0.02)
    assert client.drops["stale_accept"] == 1


# -- bodies: field positions as documented ---------------------------------------------------


def _unpack(name: str) -> list[object]:
    value = msgpack.unpackb(doc_bytes(name), raw=False)
    assert isinstance(value, list)
    return value


def test_accept_body() -> None:
    assert _unpack("accept.body") == [
        gen.MATCH_ID,
        gen.ROOM_ID,
        gen.SLOT,
        gen.TEAM,
        gen.SEED,
        15,
        [[0, 1001, 0], [1, 1002, 1]],
        6,
        1,
        3,
        doc_bytes("ticket.reconnect"),
        gen.RECONNECT_C2S_KEY,
        gen.RECONNECT_S2C_KEY,
        5,
        100,
        5000,
        0,
    ]
    assert doc_bytes("accept.body")[:3] == b"\xdc\x00\x11"
    assert decode_accept_untrusted(doc_bytes("accept.body")) == gen.accept_message()


def test_client_update_body() -> None:
    assert _unpack("client_update.body") == [
        1,
        0,
        2000,
        6,
        4,
        [b"\x10\x20", b"\x01\x02"],
        [],
        None,
        False,
    ]
    assert doc_bytes("client_update.body").endswith(b"\x90\xc0\xc2")
    assert decode_client_update_untrusted(doc_bytes("client_update.body")) == gen.CLIENT_UPDATE


def test_server_update_body() -> None:
    frame7 = [0, 12, b"\x07", 1, 4, b"\x10\x20", 1, 5, b"\x01\x02"]
    fields = [3, 3, 1500, 5, 7, [frame7, []], 8, 1, 0, False, None, 0]
    assert _unpack("server_update.body") == fields
    body = doc_bytes("server_update.body")
    # the empty frame 8 is the single byte 0x90; then last_frame, state and the four reports
    assert body.endswith(b"\x90\x08\x01\x00\xc2\xc0\x00")
    assert decode_server_update_untrusted(body) == gen.SERVER_UPDATE


def test_catchup_body() -> None:
    first, count, last, payload = _unpack("catchup.body")
    assert (first, count, last) == (9, 4, 40)
    assert isinstance(payload, bytes)
    raw = b"".join(encode_frame(f) for f in gen.CATCHUP.frames)
    assert raw == bytes.fromhex("96000dc40107 0106c40130 90 90 930107c4023132".replace(" ", ""))
    assert zlib.decompress(payload) == raw
    assert payload[:2] == b"\x78\x9c"  # a zlib (RFC 1950) header: deflate, 32 KiB window
    assert payload == zlib.compress(raw, 6)
    assert doc_bytes("catchup.body")[:6] == b"\x94\x09\x04\x28\xc4" + bytes((len(payload),))
    assert decode_catchup_untrusted(doc_bytes("catchup.body")) == gen.CATCHUP


def _packb(value: object) -> bytes:
    packed = msgpack.packb(value, use_bin_type=True)
    assert isinstance(packed, bytes)
    return packed


def _catchup_payload() -> bytes:
    payload = _unpack("catchup.body")[3]
    assert isinstance(payload, bytes)
    return payload


def _catchup_with(payload: bytes) -> bytes:
    first, count, last, _ = _unpack("catchup.body")
    return _packb([first, count, last, payload])


def test_catchup_takes_any_valid_zlib_stream() -> None:
    payload = _catchup_payload()
    raw = zlib.decompress(payload)
    streams = [zlib.compress(raw, level) for level in (0, 1, 9)]  # stored; other headers
    small = zlib.compressobj(6, zlib.DEFLATED, 9, 1)  # a 512-byte window
    streams.append(small.compress(raw) + small.flush())
    split = zlib.compressobj(6)  # two deflate blocks
    streams.append(split.compress(raw[:7]) + split.flush(zlib.Z_FULL_FLUSH))
    streams[-1] += split.compress(raw[7:]) + split.flush()
    assert len({payload, *streams}) == 1 + len(streams)  # other bytes, the same frames
    for stream in streams:
        assert decode_catchup_untrusted(_catchup_with(stream)) == gen.CATCHUP


def test_catchup_rejects_bytes_after_the_zlib_stream_and_other_wrappers() -> None:
    raw = zlib.decompress(_catchup_payload())
    good = zlib.compress(raw, 6)
    raw_deflate = zlib.compressobj(6, zlib.DEFLATED, -15)
    gzip = zlib.compressobj(6, zlib.DEFLATED, 31)
    bad = [
        good + b"\x00",  # a byte after the stream
        good + good,  # a second stream
        good[:-1],  # incomplete (the Adler-32 cut short)
        raw_deflate.compress(raw) + raw_deflate.flush(),  # no zlib header
        gzip.compress(raw) + gzip.flush(),  # gzip, not zlib
    ]
    for payload in bad:
        with pytest.raises(BadDatagram, match="bad_field"):
            decode_catchup_untrusted(_catchup_with(payload))


def test_snapshot_body() -> None:
    assert _unpack("snapshot.body") == [
        30,
        0x8877665544332211,
        1030,
        1024,
        bytes(range(0xA0, 0xA6)),
    ]
    assert doc_bytes("snapshot.body")[:2] == b"\x95\x1e"
    assert decode_snapshot_chunk_untrusted(doc_bytes("snapshot.body")) == gen.SNAPSHOT


def test_disconnect_body() -> None:
    assert _unpack("disconnect.body") == [2]
    assert decode_disconnect_untrusted(doc_bytes("disconnect.body")) == gen.DISCONNECT


def test_bodies_with_extra_trailing_fields_still_decode() -> None:
    def extended(name: str) -> bytes:
        return _packb([*_unpack(name), "future", 99])

    assert decode_accept_untrusted(extended("accept.body")) == gen.accept_message()
    assert decode_client_update_untrusted(extended("client_update.body")) == gen.CLIENT_UPDATE
    assert decode_server_update_untrusted(extended("server_update.body")) == gen.SERVER_UPDATE
    assert decode_catchup_untrusted(extended("catchup.body")) == gen.CATCHUP
    assert decode_snapshot_chunk_untrusted(extended("snapshot.body")) == gen.SNAPSHOT
    assert decode_disconnect_untrusted(extended("disconnect.body")) == gen.DISCONNECT


def test_bodies_without_the_optional_trailing_fields_still_decode() -> None:
    """Only the first 16 / 6 / 8 fields are required; the later ones default as documented."""

    def cut(name: str, count: int) -> bytes:
        return _packb(_unpack(name)[:count])

    assert decode_accept_untrusted(cut("accept.body", 16)) == gen.accept_message()
    assert decode_client_update_untrusted(cut("client_update.body", 6)) == gen.CLIENT_UPDATE
    assert decode_server_update_untrusted(cut("server_update.body", 8)) == gen.SERVER_UPDATE
    with pytest.raises(BadDatagram, match="bad_body"):
        decode_accept_untrusted(cut("accept.body", 15))
