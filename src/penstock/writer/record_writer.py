"""RecordWriter: routes records to channels, frames them and writes them into buffers.

Theory of operation
-------------------
A record is serialized once as ``[int32 big-endian length][payload]`` and copied into
the open buffer of the channel its ``ChannelSelector`` picks (``emit``), into every
channel (``broadcast_emit``), or, for a ``BroadcastRecordWriter``, into one buffer that
all channels share.

The per-record path is counted in interpreted steps. For a fixed-size type (ints,
floats, fixed ``struct`` layouts) ``emit`` packs the whole frame straight into the
segment with one ``Struct.pack_into`` call and publishes it by moving the builder's
position: no intermediate bytes, no lock, no call into the partition unless the
buffer is full. Other types build one frame and hand it to the partition.

``emit_batch`` does the work of many records at once: the selector splits the batch
per channel in bulk and each channel's run is framed by one bulk call of the type
serializer and copied with slice assignments.

Flushing follows ``execution.buffer-timeout``: 0 flushes the target channel after every
record (no thread), a positive value starts an ``OutputFlusher`` thread, and -1
flushes only when buffers fill, on ``flush_all`` and on events. A flusher failure is
raised on the next emit.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from typing import Final, Generic, NoReturn, TypeVar, cast

from penstock.errors import IllegalStateError, SerializationError, TaskError
from penstock.events import RuntimeEvent
from penstock.partition.result_partition import ResultPartition
from penstock.serialization.types import MAX_PAYLOAD_SIZE, BytesSerializer, TypeSerializer
from penstock.writer.flusher import OutputFlusher
from penstock.writer.partitioners import (
    ChannelSelector,
    ForwardPartitioner,
    GlobalPartitioner,
    RebalancePartitioner,
)

__all__ = [
    "BroadcastRecordWriter",
    "ChannelSelectorRecordWriter",
    "RecordWriter",
    "create_record_writer",
]

T = TypeVar("T")

FLUSH_ALWAYS: Final = 0
FLUSH_WHEN_FULL: Final = -1

_LENGTH: Final = struct.Struct(">i")

_FRAMES_PROBE_MIN: Final = 16
"""Batches of up to this many records are framed at once, unmeasured."""

_FRAMES_SLICE_LIMIT: Final = 128 * 1024
"""A batch framing to more than this (malloc's default mmap threshold) is sliced."""

_FRAMES_SLICE_BYTES: Final = 64 * 1024
"""Framed bytes per slice: two segments, within a core's cache."""
_pack_length = _LENGTH.pack
_pack_length_into = _LENGTH.pack_into


def _length_prefix(size: int) -> bytes:
    """The frame length prefix of a payload of ``size`` bytes (off the fast paths)."""
    try:
        return _pack_length(size)
    except struct.error:
        msg = (
            f"a payload of {size} bytes is larger than the maximum frame payload "
            f"of {MAX_PAYLOAD_SIZE} bytes"
        )
        raise SerializationError(msg) from None


Buffer = bytes | bytearray | memoryview


class RecordWriter(Generic[T]):
    """Writes records of one type into a result partition.

    Use ``create_record_writer`` (or the subclasses) rather than this base.

    Args:
        partition: Where the records go.
        serializer: Serializes records (in bulk for ``emit_batch``).
        buffer_timeout_ms: ``execution.buffer-timeout`` for this writer.
        task_name: Names the flusher thread and error messages.
    """

    def __init__(
        self,
        partition: ResultPartition,
        serializer: TypeSerializer[T],
        buffer_timeout_ms: int = 100,
        task_name: str = "",
    ) -> None:
        if buffer_timeout_ms < FLUSH_WHEN_FULL:
            msg = f"buffer timeout must be -1, 0 or positive, not {buffer_timeout_ms}"
            raise IllegalStateError(msg)
        self.partition = partition
        self.serializer = serializer
        self.num_channels = partition.num_subpartitions
        self.buffer_timeout_ms = buffer_timeout_ms
        self.task_name = task_name
        self.flush_always = buffer_timeout_ms == FLUSH_ALWAYS
        self.num_records_out = 0
        self._flusher_error: BaseException | None = None
        self._flusher: OutputFlusher | None = None
        if buffer_timeout_ms > 0:
            self._flusher = OutputFlusher(
                f"OutputFlusher for {task_name or partition.partition_id}",
                buffer_timeout_ms,
                partition.flush_all,
                self._on_flusher_error,
            )
            self._flusher.start()
        fixed = serializer.fixed_size
        # Scalar fixed-size records are packed as one whole frame in one call; tuples
        # of fields (struct layouts) take the payload path.
        self._frame_struct: struct.Struct | None = (
            getattr(serializer, "frame_struct", None)
            if fixed is not None and getattr(serializer, "is_scalar", False)
            else None
        )

    @property
    def user_functions(self) -> tuple[object, ...]:
        """The user's functions routing calls (key selector, partitioner); opened by the task."""
        return ()

    emit: Callable[[T], None]
    """Writes one record to the channel(s) this writer routes it to.

    An attribute, not a method: each writer installs the path that fits its record
    type and routing when it is built, so the per-record call does no dispatching.
    """

    # -- records ---------------------------------------------------------------------

    def emit_batch(self, records: Sequence[T]) -> None:
        """Writes many records, as ``emit`` would one by one, with bulk work."""
        raise NotImplementedError

    def broadcast_emit(self, record: T) -> None:
        """Writes one record to every channel (serialized once)."""
        self._check_flusher()
        frame = self._frame(record)
        partition = self.partition
        for target in range(self.num_channels):
            partition.emit_record(frame, target)
        self.num_records_out += 1
        if self.flush_always:
            partition.flush_all()

    def broadcast_event(self, event: RuntimeEvent, is_priority: bool = False) -> None:
        """Queues an event in every channel, after the data written so far."""
        self._check_flusher()
        self.partition.broadcast_event(event, is_priority)
        if self.flush_always:
            self.partition.flush_all()

    # -- flushing and backpressure ---------------------------------------------------

    def flush_all(self) -> None:
        self.partition.flush_all()

    def is_available(self) -> bool:
        """False while the output cannot take a buffer: the task should pause input."""
        return self.partition.is_available()

    def get_available_future(self) -> Future[None]:
        return self.partition.get_available_future()

    def close(self) -> None:
        """Stops the flusher thread (the partition stays as it is)."""
        if self._flusher is not None:
            self._flusher.terminate()
            self._flusher = None

    # -- internals -------------------------------------------------------------------

    def _frame(self, record: T) -> bytes:
        frame_struct = self._frame_struct
        if frame_struct is not None:
            try:
                return frame_struct.pack(frame_struct.size - 4, record)
            except (struct.error, OverflowError):
                self._raise_unserializable(record)
        payload = self.serializer.serialize(record)
        return _length_prefix(len(payload)) + payload

    def _raise_unserializable(self, record: T) -> NoReturn:
        """Raises the serializer's own error for a record its fast path could not pack."""
        self.serializer.serialize(record)
        msg = f"{self.serializer.name} cannot serialize {record!r}"
        raise SerializationError(msg)

    def _on_flusher_error(self, error: BaseException) -> None:
        self._flusher_error = error

    def _check_flusher(self) -> None:
        error = self._flusher_error
        if error is not None:
            msg = "An exception happened while flushing the outputs"
            raise TaskError(msg) from error


class ChannelSelectorRecordWriter(RecordWriter[T]):
    """Sends each record to the one channel its selector picks.

    ``emit`` is chosen once, at construction, for the record type and the routing:
    fixed-size frames are packed straight into the open buffer, other payloads are
    written as prefix + payload into it, and a writer with a single target (forward,
    global, or one channel with routing that does not read records) does not call the
    selector at all. Each path leaves
    the buffer that a record would fill or overflow to ``ResultPartition.emit_record``.
    """

    def __init__(
        self,
        partition: ResultPartition,
        serializer: TypeSerializer[T],
        selector: ChannelSelector[T],
        buffer_timeout_ms: int = 100,
        task_name: str = "",
    ) -> None:
        if selector.is_broadcast:
            msg = "a broadcast selector needs a BroadcastRecordWriter"
            raise IllegalStateError(msg)
        # Before the base class starts the flusher thread, so a failing set-up leaves
        # no thread behind.
        selector.setup(partition.num_subpartitions)
        super().__init__(partition, serializer, buffer_timeout_ms, task_name)
        self.selector = selector
        self._select = selector.select_channel
        self._builders = partition.unicast_builders
        self._serialize = serializer.serialize
        # Exact bytes records are their own payload, unless serialize is overridden.
        self._bytes_pass_through = (
            getattr(type(serializer), "serialize", None) is BytesSerializer.serialize
        )
        # Routing that never looks at a record is skipped where it has one answer. A
        # key selector or a custom partitioner is asked for every record, even with one
        # channel, as in Flink and as emit_batch asks it: its errors must not depend on
        # the path or on the parallelism.
        single_target = isinstance(selector, ForwardPartitioner | GlobalPartitioner) or (
            self.num_channels == 1 and not getattr(selector, "reads_records", True)
        )
        if self.flush_always:
            self.emit = self._emit_and_flush
        elif self._frame_struct is not None:
            self.emit = self._emit_fixed_to_first if single_target else self._emit_fixed
        else:
            self.emit = self._emit_payload_to_first if single_target else self._emit_payload

    @property
    def user_functions(self) -> tuple[object, ...]:
        return self.selector.user_functions

    def _emit_fixed(self, record: T) -> None:
        if self._flusher_error is not None:
            self._check_flusher()
        self._write_fixed(record, self._select(record))

    def _emit_fixed_to_first(self, record: T) -> None:
        if self._flusher_error is not None:
            self._check_flusher()
        self._write_fixed(record, 0)

    def _write_fixed(self, record: T, target: int) -> None:
        """Packs a fixed-size frame in place, or hands it to the partition at a boundary."""
        frame_struct = self._frame_struct
        assert frame_struct is not None
        builder = self._builders[target]
        if builder is not None:
            position = builder.position
            end = position + frame_struct.size
            if end < builder.capacity:
                try:
                    frame_struct.pack_into(builder.memory, position, frame_struct.size - 4, record)
                except (struct.error, OverflowError):
                    self._raise_unserializable(record)
                builder.position = end
                self.num_records_out += 1
                return
        try:
            frame = frame_struct.pack(frame_struct.size - 4, record)
        except (struct.error, OverflowError):
            self._raise_unserializable(record)
        self.partition.emit_record(frame, target)
        self.num_records_out += 1

    def _emit_payload(self, record: T) -> None:
        if self._flusher_error is not None:
            self._check_flusher()
        self._write_payload(record, self._select(record))

    def _emit_payload_to_first(self, record: T) -> None:
        if self._flusher_error is not None:
            self._check_flusher()
        self._write_payload(record, 0)

    def _write_payload(self, record: T, target: int) -> None:
        if self._bytes_pass_through and type(record) is bytes:
            payload: Buffer = cast(bytes, record)
        else:
            payload = self._serialize(record)
        size = len(payload)
        builder = self._builders[target]
        if builder is not None:
            position = builder.position
            start = position + 4
            end = start + size
            if end < builder.capacity:
                memory = builder.memory
                _pack_length_into(memory, position, size)
                memory[start:end] = payload
                builder.position = end
                self.num_records_out += 1
                return
        partition = self.partition
        partition.emit_record(_length_prefix(size), target)
        partition.emit_record(payload, target)
        self.num_records_out += 1

    def _emit_and_flush(self, record: T) -> None:
        """``execution.buffer-timeout`` 0: every record is made readable at once."""
        if self._flusher_error is not None:
            self._check_flusher()
        target = self._select(record)
        self.partition.emit_record(self._frame(record), target)
        self.num_records_out += 1
        self.partition.flush(target)

    def emit_batch(self, records: Sequence[T]) -> None:
        if self._flusher_error is not None:
            self._check_flusher()
        if not records:
            return
        partition = self.partition
        if self.num_channels == 1:
            self.selector.split(records)  # keeps the selector's state as emit would
            self._emit_frames(records, 0)
            if self.flush_always:
                partition.flush(0)
        else:
            for target, group in enumerate(self.selector.split(records)):
                if group:
                    self._emit_frames(group, target)
                    if self.flush_always:
                        partition.flush(target)
        self.num_records_out += len(records)

    def _emit_frames(self, records: Sequence[T], target: int) -> None:
        """Serializes ``records`` and emits them, a large batch in slices.

        Framing a whole batch of large records at once makes one large bytes object:
        past malloc's mmap threshold every batch costs fresh pages (a page fault per
        4 KiB), and the copy into buffers reads memory no cache holds any more. With
        1000 records of 1 KiB per batch, framing took half of a source's time. The
        first record tells the size of a frame; a batch that would frame to more
        than ``_FRAMES_SLICE_LIMIT`` bytes goes in slices of ``_FRAMES_SLICE_BYTES``.
        """
        serialize_frames = self.serializer.serialize_frames
        emit_record = self.partition.emit_record
        count = len(records)
        if count > _FRAMES_PROBE_MIN:
            frame = len(self.serializer.serialize(records[0])) + 4
            if count * frame > _FRAMES_SLICE_LIMIT:
                per_slice = max(1, _FRAMES_SLICE_BYTES // frame)
                for first in range(0, count, per_slice):
                    emit_record(serialize_frames(records[first : first + per_slice]), target)
                return
        emit_record(serialize_frames(records), target)


class BroadcastRecordWriter(RecordWriter[T]):
    """Sends every record to every channel through buffers all channels share."""

    def __init__(
        self,
        partition: ResultPartition,
        serializer: TypeSerializer[T],
        buffer_timeout_ms: int = 100,
        task_name: str = "",
    ) -> None:
        super().__init__(partition, serializer, buffer_timeout_ms, task_name)
        self.emit = self._emit_broadcast

    def _emit_broadcast(self, record: T) -> None:
        if self._flusher_error is not None:
            self._check_flusher()
        self.partition.broadcast_record(self._frame(record))
        self.num_records_out += 1
        if self.flush_always:
            self.partition.flush_all()

    def emit_batch(self, records: Sequence[T]) -> None:
        if self._flusher_error is not None:
            self._check_flusher()
        if not records:
            return
        self.partition.broadcast_record(self.serializer.serialize_frames(records))
        self.num_records_out += len(records)
        if self.flush_always:
            self.partition.flush_all()


def create_record_writer(
    partition: ResultPartition,
    serializer: TypeSerializer[T],
    selector: ChannelSelector[T] | None = None,
    buffer_timeout_ms: int = 100,
    task_name: str = "",
) -> RecordWriter[T]:
    """The writer for ``selector`` (round robin by default), as Flink's RecordWriterBuilder."""
    chosen: ChannelSelector[T] = selector if selector is not None else RebalancePartitioner()
    if chosen.is_broadcast:
        return BroadcastRecordWriter(partition, serializer, buffer_timeout_ms, task_name)
    return ChannelSelectorRecordWriter(partition, serializer, chosen, buffer_timeout_ms, task_name)
