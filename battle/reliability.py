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
    """Send times of our recent packets, turned into RTT, jitter and loss as acks arrive."""

    __slots__ = (
        "_acked_set",
        "_highest_acked",
        "_sent",
        "acked",
        "jitter",
        "loss",
        "lost",
        "rtt",
        "sent",
    )

    def __init__(self) -> None:
        self._sent: dict[int, float] = {}
        self._acked_set: set[int] = set()
        self._highest_acked = 0
        self.rtt = 0.0
        self.jitter = 0.0
        self.loss = 0.0
        self.sent = 0
        self.acked = 0
        self.lost = 0

    def on_send(self, seq: int, now: float) -> None:
        self._sent[seq] = now
        self.sent += 1
        if len(self._sent) > _SENT_HISTORY:
            oldest = next(iter(self._sent))
            self._retire(oldest)

    def _retire(self, seq: int) -> None:
        self._sent.pop(seq, None)
        if seq in self._acked_set:
            self._acked_set.discard(seq)
            return
        self.lost += 1
        self.loss += (1.0 - self.loss) * 0.05

    def on_ack(self, ack: int, bits: int, ack_delay_us: int, now: float) -> None:
        if ack <= 0:
            return
        sent_at = self._sent.get(ack)
        if sent_at is not None and ack not in self._acked_set:
            sample = max(0.0, now - sent_at - ack_delay_us / 1_000_000)
            if self.rtt == 0.0:
                self.rtt = sample
                self.jitter = sample / 2
            else:
                self.jitter += (abs(sample - self.rtt) - self.jitter) * 0.25
                self.rtt += (sample - self.rtt) * 0.125
        self._mark(ack)
        for i in range(ACK_BITS):
            if bits >> i & 1:
                self._mark(ack - 1 - i)
        self._highest_acked = max(self._highest_acked, ack)
        # Anything older than the ack field can no longer be acknowledged: settle it.
        horizon = self._highest_acked - ACK_BITS
        while self._sent:
            oldest = next(iter(self._sent))
            if oldest >= horizon:
                break
            self._retire(oldest)

    def _mark(self, seq: int) -> None:
        if seq in self._sent and seq not in self._acked_set:
            self._acked_set.add(seq)
            self.acked += 1
            self.loss -= self.loss * 0.05

    def stats(self) -> LinkStats:
        return LinkStats(self.rtt, self.jitter, self.loss, self.sent, self.acked, self.lost)
