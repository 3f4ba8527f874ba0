"""Authentication in main mode: the methods' Oakley numbers, RSA signatures as IKEv1 makes them, and the
certificate checks. Pre-shared keys need no code here (they key SKEYID, oakley.skeyid_psk); Kerberos
(method 65001, as Windows numbers it) will go here too."""

from __future__ import annotations

import datetime
from typing import TYPE_CHECKING

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from ipsecd.ike.events import NegotiationError
from ipsecd.ike.isakmp import NotifyType

if TYPE_CHECKING:  # annotations only: loading x509 costs every ipsecd 8 MB
    from cryptography import x509

AUTH_IDS = {"psk": 1, "rsa-sig": 3}  # Oakley Authentication Method values (RFC 2409 App. A)
AUTH_NAMES = {1: "PSK", 3: "RSA-SIG", 65001: "Kerberos"}


# --- RSA signatures as IKEv1 uses them: PKCS#1 v1.5 over the bare hash, no DigestInfo -----------------


def rsa_sign_raw(key: rsa.RSAPrivateKey, data: bytes) -> bytes:
    numbers = key.private_numbers()
    size = (key.key_size + 7) // 8
    if len(data) > size - 11:
        raise ValueError("hash too long for the RSA key")
    m = int.from_bytes(b"\x00\x01" + b"\xff" * (size - 3 - len(data)) + b"\x00" + data, "big")
    m1, m2 = pow(m, numbers.dmp1, numbers.p), pow(m, numbers.dmq1, numbers.q)
    return (m2 + numbers.iqmp * (m1 - m2) % numbers.p * numbers.q).to_bytes(size, "big")


def rsa_verify_raw(key: rsa.RSAPublicKey, signature: bytes, data: bytes) -> bool:
    try:
        return key.recover_data_from_signature(signature, padding.PKCS1v15(), None) == data
    except (InvalidSignature, ValueError):
        return False


def verify_chain(
    cert: x509.Certificate,
    extra: list[x509.Certificate],
    trusted: tuple[x509.Certificate, ...],
    now: datetime.datetime,
) -> None:
    """The peer's certificate must chain (through ``extra``) to a trusted CA, every link in date."""
    current, seen = cert, 0
    while seen < 8:
        if not in_date(current, now):
            raise NegotiationError(
                f"certificate {current.subject.rfc4514_string()} is not in date "
                f"({current.not_valid_before_utc:%Y-%m-%d} .. "
                f"{current.not_valid_after_utc:%Y-%m-%d})",
                NotifyType.INVALID_CERTIFICATE,
                "authentication failed",
            )
        for ca in trusted:
            if current.issuer == ca.subject and _issued_by(current, ca):
                if not in_date(ca, now):
                    raise NegotiationError(
                        f"trusted CA {ca.subject.rfc4514_string()} is not in date",
                        NotifyType.INVALID_CERTIFICATE,
                        "authentication failed",
                    )
                return
        parent = next((c for c in extra if c.subject == current.issuer and _issued_by(current, c)), None)
        if parent is None:
            raise NegotiationError(
                f"certificate {cert.subject.rfc4514_string()} (issuer "
                f"{cert.issuer.rfc4514_string()}) does not chain to a trusted CA",
                NotifyType.INVALID_CERT_AUTHORITY,
                "authentication failed",
            )
        current, seen = parent, seen + 1
    raise NegotiationError(
        "certificate chain too long", NotifyType.INVALID_CERTIFICATE, "authentication failed"
    )


def _issued_by(cert: x509.Certificate, issuer: x509.Certificate) -> bool:
    try:
        cert.verify_directly_issued_by(issuer)
        return True
    except (ValueError, TypeError, InvalidSignature):
        return False


def in_date(cert: x509.Certificate, now: datetime.datetime) -> bool:
    return cert.not_valid_before_utc <= now <= cert.not_valid_after_utc


def load_certificate(der: bytes) -> x509.Certificate:
    """A peer's CERT payload, every field the checks read parsed now: cryptography parses the names, dates
    and key only when they are read, so a corrupt subject raised ValueError from inside the chain check."""
    from cryptography import x509  # here: a PSK-only ipsecd never loads it (8 MB)

    try:
        cert = x509.load_der_x509_certificate(der)
        _ = cert.subject, cert.issuer, cert.not_valid_before_utc, cert.not_valid_after_utc
        key = cert.public_key()
    except (ValueError, UnsupportedAlgorithm) as e:
        raise NegotiationError(
            f"CERT payload is not a DER X.509 certificate ({e})", NotifyType.INVALID_CERTIFICATE,
            "authentication failed",
        ) from None
    if not isinstance(key, rsa.RSAPublicKey):
        raise NegotiationError(
            f"certificate {cert.subject.rfc4514_string()} has no RSA key: RSA signatures only",
            NotifyType.INVALID_CERTIFICATE, "authentication failed",
        )
    return cert
