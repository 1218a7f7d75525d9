"""Tests for the record type serializers."""

from __future__ import annotations

import contextlib
import math
import pickle
import struct
import threading
from collections import namedtuple
from collections.abc import Sequence
from enum import IntEnum
from typing import TypeVar

import cloudpickle
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from penstock.errors import SerializationError
from penstock.serialization.types import (
    BytesSerializer,
    FixedSizeSerializer,
    FloatSerializer,
    GenericSerializer,
    IntSerializer,
    PickleSerializer,
    StrSerializer,
    StructSerializer,
    TypeSerializer,
    serializer_for,
)

T = TypeVar("T")

INT64 = st.integers(min_value=-(2**63), max_value=2**63 - 1)
PRIMITIVES = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=True)
    | st.binary(max_size=40)
    | st.text(max_size=20)
)
GENERIC_RECORDS = st.recursive(
    PRIMITIVES, lambda children: st.lists(children, max_size=5).map(tuple), max_leaves=12
)


def framed(payloads: Sequence[bytes]) -> bytes:
    return b"".join(struct.pack(">i", len(p)) + p for p in payloads)


def assert_same(actual: object, expected: object) -> None:
    """Equal and of the same type all the way down; NaN equals NaN, -0.0 is not 0.0."""
    assert type(actual) is type(expected), (actual, expected)
    if isinstance(expected, tuple):
        assert isinstance(actual, tuple)
        assert len(actual) == len(expected)
        for a, e in zip(actual, expected, strict=True):
            assert_same(a, e)
    elif isinstance(expected, float):
        assert isinstance(actual, float)
        assert struct.pack(">d", actual) == struct.pack(">d", expected) or (
            math.isnan(actual) and math.isnan(expected)
        )
    else:
        assert actual == expected


def round_trip(serializer: TypeSerializer[T], records: list[T]) -> None:
    """Single and bulk paths agree byte for byte and give the records back."""
    payloads = [serializer.serialize(record) for record in records]
    frames = serializer.serialize_frames(records)
    assert frames == framed(payloads)
    for payload, record in zip(payloads, records, strict=True):
        assert_same(serializer.deserialize(payload), record)
        assert_same(serializer.deserialize(memoryview(payload)), record)
    decoded = serializer.deserialize_frames(memoryview(frames))
    assert len(decoded) == len(records)
    for actual, expected in zip(decoded, records, strict=True):
        assert_same(actual, expected)


# -- round trips ----------------------------------------------------------------------------


@given(st.lists(INT64, max_size=3000))
def test_int_round_trip(records: list[int]) -> None:
    round_trip(IntSerializer(), records)


@given(st.lists(st.floats(allow_nan=True), max_size=200))
def test_float_round_trip(records: list[float]) -> None:
    serializer: TypeSerializer[float] = FloatSerializer()
    round_trip(serializer, records)


@given(st.lists(st.binary(max_size=300), max_size=100))
def test_bytes_round_trip(records: list[bytes]) -> None:
    serializer: TypeSerializer[bytes] = BytesSerializer()
    round_trip(serializer, records)


@given(st.lists(st.text(max_size=50), max_size=100))
def test_str_round_trip(records: list[str]) -> None:
    round_trip(StrSerializer(), records)


@given(st.lists(st.tuples(INT64, st.floats(allow_nan=False), st.binary(min_size=3, max_size=3))))
def test_struct_round_trip(rows: list[tuple[int, float, bytes]]) -> None:
    round_trip(StructSerializer("qd3s"), list[tuple[object, ...]](rows))


@given(st.lists(st.tuples(st.integers(0, 255), st.integers(-(2**15), 2**15 - 1)), max_size=80))
def test_struct_numeric_round_trip_uses_both_decoders(rows: list[tuple[int, int]]) -> None:
    # Fewer than 16 frames take the struct decoder, more the numpy one.
    round_trip(StructSerializer("Bxh"), list[tuple[object, ...]](rows))


@given(st.lists(GENERIC_RECORDS, max_size=40))
def test_pickle_round_trip(records: list[object]) -> None:
    round_trip(PickleSerializer(), records)


@given(st.lists(GENERIC_RECORDS, max_size=40))
def test_generic_round_trip(records: list[object]) -> None:
    round_trip(GenericSerializer(), records)


@given(
    st.lists(st.tuples(st.text(max_size=12), INT64), min_size=1, max_size=50),
    st.lists(st.tuples(INT64, st.binary(max_size=8)), max_size=5),
)
def test_generic_uniform_runs_and_interruptions(
    pairs: list[tuple[str, int]], others: list[tuple[int, bytes]]
) -> None:
    generic = GenericSerializer()
    round_trip(generic, list[object](pairs))
    mixed: list[object] = [*pairs[: len(pairs) // 2], *others, *pairs[len(pairs) // 2 :]]
    round_trip(generic, mixed)


@pytest.mark.parametrize(
    "records",
    [
        [1, 2, 3] * 10,
        [1.5, -0.0, math.inf] * 10,
        ["a", "bb"] * 10,
        [b"x", b""] * 10,
        [(), ()],
        [(1,), (2,)],
        [(None, True, 1, 1.5, b"b", "s")] * 20,
        [(True, False)] * 20,
        [("word", 1)] * 20 + [(1, "word")] * 20 + [("x", 1.5)] * 20,
        [("a", (1, ("b", None)))] * 3,
        [1, 2**64, 3] * 10,
        [("a", 2**64)] * 3 + [("a", 1)],
    ],
)
def test_generic_bulk_shapes(records: list[object]) -> None:
    round_trip(GenericSerializer(), records)


class Color(IntEnum):
    RED = 1


Point = namedtuple("Point", ["x", "y"])


@pytest.mark.parametrize(
    "record",
    [
        True,
        False,
        1,
        0,
        -1,
        2**63 - 1,
        -(2**63),
        2**63,
        -(2**100),
        1.0,
        None,
        b"",
        "",
        "\ud800",
        bytearray(b"ab"),
        Color.RED,
        Point(1, 2),
        {"a": [1, 2]},
        (True, 1, 1.0),
        (1, (2, (3, "x"))),
        (2**70, "x"),
        ("\ud800", 1),
        tuple(range(300)),
        frozenset({1}),
    ],
)
def test_generic_preserves_types(record: object) -> None:
    generic = GenericSerializer()
    back = generic.deserialize(generic.serialize(record))
    assert type(back) is type(record)
    assert back == record or (isinstance(record, float) and math.isnan(record))
    round_trip(generic, [record, record])


def test_generic_tuple_nested_deeper_than_limit_round_trips() -> None:
    record: object = "leaf"
    for _ in range(40):
        record = (record, 1)
    generic = GenericSerializer()
    round_trip(generic, [record])


def test_generic_compact_encodings() -> None:
    generic = GenericSerializer()
    assert generic.serialize(None) == b"\x00"
    assert generic.serialize(True) == b"\x01\x01"
    assert generic.serialize(7) == b"\x02" + struct.pack(">q", 7)
    assert generic.serialize("hi") == b"\x05hi"
    assert generic.serialize(b"hi") == b"\x04hi"
    # (word, 1): header (tag, arity, kinds), int, str length, str bytes.
    assert generic.serialize(("hi", 1)) == (bytes([6, 2, 5, 2]) + struct.pack(">qI", 1, 2) + b"hi")


# -- fixed-size frames ------------------------------------------------------------------------


def test_fixed_size_frame_struct_packs_a_whole_frame() -> None:
    ints = IntSerializer()
    assert isinstance(ints, FixedSizeSerializer)
    assert ints.fixed_size == 8
    segment = bytearray(24)
    ints.frame_struct.pack_into(segment, 12, ints.fixed_size, -5)
    assert bytes(segment[12:]) == ints.serialize_frames([-5])
    assert ints.deserialize_frames(memoryview(segment)[12:]) == [-5]


@pytest.mark.parametrize("count", [1, 5, 15, 16, 17, 1500])
@pytest.mark.parametrize("bad_index", [0, -1])
def test_fixed_size_frames_reject_a_wrong_length_prefix(count: int, bad_index: int) -> None:
    ints = IntSerializer()
    data = bytearray(ints.serialize_frames(list(range(count))))
    position = (bad_index % count) * 12
    data[position : position + 4] = struct.pack(">i", 7)
    with pytest.raises(SerializationError, match="announces a payload of 7 bytes"):
        ints.deserialize_frames(memoryview(data))


@pytest.mark.parametrize("count", [3, 40])
def test_struct_frames_reject_a_wrong_length_prefix(count: int) -> None:
    pairs = StructSerializer("ii")
    data = bytearray(pairs.serialize_frames([(i, i) for i in range(count)]))
    data[12 * (count - 1) + 3] = 9
    with pytest.raises(SerializationError, match="announces"):
        pairs.deserialize_frames(memoryview(data))


def test_fixed_size_frames_must_be_whole() -> None:
    ints = IntSerializer()
    data = ints.serialize_frames([1, 2])
    with pytest.raises(SerializationError, match="whole number"):
        ints.deserialize_frames(memoryview(data[:-1]))
    with pytest.raises(SerializationError, match="whole number"):
        ints.deserialize_frames(memoryview(data + b"\x00"))


@pytest.mark.parametrize("serializer", [IntSerializer(), FloatSerializer(), StructSerializer("qd")])
@pytest.mark.parametrize("size", [0, 7, 9, 17])
def test_fixed_size_payload_of_wrong_size(
    serializer: FixedSizeSerializer[object], size: int
) -> None:
    if size == serializer.fixed_size:
        return
    with pytest.raises(SerializationError, match=f"got {size}"):
        serializer.deserialize(bytes(size))


def test_int_out_of_range_names_type_and_range() -> None:
    ints = IntSerializer()
    for value in (2**63, -(2**63) - 1):
        with pytest.raises(SerializationError, match=r"int .*signed 64-bit range"):
            ints.serialize(value)
        with pytest.raises(SerializationError, match=str(value)):
            ints.serialize_frames([1, value, 2])
    with pytest.raises(SerializationError, match="got str"):
        ints.serialize("1")  # type: ignore[arg-type]
    with pytest.raises(SerializationError, match="got float"):
        ints.serialize_frames([1, 1.5])  # type: ignore[list-item]


def test_int_accepts_int_likes_and_returns_int() -> None:
    ints = IntSerializer()
    assert ints.deserialize(ints.serialize(True)) == 1
    assert type(ints.deserialize(ints.serialize(True))) is int


def test_float_rejects_non_numbers() -> None:
    with pytest.raises(SerializationError, match="got str"):
        FloatSerializer().serialize_frames(["x"])  # type: ignore[list-item]


def test_struct_serializer_forces_big_endian_and_tuples() -> None:
    little = StructSerializer("<i")
    assert little.serialize((1,)) == b"\x00\x00\x00\x01"
    assert little.deserialize(b"\x00\x00\x00\x01") == (1,)
    assert little.frame_struct.format == ">ii"


@pytest.mark.parametrize("fmt", ["", "x", "zz", "=n", ">P"])
def test_struct_serializer_rejects_bad_formats(fmt: str) -> None:
    with pytest.raises(SerializationError):
        StructSerializer(fmt)


@pytest.mark.parametrize("fmt", ["l", "@L", "n", "N", "P", "2lh", "@?l"])
def test_a_native_layout_keeps_its_native_widths(fmt: str) -> None:
    # Every layout is written big-endian, but a native long (8 bytes on 64-bit Linux)
    # must not become the standard 4-byte one: values that fit the user's layout fit.
    native = struct.Struct(fmt)
    serializer = StructSerializer(fmt)
    fields = native.unpack(bytes(range(1, native.size + 1)))
    assert serializer.deserialize(serializer.serialize(fields)) == fields
    framed = serializer.serialize_frames([fields] * 3)
    assert serializer.deserialize_frames(memoryview(framed)) == [fields] * 3


@pytest.mark.parametrize(
    ("serializer", "record"),
    [
        (StructSerializer("f"), (1e39,)),
        (StructSerializer("e"), (70000.0,)),
        (IntSerializer(), np.uint64(2**63)),
    ],
)
def test_a_value_beyond_its_fields_range_is_a_serialization_error(
    serializer: TypeSerializer[object], record: object
) -> None:
    # struct raises OverflowError for these, not struct.error.
    with pytest.raises(SerializationError):
        serializer.serialize(record)
    with pytest.raises(SerializationError):
        serializer.serialize_frames([record, record])


def test_struct_serializer_rejects_wrong_arity() -> None:
    pairs = StructSerializer("ii")
    with pytest.raises(SerializationError, match="tuple"):
        pairs.serialize((1, 2, 3))
    with pytest.raises(SerializationError):
        pairs.serialize_frames([(1, 2), (1,)])
    with pytest.raises(SerializationError, match="int"):
        pairs.serialize_frames([(1, 2), 5])  # type: ignore[list-item]


def test_bytes_serializer_accepts_bytes_likes_only() -> None:
    raw = BytesSerializer()
    assert raw.serialize_frames([bytearray(b"a"), memoryview(b"b")]) == framed([b"a", b"b"])
    with pytest.raises(SerializationError, match="got int"):
        raw.serialize(5)  # type: ignore[arg-type]


def test_str_serializer_carries_lone_surrogates_as_they_are() -> None:
    # os.listdir gives a file name that is not UTF-8 as text with lone surrogates.
    text = StrSerializer()
    names = ["ok", "caf\udce9.csv", "\ud800"]
    assert text.deserialize(text.serialize("caf\udce9.csv")) == "caf\udce9.csv"
    framed_names = text.serialize_frames(names)
    assert text.deserialize_frames(memoryview(framed_names)) == names
    assert text.deserialize_complete_frames(memoryview(framed_names)) == (names, len(framed_names))


def test_str_serializer_rejects_what_is_not_text() -> None:
    text = StrSerializer()
    with pytest.raises(SerializationError, match="type int"):
        text.serialize(5)  # type: ignore[arg-type]
    with pytest.raises(SerializationError, match="not valid UTF-8"):
        text.deserialize(b"\xff")
    with pytest.raises(SerializationError, match="not valid UTF-8"):
        text.deserialize_frames(memoryview(framed([b"ok", b"\xff"])))


class Unpicklable:
    def __reduce__(self) -> str:
        msg = "no"
        raise TypeError(msg)


def test_unpicklable_record_names_its_type() -> None:
    for serializer in (PickleSerializer(), GenericSerializer()):
        with pytest.raises(SerializationError, match="Unpicklable") as info:
            serializer.serialize(Unpicklable())
        assert isinstance(info.value.__cause__, TypeError)
    with pytest.raises(SerializationError, match="lock"):
        PickleSerializer().serialize_frames([threading.Lock()])


def test_empty_runs() -> None:
    for serializer in (
        IntSerializer(),
        StructSerializer("h"),
        BytesSerializer(),
        StrSerializer(),
        PickleSerializer(),
        GenericSerializer(),
    ):
        assert serializer.serialize_frames([]) == b""
        assert serializer.deserialize_frames(memoryview(b"")) == []


# -- bad bytes ------------------------------------------------------------------------------

ALL_SERIALIZERS: list[TypeSerializer[object]] = [
    IntSerializer(),  # type: ignore[list-item]
    FloatSerializer(),  # type: ignore[list-item]
    StructSerializer("qd3s"),  # type: ignore[list-item]
    StructSerializer("hh"),  # type: ignore[list-item]
    BytesSerializer(),  # type: ignore[list-item]
    StrSerializer(),  # type: ignore[list-item]
    PickleSerializer(),
    GenericSerializer(),
]


@given(st.binary(max_size=200), st.sampled_from(ALL_SERIALIZERS))
def test_random_payloads_raise_only_serialization_error(
    data: bytes, serializer: TypeSerializer[object]
) -> None:
    with contextlib.suppress(SerializationError):
        serializer.deserialize(data)


@given(st.binary(max_size=300), st.sampled_from(ALL_SERIALIZERS))
def test_random_frames_raise_only_serialization_error(
    data: bytes, serializer: TypeSerializer[object]
) -> None:
    with contextlib.suppress(SerializationError):
        serializer.deserialize_frames(memoryview(data))


@given(st.lists(GENERIC_RECORDS, min_size=1, max_size=10), st.data())
def test_generic_damaged_frames_raise_only_serialization_error(
    records: list[object], data: st.DataObject
) -> None:
    generic = GenericSerializer()
    frames = bytearray(generic.serialize_frames(records))
    index = data.draw(st.integers(0, len(frames) - 1))
    frames[index] = data.draw(st.integers(0, 255))
    cut = data.draw(st.integers(0, len(frames)))
    for damaged in (frames, frames[:cut]):
        with contextlib.suppress(SerializationError):
            generic.deserialize_frames(memoryview(damaged))


@pytest.mark.parametrize(
    "payload",
    [
        b"",
        b"\x02\x00",
        b"\x02" + bytes(9),
        b"\x03" + bytes(7),
        b"\x00\x00",
        b"\x01\x02",
        b"\x01",
        b"\x08",
        b"\x05\xff",
        b"\x06",
        b"\x06\x02\x05",
        b"\x06\x01\x09",
        b"\x06\x01\x02" + bytes(7),
        b"\x06\x01\x02" + bytes(9),
        b"\x06\x01\x05" + struct.pack(">I", 3) + b"ab",
        b"\x06\x01\x05" + struct.pack(">I", 1) + b"ab",
        b"\x06\x01\x05" + struct.pack(">I", 1) + b"\xff",
        b"\x07not a pickle",
    ],
)
def test_generic_corrupt_payloads(payload: bytes) -> None:
    with pytest.raises(SerializationError):
        GenericSerializer().deserialize(payload)


def test_generic_rejects_nesting_beyond_limit() -> None:
    payload = b"\x06\x00"
    for _ in range(20):
        payload = b"\x06\x01\x06" + struct.pack(">I", len(payload)) + payload
    with pytest.raises(SerializationError, match="nest"):
        GenericSerializer().deserialize(payload)


@pytest.mark.parametrize(
    "serializer", [BytesSerializer(), StrSerializer(), PickleSerializer(), GenericSerializer()]
)
def test_variable_frames_truncated_or_negative(serializer: TypeSerializer[object]) -> None:
    frames = serializer.serialize_frames(
        ["ab", "cd"] if serializer.name != "BytesSerializer" else [b"ab", b"cd"]
    )
    for cut in range(1, len(frames)):
        if cut in (len(frames) // 2,):
            continue
        with pytest.raises(SerializationError):
            serializer.deserialize_frames(memoryview(frames[:cut]))
    with pytest.raises(SerializationError):
        serializer.deserialize_frames(memoryview(struct.pack(">i", -1)))


# -- serializer_for -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("hint", "expected"),
    [
        (bytes, BytesSerializer),
        (b"x", BytesSerializer),
        (str, StrSerializer),
        ("x", StrSerializer),
        (int, IntSerializer),
        (5, IntSerializer),
        (float, FloatSerializer),
        (1.5, FloatSerializer),
        (bool, GenericSerializer),
        (True, GenericSerializer),
        (tuple, GenericSerializer),
        (("a", 1), GenericSerializer),
        (object, GenericSerializer),
        (None, GenericSerializer),
    ],
)
def test_serializer_for(hint: object, expected: type) -> None:
    assert type(serializer_for(hint)) is expected


@pytest.mark.parametrize(
    ("serializer", "records"),
    [
        (IntSerializer(), [0, -1, 2**63 - 1]),
        (FloatSerializer(), [0.5, -2.0]),
        (StructSerializer(">iiq"), [(1, 2, 3), (-1, 0, 2**40)]),
        (BytesSerializer(), [b"", b"abc"]),
        (StrSerializer(), ["", "wörd"]),
        (PickleSerializer(), [{"a": 1}, None]),
        (GenericSerializer(), [("w", 1), 3.5, None]),
    ],
)
def test_every_serializer_pickles_as_job_graphs_need(
    serializer: TypeSerializer[object], records: list[object]
) -> None:
    # Serializers travel inside job graphs to TaskManager processes.
    copy = pickle.loads(cloudpickle.dumps(serializer))
    framed = serializer.serialize_frames(records)
    assert copy.serialize_frames(records) == framed
    assert copy.deserialize_frames(memoryview(framed)) == records


@pytest.mark.parametrize("count", [1, 63, 64, 65, 128, 200])
@pytest.mark.parametrize("odd_one", [None, 0, -1])
def test_bytes_frames_of_one_length_in_bulk_equal_one_by_one(
    count: int, odd_one: int | None
) -> None:
    """Equal-length payloads are framed by chunks of a cached Struct; the frames are
    the same bytes as framing each record alone, whatever breaks the run."""
    records = [bytes([i % 256]) * 100 for i in range(count)]
    if odd_one is not None:
        records[odd_one] = b"different length"
    serializer = BytesSerializer()
    expected = b"".join(struct.pack(">i", len(r)) + r for r in records)
    assert serializer.serialize_frames(records) == expected
    assert serializer.deserialize_frames(memoryview(expected)) == records
