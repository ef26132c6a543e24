"""One lobby node among several sharing a Redis: the matchmaker lease and the node bus.

Every node serves players (logins, ratings, history) from the shared `RedisStore`. One node
at a time holds the matchmaker lease and runs the matchmaking desk (queues, ready checks,
rooms and results); room hosts register with that node only (the others close their control
connection, and hosts try the next address they were given). The other nodes hand their
players' queue requests, logins and logouts to it over the bus (`Forward`), and it hands
answers back to the node holding each player's connection (`Deliver`).

Decisions:

* **Lease.** The holder renews every third of the TTL. A renew refused (the lease expired,
  say across a Redis restart) is followed at once by an acquire: if no one else took it the
  holder carries on with its state under a new generation; otherwise it steps down, dropping
  its desk and its room hosts. While Redis cannot be reached the holder keeps going (nobody
  else can take over without Redis either); a found match still needs its tickets claimed in
  Redis under the lease generation, so two matchmakers can never both start it.
* **Taking over** loads the matches in progress and the kept tickets from Redis; hosts get one
  lease to re-register (as after a restart) and tickets wait as long for their players.
* **Announcing.** When a node sees a new lease generation it tells the new matchmaker who is
  connected to it (``present``), so queued tickets find their players again.
* **Node liveness.** Each node holds its own lease (``node:<id>``); the matchmaker checks the
  nodes its players are on and takes the players of a node offline when its lease has been
  missing for a whole TTL (a lease that merely lapsed while Redis restarted is taken again by
  its node within a third of one, and the node then announces its players again).
* **Delivery** is pub/sub: at most once, but PUBLISH says how many received it. A request
  that cannot be published, or that nobody receives, is answered ``unavailable`` at once. A
  message for a player on another node that nobody received (that node's subscription is
  being re-made, say after a Redis restart) is published again, in order, for up to two
  TTLs. A request lost in a dying matchmaker gets no answer; the client's own timeout
  covers it (the SDK's requests time out).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import msgpack
import structlog
import trio
from coredis import Redis
from coredis.client import Client

from lobby import protocol as proto
from lobby.bus import NodeBus
from lobby.lease import LeaseStore
from lobby.outputs import Deliver, Forward
from lobby.queuedesk import LOCAL
from lobby.redisstore import RedisStore
from lobby.server import LobbyServer

log = structlog.get_logger("framesync.lobby")

MATCHMAKER = "matchmaker"
_RELAY_QUEUE = 65536
"""Bus messages waiting to be published; beyond this the node is far behind: answered
unavailable rather than held."""


def matchmaker_leases(client: Client[bytes], prefix: str) -> LeaseStore:
    """The matchmaker lease's store: its key shares the store's ``{prefix}`` hash tag, so the
    ticket claim script can read it in the same step (also on a Redis cluster)."""
    return LeaseStore(client, prefix=f"{prefix}:{MATCHMAKER}:")


class ClusterNode:
    """Runs beside a `LobbyServer` whose core was made with `node_id`."""

    def __init__(
        self,
        server: LobbyServer,
        client: Redis[bytes],
        store: RedisStore,
        *,
        prefix: str,
        node_id: str,
        lease_ttl: float,
        transient: tuple[type[BaseException], ...],
    ) -> None:
        self.server = server
        self.core = server.core
        self.store = store
        self.prefix = prefix
        self.node_id = node_id
        self.ttl_ms = int(lease_ttl * 1000)
        self.transient = transient
        self.bus = NodeBus(client, prefix=prefix, node_id=node_id)
        self.mm_leases = matchmaker_leases(client, prefix)
        self.node_leases = LeaseStore(client, prefix=f"{prefix}:node:")
        store.fence_key = self.mm_leases.key(prefix)
        self.generation: int | None = None
        """The lease generation this node holds the matchmaker lease under, if it does."""
        self.leader: tuple[str, int] | None = None
        """(node id, generation) of the matchmaker as last seen."""
        self._relay_in, self._relay_out = trio.open_memory_channel[Forward](_RELAY_QUEUE)
        self._deliveries: dict[str, trio.MemorySendChannel[Deliver]] = {}
        self._missing: dict[str, float] = {}  # node -> when its lease was first seen missing
        self._nursery: trio.Nursery | None = None
        server.relay = self._relay

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            await nursery.start(self.bus.run, self._on_bus)
            nursery.start_soon(self._publisher)
            nursery.start_soon(self._node_lease)
            await self._lease_round()
            task_status.started()
            nursery.start_soon(self._lease_loop)

    # --- the matchmaker lease -------------------------------------------------------------

    async def _lease_loop(self) -> None:
        while True:
            await trio.sleep(self.ttl_ms / 3000)
            await self._lease_round()

    async def _lease_round(self) -> None:
        try:
            if self.generation is not None:
                await self._renew()
            if self.generation is None:
                await self._try_acquire()
            if self.generation is not None:
                await self._check_nodes()
        except self.transient as exc:
            log.warning("lease_unreachable", error=f"{type(exc).__name__}: {exc}")

    async def _renew(self) -> None:
        assert self.generation is not None
        name = self.prefix
        if await self.mm_leases.renew(name, self.node_id, self.generation, ttl_ms=self.ttl_ms):
            return
        generation = await self.mm_leases.acquire(
            name, self.node_id, ttl_ms=self.ttl_ms, payload=self.node_id.encode()
        )
        if generation is not None:  # it lapsed and nobody took it: carry on
            log.warning("matchmaker_lease_renewed_late", generation=generation)
            self.generation = generation
            self.leader = (self.node_id, generation)
            if self.core.desk is not None:
                self.core.desk.generation = generation
            return
        log.warning("matchmaker_lease_lost", generation=self.generation)
        self.generation = None
        self.core.stop_matchmaking(trio.current_time())
        self.server.close_controls("this lobby node is no longer the matchmaker")
        self.server.carry_out()

    async def _try_acquire(self) -> None:
        name = self.prefix
        generation = await self.mm_leases.acquire(
            name, self.node_id, ttl_ms=self.ttl_ms, payload=self.node_id.encode()
        )
        if generation is not None:
            matches = await self.store.matches_in_progress()
            tickets = await self.store.load_tickets()
            self.generation = generation
            self.leader = (self.node_id, generation)
            self.core.become_matchmaker(generation, matches, tickets, self.server.now())
            self.server.carry_out()
            log.info("matchmaker_lease_taken", generation=generation, tickets=len(tickets))
            return
        info = await self.mm_leases.read(name)
        leader = (info.owner, info.generation) if info is not None else None
        if leader is not None and leader != self.leader:
            self.leader = leader
            log.info("matchmaker_seen", node=leader[0], generation=leader[1])
            self.core.announce()
            self.server.carry_out()
        elif leader is None:
            self.leader = None

    # --- node liveness --------------------------------------------------------------------

    async def _node_lease(self) -> None:
        """This node's own lease, so the matchmaker can tell when it died."""
        generation: int | None = None
        while True:
            try:
                if generation is None or not await self.node_leases.renew(
                    self.node_id, self.node_id, generation, ttl_ms=self.ttl_ms
                ):
                    lapsed = generation is not None
                    generation = await self.node_leases.acquire(
                        self.node_id, self.node_id, ttl_ms=self.ttl_ms
                    )
                    if lapsed and generation is not None:
                        # It lapsed (Redis was away): the matchmaker may have counted this
                        # node's players out; tell it again who is here.
                        log.warning("node_lease_renewed_late", generation=generation)
                        self.core.announce()
                        self.server.carry_out()
            except self.transient as exc:
                log.warning("node_lease_unreachable", error=f"{type(exc).__name__}: {exc}")
            await trio.sleep(self.ttl_ms / 3000)

    async def _check_nodes(self) -> None:
        now = trio.current_time()
        nodes = sorted(set(self.core.out.remote.values()))
        for node in nodes:
            if await self.node_leases.read(node) is not None:
                self._missing.pop(node, None)
                continue
            since = self._missing.setdefault(node, now)
            if now - since >= self.ttl_ms / 1000:
                del self._missing[node]
                log.warning("lobby_node_lost", node=node)
                self.core.node_gone(node, self.server.now())
                self.server.carry_out()

    # --- the bus --------------------------------------------------------------------------

    def _relay(self, out: Forward | Deliver) -> None:
        if isinstance(out, Deliver):
            self._deliver(out)
            return
        try:
            self._relay_in.send_nowait(out)
        except trio.WouldBlock:
            self.core.forward_failed(out)

    async def _publisher(self) -> None:
        """Player events to the matchmaker, in order. A request nobody received is answered
        at once; a login, logout or presence is published again (to whichever node holds
        the lease by then) for up to two TTLs, since a new matchmaker needs to hear it."""
        async for out in self._relay_out:
            request = out.request
            frame = proto.encode_message(request) if request is not None else None
            payload = _pack(["fwd", self.node_id, out.player_id, out.kind, frame])

            async def send(out: Forward = out, payload: bytes = payload) -> bool:
                leader = self.leader
                if leader is None:
                    return False
                if leader[0] == self.node_id:
                    # Sent before this node took the lease: its own desk takes it now.
                    self.core.forwarded(LOCAL, out, self.server.now())
                    self.server.carry_out()
                    return True
                return bool(await self._publish(leader[0], payload))

            if not await self._until_received(send, again=out.kind != "request"):
                self.core.forward_failed(out)
                self.server.carry_out()

    def _deliver(self, out: Deliver) -> None:
        """Messages for another node's players: one queue and task per node, so a node
        being waited for holds up only its own players' messages."""
        queue = self._deliveries.get(out.node)
        if queue is None:
            assert self._nursery is not None, "delivering starts inside run()"
            queue, receive = trio.open_memory_channel[Deliver](_RELAY_QUEUE)
            self._deliveries[out.node] = queue
            self._nursery.start_soon(self._deliverer, out.node, receive)
        try:
            queue.send_nowait(out)
        except trio.WouldBlock:
            self.core.out.count("deliveries_dropped")

    async def _deliverer(self, node: str, queue: trio.MemoryReceiveChannel[Deliver]) -> None:
        async for out in queue:
            payload = _pack(["dlv", out.player_id, proto.encode_message(out.message)])

            async def send(payload: bytes = payload) -> bool:
                return bool(await self._publish(node, payload))

            if not await self._until_received(send, again=True):
                self.core.out.count("deliveries_lost")
                log.warning("delivery_lost", node=node, player_id=out.player_id)

    async def _until_received(self, send: Callable[[], Awaitable[bool]], *, again: bool) -> bool:
        """`send` until it reports a receiver; `again`: keep trying (backing off) for two
        TTLs, while subscriptions are re-made after a Redis restart or a lease changes hands."""
        deadline = trio.current_time() + (2 * self.ttl_ms / 1000 if again else 0.0)
        wait = 0.05
        while not await send():
            if trio.current_time() + wait > deadline:
                return False
            await trio.sleep(wait)
            wait = min(wait * 2, 0.5)
        return True

    async def _publish(self, node: str, payload: bytes) -> int:
        try:
            return await self.bus.publish(node, payload)
        except self.transient as exc:
            log.warning("bus_unreachable", error=f"{type(exc).__name__}: {exc}")
            return 0

    def _on_bus(self, payload: bytes) -> None:
        try:
            message = msgpack.unpackb(payload, raw=False)
            self._dispatch(message)
        except (ValueError, TypeError, proto.LobbyProtocolError) as exc:
            self.core.out.count("bus_bad_messages")
            log.warning("bus_bad_message", error=str(exc))
        self.server.carry_out()

    def _dispatch(self, message: Any) -> None:
        now = self.server.now()
        kind = message[0]
        if kind == "fwd":
            _, node, pid, what, request = message
            decoded = _decode(proto.Role.SERVER, request) if request else None
            if decoded is not None and not isinstance(
                decoded, proto.Queue | proto.CancelQueue | proto.Accept | proto.Decline
            ):
                raise ValueError(f"not a queue request: {type(decoded).__name__}")
            if what not in ("online", "present", "offline", "request"):
                raise ValueError(f"unknown forward {what!r}")
            self.core.forwarded(str(node), Forward(int(pid), what, decoded), now)
        elif kind == "dlv":
            _, pid, frame = message
            decoded = _decode(proto.Role.CLIENT, frame)
            if decoded is None:
                raise ValueError("an empty delivery")
            self.core.delivered(int(pid), decoded, now)  # type: ignore[arg-type]
        else:
            raise ValueError(f"unknown bus message {kind!r}")


def _decode(role: proto.Role, frame: bytes) -> proto.Message | None:
    """One framed message (a fresh decoder each time: a bad frame cannot spoil the next)."""
    decoder = proto.LobbyDecoder(role)
    decoder.feed(frame)
    return decoder.next_message()


def _pack(parts: Sequence[object]) -> bytes:
    return bytes(msgpack.packb(list(parts), use_bin_type=True))
