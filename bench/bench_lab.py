"""Lab life cycle: `lab up intranet-pair` (the default lab) to both nodes and their ipsecd ready, and
`lab down` (images built)."""

from __future__ import annotations

import os
import subprocess
import sys

from bench.common import Row, median_time
from lab import topology
from lab.docker_backend import DockerBackend
from lab.pytest_plugin import lab_prefix

RUNS = int(os.environ.get("BENCH_RUNS", "5"))


def run() -> list[Row]:
    backend = DockerBackend()
    topo = topology.load("intranet-pair")
    name = f"{lab_prefix()}-bench"
    for kind in {n.image for n in topo.nodes.values()}:
        backend.images.ensure(kind)
    backend.down(name)

    def up() -> None:
        backend.up(topo, name)

    def down() -> None:
        backend.down(name)

    cli = [sys.executable, "-m", "lab"]
    rows = []
    for label, action, setup, teardown, target in (
        ("lab up intranet-pair, to both nodes and ipsecd ready", up, None, down, 3.0),
        ("lab down", down, up, None, 2.0),
        ("`lab up` command, wall time", lambda: _run([*cli, "up", "--name", name]), None, down, 3.0),
        ("`lab down` command, wall time", lambda: _run([*cli, "down", "--name", name]), up, None, 2.0),
    ):
        median, times = median_time(action, RUNS, setup=setup, teardown=teardown)
        rows.append(Row(label, median, "s", target, note=f"runs: {' '.join(f'{t:.2f}' for t in times)}"))
    return rows


def _run(argv: list[str]) -> None:
    subprocess.run(argv, check=True, capture_output=True)
