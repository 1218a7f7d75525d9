"""ShuffleEnvironment: everything one TaskManager needs to exchange records.

It owns, for the lifetime of a TaskManager process: the NetworkBufferPool (all network
memory, allocated once), the ResultPartitionManager, the network event loop thread,
the data server listening on ``taskmanager.data.port`` and the connection manager for
outgoing connections (Flink's NettyShuffleEnvironment). Tasks ask it for their
result partitions and input gates, described by deployment descriptors: which
partition to produce and how many consumers it has; which partitions to consume, and
at which data address each producer lives. A producer at this environment's own
address is read through a ``LocalInputChannel`` (no copy, no network); any other
through a ``RemoteInputChannel`` over TCP with credit-based flow control.

``close()`` releases everything: partitions, connections, the server, the loop and
the pool.
"""

from __future__ import annotations

import errno
import logging
import os
from dataclasses import dataclass
from typing import Final

from penstock.config import DATA_PORT, TASKMANAGER_HOST, Configuration, ShuffleOptions
from penstock.consumer.input_channel import InputChannel
from penstock.consumer.input_gate import SingleInputGate
from penstock.consumer.local_channel import LocalInputChannel
from penstock.consumer.remote_channel import ConnectionID, RemoteInputChannel
from penstock.errors import ConfigurationError, IllegalStateError
from penstock.ids import ResultPartitionID
from penstock.memory.network_pool import NetworkBufferPool
from penstock.partition.manager import ResultPartitionManager
from penstock.partition.result_partition import ResultPartition
from penstock.transport.client import ConnectionManager
from penstock.transport.loop import EventLoopThread
from penstock.transport.server import NettyServer
from penstock.transport.tls import SslOptions, client_context, server_context

__all__ = [
    "InputGateDeploymentDescriptor",
    "ResultPartitionDeploymentDescriptor",
    "ShuffleDescriptor",
    "ShuffleEnvironment",
    "data_port_bind_error",
]

log = logging.getLogger(__name__)

_FLOATING_POOL_MIN: Final = 1


def data_port_bind_error(host: str, port: int, error: OSError) -> ConfigurationError:
    """The ConfigurationError for a data port that cannot be bound on ``host:port``.

    It names ``taskmanager.data.port`` when that port is taken or privileged, else
    ``taskmanager.host`` (a name that does not resolve, an address not of this host).
    """
    # asyncio words the error with the address already; the system's words suffice.
    detail = os.strerror(error.errno) if error.errno and error.errno > 0 else str(error)
    reason = f"cannot bind the data port on {host}:{port}: {detail}"
    if port and error.errno in (errno.EADDRINUSE, errno.EACCES):  # taken, or privileged
        return ConfigurationError(DATA_PORT.key, port, reason)
    return ConfigurationError(TASKMANAGER_HOST.key, host, reason)


@dataclass(frozen=True, slots=True)
class ResultPartitionDeploymentDescriptor:
    """A partition a task produces: its id and how many consumer channels read it."""

    partition_id: ResultPartitionID
    num_subpartitions: int


@dataclass(frozen=True, slots=True)
class ShuffleDescriptor:
    """A partition a task consumes, and the data address of the TaskManager producing it.

    ``subpartition_index`` overrides the gate's consumed subpartition for this channel
    (benchmarks read many subpartitions of one partition through one gate).
    """

    partition_id: ResultPartitionID
    producer_address: ConnectionID
    subpartition_index: int | None = None


@dataclass(frozen=True, slots=True)
class InputGateDeploymentDescriptor:
    """The partitions one input gate reads: one channel each, all the same subpartition."""

    consumed_subpartition_index: int
    shuffle_descriptors: tuple[ShuffleDescriptor, ...]


class ShuffleEnvironment:
    """The network stack of one TaskManager.

    Args:
        options: Pool sizes, segment size, ports, timeouts (from the configuration).
        ssl: TLS for the data port and outgoing connections (off by default).
        name: Names the network thread and log lines.
    """

    def __init__(
        self,
        options: ShuffleOptions,
        ssl: SslOptions | None = None,
        name: str = "taskmanager",
    ) -> None:
        self.options = options
        self.ssl = ssl or SslOptions()
        self.name = name
        self.network_pool = NetworkBufferPool(
            options.total_buffers, options.segment_size, options.buffers_request_timeout_ms
        )
        self.partition_manager = ResultPartitionManager()
        self.loop_thread = EventLoopThread(f"{name}-network")
        self.server = NettyServer(
            self.partition_manager,
            self.loop_thread,
            options.segment_size,
            host=options.host,
            port=options.data_port,
            ssl_context=server_context(self.ssl) if self.ssl.enabled else None,
            ssl_handshake_timeout_s=self.ssl.handshake_timeout_s,
            partition_request_timeout_s=options.partition_request_timeout_ms / 1000,
        )
        self.connection_manager = ConnectionManager(
            self.loop_thread,
            options.segment_size,
            ssl_context=client_context(self.ssl) if self.ssl.enabled else None,
            ssl_handshake_timeout_s=self.ssl.handshake_timeout_s,
            connect_timeout_s=options.connect_timeout_ms / 1000,
            retries=options.retries,
        )
        self._started = False
        self._closed = False

    @classmethod
    def from_configuration(
        cls, config: Configuration, name: str = "taskmanager"
    ) -> ShuffleEnvironment:
        """An environment configured by Flink's keys (see ``penstock.config``)."""
        return cls(
            ShuffleOptions.from_configuration(config), SslOptions.from_configuration(config), name
        )

    # -- lifecycle -------------------------------------------------------------------

    def start(self) -> ConnectionID:
        """Starts the network thread and the data server; returns the data address.

        Raises:
            ConfigurationError: The data port cannot be bound: ``taskmanager.data.port``
                is taken, or ``taskmanager.host`` is not an address of this host.
        """
        if self._started:
            return self.data_address
        self._check_open()  # closed unstarted: its loop is closed too
        self._started = True
        self.loop_thread.start()
        try:
            self.loop_thread.run(self.server.start())
        except OSError as exc:  # socket.gaierror too: a host name that does not resolve
            raise self._bind_error(exc) from exc
        log.info("%s: network stack up, data port %s:%d", self.name, *self.data_address)
        return self.data_address

    def _bind_error(self, error: OSError) -> ConfigurationError:
        return data_port_bind_error(self.server.host, self.server.requested_port, error)

    @property
    def data_address(self) -> ConnectionID:
        return self.server.address

    def close(self) -> None:
        """Releases partitions, connections, the server, the loop and the pool."""
        if self._closed:
            return
        self._closed = True
        self.partition_manager.shutdown()
        try:
            if self._started:
                self.loop_thread.run(self._close_network(), timeout=10)
        finally:
            self.loop_thread.stop()  # closes the loop even if it never ran
        self.network_pool.destroy()

    async def _close_network(self) -> None:
        await self.connection_manager.close()
        await self.server.close()

    def __enter__(self) -> ShuffleEnvironment:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- producing -------------------------------------------------------------------

    def create_result_partition(
        self, descriptor: ResultPartitionDeploymentDescriptor, owner: str = ""
    ) -> ResultPartition:
        """A registered partition, with a pool sized as Flink sizes pipelined ones.

        Raises:
            InsufficientBuffersError: The network memory cannot hold its minimum.
        """
        self._check_open()
        opts = self.options
        partition = ResultPartition.create(
            descriptor.partition_id,
            descriptor.num_subpartitions,
            self.network_pool,
            buffers_per_channel=opts.buffers_per_channel,
            floating_buffers_per_gate=opts.floating_buffers_per_gate,
            max_buffers_per_channel=opts.max_buffers_per_channel,
            max_overdraft_buffers=opts.max_overdraft_buffers_per_gate,
            owner=owner,
        )
        try:
            self.partition_manager.register_result_partition(partition)
        except BaseException:
            partition.release()
            partition.close()  # gives its pool back
            raise
        return partition

    # -- consuming -------------------------------------------------------------------

    def create_input_gate(
        self, descriptor: InputGateDeploymentDescriptor, owner: str = ""
    ) -> SingleInputGate:
        """A gate with one channel per consumed partition, local or remote by address.

        Remote channels take their exclusive buffers now; the gate gets a pool of
        floating buffers if it has any remote channel. Call ``request_partitions()``
        on the gate to start reading.

        Raises:
            InsufficientBuffersError: The network memory cannot hold the buffers.
        """
        self._check_open()
        opts = self.options
        remote = sum(1 for shuffle in descriptor.shuffle_descriptors if not self._is_local(shuffle))
        pool = (
            self.network_pool.create_buffer_pool(
                _FLOATING_POOL_MIN, max(_FLOATING_POOL_MIN, opts.floating_buffers_per_gate)
            )
            if remote
            else None
        )
        gate = SingleInputGate(owner=owner, buffer_pool=pool)
        channels: list[InputChannel] = []
        try:
            for index, shuffle in enumerate(descriptor.shuffle_descriptors):
                channels.append(self._create_channel(gate, index, shuffle, descriptor))
            gate.set_channels(channels)
        except BaseException:
            for channel in channels:
                channel.release_all_resources()
            if pool is not None:
                pool.destroy()
            raise
        return gate

    def _create_channel(
        self,
        gate: SingleInputGate,
        index: int,
        shuffle: ShuffleDescriptor,
        descriptor: InputGateDeploymentDescriptor,
    ) -> InputChannel:
        opts = self.options
        subpartition = (
            descriptor.consumed_subpartition_index
            if shuffle.subpartition_index is None
            else shuffle.subpartition_index
        )
        if self._is_local(shuffle):
            return LocalInputChannel(
                gate,
                index,
                shuffle.partition_id,
                subpartition,
                self.partition_manager,
                opts.request_backoff_initial_ms,
                opts.request_backoff_max_ms,
            )
        channel = RemoteInputChannel(
            gate,
            index,
            shuffle.partition_id,
            subpartition,
            shuffle.producer_address,
            self.connection_manager,
            self.network_pool,
            initial_credit=opts.buffers_per_channel,
            initial_backoff_ms=opts.request_backoff_initial_ms,
            max_backoff_ms=opts.request_backoff_max_ms,
        )
        channel.setup()
        return channel

    def _is_local(self, shuffle: ShuffleDescriptor) -> bool:
        return self._started and tuple(shuffle.producer_address) == self.data_address

    def _check_open(self) -> None:
        if self._closed:
            msg = f"the shuffle environment of {self.name} is closed"
            raise IllegalStateError(msg)
