"""Deployment: a JobGraph expanded into one descriptor per subtask (the execution graph).

Each subtask gets a ``TaskDeploymentDescriptor`` saying what to run (its vertex's
operator chain), which partitions to produce (one per outgoing edge, with as many
subpartitions as consumers it connects to) and which to consume (one input gate per
incoming edge, one channel per connected producer, each naming the producer's data
address so the TaskManager picks a local or a remote channel).

Edges connect producers and consumers as Flink's EdgeManagerBuildUtil does:
all-to-all for rebalance, hash, broadcast, shuffle, global and custom (consumer j
reads subpartition j of every producer); pointwise for forward and rescale (each
producer feeds a contiguous range of consumers, or each consumer reads a contiguous
range of producers).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from penstock.ids import (
    ExecutionAttemptID,
    ExecutionGraphID,
    IntermediateResultPartitionID,
    JobID,
    ResultPartitionID,
)
from penstock.runtime.job_graph import JobEdge, JobGraph, JobVertex, PartitionerSpec
from penstock.serialization.types import TypeSerializer
from penstock.shuffle import (
    InputGateDeploymentDescriptor,
    ResultPartitionDeploymentDescriptor,
    ShuffleDescriptor,
)

__all__ = [
    "ProducedPartition",
    "TaskDeploymentDescriptor",
    "build_deployment",
    "connections",
    "subtask_task_name",
]

DataAddress = tuple[str, int]


@dataclass(frozen=True, slots=True)
class ProducedPartition:
    """One partition a subtask writes: for one outgoing edge."""

    descriptor: ResultPartitionDeploymentDescriptor
    partitioner: PartitionerSpec
    serializer: TypeSerializer[object]
    buffer_timeout_ms: int


@dataclass(frozen=True, slots=True)
class ConsumedGate:
    """One input gate a subtask reads: for one incoming edge."""

    descriptor: InputGateDeploymentDescriptor
    serializer: TypeSerializer[object]
    input_index: int


@dataclass(frozen=True, slots=True)
class TaskDeploymentDescriptor:
    """Everything a TaskManager needs to run one subtask."""

    job_id: JobID
    job_name: str
    vertex: JobVertex
    subtask_index: int
    attempt: int
    execution_id: ExecutionAttemptID
    task_name: str
    produced: tuple[ProducedPartition, ...]
    consumed: tuple[ConsumedGate, ...]
    config: Mapping[str, str]

    @property
    def parallelism(self) -> int:
        return self.vertex.parallelism


def subtask_task_name(vertex: JobVertex, subtask_index: int) -> str:
    """Flink's task name: "<chain name> (<index+1>/<parallelism>)"."""
    return f"{vertex.name} ({subtask_index + 1}/{vertex.parallelism})"


def connections(edge_kind_pointwise: bool, producers: int, consumers: int) -> list[list[int]]:
    """For each producer, the consumers it feeds, in subpartition order.

    All-to-all: every producer feeds every consumer. Pointwise: with equal counts,
    producer i feeds consumer i; with fewer producers, each feeds a contiguous range of
    consumers; with more producers, a contiguous range of producers feeds each consumer.
    """
    if not edge_kind_pointwise:
        return [list(range(consumers)) for _ in range(producers)]
    if producers == consumers:
        return [[index] for index in range(producers)]
    if producers < consumers:
        # Flink rounds the range bounds up here (EdgeManagerBuildUtil.connectPointwise),
        # so the first producers feed the larger ranges: 2 -> 3 gives [0, 1] and [2].
        result = []
        for producer in range(producers):
            start = -(-producer * consumers // producers)
            end = -(-(producer + 1) * consumers // producers)
            result.append(list(range(start, end)))
        return result
    result = [[] for _ in range(producers)]
    for consumer in range(consumers):
        start = consumer * producers // consumers
        end = (consumer + 1) * producers // consumers
        for producer in range(start, end):
            result[producer].append(consumer)
    return result


def build_deployment(
    job: JobGraph,
    locations: Mapping[tuple[int, int], DataAddress],
    attempt: int = 0,
) -> list[TaskDeploymentDescriptor]:
    """One descriptor per subtask, in topological order.

    Args:
        job: The job.
        locations: For each (vertex position in ``job.vertices``, subtask index), the
            data address of the TaskManager the subtask is deployed to.
        attempt: The execution attempt number.
    """
    graph_id = ExecutionGraphID.generate()
    execution_ids = {
        (position, index): ExecutionAttemptID(graph_id, vertex.id, index, attempt)
        for position, vertex in enumerate(job.vertices)
        for index in range(vertex.parallelism)
    }
    positions = {vertex.id: position for position, vertex in enumerate(job.vertices)}
    # For every edge: per producer, its consumers; the partition ids.
    wiring: dict[int, list[list[int]]] = {}
    partition_ids: dict[tuple[int, int], ResultPartitionID] = {}
    for edge_index, edge in enumerate(job.edges):
        source = job.vertex(edge.source)
        target = job.vertex(edge.target)
        wiring[edge_index] = connections(
            edge.partitioner.is_pointwise, source.parallelism, target.parallelism
        )
        for producer in range(source.parallelism):
            partition_ids[edge_index, producer] = ResultPartitionID(
                IntermediateResultPartitionID(edge.dataset_id, producer),
                execution_ids[positions[edge.source], producer],
            )
    descriptors = []
    for position, vertex in enumerate(job.vertices):
        for index in range(vertex.parallelism):
            produced = tuple(
                ProducedPartition(
                    ResultPartitionDeploymentDescriptor(
                        partition_ids[edge_index, index], len(wiring[edge_index][index])
                    ),
                    edge.partitioner,
                    edge.serializer,
                    vertex.buffer_timeout_ms,
                )
                for edge_index, edge in enumerate(job.edges)
                if edge.source == vertex.id
            )
            consumed = tuple(
                _consumed_gate(
                    edge,
                    wiring[edge_index],
                    index,
                    edge_index,
                    partition_ids,
                    locations,
                    positions[edge.source],
                )
                for edge_index, edge in sorted(
                    ((i, e) for i, e in enumerate(job.edges) if e.target == vertex.id),
                    key=lambda pair: pair[1].target_input,
                )
            )
            descriptors.append(
                TaskDeploymentDescriptor(
                    job_id=job.job_id,
                    job_name=job.name,
                    vertex=vertex,
                    subtask_index=index,
                    attempt=attempt,
                    execution_id=execution_ids[position, index],
                    task_name=subtask_task_name(vertex, index),
                    produced=produced,
                    consumed=consumed,
                    config=dict(job.config),
                )
            )
    return descriptors


def _consumed_gate(
    edge: JobEdge,
    wiring: list[list[int]],
    consumer: int,
    edge_index: int,
    partition_ids: Mapping[tuple[int, int], ResultPartitionID],
    locations: Mapping[tuple[int, int], DataAddress],
    source_position: int,
) -> ConsumedGate:
    channels = [
        ShuffleDescriptor(
            partition_ids[edge_index, producer],
            locations[source_position, producer],
            consumers.index(consumer),
        )
        for producer, consumers in enumerate(wiring)
        if consumer in consumers
    ]
    return ConsumedGate(
        InputGateDeploymentDescriptor(0, tuple(channels)), edge.serializer, edge.target_input
    )
