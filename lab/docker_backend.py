"""The Docker backend: one container per node, data links wired by pyroute2 through a fabric namespace.

Layout of a running lab named L:
- containers `L-<node>` (network_mode none, NET_ADMIN/NET_RAW, /dev/net/tun), labelled
  ipsec-lab.lab=L, ipsec-lab.node, ipsec-lab.role, ipsec-lab.topology;
- a network namespace `ilab-L` (the *fabric*) holding one Linux bridge per segment (ageing 0, so a tap sees
  every frame) and, for each node interface, a veth whose fabric end is on the bridge and whose other end is
  moved into the container and renamed (eth1, ...). Host netfilter never sees lab frames, and deleting the
  fabric namespace removes every bridge and veth at once: `down` is idempotent, even after a crash.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import re
import shlex
import subprocess
import tarfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import docker
from pyroute2 import IPRoute, netns

from lab import model
from lab.capture import Capture, wait_until
from lab.images import Images

log = logging.getLogger("lab")

LABEL = "ipsec-lab"
IPSECD_CONFIG = "/etc/ipsecd/ipsecd.yaml"
FIREWALL_RULES = "/etc/lab/firewall.nft"
IPSECD_LOG = "/var/log/ipsecd.log"
IPSECD_SOCKET = "/run/ipsecd.sock"  # docs/ARCHITECTURE.md: ipsecctl <-> ipsecd
RESULTS = Path(os.environ.get("LAB_RESULTS", Path.cwd() / "results"))


class LabError(RuntimeError):
    pass


class CommandError(LabError):
    """A command in a node failed; the message shows the command and its output."""

    def __init__(self, node: str, argv: list[str], result: ExecResult):
        self.result = result
        super().__init__(
            f"{node}: `{shlex.join(argv)}` exited {result.rc}\n"
            f"--- stdout\n{result.stdout}--- stderr\n{result.stderr}"
        )


@dataclass
class ExecResult:
    rc: int
    stdout: str
    stderr: str

    @property
    def ok(self) -> bool:
        return self.rc == 0


def fabric_name(lab: str) -> str:
    return f"ilab-{lab}"


def _short(prefix: str, *parts: str) -> str:
    """A readable interface name of at most 15 characters, or a hashed one if the readable one is longer."""
    readable = "-".join(parts)
    return readable if len(readable) <= 15 else _hashed(prefix, *parts)


def _hashed(prefix: str, *parts: str) -> str:
    return prefix + hashlib.sha256("/".join(parts).encode()).hexdigest()[: 15 - len(prefix)]


class Process:
    """A background process in a node, started by Node.spawn; its output goes to `log_path` in the node."""

    def __init__(self, node: Node, name: str, log_path: str):
        self.node, self.name, self.log_path = node, name, log_path
        self.pid_path = f"/run/lab/{name}.pid"

    @property
    def pid(self) -> int:
        return int(self.node.exec(["cat", self.pid_path], check=True).stdout)

    def alive(self) -> bool:
        return self.node.exec(["sh", "-c", f"kill -0 $(cat {self.pid_path}) 2>/dev/null"]).ok

    def log(self) -> str:
        return self.node.exec(["cat", self.log_path]).stdout

    def wait_for_log(self, text: str, timeout: float = 10) -> str:
        """Poll the log until `text` appears; return the log."""
        return wait_until(
            lambda: text in (out := self.log()) and out,
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
    """A handle on a running node: exec, files, background processes, addresses, captures."""

    def __init__(self, lab: Lab, spec: model.Node, container):
        self.lab, self.spec, self.container = lab, spec, container
        self.name = spec.name
        self._host = None

    def __repr__(self) -> str:
        return f"<Node {self.container.name}>"

    @property
    def pid(self) -> int:
        return self.container.attrs["State"]["Pid"]

    @property
    def netns_path(self) -> str:
        return f"/proc/{self.pid}/ns/net"

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
        rc, (out, err) = self.container.exec_run(full, demux=True, environment=env)
        result = ExecResult(rc, (out or b"").decode(errors="replace"), (err or b"").decode(errors="replace"))
        if check and not result.ok:
            raise CommandError(self.name, argv, result)
        return result

    def put_file(self, path: str, content: str | bytes, mode: int = 0o644) -> None:
        """Write a file into the node (parent folders are created)."""
        data = content.encode() if isinstance(content, str) else content
        buffer = io.BytesIO()
        with tarfile.open(fileobj=buffer, mode="w") as tar:
            info = tarfile.TarInfo(path.lstrip("/"))
            info.size, info.mode, info.mtime = len(data), mode, int(time.time())
            tar.addfile(info, io.BytesIO(data))
        if not self.container.put_archive("/", buffer.getvalue()):
            raise LabError(f"{self.name}: could not write {path}")

    def get_file(self, path: str) -> bytes:
        stream, _ = self.container.get_archive(path)
        with tarfile.open(fileobj=io.BytesIO(b"".join(stream))) as tar:
            member = tar.next()
            extracted = tar.extractfile(member) if member else None
            if extracted is None:
                raise LabError(f"{self.name}: {path} is not a regular file")
            return extracted.read()

    def spawn(self, argv: list[str], name: str | None = None, log: str | None = None) -> Process:
        """Start a long-running process in the background (ipsecd, iperf3 -s, ...); returns its handle."""
        name = name or Path(argv[0]).name
        log_path = log or f"/var/log/lab/{name}.log"
        script = (
            f"mkdir -p /run/lab {shlex.quote(str(Path(log_path).parent))}; echo $$ > /run/lab/{name}.pid; "
            f'exec "$@" >> {shlex.quote(log_path)} 2>&1'
        )
        self.container.exec_run(["sh", "-c", script, name, *argv], detach=True)
        process = Process(self, name, log_path)
        wait_until(
            lambda: self.exec(["test", "-s", process.pid_path]).ok, 10, what=f"{self.name}: {name} to start"
        )
        return process

    def process(self, name: str, log: str | None = None) -> Process:
        """The handle of a process spawned earlier under `name` (e.g. "ipsecd", started by `lab up`)."""
        return Process(self, name, log or (IPSECD_LOG if name == "ipsecd" else f"/var/log/lab/{name}.log"))

    def firewall(self, drop: list[str]) -> None:
        """Replace the node's firewall: drop what `drop` names ("esp", "udp/500", ...); [] lifts it."""
        self.put_file(FIREWALL_RULES, firewall_ruleset(drop))
        self.exec(["nft", "-f", FIREWALL_RULES], check=True)

    def dropped(self) -> int:
        """Packets the node's firewall has dropped so far."""
        rules = self.exec(["nft", "list", "table", "inet", "lab_firewall"]).stdout
        return sum(int(n) for n in re.findall(r"counter packets (\d+)", rules))

    def capture(self, ifname: str, name: str | None = None, bpf: str = "") -> Capture:
        """A capture of this node's interface (taken on its fabric end); use as a context manager."""
        if ifname not in self.spec.interfaces:
            raise KeyError(f"{self.name} has no interface {ifname!r} ({', '.join(self.spec.interfaces)})")
        label = name or f"{self.name}-{ifname}"
        return Capture(self.lab.fabric, _short("v", self.name, ifname), self.lab.pcap_path(label), bpf)

    @property
    def host(self):
        """A testinfra host for this node (pytest-testinfra's docker backend)."""
        if self._host is None:
            import testinfra

            self._host = testinfra.get_host(f"docker://{self.container.name}")
        return self._host


class Lab:
    """A running lab: its name, topology, node handles and results folder."""

    def __init__(self, name: str, topology: model.Topology, results_dir: Path, backend: DockerBackend):
        self.name, self.topology, self.results_dir, self.backend = name, topology, results_dir, backend
        self.fabric = fabric_name(name)
        self.nodes: dict[str, Node] = {}

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
        """A capture of a whole segment (its bridge in the fabric): every frame between its members."""
        if segment not in self.topology.segments:
            raise KeyError(f"lab {self.name}: no segment {segment!r}")
        return Capture(self.fabric, _short("b", segment), self.pcap_path(f"segment-{segment}"), bpf)

    def set_link(self, node: str, ifname: str, up: bool) -> None:
        """Cut or restore a node's link at the fabric end (the node sees its carrier go down), e.g. to make
        a domain controller or a peer unreachable."""
        if ifname not in self.topology.node(node).interfaces:
            raise KeyError(f"{node} has no interface {ifname!r}")
        with IPRoute(netns=self.fabric) as ipr:
            ipr.link(
                "set",
                index=ipr.link_lookup(ifname=_short("v", node, ifname))[0],
                state="up" if up else "down",
            )

    def restart(self, node: str) -> Node:
        """A new container for `node`, wired and configured again (see DockerBackend.restart)."""
        return self.backend.restart(self, node)

    def down(self) -> None:
        self.backend.down(self.name)


class DockerBackend:
    """Brings topologies up and down as Docker containers; no global state, so several labs can coexist."""

    def __init__(self, client: docker.DockerClient | None = None, images: Images | None = None):
        self.client = client or docker.from_env()
        self.images = images or Images(self.client)

    # -- discovery ---------------------------------------------------------------------------------------
    def containers(self, lab: str | None = None) -> list:
        label = f"{LABEL}.lab={lab}" if lab else f"{LABEL}.lab"
        return self.client.containers.list(all=True, filters={"label": label})

    def labs(self) -> list[str]:
        found = {c.labels[f"{LABEL}.lab"] for c in self.containers()}
        found |= {n.removeprefix("ilab-") for n in netns.listnetns() if n.startswith("ilab-")}
        return sorted(found)

    # -- up ----------------------------------------------------------------------------------------------
    def up(self, topology: model.Topology, name: str | None = None, results_dir: Path | None = None) -> Lab:
        """Create containers, wire them, configure them, and return once every node is ready."""
        name = name or topology.name
        if not topology.runnable:
            raise LabError(f"topology {topology.name} is not runnable yet: {topology.reason}")
        if self.containers(name) or fabric_name(name) in netns.listnetns():
            raise LabError(f"lab {name} is already up (or left over): `lab down --name {name}` first")
        lab = Lab(name, topology, results_dir or RESULTS / "labs" / name, self)
        tags = {kind: self.images.ensure(kind) for kind in {n.image for n in topology.nodes.values()}}
        try:
            with ThreadPoolExecutor(max_workers=8) as pool:
                started = pool.map(
                    lambda n: self._start_container(lab, n, tags[n.image]), topology.nodes.values()
                )
                fabric = pool.submit(self._make_fabric, lab)
                lab.nodes = {node.name: node for node in started}
                fabric.result()
            for node in lab.nodes.values():
                self._wire(lab, node)
            wait_until(
                lambda: all(self._ready(n) for n in lab.nodes.values()),
                10,
                what=f"lab {name}: every node running with its interfaces up",
            )
            with ThreadPoolExecutor(max_workers=8) as pool:
                list(pool.map(self._configure, lab.nodes.values()))
        except BaseException:
            self.down(name)
            raise
        lab.results_dir.mkdir(parents=True, exist_ok=True)
        (lab.results_dir / "lab.json").write_text(json.dumps(self.describe(lab), indent=2))
        return lab

    def attach(self, name: str, topology: model.Topology, results_dir: Path | None = None) -> Lab:
        """A handle on an already running lab (for `lab exec`, `lab capture`)."""
        lab = Lab(name, topology, results_dir or RESULTS / "labs" / name, self)
        found = {c.labels[f"{LABEL}.node"]: c for c in self.containers(name)}
        missing = set(topology.nodes) - set(found)
        if missing:
            raise LabError(f"lab {name} is not up (missing nodes: {', '.join(sorted(missing))})")
        lab.nodes = {n: Node(lab, topology.nodes[n], found[n]) for n in topology.nodes}
        return lab

    def _start_container(self, lab: Lab, spec: model.Node, image: str) -> Node:
        labels = {
            f"{LABEL}.lab": lab.name,
            f"{LABEL}.node": spec.name,
            f"{LABEL}.role": spec.role,
            f"{LABEL}.topology": str(lab.topology.path or lab.topology.name),
        }
        container = self.client.containers.run(
            image,
            ["sleep", "infinity"],
            name=f"{lab.name}-{spec.name}",
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
        return Node(lab, spec, container)

    def _make_fabric(self, lab: Lab) -> None:
        """The fabric namespace: a bridge per segment, a veth per node interface (both ends still in it)."""
        netns.create(lab.fabric)
        _in_fabric(
            lab.fabric,
            "for f in /proc/sys/net/ipv6/conf/*/disable_ipv6; do echo 1 > $f; done; "
            "for f in /proc/sys/net/bridge/bridge-nf-call-*; do [ -e $f ] && echo 0 > $f; done; "
            "true",
        )
        with IPRoute(netns=lab.fabric) as ipr:
            for segment in lab.topology.segments:
                bridge = _short("b", segment)
                ipr.link("add", ifname=bridge, kind="bridge", br_ageing_time=0, br_stp_state=0)
                ipr.link("set", index=ipr.link_lookup(ifname=bridge)[0], state="up")
        self._make_links(lab, lab.topology.nodes.values())

    @staticmethod
    def _make_links(lab: Lab, specs) -> None:
        """A veth per interface of the nodes `specs`: fabric end on the segment's bridge, TX offload off.

        TX checksum offload off: captures (on the fabric ends) show the checksums a real wire carries.
        GRO on the node's end, as a real NIC's driver has it: a veth merges received TCP segments only when
        asked explicitly, and without it a gateway hands ipsecd one forwarded packet per TUN read instead
        of a super-packet. Captures are unaffected: they see the packets before the node's GRO.
        """
        ethtool = []
        with IPRoute(netns=lab.fabric) as ipr:
            for spec in specs:
                for iface in spec.interfaces.values():
                    outer = _short("v", spec.name, iface.name)
                    inner = _hashed("t", lab.name, spec.name, iface.name)
                    ipr.link("add", ifname=outer, kind="veth", peer={"ifname": inner})
                    bridge = ipr.link_lookup(ifname=_short("b", iface.segment))[0]
                    ipr.link("set", index=ipr.link_lookup(ifname=outer)[0], master=bridge, state="up")
                    ethtool += [f"ethtool -K {outer} tx off", f"ethtool -K {inner} tx off gro on"]
        _in_fabric(lab.fabric, " >/dev/null && ".join(ethtool) + " >/dev/null")

    def restart(self, lab: Lab, name: str) -> Node:
        """Recreate one node's container and re-wire its links (links die with the container's namespace),
        then configure it as `up` does. Files and processes in the node are gone; its addresses are not."""
        spec = lab.topology.node(name)
        lab.node(name).container.remove(force=True)
        ends = {_short("v", name, ifname) for ifname in spec.interfaces}

        def links_gone() -> bool:
            with IPRoute(netns=lab.fabric) as ipr:
                return not ends & {link.get_attr("IFLA_IFNAME") for link in ipr.get_links()}

        wait_until(links_gone, 10, what=f"{name}'s old links to disappear")
        self._make_links(lab, [spec])
        node = lab.nodes[name] = self._start_container(lab, spec, self.images.ensure(spec.image))
        self._wire(lab, node)
        wait_until(
            lambda: self._ready(node), 10, what=f"{node.container.name} running with its interfaces up"
        )
        self._configure(node)
        return node

    def _wire(self, lab: Lab, node: Node) -> None:
        """Move the node's veth ends into its namespace; name, MAC, MTU, address, routes."""
        with IPRoute(netns=lab.fabric) as fabric:
            for iface in node.spec.interfaces.values():
                inner = _hashed("t", lab.name, node.name, iface.name)
                fabric.link("set", index=fabric.link_lookup(ifname=inner)[0], net_ns_fd=node.netns_path)
        with IPRoute(netns=node.netns_path) as ipr:
            for iface in node.spec.interfaces.values():
                index = ipr.link_lookup(ifname=_hashed("t", lab.name, node.name, iface.name))[0]
                mac = iface.mac or model.mac_address(lab.name, node.name, iface.name)
                settings = {"ifname": iface.name, "address": mac}
                if iface.mtu:
                    settings["mtu"] = iface.mtu
                ipr.link("set", index=index, **settings)
                ipr.link("set", index=index, state="up")
                if iface.address is not None:
                    ipr.addr(
                        "add",
                        index=index,
                        address=str(iface.address.ip),
                        prefixlen=iface.address.network.prefixlen,
                    )
            for route in node.spec.routes:
                ipr.route("add", dst=str(route.to), gateway=str(route.via))

    def _ready(self, node: Node) -> bool:
        """Running, and every interface up with its address (checked over netlink, no exec)."""
        node.container.reload()
        if node.container.status != "running":
            raise LabError(
                f"{node.container.name} is {node.container.status}: {node.container.logs()[-500:]!r}"
            )
        with IPRoute(netns=node.netns_path) as ipr:
            links = {link.get_attr("IFLA_IFNAME"): link for link in ipr.get_links()}
            addresses = {a.get_attr("IFA_ADDRESS") for a in ipr.get_addr(family=2)}
        return all(
            iface.name in links
            and links[iface.name].get_attr("IFLA_OPERSTATE") == "UP"
            and (iface.address is None or str(iface.address.ip) in addresses)
            for iface in node.spec.interfaces.values()
        )

    def _configure(self, node: Node) -> None:
        """Names of the other nodes in /etc/hosts, role settings (NAT rules), then ipsecd; after wiring."""
        node.put_file("/etc/lab/hosts", hosts_file(node.lab.topology))
        setup = ["cat /etc/lab/hosts >> /etc/hosts"]
        if node.spec.nat is not None:
            node.put_file("/etc/lab/nat.nft", nat_ruleset(node.spec.nat))
            setup.append("nft -f /etc/lab/nat.nft")
        if node.spec.drop:
            node.put_file(FIREWALL_RULES, firewall_ruleset(node.spec.drop))
            setup.append(f"nft -f {FIREWALL_RULES}")
        node.exec(" && ".join(setup), check=True)
        if node.spec.ipsecd is not None:
            node.put_file(IPSECD_CONFIG, node.spec.ipsecd.read_text())
            if node.exec(["python3", "-c", "import ipsecd.daemon"]).ok:
                self._start_ipsecd(node)
            else:
                log.warning(
                    "%s: ipsecd is not installed in this image; %s copied to %s, not started",
                    node.name,
                    node.spec.ipsecd,
                    IPSECD_CONFIG,
                )

    @staticmethod
    def _start_ipsecd(node: Node) -> None:
        """Start ipsecd and wait for its control socket; if it dies first, fail with the end of its log."""
        daemon = node.spawn(["ipsecd", "--config", IPSECD_CONFIG], name="ipsecd", log=IPSECD_LOG)

        def listening() -> bool:
            if node.exec(["test", "-S", IPSECD_SOCKET]).ok:
                return True
            if not daemon.alive():
                raise LabError(f"{node.name}: ipsecd exited at start; {IPSECD_LOG}:\n{daemon.log()[-2000:]}")
            return False

        wait_until(listening, 15, what=f"{node.name}: ipsecd to open {IPSECD_SOCKET}")
        log.info("%s: ipsecd started with %s", node.name, node.spec.ipsecd)

    def describe(self, lab: Lab) -> dict:
        """The lab as data (written to results/.../lab.json)."""
        return {
            "lab": lab.name,
            "topology": str(lab.topology.path),
            "fabric": lab.fabric,
            "nodes": {
                n.name: {
                    "container": n.container.name,
                    "id": n.container.id[:12],
                    "role": n.spec.role,
                    "image": n.container.image.tags[0] if n.container.image.tags else n.container.image.id,
                    "interfaces": {
                        i.name: {
                            "segment": i.segment,
                            "address": str(i.address) if i.address else None,
                            "mac": i.mac or model.mac_address(lab.name, n.name, i.name),
                        }
                        for i in n.spec.interfaces.values()
                    },
                }
                for n in lab.nodes.values()
            },
        }

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
        if fabric_name(name) in netns.listnetns():
            netns.remove(fabric_name(name))
            removed.append(f"netns {fabric_name(name)}")
        return removed

    def status(self) -> list[dict]:
        """One row per node of every lab on this machine: lab, node, role, state, addresses."""
        rows = []
        for c in sorted(self.containers(), key=lambda c: c.name):
            addresses = []
            if c.status == "running":
                with IPRoute(netns=f"/proc/{c.attrs['State']['Pid']}/ns/net") as ipr:
                    names = {link["index"]: link.get_attr("IFLA_IFNAME") for link in ipr.get_links()}
                    addresses = [
                        f"{names.get(a['index'])}={a.get_attr('IFA_ADDRESS')}/{a['prefixlen']}"
                        for a in ipr.get_addr(family=2)
                        if names.get(a["index"]) != "lo"
                    ]
            rows.append(
                {
                    "lab": c.labels.get(f"{LABEL}.lab"),
                    "node": c.labels.get(f"{LABEL}.node"),
                    "role": c.labels.get(f"{LABEL}.role"),
                    "state": c.status,
                    "addresses": addresses,
                }
            )
        return rows


def hosts_file(topology: model.Topology) -> str:
    """/etc/hosts lines: every node address, named `<node>` on its first interface, `<node>-<if>` on all."""
    lines = ["# lab nodes"]
    for node in topology.nodes.values():
        addressed = [i for i in node.interfaces.values() if i.address is not None]
        for position, iface in enumerate(addressed):
            names = [f"{node.name}-{iface.name}"] if position else [node.name, f"{node.name}-{iface.name}"]
            lines.append(f"{iface.address.ip}\t{' '.join(names)}")
    return "\n".join(lines) + "\n"


def nat_ruleset(nat: model.Nat) -> str:
    """The NAT box's nftables ruleset: masquerade out of `outside`, port rewriting, optional ESP drop."""
    to_ports = f" to :{nat.ports[0]}-{nat.ports[1]}" if nat.ports else ""
    flags = " random" if nat.random else ""
    lines = ["table ip lab_nat {", "  chain postrouting {", "    type nat hook postrouting priority srcnat;"]
    if nat.ports:
        lines += [f"    oifname {nat.outside} meta l4proto {{ tcp, udp }} masquerade{to_ports}{flags}"]
    lines += [f"    oifname {nat.outside} masquerade{flags}", "  }"]
    return "\n".join([*lines, "}", ""])


def firewall_ruleset(drop: list[str]) -> str:
    """The node firewall (table inet lab_firewall): drop, with a counter, what `drop` names, in every
    direction. An empty list gives an empty table, so applying it lifts the firewall."""
    matches = []
    for name in drop:
        proto, _, port = name.partition("/")
        matches += [f"{proto} dport {port}", f"{proto} sport {port}"] if port else [f"meta l4proto {proto}"]
    lines = ["table inet lab_firewall {}", "delete table inet lab_firewall", "table inet lab_firewall {"]
    for hook in ("input", "forward", "output"):
        lines += [f"  chain {hook} {{", f"    type filter hook {hook} priority filter;"]
        lines += [f"    {match} counter drop" for match in matches]
        lines.append("  }")
    return "\n".join([*lines, "}", ""])


def _in_fabric(fabric: str, script: str) -> None:
    done = subprocess.run(["ip", "netns", "exec", fabric, "sh", "-c", script], capture_output=True, text=True)
    if done.returncode:
        raise LabError(f"in {fabric}: `{script}` failed: {done.stderr.strip()}")
