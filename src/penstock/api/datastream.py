"""DataStream, KeyedStream and DataStreamSink: PyFlink's DataStream API.

Every method records a transformation (see ``stream_graph``) and returns a new stream;
nothing runs until ``env.execute()`` or ``execute_and_collect()``. Operator settings
(``set_parallelism``, ``name``, ``slot_sharing_group``, ...) apply to the operator that
produced the stream and return the same stream, so they chain as in PyFlink::

    env.from_sequence(1, 100).map(lambda x: x * 2).name("Double").set_parallelism(2)

Partitioning methods (``rebalance()``, ``key_by()``, ...) do not run anything either:
they decide how the next operator reads the stream. A user function is a plain callable
or an object of the matching class in ``penstock.functions``; such an object may define
``open(runtime_context)`` and ``close()``.

Default operator names are Flink's: "Map", "Flat Map", "Filter", "Keyed Reduce",
"Keyed Aggregation" (``sum``), "KeyedProcess", and for sinks "Unnamed" (``add_sink``),
"Print to Std. Out" (``print``) and "Data stream collect sink" (``execute_and_collect``).
As in Flink, vertex and task names show sources and sinks with a prefix, the name given
or not: "Source: Sequence Source", "Sink: Unnamed", "Sink: my sink".
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Final, Self, cast

from penstock.api.stream_graph import (
    ChainingStrategy,
    OperatorTransformation,
    Partitioning,
    PartitionTransformation,
    Transformation,
    UnionTransformation,
)
from penstock.config import BUFFER_TIMEOUT, MAX_PARALLELISM
from penstock.errors import ConfigurationError, IllegalStateError
from penstock.functions import (
    as_filter,
    as_flat_map,
    as_key_selector,
    as_map,
    as_partitioner,
    as_process,
    as_reduce,
    as_sink,
)
from penstock.serialization.types import check_type_info
from penstock.task.operator import OperatorFactory
from penstock.task.operators import (
    CollectSinkFactory,
    FilterFactory,
    FlatMapFactory,
    MapFactory,
    PrintSinkFactory,
    ProcessFactory,
    ReduceFactory,
    SinkFactory,
    SumFactory,
)

if TYPE_CHECKING:
    from penstock.api.environment import StreamExecutionEnvironment
    from penstock.runtime.client import CloseableIterator
    from penstock.serialization.types import TypeInfo
    from penstock.writer.partitioners import KeySelector, Partitioner

__all__ = ["DataStream", "DataStreamSink", "KeyedStream"]

COLLECT_SINK_NAME: Final = "Data stream collect sink"
SINK_PREFIX: Final = "Sink: "
NON_PARALLEL_MESSAGE: Final = "The parallelism of non parallel operator must be 1."
_SCALAR_TYPES: Final = (int, float)

_ACCUMULABLE_TYPES: Final = (float, str, bytes)
"""Declared types whose serializer holds any running sum or reduce of its records."""


def _check_parallelism(operator: OperatorTransformation, parallelism: object) -> int:
    setting = "parallelism"
    if not isinstance(parallelism, int) or isinstance(parallelism, bool):
        reason = f"The parallelism of an operator must be an int (operator {operator.name!r})."
        raise ConfigurationError(setting, parallelism, reason)
    if parallelism < 1:
        reason = f"The parallelism of an operator must be at least 1 (operator {operator.name!r})."
        raise ConfigurationError(setting, parallelism, reason)
    if not operator.parallel and parallelism != 1:
        reason = f"{NON_PARALLEL_MESSAGE} (operator {operator.name!r})"
        raise ConfigurationError(setting, parallelism, reason)
    return parallelism


def _is_below_one(value: object) -> bool:
    return not isinstance(value, int) or isinstance(value, bool) or value < 1


def _check_name(setting: str, value: object) -> str:
    if not isinstance(value, str) or not value:
        reason = f"a {setting} must be a non-empty string"
        raise ConfigurationError(setting, value, reason)
    return value


def _check_max_parallelism(max_parallelism: int) -> int:
    value = MAX_PARALLELISM.parse(max_parallelism)
    if value == -1:
        reason = "The maximum parallelism must be greater than 0."
        raise ConfigurationError(MAX_PARALLELISM.key, max_parallelism, reason)
    return value


class _OperatorSettings:
    """The settings of the operator behind a stream or a sink, as PyFlink has them."""

    __slots__ = ()

    def _operator(self, method: str) -> OperatorTransformation:
        raise NotImplementedError

    def name(self, name: str) -> Self:
        """Names the operator, as shown in vertex and task names."""
        self._operator("name").name = _check_name("name", name)
        return self

    def get_name(self) -> str:
        """The operator's name."""
        return self._operator("get_name").name

    def set_parallelism(self, parallelism: int) -> Self:
        """Sets the number of subtasks of the operator.

        Raises:
            ConfigurationError: ``parallelism`` is below 1, or not 1 for a
                non-parallel operator such as ``from_collection``'s source.
        """
        operator = self._operator("set_parallelism")
        operator.parallelism = _check_parallelism(operator, parallelism)
        return self

    def get_parallelism(self) -> int | None:
        """The parallelism set on the operator; None means ``parallelism.default``."""
        return self._operator("get_parallelism").parallelism

    def set_max_parallelism(self, max_parallelism: int) -> Self:
        """Sets the operator's maximum parallelism (its number of key groups).

        Raises:
            ConfigurationError: Outside 1..32768.
        """
        operator = self._operator("set_max_parallelism")
        operator.max_parallelism = _check_max_parallelism(max_parallelism)
        return self

    def slot_sharing_group(self, name: str) -> Self:
        """Puts the operator into a slot sharing group.

        Subtasks of different groups never share a slot; operators that set no group
        take their inputs' group when all inputs share one, else "default".
        """
        group = _check_name("slot_sharing_group", name)
        self._operator("slot_sharing_group").slot_sharing_group = group
        return self

    def disable_chaining(self) -> Self:
        """Never chains the operator to its predecessor or its successor."""
        self._operator("disable_chaining").chaining_strategy = ChainingStrategy.NEVER
        return self

    def start_new_chain(self) -> Self:
        """Starts a new chain at this operator: it is not chained to its predecessor."""
        self._operator("start_new_chain").chaining_strategy = ChainingStrategy.HEAD
        return self


class DataStream(_OperatorSettings):
    """A stream of records, produced by an operator, a partitioning or a union."""

    __slots__ = ("_env", "_output_type", "_transformation", "_type_inferred")

    def __init__(
        self,
        env: StreamExecutionEnvironment,
        transformation: Transformation,
        output_type: TypeInfo | None = None,
        *,
        type_inferred: bool = False,
    ) -> None:
        self._env = env
        self._transformation = transformation
        self._output_type = output_type
        # Inferred from a collection's records rather than declared: it holds for
        # these records, not for what a reduce or sum computes from them.
        self._type_inferred = type_inferred

    @property
    def transformation(self) -> Transformation:
        """What the stream was made by."""
        return self._transformation

    @property
    def output_type(self) -> TypeInfo | None:
        """The type of the records, when known; it picks a fast serializer."""
        return self._output_type

    def get_execution_environment(self) -> StreamExecutionEnvironment:
        """The environment the stream belongs to."""
        return self._env

    def _operator(self, method: str) -> OperatorTransformation:
        if isinstance(self._transformation, OperatorTransformation):
            return self._transformation
        made_by = (
            "union()"
            if isinstance(self._transformation, UnionTransformation)
            else ("a partitioning method")
        )
        msg = (
            f"{method}() applies to the output of an operator, not to a stream made by "
            f"{made_by}; call it on the operator before partitioning or union"
        )
        raise IllegalStateError(msg)

    # -- operator settings that only streams have ------------------------------------

    def set_buffer_timeout(self, timeout_ms: int) -> Self:
        """How long the operator's partly filled output buffers wait before a flush.

        Args:
            timeout_ms: Milliseconds; 0 flushes after every record. -1 means the
                environment's buffer timeout (``execution.buffer-timeout``), as in
                Flink: only the environment's own -1 means "flush when full".

        Raises:
            ConfigurationError: Below -1.
        """
        operator = self._operator("set_buffer_timeout")
        timeout = BUFFER_TIMEOUT.parse(timeout_ms)
        operator.buffer_timeout_ms = None if timeout < 0 else timeout
        return self

    # -- transformations --------------------------------------------------------------

    def _one_input(
        self,
        name: str,
        factory: OperatorFactory,
        output_type: TypeInfo | None,
        *,
        type_inferred: bool = False,
    ) -> DataStream:
        if output_type is not None:
            output_type = check_type_info(output_type, "output_type")
        operator = OperatorTransformation(
            id=self._env._next_id(),
            name=name,
            factory=factory,
            inputs=(self._transformation,),
            output_type=output_type,
        )
        self._env._add_operator(operator)
        return DataStream(self._env, operator, output_type, type_inferred=type_inferred)

    def _summed_type(self) -> TypeInfo | None:
        """The type of what a sum emits: the records' type if it can hold the sums.

        A type inferred from a collection's records says nothing about the values
        computed from them, so those go through the generic serializer, as PyFlink
        pickles them. A declared type is kept where a sum stays within it (float, str,
        bytes); ints and fixed layouts are not: a running sum outgrows 64 bits where
        its records did not, and the job would fail only where the sums cross a
        channel, at some parallelisms. What a reduce emits always takes the generic
        serializer: its function may return anything, None among it to start the key
        again.
        """
        if self._type_inferred or self._output_type not in _ACCUMULABLE_TYPES:
            return None
        return self._output_type

    def map(self, func: object, output_type: TypeInfo | None = None) -> DataStream:
        """One record out per record in: ``func(record)`` or ``func.map(record)``.

        Args:
            func: A callable or a ``MapFunction``.
            output_type: ``int``, ``float``, ``str`` or ``bytes``, or a ``struct.Struct``
                layout for tuples of its fields, picks a fast serializer for the
                results; anything else (or None) the generic one.

        Raises:
            TypeError: ``func`` is neither callable nor a ``MapFunction``.
        """
        as_map(func)
        return self._one_input("Map", MapFactory(func), output_type)

    def flat_map(self, func: object, output_type: TypeInfo | None = None) -> DataStream:
        """Any number of records per record in: ``func`` returns an iterable.

        Args:
            func: A callable or a ``FlatMapFunction`` (which may instead emit with
                ``out.collect`` from ``flat_map(value, out)``).
            output_type: As for ``map``.

        Raises:
            TypeError: ``func`` is neither callable nor a ``FlatMapFunction``.
        """
        as_flat_map(func)
        return self._one_input("Flat Map", FlatMapFactory(func), output_type)

    def filter(self, func: object) -> DataStream:
        """Keeps the records for which ``func`` is true.

        Raises:
            TypeError: ``func`` is neither callable nor a ``FilterFunction``.
        """
        as_filter(func)
        return self._one_input(
            "Filter", FilterFactory(func), self._output_type, type_inferred=self._type_inferred
        )

    def key_by(self, key_selector: object) -> KeyedStream:
        """Partitions the stream by key: each key goes to one subtask (HASH edge).

        Args:
            key_selector: A callable or a ``KeySelector``.

        Raises:
            TypeError: ``key_selector`` is neither callable nor a ``KeySelector``.
        """
        as_key_selector(key_selector)  # checks its kind now rather than in the job
        partition = PartitionTransformation(
            self._env._next_id(),
            self._transformation,
            Partitioning("hash", cast("KeySelector[object]", key_selector)),
        )
        return KeyedStream(
            self._env,
            partition,
            key_selector,
            self._output_type,
            type_inferred=self._type_inferred,
        )

    def union(self, *streams: DataStream) -> DataStream:
        """One stream of the records of this stream and ``streams``.

        Raises:
            IllegalStateError: A stream belongs to another environment.
        """
        for stream in streams:
            if getattr(stream, "_env", None) is not self._env:
                msg = "union() takes streams of the same environment"
                raise IllegalStateError(msg)
        inputs = (self._transformation, *(stream._transformation for stream in streams))
        types = {self._output_type, *(stream._output_type for stream in streams)}
        output_type = types.pop() if len(types) == 1 else None
        inferred = self._type_inferred or any(stream._type_inferred for stream in streams)
        union = UnionTransformation(self._env._next_id(), inputs)
        return DataStream(self._env, union, output_type, type_inferred=inferred)

    # -- partitioning -----------------------------------------------------------------

    def _partition(self, partitioning: Partitioning) -> DataStream:
        partition = PartitionTransformation(
            self._env._next_id(), self._transformation, partitioning
        )
        return DataStream(
            self._env, partition, self._output_type, type_inferred=self._type_inferred
        )

    def forward(self) -> DataStream:
        """Each subtask sends to the subtask of the same index (same parallelism only)."""
        return self._partition(Partitioning("forward"))

    def rebalance(self) -> DataStream:
        """Round robin over all downstream subtasks."""
        return self._partition(Partitioning("rebalance"))

    def rescale(self) -> DataStream:
        """Round robin over a subset of downstream subtasks (pointwise)."""
        return self._partition(Partitioning("rescale"))

    def shuffle(self) -> DataStream:
        """Each record to a uniformly random downstream subtask."""
        return self._partition(Partitioning("shuffle"))

    def broadcast(self) -> DataStream:
        """Every record to every downstream subtask."""
        return self._partition(Partitioning("broadcast"))

    def global_(self) -> DataStream:
        """Every record to the first downstream subtask."""
        return self._partition(Partitioning("global"))

    def partition_custom(self, partitioner: object, key_selector: object) -> DataStream:
        """Each record to ``partitioner(key, num_partitions)`` of its key.

        Args:
            partitioner: A callable ``(key, n) -> index`` or a ``Partitioner``.
            key_selector: A callable or a ``KeySelector``.

        Raises:
            TypeError: Either argument is of the wrong kind.
        """
        as_key_selector(key_selector)  # check their kinds now rather than in the job
        as_partitioner(partitioner)
        # Kept as given: a function object's open() and close() run in each subtask.
        return self._partition(
            Partitioning(
                "custom",
                cast("KeySelector[object]", key_selector),
                cast("Partitioner[object]", partitioner),
            )
        )

    # -- sinks ------------------------------------------------------------------------

    def _sink(
        self, name: str, factory: OperatorFactory, *, parallel: bool = True
    ) -> DataStreamSink:
        operator = OperatorTransformation(
            id=self._env._next_id(),
            name=name,
            factory=factory,
            inputs=(self._transformation,),
            parallelism=None if parallel else 1,
            parallel=parallel,
            name_prefix=SINK_PREFIX,
        )
        self._env._add_operator(operator)
        return DataStreamSink(operator)

    def add_sink(self, sink_func: object) -> DataStreamSink:
        """Hands every record to ``sink_func`` (a callable or a ``SinkFunction``).

        Raises:
            TypeError: ``sink_func`` is neither callable nor a ``SinkFunction``.
        """
        as_sink(sink_func)
        return self._sink("Unnamed", SinkFactory(sink_func))

    def print(self, sink_identifier: str | None = None) -> DataStreamSink:
        """Prints every record to standard output, one line each (PyFlink's ``print``).

        Args:
            sink_identifier: Starts every line: "id> ", or "id:N> " from subtask N of
                a parallel sink (without it, "N> " or no prefix).

        Raises:
            TypeError: ``sink_identifier`` is not a str.
        """
        if sink_identifier is not None and not isinstance(sink_identifier, str):
            msg = f"sink_identifier must be a str, got {type(sink_identifier).__name__}"
            raise TypeError(msg)
        return self._sink("Print to Std. Out", PrintSinkFactory(sink_identifier))

    def execute_and_collect(
        self, job_name: str | None = None, limit: int | None = None
    ) -> CloseableIterator[object]:
        """Runs the job and iterates over this stream's records as they arrive.

        Adds a parallelism-1 collect sink to the stream and executes every operator of
        the environment, as Flink's ``executeAndCollect`` does. Closing the iterator
        (or leaving ``with ds.execute_and_collect() as records:``), or reaching
        ``limit`` records, cancels the job. With ``limit`` too the records come as an
        iterator (PyFlink gives a list then): ``list()`` it for one.

        Args:
            job_name: The job's name.
            limit: Stop after this many records.

        Raises:
            ConfigurationError: ``limit`` is below 1.
            JobExecutionError: The job failed (raised from the iterator).
        """
        if limit is not None and _is_below_one(limit):
            setting = "limit"
            raise ConfigurationError(setting, limit, "the limit must be at least 1")
        self._sink(COLLECT_SINK_NAME, CollectSinkFactory(), parallel=False)
        return self._env._execute_and_collect(job_name, limit)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self._transformation!r})"


class KeyedStream(DataStream):
    """A stream partitioned by key; ``reduce``, ``sum`` and ``process`` keep state per key.

    ``map``, ``flat_map`` and ``filter`` read it through a HASH edge like any stream.
    Its partitioning and its operator settings cannot be changed: it is not an operator.
    """

    __slots__ = ("_key_selector",)

    def __init__(
        self,
        env: StreamExecutionEnvironment,
        transformation: PartitionTransformation,
        key_selector: object,
        output_type: TypeInfo | None = None,
        *,
        type_inferred: bool = False,
    ) -> None:
        super().__init__(env, transformation, output_type, type_inferred=type_inferred)
        self._key_selector = key_selector

    def _operator(self, method: str) -> OperatorTransformation:
        msg = f"{method}() is not supported on a KeyedStream; call it on an operator"
        raise IllegalStateError(msg)

    def _partition(self, partitioning: Partitioning) -> DataStream:
        msg = "Cannot override partitioning for KeyedStream."
        raise IllegalStateError(msg)

    def reduce(self, func: object) -> DataStream:
        """The running aggregate per key: emits ``func(aggregate, record)`` per record.

        Raises:
            TypeError: ``func`` is neither callable nor a ``ReduceFunction``.
        """
        as_reduce(func)
        factory = ReduceFactory(func, self._key_selector)
        return self._one_input("Keyed Reduce", factory, None)

    def sum(self, position_to_sum: int | str = 0) -> DataStream:
        """The running sum per key of a field; emits the running record per record.

        Args:
            position_to_sum: A tuple or list position (negative ones count from the
                end), a dict key or an attribute name. Records that are numbers are
                summed themselves, at position 0, the only one a number has.

        Raises:
            TypeError: The position is neither an int nor a str, or is not 0 on a
                stream of numbers.
        """
        position: int | str | None = position_to_sum
        if isinstance(position, bool) or not isinstance(position, int | str):
            msg = (
                "The field position must be of int or str type to locate the value to sum "
                f"for tuple or row type input, got {position!r}."
            )
            raise TypeError(msg)
        output_type = self._output_type
        if output_type in _SCALAR_TYPES:
            if position != 0:
                assert isinstance(output_type, type)
                msg = (
                    f"The {position} field selected on a basic type ({output_type.__name__}). "
                    "A field expression on a basic type can only select the 0th field "
                    "(which means selecting the entire basic type)."
                )
                raise TypeError(msg)
            position = None
        factory = SumFactory(position, self._key_selector)
        return self._one_input("Keyed Aggregation", factory, self._summed_type())

    def process(self, func: object, output_type: TypeInfo | None = None) -> DataStream:
        """Calls ``func.process_element`` per record (KeyedProcessFunction).

        As in PyFlink, ``process_element(value, ctx)`` yields (or returns) its records;
        one declared as ``process_element(value, ctx, out)`` may also ``out.collect``.

        Args:
            func: A ``KeyedProcessFunction`` (or a callable taking the same arguments).
            output_type: As for ``map``.

        Raises:
            TypeError: ``func`` has no ``process_element`` and is not callable.
        """
        as_process(func)
        factory = ProcessFactory(func, self._key_selector)
        return self._one_input("KeyedProcess", factory, output_type)


class DataStreamSink(_OperatorSettings):
    """The end of a stream (``add_sink``, ``print``); its settings are the sink's."""

    __slots__ = ("_transformation",)

    def __init__(self, transformation: OperatorTransformation) -> None:
        self._transformation = transformation

    @property
    def transformation(self) -> OperatorTransformation:
        """The sink operator."""
        return self._transformation

    def _operator(self, method: str) -> OperatorTransformation:
        return self._transformation

    def __repr__(self) -> str:
        return f"DataStreamSink({self._transformation.name!r})"
