"""User function classes, as PyFlink's ``pyflink.datastream.functions``.

A transformation takes a plain callable or an object of the matching class below.
Such an object may also define ``open(runtime_context)`` and ``close()``: they are
called once per subtask, before the first record and after the last one, as Flink
calls its rich functions. Use them to set up and release per-subtask resources::

    class Enrich(MapFunction):
        def open(self, runtime_context: RuntimeContext) -> None:
            self.lookup = load_table(runtime_context.get_index_of_this_subtask())

        def map(self, value):
            return value, self.lookup[value]

The ``as_*`` adapters turn either form into one fast callable, resolved once per
subtask so the per-record path is a single call.
"""

from __future__ import annotations

import functools
import inspect
import logging
import types
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Final, cast

if TYPE_CHECKING:
    from penstock.task.operator import Collector, RuntimeContext

__all__ = [
    "FilterFunction",
    "FlatMapFunction",
    "Function",
    "KeySelector",
    "KeyedProcessFunction",
    "MapFunction",
    "Partitioner",
    "ProcessContext",
    "ReduceFunction",
    "SinkFunction",
    "as_filter",
    "as_flat_map",
    "as_key_selector",
    "as_map",
    "as_partitioner",
    "as_process",
    "as_reduce",
    "as_sink",
    "check_called_on_all",
    "close_all",
    "close_function",
    "close_functions",
    "open_function",
    "open_functions",
]

log = logging.getLogger(__name__)


class Function:
    """Base of every function class: optional per-subtask ``open`` and ``close``."""

    def open(self, runtime_context: RuntimeContext) -> None:
        """Called once per subtask before the first record."""

    def close(self) -> None:
        """Called once per subtask after the last record (also after a failure)."""


class MapFunction(Function):
    """One record in, one record out."""

    def map(self, value: object) -> object:
        """The record ``value`` becomes."""
        raise NotImplementedError


class FlatMapFunction(Function):
    """One record in, any number out: return an iterable (or emit with ``out.collect``).

    ``flat_map(value)`` returns (or yields) the records; a ``flat_map(value, out)`` with
    two parameters emits them with ``out.collect(record)`` instead.
    """

    def flat_map(self, value: object) -> Iterable[object]:
        """The records ``value`` becomes."""
        raise NotImplementedError


class FilterFunction(Function):
    """Keeps the records for which ``filter`` is true."""

    def filter(self, value: object) -> bool:
        """Whether to keep ``value``."""
        raise NotImplementedError


class ReduceFunction(Function):
    """Combines two records of one key into one (the running aggregate and the new one)."""

    def reduce(self, value1: object, value2: object) -> object:
        """The new aggregate of ``value1`` (so far) and ``value2`` (the new record)."""
        raise NotImplementedError


class KeySelector(Function):
    """Extracts the key of a record."""

    def get_key(self, value: object) -> object:
        """The key of ``value``."""
        raise NotImplementedError


class Partitioner(Function):
    """Chooses the partition of a key (``partition_custom``)."""

    def partition(self, key: object, num_partitions: int) -> int:
        """A partition in ``range(num_partitions)``."""
        raise NotImplementedError


class SinkFunction(Function):
    """Receives every record that reaches the sink."""

    def invoke(self, value: object) -> None:
        """Handles one record."""
        raise NotImplementedError


class ProcessContext:
    """What ``KeyedProcessFunction.process_element`` knows about the current record."""

    __slots__ = ("current_key", "runtime_context")

    def __init__(self, runtime_context: RuntimeContext) -> None:
        self.runtime_context = runtime_context
        self.current_key: object = None

    def get_current_key(self) -> object:
        """The key of the record being processed."""
        return self.current_key


class KeyedProcessFunction(Function):
    """Processes each record of a keyed stream with access to its key.

    ``process_element`` emits with ``out.collect(record)``; it may also return (or
    yield) an iterable of records, as PyFlink's does. Declared PyFlink's way, as
    ``process_element(self, value, ctx)``, it is called without ``out``.
    """

    def process_element(
        self, value: object, ctx: ProcessContext, out: Collector[object]
    ) -> Iterable[object] | None:
        """Handles one record of the current key."""
        raise NotImplementedError


_PLAIN_CALLABLES = (
    types.FunctionType,
    types.BuiltinFunctionType,
    types.MethodType,
    types.BuiltinMethodType,
    functools.partial,
    type,
)


def _is_function_object(fn: object) -> bool:
    """An object of a user class, rather than a plain function, method or type."""
    return isinstance(fn, Function) or not isinstance(fn, _PLAIN_CALLABLES)


def open_function(fn: object, runtime_context: RuntimeContext) -> None:
    """Calls ``fn.open(runtime_context)`` if ``fn`` is a function object that has one."""
    if _is_function_object(fn):
        opener = getattr(fn, "open", None)
        if callable(opener):
            opener(runtime_context)


def close_function(fn: object) -> None:
    """Calls ``fn.close()`` if ``fn`` is a function object that has one."""
    if _is_function_object(fn):
        closer = getattr(fn, "close", None)
        if callable(closer):
            closer()


def open_functions(
    functions: Iterable[object], runtime_context: RuntimeContext, opened: list[object]
) -> None:
    """Opens each of ``functions`` not in ``opened`` yet (by identity), adding it there.

    Each is added before it is opened, so that ``opened`` holds those to close even if
    one fails: a function whose ``open`` raised is closed too, as in Flink, since it
    may have taken resources first. An object given twice (say, as reducer and key
    selector) is opened once.
    """
    for fn in functions:
        if all(fn is not seen for seen in opened):
            opened.append(fn)
            open_function(fn, runtime_context)


def close_functions(functions: Iterable[object]) -> None:
    """Closes each of ``functions`` in turn, the rest even if one fails.

    Raises:
        Exception: The first error a ``close`` raised; later ones are logged.
    """
    close_all((repr(fn), functools.partial(close_function, fn)) for fn in functions)


def close_all(closers: Iterable[tuple[str, Callable[[], None]]], suppress: bool = False) -> None:
    """Calls every ``(what, close)`` in turn, the rest even if one fails.

    Args:
        closers: What is closed (for the log) and how.
        suppress: Log every error instead of raising the first.

    Raises:
        Exception: The first error a ``close`` raised, unless ``suppress``; later ones
            are logged.
    """
    first: Exception | None = None
    for what, close in closers:
        try:
            close()
        except Exception as exc:
            if suppress:
                log.warning("error while closing %s", what, exc_info=True)
            elif first is None:
                first = exc
            else:
                log.warning("further error while closing %s", what, exc_info=True)
    if first is not None:
        raise first


def _adapt(fn: object, method: str, kind: str) -> Callable[..., object]:
    if not isinstance(fn, type):
        bound = getattr(fn, method, None)
        if callable(bound):
            return bound  # type: ignore[no-any-return]
    if callable(fn):
        return fn
    msg = f"a {kind} function must be callable or have {method}(...), got {fn!r}"
    raise TypeError(msg)


def check_called_on_all(called: int, total: int, *functions: object) -> None:
    """Fails a bulk call that a user function ended early with StopIteration.

    ``map`` and ``filter`` end quietly when the function they call raises
    StopIteration, which would silently drop the rest of the batch. Callers compare how
    many calls were made with how many records there were; as PEP 479 does for
    generators, a StopIteration that escapes a function becomes a RuntimeError.

    Raises:
        RuntimeError: ``called`` is not ``total``.
    """
    if called != total:
        names = " or ".join(_describe(fn) for fn in functions)
        msg = (
            f"{names} raised StopIteration on record {called + 1} of a batch of {total}; "
            "a user function must not let StopIteration escape (PEP 479), or records "
            "would be lost"
        )
        raise RuntimeError(msg)


def _describe(fn: object) -> str:
    owner = getattr(fn, "__self__", None)
    target = fn if owner is None else owner
    name = getattr(target, "__qualname__", None) or type(target).__qualname__
    return f"the user function {name}"


def as_map(fn: object) -> Callable[[object], object]:
    """``fn.map`` for a MapFunction-like object, else ``fn`` itself.

    Raises:
        TypeError: ``fn`` is neither callable nor has ``map``.
    """
    return _adapt(fn, "map", "map")


def as_flat_map(fn: object) -> tuple[Callable[..., object], bool]:
    """The flat-map callable, and whether it takes a collector as second argument.

    Raises:
        TypeError: ``fn`` is neither callable nor has ``flat_map``.
    """
    call = _adapt(fn, "flat_map", "flat_map")
    return call, _takes_collector(call, 2)


def as_process(fn: object) -> tuple[Callable[..., object], bool]:
    """``fn.process_element`` (or ``fn``), and whether it takes a collector third.

    PyFlink's ``process_element(value, ctx)`` yields its records, and is called so when
    its signature says it takes exactly two arguments; any other (``out`` as well,
    ``*args``, or a signature that cannot be read) gets a collector third.

    Raises:
        TypeError: ``fn`` has no ``process_element`` and is not callable.
    """
    call = _adapt(fn, "process_element", "process")
    return call, not _takes_exactly(call, 2)


def as_filter(fn: object) -> Callable[[object], object]:
    """``fn.filter`` for a FilterFunction-like object, else ``fn`` itself.

    Raises:
        TypeError: ``fn`` is neither callable nor has ``filter``.
    """
    return _adapt(fn, "filter", "filter")


def as_reduce(fn: object) -> Callable[[object, object], object]:
    """``fn.reduce`` for a ReduceFunction-like object, else ``fn`` itself.

    Raises:
        TypeError: ``fn`` is neither callable nor has ``reduce``.
    """
    return _adapt(fn, "reduce", "reduce")


def as_key_selector(fn: object) -> Callable[[object], object]:
    """``fn.get_key`` for a KeySelector-like object, else ``fn`` itself.

    Raises:
        TypeError: ``fn`` is neither callable nor has ``get_key``.
    """
    return _adapt(fn, "get_key", "key selector")


def as_partitioner(fn: object) -> Callable[[object, int], int]:
    """``fn.partition`` for a Partitioner-like object, else ``fn`` itself.

    Raises:
        TypeError: ``fn`` is neither callable nor has ``partition``.
    """
    return cast("Callable[[object, int], int]", _adapt(fn, "partition", "partitioner"))


def as_sink(fn: object) -> Callable[[object], object]:
    """``fn.invoke`` for a SinkFunction-like object, else ``fn`` itself.

    Raises:
        TypeError: ``fn`` is neither callable nor has ``invoke``.
    """
    return _adapt(fn, "invoke", "sink")


_POSITIONAL: Final = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)


def _parameters(call: Callable[..., object]) -> list[inspect.Parameter] | None:
    """``call``'s parameters, or None if it shows no signature."""
    try:
        return list(inspect.signature(call).parameters.values())
    except (TypeError, ValueError):
        return None


def _takes_exactly(call: Callable[..., object], arity: int) -> bool:
    """Whether ``call``'s signature shows it takes exactly ``arity`` positional arguments."""
    parameters = _parameters(call)
    if parameters is None or any(p.kind is p.VAR_POSITIONAL for p in parameters):
        return False
    return sum(1 for p in parameters if p.kind in _POSITIONAL) == arity


def _takes_collector(call: Callable[..., object], arity: int) -> bool:
    """Whether ``call`` accepts ``arity`` positional arguments (the last a collector)."""
    parameters = _parameters(call) or []
    required = [p for p in parameters if p.kind in _POSITIONAL and p.default is p.empty]
    return len(required) >= arity
