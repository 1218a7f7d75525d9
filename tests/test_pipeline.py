"""LocalPipeline end to end: order, buffer timeout, backpressure, corrupt bytes, failures."""

from __future__ import annotations

import itertools
import struct
import threading
from collections.abc import Callable, Iterator
from typing import TypeVar

import pytest

from penstock.consumer.input_gate import BufferOrEvent
from penstock.errors import CorruptRecordError, ProducerFailedError
from penstock.events import EndOfPartitionEvent
from penstock.memory.network_pool import NetworkBufferPool
from penstock.partition.result_partition import ResultPartition
from penstock.serialization.types import (
    BytesSerializer,
    GenericSerializer,
    IntSerializer,
    TypeSerializer,
)
from penstock.testing.pipeline import LocalPipeline, PipelineOptions
from penstock.writer.partitioners import (
    ChannelSelector,
    KeyGroupStreamPartitioner,
    RescalePartitioner,
)

T = TypeVar("T")

WAIT = 10.0  # generous bound for anything that happens on another thread


def frame(payload: bytes) -> bytes:
    return struct.pack(">i", len(payload)) + payload


def flusher_threads() -> set[threading.Thread]:
    return {t for t in threading.enumerate() if t.name.startswith("OutputFlusher")}


def run_in_thread(action: Callable[[], object]) -> tuple[threading.Thread, list[BaseException]]:
    """Starts ``action`` on a thread; the list receives what it raised."""
    errors: list[BaseException] = []

    def target() -> None:
        try:
            action()
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=target, name="test-consumer", daemon=True)
    thread.start()
    return thread, errors


class Pipelines:
    """Makes pipelines on network pools it owns and checks every segment came back."""

    def __init__(self) -> None:
        self.network_pools: dict[int, NetworkBufferPool] = {}
        self.pipelines: list[LocalPipeline[object]] = []

    def make(
        self,
        serializer: TypeSerializer[T],
        selector: ChannelSelector[T] | None = None,
        **options: int,
    ) -> LocalPipeline[T]:
        segment_size = options.setdefault("segment_size", 1024)
        network_pool = self.network_pools.setdefault(
            segment_size, NetworkBufferPool(256, segment_size)
        )
        pipeline = LocalPipeline(
            serializer, selector, PipelineOptions(**options), network_pool=network_pool
        )
        self.pipelines.append(pipeline)  # type: ignore[arg-type]
        return pipeline

    def close(self) -> None:
        for pipeline in self.pipelines:
            pipeline.close()
        # invariant 5: finished, failed or corrupt, every segment is back
        for network_pool in self.network_pools.values():
            assert network_pool.available_segments == network_pool.total_segments


@pytest.fixture
def pipelines() -> Iterator[Pipelines]:
    made = Pipelines()
    yield made
    made.close()


# -- every record once and in order --------------------------------------------------------------


@pytest.mark.parametrize("batch_size", [0, 1, 37, 500])
@pytest.mark.parametrize("timeout", [-1, 0, 5])
def test_int_records_arrive_in_order_per_channel(
    pipelines: Pipelines, batch_size: int, timeout: int
) -> None:
    count = 4000 if timeout != 0 else 800
    pipeline = pipelines.make(
        IntSerializer(), RescalePartitioner(), num_channels=3, buffer_timeout_ms=timeout
    )
    received = pipeline.run(range(count), batch_size=batch_size)
    assert received == [list(range(channel, count, 3)) for channel in range(3)]


def first_field(record: object) -> object:
    assert isinstance(record, tuple)
    return record[0]


def test_large_records_spanning_buffers_arrive_whole(pipelines: Pipelines) -> None:
    # 1 KiB segments; records up to ~3 KiB span up to four buffers
    records = [(f"key{i % 7}", bytes([i % 256]) * (i * 37 % 3000)) for i in range(300)]
    selector: KeyGroupStreamPartitioner[object] = KeyGroupStreamPartitioner(first_field)
    pipeline = pipelines.make(GenericSerializer(), selector, num_channels=4, buffer_timeout_ms=-1)
    received = pipeline.run(records, batch_size=16)
    routing = selector.copy()
    routing.setup(4)
    expected: list[list[object]] = [[] for _ in range(4)]
    for record in records:
        expected[routing.select_channel(record)].append(record)
    assert received == expected


def test_run_in_one_thread_counts_every_record(pipelines: Pipelines) -> None:
    pipeline = pipelines.make(IntSerializer(), RescalePartitioner(), num_channels=2)
    assert pipeline.run_in_one_thread(list(range(1000)), chunk_size=100) == [500, 500]


def test_a_producer_failure_fails_the_run_with_its_cause(pipelines: Pipelines) -> None:
    cause = ValueError("bad input record")

    def records() -> Iterator[int]:
        yield from range(500)
        raise cause

    pipeline = pipelines.make(IntSerializer(), num_channels=2, buffer_timeout_ms=-1)
    with pytest.raises(ProducerFailedError) as raised:
        pipeline.run(records())
    assert raised.value.__cause__ is cause


# -- buffer timeout ------------------------------------------------------------------------------


def one_record(item: BufferOrEvent | None, pipeline: LocalPipeline[int]) -> list[int]:
    assert item is not None
    assert item.buffer is not None
    return pipeline.deserializers[item.channel_index].read_buffer(item.buffer)


def test_buffer_timeout_100_ms_flushes_a_lone_record_soon(
    pipelines: Pipelines, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The flusher is held right after one periodic flush while the test emits and looks,
    # so "not readable right after emit" does not depend on how fast this thread runs.
    armed = threading.Event()
    flushed = threading.Event()
    checked = threading.Event()
    flush_all = ResultPartition.flush_all

    def observed_flush_all(partition: ResultPartition) -> None:
        flush_all(partition)
        if armed.is_set() and not flushed.is_set():
            flushed.set()
            checked.wait(WAIT)

    monkeypatch.setattr(ResultPartition, "flush_all", observed_flush_all)
    before = flusher_threads()
    pipeline = pipelines.make(IntSerializer(), buffer_timeout_ms=100)
    assert len(flusher_threads() - before) == 1
    future = pipeline.gate.get_available_future()
    armed.set()
    assert flushed.wait(WAIT)
    try:
        pipeline.writer.emit(42)
        assert not future.done()  # not readable right after emit
        assert pipeline.gate.poll_next() is None
    finally:
        checked.set()
    future = pipeline.gate.get_available_future()
    future.result(timeout=2.0)  # readable after the next periodic flush, ~100 ms later
    assert one_record(pipeline.gate.poll_next(), pipeline) == [42]


def test_buffer_timeout_0_makes_a_record_readable_at_once(pipelines: Pipelines) -> None:
    before = flusher_threads()
    pipeline = pipelines.make(IntSerializer(), buffer_timeout_ms=0)
    assert flusher_threads() == before  # no flusher thread
    for value in range(3):
        pipeline.writer.emit(value)
        assert pipeline.gate.get_available_future().done()
        assert one_record(pipeline.gate.poll_next(), pipeline) == [value]
        assert pipeline.gate.poll_next() is None
    pipeline.writer.emit_batch([3, 4])
    assert pipeline.gate.get_available_future().done()
    assert one_record(pipeline.gate.poll_next(), pipeline) == [3, 4]


@pytest.fixture
def when_full(pipelines: Pipelines) -> LocalPipeline[int]:
    """A pipeline with buffer timeout -1 holding one unflushed record."""
    before = flusher_threads()
    pipeline = pipelines.make(IntSerializer(), buffer_timeout_ms=-1, segment_size=1024)
    assert flusher_threads() == before  # no flusher thread
    pipeline.writer.emit(0)
    future = pipeline.gate.get_available_future()
    with pytest.raises(TimeoutError):
        future.result(timeout=0.3)
    assert pipeline.gate.poll_next() is None
    return pipeline


def test_buffer_timeout_minus_1_flushes_when_the_next_buffer_is_taken(
    when_full: LocalPipeline[int],
) -> None:
    # 12-byte frames: 85 fit in a 1024-byte buffer, the 86th spans into the next one.
    gate = when_full.gate
    for value in range(1, 85):
        when_full.writer.emit(value)
        assert not gate.get_available_future().done(), value
    when_full.writer.emit(85)
    assert gate.get_available_future().done()
    assert one_record(gate.poll_next(), when_full) == list(range(85))
    assert gate.poll_next() is None  # record 85's last bytes are still in the open buffer


def test_buffer_timeout_minus_1_waits_for_the_next_buffer_after_an_exact_fill(
    pipelines: Pipelines,
) -> None:
    pipeline = pipelines.make(IntSerializer(), buffer_timeout_ms=-1, segment_size=1200)
    gate = pipeline.gate
    for value in range(100):  # exactly fills the first buffer
        pipeline.writer.emit(value)
    assert not gate.get_available_future().done()
    pipeline.writer.emit(100)  # takes the next buffer
    assert gate.get_available_future().done()
    assert one_record(gate.poll_next(), pipeline) == list(range(100))


def test_buffer_timeout_minus_1_flushes_on_flush_all(when_full: LocalPipeline[int]) -> None:
    when_full.writer.flush_all()
    assert when_full.gate.get_available_future().done()
    assert one_record(when_full.gate.poll_next(), when_full) == [0]


def test_buffer_timeout_minus_1_flushes_on_finish(when_full: LocalPipeline[int]) -> None:
    when_full.partition.finish()
    assert when_full.gate.get_available_future().done()
    assert one_record(when_full.gate.poll_next(), when_full) == [0]
    item = when_full.gate.poll_next()
    assert item is not None
    assert isinstance(item.event, EndOfPartitionEvent)
    assert when_full.gate.is_finished()


# -- backpressure ----------------------------------------------------------------------------


class BlockedSignal:
    """The partition's backpressure timer: tells the test when the producer blocks."""

    def __init__(self) -> None:
        self.blocked = threading.Event()
        self.times_blocked = 0

    def start(self) -> None:
        self.times_blocked += 1
        self.blocked.set()

    def stop(self) -> None:
        pass


@pytest.mark.parametrize("num_channels", [1, 3])
def test_a_slow_consumer_blocks_the_producer_in_the_pool(num_channels: int) -> None:
    network_pool = NetworkBufferPool(64, 128)
    pipeline = LocalPipeline(
        IntSerializer(),
        RescalePartitioner(),
        PipelineOptions(
            num_channels=num_channels,
            buffer_timeout_ms=-1,
            segment_size=128,  # ten 12-byte frames per buffer
            floating_buffers_per_gate=2,
            max_overdraft_buffers=0,
        ),
        network_pool=network_pool,
    )
    pool = pipeline.partition.buffer_pool
    signal = BlockedSignal()
    pipeline.partition.backpressure_timer = signal
    count = 5000
    held_steps = 25

    # The consumer reads one buffer per permit, then runs free once released.
    permits = threading.Semaphore(0)
    step_done = threading.Semaphore(0)
    free_run = threading.Event()
    used_samples: list[int] = []
    received: list[list[int]] = [[] for _ in range(num_channels)]

    def consume() -> None:
        gate = pipeline.gate
        while True:
            if not free_run.is_set():
                assert permits.acquire(timeout=WAIT)
            item = gate.get_next(timeout=WAIT)
            if item is None:
                assert gate.is_finished()
                return
            index = item.channel_index
            if item.buffer is not None:
                received[index] += pipeline.deserializers[index].read_buffer(item.buffer)
            else:
                pipeline.deserializers[index].check_end()
            used_samples.append(pool.used_buffers)
            step_done.release()

    producer, producer_errors = run_in_thread(lambda: pipeline.produce(range(count)))
    consumer, consumer_errors = run_in_thread(consume)
    try:
        for _ in range(held_steps):
            # The consumer holds: the producer fills the pool and blocks inside it.
            assert signal.blocked.wait(WAIT)
            assert not pool.is_available()
            assert not pipeline.writer.is_available()
            assert pool.used_buffers == pool.num_buffers <= pool.max_size
            assert producer.is_alive()
            assert not pipeline.partition.is_finished
            # One step: the consumer recycles one buffer, the producer takes it and
            # blocks again.
            signal.blocked.clear()
            permits.release()
            assert step_done.acquire(timeout=WAIT)
    finally:
        free_run.set()
        permits.release()
        producer.join(WAIT)
        consumer.join(WAIT)
    assert not producer.is_alive()
    assert not consumer.is_alive()
    assert producer_errors == []
    assert consumer_errors == []
    assert signal.times_blocked > held_steps
    assert used_samples
    assert max(used_samples) <= pool.max_size
    assert received == [
        list(range(channel, count, num_channels)) for channel in range(num_channels)
    ]
    pipeline.close()
    assert network_pool.available_segments == network_pool.total_segments


# -- corrupt bytes end to end ------------------------------------------------------------------


def consume_in_thread(pipeline: LocalPipeline[T]) -> BaseException:
    """Runs the pipeline's consumer on a thread and returns what it raised, in bounded time."""
    consumer, errors = run_in_thread(pipeline.consume)
    consumer.join(WAIT)
    assert not consumer.is_alive(), "the consumer hung on corrupt input"
    assert len(errors) == 1
    return errors[0]


@pytest.mark.parametrize(
    "corrupt",
    [
        pytest.param(struct.pack(">i", -12345) + b"junk", id="negative-length"),
        pytest.param(struct.pack(">i", -1), id="negative-length-alone"),
        pytest.param(struct.pack(">i", 100) + b"only ten b", id="ends-inside-a-record"),
        pytest.param(b"\x00\x00", id="ends-inside-a-length-prefix"),
    ],
)
def test_corrupt_bytes_in_a_partition_fail_the_consumer(
    pipelines: Pipelines, corrupt: bytes
) -> None:
    pipeline = pipelines.make(BytesSerializer(), num_channels=2, buffer_timeout_ms=-1)
    partition = pipeline.partition
    partition.emit_record(frame(b"fine"), 0)
    partition.emit_record(frame(b"also fine") + corrupt, 1)
    partition.finish()
    error = consume_in_thread(pipeline)
    assert isinstance(error, CorruptRecordError)
    channel = pipeline.gate.channels[1]
    assert error.channel == channel.describe()
    assert channel.describe() in str(error)
    assert str(partition.partition_id) in str(error)


def test_a_wrong_length_on_a_fixed_size_channel_fails_the_consumer(pipelines: Pipelines) -> None:
    pipeline = pipelines.make(IntSerializer(), num_channels=1, buffer_timeout_ms=-1)
    pipeline.writer.emit(1)
    pipeline.partition.emit_record(struct.pack(">iq", 7, 2), 0)
    pipeline.partition.finish()
    error = consume_in_thread(pipeline)
    assert isinstance(error, CorruptRecordError)
    assert error.channel == pipeline.gate.channels[0].describe()


def test_corrupt_bytes_fail_a_run_even_with_the_producer_blocked(pipelines: Pipelines) -> None:
    # The producer never stops on its own; the consumer fails on the corrupt prefix, and
    # the run must release the producer (blocked on a full pool) instead of hanging.
    pipeline = pipelines.make(
        IntSerializer(), num_channels=1, buffer_timeout_ms=-1, floating_buffers_per_gate=2
    )

    def records() -> Iterator[int]:
        for value in itertools.count():
            if value == 100:
                pipeline.partition.emit_record(struct.pack(">i", -8) + bytes(8), 0)
            yield value

    runner, errors = run_in_thread(lambda: pipeline.run(records()))
    runner.join(WAIT)
    assert not runner.is_alive(), "the run hung on corrupt input"
    assert len(errors) == 1
    assert isinstance(errors[0], CorruptRecordError)
    assert errors[0].channel == pipeline.gate.channels[0].describe()
