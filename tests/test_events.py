"""Tests for runtime events and their serialization."""

from __future__ import annotations

import contextlib
import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from penstock.buffer.buffer import DataType
from penstock.errors import SerializationError
from penstock.events import (
    END_OF_CHANNEL_STATE,
    END_OF_PARTITION,
    END_OF_SEGMENT,
    END_OF_SUPERSTEP,
    NO_ALIGNED_CHECKPOINT_TIMEOUT,
    AlignmentType,
    CancelCheckpointMarker,
    CheckpointBarrier,
    CheckpointOptions,
    CheckpointType,
    EndOfData,
    EndOfPartitionEvent,
    EventAnnouncement,
    RecoveryMetadata,
    RuntimeEvent,
    SavepointFormatType,
    StopMode,
    SubtaskConnectionDescriptor,
    UserEvent,
)
from penstock.serialization.event_serializer import (
    data_type_of,
    deserialize_event,
    serialize_event,
)

LONGS = st.integers(min_value=-(2**63), max_value=2**63 - 1)
INTS = st.integers(min_value=-(2**31), max_value=2**31 - 1)


@st.composite
def checkpoint_options(draw: st.DrawFn) -> CheckpointOptions:
    checkpoint_type = draw(st.sampled_from(CheckpointType))
    savepoint_format = SavepointFormatType.CANONICAL
    if checkpoint_type.is_savepoint:
        savepoint_format = draw(st.sampled_from(SavepointFormatType))
    return CheckpointOptions(
        checkpoint_type,
        draw(st.none() | st.binary(max_size=30)),
        draw(st.sampled_from(AlignmentType)),
        draw(LONGS),
        savepoint_format,
    )


PLAIN_EVENTS: st.SearchStrategy[RuntimeEvent] = st.one_of(
    st.just(END_OF_PARTITION),
    st.just(END_OF_SUPERSTEP),
    st.just(END_OF_CHANNEL_STATE),
    st.just(END_OF_SEGMENT),
    st.builds(EndOfData, st.sampled_from(StopMode)),
    st.builds(CheckpointBarrier, LONGS, LONGS, checkpoint_options()),
    st.builds(CancelCheckpointMarker, LONGS),
    st.builds(SubtaskConnectionDescriptor, INTS, INTS),
    st.builds(RecoveryMetadata, INTS),
    st.builds(UserEvent, st.text(max_size=30), st.binary(max_size=30)),
)
EVENTS: st.SearchStrategy[RuntimeEvent] = st.recursive(
    PLAIN_EVENTS,
    lambda inner: st.builds(EventAnnouncement, INTS, inner),
    max_leaves=4,
)


@given(EVENTS)
def test_round_trip(event: RuntimeEvent) -> None:
    data = serialize_event(event)
    assert deserialize_event(data) == event
    assert deserialize_event(memoryview(data)) == event
    assert deserialize_event(bytearray(data)) == event


@given(EVENTS)
def test_every_truncation_and_any_trailing_byte_is_an_error(event: RuntimeEvent) -> None:
    data = serialize_event(event)
    # A user event's payload is "the rest", so cutting into it still decodes; every cut
    # before the payload must fail.
    innermost = event
    while isinstance(innermost, EventAnnouncement):
        innermost = innermost.announced_event
    payload_size = len(innermost.payload) if isinstance(innermost, UserEvent) else 0
    for cut in range(len(data) - payload_size):
        with pytest.raises(SerializationError):
            deserialize_event(data[:cut])
    if not isinstance(innermost, UserEvent):
        with pytest.raises(SerializationError, match="trailing"):
            deserialize_event(data + b"\x00")


@given(st.binary(max_size=80))
def test_random_bytes_raise_only_serialization_error(data: bytes) -> None:
    with contextlib.suppress(SerializationError):
        deserialize_event(data)


@given(st.integers(0, 255), st.binary(max_size=60))
def test_known_tags_with_random_bodies_raise_only_serialization_error(
    tag: int, body: bytes
) -> None:
    with contextlib.suppress(SerializationError):
        deserialize_event(struct.pack(">i", tag % 12) + body)


def test_singletons_come_back_as_the_same_object() -> None:
    for event in (END_OF_PARTITION, END_OF_SUPERSTEP, END_OF_CHANNEL_STATE, END_OF_SEGMENT):
        assert deserialize_event(serialize_event(event)) is event
    assert EndOfPartitionEvent() == END_OF_PARTITION


@pytest.mark.parametrize(
    ("event", "expected"),
    [
        (END_OF_PARTITION, "00000000"),
        (END_OF_SUPERSTEP, "00000002"),
        (END_OF_CHANNEL_STATE, "00000005"),
        (END_OF_SEGMENT, "00000009"),
        (EndOfData(StopMode.NO_DRAIN), "0000000801"),
        (CancelCheckpointMarker(287087987329842), "000000040001051ae1810b32"),
        (SubtaskConnectionDescriptor(23, 42), "00000007000000170000002a"),
        (RecoveryMetadata(3), "0000000a00000003"),
        (
            CheckpointBarrier(1678, 4623784),
            "00000001000000000000068e0000000000468da800ffffffff017fffffffffffffff",
        ),
        (
            CheckpointBarrier(
                1,
                2,
                CheckpointOptions(
                    CheckpointType.SAVEPOINT_TERMINATE,
                    b"loc",
                    AlignmentType.FORCED_ALIGNED,
                    0,
                    SavepointFormatType.NATIVE,
                ),
            ),
            "00000001000000000000000100000000000000020301000000036c6f63030000000000000000",
        ),
        (
            EventAnnouncement(
                44,
                CheckpointBarrier(
                    42,
                    1337,
                    CheckpointOptions(CheckpointType.CHECKPOINT, None, AlignmentType.ALIGNED, 10),
                ),
            ),
            "000000060000002c00000001000000000000002a000000000000053900ffffffff01000000000000000a",
        ),
        (UserEvent("a.B", b"\x01\x02"), "000000030003612e420102"),
        # Java's modified UTF-8: NUL as C0 80, a supplementary character as two surrogates.
        (UserEvent("\x00\U0001f600", b""), "000000030008c080eda0bdedb880"),
    ],
)
def test_flink_layout(event: RuntimeEvent, expected: str) -> None:
    assert serialize_event(event).hex() == expected
    assert deserialize_event(bytes.fromhex(expected)) == event


@pytest.mark.parametrize(
    ("data", "match"),
    [
        (b"", "truncated"),
        (b"\x00\x00\x00", "truncated"),
        (struct.pack(">i", 11), "unknown event type tag 11"),
        (struct.pack(">i", -1), "unknown event type tag -1"),
        (struct.pack(">iB", 8, 2), "StopMode"),
        (struct.pack(">iqqB", 1, 1, 1, 5), "CheckpointType"),
        (struct.pack(">iqqBB", 1, 1, 1, 1, 2), "SavepointFormatType"),
        (struct.pack(">iqqBiBq", 1, 1, 1, 0, -1, 4, 0), "AlignmentType"),
        (struct.pack(">iqqBiBq", 1, 1, 1, 0, -2, 1, 0), "negative location length"),
        (struct.pack(">iqqBi", 1, 1, 1, 0, 100) + bytes(9), "truncated"),
        (struct.pack(">iH", 3, 5) + b"ab", "truncated"),
        (struct.pack(">iH", 3, 1) + b"\xff", "UTF-8"),
        (struct.pack(">ii", 6, 1), "truncated"),
        (struct.pack(">i", 0) + b"\x00", "trailing"),
    ],
)
def test_corrupt_events(data: bytes, match: str) -> None:
    with pytest.raises(SerializationError, match=match):
        deserialize_event(data)


def test_deeply_nested_announcements_do_not_recurse() -> None:
    event: RuntimeEvent = END_OF_PARTITION
    for sequence_number in range(5000):
        event = EventAnnouncement(sequence_number, event)
    data = serialize_event(event)
    assert len(data) == 5000 * 8 + 4
    back = deserialize_event(data)
    assert isinstance(back, EventAnnouncement)
    assert back.sequence_number == 4999


class NotAnEvent(RuntimeEvent):
    __slots__ = ()


@pytest.mark.parametrize(
    "event",
    [
        NotAnEvent(),
        CancelCheckpointMarker(2**63),
        SubtaskConnectionDescriptor(2**31, 0),
        RecoveryMetadata(-(2**31) - 1),
        EventAnnouncement(2**31, END_OF_PARTITION),
        EndOfData(7),  # type: ignore[arg-type]
        CheckpointBarrier(1, 2**63),
        CheckpointBarrier(1, 2, CheckpointOptions(aligned_checkpoint_timeout=2**63)),
        CheckpointBarrier(1, 2, CheckpointOptions(alignment=9)),  # type: ignore[arg-type]
        CheckpointBarrier(1, 2, CheckpointOptions(savepoint_format=SavepointFormatType.NATIVE)),
        UserEvent("x" * 70000),
        UserEvent("x", "not bytes"),  # type: ignore[arg-type]
        UserEvent(5, b""),  # type: ignore[arg-type]
    ],
)
def test_unserializable_events(event: RuntimeEvent) -> None:
    with pytest.raises(SerializationError):
        serialize_event(event)


def barrier(
    alignment: AlignmentType,
    timeout: int = NO_ALIGNED_CHECKPOINT_TIMEOUT,
    checkpoint_type: CheckpointType = CheckpointType.CHECKPOINT,
) -> CheckpointBarrier:
    return CheckpointBarrier(1, 2, CheckpointOptions(checkpoint_type, None, alignment, timeout))


@pytest.mark.parametrize(
    ("event", "expected"),
    [
        (END_OF_PARTITION, DataType.END_OF_PARTITION),
        (EndOfData(StopMode.DRAIN), DataType.END_OF_DATA),
        (END_OF_SEGMENT, DataType.END_OF_SEGMENT),
        (RecoveryMetadata(1), DataType.RECOVERY_METADATA),
        (END_OF_CHANNEL_STATE, DataType.RECOVERY_COMPLETION),
        (END_OF_SUPERSTEP, DataType.EVENT_BUFFER),
        (CancelCheckpointMarker(1), DataType.EVENT_BUFFER),
        (UserEvent("x"), DataType.EVENT_BUFFER),
        (SubtaskConnectionDescriptor(1, 2), DataType.EVENT_BUFFER),
        (EventAnnouncement(1, barrier(AlignmentType.ALIGNED)), DataType.EVENT_BUFFER),
        (barrier(AlignmentType.ALIGNED), DataType.ALIGNED_CHECKPOINT_BARRIER),
        (barrier(AlignmentType.ALIGNED, 0), DataType.ALIGNED_CHECKPOINT_BARRIER),
        (barrier(AlignmentType.ALIGNED, 10), DataType.TIMEOUTABLE_ALIGNED_CHECKPOINT_BARRIER),
        (barrier(AlignmentType.FORCED_ALIGNED, 10), DataType.ALIGNED_CHECKPOINT_BARRIER),
        (barrier(AlignmentType.UNALIGNED), DataType.EVENT_BUFFER),
        (barrier(AlignmentType.AT_LEAST_ONCE), DataType.EVENT_BUFFER),
        # Savepoints always align, even when checkpoints are unaligned.
        (
            barrier(AlignmentType.UNALIGNED, checkpoint_type=CheckpointType.SAVEPOINT),
            DataType.ALIGNED_CHECKPOINT_BARRIER,
        ),
    ],
)
def test_data_type_of(event: RuntimeEvent, expected: DataType) -> None:
    assert data_type_of(event) is expected
    assert data_type_of(event, has_priority=True) is DataType.PRIORITIZED_EVENT_BUFFER


def test_checkpoint_options_helpers() -> None:
    assert barrier(AlignmentType.UNALIGNED).options.is_unaligned
    assert not barrier(AlignmentType.ALIGNED).options.is_unaligned
    assert barrier(AlignmentType.ALIGNED, 5).options.is_timeoutable
    assert not barrier(AlignmentType.ALIGNED, NO_ALIGNED_CHECKPOINT_TIMEOUT).options.is_timeoutable
    assert not barrier(AlignmentType.AT_LEAST_ONCE).options.needs_alignment


def test_events_are_frozen_values() -> None:
    marker = CancelCheckpointMarker(3)
    assert marker == CancelCheckpointMarker(3)
    assert hash(marker) == hash(CancelCheckpointMarker(3))
    with pytest.raises(AttributeError):
        marker.checkpoint_id = 4  # type: ignore[misc]
