"""Configuration: Flink's keys, their defaults, parsing, validation and layering.

Every option is a ``ConfigOption`` constant of this module, named after its key in upper
snake case (``taskmanager.memory.segment-size`` is ``SEGMENT_SIZE``). A ``Configuration``
holds the keys that were set explicitly, each validated and parsed when it is set, and
answers ``get(option)`` with the typed value or the option's default::

    config = Configuration({"parallelism.default": "4", "execution.buffer-timeout": "5 ms"})
    config.get(PARALLELISM_DEFAULT)     # 4
    config.get(BUFFER_TIMEOUT)          # 5 (milliseconds)
    config.get(SEGMENT_SIZE)            # 32768 (bytes, the default)

Values are given as strings, the way Flink's files and ``-D`` flags spell them, or as
Python values of the option's type. Memory sizes parse to bytes as Flink's
``MemorySize`` does (``"32kb"``, ``"32 KiB"``, ``"1 gb"``; units are powers of 1024; a
bare number is bytes) and durations to integer milliseconds as Flink's
``TimeUtils.parseDuration`` does (``"100 ms"``, ``"10 s"``, ``"1 min"``, ``"2 h"``; a
bare number is milliseconds).

Layers, lowest precedence first: a flat ``key: value`` file, ``PENSTOCK_*`` environment
variables (the key upper-cased with ``.`` and ``-`` turned into ``_``, e.g.
``PENSTOCK_TASKMANAGER_NUMBEROFTASKSLOTS``) and ``-D key=value`` dynamic properties;
``Configuration.load`` stacks all three.

TLS material is read as PEM files, not Java keystores: ``security.ssl.internal.keystore``
names the certificate chain (which may also hold the private key),
``security.ssl.internal.key`` an optional separate private key and
``security.ssl.internal.truststore`` the CA certificates peers are checked against.

The package holds one concept per module, and every public name is importable from
``penstock.config``: ``parsers`` (value parsers and formatters), ``options``
(``ConfigOption``, the option constants, ``OPTIONS``), ``configuration``
(``Configuration`` and its layers) and ``shuffle_options`` (``ShuffleOptions``, network
memory and the maximum parallelism derived from a configuration).
"""

from __future__ import annotations

from penstock.config.configuration import (
    Configuration,
)
from penstock.config.options import (
    BUFFER_TIMEOUT,
    BUFFERS_PER_CHANNEL,
    BUFFERS_REQUEST_TIMEOUT,
    DATA_PORT,
    DATA_SSL_ENABLED,
    DETAILED_METRICS,
    ENV_PREFIX,
    EXECUTION_TARGET,
    FLINK_MEMORY_SIZE,
    FLOATING_BUFFERS_PER_GATE,
    HEARTBEAT_INTERVAL,
    HEARTBEAT_TIMEOUT,
    JOBMANAGER_RPC_ADDRESS,
    JOBMANAGER_RPC_PORT,
    MAX_BUFFERS_PER_CHANNEL,
    MAX_OVERDRAFT_BUFFERS_PER_GATE,
    MAX_PARALLELISM,
    MINICLUSTER_NUMBER_OF_TASKMANAGERS,
    MINICLUSTER_PIN_TASKMANAGERS,
    NETTY_CLIENT_CONNECT_TIMEOUT_SEC,
    NETWORK_MEMORY_FRACTION,
    NETWORK_MEMORY_MAX,
    NETWORK_MEMORY_MIN,
    NETWORK_RETRIES,
    NUMBER_OF_TASK_SLOTS,
    OBJECT_REUSE,
    OPTIONS,
    OTHER_ENV_VARIABLES,
    PARALLELISM_DEFAULT,
    PARTITION_REQUEST_TIMEOUT,
    REQUEST_BACKOFF_INITIAL,
    REQUEST_BACKOFF_MAX,
    SEGMENT_SIZE,
    SSL_INTERNAL_ENABLED,
    SSL_INTERNAL_HANDSHAKE_TIMEOUT,
    SSL_INTERNAL_KEY,
    SSL_INTERNAL_KEY_PASSWORD,
    SSL_INTERNAL_KEYSTORE,
    SSL_INTERNAL_PROTOCOL,
    SSL_INTERNAL_TRUSTSTORE,
    TASKMANAGER_HOST,
    ConfigOption,
    env_var_name,
    lookup_option,
)
from penstock.config.parsers import (
    choice_parser,
    duration_parser,
    float_parser,
    format_duration,
    format_size,
    int_parser,
    parse_bool,
    parse_duration,
    parse_path,
    parse_size,
    parse_string,
    size_parser,
)
from penstock.config.shuffle_options import (
    ShuffleOptions,
    compute_default_max_parallelism,
    heartbeat_timeout_ms,
    network_memory_bytes,
    resolve_max_parallelism,
)

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
    "Configuration",
    "ShuffleOptions",
    "choice_parser",
    "compute_default_max_parallelism",
    "duration_parser",
    "env_var_name",
    "float_parser",
    "format_duration",
    "format_size",
    "heartbeat_timeout_ms",
    "int_parser",
    "lookup_option",
    "network_memory_bytes",
    "parse_bool",
    "parse_duration",
    "parse_path",
    "parse_size",
    "parse_string",
    "resolve_max_parallelism",
    "size_parser",
]
