"""Flink's frames, without I/O: messages to bytes, and a byte stream back to messages.

A frame is ``[frame length int32][magic 0xBADC0FFE int32][message id int8][body]``, all
big-endian, where the length counts the 9-byte header too. A ``BufferResponse`` body is a
34-byte header (receiver id, subpartition id, sequence number, backlog, data type,
compressed flag, size) followed by ``size`` payload bytes.

Theory of operation
-------------------
``FrameDecoder`` reads a frame in parts: the frame header, then either the buffer header
and the payload of a ``BufferResponse`` or the body of a control message. Each part has a
known length before its first byte arrives, so the decoder always knows exactly how many
bytes it wants and where they go. That gives two ways in, sharing one state machine:

- ``feed(data)`` then ``next_message()``: bytes are appended to an internal buffer and
  parsed in place when a whole part is there (``unpack_from``, no copy), or copied into
  the part's destination when it arrives in pieces. Each byte is copied in and read
  once, and consumed bytes are dropped only when at least half the buffer is consumed,
  so decoding costs O(bytes) however the stream is chunked.
- ``get_buffer()`` / ``buffer_updated(n)`` then ``next_message()``, shaped like
  ``asyncio.BufferedProtocol``: ``get_buffer`` returns the rest of the current part's
  destination and never more, so a socket receives a payload straight into the network
  buffer a ``PayloadAllocator`` handed out for it (Flink's zero-copy receive,
  FLINK-10742).

A payload goes into memory from the allocator when the decoder has one and the buffer
holds data (events cost no credit and arrive in memory the decoder allocates). An
allocator that answers ``None`` has no buffer for that channel: the payload is skipped
and the ``BufferResponse`` arrives with ``payload=None``.

Every check is made before anything is allocated: the frame length against the limits,
the declared payload size against the frame length. A violation raises
``CorruptFrameError`` and leaves the decoder broken; any other exception from decoding is
a bug. Misuse by the caller (a wrong ``buffer_updated`` count, a bad allocator answer)
raises ``LocalProtocolError`` and changes nothing.
"""

from __future__ import annotations

import enum
import functools
import struct
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final, NoReturn, TypeAlias

from penstock.buffer.buffer import DataType
from penstock.errors import (
    ConfigurationError,
    CorruptFrameError,
    LocalProtocolError,
    RemoteProtocolError,
)
from penstock.ids import InputChannelID, ResultPartitionID
from penstock.transport.messages import (
    INT32_MAX,
    AckAllUserRecordsProcessed,
    AddCredit,
    BacklogAnnouncement,
    BufferResponse,
    CancelPartitionRequest,
    CloseRequest,
    ErrorResponse,
    Message,
    NewBufferSize,
    PartitionRequest,
    ResumeConsumption,
    TaskEventRequest,
)

__all__ = [
    "BAD_MAGIC_MESSAGE",
    "BUFFER_RESPONSE_HEADER_LENGTH",
    "DEFAULT_MAX_CONTROL_FRAME_SIZE",
    "FRAME_HEADER_LENGTH",
    "MAGIC_NUMBER",
    "NEED_DATA",
    "FrameDecoder",
    "NeedData",
    "PayloadAllocator",
    "encode",
    "encode_buffer_response_header",
]

MAGIC_NUMBER: Final = 0xBADC0FFE
FRAME_HEADER_LENGTH: Final = 9
BUFFER_RESPONSE_HEADER_LENGTH: Final = 34
# Control messages are a few dozen bytes; only an ErrorResponse with a long traceback
# comes near this. Larger frames are refused before their body is buffered.
DEFAULT_MAX_CONTROL_FRAME_SIZE: Final = 1024 * 1024

BAD_MAGIC_MESSAGE: Final = "Network stream corrupted: received incorrect magic number."
UNKNOWN_MESSAGE_MESSAGE: Final = "Received unknown message from producer: {message_id}"

_BUFFER_FRAME_OVERHEAD: Final = FRAME_HEADER_LENGTH + BUFFER_RESPONSE_HEADER_LENGTH
_MAX_PAYLOAD: Final = INT32_MAX - _BUFFER_FRAME_OVERHEAD

_FRAME_HEADER: Final = struct.Struct(">iIb")
_BUFFER_HEADER: Final = struct.Struct(">qqiiibBi")
_BUFFER_FRAME_HEADER: Final = struct.Struct(">iIbqqiiibBi")
_INT: Final = struct.Struct(">i")
_CHANNEL: Final = struct.Struct(">qq")
_CHANNEL_FRAME: Final = struct.Struct(">iIbqq")
_INT_CHANNEL: Final = struct.Struct(">iqq")
_INT_CHANNEL_FRAME: Final = struct.Struct(">iIbiqq")
# After the 60-byte ResultPartitionID: index set start and end, receiver id, credit.
_PARTITION_REQUEST_TAIL: Final = struct.Struct(">iiqqi")

_PARTITION_ID_LENGTH: Final = ResultPartitionID.SIZE
_CHANNEL_ID_LENGTH: Final = InputChannelID.SIZE
_PARTITION_REQUEST_LENGTH: Final = _PARTITION_ID_LENGTH + _PARTITION_REQUEST_TAIL.size
_TASK_EVENT_FIXED_LENGTH: Final = _INT.size + _PARTITION_ID_LENGTH + _CHANNEL_ID_LENGTH

# NONE is what a channel says when nothing follows its buffer, never a buffer's own type.
_DATA_TYPES: Final = {int(kind): kind for kind in DataType if kind is not DataType.NONE}
_CREDITED_TYPES: Final = {int(kind): kind for kind in DataType if kind.is_buffer}
# Every frame names a receiver, and a connection serves a bounded set of channels: reusing
# their ids is several times cheaper than building a frozen id per frame.
_channel_id: Final = functools.lru_cache(maxsize=4096)(InputChannelID)
_CLOSE_REQUEST: Final = CloseRequest()
_CLOSE_FRAME: Final = _FRAME_HEADER.pack(FRAME_HEADER_LENGTH, MAGIC_NUMBER, 5)
# The payload a discarded BufferResponse is skipped into, when it arrives by get_buffer().
_DISCARD_SIZE: Final = 64 * 1024
# Consumed bytes at the front of the feed buffer are dropped once there are this many and
# they are at least half the buffer, so each byte is moved at most once more.
_COMPACT_AFTER: Final = 64 * 1024

PayloadAllocator: TypeAlias = Callable[[InputChannelID, int, DataType], memoryview | None]
"""``allocate(receiver_id, size, data_type)``: a writable region of exactly ``size`` bytes
to receive a data payload into (a credited network buffer), or ``None`` to discard it."""

_Readable: TypeAlias = bytes | bytearray | memoryview


class NeedData(enum.Enum):
    """The type of ``NEED_DATA``: the decoder needs more bytes to finish a message."""

    NEED_DATA = "NEED_DATA"

    def __repr__(self) -> str:
        return self.value


NEED_DATA: Final = NeedData.NEED_DATA


# -- encoding ---------------------------------------------------------------------------


def encode_buffer_response_header(
    receiver_id: InputChannelID,
    subpartition_id: int,
    sequence_number: int,
    backlog: int,
    data_type: DataType,
    is_compressed: bool,
    size: int,
) -> bytes:
    """The frame header and buffer header (43 bytes) of a ``BufferResponse``.

    A server writes these bytes and then the ``size`` payload bytes from the buffer's own
    memory (``transport.writelines``), so the payload is never copied.

    Raises:
        LocalProtocolError: A field is out of range.
    """
    if not (
        0 <= size <= _MAX_PAYLOAD
        and 0 <= subpartition_id <= INT32_MAX
        and 0 <= sequence_number <= INT32_MAX
        and 0 <= backlog <= INT32_MAX
        and data_type is not DataType.NONE
    ):
        msg = (
            f"cannot encode a BufferResponse with size={size}, subpartition_id="
            f"{subpartition_id}, sequence_number={sequence_number}, backlog={backlog}, "
            f"data_type={data_type!r}"
        )
        raise LocalProtocolError(msg)
    try:
        return _BUFFER_FRAME_HEADER.pack(
            _BUFFER_FRAME_OVERHEAD + size,
            MAGIC_NUMBER,
            BufferResponse.MESSAGE_ID,
            receiver_id.lower,
            receiver_id.upper,
            subpartition_id,
            sequence_number,
            backlog,
            data_type,
            is_compressed,
            size,
        )
    except (struct.error, AttributeError) as exc:
        msg = f"cannot encode a BufferResponse for {receiver_id!r}: {exc}"
        raise LocalProtocolError(msg) from exc


def _encode_string(text: str) -> bytes:
    # A lone surrogate in an exception message must not make the report unsendable.
    data = text.encode("utf-8", "backslashreplace")
    return _INT.pack(len(data)) + data


def _frame(message_id: int, *parts: bytes) -> bytes:
    body = b"".join(parts)
    return _FRAME_HEADER.pack(FRAME_HEADER_LENGTH + len(body), MAGIC_NUMBER, message_id) + body


def _encode(message: Message) -> bytes:
    match message:
        case (
            AddCredit(value, receiver)
            | BacklogAnnouncement(value, receiver)
            | NewBufferSize(value, receiver)
        ):
            return _INT_CHANNEL_FRAME.pack(
                29, MAGIC_NUMBER, message.MESSAGE_ID, value, receiver.lower, receiver.upper
            )
        case BufferResponse():
            if message.payload is None:
                msg = "cannot encode a BufferResponse whose payload was discarded"
                raise LocalProtocolError(msg)
            header = encode_buffer_response_header(
                message.receiver_id,
                message.subpartition_id,
                message.sequence_number,
                message.backlog,
                message.data_type,
                message.is_compressed,
                message.size,
            )
            return b"".join((header, message.payload))
        case (
            CancelPartitionRequest(receiver)
            | ResumeConsumption(receiver)
            | AckAllUserRecordsProcessed(receiver)
        ):
            return _CHANNEL_FRAME.pack(
                25, MAGIC_NUMBER, message.MESSAGE_ID, receiver.lower, receiver.upper
            )
        case PartitionRequest():
            receiver = message.receiver_id
            return _frame(
                PartitionRequest.MESSAGE_ID,
                message.partition_id.to_bytes(),
                _PARTITION_REQUEST_TAIL.pack(
                    message.subpartition_index_start,
                    message.subpartition_index_end,
                    receiver.lower,
                    receiver.upper,
                    message.credit,
                ),
            )
        case ErrorResponse():
            receiver_part = (
                b"\x00" if message.receiver_id is None else b"\x01" + message.receiver_id.to_bytes()
            )
            return _frame(
                ErrorResponse.MESSAGE_ID,
                _encode_string(message.type_name),
                _encode_string(message.message),
                _encode_string(message.traceback_text),
                receiver_part,
            )
        case TaskEventRequest():
            return _frame(
                TaskEventRequest.MESSAGE_ID,
                _INT.pack(len(message.event)),
                message.event,
                message.partition_id.to_bytes(),
                message.receiver_id.to_bytes(),
            )
        case CloseRequest():
            return _CLOSE_FRAME
    msg = f"not a message of the network protocol: {message!r}"
    raise LocalProtocolError(msg)


def encode(message: Message) -> bytes:
    """The frame of ``message``, ready to write.

    A ``BufferResponse`` is copied into the frame here; a server sends the result of
    ``encode_buffer_response_header`` and the payload instead.

    Raises:
        LocalProtocolError: The message cannot be encoded (a discarded payload, an id out
            of range, an object that is no message).
    """
    try:
        return _encode(message)
    except (struct.error, AttributeError, TypeError) as exc:
        msg = f"cannot encode {type(message).__name__}: {exc}"
        raise LocalProtocolError(msg) from exc


# -- decoding of control bodies ----------------------------------------------------------


def _writable_region(answer: object, size: int) -> memoryview:
    """The allocator's ``answer``, if it is a writable, flat byte view of ``size`` bytes."""
    if (
        type(answer) is not memoryview
        or answer.readonly
        or len(answer) != size
        or answer.format != "B"
        or answer.ndim != 1
    ):
        msg = f"the allocator must return a writable byte view of {size} bytes: {answer!r}"
        raise LocalProtocolError(msg)
    return answer


def _corrupt(name: str, detail: str) -> NoReturn:
    msg = f"Corrupt {name} frame: {detail}."
    raise CorruptFrameError(msg)


def _read_string(view: memoryview, offset: int, end: int) -> tuple[str, int]:
    if end - offset < _INT.size:
        _corrupt("ErrorResponse", "truncated string length")
    (length,) = _INT.unpack_from(view, offset)
    offset += _INT.size
    if not 0 <= length <= end - offset:
        _corrupt("ErrorResponse", f"string length {length} outside the frame")
    return str(view[offset : offset + length], "utf-8"), offset + length


def _decode_error_response(data: _Readable, offset: int, length: int) -> Message:
    end = offset + length
    with memoryview(data) as view:
        type_name, offset = _read_string(view, offset, end)
        message, offset = _read_string(view, offset, end)
        traceback_text, offset = _read_string(view, offset, end)
        if offset >= end:
            _corrupt("ErrorResponse", "missing receiver flag")
        has_receiver = view[offset]
        offset += 1
        receiver_id: InputChannelID | None = None
        if has_receiver == 1:
            if end - offset < _CHANNEL_ID_LENGTH:
                _corrupt("ErrorResponse", "truncated receiver id")
            receiver_id = InputChannelID.from_bytes(view, offset)
            offset += _CHANNEL_ID_LENGTH
        elif has_receiver != 0:
            _corrupt("ErrorResponse", f"receiver flag {has_receiver} is not a bool")
        if offset != end:
            _corrupt("ErrorResponse", f"{end - offset} trailing bytes")
    return ErrorResponse(type_name, message, traceback_text, receiver_id)


def _decode_partition_request(data: _Readable, offset: int, length: int) -> Message:
    with memoryview(data) as view:
        partition_id = ResultPartitionID.from_bytes(view, offset)
    start, end, lower, upper, credit = _PARTITION_REQUEST_TAIL.unpack_from(
        data, offset + _PARTITION_ID_LENGTH
    )
    return PartitionRequest(partition_id, start, end, InputChannelID(lower, upper), credit)


def _decode_task_event_request(data: _Readable, offset: int, length: int) -> Message:
    (event_length,) = _INT.unpack_from(data, offset)
    if event_length < 0 or event_length + _TASK_EVENT_FIXED_LENGTH != length:
        detail = f"event length {event_length} does not match a body of {length} bytes"
        _corrupt("TaskEventRequest", detail)
    offset += _INT.size
    with memoryview(data) as view:
        event = bytes(view[offset : offset + event_length])
        offset += event_length
        partition_id = ResultPartitionID.from_bytes(view, offset)
        receiver_id = InputChannelID.from_bytes(view, offset + _PARTITION_ID_LENGTH)
    return TaskEventRequest(event, partition_id, receiver_id)


def _decode_close_request(data: _Readable, offset: int, length: int) -> Message:
    return _CLOSE_REQUEST


def _receiver_only(
    kind: type[CancelPartitionRequest | ResumeConsumption | AckAllUserRecordsProcessed],
) -> Callable[[_Readable, int, int], Message]:
    def decode(data: _Readable, offset: int, length: int) -> Message:
        lower, upper = _CHANNEL.unpack_from(data, offset)
        return kind(_channel_id(lower, upper))

    return decode


def _int_and_receiver(
    kind: type[AddCredit | BacklogAnnouncement | NewBufferSize],
) -> Callable[[_Readable, int, int], Message]:
    def decode(data: _Readable, offset: int, length: int) -> Message:
        value, lower, upper = _INT_CHANNEL.unpack_from(data, offset)
        return kind(value, _channel_id(lower, upper))

    return decode


@dataclass(frozen=True, slots=True)
class _BodyFormat:
    name: str
    fixed_length: int | None
    decode: Callable[[_Readable, int, int], Message]


_BODY_FORMATS: Final = {
    ErrorResponse.MESSAGE_ID: _BodyFormat("ErrorResponse", None, _decode_error_response),
    PartitionRequest.MESSAGE_ID: _BodyFormat(
        "PartitionRequest", _PARTITION_REQUEST_LENGTH, _decode_partition_request
    ),
    TaskEventRequest.MESSAGE_ID: _BodyFormat("TaskEventRequest", None, _decode_task_event_request),
    CancelPartitionRequest.MESSAGE_ID: _BodyFormat(
        "CancelPartitionRequest", _CHANNEL_ID_LENGTH, _receiver_only(CancelPartitionRequest)
    ),
    CloseRequest.MESSAGE_ID: _BodyFormat("CloseRequest", 0, _decode_close_request),
    AddCredit.MESSAGE_ID: _BodyFormat("AddCredit", _INT_CHANNEL.size, _int_and_receiver(AddCredit)),
    ResumeConsumption.MESSAGE_ID: _BodyFormat(
        "ResumeConsumption", _CHANNEL_ID_LENGTH, _receiver_only(ResumeConsumption)
    ),
    AckAllUserRecordsProcessed.MESSAGE_ID: _BodyFormat(
        "AckAllUserRecordsProcessed",
        _CHANNEL_ID_LENGTH,
        _receiver_only(AckAllUserRecordsProcessed),
    ),
    BacklogAnnouncement.MESSAGE_ID: _BodyFormat(
        "BacklogAnnouncement", _INT_CHANNEL.size, _int_and_receiver(BacklogAnnouncement)
    ),
    NewBufferSize.MESSAGE_ID: _BodyFormat(
        "NewBufferSize", _INT_CHANNEL.size, _int_and_receiver(NewBufferSize)
    ),
}


# -- the decoder ---------------------------------------------------------------------------


class _State(enum.Enum):
    FRAME_HEADER = "frame header"
    BUFFER_HEADER = "buffer header"
    PAYLOAD = "payload"
    SKIP = "discarded payload"
    BODY = "control body"
    ERROR = "error"


_FRAME: Final = _State.FRAME_HEADER
_BUFFER: Final = _State.BUFFER_HEADER
_PAYLOAD: Final = _State.PAYLOAD
_SKIP: Final = _State.SKIP
_BODY: Final = _State.BODY
_ERROR: Final = _State.ERROR

_BufferFields: TypeAlias = tuple[InputChannelID, int, int, int, DataType, bool, int]


class FrameDecoder:
    """Turns the bytes of one connection into messages, without doing any I/O.

    Args:
        max_buffer_size: The largest ``BufferResponse`` payload accepted: the segment size
            (``taskmanager.memory.segment-size``).
        max_control_frame_size: The largest frame of any other message, header included.
        allocate: Where data payloads go; see ``PayloadAllocator``. Without it, every
            payload is received into memory the decoder allocates.

    A payload received into memory the decoder allocates is ``bytes`` when it arrived
    whole with ``feed`` and a read-only ``memoryview`` otherwise; a payload received into
    allocator memory is the allocator's own ``memoryview``. A ``BufferResponse`` of size 0
    carries ``b""`` and asks no allocator.

    When the connection ends while a payload is being received into allocator memory,
    that memory is the caller's to take back.
    """

    __slots__ = (
        "_allocate",
        "_body_format",
        "_discard",
        "_error",
        "_fields",
        "_filled",
        "_frame_length",
        "_max_buffer_frame",
        "_max_control_frame",
        "_needed",
        "_own_part",
        "_owned",
        "_part",
        "_pending",
        "_pos",
        "_scratch",
        "_state",
    )

    def __init__(
        self,
        max_buffer_size: int,
        max_control_frame_size: int = DEFAULT_MAX_CONTROL_FRAME_SIZE,
        *,
        allocate: PayloadAllocator | None = None,
    ) -> None:
        if not 0 < max_buffer_size <= _MAX_PAYLOAD:
            key, reason = "max_buffer_size", f"must be between 1 and {_MAX_PAYLOAD} bytes"
            raise ConfigurationError(key, max_buffer_size, reason)
        smallest = FRAME_HEADER_LENGTH + _PARTITION_REQUEST_LENGTH
        if not smallest <= max_control_frame_size <= INT32_MAX:
            key = "max_control_frame_size"
            reason = f"must be between {smallest} (a PartitionRequest) and {INT32_MAX} bytes"
            raise ConfigurationError(key, max_control_frame_size, reason)
        self._max_buffer_frame = max_buffer_size + _BUFFER_FRAME_OVERHEAD
        self._max_control_frame = max_control_frame_size
        self._allocate = allocate
        self._owned = bytearray()
        self._pending: bytes | bytearray | memoryview = self._owned
        self._pos = 0
        self._scratch = memoryview(bytearray(BUFFER_RESPONSE_HEADER_LENGTH))
        self._discard: memoryview | None = None
        self._error: RemoteProtocolError | None = None
        self._frame_length = 0
        self._body_format = _BODY_FORMATS[CloseRequest.MESSAGE_ID]
        self._fields: _BufferFields | None = None
        # The current part: its state, its length, how much of it arrived, and where it
        # is being assembled (None until it must be, when it arrives in pieces).
        self._state = _FRAME
        self._needed = FRAME_HEADER_LENGTH
        self._filled = 0
        self._part: memoryview | None = None
        self._own_part = False

    # -- the two ways in ------------------------------------------------------------------

    def feed(self, data: bytes | bytearray | memoryview) -> None:
        """Appends received bytes; call ``next_message()`` until it returns NEED_DATA.

        When nothing fed earlier is still buffered (the usual case: the caller drains
        the decoder after every read), the bytes are decoded where they lie, and only
        payloads are copied, once, into their destination. The caller must then leave
        ``data`` unchanged until ``next_message()`` has returned NEED_DATA, by which
        time every byte of it has been consumed.
        """
        self._check_usable()
        pending = self._pending
        pos = self._pos
        if pos == len(pending):
            if pos and pending is self._owned:
                self._owned.clear()
            self._pending = data
            self._pos = 0
            return
        owned = self._owned
        if pending is not owned:  # the rest of lent bytes becomes ours
            owned.clear()
            owned += memoryview(pending)[pos:]
            self._pending = owned
        elif pos >= _COMPACT_AFTER and pos * 2 >= len(owned):
            del owned[:pos]
        else:
            owned += data
            return
        self._pos = 0
        owned += data

    def get_buffer(self, sizehint: int = -1) -> memoryview:
        """Where the next bytes must be received: the rest of the current frame part.

        Args:
            sizehint: Ignored; the part decides the size, as ``BufferedProtocol`` allows.

        Returns:
            A writable view of at least one byte, never reaching past the current part
            (for a payload with an allocator, the rest of the allocator's region).

        Raises:
            LocalProtocolError: Fed bytes or a finished part wait for ``next_message()``.
        """
        self._check_usable()
        if self._pos < len(self._pending):
            msg = "get_buffer() while fed bytes are buffered; call next_message() first"
            raise LocalProtocolError(msg)
        filled = self._filled
        needed = self._needed
        if filled >= needed:
            msg = "get_buffer() after a finished frame part; call next_message() first"
            raise LocalProtocolError(msg)
        part = self._part
        if part is None:
            part = self._make_part()
        if self._state is _SKIP:
            return part[: min(needed - filled, len(part))]
        return part[filled:needed]

    def buffer_updated(self, nbytes: int) -> None:
        """Records that ``nbytes`` were written into the last ``get_buffer()`` view.

        Raises:
            LocalProtocolError: ``nbytes`` is more than that view holds.
        """
        self._check_usable()
        room = self._needed - self._filled
        part = self._part
        if part is None:
            room = 0
        elif self._state is _SKIP:
            room = min(room, len(part))
        if not 0 <= nbytes <= room:
            msg = f"buffer_updated({nbytes}) but the buffer handed out holds {room} bytes"
            raise LocalProtocolError(msg)
        self._filled += nbytes

    def next_message(self) -> Message | NeedData:
        """The next complete message, or NEED_DATA.

        Raises:
            CorruptFrameError: The peer broke the protocol; the decoder stays broken.
            LocalProtocolError: The allocator returned an unusable region.
        """
        self._check_usable()
        try:
            while True:
                needed = self._needed
                filled = self._filled
                if filled == needed:
                    part = self._part
                    message = self._complete(b"" if part is None else part, 0)
                else:
                    pending = self._pending
                    pos = self._pos
                    available = len(pending) - pos
                    if available <= 0:
                        if pending is not self._owned:  # let go of the caller's bytes
                            self._pending = self._owned  # empty: cleared when they came
                            self._pos = 0
                        return NEED_DATA
                    if filled == 0 and available >= needed and self._part is None:
                        # The whole part is buffered: parse it where it lies.
                        if self._state is _FRAME and available >= _BUFFER_FRAME_OVERHEAD:
                            whole = self._whole_buffer_frame(pending, pos, available)
                            if whole is not None:
                                return whole
                        message = self._complete(pending, pos)
                        self._pos = pos + needed
                    else:
                        take = min(available, needed - filled)
                        if self._state is not _SKIP:
                            part = self._part
                            if part is None:
                                part = self._make_part()
                            with memoryview(pending) as view:
                                part[filled : filled + take] = view[pos : pos + take]
                        self._filled = filled + take
                        self._pos = pos + take
                        continue
                if message is not None:
                    return message
        except RemoteProtocolError as exc:
            self._error = exc
            self._state = _ERROR
            self._part = None
            raise

    @property
    def in_payload(self) -> bool:
        """True while the rest of a payload is awaited and may be received in place.

        That is, nothing fed is buffered and the current part is a data payload whose
        region (the allocator's, or the discard area) is known: ``get_buffer()`` then
        hands out exactly the rest of it. Between payloads, reading large chunks and
        ``feed``-ing them costs far fewer reads per frame.
        """
        return (
            (self._state is _PAYLOAD or self._state is _SKIP)
            and self._part is not None
            and self._pos == len(self._pending)
            and (self._filled < self._needed)
        )

    @property
    def at_frame_boundary(self) -> bool:
        """True when no partial frame is buffered: the stream may end here cleanly."""
        return self._state is _FRAME and self._filled == 0 and self._pos == len(self._pending)

    # -- the state machine -----------------------------------------------------------------

    def _check_usable(self) -> None:
        if self._error is not None:
            msg = f"The frame decoder failed earlier and cannot continue: {self._error}"
            raise CorruptFrameError(msg) from self._error

    def _begin(self, state: _State, needed: int) -> None:
        self._state = state
        self._needed = needed
        self._filled = 0
        self._part = None
        self._own_part = False

    def _make_part(self) -> memoryview:
        state = self._state
        if state is _FRAME:
            part = self._scratch[:FRAME_HEADER_LENGTH]
        elif state is _BUFFER:
            part = self._scratch
        elif state is _SKIP:
            discard = self._discard
            if discard is None:
                size = min(_DISCARD_SIZE, self._max_buffer_frame)
                discard = self._discard = memoryview(bytearray(size))
            part = discard
        else:
            part = memoryview(bytearray(self._needed))
            self._own_part = True
        self._part = part
        return part

    def _complete(self, data: _Readable, offset: int) -> Message | None:
        """Acts on the current part, found whole at ``data[offset:]``."""
        state = self._state
        if state is _FRAME:
            self._on_frame_header(data, offset)
            return None
        if state is _BUFFER:
            return self._on_buffer_header(data, offset)
        if state is _PAYLOAD:
            part = self._part
            payload: memoryview | bytes
            if part is None:
                with memoryview(data) as view:
                    payload = bytes(view[offset : offset + self._needed])
            elif self._own_part:
                payload = part.toreadonly()
            else:
                payload = part
            return self._buffer_response(payload)
        if state is _SKIP:
            return self._buffer_response(None)
        return self._on_body(data, offset)

    def _whole_buffer_frame(
        self, data: _Readable, offset: int, available: int
    ) -> BufferResponse | None:
        """The data ``BufferResponse`` whose frame lies whole at ``data[offset:]``, else None.

        The common case on a busy connection: a read brings several whole frames of data
        buffers, each decoded here with one unpack and one test of every field, then
        received into the allocator's region. Anything else (an event, a field out of
        range, no allocator) returns None before any state changes, and the parts'
        state machine decodes it, or raises what is wrong with it.
        """
        (
            length,
            magic,
            message_id,
            lower,
            upper,
            subpartition_id,
            sequence_number,
            backlog,
            type_byte,
            compressed_byte,
            size,
        ) = _BUFFER_FRAME_HEADER.unpack_from(data, offset)
        data_type = _CREDITED_TYPES.get(type_byte)
        allocate = self._allocate
        if (
            message_id != BufferResponse.MESSAGE_ID
            or magic != MAGIC_NUMBER
            or not 0 < size == length - _BUFFER_FRAME_OVERHEAD
            or length > available
            or length > self._max_buffer_frame
            or data_type is None
            or compressed_byte > 1
            or subpartition_id < 0
            or sequence_number < 0
            or backlog < 0
            or allocate is None
        ):
            return None
        receiver_id = _channel_id(lower, upper)
        # Typed as object: the answer comes from outside and is checked before use.
        answer: object = allocate(receiver_id, size, data_type)
        region = None
        if answer is not None:
            region = _writable_region(answer, size)
            start = offset + _BUFFER_FRAME_OVERHEAD
            with memoryview(data) as view:
                region[:] = view[start : start + size]
        self._pos = offset + length
        return BufferResponse(
            receiver_id,
            subpartition_id,
            sequence_number,
            backlog,
            data_type,
            compressed_byte == 1,
            size,
            region,
        )

    def _on_frame_header(self, data: _Readable, offset: int) -> None:
        length, magic, message_id = _FRAME_HEADER.unpack_from(data, offset)
        if magic != MAGIC_NUMBER:
            raise CorruptFrameError(BAD_MAGIC_MESSAGE)
        if length < FRAME_HEADER_LENGTH:
            msg = f"Frame length {length} is shorter than the {FRAME_HEADER_LENGTH}-byte header."
            raise CorruptFrameError(msg)
        if message_id == BufferResponse.MESSAGE_ID:
            if not _BUFFER_FRAME_OVERHEAD <= length <= self._max_buffer_frame:
                msg = (
                    f"BufferResponse frame of {length} bytes is outside the allowed "
                    f"{_BUFFER_FRAME_OVERHEAD}..{self._max_buffer_frame} bytes "
                    f"(max buffer size plus {_BUFFER_FRAME_OVERHEAD} header bytes)."
                )
                raise CorruptFrameError(msg)
            self._frame_length = length
            self._begin(_BUFFER, BUFFER_RESPONSE_HEADER_LENGTH)
            return
        body_format = _BODY_FORMATS.get(message_id)
        if body_format is None:
            raise CorruptFrameError(UNKNOWN_MESSAGE_MESSAGE.format(message_id=message_id))
        if length > self._max_control_frame:
            msg = (
                f"{body_format.name} frame of {length} bytes exceeds the limit of "
                f"{self._max_control_frame} bytes for control frames."
            )
            raise CorruptFrameError(msg)
        body_length = length - FRAME_HEADER_LENGTH
        fixed = body_format.fixed_length
        if fixed is not None and body_length != fixed:
            detail = f"body of {body_length} bytes, expected {fixed}"
            _corrupt(body_format.name, detail)
        self._body_format = body_format
        self._begin(_BODY, body_length)

    def _on_buffer_header(self, data: _Readable, offset: int) -> BufferResponse | None:
        (
            lower,
            upper,
            subpartition_id,
            sequence_number,
            backlog,
            type_byte,
            compressed_byte,
            size,
        ) = _BUFFER_HEADER.unpack_from(data, offset)
        data_type = _DATA_TYPES.get(type_byte)
        if data_type is None:
            if type_byte == DataType.NONE:
                _corrupt("BufferResponse", "data type 0 (NONE) is no buffer's type")
            _corrupt("BufferResponse", f"unknown data type {type_byte}")
        if compressed_byte > 1:
            _corrupt("BufferResponse", f"compression flag {compressed_byte} is not a bool")
        if size != self._frame_length - _BUFFER_FRAME_OVERHEAD:
            detail = f"declared size {size} does not match a frame of {self._frame_length} bytes"
            _corrupt("BufferResponse", detail)
        if subpartition_id < 0 or sequence_number < 0 or backlog < 0:
            detail = (
                f"negative field (subpartition id {subpartition_id}, "
                f"sequence number {sequence_number}, backlog {backlog})"
            )
            _corrupt("BufferResponse", detail)
        receiver_id = _channel_id(lower, upper)
        self._fields = (
            receiver_id,
            subpartition_id,
            sequence_number,
            backlog,
            data_type,
            compressed_byte == 1,
            size,
        )
        if size == 0:
            return self._buffer_response(b"")
        allocate = self._allocate
        if allocate is None or not data_type.is_buffer:
            self._begin(_PAYLOAD, size)
            return None
        # Typed as object: the answer comes from outside and is checked before use.
        region: object = allocate(receiver_id, size, data_type)
        if region is None:
            self._begin(_SKIP, size)
            return None
        writable = _writable_region(region, size)
        self._begin(_PAYLOAD, size)
        self._part = writable
        return None

    def _buffer_response(self, payload: memoryview | bytes | None) -> BufferResponse:
        fields = self._fields
        assert fields is not None  # set by the buffer header that came first
        self._fields = None
        self._begin(_FRAME, FRAME_HEADER_LENGTH)
        return BufferResponse(*fields, payload)

    def _on_body(self, data: _Readable, offset: int) -> Message:
        body_format = self._body_format
        try:
            message = body_format.decode(data, offset, self._needed)
        except (struct.error, ValueError, IndexError, LocalProtocolError) as exc:
            msg = f"Corrupt {body_format.name} frame: {str(exc).rstrip('.')}."
            raise CorruptFrameError(msg) from exc
        self._begin(_FRAME, FRAME_HEADER_LENGTH)
        return message
