"""Every error penstock raises, under one root.

Catch ``PenstockError`` for all of them, or a branch for one kind of failure::

    PenstockError
    ├── ConfigurationError (also ValueError)   a bad key or value; names both
    ├── BufferPoolError
    │   ├── InsufficientBuffersError           Flink's "Insufficient number of network buffers"
    │   └── PoolDestroyedError                 a request to a pool that was destroyed
    ├── SerializationError                     a record that cannot be (de)serialized
    │   └── CorruptRecordError                 bad bytes on a channel; names the channel
    ├── ProtocolError (abstract)               the wire protocol was broken
    │   ├── LocalProtocolError                 by us
    │   └── RemoteProtocolError                by the peer
    │       └── CorruptFrameError              bad magic number, length or message id
    ├── PartitionError
    │   ├── PartitionNotFoundError             no such partition (yet), after retries
    │   ├── PartitionConsumedError             a pipelined subpartition read twice
    │   ├── PartitionReleasedError             read from or written to after release
    │   └── ProducerFailedError                the producing task failed; cause attached
    ├── TransportError
    │   ├── LocalTransportError                the local end of a connection failed
    │   ├── RemoteTransportError               the peer was lost or reported an error
    │   └── BufferReorderingError              a sequence number gap or duplicate
    ├── IllegalStateError                      an operation in a state that forbids it
    ├── TaskError                              a task failed; the user exception is the cause
    │   └── TaskCancelledError
    ├── JobExecutionError                      a job failed; its cause is the first failure
    ├── ClusterError                           a process of the cluster was lost or refused
    └── RemoteError                            an error that happened in another process,
                                               carried as type name, message and traceback

Every error pickles, with its attributes and its ``__cause__``, because errors cross
processes. A cause that cannot be pickled travels as a ``RemoteError`` holding its type
name, message and traceback text, so nothing is lost on the way.
"""

from __future__ import annotations

import pickle
import traceback
from typing import Any, Final, Self

__all__ = [
    "BufferPoolError",
    "BufferReorderingError",
    "ClusterError",
    "ConfigurationError",
    "CorruptFrameError",
    "CorruptRecordError",
    "IllegalStateError",
    "InsufficientBuffersError",
    "JobExecutionError",
    "LocalProtocolError",
    "LocalTransportError",
    "PartitionConsumedError",
    "PartitionError",
    "PartitionNotFoundError",
    "PartitionReleasedError",
    "PenstockError",
    "PoolDestroyedError",
    "ProducerFailedError",
    "ProtocolError",
    "RemoteError",
    "RemoteProtocolError",
    "RemoteTransportError",
    "SerializationError",
    "TaskCancelledError",
    "TaskError",
    "TransportError",
]


def _rebuild(cls: type[PenstockError], args: tuple[Any, ...], state: dict[str, Any]) -> Any:
    error = cls.__new__(cls)
    Exception.__init__(error, *args)
    cause = state.pop("__cause__", None)
    error.__dict__.update(state)
    if cause is not None:
        error.__cause__ = cause
    return error


def _portable(error: BaseException) -> BaseException:
    """Returns ``error`` if it pickles, else a ``RemoteError`` that describes it."""
    try:
        pickle.dumps(error)
    except Exception:
        return RemoteError.from_exception(error)
    return error


class PenstockError(Exception):
    """The root of every error penstock raises.

    Subclasses keep their extra attributes in ``__dict__``; pickling restores them and
    the ``__cause__`` without calling ``__init__`` again, so any signature pickles.
    """

    def __reduce__(self) -> tuple[Any, ...]:
        state = dict(self.__dict__)
        if self.__cause__ is not None:
            state["__cause__"] = _portable(self.__cause__)
        return (_rebuild, (type(self), self.args, state))


class ConfigurationError(PenstockError, ValueError):
    """A configuration key is unknown or its value is invalid.

    Attributes:
        key: The configuration key.
        value: The offending value, as given.
    """

    def __init__(self, key: str, value: object, reason: str) -> None:
        super().__init__(f"Invalid configuration {key}={value!r}: {reason}")
        self.key = key
        self.value = value
        self.reason = reason


class BufferPoolError(PenstockError):
    """A buffer pool could not serve a request."""


INSUFFICIENT_BUFFERS_MESSAGE: Final = (
    "Insufficient number of network buffers: required {required}, but only {available} "
    "available. The total number of network buffers is currently set to {total} of "
    "{segment_size} bytes each. You can increase this number by setting the configuration "
    "keys 'taskmanager.memory.network.fraction', 'taskmanager.memory.network.min', and "
    "'taskmanager.memory.network.max'."
)


class InsufficientBuffersError(BufferPoolError):
    """The NetworkBufferPool has too few segments for the pools a job needs."""

    def __init__(self, required: int, available: int, total: int, segment_size: int) -> None:
        super().__init__(
            INSUFFICIENT_BUFFERS_MESSAGE.format(
                required=required, available=available, total=total, segment_size=segment_size
            )
        )
        self.required = required
        self.available = available
        self.total = total
        self.segment_size = segment_size


class PoolDestroyedError(BufferPoolError):
    """A buffer was requested from a pool that has been destroyed."""


class SerializationError(PenstockError):
    """A record could not be serialized or deserialized."""


class CorruptRecordError(SerializationError):
    """The bytes of a channel do not form valid length-prefixed records.

    Attributes:
        channel: A description of the channel the bytes came from.
    """

    def __init__(self, channel: str, detail: str) -> None:
        super().__init__(f"Corrupt record on {channel}: {detail}")
        self.channel = channel
        self.detail = detail


class ProtocolError(PenstockError):
    """The network protocol was violated. Abstract: raise a subclass."""

    def __new__(cls, *args: object, **kwargs: object) -> Self:
        if cls is ProtocolError:
            msg = "ProtocolError is abstract; raise LocalProtocolError or RemoteProtocolError"
            raise TypeError(msg)
        return super().__new__(cls, *args, **kwargs)


class LocalProtocolError(ProtocolError):
    """This side tried to do something the protocol forbids."""


class RemoteProtocolError(ProtocolError):
    """The peer sent something the protocol forbids."""


class CorruptFrameError(RemoteProtocolError):
    """A frame with a bad magic number, length or message id arrived."""


class PartitionError(PenstockError):
    """A result partition could not be produced to or consumed from."""


class PartitionNotFoundError(PartitionError):
    """The requested result partition is not registered (after all retries)."""

    def __init__(self, partition_id: object) -> None:
        super().__init__(f"Partition {partition_id} not found.")
        self.partition_id = partition_id


class PartitionConsumedError(PartitionError):
    """A pipelined subpartition was asked for a second reader."""


class PartitionReleasedError(PartitionError):
    """A partition was used after it was released."""


class ProducerFailedError(PartitionError):
    """The task producing a partition failed; the failure is the ``__cause__``."""


class TransportError(PenstockError):
    """A network connection failed."""


class LocalTransportError(TransportError):
    """The local end of a connection failed.

    Attributes:
        address: ``host:port`` of the peer the connection was to.
    """

    def __init__(self, message: str, address: str) -> None:
        super().__init__(f"{message} (connection to '{address}')")
        self.address = address


class RemoteTransportError(TransportError):
    """The peer was lost, closed the connection or reported an error.

    Attributes:
        address: ``host:port`` of the remote TaskManager.
    """

    def __init__(self, message: str, address: str) -> None:
        super().__init__(message)
        self.address = address


class BufferReorderingError(TransportError):
    """A buffer arrived out of sequence on a remote channel."""

    def __init__(self, expected: int, received: int) -> None:
        super().__init__(
            f"Buffer re-ordering: expected buffer with sequence number {expected}, "
            f"but received {received}."
        )
        self.expected = expected
        self.received = received


class IllegalStateError(PenstockError):
    """An operation was attempted in a state that does not allow it."""


class TaskError(PenstockError):
    """A task failed; the exception that failed it is the ``__cause__``."""


class TaskCancelledError(TaskError):
    """A task was cancelled."""


class JobExecutionError(PenstockError):
    """A job failed; its ``__cause__`` is the first failure that failed it."""

    def __init__(self, message: str, job_id: object = None) -> None:
        super().__init__(message)
        self.job_id = job_id


class ClusterError(PenstockError):
    """A JobManager or TaskManager process was lost, refused a peer or could not start."""


class RemoteError(PenstockError):
    """An error raised in another process, carried as text.

    Nothing received from another process is unpickled by the transport, so a remote
    failure arrives as the name of its type, its message and its traceback text.

    Attributes:
        type_name: Qualified name of the original exception type.
        message: ``str()`` of the original exception.
        traceback_text: The formatted remote traceback, possibly empty.
    """

    def __init__(self, type_name: str, message: str, traceback_text: str = "") -> None:
        super().__init__(f"{type_name}: {message}" if message else type_name)
        self.type_name = type_name
        self.message = message
        self.traceback_text = traceback_text

    @classmethod
    def from_exception(cls, error: BaseException) -> RemoteError:
        """Describes ``error`` (and, as its cause, its cause chain) as a RemoteError.

        Never fails on the error itself: a ``__str__`` that raises is described as the
        traceback module does, and a cause chain that loops ends where it would repeat.
        """
        first: RemoteError | None = None
        last: RemoteError | None = None
        seen: set[int] = set()
        current: BaseException | None = error
        while current is not None and id(current) not in seen:
            seen.add(id(current))
            remote = current if isinstance(current, RemoteError) else cls._describe(current)
            if last is None:
                first = remote
            else:
                last.__cause__ = remote
            if isinstance(current, RemoteError):
                break  # already carries its own cause chain
            last = remote
            current = current.__cause__
        assert first is not None
        return first

    @classmethod
    def _describe(cls, error: BaseException) -> RemoteError:
        kind = type(error)
        try:
            message = str(error)
        except Exception:  # a user's __str__ may raise anything
            message = "<exception str() failed>"
        return cls(
            f"{kind.__module__}.{kind.__qualname__}",
            message,
            "".join(traceback.format_exception(error, chain=False)),
        )

    def __str__(self) -> str:
        text = super().__str__()
        if self.traceback_text:
            return f"{text}\n\nRemote traceback:\n{self.traceback_text.rstrip()}"
        return text
