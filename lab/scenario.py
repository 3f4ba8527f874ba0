"""Troubleshooting scenarios as data: scenarios/<name>/scenario.yaml, checked and run (`lab scenario run`).

A scenario folder holds README.md (the symptom as a user reports it, the cause, the documents' or KB article
it reproduces, the fix), scenario.yaml (schema lab/scenario.schema.json: topology and overrides, steps,
expectations) and one folder per node that runs ipsecd (its /etc/ipsecd, started by a `start` step through
lab.harness). Expectations are in the spirit of strongSwan's evaltest.dat: each names a node and something
it must show (a counter, an event, SAs) or a capture predicate, and prints PASS or FAIL.

>>> steps = "steps: [{stop: host-c}, {ping: {from: host-a, to: host-z}}]\\n"
>>> loads("title: t\\ntopology: intranet-pair\\n" + steps + "expect: [{sa: {node: host-a}}]\\n", "x.yaml")
Traceback (most recent call last):
...
lab.scenario.ScenarioError: x.yaml:4: expect[0].sa: 'table' is required
x.yaml:4: expect[0].sa: 'count' is required
"""

from __future__ import annotations

import json
import operator
import re
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import cache
from ipaddress import IPv4Address
from pathlib import Path
from typing import Any

from ipsecd.yaml_lines import did_you_mean
from lab import harness, keys, yaml_source
from lab import topology as topologies
from lab.backend import CommandError, LabError
from lab.capture import Capture, ip_packets, protocol, wait_until
from lab.model import FieldPath, Topology
from lab.running import Lab, Node
from lab.traffic import tcp_transfer, udp_send

SCHEMA_PATH = Path(__file__).with_name("scenario.schema.json")
SCENARIOS = harness.SCENARIOS
#: The lab tests, some of which use a scenarios/ folder without scenario.yaml (node configurations only).
LAB_TESTS = SCENARIOS.parent / "tests" / "lab"
NODE_FIELDS = ("node", "from")
OPS: dict[str, Callable[[Any, Any], bool]] = {
    "==": operator.eq, "!=": operator.ne, ">=": operator.ge,
    "<=": operator.le, ">": operator.gt, "<": operator.lt,
}
DEFAULT_WAIT = 10.0
#: The one counter that is not ipsecd's: what the node's lab firewall (`firewall` step) dropped.
FIREWALL_DROPPED = "firewall_dropped"


class ScenarioError(yaml_source.FileProblems):
    """A scenario.yaml was refused; `problems` holds one 'file:line: field: message' string per error."""


@dataclass
class Item:
    """One step or expectation: its kind (the key naming it), its body, where it is in the file."""

    kind: str
    body: Any
    where: str  # file:line, for messages
    note: str = ""

    def describe(self) -> str:
        return describe(self.kind, self.body)


@dataclass
class Scenario:
    name: str
    folder: Path
    title: str
    outcome: str
    topology: Topology
    steps: list[Item]
    expect: list[Item]
    segments: list[str]
    timer: bool = False

    @property
    def readme(self) -> str:
        path = self.folder / "README.md"
        return path.read_text() if path.is_file() else ""


# -- loading ------------------------------------------------------------------------------------------------
@cache
def _schema() -> dict:
    return json.loads(SCHEMA_PATH.read_text())


def available() -> list[str]:
    """The catalogue: every folder of scenarios/ with a scenario.yaml."""
    return sorted(p.parent.name for p in SCENARIOS.glob("*/scenario.yaml"))


def find(name_or_path: str | Path) -> Path:
    """scenarios/<name>/scenario.yaml, or a folder or file given by path."""
    path = Path(name_or_path)
    if path.is_dir():
        path = path / "scenario.yaml"
    if not path.is_file():
        path = SCENARIOS / str(name_or_path) / "scenario.yaml"
    if not path.is_file():
        raise ScenarioError([_not_found(str(name_or_path))])
    return path


def _not_found(name: str) -> str:
    """Why `name` is no scenario: a misspelt one (the closest named), or a scenarios/ folder of node configs
    that the lab tests use (no scenario.yaml), or nothing of the kind (the catalogue listed)."""
    if (SCENARIOS / name / "README.md").is_file():
        tests = [f"tests/lab/{t.name}" for t in sorted(LAB_TESTS.glob("test_*.py"))
                 if re.search(rf"\b{re.escape(name)}\b", t.read_text())]
        return (f"{name}: scenarios/{name}/ is not in the catalogue (no scenario.yaml): it holds node "
                f"configurations and a README for the lab tests ({', '.join(tests) or 'tests/lab'}: "
                "`python -m pytest FILE` runs one); `lab scenario list` shows the runnable scenarios")
    if hint := did_you_mean(name, available()):
        return f"{name}: no such scenario{hint}"
    return f"{name}: no such scenario (catalogue: {', '.join(available())})"


def load(name_or_path: str | Path) -> Scenario:
    path = find(name_or_path)
    return loads(path.read_text(), path)


def loads(text: str, path: Path | str) -> Scenario:
    """Check a scenario file; ScenarioError naming file, line and field for everything wrong in it."""
    path = Path(path)
    source = yaml_source.parse(text, path, ScenarioError)
    problems = yaml_source.schema_problems(source, source.data, _schema())
    if problems:
        raise ScenarioError(problems)
    data = source.data
    try:
        topology = topologies.load(data["topology"], data.get("overrides"))
    except topologies.TopologyError as exc:
        raise ScenarioError([source.locate(("topology",), p) for p in exc.problems]) from None
    checker = _Checker(source, topology, path.parent)
    steps = [checker.item("steps", i, raw) for i, raw in enumerate(data["steps"])]
    expect = [checker.item("expect", i, raw) for i, raw in enumerate(data["expect"])]
    segments = data.get("capture", list(topology.segments))
    for i, segment in enumerate(segments):
        checker.segment(("capture", i), segment)
    if checker.problems:
        raise ScenarioError(yaml_source.in_line_order(checker.problems))
    return Scenario(path.parent.name, path.parent, data["title"], data.get("outcome", "works"), topology,
                    steps, expect, segments, data.get("timer", False))


class _Checker:
    """What the schema cannot say: one action per item, nodes, segments, folders and addresses that exist."""

    def __init__(self, source: yaml_source.YamlSource, topology: Topology, folder: Path):
        self.source, self.topology, self.folder = source, topology, folder
        self.problems: list[str] = []

    def problem(self, field: FieldPath, message: str) -> None:
        self.problems.append(self.source.locate(field, message))

    def item(self, section: str, index: int, raw: dict) -> Item:
        here: FieldPath = (section, index)
        kinds = [k for k in raw if k != "note"]
        if len(kinds) != 1:
            self.problem(here, f"names {len(kinds)} actions ({', '.join(kinds) or 'none'}): one per item")
            return Item("", None, "")
        kind = kinds[0]
        body = raw[kind]
        here = (*here, kind)
        for name in _node_names(kind, body):
            self.node(here, name)
        if isinstance(body, dict):
            for key in ("to", "between"):
                for value in [body[key]] if isinstance(body.get(key), str) else body.get(key, []):
                    self.target((*here, key), value)
            if kind == "put" and not (self.folder / body["file"]).is_file():
                self.problem((*here, "file"), f"{self.folder / body['file']} does not exist")
            if "segment" in body:
                self.segment((*here, "segment"), body["segment"])
            if kind == "in_force" and not {"policy", "source"} & body.keys():
                self.problem(here, "names no `policy` nor `source` to expect")
            if kind == "start" and "predefined" not in body and not body.get("topology"):
                self.start_folder(here, body["node"], body.get("folder"))
            if kind == "start" and body.get("topology") and body["node"] in self.topology.nodes \
                    and self.topology.nodes[body["node"]].ipsecd is None:
                self.problem((*here, "topology"), f"the topology gives {body['node']} no ipsecd to start")
        elif kind == "start":
            for name in [body] if isinstance(body, str) else body:
                self.start_folder(here, name, None)
        line = self.source.locate(here, "").rsplit(":", 2)[0]
        note = raw.get("note") or (body.get("note", "") if isinstance(body, dict) else "")
        return Item(kind, body, line, note)

    def node(self, field: FieldPath, name: str) -> None:
        if name not in self.topology.nodes:
            nodes = ", ".join(self.topology.nodes)
            self.problem(field, f"no node {name!r} in {self.topology.name} ({nodes})")

    def segment(self, field: FieldPath, name: str) -> None:
        if name not in self.topology.segments:
            self.problem(field, f"no segment {name!r} in {self.topology.name} "
                                f"({', '.join(self.topology.segments)})")

    def target(self, field: FieldPath, value: str) -> None:
        name, _, ifname = value.partition(":")
        if name in self.topology.nodes:
            if ifname and ifname not in self.topology.nodes[name].interfaces:
                self.problem(field, f"node {name} has no interface {ifname!r}")
            return
        try:
            IPv4Address(value)
        except ValueError:
            self.problem(field, f"{value!r} is neither a node of {self.topology.name}, node:ifname, "
                                f"nor an IPv4 address")

    def start_folder(self, field: FieldPath, node: str, folder: str | None) -> None:
        if not (self.folder / (folder or node) / "ipsecd.yaml").is_file():
            self.problem(field, f"{self.folder / (folder or node) / 'ipsecd.yaml'} does not exist "
                                f"(a node's folder holds its /etc/ipsecd)")


def no_counter(name: str, counters: dict[str, int]) -> str:
    """Why a counter expectation cannot hold: the name is not among ipsecd's counters (a typo, the closest
    named; or a counter of a failure that has not happened: those appear with their first count).

    >>> no_counter("ike_auth_failures", {"ike_authentication_failures": 0, "bad_spi_packets": 0})
    "ipsecctl stats has no counter 'ike_auth_failures' (did you mean 'ike_authentication_failures'?); \
`ipsecctl stats --json` names them"
    """
    return (f"ipsecctl stats has no counter {name!r}{did_you_mean(name, [*counters, FIREWALL_DROPPED])}; "
            "`ipsecctl stats --json` names them")


def _node_names(kind: str, body: Any) -> list[str]:
    if kind in ("start", "stop", "kill", "restart", "refresh") and not isinstance(body, dict):
        return [body] if isinstance(body, str) else list(body)
    return [body[f] for f in NODE_FIELDS if isinstance(body, dict) and f in body]


def describe(kind: str, body: Any) -> str:
    """A step or expectation in words, for the PASS/FAIL lines and the report."""
    if not isinstance(body, dict):
        return f"{kind} {body if isinstance(body, str) else ', '.join(body)}"
    if kind == "start":
        how = f" with predefined {body['predefined']}" if "predefined" in body else ""
        how += " as the topology gives it" if body.get("topology") else ""
        return f"start {body['node']}{how}" + (f" ({len(body['edits'])} edits)" if "edits" in body else "")
    b = dict(body)
    if kind in ("ping", "tcp", "udp"):
        if kind == "ping":
            what = f"ping ×{b.get('count', 1)}" + (f" {b['size']} bytes" if "size" in b else "")
            what += " DF" if b.get("dont_fragment") else ""
        elif kind == "tcp":
            what = f"tcp/{b.get('port', 5001)} {b['marker']!r}×{b.get('repeat', 1)}"
        else:
            what = f"udp/{b['port']} {b['marker']!r}"
        failing = " (expected to fail)" if b.get("expect") == "fail" else ""
        return f"{what} {b['from']} → {b['to']}{failing}"
    if kind == "counter":
        return f"{b['node']}: counter {b['name']} {b['op']} {b['value']}"
    if kind == "event":
        return f"{b['node']}: {'no ' if b.get('absent') else ''}event {b['text']!r}" + (
            f" ({b['kind']})" if "kind" in b else "")
    if kind == "sa":
        where = "".join(f", {k}={v}" for k, v in b.get("where", {}).items())
        return f"{b['node']}: {b['table']} count {b.get('op', '==')} {b['count']}{where}"
    if kind == "in_force":
        policy = b.get("policy", "the policy")
        what = "no policy" if policy is None else f"policy {policy!r}" if "policy" in b else policy
        return f"{b['node']}: {what} in force" + (f", from the {b['source']}" if "source" in b else "")
    if kind == "directory":
        return f"directory (as Administrator, in {b['node']}): " + "; ".join(b["commands"])
    if kind == "capture":
        between = f" between {' and '.join(b['between'])}" if "between" in b else ""
        parts = [f"only {', '.join(b['only'])}" if "only" in b else "",
                 f"seen {', '.join(b['seen'])}" if "seen" in b else "",
                 f"never {', '.join(b['absent'])}" if "absent" in b else "",
                 (f"marker {b['marker']!r} {'in clear' if b.get('present') else 'never in clear'}"
                  if "marker" in b else ""),
                 f"decrypts to {b['decrypts']!r} with the exported keys" if "decrypts" in b else ""]
        return f"capture {b['segment']}{between}: " + "; ".join(p for p in parts if p)
    if kind == "wait":
        if "event" in b:
            what = f"event {b['event']!r}"
        elif "counter" in b:
            what = f"counter {b['counter']} {b.get('op', '>=')} {b.get('value', 1)}"
        else:
            what = f"{b.get('table', 'qmsa')} count {b.get('count', 1)}"
        return f"wait: {b['node']}: {what}"
    rest = ", ".join(f"{k}={v}" for k, v in b.items() if k not in ("node", "edits", "note"))
    edits = f" ({len(b['edits'])} edits)" if "edits" in b else ""
    return f"{kind} {b.get('node', '')} {rest}{edits}".strip()


# -- running ------------------------------------------------------------------------------------------------
@dataclass
class Check:
    """One PASS/FAIL line: an expectation, or a step whose outcome the scenario states."""

    what: str
    passed: bool
    detail: str = ""
    where: str = ""
    seconds: float = 0.0


@dataclass
class Outcome:
    """What a run found: the checks, the step log, and 0 (all pass), 1 (a product check failed) or 2 (the lab
    could not be set up)."""

    scenario: Scenario
    checks: list[Check] = field(default_factory=list)
    log: list[str] = field(default_factory=list)
    setup_error: str = ""
    seconds: float = 0.0

    @property
    def code(self) -> int:
        if self.setup_error:
            return 2
        return 0 if all(c.passed for c in self.checks) else 1


class Runner:
    """Runs one scenario on a lab that is up: steps, then expectations; gathers what the report shows."""

    def __init__(self, scenario: Scenario, lab: Lab, report: Path, echo: Callable[[str], None] = print):
        self.scenario, self.lab, self.report, self.echo = scenario, lab, report, echo
        self.outcome = Outcome(scenario)
        self.captures: dict[str, Capture] = {}
        self.counters_before: dict[str, dict[str, int]] = {}
        self.started = time.monotonic()

    # -- the run --
    def run(self) -> Outcome:
        for segment in self.scenario.segments:
            self.captures[segment] = self.lab.capture_segment(segment).start()
        for number, step in enumerate(self.scenario.steps, 1):
            self.note(f"step {number}: {step.describe()}" + (f"  # {step.note}" if step.note else ""))
            try:
                getattr(self, f"step_{step.kind}")(step.body, step)
            except (CommandError, AssertionError, TimeoutError, LabError, ValueError) as exc:
                self.check(f"step {number}: {step.describe()}", False, str(exc), step.where)
        for expectation in self.scenario.expect:
            if expectation.kind != "capture":
                self.expect(expectation)
        for capture in self.captures.values():
            capture.stop()  # which collects the key tables beside its pcap
        for expectation in self.scenario.expect:
            if expectation.kind == "capture":
                self.expect(expectation)
        return self.outcome

    def note(self, text: str) -> None:
        line = f"{time.monotonic() - self.started:6.1f}s  {text}"
        self.outcome.log.append(line)

    def check(self, what: str, passed: bool, detail: str = "", where: str = "") -> None:
        seconds = time.monotonic() - self.started
        self.outcome.checks.append(Check(what, passed, detail, where, seconds))
        verdict = "PASS" if passed else "FAIL"
        self.note(f"{verdict}: {what}" + (f" ({detail.splitlines()[0]})" if detail else ""))
        indented = "\n      " + detail.replace("\n", "\n      ") if detail and not passed else ""
        self.echo(f"{verdict}  {what}{indented}")

    def node(self, name: str) -> Node:
        return self.lab.node(name)

    def address(self, target: str) -> str:
        name, _, ifname = target.partition(":")
        if name in self.lab.nodes:
            return self.node(name).address(ifname or None)
        return target

    def gather_keys(self) -> None:
        """The key tables of every node running ipsecd, collected beside the pcaps (lab.keys) before anything
        could take them away (stop, kill, restart); a capture that stops collects them again."""
        keys.collect(self.lab, self.lab.results_dir)

    # -- steps --
    def step_start(self, body: Any, step: Item) -> None:
        """ipsecd in each named node (in parallel: a start waits seconds for the control socket)."""
        specs = [{"node": s} if isinstance(s, str) else s for s in ([body] if isinstance(body, (str, dict))
                                                                   else body)]
        if any(harness.running(self.node(spec["node"])) for spec in specs):
            self.gather_keys()  # a start over a running ipsecd takes its SAs away
        with ThreadPoolExecutor(max_workers=len(specs)) as pool:
            list(pool.map(self.start_one, specs))

    def start_one(self, spec: dict) -> None:
        node = self.node(spec["node"])
        if "predefined" in spec:
            harness.start_policy(node, harness.predefined_policy(spec["predefined"], spec.get("psk", "")))
        elif spec.get("topology"):
            harness.restart_ipsecd(node)
        else:
            folder = self.scenario.folder / spec.get("folder", node.name)
            files = harness.node_files(folder.parent, folder.name)
            for edit in spec.get("edits", []):
                files[edit["file"]] = harness.edit(files[edit["file"]], edit["old"], edit["new"])
            harness.start(node, "", files)
        refused = harness.events(node, "policy-refused")
        if refused:  # ipsecd runs on with no policy: every later check would fail for the scenario's fault
            raise AssertionError(f"{node.name}: the policy was refused at start: {refused[0]['text']}")
        self.counters_before.setdefault(node.name, harness.counters(node))

    def step_stop(self, body: Any, step: Item) -> None:
        self.gather_keys()
        for name in _node_names("stop", body):
            harness.stop(self.node(name))

    def step_kill(self, body: Any, step: Item) -> None:
        self.gather_keys()
        for name in _node_names("kill", body):
            harness.kill(self.node(name))

    def step_restart(self, body: Any, step: Item) -> None:
        self.gather_keys()
        for name in _node_names("restart", body):
            self.lab.restart(name)

    def step_refresh(self, body: Any, step: Item) -> None:
        for name in _node_names("refresh", body):
            result = self.node(name).exec(["ipsecctl", "refresh"], timeout=30)
            self.note(f"{name}: ipsecctl refresh: {(result.stdout + result.stderr).strip()[:300]}")

    def stated(self, body: dict, step: Item, worked: bool, detail: str) -> None:
        """A traffic or command step: PASS when it did what the scenario says (`expect`, default ok)."""
        wanted = body.get("expect", "ok") == "ok"
        outcome = "got through" if worked else "did not get through"
        self.check(step.describe(), worked == wanted, "" if worked == wanted else f"{outcome}: {detail}",
                   step.where)

    def step_ping(self, body: dict, step: Item) -> None:
        argv = ["ping", "-n", "-c", str(body.get("count", 1)), "-i", str(body.get("interval", 0.2)),
                "-W", str(int(body.get("timeout", 3)))]
        argv += ["-s", str(body["size"])] if "size" in body else []
        argv += ["-M", "do"] if body.get("dont_fragment") else []
        result = self.node(body["from"]).exec([*argv, self.address(body["to"])], timeout=60)
        lines = result.stdout.splitlines()
        summary = next((ln for ln in lines if "transmitted" in ln), result.stderr.strip())
        self.note(f"  {summary}")
        self.stated(body, step, result.ok, summary)

    def step_tcp(self, body: dict, step: Item) -> None:
        target, _, ifname = body["to"].partition(":")
        payload = body["marker"].encode() * body.get("repeat", 1)
        try:
            got = tcp_transfer(self.node(body["from"]), self.node(target), payload, body.get("port", 5001),
                               self.node(target).address(ifname or None), body.get("timeout", 15))
            worked, detail = got == payload, f"{len(got)} of {len(payload)} bytes arrived"
        except (CommandError, TimeoutError) as exc:
            worked, detail = False, str(exc).splitlines()[0]
            harness.stop_listeners(self.node(target))
        self.stated(body, step, worked, detail)

    def step_udp(self, body: dict, step: Item) -> None:
        udp_send(self.node(body["from"]), self.address(body["to"]), body["port"], body["marker"].encode())

    def step_firewall(self, body: dict, step: Item) -> None:
        self.node(body["node"]).firewall(drop=body["drop"])

    def step_link(self, body: dict, step: Item) -> None:
        self.lab.set_link(body["node"], body["interface"], body["up"])

    def step_policy(self, body: dict, step: Item) -> None:
        node = self.node(body["node"])
        for edit in body["edits"]:
            path = f"{harness.ETC}/{edit['file']}"
            node.put_file(path, harness.edit(node.get_file(path).decode(), edit["old"], edit["new"]))

    def step_exec(self, body: dict, step: Item) -> None:
        result = self.node(body["node"]).exec(body["command"], timeout=body.get("timeout", 30))
        out = (result.stdout + result.stderr).strip()
        self.note("  " + out[:500].replace("\n", "\n  "))
        if "expect" in body:
            self.stated(body, step, result.ok, f"exit {result.rc}: {out[:300]}")
        elif not result.ok:
            raise CommandError(body["node"], ["sh", "-c", body["command"]], result)

    def step_directory(self, body: dict, step: Item) -> None:
        out = harness.static_commands(self.node(body["node"]), body["commands"])
        self.note("  " + out.strip()[:1500].replace("\n", "\n  "))

    def step_put(self, body: dict, step: Item) -> None:
        self.node(body["node"]).put_file(body["path"], (self.scenario.folder / body["file"]).read_bytes())

    def step_spawn(self, body: dict, step: Item) -> None:
        self.node(body["node"]).spawn(body["command"], name=body["name"])

    def step_wait(self, body: dict, step: Item) -> None:
        node, timeout = self.node(body["node"]), body.get("timeout", 20)
        if "event" in body:
            harness.wait_event(node, body["event"], timeout)
        elif "counter" in body:
            op, value = OPS[body.get("op", ">=")], body.get("value", 1)
            wait_until(lambda: op(harness.counters(node).get(body["counter"], 0), value), timeout,
                       what=step.describe())
        else:
            count = body.get("count", 1)
            wait_until(lambda: len(harness.ipsecctl(node, body.get("table", "qmsa"))) == count, timeout,
                       what=step.describe())

    # -- expectations --
    def expect(self, item: Item) -> None:
        try:
            passed, detail = getattr(self, f"expect_{item.kind}")(item.body)
        except (CommandError, AssertionError, LabError) as exc:
            passed, detail = False, str(exc)
        self.check(item.describe(), passed, "" if passed else detail, item.where)

    def poll(self, body: dict, holds: Callable[[], tuple[bool, str]]) -> tuple[bool, str]:
        """Until `holds` is true or the expectation's timeout (default 10 s) passes; the last answer."""
        deadline = time.monotonic() + body.get("timeout", DEFAULT_WAIT)
        while True:
            passed, detail = holds()
            if passed or time.monotonic() >= deadline:
                return passed, detail
            time.sleep(0.3)

    def expect_counter(self, body: dict) -> tuple[bool, str]:
        node = self.node(body["node"])

        def holds() -> tuple[bool, str]:
            counters = {FIREWALL_DROPPED: node.dropped()} if body["name"] == FIREWALL_DROPPED \
                else harness.counters(node)
            if body["name"] not in counters:
                return False, no_counter(body["name"], counters)
            value = counters[body["name"]]
            return OPS[body["op"]](value, body["value"]), f"it is {value}"
        return self.poll(body, holds)

    def expect_event(self, body: dict) -> tuple[bool, str]:
        node = self.node(body["node"])

        def matching() -> list[dict]:
            return [e for e in harness.events(node)
                    if body["text"] in e["text"] and body.get("kind", e["kind"]) == e["kind"]]
        if body.get("absent"):
            found = matching()
            return not found, f"found: {found[0]['text']}" if found else ""
        def holds() -> tuple[bool, str]:
            found = matching()
            last = [e["text"] for e in harness.events(node)][-5:] if not found else []
            return bool(found), "no such event; the last ones:\n" + "\n".join(last)
        return self.poll(body, holds)

    def expect_sa(self, body: dict) -> tuple[bool, str]:
        node = self.node(body["node"])

        def holds() -> tuple[bool, str]:
            rows = harness.ipsecctl(node, body["table"])
            kept = [r for r in rows if all(str(r.get(k)) == str(v) for k, v in body.get("where", {}).items())]
            shown = json.dumps(rows)[:400]
            return OPS[body.get("op", "==")](len(kept), body["count"]), f"{len(kept)} match: {shown}"
        return self.poll(body, holds)

    def expect_in_force(self, body: dict) -> tuple[bool, str]:
        node = self.node(body["node"])

        def holds() -> tuple[bool, str]:
            shown = harness.ipsecctl(node, "policy") or {}
            name, source = shown.get("name"), shown.get("source", {})
            passed = ("policy" not in body or name == body["policy"]) and \
                     ("source" not in body or source.get("source") == body["source"])
            why = f" ({source['reason']})" if source.get("reason") else ""
            return passed, f"in force: {name!r}, source {source.get('source', 'none')}{why}"
        return self.poll(body, holds)

    def expect_capture(self, body: dict) -> tuple[bool, str]:
        capture = self.captures[body["segment"]]
        packets = capture.packets()
        between = tuple(self.address(t) for t in body["between"]) if "between" in body else None
        seen = ip_packets(packets, between)  # type: ignore[arg-type]
        kinds = sorted({protocol(p) for p in seen})
        problems = []
        if "only" in body and (wrong := [k for k in kinds if k not in body["only"]]):
            problems.append(f"also {', '.join(wrong)} (seen: {', '.join(kinds)})")
        if "seen" in body and (missing := [k for k in body["seen"] if k not in kinds]):
            problems.append(f"no {', '.join(missing)} (seen: {', '.join(kinds) or 'nothing'})")
        if "absent" in body and (there := [k for k in body["absent"] if k in kinds]):
            problems.append(f"{', '.join(there)} seen")
        if "marker" in body:
            hits = [p for p in packets if body["marker"].encode() in bytes(p)]
            if bool(hits) != body.get("present", False):
                problems.append(f"marker in clear in {len(hits)} of {len(packets)} frames")
        if "decrypts" in body:
            tables = capture.pcap.parent / keys.FOLDER
            inner, authentic = harness.tshark_decrypted_payloads(capture.pcap, keys=tables)
            if body["decrypts"].encode() not in inner or not authentic:
                problems.append(f"tshark with the exported keys: {authentic} ESP packets authentic, marker "
                                f"{'found' if body['decrypts'].encode() in inner else 'not found'} inside")
        return not problems, "; ".join(problems)


def lab_name_for(scenario: str, prefix: str) -> str:
    return f"{prefix}-{re.sub(r'[^a-z0-9-]', '', scenario)}"
