"""Holding a network thread busy, to show what happens without it."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator

from penstock.transport.loop import EventLoopThread


@contextlib.contextmanager
def busy_loop(loop_thread: EventLoopThread, timeout_s: float = 10.0) -> Iterator[None]:
    """Keeps ``loop_thread`` inside one callback for the duration of the block."""
    entered = threading.Event()
    release = threading.Event()

    def block() -> None:
        entered.set()
        release.wait(timeout_s)

    loop_thread.call_soon(block)
    assert entered.wait(timeout_s), "the loop never ran the blocking callback"
    try:
        yield
    finally:
        release.set()
