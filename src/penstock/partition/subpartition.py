"""PipelinedSubpartition: the queue of buffers one consumer channel reads from.

Theory of operation
-------------------
A subpartition holds a deque of ``BufferConsumer`` objects. The writer adds a consumer
the moment it takes a new buffer, *before* writing into it, so the last element is
usually an open buffer still being filled; every element before it is finished.
Priority events (unaligned checkpoint barriers) are put at the head, after earlier
priority events, overtaking queued data.

The reader (exactly one view) is told "data available" only on transitions, never per
record:

* when the queue first holds a finished buffer (a second buffer was added behind a full
  one, or a finished event was added),
* when ``flush()`` makes the open buffer's bytes readable, and
* when the subpartition is finished or released.

``poll_buffer()`` returns the head's unread bytes as a buffer slice together with the
*backlog*: the data buffers still queued behind it, not counting an open, unflushed
buffer (invariant 7). A blocking event (an aligned checkpoint barrier) blocks the
subpartition after it is polled: nothing more is returned until the consumer calls
``resume_consumption()``.

Everything here happens once per buffer, under one lock per subpartition.
"""

from __future__ import annotations

import threading
from collections import deque
from typing import TYPE_CHECKING, NamedTuple, Protocol

from penstock.buffer.buffer import Buffer, DataType
from penstock.buffer.builder import BufferBuilder, BufferConsumer
from penstock.errors import PartitionConsumedError
from penstock.events import EndOfPartitionEvent
from penstock.serialization.event_serializer import data_type_of, serialize_event

if TYPE_CHECKING:
    from penstock.partition.result_partition import ResultPartition
    from penstock.partition.view import PipelinedSubpartitionView

__all__ = ["BufferAndBacklog", "BufferAvailabilityListener", "PipelinedSubpartition"]


class BufferAndBacklog(NamedTuple):
    """A polled buffer with what the reader needs to know about the rest of the queue.

    Attributes:
        buffer: The slice to read; recycle it afterwards.
        backlog: Data buffers still queued (the open, unflushed one not counted).
        next_data_type: Type of the next readable element, ``NONE`` if none is readable.
        sequence_number: 0, 1, 2, ... per subpartition: what remote channels check.
    """

    buffer: Buffer
    backlog: int
    next_data_type: DataType
    sequence_number: int

    @property
    def is_data_available(self) -> bool:
        return self.next_data_type is not DataType.NONE


class BufferAvailabilityListener(Protocol):
    """Told when a subpartition view has something to read (called on the writer's thread)."""

    def notify_data_available(self) -> None: ...


class PipelinedSubpartition:
    """One subpartition of a pipelined result partition; read once, by one view."""

    def __init__(self, index: int, parent: ResultPartition) -> None:
        self.index = index
        self.parent = parent
        self._lock = threading.Lock()
        self._buffers: deque[BufferConsumer] = deque()
        self._num_priority = 0
        self._backlog = 0  # data buffers in the queue
        self._flush_requested = False
        self._is_blocked = False
        self._is_finished = False
        self._is_released = False
        self._view: PipelinedSubpartitionView | None = None
        self._view_created = False
        self._sequence_number = 0
        self.total_buffers = 0
        self.total_bytes = 0

    # -- writer side -----------------------------------------------------------------

    def add(self, consumer: BufferConsumer, finish: bool = False) -> bool:
        """Queues a consumer; returns False (and closes it) if finished or released."""
        with self._lock:
            if self._is_finished or self._is_released:
                consumer.close()
                return False
            if consumer.data_type.has_priority:
                self._buffers.insert(self._num_priority, consumer)
                self._num_priority += 1
                notify = not self._is_blocked
            else:
                self._buffers.append(consumer)
                notify = finish or self._should_notify_after_add()
            if consumer.is_buffer:
                self._backlog += 1
            self._is_finished |= finish
            view = self._view
        if notify and view is not None:
            view.notify_data_available()
        return True

    def add_event(self, payload: bytes, data_type: DataType, finish: bool = False) -> bool:
        """Queues a serialized event (its memory is not taken from any pool)."""
        builder = BufferBuilder.for_event(payload, data_type)
        consumer = builder.create_buffer_consumer()
        builder.close()
        return self.add(consumer, finish)

    def finish(self) -> None:
        """Queues the end-of-partition event; nothing can be added afterwards."""
        event = EndOfPartitionEvent()
        self.add_event(serialize_event(event), data_type_of(event), finish=True)

    def flush(self) -> None:
        """Makes the bytes written so far readable and tells the reader (once)."""
        with self._lock:
            if not self._buffers or self._flush_requested:
                return
            # With two or more buffers the reader was told when the second was added.
            unfinished_has_data = len(self._buffers) == 1 and self._buffers[0].is_data_available()
            notify = not self._is_blocked and unfinished_has_data
            self._flush_requested = len(self._buffers) > 1 or unfinished_has_data
            view = self._view
        if notify and view is not None:
            view.notify_data_available()

    def release(self) -> None:
        """Drops every queued buffer and wakes the reader so it sees the release."""
        with self._lock:
            if self._is_released:
                return
            self._is_released = True
            self._flush_requested = False
            for consumer in self._buffers:
                consumer.close()
            self._buffers.clear()
            self._backlog = 0
            self._num_priority = 0
            view = self._view
        if view is not None:
            view.notify_data_available()

    # -- reader side -----------------------------------------------------------------

    def create_read_view(self, listener: BufferAvailabilityListener) -> PipelinedSubpartitionView:
        """The one reader of this subpartition.

        Raises:
            PartitionConsumedError: A view was created before.
        """
        from penstock.partition.view import PipelinedSubpartitionView

        with self._lock:
            if self._view_created:
                msg = (
                    f"Subpartition {self.index} of {self.parent.partition_id} is being or "
                    "already has been consumed, but pipelined subpartitions can only be "
                    "consumed once."
                )
                raise PartitionConsumedError(msg)
            self._view_created = True
            view = PipelinedSubpartitionView(self, listener)
            self._view = view
            notify = self._is_data_available() or self._is_released
        if notify:
            view.notify_data_available()
        return view

    def poll_buffer(self) -> BufferAndBacklog | None:
        """The next readable buffer with the backlog behind it, or None."""
        with self._lock:
            if self._is_blocked:
                return None
            buffers = self._buffers
            if not buffers:
                self._flush_requested = False
            buffer: Buffer | None = None
            while buffers:
                head = buffers[0]
                buffer = head.build()
                finished = head.finished_when_built
                if len(buffers) == 1:
                    # Everything readable is drained: the next flush must notify again.
                    self._flush_requested = False
                if finished:
                    buffers.popleft().close()
                    if self._num_priority:
                        self._num_priority -= 1
                    if head.is_buffer:
                        self._backlog -= 1
                if buffer.size > 0:  # events are never empty
                    break
                buffer.recycle()
                buffer = None
                if not finished:
                    break
            if buffer is None:
                return None
            if buffer.data_type.is_blocking_upstream:
                self._is_blocked = True
            self.total_buffers += 1
            self.total_bytes += buffer.size
            sequence_number = self._sequence_number
            self._sequence_number = sequence_number + 1
            next_type = self._buffers[0].data_type if self._is_data_available() else DataType.NONE
            return BufferAndBacklog(buffer, self._backlog_unsafe(), next_type, sequence_number)

    def resume_consumption(self) -> None:
        """Unblocks the subpartition after a blocking event was consumed."""
        with self._lock:
            was_blocked = self._is_blocked
            self._is_blocked = False
            notify = was_blocked and self._is_data_available()
            view = self._view
        if notify and view is not None:
            view.notify_data_available()

    @property
    def has_only_partial_data(self) -> bool:
        """Whether all there is to read is the flushed part of the open buffer."""
        with self._lock:
            return self._flush_requested and self._finished_buffers() == 0 and not self._is_blocked

    def get_availability_and_backlog(self, has_credit: bool) -> tuple[bool, int]:
        """Whether the reader may poll now (events need no credit), and the backlog."""
        with self._lock:
            if has_credit:
                available = self._is_data_available()
            else:
                available = (
                    self._is_data_available()
                    and bool(self._buffers)
                    and self._buffers[0].data_type.is_event
                )
            return available, self._backlog_unsafe()

    def is_data_available(self) -> bool:
        with self._lock:
            return self._is_data_available()

    # -- metrics -------------------------------------------------------------------

    @property
    def backlog(self) -> int:
        with self._lock:
            return self._backlog_unsafe()

    @property
    def queue_length(self) -> int:
        """Buffers queued, incl. the open one (Flink's outputQueueLength contribution)."""
        return len(self._buffers)

    @property
    def is_finished(self) -> bool:
        return self._is_finished

    @property
    def is_released(self) -> bool:
        return self._is_released

    @property
    def is_blocked(self) -> bool:
        return self._is_blocked

    # -- internals (under the lock) ------------------------------------------------

    def _finished_buffers(self) -> int:
        size = len(self._buffers)
        if size == 1 and self._buffers[-1].is_finished():
            return 1
        return max(0, size - 1)

    def _should_notify_after_add(self) -> bool:
        return (
            self._view is not None
            and not self._flush_requested
            and not self._is_blocked
            and self._finished_buffers() == 1
        )

    def _is_data_available(self) -> bool:
        return not self._is_blocked and (self._flush_requested or self._finished_buffers() > 0)

    def _backlog_unsafe(self) -> int:
        if self._is_blocked or not self._buffers:
            return 0
        if self._flush_requested or self._is_finished or not self._buffers[-1].is_buffer:
            return self._backlog
        return max(self._backlog - 1, 0)

    def __repr__(self) -> str:
        return (
            f"PipelinedSubpartition(#{self.index}, buffers={len(self._buffers)}, "
            f"backlog={self._backlog}, finished={self._is_finished}, "
            f"released={self._is_released})"
        )
