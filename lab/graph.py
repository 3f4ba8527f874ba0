"""Draw a topology with graphviz `dot`: nodes as boxes (by role), segments as ellipses with their subnet."""

from __future__ import annotations

import subprocess
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
    title = topology.name + ("" if topology.runnable else " (not runnable yet)")
    lines = [
        "graph topology {",
        '  graph [rankdir=LR, fontname="Helvetica", fontsize=16, labelloc=t,',
        f'         label="{title}\\n{topology.description[:90]}"];',
        '  node [fontname="Helvetica", fontsize=12]; edge [fontname="Helvetica", fontsize=10];',
    ]
    for segment in topology.segments.values():
        lines.append(
            f'  "seg:{segment.name}" [shape=ellipse, style=dashed, '
            f'label="{segment.name}\\n{segment.subnet or ""}"];'
        )
    for node in topology.nodes.values():
        extra = "\\nipsecd" if node.ipsecd else ""
        lines.append(
            f'  "{node.name}" [shape=box, style="rounded,filled", fillcolor="{COLOURS[node.role]}", '
            f'label="{node.name}\\n({node.role}){extra}"];'
        )
        for iface in node.interfaces.values():
            address = iface.address or ""
            lines.append(f'  "{node.name}" -- "seg:{iface.segment}" [label="{iface.name}\\n{address}"];')
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
