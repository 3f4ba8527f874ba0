"""The `lab` command (also `python -m lab`).

lab up [TOPO] [--name NAME]       bring a topology up (builds missing images first)
lab down [TOPO] [--name NAME]     remove it (idempotent); --all removes every lab on this machine
lab status                        nodes, roles, state, addresses of every running lab
lab exec NODE [--name LAB] -- CMD run a command in a node
lab capture start|stop|list ...   pcaps per node interface, under results/labs/<lab>/
lab graph TOPO [-o FILE]          draw the topology (SVG or PNG, by the file's suffix)
lab images [KIND...]              build images (base, node, ...) if their inputs changed
lab validate FILE...              check topology files
lab scenario list|show|run NAME   the troubleshooting catalogue (scenarios/), run with a report
lab bench                         run the benchmarks in bench/
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

from lab import topology as topologies
from lab.backend import RESULTS, Backend, LabError
from lab.capture import Capture
from lab.docker_backend import DockerBackend
from lab.graph import render
from lab.images import ImageError, Images
from lab.running import Lab
from lab.scenario_cli import add_to as add_scenario_verb
from lab.yaml_source import FileProblems

DEFAULT_TOPOLOGY = "intranet-pair"


def backend() -> Backend:
    """The engine labs run on (every command below needs only the Backend protocol)."""
    return DockerBackend()


def _lab_name(args) -> str:
    """--name, else the topology's name; `lab down NAME` also accepts a running lab's name."""
    if args.name:
        return args.name
    if args.topology not in topologies.available() and args.topology in backend().labs():
        return args.topology
    return topologies.load(args.topology).name


def cmd_up(args) -> int:
    topo = topologies.load(args.topology)
    engine, name = backend(), args.name or topo.name
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
    print(
        f"  try: lab exec {next(iter(lab.nodes))}{f' --name {lab.name}' if args.name else ''} -- ip -br addr"
    )
    return 0


def cmd_down(args) -> int:
    engine = backend()
    names = engine.labs() if args.all else [_lab_name(args)]
    for name in names:
        removed = engine.down(name)
        print(f"lab {name} down" + (f": removed {', '.join(removed)}" if removed else " (nothing was left)"))
    return 0


def cmd_status(args) -> int:
    rows = backend().status()
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    if not rows:
        print("no lab is running")
        return 0
    print(f"{'LAB':20} {'NODE':12} {'ROLE':10} {'STATE':9} ADDRESSES")
    for r in rows:
        print(f"{r['lab']:20} {r['node']:12} {r['role']:10} {r['state']:9} {' '.join(r['addresses'])}")
    return 0


def _attach(args) -> Lab:
    name = args.name or _find_lab_of(args.node)
    engine = backend()
    topology = engine.topology_of(name)
    if topology is None:
        raise LabError(f"lab {name} is not up")
    return engine.attach(name, topologies.load(topology))


def _find_lab_of(node: str) -> str:
    labs = sorted({r["lab"] for r in backend().status() if r["node"] == node})
    if len(labs) != 1:
        raise LabError(
            f"node {node} is in {len(labs)} running labs ({', '.join(labs) or 'none'}): use --name"
        )
    return labs[0]


def cmd_exec(args) -> int:
    command = args.command
    if not command:
        raise LabError("lab exec NODE -- CMD...: no command given")
    result = _attach(args).node(args.node).exec(command)
    sys.stdout.write(result.stdout)
    sys.stderr.write(result.stderr)
    return result.rc


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
    """An interactive shell in a node (Docker: docker exec -it)."""
    lab = _attach(args)
    lab.node(args.node)
    argv = lab.backend.shell(lab.name, args.node)
    os.execvp(argv[0], argv)
    return 1


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
    if args.action == "start":
        cap = lab.node(args.node).capture(args.ifname).start(detached=True)
        print(f"capturing {args.node}:{args.ifname} -> {cap.pcap}")
    else:
        pid_files = sorted(lab.results_dir.glob(f"{args.node}-{args.ifname}*.pcap.pid"))
        for pid_file in pid_files:
            Capture.stop_detached(pid_file)
            print(f"stopped {pid_file.with_suffix('')}")
        if not pid_files:
            print(f"no running capture of {args.node}:{args.ifname}")
    return 0


def cmd_graph(args) -> int:
    topo = topologies.load(args.topology)
    out = Path(args.output or f"{topo.name}.svg")
    render(topo, out)
    print(out)
    return 0


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
    failed = 0
    for path in args.files:
        try:
            topologies.load(path)
            print(f"{path}: ok")
        except topologies.TopologyError as exc:
            print(exc, file=sys.stderr)
            failed += 1
    return 1 if failed else 0


def cmd_check(args) -> int:
    from lab.preflight import report

    return report()


def cmd_bench(args) -> int:
    return subprocess.call([sys.executable, "-m", "bench", *args.only])


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="lab", description="ipsec-lab topologies in Docker")
    p.add_argument("-v", "--verbose", action="store_true")
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
        s.add_argument("--name", help="lab name (default: the topology's name)")
        if name == "down":
            s.add_argument("--all", action="store_true", help="every lab on this machine")
        else:
            s.add_argument("--replace", action="store_true", help="tear the lab down first if it is up")
    s = verb("status", cmd_status, "running labs")
    s.add_argument("--json", action="store_true")
    s = verb("exec", cmd_exec, "run a command in a node")
    s.add_argument("node")
    s.add_argument("--name", help="lab name (needed when the node name is in several labs)")
    s.add_argument("command", nargs="*", help="after --")
    s = verb("restart", cmd_restart, "recreate a node and re-wire its links")
    s.add_argument("node")
    s.add_argument("--name", help="lab name (needed when the node name is in several labs)")
    s = verb("logs", cmd_logs, "logs of a node's services and background processes (ipsecd, ...)")
    s.add_argument("node")
    s.add_argument("--name", help="lab name (needed when the node name is in several labs)")
    s.add_argument("-n", "--lines", type=int, default=50)
    s = verb("shell", cmd_shell, "an interactive shell in a node")
    s.add_argument("node")
    s.add_argument("--name", help="lab name (needed when the node name is in several labs)")
    s = verb("capture", cmd_capture, "start, stop or list captures")
    s.add_argument("action", choices=["start", "stop", "list"])
    s.add_argument("node", nargs="?")
    s.add_argument("ifname", nargs="?", default="eth1")
    s.add_argument("--name", help="lab name")
    s = verb("graph", cmd_graph, "draw a topology")
    s.add_argument("topology")
    s.add_argument("-o", "--output", help="output file, .svg or .png (default: <topology>.svg)")
    s = verb("images", cmd_images, "build images")
    s.add_argument("kinds", nargs="*")
    s.add_argument("--if-possible", action="store_true", help="skip (exit 0) without root or Docker")
    s.add_argument("--prune", action="store_true", help="remove unused node-level images (not bases)")
    s.add_argument("--older-than", type=float, default=1.0, metavar="HOURS", help="with --prune (default 1)")
    s = verb("validate", cmd_validate, "check topology files")
    s.add_argument("files", nargs="+")
    verb("check", cmd_check, "can this machine run labs? what does the kernel offer?")
    add_scenario_verb(sub)
    s = verb("bench", cmd_bench, "run benchmarks")
    s.add_argument("only", nargs="*")
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
