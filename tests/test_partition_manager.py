"""ResultPartitionManager: registration, lookup, listeners, release on consumption, shutdown."""

from __future__ import annotations

import pytest

from penstock.buffer.buffer import DataType
from penstock.config import Configuration
from penstock.errors import (
    IllegalStateError,
    PartitionConsumedError,
    PartitionNotFoundError,
    PartitionReleasedError,
    ProducerFailedError,
)
from penstock.ids import ResultPartitionID
from penstock.memory.network_pool import NetworkBufferPool
from penstock.partition.manager import ResultPartitionManager
from penstock.partition.result_partition import ResultPartition
from penstock.shuffle import ResultPartitionDeploymentDescriptor, ShuffleEnvironment


class RecordingListener:
    """A BufferAvailabilityListener that counts notifications."""

    def __init__(self) -> None:
        self.count = 0

    def notify_data_available(self) -> None:
        self.count += 1


@pytest.fixture
def network() -> NetworkBufferPool:
    return NetworkBufferPool(64, 32)


def new_partition(network: NetworkBufferPool, num_subpartitions: int = 2) -> ResultPartition:
    return ResultPartition.create(ResultPartitionID.generate(), num_subpartitions, network)


def test_register_and_get(network: NetworkBufferPool) -> None:
    manager = ResultPartitionManager()
    first = new_partition(network)
    second = new_partition(network)
    manager.register_result_partition(first)
    manager.register_result_partition(second)
    assert manager.get(first.partition_id) is first
    assert manager.get(second.partition_id) is second
    assert set(manager.partition_ids) == {first.partition_id, second.partition_id}


def test_unknown_partition_is_not_found_and_named(network: NetworkBufferPool) -> None:
    manager = ResultPartitionManager()
    manager.register_result_partition(new_partition(network))
    unknown = ResultPartitionID.generate()
    with pytest.raises(PartitionNotFoundError) as info:
        manager.get(unknown)
    assert info.value.partition_id == unknown
    assert str(info.value) == f"Partition {unknown} not found."
    with pytest.raises(PartitionNotFoundError, match=str(unknown)):
        manager.create_subpartition_view(unknown, 0, RecordingListener())


def test_duplicate_registration_is_refused(network: NetworkBufferPool) -> None:
    manager = ResultPartitionManager()
    partition = new_partition(network)
    manager.register_result_partition(partition)
    twin = ResultPartition(partition.partition_id, 1, network.create_buffer_pool(2, 2))
    with pytest.raises(IllegalStateError, match="already registered") as info:
        manager.register_result_partition(twin)
    assert str(partition.partition_id) in str(info.value)
    assert manager.get(partition.partition_id) is partition


def test_a_partition_the_shuffle_cannot_register_gives_its_pool_back() -> None:
    shuffle = ShuffleEnvironment.from_configuration(Configuration(), name="tm")
    try:
        descriptor = ResultPartitionDeploymentDescriptor(ResultPartitionID.generate(), 2)
        first = shuffle.create_result_partition(descriptor)
        with pytest.raises(IllegalStateError, match="already registered"):
            shuffle.create_result_partition(descriptor)
        assert shuffle.network_pool.number_of_pools == 1
        first.release()
        first.close()
        assert shuffle.network_pool.number_of_pools == 0
    finally:
        shuffle.close()


def test_a_shuffle_closed_before_it_started_cannot_start() -> None:
    shuffle = ShuffleEnvironment.from_configuration(Configuration(), name="tm")
    shuffle.close()
    with pytest.raises(IllegalStateError, match="closed"):
        shuffle.start()


def test_registration_listener_is_called_on_register(network: NetworkBufferPool) -> None:
    manager = ResultPartitionManager()
    partition = new_partition(network)
    seen: list[ResultPartition] = []
    others: list[ResultPartition] = []
    assert manager.add_registration_listener(partition.partition_id, seen.append) is None
    assert manager.add_registration_listener(partition.partition_id, seen.append) is None
    assert manager.add_registration_listener(ResultPartitionID.generate(), others.append) is None
    manager.register_result_partition(partition)
    assert seen == [partition, partition]
    assert others == []
    # Once registered, the partition is returned at once and the listener not kept.
    late: list[ResultPartition] = []
    assert manager.add_registration_listener(partition.partition_id, late.append) is partition
    assert late == []


def test_removed_registration_listener_is_not_called(network: NetworkBufferPool) -> None:
    manager = ResultPartitionManager()
    partition = new_partition(network)
    seen: list[ResultPartition] = []
    kept: list[ResultPartition] = []
    manager.add_registration_listener(partition.partition_id, seen.append)
    manager.add_registration_listener(partition.partition_id, kept.append)
    manager.remove_registration_listener(partition.partition_id, seen.append)
    manager.remove_registration_listener(partition.partition_id, seen.append)  # no-op
    manager.remove_registration_listener(ResultPartitionID.generate(), seen.append)  # no-op
    manager.register_result_partition(partition)
    assert seen == []
    assert kept == [partition]


def test_create_subpartition_view_reads_the_registered_partition(
    network: NetworkBufferPool,
) -> None:
    manager = ResultPartitionManager()
    partition = new_partition(network)
    manager.register_result_partition(partition)
    listener = RecordingListener()
    view = manager.create_subpartition_view(partition.partition_id, 1, listener)
    partition.emit_record(b"hello", 1)
    partition.flush(1)
    assert listener.count == 1
    result = view.get_next_buffer()
    assert result is not None
    assert bytes(result.buffer.memory) == b"hello"
    result.buffer.recycle()
    with pytest.raises(PartitionConsumedError, match="can only be consumed once"):
        manager.create_subpartition_view(partition.partition_id, 1, RecordingListener())


def test_partition_is_released_once_every_view_is_consumed(network: NetworkBufferPool) -> None:
    manager = ResultPartitionManager()
    partition = new_partition(network, num_subpartitions=3)
    manager.register_result_partition(partition)
    views = [
        manager.create_subpartition_view(partition.partition_id, i, RecordingListener())
        for i in range(3)
    ]
    partition.emit_record(b"x", 0)
    partition.finish()
    for view in views[:2]:
        while (result := view.get_next_buffer()) is not None:
            result.buffer.recycle()
        view.release_all_resources()
    assert not partition.is_released
    assert manager.get(partition.partition_id) is partition
    last = views[2].get_next_buffer()
    assert last is not None
    assert last.buffer.data_type is DataType.END_OF_PARTITION
    last.buffer.recycle()
    views[2].release_all_resources()
    assert partition.is_released
    assert partition.partition_id not in manager.partition_ids
    with pytest.raises(PartitionNotFoundError):
        manager.get(partition.partition_id)
    partition.close()
    assert network.available_segments == network.total_segments


def test_release_partition_with_cause_fails_readers(network: NetworkBufferPool) -> None:
    manager = ResultPartitionManager()
    partition = new_partition(network)
    manager.register_result_partition(partition)
    view = manager.create_subpartition_view(partition.partition_id, 0, RecordingListener())
    cause = RuntimeError("cancelled upstream")
    manager.release_partition(partition.partition_id, cause)
    assert partition.is_released
    with pytest.raises(ProducerFailedError) as info:
        view.get_next_buffer()
    assert info.value.__cause__ is cause
    with pytest.raises(PartitionNotFoundError):
        manager.get(partition.partition_id)
    manager.release_partition(partition.partition_id)  # unknown now: a no-op


def test_shutdown_releases_every_partition(network: NetworkBufferPool) -> None:
    manager = ResultPartitionManager()
    partitions = [new_partition(network) for _ in range(3)]
    for partition in partitions:
        manager.register_result_partition(partition)
        partition.emit_record(b"queued", 0)
    view = manager.create_subpartition_view(partitions[0].partition_id, 0, RecordingListener())
    waiting: list[ResultPartition] = []
    manager.add_registration_listener(ResultPartitionID.generate(), waiting.append)
    manager.shutdown()
    assert all(partition.is_released for partition in partitions)
    assert manager.partition_ids == []
    with pytest.raises(PartitionReleasedError):
        view.get_next_buffer()
    with pytest.raises(IllegalStateError, match="shut down"):
        manager.register_result_partition(new_partition(network))
    assert waiting == []
    for partition in partitions:
        partition.close()
