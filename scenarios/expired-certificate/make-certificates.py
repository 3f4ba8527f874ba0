"""Writes this scenario's certificates (run once; the files are checked in): a lab CA and host-b's certificate
valid 2020-2120, host-a's certificate valid during 2020 only, so it has expired."""

import datetime
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID

HERE = Path(__file__).parent
START = datetime.datetime(2020, 1, 1, tzinfo=datetime.UTC)


def name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "ipsec-lab"),
                      x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def certificate(subject: str, issuer: str, key, signer, years: float, ca: bool = False) -> x509.Certificate:
    builder = (x509.CertificateBuilder().subject_name(name(subject)).issuer_name(name(issuer))
               .public_key(key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(START).not_valid_after(START + datetime.timedelta(days=365 * years))
               .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
    return builder.sign(signer, hashes.SHA256())


def pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


ca_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
ca = certificate("Lab Root CA", "Lab Root CA", ca_key, ca_key, 100, ca=True)
for node, years in (("host-a", 1), ("host-b", 100)):
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    certs = HERE / node / "certs"
    certs.mkdir(exist_ok=True)
    (certs / "ca.pem").write_bytes(pem(ca))
    (certs / f"{node}.pem").write_bytes(pem(certificate(node, "Lab Root CA", key, ca_key, years)))
    (certs / f"{node}.key").write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                                          serialization.PrivateFormat.PKCS8,
                                                          serialization.NoEncryption()))
