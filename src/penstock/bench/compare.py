"""``penstock bench compare``: penstock and Flink side by side, on Flink's own workloads.

Each workload runs on penstock and on Apache Flink (through the harness in
``shared/bench/flink``: ``run.sh`` starts a fresh JVM with a MiniCluster), alternately
(A B A B ...) so that both see the same machine, each run a fresh process. Both sides
measure the same way: per sink subtask, from its first record to the end of its input;
records/s is all records over the span from the earliest first record to the latest
end. The whole-process wall time is kept beside it, and so is the CPU time the host took
from this machine during the run (Linux's ``steal``): on a virtual machine it is what
most often makes two runs of the same code differ. ``cpu_latency_limit`` keeps idle
CPUs from halting during the runs of both sides, which takes much of it away.

Without Java or the Flink harness it says how to set them up and runs penstock alone.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import statistics
import struct
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Final

__all__ = [
    "COMPARISONS",
    "Comparison",
    "ComparisonResult",
    "FlinkHarness",
    "Measurement",
    "compare",
    "cpu_latency_limit",
    "host_steal_s",
    "run_penstock_once",
]

_RESULT_PREFIX: Final = "RESULT "
_PROC_STAT: Final = Path("/proc/stat")
CPU_DMA_LATENCY: Final = Path("/dev/cpu_dma_latency")
MAX_CPU_LATENCY_US: Final = 2_000_000_000
"""The largest CPU latency limit Linux takes (its default: no limit)."""


def host_steal_s(stat: Path = _PROC_STAT) -> float | None:
    """CPU seconds the host has taken from this (virtual) machine since boot, if known.

    Linux counts them in ticks in the ``steal`` column of ``/proc/stat``: time a virtual
    CPU had work to run while the host ran something else. None where there is no such
    file (another platform) or it cannot be read.
    """
    try:
        with stat.open(encoding="ascii") as file:
            fields = file.readline().split()
    except (OSError, UnicodeDecodeError):
        return None
    if len(fields) < 9 or fields[0] != "cpu" or not fields[8].isdigit():
        return None
    return int(fields[8]) / os.sysconf("SC_CLK_TCK")


@contextlib.contextmanager
def cpu_latency_limit(limit_us: int, device: Path = CPU_DMA_LATENCY) -> Iterator[None]:
    """Holds Linux's CPU latency limit (PM QoS) at ``limit_us`` for the whole machine.

    While it holds, an idle CPU only enters idle states it can leave within the limit;
    at 0 it polls instead of halting, as the ``latency-performance`` profile of tuned
    arranges. On a virtual machine a halted virtual CPU goes back to the host, and waking
    it takes the host's time, milliseconds when the host is busy: the ``steal`` of both
    sides' runs. The limit lasts while the device is open; the kernel drops it when it
    is closed, also when this process dies.

    Raises:
        ValueError: ``limit_us`` is below 0 or above ``MAX_CPU_LATENCY_US``.
        OSError: The device is missing (not Linux), not writable (not root), or refused
            the value.
    """
    if not 0 <= limit_us <= MAX_CPU_LATENCY_US:
        msg = f"a CPU latency limit is 0 to {MAX_CPU_LATENCY_US} µs, got {limit_us}"
        raise ValueError(msg)
    descriptor = os.open(device, os.O_WRONLY)
    try:
        os.write(descriptor, struct.pack("=i", limit_us))
        yield
    finally:
        os.close(descriptor)


@dataclass(frozen=True, slots=True)
class Comparison:
    """One workload as both sides run it (the Flink harness' arguments)."""

    id: str
    description: str
    workload: str
    task_managers: int
    records: int
    buffer_timeout_ms: int = 100
    parallelism: int = 1
    rate: float = 1000.0

    @property
    def is_latency(self) -> bool:
        return self.workload == "latency"

    def flink_args(self, records: int) -> list[str]:
        args = [
            "--workload", self.workload,
            "--tms", str(self.task_managers),
            "--n", str(records),
            "--buffer-timeout", str(self.buffer_timeout_ms),
        ]  # fmt: skip
        if self.workload == "keyby":
            args += ["--parallelism", str(self.parallelism)]
        if self.is_latency:
            args += ["--rate", str(self.rate)]
        return args


COMPARISONS: Final[tuple[Comparison, ...]] = (
    Comparison(
        "R-long8-t100", "8-byte ints, 2 TM (remote), timeout 100 ms", "long8", 2, 20_000_000
    ),
    Comparison("R-long8-t1", "8-byte ints, 2 TM (remote), timeout 1 ms", "long8", 2, 20_000_000, 1),
    Comparison("R-long8-t0", "8-byte ints, 2 TM (remote), timeout 0", "long8", 2, 5_000_000, 0),
    Comparison("R-bytes100", "100-byte records, 2 TM (remote)", "bytes100", 2, 10_000_000),
    Comparison("R-bytes1k", "1 KiB records, 2 TM (remote)", "bytes1k", 2, 3_000_000),
    Comparison(
        "R-keyby", "keyBy(v % 1024) + count, p=2, 2 TM", "keyby", 2, 20_000_000, parallelism=2
    ),
    Comparison("L-long8-t100", "8-byte ints, 1 TM (local), timeout 100 ms", "long8", 1, 20_000_000),
    Comparison("L-long8-t0", "8-byte ints, 1 TM (local), timeout 0", "long8", 1, 5_000_000, 0),
    Comparison("L-bytes100", "100-byte records, 1 TM (local)", "bytes100", 1, 10_000_000),
    Comparison("L-bytes1k", "1 KiB records, 1 TM (local)", "bytes1k", 1, 3_000_000),
    Comparison("Lat-R-t0", "latency at 1000 rec/s, 2 TM, timeout 0", "latency", 2, 6_000, 0),
    Comparison("Lat-R-t1", "latency at 1000 rec/s, 2 TM, timeout 1 ms", "latency", 2, 6_000, 1),
)
"""The workloads, with ids as in the Flink harness (R remote, L local, Lat latency)."""


@dataclass(frozen=True, slots=True)
class Measurement:
    """One run of one side."""

    system: str
    records: int
    seconds: float
    records_per_s: float
    process_wall_s: float
    p50_us: float | None = None
    p99_us: float | None = None
    ok: bool = True
    error: str = ""
    steal_s: float | None = None
    """CPU seconds the host took from this machine during the run (None: not known)."""


@dataclass(slots=True)
class ComparisonResult:
    """All runs of one workload on both sides."""

    comparison: Comparison
    penstock: list[Measurement] = field(default_factory=list)
    flink: list[Measurement] = field(default_factory=list)

    @staticmethod
    def _median(
        runs: Sequence[Measurement], value: Callable[[Measurement], float | None]
    ) -> float | None:
        values = [v for run in runs if run.ok and (v := value(run)) is not None]
        return statistics.median(values) if values else None

    @staticmethod
    def _range(
        runs: Sequence[Measurement], value: Callable[[Measurement], float | None]
    ) -> tuple[float, float] | None:
        values = [v for run in runs if run.ok and (v := value(run)) is not None]
        return (min(values), max(values)) if values else None

    @staticmethod
    def _steal(runs: Sequence[Measurement]) -> float | None:
        values = [run.steal_s for run in runs if run.steal_s is not None]
        return round(sum(values), 2) if values else None

    def metric(self) -> Callable[[Measurement], float | None]:
        if self.comparison.is_latency:
            return lambda run: run.p99_us
        return lambda run: run.records_per_s

    def ratio(self) -> float | None:
        """Penstock / Flink of the medians (for latency: Flink p99 / penstock p99)."""
        ours = self._median(self.penstock, self.metric())
        theirs = self._median(self.flink, self.metric())
        if not ours or not theirs:
            return None
        return theirs / ours if self.comparison.is_latency else ours / theirs

    def to_dict(self) -> dict[str, object]:
        metric = self.metric()
        data: dict[str, object] = {
            **asdict(self.comparison),
            "metric": "p99_us" if self.comparison.is_latency else "records_per_s",
            "penstock_median": self._median(self.penstock, metric),
            "penstock_range": self._range(self.penstock, metric),
            "flink_median": self._median(self.flink, metric),
            "flink_range": self._range(self.flink, metric),
            "ratio": self.ratio(),
            "penstock_steal_s": self._steal(self.penstock),
            "flink_steal_s": self._steal(self.flink),
            "penstock_runs": [asdict(run) for run in self.penstock],
            "flink_runs": [asdict(run) for run in self.flink],
        }
        if self.comparison.is_latency:
            p50 = lambda run: run.p50_us  # noqa: E731
            data["penstock_p50_us"] = self._median(self.penstock, p50)
            data["flink_p50_us"] = self._median(self.flink, p50)
        return data


# -- penstock ------------------------------------------------------------------------------


def run_penstock_once(comparison: Comparison, records: int) -> Measurement:
    """Runs one workload on penstock in this process (the caller is a fresh process)."""
    from penstock.bench.jobs import BenchJob, SinkSummary, build_job
    from penstock.config import Configuration
    from penstock.runtime.client import execute_and_collect

    job = BenchJob(
        comparison.workload,
        records,
        comparison.task_managers,
        comparison.buffer_timeout_ms,
        comparison.parallelism,
        comparison.rate,
    )
    graph = build_job(job)
    summaries = [
        summary
        for summary in execute_and_collect(graph, Configuration(job.configuration()))
        if isinstance(summary, SinkSummary)
    ]
    received = sum(summary.records for summary in summaries)
    active = [summary for summary in summaries if summary.records]
    span = (max(s.end_ns for s in active) - min(s.first_ns for s in active)) / 1e9
    expected = records
    measurement = Measurement(
        "penstock", received, span, received / span if span else 0.0, 0.0, ok=received == expected
    )
    if comparison.is_latency:
        latencies = sorted(value for s in summaries for value in s.latencies_ns)
        if latencies:
            measurement = Measurement(
                "penstock",
                received,
                span,
                measurement.records_per_s,
                0.0,
                p50_us=latencies[len(latencies) // 2] / 1e3,
                p99_us=latencies[min(len(latencies) - 1, int(0.99 * len(latencies)))] / 1e3,
                ok=received == expected,
            )
    return measurement


def _run_penstock_process(comparison: Comparison, records: int, timeout_s: float) -> Measurement:
    started = time.perf_counter()
    command = [
        sys.executable,
        "-m",
        "penstock.bench.compare",
        "--run-one",
        comparison.id,
        "--records",
        str(records),
    ]
    try:
        done = subprocess.run(
            command, capture_output=True, text=True, timeout=timeout_s, check=False
        )
    except subprocess.TimeoutExpired:
        return Measurement("penstock", 0, 0, 0, timeout_s, ok=False, error="timed out")
    wall = time.perf_counter() - started
    line = next(
        (line for line in done.stdout.splitlines() if line.startswith(_RESULT_PREFIX)), None
    )
    if done.returncode != 0 or line is None:
        tail = (done.stderr or done.stdout).strip().splitlines()[-3:]
        return Measurement("penstock", 0, 0, 0, wall, ok=False, error=" | ".join(tail))
    data = json.loads(line[len(_RESULT_PREFIX) :])
    data["process_wall_s"] = wall
    return Measurement(**data)


# -- Flink -----------------------------------------------------------------------------------


DEFAULT_HARNESS_DIR: Final = Path(__file__).resolve().parents[3].parent / "shared/bench/flink"
"""Where the Flink harness is kept: beside the checkout, in ``shared/bench/flink``."""


@dataclass(frozen=True, slots=True)
class FlinkHarness:
    """The Flink harness of ``shared/bench/flink`` and the environment it needs."""

    directory: Path
    environment: dict[str, str]

    @classmethod
    def locate(cls, directory: Path | None = None) -> FlinkHarness | str:
        """The harness, or a sentence saying what is missing and how to set it up."""
        candidates = [directory] if directory is not None else []
        if env_dir := os.environ.get("PENSTOCK_FLINK_BENCH"):
            candidates.append(Path(env_dir))
        candidates.append(DEFAULT_HARNESS_DIR)
        found = next((c for c in candidates if (c / "run.sh").is_file()), None)
        if found is None:
            looked = ", ".join(str(candidate) for candidate in candidates)
            return (
                "The Flink harness (a directory with run.sh and setup.sh, kept beside this "
                f"checkout in shared/bench/flink) was not found in {looked}; pass its "
                "directory with --flink-dir or set PENSTOCK_FLINK_BENCH, then run its "
                "setup.sh once."
            )
        if shutil.which("java") is None:
            return f"Java is not installed; install a JDK 17, then run {found / 'setup.sh'}."
        environment = dict(os.environ)
        venv = Path(environment.get("VENV", found / ".venv-flink"))
        build = Path(environment.get("BUILD_DIR", found / ".build"))
        if not (venv / "bin" / "python").exists() or not build.is_dir():
            return (
                f"Flink is not set up; run {found / 'setup.sh'} (it installs apache-flink "
                "into a venv and compiles the harness; VENV and BUILD_DIR choose where)."
            )
        environment["VENV"] = str(venv)
        environment["BUILD_DIR"] = str(build)
        environment.setdefault(
            "LOGDIR", str(Path(os.environ.get("TMPDIR", "/tmp")) / "penstock-flink-logs")
        )
        return cls(found, environment)

    def run(self, comparison: Comparison, records: int, timeout_s: float) -> Measurement:
        started = time.perf_counter()
        command = ["bash", str(self.directory / "run.sh"), *comparison.flink_args(records)]
        environment = dict(self.environment, TIMEOUT_S=str(int(timeout_s)))
        try:
            done = subprocess.run(
                command,
                capture_output=True,
                text=True,
                timeout=timeout_s + 30,
                env=environment,
                check=False,
            )
        except subprocess.TimeoutExpired:
            return Measurement("flink", 0, 0, 0, timeout_s, ok=False, error="timed out")
        wall = time.perf_counter() - started
        line = next(
            (line for line in done.stdout.splitlines() if line.startswith(_RESULT_PREFIX)), None
        )
        if done.returncode != 0 or line is None:
            tail = (done.stderr or done.stdout).strip().splitlines()[-3:]
            return Measurement("flink", 0, 0, 0, wall, ok=False, error=" | ".join(tail))
        data = json.loads(line[len(_RESULT_PREFIX) :])
        return Measurement(
            "flink",
            int(data.get("sink_records", 0)),
            float(data.get("sink_first_to_end_s", 0.0)),
            float(data.get("records_per_s", 0.0)),
            float(data.get("process_wall_s", wall)),
            p50_us=data.get("lat_p50_us"),
            p99_us=data.get("lat_p99_us"),
            ok=bool(data.get("records_ok", True)),
        )


# -- the comparison ----------------------------------------------------------------------------


def compare(
    comparisons: Sequence[Comparison],
    reps: int = 3,
    scale: float = 1.0,
    flink: FlinkHarness | None = None,
    timeout_s: float = 300.0,
    progress: Callable[[str], None] | None = None,
    steal_clock: Callable[[], float | None] = host_steal_s,
) -> list[ComparisonResult]:
    """Runs every comparison ``reps`` times per side, alternating penstock and Flink.

    Each run carries the host's steal over it, read from ``steal_clock`` before and after.
    """

    def measured(
        run: Callable[[Comparison, int, float], Measurement], comparison: Comparison, records: int
    ) -> Measurement:
        before = steal_clock()
        measurement = run(comparison, records, timeout_s)
        after = steal_clock()
        if before is None or after is None:
            return measurement
        return replace(measurement, steal_s=round(after - before, 2))

    results = [ComparisonResult(comparison) for comparison in comparisons]
    for rep in range(reps):
        for result in results:
            comparison = result.comparison
            records = (
                comparison.records
                if comparison.is_latency
                else max(10_000, int(comparison.records * scale))
            )
            if progress is not None:
                progress(f"[{rep + 1}/{reps}] {comparison.id}: penstock")
            result.penstock.append(measured(_run_penstock_process, comparison, records))
            if flink is not None:
                if progress is not None:
                    progress(f"[{rep + 1}/{reps}] {comparison.id}: flink")
                result.flink.append(measured(flink.run, comparison, records))
    return results


def _main(argv: Sequence[str]) -> int:
    """``python -m penstock.bench.compare --run-one ID --records N``: one penstock run."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m penstock.bench.compare")
    parser.add_argument("--run-one", required=True, choices=[c.id for c in COMPARISONS])
    parser.add_argument("--records", type=int, required=True)
    args = parser.parse_args(argv)
    comparison = next(c for c in COMPARISONS if c.id == args.run_one)
    measurement = run_penstock_once(comparison, args.records)
    print(_RESULT_PREFIX + json.dumps(asdict(measurement)), flush=True)
    return 0 if measurement.ok else 1


if __name__ == "__main__":
    raise SystemExit(_main(sys.argv[1:]))
