"""LocalBufferPool: a stateful model, per-channel caps, overdraft, blocking, listeners."""

from __future__ import annotations

import queue
import random
import sys
import threading
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field

import pytest
from hypothesis import event, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    invariant,
    precondition,
    rule,
)

from penstock.buffer.buffer import Buffer
from penstock.buffer.builder import BufferBuilder
from penstock.errors import (
    BufferPoolError,
    IllegalStateError,
    InsufficientBuffersError,
    PenstockError,
    PoolDestroyedError,
)
from penstock.memory.local_pool import UNKNOWN_CHANNEL, LocalBufferPool
from penstock.memory.network_pool import NetworkBufferPool
from penstock.memory.segment import MemorySegment
from wait_helpers import signal_on_pending_future

JOIN_TIMEOUT = 10.0


class RecordingListener:
    """A BufferListener that accepts or refuses, and remembers what it was told."""

    def __init__(self, accept: bool = True, on_buffer: Callable[[Buffer], None] | None = None):
        self.accept = accept
        self.on_buffer = on_buffer
        self.offered: list[Buffer] = []
        self.destroyed = 0

    def notify_buffer_available(self, buffer: Buffer) -> bool:
        self.offered.append(buffer)
        if self.accept and self.on_buffer is not None:
            self.on_buffer(buffer)
        return self.accept

    def notify_buffer_destroyed(self) -> None:
        self.destroyed += 1


def _flag(future: Future[None]) -> list[bool]:
    """A list that gets ``True`` appended when ``future`` completes."""
    fired: list[bool] = []
    future.add_done_callback(lambda _: fired.append(True))
    return fired


def _drain(pool: LocalBufferPool, channel: int = UNKNOWN_CHANNEL) -> list[BufferBuilder]:
    builders: list[BufferBuilder] = []
    while (builder := pool.request_buffer_builder(channel)) is not None:
        builders.append(builder)
    return builders


# -- the stateful model -------------------------------------------------------------

TOTAL_SEGMENTS = 12
NUM_SUBPARTITIONS = 2
MAX_PER_CHANNEL = 2


@dataclass(slots=True)
class Held:
    """One segment handed out by a local pool, as the model sees it."""

    pool: int
    channel: int
    index: int
    release: Callable[[], None]
    buffer: Buffer | None = None  # set for Buffer holdings (they raise on double recycle)


@dataclass(slots=True)
class Watch:
    """The availability future a pool had after the last step, with a completion flag."""

    future: Future[None]
    fired: list[bool] = field(default_factory=list)


class LocalBufferPoolMachine(RuleBasedStateMachine):
    """Two local pools on one NetworkBufferPool, with exclusive requests on the side.

    Pool 0 is a result partition's pool (subpartitions with a per-channel cap and one
    overdraft buffer); pool 1 is an input gate's floating pool (listeners).
    """

    def __init__(self) -> None:
        super().__init__()
        # An exclusive request that would have to wait fails at once instead: nothing
        # else runs while a rule runs, so waiting could only end in the timeout.
        self.network = NetworkBufferPool(TOTAL_SEGMENTS, 32, request_timeout_ms=0)
        self.pools = [
            self.network.create_buffer_pool(
                2,
                6,
                num_subpartitions=NUM_SUBPARTITIONS,
                max_buffers_per_channel=MAX_PER_CHANNEL,
                max_overdraft_buffers=1,
            ),
            self.network.create_buffer_pool(1, 8),
        ]
        self.held: list[Held] = []
        self.released: list[Held] = []
        self.unpooled: list[list[MemorySegment]] = []
        self.listeners: list[RecordingListener] = []
        self.watches: list[Watch | None] = [None, None]

    # -- helpers -------------------------------------------------------------------

    def _held_indices(self) -> set[int]:
        indices = {h.index for h in self.held}
        indices.update(s.index for group in self.unpooled for s in group)
        return indices

    def _hand_out(self, held: Held) -> None:
        assert held.index not in self._held_indices(), "segment handed out twice at once"
        self.held.append(held)

    def _listener_got(self, buffer: Buffer) -> None:
        self._hand_out(Held(1, UNKNOWN_CHANNEL, buffer.segment.index, buffer.recycle, buffer))

    # -- rules ---------------------------------------------------------------------

    @rule(
        pool_index=st.integers(0, 1),
        channel=st.sampled_from([UNKNOWN_CHANNEL, *range(NUM_SUBPARTITIONS)]),
        as_buffer=st.booleans(),
    )
    def request(self, pool_index: int, channel: int, as_buffer: bool) -> None:
        pool = self.pools[pool_index]
        if pool_index == 1:
            channel = UNKNOWN_CHANNEL  # an input gate's pool has no subpartitions
        free_before = pool.available_segments
        requested_before = pool.requested_segments
        if as_buffer and channel == UNKNOWN_CHANNEL:
            buffer = pool.request_buffer()
            if buffer is not None:
                assert buffer.size == 0
                assert len(buffer.segment.memory) == 32
                self._hand_out(
                    Held(pool_index, channel, buffer.segment.index, buffer.recycle, buffer)
                )
            got = buffer is not None
        else:
            builder = pool.request_buffer_builder(channel)
            if builder is not None:
                assert builder.capacity == 32
                self._hand_out(Held(pool_index, channel, builder.segment.index, builder.close))
            got = builder is not None
        if free_before > 0:
            assert got, "a pool with a free segment refused a request"
        elif got:
            # Served without a free segment: only as overdraft, beyond the current size.
            assert pool_index == 0
            assert requested_before >= pool.num_buffers
            assert pool.requested_segments == requested_before + 1
            assert not pool.is_available()

    @precondition(lambda self: bool(self.held))
    @rule(data=st.data())
    def recycle(self, data: st.DataObject) -> None:
        held = data.draw(st.sampled_from(self.held), label="recycled")
        self.held.remove(held)
        held.release()
        self.released.append(held)

    @precondition(lambda self: bool(self.released))
    @rule(data=st.data())
    def recycle_again(self, data: st.DataObject) -> None:
        held = data.draw(st.sampled_from(self.released), label="recycled again")
        if held.buffer is not None:
            with pytest.raises(IllegalStateError):
                held.buffer.recycle()
        else:
            held.release()  # closing a builder twice is a no-op
        # The invariants check that the counts are unchanged.

    @rule(pool_index=st.integers(0, 1), size=st.integers(0, 10))
    def set_num_buffers(self, pool_index: int, size: int) -> None:
        pool = self.pools[pool_index]
        pool.set_num_buffers(size)
        assert pool.num_buffers == max(pool.min_size, min(size, pool.max_size))
        if pool.requested_segments > pool.num_buffers:
            assert pool.available_segments == 0, "excess free segments were kept"

    @rule(accept=st.booleans())
    def add_listener(self, accept: bool) -> None:
        pool = self.pools[1]
        listener = RecordingListener(accept, self._listener_got)
        free = pool.available_segments
        registered = pool.add_buffer_listener(listener)
        assert registered == (free == 0)
        if registered:
            self.listeners.append(listener)

    @rule(count=st.integers(1, 4))
    def request_unpooled(self, count: int) -> None:
        required = self.network.required_segments
        if required + count > TOTAL_SEGMENTS:
            with pytest.raises(InsufficientBuffersError):
                self.network.request_unpooled_segments(count)
            assert self.network.required_segments == required
            return
        try:
            segments = self.network.request_unpooled_segments(count)
        except BufferPoolError as error:
            # Not enough free segments (pools hold them in use, or redistribution let a
            # pool take one): the reservation and any segment taken are given back.
            assert not isinstance(error, InsufficientBuffersError)
            assert "Timeout triggered when requesting exclusive buffers" in str(error)
            assert self.network.required_segments == required
            event("exclusive request could not be served at once")
            return
        assert len(segments) == count
        for segment in segments:
            assert segment.index not in self._held_indices()
        self.unpooled.append(segments)

    @precondition(lambda self: bool(self.unpooled))
    @rule(data=st.data())
    def recycle_unpooled(self, data: st.DataObject) -> None:
        group = data.draw(st.sampled_from(self.unpooled), label="exclusive")
        self.unpooled.remove(group)
        self.network.recycle_unpooled_segments(group)

    # -- invariants ----------------------------------------------------------------

    @invariant()
    def local_counts(self) -> None:
        for index, pool in enumerate(self.pools):
            in_use = sum(1 for h in self.held if h.pool == index)
            assert pool.available_segments + in_use == pool.requested_segments
            assert pool.used_buffers == in_use
        pool = self.pools[0]
        for channel in range(NUM_SUBPARTITIONS):
            in_use = sum(1 for h in self.held if h.pool == 0 and h.channel == channel)
            assert pool.buffers_in_use_for(channel) == in_use

    @invariant()
    def global_conservation(self) -> None:
        unpooled = sum(len(group) for group in self.unpooled)
        requested = sum(pool.requested_segments for pool in self.pools)
        assert self.network.available_segments + requested + unpooled == TOTAL_SEGMENTS
        assert self.network.required_segments == 3 + unpooled

    @invariant()
    def availability(self) -> None:
        global_free = self.network.available_segments
        for pool in self.pools:
            can_serve = pool.available_segments > 0 or (
                pool.requested_segments < pool.num_buffers and global_free > 0
            )
            capped = any(
                pool.buffers_in_use_for(channel) >= pool.max_buffers_per_channel
                for channel in range(pool.num_subpartitions)
            )
            assert pool.is_available() == (can_serve and not capped)
            assert pool.get_available_future().done() == pool.is_available()

    @invariant()
    def waiters_are_woken(self) -> None:
        for index, pool in enumerate(self.pools):
            watch = self.watches[index]
            if watch is not None and pool.is_available():
                assert watch.future.done()
                assert watch.fired == [True]
            future = pool.get_available_future()
            self.watches[index] = Watch(future, _flag(future))

    def teardown(self) -> None:
        while self.held:  # a listener may take a recycled segment and hold it
            self.held.pop().release()
        for group in self.unpooled:
            self.network.recycle_unpooled_segments(group)
        waiting = [listener for listener in self.listeners if not listener.offered]
        for pool in self.pools:
            pool.destroy()
        for listener in waiting:
            assert listener.destroyed == 1
        assert self.network.available_segments == TOTAL_SEGMENTS
        assert self.network.required_segments == 0
        self.network.destroy()
        assert self.network.available_segments == TOTAL_SEGMENTS


LocalBufferPoolMachine.TestCase.settings = settings(
    max_examples=120, stateful_step_count=40, deadline=None
)
TestLocalBufferPoolModel = LocalBufferPoolMachine.TestCase


# -- availability -------------------------------------------------------------------


def test_future_completes_when_a_buffer_comes_back() -> None:
    network = NetworkBufferPool(2, 16)
    pool = network.create_buffer_pool(2, 2)
    builders = _drain(pool)
    assert len(builders) == 2
    assert not pool.is_available()
    future = pool.get_available_future()
    fired = _flag(future)
    assert fired == []
    builders.pop().close()
    assert fired == [True]
    assert pool.is_available()
    assert pool.available_segments == 1


def test_future_completes_when_the_global_pool_gets_a_segment_back() -> None:
    network = NetworkBufferPool(3, 16)
    pool = network.create_buffer_pool(1, 3)
    exclusive = [network.request_pooled_segment() for _ in range(network.available_segments)]
    assert network.available_segments == 0
    builders = _drain(pool)
    assert len(builders) == 1
    assert not pool.is_available()
    fired = _flag(pool.get_available_future())
    segment = exclusive.pop()
    assert segment is not None
    network.recycle(segment)  # the pool may grow and is waiting on the global pool
    assert fired == [True]
    assert pool.is_available()
    assert network.available_segments == 0  # taken eagerly by the local pool
    for builder in builders:
        builder.close()
    pool.destroy()
    for leftover in exclusive:
        assert leftover is not None
        network.recycle(leftover)
    assert network.available_segments == 3


def test_usage_metric() -> None:
    network = NetworkBufferPool(4, 16)
    pool = network.create_buffer_pool(4, 4)
    assert pool.usage == 0.0
    builders = [pool.request_buffer_builder() for _ in range(3)]
    assert pool.used_buffers == 3
    assert pool.usage == 0.75
    for builder in builders:
        assert builder is not None
        builder.close()
    assert pool.usage == 0.0
    empty = NetworkBufferPool(0, 16).create_buffer_pool(0, 0)
    assert empty.usage == 0.0
    assert not empty.is_available()
    assert empty.request_buffer_builder() is None


# -- per-channel cap ----------------------------------------------------------------


def test_a_channel_at_its_cap_makes_the_pool_unavailable() -> None:
    network = NetworkBufferPool(10, 16)
    pool = network.create_buffer_pool(8, 8, num_subpartitions=3, max_buffers_per_channel=2)
    first = pool.request_buffer_builder(1)
    assert first is not None
    assert pool.is_available()
    second = pool.request_buffer_builder(1)
    assert second is not None
    assert pool.buffers_in_use_for(1) == 2
    assert pool.available_segments > 0
    assert not pool.is_available(), "a capped subpartition must backpressure the writer"
    fired = _flag(pool.get_available_future())
    # Other channels (and requests without one) are still served, not made to wait.
    other = pool.request_buffer_builder(0)
    assert other is not None
    assert not pool.is_available()
    second.close()
    assert pool.buffers_in_use_for(1) == 1
    assert fired == [True]
    assert pool.is_available()
    for builder in (first, other):
        builder.close()
    assert [pool.buffers_in_use_for(channel) for channel in range(3)] == [0, 0, 0]


def test_a_channel_above_its_cap_becomes_available_only_below_it() -> None:
    network = NetworkBufferPool(10, 16)
    pool = network.create_buffer_pool(8, 8, num_subpartitions=1, max_buffers_per_channel=2)
    builders = [pool.request_buffer_builder(0) for _ in range(4)]
    assert pool.buffers_in_use_for(0) == 4
    assert not pool.is_available()
    for expected_available in (False, False, True, True):
        builder = builders.pop()
        assert builder is not None
        builder.close()
        assert pool.is_available() == expected_available


def test_two_capped_channels_both_need_to_drop() -> None:
    network = NetworkBufferPool(10, 16)
    pool = network.create_buffer_pool(8, 8, num_subpartitions=2, max_buffers_per_channel=1)
    zero = pool.request_buffer_builder(0)
    one = pool.request_buffer_builder(1)
    assert zero is not None
    assert one is not None
    assert not pool.is_available()
    zero.close()
    assert not pool.is_available()
    one.close()
    assert pool.is_available()


def test_recycling_more_than_a_channel_requested_raises() -> None:
    network = NetworkBufferPool(4, 16)
    pool = network.create_buffer_pool(2, 2, num_subpartitions=2)
    segment = pool.request_memory_segment(0)
    assert segment is not None
    with pytest.raises(IllegalStateError, match="subpartition 1 recycled more"):
        pool.recycle_for_channel(segment, 1)
    assert pool.buffers_in_use_for(0) == 1
    pool.recycle_for_channel(segment, 0)
    assert pool.used_buffers == 0


@pytest.mark.parametrize("channel", [2, -2])
def test_an_unknown_channel_is_rejected_without_leaking(channel: int) -> None:
    network = NetworkBufferPool(4, 16)
    pool = network.create_buffer_pool(2, 2, num_subpartitions=2)
    with pytest.raises(PenstockError):
        pool.request_buffer_builder(channel)
    assert pool.used_buffers == 0
    assert pool.available_segments == 1
    assert [pool.buffers_in_use_for(c) for c in range(2)] == [0, 0]


# -- overdraft ----------------------------------------------------------------------


def test_overdraft_serves_an_exhausted_pool_and_returns_to_the_global_pool() -> None:
    network = NetworkBufferPool(10, 16)
    pool = network.create_buffer_pool(3, 3, max_overdraft_buffers=2)
    regular = _drain(pool)
    # Exhausted at its size, the pool still hands out two overdraft segments.
    assert len(regular) == 3 + 2
    assert pool.requested_segments == 5
    assert pool.num_buffers == 3
    assert network.available_segments == 5
    assert not pool.is_available()
    assert pool.usage > 1.0
    fired = _flag(pool.get_available_future())
    # Recycled overdraft segments go back to the global pool, not to the free queue.
    regular.pop().close()
    regular.pop().close()
    assert network.available_segments == 7
    assert pool.requested_segments == 3
    assert pool.available_segments == 0
    assert not pool.is_available()
    assert fired == []
    regular.pop().close()
    assert fired == [True]
    assert pool.available_segments == 1
    assert network.available_segments == 7
    # The overdraft is available again.
    again = _drain(pool)
    assert len(again) == 1 + 2
    for builder in regular + again:
        builder.close()
    pool.destroy()
    assert network.available_segments == 10


def test_overdraft_is_limited_by_the_global_pool() -> None:
    network = NetworkBufferPool(4, 16)
    pool = network.create_buffer_pool(3, 3, max_overdraft_buffers=5)
    builders = _drain(pool)
    assert len(builders) == 4
    assert network.available_segments == 0
    for builder in builders:
        builder.close()
    pool.destroy()
    assert network.available_segments == 4


def test_no_overdraft_by_default() -> None:
    network = NetworkBufferPool(10, 16)
    pool = network.create_buffer_pool(2, 2)
    assert len(_drain(pool)) == 2
    assert network.available_segments == 8


def test_overdraft_counts_from_the_current_size_after_a_shrink() -> None:
    network = NetworkBufferPool(20, 16)
    pool = network.create_buffer_pool(1, 10, max_overdraft_buffers=2)
    held = _drain(pool)
    assert len(held) == 10 + 2
    for builder in held[10:]:
        builder.close()
    assert pool.requested_segments == 10
    other = network.create_buffer_pool(15, 15)
    assert pool.num_buffers == 5
    # The pool already holds 5 more than its size, beyond any overdraft of 2.
    assert pool.request_buffer_builder() is None
    for builder in held[:10]:
        builder.close()
    other.destroy()
    pool.destroy()


def test_overdraft_is_available_again_after_the_pool_grows() -> None:
    network = NetworkBufferPool(10, 16)
    pool = network.create_buffer_pool(2, 4, max_overdraft_buffers=2)
    blocker = network.create_buffer_pool(8, 8)  # leaves no excess: pool stays at 2
    assert pool.num_buffers == 2
    held = _drain(pool)
    assert len(held) == 2 + 2
    blocker.destroy()  # the pool grows to 4 and its overdraft segments become regular
    assert pool.num_buffers == 4
    assert pool.requested_segments == 4
    # Exhausted at its new size, the pool may overdraw 2 again, as Flink's would.
    more = _drain(pool)
    assert len(more) == 2
    for builder in held + more:
        builder.close()
    pool.destroy()


# -- blocking requests --------------------------------------------------------------


def test_blocking_request_waits_until_another_thread_recycles(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    network = NetworkBufferPool(2, 16)
    pool = network.create_buffer_pool(2, 2, num_subpartitions=1)
    builders = _drain(pool, 0)
    assert len(builders) == 2
    waiting = signal_on_pending_future(monkeypatch, pool)
    got: list[BufferBuilder] = []
    errors: list[BaseException] = []

    def producer() -> None:
        try:
            got.append(pool.request_buffer_builder_blocking(0))
        except BaseException as exc:  # checked in the test thread
            errors.append(exc)

    thread = threading.Thread(target=producer)
    thread.start()
    assert waiting.wait_for(1, JOIN_TIMEOUT)
    assert got == []
    recycler = threading.Thread(target=builders[0].close)
    recycler.start()
    recycler.join(JOIN_TIMEOUT)
    thread.join(JOIN_TIMEOUT)
    assert not recycler.is_alive()
    assert not thread.is_alive()
    assert errors == []
    [builder] = got
    assert builder.segment is builders[0].segment
    assert pool.buffers_in_use_for(0) == 2
    builder.close()
    builders[1].close()
    pool.destroy()
    assert network.available_segments == 2


def test_blocking_request_returns_at_once_with_a_free_segment() -> None:
    network = NetworkBufferPool(2, 16)
    pool = network.create_buffer_pool(1, 2)
    builder = pool.request_buffer_builder_blocking()
    assert builder.capacity == 16
    builder.close()


def test_blocking_request_fails_when_the_pool_is_destroyed_while_waiting(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    network = NetworkBufferPool(1, 16)
    pool = network.create_buffer_pool(1, 1)
    [held] = _drain(pool)
    waiting = signal_on_pending_future(monkeypatch, pool)
    errors: list[BaseException] = []

    def producer() -> None:
        try:
            pool.request_buffer_builder_blocking()
        except BaseException as exc:  # checked in the test thread
            errors.append(exc)

    thread = threading.Thread(target=producer)
    thread.start()
    assert waiting.wait_for(1, JOIN_TIMEOUT)
    pool.destroy()
    thread.join(JOIN_TIMEOUT)
    assert not thread.is_alive()
    assert len(errors) == 1
    assert isinstance(errors[0], PoolDestroyedError)
    held.close()
    assert network.available_segments == 1


def test_requests_to_a_destroyed_pool_fail() -> None:
    network = NetworkBufferPool(2, 16)
    pool = network.create_buffer_pool(1, 2)
    pool.destroy()
    assert pool.is_destroyed
    with pytest.raises(PoolDestroyedError, match="destroyed"):
        pool.request_buffer_builder()
    with pytest.raises(PoolDestroyedError):
        pool.request_buffer()
    with pytest.raises(PoolDestroyedError):
        pool.request_buffer_builder_blocking()
    assert network.available_segments == 2


def test_a_destroyed_pool_stays_available_after_late_recycles() -> None:
    network = NetworkBufferPool(2, 16)
    pool = network.create_buffer_pool(2, 2)
    builders = _drain(pool)
    pool.destroy()
    assert pool.get_available_future().done()
    builders[0].close()  # a consumer finishes reading after the task failed
    assert network.available_segments == 1
    assert pool.get_available_future().done(), "waiters on a destroyed pool must not block"
    builders[1].close()


def test_destroy_returns_free_segments_now_and_used_ones_later() -> None:
    network = NetworkBufferPool(6, 16)
    pool = network.create_buffer_pool(4, 4, num_subpartitions=2)
    builders = [pool.request_buffer_builder(0), pool.request_buffer_builder(1)]
    assert pool.requested_segments == 3
    pool.destroy()
    assert network.available_segments == 4
    assert network.number_of_pools == 0
    pool.destroy()  # idempotent
    for builder in builders:
        assert builder is not None
        builder.close()
    assert network.available_segments == 6
    assert [pool.buffers_in_use_for(channel) for channel in range(2)] == [0, 0]


# -- buffer listeners ---------------------------------------------------------------


def test_listener_registers_only_when_no_segment_is_free() -> None:
    network = NetworkBufferPool(4, 16)
    pool = network.create_buffer_pool(2, 2)
    listener = RecordingListener()
    assert pool.available_segments == 1
    assert not pool.add_buffer_listener(listener)
    buffers = [pool.request_buffer(), pool.request_buffer()]
    assert pool.available_segments == 0
    assert pool.add_buffer_listener(listener)
    for buffer in buffers:
        assert buffer is not None
        buffer.recycle()
    pool.destroy()


def test_a_recycled_segment_goes_to_the_listener() -> None:
    network = NetworkBufferPool(4, 16)
    pool = network.create_buffer_pool(2, 2)
    buffers = [pool.request_buffer(), pool.request_buffer()]
    first, second = RecordingListener(), RecordingListener()
    assert pool.add_buffer_listener(first)
    assert pool.add_buffer_listener(second)
    fired = _flag(pool.get_available_future())
    recycled = buffers[0]
    assert recycled is not None
    recycled.recycle()
    # In order: the first listener gets it; the pool stays empty and unavailable.
    assert len(first.offered) == 1
    assert second.offered == []
    assert first.offered[0].segment is recycled.segment
    assert first.offered[0].size == 0
    assert pool.available_segments == 0
    assert not pool.is_available()
    assert fired == []
    assert pool.used_buffers == 2
    # The buffer the listener got recycles into the pool (to the next listener).
    first.offered[0].recycle()
    assert len(second.offered) == 1
    second.offered[0].recycle()
    assert pool.available_segments == 1
    assert fired == [True]
    last = buffers[1]
    assert last is not None
    last.recycle()
    pool.destroy()
    assert network.available_segments == 4


def test_a_refused_segment_goes_back_to_the_pool() -> None:
    network = NetworkBufferPool(4, 16)
    pool = network.create_buffer_pool(2, 2)
    buffers = [pool.request_buffer(), pool.request_buffer()]
    refusing, accepting = RecordingListener(accept=False), RecordingListener()
    assert pool.add_buffer_listener(refusing)
    assert pool.add_buffer_listener(accepting)
    first = buffers[0]
    assert first is not None
    first.recycle()
    # The refusal passes the segment on to the next listener.
    assert len(refusing.offered) == 1
    assert len(accepting.offered) == 1
    assert accepting.offered[0].segment is first.segment
    assert pool.available_segments == 0
    accepting.offered[0].recycle()
    assert pool.available_segments == 1
    second = buffers[1]
    assert second is not None
    second.recycle()
    pool.destroy()
    assert network.available_segments == 4


def test_refusal_puts_the_segment_in_the_free_queue() -> None:
    network = NetworkBufferPool(2, 16)
    pool = network.create_buffer_pool(2, 2, num_subpartitions=1, max_buffers_per_channel=5)
    builders = _drain(pool, 0)
    assert len(builders) == 2
    listener = RecordingListener(accept=False)
    assert pool.add_buffer_listener(listener)
    fired = _flag(pool.get_available_future())
    builders[0].close()
    assert len(listener.offered) == 1
    assert pool.available_segments == 1
    assert pool.is_available()
    assert fired == [True]
    # Counted once against the channel, although offered twice.
    assert pool.buffers_in_use_for(0) == 1
    builders[1].close()
    assert pool.buffers_in_use_for(0) == 0
    assert pool.available_segments == 2
    pool.destroy()
    assert network.available_segments == 2


def test_destroy_notifies_listeners() -> None:
    network = NetworkBufferPool(1, 16)
    pool = network.create_buffer_pool(1, 1)
    [held] = _drain(pool)
    listeners = [RecordingListener(), RecordingListener()]
    for listener in listeners:
        assert pool.add_buffer_listener(listener)
    pool.destroy()
    assert [listener.destroyed for listener in listeners] == [1, 1]
    assert not pool.add_buffer_listener(RecordingListener())
    held.close()
    assert all(listener.offered == [] for listener in listeners)
    assert network.available_segments == 1


def test_destroy_wakes_every_blocked_requester(monkeypatch: pytest.MonkeyPatch) -> None:
    network = NetworkBufferPool(2, 16)
    pool = network.create_buffer_pool(2, 2, num_subpartitions=3)
    held = _drain(pool)
    waiting = signal_on_pending_future(monkeypatch, pool)
    errors: list[BaseException] = []
    lock = threading.Lock()

    def producer(channel: int) -> None:
        try:
            pool.request_buffer_builder_blocking(channel)
        except BaseException as exc:  # checked in the test thread
            with lock:
                errors.append(exc)

    threads = [threading.Thread(target=producer, args=(c,), daemon=True) for c in range(3)]
    for thread in threads:
        thread.start()
    # Destroy only once all three found the pool empty and hold its pending future.
    assert waiting.wait_for(3, JOIN_TIMEOUT)
    assert errors == []
    pool.destroy()
    for thread in threads:
        thread.join(JOIN_TIMEOUT)
        assert not thread.is_alive()
    assert len(errors) == 3
    assert all(isinstance(error, PoolDestroyedError) for error in errors)
    for builder in held:
        builder.close()
    assert network.available_segments == 2


@pytest.mark.parametrize("seed", range(3))
def test_producers_consumers_and_pool_churn_keep_every_segment(seed: int) -> None:
    """Blocking producers, recycling consumers and redistribution, all at once."""
    total = 16
    network = NetworkBufferPool(total, 64)
    pools = [
        network.create_buffer_pool(
            2, 8, num_subpartitions=2, max_buffers_per_channel=3, max_overdraft_buffers=1
        )
        for _ in range(3)
    ]
    handoff: queue.Queue[BufferBuilder | None] = queue.Queue()
    errors: list[BaseException] = []
    rng = random.Random(seed)
    per_producer = 200

    def producer(pool: LocalBufferPool, channels: list[int]) -> None:
        try:
            for channel in channels:
                builder = pool.request_buffer_builder_blocking(channel)
                builder.append(b"x" * 10)
                handoff.put(builder)
        except BaseException as exc:  # checked in the test thread
            errors.append(exc)

    def consumer() -> None:
        try:
            while (builder := handoff.get(timeout=JOIN_TIMEOUT)) is not None:
                builder.close()
        except BaseException as exc:  # checked in the test thread
            errors.append(exc)

    def churn() -> None:
        try:
            for _ in range(30):
                pool = network.create_buffer_pool(1, 4)
                exclusive = network.request_unpooled_segments(1)
                network.recycle_unpooled_segments(exclusive)
                pool.destroy()
        except BaseException as exc:  # checked in the test thread
            errors.append(exc)

    producers = [
        threading.Thread(
            target=producer,
            args=(pool, [rng.randrange(2) for _ in range(per_producer)]),
            daemon=True,
        )
        for pool in pools
    ]
    consumers = [threading.Thread(target=consumer, daemon=True) for _ in range(2)]
    churner = threading.Thread(target=churn, daemon=True)
    previous = sys.getswitchinterval()
    sys.setswitchinterval(1e-5)
    try:
        for thread in [*producers, *consumers, churner]:
            thread.start()
        for thread in [*producers, churner]:
            thread.join(JOIN_TIMEOUT)
        for _ in consumers:
            handoff.put(None)
        for thread in consumers:
            thread.join(JOIN_TIMEOUT)
    finally:
        sys.setswitchinterval(previous)
    assert not [t for t in [*producers, *consumers, churner] if t.is_alive()]
    assert errors == []
    assert network.available_segments + sum(p.requested_segments for p in pools) == total
    assert all(p.used_buffers == 0 for p in pools)
    for pool in pools:
        pool.destroy()
    assert network.available_segments == total
    assert network.required_segments == 0
