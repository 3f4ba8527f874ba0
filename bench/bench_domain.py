"""The domain topology (issue 12): the DC image's build, `lab up domain` until every member has read its
policy from the directory, a member's no-change poll, the DC's CPU for 100 members' polls (100 directory
stores in one member container, each with its own bound connection, as 100 members would hold), the fall
back to the cache with the DC down, and the DC container's memory."""

from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
import time

from bench.common import Row
from lab import topology
from lab.docker_backend import DockerBackend
from lab.images import HOST_SIDE, IMAGES_DIR
from lab.pytest_plugin import lab_prefix
from lab.running import Lab, Node

ADMIN = {"IPSEC_ADMIN_PASSWORD": "Lab-Admin-2003!"}  # images/dc/README.md (lab only)
POLLERS = 100
SCRIPT = "/tmp/bench_pollers.py"
# Run in member-a: POLLERS stores bound as member-a$, one no-change poll each (timed), twice: with nothing
# written on the DC in between (a rootDSE read each), and after the test wrote something (a search of the
# policy's objects each). Prints JSON; waits for a line on stdin between the rounds.
POLLER_SCRIPT = """
import json, statistics, sys, time
from ipsecd.policy.directory_store import DirectoryStore
from ipsecd.policy.ldap_directory import Credentials, DirectoryServer

server = DirectoryServer("10.0.0.10", "dc.lab.test", "LAB.TEST", "/etc/ipsec-lab/dc-ca.pem")
stores = [DirectoryStore(server, Credentials("member-a$", keytab="/etc/krb5.keytab", ccache="/tmp/bench.cc"),
                         f"/tmp/bench-cache/{i}") for i in range(int(sys.argv[1]))]
refs = [s.assigned_policy() for s in stores]
for s, ref in zip(stores, refs):
    s.change_stamp(ref)
print(json.dumps({"bound": len(stores)}), flush=True)
for _ in range(2):
    sys.stdin.readline()
    times = []
    for s, ref in zip(stores, refs):
        started = time.perf_counter()
        s.change_stamp(ref)
        times.append(time.perf_counter() - started)
    print(json.dumps({"median_ms": statistics.median(times) * 1000, "total_s": sum(times)}), flush=True)
"""


def run() -> list[Row]:
    backend = DockerBackend()
    rows = [dc_build(backend)]
    topo = topology.load("domain")
    for kind in {n.image for n in topo.nodes.values()}:
        backend.images.ensure(kind)
    name = f"{lab_prefix()}-bench-domain"
    backend.down(name)
    started = time.perf_counter()
    lab = backend.up(topo, name)
    try:
        up = time.perf_counter() - started
        members = [lab.node(n.name) for n in topo.domain_members()]
        contacted = all(ipsecctl(m, "policy")["source"]["last_contact"] for m in members)
        rows.append(Row("lab up domain, to every member's policy read from the directory", up, "s", 10.0,
                        note="" if contacted else "a member did not reach the DC"))
        rows += polls(backend, lab)
        rows.append(fallback(lab))
        memory = dc_memory(backend, lab) / 2**20
        rows.append(Row(f"DC container memory (after {POLLERS} members' polls)", memory, "MiB", 80.0,
                        note="docker stats: usage less inactive file pages"))
    finally:
        backend.down(name)
    return rows


def dc_build(backend: DockerBackend) -> Row:
    """`docker build` of images/dc without the layer cache (provisioning included), base built already."""
    base = backend.images.ensure("base")
    with tempfile.TemporaryDirectory() as context:
        shutil.copytree(IMAGES_DIR / "dc", context, dirs_exist_ok=True,
                        ignore=shutil.ignore_patterns(*HOST_SIDE))
        tag = "ipsec-lab/dc-bench:build"
        started = time.perf_counter()
        for chunk in backend.client.api.build(path=context, tag=tag, buildargs={"BASE": base}, nocache=True,
                                              rm=True, forcerm=True, decode=True):
            if "error" in chunk:
                raise RuntimeError(f"docker build of images/dc: {chunk['error'].strip()}")
        elapsed = time.perf_counter() - started
    backend.client.images.remove(tag)
    return Row("DC image build (docker build, no layer cache, base built)", elapsed, "s")


def ipsecctl(node: Node, *argv: str) -> dict:
    return json.loads(node.exec(["ipsecctl", *argv, "--json"], check=True, timeout=60).stdout)


def static(node: Node, *argv: str) -> None:
    node.exec(["ipsecctl", "static", *argv], check=True, timeout=60, env=ADMIN)


def polls(backend: DockerBackend, lab: Lab) -> list[Row]:
    """Assign a policy to OU=Servers, then time the pollers' rounds and the DC's CPU for each."""
    a = lab.node("member-a")
    static(a, "create", "Bench Policy")
    static(a, "gpo", "create", "Bench GPO")
    static(a, "gpo", "link", "Bench GPO", "OU=Servers,DC=lab,DC=test")
    static(a, "assign", "Bench GPO", "Bench Policy")
    ipsecctl(a, "refresh")
    a.put_file(SCRIPT, POLLER_SCRIPT)
    command = backend.command_line(lab.name, a.name, ["python3", SCRIPT, str(POLLERS)], tty=False)
    with subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True) as pollers:
        assert pollers.stdin and pollers.stdout
        json.loads(pollers.stdout.readline())  # all bound
        rounds = []
        for write_first in (False, True):
            if write_first:  # any write on the DC moves highestCommittedUSN: every poller reads its objects
                static(a, "gpo", "create", "Unrelated GPO")
            cpu = dc_cpu_ns(backend, lab)
            pollers.stdin.write("go\n")
            pollers.stdin.flush()
            result = json.loads(pollers.stdout.readline())
            rounds.append((result, (dc_cpu_ns(backend, lab) - cpu) / 1e6))
        pollers.stdin.close()
    (quiet, quiet_cpu), (moved, moved_cpu) = rounds
    return [
        Row(f"a member's no-change poll (median of {POLLERS} stores in one member)", quiet["median_ms"], "ms",
            note="a rootDSE read on the kept connection"),
        Row(f"DC CPU for {POLLERS} members' no-change polls", quiet_cpu, "ms",
            note=f"{quiet['total_s']:.2f} s of polling, one after another; DC CPU between two docker stats"),
        Row(f"DC CPU for {POLLERS} members' polls after a write on the DC", moved_cpu, "ms",
            note=f"each reads its policy's objects' uSNChanged; median {moved['median_ms']:.1f} ms a poll"),
    ]


def fallback(lab: Lab) -> Row:
    """samba stopped on the DC: `ipsecctl refresh` on member-a until its policy comes from the cache."""
    a, dc = lab.node("member-a"), lab.node("dc")
    samba = dc.process("samba")
    samba.stop()
    dc.exec(["rm", "-f", samba.pid_path])
    try:
        started = time.perf_counter()
        ipsecctl(a, "refresh")
        wall = time.perf_counter() - started
        status = ipsecctl(a, "policy")["source"]
    finally:
        dc.start_service("samba")
    inside = status["timings"].get("failed_search", 0.0) + status["timings"].get("cache_read", 0.0)
    return Row("fall back to the cache with the DC down (in ipsecd)", inside, "s", 3.0,
               note=f"source {status['source']}; `ipsecctl refresh` wall time {wall:.2f} s")


def dc_memory(backend: DockerBackend, lab: Lab) -> float:
    stats = container(backend, lab, "dc").stats(stream=False)["memory_stats"]
    counters = stats["stats"]
    return stats["usage"] - counters.get("total_inactive_file", counters.get("inactive_file", 0))


def dc_cpu_ns(backend: DockerBackend, lab: Lab) -> int:
    return container(backend, lab, "dc").stats(stream=False)["cpu_stats"]["cpu_usage"]["total_usage"]


def container(backend: DockerBackend, lab: Lab, node: str):
    return backend.client.containers.get(lab.node(node).instance.name)

