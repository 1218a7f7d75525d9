"""RecordDeserializer: records back from any chunking, spilling, corrupt bytes."""

from __future__ import annotations

import itertools
import math
import os
import random
import struct
import tracemalloc
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TypeVar

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from penstock.buffer.buffer import Buffer
from penstock.errors import CorruptRecordError, SerializationError
from penstock.memory.segment import MemorySegment
from penstock.serialization._frames import _complete_payloads, _equal_frames_struct
from penstock.serialization.record_deserializer import (
    DEFAULT_SPILL_THRESHOLD,
    RecordDeserializer,
)
from penstock.serialization.types import (
    BytesSerializer,
    GenericSerializer,
    IntSerializer,
    StrSerializer,
    TypeSerializer,
)

T = TypeVar("T")

CHANNEL = "channel 3 (subpartition 3 of test-partition) of test-task"
INT64 = st.integers(min_value=-(2**63), max_value=2**63 - 1)


def frame(payload: bytes) -> bytes:
    return struct.pack(">i", len(payload)) + payload


def frames_of(serializer: TypeSerializer[T], records: Sequence[T]) -> bytes:
    """The channel bytes of ``records``, framed one by one as the writer frames them."""
    return b"".join(frame(serializer.serialize(record)) for record in records)


def chunks_of(data: bytes, size: int) -> list[bytes]:
    return [data[start : start + size] for start in range(0, len(data), size)]


def cut(data: bytes, points: Sequence[int]) -> list[bytes]:
    """``data`` cut at ``points`` (any order, duplicates give empty chunks)."""
    bounds = [0, *sorted(point % (len(data) + 1) for point in points), len(data)]
    return [data[start:stop] for start, stop in itertools.pairwise(bounds)]


def read_all(deserializer: RecordDeserializer[T], chunks: Sequence[bytes]) -> list[T]:
    records: list[T] = []
    for chunk in chunks:
        records += deserializer.read(chunk)
    deserializer.check_end()
    return records


def pattern(size: int, seed: int) -> bytes:
    return random.Random(seed).randbytes(size)


def assert_same(actual: object, expected: object) -> None:
    """Equal and of the same type, all the way down (``True == 1`` is not enough)."""
    assert type(actual) is type(expected), (actual, expected)
    if isinstance(expected, tuple):
        assert isinstance(actual, tuple)
        assert len(actual) == len(expected)
        for inner_actual, inner_expected in zip(actual, expected, strict=True):
            assert_same(inner_actual, inner_expected)
    elif isinstance(expected, float) and math.isnan(expected):
        assert isinstance(actual, float)
        assert math.isnan(actual)
    else:
        assert actual == expected


# -- round trips (hypothesis) ----------------------------------------------------------------


@st.composite
def byte_records(draw: st.DrawFn, buffer_size: int) -> list[bytes]:
    """Records from 0 bytes to about three buffers, cheap to build at any size."""
    sizes = draw(
        st.lists(
            st.one_of(
                st.integers(0, 8),
                st.integers(0, 3 * buffer_size),
                st.sampled_from([max(0, buffer_size - 4), buffer_size, buffer_size + 1]),
            ),
            max_size=12,
        )
    )
    seed = draw(st.integers(0, 2**16))
    return [pattern(size, seed + index) for index, size in enumerate(sizes)]


@given(data=st.data(), buffer_size=st.integers(1, 4096))
def test_bytes_round_trip_in_buffer_sized_chunks(data: st.DataObject, buffer_size: int) -> None:
    records = data.draw(byte_records(buffer_size))
    serializer = BytesSerializer()
    deserializer = RecordDeserializer(serializer, channel=CHANNEL)
    chunks = chunks_of(frames_of(serializer, records), buffer_size)
    assert read_all(deserializer, chunks) == records
    assert not deserializer.has_partial_record


@given(data=st.data(), buffer_size=st.integers(1, 512))
def test_bytes_round_trip_in_arbitrary_chunks(data: st.DataObject, buffer_size: int) -> None:
    records = data.draw(byte_records(buffer_size))
    serializer = BytesSerializer()
    encoded = frames_of(serializer, records)
    points = data.draw(st.lists(st.integers(0, len(encoded)), max_size=40))
    deserializer = RecordDeserializer(serializer, channel=CHANNEL)
    assert read_all(deserializer, cut(encoded, points)) == records


@given(
    records=st.lists(INT64, max_size=1100),
    buffer_size=st.integers(1, 4096),
)
def test_int_round_trip_through_the_fixed_size_path(records: list[int], buffer_size: int) -> None:
    # Up to ~3 buffers of 12-byte frames at the larger sizes; runs of 16+ complete frames
    # take the bulk (numpy) path, shorter runs and split frames the others.
    serializer = IntSerializer()
    deserializer = RecordDeserializer(serializer, channel=CHANNEL)
    chunks = chunks_of(frames_of(serializer, records), buffer_size)
    decoded = read_all(deserializer, chunks)
    assert decoded == records
    assert all(type(value) is int for value in decoded)


@given(data=st.data(), buffer_size=st.integers(1, 64))
def test_int_round_trip_in_arbitrary_chunks(data: st.DataObject, buffer_size: int) -> None:
    records = data.draw(st.lists(INT64, max_size=60))
    serializer = IntSerializer()
    encoded = frames_of(serializer, records)
    points = data.draw(st.lists(st.integers(0, len(encoded)), max_size=30))
    deserializer = RecordDeserializer(serializer, channel=CHANNEL)
    assert read_all(deserializer, cut(encoded, points)) == records


def generic_values(buffer_size: int) -> st.SearchStrategy[object]:
    scalars: st.SearchStrategy[object] = st.one_of(
        st.none(),
        st.booleans(),
        st.integers(),  # beyond int64 too: those go through pickle
        st.floats(allow_nan=False),
        st.text(max_size=20),
        st.binary(max_size=20),
    )
    large: st.SearchStrategy[object] = st.builds(
        pattern, st.integers(0, 3 * buffer_size), st.integers(0, 100)
    )
    leaves = st.one_of(scalars, large)
    return st.one_of(
        leaves,
        st.tuples(st.text(max_size=10), st.integers()),
        st.recursive(leaves, lambda inner: st.lists(inner, max_size=4).map(tuple), max_leaves=6),
        st.frozensets(st.integers(), max_size=4),  # pickled
    )


@given(data=st.data(), buffer_size=st.integers(1, 4096))
@settings(max_examples=150)
def test_generic_round_trip(data: st.DataObject, buffer_size: int) -> None:
    records = data.draw(st.lists(generic_values(buffer_size), max_size=10))
    serializer = GenericSerializer()
    deserializer = RecordDeserializer(serializer, channel=CHANNEL)
    decoded = read_all(deserializer, chunks_of(frames_of(serializer, records), buffer_size))
    assert len(decoded) == len(records)
    for actual, expected in zip(decoded, records, strict=True):
        assert_same(actual, expected)


@given(data=st.data(), buffer_size=st.integers(1, 4096))
def test_bulk_frames_read_like_single_frames(data: st.DataObject, buffer_size: int) -> None:
    # What emit_batch writes (serialize_frames) reads back like what emit writes.
    serializer = GenericSerializer()
    records = data.draw(st.lists(st.tuples(st.text(max_size=8), st.integers(0, 10)), max_size=50))
    deserializer = RecordDeserializer(serializer, channel=CHANNEL)
    bulk = serializer.serialize_frames(records)
    assert read_all(deserializer, chunks_of(bulk, buffer_size)) == records


def test_str_records_split_inside_a_multibyte_character() -> None:
    serializer = StrSerializer()
    records = ["żółw", "", "日本語テキスト" * 3]
    encoded = frames_of(serializer, records)
    for size in range(1, len(encoded) + 1):
        deserializer = RecordDeserializer(serializer, channel=CHANNEL)
        assert read_all(deserializer, chunks_of(encoded, size)) == records


def test_one_byte_chunks_keep_a_split_length_prefix() -> None:
    serializer = BytesSerializer()
    deserializer = RecordDeserializer(serializer, channel=CHANNEL)
    encoded = frame(b"hello") + frame(b"")
    out: list[bytes] = []
    for index, byte in enumerate(encoded):
        out += deserializer.read(bytes([byte]))
        if index < 3:
            assert deserializer.has_partial_record
    assert out == [b"hello", b""]
    assert not deserializer.has_partial_record


def test_empty_chunks_change_nothing() -> None:
    deserializer = RecordDeserializer(BytesSerializer(), channel=CHANNEL)
    assert deserializer.read(b"") == []
    assert deserializer.read(frame(b"abc")[:2]) == []
    assert deserializer.read(memoryview(b"")) == []
    assert deserializer.read(bytearray(frame(b"abc")[2:])) == [b"abc"]


def test_read_buffer_recycles_the_buffer() -> None:
    recycled: list[MemorySegment] = []

    class Recycler:
        def recycle(self, segment: MemorySegment) -> None:
            recycled.append(segment)

    data = frame(b"one") + frame(b"two")
    segment = MemorySegment(memoryview(bytearray(data)))
    buffer = Buffer.wrap(segment, len(data), Recycler())
    deserializer = RecordDeserializer(BytesSerializer(), channel=CHANNEL)
    assert deserializer.read_buffer(buffer) == [b"one", b"two"]
    assert recycled == [segment]


def test_read_buffer_recycles_a_corrupt_buffer() -> None:
    recycled: list[MemorySegment] = []

    class Recycler:
        def recycle(self, segment: MemorySegment) -> None:
            recycled.append(segment)

    data = struct.pack(">i", -1) + b"junk"
    segment = MemorySegment(memoryview(bytearray(data)))
    deserializer = RecordDeserializer(BytesSerializer(), channel=CHANNEL)
    with pytest.raises(CorruptRecordError):
        deserializer.read_buffer(Buffer.wrap(segment, len(data), Recycler()))
    assert recycled == [segment]


# -- spilling --------------------------------------------------------------------------------


def test_default_spill_threshold_is_flinks() -> None:
    assert DEFAULT_SPILL_THRESHOLD == 5 * 1024 * 1024
    assert RecordDeserializer(BytesSerializer()).spill_threshold == DEFAULT_SPILL_THRESHOLD


def test_large_record_spills_while_partial_and_round_trips(tmp_path: Path) -> None:
    serializer = BytesSerializer()
    deserializer = RecordDeserializer(
        serializer, channel=CHANNEL, spill_threshold=1024, spill_dir=str(tmp_path)
    )
    big = pattern(5000, 7)
    encoded = frame(b"small") + frame(big) + frame(b"after")
    chunks = chunks_of(encoded, 512)
    out: list[bytes] = []
    spilling_seen = []
    for chunk in chunks:
        out += deserializer.read(chunk)
        spilling_seen.append(deserializer.is_spilling)
        assert deserializer.is_spilling == (b"small" in out and big not in out)
    deserializer.check_end()
    assert out == [b"small", big, b"after"]
    assert any(spilling_seen)
    assert not deserializer.is_spilling
    assert os.listdir(tmp_path) == []  # nothing left behind


def test_record_at_the_threshold_stays_in_memory() -> None:
    serializer = BytesSerializer()
    for size, spills in ((1024, False), (1025, True)):
        deserializer = RecordDeserializer(serializer, channel=CHANNEL, spill_threshold=1024)
        record = pattern(size, size)
        encoded = frame(record)
        assert deserializer.read(encoded[:100]) == []
        assert deserializer.has_partial_record
        assert deserializer.is_spilling is spills
        assert deserializer.read(encoded[100:]) == [record]
        assert not deserializer.is_spilling


@given(data=st.data(), buffer_size=st.integers(1, 2048))
@settings(max_examples=60)
def test_spilled_records_round_trip(data: st.DataObject, buffer_size: int) -> None:
    sizes = data.draw(st.lists(st.integers(0, 6000), max_size=6))
    records = [pattern(size, index) for index, size in enumerate(sizes)]
    serializer = BytesSerializer()
    deserializer = RecordDeserializer(serializer, channel=CHANNEL, spill_threshold=1024)
    assert read_all(deserializer, chunks_of(frames_of(serializer, records), buffer_size)) == (
        records
    )


def test_spilled_generic_record_decodes() -> None:
    serializer = GenericSerializer()
    record = ("key", pattern(4000, 1), 42)
    deserializer = RecordDeserializer(serializer, channel=CHANNEL, spill_threshold=1024)
    decoded = read_all(deserializer, chunks_of(frames_of(serializer, [record]), 700))
    assert decoded == [record]


def test_clear_drops_a_spilling_record() -> None:
    deserializer = RecordDeserializer(BytesSerializer(), channel=CHANNEL, spill_threshold=16)
    deserializer.read(frame(pattern(100, 1))[:50])
    assert deserializer.is_spilling
    deserializer.clear()
    assert not deserializer.is_spilling
    assert not deserializer.has_partial_record
    assert deserializer.read(frame(b"x")) == [b"x"]


# -- corrupt bytes ---------------------------------------------------------------------------


def test_channel_ending_mid_record_is_corrupt() -> None:
    deserializer = RecordDeserializer(BytesSerializer(), channel=CHANNEL)
    assert deserializer.read(frame(b"complete") + frame(b"0123456789")[:9]) == [b"complete"]
    with pytest.raises(CorruptRecordError) as raised:
        deserializer.check_end()
    assert raised.value.channel == CHANNEL
    assert CHANNEL in str(raised.value)
    assert "inside a record" in str(raised.value)
    assert not deserializer.has_partial_record  # cleared: a second check passes
    deserializer.check_end()


def test_channel_ending_mid_spilled_record_is_corrupt() -> None:
    deserializer = RecordDeserializer(BytesSerializer(), channel=CHANNEL, spill_threshold=16)
    deserializer.read(frame(pattern(100, 2))[:60])
    assert deserializer.is_spilling
    with pytest.raises(CorruptRecordError, match="56 of 100 bytes"):
        deserializer.check_end()
    assert not deserializer.is_spilling


@pytest.mark.parametrize("prefix_bytes", [1, 2, 3])
def test_channel_ending_mid_length_prefix_is_corrupt(prefix_bytes: int) -> None:
    cases: list[tuple[TypeSerializer[Any], object]] = [
        (BytesSerializer(), b"ab"),
        (IntSerializer(), 5),
    ]
    for serializer, record in cases:
        deserializer: RecordDeserializer[object] = RecordDeserializer(serializer, channel=CHANNEL)
        whole = frames_of(serializer, [record])
        assert len(deserializer.read(whole + whole[:prefix_bytes])) == 1
        with pytest.raises(CorruptRecordError, match="length prefix") as raised:
            deserializer.check_end()
        assert raised.value.channel == CHANNEL


def test_clean_end_passes() -> None:
    deserializer = RecordDeserializer(BytesSerializer(), channel=CHANNEL)
    deserializer.read(frame(b"a") + frame(b"b"))
    deserializer.check_end()


NEGATIVE = struct.pack(">i", -7)


@pytest.mark.parametrize(
    "chunks",
    [
        pytest.param([NEGATIVE + b"payload"], id="at-buffer-start"),
        pytest.param([frame(b"ok") + NEGATIVE + b"payload"], id="after-complete-records"),
        pytest.param([frame(b"ok") + NEGATIVE], id="trailing-prefix"),
        pytest.param([frame(b"ok") + NEGATIVE[:2], NEGATIVE[2:] + b"x"], id="split-prefix"),
        pytest.param([bytes([byte]) for byte in NEGATIVE], id="one-byte-chunks"),
        pytest.param([frame(b"x" * 10)[:6], frame(b"x" * 10)[6:] + NEGATIVE], id="after-span"),
        pytest.param([struct.pack(">i", -(2**31))], id="int32-min"),
    ],
)
def test_negative_length_is_corrupt_at_once(chunks: list[bytes]) -> None:
    deserializer = RecordDeserializer(BytesSerializer(), channel=CHANNEL)
    with pytest.raises(CorruptRecordError) as raised:
        for chunk in chunks:
            deserializer.read(chunk)
    assert raised.value.channel == CHANNEL
    assert CHANNEL in str(raised.value)
    assert "negative" in str(raised.value)


def test_negative_length_message_names_the_channel_once() -> None:
    deserializer = RecordDeserializer(BytesSerializer(), channel=CHANNEL)
    with pytest.raises(CorruptRecordError) as raised:
        deserializer.read(frame(b"ok") + NEGATIVE + b"rest")
    assert str(raised.value).count("channel 3") == 1
    assert str(raised.value).startswith(f"Corrupt record on {CHANNEL}: ")


def fixed_frames(values: Sequence[int], wrong_at: int, wrong_length: int) -> bytes:
    parts = [struct.pack(">iq", 8, value) for value in values]
    parts[wrong_at] = struct.pack(">iq", wrong_length, values[wrong_at])
    return b"".join(parts)


@pytest.mark.parametrize("wrong_length", [7, 9, 0, 4, 12, 1_000_000, -8])
@pytest.mark.parametrize(
    ("count", "wrong_at", "buffer_size"),
    [
        pytest.param(3, 1, 4096, id="short-run"),
        pytest.param(40, 33, 4096, id="bulk-run"),
        pytest.param(3, 2, 30, id="trailing-partial-frame"),
        pytest.param(3, 1, 14, id="split-prefix"),
        pytest.param(5, 4, 1, id="one-byte-chunks"),
    ],
)
def test_fixed_size_channel_with_a_wrong_length_is_corrupt(
    wrong_length: int, count: int, wrong_at: int, buffer_size: int
) -> None:
    data = fixed_frames(list(range(count)), wrong_at, wrong_length)
    deserializer = RecordDeserializer(IntSerializer(), channel=CHANNEL)
    decoded: list[int] = []
    with pytest.raises(CorruptRecordError) as raised:
        for chunk in chunks_of(data, buffer_size):
            decoded += deserializer.read(chunk)
        deserializer.check_end()
    assert raised.value.channel == CHANNEL
    assert CHANNEL in str(raised.value)
    assert decoded == list(range(len(decoded)))  # nothing wrong was returned
    assert len(decoded) <= wrong_at


def test_invalid_generic_payload_is_corrupt() -> None:
    serializer = GenericSerializer()
    bad = frame(b"\x63garbage")  # unknown tag
    for buffer_size in (len(bad), 3):
        deserializer = RecordDeserializer(serializer, channel=CHANNEL)
        with pytest.raises(CorruptRecordError) as raised:
            for chunk in chunks_of(frames_of(serializer, [1, "two"]) + bad, buffer_size):
                deserializer.read(chunk)
        assert raised.value.channel == CHANNEL


def test_invalid_utf8_is_corrupt() -> None:
    deserializer = RecordDeserializer(StrSerializer(), channel=CHANNEL)
    with pytest.raises(CorruptRecordError):
        deserializer.read(frame(b"\xff\xfe"))


@given(garbage=st.binary(max_size=200), buffer_size=st.integers(1, 64))
def test_random_bytes_give_records_or_corrupt_record_error(
    garbage: bytes, buffer_size: int
) -> None:
    serializers: list[TypeSerializer[Any]] = [
        BytesSerializer(),
        IntSerializer(),
        GenericSerializer(),
    ]
    for serializer in serializers:
        deserializer: RecordDeserializer[object] = RecordDeserializer(
            serializer, channel=CHANNEL, spill_threshold=64
        )
        try:
            read_all(deserializer, chunks_of(garbage, buffer_size))
        except CorruptRecordError as exc:
            assert exc.channel == CHANNEL


# -- runs of equal-length frames, cut in bulk ----------------------------------------------


def _frames(*payloads: bytes) -> bytes:
    return b"".join(struct.pack(">i", len(p)) + p for p in payloads)


@pytest.mark.parametrize("run", [0, 7, 8, 9, 31, 300])
@pytest.mark.parametrize("size", [0, 1, 100, 1024])
def test_a_run_of_equal_frames_then_others_is_cut_exactly(run: int, size: int) -> None:
    equal = [bytes([i % 256]) * size for i in range(run)]
    others = [b"x" * (size + 1), b"", b"yz" * 3]
    data = _frames(*equal, *others) + b"\x00\x00"  # and the start of a length
    payloads, consumed = _complete_payloads(memoryview(data))
    assert payloads == [*equal, *others]
    assert consumed == len(data) - 2


@pytest.mark.parametrize("tail", [b"", b"\x00\x00", _frames(b"q" * 40)[:30]])
def test_a_run_followed_by_the_start_of_a_record_ends_before_it(tail: bytes) -> None:
    # A buffer of 1 KiB records: 31 whole ones, then the first bytes of the next.
    equal = [bytes([i]) * 1024 for i in range(31)]
    data = _frames(*equal) + tail
    payloads, consumed = _complete_payloads(memoryview(data))
    assert payloads == equal
    assert consumed == len(data) - len(tail)


def test_a_run_broken_by_a_negative_length_is_an_error_after_the_run() -> None:
    data = _frames(*[b"abcd"] * 10) + struct.pack(">i", -1) + b"abcd" * 4
    with pytest.raises(SerializationError, match="negative record length -1 at offset 80"):
        _complete_payloads(memoryview(data))


@pytest.mark.parametrize("different_at", [511, 512, 513, 1100, None])
def test_a_long_run_of_equal_frames_ends_where_a_length_differs(different_at: int | None) -> None:
    payloads = [bytes([i % 251]) * 3 for i in range(1200)]
    if different_at is not None:
        payloads[different_at] = b"longer"
    data = b"".join(map(frame, payloads)) + b"\x00\x00"  # and the start of a length
    assert _complete_payloads(memoryview(data)) == (payloads, len(data) - 2)


def test_buffers_of_many_fills_keep_no_large_struct_per_fill() -> None:
    # Buffers flushed by the timeout hold any number of equal frames. A Struct cut to
    # each count would be kept per count: two codes a frame, 138 MB for these.
    _equal_frames_struct.cache_clear()
    deserializer = RecordDeserializer(BytesSerializer())
    empty = frame(b"")
    tracemalloc.start()
    try:
        for count in range(8192, 7892, -1):
            assert deserializer.read(empty * count) == [b""] * count
        held = tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()
    assert held < 16 * 2**20
