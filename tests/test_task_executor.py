"""TaskExecutor: what a long-lived TaskManager keeps of the jobs it ran.

A TaskExecutor runs here in-process and its messages to the JobManager are recorded.
Only the producer of a two-vertex job is deployed, as when the consumer failed before
it was deployed or before it read anything: the producer finishes with its output
still queued in its partition, and only the end of the job can release it.
"""

from __future__ import annotations

import gc
import queue
import threading
import weakref
from collections.abc import Iterator
from typing import Any, cast

import pytest

from cluster_helpers import WAIT_S, edge, job, vertex
from penstock.config import Configuration
from penstock.runtime.control import (
    ControlMessage,
    DeployTask,
    ReleaseJob,
    SerializedValue,
    TaskStateChanged,
)
from penstock.runtime.deployment import build_deployment
from penstock.runtime.job_graph import JobGraph
from penstock.runtime.states import ExecutionState
from penstock.runtime.task import Task
from penstock.runtime.taskmanager import RunnableTask, TaskExecutor
from penstock.shuffle import ShuffleEnvironment
from penstock.task.operators import SequenceSourceFactory, SinkFactory


@pytest.fixture
def executor() -> Iterator[tuple[TaskExecutor, queue.SimpleQueue[ControlMessage]]]:
    sent: queue.SimpleQueue[ControlMessage] = queue.SimpleQueue()
    config = Configuration({"taskmanager.memory.segment-size": "4kb"})
    task_executor = TaskExecutor(config, sent.put, slots=2, tm_id="tm-test")
    task_executor.start()
    try:
        yield task_executor, sent
    finally:
        task_executor.close()


def wait_for_state(sent: queue.SimpleQueue[ControlMessage], state: ExecutionState) -> None:
    while True:
        message = sent.get(timeout=WAIT_S)
        if isinstance(message, TaskStateChanged) and message.state is state:
            return


def deploy_producer_only(task_executor: TaskExecutor, name: str) -> JobGraph:
    """Deploys the source of a source → sink job here; its sink is never deployed."""
    source = vertex("source", ("Source: Sequence", SequenceSourceFactory(1, 100)))
    sink = vertex("sink", ("Sink: Sink", SinkFactory(print)))
    graph = job(name, [source, sink], [edge(source, sink)])
    address = task_executor.shuffle.data_address
    producer, _consumer = build_deployment(graph, {(0, 0): address, (1, 0): address})
    task_executor.handle(DeployTask(producer.execution_id, SerializedValue.of(producer)))
    return graph


def test_the_end_of_a_job_releases_the_partitions_its_consumers_never_read(
    executor: tuple[TaskExecutor, queue.SimpleQueue[ControlMessage]],
) -> None:
    task_executor, sent = executor
    pool = task_executor.shuffle.network_pool
    graph = deploy_producer_only(task_executor, "half deployed")
    wait_for_state(sent, ExecutionState.FINISHED)
    (partition_id,) = task_executor.shuffle.partition_manager.partition_ids
    assert pool.available_segments < pool.total_segments  # its output waits for a reader

    assert task_executor.handle(ReleaseJob(graph.job_id))
    assert task_executor.shuffle.partition_manager.partition_ids == []
    assert pool.available_segments == pool.total_segments
    task_executor.handle(ReleaseJob(graph.job_id))  # once more: nothing left to do
    assert partition_id not in task_executor.shuffle.partition_manager.partition_ids


def join(ref: weakref.ref[RunnableTask]) -> bool:
    task = ref()
    return task is None or task.join(WAIT_S)


def test_the_tasks_of_ended_jobs_are_not_kept() -> None:
    sent: queue.SimpleQueue[ControlMessage] = queue.SimpleQueue()
    built: list[weakref.ref[RunnableTask]] = []

    def factory(*args: Any) -> RunnableTask:
        task = Task(*args)
        built.append(weakref.ref(task))
        return task

    task_executor = TaskExecutor(Configuration(), sent.put, slots=1, task_factory=factory)
    task_executor.start()
    try:
        for run in range(3):
            # The tasks so far have ended, not only reported FINISHED.
            assert all(join(ref) for ref in built)
            source = vertex("source", ("Source: Sequence", SequenceSourceFactory(1, 10)))
            graph = job(f"run {run}", [source])
            (tdd,) = build_deployment(graph, {(0, 0): task_executor.shuffle.data_address})
            task_executor.handle(DeployTask(tdd.execution_id, SerializedValue.of(tdd)))
            wait_for_state(sent, ExecutionState.FINISHED)
            task_executor.handle(ReleaseJob(graph.job_id))
        gc.collect()
        assert [ref() is None for ref in built] == [True, True, False]  # the last one is kept
    finally:
        task_executor.close()


class SlowToCreatePartitions:
    """The TaskManager's shuffle, with partition creation held until ``go`` is set."""

    def __init__(self, shuffle: Any) -> None:
        self._shuffle = shuffle
        self.creating = threading.Event()
        self.go = threading.Event()

    def create_result_partition(self, *args: Any, **kwargs: Any) -> Any:
        self.creating.set()
        assert self.go.wait(WAIT_S)
        return self._shuffle.create_result_partition(*args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._shuffle, name)


def test_a_partition_registered_after_its_job_was_released_is_released_too() -> None:
    # The end of a job can reach a TaskManager while one of its tasks is still being
    # deployed (after the JobManager's cancel timeout): the partition that task
    # registers late must not stay registered for the TaskManager's life.
    sent: queue.SimpleQueue[ControlMessage] = queue.SimpleQueue()
    shuffles: list[SlowToCreatePartitions] = []

    def factory(tdd: Any, shuffle: Any, *args: Any) -> RunnableTask:
        shuffles.append(SlowToCreatePartitions(shuffle))
        return Task(tdd, cast(ShuffleEnvironment, shuffles[-1]), *args)

    task_executor = TaskExecutor(Configuration(), sent.put, slots=2, task_factory=factory)
    task_executor.start()
    try:
        pool = task_executor.shuffle.network_pool
        graph = deploy_producer_only(task_executor, "released while deploying")
        assert shuffles[0].creating.wait(WAIT_S)
        task_executor.handle(ReleaseJob(graph.job_id))
        shuffles[0].go.set()
        wait_for_state(sent, ExecutionState.CANCELED)

        assert task_executor.shuffle.partition_manager.partition_ids == []
        assert pool.available_segments == pool.total_segments
    finally:
        task_executor.close()
