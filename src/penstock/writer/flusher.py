"""OutputFlusher: makes buffered output readable every ``execution.buffer-timeout``."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

__all__ = ["OutputFlusher"]

log = logging.getLogger(__name__)


class OutputFlusher:
    """A daemon thread that calls ``flush`` every ``timeout_ms`` until terminated.

    A failing flush stops the thread and hands the exception to ``on_error``; the writer
    raises it on its next emit, so the failure reaches the task instead of vanishing.

    Args:
        name: The thread's name ("OutputFlusher for <task>").
        timeout_ms: Milliseconds between flushes; must be positive.
        flush: Flushes every subpartition of the writer's partition.
        on_error: Receives the exception that stopped the flusher.
    """

    def __init__(
        self,
        name: str,
        timeout_ms: int,
        flush: Callable[[], None],
        on_error: Callable[[BaseException], None],
    ) -> None:
        if timeout_ms <= 0:
            msg = f"the output flusher needs a positive timeout, not {timeout_ms} ms"
            raise ValueError(msg)
        self.timeout_ms = timeout_ms
        self._flush = flush
        self._on_error = on_error
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def terminate(self) -> None:
        """Stops the thread and waits for it (a flush in progress completes first)."""
        self._stopped.set()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join()

    @property
    def is_alive(self) -> bool:
        return self._thread.is_alive()

    def _run(self) -> None:
        # Any positive long is a valid timeout, as in Flink; one longer than a thread
        # can wait at once (centuries) is cut to that.
        interval = min(self.timeout_ms / 1000, threading.TIMEOUT_MAX)
        while not self._stopped.wait(interval):
            try:
                self._flush()
            except BaseException as exc:  # handed to the task thread, not lost
                log.debug("%s failed", self._thread.name, exc_info=True)
                self._on_error(exc)
                return
