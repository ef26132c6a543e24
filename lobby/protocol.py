"""Lobby client protocol (game client ↔ lobby node): a sans-IO codec.

A TCP stream of frames, each a 4-byte big-endian length N (1 ≤ N ≤ MAX_LOBBY_FRAME, 64 KiB) and
N bytes of msgpack: a map whose "t" names the message type and whose other short string keys hold
its fields, framed exactly like the control channel (battle/control.py). Unknown keys are ignored;
an optional field may be absent or nil (the encoder leaves absent what is None).

Session: the client's first message is `hello`; the server answers `welcome` (its version and the
heartbeat timing) or `error` with code `unsupported_version` (see answer_hello). Every message may
carry "rid", a u32 request id the client picks; the server copies it into the answer or the
`error` for that request, so a client can match them. Pushes (kicked, match_*) carry none.

Client → server ("t": fields by wire key)

| t                | fields                                                                      |
|------------------|-----------------------------------------------------------------------------|
| hello            | ver u32 protocol version, client name, cver name (client build)             |
| register         | name player name, pw password                                               |
| register_device  | dev device id                                                               |
| login            | name, pw                                                                    |
| login_device     | dev                                                                         |
| resume           | tok bin session token (from logged_in)                                      |
| heartbeat        | n u64 nonce                                                                 |
| queue            | mode name, region name, party? [u64 player id, ...] (1–10, distinct)        |
| cancel_queue     | —                                                                           |
| accept / decline | prop u64 proposal id                                                        |
| get_rating       | —                                                                           |
| get_history      | limit 1–100                                                                 |
| logout           | —                                                                           |

Server → client

| t               | fields                                                                        |
|-----------------|-------------------------------------------------------------------------------|
| welcome         | ver u32, server name, hb s heartbeat interval, idle s idle timeout           |
| logged_in       | player u64, name, tok bin, exp unix s                                         |
| kicked          | why text (e.g. a newer login elsewhere)                                       |
| heartbeat_ack   | n u64                                                                         |
| queued          | ticket u64, mode, region, wait s estimate                                     |
| queue_cancelled | ticket u64                                                                    |
| match_proposed  | prop u64, mode, teams [[u64 player id, ...], ...], exp unix s                 |
| match_cancelled | prop u64, why text, requeued bool                                             |
| match_ready     | match u64, host name, port 1–65535, ticket bin 128, c2s bin 32, s2c bin 32,  |
|                 | slot u8, team u8, rate 1–255 tick rate                                        |
| match_aborted   | match u64, why text (the match will not finish; no rating change)             |
| match_ended     | match u64, result name, before number, after number (ratings)                 |
| rating          | mu number, sigma ≥ 0, ord number, matches u32                                 |
| history         | entries [[match, mode, result, ended_at, before, after], ...] (≤ 100)         |
| error           | code ErrorCode value, msg text, req? name of the request type                 |

name: str 1–64 chars; password and device id: str 1–256; tokens: bin 1–512; text: str ≤ 4096;
integers are msgpack ints (never booleans); numbers are finite ints or floats; seconds/times ≥ 0.

Errors: the decoder raises LobbyProtocolError carrying the ErrorCode the server should answer
with (error_for builds that answer). A bad *message* was skipped and the stream goes on;
a declared length above the cap (but at most MAX_SKIPPABLE_FRAME) is a bad message too: it
raises `too_large` and its body is discarded as it arrives, never buffered. Broken *framing*
(a length of 0 or above MAX_SKIPPABLE_FRAME, checked from the prefix before any body is kept)
raises LobbyFramingError, now and on every later call: the connection must close.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from enum import StrEnum
from typing import Any

import msgpack

from battle.streamcodec import HEADER, Check, FrameBuffer, frame, unpack_body
from battle.streamcodec import FieldError as _Invalid
from battle.streamcodec import blob as _blob
from battle.streamcodec import flag as _flag
from battle.streamcodec import show as _show
from battle.streamcodec import text as _text
from battle.streamcodec import uint as _uint
from battle.ticket import KEY_SIZE
from battle.wire import TICKET_SIZE

PROTOCOL_VERSION = 1
SUPPORTED_VERSIONS = frozenset({PROTOCOL_VERSION})
MAX_LOBBY_FRAME = 64 * 1024
"""Largest frame body in bytes the protocol allows; a server may set a lower cap."""
MAX_SKIPPABLE_FRAME = 1 << 20
"""A declared length above the cap but at most this is skipped (error too_large, the connection
survives); above it the stream cannot be ours and the connection closes."""
_U64 = (1 << 64) - 1
_U32 = (1 << 32) - 1
_MAX_NAME = 64
_MAX_SECRET = 256
_MAX_TOKEN = 512
_MAX_TEXT = 4096
_MAX_PARTY = 10
_MAX_HISTORY = 100


class ErrorCode(StrEnum):
    UNKNOWN_TYPE = "unknown_type"
    MISSING_FIELD = "missing_field"
    BAD_FIELD = "bad_field"
    """A field of the wrong type or out of range."""
    MALFORMED = "malformed"
    """The frame body is not a msgpack map, or the length prefix is 0."""
    TOO_LARGE = "too_large"
    NOT_LOGGED_IN = "not_logged_in"
    ALREADY_LOGGED_IN = "already_logged_in"
    ALREADY_QUEUED = "already_queued"
    NOT_QUEUED = "not_queued"
    NOT_IN_MATCH = "not_in_match"
    TOO_FAST = "too_fast"
    BAD_CREDENTIALS = "bad_credentials"
    NAME_TAKEN = "name_taken"
    SESSION_EXPIRED = "session_expired"
    UNSUPPORTED_VERSION = "unsupported_version"
    HELLO_REQUIRED = "hello_required"
    ON_COOLDOWN = "on_cooldown"
    """Declined or missed a ready check recently; the message says until when."""
    UNKNOWN_MODE = "unknown_mode"
    UNKNOWN_REGION = "unknown_region"
    BAD_PARTY = "bad_party"
    """A party member is not online, is busy elsewhere, or the party does not fit the mode."""
    UNKNOWN_PROPOSAL = "unknown_proposal"
    """No such ready check for this player, or it expired."""
    IN_MATCH = "in_match"
    """The player is playing a match; queue again when it ends."""
    UNAVAILABLE = "unavailable"
    """The lobby cannot serve the request now (e.g. shutting down); retry later."""
    INTERNAL = "internal"


class Role(StrEnum):
    """The side that runs a decoder: a SERVER decodes client messages, a CLIENT server ones."""

    SERVER = "server"
    CLIENT = "client"


class LobbyProtocolError(Exception):
    """A lobby message that cannot be accepted; the one error the decoder raises.

    Non-fatal unless `fatal`: the offending frame was skipped and the next call goes on.
    `request_type` and `rid` are filled in as far as they could be read, for the Error answer.
    """

    fatal = False

    def __init__(
        self,
        code: ErrorCode,
        message: str,
        request_type: str | None = None,
        rid: int | None = None,
    ) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.request_type = request_type
        self.rid = rid


class LobbyFramingError(LobbyProtocolError):
    """The length prefix is impossible: the stream is out of sync and the connection must close."""

    fatal = True


# --- messages: client → server ------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Hello:
    version: int
    client_name: str
    client_version: str
    rid: int | None = None


@dataclass(frozen=True, slots=True)
class Register:
    name: str
    password: str
    rid: int | None = None


@dataclass(frozen=True, slots=True)
class RegisterDevice:
    device_id: str
    rid: int | None = None


@dataclass(frozen=True, slots=True)
class Login:
    name: str
    password: str
    rid: int | None = None


@dataclass(frozen=True, slots=True)
class LoginDevice:
    device_id: str
    rid: int | None = None


@dataclass(frozen=True, slots=True)
class Resume:
    session_token: bytes
    rid: int | None = None


@dataclass(frozen=True, slots=True)
class Heartbeat:
    nonce: int
    rid: int | None = None


@dataclass(frozen=True, slots=True)
class Queue:
    """`party` lists every member's player id (the sender included), or None to queue alone."""

    mode: str
    region: str
    party: tuple[int, ...] | None = None
    rid: int | None = None


@dataclass(frozen=True, slots=True)
class CancelQueue:
    rid: int | None = None


@dataclass(frozen=True, slots=True)
class Accept:
    proposal_id: int
    rid: int | None = None


@dataclass(frozen=True, slots=True)
class Decline:
    proposal_id: int
    rid: int | None = None


@dataclass(frozen=True, slots=True)
class GetRating:
    rid: int | None = None


@dataclass(frozen=True, slots=True)
class GetHistory:
    limit: int
    rid: int | None = None


@dataclass(frozen=True, slots=True)
class Logout:
    rid: int | None = None


# --- messages: server → client ------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Welcome:
    version: int
    server_name: str
    heartbeat_interval: float
    idle_timeout: float
    rid: int | None = None


@dataclass(frozen=True, slots=True)
class LoggedIn:
    player_id: int
    name: str
    session_token: bytes
    expires_at: float
    rid: int | None = None


@dataclass(frozen=True, slots=True)
class Kicked:
    """The server closes this connection after it (e.g. the player logged in elsewhere)."""

    reason: str
    rid: int | None = None


@dataclass(frozen=True, slots=True)
class HeartbeatAck:
    nonce: int
    rid: int | None = None


@dataclass(frozen=True, slots=True)
class Queued:
    ticket_id: int
    mode: str
    region: str
    estimated_wait: float
    rid: int | None = None


@dataclass(frozen=True, slots=True)
class QueueCancelled:
    ticket_id: int
    rid: int | None = None


@dataclass(frozen=True, slots=True)
class MatchProposed:
    """Ready check: answer Accept/Decline before `expires_at`. `teams` hold player ids."""

    proposal_id: int
    mode: str
    teams: tuple[tuple[int, ...], ...]
    expires_at: float
    rid: int | None = None


@dataclass(frozen=True, slots=True)
class MatchCancelled:
    proposal_id: int
    reason: str
    requeued: bool
    rid: int | None = None


@dataclass(frozen=True, slots=True)
class MatchReady:
    """Where to play: the room's UDP address, the join ticket and the session keys."""

    match_id: int
    room_host: str
    room_port: int
    ticket: bytes
    c2s_key: bytes
    s2c_key: bytes
    slot: int
    team: int
    tick_rate: int
    rid: int | None = None


@dataclass(frozen=True, slots=True)
class MatchAborted:
    """The match will not finish (its room host died, or no room could be made after
    MatchReady); no rating changes. The player may queue again."""

    match_id: int
    reason: str
    rid: int | None = None


@dataclass(frozen=True, slots=True)
class MatchEnded:
    match_id: int
    result: str
    rating_before: float
    rating_after: float
    rid: int | None = None


@dataclass(frozen=True, slots=True)
class Rating:
    mu: float
    sigma: float
    ordinal: float
    matches: int
    rid: int | None = None


@dataclass(frozen=True, slots=True)
class HistoryEntry:
    match_id: int
    mode: str
    result: str
    ended_at: float
    rating_before: float
    rating_after: float


@dataclass(frozen=True, slots=True)
class History:
    entries: tuple[HistoryEntry, ...]
    rid: int | None = None


@dataclass(frozen=True, slots=True)
class Error:
    code: ErrorCode
    message: str
    request_type: str | None = None
    rid: int | None = None


ClientMessage = (
    Hello
    | Register
    | RegisterDevice
    | Login
    | LoginDevice
    | Resume
    | Heartbeat
    | Queue
    | CancelQueue
    | Accept
    | Decline
    | GetRating
    | GetHistory
    | Logout
)
ServerMessage = (
    Welcome
    | LoggedIn
    | Kicked
    | HeartbeatAck
    | Queued
    | QueueCancelled
    | MatchProposed
    | MatchCancelled
    | MatchReady
    | MatchAborted
    | MatchEnded
    | Rating
    | History
    | Error
)
Message = ClientMessage | ServerMessage


# --- field validators: each returns the value to store or raises _Invalid ---------------------


def _number(*, low: float | None) -> Check:
    def check(v: object) -> float:
        if type(v) is bool or not isinstance(v, int | float) or not math.isfinite(v):
            raise _Invalid(f"expected a finite number, got {_show(v)}")
        if low is not None and v < low:
            raise _Invalid(f"expected a number ≥ {low}, got {v}")
        return float(v)

    return check


def _array(item: Check, max_len: int, min_len: int = 0, *, distinct: bool = False) -> Check:
    def check(v: object) -> tuple[Any, ...]:
        if not isinstance(v, list | tuple) or not min_len <= len(v) <= max_len:
            raise _Invalid(f"expected an array of {min_len}..{max_len} items, got {_show(v)}")
        items = tuple(item(x) for x in v)
        if distinct and len(set(items)) != len(items):
            raise _Invalid("duplicate items")
        return items

    return check


def _error_code(v: object) -> ErrorCode:
    if type(v) is not str:
        raise _Invalid(f"expected a string, got {_show(v)}")
    try:
        return ErrorCode(v)
    except ValueError:
        raise _Invalid(f"unknown error code {v!r}") from None


_u8 = _uint(255)
_u32 = _uint(_U32)
_u64 = _uint(_U64)
_port = _uint(0xFFFF, 1)
_name = _text(_MAX_NAME, 1)
_secret = _text(_MAX_SECRET, 1)
_free = _text(_MAX_TEXT)
_token = _blob(_MAX_TOKEN, 1)
_key = _blob(KEY_SIZE, KEY_SIZE)
_any_number = _number(low=None)
_seconds = _number(low=0.0)
_positive_seconds = _number(low=1e-3)
_players = _array(_u64, _MAX_PARTY, 1, distinct=True)


def _teams(v: object) -> tuple[tuple[int, ...], ...]:
    teams: tuple[tuple[int, ...], ...] = _array(_array(_u64, 64, 1), 16, 1)(v)
    every = [p for team in teams for p in team]
    if len(set(every)) != len(every):
        raise _Invalid("a player appears twice in teams")
    return teams


_HISTORY_ROW = (_u64, _name, _name, _seconds, _any_number, _any_number)


def _history(v: object) -> tuple[HistoryEntry, ...]:
    if not isinstance(v, list | tuple) or len(v) > _MAX_HISTORY:
        raise _Invalid(f"expected an array of at most {_MAX_HISTORY} entries")
    entries = []
    for row in v:
        if not isinstance(row, list | tuple) or len(row) != len(_HISTORY_ROW):
            raise _Invalid("history entry must be [match, mode, result, ended_at, before, after]")
        entries.append(
            HistoryEntry(*(check(x) for check, x in zip(_HISTORY_ROW, row, strict=True)))
        )
    return tuple(entries)


_Spec = tuple[type[Any], tuple[tuple[str, str, Check, bool], ...]]


def _spec(cls: type[Any], **checks: Check) -> _Spec:
    """Wire keys (in field order, rid excluded) with their checks; a None default is optional."""
    attrs = [f for f in fields(cls) if f.name != "rid"]
    return cls, tuple(
        (key, f.name, check, f.default is None)
        for (key, check), f in zip(checks.items(), attrs, strict=True)
    )


# One entry per message reads as the wire spec (the tables in the module docstring).
# fmt: off
_CLIENT_SPECS: dict[str, _Spec] = {
    "hello": _spec(Hello, ver=_u32, client=_name, cver=_name),
    "register": _spec(Register, name=_name, pw=_secret),
    "register_device": _spec(RegisterDevice, dev=_secret),
    "login": _spec(Login, name=_name, pw=_secret),
    "login_device": _spec(LoginDevice, dev=_secret),
    "resume": _spec(Resume, tok=_token),
    "heartbeat": _spec(Heartbeat, n=_u64),
    "queue": _spec(Queue, mode=_name, region=_name, party=_players),
    "cancel_queue": _spec(CancelQueue),
    "accept": _spec(Accept, prop=_u64),
    "decline": _spec(Decline, prop=_u64),
    "get_rating": _spec(GetRating),
    "get_history": _spec(GetHistory, limit=_uint(_MAX_HISTORY, 1)),
    "logout": _spec(Logout),
}
_SERVER_SPECS: dict[str, _Spec] = {
    "welcome": _spec(
        Welcome, ver=_u32, server=_name, hb=_positive_seconds, idle=_positive_seconds),
    "logged_in": _spec(LoggedIn, player=_u64, name=_name, tok=_token, exp=_seconds),
    "kicked": _spec(Kicked, why=_free),
    "heartbeat_ack": _spec(HeartbeatAck, n=_u64),
    "queued": _spec(Queued, ticket=_u64, mode=_name, region=_name, wait=_seconds),
    "queue_cancelled": _spec(QueueCancelled, ticket=_u64),
    "match_proposed": _spec(MatchProposed, prop=_u64, mode=_name, teams=_teams, exp=_seconds),
    "match_cancelled": _spec(MatchCancelled, prop=_u64, why=_free, requeued=_flag),
    "match_ready": _spec(
        MatchReady, match=_u64, host=_name, port=_port, ticket=_blob(TICKET_SIZE, TICKET_SIZE),
        c2s=_key, s2c=_key, slot=_u8, team=_u8, rate=_uint(255, 1)),
    "match_aborted": _spec(MatchAborted, match=_u64, why=_free),
    "match_ended": _spec(
        MatchEnded, match=_u64, result=_name, before=_any_number, after=_any_number),
    "rating": _spec(Rating, mu=_any_number, sigma=_seconds, ord=_any_number, matches=_u32),
    "history": _spec(History, entries=_history),
    "error": _spec(Error, code=_error_code, msg=_free, req=_name),
}
# fmt: on
_SPECS_BY_ROLE = {Role.SERVER: _CLIENT_SPECS, Role.CLIENT: _SERVER_SPECS}
_TYPE_NAMES: dict[type[Any], str] = {
    cls: t for specs in (_CLIENT_SPECS, _SERVER_SPECS) for t, (cls, _) in specs.items()
}


def type_name(msg: Message) -> str:
    """The wire "t" of a message, e.g. for Error.request_type."""
    return _TYPE_NAMES[type(msg)]


def _from_map(m: object, specs: dict[str, _Spec]) -> Message:
    if type(m) is not dict:
        raise LobbyProtocolError(ErrorCode.MALFORMED, f"message must be a map, got {_show(m)}")
    rid = m.get("rid")
    valid_rid = rid if type(rid) is int and 0 <= rid <= _U32 else None
    t = m.get("t")  # the rid is read first, so that even these errors reach their request
    if t is None:
        raise LobbyProtocolError(
            ErrorCode.MISSING_FIELD, "message has no type (t)", None, valid_rid
        )
    spec = specs.get(t) if type(t) is str else None
    if spec is None:
        raise LobbyProtocolError(
            ErrorCode.UNKNOWN_TYPE, f"unknown message type {_show(t)}", None, valid_rid
        )
    cls, fields_ = spec
    if rid is not None and valid_rid is None:
        raise LobbyProtocolError(
            ErrorCode.BAD_FIELD, f"{t}.rid: expected a u32, got {_show(rid)}", t
        )
    kwargs: dict[str, Any] = {"rid": rid}
    for key, attr, check, optional in fields_:
        if key not in m and not optional:
            raise LobbyProtocolError(ErrorCode.MISSING_FIELD, f"{t}.{key}: missing", t, rid)
        v = m.get(key)
        if v is None and optional:
            kwargs[attr] = None
            continue
        try:
            kwargs[attr] = check(v)
        except _Invalid as exc:
            raise LobbyProtocolError(ErrorCode.BAD_FIELD, f"{t}.{key}: {exc}", t, rid) from None
    msg: Message = cls(**kwargs)
    return msg


def _to_plain(v: object) -> object:
    if isinstance(v, StrEnum):
        return str(v)
    if isinstance(v, HistoryEntry):
        return [getattr(v, f.name) for f in fields(v)]
    if isinstance(v, tuple):
        return [_to_plain(x) for x in v]
    return v


# --- encoder -----------------------------------------------------------------------------


def encode_message(msg: Message) -> bytes:
    """One complete frame (length prefix included).

    Raises ValueError for a message the peer's decoder would reject, so the bug shows at the
    sender instead of as an error answer from the peer; TypeError for a non-message.
    """
    t = _TYPE_NAMES.get(type(msg))
    if t is None:
        raise TypeError(f"not a lobby message: {type(msg).__name__}")
    specs = _CLIENT_SPECS if t in _CLIENT_SPECS else _SERVER_SPECS
    m: dict[str, object] = {"t": t}
    for key, attr, _, _ in specs[t][1]:
        value = getattr(msg, attr)
        if value is not None:
            m[key] = _to_plain(value)
    if msg.rid is not None:
        m["rid"] = msg.rid
    try:
        _from_map(m, specs)
    except LobbyProtocolError as exc:
        raise ValueError(f"cannot encode: {exc}") from None
    body: bytes = msgpack.packb(m, use_bin_type=True)
    if len(body) > MAX_LOBBY_FRAME:
        raise ValueError(f"{t} message is {len(body)} bytes, over {MAX_LOBBY_FRAME}")
    return frame(body)


# --- decoder -----------------------------------------------------------------------------


class LobbyDecoder:
    """Reassembles frames from stream bytes and decodes them, one message per call.

    `role` is the side running the decoder: Role.SERVER accepts only client → server types and
    Role.CLIENT only server → client ones; the other direction's types are `unknown_type`.
    """

    def __init__(self, role: Role, max_frame: int = MAX_LOBBY_FRAME) -> None:
        if not 1 <= max_frame <= MAX_LOBBY_FRAME:
            raise ValueError(f"max_frame must be in [1, {MAX_LOBBY_FRAME}]")
        self.role = role
        self._specs = _SPECS_BY_ROLE[role]
        self._frames = FrameBuffer()
        self._max = max_frame
        self._skip = 0
        """Body bytes of an oversized frame still to discard."""
        self._broken: LobbyFramingError | None = None

    @property
    def broken(self) -> bool:
        """True once framing failed; the connection must be closed."""
        return self._broken is not None

    def feed(self, data: bytes) -> None:
        """Append received bytes (b"" is fine).

        Raises LobbyFramingError once broken, including when the pending length prefix is
        impossible: then the bytes are dropped rather than buffered.
        """
        self._raise_if_broken()
        self._frames.append(data)
        self._drain_skip()
        self._check_fatal()

    def next_message(self) -> Message | None:
        """The next complete message, or None until more bytes arrive.

        Raises LobbyProtocolError for a bad message (already skipped: call again for the next),
        including `too_large` for an oversized frame, and LobbyFramingError for an impossible
        length, then on every later call.
        """
        self._raise_if_broken()
        if self._drain_skip():
            return None
        n = self._check_fatal()
        if n is None:
            return None
        if n > self._max:
            self._frames.discard(HEADER)
            self._skip = n
            self._drain_skip()
            raise LobbyProtocolError(
                ErrorCode.TOO_LARGE, f"frame of {n} bytes is over the {self._max}-byte cap"
            )
        body = self._frames.pop()
        if body is None:
            return None
        try:
            obj = unpack_body(body)
        except _Invalid as exc:
            raise LobbyProtocolError(ErrorCode.MALFORMED, f"frame is not msgpack: {exc}") from None
        return _from_map(obj, self._specs)

    def _drain_skip(self) -> bool:
        """Discard what arrived of an oversized body; True while some is still to come."""
        if self._skip:
            self._skip -= self._frames.discard(self._skip)
        return self._skip > 0

    def _check_fatal(self) -> int | None:
        """The pending length once its prefix is buffered; raises if it is impossible."""
        if self._skip:
            return None
        n = self._frames.pending_length()
        if n is None:
            return None
        if n == 0:
            self._break(ErrorCode.MALFORMED, "frame length 0")
        if n > MAX_SKIPPABLE_FRAME:
            self._break(ErrorCode.TOO_LARGE, f"frame length {n} over {MAX_SKIPPABLE_FRAME}")
        return n

    def _break(self, code: ErrorCode, message: str) -> None:
        self._broken = LobbyFramingError(code, message)
        self._frames.clear()
        self._raise_if_broken()

    def _raise_if_broken(self) -> None:
        if self._broken is not None:
            b = self._broken
            raise LobbyFramingError(b.code, b.message)


# --- helpers for the server shell ------------------------------------------------------------


def error_for(exc: LobbyProtocolError) -> Error:
    """The Error answer to a decode failure (send it; then close if exc.fatal)."""
    return Error(exc.code, exc.message[:_MAX_TEXT], exc.request_type, exc.rid)


def answer_hello(
    hello: Hello,
    *,
    server_name: str,
    heartbeat_interval: float,
    idle_timeout: float,
) -> Welcome | Error:
    """Welcome for a version this server speaks, else Error(unsupported_version)."""
    if hello.version not in SUPPORTED_VERSIONS:
        wanted = ", ".join(str(v) for v in sorted(SUPPORTED_VERSIONS))
        return Error(
            ErrorCode.UNSUPPORTED_VERSION,
            f"protocol version {hello.version} is not supported (server speaks {wanted})",
            "hello",
            hello.rid,
        )
    return Welcome(PROTOCOL_VERSION, server_name, heartbeat_interval, idle_timeout, hello.rid)
