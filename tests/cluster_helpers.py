"""Shared by the cluster tests: job graphs built by hand, a fake TaskManager, process checks.

Jobs are JobGraphs built directly from the operator factories of
``penstock.task.operators`` (no DataStream API). ``FakeTaskManager`` stands in for a
TaskManager behind a JobManager: it records what the JobManager sends and lets a test
answer with task states, so scheduling and failure handling are tested without
processes. ``child_pids`` reads ``/proc`` to find processes this test process started;
``LineReader`` and ``reap`` wait for a child's output and its end, each with a timeout.
"""

from __future__ import annotations

import os
import queue
import select
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import IO, Final

import pytest

from penstock.ids import IntermediateDataSetID, JobID, JobVertexID
from penstock.runtime.control import (
    ControlMessage,
    DeployTask,
    RegisterTaskManager,
    TaskStateChanged,
)
from penstock.runtime.deployment import TaskDeploymentDescriptor
from penstock.runtime.job_graph import JobEdge, JobGraph, JobVertex, OperatorSpec, PartitionerSpec
from penstock.runtime.jobmanager import JobManager
from penstock.runtime.states import ExecutionState
from penstock.serialization.types import GenericSerializer
from penstock.task.operator import OperatorFactory

WAIT_S: Final = 30.0
"""The longest a test waits for any one event."""


def vertex(
    name: str,
    *factories: tuple[str, OperatorFactory],
    parallelism: int = 1,
    group: str = "default",
    buffer_timeout_ms: int = 5,
) -> JobVertex:
    """A vertex chaining ``(operator name, factory)`` pairs."""
    del name
    operators = tuple(
        OperatorSpec(op_name, factory, node_id)
        for node_id, (op_name, factory) in enumerate(factories)
    )
    return JobVertex(
        JobVertexID.generate(),
        " -> ".join(spec.name for spec in operators),
        operators,
        parallelism,
        slot_sharing_group=group,
        buffer_timeout_ms=buffer_timeout_ms,
    )


def edge(
    source: JobVertex, target: JobVertex, kind: str = "rebalance", target_input: int = 0
) -> JobEdge:
    """An edge with the generic serializer."""
    return JobEdge(
        source.id,
        target.id,
        PartitionerSpec(kind),
        IntermediateDataSetID.generate(),
        GenericSerializer(),
        target_input,
    )


def job(name: str, vertices: Sequence[JobVertex], edges: Sequence[JobEdge] = ()) -> JobGraph:
    """A job of these vertices (topological order) and edges."""
    return JobGraph(JobID.generate(), name, tuple(vertices), tuple(edges))


class FakeTaskManager:
    """A TaskManager gateway whose messages a test reads and answers."""

    def __init__(self, job_manager: JobManager, tm_id: str, slots: int, port: int) -> None:
        self.job_manager = job_manager
        self.registration = RegisterTaskManager(tm_id, ("127.0.0.1", port), slots, os.getpid())
        self.received: queue.SimpleQueue[ControlMessage] = queue.SimpleQueue()
        self.closed = False

    def send(self, message: ControlMessage) -> None:
        self.received.put(message)

    def close(self, drain_s: float = 0.0) -> None:
        del drain_s
        self.closed = True

    def register(self) -> FakeTaskManager:
        self.job_manager.add_task_manager(self.registration, self)
        return self

    def next_of(self, kind: type[ControlMessage]) -> ControlMessage:
        """The next message of ``kind``, skipping others."""
        while True:
            message = self.received.get(timeout=WAIT_S)
            if isinstance(message, kind):
                return message

    def drain(self) -> list[ControlMessage]:
        """Every message received and not read yet."""
        messages = []
        while not self.received.empty():
            messages.append(self.received.get_nowait())
        return messages

    def deployments(self, count: int) -> list[TaskDeploymentDescriptor]:
        tdds = []
        for _ in range(count):
            message = self.next_of(DeployTask)
            assert isinstance(message, DeployTask)
            tdd = message.tdd.get()
            assert tdd.execution_id == message.execution_id
            tdds.append(tdd)
        return tdds

    def report(
        self,
        tdd: TaskDeploymentDescriptor,
        state: ExecutionState,
        error: BaseException | None = None,
    ) -> None:
        from penstock.errors import RemoteError

        remote = None if error is None else RemoteError.from_exception(error)
        metrics = {"numRecordsOut": 1.0} if state.is_terminal else None
        self.job_manager.on_message(
            self.registration.tm_id, TaskStateChanged(tdd.execution_id, state, remote, metrics)
        )


def child_pids(parent: int | None = None) -> set[int]:
    """Pids of the live (or unreaped) children of ``parent`` (default: this process), from /proc."""
    me = os.getpid() if parent is None else parent
    children = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # The command name may hold spaces; the fields after it are fixed.
        fields = stat.rsplit(")", 1)[1].split()
        if int(fields[1]) == me:
            children.add(int(entry.name))
    return children


def is_alive(pid: int) -> bool:
    """Whether ``pid`` exists and is not a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


class LineReader:
    """Reads a child's output on a thread of its own.

    A test then waits for each line with a timeout, not in a ``readline`` that may never
    return.
    """

    def __init__(self, stream: IO[str]) -> None:
        self._stream = stream
        self._lines: queue.SimpleQueue[str | None] = queue.SimpleQueue()
        self._ended = False
        self._thread = threading.Thread(target=self._read, name="line-reader", daemon=True)
        self._thread.start()

    def _read(self) -> None:
        try:
            for line in self._stream:
                self._lines.put(line)
        except (OSError, ValueError):  # the stream was closed under the thread
            pass
        finally:
            self._lines.put(None)

    def readline(self, timeout_s: float = WAIT_S) -> str:
        """The next line, or "" once the output has ended."""
        if self._ended:
            return ""
        try:
            line = self._lines.get(timeout=max(0.0, timeout_s))
        except queue.Empty:
            msg = f"no line of output within {timeout_s:g} s"
            raise AssertionError(msg) from None
        if line is None:
            self._ended = True
            return ""
        return line

    def rest(self, timeout_s: float = WAIT_S) -> str:
        """The output up to its end (every process writing it must be exiting)."""
        deadline = time.monotonic() + timeout_s
        lines = []
        try:
            while line := self.readline(deadline - time.monotonic()):
                lines.append(line)
        except AssertionError:
            msg = f"the output did not end within {timeout_s:g} s: a process still writes it"
            raise AssertionError(msg) from None
        return "".join(lines)

    def close(self, timeout_s: float = WAIT_S) -> None:
        """Waits for the end of the output, then closes the stream.

        Every process writing it must be gone; if one still holds it, the stream stays
        open (closing it would wait for the reading thread) and the test fails on the
        leftover process instead.
        """
        self._thread.join(timeout_s)
        if not self._thread.is_alive():
            self._stream.close()


def reap(pid: int, timeout_s: float = WAIT_S) -> int | None:
    """Waits up to ``timeout_s`` for child ``pid`` to end, reaps it, returns its wait status.

    None if it still runs then. ``pid`` must be a child of this process, or an orphan it
    adopted as a subreaper: ``os.waitpid`` raises ``ChildProcessError`` otherwise.
    """
    pidfd = os.pidfd_open(pid)  # readable once the process has ended
    try:
        ended, _, _ = select.select([pidfd], [], [], timeout_s)
    finally:
        os.close(pidfd)
    if not ended:
        return None
    _, status = os.waitpid(pid, 0)  # returns at once: the process has ended
    return status


@pytest.fixture(autouse=True)
def no_leftover_processes() -> Iterator[None]:
    """Fails a test that leaves a child process behind."""
    before = child_pids()
    yield
    left = child_pids() - before
    assert not left, f"processes left behind: {sorted(left)}"
