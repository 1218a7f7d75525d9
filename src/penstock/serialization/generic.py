"""``GenericSerializer``: the default serializer for records of unknown type.

Its payload is a tag byte and a body: fixed-width ints and floats, raw bytes and UTF-8 text,
a compact layout for tuples of those (``(word, 1)`` is the most common record there is), and
a pickle for everything else. Every type survives the round trip: ``True`` stays ``bool``,
``1`` stays ``int``, ints beyond 64 bits and tuple subclasses go through pickle.

This module also holds its machinery: the tags, ``_TuplePlan`` (the layout of tuples with
one sequence of element kinds) and the fast paths that decode uniform runs of frames.
``penstock.serialization.types`` re-exports ``GenericSerializer``.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Sequence
from itertools import repeat
from operator import add, itemgetter
from typing import Final, cast

import numpy as np

from penstock.errors import SerializationError
from penstock.serialization._frames import (
    _FRAMES_PER_STRUCT,
    _LENGTH,
    _NUMPY_MIN_FRAMES,
    Payload,
    _complete_frames_end,
    _frame_payloads,
    _pickle_record,
    _StructCache,
    _unpickle_record,
)

__all__ = ["GenericSerializer"]

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
