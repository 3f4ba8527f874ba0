"""Certificates for the IKE fuzz target, made from the run's seed (cryptography's key generation cannot be
seeded, and a run must replay from its seed): 1024-bit RSA keys from seeded primes, fixed dates."""

from __future__ import annotations

import datetime
import math
import random

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID

from ipsecd.ike.settings import Certificates

_SMALL_PRIMES = (3, 5, 7, 11, 13, 17, 19, 23, 29, 31, 37, 41, 43, 47)
_E = 65537


def _probable_prime(rng: random.Random, bits: int) -> int:
    """Miller-Rabin with 20 random bases: for random candidates the error is far below anything seen."""
    while True:
        n = rng.getrandbits(bits) | 1 << (bits - 1) | 1
        if any(n % p == 0 for p in _SMALL_PRIMES) or math.gcd(n - 1, _E) != 1:
            continue
        d, s = n - 1, 0
        while d % 2 == 0:
            d, s = d // 2, s + 1
        for _ in range(20):
            x = pow(rng.randrange(2, n - 1), d, n)
            if x in (1, n - 1):
                continue
            for _ in range(s - 1):
                x = pow(x, 2, n)
                if x == n - 1:
                    break
            else:
                break
        else:
            return n


def seeded_key(rng: random.Random, bits: int = 1024) -> rsa.RSAPrivateKey:
    p, q = _probable_prime(rng, bits // 2), _probable_prime(rng, bits // 2)
    d = pow(_E, -1, (p - 1) * (q - 1))
    public = rsa.RSAPublicNumbers(_E, p * q)
    return rsa.RSAPrivateNumbers(p, q, d, d % (p - 1), d % (q - 1), pow(q, -1, p), public).private_key()


def _certificate(subject: str, issuer: str, key: rsa.RSAPrivateKey, signer: rsa.RSAPrivateKey,
                 serial: int, ca: bool) -> x509.Certificate:
    def name(cn: str) -> x509.Name:
        return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "ipsec-lab fuzz"),
                          x509.NameAttribute(NameOID.COMMON_NAME, cn)])

    builder = (
        x509.CertificateBuilder()
        .subject_name(name(subject))
        .issuer_name(name(issuer))
        .public_key(key.public_key())
        .serial_number(serial)
        .not_valid_before(datetime.datetime(2020, 1, 1, tzinfo=datetime.UTC))
        .not_valid_after(datetime.datetime(2099, 12, 31, tzinfo=datetime.UTC))
    )
    if ca:
        builder = builder.add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
    return builder.sign(signer, hashes.SHA256())


def seeded_credentials(rng: random.Random, names: tuple[str, ...]) -> list[Certificates]:
    """One CA and a certificate per name, all trusting that CA."""
    ca_key = seeded_key(rng)
    ca = _certificate("fuzz CA", "fuzz CA", ca_key, ca_key, 1, ca=True)
    out = []
    for serial, cn in enumerate(names, start=2):
        key = seeded_key(rng)
        out.append(Certificates(_certificate(cn, "fuzz CA", key, ca_key, serial, ca=False), key, (ca,)))
    return out
