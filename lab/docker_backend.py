"""The Docker backend (lab.backend.Backend): one container per node, links made by lab.fabric.

Layout of a running lab named L:
- containers `L-<node>` (network_mode none, NET_ADMIN/NET_RAW, /dev/net/tun) running `sleep infinity`,
  labelled ipsec-lab.lab=L, ipsec-lab.node, ipsec-lab.role, ipsec-lab.topology, ipsec-lab.checkout (the
  checkout that brought it up: `lab down --all` and node look-ups prefer the caller's own labs);
- the fabric namespace `ilab-L` (lab.fabric), whose veths end in the containers' network namespaces.
What a node runs is not this module's business: once a container is wired, lab.node_setup configures it
through its handle (lab.running.Node), starting the services of its image (images/<kind>/image.yaml).
"""

from __future__ import annotations

import io
import json
import logging
import tarfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TypeVar

import docker
import requests
from docker.models.containers import Container

from lab import fabric, model, node_setup
from lab.backend import RESULTS, ExecResult, LabError, NodeInstance, NodeStatus
from lab.capture import Capture, wait_until
from lab.fabric import Fabric
from lab.images import ROOT, Images
from lab.running import Lab, Node

LABEL = "ipsec-lab"
#: Containers created, configured or removed at once. The engine serialises much of the work (and a
#: node's start-up is CPU bound), so more only makes each request slower: measured in bench_star.
WORKERS = 4
#: How long one Docker API request may take before the lab gives up on it (docker-py's default: 60 s).
ENGINE_TIMEOUT = 180.0
#: Seconds between progress lines of a long `lab up` or `lab down`.
PROGRESS_EVERY = 5.0

log = logging.getLogger("lab")
T = TypeVar("T")
R = TypeVar("R")


def _netns_path(container: Container) -> str:
    return f"/proc/{container.attrs['State']['Pid']}/ns/net"


class DockerBackend:
    """Brings topologies up and down as Docker containers; no global state, so several labs can coexist."""

    def __init__(
        self,
        client: docker.DockerClient | None = None,
        images: Images | None = None,
        checkout: Path = ROOT,
        workers: int = WORKERS,
        engine_timeout: float = ENGINE_TIMEOUT,
    ):
        self.client = client or docker.from_env(timeout=int(engine_timeout))
        self.images = images or Images(self.client)
        self.checkout = checkout
        self.workers, self.engine_timeout = workers, engine_timeout

    # -- discovery ---------------------------------------------------------------------------------------
    def containers(self, lab: str | None = None) -> list[Container]:
        label = f"{LABEL}.lab={lab}" if lab else f"{LABEL}.lab"
        return self.client.containers.list(all=True, filters={"label": label})

    def labs(self) -> list[str]:
        return sorted({c.labels[f"{LABEL}.lab"] for c in self.containers()} | fabric.labs())

    def node_states(self, lab: str) -> dict[str, str]:
        return {c.labels[f"{LABEL}.node"]: c.status for c in self.containers(lab)}

    def topology_of(self, lab: str) -> str | None:
        containers = self.containers(lab)
        return containers[0].labels.get(f"{LABEL}.topology") if containers else None

    # -- up ----------------------------------------------------------------------------------------------
    def up(self, topology: model.Topology, name: str | None = None, results_dir: Path | None = None) -> Lab:
        """Create containers, wire them, configure them, and return once every node is ready.

        Containers are created and configured a few at a time (`workers`): on two cores, a hundred
        requests at once only lengthen every request until the engine's answers time out. Progress is
        logged; on any failure (or Ctrl-C) everything made so far is removed before the error is raised."""
        name = name or topology.name
        if not topology.runnable:
            raise LabError(f"topology {topology.name} is not runnable yet: {topology.reason}")
        links = Fabric(name)
        if self.containers(name) or links.exists():
            raise LabError(f"lab {name} is already up (or left over): `lab down --name {name}` first")
        lab = Lab(name, topology, results_dir or RESULTS / "labs" / name, self)
        tags = {kind: self.images.ensure(kind) for kind in {n.image for n in topology.nodes.values()}}
        specs = list(topology.nodes.values())
        began = time.monotonic()
        try:
            links.create(topology)
            started = self._each(
                f"lab {name}: containers started",
                lambda spec: self._start_container(lab, spec, tags[spec.image]),
                specs,
                lambda spec: f"starting {self._container_name(name, spec.name)}",
            )
            containers = {spec.name: c for spec, c in zip(specs, started, strict=True)}
            lab.timings["containers"] = time.monotonic() - began
            for spec in specs:
                links.wire(spec, _netns_path(containers[spec.name]))
            self._wait_wired(specs, containers)
            lab.timings["links"] = time.monotonic() - began - lab.timings["containers"]
            self._each(
                f"lab {name}: nodes configured",
                node_setup.configure,
                list(lab.nodes.values()),
                lambda node: f"configuring {node.name}",
            )
            lab.timings["services"] = time.monotonic() - began - sum(lab.timings.values())
        except BaseException:
            self.down(name)
            raise
        lab.results_dir.mkdir(parents=True, exist_ok=True)
        (lab.results_dir / "lab.json").write_text(json.dumps(self.describe(lab, containers), indent=2))
        return lab

    def _each(self, done: str, work: Callable[[T], R], items: list[T], doing: Callable[[T], str]) -> list[R]:
        """work(item) for every item, `workers` at a time, in order; progress logged as `done` n/N.

        The first failure cancels what has not started yet and is raised as a LabError naming the item (an
        engine that did not answer in time is said to be overloaded, not left as a bare ReadTimeout)."""
        results: list[R] = []
        last_report = time.monotonic()
        with ThreadPoolExecutor(max_workers=self.workers) as pool:
            futures = [pool.submit(work, item) for item in items]
            try:
                for count, (item, future) in enumerate(zip(items, futures, strict=True), 1):
                    try:
                        results.append(future.result())
                    except (requests.exceptions.ConnectionError, requests.exceptions.Timeout) as exc:
                        raise LabError(f"{doing(item)}: {self._engine_slow(len(items))}: {exc}") from exc
                    except docker.errors.APIError as exc:
                        raise LabError(f"{doing(item)}: the Docker engine refused: {exc}") from exc
                    if count == len(items) or time.monotonic() - last_report >= PROGRESS_EVERY:
                        log.info("%s: %d/%d", done, count, len(items))
                        last_report = time.monotonic()
            finally:
                for future in futures:
                    future.cancel()
        return results

    def _engine_slow(self, count: int) -> str:
        return (
            f"the Docker engine did not answer within {self.engine_timeout:g}s ({count} nodes, "
            f"{self.workers} at a time; it is overloaded or stuck: see `docker info`, `journalctl -u docker`)"
        )

    def _wait_wired(self, specs: list[model.NodeSpec], containers: dict[str, Container]) -> None:
        """Every node's interfaces up with their addresses (netlink, no engine call); on a timeout, the
        containers that are not running are named with the end of their output."""
        pending = list(specs)

        def wired() -> bool:
            pending[:] = [s for s in pending if not Fabric.wired(s, _netns_path(containers[s.name]))]
            return not pending

        try:
            wait_until(wired, 10 + len(specs) / 10, what="every node's interfaces up with their addresses")
        except TimeoutError:
            for spec in pending:
                self._check_running(containers[spec.name])
            raise

    @staticmethod
    def _check_running(container: Container) -> None:
        container.reload()
        if container.status != "running":
            raise LabError(f"{container.name} is {container.status}: {container.logs()[-500:]!r}")

    def attach(self, name: str, topology: model.Topology, results_dir: Path | None = None) -> Lab:
        """A handle on an already running lab (for `lab exec`, `lab capture`)."""
        missing = set(topology.nodes) - set(self.node_states(name))
        if missing:
            raise LabError(f"lab {name} is not up (missing nodes: {', '.join(sorted(missing))})")
        return Lab(name, topology, results_dir or RESULTS / "labs" / name, self)

    def _start_container(self, lab: Lab, spec: model.NodeSpec, image: str) -> Container:
        labels = {
            f"{LABEL}.lab": lab.name,
            f"{LABEL}.node": spec.name,
            f"{LABEL}.role": spec.role,
            f"{LABEL}.topology": str(lab.topology.path or lab.topology.name),
            f"{LABEL}.checkout": str(self.checkout),
        }
        container = self.client.containers.run(
            image,
            ["sleep", "infinity"],
            name=self._container_name(lab.name, spec.name),
            hostname=spec.name,
            detach=True,
            init=True,
            network_mode="none",
            cap_add=["NET_ADMIN", "NET_RAW"],
            devices=["/dev/net/tun:/dev/net/tun:rwm"],
            sysctls=spec.all_sysctls(),
            labels=labels,
        )
        container.reload()  # run() inspected it before starting it: no State.Pid yet
        return container

    def restart(self, lab: Lab, node: str) -> Node:
        """Recreate one node's container and re-wire its links (links die with the container's namespace),
        then configure it as `up` does. Files and processes in the node are gone; its addresses are not."""
        spec = lab.topology.node(node)
        links = Fabric(lab.name)
        self._container(lab.name, node).remove(force=True)
        links.wait_links_gone(spec)
        links.make_links([spec])
        container = self._start_container(lab, spec, self.images.ensure(spec.image))
        links.wire(spec, _netns_path(container))
        self._wait_wired([spec], {node: container})
        handle = lab.node(node)
        node_setup.configure(handle)
        return handle

    def describe(self, lab: Lab, containers: dict[str, Container]) -> dict:
        """The lab as data (written to results/.../lab.json)."""
        return {
            "lab": lab.name,
            "topology": str(lab.topology.path),
            "fabric": Fabric(lab.name).name,
            "nodes": {
                spec.name: {
                    "container": containers[spec.name].name,
                    "id": containers[spec.name].id[:12],
                    "role": spec.role,
                    "image": containers[spec.name].attrs["Config"]["Image"],  # as created: no engine call
                    "interfaces": {
                        i.name: {
                            "segment": i.segment,
                            "address": str(i.address) if i.address else None,
                            "mac": i.mac or model.mac_address(lab.name, spec.name, i.name),
                        }
                        for i in spec.interfaces.values()
                    },
                }
                for spec in lab.topology.nodes.values()
            },
        }

    # -- down and status ---------------------------------------------------------------------------------
    def down(self, name: str) -> list[str]:
        """Remove the lab's containers (found by label), its fabric namespace and capture processes.

        Idempotent: anything already gone is skipped. A removal the engine is slow with is waited for (a
        timed-out request goes on in the engine); the fabric namespace goes whatever happens, and a
        LabError names the containers still there at the end. Returns what was removed."""
        containers = self.containers(name)
        try:
            self._each(
                f"lab {name}: containers removed",
                self._remove,
                containers,
                lambda c: f"removing {c.name}",
            )
        except LabError as exc:
            log.warning("%s; waiting for the engine to finish", exc)
        finally:
            for pid_file in (RESULTS / "labs" / name).glob("*.pcap.pid"):
                Capture.stop_detached(pid_file)
            links = Fabric(name)
            fabric_removed = links.remove()
        try:
            wait_until(
                lambda: not self.containers(name), self.engine_timeout, what=f"lab {name}'s containers"
            )
        except TimeoutError:
            left = ", ".join(c.name for c in self.containers(name))
            raise LabError(
                f"lab {name}: the Docker engine has not removed {left} after {self.engine_timeout:g}s; "
                f"`lab down --name {name}` again once it is less busy"
            ) from None
        return [c.name for c in containers] + ([f"netns {links.name}"] if fabric_removed else [])

    @staticmethod
    def _remove(container: Container) -> None:
        """Kill and remove a container; one already gone or being removed is no error (down waits)."""
        try:
            container.remove(force=True)
        except docker.errors.NotFound:
            pass
        except docker.errors.APIError as exc:
            if "already in progress" not in str(exc):
                raise

    def status(self) -> list[NodeStatus]:
        """One row per node of every lab on this machine: lab, node, role, state, addresses."""
        return [
            {
                "lab": c.labels[f"{LABEL}.lab"],
                "node": c.labels[f"{LABEL}.node"],
                "role": c.labels[f"{LABEL}.role"],
                "state": c.status,
                "addresses": fabric.addresses(_netns_path(c)) if c.status == "running" else [],
                "checkout": c.labels.get(f"{LABEL}.checkout", ""),
            }
            for c in sorted(self.containers(), key=lambda c: c.name)
        ]

    # -- one node ----------------------------------------------------------------------------------------
    @staticmethod
    def _container_name(lab: str, node: str) -> str:
        return f"{lab}-{node}"

    def _container(self, lab: str, node: str) -> Container:
        try:
            return self.client.containers.get(self._container_name(lab, node))
        except docker.errors.NotFound:
            raise LabError(f"lab {lab} has no container for node {node}") from None

    def instance(self, lab: str, node: str) -> NodeInstance:
        container = self._container(lab, node)
        return NodeInstance(container.name, container.id)

    def exec(self, lab: str, node: str, argv: list[str], env: dict[str, str] | None = None) -> ExecResult:
        """As Container.exec_run does, by container name (no inspect per call)."""
        api, name = self.client.api, self._container_name(lab, node)
        try:
            exec_id = api.exec_create(name, argv, environment=env)["Id"]
        except docker.errors.NotFound:
            raise LabError(f"lab {lab} has no container for node {node}") from None
        out, err = api.exec_start(exec_id, demux=True)
        rc = api.exec_inspect(exec_id)["ExitCode"]
        return ExecResult(rc, (out or b"").decode(errors="replace"), (err or b"").decode(errors="replace"))

    def spawn(self, lab: str, node: str, argv: list[str]) -> None:
        api = self.client.api
        api.exec_start(api.exec_create(self._container_name(lab, node), argv)["Id"], detach=True)

    def put_file(self, lab: str, node: str, path: str, data: bytes, mode: int) -> None:
        buffer = io.BytesIO()
        with tarfile.open(fileobj=buffer, mode="w") as tar:
            info = tarfile.TarInfo(path.lstrip("/"))
            info.size, info.mode, info.mtime = len(data), mode, int(time.time())
            tar.addfile(info, io.BytesIO(data))
        if not self.client.api.put_archive(self._container_name(lab, node), "/", buffer.getvalue()):
            raise LabError(f"{node}: could not write {path}")

    def get_file(self, lab: str, node: str, path: str) -> bytes:
        stream, _ = self.client.api.get_archive(self._container_name(lab, node), path)
        with tarfile.open(fileobj=io.BytesIO(b"".join(stream))) as tar:
            member = tar.next()
            extracted = tar.extractfile(member) if member else None
            if extracted is None:
                raise LabError(f"{node}: {path} is not a regular file")
            return extracted.read()

    def capture(self, lab: str, node: str, ifname: str, pcap: Path, bpf: str) -> Capture:
        return Fabric(lab).capture(node, ifname, pcap, bpf)

    def capture_segment(self, lab: str, segment: str, pcap: Path, bpf: str) -> Capture:
        return Fabric(lab).capture_segment(segment, pcap, bpf)

    def set_link(self, lab: str, node: str, ifname: str, up: bool) -> None:
        Fabric(lab).set_link(node, ifname, up)

    def command_line(self, lab: str, node: str, argv: list[str], tty: bool) -> list[str]:
        self._container(lab, node)
        return ["docker", "exec", "-i", *(["-t"] if tty else []), self._container_name(lab, node), *argv]

    def copy_to(self, lab: str, node: str, source: Path, destination: str) -> None:
        into_folder = self.exec(lab, node, ["test", "-d", destination]).ok
        target = Path(destination) / source.name if into_folder else Path(destination)
        buffer = io.BytesIO()
        with tarfile.open(fileobj=buffer, mode="w") as tar:
            tar.add(source, arcname=target.name)
        container = self._container_name(lab, node)
        if not self.client.api.put_archive(container, str(target.parent), buffer.getvalue()):
            raise LabError(f"{node}: could not write {target}")

    def copy_from(self, lab: str, node: str, source: str, destination: Path) -> None:
        try:
            stream, _ = self.client.api.get_archive(self._container_name(lab, node), source)
        except docker.errors.NotFound:
            raise LabError(f"{node}: no {source}") from None
        target = destination / Path(source).name if destination.is_dir() else destination
        with tarfile.open(fileobj=io.BytesIO(b"".join(stream))) as tar:
            members = tar.getmembers()
            top = members[0].name
            for member in members:  # the archive holds `top` (and, for a folder, what is under it)
                member.name = target.name + member.name[len(top) :]
            tar.extractall(target.parent, members, filter="data")

    def testinfra_url(self, lab: str, node: str) -> str:
        return f"docker://{self._container_name(lab, node)}"
