"""LocalPipeline: a producer and a consumer joined by penstock's in-process data plane.

producer → ``RecordWriter`` → ``ResultPartition`` → ``LocalInputChannel`` ×
subpartitions → ``SingleInputGate`` → per-channel ``RecordDeserializer`` → consumer.

It is the smallest complete use of the stack and serves tests (every record once and
in order per channel, backpressure, recycling) and benchmarks (records/s through the
whole path). ``run`` uses a producer thread and a consumer thread, as a TaskManager
would; ``run_in_one_thread`` alternates between producing a chunk that fits in the
pool and draining it, to measure the per-record cost without thread hand-offs.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from penstock.consumer.input_gate import SingleInputGate
from penstock.consumer.local_channel import LocalInputChannel
from penstock.events import EndOfPartitionEvent
from penstock.ids import ResultPartitionID
from penstock.memory.network_pool import NetworkBufferPool
from penstock.partition.manager import ResultPartitionManager
from penstock.partition.result_partition import ResultPartition
from penstock.serialization.record_deserializer import RecordDeserializer
from penstock.serialization.types import TypeSerializer
from penstock.writer.partitioners import ChannelSelector
from penstock.writer.record_writer import RecordWriter, create_record_writer

__all__ = ["LocalPipeline", "PipelineOptions"]

T = TypeVar("T")

RecordSink = Callable[[int, list[T]], None]
"""Receives each channel's records as they are deserialized: (channel index, records)."""


@dataclass(frozen=True, slots=True)
class PipelineOptions:
    """The shape of a local pipeline; defaults are Flink's network defaults."""

    num_channels: int = 1
    buffer_timeout_ms: int = 100
    segment_size: int = 32 * 1024
    num_segments: int = 2048
    buffers_per_channel: int = 2
    floating_buffers_per_gate: int = 8
    max_buffers_per_channel: int = 10
    max_overdraft_buffers: int = 5


@dataclass(slots=True)
class _Received(Generic[T]):
    records: list[list[T]]
    counts: list[int]
    errors: list[BaseException] = field(default_factory=list)


class LocalPipeline(Generic[T]):
    """One producer writing to ``num_channels`` local channels of one consumer.

    Args:
        serializer: The record type's serializer (both ends).
        selector: Routes records to channels (round robin by default).
        options: Pool sizes, segment size, buffer timeout.
        network_pool: A pool to share (a TaskManager's); one of its own by default.
    """

    def __init__(
        self,
        serializer: TypeSerializer[T],
        selector: ChannelSelector[T] | None = None,
        options: PipelineOptions | None = None,
        network_pool: NetworkBufferPool | None = None,
    ) -> None:
        self.options = opts = options or PipelineOptions()
        self.serializer = serializer
        self.network_pool = network_pool or NetworkBufferPool(opts.num_segments, opts.segment_size)
        self._owns_pool = network_pool is None
        self.partition_manager = ResultPartitionManager()
        self.partition = ResultPartition.create(
            ResultPartitionID.generate(),
            opts.num_channels,
            self.network_pool,
            buffers_per_channel=opts.buffers_per_channel,
            floating_buffers_per_gate=opts.floating_buffers_per_gate,
            max_buffers_per_channel=opts.max_buffers_per_channel,
            max_overdraft_buffers=opts.max_overdraft_buffers,
            owner="producer",
        )
        self.partition_manager.register_result_partition(self.partition)
        self.writer: RecordWriter[T] = create_record_writer(
            self.partition, serializer, selector, opts.buffer_timeout_ms, "producer"
        )
        self.gate = SingleInputGate(owner="consumer")
        self.gate.set_channels(
            [
                LocalInputChannel(
                    self.gate, index, self.partition.partition_id, index, self.partition_manager
                )
                for index in range(opts.num_channels)
            ]
        )
        self.consumed_counts = [0] * opts.num_channels
        """Records deserialized per channel by ``consume`` so far."""
        self.deserializers = [
            RecordDeserializer(serializer, channel=channel.describe())
            for channel in self.gate.channels
        ]
        self.gate.request_partitions()

    # -- the two ends ----------------------------------------------------------------

    def produce(self, records: Iterable[T], batch_size: int = 0) -> None:
        """Writes ``records`` (one by one, or in lists of ``batch_size``) and finishes."""
        writer = self.writer
        try:
            if batch_size > 0:
                batch: list[T] = []
                for record in records:
                    batch.append(record)
                    if len(batch) == batch_size:
                        writer.emit_batch(batch)
                        batch = []
                if batch:
                    writer.emit_batch(batch)
            else:
                emit = writer.emit
                for record in records:
                    emit(record)
            self.partition.finish()
        except BaseException as exc:
            self.partition.fail(exc)
            raise
        finally:
            writer.close()

    def consume(self, sink: RecordSink[T] | None = None) -> list[int]:
        """Reads until every channel ended; returns the record count per channel.

        Raises:
            PenstockError: A channel failed or its bytes were corrupt.
        """
        counts = self.consumed_counts
        gate = self.gate
        deserializers = self.deserializers
        while True:
            item = gate.get_next()
            if item is None:
                return counts
            index = item.channel_index
            if item.buffer is not None:
                records = deserializers[index].read_buffer(item.buffer)
                counts[index] += len(records)
                if sink is not None and records:
                    sink(index, records)
            elif isinstance(item.event, EndOfPartitionEvent):
                deserializers[index].check_end()

    # -- whole runs ------------------------------------------------------------------

    def run(
        self,
        records: Iterable[T],
        batch_size: int = 0,
        collect: bool = True,
        sink: RecordSink[T] | None = None,
    ) -> list[list[T]]:
        """Produces on a producer thread and consumes on this one.

        Returns:
            The records each channel received, in order (empty lists unless ``collect``).

        Raises:
            BaseException: Whatever failed first, the producer or the consumer.
        """
        received: list[list[T]] = [[] for _ in range(self.options.num_channels)]

        def keep(index: int, chunk: list[T]) -> None:
            received[index].extend(chunk)

        chosen = sink if sink is not None else (keep if collect else None)
        producer_error: list[BaseException] = []

        def produce() -> None:
            try:
                self.produce(records, batch_size)
            except BaseException as exc:
                producer_error.append(exc)

        producer = threading.Thread(target=produce, name="pipeline-producer", daemon=True)
        producer.start()
        try:
            self.consume(chosen)
        except BaseException:
            # The consumer is gone: release the partition and destroy its pool, so a
            # producer blocked on a buffer wakes up instead of waiting forever.
            self.partition.release()
            self.partition.buffer_pool.destroy()
            producer.join(timeout=60)
            raise
        producer.join(timeout=60)
        if producer_error:
            raise producer_error[0]
        return received

    def run_in_one_thread(
        self, records: Sequence[T], chunk_size: int, batch: bool = False
    ) -> list[int]:
        """Alternates producing ``chunk_size`` records and draining them, in this thread.

        ``chunk_size`` must fit in the pool (a chunk that does not would block the only
        thread); a few buffers' worth is right.
        """
        counts = [0] * self.options.num_channels
        writer = self.writer
        gate = self.gate
        deserializers = self.deserializers
        emit = writer.emit
        try:
            for start in range(0, len(records), chunk_size):
                chunk = records[start : start + chunk_size]
                if batch:
                    writer.emit_batch(chunk)
                else:
                    for record in chunk:
                        emit(record)
                while (item := gate.poll_next()) is not None:
                    if item.buffer is not None:
                        index = item.channel_index
                        counts[index] += len(deserializers[index].read_buffer(item.buffer))
            self.partition.finish()
        finally:
            writer.close()
        while (item := gate.poll_next()) is not None:
            if item.buffer is not None:
                index = item.channel_index
                counts[index] += len(deserializers[index].read_buffer(item.buffer))
        return counts

    def close(self) -> None:
        """Releases the gate, the partition and (if it owns it) the network pool."""
        self.writer.close()
        self.gate.close()
        self.partition_manager.shutdown()
        self.partition.release()
        self.partition.close()
        if self._owns_pool:
            self.network_pool.destroy()

    def __enter__(self) -> LocalPipeline[T]:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
