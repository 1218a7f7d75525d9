"""TaskExecutor: one TaskManager's network stack, slots and running tasks; process entry.

A ``TaskExecutor`` owns one ``ShuffleEnvironment`` (network memory, partitions, data
server) and runs the subtasks the JobManager deploys to it, each a
``penstock.runtime.task.Task`` in its own thread. It reports every state change
(with the failure as text and, at the end, the task's final metrics), sends a heartbeat
with a metrics snapshot of each running task, cancels on request, and forwards the
batches of collect sinks with at most ``COLLECT_WINDOW`` unacknowledged batches per
task, so a slow client slows the job down instead of filling memory.

As a process (``python -m penstock.runtime.taskmanager`` or ``penstock taskmanager``)
it connects to a JobManager, registers, and serves until the JobManager says
``Shutdown``, its connection is lost, or it hears nothing from the JobManager for
``heartbeat.timeout`` (the JobManager sends a heartbeat every ``heartbeat.interval``);
either way it cancels its tasks, closes the network stack and exits, so no TaskManager
outlives its cluster. Started by a mini-cluster (``--bootstrap-stdin``), it reads the
cluster key and configuration from its standard input and also exits when that pipe
closes, i.e. when the parent process dies, and leaves Ctrl-C to the parent.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import signal
import sys
import threading
import uuid
from collections.abc import Callable, Sequence
from typing import Final, Protocol

from penstock.config import (
    HEARTBEAT_INTERVAL,
    HEARTBEAT_TIMEOUT,
    NUMBER_OF_TASK_SLOTS,
    Configuration,
    heartbeat_timeout_ms,
)
from penstock.errors import ClusterError, PenstockError, RemoteError, TaskCancelledError
from penstock.ids import ExecutionAttemptID, JobID, ResultPartitionID
from penstock.runtime.control import (
    CancelTask,
    CollectAck,
    CollectBatch,
    ControlConnection,
    ControlMessage,
    DeployTask,
    Heartbeat,
    JobManagerHeartbeat,
    RegisterTaskManager,
    RegistrationAccepted,
    ReleaseJob,
    SerializedValue,
    Shutdown,
    TaskStateChanged,
    connect,
    expect_heartbeats,
    load_secret,
    parse_address,
)
from penstock.runtime.deployment import TaskDeploymentDescriptor
from penstock.runtime.states import ExecutionState
from penstock.shuffle import ShuffleEnvironment
from penstock.transport.loop import tune_switch_interval

__all__ = [
    "COLLECT_WINDOW",
    "MAX_HEARTBEAT_PERIOD_MS",
    "RunnableTask",
    "TaskExecutor",
    "TaskFactory",
    "main",
    "run_task_manager",
]

log = logging.getLogger(__name__)

COLLECT_WINDOW: Final = 4
"""Unacknowledged collect batches per task before its sink blocks (backpressure)."""

MAX_HEARTBEAT_PERIOD_MS: Final = 1000
"""Heartbeats carry live metrics, so they go at least this often, whatever heartbeat.interval."""

TASK_JOIN_TIMEOUT_S: Final = 10.0

PARENT_CLOSE_GRACE_S: Final = 2.0
"""How long a mini-cluster's TaskManager that cannot reach its JobManager waits to see
whether its parent is closing (stdin closes) before it reports the failure."""

StateCallback = Callable[[ExecutionAttemptID, ExecutionState, BaseException | None], None]


class RunnableTask(Protocol):
    """What the executor needs of a task (``penstock.runtime.task.Task``)."""

    def start(self) -> None: ...

    def cancel(self) -> None: ...

    def join(self, timeout: float | None) -> bool: ...

    def metrics_snapshot(self) -> dict[str, float]: ...


TaskFactory = Callable[
    [
        TaskDeploymentDescriptor,
        ShuffleEnvironment,
        StateCallback,
        Callable[[list[object]], None] | None,
    ],
    RunnableTask,
]
"""Builds a task: ``(tdd, shuffle, on_state, results_sink)``, as ``Task``'s constructor."""


def _default_task_factory(
    tdd: TaskDeploymentDescriptor,
    shuffle: ShuffleEnvironment,
    on_state: StateCallback,
    results_sink: Callable[[list[object]], None] | None,
) -> RunnableTask:
    from penstock.runtime.task import Task  # the task layer is heavy; load it when needed

    return Task(tdd, shuffle, on_state, results_sink)


class _CollectChannel:
    """The ``results_sink`` of one task: sends batches, blocks beyond the window."""

    def __init__(
        self,
        job_id: JobID,
        execution_id: ExecutionAttemptID,
        send: Callable[[ControlMessage], None],
        window: int,
    ) -> None:
        self._job_id = job_id
        self._execution_id = execution_id
        self._send = send
        self._window = window
        self._condition = threading.Condition()
        self._in_flight = 0
        self._seq = 0
        self._cancelled = False

    def __call__(self, records: list[object]) -> None:
        with self._condition:
            self._condition.wait_for(lambda: self._in_flight < self._window or self._cancelled)
            if self._cancelled:
                msg = "the task was cancelled while its collect sink waited for the client"
                raise TaskCancelledError(msg)
            self._in_flight += 1
            self._seq += 1
            seq = self._seq
        batch = SerializedValue.of(list(records))
        self._send(CollectBatch(self._job_id, self._execution_id, seq, batch))

    def ack(self) -> None:
        with self._condition:
            self._in_flight = max(0, self._in_flight - 1)
            self._condition.notify_all()

    def cancel(self) -> None:
        with self._condition:
            self._cancelled = True
            self._condition.notify_all()


class TaskExecutor:
    """Runs deployed tasks on one ShuffleEnvironment and reports to the JobManager.

    Args:
        config: The TaskManager's configuration (network stack, heartbeat interval).
        send: Sends a message to the JobManager; may raise ClusterError.
        slots: Number of slots (``taskmanager.numberOfTaskSlots`` when None).
        tm_id: This TaskManager's id (random when None).
        task_factory: Builds tasks; ``penstock.runtime.task.Task`` by default.
        collect_window: Unacknowledged collect batches per task.
    """

    def __init__(
        self,
        config: Configuration,
        send: Callable[[ControlMessage], None],
        slots: int | None = None,
        tm_id: str | None = None,
        task_factory: TaskFactory | None = None,
        collect_window: int = COLLECT_WINDOW,
    ) -> None:
        self.config = config
        self.slots = config.get(NUMBER_OF_TASK_SLOTS) if slots is None else slots
        self.tm_id = tm_id or f"taskmanager-{uuid.uuid4().hex[:8]}"
        self._send = send
        self._task_factory = task_factory or _default_task_factory
        self._collect_window = collect_window
        self.shuffle = ShuffleEnvironment.from_configuration(config, name=self.tm_id)
        self._lock = threading.Lock()
        self._tasks: dict[ExecutionAttemptID, RunnableTask] = {}
        self._collectors: dict[ExecutionAttemptID, _CollectChannel] = {}
        self._all_tasks: list[RunnableTask] = []  # joined on close; ended ones pruned
        # What each job deployed here: its subtasks and the partitions they produce.
        self._jobs: dict[JobID, tuple[list[ExecutionAttemptID], list[ResultPartitionID]]] = {}
        # What each running subtask produces, for the end of a job released under it.
        self._produced: dict[ExecutionAttemptID, tuple[JobID, list[ResultPartitionID]]] = {}
        self._closed = threading.Event()
        self._heartbeat_thread: threading.Thread | None = None
        self.heartbeat_period_s = (
            min(config.get(HEARTBEAT_INTERVAL), MAX_HEARTBEAT_PERIOD_MS) / 1000
        )

    def start(self) -> tuple[str, int]:
        """Starts the network stack; returns the data address."""
        return self.shuffle.start()

    def registration(self) -> RegisterTaskManager:
        """The message that registers this TaskManager."""
        return RegisterTaskManager(self.tm_id, self.shuffle.data_address, self.slots, os.getpid())

    def start_heartbeats(self) -> None:
        """Sends a heartbeat with live task metrics every ``heartbeat_period_s``."""
        self._heartbeat_thread = threading.Thread(
            target=self._heartbeat_loop, name=f"{self.tm_id}-heartbeat", daemon=True
        )
        self._heartbeat_thread.start()

    def _heartbeat_loop(self) -> None:
        while not self._closed.wait(self.heartbeat_period_s):
            with self._lock:
                tasks = list(self._tasks.items())
            metrics: dict[ExecutionAttemptID, dict[str, float]] = {}
            for execution_id, task in tasks:
                try:
                    metrics[execution_id] = task.metrics_snapshot()
                except Exception:
                    log.debug("%s: no metrics from a task", self.tm_id, exc_info=True)
            try:
                self._send(Heartbeat(self.tm_id, metrics))
            except ClusterError:
                return

    @property
    def num_running_tasks(self) -> int:
        with self._lock:
            return len(self._tasks)

    # -- messages from the JobManager ------------------------------------------------

    def handle(self, message: ControlMessage) -> bool:
        """Acts on a message from the JobManager; returns False for ``Shutdown``."""
        if isinstance(message, DeployTask):
            try:
                tdd = message.tdd.get()
            except Exception as exc:
                # The user code cannot be read here (a module missing in this process):
                # the subtask fails with that as its cause; this TaskManager goes on.
                msg = f"{self.tm_id} could not read the deployment of its task: {exc}"
                error = ClusterError(msg)
                error.__cause__ = exc
                self._report(message.execution_id, ExecutionState.FAILED, error)
            else:
                self.deploy(tdd)
        elif isinstance(message, CancelTask):
            self.cancel(message.execution_id)
        elif isinstance(message, ReleaseJob):
            self.release_job(message.job_id)
        elif isinstance(message, CollectAck):
            with self._lock:
                channel = self._collectors.get(message.execution_id)
            if channel is not None:
                channel.ack()
        elif isinstance(message, Shutdown):
            return False
        elif not isinstance(message, RegistrationAccepted | JobManagerHeartbeat):
            log.warning("%s: unexpected %s", self.tm_id, type(message).__name__)
        return True

    def deploy(self, tdd: TaskDeploymentDescriptor) -> None:
        """Starts a task; a task that cannot even start is reported FAILED."""
        execution_id = tdd.execution_id
        if self._closed.is_set():
            self._report(
                execution_id, ExecutionState.FAILED, ClusterError(f"{self.tm_id} is shutting down")
            )
            return
        channel = _CollectChannel(
            tdd.job_id, execution_id, self._send_quietly, self._collect_window
        )
        try:
            task = self._task_factory(tdd, self.shuffle, self._on_state, channel)
            with self._lock:
                self._tasks[execution_id] = task
                self._collectors[execution_id] = channel
                self._all_tasks = [t for t in self._all_tasks if not t.join(0)]
                self._all_tasks.append(task)
                produced = [p.descriptor.partition_id for p in tdd.produced]
                executions, partitions = self._jobs.setdefault(tdd.job_id, ([], []))
                executions.append(execution_id)
                partitions.extend(produced)
                self._produced[execution_id] = (tdd.job_id, produced)
            task.start()
        except Exception as exc:
            log.warning("%s: cannot start %s: %s", self.tm_id, tdd.task_name, exc)
            with self._lock:
                self._tasks.pop(execution_id, None)
                self._collectors.pop(execution_id, None)
                self._produced.pop(execution_id, None)
            self._report(execution_id, ExecutionState.FAILED, exc)

    def cancel(self, execution_id: ExecutionAttemptID) -> None:
        """Cancels a task (idempotent; unknown ids are ignored)."""
        with self._lock:
            task = self._tasks.get(execution_id)
            channel = self._collectors.get(execution_id)
        if channel is not None:
            channel.cancel()
        if task is not None:
            task.cancel()

    def release_job(self, job_id: JobID) -> None:
        """The job has ended: cancels what still runs of it, releases its partitions.

        Partitions read to their end are gone already; this releases the others (a
        consumer failed or was never deployed), whose buffers would otherwise be held
        for as long as this TaskManager lives.
        """
        with self._lock:
            executions, partitions = self._jobs.pop(job_id, ((), ()))
        for execution_id in executions:
            self.cancel(execution_id)
        for partition_id in partitions:
            self.shuffle.partition_manager.release_partition(partition_id)

    def _on_state(
        self, execution_id: ExecutionAttemptID, state: ExecutionState, error: BaseException | None
    ) -> None:
        metrics = None
        if state.is_terminal:
            with self._lock:
                task = self._tasks.pop(execution_id, None)
                channel = self._collectors.pop(execution_id, None)
                job_id, produced = self._produced.pop(execution_id, (None, []))
                job_released = job_id not in self._jobs
            if channel is not None:
                channel.cancel()
            if job_released:
                # The job ended while this subtask was still being deployed: what it
                # registered after ReleaseJob is released now, or never.
                for partition_id in produced:
                    self.shuffle.partition_manager.release_partition(partition_id)
            if task is not None:
                try:
                    metrics = task.metrics_snapshot()
                except Exception:
                    log.debug("%s: no final metrics", self.tm_id, exc_info=True)
        self._report(execution_id, state, error, metrics)

    def _report(
        self,
        execution_id: ExecutionAttemptID,
        state: ExecutionState,
        error: BaseException | None,
        metrics: dict[str, float] | None = None,
    ) -> None:
        remote = None
        if error is not None and state is ExecutionState.FAILED:
            remote = RemoteError.from_exception(error)
        self._send_quietly(TaskStateChanged(execution_id, state, remote, metrics))

    def _send_quietly(self, message: ControlMessage) -> None:
        try:
            self._send(message)
        except ClusterError as exc:
            # The connection is gone; the serving loop notices and shuts down.
            log.debug("%s: %s not sent: %s", self.tm_id, type(message).__name__, exc)

    # -- shutdown --------------------------------------------------------------------

    def close(self, timeout_s: float = TASK_JOIN_TIMEOUT_S) -> bool:
        """Cancels every task, waits for them (bounded), closes the network stack.

        Returns:
            Whether every task thread ended in time.
        """
        if self._closed.is_set():
            return True
        self._closed.set()
        with self._lock:
            channels = list(self._collectors.values())
            tasks = list(self._all_tasks)
        for channel in channels:
            channel.cancel()
        for task in tasks:
            with contextlib.suppress(Exception):
                task.cancel()
        ended = all(task.join(timeout_s) for task in tasks)
        if not ended:
            log.warning("%s: some tasks did not stop within %g s", self.tm_id, timeout_s)
        try:
            self.shuffle.close()
        except Exception:
            log.exception("%s: error while closing the network stack", self.tm_id)
        if self._heartbeat_thread is not None:
            self._heartbeat_thread.join(timeout=timeout_s)
        return ended


# -- the process ----------------------------------------------------------------------


def run_task_manager(
    jobmanager: tuple[str, int],
    secret: bytes,
    config: Configuration,
    slots: int | None = None,
    tm_id: str | None = None,
    watch_stdin: bool = False,
    announce: Callable[[str], None] | None = None,
) -> int:
    """Registers with the JobManager and serves it until shutdown or connection loss.

    Args:
        jobmanager: Control address of the JobManager.
        secret: The cluster key.
        config: This TaskManager's configuration.
        slots: Number of slots (``taskmanager.numberOfTaskSlots`` when None).
        tm_id: This TaskManager's id.
        watch_stdin: Exit when standard input closes (the parent process died).
        announce: Gets one line once this TaskManager has registered.

    Returns:
        The exit status: 0 after ``Shutdown`` (or when the parent mini-cluster closed,
        even before this TaskManager registered), 1 when the JobManager was lost.
    """
    silence_s = heartbeat_timeout_ms(config) / 1000
    connection: ControlConnection | None = None
    executor = TaskExecutor(config, lambda message: _send(connection, message), slots, tm_id)
    parent_done = threading.Event()
    if watch_stdin:
        _watch_stdin(parent_done, lambda: connection.close() if connection is not None else None)
    try:
        executor.start()
        try:
            connection = connect(jobmanager, secret)
            connection.send(executor.registration())
        except ClusterError:
            # A mini-cluster closed during start-up (Ctrl-C right after `penstock run`)
            # stops its JobManager first and then closes our stdin: not an error.
            if watch_stdin and parent_done.wait(PARENT_CLOSE_GRACE_S):
                log.info("%s: the mini-cluster closed before it registered", executor.tm_id)
                return 0
            raise
        executor.start_heartbeats()
        # The JobManager sends at least a heartbeat every heartbeat.interval: silence
        # for heartbeat.timeout means it is gone (stopped, or cut off), as for Flink.
        connection.set_receive_timeout(silence_s, HEARTBEAT_TIMEOUT.key)
        status = 1
        try:
            while True:
                message = connection.recv()
                if isinstance(message, JobManagerHeartbeat):
                    expect_heartbeats(connection, message, silence_s)
                elif isinstance(message, RegistrationAccepted):
                    _registered(executor, jobmanager, announce)
                elif not executor.handle(message):
                    break
            status = 0
        except EOFError:
            if parent_done.is_set():
                # The parent closed our stdin (the mini-cluster is closing, or it died):
                # not a lost JobManager. Exiting 0 matches the Shutdown it would send.
                status = 0
            else:
                log.warning("%s: lost the JobManager at %s:%d", executor.tm_id, *jobmanager)
        except ClusterError as exc:
            log.warning("%s: lost the JobManager: %s", executor.tm_id, exc)
        return status
    finally:
        executor.close()
        if connection is not None:
            connection.close()


def _registered(
    executor: TaskExecutor,
    jobmanager: tuple[str, int],
    announce: Callable[[str], None] | None,
) -> None:
    log.info("%s registered with the JobManager at %s:%d", executor.tm_id, *jobmanager)
    if announce is not None:
        data_host, data_port = executor.shuffle.data_address
        how_many = f"{executor.slots} slot{'' if executor.slots == 1 else 's'}"
        announce(
            f"TaskManager {executor.tm_id} registered with the JobManager at "
            f"{jobmanager[0]}:{jobmanager[1]} ({how_many}, data port {data_host}:{data_port})"
        )


def _send(connection: ControlConnection | None, message: ControlMessage) -> None:
    if connection is None:
        msg = "not connected to the JobManager yet"
        raise ClusterError(msg)
    connection.send(message)


def _watch_stdin(parent_done: threading.Event, on_close: Callable[[], None]) -> None:
    def watch() -> None:
        with contextlib.suppress(OSError, ValueError):
            while sys.stdin.buffer.read(4096):
                pass
        log.info("standard input closed: the parent process is gone or done; shutting down")
        parent_done.set()
        on_close()

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m penstock.runtime.taskmanager",
        description="Runs a TaskManager that registers with a JobManager.",
    )
    parser.add_argument("--jobmanager", required=True, metavar="HOST:PORT")
    parser.add_argument("--slots", type=int, default=None)
    parser.add_argument("--id", dest="tm_id", default=None)
    parser.add_argument("--secret-file", default=None)
    parser.add_argument("--bootstrap-stdin", action="store_true")
    parser.add_argument("--log-level", default="WARNING")
    parser.add_argument("--cpu", type=int, default=None, help="run on this CPU only")
    parser.add_argument("-D", dest="dynamic", action="append", default=[], metavar="KEY=VALUE")
    return parser.parse_args(argv)


def pin_to_cpu(cpu: int) -> None:
    """Keeps this process, and every thread it starts from now on, on ``cpu``.

    Called before any other thread starts. A CPU that cannot be had (taken away since the
    parent looked, or no affinity on this platform) costs speed, not correctness: the
    process runs unpinned and says so.

    A pinned process is also scheduled as a batch process (Linux ``SCHED_BATCH``), so
    that a thread it wakes does not preempt the thread that woke it. Its threads share
    one CPU and one GIL: a woken task thread that preempted the network thread would only
    find the GIL taken, block on it and switch back, two context switches for nothing;
    without preemption it runs when the waker blocks and lets the GIL go.
    """
    try:
        os.sched_setaffinity(0, {cpu})
    except (AttributeError, OSError, ValueError) as exc:
        log.warning("Could not pin this TaskManager to CPU %d, running unpinned: %s", cpu, exc)
        return
    try:
        os.sched_setscheduler(0, os.SCHED_BATCH, os.sched_param(0))
    except (AttributeError, OSError) as exc:
        log.info("Could not schedule this TaskManager as a batch process: %s", exc)


def main(argv: Sequence[str] | None = None) -> int:
    """The TaskManager process of a mini-cluster (or one started by hand).

    With ``--bootstrap-stdin`` the first line of standard input is the cluster key and
    the second a JSON list of ``key=value`` settings; the pipe then stays open and its
    end means the parent died. Otherwise the key comes from ``--secret-file`` or
    ``PENSTOCK_CLUSTER_SECRET``.
    """
    args = _parse_args(argv)
    tune_switch_interval()
    logging.basicConfig(
        level=args.log_level.upper(),
        format="%(asctime)s %(levelname)-7s %(processName)s[%(process)d] %(threadName)s "
        "%(name)s: %(message)s",
    )
    if args.cpu is not None:
        pin_to_cpu(args.cpu)
    try:
        if args.bootstrap_stdin:
            # Started by a mini-cluster, in a process group of its own, so a terminal's
            # Ctrl-C goes to the parent, which cancels the job and shuts this process
            # down in order. A SIGINT sent here all the same is left to the parent too.
            signal.signal(signal.SIGINT, signal.SIG_IGN)
            secret = sys.stdin.buffer.readline().strip()
            settings = json.loads(sys.stdin.buffer.readline() or b"[]")
            config = Configuration.from_dynamic_properties([*settings, *args.dynamic])
        else:
            secret = load_secret(args.secret_file)
            config = Configuration.from_dynamic_properties(args.dynamic)
        address = parse_address(args.jobmanager)
        return run_task_manager(
            address, secret, config, args.slots, args.tm_id, watch_stdin=args.bootstrap_stdin
        )
    except PenstockError as exc:
        print(f"taskmanager: error: {exc}", file=sys.stderr)
        return 1


def exit_process(status: int) -> None:
    """Ends the process even if a task thread is stuck in user code."""
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(status)


if __name__ == "__main__":
    exit_process(main())
