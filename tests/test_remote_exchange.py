"""Two TaskManager processes exchanging records over loopback TCP.

A sender process (W writer threads, one result partition of C subpartitions each) and a
receiver process (one input gate per partition, C remote channels each) own one
``ShuffleEnvironment`` each; the processes and their commands are in
``remote_helpers``. Every record names its writer, channel and sequence number, and the
receiver checks each buffer against the next expected number of its channel, so a lost,
duplicated, reordered or misrouted record is counted as an anomaly.

Every wait is bounded: a reply from a child process within ``CALL_TIMEOUT_S``, a
condition in a child within the timeout the command carries. Each test kills (SIGKILL)
only the processes it started, and only those still running at its end.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Final, cast

import pytest

from remote_helpers import (
    ExchangeSpec,
    Peer,
    PoolStats,
    ReceiverPlan,
    ReceiverStatus,
    SenderStatus,
    start_receiver,
    start_sender,
)
from tls_certs import (
    CertificateAuthority,
    Identity,
    make_ca,
    make_certificate,
    make_untrusted_certificate,
    openssl_available,
)

pytestmark = pytest.mark.cluster

MIB: Final = 1024 * 1024
WAIT_S: Final = 30.0
"""How long a child may take for something that should take well under a second."""


class Exchange:
    """The processes a test started; all of them are killed (if alive) at teardown."""

    def __init__(self) -> None:
        self.peers: list[Peer] = []

    def sender(
        self, spec: ExchangeSpec, overrides: dict[str, str] | None = None
    ) -> tuple[Peer, ReceiverPlan]:
        peer, address, partition_ids = start_sender(spec, overrides)
        self.peers.append(peer)
        return peer, ReceiverPlan(address, partition_ids)

    def receiver(
        self, spec: ExchangeSpec, plan: ReceiverPlan, overrides: dict[str, str] | None = None
    ) -> Peer:
        peer = start_receiver(spec, plan, overrides)
        self.peers.append(peer)
        return peer

    def close(self) -> None:
        for peer in self.peers:
            peer.kill()
            peer.connection.close()


@pytest.fixture
def exchange() -> Iterator[Exchange]:
    started = Exchange()
    try:
        yield started
    finally:
        started.close()


def sender_status(peer: Peer, command: str = "status", argument: object = None) -> SenderStatus:
    return cast("SenderStatus", peer.call(command, argument))


def receiver_status(peer: Peer, command: str = "status", argument: object = None) -> ReceiverStatus:
    return cast("ReceiverStatus", peer.call(command, argument))


def assert_all_delivered(spec: ExchangeSpec, received: ReceiverStatus, sent: SenderStatus) -> None:
    """Every channel got exactly its writer's rounds, in order, and nothing else."""
    assert received.error is None, received.error
    assert received.finished
    assert received.anomalies == 0, received.first_anomalies
    assert received.ended_channels == spec.writers * spec.channels
    for writer in sent.writers:
        assert writer.state == "finished", writer
        first = writer.index * spec.channels
        counts = received.per_channel[first : first + spec.channels]
        assert set(counts) == {writer.rounds}, (writer.index, min(counts), max(counts))
    assert received.records == sum(w.rounds for w in sent.writers) * spec.channels


def run_to_the_end(sender: Peer, receiver: Peer) -> tuple[SenderStatus, ReceiverStatus]:
    """Lets the receiver read freely, waits for both sides to finish."""
    receiver.call("grant", None)
    sent = sender_status(sender, "join", WAIT_S)
    received = receiver_status(receiver, "join", WAIT_S)
    return sent, received


def finish_and_check_pools(sender: Peer, receiver: Peer) -> None:
    """Closes the sender's partitions and both environments; every segment is back."""
    after_close = cast("PoolStats", sender.call("close_partitions"))
    assert after_close.all_returned, after_close
    assert receiver.shutdown().all_returned
    assert sender.shutdown().all_returned


def exchange_everything(exchange: Exchange, spec: ExchangeSpec) -> ReceiverStatus:
    """Sends the whole plan and reads it freely to the end; checks that every record
    arrived once and in order and that every segment went back to its pool."""
    sender, plan = exchange.sender(spec)
    receiver = exchange.receiver(spec, plan)
    sender.call("go")
    sent, received = run_to_the_end(sender, receiver)
    assert_all_delivered(spec, received, sent)
    finish_and_check_pools(sender, receiver)
    return received


# -- 1. ordering -------------------------------------------------------------------------


@pytest.mark.slow
def test_four_writers_by_a_thousand_channels_deliver_every_record_once_in_order(
    exchange: Exchange,
) -> None:
    # Flink's "1000,100ms" benchmark shape: 16000 network buffers on each side.
    spec = ExchangeSpec(writers=4, channels=1000, records_per_channel=250)
    received = exchange_everything(exchange, spec)
    assert received.records == 4 * 1000 * 250


def test_records_spanning_buffers_arrive_whole_and_every_segment_returns(
    exchange: Exchange,
) -> None:
    # 1000-byte records do not divide a 32 KiB segment: most buffers end inside a record.
    spec = ExchangeSpec(writers=2, channels=50, records_per_channel=200, record_size=1000)
    received = exchange_everything(exchange, spec)
    assert received.buffers > spec.writers * spec.channels * 6  # ~6.1 buffers per channel


@pytest.mark.slow
def test_one_channel_of_large_records_streams_to_the_end(exchange: Exchange) -> None:
    """The benchmark's shape: one channel carrying many full buffers, so the receiver
    lives on exclusive and floating credit, announced in batches, for thousands of
    round trips."""
    spec = ExchangeSpec(writers=1, channels=1, records_per_channel=60_000, record_size=1024)
    received = exchange_everything(exchange, spec)
    assert received.buffers >= 1883  # 60,000 frames of 1028 bytes fill 1,882.3 buffers


# -- 2. backpressure ---------------------------------------------------------------------

BACKPRESSURE_SPEC: Final = ExchangeSpec(
    writers=2, channels=8, records_per_channel=None, record_size=1024
)


def await_writers_stalled(sender: Peer) -> tuple[SenderStatus, SenderStatus]:
    """Until every writer is blocked and none moved for STALL_GRACE_S seconds."""
    return cast(
        "tuple[SenderStatus, SenderStatus]", sender.call("await_stalled", (STALL_GRACE_S, WAIT_S))
    )


STALL_GRACE_S: Final = 0.5
"""A writer that neither wakes nor blocks anew for this long counts as stalled.

Before the receiver's credit is used up, the network thread still sends (and so frees)
buffers the writers filled, and a writer blocks and wakes several times; afterwards
nothing can free a buffer, and the writers stay blocked for good.
"""


def test_a_receiver_that_reads_nothing_blocks_the_writers_in_their_pools(
    exchange: Exchange,
) -> None:
    spec = BACKPRESSURE_SPEC
    sender, plan = exchange.sender(spec)
    receiver = exchange.receiver(spec, ReceiverPlan(plan.address, plan.partition_ids, budget=0))
    sender.call("go")

    before, after = await_writers_stalled(sender)

    for start, end in zip(before.writers, after.writers, strict=True):
        assert start.state == end.state == "running"
        # Blocked in request_buffer_builder_blocking all along, in one episode...
        assert start.blocked and end.blocked
        assert start.blocked_episodes == end.blocked_episodes
        # ...on a pool that has nothing to give...
        assert not start.partition_available and not end.partition_available
        # ...and never gave more than its size plus the overdraft it may lend.
        assert end.used_buffers <= end.pool_max_size + end.pool_max_overdraft
        assert end.pool_size <= end.pool_max_size
        # Not one record was written meanwhile.
        assert end.records_out == start.records_out
    stalled = receiver_status(receiver)
    assert stalled.items == 0
    assert stalled.error is None

    sender.call("stop")
    sent, received = run_to_the_end(sender, receiver)

    assert_all_delivered(spec, received, sent)
    assert all(w.rounds > 0 for w in sent.writers)
    finish_and_check_pools(sender, receiver)


def test_granted_reads_release_exactly_the_backpressure_they_pay_for(
    exchange: Exchange,
) -> None:
    spec = BACKPRESSURE_SPEC
    sender, plan = exchange.sender(spec)
    receiver = exchange.receiver(spec, ReceiverPlan(plan.address, plan.partition_ids, budget=0))
    sender.call("go")
    _, first = await_writers_stalled(sender)

    # A few buffers read: the writers move on, then block again on a full pool.
    receiver.call("grant", 20)
    read = receiver_status(receiver, "wait_items", (20, WAIT_S))
    assert read.items == 20
    _, second = await_writers_stalled(sender)

    assert sum(w.records_out for w in second.writers) > sum(w.records_out for w in first.writers)
    assert receiver_status(receiver).items == 20  # the grant is spent: it reads no further

    sender.call("stop")
    sent, received = run_to_the_end(sender, receiver)
    assert_all_delivered(spec, received, sent)
    finish_and_check_pools(sender, receiver)


# -- 3. memory stays flat ----------------------------------------------------------------

RSS_RUN_SECONDS: Final = 30
RSS_WARMUP_SECONDS: Final = 5
RSS_READ_RATE: Final = 200
"""Buffers and events per second the slow receiver reads: far below what the writers make."""
RSS_GROWTH_BOUND: Final = 16 * MIB
"""Allowed RSS growth after warm-up, per process.

Over the 25 s after warm-up the receiver reads 5000 buffers, some 11 M records (a
buffer holds up to 2730 records of 12 bytes; flushes cut some short). Keeping 32 KiB
per buffer would grow a process by ~150 MiB, keeping 2 bytes per record by ~21 MiB:
both above 16 MiB. Below it stays what a steady Python process drifts by (allocator
arenas, counters turning into larger ints): a few MiB at most.
"""


@pytest.mark.slow
@pytest.mark.timeout(150)
def test_rss_of_both_processes_stays_flat_under_thirty_seconds_of_backpressure(
    exchange: Exchange,
) -> None:
    spec = ExchangeSpec(writers=4, channels=100, records_per_channel=None)
    sender, plan = exchange.sender(spec)
    receiver = exchange.receiver(
        spec, ReceiverPlan(plan.address, plan.partition_ids, rate=RSS_READ_RATE)
    )
    sender.call("go")

    samples: list[tuple[int, int]] = []
    target = 0
    for _ in range(RSS_RUN_SECONDS):
        # The rate-limited receiver is the clock: RSS_READ_RATE items take one second.
        target += RSS_READ_RATE
        progress = receiver_status(receiver, "wait_items", (target, WAIT_S))
        assert progress.error is None, progress.error
        assert progress.items >= target
        samples.append((sender.rss_bytes(), receiver.rss_bytes()))
    under_pressure = sender_status(sender)
    moved = receiver_status(receiver).records

    print(f"\nRSS every second, MiB (sender, receiver); {moved} records read:")
    for second, (sending, receiving) in enumerate(samples, start=1):
        print(f"  {second:3d} s  {sending / MIB:8.1f}  {receiving / MIB:8.1f}")
    for side, name in ((0, "sender"), (1, "receiver")):
        steady = [sample[side] for sample in samples[RSS_WARMUP_SECONDS:]]
        growth = max(steady) - steady[0]
        print(
            f"  {name}: after warm-up min {min(steady) / MIB:.1f} MiB, "
            f"max {max(steady) / MIB:.1f} MiB, growth {growth / MIB:.1f} MiB"
        )
        assert growth < RSS_GROWTH_BOUND, (name, growth / MIB)

    # The run really was backpressured, and the pools stayed within their bounds.
    for writer in under_pressure.writers:
        assert writer.blocked_episodes > 0, writer
        assert writer.used_buffers <= writer.pool_max_size + writer.pool_max_overdraft
    sender.call("stop")
    sent, received = run_to_the_end(sender, receiver)
    assert_all_delivered(spec, received, sent)
    finish_and_check_pools(sender, receiver)


# -- 4. segments come back after a cancelled run -----------------------------------------


def test_a_receiver_that_closes_its_gate_mid_stream_releases_the_senders_partitions(
    exchange: Exchange,
) -> None:
    spec = BACKPRESSURE_SPEC
    sender, plan = exchange.sender(spec)
    receiver = exchange.receiver(spec, ReceiverPlan(plan.address, plan.partition_ids, budget=5))
    sender.call("go")
    # The receiver reads its budget first: a quiet spell of the writers alone does not
    # show that it has (a slow receiver may still be at it).
    read = receiver_status(receiver, "wait_items", (5, WAIT_S))
    assert read.items == 5
    await_writers_stalled(sender)

    cancelled = receiver_status(receiver, "close")
    assert cancelled.items == 5
    assert not cancelled.finished

    # The server releases the partitions nobody reads any more; their writers fail.
    sent = sender_status(sender, "join", WAIT_S)
    for writer in sent.writers:
        assert writer.state == "failed", writer
        assert writer.error is not None
        assert writer.error.type_name == "PartitionReleasedError", writer.error
        assert writer.partition_released
    finish_and_check_pools(sender, receiver)


# -- 5. a process dies -------------------------------------------------------------------


def test_a_killed_receiver_fails_the_senders_writers_and_frees_its_pool(
    exchange: Exchange,
) -> None:
    spec = BACKPRESSURE_SPEC
    sender, plan = exchange.sender(spec)
    receiver = exchange.receiver(spec, ReceiverPlan(plan.address, plan.partition_ids, budget=0))
    sender.call("go")
    await_writers_stalled(sender)

    receiver.kill()

    sent = sender_status(sender, "join", WAIT_S)
    for writer in sent.writers:
        assert writer.state == "failed", writer
        assert writer.error is not None
        assert writer.error.is_penstock_error, writer.error
        assert writer.partition_released
    after_close = cast("PoolStats", sender.call("close_partitions"))
    assert after_close.all_returned, after_close
    assert sender.shutdown().all_returned


@pytest.mark.parametrize("how", ["sigkill", "exit"])
def test_a_lost_receiver_reaches_the_senders_writers_as_the_cause(
    exchange: Exchange, how: str
) -> None:
    spec = BACKPRESSURE_SPEC
    sender, plan = exchange.sender(spec)
    receiver = exchange.receiver(spec, ReceiverPlan(plan.address, plan.partition_ids, budget=0))
    sender.call("go")
    await_writers_stalled(sender)

    if how == "sigkill":
        receiver.kill()
    else:
        receiver.connection.send(("exit", None))
        receiver.process.join(WAIT_S)

    sent = sender_status(sender, "join", WAIT_S)
    for writer in sent.writers:
        assert writer.error is not None, writer
        assert any(
            cause.startswith("RemoteTransportError: Lost connection to the consumer")
            for cause in writer.error.causes
        ), writer.error


def test_a_killed_sender_fails_the_receiver_with_the_senders_address(
    exchange: Exchange,
) -> None:
    spec = BACKPRESSURE_SPEC
    sender, plan = exchange.sender(spec)
    receiver = exchange.receiver(spec, plan)
    sender.call("go")
    reading = receiver_status(receiver, "wait_items", (50, WAIT_S))
    assert reading.items >= 50

    sender.kill()

    failed = receiver_status(receiver, "join", WAIT_S)
    assert failed.done
    assert not failed.finished
    assert failed.anomalies == 0, failed.first_anomalies  # what did arrive was right
    assert failed.error is not None
    assert failed.error.type_name == "RemoteTransportError", failed.error
    address = f"{plan.address[0]}:{plan.address[1]}"
    assert failed.error.address == address
    assert address in failed.error.message
    assert receiver.shutdown().all_returned


# -- 6. TLS ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Pki:
    ca: CertificateAuthority
    sender: Identity
    receiver: Identity
    stranger: Identity


def tls(identity: Identity, truststore: Path) -> dict[str, str]:
    return {
        "security.ssl.internal.enabled": "true",
        "security.ssl.internal.keystore": str(identity.combined),
        "security.ssl.internal.truststore": str(truststore),
    }


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    if not openssl_available():
        pytest.skip("the openssl command is needed to make test certificates")
    directory = tmp_path_factory.mktemp("pki")
    ca = make_ca(directory)
    return Pki(
        ca,
        make_certificate(directory, ca, "sender"),
        make_certificate(directory, ca, "receiver"),
        make_untrusted_certificate(directory, "stranger"),
    )


TLS_SPEC: Final = ExchangeSpec(writers=2, channels=20, records_per_channel=2000)


def test_tls_on_both_sides_delivers_everything(exchange: Exchange, pki: Pki) -> None:
    spec = TLS_SPEC
    sender, plan = exchange.sender(spec, tls(pki.sender, pki.ca.cert))
    receiver = exchange.receiver(spec, plan, tls(pki.receiver, pki.ca.cert))
    sender.call("go")

    sent, received = run_to_the_end(sender, receiver)

    assert_all_delivered(spec, received, sent)
    finish_and_check_pools(sender, receiver)


@pytest.mark.parametrize(
    "receiver_side",
    ["untrusted-certificate", "distrusts-the-sender", "no-tls"],
)
def test_a_receiver_outside_the_senders_trust_gets_no_data_and_a_transport_error(
    exchange: Exchange, pki: Pki, receiver_side: str
) -> None:
    overrides = {
        "untrusted-certificate": tls(pki.stranger, pki.ca.cert),
        "distrusts-the-sender": tls(pki.receiver, pki.stranger.ca),
        "no-tls": {},
    }[receiver_side]
    spec = TLS_SPEC
    sender, plan = exchange.sender(spec, tls(pki.sender, pki.ca.cert))
    sender.call("go")  # the data is there, ready to be read
    receiver = exchange.receiver(spec, plan, overrides)

    failed = receiver_status(receiver, "join", WAIT_S)

    assert failed.done
    assert failed.records == 0
    assert failed.buffers == 0
    assert failed.error is not None
    assert failed.error.is_penstock_error, failed.error
    assert failed.error.type_name == "RemoteTransportError", failed.error
    assert failed.error.address == f"{plan.address[0]}:{plan.address[1]}"
    assert receiver.shutdown().all_returned
    assert sender.shutdown().all_returned
