"""strongSwan ↔ strongSwan on gateway-tunnel: IKEv1 setup latency and iperf3 through its userspace data plane.

The anchor for ipsecd's rows (../shared/research/strongswan-peer.md measured 5.5-13 ms protocol time and
466 / 542 / 104 Mbit/s TCP for AES-128-CBC/SHA1, AES-128-GCM, 3DES/SHA1 on this machine). Both gateways run
charon with kernel-libipsec: ESP in UDP 4500, both charons in userspace sharing the 2 cores with iperf3.

- setup: median of BENCH_IKE_RUNS (20) `swanctl --initiate` runs, each after deleting every SA; "protocol"
  is the initiator's log time from `initiating Main Mode` (first packet) to `CHILD_SA ... established`
  (SA installed), the note adds the wall time of the swanctl command (process start + vici round trip).
- throughput: one TCP iperf3 stream host-a → host-b for BENCH_SECONDS (5), and the charons' CPU.

    python -m bench strongswan
"""

from __future__ import annotations

import os
import statistics
import sys
import time
from pathlib import Path

from bench.common import Row
from lab import topology
from lab.docker_backend import DockerBackend, Node
from lab.pytest_plugin import lab_prefix
from lab.strongswan import Charon, Tunnel
from lab.traffic import iperf3

RUNS = int(os.environ.get("BENCH_IKE_RUNS", "20"))
SECONDS = float(os.environ.get("BENCH_SECONDS", "5"))
GATEWAY = {"image": "strongswan", "routes": []}
#: main mode proposal, ESP proposal (swanctl's names)
SETUP_SUITES = (("3des-sha1-modp1024", "3des-sha1"), ("aes128-sha1-modp2048", "aes128-sha1"))
#: ESP proposal, the name ipsecd's data-plane rows use
DATA_SUITES = (
    ("aes128gcm16", "aes-gcm-128"),
    ("aes128-sha1", "aes-128-cbc/sha1"),
    ("3des-sha1", "3des-sha1"),
)


def tunnels(lab, ike: str, esp: str) -> dict[str, Tunnel]:
    """The PSK tunnel of each gateway towards the other (WAN addresses, site subnets from the topology)."""
    wan = {n: lab.node(n).address("eth2") for n in ("gw-a", "gw-b")}
    site = {n: str(lab.topology.node(n).interfaces["eth1"].address.network) for n in ("gw-a", "gw-b")}
    return {
        me: Tunnel(wan[me], wan[peer], site[me], site[peer], ike, esp, psk="bench")
        for me, peer in (("gw-a", "gw-b"), ("gw-b", "gw-a"))
    }


def fresh_sa(charons: dict[str, Charon], lab, ike: str, esp: str) -> float:
    """Delete every SA, load the suite, initiate from gw-a; returns the wall time of the initiation."""
    for name, charon in charons.items():
        charon.terminate()
        charon.load(tunnels(lab, ike, esp)[name])
    started = time.perf_counter()
    charons["gw-a"].initiate()
    return time.perf_counter() - started


def machine_busy(seconds: float = 1.0) -> float:
    """Percent of the machine's CPU busy over `seconds` (other tenants' load: the numbers' context)."""

    def sample() -> tuple[float, float]:
        fields = [float(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
        return sum(fields) - fields[3] - fields[4], sum(fields)

    busy, total = sample()
    time.sleep(seconds)
    busy2, total2 = sample()
    return 100 * (busy2 - busy) / (total2 - total)


def cpu_seconds(node: Node) -> float:
    """CPU time charon has used so far in `node`."""
    stat = node.exec("cut -d' ' -f14,15 /proc/$(cat /run/lab/charon.pid)/stat", check=True).stdout.split()
    return sum(int(x) for x in stat) / os.sysconf("SC_CLK_TCK")


def run() -> list[Row]:
    backend = DockerBackend()
    topo = topology.load("gateway-tunnel", {"nodes": {"gw-a": GATEWAY, "gw-b": GATEWAY}})
    name = f"{lab_prefix()}-bench-ss"
    for kind in {n.image for n in topo.nodes.values()}:
        backend.images.ensure(kind)
    backend.down(name)
    lab = backend.up(topo, name)
    rows = []
    try:
        charons = {n: Charon(lab.node(n)).start() for n in ("gw-a", "gw-b")}
        for ike, esp in SETUP_SUITES:
            idle_check = machine_busy()
            logged = len(charons["gw-a"].setup_times())
            walls = [fresh_sa(charons, lab, ike, esp) for _ in range(RUNS)]
            protocol = charons["gw-a"].setup_times()[logged:]
            if len(protocol) != RUNS:
                raise RuntimeError(f"{len(protocol)} setups in gw-a's log for {RUNS} initiations ({ike})")
            rows.append(
                Row(
                    f"IKEv1 MM+QM setup strongSwan↔strongSwan {ike}",
                    statistics.median(protocol) * 1000,
                    "ms",
                    note=f"median of {RUNS}, min {min(protocol) * 1000:.0f} max {max(protocol) * 1000:.0f}; "
                    f"wall of docker exec swanctl --initiate {statistics.median(walls) * 1000:.0f} ms; "
                    f"machine {idle_check:.0f}% busy before",
                )
            )
        for esp, label in DATA_SUITES:
            fresh_sa(charons, lab, "aes128-sha1-modp2048", esp)
            idle_check = machine_busy()
            gateways = [lab.node("gw-a"), lab.node("gw-b")]
            cpu, started = [cpu_seconds(g) for g in gateways], time.monotonic()
            end = iperf3(lab.node("host-a"), lab.node("host-b"), seconds=SECONDS)
            elapsed = time.monotonic() - started
            used = [100 * (cpu_seconds(g) - c) / elapsed for g, c in zip(gateways, cpu, strict=True)]
            rows.append(
                Row(
                    f"TCP strongSwan tunnel {label}",
                    end["sum_received"]["bits_per_second"] / 1e6,
                    "Mbit/s",
                    higher_is_better=True,
                    note=f"{end['sum_sent'].get('retransmits')} retransmits, charon gw-a {used[0]:.0f}% "
                    f"gw-b {used[1]:.0f}% of a core; machine {idle_check:.0f}% busy before",
                )
            )
    finally:
        backend.down(name)
    print("ipsecd↔ipsecd and ipsecd↔strongSwan setup: not measured until ipsecd runs IKE", file=sys.stderr)
    return rows
