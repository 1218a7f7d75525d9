"""Throwaway TLS material for tests: re-exports ``penstock.testing.tls``."""

from __future__ import annotations

from penstock.testing.tls import (
    VALIDITY_DAYS,
    CertificateAuthority,
    Identity,
    make_ca,
    make_certificate,
    make_self_signed,
    make_untrusted_certificate,
    openssl_available,
)

__all__ = [
    "VALIDITY_DAYS",
    "CertificateAuthority",
    "Identity",
    "make_ca",
    "make_certificate",
    "make_self_signed",
    "make_untrusted_certificate",
    "openssl_available",
]
