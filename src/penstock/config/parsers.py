"""Parsers and formatters of configuration values.

Integers, floats, booleans, choices, strings, paths, memory sizes and durations. A parser
takes a value given as a string or as a Python value and returns the typed value.
Parsers raise ``ValueError`` with the reason; ``ConfigOption.parse`` turns it into a
``ConfigurationError`` that names the key and the value. Memory sizes parse to bytes as
Flink's ``MemorySize`` does and durations to integer milliseconds as Flink's
``TimeUtils.parseDuration`` does; ``format_size`` and ``format_duration`` print them back.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Callable, Mapping
from datetime import timedelta
from types import MappingProxyType
from typing import Final

__all__ = [
    "choice_parser",
    "duration_parser",
    "float_parser",
    "format_duration",
    "format_size",
    "int_parser",
    "parse_bool",
    "parse_duration",
    "parse_path",
    "parse_size",
    "parse_string",
    "size_parser",
]

# Java's Long.MAX_VALUE: the largest size or duration Flink itself can represent.
_MAX_LONG: Final = 2**63 - 1

# Flink's KeyGroupRangeAssignment bounds for the maximum parallelism.
_MIN_DEFAULT_MAX_PARALLELISM: Final = 128
_UPPER_BOUND_MAX_PARALLELISM: Final = 1 << 15


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
