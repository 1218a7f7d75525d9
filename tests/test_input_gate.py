"""SingleInputGate, UnionInputGate and LocalInputChannel over real result partitions."""

from __future__ import annotations

import itertools
import struct
import threading
from collections.abc import Callable, Iterator
from typing import Any, ClassVar

import pytest

from penstock.consumer.input_gate import BufferOrEvent, SingleInputGate
from penstock.consumer.local_channel import LocalInputChannel
from penstock.consumer.union_gate import UnionInputGate
from penstock.errors import (
    IllegalStateError,
    PartitionConsumedError,
    PartitionNotFoundError,
    ProducerFailedError,
    TaskCancelledError,
)
from penstock.events import CancelCheckpointMarker, EndOfPartitionEvent
from penstock.ids import ResultPartitionID
from penstock.memory.network_pool import NetworkBufferPool
from penstock.partition.manager import ResultPartitionManager
from penstock.partition.result_partition import ResultPartition
from penstock.partition.subpartition import BufferAvailabilityListener
from penstock.partition.view import PipelinedSubpartitionView
from penstock.serialization.record_deserializer import RecordDeserializer
from penstock.serialization.types import BytesSerializer
from wait_helpers import signal_on_pending_future

SEGMENT_SIZE = 64
WAIT = 10.0  # generous bound for anything that happens on another thread


def full_buffer_record(tag: int) -> bytes:
    """A frame that fills one segment exactly: each emit finishes one buffer."""
    return struct.pack(">i", SEGMENT_SIZE - 4) + bytes([tag]) * (SEGMENT_SIZE - 4)


def small_record(tag: int) -> bytes:
    return struct.pack(">i", 1) + bytes([tag])


class CountingManager(ResultPartitionManager):
    """Counts view requests and signals each one."""

    def __init__(self) -> None:
        super().__init__()
        self.requests = 0
        self.requested = threading.Semaphore(0)

    def create_subpartition_view(
        self,
        partition_id: ResultPartitionID,
        subpartition_index: int,
        listener: BufferAvailabilityListener,
    ) -> PipelinedSubpartitionView:
        self.requests += 1
        try:
            return super().create_subpartition_view(partition_id, subpartition_index, listener)
        finally:
            self.requested.release()


class Setup:
    """One producer partition registered in a manager, and a gate reading all of it."""

    def __init__(
        self,
        num_channels: int,
        register: bool = True,
        initial_backoff_ms: int = 100,
        max_backoff_ms: int = 10_000,
        owner: str = "consumer",
    ) -> None:
        self.network_pool = NetworkBufferPool(128, SEGMENT_SIZE)
        self.manager = CountingManager()
        self.partition = ResultPartition.create(
            ResultPartitionID.generate(),
            num_channels,
            self.network_pool,
            floating_buffers_per_gate=64,
            owner="producer",
        )
        if register:
            self.manager.register_result_partition(self.partition)
        self.gate = make_gate(
            self.manager,
            self.partition.partition_id,
            num_channels,
            initial_backoff_ms,
            max_backoff_ms,
            owner,
        )

    def close(self) -> None:
        self.gate.close()
        self.manager.shutdown()
        self.partition.release()
        self.partition.close()
        assert self.network_pool.available_segments == self.network_pool.total_segments


def make_gate(
    manager: ResultPartitionManager,
    partition_id: ResultPartitionID,
    num_channels: int,
    initial_backoff_ms: int = 100,
    max_backoff_ms: int = 10_000,
    owner: str = "consumer",
) -> SingleInputGate:
    gate = SingleInputGate(owner=owner)
    gate.set_channels(
        [
            LocalInputChannel(
                gate, index, partition_id, index, manager, initial_backoff_ms, max_backoff_ms
            )
            for index in range(num_channels)
        ]
    )
    return gate


@pytest.fixture
def setup3() -> Iterator[Setup]:
    setup = Setup(3)
    setup.gate.request_partitions()
    yield setup
    setup.close()


def poll_all(gate: SingleInputGate | UnionInputGate) -> list[BufferOrEvent]:
    """Everything readable now; recycles the buffers."""
    items = []
    while (item := gate.poll_next()) is not None:
        if item.buffer is not None:
            item.buffer.recycle()
        items.append(item)
    return items


def read_to_end(gate: SingleInputGate | UnionInputGate) -> dict[int, list[bytes]]:
    """Records per channel index until the gate is finished (bounded wait per item)."""
    deserializers: dict[int, RecordDeserializer[bytes]] = {}
    records: dict[int, list[bytes]] = {}
    while True:
        item = gate.get_next(timeout=WAIT)
        if item is None:
            assert gate.is_finished(), "timed out waiting for the gate"
            return records
        deserializer = deserializers.setdefault(
            item.channel_index, RecordDeserializer(BytesSerializer())
        )
        if item.buffer is not None:
            records.setdefault(item.channel_index, []).extend(deserializer.read_buffer(item.buffer))
        elif isinstance(item.event, EndOfPartitionEvent):
            deserializer.check_end()


# -- round robin -------------------------------------------------------------------------------


def test_channels_with_more_data_go_back_to_the_tail(setup3: Setup) -> None:
    partition = setup3.partition
    gate = setup3.gate
    # channel 0: three full buffers (told when its second buffer is added)
    for _ in range(3):
        partition.emit_record(full_buffer_record(0), 0)
    # channel 1: one full buffer, made known by a flush below
    partition.emit_record(full_buffer_record(1), 1)
    # channel 2: two full buffers (told when its second buffer is added)
    for _ in range(2):
        partition.emit_record(full_buffer_record(2), 2)
    partition.flush(1)
    assert gate.get_available_future().done()
    items = poll_all(gate)
    assert [item.channel_index for item in items] == [0, 2, 1, 0, 2, 0]
    assert all(item.is_buffer for item in items)
    assert [item.more_available for item in items] == [True, True, True, True, True, False]
    assert not gate.get_available_future().done()  # empty again: pending


def test_a_busy_channel_does_not_starve_the_others(setup3: Setup) -> None:
    partition = setup3.partition
    for _ in range(6):
        partition.emit_record(full_buffer_record(0), 0)
    partition.emit_record(full_buffer_record(1), 1)
    partition.emit_record(full_buffer_record(1), 1)
    partition.flush_all()
    order = [item.channel_index for item in poll_all(setup3.gate)]
    assert order[:4] == [0, 1, 0, 1]
    assert sorted(order) == [0] * 6 + [1] * 2


def test_the_gate_future_completes_when_data_arrives(setup3: Setup) -> None:
    gate = setup3.gate
    assert gate.poll_next() is None
    future = gate.get_available_future()
    assert not future.done()
    setup3.partition.emit_record(small_record(9), 2)
    assert not future.done()  # written, not flushed
    setup3.partition.flush(2)
    future.result(timeout=0)
    item = gate.poll_next()
    assert item is not None
    assert item.channel_index == 2
    assert item.buffer is not None
    assert bytes(item.buffer.memory) == small_record(9)
    item.buffer.recycle()


def test_get_next_waits_for_a_producer_thread(setup3: Setup) -> None:
    gate = setup3.gate
    assert gate.poll_next() is None

    def produce() -> None:
        setup3.partition.emit_record(small_record(4), 1)
        setup3.partition.flush_all()

    producer = threading.Thread(target=produce)
    producer.start()
    item = gate.get_next(timeout=WAIT)
    producer.join(WAIT)
    assert item is not None
    assert item.channel_index == 1
    assert item.buffer is not None
    item.buffer.recycle()


def test_get_next_times_out_with_none_while_not_finished(setup3: Setup) -> None:
    assert setup3.gate.get_next(timeout=0.01) is None
    assert not setup3.gate.is_finished()


def test_events_come_through_in_order_with_the_data(setup3: Setup) -> None:
    partition = setup3.partition
    partition.emit_record(small_record(1), 0)
    partition.broadcast_event(CancelCheckpointMarker(3))
    items = poll_all(setup3.gate)
    by_channel: dict[int, list[object]] = {}
    for item in items:
        by_channel.setdefault(item.channel_index, []).append(
            "data" if item.is_buffer else item.event
        )
    assert by_channel == {
        0: ["data", CancelCheckpointMarker(3)],
        1: [CancelCheckpointMarker(3)],
        2: [CancelCheckpointMarker(3)],
    }
    assert all(item.buffer is None for item in items if item.event is not None)


# -- end of partition --------------------------------------------------------------------------


def test_end_of_partition_on_every_channel_finishes_the_gate(setup3: Setup) -> None:
    partition = setup3.partition
    gate = setup3.gate
    for channel in range(3):
        partition.emit_record(small_record(channel), channel)
    partition.finish()
    assert read_to_end(gate) == {0: [b"\x00"], 1: [b"\x01"], 2: [b"\x02"]}
    assert gate.is_finished()
    assert gate.get_next() is None
    assert gate.get_next(timeout=0) is None
    assert gate.poll_next() is None
    assert gate.get_available_future().done()  # a finished gate never makes a task wait
    assert all(channel.is_released for channel in gate.channels)
    # read to the end: the manager has let go of the partition
    assert setup3.manager.partition_ids == []


def test_the_gate_is_not_finished_until_every_channel_ended(setup3: Setup) -> None:
    partition = setup3.partition
    gate = setup3.gate
    partition.subpartitions[0].finish()
    partition.subpartitions[2].finish()
    items = poll_all(gate)
    assert sorted(item.channel_index for item in items) == [0, 2]
    assert all(isinstance(item.event, EndOfPartitionEvent) for item in items)
    assert not gate.is_finished()
    assert gate.get_next(timeout=0.01) is None
    assert not gate.get_available_future().done()
    partition.subpartitions[1].finish()
    item = gate.get_next(timeout=WAIT)
    assert item is not None
    assert item.channel_index == 1
    assert gate.is_finished()
    assert gate.get_next() is None


def test_a_waiting_consumer_wakes_up_on_the_last_end_of_partition(
    setup3: Setup, monkeypatch: pytest.MonkeyPatch
) -> None:
    gate = setup3.gate
    waiting = signal_on_pending_future(monkeypatch, gate)
    results: list[BufferOrEvent | None] = []

    def consume() -> None:
        while (item := gate.get_next(timeout=WAIT)) is not None:
            results.append(item)
        results.append(None)

    consumer = threading.Thread(target=consume)
    consumer.start()
    assert waiting.wait_for(1, WAIT)  # the consumer found nothing and waits
    assert results == []
    setup3.partition.finish()
    consumer.join(WAIT)
    assert not consumer.is_alive()
    assert results[-1] is None
    assert len(results) == 4
    assert gate.is_finished()


# -- failures ----------------------------------------------------------------------------------


def test_a_producer_failure_reaches_poll_next_with_its_cause(setup3: Setup) -> None:
    partition = setup3.partition
    gate = setup3.gate
    partition.emit_record(small_record(1), 0)
    cause = ValueError("user function failed")
    partition.fail(cause)
    for _ in range(2):  # and it keeps failing
        with pytest.raises(ProducerFailedError) as raised:
            poll_all(gate)
        assert raised.value.__cause__ is cause
        assert str(partition.partition_id) in str(raised.value)
    with pytest.raises(ProducerFailedError):
        gate.get_next(timeout=WAIT)


def test_a_producer_failure_wakes_a_waiting_consumer(
    setup3: Setup, monkeypatch: pytest.MonkeyPatch
) -> None:
    gate = setup3.gate
    waiting = signal_on_pending_future(monkeypatch, gate)
    errors: list[BaseException] = []

    def consume() -> None:
        try:
            gate.get_next(timeout=WAIT)
        except BaseException as exc:
            errors.append(exc)

    consumer = threading.Thread(target=consume)
    consumer.start()
    assert waiting.wait_for(1, WAIT)  # the consumer found nothing and waits
    assert errors == []
    cause = RuntimeError("boom")
    setup3.partition.fail(cause)
    consumer.join(WAIT)
    assert not consumer.is_alive()
    assert len(errors) == 1
    assert isinstance(errors[0], ProducerFailedError)
    assert errors[0].__cause__ is cause


def test_a_partition_that_failed_before_the_request_fails_the_channel() -> None:
    setup = Setup(1)
    cause = OSError("lost")
    setup.partition.fail(cause)
    setup.gate.request_partitions()
    with pytest.raises(ProducerFailedError) as raised:
        setup.gate.get_next(timeout=WAIT)
    assert raised.value.__cause__ is cause
    setup.close()


def test_a_subpartition_has_exactly_one_reader(setup3: Setup) -> None:
    second = make_gate(setup3.manager, setup3.partition.partition_id, 3, owner="intruder")
    second.request_partitions()
    with pytest.raises(PartitionConsumedError, match="only be consumed once"):
        second.get_next(timeout=WAIT)
    second.close()


# -- partition requests and backoff ------------------------------------------------------------


class RecordingTimer(threading.Timer):
    """A threading.Timer that records who scheduled which delay."""

    delays: ClassVar[list[tuple[object, float]]] = []

    def __init__(
        self,
        interval: float,
        function: Callable[..., object],
        args: Any = None,
        kwargs: Any = None,
    ) -> None:
        RecordingTimer.delays.append((getattr(function, "__self__", None), interval))
        super().__init__(interval, function, args, kwargs)


@pytest.fixture
def timer_delays(monkeypatch: pytest.MonkeyPatch) -> list[tuple[object, float]]:
    delays: list[tuple[object, float]] = []
    monkeypatch.setattr(RecordingTimer, "delays", delays)
    monkeypatch.setattr(threading, "Timer", RecordingTimer)
    return delays


def delays_of(channel: object, delays: list[tuple[object, float]]) -> list[float]:
    return [delay for owner, delay in delays if owner is channel]


def test_a_late_partition_is_retried_with_backoff(
    timer_delays: list[tuple[object, float]],
) -> None:
    setup = Setup(2, register=False, initial_backoff_ms=1, max_backoff_ms=2000)
    try:
        manager = setup.manager
        setup.gate.request_partitions()  # both channels fail their first request at once
        assert manager.requests >= 2
        assert setup.gate.poll_next() is None
        # wait for at least one retry, then let the producer appear
        for _ in range(3):
            assert manager.requested.acquire(timeout=WAIT)
        manager.register_result_partition(setup.partition)
        setup.partition.emit_record(small_record(5), 1)
        setup.partition.finish()
        assert read_to_end(setup.gate) == {1: [b"\x05"]}
        assert manager.requests >= 3
        # each channel waited 1 ms, then 2 ms, 4 ms, ... until the partition was there
        for channel in setup.gate.channels:
            delays = delays_of(channel, timer_delays)
            assert delays[0] == pytest.approx(0.001)
            for earlier, later in itertools.pairwise(delays):
                assert later == pytest.approx(min(2 * earlier, 2.0))
    finally:
        setup.close()


def test_a_partition_that_never_appears_fails_with_partition_not_found(
    timer_delays: list[tuple[object, float]],
) -> None:
    setup = Setup(1, register=False, initial_backoff_ms=1, max_backoff_ms=8)
    try:
        setup.gate.request_partitions()
        with pytest.raises(PartitionNotFoundError) as raised:
            setup.gate.get_next(timeout=WAIT)
        assert raised.value.partition_id == setup.partition.partition_id
        assert str(setup.partition.partition_id) in str(raised.value)
        delays = delays_of(setup.gate.channels[0], timer_delays)
        assert delays == pytest.approx([0.001, 0.002, 0.004, 0.008])
        assert setup.manager.requests == 5  # the first request and four retries
        with pytest.raises(PartitionNotFoundError):  # the channel stays failed
            setup.gate.poll_next()
    finally:
        setup.close()


def test_backoff_disabled_fails_at_once() -> None:
    setup = Setup(1, register=False, initial_backoff_ms=0, max_backoff_ms=0)
    setup.gate.request_partitions()
    with pytest.raises(PartitionNotFoundError):
        setup.gate.poll_next()
    assert setup.manager.requests == 1
    setup.close()


def test_zero_initial_backoff_does_not_retry_forever() -> None:
    setup = Setup(1, register=False, initial_backoff_ms=0, max_backoff_ms=100)
    setup.gate.request_partitions()
    try:
        with pytest.raises(PartitionNotFoundError):
            setup.gate.get_next(timeout=1.0)
    finally:
        setup.close()  # releasing the channel stops the retries either way
    assert setup.manager.requests <= 2


def test_closing_the_gate_stops_pending_retries() -> None:
    setup = Setup(1, register=False, initial_backoff_ms=1, max_backoff_ms=10_000)
    setup.gate.request_partitions()
    assert setup.manager.requested.acquire(timeout=WAIT)
    setup.gate.close()
    requests = setup.manager.requests
    assert setup.gate.channels[0].is_released
    # a retry already under way may run, but finds the channel released and stops
    setup.manager.register_result_partition(setup.partition)
    assert setup.manager.requests <= requests + 1
    with pytest.raises(TaskCancelledError):
        setup.gate.poll_next()  # closed before it was ever read
    setup.close()


# -- gate bookkeeping --------------------------------------------------------------------------


def test_channels_are_set_once_with_matching_indices() -> None:
    manager = ResultPartitionManager()
    partition_id = ResultPartitionID.generate()
    gate = SingleInputGate("g")
    with pytest.raises(IllegalStateError, match="index"):
        gate.set_channels([LocalInputChannel(gate, 1, partition_id, 0, manager)])
    gate.set_channels([LocalInputChannel(gate, 0, partition_id, 0, manager)])
    with pytest.raises(IllegalStateError, match="once"):
        gate.set_channels([LocalInputChannel(gate, 0, partition_id, 0, manager)])
    assert gate.num_channels == 1


def test_channel_description_names_channel_partition_and_owner() -> None:
    setup = Setup(2, owner="Sink (2/4)")
    text = setup.gate.channels[1].describe()
    assert "channel 1" in text
    assert "subpartition 1" in text
    assert str(setup.partition.partition_id) in text
    assert "Sink (2/4)" in text
    setup.close()


def test_metrics_count_what_was_read(setup3: Setup) -> None:
    partition = setup3.partition
    for _ in range(3):
        partition.emit_record(full_buffer_record(0), 0)
    assert setup3.gate.input_queue_length == 3
    poll_all(setup3.gate)
    assert setup3.gate.num_buffers_in == 3
    assert setup3.gate.num_bytes_in == 3 * SEGMENT_SIZE
    assert setup3.gate.input_queue_length == 0


def test_close_releases_channels_and_wakes_waiters(setup3: Setup) -> None:
    gate = setup3.gate
    assert gate.poll_next() is None
    future = gate.get_available_future()
    gate.close()
    assert future.done()
    assert all(channel.is_released for channel in gate.channels)
    # the consumer is gone: the manager released the partition
    assert setup3.partition.is_released
    gate.notify_channel_non_empty(gate.channels[0])  # a closed gate takes no more
    with pytest.raises(TaskCancelledError, match="Input gate is already closed"):
        gate.poll_next()
    gate.close()  # idempotent


def blocked_consumer(
    gate: SingleInputGate | UnionInputGate,
) -> tuple[threading.Thread, list[object]]:
    """A thread waiting in ``gate.get_next()``; its result or error lands in the list."""
    outcome: list[object] = []

    def consume() -> None:
        try:
            outcome.append(gate.get_next(timeout=WAIT))
        except TaskCancelledError as exc:
            outcome.append(exc)

    consumer = threading.Thread(target=consume)
    consumer.start()
    return consumer, outcome


def test_closing_the_gate_ends_a_consumer_waiting_in_get_next(
    setup3: Setup, monkeypatch: pytest.MonkeyPatch
) -> None:
    waiting = signal_on_pending_future(monkeypatch, setup3.gate)
    consumer, outcome = blocked_consumer(setup3.gate)
    assert waiting.wait_for(1, WAIT)  # it found nothing and waits

    setup3.gate.close()

    consumer.join(WAIT)
    assert not consumer.is_alive()
    assert not waiting.wait_for(2, 0)  # woken, it did not wait on a fresh future
    assert len(outcome) == 1 and isinstance(outcome[0], TaskCancelledError)


def test_a_finished_gate_reads_as_finished_after_close(setup3: Setup) -> None:
    setup3.partition.finish()
    read_to_end(setup3.gate)
    setup3.gate.close()
    assert setup3.gate.poll_next() is None
    assert setup3.gate.get_next() is None


# -- union gate --------------------------------------------------------------------------------


def test_union_gate_offsets_channel_indices_and_reads_every_gate_to_the_end() -> None:
    first = Setup(2)
    second = Setup(3)
    union = UnionInputGate([first.gate, second.gate], owner="joiner")
    assert union.num_channels == 5
    assert union.channel_offset(first.gate) == 0
    assert union.channel_offset(second.gate) == 2
    union.request_partitions()
    for channel in range(2):
        first.partition.emit_record(small_record(10 + channel), channel)
    for channel in range(3):
        second.partition.emit_record(small_record(20 + channel), channel)
        second.partition.emit_record(small_record(30 + channel), channel)
    first.partition.finish()
    second.partition.finish()
    records = read_to_end(union)
    assert records == {
        0: [bytes([10])],
        1: [bytes([11])],
        2: [bytes([20]), bytes([30])],
        3: [bytes([21]), bytes([31])],
        4: [bytes([22]), bytes([32])],
    }
    assert union.is_finished()
    assert first.gate.is_finished()
    assert second.gate.is_finished()
    assert union.get_next() is None
    assert union.poll_next() is None
    union.close()
    first.close()
    second.close()


def test_union_gate_alternates_between_gates_with_data() -> None:
    first = Setup(1)
    second = Setup(1)
    union = UnionInputGate([first.gate, second.gate])
    union.request_partitions()
    for _ in range(4):
        first.partition.emit_record(full_buffer_record(1), 0)
        second.partition.emit_record(full_buffer_record(2), 0)
    first.partition.flush_all()
    second.partition.flush_all()
    order = [item.channel_index for item in poll_all(union)]
    assert sorted(order) == [0] * 4 + [1] * 4
    assert order[:4] in ([0, 1, 0, 1], [1, 0, 1, 0])
    union.close()
    first.close()
    second.close()


def test_union_gate_waits_for_a_gate_that_gets_data_later() -> None:
    first = Setup(1)
    second = Setup(1)
    union = UnionInputGate([first.gate, second.gate])
    union.request_partitions()
    assert union.poll_next() is None
    future = union.get_available_future()
    assert not future.done()
    second.partition.emit_record(small_record(7), 0)
    second.partition.flush_all()
    future.result(timeout=WAIT)
    item = union.get_next(timeout=WAIT)
    assert item is not None
    assert item.channel_index == 1
    assert item.buffer is not None
    item.buffer.recycle()
    union.close()
    first.close()
    second.close()


def test_union_gate_passes_on_a_producer_failure() -> None:
    first = Setup(1)
    second = Setup(2)
    union = UnionInputGate([first.gate, second.gate])
    union.request_partitions()
    cause = RuntimeError("upstream died")
    second.partition.fail(cause)
    with pytest.raises(ProducerFailedError) as raised:
        union.get_next(timeout=WAIT)
    assert raised.value.__cause__ is cause
    union.close()
    first.close()
    second.close()


def test_union_gate_keeps_raising_a_producer_failure() -> None:
    first = Setup(1)
    second = Setup(1)
    union = UnionInputGate([first.gate, second.gate])
    union.request_partitions()
    cause = RuntimeError("upstream died")
    second.partition.fail(cause)
    try:
        with pytest.raises(ProducerFailedError):
            union.poll_next()
        # as a single gate does: the failed channel stays queued, every poll raises
        with pytest.raises(ProducerFailedError):
            second.gate.poll_next()
        with pytest.raises(ProducerFailedError):
            union.poll_next()
    finally:
        union.close()
        first.close()
        second.close()


def test_union_gate_needs_two_gates() -> None:
    setup = Setup(1)
    with pytest.raises(IllegalStateError, match="at least two"):
        UnionInputGate([setup.gate])
    setup.close()


def test_union_gate_close_closes_every_gate() -> None:
    first = Setup(1)
    second = Setup(1)
    union = UnionInputGate([first.gate, second.gate])
    union.request_partitions()
    union.close()
    assert all(channel.is_released for channel in first.gate.channels)
    assert all(channel.is_released for channel in second.gate.channels)
    assert union.get_available_future().done()
    with pytest.raises(TaskCancelledError, match="Input gate is already closed"):
        union.poll_next()
    first.close()
    second.close()


def test_closing_a_union_gate_ends_a_consumer_waiting_in_get_next(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    first = Setup(1)
    second = Setup(1)
    union = UnionInputGate([first.gate, second.gate])
    union.request_partitions()
    waiting = signal_on_pending_future(monkeypatch, union)
    consumer, outcome = blocked_consumer(union)
    assert waiting.wait_for(1, WAIT)

    union.close()

    consumer.join(WAIT)
    assert not consumer.is_alive()
    assert len(outcome) == 1 and isinstance(outcome[0], TaskCancelledError)
    first.close()
    second.close()


def test_data_announced_while_the_view_is_created_survives_an_early_poll() -> None:
    """The subpartition announces its data from inside ``create_subpartition_view``.

    A consumer that polls at that moment, before the channel has its view, finds nothing
    and drops the announcement; the channel must announce again once it can be read.
    """

    class PollAtOnceGate(SingleInputGate):
        """Polls once from inside the first notification, as a waiting consumer may."""

        early_polls: ClassVar[list[BufferOrEvent | None]] = []

        def notify_channel_non_empty(self, channel: Any) -> None:
            super().notify_channel_non_empty(channel)
            if not self.early_polls:
                self.early_polls.append(self.poll_next())

    network_pool = NetworkBufferPool(16, SEGMENT_SIZE)
    manager = ResultPartitionManager()
    partition = ResultPartition.create(ResultPartitionID.generate(), 1, network_pool)
    manager.register_result_partition(partition)
    partition.emit_record(full_buffer_record(7), 0)  # a finished buffer, waiting
    gate = PollAtOnceGate(owner="consumer")
    gate.set_channels([LocalInputChannel(gate, 0, partition.partition_id, 0, manager)])

    gate.request_partitions()

    assert PollAtOnceGate.early_polls == [None]  # the early poll found no view yet
    item = gate.poll_next()
    assert item is not None and item.buffer is not None
    assert bytes(item.buffer.memory) == full_buffer_record(7)
    item.buffer.recycle()
    gate.close()
    partition.release()
    partition.close()
    assert network_pool.available_segments == network_pool.total_segments
