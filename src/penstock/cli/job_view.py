"""The live view of ``penstock run``: per-vertex throughput and backpressure of a job.

The JobManager sends a ``JobMetricsUpdate`` about once a second (see
``penstock.runtime.client.observe_jobs``): the latest metrics of every task, named as
Flink names them ("Map (1/2)"). ``VertexTracker`` folds the tasks of a vertex into one
row, as Flink's web UI does:

* records/s in and out: the change of ``numRecordsIn``/``numRecordsOut`` between two
  samples of a task over the time between them, summed over the subtasks;
* backpressure: the largest ``backPressuredTimeMsPerSecond / 1000`` of the subtasks,
  OK up to 10 %, LOW up to 50 %, HIGH above (``JobVertexBackPressureHandler``);
* busy: the largest ``busyTimeMsPerSecond / 1000``; buffer pools: the largest
  ``outPoolUsage`` and ``inPoolUsage``.

``JobView`` shows the rows: a rich table redrawn in place on a terminal, one plain line
per vertex and update otherwise, and a summary table when the job ends.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import TYPE_CHECKING, Final, Literal, TextIO

from penstock.cli._output import (
    Column,
    format_count,
    format_rate,
    is_terminal,
    print_table,
    rich_console,
)

if TYPE_CHECKING:
    from rich.live import Live
    from rich.table import Table

    from penstock.runtime.control import JobMetricsUpdate

__all__ = [
    "HIGH_RATIO",
    "OK_RATIO",
    "BackPressureLevel",
    "JobView",
    "VertexRow",
    "VertexTracker",
    "back_pressure_level",
    "vertex_name",
]

BackPressureLevel = Literal["OK", "LOW", "HIGH"]

OK_RATIO: Final = 0.10
"""Flink's web UI: backpressured at most 10 % of the time is OK."""

HIGH_RATIO: Final = 0.50
"""Flink's web UI: backpressured more than 50 % of the time is HIGH (up to it, LOW)."""

_LEVEL_ORDER: Final[Mapping[BackPressureLevel, int]] = {"OK": 0, "LOW": 1, "HIGH": 2}
_LEVEL_STYLES: Final[Mapping[BackPressureLevel, str]] = {
    "OK": "green",
    "LOW": "yellow",
    "HIGH": "bold red",
}
_SUBTASK_SUFFIX: Final = re.compile(r" \(\d+/\d+\)$")


def back_pressure_level(ratio: float) -> BackPressureLevel:
    """OK, LOW or HIGH for a backpressured ratio (0..1), as Flink's web UI classifies it."""
    if ratio <= OK_RATIO:
        return "OK"
    if ratio <= HIGH_RATIO:
        return "LOW"
    return "HIGH"


def vertex_name(task_name: str) -> str:
    """The vertex of a task: ``"Map -> Sink: Print (2/4)"`` → ``"Map -> Sink: Print"``."""
    return _SUBTASK_SUFFIX.sub("", task_name)


@dataclass(frozen=True, slots=True)
class VertexRow:
    """One vertex at one update.

    Attributes:
        name: The vertex name (task name without the subtask suffix).
        parallelism: Its subtasks.
        running: Subtasks in state RUNNING.
        records_in: Records its subtasks took in so far.
        records_out: Records its subtasks sent on so far.
        records_in_per_s: Recent records per second in, all subtasks.
        records_out_per_s: Recent records per second out, all subtasks.
        back_pressure: The largest backpressured ratio (0..1) of its subtasks.
        level: ``back_pressure`` classified.
        peak_level: The highest level seen so far.
        busy: The largest busy ratio (0..1) of its subtasks.
        out_pool_usage: The largest ``outPoolUsage``.
        in_pool_usage: The largest ``inPoolUsage``.
        back_pressured_ms: The largest ``accumulateBackPressuredTimeMs``.
    """

    name: str
    parallelism: int
    running: int
    records_in: float
    records_out: float
    records_in_per_s: float
    records_out_per_s: float
    back_pressure: float
    level: BackPressureLevel
    peak_level: BackPressureLevel
    busy: float
    out_pool_usage: float
    in_pool_usage: float
    back_pressured_ms: float


_ENDED_STATES: Final = frozenset({"FINISHED", "FAILED", "CANCELED"})


@dataclass(slots=True)
class _TaskSample:
    sampled_ms: int
    records_in: float
    records_out: float
    in_per_s: float = 0.0
    out_per_s: float = 0.0


@dataclass(slots=True)
class VertexTracker:
    """Folds the ``JobMetricsUpdate``s of one job into rows per vertex."""

    _samples: dict[str, _TaskSample] = field(default_factory=dict)
    _peaks: dict[str, BackPressureLevel] = field(default_factory=dict)

    def update(self, update: JobMetricsUpdate) -> list[VertexRow]:
        """The rows after ``update``, vertices in the job's order."""
        tasks: dict[str, list[str]] = {}
        for task_name in update.states:
            tasks.setdefault(vertex_name(task_name), []).append(task_name)
        return [self._row(name, names, update) for name, names in tasks.items()]

    def _rates(
        self, task_name: str, metrics: Mapping[str, float], sampled_ms: int, ended: bool
    ) -> _TaskSample:
        records_in = metrics.get("numRecordsIn", 0.0)
        records_out = metrics.get("numRecordsOut", 0.0)
        previous = self._samples.get(task_name)
        sample = _TaskSample(sampled_ms, records_in, records_out)
        if previous is not None:
            elapsed_s = (sampled_ms - previous.sampled_ms) / 1000
            if elapsed_s > 0:
                sample.in_per_s = max(0.0, records_in - previous.records_in) / elapsed_s
                sample.out_per_s = max(0.0, records_out - previous.records_out) / elapsed_s
            elif not ended:  # no new sample of this running task yet: keep its rates
                sample = previous
            # else: an ended task sends no more samples, and moves no more records
        self._samples[task_name] = sample
        return sample

    def _row(self, name: str, task_names: Sequence[str], update: JobMetricsUpdate) -> VertexRow:
        ended = [update.states.get(task) in _ENDED_STATES for task in task_names]
        samples = [
            self._rates(task, update.metrics.get(task, {}), update.sampled_ms.get(task, 0), end)
            for task, end in zip(task_names, ended, strict=True)
        ]
        metrics = [update.metrics.get(task, {}) for task in task_names]
        # The gauges of a vertex are those of its subtasks still running: one that ended
        # backpressured is not holding its vertex back any more. Once all have ended,
        # their last values stand.
        running = [m for m, end in zip(metrics, ended, strict=True) if not end] or metrics

        def largest(metric: str, of: Sequence[Mapping[str, float]] = running) -> float:
            return max((m.get(metric, 0.0) for m in of), default=0.0)

        back_pressure = min(1.0, largest("backPressuredTimeMsPerSecond") / 1000)
        level = back_pressure_level(back_pressure)
        peak = self._peaks.get(name, "OK")
        if _LEVEL_ORDER[level] > _LEVEL_ORDER[peak]:
            peak = level
        self._peaks[name] = peak
        return VertexRow(
            name=name,
            parallelism=len(task_names),
            running=sum(1 for task in task_names if update.states.get(task) == "RUNNING"),
            records_in=sum(sample.records_in for sample in samples),
            records_out=sum(sample.records_out for sample in samples),
            records_in_per_s=sum(sample.in_per_s for sample in samples),
            records_out_per_s=sum(sample.out_per_s for sample in samples),
            back_pressure=back_pressure,
            level=level,
            peak_level=peak,
            busy=min(1.0, largest("busyTimeMsPerSecond") / 1000),
            out_pool_usage=largest("outPoolUsage"),
            in_pool_usage=largest("inPoolUsage"),
            back_pressured_ms=largest("accumulateBackPressuredTimeMs", metrics),
        )


def job_outcome(states: Mapping[str, str]) -> str:
    """FINISHED, FAILED or CANCELED for the final states of a job's tasks."""
    values = set(states.values())
    if "FAILED" in values:
        return "FAILED"
    if values and values <= {"FINISHED"}:
        return "FINISHED"
    return "CANCELED"


# Short headers leave the vertex names most of an 80-column terminal.
_LIVE_COLUMNS: Final = (
    Column("vertex"),
    Column("tasks", numeric=True),
    Column("in/s", numeric=True),
    Column("out/s", numeric=True),
    Column("backpressure"),
    Column("busy", numeric=True),
    Column("outPool", numeric=True),
    Column("inPool", numeric=True),
)

_SUMMARY_COLUMNS: Final = (
    Column("vertex"),
    Column("tasks", numeric=True),
    Column("records in", numeric=True),
    Column("records out", numeric=True),
    Column("backpressure"),
    Column("backpressured", numeric=True),
)
"""The summary's columns: the peak level, and the largest accumulateBackPressuredTimeMs."""


def _live_cells(row: VertexRow) -> list[str]:
    return [
        row.name,
        f"{row.running}/{row.parallelism}",
        format_rate(row.records_in_per_s),
        format_rate(row.records_out_per_s),
        f"{row.level} {row.back_pressure:.0%}",
        f"{row.busy:.0%}",
        f"{row.out_pool_usage:.0%}",
        f"{row.in_pool_usage:.0%}",
    ]


def _summary_cells(row: VertexRow) -> list[str]:
    return [
        row.name,
        str(row.parallelism),
        format_count(row.records_in),
        format_count(row.records_out),
        row.peak_level,
        f"{row.back_pressured_ms / 1000:.1f} s",
    ]


class JobView:
    """Shows the jobs of a ``penstock run``: live while they run, a summary at the end.

    Pass ``on_update`` to ``observe_jobs``. A job's first update opens its live view;
    its final update closes it and prints the summary. Use it as a context manager, so
    that a view still open (after Ctrl-C) is closed.

    Args:
        stream: Where to write (stdout by default).
        live: Draw a rich table in place; default: whether ``stream`` is a terminal.
    """

    def __init__(self, stream: TextIO | None = None, live: bool | None = None) -> None:
        self._stream = sys.stdout if stream is None else stream
        self._live_mode = is_terminal(self._stream) if live is None else live
        self._live: Live | None = None
        self._job_id: object = None
        self._tracker = VertexTracker()
        self.rows: list[VertexRow] = []
        self.finished: list[tuple[JobMetricsUpdate, list[VertexRow]]] = []
        """Each ended job's final update and rows, in order."""
        self.peak_levels: dict[str, BackPressureLevel] = {}
        """The highest backpressure level each vertex reached, over all jobs."""

    def __enter__(self) -> JobView:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        """Closes a live view still open (after Ctrl-C or a failure); idempotent."""
        self._stop_live()

    def on_update(self, update: JobMetricsUpdate) -> None:
        """Shows one update (the observer ``observe_jobs`` calls)."""
        if update.job_id != self._job_id:
            self._stop_live()
            self._job_id = update.job_id
            self._tracker = VertexTracker()
            self._start(update)
        self.rows = self._tracker.update(update)
        for row in self.rows:
            previous = self.peak_levels.get(row.name, "OK")
            if _LEVEL_ORDER[row.peak_level] > _LEVEL_ORDER[previous]:
                self.peak_levels[row.name] = row.peak_level
            else:
                self.peak_levels.setdefault(row.name, previous)
        if update.final:
            self._stop_live()
            self._job_id = None
            self.finished.append((update, self.rows))
            self._print_summary(update, self.rows)
        elif self._live is not None:
            self._live.update(self._render(update), refresh=True)
        else:
            self._print_lines(update)

    def _start(self, update: JobMetricsUpdate) -> None:
        if update.final:
            return
        print(f"Job {update.job_name!r} ({update.job_id}) is running.", file=self._stream)
        if not self._live_mode:
            return
        from rich.live import Live

        self._live = Live(
            self._render(update),
            console=rich_console(self._stream),
            auto_refresh=False,
            transient=True,
        )
        self._live.start()

    def _stop_live(self) -> None:
        if self._live is not None:
            self._live.stop()
            self._live = None

    def _render(self, update: JobMetricsUpdate) -> Table:
        from rich import box
        from rich.markup import escape
        from rich.table import Table

        # Names are the user's: brackets in them are text, not markup.
        table = Table(
            title=f"{escape(update.job_name)}  {update.elapsed_ms / 1000:.0f} s",
            title_justify="left",
            box=box.SIMPLE_HEAD,
            pad_edge=False,
            collapse_padding=True,
        )
        for index, column in enumerate(_LIVE_COLUMNS):
            table.add_column(
                column.header,
                justify="right" if column.numeric else "left",
                no_wrap=index > 0,
                ratio=1 if index == 0 else None,
            )
        for row in self.rows:
            cells = [escape(cell) for cell in _live_cells(row)]
            cells[4] = f"[{_LEVEL_STYLES[row.level]}]{cells[4]}[/]"
            table.add_row(*cells)
        return table

    def _print_lines(self, update: JobMetricsUpdate) -> None:
        seconds = update.elapsed_ms / 1000
        for row in self.rows:
            print(
                f"t={seconds:5.1f}s {row.name} [{row.running}/{row.parallelism}]"
                f" in={format_rate(row.records_in_per_s)}/s"
                f" out={format_rate(row.records_out_per_s)}/s"
                f" backpressure={row.level} ({row.back_pressure:.0%})"
                f" busy={row.busy:.0%}"
                f" outPoolUsage={row.out_pool_usage:.0%}"
                f" inPoolUsage={row.in_pool_usage:.0%}",
                file=self._stream,
                flush=True,
            )

    def _print_summary(self, update: JobMetricsUpdate, rows: Sequence[VertexRow]) -> None:
        outcome = update.outcome or job_outcome(update.states)
        print_table(
            _SUMMARY_COLUMNS,
            [_summary_cells(row) for row in rows],
            title=(
                f"Job {update.job_name!r} ({update.job_id}) {outcome} "
                f"after {update.elapsed_ms / 1000:.1f} s"
            ),
            stream=self._stream,
        )
