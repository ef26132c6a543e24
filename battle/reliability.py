"""Acks and link estimates without retransmission timers.

Each side acknowledges the packets it received with the newest sequence number plus a
32-bit field for the 32 before it, and says how long it held the newest before acking so
the peer's RTT sample excludes that wait. Nothing is ever resent on a timer: data rides in
every packet until it is acknowledged (see room.py and client.py), so these estimates serve
monitoring and adaptive redundancy, not recovery.
"""

from __future__ import annotations

from dataclasses import dataclass

ACK_BITS = 32
_SENT_HISTORY = 256
_LOSS_GAIN = 0.05
"""EWMA gain of the loss estimate: about the last 20 packets' worth of memory."""
_HOLE_AFTER = 3
"""A packet is a hole in the ack field once this many later ones were acknowledged."""
_SLOW_LOSS_GAIN = 0.01
"""Gain of the steadier estimate (about 100 packets), which redundancy decisions also read."""


class ReceivedTracker:
    """What this side tells the peer it has received."""

    __slots__ = ("ack", "bits", "received_at")

    def __init__(self) -> None:
        self.ack = 0
        self.bits = 0
        self.received_at = 0.0

    def on_receive(self, seq: int, now: float) -> None:
        if seq > self.ack:
            shift = seq - self.ack
            if self.ack and shift <= ACK_BITS:
                self.bits = ((self.bits << shift) | (1 << (shift - 1))) & 0xFFFFFFFF
            else:
                self.bits = 0
            self.ack = seq
            self.received_at = now
        elif seq < self.ack:
            age = self.ack - seq
            if age <= ACK_BITS:
                self.bits |= 1 << (age - 1)

    def ack_delay_us(self, now: float) -> int:
        return max(0, min(0xFFFFFFFF, round((now - self.received_at) * 1_000_000)))


@dataclass(frozen=True, slots=True)
class LinkStats:
    rtt: float
    """Smoothed round-trip time in seconds (0 before the first sample)."""
    jitter: float
    """Smoothed variation of RTT samples, seconds."""
    loss: float
    """Smoothed share of packets never acknowledged, 0..1."""
    sent: int
    acked: int
    lost: int


class SentTracker:
    """Send times of our packets still in flight, turned into RTT, jitter and loss by acks.

    Only unacknowledged packets are kept (a handful: about one RTT's worth), so an ack costs
    a pass over those rather than over all 32 ack bits.
    """

    __slots__ = (
        "_in_flight",
        "acked",
        "jitter",
        "loss",
        "lost",
        "recent_loss",
        "rtt",
        "sent",
        "slow_loss",
    )

    def __init__(self) -> None:
        self._in_flight: dict[int, float] = {}
        self.rtt = 0.0
        self.jitter = 0.0
        self.loss = 0.0
        self.slow_loss = 0.0
        """Like `loss` with a longer memory: it does not dip between the losses of a link
        that keeps losing a few percent, which `loss` (20 packets) does."""
        self.recent_loss = 0.0
        """Share of the ACK_BITS packets before the newest ack that are missing although
        three later ones arrived: seen within a few packets of a loss, where `loss` and
        `lost` wait until the packet leaves the ack field."""
        self.sent = 0
        self.acked = 0
        self.lost = 0

    def on_send(self, seq: int, now: float) -> None:
        in_flight = self._in_flight
        in_flight[seq] = now
        self.sent += 1
        if len(in_flight) > _SENT_HISTORY:
            # The peer has gone quiet; forget the oldest as lost rather than grow.
            del in_flight[next(iter(in_flight))]
            self._on_lost()

    def _on_lost(self) -> None:
        self.lost += 1
        self.loss += (1.0 - self.loss) * _LOSS_GAIN
        self.slow_loss += (1.0 - self.slow_loss) * _SLOW_LOSS_GAIN

    def on_ack(self, ack: int, bits: int, ack_delay_us: int, now: float) -> None:
        in_flight = self._in_flight
        if ack <= 0 or not in_flight:
            return
        sent_at = in_flight.get(ack)
        if sent_at is not None:
            sample = max(0.0, now - sent_at - ack_delay_us / 1_000_000)
            if self.rtt == 0.0:
                self.rtt = sample
                self.jitter = sample / 2
            else:
                self.jitter += (abs(sample - self.rtt) - self.jitter) * 0.25
                self.rtt += (sample - self.rtt) * 0.125
        horizon = ack - ACK_BITS
        holes = 0
        for seq in list(in_flight):
            if seq > ack:
                break  # sent after what the peer has seen: still in flight
            if seq == ack or (seq >= horizon and bits >> (ack - 1 - seq) & 1):
                del in_flight[seq]
                self.acked += 1
                self.loss -= self.loss * _LOSS_GAIN
                if self.slow_loss:
                    self.slow_loss -= self.slow_loss * _SLOW_LOSS_GAIN
            elif seq < horizon:
                # Older than the ack field can describe: it will never be acknowledged.
                del in_flight[seq]
                self._on_lost()
            elif ack - seq >= _HOLE_AFTER:
                holes += 1
        if holes or self.recent_loss:
            self.recent_loss = holes / ACK_BITS

    def overdue(self, now: float, age: float) -> int:
        """Packets still unacknowledged that were sent more than `age` seconds ago."""
        cutoff = now - age
        count = 0
        for sent_at in self._in_flight.values():  # in send order
            if sent_at > cutoff:
                break
            count += 1
        return count

    def stats(self) -> LinkStats:
        return LinkStats(self.rtt, self.jitter, self.loss, self.sent, self.acked, self.lost)
