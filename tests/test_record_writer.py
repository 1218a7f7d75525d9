"""RecordWriter: framing, routing, emit_batch ≡ emit, broadcast, flusher, bad input."""

from __future__ import annotations

import array
import gc
import mmap
import struct
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar, cast

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from penstock.buffer.buffer import DataType
from penstock.errors import (
    ConfigurationError,
    IllegalStateError,
    PartitionReleasedError,
    SerializationError,
    TaskError,
)
from penstock.events import CancelCheckpointMarker, EndOfPartitionEvent, RuntimeEvent
from penstock.ids import ResultPartitionID
from penstock.memory.network_pool import NetworkBufferPool
from penstock.partition.result_partition import ResultPartition
from penstock.partition.view import PipelinedSubpartitionView
from penstock.serialization.event_serializer import deserialize_event
from penstock.serialization.record_deserializer import RecordDeserializer
from penstock.serialization.types import (
    BytesSerializer,
    GenericSerializer,
    IntSerializer,
    StrSerializer,
    TypeSerializer,
)
from penstock.writer.flusher import OutputFlusher
from penstock.writer.partitioners import (
    BroadcastPartitioner,
    ChannelSelector,
    CustomPartitionerWrapper,
    ForwardPartitioner,
    GlobalPartitioner,
    KeyGroupStreamPartitioner,
    RebalancePartitioner,
    RescalePartitioner,
    ShufflePartitioner,
)
from penstock.writer.record_writer import (
    BroadcastRecordWriter,
    ChannelSelectorRecordWriter,
    RecordWriter,
    create_record_writer,
)

T = TypeVar("T")

JOIN_TIMEOUT = 10.0


# -- helpers ---------------------------------------------------------------------------------


class NullListener:
    def notify_data_available(self) -> None:
        pass


@dataclass(slots=True)
class Drained:
    """What one subpartition held: its data bytes and its events, in order."""

    data: bytes
    events: list[RuntimeEvent]
    kinds: list[DataType]


def drain(partition: ResultPartition) -> list[Drained]:
    """Reads every subpartition to its end (the partition must be finished)."""
    drained = []
    for index in range(partition.num_subpartitions):
        view = partition.create_subpartition_view(index, NullListener())
        data = bytearray()
        events: list[RuntimeEvent] = []
        kinds: list[DataType] = []
        while (polled := view.get_next_buffer()) is not None:
            buffer = polled.buffer
            kinds.append(buffer.data_type)
            if buffer.is_buffer:
                data += buffer.memory
            else:
                events.append(deserialize_event(buffer.memory))
            buffer.recycle()
        view.release_all_resources()
        drained.append(Drained(bytes(data), events, kinds))
    return drained


def frames(serializer: TypeSerializer[T], records: Sequence[T]) -> bytes:
    return b"".join(
        struct.pack(">i", len(payload)) + payload
        for payload in (serializer.serialize(record) for record in records)
    )


def records_in(serializer: TypeSerializer[T], data: bytes) -> list[T]:
    deserializer = RecordDeserializer(serializer, channel="test")
    records = deserializer.read(data)
    deserializer.check_end()
    return records


class Output:
    """A network pool and a partition big enough to hold a test's output undrained."""

    def __init__(self, num_channels: int, segment_size: int = 256, segments: int = 600) -> None:
        self.network_pool = NetworkBufferPool(segments, segment_size)
        self.partition = ResultPartition.create(
            ResultPartitionID.generate(),
            num_channels,
            self.network_pool,
            floating_buffers_per_gate=segments - 2 * num_channels,
            owner="test-producer",
        )

    def finish_and_drain(self) -> list[Drained]:
        self.partition.finish()
        drained = drain(self.partition)
        self.partition.close()
        assert self.network_pool.available_segments == self.network_pool.total_segments
        return drained


@pytest.fixture
def output() -> Iterator[Output]:
    yield Output(3)


def writer_threads() -> set[threading.Thread]:
    return {t for t in threading.enumerate() if t.name.startswith("OutputFlusher")}


# -- selectors and serializers for the equivalence property ----------------------------------

SELECTOR_NAMES = ["forward", "global", "rebalance", "rescale", "shuffle", "keyed", "custom"]


def key_of(record: object) -> object:
    return record[0] if isinstance(record, tuple) else record


def identity(record: int) -> int:
    return record


def custom_partition(key: object, num_partitions: int) -> int:
    return len(repr(key)) % num_partitions


def make_selector(name: str, seed: int) -> ChannelSelector[object]:
    if name == "forward":
        return ForwardPartitioner()
    if name == "global":
        return GlobalPartitioner()
    if name == "rebalance":
        return RebalancePartitioner(seed)
    if name == "rescale":
        return RescalePartitioner()
    if name == "shuffle":
        return ShufflePartitioner(seed)
    if name == "keyed":
        return KeyGroupStreamPartitioner(key_of, max_parallelism=128)
    assert name == "custom"
    return CustomPartitionerWrapper(custom_partition, key_of)


SERIALIZER_CASES: dict[str, tuple[Callable[[], TypeSerializer[object]], st.SearchStrategy[object]]]
SERIALIZER_CASES = {
    "int": (
        IntSerializer,  # type: ignore[dict-item]
        st.integers(-(2**63), 2**63 - 1),
    ),
    "bytes": (BytesSerializer, st.binary(max_size=300)),  # type: ignore[dict-item]
    "str": (StrSerializer, st.text(max_size=40)),  # type: ignore[dict-item]
    "generic": (
        GenericSerializer,
        st.one_of(
            st.tuples(st.text(max_size=6), st.integers(0, 1000)),
            st.integers(),
            st.text(max_size=30),
            st.none(),
            st.booleans(),
        ),
    ),
    "generic-pairs": (
        GenericSerializer,
        st.tuples(st.sampled_from(["a", "bb", "ccc", "dddd"]), st.integers(-5, 5)),
    ),
}


@st.composite
def operations(
    draw: st.DrawFn, records: st.SearchStrategy[object]
) -> list[tuple[str, object] | list[object]]:
    """A mix of single records (emit) and lists of records (emit_batch)."""
    return draw(
        st.lists(
            st.one_of(records.map(lambda r: ("one", r)), st.lists(records, max_size=30)),
            max_size=12,
        )
    )


@given(
    data=st.data(),
    selector_name=st.sampled_from(SELECTOR_NAMES),
    case=st.sampled_from(sorted(SERIALIZER_CASES)),
    num_channels=st.integers(1, 4),
    segment_size=st.sampled_from([32, 100, 256, 4096]),
    seed=st.integers(0, 1000),
)
@settings(max_examples=250)
def test_emit_batch_writes_what_emit_writes(
    data: st.DataObject,
    selector_name: str,
    case: str,
    num_channels: int,
    segment_size: int,
    seed: int,
) -> None:
    make_serializer, record_strategy = SERIALIZER_CASES[case]
    ops = data.draw(operations(record_strategy))
    one_by_one = Output(num_channels, segment_size)
    mixed = Output(num_channels, segment_size)
    reference = create_record_writer(
        one_by_one.partition, make_serializer(), make_selector(selector_name, seed), -1
    )
    writer = create_record_writer(
        mixed.partition, make_serializer(), make_selector(selector_name, seed), -1
    )
    count = 0
    for op in ops:
        if isinstance(op, list):
            for record in op:
                reference.emit(record)
            writer.emit_batch(op)
            count += len(op)
        else:
            assert isinstance(op, tuple)
            reference.emit(op[1])
            writer.emit(op[1])
            count += 1
    assert reference.num_records_out == writer.num_records_out == count
    expected = one_by_one.finish_and_drain()
    actual = mixed.finish_and_drain()
    assert [d.data for d in actual] == [d.data for d in expected]
    # and every record is where its selector put it, framed as [length][payload]
    serializer = make_serializer()
    routed: list[list[object]] = [[] for _ in range(num_channels)]
    selector = make_selector(selector_name, seed)
    selector.setup(num_channels)
    for op in ops:
        for record in op if isinstance(op, list) else [op[1]]:
            routed[selector.select_channel(record)].append(record)
    assert [d.data for d in actual] == [frames(serializer, group) for group in routed]


@pytest.mark.parametrize("sizes", [[1024], [1024, 7, 5000, 0], [20_000, 20]], ids=str)
def test_a_large_batch_framed_in_slices_writes_what_emit_writes(sizes: list[int]) -> None:
    """Batches that would frame to more than 128 KiB are framed in slices; the bytes
    and their order are those of emitting each record."""
    records = [bytes([i % 251]) * sizes[i % len(sizes)] for i in range(600)]
    one_by_one = Output(2, 32 * 1024)
    batched = Output(2, 32 * 1024)
    serializer: TypeSerializer[bytes] = BytesSerializer()
    reference = create_record_writer(
        one_by_one.partition, serializer, cast("Any", make_selector("rebalance", 7)), -1
    )
    writer = create_record_writer(
        batched.partition, serializer, cast("Any", make_selector("rebalance", 7)), -1
    )
    for record in records:
        reference.emit(record)
    writer.emit_batch(records[:5])  # small: framed at once
    writer.emit_batch(records[5:])
    assert [d.data for d in batched.finish_and_drain()] == [
        d.data for d in one_by_one.finish_and_drain()
    ]


@pytest.mark.parametrize("segment_size", [16, 64, 4096])
def test_records_are_framed_with_a_big_endian_length(segment_size: int) -> None:
    out = Output(1, segment_size)
    writer = create_record_writer(out.partition, BytesSerializer(), ForwardPartitioner(), -1)
    records: list[bytes | bytearray | memoryview] = [
        b"",
        b"x",
        b"y" * 40,
        bytearray(b"from a bytearray"),
        memoryview(b"view"),
    ]
    for record in records:
        writer.emit(cast("bytes", record))  # bytes-like records are accepted as they are
    (drained,) = out.finish_and_drain()
    assert drained.data == b"".join(struct.pack(">i", len(r)) + bytes(r) for r in records)


def test_int_records_exactly_filling_buffers_round_trip() -> None:
    # 12-byte frames into 120-byte buffers: the fast path leaves the record that fills a
    # buffer to emit_record.
    out = Output(2, segment_size=120)
    writer = create_record_writer(out.partition, IntSerializer(), RescalePartitioner(), -1)
    for value in range(200):
        writer.emit(value)
    drained = out.finish_and_drain()
    assert records_in(IntSerializer(), drained[0].data) == list(range(0, 200, 2))
    assert records_in(IntSerializer(), drained[1].data) == list(range(1, 200, 2))


# -- broadcast ----------------------------------------------------------------------------------


@given(
    records=st.lists(st.binary(max_size=200), max_size=40),
    batch_size=st.integers(1, 10),
    num_channels=st.integers(1, 4),
)
def test_broadcast_writer_sends_every_record_to_every_channel(
    records: list[bytes], batch_size: int, num_channels: int
) -> None:
    one_by_one = Output(num_channels, 64)
    batched = Output(num_channels, 64)
    writer = create_record_writer(one_by_one.partition, BytesSerializer(), BroadcastPartitioner())
    batch_writer = create_record_writer(
        batched.partition, BytesSerializer(), BroadcastPartitioner(), buffer_timeout_ms=-1
    )
    try:
        assert isinstance(writer, BroadcastRecordWriter)
        for record in records:
            writer.emit(record)
        for start in range(0, len(records), batch_size):
            batch_writer.emit_batch(records[start : start + batch_size])
    finally:
        writer.close()
    assert writer.num_records_out == batch_writer.num_records_out == len(records)
    expected = frames(BytesSerializer(), records)
    assert [d.data for d in one_by_one.finish_and_drain()] == [expected] * num_channels
    assert [d.data for d in batched.finish_and_drain()] == [expected] * num_channels


def test_broadcast_writer_shares_one_buffer_among_channels() -> None:
    shared = Output(4)
    unicast = Output(4)
    broadcast_writer = create_record_writer(
        shared.partition, BytesSerializer(), BroadcastPartitioner(), -1
    )
    selector_writer = create_record_writer(
        unicast.partition, BytesSerializer(), RescalePartitioner(), -1
    )
    broadcast_writer.emit(b"to everyone")
    selector_writer.broadcast_emit(b"to everyone")
    assert shared.partition.buffer_pool.used_buffers == 1
    assert unicast.partition.buffer_pool.used_buffers == 4
    expected = frames(BytesSerializer(), [b"to everyone"])
    assert [d.data for d in shared.finish_and_drain()] == [expected] * 4
    assert [d.data for d in unicast.finish_and_drain()] == [expected] * 4


@pytest.mark.parametrize("serializer", [IntSerializer(), GenericSerializer()], ids=repr)
def test_broadcast_emit_goes_to_every_channel_in_order(serializer: TypeSerializer[int]) -> None:
    out = Output(3, segment_size=32)
    writer = create_record_writer(out.partition, serializer, RescalePartitioner(), -1)
    writer.emit(1)  # channel 0
    writer.broadcast_emit(100)
    writer.emit(2)  # channel 1
    writer.emit(3)  # channel 2
    writer.broadcast_emit(200)
    writer.emit(4)  # channel 0
    assert writer.num_records_out == 6
    drained = out.finish_and_drain()
    assert [records_in(serializer, d.data) for d in drained] == [
        [1, 100, 200, 4],
        [100, 2, 200],
        [100, 3, 200],
    ]


def test_broadcast_emit_of_a_broadcast_writer() -> None:
    out = Output(2, segment_size=32)
    writer = create_record_writer(out.partition, IntSerializer(), BroadcastPartitioner(), -1)
    writer.emit(1)
    writer.broadcast_emit(2)
    writer.emit_batch([3, 4])
    drained = out.finish_and_drain()
    assert [records_in(IntSerializer(), d.data) for d in drained] == [[1, 2, 3, 4]] * 2


def test_broadcast_event_follows_the_data_in_every_channel() -> None:
    out = Output(2)
    writer = create_record_writer(out.partition, IntSerializer(), RescalePartitioner(), -1)
    writer.emit(7)
    writer.broadcast_event(CancelCheckpointMarker(5))
    drained = out.finish_and_drain()
    end = DataType.END_OF_PARTITION
    assert drained[0].kinds == [DataType.DATA_BUFFER, DataType.EVENT_BUFFER, end]
    assert drained[1].kinds == [DataType.EVENT_BUFFER, end]
    for channel in drained:
        assert channel.events == [CancelCheckpointMarker(5), EndOfPartitionEvent()]


# -- construction ------------------------------------------------------------------------------


def test_create_record_writer_picks_the_writer_for_the_selector(output: Output) -> None:
    partition = output.partition
    broadcast = create_record_writer(partition, IntSerializer(), BroadcastPartitioner(), -1)
    assert isinstance(broadcast, BroadcastRecordWriter)
    keyed = create_record_writer(
        partition, IntSerializer(), KeyGroupStreamPartitioner[int](identity), -1
    )
    assert isinstance(keyed, ChannelSelectorRecordWriter)
    default = create_record_writer(partition, IntSerializer(), buffer_timeout_ms=-1)
    assert isinstance(default, ChannelSelectorRecordWriter)
    assert isinstance(default.selector, RebalancePartitioner)
    # the default is round robin over all channels
    for value in range(6):
        default.emit(value)
    drained = output.finish_and_drain()
    counts = [len(records_in(IntSerializer(), d.data)) for d in drained]
    assert counts == [2, 2, 2]


def test_a_broadcast_selector_needs_a_broadcast_writer(output: Output) -> None:
    with pytest.raises(IllegalStateError, match="BroadcastRecordWriter"):
        ChannelSelectorRecordWriter(
            output.partition, IntSerializer(), BroadcastPartitioner(), buffer_timeout_ms=-1
        )


@pytest.mark.parametrize("timeout", [-2, -100])
def test_invalid_buffer_timeout_is_refused(output: Output, timeout: int) -> None:
    before = writer_threads()
    with pytest.raises(IllegalStateError, match=str(timeout)):
        create_record_writer(output.partition, IntSerializer(), buffer_timeout_ms=timeout)
    assert writer_threads() == before


# -- flushing ----------------------------------------------------------------------------------


def test_positive_timeout_runs_a_named_flusher_that_close_stops(output: Output) -> None:
    before = writer_threads()
    writer = create_record_writer(output.partition, IntSerializer(), None, 50, "Map (1/2)")
    started = writer_threads() - before
    assert [t.name for t in started] == ["OutputFlusher for Map (1/2)"]
    (thread,) = started
    assert thread.daemon
    writer.close()
    assert not thread.is_alive()
    writer.close()  # idempotent


@pytest.mark.parametrize("timeout", [0, -1])
def test_no_flusher_thread_without_a_positive_timeout(output: Output, timeout: int) -> None:
    before = writer_threads()
    writer = create_record_writer(output.partition, IntSerializer(), None, timeout, "t")
    assert writer_threads() == before
    assert writer.flush_always is (timeout == 0)
    writer.close()


class CountingListener:
    def __init__(self) -> None:
        self.notifications = 0

    def notify_data_available(self) -> None:
        self.notifications += 1


def read_available(view: PipelinedSubpartitionView) -> bytes:
    """The data bytes the reader of ``view`` is told it may read now, and no more."""
    data = bytearray()
    while view.is_available() and (polled := view.get_next_buffer()) is not None:
        assert polled.buffer.is_buffer
        data += polled.buffer.memory
        polled.buffer.recycle()
    return bytes(data)


@pytest.mark.parametrize(
    ("serializer", "record"), [(IntSerializer(), 5), (BytesSerializer(), b"five")], ids=repr
)
def test_zero_timeout_makes_every_record_readable(
    serializer: TypeSerializer[object], record: object
) -> None:
    """Each emit and each emit_batch is readable at once, before any flush or finish."""
    out = Output(2)
    listeners = [CountingListener(), CountingListener()]
    views = [out.partition.create_subpartition_view(i, listeners[i]) for i in range(2)]
    writer = create_record_writer(out.partition, serializer, RescalePartitioner(), 0)
    for target in (0, 1, 0):
        writer.emit(record)
        assert records_in(serializer, read_available(views[target])) == [record]
        assert read_available(views[1 - target]) == b""
    told = [listener.notifications for listener in listeners]
    writer.emit_batch([record, record, record])  # channels 1, 0, 1
    assert [listener.notifications for listener in listeners] == [n + 1 for n in told]
    assert records_in(serializer, read_available(views[0])) == [record]
    assert records_in(serializer, read_available(views[1])) == [record, record]
    out.partition.finish()
    for view in views:
        polled = view.get_next_buffer()  # nothing was held back: the end comes next
        assert polled is not None
        assert isinstance(deserialize_event(polled.buffer.memory), EndOfPartitionEvent)
        polled.buffer.recycle()
        view.release_all_resources()
    out.partition.close()
    assert out.network_pool.available_segments == out.network_pool.total_segments


def test_without_flushing_a_partial_buffer_is_not_readable() -> None:
    out = Output(1)
    writer = create_record_writer(out.partition, IntSerializer(), None, -1)
    writer.emit(1)
    subpartition = out.partition.subpartitions[0]
    assert not subpartition.is_data_available()
    writer.flush_all()
    assert subpartition.is_data_available()
    out.finish_and_drain()


def test_a_flusher_failure_surfaces_on_the_next_emit(
    output: Output, monkeypatch: pytest.MonkeyPatch
) -> None:
    failure = OSError("disk on fire")
    attempted = threading.Event()
    go = threading.Event()

    def failing_flush_all() -> None:
        go.wait(JOIN_TIMEOUT)  # fail only once the test holds the thread
        attempted.set()
        raise failure

    monkeypatch.setattr(output.partition, "flush_all", failing_flush_all)
    writer = create_record_writer(output.partition, IntSerializer(), None, 1, "failing-task")
    (flusher,) = [t for t in writer_threads() if t.name == "OutputFlusher for failing-task"]
    go.set()
    assert attempted.wait(JOIN_TIMEOUT)
    flusher.join(JOIN_TIMEOUT)  # a failed flusher stops after handing over its error
    assert not flusher.is_alive()
    emits: list[Callable[[], None]] = [
        lambda: writer.emit(1),
        lambda: writer.emit_batch([1, 2]),
        lambda: writer.broadcast_emit(3),
        lambda: writer.broadcast_event(CancelCheckpointMarker(1)),
    ]
    for emit in emits:
        with pytest.raises(TaskError, match="flushing the outputs") as raised:
            emit()
        assert raised.value.__cause__ is failure
    assert writer.num_records_out == 0
    writer.close()


def test_a_broadcast_writer_reports_a_flusher_failure(
    output: Output, monkeypatch: pytest.MonkeyPatch
) -> None:
    failure = RuntimeError("flush failed")
    attempted = threading.Event()
    go = threading.Event()

    def failing_flush_all() -> None:
        go.wait(JOIN_TIMEOUT)  # fail only once the test holds the thread
        attempted.set()
        raise failure

    monkeypatch.setattr(output.partition, "flush_all", failing_flush_all)
    writer = create_record_writer(
        output.partition, IntSerializer(), BroadcastPartitioner(), 1, "bcast-task"
    )
    (flusher,) = [t for t in writer_threads() if t.name == "OutputFlusher for bcast-task"]
    go.set()
    assert attempted.wait(JOIN_TIMEOUT)
    flusher.join(JOIN_TIMEOUT)
    with pytest.raises(TaskError) as raised:
        writer.emit(1)
    assert raised.value.__cause__ is failure
    with pytest.raises(TaskError):
        writer.emit_batch([1])
    writer.close()


# -- after the partition ends ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("serializer", "record"),
    [(IntSerializer(), 1), (BytesSerializer(), b"r"), (GenericSerializer(), 1)],
    ids=repr,
)
def test_emitting_into_a_released_partition_fails(
    serializer: TypeSerializer[object], record: object
) -> None:
    out = Output(2, segment_size=64)
    writer: RecordWriter[object] = create_record_writer(
        out.partition, serializer, RescalePartitioner(), -1
    )
    writer.emit(record)
    writer.emit(record)  # both channels have an open buffer
    out.partition.release()
    with pytest.raises(PartitionReleasedError):
        writer.emit_batch([record, record])
    with pytest.raises(PartitionReleasedError):
        writer.broadcast_emit(record)
    # emit may finish filling the open buffer, but fails when it needs the next one
    with pytest.raises(PartitionReleasedError):
        for _ in range(2 * 64):
            writer.emit(record)
    out.partition.close()
    assert out.network_pool.available_segments == out.network_pool.total_segments


def test_emitting_into_a_finished_partition_fails(output: Output) -> None:
    writer = create_record_writer(output.partition, IntSerializer(), RescalePartitioner(), -1)
    writer.emit(1)
    output.partition.finish()
    with pytest.raises(IllegalStateError, match="finished"):
        writer.emit(2)
    with pytest.raises(IllegalStateError, match="finished"):
        writer.emit_batch([2])


# -- bad records -------------------------------------------------------------------------------


@pytest.mark.parametrize("bad", [2**64, -(2**63) - 1, "seven", 1.5, None, np.uint64(2**63)])
def test_a_bad_record_in_a_batch_is_a_serialization_error(output: Output, bad: object) -> None:
    writer = create_record_writer(output.partition, IntSerializer(), RescalePartitioner(), -1)
    with pytest.raises(SerializationError):
        writer.emit_batch([1, bad])  # type: ignore[list-item]


@pytest.mark.parametrize("timeout", [-1, 0])
@pytest.mark.parametrize("bad", [2**64, "seven", np.uint64(2**63)])
def test_a_bad_record_in_emit_is_a_serialization_error(
    output: Output, bad: object, timeout: int
) -> None:
    writer = create_record_writer(output.partition, IntSerializer(), RescalePartitioner(), timeout)
    writer.emit(1)  # an open buffer: the record would take the fast path
    with pytest.raises(SerializationError):
        writer.emit(bad)  # type: ignore[arg-type]
    with pytest.raises(SerializationError):
        writer.broadcast_emit(bad)  # type: ignore[arg-type]


def missing_key(record: dict[str, int]) -> int:
    return record["k"]


@pytest.mark.parametrize("timeout", [-1, 0, 100])
@pytest.mark.parametrize(
    "selector",
    [
        lambda: KeyGroupStreamPartitioner(missing_key, max_parallelism=128),
        lambda: CustomPartitionerWrapper(lambda _key, _n: 7, lambda _record: 0),
    ],
)
def test_one_channel_asks_the_selector_on_every_path(
    selector: Callable[[], ChannelSelector[object]], timeout: int
) -> None:
    # A key selector's error (or a custom partitioner's bad answer) does not depend on
    # the path the record takes, nor on there being one channel, as in Flink.
    out = Output(1)
    writer = create_record_writer(out.partition, GenericSerializer(), selector(), timeout)
    try:
        for write in (writer.emit, lambda record: writer.emit_batch([record])):
            with pytest.raises((KeyError, IllegalStateError)):
                write({"no key": 1})
    finally:
        writer.close()


class CountingRebalance(RebalancePartitioner[int]):
    calls = 0

    def select_channel(self, record: int) -> int:
        CountingRebalance.calls += 1
        return super().select_channel(record)


def test_one_channel_does_not_ask_routing_that_never_reads_records() -> None:
    # Nothing to learn from it, and a call per record on the path of every N-to-1 edge.
    out = Output(1)
    writer = create_record_writer(out.partition, IntSerializer(), CountingRebalance(), -1)
    for record in range(10):
        writer.emit(record)
    assert CountingRebalance.calls == 0
    (drained,) = out.finish_and_drain()
    assert records_in(IntSerializer(), drained.data) == list(range(10))


@pytest.mark.parametrize("bad", [12345, "text"])
def test_a_non_bytes_record_for_bytes_serializer_is_a_serialization_error(bad: object) -> None:
    out = Output(1, segment_size=16)
    writer = create_record_writer(out.partition, BytesSerializer(), None, -1)
    writer.emit(b"0123456")  # 11 of 16 bytes used: the next record does not fit
    with pytest.raises(SerializationError):
        writer.emit(bad)  # type: ignore[arg-type]
    (drained,) = out.finish_and_drain()
    assert records_in(BytesSerializer(), drained.data) == [b"0123456"]


@pytest.mark.parametrize("segment_size", [16, 64])
def test_a_memoryview_of_wider_items_is_written_as_its_bytes(segment_size: int) -> None:
    out = Output(1, segment_size=segment_size)
    writer = create_record_writer(out.partition, BytesSerializer(), None, -1)
    record = memoryview(array.array("i", [1, 2, 3]))
    assert BytesSerializer().serialize(record) == record.tobytes()  # 12 bytes
    writer.emit(cast("bytes", record))
    writer.emit(b"after")
    (drained,) = out.finish_and_drain()
    assert records_in(BytesSerializer(), drained.data) == [record.tobytes(), b"after"]


def test_a_failed_construction_leaves_no_flusher_running(output: Output) -> None:
    before = writer_threads()
    with pytest.raises(ConfigurationError):
        create_record_writer(
            output.partition,
            IntSerializer(),
            KeyGroupStreamPartitioner[int](identity, max_parallelism=2),  # 3 channels
            buffer_timeout_ms=100,
            task_name="doomed",
        )
    leaked = writer_threads() - before
    for flusher in gc.get_objects():  # stop a leaked flusher, whatever the outcome
        if isinstance(flusher, OutputFlusher) and flusher.is_alive and leaked:
            flusher.terminate()
    assert not leaked


class HugePayloads(GenericSerializer):
    """Serializes every record to 2 GiB of untouched anonymous memory."""

    def serialize(self, record: object) -> bytes:
        return cast(bytes, mmap.mmap(-1, 2**31))


@pytest.mark.parametrize("timeout", [-1, 0])
def test_a_payload_too_large_for_its_length_prefix_is_a_serialization_error(
    timeout: int,
) -> None:
    # A frame's length is a signed 32-bit int: 2 GiB cannot be announced.
    out = Output(1)
    writer = create_record_writer(out.partition, HugePayloads(), None, timeout)
    try:
        for write in (writer.emit, writer.broadcast_emit):
            with pytest.raises(SerializationError, match="larger than the maximum"):
                write(b"huge")
    finally:
        writer.close()
    (drained,) = out.finish_and_drain()
    assert drained.data == b""  # nothing of the refused records was written


class UpperBytes(BytesSerializer):
    """A bytes serializer of its own: payloads are upper-cased."""

    def serialize(self, record: bytes | bytearray | memoryview) -> bytes:
        return bytes(record).upper()


@pytest.mark.parametrize("timeout", [-1, 0, 100])
def test_a_bytes_serializer_of_its_own_is_asked_on_every_path(timeout: int) -> None:
    out = Output(1)
    writer = create_record_writer(out.partition, UpperBytes(), None, timeout)
    try:
        writer.emit(b"ab")
        writer.emit(b"cd")
    finally:
        writer.close()
    (drained,) = out.finish_and_drain()
    assert records_in(BytesSerializer(), drained.data) == [b"AB", b"CD"]


def test_a_flusher_of_the_longest_timeout_waits_instead_of_failing(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # execution.buffer-timeout takes any positive long, as in Flink: longer than a
    # thread can wait at once is as good as never.
    failures: list[BaseException | None] = []
    monkeypatch.setattr(threading, "excepthook", lambda args: failures.append(args.exc_value))
    flusher = OutputFlusher("OutputFlusher for test", 2**63 - 1, lambda: None, failures.append)
    flusher.start()
    assert flusher.is_alive
    flusher.terminate()
    assert failures == []
