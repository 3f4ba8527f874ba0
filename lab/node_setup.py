"""What `lab up` (and a restart) does in a node once it is wired, on every backend, through its handle:
/etc/hosts naming every node, the NAT box's rules, the firewall, then the services its image starts at up
(images/<kind>/image.yaml, lab.services)."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from lab import model

if TYPE_CHECKING:
    from lab.running import Node

log = logging.getLogger("lab")

FIREWALL_RULES = "/etc/lab/firewall.nft"


def configure(node: Node) -> None:
    """Names of the other nodes in /etc/hosts, role settings (NAT rules, firewall), then the services."""
    node.put_file("/etc/lab/hosts", hosts_file(node.lab.topology))
    setup = ["cat /etc/lab/hosts >> /etc/hosts"]
    if node.spec.nat is not None:
        node.put_file("/etc/lab/nat.nft", nat_ruleset(node.spec.nat))
        setup.append("nft -f /etc/lab/nat.nft")
    if node.spec.drop:
        node.put_file(FIREWALL_RULES, firewall_ruleset(node.spec.drop))
        setup.append(f"nft -f {FIREWALL_RULES}")
    node.exec(" && ".join(setup), check=True)
    files = node.spec.service_files()
    image = node.services
    for name in files.keys() - image.services.keys():
        log.warning(
            "%s: %s is not installed in this image (no service %s in %s); %s not used",
            node.name,
            name,
            name,
            image.path or f"images/{image.kind}/image.yaml, absent",
            files[name],
        )
    for service in image.at_up(files):
        node.start_service(service.name)


def hosts_file(topology: model.Topology) -> str:
    """/etc/hosts lines: every node address, named `<node>` on its first interface, `<node>-<if>` on all."""
    lines = ["# lab nodes"]
    for node in topology.nodes.values():
        addressed = [(i.name, i.address) for i in node.interfaces.values() if i.address is not None]
        for position, (ifname, address) in enumerate(addressed):
            names = [f"{node.name}-{ifname}"] if position else [node.name, f"{node.name}-{ifname}"]
            lines.append(f"{address.ip}\t{' '.join(names)}")
    return "\n".join(lines) + "\n"


def nat_ruleset(nat: model.Nat) -> str:
    """The NAT box's nftables ruleset: masquerade out of `outside`, port rewriting, optional ESP drop."""
    to_ports = f" to :{nat.ports[0]}-{nat.ports[1]}" if nat.ports else ""
    flags = " random" if nat.random else ""
    lines = ["table ip lab_nat {", "  chain postrouting {", "    type nat hook postrouting priority srcnat;"]
    if nat.ports:
        lines += [f"    oifname {nat.outside} meta l4proto {{ tcp, udp }} masquerade{to_ports}{flags}"]
    lines += [f"    oifname {nat.outside} masquerade{flags}", "  }"]
    return "\n".join([*lines, "}", ""])


def firewall_ruleset(drop: list[str]) -> str:
    """The node firewall (table inet lab_firewall): drop, with a counter, what `drop` names, in every
    direction. An empty list gives an empty table, so applying it lifts the firewall."""
    matches = []
    for name in drop:
        proto, _, port = name.partition("/")
        matches += [f"{proto} dport {port}", f"{proto} sport {port}"] if port else [f"meta l4proto {proto}"]
    lines = ["table inet lab_firewall {}", "delete table inet lab_firewall", "table inet lab_firewall {"]
    for hook in ("input", "forward", "output"):
        lines += [f"  chain {hook} {{", f"    type filter hook {hook} priority filter;"]
        lines += [f"    {match} counter drop" for match in matches]
        lines.append("  }")
    return "\n".join([*lines, "}", ""])
