"""Buffers: readable slices of network memory, with Flink's data types and recycling.

Theory of operation
-------------------
A ``MemorySegment`` is shared by one ``BufferBuilder`` (the writer), one or more
``BufferConsumer`` objects (the reader and, for broadcast, its copies) and every
``Buffer`` slice a consumer has handed out. They all hold one reference each on a
``SegmentLease``; the lease returns the segment to its recycler when the last reference
is released. Releasing twice is a bug and raises ``IllegalStateError`` instead of
recycling a segment that someone is still reading.

Reference counts change once per buffer, never once per record, so the small lock
that guards them costs nothing measurable.
"""

from __future__ import annotations

import threading
from enum import IntEnum
from typing import Final, Protocol

from penstock.errors import IllegalStateError
from penstock.memory.segment import MemorySegment

__all__ = ["Buffer", "BufferRecycler", "DataType", "SegmentLease"]


class DataType(IntEnum):
    """What a buffer holds; the value is the byte Flink sends on the wire."""

    NONE = 0
    DATA_BUFFER = 1
    EVENT_BUFFER = 2
    PRIORITIZED_EVENT_BUFFER = 3
    ALIGNED_CHECKPOINT_BARRIER = 4
    TIMEOUTABLE_ALIGNED_CHECKPOINT_BARRIER = 5
    RECOVERY_COMPLETION = 6
    END_OF_SEGMENT = 7
    DATA_BUFFER_WITH_CLEAR_END = 8
    END_OF_DATA = 9
    END_OF_PARTITION = 10
    RECOVERY_METADATA = 11

    @property
    def is_buffer(self) -> bool:
        """True for data buffers: the only type that costs credit."""
        return self in _DATA_TYPES

    @property
    def is_event(self) -> bool:
        return self not in _DATA_TYPES and self is not DataType.NONE

    @property
    def has_priority(self) -> bool:
        """True for events that overtake queued data (unaligned checkpoint barriers)."""
        return self is DataType.PRIORITIZED_EVENT_BUFFER

    @property
    def is_blocking_upstream(self) -> bool:
        """True for events after which a subpartition sends nothing until resumed."""
        return self in _BLOCKING_TYPES


_DATA_TYPES: Final = frozenset({DataType.DATA_BUFFER, DataType.DATA_BUFFER_WITH_CLEAR_END})
_BLOCKING_TYPES: Final = frozenset(
    {
        DataType.ALIGNED_CHECKPOINT_BARRIER,
        DataType.TIMEOUTABLE_ALIGNED_CHECKPOINT_BARRIER,
        DataType.RECOVERY_COMPLETION,
    }
)


class BufferRecycler(Protocol):
    """Takes back a segment nobody references any more."""

    def recycle(self, segment: MemorySegment) -> None: ...


class SegmentLease:
    """Reference count on one segment; recycles it when the count drops to zero."""

    __slots__ = ("_lock", "_recycler", "_refs", "segment")

    def __init__(self, segment: MemorySegment, recycler: BufferRecycler | None) -> None:
        self.segment = segment
        self._recycler = recycler
        self._refs = 1
        self._lock = threading.Lock()

    @property
    def references(self) -> int:
        return self._refs

    @property
    def is_recycled(self) -> bool:
        return self._refs == 0

    def retain(self) -> None:
        with self._lock:
            if self._refs <= 0:
                msg = "cannot retain a segment that was already recycled"
                raise IllegalStateError(msg)
            self._refs += 1

    def release(self) -> None:
        with self._lock:
            if self._refs <= 0:
                msg = "segment released more often than it was retained"
                raise IllegalStateError(msg)
            self._refs -= 1
            last = self._refs == 0
        if last and self._recycler is not None:
            self._recycler.recycle(self.segment)


class Buffer:
    """A readable, finished slice of a segment: data or a serialized event.

    ``memory`` is a read-only view of exactly ``size`` bytes. Call ``recycle()`` once
    after reading; the view must not be used afterwards.
    """

    __slots__ = ("_lease", "_recycled", "data_type", "memory", "offset", "size")

    def __init__(
        self,
        lease: SegmentLease,
        offset: int,
        size: int,
        data_type: DataType = DataType.DATA_BUFFER,
    ) -> None:
        self._lease = lease
        self.memory = lease.segment.memory[offset : offset + size].toreadonly()
        self.offset = offset
        self.size = size
        self.data_type = data_type
        self._recycled = False

    @classmethod
    def wrap(
        cls,
        segment: MemorySegment,
        size: int,
        recycler: BufferRecycler | None,
        data_type: DataType = DataType.DATA_BUFFER,
    ) -> Buffer:
        """A buffer owning ``segment`` outright (one reference), as a receiver fills it."""
        return cls(SegmentLease(segment, recycler), 0, size, data_type)

    @property
    def is_buffer(self) -> bool:
        return self.data_type.is_buffer

    @property
    def is_recycled(self) -> bool:
        """True once this slice was recycled (its segment may still be in use)."""
        return self._recycled

    @property
    def segment(self) -> MemorySegment:
        return self._lease.segment

    def recycle(self) -> None:
        """Gives this slice's reference back; the last one returns the segment.

        Raises:
            IllegalStateError: This slice was recycled before.
        """
        if self._recycled:
            msg = f"{self!r} was recycled twice"
            raise IllegalStateError(msg)
        self._recycled = True
        self._lease.release()

    def __repr__(self) -> str:
        return f"Buffer({self.data_type.name}, size={self.size})"
