"""Carrying out the core's storage and KDF effects against an `AsyncStore`.

The one place that knows what each effect means in store calls, shared by the trio shell
(Redis or SQLite, the KDF in worker threads) and the core's tests (SQLite, a cheap KDF, run
to completion without an event loop: `LocalStore` never suspends).

Failures are sorted in two: a refusal the store decides (`StoreError`, `ValueError`) is an
answer; the store's transient errors (unreachable, timed out: `transient`, e.g. OSError and
the Redis client's connection errors) are `Unavailable`, which the shell retries for writes
and reports to the core (`effect_failed`) for everything else. Anything else is a bug and
propagates.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import NoReturn, TypeVar

from lobby.core import LobbyCore
from lobby.outputs import (
    WRITES,
    CheckPassword,
    ClaimTickets,
    CreateAccount,
    CreateDeviceAccount,
    DropTickets,
    Effect,
    EndMatch,
    FindAccount,
    HashPassword,
    LoadHistory,
    LoadRatings,
    LoadStats,
    PublishHost,
    RecordResult,
    RemoveHost,
    SaveMatch,
    SaveTicket,
)
from lobby.results import settle
from lobby.store import Account, AsyncStore, NameTaken, StoreError

T = TypeVar("T")
Work = Effect | HashPassword | CheckPassword
"""Everything the shell hands to an `EffectRunner`."""


class Unavailable(Exception):
    """The store did not answer (down, unreachable, timed out): worth trying again later."""


def is_write(work: Work) -> bool:
    """Writes are carried out one at a time, in order, and retried while the store is down."""
    return isinstance(work, WRITES)


class EffectRunner:
    """Runs one effect and hands its answer to the core (the caller then drains outputs)."""

    def __init__(
        self,
        core: LobbyCore,
        store: AsyncStore,
        *,
        clock: Callable[[], float],
        hash_password: Callable[[str], Awaitable[str]],
        check_password: Callable[[str, str | None], Awaitable[bool]],
        transient: tuple[type[BaseException], ...] = (OSError,),
    ) -> None:
        """`check_password(password, None)` must take as long as a real check (a dummy
        hash), so that an unknown name cannot be told apart by timing."""
        self.core = core
        self.store = store
        self._clock = clock
        self._hash = hash_password
        self._check = check_password
        self._transient = transient

    async def run(self, work: Work) -> None:
        """Carry out `work`; raise `Unavailable` only for writes (the caller retries them)."""
        try:
            await self._run(work)
        except Unavailable as exc:
            if is_write(work) and not isinstance(work, RecordResult | ClaimTickets):
                raise
            if not isinstance(work, HashPassword | CheckPassword):
                self.core.effect_failed(work, str(exc), self._clock())
        except (StoreError, ValueError) as exc:  # a read the store refused: a bug, not a crash
            if not isinstance(work, HashPassword | CheckPassword):
                self.core.effect_failed(work, f"{type(exc).__name__}: {exc}", self._clock())

    async def _run(self, work: Work) -> None:
        core, now = self.core, self._clock
        if isinstance(work, HashPassword):
            encoded = await self._hash(work.password)
            core.password_hashed(work.conn, work.rid, work.name, encoded, now())
        elif isinstance(work, CheckPassword):
            ok = await self._check(work.password, work.encoded)
            ok = ok and work.encoded is not None
            core.password_checked(work.conn, work.rid, work.player_id, ok, now())
        elif isinstance(work, FindAccount):
            account = await self._guard(self._find(work))
            core.account_found(work.conn, account, now())
        elif isinstance(work, CreateAccount):
            try:
                pid: int | None = await self._guard(
                    self.store.create_account(work.name, work.encoded)
                )
            except NameTaken:
                pid = None
            core.account_created(work.conn, pid, now())
        elif isinstance(work, CreateDeviceAccount):
            pid = await self._guard(self.store.create_device_account(work.device_id))
            core.account_created(work.conn, pid, now())
        elif isinstance(work, LoadRatings):
            ratings = await self._guard(self.store.ratings(work.player_ids))
            core.ratings_loaded(work.ticket_id, ratings, now())
        elif isinstance(work, LoadStats):
            ratings = await self._guard(self.store.ratings((work.player_id,)))
            played = await self._guard(self.store.matches_played(work.player_id))
            core.stats_loaded(work.conn, work.rid, ratings[work.player_id], played, now())
        elif isinstance(work, LoadHistory):
            entries = await self._guard(self.store.history(work.player_id, work.limit))
            core.history_loaded(work.conn, work.rid, entries, now())
        elif isinstance(work, SaveMatch):
            try:
                await self._guard(self.store.put_match(work.record))
            except (StoreError, ValueError) as exc:
                # The core checked this against its own view; the store disagreeing means
                # another writer touched it. Keep the core's view, say so loudly.
                core.out.note(
                    "match_not_saved", "error", match_id=work.record.match_id, error=str(exc)
                )
            core.match_saved(work.record.match_id, now())
        elif isinstance(work, EndMatch):
            await self._guard(self.store.end_match(work.match_id))
        elif isinstance(work, SaveTicket):
            await self._guard(self.store.save_ticket(work.ticket))
            core.ticket_saved(work.ticket.ticket_id, now())
        elif isinstance(work, DropTickets):
            await self._guard(self.store.drop_tickets(work.ticket_ids))
        elif isinstance(work, PublishHost):
            await self._guard(self.store.publish_host(work.info, work.registered, work.lease))
        elif isinstance(work, RemoveHost):
            await self._guard(self.store.remove_host(work.host_id))
        elif isinstance(work, ClaimTickets):
            ok = await self._guard(self.store.claim_tickets(work.ticket_ids, work.generation))
            core.tickets_claimed(work.proposal_id, ok, now())
        else:
            await self._record(work)

    async def _record(self, work: RecordResult) -> None:
        record = work.record
        players = [e.player_id for e in record.roster]
        before = await self._guard(self.store.ratings(players))
        settled = settle(record, work.result, before)
        try:
            fresh = await self._guard(
                self.store.record_result(
                    record.match_id,
                    settled.stored,
                    settled.teams,
                    settled.before,
                    settled.after,
                    work.at,
                    mode=record.mode,
                )
            )
        except (StoreError, ValueError) as exc:
            self.core.effect_failed(work, str(exc), self._clock())
            return
        self.core.result_recorded(work.conn, record, settled, fresh, self._clock())

    async def _find(self, work: FindAccount) -> Account | None:
        if work.by == "name":
            assert isinstance(work.key, str)
            return await self.store.account_by_name(work.key)
        if work.by == "device":
            assert isinstance(work.key, str)
            return await self.store.account_by_device(work.key)
        assert isinstance(work.key, int)
        return await self.store.account(work.key)

    async def _guard(self, call: Awaitable[T]) -> T:
        """Await a store call; its transient errors become `Unavailable`."""
        try:
            return await call
        except self._transient as exc:
            _unavailable(exc)


def _unavailable(exc: BaseException) -> NoReturn:
    raise Unavailable(f"{type(exc).__name__}: {exc}") from exc


def run_now(step: Awaitable[None]) -> None:
    """Run a coroutine that never suspends (a `LocalStore` and a synchronous KDF) to its end,
    without an event loop: how the core's tests carry out effects."""
    coro = step.__await__()
    try:
        coro.send(None)
    except StopIteration:
        return
    raise RuntimeError("the effect suspended: run it on an event loop")
