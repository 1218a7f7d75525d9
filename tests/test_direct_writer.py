"""DirectWriter: writes from any thread, in order, without waiting for the loop."""

from __future__ import annotations

import asyncio
import errno
import os
import socket
import struct
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Final

import pytest

from loop_helpers import busy_loop
from penstock.transport.direct import DirectWriter
from penstock.transport.loop import EventLoopThread

pytestmark = pytest.mark.integration

TIMEOUT_S: Final = 10.0
HOLD_S: Final = 30.0
"""How long a test may keep the loop busy: well past any wait that expects bytes."""
RECEIVE_S: Final = 5.0
"""How long a test waits for bytes that must not need the loop."""
_CHUNK: Final = struct.Struct(">II")  # chunk number, length of what follows


class _Protocol(asyncio.Protocol):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport


@dataclass
class Connection:
    loop_thread: EventLoopThread
    transport: asyncio.Transport
    writer: DirectWriter
    peer: socket.socket

    def on_loop(self, action: object) -> None:
        """Runs ``action()`` on the loop thread and waits for it."""

        async def run() -> None:
            action()  # type: ignore[operator]

        self.loop_thread.run(run(), timeout=TIMEOUT_S)

    def receive(self, size: int, timeout_s: float = TIMEOUT_S) -> bytes:
        self.peer.settimeout(timeout_s)
        data = bytearray()
        while len(data) < size:
            chunk = self.peer.recv(min(1 << 20, size - len(data)))
            assert chunk, "the connection closed early"
            data += chunk
        return bytes(data)


@pytest.fixture
def connection() -> Iterator[Connection]:
    listener = socket.create_server(("127.0.0.1", 0))
    loop_thread = EventLoopThread("direct-writer-test").start()

    async def connect() -> asyncio.Transport:
        loop = asyncio.get_running_loop()
        transport, _ = await loop.create_connection(
            _Protocol, "127.0.0.1", listener.getsockname()[1]
        )
        return transport

    transport = loop_thread.run(connect(), timeout=TIMEOUT_S)
    peer, _ = listener.accept()
    listener.close()
    writer = DirectWriter.for_transport(transport, loop_thread, threading.RLock())
    assert writer is not None
    yield Connection(loop_thread, transport, writer, peer)

    async def close() -> None:
        writer.close()
        transport.abort()

    loop_thread.run(close(), timeout=TIMEOUT_S)
    loop_thread.stop()
    peer.close()


def _chunk(number: int, size: int) -> bytes:
    return _CHUNK.pack(number, size) + bytes([number % 251]) * size


def test_a_write_off_the_loop_needs_no_loop(connection: Connection) -> None:
    """While the loop is busy, an idle connection's bytes still go out at once."""
    # The loop stays held far longer than the peer waits, and is released on the way out.
    with busy_loop(connection.loop_thread, HOLD_S):
        with connection.writer.lock:
            assert connection.writer.is_idle
            connection.writer.write([b"head:", memoryview(b"payload")])
        assert connection.receive(12, RECEIVE_S) == b"head:payload"


def test_a_write_on_the_loop_sends_the_parts_without_joining_them(
    connection: Connection, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An idle connection's frames go out from their own memory, not through a copy."""
    joined: list[object] = []
    monkeypatch.setattr(connection.transport, "write", joined.append, raising=False)
    payload = bytearray(b"x" * 4000)  # well within any socket's send buffer

    def write() -> None:
        with connection.writer.lock:
            assert connection.writer.is_idle
            connection.writer.write([b"head:", memoryview(payload)])

    connection.on_loop(write)
    assert joined == []
    assert connection.receive(4005) == b"head:" + bytes(payload)


@pytest.mark.parametrize("on_loop", [False, True], ids=["off-loop", "on-loop"])
def test_a_write_of_more_parts_than_one_sendmsg_takes_arrives_whole(
    connection: Connection, on_loop: bool
) -> None:
    """A batch of thousands of tiny frames is joined instead of failing ``sendmsg``."""
    parts = [_chunk(number, 3) for number in range(3000)]

    def write() -> None:
        with connection.writer.lock:
            connection.writer.write(parts)

    if on_loop:
        connection.on_loop(write)
    else:
        write()
    expected = b"".join(parts)
    assert connection.receive(len(expected)) == expected


def test_writes_from_threads_and_the_loop_arrive_in_the_order_written(
    connection: Connection,
) -> None:
    """The socket fills up: the rest waits for the loop, and later writes queue behind it."""
    writer = connection.writer
    expected = bytearray()
    sizes = [32 << 20, 100, 3000, 1 << 20, 7]  # the first alone overflows the socket

    def write(data: bytes) -> None:
        with writer.lock:
            writer.write(data)

    for number, size in enumerate(sizes):
        data = _chunk(number, size)
        expected += data
        if number % 2:
            connection.on_loop(lambda data=data: write(data))  # every other one on the loop
        else:
            write(data)
        assert not writer.is_idle  # the peer reads nothing yet
    assert connection.receive(len(expected)) == bytes(expected)


def test_a_closed_writer_drops_writes_and_its_descriptor(connection: Connection) -> None:
    writer = connection.writer
    connection.on_loop(writer.close)
    assert writer.is_closed
    assert not writer.is_idle
    with writer.lock:
        writer.write(b"dropped")  # no error: the connection is gone
    connection.on_loop(lambda: connection.transport.write(b"still open"))
    assert connection.receive(10) == b"still open"  # the transport's own socket lives on


def test_a_tls_transport_gets_no_writer() -> None:
    class _Transport(asyncio.Transport):
        def get_extra_info(self, name: str, default: object = None) -> object:
            return object() if name in ("sslcontext", "socket") else default

    loop_thread = EventLoopThread("unused")
    try:
        assert DirectWriter.for_transport(_Transport(), loop_thread, threading.RLock()) is None
    finally:
        loop_thread.stop()


def test_no_descriptor_left_means_no_direct_writer(
    connection: Connection, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Out of file descriptors, the connection writes through its loop, as TLS does."""

    def no_descriptor_left(fd: int) -> int:
        raise OSError(errno.EMFILE, "Too many open files")

    monkeypatch.setattr(os, "dup", no_descriptor_left)
    assert (
        DirectWriter.for_transport(connection.transport, connection.loop_thread, threading.RLock())
        is None
    )
