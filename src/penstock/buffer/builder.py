"""BufferBuilder and BufferConsumer: one writer and its readers over one segment.

Theory of operation
-------------------
The task thread appends bytes to a ``BufferBuilder``; a ``BufferConsumer`` created from
it (once: one reader) is queued in a subpartition *before* any data is written, and is
read as the segment fills. ``position`` is the number of committed bytes: the writer
copies bytes into the segment first and only then advances ``position``, so a reader on
another thread that sees a position also sees the bytes before it. ``finished`` is set
after the last ``position`` update, so a reader that sees ``finished`` and then reads
``position`` has the final size.

``BufferConsumer.build()`` returns the bytes committed since the previous call as a
``Buffer`` slice (no copy); flushing a partially filled buffer therefore ships only the
new bytes, and the same segment may be read several times while it fills.

Broadcast shares one builder among all subpartitions: ``BufferConsumer.copy()`` gives
each its own reader position over the same segment.

The segment is recycled when the builder has been closed, every consumer closed and
every built slice recycled (see ``SegmentLease``).
"""

from __future__ import annotations

from typing import Final

from penstock.buffer.buffer import Buffer, BufferRecycler, DataType, SegmentLease
from penstock.errors import IllegalStateError
from penstock.memory.segment import MemorySegment

__all__ = ["BufferBuilder", "BufferConsumer"]

_NO_CONSUMER: Final = 0
_CONSUMER_CREATED: Final = 1


class BufferBuilder:
    """The single writer of one segment.

    Attributes:
        memory: The segment's writable view (the hot path writes into it directly and
            then calls ``commit``; ``append`` does both).
        position: Committed bytes, visible to readers.
        capacity: How many bytes may be written (the segment size unless trimmed).
        finished: True once no more bytes will be written.
    """

    __slots__ = (
        "_closed",
        "_consumer_state",
        "_lease",
        "capacity",
        "data_type",
        "finished",
        "memory",
        "position",
        "segment",
    )

    def __init__(
        self,
        segment: MemorySegment,
        recycler: BufferRecycler | None,
        data_type: DataType = DataType.DATA_BUFFER,
    ) -> None:
        self.segment = segment
        self.memory = segment.memory
        self.capacity = segment.size
        self.position = 0
        self.finished = False
        self.data_type = data_type
        self._lease = SegmentLease(segment, recycler)
        self._consumer_state = _NO_CONSUMER
        self._closed = False

    @classmethod
    def for_event(cls, payload: bytes, data_type: DataType) -> BufferBuilder:
        """A finished builder over unpooled memory holding a serialized event.

        Events never take buffers from a pool (Flink's heap segments with a freeing
        recycler): the memory is simply dropped when the last reader is done.
        """
        builder = cls(MemorySegment(memoryview(bytearray(payload))), None, data_type)
        builder.position = len(payload)
        builder.finished = True
        return builder

    @property
    def remaining(self) -> int:
        return self.capacity - self.position

    def is_full(self) -> bool:
        return self.position >= self.capacity

    def append(self, data: bytes | bytearray | memoryview, start: int = 0) -> int:
        """Copies as much of ``data[start:]`` as fits and commits it.

        Returns:
            The number of bytes copied.
        """
        if self.finished:
            msg = "cannot append to a finished BufferBuilder"
            raise IllegalStateError(msg)
        position = self.position
        count = min(len(data) - start, self.capacity - position)
        if count <= 0:
            return 0
        self.memory[position : position + count] = data[start : start + count]
        self.position = position + count
        return count

    def commit(self, position: int) -> None:
        """Publishes bytes written straight into ``memory`` up to ``position``."""
        self.position = position

    def trim(self, size: int) -> None:
        """Lowers the capacity (buffer debloating); never below what is written."""
        self.capacity = min(max(size, self.position), self.segment.size)

    def finish(self) -> int:
        """Marks the buffer complete; returns the number of bytes written."""
        self.finished = True
        return self.position

    def create_buffer_consumer(self, from_beginning: bool = True) -> BufferConsumer:
        """The reader of this builder; can be created once (one reader per buffer)."""
        if self._consumer_state != _NO_CONSUMER:
            msg = "a BufferBuilder can have only one BufferConsumer; use copy() to share"
            raise IllegalStateError(msg)
        self._consumer_state = _CONSUMER_CREATED
        self._lease.retain()
        return BufferConsumer(self, self._lease, 0 if from_beginning else self.position)

    def close(self) -> None:
        """Drops the writer's reference to the segment (idempotent)."""
        if not self._closed:
            self._closed = True
            self._lease.release()

    def __repr__(self) -> str:
        state = "finished" if self.finished else "open"
        return f"BufferBuilder({state}, {self.position}/{self.capacity})"


class BufferConsumer:
    """Reads what a BufferBuilder committed, as ``Buffer`` slices, without copying."""

    __slots__ = (
        "_builder",
        "_closed",
        "_lease",
        "data_type",
        "finished_when_built",
        "reader_position",
    )

    def __init__(self, builder: BufferBuilder, lease: SegmentLease, reader_position: int) -> None:
        self._builder = builder
        self._lease = lease
        self.reader_position = reader_position
        self.data_type = builder.data_type
        self.finished_when_built = False
        self._closed = False

    @property
    def is_buffer(self) -> bool:
        return self.data_type.is_buffer

    def is_finished(self) -> bool:
        """True when the writer has finished (the unread rest may still be pending)."""
        return self._builder.finished

    def is_data_available(self) -> bool:
        return self.reader_position < self._builder.position

    @property
    def written_bytes(self) -> int:
        return self._builder.position

    def build(self) -> Buffer:
        """The bytes committed since the last call, as a retained slice (maybe empty).

        Sets ``finished_when_built``: True when the writer had finished before the
        position was read, i.e. the slice holds everything that will ever be written.
        Test that flag, not ``is_finished()``, to decide whether the consumer is done:
        the writer may append and finish between the two.
        """
        if self._closed:
            msg = "cannot build from a closed BufferConsumer"
            raise IllegalStateError(msg)
        builder = self._builder
        self.finished_when_built = builder.finished  # read before the position
        start = self.reader_position
        end = builder.position
        self.reader_position = end
        self._lease.retain()
        return Buffer(self._lease, start, end - start, self.data_type)

    def copy(self) -> BufferConsumer:
        """Another reader of the same builder at the same position (broadcast)."""
        self._lease.retain()
        return BufferConsumer(self._builder, self._lease, self.reader_position)

    def close(self) -> None:
        """Drops this reader's reference to the segment (idempotent)."""
        if not self._closed:
            self._closed = True
            self._lease.release()

    @property
    def is_closed(self) -> bool:
        return self._closed

    def __repr__(self) -> str:
        state = "finished" if self._builder.finished else "open"
        return (
            f"BufferConsumer({self.data_type.name}, {state}, "
            f"read {self.reader_position}/{self._builder.position})"
        )
