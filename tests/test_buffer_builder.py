"""BufferBuilder and BufferConsumer: writing, reading while writing, sharing, recycling."""

from __future__ import annotations

import queue
import random
import sys
import threading

import pytest
from hypothesis import given
from hypothesis import strategies as st

from penstock.buffer.buffer import Buffer, DataType
from penstock.buffer.builder import BufferBuilder, BufferConsumer
from penstock.errors import IllegalStateError, PenstockError
from penstock.memory.network_pool import NetworkBufferPool
from penstock.memory.segment import MemorySegment

JOIN_TIMEOUT = 20.0


class CountingRecycler:
    """Remembers every segment it takes back."""

    def __init__(self) -> None:
        self.recycled: list[MemorySegment] = []
        self._lock = threading.Lock()

    def recycle(self, segment: MemorySegment) -> None:
        with self._lock:
            self.recycled.append(segment)


def _builder(size: int = 16, recycler: CountingRecycler | None = None) -> BufferBuilder:
    return BufferBuilder(MemorySegment.allocate_unpooled(size), recycler or CountingRecycler())


def _read(buffer: Buffer) -> bytes:
    data = bytes(buffer.memory)
    buffer.recycle()
    return data


# -- writing ------------------------------------------------------------------------


def test_a_new_builder_is_empty_and_open() -> None:
    builder = _builder(16)
    assert builder.position == 0
    assert builder.capacity == 16
    assert builder.remaining == 16
    assert not builder.finished
    assert not builder.is_full()
    assert builder.data_type is DataType.DATA_BUFFER


def test_append_copies_and_commits() -> None:
    builder = _builder(16)
    assert builder.append(b"hello") == 5
    assert builder.position == 5
    assert builder.remaining == 11
    assert bytes(builder.segment.memory[:5]) == b"hello"
    assert builder.append(bytearray(b", ")) == 2
    assert builder.append(memoryview(b"world")) == 5
    assert bytes(builder.segment.memory[:12]) == b"hello, world"


def test_append_spanning_returns_the_partial_count() -> None:
    builder = _builder(8)
    record = b"0123456789abc"
    copied = builder.append(record)
    assert copied == 8
    assert builder.is_full()
    assert builder.remaining == 0
    assert builder.append(record, copied) == 0
    # The rest goes into the next buffer, continuing from the returned count.
    follower = _builder(8)
    assert follower.append(record, copied) == 5
    assert bytes(builder.segment.memory) + bytes(follower.segment.memory[:5]) == record


@given(
    record=st.binary(max_size=300),
    size=st.integers(1, 64),
)
def test_a_record_spans_as_many_buffers_as_it_needs(record: bytes, size: int) -> None:
    pieces: list[bytes] = []
    start = 0
    while start < len(record):
        builder = _builder(size)
        copied = builder.append(record, start)
        assert copied == min(size, len(record) - start)
        start += copied
        pieces.append(bytes(builder.segment.memory[: builder.finish()]))
    assert b"".join(pieces) == record
    assert len(pieces) == -(-len(record) // size)


def test_append_of_nothing_copies_nothing() -> None:
    builder = _builder(4)
    assert builder.append(b"") == 0
    assert builder.append(b"ab", 2) == 0
    assert builder.position == 0


def test_append_with_start_past_the_data_is_not_negative() -> None:
    builder = _builder(8)
    try:
        copied = builder.append(b"abc", 5)
    except PenstockError:
        return
    assert copied == 0
    assert builder.position == 0


def test_append_after_finish_raises() -> None:
    builder = _builder(8)
    builder.append(b"abc")
    assert builder.finish() == 3
    assert builder.finished
    with pytest.raises(IllegalStateError, match="finished"):
        builder.append(b"d")
    assert builder.position == 3
    assert builder.finish() == 3  # finishing again is harmless


def test_commit_publishes_bytes_written_straight_into_memory() -> None:
    builder = _builder(16)
    consumer = builder.create_buffer_consumer()
    builder.memory[0:4] = b"abcd"
    assert not consumer.is_data_available()  # written, not yet committed
    assert _read(consumer.build()) == b""
    builder.commit(4)
    assert consumer.is_data_available()
    assert consumer.written_bytes == 4
    assert _read(consumer.build()) == b"abcd"
    builder.memory[4:6] = b"ef"
    builder.commit(6)
    assert _read(consumer.build()) == b"ef"


def test_trim_lowers_the_capacity() -> None:
    builder = _builder(16)
    builder.trim(6)
    assert builder.capacity == 6
    assert builder.append(b"0123456789") == 6
    assert builder.is_full()


def test_trim_never_goes_below_what_is_written_nor_above_the_segment() -> None:
    builder = _builder(16)
    builder.append(b"0123456789")
    builder.trim(4)
    assert builder.capacity == 10
    assert builder.is_full()
    builder.trim(1000)
    assert builder.capacity == 16
    assert builder.append(b"abcdefghij") == 6


@given(size=st.integers(1, 64), written=st.integers(0, 64), target=st.integers(-5, 200))
def test_trim_matches_flink(size: int, written: int, target: int) -> None:
    builder = _builder(size)
    builder.append(bytes(min(written, size)))
    builder.trim(target)
    assert builder.capacity == min(max(target, builder.position), size)


# -- reading ------------------------------------------------------------------------


def test_one_consumer_only() -> None:
    builder = _builder()
    consumer = builder.create_buffer_consumer()
    with pytest.raises(IllegalStateError, match="only one BufferConsumer"):
        builder.create_buffer_consumer()
    with pytest.raises(IllegalStateError):
        builder.create_buffer_consumer(from_beginning=False)
    consumer.close()
    builder.close()


def test_build_returns_only_new_bytes() -> None:
    builder = _builder(32)
    consumer = builder.create_buffer_consumer()
    assert not consumer.is_data_available()
    empty = consumer.build()
    assert empty.size == 0
    assert not consumer.finished_when_built
    empty.recycle()
    builder.append(b"abc")
    assert consumer.is_data_available()
    first = consumer.build()
    assert (first.offset, first.size, bytes(first.memory)) == (0, 3, b"abc")
    assert not consumer.is_data_available()
    builder.append(b"defg")
    second = consumer.build()
    assert (second.offset, second.size, bytes(second.memory)) == (3, 4, b"defg")
    # Slices of one segment: the first is unaffected by later writes.
    assert bytes(first.memory) == b"abc"
    assert first.segment is second.segment is builder.segment
    assert consumer.reader_position == 7
    first.recycle()
    second.recycle()


def test_built_buffers_are_read_only() -> None:
    builder = _builder(8)
    consumer = builder.create_buffer_consumer()
    builder.append(b"abcd")
    buffer = consumer.build()
    assert buffer.memory.readonly
    with pytest.raises(TypeError):
        buffer.memory[0] = 1
    buffer.recycle()


def test_finished_when_built() -> None:
    builder = _builder(8)
    consumer = builder.create_buffer_consumer()
    builder.append(b"ab")
    _read(consumer.build())
    assert not consumer.finished_when_built
    assert not consumer.is_finished()
    builder.append(b"cd")
    builder.finish()
    assert consumer.is_finished()
    assert not consumer.finished_when_built  # not built since the finish
    assert _read(consumer.build()) == b"cd"
    assert consumer.finished_when_built
    assert _read(consumer.build()) == b""
    assert consumer.finished_when_built


def test_a_consumer_created_late_reads_from_where_asked() -> None:
    builder = _builder(8)
    builder.append(b"head")
    consumer = builder.create_buffer_consumer(from_beginning=False)
    assert consumer.reader_position == 4
    assert not consumer.is_data_available()
    builder.append(b"tail")
    assert _read(consumer.build()) == b"tail"

    other = _builder(8)
    other.append(b"head")
    from_start = other.create_buffer_consumer()
    assert _read(from_start.build()) == b"head"


def test_build_after_close_raises() -> None:
    builder = _builder()
    consumer = builder.create_buffer_consumer()
    consumer.close()
    assert consumer.is_closed
    with pytest.raises(IllegalStateError, match="closed"):
        consumer.build()
    consumer.close()  # idempotent
    builder.close()


def test_data_type_travels_to_consumer_and_buffers() -> None:
    builder = BufferBuilder(
        MemorySegment.allocate_unpooled(8), CountingRecycler(), DataType.EVENT_BUFFER
    )
    consumer = builder.create_buffer_consumer()
    assert consumer.data_type is DataType.EVENT_BUFFER
    assert not consumer.is_buffer
    buffer = consumer.build()
    assert buffer.data_type is DataType.EVENT_BUFFER
    assert not buffer.is_buffer
    buffer.recycle()
    data = _builder().create_buffer_consumer()
    assert data.is_buffer


def test_copy_reads_independently_for_broadcast() -> None:
    builder = _builder(32)
    consumer = builder.create_buffer_consumer()
    builder.append(b"shared-")
    copies = [consumer.copy() for _ in range(3)]
    assert _read(consumer.build()) == b"shared-"
    builder.append(b"tail")
    builder.finish()
    for copy in copies:
        assert copy.reader_position == 0
        assert _read(copy.build()) == b"shared-tail"
        assert copy.finished_when_built
    assert _read(consumer.build()) == b"tail"
    # A copy starts where its original is now.
    late = consumer.copy()
    assert late.reader_position == 11
    assert _read(late.build()) == b""


def test_reprs() -> None:
    builder = _builder(8)
    consumer = builder.create_buffer_consumer()
    builder.append(b"ab")
    assert repr(builder) == "BufferBuilder(open, 2/8)"
    assert repr(consumer) == "BufferConsumer(DATA_BUFFER, open, read 0/2)"
    builder.finish()
    assert "finished" in repr(builder)
    assert "finished" in repr(consumer)


# -- recycling ----------------------------------------------------------------------


def test_segment_is_recycled_after_builder_consumer_and_slices() -> None:
    recycler = CountingRecycler()
    builder = _builder(8, recycler)
    consumer = builder.create_buffer_consumer()
    builder.append(b"abc")
    buffer = consumer.build()
    builder.finish()
    builder.close()
    consumer.close()
    assert recycler.recycled == []
    buffer.recycle()
    assert recycler.recycled == [builder.segment]
    assert buffer.is_recycled


def test_a_builder_without_consumer_recycles_on_close() -> None:
    recycler = CountingRecycler()
    builder = _builder(8, recycler)
    builder.close()
    builder.close()  # idempotent: no second recycle
    assert recycler.recycled == [builder.segment]
    with pytest.raises(IllegalStateError):
        builder.create_buffer_consumer()  # nothing may read a recycled segment


def test_double_recycle_of_a_slice_raises() -> None:
    recycler = CountingRecycler()
    builder = _builder(8, recycler)
    consumer = builder.create_buffer_consumer()
    buffer = consumer.build()
    builder.close()
    consumer.close()
    buffer.recycle()
    assert len(recycler.recycled) == 1
    with pytest.raises(IllegalStateError):
        buffer.recycle()
    assert len(recycler.recycled) == 1


def test_double_recycle_of_a_slice_does_not_free_a_segment_still_read() -> None:
    recycler = CountingRecycler()
    builder = _builder(8, recycler)
    consumer = builder.create_buffer_consumer()
    builder.append(b"abcd")
    first = consumer.build()
    builder.append(b"efgh")
    second = consumer.build()
    builder.close()
    consumer.close()
    first.recycle()
    with pytest.raises(IllegalStateError):
        first.recycle()
    assert recycler.recycled == [], "the segment went back while `second` is unread"
    assert bytes(second.memory) == b"efgh"
    second.recycle()
    assert recycler.recycled == [builder.segment]


@given(data=st.data())
def test_recycled_exactly_when_everything_is_released(data: st.DataObject) -> None:
    """Builder closed + every consumer closed + every slice recycled, in any order."""
    recycler = CountingRecycler()
    builder = _builder(64, recycler)
    consumers: list[BufferConsumer] = [builder.create_buffer_consumer()]
    buffers: list[Buffer] = []
    builder_open = True
    steps = 0
    while builder_open or any(not c.is_closed for c in consumers) or buffers:
        assert recycler.recycled == []
        steps += 1
        # Releases first, so that the simplest run is short; more work only early on.
        choices: list[str] = []
        open_consumers = [c for c in consumers if not c.is_closed]
        if builder_open:
            choices.append("close builder")
        if open_consumers:
            choices.append("close consumer")
        if buffers:
            choices.append("recycle slice")
        if steps < 30:
            if builder_open:
                choices.append("append")
            if open_consumers:
                choices += ["build", "copy"]
        choice = data.draw(st.sampled_from(choices), label="step")
        if choice == "append":
            if not builder.finished:
                builder.append(b"x" * data.draw(st.integers(0, 8)))
        elif choice == "close builder":
            builder.finish()
            builder.close()
            builder_open = False
        elif choice == "build":
            buffers.append(data.draw(st.sampled_from(open_consumers)).build())
        elif choice == "copy":
            consumers.append(data.draw(st.sampled_from(open_consumers)).copy())
        elif choice == "close consumer":
            data.draw(st.sampled_from(open_consumers)).close()
        else:
            buffer = data.draw(st.sampled_from(buffers))
            buffers.remove(buffer)
            buffer.recycle()
    assert recycler.recycled == [builder.segment]


def test_pooled_builder_returns_its_segment_to_the_pool() -> None:
    network = NetworkBufferPool(2, 32)
    pool = network.create_buffer_pool(2, 2, num_subpartitions=1)
    builder = pool.request_buffer_builder(0)
    assert builder is not None
    consumer = builder.create_buffer_consumer()
    builder.append(b"record")
    builder.finish()
    builder.close()
    buffer = consumer.build()
    consumer.close()
    assert pool.buffers_in_use_for(0) == 1
    assert bytes(buffer.memory) == b"record"
    buffer.recycle()
    assert pool.buffers_in_use_for(0) == 0
    assert pool.used_buffers == 0
    pool.destroy()
    assert network.available_segments == 2


# -- events -------------------------------------------------------------------------


def test_event_builders_need_no_pool() -> None:
    payload = b"\x00\x00\x00\x01event"
    builder = BufferBuilder.for_event(payload, DataType.EVENT_BUFFER)
    assert builder.finished
    assert builder.position == len(payload)
    assert builder.segment.size == len(payload)
    assert builder.segment.index == -1  # not a pool segment
    consumer = builder.create_buffer_consumer()
    copy = consumer.copy()
    builder.close()
    built: list[Buffer] = []
    for reader in (consumer, copy):
        assert reader.data_type is DataType.EVENT_BUFFER
        assert not reader.is_buffer
        buffer = reader.build()
        assert reader.finished_when_built
        assert bytes(buffer.memory) == payload
        assert buffer.data_type is DataType.EVENT_BUFFER
        reader.close()
        buffer.recycle()
        built.append(buffer)
    # The last reference dropped: the memory is simply let go, nothing to recycle into.
    assert all(buffer.is_recycled for buffer in built)
    with pytest.raises(IllegalStateError):
        builder.append(b"more")


def test_empty_event() -> None:
    builder = BufferBuilder.for_event(b"", DataType.END_OF_PARTITION)
    consumer = builder.create_buffer_consumer()
    buffer = consumer.build()
    assert buffer.size == 0
    assert consumer.finished_when_built
    assert buffer.data_type.is_event
    buffer.recycle()
    consumer.close()
    builder.close()


# -- a writer thread and a reader thread --------------------------------------------


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_concurrent_append_and_build_never_lose_or_duplicate_a_byte(seed: int) -> None:
    rng = random.Random(seed)
    source = bytes(rng.getrandbits(8) for _ in range(60_000))
    chunk_sizes = [rng.randint(1, 700) for _ in range(400)]
    segment_size = 4096
    recycler = CountingRecycler()
    handoff: queue.Queue[BufferConsumer | None] = queue.Queue(maxsize=4)
    received = bytearray()
    builds_per_buffer: list[int] = []
    errors: list[BaseException] = []
    builders_made: list[BufferBuilder] = []
    start = threading.Barrier(2)

    def producer() -> None:
        try:
            start.wait(JOIN_TIMEOUT)
            offset = 0
            chunks = iter(chunk_sizes * 10)
            while offset < len(source):
                builder = BufferBuilder(MemorySegment.allocate_unpooled(segment_size), recycler)
                builders_made.append(builder)
                # Queued empty, before any data, as a subpartition does.
                handoff.put(builder.create_buffer_consumer(), timeout=JOIN_TIMEOUT)
                while offset < len(source) and not builder.is_full():
                    end = min(offset + next(chunks), len(source))
                    offset += builder.append(source[offset:end])
                builder.finish()
                builder.close()
            handoff.put(None, timeout=JOIN_TIMEOUT)
        except BaseException as exc:  # checked in the test thread
            errors.append(exc)

    def consumer() -> None:
        try:
            start.wait(JOIN_TIMEOUT)
            while (reader := handoff.get(timeout=JOIN_TIMEOUT)) is not None:
                builds = 0
                while True:
                    buffer = reader.build()
                    builds += 1
                    received.extend(buffer.memory)
                    buffer.recycle()
                    if reader.finished_when_built:
                        break
                builds_per_buffer.append(builds)
                reader.close()
        except BaseException as exc:  # checked in the test thread
            errors.append(exc)

    previous = sys.getswitchinterval()
    sys.setswitchinterval(1e-5)  # interleave the two threads as often as possible
    try:
        threads = [threading.Thread(target=producer), threading.Thread(target=consumer)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(JOIN_TIMEOUT)
    finally:
        sys.setswitchinterval(previous)
    assert all(not thread.is_alive() for thread in threads)
    assert errors == []
    assert bytes(received) == source
    assert len(builds_per_buffer) == len(builders_made) == -(-len(source) // segment_size)
    # Every segment came back exactly once, after its builder, reader and slices.
    assert sorted(map(id, recycler.recycled)) == sorted(id(b.segment) for b in builders_made)
