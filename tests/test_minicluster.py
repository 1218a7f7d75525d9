"""Scheduling with slot sharing, and jobs run on every execution target.

Jobs are hand-built JobGraphs of the task layer's operator factories. Functions inside
them are lambdas, which cloudpickle ships by value to the TaskManager processes.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import cast

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cluster_helpers import (
    WAIT_S,
    FakeTaskManager,
    LineReader,
    child_pids,
    edge,
    job,
    no_leftover_processes,
    vertex,
)
from penstock.api import StreamExecutionEnvironment
from penstock.config import Configuration
from penstock.errors import (
    ClusterError,
    IllegalStateError,
    JobExecutionError,
    SerializationError,
)
from penstock.runtime.client import (
    CloseableIterator,
    JobSession,
    _collect,
    execute,
    execute_and_collect,
    observe_jobs,
)
from penstock.runtime.control import SECRET_ENV, JobMetricsUpdate, JobResult, new_secret
from penstock.runtime.job_graph import JobGraph
from penstock.runtime.jobmanager import JobManager, plan_slots, required_slots
from penstock.runtime.minicluster import MiniCluster, cpus_for_task_managers, task_managers_for
from penstock.runtime.states import ExecutionState
from penstock.runtime.taskmanager import pin_to_cpu
from penstock.task.operators import (
    CollectSinkFactory,
    MapFactory,
    SequenceSourceFactory,
    SinkFactory,
)

__all__ = ["no_leftover_processes"]

pytestmark = pytest.mark.timeout(120)


def doubling_job(count: int = 1000, parallelism: int = 2) -> JobGraph:
    """source(p) → rebalance → map ×2 → collect sink."""
    source = vertex(
        "source",
        ("Source: Sequence Source", SequenceSourceFactory(1, count)),
        parallelism=parallelism,
    )
    mapper = vertex(
        "map",
        ("Map", MapFactory(lambda x: x * 2)),
        ("Sink: Collect", CollectSinkFactory()),
        parallelism=parallelism,
    )
    return job("doubling", [source, mapper], [edge(source, mapper)])


def pid_job(count: int) -> JobGraph:
    """source(2) → rebalance → map to (pid, value) → collect: shows where maps ran."""
    source = vertex(
        "source", ("Source: Sequence Source", SequenceSourceFactory(1, count)), parallelism=2
    )
    mapper = vertex(
        "map",
        ("Map", MapFactory(lambda x: (__import__("os").getpid(), x))),
        ("Sink: Collect", CollectSinkFactory()),
        parallelism=2,
    )
    return job("pids", [source, mapper], [edge(source, mapper)])


# -- slot sharing ---------------------------------------------------------------------


def grouped_job(shape: list[tuple[str, int]]) -> JobGraph:
    vertices = [
        vertex(f"v{index}", (f"Map {index}", MapFactory(abs)), parallelism=p, group=group)
        for index, (group, p) in enumerate(shape)
    ]
    return job("grouped", vertices)


@given(
    shape=st.lists(st.tuples(st.sampled_from("abc"), st.integers(1, 4)), min_size=1, max_size=5),
    free=st.lists(st.integers(0, 4), min_size=1, max_size=4),
)
def test_plan_slots_honours_slot_sharing(shape: list[tuple[str, int]], free: list[int]) -> None:
    graph = grouped_job(shape)
    slots = {f"tm{index}": count for index, count in enumerate(free)}
    plan = plan_slots(graph, slots)
    needed = sum(max(p for g, p in shape if g == group) for group in {g for g, _ in shape})
    assert required_slots(graph) == needed
    if needed > sum(free):
        assert plan is None
        return
    assert plan is not None
    assert len(plan) == sum(p for _, p in shape)
    used = set(plan.values())
    assert len(used) == needed
    # No TaskManager gives more slots than it has.
    per_tm = Counter(slot.tm_id for slot in used)
    assert all(per_tm[tm_id] <= slots[tm_id] for tm_id in per_tm)
    # A slot holds at most one subtask per vertex, and only subtasks of one group.
    groups_in_slot: dict[object, set[str]] = {}
    for (position, _), slot in plan.items():
        groups_in_slot.setdefault(slot, set()).add(graph.vertices[position].slot_sharing_group)
    assert all(len(groups) == 1 for groups in groups_in_slot.values())
    for position, v in enumerate(graph.vertices):
        assert len({plan[position, i] for i in range(v.parallelism)}) == v.parallelism


def test_subtask_i_of_every_vertex_shares_slot_i() -> None:
    graph = grouped_job([("default", 2), ("default", 2), ("other", 1)])
    plan = plan_slots(graph, {"tm1": 2, "tm2": 2})
    assert plan is not None
    assert plan[0, 0] == plan[1, 0]
    assert plan[0, 1] == plan[1, 1]
    assert plan[2, 0] not in {plan[0, 0], plan[0, 1]}
    assert plan_slots(graph, {"tm1": 2}) is None


def test_job_manager_deploys_by_slot_sharing_group() -> None:
    source = vertex("s", ("Source: Sequence Source", SequenceSourceFactory(1, 10)), parallelism=2)
    mapper = vertex("m", ("Map", MapFactory(abs)), parallelism=2)
    sink = vertex("k", ("Sink: Sink", SinkFactory(print)), parallelism=1, group="sinks")
    graph = job("groups", [source, mapper, sink], [edge(source, mapper), edge(mapper, sink)])
    job_manager = JobManager()
    job_manager.start()
    try:
        tms = [FakeTaskManager(job_manager, f"tm{i}", 1, 6000 + i).register() for i in range(3)]
        results: list[JobResult] = []

        class Listener:
            def on_collect(self, batch: object) -> None:
                raise AssertionError("no collect sink")

            def on_result(self, result: JobResult) -> None:
                results.append(result)

        job_manager.submit(graph, Listener())
        placed: dict[str, list[str]] = {}
        deployed = []
        for tm in tms:
            for tdd in tm.deployments(1 if tm is tms[2] else 2):
                placed.setdefault(tm.registration.tm_id, []).append(tdd.task_name)
                deployed.append((tm, tdd))
        names = sorted(sorted(names) for names in placed.values())
        assert names == [
            ["Map (1/2)", "Source: Sequence Source (1/2)"],
            ["Map (2/2)", "Source: Sequence Source (2/2)"],
            ["Sink: Sink (1/1)"],
        ]
        # Each consumer reads the producer at its TaskManager's data address.
        sink_tdd = next(tdd for _, tdd in deployed if tdd.task_name.startswith("Sink"))
        addresses = {
            d.producer_address for d in sink_tdd.consumed[0].descriptor.shuffle_descriptors
        }
        assert addresses == {("127.0.0.1", 6000), ("127.0.0.1", 6001)}
        with pytest.raises(IllegalStateError, match="submitted already"):
            job_manager.submit(graph, Listener())
        for tm, tdd in deployed:
            tm.report(tdd, ExecutionState.RUNNING)
        assert job_manager.wait_until_running(graph.job_id, WAIT_S)
        for tm, tdd in deployed:
            tm.report(tdd, ExecutionState.FINISHED)
        assert job_manager.wait_for_task_managers(3, WAIT_S)
    finally:
        job_manager.shutdown()
    assert len(results) == 1
    result = results[0]
    assert result.error is None
    assert not result.cancelled
    assert set(result.metrics) == {tdd.task_name for _, tdd in deployed}


def test_task_manager_count_follows_slots() -> None:
    graph = doubling_job(parallelism=3)
    assert task_managers_for(graph, Configuration()) == 3
    assert task_managers_for(graph, Configuration({"taskmanager.numberOfTaskSlots": 2})) == 2
    configured = Configuration({"minicluster.number-of-taskmanagers": 5})
    assert task_managers_for(graph, configured) == 5


# -- running jobs ---------------------------------------------------------------------


@pytest.mark.cluster
def test_two_task_managers_run_a_rebalanced_job_exactly() -> None:
    records = cast(list[tuple[int, int]], list(execute_and_collect(pid_job(2000), Configuration())))
    assert sorted(value for _, value in records) == list(range(1, 2001))
    pids = {pid for pid, _ in records}
    # Two TaskManager processes, neither of them this one: data crossed loopback TCP.
    assert len(pids) == 2
    assert os.getpid() not in pids


@pytest.mark.cluster
def test_minicluster_execute_returns_the_result_with_metrics() -> None:
    source = vertex("s", ("Source: Sequence Source", SequenceSourceFactory(1, 500)), parallelism=2)
    mapper = vertex(
        "m",
        ("Map", MapFactory(lambda x: x + 1)),
        ("Sink: Discard", SinkFactory(lambda x: None)),
        parallelism=2,
    )
    graph = job("metrics", [source, mapper], [edge(source, mapper)])
    result = execute(graph, Configuration())
    assert result.get_job_id() == graph.job_id
    assert result.job_name == "metrics"
    assert result.get_net_runtime() >= 0
    metrics = result.get_metrics()
    assert set(metrics) == {
        "Source: Sequence Source (1/2)",
        "Source: Sequence Source (2/2)",
        "Map -> Sink: Discard (1/2)",
        "Map -> Sink: Discard (2/2)",
    }
    sources = [m for name, m in metrics.items() if name.startswith("Source")]
    sinks = [m for name, m in metrics.items() if name.startswith("Map")]
    assert sum(m["numRecordsOut"] for m in sources) == 500
    assert sum(m["numRecordsIn"] for m in sinks) == 500


@pytest.mark.cluster
def test_an_observer_sees_metric_updates_with_flinks_task_names() -> None:
    source = vertex("s", ("Source: Sequence Source", SequenceSourceFactory(1, 5000)), parallelism=2)
    mapper = vertex(
        "m", ("Map", MapFactory(abs)), ("Sink: Discard", SinkFactory(lambda x: None)), parallelism=2
    )
    graph = job("observed", [source, mapper], [edge(source, mapper)])
    updates: list[JobMetricsUpdate] = []
    with observe_jobs(updates.append):
        result = execute(graph, Configuration())
    names = {
        "Source: Sequence Source (1/2)",
        "Source: Sequence Source (2/2)",
        "Map -> Sink: Discard (1/2)",
        "Map -> Sink: Discard (2/2)",
    }
    assert updates
    assert all(update.job_id == graph.job_id and set(update.states) == names for update in updates)
    assert [update.final for update in updates] == [False] * (len(updates) - 1) + [True]
    final = updates[-1]
    assert set(final.states.values()) == {"FINISHED"}
    assert final.metrics == result.get_metrics()
    assert sum(final.metrics[name]["numRecordsOut"] for name in names if "Source" in name) == 5000
    # Outside the context, jobs run unobserved.
    execute(graph_of_doubling := doubling_job(10), Configuration({"execution.target": "local"}))
    assert all(update.job_id != graph_of_doubling.job_id for update in updates)


def test_local_target_runs_in_process() -> None:
    config = Configuration({"execution.target": "local"})
    records = cast(list[tuple[int, int]], list(execute_and_collect(pid_job(1000), config)))
    assert sorted(value for _, value in records) == list(range(1, 1001))
    assert {pid for pid, _ in records} == {os.getpid()}
    result = execute(doubling_job(100), config)
    assert "Map -> Sink: Collect (2/2)" in result.get_metrics()


def test_collect_limit_and_close_cancel_the_job() -> None:
    config = Configuration({"execution.target": "local"})
    endless = doubling_job(count=10**12)
    assert len(list(execute_and_collect(endless, config, limit=25))) == 25
    iterator = execute_and_collect(doubling_job(count=10**12), config)
    first = [next(iterator) for _ in range(3)]
    assert all(isinstance(value, int) and value % 2 == 0 for value in first)
    assert isinstance(iterator, CloseableIterator)
    iterator.close()
    with pytest.raises(StopIteration):
        next(iterator)


def test_collect_in_a_with_block_cancels_the_job_when_the_block_ends() -> None:
    # PyFlink's idiom: with ds.execute_and_collect() as results: ...
    config = Configuration({"execution.target": "local"})
    with execute_and_collect(doubling_job(count=10**12), config) as records:
        assert [cast(int, next(records)) % 2 for _ in range(3)] == [0, 0, 0]
    with pytest.raises(StopIteration):
        next(records)


class LostSession:
    """A session whose JobManager is gone: every read raises, and nothing else comes."""

    def __init__(self) -> None:
        self.calls: list[str] = []
        self.job = doubling_job(1)

    def next_event(self, timeout_s: float | None = None) -> None:
        self.calls.append("next_event")
        msg = "lost the JobManager"
        raise JobExecutionError(msg, self.job.job_id)

    def ack(self, batch: object) -> None:
        self.calls.append("ack")

    def cancel(self) -> None:
        self.calls.append("cancel")

    def close(self) -> None:
        self.calls.append("close")


def test_collect_raises_a_lost_job_manager_without_waiting_for_a_result() -> None:
    # Waiting for the result of a cancel would take CANCEL_WAIT_S: no result can come.
    session = LostSession()
    records = _collect(cast("JobSession", session), None, None)
    assert next(records) is None  # the placeholder
    with pytest.raises(JobExecutionError, match="lost the JobManager"):
        next(records)
    assert session.calls == ["next_event", "close"]


@pytest.mark.cluster
def test_collect_on_minicluster_stops_with_limit() -> None:
    records = list(execute_and_collect(doubling_job(count=10**12), Configuration(), limit=100))
    assert len(records) == 100


@pytest.mark.cluster
def test_a_minicluster_shuts_its_processes_down() -> None:
    with MiniCluster(Configuration({"taskmanager.numberOfTaskSlots": 2}), 2) as cluster:
        pids = cluster.task_manager_pids
        assert len(pids) == 2
        assert cluster.job_manager.num_task_managers == 2
    for pid in pids:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)


def _unreachable_task_manager(close_stdin: bool) -> subprocess.CompletedProcess[str]:
    """A mini-cluster TaskManager whose JobManager has already gone (a port nobody serves)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    command = [sys.executable, "-m", "penstock.runtime.taskmanager"]
    command += ["--jobmanager", f"127.0.0.1:{port}", "--bootstrap-stdin"]
    process = subprocess.Popen(command, stdin=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert process.stdin is not None
    process.stdin.write(new_secret().decode() + "\n[]\n")
    process.stdin.flush()
    if close_stdin:
        process.stdin.close()  # what MiniCluster.close() does after stopping the JobManager
    try:
        process.wait(WAIT_S)  # not communicate(): that would close stdin
        assert process.stderr is not None
        stderr = process.stderr.read()
    finally:
        process.kill()
        process.wait()
        for pipe in (process.stdin, process.stderr):
            if pipe is not None:
                pipe.close()
    return subprocess.CompletedProcess(command, process.returncode, "", stderr)


@pytest.mark.cluster
def test_a_task_manager_of_a_closing_mini_cluster_exits_quietly() -> None:
    """Ctrl-C right after `penstock run`: the TaskManagers find no JobManager; no error."""
    result = _unreachable_task_manager(close_stdin=True)
    assert result.returncode == 0
    assert "error" not in result.stderr


@pytest.mark.cluster
def test_a_task_manager_that_cannot_reach_a_live_cluster_reports_it() -> None:
    result = _unreachable_task_manager(close_stdin=False)
    assert result.returncode == 1
    assert "taskmanager: error: cannot reach the JobManager at 127.0.0.1:" in result.stderr


@pytest.mark.cluster
def test_a_task_manager_that_fails_on_the_way_up_is_reported_with_the_count_registered() -> None:
    # Two TaskManagers on one fixed data port (the client refuses that; this cluster is
    # built directly): the one that cannot bind it exits, the other one registers.
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    before = child_pids()
    cluster = MiniCluster(Configuration({"taskmanager.data.port": port}), 2)
    with pytest.raises(ClusterError, match="exited with status 1 while the mini-cluster"):
        cluster.start()
    assert child_pids() - before == set()


@pytest.mark.cluster
def test_task_managers_run_in_process_groups_of_their_own() -> None:
    # A terminal's Ctrl-C goes to the client's process group: the client cancels and
    # shuts the TaskManagers down in order; none of them dies of it half started.
    with MiniCluster(Configuration({"taskmanager.numberOfTaskSlots": 1}), 2) as cluster:
        groups = {os.getpgid(pid) for pid in cluster.task_manager_pids}
    assert groups == set(cluster.task_manager_pids)
    assert os.getpgid(0) not in groups


@pytest.mark.cluster
def test_close_kills_a_task_manager_the_job_manager_lost_without_a_grace_period(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # A frozen TaskManager (stopped, or stuck) counts as lost after heartbeat.timeout:
    # the error has reached the job already, and close() must not make the user wait
    # the grace period that is meant for a TaskManager shutting down in order.
    config = Configuration({"heartbeat.interval": "100 ms", "heartbeat.timeout": "500 ms"})
    cluster = MiniCluster(config, 2).start()
    try:
        frozen = cluster.task_manager_pids[0]
        os.kill(frozen, signal.SIGSTOP)
        deadline = time.monotonic() + 10
        while cluster.job_manager.num_task_managers != 1:
            assert time.monotonic() < deadline, "the frozen TaskManager was never lost"
            time.sleep(0.05)
    finally:
        cluster.close()
    assert "did not exit" not in caplog.text
    assert [p.returncode for p in cluster._processes if p.pid == frozen] == [-signal.SIGKILL]


# -- CPU placement ----------------------------------------------------------------------


def test_each_task_manager_gets_a_cpu_of_its_own_when_there_are_enough() -> None:
    assert cpus_for_task_managers(2, {3, 0, 5}) == [0, 3]
    assert cpus_for_task_managers(1, {7}) == [7]
    assert cpus_for_task_managers(3, {0, 1}) is None  # sharing CPUs: better not pinned


needs_two_cpus = pytest.mark.skipif(
    not hasattr(os, "sched_getaffinity") or len(os.sched_getaffinity(0)) < 2,
    reason="needs CPU affinity and two CPUs",
)


@needs_two_cpus
@pytest.mark.cluster
def test_a_minicluster_pins_its_task_managers_to_different_cpus() -> None:
    allowed = os.sched_getaffinity(0)
    policy = os.sched_getscheduler(0)
    with MiniCluster(Configuration({"taskmanager.numberOfTaskSlots": 1}), 2) as cluster:
        placed = [os.sched_getaffinity(pid) for pid in cluster.task_manager_pids]
        policies = [os.sched_getscheduler(pid) for pid in cluster.task_manager_pids]
    assert all(len(cpus) == 1 and cpus <= allowed for cpus in placed)
    assert placed[0] != placed[1]
    assert policies == [os.SCHED_BATCH] * 2  # woken threads do not preempt their waker
    assert os.sched_getaffinity(0) == allowed  # the client process is left as it was
    assert os.sched_getscheduler(0) == policy


@needs_two_cpus
@pytest.mark.cluster
def test_pinning_can_be_turned_off() -> None:
    config = Configuration({"minicluster.pin-taskmanagers": False})
    with MiniCluster(config, 2) as cluster:
        placed = [os.sched_getaffinity(pid) for pid in cluster.task_manager_pids]
        policies = [os.sched_getscheduler(pid) for pid in cluster.task_manager_pids]
    assert placed == [os.sched_getaffinity(0)] * 2
    assert policies == [os.sched_getscheduler(0)] * 2


def test_a_cpu_that_cannot_be_had_leaves_the_task_manager_unpinned(
    caplog: pytest.LogCaptureFixture,
) -> None:
    before = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else None
    pin_to_cpu(1 << 20)  # no such CPU
    assert "running unpinned" in caplog.text
    if before is not None:
        assert os.sched_getaffinity(0) == before


# -- remote -----------------------------------------------------------------------------


def stop(process: subprocess.Popen[str] | subprocess.Popen[bytes]) -> int:
    """Waits for ``process`` to exit, killing it after ``WAIT_S``; its return code."""
    try:
        return process.wait(timeout=WAIT_S)
    except subprocess.TimeoutExpired:
        process.kill()
        return process.wait(timeout=WAIT_S)


@pytest.fixture
def remote_cluster(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """A ``penstock jobmanager`` and a ``penstock taskmanager`` (2 slots), as processes."""
    secret_file = tmp_path / "secret"
    command = [sys.executable, "-m", "penstock"]
    jobmanager = subprocess.Popen(
        [
            *command,
            "jobmanager",
            "--host",
            "127.0.0.1",
            "--port",
            "0",
            "--secret-file",
            str(secret_file),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    taskmanager: subprocess.Popen[bytes] | None = None
    assert jobmanager.stdout is not None
    output = LineReader(jobmanager.stdout)
    try:
        line = output.readline()
        assert line.startswith("JobManager listening on "), line
        address = line.split()[-1]
        taskmanager = subprocess.Popen(
            [
                *command,
                "taskmanager",
                "--jobmanager",
                address,
                "--slots",
                "2",
                "--secret-file",
                str(secret_file),
            ]
        )
        yield address, secret_file
    finally:
        jobmanager.terminate()
        # The JobManager's shutdown tells its TaskManagers to exit.
        codes = {"jobmanager": stop(jobmanager)}
        if taskmanager is not None:
            codes["taskmanager"] = stop(taskmanager)
        output.close()
    assert codes == dict.fromkeys(codes, 0), "a process did not exit cleanly (-9: killed)"


@pytest.mark.cluster
def test_remote_target_runs_on_a_cluster_started_by_hand(
    remote_cluster: tuple[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    address, secret_file = remote_cluster
    host, port = address.rsplit(":", 1)
    config = Configuration(
        {"execution.target": "remote", "jobmanager.rpc.address": host, "jobmanager.rpc.port": port}
    )
    monkeypatch.setenv(SECRET_ENV, secret_file.read_text().strip())
    # The job waits for the TaskManager to register, however late it is.
    records = cast(list[int], list(execute_and_collect(doubling_job(300), config)))
    assert sorted(records) == [2 * value for value in range(1, 301)]
    # A job that cannot be pickled is refused by the client, which names the culprit
    # (the other targets fail the job with a similar message that names the subtask).
    # The cluster runs on.
    lock = threading.Lock()

    def key(value: int) -> int:
        with lock:
            return value % 2

    env = StreamExecutionEnvironment.get_execution_environment(config)
    env.from_collection([1, 2, 3]).key_by(key).print()
    with pytest.raises(SerializationError) as refused:
        env.execute("unpicklable key")
    assert str(refused.value).startswith(
        "job 'unpicklable key' cannot be sent to the JobManager: the key selector of the "
        "HASH edge from 'Source: Collection Source' cannot be pickled (TypeError: cannot "
        "pickle '_thread.lock' object)."
    )
    result = execute(doubling_job(50), config)
    assert len(result.get_metrics()) == 4
    monkeypatch.setenv(SECRET_ENV, new_secret().decode())

    with pytest.raises(ClusterError, match="refused"):
        execute(doubling_job(50), config)


# -- collect backpressure ----------------------------------------------------------------


def test_a_collect_sink_blocks_beyond_its_window_until_acknowledged(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import queue
    import threading

    from penstock.errors import TaskCancelledError
    from penstock.ids import ExecutionAttemptID, JobID
    from penstock.runtime.control import CollectBatch, ControlMessage
    from penstock.runtime.taskmanager import _CollectChannel

    sent: queue.SimpleQueue[ControlMessage] = queue.SimpleQueue()
    channel = _CollectChannel(JobID.generate(), ExecutionAttemptID.generate(), sent.put, 2)
    # Each call either waits on the channel's condition or returns: both settle it.
    condition = channel._condition
    real_wait = condition.wait
    waits: list[int] = []
    settled = threading.Event()
    returned = threading.Event()

    def wait(timeout: float | None = None) -> bool:
        waits.append(1)
        settled.set()  # the lock is held until the real wait releases it
        return real_wait(timeout)

    monkeypatch.setattr(condition, "wait", wait)
    channel([1])
    channel([2])
    assert not waits  # within the window nothing waits
    errors: list[BaseException] = []

    def third() -> None:
        try:
            channel([3])
        except TaskCancelledError as exc:
            errors.append(exc)
        finally:
            returned.set()
            settled.set()

    def start_third() -> threading.Thread:
        settled.clear()
        returned.clear()
        thread = threading.Thread(target=third)
        thread.start()
        assert settled.wait(WAIT_S)
        return thread

    blocked = start_third()
    # Two batches in flight: the third waits for the client, unsent.
    assert not returned.is_set()
    assert len(waits) == 1
    assert sent.qsize() == 2
    channel.ack()  # takes the lock, so the third is really waiting by now
    blocked.join(timeout=WAIT_S)
    assert not blocked.is_alive()
    batches = [sent.get(timeout=WAIT_S) for _ in range(3)]
    assert [b.seq for b in batches if isinstance(b, CollectBatch)] == [1, 2, 3]
    waiting = start_third()  # two in flight again
    assert not returned.is_set()
    channel.cancel()  # a cancelled task's sink stops waiting
    waiting.join(timeout=WAIT_S)
    assert not waiting.is_alive()
    assert len(errors) == 1
    assert sent.empty()


def test_a_job_larger_than_the_mini_cluster_fails_at_once_without_processes() -> None:
    # A mini-cluster cannot grow: waiting for slots (60 s by default) would be in vain.
    from penstock.errors import ClusterError

    config = Configuration(
        {
            "execution.target": "minicluster",
            "minicluster.number-of-taskmanagers": 1,
            "taskmanager.numberOfTaskSlots": 1,
        }
    )
    with pytest.raises(ClusterError, match="needs 2 slots, but the mini-cluster has 1"):
        execute(doubling_job(10, parallelism=2), config)
