"""Catch-up for clients far behind: compressed frame runs and agreed snapshots, paced.

A client that reconnects after minutes away (or restarts from nothing) is missing far more
frames than the live redundancy window carries. The room then streams CATCHUP datagrams:
runs of consecutive frames, zlib-compressed, built once per room and shared by every peer that
needs them. Each peer's stream is paced by a token bucket at a configured byte rate, so a
catch-up never floods the client's link or the host's socket. A client that asks for it may
instead receive the latest *agreed* snapshot (a state whose hash the majority confirmed) and
only the frames after it, so catch-up cost follows time offline, not match length.

The client acknowledges the last contiguous frame it holds in every packet (and sends one
as soon as catch-up data arrives). A run still unacknowledged a round trip plus the client's
ack interval after it left, with the peer heard from since, was lost: the stream goes back to
the first frame the peer lacks. Runs are compressed on first use, a few at a time, so the
first catch-up of a long match never stalls the host's other rooms.
"""

from __future__ import annotations

import bisect
from collections import deque
from dataclasses import dataclass

from battle.messages import (
    SNAPSHOT_CHUNK_SIZE,
    SnapshotChunk,
    compress_frames,
    encode_catchup_parts,
)
from battle.wire import MAX_SEALED_BODY, SEALED_OVERHEAD

PAYLOAD_BUDGET = MAX_SEALED_BODY - 32
"""Compressed bytes per CATCHUP datagram, leaving room for the four-field body header."""
_MAX_CHUNK_FRAMES = 1024
_RUNS_PER_CALL = 8
"""Runs compressed into the cache per lookup; beyond that a lookup builds one uncached run."""
PUMP_INTERVAL = 0.005
"""How often a room feeds its catching-up peers; small enough to pace smoothly."""
_SILENT = 1.0
"""Seconds without a word from the peer after which its stream pauses."""


class ChunkCache:
    """Complete compressed runs of closed frames; frames never change once closed."""

    __slots__ = ("_counted", "_firsts", "_next", "_pending_raw", "_ratio", "_tail", "chunks")

    def __init__(self) -> None:
        self.chunks: list[tuple[int, int, bytes]] = []
        """(first frame, frame count, zlib payload), in frame order, contiguous from frame 1."""
        self._firsts: list[int] = []
        self._next = 1
        self._counted = 0
        """Frames whose sizes are in _pending_raw (the ones from _next on)."""
        self._pending_raw = 0
        self._tail: tuple[int, int, tuple[int, int, bytes]] | None = None
        """The last tail run built: (from frame, last frame then, run), shared by peers."""
        self._ratio = 3.0
        """Recent raw:compressed ratio, so a run is usually right on the first compression."""

    @property
    def _raw_target(self) -> int:
        return int(PAYLOAD_BUDGET * self._ratio * 0.95)

    def _build(
        self, encoded: list[bytes], first: int, *, complete_only: bool
    ) -> tuple[int, bytes] | None:
        """Frames from `first` that fit one datagram compressed: (count, payload)."""
        last = len(encoded)
        target = self._raw_target
        count = 0
        raw = 0
        while first + count <= last and count < _MAX_CHUNK_FRAMES:
            size = len(encoded[first + count - 1])
            if count and raw + size > target:
                break
            raw += size
            count += 1
        if count == 0:
            return None
        if complete_only and first + count > last and count < _MAX_CHUNK_FRAMES:
            return None  # ran out of frames: the run is not full yet
        while True:
            payload = compress_frames(encoded[first - 1 : first - 1 + count])
            if len(payload) <= PAYLOAD_BUDGET or count == 1:
                if complete_only and payload:
                    raw = sum(map(len, encoded[first - 1 : first - 1 + count]))
                    self._ratio = min(8.0, max(1.0, (self._ratio + raw / len(payload)) / 2))
                return count, payload
            count = max(1, min(count - 1, int(count * PAYLOAD_BUDGET / len(payload) * 0.9)))

    def extend(self, encoded: list[bytes], limit: int | None = None) -> None:
        """Cache runs that are now complete, at most `limit` of them (cheap when none is:
        frame sizes are summed once)."""
        for size in map(len, encoded[max(self._counted, self._next - 1) :]):
            self._pending_raw += size
        self._counted = len(encoded)
        pending = len(encoded) - self._next + 1
        if self._pending_raw <= self._raw_target and pending < _MAX_CHUNK_FRAMES:
            return
        built_runs = 0
        while limit is None or built_runs < limit:
            built_runs += 1
            built = self._build(encoded, self._next, complete_only=True)
            if built is None:
                break
            count, payload = built
            self.chunks.append((self._next, count, payload))
            self._firsts.append(self._next)
            self._pending_raw -= sum(map(len, encoded[self._next - 1 : self._next - 1 + count]))
            self._next += count

    def chunk_at(self, frame: int, encoded: list[bytes]) -> tuple[int, int, bytes]:
        """The cached run holding `frame`, or a fresh tail run from `frame` (not cached)."""
        if frame >= self._next:
            self.extend(encoded, _RUNS_PER_CALL)
        if frame < self._next:
            i = bisect.bisect_right(self._firsts, frame) - 1
            return self.chunks[i]
        tail = self._tail
        if tail is not None and tail[0] == frame and tail[1] == len(encoded):
            return tail[2]
        built = self._build(encoded, frame, complete_only=False)
        if built is None:
            raise ValueError(f"frame {frame} is not closed yet")
        run = (frame, built[0], built[1])
        self._tail = (frame, len(encoded), run)
        return run


@dataclass(frozen=True, slots=True)
class AgreedSnapshot:
    frame: int
    hash: int
    data: bytes


class TokenBucket:
    """Bytes per second with a small burst; a send may overdraw, which delays the next."""

    __slots__ = ("_at", "burst", "rate", "tokens")

    def __init__(self, rate: float, now: float) -> None:
        self.rate = rate
        self.burst = max(rate * 0.02, 4 * 1200)
        self.tokens = self.burst
        self._at = now

    def refill(self, now: float) -> float:
        self.tokens = min(self.burst, self.tokens + (now - self._at) * self.rate)
        self._at = now
        return self.tokens


class CatchupStream:
    """One peer's catch-up: which frame (or snapshot byte) goes next, at what pace.

    Runs in flight are remembered with their send time. When the oldest one is still not
    acknowledged a round trip (at least 50 ms) plus the client's ack interval after it was
    sent, and the peer has spoken since, it was lost: the stream goes back to the first
    frame the peer lacks. A peer that stops talking is sent nothing more, so a stream never
    pours into a dead link.
    """

    __slots__ = (
        "_inflight",
        "_pass_done_at",
        "ack_interval",
        "bucket",
        "budget",
        "cursor",
        "snapshot",
        "snapshot_offset",
    )

    def __init__(
        self,
        rate: float,
        now: float,
        snapshot: AgreedSnapshot | None,
        *,
        ack_interval: float = 0.0,
        budget: float = float("inf"),
    ) -> None:
        self.ack_interval = ack_interval
        """Longest a client may take to acknowledge (it acks at least once per tick)."""
        self.budget = budget
        """Bytes this episode may still send: a peer that never advances its ack (whether
        broken or abusive) cannot pull the whole history from the host again and again."""
        self.bucket = TokenBucket(rate, now)
        self.cursor = 0
        self.snapshot = snapshot
        """Sent first, when the client asked for it; None streams frames only."""
        self.snapshot_offset = 0
        self._pass_done_at: float | None = None
        self._inflight: deque[tuple[int, float]] = deque()
        """(last frame of a run, when it was sent), oldest first."""

    def _patience(self, rtt: float) -> float:
        """How long an unacknowledged run may be in flight before it counts as lost."""
        return max(0.05, 2 * rtt) + self.ack_interval

    def pump_snapshot(self, now: float, rtt: float, heard_at: float) -> list[SnapshotChunk]:
        """Snapshot chunks to send now. The client acknowledges only the whole snapshot (its
        frame_ack jumps to the snapshot's frame), so a finished pass starts over after a round
        trip if the peer has spoken since and still lacks it."""
        snap = self.snapshot
        assert snap is not None
        out: list[SnapshotChunk] = []
        size = len(snap.data)
        if now - heard_at > _SILENT or self.budget <= 0:
            return out
        if self.snapshot_offset >= size:
            if self._pass_done_at is None:
                self._pass_done_at = now
            done_at = self._pass_done_at
            if now - done_at < self._patience(rtt) or heard_at <= done_at:
                return out
            self._pass_done_at = None
            self.snapshot_offset = 0
        bucket = self.bucket
        bucket.refill(now)
        while bucket.tokens > 0 and self.snapshot_offset < size:
            offset = self.snapshot_offset
            piece = snap.data[offset : offset + SNAPSHOT_CHUNK_SIZE]
            out.append(SnapshotChunk(snap.frame, snap.hash, size, offset, piece))
            bucket.tokens -= len(piece) + 40 + SEALED_OVERHEAD
            self.budget -= len(piece) + 40 + SEALED_OVERHEAD
            self.snapshot_offset = offset + len(piece)
        return out

    def pump_frames(
        self,
        now: float,
        rtt: float,
        heard_at: float,
        frame_ack: int,
        last_frame: int,
        cache: ChunkCache,
        encoded: list[bytes],
    ) -> list[bytes]:
        """CATCHUP bodies to send now, within this peer's byte budget."""
        out: list[bytes] = []
        if now - heard_at > _SILENT or self.budget <= 0:
            return out
        inflight = self._inflight
        while inflight and inflight[0][0] <= frame_ack:
            inflight.popleft()
        if inflight:
            sent_at = inflight[0][1]
            if now - sent_at >= self._patience(rtt) and heard_at > sent_at:
                inflight.clear()  # a run was lost: go back to the first frame the peer lacks
                self.cursor = frame_ack + 1
        self.cursor = max(self.cursor, frame_ack + 1)
        bucket = self.bucket
        bucket.refill(now)
        while bucket.tokens > 0 and self.cursor <= last_frame:
            first, count, payload = cache.chunk_at(self.cursor, encoded)
            body = encode_catchup_parts(first, count, last_frame, payload)
            out.append(body)
            bucket.tokens -= len(body) + SEALED_OVERHEAD
            self.budget -= len(body) + SEALED_OVERHEAD
            self.cursor = first + count
            inflight.append((self.cursor - 1, now))
        return out


class SnapshotAssembler:
    """Reassembles one client's snapshot upload; a newer frame discards an older one."""

    __slots__ = ("_buffer", "_have", "frame", "hash", "limit", "total")

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.frame = 0
        self.hash = 0
        self.total = 0
        self._buffer = bytearray()
        self._have: set[int] = set()

    def add(self, chunk: SnapshotChunk) -> AgreedSnapshot | None:
        """Returns the whole snapshot when its last missing chunk arrives; else None.

        Raises ValueError for chunks that break the rules (too large, inconsistent).
        """
        if chunk.total_size > self.limit:
            raise ValueError("snapshot_too_large")
        if chunk.frame < self.frame:
            raise ValueError("snapshot_stale")
        if chunk.frame > self.frame:
            self.frame, self.hash, self.total = chunk.frame, chunk.hash, chunk.total_size
            self._buffer = bytearray(chunk.total_size)
            self._have = set()
        elif chunk.hash != self.hash or chunk.total_size != self.total:
            raise ValueError("snapshot_inconsistent")
        if (
            chunk.offset + len(chunk.data) > self.total
            or chunk.offset % SNAPSHOT_CHUNK_SIZE
            or (
                len(chunk.data) != SNAPSHOT_CHUNK_SIZE
                and chunk.offset + len(chunk.data) != self.total
            )
        ):
            raise ValueError("snapshot_misaligned")
        pieces = -(-self.total // SNAPSHOT_CHUNK_SIZE)
        if chunk.offset in self._have or len(self._have) == pieces:
            return None
        self._buffer[chunk.offset : chunk.offset + len(chunk.data)] = chunk.data
        self._have.add(chunk.offset)
        if len(self._have) == pieces:
            return AgreedSnapshot(self.frame, self.hash, bytes(self._buffer))
        return None

    @property
    def complete(self) -> bool:
        if not self.total:
            return False
        return len(self._have) == -(-self.total // SNAPSHOT_CHUNK_SIZE)
