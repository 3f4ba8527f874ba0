"""Topology files: YAML, validated against lab/topology.schema.json, turned into a lab.model.Topology.

Every error names the file, the line and the field:

    topologies/x.yaml:12: nodes.host-a.interfaces.eth1.address: '10.0.0.300/24' is not an IPv4 interface
    address (a.b.c.d/len)
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from functools import cache
from ipaddress import IPv4Address, IPv4Interface, IPv4Network
from pathlib import Path
from typing import Any

import jsonschema

from lab import services, yaml_source
from lab.model import Domain, Interface, Join, ModelError, Nat, NodeSpec, Route, Segment, Topology

SCHEMA_PATH = Path(__file__).with_name("topology.schema.json")
TOPOLOGY_DIR = Path(os.environ.get("LAB_TOPOLOGIES", Path(__file__).resolve().parent.parent / "topologies"))

FORMAT_NAMES = {
    "ipv4": "an IPv4 address",
    "ipv4-interface": "an IPv4 interface address (a.b.c.d/len)",
    "ipv4-network": "an IPv4 network (a.b.c.d/len, host bits zero)",
    "ipv4-route-destination": "an IPv4 network or 'default'",
    "port-range": "a port range lo-hi (1-65535)",
}


class TopologyError(yaml_source.FileProblems):
    """A topology file was refused; `problems` holds one 'file:line: field: message' string per error."""


def _parses(parse: Callable[[str], object]) -> Callable[[object], bool]:
    """A format check: strings must parse; other types are the schema's `type` keyword's business."""

    def check(value: object) -> bool:
        if not isinstance(value, str):
            return True
        try:
            parse(value)
        except ValueError:
            return False
        return True

    return check


def _port_range(text: str) -> tuple[int, int]:
    lo, sep, hi = text.partition("-")
    low, high = int(lo), int(hi if sep else lo)
    if not 1 <= low <= high <= 65535:
        raise ValueError(text)
    return low, high


def _route_destination(text: str) -> IPv4Network:
    return IPv4Network("0.0.0.0/0") if text == "default" else IPv4Network(text)


def _ipv4_interface(text: str) -> IPv4Interface:
    if "/" not in text:
        raise ValueError(text)
    return IPv4Interface(text)


FORMATS = jsonschema.FormatChecker(formats=())
_PARSERS: dict[str, Callable[[str], object]] = {
    "ipv4": IPv4Address,
    "ipv4-interface": _ipv4_interface,
    "ipv4-network": IPv4Network,
    "ipv4-route-destination": _route_destination,
    "port-range": _port_range,
}
for _name, _parse in _PARSERS.items():
    FORMATS.checks(_name, raises=())(_parses(_parse))


@cache
def schema() -> dict:
    """The published JSON schema of topology files."""
    return json.loads(SCHEMA_PATH.read_text())


def find(name_or_path: str | Path) -> Path:
    """A topology by name (topologies/<name>.yaml) or by path."""
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml") or path.exists():
        return path
    candidate = TOPOLOGY_DIR / f"{name_or_path}.yaml"
    if not candidate.exists():
        known = ", ".join(sorted(p.stem for p in TOPOLOGY_DIR.glob("*.yaml")))
        raise TopologyError([f"{name_or_path}: no such topology (known: {known})"])
    return candidate


def available() -> list[str]:
    return sorted(p.stem for p in TOPOLOGY_DIR.glob("*.yaml"))


def load(name_or_path: str | Path, overrides: dict | None = None) -> Topology:
    """Load, validate and build a topology, or raise TopologyError naming file, line and field.

    `overrides` is merged into the file's data before validation (mappings merge, other values replace)."""
    path = find(name_or_path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise TopologyError([f"{path}: {exc.strerror}"]) from None
    return loads(text, path, overrides)


def _merge(data: Any, overrides: Any) -> Any:
    """JSON merge patch (RFC 7386): mappings merge, None removes the key, other values replace.

    >>> _merge({"a": {"ipsecd": "x", "role": "host"}}, {"a": {"ipsecd": None}})
    {'a': {'role': 'host'}}
    """
    if isinstance(data, dict) and isinstance(overrides, dict):
        merged = {**data, **{k: _merge(data.get(k), v) for k, v in overrides.items()}}
        return {k: v for k, v in merged.items() if not (k in overrides and overrides[k] is None)}
    return overrides


def loads(text: str, path: Path | str = "<string>", overrides: dict | None = None) -> Topology:
    path = Path(path)
    source = yaml_source.parse(text, path, TopologyError)
    data = _merge(source.data, overrides or {})
    problems = yaml_source.schema_problems(source, data, schema(), FORMATS, FORMAT_NAMES)
    if problems:
        raise TopologyError(problems)
    topology = _build(data, path)
    errors = topology.semantic_errors() + [
        ModelError(("nodes", node.name, "ipsecd"), problem)
        for node in topology.nodes.values()
        if node.ipsecd is not None and (problem := _service_file_problem(node.image, "ipsecd", node.ipsecd))
    ]
    problems = yaml_source.in_line_order([source.locate(e.field, e.message) for e in errors])
    if problems:
        raise TopologyError(problems)
    return topology


def _service_file_problem(image: str, service: str, path: Path) -> str | None:
    """Why a node's file or folder for a service of its image cannot be used, or None. A folder (config
    plus what it refers to: policies, certificates) must hold the file the image's service reads."""
    if not path.is_dir():
        return None if path.is_file() else f"{path} does not exist"
    declared = services.load(image).services.get(service)
    if declared is None or declared.file is None or (path / Path(declared.file).name).is_file():
        return None
    return f"folder {path} has no {Path(declared.file).name} (images/{image}/image.yaml: {service} reads " \
        f"{declared.file})"


def _build(data: dict, path: Path) -> Topology:
    segments = {
        name: Segment(
            name, IPv4Network(s["subnet"]) if s and "subnet" in s else None, (s or {}).get("description", "")
        )
        for name, s in data["segments"].items()
    }
    nodes = {}
    for name, n in data["nodes"].items():
        interfaces = {
            ifname: Interface(
                ifname,
                i["segment"],
                IPv4Interface(i["address"]) if "address" in i else None,
                i.get("mac"),
                i.get("mtu"),
            )
            for ifname, i in n["interfaces"].items()
        }
        routes = [Route(_route_destination(r["to"]), IPv4Address(r["via"])) for r in n.get("routes", [])]
        nat = None
        if "nat" in n:
            nat_data = n["nat"]
            ports = _port_range(nat_data["ports"]) if "ports" in nat_data else None
            nat = Nat(nat_data["outside"], ports, nat_data.get("random", False))
        ipsecd = (path.parent / n["ipsecd"]).resolve() if "ipsecd" in n else None
        nodes[name] = NodeSpec(
            name,
            n.get("role", "host"),
            n.get("image", "node"),
            interfaces,
            routes,
            {k: str(v) for k, v in n.get("sysctls", {}).items()},
            ipsecd,
            nat,
            list(n.get("drop", [])),
            Join(n["join"].get("ou")) if "join" in n else None,
        )
    return Topology(
        data["name"],
        nodes,
        segments,
        data.get("description", ""),
        data.get("runnable", True),
        data.get("reason", ""),
        path,
        Domain(data["domain"]["realm"].upper(), data["domain"]["controller"]) if "domain" in data else None,
    )
