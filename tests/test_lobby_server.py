"""The lobby's trio shell: connections, timeouts, limits and TLS.

Protocol and timing behaviour runs over in-memory streams on the autojump clock; one test
proves the real listeners (TCP and TLS) work on loopback.
"""

from __future__ import annotations

import datetime
import ssl
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
import trio
import trio.testing
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from hostkit import free_tcp_port

from battle import control
from battle.config import RosterEntry
from lobby import protocol as proto
from lobby.server import LobbyServer
from lobby.settings import ListenSettings, LobbySettings
from lobby.sqlitestore import LocalStore, SqliteStore
from lobby.store import Account, MatchRecord

SECRET = b"s" * 32
BASE = 1_800_000_000.0


def _fast_hash(password: str) -> str:
    from lobby.accounts import hash_password  # noqa: PLC0415

    return hash_password(password, n=2**4)


class RawClient:
    """A bare protocol client: encode, write, read and decode, nothing more."""

    def __init__(self, stream: trio.abc.Stream) -> None:
        self.stream = stream
        self.decoder = proto.LobbyDecoder(proto.Role.CLIENT)
        self.pending: list[proto.Message] = []

    async def send(self, msg: proto.Message) -> None:
        await self.stream.send_all(proto.encode_message(msg))

    async def send_raw(self, data: bytes) -> None:
        await self.stream.send_all(data)

    async def recv(self) -> proto.Message | None:
        """The next message, or None once the server closed the connection."""
        while not self.pending:
            msg = self.decoder.next_message()
            if msg is not None:
                return msg
            try:
                data = await self.stream.receive_some(65536)
            except trio.BrokenResourceError:
                return None
            if not data:
                return None
            self.decoder.feed(data)
        return self.pending.pop(0)

    async def expect(self, kind: type[proto.Message]) -> proto.Message:
        msg = await self.recv()
        assert isinstance(msg, kind), msg
        return msg

    async def closed(self) -> list[proto.Message]:
        """Everything until the server closes; fails the test if it never does."""
        seen: list[proto.Message] = []
        with trio.fail_after(600):
            while (msg := await self.recv()) is not None:
                seen.append(msg)
        return seen

    async def hello(self) -> proto.Welcome:
        await self.send(proto.Hello(proto.PROTOCOL_VERSION, "test", "1"))
        welcome = await self.expect(proto.Welcome)
        assert isinstance(welcome, proto.Welcome)
        return welcome


@asynccontextmanager
async def lobby(
    settings: LobbySettings | None = None, listen: ListenSettings | None = None
) -> AsyncIterator[LobbyServer]:
    with SqliteStore(":memory:") as store:
        server = LobbyServer(
            settings or LobbySettings(),
            listen or ListenSettings(client_port=0, control_port=0),
            LocalStore(store),
            session_secret=SECRET,
            clock=lambda: BASE + trio.current_time(),
            hasher=_fast_hash,
            immediate_store=True,
        )
        async with trio.open_nursery() as nursery:
            await nursery.start(server.run)
            yield server
            server.stop()


@asynccontextmanager
async def connected(server: LobbyServer) -> AsyncIterator[RawClient]:
    ours, theirs = trio.testing.memory_stream_pair()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(server.serve_client, theirs)
        yield RawClient(ours)
        await ours.aclose()


async def test_hello_register_login_and_heartbeat() -> None:
    """On the real clock: the KDF runs in a worker thread, and virtual time would jump past
    the idle timeout while the thread works."""
    async with lobby() as server, connected(server) as c:
        welcome = await c.hello()
        assert welcome.heartbeat_interval == 5.0 and welcome.idle_timeout == 30.0
        await c.send(proto.Register("alice", "correct horse", rid=1))
        logged = await c.expect(proto.LoggedIn)
        assert isinstance(logged, proto.LoggedIn) and logged.name == "alice" and logged.rid == 1
        await c.send(proto.Heartbeat(42, rid=2))
        assert await c.expect(proto.HeartbeatAck) == proto.HeartbeatAck(42, 2)
    async with lobby() as server, connected(server) as c:
        await c.hello()
        await c.send(proto.Login("nobody", "whatever", rid=3))
        err = await c.expect(proto.Error)
        assert isinstance(err, proto.Error) and err.code is proto.ErrorCode.BAD_CREDENTIALS


async def test_idle_connection_is_told_and_closed(autojump_clock: trio.abc.Clock) -> None:
    async with lobby() as server, connected(server) as c:
        await c.hello()
        start = trio.current_time()
        seen = await c.closed()
        assert [type(m) for m in seen] == [proto.Kicked]
        assert 30.0 <= trio.current_time() - start < 31.0
        assert server.stats()["clients_idle_closed"] == 1


async def test_heartbeats_keep_a_connection_open(autojump_clock: trio.abc.Clock) -> None:
    async with lobby() as server, connected(server) as c:
        await c.hello()
        for n in range(20):  # 100 s of heartbeats every 5 s, far past the idle timeout
            await trio.sleep(5)
            await c.send(proto.Heartbeat(n))
            assert await c.expect(proto.HeartbeatAck) == proto.HeartbeatAck(n)
        assert server.stats()["clients"] == 1


async def test_oversized_frame_is_refused_and_the_connection_survives(
    autojump_clock: trio.abc.Clock,
) -> None:
    async with lobby(LobbySettings(max_frame=1024)) as server, connected(server) as c:
        await c.hello()
        await c.send_raw((5000).to_bytes(4, "big") + b"\x00" * 5000)
        err = await c.expect(proto.Error)
        assert isinstance(err, proto.Error) and err.code is proto.ErrorCode.TOO_LARGE
        await c.send(proto.Heartbeat(1))
        assert await c.expect(proto.HeartbeatAck) == proto.HeartbeatAck(1)


async def test_bad_messages_get_errors_and_broken_framing_closes(
    autojump_clock: trio.abc.Clock,
) -> None:
    async with lobby() as server, connected(server) as c:
        await c.send(proto.Heartbeat(1, rid=7))
        err = await c.expect(proto.Error)
        assert isinstance(err, proto.Error) and err.code is proto.ErrorCode.HELLO_REQUIRED
        await c.hello()
        await c.send(proto.Queue("5v5", "local", rid=8))
        err = await c.expect(proto.Error)
        assert isinstance(err, proto.Error)
        assert (err.code, err.rid) == (proto.ErrorCode.NOT_LOGGED_IN, 8)
        await c.send_raw(b"\x00\x00\x00\x03\xc1\xc1\xc1")  # not msgpack
        err = await c.expect(proto.Error)
        assert isinstance(err, proto.Error) and err.code is proto.ErrorCode.MALFORMED
        await c.send_raw(b"\x00\x00\x00\x00")  # length 0: the stream is not ours
        seen = await c.closed()
        assert [m.code for m in seen if isinstance(m, proto.Error)] == [proto.ErrorCode.MALFORMED]
        assert server.stats()["clients"] == 0


async def test_flooding_client_is_slowed_then_closed(autojump_clock: trio.abc.Clock) -> None:
    async with lobby(LobbySettings(rate=5, burst=5)) as server, connected(server) as c:
        await c.hello()
        await c.send_raw(b"".join(proto.encode_message(proto.Heartbeat(n)) for n in range(40)))
        seen = await c.closed()
        acks = [m for m in seen if isinstance(m, proto.HeartbeatAck)]
        errors = [m for m in seen if isinstance(m, proto.Error)]
        assert len(acks) == 4  # the burst, less the hello
        assert {e.code for e in errors} == {proto.ErrorCode.TOO_FAST}
        assert len(errors) == 2  # one for the episode, one on closing
        assert server.stats()["clients"] == 0


async def test_a_second_login_kicks_the_first_connection(autojump_clock: trio.abc.Clock) -> None:
    async with lobby() as server, connected(server) as first, connected(server) as second:
        await first.hello()
        await first.send(proto.RegisterDevice("device-1"))
        await first.expect(proto.LoggedIn)
        await second.hello()
        await second.send(proto.LoginDevice("device-1"))
        await second.expect(proto.LoggedIn)
        seen = await first.closed()
        assert [type(m) for m in seen] == [proto.Kicked]
        assert server.core.online_players == 1


async def test_client_that_does_not_read_is_dropped(autojump_clock: trio.abc.Clock) -> None:
    settings = LobbySettings(rate=1e6, burst=1_000_000)
    async with lobby(settings) as server:
        ours, theirs = trio.testing.lockstep_stream_pair()  # writes block until read
        async with trio.open_nursery() as nursery:
            nursery.start_soon(server.serve_client, theirs)
            await ours.send_all(proto.encode_message(proto.Hello(1, "t", "1")))
            ping = proto.encode_message(proto.Heartbeat(1))
            with trio.fail_after(120), pytest.raises(trio.BrokenResourceError):
                while True:  # we never read: the server gives up on us and hangs up
                    await ours.send_all(ping * 100)
            assert server.stats()["clients_too_slow"] == 1
            assert server.stats()["clients"] == 0
            await ours.aclose()


async def test_control_channel_registers_a_host(autojump_clock: trio.abc.Clock) -> None:
    async with lobby() as server:
        ours, theirs = trio.testing.memory_stream_pair()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(server.serve_control, theirs)
            await ours.send_all(
                control.encode_message(control.Register("h1", "127.0.0.1", 7100, 10, 0, "t"))
            )
            decoder = control.ControlDecoder()
            while (msg := decoder.next_message()) is None:
                decoder.feed(await ours.receive_some(65536))
            assert isinstance(msg, control.Registered) and msg.lease == 5.0
            assert server.stats()["hosts_connected"] == 1
            await ours.aclose()


def _self_signed(tmp_path: Path) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost")]), critical=False)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


@pytest.mark.parametrize("tls", [False, True])
async def test_real_tcp_listener_with_and_without_tls(tmp_path: Path, tls: bool) -> None:
    cert, key = _self_signed(tmp_path) if tls else (None, None)
    listen = ListenSettings(client_port=0, control_port=0, tls_cert=cert, tls_key=key)
    with SqliteStore(":memory:") as store:
        server = LobbyServer(LobbySettings(), listen, LocalStore(store), session_secret=SECRET)
        async with trio.open_nursery() as nursery:
            client_port, _ = await nursery.start(server.run)
            stream: trio.abc.Stream = await trio.open_tcp_stream("127.0.0.1", client_port)
            if tls:
                context = ssl.create_default_context(cafile=str(cert))
                stream = trio.SSLStream(stream, context, server_hostname="localhost")
            with trio.fail_after(10):
                c = RawClient(stream)
                await c.hello()
                await c.send(proto.RegisterDevice("tls-device" if tls else "tcp-device"))
                logged = await c.expect(proto.LoggedIn)
                assert isinstance(logged, proto.LoggedIn)
                await stream.aclose()
            server.stop()


async def test_node_keeps_its_secret_and_store_and_serves_metrics(tmp_path: Path) -> None:
    import json  # noqa: PLC0415
    import urllib.request  # noqa: PLC0415

    from lobby.node import SECRET_FILE, run_lobby_node  # noqa: PLC0415

    listen = ListenSettings(client_port=0, control_port=0, data_dir=tmp_path / "lobby")
    metrics_port = free_tcp_port()
    tokens = []
    for run in range(2):
        metrics = metrics_port if run == 0 else None
        async with trio.open_nursery() as nursery:
            server: LobbyServer = await nursery.start(
                lambda task_status, metrics=metrics: run_lobby_node(
                    LobbySettings(),
                    listen,
                    ports_file=tmp_path / "ports.json",
                    metrics_port=metrics,
                    task_status=task_status,
                )
            )
            ports = json.loads((tmp_path / "ports.json").read_text())
            assert ports["client_port"] == server.client_port
            stream = await trio.open_tcp_stream("127.0.0.1", server.client_port)
            c = RawClient(stream)
            with trio.fail_after(10):
                await c.hello()
                if run == 0:
                    await c.send(proto.RegisterDevice("node-device"))
                    logged = await c.expect(proto.LoggedIn)
                    assert isinstance(logged, proto.LoggedIn)
                    tokens.append(logged.session_token)
                    await trio.sleep(0.5)  # let the 0.25 s snapshot refresh run

                    def scrape() -> str:
                        url = f"http://127.0.0.1:{metrics_port}/metrics"
                        with urllib.request.urlopen(url, timeout=5) as r:
                            body: bytes = r.read()
                            return body.decode()

                    text = await trio.to_thread.run_sync(scrape)
                    assert "framesync_lobby_players_online 1.0" in text
                    assert "framesync_lobby_matchmaker 1.0" in text  # one node runs it
                    assert 'framesync_lobby_events_total{event="logins"} 1.0' in text
                else:  # a restarted node: same secret, same accounts
                    await c.send(proto.Resume(tokens[0]))
                    again = await c.expect(proto.LoggedIn)
                    assert isinstance(again, proto.LoggedIn)
                    assert again.player_id == logged.player_id
            await stream.aclose()
            server.stop()
    secret = tmp_path / "lobby" / SECRET_FILE
    assert secret.stat().st_mode & 0o777 == 0o600 and len(secret.read_bytes()) == 32


class _FlakyStore(LocalStore):
    """A store that can be taken down: the calls used here fail as an unreachable server's."""

    down = False

    def _gate(self) -> None:
        if self.down:
            raise ConnectionRefusedError("store down")

    async def account_by_device(self, device_id: str) -> Account | None:
        self._gate()
        return await super().account_by_device(device_id)

    async def end_match(self, match_id: int) -> bool:
        self._gate()
        return await super().end_match(match_id)


@pytest.mark.parametrize("immediate", [False, True], ids=["tasks", "immediate"])
async def test_store_writes_wait_out_an_outage_and_reads_answer_unavailable(
    autojump_clock: trio.abc.Clock, immediate: bool
) -> None:
    record = MatchRecord(
        77,
        "1v1",
        "gone-host",
        5,
        "127.0.0.1",
        7000,
        30,
        b"k" * 32,
        (RosterEntry(0, 1, 0), RosterEntry(1, 2, 1)),
        BASE,
    )
    settings = LobbySettings()
    with SqliteStore(":memory:") as sqlite:
        sqlite.put_match(record)
        store = _FlakyStore(sqlite)
        store.down = True
        server = LobbyServer(
            settings,
            ListenSettings(client_port=0, control_port=0),
            store,
            session_secret=SECRET,
            matches=sqlite.matches_in_progress(),
            clock=lambda: BASE + trio.current_time(),
            hasher=_fast_hash,
            immediate_store=immediate,
        )
        async with trio.open_nursery() as nursery:
            await nursery.start(server.run)
            async with connected(server) as c:
                await c.hello()
                await c.send(proto.LoginDevice("dev-1", rid=4))
                err = await c.expect(proto.Error)
                assert isinstance(err, proto.Error)
                assert (err.code, err.rid) == (proto.ErrorCode.UNAVAILABLE, 4)
                # The host of the kept match never comes back: the match is aborted, and
                # the write that ends it waits for the store.
                await trio.sleep(settings.host_lease + 10)
                assert server.stats()["matches_in_progress"] == 0
                assert server.stats()["store_writes_waiting"] == 1
                assert server.stats()["store_write_retries"] >= 3
                assert sqlite.match(77) is not None
                store.down = False
                await trio.sleep(3)
                assert server.stats()["store_writes_waiting"] == 0
                assert sqlite.match(77) is None
                await c.send(proto.LoginDevice("dev-1", rid=5))
                err = await c.expect(proto.Error)  # no such device: the store answers again
                assert isinstance(err, proto.Error)
                assert (err.code, err.rid) == (proto.ErrorCode.BAD_CREDENTIALS, 5)
            server.stop()
