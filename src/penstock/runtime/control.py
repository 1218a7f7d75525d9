"""The control channel: messages between client, JobManager and TaskManagers, and its wire.

Control traffic (registrations, deployments, task states, heartbeats, results) is small
and travels apart from the data path, over ``multiprocessing.connection`` connections on
TCP. Every connection is authenticated with a key made per cluster before any message
is read: the HMAC challenge of ``multiprocessing.connection`` runs both ways, so a peer
without the key (a port scanner, a stray client, a wrong key) is refused and never gets
to send a message that would be unpickled. Only after that handshake do messages flow,
pickled with cloudpickle, because deployment descriptors carry user functions.

The data plane (``penstock.transport``) never unpickles anything; this channel may,
because both ends proved they hold the cluster's key.

Keys:

* a mini-cluster makes a fresh key (``new_secret``) and hands it to its TaskManager
  processes on their standard input, never on the command line (which other users of
  the host can read);
* a cluster started by hand (``penstock jobmanager`` / ``penstock taskmanager``) reads
  it from a file (``--secret-file``; the JobManager creates the file, mode 0600, if it
  does not exist) or from the environment variable ``PENSTOCK_CLUSTER_SECRET``; a client
  submitting to such a cluster reads the same variable.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import multiprocessing.connection
import os
import pickle
import socket
import struct
import threading
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final, Generic, TypeVar

import cloudpickle

from penstock.errors import ClusterError, ConfigurationError, RemoteError, SerializationError
from penstock.ids import ExecutionAttemptID, JobID
from penstock.runtime.deployment import TaskDeploymentDescriptor
from penstock.runtime.job_graph import JobGraph
from penstock.runtime.states import ExecutionState

__all__ = [
    "HANDSHAKE_TIMEOUT_S",
    "SECRET_ENV",
    "CancelJob",
    "CancelTask",
    "CollectAck",
    "CollectBatch",
    "ControlConnection",
    "ControlMessage",
    "ControlServer",
    "DeployTask",
    "Heartbeat",
    "JobManagerHeartbeat",
    "JobMetricsUpdate",
    "JobResult",
    "Outbox",
    "RegisterTaskManager",
    "RegistrationAccepted",
    "ReleaseJob",
    "SerializedValue",
    "Shutdown",
    "SubmitJob",
    "TaskStateChanged",
    "connect",
    "encode",
    "expect_heartbeats",
    "load_secret",
    "name_unpicklable",
    "new_secret",
    "parse_address",
    "read_secret_file",
    "write_secret_file",
]

log = logging.getLogger(__name__)

SECRET_ENV: Final = "PENSTOCK_CLUSTER_SECRET"
"""Environment variable holding the cluster key of a cluster started by hand."""

HANDSHAKE_TIMEOUT_S: Final = 10.0
"""How long a peer may take to answer the authentication challenge."""

_SECRET_BYTES: Final = 32
_SECRET_FILE: Final = "--secret-file"
_JOBMANAGER: Final = "--jobmanager"
_TIMEVAL: Final = struct.Struct("ll")

# -- keys -----------------------------------------------------------------------------


def new_secret() -> bytes:
    """A fresh random cluster key (64 hex characters, so it fits files and variables)."""
    return os.urandom(_SECRET_BYTES).hex().encode("ascii")


def read_secret_file(path: str | os.PathLike[str]) -> bytes:
    """The key in ``path``: its content without surrounding whitespace.

    Raises:
        ConfigurationError: The file is missing, unreadable or empty.
    """
    try:
        secret = Path(path).read_bytes().strip()
    except OSError as exc:
        raise ConfigurationError(_SECRET_FILE, os.fspath(path), str(exc)) from None
    if not secret:
        raise ConfigurationError(_SECRET_FILE, os.fspath(path), "the file is empty")
    return secret


def write_secret_file(path: str | os.PathLike[str]) -> bytes:
    """Creates ``path`` with a new key, readable by its owner only; returns the key.

    Raises:
        ConfigurationError: The file cannot be created (it may already exist).
    """
    secret = new_secret()
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except OSError as exc:
        raise ConfigurationError(_SECRET_FILE, os.fspath(path), str(exc)) from None
    with os.fdopen(fd, "wb") as file:
        file.write(secret + b"\n")
    return secret


def load_secret(
    path: str | os.PathLike[str] | None = None,
    environ: Mapping[str, str] | None = None,
    create: bool = False,
    offers_file: bool = True,
) -> bytes:
    """The cluster key: from ``path`` if given, else from ``PENSTOCK_CLUSTER_SECRET``.

    Args:
        path: A key file (``--secret-file``).
        environ: The environment (``os.environ`` when None).
        create: Create ``path`` with a new key if it does not exist (the JobManager).
        offers_file: The caller has a ``--secret-file`` option (a client has not):
            the error for a missing key suggests it.

    Raises:
        ConfigurationError: No key is given, or the file cannot be read.
    """
    if path is not None:
        if create and not Path(path).exists():
            return write_secret_file(path)
        return read_secret_file(path)
    value = (os.environ if environ is None else environ).get(SECRET_ENV, "").strip()
    if not value:
        reason = (
            f"the cluster key is missing: pass {_SECRET_FILE} or set {SECRET_ENV} to the "
            "key of the cluster"
            if offers_file
            else f"the cluster key is missing: set {SECRET_ENV} to the key of the cluster "
            f"(the contents of the JobManager's {_SECRET_FILE})"
        )
        raise ConfigurationError(SECRET_ENV, "", reason)
    return value.encode("utf-8")


def parse_address(text: str) -> tuple[str, int]:
    """``HOST:PORT`` as a tuple.

    Raises:
        ConfigurationError: Not ``HOST:PORT`` with a port from 1 to 65535.
    """
    host, colon, port = text.rpartition(":")
    if not colon or not host or not port.isdigit() or not 0 < int(port) < 65536:
        reason = "expected HOST:PORT"
        raise ConfigurationError(_JOBMANAGER, text, reason)
    return host.strip("[]"), int(port)


# -- messages -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RegisterTaskManager:
    """TaskManager → JobManager, first message: who it is and where its data lives."""

    tm_id: str
    data_address: tuple[str, int]
    slots: int
    pid: int


@dataclass(frozen=True, slots=True)
class RegistrationAccepted:
    """JobManager → TaskManager: registered; heartbeats are expected from now on."""

    tm_id: str


@dataclass(frozen=True, slots=True)
class Heartbeat:
    """TaskManager → JobManager: alive, with a metrics snapshot of each running task."""

    tm_id: str
    metrics: dict[ExecutionAttemptID, dict[str, float]] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class JobManagerHeartbeat:
    """JobManager → TaskManager or client: alive, and how often it says so.

    The first message on each connection, then sent whenever the JobManager has sent
    nothing else for ``interval_ms`` (its ``heartbeat.interval``). A peer that hears
    nothing from its JobManager (this or any other message) for its own
    ``heartbeat.timeout``, or for twice ``interval_ms`` if that is longer, counts the
    JobManager as lost, as the JobManager counts a silent TaskManager
    (``expect_heartbeats``).
    """

    interval_ms: int


T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class SerializedValue(Generic[T]):
    """A value pickled apart from the message that carries it (Flink's SerializedValue).

    User code (functions, records of user classes) is read only where it is used, so a
    value that cannot be read there (its module is missing in that process) fails that
    use, with the error as cause, instead of the connection that carried it. It also
    passes through a process that only forwards it (the JobManager, for collected
    records) without being read at all.
    """

    data: bytes

    @classmethod
    def of(cls, value: T) -> SerializedValue[T]:
        return cls(cloudpickle.dumps(value))

    def get(self) -> T:
        """A fresh copy of the value.

        Raises:
            Exception: Whatever unpickling raises (ModuleNotFoundError, AttributeError...).
        """
        return pickle.loads(self.data)  # type: ignore[no-any-return]


def name_unpicklable(
    subject: str, parts: Iterable[tuple[str, object]], error: Exception
) -> SerializationError:
    """``error``, raised pickling ``subject``, named after the first of ``parts`` that fails.

    As Flink's "The implementation of the MapFunction is not serializable": which
    operator's function (or which edge's key selector, partitioner or serializer) holds
    what cannot be pickled, not only the type of that object. Each part is a
    description and its value. The cause of the result is the part's own error, or
    ``error`` if every part pickles on its own.
    """
    for part, value in parts:
        try:
            cloudpickle.dumps(value)
        except Exception as cause:
            msg = (
                f"{subject}: {part} cannot be pickled ({type(cause).__name__}: {cause}). "
                "It probably refers to an object that cannot leave this process (a lock, "
                "an open file or socket, a client connection); create such objects where "
                "they are used (in a function's open(), for instance) instead of capturing "
                "them"
            )
            named = SerializationError(msg)
            named.__cause__ = cause
            return named
    whole = SerializationError(f"{subject}: {type(error).__name__}: {error}")
    whole.__cause__ = error
    return whole


@dataclass(frozen=True, slots=True)
class DeployTask:
    """JobManager → TaskManager: run this subtask.

    A TaskManager that cannot read the descriptor reports the subtask FAILED.
    """

    execution_id: ExecutionAttemptID
    tdd: SerializedValue[TaskDeploymentDescriptor]


@dataclass(frozen=True, slots=True)
class CancelTask:
    """JobManager → TaskManager: cancel this subtask (idempotent)."""

    execution_id: ExecutionAttemptID


@dataclass(frozen=True, slots=True)
class ReleaseJob:
    """JobManager → TaskManager: the job has ended; release what its subtasks left.

    A pipelined partition is released once its consumers have read it to its end; one
    whose consumer never came (it failed first) would otherwise hold its buffers for as
    long as the TaskManager lives. Flink releases a job's partitions on each
    TaskExecutor the same way when the job ends.
    """

    job_id: JobID


@dataclass(frozen=True, slots=True)
class TaskStateChanged:
    """TaskManager → JobManager: a subtask changed state.

    ``error`` is the failure of a FAILED task as text (type name, message, traceback);
    ``metrics`` is its final snapshot when the state is terminal.
    """

    execution_id: ExecutionAttemptID
    state: ExecutionState
    error: RemoteError | None = None
    metrics: dict[str, float] | None = None


@dataclass(frozen=True, slots=True)
class CollectBatch:
    """Records of a collect sink, TaskManager → JobManager → client; ``seq`` per task.

    The records are read only by the client.
    """

    job_id: JobID
    execution_id: ExecutionAttemptID
    seq: int
    records: SerializedValue[list[object]]


@dataclass(frozen=True, slots=True)
class CollectAck:
    """Client → JobManager → TaskManager: batch ``seq`` was consumed; send more."""

    execution_id: ExecutionAttemptID
    seq: int


@dataclass(frozen=True, slots=True)
class Shutdown:
    """JobManager → TaskManager: cancel everything, release the network stack, exit."""

    reason: str = ""


@dataclass(frozen=True, slots=True)
class SubmitJob:
    """Client → JobManager: run this job and report back on this connection.

    The job travels as a ``SerializedValue`` beside its id and name, so that a
    JobManager that cannot load it (a module of its functions is not importable there)
    answers with a failed ``JobResult`` instead of losing the connection.
    With ``metrics`` the client also gets a ``JobMetricsUpdate`` about once a second.
    """

    job_id: JobID
    job_name: str
    job: SerializedValue[JobGraph]
    metrics: bool = False

    @classmethod
    def of(cls, job: JobGraph, metrics: bool = False) -> SubmitJob:
        return cls(job.job_id, job.name, SerializedValue.of(job), metrics)


@dataclass(frozen=True, slots=True)
class CancelJob:
    """Client → JobManager: cancel the job."""

    job_id: JobID


@dataclass(frozen=True, slots=True)
class JobResult:
    """JobManager → client: the job ended.

    Attributes:
        job_id: The job.
        job_name: Its name.
        net_runtime_ms: From deployment to the last task's end.
        metrics: Final metrics per task name, Flink's names.
        error: The first failure (a ``RemoteError`` for a task failure, a
            ``ClusterError`` for a lost TaskManager or missing slots), None on success.
        cancelled: The job was cancelled on request.
    """

    job_id: JobID
    job_name: str
    net_runtime_ms: int
    metrics: dict[str, dict[str, float]]
    error: BaseException | None = None
    cancelled: bool = False


@dataclass(frozen=True, slots=True)
class JobMetricsUpdate:
    """JobManager → client: the live metrics of a job's tasks, about once a second.

    Built from the latest heartbeats; the last update of a job (``final``) carries every
    task's final metrics and comes just before the job's ``JobResult``.

    Attributes:
        job_id: The job.
        job_name: Its name.
        elapsed_ms: Milliseconds since the job was deployed (0 before).
        metrics: Latest metrics per task name ("Map (1/2)"), Flink's names.
        states: Each task's ExecutionState name ("RUNNING").
        sampled_ms: Per task name, ``elapsed_ms`` when its metrics arrived, so that a
            rate is a difference of counters over the time between two samples.
        final: The job has ended; the metrics are final.
        outcome: How it ended, on the final update: FINISHED, FAILED or CANCELED (a
            job can fail before it has tasks, so their states cannot tell); "" before.
    """

    job_id: JobID
    job_name: str
    elapsed_ms: int
    metrics: dict[str, dict[str, float]]
    states: dict[str, str]
    sampled_ms: dict[str, int]
    final: bool = False
    outcome: str = ""


ControlMessage = (
    RegisterTaskManager
    | RegistrationAccepted
    | Heartbeat
    | JobManagerHeartbeat
    | DeployTask
    | CancelTask
    | ReleaseJob
    | TaskStateChanged
    | CollectBatch
    | CollectAck
    | Shutdown
    | SubmitJob
    | CancelJob
    | JobResult
    | JobMetricsUpdate
)
_MESSAGE_TYPES: Final = ControlMessage.__args__

# -- connections ----------------------------------------------------------------------


class ControlConnection:
    """An authenticated control connection; ``send`` is safe from any thread.

    Args:
        connection: A connection whose handshake has completed.
        peer: Names the peer in log lines and errors.
    """

    def __init__(
        self, connection: multiprocessing.connection.Connection[bytes, bytes], peer: str
    ) -> None:
        self._connection = connection
        self.peer = peer
        self._send_lock = threading.Lock()
        self._closed = False
        self._receive_timeout = "0 ms"
        self.receive_timeout_s = 0.0
        """The bound of each wait in ``recv`` (0: none)."""

    def send(self, message: ControlMessage) -> None:
        """Sends one message.

        Raises:
            ClusterError: The connection is closed or broken.
        """
        self.send_payload(encode(message))

    def send_payload(self, payload: bytes) -> None:
        """Sends one message that ``encode`` made.

        Raises:
            ClusterError: The connection is closed or broken.
        """
        with self._send_lock:
            try:
                self._connection.send_bytes(payload)
            except (OSError, ValueError, TypeError) as exc:
                # TypeError: close() in another thread dropped the handle under this write.
                msg = f"lost the control connection to {self.peer}: {exc}"
                raise ClusterError(msg) from exc

    def set_receive_timeout(self, seconds: float, setting: str = "") -> None:
        """Bounds each wait in ``recv`` to ``seconds`` (0: for ever).

        Args:
            seconds: The timeout.
            setting: The configuration key it comes from, for the error.
        """
        with contextlib.suppress(OSError, ValueError):
            _set_receive_timeout(self._connection, seconds)
        self.receive_timeout_s = seconds
        waited = f"{round(seconds * 1000)} ms"
        self._receive_timeout = f"{waited} ({setting})" if setting else waited

    def recv(self) -> ControlMessage:
        """Waits for the next message.

        Raises:
            EOFError: The peer closed the connection (or it was closed here).
            ClusterError: The peer sent something that is not a control message, or
                nothing within the receive timeout (the connection is of no further
                use then: a message may have been cut).
        """
        try:
            payload = self._connection.recv_bytes()
        except BlockingIOError as exc:  # SO_RCVTIMEO ran out
            msg = f"heard nothing from {self.peer} for {self._receive_timeout}"
            raise ClusterError(msg) from exc
        except (OSError, ValueError, TypeError) as exc:
            # TypeError: close() in another thread dropped the handle under this read.
            raise EOFError(str(exc)) from exc
        message = pickle.loads(payload)  # the peer is authenticated
        if not isinstance(message, _MESSAGE_TYPES):
            msg = f"{self.peer} sent {type(message).__name__}, not a control message"
            raise ClusterError(msg)
        return message  # type: ignore[no-any-return]

    def close(self) -> None:
        """Closes the connection; a thread blocked in ``recv`` or ``send`` wakes up."""
        if self._closed:
            return
        self._closed = True
        # shutdown() wakes a reader blocked on this socket in another thread; close()
        # alone would not.
        with contextlib.suppress(OSError):
            sock = socket.socket(fileno=os.dup(self._connection.fileno()))
            with sock:
                sock.shutdown(socket.SHUT_RDWR)
        with contextlib.suppress(OSError):
            self._connection.close()

    def __repr__(self) -> str:
        return f"ControlConnection({self.peer})"


def encode(message: ControlMessage) -> bytes:
    """``message`` as it travels (cloudpickle: deployments carry user functions).

    Raises:
        Exception: Whatever pickling raises for a part that cannot be pickled.
    """
    payload: bytes = cloudpickle.dumps(message)
    return payload


def expect_heartbeats(
    connection: ControlConnection, heartbeat: JobManagerHeartbeat, timeout_s: float
) -> None:
    """Waits on ``connection`` for ``timeout_s``, or twice the JobManager's interval.

    Each process reads ``heartbeat.timeout`` from its own configuration, and the
    JobManager's ``heartbeat.interval`` from its own: a JobManager that beats every
    minute would be lost after 50 s by a TaskManager left at the defaults. So a peer
    waits at least two of the JobManager's intervals, and says so once.

    Args:
        connection: The connection to the JobManager (read by the calling thread).
        heartbeat: A heartbeat it sent.
        timeout_s: This process's ``heartbeat.timeout``.
    """
    needed_s = 2 * heartbeat.interval_ms / 1000
    if timeout_s <= 0 or needed_s <= max(timeout_s, connection.receive_timeout_s):
        return  # waits for ever, or long enough
    log.warning(
        "the JobManager at %s sends heartbeats every %d ms, so it counts as lost after "
        "%d ms of silence here, not after heartbeat.timeout (%d ms)",
        connection.peer,
        heartbeat.interval_ms,
        round(needed_s * 1000),
        round(timeout_s * 1000),
    )
    connection.set_receive_timeout(needed_s, "twice the JobManager's heartbeat.interval")


class Outbox:
    """Sends one connection's messages from a thread of its own, so no sender waits.

    The JobManager's main thread talks to every TaskManager and client. Were it to write
    to their sockets itself, one peer that stops reading (a client suspended with
    Ctrl-Z while its collected records fill the socket's buffers) would stop it, and
    with it the heartbeats of every TaskManager, which would all count as lost. So its
    messages are pickled where they are sent (an unpicklable one fails there, at once)
    and written in order by this outbox's thread.

    What waits here is bounded by the protocol, not by a limit of its own: collected
    batches by the collect window, acknowledgements by the batches, and a message sent
    with a ``supersede`` key replaces the one with that key still waiting (a newer
    metrics update makes an unsent one worthless).

    With a ``keepalive`` message, the outbox writes it first and then whenever it has
    written nothing else for ``keepalive_s``: the peer hears from this process at least
    that often, whatever its main thread is doing (loading a job, pickling
    deployments), and learns the interval before its own timeout can run out.

    A write that fails closes the connection, which wakes its reader (that is how the
    JobManager hears of the loss) and makes every later ``send`` raise.

    Args:
        connection: The connection to write to; this outbox closes it.
        name: Names the thread.
        keepalive: Written first and after each ``keepalive_s`` of silence.
        keepalive_s: The longest silence (with ``keepalive``).
    """

    def __init__(
        self,
        connection: ControlConnection,
        name: str = "control",
        keepalive: ControlMessage | None = None,
        keepalive_s: float = 0.0,
    ) -> None:
        self.peer = connection.peer
        self._connection = connection
        self._condition = threading.Condition()
        self._waiting: deque[tuple[object, bytes]] = deque()
        if keepalive is not None:
            self._waiting.append((None, encode(keepalive)))
        self._keepalive = None if keepalive is None else encode(keepalive)
        self._keepalive_s = keepalive_s if keepalive is not None else None
        self._writing = False
        self._closing = False
        self._error: ClusterError | None = None
        self._thread = threading.Thread(
            target=self._write_loop, name=f"{name}-send-{connection.peer}", daemon=True
        )
        self._thread.start()

    def send(self, message: ControlMessage, supersede: object = None) -> None:
        """Queues ``message``; returns without waiting for the peer.

        Args:
            message: The message.
            supersede: If not None, a message sent with the same key and not written
                yet is dropped: this one takes its place, at the end of the queue.

        Raises:
            ClusterError: The connection is closed or broken.
            Exception: ``message`` cannot be pickled.
        """
        payload = encode(message)
        with self._condition:
            if self._error is not None:
                msg = f"the control connection to {self.peer} is broken"
                raise ClusterError(msg) from self._error
            if self._closing:
                msg = f"the control connection to {self.peer} is closed"
                raise ClusterError(msg)
            if supersede is not None:
                for entry in self._waiting:
                    if entry[0] == supersede:
                        self._waiting.remove(entry)
                        break
            self._waiting.append((supersede, payload))
            self._condition.notify()

    def close(self, drain_s: float = 0.0) -> None:
        """Closes the connection, after up to ``drain_s`` for what waits to be written.

        Messages not written by then are dropped.
        """
        with self._condition:
            self._closing = True
            self._condition.notify_all()
            if drain_s > 0:
                self._condition.wait_for(lambda: not self._waiting and not self._writing, drain_s)
            self._waiting.clear()
        self._connection.close()

    @property
    def waiting(self) -> int:
        """Messages sent and not written yet."""
        with self._condition:
            return len(self._waiting) + self._writing

    def _next_payload(self) -> bytes | None:
        """The next message to write, the keep-alive after a silence, None once closed."""
        with self._condition:
            if not self._condition.wait_for(
                lambda: bool(self._waiting) or self._closing, self._keepalive_s
            ):
                payload = self._keepalive  # silent for keepalive_s
            elif self._waiting:
                payload = self._waiting.popleft()[1]
            else:
                return None  # closed, and nothing left to write
            self._writing = True
            return payload

    def _write_loop(self) -> None:
        while (payload := self._next_payload()) is not None:
            try:
                self._connection.send_payload(payload)
            except ClusterError as exc:
                log.debug("%s", exc)
                with self._condition:
                    self._error = exc
                    self._waiting.clear()
                    self._writing = False
                    self._condition.notify_all()
                self._connection.close()  # wakes the reader: the peer is lost
                return
            with self._condition:
                self._writing = False
                self._condition.notify_all()

    def __repr__(self) -> str:
        return f"Outbox({self.peer}, waiting={self.waiting})"


def _set_receive_timeout(
    connection: multiprocessing.connection.Connection[bytes, bytes], seconds: float
) -> None:
    # The connection reads its fd with os.read, so a socket-level timeout is the only
    # one that bounds a read; 0 turns it off again.
    with socket.socket(fileno=os.dup(connection.fileno())) as sock:
        whole = int(seconds)
        sock.setsockopt(
            socket.SOL_SOCKET,
            socket.SO_RCVTIMEO,
            _TIMEVAL.pack(whole, int((seconds - whole) * 1_000_000)),
        )


def connect(
    address: tuple[str, int], secret: bytes, timeout_s: float = HANDSHAKE_TIMEOUT_S
) -> ControlConnection:
    """Connects to a control endpoint and authenticates both ways.

    Raises:
        ClusterError: Nobody listens at ``address``, or the keys do not match.
    """
    peer = f"{address[0]}:{address[1]}"
    try:
        sock = socket.create_connection(address, timeout=timeout_s)
    except OSError as exc:
        msg = f"cannot reach the JobManager at {peer}: {exc}"
        raise ClusterError(msg) from exc
    sock.settimeout(None)
    connection: multiprocessing.connection.Connection[bytes, bytes] = (
        multiprocessing.connection.Connection(sock.detach())
    )
    try:
        _set_receive_timeout(connection, timeout_s)
        multiprocessing.connection.answer_challenge(connection, secret)
        multiprocessing.connection.deliver_challenge(connection, secret)
        _set_receive_timeout(connection, 0)
    except (multiprocessing.AuthenticationError, OSError, EOFError) as exc:
        connection.close()
        msg = f"the control endpoint at {peer} refused this process's key: {exc}"
        raise ClusterError(msg) from exc
    return ControlConnection(connection, peer)


class ControlServer:
    """Accepts control connections; hands each authenticated one to ``on_connection``.

    Each handshake runs in its own thread with a receive timeout, so a silent or
    hostile peer delays nobody else; a peer that fails it is closed before any message
    is read from it.

    Args:
        host: Interface to listen on.
        port: Port, 0 for a free one.
        secret: The cluster key.
        on_connection: Called in the handshake thread with each authenticated
            connection; it may block for as long as the connection lives.
        name: Names threads and log lines.
    """

    def __init__(
        self,
        host: str,
        port: int,
        secret: bytes,
        on_connection: Callable[[ControlConnection], None],
        name: str = "jobmanager",
    ) -> None:
        self._secret = secret
        self._on_connection = on_connection
        self._name = name
        try:
            self._socket = socket.create_server((host, port), backlog=64)
        except OSError as exc:
            msg = f"cannot listen for control connections on {host}:{port}: {exc}"
            raise ClusterError(msg) from exc
        bound = self._socket.getsockname()
        self.address: tuple[str, int] = (bound[0], bound[1])
        self._closed = threading.Event()
        self.refused = 0
        """Peers refused by the handshake so far."""
        self._thread = threading.Thread(
            target=self._accept_loop, name=f"{name}-control-accept", daemon=True
        )
        self._thread.start()

    def _accept_loop(self) -> None:
        while not self._closed.is_set():
            try:
                sock, peer_address = self._socket.accept()
            except OSError:
                if self._closed.is_set():
                    return
                continue
            peer = f"{peer_address[0]}:{peer_address[1]}"
            threading.Thread(
                target=self._handshake,
                args=(sock, peer),
                name=f"{self._name}-control-{peer}",
                daemon=True,
            ).start()

    def _handshake(self, sock: socket.socket, peer: str) -> None:
        sock.settimeout(None)
        connection: multiprocessing.connection.Connection[bytes, bytes] = (
            multiprocessing.connection.Connection(sock.detach())
        )
        try:
            _set_receive_timeout(connection, HANDSHAKE_TIMEOUT_S)
            multiprocessing.connection.deliver_challenge(connection, self._secret)
            multiprocessing.connection.answer_challenge(connection, self._secret)
            _set_receive_timeout(connection, 0)
        except (multiprocessing.AuthenticationError, OSError, EOFError, ValueError) as exc:
            self.refused += 1
            log.warning("%s: refused control peer %s: %s", self._name, peer, exc)
            with contextlib.suppress(OSError):
                connection.close()
            return
        self._on_connection(ControlConnection(connection, peer))

    def close(self) -> None:
        """Stops accepting; connections already handed out stay open."""
        if self._closed.is_set():
            return
        self._closed.set()
        # shutdown() makes a blocked accept() return on Linux; close() alone would not.
        with contextlib.suppress(OSError):
            self._socket.shutdown(socket.SHUT_RDWR)
        self._socket.close()
        self._thread.join(timeout=5)

    def __enter__(self) -> ControlServer:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
