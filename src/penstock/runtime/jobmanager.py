"""JobManager: slots, scheduling with slot sharing, deployment, task states, failures.

Theory of operation. All state of the JobManager (TaskManagers and their slots, jobs
and their executions) is owned by one thread, its *main thread*, like Flink's
JobMaster main-thread executor. Everything else (connection readers, clients, timers)
hands it work through ``_run_in_main``; so nothing here takes a lock, and a message
from a TaskManager can never race with a deployment or a cancellation. The main thread
never waits for a peer either: what it sends to a TaskManager or a remote client is
written by that connection's ``Outbox``, so a peer that stops reading stops nobody else.

A job goes through::

    WAITING (for slots) → RUNNING → FINISHED
                        ↘ FAILING / CANCELLING → (all tasks terminal, or timeout) → done

Scheduling follows Flink's slot sharing: within one slot sharing group, subtask *i* of
every vertex goes to the group's shared slot *i*, so a group needs as many slots as its
largest parallelism, and subtasks of different groups never share a slot. Shared slots
are spread over the TaskManagers with free slots in turn. A job that does not fit waits
for TaskManagers to register, up to a timeout, and then fails with a ``ClusterError``.

Producers and consumers are deployed at once: a consumer asks for a partition that may
not be registered yet, and the network stack retries (``PartitionNotFound`` with
backoff, the server waits for registration), as Flink's does.

While a job runs, a client that asked for them (``submit(..., on_metrics=...)``) gets a
``JobMetricsUpdate`` about once a second, from the metrics of the latest heartbeats,
and a final one with every task's final metrics just before the job's result.

On the first FAILED task, or when a TaskManager is lost (its control connection
closes, or its heartbeat is older than ``heartbeat.timeout``), the job cancels every
other task, waits (bounded) until all are terminal, and ends with that first failure.
Heartbeats also go the other way: a TaskManager or remote client that has heard
nothing else from the JobManager for ``heartbeat.interval`` gets a
``JobManagerHeartbeat`` (its outbox sends it), so that it notices a JobManager that
stopped or was cut off.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import queue
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from enum import Enum
from typing import Final, Protocol

from penstock.config import HEARTBEAT_INTERVAL, Configuration, heartbeat_timeout_ms
from penstock.errors import ClusterError, IllegalStateError, RemoteError, SerializationError
from penstock.ids import ExecutionAttemptID, JobID
from penstock.runtime.control import (
    CancelJob,
    CancelTask,
    CollectAck,
    CollectBatch,
    ControlConnection,
    ControlMessage,
    DeployTask,
    Heartbeat,
    JobManagerHeartbeat,
    JobMetricsUpdate,
    JobResult,
    Outbox,
    RegisterTaskManager,
    RegistrationAccepted,
    ReleaseJob,
    SerializedValue,
    Shutdown,
    SubmitJob,
    TaskStateChanged,
    name_unpicklable,
)
from penstock.runtime.deployment import TaskDeploymentDescriptor, build_deployment
from penstock.runtime.job_graph import JobGraph
from penstock.runtime.states import ExecutionState

__all__ = [
    "DEFAULT_CANCEL_TIMEOUT_S",
    "DEFAULT_SLOT_REQUEST_TIMEOUT_S",
    "METRICS_UPDATE_INTERVAL_S",
    "JobListener",
    "JobManager",
    "SlotRef",
    "TaskManagerGateway",
    "plan_slots",
    "required_slots",
]

log = logging.getLogger(__name__)

DEFAULT_SLOT_REQUEST_TIMEOUT_S: Final = 60.0
"""How long a job waits for enough free slots (Flink's slot.request.timeout is 5 min)."""

DEFAULT_CANCEL_TIMEOUT_S: Final = 10.0
"""How long a failing or cancelled job waits for its tasks to reach a terminal state."""

METRICS_UPDATE_INTERVAL_S: Final = 1.0
"""How often a job's metrics observer gets a ``JobMetricsUpdate`` (TaskManagers send
metrics with their heartbeats at least once a second)."""

_IDLE_WAKEUP_S: Final = 1.0

_LAST_WORDS_S: Final = 2.0
"""How long a last message (``Shutdown`` to every TaskManager, a refusal to a client)
may take to be written before its connection is closed all the same."""

_SYMPTOMS_OF_A_LOST_PEER: Final = frozenset(
    f"penstock.errors.{name}"
    for name in ("RemoteTransportError", "LocalTransportError", "PartitionNotFoundError")
)
_SYMPTOMS_OF_ANOTHER_FAILURE: Final = _SYMPTOMS_OF_A_LOST_PEER | frozenset(
    f"penstock.errors.{name}"
    for name in ("ProducerFailedError", "PartitionReleasedError", "TaskCancelledError")
)


def _is_symptom(error: BaseException | None) -> bool:
    """Whether a task failed only because another task or TaskManager failed first."""
    return isinstance(error, RemoteError) and error.type_name in _SYMPTOMS_OF_ANOTHER_FAILURE


class TaskManagerGateway(Protocol):
    """How the JobManager reaches one TaskManager (from its main thread: never blocks)."""

    def send(self, message: ControlMessage) -> None:
        """Sends a message; raises ClusterError when the TaskManager is unreachable."""
        ...

    def close(self, drain_s: float = 0.0) -> None:
        """Drops the connection, after up to ``drain_s`` for messages still unsent."""
        ...


class JobListener(Protocol):
    """Who submitted a job: receives its collected records and its end.

    Both are called from the JobManager's main thread and must not block.
    """

    def on_collect(self, batch: CollectBatch) -> None:
        """A batch of a collect sink; the listener acks it with ``ack_collect`` later."""
        ...

    def on_result(self, result: JobResult) -> None:
        """The job ended."""
        ...


def _is_symptom_of_a_lost_peer(error: BaseException | None) -> bool:
    while isinstance(error, RemoteError):
        if error.type_name in _SYMPTOMS_OF_A_LOST_PEER:
            return True
        error = error.__cause__
    return False


# -- scheduling -----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SlotRef:
    """A shared slot: the ``index``-th slot the job took on TaskManager ``tm_id``."""

    tm_id: str
    index: int


def required_slots(job: JobGraph) -> int:
    """Slots the job needs: per slot sharing group, its largest parallelism."""
    groups: dict[str, int] = {}
    for vertex in job.vertices:
        group = vertex.slot_sharing_group
        groups[group] = max(groups.get(group, 0), vertex.parallelism)
    return sum(groups.values())


def plan_slots(job: JobGraph, free: Mapping[str, int]) -> dict[tuple[int, int], SlotRef] | None:
    """Places every subtask in a shared slot, or returns None if the slots do not suffice.

    Args:
        job: The job.
        free: Free slots per TaskManager id, in the order to fill them.

    Returns:
        For each (vertex position, subtask index), its slot. Subtask *i* of every
        vertex of a group shares the group's slot *i*; groups never share a slot;
        slots are taken from the TaskManagers in turn.
    """
    groups: dict[str, int] = {}
    for vertex in job.vertices:
        group = vertex.slot_sharing_group
        groups[group] = max(groups.get(group, 0), vertex.parallelism)
    if sum(groups.values()) > sum(max(0, count) for count in free.values()):
        return None
    remaining = {tm_id: count for tm_id, count in free.items() if count > 0}
    taken: dict[str, int] = dict.fromkeys(remaining, 0)
    order = itertools.cycle(list(remaining))
    shared: dict[tuple[str, int], SlotRef] = {}
    for group, size in groups.items():
        for index in range(size):
            tm_id = next(order)
            while remaining[tm_id] == 0:
                tm_id = next(order)
            remaining[tm_id] -= 1
            shared[group, index] = SlotRef(tm_id, taken[tm_id])
            taken[tm_id] += 1
    return {
        (position, index): shared[vertex.slot_sharing_group, index]
        for position, vertex in enumerate(job.vertices)
        for index in range(vertex.parallelism)
    }


# -- state ----------------------------------------------------------------------------


@dataclass(slots=True)
class _TaskManager:
    registration: RegisterTaskManager
    gateway: TaskManagerGateway
    last_heartbeat: float
    used_slots: int = 0

    @property
    def free_slots(self) -> int:
        return self.registration.slots - self.used_slots

    def describe(self) -> str:
        reg = self.registration
        host, port = reg.data_address
        return f"TaskManager {reg.tm_id} (pid {reg.pid}, data port {host}:{port})"


@dataclass(slots=True)
class _Execution:
    execution_id: ExecutionAttemptID
    task_name: str
    tm_id: str
    state: ExecutionState = ExecutionState.DEPLOYING
    metrics: dict[str, float] = field(default_factory=dict)
    sampled_at: float = 0.0


class _JobStatus(Enum):
    WAITING = "WAITING"
    RUNNING = "RUNNING"
    FAILING = "FAILING"
    CANCELLING = "CANCELLING"
    DONE = "DONE"


@dataclass(slots=True)
class _Job:
    graph: JobGraph
    listener: JobListener
    submitted: float
    slot_deadline: float
    status: _JobStatus = _JobStatus.WAITING
    executions: dict[ExecutionAttemptID, _Execution] = field(default_factory=dict)
    slots: dict[str, int] = field(default_factory=dict)
    started: float = 0.0
    first_error: BaseException | None = None
    cancel_deadline: float = 0.0
    on_metrics: Callable[[JobMetricsUpdate], None] | None = None
    next_metrics: float = 0.0


class JobManager:
    """Schedules jobs onto the slots of registered TaskManagers and tracks them.

    Args:
        config: The cluster configuration (``heartbeat.timeout``).
        slot_request_timeout_s: How long a job waits for enough slots.
        cancel_timeout_s: How long a failing job waits for its tasks to stop.
        name: Names the main thread and log lines.

    Raises:
        ConfigurationError: ``heartbeat.timeout`` is shorter than ``heartbeat.interval``.
    """

    def __init__(
        self,
        config: Configuration | None = None,
        slot_request_timeout_s: float = DEFAULT_SLOT_REQUEST_TIMEOUT_S,
        cancel_timeout_s: float = DEFAULT_CANCEL_TIMEOUT_S,
        name: str = "jobmanager",
    ) -> None:
        self.config = Configuration(config)
        self.name = name
        self._heartbeat_timeout_s = heartbeat_timeout_ms(self.config) / 1000
        self._heartbeat_interval_ms = self.config.get(HEARTBEAT_INTERVAL)
        self._slot_request_timeout_s = slot_request_timeout_s
        self._cancel_timeout_s = cancel_timeout_s
        self._inbox: queue.SimpleQueue[Callable[[], None] | None] = queue.SimpleQueue()
        self._task_managers: dict[str, _TaskManager] = {}
        self._jobs: dict[JobID, _Job] = {}
        self._owner: dict[ExecutionAttemptID, JobID] = {}
        # Read by other threads under the condition only.
        self._changed = threading.Condition()
        self._tm_count = 0
        self._lost_pids: set[int] = set()
        self._stopping: str | None = None  # why, once shutdown has begun
        self._job_status: dict[JobID, _JobStatus] = {}
        self._running_tasks: dict[JobID, int] = {}
        self._thread = threading.Thread(target=self._main_loop, name=f"{name}-main", daemon=True)
        self._stopped = threading.Event()

    # -- lifecycle -------------------------------------------------------------------

    def start(self) -> None:
        """Starts the main thread."""
        self._thread.start()

    def shutdown(self, reason: str = "the JobManager shuts down") -> None:
        """Cancels running jobs, tells every TaskManager to exit, stops the main thread."""
        if self._stopped.is_set() or not self._thread.is_alive():
            self._stopped.set()
            return
        done = threading.Event()

        def stop() -> None:
            # Last words: every client hears how its job ended, every TaskManager that
            # it is to exit, written within one deadline before the connections close.
            last_words: list[TaskManagerGateway | _ConnectionListener] = []
            for job in list(self._jobs.values()):
                if isinstance(job.listener, _ConnectionListener):
                    last_words.append(job.listener)
                error = ClusterError(f"job {job.graph.name!r} aborted: {reason}")
                self._complete(job, error, cancelled=False)
            for tm in self._task_managers.values():
                with contextlib.suppress(ClusterError):
                    tm.gateway.send(Shutdown(reason))
                last_words.append(tm.gateway)
            self._task_managers.clear()
            deadline = time.monotonic() + _LAST_WORDS_S
            for peer in last_words:
                peer.close(drain_s=max(0.0, deadline - time.monotonic()))
            done.set()

        with self._changed:
            self._stopping = reason
            self._run_in_main(stop)
        done.wait(timeout=self._cancel_timeout_s)
        self._stopped.set()
        self._inbox.put(None)
        self._thread.join(timeout=self._cancel_timeout_s)

    def _run_in_main(self, action: Callable[[], None]) -> None:
        self._inbox.put(action)

    def _main_loop(self) -> None:
        while not self._stopped.is_set():
            try:
                action = self._inbox.get(timeout=self._next_wakeup())
            except queue.Empty:
                action = None
            # Each step on its own: an error in one is logged, and the thread, which
            # every job and client depends on, goes on.
            for step in (action, self._check_deadlines, self._send_metric_updates):
                if step is None:
                    continue
                try:
                    step()
                except Exception:
                    log.exception("%s: error in the main thread", self.name)

    def _next_wakeup(self) -> float:
        now = time.monotonic()
        wakeup = _IDLE_WAKEUP_S
        if self._task_managers:
            wakeup = min(wakeup, self._heartbeat_timeout_s / 4)
        for job in self._jobs.values():
            if job.status is _JobStatus.WAITING:
                wakeup = min(wakeup, job.slot_deadline - now)
            elif job.status in (_JobStatus.FAILING, _JobStatus.CANCELLING):
                wakeup = min(wakeup, job.cancel_deadline - now)
            if job.on_metrics is not None and job.status is not _JobStatus.WAITING:
                wakeup = min(wakeup, job.next_metrics - now)
        return max(wakeup, 0.01)

    # -- TaskManagers ----------------------------------------------------------------

    def add_task_manager(
        self, registration: RegisterTaskManager, gateway: TaskManagerGateway
    ) -> None:
        """Registers a TaskManager (from any thread); tells it to exit during shutdown."""
        with self._changed:
            # Under the lock that shutdown takes to queue its last step, as for jobs.
            reason = self._stopping
            if reason is None:
                self._run_in_main(lambda: self._add_task_manager(registration, gateway))
                return
        with contextlib.suppress(ClusterError):
            gateway.send(Shutdown(reason))
        gateway.close(drain_s=_LAST_WORDS_S)

    def _add_task_manager(
        self, registration: RegisterTaskManager, gateway: TaskManagerGateway
    ) -> None:
        if registration.tm_id in self._task_managers or self._stopped.is_set():
            log.warning("%s: refusing duplicate TaskManager %s", self.name, registration.tm_id)
            gateway.close()
            return
        tm = _TaskManager(registration, gateway, time.monotonic())
        self._task_managers[registration.tm_id] = tm
        try:
            gateway.send(RegistrationAccepted(registration.tm_id))
        except ClusterError as exc:
            self._lose_task_manager(registration.tm_id, str(exc))
            return
        log.info("%s: registered %s with %d slots", self.name, tm.describe(), registration.slots)
        with self._changed:
            self._tm_count = len(self._task_managers)
            self._changed.notify_all()
        for job in list(self._jobs.values()):
            if job.status is _JobStatus.WAITING:
                self._try_schedule(job)

    def on_message(self, tm_id: str, message: ControlMessage) -> None:
        """A message from TaskManager ``tm_id`` (from any thread)."""
        self._run_in_main(lambda: self._on_message(tm_id, message))

    def task_manager_lost(self, tm_id: str, reason: str) -> None:
        """TaskManager ``tm_id`` is gone (from any thread)."""
        self._run_in_main(lambda: self._lose_task_manager(tm_id, reason))

    def wait_for_task_managers(self, count: int, timeout_s: float | None) -> bool:
        """Waits until at least ``count`` TaskManagers are registered."""
        with self._changed:
            return self._changed.wait_for(lambda: self._tm_count >= count, timeout_s)

    @property
    def num_task_managers(self) -> int:
        with self._changed:
            return self._tm_count

    @property
    def lost_task_manager_pids(self) -> frozenset[int]:
        """The process ids of the TaskManagers this JobManager lost while it ran."""
        with self._changed:
            return frozenset(self._lost_pids)

    def _on_message(self, tm_id: str, message: ControlMessage) -> None:
        tm = self._task_managers.get(tm_id)
        if tm is None:
            return
        tm.last_heartbeat = time.monotonic()
        if isinstance(message, TaskStateChanged):
            self._on_task_state(message)
        elif isinstance(message, Heartbeat):
            for execution_id, metrics in message.metrics.items():
                execution = self._execution(execution_id)
                # A heartbeat sampled before its task ended may come after the task's
                # final state, which carries its final metrics: those stand.
                if execution is not None and not execution.state.is_terminal:
                    execution.metrics = metrics
                    execution.sampled_at = tm.last_heartbeat
        elif isinstance(message, CollectBatch):
            job = self._jobs.get(message.job_id)
            if job is not None and job.status is not _JobStatus.DONE:
                job.listener.on_collect(message)
        else:
            log.warning("%s: unexpected %s from %s", self.name, type(message).__name__, tm_id)

    def _lose_task_manager(self, tm_id: str, reason: str) -> None:
        tm = self._task_managers.pop(tm_id, None)
        if tm is None:
            return
        tm.gateway.close()
        with self._changed:
            self._tm_count = len(self._task_managers)
            if not self._stopped.is_set():
                self._lost_pids.add(tm.registration.pid)
            self._changed.notify_all()
        if self._stopped.is_set():
            return
        log.warning("%s: lost %s: %s", self.name, tm.describe(), reason)
        error = ClusterError(f"{tm.describe()} is lost: {reason}")
        for job in list(self._jobs.values()):
            lost = [e for e in job.executions.values() if e.tm_id == tm_id]
            if not lost:
                continue
            for execution in lost:
                if not execution.state.is_terminal:
                    execution.state = ExecutionState.FAILED
            job.slots.pop(tm_id, None)
            self._fail(job, error)

    def _check_deadlines(self) -> None:
        now = time.monotonic()
        for tm_id, tm in list(self._task_managers.items()):
            if now - tm.last_heartbeat > self._heartbeat_timeout_s:
                timeout_ms = round(self._heartbeat_timeout_s * 1000)
                self._lose_task_manager(tm_id, f"heartbeat timed out after {timeout_ms} ms")
        for job in list(self._jobs.values()):
            if job.status is _JobStatus.WAITING and now >= job.slot_deadline:
                free = sum(tm.free_slots for tm in self._task_managers.values())
                error = ClusterError(
                    f"Could not acquire the minimum required resources: job "
                    f"{job.graph.name!r} needs {required_slots(job.graph)} slots, but "
                    f"{len(self._task_managers)} TaskManagers have {free} free slots after "
                    f"waiting {self._slot_request_timeout_s:g} s. Start more TaskManagers or "
                    "raise taskmanager.numberOfTaskSlots."
                )
                self._complete(job, error, cancelled=False)
            elif (
                job.status in (_JobStatus.FAILING, _JobStatus.CANCELLING)
                and now >= job.cancel_deadline
            ):
                stuck = [e.task_name for e in job.executions.values() if not e.state.is_terminal]
                log.warning("%s: tasks did not stop in time: %s", self.name, ", ".join(stuck))
                self._complete(job, job.first_error, job.status is _JobStatus.CANCELLING)

    # -- jobs ------------------------------------------------------------------------

    def submit(
        self,
        job: JobGraph,
        listener: JobListener,
        on_metrics: Callable[[JobMetricsUpdate], None] | None = None,
    ) -> None:
        """Schedules and deploys ``job`` (from any thread); ``listener`` hears the rest.

        Args:
            job: The job.
            listener: Gets the collected batches and the result.
            on_metrics: Gets a ``JobMetricsUpdate`` about once a second while the job
                runs and a final one before the result; called from the main thread,
                it must not block.

        Raises:
            ClusterError: The JobManager is shutting down.
            IllegalStateError: The job was submitted before.
        """
        now = time.monotonic()
        entry = _Job(job, listener, now, now + self._slot_request_timeout_s)
        entry.on_metrics = on_metrics
        with self._changed:
            # Under the lock that shutdown takes to queue its last step: a job either
            # comes before that step, which ends it, or is refused here.
            if self._stopping is not None:
                msg = f"job {job.name!r} refused: {self._stopping}"
                raise ClusterError(msg)
            if job.job_id in self._job_status:
                msg = f"job {job.job_id} was submitted already"
                raise IllegalStateError(msg)
            self._job_status[job.job_id] = _JobStatus.WAITING
            self._run_in_main(lambda: self._submit(entry))

    def cancel_job(self, job_id: JobID) -> None:
        """Cancels a job (from any thread); its listener gets a cancelled result."""
        self._run_in_main(lambda: self._cancel_job(job_id))

    def ack_collect(self, ack: CollectAck) -> None:
        """The client consumed a collected batch (from any thread)."""
        self._run_in_main(lambda: self._ack_collect(ack))

    def wait_until_running(self, job_id: JobID, timeout_s: float | None) -> bool:
        """Waits until every task of the job is RUNNING (or the job ended: False)."""

        def ready() -> bool:
            status = self._job_status.get(job_id)
            return status is _JobStatus.DONE or self._running_tasks.get(job_id, -1) == 0

        with self._changed:
            self._changed.wait_for(ready, timeout_s)
            return self._running_tasks.get(job_id, -1) == 0

    def _submit(self, job: _Job) -> None:
        self._jobs[job.graph.job_id] = job
        log.info("%s: job %r submitted", self.name, job.graph.name)
        self._try_schedule(job)

    def _try_schedule(self, job: _Job) -> None:
        free = {tm_id: tm.free_slots for tm_id, tm in self._task_managers.items()}
        plan = plan_slots(job.graph, free)
        if plan is None:
            return
        locations = {
            key: self._task_managers[slot.tm_id].registration.data_address
            for key, slot in plan.items()
        }
        for slot in set(plan.values()):
            self._task_managers[slot.tm_id].used_slots += 1
            job.slots[slot.tm_id] = job.slots.get(slot.tm_id, 0) + 1
        descriptors = build_deployment(job.graph, locations)
        positions = {vertex.id: position for position, vertex in enumerate(job.graph.vertices)}
        job.status = _JobStatus.RUNNING
        job.started = time.monotonic()
        job.next_metrics = job.started + METRICS_UPDATE_INTERVAL_S
        deploy: list[tuple[_TaskManager, TaskDeploymentDescriptor]] = []
        for tdd in descriptors:
            slot = plan[positions[tdd.vertex.id], tdd.subtask_index]
            job.executions[tdd.execution_id] = _Execution(
                tdd.execution_id, tdd.task_name, slot.tm_id
            )
            self._owner[tdd.execution_id] = job.graph.job_id
            deploy.append((self._task_managers[slot.tm_id], tdd))
        self._publish(job)
        for position, (tm, tdd) in enumerate(deploy):
            try:
                tm.gateway.send(DeployTask(tdd.execution_id, SerializedValue.of(tdd)))
            except ClusterError as exc:
                self._lose_task_manager(tm.registration.tm_id, str(exc))
                return
            except Exception as exc:  # e.g. a user function that cannot be pickled
                # Tasks never sent never report: they end here, or the job would wait
                # for them until its cancel timeout.
                for _, unsent in deploy[position:]:
                    job.executions[unsent.execution_id].state = ExecutionState.CANCELED
                job.executions[tdd.execution_id].state = ExecutionState.FAILED
                self._fail(job, RemoteError.from_exception(_unshippable(tdd, exc)))
                return

    def _on_task_state(self, message: TaskStateChanged) -> None:
        execution = self._execution(message.execution_id)
        if execution is None or execution.state.is_terminal:
            return
        job = self._jobs[self._owner[message.execution_id]]
        if execution.state is ExecutionState.CANCELING and not message.state.is_terminal:
            # Sent before the task heard of its cancel: it stays CANCELING until it
            # reports how it ended, as in Flink.
            return
        state = message.state
        if (
            execution.state is ExecutionState.CANCELING
            and state is ExecutionState.FAILED
            and _is_symptom(message.error)
        ):
            # It failed only because the cancel reached a peer first (its consumer,
            # cancelled, released the partition it wrote): as in Flink, a task that
            # fails while it is being cancelled ends CANCELED. A failure of its own
            # stays FAILED, and may be the job's root cause.
            state = ExecutionState.CANCELED
        execution.state = state
        if message.metrics is not None:
            execution.metrics = message.metrics
            execution.sampled_at = time.monotonic()
        log.debug("%s: %s is %s", self.name, execution.task_name, state.value)
        if state is ExecutionState.FAILED:
            error = message.error or RemoteError("unknown", f"{execution.task_name} failed")
            self._fail(job, error)
        elif state is ExecutionState.CANCELED and job.status is _JobStatus.RUNNING:
            error = RemoteError(
                "penstock.errors.TaskCancelledError",
                f"{execution.task_name} was cancelled while the job was running",
            )
            self._fail(job, error)
        self._publish(job)
        if all(e.state.is_terminal for e in job.executions.values()):
            if job.status is _JobStatus.RUNNING:
                self._complete(job, None, cancelled=False)
            else:
                self._complete(job, job.first_error, job.status is _JobStatus.CANCELLING)

    def _fail(self, job: _Job, error: BaseException) -> None:
        if job.status is _JobStatus.FAILING and (
            (isinstance(error, ClusterError) and _is_symptom_of_a_lost_peer(job.first_error))
            or (_is_symptom(job.first_error) and not _is_symptom(error))
        ):
            # The first report was a symptom: a consumer noticed its producer's failure
            # (or a lost TaskManager's connection) before the producer's own report, or
            # the loss of its control connection, arrived here. The root cause wins.
            job.first_error = error
        if job.status is _JobStatus.RUNNING:
            log.info("%s: job %r fails: %s", self.name, job.graph.name, error)
            job.first_error = error
            job.status = _JobStatus.FAILING
            job.cancel_deadline = time.monotonic() + self._cancel_timeout_s
            self._cancel_tasks(job)
        if all(e.state.is_terminal for e in job.executions.values()):
            self._complete(job, job.first_error, job.status is _JobStatus.CANCELLING)

    def _cancel_job(self, job_id: JobID) -> None:
        job = self._jobs.get(job_id)
        if job is None or job.status is _JobStatus.DONE:
            return
        if job.status is _JobStatus.WAITING:
            self._complete(job, None, cancelled=True)
            return
        if job.status is _JobStatus.RUNNING:
            log.info("%s: cancelling job %r", self.name, job.graph.name)
            job.status = _JobStatus.CANCELLING
            job.cancel_deadline = time.monotonic() + self._cancel_timeout_s
            self._cancel_tasks(job)
            if all(e.state.is_terminal for e in job.executions.values()):
                self._complete(job, None, cancelled=True)

    def _cancel_tasks(self, job: _Job) -> None:
        for execution in job.executions.values():
            if execution.state.is_terminal:
                continue
            tm = self._task_managers.get(execution.tm_id)
            if tm is None:
                continue
            execution.state = ExecutionState.CANCELING
            try:
                tm.gateway.send(CancelTask(execution.execution_id))
            except ClusterError as exc:
                log.warning("%s: cannot cancel %s: %s", self.name, execution.task_name, exc)

    def _ack_collect(self, ack: CollectAck) -> None:
        execution = self._execution(ack.execution_id)
        if execution is None or execution.state.is_terminal:
            return
        tm = self._task_managers.get(execution.tm_id)
        if tm is not None:
            try:
                tm.gateway.send(ack)
            except ClusterError as exc:
                log.debug("%s: ack not delivered: %s", self.name, exc)

    def _complete(self, job: _Job, error: BaseException | None, cancelled: bool) -> None:
        if job.status is _JobStatus.DONE:
            return
        job.status = _JobStatus.DONE
        for tm_id, count in job.slots.items():
            tm = self._task_managers.get(tm_id)
            if tm is not None:
                tm.used_slots -= count
        job.slots.clear()
        self._release_job(job)
        self._jobs.pop(job.graph.job_id, None)
        for execution_id in job.executions:
            self._owner.pop(execution_id, None)
        runtime_ms = round((time.monotonic() - job.started) * 1000) if job.started else 0
        metrics = {e.task_name: dict(e.metrics) for e in job.executions.values()}
        result = JobResult(job.graph.job_id, job.graph.name, runtime_ms, metrics, error, cancelled)
        outcome = "CANCELED" if cancelled else ("FAILED" if error is not None else "FINISHED")
        log.info("%s: job %r %s after %d ms", self.name, job.graph.name, outcome, runtime_ms)
        self._publish(job)
        self._send_metric_update(job, final=True, outcome=outcome)
        try:
            job.listener.on_result(result)
        except Exception:
            log.exception("%s: the listener of job %r failed", self.name, job.graph.name)
        for other in list(self._jobs.values()):
            if other.status is _JobStatus.WAITING:
                self._try_schedule(other)

    def _release_job(self, job: _Job) -> None:
        """Tells each TaskManager the job ran on to release what it left there."""
        for tm_id in sorted({execution.tm_id for execution in job.executions.values()}):
            tm = self._task_managers.get(tm_id)
            if tm is None:
                continue
            try:
                tm.gateway.send(ReleaseJob(job.graph.job_id))
            except ClusterError as exc:
                log.debug("%s: %s cannot release job %r: %s", self.name, tm_id, job.graph.name, exc)

    def _send_metric_updates(self) -> None:
        now = time.monotonic()
        for job in list(self._jobs.values()):
            if (
                job.on_metrics is not None
                and job.status is not _JobStatus.WAITING
                and now >= job.next_metrics
            ):
                job.next_metrics = now + METRICS_UPDATE_INTERVAL_S
                self._send_metric_update(job, final=False)

    def _send_metric_update(self, job: _Job, final: bool, outcome: str = "") -> None:
        if job.on_metrics is None:
            return
        started = job.started
        now = time.monotonic()

        def since_start(moment: float) -> int:
            return round((moment - started) * 1000) if started and moment else 0

        executions = list(job.executions.values())
        update = JobMetricsUpdate(
            job.graph.job_id,
            job.graph.name,
            since_start(now),
            {e.task_name: dict(e.metrics) for e in executions},
            {e.task_name: e.state.name for e in executions},
            {e.task_name: since_start(e.sampled_at) for e in executions},
            final,
            outcome,
        )
        try:
            job.on_metrics(update)
        except Exception:
            log.exception("%s: the metrics observer of job %r failed", self.name, job.graph.name)

    def _execution(self, execution_id: ExecutionAttemptID) -> _Execution | None:
        job_id = self._owner.get(execution_id)
        if job_id is None:
            return None
        job = self._jobs.get(job_id)
        return None if job is None else job.executions.get(execution_id)

    def _publish(self, job: _Job) -> None:
        with self._changed:
            job_id = job.graph.job_id
            self._job_status[job_id] = job.status
            if job.status is _JobStatus.RUNNING:
                self._running_tasks[job_id] = sum(
                    1 for e in job.executions.values() if e.state is not ExecutionState.RUNNING
                )
            else:
                self._running_tasks.pop(job_id, None)
            self._changed.notify_all()

    # -- connections -----------------------------------------------------------------

    def serve_connection(self, connection: ControlConnection) -> None:
        """Serves an authenticated control connection until it closes.

        The first message says who the peer is: ``RegisterTaskManager`` (a TaskManager,
        whose messages are read until its connection closes, which loses it) or
        ``SubmitJob`` (a client, which gets the job's collected records and result).
        """
        try:
            first = connection.recv()
        except (EOFError, ClusterError) as exc:
            log.warning("%s: %s left before saying who it is: %s", self.name, connection.peer, exc)
            connection.close()
            return
        if isinstance(first, RegisterTaskManager):
            self._serve_task_manager(first, connection)
        elif isinstance(first, SubmitJob):
            self._serve_client(first, connection)
        else:
            log.warning(
                "%s: %s opened with %s; closing", self.name, connection.peer, type(first).__name__
            )
            connection.close()

    def _outbox(self, connection: ControlConnection) -> Outbox:
        """Writes to ``connection`` for the main thread, with heartbeats in the silences."""
        heartbeat = JobManagerHeartbeat(self._heartbeat_interval_ms)
        return Outbox(connection, self.name, heartbeat, self._heartbeat_interval_ms / 1000)

    def _serve_task_manager(
        self, registration: RegisterTaskManager, connection: ControlConnection
    ) -> None:
        tm_id = registration.tm_id
        self.add_task_manager(registration, self._outbox(connection))
        reason = "the control connection was closed"
        try:
            while True:
                self.on_message(tm_id, connection.recv())
        except EOFError:
            pass
        except ClusterError as exc:
            reason = str(exc)
        self.task_manager_lost(tm_id, reason)

    def _serve_client(self, submission: SubmitJob, connection: ControlConnection) -> None:
        outbox = self._outbox(connection)
        listener = _ConnectionListener(outbox)
        try:
            job = _load_job(submission)
            self.submit(job, listener, listener.on_metrics if submission.metrics else None)
        except (ClusterError, IllegalStateError) as exc:
            result = JobResult(submission.job_id, submission.job_name, 0, {}, exc)
            log.info("%s: refused job %r: %s", self.name, submission.job_name, exc)
            with contextlib.suppress(ClusterError):  # the client left: nobody to tell
                outbox.send(result)
            outbox.close(drain_s=_LAST_WORDS_S)
            return
        try:
            while True:
                message = connection.recv()
                if isinstance(message, CollectAck):
                    self.ack_collect(message)
                elif isinstance(message, CancelJob):
                    self.cancel_job(message.job_id)
        except (EOFError, ClusterError):
            pass
        # A client that goes away takes its job with it.
        if not listener.done.is_set():
            self.cancel_job(job.job_id)
        listener.close()


def _unshippable(tdd: TaskDeploymentDescriptor, error: Exception) -> SerializationError:
    """``error`` (raised pickling ``tdd``), named after the part of the task that failed."""
    parts: list[tuple[str, object]] = [
        (f"the function of operator {spec.name!r}", spec.factory) for spec in tdd.vertex.operators
    ]
    for produced in tdd.produced:
        routing = produced.partitioner
        parts += [
            (f"the key selector of the {routing} output", routing.key_selector),
            (f"the partitioner of the {routing} output", routing.partitioner),
            (f"the serializer of the {routing} output", produced.serializer),
        ]
    parts += [
        (f"the serializer of input {gate.input_index}", gate.serializer) for gate in tdd.consumed
    ]
    return name_unpicklable(f"{tdd.task_name} cannot be sent to its TaskManager", parts, error)


def _load_job(submission: SubmitJob) -> JobGraph:
    """The submitted job, or a ClusterError saying why this process cannot load it."""
    try:
        job: object = submission.job.get()  # whatever the peer pickled: checked below
    except Exception as exc:
        hint = (
            " A module the job's functions come from must be importable where the "
            "JobManager and the TaskManagers run: installed there, or beside the job's "
            "script, which ships it with the job"
            if isinstance(exc, ImportError)
            else ""
        )
        msg = (
            f"the JobManager cannot load job {submission.job_name!r}: "
            f"{type(exc).__name__}: {exc}.{hint}"
        )
        raise ClusterError(msg) from exc
    if not isinstance(job, JobGraph) or job.job_id != submission.job_id:
        msg = f"the submission of job {submission.job_name!r} does not hold that job"
        raise ClusterError(msg)
    return job


class _ConnectionListener:
    """Forwards a job's batches, metrics and result to a remote client, never waiting.

    Everything goes through the client's outbox: the main thread calls these, and a
    client that stops reading must not stop it.
    """

    def __init__(self, outbox: Outbox) -> None:
        self._outbox = outbox
        self.done = threading.Event()

    def on_collect(self, batch: CollectBatch) -> None:
        self._send(batch, "batch dropped")

    def on_metrics(self, update: JobMetricsUpdate) -> None:
        # Only the newest of the updates not yet written matters.
        self._send(update, "metrics dropped", supersede=JobMetricsUpdate)

    def on_result(self, result: JobResult) -> None:
        self.done.set()
        self._send(result, "result dropped")

    def close(self, drain_s: float = 0.0) -> None:
        self._outbox.close(drain_s)

    def _send(self, message: ControlMessage, dropped: str, supersede: object = None) -> None:
        try:
            self._outbox.send(message, supersede)
        except ClusterError:
            log.debug("client %s gone; %s", self._outbox.peer, dropped)
