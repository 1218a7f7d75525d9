"""StreamExecutionEnvironment: where a job is defined and from where it is executed.

As in PyFlink::

    env = StreamExecutionEnvironment.get_execution_environment({"parallelism.default": 2})
    env.from_sequence(1, 1000).map(lambda x: x * x).key_by(lambda x: x % 10).sum().print()
    result = env.execute("squares")

The environment holds a ``Configuration`` (Flink's keys; ``execution.target`` chooses
where jobs run) and the operators defined so far. ``execute`` turns them into a
StreamGraph, chains it into a JobGraph and runs it; the operators are then cleared, so
the environment can define and run another job, as Flink's does.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Final, Self

from penstock.api.datastream import DataStream
from penstock.api.stream_graph import (
    DEFAULT_JOB_NAME,
    OperatorTransformation,
    StreamGraph,
    Transformation,
)
from penstock.config import (
    BUFFER_TIMEOUT,
    MAX_PARALLELISM,
    PARALLELISM_DEFAULT,
    Configuration,
)
from penstock.errors import ConfigurationError, SerializationError
from penstock.runtime.job_graph import JobGraph
from penstock.serialization.types import check_type_info
from penstock.task.operator import snapshot
from penstock.task.operators import CollectionSourceFactory, SequenceSourceFactory

if TYPE_CHECKING:
    from penstock.runtime.client import CloseableIterator, JobExecutionResult
    from penstock.serialization.types import TypeInfo

__all__ = ["StreamExecutionEnvironment"]

log = logging.getLogger(__name__)

SOURCE_PREFIX: Final = "Source: "
COLLECTION_SOURCE_NAME: Final = "Collection Source"
SEQUENCE_SOURCE_NAME: Final = "Sequence Source"
_INT64_MIN: Final = -(1 << 63)
_INT64_MAX: Final = (1 << 63) - 1
_FAST_TYPES: Final = (bytes, str, float)


def _infer_type(records: Iterable[object]) -> type | None:
    """The exact type all records share, if it has a fast serializer; else None."""
    kinds = {type(record) for record in records}
    if len(kinds) != 1:
        return None
    kind = kinds.pop()
    if kind in _FAST_TYPES:
        return kind
    if kind is int and all(
        isinstance(record, int) and _INT64_MIN <= record <= _INT64_MAX for record in records
    ):
        return int
    return None


class StreamExecutionEnvironment:
    """The context a streaming job is defined and executed in (PyFlink's name)."""

    __slots__ = ("_chaining_enabled", "_config", "_ids", "_transformations")

    def __init__(self, config: Configuration | Mapping[str, object] | None = None) -> None:
        """Creates an environment; prefer ``get_execution_environment``.

        Raises:
            ConfigurationError: A key is unknown or a value invalid.
        """
        self._config = Configuration(config)
        self._transformations: list[Transformation] = []
        self._chaining_enabled = True
        self._ids = itertools.count(1)

    @classmethod
    def get_execution_environment(
        cls, config: Configuration | Mapping[str, object] | None = None
    ) -> StreamExecutionEnvironment:
        """A new environment with ``config`` (Flink's keys) on top of the defaults.

        The defaults are Flink's, overridden by those of the command that runs the job
        (``penstock run JOB.py -D parallelism.default=4``), as ``flink run -p 4`` does.

        Raises:
            ConfigurationError: A key is unknown or a value invalid; names both.
        """
        from penstock.runtime.client import job_defaults

        defaults = job_defaults()
        own = Configuration(config)
        return cls(own if defaults is None else defaults | own)

    # -- configuration ----------------------------------------------------------------

    @property
    def configuration(self) -> Configuration:
        """The environment's configuration; changes apply to jobs executed later."""
        return self._config

    def get_config(self) -> Configuration:
        """The environment's configuration (same as ``configuration``)."""
        return self._config

    def set_parallelism(self, parallelism: int) -> Self:
        """Sets ``parallelism.default``: the parallelism of operators that set none.

        Raises:
            ConfigurationError: Below 1.
        """
        self._config.set(PARALLELISM_DEFAULT, parallelism)
        return self

    def get_parallelism(self) -> int:
        """``parallelism.default``."""
        return self._config.get(PARALLELISM_DEFAULT)

    def set_max_parallelism(self, max_parallelism: int) -> Self:
        """Sets ``pipeline.max-parallelism``, the key groups of keyed operators.

        Raises:
            ConfigurationError: Not -1 and outside 1..32768.
        """
        self._config.set(MAX_PARALLELISM, max_parallelism)
        return self

    def get_max_parallelism(self) -> int:
        """``pipeline.max-parallelism``; -1 derives it from each operator's parallelism."""
        return self._config.get(MAX_PARALLELISM)

    def set_buffer_timeout(self, timeout_ms: int) -> Self:
        """Sets ``execution.buffer-timeout`` for operators that set none.

        Args:
            timeout_ms: Milliseconds; 0 flushes after every record, -1 only when full.

        Raises:
            ConfigurationError: Below -1.
        """
        self._config.set(BUFFER_TIMEOUT, timeout_ms)
        return self

    def get_buffer_timeout(self) -> int:
        """``execution.buffer-timeout`` in milliseconds."""
        return self._config.get(BUFFER_TIMEOUT)

    def disable_operator_chaining(self) -> Self:
        """Runs every operator in a task of its own."""
        self._chaining_enabled = False
        return self

    def is_chaining_enabled(self) -> bool:
        """False after ``disable_operator_chaining``."""
        return self._chaining_enabled

    # -- sources ----------------------------------------------------------------------

    def from_collection(
        self, collection: Iterable[object], type_info: TypeInfo | None = None
    ) -> DataStream:
        """A non-parallel source (parallelism 1) emitting the records of ``collection``.

        The records are copied now, deeply (as PyFlink serializes them when called), and
        travel with the job: changing them afterwards does not change the job's input.
        A record that cannot be copied (it holds a lock, say) is kept as it is, with a
        warning.

        Args:
            collection: The records.
            type_info: Their type; ``int``, ``float``, ``str`` or ``bytes``, or a
                ``struct.Struct`` layout for tuples of its fields, picks a fast
                serializer. Inferred when every record has the same such type.
        """
        if type_info is not None:
            type_info = check_type_info(type_info, "type_info")
        records = tuple(map(_copied, collection))
        output_type = _infer_type(records) if type_info is None else type_info
        source = OperatorTransformation(
            id=self._next_id(),
            name=COLLECTION_SOURCE_NAME,
            factory=CollectionSourceFactory(records),
            output_type=output_type,
            parallelism=1,
            parallel=False,
            name_prefix=SOURCE_PREFIX,
        )
        return DataStream(self, source, output_type, type_inferred=type_info is None)

    def from_sequence(self, start: int, end: int) -> DataStream:
        """A parallel source of the integers ``start..end`` (inclusive), split by subtask.

        Raises:
            ConfigurationError: ``start`` is greater than ``end``, or either is not an int.
        """
        bounds: tuple[tuple[str, object], ...] = (("start", start), ("end", end))
        for key, value in bounds:
            if not isinstance(value, int) or isinstance(value, bool):
                raise ConfigurationError(key, value, "a sequence bound must be an int")
            if not _INT64_MIN <= value <= _INT64_MAX:
                raise ConfigurationError(key, value, "a sequence bound must fit in 64 bits")
        if start > end:
            reason = f"Start of sequence must not be greater than the end (start={start})"
            raise ConfigurationError(bounds[1][0], end, reason)
        source = OperatorTransformation(
            id=self._next_id(),
            name=SEQUENCE_SOURCE_NAME,
            factory=SequenceSourceFactory(start, end),
            output_type=int,
            name_prefix=SOURCE_PREFIX,
        )
        return DataStream(self, source, int)

    # -- graphs and execution ---------------------------------------------------------

    def get_stream_graph(
        self, job_name: str | None = None, *, clear_transformations: bool = False
    ) -> StreamGraph:
        """The StreamGraph of the operators defined so far.

        Args:
            job_name: The job's name.
            clear_transformations: Forget the operators afterwards, as ``execute`` does.

        Raises:
            IllegalStateError: No operator is defined, or a FORWARD edge changes the
                parallelism.
            ConfigurationError: A maximum parallelism is below its operator's parallelism.
        """
        graph = StreamGraph.generate(
            self._transformations,
            self._config,
            job_name=DEFAULT_JOB_NAME if job_name is None else job_name,
            chaining_enabled=self._chaining_enabled,
        )
        if clear_transformations:
            self._transformations.clear()
        return graph

    def get_job_graph(self, job_name: str | None = None) -> JobGraph:
        """The JobGraph (chained vertices and network edges) ``execute`` would run."""
        return self.get_stream_graph(job_name).get_job_graph()

    def execute(self, job_name: str | None = None) -> JobExecutionResult:
        """Runs the job on ``execution.target`` and waits until it ends.

        Returns:
            The job id, the net runtime and the final metrics of every task.

        Raises:
            IllegalStateError: No operator is defined or the graph is invalid.
            JobExecutionError: The job failed; the cause is the first failure.
        """
        from penstock.runtime import client  # loaded on demand: it is large

        job = self.get_stream_graph(job_name, clear_transformations=True).get_job_graph()
        return client.execute(job, Configuration(self._config))

    def _execute_and_collect(
        self, job_name: str | None, limit: int | None
    ) -> CloseableIterator[object]:
        from penstock.runtime import client  # loaded on demand: it is large

        job = self.get_stream_graph(job_name, clear_transformations=True).get_job_graph()
        return client.execute_and_collect(job, Configuration(self._config), limit)

    # -- for the DataStream API -------------------------------------------------------

    def _next_id(self) -> int:
        return next(self._ids)

    def _add_operator(self, operator: OperatorTransformation) -> None:
        # Like Flink, only operators that read a stream are registered: a source that
        # nothing reads does not run.
        self._transformations.append(operator)

    def __repr__(self) -> str:
        return f"StreamExecutionEnvironment({self._config!r})"


def _copied(record: object) -> object:
    """``record`` safe from later changes to it (values and tuples of them as they are)."""
    try:
        return snapshot(record)
    except SerializationError as exc:
        log.warning(
            "from_collection keeps a record it cannot copy as it is (%s): changing it "
            "before the job runs changes the job's input",
            exc,
        )
        return record
