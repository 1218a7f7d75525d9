"""The jobs ``penstock bench compare`` runs: Flink's harness workloads, on penstock.

They mirror ``shared/bench/flink`` (NetBench) one for one:

* ``long8`` / ``bytes100`` / ``bytes1k``: a generator source (8-byte ints, or the same
  100-byte / 1 KiB payload again and again) → rebalance → a counting sink; source and
  sink in different slot sharing groups, so with 2 TaskManagers × 1 slot every record
  crosses loopback TCP, and with 1 TaskManager × 2 slots a local channel;
* ``keyby``: ints → key ``v % 1024`` (hash partitioning) → a keyed count, parallelism 2;
* ``latency``: a rate-limited source emitting its monotonic clock → rebalance → a sink
  recording the difference at arrival (the clock is the same in every process of a
  host).

Each sink subtask measures as Flink's harness does: from its first record to the end of
its input; at the end it emits one summary record, which a collect sink brings back.
The operators work on whole batches, as every penstock operator does.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Final

import numpy as np

from penstock.ids import IntermediateDataSetID, JobID, JobVertexID
from penstock.runtime.job_graph import JobEdge, JobGraph, JobVertex, OperatorSpec, PartitionerSpec
from penstock.serialization.generic import GenericSerializer
from penstock.serialization.types import BytesSerializer, IntSerializer, TypeSerializer
from penstock.task.operator import Output, RuntimeContext, SourceOperator, StreamOperator
from penstock.task.operators import CollectSinkFactory, sequence_split

__all__ = ["WORKLOADS", "BenchJob", "SinkSummary", "build_job"]

WORKLOADS: Final = ("long8", "bytes100", "bytes1k", "keyby", "latency")
KEYS: Final = 1024


@dataclass(frozen=True, slots=True)
class SinkSummary:
    """What one sink subtask measured."""

    subtask: int
    records: int
    payload_bytes: int
    first_ns: int
    end_ns: int
    latencies_ns: tuple[int, ...] = ()


# -- sources -----------------------------------------------------------------------------


class _GeneratorSource:
    """Emits this subtask's share of ``count`` records in batches."""

    def __init__(self, kind: str, count: int) -> None:
        self.kind = kind
        self.count = count
        self.output: Output[object] | None = None
        self._next = 0
        self._stop = 0
        self._payload = b""

    def setup(self, output: Output[object], context: RuntimeContext) -> None:
        self.output = output
        split = sequence_split(0, self.count - 1, context.parallelism, context.subtask_index)
        self._next, self._stop = split.start, split.stop

    def open(self) -> None:
        size = {"bytes100": 100, "bytes1k": 1024}.get(self.kind, 0)
        self._payload = bytes((i * 31 + 7) & 0xFF for i in range(size))

    def emit_next_batch(self, max_records: int) -> bool:
        assert self.output is not None
        start = self._next
        stop = min(self._stop, start + max_records)
        if stop > start:
            if self._payload:
                self.output.collect_batch([self._payload] * (stop - start))
            else:
                self.output.collect_batch(list(range(start, stop)))
        self._next = stop
        return stop < self._stop

    def close(self) -> None:
        pass


class _RateLimitedClockSource:
    """Emits ``time.monotonic_ns()`` ``count`` times at ``rate`` records per second."""

    def __init__(self, count: int, rate: float) -> None:
        self.count = count
        self.interval_ns = int(1e9 / rate)
        self.output: Output[object] | None = None
        self._sent = 0
        self._next_due = 0

    def setup(self, output: Output[object], context: RuntimeContext) -> None:
        self.output = output

    def open(self) -> None:
        self._next_due = time.monotonic_ns()

    def emit_next_batch(self, max_records: int) -> bool:
        assert self.output is not None
        delay = self._next_due - time.monotonic_ns()
        if delay > 0:
            time.sleep(delay / 1e9)  # the rate limiter: a source may block its own task
        self.output.collect(time.monotonic_ns())
        self._next_due += self.interval_ns
        self._sent += 1
        return self._sent < self.count

    def close(self) -> None:
        pass


@dataclass(frozen=True, slots=True)
class GeneratorSourceFactory:
    """The source of a workload."""

    kind: str
    count: int
    rate: float = 1000.0

    @property
    def is_source(self) -> bool:
        return True

    def create(self) -> SourceOperator[object]:
        if self.kind == "latency":
            return _RateLimitedClockSource(self.count, self.rate)
        return _GeneratorSource(self.kind, self.count)


# -- sinks -----------------------------------------------------------------------------


class _MeasuringSink:
    """Counts (or times) what arrives; emits one ``SinkSummary`` at the end of input."""

    def __init__(self, kind: str, warmup: int) -> None:
        self.kind = kind
        self.warmup = warmup
        self.output: Output[object] | None = None
        self.subtask = 0
        self.records = 0
        self.payload_bytes = 0
        self.first_ns = 0
        self.latencies: list[int] = []
        self.counts = np.zeros(KEYS, dtype=np.int64)

    def setup(self, output: Output[object], context: RuntimeContext) -> None:
        self.output = output
        self.subtask = context.subtask_index

    def open(self) -> None:
        pass

    def process_batch(self, records: list[object]) -> None:
        now = time.monotonic_ns()
        if self.records == 0:
            self.first_ns = now
        self.records += len(records)
        kind = self.kind
        if kind == "latency":
            self.latencies.extend(now - sent for sent in records)  # type: ignore[operator]
        elif kind == "keyby":
            # Keyed state in bulk: one count per key of v % 1024.
            keys = np.asarray(records, dtype=np.int64) % KEYS
            self.counts += np.bincount(keys, minlength=KEYS)
            self.payload_bytes += 8 * len(records)
        elif kind == "long8":
            self.payload_bytes += 8 * len(records)
        else:
            self.payload_bytes += sum(map(len, records))  # type: ignore[arg-type]

    def end_input(self) -> None:
        assert self.output is not None
        self.output.collect(
            SinkSummary(
                self.subtask,
                self.records,
                self.payload_bytes,
                self.first_ns,
                time.monotonic_ns(),
                tuple(self.latencies[self.warmup :]),
            )
        )

    def close(self) -> None:
        pass


@dataclass(frozen=True, slots=True)
class MeasuringSinkFactory:
    """The sink (or keyed counter) of a workload."""

    kind: str
    warmup: int = 1000

    @property
    def is_source(self) -> bool:
        return False

    def create(self) -> StreamOperator[object, object]:
        return _MeasuringSink(self.kind, self.warmup)


# -- the job graph -----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class BenchJob:
    """One workload's shape."""

    workload: str
    records: int
    task_managers: int
    buffer_timeout_ms: int
    parallelism: int = 1
    rate: float = 1000.0
    warmup: int = 1000

    def configuration(self) -> dict[str, object]:
        """The cluster this job needs: Flink harness' TaskManagers and slots."""
        keyed = self.workload == "keyby"
        slots_needed = self.parallelism if keyed else 2 * self.parallelism
        return {
            "execution.target": "minicluster",
            "minicluster.number-of-taskmanagers": self.task_managers,
            "taskmanager.numberOfTaskSlots": -(-slots_needed // self.task_managers),
            "execution.buffer-timeout": self.buffer_timeout_ms,
        }


def _serializer(workload: str) -> TypeSerializer[object]:
    if workload in ("bytes100", "bytes1k"):
        return BytesSerializer()  # type: ignore[return-value]
    return IntSerializer()  # type: ignore[return-value]


def _key(value: int) -> int:
    return value % KEYS


def build_job(job: BenchJob) -> JobGraph:
    """Source → (rebalance | hash) → measuring sink → collect, as Flink's harness."""
    keyed = job.workload == "keyby"
    source_group, sink_group = ("default", "default") if keyed else ("src", "snk")
    source = JobVertex(
        JobVertexID.generate(),
        "Source: source",
        (
            OperatorSpec(
                "Source: source", GeneratorSourceFactory(job.workload, job.records, job.rate), 0
            ),
        ),
        job.parallelism if job.workload != "latency" else 1,
        slot_sharing_group=source_group,
        buffer_timeout_ms=job.buffer_timeout_ms,
    )
    sink_name = "keyed-count" if keyed else "sink"
    sink = JobVertex(
        JobVertexID.generate(),
        sink_name,
        (OperatorSpec(sink_name, MeasuringSinkFactory(job.workload, job.warmup), 1),),
        job.parallelism if job.workload != "latency" else 1,
        slot_sharing_group=sink_group,
        buffer_timeout_ms=job.buffer_timeout_ms,
    )
    collect = JobVertex(
        JobVertexID.generate(),
        "Sink: collect",
        (OperatorSpec("Sink: collect", CollectSinkFactory(), 2),),
        1,
        slot_sharing_group=sink_group,
    )
    partitioner = (
        PartitionerSpec("hash", key_selector=_key)  # type: ignore[arg-type]
        if keyed
        else PartitionerSpec("rebalance")
    )
    edges = (
        JobEdge(
            source.id,
            sink.id,
            partitioner,
            IntermediateDataSetID.generate(),
            _serializer(job.workload),
        ),
        JobEdge(
            sink.id,
            collect.id,
            PartitionerSpec("rebalance"),
            IntermediateDataSetID.generate(),
            GenericSerializer(),
        ),
    )
    return JobGraph(
        JobID.generate(),
        f"penstock-bench-{job.workload}",
        (source, sink, collect),
        edges,
        {key: str(value) for key, value in job.configuration().items()},
    )
