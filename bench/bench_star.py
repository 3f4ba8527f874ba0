"""The star at scale (topologies/star.yaml): one server, N clients, every client pinging the server at once.

Per N (BENCH_STAR_SIZES, default 10,50,100): `lab up` split into containers+links and ipsecd's start on
every node, ipsecd's CPU to start and RSS when idle (medians over the nodes, read from /proc in each node),
the host memory the lab takes per node (MemAvailable before and after, so other work on a shared machine
shows up in it), the time from the common ping instant to the last client's reply, failed negotiations
(server and clients), and `lab down`.
"""

from __future__ import annotations

import os
import statistics
import time
from concurrent.futures import ThreadPoolExecutor

from bench.common import Row
from lab import topology
from lab.docker_backend import DockerBackend
from lab.pytest_plugin import lab_prefix
from lab.running import Node
from lab.star import clients, counters, ping_all_at_once

SIZES = [int(n) for n in os.environ.get("BENCH_STAR_SIZES", "10,50,100").split(",")]
TICKS = os.sysconf("SC_CLK_TCK")
#: CPU seconds and RSS of the ipsecd process: utime+stime from /proc/<pid>/stat, VmRSS in kB.
PROCESS_FIGURES = (
    "p=$(cat /run/lab/ipsecd.pid); set -- $(cut -d')' -f2 /proc/$p/stat); "
    "echo $(( ${12} + ${13} )) $(awk '/^VmRSS/ {print $2}' /proc/$p/status)"
)


def run() -> list[Row]:
    backend = DockerBackend()
    backend.images.ensure("node")
    rows: list[Row] = []
    for size in SIZES:
        rows += _one_size(backend, size)
    return rows


def _one_size(backend: DockerBackend, size: int) -> list[Row]:
    name = f"{lab_prefix()}-star{size}"
    topo = topology.load("star", {"parameters": {"clients": size}})
    backend.down(name)
    available = _mem_available_mb()
    started = time.monotonic()
    lab = backend.up(topo, name)
    up = time.monotonic() - started
    try:
        nodes = len(lab.nodes)
        cpu, rss = _ipsecd_figures(list(lab.nodes.values()))
        per_node = (available - _mem_available_mb()) / nodes
        result = ping_all_at_once(lab, timeout=120)
        answered = sum(1 for rc, _ in result.replies.values() if rc == 0)
        with ThreadPoolExecutor(max_workers=8) as pool:
            client_failures = sum(pool.map(lambda n: counters(n)["ike_negotiation_failures"], clients(lab)))
        failures = result.server_counters["ike_negotiation_failures"] + client_failures
        retransmissions = result.server_counters["ike_retransmissions"]
        _, rss_after = _ipsecd_figures([lab.node("server")])
    finally:
        started = time.monotonic()
        backend.down(name)
        down = time.monotonic() - started
    star = f"star N={size}"
    phases = f"containers {lab.timings['containers']:.1f} s, links {lab.timings['links']:.1f} s"
    return [
        Row(f"{star}: lab up (to every ipsecd ready)", up, "s", note=phases),
        Row(f"{star}: ipsecd start, all {nodes} nodes", lab.timings["services"], "s", note="4 at a time"),
        Row(f"{star}: ipsecd CPU to start, per node", statistics.median(cpu), "s", 0.3,
            note=f"median; max {max(cpu):.2f}"),
        Row(f"{star}: ipsecd RSS idle, per node", statistics.median(rss), "MB", 30.0,
            note=f"median; server after all SAs {rss_after[0]:.1f} MB"),
        Row(f"{star}: host memory per node", per_node, "MB", note="MemAvailable drop / nodes (shared host)"),
        Row(f"{star}: time to all SAs (last ping reply)", result.seconds, "s", 30.0,
            note=f"{answered}/{size} replies"),
        Row(f"{star}: failed negotiations", failures, "", 0.0,
            note=f"server {result.server_counters['ike_negotiation_failures']}, clients {client_failures}; "
                 f"server retransmissions {retransmissions}"),
        Row(f"{star}: lab down", down, "s"),
    ]


def _ipsecd_figures(nodes: list[Node]) -> tuple[list[float], list[float]]:
    """(CPU seconds, RSS MB) of ipsecd in each node."""
    with ThreadPoolExecutor(max_workers=8) as pool:
        outputs = list(pool.map(lambda node: node.exec(["bash", "-c", PROCESS_FIGURES], check=True), nodes))
    figures = [out.stdout.split() for out in outputs]
    return [int(ticks) / TICKS for ticks, _ in figures], [int(kb) / 1024 for _, kb in figures]


def _mem_available_mb() -> float:
    with open("/proc/meminfo") as meminfo:
        kb = next(int(line.split()[1]) for line in meminfo if line.startswith("MemAvailable:"))
    return kb / 1024
