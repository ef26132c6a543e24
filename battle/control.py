"""Control channel between a room host process and the lobby: a sans-IO codec.

A TCP stream of frames, each a 4-byte big-endian length N (1 ≤ N ≤ MAX_CONTROL_FRAME) and N bytes
of msgpack: a map whose "t" names the message type and whose other short string keys hold its
fields (see docs/PROTOCOL.md, "Control channel"). Maps rather than arrays because this channel is
low-rate and must survive independent upgrades of lobby and hosts: unknown keys are ignored.

Nothing here does I/O or reads a clock. The shell feeds received bytes into a ControlDecoder and
writes what encode_message returns. A bad *message* inside a well-formed frame is reported and
skipped (the stream is still in sync); broken *framing* is fatal and the connection must close.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from enum import StrEnum
from typing import Any

import msgpack

from battle.config import RoomConfig, RosterEntry
from battle.streamcodec import Check, FrameBuffer, frame, unpack_body
from battle.streamcodec import FieldError as _Invalid
from battle.streamcodec import flag as _flag
from battle.streamcodec import optional as _optional
from battle.streamcodec import show as _show
from battle.streamcodec import str_map as _str_map
from battle.streamcodec import text as _text
from battle.streamcodec import uint as _uint

MAX_CONTROL_FRAME = 1 << 20
"""Largest frame body in bytes; a bigger declared length means the stream is not ours."""
_U64 = (1 << 64) - 1
_U32 = (1 << 32) - 1
_MAX_NAME = 256
"""Ids, host names and versions: short, so they fit log lines and keys."""
_MAX_TEXT = 4096
"""Free-text reasons and details."""
TICKET_KEY_SIZE = 32


class ControlProtocolError(Exception):
    """A control message that cannot be accepted; the one error the decoder raises.

    Non-fatal unless `fatal`: the offending frame was skipped and the next call goes on. When
    the frame was a readable map, `message_type`, `request_id` and `room_id` are filled in as far
    as they were valid, so a host can answer a bad CreateRoom with Rejected("bad_request").
    """

    fatal = False

    def __init__(
        self,
        reason: str,
        *,
        message_type: str | None = None,
        request_id: int | None = None,
        room_id: int | None = None,
    ) -> None:
        super().__init__(reason)
        self.reason = reason
        self.message_type = message_type
        self.request_id = request_id
        self.room_id = room_id


class ControlFramingError(ControlProtocolError):
    """The length prefix is impossible: the stream is out of sync and the connection must close."""

    fatal = True


class RejectReason(StrEnum):
    FULL = "full"
    DRAINING = "draining"
    DUPLICATE = "duplicate"
    BAD_REQUEST = "bad_request"
    UNAVAILABLE = "unavailable"
    """The host cannot run a room for a reason of its own (its disk, say); try another."""


class RoomEventKind(StrEnum):
    STARTED = "started"
    PLAYER_CONNECTED = "player_connected"
    PLAYER_DISCONNECTED = "player_disconnected"
    DESYNC = "desync"
    ENDED = "ended"


# --- messages ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Register:
    """Host → lobby, first on every connection. `rooms` lists rooms still running (re-adoption);
    `results` the matches whose results the host holds unacknowledged (it sends them next), so
    a lobby can tell a room that ended while the host was away from one that died with it."""

    host_id: str
    udp_host: str
    udp_port: int
    capacity: int
    load: int
    version: str
    rooms: tuple[int, ...] = ()
    results: tuple[int, ...] | None = None


@dataclass(frozen=True, slots=True)
class Registered:
    """Lobby → host: the host must heartbeat every interval; silent for `lease` s means dead."""

    lobby_id: str
    heartbeat_interval: float
    lease: float


@dataclass(frozen=True, slots=True)
class Heartbeat:
    """Host → lobby, every heartbeat interval: renews the lease and reports load."""

    load: int
    rooms: int
    players: int
    draining: bool


@dataclass(frozen=True, slots=True)
class CreateRoom:
    """Lobby → host. `config` holds RoomConfig values (room_config_to_plain)."""

    request_id: int
    room_id: int
    match_id: int
    seed: int
    roster: tuple[RosterEntry, ...]
    config: dict[str, object]
    ticket_key: bytes
    """The 32-byte AEAD key the lobby seals this room's join tickets with."""

    def room_config(self) -> RoomConfig:
        """The config as a RoomConfig (already validated when the message was decoded)."""
        return room_config_from_plain(self.config)


@dataclass(frozen=True, slots=True)
class RoomCreated:
    request_id: int
    room_id: int
    udp_host: str
    udp_port: int


@dataclass(frozen=True, slots=True)
class Rejected:
    request_id: int
    room_id: int
    reason: str
    """A RejectReason value."""


@dataclass(frozen=True, slots=True)
class RoomEvent:
    """Host → lobby: something the lobby shows or acts on; informational, may be lost."""

    room_id: int
    match_id: int
    kind: str
    """A RoomEventKind value."""
    frame: int
    slot: int | None = None
    player_id: int | None = None
    detail: str = ""


@dataclass(frozen=True, slots=True)
class RoomResult:
    """Host → lobby, at least once (resent until ResultAck); the lobby dedupes by match_id."""

    match_id: int
    room_id: int
    result: dict[str, object]
    dissenters: tuple[int, ...]
    """Slots that reported a different result."""
    frames: int
    reason: str
    desyncs: int


@dataclass(frozen=True, slots=True)
class ResultAck:
    match_id: int


@dataclass(frozen=True, slots=True)
class EndRoom:
    """Lobby → host: end this room now (the lobby will not use it, e.g. a late reply made it a
    second room for its match). Ignored unless room and match both match a running room."""

    room_id: int
    match_id: int
    reason: str


@dataclass(frozen=True, slots=True)
class Drain:
    """Lobby → host: take no new rooms; running rooms finish normally."""

    reason: str


@dataclass(frozen=True, slots=True)
class Ping:
    nonce: int


@dataclass(frozen=True, slots=True)
class Pong:
    nonce: int


ControlMessage = (
    Register
    | Registered
    | Heartbeat
    | CreateRoom
    | RoomCreated
    | Rejected
    | RoomEvent
    | RoomResult
    | ResultAck
    | EndRoom
    | Drain
    | Ping
    | Pong
)


# --- field validators: each returns the value to store or raises _Invalid ---------------------


def _number(v: object, *, positive: bool) -> float:
    if type(v) is bool or not isinstance(v, int | float) or not math.isfinite(v):
        raise _Invalid(f"expected a finite number, got {_show(v)}")
    if v < 0 or (positive and v == 0):
        raise _Invalid(f"expected a {'positive' if positive else 'non-negative'} number, got {v}")
    return float(v)


def _seconds(v: object) -> float:
    return _number(v, positive=True)


def _enum(cls: type[StrEnum]) -> Check:
    def check(v: object) -> StrEnum:
        if type(v) is not str:
            raise _Invalid(f"expected a string, got {_show(v)}")
        try:
            return cls(v)
        except ValueError:
            raise _Invalid(f"unknown value {v!r}") from None

    return check


def _array(item: Check) -> Check:
    def check(v: object) -> tuple[Any, ...]:
        if not isinstance(v, list | tuple):
            raise _Invalid(f"expected an array, got {_show(v)}")
        return tuple(item(x) for x in v)

    return check


def _key(v: object) -> bytes:
    if type(v) is not bytes or len(v) != TICKET_KEY_SIZE:
        raise _Invalid(f"expected {TICKET_KEY_SIZE} bytes, got {_show(v)}")
    return v


def _roster(v: object) -> tuple[RosterEntry, ...]:
    if not isinstance(v, list | tuple) or not 1 <= len(v) <= 256:
        raise _Invalid("expected an array of 1..256 [slot, player_id, team] entries")
    entries = []
    for e in v:
        if not isinstance(e, list | tuple) or len(e) < 3:
            raise _Invalid(f"roster entry must be [slot, player_id, team], got {_show(e)}")
        entries.append(RosterEntry(_u8(e[0]), _u64(e[1]), _u8(e[2])))
    if len({e.slot for e in entries}) != len(entries):
        raise _Invalid("duplicate slot in roster")
    return tuple(entries)


def _room_config(v: object) -> dict[str, object]:
    plain = _str_map(v)
    try:
        room_config_from_plain(plain)
    except ControlProtocolError as exc:
        raise _Invalid(exc.reason) from None
    return plain


_u8 = _uint(255)
_u32 = _uint(_U32)
_u64 = _uint(_U64)
_port = _uint(0xFFFF, 1)
_name = _text(_MAX_NAME, 1)
_free = _text(_MAX_TEXT)


_Spec = tuple[type[Any], tuple[tuple[str, str, Check, bool], ...]]


def _spec(cls: type[Any], **checks: Check) -> _Spec:
    """Wire keys (in field order) with their checks; a field defaulting to None is optional."""
    return cls, tuple(
        (key, f.name, check, f.default is None)
        for (key, check), f in zip(checks.items(), fields(cls), strict=True)
    )


# One entry per message reads as the wire spec; the keys are documented in docs/PROTOCOL.md.
# fmt: off
_SPECS: dict[str, _Spec] = {
    "register": _spec(
        Register, host=_name, uhost=_name, uport=_port, cap=_u32, load=_u32, ver=_name,
        rooms=_array(_u64), res=_optional(_array(_u64))),
    "registered": _spec(Registered, lobby=_name, hb=_seconds, lease=_seconds),
    "heartbeat": _spec(Heartbeat, load=_u32, rooms=_u32, players=_u32, drain=_flag),
    "create_room": _spec(
        CreateRoom, req=_u64, room=_u64, match=_u64, seed=_u64, roster=_roster,
        cfg=_room_config, key=_key),
    "room_created": _spec(RoomCreated, req=_u64, room=_u64, uhost=_name, uport=_port),
    "rejected": _spec(Rejected, req=_u64, room=_u64, why=_enum(RejectReason)),
    "room_event": _spec(
        RoomEvent, room=_u64, match=_u64, kind=_enum(RoomEventKind), frame=_u64,
        slot=_optional(_u8), player=_optional(_u64), detail=_free),
    "room_result": _spec(
        RoomResult, match=_u64, room=_u64, result=_str_map, dis=_array(_u8), frames=_u64,
        why=_free, desyncs=_u32),
    "result_ack": _spec(ResultAck, match=_u64),
    "end_room": _spec(EndRoom, room=_u64, match=_u64, why=_free),
    "drain": _spec(Drain, why=_free),
    "ping": _spec(Ping, n=_u64),
    "pong": _spec(Pong, n=_u64),
}
# fmt: on
_TYPE_NAMES: dict[type[Any], str] = {cls: t for t, (cls, _) in _SPECS.items()}


def _from_map(m: object) -> ControlMessage:
    if type(m) is not dict:
        raise ControlProtocolError(f"message must be a map, got {_show(m)}")
    t = m.get("t")
    spec = _SPECS.get(t) if type(t) is str else None
    if spec is None:
        raise ControlProtocolError(f"unknown message type {_show(t)}")
    cls, specs = spec
    kwargs: dict[str, Any] = {}
    for key, attr, check, optional in specs:
        try:
            if key in m:
                kwargs[attr] = check(m[key])
            elif optional:
                kwargs[attr] = None
            else:
                raise _Invalid("missing")
        except _Invalid as exc:
            raise ControlProtocolError(
                f"{t}.{key}: {exc}",
                message_type=t,
                request_id=_valid_or_none(m.get("req")),
                room_id=_valid_or_none(m.get("room")),
            ) from None
    msg: ControlMessage = cls(**kwargs)
    return msg


def _valid_or_none(v: object) -> int | None:
    return v if type(v) is int and 0 <= v <= _U64 else None


def _to_plain(v: object) -> object:
    if isinstance(v, StrEnum):
        return str(v)
    if isinstance(v, RosterEntry):
        return [v.slot, v.player_id, v.team]
    if isinstance(v, tuple):
        return [_to_plain(x) for x in v]
    return v


# --- encoder -----------------------------------------------------------------------------


def encode_message(msg: ControlMessage) -> bytes:
    """One complete frame (length prefix included).

    Raises ValueError for a message the peer's decoder would reject, so the bug shows at the
    sender instead of as a skipped message at the receiver.
    """
    t = _TYPE_NAMES.get(type(msg))
    if t is None:
        raise TypeError(f"not a control message: {type(msg).__name__}")
    m: dict[str, object] = {"t": t}
    for key, attr, _, _ in _SPECS[t][1]:
        m[key] = _to_plain(getattr(msg, attr))
    try:
        _from_map(m)
    except ControlProtocolError as exc:
        raise ValueError(f"cannot encode: {exc}") from None
    body: bytes = msgpack.packb(m, use_bin_type=True)
    if len(body) > MAX_CONTROL_FRAME:
        raise ValueError(f"{t} message is {len(body)} bytes, over {MAX_CONTROL_FRAME}")
    return frame(body)


# --- decoder -----------------------------------------------------------------------------


class ControlDecoder:
    """Reassembles frames from stream bytes and decodes them, one message per call."""

    def __init__(self, max_frame: int = MAX_CONTROL_FRAME) -> None:
        self._frames = FrameBuffer()
        self._max = max_frame
        self._broken: str | None = None

    @property
    def broken(self) -> bool:
        """True once framing failed; the connection must be closed."""
        return self._broken is not None

    def feed(self, data: bytes) -> None:
        """Append received bytes (b"" is fine). Raises ControlFramingError once broken."""
        if self._broken is not None:
            raise ControlFramingError(self._broken)
        self._frames.append(data)

    def next_message(self) -> ControlMessage | None:
        """The next complete message, or None until more bytes arrive.

        Raises ControlProtocolError for a bad message (already skipped: call again for the next)
        and ControlFramingError for an impossible length, then on every later call.
        """
        if self._broken is not None:
            raise ControlFramingError(self._broken)
        n = self._frames.pending_length()
        if n is None:
            return None
        if not 1 <= n <= self._max:
            self._broken = f"frame length {n} outside [1, {self._max}]"
            self._frames.clear()
            raise ControlFramingError(self._broken)
        body = self._frames.pop()
        if body is None:
            return None
        try:
            obj = unpack_body(body)
        except _Invalid as exc:
            raise ControlProtocolError(f"frame is not msgpack: {exc}") from None
        return _from_map(obj)


# --- room config -------------------------------------------------------------------------

_CONFIG_TYPES: dict[str, type] = {f.name: type(f.default) for f in fields(RoomConfig)}


def room_config_to_plain(config: RoomConfig) -> dict[str, object]:
    """Every RoomConfig field by name, as msgpack-able plain values."""
    return {name: getattr(config, name) for name in _CONFIG_TYPES}


def room_config_from_plain(plain: dict[str, object]) -> RoomConfig:
    """Build a RoomConfig; absent fields take defaults. Raises only ControlProtocolError.

    Unknown keys are rejected rather than ignored: a host that silently dropped a limit the
    lobby asked for would run a different game than the lobby thinks.
    """
    if type(plain) is not dict:
        raise ControlProtocolError(f"room config must be a map, got {_show(plain)}")
    values: dict[str, Any] = {}
    for name, value in plain.items():
        kind = _CONFIG_TYPES.get(name) if type(name) is str else None
        if kind is None:
            raise ControlProtocolError(f"unknown room config key {name!r}")
        try:
            values[name] = _u32(value) if kind is int else _number(value, positive=False)
        except _Invalid as exc:
            raise ControlProtocolError(f"room config {name}: {exc}") from None
    try:
        return RoomConfig(**values)
    except ValueError as exc:
        raise ControlProtocolError(f"room config: {exc}") from None
