"""DirectWriter: lets any thread write to a connection, in order, without a hop to the loop.

Theory of operation
-------------------
A connection's bytes normally go out on the network thread: a task thread that has a
buffer to send hands the work over with ``call_soon``, and the loop thread wakes up,
takes the GIL and writes. Each such hand-off costs tens of microseconds (a wake-up,
then a wait for the GIL), on the path of every record that a consumer is waiting for
(a buffer timeout of 0, a flush of a partly filled buffer).

A ``DirectWriter`` lets the thread that has the bytes send them itself while the
connection is idle: nothing waits in the transport's buffer and no earlier bytes are
still on their way to it. It owns a duplicate of the socket's descriptor (so the
socket stays valid for as long as it is used here) and a lock that orders every write
on the connection, whichever thread makes it:

* ``write(data)`` (holding ``lock``): if the connection is idle, ``sendmsg`` at once,
  on any thread, straight from the parts' memory (no joined copy of a batch of 32 KiB
  buffers). What the socket does not take, and anything written while earlier bytes
  still wait, goes to the transport: at once on the loop thread (after anything other
  threads queued), else queued for the loop to hand over (``call_soon``), since an
  asyncio transport is not thread-safe.
* ``close()`` (loop thread, from ``connection_lost``): later writes are dropped.

The owner takes ``lock`` around everything that decides what to write next (for the
data server: polling a reader and writing its buffer), so frames leave in the order
they were polled. Threads other than the loop's only ever *try* the lock and fall
back to the loop when it is taken: they never wait for it. TLS connections have no
``DirectWriter``: their bytes must pass through the SSL object on the loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import threading
from collections.abc import Sequence
from typing import Final

from penstock.transport.loop import EventLoopThread

__all__ = ["DirectWriter"]

log = logging.getLogger(__name__)

_MAX_PARTS: Final = os.sysconf("SC_IOV_MAX") if "SC_IOV_MAX" in os.sysconf_names else 1024
"""Parts one ``sendmsg`` takes; a write of more (a batch of many tiny frames) is joined."""


class DirectWriter:
    """Writes to one plain TCP connection from any thread, in the order of the writes.

    Args:
        transport: The connection's asyncio transport (not TLS).
        loop_thread: The loop that owns ``transport``.
        lock: The owner's lock that orders the connection's writes.
    """

    def __init__(
        self,
        transport: asyncio.Transport,
        loop_thread: EventLoopThread,
        lock: threading.RLock,
    ) -> None:
        extra = transport.get_extra_info("socket")
        self.lock = lock
        self._transport = transport
        self._loop_thread = loop_thread
        self._socket = socket.socket(fileno=os.dup(extra.fileno()))
        self._socket.setblocking(False)
        self._queued: list[bytes] = []
        self._closed = False

    @classmethod
    def for_transport(
        cls, transport: asyncio.Transport, loop_thread: EventLoopThread, lock: threading.RLock
    ) -> DirectWriter | None:
        """A writer for ``transport``, or None if it cannot have one.

        None for TLS, for a transport without a socket, and when the socket's
        descriptor cannot be duplicated (the process has none left): the connection's
        bytes then all go through its loop, which is slower but as correct.
        """
        if transport.get_extra_info("sslcontext") is not None:
            return None
        if transport.get_extra_info("socket") is None:
            return None
        try:
            return cls(transport, loop_thread, lock)
        except OSError as exc:
            log.warning("Writing through the network thread only: %s", exc)
            return None

    @property
    def is_idle(self) -> bool:
        """Nothing waits to be written: a write now goes straight to the socket."""
        return (
            not self._closed
            and not self._queued
            and self._transport.get_write_buffer_size() == 0
            and not self._transport.is_closing()
        )

    @property
    def is_closed(self) -> bool:
        return self._closed

    def write(self, data: bytes | Sequence[bytes | memoryview]) -> None:
        """Writes ``data`` (bytes, or parts written as one) after everything written before.

        The caller holds ``lock``. Parts are copied or sent before this returns, so
        their memory may be reused at once.
        """
        if self._closed or self._transport.is_closing():
            return
        on_loop = self._loop_thread.is_loop_thread
        if on_loop:
            self._drain()  # what other threads queued goes first
        parts = [data] if isinstance(data, bytes) else data
        if len(parts) <= _MAX_PARTS and self.is_idle:
            try:
                sent = self._socket.sendmsg(parts)
            except OSError:
                sent = 0  # full (or failed: the transport reports that when it writes)
            if sent == sum(map(len, parts)):
                return
            rest = b"".join(parts)[sent:]
        else:
            rest = b"".join(parts)
        if on_loop:
            self._transport.write(rest)
            return
        if not self._queued:
            self._loop_thread.call_soon(self._drain_locked)
        self._queued.append(rest)

    def close(self) -> None:
        """Drops what is still queued and closes the duplicate descriptor (loop thread)."""
        with self.lock:
            self._closed = True
            self._queued.clear()
            with contextlib.suppress(OSError):
                self._socket.close()

    def _drain_locked(self) -> None:
        with self.lock:
            self._drain()

    def _drain(self) -> None:
        if self._queued and not self._closed and not self._transport.is_closing():
            self._transport.write(b"".join(self._queued))
        self._queued.clear()
