"""Framing and pickling helpers shared by the type serializers.

The ``Payload`` type and ``MAX_PAYLOAD_SIZE``, the frame length prefix, the functions that
frame a list of payloads and split a run of frames back into payloads, a cache of
``struct.Struct`` objects for ``n`` repetitions of one frame layout, and the cloudpickle
encoding of records. ``types`` (the fixed-size, bytes, str and pickle serializers) and
``generic`` (``GenericSerializer``) both build on them.
"""

from __future__ import annotations

import functools
import pickle
import struct
from collections.abc import Sequence
from typing import Any, Final, NoReturn, TypeAlias, cast

import cloudpickle

from penstock.errors import SerializationError

Payload: TypeAlias = bytes | bytearray | memoryview
"""What ``deserialize`` accepts: the bytes of exactly one payload."""

MAX_PAYLOAD_SIZE: Final = 2**31 - 1
"""The largest payload a frame can announce (its length is a signed 32-bit int)."""

_LENGTH: Final = struct.Struct(">i")

# A run longer than this is packed in chunks, so that a cached Struct never holds more than
# this many frames (a Struct costs memory per field) and the cache stays small.
_FRAMES_PER_STRUCT: Final = 1024
_STRUCT_CACHE_SIZE: Final = 32
# Below this many frames a numpy view costs more than it saves.
_NUMPY_MIN_FRAMES: Final = 16


_PACK_CHUNK: Final = 64
"""Equal-length payloads are framed this many at a time by one cached ``Struct``
(measured: 64 beats 256 and 1024, whose calls take too many arguments at once)."""


def _frame_payloads(payloads: list[bytes]) -> bytes:
    """Frames ready payloads (``[length][payload]`` each), concatenated.

    Payloads of one length (fixed-width ids, hashes, a benchmark's records) are framed
    ``_PACK_CHUNK`` at a time by one cached ``Struct``, lengths and payloads together,
    up to twice as fast as making a 4-byte prefix object per record; the rest go
    through one ``b"".join`` over ``[prefix, payload, ...]``.
    """
    count = len(payloads)
    lengths = list(map(len, payloads))
    if count < _PACK_CHUNK or lengths.count(lengths[0]) != count:
        return _join_frames(payloads, lengths)
    size = lengths[0]
    if size > MAX_PAYLOAD_SIZE:
        _too_large()
    pack = _equal_frames_struct(size, _PACK_CHUNK).pack
    flat: list[object] = [size] * (2 * _PACK_CHUNK)
    full = count - count % _PACK_CHUNK
    parts: list[bytes] = []
    for first in range(0, full, _PACK_CHUNK):
        flat[1::2] = payloads[first : first + _PACK_CHUNK]
        parts.append(pack(*flat))
    if full < count:
        parts.append(_join_frames(payloads[full:], lengths[full:]))
    return parts[0] if len(parts) == 1 else b"".join(parts)


def _join_frames(payloads: list[bytes], lengths: list[int]) -> bytes:
    parts: list[bytes] = [b""] * (2 * len(payloads))
    try:
        parts[0::2] = map(_LENGTH.pack, lengths)
    except struct.error:
        _too_large()
    parts[1::2] = payloads
    return b"".join(parts)


def _too_large() -> NoReturn:
    msg = f"a payload is larger than the maximum frame payload of {MAX_PAYLOAD_SIZE} bytes"
    raise SerializationError(msg)


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


_EQUAL_RUN_MIN: Final = 8
"""Frames at the start of a region from which the equal-length bulk path is tried."""


_EQUAL_RUN_CHUNK: Final = 512
"""Frames one cached ``Struct`` cuts at most.

A Struct holds two codes per frame, and a buffer's frame count varies with its fill
(buffers flushed by the timeout): an unbounded count would cache a Struct per count,
each up to 16,384 codes for a buffer of empty payloads, hundreds of MB in all."""


@functools.lru_cache(maxsize=256)
def _equal_frames_struct(size: int, count: int) -> struct.Struct:
    """A Struct unpacking ``count`` frames of ``size``-byte payloads in one call."""
    return struct.Struct(">" + f"i{size}s" * count)


def _unpack_equal_frames(whole: bytes | memoryview, size: int, count: int) -> Sequence[Any]:
    """Lengths and payloads, interleaved, of ``count`` frames of ``size``-byte payloads."""
    if count <= _EQUAL_RUN_CHUNK:
        return _equal_frames_struct(size, count).unpack_from(whole, 0)
    values: list[Any] = []  # what struct unpacks: ints and bytes, interleaved
    frame = size + 4
    for first in range(0, count, _EQUAL_RUN_CHUNK):
        chunk = min(_EQUAL_RUN_CHUNK, count - first)
        values += _equal_frames_struct(size, chunk).unpack_from(whole, first * frame)
    return values


def _equal_length_run(whole: bytes | memoryview) -> tuple[list[bytes], int]:
    """The leading run of frames that all announce the first frame's length.

    Records of one fixed width (ids, hashes, fixed-size byte strings) fill a buffer
    with frames of equal length. A cached ``Struct`` cuts up to ``_EQUAL_RUN_CHUNK``
    such frames at once, lengths and payloads together, and the lengths are then
    checked in one ``count``: no Python work per record (and, for the few large frames of a
    buffer of 1 KiB records, none of numpy's fixed cost either). Returns ``([], 0)``
    when the region does not start with such a run.
    """
    (size,) = _LENGTH.unpack_from(whole, 0)
    frame = size + 4
    count = len(whole) // frame if size >= 0 else 0
    if count < _EQUAL_RUN_MIN:
        return [], 0
    values = _unpack_equal_frames(whole, size, count)
    lengths = values[::2]
    if lengths.count(size) != count:
        # Only a shorter prefix is equal: take the run up to the first other length.
        count = next(i for i, length in enumerate(lengths) if length != size)
        if count < _EQUAL_RUN_MIN:
            return [], 0
        values = values[: 2 * count]
    payloads = values[1::2]
    return (payloads if isinstance(payloads, list) else list(payloads)), count * frame


def _complete_payloads(data: memoryview) -> tuple[list[bytes], int]:
    """The payloads of the complete frames at the start of ``data``.

    A leading equal-length run is cut in bulk straight from ``data``. What follows it is
    copied once and cut with a slice per payload: cheaper than a view and a copy per
    record. A buffer of large records is one run and a partial frame, so it is copied
    only into its records.
    """
    pos = 0
    payloads: list[bytes] = []
    if len(data) >= 4 * _EQUAL_RUN_MIN:
        payloads, pos = _equal_length_run(data)
    if len(data) - pos < 4 or (pos and _LENGTH.unpack_from(data, pos)[0] + 4 > len(data) - pos):
        return payloads, pos  # nothing, or only the start of a record, follows the run
    offset = pos
    whole = data[offset:].tobytes()
    unpack = _LENGTH.unpack_from
    end = len(whole)
    pos = 0
    append = payloads.append
    while pos + 4 <= end:
        (size,) = unpack(whole, pos)
        if size < 0:
            msg = f"negative record length {size} at offset {offset + pos}"
            raise SerializationError(msg)
        stop = pos + 4 + size
        if stop > end:
            break
        append(whole[pos + 4 : stop])
        pos = stop
    return payloads, offset + pos


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
