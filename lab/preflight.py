"""`lab check`: is this machine able to run labs, and what does its kernel offer the data plane?

Each check runs the real thing (in a scratch network namespace) rather than reading configuration, so the
answer holds for this kernel and this engine.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import uuid
from collections.abc import Callable
from dataclasses import dataclass

import docker

HOST_TOOLS = {
    "debootstrap": "builds the base image",
    "tcpdump": "captures",
    "ethtool": "checksum offload off",
    "ip": "netns exec",
    "dot": "lab graph (graphviz)",
}


@dataclass
class Check:
    name: str
    ok: bool
    detail: str
    required: bool = True


def _scratch(script: str) -> tuple[bool, str]:
    """Run `script` in a throwaway network namespace; (succeeded, output)."""
    name = f"ilab-check-{uuid.uuid4().hex[:6]}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        done = subprocess.run(
            ["ip", "netns", "exec", name, "sh", "-c", script], capture_output=True, text=True
        )
        return done.returncode == 0, (done.stdout + done.stderr).strip()
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False)


def _kernel(name: str, script: str, detail: str, required: bool) -> Callable[[], Check]:
    def check() -> Check:
        ok, output = _scratch(script)
        errors = [line for line in output.splitlines() if "rror" in line] or output.splitlines()[-1:]
        why = f" ({' '.join(errors).strip()})" if errors else ""
        return Check(name, ok, detail if ok else f"unavailable{why}: {detail}", required)

    return check


KERNEL = [
    _kernel(
        "veth + bridge",
        "ip link add name lb0 type bridge && ip link add name lv0 type veth peer name lv1 "
        "&& ip link set lv0 master lb0",
        "lab links",
        True,
    ),
    _kernel(
        "nftables nat",
        "nft add table ip n && nft add chain ip n p '{ type nat hook postrouting "
        "priority 100; }' && nft add rule ip n p masquerade",
        "NAT box",
        True,
    ),
    _kernel("tun device", "ip tuntap add dev t0 mode tun", "ipsec0 (userspace data plane)", True),
    _kernel("xfrm", "ip xfrm state list", "kernel IPsec state (per namespace)", False),
    _kernel(
        "nft queue",
        "nft add table inet q && nft add chain inet q c '{ type filter hook input priority 0; "
        "}' && nft add rule inet q c queue num 0 bypass",
        "NFQUEUE from nftables",
        False,
    ),
    _kernel(
        "iptables NFQUEUE",
        "iptables -A INPUT -j NFQUEUE --queue-num 0 --queue-bypass",
        "NFQUEUE through iptables (nft compat)",
        False,
    ),
    _kernel(
        "netem",
        "ip link add name lv0 type veth peer name lv1 && tc qdisc add dev lv0 root netem delay 1ms",
        "link delay/loss impairments (tc netem); not needed: lab.linkfaults impairs links with nftables "
        "and NFQUEUE, the scenarios drop packets with the node firewall (`drop:`)",
        False,
    ),
]


def checks() -> list[Check]:
    found = [Check("root", os.geteuid() == 0, "network namespaces and veths need root")]
    try:
        info = docker.from_env().info()
        found.append(Check("docker", True, f"engine {info['ServerVersion']}, storage {info['Driver']}"))
    except Exception as exc:  # any failure means: no engine for us
        found.append(Check("docker", False, f"engine not reachable: {exc}"))
    found += [Check(tool, shutil.which(tool) is not None, why) for tool, why in HOST_TOOLS.items()]
    found.append(Check("/dev/net/tun", os.path.exists("/dev/net/tun"), "given to every node"))
    if os.geteuid() == 0 and shutil.which("ip"):
        found += [check() for check in KERNEL]
    return found


def report() -> int:
    """Print every check; exit status 1 if a required one failed."""
    results = checks()
    for c in results:
        mark = "ok  " if c.ok else ("FAIL" if c.required else "no  ")
        print(f"{mark} {c.name:18} {c.detail}")
    return 0 if all(c.ok or not c.required for c in results) else 1
