"""The jobs of ``penstock bench compare`` and its runner (without Flink)."""

from __future__ import annotations

import contextlib
import functools
import json
import os
import struct
from collections.abc import Iterator
from pathlib import Path

import pytest

import penstock.bench.compare as compare_module
from cluster_helpers import no_leftover_processes  # noqa: F401 - autouse fixture
from penstock.bench.compare import (
    COMPARISONS,
    Comparison,
    ComparisonResult,
    FlinkHarness,
    Measurement,
    compare,
    cpu_latency_limit,
    host_steal_s,
)
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


def test_host_steal_is_read_from_the_steal_column_of_proc_stat(tmp_path: Path) -> None:
    stat = tmp_path / "stat"
    ticks = 250
    stat.write_text(f"cpu  10 0 20 3000 5 0 1 {ticks} 0 0\ncpu0 5 0 10 1500 2 0 0 125 0 0\n")
    assert host_steal_s(stat) == pytest.approx(ticks / os.sysconf("SC_CLK_TCK"))
    stat.write_text("cpu  10 0 20 3000\n")  # a kernel too old to count steal
    assert host_steal_s(stat) is None
    assert host_steal_s(tmp_path / "missing") is None


class _FakeFlink(FlinkHarness):
    def run(self, comparison: Comparison, records: int, timeout_s: float) -> Measurement:
        return Measurement("flink", records, 1.0, records, 1.0)


def test_every_run_carries_the_steal_taken_during_it(monkeypatch: pytest.MonkeyPatch) -> None:
    def run_penstock(comparison: Comparison, records: int, timeout_s: float) -> Measurement:
        return Measurement("penstock", records, 1.0, records, 1.0)

    monkeypatch.setattr(compare_module, "_run_penstock_process", run_penstock)
    # Before and after each run: penstock 10→10.5, Flink 10.5→13, penstock 13→13.25, Flink none.
    readings: Iterator[float] = iter([10.0, 10.5, 10.5, 13.0, 13.0, 13.25, 13.25, 13.25])
    comparison = next(c for c in COMPARISONS if c.id == "R-bytes1k")
    (result,) = compare(
        [comparison],
        reps=2,
        flink=_FakeFlink(Path(), {}),
        steal_clock=lambda: next(readings),
    )
    assert [run.steal_s for run in result.penstock] == [0.5, 0.25]
    assert [run.steal_s for run in result.flink] == [2.5, 0.0]
    data = result.to_dict()
    assert (data["penstock_steal_s"], data["flink_steal_s"]) == (0.75, 2.5)
    assert data["penstock_runs"][0]["steal_s"] == 0.5  # type: ignore[index]


def test_without_a_steal_clock_runs_carry_none(monkeypatch: pytest.MonkeyPatch) -> None:
    def run_penstock(comparison: Comparison, records: int, timeout_s: float) -> Measurement:
        return Measurement("penstock", records, 1.0, records, 1.0)

    monkeypatch.setattr(compare_module, "_run_penstock_process", run_penstock)
    (result,) = compare(COMPARISONS[:1], reps=1, steal_clock=lambda: None)
    assert result.penstock[0].steal_s is None
    assert result.to_dict()["penstock_steal_s"] is None


def test_the_compare_table_shows_steal_per_row_and_says_when_it_was_large(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def run_penstock(comparison: Comparison, records: int, timeout_s: float) -> Measurement:
        return Measurement("penstock", records, 1.0, 400_000.0, 10.0)

    monkeypatch.setattr(compare_module, "_run_penstock_process", run_penstock)
    # Steal per 10 s run: 1.5 s and 1.5 s (disturbed), then 0.5 s (not).
    readings = iter([0.0, 1.5, 1.5, 3.0, 3.0, 3.5])
    monkeypatch.setattr(
        compare_module, "compare", functools.partial(compare, steal_clock=lambda: next(readings))
    )
    status = main(["bench", "compare", "--only", "R-bytes1k", "--reps", "3", "--penstock-only"])
    out = capsys.readouterr().out
    assert status == 0
    assert "host steal s" in out
    (row,) = [line for line in out.splitlines() if line.startswith("R-bytes1k")]
    assert row.rstrip().endswith("3.5 / -")
    assert "2 of 3 runs lost more than 10% of a CPU to the host" in out


def test_the_cpu_latency_limit_is_written_and_held_until_the_block_ends(tmp_path: Path) -> None:
    device = tmp_path / "cpu_dma_latency"
    device.write_bytes(b"")
    with cpu_latency_limit(0, device):
        assert device.read_bytes() == struct.pack("=i", 0)
        assert is_open(device)
    assert not is_open(device)  # closed: the kernel drops the limit
    with pytest.raises(ValueError, match="0 to 2000000000"):
        cpu_latency_limit(-1, device).__enter__()


def is_open(path: Path) -> bool:
    """Whether this process holds a descriptor of ``path``."""
    descriptors = Path("/proc/self/fd")
    for name in os.listdir(descriptors):
        with contextlib.suppress(FileNotFoundError):  # the listing's own, closed by now
            if os.readlink(descriptors / name) == str(path):
                return True
    return False


def test_compare_holds_the_cpu_latency_limit_during_the_runs(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    device = tmp_path / "cpu_dma_latency"
    device.write_bytes(b"")
    held_during_runs: list[bytes] = []

    def run_penstock(comparison: Comparison, records: int, timeout_s: float) -> Measurement:
        held_during_runs.append(device.read_bytes() if is_open(device) else b"closed")
        return Measurement("penstock", records, 1.0, records, 1.0)

    monkeypatch.setattr(compare_module, "_run_penstock_process", run_penstock)
    monkeypatch.setattr(compare_module, "CPU_DMA_LATENCY", device)
    argv = ["bench", "compare", "--only", "R-bytes1k", "--penstock-only", "--json"]
    assert main([*argv, "--cpu-latency-us", "20"]) == 0
    assert held_during_runs == [struct.pack("=i", 20)] * 3
    (result,) = json.loads(capsys.readouterr().out)["results"]
    assert result["cpu_latency_us"] == 20


def test_compare_stops_when_the_cpu_latency_limit_cannot_be_held(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    def run_penstock(comparison: Comparison, records: int, timeout_s: float) -> Measurement:
        raise AssertionError("no run without the limit asked for")

    monkeypatch.setattr(compare_module, "_run_penstock_process", run_penstock)
    monkeypatch.setattr(compare_module, "CPU_DMA_LATENCY", tmp_path / "missing")
    argv = ["bench", "compare", "--only", "R-bytes1k", "--penstock-only"]
    assert main([*argv, "--cpu-latency-us", "0"]) == 1
    err = capsys.readouterr().err
    assert "cannot hold the CPU latency limit" in err
    assert "No such file or directory" in err
    assert main([*argv, "--cpu-latency-us", "-1"]) == 2
    assert "must be at least 0" in capsys.readouterr().err
    assert main([*argv, "--cpu-latency-us", "2000000001"]) == 2
    assert "0 to 2000000000" in capsys.readouterr().err
    # A device that opens but refuses the value: its error, and the descriptor closed.
    full = Path("/dev/full")
    monkeypatch.setattr(compare_module, "CPU_DMA_LATENCY", full)
    assert main([*argv, "--cpu-latency-us", "0"]) == 1
    err = capsys.readouterr().err
    assert "No space left on device" in err
    assert "root" not in err
    assert not is_open(full)


def test_a_missing_harness_says_how_to_set_it_up(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(compare_module, "DEFAULT_HARNESS_DIR", tmp_path / "not-here")
    monkeypatch.delenv("PENSTOCK_FLINK_BENCH", raising=False)
    located = FlinkHarness.locate(tmp_path)
    assert isinstance(located, str)
    # Where it looked, and what to do.
    assert f"was not found in {tmp_path}, {tmp_path / 'not-here'};" in located
    assert "--flink-dir" in located and "setup.sh" in located
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
