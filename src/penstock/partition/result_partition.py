"""ResultPartition: the output of one producing subtask, one subpartition per consumer.

Theory of operation
-------------------
Records arrive already framed (``[int32 length][payload]``, see ``RecordWriter``) and
are copied into the open ``BufferBuilder`` of their subpartition. A builder is taken
from the partition's ``LocalBufferPool`` and queued in the subpartition *before* any
byte is written; a record that does not fit continues in the next buffer, so records
span buffers freely. A full buffer is finished; the reader learns about it when the
next buffer is queued, or on flush.

When the pool has no free segment the writer blocks in
``request_buffer_builder_blocking``: this is hard backpressure, and it is timed through
the ``backpressure_timer`` hook. Everything per record happens without a lock; locks
are taken once per buffer.

Broadcast records share one builder among all subpartitions (each gets a consumer
copy); unicast and broadcast builders never coexist: switching modes finishes the
builders of the other mode, as in Flink's BufferWritingResultPartition.

Events are serialized once into memory outside every pool and queued in every
subpartition, in order with the data; they finish the open builders first, so an event
always pushes the data before it out.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import Future
from typing import Protocol

from penstock.buffer.builder import BufferBuilder
from penstock.errors import IllegalStateError, PartitionReleasedError, ProducerFailedError
from penstock.events import RuntimeEvent
from penstock.ids import ResultPartitionID
from penstock.memory.local_pool import UNKNOWN_CHANNEL, LocalBufferPool
from penstock.memory.network_pool import NetworkBufferPool
from penstock.partition.subpartition import BufferAvailabilityListener, PipelinedSubpartition
from penstock.partition.view import PipelinedSubpartitionView
from penstock.serialization.event_serializer import data_type_of, serialize_event

__all__ = ["BackPressureTimer", "ResultPartition", "output_pool_size"]


class BackPressureTimer(Protocol):
    """Measures time spent blocked for a buffer (hard backpressure)."""

    def start(self) -> None: ...

    def stop(self) -> None: ...


class _NoTimer:
    def start(self) -> None:
        pass

    def stop(self) -> None:
        pass


def output_pool_size(
    num_subpartitions: int,
    buffers_per_channel: int = 2,
    floating_buffers_per_gate: int = 8,
) -> tuple[int, int]:
    """Flink's (min, max) pool size of a pipelined-bounded result partition.

    The minimum, one buffer per subpartition and one more, holds whatever the buffer
    settings say: with few (or no) buffers per channel and few floating ones, the
    maximum is raised to it, as in Flink.
    """
    minimum = num_subpartitions + 1
    maximum = num_subpartitions * buffers_per_channel + floating_buffers_per_gate
    return minimum, max(minimum, maximum)


class ResultPartition:
    """A pipelined, bounded result partition with one subpartition per consumer channel.

    Args:
        partition_id: Identifies the partition (and its producer attempt).
        num_subpartitions: How many consumer channels read it.
        buffer_pool: The partition's local pool; destroyed by ``close()``.
        owner: A name for messages and metrics, e.g. the producing task's name.
        on_consumed: Called once every subpartition has been read to its end.
    """

    def __init__(
        self,
        partition_id: ResultPartitionID,
        num_subpartitions: int,
        buffer_pool: LocalBufferPool,
        owner: str = "",
        on_consumed: Callable[[ResultPartition], None] | None = None,
    ) -> None:
        _check_subpartition_count(num_subpartitions)
        self.partition_id = partition_id
        self.num_subpartitions = num_subpartitions
        self.buffer_pool = buffer_pool
        self.owner = owner
        self.subpartitions = [PipelinedSubpartition(i, self) for i in range(num_subpartitions)]
        self.backpressure_timer: BackPressureTimer = _NoTimer()
        self.num_bytes_out = 0
        self.num_buffers_out = 0
        self.failure_cause: BaseException | None = None
        self._unicast: list[BufferBuilder | None] = [None] * num_subpartitions
        self._broadcast: BufferBuilder | None = None
        self._consumption_listeners: list[Callable[[ResultPartition], None]] = []
        if on_consumed is not None:
            self._consumption_listeners.append(on_consumed)
        self._consumed: set[int] = set()
        self._finished = False
        self._released = False
        self._closed = False

    @classmethod
    def create(
        cls,
        partition_id: ResultPartitionID,
        num_subpartitions: int,
        network_pool: NetworkBufferPool,
        *,
        buffers_per_channel: int = 2,
        floating_buffers_per_gate: int = 8,
        max_buffers_per_channel: int = 10,
        max_overdraft_buffers: int = 5,
        owner: str = "",
        on_consumed: Callable[[ResultPartition], None] | None = None,
    ) -> ResultPartition:
        """A partition with a pool sized as Flink sizes pipelined-bounded partitions.

        Raises:
            IllegalStateError: ``num_subpartitions`` is below 1.
            InsufficientBuffersError: The network pool cannot guarantee the minimum.
        """
        _check_subpartition_count(num_subpartitions)  # before a pool is taken for it
        min_size, max_size = output_pool_size(
            num_subpartitions, buffers_per_channel, floating_buffers_per_gate
        )
        pool = network_pool.create_buffer_pool(
            min_size,
            max_size,
            num_subpartitions=num_subpartitions,
            max_buffers_per_channel=max_buffers_per_channel,
            max_overdraft_buffers=max_overdraft_buffers,
        )
        return cls(partition_id, num_subpartitions, pool, owner=owner, on_consumed=on_consumed)

    # -- writing ---------------------------------------------------------------------

    def emit_record(self, record: bytes | bytearray | memoryview, target: int) -> None:
        """Copies one framed record (or a run of framed records) into subpartition ``target``.

        Raises:
            PartitionReleasedError: The partition was released (or failed).
        """
        if self._released:
            self._check_writable()
        # A target out of range (a negative one must not wrap around to an open builder)
        # is refused when a builder is requested for it.
        builder = self._unicast[target] if 0 <= target < self.num_subpartitions else None
        if builder is None:
            builder = self._new_unicast_builder(target)
        written = builder.append(record)
        total = len(record)
        if written < total:
            view = memoryview(record)  # continue without copying the rest
            while written < total:
                self._finish_unicast(target)
                builder = self._new_unicast_builder(target)
                written += builder.append(view, written)
        if builder.position >= builder.capacity:
            self._finish_unicast(target)

    @property
    def unicast_builders(self) -> list[BufferBuilder | None]:
        """The open builder of each subpartition (None where there is none), live.

        For a writer that packs frames straight into ``builder.memory`` at
        ``builder.position`` and then advances the position, without a call per record.
        Such a writer must leave a buffer that would become full to ``emit_record``,
        which finishes it and takes the next one.
        """
        return self._unicast

    def broadcast_record(self, record: bytes | bytearray | memoryview) -> None:
        """Copies one framed record once into a buffer that every subpartition reads."""
        if self._released:
            self._check_writable()
        builder = self._broadcast
        if builder is None:
            builder = self._new_broadcast_builder()
        written = builder.append(record)
        total = len(record)
        if written < total:
            view = memoryview(record)
            while written < total:
                self._finish_broadcast()
                builder = self._new_broadcast_builder()
                written += builder.append(view, written)
        if builder.position >= builder.capacity:
            self._finish_broadcast()

    def broadcast_event(self, event: RuntimeEvent, is_priority: bool = False) -> None:
        """Finishes the open buffers and queues ``event`` in every subpartition."""
        self._check_writable()
        self._finish_all_builders()
        payload = serialize_event(event)
        builder = BufferBuilder.for_event(payload, data_type_of(event, is_priority))
        consumer = builder.create_buffer_consumer()
        builder.close()
        for subpartition in self.subpartitions:
            subpartition.add(consumer.copy())
        consumer.close()

    def flush(self, target: int) -> None:
        if not 0 <= target < self.num_subpartitions:
            raise self._out_of_range(target)
        self.subpartitions[target].flush()

    def flush_all(self) -> None:
        for subpartition in self.subpartitions:
            subpartition.flush()

    def finish(self) -> None:
        """Finishes the open buffers and queues end-of-partition everywhere."""
        self._check_writable()
        self._finish_all_builders()
        for subpartition in self.subpartitions:
            subpartition.finish()
        self._finished = True

    # -- availability (backpressure) -----------------------------------------------

    def is_available(self) -> bool:
        """False while the pool cannot give a buffer: the producer should pause."""
        return self.buffer_pool.is_available()

    def get_available_future(self) -> Future[None]:
        return self.buffer_pool.get_available_future()

    # -- lifecycle ---------------------------------------------------------------------

    @property
    def is_finished(self) -> bool:
        return self._finished

    @property
    def is_released(self) -> bool:
        return self._released

    def fail(self, cause: BaseException) -> None:
        """Releases the partition because the producer failed; readers get the cause."""
        self.release(cause)

    def release(self, cause: BaseException | None = None) -> None:
        """Drops all queued data; readers that had not finished see an error (idempotent).

        Safe from any thread. The writer's open builders are left alone (the producing
        thread may be writing into them); ``close()`` closes them. A producer blocked
        for a buffer is woken by the buffers the release frees; to be sure, destroy
        the pool as well (``buffer_pool.destroy()``), which is also thread-safe.
        """
        if self._released:
            return
        if cause is not None and self.failure_cause is None:
            self.failure_cause = cause
        self._released = True
        for subpartition in self.subpartitions:
            subpartition.release()

    def close(self) -> None:
        """Closes the writer's open builders and destroys the pool (producing thread).

        Segments still being read return to the network pool when they are recycled.
        """
        if self._closed:
            return
        self._closed = True
        for target, builder in enumerate(self._unicast):
            if builder is not None:
                builder.close()
                self._unicast[target] = None
        if self._broadcast is not None:
            self._broadcast.close()
            self._broadcast = None
        self.buffer_pool.destroy()

    # -- reading -------------------------------------------------------------------

    def create_subpartition_view(
        self, index: int, listener: BufferAvailabilityListener
    ) -> PipelinedSubpartitionView:
        """The one reader of subpartition ``index``.

        Raises:
            PartitionReleasedError: The partition was released.
            PartitionConsumedError: The subpartition already has a reader.
        """
        if self._released:
            msg = f"Partition {self.partition_id} has been released."
            if self.failure_cause is not None:
                raise ProducerFailedError(msg) from self.failure_cause
            raise PartitionReleasedError(msg)
        if not 0 <= index < self.num_subpartitions:
            raise self._out_of_range(index)
        return self.subpartitions[index].create_read_view(listener)

    def add_consumption_listener(self, listener: Callable[[ResultPartition], None]) -> None:
        """Calls ``listener`` once every subpartition has been read to its end."""
        self._consumption_listeners.append(listener)

    def on_consumed_subpartition(self, index: int) -> None:
        """Called by a view that read its subpartition to the end (or was cancelled)."""
        if index in self._consumed:
            return
        self._consumed.add(index)
        if len(self._consumed) == self.num_subpartitions:
            for listener in self._consumption_listeners:
                listener(self)

    # -- metrics -------------------------------------------------------------------

    @property
    def output_queue_length(self) -> int:
        """Buffers queued in all subpartitions (Flink's outputQueueLength)."""
        return sum(subpartition.queue_length for subpartition in self.subpartitions)

    @property
    def total_backlog(self) -> int:
        return sum(subpartition.backlog for subpartition in self.subpartitions)

    # -- internals -------------------------------------------------------------------

    def _check_writable(self) -> None:
        if self._released:
            msg = f"Partition {self.partition_id} has been released."
            raise PartitionReleasedError(msg) from self.failure_cause
        if self._finished:
            msg = f"Partition {self.partition_id} is already finished."
            raise IllegalStateError(msg)

    def _request_builder(self, channel: int) -> BufferBuilder:
        self._check_writable()
        pool = self.buffer_pool
        builder = pool.request_buffer_builder(channel)
        if builder is None:
            timer = self.backpressure_timer
            timer.start()
            try:
                builder = pool.request_buffer_builder_blocking(channel)
            finally:
                timer.stop()
        return builder

    def _out_of_range(self, index: int) -> IllegalStateError:
        return IllegalStateError(
            f"subpartition {index} out of range 0..{self.num_subpartitions - 1}"
        )

    def _new_unicast_builder(self, target: int) -> BufferBuilder:
        if not 0 <= target < self.num_subpartitions:
            raise self._out_of_range(target)
        if self._broadcast is not None:
            self._finish_broadcast()
        builder = self._request_builder(target)
        if not self.subpartitions[target].add(builder.create_buffer_consumer()):
            builder.close()
            msg = f"Partition {self.partition_id} has been released."
            raise PartitionReleasedError(msg) from self.failure_cause
        self._unicast[target] = builder
        return builder

    def _new_broadcast_builder(self) -> BufferBuilder:
        for target, builder in enumerate(self._unicast):
            if builder is not None:
                self._finish_unicast(target)
        builder = self._request_builder(UNKNOWN_CHANNEL)
        consumer = builder.create_buffer_consumer()
        added = [subpartition.add(consumer.copy()) for subpartition in self.subpartitions]
        consumer.close()
        if not all(added):  # released while this thread waited for the buffer
            builder.close()
            msg = f"Partition {self.partition_id} has been released."
            raise PartitionReleasedError(msg) from self.failure_cause
        self._broadcast = builder
        return builder

    def _finish_unicast(self, target: int) -> None:
        builder = self._unicast[target]
        assert builder is not None
        self._unicast[target] = None
        self.num_bytes_out += builder.finish()
        self.num_buffers_out += 1
        builder.close()

    def _finish_broadcast(self) -> None:
        builder = self._broadcast
        assert builder is not None
        self._broadcast = None
        self.num_bytes_out += builder.finish() * self.num_subpartitions
        self.num_buffers_out += self.num_subpartitions
        builder.close()

    def _finish_all_builders(self) -> None:
        if self._broadcast is not None:
            self._finish_broadcast()
        for target, builder in enumerate(self._unicast):
            if builder is not None:
                self._finish_unicast(target)

    def __repr__(self) -> str:
        return (
            f"ResultPartition({self.partition_id}, subpartitions={self.num_subpartitions}, "
            f"owner={self.owner!r})"
        )


def _check_subpartition_count(num_subpartitions: int) -> None:
    if num_subpartitions < 1:
        msg = f"a result partition needs at least one subpartition, not {num_subpartitions}"
        raise IllegalStateError(msg)
