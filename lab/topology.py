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

from ipsecd.yaml_lines import did_you_mean
from lab import images, services, yaml_source
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
    if not problems:
        problems = _parameter_problems(source, data, (overrides or {}).get("parameters") or {})
    if problems:
        raise TopologyError(problems)
    expanded, template_of = _expand(data)
    topology = _build(expanded, path)
    errors = (
        topology.semantic_errors()
        + _expansion_errors(data, expanded, template_of)
        + [
            ModelError(("nodes", node.name, "ipsecd"), problem)
            for node in topology.nodes.values()
            if node.ipsecd is not None
            and (problem := _service_file_problem(node.image, "ipsecd", node.ipsecd))
        ]
        + [
            ModelError(("nodes", node.name, "image"), problem)
            for node in topology.nodes.values()
            if topology.runnable and (problem := _image_problem(node.image))
        ]
    )
    problems = yaml_source.in_line_order(_located(source, errors, template_of))
    if problems:
        raise TopologyError(problems)
    return topology


def _parameter_problems(source: yaml_source.YamlSource, data: dict, given: dict) -> list[str]:
    """Counts naming no parameter, and parameters given (`--param`) that the file does not declare."""
    declared = source.data.get("parameters") or {}
    known = ", ".join(declared) or "none"
    problems = [
        source.locate(("nodes", name, "count"), f"{node['count']!r} is not a parameter (parameters: {known})")
        for name, node in data["nodes"].items()
        if isinstance(node.get("count"), str) and node["count"] not in declared
    ]
    return problems + [
        f"{source.path}: parameters.{name}: given, but the topology has no such parameter "
        f"(parameters: {known})"
        for name in given
        if name not in declared
    ]


def _expand(data: dict) -> tuple[dict, dict[str, str]]:
    """Nodes with `count` replaced by their copies <name>-1 .. <name>-N, each copy's addresses the first
    copy's plus (index - 1); returns the data and {copy: the node it was made from}."""
    parameters = data.get("parameters") or {}
    nodes: dict[str, dict] = {}
    template_of: dict[str, str] = {}
    for name, node in data["nodes"].items():
        if "count" not in node:
            nodes[name] = node
            continue
        count = node["count"]
        template = {key: value for key, value in node.items() if key != "count"}
        for index in range(1, (parameters[count] if isinstance(count, str) else count) + 1):
            copy = f"{name}-{index}"
            template_of[copy] = name
            interfaces = {
                ifname: {**iface, "address": _shifted(iface["address"], index - 1)}
                if "address" in iface
                else iface
                for ifname, iface in node["interfaces"].items()
            }
            if copy not in data["nodes"]:  # else a clash, reported by _expansion_errors
                nodes[copy] = {**template, "interfaces": interfaces}
    return {**data, "nodes": nodes}, template_of


def _shifted(address: str, offset: int) -> str:
    """`address` (a.b.c.d/len) moved up by `offset` addresses, kept as it is past 255.255.255.255 (the
    subnet check then names the node)."""
    first = IPv4Interface(address)
    if int(first.ip) + offset > int(IPv4Address("255.255.255.255")):
        return address
    return f"{first.ip + offset}/{first.network.prefixlen}"


def _expansion_errors(given: dict, expanded: dict, template_of: dict[str, str]) -> list[ModelError]:
    """What copying a counted node can break: names too long or taken, one MAC for every copy."""
    errors = []
    for copy, template in template_of.items():
        where = ("nodes", copy)
        if copy in given["nodes"]:
            errors.append(ModelError(where, f"a node of the file has the name of this copy of {template}"))
            continue
        if len(copy) > 31:
            errors.append(ModelError(where, f"{copy!r} (a copy of {template}) is longer than 31 characters"))
        errors += [
            ModelError(
                (*where, "interfaces", ifname, "mac"),
                "a counted node cannot give a MAC (its copies would share it)",
            )
            for ifname, iface in expanded["nodes"][copy]["interfaces"].items()
            if "mac" in iface
        ]
    return errors


def _located(
    source: yaml_source.YamlSource, errors: list[ModelError], template_of: dict[str, str]
) -> list[str]:
    """Each error at its line; an error of a copied node at the line of the node it was copied from,
    naming the copy, and only the first copy's for each field (not one line per copy)."""
    located: dict[tuple, str] = {}
    for error in errors:
        field, message = error.field, error.message
        if len(field) > 1 and field[0] == "nodes" and field[1] in template_of:
            field, message = ("nodes", template_of[field[1]], *field[2:]), f"{field[1]}: {message}"
        located.setdefault((field, message if field == error.field else ""), source.locate(field, message))
    return list(located.values())


def _image_problem(kind: str) -> str | None:
    """Why a node's image kind cannot be built (no images/<kind>/Dockerfile), or None: found by `lab
    validate`, not when `lab up` starts building."""
    if (images.IMAGES_DIR / kind / "Dockerfile").is_file():
        return None
    known = sorted(p.parent.name for p in images.IMAGES_DIR.glob("*/Dockerfile"))
    return f"no image kind {kind!r}{did_you_mean(kind, known)} (images/: {', '.join(known)})"


def _service_file_problem(image: str, service: str, path: Path) -> str | None:
    """Why a node's file or folder for a service of its image cannot be used, or None. A folder (config
    plus what it refers to: policies, certificates) must hold the file the image's service reads."""
    if not path.is_dir():
        return None if path.is_file() else f"{path} does not exist"
    declared = services.load(image).services.get(service)
    if declared is None or declared.file is None or (path / Path(declared.file).name).is_file():
        return None
    return (
        f"folder {path} has no {Path(declared.file).name} (images/{image}/image.yaml: {service} reads "
        f"{declared.file})"
    )


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
