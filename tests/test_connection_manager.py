"""The client side: connections closed with their manager, credit sent without a hop,
lone buffers handed to their reader at once, segments of released channels returned."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest

import penstock.transport.client as client_module
from loop_helpers import busy_loop
from penstock.buffer.buffer import DataType
from penstock.consumer.input_gate import SingleInputGate
from penstock.consumer.remote_channel import RemoteInputChannel
from penstock.errors import RemoteTransportError
from penstock.ids import InputChannelID, ResultPartitionID
from penstock.memory.network_pool import NetworkBufferPool
from penstock.transport.client import ConnectionManager, NettyPartitionRequestClient
from penstock.transport.codec import (
    NEED_DATA,
    FrameDecoder,
    encode,
    encode_buffer_response_header,
)
from penstock.transport.loop import EventLoopThread
from penstock.transport.messages import (
    AddCredit,
    BufferResponse,
    CancelPartitionRequest,
    CloseRequest,
    Message,
    PartitionRequest,
)


@pytest.fixture
def loop_thread() -> Iterator[EventLoopThread]:
    thread = EventLoopThread().start()
    yield thread
    thread.stop()


@contextlib.contextmanager
def connected_client(
    loop_thread: EventLoopThread,
) -> Iterator[tuple[socket.socket, ConnectionManager, NettyPartitionRequestClient]]:
    """A manager's client connected to a plain listening socket of this test."""
    with socket.create_server(("127.0.0.1", 0)) as listener:
        manager = ConnectionManager(loop_thread, 32 * 1024)
        host, port = listener.getsockname()[:2]
        yield listener, manager, manager.create_partition_request_client((host, port))


def test_closing_the_manager_ends_a_forgotten_connection_that_is_still_closing(
    loop_thread: EventLoopThread,
) -> None:
    with connected_client(loop_thread) as (_, manager, client):
        connection = client.connection
        assert connection is not None
        transport, lost = connection
        # A close the peer never completes, as a TLS shutdown whose close_notify is not
        # answered: the transport stays open after close().
        transport.close = lambda: None  # type: ignore[method-assign]

        async def drop_last_user(client: NettyPartitionRequestClient) -> None:
            manager.forget(client)
            client.close()

        loop_thread.run(drop_last_user(client))
        assert manager.number_of_connections == 0
        assert not lost.done()

        loop_thread.run(manager.close(), timeout=10)
        assert lost.done()  # aborted after the grace period, not left to the collector


class CreditChannel:
    """Stands in for a RemoteInputChannel with credit to announce."""

    def __init__(self, credit: int) -> None:
        self.id = InputChannelID.generate()
        self.credit = credit

    def get_and_reset_unannounced_credit(self) -> int:
        credit, self.credit = self.credit, 0
        return credit


def receive_message(peer: socket.socket, decoder: FrameDecoder, timeout_s: float = 10) -> Message:
    peer.settimeout(timeout_s)
    while (message := decoder.next_message()) is NEED_DATA:
        data = peer.recv(4096)
        assert data, "the connection ended before a whole message arrived"
        decoder.feed(data)
    return message


def test_a_task_thread_sends_credit_itself_while_the_network_thread_is_busy(
    loop_thread: EventLoopThread,
) -> None:
    with connected_client(loop_thread) as (listener, manager, client):
        peer, _ = listener.accept()
        decoder = FrameDecoder(32 * 1024)
        channel = CreditChannel(credit=3)
        client.channels[channel.id] = channel  # type: ignore[assignment]
        with peer:
            with busy_loop(loop_thread, timeout_s=30):
                client.notify_credit_available(channel)  # type: ignore[arg-type]
                # Arrives while the loop is still held: written by this thread.
                assert receive_message(peer, decoder, 5) == AddCredit(3, channel.id)
                assert channel.credit == 0
                channel.credit = 2
                client.notify_credit_available(channel)  # type: ignore[arg-type]
                assert receive_message(peer, decoder, 5) == AddCredit(2, channel.id)
            del client.channels[channel.id]
            loop_thread.run(manager.close(), timeout=10)
            assert receive_message(peer, decoder) == CloseRequest()  # through the loop


class ReceivingChannel:
    """Stands in for a RemoteInputChannel that receives data buffers."""

    def __init__(self) -> None:
        self.id = InputChannelID.generate()
        self.segment = memoryview(bytearray(64))
        self.received: list[int] = []
        self.is_released = False

    def allocate(self, size: int, data_type: DataType) -> memoryview:
        return self.segment[:size]

    def on_buffer_response(self, response: BufferResponse) -> None:
        self.received.append(response.sequence_number)


class ReceivingClient:
    address = "127.0.0.1:1"

    def __init__(self, channel: ReceivingChannel) -> None:
        self.channels = {channel.id: channel}


def test_a_lone_buffer_after_a_quiet_spell_gives_the_cpu_to_its_reader(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    channel = ReceivingChannel()
    frames = [
        encode(BufferResponse(channel.id, 0, seq, 0, DataType.DATA_BUFFER, False, 8, bytes(8)))
        for seq in range(5)
    ]
    # One buffer after silence, one right behind it, one after silence again, then two
    # in one read after silence (a stream that paused).
    reads = [(100.0, frames[0]), (100.0001, frames[1]), (100.01, frames[2])]
    reads.append((100.02, frames[3] + frames[4]))
    yields: list[float] = []
    clock = [0.0]
    monkeypatch.setattr(os, "sched_yield", lambda: yields.append(clock[0]))

    async def receive() -> None:
        protocol = client_module._ClientProtocol(ReceivingClient(channel), 64)  # type: ignore[arg-type]
        monkeypatch.setattr(time, "monotonic", lambda: clock[0])
        for at, data in reads:
            clock[0] = at
            view = protocol.get_buffer(-1)
            view[: len(data)] = data
            protocol.buffer_updated(len(data))
        monkeypatch.undo()

    asyncio.run(receive())
    assert channel.received == [0, 1, 2, 3, 4]
    assert yields == [100.0, 100.01]


# -- a channel released while its buffer arrives -----------------------------------------

SEGMENT_SIZE = 32 * 1024


def remote_channel(
    network: NetworkBufferPool, manager: ConnectionManager, address: tuple[str, int]
) -> RemoteInputChannel:
    """A remote channel with two exclusive buffers and no floating ones, requested."""
    gate = SingleInputGate(owner="consumer", buffer_pool=None)
    channel = RemoteInputChannel(
        gate, 0, ResultPartitionID.generate(), 0, address, manager, network, initial_credit=2
    )
    gate.set_channels([channel])
    channel.setup()
    gate.request_partitions()
    return channel


def wait_until(condition: Callable[[], bool], what: str, timeout_s: float = 10) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting until {what}"
        time.sleep(0.005)


def send_partial_buffer(
    peer: socket.socket, channel: RemoteInputChannel, size: int, sent: int
) -> None:
    header = encode_buffer_response_header(channel.id, 0, 0, 0, DataType.DATA_BUFFER, False, size)
    peer.sendall(header + bytes(sent))


@pytest.mark.parametrize("last_channel", [False, True], ids=["shared", "last"])
def test_a_channel_released_while_its_buffer_arrives_gets_the_segment_back(
    loop_thread: EventLoopThread, last_channel: bool
) -> None:
    # The payload is read into the channel's segment as it arrives. If the channel is
    # released in between, the segment must still come back: when the rest arrives on a
    # connection other channels use, or when the connection closes with the channel.
    network = NetworkBufferPool(16, SEGMENT_SIZE)
    decoder = FrameDecoder(SEGMENT_SIZE)
    with socket.create_server(("127.0.0.1", 0)) as listener, contextlib.ExitStack() as stack:
        address = listener.getsockname()[:2]
        manager = ConnectionManager(loop_thread, SEGMENT_SIZE)
        stack.callback(loop_thread.run, manager.close(), timeout=10)
        listener.settimeout(10)
        other = None
        if not last_channel:
            other = remote_channel(network, manager, address)
            stack.callback(other.release_all_resources)
        free_before = network.available_segments
        channel = remote_channel(network, manager, address)
        peer = stack.enter_context(listener.accept()[0])
        if other is not None:
            assert isinstance(receive_message(peer, decoder), PartitionRequest)
        assert isinstance(receive_message(peer, decoder), PartitionRequest)

        send_partial_buffer(peer, channel, size=20_000, sent=5_000)
        wait_until(lambda: channel.buffer_manager.available == 1, "a segment is filling")
        channel.release_all_resources()
        if other is not None:
            assert receive_message(peer, decoder) == CancelPartitionRequest(channel.id)
            peer.sendall(bytes(15_000))  # the rest of the payload, for nobody now
            assert receive_message(peer, decoder) == CancelPartitionRequest(channel.id)

        wait_until(
            lambda: network.available_segments == free_before,
            "both segments of the released channel are back in the network pool",
        )


# -- connecting -------------------------------------------------------------------------


def refusing_address() -> tuple[str, int]:
    """A loopback address where nothing listens (the port was free a moment ago)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        host, port = probe.getsockname()[:2]
    return host, port


@pytest.mark.parametrize("retries", [0, 2])
def test_a_failed_connect_is_tried_again_retries_times(
    loop_thread: EventLoopThread, retries: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    attempts: list[tuple[str, int]] = []
    connect = NettyPartitionRequestClient.connect

    async def counting_connect(
        client: NettyPartitionRequestClient, ssl_context: object, timeout_s: float
    ) -> None:
        attempts.append(client.connection_id)
        await connect(client, None, timeout_s)

    monkeypatch.setattr(NettyPartitionRequestClient, "connect", counting_connect)
    manager = ConnectionManager(loop_thread, 32 * 1024, retries=retries)
    address = refusing_address()
    with pytest.raises(RemoteTransportError, match="Connecting to remote task manager"):
        manager.create_partition_request_client(address)
    assert attempts == [address] * (retries + 1)
    assert manager.number_of_connections == 0
    loop_thread.run(manager.close(), timeout=10)


def test_a_connect_that_fails_once_succeeds_on_its_retry(
    loop_thread: EventLoopThread, monkeypatch: pytest.MonkeyPatch
) -> None:
    connect = NettyPartitionRequestClient.connect
    failures = [RemoteTransportError("refused", "here")]

    async def failing_once(
        client: NettyPartitionRequestClient, ssl_context: object, timeout_s: float
    ) -> None:
        if failures:
            raise failures.pop()
        await connect(client, None, timeout_s)

    monkeypatch.setattr(NettyPartitionRequestClient, "connect", failing_once)
    with socket.create_server(("127.0.0.1", 0)) as listener:
        manager = ConnectionManager(loop_thread, 32 * 1024, retries=1)
        client = manager.create_partition_request_client(listener.getsockname()[:2])
        assert client.connection is not None and not failures
        loop_thread.run(manager.close(), timeout=10)


def test_connect_timeout_zero_means_no_limit(loop_thread: EventLoopThread) -> None:
    with socket.create_server(("127.0.0.1", 0)) as listener:
        manager = ConnectionManager(loop_thread, 32 * 1024, connect_timeout_s=0)
        client = manager.create_partition_request_client(listener.getsockname()[:2])
        assert client.connection is not None
        loop_thread.run(manager.close(), timeout=10)


def held_connects(
    monkeypatch: pytest.MonkeyPatch, fail: bool
) -> tuple[threading.Event, threading.Event]:
    """Holds every connect until released; (entered, release). ``fail``: then refuse it."""
    connect = NettyPartitionRequestClient.connect
    entered, release = threading.Event(), threading.Event()

    async def held(
        client: NettyPartitionRequestClient, ssl_context: object, timeout_s: float
    ) -> None:
        entered.set()
        await asyncio.get_running_loop().run_in_executor(None, release.wait, 10)
        if fail:
            raise RemoteTransportError("refused", client.address)
        await connect(client, None, timeout_s)

    monkeypatch.setattr(NettyPartitionRequestClient, "connect", held)
    return entered, release


def test_a_connect_that_completes_after_close_is_closed_and_refused(
    loop_thread: EventLoopThread, monkeypatch: pytest.MonkeyPatch
) -> None:
    entered, release = held_connects(monkeypatch, fail=False)
    with socket.create_server(("127.0.0.1", 0)) as listener, ThreadPoolExecutor(1) as pool:
        manager = ConnectionManager(loop_thread, 32 * 1024)
        pending = pool.submit(manager.create_partition_request_client, listener.getsockname()[:2])
        assert entered.wait(10)
        loop_thread.run(manager.close(), timeout=10)  # the TaskManager shuts down
        release.set()
        with pytest.raises(RemoteTransportError, match="shut down while connecting"):
            pending.result(10)
        # Nobody owns the connection it made: it was closed, the peer sees the end.
        peer, _ = listener.accept()
        with peer:
            peer.settimeout(10)
            while peer.recv(4096):  # a CloseRequest, then the end of the stream
                pass
    assert manager.number_of_connections == 0


def test_a_connect_that_fails_after_close_raises_its_transport_error(
    loop_thread: EventLoopThread, monkeypatch: pytest.MonkeyPatch
) -> None:
    entered, release = held_connects(monkeypatch, fail=True)
    with ThreadPoolExecutor(1) as pool:
        manager = ConnectionManager(loop_thread, 32 * 1024)
        pending = pool.submit(manager.create_partition_request_client, refusing_address())
        assert entered.wait(10)
        loop_thread.run(manager.close(), timeout=10)
        release.set()
        with pytest.raises(RemoteTransportError, match="refused"):
            pending.result(10)


def test_closing_the_manager_fails_the_channels_still_reading(
    loop_thread: EventLoopThread,
) -> None:
    network = NetworkBufferPool(16, SEGMENT_SIZE)
    with socket.create_server(("127.0.0.1", 0)) as listener:
        address = listener.getsockname()[:2]
        manager = ConnectionManager(loop_thread, SEGMENT_SIZE)
        channel = remote_channel(network, manager, address)
        listener.settimeout(10)
        with listener.accept()[0]:
            loop_thread.run(manager.close(), timeout=10)  # the network stack shuts down
            with pytest.raises(RemoteTransportError, match="was closed here"):
                channel.get_next_buffer()
        channel.release_all_resources()
    assert network.available_segments == network.total_segments
