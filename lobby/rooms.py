"""Matches and room hosts: the lobby's side of the control channel. Part of the sans-IO core.

`RoomDesk` takes accepted matches from the core, has the `Allocator` place each on a room host,
stores the match in progress and sends every player MATCH_READY; it serves the room hosts'
control connections (register, heartbeat, replies, room events) and has a room's result
rated (`results.py`) and recorded. Decisions are in core.py's docstring.

The matches in progress are held here, in memory, and written through to the store as
effects (`SaveMatch`, `EndMatch`, `RecordResult`): this desk is their one writer, so its view
is the truth, and a restarted lobby starts from what the store kept.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from battle.config import RosterEntry
from battle.control import (
    ControlMessage,
    ControlProtocolError,
    CreateRoom,
    EndRoom,
    Ping,
    Pong,
    Register,
    Registered,
    Rejected,
    ResultAck,
    RoomCreated,
    RoomEvent,
    RoomResult,
    room_config_to_plain,
)
from battle.control import Heartbeat as HostHeartbeat
from battle.ticket import KEY_SIZE, ClientKeys, issue_ticket
from lobby import protocol as proto
from lobby.allocation import (
    AllocationEvent,
    AllocationFailed,
    Allocator,
    CreateRequest,
    HostDied,
    HostLoss,
    HostRegistry,
    RoomAllocated,
    StrayRoom,
)
from lobby.matchmaker import Proposal
from lobby.outputs import (
    CloseControl,
    EndMatch,
    Outbox,
    PublishHost,
    RecordResult,
    RemoveHost,
    SaveMatch,
    SendControl,
)
from lobby.results import Settlement, outcome
from lobby.settings import LobbySettings
from lobby.store import MatchRecord


@dataclass(slots=True)
class _Host:
    conn: int
    host_id: str | None = None


@dataclass(slots=True)
class _Forming:
    """An accepted match without a confirmed room yet."""

    match_id: int
    proposal: Proposal
    roster: tuple[RosterEntry, ...]
    seed: int
    ticket_key: bytes
    give_up_at: float
    requested: bool = False


class RoomDesk:
    def __init__(
        self,
        settings: LobbySettings,
        out: Outbox,
        *,
        now: float,
        matches: Sequence[MatchRecord] = (),
        entropy: Callable[[int], bytes] = os.urandom,
    ) -> None:
        """`matches` are the ones in progress the store kept from a previous run."""
        self.settings = settings
        self.out = out
        self._entropy = entropy
        self.registry = HostRegistry(settings.host_lease)
        self.allocator = Allocator(
            self.registry,
            create_timeout=settings.create_timeout,
            max_attempts=settings.create_attempts,
            first_id=self._random_u64() >> 16 or 1,
        )
        self._hosts: dict[int, _Host] = {}
        self._host_conns: dict[str, int] = {}  # host id -> conn
        self._forming: dict[int, _Forming] = {}  # match id -> accepted match
        self._forming_player: dict[int, int] = {}  # player id -> match id
        self._matches: dict[int, MatchRecord] = {}  # match id -> match in progress
        self._match_of: dict[int, int] = {}  # player id -> match id
        self._results_due: dict[str, set[int]] = {}  # host id -> results it said it holds
        for record in matches:
            self._hold(record)
        # Matches waiting for their host to show it still runs the room, or to send the
        # result it kept while away, by a deadline: match id -> (deadline, why abort then).
        # Those a previous run (or matchmaker) left in progress get one lease.
        self._unclaimed: dict[int, tuple[float, str]] = {
            match_id: (now + settings.host_lease, "its room host did not come back")
            for match_id in self._matches
        }

    def next_deadline(self) -> float | None:
        times = [t for t in (self.allocator.next_deadline(),) if t is not None]
        times.extend(f.give_up_at for f in self._forming.values() if not f.requested)
        times.extend(deadline for deadline, _ in self._unclaimed.values())
        return min(times, default=None)

    def poll(self, now: float) -> None:
        self._place_waiting(now)
        self.run_allocator(now)
        due = sorted(m for m, (deadline, _) in self._unclaimed.items() if now >= deadline)
        for match_id in due:
            _, why = self._unclaimed.pop(match_id)
            record = self._matches.get(match_id)
            if record is not None:
                self._abort(record, why)

    def in_match(self, player_id: int) -> bool:
        """Playing, or accepted and waiting for a room."""
        return player_id in self._forming_player or player_id in self._match_of

    def match_for_player(self, player_id: int) -> MatchRecord | None:
        match_id = self._match_of.get(player_id)
        return self._matches.get(match_id) if match_id is not None else None

    def match(self, match_id: int) -> MatchRecord | None:
        return self._matches.get(match_id)

    @property
    def matches_in_progress(self) -> int:
        return len(self._matches)

    def _hold(self, record: MatchRecord) -> None:
        self._matches[record.match_id] = record
        for entry in record.roster:
            self._match_of[entry.player_id] = record.match_id

    def _release(self, match_id: int) -> MatchRecord | None:
        self._unclaimed.pop(match_id, None)
        record = self._matches.pop(match_id, None)
        if record is not None:
            for entry in record.roster:
                if self._match_of.get(entry.player_id) == match_id:
                    del self._match_of[entry.player_id]
        return record

    def _on_host(self, host_id: str) -> list[MatchRecord]:
        return sorted(
            (r for r in self._matches.values() if r.host_id == host_id), key=lambda r: r.match_id
        )

    @property
    def live_hosts(self) -> int:
        return len(self._host_conns)

    def start_match(self, p: Proposal, now: float) -> None:
        """Everyone accepted: draw the match's id, seed and ticket key, and ask for a room."""
        roster = tuple(
            RosterEntry(slot, pid, team)
            for slot, (team, pid) in enumerate(
                (team, pid) for team, members in enumerate(p.teams) for pid in members
            )
        )
        match_id = self._random_u64() >> 1 or 1  # fits a signed 64-bit column too
        forming = _Forming(
            match_id,
            p,
            roster,
            self._random_u64(),
            self._entropy(KEY_SIZE),
            now + self.settings.allocation_wait,
        )
        self._forming[match_id] = forming
        for pid in p.player_ids:
            self._forming_player[pid] = match_id
        self.out.count("matches_found")
        self._request_room(forming, now)

    def _place_waiting(self, now: float) -> None:
        """Ask again for a room for each match still waiting for one (or give up on it)."""
        for forming in sorted(self._forming.values(), key=lambda f: (f.give_up_at, f.match_id)):
            if not forming.requested:
                self._request_room(forming, now)

    def _request_room(self, forming: _Forming, now: float) -> None:
        request = self.allocator.allocate(forming.match_id, now)
        if request is not None:
            forming.requested = True
            self._send_create(request, forming)
        elif now >= forming.give_up_at:
            self._fail_forming(forming, "no room host has a free room")

    def _send_create(self, request: CreateRequest, forming: _Forming) -> None:
        conn = self._host_conns.get(request.host_id)
        self.out.count("rooms_requested")
        if conn is None:
            return  # its control connection is down: the request times out and is retried
        self.out.append(
            SendControl(
                conn,
                CreateRoom(
                    request_id=request.request_id,
                    room_id=request.room_id,
                    match_id=forming.match_id,
                    seed=forming.seed,
                    roster=forming.roster,
                    config=room_config_to_plain(self.settings.room),
                    ticket_key=forming.ticket_key,
                ),
            )
        )

    def _fail_forming(self, forming: _Forming, why: str) -> None:
        del self._forming[forming.match_id]
        for pid in forming.proposal.player_ids:
            self._forming_player.pop(pid, None)
            self.out.push(pid, proto.MatchCancelled(forming.proposal.proposal_id, why, False))
        self.out.count("matches_failed")
        self.out.note("match_failed", "warning", match_id=forming.match_id, why=why)

    # --- rooms ------------------------------------------------------------------------------------

    def run_allocator(self, now: float) -> None:
        """Expire leases and requests (a scan of all of them: on the timer only)."""
        for event in self.allocator.poll(now):
            self._on_allocation(event, now)

    def _allocator_events(self, now: float) -> None:
        """Act on what a reply just caused, without the full scan."""
        for event in self.allocator.take_events():
            self._on_allocation(event, now)

    def _on_allocation(self, event: AllocationEvent, now: float) -> None:
        if isinstance(event, CreateRequest):
            forming = self._forming.get(event.match_id)
            if forming is not None:
                self._send_create(event, forming)
        elif isinstance(event, RoomAllocated):
            self._on_room_allocated(event, now)
        elif isinstance(event, AllocationFailed):
            forming = self._forming.get(event.match_id)
            if forming is not None:
                self._fail_forming(
                    forming, f"no room could be created ({event.detail or event.reason})"
                )
        elif isinstance(event, HostDied):
            self._on_host_died(event, now)
        elif isinstance(event, StrayRoom):
            self.out.note(
                "stray_room",
                "warning",
                host_id=event.host_id,
                request_id=event.request_id,
                match_id=event.match_id,
            )

    def _on_room_allocated(self, event: RoomAllocated, now: float) -> None:
        forming = self._forming.pop(event.match_id, None)
        if forming is None:
            return
        for pid in forming.proposal.player_ids:
            self._forming_player.pop(pid, None)
        record = MatchRecord(
            match_id=event.match_id,
            mode=forming.proposal.mode,
            host_id=event.host_id,
            room_id=event.room_id,
            udp_host=event.udp_address[0],
            udp_port=event.udp_address[1],
            tick_rate=self.settings.room.tick_rate,
            ticket_key=forming.ticket_key,
            roster=forming.roster,
            started_at=now,
        )
        if any(
            self._match_of.get(e.player_id, record.match_id) != record.match_id
            for e in record.roster
        ):
            self.allocator.on_match_ended(event.match_id)
            self._fail_forming(forming, "a player is already in another match")
            return
        self._release(record.match_id)
        self._hold(record)
        self.out.append(SaveMatch(record))
        self.out.count("matches_started")
        self.out.note(
            "match_started",
            match_id=record.match_id,
            host_id=record.host_id,
            room_id=record.room_id,
            players=len(record.roster),
        )

    def match_saved(self, match_id: int, now: float) -> None:
        """The store has the match: its players may be told where to play. (Told before, a
        matchmaker dying in between would leave a room the next one does not know.)"""
        record = self._matches.get(match_id)
        if record is not None:
            for entry in record.roster:
                self.send_match_ready(record, entry.player_id, now)

    def send_match_ready(self, record: MatchRecord, pid: int, now: float) -> None:
        """MATCH_READY with a fresh ticket for the player's seat, if they are online."""
        seat = record.seat(pid)
        if seat is None or not self.out.is_online(pid):
            return
        ticket, keys = issue_ticket(
            record.ticket_key,
            record.match_id,
            record.room_id,
            pid,
            seat.slot,
            now + self.settings.ticket_lifetime,
            team=seat.team,
            nonce=self._entropy(12),
            keys=ClientKeys(self._entropy(KEY_SIZE), self._entropy(KEY_SIZE)),
        )
        self.out.push(
            pid,
            proto.MatchReady(
                record.match_id,
                record.udp_host,
                record.udp_port,
                ticket,
                keys.c2s,
                keys.s2c,
                seat.slot,
                seat.team,
                record.tick_rate,
            ),
        )

    def _publish(self, host_id: str, *, registered: bool) -> None:
        info = self.registry.get(host_id)
        if info is not None:
            self.out.append(PublishHost(info, registered, self.settings.host_lease))

    def _on_host_died(self, event: HostDied, now: float) -> None:
        self.out.count("hosts_lost")
        self.out.note(
            "host_lost",
            "warning",
            host_id=event.host_id,
            reason=str(event.reason),
            matches=len(event.match_ids),
        )
        lost = set(event.match_ids)
        restarted = event.reason is HostLoss.RESTARTED
        if not restarted:
            self.out.append(RemoveHost(event.host_id))
            lost.update(m.match_id for m in self._on_host(event.host_id))
        for match_id in sorted(lost):
            record = self._matches.get(match_id)
            if record is None or record.host_id != event.host_id:
                continue
            if restarted:
                self._gone_from_host(record, now)
            else:
                self._abort(record, "the room host was lost")

    def _gone_from_host(self, record: MatchRecord, now: float) -> None:
        """The host registered without this match's room: it ended while the host was away
        (its result, which the host said it holds, comes next: one lease for it), or it died
        with the host's old process (aborted now)."""
        if record.match_id in self._results_due.get(record.host_id, ()):
            self._unclaimed[record.match_id] = (
                now + self.settings.host_lease,
                "its room host did not send the result it held",
            )
        else:
            self._abort(record, "its room host restarted")

    def _abort(self, record: MatchRecord, why: str) -> None:
        self._release(record.match_id)
        self.out.append(EndMatch(record.match_id))
        self.allocator.on_match_ended(record.match_id)
        self._unclaimed.pop(record.match_id, None)
        self.out.count("matches_aborted")
        self.out.note(
            "match_aborted", "warning", match_id=record.match_id, host_id=record.host_id, why=why
        )
        for entry in record.roster:
            self.out.push(entry.player_id, proto.MatchAborted(record.match_id, why))

    # --- room host connections --------------------------------------------------------------------

    def host_connected(self, conn: int, now: float) -> None:
        self._hosts[conn] = _Host(conn)

    def host_closed(self, conn: int, now: float) -> None:
        """The lease, not the connection, decides death: a host may reconnect in time."""
        host = self._hosts.pop(conn, None)
        if host is not None and host.host_id is not None:
            if self._host_conns.get(host.host_id) == conn:
                del self._host_conns[host.host_id]
            self.out.note("host_disconnected", host_id=host.host_id)

    def host_error(self, conn: int, exc: ControlProtocolError, now: float) -> None:
        host = self._hosts.get(conn)
        self.out.count("control_errors")
        self.out.note(
            "control_error", "warning", host_id=host.host_id if host else None, error=exc.reason
        )
        if exc.fatal:
            self.out.append(CloseControl(conn, "broken framing"))
        elif (
            exc.message_type == "room_created"
            and exc.request_id is not None
            and host
            and host.host_id
        ):
            self.allocator.on_rejected(host.host_id, exc.request_id, "bad reply", now)
            self._allocator_events(now)

    def host_message(self, conn: int, msg: ControlMessage, now: float) -> None:
        host = self._hosts.get(conn)
        if host is None:
            return
        if isinstance(msg, Register):
            self._on_register(host, msg, now)
            return
        if host.host_id is None:
            self.out.append(CloseControl(conn, "register first"))
            return
        host_id = host.host_id
        if isinstance(msg, HostHeartbeat):
            if not self.registry.heartbeat(
                host_id, msg.load, msg.rooms, msg.players, msg.draining, now
            ):
                self.out.append(CloseControl(conn, "lease expired: register again"))
            else:
                self._publish(host_id, registered=False)
                self._place_waiting(now)  # it may have a free room now
        elif isinstance(msg, RoomCreated):
            self.allocator.on_created(host_id, msg.request_id, now, (msg.udp_host, msg.udp_port))
            for event in self.allocator.take_events():
                if isinstance(event, StrayRoom) and event.match_id is not None:
                    # A late reply: the match went elsewhere. No ticket names this room, but
                    # it would wait for players until its start timeout: end it now.
                    why = "the lobby placed this match on another room"
                    self.out.append(SendControl(conn, EndRoom(msg.room_id, event.match_id, why)))
                self._on_allocation(event, now)
        elif isinstance(msg, Rejected):
            self.allocator.on_rejected(host_id, msg.request_id, msg.reason, now)
            self._allocator_events(now)
        elif isinstance(msg, RoomResult):
            self._on_result(conn, host_id, msg, now)
        elif isinstance(msg, RoomEvent):
            self.out.count(f"room_event_{msg.kind}")
            self.out.note(
                "room_event",
                "warning" if msg.kind == "desync" else "info",
                host_id=host_id,
                match_id=msg.match_id,
                kind=msg.kind,
                frame=msg.frame,
                slot=msg.slot,
                detail=msg.detail,
            )
        elif isinstance(msg, Ping):
            self.out.append(SendControl(conn, Pong(msg.nonce)))
        elif isinstance(msg, Pong):
            pass
        else:
            self.out.note("control_unexpected", "warning", host_id=host_id, type=type(msg).__name__)

    def _on_register(self, host: _Host, msg: Register, now: float) -> None:
        old = self._host_conns.get(msg.host_id)
        if old is not None and old != host.conn:
            self.out.append(CloseControl(old, "the same host registered again"))
            self._hosts.pop(old, None)
        host.host_id = msg.host_id
        self._host_conns[msg.host_id] = host.conn
        self.registry.register(
            msg.host_id, msg.udp_host, msg.udp_port, msg.capacity, msg.load, msg.rooms, now
        )
        self._publish(msg.host_id, registered=True)
        s = self.settings
        self.out.append(
            SendControl(host.conn, Registered(s.lobby_id, s.host_heartbeat_interval, s.host_lease))
        )
        self.out.count("host_registrations")
        self.out.note(
            "host_registered",
            host_id=msg.host_id,
            udp=f"{msg.udp_host}:{msg.udp_port}",
            capacity=msg.capacity,
            rooms=len(msg.rooms),
        )
        running = set(msg.rooms)
        self._results_due[msg.host_id] = set(msg.results or ())
        for record in self._on_host(msg.host_id):
            if record.room_id in running:
                self._unclaimed.pop(record.match_id, None)
            elif self.allocator.host_of(record.match_id) is None:
                self._gone_from_host(record, now)
        self.run_allocator(now)
        self._place_waiting(now)  # matches waiting for a host need not wait for the next poll

    def _on_result(self, conn: int, host_id: str, msg: RoomResult, now: float) -> None:
        record = self._matches.get(msg.match_id)
        if record is None or record.host_id != host_id or record.room_id != msg.room_id:
            self.out.count("results_unknown")  # a duplicate, or a match aborted meanwhile
            self.out.append(SendControl(conn, ResultAck(msg.match_id)))
            return
        # Held until recorded: a copy sent again meanwhile is recorded once by the store.
        self.out.append(RecordResult(conn, record, msg, now))

    def result_recorded(
        self, conn: int, record: MatchRecord, settled: Settlement, fresh: bool, now: float
    ) -> None:
        """The store has the result (``fresh``: for the first time): ack it, tell players."""
        self.out.append(SendControl(conn, ResultAck(record.match_id)))
        self.allocator.on_match_ended(record.match_id)
        if self._matches.get(record.match_id) == record:
            self._release(record.match_id)
        if not fresh:
            return
        stored = settled.stored
        self.out.count("results_recorded")
        self.out.note(
            "match_ended",
            match_id=record.match_id,
            reason=stored["reason"],
            rated=settled.rated,
            winner=stored["winner"],
            desyncs=stored["desyncs"],
        )
        for index, team in enumerate(settled.teams):
            for pid in team:
                self.out.push(
                    pid,
                    proto.MatchEnded(
                        record.match_id,
                        outcome(stored, index),
                        settled.before[pid].ordinal,
                        settled.after[pid].ordinal,
                    ),
                )

    def result_not_recorded(self, match_id: int, error: str) -> None:
        """Not acked: the host keeps the result and sends it again."""
        self.out.count("results_not_recorded")
        self.out.note("result_not_recorded", "error", match_id=match_id, error=error)

    def _random_u64(self) -> int:
        return int.from_bytes(self._entropy(8), "big")
