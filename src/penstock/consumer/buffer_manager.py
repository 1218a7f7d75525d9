"""BufferManager: the buffers a remote channel may receive into, and so its credit.

Theory of operation
-------------------
A remote channel owns ``initial_credit`` *exclusive* segments, taken from the
NetworkBufferPool when the channel is set up, and borrows *floating* segments from its
gate's LocalBufferPool when the sender's backlog says more data is coming. Every free
segment the manager holds is one credit the sender may use; the channel announces new
credit when a segment comes free.

* ``required`` = sender backlog + initial credit: the manager borrows floating
  segments until it holds that many, and waits (as a buffer listener of the gate's
  pool) when the pool has none.
* An exclusive segment recycled after its data was read comes back here: one more
  credit, unless the manager now holds more than it needs, in which case it gives a
  floating segment back to the pool instead.
* A floating segment recycled after its data was read stays with the manager while it
  still holds fewer than it needs and the gate's pool wants nothing back (no other
  channel waits for a segment, the pool has not shrunk): one more credit, without a
  round through the pool and its listener for every buffer received. Otherwise it goes
  back to the pool, which hands it to whichever channel waits for one.

Segments are counted in and out under one lock; credit changes are reported to the
channel (``notify_buffer_available``) outside it.
"""

from __future__ import annotations

import threading
from collections import deque
from typing import TYPE_CHECKING

from penstock.buffer.buffer import Buffer, SegmentLease
from penstock.errors import PoolDestroyedError
from penstock.memory.local_pool import LocalBufferPool
from penstock.memory.network_pool import NetworkBufferPool
from penstock.memory.segment import MemorySegment

if TYPE_CHECKING:
    from penstock.consumer.remote_channel import RemoteInputChannel

__all__ = ["BufferManager"]


class BufferManager:
    """Exclusive and floating segments of one remote input channel.

    Args:
        channel: The channel credit changes are reported to.
        network_pool: Where exclusive segments come from and return to.
        floating_pool: The gate's pool of floating segments (None: exclusive only).
        initial_credit: Number of exclusive segments.
    """

    def __init__(
        self,
        channel: RemoteInputChannel,
        network_pool: NetworkBufferPool,
        floating_pool: LocalBufferPool | None,
        initial_credit: int,
    ) -> None:
        self._channel = channel
        self._network_pool = network_pool
        self._floating_pool = floating_pool
        self.initial_credit = initial_credit
        self._lock = threading.Lock()
        self._exclusive: deque[MemorySegment] = deque()
        self._floating: deque[MemorySegment] = deque()
        self._exclusive_indices: set[int] = set()
        self._required = initial_credit
        self._waiting_for_floating = False
        self._released = False

    # -- set-up ----------------------------------------------------------------------

    def request_exclusive_segments(self) -> None:
        """Takes the exclusive segments from the network pool (may wait for them).

        Raises:
            InsufficientBuffersError: The network pool cannot provide them.
        """
        segments = self._network_pool.request_unpooled_segments(self.initial_credit)
        with self._lock:
            self._exclusive.extend(segments)
            self._exclusive_indices.update(segment.index for segment in segments)

    # -- the receiving side (network thread) ---------------------------------------

    @property
    def available(self) -> int:
        """Free segments held: the credit the sender has been (or will be) given."""
        return len(self._exclusive) + len(self._floating)

    @property
    def required(self) -> int:
        return self._required

    @property
    def floating_held(self) -> int:
        return len(self._floating)

    @property
    def exclusive_in_use(self) -> int:
        """Exclusive segments out of the manager: holding data, or being received into."""
        return 0 if self._released else self.initial_credit - len(self._exclusive)

    def take_segment(self) -> MemorySegment | None:
        """A free segment to receive a data buffer into; floating ones first."""
        with self._lock:
            if self._floating:
                return self._floating.popleft()
            if self._exclusive:
                return self._exclusive.popleft()
            return None

    def wrap(self, segment: MemorySegment, size: int) -> Buffer:
        """A received buffer over ``segment``, recycled to this manager."""
        return Buffer(SegmentLease(segment, self), 0, size)

    def on_sender_backlog(self, backlog: int) -> None:
        """Borrows floating segments until ``backlog + initial credit`` are held."""
        with self._lock:
            required = self._required = backlog + self.initial_credit
            if (
                self._released
                or self._waiting_for_floating
                or len(self._exclusive) + len(self._floating) >= required
            ):
                return  # nothing to borrow, or a segment is promised already
        self._request_floating()

    def _request_floating(self) -> None:
        """Takes floating segments while short; registers as a listener when none is free.

        Ends either satisfied or registered with the pool, never neither: a failed
        registration means a segment came free meanwhile, so it tries again.
        """
        pool = self._floating_pool
        if pool is None:
            return
        added = 0
        while True:
            with self._lock:
                if (
                    self._released
                    or self._waiting_for_floating
                    or self.available >= self._required
                    or pool.is_destroyed
                ):
                    break
                try:
                    segment = pool.request_memory_segment()
                except PoolDestroyedError:
                    break
                if segment is not None:
                    self._floating.append(segment)
                    added += 1
                    continue
                self._waiting_for_floating = True
            if pool.add_buffer_listener(self):
                break
            with self._lock:
                self._waiting_for_floating = False
        if added:
            self._channel.notify_buffer_available(added)

    # -- BufferRecycler for received segments (the task thread) ----------------------

    def recycle(self, segment: MemorySegment) -> None:
        """A received segment was read: one more credit, or a floating one returned."""
        if segment.index not in self._exclusive_indices:
            self._recycle_floating(segment)
            return
        give_back: MemorySegment | None = None
        with self._lock:
            if self._released:
                released = True
            else:
                released = False
                self._exclusive.append(segment)
                if self.available > self._required and self._floating:
                    give_back = self._floating.pop()
        if released:
            self._network_pool.recycle_unpooled_segments([segment])
            return
        if give_back is not None:
            assert self._floating_pool is not None
            self._floating_pool.recycle(give_back)
        else:
            self._channel.notify_buffer_available(1)

    def _recycle_floating(self, segment: MemorySegment) -> None:
        pool = self._floating_pool
        assert pool is not None  # floating segments come from it
        with self._lock:
            keep = not self._released and self.available < self._required
            if keep and not pool.wants_segment_back(self):
                self._floating.append(segment)
            else:
                keep = False
        if keep:
            self._channel.notify_buffer_available(1)
        else:
            pool.recycle(segment)

    # -- BufferListener for floating segments (any thread) --------------------------

    def notify_buffer_available(self, buffer: Buffer) -> bool:
        """The gate's pool offers a floating segment; accept it if still needed."""
        with self._lock:
            self._waiting_for_floating = False
            if self._released or self.available >= self._required:
                return False
            self._floating.append(buffer.segment)
        self._channel.notify_buffer_available(1)
        self._request_floating()
        return True

    def notify_buffer_destroyed(self) -> None:
        with self._lock:
            self._waiting_for_floating = False

    # -- teardown --------------------------------------------------------------------

    def release(self) -> None:
        """Returns every free segment; segments still being read return when recycled."""
        with self._lock:
            if self._released:
                return
            self._released = True
            exclusive = list(self._exclusive)
            floating = list(self._floating)
            self._exclusive.clear()
            self._floating.clear()
        if exclusive:
            self._network_pool.recycle_unpooled_segments(exclusive)
        if self._floating_pool is not None:
            for segment in floating:
                self._floating_pool.recycle(segment)

    def __repr__(self) -> str:
        return (
            f"BufferManager(exclusive={len(self._exclusive)}, floating={len(self._floating)}, "
            f"required={self._required})"
        )
