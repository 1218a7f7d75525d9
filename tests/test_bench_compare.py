"""The jobs of ``penstock bench compare`` and its runner (without Flink)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cluster_helpers import no_leftover_processes  # noqa: F401 - autouse fixture
from penstock.bench.compare import COMPARISONS, ComparisonResult, FlinkHarness, Measurement
from penstock.bench.jobs import KEYS, WORKLOADS, BenchJob, SinkSummary, build_job
from penstock.cli import main
from penstock.config import Configuration
from penstock.runtime.client import execute_and_collect


def run_locally(job: BenchJob) -> list[SinkSummary]:
    config = Configuration(job.configuration()) | {"execution.target": "local"}
    return [s for s in execute_and_collect(build_job(job), config) if isinstance(s, SinkSummary)]


@pytest.mark.parametrize("workload", [w for w in WORKLOADS if w != "latency"])
def test_every_throughput_workload_delivers_all_records_and_measures_a_span(
    workload: str,
) -> None:
    parallelism = 2 if workload == "keyby" else 1
    summaries = run_locally(BenchJob(workload, 20_000, 1, 100, parallelism))
    assert len(summaries) == parallelism
    assert sum(s.records for s in summaries) == 20_000
    payload = {"bytes100": 100, "bytes1k": 1024}.get(workload, 8)
    assert sum(s.payload_bytes for s in summaries) == 20_000 * payload
    for summary in summaries:
        if summary.records:
            assert 0 < summary.first_ns <= summary.end_ns


def test_keyby_hashes_the_keys_over_both_subtasks() -> None:
    job = BenchJob("keyby", 2 * KEYS * 10, 1, 100, parallelism=2)
    graph = build_job(job)
    hash_edges = [edge for edge in graph.edges if edge.partitioner.kind == "hash"]
    assert len(hash_edges) == 1
    summaries = run_locally(job)
    assert sum(s.records for s in summaries) == 2 * KEYS * 10
    assert all(s.records > 0 for s in summaries)


def test_the_latency_workload_reports_one_latency_per_record_after_warm_up() -> None:
    job = BenchJob("latency", 300, 1, 0, rate=3000.0, warmup=50)
    (summary,) = run_locally(job)
    assert summary.records == 300
    assert len(summary.latencies_ns) == 250
    assert all(latency > 0 for latency in summary.latencies_ns)


def test_remote_workloads_put_source_and_sink_in_different_slot_sharing_groups() -> None:
    graph = build_job(BenchJob("long8", 1000, 2, 100))
    source, sink, collect = graph.vertices
    assert source.slot_sharing_group != sink.slot_sharing_group
    assert collect.slot_sharing_group == sink.slot_sharing_group
    assert BenchJob("long8", 1000, 2, 100).configuration()["taskmanager.numberOfTaskSlots"] == 1
    assert BenchJob("long8", 1000, 1, 100).configuration()["taskmanager.numberOfTaskSlots"] == 2


def test_ratio_is_of_medians_and_inverted_for_latency() -> None:
    throughput = ComparisonResult(next(c for c in COMPARISONS if c.id == "R-long8-t100"))
    throughput.penstock = [Measurement("penstock", 1, 1.0, rate, 1.0) for rate in (4, 6, 5)]
    throughput.flink = [Measurement("flink", 1, 1.0, rate, 1.0) for rate in (10, 2, 2.5)]
    assert throughput.ratio() == pytest.approx(5 / 2.5)
    latency = ComparisonResult(next(c for c in COMPARISONS if c.is_latency))
    latency.penstock = [Measurement("penstock", 1, 1.0, 1.0, 1.0, p50_us=1, p99_us=500)]
    latency.flink = [Measurement("flink", 1, 1.0, 1.0, 1.0, p50_us=1, p99_us=2000)]
    assert latency.ratio() == pytest.approx(4.0)
    failed = ComparisonResult(throughput.comparison)
    failed.penstock = [Measurement("penstock", 0, 0, 0, 1.0, ok=False, error="boom")]
    assert failed.ratio() is None


def test_a_missing_harness_says_how_to_set_it_up(tmp_path: Path) -> None:
    located = FlinkHarness.locate(tmp_path)
    assert isinstance(located, str)
    (tmp_path / "run.sh").write_text("")
    located = FlinkHarness.locate(tmp_path)
    assert isinstance(located, str)
    assert "setup.sh" in located or "Java" in located


@pytest.mark.cluster
def test_compare_command_runs_penstock_alone_and_prints_json(
    capsys: pytest.CaptureFixture[str],
) -> None:
    status = main(
        [
            "bench",
            "compare",
            "--only",
            "R-long8-t100",
            "--reps",
            "1",
            "--scale",
            "0.0005",
            "--penstock-only",
            "--json",
        ]
    )
    assert status == 0
    document = json.loads(capsys.readouterr().out)
    (result,) = document["results"]
    assert result["id"] == "R-long8-t100"
    (run,) = result["penstock_runs"]
    assert run["ok"]
    assert run["records"] == 10_000
    assert result["penstock_median"] > 0
    assert result["ratio"] is None


def test_compare_command_rejects_an_unknown_workload(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["bench", "compare", "--only", "nope", "--penstock-only"]) == 2
    assert "unknown workload 'nope'" in capsys.readouterr().err
