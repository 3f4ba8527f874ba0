"""A tiny PKI for tests: a CA and node certificates made with `cryptography`."""

from __future__ import annotations

import datetime

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID

from ipsecd.ike.settings import Certificates

NOW = datetime.datetime.now(datetime.UTC)


def _name(cn: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "ipsec-lab"),
            x509.NameAttribute(NameOID.COMMON_NAME, cn),
        ]
    )


def _key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


class CA:
    def __init__(self, name: str = "ipsec-lab CA"):
        self.key = _key()
        self.cert = (
            x509.CertificateBuilder()
            .subject_name(_name(name))
            .issuer_name(_name(name))
            .public_key(self.key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(NOW - datetime.timedelta(days=1))
            .not_valid_after(NOW + datetime.timedelta(days=365))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(self.key, hashes.SHA256())
        )

    def issue(
        self, cn: str, days_valid: tuple[int, int] = (-1, 365)
    ) -> tuple[x509.Certificate, rsa.RSAPrivateKey]:
        key = _key()
        cert = (
            x509.CertificateBuilder()
            .subject_name(_name(cn))
            .issuer_name(self.cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(NOW + datetime.timedelta(days=days_valid[0]))
            .not_valid_after(NOW + datetime.timedelta(days=days_valid[1]))
            .sign(self.key, hashes.SHA256())
        )
        return cert, key

    def credentials(
        self,
        cn: str,
        trusted: tuple[x509.Certificate, ...] | None = None,
        days_valid: tuple[int, int] = (-1, 365),
    ) -> Certificates:
        cert, key = self.issue(cn, days_valid)
        return Certificates(cert, key, trusted if trusted is not None else (self.cert,))
