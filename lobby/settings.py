"""Lobby settings: what an operator tunes, with defaults that suit one machine.

`LobbySettings` drives the pure core (`core.py`); `ListenSettings` the trio shell (ports, TLS,
data directory). Both come from one TOML file (`load_config`), whose sections mirror them:

```toml
[listen]        # host, client_port, control_port, data_dir, tls_cert, tls_key
[lobby]         # server_name, lobby_id, regions, heartbeat_interval, idle_timeout, ...
[matchmaker]    # interval, ready_timeout, decline_cooldown, spread_initial, ...
[[modes]]       # name, team_size, teams   (replaces the default 1v1/3v3/5v5 when given)
[hosts]         # heartbeat_interval, lease, create_timeout, create_attempts
[room]          # any RoomConfig field (tick_rate, disconnect_timeout, ...)
```

Unknown sections or keys are errors, not silently ignored: a typo in a timeout must not run a
server with the default.
"""

from __future__ import annotations

import dataclasses
import math
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from battle.config import RoomConfig
from lobby.matchmaker import DEFAULT_MODES, Mode, WideningCurve


class ConfigError(ValueError):
    """The configuration file or a setting is invalid; the message names the key."""


@dataclass(frozen=True, slots=True)
class LobbySettings:
    server_name: str = "framesync"
    lobby_id: str = "lobby-1"
    regions: tuple[str, ...] = ("local",)
    modes: tuple[Mode, ...] = DEFAULT_MODES

    # client connections
    heartbeat_interval: float = 5.0
    """Clients send a heartbeat at least this often."""
    idle_timeout: float = 30.0
    """A connection silent this long is closed."""
    max_frame: int = 16 * 1024
    """Largest client message in bytes; bigger ones get `too_large`."""
    rate: float = 20.0
    """Messages per second a connection may send on average..."""
    burst: int = 40
    """...and at once. Beyond that: `too_fast`; a connection that keeps flooding is closed."""
    session_lifetime: float = 7 * 24 * 3600.0
    ticket_lifetime: float = 120.0
    """Join tickets expire this long after MatchReady (a reconnect gets a fresh one)."""

    # matchmaking
    match_interval: float = 1.0
    ready_timeout: float = 20.0
    decline_cooldown: float = 30.0
    widening: WideningCurve = field(default_factory=WideningCurve)
    allocation_wait: float = 30.0
    """How long an accepted match may wait for a room host with a free room."""
    matchmaker_lease: float = 3.0
    """On Redis: the matchmaker lease's TTL; a dead matchmaker node is replaced within it."""

    # room hosts
    host_heartbeat_interval: float = 1.0
    host_lease: float = 5.0
    create_timeout: float = 5.0
    create_attempts: int = 3
    room: RoomConfig = field(default_factory=RoomConfig)

    def __post_init__(self) -> None:
        positive = (
            "heartbeat_interval",
            "idle_timeout",
            "rate",
            "session_lifetime",
            "ticket_lifetime",
            "ready_timeout",
            "allocation_wait",
            "matchmaker_lease",
            "host_heartbeat_interval",
            "host_lease",
            "create_timeout",
        )
        for name in positive:
            value = getattr(self, name)
            if not (isinstance(value, int | float) and math.isfinite(value) and value > 0):
                raise ConfigError(f"{name} must be a positive number, got {value!r}")
        if not self.heartbeat_interval < self.idle_timeout:
            raise ConfigError("heartbeat_interval must be shorter than idle_timeout")
        if not self.host_heartbeat_interval < self.host_lease:
            raise ConfigError("host heartbeat_interval must be shorter than the lease")
        if self.match_interval < 0 or self.decline_cooldown < 0:
            raise ConfigError("match interval and decline_cooldown must be >= 0")
        if self.burst < 1 or self.create_attempts < 1:
            raise ConfigError("burst and create_attempts must be >= 1")
        if not 64 <= self.max_frame <= 64 * 1024:
            raise ConfigError("max_frame must be in [64, 65536]")
        if not self.regions or not self.modes:
            raise ConfigError("need at least one region and one mode")
        if len({m.name for m in self.modes}) != len(self.modes):
            raise ConfigError("mode names must be unique")
        if any(m.players > 255 for m in self.modes):
            raise ConfigError("a mode may have at most 255 players (slots are one byte)")


@dataclass(frozen=True, slots=True)
class ListenSettings:
    host: str = "127.0.0.1"
    client_port: int = 7000
    control_port: int = 7001
    data_dir: Path = Path("data/lobby")
    tls_cert: Path | None = None
    tls_key: Path | None = None
    control_host: str | None = None
    """Address for the control port (default: `host`). Room hosts are trusted: keep it private."""
    redis_url: str | None = None
    """Keep accounts, ratings, results and matches in this Redis (or Valkey) instead of the
    SQLite file in `data_dir`: redis://[user:password@]host:port/db, rediss:// for TLS."""
    redis_prefix: str = "fs"
    """Every key starts with this, so several deployments can share one database."""
    node_id: str | None = None
    """This node's name among the lobby nodes sharing the Redis (default: host name and pid)."""

    def __post_init__(self) -> None:
        for name in ("client_port", "control_port"):
            port = getattr(self, name)
            if not (type(port) is int and 0 <= port <= 65535):
                raise ConfigError(f"{name} must be a port number, got {port!r}")
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ConfigError("tls_cert and tls_key go together")
        if self.redis_url is not None and not (
            isinstance(self.redis_url, str)
            and self.redis_url.startswith(("redis://", "rediss://", "unix://"))
        ):
            raise ConfigError(
                f"redis_url must start with redis://, rediss:// or unix://, got {self.redis_url!r}"
            )
        if not (
            isinstance(self.redis_prefix, str)
            and self.redis_prefix
            and all(c.isalnum() or c in "_.-" for c in self.redis_prefix)
        ):
            raise ConfigError(
                f"redis_prefix must be letters, digits, _ . or -, got {self.redis_prefix!r}"
            )


# --- TOML -------------------------------------------------------------------------------------

_LOBBY_KEYS = {
    "server_name",
    "lobby_id",
    "regions",
    "heartbeat_interval",
    "idle_timeout",
    "max_frame",
    "rate",
    "burst",
    "session_lifetime",
    "ticket_lifetime",
}
_MATCHMAKER_KEYS = {
    "interval": "match_interval",
    "ready_timeout": "ready_timeout",
    "decline_cooldown": "decline_cooldown",
    "allocation_wait": "allocation_wait",
    "lease": "matchmaker_lease",
}
_SPREAD_KEYS = {"spread_initial": "initial", "spread_per_second": "per_second", "spread_cap": "cap"}
_HOSTS_KEYS = {
    "heartbeat_interval": "host_heartbeat_interval",
    "lease": "host_lease",
    "create_timeout": "create_timeout",
    "create_attempts": "create_attempts",
}
_LISTEN_KEYS = {f.name for f in dataclasses.fields(ListenSettings)}
_SECTIONS = {"listen", "lobby", "matchmaker", "modes", "hosts", "room"}


def _table(doc: dict[str, Any], name: str) -> dict[str, Any]:
    value = doc.get(name, {})
    if not isinstance(value, dict):
        raise ConfigError(f"[{name}] must be a table")
    return value


def _unknown(section: str, table: dict[str, Any], known: set[str] | dict[str, str]) -> None:
    extra = sorted(set(table) - set(known))
    if extra:
        raise ConfigError(f"unknown key(s) in [{section}]: {', '.join(extra)}")


def parse_config(doc: dict[str, Any]) -> tuple[LobbySettings, ListenSettings]:
    """Settings from a parsed TOML document; raises ConfigError naming the bad key."""
    extra = sorted(set(doc) - _SECTIONS)
    if extra:
        raise ConfigError(f"unknown section(s): {', '.join(extra)}")
    try:
        lobby = _table(doc, "lobby")
        _unknown("lobby", lobby, _LOBBY_KEYS)
        kwargs: dict[str, Any] = dict(lobby)
        if "regions" in kwargs:
            regions = kwargs["regions"]
            if not isinstance(regions, list) or not all(isinstance(r, str) for r in regions):
                raise ConfigError("regions must be a list of names")
            kwargs["regions"] = tuple(regions)
        mm = _table(doc, "matchmaker")
        _unknown("matchmaker", mm, {**_MATCHMAKER_KEYS, **_SPREAD_KEYS})
        kwargs.update({_MATCHMAKER_KEYS[k]: v for k, v in mm.items() if k in _MATCHMAKER_KEYS})
        spread = {_SPREAD_KEYS[k]: v for k, v in mm.items() if k in _SPREAD_KEYS}
        if spread:
            kwargs["widening"] = WideningCurve(**spread)
        hosts = _table(doc, "hosts")
        _unknown("hosts", hosts, _HOSTS_KEYS)
        kwargs.update({_HOSTS_KEYS[k]: v for k, v in hosts.items()})
        if "modes" in doc:
            modes = doc["modes"]
            if not isinstance(modes, list) or not all(isinstance(m, dict) for m in modes):
                raise ConfigError("[[modes]] must be an array of tables")
            for m in modes:
                _unknown("modes", m, {"name", "team_size", "teams"})
            kwargs["modes"] = tuple(Mode(**m) for m in modes)
        room = _table(doc, "room")
        _unknown("room", room, {f.name for f in dataclasses.fields(RoomConfig)})
        kwargs["room"] = RoomConfig(**room)
        listen = dict(_table(doc, "listen"))
        _unknown("listen", listen, _LISTEN_KEYS)
        for key in ("data_dir", "tls_cert", "tls_key"):
            if key in listen:
                listen[key] = Path(listen[key])
        return LobbySettings(**kwargs), ListenSettings(**listen)
    except ConfigError:
        raise
    except (TypeError, ValueError) as exc:
        raise ConfigError(str(exc)) from None


def load_config(path: Path) -> tuple[LobbySettings, ListenSettings]:
    """Read a TOML config file; raises ConfigError (with the file name) if it is invalid."""
    try:
        with path.open("rb") as f:
            doc = tomllib.load(f)
    except OSError as exc:
        raise ConfigError(f"{path}: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: {exc}") from None
    try:
        return parse_config(doc)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None
