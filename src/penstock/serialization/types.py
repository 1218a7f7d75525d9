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

``GenericSerializer`` is the default for records of unknown type. Its payload is a tag byte
and a body: fixed-width ints and floats, raw bytes and UTF-8 text, a compact layout for
tuples of those (``(word, 1)`` is the most common record there is), and a pickle for
everything else. Every type survives the round trip: ``True`` stays ``bool``, ``1`` stays
``int``, ints beyond 64 bits and tuple subclasses go through pickle.

Bad bytes raise ``SerializationError`` and nothing else.
"""

from __future__ import annotations

import pickle
import re
import struct
from collections.abc import Callable, Sequence
from itertools import repeat
from operator import add, itemgetter
from typing import Final, Generic, Protocol, TypeAlias, TypeVar, cast, overload

import cloudpickle
import numpy as np

from penstock.errors import SerializationError

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
    "TypeSerializer",
    "serializer_for",
]

T = TypeVar("T")

Payload: TypeAlias = bytes | bytearray | memoryview
"""What ``deserialize`` accepts: the bytes of exactly one payload."""

MAX_PAYLOAD_SIZE: Final = 2**31 - 1
"""The largest payload a frame can announce (its length is a signed 32-bit int)."""

_LENGTH: Final = struct.Struct(">i")
_INT64_MIN: Final = -(2**63)
_INT64_MAX: Final = 2**63 - 1

# A run longer than this is packed in chunks, so that a cached Struct never holds more than
# this many frames (a Struct costs memory per field) and the cache stays small.
_FRAMES_PER_STRUCT: Final = 1024
_STRUCT_CACHE_SIZE: Final = 32
# Below this many frames a numpy view costs more than it saves.
_NUMPY_MIN_FRAMES: Final = 16


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


def _frame_payloads(payloads: list[bytes]) -> bytes:
    """Frames ready payloads with one ``b"".join`` over ``[prefix, payload, ...]``."""
    count = len(payloads)
    parts: list[bytes] = [b""] * (2 * count)
    try:
        parts[0::2] = map(_LENGTH.pack, map(len, payloads))
    except struct.error as exc:
        msg = f"a payload is larger than the maximum frame payload of {MAX_PAYLOAD_SIZE} bytes"
        raise SerializationError(msg) from exc
    parts[1::2] = payloads
    return b"".join(parts)


def _split_frames(data: memoryview | bytes) -> tuple[bytes, list[tuple[int, int]]]:
    """The bytes of ``data`` and the ``(start, stop)`` of every payload in it."""
    buf = bytes(data)
    end = len(buf)
    bounds: list[tuple[int, int]] = []
    append = bounds.append
    unpack = _LENGTH.unpack_from
    pos = 0
    while pos < end:
        if end - pos < 4:
            msg = f"truncated frame: {end - pos} bytes left at offset {pos}, need a 4-byte length"
            raise SerializationError(msg)
        (size,) = unpack(buf, pos)
        pos += 4
        if not 0 <= size <= end - pos:
            msg = (
                f"frame at offset {pos - 4} announces {size} payload bytes, "
                f"but {end - pos} bytes remain"
            )
            raise SerializationError(msg)
        append((pos, pos + size))
        pos += size
    return buf, bounds


def _complete_frames_end(data: memoryview) -> int:
    """Where the complete frames at the start of ``data`` end."""
    unpack = _LENGTH.unpack_from
    end = len(data)
    pos = 0
    while pos + 4 <= end:
        (size,) = unpack(data, pos)
        if size < 0:
            msg = f"negative record length {size} at offset {pos}"
            raise SerializationError(msg)
        stop = pos + 4 + size
        if stop > end:
            break
        pos = stop
    return pos


def _complete_payloads(data: memoryview) -> tuple[list[bytes], int]:
    """The payloads of the complete frames at the start of ``data``.

    One copy of the region, then a slice per payload: cheaper than a view and a copy
    per record.
    """
    whole = data.tobytes()
    unpack = _LENGTH.unpack_from
    end = len(whole)
    pos = 0
    payloads: list[bytes] = []
    append = payloads.append
    while pos + 4 <= end:
        (size,) = unpack(whole, pos)
        if size < 0:
            msg = f"negative record length {size} at offset {pos}"
            raise SerializationError(msg)
        stop = pos + 4 + size
        if stop > end:
            break
        append(whole[pos + 4 : stop])
        pos = stop
    return payloads, pos


def _type_name(value: object) -> str:
    kind = type(value)
    if kind.__module__ == "builtins":
        return kind.__qualname__
    return f"{kind.__module__}.{kind.__qualname__}"


class _StructCache:
    """Structs for ``n`` repetitions of one frame layout, the most recent few kept."""

    __slots__ = ("_by_count", "_layout")

    def __init__(self, layout: str) -> None:
        self._layout = layout
        self._by_count: dict[int, struct.Struct] = {}

    def get(self, count: int) -> struct.Struct:
        found = self._by_count.get(count)
        if found is None:
            if len(self._by_count) >= _STRUCT_CACHE_SIZE:
                del self._by_count[next(iter(self._by_count))]
            found = self._by_count[count] = struct.Struct(">" + self._layout * count)
        return found


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


def _normalize_format(fmt: str) -> str:
    """``fmt`` without its byte-order character; every layout here is big-endian."""
    body = fmt.strip()
    if body[:1] in ("@", "=", "<", ">", "!"):
        body = body[1:]
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

    def serialize(self, record: T) -> bytes:
        try:
            if self._scalar:
                return self.payload_struct.pack(record)
            return self.payload_struct.pack(*cast("Sequence[object]", record))
        except (struct.error, TypeError) as exc:
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
        except (struct.error, TypeError, ValueError):
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
    the scalar counterparts. Any byte-order prefix of ``fmt`` is replaced by ``>``.
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


class StrSerializer:
    """Text as UTF-8."""

    __slots__ = ()

    name: Final = "StrSerializer"
    fixed_size: Final = None

    def serialize(self, record: str) -> bytes:
        try:
            return record.encode()
        except (AttributeError, UnicodeEncodeError) as exc:
            msg = f"StrSerializer cannot encode a record of type {_type_name(record)}: {exc}"
            raise SerializationError(msg) from exc

    def deserialize(self, payload: Payload) -> str:
        try:
            return str(payload, "utf-8")
        except UnicodeDecodeError as exc:
            msg = f"StrSerializer payload is not valid UTF-8: {exc}"
            raise SerializationError(msg) from exc

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
        except UnicodeDecodeError as exc:
            msg = f"StrSerializer payload is not valid UTF-8: {exc}"
            raise SerializationError(msg) from exc

    def deserialize_frames(self, data: memoryview) -> list[str]:
        buf, bounds = _split_frames(data)
        try:
            return [str(buf[start:stop], "utf-8") for start, stop in bounds]
        except UnicodeDecodeError as exc:
            msg = f"StrSerializer payload is not valid UTF-8: {exc}"
            raise SerializationError(msg) from exc

    def __repr__(self) -> str:
        return "StrSerializer()"


def _pickle_record(record: object) -> bytes:
    # cloudpickle, not pickle: records of classes defined in a job script (``__main__``)
    # or in a function must be pickled by value to load in another process.
    try:
        return cast("bytes", cloudpickle.dumps(record, protocol=pickle.HIGHEST_PROTOCOL))
    except Exception as exc:
        msg = f"cannot pickle a record of type {_type_name(record)}: {exc}"
        raise SerializationError(msg) from exc


def _unpickle_record(payload: Payload) -> object:
    try:
        return pickle.loads(payload)
    except Exception as exc:
        msg = f"cannot unpickle a record: {type(exc).__name__}: {exc}"
        raise SerializationError(msg) from exc


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
# GenericSerializer
# ---------------------------------------------------------------------------------------------

# The tag byte that starts every GenericSerializer payload, and the kind of a tuple element.
_NONE: Final = 0  # no body
_BOOL: Final = 1  # one byte, 0 or 1
_INT: Final = 2  # int64
_FLOAT: Final = 3  # float64
_BYTES: Final = 4  # the rest of the payload
_STR: Final = 5  # the rest of the payload, UTF-8
_TUPLE: Final = 6  # see _TuplePlan
_PICKLE: Final = 7  # the rest of the payload, a pickle

_KIND_OF_TYPE: Final[dict[type, int]] = {
    type(None): _NONE,
    bool: _BOOL,
    int: _INT,
    float: _FLOAT,
    bytes: _BYTES,
    str: _STR,
    tuple: _TUPLE,
}
_FIXED_CODE: Final = {_NONE: "", _BOOL: "?", _INT: "q", _FLOAT: "d"}
_MAX_ARITY: Final = 255
_MAX_DEPTH: Final = 16
_PLAN_CACHE_SIZE: Final = 1024

_TAG_INT: Final = struct.Struct(">Bq")
_TAG_FLOAT: Final = struct.Struct(">Bd")
_FRAME_TAG: Final = struct.Struct(">iB")
_INT_VALUE: Final = struct.Struct(">q")
_FLOAT_VALUE: Final = struct.Struct(">d")
_TEXT_PAIRS: Final = (
    {bytes([_STR, kind]) for kind in (_BOOL, _INT, _FLOAT)},
    {bytes([kind, _STR]) for kind in (_BOOL, _INT, _FLOAT)},
)
_NUMBER_FRAME: Final = np.dtype(
    {
        "names": ["length", "tag", "value"],
        "formats": [">i4", "u1", "V8"],
        "offsets": [0, 4, 5],
        "itemsize": 13,
    }
)
_NUMBER_HEADS: Final = (b"\x00\x00\x00\x09\x02", b"\x00\x00\x00\x09\x03")


class _Unsupported(Exception):
    """A tuple the compact layout cannot carry; the record is pickled instead."""


def _tuple_getter(indices: Sequence[int]) -> Callable[[Sequence[object]], tuple[object, ...]]:
    """Like ``itemgetter(*indices)``, but always returning a tuple."""
    if not indices:
        return lambda _: ()
    if len(indices) == 1:
        index = indices[0]
        return lambda row: (row[index],)
    return cast("Callable[[Sequence[object]], tuple[object, ...]]", itemgetter(*indices))


class _TuplePlan:
    """How tuples with one sequence of element kinds are laid out.

    Payload: ``[TUPLE][arity][kind of each element]`` (the header), then one struct with the
    fixed-width elements (bool ``?``, int ``q``, float ``d``; None takes no bytes) followed by
    the byte length (``I``) of each variable element (bytes, UTF-8 str, nested tuple
    payload), then the variable elements' bytes in order. One ``pack`` writes all but the
    variable bytes; one ``unpack_from`` reads them back.
    """

    __slots__ = (
        "assemble",
        "base_size",
        "body",
        "fixed_count",
        "fixed_indices",
        "frame",
        "frame_assemble",
        "frame_variable_kind",
        "get_fixed",
        "get_variable",
        "has_nested",
        "header",
        "variable_indices",
        "variable_kinds",
    )

    def __init__(self, kinds: Sequence[int]) -> None:
        self.header = bytes([_TUPLE, len(kinds), *kinds])
        fixed = [i for i, kind in enumerate(kinds) if kind in _FIXED_CODE and kind != _NONE]
        variable = [i for i, kind in enumerate(kinds) if kind not in _FIXED_CODE]
        self.fixed_indices = tuple(fixed)
        self.variable_indices = tuple(variable)
        self.variable_kinds = tuple(kinds[index] for index in variable)
        self.has_nested = _TUPLE in self.variable_kinds
        self.fixed_count = len(fixed)
        layout = "".join(_FIXED_CODE[kinds[index]] for index in fixed) + "I" * len(variable)
        self.body = struct.Struct(">" + layout)
        self.frame = struct.Struct(f">i{len(self.header)}s{layout}")
        self.base_size = len(self.header) + self.body.size
        self.get_fixed = _tuple_getter(fixed)
        self.get_variable = _tuple_getter(variable)
        # Decoding yields fixed values, then variable values, then a None for every None
        # element; ``assemble`` puts them back in element order.
        none_slot = len(fixed) + len(variable)
        slot = {index: position for position, index in enumerate(fixed + variable)}
        order = [slot.get(index, none_slot) for index in range(len(kinds))]
        self.assemble = _tuple_getter(order)
        # For frames decoded straight from a run: ``frame.unpack_from`` gives (length, header,
        # fixed..., variable lengths...), and the one variable value and a None follow.
        # ``frame_variable_kind`` is _TUPLE when the layout is not that simple.
        self.frame_variable_kind = _TUPLE
        if not variable:
            self.frame_variable_kind = _NONE
        elif len(variable) == 1 and self.variable_kinds[0] != _TUPLE:
            self.frame_variable_kind = self.variable_kinds[0]
        frame_slot = {index: position for position, index in enumerate(fixed, start=2)}
        if variable:
            frame_slot[variable[0]] = 3 + len(fixed)
        frame_none = 2 + len(fixed) + len(variable) + (1 if variable else 0)
        self.frame_assemble = _tuple_getter(
            [frame_slot.get(index, frame_none) for index in range(len(kinds))]
        )


class GenericSerializer:
    """The serializer for records of unknown type: compact for common values, pickle else.

    Payload: a tag byte, then ``None`` (nothing), ``bool`` (one byte), ``int`` (int64),
    ``float`` (float64), ``bytes`` (raw), ``str`` (UTF-8), ``tuple`` of those, nested up to
    16 levels (a header naming the element kinds, then one packed struct, then the
    variable-size elements), or anything else as a pickle. Types are preserved exactly:
    subclasses (``IntEnum``, named tuples) and ints outside int64 are pickled.
    """

    __slots__ = ("_decode_plans", "_encode_plans", "_float_frames", "_int_frames")

    name: Final = "GenericSerializer"
    fixed_size: Final = None

    def __init__(self) -> None:
        self._encode_plans: dict[tuple[type, ...], _TuplePlan | None] = {}
        self._decode_plans: dict[bytes, _TuplePlan] = {}
        self._int_frames = _StructCache("iBq")
        self._float_frames = _StructCache("iBd")

    # -- one record ----------------------------------------------------------------------

    def serialize(self, record: object) -> bytes:
        kind = _KIND_OF_TYPE.get(type(record))
        try:
            if kind == _STR:
                return b"\x05" + cast("str", record).encode()
            if kind == _INT:
                return _TAG_INT.pack(_INT, cast("int", record))
            if kind == _TUPLE:
                return self._encode_tuple(cast("tuple[object, ...]", record), 0)
            if kind == _BYTES:
                return b"\x04" + cast("bytes", record)
            if kind == _FLOAT:
                return _TAG_FLOAT.pack(_FLOAT, cast("float", record))
            if kind == _BOOL:
                return b"\x01\x01" if record else b"\x01\x00"
            if kind == _NONE:
                return b"\x00"
        except (struct.error, UnicodeEncodeError, _Unsupported):
            pass
        return b"\x07" + _pickle_record(record)

    def deserialize(self, payload: Payload) -> object:
        return self._decode(bytes(payload), 0)

    def _encode_tuple(self, record: tuple[object, ...], depth: int) -> bytes:
        if depth >= _MAX_DEPTH:
            raise _Unsupported
        plan = self._plan_for(record)
        variable: list[bytes] = []
        for kind, value in zip(plan.variable_kinds, plan.get_variable(record), strict=True):
            if kind == _STR:
                variable.append(cast("str", value).encode())
            elif kind == _BYTES:
                variable.append(cast("bytes", value))
            else:
                variable.append(self._encode_tuple(cast("tuple[object, ...]", value), depth + 1))
        body = plan.body.pack(*plan.get_fixed(record), *map(len, variable))
        return b"".join([plan.header, body, *variable])

    def _plan_for(self, record: tuple[object, ...]) -> _TuplePlan:
        types = tuple(map(type, record))
        try:
            plan = self._encode_plans[types]
        except KeyError:
            plan = None
            if len(types) <= _MAX_ARITY and all(kind in _KIND_OF_TYPE for kind in types):
                plan = _TuplePlan([_KIND_OF_TYPE[kind] for kind in types])
            if len(self._encode_plans) < _PLAN_CACHE_SIZE:
                self._encode_plans[types] = plan
        if plan is None:
            raise _Unsupported
        return plan

    def _decode(self, payload: bytes, depth: int) -> object:
        if not payload:
            msg = "GenericSerializer payload is empty; it needs at least a tag byte"
            raise SerializationError(msg)
        tag = payload[0]
        size = len(payload)
        try:
            if tag == _STR:
                return str(payload[1:], "utf-8")
            if tag == _INT and size == 9:
                return _INT_VALUE.unpack_from(payload, 1)[0]
            if tag == _TUPLE:
                return self._decode_tuple(payload, depth)
            if tag == _BYTES:
                return payload[1:]
            if tag == _FLOAT and size == 9:
                return _FLOAT_VALUE.unpack_from(payload, 1)[0]
            if tag == _BOOL and size == 2 and payload[1] <= 1:
                return payload[1] == 1
            if tag == _NONE and size == 1:
                return None
            if tag == _PICKLE:
                return _unpickle_record(payload[1:])
        except UnicodeDecodeError as exc:
            msg = f"GenericSerializer str payload is not valid UTF-8: {exc}"
            raise SerializationError(msg) from exc
        msg = f"GenericSerializer payload of {size} bytes has a bad tag or size (tag {tag})"
        raise SerializationError(msg)

    def _decode_tuple(self, payload: bytes, depth: int) -> tuple[object, ...]:
        if depth >= _MAX_DEPTH:
            msg = f"GenericSerializer tuples nest deeper than {_MAX_DEPTH} levels"
            raise SerializationError(msg)
        if len(payload) < 2 or len(payload) < 2 + payload[1]:
            msg = "GenericSerializer tuple payload is truncated in its header"
            raise SerializationError(msg)
        header = payload[: 2 + payload[1]]
        plan = self._decode_plans.get(header)
        if plan is None:
            kinds = header[2:]
            if any(kind >= _PICKLE for kind in kinds):
                msg = f"GenericSerializer tuple header has an unknown element kind: {kinds!r}"
                raise SerializationError(msg)
            plan = _TuplePlan(kinds)
            if len(self._decode_plans) < _PLAN_CACHE_SIZE:
                self._decode_plans[header] = plan
        try:
            values = plan.body.unpack_from(payload, len(header))
        except struct.error as exc:
            msg = "GenericSerializer tuple payload is truncated in its fixed fields"
            raise SerializationError(msg) from exc
        fixed_count = plan.fixed_count
        if not plan.variable_kinds:
            if plan.base_size != len(payload):
                self._raise_tuple_size(payload, plan.base_size)
            return plan.assemble((*values, None))
        decoded = list(values[:fixed_count])
        pos = plan.base_size
        for kind, length in zip(plan.variable_kinds, values[fixed_count:], strict=True):
            stop = pos + length
            if kind == _STR:
                try:
                    decoded.append(str(payload[pos:stop], "utf-8"))
                except UnicodeDecodeError as exc:
                    msg = f"GenericSerializer tuple has a str that is not valid UTF-8: {exc}"
                    raise SerializationError(msg) from exc
            elif kind == _BYTES:
                decoded.append(payload[pos:stop])
            else:
                decoded.append(self._decode_tuple(payload[pos:stop], depth + 1))
            pos = stop
        if pos != len(payload):
            self._raise_tuple_size(payload, pos)
        decoded.append(None)
        return plan.assemble(decoded)

    @staticmethod
    def _raise_tuple_size(payload: bytes, expected: int) -> None:
        msg = (
            f"GenericSerializer tuple payload is {len(payload)} bytes, "
            f"but its header and lengths describe {expected}"
        )
        raise SerializationError(msg)

    # -- runs of records -----------------------------------------------------------------

    def serialize_frames(self, records: Sequence[object]) -> bytes:
        if not records:
            return b""
        types = set(map(type, records))
        if len(types) == 1:
            try:
                framed = self._serialize_uniform(types.pop(), records)
            except (struct.error, UnicodeEncodeError, _Unsupported, TypeError, ValueError):
                framed = None
            if framed is not None:
                return framed
        return _frame_payloads(list(map(self.serialize, records)))

    def _serialize_uniform(self, kind: type, records: Sequence[object]) -> bytes | None:
        """All ``records`` (of type ``kind``) framed in bulk, or None to go one by one."""
        count = len(records)
        if kind is str or kind is bytes:
            if kind is str:
                payloads = list(map(str.encode, cast("Sequence[str]", records)))
            else:
                payloads = list(cast("Sequence[bytes]", records))
            lengths = map(add, map(len, payloads), repeat(1))
            tag = _STR if kind is str else _BYTES
            parts: list[object] = [b""] * (2 * count)
            parts[0::2] = map(_FRAME_TAG.pack, lengths, repeat(tag, count))
            parts[1::2] = payloads
            return b"".join(cast("list[bytes]", parts))
        if kind is int or kind is float:
            flat: list[object] = [9] * (3 * count)
            flat[1::3] = repeat(_INT if kind is int else _FLOAT, count)
            flat[2::3] = records
            cache = self._int_frames if kind is int else self._float_frames
            frames = []
            for first in range(0, count, _FRAMES_PER_STRUCT):
                last = min(count, first + _FRAMES_PER_STRUCT)
                frames.append(cache.get(last - first).pack(*flat[first * 3 : last * 3]))
            return b"".join(frames)
        if kind is tuple:
            # Column by column: one transpose (ragged rows raise ValueError), then one type
            # set per column, instead of a type signature per row.
            rows = cast("Sequence[tuple[object, ...]]", records)
            columns = list(zip(*rows, strict=True))
            column_types = [set(map(type, column)) for column in columns]
            if any(len(types) != 1 for types in column_types):
                return None
            plan = self._plan_for(rows[0])
            if plan.has_nested:
                return None
            return self._serialize_tuples(plan, columns, count)
        return None

    @staticmethod
    def _serialize_tuples(plan: _TuplePlan, columns: list[tuple[object, ...]], count: int) -> bytes:
        fixed = [columns[index] for index in plan.fixed_indices]
        variable_columns = [
            list(map(str.encode, cast("tuple[str, ...]", column)))
            if kind == _STR
            else list(cast("tuple[bytes, ...]", column))
            for kind, column in zip(
                plan.variable_kinds,
                (columns[index] for index in plan.variable_indices),
                strict=True,
            )
        ]
        length_columns = [list(map(len, column)) for column in variable_columns]
        frame_lengths: list[int] = [plan.base_size] * count
        for lengths in length_columns:
            frame_lengths = list(map(add, frame_lengths, lengths))
        prefixes = list(
            map(plan.frame.pack, frame_lengths, repeat(plan.header, count), *fixed, *length_columns)
        )
        stride = 1 + len(variable_columns)
        parts: list[bytes] = [b""] * (count * stride)
        parts[0::stride] = prefixes
        for offset, column in enumerate(variable_columns, start=1):
            parts[offset::stride] = column
        return b"".join(parts)

    def deserialize_complete_frames(self, data: memoryview) -> tuple[list[object], int]:
        consumed = _complete_frames_end(data)
        return (self.deserialize_frames(data[:consumed]) if consumed else []), consumed

    def deserialize_frames(self, data: memoryview) -> list[object]:
        buf = bytes(data)
        numbers = self._deserialize_numbers(buf)
        if numbers is not None:
            return numbers
        try:
            return self._deserialize_run(buf)
        except UnicodeDecodeError as exc:
            msg = f"GenericSerializer str payload is not valid UTF-8: {exc}"
            raise SerializationError(msg) from exc

    def _deserialize_numbers(self, buf: bytes) -> list[object] | None:
        """A run made only of int (or only of float) frames, decoded in one numpy view."""
        if len(buf) < _NUMPY_MIN_FRAMES * 13 or len(buf) % 13 or buf[:5] not in _NUMBER_HEADS:
            return None
        frames = np.frombuffer(buf, dtype=_NUMBER_FRAME)
        tag = buf[4]
        if not ((frames["length"] == 9).all() and (frames["tag"] == tag).all()):
            return None
        values = frames["value"].view(">f8" if tag == _FLOAT else ">i8")
        return cast("list[object]", values.tolist())

    def _deserialize_run(self, buf: bytes) -> list[object]:
        records: list[object] = []
        append = records.append
        unpack_length = _LENGTH.unpack_from
        decode = self._decode
        end = len(buf)
        pos = 0
        while pos < end:
            if end - pos < 4:
                msg = f"truncated frame: {end - pos} bytes left at offset {pos}"
                raise SerializationError(msg)
            (size,) = unpack_length(buf, pos)
            start = pos + 4
            stop = start + size
            if size < 0 or stop > end:
                msg = (
                    f"frame at offset {pos} announces {size} payload bytes, "
                    f"but {end - start} bytes remain"
                )
                raise SerializationError(msg)
            payload = buf[start:stop]
            append(decode(payload, 0))
            pos = stop
            tag = payload[0]
            if tag == _TUPLE:
                plan = self._decode_plans.get(payload[: 2 + payload[1]])
                if plan is not None and plan.frame_variable_kind != _TUPLE:
                    pos = _decode_tuple_run(buf, pos, plan, append)
            elif tag in (_STR, _BYTES):
                pos = _decode_text_run(buf, pos, tag, append)
        return records

    def __repr__(self) -> str:
        return "GenericSerializer()"


def _decode_text_run(buf: bytes, pos: int, tag: int, append: Callable[[object], None]) -> int:
    """Decodes frames from ``pos`` while they are str (or bytes) frames, like the one before.

    One ``unpack_from`` reads length and tag; the first other frame, or a damaged one, goes
    back to the general path.
    """
    end = len(buf)
    unpack = _FRAME_TAG.unpack_from
    text = tag == _STR
    while end - pos >= 5:
        size, next_tag = unpack(buf, pos)
        stop = pos + 4 + size
        if next_tag != tag or size < 1 or stop > end:
            break
        append(buf[pos + 5 : stop].decode() if text else buf[pos + 5 : stop])
        pos = stop
    return pos


def _decode_tuple_run(
    buf: bytes, pos: int, plan: _TuplePlan, append: Callable[[object], None]
) -> int:
    """Decodes frames from ``pos`` while they are tuples of ``plan``; returns where it stopped.

    Runs are usually uniform, so after a tuple of a simple layout (fixed fields and at most
    one str or bytes) the next frames are tried against its frame struct: one
    ``unpack_from`` reads length, header and fixed fields, and comparing the header proves
    the guess. The first frame that does not match goes back to the general path, which
    also reports any corruption.
    """
    end = len(buf)
    unpack = plan.frame.unpack_from
    minimum = plan.frame.size
    header = plan.header
    assemble = plan.frame_assemble
    base = 4 + plan.base_size
    kind = plan.frame_variable_kind
    # ``(word, count)`` and ``(count, word)`` are common enough to build their tuples directly.
    text_first = plan.header[2:] in _TEXT_PAIRS[0]
    text_second = plan.header[2:] in _TEXT_PAIRS[1]
    while end - pos >= minimum:
        values = unpack(buf, pos)
        if values[1] != header:
            break
        start = pos + base
        stop = pos + 4 + values[0]
        if kind == _NONE:
            if stop != start:
                break
            append(assemble((*values, None)))
        else:
            if values[-1] != stop - start or stop > end:
                break
            if kind == _STR:
                if text_first:
                    append((buf[start:stop].decode(), values[2]))
                elif text_second:
                    append((values[2], buf[start:stop].decode()))
                else:
                    append(assemble((*values, buf[start:stop].decode(), None)))
            else:
                append(assemble((*values, buf[start:stop], None)))
        pos = stop
    return pos


# ---------------------------------------------------------------------------------------------


@overload
def serializer_for(type_hint_or_sample: type[T]) -> TypeSerializer[T]: ...
@overload
def serializer_for(type_hint_or_sample: T) -> TypeSerializer[T]: ...
def serializer_for(type_hint_or_sample: object) -> object:
    """The serializer for a type, or for records like a sample one.

    ``bytes``, ``str``, ``int`` and ``float`` (the exact types, not subclasses such as
    ``bool``) get their fast serializers; anything else gets ``GenericSerializer``. A
    sample ``int`` chooses ``IntSerializer``, which refuses ints beyond 64 bits: pass
    nothing more specific than ``object`` if records may be larger.
    """
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
