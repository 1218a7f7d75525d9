"""Mutual TLS for the data port: options, contexts, and real handshakes over loopback."""

from __future__ import annotations

import socket
import ssl
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Final, cast

import pytest

from penstock.config import Configuration
from penstock.errors import ConfigurationError, IllegalStateError, RemoteTransportError
from penstock.shuffle import ShuffleEnvironment
from penstock.transport.tls import SslOptions, client_context, server_context
from tls_certs import (
    CertificateAuthority,
    Identity,
    make_ca,
    make_certificate,
    make_self_signed,
    make_untrusted_certificate,
    openssl_available,
)

TIMEOUT_S: Final = 10.0
KEY_PASSWORD: Final = "s3cret-pass"
ContextFactory = Callable[[SslOptions], ssl.SSLContext]
BOTH_ENDS: Final = pytest.mark.parametrize(
    "make_context", [server_context, client_context], ids=["server", "client"]
)


@dataclass(frozen=True)
class Pki:
    directory: Path
    ca: CertificateAuthority
    server: Identity
    client: Identity
    encrypted: Identity
    untrusted: Identity
    self_signed: Identity
    garbage: Path


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    if not openssl_available():
        pytest.skip("the openssl command is needed to create test certificates")
    directory = tmp_path_factory.mktemp("pki")
    ca = make_ca(directory)
    garbage = directory / "garbage.pem"
    garbage.write_text("this is not PEM\n")
    return Pki(
        directory=directory,
        ca=ca,
        server=make_certificate(directory, ca, "server"),
        client=make_certificate(directory, ca, "client"),
        encrypted=make_certificate(directory, ca, "encrypted", key_password=KEY_PASSWORD),
        untrusted=make_untrusted_certificate(directory, "untrusted"),
        self_signed=make_self_signed(directory, "self-signed"),
        garbage=garbage,
    )


def options_for(
    identity: Identity,
    truststore: Path,
    *,
    keystore: str | None = None,
    key: str | None = None,
    key_password: str | None = None,
    protocol: str = "TLSv1.2",
) -> SslOptions:
    """Enabled options with ``identity`` (its combined PEM unless ``keystore`` is given)."""
    return SslOptions(
        enabled=True,
        keystore=str(identity.combined) if keystore is None else keystore,
        truststore=str(truststore),
        key=key,
        key_password=key_password,
        protocol=protocol,
    )


# --------------------------------------------------------------------------------------
# A one-connection server and client on blocking sockets with timeouts
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ServerOutcome:
    """What the server saw: the client's common name and request, or its error."""

    peer: str | None = None
    request: bytes = b""
    error: Exception | None = None


def common_name(tls: ssl.SSLSocket) -> str | None:
    cert = tls.getpeercert()
    if not cert:
        return None
    for rdn in cast(tuple[tuple[tuple[str, str], ...], ...], cert["subject"]):
        for name, value in rdn:
            if name == "commonName":
                return value
    return None


def serve_once(listener: socket.socket, context: ssl.SSLContext) -> ServerOutcome:
    """Accepts one connection, completes the handshake, answers one request."""
    conn, _ = listener.accept()
    conn.settimeout(TIMEOUT_S)
    try:
        with context.wrap_socket(conn, server_side=True, do_handshake_on_connect=False) as tls:
            tls.do_handshake()
            peer = common_name(tls)
            request = tls.recv(1024)
            tls.sendall(b"pong:" + request)
            return ServerOutcome(peer=peer, request=request)
    except OSError as err:  # ssl.SSLError is an OSError
        return ServerOutcome(error=err)
    finally:
        conn.close()


class Server:
    """A TLS server on 127.0.0.1 with an ephemeral port, serving one connection."""

    def __init__(self, executor: ThreadPoolExecutor, context: ssl.SSLContext) -> None:
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(TIMEOUT_S)
        self.port: int = self._listener.getsockname()[1]
        self._outcome: Future[ServerOutcome] = executor.submit(serve_once, self._listener, context)

    def outcome(self) -> ServerOutcome:
        try:
            return self._outcome.result(timeout=2 * TIMEOUT_S)
        finally:
            self._listener.close()


@pytest.fixture
def executor() -> Iterator[ThreadPoolExecutor]:
    with ThreadPoolExecutor(max_workers=1) as pool:
        yield pool


def exchange(port: int, context: ssl.SSLContext) -> bytes | Exception:
    """Connects with TLS, sends a request; the reply, or the error that ended it."""
    try:
        with (
            socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT_S) as sock,
            context.wrap_socket(sock) as tls,
        ):
            tls.sendall(b"ping")
            return tls.recv(1024)
    except OSError as err:
        return err


def plain_exchange(port: int, request: bytes) -> bytes:
    """Connects without TLS, sends ``request`` and reads until the server closes."""
    received = bytearray()
    with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT_S) as sock:
        try:
            sock.sendall(request)
            # The server may already have dropped the connection: nothing to shut.
            sock.shutdown(socket.SHUT_WR)
            while chunk := sock.recv(4096):
                received += chunk
        except TimeoutError:
            raise
        except OSError:  # reset, broken pipe or not connected: the server hung up
            pass
    return bytes(received)


def bare_client_context(truststore: Path) -> ssl.SSLContext:
    """A client that verifies the server but has no certificate of its own."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.load_verify_locations(cafile=truststore)
    return context


# --------------------------------------------------------------------------------------
# Handshakes
# --------------------------------------------------------------------------------------


@pytest.mark.integration
def test_client_with_a_certificate_of_the_ca_completes_the_handshake(
    pki: Pki, executor: ThreadPoolExecutor
) -> None:
    server = Server(executor, server_context(options_for(pki.server, pki.ca.cert)))
    reply = exchange(server.port, client_context(options_for(pki.client, pki.ca.cert)))
    outcome = server.outcome()

    assert reply == b"pong:ping"
    assert outcome == ServerOutcome(peer="client", request=b"ping")


@pytest.mark.integration
def test_client_sees_the_server_certificate(pki: Pki, executor: ThreadPoolExecutor) -> None:
    server = Server(executor, server_context(options_for(pki.server, pki.ca.cert)))
    context = client_context(options_for(pki.client, pki.ca.cert))
    with (
        socket.create_connection(("127.0.0.1", server.port), timeout=TIMEOUT_S) as sock,
        context.wrap_socket(sock) as tls,
    ):
        peer = common_name(tls)
        tls.sendall(b"ping")
        assert tls.recv(1024) == b"pong:ping"
    assert peer == "server"
    assert server.outcome().error is None


@pytest.mark.integration
def test_keystore_with_a_separate_encrypted_key(pki: Pki, executor: ThreadPoolExecutor) -> None:
    options = options_for(
        pki.encrypted,
        pki.ca.cert,
        keystore=str(pki.encrypted.cert),
        key=str(pki.encrypted.key),
        key_password=KEY_PASSWORD,
    )
    server = Server(executor, server_context(options))
    reply = exchange(server.port, client_context(options))

    assert reply == b"pong:ping"
    assert server.outcome().peer == "encrypted"


@pytest.mark.integration
@pytest.mark.parametrize("kind", ["untrusted", "self_signed"])
def test_client_with_an_untrusted_certificate_is_refused(
    pki: Pki, executor: ThreadPoolExecutor, kind: str
) -> None:
    stranger: Identity = getattr(pki, kind)
    server = Server(executor, server_context(options_for(pki.server, pki.ca.cert)))
    # The stranger trusts our CA, so only the server's check can stop it.
    reply = exchange(server.port, client_context(options_for(stranger, pki.ca.cert)))
    outcome = server.outcome()

    assert isinstance(outcome.error, ssl.SSLCertVerificationError)
    assert outcome.request == b""
    assert outcome.peer is None
    # With TLS 1.3 the client finishes its half of the handshake before the server
    # verifies it, and learns of the refusal on its first read.
    assert isinstance(reply, OSError) or reply == b""


@pytest.mark.integration
def test_client_without_a_certificate_is_refused(pki: Pki, executor: ThreadPoolExecutor) -> None:
    server = Server(executor, server_context(options_for(pki.server, pki.ca.cert)))
    reply = exchange(server.port, bare_client_context(pki.ca.cert))
    outcome = server.outcome()

    assert isinstance(outcome.error, ssl.SSLError)
    assert "certificate" in str(outcome.error).lower()
    assert outcome.request == b""
    assert isinstance(reply, OSError) or reply == b""


@pytest.mark.integration
def test_server_with_an_untrusted_certificate_is_refused_by_the_client(
    pki: Pki, executor: ThreadPoolExecutor
) -> None:
    server = Server(executor, server_context(options_for(pki.untrusted, pki.ca.cert)))
    reply = exchange(server.port, client_context(options_for(pki.client, pki.ca.cert)))
    outcome = server.outcome()

    assert isinstance(reply, ssl.SSLCertVerificationError)
    assert isinstance(outcome.error, ssl.SSLError)
    assert outcome.request == b""


@pytest.mark.integration
@pytest.mark.parametrize(
    "request_bytes",
    [
        b"\x00\x00\x00\x0d\xba\xdc\x0f\xfe\x00\x00\x00\x00\x00",  # a frame header, in clear
        b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n",
        b"",
    ],
    ids=["frame", "http", "nothing"],
)
def test_plain_tcp_client_gets_no_application_data(
    pki: Pki, executor: ThreadPoolExecutor, request_bytes: bytes
) -> None:
    server = Server(executor, server_context(options_for(pki.server, pki.ca.cert)))
    received = plain_exchange(server.port, request_bytes)
    outcome = server.outcome()

    assert isinstance(outcome.error, OSError)
    assert outcome.request == b""
    assert b"pong" not in received
    # At most a TLS alert record (content type 21) comes back, never application data.
    assert received == b"" or received[0] == 21


@pytest.mark.integration
def test_tls_1_3_minimum_refuses_a_tls_1_2_peer(pki: Pki, executor: ThreadPoolExecutor) -> None:
    server_options = options_for(pki.server, pki.ca.cert, protocol="TLSv1.3")
    server = Server(executor, server_context(server_options))
    context = client_context(options_for(pki.client, pki.ca.cert))
    context.maximum_version = ssl.TLSVersion.TLSv1_2
    reply = exchange(server.port, context)
    outcome = server.outcome()

    assert isinstance(reply, ssl.SSLError)
    assert isinstance(outcome.error, ssl.SSLError)


@pytest.mark.integration
def test_tls_1_2_minimum_accepts_a_tls_1_2_peer(pki: Pki, executor: ThreadPoolExecutor) -> None:
    server = Server(executor, server_context(options_for(pki.server, pki.ca.cert)))
    context = client_context(options_for(pki.client, pki.ca.cert))
    context.maximum_version = ssl.TLSVersion.TLSv1_2
    with (
        socket.create_connection(("127.0.0.1", server.port), timeout=TIMEOUT_S) as sock,
        context.wrap_socket(sock) as tls,
    ):
        version = tls.version()
        tls.sendall(b"ping")
        assert tls.recv(1024) == b"pong:ping"
    assert version == "TLSv1.2"
    assert server.outcome().peer == "client"


# --------------------------------------------------------------------------------------
# Contexts
# --------------------------------------------------------------------------------------


def test_server_context_requires_client_certificates(pki: Pki) -> None:
    context = server_context(options_for(pki.server, pki.ca.cert))

    assert context.verify_mode == ssl.CERT_REQUIRED
    assert context.minimum_version == ssl.TLSVersion.TLSv1_2
    # Only the internal CA is trusted, not the system's bundle.
    assert [cert["subject"] for cert in context.get_ca_certs()] == [
        ((("commonName", "penstock-test-ca"),), (("organizationName", "penstock tests"),))
    ]


def test_client_context_verifies_the_server_but_not_its_host_name(pki: Pki) -> None:
    context = client_context(options_for(pki.client, pki.ca.cert, protocol="TLSv1.3"))

    assert context.verify_mode == ssl.CERT_REQUIRED
    assert context.check_hostname is False
    assert context.minimum_version == ssl.TLSVersion.TLSv1_3
    assert len(context.get_ca_certs()) == 1


@BOTH_ENDS
def test_contexts_need_tls_enabled(pki: Pki, make_context: ContextFactory) -> None:
    with pytest.raises(IllegalStateError, match=r"security\.ssl\.internal\.enabled"):
        make_context(SslOptions())


# --------------------------------------------------------------------------------------
# Options from the configuration
# --------------------------------------------------------------------------------------


def test_tls_is_off_by_default() -> None:
    options = SslOptions.from_configuration(Configuration())

    assert options == SslOptions()
    assert not options.enabled
    assert options.protocol == "TLSv1.2"
    assert options.handshake_timeout_ms == 10_000


def test_options_read_every_key(pki: Pki) -> None:
    config = Configuration(
        {
            "security.ssl.internal.enabled": "true",
            "security.ssl.internal.keystore": str(pki.encrypted.cert),
            "security.ssl.internal.key": str(pki.encrypted.key),
            "security.ssl.internal.key-password": KEY_PASSWORD,
            "security.ssl.internal.truststore": str(pki.ca.cert),
            "security.ssl.internal.protocol": "TLSv1.3",
            "security.ssl.internal.handshake-timeout": "2 s",
        }
    )
    options = SslOptions.from_configuration(config)

    assert options == SslOptions(
        enabled=True,
        keystore=str(pki.encrypted.cert),
        truststore=str(pki.ca.cert),
        key=str(pki.encrypted.key),
        key_password=KEY_PASSWORD,
        protocol="TLSv1.3",
        handshake_timeout_ms=2000,
    )
    assert options.minimum_version == ssl.TLSVersion.TLSv1_3
    assert options.handshake_timeout_s == 2.0
    assert KEY_PASSWORD not in repr(options)
    assert server_context(options).verify_mode == ssl.CERT_REQUIRED


def test_data_ssl_switch_turns_tls_off_for_data_connections() -> None:
    # Without TLS for data connections, missing PEM files are not an error.
    config = Configuration(
        {"security.ssl.internal.enabled": True, "taskmanager.data.ssl.enabled": False}
    )

    assert not SslOptions.from_configuration(config).enabled


@pytest.mark.parametrize(
    ("settings", "missing"),
    [
        ({"security.ssl.internal.truststore": "ca.pem"}, "security.ssl.internal.keystore"),
        ({"security.ssl.internal.keystore": "tm.pem"}, "security.ssl.internal.truststore"),
        ({}, "security.ssl.internal.keystore"),
    ],
)
def test_enabled_without_pem_files_names_the_missing_key(
    settings: dict[str, object], missing: str
) -> None:
    config = Configuration({"security.ssl.internal.enabled": "true", **settings})

    with pytest.raises(ConfigurationError) as info:
        SslOptions.from_configuration(config)
    assert info.value.key == missing
    assert missing in str(info.value)


def test_direct_construction_validates_protocol_and_timeout() -> None:
    with pytest.raises(ConfigurationError) as info:
        SslOptions(protocol="SSLv3")
    assert info.value.key == "security.ssl.internal.protocol"
    with pytest.raises(ConfigurationError) as info:
        SslOptions(handshake_timeout_ms=0)
    assert info.value.key == "security.ssl.internal.handshake-timeout"


# --------------------------------------------------------------------------------------
# Bad PEM files
# --------------------------------------------------------------------------------------


def expect_error(
    make_context: ContextFactory, options: SslOptions, key: str, cause: type[BaseException]
) -> ConfigurationError:
    with pytest.raises(ConfigurationError) as info:
        make_context(options)
    assert info.value.key == key
    assert str(info.value).startswith(f"Invalid configuration {key}=")
    assert isinstance(info.value.__cause__, cause)
    return info.value


@BOTH_ENDS
def test_missing_keystore_names_key_and_path(pki: Pki, make_context: ContextFactory) -> None:
    path = str(pki.directory / "no-such-keystore.pem")
    options = options_for(pki.server, pki.ca.cert, keystore=path)

    error = expect_error(make_context, options, "security.ssl.internal.keystore", OSError)
    assert path in str(error)


@BOTH_ENDS
def test_keystore_without_certificate_names_the_keystore(
    pki: Pki, make_context: ContextFactory
) -> None:
    options = options_for(pki.server, pki.ca.cert, keystore=str(pki.garbage))

    error = expect_error(make_context, options, "security.ssl.internal.keystore", ssl.SSLError)
    assert str(pki.garbage) in str(error)


@BOTH_ENDS
def test_keystore_without_key_names_the_keystore(pki: Pki, make_context: ContextFactory) -> None:
    options = options_for(pki.server, pki.ca.cert, keystore=str(pki.server.cert))

    error = expect_error(make_context, options, "security.ssl.internal.keystore", ssl.SSLError)
    assert "private key" in str(error)
    assert str(pki.server.cert) in str(error)


@BOTH_ENDS
def test_missing_key_file_names_the_key(pki: Pki, make_context: ContextFactory) -> None:
    path = str(pki.directory / "no-such.key")
    options = options_for(pki.server, pki.ca.cert, keystore=str(pki.server.cert), key=path)

    error = expect_error(make_context, options, "security.ssl.internal.key", OSError)
    assert path in str(error)


@BOTH_ENDS
def test_invalid_key_file_names_the_key(pki: Pki, make_context: ContextFactory) -> None:
    options = options_for(
        pki.server, pki.ca.cert, keystore=str(pki.server.cert), key=str(pki.garbage)
    )

    error = expect_error(make_context, options, "security.ssl.internal.key", ssl.SSLError)
    assert str(pki.garbage) in str(error)


@BOTH_ENDS
def test_key_of_another_certificate_names_the_key(pki: Pki, make_context: ContextFactory) -> None:
    options = options_for(
        pki.server, pki.ca.cert, keystore=str(pki.server.cert), key=str(pki.client.key)
    )

    error = expect_error(make_context, options, "security.ssl.internal.key", ssl.SSLError)
    assert "does not match" in str(error)
    assert str(pki.client.key) in str(error)


@BOTH_ENDS
def test_encrypted_key_without_password_names_the_password_key(
    pki: Pki, make_context: ContextFactory
) -> None:
    options = options_for(
        pki.encrypted, pki.ca.cert, keystore=str(pki.encrypted.cert), key=str(pki.encrypted.key)
    )

    error = expect_error(make_context, options, "security.ssl.internal.key-password", Exception)
    assert str(pki.encrypted.key) in str(error)


@BOTH_ENDS
def test_wrong_password_names_the_password_key_and_hides_it(
    pki: Pki, make_context: ContextFactory
) -> None:
    options = options_for(pki.encrypted, pki.ca.cert, key_password="not-the-password")

    error = expect_error(make_context, options, "security.ssl.internal.key-password", ssl.SSLError)
    assert "not-the-password" not in str(error)
    assert error.value == "******"
    assert str(pki.encrypted.combined) in str(error)


@BOTH_ENDS
@pytest.mark.parametrize("which", ["missing", "directory", "garbage", "key_only"])
def test_bad_truststore_names_key_and_path(
    pki: Pki, make_context: ContextFactory, which: str
) -> None:
    path, cause = {
        "missing": (pki.directory / "no-such-ca.pem", OSError),
        "directory": (pki.directory, OSError),
        "garbage": (pki.garbage, ssl.SSLError),
        "key_only": (pki.ca.key, ssl.SSLError),
    }[which]
    options = options_for(pki.server, path)

    error = expect_error(make_context, options, "security.ssl.internal.truststore", cause)
    assert str(path) in str(error)


# --------------------------------------------------------------------------------------
# The handshake timeout on the data plane
# --------------------------------------------------------------------------------------


def tls_environment(pki: Pki, handshake_timeout: str) -> ShuffleEnvironment:
    """A started network stack with TLS on and the given handshake timeout."""
    config = Configuration(
        {
            "taskmanager.memory.network.min": "4 mb",
            "taskmanager.memory.network.max": "4 mb",
            "security.ssl.internal.enabled": "true",
            "security.ssl.internal.keystore": str(pki.server.combined),
            "security.ssl.internal.truststore": str(pki.ca.cert),
            "security.ssl.internal.handshake-timeout": handshake_timeout,
            # Far longer than the handshake timeout: a connect must end by the latter.
            "taskmanager.network.netty.client.connectTimeoutSec": 30,
        }
    )
    env = ShuffleEnvironment.from_configuration(config, name="tls")
    env.start()
    return env


def test_the_data_port_drops_a_client_that_never_starts_the_handshake(pki: Pki) -> None:
    env = tls_environment(pki, "200 ms")
    try:
        with socket.create_connection(env.data_address, timeout=TIMEOUT_S) as silent:
            try:
                closed = silent.recv(1) == b""  # asyncio's default would hold it 60 s
            except ConnectionResetError:
                closed = True
        assert closed
    finally:
        env.close()


def test_a_connection_to_a_peer_that_never_answers_the_handshake_ends_at_its_timeout(
    pki: Pki,
) -> None:
    env = tls_environment(pki, "200 ms")
    with socket.create_server(("127.0.0.1", 0)) as mute:  # accepts, never answers
        try:
            with pytest.raises(RemoteTransportError) as info:
                env.connection_manager.create_partition_request_client(mute.getsockname())
            # The handshake timed out, not the 30 s connect timeout.
            assert not isinstance(info.value.__cause__, TimeoutError)
            assert "handshake" in str(info.value.__cause__)
        finally:
            env.close()
