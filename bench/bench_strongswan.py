"""IKEv1 setup latency and strongSwan's data plane on gateway-tunnel: strongSwan↔strongSwan is the anchor.

../shared/research/strongswan-peer.md measured 5.5-13 ms protocol time and 466 / 542 / 104 Mbit/s TCP for
AES-128-CBC/SHA1, AES-128-GCM, 3DES/SHA1 on this machine. strongSwan's gateways run charon with
kernel-libipsec: ESP in UDP 4500, both charons in userspace sharing the 2 cores with iperf3.

- setup (main mode + quick mode, PSK): median of BENCH_IKE_RUNS (20) initiations by gw-a, each after every
  SA was deleted, from main mode's first packet to the quick mode SA installed on the initiator:
  strongSwan↔strongSwan from charon's log (`initiating Main Mode` to `CHILD_SA ... established`);
  ipsecd↔strongSwan and ipsecd↔ipsecd from ipsecd's IKE component (lab/ike_probe.py: acquire to the SA
  handed to the driver), measured once the component is in this checkout.
- throughput: one TCP iperf3 stream host-a → host-b for BENCH_SECONDS (5) through strongSwan's tunnel, and
  the charons' CPU. ipsecd's rows are bench_dataplane's (same topology, same iperf3).

Each row notes how busy the machine was just before (other tenants share it).

    python -m bench strongswan
"""

from __future__ import annotations

import os
import statistics
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from bench.common import Row
from lab import topology
from lab.docker_backend import DockerBackend, Lab, Node
from lab.ike_probe import IkeProbe
from lab.pytest_plugin import lab_prefix
from lab.strongswan import Charon, Tunnel
from lab.traffic import iperf3

RUNS = int(os.environ.get("BENCH_IKE_RUNS", "20"))
SECONDS = float(os.environ.get("BENCH_SECONDS", "5"))
STRONGSWAN = {"image": "strongswan", "routes": []}
PSK = "bench"
#: (main mode proposal, ESP proposal) in swanctl's words, (encryption, Oakley group) in ipsecd's
SETUP_SUITES = (
    ("3des-sha1-modp1024", "3des-sha1", "3des", 2),
    ("aes128-sha1-modp2048", "aes128-sha1", "aes128", 14),
)
#: ESP proposal, the name ipsecd's data-plane rows use
DATA_SUITES = (
    ("aes128gcm16", "aes-gcm-128"),
    ("aes128-sha1", "aes-128-cbc/sha1"),
    ("3des-sha1", "3des-sha1"),
)
IKE_COMPONENT = Path(__file__).resolve().parent.parent / "ipsecd" / "ike" / "ike.py"


@contextmanager
def gateway_tunnel(name: str, strongswan: tuple[str, ...]) -> Iterator[Lab]:
    """gateway-tunnel with the gateways in `strongswan` running image strongswan (the others: node)."""
    backend = DockerBackend()
    topo = topology.load("gateway-tunnel", {"nodes": dict.fromkeys(strongswan, STRONGSWAN)})
    for kind in {n.image for n in topo.nodes.values()}:
        backend.images.ensure(kind)
    full = f"{lab_prefix()}-bench-{name}"
    backend.down(full)
    try:
        yield backend.up(topo, full)
    finally:
        backend.down(full)


def ends(lab: Lab, me: str) -> tuple[str, str, str, str]:
    """(own WAN address, peer's WAN address, own site, peer's site) of gateway `me`."""
    peer = "gw-b" if me == "gw-a" else "gw-a"
    wan = [lab.node(n).address("eth2") for n in (me, peer)]
    site = [str(lab.topology.node(n).interfaces["eth1"].address.network) for n in (me, peer)]
    return wan[0], wan[1], site[0], site[1]


def tunnel(lab: Lab, me: str, ike: str, esp: str) -> Tunnel:
    return Tunnel(*ends(lab, me), ike, esp, psk=PSK)


def probe_config(lab: Lab, me: str, encryption: str, group: int) -> dict:
    local, peer, local_net, remote_net = ends(lab, me)
    return {
        "local": local,
        "peer": peer,
        "local_net": local_net,
        "remote_net": remote_net,
        "encryption": encryption,
        "group": group,
        "psk": PSK,
    }


def fresh_sa(charons: dict[str, Charon], lab: Lab, ike: str, esp: str) -> None:
    """Delete every SA, load the suite, initiate from gw-a (swanctl returns once the SA is installed)."""
    for name, charon in charons.items():
        charon.terminate()
        charon.load(tunnel(lab, name, ike, esp))
    charons["gw-a"].initiate()


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


def setup_row(pair: str, ike: str, times: list[float], busy: float) -> Row:
    ms = [t * 1000 for t in times]
    return Row(
        f"IKEv1 MM+QM setup {pair} {ike}",
        statistics.median(ms),
        "ms",
        note=f"median of {len(ms)}, min {min(ms):.1f} max {max(ms):.1f}; machine {busy:.0f}% busy before",
    )


def strongswan_rows() -> list[Row]:
    rows = []
    with gateway_tunnel("ss", ("gw-a", "gw-b")) as lab:
        charons = {n: Charon(lab.node(n)).start() for n in ("gw-a", "gw-b")}
        for ike, esp, _, _ in SETUP_SUITES:
            busy, logged = machine_busy(), len(charons["gw-a"].setup_times())
            for _ in range(RUNS):
                fresh_sa(charons, lab, ike, esp)
            times = charons["gw-a"].setup_times()[logged:]
            if len(times) != RUNS:
                raise RuntimeError(f"{len(times)} setups in gw-a's charon log for {RUNS} initiations ({ike})")
            rows.append(setup_row("strongSwan↔strongSwan", ike, times, busy))
        for esp, label in DATA_SUITES:
            fresh_sa(charons, lab, "aes128-sha1-modp2048", esp)
            gateways = [lab.node("gw-a"), lab.node("gw-b")]
            busy = machine_busy()
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
                    f"gw-b {used[1]:.0f}% of a core; machine {busy:.0f}% busy before",
                )
            )
    return rows


def ipsecd_rows() -> list[Row]:
    """ipsecd (gw-a, initiating) against strongSwan, then against ipsecd (gw-b)."""
    rows = []
    with gateway_tunnel("ipsecd-ss", ("gw-b",)) as lab:
        charon, probe = Charon(lab.node("gw-b")).start(), IkeProbe(lab.node("gw-a"))
        for ike, esp, encryption, group in SETUP_SUITES:
            charon.load(tunnel(lab, "gw-b", ike, esp))
            busy, times = machine_busy(), []
            for _ in range(RUNS):
                charon.terminate()
                times.append(probe.setup_time(probe_config(lab, "gw-a", encryption, group)))
            rows.append(setup_row("ipsecd↔strongSwan", ike, times, busy))
    with gateway_tunnel("ipsecd", ()) as lab:
        initiator, responder = IkeProbe(lab.node("gw-a")), IkeProbe(lab.node("gw-b"))
        for ike, _, encryption, group in SETUP_SUITES:
            responder.start(probe_config(lab, "gw-b", encryption, group))
            busy = machine_busy()
            times = [initiator.setup_time(probe_config(lab, "gw-a", encryption, group)) for _ in range(RUNS)]
            responder.stop()
            rows.append(setup_row("ipsecd↔ipsecd", ike, times, busy))
    return rows


def run() -> list[Row]:
    rows = strongswan_rows()
    if IKE_COMPONENT.is_file():
        rows += ipsecd_rows()
    else:
        print(
            "ipsecd↔ipsecd and ipsecd↔strongSwan setup: not measured, no IKE component here", file=sys.stderr
        )
    return rows
