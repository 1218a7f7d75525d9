"""Configuration options: ``ConfigOption``, one constant per key, and lookup by name.

Every option is a ``ConfigOption`` constant of this module, named after its key in upper
snake case (``taskmanager.memory.segment-size`` is ``SEGMENT_SIZE``). ``OPTIONS`` maps
each canonical key to its option; ``lookup_option`` also knows deprecated keys and
suggests the closest key for a misspelled one; ``env_var_name`` gives the ``PENSTOCK_*``
environment variable of a key.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Final, Generic, TypeVar

from penstock.config.parsers import (
    _UPPER_BOUND_MAX_PARALLELISM,
    _parse_max_parallelism,
    choice_parser,
    duration_parser,
    float_parser,
    int_parser,
    parse_bool,
    parse_path,
    parse_string,
    size_parser,
)
from penstock.errors import ConfigurationError

__all__ = [
    "BUFFERS_PER_CHANNEL",
    "BUFFERS_REQUEST_TIMEOUT",
    "BUFFER_TIMEOUT",
    "DATA_PORT",
    "DATA_SSL_ENABLED",
    "DETAILED_METRICS",
    "ENV_PREFIX",
    "EXECUTION_TARGET",
    "FLINK_MEMORY_SIZE",
    "FLOATING_BUFFERS_PER_GATE",
    "HEARTBEAT_INTERVAL",
    "HEARTBEAT_TIMEOUT",
    "JOBMANAGER_RPC_ADDRESS",
    "JOBMANAGER_RPC_PORT",
    "MAX_BUFFERS_PER_CHANNEL",
    "MAX_OVERDRAFT_BUFFERS_PER_GATE",
    "MAX_PARALLELISM",
    "MINICLUSTER_NUMBER_OF_TASKMANAGERS",
    "MINICLUSTER_PIN_TASKMANAGERS",
    "NETTY_CLIENT_CONNECT_TIMEOUT_SEC",
    "NETWORK_MEMORY_FRACTION",
    "NETWORK_MEMORY_MAX",
    "NETWORK_MEMORY_MIN",
    "NETWORK_RETRIES",
    "NUMBER_OF_TASK_SLOTS",
    "OBJECT_REUSE",
    "OPTIONS",
    "OTHER_ENV_VARIABLES",
    "PARALLELISM_DEFAULT",
    "PARTITION_REQUEST_TIMEOUT",
    "REQUEST_BACKOFF_INITIAL",
    "REQUEST_BACKOFF_MAX",
    "SEGMENT_SIZE",
    "SSL_INTERNAL_ENABLED",
    "SSL_INTERNAL_HANDSHAKE_TIMEOUT",
    "SSL_INTERNAL_KEY",
    "SSL_INTERNAL_KEYSTORE",
    "SSL_INTERNAL_KEY_PASSWORD",
    "SSL_INTERNAL_PROTOCOL",
    "SSL_INTERNAL_TRUSTSTORE",
    "TASKMANAGER_HOST",
    "ConfigOption",
    "env_var_name",
    "lookup_option",
]

T_co = TypeVar("T_co", covariant=True)

ENV_PREFIX: Final = "PENSTOCK_"

OTHER_ENV_VARIABLES: Final = frozenset({"PENSTOCK_CLUSTER_SECRET", "PENSTOCK_FLINK_BENCH"})
"""penstock's environment variables that are not configuration keys: the cluster key
(``penstock.runtime.control.SECRET_ENV``) and the Flink harness of ``bench compare``.
Reading the configuration from the environment passes over them."""


@dataclass(frozen=True, slots=True)
class ConfigOption(Generic[T_co]):
    """One configuration key: its default, how its values parse, and its old names.

    Attributes:
        key: Flink's key, e.g. ``"taskmanager.memory.segment-size"``.
        default: The value when the key is not set; ``None`` means unset.
        parser: Turns a string or a Python value into the typed value; raises
            ``ValueError`` (with the reason) on a bad one.
        description: What the option does, for documentation and the CLI.
        deprecated_keys: Older names accepted as aliases of ``key``.
        secret: Whether the value is masked in ``repr`` (passwords).
    """

    key: str
    default: T_co
    parser: Callable[[object], T_co]
    description: str
    deprecated_keys: tuple[str, ...] = ()
    secret: bool = False

    def parse(self, value: object, *, key: str | None = None) -> T_co:
        """Parses ``value`` for this option.

        Args:
            value: A string or a Python value of the option's type.
            key: The name the value was given under (a deprecated key, say), for the
                error message; defaults to ``self.key``.

        Raises:
            ConfigurationError: The value is invalid; names the key and the value.
        """
        name = self.key if key is None else key
        if value is None:
            raise ConfigurationError(name, value, "a value is required")
        try:
            return self.parser(value)
        except ConfigurationError:
            raise
        except (ValueError, TypeError, OverflowError) as err:
            raise ConfigurationError(name, value, str(err)) from None


PARALLELISM_DEFAULT: Final = ConfigOption(
    key="parallelism.default",
    default=1,
    parser=int_parser(min_value=1),
    description="Parallelism of operators that do not set their own.",
)
MAX_PARALLELISM: Final = ConfigOption(
    key="pipeline.max-parallelism",
    default=-1,
    parser=_parse_max_parallelism,
    description=(
        "Maximum parallelism (number of key groups); -1 derives it from the parallelism "
        f"(see compute_default_max_parallelism), else 1..{_UPPER_BOUND_MAX_PARALLELISM}."
    ),
)
OBJECT_REUSE: Final = ConfigOption(
    key="pipeline.object-reuse",
    default=False,
    parser=parse_bool,
    description=(
        "Whether operators may emit the mutable objects their functions return without "
        "copying them; only for functions that never change an object after returning it."
    ),
)
NUMBER_OF_TASK_SLOTS: Final = ConfigOption(
    key="taskmanager.numberOfTaskSlots",
    default=1,
    parser=int_parser(min_value=1),
    description="Number of slots of a TaskManager, each running one pipeline of tasks.",
)
MINICLUSTER_NUMBER_OF_TASKMANAGERS: Final[ConfigOption[int | None]] = ConfigOption(
    key="minicluster.number-of-taskmanagers",
    default=None,
    parser=int_parser(min_value=1),
    description=(
        "Number of TaskManager processes of the mini-cluster; unset starts as many as the "
        "job's slots need."
    ),
)
MINICLUSTER_PIN_TASKMANAGERS: Final = ConfigOption(
    key="minicluster.pin-taskmanagers",
    default=True,
    parser=parse_bool,
    description=(
        "Whether the mini-cluster keeps each TaskManager process on a CPU of its own, when "
        "there are at least as many CPUs as TaskManagers. A TaskManager runs Python one "
        "thread at a time, and hand-offs between its task and network threads are cheaper "
        "on one CPU (a pinned TaskManager is also scheduled as a batch process, so its "
        "threads do not preempt each other on wake-up); turn it off when several "
        "mini-clusters share a machine or operators release the GIL for long."
    ),
)
EXECUTION_TARGET: Final = ConfigOption(
    key="execution.target",
    default="minicluster",
    parser=choice_parser("local", "minicluster", "remote"),
    description=(
        "Where jobs run: 'local' (one TaskManager in this process), 'minicluster' "
        "(TaskManager processes on this host) or 'remote' (a JobManager started by hand)."
    ),
)
BUFFER_TIMEOUT: Final = ConfigOption(
    key="execution.buffer-timeout",
    default=100,
    parser=duration_parser(min_ms=-1),
    description=(
        "Longest time a partly filled output buffer waits before it is flushed; 0 flushes "
        "after every record, -1 only when the buffer is full."
    ),
    deprecated_keys=("execution.buffer-timeout.interval",),
)
# Flink insists on a power of two. 256 bytes is its smallest debloated buffer
# (taskmanager.network.memory.min-segment-size); beyond 16 MiB a buffer pool of any
# useful size would not fit the default network memory.
SEGMENT_SIZE: Final = ConfigOption(
    key="taskmanager.memory.segment-size",
    default=32 << 10,
    parser=size_parser(min_bytes=256, max_bytes=16 << 20, power_of_two=True),
    description=(
        "Size of a network buffer (memory segment): a power of two from 256 bytes to 16 mb."
    ),
)
NETWORK_MEMORY_FRACTION: Final = ConfigOption(
    key="taskmanager.memory.network.fraction",
    default=0.1,
    parser=float_parser(0.0, 1.0, min_inclusive=False, max_inclusive=False),
    description=(
        "Fraction of taskmanager.memory.flink.size used for network buffers, clamped to "
        "taskmanager.memory.network.min and .max."
    ),
    deprecated_keys=("taskmanager.network.memory.fraction",),
)
NETWORK_MEMORY_MIN: Final = ConfigOption(
    key="taskmanager.memory.network.min",
    default=64 << 20,
    parser=size_parser(),
    description="Least network memory of a TaskManager.",
    deprecated_keys=("taskmanager.network.memory.min",),
)
NETWORK_MEMORY_MAX: Final = ConfigOption(
    key="taskmanager.memory.network.max",
    default=1 << 30,
    parser=size_parser(),
    description="Most network memory of a TaskManager.",
    deprecated_keys=("taskmanager.network.memory.max",),
)
FLINK_MEMORY_SIZE: Final = ConfigOption(
    key="taskmanager.memory.flink.size",
    default=640 << 20,
    parser=size_parser(min_bytes=1),
    description="Total memory of a TaskManager that the network fraction is taken from.",
)
BUFFERS_PER_CHANNEL: Final = ConfigOption(
    key="taskmanager.network.memory.buffers-per-channel",
    default=2,
    parser=int_parser(min_value=0),
    description=("Exclusive buffers of each remote input channel; they are its initial credit."),
)
FLOATING_BUFFERS_PER_GATE: Final = ConfigOption(
    key="taskmanager.network.memory.floating-buffers-per-gate",
    default=8,
    parser=int_parser(min_value=0),
    description="Buffers an input gate shares among its channels as their backlog asks.",
)
MAX_BUFFERS_PER_CHANNEL: Final = ConfigOption(
    key="taskmanager.network.memory.max-buffers-per-channel",
    default=10,
    # At 1, the buffer a subpartition is being filled with already reaches the limit:
    # its task waits for output it can only make available by writing more.
    parser=int_parser(min_value=2),
    description=(
        "Most buffers one subpartition may hold before its producer counts as "
        "backpressured, so one slow channel cannot take a whole pool; at least 2, "
        "as the buffer being filled counts."
    ),
)
MAX_OVERDRAFT_BUFFERS_PER_GATE: Final = ConfigOption(
    key="taskmanager.network.memory.max-overdraft-buffers-per-gate",
    default=5,
    parser=int_parser(min_value=0),
    description=(
        "Buffers a backpressured output may borrow beyond its pool to finish the current record."
    ),
)
BUFFERS_REQUEST_TIMEOUT: Final = ConfigOption(
    key="taskmanager.network.memory.buffers-request-timeout",
    default=30_000,
    parser=duration_parser(min_ms=0),
    description="How long a request for exclusive buffers waits before it fails.",
)
REQUEST_BACKOFF_INITIAL: Final = ConfigOption(
    key="taskmanager.network.request-backoff.initial",
    default=100,
    parser=duration_parser(min_ms=0),
    description="First delay before a partition request is retried; it doubles each time.",
)
REQUEST_BACKOFF_MAX: Final = ConfigOption(
    key="taskmanager.network.request-backoff.max",
    default=10_000,
    parser=duration_parser(min_ms=0),
    description="Longest delay between retries of a partition request.",
)
PARTITION_REQUEST_TIMEOUT: Final = ConfigOption(
    key="taskmanager.network.partition-request-timeout",
    default=10_000,
    parser=duration_parser(min_ms=1),
    description=(
        "How long a producer waits for a requested partition to be registered before it "
        "answers 'Partition not found'."
    ),
)
NETWORK_RETRIES: Final = ConfigOption(
    key="taskmanager.network.retries",
    default=0,
    parser=int_parser(min_value=0),
    description="Extra attempts to connect to another TaskManager after the first fails.",
)
NETTY_CLIENT_CONNECT_TIMEOUT_SEC: Final = ConfigOption(
    key="taskmanager.network.netty.client.connectTimeoutSec",
    default=120,
    parser=int_parser(min_value=0),
    description="Timeout of a connection attempt to another TaskManager, in seconds; 0 sets none.",
)
DETAILED_METRICS: Final = ConfigOption(
    key="taskmanager.network.detailed-metrics",
    default=False,
    parser=parse_bool,
    description="Whether to report the queue lengths of each input gate and output as well.",
)
DATA_PORT: Final = ConfigOption(
    key="taskmanager.data.port",
    default=0,
    parser=int_parser(0, 65535),
    description="Port of a TaskManager's data server; 0 picks a free port.",
)
TASKMANAGER_HOST: Final = ConfigOption(
    key="taskmanager.host",
    default="127.0.0.1",
    parser=parse_string,
    description="Address a TaskManager's data server binds to and announces to peers.",
)
DATA_SSL_ENABLED: Final = ConfigOption(
    key="taskmanager.data.ssl.enabled",
    default=True,
    parser=parse_bool,
    description=("Whether data connections use TLS when security.ssl.internal.enabled is true."),
)
SSL_INTERNAL_ENABLED: Final = ConfigOption(
    key="security.ssl.internal.enabled",
    default=False,
    parser=parse_bool,
    description="Whether connections between penstock processes use mutual TLS.",
)
SSL_INTERNAL_KEYSTORE: Final[ConfigOption[str | None]] = ConfigOption(
    key="security.ssl.internal.keystore",
    default=None,
    parser=parse_path,
    description=(
        "PEM file with this process's certificate chain, and its private key unless "
        "security.ssl.internal.key names another file (PEM replaces Java keystores)."
    ),
)
SSL_INTERNAL_KEY: Final[ConfigOption[str | None]] = ConfigOption(
    key="security.ssl.internal.key",
    default=None,
    parser=parse_path,
    description="PEM file with the private key, when the keystore file does not hold it.",
)
SSL_INTERNAL_KEY_PASSWORD: Final[ConfigOption[str | None]] = ConfigOption(
    key="security.ssl.internal.key-password",
    default=None,
    parser=parse_string,
    description="Password of an encrypted private key.",
    secret=True,
)
SSL_INTERNAL_TRUSTSTORE: Final[ConfigOption[str | None]] = ConfigOption(
    key="security.ssl.internal.truststore",
    default=None,
    parser=parse_path,
    description="PEM file with the CA certificates peers are verified against.",
)
SSL_INTERNAL_PROTOCOL: Final = ConfigOption(
    key="security.ssl.internal.protocol",
    default="TLSv1.2",
    parser=choice_parser("TLSv1.2", "TLSv1.3"),
    description="Least TLS version of internal connections.",
)
SSL_INTERNAL_HANDSHAKE_TIMEOUT: Final = ConfigOption(
    key="security.ssl.internal.handshake-timeout",
    default=10_000,
    parser=duration_parser(min_ms=1),
    description="How long a TLS handshake may take.",
)
JOBMANAGER_RPC_ADDRESS: Final = ConfigOption(
    key="jobmanager.rpc.address",
    default="localhost",
    parser=parse_string,
    description="Host of the JobManager that TaskManagers register with.",
)
JOBMANAGER_RPC_PORT: Final = ConfigOption(
    key="jobmanager.rpc.port",
    default=6123,
    parser=int_parser(0, 65535),
    description="Port of the JobManager's control endpoint.",
)
HEARTBEAT_INTERVAL: Final = ConfigOption(
    key="heartbeat.interval",
    default=10_000,
    parser=duration_parser(min_ms=1),
    description=("Time between heartbeats of the JobManager and its TaskManagers and clients."),
)
HEARTBEAT_TIMEOUT: Final = ConfigOption(
    key="heartbeat.timeout",
    default=50_000,
    parser=duration_parser(min_ms=1),
    description=(
        "Silence after which a peer counts as lost: a TaskManager to the JobManager, "
        "the JobManager to a TaskManager or a client."
    ),
)

_ALL_OPTIONS: Final[tuple[ConfigOption[object], ...]] = (
    PARALLELISM_DEFAULT,
    MAX_PARALLELISM,
    OBJECT_REUSE,
    NUMBER_OF_TASK_SLOTS,
    MINICLUSTER_NUMBER_OF_TASKMANAGERS,
    MINICLUSTER_PIN_TASKMANAGERS,
    EXECUTION_TARGET,
    BUFFER_TIMEOUT,
    SEGMENT_SIZE,
    NETWORK_MEMORY_FRACTION,
    NETWORK_MEMORY_MIN,
    NETWORK_MEMORY_MAX,
    FLINK_MEMORY_SIZE,
    BUFFERS_PER_CHANNEL,
    FLOATING_BUFFERS_PER_GATE,
    MAX_BUFFERS_PER_CHANNEL,
    MAX_OVERDRAFT_BUFFERS_PER_GATE,
    BUFFERS_REQUEST_TIMEOUT,
    REQUEST_BACKOFF_INITIAL,
    REQUEST_BACKOFF_MAX,
    PARTITION_REQUEST_TIMEOUT,
    NETWORK_RETRIES,
    NETTY_CLIENT_CONNECT_TIMEOUT_SEC,
    DETAILED_METRICS,
    DATA_PORT,
    TASKMANAGER_HOST,
    DATA_SSL_ENABLED,
    SSL_INTERNAL_ENABLED,
    SSL_INTERNAL_KEYSTORE,
    SSL_INTERNAL_KEY,
    SSL_INTERNAL_KEY_PASSWORD,
    SSL_INTERNAL_TRUSTSTORE,
    SSL_INTERNAL_PROTOCOL,
    SSL_INTERNAL_HANDSHAKE_TIMEOUT,
    JOBMANAGER_RPC_ADDRESS,
    JOBMANAGER_RPC_PORT,
    HEARTBEAT_INTERVAL,
    HEARTBEAT_TIMEOUT,
)

OPTIONS: Final[Mapping[str, ConfigOption[object]]] = MappingProxyType(
    {option.key: option for option in _ALL_OPTIONS}
)
"""Every option by its canonical key."""

# Canonical and deprecated names alike, to the option they set.
_BY_NAME: Final[Mapping[str, ConfigOption[object]]] = MappingProxyType(
    {name: option for option in _ALL_OPTIONS for name in (option.key, *option.deprecated_keys)}
)


def env_var_name(key: str) -> str:
    """The environment variable of a key: ``PENSTOCK_`` + upper case, ``.``/``-`` → ``_``."""
    return ENV_PREFIX + key.upper().replace(".", "_").replace("-", "_")


_BY_ENV_NAME: Final[Mapping[str, str]] = MappingProxyType(
    {env_var_name(name): name for name in _BY_NAME}
)


def _suggestion(name: str, known: Iterable[str], canonical: Callable[[str], str]) -> str:
    """`` did you mean '...'?`` for the closest known name, or an empty string.

    Names are compared case-insensitively, so ``taskmanager.numberoftaskslots`` finds
    ``taskmanager.numberOfTaskSlots``; a deprecated name suggests its canonical key.
    """
    by_lower = {candidate.lower(): candidate for candidate in known}
    matches = difflib.get_close_matches(name.lower(), by_lower, n=1, cutoff=0.6)
    if not matches:
        return ""
    return f"; did you mean '{canonical(by_lower[matches[0]])}'?"


def _unknown_key(key: str, value: object) -> ConfigurationError:
    hint = _suggestion(key, _BY_NAME, lambda name: _BY_NAME[name].key)
    return ConfigurationError(key, value, f"Unknown configuration key '{key}'{hint}")


def lookup_option(key: str) -> ConfigOption[object]:
    """The option of a canonical or deprecated key.

    Raises:
        ConfigurationError: The key is unknown; the reason suggests the closest key.
    """
    option = _BY_NAME.get(key)
    if option is None:
        raise _unknown_key(key, None)
    return option
