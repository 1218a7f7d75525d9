"""``penstock run``: runs a job with a live view of throughput and backpressure.

Job files and ``--example`` need the runtime (JobManager, TaskManagers, the DataStream
API), which this version does not include; they are refused with exit status 2. Without
them, ``penstock run`` runs ``penstock.demo``: a keyed word count through the in-process
data plane, with a consumer that is throttled for part of the run so that backpressure
shows.

On a terminal the live view is a rich table redrawn every second; otherwise it is one
plain line per second, fit for logs and pipes.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections import deque
from collections.abc import Sequence
from types import TracebackType
from typing import TYPE_CHECKING, Final

from penstock.cli._args import SubParsers, usage_error
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

    from penstock.demo import DemoResult, DemoSnapshot

__all__ = ["EXIT_INTERRUPTED", "add_run_parser", "run_command"]

EXIT_INTERRUPTED: Final = 130
"""Exit status after Ctrl-C, as a shell reports a process ended by SIGINT."""

_NEEDS_RUNTIME: Final = (
    "{what} needs the penstock runtime (JobManager, TaskManagers and the DataStream API), "
    "which this version does not include yet. Run 'penstock run' without arguments for "
    "the built-in word count over the network stack."
)

# Rows the live table keeps: enough to see backpressure build up and clear.
_LIVE_ROWS: Final = 12

# Two-line headers keep the table within 80 columns.
_LIVE_COLUMNS: Final = (
    Column("t (s)", numeric=True),
    Column("records/s\nout", numeric=True),
    Column("records/s\nin", numeric=True),
    Column("outPool\nUsage", numeric=True),
    Column("output\nqueue", numeric=True),
    Column("back-\npressured", numeric=True),
    Column("consumer"),
)


def add_run_parser(subparsers: SubParsers) -> None:
    """Adds ``run [JOB.py | --example NAME] [-D key=value ...]``."""
    parser = subparsers.add_parser(
        "run",
        help="run a job (for now: the word-count demo) with a live view",
        description=(
            "Runs a job with a live view of throughput and backpressure. Without a job, "
            "runs a keyed word count through penstock's in-process data plane, with a "
            "consumer that is slower for part of the run."
        ),
    )
    source = parser.add_mutually_exclusive_group()
    source.add_argument("job", nargs="?", metavar="JOB.py", help="a job file (needs the runtime)")
    source.add_argument("--example", metavar="NAME", help="a bundled example (needs the runtime)")
    parser.add_argument(
        "-D",
        dest="dynamic",
        action="append",
        default=[],
        metavar="key=value",
        help="set a configuration key (repeatable), e.g. -D execution.buffer-timeout=10ms",
    )
    parser.set_defaults(handler=run_command)


def run_command(args: argparse.Namespace) -> int:
    """Runs ``penstock run`` as ``args`` asks; returns the exit status."""
    from penstock.config import Configuration
    from penstock.errors import ConfigurationError

    try:
        config = Configuration.from_dynamic_properties(args.dynamic)
    except ConfigurationError as exc:
        return usage_error("run", str(exc))
    if args.job is not None:
        return usage_error("run", _NEEDS_RUNTIME.format(what=f"Running the job file {args.job}"))
    if args.example is not None:
        return usage_error(
            "run", _NEEDS_RUNTIME.format(what=f"Running the example {args.example!r}")
        )

    from penstock import demo

    try:
        demo.pipeline_options(config)
    except ConfigurationError as exc:
        return usage_error("run", str(exc))
    live = is_terminal()
    view: _RichView | _PlainView = _RichView() if live else _PlainView()
    try:
        with view:
            result = demo.run_demo(config=config, clock=time.perf_counter, on_tick=view.update)
    except KeyboardInterrupt:
        print("penstock run: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    _print_summary(result)
    return 0


# -- the live view ---------------------------------------------------------------------


def _row(snapshot: DemoSnapshot) -> list[str]:
    return [
        f"{snapshot.elapsed_s:.0f}",
        format_rate(snapshot.records_out_per_s),
        format_rate(snapshot.records_in_per_s),
        f"{snapshot.out_pool_usage:.0%}",
        str(snapshot.output_queue_length),
        f"{snapshot.back_pressured_ratio:.0%} {snapshot.back_pressure}",
        _consumer_state(snapshot),
    ]


def _consumer_state(snapshot: DemoSnapshot) -> str:
    return "slowed" if snapshot.consumer_throttled else "full-speed"


class _PlainView:
    """One line per tick on stdout."""

    def __enter__(self) -> _PlainView:
        print(_DESCRIPTION, flush=True)
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        return None

    def update(self, snapshot: DemoSnapshot) -> None:
        print(
            f"t={snapshot.elapsed_s:5.1f}s"
            f" out={format_rate(snapshot.records_out_per_s)}/s"
            f" in={format_rate(snapshot.records_in_per_s)}/s"
            f" outPoolUsage={snapshot.out_pool_usage:.0%}"
            f" outputQueueLength={snapshot.output_queue_length}"
            f" backPressured={snapshot.back_pressured_ratio:.0%} {snapshot.back_pressure}"
            f" consumer={_consumer_state(snapshot)}",
            flush=True,
        )


class _RichView:
    """A rich table of the last ticks, redrawn in place."""

    def __init__(self) -> None:
        self._snapshots: deque[DemoSnapshot] = deque(maxlen=_LIVE_ROWS)
        self._live: Live | None = None

    def __enter__(self) -> _RichView:
        from rich.live import Live

        self._live = Live(
            self._render(), console=rich_console(), refresh_per_second=4, transient=False
        )
        self._live.__enter__()
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if self._live is not None:
            self._live.__exit__(kind, error, traceback)
            self._live = None

    def update(self, snapshot: DemoSnapshot) -> None:
        self._snapshots.append(snapshot)
        if self._live is not None:
            self._live.update(self._render())

    def _render(self) -> Table:
        from rich.table import Table

        table = Table(title=_TITLE, title_justify="left")
        for column in _LIVE_COLUMNS:
            table.add_column(column.header, justify="right" if column.numeric else "left")
        for snapshot in self._snapshots:
            table.add_row(*_row(snapshot), style=_STATUS_STYLES[snapshot.back_pressure])
        return table


_STATUS_STYLES: Final = {"OK": "green", "LOW": "yellow", "HIGH": "red"}

_TITLE: Final = "penstock run: keyed word count over 4 local channels"
_DESCRIPTION: Final = (
    "penstock run: keyed word count, producer → KeyGroupStreamPartitioner → 4 subpartitions"
    " → 4 LocalInputChannels → consumer (throttled for part of the run)"
)


# -- the summary -----------------------------------------------------------------------


def _print_summary(result: DemoResult) -> None:
    from penstock.demo import back_pressure_level

    top = ", ".join(f"{word} {format_count(count)}" for word, count in result.top_words(5))
    per_channel = " / ".join(str(len(words)) for words in result.channel_words)
    rows: Sequence[tuple[str, str]] = (
        ("records", format_count(result.records)),
        ("seconds", f"{result.seconds:.2f}"),
        ("records/s", format_count(result.records_per_s)),
        ("distinct words", str(result.distinct_words)),
        ("top words", top),
        ("distinct words per channel", per_channel),
        (
            "peak backpressure",
            f"{back_pressure_level(result.peak_back_pressure)}"
            f" ({result.peak_back_pressure:.0%} of a second)",
        ),
        (
            "segments back in the pool",
            f"{result.segments_returned} / {result.segments_total}"
            + (" (all)" if result.all_segments_returned else " (MISSING)"),
        ),
    )
    print_table((Column("summary"), Column("value")), rows)
