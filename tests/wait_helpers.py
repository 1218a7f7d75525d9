"""Knowing that another thread is about to wait, so a test can wake it only then.

A wake-up test that fires its event right after starting the waiter usually fires it
first: the waiter then finds the event already there and never waits, and the wake-up
path goes untested. These helpers wrap the point where a waiter commits to waiting and
count each arrival, so the test fires only once every waiter is there.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import Future

import pytest

WAIT_S = 10.0
"""How long a thread may take to reach its wait: far longer than it ever should."""


class Waiters:
    """Counts the threads that reached a wait point."""

    def __init__(self) -> None:
        self._condition = threading.Condition()
        self._arrived = 0

    def arrive(self) -> None:
        with self._condition:
            self._arrived += 1
            self._condition.notify_all()

    def wait_for(self, count: int = 1, timeout: float = WAIT_S) -> bool:
        """Whether ``count`` threads arrived within ``timeout`` seconds."""
        with self._condition:
            return self._condition.wait_for(lambda: self._arrived >= count, timeout)


def signal_on_pending_future(
    monkeypatch: pytest.MonkeyPatch, owner: object, name: str = "get_available_future"
) -> Waiters:
    """Counts calls of ``owner.name()`` that return a future not done yet.

    A caller that got a pending availability future waits on it, so from then on only
    completing that future can let it go on; firing the event after ``wait_for`` tests
    exactly that completion.
    """
    real: Callable[[], Future[None]] = getattr(owner, name)
    waiters = Waiters()

    def fetch() -> Future[None]:
        future = real()
        if not future.done():
            waiters.arrive()
        return future

    monkeypatch.setattr(owner, name, fetch)
    return waiters


def signal_on_condition_wait(
    monkeypatch: pytest.MonkeyPatch, condition: threading.Condition
) -> Waiters:
    """Counts the threads that enter ``condition.wait``.

    A waiter arrives while it still holds the condition's lock, and ``wait`` releases
    the lock only once it waits, so a notifier that takes the lock after ``wait_for``
    returned notifies a thread that is really waiting.
    """
    real = condition.wait
    waiters = Waiters()

    def wait(timeout: float | None = None) -> bool:
        waiters.arrive()
        return real(timeout)

    monkeypatch.setattr(condition, "wait", wait)
    return waiters
