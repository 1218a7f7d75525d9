"""ResultPartition: spanning records, broadcast, events, lifecycle, backpressure."""

from __future__ import annotations

import struct
import threading

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from penstock.buffer.buffer import DataType
from penstock.errors import (
    IllegalStateError,
    InsufficientBuffersError,
    PartitionReleasedError,
    PoolDestroyedError,
    ProducerFailedError,
)
from penstock.events import (
    AlignmentType,
    CancelCheckpointMarker,
    CheckpointBarrier,
    CheckpointOptions,
    EndOfPartitionEvent,
)
from penstock.ids import ResultPartitionID
from penstock.memory.network_pool import NetworkBufferPool
from penstock.partition.result_partition import ResultPartition, output_pool_size
from penstock.partition.view import PipelinedSubpartitionView
from penstock.serialization.event_serializer import deserialize_event

JOIN_TIMEOUT = 10.0
_LENGTH = struct.Struct(">i")


class RecordingListener:
    """A BufferAvailabilityListener that counts notifications."""

    def __init__(self) -> None:
        self.count = 0

    def notify_data_available(self) -> None:
        self.count += 1


class RecordingTimer:
    """A BackPressureTimer whose start wakes the test (the producer is about to block)."""

    def __init__(self) -> None:
        self.started = threading.Event()
        self.starts = 0
        self.stops = 0

    def start(self) -> None:
        self.starts += 1
        self.started.set()

    def stop(self) -> None:
        self.stops += 1


def frame(payload: bytes) -> bytes:
    return _LENGTH.pack(len(payload)) + payload


def drain(view: PipelinedSubpartitionView) -> list[tuple[DataType, bytes]]:
    """Everything readable now, as (type, bytes), recycling each buffer."""
    out: list[tuple[DataType, bytes]] = []
    while (result := view.get_next_buffer()) is not None:
        out.append((result.buffer.data_type, bytes(result.buffer.memory)))
        result.buffer.recycle()
    return out


def data_of(items: list[tuple[DataType, bytes]]) -> bytes:
    return b"".join(data for data_type, data in items if data_type is DataType.DATA_BUFFER)


def make(
    num_subpartitions: int = 2,
    segments: int = 64,
    segment_size: int = 32,
) -> tuple[NetworkBufferPool, ResultPartition, list[PipelinedSubpartitionView]]:
    network = NetworkBufferPool(segments, segment_size)
    partition = ResultPartition.create(
        ResultPartitionID.generate(), num_subpartitions, network, owner="producer (1/1)"
    )
    views = [
        partition.create_subpartition_view(i, RecordingListener()) for i in range(num_subpartitions)
    ]
    return network, partition, views


def release_and_check(network: NetworkBufferPool, partition: ResultPartition) -> None:
    partition.release()
    partition.close()
    assert network.available_segments == network.total_segments
    assert network.required_segments == 0


# -- sizes ---------------------------------------------------------------------------


def test_output_pool_size_is_flinks() -> None:
    assert output_pool_size(1) == (2, 10)
    assert output_pool_size(4) == (5, 16)
    assert output_pool_size(100) == (101, 208)
    assert output_pool_size(3, buffers_per_channel=4, floating_buffers_per_gate=1) == (4, 13)


def test_output_pool_size_never_has_a_maximum_below_its_minimum() -> None:
    assert output_pool_size(1, buffers_per_channel=1, floating_buffers_per_gate=0) == (2, 2)
    assert output_pool_size(12, buffers_per_channel=0, floating_buffers_per_gate=8) == (13, 13)


def test_create_sizes_the_pool_and_caps_channels() -> None:
    network = NetworkBufferPool(100, 32)
    partition = ResultPartition.create(
        ResultPartitionID.generate(), 3, network, max_buffers_per_channel=7, max_overdraft_buffers=2
    )
    pool = partition.buffer_pool
    assert (pool.min_size, pool.max_size) == (4, 14)
    assert pool.num_buffers == 14  # grown to max: the network pool has plenty
    assert pool.max_buffers_per_channel == 7
    assert pool.max_overdraft_buffers == 2
    assert network.required_segments == 4
    release_and_check(network, partition)


def test_create_with_too_small_a_pool_gives_flinks_message() -> None:
    network = NetworkBufferPool(3, 32)
    with pytest.raises(InsufficientBuffersError) as info:
        ResultPartition.create(ResultPartitionID.generate(), 3, network)
    assert info.value.required == 4
    assert str(info.value).startswith(
        "Insufficient number of network buffers: required 4, but only 3 available."
    )
    assert network.required_segments == 0


def test_needs_at_least_one_subpartition() -> None:
    network = NetworkBufferPool(4, 32)
    pool = network.create_buffer_pool(1, 2)
    with pytest.raises(IllegalStateError):
        ResultPartition(ResultPartitionID.generate(), 0, pool)


# -- unicast -------------------------------------------------------------------------


def test_record_larger_than_three_segments_spans_buffers() -> None:
    network, partition, views = make(segment_size=32)
    record = frame(bytes(range(100)) + bytes(range(20)))  # 124 bytes: 4 buffers
    partition.emit_record(record, 1)
    partition.flush(1)
    items = drain(views[1])
    assert [len(data) for _, data in items] == [32, 32, 32, 28]
    assert data_of(items) == record
    assert drain(views[0]) == []
    assert partition.num_buffers_out == 3  # the fourth is still open
    assert partition.num_bytes_out == 96
    release_and_check(network, partition)


def test_records_share_buffers_and_the_stream_is_their_concatenation() -> None:
    network, partition, views = make(num_subpartitions=3, segment_size=64)
    sent: list[bytearray] = [bytearray() for _ in range(3)]
    for i in range(60):
        record = frame(b"r%d" % i * (i % 7))
        target = (i * 7) % 3
        partition.emit_record(record, target)
        sent[target] += record
    partition.finish()
    for view, expected in zip(views, sent, strict=True):
        items = drain(view)
        assert data_of(items) == expected
        assert items[-1] == (DataType.END_OF_PARTITION, items[-1][1])
        assert deserialize_event(items[-1][1]) == EndOfPartitionEvent()
        assert all(len(data) <= 64 for _, data in items)
    release_and_check(network, partition)


OPS = st.lists(
    st.one_of(
        st.tuples(st.just("emit"), st.integers(0, 2), st.integers(0, 140)),
        st.tuples(st.just("broadcast"), st.just(0), st.integers(0, 140)),
        st.tuples(st.just("event"), st.just(0), st.just(0)),
        st.tuples(st.just("flush"), st.just(0), st.just(0)),
        st.tuples(st.just("read"), st.just(0), st.just(0)),
    ),
    max_size=40,
)


@settings(max_examples=150)
@given(
    num_subpartitions=st.integers(1, 3),
    segment_size=st.sampled_from([16, 32, 64]),
    ops=OPS,
)
def test_every_subpartition_reads_exactly_what_was_emitted_to_it(
    num_subpartitions: int, segment_size: int, ops: list[tuple[str, int, int]]
) -> None:
    network, partition, views = make(num_subpartitions, segments=64, segment_size=segment_size)
    expected: list[list[tuple[str, bytes]]] = [[] for _ in range(num_subpartitions)]
    received: list[list[tuple[DataType, bytes]]] = [[] for _ in range(num_subpartitions)]
    for counter, (op, channel, size) in enumerate(ops, start=1):
        target = channel % num_subpartitions
        payload = bytes((counter + i) % 256 for i in range(size))
        if op == "emit":
            partition.emit_record(frame(payload), target)
            expected[target].append(("data", frame(payload)))
        elif op == "broadcast":
            partition.broadcast_record(frame(payload))
            for stream in expected:
                stream.append(("data", frame(payload)))
        elif op == "event":
            partition.broadcast_event(CancelCheckpointMarker(counter))
            for stream in expected:
                stream.append(("event", CancelCheckpointMarker(counter).checkpoint_id.to_bytes(8)))
        elif op == "flush":
            partition.flush_all()
        # Read after every step so that the bounded pool never runs dry.
        for view, got in zip(views, received, strict=True):
            got.extend(drain(view))
    partition.finish()
    for view, got in zip(views, received, strict=True):
        got.extend(drain(view))
    for want, got in zip(expected, received, strict=True):
        # Data bytes are the concatenation of the records; events sit exactly between them.
        want_units: list[tuple[str, bytes]] = []
        for kind, data in want:
            if kind == "data" and want_units and want_units[-1][0] == "data":
                want_units[-1] = ("data", want_units[-1][1] + data)
            else:
                want_units.append((kind, data))
        got_units: list[tuple[str, bytes]] = []
        for data_type, data in got:
            if data_type is DataType.DATA_BUFFER:
                if got_units and got_units[-1][0] == "data":
                    got_units[-1] = ("data", got_units[-1][1] + data)
                else:
                    got_units.append(("data", data))
            elif data_type is DataType.EVENT_BUFFER:
                event = deserialize_event(data)
                assert isinstance(event, CancelCheckpointMarker)
                got_units.append(("event", event.checkpoint_id.to_bytes(8)))
            else:
                assert data_type is DataType.END_OF_PARTITION
                assert data is got[-1][1]
        want_units = [unit for unit in want_units if unit != ("data", b"")]
        assert got_units == want_units
        assert all(len(data) <= segment_size for _, data in got)
    release_and_check(network, partition)


def test_emit_record_to_a_target_past_the_end_raises() -> None:
    network, partition, _ = make()
    partition.emit_record(b"y", 1)  # an open builder: the fast path is taken
    with pytest.raises(IllegalStateError, match="out of range"):
        partition.emit_record(b"x", 2)
    release_and_check(network, partition)


@pytest.mark.parametrize("target", [-1, 2])
def test_flush_of_a_subpartition_out_of_range_raises(target: int) -> None:
    network, partition, views = make()
    partition.emit_record(b"y", 1)
    with pytest.raises(IllegalStateError, match="out of range"):
        partition.flush(target)
    assert not views[1].is_available()  # not flushed instead
    release_and_check(network, partition)


def test_a_partition_refused_at_creation_takes_no_pool() -> None:
    network = NetworkBufferPool(10, 32)
    with pytest.raises(IllegalStateError, match="at least one subpartition"):
        ResultPartition.create(ResultPartitionID.generate(), 0, network)
    assert (network.number_of_pools, network.required_segments) == (0, 0)


def test_emit_record_negative_target_raises() -> None:
    network, partition, _ = make()
    try:
        with pytest.raises(IllegalStateError, match="out of range"):
            partition.emit_record(b"x", -1)
        partition.emit_record(b"y", partition.num_subpartitions - 1)  # its builder stays open
        with pytest.raises(IllegalStateError, match="out of range"):
            partition.emit_record(b"x", -1)  # not into the last subpartition's builder
        builder = partition.unicast_builders[-1]
        assert builder is not None and builder.position == 1
    finally:
        release_and_check(network, partition)


# -- broadcast -----------------------------------------------------------------------


def test_broadcast_record_shares_one_buffer() -> None:
    network, partition, views = make(num_subpartitions=4, segment_size=64)
    pool = partition.buffer_pool
    used = pool.used_buffers
    record = frame(b"to everyone")
    partition.broadcast_record(record)
    partition.broadcast_record(record)
    assert pool.used_buffers == used + 1  # one segment, not one per subpartition
    partition.flush_all()
    streams = [drain(view) for view in views]
    assert all(stream == streams[0] for stream in streams)
    assert data_of(streams[0]) == record * 2
    release_and_check(network, partition)


def test_spanning_broadcast_record_takes_one_segment_per_buffer() -> None:
    network, partition, views = make(num_subpartitions=3, segment_size=32)
    pool = partition.buffer_pool
    used = pool.used_buffers
    record = frame(bytes(range(90)))  # 94 bytes: 3 buffers
    partition.broadcast_record(record)
    assert pool.used_buffers == used + 3
    partition.finish()
    assert partition.num_buffers_out == 3 * 3
    assert partition.num_bytes_out == 94 * 3
    for view in views:
        items = drain(view)
        assert data_of(items) == record
        assert [len(data) for _, data in items[:-1]] == [32, 32, 30]
    release_and_check(network, partition)


def test_switching_unicast_to_broadcast_finishes_unicast_builders() -> None:
    network, partition, views = make(num_subpartitions=2, segment_size=64)
    partition.emit_record(b"u0", 0)
    partition.emit_record(b"u1", 1)
    partition.broadcast_record(b"B")
    assert partition.unicast_builders == [None, None]
    assert partition.num_buffers_out == 2
    partition.flush_all()
    for view, unicast in zip(views, [b"u0", b"u1"], strict=True):
        items = drain(view)
        assert [data for _, data in items] == [unicast, b"B"]  # separate buffers, in order
    release_and_check(network, partition)


def test_switching_broadcast_to_unicast_finishes_the_broadcast_builder() -> None:
    network, partition, views = make(num_subpartitions=2, segment_size=64)
    partition.broadcast_record(b"B1")
    partition.emit_record(b"u1", 1)
    assert partition.num_buffers_out == 2  # the broadcast buffer, once per subpartition
    assert partition.num_bytes_out == 4
    partition.broadcast_record(b"B2")
    assert partition.unicast_builders == [None, None]
    partition.flush_all()
    assert [data for _, data in drain(views[0])] == [b"B1", b"B2"]
    assert [data for _, data in drain(views[1])] == [b"B1", b"u1", b"B2"]
    release_and_check(network, partition)


# -- events --------------------------------------------------------------------------


def test_broadcast_event_pushes_the_data_before_it_out() -> None:
    network = NetworkBufferPool(16, 64)
    partition = ResultPartition.create(ResultPartitionID.generate(), 2, network)
    listeners = [RecordingListener(), RecordingListener()]
    views = [partition.create_subpartition_view(i, listeners[i]) for i in range(2)]
    partition.emit_record(b"zero", 0)
    partition.emit_record(b"one", 1)
    assert drain(views[0]) == [(DataType.DATA_BUFFER, b"zero")]  # the open buffer, read early
    partition.emit_record(b"more", 0)
    before = [listener.count for listener in listeners]
    partition.broadcast_event(CancelCheckpointMarker(5))
    after = [listener.count for listener in listeners]
    assert all(a > b for a, b in zip(after, before, strict=True))  # no flush needed
    assert partition.unicast_builders == [None, None]
    first = drain(views[0])
    second = drain(views[1])
    assert [data_type for data_type, _ in first] == [DataType.DATA_BUFFER, DataType.EVENT_BUFFER]
    assert first[0][1] == b"more"
    assert second[0] == (DataType.DATA_BUFFER, b"one")
    assert deserialize_event(second[1][1]) == CancelCheckpointMarker(5)
    release_and_check(network, partition)


def test_broadcast_event_after_broadcast_record() -> None:
    network, partition, views = make(num_subpartitions=2, segment_size=64)
    partition.broadcast_record(b"B")
    partition.broadcast_event(CancelCheckpointMarker(1))
    for view in views:
        items = drain(view)
        assert [data_type for data_type, _ in items] == [
            DataType.DATA_BUFFER,
            DataType.EVENT_BUFFER,
        ]
    release_and_check(network, partition)


def test_events_take_no_pool_buffers() -> None:
    network, partition, views = make(num_subpartitions=3)
    used = partition.buffer_pool.used_buffers
    available = network.available_segments
    for i in range(20):
        partition.broadcast_event(CancelCheckpointMarker(i))
    assert partition.buffer_pool.used_buffers == used
    assert network.available_segments == available
    assert partition.num_buffers_out == 0
    assert partition.num_bytes_out == 0
    assert len(drain(views[2])) == 20
    release_and_check(network, partition)


def test_priority_and_aligned_barriers_get_their_types() -> None:
    network, partition, views = make(num_subpartitions=1, segment_size=64)
    unaligned = CheckpointBarrier(1, 0, CheckpointOptions(alignment=AlignmentType.UNALIGNED))
    partition.emit_record(b"d", 0)
    partition.broadcast_event(CheckpointBarrier(2, 0, CheckpointOptions()))
    partition.broadcast_event(unaligned, is_priority=True)
    result = views[0].get_next_buffer()
    assert result is not None
    assert result.buffer.data_type is DataType.PRIORITIZED_EVENT_BUFFER  # overtook the data
    result.buffer.recycle()
    items = drain(views[0])
    assert [data_type for data_type, _ in items] == [
        DataType.DATA_BUFFER,
        DataType.ALIGNED_CHECKPOINT_BARRIER,
    ]
    assert drain(views[0]) == []  # blocked
    views[0].resume_consumption()
    release_and_check(network, partition)


# -- lifecycle -----------------------------------------------------------------------


def test_finish_queues_end_of_partition_everywhere_and_forbids_writing() -> None:
    network, partition, views = make(num_subpartitions=3)
    partition.emit_record(b"abc", 1)
    partition.finish()
    assert partition.is_finished
    assert all(subpartition.is_finished for subpartition in partition.subpartitions)
    for view in views:
        items = drain(view)
        assert items[-1][0] is DataType.END_OF_PARTITION
        assert deserialize_event(items[-1][1]) == EndOfPartitionEvent()
    with pytest.raises(IllegalStateError, match="already finished"):
        partition.emit_record(b"x", 0)
    with pytest.raises(IllegalStateError):
        partition.broadcast_record(b"x")
    with pytest.raises(IllegalStateError):
        partition.broadcast_event(CancelCheckpointMarker(1))
    with pytest.raises(IllegalStateError):
        partition.finish()
    release_and_check(network, partition)


def test_writing_after_release_raises() -> None:
    network, partition, _ = make()
    partition.emit_record(b"abc", 0)
    partition.release()
    assert partition.is_released
    with pytest.raises(PartitionReleasedError):
        partition.emit_record(b"x", 0)
    with pytest.raises(PartitionReleasedError):
        partition.emit_record(b"x", 1)
    with pytest.raises(PartitionReleasedError):
        partition.broadcast_record(b"x")
    with pytest.raises(PartitionReleasedError):
        partition.broadcast_event(CancelCheckpointMarker(1))
    with pytest.raises(PartitionReleasedError):
        partition.finish()
    with pytest.raises(PartitionReleasedError):
        partition.create_subpartition_view(0, RecordingListener())
    partition.release()  # idempotent
    release_and_check(network, partition)


def test_fail_gives_readers_the_cause() -> None:
    network, partition, views = make()
    partition.emit_record(b"abc", 0)
    partition.flush_all()
    cause = RuntimeError("user function exploded")
    partition.fail(cause)
    assert partition.failure_cause is cause
    for view in views:
        assert view.failure_cause is cause
        with pytest.raises(ProducerFailedError) as info:
            view.get_next_buffer()
        assert info.value.__cause__ is cause
        assert str(partition.partition_id) in str(info.value)
    partition.release(RuntimeError("later"))  # first cause wins
    assert partition.failure_cause is cause
    release_and_check(network, partition)


def test_fail_before_a_reader_connects() -> None:
    network = NetworkBufferPool(16, 32)
    partition = ResultPartition.create(ResultPartitionID.generate(), 1, network)
    cause = ValueError("boom")
    partition.fail(cause)
    with pytest.raises(ProducerFailedError) as info:
        partition.create_subpartition_view(0, RecordingListener())
    assert info.value.__cause__ is cause
    release_and_check(network, partition)


def test_release_without_cause_is_not_a_producer_failure() -> None:
    network, partition, views = make()
    partition.release()
    with pytest.raises(PartitionReleasedError) as info:
        views[0].get_next_buffer()
    assert not isinstance(info.value, ProducerFailedError)
    release_and_check(network, partition)


def test_release_and_close_return_every_segment_with_buffers_queued() -> None:
    network, partition, views = make(num_subpartitions=3, segments=40, segment_size=32)
    for i in range(12):
        partition.emit_record(bytes([i]) * 20, i % 3)
    partition.broadcast_record(b"b" * 50)
    partition.emit_record(b"open", 1)
    held = views[1].get_next_buffer()  # a reader still holds one slice
    assert held is not None
    assert network.available_segments < network.total_segments
    partition.release()
    partition.close()
    assert partition.buffer_pool.is_destroyed
    assert network.available_segments == network.total_segments - 1
    held.buffer.recycle()
    assert network.available_segments == network.total_segments
    assert network.number_of_pools == 0
    partition.close()  # idempotent


def test_close_without_release_returns_segments_as_they_are_read() -> None:
    network, partition, views = make(num_subpartitions=1, segments=16, segment_size=32)
    partition.emit_record(b"x" * 70, 0)
    partition.finish()
    partition.close()
    assert network.available_segments < network.total_segments
    items = drain(views[0])
    assert data_of(items) == b"x" * 70
    assert network.available_segments == network.total_segments


def test_consumption_listener_fires_once_all_views_are_released() -> None:
    consumed: list[ResultPartition] = []
    network = NetworkBufferPool(16, 32)
    partition = ResultPartition.create(
        ResultPartitionID.generate(), 2, network, on_consumed=consumed.append
    )
    extra: list[ResultPartition] = []
    partition.add_consumption_listener(extra.append)
    views = [partition.create_subpartition_view(i, RecordingListener()) for i in range(2)]
    views[0].release_all_resources()
    views[0].release_all_resources()  # counted once
    assert consumed == []
    views[1].release_all_resources()
    assert consumed == [partition]
    assert extra == [partition]
    release_and_check(network, partition)


def test_view_index_out_of_range() -> None:
    network, partition, _ = make()
    for index in (-1, 2):
        with pytest.raises(IllegalStateError, match="out of range"):
            partition.create_subpartition_view(index, RecordingListener())
    release_and_check(network, partition)


def test_metrics() -> None:
    network, partition, views = make(num_subpartitions=2, segment_size=32)
    partition.emit_record(b"a" * 40, 0)  # one full buffer out, 8 bytes open
    assert (partition.num_buffers_out, partition.num_bytes_out) == (1, 32)
    partition.emit_record(b"b" * 10, 1)
    assert partition.output_queue_length == 3
    assert partition.total_backlog == 1  # the two open buffers do not count
    partition.broadcast_record(b"c" * 20)  # finishes both unicast buffers
    assert (partition.num_buffers_out, partition.num_bytes_out) == (3, 50)
    partition.broadcast_event(CancelCheckpointMarker(1))  # finishes the broadcast buffer
    assert (partition.num_buffers_out, partition.num_bytes_out) == (5, 90)
    assert partition.total_backlog == 5  # 3 + 2 data buffers, last elements are events
    assert 0 < partition.buffer_pool.usage <= 1
    for view in views:
        drain(view)
    assert partition.output_queue_length == 0
    assert partition.buffer_pool.usage == 0
    assert "producer (1/1)" in repr(partition)
    release_and_check(network, partition)


# -- backpressure --------------------------------------------------------------------


def _tiny(num_subpartitions: int = 1) -> tuple[NetworkBufferPool, ResultPartition]:
    # Exactly the minimum: no spare segment to grow into and none to overdraw.
    network = NetworkBufferPool(num_subpartitions + 1, 32)
    partition = ResultPartition.create(ResultPartitionID.generate(), num_subpartitions, network)
    return network, partition


def test_soft_backpressure_availability_follows_the_pool() -> None:
    network, partition = _tiny()
    view = partition.create_subpartition_view(0, RecordingListener())
    assert partition.is_available()
    partition.emit_record(b"x" * 64, 0)  # two full buffers: the pool is empty
    assert not partition.is_available()
    future = partition.get_available_future()
    assert not future.done()
    result = view.get_next_buffer()
    assert result is not None
    result.buffer.recycle()
    assert future.done()
    assert partition.is_available()
    release_and_check(network, partition)


def test_hard_backpressure_blocks_the_producer_until_the_reader_recycles() -> None:
    network, partition = _tiny()
    timer = RecordingTimer()
    partition.backpressure_timer = timer
    view = partition.create_subpartition_view(0, RecordingListener())
    record = frame(bytes(range(88)))  # 92 bytes: three buffers from a pool of two
    errors: list[BaseException] = []
    done = threading.Event()

    def produce() -> None:
        try:
            partition.emit_record(record, 0)
            partition.flush(0)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)
        finally:
            done.set()

    producer = threading.Thread(target=produce, daemon=True)
    producer.start()
    assert timer.started.wait(JOIN_TIMEOUT)
    # The producer cannot finish: both segments are queued and nobody reads them.
    assert not done.is_set()
    assert not partition.is_available()
    received = bytearray()
    result = view.get_next_buffer()
    assert result is not None
    received += result.buffer.memory
    result.buffer.recycle()  # frees a segment: the producer takes it
    producer.join(JOIN_TIMEOUT)
    assert not producer.is_alive()
    assert errors == []
    assert (timer.starts, timer.stops) == (1, 1)
    received += data_of(drain(view))
    assert received == record
    release_and_check(network, partition)


def test_close_wakes_a_blocked_producer() -> None:
    network, partition = _tiny()
    timer = RecordingTimer()
    partition.backpressure_timer = timer
    partition.create_subpartition_view(0, RecordingListener())
    errors: list[BaseException] = []

    def produce() -> None:
        try:
            partition.emit_record(b"y" * 80, 0)
        except BaseException as exc:
            errors.append(exc)

    producer = threading.Thread(target=produce, daemon=True)
    producer.start()
    assert timer.started.wait(JOIN_TIMEOUT)
    partition.close()
    producer.join(JOIN_TIMEOUT)
    assert not producer.is_alive()
    assert len(errors) == 1
    assert isinstance(errors[0], PoolDestroyedError)
    assert timer.stops == 1
    partition.release()
    assert network.available_segments == network.total_segments


def test_release_wakes_a_blocked_unicast_producer_with_an_error() -> None:
    network, partition = _tiny()
    timer = RecordingTimer()
    partition.backpressure_timer = timer
    partition.create_subpartition_view(0, RecordingListener())
    errors: list[BaseException] = []

    def produce() -> None:
        try:
            partition.emit_record(b"y" * 80, 0)
        except BaseException as exc:
            errors.append(exc)

    producer = threading.Thread(target=produce, daemon=True)
    producer.start()
    assert timer.started.wait(JOIN_TIMEOUT)
    partition.release()  # frees the queued segments: the producer wakes and must see it
    producer.join(JOIN_TIMEOUT)
    assert not producer.is_alive()
    assert len(errors) == 1
    assert isinstance(errors[0], PartitionReleasedError)
    partition.close()
    assert network.available_segments == network.total_segments


def test_release_wakes_a_blocked_broadcast_producer_with_an_error() -> None:
    network, partition = _tiny(num_subpartitions=2)  # 3 segments
    timer = RecordingTimer()
    partition.backpressure_timer = timer
    for i in range(2):
        partition.create_subpartition_view(i, RecordingListener())
    errors: list[BaseException] = []

    def produce() -> None:
        try:
            partition.broadcast_record(b"y" * 112)  # 4 buffers of 32: blocks for the 4th
        except BaseException as exc:
            errors.append(exc)

    producer = threading.Thread(target=produce, daemon=True)
    producer.start()
    assert timer.started.wait(JOIN_TIMEOUT)
    partition.release()
    producer.join(JOIN_TIMEOUT)
    assert not producer.is_alive()
    partition.close()
    assert network.available_segments == network.total_segments
    assert len(errors) == 1
    assert isinstance(errors[0], PartitionReleasedError)
