"""OperatorChain: the operators of one task, linked head to tail in one thread.

Records move between chained operators by a direct call (``ChainingOutput``: the next
operator's ``process_batch``), with no serialization and no copy. The tail of the
chain writes to the network: a ``RecordWriterOutput`` per outgoing edge, or a
``BroadcastingOutput`` over several of them when the chain's last operator feeds more
than one downstream vertex. A chain with no outgoing edge (a sink) ends in an output
that drops what it is given.

Lifecycle, as Flink's: operators are opened tail first (so every operator's output is
ready when it starts), ``end_input`` runs head first (each operator may emit its last
records into operators that have not ended yet), and closing runs head first too,
attempting every operator even when one fails.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Sequence

from penstock.functions import close_all, close_function, open_functions
from penstock.runtime.job_graph import OperatorSpec
from penstock.task.metrics import TaskIOMetrics
from penstock.task.operator import Output, RuntimeContext, SourceOperator, StreamOperator
from penstock.writer.record_writer import RecordWriter

__all__ = [
    "BroadcastingOutput",
    "ChainingOutput",
    "DiscardingOutput",
    "OperatorChain",
    "RecordWriterOutput",
]

log = logging.getLogger(__name__)

AnyOperator = StreamOperator[object, object] | SourceOperator[object]


class ChainingOutput:
    """Hands records to the next operator of the chain, in the same thread."""

    __slots__ = ("_process_batch", "operator")

    def __init__(self, operator: StreamOperator[object, object]) -> None:
        self.operator = operator
        self._process_batch = operator.process_batch

    def collect(self, record: object) -> None:
        self._process_batch([record])

    def collect_batch(self, records: Sequence[object]) -> None:
        self._process_batch(records if type(records) is list else list(records))


class RecordWriterOutput:
    """Writes records into one outgoing edge's result partition.

    Args:
        writer: The edge's record writer.
        metrics: Counts the task's ``numRecordsOut``; None when a ``BroadcastingOutput``
            above counts instead (a record sent to several edges counts once).
    """

    __slots__ = ("_emit", "_emit_batch", "metrics", "writer")

    def __init__(self, writer: RecordWriter[object], metrics: TaskIOMetrics | None = None) -> None:
        self.writer = writer
        self.metrics = metrics
        self._emit = writer.emit
        self._emit_batch = writer.emit_batch

    def collect(self, record: object) -> None:
        self._emit(record)
        if self.metrics is not None:
            self.metrics.num_records_out += 1

    def collect_batch(self, records: Sequence[object]) -> None:
        self._emit_batch(records)
        if self.metrics is not None:
            self.metrics.num_records_out += len(records)


class BroadcastingOutput:
    """Sends every record to each of several outputs (edges to several vertices)."""

    __slots__ = ("metrics", "outputs")

    def __init__(self, outputs: Sequence[Output[object]], metrics: TaskIOMetrics | None = None):
        self.outputs = tuple(outputs)
        self.metrics = metrics

    def collect(self, record: object) -> None:
        for output in self.outputs:
            output.collect(record)
        if self.metrics is not None:
            self.metrics.num_records_out += 1

    def collect_batch(self, records: Sequence[object]) -> None:
        for output in self.outputs:
            output.collect_batch(records)
        if self.metrics is not None:
            self.metrics.num_records_out += len(records)


class DiscardingOutput:
    """The output of a chain without outgoing edges: records go nowhere."""

    __slots__ = ()

    def collect(self, record: object) -> None:
        """Drops ``record``."""

    def collect_batch(self, records: Sequence[object]) -> None:
        """Drops ``records``."""


class OperatorChain:
    """The operators of one task, set up and linked.

    Args:
        specs: The chain's operators, head first (``JobVertex.operators``).
        writers: One record writer per outgoing edge, in edge order.
        context_for: The runtime context of each operator.
        metrics: Counts ``numRecordsOut`` at the chain's network output.
    """

    def __init__(
        self,
        specs: Sequence[OperatorSpec],
        writers: Sequence[RecordWriter[object]],
        context_for: Callable[[OperatorSpec], RuntimeContext],
        metrics: TaskIOMetrics | None = None,
    ) -> None:
        self.writers = tuple(writers)
        self.network_output = self._network_output(self.writers, metrics)
        operators: list[AnyOperator] = []
        output: Output[object] = self.network_output
        for spec in reversed(specs):
            operator = spec.factory.create()
            operator.setup(output, context_for(spec))
            operators.append(operator)
            if not spec.factory.is_source:
                output = ChainingOutput(operator)  # type: ignore[arg-type]
        operators.reverse()
        self.operators: tuple[AnyOperator, ...] = tuple(operators)
        self.names = tuple(spec.name for spec in specs)
        self._opened: list[AnyOperator] = []
        # The writers route with the tail operator's subtask: their key selectors and
        # partitioners are opened with its context.
        self._tail_context = context_for(specs[-1]) if specs else None
        self._opened_functions: list[object] = []

    @staticmethod
    def _network_output(
        writers: Sequence[RecordWriter[object]], metrics: TaskIOMetrics | None
    ) -> Output[object]:
        if not writers:
            return DiscardingOutput()
        if len(writers) == 1:
            return RecordWriterOutput(writers[0], metrics)
        return BroadcastingOutput([RecordWriterOutput(writer) for writer in writers], metrics)

    @property
    def head(self) -> AnyOperator:
        return self.operators[0]

    @property
    def is_source(self) -> bool:
        return hasattr(self.head, "emit_next_batch")

    def open(self) -> None:
        """Opens the writers' user functions, then the operators, tail first."""
        if self._tail_context is not None:
            functions = (fn for writer in self.writers for fn in writer.user_functions)
            open_functions(functions, self._tail_context, self._opened_functions)
        for operator in reversed(self.operators):
            self._opened.append(operator)
            operator.open()

    def end_input(self) -> None:
        """Tells every operator, head first, that its input is exhausted."""
        for operator in self.operators:
            end_input = getattr(operator, "end_input", None)
            if end_input is not None:
                end_input()

    def flush_outputs(self) -> None:
        """Makes everything written so far readable downstream."""
        for writer in self.writers:
            writer.flush_all()

    def close_operators(self, suppress: bool = False) -> None:
        """Closes what was opened: operators head first, then the writers' functions.

        The writers' functions are their key selectors and partitioners. All closes
        are attempted.

        Args:
            suppress: Log close errors instead of raising (the task is failing already).

        Raises:
            Exception: The first error a ``close`` raised, unless ``suppress``.
        """
        opened = [operator for operator in self.operators if operator in self._opened]
        self._opened.clear()
        closers: list[tuple[str, Callable[[], None]]] = [
            (f"operator {name}", operator.close)
            for operator, name in zip(self.operators, self.names, strict=True)
            if operator in opened
        ]
        functions, self._opened_functions = self._opened_functions, []
        closers += [(f"function {fn!r}", functools.partial(close_function, fn)) for fn in functions]
        close_all(closers, suppress)

    def close_writers(self) -> None:
        """Stops the writers' flusher threads (idempotent)."""
        for writer in self.writers:
            writer.close()
