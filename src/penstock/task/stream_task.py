"""StreamTask: runs one subtask's operator chain in the mailbox loop.

Theory of operation
-------------------
The task's work is the mailbox's default action, one step per call:

* **source task**: while every output can take a buffer, ask the head (a
  ``SourceOperator``) for the next batch of up to ``source_batch_size`` records;
* **one-input task** (one gate, or several read as one ``UnionInputGate``): while every
  output can take a buffer, read one buffer from the gate, deserialize it into a list
  and pass the list down the chain.

Both keep a step within a time budget (``StepSize``), so that a chain with a slow
function emits its first results after a few records' work, not a thousand.

Before taking more input the step checks its outputs, as Flink's ``processInput`` does
with ``recordWriter.isAvailable()``: an output without a free buffer *suspends* the
default action until the partition's availability future completes (soft
backpressure, timed by ``softBackPressuredTimeMsPerSecond``). That keeps the task
from blocking inside the pool in most cases; a batch larger than the free buffers
still blocks there (hard backpressure, timed through the partition's
``backpressure_timer``). A gate with nothing to read suspends it until the gate's
future completes (idle time). The suspensions wait in the mailbox, so mails (and
cancellation) are served while the task waits.

When every input channel has ended (or the source is exhausted) the chain's
operators get ``end_input`` in order, and the loop ends. The owning ``Task`` then
finishes the partitions and releases everything.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Sequence
from typing import Final, cast

from penstock.consumer.input_gate import InputGate, SingleInputGate
from penstock.consumer.union_gate import UnionInputGate
from penstock.errors import IllegalStateError, TaskCancelledError
from penstock.memory.availability import AVAILABLE
from penstock.partition.result_partition import ResultPartition
from penstock.runtime.deployment import TaskDeploymentDescriptor
from penstock.runtime.job_graph import OperatorSpec
from penstock.serialization.record_deserializer import RecordDeserializer
from penstock.serialization.types import TypeSerializer
from penstock.task.input_processor import InputStatus, StreamTaskNetworkInput
from penstock.task.mailbox import MailboxController, MailboxProcessor
from penstock.task.metrics import TaskIOMetrics
from penstock.task.operator import RuntimeContext, SourceOperator, StreamOperator
from penstock.task.operator_chain import OperatorChain
from penstock.task.step_size import STEP_BUDGET_FLUSH_ALWAYS_S, STEP_BUDGET_S, StepSize
from penstock.writer.record_writer import RecordWriter, create_record_writer

__all__ = ["DEFAULT_SOURCE_BATCH_SIZE", "StreamTask"]

log = logging.getLogger(__name__)

DEFAULT_SOURCE_BATCH_SIZE: Final = 1000
"""Records a source emits per mailbox step."""

_FLUSH_ALWAYS_SOURCE_BATCH_SIZE: Final = 100
"""With ``execution.buffer-timeout`` 0 every record is flushed anyway; smaller steps
keep the mailbox responsive."""

ResultsSink = Callable[[list[object]], None]


def _let_producer_run() -> None:
    """Gives the CPU up once, if another thread is ready for it (releases the GIL).

    Called by a one-input task that found its gate empty, before it suspends. A
    TaskManager's threads share one CPU (``minicluster.pin-taskmanagers``), and the
    thread that would fill the gate (the network thread, or a local producer) is often
    ready and waiting for the CPU: the kernel woke it when data came, but does not
    preempt the running task for it. Letting it run first often fills the gate at
    once, and the task goes on without a suspension, a mail and a wake-up. With
    nobody ready it returns at once.
    """
    if hasattr(os, "sched_yield"):
        os.sched_yield()


class StreamTask:
    """The operator chain of one subtask, its inputs and outputs, and its mailbox loop.

    Args:
        tdd: What to run.
        partitions: The produced partitions, one per ``tdd.produced`` entry, in order.
        gates: The input gates, one per ``tdd.consumed`` entry, in order.
        metrics: The task's I/O metrics (timers and record counters).
        results_sink: Where a collect sink sends its batches.
        source_batch_size: Records a source emits per step (default by buffer timeout).
    """

    def __init__(
        self,
        tdd: TaskDeploymentDescriptor,
        partitions: Sequence[ResultPartition],
        gates: Sequence[SingleInputGate],
        metrics: TaskIOMetrics,
        results_sink: ResultsSink | None = None,
        source_batch_size: int | None = None,
    ) -> None:
        if len(partitions) != len(tdd.produced) or len(gates) != len(tdd.consumed):
            msg = f"{tdd.task_name}: partitions and gates do not match the deployment descriptor"
            raise IllegalStateError(msg)
        self.tdd = tdd
        self.partitions = tuple(partitions)
        self.gates = tuple(gates)
        self.metrics = metrics
        self.results_sink = results_sink
        if source_batch_size is None:
            source_batch_size = (
                _FLUSH_ALWAYS_SOURCE_BATCH_SIZE
                if tdd.vertex.buffer_timeout_ms == 0
                else DEFAULT_SOURCE_BATCH_SIZE
            )
        self.source_batch_size = source_batch_size
        budget = STEP_BUDGET_FLUSH_ALWAYS_S if tdd.vertex.buffer_timeout_ms == 0 else STEP_BUDGET_S
        self._source_step = StepSize(source_batch_size, budget)
        self._step_budget_s = budget
        self.writers: tuple[RecordWriter[object], ...] = ()
        self.chain: OperatorChain | None = None
        self.input: StreamTaskNetworkInput | None = None
        self.input_gate: InputGate | None = None
        self.mailbox_processor = MailboxProcessor(self._default_action)
        self._availability_checks = tuple(p.is_available for p in self.partitions)
        self._end_of_input = False

    @property
    def task_name(self) -> str:
        return self.tdd.task_name

    @property
    def is_source(self) -> bool:
        return self.tdd.vertex.is_source

    # -- lifecycle (task thread) -----------------------------------------------------

    def initialize(self) -> None:
        """Builds the writers and the chain, opens the operators, requests the inputs."""
        tdd = self.tdd
        writers: list[RecordWriter[object]] = []
        self.writers = ()
        try:
            for produced, partition in zip(tdd.produced, self.partitions, strict=True):
                writers.append(
                    create_record_writer(
                        partition,
                        produced.serializer,
                        produced.partitioner.create(),
                        produced.buffer_timeout_ms,
                        tdd.task_name,
                    )
                )
        finally:
            self.writers = tuple(writers)
        self.chain = OperatorChain(tdd.vertex.operators, self.writers, self._context, self.metrics)
        if self.is_source and self.gates:
            msg = f"{tdd.task_name}: a source task has no inputs"
            raise IllegalStateError(msg)
        if not self.is_source:
            self.input_gate = self._input_gate()
            head = cast("StreamOperator[object, object]", self.chain.head)
            self.input = StreamTaskNetworkInput(
                self.input_gate,
                self._deserializers(),
                head.process_batch,
                self.metrics,
                step_budget_s=self._step_budget_s,
            )
        self.chain.open()
        if self.input_gate is not None:
            self.input_gate.request_partitions()

    def invoke(self) -> None:
        """Runs the mailbox loop until the input ends.

        Raises:
            TaskCancelledError: The task was cancelled.
            BaseException: Whatever an operator raised.
        """
        chain = self._chain()
        self.mailbox_processor.run_mailbox_loop()
        if self.mailbox_processor.is_cancelled or not self._end_of_input:
            msg = f"{self.task_name} was cancelled"
            raise TaskCancelledError(msg)
        chain.close_writers()  # stop the flushers: the task flushes and finishes now
        chain.flush_outputs()
        chain.close_operators()

    def cancel(self) -> None:
        """Stops the mailbox loop (any thread); a task waiting in the mailbox wakes."""
        self.mailbox_processor.cancel()

    def cleanup(self, failed: bool) -> None:
        """Releases the chain after a failure or cancellation (errors are logged).

        Args:
            failed: Whether the task is failing (close errors are then only logged).
        """
        chain = self.chain
        if chain is not None:
            chain.close_writers()
            chain.close_operators(suppress=True)
        elif self.writers:
            for writer in self.writers:
                writer.close()
        if self.input is not None:
            self.input.close()
        if not failed:
            log.debug("%s: resources released", self.task_name)

    # -- the default action (task thread) ----------------------------------------------

    def _default_action(self, controller: MailboxController) -> None:
        if not self._outputs_available(controller):
            return
        if self.input is None:
            head = cast("SourceOperator[object]", self._chain().head)
            step = self._source_step
            size = step.size
            blocked = self.metrics.hard_back_pressured_timer
            blocked_ms = blocked.get_accumulated_ms()
            started = time.monotonic()
            more = head.emit_next_batch(size)
            elapsed = time.monotonic() - started
            step.update(size, elapsed - (blocked.get_accumulated_ms() - blocked_ms) / 1000)
            if not more:
                self._finish_input(controller)
            return
        status = self.input.emit_next()
        if status is InputStatus.MORE_AVAILABLE:
            return
        if status is InputStatus.END_OF_INPUT:
            self._finish_input(controller)
            return
        future = self.input.get_available_future()
        if future is AVAILABLE or future.done():
            return
        _let_producer_run()
        if future.done():
            return
        suspension = controller.suspend_default_action(self.metrics.idle_timer)
        future.add_done_callback(suspension.resume_on)

    def _outputs_available(self, controller: MailboxController) -> bool:
        for index, is_available in enumerate(self._availability_checks):
            if not is_available():
                suspension = controller.suspend_default_action(
                    self.metrics.soft_back_pressured_timer
                )
                self.partitions[index].get_available_future().add_done_callback(
                    suspension.resume_on
                )
                return False
        return True

    def _finish_input(self, controller: MailboxController) -> None:
        self._chain().end_input()
        self._end_of_input = True
        controller.all_actions_completed()

    # -- set-up helpers --------------------------------------------------------------

    def _chain(self) -> OperatorChain:
        chain = self.chain
        if chain is None:
            msg = f"{self.task_name} was not initialized"
            raise IllegalStateError(msg)
        return chain

    def _context(self, spec: OperatorSpec) -> RuntimeContext:
        tdd = self.tdd
        return RuntimeContext(
            task_name=tdd.task_name,
            operator_name=spec.name,
            subtask_index=tdd.subtask_index,
            parallelism=tdd.parallelism,
            max_parallelism=tdd.vertex.max_parallelism,
            attempt=tdd.attempt,
            job_id=str(tdd.job_id),
            results_sink=self.results_sink,
            config=tdd.config,
        )

    def _input_gate(self) -> InputGate:
        if not self.gates:
            msg = f"{self.task_name}: a non-source task needs at least one input"
            raise IllegalStateError(msg)
        if len(self.gates) == 1:
            return self.gates[0]
        return UnionInputGate(self.gates, owner=self.task_name)

    def _deserializers(self) -> list[RecordDeserializer[object]]:
        deserializers: list[RecordDeserializer[object]] = []
        for consumed, gate in zip(self.tdd.consumed, self.gates, strict=True):
            serializer: TypeSerializer[object] = consumed.serializer
            deserializers.extend(
                RecordDeserializer(serializer, channel.describe()) for channel in gate.channels
            )
        return deserializers
