"""A lab's links on one machine, made with pyroute2: the *fabric* network namespace `ilab-<lab>`.

The fabric holds one Linux bridge per segment (ageing 0, so a tap sees every frame) and, for each node
interface, a veth whose fabric end is on the bridge and whose other end is moved into the node's network
namespace and renamed (eth1, ...). Host netfilter never sees lab frames, and deleting the fabric namespace
removes every bridge and veth at once. Any engine that gives each node a network namespace on this machine
can use it (the Docker backend does); it knows nothing of containers.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import subprocess
from collections.abc import Iterable
from pathlib import Path

from pyroute2 import IPRoute, netns

from lab import model
from lab.backend import LabError
from lab.capture import Capture, wait_until

PREFIX = "ilab-"
CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(None, use_errno=True)


def _iproute(namespace: str) -> IPRoute:
    """An IPRoute whose netlink socket lives in `namespace` (a path, or a name under /run/netns).

    The socket is made while this thread is in the namespace (setns affects only the calling thread), then
    the thread goes back: pyroute2's own `netns=` forks a helper process per socket, 33 ms each on an idle
    machine and far more on a busy one, three times per node at `lab up`; this takes 3 ms."""
    path = namespace if "/" in namespace else f"/run/netns/{namespace}"
    own = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    try:
        target = os.open(path, os.O_RDONLY)
        try:
            if _libc.setns(target, CLONE_NEWNET):
                raise LabError(f"cannot enter network namespace {path}: {os.strerror(ctypes.get_errno())}")
            try:
                return IPRoute()
            finally:
                if _libc.setns(own, CLONE_NEWNET):  # never go on in the wrong namespace
                    os.abort()
        finally:
            os.close(target)
    finally:
        os.close(own)


def _short(prefix: str, *parts: str) -> str:
    """A readable interface name of at most 15 characters, or a hashed one if the readable one is longer."""
    readable = "-".join(parts)
    return readable if len(readable) <= 15 else _hashed(prefix, *parts)


def _hashed(prefix: str, *parts: str) -> str:
    return prefix + hashlib.sha256("/".join(parts).encode()).hexdigest()[: 15 - len(prefix)]


def labs() -> set[str]:
    """Labs that have a fabric on this machine (up, or left over from a crash)."""
    return {n.removeprefix(PREFIX) for n in netns.listnetns() if n.startswith(PREFIX)}


def addresses(netns_path: str) -> list[str]:
    """`ifname=a.b.c.d/len` for every IPv4 address in a network namespace but loopback's."""
    with _iproute(netns_path) as ipr:
        names = {link["index"]: link.get_attr("IFLA_IFNAME") for link in ipr.get_links()}
        return [
            f"{names.get(a['index'])}={a.get_attr('IFA_ADDRESS')}/{a['prefixlen']}"
            for a in ipr.get_addr(family=2)
            if names.get(a["index"]) != "lo"
        ]


class Fabric:
    """The fabric of lab `lab`."""

    def __init__(self, lab: str):
        self.lab = lab
        self.name = f"{PREFIX}{lab}"

    def exists(self) -> bool:
        return self.name in netns.listnetns()

    def create(self, topology: model.Topology) -> None:
        """The namespace, a bridge per segment, a veth per node interface (both ends still in it)."""
        netns.create(self.name)
        self._run(
            "for f in /proc/sys/net/ipv6/conf/*/disable_ipv6; do echo 1 > $f; done; "
            "for f in /proc/sys/net/bridge/bridge-nf-call-*; do [ -e $f ] && echo 0 > $f; done; "
            "true"
        )
        with _iproute(self.name) as ipr:
            for segment in topology.segments:
                bridge = _short("b", segment)
                ipr.link("add", ifname=bridge, kind="bridge", br_ageing_time=0, br_stp_state=0)
                ipr.link("set", index=ipr.link_lookup(ifname=bridge)[0], state="up")
        self.make_links(topology.nodes.values())

    def remove(self) -> bool:
        """Delete the namespace (every bridge and veth with it); False if there was none."""
        if not self.exists():
            return False
        netns.remove(self.name)
        return True

    def make_links(self, specs: Iterable[model.NodeSpec]) -> None:
        """A veth per interface of the nodes `specs`: fabric end on the segment's bridge, TX offload off.

        TX checksum offload off: captures (on the fabric ends) show the checksums a real wire carries.
        GRO on the node's end, as a real NIC's driver has it: a veth merges received TCP segments only when
        asked explicitly, and without it a gateway hands ipsecd one forwarded packet per TUN read instead
        of a super-packet. Captures are unaffected: they see the packets before the node's GRO.
        """
        ethtool = []
        with _iproute(self.name) as ipr:
            for spec in specs:
                for iface in spec.interfaces.values():
                    outer = _short("v", spec.name, iface.name)
                    inner = self._inner(spec.name, iface.name)
                    ipr.link("add", ifname=outer, kind="veth", peer={"ifname": inner})
                    bridge = ipr.link_lookup(ifname=_short("b", iface.segment))[0]
                    ipr.link("set", index=ipr.link_lookup(ifname=outer)[0], master=bridge, state="up")
                    ethtool += [f"ethtool -K {outer} tx off", f"ethtool -K {inner} tx off gro on"]
        self._run(" >/dev/null && ".join(ethtool) + " >/dev/null")

    def wait_links_gone(self, spec: model.NodeSpec) -> None:
        """Wait until the node's veths are gone (they die with its network namespace)."""
        ends = {_short("v", spec.name, ifname) for ifname in spec.interfaces}

        def gone() -> bool:
            with _iproute(self.name) as ipr:
                return not ends & {link.get_attr("IFLA_IFNAME") for link in ipr.get_links()}

        wait_until(gone, 10, what=f"{spec.name}'s old links to disappear")

    def wire(self, spec: model.NodeSpec, netns_path: str) -> None:
        """Move the node's veth ends into its namespace; name, MAC, MTU, address, routes."""
        with _iproute(self.name) as fabric:
            for iface in spec.interfaces.values():
                inner = self._inner(spec.name, iface.name)
                fabric.link("set", index=fabric.link_lookup(ifname=inner)[0], net_ns_fd=netns_path)
        with _iproute(netns_path) as ipr:
            for iface in spec.interfaces.values():
                index = ipr.link_lookup(ifname=self._inner(spec.name, iface.name))[0]
                mac = iface.mac or model.mac_address(self.lab, spec.name, iface.name)
                settings: dict[str, str | int] = {"ifname": iface.name, "address": mac}
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
            for route in spec.routes:
                ipr.route("add", dst=str(route.to), gateway=str(route.via))

    @staticmethod
    def wired(spec: model.NodeSpec, netns_path: str) -> bool:
        """Every interface of the node up with its address (read over netlink)."""
        with _iproute(netns_path) as ipr:
            links = {link.get_attr("IFLA_IFNAME"): link for link in ipr.get_links()}
            found = {a.get_attr("IFA_ADDRESS") for a in ipr.get_addr(family=2)}
        return all(
            iface.name in links
            and links[iface.name].get_attr("IFLA_OPERSTATE") == "UP"
            and (iface.address is None or str(iface.address.ip) in found)
            for iface in spec.interfaces.values()
        )

    def set_link(self, node: str, ifname: str, up: bool) -> None:
        """Bring the fabric end of a node's link down or up (the node sees its carrier go)."""
        with _iproute(self.name) as ipr:
            ipr.link(
                "set",
                index=ipr.link_lookup(ifname=_short("v", node, ifname))[0],
                state="up" if up else "down",
            )

    def capture(self, node: str, ifname: str, pcap: Path, bpf: str) -> Capture:
        """A capture on the fabric end of a node's link."""
        return Capture(self.name, _short("v", node, ifname), pcap, bpf)

    def capture_segment(self, segment: str, pcap: Path, bpf: str) -> Capture:
        """A capture on a segment's bridge."""
        return Capture(self.name, _short("b", segment), pcap, bpf)

    def _inner(self, node: str, ifname: str) -> str:
        """The node end's name while it is still in the fabric (unique per lab, node and interface)."""
        return _hashed("t", self.lab, node, ifname)

    def _run(self, script: str) -> None:
        done = subprocess.run(
            ["ip", "netns", "exec", self.name, "sh", "-c", script], capture_output=True, text=True
        )
        if done.returncode:
            raise LabError(f"in {self.name}: `{script}` failed: {done.stderr.strip()}")
