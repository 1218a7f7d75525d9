"""Credit-based flow control: the sender's CreditBasedReader and the receiver's credit.

The sender side is driven sans-IO: a ``CreditBasedReader`` reads a real
``PipelinedSubpartition`` (real pool, real builders) and a stateful model plays producer,
receiver (AddCredit) and network server ("server turns") against it. The receiver side
drives a ``RemoteInputChannel`` with hand-made BufferResponses and a recording client.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

from penstock.buffer.buffer import DataType
from penstock.buffer.builder import BufferBuilder
from penstock.consumer.input_gate import SingleInputGate
from penstock.consumer.remote_channel import ConnectionID, RemoteInputChannel
from penstock.errors import (
    BufferReorderingError,
    IllegalStateError,
    LocalProtocolError,
    PartitionReleasedError,
    ProducerFailedError,
    RemoteProtocolError,
)
from penstock.events import (
    AlignmentType,
    CancelCheckpointMarker,
    CheckpointBarrier,
    CheckpointOptions,
    EndOfPartitionEvent,
    RuntimeEvent,
)
from penstock.ids import InputChannelID, ResultPartitionID
from penstock.memory.network_pool import NetworkBufferPool
from penstock.partition.result_partition import ResultPartition
from penstock.serialization.event_serializer import data_type_of, serialize_event
from penstock.transport.credit import CreditBasedReader
from penstock.transport.messages import BufferResponse

SEGMENT_SIZE = 16


# --------------------------------------------------------------------------------------
# Sender side: a reader over a real subpartition
# --------------------------------------------------------------------------------------


@dataclass(slots=True)
class ReaderSetup:
    network: NetworkBufferPool
    partition: ResultPartition
    reader: CreditBasedReader
    notified: list[CreditBasedReader]
    builders: list[BufferBuilder] = field(default_factory=list)

    def add_data(self, data: bytes, finish: bool = True) -> BufferBuilder:
        """Queues a builder, writes ``data`` into it and (by default) finishes it."""
        builder = self.partition.buffer_pool.request_buffer_builder(0)
        assert builder is not None
        self.builders.append(builder)
        assert self.partition.subpartitions[0].add(builder.create_buffer_consumer())
        assert builder.append(data) == len(data)
        if finish:
            builder.finish()
            builder.close()
        return builder

    def add_event(self, event: RuntimeEvent) -> None:
        assert self.partition.subpartitions[0].add_event(
            serialize_event(event), data_type_of(event)
        )

    def teardown(self) -> None:
        self.reader.release()
        for builder in self.builders:
            builder.close()
        self.partition.release()
        self.partition.close()
        assert self.network.available_segments == self.network.total_segments


def make_reader(initial_credit: int) -> ReaderSetup:
    network = NetworkBufferPool(32, SEGMENT_SIZE)
    partition = ResultPartition.create(
        ResultPartitionID.generate(), 1, network, max_overdraft_buffers=0
    )
    notified: list[CreditBasedReader] = []
    reader = CreditBasedReader(InputChannelID.generate(), initial_credit, notified.append)
    reader.attach(partition.create_subpartition_view(0, reader), 0)
    return ReaderSetup(network, partition, reader, notified)


def poll(reader: CreditBasedReader) -> tuple[DataType, bytes, int, int]:
    """Polls one buffer; returns its type, bytes, backlog and sequence number."""
    result = reader.get_next_buffer()
    assert result is not None
    data = bytes(result.buffer.memory)
    data_type = result.buffer.data_type
    result.buffer.recycle()
    return data_type, data, result.backlog, result.sequence_number


@given(credit=st.integers(max_value=-1))
def test_negative_initial_credit_is_refused(credit: int) -> None:
    with pytest.raises(LocalProtocolError, match="initial credit must not be negative"):
        CreditBasedReader(InputChannelID.generate(), credit, lambda _: None)


@given(credit=st.integers(max_value=0))
def test_add_credit_must_be_positive(credit: int) -> None:
    reader = CreditBasedReader(InputChannelID.generate(), 1, lambda _: None)
    with pytest.raises(LocalProtocolError, match="AddCredit must announce a positive credit"):
        reader.add_credit(credit)
    assert reader.credit == 1


def test_zero_initial_credit_is_allowed_and_data_waits_for_credit() -> None:
    setup = make_reader(0)
    setup.add_data(b"abcd")
    setup.add_data(b"efgh")
    reader = setup.reader
    assert not reader.is_available()
    assert reader.get_next_buffer() is None  # no credit: the data stays queued
    assert reader.buffers_sent == 0
    reader.add_credit(1)
    assert reader.is_available()
    data_type, data, backlog, sequence = poll(reader)
    # As in Flink, the last queued buffer counts in the backlog only after a flush.
    assert (data_type, data, backlog, sequence) == (DataType.DATA_BUFFER, b"abcd", 0, 0)
    assert reader.credit == 0
    assert not reader.is_available()
    assert reader.get_next_buffer() is None
    reader.add_credit(3)
    assert poll(reader)[1] == b"efgh"
    assert (reader.credit, reader.buffers_sent, reader.events_sent) == (2, 2, 0)
    setup.teardown()


def test_a_receiver_without_exclusive_buffers_is_told_the_backlog_once_credit_is_spent() -> None:
    # Such a receiver borrows floating buffers only when it learns of a backlog, so
    # with no credit the data that waits must be announced to it.
    setup = make_reader(0)
    reader = setup.reader
    assert reader.backlog_to_announce() == 0  # nothing waits
    setup.add_data(b"abcd")
    setup.add_data(b"efgh")
    assert reader.backlog_to_announce() == 1  # the last buffer counts after a flush
    reader.add_credit(1)
    assert reader.backlog_to_announce() == 0  # it has credit: the buffer will say
    assert poll(reader)[1] == b"abcd"
    assert reader.backlog_to_announce() == 0  # the last, unflushed buffer
    setup.partition.flush_all()
    assert reader.backlog_to_announce() == 1
    setup.teardown()

    # A receiver with exclusive buffers announces credit as it frees them: nothing to tell.
    setup = make_reader(1)
    setup.add_data(b"abcd")
    setup.add_data(b"efgh")
    assert poll(setup.reader)[1] == b"abcd"
    assert setup.reader.credit == 0
    setup.partition.flush_all()
    assert setup.reader.backlog_to_announce() == 0
    setup.teardown()


def test_events_need_no_credit() -> None:
    setup = make_reader(0)
    setup.add_event(CancelCheckpointMarker(1))
    setup.partition.subpartitions[0].finish()
    reader = setup.reader
    assert reader.is_available()
    assert poll(reader)[0] is DataType.EVENT_BUFFER
    assert reader.is_available()
    data_type, _, backlog, sequence = poll(reader)
    assert (data_type, backlog, sequence) == (DataType.END_OF_PARTITION, 0, 1)
    assert (reader.credit, reader.buffers_sent, reader.events_sent) == (0, 0, 2)
    setup.teardown()


def test_an_event_behind_data_waits_for_the_data_to_be_credited() -> None:
    setup = make_reader(0)
    setup.add_data(b"data")
    setup.add_event(CancelCheckpointMarker(1))
    reader = setup.reader
    assert not reader.is_available()  # the head is data: events do not overtake it
    assert reader.get_next_buffer() is None
    reader.add_credit(1)
    assert poll(reader)[:2] == (DataType.DATA_BUFFER, b"data")
    assert reader.credit == 0
    assert reader.is_available()
    assert poll(reader)[0] is DataType.EVENT_BUFFER
    setup.teardown()


def test_the_reader_is_told_when_its_subpartition_gets_data() -> None:
    setup = make_reader(2)
    assert setup.notified == []
    setup.add_data(b"ab", finish=False)
    setup.partition.subpartitions[0].flush()
    assert setup.notified == [setup.reader]
    setup.teardown()


def test_an_unattached_or_released_reader_serves_nothing() -> None:
    reader = CreditBasedReader(InputChannelID.generate(), 2, lambda _: None)
    assert not reader.is_available()
    assert reader.get_next_buffer() is None
    setup = make_reader(2)
    setup.add_data(b"abcd")
    consumed: list[ResultPartition] = []
    setup.partition.add_consumption_listener(consumed.append)
    setup.reader.release()
    setup.reader.release()  # idempotent
    assert setup.reader.is_released
    assert not setup.reader.is_available()
    assert setup.reader.get_next_buffer() is None
    assert consumed == [setup.partition]  # releasing the view counts as consumed
    setup.notified.clear()
    setup.add_data(b"efgh")
    assert setup.notified == []  # a released reader is not put back in the queue
    setup.teardown()


def test_a_failed_producer_is_raised_by_the_next_poll() -> None:
    setup = make_reader(2)
    setup.add_data(b"abcd")
    setup.partition.fail(RuntimeError("producer broke"))
    with pytest.raises(ProducerFailedError) as info:
        setup.reader.get_next_buffer()
    assert isinstance(info.value.__cause__, RuntimeError)
    assert str(info.value.__cause__) == "producer broke"
    setup.teardown()


def test_a_released_partition_is_raised_by_the_next_poll() -> None:
    setup = make_reader(2)
    setup.partition.release()
    with pytest.raises(PartitionReleasedError):
        setup.reader.get_next_buffer()
    setup.teardown()


@pytest.mark.parametrize("credit", [0, 2])
def test_a_failed_producer_makes_the_reader_available_so_the_failure_is_sent(
    credit: int,
) -> None:
    setup = make_reader(credit)
    try:
        setup.add_data(b"abcd")
        setup.notified.clear()
        setup.partition.fail(RuntimeError("producer broke"))
        assert setup.notified == [setup.reader]  # the server is told...
        assert setup.reader.is_available()  # ...and must then poll, to report the failure
        with pytest.raises(ProducerFailedError):
            setup.reader.get_next_buffer()
    finally:
        setup.teardown()


def test_a_data_buffer_polled_without_credit_is_an_illegal_state() -> None:
    # The credit check and the poll happen on the loop thread back to back; this simulates
    # a data buffer queued between them (an event was at the head when credit was checked).
    setup = make_reader(0)
    setup.add_event(CancelCheckpointMarker(1))
    assert poll(setup.reader)[0] is DataType.EVENT_BUFFER
    setup.add_data(b"abcd")
    subpartition = setup.partition.subpartitions[0]
    real = subpartition.get_availability_and_backlog
    subpartition.get_availability_and_backlog = lambda has_credit: (True, 1)  # type: ignore[method-assign]
    try:
        with pytest.raises(IllegalStateError, match="no credit available"):
            setup.reader.get_next_buffer()
    finally:
        subpartition.get_availability_and_backlog = real  # type: ignore[method-assign]
    assert setup.reader.credit == 0
    setup.teardown()


# -- the stateful model ------------------------------------------------------------------


@dataclass(slots=True)
class Element:
    """One queued buffer or event as the model sees it."""

    data_type: DataType
    data: bytearray
    finished: bool
    read: int = 0


EVENT_KINDS = st.sampled_from(["event", "aligned", "priority"])


class CreditMachine(RuleBasedStateMachine):
    """A producer, a receiver granting credit and a server serving one reader.

    The model mirrors the subpartition's queue (what is queued, what was read of it, what
    is finished), so it knows at every step what the reader may hand out: a data buffer
    only with credit, an event at the head of the queue always. The server polls when the
    reader says it is available ("server turn"); an "eager poll" ignores availability, as
    a server racing a producer might, and must still never get data without credit.
    """

    def __init__(self) -> None:
        super().__init__()
        self.network = NetworkBufferPool(32, SEGMENT_SIZE)
        self.partition = ResultPartition.create(
            ResultPartitionID.generate(), 1, self.network, max_overdraft_buffers=0
        )
        self.subpartition = self.partition.subpartitions[0]
        self.notified: list[CreditBasedReader] = []
        self._reader: CreditBasedReader | None = None
        self.initial_credit = 0
        self.added_credit = 0
        self.data_sent = 0
        self.builder: BufferBuilder | None = None
        self.open: Element | None = None
        self.model: list[Element] = []
        self.blocked = False
        self.finished = False
        self.next_sequence = 0
        self.next_byte = 0
        self.next_event_id = 0
        self.written = bytearray()
        self.read = bytearray()
        self.events_written: list[bytes] = []
        self.events_read: list[bytes] = []
        # The server waits after finding the reader unavailable. When a producer step
        # makes unread bytes available (adding a buffer or an event, flushing, finishing),
        # the server must have been told: by the view, by AddCredit or by a resume.
        self.waiting = True
        self.notified_at_wait = 0
        self.poked = False

    @property
    def reader(self) -> CreditBasedReader:
        assert self._reader is not None
        return self._reader

    @initialize(credit=st.integers(0, 3))
    def start(self, credit: int) -> None:
        self._reader = CreditBasedReader(InputChannelID.generate(), credit, self.notified.append)
        self._reader.attach(self.partition.create_subpartition_view(0, self._reader), 0)
        self.initial_credit = credit

    # -- model helpers -------------------------------------------------------------

    def _queued_data(self) -> int:
        return sum(1 for element in self.model if element.data_type.is_buffer)

    def _head_is_event(self) -> bool:
        return bool(self.model) and self.model[0].data_type.is_event

    def _start_waiting(self) -> None:
        self.waiting = True
        self.notified_at_wait = len(self.notified)
        self.poked = False

    def _check_told(self) -> None:
        """After a producer step that promises a notification: no lost wake-up."""
        unread = any(element.read < len(element.data) for element in self.model)
        if self.waiting and unread and self.reader.is_available():
            assert len(self.notified) > self.notified_at_wait or self.poked, "lost wake-up"

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
        """What ``poll_buffer`` returns, applied to the model."""
        if self.blocked:
            return None
        while self.model:
            head = self.model[0]
            chunk = bytes(head.data[head.read :])
            head.read = len(head.data)
            if head.finished:
                self.model.pop(0)
            if chunk:
                return head.data_type, chunk
            if not head.finished:
                return None
        return None

    def _poll(self) -> None:
        credit = self.reader.credit
        may_poll = credit > 0 or (not self.blocked and self._head_is_event())
        result = self.reader.get_next_buffer()
        expected = self._model_poll() if may_poll else None
        if expected is None:
            assert result is None
            self._start_waiting()
            return
        assert result is not None, f"expected {expected}"
        data = bytes(result.buffer.memory)
        data_type = result.buffer.data_type
        result.buffer.recycle()
        assert (data_type, data) == expected
        assert result.sequence_number == self.next_sequence
        self.next_sequence += 1
        if data_type.is_buffer:
            assert credit > 0, "a data buffer was handed out without credit"
            assert self.reader.credit == credit - 1
            self.data_sent += 1
            self.read += data
        else:
            assert self.reader.credit == credit, "an event must not cost credit"
            self.events_read.append(data)
        if data_type.is_blocking_upstream:
            self.blocked = True
        assert 0 <= result.backlog <= self._queued_data()
        if self.reader.is_available():
            self.waiting = False
        else:
            self._start_waiting()

    # -- producer ------------------------------------------------------------------

    @precondition(lambda self: not self.finished and self._queued_data() < 8)
    @rule(size=st.integers(0, 2 * SEGMENT_SIZE))
    def add_data_buffer(self, size: int) -> None:
        self._finish_open()
        builder = self.partition.buffer_pool.request_buffer_builder(0)
        assert builder is not None
        assert self.subpartition.add(builder.create_buffer_consumer())
        self.builder = builder
        self.open = Element(DataType.DATA_BUFFER, bytearray(), finished=False)
        self.model.append(self.open)
        self._append(size)
        self._check_told()

    @precondition(lambda self: self.builder is not None)
    @rule(size=st.integers(0, SEGMENT_SIZE))
    def append(self, size: int) -> None:
        self._append(size)

    @precondition(lambda self: self.builder is not None)
    @rule()
    def finish_builder(self) -> None:
        self._finish_open()

    @precondition(lambda self: not self.finished)
    @rule(kind=EVENT_KINDS)
    def add_event(self, kind: str) -> None:
        self._finish_open()  # the writer finishes its open buffers before an event
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
        assert self.subpartition.add_event(payload, data_type)
        element = Element(data_type, bytearray(payload), finished=True)
        if priority:
            index = 0
            while index < len(self.model) and self.model[index].data_type.has_priority:
                index += 1
            self.model.insert(index, element)
        else:
            self.model.append(element)
            self.events_written.append(payload)
        self._check_told()

    @rule()
    def flush(self) -> None:
        self.subpartition.flush()
        self._check_told()

    @precondition(lambda self: not self.finished)
    @rule()
    def finish(self) -> None:
        self._finish_open()
        self.subpartition.finish()
        payload = serialize_event(EndOfPartitionEvent())
        self.model.append(Element(DataType.END_OF_PARTITION, bytearray(payload), finished=True))
        self.events_written.append(payload)
        self.finished = True
        self._check_told()

    # -- receiver ------------------------------------------------------------------

    @rule(credit=st.integers(1, 4))
    def add_credit(self, credit: int) -> None:
        self.reader.add_credit(credit)
        self.added_credit += credit
        self.poked = True

    @rule(credit=st.integers(-3, 0))
    def add_bad_credit(self, credit: int) -> None:
        before = self.reader.credit
        with pytest.raises(LocalProtocolError):
            self.reader.add_credit(credit)
        assert self.reader.credit == before

    @rule()
    def resume(self) -> None:
        self.reader.resume_consumption()
        self.blocked = False
        self.poked = True

    # -- server ----------------------------------------------------------------------

    @rule()
    def server_turn(self) -> None:
        if self.reader.is_available():
            self._poll()
        else:
            self._start_waiting()

    @rule()
    def eager_poll(self) -> None:
        self._poll()

    # -- invariants ----------------------------------------------------------------

    @invariant()
    def credit_is_never_negative_nor_exceeded(self) -> None:
        if self._reader is None:
            return
        assert self.reader.credit >= 0
        assert self.data_sent <= self.initial_credit + self.added_credit
        assert self.reader.credit == self.initial_credit + self.added_credit - self.data_sent
        assert self.reader.buffers_sent == self.data_sent

    @invariant()
    def availability_follows_credit(self) -> None:
        if self._reader is None:
            return
        available = self.reader.is_available()
        if self.blocked:
            assert not available
        elif self.reader.credit == 0:
            # Without credit only an event at the head of the queue may go.
            assert available == self._head_is_event()
        elif len(self.model) > 1 or (self.model and self.model[0].finished):
            assert available

    @invariant()
    def bytes_and_events_in_order(self) -> None:
        assert self.read == self.written[: len(self.read)]
        # Priority events overtake; the others keep their order among themselves.
        ordinary = [event for event in self.events_read if event in self.events_written]
        assert ordinary == self.events_written[: len(ordinary)]

    def teardown(self) -> None:
        if self._reader is None:
            return
        self._finish_open()
        self.flush()
        self.add_credit(4 * len(self.model) + 4)
        for _ in range(4 * len(self.model) + 8):
            if self.blocked:
                self.resume()
            if not self.model:
                break
            self._poll()
        assert not self.model
        assert self.read == self.written
        self.reader.release()
        self.partition.release()
        self.partition.close()
        assert self.network.available_segments == self.network.total_segments


CreditMachine.TestCase.settings = settings(max_examples=250, stateful_step_count=40)
TestCreditModel = CreditMachine.TestCase


# --------------------------------------------------------------------------------------
# Receiver side: a RemoteInputChannel's credit
# --------------------------------------------------------------------------------------


class RecordingClient:
    """A PartitionRequestClient that records what the channel asks of it."""

    def __init__(self) -> None:
        self.address = "127.0.0.1:1"
        self.requests: list[tuple[InputChannelID, int]] = []
        self.credit_notifications = 0
        self.closed: list[InputChannelID] = []

    def request_subpartition(self, channel: RemoteInputChannel, delay_ms: int = 0) -> None:
        self.requests.append((channel.id, delay_ms))

    def notify_credit_available(self, channel: RemoteInputChannel) -> None:
        self.credit_notifications += 1

    def resume_consumption(self, channel: RemoteInputChannel) -> None:
        pass

    def close_channel(self, channel: RemoteInputChannel) -> None:
        self.closed.append(channel.id)


class RecordingFactory:
    def __init__(self, client: RecordingClient) -> None:
        self.client = client

    def create_partition_request_client(self, address: ConnectionID) -> RecordingClient:
        return self.client


@dataclass(slots=True)
class ChannelSetup:
    network: NetworkBufferPool
    gate: SingleInputGate
    channel: RemoteInputChannel
    client: RecordingClient

    def deliver(
        self, sequence: int, payload: bytes, backlog: int = 0, allocate: bool = True
    ) -> None:
        """What the network thread does for one data BufferResponse."""
        memory = self.channel.allocate(len(payload), DataType.DATA_BUFFER) if allocate else None
        if memory is not None:
            memory[:] = payload
        self.channel.on_buffer_response(
            BufferResponse(
                self.channel.id,
                0,
                sequence,
                backlog,
                DataType.DATA_BUFFER,
                False,
                len(payload),
                memory if memory is not None else payload,
            )
        )

    def read(self) -> bytes:
        result = self.channel.get_next_buffer()
        assert result is not None
        data = bytes(result.buffer.memory)
        result.buffer.recycle()
        return data

    def close(self) -> None:
        self.gate.close()
        assert self.network.available_segments == self.network.total_segments
        assert self.network.required_segments == 0


def make_channel(initial_credit: int = 2, floating: bool = True) -> ChannelSetup:
    network = NetworkBufferPool(32, 64)
    pool = network.create_buffer_pool(1, 8) if floating else None
    gate = SingleInputGate(owner="consumer", buffer_pool=pool)
    client = RecordingClient()
    channel = RemoteInputChannel(
        gate,
        0,
        ResultPartitionID.generate(),
        0,
        ("127.0.0.1", 1),
        RecordingFactory(client),
        network,
        initial_credit=initial_credit,
    )
    gate.set_channels([channel])
    channel.setup()
    gate.request_partitions()
    assert client.requests == [(channel.id, 0)]
    return ChannelSetup(network, gate, channel, client)


def test_exclusive_buffers_are_the_initial_credit() -> None:
    setup = make_channel(initial_credit=2, floating=False)
    manager = setup.channel.buffer_manager
    assert (manager.available, manager.floating_held) == (2, 0)
    setup.deliver(0, b"first")
    setup.deliver(1, b"second")
    assert manager.available == 0
    assert setup.channel.unannounced_credit == 0
    assert setup.client.credit_notifications == 0
    setup.close()


def test_gate_buffer_usage_counts_buffers_holding_data_as_flink_does() -> None:
    # Flink's inPoolUsage: floating buffers handed out less those idle in channels, plus
    # exclusive buffers holding data, over the floating pool's size plus the exclusive
    # buffers. Free credit does not count as use.
    setup = make_channel(initial_credit=2)
    gate, manager = setup.gate, setup.channel.buffer_manager
    assert gate.buffer_pool is not None
    total = gate.buffer_pool.num_buffers + 2
    assert gate.buffer_usage == (0, total)
    setup.deliver(0, b"first", backlog=3)  # into an exclusive buffer; now 5 wanted free
    assert (manager.exclusive_in_use, manager.floating_held) == (1, 4)
    assert gate.buffer_usage == (1, total)
    setup.deliver(1, b"second", backlog=2)  # into a floating buffer
    assert gate.buffer_usage == (2, total)
    assert setup.read() == b"first"
    assert setup.read() == b"second"
    assert gate.buffer_usage == (0, total)
    setup.close()
    assert gate.buffer_usage[0] == 0


def test_a_received_buffer_is_replaced_by_a_floating_one() -> None:
    # Required = backlog + initial credit: with backlog 0 the channel still wants its
    # initial credit free, so it borrows a floating buffer for the one just filled.
    setup = make_channel(initial_credit=2)
    manager = setup.channel.buffer_manager
    setup.deliver(0, b"first", backlog=0)
    assert (manager.available, manager.floating_held, manager.required) == (2, 1, 2)
    assert setup.channel.unannounced_credit == 1
    setup.close()


def test_recycled_buffers_are_announced_as_one_coalesced_credit() -> None:
    setup = make_channel(initial_credit=2, floating=False)
    setup.deliver(0, b"first")
    setup.deliver(1, b"second")
    assert setup.read() == b"first"
    assert setup.read() == b"second"
    # Two recycles, one notification: the client sends one AddCredit(2) when it gets to it.
    assert setup.client.credit_notifications == 1
    assert setup.channel.get_and_reset_unannounced_credit() == 2
    assert setup.channel.get_and_reset_unannounced_credit() == 0
    setup.close()


def test_backlog_borrows_floating_buffers_and_announces_them() -> None:
    setup = make_channel(initial_credit=2)
    setup.deliver(0, b"first", backlog=3)
    manager = setup.channel.buffer_manager
    assert manager.required == 5
    assert manager.available == 5  # one exclusive left + four floating
    assert manager.floating_held == 4
    assert setup.channel.unannounced_credit == 4
    assert setup.client.credit_notifications == 1
    setup.close()


def test_data_beyond_credit_is_a_remote_protocol_error() -> None:
    setup = make_channel(initial_credit=1, floating=False)
    setup.deliver(0, b"first")
    assert setup.channel.allocate(5, DataType.DATA_BUFFER) is None
    with pytest.raises(RemoteProtocolError, match="without credit"):
        setup.channel.get_next_buffer()
    setup.close()


@pytest.mark.parametrize(
    ("sequences", "expected", "received"),
    [([0, 2], 1, 2), ([0, 1, 1], 2, 1), ([1], 0, 1), ([0, 0], 1, 0)],
    ids=["gap", "duplicate", "first-missing", "repeat-first"],
)
def test_a_sequence_gap_or_repeat_fails_the_next_read(
    sequences: list[int], expected: int, received: int
) -> None:
    setup = make_channel(initial_credit=4)
    for sequence in sequences:
        setup.deliver(sequence, b"payload")
    with pytest.raises(BufferReorderingError) as info:
        setup.channel.get_next_buffer()
    assert str(info.value) == (
        f"Buffer re-ordering: expected buffer with sequence number {expected}, "
        f"but received {received}."
    )
    assert (info.value.expected, info.value.received) == (expected, received)
    # The out-of-order payload is not queued; its segment is given back (close() checks
    # that every segment returns to the network pool).
    assert setup.channel.buffers_in_use() == len(sequences) - 1
    with pytest.raises(BufferReorderingError):  # and it stays failed
        setup.channel.get_next_buffer()
    setup.close()


def test_an_empty_data_buffer_uses_a_sequence_number_but_no_buffer() -> None:
    setup = make_channel(initial_credit=2)
    setup.deliver(0, b"", allocate=False)
    assert setup.channel.expected_sequence_number == 1
    assert setup.channel.buffer_manager.available == 2
    assert setup.channel.get_next_buffer() is None
    setup.deliver(1, b"x")
    assert setup.read() == b"x"
    setup.close()


def test_release_returns_queued_and_free_buffers_and_closes_the_channel() -> None:
    setup = make_channel(initial_credit=2)
    setup.deliver(0, b"first", backlog=2)
    setup.deliver(1, b"second", backlog=1)
    setup.channel.release_all_resources()
    assert setup.client.closed == [setup.channel.id]
    assert setup.channel.get_and_reset_unannounced_credit() == 0  # nothing after release
    setup.close()


def test_credit_is_held_back_while_the_sender_has_more() -> None:
    """Freed segments gather while the sender still holds more credit than they are."""
    setup = make_channel(initial_credit=4, floating=False)
    setup.deliver(0, b"a")
    assert setup.channel.outstanding_credit == 3
    assert setup.read() == b"a"
    assert setup.channel.unannounced_credit == 1
    assert setup.client.credit_notifications == 0  # 1 held back < 3 at the sender
    setup.close()


def test_an_arrival_that_uses_up_the_senders_credit_announces_what_is_held_back() -> None:
    """The sender's credit falls with every buffer received; held-back credit is due
    as soon as it is at least as much, even if no segment comes free again (a
    floating segment read later goes back to the gate's pool, not to the channel)."""
    setup = make_channel(initial_credit=4, floating=False)
    setup.deliver(0, b"a")
    assert setup.read() == b"a"
    setup.deliver(1, b"b")
    assert setup.client.credit_notifications == 0  # 1 held back < 2 at the sender
    setup.deliver(2, b"c")
    assert setup.channel.outstanding_credit == 1
    assert setup.client.credit_notifications == 1
    assert setup.channel.get_and_reset_unannounced_credit() == 1
    assert setup.channel.outstanding_credit == 2
    setup.close()


def test_when_the_sender_has_no_credit_every_freed_segment_is_announced() -> None:
    setup = make_channel(initial_credit=2, floating=False)
    setup.deliver(0, b"a")
    setup.deliver(1, b"b")
    assert setup.channel.outstanding_credit == 0
    assert setup.read() == b"a"
    assert setup.client.credit_notifications == 1
    setup.close()
