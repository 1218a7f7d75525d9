"""NetworkBufferPool: all of a TaskManager's network memory, allocated once.

Theory of operation
-------------------
At start the pool allocates ``num_segments × segment_size`` bytes in one piece and cuts
them into ``MemorySegment`` objects; nothing on the data path ever allocates buffer
memory again. Segments leave the pool in two ways:

* *pooled*, through the ``LocalBufferPool`` of a result partition or an input gate
  (``create_buffer_pool``). Each local pool is guaranteed its minimum size; whatever the
  minimums leave over is *redistributed* among the pools that can grow, in proportion
  to how much each can grow, so a new pool shrinks its neighbours instead of failing.
* *unpooled*, as the exclusive buffers of remote input channels
  (``request_unpooled_segments``); they count against the required total like a pool's
  minimum.

A request that would push the required total past the number of segments fails at
once with Flink's "Insufficient number of network buffers" message. Pool availability
is a future (see ``availability.py``): local pools waiting for segments register on it
instead of polling.

Lock order: ``_factory_lock`` (pool bookkeeping) → a local pool's lock → ``_lock``
(the free-segment queue). Futures are completed outside every lock.
"""

from __future__ import annotations

import threading
from collections import deque
from concurrent.futures import Future
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

from penstock.errors import (
    BufferPoolError,
    IllegalStateError,
    InsufficientBuffersError,
    PoolDestroyedError,
)
from penstock.memory.availability import AvailabilityHelper, any_of, complete, timer_future
from penstock.memory.segment import MemorySegment

if TYPE_CHECKING:
    from penstock.memory.local_pool import LocalBufferPool

__all__ = ["DEFAULT_BUFFERS_REQUEST_TIMEOUT_MS", "NetworkBufferPool", "NetworkBufferPoolStatistics"]

DEFAULT_BUFFERS_REQUEST_TIMEOUT_MS: Final = 30_000
"""``taskmanager.network.memory.buffers-request-timeout``: 30 s, as in Flink."""

UNBOUNDED: Final = 2**31 - 1
"""Flink's ``Integer.MAX_VALUE``: no per-channel limit."""


@dataclass(frozen=True, slots=True)
class NetworkBufferPoolStatistics:
    """A snapshot of the pool, with Flink's ``Status.Shuffle.Netty`` metric meanings."""

    total_segments: int
    available_segments: int
    required_segments: int
    segment_size: int

    @property
    def used_segments(self) -> int:
        return self.total_segments - self.available_segments

    @property
    def total_memory(self) -> int:
        return self.total_segments * self.segment_size

    @property
    def available_memory(self) -> int:
        return self.available_segments * self.segment_size

    @property
    def used_memory(self) -> int:
        return self.used_segments * self.segment_size


class NetworkBufferPool:
    """The TaskManager-wide pool of network segments (one per TaskManager process).

    Args:
        num_segments: Total number of segments (network memory / segment size).
        segment_size: Bytes per segment (``taskmanager.memory.segment-size``).
        request_timeout_ms: How long ``request_unpooled_segments`` waits for segments
            that other pools still hold (``…buffers-request-timeout``).
    """

    def __init__(
        self,
        num_segments: int,
        segment_size: int,
        request_timeout_ms: int = DEFAULT_BUFFERS_REQUEST_TIMEOUT_MS,
    ) -> None:
        if num_segments < 0 or segment_size <= 0:
            msg = f"invalid pool shape: {num_segments} segments of {segment_size} bytes"
            raise BufferPoolError(msg)
        self.segment_size = segment_size
        self.total_segments = num_segments
        self.request_timeout_ms = request_timeout_ms
        self._memory = bytearray(num_segments * segment_size)
        view = memoryview(self._memory)
        self._available: deque[MemorySegment] = deque(
            MemorySegment(view[i * segment_size : (i + 1) * segment_size], i)
            for i in range(num_segments)
        )
        self._lock = threading.Lock()
        self._factory_lock = threading.Lock()
        self._availability = AvailabilityHelper(available=num_segments > 0)
        self._pools: list[LocalBufferPool] = []
        self._required = 0
        self._destroyed = False

    # -- segments ------------------------------------------------------------------

    @property
    def available_segments(self) -> int:
        return len(self._available)

    @property
    def required_segments(self) -> int:
        """Segments promised to pool minimums and exclusive buffers."""
        return self._required

    @property
    def is_destroyed(self) -> bool:
        return self._destroyed

    def is_available(self) -> bool:
        return self._availability.is_available()

    def get_available_future(self) -> Future[None]:
        return self._availability.get_available_future()

    def request_pooled_segment(self) -> MemorySegment | None:
        """One free segment for a local pool, or ``None`` if none is free."""
        with self._lock:
            if self._destroyed:
                msg = "the NetworkBufferPool has been destroyed"
                raise PoolDestroyedError(msg)
            if not self._available:
                return None
            segment = self._available.popleft()
            if not self._available:
                self._availability.reset_unavailable()
            return segment

    def recycle(self, segment: MemorySegment) -> None:
        """Takes a segment back (from a local pool or an exclusive buffer)."""
        with self._lock:
            self._available.append(segment)
            became_available = len(self._available) == 1
            future = (
                self._availability.get_unavailable_to_reset_available()
                if became_available
                else None
            )
        if future is not None:
            complete(future)

    def request_unpooled_segments(self, count: int) -> list[MemorySegment]:
        """Exclusive segments for a remote input channel.

        The count is reserved against the required total first (so the request fails at
        once if it can never be served); then the segments are taken, waiting up to the
        request timeout for local pools to give back their excess.

        Raises:
            InsufficientBuffersError: The segments can never be had.
            BufferPoolError: They were not freed within the request timeout.
        """
        if count < 0:
            msg = f"cannot request a negative number of segments ({count})"
            raise BufferPoolError(msg)
        if count == 0:
            return []
        with self._factory_lock:
            self._check_can_require(count)
            self._required += count
            try:
                self._redistribute()
            except BaseException:
                self._required -= count
                raise
        taken: list[MemorySegment] = []
        deadline, timer = timer_future(self.request_timeout_ms / 1000)
        try:
            while len(taken) < count:
                segment = self.request_pooled_segment()
                if segment is not None:
                    taken.append(segment)
                    continue
                any_of([self.get_available_future(), deadline]).result()
                if deadline.done() and not self.is_available():
                    msg = (
                        f"Timeout triggered when requesting exclusive buffers: "
                        f"{self._config_description()}, or you may increase the timeout "
                        f"which is {self.request_timeout_ms}ms by setting the key "
                        "'taskmanager.network.memory.buffers-request-timeout'."
                    )
                    raise BufferPoolError(msg)
        except BaseException:
            self.recycle_unpooled_segments(taken, reserved=count)
            raise
        finally:
            timer.cancel()
        return taken

    def recycle_unpooled_segments(
        self, segments: list[MemorySegment], reserved: int | None = None
    ) -> None:
        """Gives back exclusive segments and their reservation (``reserved`` if partial)."""
        for segment in segments:
            self.recycle(segment)
        with self._factory_lock:
            self._required -= len(segments) if reserved is None else reserved
            if not self._destroyed:
                self._redistribute()

    # -- local pools ---------------------------------------------------------------

    def create_buffer_pool(
        self,
        min_size: int,
        max_size: int,
        num_subpartitions: int = 0,
        max_buffers_per_channel: int = UNBOUNDED,
        max_overdraft_buffers: int = 0,
    ) -> LocalBufferPool:
        """A local pool guaranteed ``min_size`` segments, growing up to ``max_size``.

        Raises:
            InsufficientBuffersError: The minimum cannot be guaranteed.
        """
        from penstock.memory.local_pool import LocalBufferPool

        if not 0 <= min_size <= max_size:
            msg = f"invalid local pool size: min {min_size}, max {max_size}"
            raise BufferPoolError(msg)
        with self._factory_lock:
            if self._destroyed:
                msg = "the NetworkBufferPool has been destroyed"
                raise PoolDestroyedError(msg)
            self._check_can_require(min_size)
            pool = LocalBufferPool(
                self,
                min_size,
                max_size,
                num_subpartitions=num_subpartitions,
                max_buffers_per_channel=max_buffers_per_channel,
                max_overdraft_buffers=max_overdraft_buffers,
            )
            self._required += min_size
            self._pools.append(pool)
            self._redistribute()
        return pool

    def destroy_buffer_pool(self, pool: LocalBufferPool) -> None:
        """Forgets a destroyed local pool and gives its share to the others."""
        with self._factory_lock:
            if pool in self._pools:
                self._pools.remove(pool)
                self._required -= pool.min_size
                if not self._destroyed:
                    self._redistribute()

    @property
    def number_of_pools(self) -> int:
        return len(self._pools)

    def destroy(self) -> None:
        """Destroys every local pool; segments still in use return as they are recycled."""
        with self._factory_lock:
            pools = list(self._pools)
        for pool in pools:
            pool.destroy()
        with self._lock:
            self._destroyed = True
            pending = self._availability.get_unavailable_to_reset_available()
        complete(pending)  # wakes exclusive requests, which then see the destroy

    def statistics(self) -> NetworkBufferPoolStatistics:
        return NetworkBufferPoolStatistics(
            total_segments=self.total_segments,
            available_segments=len(self._available),
            required_segments=self._required,
            segment_size=self.segment_size,
        )

    # -- internals -----------------------------------------------------------------

    def _check_can_require(self, count: int) -> None:
        if self._required + count > self.total_segments:
            raise InsufficientBuffersError(
                required=count,
                available=self.total_segments - self._required,
                total=self.total_segments,
                segment_size=self.segment_size,
            )

    def _config_description(self) -> str:
        return (
            f"The total number of network buffers is currently set to {self.total_segments} "
            f"of {self.segment_size} bytes each"
        )

    def _redistribute(self) -> None:
        """Shares the segments no minimum needs among the pools that can grow.

        Each pool gets its minimum plus a share of the excess proportional to how far it
        can grow (``max - min``, capped by the excess); cumulative shares are rounded
        down, as in Flink, so that they add up to exactly what is distributed. Called
        under ``_factory_lock``.
        """
        excess = self.total_segments - self._required
        if excess < 0:  # pragma: no cover - prevented by _check_can_require
            msg = "more segments required than exist"
            raise IllegalStateError(msg)
        capacities = [min(excess, pool.max_size - pool.min_size) for pool in self._pools]
        total_capacity = sum(capacities)
        to_distribute = min(excess, total_capacity)
        parts_used = 0
        distributed = 0
        for pool, capacity in zip(self._pools, capacities, strict=True):
            if capacity == 0 or to_distribute == 0:
                pool.set_num_buffers(pool.min_size)
                continue
            parts_used += capacity
            # Rounded down, as Flink's redistributeBuffers does: the last pool takes
            # what the earlier ones' rounding left.
            share = parts_used * to_distribute // total_capacity - distributed
            distributed += share
            pool.set_num_buffers(pool.min_size + share)
