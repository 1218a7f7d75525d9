"""The word-count demo that ``penstock run`` shows: a keyed stream through the data plane.

A producer thread writes a generated stream of words through a ``RecordWriter`` with a
``KeyGroupStreamPartitioner`` into a ``ResultPartition`` of four subpartitions; a consumer
thread reads them through four local input channels of a ``SingleInputGate``,
deserializes them and counts each word. Because the stream is keyed, every word reaches
exactly one channel, as it would reach one subtask of a keyed operator.

For part of the run the consumer is throttled to a fixed rate. Its channels then stop
returning buffers, the partition's ``LocalBufferPool`` runs dry, and the producer waits
for a segment: backpressure, with memory bounded by the pool. The calling thread samples
the partition while this happens and reports, once per tick, the records per second on
both ends, the output pool usage, the output queue length and how much of the tick the
producer spent backpressured, classified as Flink's web UI classifies it.

The demo measures time with a clock the caller passes in, so that it runs the same under
a fake clock in tests.
"""

from __future__ import annotations

import logging
import random
import threading
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Final

from penstock.config import Configuration, ShuffleOptions
from penstock.memory.network_pool import NetworkBufferPool
from penstock.serialization.types import StrSerializer
from penstock.testing.pipeline import LocalPipeline, PipelineOptions
from penstock.writer.partitioners import KeyGroupStreamPartitioner

__all__ = [
    "DEFAULT_RECORDS",
    "NUM_CHANNELS",
    "VOCABULARY",
    "DemoResult",
    "DemoSnapshot",
    "back_pressure_level",
    "generate_words",
    "pipeline_options",
    "run_demo",
]

logger = logging.getLogger(__name__)

DEFAULT_RECORDS: Final = 4_000_000
"""Records of a full run: about ten seconds on a small machine, slow phase included."""

NUM_CHANNELS: Final = 4
"""Subpartitions of the producer and channels of the consumer (the keyed parallelism)."""

DEFAULT_SLOW_FROM: Final = 0.3
DEFAULT_SLOW_UNTIL: Final = 0.5
DEFAULT_SLOW_RECORDS_PER_S: Final = 200_000.0

# Flink's web UI: backpressured at most 10% of the time is OK, at most 50% LOW.
_OK_RATIO: Final = 0.1
_LOW_RATIO: Final = 0.5

_BLOCK_SIZE: Final = 1 << 16
_SEED: Final = 20_240_917
# How long the calling thread waits for the ends to stop after a cancel before it
# releases the partition under a producer that is still blocked.
_JOIN_TIMEOUT_S: Final = 10.0

_TEXT: Final = """
    the water flows from the reservoir through the penstock to the turbine and the
    pressure of the water in the penstock turns the runner of the turbine while the gate
    at the intake keeps the flow bounded so that a slow turbine holds the water back in
    the reservoir instead of flooding the valley below the dam where the river runs on
    past the mill and the bridge toward the sea
    """
VOCABULARY: Final = tuple(dict.fromkeys(_TEXT.split()))
"""The distinct words of the stream; the earlier a word comes, the more often it occurs."""


def _identity(word: str) -> str:
    return word


def back_pressure_level(ratio: float) -> str:
    """Flink's web UI class of a backpressured-time ratio: OK, LOW or HIGH.

    Args:
        ratio: The fraction of the last interval the producer was backpressured, 0..1.
    """
    if ratio <= _OK_RATIO:
        return "OK"
    if ratio <= _LOW_RATIO:
        return "LOW"
    return "HIGH"


def generate_words(records: int, batch_size: int = 1000, seed: int = _SEED) -> Iterator[list[str]]:
    """The demo's stream: ``records`` words in lists of at most ``batch_size``.

    Words follow a Zipf-like distribution over ``VOCABULARY``; the same arguments always
    give the same stream.

    Raises:
        ValueError: ``records`` is negative or ``batch_size`` is not positive.
    """
    if records < 0:
        msg = f"the number of records must not be negative, got {records}"
        raise ValueError(msg)
    if batch_size < 1:
        msg = f"the batch size must be positive, got {batch_size}"
        raise ValueError(msg)
    weights = [1.0 / rank for rank in range(1, len(VOCABULARY) + 1)]
    # One block, drawn once and cycled: drawing millions of words would cost more
    # than the pipeline it feeds.
    block = random.Random(seed).choices(VOCABULARY, weights, k=_BLOCK_SIZE)
    emitted = 0
    position = 0
    while emitted < records:
        size = min(batch_size, records - emitted, _BLOCK_SIZE - position)
        yield block[position : position + size]
        emitted += size
        position = (position + size) % _BLOCK_SIZE


def pipeline_options(config: Configuration | None = None) -> PipelineOptions:
    """The demo pipeline's shape from ``config``'s network settings (Flink's defaults).

    Raises:
        ConfigurationError: The network settings contradict each other.
    """
    shuffle = ShuffleOptions.from_configuration(config or Configuration())
    return PipelineOptions(
        num_channels=NUM_CHANNELS,
        buffer_timeout_ms=shuffle.buffer_timeout_ms,
        segment_size=shuffle.segment_size,
        num_segments=shuffle.total_buffers,
        buffers_per_channel=shuffle.buffers_per_channel,
        floating_buffers_per_gate=shuffle.floating_buffers_per_gate,
        max_buffers_per_channel=shuffle.max_buffers_per_channel,
        max_overdraft_buffers=shuffle.max_overdraft_buffers_per_gate,
    )


@dataclass(frozen=True, slots=True)
class DemoSnapshot:
    """The pipeline over one tick of the live view.

    Attributes:
        elapsed_s: Seconds since the run started.
        records_out: Records written by the producer so far (``numRecordsOut``).
        records_in: Records read by the consumer so far (``numRecordsIn``).
        records_out_per_s: Producer rate over the tick.
        records_in_per_s: Consumer rate over the tick.
        out_pool_usage: Share of the output pool's buffers in use (``outPoolUsage``).
        output_queue_length: Buffers queued in the subpartitions (``outputQueueLength``).
        back_pressured_ratio: Share of the tick's samples in which the producer had no
            buffer available (``isBackPressured``).
        consumer_throttled: Whether the consumer is in its slow phase.
    """

    elapsed_s: float
    records_out: int
    records_in: int
    records_out_per_s: float
    records_in_per_s: float
    out_pool_usage: float
    output_queue_length: int
    back_pressured_ratio: float
    consumer_throttled: bool

    @property
    def back_pressure(self) -> str:
        """OK, LOW or HIGH, as Flink's web UI shows a vertex's backpressure."""
        return back_pressure_level(self.back_pressured_ratio)


@dataclass(frozen=True, slots=True)
class DemoResult:
    """What a demo run counted and measured.

    Attributes:
        records: Records the consumer received.
        seconds: Duration of the run by the caller's clock.
        word_counts: How often each word arrived.
        channel_words: The distinct words each channel received.
        segments_total: Segments of the network buffer pool.
        segments_returned: Segments back in the network buffer pool after the run.
        peak_back_pressure: The highest backpressured ratio of any tick.
    """

    records: int
    seconds: float
    word_counts: Mapping[str, int]
    channel_words: tuple[frozenset[str], ...]
    segments_total: int
    segments_returned: int
    peak_back_pressure: float

    @property
    def records_per_s(self) -> float:
        return self.records / self.seconds if self.seconds > 0 else 0.0

    @property
    def distinct_words(self) -> int:
        return len(self.word_counts)

    @property
    def all_segments_returned(self) -> bool:
        """Whether every segment is back in the pool (invariant 5 of the design)."""
        return self.segments_returned == self.segments_total

    def top_words(self, n: int = 5) -> list[tuple[str, int]]:
        """The ``n`` most frequent words with their counts, most frequent first."""
        return Counter(self.word_counts).most_common(n)


class _Run:
    """The state one run shares between the producer, the consumer and the monitor."""

    def __init__(
        self,
        pipeline: LocalPipeline[str],
        records: int,
        batch_size: int,
        slow_from: int,
        slow_until: int,
        slow_records_per_s: float,
    ) -> None:
        self.pipeline = pipeline
        self.records = records
        self.batch_size = batch_size
        self.slow_from = slow_from
        self.slow_until = slow_until
        self.slow_records_per_s = slow_records_per_s
        self.counters: list[Counter[str]] = [Counter() for _ in range(NUM_CHANNELS)]
        self.records_in = 0
        self.stop = threading.Event()
        self.done = threading.Event()
        self.errors: list[BaseException] = []

    @property
    def throttled(self) -> bool:
        return self.slow_from <= self.records_in < self.slow_until and not self.stop.is_set()

    def produce(self) -> None:
        pipeline = self.pipeline
        writer = pipeline.writer
        try:
            for batch in generate_words(self.records, self.batch_size):
                if self.stop.is_set():
                    break
                writer.emit_batch(batch)
            pipeline.partition.finish()
        except BaseException as exc:
            pipeline.partition.fail(exc)
            self.errors.append(exc)
        finally:
            writer.close()

    def receive(self, channel: int, words: list[str]) -> None:
        self.counters[channel].update(words)
        throttled = self.throttled
        self.records_in += len(words)
        if throttled:
            # The slow phase: hold the consumer as long as the rate allows. Waiting on
            # the stop event lets a cancel end the wait at once.
            self.stop.wait(len(words) / self.slow_records_per_s)

    def consume(self) -> None:
        try:
            self.pipeline.consume(self.receive)
        except BaseException as exc:
            self.errors.append(exc)
            # Nobody reads any more: release the partition so that a producer waiting
            # for a buffer fails instead of waiting forever.
            self.stop.set()
            self.pipeline.partition.release(exc)
            self.pipeline.partition.close()
        finally:
            self.done.set()


def run_demo(
    records: int = DEFAULT_RECORDS,
    *,
    clock: Callable[[], float],
    config: Configuration | None = None,
    on_tick: Callable[[DemoSnapshot], None] | None = None,
    tick_s: float = 1.0,
    sample_s: float = 0.02,
    slow_from: float = DEFAULT_SLOW_FROM,
    slow_until: float = DEFAULT_SLOW_UNTIL,
    slow_records_per_s: float = DEFAULT_SLOW_RECORDS_PER_S,
    batch_size: int = 1000,
) -> DemoResult:
    """Runs the keyed word count and returns what it counted.

    The producer and the consumer run on threads of their own; the calling thread
    samples backpressure every ``sample_s`` seconds and calls ``on_tick`` every
    ``tick_s`` seconds by ``clock``. A ``KeyboardInterrupt`` in the calling thread stops
    the producer, lets the consumer drain what was written, returns every segment to
    the pool and propagates.

    Args:
        records: Words to send.
        clock: Seconds as a float, monotonic (``time.perf_counter``).
        config: Network settings (segment size, buffers, buffer timeout).
        on_tick: Receives a snapshot of the pipeline once per tick.
        tick_s: Seconds between snapshots.
        sample_s: Seconds between backpressure samples.
        slow_from: Share of the records after which the consumer is throttled.
        slow_until: Share of the records after which it runs at full speed again.
        slow_records_per_s: The consumer's rate while throttled.
        batch_size: Records per ``emit_batch`` call of the producer.

    Raises:
        ValueError: A count, share or rate is out of range.
        ConfigurationError: ``config``'s network settings contradict each other.
        PenstockError: The producer or the consumer failed.
    """
    if records < 0:
        msg = f"the number of records must not be negative, got {records}"
        raise ValueError(msg)
    if not 0.0 <= slow_from <= slow_until <= 1.0:
        msg = f"need 0 <= slow_from <= slow_until <= 1, got {slow_from} and {slow_until}"
        raise ValueError(msg)
    if slow_records_per_s <= 0 or tick_s <= 0 or sample_s <= 0:
        msg = "slow_records_per_s, tick_s and sample_s must be positive"
        raise ValueError(msg)
    options = pipeline_options(config)
    network_pool = NetworkBufferPool(options.num_segments, options.segment_size)
    logger.info(
        "Word count demo: %d records over %d channels, %d segments of %d bytes",
        records,
        NUM_CHANNELS,
        options.num_segments,
        options.segment_size,
    )
    try:
        by_word: KeyGroupStreamPartitioner[str] = KeyGroupStreamPartitioner(_identity)
        pipeline = LocalPipeline(
            StrSerializer(),
            by_word,
            options,
            network_pool,
        )
        try:
            run = _Run(
                pipeline,
                records,
                batch_size,
                int(records * slow_from),
                int(records * slow_until),
                slow_records_per_s,
            )
            started = clock()
            peak = _monitor(run, clock, started, on_tick, tick_s, sample_s)
            seconds = clock() - started
        finally:
            pipeline.close()
        segments_returned = network_pool.available_segments
    finally:
        network_pool.destroy()
    if run.errors:
        raise run.errors[0]
    word_counts: Counter[str] = Counter()
    for counter in run.counters:
        word_counts.update(counter)
    logger.info("Word count demo finished: %d records in %.2f s", run.records_in, seconds)
    return DemoResult(
        records=run.records_in,
        seconds=seconds,
        word_counts=dict(word_counts),
        channel_words=tuple(frozenset(counter) for counter in run.counters),
        segments_total=network_pool.total_segments,
        segments_returned=segments_returned,
        peak_back_pressure=peak,
    )


def _monitor(
    run: _Run,
    clock: Callable[[], float],
    started: float,
    on_tick: Callable[[DemoSnapshot], None] | None,
    tick_s: float,
    sample_s: float,
) -> float:
    """Starts both ends, samples until the consumer is done; returns the peak ratio."""
    pipeline = run.pipeline
    partition = pipeline.partition
    writer = pipeline.writer
    producer = threading.Thread(target=run.produce, name="demo-producer", daemon=True)
    consumer = threading.Thread(target=run.consume, name="demo-consumer", daemon=True)
    peak = 0.0
    try:
        producer.start()
        consumer.start()
        last_tick = started
        last_out = last_in = 0
        samples = back_pressured = 0
        while not run.done.wait(sample_s):
            samples += 1
            back_pressured += not partition.is_available()
            now = clock()
            interval = now - last_tick
            if interval < tick_s:
                continue
            records_out = writer.num_records_out
            records_in = run.records_in
            ratio = back_pressured / samples
            peak = max(peak, ratio)
            if on_tick is not None:
                on_tick(
                    DemoSnapshot(
                        elapsed_s=now - started,
                        records_out=records_out,
                        records_in=records_in,
                        records_out_per_s=(records_out - last_out) / interval,
                        records_in_per_s=(records_in - last_in) / interval,
                        out_pool_usage=partition.out_pool_usage,
                        output_queue_length=partition.output_queue_length,
                        back_pressured_ratio=ratio,
                        consumer_throttled=run.throttled,
                    )
                )
            last_tick, last_out, last_in = now, records_out, records_in
            samples = back_pressured = 0
    finally:
        # Normally both ends are done here. After an interrupt, the producer stops at
        # its next batch and the consumer, no longer throttled, drains what was written.
        run.stop.set()
        producer.join(_JOIN_TIMEOUT_S)
        if producer.is_alive():
            partition.release()
            partition.close()
        consumer.join(_JOIN_TIMEOUT_S)
    return peak
