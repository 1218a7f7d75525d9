"""A sender and a receiver TaskManager, each in its own process, for test_remote_exchange.

Each side owns a ``ShuffleEnvironment``. The test process starts both with
``multiprocessing``'s spawn context (so the targets live here, in an importable module),
drives them through a ``Pipe`` with small request/reply commands, and kills them by pid
when a test needs a crash.

Records identify themselves: the int ``(seq << 24) | (writer << 16) | channel`` (8-byte
``IntSerializer`` records), or, for larger records, those 8 bytes followed by zero
padding (``BytesSerializer``). Writer ``w`` emits rounds ``seq = 0, 1, 2, ...``, each
round one record to every channel in turn, so the receiver knows exactly which value
must come next on every channel and checks each buffer against it.

The sender's writers report when they block for a buffer (hard backpressure) through
the partition's ``backpressure_timer`` hook, so a test waits for that event instead of
sampling. The receiver consumes through a throttle: freely, only as many buffers and
events as the test grants, or at a fixed rate.
"""

from __future__ import annotations

import itertools
import multiprocessing
import multiprocessing.connection
import os
import struct
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from multiprocessing.process import BaseProcess
from typing import Final, cast

from penstock.config import Configuration
from penstock.consumer.input_gate import InputGate, SingleInputGate
from penstock.consumer.union_gate import UnionInputGate
from penstock.errors import PenstockError
from penstock.events import EndOfPartitionEvent
from penstock.ids import ResultPartitionID
from penstock.partition.result_partition import ResultPartition
from penstock.serialization.record_deserializer import RecordDeserializer
from penstock.serialization.types import BytesSerializer, IntSerializer, TypeSerializer
from penstock.shuffle import (
    InputGateDeploymentDescriptor,
    ResultPartitionDeploymentDescriptor,
    ShuffleDescriptor,
    ShuffleEnvironment,
)
from penstock.writer.partitioners import StreamPartitioner
from penstock.writer.record_writer import RecordWriter, create_record_writer

SEGMENT_SIZE: Final = 32 * 1024
CALL_TIMEOUT_S: Final = 60.0
"""The longest a test waits for any one reply from a child process."""

_SEQ_SHIFT: Final = 24
_WRITER_SHIFT: Final = 16
_CHANNEL_MASK: Final = 0xFFFF
_WRITER_MASK: Final = 0xFF
_ID: Final = struct.Struct(">q")

Connection = multiprocessing.connection.Connection
Overrides = dict[str, str]


# -- records -----------------------------------------------------------------------------


def encode_record(writer: int, channel: int, seq: int) -> int:
    """The int that identifies record ``seq`` of ``writer`` on ``channel``."""
    return (seq << _SEQ_SHIFT) | (writer << _WRITER_SHIFT) | channel


def decode_record(value: int) -> tuple[int, int, int]:
    """``(writer, channel, seq)`` of an encoded record."""
    return (value >> _WRITER_SHIFT) & _WRITER_MASK, value & _CHANNEL_MASK, value >> _SEQ_SHIFT


@dataclass(frozen=True, slots=True)
class ExchangeSpec:
    """The shape of one exchange: writers × channels, records and their size.

    Attributes:
        writers: Writer threads at the sender, one result partition each.
        channels: Subpartitions per partition (channels per gate at the receiver).
        records_per_channel: Rounds each writer emits; None: until told to stop.
        record_size: Payload bytes per record (8: ints; more: padded bytes).
        buffer_timeout_ms: ``execution.buffer-timeout`` of the writers.
    """

    writers: int = 4
    channels: int = 1000
    records_per_channel: int | None = 100
    record_size: int = 8
    buffer_timeout_ms: int = 100

    def network_buffers(self) -> int:
        """Flink's benchmark sizing: max(2048, writers × channels × 4) buffers."""
        return max(2048, self.writers * self.channels * 4)

    def configuration(self, overrides: Overrides) -> Configuration:
        memory = self.network_buffers() * SEGMENT_SIZE
        values: dict[str, object] = {
            "taskmanager.memory.segment-size": SEGMENT_SIZE,
            "taskmanager.memory.network.min": memory,
            "taskmanager.memory.network.max": memory,
            "execution.buffer-timeout": self.buffer_timeout_ms,
            "taskmanager.network.netty.client.connectTimeoutSec": 20,
        }
        values.update(overrides)
        return Configuration(values)

    def serializer(self) -> TypeSerializer[object]:
        if self.record_size == 8:
            return cast("TypeSerializer[object]", IntSerializer())
        return cast("TypeSerializer[object]", BytesSerializer())

    def make_record(self) -> Callable[[int], object]:
        """Turns an encoded id into the record the writer emits."""
        if self.record_size == 8:
            return lambda value: value
        padding = bytes(self.record_size - _ID.size)
        pack = _ID.pack
        return lambda value: pack(value) + padding

    def record_ids(self) -> Callable[[list[object]], list[int]]:
        """Turns a list of received records back into their encoded ids."""
        if self.record_size == 8:
            return lambda records: cast("list[int]", records)
        size = self.record_size
        unpack = _ID.unpack_from

        def ids(records: list[object]) -> list[int]:
            out: list[int] = []
            for record in records:
                data = cast("bytes", record)
                # A record of the wrong size cannot carry a valid id.
                out.append(unpack(data)[0] if len(data) == size else -1)
            return out

        return ids


class _ChannelOfRecord(StreamPartitioner[object]):
    """Routes each record to the channel its id names."""

    def __init__(self, record_size: int) -> None:
        super().__init__()
        self._record_size = record_size

    def select_channel(self, record: object) -> int:
        if self._record_size == 8:
            return cast("int", record) & _CHANNEL_MASK
        data = cast("bytes", record)
        return (data[6] << 8) | data[7]

    def copy(self) -> _ChannelOfRecord:
        return _ChannelOfRecord(self._record_size)


# -- status values (they cross the pipe) -------------------------------------------------


@dataclass(frozen=True, slots=True)
class ErrorInfo:
    """An exception seen in a child process, as the test needs it."""

    type_name: str
    message: str
    is_penstock_error: bool
    address: str | None
    causes: tuple[str, ...]
    """``type: message`` of each error in the ``__cause__`` chain, outermost first."""

    @classmethod
    def of(cls, error: BaseException) -> ErrorInfo:
        address = getattr(error, "address", None)
        causes: list[str] = []
        cause = error.__cause__
        while cause is not None and len(causes) < 10:
            causes.append(f"{type(cause).__name__}: {cause}")
            cause = cause.__cause__
        return cls(
            type(error).__name__,
            str(error),
            isinstance(error, PenstockError),
            address if isinstance(address, str) else None,
            tuple(causes),
        )


@dataclass(frozen=True, slots=True)
class PoolStats:
    """A NetworkBufferPool's segment counts."""

    total_segments: int
    available_segments: int

    @property
    def all_returned(self) -> bool:
        return self.available_segments == self.total_segments


@dataclass(frozen=True, slots=True)
class WriterStatus:
    """One writer thread and its partition's pool."""

    index: int
    state: str
    rounds: int
    records_out: int
    blocked: bool
    blocked_episodes: int
    partition_available: bool
    partition_released: bool
    used_buffers: int
    pool_size: int
    pool_max_size: int
    pool_max_overdraft: int
    error: ErrorInfo | None


@dataclass(frozen=True, slots=True)
class SenderStatus:
    """Every writer and the sender's NetworkBufferPool."""

    writers: tuple[WriterStatus, ...]
    pool: PoolStats


@dataclass(frozen=True, slots=True)
class ReceiverStatus:
    """What the receiver has read and checked so far."""

    items: int
    buffers: int
    records: int
    ended_channels: int
    finished: bool
    done: bool
    per_channel: tuple[int, ...]
    anomalies: int
    first_anomalies: tuple[str, ...]
    error: ErrorInfo | None
    pool: PoolStats


def _pool_stats(environment: ShuffleEnvironment) -> PoolStats:
    stats = environment.network_pool.statistics()
    return PoolStats(stats.total_segments, stats.available_segments)


# -- the sender --------------------------------------------------------------------------


class _BlockingProbe:
    """A partition's ``backpressure_timer``: tells when its writer blocks for a buffer."""

    def __init__(self) -> None:
        self.condition = threading.Condition()
        self.blocked = False
        self.episodes = 0
        self.ended = False

    def start(self) -> None:
        with self.condition:
            self.blocked = True
            self.episodes += 1
            self.condition.notify_all()

    def stop(self) -> None:
        with self.condition:
            self.blocked = False
            self.condition.notify_all()

    def end(self) -> None:
        """The writer thread is done: nothing will block any more."""
        with self.condition:
            self.ended = True
            self.condition.notify_all()

    def wait_blocked(self, timeout: float) -> None:
        with self.condition:
            self.condition.wait_for(lambda: self.blocked or self.ended, max(0.0, timeout))

    def wait_change(self, blocked: bool, episodes: int, timeout: float) -> bool:
        """Whether an episode starts or ends within ``timeout`` (from the given state)."""
        with self.condition:
            return self.condition.wait_for(
                lambda: self.blocked != blocked or self.episodes != episodes, max(0.0, timeout)
            )


class _Writer:
    """One writer thread: emits rounds to every channel of its partition, then finishes."""

    def __init__(
        self, index: int, partition: ResultPartition, spec: ExchangeSpec, stop: threading.Event
    ) -> None:
        self.index = index
        self.partition = partition
        self.spec = spec
        self.stop = stop
        self.probe = _BlockingProbe()
        partition.backpressure_timer = self.probe
        self.record_writer: RecordWriter[object] = create_record_writer(
            partition,
            spec.serializer(),
            _ChannelOfRecord(spec.record_size),
            spec.buffer_timeout_ms,
            task_name=f"writer-{index}",
        )
        self.state = "created"
        self.rounds = 0
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, name=f"writer-{index}", daemon=True)

    def _run(self) -> None:
        self.state = "running"
        spec = self.spec
        emit = self.record_writer.emit
        make = spec.make_record()
        channels = range(spec.channels)
        limit = spec.records_per_channel
        seqs = itertools.count() if limit is None else range(limit)
        try:
            for seq in seqs:
                # Stop only between rounds: every channel then got the same count.
                if self.stop.is_set():
                    break
                base = encode_record(self.index, 0, seq)
                for channel in channels:
                    emit(make(base | channel))
                self.rounds = seq + 1
            self.partition.finish()
            self.state = "finished"
        except BaseException as exc:
            self.error = exc
            self.state = "failed"
            self.partition.fail(exc)
        finally:
            self.record_writer.close()
            self.probe.end()

    def status(self) -> WriterStatus:
        pool = self.partition.buffer_pool
        return WriterStatus(
            index=self.index,
            state=self.state,
            rounds=self.rounds,
            records_out=self.record_writer.num_records_out,
            blocked=self.probe.blocked,
            blocked_episodes=self.probe.episodes,
            partition_available=self.partition.is_available(),
            partition_released=self.partition.is_released,
            used_buffers=pool.used_buffers,
            pool_size=pool.num_buffers,
            pool_max_size=pool.max_size,
            pool_max_overdraft=pool.max_overdraft_buffers,
            error=None if self.error is None else ErrorInfo.of(self.error),
        )


def sender_main(spec: ExchangeSpec, overrides: Overrides, connection: Connection) -> None:
    """The sender process: W partitions of C subpartitions and a writer thread each.

    Replies ``("ready", data_address, partition_ids)`` first, then serves commands
    (see ``Peer.call``) until ``shutdown``; its last message is the pool's
    statistics after the environment closed.
    """
    environment = ShuffleEnvironment.from_configuration(
        spec.configuration(overrides), name="sender"
    )
    environment.start()
    stop = threading.Event()
    final: PoolStats | None = None
    try:
        partitions = [
            environment.create_result_partition(
                ResultPartitionDeploymentDescriptor(ResultPartitionID.generate(i), spec.channels),
                owner=f"writer-{i}",
            )
            for i in range(spec.writers)
        ]
        writers = [_Writer(i, p, spec, stop) for i, p in enumerate(partitions)]
        connection.send(("ready", environment.data_address, [p.partition_id for p in partitions]))
        _serve_sender(connection, environment, partitions, writers, stop)
    finally:
        stop.set()
        environment.close()
        final = _pool_stats(environment)
    connection.send(final)


def _sender_status(environment: ShuffleEnvironment, writers: Sequence[_Writer]) -> SenderStatus:
    return SenderStatus(tuple(w.status() for w in writers), _pool_stats(environment))


def _await_stalled(
    environment: ShuffleEnvironment, writers: Sequence[_Writer], grace: float, timeout: float
) -> tuple[SenderStatus, SenderStatus]:
    """Waits until every writer is blocked and none moves for ``grace`` seconds.

    Returns the status at the start and at the end of that quiet window (or of the
    last attempt, if ``timeout`` ran out first).
    """
    deadline = time.monotonic() + timeout
    while True:
        for writer in writers:
            writer.probe.wait_blocked(deadline - time.monotonic())
        first = _sender_status(environment, writers)
        quiet_until = time.monotonic() + grace
        # Any start or end of a blocking episode ends the quiet window.
        moved = any(
            writer.probe.wait_change(
                seen.blocked, seen.blocked_episodes, quiet_until - time.monotonic()
            )
            for writer, seen in zip(writers, first.writers, strict=True)
        )
        second = _sender_status(environment, writers)
        if not moved or time.monotonic() >= deadline:
            return first, second


def _serve_sender(
    connection: Connection,
    environment: ShuffleEnvironment,
    partitions: Sequence[ResultPartition],
    writers: Sequence[_Writer],
    stop: threading.Event,
) -> None:
    while True:
        try:
            command, argument = connection.recv()
        except EOFError:
            return  # the test process is gone
        if command == "go":
            for writer in writers:
                writer.thread.start()
            connection.send(None)
        elif command == "status":
            connection.send(_sender_status(environment, writers))
        elif command == "await_stalled":
            grace, timeout = cast("tuple[float, float]", argument)
            connection.send(_await_stalled(environment, writers, grace, timeout))
        elif command == "stop":
            stop.set()
            connection.send(None)
        elif command == "join":
            deadline = time.monotonic() + cast("float", argument)
            for writer in writers:
                if writer.thread.is_alive():
                    writer.thread.join(max(0.0, deadline - time.monotonic()))
            connection.send(_sender_status(environment, writers))
        elif command == "close_partitions":
            for partition in partitions:
                partition.close()
            connection.send(_pool_stats(environment))
        elif command == "shutdown":
            return
        else:
            connection.send(ValueError(f"unknown command {command!r}"))


# -- the receiver ------------------------------------------------------------------------


class _Throttle:
    """How fast the receiver may read: freely, by granted items, or at a fixed rate."""

    def __init__(self, budget: int | None, rate: float | None) -> None:
        self._condition = threading.Condition()
        self._budget = budget
        self._rate = rate
        self._started = time.monotonic()
        self._taken = 0
        self._closed = False

    def grant(self, count: int | None) -> None:
        """Allows ``count`` more items; None lifts every limit."""
        with self._condition:
            if count is None:
                self._budget = None
                self._rate = None
            elif self._budget is not None:
                self._budget += count
            self._condition.notify_all()

    def close(self) -> None:
        with self._condition:
            self._closed = True
            self._condition.notify_all()

    def acquire(self) -> bool:
        """Waits for permission to read one item; False once closed."""
        with self._condition:
            while not self._closed:
                wait = 0.25
                allowed = self._budget is None or self._budget > 0
                if allowed and self._rate is not None:
                    delay = self._started + self._taken / self._rate - time.monotonic()
                    if delay > 0:
                        allowed = False
                        wait = min(wait, delay)
                if allowed:
                    if self._budget is not None:
                        self._budget -= 1
                    self._taken += 1
                    return True
                self._condition.wait(wait)
            return False

    def refund(self) -> None:
        """Gives back a permit that read nothing."""
        with self._condition:
            if self._budget is not None:
                self._budget += 1
            self._taken -= 1


class _Consumer:
    """Reads the receiver's gate, checking every record against the next expected id."""

    def __init__(self, gate: InputGate, spec: ExchangeSpec, throttle: _Throttle) -> None:
        self.gate = gate
        self.spec = spec
        self.throttle = throttle
        serializer = spec.serializer()
        self.deserializers = [
            RecordDeserializer(serializer, channel=f"channel {i}") for i in range(gate.num_channels)
        ]
        self.counts = [0] * gate.num_channels
        self.record_ids = spec.record_ids()
        self.condition = threading.Condition()
        self.items = 0
        self.buffers = 0
        self.records = 0
        self.ended = 0
        self.finished = False
        self.done = False
        self.anomalies = 0
        self.first_anomalies: list[str] = []
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, name="consumer", daemon=True)

    def _run(self) -> None:
        gate = self.gate
        try:
            while self.throttle.acquire():
                item = gate.get_next(timeout=0.25)
                if item is None:
                    if gate.is_finished():
                        self.finished = True
                        return
                    self.throttle.refund()  # nothing was read
                    continue
                index = item.channel_index
                if item.buffer is not None:
                    records = self.deserializers[index].read_buffer(item.buffer)
                    self._check(index, records)
                    with self.condition:
                        self.buffers += 1
                elif isinstance(item.event, EndOfPartitionEvent):
                    self.deserializers[index].check_end()
                    self.ended += 1
                with self.condition:
                    self.items += 1
                    self.condition.notify_all()
        except BaseException as exc:
            self.error = exc
        finally:
            with self.condition:
                self.done = True
                self.condition.notify_all()

    def _check(self, index: int, records: list[object]) -> None:
        if not records:
            return
        writer, channel = divmod(index, self.spec.channels)
        first = self.counts[index]
        ids = self.record_ids(records)
        base = (writer << _WRITER_SHIFT) | channel
        expected = [(seq << _SEQ_SHIFT) | base for seq in range(first, first + len(ids))]
        if ids != expected:
            for position, (got, want) in enumerate(zip(ids, expected, strict=True)):
                if got != want:
                    self.anomalies += 1
                    if len(self.first_anomalies) < 5:
                        self.first_anomalies.append(
                            f"channel {index}: record {first + position} should be "
                            f"{decode_record(want)}, got {decode_record(got) if got >= 0 else got}"
                        )
                    break
        self.counts[index] = first + len(ids)
        self.records += len(ids)

    def wait_items(self, count: int, timeout: float) -> None:
        """Until ``count`` items were read in all, or the consumer is done."""
        with self.condition:
            self.condition.wait_for(lambda: self.items >= count or self.done, timeout)

    def status(self, pool: PoolStats) -> ReceiverStatus:
        return ReceiverStatus(
            items=self.items,
            buffers=self.buffers,
            records=self.records,
            ended_channels=self.ended,
            finished=self.finished,
            done=self.done,
            per_channel=tuple(self.counts),
            anomalies=self.anomalies,
            first_anomalies=tuple(self.first_anomalies),
            error=None if self.error is None else ErrorInfo.of(self.error),
            pool=pool,
        )


def _receiver_gate(
    environment: ShuffleEnvironment,
    spec: ExchangeSpec,
    address: tuple[str, int],
    partition_ids: Sequence[ResultPartitionID],
) -> InputGate:
    gates: list[SingleInputGate] = [
        environment.create_input_gate(
            InputGateDeploymentDescriptor(
                0,
                tuple(
                    ShuffleDescriptor(partition_id, address, channel)
                    for channel in range(spec.channels)
                ),
            ),
            owner=f"receiver-{index}",
        )
        for index, partition_id in enumerate(partition_ids)
    ]
    return gates[0] if len(gates) == 1 else UnionInputGate(gates, owner="receiver")


@dataclass(frozen=True, slots=True)
class ReceiverPlan:
    """Where the receiver reads from and how fast.

    Attributes:
        address: The sender's data address.
        partition_ids: The sender's partitions, one gate each.
        budget: Items the receiver may read before it waits for grants; None: no limit.
        rate: Items per second the receiver reads at most; None: no limit.
    """

    address: tuple[str, int]
    partition_ids: tuple[ResultPartitionID, ...]
    budget: int | None = None
    rate: float | None = None


def receiver_main(spec: ExchangeSpec, overrides: Overrides, connection: Connection) -> None:
    """The receiver process: one gate per sender partition, read by a checking consumer.

    Waits for a ``ReceiverPlan``, requests the partitions, replies ``"ready"`` and
    serves commands until ``shutdown``; its last message is the pool's statistics
    after the environment closed.
    """
    environment = ShuffleEnvironment.from_configuration(
        spec.configuration(overrides), name="receiver"
    )
    environment.start()
    final: PoolStats | None = None
    consumer: _Consumer | None = None
    try:
        plan = cast("ReceiverPlan", connection.recv())
        gate = _receiver_gate(environment, spec, plan.address, plan.partition_ids)
        gate.request_partitions()
        consumer = _Consumer(gate, spec, _Throttle(plan.budget, plan.rate))
        consumer.thread.start()
        connection.send("ready")
        _serve_receiver(connection, environment, consumer)
    finally:
        if consumer is not None:
            consumer.throttle.close()
            consumer.thread.join(10)
            consumer.gate.close()
        environment.close()
        final = _pool_stats(environment)
    connection.send(final)


def _serve_receiver(
    connection: Connection, environment: ShuffleEnvironment, consumer: _Consumer
) -> None:
    while True:
        try:
            command, argument = connection.recv()
        except EOFError:
            return
        if command == "status":
            connection.send(consumer.status(_pool_stats(environment)))
        elif command == "grant":
            consumer.throttle.grant(cast("int | None", argument))
            connection.send(None)
        elif command == "wait_items":
            # Until the consumer has read this many items in all, is done, or timeout.
            count, timeout = cast("tuple[int, float]", argument)
            consumer.wait_items(count, timeout)
            connection.send(consumer.status(_pool_stats(environment)))
        elif command == "join":
            consumer.thread.join(cast("float", argument))
            connection.send(consumer.status(_pool_stats(environment)))
        elif command == "close":
            # Cancels consumption mid-stream, as a cancelled task closes its gate.
            consumer.throttle.close()
            consumer.thread.join(10)
            consumer.gate.close()
            connection.send(consumer.status(_pool_stats(environment)))
        elif command == "exit":
            # Vanishes without a word, as a crash would, but with its socket buffers
            # read empty: the kernel closes the connection with FIN instead of RST.
            os._exit(0)
        elif command == "shutdown":
            return
        else:
            connection.send(ValueError(f"unknown command {command!r}"))


# -- the test process's side -------------------------------------------------------------


class Peer:
    """A child process and the test's end of its pipe."""

    def __init__(self, process: BaseProcess, connection: Connection) -> None:
        self.process = process
        self.connection = connection

    @property
    def pid(self) -> int:
        pid = self.process.pid
        assert pid is not None
        return pid

    def receive(self, timeout: float = CALL_TIMEOUT_S) -> object:
        """The child's next message, waiting at most ``timeout`` seconds."""
        if not self.connection.poll(timeout):
            msg = f"{self.process.name} sent nothing for {timeout} s"
            raise TimeoutError(msg)
        reply = self.connection.recv()
        if isinstance(reply, Exception):
            raise reply
        return reply

    def call(
        self, command: str, argument: object = None, timeout: float = CALL_TIMEOUT_S
    ) -> object:
        """Sends a command and returns the reply."""
        self.connection.send((command, argument))
        return self.receive(timeout)

    def shutdown(self) -> PoolStats:
        """Closes the child's environment; returns its pool's final statistics."""
        self.connection.send(("shutdown", None))
        stats = cast("PoolStats", self.receive())
        self.process.join(CALL_TIMEOUT_S)
        return stats

    def kill(self) -> None:
        """SIGKILL, if it is still running, and reap it."""
        if self.process.is_alive():
            self.process.kill()
        self.process.join(CALL_TIMEOUT_S)

    def rss_bytes(self) -> int:
        with open(f"/proc/{self.pid}/statm") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def start_sender(
    spec: ExchangeSpec, overrides: Overrides | None = None
) -> tuple[Peer, tuple[str, int], tuple[ResultPartitionID, ...]]:
    """Starts a sender process; returns it, its data address and its partition ids."""
    context = multiprocessing.get_context("spawn")
    ours, theirs = context.Pipe()
    process = context.Process(
        target=sender_main, args=(spec, overrides or {}, theirs), name="sender", daemon=True
    )
    process.start()
    theirs.close()
    peer = Peer(process, ours)
    try:
        _, address, partition_ids = cast(
            "tuple[str, tuple[str, int], list[ResultPartitionID]]", peer.receive()
        )
    except BaseException:
        peer.kill()
        raise
    return peer, tuple(address), tuple(partition_ids)  # type: ignore[return-value]


def start_receiver(
    spec: ExchangeSpec, plan: ReceiverPlan, overrides: Overrides | None = None
) -> Peer:
    """Starts a receiver process reading what ``plan`` says; returns once it has asked."""
    context = multiprocessing.get_context("spawn")
    ours, theirs = context.Pipe()
    process = context.Process(
        target=receiver_main, args=(spec, overrides or {}, theirs), name="receiver", daemon=True
    )
    process.start()
    theirs.close()
    peer = Peer(process, ours)
    try:
        ours.send(plan)
        peer.receive()
    except BaseException:
        peer.kill()
        raise
    return peer
