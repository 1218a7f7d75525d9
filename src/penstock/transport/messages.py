"""The messages of Flink's network protocol, as frozen values.

One class per message, carrying Flink's message id (``MESSAGE_ID``). The server sends
``BufferResponse``, ``ErrorResponse`` and ``BacklogAnnouncement``; the client sends the
rest. Every message validates its fields when built and raises ``LocalProtocolError`` for
a value the protocol forbids (a credit of 0, a negative backlog), so a bad message is
refused before it is encoded. The frame decoder turns that error into a
``CorruptFrameError`` when the bad value came from the peer.

Nothing here is ever unpickled: an ``ErrorResponse`` carries the remote error as text
(type name, message and traceback), where Flink sends a Java-serialized Throwable.
"""

from __future__ import annotations

import traceback
from dataclasses import dataclass, field
from typing import ClassVar, Final, TypeAlias

from penstock.buffer.buffer import DataType
from penstock.errors import LocalProtocolError, RemoteError
from penstock.ids import InputChannelID, ResultPartitionID

__all__ = [
    "INT32_MAX",
    "MAX_ERROR_TEXT_LENGTH",
    "MESSAGE_TYPES",
    "AckAllUserRecordsProcessed",
    "AddCredit",
    "BacklogAnnouncement",
    "BufferResponse",
    "CancelPartitionRequest",
    "CloseRequest",
    "ErrorResponse",
    "Message",
    "NewBufferSize",
    "PartitionRequest",
    "ResumeConsumption",
    "TaskEventRequest",
]

INT32_MAX: Final = 2**31 - 1

# Longer texts are cut when an ErrorResponse is built from an exception, so that even a
# message and a traceback of 4-byte characters stay well inside the 1 MiB default limit of
# a control frame, and the report of a failure is never lost to its own size.
MAX_ERROR_TEXT_LENGTH: Final = 64 * 1024


def _check_type(name: str, value: object, kind: type[object]) -> None:
    if not isinstance(value, kind):
        msg = f"{name} must be a {kind.__name__}, got {value!r}"
        raise LocalProtocolError(msg)


def _check_int32(name: str, value: object, minimum: int) -> None:
    if not isinstance(value, int) or not minimum <= value <= INT32_MAX:
        msg = f"{name} must be an int32 of at least {minimum}, got {value!r}"
        raise LocalProtocolError(msg)


def _check_receiver(receiver_id: object) -> None:
    _check_type("receiver_id", receiver_id, InputChannelID)


@dataclass(frozen=True, slots=True)
class BufferResponse:
    """One buffer (data or event) of a subpartition, sent to the channel consuming it.

    Attributes:
        receiver_id: The input channel the buffer is for.
        subpartition_id: The subpartition the buffer was read from.
        sequence_number: Position of the buffer in the channel's stream, from 0.
        backlog: Data buffers still queued in the subpartition after this one.
        data_type: What the buffer holds; only data buffers cost credit.
        is_compressed: Whether the payload is compressed.
        size: Length of the payload in bytes.
        payload: The ``size`` payload bytes, or ``None`` when the receiver had no buffer
            for them (the channel is gone) and the decoder discarded them.
    """

    MESSAGE_ID: ClassVar[int] = 0

    receiver_id: InputChannelID
    subpartition_id: int
    sequence_number: int
    backlog: int
    data_type: DataType
    is_compressed: bool
    size: int
    # A 32 KiB payload makes an unreadable repr, and a writable memoryview cannot be hashed.
    payload: memoryview | bytes | None = field(repr=False, hash=False)

    def __post_init__(self) -> None:
        # One buffer response per 32 KiB buffer: the common case is a single test.
        receiver_id: object = self.receiver_id
        data_type: object = self.data_type
        is_compressed: object = self.is_compressed
        if not (
            0 <= self.subpartition_id <= INT32_MAX
            and 0 <= self.sequence_number <= INT32_MAX
            and 0 <= self.backlog <= INT32_MAX
            and 0 <= self.size <= INT32_MAX
            and isinstance(receiver_id, InputChannelID)
            and isinstance(data_type, DataType)
            and isinstance(is_compressed, bool)
        ):
            _check_receiver(self.receiver_id)
            _check_int32("subpartition_id", self.subpartition_id, 0)
            _check_int32("sequence_number", self.sequence_number, 0)
            _check_int32("backlog", self.backlog, 0)
            _check_int32("size", self.size, 0)
            _check_type("data_type", self.data_type, DataType)
            _check_type("is_compressed", self.is_compressed, bool)
        payload = self.payload
        if payload is not None:
            length = payload.nbytes if isinstance(payload, memoryview) else len(payload)
            if length != self.size:
                msg = f"payload of {length} bytes does not match size {self.size}"
                raise LocalProtocolError(msg)


@dataclass(frozen=True, slots=True)
class ErrorResponse:
    """A failure at the producer side, reported to one channel or to the connection.

    Attributes:
        type_name: Qualified name of the remote exception's type.
        message: ``str()`` of the remote exception.
        traceback_text: The formatted remote traceback, possibly empty.
        receiver_id: The channel that failed, or ``None`` when the whole connection failed
            (a fatal error).
    """

    MESSAGE_ID: ClassVar[int] = 1

    type_name: str
    message: str
    traceback_text: str
    receiver_id: InputChannelID | None = None

    def __post_init__(self) -> None:
        _check_type("type_name", self.type_name, str)
        _check_type("message", self.message, str)
        _check_type("traceback_text", self.traceback_text, str)
        if self.receiver_id is not None:
            _check_receiver(self.receiver_id)

    @property
    def is_fatal(self) -> bool:
        """True when the error concerns the whole connection rather than one channel."""
        return self.receiver_id is None

    @classmethod
    def from_exception(
        cls, exc: BaseException, receiver_id: InputChannelID | None = None
    ) -> ErrorResponse:
        """Describes ``exc`` as text, with its traceback and cause chain.

        Args:
            exc: The exception to report.
            receiver_id: The failed channel, or ``None`` for a fatal connection error.

        Returns:
            An ``ErrorResponse`` whose texts are cut to ``MAX_ERROR_TEXT_LENGTH``
            characters (the start of the message, the end of the traceback).
        """
        if isinstance(exc, RemoteError):
            type_name, message, text = exc.type_name, exc.message, exc.traceback_text
        else:
            kind = type(exc)
            type_name = f"{kind.__module__}.{kind.__qualname__}"
            message = str(exc)
            text = "".join(traceback.format_exception(exc))
        return cls(
            type_name[:MAX_ERROR_TEXT_LENGTH],
            message[:MAX_ERROR_TEXT_LENGTH],
            text[-MAX_ERROR_TEXT_LENGTH:],
            receiver_id,
        )

    def to_exception(self) -> RemoteError:
        """The remote failure as a ``RemoteError`` to raise or attach as a cause."""
        return RemoteError(self.type_name, self.message, self.traceback_text)


@dataclass(frozen=True, slots=True)
class PartitionRequest:
    """Asks the producer's TaskManager to start sending a subpartition range to a channel.

    Attributes:
        partition_id: The result partition to read.
        subpartition_index_start: First subpartition of the range (inclusive).
        subpartition_index_end: Last subpartition of the range (inclusive), as in Flink's
            ``ResultSubpartitionIndexSet``.
        receiver_id: The input channel that consumes the range.
        credit: Initial credit: the channel's exclusive buffers (0 is allowed).
    """

    MESSAGE_ID: ClassVar[int] = 2

    partition_id: ResultPartitionID
    subpartition_index_start: int
    subpartition_index_end: int
    receiver_id: InputChannelID
    credit: int

    def __post_init__(self) -> None:
        _check_type("partition_id", self.partition_id, ResultPartitionID)
        _check_int32("subpartition_index_start", self.subpartition_index_start, 0)
        _check_int32("subpartition_index_end", self.subpartition_index_end, 0)
        if self.subpartition_index_start > self.subpartition_index_end:
            msg = (
                f"subpartition range [{self.subpartition_index_start}, "
                f"{self.subpartition_index_end}] is empty"
            )
            raise LocalProtocolError(msg)
        _check_receiver(self.receiver_id)
        _check_int32("credit", self.credit, 0)


@dataclass(frozen=True, slots=True)
class TaskEventRequest:
    """A serialized task event from a consumer to the producer of a partition.

    Attributes:
        event: The serialized event.
        partition_id: The partition whose producer receives the event.
        receiver_id: The input channel that sends it.
    """

    MESSAGE_ID: ClassVar[int] = 3

    event: bytes
    partition_id: ResultPartitionID
    receiver_id: InputChannelID

    def __post_init__(self) -> None:
        _check_type("event", self.event, bytes)
        if len(self.event) > INT32_MAX:
            msg = f"event of {len(self.event)} bytes is too long for a frame"
            raise LocalProtocolError(msg)
        _check_type("partition_id", self.partition_id, ResultPartitionID)
        _check_receiver(self.receiver_id)


@dataclass(frozen=True, slots=True)
class CancelPartitionRequest:
    """Tells the producer to stop sending to a channel and release its reader."""

    MESSAGE_ID: ClassVar[int] = 4

    receiver_id: InputChannelID

    def __post_init__(self) -> None:
        _check_receiver(self.receiver_id)


@dataclass(frozen=True, slots=True)
class CloseRequest:
    """Tells the producer the client is closing the connection; all readers go."""

    MESSAGE_ID: ClassVar[int] = 5


@dataclass(frozen=True, slots=True)
class AddCredit:
    """Announces ``credit`` more buffers the channel can receive data into.

    Attributes:
        credit: Newly available buffers; always positive.
        receiver_id: The input channel that has them.
    """

    MESSAGE_ID: ClassVar[int] = 6

    credit: int
    receiver_id: InputChannelID

    def __post_init__(self) -> None:
        _check_int32("credit", self.credit, 1)
        _check_receiver(self.receiver_id)


@dataclass(frozen=True, slots=True)
class ResumeConsumption:
    """Resumes a subpartition blocked by an aligned checkpoint barrier."""

    MESSAGE_ID: ClassVar[int] = 7

    receiver_id: InputChannelID

    def __post_init__(self) -> None:
        _check_receiver(self.receiver_id)


@dataclass(frozen=True, slots=True)
class AckAllUserRecordsProcessed:
    """Acknowledges that a channel processed every record before EndOfData."""

    MESSAGE_ID: ClassVar[int] = 8

    receiver_id: InputChannelID

    def __post_init__(self) -> None:
        _check_receiver(self.receiver_id)


@dataclass(frozen=True, slots=True)
class BacklogAnnouncement:
    """Tells a channel without credit that data waits for it (0 exclusive buffers).

    Attributes:
        backlog: Data buffers queued for the channel; always positive.
        receiver_id: The input channel they wait for.
    """

    MESSAGE_ID: ClassVar[int] = 9

    backlog: int
    receiver_id: InputChannelID

    def __post_init__(self) -> None:
        _check_int32("backlog", self.backlog, 1)
        _check_receiver(self.receiver_id)


@dataclass(frozen=True, slots=True)
class NewBufferSize:
    """Asks the producer to fill buffers for a channel up to ``buffer_size`` (debloating).

    Attributes:
        buffer_size: The new buffer size in bytes; always positive.
        receiver_id: The input channel asking.
    """

    MESSAGE_ID: ClassVar[int] = 10

    buffer_size: int
    receiver_id: InputChannelID

    def __post_init__(self) -> None:
        _check_int32("buffer_size", self.buffer_size, 1)
        _check_receiver(self.receiver_id)


Message: TypeAlias = (
    BufferResponse
    | ErrorResponse
    | PartitionRequest
    | TaskEventRequest
    | CancelPartitionRequest
    | CloseRequest
    | AddCredit
    | ResumeConsumption
    | AckAllUserRecordsProcessed
    | BacklogAnnouncement
    | NewBufferSize
)

MESSAGE_TYPES: Final[dict[int, type[Message]]] = {
    kind.MESSAGE_ID: kind
    for kind in (
        BufferResponse,
        ErrorResponse,
        PartitionRequest,
        TaskEventRequest,
        CancelPartitionRequest,
        CloseRequest,
        AddCredit,
        ResumeConsumption,
        AckAllUserRecordsProcessed,
        BacklogAnnouncement,
        NewBufferSize,
    )
}
