"""A throwaway PKI for IKE certificate tests: one CA and RSA gateway certificates, made with `cryptography`.

pki = Pki()
gw = pki.issue("gw-a", "198.51.100.1")
gw.dn          # 'O=ipsec-lab, CN=gw-a' (strongSwan's string form, RDNs in certificate order)
gw.cert_pem, gw.key_pem, pki.ca_pem
"""

from __future__ import annotations

import datetime
import ipaddress
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID

ORGANIZATION = "ipsec-lab"


@dataclass(frozen=True)
class Identity:
    name: str
    dn: str
    certificate: x509.Certificate
    key: rsa.RSAPrivateKey

    @property
    def cert_pem(self) -> bytes:
        return self.certificate.public_bytes(serialization.Encoding.PEM)

    @property
    def key_pem(self) -> bytes:
        """PKCS#1 PEM ('BEGIN RSA PRIVATE KEY'): what strongSwan's pkcs1 plugin and most tools read."""
        return self.key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.TraditionalOpenSSL,
            serialization.NoEncryption(),
        )


def _name(common_name: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, ORGANIZATION),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )


class Pki:
    """A CA (valid from an hour ago for a day) that issues end-entity certificates."""

    def __init__(self, ca_name: str = "ipsec-lab CA"):
        self.ca_name = ca_name
        self.now = datetime.datetime.now(datetime.UTC)
        self.ca_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        subject = _name(ca_name)
        self.ca = (
            self._builder(subject, subject, self.ca_key)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True
            )
            .sign(self.ca_key, hashes.SHA256())
        )

    @property
    def ca_pem(self) -> bytes:
        return self.ca.public_bytes(serialization.Encoding.PEM)

    def _builder(
        self, subject: x509.Name, issuer: x509.Name, key: rsa.RSAPrivateKey
    ) -> x509.CertificateBuilder:
        return (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(issuer)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(self.now - datetime.timedelta(hours=1))
            .not_valid_after(self.now + datetime.timedelta(days=1))
        )

    def issue(self, name: str, address: str, dns_names: int = 0) -> Identity:
        """An RSA-2048 certificate for CN=name with the IP address as subjectAltName, and `dns_names` long
        DNS names after it (80 make a 5 KB certificate: main mode 5 and 6 longer than an Ethernet MTU)."""
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        names: list[x509.GeneralName] = [x509.IPAddress(ipaddress.IPv4Address(address))]
        names += [x509.DNSName(f"alias-{i:03d}.{name}.a-long-domain-name-to-fill-the-certificate.example")
                  for i in range(dns_names)]
        cert = (
            self._builder(_name(name), self.ca.subject, key)
            .add_extension(x509.SubjectAlternativeName(names), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .sign(self.ca_key, hashes.SHA256())
        )
        return Identity(name, self.dn_of(name), cert, key)

    def ca_dn(self) -> str:
        return self.dn_of(self.ca_name)

    @staticmethod
    def dn_of(name: str) -> str:
        """The subject of `name`'s certificate as strongSwan writes a DN (RDNs in certificate order)."""
        return f"O={ORGANIZATION}, CN={name}"
