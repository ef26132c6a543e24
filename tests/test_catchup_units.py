"""battle/catchup.py as plain functions: the chunk cache, the token bucket, paced streams of frames
and snapshot chunks on a fake clock, and snapshot reassembly."""

from __future__ import annotations

import random
import zlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from battle.catchup import (
    PAYLOAD_BUDGET,
    PUMP_INTERVAL,
    AgreedSnapshot,
    CatchupStream,
    ChunkCache,
    SnapshotAssembler,
    TokenBucket,
)
from battle.frames import Frame, FrameInput
from battle.messages import (
    SNAPSHOT_CHUNK_SIZE,
    SnapshotChunk,
    decode_catchup_untrusted,
    decode_snapshot_chunk_untrusted,
    encode_frame,
    encode_snapshot_chunk,
)
from battle.wire import MAX_DATAGRAM, MAX_SEALED_BODY, SEALED_OVERHEAD

MAX_RUN = 1024
"""The cache's cap on frames per run."""


# --- frames ----------------------------------------------------------------------------------


def _frame(number: int, rng: random.Random, kind: str) -> bytes:
    """An encoded frame: empty, small and repetitive, or incompressible (random 255-byte inputs)."""
    if kind == "empty":
        return encode_frame(Frame(number))
    if kind == "small":
        inputs = tuple(FrameInput(s, number, bytes((s, number % 7)) * 4) for s in range(4))
        return encode_frame(Frame(number, inputs))
    count = {"random1": 1, "random4": 4}[kind]
    inputs = tuple(FrameInput(s, number, rng.randbytes(255)) for s in range(count))
    return encode_frame(Frame(number, inputs))


def _frames(kinds: list[str], seed: int = 0) -> list[bytes]:
    rng = random.Random(seed)
    return [_frame(i + 1, rng, kind) for i, kind in enumerate(kinds)]


KINDS = ["empty", "small", "random1", "random4"]
frame_kinds = st.lists(st.sampled_from(KINDS), min_size=1, max_size=160)


def _check_run(run: tuple[int, int, bytes], encoded: list[bytes]) -> None:
    first, count, payload = run
    assert first >= 1 and 1 <= count <= MAX_RUN
    assert first + count - 1 <= len(encoded)
    assert len(payload) <= PAYLOAD_BUDGET
    assert zlib.decompress(payload) == b"".join(encoded[first - 1 : first - 1 + count])


def _check_cache(cache: ChunkCache, encoded: list[bytes]) -> int:
    """Runs are contiguous from frame 1 and each is valid; returns the first uncached frame."""
    expected_first = 1
    for run in cache.chunks:
        assert run[0] == expected_first
        _check_run(run, encoded)
        expected_first += run[1]
    return expected_first


# --- ChunkCache ------------------------------------------------------------------------------


@settings(max_examples=40, deadline=None)
@given(frame_kinds, st.integers(min_value=0, max_value=2**32))
def test_chunk_cache_runs(kinds: list[str], seed: int) -> None:
    encoded = _frames(kinds, seed)
    cache = ChunkCache()
    cache.extend(encoded)
    end = _check_cache(cache, encoded)
    assert end <= len(encoded) + 1
    cached = list(cache.chunks)
    for frame in range(1, len(encoded) + 1):
        run = cache.chunk_at(frame, encoded)
        _check_run(run, encoded)
        if frame < end:
            assert run in cached and run[0] <= frame < run[0] + run[1]
        else:
            assert run[0] == frame  # a fresh tail run from exactly this frame
        assert cache.chunks == cached  # looking up never caches an incomplete tail
    with pytest.raises(ValueError):
        cache.chunk_at(len(encoded) + 1, encoded)


@settings(max_examples=25, deadline=None)
@given(frame_kinds, st.integers(min_value=0, max_value=2**32))
def test_chunk_cache_extend_is_idempotent_and_incremental(kinds: list[str], seed: int) -> None:
    encoded = _frames(kinds, seed)
    whole = ChunkCache()
    whole.extend(encoded)
    runs = list(whole.chunks)
    whole.extend(encoded)
    whole.extend(encoded)
    assert whole.chunks == runs
    growing = ChunkCache()
    for n in range(len(encoded) + 1):  # one frame closes at a time, as in a room
        growing.extend(encoded[:n])
        growing.extend(encoded[:n])
        _check_cache(growing, encoded[:n])
    assert growing.chunks == runs


def test_chunk_cache_cuts_runs_of_tiny_frames_at_the_frame_cap() -> None:
    encoded = _frames(["empty"] * (2 * MAX_RUN + 100))
    cache = ChunkCache()
    cache.extend(encoded)
    assert [(first, count) for first, count, _ in cache.chunks] == [
        (1, MAX_RUN),
        (MAX_RUN + 1, MAX_RUN),
    ]
    tail = cache.chunk_at(2 * MAX_RUN + 1, encoded)
    assert tail[:2] == (2 * MAX_RUN + 1, 100)
    _check_run(tail, encoded)


def test_incompressible_frames_still_fit() -> None:
    """Random inputs do not compress; runs shrink until each fits one CATCHUP datagram."""
    encoded = _frames(["random4"] * 60 + ["random1"] * 60, seed=7)
    cache = ChunkCache()
    cache.extend(encoded)
    end = _check_cache(cache, encoded)
    assert len(cache.chunks) > 30  # about one big frame per run
    for frame in range(end, len(encoded) + 1):
        _check_run(cache.chunk_at(frame, encoded), encoded)


def test_largest_frame_the_room_closes_fits_a_run() -> None:
    """The room caps a frame's encoding at FRAME_BUDGET; zlib's worst-case expansion of that
    must stay within PAYLOAD_BUDGET, and the CATCHUP body within a sealed datagram."""
    from battle.room import FRAME_BUDGET  # noqa: PLC0415 (the room's frame cap)

    rng = random.Random(3)
    encoded = [rng.randbytes(FRAME_BUDGET) for _ in range(5)]  # incompressible, full size
    cache = ChunkCache()
    cache.extend(encoded)
    for frame in range(1, 6):
        run = cache.chunk_at(frame, encoded)
        assert run[1] == 1
        assert len(run[2]) <= PAYLOAD_BUDGET


# --- TokenBucket -----------------------------------------------------------------------------


def test_token_bucket_refill_and_burst() -> None:
    bucket = TokenBucket(1_000_000.0, now=10.0)
    assert bucket.burst == 20_000.0  # 20 ms of the rate
    assert bucket.tokens == bucket.burst  # starts full
    assert bucket.refill(11.0) == bucket.burst  # capped
    bucket.tokens = -5_000.0  # a send may overdraw
    assert bucket.refill(11.002) == pytest.approx(-3_000.0)
    assert bucket.refill(11.012) == pytest.approx(7_000.0)
    assert bucket.refill(12.0) == bucket.burst
    assert bucket.refill(12.0) == bucket.burst  # no time, no tokens


def test_token_bucket_burst_floor() -> None:
    bucket = TokenBucket(10_000.0, now=0.0)
    assert bucket.burst == 4 * 1200  # at least a few datagrams, however slow the rate
    bucket.tokens = 0.0
    assert bucket.refill(0.1) == pytest.approx(1_000.0)


# --- CatchupStream: frames -------------------------------------------------------------------


def _bodies_frames(bodies: list[bytes]) -> list[tuple[int, int]]:
    out = []
    for body in bodies:
        assert len(body) <= MAX_SEALED_BODY
        msg = decode_catchup_untrusted(body)
        out.append((msg.first_frame, len(msg.frames)))
    return out


@pytest.mark.parametrize(("rate", "kind"), [(100_000.0, "random1"), (1_000_000.0, "random4")])
def test_pump_frames_paces_to_the_rate(rate: float, kind: str) -> None:
    encoded = _frames([kind] * 4000, seed=1)
    last = len(encoded)
    cache = ChunkCache()
    stream = CatchupStream(rate, 0.0, None)
    burst = stream.bucket.burst
    sent = 0
    cursor = 1
    now = 0.0
    for step in range(int(1.0 / PUMP_INTERVAL) + 1):
        now = step * PUMP_INTERVAL
        # The client acknowledges everything it was sent before this pump.
        bodies = stream.pump_frames(now, 0.05, now, cursor - 1, last, cache, encoded)
        for first, count in _bodies_frames(bodies):
            assert first <= cursor < first + count  # in order, no gap
            cursor = first + count
        assert stream.cursor == cursor
        sent += sum(len(b) + SEALED_OVERHEAD for b in bodies)
        allowed = rate * now + burst
        assert sent <= allowed + MAX_DATAGRAM, now
        assert sent >= allowed - MAX_DATAGRAM, now  # and it does use the budget
    assert cursor <= last  # it never ran out: the rate was the limit


def test_pump_frames_delivers_every_frame_in_order() -> None:
    encoded = _frames(["small", "random1", "empty", "random4"] * 150, seed=2)
    cache = ChunkCache()
    stream = CatchupStream(300_000.0, 0.0, None)
    got: list[bytes] = []
    now = 0.0
    while stream.cursor <= len(encoded):
        bodies = stream.pump_frames(now, 0.05, now, len(got), len(encoded), cache, encoded)
        for body in bodies:
            msg = decode_catchup_untrusted(body)
            assert msg.last_frame == len(encoded)
            assert msg.first_frame == len(got) + 1
            got.extend(encode_frame(f) for f in msg.frames)
        now += PUMP_INTERVAL
        assert now < 10
    assert got == encoded


def test_pump_frames_skips_what_the_client_acknowledged() -> None:
    encoded = _frames(["random1"] * 400, seed=4)
    cache = ChunkCache()
    stream = CatchupStream(20_000.0, 0.0, None)  # a few datagrams per pump at most
    first_bodies = _bodies_frames(stream.pump_frames(0.0, 0.05, 0.0, 0, 400, cache, encoded))
    assert first_bodies[0][0] == 1
    assert stream.cursor < 100
    bodies = _bodies_frames(stream.pump_frames(1.0, 0.05, 1.0, 250, 400, cache, encoded))
    assert bodies and bodies[0][0] <= 251 < bodies[0][0] + bodies[0][1]
    assert stream.cursor > 251


def _finish_pass(
    frames: int = 60, rate: float = 1e9
) -> tuple[CatchupStream, ChunkCache, list[bytes]]:
    """A stream whose first pass went out whole at t=0 (the frames fit no complete cached run)."""
    encoded = _frames(["small"] * frames)
    cache = ChunkCache()
    stream = CatchupStream(rate, 0.0, None)
    assert stream.pump_frames(0.0, 0.01, 0.0, 0, frames, cache, encoded)
    assert stream.cursor == frames + 1
    return stream, cache, encoded


@pytest.mark.parametrize("rtt", [0.0, 0.01, 0.025, 0.125, 0.5])
def test_unacknowledged_run_is_resent_after_the_wait_once_heard(rtt: float) -> None:
    stream, cache, encoded = _finish_pass()  # everything went out at t=0
    last = len(encoded)
    wait = max(0.05, 2 * rtt)
    ack = 20
    # Heard from since, but a round trip has not passed: the run may still be acknowledged.
    assert stream.pump_frames(wait * 0.99, rtt, wait / 2, ack, last, cache, encoded) == []
    # The wait has passed, but the peer has not spoken since the run went out.
    assert stream.pump_frames(wait * 3, rtt, 0.0, ack, last, cache, encoded) == []
    # Both: the run was lost; the stream goes back to the client's frame ack.
    heard = wait * 3 - 0.01
    bodies = _bodies_frames(stream.pump_frames(wait * 3, rtt, heard, ack, last, cache, encoded))
    assert bodies[0][0] == ack + 1  # the frames are not a cached run: it starts exactly there
    assert sum(count for _, count in bodies) == last - ack
    assert stream.cursor == last + 1


def test_resend_waits_exactly_the_round_trip_bound() -> None:
    stream, cache, encoded = _finish_pass()
    last = len(encoded)
    assert stream.pump_frames(0.2499, 0.125, 0.1, 0, last, cache, encoded) == []
    assert stream.pump_frames(0.25, 0.125, 0.1, 0, last, cache, encoded)  # 2 * RTT elapsed


def test_acknowledged_runs_are_never_resent() -> None:
    stream, cache, encoded = _finish_pass()
    last = len(encoded)
    for step in range(1, 100):
        now = step * PUMP_INTERVAL
        assert stream.pump_frames(now, 0.01, now, last, last, cache, encoded) == []


def test_silent_peer_gets_one_pass_then_nothing() -> None:
    stream, cache, encoded = _finish_pass()
    last = len(encoded)
    for step in range(1, 400):
        now = step * PUMP_INTERVAL
        assert stream.pump_frames(now, 0.01, 0.0, 0, last, cache, encoded) == []
    # Silent for over a second: even a new frame is not sent into the void.
    encoded.append(encode_frame(Frame(last + 1)))
    assert stream.pump_frames(2.5, 0.01, 0.0, 0, last + 1, cache, encoded) == []


def test_restart_from_inside_a_cached_run_resends_that_run() -> None:
    encoded = _frames(["random1"] * 200, seed=5)
    cache = ChunkCache()
    cache.extend(encoded)
    runs = {first: (first, count) for first, count, _ in cache.chunks}
    stream = CatchupStream(1e9, 0.0, None)
    stream.pump_frames(0.0, 0.01, 0.0, 0, 200, cache, encoded)
    stream.pump_frames(0.005, 0.01, 0.0, 0, 200, cache, encoded)
    run = next(r for r in cache.chunks if r[0] < 42 < r[0] + r[1])
    bodies = _bodies_frames(stream.pump_frames(1.0, 0.01, 0.5, 41, 200, cache, encoded))
    assert bodies[0] == runs[run[0]]  # frame 42 rides in the run that holds it
    assert bodies[-1][0] + bodies[-1][1] == 201


def test_new_frames_after_a_pass_are_sent_without_waiting() -> None:
    stream, cache, encoded = _finish_pass()
    assert stream.pump_frames(0.005, 0.01, 0.0, 0, 60, cache, encoded) == []
    encoded.append(encode_frame(Frame(61)))
    bodies = _bodies_frames(stream.pump_frames(0.01, 0.01, 0.0, 0, 61, cache, encoded))
    assert bodies == [(61, 1)]


def test_a_recent_run_is_not_resent_because_older_ones_were_acknowledged() -> None:
    stream, cache, encoded = _finish_pass()
    encoded.append(encode_frame(Frame(61)))
    assert stream.pump_frames(0.06, 0.01, 0.03, 60, 61, cache, encoded)  # frame 61 goes out
    # Frames 1-60 are acknowledged; frame 61 left 5 ms ago: too early to call it lost.
    assert stream.pump_frames(0.065, 0.01, 0.064, 60, 61, cache, encoded) == []
    # A round trip later, still unacknowledged and the peer has spoken: resend it.
    assert _bodies_frames(stream.pump_frames(0.12, 0.01, 0.11, 60, 61, cache, encoded)) == [(61, 1)]


# --- CatchupStream: snapshot -----------------------------------------------------------------


def _snapshot(size: int, seed: int = 0) -> AgreedSnapshot:
    return AgreedSnapshot(450, 0xABCDEF, random.Random(seed).randbytes(size))


@pytest.mark.parametrize("size", [1, SNAPSHOT_CHUNK_SIZE, SNAPSHOT_CHUNK_SIZE + 1, 20_000])
def test_pump_snapshot_sends_every_chunk_in_order(size: int) -> None:
    snap = _snapshot(size)
    stream = CatchupStream(1e9, 0.0, snap)
    chunks = stream.pump_snapshot(0.0, 0.01, 0.0)
    assert [c.offset for c in chunks] == list(range(0, size, SNAPSHOT_CHUNK_SIZE))
    assert b"".join(c.data for c in chunks) == snap.data
    for chunk in chunks:
        assert (chunk.frame, chunk.hash, chunk.total_size) == (snap.frame, snap.hash, size)
        body = encode_snapshot_chunk(chunk)
        assert len(body) <= MAX_SEALED_BODY
        assert decode_snapshot_chunk_untrusted(body) == chunk
    assert stream.snapshot_offset == size


def test_pump_snapshot_paces_to_the_rate() -> None:
    rate = 200_000.0
    stream = CatchupStream(rate, 0.0, _snapshot(600_000))
    burst = stream.bucket.burst
    sent = 0
    for step in range(int(1.0 / PUMP_INTERVAL) + 1):
        now = step * PUMP_INTERVAL
        chunks = stream.pump_snapshot(now, 0.05, now)
        sent += sum(len(encode_snapshot_chunk(c)) + SEALED_OVERHEAD for c in chunks)
        allowed = rate * now + burst
        assert sent <= allowed + MAX_DATAGRAM, now
        assert sent >= 0.95 * allowed - MAX_DATAGRAM, now  # the charge per chunk is a bound
    assert stream.snapshot_offset < 600_000


@pytest.mark.parametrize("rtt", [0.01, 0.2])
def test_finished_snapshot_restarts_after_the_wait_and_once_heard(rtt: float) -> None:
    snap = _snapshot(5000)
    stream = CatchupStream(1e9, 0.0, snap)
    assert len(stream.pump_snapshot(0.0, rtt, 0.0)) == 5
    wait = max(0.05, 2 * rtt)
    assert stream.pump_snapshot(1.0, rtt, 0.5) == []  # marks the end
    assert stream.pump_snapshot(1.0 + wait * 0.99, rtt, 1.001) == []
    assert stream.pump_snapshot(1.0 + wait * 2, rtt, 1.0) == []  # not heard since
    again = stream.pump_snapshot(1.0 + wait * 2, rtt, 1.001)
    assert [c.offset for c in again] == [0, 1024, 2048, 3072, 4096]
    assert b"".join(c.data for c in again) == snap.data


def test_silent_peer_gets_one_snapshot_pass() -> None:
    stream = CatchupStream(1e9, 0.0, _snapshot(3000))
    assert stream.pump_snapshot(0.0, 0.01, 0.0)
    for step in range(1, 400):
        assert stream.pump_snapshot(step * PUMP_INTERVAL, 0.01, 0.0) == []


# --- SnapshotAssembler -----------------------------------------------------------------------


def _chunks(data: bytes, frame: int = 5, hash_: int = 77) -> list[SnapshotChunk]:
    return [
        SnapshotChunk(frame, hash_, len(data), off, data[off : off + SNAPSHOT_CHUNK_SIZE])
        for off in range(0, len(data), SNAPSHOT_CHUNK_SIZE)
    ]


@settings(max_examples=60, deadline=None)
@given(
    st.integers(min_value=1, max_value=6 * SNAPSHOT_CHUNK_SIZE),
    st.randoms(use_true_random=False),
    st.integers(min_value=0, max_value=10),
)
def test_assembler_reassembles_out_of_order_and_duplicated_exactly_once(
    size: int, rng: random.Random, dupes: int
) -> None:
    data = rng.randbytes(size)
    pieces = _chunks(data)
    sequence = pieces + [rng.choice(pieces) for _ in range(dupes)]
    rng.shuffle(sequence)
    assembler = SnapshotAssembler(limit=1 << 20)
    results = []
    for index, chunk in enumerate(sequence):
        done = assembler.add(chunk)
        if done is not None:
            results.append((index, done))
    assert results == [
        (
            max(sequence.index(p) for p in pieces),  # on the last piece still missing
            AgreedSnapshot(5, 77, data),
        )
    ]
    assert assembler.complete
    for chunk in pieces:  # late duplicates change nothing
        assert assembler.add(chunk) is None
    assert assembler.complete


def test_assembler_size_limit() -> None:
    data = bytes(3000)
    assembler = SnapshotAssembler(limit=2999)
    with pytest.raises(ValueError, match="snapshot_too_large"):
        assembler.add(_chunks(data)[0])
    assert not assembler.complete
    assembler = SnapshotAssembler(limit=3000)
    results = [assembler.add(c) for c in _chunks(data)]
    assert results[-1] == AgreedSnapshot(5, 77, data)


def test_assembler_rejects_stale_and_inconsistent_chunks() -> None:
    data = bytes(range(256)) * 12
    assembler = SnapshotAssembler(limit=1 << 20)
    first, second, third = _chunks(data)
    assert assembler.add(first) is None
    with pytest.raises(ValueError, match="snapshot_stale"):
        assembler.add(_chunks(data, frame=4)[1])
    with pytest.raises(ValueError, match="snapshot_inconsistent"):
        assembler.add(_chunks(data, hash_=78)[1])
    with pytest.raises(ValueError, match="snapshot_inconsistent"):
        assembler.add(SnapshotChunk(5, 77, len(data) + 1, second.offset, second.data))
    # The rejected chunks left no trace: the real ones still complete the upload.
    assert assembler.add(second) is None
    assert assembler.add(third) == AgreedSnapshot(5, 77, data)
    with pytest.raises(ValueError, match="snapshot_stale"):
        assembler.add(_chunks(data, frame=4)[0])


@pytest.mark.parametrize(
    ("offset", "length"),
    [
        (100, 100),  # offset not on a chunk boundary
        (1023, 1),
        (0, 500),  # a short chunk that is not the last
        (2048, 400),  # the last chunk, too short
        (2048, 500),  # the last chunk, too long
    ],
)
def test_assembler_rejects_misaligned_chunks(offset: int, length: int) -> None:
    total = 2500  # chunks at 0 and 1024 (full) and 2048 (452 bytes)
    assembler = SnapshotAssembler(limit=1 << 20)
    assembler.add(SnapshotChunk(5, 77, total, 0, bytes(SNAPSHOT_CHUNK_SIZE)))
    with pytest.raises(ValueError, match="snapshot_misaligned"):
        assembler.add(SnapshotChunk(5, 77, total, offset, bytes(length)))


@pytest.mark.parametrize("offset", [1024, 4096])
def test_assembler_rejects_chunks_past_the_end(offset: int) -> None:
    """Today a full chunk where the short last one belongs grows the buffer past total_size,
    and one past the end counts as a piece, so the upload "completes" with a hole in it."""
    total = 1500
    assembler = SnapshotAssembler(limit=1 << 20)
    with pytest.raises(ValueError, match="snapshot_misaligned"):
        assembler.add(SnapshotChunk(5, 77, total, offset, bytes(SNAPSHOT_CHUNK_SIZE)))


def test_newer_frame_discards_the_older_partial_upload() -> None:
    old = random.Random(1).randbytes(3 * SNAPSHOT_CHUNK_SIZE)
    new = random.Random(2).randbytes(3 * SNAPSHOT_CHUNK_SIZE)
    assembler = SnapshotAssembler(limit=1 << 20)
    old_chunks = _chunks(old, frame=5)
    new_chunks = _chunks(new, frame=6, hash_=88)
    assert assembler.add(old_chunks[0]) is None
    assert assembler.add(old_chunks[1]) is None
    assert assembler.add(new_chunks[0]) is None  # frame 6 replaces frame 5's partial upload
    assert assembler.add(new_chunks[2]) is None  # frame 5's piece at 1024 does not count
    with pytest.raises(ValueError, match="snapshot_stale"):
        assembler.add(old_chunks[2])
    assert assembler.add(new_chunks[1]) == AgreedSnapshot(6, 88, new)
    # A newer frame after a complete one starts over too.
    newest = _chunks(b"x" * 10, frame=9, hash_=1)
    assert assembler.add(newest[0]) == AgreedSnapshot(9, 1, b"x" * 10)


def test_assembler_new_upload_of_a_different_size() -> None:
    assembler = SnapshotAssembler(limit=1 << 20)
    big = bytes(5000)
    for chunk in _chunks(big, frame=3)[:-1]:
        assembler.add(chunk)
    small = b"s" * 100
    assert assembler.add(_chunks(small, frame=4)[0]) == AgreedSnapshot(4, 77, small)
