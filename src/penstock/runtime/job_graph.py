"""JobGraph: what a client submits; vertices are operator chains, edges carry partitioners.

The DataStream API builds a StreamGraph (one node per operator) and chains it into this
JobGraph: a vertex per chain of operators that run in one task, an edge per network
exchange. The JobGraph is plain, picklable data: user functions travel inside the
operator factories (cloudpickle) and partitioners are described, not instantiated, so
every producer subtask builds its own selector.
"""

from __future__ import annotations

import pickle
from dataclasses import dataclass, field
from typing import Any, Final

import cloudpickle

from penstock.errors import IllegalStateError
from penstock.ids import IntermediateDataSetID, JobID, JobVertexID
from penstock.serialization.types import TypeSerializer
from penstock.task.operator import OperatorFactory
from penstock.writer.partitioners import (
    BroadcastPartitioner,
    ChannelSelector,
    CustomPartitionerWrapper,
    ForwardPartitioner,
    GlobalPartitioner,
    KeyGroupStreamPartitioner,
    KeySelector,
    Partitioner,
    RebalancePartitioner,
    RescalePartitioner,
    ShufflePartitioner,
)

__all__ = [
    "POINTWISE_KINDS",
    "JobEdge",
    "JobGraph",
    "JobVertex",
    "OperatorSpec",
    "PartitionerSpec",
]

POINTWISE_KINDS: Final = frozenset({"forward", "rescale"})
"""Partitioners whose producers connect to a subset of consumers (Flink's POINTWISE)."""

_KINDS: Final = frozenset(
    {"forward", "rebalance", "rescale", "shuffle", "broadcast", "global", "hash", "custom"}
)


@dataclass(frozen=True, slots=True)
class PartitionerSpec:
    """How an edge routes records; ``create()`` builds a fresh selector per producer.

    Attributes:
        kind: forward, rebalance, rescale, shuffle, broadcast, global, hash or custom.
        key_selector: The key selector of ``hash`` and ``custom``: a function or an
            object with ``get_key`` (kept as given, so its ``open``/``close`` run).
        partitioner: The user partitioner of ``custom``: ``(key, n) -> channel``, or
            an object with ``partition``.
        max_parallelism: Key groups of ``hash``.
    """

    kind: str
    key_selector: KeySelector[object] | None = None
    partitioner: Partitioner[object] | None = None
    max_parallelism: int = 128

    def __post_init__(self) -> None:
        if self.kind not in _KINDS:
            msg = f"unknown partitioner {self.kind!r}; expected one of {sorted(_KINDS)}"
            raise IllegalStateError(msg)
        if self.kind in ("hash", "custom") and self.key_selector is None:
            msg = f"a {self.kind} partitioner needs a key selector"
            raise IllegalStateError(msg)
        if self.kind == "custom" and self.partitioner is None:
            msg = "a custom partitioner needs a partitioner function"
            raise IllegalStateError(msg)

    @property
    def is_pointwise(self) -> bool:
        return self.kind in POINTWISE_KINDS

    @property
    def is_broadcast(self) -> bool:
        return self.kind == "broadcast"

    def create(self) -> ChannelSelector[object]:
        """A new, unconfigured selector for one producer subtask."""
        kind = self.kind
        if kind == "forward":
            return ForwardPartitioner()
        if kind == "rebalance":
            return RebalancePartitioner()
        if kind == "rescale":
            return RescalePartitioner()
        if kind == "shuffle":
            return ShufflePartitioner()
        if kind == "broadcast":
            return BroadcastPartitioner()
        if kind == "global":
            return GlobalPartitioner()
        assert self.key_selector is not None
        if kind == "hash":
            return KeyGroupStreamPartitioner(self.key_selector, self.max_parallelism)
        assert self.partitioner is not None
        return CustomPartitionerWrapper(self.partitioner, self.key_selector)

    def __str__(self) -> str:
        return "HASH" if self.kind == "hash" else self.kind.upper()

    def __reduce__(self) -> tuple[Any, ...]:
        functions = cloudpickle.dumps((self.key_selector, self.partitioner))
        return _unpickle_partitioner_spec, (self.kind, functions, self.max_parallelism)


@dataclass(frozen=True, slots=True)
class OperatorSpec:
    """One operator of a chain.

    Attributes:
        name: As Flink shows it: "Map", "Filter", "Source: Sequence Source", "Sink: ...".
        factory: Builds the operator in each subtask.
        node_id: The StreamGraph node it came from (stable within a job).
    """

    name: str
    factory: OperatorFactory
    node_id: int

    def __reduce__(self) -> tuple[Any, ...]:
        return _unpickle_operator_spec, (self.name, cloudpickle.dumps(self.factory), self.node_id)


@dataclass(frozen=True, slots=True)
class JobVertex:
    """A chain of operators that runs as one task per parallel instance.

    Attributes:
        id: The vertex id.
        name: Flink's chain name: operator names joined by " -> ".
        operators: Head first; records flow from each to the next in the same thread.
        parallelism: Number of subtasks.
        max_parallelism: Key groups for keyed edges into this vertex.
        slot_sharing_group: Subtasks of different groups never share a slot.
        buffer_timeout_ms: ``execution.buffer-timeout`` of the vertex's output.
    """

    id: JobVertexID
    name: str
    operators: tuple[OperatorSpec, ...]
    parallelism: int
    max_parallelism: int = 128
    slot_sharing_group: str = "default"
    buffer_timeout_ms: int = 100

    def __post_init__(self) -> None:
        if not self.operators:
            msg = f"vertex {self.name!r} has no operators"
            raise IllegalStateError(msg)
        if self.parallelism < 1:
            msg = f"vertex {self.name!r} has parallelism {self.parallelism}"
            raise IllegalStateError(msg)

    @property
    def is_source(self) -> bool:
        return self.operators[0].factory.is_source


@dataclass(frozen=True, slots=True)
class JobEdge:
    """A network exchange: every producer subtask writes one result partition for it.

    Attributes:
        source: Producing vertex.
        target: Consuming vertex.
        partitioner: How records are routed.
        dataset_id: Identifies the intermediate result (one partition per producer).
        serializer: The records' type serializer (both ends).
        target_input: Index of the consuming vertex's input this edge feeds (a vertex
            with several inputs reads them through one union gate, in this order).
    """

    source: JobVertexID
    target: JobVertexID
    partitioner: PartitionerSpec
    dataset_id: IntermediateDataSetID
    serializer: TypeSerializer[object]
    target_input: int = 0


@dataclass(frozen=True, slots=True)
class JobGraph:
    """A job as submitted: vertices in topological order and the edges between them."""

    job_id: JobID
    name: str
    vertices: tuple[JobVertex, ...]
    edges: tuple[JobEdge, ...]
    config: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        seen: set[JobVertexID] = set()
        ids = {vertex.id for vertex in self.vertices}
        for vertex in self.vertices:
            for edge in self.inputs_of(vertex.id):
                if edge.source not in seen:
                    msg = f"vertex {vertex.name!r} is listed before its input"
                    raise IllegalStateError(msg)
            seen.add(vertex.id)
        for edge in self.edges:
            if edge.source not in ids or edge.target not in ids:
                msg = "an edge refers to a vertex that is not in the job"
                raise IllegalStateError(msg)
            if edge.partitioner.kind == "forward":
                source, target = self.vertex(edge.source), self.vertex(edge.target)
                if source.parallelism != target.parallelism:
                    msg = (
                        f"Forward partitioning does not allow change of parallelism. Upstream "
                        f"operation: {source.name} parallelism: {source.parallelism}, "
                        f"downstream operation: {target.name} parallelism: "
                        f"{target.parallelism} You must use another partitioning strategy, "
                        "such as broadcast, rebalance, shuffle or global."
                    )
                    raise IllegalStateError(msg)

    def vertex(self, vertex_id: JobVertexID) -> JobVertex:
        for vertex in self.vertices:
            if vertex.id == vertex_id:
                return vertex
        msg = f"no vertex {vertex_id} in job {self.name!r}"
        raise IllegalStateError(msg)

    def inputs_of(self, vertex_id: JobVertexID) -> list[JobEdge]:
        """Incoming edges, ordered by ``target_input``."""
        edges = [edge for edge in self.edges if edge.target == vertex_id]
        return sorted(edges, key=lambda edge: edge.target_input)

    def outputs_of(self, vertex_id: JobVertexID) -> list[JobEdge]:
        return [edge for edge in self.edges if edge.source == vertex_id]

    @property
    def max_parallelism_of_job(self) -> int:
        return max(vertex.parallelism for vertex in self.vertices)


# Each operator's function, and each edge's key selector and partitioner, is pickled
# apart, as Flink serializes each operator's function into its own StreamConfig: one
# object given to two operators is two objects wherever the job runs, each opened and
# closed once, and the result does not depend on which operators are chained.


def _unpickle_operator_spec(name: str, factory: bytes, node_id: int) -> OperatorSpec:
    return OperatorSpec(name, pickle.loads(factory), node_id)


def _unpickle_partitioner_spec(
    kind: str, functions: bytes, max_parallelism: int
) -> PartitionerSpec:
    key_selector, partitioner = pickle.loads(functions)
    return PartitionerSpec(kind, key_selector, partitioner, max_parallelism)
