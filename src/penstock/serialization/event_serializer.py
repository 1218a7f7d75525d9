"""Events to bytes and back, in Flink's ``EventSerializer`` layout, and their buffer types.

Every event starts with an int32 big-endian type tag; the body follows (all big-endian):

====  ============================  ====================================================
tag   event                         body
====  ============================  ====================================================
0     EndOfPartitionEvent           (none)
1     CheckpointBarrier             long id, long timestamp, byte checkpoint type
                                    [+ byte savepoint format, savepoints only],
                                    int location length (-1: default) + location bytes,
                                    byte alignment, long aligned-checkpoint timeout
2     EndOfSuperstepEvent           (none)
3     UserEvent ("other event")     type name as Java's ``writeUTF`` (uint16 length +
                                    modified UTF-8), then the payload bytes
4     CancelCheckpointMarker        long checkpoint id
5     EndOfChannelStateEvent        (none)
6     EventAnnouncement             int sequence number, then the announced event
7     SubtaskConnectionDescriptor   int input subtask index, int output subtask index
8     EndOfData                     byte stop mode
9     EndOfSegmentEvent             (none)
10    RecoveryMetadata              int final buffer subpartition id
====  ============================  ====================================================

Decoding is strict: a truncated body, an unknown tag or enum byte, and trailing bytes
are all ``SerializationError``.
"""

from __future__ import annotations

import struct
from typing import Final, TypeVar

from penstock.buffer.buffer import DataType
from penstock.errors import SerializationError
from penstock.events import (
    END_OF_CHANNEL_STATE,
    END_OF_PARTITION,
    END_OF_SEGMENT,
    END_OF_SUPERSTEP,
    AlignmentType,
    CancelCheckpointMarker,
    CheckpointBarrier,
    CheckpointOptions,
    CheckpointType,
    EndOfChannelStateEvent,
    EndOfData,
    EndOfPartitionEvent,
    EndOfSegmentEvent,
    EndOfSuperstepEvent,
    EventAnnouncement,
    RecoveryMetadata,
    RuntimeEvent,
    SavepointFormatType,
    StopMode,
    SubtaskConnectionDescriptor,
    UserEvent,
)

__all__ = ["data_type_of", "deserialize_event", "serialize_event"]

EnumT = TypeVar("EnumT", StopMode, CheckpointType, AlignmentType, SavepointFormatType)

END_OF_PARTITION_EVENT: Final = 0
CHECKPOINT_BARRIER_EVENT: Final = 1
END_OF_SUPERSTEP_EVENT: Final = 2
OTHER_EVENT: Final = 3
CANCEL_CHECKPOINT_MARKER_EVENT: Final = 4
END_OF_CHANNEL_STATE_EVENT: Final = 5
ANNOUNCEMENT_EVENT: Final = 6
SUBTASK_CONNECTION_DESCRIPTOR_EVENT: Final = 7
END_OF_DATA_EVENT: Final = 8
END_OF_SEGMENT_EVENT: Final = 9
RECOVERY_METADATA_EVENT: Final = 10

_TAG: Final = struct.Struct(">i")
_BYTE: Final = struct.Struct(">B")
_INT: Final = struct.Struct(">i")
_LONG_LONG: Final = struct.Struct(">qq")
_LONG: Final = struct.Struct(">q")
_INT_INT: Final = struct.Struct(">ii")
_TAG_INT: Final = struct.Struct(">ii")
_TAG_BYTE: Final = struct.Struct(">iB")
_TAG_LONG: Final = struct.Struct(">iq")
_TAG_INT_INT: Final = struct.Struct(">iii")
_BARRIER_HEAD: Final = struct.Struct(">iqqB")
_BARRIER_TAIL: Final = struct.Struct(">Bq")
_UTF_LENGTH: Final = struct.Struct(">H")
_MAX_UTF_BYTES: Final = 0xFFFF

# Events without a body, each a single shared value.
_EMPTY_EVENTS: Final[dict[type[RuntimeEvent], tuple[int, RuntimeEvent]]] = {
    EndOfPartitionEvent: (END_OF_PARTITION_EVENT, END_OF_PARTITION),
    EndOfSuperstepEvent: (END_OF_SUPERSTEP_EVENT, END_OF_SUPERSTEP),
    EndOfChannelStateEvent: (END_OF_CHANNEL_STATE_EVENT, END_OF_CHANNEL_STATE),
    EndOfSegmentEvent: (END_OF_SEGMENT_EVENT, END_OF_SEGMENT),
}
_EMPTY_BY_TAG: Final = dict(_EMPTY_EVENTS.values())
_EMPTY_BYTES: Final = {kind: _TAG.pack(tag) for kind, (tag, _) in _EMPTY_EVENTS.items()}


# ---------------------------------------------------------------------------------------------
# Java's modified UTF-8 (DataOutput.writeUTF): NUL is two bytes, characters beyond the BMP are
# two 3-byte surrogates. Class names rarely need it, but the layout is Flink's.


def _encode_java_utf(text: str) -> bytes:
    # One character per UTF-16 code unit, so characters beyond the BMP become surrogates.
    utf16 = text.encode("utf-16-be", "surrogatepass")
    code_units = struct.unpack(f">{len(utf16) // 2}H", utf16)
    encoded = "".join(map(chr, code_units)).encode("utf-8", "surrogatepass")
    encoded = encoded.replace(b"\x00", b"\xc0\x80")
    if len(encoded) > _MAX_UTF_BYTES:
        msg = f"user event type name is {len(encoded)} bytes encoded; the limit is 65535"
        raise SerializationError(msg)
    return _UTF_LENGTH.pack(len(encoded)) + encoded


def _decode_java_utf(data: bytes) -> str:
    try:
        text = data.replace(b"\xc0\x80", b"\x00").decode("utf-8", "surrogatepass")
        # Pair up surrogates into the characters they stand for.
        return text.encode("utf-16-be", "surrogatepass").decode("utf-16-be", "surrogatepass")
    except UnicodeError as exc:
        msg = f"user event type name is not valid modified UTF-8: {exc}"
        raise SerializationError(msg) from exc


# ---------------------------------------------------------------------------------------------


def serialize_event(event: RuntimeEvent) -> bytes:
    """The bytes of ``event`` in Flink's ``EventSerializer`` layout."""
    prefix = b""
    # Announcements wrap another event; unwrap them in a loop, not by recursion.
    while type(event) is EventAnnouncement:
        prefix += _pack(_TAG_INT, event, ANNOUNCEMENT_EVENT, event.sequence_number)
        event = event.announced_event
    return prefix + _serialize_plain(event)


def _pack(layout: struct.Struct, event: RuntimeEvent, *values: object) -> bytes:
    try:
        return layout.pack(*values)
    except struct.error as exc:
        msg = f"cannot serialize {event!r}: a field is out of range ({exc})"
        raise SerializationError(msg) from exc


def _enum_value(kind: type[EnumT], value: int, event: RuntimeEvent) -> EnumT:
    try:
        return kind(value)
    except (ValueError, TypeError) as exc:
        msg = f"cannot serialize {event!r}: {value!r} is not a {kind.__name__}"
        raise SerializationError(msg) from exc


def _serialize_plain(event: RuntimeEvent) -> bytes:
    empty = _EMPTY_BYTES.get(type(event))
    if empty is not None:
        return empty
    # Exact types, as Flink does: a subclass would come back as its base class.
    if type(event) is CheckpointBarrier:
        return _serialize_barrier(event)
    if type(event) is EndOfData:
        mode = _enum_value(StopMode, event.stop_mode, event)
        return _pack(_TAG_BYTE, event, END_OF_DATA_EVENT, mode)
    if type(event) is CancelCheckpointMarker:
        return _pack(_TAG_LONG, event, CANCEL_CHECKPOINT_MARKER_EVENT, event.checkpoint_id)
    if type(event) is SubtaskConnectionDescriptor:
        return _pack(
            _TAG_INT_INT,
            event,
            SUBTASK_CONNECTION_DESCRIPTOR_EVENT,
            event.input_subtask_index,
            event.output_subtask_index,
        )
    if type(event) is RecoveryMetadata:
        return _pack(_TAG_INT, event, RECOVERY_METADATA_EVENT, event.final_buffer_subpartition_id)
    if type(event) is UserEvent:
        try:
            name = _encode_java_utf(event.type_name)
            return _TAG.pack(OTHER_EVENT) + name + event.payload
        except (AttributeError, TypeError) as exc:
            msg = f"cannot serialize {event!r}: type_name must be str and payload bytes"
            raise SerializationError(msg) from exc
    msg = f"cannot serialize an event of type {type(event).__qualname__}: not a known runtime event"
    raise SerializationError(msg)


def _serialize_barrier(barrier: CheckpointBarrier) -> bytes:
    options = barrier.options
    if not isinstance(options, CheckpointOptions):
        msg = f"cannot serialize {barrier!r}: options must be CheckpointOptions"
        raise SerializationError(msg)
    checkpoint_type = _enum_value(CheckpointType, options.checkpoint_type, barrier)
    savepoint_format = _enum_value(SavepointFormatType, options.savepoint_format, barrier)
    alignment = _enum_value(AlignmentType, options.alignment, barrier)
    if not checkpoint_type.is_savepoint and savepoint_format != 0:
        msg = f"cannot serialize {barrier!r}: a savepoint format is set on a checkpoint"
        raise SerializationError(msg)
    head = _pack(
        _BARRIER_HEAD,
        barrier,
        CHECKPOINT_BARRIER_EVENT,
        barrier.checkpoint_id,
        barrier.timestamp,
        checkpoint_type,
    )
    parts = [head]
    if checkpoint_type.is_savepoint:
        parts.append(bytes([savepoint_format]))
    location = options.target_location
    if location is None:
        parts.append(_TAG.pack(-1))
    elif not isinstance(location, bytes):
        msg = f"cannot serialize {barrier!r}: target_location must be bytes or None"
        raise SerializationError(msg)
    else:
        parts.append(_pack(_TAG, barrier, len(location)))
        parts.append(bytes(location))
    parts.append(
        _pack(
            _BARRIER_TAIL,
            barrier,
            alignment,
            options.aligned_checkpoint_timeout,
        )
    )
    return b"".join(parts)


# ---------------------------------------------------------------------------------------------


class _Reader:
    """Reads big-endian fields from an event's bytes; running short is an error."""

    __slots__ = ("data", "pos")

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def take(self, layout: struct.Struct) -> tuple[int, ...]:
        if len(self.data) - self.pos < layout.size:
            raise _truncated(self.data, self.pos, layout.size)
        values: tuple[int, ...] = layout.unpack_from(self.data, self.pos)
        self.pos += layout.size
        return values

    def take_bytes(self, count: int) -> bytes:
        if len(self.data) - self.pos < count:
            raise _truncated(self.data, self.pos, count)
        chunk = self.data[self.pos : self.pos + count]
        self.pos += count
        return chunk

    def take_rest(self) -> bytes:
        chunk = self.data[self.pos :]
        self.pos = len(self.data)
        return chunk


def _truncated(data: bytes, pos: int, needed: int) -> SerializationError:
    return SerializationError(
        f"truncated event: {needed} more bytes needed at offset {pos}, "
        f"but the event is {len(data)} bytes"
    )


def _enum_byte(kind: type[EnumT], value: int) -> EnumT:
    try:
        return kind(value)
    except ValueError as exc:
        msg = f"unknown {kind.__name__} byte {value} in event"
        raise SerializationError(msg) from exc


def deserialize_event(data: bytes | bytearray | memoryview) -> RuntimeEvent:
    """The event whose bytes are exactly ``data``."""
    reader = _Reader(bytes(data))
    announcements: list[int] = []
    while True:
        (tag,) = reader.take(_TAG)
        if tag != ANNOUNCEMENT_EVENT:
            break
        announcements.append(reader.take(_INT)[0])
    event = _deserialize_plain(tag, reader)
    if reader.pos != len(reader.data):
        msg = (
            f"event {type(event).__name__} is followed by "
            f"{len(reader.data) - reader.pos} unexpected trailing bytes"
        )
        raise SerializationError(msg)
    for sequence_number in reversed(announcements):
        event = EventAnnouncement(sequence_number, event)
    return event


def _deserialize_plain(tag: int, reader: _Reader) -> RuntimeEvent:
    empty = _EMPTY_BY_TAG.get(tag)
    if empty is not None:
        return empty
    if tag == CHECKPOINT_BARRIER_EVENT:
        return _deserialize_barrier(reader)
    if tag == END_OF_DATA_EVENT:
        return EndOfData(_enum_byte(StopMode, reader.take(_BYTE)[0]))
    if tag == CANCEL_CHECKPOINT_MARKER_EVENT:
        return CancelCheckpointMarker(reader.take(_LONG)[0])
    if tag == SUBTASK_CONNECTION_DESCRIPTOR_EVENT:
        return SubtaskConnectionDescriptor(*reader.take(_INT_INT))
    if tag == RECOVERY_METADATA_EVENT:
        return RecoveryMetadata(reader.take(_INT)[0])
    if tag == OTHER_EVENT:
        (length,) = reader.take(_UTF_LENGTH)
        type_name = _decode_java_utf(reader.take_bytes(length))
        return UserEvent(type_name, reader.take_rest())
    msg = f"unknown event type tag {tag}"
    raise SerializationError(msg)


def _deserialize_barrier(reader: _Reader) -> CheckpointBarrier:
    checkpoint_id, timestamp = reader.take(_LONG_LONG)
    checkpoint_type = _enum_byte(CheckpointType, reader.take(_BYTE)[0])
    savepoint_format = SavepointFormatType.CANONICAL
    if checkpoint_type.is_savepoint:
        savepoint_format = _enum_byte(SavepointFormatType, reader.take(_BYTE)[0])
    (location_length,) = reader.take(_INT)
    location: bytes | None = None
    if location_length != -1:
        if location_length < 0:
            msg = f"checkpoint barrier has a negative location length {location_length}"
            raise SerializationError(msg)
        location = reader.take_bytes(location_length)
    alignment_byte, timeout = reader.take(_BARRIER_TAIL)
    options = CheckpointOptions(
        checkpoint_type,
        location,
        _enum_byte(AlignmentType, alignment_byte),
        timeout,
        savepoint_format,
    )
    return CheckpointBarrier(checkpoint_id, timestamp, options)


# ---------------------------------------------------------------------------------------------


def data_type_of(event: RuntimeEvent, has_priority: bool = False) -> DataType:
    """The buffer data type an event travels as, following Flink's ``getDataType``.

    A priority event overtakes data whatever it is. End of data and end of partition have
    types of their own; so do end of segment and recovery metadata (the types Flink's
    tiered partitions give them). The end of recovered channel state blocks the
    subpartition until resumed. A barrier that needs alignment blocks it too, and is
    timeoutable when its alignment may time out; an at-least-once or unaligned barrier
    without priority is a plain event.
    """
    if has_priority:
        return DataType.PRIORITIZED_EVENT_BUFFER
    if type(event) is CheckpointBarrier:
        options = event.options
        if not options.needs_alignment:
            return DataType.EVENT_BUFFER
        if options.is_timeoutable:
            return DataType.TIMEOUTABLE_ALIGNED_CHECKPOINT_BARRIER
        return DataType.ALIGNED_CHECKPOINT_BARRIER
    return _DATA_TYPES.get(type(event), DataType.EVENT_BUFFER)


_DATA_TYPES: Final[dict[type[RuntimeEvent], DataType]] = {
    EndOfPartitionEvent: DataType.END_OF_PARTITION,
    EndOfData: DataType.END_OF_DATA,
    EndOfSegmentEvent: DataType.END_OF_SEGMENT,
    RecoveryMetadata: DataType.RECOVERY_METADATA,
    EndOfChannelStateEvent: DataType.RECOVERY_COMPLETION,
}
