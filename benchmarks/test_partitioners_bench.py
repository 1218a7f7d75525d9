"""Records/s of channel selection: bulk ``split`` against ``select_channel`` per record.

Run with ``pytest benchmarks/test_partitioners_bench.py``. Each case routes 1000 records
over 4 channels, so records/s is 1000 times the OPS column. "unique" keys are all new to
the partitioner (its memo of key hashes is cleared before every round); "repeated" keys
come back round after round, as the keys of a keyed stream do.
"""

from __future__ import annotations

from collections.abc import Callable
from operator import itemgetter

import pytest
from pytest_benchmark.fixture import BenchmarkFixture

from penstock.writer.partitioners import (
    KeyGroupStreamPartitioner,
    RebalancePartitioner,
    ShufflePartitioner,
    StreamPartitioner,
)

COUNT = 1000
CHANNELS = 4
Record = tuple[object, int]

RECORDS: dict[str, list[Record]] = {
    "int": [(i * 7919, i) for i in range(COUNT)],
    "str": [(f"user-{i:06d}", i) for i in range(COUNT)],
    "tuple": [((f"user-{i % 97}", i), i) for i in range(COUNT)],
}


def one_by_one(selector: StreamPartitioner[Record], records: list[Record]) -> list[list[Record]]:
    groups: list[list[Record]] = [[] for _ in range(CHANNELS)]
    appenders = [group.append for group in groups]
    select = selector.select_channel
    for record in records:
        appenders[select(record)](record)
    return groups


def run(
    benchmark: BenchmarkFixture,
    selector: StreamPartitioner[Record],
    records: list[Record],
    mode: str,
    fresh: bool,
) -> None:
    selector.setup(CHANNELS)
    route: Callable[[], list[list[Record]]]
    if mode == "split":
        route = lambda: selector.split(records)  # noqa: E731
    else:
        route = lambda: one_by_one(selector, records)  # noqa: E731
    setup = (lambda: selector.setup(CHANNELS)) if fresh else None
    groups = benchmark.pedantic(  # type: ignore[no-untyped-call]
        route, setup=setup, rounds=300, warmup_rounds=5
    )
    assert sum(map(len, groups)) == COUNT


@pytest.mark.parametrize("mode", ["split", "select_channel"])
@pytest.mark.parametrize("keys", ["int", "str", "tuple"])
@pytest.mark.parametrize("fresh", [True, False], ids=["unique", "repeated"])
def test_keyed(benchmark: BenchmarkFixture, mode: str, keys: str, fresh: bool) -> None:
    run(benchmark, KeyGroupStreamPartitioner(itemgetter(0)), RECORDS[keys], mode, fresh)


@pytest.mark.parametrize("mode", ["split", "select_channel"])
@pytest.mark.parametrize("kind", ["rebalance", "shuffle"])
def test_unkeyed(benchmark: BenchmarkFixture, mode: str, kind: str) -> None:
    selector: StreamPartitioner[Record] = (
        RebalancePartitioner(seed=1) if kind == "rebalance" else ShufflePartitioner(seed=1)
    )
    run(benchmark, selector, RECORDS["int"], mode, fresh=False)
