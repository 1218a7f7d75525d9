"""StreamTaskNetworkInput: how readable buffers become steps of the operator chain."""

from __future__ import annotations

from collections import deque
from concurrent.futures import Future
from typing import cast

import pytest

from penstock.buffer.buffer import Buffer
from penstock.consumer.input_gate import BufferOrEvent, InputGate
from penstock.errors import CorruptRecordError
from penstock.events import EndOfPartitionEvent
from penstock.memory.segment import MemorySegment
from penstock.serialization.record_deserializer import RecordDeserializer
from penstock.serialization.types import IntSerializer, TypeSerializer
from penstock.task.input_processor import (
    MAX_BUFFERS_PER_STEP,
    InputStatus,
    StreamTaskNetworkInput,
)

SERIALIZER = cast("TypeSerializer[object]", IntSerializer())


class Recycler:
    def __init__(self) -> None:
        self.recycled = 0

    def recycle(self, segment: MemorySegment) -> None:
        self.recycled += 1


class ScriptedGate:
    """A gate that hands out a fixed sequence of buffers and events."""

    def __init__(self, items: list[tuple[int, bytes | EndOfPartitionEvent]]) -> None:
        self.recycler = Recycler()
        self._items = deque(items)
        self.channels = 1 + max((channel for channel, _ in items), default=0)
        self._ended: set[int] = set()

    def poll_next(self) -> BufferOrEvent | None:
        if not self._items:
            return None
        channel, item = self._items.popleft()
        more = bool(self._items)
        if isinstance(item, EndOfPartitionEvent):
            self._ended.add(channel)
            return BufferOrEvent(None, item, channel, more)
        segment = MemorySegment(memoryview(bytearray(item)))
        return BufferOrEvent(Buffer.wrap(segment, len(item), self.recycler), None, channel, more)

    def is_finished(self) -> bool:
        return len(self._ended) == self.channels

    def get_available_future(self) -> Future[None]:
        return Future()

    @property
    def left(self) -> int:
        return len(self._items)


def frames(*records: int) -> bytes:
    return SERIALIZER.serialize_frames(list(records))


def network_input(gate: ScriptedGate, steps: list[list[object]]) -> StreamTaskNetworkInput:
    deserializers: list[RecordDeserializer[object]] = [
        RecordDeserializer(SERIALIZER, f"channel {index}") for index in range(gate.channels)
    ]
    processor = StreamTaskNetworkInput(cast("InputGate", gate), deserializers, steps.append)
    processor._step.size = 1 << 30  # a cheap chain: no slicing by time
    return processor


def test_readable_buffers_go_down_the_chain_in_one_step() -> None:
    gate = ScriptedGate([(0, frames(1, 2)), (1, frames(10)), (0, frames(3))])
    steps: list[list[object]] = []
    processor = network_input(gate, steps)

    assert processor.emit_next() is InputStatus.NOTHING_AVAILABLE
    assert steps == [[1, 2, 10, 3]]
    assert gate.recycler.recycled == 3
    assert processor.metrics.num_records_in == 4


def test_a_record_spanning_buffers_of_one_step_comes_out_whole() -> None:
    data = frames(7, 8, 9)
    gate = ScriptedGate([(0, data[:5]), (0, data[5:17]), (0, data[17:])])
    steps: list[list[object]] = []
    network_input(gate, steps).emit_next()
    assert steps == [[7, 8, 9]]


def test_a_step_takes_at_most_its_share_of_buffers() -> None:
    count = MAX_BUFFERS_PER_STEP + 3
    gate = ScriptedGate([(0, frames(n)) for n in range(count)])
    steps: list[list[object]] = []
    processor = network_input(gate, steps)

    assert processor.emit_next() is InputStatus.MORE_AVAILABLE
    assert steps == [list(range(MAX_BUFFERS_PER_STEP))]
    assert gate.left == 3
    assert processor.emit_next() is InputStatus.NOTHING_AVAILABLE
    assert steps[1] == list(range(MAX_BUFFERS_PER_STEP, count))


def test_a_slow_chain_gets_one_buffer_per_step() -> None:
    gate = ScriptedGate([(0, frames(1, 2)), (0, frames(3, 4))])
    steps: list[list[object]] = []
    processor = network_input(gate, steps)
    processor._step.size = 2  # a buffer's records already fill a step

    assert processor.emit_next() is InputStatus.MORE_AVAILABLE
    assert steps == [[1, 2]]
    processor.emit_next()
    assert steps == [[1, 2], [3, 4]]


def test_records_in_counts_each_slice_as_it_enters_the_chain() -> None:
    gate = ScriptedGate([(0, frames(1, 2, 3, 4, 5, 6))])
    seen: list[tuple[int, float]] = []  # (records handed so far, numRecordsIn then)
    handed = 0

    def process_batch(records: list[object]) -> None:
        nonlocal handed
        handed += len(records)
        seen.append((handed, processor.metrics.num_records_in))

    processor = StreamTaskNetworkInput(
        cast("InputGate", gate), [RecordDeserializer(SERIALIZER)], process_batch
    )
    processor._step.size = 2  # a slow chain: the buffer's records go in slices
    processor.emit_next()

    assert len(seen) > 1
    assert all(count == handed for handed, count in seen)
    assert processor.metrics.num_records_in == 6


def test_an_event_ends_the_step_after_the_records_before_it() -> None:
    end = EndOfPartitionEvent()
    gate = ScriptedGate([(0, frames(1)), (0, frames(2)), (0, end), (0, frames(3))])
    steps: list[list[object]] = []
    processor = network_input(gate, steps)

    assert processor.emit_next() is InputStatus.MORE_AVAILABLE
    assert steps == [[1, 2]]
    assert gate.left == 1  # the buffer after the event waits for the next step


def test_the_end_of_a_channel_inside_a_record_still_fails_after_its_data() -> None:
    data = frames(5, 6)
    gate = ScriptedGate([(0, data[:20]), (0, EndOfPartitionEvent())])
    steps: list[list[object]] = []
    processor = network_input(gate, steps)

    with pytest.raises(CorruptRecordError, match="channel 0"):
        processor.emit_next()
    assert steps == [[5]]


def test_the_last_end_of_partition_ends_the_input() -> None:
    gate = ScriptedGate([(0, frames(1)), (0, EndOfPartitionEvent())])
    steps: list[list[object]] = []
    processor = network_input(gate, steps)

    assert processor.emit_next() is InputStatus.END_OF_INPUT
    assert steps == [[1]]
