"""Running a job: ``execute``, ``execute_and_collect`` and ``JobExecutionResult``.

``execution.target`` picks where the job runs:

* ``local``: a JobManager and one TaskExecutor in this process, with as many slots as
  the job needs; control messages are method calls, data still goes through the
  network stack (local channels);
* ``minicluster`` (the default): a ``MiniCluster`` with as many TaskManager processes
  as the job needs (see ``task_managers_for``), closed when the job ends;
* ``remote``: a JobManager started by hand (``penstock jobmanager``) at
  ``jobmanager.rpc.address``:``jobmanager.rpc.port``, reached over the authenticated
  control channel with the key in ``PENSTOCK_CLUSTER_SECRET``.

Whatever the target, a job is a *session*: a stream of events (collected batches, live
metric updates if asked for, then the result), acknowledgements for the batches, and a
way to cancel. Ctrl-C while waiting cancels the job, waits (bounded) for it to stop,
releases the cluster and re-raises ``KeyboardInterrupt``.

Observing jobs. A program that runs other code's jobs, such as ``penstock run JOB.py``,
wraps it in ``observe_jobs(callback)``: every ``execute`` and ``execute_and_collect`` in
that context (this thread, or tasks and threads started with a copy of it) asks the
JobManager for a ``JobMetricsUpdate`` about once a second and hands each one to the
callback, the last one (``final``) with the final metrics. ``configure_jobs(config)``
gives such jobs configuration defaults (``penstock run -D key=value``): keys a job sets
itself win over them, as settings in code win over the command line's in Flink. Both
are ``contextvars``, so nothing is installed process-wide.
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
import os
import queue
import socket
import sys
import threading
from collections.abc import Callable, Generator, Iterator, Mapping
from pathlib import Path
from typing import Final, Protocol, TypeVar

import cloudpickle

from penstock.config import (
    DATA_PORT,
    EXECUTION_TARGET,
    HEARTBEAT_TIMEOUT,
    JOBMANAGER_RPC_ADDRESS,
    JOBMANAGER_RPC_PORT,
    NUMBER_OF_TASK_SLOTS,
    TASKMANAGER_HOST,
    Configuration,
    ShuffleOptions,
    heartbeat_timeout_ms,
)
from penstock.errors import ClusterError, ConfigurationError, JobExecutionError
from penstock.ids import JobID
from penstock.runtime.control import (
    CancelJob,
    CollectAck,
    CollectBatch,
    ControlConnection,
    ControlMessage,
    JobManagerHeartbeat,
    JobMetricsUpdate,
    JobResult,
    SubmitJob,
    connect,
    expect_heartbeats,
    load_secret,
    name_unpicklable,
)
from penstock.runtime.job_graph import JobGraph
from penstock.runtime.jobmanager import JobManager, required_slots
from penstock.runtime.minicluster import MiniCluster, task_managers_for
from penstock.runtime.taskmanager import TaskExecutor
from penstock.shuffle import data_port_bind_error
from penstock.transport.tls import SslOptions, client_context, server_context

__all__ = [
    "CANCEL_WAIT_S",
    "CloseableIterator",
    "InProcessSession",
    "JobEvent",
    "JobExecutionResult",
    "JobSession",
    "MetricsObserver",
    "RemoteSession",
    "configure_jobs",
    "execute",
    "execute_and_collect",
    "observe_jobs",
    "open_session",
]

log = logging.getLogger(__name__)

T = TypeVar("T")

CANCEL_WAIT_S: Final = 15.0
"""How long a cancelled job may take to report its end before the client gives up."""

_LOCAL_TM_ID: Final = "local"

JobEvent = CollectBatch | JobMetricsUpdate | JobResult
"""What a session's ``next_event`` returns (metric updates only when asked for)."""

MetricsObserver = Callable[[JobMetricsUpdate], None]
"""Gets the live metrics of a job (called on the thread that runs ``execute``)."""

RecordsObserver = Callable[[list[object]], None]

SubmitObserver = Callable[[JobGraph], None]

_OBSERVER: Final[contextvars.ContextVar[MetricsObserver | None]] = contextvars.ContextVar(
    "penstock_job_observer", default=None
)
_RECORDS_OBSERVER: Final[contextvars.ContextVar[RecordsObserver | None]] = contextvars.ContextVar(
    "penstock_job_records_observer", default=None
)
_SUBMIT_OBSERVER: Final[contextvars.ContextVar[SubmitObserver | None]] = contextvars.ContextVar(
    "penstock_job_submit_observer", default=None
)
_DEFAULTS: Final[contextvars.ContextVar[Configuration | None]] = contextvars.ContextVar(
    "penstock_job_defaults", default=None
)


@contextlib.contextmanager
def observe_jobs(
    callback: MetricsObserver,
    on_records: RecordsObserver | None = None,
    on_submit: SubmitObserver | None = None,
) -> Iterator[None]:
    """Hands the live metrics of every job executed in this context to ``callback``.

    Args:
        callback: Called with each ``JobMetricsUpdate``, about once a second and once
            more with the final metrics when a job ends; an exception it raises ends
            the job as Ctrl-C would (cancelled, then re-raised).
        on_records: Called, in ``execute``, with each batch that a task sent through
            ``RuntimeContext.results_sink`` (a sink function's summary, for example);
            without it ``execute`` drops such batches.
        on_submit: Called with each job graph as it is submitted.
    """
    token = _OBSERVER.set(callback)
    records_token = _RECORDS_OBSERVER.set(on_records)
    submit_token = _SUBMIT_OBSERVER.set(on_submit)
    try:
        yield
    finally:
        _SUBMIT_OBSERVER.reset(submit_token)
        _RECORDS_OBSERVER.reset(records_token)
        _OBSERVER.reset(token)


@contextlib.contextmanager
def configure_jobs(defaults: Configuration) -> Iterator[None]:
    """Runs every job executed in this context with ``defaults`` under its configuration.

    Keys the job's configuration sets win; the others come from ``defaults``. Options
    read when a job is built (``parallelism.default``) apply only to environments that
    read this context; runtime options (``execution.target``, network memory, slots)
    apply to every job.
    """
    token = _DEFAULTS.set(Configuration(defaults))
    try:
        yield
    finally:
        _DEFAULTS.reset(token)


def job_defaults() -> Configuration | None:
    """The defaults ``configure_jobs`` installed in this context, if any."""
    return _DEFAULTS.get()


class JobExecutionResult:
    """The result of a finished job (PyFlink's JobExecutionResult).

    Args:
        job_id: The job's id.
        job_name: The job's name.
        net_runtime_ms: Milliseconds from deployment to the end of the last task.
        metrics: Final metrics per task name ("Source: Sequence Source -> Map (1/2)").
    """

    def __init__(
        self,
        job_id: JobID,
        job_name: str,
        net_runtime_ms: int,
        metrics: Mapping[str, Mapping[str, float]],
    ) -> None:
        self._job_id = job_id
        self.job_name = job_name
        self._net_runtime_ms = net_runtime_ms
        self._metrics = {name: dict(values) for name, values in metrics.items()}

    def get_job_id(self) -> JobID:
        """The job's id."""
        return self._job_id

    def get_net_runtime(self) -> int:
        """The net runtime in milliseconds."""
        return self._net_runtime_ms

    def get_metrics(self) -> dict[str, dict[str, float]]:
        """Final metrics per task name, with Flink's metric names."""
        return {name: dict(values) for name, values in self._metrics.items()}

    def __repr__(self) -> str:
        return (
            f"JobExecutionResult(job_id={self._job_id}, job_name={self.job_name!r}, "
            f"net_runtime={self._net_runtime_ms} ms)"
        )


# -- sessions -------------------------------------------------------------------------


class JobSession(Protocol):
    """A submitted job as its client sees it."""

    job: JobGraph

    def next_event(self, timeout_s: float | None = None) -> JobEvent | None:
        """The next batch, metrics update or the result; None after ``timeout_s``."""
        ...

    def ack(self, batch: CollectBatch) -> None:
        """The batch was consumed: its task may send another."""
        ...

    def cancel(self) -> None:
        """Asks the cluster to cancel the job (its result still follows)."""
        ...

    def close(self) -> None:
        """Releases the cluster or connection the session used."""
        ...


class _QueueListener:
    """A JobListener that queues events for a client thread."""

    def __init__(self) -> None:
        self.events: queue.SimpleQueue[JobEvent] = queue.SimpleQueue()

    def on_collect(self, batch: CollectBatch) -> None:
        self.events.put(batch)

    def on_metrics(self, update: JobMetricsUpdate) -> None:
        self.events.put(update)

    def on_result(self, result: JobResult) -> None:
        self.events.put(result)


class InProcessSession:
    """A job on a JobManager in this process (targets ``local`` and ``minicluster``).

    Args:
        job_manager: A started JobManager.
        job: The job; submitted now.
        on_close: Releases what was started for the job (cluster, executor).
        metrics: Also deliver a ``JobMetricsUpdate`` about once a second.
    """

    def __init__(
        self,
        job_manager: JobManager,
        job: JobGraph,
        on_close: Callable[[], None] = lambda: None,
        metrics: bool = False,
    ) -> None:
        self.job = job
        self.job_manager = job_manager
        self._on_close = on_close
        self._listener = _QueueListener()
        job_manager.submit(job, self._listener, self._listener.on_metrics if metrics else None)

    def next_event(self, timeout_s: float | None = None) -> JobEvent | None:
        try:
            return self._listener.events.get(timeout=timeout_s)
        except queue.Empty:
            return None

    def ack(self, batch: CollectBatch) -> None:
        self.job_manager.ack_collect(CollectAck(batch.execution_id, batch.seq))

    def cancel(self) -> None:
        self.job_manager.cancel_job(self.job.job_id)

    def close(self) -> None:
        self._on_close()


def _pickled_parts(job: JobGraph) -> list[tuple[str, object]]:
    """The user code a job carries, each with a description that names it for the user."""
    parts: list[tuple[str, object]] = [
        (f"the function of operator {spec.name!r}", spec.factory)
        for vertex in job.vertices
        for spec in vertex.operators
    ]
    for edge in job.edges:
        route = f"{edge.partitioner} edge from {job.vertex(edge.source).name!r}"
        parts += [
            (f"the key selector of the {route}", edge.partitioner.key_selector),
            (f"the partitioner of the {route}", edge.partitioner.partitioner),
            (f"the serializer of the {route}", edge.serializer),
        ]
    return parts


def _submission(job: JobGraph, metrics: bool) -> SubmitJob:
    """``job`` pickled for the JobManager.

    Raises:
        SerializationError: The job cannot be pickled; the message names the part.
    """
    try:
        return SubmitJob.of(job, metrics)
    except Exception as exc:
        subject = f"job {job.name!r} cannot be sent to the JobManager"
        named = name_unpicklable(subject, _pickled_parts(job), exc)
        raise named from named.__cause__


class RemoteSession:
    """A job on a JobManager in another process, over the control channel.

    Args:
        connect: Opens an authenticated connection to the JobManager. It is called once
            the job is pickled: a job that cannot leave this process never reaches the
            JobManager.
        job: The job; submitted now.
        metrics: Also deliver a ``JobMetricsUpdate`` about once a second.

    Raises:
        SerializationError: The job cannot be pickled; the message names the part.
    """

    def __init__(
        self, connect: Callable[[], ControlConnection], job: JobGraph, metrics: bool = False
    ) -> None:
        submission = _submission(job, metrics)
        self.job = job
        self._events: queue.SimpleQueue[JobEvent | BaseException] = queue.SimpleQueue()
        self._lost: BaseException | None = None
        connection = self._connection = connect()
        try:
            connection.send(submission)
            self._reader = _start_reader(connection, self._events)
        except BaseException:
            connection.close()
            raise

    def next_event(self, timeout_s: float | None = None) -> JobEvent | None:
        if self._lost is None:  # once lost, every call raises: nothing more will come
            try:
                event = self._events.get(timeout=timeout_s)
            except queue.Empty:
                return None
            if not isinstance(event, BaseException):
                return event
            self._lost = event
        msg = f"lost the JobManager at {self._connection.peer} while job {self.job.name!r} ran"
        raise JobExecutionError(msg, self.job.job_id) from self._lost

    def ack(self, batch: CollectBatch) -> None:
        with contextlib.suppress(ClusterError):
            self._connection.send(CollectAck(batch.execution_id, batch.seq))

    def cancel(self) -> None:
        with contextlib.suppress(ClusterError):
            self._connection.send(CancelJob(self.job.job_id))

    def close(self) -> None:
        self._connection.close()


def _start_reader(
    connection: ControlConnection,
    events: queue.SimpleQueue[JobEvent | BaseException],
) -> object:
    silence_s = connection.receive_timeout_s

    def read() -> None:
        try:
            while True:
                message: ControlMessage = connection.recv()
                if isinstance(message, JobManagerHeartbeat):
                    expect_heartbeats(connection, message, silence_s)
                elif isinstance(message, CollectBatch | JobMetricsUpdate | JobResult):
                    events.put(message)
                    if isinstance(message, JobResult):
                        return
        except EOFError as exc:
            events.put(ClusterError(f"the control connection to {connection.peer} closed: {exc}"))
        except ClusterError as exc:  # silent for heartbeat.timeout, or not speaking our protocol
            events.put(exc)

    thread = threading.Thread(target=read, name="job-client-reader", daemon=True)
    thread.start()
    return thread


def _ship_script_neighbours() -> None:
    """Makes the modules beside the job's script travel with its functions, by value.

    A job script may import modules from its own directory (Python puts it first on the
    path), but a TaskManager runs elsewhere and could not import them, as a Flink job's
    classes would be missing without its jar. Modules under the directory of
    ``__main__`` are pickled by value instead, except installed packages and penstock.
    """
    main = sys.modules.get("__main__")
    script = getattr(main, "__file__", None)
    if not isinstance(script, str):
        return  # an interactive session: nothing beside it
    directory = Path(script).resolve().parent
    installed = {Path(prefix).resolve() for prefix in (sys.prefix, sys.base_prefix)}
    for name, module in list(sys.modules.items()):
        location = getattr(module, "__file__", None)
        if name == "__main__" or name.partition(".")[0] == "penstock" or location is None:
            continue
        path = Path(location).resolve()
        if (
            path.is_relative_to(directory)
            and not {"site-packages", "dist-packages"} & set(path.parts)
            and not any(path.is_relative_to(prefix) for prefix in installed)
        ):
            cloudpickle.register_pickle_by_value(module)


def _check_minicluster_slots(job: JobGraph, task_managers: int, slots_per_tm: int) -> None:
    """Fails a job that needs more slots than the mini-cluster will have, at once.

    A mini-cluster cannot grow, so the JobManager's wait for slots would be in vain.

    Raises:
        ClusterError: The job needs more slots than the mini-cluster will have.
    """
    needed = required_slots(job)
    if needed > task_managers * slots_per_tm:
        msg = (
            f"Could not acquire the minimum required resources: job {job.name!r} needs "
            f"{needed} slots, but the mini-cluster has {task_managers} TaskManagers with "
            f"{slots_per_tm} slots each. Raise minicluster.number-of-taskmanagers or "
            "taskmanager.numberOfTaskSlots."
        )
        raise ClusterError(msg)


def _check_minicluster_data_port(task_managers: int, port: int) -> None:
    """Refuses one fixed data port for several TaskManagers of one host.

    Raises:
        ConfigurationError: ``taskmanager.data.port`` is fixed and more than one
            TaskManager would bind it.
    """
    if port and task_managers > 1:
        reason = (
            f"the {task_managers} TaskManagers of a mini-cluster cannot share one data "
            "port; leave it at 0 (a free port each)"
        )
        raise ConfigurationError(DATA_PORT.key, port, reason)


def _check_minicluster_network(config: Configuration) -> None:
    """What a mini-cluster's TaskManagers would find wrong with their network settings.

    Found here, before any process starts, rather than by each TaskManager on its way
    up, where the reason would reach the user only as a process that exited.

    Raises:
        ConfigurationError: TLS key material cannot be loaded (a file is missing or
            invalid, the key password is wrong), or no socket can be bound on
            ``taskmanager.host`` and ``taskmanager.data.port``.
    """
    ssl_options = SslOptions.from_configuration(config)
    if ssl_options.enabled:
        server_context(ssl_options)
        client_context(ssl_options)
    host = config.get(TASKMANAGER_HOST)
    port = config.get(DATA_PORT)
    try:
        family, kind, _, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
        with socket.socket(family, kind) as probe:
            # As the data server binds it (asyncio reuses addresses): whether this host
            # has the address and, for a fixed port, whether anyone listens there.
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            probe.bind(address)
    except OSError as exc:  # socket.gaierror too: a name that does not resolve
        raise data_port_bind_error(host, port, exc) from exc


def open_session(job: JobGraph, config: Configuration, metrics: bool = False) -> JobSession:
    """Submits ``job`` to the target of ``execution.target``; the session owns the cluster.

    Args:
        job: The job.
        config: Its configuration, on top of the defaults of ``configure_jobs``.
        metrics: The session also delivers a ``JobMetricsUpdate`` about once a second.

    Raises:
        ConfigurationError: Settings contradict each other (checked before anything
            starts, where every TaskManager would check them).
        ClusterError: The cluster could not be started or reached.
        SerializationError: With ``execution.target: remote``, a part of the job cannot
            be pickled (the other targets fail the job with it as the cause).
    """
    defaults = _DEFAULTS.get()
    merged = Configuration(config) if defaults is None else defaults | config
    # What each TaskManager derives from the configuration, derived here first, so a
    # contradiction (network min above max, TLS without key material...) names its
    # key before any process starts instead of killing TaskManagers on the way up.
    ShuffleOptions.from_configuration(merged)
    SslOptions.from_configuration(merged)
    silence_s = heartbeat_timeout_ms(merged) / 1000
    _ship_script_neighbours()
    on_submit = _SUBMIT_OBSERVER.get()
    if on_submit is not None:
        on_submit(job)
    target = merged.get(EXECUTION_TARGET)
    if target == "local":
        return _local_session(job, merged, metrics)
    if target == "minicluster":
        task_managers = task_managers_for(job, merged)
        _check_minicluster_data_port(task_managers, merged.get(DATA_PORT))
        _check_minicluster_slots(job, task_managers, merged.get(NUMBER_OF_TASK_SLOTS))
        _check_minicluster_network(merged)
        cluster = MiniCluster(merged, task_managers).start()
        try:
            return InProcessSession(cluster.job_manager, job, cluster.close, metrics)
        except BaseException:
            cluster.close()
            raise
    address = (merged.get(JOBMANAGER_RPC_ADDRESS), merged.get(JOBMANAGER_RPC_PORT))

    def connect_to_job_manager() -> ControlConnection:
        connection = connect(address, load_secret(environ=os.environ, offers_file=False))
        # The JobManager sends at least a heartbeat every heartbeat.interval.
        connection.set_receive_timeout(silence_s, HEARTBEAT_TIMEOUT.key)
        return connection

    return RemoteSession(connect_to_job_manager, job, metrics)


def _local_session(job: JobGraph, config: Configuration, metrics: bool) -> InProcessSession:
    job_manager = JobManager(config, name="local-jm")
    job_manager.start()
    executor = TaskExecutor(
        config,
        lambda message: job_manager.on_message(_LOCAL_TM_ID, message),
        slots=required_slots(job),
        tm_id=_LOCAL_TM_ID,
    )

    def close() -> None:
        executor.close()
        job_manager.shutdown("the local execution ended")

    try:
        executor.start()
        job_manager.add_task_manager(executor.registration(), _LocalGateway(executor))
        executor.start_heartbeats()
        return InProcessSession(job_manager, job, close, metrics)
    except BaseException:
        close()
        raise


class _LocalGateway:
    """The JobManager's side of an in-process TaskExecutor: direct calls.

    A deployment arrives pickled (``SerializedValue``), as it would on its way to a
    TaskManager process: every subtask gets its own copy of the user functions (a sink
    object's fields are per subtask, as in Flink), and a function that cannot be
    pickled fails as it would on a cluster.
    """

    def __init__(self, executor: TaskExecutor) -> None:
        self._executor = executor

    def send(self, message: ControlMessage) -> None:
        self._executor.handle(message)

    def close(self, drain_s: float = 0.0) -> None:
        """Nothing to drop; the session closes the executor."""
        del drain_s


# -- running --------------------------------------------------------------------------


def _raise_for(result: JobResult) -> None:
    if result.error is not None:
        msg = f"Job {result.job_name!r} ({result.job_id}) failed: {_first_line(result.error)}"
        raise JobExecutionError(msg, result.job_id) from result.error
    if result.cancelled:
        msg = f"Job {result.job_name!r} ({result.job_id}) was cancelled."
        raise JobExecutionError(msg, result.job_id)


class _UnreadableRecordsError(JobExecutionError):
    """Collected records the client cannot unpickle: the job fails, though it runs on."""


def _records_of(batch: CollectBatch, session: JobSession) -> list[object]:
    """The records of ``batch``, read here (the JobManager only forwarded them).

    Raises:
        JobExecutionError: They cannot be read in this process (a record's class lives
            in a module the client cannot import); the cause says why.
    """
    try:
        return batch.records.get()
    except Exception as exc:
        job = session.job
        msg = (
            f"Job {job.name!r} ({job.job_id}) failed: the client could not read the records "
            f"its collect sink sent: {type(exc).__name__}: {exc}"
        )
        raise _UnreadableRecordsError(msg, job.job_id) from exc


def _first_line(error: BaseException) -> str:
    text = str(error)
    return text.splitlines()[0] if text else type(error).__name__


def _cancel_and_wait(session: JobSession) -> JobResult | None:
    session.cancel()
    remaining = CANCEL_WAIT_S
    while True:
        event = session.next_event(remaining)
        if event is None:
            log.warning("job %r did not report its end after cancellation", session.job.name)
            return None
        if isinstance(event, JobResult):
            return event
        if isinstance(event, CollectBatch):
            session.ack(event)


def execute(job: JobGraph, config: Configuration) -> JobExecutionResult:
    """Runs ``job`` to its end on the target of ``execution.target``.

    Raises:
        JobExecutionError: The job failed; its cause is the first failure (a
            ``RemoteError`` with the original type name, message and traceback, or a
            ``ClusterError``).
        ClusterError: The cluster could not be started or reached.
        SerializationError: With ``execution.target: remote``, a part of the job cannot
            be pickled.
        KeyboardInterrupt: Ctrl-C; the job was cancelled and the cluster released.
    """
    observer = _OBSERVER.get()
    on_records = _RECORDS_OBSERVER.get()
    session = open_session(job, config, metrics=observer is not None)
    try:
        while True:
            event = session.next_event()
            if isinstance(event, JobResult):
                _raise_for(event)
                return JobExecutionResult(
                    event.job_id, event.job_name, event.net_runtime_ms, event.metrics
                )
            if isinstance(event, JobMetricsUpdate):
                if observer is not None:
                    observer(event)
            elif event is not None:
                if on_records is not None:
                    on_records(_records_of(event, session))
                session.ack(event)
    except BaseException as exc:
        if not isinstance(exc, JobExecutionError) or isinstance(exc, _UnreadableRecordsError):
            # Ctrl-C, the observer failed, or records could not be read: the job must
            # not outlive its client.
            log.warning("cancelling job %r: %s", job.name, type(exc).__name__)
            _cancel_and_wait(session)
        raise
    finally:
        session.close()


class CloseableIterator(Iterator[T]):
    """The records of ``execute_and_collect``, as PyFlink's ``CloseableIterator``.

    Iterating reads the records as they arrive; ``close()``, or leaving a ``with``
    block, cancels the job if it still runs and releases its cluster.
    """

    __slots__ = ("_records",)

    def __init__(self, records: Generator[T, None, None]) -> None:
        self._records = records

    def __iter__(self) -> CloseableIterator[T]:
        return self

    def __next__(self) -> T:
        return next(self._records)

    def close(self) -> None:
        self._records.close()

    def __enter__(self) -> CloseableIterator[T]:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def execute_and_collect(
    job: JobGraph, config: Configuration, limit: int | None = None
) -> CloseableIterator[object]:
    """Runs ``job`` and yields the records of its collect sink as they arrive.

    The job is submitted now. At most a few batches per sink task are in flight, so a
    slow reader slows the job down. Closing the iterator, or reaching ``limit``
    records, cancels the job.

    Raises:
        JobExecutionError: From the iterator, when the job failed.
    """
    observer = _OBSERVER.get()
    session = open_session(job, config, metrics=observer is not None)
    records = _collect(session, limit, observer)
    # Into its try block at once: a generator closed (or dropped) before it ever ran
    # skips its finally, and the job would run on with nobody reading.
    next(records)
    return CloseableIterator(records)


def _collect(
    session: JobSession, limit: int | None, observer: MetricsObserver | None
) -> Generator[object, None, None]:
    """The records of ``session``; the first item yielded is a placeholder to skip."""
    count = 0
    ended = False
    try:
        yield None  # taken by execute_and_collect, so that closing from here on cancels
        if limit is not None and limit <= 0:
            return
        while True:
            try:
                event = session.next_event()
            except JobExecutionError:
                ended = True  # the JobManager is lost: no result will come to wait for
                raise
            if event is None:
                continue
            if isinstance(event, JobResult):
                ended = True
                _raise_for(event)
                return
            if isinstance(event, JobMetricsUpdate):
                if observer is not None:
                    observer(event)
                continue
            for record in _records_of(event, session):
                yield record
                count += 1
                if limit is not None and count >= limit:
                    return
            session.ack(event)
    finally:
        try:
            if not ended:
                _cancel_and_wait(session)
        finally:
            session.close()
