"""Stable key hashing, murmur hashing and key-group arithmetic, checked against Java."""

from __future__ import annotations

import dataclasses
import enum
import math
import struct
from typing import NamedTuple

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from penstock.errors import ConfigurationError, SerializationError
from penstock.writer.key_groups import (
    DEFAULT_MAX_PARALLELISM,
    UPPER_BOUND_MAX_PARALLELISM,
    assign_to_channel,
    channels_for_hashes,
    channels_for_keys,
    compute_default_max_parallelism,
    compute_key_group,
    compute_operator_index_for_key_group,
    key_group_range,
    murmur_hash,
    murmur_hash_array,
    stable_hash,
    stable_hash_array,
)

INT32_MIN = -(2**31)
INT32_MAX = 2**31 - 1
int32s = st.integers(INT32_MIN, INT32_MAX)

# Reference values computed with OpenJDK 17: Flink's MathUtils.murmurHash copied verbatim,
# Long/Double/Boolean/BigInteger.hashCode, Arrays.deepHashCode and java.util.zip.CRC32.
JAVA_MURMUR = {
    0: 593689054,
    1: 68075478,
    -1: 1982413648,
    2: 1085422463,
    42: 1134849565,
    12345: 638799361,
    -12345: 1626926666,
    128: 132521001,
    1048576: 480706890,
    2147483647: 1653689534,
    -2147483648: 1718298732,
    2146959360: 1585394089,
    1231: 1090530765,
    1237: 1530821891,
    -559038737: 1047277220,
}
JAVA_LONG_HASH = {
    0: 0,
    1: 1,
    -1: 0,
    42: 42,
    -42: 41,
    4294967296: 1,
    4294967297: 0,
    9223372036854775807: -2147483648,
    -9223372036854775808: -2147483648,
    1234567890123: 1912276436,
    -1234567890123: 1912276437,
    4294967295: -1,
    2147483648: -2147483648,
}
JAVA_BIG_INTEGER_HASH = {
    9223372036854775808: -2147483648,
    -9223372036854775809: 2147483647,
    18446744073709551616: 961,
    123456789012345678901234567890: 1915528825,
    -123456789012345678901234567890: -1915528825,
}
JAVA_DOUBLE_HASH = {
    0.0: 0,
    1.0: 1072693248,
    -1.0: -1074790400,
    0.5: 1071644672,
    3.141592653589793: 340593891,
    math.inf: 2146435072,
    -math.inf: -1048576,
    1e300: -164130400,
    5e-324: 1,
}
JAVA_DOUBLE_NAN_HASH = 2146959360
JAVA_CRC32_UTF8 = {
    "": 0,
    "a": -390611389,
    "hello": 907060870,
    "penstock": -1357454612,
    "\u00e9t\u00e9": 1154575572,
    "\u65e5\u672c": -944255540,
    "\U0001f600": 88978756,
}
# Long keys -3..12: (key group of 128, channel of 4, key group of 32768, channel of 7).
JAVA_ROUTING = {
    -3: (127, 3, 15231, 3),
    -2: (86, 2, 16342, 3),
    -1: (94, 2, 31198, 6),
    0: (94, 2, 31198, 6),
    1: (86, 2, 16342, 3),
    2: (127, 3, 15231, 3),
    3: (113, 3, 2417, 0),
    4: (7, 0, 16647, 3),
    5: (126, 3, 15230, 3),
    6: (18, 0, 19602, 4),
    7: (113, 3, 4337, 0),
    8: (15, 0, 15119, 3),
    9: (51, 1, 10419, 2),
    10: (67, 2, 12867, 2),
    11: (102, 3, 18406, 3),
    12: (50, 1, 5170, 1),
}


class _Pair(NamedTuple):
    x: int
    y: int


class Color(enum.Enum):
    RED = "red"
    GREEN = (1, 2)


class Level(enum.IntEnum):
    LOW = 1
    HIGH = 7


class Name(enum.StrEnum):
    ALICE = "alice"


# --------------------------------------------------------------------------- murmur


@pytest.mark.parametrize(("code", "expected"), sorted(JAVA_MURMUR.items()))
def test_murmur_hash_matches_java(code: int, expected: int) -> None:
    assert murmur_hash(code) == expected


def test_murmur_hash_array_matches_java() -> None:
    codes = np.array(list(JAVA_MURMUR), dtype=np.int32)
    result = murmur_hash_array(codes)
    assert result.dtype == np.int32
    assert result.tolist() == list(JAVA_MURMUR.values())


def test_murmur_hash_maps_a_min_value_result_to_zero() -> None:
    # Invert Flink's mix to find the input whose mixed value is Integer.MIN_VALUE.
    # Each step of the mix is a bijection on 32 bits, so its inverse exists.
    mask = 0xFFFFFFFF

    def unshift_xor(value: int, shift: int) -> int:
        result = value
        for _ in range(32 // shift + 1):
            result = value ^ (result >> shift)
        return result & mask

    c = 0x80000000
    c = unshift_xor(c, 16)
    c = (c * pow(0xC2B2AE35, -1, 2**32)) & mask
    c = unshift_xor(c, 13)
    c = (c * pow(0x85EBCA6B, -1, 2**32)) & mask
    c = unshift_xor(c, 16)
    c ^= 4
    c = ((c - 0xE6546B64) * pow(5, -1, 2**32)) & mask
    c = ((c >> 13) | (c << 19)) & mask
    c = (c * pow(0x1B873593, -1, 2**32)) & mask
    c = ((c >> 15) | (c << 17)) & mask
    c = (c * pow(0xCC9E2D51, -1, 2**32)) & mask
    assert murmur_hash(c) == 0
    assert murmur_hash_array(np.array([c], dtype=np.uint32)).tolist() == [0]
    assert murmur_hash(c + 1) != 0


@given(st.lists(int32s, max_size=200))
def test_murmur_hash_array_equals_scalar(codes: list[int]) -> None:
    codes = [*codes, INT32_MIN, INT32_MAX, 0, -1]
    result = murmur_hash_array(np.array(codes, dtype=np.int32))
    assert result.tolist() == [murmur_hash(code) for code in codes]
    assert all(0 <= value <= INT32_MAX for value in result.tolist())


@given(int32s)
def test_murmur_hash_reads_only_the_low_32_bits(code: int) -> None:
    unsigned = code & 0xFFFFFFFF
    assert murmur_hash(code) == murmur_hash(unsigned) == murmur_hash(unsigned + (5 << 32))
    assert murmur_hash_array(np.array([unsigned], dtype=np.uint32)).tolist() == [murmur_hash(code)]


def test_murmur_hash_array_rejects_float_arrays() -> None:
    with pytest.raises(TypeError, match="integer array"):
        murmur_hash_array(np.array([1.5]))


def test_murmur_hash_array_leaves_its_input_alone() -> None:
    codes = np.array([1, 2, 3], dtype=np.int32)
    murmur_hash_array(codes)
    assert codes.tolist() == [1, 2, 3]


# --------------------------------------------------------------------------- stable hash


@pytest.mark.parametrize(("value", "expected"), sorted(JAVA_LONG_HASH.items()))
def test_int_hash_is_java_long_hash_code(value: int, expected: int) -> None:
    assert stable_hash(value) == expected


@pytest.mark.parametrize(("value", "expected"), sorted(JAVA_BIG_INTEGER_HASH.items()))
def test_int_beyond_int64_hashes_as_java_big_integer(value: int, expected: int) -> None:
    assert stable_hash(value) == expected


@pytest.mark.parametrize(("value", "expected"), sorted(JAVA_DOUBLE_HASH.items()))
def test_float_hash_is_java_double_hash_code(value: float, expected: int) -> None:
    assert stable_hash(value) == expected


def test_negative_zero_and_every_nan_hash_alike() -> None:
    assert stable_hash(-0.0) == stable_hash(0.0) == 0
    other_nan = struct.unpack("<d", struct.pack("<Q", 0xFFF0000000000123))[0]
    assert math.isnan(other_nan)
    assert stable_hash(math.nan) == stable_hash(-math.nan) == stable_hash(other_nan)
    assert stable_hash(math.nan) == JAVA_DOUBLE_NAN_HASH


def test_bool_hash_is_java_boolean_hash_code() -> None:
    assert stable_hash(True) == 1231
    assert stable_hash(False) == 1237


@pytest.mark.parametrize(("value", "expected"), sorted(JAVA_CRC32_UTF8.items()))
def test_str_hash_is_crc32_of_utf8(value: str, expected: int) -> None:
    assert stable_hash(value) == expected
    assert stable_hash(value.encode()) == expected


def test_str_with_a_lone_surrogate_hashes() -> None:
    assert stable_hash("a\ud800b") == stable_hash(b"a\xed\xa0\x80b")


def test_bytes_like_keys_hash_alike() -> None:
    data = b"penstock network buffers"
    expected = stable_hash(data)
    assert stable_hash(bytearray(data)) == expected
    assert stable_hash(memoryview(data)) == expected
    strided = memoryview(b"xpxexnxsxtxoxcxk")[1::2]
    assert not strided.c_contiguous
    assert stable_hash(strided) == stable_hash(b"penstock")


def test_none_hashes_to_zero() -> None:
    assert stable_hash(None) == 0


def test_tuple_hash_is_java_arrays_deep_hash_code() -> None:
    assert stable_hash(()) == 1
    assert stable_hash((1, 2)) == 994
    assert stable_hash((1, None, True)) == 31983
    assert stable_hash((-1, (2, 3), 0.5)) == 1071706269
    assert stable_hash(_Pair(1, 2)) == 994


def test_enum_members_hash_as_their_value() -> None:
    assert stable_hash(Color.RED) == stable_hash("red")
    assert stable_hash(Color.GREEN) == stable_hash((1, 2))
    assert stable_hash(Level.HIGH) == stable_hash(7)
    assert stable_hash(Name.ALICE) == stable_hash("alice")


def test_numpy_integers_hash_as_int() -> None:
    assert stable_hash(np.int64(-42)) == stable_hash(-42) == 41
    assert stable_hash(np.uint8(200)) == 200


@dataclasses.dataclass(frozen=True)
class _Point:
    x: int


@pytest.mark.parametrize("key", [[1, 2], {1}, frozenset({1}), {"a": 1}, _Point(1), object()])
def test_keys_without_a_stable_hash_are_refused(key: object) -> None:
    with pytest.raises(SerializationError) as raised:
        stable_hash(key)
    message = str(raised.value)
    assert type(key).__qualname__ in message
    assert "no stable hash" in message
    assert "Supported key types" in message
    assert "tuple" in message


def test_unsupported_field_inside_a_tuple_is_refused() -> None:
    with pytest.raises(SerializationError, match="'list'"):
        stable_hash((1, [2]))


scalar_keys = (
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text() | st.binary()
)
keys = st.recursive(scalar_keys, lambda inner: st.tuples(inner, inner) | st.tuples(inner))


@given(keys)
def test_stable_hash_is_a_signed_int32(key: object) -> None:
    value = stable_hash(key)
    assert type(value) is int
    assert INT32_MIN <= value <= INT32_MAX


key_batches = (
    st.lists(st.integers(-(2**63), 2**63 - 1))
    | st.lists(st.integers())
    | st.lists(st.text())
    | st.lists(st.floats(allow_nan=True))
    | st.lists(st.binary())
    | st.lists(st.tuples(st.integers(-(2**40), 2**40), st.text()))
    | st.lists(st.tuples(st.text(), st.tuples(st.floats(), st.integers())))
    | st.lists(st.tuples(st.integers()) | st.tuples(st.integers(), st.integers()))
    | st.lists(keys)
)


@given(key_batches)
def test_stable_hash_array_equals_stable_hash(batch: list[object]) -> None:
    result = stable_hash_array(batch)
    assert result.dtype == np.int32
    assert result.tolist() == [stable_hash(key) for key in batch]


@given(key_batches, st.sampled_from([1, 7, 128, 32768]), st.integers(1, 8))
def test_channels_for_keys_equals_assign_to_channel(
    batch: list[object], max_parallelism: int, parallelism: int
) -> None:
    parallelism = min(parallelism, max_parallelism)
    expected = [assign_to_channel(key, max_parallelism, parallelism) for key in batch]
    assert channels_for_keys(batch, max_parallelism, parallelism).tolist() == expected


def test_stable_hash_array_refuses_unsupported_keys() -> None:
    with pytest.raises(SerializationError):
        stable_hash_array([1, 2, [3]])


# --------------------------------------------------------------------------- key groups


@pytest.mark.parametrize(("key", "expected"), sorted(JAVA_ROUTING.items()))
def test_key_groups_and_channels_match_java(key: int, expected: tuple[int, ...]) -> None:
    group_128, channel_4, group_32768, channel_7 = expected
    assert compute_key_group(stable_hash(key), 128) == group_128
    assert compute_operator_index_for_key_group(128, 4, group_128) == channel_4
    assert assign_to_channel(key, 128, 4) == channel_4
    assert compute_key_group(stable_hash(key), 32768) == group_32768
    assert assign_to_channel(key, 32768, 7) == channel_7


def test_channels_for_hashes_matches_java() -> None:
    hashes = [stable_hash(key) for key in JAVA_ROUTING]
    assert channels_for_hashes(hashes, 128, 4).tolist() == [v[1] for v in JAVA_ROUTING.values()]
    as_array = np.array(hashes, dtype=np.int32)
    assert channels_for_hashes(as_array, 32768, 7).tolist() == [v[3] for v in JAVA_ROUTING.values()]
    assert as_array.tolist() == hashes  # not consumed


@given(st.lists(int32s), st.integers(1, UPPER_BOUND_MAX_PARALLELISM), st.data())
def test_channels_for_hashes_equals_scalar_arithmetic(
    hashes: list[int], max_parallelism: int, data: st.DataObject
) -> None:
    parallelism = data.draw(st.integers(1, max_parallelism))
    expected = [
        compute_operator_index_for_key_group(
            max_parallelism, parallelism, compute_key_group(h, max_parallelism)
        )
        for h in hashes
    ]
    assert channels_for_hashes(hashes, max_parallelism, parallelism).tolist() == expected
    unsigned = [h & 0xFFFFFFFF for h in hashes]
    assert channels_for_hashes(unsigned, max_parallelism, parallelism).tolist() == expected


def test_channels_for_hashes_rejects_float_arrays() -> None:
    with pytest.raises(TypeError):
        channels_for_hashes(np.array([1.0]), 128, 4)


@pytest.mark.parametrize(
    ("parallelism", "expected"),
    [(1, 128), (4, 128), (85, 128), (86, 256), (100, 256), (1000, 2048), (30000, 32768)],
)
def test_default_max_parallelism(parallelism: int, expected: int) -> None:
    assert compute_default_max_parallelism(parallelism) == expected
    assert DEFAULT_MAX_PARALLELISM == 128


@pytest.mark.parametrize("parallelism", [0, -1, UPPER_BOUND_MAX_PARALLELISM + 1])
def test_default_max_parallelism_rejects_out_of_bounds(parallelism: int) -> None:
    with pytest.raises(ConfigurationError, match="not within bounds"):
        compute_default_max_parallelism(parallelism)


def test_key_group_range_matches_flink() -> None:
    assert [key_group_range(128, 3, i) for i in range(3)] == [
        range(43),
        range(43, 86),
        range(86, 128),
    ]
    assert key_group_range(10, 10, 9) == range(9, 10)


@given(st.integers(1, 4096), st.data())
def test_key_group_ranges_partition_the_key_groups_consistently(
    max_parallelism: int, data: st.DataObject
) -> None:
    parallelism = data.draw(st.integers(1, min(max_parallelism, 64)))
    covered: list[int] = []
    for index in range(parallelism):
        groups = key_group_range(max_parallelism, parallelism, index)
        assert len(groups) > 0
        covered.extend(groups)
        for group in (groups[0], groups[-1]):
            assert compute_operator_index_for_key_group(max_parallelism, parallelism, group) == (
                index
            )
    assert covered == list(range(max_parallelism))


@pytest.mark.parametrize(
    ("max_parallelism", "parallelism", "index", "match"),
    [
        (4, 8, 0, "must not be smaller than parallelism"),
        (0, 1, 0, "pipeline.max-parallelism"),
        (128, 0, 0, "not within bounds"),
        (128, 4, 4, "operator index"),
        (128, 4, -1, "operator index"),
    ],
)
def test_key_group_range_rejects_bad_arguments(
    max_parallelism: int, parallelism: int, index: int, match: str
) -> None:
    with pytest.raises(ConfigurationError, match=match):
        key_group_range(max_parallelism, parallelism, index)
