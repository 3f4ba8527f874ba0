"""What `lab up` (and a restart) does in a node once it is wired, on every backend, through its handle:
/etc/hosts naming every node, the NAT box's rules, the firewall, a domain member's set-up, then the services
its image starts at up (images/<kind>/image.yaml, lab.services).

A domain member (`join:` in the topology) gets what a joined Windows machine holds, from its controller
(images/dc/README.md): its computer account's keytab (/etc/krb5.keytab, mode 600; the account is made on
the controller if the image has none), a krb5.conf naming the KDC by address, the DC's CA certificate, and
the domain's names in /etc/hosts; its services start once the controller's are ready."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from lab import model, services
from lab.capture import wait_until

if TYPE_CHECKING:
    from lab.running import Node

log = logging.getLogger("lab")

FIREWALL_RULES = "/etc/lab/firewall.nft"
#: What the controller's image exports for members (images/dc/README.md) and where a member keeps it.
DC_EXPORTS = "/var/lib/ipsec-lab"
MEMBER_KEYTAB = "/etc/krb5.keytab"
MEMBER_KRB5_CONF = "/etc/krb5.conf"
MEMBER_CA = "/etc/ipsec-lab/dc-ca.pem"


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
    if node.spec.join is not None and node.lab.topology.domain is not None:
        join_domain(node, node.lab.topology.domain)
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


def join_domain(node: Node, domain: model.Domain) -> None:
    """The member's keytab, krb5.conf and the DC's CA from the controller; then wait for the controller's
    services (a member's ipsecd binds to the DC at its first apply)."""
    controller = node.lab.node(domain.controller)
    keytab = f"{DC_EXPORTS}/keytabs/{node.name}.keytab"
    if not controller.exec(["test", "-f", keytab]).ok:
        account = f"{node.name}:{node.spec.join.ou}" if node.spec.join and node.spec.join.ou else node.name
        controller.exec(["dc-add-computer", account], check=True)
    node.put_file(MEMBER_KEYTAB, controller.get_file(keytab), mode=0o600)
    node.put_file(MEMBER_KRB5_CONF, krb5_conf(domain, controller.address()))
    node.put_file(MEMBER_CA, controller.get_file(f"{DC_EXPORTS}/ca.pem"))
    wait_for_services(controller)


def wait_for_services(node: Node) -> None:
    """Poll until every service `lab up` starts on `node` is ready (started by its own set-up)."""
    for service in node.services.at_up(node.spec.service_files()):
        def ready(conditions: tuple[services.Readiness, ...] = service.ready) -> bool:
            return all(node.exec(list(c.argv)).ok for c in conditions)

        wait_until(ready, service.timeout + 10,
                   what=f"{node.name}: {service.name} to be ready (for its domain's members)")


def krb5_conf(domain: model.Domain, kdc: str) -> str:
    """A member's krb5.conf: the KDC by address, no DNS look-ups (a DC that is down stalls none)."""
    realm, dns = domain.realm, domain.dns_name
    return (f"[libdefaults]\n\tdefault_realm = {realm}\n\tdns_lookup_realm = false\n"
            f"\tdns_lookup_kdc = false\n\trdns = false\n\tdns_canonicalize_hostname = false\n"
            f"[realms]\n\t{realm} = {{\n\t\tkdc = {kdc}\n\t}}\n"
            f"[domain_realm]\n\t.{dns} = {realm}\n\t{dns} = {realm}\n")


def hosts_file(topology: model.Topology) -> str:
    """/etc/hosts lines: every node address, named `<node>` on its first interface, `<node>-<if>` on all;
    with a domain, `<node>.<domain>` too (the DC's name for Kerberos and its certificate)."""
    lines = ["# lab nodes"]
    for node in topology.nodes.values():
        addressed = [(i.name, i.address) for i in node.interfaces.values() if i.address is not None]
        fqdn = [f"{node.name}.{topology.domain.dns_name}"] if topology.domain else []
        for position, (ifname, address) in enumerate(addressed):
            names = [f"{node.name}-{ifname}"] if position else [node.name, *fqdn, f"{node.name}-{ifname}"]
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
