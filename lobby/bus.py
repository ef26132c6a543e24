"""A message bus between lobby nodes, over Redis or Valkey pub/sub.

Nodes that share one Redis talk to each other through it: a node publishes opaque bytes to
another node's channel, and that node's ``NodeBus.run`` hands each one to a callback.

Decisions:

* **One channel per node.** ``{prefix}:bus:{node_id}``: a node hears only what is meant for
  it, and ``publish`` learns from PUBLISH's reply whether anyone is listening (0 means the
  node is down, not yet subscribed, or between reconnects).
* **At most once.** This is plain pub/sub: nothing is stored, so a message published while
  the receiver is disconnected (Redis restarting, a network cut) is lost, and ``publish``
  returning 1 says only that Redis handed it to a subscriber connection. Callers must not rely
  on delivery: the lobby puts timeouts, retries and periodic re-announcements on top.
* **Order.** Redis delivers in the order it runs the PUBLISH commands, so messages one task
  publishes one after another arrive in that order. Concurrent publishers (other tasks, which
  may use other pooled connections, or other nodes) have no order between them.
* **Riding out a Redis restart.** ``run`` keeps one subscriber connection. When it is lost
  (the server is killed or restarted, the connection breaks), ``run`` logs a warning, waits
  with capped backoff, subscribes again and carries on; ``reconnects`` counts those
  recoveries. A connection that dies silently is noticed by coredis's keepalive PING, after
  about 15 s of silence, and only if the client has a ``stream_timeout``.
* **Payloads** are opaque bytes; the caller picks the encoding.
"""

from __future__ import annotations

from collections.abc import Callable

import structlog
import trio
from coredis import Redis
from coredis.exceptions import ConnectionError as RedisConnectionError

__all__ = ["NodeBus"]

log = structlog.get_logger("framesync.lobby")

# Wait after a lost subscription before the first attempt to subscribe again; doubled after
# each failed attempt up to the cap, and back to the start once subscribed.
_BACKOFF = (0.05, 1.0)

# What a lost or unreachable server looks like: coredis's ConnectionError (its BusyLoadingError,
# while a restarted server loads its data, is one), and TimeoutError when the pool or the
# subscribe acknowledgement takes too long.
_TRANSIENT: tuple[type[Exception], ...] = (RedisConnectionError, TimeoutError, OSError)


class NodeBus:
    """Publish to any node's channel; receive on this node's own channel with ``run``.

    The client must use ``decode_responses=False`` and be open (``async with client:``) while
    ``publish`` and ``run`` are in use. ``run`` takes one of its pooled connections for as long
    as it runs.
    """

    def __init__(self, client: Redis[bytes], *, prefix: str, node_id: str) -> None:
        self._client = client
        self._prefix = prefix
        self.node_id = node_id
        self._subscribed = trio.Event()
        self._reconnects = 0
        self._running = False

    def channel(self, node_id: str) -> bytes:
        """The channel ``node_id`` listens on."""
        return f"{{{self._prefix}}}:bus:{node_id}".encode()

    @property
    def subscribed(self) -> bool:
        """Whether ``run`` is subscribed right now (as far as it knows: a connection that has
        just broken counts until coredis reports it)."""
        return self._subscribed.is_set()

    @property
    def reconnects(self) -> int:
        """How many times ``run`` has subscribed again after losing its subscription."""
        return self._reconnects

    async def wait_subscribed(self) -> None:
        """Return once ``run`` is subscribed (at once if it is now)."""
        await self._subscribed.wait()

    async def publish(self, node_id: str, payload: bytes) -> int:
        """Send ``payload`` to ``node_id``; how many subscribers got it (0: nobody listens).

        Connection errors from the client (coredis ``ConnectionError``, ``TimeoutError``) are
        raised to the caller, which decides whether to retry, drop or fail: a message that
        raised may or may not have been delivered.
        """
        return await self._client.publish(self.channel(node_id), payload)

    async def run(
        self,
        deliver: Callable[[bytes], None],
        *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Receive on this node's channel until cancelled, calling ``deliver(payload)`` for each
        message, in order. Start it with ``await nursery.start(bus.run, deliver)``: that returns
        once the server has confirmed the subscription, so anything published after it is
        delivered (unless the connection is lost).

        Connection losses are logged and recovered from (see the module docstring); messages
        published meanwhile are lost. If Redis cannot be reached at first, ``run`` keeps trying
        and ``nursery.start`` waits: bound it with a timeout if that matters. Other errors, such
        as a refused password, and any exception from ``deliver`` end ``run``. ``deliver`` runs
        in this task and must not block; hand the payload on (e.g. ``send_nowait``).
        """
        if self._running:
            raise RuntimeError(f"NodeBus {self.node_id!r} is already running")
        self._running = True
        try:
            await self._run(deliver, task_status)
        finally:
            self._running = False
            self._lost()

    async def _run(
        self, deliver: Callable[[bytes], None], task_status: trio.TaskStatus[None]
    ) -> None:
        channel = self.channel(self.node_id)
        started = False
        wait = _BACKOFF[0]
        while True:
            error: BaseException | None = None
            try:
                # No coredis retry policy: its own reconnects would be invisible here and back
                # off up to 16 s. A lost connection surfaces as a ConnectionError instead,
                # inside exception groups from the pubsub's task groups.
                async with self._client.pubsub(
                    retry_policy=None, ignore_subscribe_messages=True
                ) as pubsub:
                    await pubsub.subscribe(channel)
                    if started:
                        self._reconnects += 1
                        log.info("bus_resubscribed", node=self.node_id, reconnects=self.reconnects)
                    self._subscribed.set()
                    wait = _BACKOFF[0]
                    if not started:
                        started = True
                        task_status.started()
                    async for message in pubsub:
                        match message:
                            case {"type": "message", "data": bytes(payload)}:
                                deliver(payload)
                            case _:
                                pass
            except* _TRANSIENT as group:
                error = _first_leaf(group)
            if error is None:  # the server ended the subscription without closing the connection
                error = RedisConnectionError("subscription ended")
            self._lost()
            log.warning(
                "bus_disconnected",
                node=self.node_id,
                error=f"{type(error).__name__}: {error}",
                retry_in=wait,
            )
            await trio.sleep(wait)
            wait = min(wait * 2, _BACKOFF[1])

    def _lost(self) -> None:
        if self._subscribed.is_set():
            self._subscribed = trio.Event()


def _first_leaf(error: BaseException) -> BaseException:
    while isinstance(error, BaseExceptionGroup):
        error = error.exceptions[0]
    return error
