"""Availability futures: how anything on the data path says "wait until I can serve you".

Flink's idiom, kept as is: a component that may be unable to serve (a buffer pool with no
free segment, an input gate with no data, a writer whose pool is exhausted) exposes a
future that is *done* while it can serve and *pending* while it cannot. A caller never
polls in a loop: it checks ``is_available()`` and, when false, waits on the future (a
task thread blocks on ``future.result()``; the event loop wraps it with
``asyncio.wrap_future``; a mailbox registers a callback).

The futures are ``concurrent.futures.Future`` objects, so they work across threads and
with asyncio alike. ``AVAILABLE`` is one shared, already completed future.

Completing a future runs its callbacks in the completing thread, so components complete
their futures only after releasing their own locks (see
``AvailabilityHelper.get_unavailable_to_reset_available``).
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterable
from concurrent.futures import Future, InvalidStateError
from typing import Final

__all__ = [
    "AVAILABLE",
    "AvailabilityHelper",
    "any_of",
    "complete",
    "timer_future",
]


def _completed() -> Future[None]:
    future: Future[None] = Future()
    future.set_result(None)
    return future


AVAILABLE: Final[Future[None]] = _completed()
"""A future that is already done: "available now"."""


def complete(future: Future[None]) -> None:
    """Completes ``future`` unless it is already done (safe against racing completers)."""
    if not future.done():
        # Another thread may complete it between the check and the set.
        with contextlib.suppress(InvalidStateError):
            future.set_result(None)


def any_of(futures: Iterable[Future[None]]) -> Future[None]:
    """A future that completes as soon as any of ``futures`` is done (at once if one is)."""
    combined: Future[None] = Future()
    pending = list(futures)
    if not pending or any(f.done() for f in pending):
        combined.set_result(None)
        return combined

    def on_done(_: Future[None]) -> None:
        complete(combined)

    for future in pending:
        future.add_done_callback(on_done)
    return combined


def timer_future(seconds: float) -> tuple[Future[None], threading.Timer]:
    """A future completed after ``seconds`` by a timer thread; cancel the timer if unused."""
    future: Future[None] = Future()
    timer = threading.Timer(seconds, complete, args=(future,))
    timer.daemon = True
    timer.start()
    return future, timer


class AvailabilityHelper:
    """Holds the current availability future of one component.

    The owner calls ``reset_unavailable()`` when it can no longer serve, and
    ``get_unavailable_to_reset_available()`` (under its lock) followed by ``complete()``
    of the returned future (outside its lock) when it can serve again.
    """

    __slots__ = ("_future",)

    def __init__(self, available: bool = False) -> None:
        self._future: Future[None] = AVAILABLE if available else Future()

    def is_available(self) -> bool:
        future = self._future
        return future is AVAILABLE or future.done()  # done() takes the future's lock

    def get_available_future(self) -> Future[None]:
        return self._future

    def reset_unavailable(self) -> None:
        """Switches to a fresh pending future, unless one is already pending."""
        future = self._future
        if future is AVAILABLE or future.done():
            self._future = Future()

    def get_unavailable_to_reset_available(self) -> Future[None]:
        """Marks available and returns the future the caller must complete after unlocking."""
        future = self._future
        self._future = AVAILABLE
        return future

    def notify_available(self) -> None:
        """Marks available and completes the pending future, in the caller's thread."""
        complete(self.get_unavailable_to_reset_available())
