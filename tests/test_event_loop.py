"""The network thread's helpers: closing connections within a bounded time."""

from __future__ import annotations

import asyncio
import socket
import threading
from collections.abc import Iterator

import pytest

from penstock.errors import IllegalStateError
from penstock.transport.loop import EventLoopThread, close_connections


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


# -- EventLoopThread.run ----------------------------------------------------------------------


async def _answer() -> int:
    return 42


@pytest.fixture
def loop_thread() -> Iterator[EventLoopThread]:
    thread = EventLoopThread("run-test").start()
    yield thread
    thread.stop()


def test_run_returns_what_the_coroutine_returns(loop_thread: EventLoopThread) -> None:
    assert loop_thread.run(_answer(), timeout=10) == 42


def test_run_passes_on_the_coroutines_own_timeout_error(loop_thread: EventLoopThread) -> None:
    async def gives_up() -> None:
        msg = "the coroutine's own"
        raise TimeoutError(msg)

    with pytest.raises(TimeoutError, match="the coroutine's own"):
        loop_thread.run(gives_up())


def test_run_gives_up_after_its_timeout(loop_thread: EventLoopThread) -> None:
    with pytest.raises(TimeoutError):
        loop_thread.run(asyncio.sleep(60), timeout=0.05)


def test_run_on_a_loop_that_stopped_under_it_raises_instead_of_waiting_forever() -> None:
    thread = EventLoopThread("stops-under-run").start()
    # The loop stops, as stop() makes it, after run() found it running: the coroutine
    # is scheduled on a loop that will never run it.
    thread.loop.call_soon_threadsafe(thread.loop.stop)
    thread._thread.join(10)
    outcome: list[object] = []

    def call() -> None:
        try:
            outcome.append(thread.run(_answer()))
        except IllegalStateError as exc:
            outcome.append(exc)

    caller = threading.Thread(target=call, daemon=True)
    caller.start()
    caller.join(10)
    assert not caller.is_alive(), "run() still waits for a loop that stopped"
    assert len(outcome) == 1 and isinstance(outcome[0], IllegalStateError)
    thread.stop()
