"""``penstock run``: runs a job on a mini-cluster with a live view of its vertices.

* ``penstock run`` runs the built-in demo, the ``word_count`` example: a keyed word
  count over a generated stream on two TaskManager processes;
* ``penstock run --example NAME`` runs a bundled example (``penstock.examples``);
* ``penstock run JOB.py`` runs a job file as ``python JOB.py`` would (its
  ``__name__`` is ``"__main__"``); every job it executes shows in the view.

``-D key=value`` sets configuration keys; they are all checked before anything starts,
and a bad one ends the command with status 2, naming the key. The examples run with
them on top of ``parallelism.default: 2``; a job file's jobs run with them under the
job's own configuration (``penstock.runtime.client.configure_jobs``).

The view (``penstock.cli.job_view``) is a rich table redrawn in place on a terminal,
one plain line per vertex and second otherwise, and a summary table when a job ends.

Exit status: 0 when every job finished, 1 when a job failed (its error, with the remote
traceback, is printed), 2 for bad usage, 130 after Ctrl-C (the job is cancelled and
every TaskManager process stopped before the command returns).
"""

from __future__ import annotations

import argparse
import contextlib
import runpy
import sys
import traceback
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Final

from penstock.cli._args import SubParsers, usage_error

if TYPE_CHECKING:
    from penstock.config import Configuration

__all__ = ["DEFAULT_EXAMPLE", "DEFAULT_PARALLELISM", "EXIT_INTERRUPTED", "add_run_parser"]

EXIT_INTERRUPTED: Final = 130
"""Exit status after Ctrl-C, as a shell reports a process ended by SIGINT."""

EXIT_JOB_FAILED: Final = 1

EXIT_BAD_CONFIGURATION: Final = 2
"""Exit status for bad usage or configuration, as argparse exits on bad usage."""

DEFAULT_EXAMPLE: Final = "word_count"
"""What ``penstock run`` runs without a job file or ``--example``."""

DEFAULT_PARALLELISM: Final = 2
"""``parallelism.default`` of the examples unless ``-D`` sets it: two TaskManagers."""


def add_run_parser(subparsers: SubParsers) -> None:
    """Adds ``run [JOB.py | --example NAME] [-D key=value ...]``."""
    from penstock.examples import EXAMPLES

    parser = subparsers.add_parser(
        "run",
        help="run a job (default: the word-count demo) with a live view",
        description=(
            "Runs a job on a mini-cluster of TaskManager processes with a live view of "
            "each vertex: records/s in and out, backpressure (OK/LOW/HIGH as Flink's web "
            "UI shows it), busy time and buffer pool usage. Without a job, runs the "
            "word-count demo."
        ),
    )
    source = parser.add_mutually_exclusive_group()
    source.add_argument("job", nargs="?", metavar="JOB.py", help="a job file to run")
    source.add_argument(
        "--example", metavar="NAME", help=f"a bundled example: {', '.join(EXAMPLES)}"
    )
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
    from penstock.config import Configuration, ShuffleOptions, heartbeat_timeout_ms
    from penstock.errors import ConfigurationError
    from penstock.examples import EXAMPLES, load_example

    # Everything that can be wrong with the command is found before a process starts,
    # or a job file runs.
    try:
        config = Configuration.load(dynamic=args.dynamic)  # the environment, then -D
        ShuffleOptions.from_configuration(config)
        heartbeat_timeout_ms(config)
    except ConfigurationError as exc:
        return usage_error("run", str(exc))
    example: ModuleType | None = None
    job_file: Path | None = None
    if args.job is not None:
        job_file = Path(args.job)
        if not job_file.is_file():
            return usage_error("run", f"no such job file: {args.job}")
    else:
        name = DEFAULT_EXAMPLE if args.example is None else args.example
        try:
            example = load_example(name)
        except KeyError:
            return usage_error(
                "run", f"no example named {name!r}; the examples are: {', '.join(EXAMPLES)}"
            )
    return _run(config, example, job_file)


def _run(config: Configuration, example: ModuleType | None, job_file: Path | None) -> int:
    from penstock.api.environment import StreamExecutionEnvironment
    from penstock.cli.job_view import JobView
    from penstock.config import Configuration
    from penstock.errors import ClusterError, ConfigurationError, JobExecutionError
    from penstock.runtime.client import configure_jobs, observe_jobs
    from penstock.runtime.control import SECRET_ENV

    records: list[object] = []
    submitted: list[object] = []
    with (
        JobView() as view,
        observe_jobs(view.on_update, on_records=records.extend, on_submit=submitted.append),
        configure_jobs(config),
    ):
        try:
            if example is not None:
                defaults = Configuration({"parallelism.default": DEFAULT_PARALLELISM})
                env = StreamExecutionEnvironment.get_execution_environment(defaults | config)
                example.build(env)
                env.execute(example.JOB_NAME)
            else:
                assert job_file is not None
                _run_job_file(job_file)
        except JobExecutionError as exc:
            view.close()
            _print_failure(exc)
            return EXIT_JOB_FAILED
        except ConfigurationError as exc:  # the job's own settings, found at submission
            view.close()
            if job_file is None or exc.key in config or exc.key == SECRET_ENV:
                # A setting of the command line's, or of its environment.
                return usage_error("run", str(exc))
            # The file's own code set it (set_parallelism(0)): where in the file is
            # worth its traceback.
            _print_job_file_error(job_file, exc)
            return EXIT_BAD_CONFIGURATION
        except ClusterError as exc:
            view.close()
            print(f"penstock run: {exc}", file=sys.stderr)
            return EXIT_JOB_FAILED
        except KeyboardInterrupt:
            # The client cancelled the job and closed the cluster before re-raising.
            view.close()
            print("penstock run: interrupted; the job was cancelled", file=sys.stderr)
            return EXIT_INTERRUPTED
        except BrokenPipeError:
            raise  # our standard output was closed (| head), not the job file's doing
        except Exception as exc:
            if job_file is None:
                raise  # a bundled example's bug is penstock's: the whole traceback
            view.close()
            _print_job_file_error(job_file, exc)
            return EXIT_JOB_FAILED
    if job_file is not None and not submitted:
        # As Flink's client says of a program that never called execute().
        print(
            f"penstock run: {job_file} ran no job; perhaps it never calls execute() or "
            "execute_and_collect() on its environment",
            file=sys.stderr,
        )
        return EXIT_JOB_FAILED
    if example is not None:
        description = example.describe_results(records)
        if description:
            print(description)
    return 0


def _run_job_file(path: Path) -> None:
    # As with ``python JOB.py``: the job file's directory comes first on the path, so
    # that it can import its neighbours, and sys.argv is the file alone (not penstock's
    # own arguments, which a job parsing its command line would reject).
    directory = str(path.resolve().parent)
    sys.path.insert(0, directory)
    saved_argv = sys.argv
    sys.argv = [str(path)]
    try:
        runpy.run_path(str(path), run_name="__main__")
    finally:
        sys.argv = saved_argv
        with contextlib.suppress(ValueError):
            sys.path.remove(directory)


def _print_job_file_error(path: Path, error: Exception) -> None:
    """Prints what the job file raised as ``python JOB.py`` would, from its own frames on.

    The frames of ``penstock run`` and ``runpy`` that lead to the file tell its author
    nothing; a file that does not compile has no frame of its own, so only the error
    (for a SyntaxError: file, line and caret) is printed.
    """
    script = path.resolve()
    frames = error.__traceback__
    while frames is not None and not _is_frame_of(frames.tb_frame.f_code.co_filename, script):
        frames = frames.tb_next
    print("".join(traceback.format_exception(type(error), error, frames)), end="", file=sys.stderr)


def _is_frame_of(filename: str, script: Path) -> bool:
    return not filename.startswith("<") and Path(filename).resolve() == script


def _print_failure(error: BaseException) -> None:
    from penstock.errors import RemoteError

    print(f"penstock run: {type(error).__name__}: {error}", file=sys.stderr)
    cause = error.__cause__
    while cause is not None:
        if isinstance(cause, RemoteError):
            print(f"Caused by {cause.type_name}: {cause.message}", file=sys.stderr)
            # An error that was never raised (penstock refusing a task, say) and has
            # no notes formats to one line: the one just printed. Anything more (frames,
            # notes, a group's members, a syntax error's caret) is printed.
            if "\n" in cause.traceback_text.strip():
                print(cause.traceback_text.rstrip(), file=sys.stderr)
        else:
            print(f"Caused by {type(cause).__name__}: {cause}", file=sys.stderr)
        cause = cause.__cause__
