"""Task: one deployed subtask, run in its own thread on a TaskManager's network stack.

Theory of operation
-------------------
``start()`` starts the task thread, named after the task, which walks Flink's states::

    CREATED → DEPLOYING       result partitions and input gates are created
            → INITIALIZING    the operator chain is built and opened
            → RUNNING         the mailbox loop processes the input
            → FINISHED        partitions finished (end of partition queued), operators
                              closed, partitions and gates closed
    any → FAILED              an exception (the user's own object is reported): the
                              partitions fail, so consumers get ProducerFailedError
    any → CANCELING → CANCELED   after ``cancel()``, or when a consumed partition was
                              released because its producer was cancelled

``on_state`` is called on the task thread at each transition (CANCELED is reported by
the caller of ``cancel()`` only when the thread never started).

``cancel()`` is thread-safe and idempotent. It must wake the task wherever it waits:
in the mailbox (idle or soft backpressure) the mailbox is closed; blocked for a buffer
(hard backpressure) its partitions' pools are destroyed and the partitions released,
so the wait ends with an error the task recognises as cancellation. The task thread
then closes its gates, partitions and operators itself, so every segment returns to
the network pool. A task inside a long user call notices at the next step.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from penstock.consumer.input_gate import SingleInputGate
from penstock.errors import IllegalStateError, TaskCancelledError
from penstock.ids import ExecutionAttemptID
from penstock.partition.result_partition import ResultPartition
from penstock.runtime.deployment import TaskDeploymentDescriptor
from penstock.runtime.states import ExecutionState
from penstock.shuffle import ShuffleEnvironment
from penstock.task.metrics import TaskIOMetrics
from penstock.task.stream_task import StreamTask

__all__ = ["StateListener", "Task"]

log = logging.getLogger(__name__)

StateListener = Callable[[ExecutionAttemptID, ExecutionState, BaseException | None], None]
"""Told of every state transition: (execution id, new state, failure or None)."""


class Task:
    """Runs one ``TaskDeploymentDescriptor`` in a thread of its own.

    Args:
        tdd: What to run.
        shuffle: The TaskManager's network stack (started).
        on_state: Called at each state transition.
        results_sink: Where a collect sink sends its batches.
    """

    def __init__(
        self,
        tdd: TaskDeploymentDescriptor,
        shuffle: ShuffleEnvironment,
        on_state: StateListener,
        results_sink: Callable[[list[object]], None] | None = None,
    ) -> None:
        self.tdd = tdd
        self.shuffle = shuffle
        self.on_state = on_state
        self.results_sink = results_sink
        self.metrics = TaskIOMetrics(detailed=shuffle.options.detailed_metrics)
        self.failure_cause: BaseException | None = None
        self._state = ExecutionState.CREATED
        self._lock = threading.Lock()
        self._cancel_requested = False
        self._started = False
        self._partitions: list[ResultPartition] = []
        self._gates: list[SingleInputGate] = []
        self._stream_task: StreamTask | None = None
        self._thread = threading.Thread(target=self._run, name=tdd.task_name, daemon=True)

    @property
    def task_name(self) -> str:
        return self.tdd.task_name

    @property
    def execution_id(self) -> ExecutionAttemptID:
        return self.tdd.execution_id

    @property
    def state(self) -> ExecutionState:
        return self._state

    def start(self) -> None:
        """Starts the task thread (once).

        Raises:
            IllegalStateError: The task was started before.
        """
        with self._lock:
            if self._started:
                msg = f"{self.task_name} was started already"
                raise IllegalStateError(msg)
            self._started = True
            if self._cancel_requested:
                return  # cancelled before it started: already CANCELED
        self._thread.start()

    def cancel(self) -> None:
        """Cancels the task from any thread (idempotent); it ends CANCELED soon."""
        with self._lock:
            if self._cancel_requested or self._state.is_terminal:
                return
            self._cancel_requested = True
            started = self._started
            stream_task = self._stream_task
            partitions = list(self._partitions)
        if not started:
            self._transition(ExecutionState.CANCELED)
            return
        if stream_task is not None:
            stream_task.cancel()
        cause = TaskCancelledError(f"{self.task_name} was cancelled")
        for partition in partitions:
            # Wakes a producer blocked for a buffer; its wait ends in PoolDestroyedError.
            partition.release(cause)
            partition.buffer_pool.destroy()

    def join(self, timeout: float | None = None) -> bool:
        """Waits for the task thread to end; True if it ended (or never started)."""
        if self._thread.ident is None:
            return self._state.is_terminal
        self._thread.join(timeout)
        return not self._thread.is_alive()

    def metrics_snapshot(self) -> dict[str, float]:
        """The task's metrics by Flink's names (safe from any thread)."""
        return self.metrics.snapshot()

    # -- the task thread -------------------------------------------------------------

    def _run(self) -> None:
        try:
            self._transition(ExecutionState.DEPLOYING)
            self._deploy()
            self._check_cancelled()
            self._transition(ExecutionState.INITIALIZING)
            stream_task = StreamTask(
                self.tdd, self._partitions, self._gates, self.metrics, self.results_sink
            )
            with self._lock:
                self._stream_task = stream_task
            self._check_cancelled()
            stream_task.initialize()
            self._check_cancelled()
            self._transition(ExecutionState.RUNNING)
            self.metrics.mark_running()
            stream_task.invoke()
            self._check_cancelled()
            for partition in self._partitions:
                partition.finish()
            self.metrics.mark_ended()
            self._release(failed=False)
            self._transition(ExecutionState.FINISHED)
        except BaseException as exc:  # every failure ends the task and is reported
            self.metrics.mark_ended()
            if self._cancel_requested or _caused_by_cancellation(exc):
                self._end_cancelled()
            else:
                self._end_failed(exc)

    def _deploy(self) -> None:
        name = self.task_name
        for produced in self.tdd.produced:
            self._add_partition(self.shuffle.create_result_partition(produced.descriptor, name))
        for consumed in self.tdd.consumed:
            self._gates.append(self.shuffle.create_input_gate(consumed.descriptor, name))
        self.metrics.attach(self._partitions, self._gates)

    def _add_partition(self, partition: ResultPartition) -> None:
        with self._lock:
            self._partitions.append(partition)
            cancelled = self._cancel_requested
        if cancelled:  # cancel() ran before this partition existed
            partition.buffer_pool.destroy()

    def _check_cancelled(self) -> None:
        if self._cancel_requested:
            msg = f"{self.task_name} was cancelled"
            raise TaskCancelledError(msg)

    def _end_cancelled(self) -> None:
        self._transition(ExecutionState.CANCELING)
        cause = TaskCancelledError(f"{self.task_name} was cancelled")
        for partition in self._partitions:
            partition.release(cause)
        self._release(failed=True)
        self._transition(ExecutionState.CANCELED)

    def _end_failed(self, error: BaseException) -> None:
        log.info("%s failed", self.task_name, exc_info=error)
        self.failure_cause = error
        for partition in self._partitions:
            try:
                partition.fail(error)
            except Exception:
                log.warning("%s: could not fail %s", self.task_name, partition, exc_info=True)
        self._release(failed=True)
        self._transition(ExecutionState.FAILED, error)

    def _release(self, failed: bool) -> None:
        """Closes operators, writers, partitions and gates; errors are logged."""
        stream_task = self._stream_task
        if stream_task is not None:
            try:
                stream_task.cleanup(failed)
            except Exception:
                log.warning("%s: error during clean-up", self.task_name, exc_info=True)
        for gate in self._gates:
            try:
                gate.close()
            except Exception:
                log.warning("%s: could not close %s", self.task_name, gate, exc_info=True)
        for partition in self._partitions:
            try:
                partition.close()
            except Exception:
                log.warning("%s: could not close %s", self.task_name, partition, exc_info=True)

    def _transition(self, state: ExecutionState, error: BaseException | None = None) -> None:
        with self._lock:
            self._state = state
        try:
            self.on_state(self.execution_id, state, error)
        except Exception:
            log.warning("%s: state listener failed for %s", self.task_name, state, exc_info=True)

    def __repr__(self) -> str:
        return f"Task({self.task_name!r}, {self._state.value})"


def _caused_by_cancellation(error: BaseException) -> bool:
    """Whether ``error`` is, or was caused by, a cancellation.

    A consumer whose producer was cancelled reads a partition released with a
    ``TaskCancelledError`` as its cause; as in Flink (a consumed partition released
    under a running task raises CancelTaskException), the consumer ends CANCELED
    too, not FAILED: nothing failed.
    """
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        if isinstance(current, TaskCancelledError):
            return True
        seen.add(id(current))
        current = current.__cause__
    return False
