"""The ``penstock`` command line: ``penstock [--log-level LEVEL] COMMAND``.

Commands:

* ``run``: runs a job with a live view of throughput and backpressure (for now the
  built-in word count over the network stack; see ``penstock.cli.run``);
* ``bench``: runs a network benchmark and prints a table or JSON (see
  ``penstock.cli.bench``);
* ``jobmanager`` and ``taskmanager``: start a cluster by hand (see
  ``penstock.cli.cluster``).

Each command module has an ``add_<command>_parser(subparsers)`` that adds its subparser
and sets the ``handler`` default to a function ``(args) -> exit status``; ``main``
parses and calls it. Command modules import the stack (and rich) only when they run, so
``penstock --help`` and ``--version`` stay fast.

Logging is configured here and nowhere else: one handler on the root logger that writes
to stderr, each line naming the process, its pid and the thread.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import logging
import os
import sys
from collections.abc import Callable, Sequence
from typing import Final

from penstock import __version__
from penstock.cli._args import SubParsers
from penstock.cli.bench import add_bench_parser
from penstock.cli.cluster import add_jobmanager_parser, add_taskmanager_parser
from penstock.cli.run import EXIT_INTERRUPTED, add_run_parser

__all__ = ["COMMANDS", "LOG_FORMAT", "build_parser", "configure_logging", "main"]

LOG_FORMAT: Final = (
    "%(asctime)s %(levelname)-7s %(processName)s[%(process)d] %(threadName)s %(name)s: %(message)s"
)
LOG_LEVELS: Final = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")

COMMANDS: Final[tuple[Callable[[SubParsers], None], ...]] = (
    add_run_parser,
    add_bench_parser,
    add_jobmanager_parser,
    add_taskmanager_parser,
)
"""The ``add_<command>_parser`` function of every command, in help order."""


class _StderrHandler(logging.Handler):
    """Writes to whatever ``sys.stderr`` is when a record arrives.

    Looking the stream up per record keeps log lines visible above a rich live view
    (which redirects stderr while it draws) and correct when stderr is replaced.
    """

    def emit(self, record: logging.LogRecord) -> None:
        try:
            stream = sys.stderr
            stream.write(self.format(record) + "\n")
            stream.flush()
        except Exception:
            self.handleError(record)


def configure_logging(level: str) -> logging.Handler:
    """Installs the command line's log handler on the root logger at ``level``.

    Returns:
        The handler, for the caller to remove when the command ends.
    """
    handler = _StderrHandler()
    handler.setFormatter(logging.Formatter(LOG_FORMAT))
    root = logging.getLogger()
    root.addHandler(handler)
    root.setLevel(level)
    return handler


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``penstock`` command and all its subcommands."""
    parser = argparse.ArgumentParser(
        prog="penstock",
        description=(
            "Apache Flink's network stack in Python: bounded network buffers, "
            "backpressure and credit-based flow control."
        ),
    )
    parser.add_argument("--version", action="version", version=f"penstock {__version__}")
    parser.add_argument(
        "--log-level",
        type=str.upper,
        choices=LOG_LEVELS,
        default="WARNING",
        metavar="LEVEL",
        help=f"log to stderr from this level on: {', '.join(LOG_LEVELS)} (default: WARNING)",
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    for add_parser in COMMANDS:
        add_parser(commands)
    return parser


EXIT_OUTPUT_CLOSED: Final = 141
"""Exit status when standard output was closed, as a shell reports SIGPIPE (128 + 13)."""


def _discard_stdout() -> None:
    """Sends what is still written to standard output, at exit too, to /dev/null.

    Otherwise the interpreter's last flush of the closed pipe prints an error.
    """
    with contextlib.suppress(OSError, ValueError, io.UnsupportedOperation):
        devnull = os.open(os.devnull, os.O_WRONLY)
        try:
            os.dup2(devnull, sys.stdout.fileno())
        finally:
            os.close(devnull)


def main(argv: Sequence[str] | None = None) -> int:
    """Runs the ``penstock`` command with ``argv`` (default: ``sys.argv[1:]``).

    Returns:
        The exit status: 0 on success, 1 when the job failed (``run``), 2 for bad
        usage or configuration, 130 after Ctrl-C, 141 when the reader of the standard
        output went away (``penstock run | head``), as shells report SIGPIPE.
    """
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, --version and usage errors end parsing
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 2)
    handler: Callable[[argparse.Namespace], int] | None = getattr(args, "handler", None)
    if handler is None:
        parser.print_help(sys.stderr)
        return 2
    root = logging.getLogger()
    previous_level = root.level
    log_handler = configure_logging(args.log_level)
    try:
        return handler(args)
    except KeyboardInterrupt:
        print(f"penstock {args.command}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        # As a Unix tool: stop quietly (a job that ran was cancelled on the way here).
        _discard_stdout()
        return EXIT_OUTPUT_CLOSED
    finally:
        # Leave logging as it was, so that main() can be called again in one process.
        root.removeHandler(log_handler)
        root.setLevel(previous_level)
