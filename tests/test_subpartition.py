"""PipelinedSubpartition: backlog, availability, notifications, priority and blocking events.

The stateful model drives one subpartition with real BufferBuilders from a real pool and
checks, after every step, what the reader sees against a small model of the queue.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from penstock.buffer.buffer import DataType
from penstock.buffer.builder import BufferBuilder
from penstock.errors import PartitionConsumedError, PartitionReleasedError, PenstockError
from penstock.events import (
    AlignmentType,
    CancelCheckpointMarker,
    CheckpointBarrier,
    CheckpointOptions,
    EndOfPartitionEvent,
    RuntimeEvent,
)
from penstock.ids import ResultPartitionID
from penstock.memory.network_pool import NetworkBufferPool
from penstock.partition.result_partition import ResultPartition
from penstock.partition.subpartition import BufferAndBacklog, PipelinedSubpartition
from penstock.partition.view import PipelinedSubpartitionView
from penstock.serialization.event_serializer import (
    data_type_of,
    deserialize_event,
    serialize_event,
)

SEGMENT_SIZE = 16


class RecordingListener:
    """A BufferAvailabilityListener that counts notifications."""

    def __init__(self) -> None:
        self.count = 0

    def notify_data_available(self) -> None:
        self.count += 1


@dataclass(slots=True)
class Setup:
    network: NetworkBufferPool
    partition: ResultPartition
    subpartition: PipelinedSubpartition
    listener: RecordingListener
    reader: PipelinedSubpartitionView | None
    builders: list[BufferBuilder] = field(default_factory=list)

    @property
    def view(self) -> PipelinedSubpartitionView:
        assert self.reader is not None
        return self.reader

    def builder(self) -> BufferBuilder:
        builder = self.partition.buffer_pool.request_buffer_builder(0)
        assert builder is not None
        self.builders.append(builder)  # the writer's references, dropped at teardown
        return builder

    def add_buffer(self, data: bytes = b"", finish: bool = False) -> BufferBuilder:
        """Queues a new builder empty, then writes ``data`` into it (as the writer does)."""
        builder = self.builder()
        assert self.subpartition.add(builder.create_buffer_consumer())
        assert builder.append(data) == len(data)
        if finish:
            builder.finish()
            builder.close()
        return builder

    def add_event(self, event: RuntimeEvent, priority: bool = False) -> None:
        assert self.subpartition.add_event(serialize_event(event), data_type_of(event, priority))

    def poll(self) -> tuple[BufferAndBacklog, bytes]:
        result = self.view.get_next_buffer()
        assert result is not None
        data = bytes(result.buffer.memory)
        result.buffer.recycle()
        return result, data

    def teardown(self) -> None:
        for builder in self.builders:
            builder.close()
        self.partition.release()
        self.partition.close()
        assert self.network.available_segments == self.network.total_segments


def make_setup(with_view: bool = True) -> Setup:
    network = NetworkBufferPool(24, SEGMENT_SIZE)
    partition = ResultPartition.create(ResultPartitionID.generate(), 1, network)
    subpartition = partition.subpartitions[0]
    listener = RecordingListener()
    view = subpartition.create_read_view(listener) if with_view else None
    return Setup(network, partition, subpartition, listener, view)


ALIGNED_BARRIER = CheckpointBarrier(7, 1000, CheckpointOptions())
UNALIGNED_BARRIER = CheckpointBarrier(8, 1000, CheckpointOptions(alignment=AlignmentType.UNALIGNED))


# -- the stateful model -------------------------------------------------------------


@dataclass(slots=True)
class Element:
    """One queued buffer or event as the model sees it."""

    data_type: DataType
    data: bytearray
    finished: bool
    read: int = 0


EVENT_KINDS = st.sampled_from(["event", "aligned", "priority"])


class SubpartitionMachine(RuleBasedStateMachine):
    """One subpartition fed by real builders, read by one view, checked against a model.

    The model keeps Flink's ``flushRequested`` flag: set by a flush that found something
    to read, cleared when the reader builds the last queued element. With it, the backlog
    is Flink's ``getBuffersInBacklogUnsafe``: the data buffers still queued, minus the
    last one if it is a data buffer and neither a flush nor the end of the partition made
    it count.
    """

    def __init__(self) -> None:
        super().__init__()
        self.network = NetworkBufferPool(24, SEGMENT_SIZE)
        self.partition = ResultPartition.create(
            ResultPartitionID.generate(), 1, self.network, max_overdraft_buffers=0
        )
        self.subpartition = self.partition.subpartitions[0]
        self.listener = RecordingListener()
        self.view = self.subpartition.create_read_view(self.listener)
        self.builder: BufferBuilder | None = None
        self.open: Element | None = None
        self.model: list[Element] = []
        self.flush_requested = False
        self.blocked = False
        self.finished = False
        self.next_sequence = 0
        self.next_byte = 0
        self.next_event_id = 0
        self.written = bytearray()
        self.read = bytearray()
        # The reader waits after a poll that found nothing or said nothing more is
        # readable; it must then be notified before readable content is left unread.
        self.waiting = True
        self.notifications_at_wait = 0

    # -- model helpers -------------------------------------------------------------

    def _queued_data(self) -> int:
        return sum(1 for element in self.model if element.data_type.is_buffer)

    def _finished_buffers(self) -> int:
        if len(self.model) == 1 and self.model[0].finished:
            return 1
        return max(0, len(self.model) - 1)

    def _available(self) -> bool:
        return not self.blocked and (self.flush_requested or self._finished_buffers() > 0)

    def _backlog(self) -> int:
        if self.blocked or not self.model:
            return 0
        data = self._queued_data()
        if self.flush_requested or self.finished or not self.model[-1].data_type.is_buffer:
            return data
        return max(data - 1, 0)

    def _pending(self) -> bool:
        """True when the reader must have been told: readable bytes it has not read."""
        if self.blocked:
            return False
        return any(
            element.read < len(element.data) and (element.finished or self.flush_requested)
            for element in self.model
        )

    def _start_waiting(self) -> None:
        self.waiting = True
        self.notifications_at_wait = self.listener.count

    def _check_reader_was_told(self) -> None:
        if self.waiting and self._pending():
            assert self.listener.count > self.notifications_at_wait, "lost wake-up"

    def _append(self, size: int) -> None:
        assert self.builder is not None and self.open is not None
        data = bytes((self.next_byte + i) % 251 for i in range(size))
        written = self.builder.append(data)
        assert written == min(size, SEGMENT_SIZE - len(self.open.data))
        self.next_byte += written
        self.open.data += data[:written]
        self.written += data[:written]

    def _finish_open(self) -> None:
        if self.builder is not None and self.open is not None:
            self.builder.finish()
            self.builder.close()
            self.open.finished = True
        self.builder = None
        self.open = None

    def _model_poll(self) -> tuple[DataType, bytes] | None:
        if self.blocked:
            return None
        if not self.model:
            self.flush_requested = False
            return None
        while self.model:
            head = self.model[0]
            if len(self.model) == 1:
                self.flush_requested = False
            chunk = bytes(head.data[head.read :])
            head.read = len(head.data)
            if head.finished:
                self.model.pop(0)
            if chunk:
                return head.data_type, chunk
            if not head.finished:
                return None
        return None

    # -- rules ---------------------------------------------------------------------

    @precondition(lambda self: not self.finished and self._queued_data() < 8)
    @rule(size=st.integers(0, 2 * SEGMENT_SIZE))
    def add_data_buffer(self, size: int) -> None:
        self._finish_open()
        builder = self.partition.buffer_pool.request_buffer_builder(0)
        assert builder is not None
        before = self.listener.count
        assert self.subpartition.add(builder.create_buffer_consumer())
        assert self.listener.count - before <= 1
        self.builder = builder
        self.open = Element(DataType.DATA_BUFFER, bytearray(), finished=False)
        self.model.append(self.open)
        before = self.listener.count
        self._append(size)
        assert self.listener.count == before, "appending must never notify"
        self._check_reader_was_told()

    @precondition(lambda self: self.builder is not None)
    @rule(size=st.integers(0, SEGMENT_SIZE))
    def append(self, size: int) -> None:
        before = self.listener.count
        self._append(size)
        assert self.listener.count == before, "appending must never notify"

    @precondition(lambda self: self.builder is not None)
    @rule()
    def finish_builder(self) -> None:
        before = self.listener.count
        self._finish_open()
        assert self.listener.count == before

    @precondition(lambda self: not self.finished)
    @rule(kind=EVENT_KINDS)
    def add_event(self, kind: str) -> None:
        self._finish_open()  # events finish the open buffers first, as the writer does
        self.next_event_id += 1
        event: RuntimeEvent
        priority = kind == "priority"
        if kind == "event":
            event = CancelCheckpointMarker(self.next_event_id)
        elif kind == "aligned":
            event = CheckpointBarrier(self.next_event_id, 0, CheckpointOptions())
        else:
            options = CheckpointOptions(alignment=AlignmentType.UNALIGNED)
            event = CheckpointBarrier(self.next_event_id, 0, options)
        payload = serialize_event(event)
        data_type = data_type_of(event, priority)
        assert (
            data_type
            is {
                "event": DataType.EVENT_BUFFER,
                "aligned": DataType.ALIGNED_CHECKPOINT_BARRIER,
                "priority": DataType.PRIORITIZED_EVENT_BUFFER,
            }[kind]
        )
        assert self.subpartition.add_event(payload, data_type)
        element = Element(data_type, bytearray(payload), finished=True)
        if priority:
            # After earlier priority events, before everything else (even a partly read head).
            index = 0
            while index < len(self.model) and self.model[index].data_type.has_priority:
                index += 1
            self.model.insert(index, element)
        else:
            self.model.append(element)
        self._check_reader_was_told()

    @rule()
    def flush(self) -> None:
        before = self.listener.count
        was_requested = self.flush_requested
        self.subpartition.flush()
        if self.model and not self.flush_requested:
            head = self.model[0]
            unfinished_has_data = len(self.model) == 1 and head.read < len(head.data)
            self.flush_requested = len(self.model) > 1 or unfinished_has_data
        if was_requested:
            assert self.listener.count == before, "told again before the reader drained"
        assert self.listener.count - before <= 1
        self._check_reader_was_told()

    @precondition(lambda self: not self.finished)
    @rule()
    def finish(self) -> None:
        self._finish_open()
        before = self.listener.count
        self.subpartition.finish()
        assert self.listener.count == before + 1, "finish always tells the reader"
        payload = serialize_event(EndOfPartitionEvent())
        self.model.append(Element(DataType.END_OF_PARTITION, bytearray(payload), finished=True))
        self.finished = True
        # Nothing is accepted after the end of the partition.
        assert not self.subpartition.add_event(
            serialize_event(CancelCheckpointMarker(0)), DataType.EVENT_BUFFER
        )

    @rule()
    def resume(self) -> None:
        before = self.listener.count
        was_blocked = self.blocked
        self.view.resume_consumption()
        self.blocked = False
        if was_blocked:
            self._check_reader_was_told()
        else:
            assert self.listener.count == before

    @rule()
    def poll(self) -> None:
        result = self.view.get_next_buffer()
        expected = self._model_poll()
        if expected is None:
            assert result is None
            self._start_waiting()
            return
        assert result is not None
        data = bytes(result.buffer.memory)
        result.buffer.recycle()
        data_type, chunk = expected
        assert result.buffer.data_type is data_type
        assert data == chunk
        assert result.sequence_number == self.next_sequence
        self.next_sequence += 1
        if data_type.is_buffer:
            self.read += data
        if data_type.is_blocking_upstream:
            self.blocked = True
        assert result.backlog == self._backlog()
        next_type = self.model[0].data_type if self._available() else DataType.NONE
        assert result.next_data_type is next_type
        assert result.is_data_available == (next_type is not DataType.NONE)
        if next_type is DataType.NONE:
            self._start_waiting()
        else:
            self.waiting = False

    # -- invariants ----------------------------------------------------------------

    @invariant()
    def matches_model(self) -> None:
        available = self._available()
        backlog = self._backlog()
        assert self.subpartition.is_data_available() == available
        assert self.subpartition.backlog == backlog
        assert self.subpartition.queue_length == len(self.model)
        assert self.subpartition.is_blocked == self.blocked
        assert self.view.get_availability_and_backlog(True) == (available, backlog)
        head_is_event = bool(self.model) and self.model[0].data_type.is_event
        assert self.view.get_availability_and_backlog(False) == (
            available and head_is_event,
            backlog,
        )

    @invariant()
    def bytes_in_order_exactly_once(self) -> None:
        assert self.read == self.written[: len(self.read)]

    def teardown(self) -> None:
        # Everything written comes out once the open buffer is finished and flushed.
        self._finish_open()
        self.flush()
        for _ in range(4 * len(self.model) + 4):
            if self.blocked:
                self.resume()
            before = self.next_sequence
            self.poll()
            if self.next_sequence == before and not self.blocked:
                break
        assert not self.model
        assert self.read == self.written
        self.partition.release()
        self.partition.close()
        assert self.network.available_segments == self.network.total_segments


SubpartitionMachine.TestCase.settings = settings(max_examples=300, stateful_step_count=40)
TestSubpartitionModel = SubpartitionMachine.TestCase


# -- backlog -------------------------------------------------------------------------


def test_backlog_excludes_the_open_unflushed_buffer() -> None:
    s = make_setup()
    s.add_buffer(b"a" * SEGMENT_SIZE, finish=True)
    s.add_buffer(b"b" * SEGMENT_SIZE, finish=True)
    s.add_buffer(b"c" * 4)  # open, unflushed
    assert s.subpartition.backlog == 2
    result, data = s.poll()
    assert data == b"a" * SEGMENT_SIZE
    assert result.backlog == 1  # b counts, the open c does not
    assert result.next_data_type is DataType.DATA_BUFFER
    s.subpartition.flush()
    assert s.subpartition.backlog == 2  # flushed: c counts now
    result, data = s.poll()
    assert data == b"b" * SEGMENT_SIZE
    assert result.backlog == 1
    result, data = s.poll()
    assert data == b"cccc"
    assert result.backlog == 0
    assert result.next_data_type is DataType.NONE
    assert s.view.get_next_buffer() is None
    s.teardown()


def test_backlog_counts_only_data_buffers() -> None:
    s = make_setup()
    s.add_buffer(b"a", finish=True)
    s.add_event(CancelCheckpointMarker(1))
    s.add_buffer(b"b", finish=True)
    s.add_event(CancelCheckpointMarker(2))
    # The last element is an event, so every data buffer counts.
    assert s.subpartition.backlog == 2
    result, _ = s.poll()
    assert result.backlog == 1
    assert result.next_data_type is DataType.EVENT_BUFFER
    result, _ = s.poll()
    assert result.buffer.data_type is DataType.EVENT_BUFFER
    assert result.backlog == 1
    s.teardown()


def test_backlog_after_finish_counts_every_data_buffer() -> None:
    s = make_setup()
    s.add_buffer(b"a" * 3, finish=True)
    s.add_buffer(b"b" * 3, finish=True)
    s.subpartition.finish()
    assert s.subpartition.backlog == 2
    result, _ = s.poll()
    assert result.backlog == 1
    result, _ = s.poll()
    assert result.backlog == 0
    assert result.next_data_type is DataType.END_OF_PARTITION
    result, data = s.poll()
    assert result.buffer.data_type is DataType.END_OF_PARTITION
    assert deserialize_event(data) == EndOfPartitionEvent()
    assert result.next_data_type is DataType.NONE
    assert s.view.get_next_buffer() is None
    s.teardown()


def test_sequence_numbers_count_polled_buffers_from_zero() -> None:
    s = make_setup()
    for i in range(5):
        s.add_buffer(bytes([i]) * 2, finish=True)
        s.add_event(CancelCheckpointMarker(i))
    numbers = [s.poll()[0].sequence_number for _ in range(10)]
    assert numbers == list(range(10))
    s.teardown()


def test_open_buffer_is_read_incrementally_without_copies_of_old_bytes() -> None:
    s = make_setup()
    builder = s.add_buffer(b"abc")
    assert s.poll()[1] == b"abc"
    assert s.view.get_next_buffer() is None  # nothing new yet
    builder.append(b"de")
    assert s.poll()[1] == b"de"
    builder.finish()
    builder.close()
    assert s.view.get_next_buffer() is None  # finished, nothing left: popped and recycled
    assert s.subpartition.queue_length == 0
    s.teardown()


def test_empty_finished_buffer_is_skipped_and_recycled() -> None:
    s = make_setup()
    s.add_buffer(b"", finish=True)
    s.add_buffer(b"xy", finish=True)
    used = s.partition.buffer_pool.used_buffers
    result, data = s.poll()
    assert data == b"xy"
    assert result.sequence_number == 0
    assert s.partition.buffer_pool.used_buffers == used - 2
    s.teardown()


# -- notifications -------------------------------------------------------------------


def test_reader_is_told_on_the_transition_to_one_finished_buffer() -> None:
    s = make_setup()
    first = s.add_buffer(b"a" * SEGMENT_SIZE)
    assert s.listener.count == 0  # one open buffer: nothing readable by Flink's rule
    first.finish()
    first.close()
    assert s.listener.count == 0  # a full buffer is announced by the next add or a flush
    s.add_buffer(b"b")
    assert s.listener.count == 1
    s.add_buffer(b"c")  # second finished buffer: the reader was told already
    assert s.listener.count == 1
    s.add_event(CancelCheckpointMarker(1))
    assert s.listener.count == 1
    s.teardown()


def test_event_into_an_empty_queue_tells_the_reader() -> None:
    s = make_setup()
    s.add_event(CancelCheckpointMarker(1))
    assert s.listener.count == 1
    assert s.subpartition.is_data_available()
    s.teardown()


def test_flush_tells_once_until_drained() -> None:
    s = make_setup()
    builder = s.add_buffer(b"")
    s.subpartition.flush()
    assert s.listener.count == 0  # nothing written: nothing to tell
    assert not s.subpartition.is_data_available()
    builder.append(b"abc")
    s.subpartition.flush()
    assert s.listener.count == 1
    s.subpartition.flush()
    builder.append(b"de")
    s.subpartition.flush()
    assert s.listener.count == 1  # not again before the reader drained
    assert s.poll()[1] == b"abcde"
    builder.append(b"f")
    assert s.listener.count == 1
    s.subpartition.flush()
    assert s.listener.count == 2
    s.teardown()


def test_only_partial_data_is_a_flushed_open_buffer_and_nothing_else() -> None:
    """What the data server writes on the flushing thread: a flush, not a full buffer."""
    setup = make_setup()
    builder = setup.add_buffer(b"abc")
    assert not setup.view.has_only_partial_data  # not flushed: nothing readable
    setup.subpartition.flush()
    assert setup.view.has_only_partial_data
    setup.poll()
    assert not setup.view.has_only_partial_data  # read: the flush is served
    builder.append(b"d" * (SEGMENT_SIZE - 3))  # the buffer fills up and is finished
    builder.finish()
    setup.add_buffer(b"e")
    setup.subpartition.flush()
    assert not setup.view.has_only_partial_data  # a finished buffer comes first
    setup.poll()
    assert setup.view.has_only_partial_data
    setup.poll()
    setup.add_event(EndOfPartitionEvent())
    assert not setup.view.has_only_partial_data
    setup.teardown()


def test_flush_of_empty_subpartition_is_a_no_op() -> None:
    s = make_setup()
    s.subpartition.flush()
    assert s.listener.count == 0
    assert not s.subpartition.is_data_available()
    assert s.view.get_next_buffer() is None
    s.teardown()


def test_finish_and_release_tell_the_reader() -> None:
    s = make_setup()
    s.add_buffer(b"abc")
    s.subpartition.flush()
    assert s.listener.count == 1
    s.subpartition.finish()  # notifies even though a flush notification is pending
    assert s.listener.count == 2
    s.subpartition.release()
    assert s.listener.count == 3
    s.subpartition.release()  # idempotent
    assert s.listener.count == 3
    s.teardown()


def test_late_view_is_told_about_existing_data() -> None:
    s = make_setup(with_view=False)
    s.add_buffer(b"x", finish=True)
    s.add_buffer(b"y")
    listener = RecordingListener()
    view = s.subpartition.create_read_view(listener)
    assert listener.count == 1
    result = view.get_next_buffer()
    assert result is not None
    assert bytes(result.buffer.memory) == b"x"
    result.buffer.recycle()
    s.teardown()


def test_late_view_on_an_open_unflushed_buffer_is_not_told() -> None:
    s = make_setup(with_view=False)
    s.add_buffer(b"x")
    listener = RecordingListener()
    s.subpartition.create_read_view(listener)
    assert listener.count == 0
    s.teardown()


def test_many_small_records_in_one_buffer_notify_nothing_until_flush() -> None:
    network = NetworkBufferPool(16, 1024)
    partition = ResultPartition.create(ResultPartitionID.generate(), 1, network)
    listener = RecordingListener()
    view = partition.create_subpartition_view(0, listener)
    for i in range(200):
        partition.emit_record(b"%04d" % i, 0)  # 800 bytes into one 1 KiB buffer
    assert listener.count == 0
    partition.flush(0)
    assert listener.count == 1
    for i in range(200, 256):
        partition.emit_record(b"%04d" % i, 0)  # fills the buffer exactly: it is finished
    assert listener.count == 1  # the flush notification is still pending
    result = view.get_next_buffer()
    assert result is not None
    assert bytes(result.buffer.memory) == b"".join(b"%04d" % i for i in range(256))
    result.buffer.recycle()
    partition.emit_record(b"next", 0)  # the full buffer was read: the new one is alone, open
    assert listener.count == 1
    partition.flush(0)
    assert listener.count == 2
    partition.release()
    partition.close()
    assert network.available_segments == network.total_segments


def test_full_buffer_is_announced_when_the_next_one_is_added() -> None:
    network = NetworkBufferPool(16, 64)
    partition = ResultPartition.create(ResultPartitionID.generate(), 1, network)
    listener = RecordingListener()
    partition.create_subpartition_view(0, listener)
    for _ in range(16):
        partition.emit_record(b"abcd", 0)  # exactly 64 bytes: the buffer is finished
    assert listener.count == 0
    partition.emit_record(b"e", 0)  # next buffer added: one finished buffer queued
    assert listener.count == 1
    for _ in range(10):
        partition.emit_record(b"f", 0)
    assert listener.count == 1
    partition.release()
    partition.close()


# -- priority and blocking events ----------------------------------------------------


def test_priority_events_overtake_data_after_earlier_priority_events() -> None:
    s = make_setup()
    s.add_buffer(b"d1", finish=True)
    s.add_buffer(b"d2", finish=True)
    s.add_event(CancelCheckpointMarker(1))  # not priority: goes to the tail
    first = CheckpointBarrier(1, 0, CheckpointOptions(alignment=AlignmentType.UNALIGNED))
    second = CheckpointBarrier(2, 0, CheckpointOptions(alignment=AlignmentType.UNALIGNED))
    s.add_event(first, priority=True)
    s.add_event(second, priority=True)
    order: list[tuple[DataType, bytes]] = []
    while (result := s.view.get_next_buffer()) is not None:
        order.append((result.buffer.data_type, bytes(result.buffer.memory)))
        result.buffer.recycle()
    assert order == [
        (DataType.PRIORITIZED_EVENT_BUFFER, serialize_event(first)),
        (DataType.PRIORITIZED_EVENT_BUFFER, serialize_event(second)),
        (DataType.DATA_BUFFER, b"d1"),
        (DataType.DATA_BUFFER, b"d2"),
        (DataType.EVENT_BUFFER, serialize_event(CancelCheckpointMarker(1))),
    ]
    s.teardown()


def test_priority_event_overtakes_a_partly_read_buffer() -> None:
    s = make_setup()
    builder = s.add_buffer(b"abc")
    assert s.poll()[1] == b"abc"
    builder.append(b"def")
    before = s.listener.count
    s.add_event(UNALIGNED_BARRIER, priority=True)
    assert s.listener.count == before + 1
    result, _ = s.poll()
    assert result.buffer.data_type is DataType.PRIORITIZED_EVENT_BUFFER
    assert s.poll()[1] == b"def"
    s.teardown()


def test_aligned_barrier_blocks_until_resume() -> None:
    s = make_setup()
    assert data_type_of(ALIGNED_BARRIER) is DataType.ALIGNED_CHECKPOINT_BARRIER
    s.add_buffer(b"before", finish=True)
    s.add_event(ALIGNED_BARRIER)
    s.add_buffer(b"after1", finish=True)
    s.add_buffer(b"after2", finish=True)
    s.add_event(CancelCheckpointMarker(1))
    assert s.poll()[1] == b"before"
    result, data = s.poll()
    assert result.buffer.data_type is DataType.ALIGNED_CHECKPOINT_BARRIER
    assert deserialize_event(data) == ALIGNED_BARRIER
    assert result.backlog == 0
    assert result.next_data_type is DataType.NONE
    assert s.subpartition.is_blocked
    assert s.view.get_next_buffer() is None
    assert not s.subpartition.is_data_available()
    assert s.subpartition.backlog == 0
    assert s.view.get_availability_and_backlog(True) == (False, 0)
    assert s.view.get_availability_and_backlog(False) == (False, 0)
    # Adding or flushing while blocked tells nobody: the reader cannot read anyway.
    before = s.listener.count
    s.add_event(CancelCheckpointMarker(2))
    s.subpartition.flush()
    assert s.listener.count == before
    s.view.resume_consumption()
    assert s.listener.count == before + 1
    assert not s.subpartition.is_blocked
    result, data = s.poll()
    assert data == b"after1"
    assert result.backlog == 1
    s.teardown()


def test_resume_without_data_does_not_notify() -> None:
    s = make_setup()
    s.add_event(ALIGNED_BARRIER)
    s.poll()
    before = s.listener.count
    s.view.resume_consumption()
    assert s.listener.count == before
    assert s.view.get_next_buffer() is None
    s.teardown()


def test_events_need_no_credit() -> None:
    s = make_setup()
    s.add_buffer(b"data", finish=True)
    s.add_event(CancelCheckpointMarker(1))
    s.add_buffer(b"more", finish=True)
    assert s.view.get_availability_and_backlog(True) == (True, 1)
    assert s.view.get_availability_and_backlog(False) == (False, 1)
    assert s.view.is_available()
    assert not s.view.is_available(has_credit=False)
    s.poll()
    assert s.view.get_availability_and_backlog(False) == (True, 0)
    s.add_event(UNALIGNED_BARRIER, priority=True)  # priority head: no credit needed either
    assert s.view.get_availability_and_backlog(False) == (True, 0)  # "more" is last, unflushed
    s.teardown()


def test_no_credit_availability_of_an_empty_subpartition() -> None:
    s = make_setup()
    assert s.view.get_availability_and_backlog(False) == (False, 0)
    assert s.view.get_availability_and_backlog(True) == (False, 0)
    s.teardown()


# -- consumption and release ---------------------------------------------------------


def test_subpartition_can_be_consumed_once() -> None:
    s = make_setup()
    with pytest.raises(PartitionConsumedError, match="can only be consumed once"):
        s.subpartition.create_read_view(RecordingListener())
    with pytest.raises(PartitionConsumedError, match="can only be consumed once") as info:
        s.partition.create_subpartition_view(0, RecordingListener())
    assert str(s.partition.partition_id) in str(info.value)
    s.teardown()


def test_add_after_finish_is_refused_and_frees_the_buffer() -> None:
    s = make_setup()
    s.subpartition.finish()
    builder = s.builder()
    used = s.partition.buffer_pool.used_buffers
    assert not s.subpartition.add(builder.create_buffer_consumer())
    builder.close()
    assert s.partition.buffer_pool.used_buffers == used - 1
    assert not s.subpartition.add_event(
        serialize_event(CancelCheckpointMarker(1)), DataType.EVENT_BUFFER
    )
    s.teardown()


def test_release_drops_queued_buffers_and_fails_the_reader() -> None:
    s = make_setup()
    s.add_buffer(b"a" * SEGMENT_SIZE, finish=True)
    builder = s.add_buffer(b"b")
    builder.close()  # the writer is gone
    s.subpartition.release()
    assert s.subpartition.is_released
    assert s.subpartition.queue_length == 0
    assert s.subpartition.backlog == 0
    assert s.partition.buffer_pool.used_buffers == 0
    assert not s.subpartition.add_event(
        serialize_event(CancelCheckpointMarker(1)), DataType.EVENT_BUFFER
    )
    with pytest.raises(PartitionReleasedError, match="released"):
        s.view.get_next_buffer()
    assert s.view.is_released
    s.teardown()


def test_no_credit_availability_after_release_of_a_flushed_subpartition() -> None:
    s = make_setup()
    builder = s.add_buffer(b"abc")
    builder.close()
    s.subpartition.flush()
    s.subpartition.release()
    available, backlog = s.view.get_availability_and_backlog(False)
    assert backlog == 0
    assert not available or s.view.is_released
    s.teardown()


def test_polled_buffer_outlives_release_until_recycled() -> None:
    s = make_setup()
    s.add_buffer(b"held", finish=True)
    result = s.view.get_next_buffer()
    assert result is not None
    s.partition.release()
    s.partition.close()
    assert s.network.available_segments == s.network.total_segments - 1
    assert bytes(result.buffer.memory) == b"held"  # still valid: not recycled yet
    result.buffer.recycle()
    assert s.network.available_segments == s.network.total_segments


def test_view_repr_and_errors_are_penstock_errors() -> None:
    s = make_setup()
    assert "subpartition 0" in repr(s.view)
    assert "PipelinedSubpartition(#0" in repr(s.subpartition)
    s.subpartition.release()
    with pytest.raises(PenstockError):
        s.view.get_next_buffer()
    s.teardown()
