"""The policy file: YAML that people read and write, loaded with file and line in every error.

One file holds one policy (format in docs/policy.md). Loading walks PyYAML's node tree, so each value
keeps its line; then ``validate`` runs and its problems get the line of the field they name:

>>> loads("name: p\\nrules:\\n - name: r\\n"
...       "   filter_list: {name: l, filters: [{source: my ip, destination: any}]}\\n"
...       "   filter_action: {name: permit, action: permit}", "p.yaml")
Traceback (most recent call last):
...
ipsecd.policy.validate.PolicyError: p.yaml:4: rules[0].filter_list.filters[0].source: \
'my ip' is not an address, subnet, 'me', 'any' or DNS name

Parts without a ``guid`` get one derived from the policy's GUID and their place in the file, so loading the
same file twice gives the same identities; YAML anchors (&name / *name) share one filter list or filter
action between rules, as the directory shares one object.
"""

from __future__ import annotations

import datetime
import os
import re
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import yaml

from ipsecd import yaml_lines
from ipsecd.driver import spd
from ipsecd.policy import model
from ipsecd.policy.validate import PolicyError, Problem, validate

T = TypeVar("T")
_NAMESPACE = uuid.UUID("5b0d6f2e-1c7a-4f4e-9a53-6c1c2a1e9f00")  # ipsec-lab policy files
_DURATION = re.compile(r"(\d+)\s*(s|min|h)")
_UNITS = {"s": 1, "min": 60, "h": 3600}
_LAST_STAMP = 253402300799  # 9999-12-31T23:59:59Z
#: The tags a scalar may carry: YAML's core schema as the safe loader resolves it (no !!python/...).
_SCALAR_TAGS = frozenset(f"tag:yaml.org,2002:{name}" for name in
                         ("str", "int", "float", "bool", "null", "timestamp", "binary"))
_BAD_SCALAR = (yaml.YAMLError, ValueError, TypeError, KeyError, AttributeError, ArithmeticError)


def load(path: str | os.PathLike[str]) -> model.Policy:
    """Read and validate one policy file; PolicyError names the file, line and field of each problem."""
    p = Path(path)
    try:
        data = p.read_bytes()
        stamp = int(p.stat().st_mtime)
    except OSError as e:
        raise PolicyError([Problem("", f"cannot read: {e.strerror}", str(p))]) from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        line, line_start = data.count(b"\n", 0, e.start) + 1, data.rfind(b"\n", 0, e.start) + 1
        where = f"{p}:{line}"
        raise PolicyError([Problem("", f"not UTF-8 text: byte {data[e.start]:#04x} at column "
                                       f"{e.start - line_start + 1} ({e.reason})", where)]) from None
    return loads(text, str(p), default_stamp=stamp)


def loads(text: str, source: str = "<policy>", default_stamp: int = 0) -> model.Policy:
    """Read and validate a policy; PolicyError lists every problem of the file, in the order of its lines."""
    try:
        root = yaml_lines.compose(text, source)
    except yaml_lines.YamlSyntaxError as e:
        raise PolicyError([Problem("", f"not valid YAML: {e.message}", e.where)]) from None
    if root is None:
        raise PolicyError([Problem("", "the file is empty", source)])
    reader = _PolicyReader(source)
    policy = reader.policy(root, default_stamp)
    problems = list(reader.problems)
    try:
        validate(policy)
    except PolicyError as e:
        problems += [Problem(p.path, p.message, reader.where(p.path)) for p in e.problems
                     if not reader.stood_in(p.path)]
    if problems:
        raise PolicyError(sorted(problems, key=_line))
    return policy


def _line(problem: Problem) -> int:
    _, _, line = problem.source.rpartition(":")
    return int(line) if line.isdigit() else 0


def dumps(policy: model.Policy, hide_keys: bool = False) -> str:
    """The policy as YAML, every part with its GUID and change stamp (what export writes).

    hide_keys writes pre-shared keys as '********', for showing a policy rather than saving it.
    """
    return yaml.dump(_Writer(hide_keys).policy(policy), Dumper=_Dumper, sort_keys=False, width=110,
                     allow_unicode=True)


def save(policy: model.Policy, path: str | os.PathLike[str]) -> None:
    write_atomically(Path(path), dumps(policy))


def write_atomically(path: Path, text: str) -> None:
    """Write to a temporary file and rename it: a reader (the agent polling) never sees half a file.

    The file is readable by its owner only: policies may hold pre-shared keys.
    """
    # mkstemp's way without tempfile, which brings shutil, bz2 and lzma (0.6 MB) into every ipsecd
    tmp = path.with_name(f".{path.name}.{os.urandom(6).hex()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def parse_duration(value: object) -> int:
    """'180min', '480min', '5s', '8h' -> seconds. A bare number is refused: the unit must be said."""
    m = _DURATION.fullmatch(str(value).strip())
    if not m:
        raise ValueError(f"{value!r} is not a duration such as 90s, 180min or 8h")
    return int(m.group(1)) * _UNITS[m.group(2)]


def format_duration(seconds: int) -> str:
    return f"{seconds // 60}min" if seconds % 60 == 0 else f"{seconds}s"


def parse_stamp(value: object) -> int:
    """A change stamp: ISO 8601 UTC time ('2026-11-22T18:50:59Z') or Unix seconds -> Unix seconds."""
    if isinstance(value, bool):
        raise ValueError(f"{value!r} is not a time")
    if isinstance(value, int):
        return _in_range(value, value)
    if isinstance(value, str):
        try:
            value = datetime.datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            raise ValueError(f"{value!r} is not a time such as 2026-11-22T18:50:59Z") from None
    if isinstance(value, datetime.datetime):
        if value.tzinfo is None:
            value = value.replace(tzinfo=datetime.UTC)
        return _in_range(int(value.timestamp()), value)
    raise ValueError(f"{value!r} is not a time such as 2026-11-22T18:50:59Z")


def _in_range(stamp: int, value: object) -> int:
    """Stamps are shown as times (format_stamp): one past year 9999 raised OverflowError in the agent."""
    if not 0 <= stamp <= _LAST_STAMP:
        raise ValueError(f"{value!r} is not a time between 1970 and 9999")
    return stamp


def format_stamp(stamp: int) -> str:
    return datetime.datetime.fromtimestamp(stamp, datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class _PolicyReader:
    """Builds model objects from YAML nodes, remembering the line of every field it reads.

    It reads on past a bad value (a stand-in takes its place) and keeps every problem, so one run names
    them all; ``stood_in`` says where stand-ins are, whose checks across fields would only mislead.
    """

    def __init__(self, source: str) -> None:
        self.source = source
        self.lines: dict[str, int] = {}
        self.problems: list[Problem] = []
        self._stand_ins: list[str] = []  # paths of parts built with a stand-in value
        self._shared: dict[int, object] = {}  # node id -> object, for anchored (shared) parts
        self._constructor = yaml.constructor.SafeConstructor()
        self._policy_guid = _NAMESPACE
        self._stamp = 0

    def where(self, path: str) -> str:
        """'file:line' of the field at path, or of its nearest enclosing field."""
        line = yaml_lines.enclosing_line(self.lines, path)
        return f"{self.source}:{line}" if line else self.source

    def problem(self, node: yaml.Node, path: str, message: str) -> None:
        self.problems.append(Problem(path, message, f"{self.source}:{node.start_mark.line + 1}"))

    def stand_in(self, path: str, spoils: str | None = None) -> None:
        """A value at `path` could not be read: the part holding it (`spoils`: a larger one) is not what the
        file says, so the checks of that part's own fields would only mislead (those of its list items,
        such as one security method's lifetime, still hold)."""
        whole = path.endswith("]") or "." not in path
        self._stand_ins.append(spoils if spoils is not None else path if whole else path.rsplit(".", 1)[0])

    def stood_in(self, path: str) -> bool:
        """A check at `path` looked at a stand-in: a field of a part that could not be read, or a part that
        holds one."""
        return any(_within(s, path) or (_within(path, s) and "[" not in path[len(s):])
                   for s in self._stand_ins)

    # --- generic readers

    def fields(self, node: yaml.Node, path: str, known: tuple[str, ...],
               required: tuple[str, ...] = ()) -> dict[str, yaml.Node]:
        if not isinstance(node, yaml.MappingNode):
            self.problem(node, path, "must be a mapping")
            self._stand_ins.append(path)
            return {}
        out: dict[str, yaml.Node] = {}
        for key, value in node.value:
            if not isinstance(key, yaml.ScalarNode):  # str() of an alias tree is exponential: a bomb
                self.problem(key, path, "a field name must be a single word, not a list or mapping")
                continue
            name = str(key.value)
            if name not in known:
                self.problem(key, _join(path, name), f"unknown field{yaml_lines.did_you_mean(name, known)}; "
                                                     f"expected one of: {', '.join(known)}")
            elif name in out:
                self.problem(key, _join(path, name), "given twice")
            else:
                out[name] = value
                self.lines[_join(path, name)] = key.start_mark.line + 1
        for name in required:
            if name not in out:
                self.problem(node, _join(path, name), "missing field")
                self._stand_ins.append(path or name)
        return out

    def items(self, node: yaml.Node, path: str) -> list[tuple[str, yaml.Node]]:
        if not isinstance(node, yaml.SequenceNode):
            self.problem(node, path, "must be a list")
            self._stand_ins.append(path)
            return []
        out = []
        for i, item in enumerate(node.value):
            self.lines[f"{path}[{i}]"] = item.start_mark.line + 1
            out.append((f"{path}[{i}]", item))
        return out

    def value(self, node: yaml.Node, path: str, convert: Callable[[Any], T], stand_in: T,
              spoils: str | None = None) -> T:
        """The converted value, or `stand_in` after noting the problem."""
        if not isinstance(node, yaml.ScalarNode):
            self.problem(node, path, "must be a single value")
        elif node.tag not in _SCALAR_TAGS:
            self.problem(node, path, f"the tag {node.tag} is not allowed (a policy file is plain YAML data)")
        else:
            try:
                value = self._constructor.construct_object(node, deep=True)
            except _BAD_SCALAR as e:  # PyYAML's scalar constructors fail on bad text in several ways
                self.problem(node, path,
                             f"{node.value[:40]!r} is not a valid {node.tag.rsplit(':', 1)[-1]} ({e})")
            else:
                try:
                    return convert(value)
                except (ValueError, TypeError) as e:
                    self.problem(node, path, str(e))
        self.stand_in(path, spoils)
        return stand_in

    def opt(self, f: dict[str, yaml.Node], key: str, path: str, convert: Callable[[Any], T], default: T) -> T:
        """An optional field, or a required one whose absence `fields` reported (`default` stands in)."""
        return self.value(f[key], _join(path, key), convert, default) if key in f else default

    def identity(self, f: dict[str, yaml.Node], path: str) -> dict[str, Any]:
        """guid and when_changed of a part; a missing GUID is derived from the policy's and the path."""
        return {
            "guid": self.opt(f, "guid", path, _guid, uuid.uuid5(self._policy_guid, path)),
            "when_changed": self.opt(f, "when_changed", path, parse_stamp, self._stamp),
        }

    def shared(self, build: Callable[[yaml.Node, str], T], node: yaml.Node, rule_path: str) -> T:
        """A part written once under an anchor and used by several rules is one object, one GUID."""
        if id(node) not in self._shared:
            self._shared[id(node)] = build(node, rule_path)
        return self._shared[id(node)]  # type: ignore[return-value]

    # --- the policy's parts

    def policy(self, node: yaml.Node, default_stamp: int) -> model.Policy:
        f = self.fields(node, "", ("name", "guid", "when_changed", "description", "polling_interval",
                                   "key_exchange", "rules", "default_response_rule"), ("name",))
        name = self.opt(f, "name", "", str, "")
        self._policy_guid = self.opt(f, "guid", "", _guid, uuid.uuid5(_NAMESPACE, name))
        self._stamp = self.opt(f, "when_changed", "", parse_stamp, default_stamp)
        rules = tuple(self.rule(n, p) for p, n in self.items(f["rules"], "rules")) if "rules" in f else ()
        return model.Policy(
            name=name,
            rules=rules,
            default_response=(self.default_response(f["default_response_rule"])
                              if "default_response_rule" in f else None),
            key_exchange=(self.key_exchange(f["key_exchange"]) if "key_exchange" in f
                          else model.KeyExchange(guid=uuid.uuid5(self._policy_guid, "key_exchange"),
                                                 when_changed=self._stamp)),
            polling_interval=self.opt(f, "polling_interval", "", parse_duration,
                                      model.DEFAULT_POLLING_INTERVAL),
            guid=self._policy_guid,
            when_changed=self._stamp,
            description=self.opt(f, "description", "", str, ""),
        )

    def key_exchange(self, node: yaml.Node) -> model.KeyExchange:
        path = "key_exchange"
        f = self.fields(node, path, ("guid", "when_changed", "methods", "lifetime", "sessions",
                                     "master_key_pfs"))
        methods = model.DEFAULT_MAIN_MODE_METHODS
        if "methods" in f:
            methods = tuple(self.value(n, p, model.MainModeMethod.parse, model.MainModeMethod())
                            for p, n in self.items(f["methods"], path + ".methods"))
        return model.KeyExchange(
            methods=methods,
            lifetime_seconds=self.opt(f, "lifetime", path, parse_duration, model.DEFAULT_MASTER_KEY_LIFETIME),
            sessions=self.opt(f, "sessions", path, _integer, 0),
            master_key_pfs=self.opt(f, "master_key_pfs", path, _boolean, False),
            **self.identity(f, path),
        )

    def rule(self, node: yaml.Node, path: str) -> model.Rule:
        f = self.fields(node, path, ("name", "guid", "when_changed", "description", "active", "filter_list",
                                     "filter_action", "authentication", "tunnel", "connection_type"),
                        ("name", "filter_list", "filter_action"))
        return model.Rule(
            name=self.opt(f, "name", path, str, ""),
            filter_list=(self.shared(self.filter_list, f["filter_list"], path) if "filter_list" in f
                         else model.FilterList("", ())),
            filter_action=(self.shared(self.filter_action, f["filter_action"], path) if "filter_action" in f
                           else model.FilterAction("", spd.Action.PERMIT)),
            authentication=self.authentication(f, path),
            tunnel=self.opt(f, "tunnel", path, _tunnel, None),
            connection_type=self.opt(f, "connection_type", path, _connection_type, model.ConnectionType.ALL),
            active=self.opt(f, "active", path, _boolean, True),
            description=self.opt(f, "description", path, str, ""),
            **self.identity(f, path),
        )

    def filter_list(self, node: yaml.Node, rule_path: str) -> model.FilterList:
        path = rule_path + ".filter_list"
        f = self.fields(node, path, ("name", "guid", "when_changed", "description", "filters"),
                        ("name", "filters"))
        return model.FilterList(
            name=self.opt(f, "name", path, str, ""),
            filters=tuple(self.ip_filter(n, p, i) for i, (p, n) in
                          enumerate(self.items(f["filters"], path + ".filters") if "filters" in f else [])),
            description=self.opt(f, "description", path, str, ""),
            **self.identity(f, path),
        )

    def ip_filter(self, node: yaml.Node, path: str, index: int) -> model.IPFilter:
        f = self.fields(node, path, ("name", "description", "source", "destination", "protocol",
                                     "source_port", "destination_port", "mirrored"),
                        ("source", "destination"))
        return model.IPFilter(
            name=self.opt(f, "name", path, str, str(index + 1)),
            source=self.opt(f, "source", path, model.Endpoint.parse, model.ANY),
            destination=self.opt(f, "destination", path, model.Endpoint.parse, model.ANY),
            protocol=self.opt(f, "protocol", path, model.parse_protocol, None),
            source_port=self.opt(f, "source_port", path, model.parse_port, None),
            destination_port=self.opt(f, "destination_port", path, model.parse_port, None),
            mirrored=self.opt(f, "mirrored", path, _boolean, True),
            description=self.opt(f, "description", path, str, ""),
        )

    def filter_action(self, node: yaml.Node, rule_path: str) -> model.FilterAction:
        path = rule_path + ".filter_action"
        f = self.fields(node, path, ("name", "guid", "when_changed", "description", "action",
                                     "security_methods", "pfs", "accept_unsecured", "fallback_to_clear"),
                        ("name", "action"))
        return model.FilterAction(
            name=self.opt(f, "name", path, str, ""),
            # a rule's checks depend on its action (tunnel, authentication): a bad one spoils the rule's
            action=(self.value(f["action"], path + ".action", _action, spd.Action.PERMIT, spoils=rule_path)
                    if "action" in f else spd.Action.PERMIT),
            security_methods=self.security_methods(f, path, ()),
            pfs=self.opt(f, "pfs", path, _boolean, False),
            accept_unsecured=self.opt(f, "accept_unsecured", path, _boolean, False),
            fallback_to_clear=self.opt(f, "fallback_to_clear", path, _boolean, False),
            description=self.opt(f, "description", path, str, ""),
            **self.identity(f, path),
        )

    def security_methods(self, f: dict[str, yaml.Node], path: str,
                         default: tuple[spd.SecurityMethod, ...]) -> tuple[spd.SecurityMethod, ...]:
        if "security_methods" not in f:
            return default
        return tuple(self.value(n, p, model.parse_security_method, spd.SecurityMethod())
                     for p, n in self.items(f["security_methods"], path + ".security_methods"))

    def authentication(self, f: dict[str, yaml.Node], path: str) -> tuple[model.AuthMethod, ...]:
        if "authentication" not in f:
            return ()
        items = self.items(f["authentication"], path + ".authentication")
        return tuple(self.auth_method(n, p) for p, n in items)

    def auth_method(self, node: yaml.Node, path: str) -> model.AuthMethod:
        how = "write kerberos, {psk: <key>} or {certificate: <CA name>}"
        if isinstance(node, yaml.ScalarNode):
            if node.value != "kerberos":
                self.problem(node, path, f"{node.value!r} is not an authentication method"
                                         f"{yaml_lines.did_you_mean(node.value, ['kerberos'])}; {how}")
                self.stand_in(path)
            return model.AuthMethod(model.AuthKind.KERBEROS)
        f = self.fields(node, path, ("psk", "certificate"))
        if len(f) != 1:
            if f or (isinstance(node, yaml.MappingNode) and not node.value):
                self.problem(node, path, how)
            self.stand_in(path)
            return model.AuthMethod(model.AuthKind.KERBEROS)
        if "psk" in f:
            return model.AuthMethod(model.AuthKind.PRESHARED_KEY, psk=self.opt(f, "psk", path, str, "-"))
        return model.AuthMethod(model.AuthKind.CERTIFICATE, ca=self.opt(f, "certificate", path, str, "-"))

    def default_response(self, node: yaml.Node) -> model.DefaultResponseRule:
        path = "default_response_rule"
        f = self.fields(node, path, ("guid", "when_changed", "active", "authentication", "security_methods"))
        return model.DefaultResponseRule(
            authentication=self.authentication(f, path),
            security_methods=self.security_methods(f, path, model.DEFAULT_RESPONSE_METHODS),
            active=self.opt(f, "active", path, _boolean, True),
            **self.identity(f, path),
        )


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def _guid(value: object) -> uuid.UUID:
    if not isinstance(value, str):  # uuid.UUID(123) raises AttributeError, not ValueError
        raise ValueError(f"{value!r} is not a GUID such as 1e4d1a3b-...")
    try:
        return uuid.UUID(value)
    except ValueError:
        raise ValueError(f"{value!r} is not a GUID") from None


def _within(path: str, part: str) -> bool:
    """`path` names `part` or a field inside it ('' is the whole policy)."""
    return not part or path == part or path.startswith((part + ".", part + "["))


def _boolean(value: object) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"{value!r} is not true or false")
    return value


def _integer(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{value!r} is not a whole number")
    return value


def _action(value: object) -> spd.Action:
    try:
        return spd.Action(str(value).lower())
    except ValueError:
        hint = yaml_lines.did_you_mean(str(value).lower(), [a.value for a in spd.Action])
        raise ValueError(f"{value!r} is not permit, block or negotiate{hint}") from None


def _connection_type(value: object) -> model.ConnectionType:
    try:
        return model.ConnectionType(str(value).lower())
    except ValueError:
        hint = yaml_lines.did_you_mean(str(value).lower(), [c.value for c in model.ConnectionType])
        raise ValueError(f"{value!r} is not all, lan or remote_access{hint}") from None


def _tunnel(value: object) -> model.IPv4Address | None:
    if value is None or str(value).lower() == "none":
        return None
    try:
        return model.IPv4Address(str(value))
    except ValueError:
        raise ValueError(f"{value!r} is not the IPv4 address of a tunnel endpoint (or none)") from None


class _Flow(dict):
    """A mapping written on one line: one filter, one authentication method."""


class _Dumper(yaml.SafeDumper):
    pass


_Dumper.add_representer(_Flow, lambda d, data: d.represent_mapping("tag:yaml.org,2002:map", data,
                                                                   flow_style=True))


class _Writer:
    """The inverse of _PolicyReader; a part shared by two rules is written once, then referenced (alias)."""

    def __init__(self, hide_keys: bool = False) -> None:
        self._written: dict[uuid.UUID, dict[str, Any]] = {}
        self.hide_keys = hide_keys

    @staticmethod
    def identity(part: Any) -> dict[str, Any]:
        return {"guid": str(part.guid), "when_changed": format_stamp(part.when_changed)}

    def once(self, part: Any, build: Callable[[], dict[str, Any]]) -> dict[str, Any]:
        if part.guid not in self._written:
            self._written[part.guid] = build()
        return self._written[part.guid]

    def policy(self, p: model.Policy) -> dict[str, Any]:
        out: dict[str, Any] = {"name": p.name, **self.identity(p)}
        if p.description:
            out["description"] = p.description
        kx = p.key_exchange
        out["polling_interval"] = format_duration(p.polling_interval)
        out["key_exchange"] = {
            **self.identity(kx), "methods": [str(m) for m in kx.methods],
            "lifetime": format_duration(kx.lifetime_seconds), "sessions": kx.sessions,
            "master_key_pfs": kx.master_key_pfs,
        }
        out["rules"] = [self.rule(r) for r in p.rules]
        if p.default_response:
            d = p.default_response
            out["default_response_rule"] = {
                **self.identity(d), "active": d.active,
                "authentication": [self.auth(a) for a in d.authentication],
                "security_methods": [model.format_security_method(m) for m in d.security_methods],
            }
        return out

    def rule(self, r: model.Rule) -> dict[str, Any]:
        out: dict[str, Any] = {"name": r.name, **self.identity(r)}
        if r.description:
            out["description"] = r.description
        out["active"] = r.active
        out["filter_list"] = self.once(r.filter_list, lambda: self.filter_list(r.filter_list))
        out["filter_action"] = self.once(r.filter_action, lambda: self.filter_action(r.filter_action))
        out["authentication"] = [self.auth(a) for a in r.authentication]
        out["tunnel"] = str(r.tunnel) if r.tunnel else "none"
        out["connection_type"] = r.connection_type.value
        return out

    def filter_list(self, fl: model.FilterList) -> dict[str, Any]:
        out: dict[str, Any] = {"name": fl.name, **self.identity(fl)}
        if fl.description:
            out["description"] = fl.description
        out["filters"] = [self.ip_filter(f) for f in fl.filters]
        return out

    @staticmethod
    def ip_filter(f: model.IPFilter) -> _Flow:
        out = _Flow(name=f.name, source=str(f.source), destination=str(f.destination),
                    protocol=model.protocol_name(f.protocol))
        if f.source_port:
            out["source_port"] = f.source_port
        if f.destination_port:
            out["destination_port"] = f.destination_port
        out["mirrored"] = f.mirrored
        if f.description:
            out["description"] = f.description
        return out

    def filter_action(self, a: model.FilterAction) -> dict[str, Any]:
        out: dict[str, Any] = {"name": a.name, **self.identity(a)}
        if a.description:
            out["description"] = a.description
        out["action"] = a.action.value
        if a.action is spd.Action.NEGOTIATE:
            out.update(accept_unsecured=a.accept_unsecured, fallback_to_clear=a.fallback_to_clear, pfs=a.pfs,
                       security_methods=[model.format_security_method(m) for m in a.security_methods])
        return out

    def auth(self, a: model.AuthMethod) -> str | _Flow:
        if a.kind is model.AuthKind.KERBEROS:
            return "kerberos"
        if a.kind is model.AuthKind.PRESHARED_KEY:
            return _Flow(psk="********" if self.hide_keys else a.psk)
        return _Flow(certificate=a.ca)
