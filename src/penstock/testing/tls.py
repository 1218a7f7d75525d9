"""Throwaway TLS material: a CA, certificates it signs, and untrusted ones.

For tests, and for benchmarks that run with ``security.ssl.internal.enabled`` when no
key material was configured. Plain functions over a directory, built with the
``openssl`` command line (any OpenSSL 1.1.1 or later), so penstock needs no extra Python
package for them. Keys are EC P-256: they are made in milliseconds, which keeps a
fixture that builds a whole PKI cheap. Nothing made here belongs in a real cluster: the
CA's key sits unencrypted next to its certificate.

Every certificate is valid for ``127.0.0.1`` and ``localhost`` and carries both the
``serverAuth`` and ``clientAuth`` usages, because a TaskManager is the server of its own
data port and the client of every peer's, with one identity for both::

    ca = make_ca(tmp_path)
    server = make_certificate(tmp_path, ca, "server")
    client = make_certificate(tmp_path, ca, "client")
    stranger = make_untrusted_certificate(tmp_path, "stranger")

Each call writes its files under names derived from ``name``, so use distinct names in
one directory. Every run of ``openssl`` gets its own minimal config file, so the host's
``openssl.cnf`` has no say in the extensions.
"""

from __future__ import annotations

import secrets
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Final

__all__ = [
    "CertificateAuthority",
    "Identity",
    "make_ca",
    "make_certificate",
    "make_self_signed",
    "make_untrusted_certificate",
    "openssl_available",
]

VALIDITY_DAYS: Final = 2
_OPENSSL_TIMEOUT_S: Final = 60.0

_CA_EXTENSIONS: Final = """\
basicConstraints = critical, CA:TRUE
keyUsage = critical, keyCertSign, cRLSign
subjectKeyIdentifier = hash
"""

_LEAF_EXTENSIONS: Final = """\
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature, keyEncipherment
extendedKeyUsage = serverAuth, clientAuth
subjectAltName = IP:127.0.0.1, DNS:localhost
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
"""


@dataclass(frozen=True, slots=True)
class CertificateAuthority:
    """A throwaway CA.

    Attributes:
        cert: PEM file with the CA certificate: the truststore of its members.
        key: PEM file with the CA's unencrypted private key.
    """

    cert: Path
    key: Path


@dataclass(frozen=True, slots=True)
class Identity:
    """A certificate and its key, in the shapes the ``security.ssl.internal.*`` keys take.

    Attributes:
        cert: PEM file with the certificate alone (a keystore with a separate key).
        key: PEM file with the private key, unencrypted unless made with a password.
        combined: PEM file with the certificate followed by the key (a keystore alone).
        ca: PEM file with the certificate of the CA that signed it (itself if
            self-signed).
    """

    cert: Path
    key: Path
    combined: Path
    ca: Path


def openssl_available() -> bool:
    """Whether the ``openssl`` command is on the ``PATH``."""
    return shutil.which("openssl") is not None


def make_ca(directory: Path, name: str = "penstock-test-ca") -> CertificateAuthority:
    """Creates a self-signed CA certificate ``<name>.pem`` and its key ``<name>.key``."""
    cert = directory / f"{name}.pem"
    key = directory / f"{name}.key"
    config = _write_config(directory, name, _CA_EXTENSIONS)
    _openssl(
        "req", "-x509", "-new", "-config", str(config), "-extensions", "ext",
        *_new_key_args(key), "-out", str(cert),
        "-days", str(VALIDITY_DAYS), "-set_serial", _serial(),
    )  # fmt: skip
    return CertificateAuthority(cert=cert, key=key)


def make_certificate(
    directory: Path,
    ca: CertificateAuthority,
    name: str,
    *,
    key_password: str | None = None,
) -> Identity:
    """Creates a certificate for 127.0.0.1 / localhost signed by ``ca``.

    Args:
        directory: Where the files go: ``<name>.pem``, ``<name>.key``,
            ``<name>-combined.pem``.
        ca: The signing CA.
        name: Common name of the certificate and stem of its file names.
        key_password: Encrypts the private key (AES-256) with this password if given.
    """
    cert = directory / f"{name}.pem"
    key = directory / f"{name}.key"
    request = directory / f"{name}.csr"
    config = _write_config(directory, name, _LEAF_EXTENSIONS)
    _openssl("req", "-new", "-config", str(config), *_new_key_args(key), "-out", str(request))
    _openssl(
        "x509", "-req", "-in", str(request), "-CA", str(ca.cert), "-CAkey", str(ca.key),
        "-set_serial", _serial(), "-days", str(VALIDITY_DAYS),
        "-extfile", str(config), "-extensions", "ext", "-out", str(cert),
    )  # fmt: skip
    if key_password is not None:
        plain = directory / f"{name}-plain.key"
        key.replace(plain)
        _openssl(
            "pkey", "-in", str(plain), "-aes256", "-passout", f"pass:{key_password}",
            "-out", str(key),
        )  # fmt: skip
        plain.unlink()
    combined = directory / f"{name}-combined.pem"
    combined.write_bytes(cert.read_bytes() + key.read_bytes())
    return Identity(cert=cert, key=key, combined=combined, ca=ca.cert)


def make_untrusted_certificate(directory: Path, name: str = "untrusted") -> Identity:
    """Creates a certificate like ``make_certificate``'s, signed by a CA of its own.

    The certificate is well formed and valid for 127.0.0.1; only its CA
    (``<name>-ca.pem``) differs from the one its peers trust.
    """
    return make_certificate(directory, make_ca(directory, f"{name}-ca"), name)


def make_self_signed(directory: Path, name: str = "self-signed") -> Identity:
    """Creates a self-signed certificate for 127.0.0.1 / localhost (its own CA)."""
    cert = directory / f"{name}.pem"
    key = directory / f"{name}.key"
    config = _write_config(directory, name, _LEAF_EXTENSIONS.replace("keyid", "keyid:always"))
    _openssl(
        "req", "-x509", "-new", "-config", str(config), "-extensions", "ext",
        *_new_key_args(key), "-out", str(cert),
        "-days", str(VALIDITY_DAYS), "-set_serial", _serial(),
    )  # fmt: skip
    combined = directory / f"{name}-combined.pem"
    combined.write_bytes(cert.read_bytes() + key.read_bytes())
    return Identity(cert=cert, key=key, combined=combined, ca=cert)


def _new_key_args(key: Path) -> tuple[str, ...]:
    return (
        "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
        "-nodes", "-keyout", str(key),
    )  # fmt: skip


def _serial() -> str:
    # Random serials: two certificates of one issuer must never share a serial number.
    return str(secrets.randbits(63) + 1)


def _write_config(directory: Path, name: str, extensions: str) -> Path:
    config = directory / f"{name}.cnf"
    config.write_text(
        "[req]\n"
        "prompt = no\n"
        "distinguished_name = dn\n"
        "[dn]\n"
        f"CN = {name}\n"
        "O = penstock tests\n"
        "[ext]\n"
        f"{extensions}"
    )
    return config


def _openssl(*args: str) -> None:
    executable = shutil.which("openssl")
    if executable is None:
        msg = "the openssl command is needed to create throwaway certificates"
        raise RuntimeError(msg)
    result = subprocess.run(
        [executable, *args],
        capture_output=True,
        text=True,
        timeout=_OPENSSL_TIMEOUT_S,
        check=False,
    )
    if result.returncode != 0:
        msg = f"openssl {args[0]} failed ({result.returncode}): {result.stderr.strip()}"
        raise RuntimeError(msg)
