"""The glue between the IPsec driver, IKE and the Policy Agent: each side's objects in the other's terms.

IKE hands over a ``QuickModeDone`` (both directions, ``ChildSA`` objects, AH+ESP bundles as ``inner``,
NAT-T encapsulation); the driver wants one ``sad.SecurityAssociation`` per direction and the name of the
filter it secures. The driver asks for SAs with ``acquire(filter, selector)``, reports lifetimes with the
SA object, and hands over IKE's datagrams from UDP 4500 without the non-ESP marker; IKE knows quick
modes by their inbound SPI and wants whole datagrams. ``IKEBridge`` translates both ways, so neither
component imports the other.

>>> from ipaddress import IPv4Network
>>> from ipsecd.ike.settings import Selector
>>> from ipsecd.driver.spd import SPD, Action, Filter, SPDAction, SecurityMethod
>>> secure = SPDAction("secure", Action.NEGOTIATE, (SecurityMethod(),))
>>> spd = SPD(Filter("a-b", IPv4Network("10.0.0.1/32"), IPv4Network("10.0.0.0/24"), secure).mirrored())
>>> secured_filter(spd, Selector.parse("10.0.0.1"), Selector.parse("10.0.0.2"), None, "10.0.0.2").name
'a-b'
>>> secured_filter(spd, Selector.parse("10.0.0.1"), Selector.parse("10.9.0.2"), None, "10.9.0.2") is None
True
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable
from ipaddress import IPv4Address
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from ipsecd.driver.sad import Lifetime, SecurityAssociation
from ipsecd.driver.spd import SPD, Action, Direction, Filter, PacketSelector, SecurityMethod, SPDAction
from ipsecd.ike.component import RATE_TABLE_LIMIT
from ipsecd.ike.sa import ChildSA, QuickModeDone
from ipsecd.ike.settings import Certificates, Selector

if TYPE_CHECKING:  # annotations only
    from cryptography import x509

log = logging.getLogger("ipsecd.ike")

SOFT_FRACTION = 0.9  # kilobyte lifetime at which the driver asks IKE to rekey (IKE times the seconds itself)
INVALID_SPI_INTERVAL = 5.0  # seconds between reactions to one peer's packets for SAs we do not have

SAKey = tuple[int, str, str]  # (SPI, destination, protocol): how the driver and IKE name one SA
DEFAULT_RESPONSE = SPDAction("<Dynamic> default response", Action.NEGOTIATE, (SecurityMethod(),))


class BridgedIKE(Protocol):
    """What the bridge needs from IKE."""

    natt_port: int
    local_address: str

    def has_main_mode_with(self, peer: str) -> bool: ...
    def invalid_spi(self, spi: int, peer: str, protocol: str = "esp") -> None: ...

    def datagram_received(self, data: bytes, addr: tuple[str, int], local_port: int) -> None: ...
    def expire(self, inbound_spi: int, hard: bool, reason: str = "lifetime") -> None: ...


class Acquirer(Protocol):
    def acquire(self, f: Filter, sel: PacketSelector) -> None: ...


def secured_filter(spd: SPD, local: Selector, remote: Selector, tunnel: str | None,
                   peer: str) -> Filter | None:
    """The outbound negotiate filter a quick mode's traffic belongs to, most specific first.

    A peer behind a NAT names its private address in quick mode; its packets reach us from the NAT's
    address (transport mode), so that address is tried too.
    """
    remotes = [remote.network]
    if tunnel is None and remote.network.num_addresses == 1 and str(remote.network.network_address) != peer:
        remotes.append(Selector.parse(peer).network)
    for network in remotes:
        for f in spd.filters:
            if (f.direction is Direction.OUTBOUND and f.action.action is Action.NEGOTIATE
                    and (str(f.tunnel) if f.tunnel else None) == tunnel
                    and local.network.subnet_of(f.src) and network.subnet_of(f.dst)
                    and (f.protocol or 0) in (0, local.protocol)):
                return f
    return None


def security_association(child: ChildSA, done: QuickModeDone, replay_window: int) -> SecurityAssociation:
    """The driver's SA for one direction of a quick mode (with its bundled ESP SA inside an AH SA)."""
    kb = done.lifetime_kb or None
    lifetime = Lifetime(soft_kilobytes=int(kb * SOFT_FRACTION) if kb else None, hard_kilobytes=kb)
    # No nat_oa: quick mode gives only the peer's original address, not the one it sent to, so the driver
    # recomputes a NAT-T transport checksum over the addresses the packet arrives with (RFC 3948 §3.1.2).
    return SecurityAssociation(
        child.spi, child.protocol, child.direction, child.mode, child.src, child.dst,
        child.encryption or "null", child.encryption_key, child.integrity, child.integrity_key,
        udp_encap=child.udp_encap if child.protocol == "esp" else None, lifetime=lifetime,
        replay_window=replay_window,
        inner=security_association(child.inner, done, replay_window) if child.inner else None)


def dynamic_filters(done: QuickModeDone) -> tuple[Filter, Filter]:
    """The filter pair Windows adds for SAs answered under the default response rule: exactly the traffic the
    peer asked to secure (its protocol and ports), so the replies go secured too. Transport mode only."""
    local, remote, peer = done.local_selector, done.remote_selector, done.isakmp_sa.remote[0]
    remote_network = remote.network
    if str(remote_network.network_address) != peer and remote_network.num_addresses == 1:
        remote_network = Selector.parse(peer).network  # behind a NAT: its packets come from the NAT
    name = f"<Dynamic> {local} <-> {Selector(remote_network, remote.protocol, remote.port)}"
    out = Filter(name, local.network, remote_network, DEFAULT_RESPONSE, Direction.OUTBOUND,
                 local.protocol or None, local.port or None, remote.port or None, rule="<Dynamic>")
    return out.mirrored()


class IKEBridge:
    """IKE's driver (``add_sa``, ``delete_sa``) and the driver's IKE (``acquire``, ``expire``,
    ``datagram_4500``). ``ike`` and ``negotiator`` are set once built (they need this object first).

    It is also the Policy Agent's driver (``load_policy``): the policy's filters plus the dynamic filters of
    SAs answered under the default response rule, which live as long as those SAs.
    """

    def __init__(self, driver, replay_window: int = 64) -> None:
        self.driver = driver
        self.replay_window = replay_window
        self.ike: BridgedIKE | None = None
        self.negotiator: Acquirer | None = None
        self.quick_mode_of: dict[SAKey, int] = {}  # every SA of a quick mode -> its inbound SPI (IKE's key)
        self.filter_of: dict[int, str] = {}  # quick mode (inbound SPI) -> the filter its SAs secure
        self.policy = SPD()  # what the Policy Agent gave
        self.invalid_spi_seen: dict[str, float] = {}  # peer -> when we last reacted to an unknown SPI from it
        self.dynamic: dict[str, tuple[Filter, Filter]] = {}  # default response filters, by name

    def load_policy(self, spd: SPD) -> None:
        """The Policy Agent's filters, with the dynamic ones in force, to the driver."""
        self.policy = spd
        self.driver.load_policy(SPD([*spd.filters, *(f for pair in self.dynamic.values() for f in pair)]))

    # -- IKE -> driver ----------------------------------------------------------------------------------

    def add_inbound(self, done: QuickModeDone) -> None:
        """A responder's inbound SAs, as its quick mode 2 leaves: the initiator may send on them as soon as
        it has sent quick mode 3, before that message reaches us."""
        self.filter_of[done.inbound.spi] = self._filter_name(done)
        for child in done.inbound.chain():
            self.quick_mode_of[(child.spi, child.dst, child.protocol)] = done.inbound.spi
        self.driver.add_sa(security_association(done.inbound, done, self.replay_window),
                           self.filter_of[done.inbound.spi])

    def add_sa(self, done: QuickModeDone) -> None:
        """Both directions of a quick mode; inbound first (the peer may use its outbound SA as soon as it
        has it), unless `add_inbound` put it in already."""
        if done.inbound.spi not in self.filter_of:
            self.add_inbound(done)
        for child in done.outbound.chain():
            self.quick_mode_of[(child.spi, child.dst, child.protocol)] = done.inbound.spi
        self.driver.add_sa(security_association(done.outbound, done, self.replay_window),
                           self.filter_of[done.inbound.spi])

    def _filter_name(self, done: QuickModeDone) -> str:
        """The filter the quick mode's SAs secure: the policy's, or dynamic ones of the default response."""
        peer = done.isakmp_sa.remote[0]
        tunnel = peer if done.mode == "tunnel" else None
        f = secured_filter(self.driver.spd, done.local_selector, done.remote_selector, tunnel, peer)
        if f is not None:
            return f.name
        if tunnel is None:  # answered under the default response rule: filters for just this traffic
            pair = dynamic_filters(done)
            name = pair[0].name
            if name not in self.dynamic:
                self.dynamic[name] = pair
                self.load_policy(self.policy)
                log.info("default response: dynamic filters %s", "; ".join(f.describe() for f in pair))
            return name
        log.warning("quick mode SAs %s: no tunnel filter of the policy covers them (the default "
                    "response rule makes no tunnels); installed, but no traffic is sent through them",
                    done.describe())
        return f"<Dynamic> tunnel {done.local_selector} <-> {done.remote_selector}"

    def delete_sa(self, spi: int, destination: str, protocol: str) -> None:
        if self.quick_mode_of.pop((spi, destination, protocol), None) == spi:
            name = self.filter_of.pop(spi, None)  # the quick mode's own inbound SA: the quick mode is gone
            if name in self.dynamic and name not in self.filter_of.values():
                del self.dynamic[name]  # its last SAs: the dynamic filters go with them
                self.load_policy(self.policy)
        with contextlib.suppress(KeyError):  # gone already: idle, hard lifetime, or deleted with its bundle
            self.driver.delete_sa(spi, destination, protocol)

    # -- driver -> IKE ----------------------------------------------------------------------------------

    def acquire(self, f: Filter, sel: PacketSelector) -> None:
        if self.negotiator is not None:
            self.negotiator.acquire(f, sel)

    def expire(self, sa: SecurityAssociation, hard: bool) -> None:
        inbound_spi = self.quick_mode_of.get((sa.spi, sa.dst, sa.protocol))
        if inbound_spi is not None and self.ike is not None:
            self.ike.expire(inbound_spi, hard, "idle or kilobyte lifetime" if hard else "kilobyte lifetime")

    def invalid_spi(self, spi: int, peer: str, protocol: str = "esp") -> None:
        """The peer sends on an SA we do not have. With a main mode SA, IKE tells it (INVALID-SPI), and it
        renegotiates; without one (we restarted and lost everything) we negotiate afresh for the traffic
        our policy secures with that peer: our INITIAL-CONTACT makes it drop its old SAs."""
        now, last = time.monotonic(), self.invalid_spi_seen.get(peer, -INVALID_SPI_INTERVAL)
        if self.ike is None or now - last < INVALID_SPI_INTERVAL:
            return
        if len(self.invalid_spi_seen) >= RATE_TABLE_LIMIT:  # source addresses come from the network
            self.invalid_spi_seen.clear()
        self.invalid_spi_seen[peer] = now
        if self.ike.has_main_mode_with(peer):
            self.ike.invalid_spi(spi, peer, protocol)
            return
        sel = PacketSelector(int(IPv4Address(self.ike.local_address)), int(IPv4Address(peer)), 0)
        f = self.driver.spd.lookup(sel, Direction.OUTBOUND)
        if f is not None and f.action.action is Action.NEGOTIATE and f.tunnel is None and self.negotiator:
            log.info("%s sends on SPI %#010x, unknown here and no main mode with it: negotiating afresh",
                     peer, spi)
            self.negotiator.acquire(f, sel)

    def datagram_4500(self, data: bytes, addr: tuple[str, int]) -> None:
        """IKE on UDP 4500 (the driver took off the non-ESP marker)."""
        if self.ike is not None:
            self.ike.datagram_received(data, addr, self.ike.natt_port)

    # -- the Policy Agent ---------------------------------------------------------------------------------

    def quick_modes_of_filters(self, names: frozenset[str]) -> list[int]:
        """Inbound SPIs of the quick modes that secure traffic of these filters (a policy change)."""
        return [spi for spi, name in self.filter_of.items() if name in names]


def certificate_source(certificate: Path | None, private_key: Path | None,
                       trusted_cas: tuple[Path, ...]) -> Callable[[str], Certificates]:
    """``certificate_for(ca_name)`` for the Policy Agent: this node's certificate and key, and the trusted CA
    the policy names (``CN=Lab Root CA``, or just ``Lab Root CA``). Files are read at each policy apply, so
    replaced certificates count from the next ``ipsecctl refresh``. KeyError/OSError/ValueError name the
    problem; the agent turns them into a policy warning."""

    def certificate_for(ca_name: str) -> Certificates:
        if certificate is None or private_key is None:
            raise KeyError("no ike.certificate and ike.private_key in the node configuration")
        # when a policy uses certificates: a PSK-only ipsecd never loads them
        from cryptography import x509
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric import rsa

        cert = x509.load_pem_x509_certificate(certificate.read_bytes())
        key = serialization.load_pem_private_key(private_key.read_bytes(), password=None)
        if not isinstance(key, rsa.RSAPrivateKey):
            raise ValueError(f"{private_key}: not an RSA private key (main mode signs with RSA)")
        cas = [x509.load_pem_x509_certificate(p.read_bytes()) for p in trusted_cas]
        wanted = _name_parts(ca_name)
        named = tuple(ca for ca in cas if (wanted and wanted <= _name_parts(ca.subject.rfc4514_string()))
                      or ca_name == _common_name(ca))
        if not named:
            have = ", ".join(ca.subject.rfc4514_string() for ca in cas) or "none"
            raise KeyError(f"no trusted CA named {ca_name!r} in ike.trusted_cas (have: {have})")
        return Certificates(cert, key, named)

    return certificate_for


def _name_parts(name: str) -> set[str]:
    return {part.strip().lower() for part in name.split(",") if "=" in part}


def _common_name(cert: x509.Certificate) -> str | None:
    from cryptography.x509.oid import NameOID

    names = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    return str(names[0].value) if names else None
