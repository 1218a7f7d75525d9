"""Failures: user exceptions, lost TaskManagers, timeouts, Ctrl-C, a dying client.

Whatever happens, the job fails with ``JobExecutionError`` whose cause is the first
failure, and no process the cluster started is left behind.
"""

from __future__ import annotations

import contextlib
import ctypes
import itertools
import os
import pickle
import queue
import signal
import subprocess
import sys
import textwrap
import threading
import time
import types
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Final, cast

import pytest

from cluster_helpers import (
    WAIT_S,
    FakeTaskManager,
    LineReader,
    child_pids,
    edge,
    is_alive,
    job,
    no_leftover_processes,
    reap,
    vertex,
)
from penstock.config import Configuration
from penstock.errors import (
    ClusterError,
    JobExecutionError,
    PartitionReleasedError,
    ProducerFailedError,
    RemoteError,
    SerializationError,
)
from penstock.ids import JobID
from penstock.runtime import jobmanager as jobmanager_module
from penstock.runtime.client import InProcessSession, execute
from penstock.runtime.control import (
    SECRET_ENV,
    CancelTask,
    CollectBatch,
    ControlConnection,
    ControlMessage,
    ControlServer,
    Heartbeat,
    JobManagerHeartbeat,
    JobMetricsUpdate,
    JobResult,
    RegisterTaskManager,
    RegistrationAccepted,
    ReleaseJob,
    SerializedValue,
    Shutdown,
    SubmitJob,
    connect,
    new_secret,
)
from penstock.runtime.deployment import TaskDeploymentDescriptor
from penstock.runtime.job_graph import JobGraph
from penstock.runtime.jobmanager import JobManager
from penstock.runtime.minicluster import MiniCluster
from penstock.runtime.states import ExecutionState
from penstock.runtime.taskmanager import run_task_manager
from penstock.task.operators import MapFactory, SequenceSourceFactory, SinkFactory

__all__ = ["no_leftover_processes"]

pytestmark = pytest.mark.timeout(120)

_PR_SET_CHILD_SUBREAPER: Final = 36


@pytest.fixture
def subreaper() -> Iterator[None]:
    """Orphaned descendants become this process's children, so a test can wait for them."""
    libc = ctypes.CDLL(None, use_errno=True)
    assert libc.prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0
    yield
    libc.prctl(_PR_SET_CHILD_SUBREAPER, 0, 0, 0, 0)


def failing_job(bad: int) -> JobGraph:
    def check(value: int) -> int:
        if value == bad:
            message = f"bad record {value}"
            raise ValueError(message)
        return value

    source = vertex("s", ("Source: Sequence Source", SequenceSourceFactory(1, 1000)), parallelism=2)
    mapper = vertex(
        "m",
        ("Map", MapFactory(check)),
        ("Sink: Discard", SinkFactory(lambda x: None)),
        parallelism=2,
    )
    return job("failing", [source, mapper], [edge(source, mapper)])


def endless_job() -> JobGraph:
    source = vertex(
        "s", ("Source: Sequence Source", SequenceSourceFactory(0, 10**15)), parallelism=2
    )
    mapper = vertex(
        "m",
        ("Map", MapFactory(lambda x: x)),
        ("Sink: Discard", SinkFactory(lambda x: None)),
        parallelism=2,
    )
    return job("endless", [source, mapper], [edge(source, mapper)])


@pytest.mark.parametrize(
    "target", [pytest.param("minicluster", marks=pytest.mark.cluster), "local"]
)
def test_a_user_exception_fails_the_job_with_its_remote_traceback(target: str) -> None:
    with pytest.raises(JobExecutionError) as info:
        execute(failing_job(13), Configuration({"execution.target": target}))
    cause = info.value.__cause__
    assert isinstance(cause, RemoteError)
    assert cause.type_name == "builtins.ValueError"
    assert cause.message == "bad record 13"
    assert "in check" in cause.traceback_text
    assert "raise ValueError(message)" in cause.traceback_text
    assert "bad record 13" in str(info.value)


@pytest.mark.cluster
def test_a_killed_task_manager_fails_the_job_and_leaves_no_process() -> None:
    cluster = MiniCluster(Configuration(), 2).start()
    pids = cluster.task_manager_pids
    try:
        graph = endless_job()
        session = InProcessSession(cluster.job_manager, graph)
        assert cluster.job_manager.wait_until_running(graph.job_id, WAIT_S)
        os.kill(pids[0], signal.SIGKILL)
        event = session.next_event(WAIT_S)
        while isinstance(event, CollectBatch):
            event = session.next_event(WAIT_S)
        assert isinstance(event, JobResult)
        assert isinstance(event.error, ClusterError), repr(event.error)
        assert "taskmanager-1" in str(event.error)
        assert "lost" in str(event.error)
    finally:
        cluster.close()
    for pid in pids:
        assert not is_alive(pid)
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)


# -- the JobManager's failure handling, with fake TaskManagers --------------------------


class Recorder:
    def __init__(self) -> None:
        import queue

        self.results: queue.SimpleQueue[JobResult] = queue.SimpleQueue()

    def on_collect(self, batch: CollectBatch) -> None:
        raise AssertionError("no collect sink")

    def on_result(self, result: JobResult) -> None:
        self.results.put(result)


@pytest.fixture
def job_manager(request: pytest.FixtureRequest) -> Iterator[JobManager]:
    options = getattr(request, "param", {})
    manager = JobManager(Configuration(options.get("config", {})), **options.get("kwargs", {}))
    manager.start()
    yield manager
    manager.shutdown()


_probes = itertools.count()


def wait_until_handled(job_manager: JobManager) -> None:
    """Returns once the JobManager's thread has handled every call made before this one.

    The thread handles calls in the order they were made, and a TaskManager that
    registers now hears back only after everything queued before its registration.
    """
    probe = FakeTaskManager(job_manager, f"probe-{next(_probes)}", 1, 7999).register()
    assert isinstance(probe.next_of(RegistrationAccepted), RegistrationAccepted)


def test_a_heartbeat_sampled_before_a_task_finished_leaves_its_final_metrics(
    job_manager: JobManager,
) -> None:
    tm, recorder, tdds = running_two_by_two(job_manager, 7000)
    tm.report(tdds[0], ExecutionState.FINISHED)  # final metrics: numRecordsOut 1.0
    # The TaskManager's heartbeat thread sampled the task just before it finished.
    stale = Heartbeat("tm", {tdds[0].execution_id: {"numRecordsOut": 0.5}})
    job_manager.on_message(tm.registration.tm_id, stale)
    for tdd in tdds[1:]:
        tm.report(tdd, ExecutionState.FINISHED)
    result = recorder.results.get(timeout=WAIT_S)
    assert result.metrics[tdds[0].task_name] == {"numRecordsOut": 1.0}


def test_an_error_in_the_main_threads_housekeeping_leaves_it_running(
    job_manager: JobManager, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    checks = itertools.count()
    check_deadlines = job_manager._check_deadlines

    def failing_once() -> None:
        if next(checks) == 0:
            msg = "a bug in a deadline check"
            raise RuntimeError(msg)
        check_deadlines()

    monkeypatch.setattr(job_manager, "_check_deadlines", failing_once)
    wait_until_handled(job_manager)  # the checks after this registration raise
    wait_until_handled(job_manager)  # served after them: the thread goes on
    assert next(checks) >= 1
    assert "a bug in a deadline check" in caplog.text


def two_by_two() -> JobGraph:
    source = vertex("s", ("Source: Sequence Source", SequenceSourceFactory(1, 10)), parallelism=2)
    mapper = vertex("m", ("Map", MapFactory(abs)), parallelism=2)
    return job("fake", [source, mapper], [edge(source, mapper)])


def running_two_by_two(
    job_manager: JobManager, port: int
) -> tuple[FakeTaskManager, Recorder, list[TaskDeploymentDescriptor]]:
    """``two_by_two`` deployed on one fake TaskManager, its four tasks RUNNING."""
    tm = FakeTaskManager(job_manager, "tm", 2, port).register()
    recorder = Recorder()
    job_manager.submit(two_by_two(), recorder)
    tdds = tm.deployments(4)
    for tdd in tdds:
        tm.report(tdd, ExecutionState.RUNNING)
    return tm, recorder, tdds


def test_the_first_failure_cancels_every_task_and_fails_the_job(job_manager: JobManager) -> None:
    tm, recorder, tdds = running_two_by_two(job_manager, 7000)
    tm.report(tdds[2], ExecutionState.FAILED, KeyError("first"))
    cancelled = {tm.next_of(CancelTask).execution_id for _ in range(3)}  # type: ignore[union-attr]
    assert cancelled == {tdd.execution_id for tdd in tdds} - {tdds[2].execution_id}
    # A later failure while cancelling does not replace the first.
    tm.report(tdds[0], ExecutionState.FAILED, RuntimeError("second"))
    tm.report(tdds[1], ExecutionState.CANCELED)
    wait_until_handled(job_manager)
    assert recorder.results.empty()  # one task still runs
    tm.report(tdds[3], ExecutionState.CANCELED)
    result = recorder.results.get(timeout=WAIT_S)
    assert isinstance(result.error, RemoteError)
    assert result.error.type_name == "builtins.KeyError"
    assert not result.cancelled
    # Every task's final report, the last one's too, went into the result.
    assert len(result.metrics) == 4
    assert all(metrics == {"numRecordsOut": 1.0} for metrics in result.metrics.values())
    wait_until_handled(job_manager)
    assert recorder.results.empty()  # one result per job


def test_a_late_report_does_not_move_a_cancelling_task_back(job_manager: JobManager) -> None:
    # A task reports RUNNING after the JobManager asked it to cancel (the messages
    # crossed): it stays CANCELING until it reports how it ended, as in Flink.
    tm, recorder, tdds = running_two_by_two(job_manager, 7009)
    tm.report(tdds[2], ExecutionState.FAILED, KeyError("first"))
    for _ in range(3):
        tm.next_of(CancelTask)
    tm.report(tdds[0], ExecutionState.INITIALIZING)
    tm.report(tdds[0], ExecutionState.RUNNING)
    wait_until_handled(job_manager)
    execution = job_manager._execution(tdds[0].execution_id)
    assert execution is not None and execution.state is ExecutionState.CANCELING
    for tdd in (tdds[0], tdds[1], tdds[3]):
        tm.report(tdd, ExecutionState.CANCELED)
    assert recorder.results.get(timeout=WAIT_S).error is not None


def test_a_task_that_fails_only_because_of_the_cancel_ends_canceled(
    job_manager: JobManager,
) -> None:
    tm = FakeTaskManager(job_manager, "tm", 2, 7013).register()
    recorder = Recorder()
    updates: queue.SimpleQueue[JobMetricsUpdate] = queue.SimpleQueue()
    graph = two_by_two()
    job_manager.submit(graph, recorder, updates.put)
    tdds = tm.deployments(4)
    for tdd in tdds:
        tm.report(tdd, ExecutionState.RUNNING)
    job_manager.cancel_job(graph.job_id)
    for _ in range(4):
        tm.next_of(CancelTask)
    # A consumer, cancelled first, released the partition under its producer...
    tm.report(tdds[0], ExecutionState.FAILED, PartitionReleasedError("released"))
    # ...while another task failed on its own while being cancelled.
    tm.report(tdds[1], ExecutionState.FAILED, ValueError("bad record"))
    for tdd in tdds[2:]:
        tm.report(tdd, ExecutionState.CANCELED)
    assert recorder.results.get(timeout=WAIT_S).cancelled
    final = updates.get(timeout=WAIT_S)
    while not final.final:
        final = updates.get(timeout=WAIT_S)
    assert final.states[tdds[0].task_name] == "CANCELED"
    assert final.states[tdds[1].task_name] == "FAILED"


@pytest.mark.parametrize("failed", [False, True])
def test_the_end_of_a_job_tells_its_task_managers_to_release_it(
    job_manager: JobManager, failed: bool
) -> None:
    tm, recorder, tdds = running_two_by_two(job_manager, 7006 + failed)
    idle = FakeTaskManager(job_manager, "idle", 2, 7008).register()
    if failed:
        tm.report(tdds[2], ExecutionState.FAILED, KeyError("first"))
        for tdd in tdds[:2] + tdds[3:]:
            tm.report(tdd, ExecutionState.CANCELED)
    else:
        for tdd in tdds:
            tm.report(tdd, ExecutionState.FINISHED)
    result = recorder.results.get(timeout=WAIT_S)
    assert (result.error is not None) is failed
    released = tm.next_of(ReleaseJob)
    assert isinstance(released, ReleaseJob)
    assert released.job_id == result.job_id
    wait_until_handled(job_manager)
    assert not any(isinstance(message, ReleaseJob) for message in idle.drain())


def test_a_producer_failure_reported_after_its_consumers_symptom_is_the_cause(
    job_manager: JobManager,
) -> None:
    tm, recorder, tdds = running_two_by_two(job_manager, 7003)
    # The consumer sees the producer's failure on its channel first...
    tm.report(tdds[2], ExecutionState.FAILED, ProducerFailedError("the producer failed"))
    # ...then the producer's own report, the root cause, arrives.
    tm.report(tdds[0], ExecutionState.FAILED, ValueError("bad record"))
    tm.report(tdds[1], ExecutionState.CANCELED)
    tm.report(tdds[3], ExecutionState.CANCELED)
    result = recorder.results.get(timeout=WAIT_S)
    assert isinstance(result.error, RemoteError)
    assert result.error.type_name == "builtins.ValueError"
    assert "bad record" in str(result.error)


@pytest.mark.parametrize(
    "job_manager",
    [{"config": {"heartbeat.timeout": "300 ms", "heartbeat.interval": "100 ms"}}],
    indirect=True,
)
def test_a_silent_task_manager_is_lost_after_the_heartbeat_timeout(job_manager: JobManager) -> None:
    tm = FakeTaskManager(job_manager, "silent", 2, 7001).register()
    recorder = Recorder()
    job_manager.submit(two_by_two(), recorder)
    tm.deployments(4)
    result = recorder.results.get(timeout=WAIT_S)
    assert isinstance(result.error, ClusterError)
    assert "heartbeat timed out after 300 ms" in str(result.error)
    assert tm.closed


@pytest.mark.parametrize(
    "job_manager", [{"kwargs": {"slot_request_timeout_s": 0.2}}], indirect=True
)
def test_too_few_slots_fail_the_job_after_the_timeout(job_manager: JobManager) -> None:
    FakeTaskManager(job_manager, "small", 1, 7002).register()
    recorder = Recorder()
    job_manager.submit(two_by_two(), recorder)
    result = recorder.results.get(timeout=WAIT_S)
    assert isinstance(result.error, ClusterError)
    assert "needs 2 slots" in str(result.error)
    assert "1 free slots" in str(result.error)


def test_a_waiting_job_starts_when_a_task_manager_registers(job_manager: JobManager) -> None:
    recorder = Recorder()
    job_manager.submit(two_by_two(), recorder)
    tm = FakeTaskManager(job_manager, "late", 2, 7003).register()
    tdds = tm.deployments(4)
    for tdd in tdds:
        tm.report(tdd, ExecutionState.FINISHED)
    result = recorder.results.get(timeout=WAIT_S)
    assert result.error is None


@pytest.mark.parametrize("job_manager", [{"kwargs": {"cancel_timeout_s": 0.2}}], indirect=True)
def test_tasks_that_never_stop_do_not_hold_the_job_forever(job_manager: JobManager) -> None:
    tm = FakeTaskManager(job_manager, "stuck", 2, 7004).register()
    recorder = Recorder()
    graph = two_by_two()
    job_manager.submit(graph, recorder)
    tm.deployments(4)
    job_manager.cancel_job(graph.job_id)
    result = recorder.results.get(timeout=WAIT_S)
    assert result.cancelled
    assert result.error is None


class _ClientConnection:
    """A client's end as the JobManager sees it: the messages it sent, what it got."""

    peer = "client"

    def __init__(self, *messages: ControlMessage) -> None:
        self._messages = list(messages)
        self.sent: list[ControlMessage] = []
        self.closed = False

    def recv(self) -> ControlMessage:
        if not self._messages:
            raise EOFError
        return self._messages.pop(0)

    def send_payload(self, payload: bytes) -> None:
        self.sent.append(pickle.loads(payload))

    def sent_but_heartbeats(self) -> list[ControlMessage]:
        return [message for message in self.sent if not isinstance(message, JobManagerHeartbeat)]

    def close(self) -> None:
        self.closed = True


def test_a_remote_submission_names_the_operator_whose_function_cannot_be_pickled() -> None:
    lock = threading.Lock()  # no other process can receive a lock

    def guarded(value: int) -> int:
        with lock:
            return value

    source = vertex("s", ("Source: Sequence Source", SequenceSourceFactory(1, 10)))
    mapper = vertex("m", ("Map", MapFactory(guarded)), ("Sink: Discard", SinkFactory(print)))
    # Nothing listens on port 1: the job must be refused before any connection is tried.
    remote = Configuration({"execution.target": "remote", "jobmanager.rpc.port": 1})
    with pytest.raises(SerializationError) as info:
        execute(job("locked", [source, mapper]), remote)
    assert str(info.value).startswith(
        "job 'locked' cannot be sent to the JobManager: the function of operator 'Map' "
        "cannot be pickled (TypeError: cannot pickle '_thread.lock' object). "
    )
    assert isinstance(info.value.__cause__, TypeError)


def _pickled_from_a_module_this_process_lacks() -> bytes:
    """A function pickled by reference to a module that is gone by the time it loads."""
    name = "penstock_test_only_on_the_client"
    module = types.ModuleType(name)

    def triple(value: int) -> int:
        return value * 3

    triple.__module__, triple.__qualname__ = name, "triple"
    module.triple = triple  # type: ignore[attr-defined]
    sys.modules[name] = module
    try:
        return pickle.dumps(triple)
    finally:
        del sys.modules[name]


def test_a_job_the_job_manager_cannot_load_fails_with_the_reason(
    job_manager: JobManager,
) -> None:
    """A job whose module the JobManager lacks: a failed result, not a lost connection."""
    submission = SubmitJob(
        JobID.generate(),
        "needs a module",
        SerializedValue(_pickled_from_a_module_this_process_lacks()),
    )
    client = _ClientConnection(submission)
    job_manager.serve_connection(cast("ControlConnection", client))
    assert client.closed
    [result] = client.sent_but_heartbeats()
    assert isinstance(result, JobResult)
    assert result.job_id == submission.job_id
    assert isinstance(result.error, ClusterError)
    assert (
        "the JobManager cannot load job 'needs a module': ModuleNotFoundError: No module "
        "named 'penstock_test_only_on_the_client'" in str(result.error)
    )


def test_a_submission_that_holds_no_such_job_is_refused(job_manager: JobManager) -> None:
    submission = SubmitJob(JobID.generate(), "forty-two", SerializedValue(pickle.dumps(42)))
    client = _ClientConnection(submission)
    job_manager.serve_connection(cast("ControlConnection", client))
    [result] = client.sent_but_heartbeats()
    assert isinstance(result, JobResult)
    assert isinstance(result.error, ClusterError)
    assert "the submission of job 'forty-two' does not hold that job" in str(result.error)


def test_a_client_gone_before_its_refusal_costs_the_job_manager_nothing(
    job_manager: JobManager,
) -> None:
    class _GoneClient(_ClientConnection):
        def send_payload(self, payload: bytes) -> None:
            raise ClusterError("lost the control connection to client: broken pipe")

    client = _GoneClient(SubmitJob(JobID.generate(), "gone", SerializedValue(pickle.dumps(42))))
    job_manager.serve_connection(cast("ControlConnection", client))  # no exception
    assert client.closed


def test_shutdown_tells_task_managers_to_exit() -> None:
    manager = JobManager()
    manager.start()
    tm = FakeTaskManager(manager, "tm", 1, 7005).register()
    assert manager.wait_for_task_managers(1, WAIT_S)
    manager.shutdown()
    assert isinstance(tm.next_of(Shutdown), Shutdown)
    assert tm.closed


def test_a_task_manager_that_registers_once_shutdown_began_is_told_to_exit() -> None:
    manager = JobManager()
    manager.start()
    manager.shutdown("the JobManager was stopped")
    tm = FakeTaskManager(manager, "late", 1, 7014).register()
    assert tm.next_of(Shutdown) == Shutdown("the JobManager was stopped")
    assert tm.closed


# -- peers that stop: a client that reads nothing, a JobManager that says nothing ----------


@pytest.fixture
def remote_client(job_manager: JobManager) -> Iterator[ControlConnection]:
    """A connection to ``job_manager`` through a real control server, as a client's or a
    TaskManager's (whichever its first message says)."""
    secret = new_secret()
    with ControlServer("127.0.0.1", 0, secret, job_manager.serve_connection, "test") as server:
        client = connect(server.address, secret)
        client.set_receive_timeout(WAIT_S)
        yield client
        client.close()


def next_not_heartbeat(connection: ControlConnection) -> ControlMessage:
    while isinstance(message := connection.recv(), JobManagerHeartbeat):
        pass
    return message


FAST_BEATS: Final = {"config": {"heartbeat.interval": "50 ms"}}


@pytest.mark.parametrize("job_manager", [FAST_BEATS], indirect=True)
def test_a_task_manager_hears_the_heartbeat_interval_first_and_then_heartbeats(
    job_manager: JobManager, remote_client: ControlConnection
) -> None:
    remote_client.send(RegisterTaskManager("tm", ("127.0.0.1", 7010), 1, os.getpid()))
    assert remote_client.recv() == JobManagerHeartbeat(interval_ms=50)
    # More heartbeats may come first if the main thread is slow to accept it.
    assert next_not_heartbeat(remote_client) == RegistrationAccepted("tm")
    for _ in range(3):  # nothing else to say
        assert remote_client.recv() == JobManagerHeartbeat(interval_ms=50)


@pytest.mark.parametrize("job_manager", [FAST_BEATS], indirect=True)
def test_a_remote_client_hears_from_the_job_manager_while_its_job_loads_and_runs(
    job_manager: JobManager, remote_client: ControlConnection, monkeypatch: pytest.MonkeyPatch
) -> None:
    load = jobmanager_module._load_job
    imported = threading.Event()

    def slow_load(submission: SubmitJob) -> JobGraph:
        # A job whose modules take long to import: as long as the client needs to
        # hear three heartbeats (or the tests' longest wait, and then it fails).
        imported.wait(WAIT_S)
        return load(submission)

    monkeypatch.setattr(jobmanager_module, "_load_job", slow_load)
    tm = FakeTaskManager(job_manager, "tm", 2, 7012).register()
    remote_client.send(SubmitJob.of(two_by_two()))
    for _ in range(3):
        assert remote_client.recv() == JobManagerHeartbeat(interval_ms=50)
    assert not imported.is_set()
    imported.set()
    tm.deployments(4)  # and then nothing happens
    for _ in range(3):
        assert remote_client.recv() == JobManagerHeartbeat(interval_ms=50)


def test_a_job_manager_that_shuts_down_tells_a_remote_client_how_its_job_ended(
    job_manager: JobManager, remote_client: ControlConnection
) -> None:
    graph = two_by_two()
    remote_client.send(SubmitJob.of(graph))  # no TaskManager: it waits for slots
    deadline = time.monotonic() + WAIT_S
    while graph.job_id not in job_manager._job_status and time.monotonic() < deadline:
        time.sleep(0.01)  # the client's thread loads the job and submits it
    job_manager.shutdown("the JobManager was stopped")
    result = next_not_heartbeat(remote_client)
    assert isinstance(result, JobResult)
    assert str(result.error) == "job 'fake' aborted: the JobManager was stopped"
    with pytest.raises(EOFError):  # written before the connection closed
        remote_client.recv()


def test_a_job_submitted_to_a_job_manager_that_shuts_down_is_refused(
    job_manager: JobManager,
) -> None:
    job_manager.shutdown("the JobManager was stopped")
    with pytest.raises(ClusterError, match="job 'fake' refused: the JobManager was stopped"):
        job_manager.submit(two_by_two(), Recorder())


def test_a_client_that_stops_reading_does_not_stop_the_job_manager(
    job_manager: JobManager, remote_client: ControlConnection
) -> None:
    """A client suspended (Ctrl-Z) while its records pile up in its socket."""
    tm = FakeTaskManager(job_manager, "tm", 2, 7011).register()
    graph = two_by_two()
    remote_client.send(SubmitJob.of(graph))
    tdds = tm.deployments(4)
    # The client reads nothing while 32 MiB are collected for it: more than the socket
    # buffers between it and the JobManager hold.
    records: SerializedValue[list[object]] = SerializedValue.of([b"x" * (1 << 20)])
    for seq in range(32):
        batch = CollectBatch(graph.job_id, tdds[0].execution_id, seq, records)
        job_manager.on_message("tm", batch)
    wait_until_handled(job_manager)  # its main thread still serves the rest
    # The client, back, gets every batch in order.
    received = [next_not_heartbeat(remote_client) for _ in range(32)]
    assert [cast("CollectBatch", batch).seq for batch in received] == list(range(32))


class _MuteJobManager:
    """Accepts connections, takes what comes (accepting registrations), says nothing else.

    With ``interval_ms``, it first announces heartbeats at that interval, and sends none.
    """

    def __init__(self, interval_ms: int | None = None) -> None:
        self.secret = new_secret()
        self.interval_ms = interval_ms
        self.connections: list[ControlConnection] = []
        self.server = ControlServer("127.0.0.1", 0, self.secret, self._serve, "mute")

    def _serve(self, connection: ControlConnection) -> None:
        self.connections.append(connection)
        if self.interval_ms is not None:
            connection.send(JobManagerHeartbeat(self.interval_ms))
        with contextlib.suppress(EOFError, ClusterError):
            while True:
                message = connection.recv()
                if isinstance(message, RegisterTaskManager):
                    connection.send(RegistrationAccepted(message.tm_id))

    def close(self) -> None:
        self.server.close()
        for connection in self.connections:
            connection.close()


@pytest.fixture
def mute_job_manager(request: pytest.FixtureRequest) -> Iterator[_MuteJobManager]:
    mute = _MuteJobManager(getattr(request, "param", None))
    yield mute
    mute.close()


SILENCE: Final = {"heartbeat.timeout": "300 ms", "heartbeat.interval": "100 ms"}


def test_a_task_manager_leaves_a_job_manager_it_hears_nothing_from(
    mute_job_manager: _MuteJobManager, caplog: pytest.LogCaptureFixture
) -> None:
    said: list[str] = []
    status = run_task_manager(
        mute_job_manager.server.address,
        mute_job_manager.secret,
        Configuration(SILENCE),
        1,
        "tm-1",
        announce=said.append,
    )
    assert status == 1
    peer = "{}:{}".format(*mute_job_manager.server.address)
    [registered] = said
    assert registered.startswith(
        f"TaskManager tm-1 registered with the JobManager at {peer} (1 slot, data port "
    )
    assert f"lost the JobManager: heard nothing from {peer} for 300 ms (heartbeat.timeout)" in (
        caplog.text
    )


@pytest.mark.parametrize("mute_job_manager", [400], indirect=True)
def test_a_task_manager_waits_twice_the_job_managers_interval_if_that_is_longer(
    mute_job_manager: _MuteJobManager, caplog: pytest.LogCaptureFixture
) -> None:
    """Its own heartbeat.timeout (300 ms) would lose a JobManager beating every 400 ms."""
    status = run_task_manager(
        mute_job_manager.server.address, mute_job_manager.secret, Configuration(SILENCE), 1
    )
    assert status == 1
    peer = "{}:{}".format(*mute_job_manager.server.address)
    assert (
        f"the JobManager at {peer} sends heartbeats every 400 ms, so it counts as lost "
        "after 800 ms of silence here, not after heartbeat.timeout (300 ms)"
    ) in caplog.text
    assert (
        f"lost the JobManager: heard nothing from {peer} for 800 ms (twice the "
        "JobManager's heartbeat.interval)"
    ) in caplog.text


def test_a_remote_client_fails_its_job_when_it_hears_nothing_from_the_job_manager(
    mute_job_manager: _MuteJobManager, monkeypatch: pytest.MonkeyPatch
) -> None:
    host, port = mute_job_manager.server.address
    monkeypatch.setenv(SECRET_ENV, mute_job_manager.secret.decode())
    remote = {"execution.target": "remote", "jobmanager.rpc.address": host}
    config = Configuration({**remote, "jobmanager.rpc.port": port, **SILENCE})
    with pytest.raises(JobExecutionError, match="lost the JobManager") as info:
        execute(two_by_two(), config)
    assert str(info.value.__cause__) == (
        f"heard nothing from {host}:{port} for 300 ms (heartbeat.timeout)"
    )


# -- Ctrl-C and a dying client, in a client process of their own ------------------------

_CLIENT: Final = textwrap.dedent(
    """
    import os, sys
    from penstock.config import Configuration
    from penstock.ids import IntermediateDataSetID, JobID, JobVertexID
    from penstock.runtime.client import execute
    from penstock.runtime.job_graph import (
        JobEdge, JobGraph, JobVertex, OperatorSpec, PartitionerSpec,
    )
    from penstock.runtime.minicluster import MiniCluster
    from penstock.serialization.types import GenericSerializer
    from penstock.task.operators import SequenceSourceFactory, SinkFactory

    announced = []

    def announce(value):
        if not announced:
            announced.append(True)
            # One write(2), so that the two TaskManagers' lines on the shared pipe cannot
            # interleave (print() writes its pieces one by one when unbuffered).
            os.write(1, f"TM {os.getpid()}\\n".encode())
        return value

    def make(name, factory, p):
        return JobVertex(JobVertexID.generate(), name, (OperatorSpec(name, factory, 0),), p)

    source = make("Source: Sequence Source", SequenceSourceFactory(0, 10**15), 2)
    sink = make("Sink", SinkFactory(announce), 2)
    graph = JobGraph(
        JobID.generate(), "endless", (source, sink),
        (JobEdge(source.id, sink.id, PartitionerSpec("rebalance"),
                 IntermediateDataSetID.generate(), GenericSerializer()),),
    )
    if sys.argv[1] == "execute":
        try:
            execute(graph, Configuration())
        except KeyboardInterrupt:
            print("interrupted", flush=True)
            sys.exit(130)
    else:
        cluster = MiniCluster(Configuration(), 2).start()
        for pid in cluster.task_manager_pids:
            print("TM", pid, flush=True)
        sys.stdin.read()
    """
)


@dataclass
class Client:
    process: subprocess.Popen[str]
    output: LineReader
    task_managers: list[int]


@contextlib.contextmanager
def running_client(tmp_path: Path, mode: str) -> Iterator[Client]:
    """A client process running _CLIENT, once both its TaskManagers are up.

    On the way out the client, and then any TaskManager still running (by then an
    orphan this process adopted as a subreaper), are killed if need be and reaped.
    """
    script = tmp_path / "client.py"
    script.write_text(_CLIENT)
    process = subprocess.Popen(
        [sys.executable, str(script), mode],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert process.stdout is not None and process.stdin is not None
    output = LineReader(process.stdout)
    client = Client(process, output, [])
    try:
        while len(client.task_managers) < 2:
            line = output.readline()
            assert line.startswith("TM "), line
            client.task_managers.append(int(line.split()[1]))
        yield client
    finally:
        left = set(client.task_managers)
        if process.poll() is None:
            left |= child_pids(process.pid)  # its TaskManagers, announced or not
            process.kill()
        try:
            process.wait(timeout=WAIT_S)
        finally:
            for pid in sorted(left):
                if is_alive(pid):
                    os.kill(pid, signal.SIGKILL)
                    with contextlib.suppress(ChildProcessError, ProcessLookupError):
                        reap(pid)
            process.stdin.close()
            output.close()


@pytest.mark.cluster
def test_ctrl_c_cancels_the_job_and_leaves_no_process(tmp_path: Path, subreaper: None) -> None:
    with running_client(tmp_path, "execute") as client:
        assert len(set(client.task_managers)) == 2
        client.process.send_signal(signal.SIGINT)
        assert client.process.wait(timeout=WAIT_S) == 130
        assert "interrupted" in client.output.rest()
        for pid in client.task_managers:
            # An orphaned TaskManager would now be our child and keep running.
            assert not is_alive(pid)


@pytest.mark.cluster
def test_task_managers_exit_when_their_client_dies(tmp_path: Path, subreaper: None) -> None:
    with running_client(tmp_path, "cluster") as client:
        client.process.kill()
        client.process.wait(timeout=WAIT_S)
        for pid in client.task_managers:
            # Orphans are reparented to this process (the subreaper), so wait for each.
            status = reap(pid)
            assert status is not None, f"TaskManager {pid} still runs without its client"
            assert os.WIFEXITED(status)


def test_a_lost_task_manager_is_the_root_cause_over_its_symptoms(
    job_manager: JobManager,
) -> None:
    from penstock.errors import RemoteTransportError

    first = FakeTaskManager(job_manager, "first", 1, 7006).register()
    second = FakeTaskManager(job_manager, "second", 1, 7007).register()
    recorder = Recorder()
    job_manager.submit(two_by_two(), recorder)
    tdds = first.deployments(2)
    second.deployments(2)
    # A consumer notices the broken data connection before the control connection breaks.
    symptom = RemoteTransportError("Connection unexpectedly closed", "127.0.0.1:7007")
    first.report(tdds[1], ExecutionState.FAILED, symptom)
    job_manager.task_manager_lost("second", "the control connection was closed")
    first.report(tdds[0], ExecutionState.CANCELED)
    result = recorder.results.get(timeout=WAIT_S)
    assert isinstance(result.error, ClusterError)
    assert "second" in str(result.error)
