"""The Docker backend (lab.backend.Backend): one container per node, links made by lab.fabric.

Layout of a running lab named L:
- containers `L-<node>` (network_mode none, NET_ADMIN/NET_RAW, /dev/net/tun) running `sleep infinity`,
  labelled ipsec-lab.lab=L, ipsec-lab.node, ipsec-lab.role, ipsec-lab.topology;
- the fabric namespace `ilab-L` (lab.fabric), whose veths end in the containers' network namespaces.
What a node runs is not this module's business: once a container is wired, lab.node_setup configures it
through its handle (lab.running.Node), starting the services of its image (images/<kind>/image.yaml).
"""

from __future__ import annotations

import io
import json
import tarfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import docker
from docker.models.containers import Container

from lab import fabric, model, node_setup
from lab.backend import RESULTS, ExecResult, LabError, NodeInstance, NodeStatus
from lab.capture import Capture, wait_until
from lab.fabric import Fabric
from lab.images import Images
from lab.running import Lab, Node

LABEL = "ipsec-lab"


def _netns_path(container: Container) -> str:
    return f"/proc/{container.attrs['State']['Pid']}/ns/net"


class DockerBackend:
    """Brings topologies up and down as Docker containers; no global state, so several labs can coexist."""

    def __init__(self, client: docker.DockerClient | None = None, images: Images | None = None):
        self.client = client or docker.from_env()
        self.images = images or Images(self.client)

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
        """Create containers, wire them, configure them, and return once every node is ready."""
        name = name or topology.name
        if not topology.runnable:
            raise LabError(f"topology {topology.name} is not runnable yet: {topology.reason}")
        links = Fabric(name)
        if self.containers(name) or links.exists():
            raise LabError(f"lab {name} is already up (or left over): `lab down --name {name}` first")
        lab = Lab(name, topology, results_dir or RESULTS / "labs" / name, self)
        tags = {kind: self.images.ensure(kind) for kind in {n.image for n in topology.nodes.values()}}
        try:
            with ThreadPoolExecutor(max_workers=8) as pool:
                started = pool.map(
                    lambda spec: self._start_container(lab, spec, tags[spec.image]), topology.nodes.values()
                )
                made = pool.submit(links.create, topology)
                specs = topology.nodes.values()
                containers = {spec.name: c for spec, c in zip(specs, started, strict=True)}
                made.result()
            for spec in topology.nodes.values():
                links.wire(spec, _netns_path(containers[spec.name]))
            wait_until(
                lambda: all(self._ready(spec, containers[spec.name]) for spec in topology.nodes.values()),
                10,
                what=f"lab {name}: every node running with its interfaces up",
            )
            with ThreadPoolExecutor(max_workers=8) as pool:
                list(pool.map(node_setup.configure, lab.nodes.values()))
        except BaseException:
            self.down(name)
            raise
        lab.results_dir.mkdir(parents=True, exist_ok=True)
        (lab.results_dir / "lab.json").write_text(json.dumps(self.describe(lab, containers), indent=2))
        return lab

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
        container.reload()
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
        wait_until(
            lambda: self._ready(spec, container), 10, what=f"{container.name} running with its interfaces up"
        )
        handle = lab.node(node)
        node_setup.configure(handle)
        return handle

    def _ready(self, spec: model.NodeSpec, container: Container) -> bool:
        """Running, and every interface up with its address (checked over netlink, no exec)."""
        container.reload()
        if container.status != "running":
            raise LabError(f"{container.name} is {container.status}: {container.logs()[-500:]!r}")
        return Fabric.wired(spec, _netns_path(container))

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
                    "image": self._image_name(containers[spec.name]),
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

    @staticmethod
    def _image_name(container: Container) -> str:
        image = container.image
        return image.tags[0] if image.tags else image.id

    # -- down and status ---------------------------------------------------------------------------------
    def down(self, name: str) -> list[str]:
        """Remove the lab's containers (found by label), its fabric namespace and capture processes.

        Idempotent: anything already gone is skipped. Returns what was removed."""
        removed = []
        containers = self.containers(name)
        with ThreadPoolExecutor(max_workers=8) as pool:
            list(pool.map(lambda c: c.remove(force=True), containers))
        removed += [c.name for c in containers]
        for pid_file in (RESULTS / "labs" / name).glob("*.pcap.pid"):
            Capture.stop_detached(pid_file)
        links = Fabric(name)
        if links.remove():
            removed.append(f"netns {links.name}")
        return removed

    def status(self) -> list[NodeStatus]:
        """One row per node of every lab on this machine: lab, node, role, state, addresses."""
        return [
            {
                "lab": c.labels[f"{LABEL}.lab"],
                "node": c.labels[f"{LABEL}.node"],
                "role": c.labels[f"{LABEL}.role"],
                "state": c.status,
                "addresses": fabric.addresses(_netns_path(c)) if c.status == "running" else [],
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

    def shell(self, lab: str, node: str) -> list[str]:
        return ["docker", "exec", "-it", self._container_name(lab, node), "bash"]

    def testinfra_url(self, lab: str, node: str) -> str:
        return f"docker://{self._container_name(lab, node)}"
