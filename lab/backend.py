"""The seam between the lab's users (the `lab` command, the pytest plugin, tests) and the engine that runs
the nodes.

A backend turns a lab.model.Topology into running nodes and links, and carries out what the handles in
lab.running ask of one node (exec, files, processes, captures, links). The handles hold no engine state,
so a second backend (a multi-host engine) implements `Backend` and every test runs on it unchanged.
Backends name labs, nodes and segments as the topology does; what a node runs at start is not theirs to
know: lab.node_setup configures a wired node through the handle (hosts, NAT, firewall, the image's
services from images/<kind>/image.yaml), the same on every backend.

lab.docker_backend.DockerBackend is the one backend today.
"""

from __future__ import annotations

import os
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol, TypedDict

from lab.capture import Capture
from lab.model import Topology

if TYPE_CHECKING:
    from lab.running import Lab, Node

#: Where labs keep their pcaps and lab.json (results/labs/<lab>/, or per test under results/<run>/).
RESULTS = Path(os.environ.get("LAB_RESULTS", Path.cwd() / "results"))


class LabError(RuntimeError):
    pass


@dataclass
class ExecResult:
    rc: int
    stdout: str
    stderr: str

    @property
    def ok(self) -> bool:
        return self.rc == 0


class CommandError(LabError):
    """A command in a node failed; the message shows the command and its output."""

    def __init__(self, node: str, argv: list[str], result: ExecResult):
        self.result = result
        super().__init__(
            f"{node}: `{shlex.join(argv)}` exited {result.rc}\n"
            f"--- stdout\n{result.stdout}--- stderr\n{result.stderr}"
        )


class NodeStatus(TypedDict):
    """One row of `lab status` (and of `lab status --json`)."""

    lab: str
    node: str
    role: str
    state: str
    addresses: list[str]


@dataclass(frozen=True)
class NodeInstance:
    """What the engine runs a node as: `name` for people (Docker: the container `<lab>-<node>`), `id` that
    changes when the node is recreated (Docker: the container id)."""

    name: str
    id: str


class Backend(Protocol):
    """What the `lab` command, the pytest plugin and the node and lab handles need of an engine."""

    # -- labs ------------------------------------------------------------------------------------------
    def labs(self) -> list[str]:
        """Names of the labs on this machine (or cluster), up or left over from a crash."""
        ...

    def up(self, topology: Topology, name: str | None = None, results_dir: Path | None = None) -> Lab:
        """Create, wire and configure (lab.node_setup) every node; return once each is ready. On failure
        whatever was made is removed. LabError if `name` is already up."""
        ...

    def attach(self, name: str, topology: Topology, results_dir: Path | None = None) -> Lab:
        """A handle on a lab that is already up; LabError naming the nodes that are missing."""
        ...

    def down(self, name: str) -> list[str]:
        """Remove everything of lab `name`; idempotent. Returns what was removed."""
        ...

    def status(self) -> list[NodeStatus]:
        """One row per node of every lab."""
        ...

    def node_states(self, lab: str) -> dict[str, str]:
        """The nodes of lab `lab` the engine has, with their state ("running", "exited", ...)."""
        ...

    def topology_of(self, lab: str) -> str | None:
        """The topology (file or name) lab `lab` was brought up from, or None if it is not up."""
        ...

    # -- one node --------------------------------------------------------------------------------------
    def instance(self, lab: str, node: str) -> NodeInstance: ...

    def exec(self, lab: str, node: str, argv: list[str], env: dict[str, str] | None = None) -> ExecResult:
        """Run `argv` in the node and wait for it."""
        ...

    def spawn(self, lab: str, node: str, argv: list[str]) -> None:
        """Start `argv` in the node and return at once (lab.running.Node.spawn tracks it by pid file)."""
        ...

    def put_file(self, lab: str, node: str, path: str, data: bytes, mode: int) -> None: ...

    def get_file(self, lab: str, node: str, path: str) -> bytes: ...

    def capture(self, lab: str, node: str, ifname: str, pcap: Path, bpf: str) -> Capture:
        """A capture (not started) of the node's interface, as the link carries it."""
        ...

    def capture_segment(self, lab: str, segment: str, pcap: Path, bpf: str) -> Capture:
        """A capture (not started) of every frame on a segment."""
        ...

    def set_link(self, lab: str, node: str, ifname: str, up: bool) -> None:
        """Cut or restore a node's link from the outside: the node sees its carrier go down."""
        ...

    def restart(self, lab: Lab, node: str) -> Node:
        """A new instance of the node (files and processes gone), wired and configured as `up` does."""
        ...

    def shell(self, lab: str, node: str) -> list[str]:
        """The host command line of an interactive shell in the node (`lab shell`)."""
        ...

    def testinfra_url(self, lab: str, node: str) -> str:
        """pytest-testinfra's address of the node (Docker: docker://<container>)."""
        ...
