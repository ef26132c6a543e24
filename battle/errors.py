"""The few exception types the battle core raises, so callers can catch exactly one."""

from __future__ import annotations


class BadDatagram(Exception):
    """Network input that cannot be accepted; the only error `*_untrusted` parsers raise."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        """A short stable token used as the drop-counter key."""


class TicketRejected(Exception):
    """A join ticket that the room refuses; `reason` is the counter key."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason
