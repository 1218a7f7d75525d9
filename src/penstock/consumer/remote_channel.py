"""RemoteInputChannel: a subpartition of another TaskManager, read over TCP with credit.

Theory of operation
-------------------
The channel asks the producer's TaskManager for its subpartition with a
PartitionRequest that announces its initial credit (its exclusive buffers). From then
on two threads share it:

* the **network thread** receives each BufferResponse straight into a free segment of
  the channel's ``BufferManager`` (``allocate``), checks the sequence number (0, 1, 2...
  with no gap or repeat: invariant 3), queues the buffer and tells the gate when the
  queue goes from empty to non-empty; the backlog in the response makes the manager
  borrow floating buffers ahead of need;
* the **task thread** reads queued buffers (``get_next_buffer``) and recycles them;
  each segment that comes free is new credit, gathered as *unannounced credit* and
  sent in one AddCredit when the network thread gets to it (several recycles, one
  message).

Credit is announced in batches. The channel knows how much credit the sender still
holds (*outstanding*: the initial credit plus every AddCredit, less the data buffers
received), and asks for an AddCredit only once it holds back at least as much as
that: while the sender has plenty, freed segments gather, so one message carries
several credits instead of one message, one wake-up of the network thread and two
system calls for each buffer. It can never stall: when the sender's credit runs out,
outstanding is 0 and the next freed segment is announced at once.

The queue can never hold more buffers than the channel gave credit for, so it is
bounded by construction. Failures (a lost connection, an error from the producer, a
sequence gap) are stored and raised by the next ``get_next_buffer``. A partition that is
not there yet is asked for again with exponential backoff, and fails with
``PartitionNotFoundError`` when the backoff is exhausted.
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from typing import TYPE_CHECKING, Protocol

from penstock.buffer.buffer import Buffer, DataType
from penstock.consumer.buffer_manager import BufferManager
from penstock.consumer.input_channel import BufferAndAvailability, InputChannel
from penstock.errors import (
    BufferReorderingError,
    PartitionNotFoundError,
    PenstockError,
    RemoteProtocolError,
)
from penstock.ids import InputChannelID, ResultPartitionID
from penstock.memory.network_pool import NetworkBufferPool
from penstock.memory.segment import MemorySegment
from penstock.transport.messages import BufferResponse

if TYPE_CHECKING:
    from penstock.consumer.input_gate import SingleInputGate

__all__ = [
    "ConnectionID",
    "PartitionRequestClient",
    "PartitionRequestClientFactory",
    "RemoteInputChannel",
]

log = logging.getLogger(__name__)

ConnectionID = tuple[str, int]
"""The data address (host, port) of the producer's TaskManager."""


class PartitionRequestClient(Protocol):
    """The connection a remote channel talks through (thread-safe methods)."""

    @property
    def address(self) -> str: ...

    def request_subpartition(self, channel: RemoteInputChannel, delay_ms: int = 0) -> None: ...

    def notify_credit_available(self, channel: RemoteInputChannel) -> None: ...

    def resume_consumption(self, channel: RemoteInputChannel) -> None: ...

    def close_channel(self, channel: RemoteInputChannel) -> None: ...


class PartitionRequestClientFactory(Protocol):
    """Gives the (shared) connection to a TaskManager, connecting if needed."""

    def create_partition_request_client(self, address: ConnectionID) -> PartitionRequestClient: ...


class RemoteInputChannel(InputChannel):
    """An input channel whose producer lives in another TaskManager process."""

    def __init__(
        self,
        gate: SingleInputGate,
        channel_index: int,
        partition_id: ResultPartitionID,
        subpartition_index: int,
        address: ConnectionID,
        connection_manager: PartitionRequestClientFactory,
        network_pool: NetworkBufferPool,
        initial_credit: int = 2,
        initial_backoff_ms: int = 100,
        max_backoff_ms: int = 10_000,
    ) -> None:
        super().__init__(
            gate,
            channel_index,
            partition_id,
            subpartition_index,
            initial_backoff_ms,
            max_backoff_ms,
        )
        self.id = InputChannelID.generate()
        self.address = address
        self.connection_manager = connection_manager
        self.initial_credit = initial_credit
        self.buffer_manager = BufferManager(self, network_pool, gate.buffer_pool, initial_credit)
        self._lock = threading.Lock()
        self._received: deque[Buffer] = deque()
        self._expected_sequence = 0
        self._unannounced_credit = 0
        self._credit_granted = initial_credit  # the PartitionRequest's, then each AddCredit
        self._credit_used = 0  # data buffers received against it
        self._announce_pending = False
        self._client: PartitionRequestClient | None = None
        self._pending_segment: MemorySegment | None = None
        self._last_backlog = 0

    @property
    def is_remote(self) -> bool:
        return True

    def setup(self) -> None:
        """Takes the exclusive buffers (before the partition is requested)."""
        self.buffer_manager.request_exclusive_segments()

    def request_subpartition(self) -> None:
        if self._client is None:
            try:
                self._client = self.connection_manager.create_partition_request_client(self.address)
            except PenstockError as exc:
                self.set_error(exc)
                return
        self._client.request_subpartition(self)

    # -- the network thread --------------------------------------------------------

    def allocate(self, size: int, data_type: DataType) -> memoryview | None:
        """A free segment's memory for an incoming data buffer of ``size`` bytes.

        Returns None (the payload is skipped) when the channel is released, or when the
        sender sent data without credit, which fails the channel.
        """
        if self._released:
            return None
        segment = self.buffer_manager.take_segment()
        if segment is None:
            msg = f"{self.describe()} received a buffer from '{self._peer()}' without credit for it"
            self.on_error(RemoteProtocolError(msg))
            return None
        self._pending_segment = segment
        return segment.memory[:size]

    def on_buffer_response(self, response: BufferResponse) -> None:
        """Queues a received buffer (its payload is already in a segment of ours)."""
        segment, self._pending_segment = self._pending_segment, None
        if response.sequence_number != self._expected_sequence:
            if segment is not None:
                self.buffer_manager.wrap(segment, 0).recycle()
            self.on_error(BufferReorderingError(self._expected_sequence, response.sequence_number))
            return
        self._expected_sequence += 1
        data_type = response.data_type
        if data_type.is_buffer:
            self._credit_used += 1  # before the buffer can be read and recycled
            if segment is None:
                # An empty data buffer (nothing was allocated): its credit is free again.
                self.notify_buffer_available(1)
                self.on_sender_backlog(response.backlog)
                return
            buffer = self.buffer_manager.wrap(segment, response.size)
        else:
            payload = response.payload if response.payload is not None else b""
            buffer = Buffer.wrap(
                MemorySegment(memoryview(bytearray(payload))), response.size, None, data_type
            )
        with self._lock:
            released = self._released
            was_empty = not self._received
            if not released:
                self._received.append(buffer)
            # The sender's credit just went down: credit held back may be due now.
            client = None if released else self._claim_announcement()
        if released:
            buffer.recycle()
            return
        if client is not None:
            client.notify_credit_available(self)
        if was_empty:
            self.notify_data_available()
        self.on_sender_backlog(response.backlog)

    def on_sender_backlog(self, backlog: int) -> None:
        self._last_backlog = backlog
        self.buffer_manager.on_sender_backlog(backlog)

    def on_error(self, error: BaseException) -> None:
        """Fails the channel (connection lost, producer error...); first error wins."""
        self.abandon_payload()
        self.set_error(error)

    def abandon_payload(self) -> None:
        """The payload being received into our segment will never complete: free it.

        Network thread only, once nothing more is read into the segment (the
        connection is closed, or the decoder failed).
        """
        segment, self._pending_segment = self._pending_segment, None
        if segment is not None:
            self.buffer_manager.wrap(segment, 0).recycle()

    def on_failed_partition_request(self) -> None:
        """The producer's TaskManager has no such partition (yet): retry or fail."""
        if self._released:
            return
        if not self._increase_backoff() or self._client is None:
            self.set_error(PartitionNotFoundError(self.partition_id))
            return
        log.debug(
            "%s not found at %s, asking again in %d ms",
            self.partition_id,
            self._peer(),
            self._current_backoff_ms,
        )
        self._client.request_subpartition(self, self._current_backoff_ms)

    def get_and_reset_unannounced_credit(self) -> int:
        """The credit to announce now (counted as granted from here on)."""
        with self._lock:
            credit = self._unannounced_credit
            self._unannounced_credit = 0
            self._announce_pending = False
            if self._released:
                return 0
            self._credit_granted += credit
            return credit

    # -- any thread ------------------------------------------------------------------

    def notify_buffer_available(self, count: int) -> None:
        """``count`` more segments are free: announce them (batched) to the sender."""
        with self._lock:
            if self._released:
                return
            self._unannounced_credit += count
            client = self._claim_announcement()
        if client is not None:
            client.notify_credit_available(self)

    def _claim_announcement(self) -> PartitionRequestClient | None:
        """The client to ask for an AddCredit if one is due (call holding the lock).

        Due when credit is held back and at least as much as the sender still has;
        checked whenever either changes: a segment comes free, a buffer arrives.
        """
        unannounced = self._unannounced_credit
        client = self._client
        if (
            client is None
            or self._announce_pending
            or unannounced == 0
            or unannounced < self._credit_granted - self._credit_used
        ):
            return None
        self._announce_pending = True
        return client

    # -- the task thread -------------------------------------------------------------

    def get_next_buffer(self) -> BufferAndAvailability | None:
        self.check_error()
        with self._lock:
            if not self._received:
                return None
            buffer = self._received.popleft()
            next_type = self._received[0].data_type if self._received else DataType.NONE
        self.num_bytes_in += buffer.size
        self.num_buffers_in += 1
        return BufferAndAvailability(buffer, next_type, self._last_backlog, -1)

    def resume_consumption(self) -> None:
        if self._client is not None:
            self._client.resume_consumption(self)

    def release_all_resources(self) -> None:
        with self._lock:
            if self._released:
                return
            self._released = True
            queued = list(self._received)
            self._received.clear()
        for buffer in queued:
            buffer.recycle()
        self.buffer_manager.release()
        if self._client is not None:
            self._client.close_channel(self)

    def buffers_in_use(self) -> int:
        return len(self._received)

    def own_buffers(self) -> tuple[int, int, int]:
        manager = self.buffer_manager
        return manager.exclusive_in_use, manager.initial_credit, manager.floating_held

    @property
    def unannounced_credit(self) -> int:
        return self._unannounced_credit

    @property
    def outstanding_credit(self) -> int:
        """Credit the sender has been given and not used yet (as far as known here)."""
        return self._credit_granted - self._credit_used

    @property
    def expected_sequence_number(self) -> int:
        return self._expected_sequence

    # -- internals -------------------------------------------------------------------

    def _peer(self) -> str:
        return f"{self.address[0]}:{self.address[1]}"
