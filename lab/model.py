"""The topology model: nodes, segments, interfaces, routes. Pure data, knows nothing of Docker.

A topology is a set of named segments (layer-2 broadcast domains, each with an IPv4 subnet) and nodes
whose interfaces sit on those segments. A backend (lab.backend.Backend, e.g. lab.docker_backend) turns it
into running nodes.

>>> from ipaddress import ip_interface, ip_network
>>> t = Topology(name="demo", segments={"lan": Segment("lan", ip_network("10.0.0.0/24"))},
...              nodes={"a": NodeSpec("a", interfaces={"eth1": Interface("eth1", "lan",
...                                                                   ip_interface("10.0.0.1/24"))})})
>>> t.semantic_errors()
[]
>>> t.node("a").address("eth1")
'10.0.0.1'
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv4Interface, IPv4Network
from pathlib import Path

ROLES = ("host", "gateway", "nat", "router", "dc", "strongswan")
FORWARDING_ROLES = ("gateway", "nat", "router")

#: A location in the topology file, as a path of keys: ("nodes", "host-a", "interfaces", "eth1", "address").
FieldPath = tuple[str | int, ...]


@dataclass(frozen=True)
class ModelError:
    """A semantic error: the field it is about and a sentence saying what is wrong."""

    field: FieldPath
    message: str


@dataclass
class Segment:
    """A layer-2 segment (one bridge in the lab's fabric namespace)."""

    name: str
    subnet: IPv4Network | None = None
    description: str = ""


@dataclass
class Interface:
    """A node's interface on a segment; `name` is the interface name inside the node (eth1, ...)."""

    name: str
    segment: str
    address: IPv4Interface | None = None
    mac: str | None = None
    mtu: int | None = None


@dataclass
class Route:
    """A static route: `to` (a network or "default") via a gateway address."""

    to: IPv4Network
    via: IPv4Address


@dataclass
class Nat:
    """NAT box settings: masquerade out of `outside`, optionally rewriting source ports into `ports`."""

    outside: str
    ports: tuple[int, int] | None = None
    random: bool = False


@dataclass
class Domain:
    """An Active Directory domain: its realm and the node that is its controller (images/dc)."""

    realm: str  # LAB.TEST
    controller: str  # a node name

    @property
    def dns_name(self) -> str:
        return self.realm.lower()


@dataclass
class Join:
    """A node's membership of the topology's domain: its computer account's container (None: CN=Computers)."""

    ou: str | None = None  # e.g. OU=Servers


@dataclass
class NodeSpec:
    """What the topology says of a node (one container): role, image kind, interfaces, routes, the files it
    gives the image's services (`ipsecd`), NAT and firewall. The running node is lab.running.Node.

    `drop` lists traffic the node's firewall drops, in and out and when forwarding, as
    lab.capture.protocol names it: "esp", "ah", "icmp", "udp/500", "tcp/22"."""

    name: str
    role: str = "host"
    image: str = "node"
    interfaces: dict[str, Interface] = field(default_factory=dict)
    routes: list[Route] = field(default_factory=list)
    sysctls: dict[str, str] = field(default_factory=dict)
    ipsecd: Path | None = None
    nat: Nat | None = None
    drop: list[str] = field(default_factory=list)
    join: Join | None = None  # a member of the topology's domain

    def address(self, ifname: str | None = None) -> str:
        """The IPv4 address (no prefix) of `ifname`, or of the first addressed interface."""
        for iface in self.interfaces.values():
            if (ifname is None or iface.name == ifname) and iface.address is not None:
                return str(iface.address.ip)
        raise KeyError(f"node {self.name}: no address on {ifname or 'any interface'}")

    def service_files(self) -> dict[str, Path]:
        """The files this node gives its image's services, by service name (images/<kind>/image.yaml says
        where each goes in the node and whether the file is what makes the service start)."""
        return {"ipsecd": self.ipsecd} if self.ipsecd is not None else {}

    def all_sysctls(self) -> dict[str, str]:
        """Sysctls the container is created with: the role's defaults, then the node's own."""
        values = {
            "net.ipv4.conf.all.rp_filter": "0",
            "net.ipv4.conf.default.rp_filter": "0",
            "net.ipv6.conf.all.disable_ipv6": "1",
            "net.ipv6.conf.default.disable_ipv6": "1",
            "net.ipv4.ip_forward": "1" if self.role in FORWARDING_ROLES else "0",
        }
        values.update(self.sysctls)
        return values


@dataclass
class Topology:
    """A whole topology; `path` is the file it came from (None when built in Python)."""

    name: str
    nodes: dict[str, NodeSpec] = field(default_factory=dict)
    segments: dict[str, Segment] = field(default_factory=dict)
    description: str = ""
    runnable: bool = True
    reason: str = ""
    path: Path | None = None
    domain: Domain | None = None

    def node(self, name: str) -> NodeSpec:
        try:
            return self.nodes[name]
        except KeyError:
            raise KeyError(
                f"topology {self.name} has no node {name!r} (nodes: {', '.join(self.nodes)})"
            ) from None

    def domain_members(self) -> list[NodeSpec]:
        """The nodes that join the domain."""
        return [n for n in self.nodes.values() if n.join is not None and self.domain is not None]

    def members(self, segment: str) -> list[tuple[NodeSpec, Interface]]:
        """The (node, interface) pairs attached to `segment`."""
        return [(n, i) for n in self.nodes.values() for i in n.interfaces.values() if i.segment == segment]

    def semantic_errors(self) -> list[ModelError]:
        """What a schema cannot check: references, duplicates, addresses in subnets, reachable gateways."""
        errors: list[ModelError] = []
        seen: dict[IPv4Address, FieldPath] = {}
        for node in self.nodes.values():
            where: FieldPath = ("nodes", node.name)
            connected: list[IPv4Interface] = []
            for iface in node.interfaces.values():
                at = (*where, "interfaces", iface.name)
                segment = self.segments.get(iface.segment)
                if segment is None:
                    errors.append(ModelError((*at, "segment"), f"unknown segment {iface.segment!r} "
                                                          f"(segments: {', '.join(self.segments)})"))
                if iface.address is None:
                    continue
                connected.append(iface.address)
                if (
                    segment is not None
                    and segment.subnet is not None
                    and iface.address.ip not in segment.subnet
                ):
                    errors.append(
                        ModelError(
                            (*at, "address"),
                            f"{iface.address} is outside segment {segment.name}'s subnet {segment.subnet}",
                        )
                    )
                if iface.address.ip in seen:
                    other = ".".join(map(str, seen[iface.address.ip]))
                    errors.append(
                        ModelError((*at, "address"), f"{iface.address.ip} is already used by {other}")
                    )
                seen.setdefault(iface.address.ip, (*at, "address"))
            for index, route in enumerate(node.routes):
                if not any(route.via in net.network for net in connected):
                    errors.append(
                        ModelError(
                            (*where, "routes", index, "via"),
                            f"gateway {route.via} is not on any of {node.name}'s subnets",
                        )
                    )
            if node.nat is not None and node.nat.outside not in node.interfaces:
                errors.append(
                    ModelError(
                        (*where, "nat", "outside"), f"{node.nat.outside!r} is not an interface of {node.name}"
                    )
                )
            if node.role == "nat" and node.nat is None:
                errors.append(ModelError((*where, "nat"), "a node with role nat needs nat settings"))
        errors += _domain_problems(self)
        for segment in self.segments.values():
            if not self.members(segment.name):
                errors.append(ModelError(("segments", segment.name), "no interface is attached to it"))
        return errors


def _domain_problems(topology: Topology) -> list[ModelError]:
    """The domain's controller exists and has an address; members name a domain and are not its controller."""
    errors = []
    domain = topology.domain
    if domain is not None:
        controller = topology.nodes.get(domain.controller)
        if controller is None:
            errors.append(ModelError(("domain", "controller"), f"no node {domain.controller!r}"))
        elif not any(i.address for i in controller.interfaces.values()):
            errors.append(ModelError(("domain", "controller"), f"{domain.controller} has no address"))
    for node in topology.nodes.values():
        if node.join is None:
            continue
        if domain is None:
            errors.append(ModelError(("nodes", node.name, "join"), "no domain to join: add domain: "
                                                                   "{realm: ..., controller: ...}"))
        elif node.name == domain.controller:
            errors.append(ModelError(("nodes", node.name, "join"), "the controller cannot join its domain"))
    return errors


def mac_address(lab: str, node: str, ifname: str) -> str:
    """A deterministic, locally administered unicast MAC hashed from (lab, node, interface)."""
    digest = hashlib.sha256(f"{lab}/{node}/{ifname}".encode()).digest()
    octets = [(digest[0] & 0xFC) | 0x02, *digest[1:6]]
    return ":".join(f"{b:02x}" for b in octets)
