"""The client side of the data plane: one connection per remote TaskManager.

Theory of operation
-------------------
``ConnectionManager`` keeps one TCP connection per remote data address, shared by all
remote channels reading from that TaskManager and multiplexed by their
``InputChannelID``; concurrent channels asking for the same address share one connect.
The connection is closed (CloseRequest) when its last channel is released.

Receiving is zero-copy: the protocol is an ``asyncio.BufferedProtocol`` whose buffers
are those the ``FrameDecoder`` hands out, and for a BufferResponse the decoder asks the
addressed channel for a free segment, so the payload is read from the socket straight
into a credited network buffer. A response for a channel that is gone is skipped and
answered with CancelPartitionRequest.

Sending is tiny: PartitionRequest, AddCredit (coalesced per channel: many recycled
buffers, one message), ResumeConsumption, CancelPartitionRequest, CloseRequest. Task
threads ask for them through thread-safe methods that hop onto the loop, except for
AddCredit: a task thread that frees credit while the connection is idle writes the
AddCredit itself (``DirectWriter``), so the credit leaves at once instead of when the
network thread next gets the GIL, which on a busy TaskManager can be after the task
has read everything it had.

A lost connection fails every channel on it with ``RemoteTransportError`` naming the
remote address; an ErrorResponse fails one channel (or, if fatal, all of them) with
the remote error as the cause.
"""

from __future__ import annotations

import asyncio
import logging
import os
import ssl
import threading
import time
from typing import Final

from penstock.buffer.buffer import DataType
from penstock.consumer.remote_channel import ConnectionID, RemoteInputChannel
from penstock.errors import (
    PenstockError,
    RemoteProtocolError,
    RemoteTransportError,
)
from penstock.ids import InputChannelID
from penstock.transport.codec import NEED_DATA, FrameDecoder, encode
from penstock.transport.direct import DirectWriter
from penstock.transport.loop import EventLoopThread, close_connections
from penstock.transport.messages import (
    AddCredit,
    BacklogAnnouncement,
    BufferResponse,
    CancelPartitionRequest,
    CloseRequest,
    ErrorResponse,
    Message,
    PartitionRequest,
    ResumeConsumption,
)

__all__ = ["ConnectionManager", "NettyPartitionRequestClient"]

log = logging.getLogger(__name__)

_PARTITION_NOT_FOUND: Final = "penstock.errors.PartitionNotFoundError"


_RECEIVE_CHUNK: Final = 256 * 1024
"""Bytes read at once between payloads: several frames per read, not three reads each."""


_QUIET_S: Final = 0.0005
"""A connection silent this long before a read that brings one buffer carries lone
buffers, not a stream.

After such a read has delivered its buffer, the network thread gives its CPU up once
(``sched_yield``) before it goes on with its own work. The consuming task, just woken,
then reads the buffer at once, instead of after the network thread's remaining work
for that buffer (borrowing a floating buffer and sending its AddCredit, a system call
that takes tens of microseconds): on a TaskManager whose threads share one CPU that
took about a third off the median latency at 1000 records/s. A stream is left alone
(a read after a pause in a stream brings several buffers): there the network thread
batching its work matters more than any one buffer.
"""


def _give_way() -> None:
    """Lets another runnable thread of this CPU run first (releases the GIL meanwhile)."""
    if hasattr(os, "sched_yield"):
        os.sched_yield()


class _ClientProtocol(asyncio.BufferedProtocol):
    """Decodes responses into channel buffers; runs on the loop thread only.

    Between payloads the socket is read in large chunks into a scratch area and fed to
    the decoder, which copies any payload bytes among them into the channel's segment
    (as Netty's decoder copies from its receive buffer in Flink). While the decoder
    waits for the rest of a payload, the socket is read straight into the segment.
    One read then brings several frames, instead of three reads per buffer (frame
    header, buffer header, payload), each costing a turn of the event loop.
    """

    def __init__(self, client: NettyPartitionRequestClient, max_buffer_size: int) -> None:
        self._client = client
        self._decoder = FrameDecoder(max_buffer_size, allocate=self._allocate)
        self._scratch = memoryview(bytearray(_RECEIVE_CHUNK))
        self._direct = False
        self.transport: asyncio.Transport | None = None
        self.lost: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._closing = False
        self._last_read = 0.0
        # The channel whose segment the payload in progress is read into. It is handed
        # the response even if released meanwhile, so that the segment goes back.
        self._receiving: RemoteInputChannel | None = None

    # -- asyncio.BufferedProtocol ----------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def get_buffer(self, sizehint: int) -> memoryview:
        decoder = self._decoder
        self._direct = decoder.in_payload
        return decoder.get_buffer(sizehint) if self._direct else self._scratch

    def buffer_updated(self, nbytes: int) -> None:
        now = time.monotonic()
        quiet = now - self._last_read >= _QUIET_S
        self._last_read = now
        delivered = 0
        try:
            if self._direct:
                self._decoder.buffer_updated(nbytes)
            else:
                self._decoder.feed(self._scratch[:nbytes])
            while (message := self._decoder.next_message()) is not NEED_DATA:
                if self._dispatch(message):
                    delivered += 1
            if quiet and delivered == 1:
                _give_way()
        except RemoteProtocolError as exc:
            self._client.fail(
                RemoteTransportError(
                    f"Received a corrupt message from remote task manager "
                    f"'{self._client.address}': {exc}",
                    self._client.address,
                ),
                cause=exc,
            )

    def eof_received(self) -> bool:
        return False  # close the transport; connection_lost reports it

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.lost.done():
            self.lost.set_result(None)
        receiving, self._receiving = self._receiving, None
        if receiving is not None:
            receiving.abandon_payload()
        self._client.on_connection_lost(exc)

    # -- dispatch --------------------------------------------------------------------

    def _allocate(
        self, receiver_id: InputChannelID, size: int, data_type: DataType
    ) -> memoryview | None:
        channel = self._client.channels.get(receiver_id)
        if channel is None:
            return None
        region = channel.allocate(size, data_type)
        if region is not None:
            self._receiving = channel
        return region

    def _dispatch(self, message: Message) -> bool:
        """Hands ``message`` on; True if it was a buffer and reached its channel."""
        client = self._client
        if isinstance(message, BufferResponse):
            receiving, self._receiving = self._receiving, None
            if receiving is not None and not receiving.is_released:
                # Received into this channel's segment: it is the receiver, still open.
                receiving.on_buffer_response(message)
                return True
            channel = client.channels.get(message.receiver_id)
            if channel is None:
                # The channel was released while the buffer was on its way. If the
                # payload was read into its segment, the channel takes it back.
                if receiving is not None:
                    receiving.on_buffer_response(message)
                client.send(CancelPartitionRequest(message.receiver_id))
                return False
            channel.on_buffer_response(message)
            return True
        elif isinstance(message, ErrorResponse):
            client.on_error_response(message)
        elif isinstance(message, BacklogAnnouncement):
            channel = client.channels.get(message.receiver_id)
            if channel is not None:
                channel.on_sender_backlog(message.backlog)
        else:
            msg = f"unexpected {type(message).__name__} from a data server"
            raise RemoteProtocolError(msg)
        return False


class NettyPartitionRequestClient:
    """One connection to one remote TaskManager, shared by all channels reading from it.

    Flink's name is kept: this is what its NettyPartitionRequestClient does, on asyncio.
    """

    def __init__(
        self,
        manager: ConnectionManager,
        connection_id: ConnectionID,
        loop_thread: EventLoopThread,
    ) -> None:
        self.manager = manager
        self.connection_id = connection_id
        self.address = f"{connection_id[0]}:{connection_id[1]}"
        self._loop_thread = loop_thread
        self.channels: dict[InputChannelID, RemoteInputChannel] = {}
        self._protocol: _ClientProtocol | None = None
        self._write_lock = threading.RLock()
        self._writer: DirectWriter | None = None
        self._users = 0
        self._users_lock = threading.Lock()
        self._closed = False
        self._error: BaseException | None = None

    # -- connecting (loop thread) ----------------------------------------------------

    async def connect(self, ssl_context: ssl.SSLContext | None, timeout_s: float) -> None:
        loop = asyncio.get_running_loop()
        host, port = self.connection_id
        try:
            async with asyncio.timeout(timeout_s if timeout_s > 0 else None):
                _, protocol = await loop.create_connection(
                    lambda: _ClientProtocol(self, self.manager.max_buffer_size),
                    host,
                    port,
                    ssl=ssl_context,
                    ssl_handshake_timeout=(
                        self.manager.ssl_handshake_timeout_s if ssl_context else None
                    ),
                )
        except (OSError, TimeoutError, ssl.SSLError) as exc:
            msg = (
                f"Connecting to remote task manager '{self.address}' has failed. This might "
                "indicate that the remote task manager has been lost."
            )
            raise RemoteTransportError(msg, self.address) from exc
        self._protocol = protocol
        assert protocol.transport is not None
        self._writer = DirectWriter.for_transport(
            protocol.transport, self._loop_thread, self._write_lock
        )

    # -- thread-safe API for channels ------------------------------------------------

    def acquire(self) -> None:
        with self._users_lock:
            self._users += 1

    def request_subpartition(self, channel: RemoteInputChannel, delay_ms: int = 0) -> None:
        if delay_ms > 0:
            self._loop_thread.call_soon(
                self._loop_thread.loop.call_later,
                delay_ms / 1000,
                self._send_partition_request,
                channel,
            )
        else:
            self._loop_thread.call_soon(self._send_partition_request, channel)

    def notify_credit_available(self, channel: RemoteInputChannel) -> None:
        """Sends the channel's unannounced credit: directly if idle, else from the loop."""
        writer = self._writer
        if (
            writer is not None
            and not self._loop_thread.is_loop_thread
            and self._write_lock.acquire(blocking=False)
        ):
            try:
                if writer.is_idle:
                    self._announce_credit(channel)
                    return
            finally:
                self._write_lock.release()
        self._loop_thread.call_soon(self._announce_credit, channel)

    def resume_consumption(self, channel: RemoteInputChannel) -> None:
        self._loop_thread.call_soon(self.send, ResumeConsumption(channel.id))

    def close_channel(self, channel: RemoteInputChannel) -> None:
        """The channel is done: cancel its request and drop the connection if unused."""
        self._loop_thread.call_soon(self._close_channel, channel)

    # -- loop thread -------------------------------------------------------------------

    def send(self, message: Message) -> None:
        """Writes ``message`` (the loop thread, or a thread holding the write lock)."""
        protocol = self._protocol
        if protocol is None or protocol.transport is None or self._closed:
            return
        if protocol.transport.is_closing():
            return
        with self._write_lock:
            if self._writer is not None:
                self._writer.write(encode(message))
            else:
                protocol.transport.write(encode(message))

    def _send_partition_request(self, channel: RemoteInputChannel) -> None:
        if channel.is_released:
            return
        if self._error is not None:
            channel.on_error(self._error)
            return
        if self._closed:
            msg = f"The connection to '{self.address}' was closed before the request."
            channel.on_error(RemoteTransportError(msg, self.address))
            return
        self.channels[channel.id] = channel
        self.send(
            PartitionRequest(
                channel.partition_id,
                channel.subpartition_index,
                channel.subpartition_index,
                channel.id,
                channel.initial_credit,
            )
        )

    def _announce_credit(self, channel: RemoteInputChannel) -> None:
        if channel.id not in self.channels:
            return
        credit = channel.get_and_reset_unannounced_credit()
        if credit > 0:
            self.send(AddCredit(credit, channel.id))

    def _close_channel(self, channel: RemoteInputChannel) -> None:
        if self.channels.pop(channel.id, None) is not None:
            self.send(CancelPartitionRequest(channel.id))
        with self._users_lock:
            self._users -= 1
            last = self._users <= 0
        if last:
            self.manager.forget(self)
            self.close()

    def on_error_response(self, response: ErrorResponse) -> None:
        remote = response.to_exception()
        if response.receiver_id is None:
            msg = f"Fatal error at remote task manager '{self.address}'."
            self.fail(RemoteTransportError(msg, self.address), cause=remote)
            return
        channel = self.channels.get(response.receiver_id)
        if channel is None:
            return
        if response.type_name == _PARTITION_NOT_FOUND:
            self.channels.pop(channel.id, None)
            channel.on_failed_partition_request()
            return
        error = RemoteTransportError(
            f"Error at remote task manager '{self.address}'.", self.address
        )
        error.__cause__ = remote
        channel.on_error(error)

    def fail(self, error: PenstockError, cause: BaseException | None = None) -> None:
        """Fails every channel on this connection and closes it (first error wins)."""
        if cause is not None and error.__cause__ is None:
            error.__cause__ = cause
        if self._error is None:
            self._error = error
        channels = list(self.channels.values())
        self.channels.clear()
        for channel in channels:
            channel.on_error(self._error)
        self.manager.forget(self)
        self.close()

    def on_connection_lost(self, exc: Exception | None) -> None:
        if self._writer is not None:
            self._writer.close()
        if self._closed:
            return
        msg = (
            f"Connection unexpectedly closed by remote task manager '{self.address}'. "
            "This might indicate that the remote task manager was lost."
        )
        self.fail(RemoteTransportError(msg, self.address), cause=exc)

    def close(self) -> None:
        """Sends CloseRequest and closes the connection (loop thread, idempotent).

        Channels still on it (the TaskManager's network stack shuts down under a task
        still reading) fail with ``RemoteTransportError``: no more data comes to them.
        """
        if self._closed:
            return
        self.send(CloseRequest())
        self._closed = True
        channels = list(self.channels.values())
        self.channels.clear()
        if channels:
            msg = f"The connection to remote task manager '{self.address}' was closed here."
            error = RemoteTransportError(msg, self.address)
            for channel in channels:
                channel.on_error(error)
        protocol = self._protocol
        if protocol is not None and protocol.transport is not None:
            protocol.transport.close()

    @property
    def connection(self) -> tuple[asyncio.Transport, asyncio.Future[None]] | None:
        """The transport and its "lost" future, once connected."""
        protocol = self._protocol
        if protocol is None or protocol.transport is None:
            return None
        return protocol.transport, protocol.lost

    def __repr__(self) -> str:
        return f"NettyPartitionRequestClient({self.address}, channels={len(self.channels)})"


class ConnectionManager:
    """Hands out the shared connection to each remote TaskManager.

    Args:
        loop_thread: The TaskManager's network loop.
        max_buffer_size: The segment size: the largest payload a response may carry.
        ssl_context: Client-side TLS context (mutual authentication), or None.
        ssl_handshake_timeout_s: How long a TLS handshake may take
            (``security.ssl.internal.handshake-timeout``).
        connect_timeout_s: ``taskmanager.network.netty.client.connectTimeoutSec``: the
            limit of one attempt; 0 sets none.
        retries: ``taskmanager.network.retries``: attempts after a first that failed.
    """

    def __init__(
        self,
        loop_thread: EventLoopThread,
        max_buffer_size: int,
        ssl_context: ssl.SSLContext | None = None,
        ssl_handshake_timeout_s: float = 10.0,
        connect_timeout_s: float = 120.0,
        retries: int = 0,
    ) -> None:
        self.loop_thread = loop_thread
        self.max_buffer_size = max_buffer_size
        self.ssl_context = ssl_context
        self.ssl_handshake_timeout_s = ssl_handshake_timeout_s
        self.connect_timeout_s = connect_timeout_s
        self.retries = retries
        self._clients: dict[ConnectionID, asyncio.Future[NettyPartitionRequestClient]] = {}
        self._closing: set[NettyPartitionRequestClient] = set()
        """Forgotten clients whose connection is still closing (a TLS shutdown can wait on
        the peer): ``close()`` waits for them too, and aborts them when they are late."""
        self._closed = False

    def create_partition_request_client(self, address: ConnectionID) -> NettyPartitionRequestClient:
        """The connection to ``address``, connecting first if there is none (blocking).

        Raises:
            RemoteTransportError: The connection could not be made.
        """
        return self.loop_thread.run(self._get_or_connect(address))

    async def _get_or_connect(self, address: ConnectionID) -> NettyPartitionRequestClient:
        if self._closed:
            msg = "the connection manager is shut down"
            raise RemoteTransportError(msg, f"{address[0]}:{address[1]}")
        future = self._clients.get(address)
        if future is None:
            future = asyncio.get_running_loop().create_future()
            self._clients[address] = future
            client = NettyPartitionRequestClient(self, address, self.loop_thread)
            try:
                await self._connect(client)
                if self._closed:
                    # close() ran while this connect was under way and did not see it.
                    await self._discard(client)
                    msg = "the connection manager was shut down while connecting"
                    raise RemoteTransportError(msg, f"{address[0]}:{address[1]}")
            except BaseException as exc:
                if self._clients.get(address) is future:  # close() may have cleared it
                    del self._clients[address]
                future.set_exception(exc)
                future.exception()  # retrieved: concurrent waiters re-raise it themselves
                raise
            future.set_result(client)
        client = await asyncio.shield(future)
        # Acquired on the loop thread, before any other loop callback can close the
        # connection for want of users.
        client.acquire()
        return client

    async def _connect(self, client: NettyPartitionRequestClient) -> None:
        """Connects ``client``, trying again up to ``retries`` times, as Flink does."""
        for attempt in range(self.retries + 1):
            try:
                await client.connect(self.ssl_context, self.connect_timeout_s)
                return
            except RemoteTransportError as exc:
                if attempt == self.retries or self._closed:
                    raise
                log.warning(
                    "Failed %d time(s) to connect to %s (%s); trying again",
                    attempt + 1,
                    client.address,
                    exc.__cause__ or exc,
                )

    @staticmethod
    async def _discard(client: NettyPartitionRequestClient) -> None:
        """Closes a connection nobody will use, and waits until it is closed."""
        client.close()
        if (connection := client.connection) is not None:
            await close_connections([connection])

    def forget(self, client: NettyPartitionRequestClient) -> None:
        """Drops a closed or failed connection so the next request reconnects."""
        future = self._clients.get(client.connection_id)
        if (
            future is not None
            and future.done()
            and not future.cancelled()
            and future.exception() is None
            and future.result() is client
        ):
            del self._clients[client.connection_id]
        connection = client.connection
        if connection is not None and not connection[1].done():
            self._closing.add(client)
            connection[1].add_done_callback(lambda _: self._closing.discard(client))

    @property
    def number_of_connections(self) -> int:
        return len(self._clients)

    async def close(self) -> None:
        """Closes every connection (loop thread) and waits until each is closed."""
        self._closed = True
        clients = [
            future.result()
            for future in self._clients.values()
            if future.done() and not future.cancelled() and future.exception() is None
        ]
        clients += self._closing
        self._clients.clear()
        self._closing.clear()
        connections = []
        for client in clients:
            client.close()
            if (connection := client.connection) is not None:
                connections.append(connection)
        await close_connections(connections)
