"""Input log: round trips, truncation at every byte, corruption, writer flush cadence."""

from __future__ import annotations

import contextlib
import io
import itertools
from pathlib import Path

import msgpack
import pytest
from docvectors import load_vectors
from hypothesis import given, settings
from hypothesis import strategies as st

from battle.config import RosterEntry
from battle.frames import Frame, FrameInput
from battle.inputlog import (
    LOG_FORMAT_VERSION,
    MAGIC,
    ChecksumRecord,
    DesyncRecord,
    EndRecord,
    FrameBatch,
    InputLogError,
    InputLogWriter,
    LogContents,
    LogHeader,
    PlayerEvent,
    PlayerEventKind,
    Record,
    RecordKind,
    ResultRecord,
    encode_header,
    encode_record,
    read_log,
    read_log_file,
)

DOC = Path(__file__).resolve().parent.parent / "docs" / "INPUTLOG.md"
U64 = 2**64 - 1


def make_header(**changes: object) -> LogHeader:
    fields: dict[str, object] = {
        "match_id": 7,
        "room_id": 3,
        "seed": 0xFEDC_BA98_7654_3210,
        "tick_rate": 15,
        "roster": (RosterEntry(0, 1001, 0), RosterEntry(1, 1002, 1)),
        "config": {"tick_rate": 15, "max_duration": 3600.0, "nested": {"a": [1, None, b"x"]}},
        "server_version": "0.1.0",
        "start_time": 1_700_000_000.25,
    }
    fields.update(changes)
    return LogHeader(**fields)  # type: ignore[arg-type]


def inp(slot: int, seq: int, data: bytes = b"\x01") -> FrameInput:
    return FrameInput(slot, seq, data)


def frames_from(first: int, count: int) -> tuple[Frame, ...]:
    """Deterministic frames; every third one is empty, as in a quiet match."""
    return tuple(
        Frame(n, () if n % 3 == 0 else (inp(0, n, bytes([n % 256])), inp(1, n, b"ab")))
        for n in range(first, first + count)
    )


def realistic_records() -> list[Record]:
    return [
        PlayerEvent(0, 0, 1001, PlayerEventKind.CONNECTED),
        PlayerEvent(0, 1, 1002, PlayerEventKind.CONNECTED, ""),
        FrameBatch(1, frames_from(1, 10)),
        PlayerEvent(10, 1, 1002, PlayerEventKind.DISCONNECTED, "timeout"),
        FrameBatch(11, frames_from(11, 4)),
        ChecksumRecord(12, 0, 0xDEAD_BEEF),
        ChecksumRecord(12, 1, U64),
        PlayerEvent(14, 1, 1002, PlayerEventKind.RECONNECTED, "ticket"),
        FrameBatch(15, (Frame(15), Frame(16), Frame(17, (inp(1, 99, b""),)))),
        DesyncRecord(16, 0xAAAA, (1,), ((0, 0xAAAA), (1, 0xBBBB))),
        ResultRecord(17, {"winner_team": 0, "scores": {0: 3, 1: 1}}, (1,)),
        PlayerEvent(17, 0, 1001, PlayerEventKind.LEFT, "quit"),
        EndRecord(17, "finished"),
    ]


def encode_log(header: LogHeader, records: list[Record]) -> tuple[bytes, list[int]]:
    """The log bytes and the offset where each record ends (index 0: end of header)."""
    parts = [encode_header(header)] + [encode_record(r) for r in records]
    ends, total = [], 0
    for p in parts:
        total += len(p)
        ends.append(total)
    return b"".join(parts), ends


# --- hypothesis strategies ---------------------------------------------------------------

u64s = st.integers(0, U64)
small = st.integers(0, 2**16)
inputs = st.builds(
    FrameInput, slot=st.integers(0, 9), seq=st.integers(1, 2**32), data=st.binary(max_size=64)
)
plain_leaf = (
    st.none()
    | st.booleans()
    | st.integers(-(2**63), U64)
    | st.floats(allow_nan=False)
    | st.text(max_size=8)
    | st.binary(max_size=8)
)
plain = st.recursive(
    plain_leaf,
    lambda inner: (
        st.lists(inner, max_size=3)
        | st.dictionaries(st.text(max_size=4) | st.integers(0, 100), inner, max_size=3)
    ),
    max_leaves=8,
)
plain_maps = st.dictionaries(st.text(max_size=8), plain, max_size=4)


@st.composite
def frame_runs(draw: st.DrawFn, first: int | None = None) -> tuple[Frame, ...]:
    start = draw(st.integers(1, 2**40)) if first is None else first
    count = draw(st.integers(1, 40))
    return tuple(Frame(start + i, tuple(draw(st.lists(inputs, max_size=4)))) for i in range(count))


batches = frame_runs().map(lambda fs: FrameBatch(fs[0].number, fs))
headers = st.builds(
    LogHeader,
    match_id=u64s,
    room_id=u64s,
    seed=u64s,
    tick_rate=st.integers(1, 60),
    roster=st.lists(st.builds(RosterEntry, small, u64s, small), max_size=10).map(tuple),
    config=plain_maps,
    server_version=st.text(max_size=20),
    start_time=st.floats(allow_nan=False),
)
records: st.SearchStrategy[Record] = st.one_of(
    batches,
    st.builds(PlayerEvent, u64s, small, u64s, st.sampled_from(PlayerEventKind), st.text()),
    st.builds(ChecksumRecord, u64s, small, u64s),
    st.builds(
        DesyncRecord,
        u64s,
        u64s,
        st.lists(small, max_size=5).map(tuple),
        st.lists(st.tuples(small, u64s), max_size=5).map(tuple),
    ),
    st.builds(ResultRecord, u64s, plain_maps, st.lists(small, max_size=5).map(tuple)),
    st.builds(EndRecord, u64s, st.text()),
)


# --- round trips -------------------------------------------------------------------------


@given(headers)
def test_header_round_trip(header: LogHeader) -> None:
    log = read_log(encode_header(header))
    assert log == LogContents(header, (), False, len(encode_header(header)))
    assert log.frames() == []
    assert log.last_frame == 0


@given(records)
def test_every_record_kind_round_trips(record: Record) -> None:
    head = encode_header(make_header())
    log = read_log(head + encode_record(record))
    assert log.records == (record,)
    assert not log.truncated


def test_realistic_log_round_trip_and_frames() -> None:
    originals = realistic_records()
    data, _ = encode_log(make_header(), originals)
    log = read_log(data)
    assert log.header == make_header()
    assert list(log.records) == originals
    assert (log.truncated, log.valid_bytes) == (False, len(data))
    assert [f.number for f in log.frames()] == list(range(1, 18))
    assert log.frames()[:10] == list(frames_from(1, 10))
    assert log.last_frame == 17


def test_record_kinds_are_stable() -> None:
    assert [k.value for k in RecordKind] == [0, 1, 2, 3, 4, 5, 6]
    assert LOG_FORMAT_VERSION == 1
    assert encode_header(make_header()).startswith(b"FSYNCLOG")


def test_empty_frame_is_one_byte_inside_a_batch() -> None:
    assert encode_record(FrameBatch(1, (Frame(1),))) == bytes([0x93, 0x01, 0x01, 0x91, 0x90])
    one = encode_record(FrameBatch(5, (Frame(5),)))
    many = encode_record(FrameBatch(5, tuple(Frame(n) for n in range(5, 15))))
    assert len(many) - len(one) == 9


def test_inputs_encode_flat() -> None:
    batch = FrameBatch(3, (Frame(3, (inp(0, 1, b"\x01\x02"), inp(2, 5, b""))),))
    assert msgpack.unpackb(encode_record(batch)) == [1, 3, [[0, 1, b"\x01\x02", 2, 5, b""]]]


def test_doc_vectors_match_the_encoder() -> None:
    vectors = {k: bytes.fromhex("".join(v)) for k, v in load_vectors(DOC).items()}
    batch = FrameBatch(1, (Frame(1), Frame(2, (inp(0, 1, b"\x01\x02"), inp(1, 1, b"\x07")))))
    assert encode_record(batch) == vectors["inputlog.frame_batch"]
    checksum = ChecksumRecord(30, 1, 0xDEAD_BEEF_CAFE_F00D)
    assert encode_record(checksum) == vectors["inputlog.checksum"]
    header = make_header(
        seed=42,
        roster=(RosterEntry(0, 1001, 0), RosterEntry(1, 1002, 1)),
        config={"tick_rate": 15},
        start_time=1_700_000_000.5,
    )
    end = EndRecord(2, "finished")
    assert (
        encode_header(header) + encode_record(batch) + encode_record(end)
        == vectors["inputlog.example_log"]
    )
    assert read_log(vectors["inputlog.example_log"]).records == (batch, end)


def test_read_log_file(tmp_path: Path) -> None:
    data, _ = encode_log(make_header(), realistic_records())
    path = tmp_path / "match.fslog"
    path.write_bytes(data)
    assert read_log_file(path) == read_log(data)


# --- truncation --------------------------------------------------------------------------


def test_truncation_at_every_byte_boundary() -> None:
    originals = realistic_records()
    data, ends = encode_log(make_header(), originals)
    header_end = ends[0]
    for cut in range(len(data) + 1):
        prefix = data[:cut]
        if cut < header_end:
            with pytest.raises(InputLogError, match=r"not a framesync input log|header truncated"):
                read_log(prefix)
            continue
        log = read_log(prefix)
        complete = sum(1 for e in ends[1:] if e <= cut)
        assert list(log.records) == originals[:complete], cut
        assert log.valid_bytes == ends[complete], cut
        assert log.truncated == (cut != ends[complete]), cut


def test_short_files() -> None:
    for data in (b"", b"FSY", MAGIC, b"NOTALOG!" + encode_header(make_header())[8:]):
        with pytest.raises(InputLogError):
            read_log(data)
    with pytest.raises(InputLogError, match="header truncated"):
        read_log(MAGIC)
    with pytest.raises(InputLogError, match="not a framesync input log"):
        read_log(b"PK\x03\x04")


def test_huge_declared_length_at_the_tail_is_truncation() -> None:
    head = encode_header(make_header())
    data = head + b"\xdd\xff\xff\xff\xff"  # array32 claiming 4 billion elements
    log = read_log(data)
    assert (log.truncated, log.valid_bytes, log.records) == (True, len(head), ())


# --- corruption --------------------------------------------------------------------------


def _pack(obj: object) -> bytes:
    out: bytes = msgpack.packb(obj, use_bin_type=True)
    return out


BAD_RECORDS = {
    "unknown kind": _pack([99, 1]),
    "kind is a str": _pack(["1", 1, []]),
    "kind is a bool": _pack([True, 1, []]),
    "not an array": _pack({"kind": 1}),
    "empty array": _pack([]),
    "second header": encode_header(make_header())[8:],
    "slot is a str": _pack([3, 1, "0", 5]),
    "negative frame": _pack([6, -1, "x"]),
    "hash is a float": _pack([3, 1, 0, 1.5]),
    "hash is a bool": _pack([3, 1, 0, False]),
    "input data is a str": _pack([1, 18, [[0, 1, "text"]]]),
    "inputs not 3*n": _pack([1, 18, [[0, 1]]]),
    "frame not an array": _pack([1, 18, [7]]),
    "empty batch": _pack([1, 18, []]),
    "frame zero": _pack([1, 0, [[]]]),
    "overlapping batch": _pack([1, 17, [[]]]),
    "gap between batches": _pack([1, 20, [[]]]),
    "extra field": _pack([6, 1, "x", "extra"]),
    "missing field": _pack([3, 1, 0]),
    "unknown event kind": _pack([2, 1, 0, 5, "exploded", ""]),
    "result not a map": _pack([5, 1, [1], []]),
    "result with bytes key": _pack([5, 1, {b"k": 1}, []]),
    "desync pair of three": _pack([4, 1, 2, [], [[0, 1, 2]]]),
    "ext type": _pack([6, 1, msgpack.ExtType(5, b"x")]),
    "invalid msgpack byte": b"\xc1",
    "invalid utf-8": b"\x93\x06\x01\xa2\xff\xfe",
    "unhashable map key": b"\x94\x05\x01\x81\x91\x01\x01\x90",
}


@pytest.mark.parametrize("name", sorted(BAD_RECORDS))
def test_corrupted_middle_raises_with_offset(name: str) -> None:
    data, _ = encode_log(make_header(), realistic_records()[:-1])
    tail = encode_record(EndRecord(17, "finished"))
    with pytest.raises(InputLogError, match=f"byte offset {len(data)}"):
        read_log(data + BAD_RECORDS[name] + tail)


def test_version_too_new_raises() -> None:
    future = [0, LOG_FORMAT_VERSION + 1, "a layout this reader does not know"]
    with pytest.raises(InputLogError, match="version 2 is newer"):
        read_log(MAGIC + _pack(future))


@pytest.mark.parametrize(
    "header",
    [
        [0, 0, 1, 1, 1, 15, [], {}, "v", 0.0],
        [0, 1, 1, 1, 1, 15, [], {}, "v"],
        [0, 1, 1, 1, 1, 15, [[0, 1]], {}, "v", 0.0],
        [0, 1, 1, 1, 1, 15, [], {1: 2}, "v", 0.0],
        [0, 1, 1, 1, 1, 15, [], {}, "v", 5],
        [0, 1, 1, 1, -1, 15, [], {}, "v", 0.0],
        [0, 1, 1, 1, 1, 0, [], {}, "v", 0.0],
        [1, 1, [[]]],
        "header",
    ],
)
def test_bad_header_raises(header: object) -> None:
    with pytest.raises(InputLogError, match="byte offset 8"):
        read_log(MAGIC + _pack(header))


@settings(max_examples=300)
@given(st.data())
def test_any_corruption_gives_input_log_error_or_a_log(data: st.DataObject) -> None:
    log_bytes, _ = encode_log(make_header(), realistic_records())
    buf = bytearray(log_bytes)
    for _ in range(data.draw(st.integers(1, 4))):
        buf[data.draw(st.integers(0, len(buf) - 1))] = data.draw(st.integers(0, 255))
    cut = data.draw(st.integers(0, len(buf)))
    try:
        log = read_log(bytes(buf[:cut]))
    except InputLogError:
        return
    assert log.valid_bytes <= cut


@given(st.binary(max_size=200))
def test_random_bytes_after_magic(junk: bytes) -> None:
    with contextlib.suppress(InputLogError):
        read_log(MAGIC + junk)


# --- encoder refuses what the reader would reject ------------------------------------------


@pytest.mark.parametrize(
    "record",
    [
        ChecksumRecord(1, 0, 2**64),
        ChecksumRecord(1, True, 5),
        EndRecord(-1, "x"),
        FrameBatch(1, ()),
        FrameBatch(1, (Frame(1), Frame(3))),
        FrameBatch(2, (Frame(1),)),
        FrameBatch(1, (Frame(1, (FrameInput(0, 1, bytearray(b"x")),)),)),  # type: ignore[arg-type]
        ResultRecord(1, {"when": object()}),
        ResultRecord(1, {1: "int key at top level"}),  # type: ignore[dict-item]
        PlayerEvent(1, 0, 1, "connected"),  # type: ignore[arg-type]
        DesyncRecord(1, 1, (), ((0, 1, 2),)),  # type: ignore[arg-type]
    ],
)
def test_encoder_rejects_invalid_records(record: Record) -> None:
    with pytest.raises(ValueError):
        encode_record(record)


def nested(depth: int) -> object:
    value: object = 1
    for _ in range(depth):
        value = [value]
    return value


def test_encoder_rejects_invalid_headers() -> None:
    for bad in (
        make_header(format_version=2),
        make_header(seed=-1),
        make_header(start_time=5),
        make_header(config={"deep": nested(40)}),
    ):
        with pytest.raises(ValueError):
            encode_header(bad)


# --- writer ------------------------------------------------------------------------------


class FakeFile(io.BytesIO):
    """Counts flushes and keeps what the OS would have at each one."""

    def __init__(self) -> None:
        super().__init__()
        self.now = 0.0
        self.flushes: list[tuple[float, bytes]] = []

    def flush(self) -> None:
        self.flushes.append((self.now, self.getvalue()))


def test_writer_flush_cadence_and_crash_guarantee() -> None:
    f = FakeFile()
    f.now = t0 = 1000.0
    w = InputLogWriter(f, make_header(), t0, flush_interval=1.0, batch_frames=30)
    assert len(f.flushes) == 1
    assert read_log(f.flushes[0][1]).records == ()
    added: list[tuple[float, int]] = []
    for i in range(100):
        f.now = t0 + (i + 1) / 15
        w.add_frame(frames_from(i + 1, 1)[0], f.now)
        added.append((f.now, i + 1))
        # Whatever a kill -9 now would leave holds every frame older than flush_interval.
        _, on_disk = f.flushes[-1]
        survived = read_log(on_disk)
        assert not survived.truncated
        older = [n for t, n in added if t <= f.now - 1.0]
        assert survived.last_frame >= max(older, default=0)
        assert [fr.number for fr in survived.frames()] == list(range(1, survived.last_frame + 1))
    assert f.now - t0 == pytest.approx(100 / 15)
    times = [t for t, _ in f.flushes]
    assert len(times) >= 7
    assert all(b - a <= 1.0 + 1 / 15 + 1e-9 for a, b in itertools.pairwise(times))
    assert f.now - times[-1] < 1.0
    w.close(f.now)
    final = read_log(f.getvalue())
    assert final.frames() == list(frames_from(1, 100))
    assert next(len(r.frames) for r in final.records if isinstance(r, FrameBatch)) == 15


def test_writer_batches_without_flushing_and_keeps_log_order() -> None:
    f = FakeFile()
    w = InputLogWriter(f, make_header(), 0.0, flush_interval=1000.0, batch_frames=4)
    for n in range(1, 7):
        w.add_frame(Frame(n), 0.0)
    assert len(f.flushes) == 1  # the header only
    assert read_log(f.getvalue()).records == (FrameBatch(1, frames_from_empty(1, 4)),)
    event = PlayerEvent(6, 0, 1001, PlayerEventKind.LEFT)
    w.add(event, 0.0)
    w.add(FrameBatch(7, (Frame(7), Frame(8))), 0.0)
    w.add(EndRecord(8, "finished"), 0.0)
    w.close(0.0)
    w.close(0.0)
    assert w.closed
    assert w.last_frame == 8
    assert list(read_log(f.getvalue()).records) == [
        FrameBatch(1, frames_from_empty(1, 4)),
        FrameBatch(5, frames_from_empty(5, 2)),
        event,
        FrameBatch(7, frames_from_empty(7, 2)),
        EndRecord(8, "finished"),
    ]
    with pytest.raises(ValueError, match="closed"):
        w.add_frame(Frame(9), 0.0)


def frames_from_empty(first: int, count: int) -> tuple[Frame, ...]:
    return tuple(Frame(n) for n in range(first, first + count))


def test_writer_rejects_non_consecutive_and_invalid_frames() -> None:
    f = FakeFile()
    w = InputLogWriter(f, make_header(), 0.0)
    with pytest.raises(ValueError):
        w.add_frame(Frame(0), 0.0)
    w.add_frame(Frame(1), 0.0)
    for bad in (Frame(1), Frame(3), Frame(2, (FrameInput(-1, 1, b""),))):
        with pytest.raises(ValueError):
            w.add_frame(bad, 0.1)
    with pytest.raises(ValueError):
        w.add(FrameBatch(5, (Frame(5),)), 0.2)
    with pytest.raises(ValueError):
        w.add(ChecksumRecord(1, 0, -5), 0.2)
    assert w.last_frame == 1
    w.add_frame(Frame(2), 0.3)
    w.flush(0.3)
    assert [fr.number for fr in read_log(f.getvalue()).frames()] == [1, 2]


def test_writer_writes_nothing_for_an_invalid_header() -> None:
    f = FakeFile()
    with pytest.raises(ValueError):
        InputLogWriter(f, make_header(seed=-1), 0.0)
    assert f.getvalue() == b""


@settings(max_examples=50)
@given(frame_runs(first=1), st.integers(1, 10), st.sampled_from([0.0, 0.2, 1.0]))
def test_writer_round_trip(frames: tuple[Frame, ...], batch: int, interval: float) -> None:
    f = FakeFile()
    w = InputLogWriter(f, make_header(), 0.0, flush_interval=interval, batch_frames=batch)
    for i, fr in enumerate(frames):
        w.add_frame(fr, i / 15)
    w.close(len(frames) / 15)
    log = read_log(f.getvalue())
    assert log.frames() == list(frames)
    assert all(len(r.frames) <= batch for r in log.records if isinstance(r, FrameBatch))
