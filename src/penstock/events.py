"""Runtime events: the control messages that travel in line with records.

Events share the FIFO of a subpartition with data buffers, so they stay ordered with the
records around them, and they cost no credit. ``penstock.serialization.event_serializer``
turns them into bytes with Flink's layout; these classes are plain values.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import IntEnum
from typing import Final

__all__ = [
    "END_OF_CHANNEL_STATE",
    "END_OF_PARTITION",
    "END_OF_SEGMENT",
    "END_OF_SUPERSTEP",
    "NO_ALIGNED_CHECKPOINT_TIMEOUT",
    "AlignmentType",
    "CancelCheckpointMarker",
    "CheckpointBarrier",
    "CheckpointOptions",
    "CheckpointType",
    "EndOfChannelStateEvent",
    "EndOfData",
    "EndOfPartitionEvent",
    "EndOfSegmentEvent",
    "EndOfSuperstepEvent",
    "EventAnnouncement",
    "RecoveryMetadata",
    "RuntimeEvent",
    "SavepointFormatType",
    "StopMode",
    "SubtaskConnectionDescriptor",
    "UserEvent",
]

NO_ALIGNED_CHECKPOINT_TIMEOUT: Final = 2**63 - 1
"""The aligned-checkpoint timeout of a barrier that never times out (Flink's Long.MAX_VALUE)."""


class StopMode(IntEnum):
    """How a source stops: drain (flush windows, fire timers) or stop at once."""

    DRAIN = 0
    NO_DRAIN = 1


class CheckpointType(IntEnum):
    """The kind of snapshot a barrier triggers; the value is the byte Flink sends."""

    CHECKPOINT = 0
    SAVEPOINT = 1
    SAVEPOINT_SUSPEND = 2
    SAVEPOINT_TERMINATE = 3
    FULL_CHECKPOINT = 4

    @property
    def is_savepoint(self) -> bool:
        return self in (
            CheckpointType.SAVEPOINT,
            CheckpointType.SAVEPOINT_SUSPEND,
            CheckpointType.SAVEPOINT_TERMINATE,
        )


class SavepointFormatType(IntEnum):
    """The format of a savepoint's state; sent only with savepoint barriers."""

    CANONICAL = 0
    NATIVE = 1


class AlignmentType(IntEnum):
    """How a barrier is aligned at the inputs of a task (Flink's ordinals)."""

    AT_LEAST_ONCE = 0
    ALIGNED = 1
    UNALIGNED = 2
    FORCED_ALIGNED = 3


@dataclass(frozen=True, slots=True)
class CheckpointOptions:
    """How a checkpoint is taken.

    Attributes:
        checkpoint_type: Checkpoint, savepoint (and what follows it) or full checkpoint.
        target_location: Where the snapshot goes; None for the default location.
        alignment: How the barrier is aligned at the inputs.
        aligned_checkpoint_timeout: Milliseconds an aligned barrier may wait before it
            turns unaligned; ``NO_ALIGNED_CHECKPOINT_TIMEOUT`` (or 0) never.
        savepoint_format: The state format of a savepoint; ignored by checkpoints.
    """

    checkpoint_type: CheckpointType = CheckpointType.CHECKPOINT
    target_location: bytes | None = None
    alignment: AlignmentType = AlignmentType.ALIGNED
    aligned_checkpoint_timeout: int = NO_ALIGNED_CHECKPOINT_TIMEOUT
    savepoint_format: SavepointFormatType = SavepointFormatType.CANONICAL

    @property
    def is_exactly_once(self) -> bool:
        return self.alignment is not AlignmentType.AT_LEAST_ONCE

    @property
    def is_unaligned(self) -> bool:
        return self.alignment is AlignmentType.UNALIGNED

    @property
    def needs_alignment(self) -> bool:
        """True when the inputs block on this barrier; savepoints always align."""
        return self.is_exactly_once and (self.checkpoint_type.is_savepoint or not self.is_unaligned)

    @property
    def is_timeoutable(self) -> bool:
        """True for an aligned barrier that turns unaligned after a timeout."""
        return (
            self.alignment is AlignmentType.ALIGNED
            and 0 < self.aligned_checkpoint_timeout < NO_ALIGNED_CHECKPOINT_TIMEOUT
        )


class RuntimeEvent:
    """The base of every event that travels in a channel."""

    __slots__ = ()


@dataclass(frozen=True, slots=True)
class EndOfPartitionEvent(RuntimeEvent):
    """The last event of a subpartition: nothing follows. Use ``END_OF_PARTITION``."""


@dataclass(frozen=True, slots=True)
class EndOfData(RuntimeEvent):
    """The producer emits no more records (it may still take a final checkpoint)."""

    stop_mode: StopMode = StopMode.DRAIN


@dataclass(frozen=True, slots=True)
class CheckpointBarrier(RuntimeEvent):
    """Separates the records of one checkpoint from those of the next."""

    checkpoint_id: int
    timestamp: int
    options: CheckpointOptions = field(default_factory=CheckpointOptions)


@dataclass(frozen=True, slots=True)
class CancelCheckpointMarker(RuntimeEvent):
    """Tells downstream tasks that a checkpoint was cancelled."""

    checkpoint_id: int


@dataclass(frozen=True, slots=True)
class EndOfSuperstepEvent(RuntimeEvent):
    """The end of a superstep of an iteration. Use ``END_OF_SUPERSTEP``."""


@dataclass(frozen=True, slots=True)
class EndOfChannelStateEvent(RuntimeEvent):
    """The recovered in-flight data of a channel has been sent. Use ``END_OF_CHANNEL_STATE``."""


@dataclass(frozen=True, slots=True)
class EventAnnouncement(RuntimeEvent):
    """Announces, with priority, an event queued behind ``sequence_number`` buffers."""

    sequence_number: int
    announced_event: RuntimeEvent


@dataclass(frozen=True, slots=True)
class SubtaskConnectionDescriptor(RuntimeEvent):
    """Names the subtasks a channel connects, for rescaled recovered state."""

    input_subtask_index: int
    output_subtask_index: int


@dataclass(frozen=True, slots=True)
class EndOfSegmentEvent(RuntimeEvent):
    """The end of a segment of a tiered (hybrid) partition. Use ``END_OF_SEGMENT``."""


@dataclass(frozen=True, slots=True)
class RecoveryMetadata(RuntimeEvent):
    """Recovery information: the subpartition that holds the final recovered buffer."""

    final_buffer_subpartition_id: int


@dataclass(frozen=True, slots=True)
class UserEvent(RuntimeEvent):
    """A task event of the job: a type name and the bytes the job gave it.

    It travels as Flink's "other" event (the name, then the bytes) and is never pickled:
    the receiving side decides what the bytes mean from ``type_name``.
    """

    type_name: str
    payload: bytes = b""


END_OF_PARTITION: Final = EndOfPartitionEvent()
END_OF_SUPERSTEP: Final = EndOfSuperstepEvent()
END_OF_CHANNEL_STATE: Final = EndOfChannelStateEvent()
END_OF_SEGMENT: Final = EndOfSegmentEvent()
