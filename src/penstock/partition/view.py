"""PipelinedSubpartitionView: the one reader's handle on a subpartition."""

from __future__ import annotations

from typing import TYPE_CHECKING

from penstock.errors import PartitionReleasedError, ProducerFailedError

if TYPE_CHECKING:
    from penstock.partition.subpartition import (
        BufferAndBacklog,
        BufferAvailabilityListener,
        PipelinedSubpartition,
    )

__all__ = ["PipelinedSubpartitionView"]


class PipelinedSubpartitionView:
    """Reads one subpartition for one consumer: a local channel or a network reader.

    ``get_next_buffer()`` never waits: it returns ``None`` when nothing is readable, and
    the listener is told when that changes. When the producer failed, or the partition
    was released before it was fully read, it raises instead, so a failure is never
    mistaken for the end of the data.
    """

    __slots__ = ("_listener", "_released", "subpartition")

    def __init__(
        self, subpartition: PipelinedSubpartition, listener: BufferAvailabilityListener
    ) -> None:
        self.subpartition = subpartition
        self._listener = listener
        self._released = False

    def get_next_buffer(self) -> BufferAndBacklog | None:
        """The next buffer, or None if none is readable now.

        Raises:
            ProducerFailedError: The producing task failed; its failure is the cause.
            PartitionReleasedError: The partition was released before it was read.
        """
        result = self.subpartition.poll_buffer()
        if result is None and self.subpartition.is_released:
            self.check_error()
            msg = f"{self} has been released before it was fully consumed."
            raise PartitionReleasedError(msg)
        return result

    def check_error(self) -> None:
        """Raises the producer's failure, if it failed."""
        cause = self.subpartition.parent.failure_cause
        if cause is not None:
            msg = f"The producer of {self.subpartition.parent.partition_id} failed."
            raise ProducerFailedError(msg) from cause

    def notify_data_available(self) -> None:
        self._listener.notify_data_available()

    def get_availability_and_backlog(self, has_credit: bool) -> tuple[bool, int]:
        return self.subpartition.get_availability_and_backlog(has_credit)

    @property
    def has_only_partial_data(self) -> bool:
        """Whether all there is to read is the flushed part of the open buffer."""
        return self.subpartition.has_only_partial_data

    def is_available(self, has_credit: bool = True) -> bool:
        return self.subpartition.get_availability_and_backlog(has_credit)[0]

    def resume_consumption(self) -> None:
        self.subpartition.resume_consumption()

    @property
    def is_released(self) -> bool:
        return self._released or self.subpartition.is_released

    @property
    def failure_cause(self) -> BaseException | None:
        return self.subpartition.parent.failure_cause

    def release_all_resources(self) -> None:
        """Ends the reading (after end of partition, or on cancellation)."""
        if not self._released:
            self._released = True
            self.subpartition.parent.on_consumed_subpartition(self.subpartition.index)

    def __repr__(self) -> str:
        return (
            f"PipelinedSubpartitionView(subpartition {self.subpartition.index} of "
            f"{self.subpartition.parent.partition_id})"
        )
