"""Main mode + quick mode setup latency between two ipsecd IKE components over real UDP on loopback.

Each run is a fresh pair of components (new main mode, then one quick mode), from acquire() until both
sides have installed their SAs. Prints the median of 20 runs per suite (target: strongSwan's ~5-13 ms).
Pre-shared keys and certificates run on the host; Kerberos needs the KDC, so its pair runs in member-a's
network namespace of the domain lab (the DC of images/dc), with member-a's and member-b's keytabs: first
contact (a new credential cache each run: AS, TGS and AP exchanges) and with the tickets cached.

    python -m bench ike            (a row per suite; part of make bench)
"""

from __future__ import annotations

import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.common import Row, lab_running
from ipsecd.ike.component import IKE
from ipsecd.ike.settings import (
    IKERule,
    Kerberos,
    MainModeOffer,
    PeerPolicy,
    PreSharedKey,
    QuickModeOffer,
    Selector,
)
from lab.capture import wait_until
from lab.docker_backend import DockerBackend
from lab.pytest_plugin import lab_prefix
from tests.vectors.pki import CA

PSK = PeerPolicy(auth=[PreSharedKey(b"bench")])
AES_14 = PeerPolicy(
    auth=[PreSharedKey(b"bench")],
    main_mode=[MainModeOffer("aes-cbc-128", "sha1", 14)],
    quick_mode=[QuickModeOffer("esp", "aes-cbc-128", "hmac-sha1-96")],
)
AES_14_PFS = PeerPolicy(
    auth=[PreSharedKey(b"bench")],
    main_mode=[MainModeOffer("aes-cbc-128", "sha1", 14)],
    quick_mode=[QuickModeOffer("esp", "aes-cbc-128", "hmac-sha1-96", pfs_group=14)],
)
_CA = CA()
SUITES: dict[str, tuple[PeerPolicy, PeerPolicy]] = {
    "3des-sha1-modp1024 psk (Windows 2003 default)": (PSK, PSK),
    "3des-sha1-modp1024 certificates (RSA 2048)": (PeerPolicy(auth=[_CA.credentials("a")]),
                                                   PeerPolicy(auth=[_CA.credentials("b")])),
    "aes128-sha1-modp2048 psk": (AES_14, AES_14),
    "aes128-sha1-modp2048 psk + pfs": (AES_14_PFS, AES_14_PFS),
}
A, B = "127.0.0.1", "127.0.0.2"
DC_FILES = "/var/lib/ipsec-lab"  # images/dc/README.md: the members' keytabs and krb5.conf
DOMAIN = {"runnable": None, "reason": None}  # topologies/domain.yaml until it is runnable on main


class Driver:
    def __init__(self, done: asyncio.Event):
        self.done = done

    def add_inbound(self, sa) -> None:
        pass

    def add_sa(self, sa) -> None:
        self.done.set()

    def delete_sa(self, spi, destination, protocol) -> None:
        pass


async def one_setup(policies: tuple[PeerPolicy, PeerPolicy], port: int) -> float:
    done_a, done_b = asyncio.Event(), asyncio.Event()
    a = IKE(A, Driver(done_a), port=port, natt_port=port + 1)
    b = IKE(B, Driver(done_b), port=port, natt_port=port + 1)
    rule = IKERule("bench", policies[0], Selector.parse(f"{A}/32"), Selector.parse(f"{B}/32"))
    a.load_policy([rule])
    b.load_policy([IKERule("bench", policies[1], Selector.parse(f"{B}/32"), Selector.parse(f"{A}/32"))])
    await a.start()
    await b.start()
    try:
        start = time.perf_counter()
        a.acquire(rule, rule.local, rule.remote)
        await asyncio.wait_for(asyncio.gather(done_a.wait(), done_b.wait()), 10)
        return time.perf_counter() - start
    finally:
        for ike in (a, b):
            for sock in ike.sockets:
                sock.close()


async def setup_times(suites: dict[str, tuple[PeerPolicy, PeerPolicy]], runs: int) -> dict[str, list[float]]:
    """Seconds of each of `runs` setups, per suite."""
    return {name: [await one_setup(policies, 22500 + 2 * (i % 50)) for i in range(runs)]
            for name, policies in suites.items()}


def kerberos(files: str, member: str, ccache: str) -> PeerPolicy:
    return PeerPolicy(auth=[Kerberos(f"{files}/{member}.keytab", f"{member}$@LAB.TEST", ccache=ccache)])


async def kerberos_times(files: str, runs: int) -> dict[str, list[float]]:
    """In member-a's namespace: first contact (a fresh ticket cache each run), then tickets cached."""
    b = kerberos(files, "member-b", "MEMORY:bench-b")
    first = [await one_setup((kerberos(files, "member-a", f"MEMORY:bench-first-{i}"), b),
                             22500 + 2 * (i % 50)) for i in range(runs)]
    cached_a = kerberos(files, "member-a", "MEMORY:bench-cached")
    await one_setup((cached_a, b), 22600)  # fills the cache
    cached = [await one_setup((cached_a, b), 22500 + 2 * (i % 50)) for i in range(runs)]
    return {"kerberos, first contact (AS + TGS + AP)": first, "kerberos, ticket cached (AP only)": cached}


def kerberos_in_domain_lab(runs: int) -> dict[str, list[float]]:
    """The domain lab up, the DC started, kerberos_times run in member-a's network namespace."""
    backend = DockerBackend()
    with lab_running(backend, "domain", DOMAIN, f"{lab_prefix()}-bench-krb") as lab, \
            tempfile.TemporaryDirectory() as files:
        dc = lab.node("dc")
        dc.spawn(["samba", "-F", "--no-process-group", "--debug-stdout", "-M", "single"], name="samba")
        wait_until(lambda: dc.exec(["dc-ready"]).ok, 30, what="dc-ready")
        for source in ("keytabs/member-a.keytab", "keytabs/member-b.keytab", "krb5.conf"):
            (Path(files) / Path(source).name).write_bytes(dc.get_file(f"{DC_FILES}/{source}"))
        argv = [*in_netns(lab.node("member-a").instance.name), sys.executable, "-m", "bench.bench_ike",
                "kerberos", files, str(runs)]
        env = {**os.environ, "KRB5_CONFIG": f"{files}/krb5.conf"}
        done = subprocess.run(argv, capture_output=True, text=True, env=env, check=True, timeout=600)
        return json.loads(done.stdout)


def in_netns(container: str) -> list[str]:
    """The command prefix that runs a host program in a node's network namespace (the host's venv)."""
    inspect = ["docker", "inspect", "-f", "{{.State.Pid}}", container]
    pid = subprocess.run(inspect, capture_output=True, text=True, check=True).stdout.strip()
    return ["nsenter", f"--net=/proc/{pid}/ns/net", "--"]


def rows(times: dict[str, list[float]], where: str) -> list[Row]:
    return [Row(f"IKEv1 MM+QM setup ipsecd↔ipsecd on loopback, {name}", statistics.median(t) * 1000, "ms",
                note=f"median of {len(t)}, min {min(t) * 1000:.1f} max {max(t) * 1000:.1f}; "
                     f"two IKE components in one process, no driver{where}")
            for name, t in times.items()]


def run(runs: int = 20) -> list[Row]:
    out = rows(asyncio.run(setup_times(SUITES, runs)), "")
    return out + rows(kerberos_in_domain_lab(runs), "; KDC: the lab's Samba DC")


if __name__ == "__main__" and sys.argv[1:2] == ["kerberos"]:
    print(json.dumps(asyncio.run(kerberos_times(sys.argv[2], int(sys.argv[3])))))
