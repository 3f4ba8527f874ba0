"""IKE settings as plain dataclasses, shaped like the Windows key exchange and filter action settings.

The Policy Agent builds these from a policy rule; the exchanges only read them. Algorithms are named as
ipsecd.algorithms names them (the driver's names): "3des-cbc", "aes-gcm-128", "hmac-sha1-96".
Defaults are the Windows Server 2003 ones (main mode 480 minutes, quick mode 3600 s / 100,000 KB).

>>> PeerPolicy(auth=[PreSharedKey(b"secret")]).main_mode[0]
MainModeOffer(encryption='3des-cbc', hash='sha1', group=2, lifetime=28800)
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from ipsecd import algorithms

if TYPE_CHECKING:  # annotations only: a PSK-only ipsecd never loads cryptography's x509 and RSA
    from cryptography import x509
    from cryptography.hazmat.primitives.asymmetric import rsa

# The ranges Windows' key exchange and security method dialogs take: master key 5 minutes .. 48 hours,
# session key 300 .. 172,800 s and 20,480 .. 2,147,483,647 KB.
MAIN_MODE_LIFETIME_MIN, MAIN_MODE_LIFETIME_MAX = 5 * 60, 48 * 3600
QUICK_MODE_SECONDS_MIN, QUICK_MODE_SECONDS_MAX = 300, 172_800
QUICK_MODE_KB_MIN, QUICK_MODE_KB_MAX = 20_480, 2_147_483_647
QUICK_MODE_IDLE_SECONDS = 5 * 60


@dataclass(frozen=True)
class MainModeOffer:
    """One main mode security method: encryption, hash (and PRF), Diffie-Hellman group, lifetime."""

    encryption: str = "3des-cbc"  # an algorithms.py row with an Oakley number: des-cbc, 3des-cbc, aes-cbc-*
    hash: str = "sha1"  # md5, sha1, sha256
    group: int = 2  # 1, 2, 14
    lifetime: int = 480 * 60  # seconds

    def __post_init__(self):
        # Windows' 5 minutes is a policy's floor (policy/validate.py); labs go lower (ike.main_mode_lifetime)
        if not 1 <= self.lifetime <= MAIN_MODE_LIFETIME_MAX:
            raise ValueError(f"main mode lifetime {self.lifetime} s outside 1 s .. 48 hours")

    def describe(self) -> str:
        return f"{algorithms.encryption(self.encryption).windows}/{self.hash.upper()}/group {self.group}"


@dataclass(frozen=True)
class QuickModeOffer:
    """One quick mode security method (a Windows filter action's "security method")."""

    protocol: str = "esp"  # esp or ah
    encryption: str | None = "3des-cbc"  # an algorithms.py encryption; None: ESP null
    integrity: str | None = "hmac-sha1-96"  # an algorithms.py integrity; None with AES-GCM or ESP null
    lifetime_seconds: int = 3600
    lifetime_kb: int = 100_000
    pfs_group: int | None = None
    ah: str | None = None  # AH integrity bundled over the ESP (Windows "AH[MD5]+ESP[3DES,None]")

    def describe(self) -> str:
        """Windows' spelling: 'ESP[3DES,SHA1]', 'AH[MD5]+ESP[3DES,NONE]'."""
        if self.protocol == "ah":
            return f"AH[{_integrity_word(self.integrity)}]"
        cipher = algorithms.encryption(self.encryption or "null").windows
        esp = f"ESP[{cipher},{_integrity_word(self.integrity)}]"
        return f"AH[{_integrity_word(self.ah)}]+{esp}" if self.ah else esp


def _integrity_word(name: str | None) -> str:
    return algorithms.integrity(name).windows if name else "NONE"


@dataclass(frozen=True)
class PreSharedKey:
    key: bytes

    method = "psk"


@dataclass(frozen=True)
class Certificates:
    """RSA signatures: our certificate and key, and the CAs whose certificates we trust."""

    certificate: x509.Certificate
    private_key: rsa.RSAPrivateKey
    trusted_cas: tuple[x509.Certificate, ...]

    method = "rsa-sig"


@dataclass(frozen=True)
class Kerberos:
    """Kerberos through GSS-API (method 65001), as domain members use it: the computer account's keys in
    ``keytab`` (no password), ``principal`` the account (``member-a$@LAB.TEST``), ``service`` our own
    service name, the GSS identity we announce (default ``host/<account name>.<realm in lower case>``).
    ``resolve`` names a peer's address when it announces no identity (default: the system resolver)."""

    keytab: str
    principal: str
    service: str = ""
    ccache: str = ""  # where tickets are kept (default: in memory, for the life of the process)
    rcache: str = ""  # the acceptor's replay cache (default: MIT's)
    kdc_timeout: float = 5.0  # seconds a ticket request may wait for the KDC
    resolve: Callable[[str], str | None] | None = field(default=None, compare=False)

    method = "kerberos"

    def __post_init__(self):
        if "@" not in self.principal:
            raise ValueError(
                f"Kerberos principal {self.principal!r} has no realm (want like member-a$@LAB.TEST)"
            )
        if not self.service:
            account, realm = self.principal.rsplit("@", 1)
            object.__setattr__(self, "service", f"host/{account.rstrip('$').lower()}.{realm.lower()}")

    @property
    def credential_cache(self) -> str:
        return self.ccache or f"MEMORY:ipsecd-{self.principal}"


AuthMethod = PreSharedKey | Certificates | Kerberos


@dataclass(frozen=True)
class Selector:
    """One side of a quick mode filter: a network, and optionally an IP protocol and port."""

    network: ipaddress.IPv4Network
    protocol: int = 0
    port: int = 0

    @classmethod
    def parse(cls, text: str, protocol: int = 0, port: int = 0) -> Selector:
        return cls(ipaddress.IPv4Network(text, strict=False), protocol, port)

    def __str__(self) -> str:
        extra = f" proto {self.protocol}" if self.protocol else ""
        return f"{self.network}{extra}{f' port {self.port}' if self.port else ''}"


@dataclass(frozen=True)
class PeerPolicy:
    """Everything IKE needs to negotiate with one peer (one Windows rule)."""

    auth: list[AuthMethod]
    main_mode: list[MainModeOffer] = field(default_factory=lambda: [MainModeOffer()])
    quick_mode: list[QuickModeOffer] = field(default_factory=lambda: [QuickModeOffer()])
    tunnel: bool = False  # tunnel mode (tunnel endpoints are the IKE peers) or transport mode
    #: NAT-T revisions we announce and accept, by preference: Windows Server 2003 sends the draft-02 vendor ID
    #: only (MS-IKEE <13>), so that is the default; ("rfc3947", "draft-02") as Vista and later; () = off
    nat_traversal: tuple[str, ...] = ("draft-02",)


ANY = Selector(ipaddress.IPv4Network("0.0.0.0/0"))


@dataclass(frozen=True)
class IKERule:
    """An IKE view of one policy rule: which traffic, protected how, with which peer."""

    name: str
    policy: PeerPolicy
    local: Selector = ANY
    remote: Selector = ANY
    tunnel_endpoint: str | None = None  # tunnel mode: the peer gateway; transport: the packet's peer

    def covers_peer(self, peer: str) -> bool:
        if self.tunnel_endpoint:
            return self.tunnel_endpoint == peer
        return ipaddress.IPv4Address(peer) in self.remote.network

    def covers(self, local: Selector, remote: Selector) -> bool:
        return (
            local.network.subnet_of(self.local.network)
            and remote.network.subnet_of(self.remote.network)
            and self.local.protocol in (0, local.protocol)
            and self.remote.protocol in (0, remote.protocol)
        )
