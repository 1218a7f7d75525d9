"""Type serializers: records to payloads and back, one at a time or a whole run of frames.

A record travels as a frame, ``[int32 big-endian payload length][payload]``. The record
writer and deserializer do the framing of single payloads; a ``TypeSerializer`` turns one
record into its payload (``serialize``) and back (``deserialize``), and, because per-record
work is what costs in Python, it also frames and unframes a whole run of records at once
(``serialize_frames`` / ``deserialize_frames``) in a few C-level calls:

- fixed-size types pack a run with one ``struct.Struct`` holding ``n`` interleaved
  ``(length, fields...)`` frames (cached per ``n``) and unpack a run with one numpy
  structured view, which also checks every length prefix in one comparison;
- variable-size types build the interleaved list ``[prefix, payload, prefix, payload, ...]``
  with ``map`` and extended-slice assignment and join it once; unframing walks the run with
  ``unpack_from``, which cannot be avoided when every frame has its own length.

``GenericSerializer``, the default for records of unknown type, lives in ``generic`` and is
re-exported here.

Bad bytes raise ``SerializationError`` and nothing else.
"""

from __future__ import annotations

import re
import struct
from collections.abc import Sequence
from typing import Final, Generic, Protocol, TypeAlias, TypeVar, cast, get_origin, overload

import numpy as np

from penstock.errors import SerializationError
from penstock.serialization._frames import (
    _FRAMES_PER_STRUCT,
    _NUMPY_MIN_FRAMES,
    MAX_PAYLOAD_SIZE,
    Payload,
    _complete_payloads,
    _frame_payloads,
    _pickle_record,
    _split_frames,
    _StructCache,
    _type_name,
    _unpickle_record,
)
from penstock.serialization.generic import GenericSerializer

__all__ = [
    "MAX_PAYLOAD_SIZE",
    "BytesSerializer",
    "FixedSizeSerializer",
    "FloatSerializer",
    "GenericSerializer",
    "IntSerializer",
    "Payload",
    "PickleSerializer",
    "StrSerializer",
    "StructSerializer",
    "TypeInfo",
    "TypeSerializer",
    "check_type_info",
    "serializer_for",
]

T = TypeVar("T")

TypeInfo: TypeAlias = type | struct.Struct
"""What a stream's records are, to pick their serializer: ``int``, ``float``, ``str`` or
``bytes``, or a ``struct.Struct`` for records that are tuples of its fixed fields."""


def check_type_info(value: object, parameter: str) -> TypeInfo:
    """``value`` if it can be a stream's ``TypeInfo``, else a TypeError naming ``parameter``.

    A type hint such as ``tuple[int, str]`` or ``int | None`` is accepted (its records
    get ``GenericSerializer``). A sample record (``"int"``, ``0``) is refused: it would
    silently pick the serializer of its own type.
    """
    if isinstance(value, type | struct.Struct):
        return value
    if get_origin(value) is not None:
        return cast(TypeInfo, value)
    msg = (
        f"{parameter} must be a type (int, float, str, bytes, or any other class) or a "
        f"struct.Struct layout, not {value!r} (a {type(value).__name__})"
    )
    raise TypeError(msg)


_INT64_MIN: Final = -(2**63)
_INT64_MAX: Final = 2**63 - 1


class TypeSerializer(Protocol[T]):
    """Turns records of one type into payloads and back; the seam between records and bytes.

    A payload is the part of a frame after its 4-byte length. ``deserialize`` and
    ``deserialize_frames`` raise only ``SerializationError`` on bad bytes.
    """

    @property
    def name(self) -> str:
        """A short name for messages and metrics."""
        ...

    @property
    def fixed_size(self) -> int | None:
        """The payload size of every record, or None when records differ in size."""
        ...

    def serialize(self, record: T) -> bytes:
        """The payload of ``record`` (without the length prefix)."""
        ...

    def deserialize(self, payload: Payload) -> T:
        """The record whose payload is exactly ``payload``."""
        ...

    def serialize_frames(self, records: Sequence[T]) -> bytes:
        """All ``records`` framed (``[length][payload]`` each) and concatenated."""
        ...

    def deserialize_frames(self, data: memoryview) -> list[T]:
        """The records of ``data``, which holds a whole number of complete frames."""
        ...

    def deserialize_complete_frames(self, data: memoryview) -> tuple[list[T], int]:
        """The records of the complete frames at the start of ``data``, in one pass.

        Returns:
            The records and the number of bytes their frames take; the rest of
            ``data`` is the start of a frame that continues in later bytes.

        Raises:
            SerializationError: A length prefix is negative or a payload is invalid.
        """
        ...


# ---------------------------------------------------------------------------------------------
# Fixed-size layouts
# ---------------------------------------------------------------------------------------------

_FORMAT_ITEM: Final = re.compile(r"\s*(\d*)([a-zA-Z?])\s*")
_NUMPY_CODES: Final = {
    "b": "i1",
    "B": "u1",
    "h": ">i2",
    "H": ">u2",
    "i": ">i4",
    "I": ">u4",
    "l": ">i4",
    "L": ">u4",
    "q": ">i8",
    "Q": ">u8",
    "e": ">f2",
    "f": ">f4",
    "d": ">f8",
}


def _standard_code(native: str) -> str:
    """The standard code of ``native``'s width on this machine, unsigned if it is."""
    signed = {4: "i", 8: "q"}[struct.calcsize("@" + native)]
    return signed.upper() if native.isupper() else signed


_NATIVE_WIDTHS: Final = str.maketrans({code: _standard_code(code) for code in "lLnNP"})
"""Native-size codes as the standard codes of the same width on this machine."""


def _normalize_format(fmt: str) -> str:
    """``fmt`` without its byte-order character; every layout here is big-endian.

    A layout in native mode (no prefix, or ``@``) keeps its fields' native widths: a
    ``long`` is 8 bytes on 64-bit Linux, where the standard ``l`` has 4, so it is
    written ``q``; ``n``, ``N`` and ``P``, native only, likewise.
    """
    body = fmt.strip()
    native = body[:1] not in ("=", "<", ">", "!")
    if body[:1] in ("@", "=", "<", ">", "!"):
        body = body[1:]
    if native:
        body = body.translate(_NATIVE_WIDTHS)
    try:
        struct.Struct(">" + body)
    except struct.error as exc:
        msg = f"invalid struct format {fmt!r}: {exc}"
        raise SerializationError(msg) from exc
    return body


def _numpy_layout(body: str) -> list[tuple[str, int]] | None:
    """``(numpy format, offset)`` of every field after the length, or None if not numeric.

    Only numeric fields qualify: numpy strips the trailing NUL bytes of ``s`` fields and
    reads ``?`` bytes differently from ``struct``, so those layouts stay on ``struct``.
    """
    fields: list[tuple[str, int]] = []
    offset = 4
    for match in _FORMAT_ITEM.finditer(body):
        count = int(match.group(1) or "1")
        code = match.group(2)
        if code == "x":
            offset += count
            continue
        numpy_code = _NUMPY_CODES.get(code)
        if numpy_code is None:
            return None
        width = struct.calcsize(">" + code)
        for _ in range(count):
            fields.append((numpy_code, offset))
            offset += width
    return fields


class FixedSizeSerializer(Generic[T]):
    """A serializer whose payload is one fixed big-endian ``struct`` layout.

    ``frame_struct`` packs a whole frame, ``(payload_length, *fields)``, so a writer can
    put a record into a segment with one call:
    ``frame_struct.pack_into(segment, pos, fixed_size, value)``.

    Attributes:
        name: A short name for messages.
        fixed_size: The payload size of every record.
        payload_struct: Packs and unpacks one payload.
        frame_struct: Packs and unpacks one frame, length prefix included.
    """

    __slots__ = (
        "_field_count",
        "_fmt",
        "_frame_dtype",
        "_frames",
        "_scalar",
        "_value_names",
        "fixed_size",
        "frame_struct",
        "name",
        "payload_struct",
    )

    def __init__(self, name: str, fmt: str, *, scalar: bool) -> None:
        body = _normalize_format(fmt)
        self._fmt = fmt
        self.name = name
        self.payload_struct = struct.Struct(">" + body)
        self.frame_struct = struct.Struct(">i" + body)
        self.fixed_size: int = self.payload_struct.size
        self._field_count = len(self.payload_struct.unpack(bytes(self.fixed_size)))
        if self._field_count == 0 or (scalar and self._field_count != 1):
            msg = f"struct format {fmt!r} has {self._field_count} fields; a {name} needs " + (
                "exactly one" if scalar else "at least one"
            )
            raise SerializationError(msg)
        self._scalar = scalar
        self._frames = _StructCache("i" + body)
        layout = _numpy_layout(body)
        self._frame_dtype: np.dtype[np.void] | None = None
        self._value_names: list[str] = []
        if layout is not None:
            self._value_names = [f"f{index}" for index in range(len(layout))]
            self._frame_dtype = np.dtype(
                {
                    "names": ["length", *self._value_names],
                    "formats": [">i4", *(code for code, _ in layout)],
                    "offsets": [0, *(offset for _, offset in layout)],
                    "itemsize": self.frame_struct.size,
                }
            )

    def __reduce__(self) -> tuple[object, ...]:
        # Structs do not pickle; a serializer travels (inside job graphs) as the
        # arguments that rebuild it.
        return (_rebuild_fixed_size, (type(self), self.name, self._fmt, self._scalar))

    @property
    def is_scalar(self) -> bool:
        """True when records are single values; False when they are tuples of fields."""
        return self._scalar

    def serialize(self, record: T) -> bytes:
        try:
            if self._scalar:
                return self.payload_struct.pack(record)
            return self.payload_struct.pack(*cast("Sequence[object]", record))
        except (struct.error, TypeError, OverflowError) as exc:
            # struct raises OverflowError, not struct.error, for a float too large for
            # "f" or "e" and for a numpy integer beyond the field's range.
            raise SerializationError(self._bad_record_message(record)) from exc

    def deserialize(self, payload: Payload) -> T:
        if len(payload) != self.fixed_size:
            msg = f"{self.name} payload must be {self.fixed_size} bytes, got {len(payload)}"
            raise SerializationError(msg)
        values = self.payload_struct.unpack(payload)
        return cast("T", values[0] if self._scalar else values)

    def serialize_frames(self, records: Sequence[T]) -> bytes:
        count = len(records)
        if count == 0:
            return b""
        stride = self._field_count + 1
        flat: list[object] = [self.fixed_size] * (count * stride)
        try:
            if self._scalar:
                flat[1::2] = records
            else:
                rows = cast("Sequence[Sequence[object]]", records)
                if set(map(len, rows)) != {self._field_count}:
                    raise TypeError
                for index, column in enumerate(zip(*rows, strict=True), start=1):
                    flat[index::stride] = column
            if count <= _FRAMES_PER_STRUCT:
                return self._frames.get(count).pack(*flat)
            parts = []
            for first in range(0, count, _FRAMES_PER_STRUCT):
                last = min(count, first + _FRAMES_PER_STRUCT)
                chunk = flat[first * stride : last * stride]
                parts.append(self._frames.get(last - first).pack(*chunk))
            return b"".join(parts)
        except (struct.error, TypeError, ValueError, OverflowError):
            pass
        # Something did not pack: find the record and say which one.
        for record in records:
            self.serialize(record)
        msg = f"{self.name} could not serialize a run of {count} records"
        raise SerializationError(msg)

    def deserialize_complete_frames(self, data: memoryview) -> tuple[list[T], int]:
        consumed = len(data) // self.frame_struct.size * self.frame_struct.size
        return (self.deserialize_frames(data[:consumed]) if consumed else []), consumed

    def deserialize_frames(self, data: memoryview) -> list[T]:
        frame_size = self.frame_struct.size
        total = len(data)
        if total % frame_size:
            msg = (
                f"{total} bytes are not a whole number of {self.name} frames of {frame_size} bytes"
            )
            raise SerializationError(msg)
        count = total // frame_size
        if count == 0:
            return []
        if self._frame_dtype is not None and count >= _NUMPY_MIN_FRAMES:
            frames = np.frombuffer(data, dtype=self._frame_dtype)
            wrong = frames["length"] != self.fixed_size
            if wrong.any():
                self._raise_wrong_length(int(wrong.argmax()), int(frames["length"][wrong][0]))
            if self._scalar:
                return cast("list[T]", frames["f0"].tolist())
            return cast("list[T]", frames[self._value_names].tolist())
        return self._unpack_frames(data, count)

    def _unpack_frames(self, data: memoryview, count: int) -> list[T]:
        stride = self._field_count + 1
        frame_size = self.frame_struct.size
        records: list[T] = []
        for first in range(0, count, _FRAMES_PER_STRUCT):
            last = min(count, first + _FRAMES_PER_STRUCT)
            values = self._frames.get(last - first).unpack_from(data, first * frame_size)
            lengths = values[0::stride]
            if lengths.count(self.fixed_size) != last - first:
                index = next(i for i, n in enumerate(lengths) if n != self.fixed_size)
                self._raise_wrong_length(first + index, lengths[index])
            if self._scalar:
                records += values[1::2]
            else:
                columns = [values[field::stride] for field in range(1, stride)]
                records += cast("list[T]", list(zip(*columns, strict=True)))
        return records

    def _raise_wrong_length(self, index: int, length: int) -> None:
        msg = (
            f"{self.name} frame {index} announces a payload of {length} bytes, "
            f"but every {self.name} payload is {self.fixed_size} bytes"
        )
        raise SerializationError(msg)

    def _bad_record_message(self, record: object) -> str:
        return (
            f"{self.name} cannot serialize a record of type {_type_name(record)} "
            f"with struct layout {self.payload_struct.format!r}"
        )

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.payload_struct.format!r})"


def _rebuild_fixed_size(
    kind: type[FixedSizeSerializer[object]], name: str, fmt: str, scalar: bool
) -> FixedSizeSerializer[object]:
    serializer = kind.__new__(kind)
    FixedSizeSerializer.__init__(serializer, name, fmt, scalar=scalar)
    return serializer


class IntSerializer(FixedSizeSerializer[int]):
    """Signed 64-bit big-endian integers, like Flink's ``LongSerializer``.

    Any int-like value (``bool``, numpy integers) is accepted and comes back as ``int``.
    """

    __slots__ = ()

    def __init__(self) -> None:
        super().__init__("IntSerializer", "q", scalar=True)

    def _bad_record_message(self, record: object) -> str:
        bounds = f"the signed 64-bit range [{_INT64_MIN}, {_INT64_MAX}]"
        if isinstance(record, int):
            return (
                f"IntSerializer cannot serialize int {record}: it is outside {bounds}; "
                "GenericSerializer carries ints of any size"
            )
        return f"IntSerializer expects int records in {bounds}, got {_type_name(record)}"

    def __repr__(self) -> str:
        return "IntSerializer()"


class FloatSerializer(FixedSizeSerializer[float]):
    """64-bit IEEE 754 floats, big-endian, like Flink's ``DoubleSerializer``."""

    __slots__ = ()

    def __init__(self) -> None:
        super().__init__("FloatSerializer", "d", scalar=True)

    def _bad_record_message(self, record: object) -> str:
        return f"FloatSerializer expects float records, got {_type_name(record)}"

    def __repr__(self) -> str:
        return "FloatSerializer()"


class StructSerializer(FixedSizeSerializer[tuple[object, ...]]):
    """Records of a fixed ``struct`` layout, always big-endian.

    Records are tuples with one item per field, even for a single-field layout: a layout
    has one record type, whatever its width. ``IntSerializer`` and ``FloatSerializer`` are
    the scalar counterparts. Any byte-order prefix of ``fmt`` is replaced by ``>``; a
    native layout keeps its fields' native widths (``l`` is written as ``q`` on 64-bit
    Linux), not their alignment padding.
    """

    __slots__ = ()

    def __init__(self, fmt: str) -> None:
        super().__init__("StructSerializer", fmt, scalar=False)


# ---------------------------------------------------------------------------------------------
# Variable-size types
# ---------------------------------------------------------------------------------------------


class BytesSerializer:
    """Raw bytes; ``bytearray`` and ``memoryview`` records come back as ``bytes``."""

    __slots__ = ()

    name: Final = "BytesSerializer"
    fixed_size: Final = None

    def serialize(self, record: bytes | bytearray | memoryview) -> bytes:
        # bytes(5) would be five zero bytes: accept only the bytes-like types.
        if not isinstance(record, bytes | bytearray | memoryview):
            msg = f"BytesSerializer expects bytes-like records, got {_type_name(record)}"
            raise SerializationError(msg)
        return bytes(record)

    def deserialize(self, payload: Payload) -> bytes:
        return bytes(payload)

    def serialize_frames(self, records: Sequence[bytes | bytearray | memoryview]) -> bytes:
        if set(map(type, records)) <= {bytes}:
            return _frame_payloads(cast("list[bytes]", records))
        return _frame_payloads(list(map(self.serialize, records)))

    def deserialize_frames(self, data: memoryview) -> list[bytes]:
        buf, bounds = _split_frames(data)
        return [buf[start:stop] for start, stop in bounds]

    def deserialize_complete_frames(self, data: memoryview) -> tuple[list[bytes], int]:
        return _complete_payloads(data)

    def __repr__(self) -> str:
        return "BytesSerializer()"


def _decode_surrogates(payload: Payload) -> str:
    """Text with lone surrogates, as ``StrSerializer`` writes it (else SerializationError)."""
    try:
        return str(payload, "utf-8", "surrogatepass")
    except UnicodeDecodeError as exc:
        msg = f"StrSerializer payload is not valid UTF-8: {exc}"
        raise SerializationError(msg) from exc


class StrSerializer:
    """Text as UTF-8.

    A lone surrogate, which a file name that is not UTF-8 holds once ``os.listdir``
    has decoded it, is written as its three UTF-8 bytes (Python's ``surrogatepass``),
    so that any ``str`` comes back as it was, as its key hash already takes it.
    """

    __slots__ = ()

    name: Final = "StrSerializer"
    fixed_size: Final = None

    def serialize(self, record: str) -> bytes:
        try:
            return record.encode("utf-8", "surrogatepass")
        except AttributeError as exc:
            msg = f"StrSerializer cannot encode a record of type {_type_name(record)}: {exc}"
            raise SerializationError(msg) from exc

    def deserialize(self, payload: Payload) -> str:
        try:
            return str(payload, "utf-8")
        except UnicodeDecodeError:
            return _decode_surrogates(payload)

    def serialize_frames(self, records: Sequence[str]) -> bytes:
        if set(map(type, records)) <= {str}:
            try:
                return _frame_payloads(list(map(str.encode, records)))
            except UnicodeEncodeError:
                pass
        return _frame_payloads(list(map(self.serialize, records)))

    def deserialize_complete_frames(self, data: memoryview) -> tuple[list[str], int]:
        payloads, consumed = _complete_payloads(data)
        try:
            return [str(payload, "utf-8") for payload in payloads], consumed
        except UnicodeDecodeError:
            return list(map(_decode_surrogates, payloads)), consumed

    def deserialize_frames(self, data: memoryview) -> list[str]:
        buf, bounds = _split_frames(data)
        try:
            return [str(buf[start:stop], "utf-8") for start, stop in bounds]
        except UnicodeDecodeError:
            return [_decode_surrogates(buf[start:stop]) for start, stop in bounds]

    def __repr__(self) -> str:
        return "StrSerializer()"


class PickleSerializer:
    """Any picklable record, pickled with cloudpickle and loaded with ``pickle``."""

    __slots__ = ()

    name: Final = "PickleSerializer"
    fixed_size: Final = None

    def serialize(self, record: object) -> bytes:
        return _pickle_record(record)

    def deserialize(self, payload: Payload) -> object:
        return _unpickle_record(payload)

    def serialize_frames(self, records: Sequence[object]) -> bytes:
        return _frame_payloads(list(map(_pickle_record, records)))

    def deserialize_frames(self, data: memoryview) -> list[object]:
        buf, bounds = _split_frames(data)
        return [_unpickle_record(buf[start:stop]) for start, stop in bounds]

    def deserialize_complete_frames(self, data: memoryview) -> tuple[list[object], int]:
        payloads, consumed = _complete_payloads(data)
        return list(map(_unpickle_record, payloads)), consumed

    def __repr__(self) -> str:
        return "PickleSerializer()"


# ---------------------------------------------------------------------------------------------


@overload
def serializer_for(type_hint_or_sample: type[T]) -> TypeSerializer[T]: ...
@overload
def serializer_for(type_hint_or_sample: T) -> TypeSerializer[T]: ...
def serializer_for(type_hint_or_sample: object) -> object:
    """The serializer for a type, or for records like a sample one.

    ``bytes``, ``str``, ``int`` and ``float`` (the exact types, not subclasses such as
    ``bool``) get their fast serializers, and a ``struct.Struct`` layout gets a
    ``StructSerializer`` of its format; anything else gets ``GenericSerializer``. A
    sample ``int`` chooses ``IntSerializer``, which refuses ints beyond 64 bits: pass
    nothing more specific than ``object`` if records may be larger.
    """
    if isinstance(type_hint_or_sample, struct.Struct):
        return StructSerializer(type_hint_or_sample.format)
    kind = type_hint_or_sample if isinstance(type_hint_or_sample, type) else None
    if kind is None:
        kind = type(type_hint_or_sample)
    if kind is bytes:
        return BytesSerializer()
    if kind is str:
        return StrSerializer()
    if kind is int:
        return IntSerializer()
    if kind is float:
        return FloatSerializer()
    return GenericSerializer()
