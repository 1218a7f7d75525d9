"""The network thread's helpers: closing connections within a bounded time."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Iterator

import pytest

from penstock.transport.loop import close_connections


class _Recorder(asyncio.Protocol):
    def __init__(self) -> None:
        self.lost: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.lost.done():
            self.lost.set_result(None)


async def _connect(port: int) -> tuple[asyncio.Transport, _Recorder]:
    loop = asyncio.get_running_loop()
    transport, protocol = await loop.create_connection(_Recorder, "127.0.0.1", port)
    return transport, protocol


@pytest.fixture
def silent_peer() -> Iterator[socket.socket]:
    """A listening socket that accepts (in the kernel's backlog) and never reads."""
    listener = socket.create_server(("127.0.0.1", 0))
    yield listener
    listener.close()


def test_connection_with_nothing_pending_closes_at_once(silent_peer: socket.socket) -> None:
    async def scenario() -> None:
        transport, protocol = await _connect(silent_peer.getsockname()[1])
        await close_connections([(transport, protocol.lost)], grace_s=10.0)
        assert protocol.lost.done()

    asyncio.run(asyncio.wait_for(scenario(), 5.0))


def test_connection_whose_peer_reads_nothing_is_aborted_after_the_grace(
    silent_peer: socket.socket,
) -> None:
    """Unsent bytes would keep the transport closing forever; the socket would then
    outlive its loop (a ResourceWarning, an error in this suite)."""

    async def scenario() -> None:
        transport, protocol = await _connect(silent_peer.getsockname()[1])
        transport.write(b"x" * (64 * 1024 * 1024))  # far beyond the socket buffers
        assert transport.get_write_buffer_size() > 0
        await close_connections([(transport, protocol.lost)], grace_s=0.05)
        assert protocol.lost.done()

    asyncio.run(asyncio.wait_for(scenario(), 5.0))


def test_nothing_to_close() -> None:
    asyncio.run(close_connections([]))
