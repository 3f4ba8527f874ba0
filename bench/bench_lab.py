"""Lab life cycle: `lab up intranet-pair` to both nodes ready, and `lab down` (images built)."""

from __future__ import annotations

import os

from bench.common import Row, median_time
from lab import topology
from lab.docker_backend import DockerBackend

RUNS = int(os.environ.get("BENCH_RUNS", "5"))


def run() -> list[Row]:
    backend = DockerBackend()
    topo = topology.load("intranet-pair")
    name = f"{os.environ.get('LAB_PREFIX', 'b')}-bench"
    for kind in {n.image for n in topo.nodes.values()}:
        backend.images.ensure(kind)
    backend.down(name)
    up, up_runs = median_time(lambda: backend.up(topo, name), RUNS, teardown=lambda: backend.down(name))
    down, down_runs = median_time(lambda: backend.down(name), RUNS, setup=lambda: backend.up(topo, name))
    runs = f"median of {RUNS}"
    return [
        Row(
            "lab up intranet-pair (to both nodes ready)",
            up,
            "s",
            3.0,
            note=f"{runs}: {' '.join(f'{t:.2f}' for t in up_runs)}",
        ),
        Row(
            "lab down intranet-pair",
            down,
            "s",
            2.0,
            note=f"{runs}: {' '.join(f'{t:.2f}' for t in down_runs)}",
        ),
    ]
