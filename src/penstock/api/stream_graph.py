"""StreamGraph: one node per operator, chained into a JobGraph with Flink's rule.

Theory of operation. The DataStream API records what the user asked for as
*transformations* (Flink's Transformation): an ``OperatorTransformation`` per operator
(source, map, sink, ...), a ``PartitionTransformation`` for ``rebalance()``,
``key_by()`` and the other partitioning methods, and a ``UnionTransformation`` for
``union()``. Partitions and unions are virtual: they never run, they only decide how the
next operator is connected.

``StreamGraph.generate`` turns the transformations into a StreamGraph, Flink's
StreamGraphGenerator in short: a ``StreamNode`` per operator, with everything left open
resolved (parallelism, maximum parallelism, slot sharing group, buffer timeout, the
serializer of its output), and a ``StreamEdge`` per input of an operator, with its
partitioner resolved. An edge without an explicit partitioner is FORWARD when both ends
have the same parallelism and REBALANCE otherwise; several partitioning calls on the
same stream keep the last one.

``StreamGraph.get_job_graph`` chains the nodes (Flink's StreamingJobGraphGenerator):
an edge is chained, so that both operators run in one task and call each other
directly, when

- the downstream node has exactly one input edge and the upstream node exactly one
  output edge (a fan-out ends a chain, which keeps every chain a straight line),
- the edge is FORWARD (which implies equal parallelism),
- both nodes are in the same slot sharing group,
- chaining is enabled for the job, the upstream node does not say NEVER and the
  downstream node says ALWAYS (``disable_chaining`` is NEVER, ``start_new_chain`` HEAD).

Each chain becomes a ``JobVertex`` named after its operators joined by " -> " (Flink's
"Source: Sequence Source -> Map -> Filter"); each edge that is not chained becomes a
``JobEdge``.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Final, TypeAlias

from penstock.config import (
    BUFFER_TIMEOUT,
    MAX_PARALLELISM,
    PARALLELISM_DEFAULT,
    Configuration,
    compute_default_max_parallelism,
)
from penstock.errors import ConfigurationError, IllegalStateError
from penstock.ids import IntermediateDataSetID, JobID, JobVertexID
from penstock.runtime.job_graph import JobEdge, JobGraph, JobVertex, OperatorSpec, PartitionerSpec
from penstock.serialization.types import (
    GenericSerializer,
    TypeInfo,
    TypeSerializer,
    serializer_for,
)
from penstock.task.operator import OperatorFactory
from penstock.writer.partitioners import KeySelector, Partitioner

__all__ = [
    "DEFAULT_JOB_NAME",
    "DEFAULT_SLOT_SHARING_GROUP",
    "ChainingStrategy",
    "OperatorTransformation",
    "PartitionTransformation",
    "Partitioning",
    "StreamEdge",
    "StreamGraph",
    "StreamNode",
    "Transformation",
    "UnionTransformation",
]

DEFAULT_JOB_NAME: Final = "Penstock Streaming Job"
"""The job name when ``execute`` is given none (Flink's "Flink Streaming Job")."""

DEFAULT_SLOT_SHARING_GROUP: Final = "default"
"""Flink's default slot sharing group."""

CHAIN_SEPARATOR: Final = " -> "


class ChainingStrategy(enum.Enum):
    """Whether a node may be chained to its neighbours (Flink's ChainingStrategy)."""

    ALWAYS = "always"
    """Chain to the predecessor and the successor where the rule allows."""
    HEAD = "head"
    """Start a new chain: never chained to the predecessor (``start_new_chain``)."""
    NEVER = "never"
    """Never chained at all (``disable_chaining``)."""


@dataclass(frozen=True, slots=True)
class Partitioning:
    """A partitioning asked for in the API; its maximum parallelism is resolved later.

    Attributes:
        kind: A ``PartitionerSpec`` kind: forward, rebalance, hash, custom, ...
        key_selector: The key selector of ``hash`` and ``custom``, as the user gave it.
        partitioner: The user partitioner of ``custom``, as the user gave it.
    """

    kind: str
    key_selector: KeySelector[object] | None = None
    partitioner: Partitioner[object] | None = None

    def to_spec(self, max_parallelism: int) -> PartitionerSpec:
        """The edge's partitioner; ``max_parallelism`` is the key groups of ``hash``."""
        return PartitionerSpec(
            self.kind, self.key_selector, self.partitioner, max_parallelism=max_parallelism
        )


@dataclass(eq=False, slots=True)
class OperatorTransformation:
    """An operator as the API built it; settings left ``None`` are resolved by the graph.

    Attributes:
        id: Unique within the environment; increases with creation, so inputs come first.
        name: The name given in the API: "Map", "Sequence Source", "Unnamed".
        factory: Builds the operator in each subtask.
        inputs: The streams it reads (none for a source).
        output_type: The type of its records, choosing the serializer of its outputs.
        parallelism: Subtasks; ``None`` takes ``parallelism.default``.
        max_parallelism: Key groups; ``None`` takes ``pipeline.max-parallelism`` or
            Flink's default for the parallelism.
        slot_sharing_group: ``None`` inherits the group of the inputs.
        buffer_timeout_ms: ``None`` takes ``execution.buffer-timeout``.
        chaining_strategy: Whether it chains to its neighbours.
        parallel: False for a non-parallel operator, whose parallelism must stay 1.
        name_prefix: "Source: " or "Sink: ", put before the name in the graph as Flink
            does ("Source: Sequence Source", "Sink: Unnamed").
    """

    id: int
    name: str
    factory: OperatorFactory
    inputs: tuple[Transformation, ...] = ()
    output_type: TypeInfo | None = None
    parallelism: int | None = None
    max_parallelism: int | None = None
    slot_sharing_group: str | None = None
    buffer_timeout_ms: int | None = None
    chaining_strategy: ChainingStrategy = ChainingStrategy.ALWAYS
    parallel: bool = True
    name_prefix: str = ""

    @property
    def operator_name(self) -> str:
        """The name shown in vertex and task names: the prefix and the name."""
        return self.name_prefix + self.name

    def __str__(self) -> str:
        return f"{self.operator_name}-{self.id}"


@dataclass(eq=False, slots=True)
class PartitionTransformation:
    """A stream re-partitioned (``rebalance()``, ``key_by()``, ...): sets the next edge."""

    id: int
    input: Transformation
    partitioning: Partitioning


@dataclass(eq=False, slots=True)
class UnionTransformation:
    """Several streams read as one (``union()``): each becomes an input edge."""

    id: int
    inputs: tuple[Transformation, ...]


Transformation: TypeAlias = OperatorTransformation | PartitionTransformation | UnionTransformation


@dataclass(frozen=True, slots=True)
class StreamNode:
    """An operator with every setting resolved.

    Attributes:
        id: The transformation id.
        name: The operator name.
        factory: Builds the operator in each subtask.
        parallelism: Subtasks.
        max_parallelism: Key groups of keyed edges into this node.
        slot_sharing_group: Subtasks of different groups never share a slot.
        buffer_timeout_ms: Flush interval of the node's network outputs.
        chaining_strategy: Whether it chains to its neighbours.
        serializer: Serializer of the records it emits.
    """

    id: int
    name: str
    factory: OperatorFactory
    parallelism: int
    max_parallelism: int
    slot_sharing_group: str
    buffer_timeout_ms: int
    chaining_strategy: ChainingStrategy
    serializer: TypeSerializer[object]

    def __str__(self) -> str:
        # Flink's StreamNode.toString, used in its error messages: "Map-2".
        return f"{self.name}-{self.id}"


@dataclass(frozen=True, slots=True)
class StreamEdge:
    """One input of a node.

    Attributes:
        source_id: The upstream node.
        target_id: The downstream node.
        partitioner: How records are routed.
        input_index: Position among the downstream node's inputs.
    """

    source_id: int
    target_id: int
    partitioner: PartitionerSpec
    input_index: int


def _resolve_inputs(
    transformation: Transformation, partitioning: Partitioning | None
) -> list[tuple[OperatorTransformation, Partitioning | None]]:
    """The operators behind a stream and the partitioning of the edge from each.

    The partitioning met first (walking upstream) wins: it is the one applied last.
    """
    if isinstance(transformation, OperatorTransformation):
        return [(transformation, partitioning)]
    if isinstance(transformation, PartitionTransformation):
        chosen = partitioning if partitioning is not None else transformation.partitioning
        return _resolve_inputs(transformation.input, chosen)
    return [
        resolved
        for upstream in transformation.inputs
        for resolved in _resolve_inputs(upstream, partitioning)
    ]


def _reachable(roots: Iterable[Transformation]) -> list[OperatorTransformation]:
    """Every operator the roots read from, the roots included, in creation order."""
    seen: dict[int, OperatorTransformation] = {}
    stack = list(roots)
    visited: set[int] = set()
    while stack:
        transformation = stack.pop()
        if id(transformation) in visited:
            continue
        visited.add(id(transformation))
        if isinstance(transformation, OperatorTransformation):
            seen[transformation.id] = transformation
            stack.extend(transformation.inputs)
        elif isinstance(transformation, PartitionTransformation):
            stack.append(transformation.input)
        else:
            stack.extend(transformation.inputs)
    # Ids grow with creation and an operator is created after its inputs, so this
    # order is topological.
    return [seen[key] for key in sorted(seen)]


class StreamGraph:
    """The operators of a job and the edges between them, every setting resolved.

    Build one with ``generate``; ``get_job_graph`` chains it into a JobGraph.

    Attributes:
        job_name: The job's name.
        nodes: Nodes in topological order.
        edges: Edges, grouped by downstream node in input order.
        chaining_enabled: False after ``env.disable_operator_chaining()``.
        config: The configuration the graph was resolved with.
    """

    __slots__ = (
        "_in",
        "_nodes_by_id",
        "_out",
        "chaining_enabled",
        "config",
        "edges",
        "job_name",
        "nodes",
    )

    def __init__(
        self,
        job_name: str,
        nodes: Sequence[StreamNode],
        edges: Sequence[StreamEdge],
        config: Configuration,
        *,
        chaining_enabled: bool = True,
    ) -> None:
        self.job_name = job_name
        self.nodes: tuple[StreamNode, ...] = tuple(nodes)
        self.edges: tuple[StreamEdge, ...] = tuple(edges)
        self.config = Configuration(config)
        self.chaining_enabled = chaining_enabled
        self._nodes_by_id = {node.id: node for node in self.nodes}
        self._in: dict[int, list[StreamEdge]] = {node.id: [] for node in self.nodes}
        self._out: dict[int, list[StreamEdge]] = {node.id: [] for node in self.nodes}
        for edge in self.edges:
            if edge.source_id not in self._nodes_by_id or edge.target_id not in self._nodes_by_id:
                msg = f"edge {edge.source_id} -> {edge.target_id} refers to an unknown node"
                raise IllegalStateError(msg)
            self._out[edge.source_id].append(edge)
            self._in[edge.target_id].append(edge)
        for edges_in in self._in.values():
            edges_in.sort(key=lambda edge: edge.input_index)

    # -- generation -------------------------------------------------------------------

    @classmethod
    def generate(
        cls,
        transformations: Iterable[Transformation],
        config: Configuration,
        *,
        job_name: str = DEFAULT_JOB_NAME,
        chaining_enabled: bool = True,
    ) -> StreamGraph:
        """Resolves the operators the transformations reach into nodes and edges.

        Args:
            transformations: The operators to run; their inputs are included.
            config: Supplies ``parallelism.default``, ``pipeline.max-parallelism`` and
                ``execution.buffer-timeout`` for operators that do not set their own.
            job_name: The job's name.
            chaining_enabled: Whether operators may be chained at all.

        Raises:
            IllegalStateError: There is no operator, or a FORWARD edge changes the
                parallelism (Flink's message).
            ConfigurationError: A maximum parallelism is below its node's parallelism.
        """
        operators = _reachable(transformations)
        if not operators:
            msg = "No operators defined in streaming topology. Cannot execute."
            raise IllegalStateError(msg)
        default_parallelism = config.get(PARALLELISM_DEFAULT)
        default_timeout = config.get(BUFFER_TIMEOUT)
        configured_max = config.get(MAX_PARALLELISM)
        nodes: dict[int, StreamNode] = {}
        edges: list[StreamEdge] = []
        for operator in operators:
            inputs = [
                (nodes[upstream.id], partitioning)
                for input_transformation in operator.inputs
                for upstream, partitioning in _resolve_inputs(input_transformation, None)
            ]
            node = _resolve_node(
                operator,
                [upstream for upstream, _ in inputs],
                default_parallelism,
                configured_max,
                default_timeout,
            )
            nodes[node.id] = node
            for index, (upstream, partitioning) in enumerate(inputs):
                edges.append(
                    StreamEdge(
                        upstream.id, node.id, _edge_partitioner(upstream, node, partitioning), index
                    )
                )
        return cls(job_name, list(nodes.values()), edges, config, chaining_enabled=chaining_enabled)

    # -- queries ----------------------------------------------------------------------

    def node(self, node_id: int) -> StreamNode:
        """The node with this id.

        Raises:
            IllegalStateError: No such node.
        """
        try:
            return self._nodes_by_id[node_id]
        except KeyError:
            msg = f"no stream node {node_id} in job {self.job_name!r}"
            raise IllegalStateError(msg) from None

    def in_edges(self, node_id: int) -> list[StreamEdge]:
        """The inputs of a node, in input order."""
        return list(self._in[node_id])

    def out_edges(self, node_id: int) -> list[StreamEdge]:
        """The outputs of a node."""
        return list(self._out[node_id])

    def is_chainable(self, edge: StreamEdge) -> bool:
        """Whether both ends of ``edge`` run in one task (the rule in the module doc)."""
        upstream = self._nodes_by_id[edge.source_id]
        downstream = self._nodes_by_id[edge.target_id]
        return (
            self.chaining_enabled
            and len(self._in[downstream.id]) == 1
            and len(self._out[upstream.id]) == 1
            and edge.partitioner.kind == "forward"
            and upstream.parallelism == downstream.parallelism
            and upstream.slot_sharing_group == downstream.slot_sharing_group
            and upstream.chaining_strategy is not ChainingStrategy.NEVER
            and downstream.chaining_strategy is ChainingStrategy.ALWAYS
        )

    def chains(self) -> list[list[StreamNode]]:
        """The operator chains, head first, in topological order of their heads."""
        chains: list[list[StreamNode]] = []
        for node in self.nodes:
            edges_in = self._in[node.id]
            if len(edges_in) == 1 and self.is_chainable(edges_in[0]):
                continue
            chain = [node]
            while True:
                edges_out = self._out[chain[-1].id]
                if len(edges_out) != 1 or not self.is_chainable(edges_out[0]):
                    break
                chain.append(self._nodes_by_id[edges_out[0].target_id])
            chains.append(chain)
        return chains

    # -- the job graph ----------------------------------------------------------------

    def get_job_graph(self, job_id: JobID | None = None) -> JobGraph:
        """Chains the nodes into a JobGraph: a vertex per chain, an edge per exchange."""
        vertex_of: dict[int, JobVertex] = {}
        vertices: list[JobVertex] = []
        chains = self.chains()
        names = _unique_names([CHAIN_SEPARATOR.join(n.name for n in chain) for chain in chains])
        for chain, name in zip(chains, names, strict=True):
            head, tail = chain[0], chain[-1]
            vertex = JobVertex(
                id=JobVertexID.generate(),
                name=name,
                operators=tuple(OperatorSpec(node.name, node.factory, node.id) for node in chain),
                parallelism=head.parallelism,
                max_parallelism=head.max_parallelism,
                slot_sharing_group=head.slot_sharing_group,
                # Only the tail of a chain writes to the network (chains are linear).
                buffer_timeout_ms=tail.buffer_timeout_ms,
            )
            vertices.append(vertex)
            for node in chain:
                vertex_of[node.id] = vertex
        job_edges = [
            JobEdge(
                source=vertex_of[edge.source_id].id,
                target=vertex_of[edge.target_id].id,
                partitioner=edge.partitioner,
                dataset_id=IntermediateDataSetID.generate(),
                serializer=self._nodes_by_id[edge.source_id].serializer,
                target_input=edge.input_index,
            )
            for edge in self.edges
            if not self.is_chainable(edge)
        ]
        return JobGraph(
            job_id=JobID.generate() if job_id is None else job_id,
            name=self.job_name,
            vertices=tuple(vertices),
            edges=tuple(job_edges),
            config=_flat_config(self.config),
        )

    def __repr__(self) -> str:
        return f"StreamGraph({self.job_name!r}, nodes={len(self.nodes)}, edges={len(self.edges)})"


def _resolve_node(
    operator: OperatorTransformation,
    inputs: Sequence[StreamNode],
    default_parallelism: int,
    configured_max: int,
    default_timeout: int,
) -> StreamNode:
    parallelism = operator.parallelism
    if parallelism is None:
        parallelism = default_parallelism if operator.parallel else 1
    max_parallelism = operator.max_parallelism
    if max_parallelism is None:
        if configured_max == -1:
            max_parallelism = compute_default_max_parallelism(parallelism)
        else:
            max_parallelism = configured_max
    if max_parallelism < parallelism:
        reason = (
            f"The maximum parallelism ({max_parallelism}) of the stream node {operator} is "
            f"smaller than the parallelism ({parallelism}). Increase the maximum "
            "parallelism or decrease the parallelism of this operator."
        )
        raise ConfigurationError(MAX_PARALLELISM.key, max_parallelism, reason)
    group = operator.slot_sharing_group
    if group is None:
        # Flink: a node without a group of its own joins its inputs' group if they all
        # share one, else the default group.
        groups = {upstream.slot_sharing_group for upstream in inputs}
        group = groups.pop() if len(groups) == 1 else DEFAULT_SLOT_SHARING_GROUP
    timeout = default_timeout if operator.buffer_timeout_ms is None else operator.buffer_timeout_ms
    serializer: TypeSerializer[object] = (
        GenericSerializer()
        if operator.output_type is None
        else serializer_for(operator.output_type)
    )
    return StreamNode(
        id=operator.id,
        name=operator.operator_name,
        factory=operator.factory,
        parallelism=parallelism,
        max_parallelism=max_parallelism,
        slot_sharing_group=group,
        buffer_timeout_ms=timeout,
        chaining_strategy=operator.chaining_strategy,
        serializer=serializer,
    )


def _edge_partitioner(
    upstream: StreamNode, downstream: StreamNode, partitioning: Partitioning | None
) -> PartitionerSpec:
    if partitioning is None:
        # Flink's default: FORWARD between equal parallelism, REBALANCE otherwise.
        kind = "forward" if upstream.parallelism == downstream.parallelism else "rebalance"
        partitioning = Partitioning(kind)
    if partitioning.kind == "forward" and upstream.parallelism != downstream.parallelism:
        msg = (
            f"Forward partitioning does not allow change of parallelism. Upstream operation: "
            f"{upstream} parallelism: {upstream.parallelism}, downstream operation: "
            f"{downstream} parallelism: {downstream.parallelism} You must use another "
            "partitioning strategy, such as broadcast, rebalance, shuffle or global."
        )
        raise IllegalStateError(msg)
    # Key groups are the downstream node's: it owns the keyed state.
    return partitioning.to_spec(downstream.max_parallelism)


def _flat_config(config: Configuration) -> dict[str, str]:
    """The configuration as ``key -> str`` pairs that parse back to the same values."""
    pairs = (entry.partition("=") for entry in config.to_dynamic_properties())
    return {key: value for key, _, value in pairs}


def _unique_names(names: Sequence[str]) -> list[str]:
    """``names`` with the second and later of each name made unique: "Map [2]".

    Tasks and their metrics go by name ("Map (1/2)"): two vertices of one name, as two
    unnamed maps in separate chains make, would share theirs. A generated name skips
    any name the job already has.
    """
    taken: set[str] = set()
    given = set(names)
    unique = []
    for name in names:
        candidate, number = name, 1
        while candidate in taken or (number > 1 and candidate in given):
            number += 1
            candidate = f"{name} [{number}]"
        taken.add(candidate)
        unique.append(candidate)
    return unique
