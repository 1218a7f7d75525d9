"""NetworkBufferPool: eager allocation, redistribution, exclusive segments, teardown."""

from __future__ import annotations

import contextlib
import pickle
import threading
from concurrent.futures import Future
from fractions import Fraction

import pytest
from hypothesis import given
from hypothesis import strategies as st

from penstock.errors import (
    BufferPoolError,
    InsufficientBuffersError,
    PenstockError,
    PoolDestroyedError,
)
from penstock.memory.local_pool import LocalBufferPool
from penstock.memory.network_pool import (
    DEFAULT_BUFFERS_REQUEST_TIMEOUT_MS,
    NetworkBufferPool,
    NetworkBufferPoolStatistics,
)
from penstock.memory.segment import MemorySegment

JOIN_TIMEOUT = 10.0


def _flink_message(required: int, available: int, total: int, segment_size: int) -> str:
    return (
        f"Insufficient number of network buffers: required {required}, but only {available} "
        f"available. The total number of network buffers is currently set to {total} of "
        f"{segment_size} bytes each. You can increase this number by setting the "
        "configuration keys 'taskmanager.memory.network.fraction', "
        "'taskmanager.memory.network.min', and 'taskmanager.memory.network.max'."
    )


def _take_all(network: NetworkBufferPool) -> list[MemorySegment]:
    taken: list[MemorySegment] = []
    while (segment := network.request_pooled_segment()) is not None:
        taken.append(segment)
    return taken


# -- allocation ---------------------------------------------------------------------


def test_all_segments_are_allocated_at_start() -> None:
    network = NetworkBufferPool(8, 128)
    assert network.total_segments == 8
    assert network.available_segments == 8
    assert network.required_segments == 0
    assert network.is_available()
    assert network.get_available_future().done()
    assert network.request_timeout_ms == DEFAULT_BUFFERS_REQUEST_TIMEOUT_MS


@given(count=st.integers(1, 24), size=st.integers(1, 512))
def test_segments_are_distinct_views_over_one_allocation(count: int, size: int) -> None:
    network = NetworkBufferPool(count, size)
    segments = _take_all(network)
    assert len(segments) == count
    assert network.available_segments == 0
    assert len({id(segment) for segment in segments}) == count
    assert sorted(segment.index for segment in segments) == list(range(count))
    backing = segments[0].memory.obj
    assert isinstance(backing, bytearray)
    assert len(backing) == count * size
    for segment in segments:
        assert segment.size == size
        assert len(segment.memory) == size
        assert segment.memory.nbytes == size
        assert not segment.memory.readonly
        assert segment.memory.obj is backing
    # Each segment is its own slice: writing one is visible at its place in the
    # allocation and nowhere else.
    for segment in segments:
        segment.memory[:] = bytes([segment.index % 251 + 1]) * size
    for segment in segments:
        start = segment.index * size
        assert backing[start : start + size] == bytes([segment.index % 251 + 1]) * size


def test_zero_segments_is_a_valid_empty_pool() -> None:
    network = NetworkBufferPool(0, 64)
    assert network.available_segments == 0
    assert not network.is_available()
    assert network.request_pooled_segment() is None


@pytest.mark.parametrize(("count", "size"), [(-1, 64), (4, 0), (4, -8)])
def test_invalid_shape_is_rejected(count: int, size: int) -> None:
    with pytest.raises(BufferPoolError, match="invalid pool shape"):
        NetworkBufferPool(count, size)


# -- availability of the global pool ------------------------------------------------


def test_availability_future_completes_when_a_segment_comes_back() -> None:
    network = NetworkBufferPool(3, 32)
    taken = _take_all(network)
    assert not network.is_available()
    future = network.get_available_future()
    assert not future.done()
    woken: list[None] = []
    future.add_done_callback(lambda _: woken.append(None))
    network.recycle(taken.pop())
    assert future.done()
    assert woken == [None]
    assert network.is_available()
    # Taking the only free segment makes the pool unavailable again, with a new future.
    taken.append(_take_all(network)[0])
    assert not network.is_available()
    assert network.get_available_future() is not future
    for segment in taken:
        network.recycle(segment)
    assert network.available_segments == 3


def test_recycle_wakes_a_waiting_thread() -> None:
    network = NetworkBufferPool(1, 32)
    [segment] = _take_all(network)
    future = network.get_available_future()
    recycler = threading.Thread(target=network.recycle, args=(segment,))
    recycler.start()
    assert future.result(timeout=JOIN_TIMEOUT) is None
    recycler.join(JOIN_TIMEOUT)
    assert not recycler.is_alive()
    assert network.available_segments == 1


# -- create_buffer_pool and Flink's error --------------------------------------------


def test_insufficient_buffers_has_flinks_exact_message() -> None:
    network = NetworkBufferPool(10, 32768)
    network.create_buffer_pool(4, 4)
    with pytest.raises(InsufficientBuffersError) as info:
        network.create_buffer_pool(7, 9)
    assert str(info.value) == _flink_message(7, 6, 10, 32768)
    assert str(info.value) == (
        "Insufficient number of network buffers: required 7, but only 6 available. The total "
        "number of network buffers is currently set to 10 of 32768 bytes each. You can "
        "increase this number by setting the configuration keys "
        "'taskmanager.memory.network.fraction', 'taskmanager.memory.network.min', and "
        "'taskmanager.memory.network.max'."
    )
    error = info.value
    assert (error.required, error.available, error.total, error.segment_size) == (7, 6, 10, 32768)
    assert isinstance(error, BufferPoolError)
    assert isinstance(error, PenstockError)
    # A failed request leaves nothing behind.
    assert network.required_segments == 4
    assert network.number_of_pools == 1


def test_insufficient_buffers_pickles() -> None:
    network = NetworkBufferPool(2, 64)
    with pytest.raises(InsufficientBuffersError) as info:
        network.create_buffer_pool(3, 3)
    copy = pickle.loads(pickle.dumps(info.value))
    assert isinstance(copy, InsufficientBuffersError)
    assert str(copy) == str(info.value) == _flink_message(3, 2, 2, 64)
    assert copy.required == 3


@given(
    total=st.integers(0, 40),
    minimums=st.lists(st.integers(0, 15), min_size=1, max_size=8),
)
def test_required_total_never_exceeds_the_segments(total: int, minimums: list[int]) -> None:
    network = NetworkBufferPool(total, 16)
    required = 0
    for minimum in minimums:
        if required + minimum > total:
            with pytest.raises(InsufficientBuffersError) as info:
                network.create_buffer_pool(minimum, minimum + 3)
            assert str(info.value) == _flink_message(minimum, total - required, total, 16)
        else:
            network.create_buffer_pool(minimum, minimum + 3)
            required += minimum
        assert network.required_segments == required


def test_invalid_local_pool_sizes_are_rejected() -> None:
    network = NetworkBufferPool(4, 16)
    with pytest.raises(BufferPoolError, match="invalid local pool size"):
        network.create_buffer_pool(3, 2)
    with pytest.raises(BufferPoolError, match="invalid local pool size"):
        network.create_buffer_pool(-1, 2)
    assert network.number_of_pools == 0
    assert network.required_segments == 0


def test_a_new_pool_is_available_with_a_segment_in_hand() -> None:
    network = NetworkBufferPool(4, 16)
    pool = network.create_buffer_pool(1, 4)
    assert isinstance(pool, LocalBufferPool)
    assert pool.is_available()
    assert pool.available_segments == 1
    assert pool.requested_segments == 1
    assert network.available_segments == 3


# -- redistribution -----------------------------------------------------------------


def _expected_shares(total: int, specs: list[tuple[int, int]]) -> tuple[int, list[Fraction]]:
    """What is distributed and each pool's exact proportional share of it."""
    excess = total - sum(low for low, _ in specs)
    capacities = [min(excess, high - low) for low, high in specs]
    capacity = sum(capacities)
    distributed = min(excess, capacity)
    if capacity == 0:
        return 0, [Fraction(0)] * len(specs)
    return distributed, [Fraction(c * distributed, capacity) for c in capacities]


def _check_distribution(
    network: NetworkBufferPool, pools: list[LocalBufferPool], reserved: int = 0
) -> None:
    specs = [(pool.min_size, pool.max_size) for pool in pools]
    distributed, exact = _expected_shares(network.total_segments - reserved, specs)
    sizes = [pool.num_buffers for pool in pools]
    for pool, size, share in zip(pools, sizes, exact, strict=True):
        assert pool.min_size <= size <= pool.max_size
        assert abs((size - pool.min_size) - share) < 1
    assert sum(sizes) - sum(low for low, _ in specs) == distributed
    assert sum(sizes) + reserved <= network.total_segments


@given(
    total=st.integers(1, 60),
    specs=st.lists(
        st.tuples(st.integers(0, 10), st.integers(0, 30)).map(lambda t: (t[0], t[0] + t[1])),
        min_size=1,
        max_size=6,
    ),
)
def test_excess_is_shared_in_proportion_to_growth_room(
    total: int, specs: list[tuple[int, int]]
) -> None:
    network = NetworkBufferPool(total, 8)
    pools: list[LocalBufferPool] = []
    for low, high in specs:
        try:
            pools.append(network.create_buffer_pool(low, high))
        except InsufficientBuffersError:
            continue
        _check_distribution(network, pools)
    # Every pool fetched (at most) one segment eagerly, the global pool lost nothing.
    assert network.available_segments + sum(p.requested_segments for p in pools) == total
    for pool in list(pools):
        pool.destroy()
        pools.remove(pool)
        if pools:
            _check_distribution(network, pools)
    assert network.available_segments == total
    assert network.required_segments == 0
    assert network.number_of_pools == 0


def test_redistribution_rounds_as_flink_does() -> None:
    # Flink's redistributeBuffers rounds each cumulative share down: an excess of 5
    # split 8:8 gives 2 to the first pool and 3 to the last.
    network = NetworkBufferPool(7, 16)
    first = network.create_buffer_pool(1, 9)
    second = network.create_buffer_pool(1, 9)
    assert (first.num_buffers, second.num_buffers) == (3, 4)
    first.destroy()
    second.destroy()


def test_redistribution_example() -> None:
    network = NetworkBufferPool(12, 16)
    first = network.create_buffer_pool(0, 12)  # may grow by 12
    assert first.num_buffers == 12
    second = network.create_buffer_pool(0, 6)  # may grow by 6: excess 12 split 12:6
    assert (first.num_buffers, second.num_buffers) == (8, 4)
    third = network.create_buffer_pool(0, 6)  # split 12:6:6
    assert (first.num_buffers, second.num_buffers, third.num_buffers) == (6, 3, 3)
    fixed = network.create_buffer_pool(6, 6)  # cannot grow; excess now 6, split 6:6:6
    assert fixed.num_buffers == 6
    assert (first.num_buffers, second.num_buffers, third.num_buffers) == (2, 2, 2)
    fixed.destroy()
    assert (first.num_buffers, second.num_buffers, third.num_buffers) == (6, 3, 3)
    for pool in (first, second, third):
        pool.destroy()
    assert network.available_segments == 12


def test_a_new_pool_shrinks_its_neighbour_and_frees_its_segments() -> None:
    network = NetworkBufferPool(10, 16)
    first = network.create_buffer_pool(1, 10)
    assert first.num_buffers == 10
    segments = [first.request_memory_segment() for _ in range(4)]
    assert all(segment is not None for segment in segments)
    assert first.requested_segments == 5  # four in use, one in hand
    second = network.create_buffer_pool(7, 7)
    assert first.num_buffers == 3
    assert second.num_buffers == 7
    # The shrunken pool cannot give its in-use segments back, but keeps no free one.
    assert first.available_segments == 0
    assert first.requested_segments == 4
    assert not first.is_available()
    # Its in-use segments go back to the global pool (not to its free queue) on recycle.
    for segment in segments:
        assert segment is not None
        first.recycle(segment)
    assert first.requested_segments <= first.num_buffers
    second.destroy()
    first.destroy()
    assert network.available_segments == 10


def test_unpooled_request_shrinks_pools() -> None:
    network = NetworkBufferPool(12, 16)
    pool = network.create_buffer_pool(2, 12)
    assert pool.num_buffers == 12
    exclusive = network.request_unpooled_segments(4)
    assert len(exclusive) == 4
    assert network.required_segments == 6
    assert pool.num_buffers == 8
    _check_distribution(network, [pool], reserved=4)
    network.recycle_unpooled_segments(exclusive)
    assert network.required_segments == 2
    assert pool.num_buffers == 12
    pool.destroy()
    assert network.available_segments == 12


# -- unpooled (exclusive) segments --------------------------------------------------


def test_unpooled_segments_are_distinct_and_counted() -> None:
    network = NetworkBufferPool(6, 16)
    first = network.request_unpooled_segments(2)
    second = network.request_unpooled_segments(3)
    indices = [segment.index for segment in first + second]
    assert len(set(indices)) == 5
    assert network.available_segments == 1
    assert network.required_segments == 5
    assert network.request_unpooled_segments(0) == []
    network.recycle_unpooled_segments(first)
    assert network.available_segments == 3
    assert network.required_segments == 3
    network.recycle_unpooled_segments(second)
    assert network.available_segments == 6
    assert network.required_segments == 0


def test_unpooled_request_beyond_the_total_fails_with_flinks_message() -> None:
    network = NetworkBufferPool(5, 64)
    network.create_buffer_pool(2, 2)
    with pytest.raises(InsufficientBuffersError) as info:
        network.request_unpooled_segments(4)
    assert str(info.value) == _flink_message(4, 3, 5, 64)
    assert network.required_segments == 2
    assert network.available_segments == 4  # the pool holds one segment in hand


def test_unpooled_request_waits_for_segments_a_pool_gives_back(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    network = NetworkBufferPool(4, 16)
    pool = network.create_buffer_pool(1, 4)
    held = [pool.request_buffer_builder() for _ in range(4)]
    assert all(builder is not None for builder in held)
    assert network.available_segments == 0
    result: list[list[MemorySegment]] = []
    errors: list[BaseException] = []
    waiting = threading.Event()
    real_future = network.get_available_future

    def future_of_a_waiter() -> Future[None]:
        waiting.set()  # the request found no free segment and is about to wait
        return real_future()

    monkeypatch.setattr(network, "get_available_future", future_of_a_waiter)

    def request() -> None:
        try:
            result.append(network.request_unpooled_segments(2))
        except BaseException as exc:  # checked in the test thread
            errors.append(exc)

    requester = threading.Thread(target=request)
    requester.start()
    assert waiting.wait(JOIN_TIMEOUT)
    assert result == []
    assert pool.num_buffers == 2  # already shrunk by the reservation
    # The pool's in-use segments above its new size go back to the global pool as they
    # are recycled, and the exclusive request takes them.
    for builder in held:
        assert builder is not None
        builder.close()
    requester.join(JOIN_TIMEOUT)
    assert not requester.is_alive()
    assert errors == []
    [segments] = result
    assert len(segments) == 2
    assert pool.num_buffers == 2  # 4 segments - 2 exclusive; min 1 + the excess 1
    assert pool.requested_segments <= 2
    network.recycle_unpooled_segments(segments)
    pool.destroy()
    assert network.available_segments == 4


def test_unpooled_request_times_out_and_releases_its_reservation() -> None:
    network = NetworkBufferPool(3, 16, request_timeout_ms=20)
    pool = network.create_buffer_pool(1, 3)
    held = [pool.request_buffer_builder() for _ in range(3)]
    with pytest.raises(
        BufferPoolError, match="Timeout triggered when requesting exclusive"
    ) as info:
        network.request_unpooled_segments(2)
    assert not isinstance(info.value, InsufficientBuffersError)
    assert "buffers-request-timeout" in str(info.value)
    assert "currently set to 3 of 16 bytes each" in str(info.value)
    assert network.required_segments == 1
    assert pool.num_buffers == 3
    for builder in held:
        assert builder is not None
        builder.close()
    pool.destroy()
    assert network.available_segments == 3


def test_negative_unpooled_count_is_rejected() -> None:
    network = NetworkBufferPool(4, 16)
    with pytest.raises(BufferPoolError):
        network.request_unpooled_segments(-1)
    assert network.required_segments == 0


# -- statistics ---------------------------------------------------------------------


def test_statistics() -> None:
    network = NetworkBufferPool(10, 1024)
    pool = network.create_buffer_pool(3, 5)
    exclusive = network.request_unpooled_segments(2)
    stats = network.statistics()
    assert isinstance(stats, NetworkBufferPoolStatistics)
    # The pool holds one segment in hand; two are exclusive.
    assert stats == NetworkBufferPoolStatistics(
        total_segments=10, available_segments=7, required_segments=5, segment_size=1024
    )
    assert stats.used_segments == 3
    assert stats.total_memory == 10 * 1024
    assert stats.available_memory == 7 * 1024
    assert stats.used_memory == 3 * 1024
    with pytest.raises(AttributeError):
        stats.total_segments = 3  # type: ignore[misc]
    network.recycle_unpooled_segments(exclusive)
    pool.destroy()
    assert network.statistics().used_segments == 0


# -- destroy and invariant 5 --------------------------------------------------------


def test_destroy_buffer_pool_gives_its_share_to_the_others() -> None:
    network = NetworkBufferPool(10, 16)
    first = network.create_buffer_pool(2, 10)
    second = network.create_buffer_pool(2, 10)
    assert first.num_buffers + second.num_buffers == 10
    second.destroy()
    assert network.number_of_pools == 1
    assert network.required_segments == 2
    assert first.num_buffers == 10
    # Destroying twice, or telling the global pool twice, changes nothing.
    second.destroy()
    network.destroy_buffer_pool(second)
    assert network.required_segments == 2
    first.destroy()
    assert network.available_segments == 10


def test_destroy_destroys_every_local_pool() -> None:
    network = NetworkBufferPool(8, 16)
    pools = [network.create_buffer_pool(1, 4) for _ in range(3)]
    network.destroy()
    assert network.is_destroyed
    assert all(pool.is_destroyed for pool in pools)
    assert network.number_of_pools == 0
    assert network.available_segments == 8
    with pytest.raises(PoolDestroyedError):
        network.create_buffer_pool(1, 1)
    with pytest.raises(PoolDestroyedError):
        network.request_pooled_segment()
    with pytest.raises(PoolDestroyedError):
        pools[0].request_memory_segment()


def test_segments_in_use_return_after_destroy() -> None:
    network = NetworkBufferPool(6, 16)
    pool = network.create_buffer_pool(2, 6, num_subpartitions=2)
    builders = [pool.request_buffer_builder(i % 2) for i in range(4)]
    exclusive = network.request_unpooled_segments(1)
    network.destroy()
    assert network.available_segments == 1
    for builder in builders:
        assert builder is not None
        builder.close()
    network.recycle_unpooled_segments(exclusive)
    assert network.available_segments == network.total_segments == 6
    assert network.statistics().used_segments == 0


@given(data=st.data())
def test_everything_returns_after_use(data: st.DataObject) -> None:
    """Invariant 5: after all is recycled and every pool destroyed, all segments are back."""
    total = data.draw(st.integers(4, 30), label="total")
    network = NetworkBufferPool(total, 8)
    pools: list[LocalBufferPool] = []
    for _ in range(data.draw(st.integers(1, 4), label="pools")):
        low = data.draw(st.integers(0, 3))
        with contextlib.suppress(InsufficientBuffersError):
            pools.append(network.create_buffer_pool(low, low + data.draw(st.integers(0, 6))))
    exclusive: list[list[MemorySegment]] = []
    count = data.draw(st.integers(0, 3), label="exclusive")
    if network.required_segments + count <= total and count <= network.available_segments:
        exclusive.append(network.request_unpooled_segments(count))
    held = []
    for pool in pools:
        for _ in range(data.draw(st.integers(0, 8))):
            builder = pool.request_buffer_builder()
            if builder is not None:
                held.append(builder)
    in_use = sum(len(group) for group in exclusive)
    assert network.available_segments + sum(p.requested_segments for p in pools) + in_use == total
    if data.draw(st.booleans(), label="destroy first"):
        network.destroy()
    for builder in data.draw(st.permutations(held), label="recycle order"):
        builder.close()
    for group in exclusive:
        network.recycle_unpooled_segments(group)
    network.destroy()
    assert network.available_segments == total
    assert network.required_segments == 0


def test_destroy_wakes_a_waiting_exclusive_request(monkeypatch: pytest.MonkeyPatch) -> None:
    network = NetworkBufferPool(2, 16, request_timeout_ms=600_000)
    pool = network.create_buffer_pool(1, 2)
    held = [pool.request_buffer_builder() for _ in range(2)]
    waiting = threading.Event()
    real_future = network.get_available_future

    def future_of_a_waiter() -> Future[None]:
        waiting.set()
        return real_future()

    monkeypatch.setattr(network, "get_available_future", future_of_a_waiter)
    errors: list[BaseException] = []

    def request() -> None:
        try:
            network.request_unpooled_segments(1)
        except BaseException as exc:  # checked in the test thread
            errors.append(exc)

    requester = threading.Thread(target=request, daemon=True)
    requester.start()
    assert waiting.wait(JOIN_TIMEOUT)
    network.destroy()
    woken = real_future().done()
    if not woken:
        # Release the waiter before failing: a recycled segment wakes it.
        for builder in held:
            assert builder is not None
            builder.close()
    requester.join(JOIN_TIMEOUT)
    assert not requester.is_alive()
    assert woken, "a waiting exclusive request must wake when the pool is destroyed"
    assert len(errors) == 1
    assert isinstance(errors[0], PoolDestroyedError)
    assert network.required_segments == 0
