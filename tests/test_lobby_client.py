"""LobbyClient (sim/lobbyclient.py) against a small scripted lobby over in-memory streams.

The fake server speaks the real codec (lobby/protocol.py, Role.SERVER), so every byte the
client sends is checked as the lobby would check it, and every answer is a real frame.
"""

from __future__ import annotations

import datetime
import ipaddress
import ssl
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import msgpack
import pytest
import trio
import trio.testing
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from lobby.protocol import (
    PROTOCOL_VERSION,
    Accept,
    ClientMessage,
    Error,
    ErrorCode,
    GetHistory,
    GetRating,
    Heartbeat,
    HeartbeatAck,
    Hello,
    History,
    HistoryEntry,
    Kicked,
    LobbyDecoder,
    LoggedIn,
    Login,
    Logout,
    MatchAborted,
    MatchCancelled,
    MatchEnded,
    MatchProposed,
    MatchReady,
    Queue,
    Queued,
    Rating,
    Role,
    ServerMessage,
    Welcome,
    encode_message,
)
from sim.lobbyclient import (
    LobbyClient,
    LobbyClosed,
    LobbyError,
    open_lobby_client,
    open_lobby_client_on_stream,
)

DOC = Path(__file__).resolve().parents[1] / "docs" / "PROTOCOL.md"
QUIET = 3600.0
"""A heartbeat interval long enough that no heartbeat shows up in a test that is not about them."""
TOKEN = b"\x01" * 40
READY = MatchReady(5, "127.0.0.1", 7100, b"\x07" * 128, b"\x11" * 32, b"\x22" * 32, 1, 0, 15)


class FakeLobby:
    """The server end of one connection: decodes client frames, sends server frames."""

    def __init__(self, stream: trio.abc.Stream) -> None:
        self.stream = stream
        self.decoder = LobbyDecoder(Role.SERVER)

    async def receive(self) -> ClientMessage:
        while True:
            msg = self.decoder.next_message()
            if msg is not None:
                assert not isinstance(msg, ServerMessage)
                return msg
            data = await self.stream.receive_some(65536)
            assert data, "the client closed the connection"
            self.decoder.feed(bytes(data))

    async def request(self) -> ClientMessage:
        """The next client message that is not a background heartbeat."""
        while isinstance(msg := await self.receive(), Heartbeat) and msg.rid is None:
            pass
        return msg

    async def send(self, *msgs: ServerMessage) -> None:
        await self.stream.send_all(b"".join(encode_message(m) for m in msgs))

    async def send_bytewise(self, msg: ServerMessage) -> None:
        """One byte per write, each read by the client before the next is written."""
        for byte in encode_message(msg):
            await self.stream.send_all(bytes([byte]))
            await trio.testing.wait_all_tasks_blocked()

    async def send_raw(self, body: dict[str, object]) -> None:
        packed: bytes = msgpack.packb(body, use_bin_type=True)
        await self.stream.send_all(len(packed).to_bytes(4, "big") + packed)

    async def until_eof(self) -> None:
        """Read until the client closes its end; what it sent meanwhile stays decodable."""
        with trio.fail_after(5):
            while data := await self.stream.receive_some(65536):
                self.decoder.feed(bytes(data))


class Recording(trio.abc.Stream):
    """A stream that remembers the size of every read, to prove how frames were split."""

    def __init__(self, inner: trio.abc.Stream) -> None:
        self.inner = inner
        self.reads: list[int] = []

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        await self.inner.send_all(data)

    async def wait_send_all_might_not_block(self) -> None:
        await self.inner.wait_send_all_might_not_block()

    async def receive_some(self, max_bytes: int | None = None) -> bytes | bytearray:
        data = await self.inner.receive_some(max_bytes)
        self.reads.append(len(data))
        return data

    async def aclose(self) -> None:
        await self.inner.aclose()


def welcome(heartbeat: float = QUIET) -> Welcome:
    return Welcome(PROTOCOL_VERSION, "fake-lobby", heartbeat, heartbeat * 3)


@asynccontextmanager
async def session(heartbeat: float = QUIET) -> AsyncIterator[tuple[LobbyClient, FakeLobby]]:
    """A started client and the fake lobby's end; the welcome is written before the hello."""
    client_stream, server_stream = trio.testing.memory_stream_pair()
    lobby = FakeLobby(server_stream)
    await lobby.send(welcome(heartbeat))
    async with open_lobby_client_on_stream(client_stream) as client:
        assert isinstance(await lobby.receive(), Hello)
        yield client, lobby


async def test_hello_and_welcome() -> None:
    client_stream, server_stream = trio.testing.memory_stream_pair()
    lobby = FakeLobby(server_stream)
    seen: list[ClientMessage] = []

    async def serve() -> None:
        hello = await lobby.receive()
        seen.append(hello)
        assert isinstance(hello, Hello)
        await lobby.send(Welcome(PROTOCOL_VERSION, "fake-lobby", 5.0, 30.0, hello.rid))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(serve)
        async with open_lobby_client_on_stream(
            client_stream, client_name="bot", client_version="9.9"
        ) as client:
            assert client.welcome == Welcome(PROTOCOL_VERSION, "fake-lobby", 5.0, 30.0, 1)
            assert not client.closed.is_set()
    hello = seen[0]
    assert isinstance(hello, Hello)
    assert (hello.version, hello.client_name, hello.client_version) == (1, "bot", "9.9")
    assert hello.rid is not None
    assert client.closed.is_set()
    await lobby.until_eof()


async def test_hello_refused_raises_the_servers_error_unwrapped() -> None:
    client_stream, server_stream = trio.testing.memory_stream_pair()
    lobby = FakeLobby(server_stream)
    await lobby.send(Error(ErrorCode.UNSUPPORTED_VERSION, "server speaks 2", "hello"))
    with pytest.raises(LobbyError) as info:
        async with open_lobby_client_on_stream(client_stream):
            raise AssertionError("the block must not run")
    assert info.value.code is ErrorCode.UNSUPPORTED_VERSION
    assert info.value.request_type == "hello"
    assert isinstance(await lobby.receive(), Hello)
    await lobby.until_eof()


async def test_server_closing_before_welcome_is_lobby_closed() -> None:
    client_stream, server_stream = trio.testing.memory_stream_pair()
    await server_stream.aclose()
    with pytest.raises(LobbyClosed):
        async with open_lobby_client_on_stream(client_stream):
            pass


async def test_exceptions_from_the_block_are_not_wrapped() -> None:
    with pytest.raises(KeyError):
        async with session():
            raise KeyError("mine")


async def test_request_answered_by_rid() -> None:
    async with session() as (client, lobby):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(lobby_answers_login, lobby)
            me = await client.login("ada", "hunter22")
        assert me == LoggedIn(7, "ada", TOKEN, 1e9, me.rid)
        assert client.logged_in == me


async def lobby_answers_login(lobby: FakeLobby) -> None:
    login = await lobby.request()
    assert isinstance(login, Login)
    assert (login.name, login.password) == ("ada", "hunter22")
    await lobby.send(LoggedIn(7, "ada", TOKEN, 1e9, login.rid))


async def test_concurrent_requests_matched_by_rid_not_order() -> None:
    history = History((HistoryEntry(5, "1v1", "win", 1.7e9, 0.0, 1.5),))
    answers: dict[str, object] = {}
    async with session() as (client, lobby):

        async def ask_rating() -> None:
            answers["rating"] = await client.get_rating()

        async def ask_history() -> None:
            answers["history"] = await client.get_history(limit=5)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(ask_rating)
            first = await lobby.request()
            nursery.start_soon(ask_history)
            second = await lobby.request()
            assert isinstance(first, GetRating)
            assert isinstance(second, GetHistory)
            assert second.limit == 5
            assert first.rid != second.rid
            # Answered in reverse order, with a push in between that carries no rid.
            await lobby.send(
                History(history.entries, second.rid),
                MatchAborted(9, "host lost"),
                Rating(25.0, 8.3, 0.1, 3, first.rid),
            )
        assert answers["rating"] == Rating(25.0, 8.3, 0.1, 3, first.rid)
        assert answers["history"] == History(history.entries, second.rid)
        assert await client.next_push(timeout=1) == MatchAborted(9, "host lost")


async def test_error_answer_raises_lobby_error_with_its_code() -> None:
    async with session() as (client, lobby):

        async def refuse() -> None:
            queue = await lobby.request()
            assert isinstance(queue, Queue)
            assert (queue.mode, queue.region, queue.party) == ("1v1", "mars", (7, 8))
            await lobby.send(Error(ErrorCode.UNKNOWN_REGION, "regions: eu", "queue", queue.rid))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(refuse)
            with pytest.raises(LobbyError) as info:
                await client.queue("1v1", "mars", party=[7, 8])
        assert info.value.code is ErrorCode.UNKNOWN_REGION
        assert info.value.message == "regions: eu"
        assert info.value.request_type == "queue"
        assert not isinstance(info.value, LobbyClosed)
        assert not client.closed.is_set()


async def test_invalid_request_raises_before_sending() -> None:
    async with session() as (client, lobby):
        with pytest.raises(ValueError, match="limit"):
            await client.get_history(limit=0)
        await client.aclose()
        await lobby.until_eof()  # nothing was sent before the close


async def test_pushes_are_delivered_in_order() -> None:
    pushes: list[ServerMessage] = [
        Queued(3, "3v3", "eu", 12.0),  # a party member queued us: no rid
        MatchProposed(4, "3v3", ((1, 2, 3), (4, 5, 6)), 1.7e9),
        Error(ErrorCode.TOO_FAST, "over 20 messages/s; slow down"),
        MatchCancelled(4, "a player declined", True),
        MatchProposed(6, "3v3", ((1, 2, 3), (4, 5, 6)), 1.7e9),
        READY,
        MatchEnded(5, "win", 1.0, 2.5),
    ]
    async with session() as (client, lobby):
        await lobby.send(pushes[0], HeartbeatAck(77), *pushes[1:])  # rid-less acks are dropped
        got = [await client.next_push(timeout=1) for _ in pushes]
        assert got == pushes
        with pytest.raises(trio.TooSlowError):
            await client.next_push(timeout=0.01)


async def test_wait_for_skips_other_pushes() -> None:
    async with session() as (client, lobby):
        await lobby.send(
            MatchProposed(1, "1v1", ((1,), (2,)), 1.7e9),
            MatchCancelled(1, "timeout", True),
            MatchProposed(2, "1v1", ((1,), (2,)), 1.7e9),
            READY,
            MatchEnded(5, "loss", 2.0, 1.0),
        )
        proposal = await client.wait_for(MatchProposed, lambda p: p.proposal_id == 2, timeout=1)
        assert proposal.proposal_id == 2
        assert await client.wait_for(MatchReady, timeout=1) == READY
        assert await client.next_push(timeout=1) == MatchEnded(5, "loss", 2.0, 1.0)
        with pytest.raises(trio.TooSlowError):
            await client.wait_for(MatchReady, timeout=0.01)


async def test_pushes_iterator_ends_when_the_server_closes() -> None:
    async with session() as (client, lobby):

        async def ask() -> None:
            with pytest.raises(LobbyClosed):
                await client.get_rating()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(ask)
            assert isinstance(await lobby.request(), GetRating)
            await lobby.send(Queued(1, "1v1", "eu", 0.0), READY)
            await lobby.stream.aclose()
        assert [p async for p in client.pushes()] == [Queued(1, "1v1", "eu", 0.0), READY]
        assert client.closed.is_set()
        assert client.kicked_reason is None
        assert client.close_reason == "the server closed the connection"


async def test_kicked_fails_pending_requests_with_lobby_closed() -> None:
    async with session() as (client, lobby):
        failures: list[LobbyClosed] = []

        async def ask() -> None:
            with pytest.raises(LobbyClosed) as info:
                await client.get_rating()
            failures.append(info.value)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(ask)
            nursery.start_soon(ask)
            assert isinstance(await lobby.request(), GetRating)
            assert isinstance(await lobby.request(), GetRating)
            await lobby.send(Kicked("logged in from another connection"))
            await client.closed.wait()
        assert len(failures) == 2
        assert "another connection" in failures[0].message
        assert client.kicked_reason == "logged in from another connection"
        assert await client.next_push() == Kicked("logged in from another connection")
        with pytest.raises(LobbyClosed):
            await client.next_push()
        with pytest.raises(LobbyClosed):
            await client.get_rating()
        with pytest.raises(LobbyClosed):
            await client.accept(1)
        await lobby.until_eof()


async def test_logout_ends_the_session() -> None:
    async with session() as (client, lobby):

        async def serve() -> None:
            logout = await lobby.request()
            assert isinstance(logout, Logout)
            await lobby.send(Kicked("logged out"))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(serve)
            await client.logout()
        assert client.closed.is_set()
        assert client.kicked_reason == "logged out"


async def test_heartbeats_at_the_welcome_interval(autojump_clock: trio.testing.MockClock) -> None:
    async with session(heartbeat=5.0) as (client, lobby):
        start = trio.current_time()
        beats: list[tuple[float, Heartbeat]] = []
        while len(beats) < 4:
            msg = await lobby.receive()
            assert isinstance(msg, Heartbeat)
            beats.append((trio.current_time() - start, msg))
        assert [t for t, _ in beats] == pytest.approx([5.0, 10.0, 15.0, 20.0])
        assert all(b.rid is None for _, b in beats)
        assert len({b.nonce for _, b in beats}) == 4
        # A heartbeat() round trip is a request like any other, matched by rid.
        async with trio.open_nursery() as nursery:

            async def ack() -> None:
                beat = await lobby.request()
                assert isinstance(beat, Heartbeat)
                assert beat.rid is not None
                await lobby.send(HeartbeatAck(beat.nonce, beat.rid))

            nursery.start_soon(ack)
            answer = await client.heartbeat()
        assert isinstance(answer, HeartbeatAck)


async def test_frames_split_at_every_byte() -> None:
    client_end, server_end = trio.testing.memory_stream_pair()
    recording = Recording(client_end)
    lobby = FakeLobby(server_end)
    frames: list[ServerMessage] = [welcome(), LoggedIn(7, "ada", TOKEN, 1e9), READY]
    async with trio.open_nursery() as nursery:

        async def serve() -> None:
            hello = await lobby.receive()
            assert isinstance(hello, Hello)
            for frame in frames[:1]:
                await lobby.send_bytewise(frame)
            login = await lobby.request()
            assert login.rid is not None
            frames[1] = LoggedIn(7, "ada", TOKEN, 1e9, login.rid)
            for frame in frames[1:]:
                await lobby.send_bytewise(frame)

        nursery.start_soon(serve)
        async with open_lobby_client_on_stream(recording) as client:
            assert client.welcome is not None
            assert client.welcome.server_name == "fake-lobby"
            me = await client.login("ada", "hunter22")
            assert me.player_id == 7
            assert await client.next_push(timeout=1) == READY
    total = sum(len(encode_message(f)) for f in frames)
    assert recording.reads[:total] == [1] * total


async def test_accept_is_send_only_and_its_error_is_a_push() -> None:
    async with session() as (client, lobby):
        rid = await client.accept(41)
        accept = await lobby.request()
        assert accept == Accept(41, rid)
        await lobby.send(Error(ErrorCode.UNKNOWN_PROPOSAL, "expired", "accept", rid))
        assert await client.next_push(timeout=1) == Error(
            ErrorCode.UNKNOWN_PROPOSAL, "expired", "accept", rid
        )


async def test_an_answer_nobody_waits_for_becomes_a_push() -> None:
    async with session() as (client, lobby):
        with trio.move_on_after(0.01):
            await client.queue("1v1", "eu")
        queue = await lobby.request()
        await lobby.send(Queued(2, "1v1", "eu", 3.0, queue.rid))
        assert await client.next_push(timeout=1) == Queued(2, "1v1", "eu", 3.0, queue.rid)


async def test_a_bad_answer_fails_its_request_and_the_connection_survives() -> None:
    async with session() as (client, lobby):

        async def serve() -> None:
            first = await lobby.request()
            await lobby.send_raw({"t": "rating", "rid": first.rid, "mu": "high"})
            second = await lobby.request()
            await lobby.send(Rating(1.0, 2.0, 3.0, 4, second.rid))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(serve)
            with pytest.raises(LobbyError) as info:
                await client.get_rating()
            assert info.value.code is ErrorCode.BAD_FIELD
            assert (await client.get_rating()).matches == 4
        assert client.bad_messages == 1
        assert not client.closed.is_set()


async def test_broken_framing_closes_the_connection() -> None:
    async with session() as (client, lobby):

        async def ask() -> None:
            with pytest.raises(LobbyClosed, match="framing"):
                await client.get_rating()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(ask)
            await lobby.request()
            await lobby.stream.send_all(b"\x00\x00\x00\x00")
        assert client.closed.is_set()
        await lobby.until_eof()


async def test_aclose_flushes_sends_then_closes() -> None:
    async with session() as (client, lobby):
        await client.accept(3)
        await client.aclose()
        await client.aclose()  # idempotent
        assert client.closed.is_set()
        await lobby.until_eof()
        assert isinstance(await lobby.receive(), Accept)
        with pytest.raises(LobbyClosed):
            await client.get_rating()


async def test_a_client_that_was_never_started_closes_its_stream() -> None:
    client_end, server_end = trio.testing.memory_stream_pair()
    client = LobbyClient(client_end)
    with pytest.raises(RuntimeError):
        await client.get_rating()
    await client.aclose()
    await FakeLobby(server_end).until_eof()


# --- real sockets ------------------------------------------------------------------------------


async def serve_one(listener: trio.SocketListener, wrap: ssl.SSLContext | None) -> None:
    """Accept one connection and play a lobby that welcomes and answers one login."""
    tcp = await listener.accept()
    stream: trio.abc.Stream = tcp if wrap is None else trio.SSLStream(tcp, wrap, server_side=True)
    lobby = FakeLobby(stream)
    hello = await lobby.receive()
    await lobby.send(Welcome(PROTOCOL_VERSION, "tcp-lobby", QUIET, QUIET * 3, hello.rid))
    await lobby_answers_login(lobby)
    await lobby.until_eof()
    await stream.aclose()


async def login_over(host: str, port: int, context: ssl.SSLContext | None) -> LoggedIn:
    async with open_lobby_client(host, port, ssl_context=context) as client:
        assert client.welcome is not None
        assert client.welcome.server_name == "tcp-lobby"
        return await client.login("ada", "hunter22")


async def test_open_lobby_client_over_tcp() -> None:
    listener = (await trio.open_tcp_listeners(0, host="127.0.0.1"))[0]
    port = listener.socket.getsockname()[1]
    async with listener, trio.open_nursery() as nursery:
        nursery.start_soon(serve_one, listener, None)
        me = await login_over("127.0.0.1", port, None)
    assert me.player_id == 7


def self_signed(tmp_path: Path) -> tuple[ssl.SSLContext, ssl.SSLContext]:
    """A server context for 127.0.0.1 and a client context that trusts only it."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "framesync test")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_pem = cert.public_bytes(serialization.Encoding.PEM)
    (tmp_path / "cert.pem").write_bytes(cert_pem)
    (tmp_path / "key.pem").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server.load_cert_chain(tmp_path / "cert.pem", tmp_path / "key.pem")
    client = ssl.create_default_context(cadata=cert_pem.decode())
    return server, client


async def test_open_lobby_client_over_tls(tmp_path: Path) -> None:
    server_context, client_context = self_signed(tmp_path)
    listener = (await trio.open_tcp_listeners(0, host="127.0.0.1"))[0]
    port = listener.socket.getsockname()[1]
    async with listener, trio.open_nursery() as nursery:
        nursery.start_soon(serve_one, listener, server_context)
        me = await login_over("127.0.0.1", port, client_context)
    assert me.name == "ada"


# --- the documented example frames ---------------------------------------------------------------

DOC_FRAMES: list[tuple[ClientMessage | ServerMessage, str]] = [
    (
        Hello(1, "demo", "1.0", rid=1),
        "00 00 00 28 85 a1 74 a5 68 65 6c 6c 6f a3 76 65 72 01 a6 63 6c 69 65 6e 74 a4 64 65 6d"
        " 6f a4 63 76 65 72 a3 31 2e 30 a3 72 69 64 01",
    ),
    (
        Welcome(1, "framesync", 5.0, 30.0, rid=1),
        "00 00 00 40 86 a1 74 a7 77 65 6c 63 6f 6d 65 a3 76 65 72 01 a6 73 65 72 76 65 72 a9 66"
        " 72 61 6d 65 73 79 6e 63 a2 68 62 cb 40 14 00 00 00 00 00 00 a4 69 64 6c 65 cb 40 3e 00"
        " 00 00 00 00 00 a3 72 69 64 01",
    ),
    (
        Queue("3v3", "eu", (1001, 1002), rid=7),
        "00 00 00 2e 85 a1 74 a5 71 75 65 75 65 a4 6d 6f 64 65 a3 33 76 33 a6 72 65 67 69 6f 6e"
        " a2 65 75 a5 70 61 72 74 79 92 cd 03 e9 cd 03 ea a3 72 69 64 07",
    ),
]


@pytest.mark.parametrize(("msg", "hex_frame"), DOC_FRAMES)
def test_documented_example_frames(msg: ClientMessage | ServerMessage, hex_frame: str) -> None:
    """The example frames in docs/PROTOCOL.md, "Lobby client protocol"."""
    data = bytes.fromhex(hex_frame)
    assert encode_message(msg) == data
    decoder = LobbyDecoder(Role.CLIENT if isinstance(msg, ServerMessage) else Role.SERVER)
    decoder.feed(data)
    assert decoder.next_message() == msg
    assert " ".join(hex_frame.split()) in " ".join(DOC.read_text(encoding="utf-8").split())
