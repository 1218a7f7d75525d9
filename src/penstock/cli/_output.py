"""Tables for the command line: rich on a terminal, plain aligned text otherwise.

rich is imported only when a table is drawn on a terminal, so that importing a command
module stays cheap and output piped to a file or another program is plain text.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, TextIO

if TYPE_CHECKING:
    from rich.console import Console
    from rich.table import Table

__all__ = [
    "Column",
    "format_count",
    "format_rate",
    "is_terminal",
    "plain_table",
    "print_table",
    "rich_console",
    "rich_table",
]


@dataclass(frozen=True, slots=True)
class Column:
    """A table column: its header and whether its cells are numbers (right-aligned)."""

    header: str
    numeric: bool = False


def is_terminal(stream: TextIO | None = None) -> bool:
    """Whether ``stream`` (stdout by default) is an interactive terminal."""
    target = sys.stdout if stream is None else stream
    isatty = getattr(target, "isatty", None)
    return bool(isatty is not None and isatty())


def format_count(value: float) -> str:
    """A count with thousands separators: ``1,234,567``."""
    return f"{round(value):,}"


def format_rate(value: float) -> str:
    """A per-second rate, short: ``812.4k``, ``1.35M``."""
    if value >= 1e6:
        return f"{value / 1e6:.2f}M"
    if value >= 1e3:
        return f"{value / 1e3:.1f}k"
    return f"{value:.0f}"


def plain_table(columns: Sequence[Column], rows: Sequence[Sequence[str]]) -> str:
    """The rows as aligned text under a header line and a rule, without trailing spaces."""
    widths = [len(column.header) for column in columns]
    for row in rows:
        widths = [max(width, len(cell)) for width, cell in zip(widths, row, strict=True)]

    def line(cells: Sequence[str]) -> str:
        parts = [
            cell.rjust(width) if column.numeric else cell.ljust(width)
            for column, width, cell in zip(columns, widths, cells, strict=True)
        ]
        return "  ".join(parts).rstrip()

    rule = "  ".join("-" * width for width in widths)
    return "\n".join([line([column.header for column in columns]), rule, *map(line, rows)])


def rich_console(stream: TextIO | None = None) -> Console:
    """A rich console writing to ``stream`` (stdout by default)."""
    from rich.console import Console

    return Console(file=sys.stdout if stream is None else stream)


def rich_table(
    columns: Sequence[Column], rows: Sequence[Sequence[str]], title: str | None = None
) -> Table:
    """The rows as a rich table, compact enough for 80 columns.

    Cells and title are shown as they are: text in brackets (a job's or an operator's
    name may hold some) is not taken for rich markup.
    """
    from rich import box
    from rich.markup import escape
    from rich.table import Table

    table = Table(
        title=None if title is None else escape(title),
        title_justify="left",
        box=box.SIMPLE_HEAD,
        pad_edge=False,
        collapse_padding=True,
    )
    for column in columns:
        table.add_column(
            column.header, justify="right" if column.numeric else "left", no_wrap=column.numeric
        )
    for row in rows:
        table.add_row(*map(escape, row))
    return table


def print_table(
    columns: Sequence[Column],
    rows: Sequence[Sequence[str]],
    title: str | None = None,
    stream: TextIO | None = None,
) -> None:
    """Prints a table: rich on a terminal, plain aligned text otherwise."""
    target = sys.stdout if stream is None else stream
    if is_terminal(target):
        rich_console(target).print(rich_table(columns, rows, title))
        return
    if title:
        print(title, file=target)
    print(plain_table(columns, rows), file=target)
