"""Settings derived from a ``Configuration``: ``ShuffleOptions`` and what it builds on.

``ShuffleOptions`` gathers a TaskManager's network-stack settings (Flink's
NettyShuffleEnvironment), with the number of network buffers derived by
``network_memory_bytes``. ``compute_default_max_parallelism`` and
``resolve_max_parallelism`` derive an operator's maximum parallelism as Flink does, and
``heartbeat_timeout_ms`` checks the heartbeat timeout against its interval.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from penstock.config.configuration import Configuration
from penstock.config.options import (
    BUFFER_TIMEOUT,
    BUFFERS_PER_CHANNEL,
    BUFFERS_REQUEST_TIMEOUT,
    DATA_PORT,
    DATA_SSL_ENABLED,
    DETAILED_METRICS,
    FLINK_MEMORY_SIZE,
    FLOATING_BUFFERS_PER_GATE,
    HEARTBEAT_INTERVAL,
    HEARTBEAT_TIMEOUT,
    MAX_BUFFERS_PER_CHANNEL,
    MAX_OVERDRAFT_BUFFERS_PER_GATE,
    MAX_PARALLELISM,
    NETTY_CLIENT_CONNECT_TIMEOUT_SEC,
    NETWORK_MEMORY_FRACTION,
    NETWORK_MEMORY_MAX,
    NETWORK_MEMORY_MIN,
    NETWORK_RETRIES,
    PARALLELISM_DEFAULT,
    PARTITION_REQUEST_TIMEOUT,
    REQUEST_BACKOFF_INITIAL,
    REQUEST_BACKOFF_MAX,
    SEGMENT_SIZE,
    SSL_INTERNAL_ENABLED,
    TASKMANAGER_HOST,
    ConfigOption,
)
from penstock.config.parsers import (
    _MIN_DEFAULT_MAX_PARALLELISM,
    _UPPER_BOUND_MAX_PARALLELISM,
    format_duration,
    format_size,
)
from penstock.errors import ConfigurationError

__all__ = [
    "ShuffleOptions",
    "compute_default_max_parallelism",
    "heartbeat_timeout_ms",
    "network_memory_bytes",
    "resolve_max_parallelism",
]


def compute_default_max_parallelism(parallelism: int) -> int:
    """Flink's default maximum parallelism for an operator of ``parallelism`` subtasks.

    ``p + p // 2`` rounded up to a power of two, at least 128 and at most 32768, so
    keyed state can be rescaled by half again without changing the key groups.
    """
    if parallelism < 1:
        msg = f"parallelism must be at least 1, got {parallelism}"
        raise ValueError(msg)
    wanted = parallelism + parallelism // 2
    power = 1 << (wanted - 1).bit_length()
    return min(max(power, _MIN_DEFAULT_MAX_PARALLELISM), _UPPER_BOUND_MAX_PARALLELISM)


def resolve_max_parallelism(config: Configuration, parallelism: int | None = None) -> int:
    """The maximum parallelism of ``config`` for ``parallelism`` (default: parallelism.default).

    Raises:
        ConfigurationError: ``pipeline.max-parallelism`` is set below the parallelism.
    """
    effective = config.get(PARALLELISM_DEFAULT) if parallelism is None else parallelism
    configured = config.get(MAX_PARALLELISM)
    if configured == -1:
        return compute_default_max_parallelism(effective)
    if configured < effective:
        reason = (
            f"the maximum parallelism ({configured}) must be greater than or equal to "
            f"the parallelism ({effective})"
        )
        raise ConfigurationError(MAX_PARALLELISM.key, configured, reason)
    return configured


def heartbeat_timeout_ms(config: Configuration) -> int:
    """``heartbeat.timeout``, checked against ``heartbeat.interval`` as Flink checks it.

    Raises:
        ConfigurationError: The timeout is shorter than the interval: every peer would
            count as lost between two of its heartbeats.
    """
    _check_order(config, HEARTBEAT_INTERVAL, HEARTBEAT_TIMEOUT, format_duration)
    return config.get(HEARTBEAT_TIMEOUT)


def _check_order(
    config: Configuration,
    low: ConfigOption[int],
    high: ConfigOption[int],
    show: Callable[[int], str],
) -> None:
    """Refuses a value of ``low`` above that of ``high``, naming the key that was set.

    The error names ``high`` when only it was set (``-D heartbeat.interval=1min``
    against the default timeout is a mistake in the interval), else ``low``.

    Raises:
        ConfigurationError: ``low`` exceeds ``high``.
    """
    low_value, high_value = config.get(low), config.get(high)
    if low_value <= high_value:
        return
    if high in config and low not in config:
        reason = f"{high.key} ({show(high_value)}) must not be below {low.key} ({show(low_value)})"
        raise ConfigurationError(high.key, high_value, reason)
    reason = f"{low.key} ({show(low_value)}) must not exceed {high.key} ({show(high_value)})"
    raise ConfigurationError(low.key, low_value, reason)


def network_memory_bytes(config: Configuration) -> int:
    """Network memory of a TaskManager: fraction × flink.size, clamped to [min, max].

    Raises:
        ConfigurationError: ``taskmanager.memory.network.min`` exceeds ``.max``.
    """
    _check_order(config, NETWORK_MEMORY_MIN, NETWORK_MEMORY_MAX, format_size)
    low = config.get(NETWORK_MEMORY_MIN)
    high = config.get(NETWORK_MEMORY_MAX)
    derived = int(config.get(FLINK_MEMORY_SIZE) * config.get(NETWORK_MEMORY_FRACTION))
    return min(max(derived, low), high)


@dataclass(frozen=True, slots=True)
class ShuffleOptions:
    """Settings of a TaskManager's network stack (Flink's NettyShuffleEnvironment).

    Sizes are in bytes and durations in milliseconds. Build one with
    ``from_configuration``; direct construction validates the same relations.

    Attributes:
        segment_size: Bytes per network buffer.
        total_buffers: Buffers of the NetworkBufferPool (network memory // segment size).
        buffers_per_channel: Exclusive buffers (initial credit) per remote channel.
        floating_buffers_per_gate: Floating buffers per input gate.
        max_buffers_per_channel: Cap on the buffers one subpartition holds.
        max_overdraft_buffers_per_gate: Buffers an output may borrow beyond its pool.
        buffers_request_timeout_ms: Wait for exclusive buffers before failing.
        request_backoff_initial_ms: First partition-request retry delay.
        request_backoff_max_ms: Longest partition-request retry delay.
        partition_request_timeout_ms: Wait for a requested partition on the producer side.
        buffer_timeout_ms: Output flush interval (0 every record, -1 when full).
        data_port: Port of the data server (0 any free port).
        host: Address of the data server.
        ssl_enabled: Whether data connections use TLS.
        retries: Extra connection attempts after the first.
        connect_timeout_ms: Timeout of one connection attempt.
        detailed_metrics: Whether per-gate buffer metrics are reported.
    """

    segment_size: int
    total_buffers: int
    buffers_per_channel: int
    floating_buffers_per_gate: int
    max_buffers_per_channel: int
    max_overdraft_buffers_per_gate: int
    buffers_request_timeout_ms: int
    request_backoff_initial_ms: int
    request_backoff_max_ms: int
    partition_request_timeout_ms: int
    buffer_timeout_ms: int
    data_port: int
    host: str
    ssl_enabled: bool
    retries: int = 0
    connect_timeout_ms: int = 120_000
    detailed_metrics: bool = False

    def __post_init__(self) -> None:
        if self.request_backoff_initial_ms > self.request_backoff_max_ms:
            reason = (
                f"{REQUEST_BACKOFF_INITIAL.key} ({self.request_backoff_initial_ms} ms) must "
                f"not exceed {REQUEST_BACKOFF_MAX.key} ({self.request_backoff_max_ms} ms)"
            )
            raise ConfigurationError(
                REQUEST_BACKOFF_INITIAL.key, self.request_backoff_initial_ms, reason
            )
        if self.segment_size <= 0 or self.segment_size & (self.segment_size - 1):
            raise ConfigurationError(
                SEGMENT_SIZE.key, self.segment_size, "must be a positive power of two"
            )
        if self.total_buffers < 0:
            field = "total_buffers"
            raise ConfigurationError(field, self.total_buffers, "must not be negative")

    @classmethod
    def from_configuration(cls, config: Configuration) -> ShuffleOptions:
        """The shuffle settings of ``config``.

        Raises:
            ConfigurationError: Network memory min exceeds max, or the initial request
                backoff exceeds the maximum.
        """
        _check_order(config, REQUEST_BACKOFF_INITIAL, REQUEST_BACKOFF_MAX, format_duration)
        segment_size = config.get(SEGMENT_SIZE)
        return cls(
            segment_size=segment_size,
            total_buffers=network_memory_bytes(config) // segment_size,
            buffers_per_channel=config.get(BUFFERS_PER_CHANNEL),
            floating_buffers_per_gate=config.get(FLOATING_BUFFERS_PER_GATE),
            max_buffers_per_channel=config.get(MAX_BUFFERS_PER_CHANNEL),
            max_overdraft_buffers_per_gate=config.get(MAX_OVERDRAFT_BUFFERS_PER_GATE),
            buffers_request_timeout_ms=config.get(BUFFERS_REQUEST_TIMEOUT),
            request_backoff_initial_ms=config.get(REQUEST_BACKOFF_INITIAL),
            request_backoff_max_ms=config.get(REQUEST_BACKOFF_MAX),
            partition_request_timeout_ms=config.get(PARTITION_REQUEST_TIMEOUT),
            buffer_timeout_ms=config.get(BUFFER_TIMEOUT),
            data_port=config.get(DATA_PORT),
            host=config.get(TASKMANAGER_HOST),
            ssl_enabled=config.get(SSL_INTERNAL_ENABLED) and config.get(DATA_SSL_ENABLED),
            retries=config.get(NETWORK_RETRIES),
            connect_timeout_ms=config.get(NETTY_CLIENT_CONNECT_TIMEOUT_SEC) * 1000,
            detailed_metrics=config.get(DETAILED_METRICS),
        )
