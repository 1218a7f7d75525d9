"""MiniCluster: a JobManager in this process and TaskManager processes on this host.

The JobManager runs in a thread of the client process and listens for control
connections on 127.0.0.1 with a key made for this cluster. Each TaskManager is a
subprocess (``python -m penstock.runtime.taskmanager``) that gets the key and the
configuration on its standard input, never on its command line, registers, and
exchanges data with the others over loopback TCP.

Cleanup is guaranteed, not hoped for: ``close()`` (also the context manager's exit and
an ``atexit`` hook) tells every TaskManager to shut down, waits a bounded time, then
kills the ones that are still there, always by the pids this cluster started. A
TaskManager whose parent dies sees its standard input close, and one whose JobManager
connection breaks exits too, so none is ever orphaned.

Each TaskManager gets a CPU of its own when there are enough of them
(``minicluster.pin-taskmanagers``): a TaskManager runs Python one thread at a time under
its GIL, and when its task threads and its network thread hand over to each other on one
CPU, the hand-off costs far less than a wake-up on another CPU.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import logging
import math
import os
import subprocess
import sys
import threading
import time
import weakref
from typing import Final

from penstock.config import (
    MINICLUSTER_NUMBER_OF_TASKMANAGERS,
    MINICLUSTER_PIN_TASKMANAGERS,
    NUMBER_OF_TASK_SLOTS,
    Configuration,
)
from penstock.errors import ClusterError
from penstock.runtime.control import ControlServer, new_secret
from penstock.runtime.job_graph import JobGraph
from penstock.runtime.jobmanager import (
    DEFAULT_SLOT_REQUEST_TIMEOUT_S,
    JobManager,
    required_slots,
)

__all__ = [
    "REGISTRATION_TIMEOUT_S",
    "SHUTDOWN_TIMEOUT_S",
    "MiniCluster",
    "cpus_for_task_managers",
    "task_managers_for",
]

log = logging.getLogger(__name__)

REGISTRATION_TIMEOUT_S: Final = 60.0
"""How long ``start`` waits for the TaskManager processes to register."""

SHUTDOWN_TIMEOUT_S: Final = 15.0
"""How long ``close`` waits for a TaskManager to exit before it is killed."""

_POLL_S: Final = 0.1

_LIVE: Final[weakref.WeakSet[MiniCluster]] = weakref.WeakSet()


def task_managers_for(job: JobGraph, config: Configuration) -> int:
    """TaskManager processes a mini-cluster starts for ``job``.

    ``minicluster.number-of-taskmanagers`` if set, else enough for the job's slots:
    ceil(slots needed / ``taskmanager.numberOfTaskSlots``), where a job needs its
    largest parallelism per slot sharing group.
    """
    configured = config.get(MINICLUSTER_NUMBER_OF_TASKMANAGERS)
    if configured is not None:
        return configured
    return max(1, math.ceil(required_slots(job) / config.get(NUMBER_OF_TASK_SLOTS)))


def cpus_for_task_managers(count: int, allowed: set[int] | None = None) -> list[int] | None:
    """One CPU for each of ``count`` TaskManagers, or None when they cannot have one each.

    ``allowed`` defaults to the CPUs this process may run on, so a mini-cluster started
    under ``taskset`` places its TaskManagers within that set. Platforms without CPU
    affinity get None.
    """
    if allowed is None:
        if not hasattr(os, "sched_getaffinity"):
            return None
        allowed = os.sched_getaffinity(0)
    cpus = sorted(allowed)
    return cpus[:count] if len(cpus) >= count else None


@atexit.register
def _close_all() -> None:
    for cluster in list(_LIVE):
        cluster.close()


class MiniCluster:
    """A JobManager thread and ``num_task_managers`` TaskManager processes.

    Args:
        config: The cluster configuration, passed to every TaskManager.
        num_task_managers: TaskManager processes to start.
        slot_request_timeout_s: How long a job waits for slots.
    """

    def __init__(
        self,
        config: Configuration | None = None,
        num_task_managers: int = 1,
        slot_request_timeout_s: float = DEFAULT_SLOT_REQUEST_TIMEOUT_S,
    ) -> None:
        if num_task_managers < 1:
            msg = f"a mini-cluster needs at least one TaskManager, not {num_task_managers}"
            raise ClusterError(msg)
        self.config = Configuration(config)
        self.num_task_managers = num_task_managers
        self._secret = new_secret()
        self.job_manager = JobManager(
            self.config, slot_request_timeout_s=slot_request_timeout_s, name="minicluster-jm"
        )
        self._server: ControlServer | None = None
        self._processes: list[subprocess.Popen[bytes]] = []
        self._lock = threading.Lock()
        self._closed = False

    @property
    def task_manager_pids(self) -> list[int]:
        """Pids of the TaskManager processes this cluster started."""
        return [process.pid for process in self._processes]

    @property
    def address(self) -> tuple[str, int]:
        """The JobManager's control address."""
        if self._server is None:
            msg = "the mini-cluster is not started"
            raise ClusterError(msg)
        return self._server.address

    def start(self, timeout_s: float = REGISTRATION_TIMEOUT_S) -> MiniCluster:
        """Starts the JobManager and the TaskManagers; waits until all registered.

        Raises:
            ClusterError: A TaskManager exited or did not register in time.
        """
        _LIVE.add(self)
        try:
            self.job_manager.start()
            self._server = ControlServer(
                "127.0.0.1", 0, self._secret, self.job_manager.serve_connection, "minicluster-jm"
            )
            cpus = (
                cpus_for_task_managers(self.num_task_managers)
                if self.config.get(MINICLUSTER_PIN_TASKMANAGERS)
                else None
            )
            for index in range(self.num_task_managers):
                self._spawn(index + 1, None if cpus is None else cpus[index])
            self._await_registrations(timeout_s)
        except BaseException:
            self.close()
            raise
        return self

    def _spawn(self, number: int, cpu: int | None) -> None:
        host, port = self.address
        command = [
            sys.executable,
            "-m",
            "penstock.runtime.taskmanager",
            "--jobmanager",
            f"{host}:{port}",
            "--id",
            f"taskmanager-{number}",
            "--bootstrap-stdin",
            "--log-level",
            logging.getLevelName(logging.getLogger("penstock").getEffectiveLevel()),
        ]
        if cpu is not None:
            command += ["--cpu", str(cpu)]
        # A process group of its own: Ctrl-C in a terminal reaches this process alone,
        # which cancels the job and shuts the TaskManager down in order. A TaskManager
        # still importing when Ctrl-C came would otherwise die of it mid-start with a
        # KeyboardInterrupt traceback.
        process = subprocess.Popen(command, stdin=subprocess.PIPE, close_fds=True, process_group=0)
        with self._lock:
            self._processes.append(process)
        assert process.stdin is not None
        settings = json.dumps(self.config.to_dynamic_properties())
        # The pipe stays open: its end tells the TaskManager that this process is gone.
        process.stdin.write(self._secret + b"\n" + settings.encode() + b"\n")
        process.stdin.flush()

    def _await_registrations(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while not self.job_manager.wait_for_task_managers(self.num_task_managers, _POLL_S):
            for process in self._processes:
                if process.poll() is not None:
                    # It may have registered and then failed: say what is known.
                    msg = (
                        f"TaskManager process {process.pid} exited with status "
                        f"{process.returncode} while the mini-cluster was starting "
                        f"({self.job_manager.num_task_managers} of "
                        f"{self.num_task_managers} TaskManagers registered)"
                    )
                    raise ClusterError(msg)
            if time.monotonic() > deadline:
                msg = (
                    f"only {self.job_manager.num_task_managers} of {self.num_task_managers} "
                    f"TaskManagers registered within {timeout_s:g} s"
                )
                raise ClusterError(msg)

    def close(self) -> None:
        """Shuts every TaskManager down (killing stragglers) and stops the JobManager."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            processes = list(self._processes)
        _LIVE.discard(self)
        lost = self.job_manager.lost_task_manager_pids
        self.job_manager.shutdown("the mini-cluster is closing")
        for process in processes:
            # Its loss was reported already; frozen or stuck, it would not hear a
            # shutdown, so it gets no grace period.
            if process.pid in lost and process.poll() is None:
                log.info("TaskManager %d was lost; killing it", process.pid)
                process.kill()
        if self._server is not None:
            self._server.close()
        for process in processes:
            if process.stdin is not None:
                with contextlib.suppress(OSError):
                    process.stdin.close()
        deadline = time.monotonic() + SHUTDOWN_TIMEOUT_S
        for process in processes:
            try:
                process.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                log.warning("TaskManager %d did not exit; killing it", process.pid)
                process.kill()
                process.wait()

    def __enter__(self) -> MiniCluster:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __del__(self) -> None:
        # A cluster dropped without close() still takes its processes with it.
        if not getattr(self, "_closed", True):
            for process in getattr(self, "_processes", []):
                with contextlib.suppress(OSError):
                    process.kill()
