"""What the lobby core asks its shell to do: the core's only way to reach the world.

The shell drains `LobbyCore.take_outputs()` after every call into the core and carries each
out in order. Connection ids are the shell's; the core never sees a socket.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from battle.control import ControlMessage
from lobby.protocol import ServerMessage


@dataclass(frozen=True, slots=True)
class Send:
    """Write a message to a client connection."""

    conn: int
    message: ServerMessage


@dataclass(frozen=True, slots=True)
class Close:
    """Close a client connection once what was sent before has been written."""

    conn: int
    reason: str


@dataclass(frozen=True, slots=True)
class SendControl:
    """Write a message to a room host's control connection."""

    conn: int
    message: ControlMessage


@dataclass(frozen=True, slots=True)
class CloseControl:
    conn: int
    reason: str


@dataclass(frozen=True, slots=True)
class HashPassword:
    """Run the password KDF off the event loop, then call `LobbyCore.password_hashed`."""

    conn: int
    rid: int | None
    name: str
    password: str = field(repr=False)


@dataclass(frozen=True, slots=True)
class CheckPassword:
    """Verify off the event loop, then call `LobbyCore.password_checked`.

    `encoded` is None for an unknown name: verify against a dummy hash anyway so the answer
    takes as long as for a real account (no name probing by timing).
    """

    conn: int
    rid: int | None
    player_id: int | None
    password: str = field(repr=False)
    encoded: str | None = field(repr=False)


@dataclass(frozen=True, slots=True)
class Note:
    """Something worth a log line; `fields` are plain values."""

    event: str
    level: str = "info"
    fields: dict[str, Any] = field(default_factory=dict)


Output = Send | Close | SendControl | CloseControl | HashPassword | CheckPassword | Note


class Outbox:
    """The outputs being gathered, shared by the core's parts; also the players online."""

    def __init__(self) -> None:
        self.items: list[Output] = []
        self.counters: Counter[str] = Counter()
        self.online: dict[int, int] = {}
        """Player id -> client connection id."""

    def take(self) -> list[Output]:
        items, self.items = self.items, []
        return items

    def append(self, output: Output) -> None:
        self.items.append(output)

    def send(self, conn: int, message: ServerMessage) -> None:
        self.items.append(Send(conn, message))

    def push(self, player_id: int, message: ServerMessage) -> None:
        """Send to the player's live connection, if any (pushes to offline players are lost)."""
        conn = self.online.get(player_id)
        if conn is not None:
            self.items.append(Send(conn, message))

    def note(self, event: str, level: str = "info", **fields: Any) -> None:
        self.items.append(Note(event, level, fields))

    def count(self, name: str, n: int = 1) -> None:
        self.counters[name] += n
