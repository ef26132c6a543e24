"""Golden test vectors for docs/PROTOCOL.md, generated from the battle code.

Prints every vector as a Markdown block in the format tests/docvectors.py parses; give
vector names as arguments to print only those. The inputs are the constants below and are
documented beside each vector in PROTOCOL.md; tests/test_protocol_vectors.py regenerates
every vector through `vectors()` and fails if the document and the code disagree.

    python scripts/gen_vectors.py [NAME ...]
"""

from __future__ import annotations

import struct
import sys

from battle.config import RosterEntry
from battle.cookie import CookieJar
from battle.frames import Frame, FrameInput
from battle.messages import (
    Accept,
    Catchup,
    ClientUpdate,
    Disconnect,
    DisconnectReason,
    RoomState,
    ServerUpdate,
    SnapshotChunk,
    encode_accept,
    encode_catchup,
    encode_client_update,
    encode_disconnect,
    encode_server_update,
    encode_snapshot_chunk,
)
from battle.sealing import SessionCipher, derive_session_keys
from battle.ticket import FLAG_RECONNECT, ClientKeys, issue_ticket
from battle.wire import (
    DenyReason,
    PacketType,
    encode_challenge,
    encode_connect_request,
    encode_connect_response,
    encode_denied,
)

# -- inputs (each is documented beside its vector in docs/PROTOCOL.md) ---------------------

TICKET_KEY = bytes(range(32))
"""Key shared by lobby and room hosts: 00 01 02 .. 1f."""
TICKET_NONCE = bytes(range(12))
C2S_KEY = bytes([0x11] * 32)
S2C_KEY = bytes([0x22] * 32)
MATCH_ID = 0x0123456789ABCDEF
ROOM_ID = 7
PLAYER_ID = 1002
SLOT = 1
TEAM = 1
EXPIRES_AT = 1_800_000_000.0
"""Unix seconds; 1800000000000 ms on the wire."""
TICKET_FLAGS = 0

RECONNECT_NONCE = bytes(range(12, 24))
RECONNECT_C2S_KEY = bytes([0x33] * 32)
RECONNECT_S2C_KEY = bytes([0x44] * 32)
RECONNECT_EXPIRES_AT = 1_800_003_630.0

COOKIE_SECRET = bytes(range(0x40, 0x60))
CLIENT_ADDRESS = ("127.0.0.1", 40000)
COOKIE_NOW = 1000.0

SESSION_SALT = bytes(range(0x30, 0x40))
"""The room's session salt in the ACCEPT vector: 30 31 .. 3f (the room draws it at random)."""
CLIENT_SALT = bytes(range(0x40, 0x50))
"""The client's salt in the CONNECT_RESPONSE vector: 40 41 .. 4f (the client draws it at
random, once per connection attempt)."""

SEED = 0xDEADBEEFCAFEF00D
ROSTER = (RosterEntry(0, 1001, 0), RosterEntry(1, PLAYER_ID, TEAM))

# Sequence numbers within the one session that the ACCEPT vector opens.
ACCEPT_SEQ = 1
CLIENT_UPDATE_SEQ = 1
SERVER_UPDATE_SEQ = 2
CATCHUP_SEQ = 3
SNAPSHOT_SEQ = 2
"""The SNAPSHOT vector is an upload: the client's second sealed datagram."""
DISCONNECT_SEQ = 4

PRIVATE_LAYOUT = struct.Struct("<QQBBH32s32s")
"""match_id, player_id, slot, team, flags, c2s key, s2c key (84 bytes)."""


def private_plaintext() -> bytes:
    return PRIVATE_LAYOUT.pack(MATCH_ID, PLAYER_ID, SLOT, TEAM, TICKET_FLAGS, C2S_KEY, S2C_KEY)


def ticket() -> bytes:
    raw, _ = issue_ticket(
        TICKET_KEY,
        MATCH_ID,
        ROOM_ID,
        PLAYER_ID,
        SLOT,
        EXPIRES_AT,
        team=TEAM,
        flags=TICKET_FLAGS,
        nonce=TICKET_NONCE,
        keys=ClientKeys(C2S_KEY, S2C_KEY),
    )
    return raw


def reconnect_ticket() -> bytes:
    raw, _ = issue_ticket(
        TICKET_KEY,
        MATCH_ID,
        ROOM_ID,
        PLAYER_ID,
        SLOT,
        RECONNECT_EXPIRES_AT,
        team=TEAM,
        flags=FLAG_RECONNECT,
        nonce=RECONNECT_NONCE,
        keys=ClientKeys(RECONNECT_C2S_KEY, RECONNECT_S2C_KEY),
    )
    return raw


def cookie() -> bytes:
    return CookieJar(COOKIE_SECRET).issue(CLIENT_ADDRESS, ticket(), COOKIE_NOW)


def accept_message() -> Accept:
    return Accept(
        match_id=MATCH_ID,
        room_id=ROOM_ID,
        slot=SLOT,
        team=TEAM,
        seed=SEED,
        tick_rate=15,
        roster=ROSTER,
        frame=6,
        state=RoomState.RUNNING,
        input_ack=3,
        reconnect_ticket=reconnect_ticket(),
        reconnect_keys=ClientKeys(RECONNECT_C2S_KEY, RECONNECT_S2C_KEY),
        redundancy_frames=5,
        heartbeat_ms=100,
        timeout_ms=5000,
    )


CLIENT_UPDATE = ClientUpdate(
    ack=1,
    ack_bits=0,
    ack_delay_us=2000,
    frame_ack=6,
    input_first=4,
    inputs=(b"\x10\x20", b"\x01\x02"),
)

SERVER_UPDATE = ServerUpdate(
    ack=3,
    ack_bits=0b11,
    ack_delay_us=1500,
    input_ack=5,
    first_frame=7,
    frames=(
        Frame(
            7,
            (
                FrameInput(0, 12, b"\x07"),
                FrameInput(1, 4, b"\x10\x20"),
                FrameInput(1, 5, b"\x01\x02"),
            ),
        ),
        Frame(8, ()),
    ),
    last_frame=8,
    state=RoomState.RUNNING,
)

CATCHUP = Catchup(
    first_frame=9,
    frames=(
        Frame(9, (FrameInput(0, 13, b"\x07"), FrameInput(1, 6, b"\x30"))),
        Frame(10, ()),
        Frame(11, ()),
        Frame(12, (FrameInput(1, 7, b"\x31\x32"),)),
    ),
    last_frame=40,
)
"""Payload: zlib level 6 (RFC 1950) of the four frames' encodings, one after the other."""

SNAPSHOT = SnapshotChunk(
    frame=30,
    hash=0x8877665544332211,
    total_size=1030,
    offset=1024,
    data=bytes(range(0xA0, 0xA6)),
)
"""The last piece of a 1030-byte snapshot of the state after frame 30."""

DISCONNECT = Disconnect(DisconnectReason.ROOM_ENDED)


def session_keys() -> ClientKeys:
    """The keys of the session that ACCEPT opens: derived from the ticket's keys, the room's
    salt and the client's salt."""
    return derive_session_keys(ClientKeys(C2S_KEY, S2C_KEY), SESSION_SALT, CLIENT_SALT)


def seal(send_key: bytes, ptype: PacketType, seq: int, body: bytes) -> bytes:
    """Seal `body` as the `seq`-th datagram of its direction; ACCEPT carries the salt."""
    cipher = SessionCipher(send_key=send_key, recv_key=bytes(32))
    cipher.next_seq = seq
    salt = SESSION_SALT if ptype is PacketType.ACCEPT else b""
    return cipher.seal(ptype, body, salt=salt)


def vectors() -> dict[str, bytes]:
    """Every protocol vector, by name, in document order."""
    tk = ticket()
    accept = encode_accept(accept_message())
    client_update = encode_client_update(CLIENT_UPDATE)
    server_update = encode_server_update(SERVER_UPDATE)
    catchup = encode_catchup(CATCHUP)
    snapshot = encode_snapshot_chunk(SNAPSHOT)
    disconnect = encode_disconnect(DISCONNECT)
    keys = session_keys()
    return {
        "ticket.private_plaintext": private_plaintext(),
        "ticket": tk,
        "ticket.reconnect": reconnect_ticket(),
        "connect_request": encode_connect_request(tk),
        "challenge": encode_challenge(cookie()),
        "connect_response": encode_connect_response(cookie(), tk, CLIENT_SALT),
        "denied": encode_denied(DenyReason.ROOM_ENDED),
        "session_keys.c2s": keys.c2s,
        "session_keys.s2c": keys.s2c,
        "accept.body": accept,
        "accept.sealed": seal(keys.s2c, PacketType.ACCEPT, ACCEPT_SEQ, accept),
        "client_update.body": client_update,
        "client_update.sealed": seal(
            keys.c2s, PacketType.CLIENT_UPDATE, CLIENT_UPDATE_SEQ, client_update
        ),
        "server_update.body": server_update,
        "server_update.sealed": seal(
            keys.s2c, PacketType.SERVER_UPDATE, SERVER_UPDATE_SEQ, server_update
        ),
        "catchup.body": catchup,
        "catchup.sealed": seal(keys.s2c, PacketType.CATCHUP, CATCHUP_SEQ, catchup),
        "snapshot.body": snapshot,
        "snapshot.sealed": seal(keys.c2s, PacketType.SNAPSHOT, SNAPSHOT_SEQ, snapshot),
        "disconnect.body": disconnect,
        "disconnect.sealed": seal(keys.s2c, PacketType.DISCONNECT, DISCONNECT_SEQ, disconnect),
    }


def hex_lines(data: bytes, per_line: int = 16) -> list[str]:
    return [data[i : i + per_line].hex(" ") for i in range(0, len(data), per_line)]


def markdown_block(name: str, data: bytes) -> str:
    lines = [f"<!-- vector: {name} -->", "```", *hex_lines(data), "```"]
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    table = vectors()
    unknown = [name for name in argv if name not in table]
    if unknown:
        print(f"unknown vector(s): {', '.join(unknown)}", file=sys.stderr)
        return 2
    for name in argv or list(table):
        print(f"{markdown_block(name, table[name])}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
