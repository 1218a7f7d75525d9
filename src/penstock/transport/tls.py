"""Mutual TLS for the data port: the ``security.ssl.internal.*`` options and SSL contexts.

Data connections between TaskManagers use TLS when ``security.ssl.internal.enabled``
(default false) and ``taskmanager.data.ssl.enabled`` (default true) are both set, as in
Flink. ``SslOptions.from_configuration`` reads the keys; ``server_context`` and
``client_context`` build the ``ssl.SSLContext`` each end of a connection wraps its socket
in. Nothing here opens a socket: the data server and client pass the contexts to the
event loop, together with ``SslOptions.handshake_timeout_s``.

Trust model
-----------
Authentication is mutual, as Flink's internal SSL is (Netty's ``ClientAuth.REQUIRE``):
the server demands a client certificate and both ends verify the peer's chain against
the truststore, and against nothing else. The contexts are built from a bare
``ssl.SSLContext``, not ``ssl.create_default_context``, so the system's CA bundle is
never loaded: a certificate from a public CA does not admit anybody to the cluster.

Host names are not checked (``check_hostname = False``). A peer proves that it belongs
to the cluster by holding a certificate that the cluster's internal CA signed, which is
what Flink's internal connectivity checks too. TaskManagers reach each other at
whatever address a peer announces when it registers (often an IP address chosen at
startup, on hosts that come and go), so a certificate per host name cannot be required.
This is only safe if the internal CA signs nothing but the cluster's own certificates:
use a dedicated CA, or one self-signed certificate that is keystore and truststore at
once, as Flink's documentation advises.

The ``security.ssl.internal.protocol`` option is the least TLS version accepted
(TLSv1.2 or TLSv1.3); the newest version both ends support is negotiated. Cipher suites
are OpenSSL's defaults as Python configures them (forward-secret AEAD suites), not
Flink's ``TLS_RSA_WITH_AES_128_CBC_SHA``, which has neither property.

PEM files replace Java keystores: ``security.ssl.internal.keystore`` is the certificate
chain, which may hold the private key as well; ``security.ssl.internal.key`` names a
separate key file; ``security.ssl.internal.key-password`` decrypts an encrypted key;
``security.ssl.internal.truststore`` holds the trusted CA certificates. A file that is
missing, unreadable or not the PEM it should be is a ``ConfigurationError`` naming the
key and the path, raised when a context is built, with the underlying error as its
cause.
"""

from __future__ import annotations

import ssl
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Final

from penstock.config import (
    DATA_SSL_ENABLED,
    SSL_INTERNAL_ENABLED,
    SSL_INTERNAL_HANDSHAKE_TIMEOUT,
    SSL_INTERNAL_KEY,
    SSL_INTERNAL_KEY_PASSWORD,
    SSL_INTERNAL_KEYSTORE,
    SSL_INTERNAL_PROTOCOL,
    SSL_INTERNAL_TRUSTSTORE,
    Configuration,
)
from penstock.errors import ConfigurationError, IllegalStateError

__all__ = [
    "TLS_VERSIONS",
    "SslOptions",
    "client_context",
    "server_context",
]

TLS_VERSIONS: Final[Mapping[str, ssl.TLSVersion]] = MappingProxyType(
    {"TLSv1.2": ssl.TLSVersion.TLSv1_2, "TLSv1.3": ssl.TLSVersion.TLSv1_3}
)
"""The values of ``security.ssl.internal.protocol`` and the least version each allows."""

_MASKED: Final = "******"


@dataclass(frozen=True, slots=True)
class SslOptions:
    """The TLS settings of data connections.

    ``SslOptions()`` is TLS switched off. Build one from a configuration with
    ``from_configuration``; direct construction validates the same way.

    Attributes:
        enabled: Whether data connections use TLS.
        keystore: PEM file with this process's certificate chain, and its private key
            unless ``key`` is set.
        truststore: PEM file with the CA certificates peers are verified against.
        key: PEM file with the private key, if the keystore does not hold it.
        key_password: Password of an encrypted private key; left out of ``repr``.
        protocol: Least TLS version, ``"TLSv1.2"`` or ``"TLSv1.3"``.
        handshake_timeout_ms: How long a TLS handshake may take.

    Raises:
        ConfigurationError: TLS is enabled without a keystore or truststore, or the
            protocol or timeout is invalid; names the key.
    """

    enabled: bool = False
    keystore: str | None = None
    truststore: str | None = None
    key: str | None = None
    key_password: str | None = field(default=None, repr=False)
    protocol: str = SSL_INTERNAL_PROTOCOL.default
    handshake_timeout_ms: int = SSL_INTERNAL_HANDSHAKE_TIMEOUT.default

    def __post_init__(self) -> None:
        if self.protocol not in TLS_VERSIONS:
            reason = f"must be one of {', '.join(TLS_VERSIONS)}"
            raise ConfigurationError(SSL_INTERNAL_PROTOCOL.key, self.protocol, reason)
        if self.handshake_timeout_ms < 1:
            raise ConfigurationError(
                SSL_INTERNAL_HANDSHAKE_TIMEOUT.key,
                self.handshake_timeout_ms,
                "must be at least 1 ms",
            )
        if not self.enabled:
            return
        for option, path in (
            (SSL_INTERNAL_KEYSTORE, self.keystore),
            (SSL_INTERNAL_TRUSTSTORE, self.truststore),
        ):
            if path is None:
                reason = (
                    f"a PEM file is required when {SSL_INTERNAL_ENABLED.key} and "
                    f"{DATA_SSL_ENABLED.key} are true"
                )
                raise ConfigurationError(option.key, None, reason)

    @classmethod
    def from_configuration(cls, config: Configuration) -> SslOptions:
        """The TLS settings of data connections in ``config``.

        Raises:
            ConfigurationError: TLS is enabled but the keystore or truststore is not set.
        """
        return cls(
            enabled=config.get(SSL_INTERNAL_ENABLED) and config.get(DATA_SSL_ENABLED),
            keystore=config.get(SSL_INTERNAL_KEYSTORE),
            truststore=config.get(SSL_INTERNAL_TRUSTSTORE),
            key=config.get(SSL_INTERNAL_KEY),
            key_password=config.get(SSL_INTERNAL_KEY_PASSWORD),
            protocol=config.get(SSL_INTERNAL_PROTOCOL),
            handshake_timeout_ms=config.get(SSL_INTERNAL_HANDSHAKE_TIMEOUT),
        )

    @property
    def minimum_version(self) -> ssl.TLSVersion:
        """The least TLS version a connection may use."""
        return TLS_VERSIONS[self.protocol]

    @property
    def handshake_timeout_s(self) -> float:
        """The handshake timeout in seconds, as the event loop's ``ssl_handshake_timeout``."""
        return self.handshake_timeout_ms / 1000


def server_context(options: SslOptions) -> ssl.SSLContext:
    """The context a data server wraps accepted connections in.

    It presents this process's certificate and requires, and verifies against the
    truststore, a certificate from every client.

    Raises:
        IllegalStateError: TLS is not enabled in ``options``.
        ConfigurationError: A PEM file is missing, unreadable or invalid, or the key
            password is missing or wrong; names the key and the path.
    """
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    _configure(context, options)
    return context


def client_context(options: SslOptions) -> ssl.SSLContext:
    """The context a data client wraps its connections in.

    It presents this process's certificate and verifies the server's against the
    truststore, without checking the host name (see the module's trust model).

    Raises:
        IllegalStateError: TLS is not enabled in ``options``.
        ConfigurationError: A PEM file is missing, unreadable or invalid, or the key
            password is missing or wrong; names the key and the path.
    """
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    # Peers are identified by the internal CA, not by name; this must be switched off
    # before anything else, since PROTOCOL_TLS_CLIENT starts with it on.
    context.check_hostname = False
    _configure(context, options)
    return context


def _configure(context: ssl.SSLContext, options: SslOptions) -> None:
    if not options.enabled or options.keystore is None or options.truststore is None:
        msg = (
            f"TLS is not enabled for data connections: set {SSL_INTERNAL_ENABLED.key} "
            f"(and keep {DATA_SSL_ENABLED.key}) to true"
        )
        raise IllegalStateError(msg)
    context.minimum_version = options.minimum_version
    context.verify_mode = ssl.CERT_REQUIRED
    _load_certificate_chain(context, options.keystore, options.key, options.key_password)
    _load_truststore(context, options.truststore)


class _PasswordRequiredError(Exception):
    """Raised from the password callback when an encrypted key has no password."""


def _load_certificate_chain(
    context: ssl.SSLContext, keystore: str, key: str | None, password: str | None
) -> None:
    _check_readable(SSL_INTERNAL_KEYSTORE.key, keystore)
    if key is not None:
        _check_readable(SSL_INTERNAL_KEY.key, key)
    key_option, key_path = (
        (SSL_INTERNAL_KEY.key, key) if key is not None else (SSL_INTERNAL_KEYSTORE.key, keystore)
    )
    asked = False

    def give_password() -> str:
        # Always a callback: without one OpenSSL would prompt on the terminal for the
        # password of an encrypted key.
        nonlocal asked
        asked = True
        if password is None:
            raise _PasswordRequiredError
        return password

    try:
        context.load_cert_chain(keystore, key, password=give_password)
    except _PasswordRequiredError as err:
        reason = f"the private key in {key_path} is encrypted and no password is set"
        raise ConfigurationError(SSL_INTERNAL_KEY_PASSWORD.key, None, reason) from err
    except ValueError as err:  # a password longer than OpenSSL accepts
        raise ConfigurationError(SSL_INTERNAL_KEY_PASSWORD.key, _MASKED, str(err)) from err
    except ssl.SSLError as err:
        if not _holds_certificates(keystore):
            reason = f"no PEM certificate could be read from the file ({err})"
            raise ConfigurationError(SSL_INTERNAL_KEYSTORE.key, keystore, reason) from err
        if err.reason == "KEY_VALUES_MISMATCH":
            reason = f"the private key does not match the certificate in {keystore}"
            raise ConfigurationError(key_option, key_path, reason) from err
        if asked:
            reason = f"cannot decrypt the private key in {key_path} with it ({err})"
            raise ConfigurationError(SSL_INTERNAL_KEY_PASSWORD.key, _MASKED, reason) from err
        reason = f"no PEM private key could be read from the file ({err})"
        raise ConfigurationError(key_option, key_path, reason) from err
    except OSError as err:
        reason = f"cannot read the file: {err}"
        raise ConfigurationError(SSL_INTERNAL_KEYSTORE.key, keystore, reason) from err


def _load_truststore(context: ssl.SSLContext, truststore: str) -> None:
    _check_readable(SSL_INTERNAL_TRUSTSTORE.key, truststore)
    try:
        context.load_verify_locations(cafile=truststore)
    except ssl.SSLError as err:
        reason = f"no PEM CA certificate could be read from the file ({err})"
        raise ConfigurationError(SSL_INTERNAL_TRUSTSTORE.key, truststore, reason) from err
    except OSError as err:
        reason = f"cannot read the file: {err}"
        raise ConfigurationError(SSL_INTERNAL_TRUSTSTORE.key, truststore, reason) from err


def _check_readable(key: str, path: str) -> None:
    # OpenSSL's errors do not say which of two files failed to open, so each file is
    # opened here first, to name the key that points at a bad path.
    try:
        with open(path, "rb") as file:
            file.read(1)
    except OSError as err:
        reason = f"cannot read the file: {err}"
        raise ConfigurationError(key, path, reason) from err


def _holds_certificates(path: str) -> bool:
    """Whether ``path`` holds at least one readable PEM certificate."""
    try:
        ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT).load_verify_locations(cafile=path)
    except (ssl.SSLError, OSError):
        return False
    return True
