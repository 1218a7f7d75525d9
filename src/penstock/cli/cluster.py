"""``penstock jobmanager`` and ``penstock taskmanager``: a cluster started by hand.

Start a JobManager, then any number of TaskManagers, on one host or several::

    penstock jobmanager --host 0.0.0.0 --port 6123 --secret-file ~/.penstock-secret
    penstock taskmanager --jobmanager jmhost:6123 --slots 2 --secret-file ~/.penstock-secret

and submit jobs with ``execution.target: remote``, ``jobmanager.rpc.address`` and
``jobmanager.rpc.port`` set, and the key in ``PENSTOCK_CLUSTER_SECRET``.

Every control connection is authenticated with the cluster key before a single
message is read. The JobManager creates ``--secret-file`` (readable by its owner only)
if it does not exist; copy it to the TaskManager hosts. Without ``--secret-file`` both
commands read the key from ``PENSTOCK_CLUSTER_SECRET``. The key is never accepted on the
command line, where other users of the host could read it.
"""

from __future__ import annotations

import argparse
import contextlib
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from types import FrameType
from typing import Final

from penstock.cli._args import SubParsers, port_number, positive_int, usage_error

__all__ = [
    "add_jobmanager_parser",
    "add_taskmanager_parser",
    "jobmanager_command",
    "taskmanager_command",
]


def _add_common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--secret-file",
        metavar="FILE",
        help="file holding the cluster key (default: the PENSTOCK_CLUSTER_SECRET variable)",
    )
    parser.add_argument(
        "-D",
        dest="dynamic",
        action="append",
        default=[],
        metavar="key=value",
        help="set a configuration key (repeatable)",
    )


def add_jobmanager_parser(subparsers: SubParsers) -> None:
    """Adds ``jobmanager [--host H] [--port P] [--secret-file F] [-D key=value ...]``."""
    parser = subparsers.add_parser(
        "jobmanager",
        help="start a JobManager that TaskManagers register with and clients submit to",
        description=(
            "Starts a JobManager. It prints its control address, accepts TaskManagers "
            "and jobs until interrupted, then shuts its TaskManagers down."
        ),
    )
    parser.add_argument("--host", help="interface to listen on (default: jobmanager.rpc.address)")
    parser.add_argument(
        "--port",
        type=port_number,
        help="port to listen on, 0 for any (default: jobmanager.rpc.port)",
    )
    _add_common(parser)
    parser.set_defaults(handler=jobmanager_command)


def add_taskmanager_parser(subparsers: SubParsers) -> None:
    """Adds ``taskmanager --jobmanager HOST:PORT [--slots N] [--secret-file F] [-D ...]``."""
    parser = subparsers.add_parser(
        "taskmanager",
        help="start a TaskManager that registers with a JobManager",
        description=(
            "Starts a TaskManager: registers with the JobManager, runs the tasks it "
            "deploys, and exits when the JobManager shuts it down or is lost."
        ),
    )
    parser.add_argument("--jobmanager", required=True, metavar="HOST:PORT")
    parser.add_argument(
        "--slots",
        type=positive_int,
        help="number of slots (default: taskmanager.numberOfTaskSlots)",
    )
    _add_common(parser)
    parser.set_defaults(handler=taskmanager_command)


_STOP_SIGNALS: Final = (signal.SIGINT, signal.SIGTERM)

_SIGNAL_POLL_S: Final = 0.5
"""How often the main thread wakes to run the handler of a signal it did not receive."""


def _terminate(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


@contextlib.contextmanager
def _stop_signals() -> Iterator[Callable[[], None]]:
    """Catches SIGINT and SIGTERM while open; gives a function that waits for one.

    The kernel may hand a signal to any thread that does not block it, such as a
    native thread a library started at import; Python then runs the handler only when
    the main thread next runs Python code. So the main thread waits in short steps, not
    in one wait (or ``sigwait``) that such a signal would never end.
    """
    stop = threading.Event()

    def wait() -> None:
        while not stop.wait(_SIGNAL_POLL_S):
            pass

    previous = {signum: signal.signal(signum, lambda *_: stop.set()) for signum in _STOP_SIGNALS}
    try:
        yield wait
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def jobmanager_command(args: argparse.Namespace) -> int:
    """Runs ``penstock jobmanager`` until SIGINT or SIGTERM; returns the exit status."""
    from penstock.config import JOBMANAGER_RPC_ADDRESS, JOBMANAGER_RPC_PORT, Configuration
    from penstock.errors import PenstockError
    from penstock.runtime.control import ControlServer, load_secret
    from penstock.runtime.jobmanager import JobManager

    try:
        config = Configuration.load(dynamic=args.dynamic)
        secret = load_secret(args.secret_file, create=True)
        host = args.host or config.get(JOBMANAGER_RPC_ADDRESS)
        port = config.get(JOBMANAGER_RPC_PORT) if args.port is None else args.port
        job_manager = JobManager(config)
        job_manager.start()
        server = ControlServer(host, port, secret, job_manager.serve_connection)
    except PenstockError as exc:
        return usage_error("jobmanager", str(exc))
    try:
        with _stop_signals() as wait_for_a_stop_signal:
            address = f"{server.address[0]}:{server.address[1]}"
            print(f"JobManager listening on {address}", flush=True)
            wait_for_a_stop_signal()
        print("penstock jobmanager: shutting down", file=sys.stderr)
    finally:
        server.close()
        job_manager.shutdown("the JobManager was stopped")
    return 0


def taskmanager_command(args: argparse.Namespace) -> int:
    """Runs ``penstock taskmanager``; returns the exit status."""
    from penstock.config import Configuration
    from penstock.errors import ConfigurationError, PenstockError
    from penstock.runtime.control import load_secret, parse_address
    from penstock.runtime.taskmanager import run_task_manager

    try:
        config = Configuration.load(dynamic=args.dynamic)
        secret = load_secret(args.secret_file)
        address = parse_address(args.jobmanager)
    except PenstockError as exc:
        return usage_error("taskmanager", str(exc))
    previous = signal.signal(signal.SIGTERM, _terminate)
    try:
        return run_task_manager(
            address, secret, config, args.slots, announce=lambda line: print(line, flush=True)
        )
    except ConfigurationError as exc:  # found on the way up: a data port it cannot bind
        return usage_error("taskmanager", str(exc))
    except PenstockError as exc:
        print(f"penstock taskmanager: {exc}", file=sys.stderr)
        return 1
    finally:
        signal.signal(signal.SIGTERM, previous)
