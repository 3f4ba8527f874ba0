"""Draw a topology, or a running lab, with graphviz `dot`: nodes as boxes (by role) with their firewall,
links and segments, and the IPsec relations between nodes (who protects what with whom, tunnel endpoints).

A segment with two members is drawn as one edge between them (a point-to-point link), a bigger one as an
ellipse, so a chain of gateways reads as a short row. IPsec relations come from each node's policy: the
running ipsecd's (`ipsecctl policy --json`, plus its quick mode SAs) for a running lab, else the files the
topology gives the node (`ipsecd:`, a config and its policy store, docs/policy.md's format).
"""

from __future__ import annotations

import json
import re
import subprocess
import textwrap
from dataclasses import dataclass
from ipaddress import IPv4Network, ip_network
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from lab.model import NodeSpec, Topology
from lab.node_setup import FIREWALL_RULES

if TYPE_CHECKING:
    from lab.running import Lab, Node

COLOURS = {
    "host": "#dbe9f6",
    "gateway": "#fde2c4",
    "nat": "#f8d0d0",
    "router": "#fde2c4",
    "dc": "#e2d4f0",
    "strongswan": "#d4f0dc",
}
POLICY_COLOUR, SA_COLOUR, FIREWALL_COLOUR = "#1f6fb2", "#2a9d3a", "#c0392b"


@dataclass(frozen=True)
class Relation:
    """`node` protects traffic with `peer` (a node name or an address): `what`, e.g. "ESP[3DES,SHA1] all
    traffic" or "tunnel 10.1.0.0/24 <-> 10.2.0.0/24"; `live`: a quick mode SA, not just a policy rule."""

    node: str
    peer: str
    what: str
    live: bool = False


@dataclass
class NodeView:
    """What the picture says of one node beyond the topology: firewall and IPsec."""

    drop: list[str]
    dropped: int | None = None
    relations: tuple[Relation, ...] = ()
    ipsecd: str = ""  # "", "ipsecd (configured)", "ipsecd running", "ipsecd stopped"


# -- what each node has --------------------------------------------------------------------------------------


def policy_of_files(spec: NodeSpec) -> dict | None:
    """The policy the topology's ipsecd files assign to the node, as its YAML reads (None: none, or manual
    keys)."""
    if spec.ipsecd is None:
        return None
    config = spec.ipsecd / "ipsecd.yaml" if spec.ipsecd.is_dir() else spec.ipsecd
    settings = (yaml.safe_load(config.read_text()) or {}).get("policy")
    if not settings or not settings.get("assign"):
        return None
    path = config.parent / settings.get("store", "policies") / settings["assign"]
    return yaml.safe_load(path.read_text()) if path.is_file() else None


def relations(
    topology: Topology, node: str, policy: dict | None, sas: list[dict] | None = None
) -> list[Relation]:
    """The IPsec relations of `node` from its policy's negotiate rules and its quick mode SAs."""
    found = []
    for rule in (policy or {}).get("rules") or []:
        action = rule.get("filter_action") or {}
        if action.get("action") != "negotiate" or rule.get("active") is False:
            continue
        methods = action.get("security_methods") or []
        method = str(methods[0]).split(":")[0] if methods else "IPsec"
        tunnel = str(rule.get("tunnel") or "none")  # the running ipsecd says "none" for transport mode
        for f in (rule.get("filter_list") or {}).get("filters") or []:
            source, destination = str(f.get("source", "any")), str(f.get("destination", "any"))
            if tunnel != "none":
                peer = _owner(topology, tunnel) or tunnel
                found.append(Relation(node, peer, f"tunnel {source} <-> {destination}\\n{method}"))
                continue
            what = f"{method} {f.get('protocol') or 'all'}".replace(" any", " all traffic")
            for peer in _peers(topology, node, destination):
                found.append(Relation(node, peer, what))
    for sa in sas or []:
        peer = _owner(topology, str(sa.get("peer", ""))) or str(sa.get("peer", ""))
        found.append(Relation(node, peer, f"SA {sa.get('security method', '')} {sa.get('mode', '')}", True))
    return list(dict.fromkeys(found))


def _owner(topology: Topology, address: str) -> str | None:
    for spec in topology.nodes.values():
        if any(i.address is not None and str(i.address.ip) == address for i in spec.interfaces.values()):
            return spec.name
    return None


def _peers(topology: Topology, node: str, destination: str) -> list[str]:
    """The other nodes a filter's destination covers ('any': those sharing a segment with `node`)."""
    if destination == "any":
        segments = {i.segment for i in topology.node(node).interfaces.values()}
        return [m.name for s in segments for m, _ in topology.members(s) if m.name != node]
    try:
        network: IPv4Network = ip_network(destination, strict=False)  # type: ignore[assignment]
    except ValueError:
        return [destination]  # a DNS name
    return [
        spec.name
        for spec in topology.nodes.values()
        if spec.name != node
        and any(i.address is not None and i.address.ip in network for i in spec.interfaces.values())
    ] or [destination]


def _drops_in(ruleset: str) -> list[str]:
    """The protocol names a lab firewall ruleset (lab.node_setup.firewall_ruleset) drops."""
    names = [f"{p}/{port}" for p, port in re.findall(r"(\w+) dport (\d+) counter drop", ruleset)]
    return list(dict.fromkeys([*re.findall(r"meta l4proto (\w+) counter drop", ruleset), *names]))


def view_of_files(topology: Topology) -> dict[str, NodeView]:
    return {
        name: NodeView(
            list(spec.drop),
            relations=tuple(relations(topology, name, policy_of_files(spec))),
            ipsecd="ipsecd (configured)" if spec.ipsecd else "",
        )
        for name, spec in topology.nodes.items()
    }


def view_of_lab(lab: Lab) -> dict[str, NodeView]:
    """The nodes as they are now: their firewall (and what it dropped), their ipsecd's policy and SAs."""
    return {name: _live(lab.topology, node) for name, node in lab.nodes.items()}


def _live(topology: Topology, node: Node) -> NodeView:
    ruleset = node.exec(["cat", FIREWALL_RULES]).stdout
    drops = _drops_in(ruleset)
    view = NodeView(drops, node.dropped() if drops else None)
    if "ipsecd" not in node.services.services:
        return view
    policy = _ipsecctl(node, "policy")
    if policy is None:
        view.ipsecd = "ipsecd stopped"
        view.relations = tuple(relations(topology, node.name, policy_of_files(node.spec)))
        return view
    view.ipsecd = "ipsecd running"
    view.relations = tuple(relations(topology, node.name, policy, _ipsecctl(node, "qmsa") or []))
    return view


def _ipsecctl(node: Node, view: str) -> Any:
    result = node.exec(["ipsecctl", view, "--json"])
    return json.loads(result.stdout) if result.ok else None


# -- drawing -------------------------------------------------------------------------------------------------


def to_dot(topology: Topology, views: dict[str, NodeView] | None = None, title: str = "") -> str:
    """The topology as a DOT graph, with what `views` says of each node (default: the topology's files)."""
    views = views if views is not None else view_of_files(topology)
    description = "\\n".join(textwrap.wrap(topology.description, 70))
    title = (title or topology.name) + ("" if topology.runnable else " (not runnable yet)")
    lines = [
        "graph topology {",
        '  graph [rankdir=LR, fontname="Helvetica", fontsize=16, labelloc=t, nodesep=0.6, ranksep=0.6,',
        f'         label="{title}\\n{description}\\n "];',
        '  node [fontname="Helvetica", fontsize=12]; edge [fontname="Helvetica", fontsize=10];',
    ]
    links = {s: topology.members(s) for s in topology.segments}
    for segment in topology.segments.values():
        if len(links[segment.name]) != 2:
            lines.append(
                f'  "seg:{segment.name}" [shape=ellipse, style=dashed, '
                f'label="{segment.name}\\n{segment.subnet or ""}"];'
            )
    for node in topology.nodes.values():
        lines.append(_node_line(node, views.get(node.name)))
    for segment in topology.segments.values():
        members = links[segment.name]
        if len(members) == 2:
            (a, _), (b, _) = members
            label = f"{segment.name}\\n{segment.subnet or ''}"
            lines.append(f'  "{a.name}" -- "{b.name}" [label="{label}", penwidth=2];')
            continue
        for node, _ in members:
            lines.append(f'  "{node.name}" -- "seg:{segment.name}";')
    lines += _relation_lines(topology, views)
    return "\n".join([*lines, "}", ""])


def _node_line(node: NodeSpec, view: NodeView | None) -> str:
    extra = "".join(f"\\n{i.name} {i.address or i.segment}" for i in node.interfaces.values())
    if node.nat:
        ports = f" ports {node.nat.ports[0]}-{node.nat.ports[1]}" if node.nat.ports else ""
        extra += f"\\nmasquerade {node.nat.outside}{ports}"
    border = ""
    if view is not None:
        extra += f"\\n{view.ipsecd}" if view.ipsecd else ""
        if view.drop:
            counted = f" ({view.dropped} dropped)" if view.dropped is not None else ""
            extra += f"\\nfirewall drops {', '.join(view.drop)}{counted}"
            border = f', color="{FIREWALL_COLOUR}", penwidth=3'
    return (
        f'  "{node.name}" [shape=box, style="rounded,filled", fillcolor="{COLOURS[node.role]}"{border}, '
        f'label="{node.name}\\n({node.role}){extra}"];'
    )


def _relation_lines(topology: Topology, views: dict[str, NodeView]) -> list[str]:
    """One edge per pair of nodes and kind (policy, SA), its label what either side says, out of the
    layout's way (constraint=false)."""
    pairs: dict[tuple[str, str, bool], list[str]] = {}
    for view in views.values():
        for r in view.relations:
            key = (*sorted((r.node, r.peer)), r.live)
            pairs.setdefault(key, [])  # type: ignore[arg-type]
            if r.what not in pairs[key]:  # type: ignore[index]
                pairs[key].append(r.what)  # type: ignore[index]
    lines = []
    for (a, b, live), whats in pairs.items():
        for end in (a, b):
            if end not in topology.nodes:
                lines.append(f'  "{end}" [shape=plaintext, label="{end}"];')
        colour, style = (SA_COLOUR, "bold") if live else (POLICY_COLOUR, "dashed")
        label = "\\n".join(whats)
        lines.append(
            f'  "{a}" -- "{b}" [label="{label}", color="{colour}", fontcolor="{colour}", style={style}, '
            "constraint=false];"
        )
    return lines


def render(topology: Topology, output: Path, lab: Lab | None = None) -> Path:
    """Write `output` (.svg, .png or .dot) for the topology, or for the running `lab` as it is now."""
    dot = to_dot(topology, view_of_lab(lab), f"lab {lab.name} (running)") if lab else to_dot(topology)
    fmt = output.suffix.lstrip(".") or "svg"
    if fmt == "dot":
        output.write_text(dot)
    else:
        subprocess.run(["dot", f"-T{fmt}", "-o", str(output)], input=dot, text=True, check=True)
    return output
