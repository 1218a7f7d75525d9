"""Identifiers of jobs, vertices, partitions and channels, with Flink's wire sizes.

An ``AbstractID`` is 16 bytes (two big-endian int64 halves, lower first, as Flink writes
them). Composite ids nest them exactly as Flink does, so their encoded sizes match the
protocol: an ``IntermediateResultPartitionID`` is 20 bytes, an ``ExecutionAttemptID`` 40
and a ``ResultPartitionID`` 60.
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass
from typing import ClassVar, Final, Self

__all__ = [
    "AbstractID",
    "ExecutionAttemptID",
    "ExecutionGraphID",
    "InputChannelID",
    "IntermediateDataSetID",
    "IntermediateResultPartitionID",
    "JobID",
    "JobVertexID",
    "ResultPartitionID",
]

_HALVES: Final = struct.Struct(">qq")
_INT: Final = struct.Struct(">i")


@dataclass(frozen=True, slots=True)
class AbstractID:
    """A random 128-bit id, written as two big-endian signed 64-bit halves."""

    lower: int
    upper: int

    SIZE: ClassVar[int] = 16

    @classmethod
    def generate(cls) -> Self:
        """Returns a new random id."""
        lower, upper = _HALVES.unpack(os.urandom(16))
        return cls(lower, upper)

    def to_bytes(self) -> bytes:
        return _HALVES.pack(self.lower, self.upper)

    @classmethod
    def from_bytes(cls, data: bytes | memoryview, offset: int = 0) -> Self:
        lower, upper = _HALVES.unpack_from(data, offset)
        return cls(lower, upper)

    def __str__(self) -> str:
        return f"{self.upper & 0xFFFFFFFFFFFFFFFF:016x}{self.lower & 0xFFFFFFFFFFFFFFFF:016x}"


@dataclass(frozen=True, slots=True)
class JobID(AbstractID):
    """Identifies a job."""


@dataclass(frozen=True, slots=True)
class JobVertexID(AbstractID):
    """Identifies a vertex (a chain of operators) of a job graph."""


@dataclass(frozen=True, slots=True)
class IntermediateDataSetID(AbstractID):
    """Identifies the result a vertex produces."""


@dataclass(frozen=True, slots=True)
class ExecutionGraphID(AbstractID):
    """Identifies one execution graph of a job."""


@dataclass(frozen=True, slots=True)
class InputChannelID(AbstractID):
    """Identifies one input channel of a consuming task; multiplexes a connection."""


@dataclass(frozen=True, slots=True)
class IntermediateResultPartitionID:
    """One partition of an intermediate data set: the output of one producer subtask."""

    dataset: IntermediateDataSetID
    partition_num: int

    SIZE: ClassVar[int] = 20

    def to_bytes(self) -> bytes:
        return self.dataset.to_bytes() + _INT.pack(self.partition_num)

    @classmethod
    def from_bytes(cls, data: bytes | memoryview, offset: int = 0) -> Self:
        dataset = IntermediateDataSetID.from_bytes(data, offset)
        (num,) = _INT.unpack_from(data, offset + 16)
        return cls(dataset, num)

    def __str__(self) -> str:
        return f"{self.dataset}#{self.partition_num}"


@dataclass(frozen=True, slots=True)
class ExecutionAttemptID:
    """One attempt to run one subtask of a vertex."""

    graph: ExecutionGraphID
    vertex: JobVertexID
    subtask: int
    attempt: int

    SIZE: ClassVar[int] = 40

    @classmethod
    def generate(cls, subtask: int = 0, attempt: int = 0) -> Self:
        """Returns an attempt id under fresh random graph and vertex ids."""
        return cls(ExecutionGraphID.generate(), JobVertexID.generate(), subtask, attempt)

    def to_bytes(self) -> bytes:
        return (
            self.graph.to_bytes()
            + self.vertex.to_bytes()
            + _INT.pack(self.subtask)
            + _INT.pack(self.attempt)
        )

    @classmethod
    def from_bytes(cls, data: bytes | memoryview, offset: int = 0) -> Self:
        graph = ExecutionGraphID.from_bytes(data, offset)
        vertex = JobVertexID.from_bytes(data, offset + 16)
        (subtask,) = _INT.unpack_from(data, offset + 32)
        (attempt,) = _INT.unpack_from(data, offset + 36)
        return cls(graph, vertex, subtask, attempt)

    def __str__(self) -> str:
        return f"{self.graph}_{self.vertex}_{self.subtask}_{self.attempt}"


@dataclass(frozen=True, slots=True)
class ResultPartitionID:
    """A result partition as produced by one execution attempt."""

    partition_id: IntermediateResultPartitionID
    producer_id: ExecutionAttemptID

    SIZE: ClassVar[int] = 60

    @classmethod
    def generate(cls, partition_num: int = 0) -> Self:
        """Returns an id with fresh random components, for tests and benchmarks."""
        return cls(
            IntermediateResultPartitionID(IntermediateDataSetID.generate(), partition_num),
            ExecutionAttemptID.generate(partition_num),
        )

    def to_bytes(self) -> bytes:
        return self.partition_id.to_bytes() + self.producer_id.to_bytes()

    @classmethod
    def from_bytes(cls, data: bytes | memoryview, offset: int = 0) -> Self:
        return cls(
            IntermediateResultPartitionID.from_bytes(data, offset),
            ExecutionAttemptID.from_bytes(data, offset + 20),
        )

    def __str__(self) -> str:
        return f"{self.partition_id}@{self.producer_id}"
