"""The operators of the DataStream API and the picklable factories that build them.

Every operator works on lists: ``process_batch`` gets all the records one buffer held
and emits its results with one ``collect_batch`` call, so the per-record cost is the
user function and a list operation (DESIGN §7). A result is taken as it is when the
function returns it (``snapshot``: a type test for values, a copy for mutable objects),
so the batch holds what one-by-one emission would have sent. User functions are
resolved once per subtask into plain callables (``penstock.functions.as_*``); a
function object's ``open(runtime_context)`` runs in ``open()`` and its ``close()`` in
``close()``, once each per subtask.

Factories are frozen dataclasses: the client pickles them (with cloudpickle, user
functions inside) into the job graph, and each subtask calls ``create()``.
"""

from __future__ import annotations

import copy
import itertools
import math
import numbers
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from operator import itemgetter
from typing import Final, cast

from penstock.config import OBJECT_REUSE, Configuration
from penstock.errors import IllegalStateError
from penstock.functions import (
    ProcessContext,
    as_filter,
    as_flat_map,
    as_key_selector,
    as_map,
    as_process,
    as_reduce,
    as_sink,
    check_called_on_all,
    close_functions,
    open_functions,
)
from penstock.task.operator import (
    IMMUTABLE_TYPES,
    Collector,
    Output,
    RuntimeContext,
    SourceOperator,
    StreamOperator,
    snapshot,
)
from penstock.task.step_size import STEP_BUDGET_FLUSH_ALWAYS_S, StepSize

__all__ = [
    "AbstractStreamOperator",
    "CollectSinkFactory",
    "CollectSinkOperator",
    "CollectionSourceFactory",
    "CollectionSourceOperator",
    "FilterFactory",
    "FilterOperator",
    "FlatMapFactory",
    "FlatMapOperator",
    "MapFactory",
    "MapOperator",
    "PrintSinkFactory",
    "PrintSinkOperator",
    "ProcessFactory",
    "ProcessOperator",
    "ReduceFactory",
    "ReduceOperator",
    "SequenceSourceFactory",
    "SequenceSourceOperator",
    "SinkFactory",
    "SinkOperator",
    "SumFactory",
    "SumOperator",
    "sequence_split",
]

_MISSING: Final = object()


def _as_is(record: object) -> object:
    return record


_first: Final = itemgetter(0)
_PLAIN_KEYS: Final = frozenset({str, int, bytes, type(None)})
"""Key types that no key of another type equals: keyed state takes them as they are."""

_NAN_KEY: Final = (float, "NaN")
"""Every NaN key, as one key (Flink compares keys by their bytes; NaN != NaN in a dict)."""


def _state_key(key: object) -> object:
    """``key`` as keyed state tells keys apart: by type, as routing does.

    Routing hashes 1, True and 1.0 as Flink hashes a Long, a Boolean and a Double, so
    they may go to different subtasks; a plain dict would merge them wherever they meet,
    and the result would depend on the parallelism. Here they stay apart everywhere.
    Byte strings of any kind are one key, as routing hashes their bytes (a bytearray
    could not be a dict key at all).
    """
    kind = type(key)
    if kind in _PLAIN_KEYS:
        return key
    if isinstance(key, float) and math.isnan(key):
        return _NAN_KEY  # NaN equals no NaN, but routing sends them all to one subtask
    if kind is bool or kind is float:
        return (kind, key)
    if isinstance(key, bytearray | memoryview):
        return bytes(key)
    if isinstance(key, tuple):  # a namedtuple too: routing hashes it as a tuple
        return tuple(map(_state_key, cast("tuple[object, ...]", key)))
    return key


UserFunction = object
"""A plain callable or an object of the matching ``penstock.functions`` class."""


_MAX_OUTPUT_CHUNK: Final = 1024
"""The most records a flat_map or process function's results are held back for."""


class _ChunkingCollector(Collector[object]):
    """Sends what a function produces downstream while it produces, a chunk at a time.

    One record can produce any number of records over any time: a generator over a
    file, or one that never ends. Held in one list until the function returns, they
    would take memory without bound and wait for as long as it runs, where Flink emits
    each at once. Here they leave in chunks sized as input steps are (``StepSize``):
    one record first, then twice as many while a chunk takes well under a millisecond
    to produce, up to ``_MAX_OUTPUT_CHUNK``. A cheap function still emits large batches;
    a slow one emits each record as it comes.

    Records reach it by ``collect`` (a function that takes a collector), or by
    ``collect_all`` from a lazy iterable (a function that returns or yields them).
    Between ``start`` and ``flush`` only the time spent producing counts, not the time
    downstream operators take with the chunks.
    """

    __slots__ = ("_emit", "_pending", "_started", "_step")

    def __init__(
        self, emit: Callable[[list[object]], None], take: Callable[[object], object]
    ) -> None:
        super().__init__([], take)
        self._pending: list[object] = []
        self._emit = emit
        self._step = StepSize(_MAX_OUTPUT_CHUNK, STEP_BUDGET_FLUSH_ALWAYS_S)
        self._started = 0.0

    def start(self) -> None:
        """A step begins: produced records are timed from now."""
        self._started = time.perf_counter()

    def collect(self, record: object) -> None:
        pending = self._pending
        pending.append(record if type(record) in IMMUTABLE_TYPES else self._take(record))
        if len(pending) >= self._step.size:
            self.flush()

    def collect_all(self, values: Iterable[object]) -> None:
        """Takes ``values`` as they are produced, emitting each chunk when it is full."""
        self.flush()
        iterator = iter(values)
        take = self._take
        immutable = IMMUTABLE_TYPES
        step = self._step
        while True:
            size = step.size
            started = time.perf_counter()
            chunk = [
                v if type(v) in immutable else take(v) for v in itertools.islice(iterator, size)
            ]
            if chunk:
                step.update(len(chunk), time.perf_counter() - started)
                self._emit(chunk)
            if len(chunk) < size:
                break
        self._started = time.perf_counter()

    def flush(self) -> None:
        """Emits the records collected since the last chunk."""
        pending = self._pending
        if pending:
            self._step.update(len(pending), time.perf_counter() - self._started)
            self._pending = []
            self._emit(pending)
        self._started = time.perf_counter()


class _DiscardingOutput:
    """The output of an operator before ``setup``: refuses records."""

    def collect(self, record: object) -> None:
        msg = "the operator emitted a record before setup()"
        raise IllegalStateError(msg)

    def collect_batch(self, records: Sequence[object]) -> None:
        self.collect(records)


class AbstractStreamOperator:
    """Base of the operators: keeps the output and context, opens and closes the functions.

    Args:
        function: The user function object (or callable) whose ``open``/``close`` run
            once per subtask; None for operators without one.
        key_selector: A keyed operator's key selector, opened and closed likewise.
    """

    def __init__(self, function: object = None, key_selector: object = None) -> None:
        self.function = function
        self.output: Output[object] = _DiscardingOutput()
        self.context: RuntimeContext | None = None
        # How a returned record is taken: copied if mutable, unless the job allows
        # object reuse (``pipeline.object-reuse``), read in ``setup``.
        self.take: Callable[[object], object] = snapshot
        self.object_reuse = False
        self._functions = tuple(fn for fn in (function, key_selector) if fn is not None)
        self._opened_functions: list[object] = []
        self._opened = False
        self._closed = False

    def setup(self, output: Output[object], context: RuntimeContext) -> None:
        """Receives where to emit and what the subtask is."""
        self.output = output
        self.context = context
        self.object_reuse = Configuration(context.config).get(OBJECT_REUSE)
        self.take = _as_is if self.object_reuse else snapshot

    def open(self) -> None:
        """Opens the user functions (once)."""
        if self._opened:
            return
        self._opened = True
        open_functions(self._functions, self._runtime_context(), self._opened_functions)

    def process_batch(self, records: list[object]) -> None:
        """Processes the records of one buffer."""
        raise NotImplementedError

    def end_input(self) -> None:
        """The input is exhausted; nothing is buffered by these operators."""

    def close(self) -> None:
        """Closes the user functions that were opened (once), each even if one fails.

        Raises:
            Exception: The first error a function's ``close`` raised.
        """
        if self._closed:
            return
        self._closed = True
        opened = self._opened_functions
        self._opened_functions = []
        close_functions(reversed(opened))

    def _taken(self, values: Iterable[object]) -> list[object]:
        """``values`` as emitted, each taken (``take``) as the function returns it."""
        if self.object_reuse:
            return list(values)
        immutable = IMMUTABLE_TYPES
        return [value if type(value) in immutable else snapshot(value) for value in values]

    def _runtime_context(self) -> RuntimeContext:
        if self.context is None:
            msg = f"{type(self).__name__} was opened before setup()"
            raise IllegalStateError(msg)
        return self.context


# -- one-input operators ---------------------------------------------------------------


class MapOperator(AbstractStreamOperator):
    """``map``: one record out per record in."""

    def __init__(self, fn: UserFunction) -> None:
        super().__init__(fn)
        self._map = as_map(fn)

    def process_batch(self, records: list[object]) -> None:
        results = self._taken(map(self._map, records))
        check_called_on_all(len(results), len(records), self._map)
        self.output.collect_batch(results)


class _ProducingOperator(AbstractStreamOperator):
    """An operator whose function produces any number of records per record."""

    def __init__(self, function: object = None, key_selector: object = None) -> None:
        super().__init__(function, key_selector)
        self._out = _ChunkingCollector(self.output.collect_batch, self.take)

    def setup(self, output: Output[object], context: RuntimeContext) -> None:
        super().setup(output, context)
        self._out = _ChunkingCollector(output.collect_batch, self.take)


class FlatMapOperator(_ProducingOperator):
    """``flat_map``: any number of records out per record in."""

    def __init__(self, fn: UserFunction) -> None:
        super().__init__(fn)
        self._flat_map, self._with_collector = as_flat_map(fn)

    def process_batch(self, records: list[object]) -> None:
        flat_map = self._flat_map
        out = self._out
        if self._with_collector:
            out.start()
            for record in records:
                flat_map(record, out)
            out.flush()
        else:
            # Counts the calls in C: the count stops short if the function raised
            # StopIteration, which ends the map early.
            calls = itertools.count()
            values: Iterable[object] = itertools.chain.from_iterable(
                map(_first, zip(map(flat_map, records), calls, strict=False))
            )
            # Consumed lazily: each value is taken before the function runs on.
            out.collect_all(values)
            check_called_on_all(next(calls), len(records), flat_map)


class FilterOperator(AbstractStreamOperator):
    """``filter``: keeps the records the predicate accepts."""

    def __init__(self, fn: UserFunction) -> None:
        super().__init__(fn)
        self._filter = as_filter(fn)

    def process_batch(self, records: list[object]) -> None:
        keep = list(map(self._filter, records))
        check_called_on_all(len(keep), len(records), self._filter)
        kept = list(itertools.compress(records, keep))
        if kept:
            self.output.collect_batch(kept)


class ReduceOperator(AbstractStreamOperator):
    """Keyed running ``reduce``: emits the new aggregate of the key for every record.

    As in PyFlink, a key without an aggregate, or whose aggregate is None (the function
    returned None), starts again from its next record.
    """

    def __init__(self, fn: UserFunction, key_selector: UserFunction) -> None:
        super().__init__(fn, key_selector)
        self._reduce = as_reduce(fn)
        self.key_selector = key_selector
        self._get_key = as_key_selector(key_selector)
        self.state: dict[object, object] = {}

    def process_batch(self, records: list[object]) -> None:
        state = self.state
        get = state.get
        get_key = self._get_key
        reduce = self._reduce
        immutable = IMMUTABLE_TYPES
        take = self.take
        plain = _PLAIN_KEYS
        results: list[object] = []
        append = results.append
        for record in records:
            key = get_key(record)
            if type(key) not in plain:
                key = _state_key(key)
            current = get(key)
            value = record if current is None else reduce(current, record)
            state[key] = value
            append(value if type(value) in immutable else take(value))
        self.output.collect_batch(results)


def _is_scalar_sum(record: object, position: int | str | None) -> bool:
    """Whether ``record`` itself is summed rather than one of its fields.

    That is so with no position, and for PyFlink's default position 0 on a plain number
    (``key_by(...).sum()`` over a stream of numbers: ints and floats, numpy's scalars,
    ``Decimal``, ``Fraction``).
    """
    return position is None or (position == 0 and isinstance(record, numbers.Number))


def _summed(record: object, position: int | str | None, total: object) -> object:
    """``record`` with the summed field replaced by ``total`` (its other fields kept)."""
    if position is None or _is_scalar_sum(record, position):
        return total
    if isinstance(record, dict):
        updated = dict(record)
        updated[position] = total
        return updated
    if isinstance(position, int):
        if isinstance(record, tuple):
            if hasattr(record, "_replace"):  # a named tuple keeps its type
                field_name = record._fields[position]  # type: ignore[attr-defined]
                return record._replace(**{field_name: total})
            index = range(len(record))[position]  # a negative position counts from the end
            return (*record[:index], total, *record[index + 1 :])
        if isinstance(record, list):
            updated_list = list(record)
            updated_list[position] = total
            return updated_list
    if isinstance(record, tuple) and hasattr(record, "_replace"):
        return record._replace(**{str(position): total})
    updated_object = copy.copy(record)
    setattr(updated_object, str(position), total)
    return updated_object


def _field(record: object, position: int | str | None) -> object:
    if position is None or _is_scalar_sum(record, position):
        return record
    if isinstance(position, int) or isinstance(record, dict):
        return record[position]  # type: ignore[index]
    return getattr(record, position)


class SumOperator(AbstractStreamOperator):
    """Keyed running ``sum`` of one field.

    Emits, per record, the first record of its key with the field replaced by the sum
    so far, as Flink's SumAggregator does.

    Args:
        position: Tuple/list index, dict key or attribute name; None sums scalar records.
        key_selector: The key of a record.
    """

    def __init__(self, position: int | str | None, key_selector: UserFunction) -> None:
        super().__init__(None, key_selector)
        self.position = position
        self.key_selector = key_selector
        self._get_key = as_key_selector(key_selector)
        self.state: dict[object, object] = {}

    def process_batch(self, records: list[object]) -> None:
        state = self.state
        get_key = self._get_key
        position = self.position
        immutable = IMMUTABLE_TYPES
        take = self.take
        plain = _PLAIN_KEYS
        results: list[object] = []
        append = results.append
        for record in records:
            key = get_key(record)
            if type(key) not in plain:
                key = _state_key(key)
            current = state.get(key, _MISSING)
            if current is _MISSING:
                value = record
            else:
                total = _field(current, position) + _field(record, position)  # type: ignore[operator]
                value = _summed(current, position, total)
            state[key] = value
            append(value if type(value) in immutable else take(value))
        self.output.collect_batch(results)


class ProcessOperator(_ProducingOperator):
    """Keyed ``process``: ``process_element(value, ctx[, out])`` per record."""

    def __init__(self, fn: UserFunction, key_selector: UserFunction) -> None:
        super().__init__(fn, key_selector)
        process, self._takes_out = as_process(fn)
        self._process = cast("Callable[..., Iterable[object] | None]", process)
        self._get_key = as_key_selector(key_selector)
        self._ctx: ProcessContext | None = None

    def open(self) -> None:
        super().open()
        self._ctx = ProcessContext(self._runtime_context())

    def process_batch(self, records: list[object]) -> None:
        ctx = self._ctx
        if ctx is None:
            msg = "ProcessOperator received records before open()"
            raise IllegalStateError(msg)
        out = self._out
        get_key = self._get_key
        process = self._process
        takes_out = self._takes_out
        out.start()
        for record in records:
            ctx.current_key = get_key(record)
            returned = process(record, ctx, out) if takes_out else process(record, ctx)
            if returned is not None:
                for value in returned:
                    out.collect(value)
        out.flush()


# -- sinks ------------------------------------------------------------------------------


class SinkOperator(AbstractStreamOperator):
    """``add_sink``: calls the sink function once per record."""

    def __init__(self, fn: UserFunction) -> None:
        super().__init__(fn)
        self._invoke = as_sink(fn)

    def process_batch(self, records: list[object]) -> None:
        invoke = self._invoke
        for record in records:
            invoke(record)


class PrintSinkOperator(AbstractStreamOperator):
    """``print``: one line per record, prefixed as Flink's PrintSinkFunction does.

    The prefix is the sink identifier, then ":" and the subtask number (from 1) when
    the sink is parallel, then "> ": "1> ", "id> ", "id:2> ", or nothing at all.
    """

    def __init__(self, sink_identifier: str | None = None) -> None:
        super().__init__(None)
        self.sink_identifier = sink_identifier or ""
        self._prefix = ""

    def open(self) -> None:
        super().open()
        context = self._runtime_context()
        prefix = self.sink_identifier
        if context.parallelism > 1:
            prefix = (
                f"{prefix}:{context.subtask_index + 1}"
                if prefix
                else str(context.subtask_index + 1)
            )
        self._prefix = f"{prefix}> " if prefix else ""

    def process_batch(self, records: list[object]) -> None:
        prefix = self._prefix
        stream = sys.stdout
        stream.write("".join(f"{prefix}{record}\n" for record in records))
        stream.flush()


class CollectSinkOperator(AbstractStreamOperator):
    """``execute_and_collect``: hands each batch to the runtime's results sink."""

    def __init__(self) -> None:
        super().__init__(None)
        self._sink: Callable[[list[object]], None] | None = None

    def open(self) -> None:
        super().open()
        sink = self._runtime_context().results_sink
        if sink is None:
            msg = "a collect sink runs only in a job executed with execute_and_collect"
            raise IllegalStateError(msg)
        self._sink = sink

    def process_batch(self, records: list[object]) -> None:
        sink = self._sink
        if sink is None:
            msg = "CollectSinkOperator received records before open()"
            raise IllegalStateError(msg)
        if records:
            sink(list(records))


# -- sources ----------------------------------------------------------------------------


class _AbstractSource:
    """Base of the sources: emits a slice of its records per ``emit_next_batch``."""

    def __init__(self) -> None:
        self.output: Output[object] = _DiscardingOutput()
        self.context: RuntimeContext | None = None

    def setup(self, output: Output[object], context: RuntimeContext) -> None:
        """Receives where to emit and what the subtask is."""
        self.output = output
        self.context = context

    def close(self) -> None:
        """Nothing to release."""


class CollectionSourceOperator(_AbstractSource):
    """``from_collection``: the records in order, from subtask 0 only (non-parallel)."""

    def __init__(self, records: Sequence[object]) -> None:
        super().__init__()
        self.records = records
        self._position = 0
        self._end = 0

    def open(self) -> None:
        """Subtask 0 emits everything; any other subtask has nothing."""
        context = self.context
        self._end = len(self.records) if context is None or context.subtask_index == 0 else 0

    def emit_next_batch(self, max_records: int) -> bool:
        start = self._position
        end = min(self._end, start + max_records)
        if end > start:
            self.output.collect_batch(list(self.records[start:end]))
        self._position = end
        return end < self._end


def sequence_split(start: int, end: int, parallelism: int, index: int) -> range:
    """The contiguous slice of ``start..end`` (inclusive) that subtask ``index`` emits.

    The range is cut into ``parallelism`` parts whose sizes differ by at most one, as
    Flink's NumberSequenceSource splits it.
    """
    total = end - start + 1
    if total <= 0:
        return range(0)
    return range(start + total * index // parallelism, start + total * (index + 1) // parallelism)


class SequenceSourceOperator(_AbstractSource):
    """``from_sequence``: this subtask's contiguous slice of an inclusive range."""

    def __init__(self, start: int, end: int) -> None:
        super().__init__()
        self.start = start
        self.end = end
        self._next = 0
        self._stop = 0

    def open(self) -> None:
        """Takes this subtask's slice."""
        context = self.context
        parallelism = 1 if context is None else context.parallelism
        index = 0 if context is None else context.subtask_index
        split = sequence_split(self.start, self.end, parallelism, index)
        self._next, self._stop = split.start, split.stop

    def emit_next_batch(self, max_records: int) -> bool:
        start = self._next
        stop = min(self._stop, start + max_records)
        if stop > start:
            self.output.collect_batch(list(range(start, stop)))
        self._next = stop
        return stop < self._stop


# -- factories --------------------------------------------------------------------------


class _OperatorFactory:
    """Base of the factories of operators that read input (``is_source`` False)."""

    __slots__ = ()

    @property
    def is_source(self) -> bool:
        return False


class _SourceFactory:
    """Base of the factories of source operators (``is_source`` True)."""

    __slots__ = ()

    @property
    def is_source(self) -> bool:
        return True


@dataclass(frozen=True, slots=True)
class CollectionSourceFactory(_SourceFactory):
    """Builds a ``CollectionSourceOperator`` ("Source: Collection Source")."""

    records: Sequence[object]

    def create(self) -> SourceOperator[object]:
        return CollectionSourceOperator(self.records)


@dataclass(frozen=True, slots=True)
class SequenceSourceFactory(_SourceFactory):
    """Builds a ``SequenceSourceOperator`` ("Source: Sequence Source")."""

    start: int
    end: int

    def create(self) -> SourceOperator[object]:
        return SequenceSourceOperator(self.start, self.end)


@dataclass(frozen=True, slots=True)
class MapFactory(_OperatorFactory):
    """Builds a ``MapOperator``."""

    fn: UserFunction

    def create(self) -> StreamOperator[object, object]:
        return MapOperator(self.fn)


@dataclass(frozen=True, slots=True)
class FlatMapFactory(_OperatorFactory):
    """Builds a ``FlatMapOperator``."""

    fn: UserFunction

    def create(self) -> StreamOperator[object, object]:
        return FlatMapOperator(self.fn)


@dataclass(frozen=True, slots=True)
class FilterFactory(_OperatorFactory):
    """Builds a ``FilterOperator``."""

    fn: UserFunction

    def create(self) -> StreamOperator[object, object]:
        return FilterOperator(self.fn)


@dataclass(frozen=True, slots=True)
class ReduceFactory(_OperatorFactory):
    """Builds a keyed ``ReduceOperator``."""

    fn: UserFunction
    key_selector: UserFunction

    def create(self) -> StreamOperator[object, object]:
        return ReduceOperator(self.fn, self.key_selector)


@dataclass(frozen=True, slots=True)
class SumFactory(_OperatorFactory):
    """Builds a keyed ``SumOperator`` over a tuple position, dict key or scalar (None)."""

    position: int | str | None
    key_selector: UserFunction

    def create(self) -> StreamOperator[object, object]:
        return SumOperator(self.position, self.key_selector)


@dataclass(frozen=True, slots=True)
class ProcessFactory(_OperatorFactory):
    """Builds a keyed ``ProcessOperator`` (KeyedProcessFunction)."""

    fn: UserFunction
    key_selector: UserFunction

    def create(self) -> StreamOperator[object, object]:
        return ProcessOperator(self.fn, self.key_selector)


@dataclass(frozen=True, slots=True)
class SinkFactory(_OperatorFactory):
    """Builds a ``SinkOperator`` (``SinkFunction.invoke`` or a callable per record)."""

    fn: UserFunction

    def create(self) -> StreamOperator[object, object]:
        return SinkOperator(self.fn)


@dataclass(frozen=True, slots=True)
class PrintSinkFactory(_OperatorFactory):
    """Builds a ``PrintSinkOperator``."""

    sink_identifier: str | None = None

    def create(self) -> StreamOperator[object, object]:
        return PrintSinkOperator(self.sink_identifier)


@dataclass(frozen=True, slots=True)
class CollectSinkFactory(_OperatorFactory):
    """Builds a ``CollectSinkOperator`` (records go to ``RuntimeContext.results_sink``)."""

    def create(self) -> StreamOperator[object, object]:
        return CollectSinkOperator()
