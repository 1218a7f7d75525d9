"""StreamTaskNetworkInput: a task's input gate, turned into batches of records.

One step (``emit_next``) polls the gate for the data buffers it can read right away (up
to eight): each is turned into the records it completes by the deserializer of its
channel (records may span buffers, so every channel keeps its own), and the records of
them all go to the head operator in one ``process_batch`` call. An event ends a step
after the records before it; an end-of-partition event checks that its channel did not
end inside a record. The step says what the task should do next: poll again, wait for the
gate's availability future, or end the input.
"""

from __future__ import annotations

import enum
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from typing import Final

from penstock.consumer.input_gate import InputGate
from penstock.events import EndOfPartitionEvent
from penstock.serialization.record_deserializer import RecordDeserializer
from penstock.task.metrics import TaskIOMetrics
from penstock.task.step_size import STEP_BUDGET_S, StepSize

__all__ = ["InputStatus", "StreamTaskNetworkInput"]

_WHOLE_BUFFER: Final = 1 << 30
"""No limit but the buffers: a cheap chain gets each step's records in one list."""

MAX_BUFFERS_PER_STEP: Final = 8
"""Readable data buffers deserialized into one step's list at most."""


class InputStatus(enum.Enum):
    """What a step of input processing found (Flink's DataInputStatus)."""

    MORE_AVAILABLE = "MORE_AVAILABLE"
    """More is readable right away: call ``emit_next`` again."""
    NOTHING_AVAILABLE = "NOTHING_AVAILABLE"
    """Nothing readable now: wait on ``get_available_future()``."""
    END_OF_INPUT = "END_OF_INPUT"
    """Every channel has ended."""


class StreamTaskNetworkInput:
    """Reads a gate (single or union) into an operator, the readable buffers per step.

    Args:
        gate: The task's input gate.
        deserializers: One per channel of ``gate``, by channel index (a union gate's
            indices run across its gates).
        process_batch: The head operator's ``process_batch``.
        metrics: Counts ``numRecordsIn``.
        step_budget_s: The longest the chain should work on one list: a buffer's records
            are handed down in slices that fit it (``StepSize``).
    """

    def __init__(
        self,
        gate: InputGate,
        deserializers: Sequence[RecordDeserializer[object]],
        process_batch: Callable[[list[object]], None],
        metrics: TaskIOMetrics | None = None,
        step_budget_s: float = STEP_BUDGET_S,
    ) -> None:
        self.gate = gate
        self.deserializers = list(deserializers)
        self.process_batch = process_batch
        self.metrics = metrics or TaskIOMetrics()
        self._step = StepSize(_WHOLE_BUFFER, step_budget_s)

    def emit_next(self) -> InputStatus:
        """Processes the next buffers or event, if one is readable.

        Data buffers that are readable one after another are deserialized into one
        list (up to ``MAX_BUFFERS_PER_STEP``, and no more records than a step holds),
        so that the costs of a step are paid once for them all. An event ends the
        list: the records before it are processed first.

        Raises:
            PenstockError: A channel failed or delivered corrupt data.
            BaseException: Whatever the operator raised.
        """
        gate = self.gate
        polled = gate.poll_next()
        if polled is None:
            return InputStatus.END_OF_INPUT if gate.is_finished() else InputStatus.NOTHING_AVAILABLE
        deserializers = self.deserializers
        buffer = polled.buffer
        if buffer is not None:
            records = deserializers[polled.channel_index].read_buffer(buffer)
            limit = self._step.size
            taken = 1
            while polled.more_available and taken < MAX_BUFFERS_PER_STEP and len(records) < limit:
                following = gate.poll_next()
                if following is None:
                    break
                polled = following
                buffer = polled.buffer
                if buffer is None:
                    break  # an event: after the records before it
                records += deserializers[polled.channel_index].read_buffer(buffer)
                taken += 1
            if records:
                self._process(records)
        if buffer is None and isinstance(polled.event, EndOfPartitionEvent):
            deserializers[polled.channel_index].check_end()
        if polled.more_available:
            return InputStatus.MORE_AVAILABLE
        return InputStatus.END_OF_INPUT if gate.is_finished() else InputStatus.NOTHING_AVAILABLE

    def _process(self, records: list[object]) -> None:
        """Hands ``records`` down the chain, in slices that fit the step budget.

        Time blocked downstream counts too (a backpressured chain's slices shrink, but
        only in proportion, and a blocked task has the time to spare).
        """
        step = self._step
        total = len(records)
        position = 0
        while position < total:
            size = step.size
            # The common case, a whole buffer at once, takes no copy.
            whole = position == 0 and size >= total
            chunk = records if whole else records[position : position + size]
            # Counted as they enter the chain, as Flink counts them, not a whole step
            # ahead of a slow chain.
            self.metrics.num_records_in += len(chunk)
            started = time.monotonic()
            self.process_batch(chunk)
            step.update(len(chunk), time.monotonic() - started)
            position += len(chunk)

    def get_available_future(self) -> Future[None]:
        """Done while the gate has something to read (or has finished)."""
        return self.gate.get_available_future()

    def close(self) -> None:
        """Drops partial records (the input was cancelled or failed)."""
        for deserializer in self.deserializers:
            deserializer.clear()
