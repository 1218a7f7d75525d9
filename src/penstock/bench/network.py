"""Flink's network benchmarks on penstock: throughput and latency between two TaskManagers.

The set-up is Flink's StreamNetworkThroughputBenchmark: a sender ShuffleEnvironment
with W writer threads, each writing one result partition of C subpartitions (round
robin, per-record ``emit``), and a receiver ShuffleEnvironment with one input gate per
writer (C channels each) read through a union gate. By default the sender runs in a
second process and every byte crosses loopback TCP with credit-based flow control;
``local=True`` puts both in one process with local channels.

Records are 8-byte longs (Flink's LongValue) or, with ``record_size`` > 8, byte strings
of that size. Throughput is records received / (first "go" → last end-of-partition at
the receiver), as records/ms (what Flink reports), records/s and payload MB/s.

The latency benchmark sends one record at a time at a fixed rate from one writer to one
channel; each record carries its send time on the monotonic clock (the same clock in
both processes on one host), and the receiver records the difference.
"""

from __future__ import annotations

import multiprocessing
import multiprocessing.connection
import multiprocessing.process
import os
import threading
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Final

from penstock.config import Configuration
from penstock.consumer.input_gate import InputGate, SingleInputGate
from penstock.consumer.union_gate import UnionInputGate
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
from penstock.transport.loop import tune_switch_interval
from penstock.transport.tls import SslOptions
from penstock.writer.partitioners import BroadcastPartitioner, ChannelSelector, RebalancePartitioner
from penstock.writer.record_writer import create_record_writer

__all__ = [
    "PRESETS",
    "LatencyResult",
    "NetworkBenchmark",
    "ThroughputResult",
    "run_latency",
    "run_throughput",
]

_GIB: Final = 1024**3


@dataclass(frozen=True, slots=True)
class NetworkBenchmark:
    """One benchmark configuration (a Flink preset, possibly with overrides)."""

    writers: int = 4
    channels: int = 100
    flush_timeout_ms: int = 100
    records: int = 5_000_000
    record_size: int = 8
    ssl: bool = False
    local: bool = False
    broadcast: bool = False
    skew: bool = False
    config: dict[str, str] = field(default_factory=dict)

    def network_buffers(self) -> int:
        """Flink's benchmark environment: max(2048, writers × channels × 4) buffers."""
        return max(2048, self.writers * self.channels * 4)


PRESETS: Final[dict[str, NetworkBenchmark]] = {
    "100,100ms": NetworkBenchmark(4, 100, 100),
    "100,100ms,SSL": NetworkBenchmark(4, 100, 100, ssl=True),
    "1000,1ms": NetworkBenchmark(4, 1000, 1),
    "1000,100ms": NetworkBenchmark(4, 1000, 100),
    "1000,100ms,SSL": NetworkBenchmark(4, 1000, 100, ssl=True),
    "broadcast": NetworkBenchmark(4, 100, 100, records=500_000, broadcast=True),
    "skew": NetworkBenchmark(10, 1000, 1, skew=True),
}
"""Flink's StreamNetwork*BenchmarkExecutor parameters, by Flink's names."""


@dataclass(frozen=True, slots=True)
class ThroughputResult:
    """Records emitted and the time the receiver took to get all of them.

    As in Flink's benchmarks one operation is one record emitted: a broadcast record
    counts once although every channel receives it (``received`` counts deliveries).
    """

    benchmark: NetworkBenchmark
    records: int
    seconds: float
    sender_segments_returned: bool
    received: int = 0

    @property
    def records_per_s(self) -> float:
        return self.records / self.seconds

    @property
    def records_per_ms(self) -> float:
        return self.records_per_s / 1000

    @property
    def mb_per_s(self) -> float:
        return self.records_per_s * self.benchmark.record_size / 1e6

    def to_dict(self) -> dict[str, object]:
        return {
            **{k: v for k, v in asdict(self.benchmark).items() if k != "config"},
            "emitted": self.records,
            "received": self.received or self.records,
            "seconds": round(self.seconds, 3),
            "records_per_ms": round(self.records_per_ms, 1),
            "records_per_s": round(self.records_per_s),
            "mb_per_s": round(self.mb_per_s, 2),
            "sender_segments_returned": self.sender_segments_returned,
        }


@dataclass(frozen=True, slots=True)
class LatencyResult:
    """Send-to-receive latency percentiles in microseconds."""

    benchmark: NetworkBenchmark
    samples: int
    p50_us: float
    p99_us: float
    max_us: float

    def to_dict(self) -> dict[str, object]:
        return {
            "flush_timeout_ms": self.benchmark.flush_timeout_ms,
            "ssl": self.benchmark.ssl,
            "local": self.benchmark.local,
            "samples": self.samples,
            "p50_us": round(self.p50_us, 1),
            "p99_us": round(self.p99_us, 1),
            "max_us": round(self.max_us, 1),
        }


# -- configuration -----------------------------------------------------------------


def _configuration(benchmark: NetworkBenchmark) -> Configuration:
    segment_size = 32 * 1024
    values: dict[str, object] = {
        "taskmanager.memory.network.min": benchmark.network_buffers() * segment_size,
        "taskmanager.memory.network.max": max(_GIB, benchmark.network_buffers() * segment_size),
        "execution.buffer-timeout": benchmark.flush_timeout_ms,
    }
    values.update(benchmark.config)
    if benchmark.ssl:
        values["security.ssl.internal.enabled"] = "true"
    return Configuration(values)


def _serializer(benchmark: NetworkBenchmark) -> TypeSerializer[object]:
    if benchmark.record_size == 8:
        return IntSerializer()  # type: ignore[return-value]
    return BytesSerializer()  # type: ignore[return-value]


class _SkewSelector(RebalancePartitioner[object]):
    """Flink's data-skew benchmark: the first n records to channels 0..n-1, then all to 0."""

    def __init__(self) -> None:
        super().__init__(seed=0)
        self._sent = 0

    def select_channel(self, record: object) -> int:
        sent = self._sent
        self._sent = sent + 1
        return sent if sent < self.number_of_channels else 0


def _selector(benchmark: NetworkBenchmark) -> ChannelSelector[object]:
    if benchmark.broadcast:
        return BroadcastPartitioner()
    if benchmark.skew:
        return _SkewSelector()
    return RebalancePartitioner()


# -- the two sides ---------------------------------------------------------------------


def _write(benchmark: NetworkBenchmark, partitions: Sequence[ResultPartition]) -> None:
    """Runs one writer thread per partition to the end and finishes the partitions."""
    per_writer = benchmark.records // benchmark.writers
    serializer = _serializer(benchmark)
    payload = bytes(benchmark.record_size)
    errors: list[BaseException] = []

    def write(partition: ResultPartition) -> None:
        writer = create_record_writer(
            partition, serializer, _selector(benchmark), benchmark.flush_timeout_ms
        )
        emit = writer.emit
        try:
            if benchmark.record_size == 8:
                for value in range(per_writer):
                    emit(value)
            else:
                for _ in range(per_writer):
                    emit(payload)
            partition.finish()
        except BaseException as exc:
            errors.append(exc)
            partition.fail(exc)
        finally:
            writer.close()

    threads = [
        threading.Thread(target=write, args=(partition,), name=f"writer-{index}")
        for index, partition in enumerate(partitions)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors:
        raise errors[0]


def _sender_main(
    benchmark: NetworkBenchmark, connection: multiprocessing.connection.Connection
) -> None:
    """The sender process: partitions, writers, and a report of its pool at the end."""
    tune_switch_interval()
    config = _configuration(benchmark)
    with ShuffleEnvironment.from_configuration(config, name="sender") as environment:
        partitions = [
            environment.create_result_partition(
                ResultPartitionDeploymentDescriptor(
                    ResultPartitionID.generate(index), benchmark.channels
                ),
                owner=f"writer-{index}",
            )
            for index in range(benchmark.writers)
        ]
        connection.send((environment.data_address, [p.partition_id for p in partitions]))
        if connection.recv() != "go":
            return
        try:
            _write(benchmark, partitions)
            connection.send(("written", None))
        except BaseException as exc:
            connection.send(("failed", repr(exc)))
        connection.recv()  # the receiver has read everything (or gave up)
        for partition in partitions:
            partition.close()
        stats = environment.network_pool.statistics()
        connection.send(stats.available_segments == stats.total_segments)


def _receiver_gate(
    environment: ShuffleEnvironment,
    benchmark: NetworkBenchmark,
    address: tuple[str, int],
    partition_ids: Sequence[ResultPartitionID],
) -> InputGate:
    gates: list[SingleInputGate] = [
        environment.create_input_gate(
            InputGateDeploymentDescriptor(
                0,
                tuple(
                    ShuffleDescriptor(partition_id, address, channel)
                    for channel in range(benchmark.channels)
                ),
            ),
            owner=f"receiver-{index}",
        )
        for index, partition_id in enumerate(partition_ids)
    ]
    return gates[0] if len(gates) == 1 else UnionInputGate(gates, owner="receiver")


def _receive(gate: InputGate, serializer: TypeSerializer[object], timeout_s: float) -> int:
    deserializers = [RecordDeserializer(serializer) for _ in range(gate.num_channels)]
    received = 0
    while True:
        item = gate.get_next(timeout=timeout_s)
        if item is None:
            if gate.is_finished():
                return received
            msg = f"no data for {timeout_s} s: the sender is stuck or gone"
            raise TimeoutError(msg)
        if item.buffer is not None:
            received += len(deserializers[item.channel_index].read_buffer(item.buffer))


def _from_sender(
    connection: multiprocessing.connection.Connection, sender: multiprocessing.process.BaseProcess
) -> Any:
    """The sender's next message.

    Raises:
        RuntimeError: The sender process ended instead (its own error is on stderr).
    """
    try:
        return connection.recv()
    except EOFError:
        sender.join(timeout=10)
        msg = f"the sender process ended (exit status {sender.exitcode}) before it was done"
        raise RuntimeError(msg) from None


def run_throughput(benchmark: NetworkBenchmark, timeout_s: float = 120.0) -> ThroughputResult:
    """Runs one throughput measurement (see the module docstring)."""
    tune_switch_interval()  # this process is the receiving TaskManager
    if benchmark.local:
        return _run_local_throughput(benchmark, timeout_s)
    context = multiprocessing.get_context("spawn")
    ours, theirs = context.Pipe()
    sender = context.Process(target=_sender_main, args=(benchmark, theirs), name="sender")
    sender.start()
    theirs.close()  # ours alone now: a sender that dies is seen as EOF at once
    try:
        if not ours.poll(timeout_s):
            msg = "the sender process did not start"
            raise TimeoutError(msg)
        address, partition_ids = _from_sender(ours, sender)
        config = _configuration(benchmark)
        with ShuffleEnvironment.from_configuration(config, name="receiver") as environment:
            gate = _receiver_gate(environment, benchmark, address, partition_ids)
            gate.request_partitions()
            ours.send("go")
            started = time.perf_counter()
            received = _receive(gate, _serializer(benchmark), timeout_s)
            elapsed = time.perf_counter() - started
            gate.close()
        status, detail = _from_sender(ours, sender)
        if status != "written":
            msg = f"the sender failed: {detail}"
            raise RuntimeError(msg)
        ours.send("done")
        returned = bool(_from_sender(ours, sender))
    finally:
        sender.join(timeout=30)
        if sender.is_alive():
            sender.kill()
            sender.join()
    expected = _expected_records(benchmark)
    if received != expected:
        msg = f"received {received} records, expected {expected}"
        raise RuntimeError(msg)
    return ThroughputResult(benchmark, _emitted(benchmark), elapsed, returned, received)


def _emitted(benchmark: NetworkBenchmark) -> int:
    return benchmark.records // benchmark.writers * benchmark.writers


def _expected_records(benchmark: NetworkBenchmark) -> int:
    per_writer = benchmark.records // benchmark.writers
    fan_out = benchmark.channels if benchmark.broadcast else 1
    return per_writer * benchmark.writers * fan_out


def _run_local_throughput(benchmark: NetworkBenchmark, timeout_s: float) -> ThroughputResult:
    config = _configuration(replace(benchmark, ssl=False))
    with ShuffleEnvironment.from_configuration(config, name="local") as environment:
        partitions = [
            environment.create_result_partition(
                ResultPartitionDeploymentDescriptor(
                    ResultPartitionID.generate(index), benchmark.channels
                )
            )
            for index in range(benchmark.writers)
        ]
        gate = _receiver_gate(
            environment, benchmark, environment.data_address, [p.partition_id for p in partitions]
        )
        gate.request_partitions()
        writer = threading.Thread(target=_write, args=(benchmark, partitions), daemon=True)
        started = time.perf_counter()
        writer.start()
        received = _receive(gate, _serializer(benchmark), timeout_s)
        elapsed = time.perf_counter() - started
        writer.join(timeout_s)
        gate.close()
        for partition in partitions:
            partition.close()
        stats = environment.network_pool.statistics()
        returned = stats.available_segments == stats.total_segments
    expected = _expected_records(benchmark)
    if received != expected:
        msg = f"received {received} records, expected {expected}"
        raise RuntimeError(msg)
    return ThroughputResult(benchmark, _emitted(benchmark), elapsed, returned, received)


# -- latency ---------------------------------------------------------------------------


def _latency_sender_main(
    benchmark: NetworkBenchmark,
    rate: float,
    connection: multiprocessing.connection.Connection,
) -> None:
    tune_switch_interval()
    config = _configuration(benchmark)
    with ShuffleEnvironment.from_configuration(config, name="sender") as environment:
        partition = environment.create_result_partition(
            ResultPartitionDeploymentDescriptor(ResultPartitionID.generate(), 1)
        )
        connection.send((environment.data_address, [partition.partition_id]))
        if connection.recv() != "go":
            return
        _send_timed(partition, benchmark, rate)
        connection.recv()
        partition.close()


def _send_timed(partition: ResultPartition, benchmark: NetworkBenchmark, rate: float) -> None:
    writer = create_record_writer(partition, IntSerializer(), None, benchmark.flush_timeout_ms)
    interval = 1 / rate
    next_send = time.monotonic()
    try:
        for _ in range(benchmark.records):
            delay = next_send - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            writer.emit(time.monotonic_ns())
            next_send += interval
        partition.finish()
    finally:
        writer.close()


def run_latency(
    benchmark: NetworkBenchmark,
    rate: float = 1000.0,
    warmup: int = 1000,
    timeout_s: float = 120.0,
) -> LatencyResult:
    """Sends ``benchmark.records`` timestamps at ``rate``/s over one channel.

    The first ``warmup`` samples are dropped (connection set-up, first buffers).
    """
    tune_switch_interval()
    one_to_one = replace(benchmark, writers=1, channels=1)
    latencies: list[int] = []
    context = multiprocessing.get_context("spawn")
    ours, theirs = context.Pipe()
    sender = None
    if not one_to_one.local:
        sender = context.Process(
            target=_latency_sender_main, args=(one_to_one, rate, theirs), name="sender"
        )
        sender.start()
        theirs.close()
    try:
        config = _configuration(one_to_one)
        with ShuffleEnvironment.from_configuration(config, name="receiver") as environment:
            if sender is None:
                partition = environment.create_result_partition(
                    ResultPartitionDeploymentDescriptor(ResultPartitionID.generate(), 1)
                )
                address, partition_ids = environment.data_address, [partition.partition_id]
                thread = threading.Thread(
                    target=_send_timed, args=(partition, one_to_one, rate), daemon=True
                )
            else:
                address, partition_ids = _from_sender(ours, sender)
            gate = _receiver_gate(environment, one_to_one, address, partition_ids)
            gate.request_partitions()
            if sender is None:
                thread.start()
            else:
                ours.send("go")
            deserializer = RecordDeserializer(IntSerializer())
            while (item := gate.get_next(timeout=timeout_s)) is not None:
                if item.buffer is not None:
                    now = time.monotonic_ns()
                    latencies.extend(now - sent for sent in deserializer.read_buffer(item.buffer))
            if not gate.is_finished():
                msg = f"no data for {timeout_s} s"
                raise TimeoutError(msg)
            gate.close()
            if sender is not None:
                ours.send("done")
            else:
                thread.join()
                partition.close()
    finally:
        if sender is not None:
            sender.join(timeout=30)
            if sender.is_alive():
                sender.kill()
                sender.join()
    samples = sorted(latencies[warmup:]) or sorted(latencies)
    if not samples:
        msg = "no latency samples were received"
        raise RuntimeError(msg)

    def percentile(fraction: float) -> float:
        return samples[min(len(samples) - 1, int(fraction * len(samples)))] / 1000

    return LatencyResult(
        one_to_one, len(samples), percentile(0.5), percentile(0.99), samples[-1] / 1000
    )


def check_ssl_configured(benchmark: NetworkBenchmark) -> None:
    """Raises ConfigurationError if SSL is asked for without key material configured."""
    if benchmark.ssl:
        SslOptions.from_configuration(_configuration(benchmark))


def process_rss_bytes(pid: int | None = None) -> int:
    """Resident set size of a process (Linux ``/proc``)."""
    with open(f"/proc/{pid or os.getpid()}/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
