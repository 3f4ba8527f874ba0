"""Security Policy Database: the IPsec driver's ordered filters and what to do with a matching packet.

The Policy Agent (or a node's manual configuration) expands its rules into *specific* filters: concrete
addresses ("my IP address" and DNS names already resolved), one direction each (a mirrored filter becomes
two). The driver asks the SPD which filter a packet falls under and applies that filter's action:
permit (pass in clear), block (drop) or negotiate (secure with an SA bundle, asking IKE for one first).

Filters are ordered by weight, most specific first, as Windows does: address specificity counts most, then
a named protocol, then named ports; filters of equal weight keep the order they were given in.

>>> lan = SPDAction("secure", Action.NEGOTIATE, (SecurityMethod(),))
>>> spd = SPD(Filter("a<->b", IPv4Network("10.0.0.1/32"), IPv4Network("10.0.0.2/32"), lan).mirrored())
>>> spd.lookup(PacketSelector.parse(bytes.fromhex(
...     "45000054000040004001263e0a0000010a000002" "0800f7ff00000000")), Direction.OUTBOUND).name
'a<->b'
"""

from __future__ import annotations

import struct
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from enum import StrEnum
from ipaddress import IPv4Address, IPv4Network

IKE_PORTS = (500, 4500)
#: Kerberos (TCP/UDP 88) and RSVP are exempt as the default policies' filter list says ("except broadcast,
#: multicast, Kerberos, RSVP and ISAKMP") and Windows 2000/XP do (NoDefaultExempt=0, KB 810207): Kerberos
#: authentication needs the KDC, which runs no IPsec, reachable while All IP Traffic is secured.
#: (Windows Server 2003's own default, NoDefaultExempt=3, exempts only ISAKMP.)
KERBEROS_PORT = 88
RSVP = 46
PROTOCOL_NUMBERS = {"icmp": 1, "tcp": 6, "udp": 17, "esp": 50, "ah": 51}


class Action(StrEnum):
    PERMIT = "permit"
    BLOCK = "block"
    NEGOTIATE = "negotiate"


class Direction(StrEnum):
    OUTBOUND = "outbound"
    INBOUND = "inbound"


@dataclass(frozen=True)
class SecurityMethod:
    """One offer of a negotiate action: ESP and/or AH, their algorithms and the session key lifetimes."""

    esp_encryption: str | None = "3des-cbc"
    esp_integrity: str | None = "hmac-sha1-96"
    ah_integrity: str | None = None
    lifetime_seconds: int = 3600
    lifetime_kb: int = 100_000

    def __post_init__(self) -> None:
        if self.esp_encryption is None and self.esp_integrity is None and self.ah_integrity is None:
            raise ValueError("a security method needs ESP, AH or both")

    @property
    def uses_esp(self) -> bool:
        return self.esp_encryption is not None or self.esp_integrity is not None

    def describe(self) -> str:
        """Words a person reads in logs: 'ESP 3des-cbc/hmac-sha1-96 + AH hmac-md5-96, 3600 s/100000 KB'."""
        parts = []
        if self.uses_esp:
            parts.append(f"ESP {self.esp_encryption or 'none'}/{self.esp_integrity or 'none'}")
        if self.ah_integrity:
            parts.append(f"AH {self.ah_integrity}")
        return f"{' + '.join(parts)}, {self.lifetime_seconds} s/{self.lifetime_kb} KB"


@dataclass(frozen=True)
class SPDAction:
    """What the driver does with packets that match a filter: the SPD's form of a policy's filter action."""

    name: str
    action: Action
    security_methods: tuple[SecurityMethod, ...] = ()
    pfs: bool = False
    accept_unsecured: bool = False  # "Accept unsecured communication, but always respond using IPsec"
    fallback_to_clear: bool = False  # "Allow unsecured communication with non-IPsec-aware computers"

    def __post_init__(self) -> None:
        if self.action is Action.NEGOTIATE and not self.security_methods:
            raise ValueError(f"filter action {self.name!r}: negotiate needs at least one security method")


@dataclass(frozen=True)
class PacketSelector:
    """The fields of one IPv4 packet that filters look at; addresses as integers for fast matching."""

    src: int
    dst: int
    protocol: int
    src_port: int = 0
    dst_port: int = 0

    @classmethod
    def parse(cls, packet: bytes) -> PacketSelector:
        """Read the selector from an IPv4 packet; ports only from an unfragmented (or first) TCP/UDP packet.

        Raises ValueError for a packet too short or not IPv4, so a caller can count and drop it.
        """
        if len(packet) < 20 or packet[0] >> 4 != 4:
            raise ValueError("not an IPv4 packet")
        header_len = (packet[0] & 0x0F) * 4
        protocol = packet[9]
        src, dst = struct.unpack_from("!II", packet, 12)
        first_fragment = struct.unpack_from("!H", packet, 6)[0] & 0x1FFF == 0
        if protocol in (6, 17) and first_fragment and len(packet) >= header_len + 4:
            src_port, dst_port = struct.unpack_from("!HH", packet, header_len)
            return cls(src, dst, protocol, src_port, dst_port)
        return cls(src, dst, protocol)

    def is_exempt(self) -> bool:
        """Traffic IPsec never touches: IKE itself, Kerberos and RSVP (see KERBEROS_PORT), broadcast and
        multicast (they cannot be secured)."""
        if self.protocol == 17 and (self.src_port in IKE_PORTS or self.dst_port in IKE_PORTS):
            return True
        if self.protocol in (6, 17) and KERBEROS_PORT in (self.src_port, self.dst_port):
            return True
        if self.protocol == RSVP:
            return True
        return self.dst >= 0xE0000000 or self.dst & 0xFF == 0xFF  # multicast, limited or /24 broadcast

    def __str__(self) -> str:
        ports = f" {self.src_port}->{self.dst_port}" if self.src_port or self.dst_port else ""
        return f"{IPv4Address(self.src)} -> {IPv4Address(self.dst)} proto {self.protocol}{ports}"


@dataclass(frozen=True)
class Filter:
    """One specific filter: concrete addresses, one direction, and the action for matching packets."""

    name: str
    src: IPv4Network
    dst: IPv4Network
    action: SPDAction
    direction: Direction = Direction.OUTBOUND
    protocol: int | None = None
    src_port: int | None = None
    dst_port: int | None = None
    tunnel: IPv4Address | None = None  # the far tunnel endpoint; None means transport mode
    rule: str = ""  # the policy rule the filter came from, for ipsecctl and IKE
    # Integer masks precomputed once, because matching runs per packet.
    _src_mask: int = field(init=False, repr=False, compare=False)
    _src_net: int = field(init=False, repr=False, compare=False)
    _dst_mask: int = field(init=False, repr=False, compare=False)
    _dst_net: int = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if (self.src_port or self.dst_port) and self.protocol not in (6, 17):
            raise ValueError(f"filter {self.name!r}: ports need protocol TCP or UDP")
        for side, net in (("src", self.src), ("dst", self.dst)):
            object.__setattr__(self, f"_{side}_mask", int(net.netmask))
            object.__setattr__(self, f"_{side}_net", int(net.network_address))

    @property
    def weight(self) -> tuple[int, int, int]:
        """Bigger is more specific: address prefix lengths, then a named protocol, then named ports."""
        ports = (self.src_port is not None) + (self.dst_port is not None)
        return (self.src.prefixlen + self.dst.prefixlen, self.protocol is not None, ports)

    def matches(self, sel: PacketSelector) -> bool:
        return (
            (sel.src & self._src_mask) == self._src_net
            and (sel.dst & self._dst_mask) == self._dst_net
            and (self.protocol is None or sel.protocol == self.protocol)
            and (self.src_port is None or sel.src_port == self.src_port)
            and (self.dst_port is None or sel.dst_port == self.dst_port)
        )

    def mirror(self) -> Filter:
        """The same filter for the traffic coming back: addresses and ports swapped, direction reversed."""
        back = Direction.INBOUND if self.direction is Direction.OUTBOUND else Direction.OUTBOUND
        return replace(
            self, src=self.dst, dst=self.src, src_port=self.dst_port, dst_port=self.src_port, direction=back
        )

    def mirrored(self) -> tuple[Filter, Filter]:
        return (self, self.mirror())

    def describe(self) -> str:
        names = {v: k for k, v in PROTOCOL_NUMBERS.items()}
        proto = (names.get(self.protocol, self.protocol) if self.protocol is not None else None) or "any"
        ports = ""
        if self.protocol in (6, 17):
            ports = f" ports {self.src_port or 'any'}->{self.dst_port or 'any'}"
        tunnel = f" tunnel {self.tunnel}" if self.tunnel else ""
        return (
            f"{self.name}: {self.direction} {self.src} -> {self.dst} {proto}{ports}"
            f" => {self.action.action}{tunnel}"
        )


class SPD:
    """The ordered filter list. Immutable: a policy change builds a new SPD and swaps it in atomically."""

    def __init__(self, filters: Iterable[Filter] = ()) -> None:
        given = list(filters)
        # sorted() is stable, so filters of equal weight keep the order they were given in.
        self.filters: tuple[Filter, ...] = tuple(sorted(given, key=lambda f: f.weight, reverse=True))
        self._by_direction = {d: tuple(f for f in self.filters if f.direction is d) for d in Direction}

    def lookup(self, sel: PacketSelector, direction: Direction) -> Filter | None:
        """The first (most specific) filter matching the packet, or None: no filter means pass in clear."""
        for candidate in self._by_direction[direction]:
            if candidate.matches(sel):
                return candidate
        return None

    def __len__(self) -> int:
        return len(self.filters)
