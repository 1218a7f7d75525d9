"""ConnectionManager: every connection it made is closed when it closes, even late ones."""

from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest

from penstock.transport.client import ConnectionManager, NettyPartitionRequestClient
from penstock.transport.loop import EventLoopThread


@pytest.fixture
def loop_thread() -> Iterator[EventLoopThread]:
    thread = EventLoopThread().start()
    yield thread
    thread.stop()


def test_closing_the_manager_ends_a_forgotten_connection_that_is_still_closing(
    loop_thread: EventLoopThread,
) -> None:
    with socket.create_server(("127.0.0.1", 0)) as listener:
        manager = ConnectionManager(loop_thread, 32 * 1024)
        host, port = listener.getsockname()[:2]
        client = manager.create_partition_request_client((host, port))
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
