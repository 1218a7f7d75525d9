"""Records through writer → partition → local channel → deserializer (issue figures).

Run with ``make bench`` or ``pytest benchmarks/test_local_pipeline_bench.py``. Each
round pushes ``RECORDS[kind]`` records through a ``LocalPipeline`` of one channel, one
record at a time (``emit``) or in batches (``emit_batch``), in one thread (produce a chunk
that fits the pool, then drain it) or with a producer and a consumer thread. Records/s
is ``RECORDS[kind]`` divided by the mean time; ``penstock bench local-pipeline`` prints
the same figures as a table.
"""

from __future__ import annotations

import pytest
from pytest_benchmark.fixture import BenchmarkFixture

from penstock.bench.local_pipeline import RECORD_KINDS, run_local_pipeline

RECORDS = {"int8": 500_000, "bytes100": 300_000, "bytes1k": 100_000}


@pytest.mark.parametrize("batch", [False, True], ids=["emit", "emit_batch"])
@pytest.mark.parametrize("mode", ["one-thread", "threaded"])
@pytest.mark.parametrize("kind", RECORD_KINDS)
def test_local_pipeline(benchmark: BenchmarkFixture, kind: str, mode: str, batch: bool) -> None:
    result = benchmark.pedantic(  # type: ignore[no-untyped-call]
        run_local_pipeline, args=(kind, RECORDS[kind], mode, batch), rounds=3, warmup_rounds=1
    )
    assert result.records == RECORDS[kind]
    benchmark.extra_info["records_per_s"] = round(result.records_per_s)
    benchmark.extra_info["mb_per_s"] = round(result.mb_per_s, 1)
