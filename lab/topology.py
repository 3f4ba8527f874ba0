"""Topology files: YAML, validated against lab/topology.schema.json, turned into a lab.model.Topology.

Every error names the file, the line and the field:

    topologies/x.yaml:12: nodes.host-a.interfaces.eth1.address: '10.0.0.300/24' is not an IPv4 interface
    address (a.b.c.d/len)
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator
from functools import cache
from ipaddress import IPv4Address, IPv4Interface, IPv4Network, ip_address, ip_interface, ip_network
from pathlib import Path
from typing import Any

import jsonschema
import yaml

from lab.model import FieldPath, Interface, ModelError, Nat, Node, Route, Segment, Topology

SCHEMA_PATH = Path(__file__).with_name("topology.schema.json")
TOPOLOGY_DIR = Path(os.environ.get("LAB_TOPOLOGIES", Path(__file__).resolve().parent.parent / "topologies"))

FORMAT_NAMES = {
    "ipv4": "an IPv4 address",
    "ipv4-interface": "an IPv4 interface address (a.b.c.d/len)",
    "ipv4-network": "an IPv4 network (a.b.c.d/len, host bits zero)",
    "ipv4-route-destination": "an IPv4 network or 'default'",
    "port-range": "a port range lo-hi (1-65535)",
}


class TopologyError(ValueError):
    """A topology file was refused; `problems` holds one 'file:line: field: message' string per error."""

    def __init__(self, problems: list[str]):
        self.problems = problems
        super().__init__("\n".join(problems))


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
for _name, _parse in {
    "ipv4": IPv4Address,
    "ipv4-interface": _ipv4_interface,
    "ipv4-network": IPv4Network,
    "ipv4-route-destination": _route_destination,
    "port-range": _port_range,
}.items():
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
    if isinstance(data, dict) and isinstance(overrides, dict):
        return {**data, **{k: _merge(data.get(k), v) for k, v in overrides.items()}}
    return overrides


def loads(text: str, path: Path | str = "<string>", overrides: dict | None = None) -> Topology:
    path = Path(path)
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = mark.line + 1 if mark else 1
        raise TopologyError([f"{path}:{line}: not valid YAML: {getattr(exc, 'problem', exc)}"]) from None
    if root is None:
        raise TopologyError([f"{path}:1: the file is empty"])
    lines: dict[FieldPath, int] = {}
    duplicates = list(_index_lines(root, (), lines))
    if duplicates:
        raise TopologyError([f"{path}:{lines[d]}: {_dotted(d)}: duplicate key" for d in duplicates])
    data = _merge(yaml.SafeLoader(text).get_single_data(), overrides or {})

    def located(field: FieldPath, message: str) -> str:
        line = next((lines[field[:n]] for n in range(len(field), -1, -1) if field[:n] in lines), 1)
        return f"{path}:{line}: {_dotted(field) or '(top level)'}: {message}"

    validator = jsonschema.Draft202012Validator(schema(), format_checker=FORMATS)
    problems = sorted((located(*_describe(e)) for e in validator.iter_errors(data)), key=_line_order)
    if problems:
        raise TopologyError(problems)
    topology = _build(data, path)
    errors = topology.semantic_errors() + [
        ModelError(("nodes", node.name, "ipsecd"), f"{node.ipsecd} does not exist")
        for node in topology.nodes.values()
        if node.ipsecd is not None and not node.ipsecd.is_file()
    ]
    problems = sorted((located(e.field, e.message) for e in errors), key=_line_order)
    if problems:
        raise TopologyError(problems)
    return topology


def _line_order(problem: str) -> int:
    return int(problem.split(":")[1])


def _dotted(field: FieldPath) -> str:
    return ".".join(f"[{p}]" if isinstance(p, int) else p for p in field).replace(".[", "[")


def _index_lines(node: yaml.Node, here: FieldPath, lines: dict[FieldPath, int]) -> Iterator[FieldPath]:
    """Record the line of every key and item; yield the paths of duplicate keys."""
    lines.setdefault(here, node.start_mark.line + 1)
    if isinstance(node, yaml.MappingNode):
        seen = set()
        for key, value in node.value:
            path = (*here, key.value)
            if key.value in seen:
                lines[path] = key.start_mark.line + 1
                yield path
            seen.add(key.value)
            lines[path] = key.start_mark.line + 1
            yield from _index_lines(value, path, lines)
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            yield from _index_lines(item, (*here, index), lines)


def _describe(error: jsonschema.ValidationError) -> tuple[FieldPath, str]:
    """A schema error as (field, message), with messages written for people, not for schema authors."""
    field = tuple(error.absolute_path)
    if error.validator == "format":
        return (
            field,
            f"{error.instance!r} is not {FORMAT_NAMES.get(error.validator_value, error.validator_value)}",
        )
    if error.validator == "additionalProperties":
        extra = sorted(set(error.instance) - set(error.schema.get("properties", {})))
        allowed = ", ".join(error.schema.get("properties", {}))
        return (*field, extra[0]), f"unknown field {extra[0]!r} (allowed: {allowed})"
    if error.validator == "required":
        return field, error.message.replace("is a required property", "is required")
    if error.validator == "enum":
        return field, f"{error.instance!r} is not one of {', '.join(map(str, error.validator_value))}"
    if error.validator == "propertyNames" or (
        error.validator == "pattern" and list(error.absolute_schema_path)[-2:-1] == ["propertyNames"]
    ):
        return (*field, error.instance), f"{error.instance!r} is not a valid name ({error.message})"
    if error.validator == "pattern":
        return field, f"{error.instance!r} is not valid here ({error.message})"
    return field, error.message


def _build(data: dict, path: Path) -> Topology:
    segments = {
        name: Segment(
            name, ip_network(s["subnet"]) if s and "subnet" in s else None, (s or {}).get("description", "")
        )
        for name, s in data["segments"].items()
    }
    nodes = {}
    for name, n in data["nodes"].items():
        interfaces = {
            ifname: Interface(
                ifname,
                i["segment"],
                ip_interface(i["address"]) if "address" in i else None,
                i.get("mac"),
                i.get("mtu"),
            )
            for ifname, i in n["interfaces"].items()
        }
        routes = [Route(_route_destination(r["to"]), ip_address(r["via"])) for r in n.get("routes", [])]
        nat = None
        if "nat" in n:
            nat_data = n["nat"]
            ports = _port_range(nat_data["ports"]) if "ports" in nat_data else None
            nat = Nat(nat_data["outside"], ports, nat_data.get("random", False))
        ipsecd = (path.parent / n["ipsecd"]).resolve() if "ipsecd" in n else None
        nodes[name] = Node(
            name,
            n.get("role", "host"),
            n.get("image", "node"),
            interfaces,
            routes,
            {k: str(v) for k, v in n.get("sysctls", {}).items()},
            ipsecd,
            nat,
            list(n.get("drop", [])),
        )
    return Topology(
        data["name"],
        nodes,
        segments,
        data.get("description", ""),
        data.get("runnable", True),
        data.get("reason", ""),
        path,
    )
