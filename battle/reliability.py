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

    __slots__ = ("_in_flight", "acked", "jitter", "loss", "lost", "rtt", "sent")

    def __init__(self) -> None:
        self._in_flight: dict[int, float] = {}
        self.rtt = 0.0
        self.jitter = 0.0
        self.loss = 0.0
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
        for seq in list(in_flight):
            if seq > ack:
                break  # sent after what the peer has seen: still in flight
            if seq == ack or (seq >= horizon and bits >> (ack - 1 - seq) & 1):
                del in_flight[seq]
                self.acked += 1
                self.loss -= self.loss * _LOSS_GAIN
            elif seq < horizon:
                # Older than the ack field can describe: it will never be acknowledged.
                del in_flight[seq]
                self._on_lost()

    def stats(self) -> LinkStats:
        return LinkStats(self.rtt, self.jitter, self.loss, self.sent, self.acked, self.lost)
