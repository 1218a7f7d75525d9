"""StreamTask and Task end to end, in one process, on a real ShuffleEnvironment.

Job graphs are built by hand and deployed with ``build_deployment``; every subtask is
placed at the environment's own data address, so all channels are local.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import cast

import pytest

from penstock.config import Configuration
from penstock.errors import PartitionError, ProducerFailedError
from penstock.functions import MapFunction, SinkFunction
from penstock.ids import ExecutionAttemptID, IntermediateDataSetID, JobID, JobVertexID
from penstock.memory.availability import any_of, complete
from penstock.runtime.deployment import TaskDeploymentDescriptor, build_deployment
from penstock.runtime.job_graph import JobEdge, JobGraph, JobVertex, OperatorSpec, PartitionerSpec
from penstock.runtime.states import ExecutionState
from penstock.runtime.task import Task
from penstock.serialization.generic import GenericSerializer
from penstock.serialization.types import IntSerializer, TypeSerializer
from penstock.shuffle import ShuffleEnvironment
from penstock.task import stream_task
from penstock.task.input_processor import StreamTaskNetworkInput
from penstock.task.metrics import TimerGauge
from penstock.task.operator import OperatorFactory, RuntimeContext
from penstock.task.operators import (
    CollectionSourceFactory,
    CollectSinkFactory,
    FilterFactory,
    FlatMapFactory,
    MapFactory,
    ReduceFactory,
    SequenceSourceFactory,
    SinkFactory,
    SumFactory,
)

WAIT = 30.0


@pytest.fixture
def shuffle() -> Iterator[ShuffleEnvironment]:
    config = Configuration(
        {
            "taskmanager.memory.network.min": "8mb",
            "taskmanager.memory.network.max": "8mb",
            "taskmanager.memory.segment-size": "4kb",
            "taskmanager.network.request-backoff.initial": "5ms",
            "taskmanager.network.request-backoff.max": "1s",
        }
    )
    environment = ShuffleEnvironment.from_configuration(config, name="test-tm")
    environment.start()
    try:
        yield environment
    finally:
        environment.close()


# -- building jobs ---------------------------------------------------------------------


def vertex(
    name: str, parallelism: int, *factories: tuple[str, OperatorFactory], timeout_ms: int = 100
) -> JobVertex:
    return JobVertex(
        JobVertexID.generate(),
        name,
        tuple(OperatorSpec(n, f, i) for i, (n, f) in enumerate(factories)),
        parallelism,
        buffer_timeout_ms=timeout_ms,
    )


def edge(
    source: JobVertex,
    target: JobVertex,
    partitioner: PartitionerSpec,
    serializer: TypeSerializer[object] | None = None,
    target_input: int = 0,
) -> JobEdge:
    return JobEdge(
        source.id,
        target.id,
        partitioner,
        IntermediateDataSetID.generate(),
        serializer if serializer is not None else GenericSerializer(),
        target_input,
    )


def first(record: object) -> object:
    """The key of a (key, value) record."""
    return cast("tuple[object, ...]", record)[0]


def deploy(job: JobGraph, environment: ShuffleEnvironment) -> list[TaskDeploymentDescriptor]:
    locations = {
        (position, index): environment.data_address
        for position, v in enumerate(job.vertices)
        for index in range(v.parallelism)
    }
    return build_deployment(job, locations)


@dataclass
class Run:
    """The tasks of one job and what they reported."""

    tasks: list[Task]
    results: list[object] = field(default_factory=list)
    transitions: dict[str, list[ExecutionState]] = field(default_factory=dict)
    errors: dict[str, BaseException] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)
    all_running: threading.Event = field(default_factory=threading.Event)

    def join(self) -> None:
        for task in self.tasks:
            assert task.join(WAIT), f"{task.task_name} did not end"

    def states(self) -> dict[str, ExecutionState]:
        return {task.task_name: task.state for task in self.tasks}

    def task(self, prefix: str) -> Task:
        return next(task for task in self.tasks if task.task_name.startswith(prefix))


def start(
    job: JobGraph,
    environment: ShuffleEnvironment,
    sink: Callable[[list[object]], None] | None = None,
    prepare: Callable[[Task], None] | None = None,
) -> Run:
    run = Run([])
    names: dict[ExecutionAttemptID, str] = {}

    def on_state(
        execution_id: ExecutionAttemptID, state: ExecutionState, error: BaseException | None
    ) -> None:
        with run.lock:
            name = names[execution_id]
            run.transitions.setdefault(name, []).append(state)
            if error is not None:
                run.errors[name] = error
            running = sum(1 for s in run.transitions.values() if ExecutionState.RUNNING in s)
            if running == len(run.tasks):
                run.all_running.set()

    def collect(records: list[object]) -> None:
        with run.lock:
            run.results.extend(records)

    for tdd in deploy(job, environment):
        names[tdd.execution_id] = tdd.task_name
        run.tasks.append(Task(tdd, environment, on_state, sink or collect))
    for task in run.tasks:
        if prepare is not None:
            prepare(task)
        task.start()
    return run


def job(*vertices: JobVertex, edges: Sequence[JobEdge] = ()) -> JobGraph:
    return JobGraph(JobID.generate(), "test job", tuple(vertices), tuple(edges))


def all_segments_returned(environment: ShuffleEnvironment) -> bool:
    pool = environment.network_pool
    return pool.available_segments == pool.total_segments


# -- pipelines ------------------------------------------------------------------------


def test_source_map_keyed_reduce_collect(shuffle: ShuffleEnvironment) -> None:
    source = vertex(
        "Source: Sequence Source -> Map",
        2,
        ("Source: Sequence Source", SequenceSourceFactory(1, 10_000)),
        ("Map", MapFactory(lambda x: (x % 7, x))),
    )
    reduce = vertex(
        "Keyed Reduce -> Sink: Collect",
        3,
        ("Keyed Reduce", ReduceFactory(lambda a, b: (a[0], a[1] + b[1]), lambda r: r[0])),
        ("Sink: Collect", CollectSinkFactory()),
    )
    key = PartitionerSpec("hash", key_selector=first)
    run = start(job(source, reduce, edges=[edge(source, reduce, key)]), shuffle)
    run.join()

    assert set(run.states().values()) == {ExecutionState.FINISHED}
    assert len(run.results) == 10_000  # a running reduce emits once per record
    finals: dict[int, int] = {}
    for k, total in cast("list[tuple[int, int]]", run.results):
        finals[k] = max(finals.get(k, 0), total)
    assert finals == {k: sum(x for x in range(1, 10_001) if x % 7 == k) for k in range(7)}
    for name, states in run.transitions.items():
        assert states == [
            ExecutionState.DEPLOYING,
            ExecutionState.INITIALIZING,
            ExecutionState.RUNNING,
            ExecutionState.FINISHED,
        ], name
    assert all_segments_returned(shuffle)


def test_metrics_count_records_and_bytes(shuffle: ShuffleEnvironment) -> None:
    source = vertex("Source: Collection Source", 1, ("Source", CollectionSourceFactory(range(500))))
    sink = vertex(
        "Filter -> Sink: Collect",
        1,
        ("Filter", FilterFactory(lambda x: x % 2 == 0)),
        ("Sink: Collect", CollectSinkFactory()),
    )
    forward = PartitionerSpec("forward")
    run = start(
        job(source, sink, edges=[edge(source, sink, forward, IntSerializer())]),  # type: ignore[arg-type]
        shuffle,
    )
    run.join()

    assert sorted(run.results) == list(range(0, 500, 2))  # type: ignore[type-var]
    produced = run.task("Source").metrics_snapshot()
    consumed = run.task("Filter").metrics_snapshot()
    assert produced["numRecordsOut"] == 500
    assert produced["numRecordsIn"] == 0
    assert consumed["numRecordsIn"] == 500
    assert consumed["numRecordsOut"] == 0  # a sink writes to no partition
    assert produced["numBytesOut"] == 500 * (4 + 8)  # data buffers only
    assert consumed["numBytesIn"] >= 500 * (4 + 8)  # plus the end-of-partition event
    assert consumed["numBuffersInLocal"] >= 1
    assert consumed["numBuffersInRemote"] == 0
    assert consumed["inPoolUsage"] == 0
    for metrics in (produced, consumed):
        assert metrics["isBackPressured"] == 0
        assert metrics["busyTimeMsPerSecond"] == pytest.approx(
            1000
            - min(metrics["idleTimeMsPerSecond"] + metrics["backPressuredTimeMsPerSecond"], 1000)
        )
        assert metrics["accumulateBusyTimeMs"] >= 0


def test_union_of_two_inputs_and_broadcast_to_two_outputs(shuffle: ShuffleEnvironment) -> None:
    left = vertex("Source: Left", 1, ("Source: Left", CollectionSourceFactory([1, 2, 3])))
    right = vertex("Source: Right", 2, ("Source: Right", SequenceSourceFactory(100, 109)))
    union = vertex("Map", 2, ("Map", MapFactory(lambda x: x * 10)))
    sink_a = vertex("Sink: A", 1, ("Sink: A", CollectSinkFactory()))
    collected_b: list[object] = []
    lock = threading.Lock()

    def invoke(value: object) -> None:
        with lock:
            collected_b.append(value)

    sink_b = vertex("Sink: B", 1, ("Sink: B", SinkFactory(invoke)))
    rebalance = PartitionerSpec("rebalance")
    edges = [
        edge(left, union, rebalance, target_input=0),
        edge(right, union, rebalance, target_input=1),
        edge(union, sink_a, PartitionerSpec("global")),
        edge(union, sink_b, PartitionerSpec("rebalance")),
    ]
    run = start(job(left, right, union, sink_a, sink_b, edges=edges), shuffle)
    run.join()

    expected = sorted(x * 10 for x in [1, 2, 3, *range(100, 110)])
    assert set(run.states().values()) == {ExecutionState.FINISHED}
    assert sorted(run.results) == expected  # type: ignore[type-var]
    assert sorted(collected_b) == expected  # type: ignore[type-var]
    out = sum(run.task(f"Map ({i}/2)").metrics_snapshot()["numRecordsOut"] for i in (1, 2))
    assert out == len(expected)  # a record sent to two edges counts once
    assert all_segments_returned(shuffle)


def test_flat_map_and_sum_chain(shuffle: ShuffleEnvironment) -> None:
    source = vertex(
        "Source: Collection Source -> Flat Map",
        1,
        ("Source", CollectionSourceFactory(["a b", "b c", "c c"])),
        ("Flat Map", FlatMapFactory(lambda line: [(w, 1) for w in line.split()])),
    )
    counts = vertex(
        "Keyed Aggregation -> Sink: Collect",
        2,
        ("Keyed Aggregation", SumFactory(1, lambda r: r[0])),
        ("Sink: Collect", CollectSinkFactory()),
    )
    key = PartitionerSpec("hash", key_selector=first)
    run = start(job(source, counts, edges=[edge(source, counts, key)]), shuffle)
    run.join()

    finals: dict[str, int] = {}
    for word, count in cast("list[tuple[str, int]]", run.results):
        finals[word] = max(finals.get(word, 0), count)
    assert finals == {"a": 1, "b": 2, "c": 3}
    assert len(run.results) == 6


# -- backpressure -------------------------------------------------------------------


class SignallingTimer(TimerGauge):
    """A timer that tells the test when its first measured wait begins."""

    def __init__(self) -> None:
        super().__init__()
        self.started = threading.Event()

    def mark_start(self) -> None:
        super().mark_start()
        self.started.set()


def test_slow_sink_backpressures_the_source(shuffle: ShuffleEnvironment) -> None:
    """The sink holds its first record until the source is suspended on its output."""
    release = threading.Event()

    def slow(value: object) -> None:
        release.wait(WAIT)

    source = vertex("Source: Sequence Source", 1, ("Source", SequenceSourceFactory(0, 199_999)))
    sink = vertex("Sink: Slow", 1, ("Sink: Slow", SinkFactory(slow)))
    graph = job(
        source,
        sink,
        edges=[edge(source, sink, PartitionerSpec("forward"), IntSerializer())],  # type: ignore[arg-type]
    )
    tdds = deploy(graph, shuffle)
    states: list[ExecutionState] = []
    tasks = [Task(tdd, shuffle, lambda _id, state, _err: states.append(state)) for tdd in tdds]
    producer = tasks[0]
    soft, hard = SignallingTimer(), SignallingTimer()
    producer.metrics.soft_back_pressured_timer = soft
    producer.metrics.hard_back_pressured_timer = hard
    for task in tasks:
        task.start()
    backpressured = any_of([wrap(soft.started), wrap(hard.started)])
    backpressured.result(WAIT)
    assert producer.metrics.is_back_pressured() or hard.is_measuring
    during = producer.metrics_snapshot()
    assert during["isBackPressured"] == 1.0 or hard.is_measuring
    assert during["outPoolUsage"] > 0
    release.set()
    for task in tasks:
        assert task.join(WAIT)

    produced = producer.metrics_snapshot()
    assert [task.state for task in tasks] == [ExecutionState.FINISHED] * 2
    assert produced["accumulateBackPressuredTimeMs"] > 0
    assert produced["accumulateBackPressuredTimeMs"] >= during["accumulateBackPressuredTimeMs"]
    assert produced["numRecordsOut"] == 200_000
    assert tasks[1].metrics_snapshot()["numRecordsIn"] == 200_000
    assert all_segments_returned(shuffle)


def test_a_gate_filled_while_the_consumer_lets_the_producer_run_needs_no_suspension(
    shuffle: ShuffleEnvironment, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A consumer that finds its gate empty lets the producer run before it suspends.

    Here the producer always fills the gate in that moment (the stand-in for the yield
    waits for it), so the consumer is never idle: it never suspends. The producer's
    first record waits for the consumer's first yield, so that there is one.

    The stand-in waits for the very future the consumer checks after the yield (the
    last one its input handed out): the gate's current one may already be the done
    AVAILABLE while the producer has yet to complete the consumer's, outside the
    gate's lock.
    """
    yields = 0
    yielded = threading.Event()
    handed_out: list[Future[None]] = []
    get_available_future = StreamTaskNetworkInput.get_available_future

    def recording(self: StreamTaskNetworkInput) -> Future[None]:
        future = get_available_future(self)
        handed_out.append(future)
        return future

    def producer_fills_the_gate() -> None:
        nonlocal yields
        yields += 1
        yielded.set()
        handed_out[-1].result(WAIT)

    monkeypatch.setattr(StreamTaskNetworkInput, "get_available_future", recording)

    def after_the_first_yield(value: int) -> int:
        if not yielded.is_set():
            assert yielded.wait(WAIT)
        return value

    monkeypatch.setattr(stream_task, "_let_producer_run", producer_fills_the_gate)
    idle = SignallingTimer()

    def prepare(task: Task) -> None:
        if task.task_name.startswith("Sink"):
            task.metrics.idle_timer = idle

    source = vertex(
        "Source: Sequence Source",
        1,
        ("Source", SequenceSourceFactory(0, 9_999)),
        ("Map", MapFactory(after_the_first_yield)),
    )
    sink = vertex("Sink: Collect", 1, ("Sink", CollectSinkFactory()))
    graph = job(source, sink, edges=[edge(source, sink, PartitionerSpec("forward"))])
    run = start(graph, shuffle, prepare=prepare)
    run.join()

    assert sorted(cast("list[int]", run.results)) == list(range(10_000))
    assert yields > 0
    assert not idle.started.is_set()
    assert all_segments_returned(shuffle)


def wrap(event: threading.Event) -> Future[None]:
    """A future completed when ``event`` is set (by a helper thread, no polling)."""
    future: Future[None] = Future()

    def waiter() -> None:
        if event.wait(WAIT):
            complete(future)

    threading.Thread(target=waiter, daemon=True).start()
    return future


# -- failure and cancellation ---------------------------------------------------------


class Boom(Exception):
    pass


class FailingMap(MapFunction):
    def __init__(self) -> None:
        self.opened = 0
        self.closed = 0

    def open(self, runtime_context: RuntimeContext) -> None:
        self.opened += 1

    def map(self, value: object) -> object:
        if value == 777:
            msg = "no 777 please"
            raise Boom(msg)
        return value

    def close(self) -> None:
        self.closed += 1
        msg = "close fails too"
        raise RuntimeError(msg)


def test_user_exception_fails_the_task_with_the_original_error(
    shuffle: ShuffleEnvironment,
) -> None:
    source = vertex(
        "Source: Sequence Source -> Map",
        1,
        ("Source", SequenceSourceFactory(0, 100_000)),
        ("Map", MapFactory(FailingMap())),
    )
    sink = vertex("Sink: Collect", 1, ("Sink: Collect", CollectSinkFactory()))
    run = start(job(source, sink, edges=[edge(source, sink, PartitionerSpec("forward"))]), shuffle)
    run.join()

    name = run.task("Source").task_name
    error = run.errors[name]
    failing = source.operators[1].factory.fn  # type: ignore[attr-defined]
    assert (failing.opened, failing.closed) == (1, 1)  # closed once, its error only logged
    assert isinstance(error, Boom)
    assert str(error) == "no 777 please"
    assert run.transitions[name][-1] is ExecutionState.FAILED
    downstream = run.task("Sink")
    assert downstream.state in (ExecutionState.FAILED, ExecutionState.FINISHED)
    if downstream.state is ExecutionState.FAILED:
        cause = run.errors[downstream.task_name]
        assert isinstance(cause, PartitionError)
        if isinstance(cause, ProducerFailedError):
            assert cause.__cause__ is error
    assert all_segments_returned(shuffle)


def test_cancel_running_pipeline_returns_every_segment(shuffle: ShuffleEnvironment) -> None:
    started = threading.Event()
    release = threading.Event()

    class Blocking(SinkFunction):
        def invoke(self, value: object) -> None:
            started.set()
            release.wait(WAIT)  # a stuck sink: the source fills its pool and blocks

    source = vertex(
        "Source: Sequence Source -> Map",
        2,
        ("Source", SequenceSourceFactory(0, 10**9)),
        ("Map", MapFactory(lambda x: x + 1)),
    )
    middle = vertex("Map", 2, ("Map", MapFactory(lambda x: x)))
    sink = vertex("Sink: Blocking", 1, ("Sink", SinkFactory(Blocking())))
    graph = job(
        source,
        middle,
        sink,
        edges=[
            edge(source, middle, PartitionerSpec("rebalance")),
            edge(middle, sink, PartitionerSpec("rebalance")),
        ],
    )
    signals: list[Future[None]] = []

    def watch_sources(task: Task) -> None:
        if task.task_name.startswith("Source"):
            soft, hard = SignallingTimer(), SignallingTimer()
            task.metrics.soft_back_pressured_timer = soft
            task.metrics.hard_back_pressured_timer = hard
            signals.append(any_of([wrap(soft.started), wrap(hard.started)]))

    run = start(graph, shuffle, prepare=watch_sources)
    assert run.all_running.wait(WAIT)
    assert started.wait(WAIT)
    for signal in signals:  # backpressure reached both sources
        signal.result(WAIT)
    for task in run.tasks:
        task.cancel()
        task.cancel()  # idempotent
    release.set()
    run.join()

    assert set(run.states().values()) == {ExecutionState.CANCELED}
    for states in run.transitions.values():
        assert states[-2:] == [ExecutionState.CANCELING, ExecutionState.CANCELED]
    assert run.errors == {}
    assert all_segments_returned(shuffle)


def test_cancel_idle_consumer_wakes_it(shuffle: ShuffleEnvironment) -> None:
    """A consumer waiting for input (its producer never sends) ends when cancelled."""
    never = threading.Event()

    def stuck(value: object) -> object:
        never.wait(WAIT)
        return value

    source = vertex(
        "Source: Collection Source -> Map",
        1,
        ("Source", CollectionSourceFactory([1])),
        ("Map", MapFactory(stuck)),
    )
    sink = vertex("Sink: Collect", 1, ("Sink", CollectSinkFactory()))
    run = start(job(source, sink, edges=[edge(source, sink, PartitionerSpec("forward"))]), shuffle)
    assert run.all_running.wait(WAIT)
    consumer = run.task("Sink")
    consumer.cancel()
    assert consumer.join(WAIT)
    assert consumer.state is ExecutionState.CANCELED
    run.task("Source").cancel()
    never.set()
    run.join()
    assert run.task("Source").state is ExecutionState.CANCELED
    assert all_segments_returned(shuffle)


def test_consumer_of_a_cancelled_producer_ends_cancelled(shuffle: ShuffleEnvironment) -> None:
    """Only the producer is cancelled; the consumer reading its released partition
    ends CANCELED, as in Flink, because nothing failed."""
    source = vertex("Source: Sequence Source", 1, ("Source", SequenceSourceFactory(0, 10**9)))
    sink = vertex("Sink: Collect", 1, ("Sink", CollectSinkFactory()))
    run = start(
        job(source, sink, edges=[edge(source, sink, PartitionerSpec("forward"))]),
        shuffle,
        sink=lambda _records: None,
    )
    assert run.all_running.wait(WAIT)
    run.task("Source").cancel()
    run.join()

    assert run.states() == {
        "Source: Sequence Source (1/1)": ExecutionState.CANCELED,
        "Sink: Collect (1/1)": ExecutionState.CANCELED,
    }
    assert run.errors == {}
    assert all_segments_returned(shuffle)


def test_cancel_before_start(shuffle: ShuffleEnvironment) -> None:
    source = vertex("Source: Collection Source", 1, ("Source", CollectionSourceFactory([1])))
    (tdd,) = deploy(job(source), shuffle)
    seen: list[ExecutionState] = []
    task = Task(tdd, shuffle, lambda _id, state, _err: seen.append(state))
    task.cancel()
    task.start()
    assert task.join(1.0)
    assert task.state is ExecutionState.CANCELED
    assert seen == [ExecutionState.CANCELED]


def test_collect_sink_without_results_sink_fails(shuffle: ShuffleEnvironment) -> None:
    source = vertex(
        "Source: Collection Source -> Sink: Collect",
        1,
        ("Source", CollectionSourceFactory([1])),
        ("Sink: Collect", CollectSinkFactory()),
    )
    (tdd,) = deploy(job(source), shuffle)
    errors: list[BaseException] = []
    task = Task(tdd, shuffle, lambda _id, _state, err: errors.extend([err] if err else []))
    task.start()
    assert task.join(WAIT)
    assert task.state is ExecutionState.FAILED
    assert "execute_and_collect" in str(errors[0])
