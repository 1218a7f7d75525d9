"""The data server under stress, and two TaskManagers' network stacks over loopback.

Real ``ShuffleEnvironment`` instances run in this process (each with its own network
loop thread and data port on 127.0.0.1). Misbehaving peers are raw sockets that speak
the frame format with ``encode`` and read the answers with ``FrameDecoder``; well-behaved
peers are raw sockets too, or a second environment reading through RemoteInputChannels.
Every wait is bounded by a socket timeout or a future timeout; nothing sleeps.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import socket
import struct
import threading
import types
from collections import deque
from collections.abc import Callable, Coroutine, Iterator, Sequence
from typing import Final, TypeVar, cast

import pytest

from loop_helpers import busy_loop
from penstock.buffer.buffer import DataType
from penstock.config import Configuration
from penstock.consumer.input_gate import SingleInputGate
from penstock.consumer.remote_channel import RemoteInputChannel
from penstock.errors import (
    BufferReorderingError,
    ConfigurationError,
    PartitionNotFoundError,
    PartitionReleasedError,
    RemoteError,
    RemoteTransportError,
)
from penstock.events import EndOfPartitionEvent
from penstock.ids import InputChannelID, ResultPartitionID
from penstock.partition.manager import PartitionRegistrationListener
from penstock.partition.result_partition import ResultPartition
from penstock.serialization.record_deserializer import RecordDeserializer
from penstock.serialization.types import IntSerializer
from penstock.shuffle import (
    InputGateDeploymentDescriptor,
    ResultPartitionDeploymentDescriptor,
    ShuffleDescriptor,
    ShuffleEnvironment,
)
from penstock.transport.codec import (
    BAD_MAGIC_MESSAGE,
    MAGIC_NUMBER,
    NEED_DATA,
    FrameDecoder,
    encode,
)
from penstock.transport.messages import (
    AddCredit,
    BufferResponse,
    CloseRequest,
    ErrorResponse,
    Message,
    PartitionRequest,
)
from penstock.transport.server import NettyServer, _ServerConnection

pytestmark = pytest.mark.integration

TIMEOUT_S: Final = 10.0
SEGMENT_SIZE: Final = 4096
NETWORK_MEMORY: Final = 4 << 20  # 1024 segments of 4 KiB per environment
INTS: Final = IntSerializer()
FRAME_HEADER: Final = struct.Struct(">iIb")
T = TypeVar("T")


# --------------------------------------------------------------------------------------
# Environments and peers
# --------------------------------------------------------------------------------------

EnvironmentFactory = Callable[..., ShuffleEnvironment]


@pytest.fixture
def environment() -> Iterator[EnvironmentFactory]:
    """Starts environments with extra configuration; closes them all afterwards."""
    started: list[ShuffleEnvironment] = []

    def start(name: str = "taskmanager", **values: object) -> ShuffleEnvironment:
        config: dict[str, object] = {
            "taskmanager.memory.network.min": NETWORK_MEMORY,
            "taskmanager.memory.network.max": NETWORK_MEMORY,
            "taskmanager.memory.segment-size": SEGMENT_SIZE,
        }
        config.update(values)
        env = ShuffleEnvironment.from_configuration(Configuration(config), name=name)
        started.append(env)
        env.start()
        return env

    yield start
    for env in reversed(started):
        env.close()


async def _nothing() -> None:
    return None


def barrier(env: ShuffleEnvironment) -> None:
    """Returns once the loop has finished whatever callback it was running."""
    env.loop_thread.run(_nothing(), timeout=TIMEOUT_S)


def assert_all_segments_returned(env: ShuffleEnvironment) -> None:
    barrier(env)
    pool = env.network_pool
    assert pool.available_segments == pool.total_segments
    assert pool.required_segments == 0


class RawPeer:
    """A data client on a plain socket: writes frames, decodes what the server sends."""

    def __init__(self, address: tuple[str, int]) -> None:
        self.sock = socket.create_connection(address, timeout=TIMEOUT_S)
        self.decoder = FrameDecoder(SEGMENT_SIZE)
        self.received: deque[Message] = deque()

    def send(self, *messages: Message) -> None:
        self.sock.sendall(b"".join(encode(message) for message in messages))

    def send_raw(self, data: bytes) -> None:
        self.sock.sendall(data)

    def _receive(self) -> bool:
        """Reads once; False at the end of the stream (or a reset)."""
        try:
            chunk = self.sock.recv(65536)
        except ConnectionResetError:
            return False
        if not chunk:
            return False
        self.decoder.feed(chunk)
        while (message := self.decoder.next_message()) is not NEED_DATA:
            self.received.append(message)
        return True

    def next_message(self) -> Message:
        while not self.received:
            if not self._receive():
                msg = "the server closed the connection"
                raise EOFError(msg)
        return self.received.popleft()

    def read_until_closed(self) -> list[Message]:
        """Everything the server sends before it closes the connection."""
        while self._receive():
            pass
        messages = list(self.received)
        self.received.clear()
        return messages

    def request(self, partition_id: ResultPartitionID, credit: int = 2) -> InputChannelID:
        receiver_id = InputChannelID.generate()
        self.send(PartitionRequest(partition_id, 0, 0, receiver_id, credit))
        return receiver_id

    def read_records(
        self, receiver_id: InputChannelID, count: int | None = None
    ) -> tuple[list[int], bool]:
        """Reads ``count`` records (or up to the end of partition), granting credit back.

        Returns the records and whether the end of partition arrived.
        """
        records: list[int] = []
        deserializer = RecordDeserializer(INTS)
        while count is None or len(records) < count:
            message = self.next_message()
            if isinstance(message, ErrorResponse):
                raise message.to_exception()
            assert isinstance(message, BufferResponse)
            assert message.receiver_id == receiver_id
            if message.data_type is DataType.END_OF_PARTITION:
                return records, True
            assert message.data_type is DataType.DATA_BUFFER
            assert message.payload is not None
            records.extend(deserializer.read(message.payload))
            self.send(AddCredit(1, receiver_id))  # the buffer was read: credit back
        return records, False

    def closed_within(self, timeout_s: float) -> bool:
        """Whether the server closes the connection within ``timeout_s`` (saying nothing)."""
        self.sock.settimeout(timeout_s)
        try:
            return not self._receive()
        except TimeoutError:
            return False
        finally:
            self.sock.settimeout(TIMEOUT_S)

    def close(self) -> None:
        self.sock.close()


def write(partition: ResultPartition, values: Sequence[int], channel: int = 0) -> None:
    """Writes framed ints to a subpartition and makes them readable."""
    partition.emit_record(INTS.serialize_frames(values), channel)
    partition.flush(channel)


def serve_to_the_end(
    peer: RawPeer, receiver_id: InputChannelID, partition: ResultPartition, count: int
) -> None:
    """Writes ``count`` ints and the end of the partition; the peer reads them all, then
    both close."""
    write(partition, range(count))
    partition.finish()
    assert peer.read_records(receiver_id) == (list(range(count)), True)
    peer.close()
    partition.close()


def make_partition(env: ShuffleEnvironment, subpartitions: int = 1) -> ResultPartition:
    return env.create_result_partition(
        ResultPartitionDeploymentDescriptor(ResultPartitionID.generate(), subpartitions)
    )


def make_gate(
    consumer: ShuffleEnvironment,
    producer: ShuffleEnvironment,
    partition_id: ResultPartitionID,
    channels: int = 1,
) -> SingleInputGate:
    return consumer.create_input_gate(
        InputGateDeploymentDescriptor(
            0,
            tuple(
                ShuffleDescriptor(partition_id, producer.data_address, index)
                for index in range(channels)
            ),
        ),
        owner="consumer",
    )


def read_gate(gate: SingleInputGate, timeout: float = TIMEOUT_S) -> list[list[int]]:
    """Reads a gate to its end; the records of each channel, in arrival order."""
    deserializers = [RecordDeserializer(INTS) for _ in range(gate.num_channels)]
    records: list[list[int]] = [[] for _ in range(gate.num_channels)]
    while not gate.is_finished():
        item = gate.get_next(timeout=timeout)
        if item is None:
            assert gate.is_finished(), f"no data for {timeout} s"
            break
        if item.buffer is not None:
            records[item.channel_index].extend(
                deserializers[item.channel_index].read_buffer(item.buffer)
            )
        else:
            assert isinstance(item.event, EndOfPartitionEvent)
    return records


def spy_on_requests(
    env: ShuffleEnvironment, monkeypatch: pytest.MonkeyPatch
) -> tuple[list[ResultPartitionID], threading.Event]:
    """Records every partition the data server is asked for (after it registered it)."""
    manager = env.partition_manager
    original = manager.add_registration_listener
    requested: list[ResultPartitionID] = []
    seen = threading.Event()

    def spy(
        partition_id: ResultPartitionID, listener: PartitionRegistrationListener
    ) -> ResultPartition | None:
        partition = original(partition_id, listener)
        requested.append(partition_id)
        seen.set()
        return partition

    monkeypatch.setattr(manager, "add_registration_listener", spy)
    return requested, seen


class ServedConnection:
    """A well-behaved raw consumer of a real partition, to show it keeps being served."""

    def __init__(self, env: ShuffleEnvironment) -> None:
        self.partition = make_partition(env)
        self.peer = RawPeer(env.data_address)
        self.receiver_id = self.peer.request(self.partition.partition_id)
        write(self.partition, range(100))
        records, _ = self.peer.read_records(self.receiver_id, 100)
        assert records == list(range(100))

    def finish(self) -> None:
        """The rest of the data, to the end of the partition, still arrives."""
        write(self.partition, range(100, 300))
        self.partition.finish()
        records, ended = self.peer.read_records(self.receiver_id)
        assert records == list(range(100, 300))
        assert ended
        self.peer.close()
        self.partition.close()


def assert_fatal(messages: list[Message], type_name: str, message: str) -> ErrorResponse:
    """The connection got exactly one ErrorResponse, fatal, and was closed."""
    assert len(messages) == 1, messages
    error = messages[0]
    assert isinstance(error, ErrorResponse)
    assert error.is_fatal
    assert error.type_name == type_name
    assert message in error.message
    return error


# --------------------------------------------------------------------------------------
# Misbehaving peers
# --------------------------------------------------------------------------------------

CORRUPT = "penstock.errors.CorruptFrameError"
GARBAGE: Final = {
    "http-request": (b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", CORRUPT, BAD_MAGIC_MESSAGE),
    "unknown-message-id": (
        FRAME_HEADER.pack(9, MAGIC_NUMBER, 99),
        CORRUPT,
        "Received unknown message from producer: 99",
    ),
    "frame-shorter-than-header": (
        FRAME_HEADER.pack(4, MAGIC_NUMBER, 5),
        CORRUPT,
        "shorter than the 9-byte header",
    ),
    "huge-control-frame": (
        FRAME_HEADER.pack(2**31 - 1, MAGIC_NUMBER, 2),
        CORRUPT,
        "exceeds the limit",
    ),
    "zero-credit": (
        struct.pack(">iIbiqq", 29, MAGIC_NUMBER, 6, 0, 1, 2),
        CORRUPT,
        "Corrupt AddCredit frame: credit must be an int32 of at least 1, got 0.",
    ),
    "server-message-from-a-client": (
        encode(
            BufferResponse(
                InputChannelID.generate(), 0, 0, 0, DataType.DATA_BUFFER, False, 3, b"abc"
            )
        ),
        "penstock.errors.RemoteProtocolError",
        "unexpected BufferResponse from a data client",
    ),
}


@pytest.mark.parametrize("case", list(GARBAGE), ids=list(GARBAGE))
def test_garbage_gets_a_fatal_error_and_closes_only_that_connection(
    environment: EnvironmentFactory, case: str
) -> None:
    env = environment("producer")
    served = ServedConnection(env)
    garbage, type_name, message = GARBAGE[case]
    bad = RawPeer(env.data_address)
    bad.send_raw(garbage)
    assert_fatal(bad.read_until_closed(), type_name, message)
    bad.close()
    served.finish()
    assert_all_segments_returned(env)


def test_a_request_for_several_subpartitions_is_refused_for_its_channel_only(
    environment: EnvironmentFactory,
) -> None:
    # One channel reads one subpartition here: serving only the first of a range
    # would lose the others' records without a word.
    env = environment("producer")
    partition = make_partition(env, 2)
    peer = RawPeer(env.data_address)
    ranged = InputChannelID.generate()
    peer.send(PartitionRequest(partition.partition_id, 0, 1, ranged, 2))
    refusal = peer.next_message()
    assert isinstance(refusal, ErrorResponse)
    assert refusal.receiver_id == ranged and not refusal.is_fatal
    assert "subpartitions [0, 1]" in refusal.message
    receiver_id = peer.request(partition.partition_id)  # the connection goes on
    write(partition, range(5))
    assert peer.read_records(receiver_id, 5) == (list(range(5)), False)
    peer.close()
    partition.release()
    partition.close()


def test_bad_magic_is_reported_with_flinks_message(environment: EnvironmentFactory) -> None:
    env = environment("producer")
    peer = RawPeer(env.data_address)
    frame = encode(AddCredit(1, InputChannelID.generate()))
    peer.send_raw(frame[:4] + struct.pack(">I", 0xCAFEBABE) + frame[8:])
    error = assert_fatal(peer.read_until_closed(), CORRUPT, BAD_MAGIC_MESSAGE)
    assert error.message == "Network stream corrupted: received incorrect magic number."
    assert error.receiver_id is None
    assert "CorruptFrameError" in error.traceback_text
    peer.close()


def test_a_second_request_for_the_same_channel_is_a_protocol_violation(
    environment: EnvironmentFactory,
) -> None:
    env = environment("producer")
    partition = make_partition(env)
    peer = RawPeer(env.data_address)
    receiver_id = peer.request(partition.partition_id)
    peer.send(PartitionRequest(partition.partition_id, 0, 0, receiver_id, 2))
    assert_fatal(
        peer.read_until_closed(),
        "penstock.errors.RemoteProtocolError",
        f"a second PartitionRequest for channel {receiver_id}",
    )
    peer.close()


@pytest.mark.parametrize("cut", [1, 8, 9, 40])
def test_half_a_frame_then_disconnect_leaves_the_server_unaffected(
    environment: EnvironmentFactory, cut: int
) -> None:
    env = environment("producer")
    partition = make_partition(env)
    frame = encode(PartitionRequest(partition.partition_id, 0, 0, InputChannelID.generate(), 2))
    half = RawPeer(env.data_address)
    half.send_raw(frame[:cut])
    half.close()
    # The cut request created no reader: the one subpartition can still be requested.
    peer = RawPeer(env.data_address)
    receiver_id = peer.request(partition.partition_id)
    serve_to_the_end(peer, receiver_id, partition, 50)
    assert_all_segments_returned(env)


def test_an_idle_connection_is_closed_and_others_are_not(
    environment: EnvironmentFactory,
) -> None:
    env = environment("producer")
    env.server.idle_timeout_s = 0.5
    partition = make_partition(env)
    busy = RawPeer(env.data_address)
    receiver_id = busy.request(partition.partition_id)  # then silent: but it has a reader
    idle = RawPeer(env.data_address)
    assert idle.read_until_closed() == []  # closed without a word after the timeout
    idle.close()
    # The busy connection has been silent for longer than the idle timeout by now.
    serve_to_the_end(busy, receiver_id, partition, 20)


IDLE_TIMEOUT_S: Final = 1.0
KEEP_ALIVE_S: Final = 0.05
"""How often the talking peer talks: a stall would have to last 20 times as long."""


def test_a_connection_that_keeps_talking_is_not_idle(environment: EnvironmentFactory) -> None:
    env = environment("producer")
    env.server.idle_timeout_s = IDLE_TIMEOUT_S
    partition = make_partition(env)
    talker = RawPeer(env.data_address)
    talker.send(AddCredit(1, InputChannelID.generate()))
    # The clock is a silent connection opened after the talker: once the server closes
    # it for idleness, the talker has been open for longer than the idle timeout too.
    silent = RawPeer(env.data_address)
    for _ in range(int(TIMEOUT_S / KEEP_ALIVE_S)):
        if silent.closed_within(KEEP_ALIVE_S):
            break
        talker.send(AddCredit(1, InputChannelID.generate()))
    else:
        pytest.fail(f"a silent connection stayed open for {TIMEOUT_S} s")
    silent.close()
    # Yet the talker, never silent for long, is still served.
    receiver_id = talker.request(partition.partition_id)
    serve_to_the_end(talker, receiver_id, partition, 10)


class _ReadingOnClose(asyncio.Transport):
    """A transport that, like a TLS one, reads the rest of the stream when closed."""

    def __init__(self, rest: bytes) -> None:
        super().__init__()
        self.rest = rest
        self.protocol: _ServerConnection | None = None

    def get_extra_info(self, name: str, default: object = None) -> object:
        return "tls" if name == "sslcontext" else default  # no DirectWriter: not a socket

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        pass

    def is_closing(self) -> bool:
        return False

    def write(self, data: bytes | bytearray | memoryview) -> None:
        pass

    def close(self) -> None:
        rest, self.rest = self.rest, b""
        if rest and self.protocol is not None:
            area = self.protocol.get_buffer(-1)
            area[: len(rest)] = rest
            self.protocol.buffer_updated(len(rest))


def handled_messages(reads: Sequence[bytes], rest_on_close: bytes = b"") -> list[Message]:
    """What a server connection handles, given its reads one by one (no socket)."""
    transport = _ReadingOnClose(rest_on_close)

    async def deliver() -> list[Message]:
        server = types.SimpleNamespace(
            max_buffer_size=SEGMENT_SIZE,
            max_control_frame_size=1024 * 1024,
            write_high_water_mark=SEGMENT_SIZE,
            loop_thread=None,
            connections=set(),
            idle_timeout_s=60.0,
        )
        connection = _ServerConnection(cast("NettyServer", server))
        handled: list[Message] = []
        handle = connection._handle

        def record(message: Message) -> None:
            handled.append(message)
            handle(message)

        connection._handle = record  # type: ignore[method-assign]
        transport.protocol = connection
        connection.connection_made(transport)
        for data in reads:
            area = connection.get_buffer(-1)
            area[: len(data)] = data
            connection.buffer_updated(len(data))
        connection.connection_lost(None)
        return handled

    return asyncio.run(deliver())


CREDITS: Final = [encode(AddCredit(n, InputChannelID.generate())) for n in range(1, 301)]


def credits_of(messages: list[Message]) -> list[int]:
    return [message.credit for message in messages if isinstance(message, AddCredit)]


def test_frames_cut_across_reads_are_reassembled() -> None:
    # The server reads into one area and reuses it for the next read: the first part of
    # a frame cut by a read boundary must be kept elsewhere before it is overwritten.
    stream = b"".join(CREDITS)
    reads = [stream[start : start + 7] for start in range(0, len(stream), 7)]  # 7 ∤ 29
    assert credits_of(handled_messages(reads)) == list(range(1, 301))


def test_a_read_while_a_read_is_decoded_leaves_that_one_intact() -> None:
    # Closing a TLS transport from within a message's handling reads again at once: that
    # read must not land where the rest of the message's own read still waits.
    first = encode(CloseRequest()) + b"".join(CREDITS[:100])
    handled = handled_messages([first], rest_on_close=b"".join(CREDITS[100:]))
    assert isinstance(handled[0], CloseRequest)
    assert credits_of(handled[1:]) == list(range(1, 301))
    assert len(handled) == 301


def test_add_credit_for_an_unknown_receiver_is_ignored(environment: EnvironmentFactory) -> None:
    env = environment("producer")
    partition = make_partition(env)
    peer = RawPeer(env.data_address)
    peer.send(AddCredit(5, InputChannelID.generate()))
    receiver_id = peer.request(partition.partition_id)
    write(partition, range(10))
    partition.finish()
    first = peer.next_message()  # no ErrorResponse came before the data
    assert isinstance(first, BufferResponse)
    assert first.receiver_id == receiver_id
    assert first.sequence_number == 0
    peer.close()
    partition.close()


# --------------------------------------------------------------------------------------
# Flow control on the wire
# --------------------------------------------------------------------------------------


class CreditTrackingPeer(RawPeer):
    """A raw consumer of several channels that checks the server stays within credit."""

    def __init__(self, address: tuple[str, int]) -> None:
        super().__init__(address)
        self.credit: dict[InputChannelID, int] = {}
        self.data_buffers: dict[InputChannelID, int] = {}
        self.records: dict[InputChannelID, list[int]] = {}
        self.ended: set[InputChannelID] = set()
        self.deserializers: dict[InputChannelID, RecordDeserializer[int]] = {}

    def request_with_credit(
        self, partition_id: ResultPartitionID, subpartition: int, credit: int
    ) -> InputChannelID:
        receiver_id = InputChannelID.generate()
        self.send(PartitionRequest(partition_id, subpartition, subpartition, receiver_id, credit))
        self.credit[receiver_id] = credit
        self.data_buffers[receiver_id] = 0
        self.records[receiver_id] = []
        self.deserializers[receiver_id] = RecordDeserializer(INTS)
        return receiver_id

    def read_to_end(self, receiver_id: InputChannelID, grant: bool) -> list[int]:
        """Reads every channel's messages until ``receiver_id`` ends."""
        while receiver_id not in self.ended:
            message = self.next_message()
            assert isinstance(message, BufferResponse), message
            target = message.receiver_id
            if message.data_type is DataType.END_OF_PARTITION:
                self.ended.add(target)
                continue
            assert message.data_type is DataType.DATA_BUFFER
            self.credit[target] -= 1
            assert self.credit[target] >= 0, "the server sent a data buffer without credit"
            self.data_buffers[target] += 1
            assert message.payload is not None
            self.records[target].extend(self.deserializers[target].read(message.payload))
            if grant and target == receiver_id:
                self.send(AddCredit(1, target))
                self.credit[target] += 1
        return self.records[receiver_id]


def test_a_buffer_beyond_credit_is_never_sent_and_a_stalled_channel_does_not_stall_others(
    environment: EnvironmentFactory,
) -> None:
    env = environment("producer")
    partition = make_partition(env, 2)
    peer = CreditTrackingPeer(env.data_address)
    stalled = peer.request_with_credit(partition.partition_id, 0, credit=1)
    flowing = peer.request_with_credit(partition.partition_id, 1, credit=1)
    per_buffer = SEGMENT_SIZE // 12  # 8-byte ints with a 4-byte length each
    for channel in (0, 1):
        partition.emit_record(INTS.serialize_frames(range(5 * per_buffer)), channel)
    partition.finish()
    # The flowing channel is read to its end, granting one credit per buffer read;
    # the stalled one gets its one credited buffer and nothing else meanwhile.
    records = peer.read_to_end(flowing, grant=True)
    assert records == list(range(5 * per_buffer))
    assert peer.data_buffers[stalled] == 1
    assert peer.credit[stalled] == 0
    # Credit, and the rest follows; the end of partition needs none.
    peer.send(AddCredit(4, stalled))
    peer.credit[stalled] += 4
    peer.read_to_end(stalled, grant=False)
    assert peer.data_buffers[stalled] == 5
    assert peer.credit[stalled] == 0
    peer.close()
    partition.close()
    assert_all_segments_returned(env)


@pytest.mark.parametrize(
    ("subpartition", "expected"),
    [(5, "penstock.errors.IllegalStateError"), (0, "penstock.errors.PartitionConsumedError")],
    ids=["out-of-range", "already-consumed"],
)
def test_a_request_the_partition_refuses_fails_only_that_channel(
    environment: EnvironmentFactory, subpartition: int, expected: str
) -> None:
    env = environment("producer")
    partition = make_partition(env)
    peer = RawPeer(env.data_address)
    first = peer.request(partition.partition_id)
    refused = InputChannelID.generate()
    peer.send(PartitionRequest(partition.partition_id, subpartition, subpartition, refused, 2))
    error = peer.next_message()
    assert isinstance(error, ErrorResponse)
    assert (error.receiver_id, error.type_name) == (refused, expected)
    serve_to_the_end(peer, first, partition, 40)


# --------------------------------------------------------------------------------------
# Missing partitions
# --------------------------------------------------------------------------------------


def test_a_partition_that_never_appears_is_reported_per_channel(
    environment: EnvironmentFactory,
) -> None:
    env = environment("producer", **{"taskmanager.network.partition-request-timeout": 200})
    missing = ResultPartitionID.generate()
    peer = RawPeer(env.data_address)
    receiver_id = peer.request(missing)
    error = peer.next_message()
    assert isinstance(error, ErrorResponse)
    assert not error.is_fatal
    assert error.receiver_id == receiver_id
    assert error.type_name == "penstock.errors.PartitionNotFoundError"
    assert error.message == f"Partition {missing} not found."
    # Not fatal: the same connection goes on serving other channels.
    partition = make_partition(env)
    other = peer.request(partition.partition_id)
    serve_to_the_end(peer, other, partition, 30)


def test_a_remote_channel_gives_up_after_its_backoff(
    environment: EnvironmentFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    producer = environment("producer", **{"taskmanager.network.partition-request-timeout": 50})
    consumer = environment(
        "consumer",
        **{
            "taskmanager.network.request-backoff.initial": 10,
            "taskmanager.network.request-backoff.max": 40,
        },
    )
    requested, _ = spy_on_requests(producer, monkeypatch)
    missing = ResultPartitionID.generate()
    gate = make_gate(consumer, producer, missing)
    gate.request_partitions()
    gate.get_available_future().result(TIMEOUT_S)  # the channel failed: the gate wakes up
    with pytest.raises(PartitionNotFoundError) as info:
        gate.poll_next()
    assert info.value.partition_id == missing
    assert str(info.value) == f"Partition {missing} not found."
    # Asked once, then again after 10, 20 and 40 ms of backoff; 40 ms is the maximum.
    assert requested == [missing] * 4
    gate.close()
    assert_all_segments_returned(consumer)


def test_a_partition_registered_after_the_request_is_served(
    environment: EnvironmentFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    producer = environment("producer", **{"taskmanager.network.partition-request-timeout": 30_000})
    consumer = environment("consumer")
    _, requested = spy_on_requests(producer, monkeypatch)
    partition_id = ResultPartitionID.generate()
    gate = make_gate(consumer, producer, partition_id)
    gate.request_partitions()
    assert requested.wait(TIMEOUT_S)  # the request waits at the producer...
    partition = producer.create_result_partition(  # ...for the partition to register
        ResultPartitionDeploymentDescriptor(partition_id, 1)
    )
    write(partition, range(1000))
    partition.finish()
    assert read_gate(gate) == [list(range(1000))]
    gate.close()
    partition.close()
    assert_all_segments_returned(producer)
    assert_all_segments_returned(consumer)


# --------------------------------------------------------------------------------------
# Producer failures
# --------------------------------------------------------------------------------------


def test_a_partition_that_failed_before_the_request_fails_the_remote_channel(
    environment: EnvironmentFactory,
) -> None:
    producer = environment("producer")
    consumer = environment("consumer")
    partition = make_partition(producer)
    partition.fail(RuntimeError("the producer lost its source"))
    gate = make_gate(consumer, producer, partition.partition_id)
    gate.request_partitions()
    with pytest.raises(RemoteTransportError) as info:
        gate.get_next(timeout=TIMEOUT_S)
    host, port = producer.data_address
    assert str(info.value) == f"Error at remote task manager '{host}:{port}'."
    remote = info.value.__cause__
    assert isinstance(remote, RemoteError)
    assert remote.type_name == "penstock.errors.ProducerFailedError"
    assert "the producer lost its source" in remote.traceback_text
    gate.close()
    partition.close()
    assert_all_segments_returned(producer)
    assert_all_segments_returned(consumer)


def test_a_producer_failure_mid_stream_reaches_the_remote_gate(
    environment: EnvironmentFactory,
) -> None:
    producer = environment("producer")
    consumer = environment("consumer")
    partition = make_partition(producer)
    gate = make_gate(consumer, producer, partition.partition_id)
    gate.request_partitions()
    write(partition, range(10))
    first = gate.get_next(timeout=TIMEOUT_S)
    assert first is not None and first.buffer is not None
    assert RecordDeserializer(INTS).read_buffer(first.buffer) == list(range(10))
    try:
        partition.fail(RuntimeError("the producer lost its source"))
        with pytest.raises(RemoteTransportError) as info:
            gate.get_next(timeout=2.0)
        remote = info.value.__cause__
        assert isinstance(remote, RemoteError)
        assert remote.type_name == "penstock.errors.ProducerFailedError"
        assert "the producer lost its source" in remote.traceback_text
    finally:
        gate.close()
        partition.close()


# --------------------------------------------------------------------------------------
# Two environments over loopback
# --------------------------------------------------------------------------------------

CHANNELS: Final = 8
RECORDS_PER_CHANNEL: Final = 20_000
CHUNK: Final = 500


def test_records_round_trip_in_order_through_remote_channels(
    environment: EnvironmentFactory,
) -> None:
    producer = environment("producer")
    consumer = environment("consumer")
    partition = make_partition(producer, CHANNELS)
    gate = make_gate(consumer, producer, partition.partition_id, CHANNELS)
    assert all(isinstance(channel, RemoteInputChannel) for channel in gate.channels)
    gate.request_partitions()
    errors: list[BaseException] = []

    def produce() -> None:
        try:
            for start in range(0, RECORDS_PER_CHANNEL, CHUNK):
                for channel in range(CHANNELS):
                    values = [(channel << 32) | i for i in range(start, start + CHUNK)]
                    partition.emit_record(INTS.serialize_frames(values), channel)
                if start % (4 * CHUNK) == 0:
                    partition.flush_all()  # partly filled buffers too
            partition.finish()
        except BaseException as exc:
            errors.append(exc)
            partition.fail(exc)

    writer = threading.Thread(target=produce, name="writer", daemon=True)
    writer.start()
    records = read_gate(gate)
    writer.join(TIMEOUT_S)
    assert not writer.is_alive()
    assert errors == []
    for channel in range(CHANNELS):
        expected = [(channel << 32) | i for i in range(RECORDS_PER_CHANNEL)]
        assert records[channel] == expected, f"channel {channel}"
    for remote in gate.channels:
        # Every buffer and event arrived in sequence, none was dropped or repeated.
        assert isinstance(remote, RemoteInputChannel)
        assert remote.expected_sequence_number == remote.num_buffers_in
    gate.close()
    partition.close()
    assert_all_segments_returned(producer)
    assert_all_segments_returned(consumer)


def test_a_sequence_gap_on_a_live_channel_fails_the_next_read(
    environment: EnvironmentFactory,
) -> None:
    producer = environment("producer")
    consumer = environment("consumer")
    partition = make_partition(producer)
    gate = make_gate(consumer, producer, partition.partition_id)
    gate.request_partitions()
    write(partition, range(10))
    item = gate.get_next(timeout=TIMEOUT_S)
    assert item is not None and item.buffer is not None
    assert RecordDeserializer(INTS).read_buffer(item.buffer) == list(range(10))
    channel = gate.channels[0]
    assert isinstance(channel, RemoteInputChannel)

    async def inject_gap() -> int:
        # On the network thread, where BufferResponses are handled.
        expected = channel.expected_sequence_number
        channel.on_buffer_response(
            BufferResponse(channel.id, 0, expected + 3, 0, DataType.DATA_BUFFER, False, 0, b"")
        )
        return expected

    expected = consumer.loop_thread.run(inject_gap(), timeout=TIMEOUT_S)
    with pytest.raises(BufferReorderingError) as info:
        for _ in range(100):  # any buffers queued before the gap do not mask it
            gate.get_next(timeout=TIMEOUT_S)
    assert str(info.value) == (
        f"Buffer re-ordering: expected buffer with sequence number {expected}, "
        f"but received {expected + 3}."
    )
    gate.close()
    producer.partition_manager.release_partition(partition.partition_id)
    partition.close()
    assert_all_segments_returned(producer)
    assert_all_segments_returned(consumer)


# --------------------------------------------------------------------------------------
# Lost peers
# --------------------------------------------------------------------------------------


def watch_release(partition: ResultPartition, monkeypatch: pytest.MonkeyPatch) -> threading.Event:
    """An event set when ``partition`` is released (from any thread)."""
    released = threading.Event()
    original = partition.release

    def release(cause: BaseException | None = None) -> None:
        original(cause)
        released.set()

    monkeypatch.setattr(partition, "release", release)
    return released


def vanish(peer: RawPeer, reset: bool) -> None:
    """Closes the peer's socket without a goodbye: a FIN, or a RST when ``reset``."""
    if reset:
        peer.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    peer.close()


@pytest.mark.parametrize(
    ("subpartitions", "reset"),
    [(1, True), (1, False), (2, True), (2, False)],
    ids=["last-reader-reset", "last-reader-closed", "one-of-two-reset", "one-of-two-closed"],
)
def test_a_consumer_lost_mid_stream_releases_its_partition_with_the_cause(
    environment: EnvironmentFactory,
    monkeypatch: pytest.MonkeyPatch,
    subpartitions: int,
    reset: bool,
) -> None:
    env = environment("producer")
    partition = make_partition(env, subpartitions)
    released = watch_release(partition, monkeypatch)
    peer = RawPeer(env.data_address)
    receiver_id = peer.request(partition.partition_id)
    write(partition, range(10))
    assert peer.read_records(receiver_id, 10) == (list(range(10)), False)
    host, port = peer.sock.getsockname()
    vanish(peer, reset)
    # Released, so that its producer does not block forever on a subpartition no one
    # reads, and with the reason: not as if the consumer had read it to its end.
    assert released.wait(TIMEOUT_S)
    cause = partition.failure_cause
    assert isinstance(cause, RemoteTransportError)
    assert str(cause) == f"Lost connection to the consumer at '{host}:{port}'."
    with pytest.raises(PartitionReleasedError) as info:  # the producer learns why
        write(partition, range(10))
    assert info.value.__cause__ is cause
    partition.close()


@pytest.mark.parametrize("goodbye", ["close-request", "protocol-violation"])
def test_a_consumer_connection_closed_mid_stream_releases_its_partition_with_the_cause(
    environment: EnvironmentFactory, monkeypatch: pytest.MonkeyPatch, goodbye: str
) -> None:
    # Closed on purpose, by the consumer or by the server, the connection leaves the
    # subpartition as unread as a lost one: its producer must not wait for a reader.
    env = environment("producer")
    partition = make_partition(env, 2)
    released = watch_release(partition, monkeypatch)
    peer = RawPeer(env.data_address)
    receiver_id = peer.request(partition.partition_id)
    write(partition, range(10))
    assert peer.read_records(receiver_id, 10) == (list(range(10)), False)
    host, port = peer.sock.getsockname()
    if goodbye == "close-request":
        peer.send(CloseRequest())
    else:
        peer.send_raw(b"GET / HTTP/1.1\r\n\r\n")
    peer.read_until_closed()
    peer.close()

    assert released.wait(TIMEOUT_S)
    cause = partition.failure_cause
    assert isinstance(cause, RemoteTransportError)
    assert f"'{host}:{port}'" in str(cause)
    with pytest.raises(PartitionReleasedError) as info:
        write(partition, range(10))
    assert info.value.__cause__ is cause
    partition.close()


async def _drop_connections(env: ShuffleEnvironment) -> None:
    for connection in list(env.server.connections):
        if connection.transport is not None:
            connection.transport.close()


def test_a_lost_producer_connection_fails_the_remote_channels(
    environment: EnvironmentFactory,
) -> None:
    producer = environment("producer")
    consumer = environment("consumer")
    partition = make_partition(producer, 2)
    gate = make_gate(consumer, producer, partition.partition_id, 2)
    gate.request_partitions()
    write(partition, range(10), 0)
    item = gate.get_next(timeout=TIMEOUT_S)
    assert item is not None and item.buffer is not None
    item.buffer.recycle()
    producer.loop_thread.run(_drop_connections(producer), timeout=TIMEOUT_S)
    host, port = producer.data_address
    for _ in range(2):  # every channel of the connection fails, and stays failed
        with pytest.raises(RemoteTransportError) as info:
            for _ in range(10):
                gate.get_next(timeout=TIMEOUT_S)
        assert str(info.value) == (
            f"Connection unexpectedly closed by remote task manager '{host}:{port}'. "
            "This might indicate that the remote task manager was lost."
        )
        assert info.value.address == f"{host}:{port}"
    gate.close()
    partition.close()
    assert_all_segments_returned(consumer)


class FakeProducer:
    """A data server on a plain socket that answers the first PartitionRequest badly."""

    def __init__(self, answer: Callable[[PartitionRequest], bytes]) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.listener.settimeout(TIMEOUT_S)
        self.address: tuple[str, int] = self.listener.getsockname()[:2]
        self.answer = answer
        self.errors: list[BaseException] = []
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        try:
            connection, _ = self.listener.accept()
            with connection:
                connection.settimeout(TIMEOUT_S)
                decoder = FrameDecoder(SEGMENT_SIZE)
                request: Message | object = NEED_DATA
                while request is NEED_DATA:
                    chunk = connection.recv(65536)
                    if not chunk:
                        return
                    decoder.feed(chunk)
                    request = decoder.next_message()
                assert isinstance(request, PartitionRequest)
                connection.sendall(self.answer(request))
                with contextlib.suppress(ConnectionResetError):
                    while connection.recv(65536):  # until the client hangs up
                        pass
        except BaseException as exc:
            self.errors.append(exc)

    def close(self) -> None:
        self.listener.close()
        self.thread.join(TIMEOUT_S)
        assert self.errors == []


BAD_ANSWERS: Final[dict[str, tuple[Callable[[PartitionRequest], bytes], str]]] = {
    "corrupt-stream": (
        lambda request: b"\x00\x00\x00\x10garbage-garbage!",
        "Received a corrupt message from remote task manager '{address}': " + BAD_MAGIC_MESSAGE,
    ),
    "fatal-error": (
        lambda request: encode(ErrorResponse("builtins.OSError", "disk on fire", "")),
        "Fatal error at remote task manager '{address}'.",
    ),
    "channel-error": (
        lambda request: encode(
            ErrorResponse("builtins.OSError", "disk on fire", "", request.receiver_id)
        ),
        "Error at remote task manager '{address}'.",
    ),
}


@pytest.mark.parametrize("case", list(BAD_ANSWERS), ids=list(BAD_ANSWERS))
def test_a_misbehaving_producer_fails_the_consumer_with_a_typed_error(
    environment: EnvironmentFactory, case: str
) -> None:
    answer, message = BAD_ANSWERS[case]
    fake = FakeProducer(answer)
    consumer = environment("consumer")
    gate = consumer.create_input_gate(
        InputGateDeploymentDescriptor(
            0, (ShuffleDescriptor(ResultPartitionID.generate(), fake.address),)
        )
    )
    gate.request_partitions()
    host, port = fake.address
    with pytest.raises(RemoteTransportError) as info:
        gate.get_next(timeout=TIMEOUT_S)
    assert str(info.value).startswith(message.format(address=f"{host}:{port}"))
    assert info.value.address == f"{host}:{port}"
    assert info.value.__cause__ is not None  # what the producer said, or the decoder
    gate.close()
    fake.close()
    assert_all_segments_returned(consumer)


def test_a_connection_closed_by_its_last_channel_is_not_handed_to_a_new_one(
    environment: EnvironmentFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    producer = environment("producer")
    consumer = environment("consumer")
    first, second = make_partition(producer), make_partition(producer)
    gate_a = make_gate(consumer, producer, first.partition_id)
    gate_a.request_partitions()
    gate_b = make_gate(consumer, producer, second.partition_id)
    run = consumer.loop_thread.run
    interleaved: list[bool] = []

    def run_then_close_the_other_gate(
        coroutine: Coroutine[object, object, T], timeout: float | None = None
    ) -> T:
        # The interleaving under test: gate B's task gets the shared connection from the
        # loop; before it goes on, gate A's task closes gate A, the connection's last user.
        result = run(coroutine, timeout)
        if not interleaved:
            interleaved.append(True)
            gate_a.close()
            barrier(consumer)
        return result

    monkeypatch.setattr(consumer.loop_thread, "run", run_then_close_the_other_gate)
    gate_b.request_partitions()
    assert interleaved
    write(second, range(10))
    second.finish()
    try:
        assert read_gate(gate_b, 2.0) == [list(range(10))]  # served, by this or a new connection
    finally:
        gate_b.close()
        first.close()
        second.close()


# --------------------------------------------------------------------------------------
# Writes made by the thread that has the bytes, while the network thread is busy
# --------------------------------------------------------------------------------------


BUSY_S: Final = 2.0
"""How long a test waits for what must happen while the network thread is busy."""


def test_a_producer_sends_its_flushed_buffer_itself_while_the_network_thread_is_busy(
    environment: EnvironmentFactory,
) -> None:
    env = environment("producer")
    partition = make_partition(env)
    peer = RawPeer(env.data_address)
    receiver = peer.request(partition.partition_id, credit=3)
    write(partition, [1])
    assert peer.read_records(receiver, 1) == ([1], False)  # the reader is attached
    with busy_loop(env.loop_thread, TIMEOUT_S):
        write(partition, [2])  # flushed on this thread: it writes the frame itself
        peer.sock.settimeout(BUSY_S)  # well before the loop is free again
        assert peer.read_records(receiver, 1) == ([2], False)
        peer.sock.settimeout(TIMEOUT_S)
    partition.finish()
    assert peer.read_records(receiver) == ([], True)
    peer.close()
    partition.close()
    assert_all_segments_returned(env)


# -- binding the data port -----------------------------------------------------------------


def start_error(**values: object) -> ConfigurationError:
    """What starting an environment with these settings raises (it must raise one)."""
    config = {
        "taskmanager.memory.network.min": NETWORK_MEMORY,
        "taskmanager.memory.network.max": NETWORK_MEMORY,
        **values,
    }
    env = ShuffleEnvironment.from_configuration(Configuration(config))
    try:
        with pytest.raises(ConfigurationError) as info:
            env.start()
    finally:
        env.close()
    return info.value


def test_a_data_port_in_use_is_a_configuration_error_naming_the_key() -> None:
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        error = start_error(**{"taskmanager.data.port": port})
    assert error.key == "taskmanager.data.port"
    assert error.value == port
    assert f"127.0.0.1:{port}: Address already in use" in str(error)
    assert isinstance(error.__cause__, OSError)


def test_a_host_that_is_not_an_address_here_is_a_configuration_error_naming_the_key() -> None:
    # TEST-NET-1 (RFC 5737) is never assigned to a host: binding it fails at once.
    error = start_error(**{"taskmanager.host": "192.0.2.1"})
    assert error.key == "taskmanager.host"
    assert error.value == "192.0.2.1"


def test_a_privileged_data_port_is_a_configuration_error_naming_the_port(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    async def refused(self: object) -> int:
        raise PermissionError(errno.EACCES, "Permission denied")

    monkeypatch.setattr("penstock.transport.server.NettyServer.start", refused)
    error = start_error(**{"taskmanager.data.port": 80})
    assert error.key == "taskmanager.data.port"
    assert "Permission denied" in str(error)
