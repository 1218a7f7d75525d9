"""InputChannel: one producer subpartition as seen by a consuming task's input gate."""

from __future__ import annotations

from typing import TYPE_CHECKING, NamedTuple

from penstock.buffer.buffer import Buffer, DataType
from penstock.ids import ResultPartitionID

if TYPE_CHECKING:
    from penstock.consumer.input_gate import SingleInputGate

__all__ = ["BufferAndAvailability", "InputChannel"]


class BufferAndAvailability(NamedTuple):
    """A buffer read from a channel, and whether the channel has more right now.

    Attributes:
        buffer: The buffer; whoever reads it recycles it.
        next_data_type: Type of the next readable element, ``NONE`` if none.
        backlog: Data buffers the producer still has queued for this channel.
        sequence_number: The buffer's position in the channel's stream.
    """

    buffer: Buffer
    next_data_type: DataType
    backlog: int
    sequence_number: int

    @property
    def more_available(self) -> bool:
        return self.next_data_type is not DataType.NONE


class InputChannel:
    """Base of local and remote input channels.

    A channel reads one subpartition of one producer. It tells its gate when it goes
    from empty to non-empty (``notify_data_available``, per buffer, from whatever thread
    noticed), and the gate reads it on the consuming task's thread. Errors (a failed
    producer, a lost connection) are stored and raised by the next read, so they reach
    the task in order with the data.
    """

    def __init__(
        self,
        gate: SingleInputGate,
        channel_index: int,
        partition_id: ResultPartitionID,
        subpartition_index: int,
        initial_backoff_ms: int = 100,
        max_backoff_ms: int = 10_000,
    ) -> None:
        self.gate = gate
        self.initial_backoff_ms = initial_backoff_ms
        self.max_backoff_ms = max_backoff_ms
        self._current_backoff_ms = 0
        self.channel_index = channel_index
        self.partition_id = partition_id
        self.subpartition_index = subpartition_index
        self.num_bytes_in = 0
        self.num_buffers_in = 0
        self._error: BaseException | None = None
        self._released = False

    def request_subpartition(self) -> None:
        """Starts reading: asks the producer's partition for the subpartition."""
        raise NotImplementedError

    def get_next_buffer(self) -> BufferAndAvailability | None:
        """The next buffer, or None if nothing is readable now (never waits).

        Raises:
            PenstockError: The channel failed (producer failure, lost connection...).
        """
        raise NotImplementedError

    def resume_consumption(self) -> None:
        """Lets the producer continue after a blocking event (aligned barrier)."""
        raise NotImplementedError

    def release_all_resources(self) -> None:
        """Stops reading and gives back every buffer the channel holds (idempotent)."""
        raise NotImplementedError

    @property
    def is_released(self) -> bool:
        return self._released

    @property
    def is_remote(self) -> bool:
        return False

    def buffers_in_use(self) -> int:
        """Buffers queued for this channel (Flink's inputQueueLength contribution)."""
        return 0

    def own_buffers(self) -> tuple[int, int, int]:
        """``(exclusive in use, exclusive, floating held idle)``: none for a local channel."""
        return 0, 0, 0

    def notify_data_available(self) -> None:
        """The channel went from empty to readable: queue it at the gate."""
        self.gate.notify_channel_non_empty(self)

    def set_error(self, error: BaseException) -> None:
        """Fails the channel; the next read raises ``error`` (the first error wins)."""
        if self._error is None:
            self._error = error
        self.gate.notify_channel_non_empty(self)

    def check_error(self) -> None:
        error = self._error
        if error is not None:
            raise error

    def _increase_backoff(self) -> bool:
        """Moves to the next partition-request backoff; False once it is exhausted.

        The backoff starts at ``initial_backoff_ms`` and doubles up to
        ``max_backoff_ms`` (``taskmanager.network.request-backoff.*``); an initial
        backoff of 0 turns retries off, as in Flink.
        """
        if self._current_backoff_ms == 0:
            if self.initial_backoff_ms <= 0:
                return False
            self._current_backoff_ms = self.initial_backoff_ms
            return True
        if self._current_backoff_ms >= self.max_backoff_ms:
            return False
        self._current_backoff_ms = min(self._current_backoff_ms * 2, self.max_backoff_ms)
        return True

    def describe(self) -> str:
        """Names the channel in error messages."""
        return (
            f"channel {self.channel_index} (subpartition {self.subpartition_index} of "
            f"{self.partition_id}) of {self.gate.owner or 'input gate'}"
        )

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.describe()})"
