"""Draw a topology with graphviz `dot`: nodes as boxes (by role), segments as ellipses with their subnet."""

from __future__ import annotations

import subprocess
import textwrap
from pathlib import Path

from lab.model import Topology

COLOURS = {
    "host": "#dbe9f6",
    "gateway": "#fde2c4",
    "nat": "#f8d0d0",
    "router": "#fde2c4",
    "dc": "#e2d4f0",
    "strongswan": "#d4f0dc",
}


def to_dot(topology: Topology) -> str:
    """The topology as a DOT graph (segments are nodes, so a LAN with many members reads as a star)."""
    description = "\\n".join(textwrap.wrap(topology.description, 90))
    title = topology.name + ("" if topology.runnable else " (not runnable yet)")
    lines = [
        "graph topology {",
        '  graph [rankdir=LR, fontname="Helvetica", fontsize=16, labelloc=t,',
        f'         label="{title}\\n{description}"];',
        '  node [fontname="Helvetica", fontsize=12]; edge [fontname="Helvetica", fontsize=10];',
    ]
    for segment in topology.segments.values():
        lines.append(
            f'  "seg:{segment.name}" [shape=ellipse, style=dashed, '
            f'label="{segment.name}\\n{segment.subnet or ""}"];'
        )
    for node in topology.nodes.values():
        extra = "\\nipsecd" if node.ipsecd else ""
        if node.nat:
            ports = f" ports {node.nat.ports[0]}-{node.nat.ports[1]}" if node.nat.ports else ""
            extra += f"\\nmasquerade {node.nat.outside}{ports}"
        lines.append(
            f'  "{node.name}" [shape=box, style="rounded,filled", fillcolor="{COLOURS[node.role]}", '
            f'label="{node.name}\\n({node.role}){extra}"];'
        )
    rank = _walk_order(topology)
    for node in topology.nodes.values():
        for iface in node.interfaces.values():
            ends = [f'"{node.name}"', f'"seg:{iface.segment}"']
            if rank[f"seg:{iface.segment}"] < rank[node.name]:
                ends.reverse()  # draw left to right in the order a packet would walk the topology
            lines.append(f'  {ends[0]} -- {ends[1]} [label="{iface.name}\\n{iface.address or ""}"];')
    return "\n".join([*lines, "}", ""])


def render(topology: Topology, output: Path) -> Path:
    """Write `output` (.svg, .png or .dot) for the topology."""
    dot = to_dot(topology)
    fmt = output.suffix.lstrip(".") or "svg"
    if fmt == "dot":
        output.write_text(dot)
    else:
        subprocess.run(["dot", f"-T{fmt}", "-o", str(output)], input=dot, text=True, check=True)
    return output


def _walk_order(topology: Topology) -> dict[str, int]:
    """Breadth-first order over nodes and segments, starting at the first node."""
    neighbours: dict[str, list[str]] = {}
    for node in topology.nodes.values():
        for iface in node.interfaces.values():
            neighbours.setdefault(node.name, []).append(f"seg:{iface.segment}")
            neighbours.setdefault(f"seg:{iface.segment}", []).append(node.name)
    order: dict[str, int] = {}
    for start in neighbours:
        queue = [start]
        while queue:
            current = queue.pop(0)
            if current not in order:
                order[current] = len(order)
                queue += neighbours[current]
    return order
