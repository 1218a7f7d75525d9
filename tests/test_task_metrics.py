"""TimerGauge and TaskIOMetrics: Flink's names, windows and totals, local and remote input."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import TYPE_CHECKING, cast

import pytest
from hypothesis import given
from hypothesis import strategies as st

from penstock.config import Configuration
from penstock.ids import ExecutionAttemptID, IntermediateDataSetID, JobID, JobVertexID
from penstock.runtime.deployment import build_deployment
from penstock.runtime.job_graph import JobEdge, JobGraph, JobVertex, OperatorSpec, PartitionerSpec
from penstock.runtime.states import ExecutionState
from penstock.runtime.task import Task
from penstock.serialization.types import IntSerializer, TypeSerializer
from penstock.shuffle import ShuffleEnvironment
from penstock.task.metrics import DETAILED_QUEUE_METRICS, METRIC_NAMES, TaskIOMetrics, TimerGauge
from penstock.task.operators import CollectSinkFactory, SequenceSourceFactory

if TYPE_CHECKING:
    from penstock.consumer.input_gate import SingleInputGate
    from penstock.partition.result_partition import ResultPartition

WAIT = 30.0


class FakeClock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


# -- TimerGauge -----------------------------------------------------------------------


def test_timer_gauge_accumulates_intervals() -> None:
    clock = FakeClock()
    gauge = TimerGauge(clock, window_seconds=5)
    gauge.mark_start()
    clock.advance(0.25)
    assert gauge.is_measuring
    assert gauge.get_accumulated_ms() == pytest.approx(250)  # a running interval counts
    gauge.mark_start()  # no-op while measuring
    clock.advance(0.25)
    gauge.mark_end()
    gauge.mark_end()  # no-op when not measuring
    clock.advance(1.0)
    assert gauge.get_accumulated_ms() == pytest.approx(500)


def test_timer_gauge_per_second_value_over_the_window() -> None:
    clock = FakeClock(100.0)
    gauge = TimerGauge(clock, window_seconds=4)
    clock.advance(4.0)  # now 104.0: a full window of nothing
    assert gauge.get_value() == 0
    gauge.mark_start()
    clock.advance(2.0)  # waiting the whole of 104..106
    gauge.mark_end()
    # Window covers seconds 103..106 (3 s so far of second 103, 104, 105 and now 106.0).
    assert gauge.get_value() == pytest.approx(2000 / 3)
    clock.advance(10.0)  # the interval leaves the window
    assert gauge.get_value() == 0
    assert gauge.get_accumulated_ms() == pytest.approx(2000)


def test_timer_gauge_is_capped_at_1000_and_counts_a_running_wait() -> None:
    clock = FakeClock(50.0)
    gauge = TimerGauge(clock, window_seconds=3)
    gauge.mark_start()
    clock.advance(30.0)
    assert gauge.get_value() == pytest.approx(1000)
    gauge.freeze()
    clock.advance(30.0)
    assert gauge.get_value() == pytest.approx(1000)  # frozen when the task ended
    assert gauge.get_accumulated_ms() == pytest.approx(30_000)


@given(st.lists(st.tuples(st.floats(0, 3), st.floats(0, 3)), min_size=1, max_size=20))
def test_timer_gauge_value_never_exceeds_1000_and_total_is_exact(
    steps: list[tuple[float, float]],
) -> None:
    clock = FakeClock(10.0)
    gauge = TimerGauge(clock, window_seconds=5)
    total = 0.0
    for gap, wait in steps:
        clock.advance(gap)
        gauge.mark_start()
        clock.advance(wait)
        gauge.mark_end()
        total += wait * 1000
        assert 0 <= gauge.get_value() <= 1000 + 1e-6
    # Exact up to the clock's float resolution: a wait is the difference of two readings
    # near 10 to 70 s, each good to about 1e-14 s, and a wait may be far shorter.
    assert gauge.get_accumulated_ms() == pytest.approx(total, abs=1e-9)


def test_task_io_metrics_derives_busy_time() -> None:
    clock = FakeClock(500.0)
    metrics = TaskIOMetrics(clock, window_seconds=10)
    snapshot = metrics.snapshot()
    assert set(snapshot) == set(METRIC_NAMES)
    assert snapshot["busyTimeMsPerSecond"] == 0  # not running yet
    metrics.mark_running()
    metrics.idle_timer.mark_start()
    clock.advance(1.0)
    metrics.idle_timer.mark_end()
    metrics.soft_back_pressured_timer.mark_start()
    clock.advance(0.5)
    metrics.soft_back_pressured_timer.mark_end()
    metrics.hard_back_pressured_timer.start()
    clock.advance(0.5)
    metrics.hard_back_pressured_timer.stop()
    clock.advance(2.0)  # busy
    metrics.num_records_in += 7
    metrics.mark_ended()
    clock.advance(100.0)
    snapshot = metrics.snapshot()
    assert snapshot["accumulateIdleTimeMs"] == pytest.approx(1000)
    assert snapshot["accumulateBackPressuredTimeMs"] == pytest.approx(1000)
    assert snapshot["accumulateBusyTimeMs"] == pytest.approx(2000)
    assert snapshot["idleTimeMsPerSecond"] == pytest.approx(250)
    assert snapshot["backPressuredTimeMsPerSecond"] == pytest.approx(250)
    assert snapshot["softBackPressuredTimeMsPerSecond"] == pytest.approx(125)
    assert snapshot["busyTimeMsPerSecond"] == pytest.approx(500)
    assert snapshot["numRecordsIn"] == 7
    assert snapshot["isBackPressured"] == 0
    assert snapshot["inPoolUsage"] == snapshot["outPoolUsage"] == 0


def test_snapshot_is_safe_from_another_thread_while_timers_run() -> None:
    metrics = TaskIOMetrics()
    metrics.mark_running()
    stop = threading.Event()
    failures: list[BaseException] = []

    def reader() -> None:
        try:
            while not stop.is_set():
                snapshot = metrics.snapshot()
                assert 0 <= snapshot["busyTimeMsPerSecond"] <= 1000
        except BaseException as exc:  # reported below
            failures.append(exc)

    thread = threading.Thread(target=reader)
    thread.start()
    for _ in range(2000):
        metrics.idle_timer.mark_start()
        metrics.idle_timer.mark_end()
        metrics.num_records_out += 1
    stop.set()
    thread.join(WAIT)
    assert failures == []
    assert metrics.snapshot()["numRecordsOut"] == 2000


class QueueOf:
    """A channel or subpartition with ``queued`` buffers, as the metrics read them."""

    is_remote = False
    num_buffers_in = 0
    num_bytes_in = 0

    def __init__(self, queued: int) -> None:
        self.queue_length = queued

    def buffers_in_use(self) -> int:
        return self.queue_length


class GateOf:
    def __init__(self, *queued: int, usage: tuple[int, int] = (0, 0)) -> None:
        self.channels = [QueueOf(n) for n in queued]
        self.input_queue_length = sum(queued)
        self.buffer_usage = usage


class PoolOf:
    def __init__(self, used: int, size: int) -> None:
        self.used_buffers = used
        self.num_buffers = size


class OutputOf:
    num_bytes_out = 0
    is_released = False

    def __init__(self, *queued: int, used: int = 0, size: int = 0) -> None:
        self.subpartitions = [QueueOf(n) for n in queued]
        self.output_queue_length = sum(queued)
        self.buffer_pool = PoolOf(used, size)

    def is_available(self) -> bool:
        return True


@pytest.mark.parametrize("detailed", [False, True])
def test_detailed_metrics_add_the_queue_lengths_of_each_gate_and_output(detailed: bool) -> None:
    metrics = TaskIOMetrics(detailed=detailed)
    metrics.attach(
        cast("list[ResultPartition]", [OutputOf(3, 0, 1, 4), OutputOf(2)]),
        cast("list[SingleInputGate]", [GateOf(1, 5), GateOf()]),
    )
    snapshot = metrics.snapshot()
    assert (snapshot["inputQueueLength"], snapshot["outputQueueLength"]) == (6, 10)
    extra = {name: value for name, value in snapshot.items() if name not in METRIC_NAMES}
    if not detailed:
        assert extra == {}
        return
    expected = {
        "Shuffle.Netty.Input.0": (6, 1, 5, 3.0),
        "Shuffle.Netty.Input.1": (0, 0, 0, 0.0),
        "Shuffle.Netty.Output.0": (8, 0, 4, 2.0),
        "Shuffle.Netty.Output.1": (2, 2, 2, 2.0),
    }
    assert extra == {
        f"{group}.{name}": value
        for group, values in expected.items()
        for name, value in zip(DETAILED_QUEUE_METRICS, values, strict=True)
    }


def test_pool_usage_is_summed_over_the_gates_and_outputs_as_in_flink() -> None:
    # Flink's gauges divide the buffers used in all of a task's pools by their total
    # size: a small full pool does not make a large idle one look full.
    metrics = TaskIOMetrics()
    metrics.attach(
        cast("list[ResultPartition]", [OutputOf(used=4, size=4), OutputOf(used=0, size=12)]),
        cast("list[SingleInputGate]", [GateOf(usage=(10, 10)), GateOf(usage=(0, 30))]),
    )
    snapshot = metrics.snapshot()
    assert snapshot["outPoolUsage"] == 4 / 16
    assert snapshot["inPoolUsage"] == 10 / 40


# -- remote input, two environments in one process ----------------------------------------


def environment(name: str) -> ShuffleEnvironment:
    config = Configuration(
        {
            "taskmanager.memory.network.min": "4mb",
            "taskmanager.memory.network.max": "4mb",
            "taskmanager.memory.segment-size": "4kb",
            "taskmanager.network.request-backoff.initial": "5ms",
            "taskmanager.network.request-backoff.max": "1s",
            "taskmanager.host": "127.0.0.1",
        }
    )
    env = ShuffleEnvironment.from_configuration(config, name=name)
    env.start()
    return env


@pytest.fixture
def two_environments() -> Iterator[tuple[ShuffleEnvironment, ShuffleEnvironment]]:
    producer, consumer = environment("tm-a"), environment("tm-b")
    try:
        yield producer, consumer
    finally:
        consumer.close()
        producer.close()


@pytest.mark.integration
def test_remote_and_local_input_buffers_are_counted_apart(
    two_environments: tuple[ShuffleEnvironment, ShuffleEnvironment],
) -> None:
    """Two source subtasks, one on each environment, feed one sink on the second."""
    producer_env, consumer_env = two_environments
    source = JobVertex(
        JobVertexID.generate(),
        "Source: Sequence Source",
        (OperatorSpec("Source: Sequence Source", SequenceSourceFactory(1, 20_000), 0),),
        2,
    )
    sink = JobVertex(
        JobVertexID.generate(), "Sink: Collect", (OperatorSpec("Sink", CollectSinkFactory(), 1),), 1
    )
    serializer: TypeSerializer[object] = IntSerializer()  # type: ignore[assignment]
    job = JobGraph(
        JobID.generate(),
        "remote",
        (source, sink),
        (
            JobEdge(
                source.id,
                sink.id,
                PartitionerSpec("rebalance"),
                IntermediateDataSetID.generate(),
                serializer,
            ),
        ),
    )
    locations = {
        (0, 0): producer_env.data_address,
        (0, 1): consumer_env.data_address,
        (1, 0): consumer_env.data_address,
    }
    results: list[object] = []
    lock = threading.Lock()

    def collect(records: list[object]) -> None:
        with lock:
            results.extend(records)

    def ignore(_id: ExecutionAttemptID, _state: ExecutionState, _err: BaseException | None) -> None:
        pass

    tdds = build_deployment(job, locations)
    envs = [producer_env, consumer_env, consumer_env]
    tasks = [Task(tdd, env, ignore, collect) for tdd, env in zip(tdds, envs, strict=True)]
    for task in tasks:
        task.start()
    for task in tasks:
        assert task.join(WAIT)

    assert [task.state for task in tasks] == [ExecutionState.FINISHED] * 3
    assert sorted(results) == list(range(1, 20_001))  # type: ignore[type-var]
    metrics = tasks[2].metrics_snapshot()
    assert metrics["numRecordsIn"] == 20_000
    assert metrics["numBuffersInRemote"] >= 1
    assert metrics["numBuffersInLocal"] >= 1
    assert 0 <= metrics["inPoolUsage"] <= 1
    sent = sum(task.metrics_snapshot()["numBytesOut"] for task in tasks[:2])
    assert metrics["numBytesIn"] >= sent == 20_000 * (4 + 8)
    for env in (producer_env, consumer_env):
        pool = env.network_pool
        assert pool.available_segments == pool.total_segments
