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
"""

from __future__ import annotations

import difflib
import logging
import math
import os
import re
from collections.abc import Callable, ItemsView, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from types import MappingProxyType
from typing import Final, Generic, TypeVar, cast, overload

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
    "NETTY_CLIENT_CONNECT_TIMEOUT_SEC",
    "NETWORK_MEMORY_FRACTION",
    "NETWORK_MEMORY_MAX",
    "NETWORK_MEMORY_MIN",
    "NETWORK_RETRIES",
    "NUMBER_OF_TASK_SLOTS",
    "OPTIONS",
    "PARALLELISM_DEFAULT",
    "PARTITION_REQUEST_TIMEOUT",
    "PROMETHEUS_PORT",
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

logger = logging.getLogger(__name__)

T = TypeVar("T")
T_co = TypeVar("T_co", covariant=True)

ENV_PREFIX: Final = "PENSTOCK_"

# Java's Long.MAX_VALUE: the largest size or duration Flink itself can represent.
_MAX_LONG: Final = 2**63 - 1

# Flink's KeyGroupRangeAssignment bounds for the maximum parallelism.
_MIN_DEFAULT_MAX_PARALLELISM: Final = 128
_UPPER_BOUND_MAX_PARALLELISM: Final = 1 << 15

_SECRET_MASK: Final = "******"


# --------------------------------------------------------------------------------------
# Parsers: a value given as a string or as a Python value in, the typed value out. They
# raise ValueError with the reason; ConfigOption.parse turns it into a ConfigurationError
# that names the key and the value.
# --------------------------------------------------------------------------------------


def _type_name(value: object) -> str:
    return type(value).__name__


def _whole(value: float, what: str) -> int:
    """The int a float stands for, if it is finite and whole."""
    if not math.isfinite(value) or not value.is_integer():
        msg = f"{value!r} is not a whole number of {what}"
        raise ValueError(msg)
    return int(value)


def _check_bounds(value: int, low: int | None, high: int | None, unit: str = "") -> None:
    if low is not None and high is not None and not low <= value <= high:
        msg = f"must be between {low}{unit} and {high}{unit}"
        raise ValueError(msg)
    if low is not None and value < low:
        msg = f"must be at least {low}{unit}"
        raise ValueError(msg)
    if high is not None and value > high:
        msg = f"must be at most {high}{unit}"
        raise ValueError(msg)


_INT_PATTERN: Final = re.compile(r"[+-]?[0-9]+")


def _to_int(value: object) -> int:
    if isinstance(value, bool):
        # bool is an int subclass; True as a slot count is a mistake, not a 1.
        msg = f"expected an integer, got {_type_name(value)}"
        raise ValueError(msg)
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        return _whole(value, "units")
    if isinstance(value, str):
        text = value.strip()
        if _INT_PATTERN.fullmatch(text):
            return int(text)
        msg = f"{value!r} is not an integer"
        raise ValueError(msg)
    msg = f"expected an integer, got {_type_name(value)}"
    raise ValueError(msg)


def int_parser(
    min_value: int | None = None, max_value: int | None = None
) -> Callable[[object], int]:
    """A parser of integers within ``[min_value, max_value]`` (either bound optional).

    The parser accepts an ``int``, a whole ``float`` or a string of decimal digits with
    an optional sign; ``bool`` is refused.
    """

    def parse(value: object) -> int:
        number = _to_int(value)
        _check_bounds(number, min_value, max_value)
        return number

    return parse


def float_parser(
    min_value: float | None = None,
    max_value: float | None = None,
    *,
    min_inclusive: bool = True,
    max_inclusive: bool = True,
) -> Callable[[object], float]:
    """A parser of finite floats within the given bounds, each inclusive or exclusive."""

    def parse(value: object) -> float:
        if isinstance(value, bool) or not isinstance(value, int | float | str):
            msg = f"expected a number, got {_type_name(value)}"
            raise ValueError(msg)
        try:
            number = float(value)
        except ValueError:
            msg = f"{value!r} is not a number"
            raise ValueError(msg) from None
        if not math.isfinite(number):
            msg = f"{value!r} is not a finite number"
            raise ValueError(msg)
        if min_value is not None and (
            number < min_value or (not min_inclusive and number == min_value)
        ):
            relation = "at least" if min_inclusive else "greater than"
            msg = f"must be {relation} {min_value}"
            raise ValueError(msg)
        if max_value is not None and (
            number > max_value or (not max_inclusive and number == max_value)
        ):
            relation = "at most" if max_inclusive else "less than"
            msg = f"must be {relation} {max_value}"
            raise ValueError(msg)
        return number

    return parse


def parse_bool(value: object) -> bool:
    """Parses ``True``/``False`` or the strings ``true``/``false`` in any case, as Flink."""
    if isinstance(value, bool):
        return value
    if isinstance(value, str):
        text = value.strip().lower()
        if text == "true":
            return True
        if text == "false":
            return False
        msg = f"{value!r} is not a boolean; use 'true' or 'false'"
        raise ValueError(msg)
    msg = f"expected a boolean, got {_type_name(value)}"
    raise ValueError(msg)


def choice_parser(*choices: str) -> Callable[[object], str]:
    """A parser of one of ``choices``, matched case-insensitively, returned as spelled there."""
    canonical = {choice.lower(): choice for choice in choices}

    def parse(value: object) -> str:
        if not isinstance(value, str):
            msg = f"expected a string, got {_type_name(value)}"
            raise ValueError(msg)
        choice = canonical.get(value.strip().lower())
        if choice is None:
            msg = f"must be one of {', '.join(repr(c) for c in choices)}"
            raise ValueError(msg)
        return choice

    return parse


def parse_string(value: object) -> str:
    """Parses a non-empty string, kept as given (passwords may have significant spaces)."""
    if not isinstance(value, str):
        msg = f"expected a string, got {_type_name(value)}"
        raise ValueError(msg)
    if not value.strip():
        msg = "must not be empty"
        raise ValueError(msg)
    return value


def parse_path(value: object) -> str:
    """Parses a filesystem path given as a string or ``os.PathLike``; returns a string.

    The path is not checked for existence here: that happens where the file is opened.
    """
    if isinstance(value, os.PathLike):
        value = os.fspath(value)
    if not isinstance(value, str):
        msg = f"expected a path, got {_type_name(value)}"
        raise ValueError(msg)
    return parse_string(value)


# Flink's MemorySize units, plus the IEC spellings "kib", "mib", ... (the same powers of
# 1024: Flink's "kb" has always meant 1024 bytes).
_SIZE_UNITS: Final[Mapping[str, int]] = MappingProxyType(
    {
        "": 1,
        "b": 1,
        "byte": 1,
        "bytes": 1,
        **dict.fromkeys(("k", "kb", "kib", "kibibyte", "kibibytes"), 1 << 10),
        **dict.fromkeys(("m", "mb", "mib", "mebibyte", "mebibytes"), 1 << 20),
        **dict.fromkeys(("g", "gb", "gib", "gibibyte", "gibibytes"), 1 << 30),
        **dict.fromkeys(("t", "tb", "tib", "tebibyte", "tebibytes"), 1 << 40),
    }
)
_SIZE_PATTERN: Final = re.compile(r"([0-9]+)\s*([a-z]*)")
_SIZE_FORMAT_UNITS: Final = ((1 << 40, "tb"), (1 << 30, "gb"), (1 << 20, "mb"), (1 << 10, "kb"))


def parse_size(value: object) -> int:
    """Parses a memory size into bytes.

    Accepts an ``int`` (bytes), a float that is a whole number of bytes, or a string: a
    number with an optional unit, case-insensitive, space optional: ``b``/``bytes``,
    ``k``/``kb``/``kib``, ``m``/``mb``/``mib``, ``g``/``gb``/``gib``, ``t``/``tb``/``tib``,
    all powers of 1024 (``"32kb"`` = ``"32 KiB"`` = 32768).

    Raises:
        ValueError: The value is not a size, is negative or exceeds 2**63 - 1 bytes.
    """
    if isinstance(value, bool):
        msg = f"expected a memory size, got {_type_name(value)}"
        raise ValueError(msg)
    if isinstance(value, int):
        size = value
    elif isinstance(value, float):
        size = _whole(value, "bytes")
    elif isinstance(value, str):
        match = _SIZE_PATTERN.fullmatch(value.strip().lower())
        multiplier = _SIZE_UNITS.get(match.group(2)) if match else None
        if match is None or multiplier is None:
            msg = (
                f"{value!r} is not a memory size; give bytes or a number with a unit "
                "(b, kb, mb, gb, tb; k/m/g/t and kib/mib/gib/tib also work), e.g. '32 kb'"
            )
            raise ValueError(msg)
        size = int(match.group(1)) * multiplier
    else:
        msg = f"expected a memory size, got {_type_name(value)}"
        raise ValueError(msg)
    if size < 0:
        msg = "a memory size must not be negative"
        raise ValueError(msg)
    if size > _MAX_LONG:
        msg = f"a memory size must be at most {_MAX_LONG} bytes"
        raise ValueError(msg)
    return size


def format_size(size: int) -> str:
    """Formats bytes in the largest unit that divides them exactly, as Flink prints sizes.

    ``format_size(32768) == "32 kb"``, ``format_size(100) == "100 bytes"``; the result
    parses back to ``size`` with ``parse_size``.
    """
    if size < 0:
        msg = f"a memory size must not be negative: {size}"
        raise ValueError(msg)
    for multiplier, unit in _SIZE_FORMAT_UNITS:
        if size and size % multiplier == 0:
            return f"{size // multiplier} {unit}"
    return f"{size} bytes"


# Flink's TimeUtils units; a duration is held in milliseconds, so micro- and nanoseconds
# are accepted only when they add up to whole milliseconds.
_NANOS_PER_MS: Final = 1_000_000
_DURATION_UNITS: Final[Mapping[str, int]] = MappingProxyType(
    {
        **dict.fromkeys(("d", "day", "days"), 86_400_000 * _NANOS_PER_MS),
        **dict.fromkeys(("h", "hour", "hours"), 3_600_000 * _NANOS_PER_MS),
        **dict.fromkeys(("min", "m", "minute", "minutes"), 60_000 * _NANOS_PER_MS),
        **dict.fromkeys(("s", "sec", "secs", "second", "seconds"), 1000 * _NANOS_PER_MS),
        **dict.fromkeys(
            ("", "ms", "milli", "millis", "millisecond", "milliseconds"), _NANOS_PER_MS
        ),
        **dict.fromkeys(("µs", "us", "micro", "micros", "microsecond", "microseconds"), 1000),
        **dict.fromkeys(("ns", "nano", "nanos", "nanosecond", "nanoseconds"), 1),
    }
)
_DURATION_PATTERN: Final = re.compile(r"([+-]?)([0-9]+)\s*([a-zµ]*)")
_DURATION_FORMAT_UNITS: Final = ((86_400_000, "d"), (3_600_000, "h"), (60_000, "min"), (1000, "s"))


def parse_duration(value: object) -> int:
    """Parses a duration into integer milliseconds.

    Accepts an ``int`` (milliseconds), a float that is a whole number of milliseconds, a
    ``datetime.timedelta`` of whole milliseconds, or a string: an optionally signed
    number with an optional unit, case-insensitive, space optional: ``ms``, ``s``,
    ``min`` (or ``m``), ``h``, ``d`` and their long names (``"100 ms"``, ``"10s"``,
    ``"1 min"``). A negative duration parses; the option decides whether it is allowed.

    Raises:
        ValueError: The value is not a duration or not a whole number of milliseconds.
    """
    if isinstance(value, bool):
        msg = f"expected a duration, got {_type_name(value)}"
        raise ValueError(msg)
    if isinstance(value, int):
        millis = value
    elif isinstance(value, float):
        millis = _whole(value, "milliseconds")
    elif isinstance(value, timedelta):
        micros = (value.days * 86_400 + value.seconds) * 1_000_000 + value.microseconds
        if micros % 1000:
            msg = f"{value!r} is not a whole number of milliseconds"
            raise ValueError(msg)
        millis = micros // 1000
    elif isinstance(value, str):
        match = _DURATION_PATTERN.fullmatch(value.strip().lower())
        nanos_per_unit = _DURATION_UNITS.get(match.group(3)) if match else None
        if match is None or nanos_per_unit is None:
            msg = (
                f"{value!r} is not a duration; give milliseconds or a number with a unit "
                "(ms, s, min, h, d), e.g. '100 ms'"
            )
            raise ValueError(msg)
        nanos = int(match.group(2)) * nanos_per_unit
        if nanos % _NANOS_PER_MS:
            msg = f"{value!r} is not a whole number of milliseconds"
            raise ValueError(msg)
        millis = -(nanos // _NANOS_PER_MS) if match.group(1) == "-" else nanos // _NANOS_PER_MS
    else:
        msg = f"expected a duration, got {_type_name(value)}"
        raise ValueError(msg)
    if abs(millis) > _MAX_LONG:
        msg = f"a duration must be at most {_MAX_LONG} ms"
        raise ValueError(msg)
    return millis


def format_duration(millis: int) -> str:
    """Formats milliseconds in the largest unit that divides them exactly, as Flink does.

    ``format_duration(100) == "100 ms"``, ``format_duration(60_000) == "1 min"``; the
    result parses back to ``millis`` with ``parse_duration``.
    """
    for multiplier, unit in _DURATION_FORMAT_UNITS:
        if millis and millis % multiplier == 0:
            return f"{millis // multiplier} {unit}"
    return f"{millis} ms"


def size_parser(
    min_bytes: int | None = None,
    max_bytes: int | None = None,
    *,
    power_of_two: bool = False,
) -> Callable[[object], int]:
    """A parser of memory sizes (see ``parse_size``) within bounds, in bytes."""

    def parse(value: object) -> int:
        size = parse_size(value)
        if min_bytes is not None and size < min_bytes:
            msg = f"must be at least {format_size(min_bytes)}"
            raise ValueError(msg)
        if max_bytes is not None and size > max_bytes:
            msg = f"must be at most {format_size(max_bytes)}"
            raise ValueError(msg)
        if power_of_two and size & (size - 1):
            msg = "must be a power of two"
            raise ValueError(msg)
        return size

    return parse


def duration_parser(min_ms: int | None = 0, max_ms: int | None = None) -> Callable[[object], int]:
    """A parser of durations (see ``parse_duration``) within bounds, in milliseconds."""

    def parse(value: object) -> int:
        millis = parse_duration(value)
        _check_bounds(millis, min_ms, max_ms, " ms")
        return millis

    return parse


def _parse_max_parallelism(value: object) -> int:
    number = _to_int(value)
    if number != -1 and not 1 <= number <= _UPPER_BOUND_MAX_PARALLELISM:
        msg = (
            "must be -1 (derived from the parallelism) or between 1 and "
            f"{_UPPER_BOUND_MAX_PARALLELISM}"
        )
        raise ValueError(msg)
    return number


# --------------------------------------------------------------------------------------
# Options
# --------------------------------------------------------------------------------------


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
    parser=int_parser(min_value=1),
    description=(
        "Most buffers one subpartition may hold before its producer counts as "
        "backpressured, so one slow channel cannot take a whole pool."
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
    description="Timeout of a connection attempt to another TaskManager, in seconds.",
)
DETAILED_METRICS: Final = ConfigOption(
    key="taskmanager.network.detailed-metrics",
    default=False,
    parser=parse_bool,
    description="Whether to report per-gate buffer usage metrics as well.",
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
    description="Time between heartbeats of the JobManager and its TaskManagers.",
)
HEARTBEAT_TIMEOUT: Final = ConfigOption(
    key="heartbeat.timeout",
    default=50_000,
    parser=duration_parser(min_ms=1),
    description="Silence after which a peer counts as lost.",
)
PROMETHEUS_PORT: Final[ConfigOption[int | None]] = ConfigOption(
    key="metrics.prometheus.port",
    default=None,
    parser=int_parser(0, 65535),
    description="Port of a process's Prometheus endpoint; unset serves no metrics.",
)

_ALL_OPTIONS: Final[tuple[ConfigOption[object], ...]] = (
    PARALLELISM_DEFAULT,
    MAX_PARALLELISM,
    NUMBER_OF_TASK_SLOTS,
    MINICLUSTER_NUMBER_OF_TASKMANAGERS,
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
    PROMETHEUS_PORT,
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


# --------------------------------------------------------------------------------------
# Configuration
# --------------------------------------------------------------------------------------


def _drop_shadowed_aliases(pairs: Sequence[tuple[str, object]]) -> list[tuple[str, object]]:
    """Drops values given under a deprecated key when the same source sets the new key.

    Within one source the canonical key wins regardless of order, as in Flink; between
    sources (layers, successive ``set`` calls) the later one wins.
    """
    canonical_given = {key for key, _ in pairs if key in OPTIONS}
    return [
        (key, value)
        for key, value in pairs
        if key in OPTIONS or key not in _BY_NAME or _BY_NAME[key].key not in canonical_given
    ]


class Configuration:
    """Configuration keys set explicitly, each validated and parsed when it is set.

    Built from nothing, a mapping of keys to values (strings or Python values of the
    option's type) or another Configuration (copied). ``get`` returns the typed value of
    an option, or its default when the key is not set. Deprecated keys are stored under
    their canonical key.

    Raises:
        ConfigurationError: A key is unknown or a value is invalid; names both.
    """

    __slots__ = ("_values",)

    def __init__(self, values: Configuration | Mapping[str, object] | None = None) -> None:
        self._values: dict[str, object] = {}
        if isinstance(values, Configuration):
            self._values.update(values._values)
        elif values is not None:
            self._update(list(values.items()))

    def _update(self, pairs: Sequence[tuple[str, object]], origin: str | None = None) -> None:
        for key, value in _drop_shadowed_aliases(pairs):
            if not isinstance(key, str):
                raise ConfigurationError(str(key), value, "a key must be a string")
            try:
                self.set(key, value)
            except ConfigurationError as err:
                if origin is None:
                    raise
                raise ConfigurationError(err.key, err.value, f"{err.reason} ({origin})") from None

    @overload
    def set(self, key: ConfigOption[T], value: T | str) -> None: ...

    @overload
    def set(self, key: str, value: object) -> None: ...

    def set(self, key: ConfigOption[object] | str, value: object) -> None:
        """Sets a key (canonical or deprecated, or an option) to a validated value.

        Raises:
            ConfigurationError: The key is unknown or the value invalid.
        """
        name = key.key if isinstance(key, ConfigOption) else key
        option = _BY_NAME.get(name)
        if option is None:
            raise _unknown_key(name, value)
        if name != option.key:
            logger.debug("Configuration key '%s' is deprecated; use '%s'", name, option.key)
        self._values[option.key] = option.parse(value, key=name)

    def get(self, option: ConfigOption[T]) -> T:
        """The typed value of ``option``: the value set, else the option's default."""
        if option.key in self._values:
            # Stored values came out of this option's parser, so they have its type.
            return cast(T, self._values[option.key])
        return option.default

    def get_raw(self, key: str) -> object | None:
        """The parsed value set for ``key`` (canonical or deprecated), ``None`` if unset.

        Raises:
            ConfigurationError: The key is unknown.
        """
        return self._values.get(lookup_option(key).key)

    def contains(self, key: str | ConfigOption[object]) -> bool:
        """Whether ``key`` (canonical or deprecated) is set explicitly; unknown keys are not."""
        name = key.key if isinstance(key, ConfigOption) else key
        option = _BY_NAME.get(name)
        return option is not None and option.key in self._values

    def __contains__(self, key: object) -> bool:
        return isinstance(key, str | ConfigOption) and self.contains(key)

    def to_dict(self) -> dict[str, object]:
        """The keys set explicitly, canonical names to parsed values (bytes, milliseconds).

        ``Configuration(config.to_dict()) == config`` holds.
        """
        return dict(self._values)

    def to_dynamic_properties(self) -> list[str]:
        """The keys set explicitly as ``key=value`` strings for ``from_dynamic_properties``.

        Secrets are written in plain text: a password passed on a command line is
        visible to other users of the host, so ship such settings another way.
        """
        return [
            f"{key}={str(value).lower() if isinstance(value, bool) else value}"
            for key, value in self._values.items()
        ]

    def items(self) -> ItemsView[str, object]:
        """A read-only view of the keys set explicitly and their parsed values."""
        return MappingProxyType(self._values).items()

    def __iter__(self) -> Iterator[str]:
        return iter(list(self._values))

    def __len__(self) -> int:
        return len(self._values)

    def __or__(self, other: Configuration | Mapping[str, object]) -> Configuration:
        """A new Configuration with the keys of both; ``other`` wins where both set one."""
        if not isinstance(other, Configuration | Mapping):
            return NotImplemented
        merged = Configuration(self)
        merged._values.update(Configuration(other)._values)
        return merged

    def __ror__(self, other: Mapping[str, object]) -> Configuration:
        if not isinstance(other, Mapping):
            return NotImplemented
        return Configuration(other) | self

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Configuration):
            return NotImplemented
        return self._values == other._values

    # Mutable (``set``), so not hashable.
    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        shown = {
            key: _SECRET_MASK if OPTIONS[key].secret else value
            for key, value in self._values.items()
        }
        return f"Configuration({shown!r})"

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Configuration:
        """The ``PENSTOCK_*`` variables of ``environ`` (default: ``os.environ``).

        A variable is a key upper-cased with ``.`` and ``-`` turned into ``_``, e.g.
        ``PENSTOCK_PARALLELISM_DEFAULT=4``. Variables without the prefix are ignored.

        Raises:
            ConfigurationError: A ``PENSTOCK_*`` variable matches no key (naming the
                variable) or holds an invalid value.
        """
        environment = os.environ if environ is None else environ
        pairs: list[tuple[str, object]] = []
        for variable, value in environment.items():
            if not variable.startswith(ENV_PREFIX):
                continue
            key = _BY_ENV_NAME.get(variable)
            if key is None:
                hint = _suggestion(
                    variable,
                    _BY_ENV_NAME,
                    lambda name: env_var_name(_BY_NAME[_BY_ENV_NAME[name]].key),
                )
                reason = f"Unknown environment variable '{variable}'{hint}"
                raise ConfigurationError(variable, value, reason)
            pairs.append((key, value))
        config = cls()
        for name, given in _drop_shadowed_aliases(pairs):
            origin = f"from environment variable {env_var_name(name)}"
            config._update([(name, given)], origin=origin)
        return config

    @classmethod
    def from_file(cls, path: str | os.PathLike[str]) -> Configuration:
        """Reads a flat Flink-style file of ``key: value`` lines.

        Blank lines are skipped; ``#`` starts a comment at the beginning of a line or
        after whitespace (so ``#`` inside a value, as in a password, is kept). A value
        may be wrapped in single or double quotes. Nested YAML is not read: every
        setting is one line with the full dotted key. A key set twice keeps the last.

        Raises:
            ConfigurationError: A line is not ``key: value``, or its key or value is
                invalid; the error names the file and line.
            OSError: The file cannot be read.
        """
        text = Path(path).read_text(encoding="utf-8")
        config = cls()
        for number, line in enumerate(text.splitlines(), start=1):
            content = _strip_comment(line).strip()
            if not content:
                continue
            where = f"in {os.fspath(path)}, line {number}"
            key, colon, value = content.partition(":")
            key, value = key.strip(), _unquote(value.strip())
            if not colon or not key or not value:
                location = f"{os.fspath(path)}:{number}"
                reason = f"expected a 'key: value' line ({where})"
                raise ConfigurationError(location, line, reason)
            config._update([(key, value)], origin=where)
        return config

    @classmethod
    def from_dynamic_properties(cls, properties: Iterable[str]) -> Configuration:
        """Reads ``key=value`` strings, as given with ``-D`` on the command line.

        Raises:
            ConfigurationError: An item has no ``=``, or its key or value is invalid.
        """
        pairs: list[tuple[str, object]] = []
        for item in properties:
            key, equals, value = item.partition("=")
            if not equals or not key.strip():
                raise ConfigurationError(item, item, "expected a 'key=value' dynamic property")
            pairs.append((key.strip(), value.strip()))
        config = cls()
        config._update(pairs, origin="from a -D dynamic property")
        return config

    @classmethod
    def load(
        cls,
        file: str | os.PathLike[str] | None = None,
        environ: Mapping[str, str] | None = None,
        dynamic: Iterable[str] = (),
    ) -> Configuration:
        """The file, then the environment, then dynamic properties; later layers win.

        Args:
            file: A ``key: value`` file, or ``None`` for none.
            environ: The environment (``os.environ`` when ``None``).
            dynamic: ``key=value`` strings from ``-D`` flags.
        """
        base = cls() if file is None else cls.from_file(file)
        return base | cls.from_env(environ) | cls.from_dynamic_properties(dynamic)


_COMMENT: Final = re.compile(r"(^|\s)#")


def _strip_comment(line: str) -> str:
    match = _COMMENT.search(line)
    return line if match is None else line[: match.start()]


def _unquote(value: str) -> str:
    if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
        return value[1:-1]
    return value


# --------------------------------------------------------------------------------------
# Derived settings
# --------------------------------------------------------------------------------------


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


def network_memory_bytes(config: Configuration) -> int:
    """Network memory of a TaskManager: fraction × flink.size, clamped to [min, max].

    Raises:
        ConfigurationError: ``taskmanager.memory.network.min`` exceeds ``.max``.
    """
    low = config.get(NETWORK_MEMORY_MIN)
    high = config.get(NETWORK_MEMORY_MAX)
    if low > high:
        reason = (
            f"{NETWORK_MEMORY_MIN.key} ({format_size(low)}) must not exceed "
            f"{NETWORK_MEMORY_MAX.key} ({format_size(high)})"
        )
        raise ConfigurationError(NETWORK_MEMORY_MIN.key, low, reason)
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
