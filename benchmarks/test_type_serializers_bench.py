"""Records/s of the bulk type-serializer paths (run with ``pytest benchmarks``)."""

from __future__ import annotations

import pytest
from pytest_benchmark.fixture import BenchmarkFixture

from penstock.serialization.types import (
    BytesSerializer,
    GenericSerializer,
    IntSerializer,
    PickleSerializer,
    TypeSerializer,
)

RECORDS = 1000

CASES: dict[str, tuple[TypeSerializer[object], list[object]]] = {
    "int-IntSerializer": (IntSerializer(), list(range(RECORDS))),  # type: ignore[dict-item]
    "int-GenericSerializer": (GenericSerializer(), list(range(RECORDS))),
    "bytes100-BytesSerializer": (BytesSerializer(), [bytes(100)] * RECORDS),  # type: ignore[dict-item]
    "bytes100-GenericSerializer": (GenericSerializer(), [bytes(100)] * RECORDS),
    "str_int-GenericSerializer": (
        GenericSerializer(),
        [(f"word{i % 50}", i) for i in range(RECORDS)],
    ),
    "str_int-PickleSerializer": (
        PickleSerializer(),
        [(f"word{i % 50}", i) for i in range(RECORDS)],
    ),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_serialize_frames(benchmark: BenchmarkFixture, case: str) -> None:
    serializer, records = CASES[case]
    benchmark.extra_info["records"] = RECORDS
    frames = benchmark(serializer.serialize_frames, records)
    assert serializer.deserialize_frames(memoryview(frames)) == records


@pytest.mark.parametrize("case", sorted(CASES))
def test_deserialize_frames(benchmark: BenchmarkFixture, case: str) -> None:
    serializer, records = CASES[case]
    frames = memoryview(serializer.serialize_frames(records))
    benchmark.extra_info["records"] = RECORDS
    assert benchmark(serializer.deserialize_frames, frames) == records
