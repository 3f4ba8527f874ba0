"""IKEv1 setup latency: strongSwan↔strongSwan is the anchor for ipsecd↔strongSwan and ipsecd↔ipsecd.

../shared/research/strongswan-peer.md measured 5.5-13 ms protocol time on this machine. Median of
BENCH_IKE_RUNS (20) initiations by gw-a on gateway-tunnel, each after every SA was deleted, from main mode's
first packet to the quick mode SA installed on the initiator (main mode + quick mode, PSK):
strongSwan↔strongSwan from charon's log (`initiating Main Mode` to `CHILD_SA ... established`);
ipsecd↔strongSwan and ipsecd↔ipsecd from ipsecd's IKE component (lab/ike_probe.py: acquire to the SA
handed to the driver). strongSwan's data plane is measured beside ipsecd's, in bench_dataplane.

Each row notes how busy the machine was just before (other tenants share it).

    python -m bench strongswan
"""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from bench.common import Row, lab_running
from lab.docker_backend import DockerBackend
from lab.ike_probe import IkeProbe
from lab.pytest_plugin import lab_prefix
from lab.running import Lab
from lab.strongswan import Charon, Tunnel

RUNS = int(os.environ.get("BENCH_IKE_RUNS", "20"))
STRONGSWAN = {"image": "strongswan", "routes": []}
PSK = "bench"
#: (main mode proposal, ESP proposal) in swanctl's words, (encryption, Oakley group) in ipsecd's
SETUP_SUITES = (
    ("3des-sha1-modp1024", "3des-sha1", "3des-cbc", 2),
    ("aes128-sha1-modp2048", "aes128-sha1", "aes-cbc-128", 14),
)


@contextmanager
def gateway_tunnel(name: str, strongswan: tuple[str, ...]) -> Iterator[Lab]:
    """gateway-tunnel with the gateways in `strongswan` running image strongswan (the others: node)."""
    with lab_running(DockerBackend(), "gateway-tunnel", {"nodes": dict.fromkeys(strongswan, STRONGSWAN)},
                     f"{lab_prefix()}-bench-{name}") as lab:
        yield lab


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
    return strongswan_rows() + ipsecd_rows()
