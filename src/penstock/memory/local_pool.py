"""LocalBufferPool: the bounded pool of one result partition or one input gate.

Theory of operation
-------------------
A local pool may hold up to ``current_size`` segments (set by the NetworkBufferPool's
redistribution, between ``min_size`` and ``max_size``). It takes segments from the
global pool lazily and keeps one in hand whenever it can, so that "available" can be
answered without touching the global pool.

*Availability is backpressure.* The pool is available while it has a free segment and
no subpartition has reached ``max_buffers_per_channel`` segments in use. A writer that
finds the pool unavailable stops taking input (soft backpressure); a writer that needs a
buffer the pool cannot give blocks in ``request_buffer_builder_blocking`` on the
availability future (hard backpressure). Either way nothing more is allocated: the
producer waits until its consumers recycle buffers.

When the pool is exhausted at its current size, a request may still take up to
``max_overdraft_buffers`` extra segments from the global pool, so that a task in the
middle of a large record can finish it; the pool stays unavailable meanwhile.

Input gates register *buffer listeners* (remote channels waiting for floating
buffers): a recycled segment goes to the first listener instead of the free queue.

Destroying the pool returns its free segments at once and every in-use segment as it is
recycled, wakes blocked requesters with ``PoolDestroyedError`` and tells listeners.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Sequence
from concurrent.futures import Future
from typing import TYPE_CHECKING, Final, Protocol

from penstock.buffer.buffer import Buffer
from penstock.buffer.builder import BufferBuilder
from penstock.errors import BufferPoolError, IllegalStateError, PoolDestroyedError
from penstock.memory.availability import AvailabilityHelper, complete
from penstock.memory.segment import MemorySegment

if TYPE_CHECKING:
    from penstock.memory.network_pool import NetworkBufferPool

__all__ = ["UNKNOWN_CHANNEL", "BufferListener", "LocalBufferPool"]

UNKNOWN_CHANNEL: Final = -1
"""A request not made on behalf of a particular subpartition."""


class BufferListener(Protocol):
    """Waits for a buffer from an exhausted pool (a remote channel's floating buffers)."""

    def notify_buffer_available(self, buffer: Buffer) -> bool:
        """Offers a buffer; returns False to refuse it (the pool then keeps it)."""
        ...

    def notify_buffer_destroyed(self) -> None:
        """The pool was destroyed; no buffer will come."""
        ...


class _SubpartitionRecycler:
    """Recycles segments of one subpartition, so the pool can count them per channel."""

    __slots__ = ("channel", "pool")

    def __init__(self, pool: LocalBufferPool, channel: int) -> None:
        self.pool = pool
        self.channel = channel

    def recycle(self, segment: MemorySegment) -> None:
        self.pool.recycle_for_channel(segment, self.channel)


class LocalBufferPool:
    """A bounded pool of segments for one result partition or input gate.

    Create it with ``NetworkBufferPool.create_buffer_pool``, never directly.
    """

    def __init__(
        self,
        network_pool: NetworkBufferPool,
        min_size: int,
        max_size: int,
        num_subpartitions: int = 0,
        max_buffers_per_channel: int = 2**31 - 1,
        max_overdraft_buffers: int = 0,
    ) -> None:
        self._network_pool = network_pool
        self.min_size = min_size
        self.max_size = max_size
        self.num_subpartitions = num_subpartitions
        self.max_buffers_per_channel = max_buffers_per_channel
        self.max_overdraft_buffers = max_overdraft_buffers
        self._lock = threading.Lock()
        self._available: deque[MemorySegment] = deque()
        self._current_size = min_size
        self._requested = 0  # segments taken from the global pool, incl. overdraft
        self._channel_counts = [0] * num_subpartitions
        self._unavailable_channels = 0
        self._listeners: deque[BufferListener] = deque()
        self._availability = AvailabilityHelper(available=False)
        self._waiting_for_global = False
        self._destroyed = False
        self._returns: list[MemorySegment] = []  # to hand back to the global pool, unlocked
        self._recyclers = [_SubpartitionRecycler(self, i) for i in range(num_subpartitions)]

    # -- sizes and metrics ---------------------------------------------------------

    @property
    def num_buffers(self) -> int:
        """The current size: how many segments the pool may hold now."""
        return self._current_size

    @property
    def requested_segments(self) -> int:
        """Segments taken from the global pool and not yet returned (free or in use)."""
        return self._requested

    @property
    def available_segments(self) -> int:
        return len(self._available)

    @property
    def used_buffers(self) -> int:
        """Segments handed out and not yet recycled."""
        return self._requested - len(self._available)

    @property
    def usage(self) -> float:
        """``used / current size`` (above 1 with overdraft)."""
        return self.used_buffers / self._current_size if self._current_size else 0.0

    @property
    def is_destroyed(self) -> bool:
        return self._destroyed

    def wants_segment_back(self, borrower: BufferListener) -> bool:
        """Whether ``borrower`` must return a segment it no longer uses, not keep it.

        True when another listener waits for a segment, or the pool holds more than its
        size, or is destroyed. While it is False a borrower may keep the segment for its
        next use (``borrower`` itself may be registered as a listener meanwhile).
        """
        with self._lock:
            if self._destroyed or self._requested > self._current_size:
                return True
            listeners = self._listeners
            # Nobody, or only the borrower itself, waits: the common case, one test.
            return bool(listeners) and (len(listeners) > 1 or listeners[0] is not borrower)

    def buffers_in_use_for(self, channel: int) -> int:
        return self._channel_counts[channel]

    def is_available(self) -> bool:
        return self._availability.is_available()

    def get_available_future(self) -> Future[None]:
        return self._availability.get_available_future()

    # -- requests ------------------------------------------------------------------

    def request_memory_segment(self, channel: int = UNKNOWN_CHANNEL) -> MemorySegment | None:
        """A segment if one can be had without waiting, else ``None``.

        Raises:
            PoolDestroyedError: The pool was destroyed.
            BufferPoolError: ``channel`` is not a subpartition of this pool.
        """
        if channel != UNKNOWN_CHANNEL and not 0 <= channel < self.num_subpartitions:
            msg = f"channel {channel} is not a subpartition of {self!r}"
            raise BufferPoolError(msg)
        with self._lock:
            if self._destroyed:
                msg = "Buffer pool is destroyed."
                raise PoolDestroyedError(msg)
            if self._available:
                segment: MemorySegment | None = self._available.popleft()
            elif self._requested >= self._current_size:
                segment = self._request_overdraft()
            else:
                segment = None
            if segment is not None and channel != UNKNOWN_CHANNEL:
                self._channel_counts[channel] += 1
                if self._channel_counts[channel] == self.max_buffers_per_channel:
                    self._unavailable_channels += 1
            to_complete, register = self._update_availability()
            returns = self._take_returns()
        self._after_update(to_complete, register, returns)
        return segment

    def request_buffer(self) -> Buffer | None:
        """A whole segment as an empty buffer owned by the caller (input side)."""
        segment = self.request_memory_segment()
        return None if segment is None else Buffer.wrap(segment, 0, self)

    def request_buffer_builder(self, channel: int = UNKNOWN_CHANNEL) -> BufferBuilder | None:
        """A builder over a free segment, or ``None`` without waiting."""
        segment = self.request_memory_segment(channel)
        if segment is None:
            return None
        return BufferBuilder(segment, self._recycler_for(channel))

    def request_buffer_builder_blocking(self, channel: int = UNKNOWN_CHANNEL) -> BufferBuilder:
        """A builder, waiting for a segment as long as it takes: hard backpressure.

        Raises:
            PoolDestroyedError: The pool was destroyed, before or while waiting.
        """
        while True:
            segment = self.request_memory_segment(channel)
            if segment is not None:
                return BufferBuilder(segment, self._recycler_for(channel))
            self.get_available_future().result()

    def add_buffer_listener(self, listener: BufferListener) -> bool:
        """Registers a listener for the next recycled segment.

        Returns:
            False if a segment is free right now (request it instead) or the pool is
            destroyed; True if the listener was registered.
        """
        with self._lock:
            if self._available or self._destroyed:
                return False
            self._listeners.append(listener)
            return True

    # -- recycling -----------------------------------------------------------------

    def recycle(self, segment: MemorySegment) -> None:
        """Takes back a segment requested without a channel."""
        self.recycle_for_channel(segment, UNKNOWN_CHANNEL)

    def recycle_for_channel(self, segment: MemorySegment, channel: int) -> None:
        """Takes back a segment that subpartition ``channel`` used."""
        while True:
            with self._lock:
                if channel != UNKNOWN_CHANNEL:
                    count = self._channel_counts[channel]
                    if count <= 0:
                        msg = f"subpartition {channel} recycled more buffers than it requested"
                        raise IllegalStateError(msg)
                    if count == self.max_buffers_per_channel:
                        self._unavailable_channels -= 1
                    self._channel_counts[channel] = count - 1
                    channel = UNKNOWN_CHANNEL  # counted once, even if a listener refuses
                listener: BufferListener | None = None
                if self._destroyed or self._requested > self._current_size:
                    self._return_to_global(segment)
                elif self._listeners:
                    listener = self._listeners.popleft()
                else:
                    self._available.append(segment)
                to_complete, register = self._update_availability()
                returns = self._take_returns()
            self._after_update(to_complete, register, returns)
            if listener is None or listener.notify_buffer_available(Buffer.wrap(segment, 0, self)):
                return
            # The listener refused the buffer: offer it again as a fresh recycle.

    # -- resizing and teardown -----------------------------------------------------

    def set_num_buffers(self, num_buffers: int) -> None:
        """Sets the current size (clamped to ``[min, max]``), returning any excess."""
        with self._lock:
            self._current_size = max(self.min_size, min(num_buffers, self.max_size))
            while self._available and self._requested > self._current_size:
                self._return_to_global(self._available.pop())
            to_complete, register = (
                self._update_availability() if not self._destroyed else (None, False)
            )
            returns = self._take_returns()
        self._after_update(to_complete, register, returns)
        self._serve_listeners()

    def destroy(self) -> None:
        """Returns free segments now and in-use ones when recycled; wakes all waiters."""
        with self._lock:
            if self._destroyed:
                return
            self._destroyed = True
            while self._available:
                self._return_to_global(self._available.pop())
            listeners = list(self._listeners)
            self._listeners.clear()
            pending = self._availability.get_unavailable_to_reset_available()
            returns = self._take_returns()
        self._after_update(None, False, returns)
        complete(pending)  # blocked requesters wake up and see PoolDestroyedError
        for listener in listeners:
            listener.notify_buffer_destroyed()
        self._network_pool.destroy_buffer_pool(self)

    # -- internals (called under the lock unless noted) ----------------------------

    def _recycler_for(self, channel: int) -> _SubpartitionRecycler | LocalBufferPool:
        return self if channel == UNKNOWN_CHANNEL else self._recyclers[channel]

    def _request_overdraft(self) -> MemorySegment | None:
        # Overdraft is whatever is held beyond the current size, as in Flink: a pool
        # that shrank below what it holds is already in overdraft.
        if self._requested - self._current_size >= self.max_overdraft_buffers:
            return None
        segment = self._network_pool.request_pooled_segment()
        if segment is not None:
            self._requested += 1
        return segment

    def _return_to_global(self, segment: MemorySegment) -> None:
        self._requested -= 1
        self._returns.append(segment)

    def _take_returns(self) -> Sequence[MemorySegment]:
        returns = self._returns
        if not returns:
            return ()  # not the list itself: others append to it once we unlock
        self._returns = []
        return returns

    def _update_availability(self) -> tuple[Future[None] | None, bool]:
        """Refills one free segment if allowed and recomputes availability.

        Returns the future to complete after unlocking and whether to register for the
        global pool's availability.
        """
        if self._destroyed:
            return None, False  # stays available: waiters must wake and see the destroy
        register = False
        if not self._available and self._requested < self._current_size:
            segment = self._network_pool.request_pooled_segment()
            if segment is not None:
                self._available.append(segment)
                self._requested += 1
            elif not self._waiting_for_global:
                self._waiting_for_global = True
                register = True
        if self._available and self._unavailable_channels == 0:
            if not self._availability.is_available():
                return self._availability.get_unavailable_to_reset_available(), register
        else:
            self._availability.reset_unavailable()
        return None, register

    def _after_update(
        self,
        to_complete: Future[None] | None,
        register: bool,
        returns: Sequence[MemorySegment],
    ) -> None:
        """Outside the lock: returns segments, completes availability, registers."""
        for segment in returns:
            self._network_pool.recycle(segment)
        if to_complete is not None:
            complete(to_complete)
        if register:
            self._network_pool.get_available_future().add_done_callback(self._on_global_available)

    def _on_global_available(self, _: Future[None]) -> None:
        with self._lock:
            self._waiting_for_global = False
            if self._destroyed:
                return
            to_complete, register = self._update_availability()
        self._after_update(to_complete, register, [])
        self._serve_listeners()

    def _serve_listeners(self) -> None:
        """Hands segments that became free without a recycle to waiting listeners.

        Not under the lock. A listener registers only while no segment is free, and a
        recycled segment goes to it first; so must one that the pool gets from the
        global pool or by growing, or the listener would wait while it lies here.
        """
        while True:
            with self._lock:
                if self._destroyed or not self._available or not self._listeners:
                    return
                listener = self._listeners.popleft()
                segment = self._available.popleft()
                to_complete, register = self._update_availability()
                returns = self._take_returns()
            self._after_update(to_complete, register, returns)
            if not listener.notify_buffer_available(Buffer.wrap(segment, 0, self)):
                self.recycle(segment)  # refused: to the next listener, or kept free

    def __repr__(self) -> str:
        return (
            f"LocalBufferPool(size={self._current_size}, min={self.min_size}, "
            f"max={self.max_size}, requested={self._requested}, "
            f"available={len(self._available)})"
        )
