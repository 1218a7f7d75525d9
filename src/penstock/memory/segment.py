"""MemorySegment: one fixed-size slice of the memory a NetworkBufferPool allocates once."""

from __future__ import annotations

__all__ = ["MemorySegment"]


class MemorySegment:
    """A fixed-size, writable region of network memory.

    Segments are carved out of one allocation made when the NetworkBufferPool starts and
    are never resized or freed while the pool lives; ``memory`` is a writable
    ``memoryview`` over exactly ``size`` bytes of it.

    Attributes:
        memory: Writable view of the segment's bytes.
        size: Size in bytes (``taskmanager.memory.segment-size``).
        index: Position of the segment in its pool's allocation (stable identity).
    """

    __slots__ = ("index", "memory", "size")

    def __init__(self, memory: memoryview, index: int = -1) -> None:
        self.memory = memory
        self.size = len(memory)
        self.index = index

    @classmethod
    def allocate_unpooled(cls, size: int) -> MemorySegment:
        """A segment with memory of its own, outside any pool (events, tests)."""
        return cls(memoryview(bytearray(size)))

    def __repr__(self) -> str:
        return f"MemorySegment(index={self.index}, size={self.size})"
