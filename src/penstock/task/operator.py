"""The contract between operators and the task that runs them.

An operator processes records in **batches**: the task hands it every record a buffer
held (``process_batch``) and the operator emits through its ``Output`` in batches too,
so the per-record cost is the user function and little else (DESIGN §7). Operators of
one chain call each other directly through ``ChainingOutput``-style outputs; the chain's
tail writes into the network through record writers.

Everything that crosses from the client to a TaskManager is an ``OperatorFactory``:
a small picklable object (user functions inside are pickled with cloudpickle) that
builds a fresh operator for each subtask.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Final, Generic, Protocol, TypeVar

from penstock.errors import SerializationError

__all__ = [
    "IMMUTABLE_TYPES",
    "OperatorFactory",
    "Output",
    "RuntimeContext",
    "SourceOperator",
    "StreamOperator",
    "snapshot",
]

IN = TypeVar("IN")
OUT = TypeVar("OUT")
OUT_co = TypeVar("OUT_co", covariant=True)
T_contra = TypeVar("T_contra", contravariant=True)


class Output(Protocol[T_contra]):
    """Where an operator emits: the next chained operator, or the network."""

    def collect(self, record: T_contra) -> None:
        """Emits one record."""
        ...

    def collect_batch(self, records: Sequence[T_contra]) -> None:
        """Emits many records, in order; cheaper than ``collect`` per record."""
        ...


@dataclass(slots=True)
class RuntimeContext:
    """What a running operator knows about its subtask (Flink's RuntimeContext).

    Attributes:
        task_name: Flink-style name, e.g. "Source: Sequence Source -> Map (1/2)".
        operator_name: This operator's name within the chain, e.g. "Map".
        subtask_index: 0-based index of this parallel instance.
        parallelism: Number of parallel instances of the vertex.
        max_parallelism: Number of key groups (for keyed state).
        attempt: Execution attempt number.
        job_id: Hex string of the job id.
        results_sink: Set by the runtime for ``execute_and_collect``: sends a batch of
            records back to the client and blocks while the client is behind
            (backpressure); None when the job has no collect sink.
        config: The job's configuration as flat ``key -> str`` pairs.
    """

    task_name: str
    operator_name: str
    subtask_index: int
    parallelism: int
    max_parallelism: int = 128
    attempt: int = 0
    job_id: str = ""
    results_sink: Callable[[list[object]], None] | None = None
    config: Mapping[str, str] = field(default_factory=dict)

    def get_index_of_this_subtask(self) -> int:
        """PyFlink's name for ``subtask_index``."""
        return self.subtask_index

    def get_number_of_parallel_subtasks(self) -> int:
        """PyFlink's name for ``parallelism``."""
        return self.parallelism

    def get_max_number_of_parallel_subtasks(self) -> int:
        """PyFlink's name for ``max_parallelism``."""
        return self.max_parallelism

    def get_attempt_number(self) -> int:
        """PyFlink's name for ``attempt``."""
        return self.attempt

    def get_task_name(self) -> str:
        """The task's name without its subtask, e.g. "Source: Sequence Source -> Map"."""
        suffix = f" ({self.subtask_index + 1}/{self.parallelism})"
        name = self.task_name
        return name[: -len(suffix)] if name.endswith(suffix) else name

    def get_task_name_with_subtasks(self) -> str:
        """The name with the subtask and attempt, as Flink gives it: "Map (2/4)#0"."""
        subtask = f"{self.subtask_index + 1}/{self.parallelism}"
        return f"{self.get_task_name()} ({subtask})#{self.attempt}"


class StreamOperator(Protocol[IN, OUT_co]):
    """A running operator of one subtask.

    Lifecycle: ``setup`` (once, with its output and context), ``open``, any number of
    ``process_batch`` calls, ``end_input`` (the input is exhausted: emit what remains),
    ``close``. ``close`` is also called after a failure, so it must not assume
    ``end_input`` ran.
    """

    def setup(self, output: Output[OUT_co], context: RuntimeContext) -> None: ...

    def open(self) -> None: ...

    def process_batch(self, records: list[IN]) -> None: ...

    def end_input(self) -> None: ...

    def close(self) -> None: ...


class SourceOperator(Protocol[OUT_co]):
    """The head of a source task: produces batches until exhausted.

    ``emit_next_batch`` emits up to ``max_records`` records through the output given in
    ``setup`` and returns False once the source is exhausted (it may emit a last batch in
    the same call). The task calls it only while its output is available, which is
    how backpressure reaches a source.
    """

    def setup(self, output: Output[OUT_co], context: RuntimeContext) -> None: ...

    def open(self) -> None: ...

    def emit_next_batch(self, max_records: int) -> bool: ...

    def close(self) -> None: ...


class OperatorFactory(Protocol):
    """Builds the operator of one subtask; pickled from the client to TaskManagers."""

    @property
    def is_source(self) -> bool: ...

    def create(self) -> StreamOperator[object, object] | SourceOperator[object]: ...


IMMUTABLE_TYPES: Final = frozenset({type(None), bool, int, float, complex, str, bytes})
"""Records of these exact types are values: emitting one never needs a copy."""


def snapshot(record: OUT) -> OUT:
    """``record`` as it is now, safe from later changes to the object.

    Flink copies a record when it is emitted (object reuse is off by default) and
    PyFlink serializes it, so a function may change and return the same object again
    (a reused accumulator, a reused output list) without changing what it emitted
    before, and a chained operator may change its input without changing the state of
    the operator that emitted it. Operators emit lists of records, so they take the
    copy here, when the function returns the record. Values of ``IMMUTABLE_TYPES`` and
    tuples of them are returned as they are; anything else is deep-copied.

    Raises:
        SerializationError: The record cannot be copied (it holds a lock, a socket...),
            as it could not be serialized either.
    """
    kind = type(record)
    if kind in IMMUTABLE_TYPES:
        return record
    if kind is tuple or issubclass(kind, tuple):
        for item in record:  # type: ignore[attr-defined]
            if type(item) not in IMMUTABLE_TYPES:
                break
        else:
            return record
    try:
        return copy.deepcopy(record)
    except Exception as exc:
        msg = f"a {type(record).__qualname__} record cannot be copied when emitted: {exc}"
        raise SerializationError(msg) from exc


class Collector(Generic[OUT]):
    """PyFlink's Collector for flat_map/process functions that emit with ``out.collect``.

    Each record is taken as it is when collected (``take``: ``snapshot`` by default).
    """

    __slots__ = ("_append", "_take")

    def __init__(self, buffer: list[OUT], take: Callable[[OUT], OUT] = snapshot) -> None:
        self._append = buffer.append
        self._take = take

    def collect(self, record: OUT) -> None:
        self._append(record if type(record) in IMMUTABLE_TYPES else self._take(record))
