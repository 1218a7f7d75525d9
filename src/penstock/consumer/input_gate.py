"""SingleInputGate: the channels of one consumed result, read in round robin.

Theory of operation
-------------------
The gate keeps a queue of the channels that have data. A channel enters the queue when
it goes from empty to readable (``notify_channel_non_empty``, on whichever thread saw
that: a producer thread for local channels, the network thread for remote ones) and
at most once at a time. The consuming task polls on its own thread:
``poll_next()`` takes the channel at the head, reads one buffer from it, and puts the
channel back at the *tail* if it has more, so channels are served round robin and a
busy channel cannot starve the others.

The gate's availability future is done while the queue is non-empty; a task with
nothing to read waits on it instead of spinning. Events are deserialized here: an
end-of-partition event releases its channel, and when every channel has ended the gate
is finished. A channel's failure is raised by ``poll_next()`` in order with its data.
Reading a gate that was closed before it finished raises ``TaskCancelledError`` (as
Flink's gate raises ``CancelTaskException``), so a task or thread waiting on it ends.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Sequence
from concurrent.futures import Future
from typing import NamedTuple

from penstock.buffer.buffer import Buffer, DataType
from penstock.consumer.input_channel import InputChannel
from penstock.errors import IllegalStateError, TaskCancelledError
from penstock.events import EndOfPartitionEvent, RuntimeEvent
from penstock.memory.availability import AvailabilityHelper, complete
from penstock.memory.local_pool import LocalBufferPool
from penstock.serialization.event_serializer import deserialize_event

__all__ = ["BufferOrEvent", "InputGate", "SingleInputGate"]

CLOSED_GATE_MESSAGE = "Input gate is already closed."
"""Raised (with ``TaskCancelledError``) by a read of a gate closed before it finished."""


class BufferOrEvent(NamedTuple):
    """What a gate returns: a data buffer or an event, and the channel it came from.

    Attributes:
        buffer: A data buffer (the caller recycles it), or None for an event.
        event: The deserialized event, or None for a data buffer.
        channel_index: The channel's index in the gate (offset in a union gate).
        more_available: Whether the gate had more to read right after this.
    """

    buffer: Buffer | None
    event: RuntimeEvent | None
    channel_index: int
    more_available: bool

    @property
    def is_buffer(self) -> bool:
        return self.buffer is not None


class InputGate:
    """What a task reads its input from: a single gate or a union of gates."""

    owner: str

    @property
    def num_channels(self) -> int:
        raise NotImplementedError

    def poll_next(self) -> BufferOrEvent | None:
        raise NotImplementedError

    def is_finished(self) -> bool:
        raise NotImplementedError

    def get_available_future(self) -> Future[None]:
        raise NotImplementedError

    def request_partitions(self) -> None:
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError

    def get_next(self, timeout: float | None = None) -> BufferOrEvent | None:
        """Waits for the next buffer or event; None once finished (or on timeout).

        Raises:
            TaskCancelledError: The gate was closed before it finished.
            PenstockError: A channel failed.
        """
        while True:
            result = self.poll_next()
            if result is not None or self.is_finished():
                return result
            future = self.get_available_future()
            if not future.done():
                try:
                    future.result(timeout)
                except TimeoutError:
                    return None


class SingleInputGate(InputGate):
    """The input gate of one consumed intermediate result.

    Args:
        owner: Names the consuming task in messages and metrics.
        buffer_pool: The pool of floating buffers (remote channels only), or None.
    """

    def __init__(self, owner: str = "", buffer_pool: LocalBufferPool | None = None) -> None:
        self.owner = owner
        self.buffer_pool = buffer_pool
        self.channels: list[InputChannel] = []
        self._lock = threading.Lock()
        self._with_data: deque[InputChannel] = deque()
        self._enqueued: list[bool] = []
        self._finished_channels: list[bool] = []
        self._num_finished = 0
        self._availability = AvailabilityHelper(available=False)
        self._requested = False
        self._closed = False

    def set_channels(self, channels: Sequence[InputChannel]) -> None:
        """Sets the gate's channels, indexed 0..n-1 (once, before requesting partitions)."""
        if self.channels:
            msg = "the channels of an input gate are set once"
            raise IllegalStateError(msg)
        for index, channel in enumerate(channels):
            if channel.channel_index != index:
                msg = f"channel {channel} has index {channel.channel_index}, expected {index}"
                raise IllegalStateError(msg)
        self.channels = list(channels)
        self._enqueued = [False] * len(channels)
        self._finished_channels = [False] * len(channels)

    @property
    def num_channels(self) -> int:
        return len(self.channels)

    def request_partitions(self) -> None:
        """Asks every channel's producer for its subpartition (once)."""
        if self._requested:
            return
        self._requested = True
        for channel in self.channels:
            channel.request_subpartition()

    # -- notifications (any thread) --------------------------------------------------

    def notify_channel_non_empty(self, channel: InputChannel) -> None:
        """Queues ``channel`` for reading unless it is queued already."""
        with self._lock:
            if not self._enqueue(channel):
                return
            to_complete = (
                self._availability.get_unavailable_to_reset_available()
                if len(self._with_data) == 1
                else None
            )
        if to_complete is not None:
            complete(to_complete)

    def _enqueue(self, channel: InputChannel) -> bool:
        """Appends ``channel`` to the queue unless it is there, ended or the gate closed.

        Call holding the lock. Returns whether it was appended.
        """
        index = channel.channel_index
        if self._enqueued[index] or self._closed or self._finished_channels[index]:
            return False
        self._enqueued[index] = True
        self._with_data.append(channel)
        return True

    # -- reading (the task thread) -------------------------------------------------

    def poll_next(self) -> BufferOrEvent | None:
        """The next buffer or event, or None if nothing is readable now.

        Raises:
            TaskCancelledError: The gate was closed before it finished.
            PenstockError: The channel read failed (its error is raised as is).
        """
        while True:
            with self._lock:
                if not self._with_data:
                    if self._num_finished < len(self.channels):
                        if self._closed:
                            raise TaskCancelledError(CLOSED_GATE_MESSAGE)
                        self._availability.reset_unavailable()
                    return None
                channel = self._with_data.popleft()
                self._enqueued[channel.channel_index] = False
            try:
                result = channel.get_next_buffer()
            except BaseException:
                # Keep the failed channel queued so every later poll raises too.
                self.notify_channel_non_empty(channel)
                raise
            if result is None:
                continue  # spurious notification: the channel had nothing after all
            buffer = result.buffer
            with self._lock:
                # Back to the tail if it has more, under this one lock. Unlike
                # notify_channel_non_empty there is no availability to update: the gate
                # is still available, as only a poll that finds the queue empty makes
                # it unavailable.
                if result.next_data_type is not DataType.NONE:
                    self._enqueue(channel)
                more = bool(self._with_data)
            if buffer.is_buffer:
                return BufferOrEvent(buffer, None, channel.channel_index, more)
            try:
                event = deserialize_event(buffer.memory)
            finally:
                buffer.recycle()
            if isinstance(event, EndOfPartitionEvent):
                self._on_end_of_partition(channel)
                with self._lock:
                    more = bool(self._with_data)
            return BufferOrEvent(None, event, channel.channel_index, more)

    def is_finished(self) -> bool:
        """True once every channel delivered its end-of-partition event."""
        return self._num_finished == len(self.channels)

    def get_available_future(self) -> Future[None]:
        return self._availability.get_available_future()

    def resume_consumption(self, channel_index: int) -> None:
        """Unblocks a channel after its blocking event (aligned barrier) was handled."""
        self.channels[channel_index].resume_consumption()

    # -- metrics -------------------------------------------------------------------

    @property
    def input_queue_length(self) -> int:
        """Buffers queued in the gate's channels (Flink's inputQueueLength)."""
        return sum(channel.buffers_in_use() for channel in self.channels)

    @property
    def buffer_usage(self) -> tuple[int, int]:
        """``(used, total)`` input buffers, counted as Flink's ``inPoolUsage`` counts them.

        Used: the floating buffers the pool has handed out, less those idle in remote
        channels (credit the sender has not used yet), plus the exclusive buffers of
        remote channels that are out (holding data). Total: the pool's size plus every
        remote channel's exclusive buffers. Local channels read the producer's buffers
        and hold none of their own.
        """
        used = total = idle = 0
        for channel in self.channels:
            exclusive_used, exclusive, floating_idle = channel.own_buffers()
            used += exclusive_used
            total += exclusive
            idle += floating_idle
        pool = self.buffer_pool
        if pool is not None:
            used += max(0, pool.used_buffers - idle)
            total += pool.num_buffers
        return used, total

    @property
    def num_bytes_in(self) -> int:
        return sum(channel.num_bytes_in for channel in self.channels)

    @property
    def num_buffers_in(self) -> int:
        return sum(channel.num_buffers_in for channel in self.channels)

    # -- lifecycle -------------------------------------------------------------------

    def close(self) -> None:
        """Releases every channel and the floating-buffer pool (idempotent)."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._with_data.clear()
            pending = self._availability.get_unavailable_to_reset_available()
        complete(pending)
        for channel in self.channels:
            channel.release_all_resources()
        if self.buffer_pool is not None:
            self.buffer_pool.destroy()

    def _on_end_of_partition(self, channel: InputChannel) -> None:
        index = channel.channel_index
        if not self._finished_channels[index]:
            self._finished_channels[index] = True
            self._num_finished += 1
            channel.release_all_resources()
        if self.is_finished():
            # Wake a waiting task so it notices the end.
            with self._lock:
                pending = self._availability.get_unavailable_to_reset_available()
            complete(pending)

    def __repr__(self) -> str:
        return f"SingleInputGate({self.owner!r}, channels={len(self.channels)})"
