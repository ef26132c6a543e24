"""Adaptive redundancy: spaced extra copies of fresh updates when the measured loss is high.

Every update already carries everything the peer has not acknowledged, so after a loss the
data goes again in the next regular update, one tick (or heartbeat) later. On a lossy link
that wait is what pushes latency past a few hundred milliseconds. When the loss a side
measures toward its peer (`measured_loss`) is high, it sends one or two more updates a
short spacing after each regular one: new datagrams (new sequence numbers, so the replay
window keeps them) built from the state at that moment, not repeats of the sealed bytes. No
wire format changes; a peer cannot tell a copy from any other update. Pure: time is an
argument.
"""

from __future__ import annotations

from battle.reliability import ACK_BITS, SentTracker

COPY_LOSS = 0.01
"""Measured loss at or above which each fresh update gets one spaced copy."""
SECOND_COPY_LOSS = 0.08
"""Measured loss at or above which it gets a second one."""
MIN_SPACING = 0.01
"""Copies go at least this far apart (seconds), so a short outage does not take them all."""


def measured_loss(sent: SentTracker) -> float:
    """The loss that decides: holes in the ack field raise copies within a few packets of a
    loss, the quick estimate keeps them for a while after, and the steady one keeps them
    while a link goes on losing a few percent."""
    return max(sent.recent_loss, sent.loss, sent.slow_loss)


def overdue_share(sent: SentTracker, now: float, interval: float) -> float:
    """Share of the ack field's span that the peer should have acknowledged by now and has
    not: our packets older than an RTT, the peer's send interval and four jitters. While
    the peer keeps talking, this sees a run of losses toward it at once; holes in the ack
    field (`recent_loss`) only show once a later packet gets through."""
    if sent.rtt == 0.0:
        return 0.0
    return sent.overdue(now, sent.rtt + interval + 4 * sent.jitter) / ACK_BITS


def copies_for(loss: float) -> int:
    """Extra copies per fresh update for a measured loss rate (0..1)."""
    if loss < COPY_LOSS:
        return 0
    return 1 if loss < SECOND_COPY_LOSS else 2


def copy_spacing(rtt: float, interval: float, copies: int) -> float:
    """A quarter of the RTT, at least MIN_SPACING, and all copies before the next update."""
    return min(max(MIN_SPACING, rtt / 4), interval / (copies + 1))


class CopySchedule:
    """When the next extra copy of one peer's updates is due, and how many remain."""

    __slots__ = ("due", "left", "spacing")

    def __init__(self) -> None:
        self.due: float | None = None
        self.left = 0
        self.spacing = 0.0

    def arm(
        self, now: float, sent: SentTracker, interval: float, *, overdue: float = 0.0
    ) -> float | None:
        """A fresh update just went out: plan its copies (replacing older plans, whose data
        it carries too) from the link's measured loss, or `overdue` if higher, and its RTT,
        all before the next regular update, `interval` from now. Returns when the first
        copy is due, None for none."""
        copies = copies_for(max(measured_loss(sent), overdue))
        if not copies:
            self.due = None
            self.left = 0
            return None
        self.left = copies
        self.spacing = copy_spacing(sent.rtt, interval, copies)
        self.due = now + self.spacing
        return self.due

    def take(self, now: float) -> bool:
        """True when a copy is due now; the schedule then moves to the next one."""
        due = self.due
        if due is None or now < due:
            return False
        self.left -= 1
        self.due = due + self.spacing if self.left > 0 else None
        return True

    def cancel(self) -> None:
        self.due = None
        self.left = 0
