"""The `lab` command (also `python -m lab`).

lab up [TOPO] [--name NAME]       bring a topology up (builds missing images first); --param clients=100
lab down [TOPO] [--name NAME]     remove it (idempotent); --all: every lab of this checkout (--force: all)
lab status                        nodes, roles, state, addresses, services of every running lab
lab exec NODE [--name LAB] -- CMD run a command in a node (standard input passed through)
lab cp SRC DEST                   copy files between host and nodes, NODE:PATH on one side (as docker cp)
lab capture start|stop|list ...   pcaps per node interface, under results/labs/<lab>/ (keys beside them)
lab decode PCAP                   the capture, decrypted with the keys collected beside it (tshark)
lab graph TOPO|LAB [-o FILE]      draw a topology or a running lab (firewalls, IPsec relations)
lab images [KIND...]              build images (base, node, ...) if their inputs changed
lab validate FILE...              check topology files and scenarios
lab scenario list|show|run NAME   the troubleshooting catalogue (scenarios/), run with a report
lab bench                         run the benchmarks in bench/

A node name found in several running labs means this checkout's lab, else $LAB_NAME's; $LAB_NAME is also
the default --name of every verb.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
import time
from pathlib import Path

from ipsecd.yaml_lines import did_you_mean
from lab import keys
from lab import scenario as scenarios
from lab import topology as topologies
from lab.backend import RESULTS, Backend, LabError, NodeStatus
from lab.capture import Capture
from lab.docker_backend import DockerBackend
from lab.graph import render
from lab.images import ROOT, ImageError, Images
from lab.running import Lab
from lab.scenario_cli import add_to as add_scenario_verb
from lab.yaml_source import FileProblems

DEFAULT_TOPOLOGY = "intranet-pair"
#: The lab a verb acts on when --name is not given (and the name `lab up` gives).
NAME_VARIABLE = "LAB_NAME"


FIRST_STEPS = """first steps:
  lab up                     the default lab (intranet-pair); it prints three commands to try
  lab scenario list          troubleshooting scenarios; lab scenario run wrong-psk
  lab status                 what runs; lab down [--name LAB] when done
  lab VERB --help            each verb's options; README.md for the rest"""


def backend() -> Backend:
    """The engine labs run on (every command below needs only the Backend protocol)."""
    return DockerBackend()


def _lab_name(args) -> str:
    """--name, else $LAB_NAME, else the topology's name; `lab down NAME` also accepts a running lab's
    name."""
    if args.name:
        return args.name
    if os.environ.get(NAME_VARIABLE):
        return os.environ[NAME_VARIABLE]
    if args.topology not in topologies.available() and args.topology in backend().labs():
        return args.topology
    return topologies.load(args.topology).name


def _parameters(given: list[str]) -> dict:
    """`--param name=N` options as topology overrides."""
    values = {}
    for item in given:
        name, sep, value = item.partition("=")
        if not sep or not value.isdigit():
            raise LabError(f"--param {item}: expected name=N (a whole number), e.g. --param clients=100")
        values[name] = int(value)
    return {"parameters": values} if values else {}


def cmd_up(args) -> int:
    topo = topologies.load(args.topology, _parameters(args.param))
    engine, name = backend(), args.name or os.environ.get(NAME_VARIABLE) or topo.name
    running = [node for node, state in engine.node_states(name).items() if state == "running"]
    if args.replace:
        engine.down(name)
    elif len(running) == len(topo.nodes):
        print(f"lab {name} is already up (--replace to recreate it)")
        return 0
    started = time.monotonic()
    lab = engine.up(topo, name)
    print(f"lab {lab.name} up in {time.monotonic() - started:.1f}s ({topo.path})")
    for node in lab.nodes.values():
        addresses = ", ".join(f"{i.name} {i.address}" for i in node.spec.interfaces.values())
        print(f"  {node.instance.name:28} {node.spec.role:9} {addresses}")
    print("try:")
    for line in try_lines(lab):
        print(f"  {line}")
    return 0


def try_lines(lab: Lab) -> list[str]:
    """Three things to try on a lab that is up, each a command line naming the lab: traffic, the SAs, a
    decrypted capture (with ipsecd on the nodes), or traffic, addresses and a capture (without)."""
    nodes = list(lab.nodes.values())
    first, last = nodes[0], nodes[-1]
    at = f"--name {lab.name}"
    watched = next(iter(last.spec.interfaces))
    ping = f"lab exec {first.name} {at} -- ping -c3 {last.name}"
    capture = (
        f"lab capture start {last.name} {watched} {at}; {ping}; lab capture stop {last.name} {watched} {at}"
    )
    if any(node.spec.ipsecd for node in nodes):
        return [
            f"{ping}    # traffic, secured by ESP",
            f"lab exec {first.name} {at} -- ipsecctl qmsa    # the quick mode SAs (also: sa, mmsa, stats)",
            f"{capture}    # then `lab decode PCAP`, as it says: the ESP decrypted",
        ]
    return [ping, f"lab exec {first.name} {at} -- ip -br addr", capture]


def cmd_down(args) -> int:
    engine = backend()
    names = [_lab_name(args)]
    if args.all:
        names, others = _labs_by_checkout(engine)
        if others and not args.force:
            print(f"left {len(others)} lab(s) of other checkouts or unknown: {', '.join(others)} (--force: "
                  "those too)")
        names += others if args.force else []
    for name in names:
        removed = engine.down(name)
        print(f"lab {name} down" + (f": removed {', '.join(removed)}" if removed else " (nothing was left)"))
    return 0


def _labs_by_checkout(engine: Backend) -> tuple[list[str], list[str]]:
    """(this checkout's labs, the others): a lab's containers say which checkout brought it up; a lab left
    without containers (only its fabric namespace) counts as another's."""
    mine = {r["lab"] for r in engine.status() if r["checkout"] == str(ROOT)}
    return sorted(mine), sorted(set(engine.labs()) - mine)


def _services(engine: Backend, rows: list[NodeStatus]) -> dict[tuple[str, str], str]:
    """(lab, node) -> its image's services and whether each runs ("ipsecd running")."""
    found: dict[tuple[str, str], str] = {}
    for name in sorted({r["lab"] for r in rows}):
        try:
            lab = engine.attach(name, topologies.load(engine.topology_of(name) or ""))
        except (LabError, FileProblems):
            continue  # a lab half gone, or its topology file moved: no service column
        for row in rows:
            node = lab.nodes.get(row["node"])
            if row["lab"] == name and node is not None and row["state"] == "running":
                found[(name, node.name)] = ", ".join(
                    f"{service} {'running' if node.process(service).alive() else 'stopped'}"
                    for service in node.services.services
                )
    return found


def cmd_status(args) -> int:
    engine = backend()
    rows = engine.status()
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    if not rows:
        print("no lab is running")
        return 0
    print("\n".join(status_table(rows, _services(engine, rows))))
    return 0


def status_table(rows: list[NodeStatus], services: dict[tuple[str, str], str]) -> list[str]:
    """`lab status` as aligned columns, each as wide as its longest cell (lab names such as
    s10-firewall-drops-esp are long).

    >>> row = NodeStatus(lab="scn-firewall-drops-esp", node="host-a", role="host", state="running",
    ...                  addresses=["eth1=10.0.0.1/24"], checkout="")
    >>> print("\\n".join(status_table([row], {("scn-firewall-drops-esp", "host-a"): "ipsecd running"})))
    LAB                     NODE    ROLE  STATE    SERVICES        ADDRESSES
    scn-firewall-drops-esp  host-a  host  running  ipsecd running  eth1=10.0.0.1/24
    """
    table = [["LAB", "NODE", "ROLE", "STATE", "SERVICES", "ADDRESSES"]] + [
        [r["lab"], r["node"], r["role"], r["state"], services.get((r["lab"], r["node"]), "") or "-",
         " ".join(r["addresses"])] for r in rows]
    widths = [max(len(line[i]) for line in table) for i in range(len(table[0]) - 1)]
    return ["  ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=False)) + "  " + line[-1]
            for line in table]


def _attach(args) -> Lab:
    """The lab a node verb names (--name, $LAB_NAME, else the one lab holding the node), its node checked."""
    name = args.name or os.environ.get(NAME_VARIABLE) or _find_lab_of(args.node)
    engine = backend()
    topology = engine.topology_of(name)
    if topology is None:
        running = engine.labs()
        raise LabError(f"lab {name} is not up{did_you_mean(name, running)} (running: "
                       f"{', '.join(running) or 'none'}; `lab status` shows them)")
    lab = engine.attach(name, topologies.load(topology))
    if args.node not in lab.nodes:
        raise LabError(f"lab {name} has no node {args.node!r}{did_you_mean(args.node, lab.nodes)} "
                       f"(nodes: {', '.join(lab.nodes)})")
    return lab


def _find_lab_of(node: str) -> str:
    """The running lab holding `node`: the only one, else the only one of this checkout."""
    every = backend().status()
    rows = [r for r in every if r["node"] == node]
    labs = sorted({r["lab"] for r in rows})
    mine = sorted({r["lab"] for r in rows if r["checkout"] == str(ROOT)})
    if len(labs) == 1 or len(mine) == 1:
        return (mine or labs)[0]
    if not labs:
        nodes = sorted({r["node"] for r in every})
        raise LabError(f"no running lab has a node {node!r}{did_you_mean(node, nodes)} (`lab status` shows "
                       "the labs and their nodes)")
    raise LabError(
        f"node {node} is in {len(labs)} running labs ({', '.join(labs) or 'none'})"
        + (f", {len(mine)} of them from this checkout" if mine else "")
        + f": use --name LAB, or export {NAME_VARIABLE}=LAB"
    )


def _run_in(args, argv: list[str]) -> int:
    """Run argv in the node on this process's standard input and output (a terminal if both are one)."""
    lab = _attach(args)
    lab.node(args.node)
    tty = sys.stdin.isatty() and sys.stdout.isatty()
    line = lab.backend.command_line(lab.name, args.node, argv, tty)
    sys.stdout.flush()
    os.execvp(line[0], line)
    return 1


def cmd_exec(args) -> int:
    if not args.command:
        raise LabError("lab exec NODE -- CMD...: no command given")
    return _run_in(args, args.command)


def cmd_cp(args) -> int:
    """docker cp between the host and a node: exactly one of SRC and DEST is NODE:PATH."""
    ends = [_node_path(args.source), _node_path(args.destination)]
    if (ends[0] is None) == (ends[1] is None):
        raise LabError("lab cp SRC DEST: name a node on exactly one side (NODE:PATH)")
    args.node = (ends[0] or ends[1])[0]  # type: ignore[index]
    lab = _attach(args)
    if ends[0] is not None:
        lab.backend.copy_from(lab.name, args.node, ends[0][1], Path(args.destination))
    else:
        source = Path(args.source)
        if not source.exists():
            raise LabError(f"lab cp: {source} does not exist")
        lab.backend.copy_to(lab.name, args.node, source, ends[1][1])  # type: ignore[index]
    return 0


def _node_path(argument: str) -> tuple[str, str] | None:
    """("host-a", "/etc/x") for "host-a:/etc/x"; None for a host path."""
    node, colon, path = argument.partition(":")
    return (node, path or "/") if colon and node and "/" not in node else None


def cmd_restart(args) -> int:
    node = _attach(args).restart(args.node)
    print(f"{node.instance.name} restarted and re-wired")
    return 0


def cmd_logs(args) -> int:
    """The logs of a node's services (images/<kind>/image.yaml) and of whatever Node.spawn started."""
    logs = _attach(args).node(args.node).tail_logs(args.lines)
    sys.stdout.write(logs or f"no logs on {args.node}\n")
    return 0


def cmd_shell(args) -> int:
    """bash in a node: interactive on a terminal, else reading commands from standard input."""
    return _run_in(args, ["bash"])


def cmd_capture(args) -> int:
    if args.action == "list":
        folder = RESULTS / "labs"
        for pcap in sorted(folder.glob("*/*.pcap")):
            running = " (running)" if Path(f"{pcap}.pid").exists() else ""
            print(f"{pcap}  {pcap.stat().st_size} bytes{running}")
        return 0
    if not args.node:
        raise LabError(f"lab capture {args.action} NODE IFNAME")
    lab = _attach(args)
    interfaces = lab.node(args.node).spec.interfaces
    if args.ifname not in interfaces:
        raise LabError(f"{args.node} has no interface {args.ifname!r}{did_you_mean(args.ifname, interfaces)} "
                       f"(interfaces: {', '.join(interfaces)})")
    if args.action == "start":
        cap = lab.node(args.node).capture(args.ifname).start(detached=True)
        print(f"capturing {args.node}:{args.ifname} -> {cap.pcap}")
    else:
        pid_files = sorted(lab.results_dir.glob(f"{args.node}-{args.ifname}*.pcap.pid"))
        for pid_file in pid_files:
            Capture.stop_detached(pid_file)
        if not pid_files:
            print(f"no running capture of {args.node}:{args.ifname}")
            return 0
        tables = keys.collect(lab, lab.results_dir)
        for pid_file in pid_files:
            pcap = pid_file.with_suffix("")
            print(f"stopped {pcap}" + (f" (keys in {tables}): lab decode {pcap}" if tables else ""))
    return 0


def cmd_decode(args) -> int:
    pcap = Path(args.pcap)
    if not pcap.is_file():
        raise LabError(f"lab decode: no capture {pcap} (lab capture list shows them)")
    return keys.decode(pcap, Path(args.keys) if args.keys else None, args.command)


def cmd_graph(args) -> int:
    """A topology file, or a running lab: then its firewalls and IPsec as its nodes have them now."""
    name = args.name or args.topology
    lab = _running_lab(name) if args.name or not Path(args.topology).suffix else None
    topo = lab.topology if lab else topologies.load(args.topology)
    out = Path(args.output or f"{name if lab else topo.name}.svg")
    render(topo, out, lab)
    print(out)
    return 0


def _running_lab(name: str) -> Lab | None:
    """A handle on lab `name` if it is up here (None without an engine: graphs of files need none)."""
    try:
        engine = backend()
        topology = engine.topology_of(name)
    except Exception:  # no Docker, no labs: not an error for `lab graph FILE`
        return None
    return engine.attach(name, topologies.load(topology)) if topology else None


def cmd_images(args) -> int:
    if args.if_possible:
        from lab.pytest_plugin import unavailable

        reason = unavailable()
        if reason:
            print(f"not building images: {reason} (lab tests will be skipped)")
            return 0
    images = Images()
    kinds = args.kinds or ["base", *sorted(_kinds_in_use())]
    if args.prune:
        keep = {images.tag(kind) for kind in kinds}
        for tag in images.prune(keep, args.older_than):
            print(f"removed {tag}")
        return 0
    for kind in kinds:
        print(images.ensure(kind))
    return 0


def _kinds_in_use() -> set[str]:
    """Image kinds the runnable topologies use."""
    kinds = set()
    for name in topologies.available():
        topo = topologies.load(name)
        if topo.runnable:
            kinds |= {node.image for node in topo.nodes.values()}
    return kinds


def cmd_validate(args) -> int:
    """Topology files, and scenarios (a scenario.yaml or its folder) as `lab scenario run` checks them."""
    failed = 0
    for path in args.files:
        try:
            if Path(path).name == "scenario.yaml" or (Path(path) / "scenario.yaml").is_file():
                scenarios.load(path)
            else:
                topologies.load(path)
            print(f"{path}: ok")
        except FileProblems as exc:
            print(exc, file=sys.stderr)
            failed += 1
    return 1 if failed else 0


def cmd_check(args) -> int:
    from lab.preflight import report

    return report()


def cmd_bench(args) -> int:
    return subprocess.call([sys.executable, "-m", "bench", *args.only])


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="lab", description="ipsec-lab topologies in Docker", epilog=FIRST_STEPS,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = p.add_subparsers(dest="verb", required=True)

    def verb(name, func, help_text):
        s = sub.add_parser(name, help=help_text)
        s.set_defaults(func=func)
        return s

    for name, func, help_text in (
        ("up", cmd_up, "bring a topology up"),
        ("down", cmd_down, "tear a lab down"),
    ):
        s = verb(name, func, help_text)
        s.add_argument(
            "topology",
            nargs="?",
            default=DEFAULT_TOPOLOGY,
            help=f"name under topologies/ or a path ({', '.join(topologies.available())})",
        )
        s.add_argument("--name", help=f"lab name (default: ${NAME_VARIABLE}, else the topology's name)")
        if name == "down":
            s.add_argument("--all", action="store_true", help="every lab this checkout brought up")
            s.add_argument("--force", action="store_true", help="with --all: every lab on this machine")
        else:
            s.add_argument("--replace", action="store_true", help="tear the lab down first if it is up")
            s.add_argument("--param", action="append", default=[], metavar="NAME=N", help="e.g. clients=100")
    s = verb("status", cmd_status, "running labs")
    s.add_argument("--json", action="store_true", help="one object per node, with the checkout that made it")
    s = verb("exec", cmd_exec, "run a command in a node: lab exec host-a -- ping -c1 host-b")
    s.add_argument("node", help="a node of a running lab (lab status)")
    s.add_argument("--name", help="lab name (needed when the node name is in several labs)")
    s.add_argument("command", nargs="*", help="after --: the command and its arguments")
    s = verb("cp", cmd_cp, "copy files or folders between the host and a node (NODE:PATH), as docker cp")
    s.add_argument("source", help="a host path, or NODE:PATH")
    s.add_argument("destination", help="a host path, or NODE:PATH")
    s.add_argument("--name", help="lab name (needed when the node name is in several labs)")
    s = verb("restart", cmd_restart, "recreate a node and re-wire its links")
    s.add_argument("node", help="a node of a running lab (lab status)")
    s.add_argument("--name", help="lab name (needed when the node name is in several labs)")
    s = verb("logs", cmd_logs, "logs of a node's services and background processes (ipsecd, ...)")
    s.add_argument("node", help="a node of a running lab (lab status)")
    s.add_argument("--name", help="lab name (needed when the node name is in several labs)")
    s.add_argument("-n", "--lines", type=int, default=50, help="the last LINES of each log (default 50)")
    s = verb("shell", cmd_shell, "bash in a node (interactive on a terminal, else reading stdin)")
    s.add_argument("node", help="a node of a running lab (lab status)")
    s.add_argument("--name", help="lab name (needed when the node name is in several labs)")
    s = verb("capture", cmd_capture, "start, stop or list captures")
    s.add_argument("action", choices=["start", "stop", "list"], help="stop also collects the ipsecd keys")
    s.add_argument("node", nargs="?", help="start/stop: the node whose interface is captured")
    s.add_argument("ifname", nargs="?", default="eth1", help="its interface (default eth1)")
    s.add_argument("--name", help="lab name")
    s = verb("decode", cmd_decode, "print a capture decrypted with the keys collected beside it")
    s.add_argument("pcap", help="a capture (lab capture list; a scenario report's segment-*.pcap)")
    s.add_argument("--keys", help="folder of the key tables (default: wireshark/ beside the pcap)")
    s.add_argument("command", nargs="*", help="after --: more tshark options (-V, -Y FILTER, ...)")
    s = verb("graph", cmd_graph, "draw a topology, or a running lab with its firewalls and IPsec")
    s.add_argument("topology", help="a topology (name or file) or a running lab's name")
    s.add_argument("--name", help="a running lab (default: the topology's lab if it runs)")
    s.add_argument("-o", "--output", help="output file, .svg, .png or .dot (default: <name>.svg)")
    s = verb("images", cmd_images, "build images")
    s.add_argument("kinds", nargs="*", help="folders of images/ (default: base and those in use)")
    s.add_argument("--if-possible", action="store_true", help="skip (exit 0) without root or Docker")
    s.add_argument("--prune", action="store_true", help="remove unused node-level images (not bases)")
    s.add_argument("--older-than", type=float, default=1.0, metavar="HOURS", help="with --prune (default 1)")
    s = verb("validate", cmd_validate, "check topology files and scenarios (scenario.yaml or its folder)")
    s.add_argument("files", nargs="+", metavar="FILE", help="topology, scenario.yaml or scenario folder")
    verb("check", cmd_check, "can this machine run labs? what does the kernel offer?")
    add_scenario_verb(sub)
    s = verb("bench", cmd_bench, "run benchmarks")
    s.add_argument("only", nargs="*", help="bench/bench_NAME.py names (default: all)")
    return p


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    command = argv[argv.index("--") + 1 :] if "--" in argv else []
    args = parser().parse_args(argv[: argv.index("--")] if "--" in argv else argv)
    if command:
        args.command = command
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(message)s")
    try:
        return args.func(args)
    except (LabError, ImageError, FileProblems, TimeoutError) as exc:
        print(f"lab: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
