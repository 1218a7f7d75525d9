"""ResultPartitionManager: the partitions a TaskManager produces, by id."""

from __future__ import annotations

import threading
from collections.abc import Callable

from penstock.errors import IllegalStateError, PartitionNotFoundError
from penstock.ids import ResultPartitionID
from penstock.partition.result_partition import ResultPartition
from penstock.partition.subpartition import BufferAvailabilityListener
from penstock.partition.view import PipelinedSubpartitionView

__all__ = ["PartitionRegistrationListener", "ResultPartitionManager"]

PartitionRegistrationListener = Callable[[ResultPartition], None]
"""Called (on the registering thread) when a partition someone waits for is registered."""


class ResultPartitionManager:
    """Registers produced partitions, hands out their views and releases them.

    A pipelined partition is released as soon as every subpartition has been read to its
    end. A consumer may ask for a partition before its producer registered it (the
    producer may still be deploying): ``create_subpartition_view`` then raises
    ``PartitionNotFoundError``, and ``add_registration_listener`` lets a network server
    wait for it instead.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._partitions: dict[ResultPartitionID, ResultPartition] = {}
        self._listeners: dict[ResultPartitionID, list[PartitionRegistrationListener]] = {}
        self._shut_down = False

    def register_result_partition(self, partition: ResultPartition) -> None:
        """Makes ``partition`` readable by id and releases it once fully consumed.

        Raises:
            IllegalStateError: A partition with that id is registered already, or the
                manager was shut down.
        """
        with self._lock:
            if self._shut_down:
                msg = "the ResultPartitionManager has been shut down"
                raise IllegalStateError(msg)
            if partition.partition_id in self._partitions:
                msg = f"Result partition {partition.partition_id} already registered."
                raise IllegalStateError(msg)
            self._partitions[partition.partition_id] = partition
            listeners = self._listeners.pop(partition.partition_id, [])
        partition.add_consumption_listener(
            lambda consumed: self.release_partition(consumed.partition_id)
        )
        for listener in listeners:
            listener(partition)

    def add_registration_listener(
        self, partition_id: ResultPartitionID, listener: PartitionRegistrationListener
    ) -> ResultPartition | None:
        """Returns the partition if registered; otherwise calls ``listener`` when it is."""
        with self._lock:
            partition = self._partitions.get(partition_id)
            if partition is None:
                self._listeners.setdefault(partition_id, []).append(listener)
            return partition

    def remove_registration_listener(
        self, partition_id: ResultPartitionID, listener: PartitionRegistrationListener
    ) -> None:
        with self._lock:
            listeners = self._listeners.get(partition_id, [])
            if listener in listeners:
                listeners.remove(listener)
            if not listeners:
                self._listeners.pop(partition_id, None)

    def get(self, partition_id: ResultPartitionID) -> ResultPartition:
        """The registered partition.

        Raises:
            PartitionNotFoundError: No partition with that id is registered.
        """
        with self._lock:
            partition = self._partitions.get(partition_id)
        if partition is None:
            raise PartitionNotFoundError(partition_id)
        return partition

    def create_subpartition_view(
        self,
        partition_id: ResultPartitionID,
        subpartition_index: int,
        listener: BufferAvailabilityListener,
    ) -> PipelinedSubpartitionView:
        """The reader of one subpartition of a registered partition.

        Raises:
            PartitionNotFoundError: The partition is not (or no longer) registered.
            PartitionConsumedError: The subpartition already has a reader.
        """
        return self.get(partition_id).create_subpartition_view(subpartition_index, listener)

    def release_partition(
        self, partition_id: ResultPartitionID, cause: BaseException | None = None
    ) -> None:
        """Releases and forgets a partition (no-op if unknown)."""
        with self._lock:
            partition = self._partitions.pop(partition_id, None)
        if partition is not None:
            partition.release(cause)

    @property
    def partition_ids(self) -> list[ResultPartitionID]:
        with self._lock:
            return list(self._partitions)

    def shutdown(self) -> None:
        """Releases every partition; nothing can be registered afterwards."""
        with self._lock:
            self._shut_down = True
            partitions = list(self._partitions.values())
            self._partitions.clear()
            self._listeners.clear()
        for partition in partitions:
            partition.release()
