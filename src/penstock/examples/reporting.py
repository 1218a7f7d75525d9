"""``ReportingSink``: a sink that sends a short report to the client at its end."""

from __future__ import annotations

import contextlib
from collections.abc import Callable

from penstock.errors import TaskCancelledError
from penstock.functions import SinkFunction
from penstock.task.operator import RuntimeContext

__all__ = ["ReportingSink"]


class ReportingSink(SinkFunction):
    """A sink that sends ``report()`` to the client when its input ends.

    Subclasses implement ``invoke`` and ``report``. Without a client to send to (no
    ``results_sink``), the report is dropped.
    """

    def __init__(self) -> None:
        self._results_sink: Callable[[list[object]], None] | None = None
        self.subtask_index = 0

    def open(self, runtime_context: RuntimeContext) -> None:
        """Remembers where to send the report."""
        self._results_sink = runtime_context.results_sink
        self.subtask_index = runtime_context.subtask_index

    def report(self) -> list[object]:
        """The records to send to the client at the end."""
        raise NotImplementedError

    def close(self) -> None:
        """Sends the report (close runs once per subtask, after its last record)."""
        send = self._results_sink
        if send is None:
            return
        records = self.report()
        if records:
            # A cancelled job has nobody waiting for the report.
            with contextlib.suppress(TaskCancelledError):
                send(records)
