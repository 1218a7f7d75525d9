"""RecordDeserializer: reassembles a channel's length-prefixed records, sans-IO.

Theory of operation
-------------------
A channel delivers a stream of buffers whose bytes are records framed as
``[int32 big-endian length][payload]``; a record may start in one buffer and end
several buffers later. One deserializer per channel turns each buffer into the list of
records it completes, in one pass:

1. finish the record spanning in from earlier buffers, if any;
2. decode every complete record that lies wholly inside the buffer, in bulk (for a
   fixed-size type, one C-level call for the whole run);
3. keep the trailing partial record: its 4-byte length (maybe split too) and the bytes
   seen so far.

A spanning record is collected in memory up to ``spill_threshold`` bytes (5 MiB, as
Flink's SpillingAdaptiveSpanningRecordDeserializer); a larger one is spilled to a
temporary file while it is reassembled, so many channels with huge records in flight do
not hold them all in memory.

Bad bytes never hang or crash the reader: a negative length is a
``CorruptRecordError`` at once, and so is a channel that ends inside a record
(``check_end``). Both name the channel.
"""

from __future__ import annotations

import struct
import tempfile
from typing import IO, Final, Generic, TypeVar

from penstock.buffer.buffer import Buffer
from penstock.errors import CorruptRecordError, SerializationError
from penstock.serialization.types import TypeSerializer

__all__ = ["DEFAULT_SPILL_THRESHOLD", "RecordDeserializer"]

T = TypeVar("T")

DEFAULT_SPILL_THRESHOLD: Final = 5 * 1024 * 1024
"""Records longer than this are reassembled in a temporary file (Flink: 5 MiB)."""

_LENGTH: Final = struct.Struct(">i")
_unpack_length = _LENGTH.unpack_from


class _SpanningRecord:
    """A record whose bytes arrive over several buffers."""

    __slots__ = ("_file", "_memory", "length", "received")

    def __init__(self, length: int, spill_threshold: int, spill_dir: str | None) -> None:
        self.length = length
        self.received = 0
        self._memory: bytearray | None = None
        self._file: IO[bytes] | None = None
        if length > spill_threshold:
            self._file = tempfile.TemporaryFile(dir=spill_dir, suffix=".inputchannel")  # noqa: SIM115
        else:
            self._memory = bytearray(length)

    @property
    def missing(self) -> int:
        return self.length - self.received

    @property
    def is_spilling(self) -> bool:
        return self._file is not None

    def add(self, data: memoryview) -> None:
        if self._memory is not None:
            self._memory[self.received : self.received + len(data)] = data
        else:
            assert self._file is not None
            self._file.write(data)
        self.received += len(data)

    def payload(self) -> bytes | bytearray:
        if self._memory is not None:
            return self._memory
        assert self._file is not None
        self._file.seek(0)
        data = self._file.read()
        self._file.close()
        return data

    def discard(self) -> None:
        if self._file is not None:
            self._file.close()


class RecordDeserializer(Generic[T]):
    """Turns one channel's buffers into records of type ``T``.

    Args:
        serializer: Decodes payloads (in bulk where it can).
        channel: Names the channel in error messages.
        spill_threshold: Spanning records longer than this are spilled to disk.
        spill_dir: Where spill files go (the system's temporary directory by default).
    """

    def __init__(
        self,
        serializer: TypeSerializer[T],
        channel: str = "unknown channel",
        spill_threshold: int = DEFAULT_SPILL_THRESHOLD,
        spill_dir: str | None = None,
    ) -> None:
        self.serializer = serializer
        self.channel = channel
        self.spill_threshold = spill_threshold
        self.spill_dir = spill_dir
        self._fixed_frame = serializer.fixed_size + 4 if serializer.fixed_size is not None else None
        self._length_bytes = bytearray()  # a length prefix split across buffers
        self._spanning: _SpanningRecord | None = None

    @property
    def has_partial_record(self) -> bool:
        return bool(self._length_bytes) or self._spanning is not None

    @property
    def is_spilling(self) -> bool:
        return self._spanning is not None and self._spanning.is_spilling

    def read_buffer(self, buffer: Buffer) -> list[T]:
        """The records ``buffer`` completes; the buffer is recycled in any case."""
        try:
            return self.read(buffer.memory)
        finally:
            buffer.recycle()

    def read(self, data: memoryview | bytes | bytearray) -> list[T]:
        """The records that ``data`` (the next bytes of the channel) completes.

        Raises:
            CorruptRecordError: A length prefix is negative, or the payload does not
                decode.
        """
        view = data if isinstance(data, memoryview) else memoryview(data)
        end = len(view)
        pos = 0
        records: list[T] = []
        if self._length_bytes or self._spanning is not None:
            pos = self._continue_spanning(view, records)
            if self._length_bytes or self._spanning is not None:
                return records  # the whole buffer went into the spanning record
        try:
            pos = self._read_complete(view, pos, end, records)
        except SerializationError as exc:
            raise CorruptRecordError(self.channel, str(exc)) from exc
        if pos < end:
            self._start_spanning(view[pos:end])
        return records

    def check_end(self) -> None:
        """Called at end of partition: a record cut short means corrupt or lost data.

        Raises:
            CorruptRecordError: The channel ended inside a record.
        """
        if self._spanning is not None:
            detail = (
                f"the channel ended inside a record: {self._spanning.received} of "
                f"{self._spanning.length} bytes received"
            )
            self.clear()
            raise CorruptRecordError(self.channel, detail)
        if self._length_bytes:
            detail = (
                f"the channel ended inside a length prefix ({len(self._length_bytes)} of 4 bytes)"
            )
            self.clear()
            raise CorruptRecordError(self.channel, detail)

    def clear(self) -> None:
        """Drops a partial record (the channel was released or failed)."""
        if self._spanning is not None:
            self._spanning.discard()
        self._spanning = None
        self._length_bytes.clear()

    # -- internals -------------------------------------------------------------------

    def _read_complete(self, view: memoryview, pos: int, end: int, records: list[T]) -> int:
        """Decodes the complete records in ``view[pos:end]``; returns where they stop."""
        decoded, consumed = self.serializer.deserialize_complete_frames(view[pos:end])
        records += decoded
        return pos + consumed

    def _check_length(self, length: int) -> None:
        fixed = self.serializer.fixed_size
        if length < 0:
            raise CorruptRecordError(self.channel, f"negative record length {length}")
        if fixed is not None and length != fixed:
            detail = (
                f"record length {length}, but every {self.serializer.name} record is {fixed} bytes"
            )
            raise CorruptRecordError(self.channel, detail)

    def _start_spanning(self, rest: memoryview) -> None:
        if len(rest) < 4:
            self._length_bytes += rest
            return
        (length,) = _unpack_length(rest, 0)
        self._check_length(length)
        self._spanning = _SpanningRecord(length, self.spill_threshold, self.spill_dir)
        self._spanning.add(rest[4:])

    def _continue_spanning(self, view: memoryview, records: list[T]) -> int:
        """Feeds the partial record; returns how many bytes of ``view`` it took."""
        pos = 0
        if self._length_bytes:
            need = 4 - len(self._length_bytes)
            self._length_bytes += view[:need]
            pos = min(need, len(view))
            if len(self._length_bytes) < 4:
                return pos
            (length,) = _unpack_length(self._length_bytes, 0)
            self._length_bytes.clear()
            self._check_length(length)
            self._spanning = _SpanningRecord(length, self.spill_threshold, self.spill_dir)
        spanning = self._spanning
        assert spanning is not None
        take = min(spanning.missing, len(view) - pos)
        spanning.add(view[pos : pos + take])
        pos += take
        if spanning.missing == 0:
            self._spanning = None
            payload = spanning.payload()
            try:
                records.append(self.serializer.deserialize(payload))
            except SerializationError as exc:
                raise CorruptRecordError(self.channel, str(exc)) from exc
        return pos
