"""Handles on a running lab, its nodes and their background processes, the same on every backend.

A handle holds names and the topology, never engine objects: each call goes to the lab's backend
(lab.backend.Backend), so a handle stays valid when its node is restarted.
"""

from __future__ import annotations

import logging
import math
import re
import shlex
from pathlib import Path, PurePosixPath
from typing import Any

from lab import keys, node_setup, services
from lab.backend import Backend, CommandError, ExecResult, LabError, NodeInstance
from lab.capture import Capture, wait_until
from lab.model import NodeSpec, Topology
from lab.services import Readiness

log = logging.getLogger("lab")

PID_DIR = "/run/lab"


EXITED_AT_START = 101
NOT_READY = 102


def start_and_wait_script(
    name: str, argv: tuple[str, ...], log_path: str, ready: tuple[Readiness, ...], timeout: float
) -> str:
    """A bash script that starts `argv` in the background (output to `log_path`, pid in the pid file
    Process reads) and returns once every readiness condition holds: 0; or the end of the log and
    EXITED_AT_START if the process died, NOT_READY after `timeout` seconds."""
    conditions = " && ".join(f"{shlex.join(c.argv)} >/dev/null 2>&1" for c in ready) or "true"
    log_file = shlex.quote(log_path)
    return (
        f"mkdir -p {PID_DIR} {shlex.quote(str(PurePosixPath(log_path).parent))}; "
        f"{shlex.join(argv)} >> {log_file} 2>&1 < /dev/null & pid=$!; echo $pid > {PID_DIR}/{name}.pid; "
        f"end=$((SECONDS + {math.ceil(timeout)})); "
        f"until {conditions}; do "
        f'  if ! kill -0 $pid 2>/dev/null || [ -z "$(jobs -rp)" ]; then '
        f"    tail -c 2000 {log_file}; exit {EXITED_AT_START}; fi; "
        f"  if [ $SECONDS -ge $end ]; then tail -c 2000 {log_file}; exit {NOT_READY}; fi; "
        "  sleep 0.05; "
        "done"
    )


class Process:
    """A background process in a node, started by Node.spawn; its output goes to `log_path` in the node."""

    def __init__(self, node: Node, name: str, log_path: str):
        self.node, self.name, self.log_path = node, name, log_path
        self.pid_path = f"{PID_DIR}/{name}.pid"

    @property
    def pid(self) -> int:
        return int(self.node.exec(["cat", self.pid_path], check=True).stdout)

    def alive(self) -> bool:
        return self.node.exec(["sh", "-c", f"kill -0 $(cat {self.pid_path}) 2>/dev/null"]).ok

    def log(self) -> str:
        return self.node.exec(["cat", self.log_path]).stdout

    def wait_for_log(self, text: str, timeout: float = 10) -> str:
        """Poll the log until `text` appears; return the log."""

        def found() -> str:
            out = self.log()
            return out if text in out else ""

        return wait_until(
            found,
            timeout,
            what=f"{self.node.name}: {text!r} in {self.log_path}",
        )

    def stop(self, timeout: float = 5) -> None:
        """SIGTERM, wait for exit, then SIGKILL if it is still there."""
        self.node.exec(["sh", "-c", f"kill $(cat {self.pid_path}) 2>/dev/null"])
        try:
            wait_until(lambda: not self.alive(), timeout, what=f"{self.node.name}: {self.name} to exit")
        except TimeoutError:
            self.node.exec(["sh", "-c", f"kill -9 $(cat {self.pid_path}) 2>/dev/null"])


class Node:
    """A handle on a running node: exec, files, background processes and services, addresses, captures."""

    def __init__(self, lab: Lab, spec: NodeSpec):
        self.lab, self.spec = lab, spec
        self.name = spec.name
        self._host: Any = None

    def __repr__(self) -> str:
        return f"<Node {self.name} of lab {self.lab.name}>"

    @property
    def backend(self) -> Backend:
        return self.lab.backend

    @property
    def instance(self) -> NodeInstance:
        """What the engine runs this node as now (a restart gives a new id)."""
        return self.backend.instance(self.lab.name, self.name)

    @property
    def services(self) -> services.ImageServices:
        """What the node's image runs (images/<kind>/image.yaml)."""
        return services.load(self.spec.image)

    def address(self, ifname: str | None = None) -> str:
        """IPv4 address of `ifname` (default: the first addressed interface), as the topology gives it."""
        return self.spec.address(ifname)

    def exec(
        self,
        argv: list[str] | str,
        check: bool = False,
        timeout: float | None = None,
        env: dict[str, str] | None = None,
    ) -> ExecResult:
        """Run a command in the node (a string runs under sh -c); check=True raises CommandError on error."""
        argv = ["sh", "-c", argv] if isinstance(argv, str) else list(argv)
        full = ["timeout", "-k", "2", str(timeout), *argv] if timeout else argv
        result = self.backend.exec(self.lab.name, self.name, full, env)
        if check and not result.ok:
            raise CommandError(self.name, argv, result)
        return result

    def put_file(self, path: str, content: str | bytes, mode: int = 0o644) -> None:
        """Write a file into the node (parent folders are created)."""
        data = content.encode() if isinstance(content, str) else content
        self.backend.put_file(self.lab.name, self.name, path, data, mode)

    def put_service_file(self, file: str, given: Path) -> None:
        """Copy what the topology gives a service: a file to `file`, or a folder (config, policies,
        certificates) whole into `file`'s folder, modes kept."""
        if not given.is_dir():
            self.put_file(file, given.read_bytes())
            return
        folder = Path(file).parent
        for path in sorted(p for p in given.rglob("*") if p.is_file()):
            mode = path.stat().st_mode & 0o777
            self.put_file(str(folder / path.relative_to(given)), path.read_bytes(), mode)

    def get_file(self, path: str) -> bytes:
        return self.backend.get_file(self.lab.name, self.name, path)

    def spawn(self, argv: list[str], name: str | None = None, log: str | None = None) -> Process:
        """Start a long-running process in the background (iperf3 -s, ...); returns its handle."""
        name = name or Path(argv[0]).name
        log_path = log or f"{services.SPAWN_LOGS}/{name}.log"
        script = (
            f"mkdir -p {PID_DIR} {shlex.quote(str(Path(log_path).parent))}; echo $$ > {PID_DIR}/{name}.pid; "
            f'exec "$@" >> {shlex.quote(log_path)} 2>&1'
        )
        self.backend.spawn(self.lab.name, self.name, ["sh", "-c", script, name, *argv])
        process = Process(self, name, log_path)
        wait_until(
            lambda: self.exec(["test", "-s", process.pid_path]).ok, 10, what=f"{self.name}: {name} to start"
        )
        return process

    def process(self, name: str, log: str | None = None) -> Process:
        """The handle of a process spawned earlier under `name` (e.g. "ipsecd", started by `lab up`)."""
        if log is None:
            service = self.services.services.get(name)
            log = service.log if service else f"{services.SPAWN_LOGS}/{name}.log"
        return Process(self, name, log)

    def start_service(self, name: str) -> Process:
        """Start service `name` of the node's image as its image.yaml says and wait until it is ready; if it
        exits first, LabError with the end of its log."""
        service = self.services.service(name)
        given = self.spec.service_files().get(name)
        if given is not None and service.file is not None:
            self.put_service_file(service.file, given)
        # One exec starts the service and polls its readiness in the node: polling from here costs an exec
        # per condition and try, which at a hundred nodes starting at once swamps the engine.
        script = start_and_wait_script(name, service.command, service.log, service.ready, service.timeout)
        result = self.exec(["bash", "-c", script])
        if result.rc == EXITED_AT_START:
            raise LabError(f"{self.name}: {name} exited at start; {service.log}:\n{result.stdout}")
        if not result.ok:
            conditions = ", ".join(condition.what for condition in service.ready)
            raise LabError(
                f"{self.name}: {name} not ready after {service.timeout:g}s ({conditions}; rc {result.rc}); "
                f"{service.log}:\n{result.stdout}{result.stderr}"
            )
        log.info("%s: %s started%s", self.name, name, f" with {given}" if given else "")
        return Process(self, name, service.log)

    def tail_logs(self, lines: int) -> str:
        """The last `lines` of each log in the node (its image's services', then spawned processes'), each
        after a `==> path <==` header; "" if there is none."""
        paths = " ".join(self.services.log_files())
        return self.exec(f"for f in {paths}; do [ -f $f ] && tail -v -n {lines} $f; done").stdout

    def firewall(self, drop: list[str]) -> None:
        """Replace the node's firewall: drop what `drop` names ("esp", "udp/500", ...); [] lifts it."""
        self.put_file(node_setup.FIREWALL_RULES, node_setup.firewall_ruleset(drop))
        self.exec(["nft", "-f", node_setup.FIREWALL_RULES], check=True)

    def dropped(self) -> int:
        """Packets the node's firewall has dropped so far."""
        rules = self.exec(["nft", "list", "table", "inet", "lab_firewall"]).stdout
        return sum(int(n) for n in re.findall(r"counter packets (\d+)", rules))

    def capture(self, ifname: str, name: str | None = None, bpf: str = "") -> Capture:
        """A capture of this node's interface (taken outside the node); use as a context manager."""
        if ifname not in self.spec.interfaces:
            raise KeyError(f"{self.name} has no interface {ifname!r} ({', '.join(self.spec.interfaces)})")
        pcap = self.lab.pcap_path(name or f"{self.name}-{ifname}")
        return self.lab.with_keys(self.backend.capture(self.lab.name, self.name, ifname, pcap, bpf))

    @property
    def host(self) -> Any:
        """A testinfra host for this node."""
        if self._host is None:
            import testinfra

            self._host = testinfra.get_host(self.backend.testinfra_url(self.lab.name, self.name))
        return self._host


class Lab:
    """A running lab: its name, topology, node handles, results folder and the backend running it."""

    def __init__(self, name: str, topology: Topology, results_dir: Path, backend: Backend):
        self.name, self.topology, self.results_dir, self.backend = name, topology, results_dir, backend
        self.nodes: dict[str, Node] = {n: Node(self, spec) for n, spec in topology.nodes.items()}
        #: Seconds each phase of `up` took (the backend says which: containers, links, services).
        self.timings: dict[str, float] = {}

    def __repr__(self) -> str:
        return f"<Lab {self.name} ({self.topology.name}): {', '.join(self.nodes)}>"

    def node(self, name: str) -> Node:
        self.topology.node(name)
        return self.nodes[name]

    def pcap_path(self, label: str) -> Path:
        self.results_dir.mkdir(parents=True, exist_ok=True)
        path, n = self.results_dir / f"{label}.pcap", 1
        while path.exists():
            n += 1
            path = self.results_dir / f"{label}-{n}.pcap"
        return path

    def capture_segment(self, segment: str, bpf: str = "") -> Capture:
        """A capture of a whole segment: every frame between its members."""
        if segment not in self.topology.segments:
            raise KeyError(f"lab {self.name}: no segment {segment!r}")
        pcap = self.pcap_path(f"segment-{segment}")
        return self.with_keys(self.backend.capture_segment(self.name, segment, pcap, bpf))

    def with_keys(self, capture: Capture) -> Capture:
        """The capture, set to collect the ipsecd nodes' key tables beside its pcap when it stops."""
        capture.on_stop = lambda pcap: keys.collect(self, pcap.parent)
        return capture

    def set_link(self, node: str, ifname: str, up: bool) -> None:
        """Cut or restore a node's link at the far end (the node sees its carrier go down), e.g. to make
        a domain controller or a peer unreachable."""
        if ifname not in self.topology.node(node).interfaces:
            raise KeyError(f"{node} has no interface {ifname!r}")
        self.backend.set_link(self.name, node, ifname, up)

    def restart(self, node: str) -> Node:
        """A new instance of `node`, wired and configured again (see Backend.restart)."""
        return self.backend.restart(self, node)

    def down(self) -> None:
        self.backend.down(self.name)
