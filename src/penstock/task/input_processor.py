"""StreamTaskNetworkInput: a task's input gate, turned into batches of records.

One step (``emit_next``) polls the gate once: a data buffer is turned into the list of
records it completes by the deserializer of its channel (records may span buffers, so
every channel keeps its own) and the whole list goes to the head operator in one
``process_batch`` call. An end-of-partition event checks that its channel did not end
inside a record. The step says what the task should do next: poll again, wait for the
gate's availability future, or end the input.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Sequence
from concurrent.futures import Future

from penstock.consumer.input_gate import InputGate
from penstock.events import EndOfPartitionEvent
from penstock.serialization.record_deserializer import RecordDeserializer
from penstock.task.metrics import TaskIOMetrics

__all__ = ["InputStatus", "StreamTaskNetworkInput"]


class InputStatus(enum.Enum):
    """What a step of input processing found (Flink's DataInputStatus)."""

    MORE_AVAILABLE = "MORE_AVAILABLE"
    """More is readable right away: call ``emit_next`` again."""
    NOTHING_AVAILABLE = "NOTHING_AVAILABLE"
    """Nothing readable now: wait on ``get_available_future()``."""
    END_OF_INPUT = "END_OF_INPUT"
    """Every channel has ended."""


class StreamTaskNetworkInput:
    """Reads a gate (single or union) into an operator, one buffer per step.

    Args:
        gate: The task's input gate.
        deserializers: One per channel of ``gate``, by channel index (a union gate's
            indices run across its gates).
        process_batch: The head operator's ``process_batch``.
        metrics: Counts ``numRecordsIn``.
    """

    def __init__(
        self,
        gate: InputGate,
        deserializers: Sequence[RecordDeserializer[object]],
        process_batch: Callable[[list[object]], None],
        metrics: TaskIOMetrics | None = None,
    ) -> None:
        self.gate = gate
        self.deserializers = list(deserializers)
        self.process_batch = process_batch
        self.metrics = metrics or TaskIOMetrics()

    def emit_next(self) -> InputStatus:
        """Processes the next buffer or event, if one is readable.

        Raises:
            PenstockError: A channel failed or delivered corrupt data.
            BaseException: Whatever the operator raised.
        """
        gate = self.gate
        polled = gate.poll_next()
        if polled is None:
            return InputStatus.END_OF_INPUT if gate.is_finished() else InputStatus.NOTHING_AVAILABLE
        buffer = polled.buffer
        if buffer is not None:
            records = self.deserializers[polled.channel_index].read_buffer(buffer)
            if records:
                self.metrics.num_records_in += len(records)
                self.process_batch(records)
        elif isinstance(polled.event, EndOfPartitionEvent):
            self.deserializers[polled.channel_index].check_end()
        if polled.more_available:
            return InputStatus.MORE_AVAILABLE
        return InputStatus.END_OF_INPUT if gate.is_finished() else InputStatus.NOTHING_AVAILABLE

    def get_available_future(self) -> Future[None]:
        """Done while the gate has something to read (or has finished)."""
        return self.gate.get_available_future()

    def close(self) -> None:
        """Drops partial records (the input was cancelled or failed)."""
        for deserializer in self.deserializers:
            deserializer.clear()
