"""The control channel: authentication before any message, message round trips, keys."""

from __future__ import annotations

import os
import queue
import socket
import stat
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from cluster_helpers import WAIT_S, no_leftover_processes
from penstock.errors import ClusterError, ConfigurationError, RemoteError, SerializationError
from penstock.ids import ExecutionAttemptID, JobID
from penstock.runtime.control import (
    SECRET_ENV,
    CollectBatch,
    ControlConnection,
    ControlMessage,
    ControlServer,
    Heartbeat,
    JobManagerHeartbeat,
    JobMetricsUpdate,
    JobResult,
    Outbox,
    RegisterTaskManager,
    SerializedValue,
    Shutdown,
    TaskStateChanged,
    connect,
    expect_heartbeats,
    load_secret,
    name_unpicklable,
    new_secret,
    parse_address,
    read_secret_file,
    write_secret_file,
)
from penstock.runtime.states import ExecutionState

__all__ = ["no_leftover_processes"]


class Echo:
    """A server whose connections echo every message back, with its accepted peers."""

    def __init__(self, secret: bytes) -> None:
        self.accepted: queue.SimpleQueue[ControlConnection] = queue.SimpleQueue()
        self.server = ControlServer("127.0.0.1", 0, secret, self._serve, "test")

    def _serve(self, connection: ControlConnection) -> None:
        self.accepted.put(connection)
        try:
            while True:
                connection.send(connection.recv())
        except (EOFError, ClusterError):
            connection.close()


@pytest.fixture
def secret() -> bytes:
    return new_secret()


@pytest.fixture
def echo(secret: bytes) -> Iterator[Echo]:
    server = Echo(secret)
    yield server
    server.server.close()


def test_messages_round_trip_with_functions_inside(echo: Echo, secret: bytes) -> None:
    connection = connect(echo.server.address, secret)
    try:
        execution_id = ExecutionAttemptID.generate()
        messages: list[ControlMessage] = [
            RegisterTaskManager("tm-1", ("127.0.0.1", 4242), 2, 123),
            TaskStateChanged(execution_id, ExecutionState.FINISHED, None, {"numRecordsIn": 3.0}),
            Heartbeat("tm-1", {execution_id: {"numRecordsOut": 7.0}}),
            CollectBatch(
                JobID.generate(), execution_id, 1, SerializedValue.of([1, "two", (3, 4.0)])
            ),
        ]
        for message in messages:
            connection.send(message)
            assert connection.recv() == message
        # User functions travel inside messages (cloudpickle), e.g. in job graphs.
        offset = 5
        records: SerializedValue[list[object]] = SerializedValue.of([lambda x: x + offset])
        with_lambda = CollectBatch(JobID.generate(), execution_id, 2, records)
        connection.send(with_lambda)
        back = connection.recv()
        assert isinstance(back, CollectBatch)
        function = back.records.get()[0]
        assert callable(function)
        assert function(1) == 6
    finally:
        connection.close()


def test_errors_survive_the_channel(echo: Echo, secret: bytes) -> None:
    connection = connect(echo.server.address, secret)
    try:
        try:
            raise KeyError("missing")
        except KeyError as exc:
            error = RemoteError.from_exception(exc)
        result = JobResult(JobID.generate(), "job", 12, {"Map (1/1)": {"numRecordsIn": 1.0}}, error)
        connection.send(result)
        back = connection.recv()
        assert isinstance(back, JobResult)
        assert isinstance(back.error, RemoteError)
        assert back.error.type_name == "builtins.KeyError"
        assert "raise KeyError" in back.error.traceback_text
    finally:
        connection.close()


def test_a_wrong_key_is_refused_and_the_server_keeps_serving(
    echo: Echo, secret: bytes, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The server counts a refusal after it told the client, on the connection's own
    # thread: the count is checked once that thread's handshake has returned.
    handshakes_over = threading.Semaphore(0)
    handshake = echo.server._handshake

    def signalled_handshake(sock: socket.socket, peer: str) -> None:
        try:
            handshake(sock, peer)
        finally:
            handshakes_over.release()

    monkeypatch.setattr(echo.server, "_handshake", signalled_handshake)
    with pytest.raises(ClusterError, match="refused"):
        connect(echo.server.address, new_secret())
    assert handshakes_over.acquire(timeout=WAIT_S)
    assert echo.server.refused == 1
    assert echo.accepted.empty()
    connection = connect(echo.server.address, secret)
    try:
        connection.send(Heartbeat("tm"))
        assert connection.recv() == Heartbeat("tm")
    finally:
        connection.close()
    assert echo.server.refused == 1


def test_a_raw_peer_is_refused_before_any_message_is_read(echo: Echo, secret: bytes) -> None:
    with socket.create_connection(echo.server.address, timeout=WAIT_S) as raw:
        # The server speaks first: its challenge. Answering with a pickled message
        # instead of the digest must get the connection closed, unread.
        challenge = raw.recv(1024)
        assert b"#CHALLENGE#" in challenge
        raw.sendall(len(b"hello").to_bytes(4, "big") + b"hello")
        rest = b""
        while chunk := raw.recv(1024):
            rest += chunk
        assert b"#FAILURE#" in rest
    assert echo.accepted.empty()
    assert echo.server.refused == 1
    connection = connect(echo.server.address, secret)
    connection.close()


def test_a_silent_peer_does_not_block_others(echo: Echo, secret: bytes) -> None:
    with socket.create_connection(echo.server.address, timeout=WAIT_S):
        # This peer never answers the challenge; others are served meanwhile.
        connection = connect(echo.server.address, secret)
        try:
            connection.send(Heartbeat("other"))
            assert connection.recv() == Heartbeat("other")
        finally:
            connection.close()


def test_connecting_to_nobody_is_a_cluster_error(secret: bytes) -> None:
    server = ControlServer("127.0.0.1", 0, secret, lambda connection: None)
    address = server.address
    server.close()
    with pytest.raises(ClusterError, match="cannot reach"):
        connect(address, secret, timeout_s=5)


def test_close_wakes_a_blocked_reader(echo: Echo, secret: bytes) -> None:
    connection = connect(echo.server.address, secret)
    served = echo.accepted.get(timeout=WAIT_S)
    served.close()
    with pytest.raises(EOFError):
        connection.recv()
    connection.close()


def test_a_receive_timeout_names_the_silence_and_its_setting(echo: Echo, secret: bytes) -> None:
    connection = connect(echo.server.address, secret)
    try:
        connection.set_receive_timeout(0.2, "heartbeat.timeout")
        with pytest.raises(ClusterError) as info:
            connection.recv()  # the echo server says nothing unless spoken to
        peer = connection.peer
        assert str(info.value) == f"heard nothing from {peer} for 200 ms (heartbeat.timeout)"
    finally:
        connection.close()


# -- the outbox ------------------------------------------------------------------------


@pytest.fixture
def unread(secret: bytes) -> Iterator[tuple[ControlConnection, ControlConnection]]:
    """A connected pair: (our end, the peer's end, which reads only when told to)."""
    accepted: queue.SimpleQueue[ControlConnection] = queue.SimpleQueue()
    server = ControlServer("127.0.0.1", 0, secret, accepted.put, "test")
    ours = connect(server.address, secret)
    theirs = accepted.get(timeout=WAIT_S)
    yield ours, theirs
    ours.close()
    theirs.close()
    server.close()


JOB = JobID.generate()
EXECUTION = ExecutionAttemptID.generate()


def _batch(seq: int, size: int) -> CollectBatch:
    records: SerializedValue[list[object]] = SerializedValue.of([b"x" * size])
    return CollectBatch(JOB, EXECUTION, seq, records)


def _fill(outbox: Outbox) -> int:
    """Sends 1 MiB batches until some wait in the outbox; returns how many were sent."""
    # A loopback socket's buffers hold a few MiB at most; 64 MiB is more than enough.
    for seq in range(64):
        outbox.send(_batch(seq, 1 << 20))
        if outbox.waiting > 1:
            return seq + 1
    pytest.fail("64 MiB went into the socket's buffers without waiting")


def _seq(message: ControlMessage) -> int:
    assert isinstance(message, CollectBatch)
    return message.seq


def test_an_outbox_never_waits_for_a_peer_that_does_not_read(
    unread: tuple[ControlConnection, ControlConnection],
) -> None:
    ours, theirs = unread
    outbox = Outbox(ours)
    sent = _fill(outbox)  # returns although the peer has read nothing
    assert outbox.waiting > 1
    # Read, everything arrives, in order.
    assert [_seq(theirs.recv()) for _ in range(sent)] == list(range(sent))
    outbox.close(drain_s=WAIT_S)


def test_a_newer_message_supersedes_one_of_its_kind_still_waiting(
    unread: tuple[ControlConnection, ControlConnection],
) -> None:
    ours, theirs = unread
    outbox = Outbox(ours)
    sent = _fill(outbox)
    update = JobMetricsUpdate(JOB, "j", 1, {}, {}, {})
    outbox.send(update, supersede=JobMetricsUpdate)
    outbox.send(_batch(sent, 1))
    newer = JobMetricsUpdate(JOB, "j", 2, {}, {}, {})
    outbox.send(newer, supersede=JobMetricsUpdate)
    received = [theirs.recv() for _ in range(sent + 2)]
    assert [_seq(message) for message in received[:-1]] == list(range(sent + 1))
    assert received[-1] == newer
    outbox.close()


def test_close_writes_what_waits_within_its_drain_time(
    unread: tuple[ControlConnection, ControlConnection],
) -> None:
    ours, theirs = unread
    outbox = Outbox(ours)
    sent = _fill(outbox)
    outbox.send(Shutdown("done"))
    reader = threading.Thread(target=lambda: [theirs.recv() for _ in range(sent)])
    reader.start()
    outbox.close(drain_s=WAIT_S)
    reader.join(WAIT_S)
    assert theirs.recv() == Shutdown("done")
    with pytest.raises(EOFError):
        theirs.recv()
    with pytest.raises(ClusterError, match="is closed"):
        outbox.send(Shutdown())


def test_close_without_drain_time_drops_what_waits(
    unread: tuple[ControlConnection, ControlConnection],
) -> None:
    ours, theirs = unread
    outbox = Outbox(ours)
    _fill(outbox)
    outbox.send(Shutdown("never written"))
    outbox.close()
    received: list[ControlMessage] = []
    with pytest.raises(EOFError):
        while True:
            received.append(theirs.recv())
    assert Shutdown("never written") not in received


def test_a_keepalive_goes_first_and_into_every_silence(
    unread: tuple[ControlConnection, ControlConnection],
) -> None:
    ours, theirs = unread
    heartbeat = JobManagerHeartbeat(50)
    outbox = Outbox(ours, keepalive=heartbeat, keepalive_s=0.05)
    outbox.send(Shutdown("after the first heartbeat"))
    theirs.set_receive_timeout(WAIT_S)
    assert theirs.recv() == heartbeat
    assert theirs.recv() == Shutdown("after the first heartbeat")
    for _ in range(3):  # and then nothing else to say
        assert theirs.recv() == heartbeat
    outbox.close()


def test_a_peer_waits_twice_the_job_managers_interval_when_its_own_timeout_is_shorter(
    echo: Echo, secret: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    connection = connect(echo.server.address, secret)
    try:
        connection.set_receive_timeout(0.3, "heartbeat.timeout")
        expect_heartbeats(connection, JobManagerHeartbeat(100), 0.3)  # 2 x 100 ms: enough
        assert connection.receive_timeout_s == 0.3
        expect_heartbeats(connection, JobManagerHeartbeat(1000), 0.3)
        assert connection.receive_timeout_s == 2.0
        expect_heartbeats(connection, JobManagerHeartbeat(1000), 0.3)  # said once
        assert caplog.text.count("sends heartbeats every 1000 ms") == 1
        expect_heartbeats(connection, JobManagerHeartbeat(1000), 0.0)  # no timeout here
        assert connection.receive_timeout_s == 2.0
    finally:
        connection.close()


def test_a_failed_write_closes_the_connection_and_fails_later_sends(
    unread: tuple[ControlConnection, ControlConnection],
) -> None:
    ours, theirs = unread
    outbox = Outbox(ours)
    theirs.close()
    with pytest.raises(ClusterError, match="is broken") as info:
        # The first writes may still land in the socket's buffer; one fails in the end.
        for _ in range(1000):
            outbox.send(JobManagerHeartbeat(1000))
            threading.Event().wait(0.01)
    assert "lost the control connection" in str(info.value.__cause__)
    with pytest.raises(EOFError):
        ours.recv()  # a reader of the connection hears of it


# -- keys ------------------------------------------------------------------------------


def test_new_secrets_are_random_text() -> None:
    first, second = new_secret(), new_secret()
    assert first != second
    assert len(first) == 64
    int(first, 16)


def test_secret_file_is_created_private_and_read_back(tmp_path: Path) -> None:
    path = tmp_path / "secret"
    created = load_secret(path, create=True)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert read_secret_file(path) == created
    assert load_secret(path, create=True) == created
    with pytest.raises(ConfigurationError, match="secret-file"):
        write_secret_file(path)


def test_secret_from_environment_or_a_clear_error(tmp_path: Path) -> None:
    assert load_secret(environ={SECRET_ENV: " abc \n"}) == b"abc"
    with pytest.raises(ConfigurationError, match=SECRET_ENV):
        load_secret(environ={})
    empty = tmp_path / "empty"
    empty.write_text("\n")
    with pytest.raises(ConfigurationError, match="empty"):
        load_secret(empty)
    with pytest.raises(ConfigurationError, match="secret-file"):
        load_secret(tmp_path / "missing")


@pytest.mark.parametrize(
    ("text", "expected"),
    [("localhost:6123", ("localhost", 6123)), ("[::1]:80", ("::1", 80))],
)
def test_parse_address(text: str, expected: tuple[str, int]) -> None:
    assert parse_address(text) == expected


@pytest.mark.parametrize("text", ["localhost", ":80", "host:0", "host:x", "host:70000"])
def test_parse_address_rejects_bad_input(text: str) -> None:
    with pytest.raises(ConfigurationError, match="HOST:PORT"):
        parse_address(text)


def test_the_part_that_cannot_be_pickled_is_named_with_its_own_error() -> None:
    lock = threading.Lock()
    whole = TypeError("cannot pickle the job")
    parts = [("the fine part", 42), ("the locked part", lock)]
    error = name_unpicklable("job 'j' cannot be sent", parts, whole)
    assert isinstance(error, SerializationError)
    assert str(error).startswith(
        "job 'j' cannot be sent: the locked part cannot be pickled (TypeError: cannot pickle "
        "'_thread.lock' object). "
    )
    assert isinstance(error.__cause__, TypeError)
    assert error.__cause__ is not whole


def test_a_whole_that_fails_where_every_part_pickles_keeps_its_own_error() -> None:
    whole = TypeError("cannot pickle the job")
    error = name_unpicklable("job 'j' cannot be sent", [("the fine part", 42)], whole)
    assert str(error) == "job 'j' cannot be sent: TypeError: cannot pickle the job"
    assert error.__cause__ is whole
