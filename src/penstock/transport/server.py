"""The data server: a TaskManager's data port, serving subpartitions to remote channels.

Theory of operation
-------------------
Each connection gets a ``_ServerConnection`` (Flink's PartitionRequestServerHandler and
PartitionRequestQueue in one): a PartitionRequest creates a ``CreditBasedReader`` on the
requested subpartition; if the partition is not registered yet, the request waits for
it up to ``taskmanager.network.partition-request-timeout`` and is then answered with a
PartitionNotFound ErrorResponse, which the client retries with backoff.

Readers with something to send wait in a FIFO queue. The connection serves them while
the transport is writable (asyncio's high/low water marks: ``pause_writing`` and
``resume_writing``; the high mark is one buffer, asyncio's stand-in for Flink's one
write in flight per connection), taking the reader at the head, framing one
BufferResponse and putting it back at the tail if it has more: round robin, one buffer
per turn, so a busy channel cannot starve the others. The frames of consecutive turns
are gathered and written at once, up to 256 KiB: one system call for several buffers.
A reader without credit is not queued at all until AddCredit arrives (events excepted,
they cost no credit); if its channel has no exclusive buffers, it is told the backlog
instead (BacklogAnnouncement), as only that makes it ask for floating ones.

Producer threads say "this reader has data" (``notify_data_available``) once per
buffer transition; that hops onto the loop with ``call_soon_threadsafe``. A flushed,
partly filled buffer is the exception: someone waits for it, so the flushing thread
writes it itself when the connection is idle (``transport.direct.DirectWriter``).
Readers, their queue and the connection's writes are guarded by one lock, which the
loop takes and other threads only try.

Failures stay local: a failed producer is reported to its channel with a per-channel
ErrorResponse; a protocol violation gets a fatal ErrorResponse and closes that
connection only; a connection that sends nothing for ``idle_timeout_s`` while it has no
readers is closed. When a connection with live readers ends (lost, closed for a
protocol violation, or closed by its client), the partitions they read can never be
consumed (pipelined partitions are read once), so they are released with the reason as
the cause, which wakes their producers.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Final

from penstock.buffer.buffer import Buffer, DataType
from penstock.errors import (
    IllegalStateError,
    LocalProtocolError,
    PartitionNotFoundError,
    PenstockError,
    RemoteProtocolError,
    RemoteTransportError,
)
from penstock.ids import InputChannelID, ResultPartitionID
from penstock.partition.manager import ResultPartitionManager
from penstock.partition.result_partition import ResultPartition
from penstock.transport.codec import (
    NEED_DATA,
    FrameDecoder,
    encode,
    encode_buffer_response_header,
)
from penstock.transport.credit import CreditBasedReader
from penstock.transport.direct import DirectWriter
from penstock.transport.loop import EventLoopThread, close_connections
from penstock.transport.messages import (
    AckAllUserRecordsProcessed,
    AddCredit,
    BacklogAnnouncement,
    CancelPartitionRequest,
    CloseRequest,
    ErrorResponse,
    Message,
    NewBufferSize,
    PartitionRequest,
    ResumeConsumption,
    TaskEventRequest,
)

__all__ = ["NettyServer"]

log = logging.getLogger(__name__)

DEFAULT_IDLE_TIMEOUT_S: Final = 60.0

_WRITE_BATCH_BYTES: Final = 256 * 1024
"""Frames gathered into one write at most (the client reads 256 KiB at a time)."""

_RECEIVE_CHUNK: Final = 64 * 1024
"""Bytes read at once into the connection's own area, reused for every read.

Clients send small control messages: mostly AddCredit, tens of bytes, one read each.
A plain ``asyncio.Protocol`` would allocate 256 KiB for every read and shrink it to
the bytes received; glibc serves an allocation that size with ``mmap`` and the
shrunk one with ``mremap``, then ``munmap`` on release: three system calls and a
page fault per credit, on the thread that sends the data.
"""


class _ServerConnection(asyncio.BufferedProtocol):
    """One client connection; runs on the loop thread only."""

    def __init__(self, server: NettyServer) -> None:
        self.server = server
        self.transport: asyncio.Transport | None = None
        self.peer = "unknown"
        self._decoder = FrameDecoder(
            server.max_buffer_size, max_control_frame_size=server.max_control_frame_size
        )
        self._scratch = memoryview(bytearray(_RECEIVE_CHUNK))
        self._area = self._scratch
        """Where the read in progress lands (``get_buffer``)."""
        self._decoding = False
        self._readers: dict[InputChannelID, CreditBasedReader] = {}
        self._available: deque[CreditBasedReader] = deque()
        self._waiting: dict[InputChannelID, asyncio.TimerHandle] = {}
        self._listeners: dict[
            InputChannelID, tuple[ResultPartitionID, Callable[[ResultPartition], None]]
        ] = {}
        self._writable = True
        self._closed = False
        self._writer: DirectWriter | None = None
        self._lock = threading.RLock()
        """Orders the connection's writes and guards its readers (loop and producers)."""
        self._idle_handle: asyncio.TimerHandle | None = None
        self._last_heard = time.monotonic()
        """When the peer last sent something: the idle timer checks it when it fires,
        rather than being cancelled and armed again for every message."""
        self.lost: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    # -- asyncio.BufferedProtocol ----------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        peer = transport.get_extra_info("peername")
        self.peer = f"{peer[0]}:{peer[1]}" if peer else "unknown"
        transport.set_write_buffer_limits(high=self.server.write_high_water_mark)
        self._writer = DirectWriter.for_transport(transport, self.server.loop_thread, self._lock)
        self.server.connections.add(self)
        self._arm_idle_timer(self.server.idle_timeout_s)

    def get_buffer(self, sizehint: int) -> memoryview:
        # A read that comes while the last one is being decoded must not overwrite it:
        # closing a TLS transport (a CloseRequest, a protocol error) reads what is
        # left of the stream at once, from inside the handling of the message.
        area = self._scratch if not self._decoding else memoryview(bytearray(_RECEIVE_CHUNK))
        self._area = area
        return area

    def buffer_updated(self, nbytes: int) -> None:
        self._last_heard = time.monotonic()
        decoding, self._decoding = self._decoding, True
        with self._lock:
            try:
                # Decoded in place; whatever is left of a partial frame is copied out
                # by the time NEED_DATA comes back, so the next read may overwrite it.
                self._decoder.feed(self._area[:nbytes])
                while (message := self._decoder.next_message()) is not NEED_DATA:
                    self._handle(message)
            except (RemoteProtocolError, LocalProtocolError) as exc:
                log.warning("Closing the connection from %s: %s", self.peer, exc)
                self._send_fatal_and_close(exc)
            finally:
                self._decoding = decoding

    def eof_received(self) -> bool:
        return False

    def pause_writing(self) -> None:
        self._writable = False

    def resume_writing(self) -> None:
        with self._lock:
            self._writable = True
            self._write_available()

    def connection_lost(self, exc: Exception | None) -> None:
        with self._lock:
            self._closed = True
            if self._writer is not None:
                self._writer.close()
        if not self.lost.done():
            self.lost.set_result(None)
        self.server.connections.discard(self)
        if self._idle_handle is not None:
            self._idle_handle.cancel()
        for handle in self._waiting.values():
            handle.cancel()
        self._waiting.clear()
        error = RemoteTransportError(
            f"Lost connection to the consumer at '{self.peer}'.", self.peer
        )
        error.__cause__ = exc
        self._release_unread(error)
        self.release_all()

    # -- messages ----------------------------------------------------------------------

    def _handle(self, message: Message) -> None:
        if isinstance(message, AddCredit):
            reader = self._readers.get(message.receiver_id)
            if reader is not None:
                reader.add_credit(message.credit)
                self._enqueue_if_available(reader)
        elif isinstance(message, PartitionRequest):
            self._on_partition_request(message)
        elif isinstance(message, CancelPartitionRequest):
            self._release_reader(message.receiver_id)
        elif isinstance(message, CloseRequest):
            self._release_unread(
                RemoteTransportError(
                    f"The consumer at '{self.peer}' closed its connection before it had "
                    "read its subpartitions to their end.",
                    self.peer,
                )
            )
            self.release_all()
            if self.transport is not None:
                self.transport.close()
        elif isinstance(message, ResumeConsumption):
            reader = self._readers.get(message.receiver_id)
            if reader is not None:
                reader.resume_consumption()
                self._enqueue_if_available(reader)
        elif isinstance(message, TaskEventRequest):
            error = PenstockError("Task event receiver not found.")
            self._send(ErrorResponse.from_exception(error, message.receiver_id))
        elif isinstance(message, NewBufferSize | AckAllUserRecordsProcessed):
            pass  # buffer debloating and final checkpoints are not implemented
        else:
            msg = f"unexpected {type(message).__name__} from a data client"
            raise RemoteProtocolError(msg)

    def _on_partition_request(self, request: PartitionRequest) -> None:
        receiver_id = request.receiver_id
        if receiver_id in self._readers or receiver_id in self._waiting:
            msg = f"a second PartitionRequest for channel {receiver_id}"
            raise RemoteProtocolError(msg)
        if request.subpartition_index_end != request.subpartition_index_start:
            # A channel reads one subpartition here; serving the first of a range would
            # lose the others' records without a word.
            msg = (
                f"a PartitionRequest for subpartitions [{request.subpartition_index_start}, "
                f"{request.subpartition_index_end}] of {request.partition_id}: this data "
                "server serves one subpartition per channel"
            )
            self._send(ErrorResponse.from_exception(IllegalStateError(msg), receiver_id))
            return
        reader = CreditBasedReader(receiver_id, request.credit, self.server.notify_reader)
        reader.connection = self  # type: ignore[attr-defined]

        def on_registered(registered: ResultPartition) -> None:
            self.server.loop_thread.call_soon(
                self._on_partition_registered, registered, request, reader
            )

        partition = self.server.partition_manager.add_registration_listener(
            request.partition_id, on_registered
        )
        if partition is not None:
            self._attach(partition, request, reader)
            return
        # Not registered yet: wait for it, up to the partition request timeout.
        loop = asyncio.get_running_loop()
        self._waiting[receiver_id] = loop.call_later(
            self.server.partition_request_timeout_s,
            self._on_partition_request_timeout,
            request,
        )
        self._listeners[receiver_id] = (request.partition_id, on_registered)

    def _on_partition_registered(
        self, partition: ResultPartition, request: PartitionRequest, reader: CreditBasedReader
    ) -> None:
        with self._lock:
            self._listeners.pop(request.receiver_id, None)
            handle = self._waiting.pop(request.receiver_id, None)
            if handle is None or self._closed:
                return  # timed out, cancelled or the connection is gone
            handle.cancel()
            self._attach(partition, request, reader)

    def _on_partition_request_timeout(self, request: PartitionRequest) -> None:
        with self._lock:
            self._forget_listener(request.receiver_id)
            if self._waiting.pop(request.receiver_id, None) is None:
                return
            self._send(
                ErrorResponse.from_exception(
                    PartitionNotFoundError(request.partition_id), request.receiver_id
                )
            )

    def _attach(
        self, partition: ResultPartition, request: PartitionRequest, reader: CreditBasedReader
    ) -> None:
        try:
            view = partition.create_subpartition_view(request.subpartition_index_start, reader)
        except PenstockError as exc:
            self._send(ErrorResponse.from_exception(exc, request.receiver_id))
            return
        reader.attach(view, request.subpartition_index_start)
        self._readers[request.receiver_id] = reader
        self._enqueue_if_available(reader)

    # -- writing -----------------------------------------------------------------------

    def notify_reader(self, reader: CreditBasedReader) -> None:
        """A reader's subpartition has new data (loop thread)."""
        with self._lock:
            if not self._closed and not reader.is_released:
                self._enqueue_if_available(reader)

    def try_write_directly(self, reader: CreditBasedReader) -> bool:
        """Serves ``reader`` on the calling thread if the connection is idle (any thread).

        True if done (or nothing was to be done); False if the loop must do it: the
        connection is busy with another thread, has bytes waiting, is paused, or is TLS.
        """
        writer = self._writer
        if writer is None or not self._lock.acquire(blocking=False):
            return False
        try:
            if self._closed or reader.is_released:
                return True
            if self._available or not self._writable or not writer.is_idle:
                return False
            self._enqueue_if_available(reader)
            return True
        finally:
            self._lock.release()

    def _enqueue_if_available(self, reader: CreditBasedReader) -> None:
        if reader.in_queue:
            return
        if not reader.is_available():
            backlog = reader.backlog_to_announce()
            if backlog:
                self._send(BacklogAnnouncement(backlog, reader.receiver_id))
            return
        reader.in_queue = True
        self._available.append(reader)
        if len(self._available) == 1:
            self._write_available()

    def _write_available(self) -> None:
        """Serves available readers round robin, one buffer per turn, while writable.

        Runs under the connection's lock, on the loop thread or (through
        ``try_write_directly``) on a producer's thread while the connection is idle. The
        latter stops once the socket is full and lets the loop go on from there.

        The frames of consecutive turns are gathered and written together, up to
        ``_WRITE_BATCH_BYTES`` at a time: one system call, and one release of the GIL,
        for several buffers instead of two of each per buffer. Each call to
        ``transport.write`` releases the GIL, and a task thread that takes it then
        keeps it for up to the switch interval, so fewer writes also mean fewer
        waits for the network thread. The buffers are recycled once copied.
        """
        available = self._available
        writer = self._writer
        off_loop = writer is not None and not self.server.loop_thread.is_loop_thread
        parts: list[bytes | memoryview] = []
        buffers: list[Buffer] = []
        gathered = 0
        try:
            while self._writable and available and not self._closed:
                if off_loop and not writer.is_idle:  # type: ignore[union-attr]
                    self.server.loop_thread.call_soon(self._continue_writing)
                    break
                reader = available.popleft()
                reader.in_queue = False
                try:
                    polled = reader.get_next_buffer()
                except PenstockError as exc:
                    gathered = self._flush(parts, buffers)  # what came first goes first
                    self._send(ErrorResponse.from_exception(exc, reader.receiver_id))
                    self._release_reader(reader.receiver_id)
                    continue
                if polled is None:
                    continue
                buffer = polled.buffer
                buffers.append(buffer)
                header = encode_buffer_response_header(
                    reader.receiver_id,
                    reader.subpartition_id,
                    polled.sequence_number,
                    polled.backlog,
                    buffer.data_type,
                    False,
                    buffer.size,
                )
                parts += (header, buffer.memory)
                gathered += len(header) + buffer.size
                if buffer.data_type is DataType.END_OF_PARTITION:
                    reader.release()  # fully read: counts as consumed
                elif reader.has_more(polled):
                    reader.in_queue = True
                    available.append(reader)
                if gathered >= _WRITE_BATCH_BYTES:
                    gathered = self._flush(parts, buffers)
        finally:
            self._flush(parts, buffers)

    def _continue_writing(self) -> None:
        with self._lock:
            self._write_available()

    def _flush(self, parts: list[bytes | memoryview], buffers: list[Buffer]) -> int:
        """Writes the gathered frames in one call and recycles their buffers."""
        try:
            if parts:
                self._write(parts)
        finally:
            for buffer in buffers:
                buffer.recycle()
            parts.clear()
            buffers.clear()
        return 0

    def _send(self, message: Message) -> None:
        self._write([encode(message)])

    def _write(self, parts: list[bytes | memoryview]) -> None:
        """Sends now or copies what cannot be sent yet (any thread, under the lock)."""
        if self._writer is not None:
            self._writer.write(parts)
        elif self.transport is not None and not self.transport.is_closing():
            self.transport.write(b"".join(parts))

    # -- teardown ----------------------------------------------------------------------

    def _forget_listener(self, receiver_id: InputChannelID) -> None:
        entry = self._listeners.pop(receiver_id, None)
        if entry is not None:
            self.server.partition_manager.remove_registration_listener(*entry)

    def _release_reader(self, receiver_id: InputChannelID) -> None:
        self._forget_listener(receiver_id)
        handle = self._waiting.pop(receiver_id, None)
        if handle is not None:
            handle.cancel()
        reader = self._readers.pop(receiver_id, None)
        if reader is not None:
            reader.release()

    def release_all(self) -> None:
        with self._lock:
            for receiver_id in list(self._readers):
                self._release_reader(receiver_id)
            for receiver_id in list(self._listeners):
                self._forget_listener(receiver_id)
            for handle in self._waiting.values():
                handle.cancel()
            self._waiting.clear()
            self._available.clear()

    def _release_unread(self, error: RemoteTransportError) -> None:
        """Releases, with ``error`` as the cause, the partitions of readers still live.

        A consumer whose connection ends mid-stream (lost, closed for a protocol
        violation, or closed by a client that did not cancel its channels first) can
        never read its partitions again, as pipelined partitions are read once. They
        are released with the cause, which wakes their producers, *before* the readers
        are released, which would count them as consumed.
        """
        for reader in list(self._readers.values()):
            if not reader.is_released and reader.view is not None:
                self.server.partition_manager.release_partition(
                    reader.view.subpartition.parent.partition_id, error
                )

    def _send_fatal_and_close(self, error: BaseException) -> None:
        self._send(ErrorResponse.from_exception(error, None))
        closing = RemoteTransportError(
            f"The connection to the consumer at '{self.peer}' was closed: {error}", self.peer
        )
        closing.__cause__ = error
        self._release_unread(closing)
        self.release_all()
        if self.transport is not None:
            self.transport.close()

    def _arm_idle_timer(self, delay_s: float) -> None:
        if self._idle_handle is not None:
            self._idle_handle.cancel()
        if self._closed:
            return
        self._idle_handle = asyncio.get_running_loop().call_later(delay_s, self._on_idle)

    def _on_idle(self) -> None:
        if self._closed:
            return
        timeout_s = self.server.idle_timeout_s
        silent_s = time.monotonic() - self._last_heard
        if self._readers or self._waiting:
            self._arm_idle_timer(timeout_s)
            return
        if silent_s < timeout_s:
            self._arm_idle_timer(timeout_s - silent_s)
            return
        log.info("Closing idle connection from %s", self.peer)
        if self.transport is not None:
            self.transport.close()


class NettyServer:
    """The data port of one TaskManager (Flink's NettyServer, on asyncio).

    Args:
        partition_manager: Where requested partitions are looked up.
        loop_thread: The TaskManager's network loop.
        max_buffer_size: The segment size.
        host: Address to bind (loopback by default).
        port: Port to bind; 0 picks a free one (``taskmanager.data.port``).
        ssl_context: Server-side TLS context (mutual authentication), or None.
        ssl_handshake_timeout_s: How long a TLS handshake may take
            (``security.ssl.internal.handshake-timeout``).
        partition_request_timeout_s: How long a request waits for its partition.
        idle_timeout_s: How long a connection without readers may stay silent.
    """

    def __init__(
        self,
        partition_manager: ResultPartitionManager,
        loop_thread: EventLoopThread,
        max_buffer_size: int,
        host: str = "127.0.0.1",
        port: int = 0,
        ssl_context: ssl.SSLContext | None = None,
        ssl_handshake_timeout_s: float = 10.0,
        partition_request_timeout_s: float = 10.0,
        idle_timeout_s: float = DEFAULT_IDLE_TIMEOUT_S,
        write_high_water_mark: int | None = None,
    ) -> None:
        self.partition_manager = partition_manager
        self.loop_thread = loop_thread
        self.max_buffer_size = max_buffer_size
        self.max_control_frame_size = 1024 * 1024
        self.host = host
        self.requested_port = port
        self.ssl_context = ssl_context
        self.ssl_handshake_timeout_s = ssl_handshake_timeout_s
        self.partition_request_timeout_s = partition_request_timeout_s
        self.idle_timeout_s = idle_timeout_s
        # Writing stops once more than one buffer (frame included) waits in the
        # transport beyond what the socket took: asyncio's stand-in for Flink's one
        # write in flight per connection, as it has no per-write completion. A
        # gathered write may leave up to 256 KiB there; the kernel absorbs the rest.
        self.write_high_water_mark = (
            max_buffer_size + 64 if write_high_water_mark is None else write_high_water_mark
        )
        self.connections: set[_ServerConnection] = set()
        self._server: asyncio.Server | None = None
        self.port = 0

    async def start(self) -> int:
        """Binds and starts serving; returns the bound port."""
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            lambda: _ServerConnection(self),
            self.host,
            self.requested_port,
            ssl=self.ssl_context,
            ssl_handshake_timeout=self.ssl_handshake_timeout_s if self.ssl_context else None,
            reuse_address=True,
        )
        self.port = self._server.sockets[0].getsockname()[1]
        log.info("Data server listening on %s:%d", self.host, self.port)
        return self.port

    @property
    def address(self) -> tuple[str, int]:
        return self.host, self.port

    def notify_reader(self, reader: CreditBasedReader) -> None:
        """From any thread: the reader's subpartition has data.

        A flushed, partly filled buffer (buffer timeout 0, the output flusher, a slow
        source) is what a consumer waits for: the flushing thread writes it itself
        when the connection is idle, sparing it a hand-off to the loop (a wake-up,
        then a wait for the GIL). Full buffers are left to the loop, which sends them
        while the producer fills the next: a send on loopback runs the whole TCP path
        in the caller, and on the producer's thread it would hold the producer up.
        """
        connection: _ServerConnection = reader.connection  # type: ignore[attr-defined]
        view = reader.view
        if (
            self.loop_thread.is_loop_thread
            or view is None
            or not view.has_only_partial_data
            or not connection.try_write_directly(reader)
        ):
            self.loop_thread.call_soon(connection.notify_reader, reader)

    async def close(self) -> None:
        """Stops accepting and closes every connection."""
        if self._server is not None:
            self._server.close()
        closing = []
        for connection in list(self.connections):
            connection.release_all()
            if connection.transport is not None:
                closing.append((connection.transport, connection.lost))
        await close_connections(closing)
        if self._server is not None:
            await self._server.wait_closed()
