"""What every benchmark shares: a result row, a timer, a lab for one measurement, the table printer."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from lab import topology
from lab.docker_backend import DockerBackend
from lab.running import Lab


@dataclass
class Row:
    """One measured quantity: `value` in `unit`, against `target` (None: no target). Lower is better unless
    `higher_is_better`."""

    name: str
    value: float
    unit: str
    target: float | None = None
    higher_is_better: bool = False
    note: str = ""

    @property
    def verdict(self) -> str:
        if self.target is None:
            return ""
        met = self.value >= self.target if self.higher_is_better else self.value <= self.target
        return "ok" if met else "MISSED"


def median_time(
    action: Callable[[], object],
    runs: int = 5,
    setup: Callable[[], object] | None = None,
    teardown: Callable[[], object] | None = None,
) -> tuple[float, list[float]]:
    """Median wall time of `action` over `runs` (setup/teardown around each run, not timed)."""
    times = []
    for _ in range(runs):
        if setup:
            setup()
        started = time.perf_counter()
        action()
        times.append(time.perf_counter() - started)
        if teardown:
            teardown()
    return statistics.median(times), times


def print_table(rows: list[Row]) -> None:
    width = max([len("benchmark"), *(len(r.name) for r in rows)])
    print(f"{'benchmark':{width}} {'value':>10} {'unit':6} {'target':>10} {'':6} note")
    for r in rows:
        target = "" if r.target is None else f"{'>=' if r.higher_is_better else '<='} {r.target:g}"
        print(f"{r.name:{width}} {r.value:10.3f} {r.unit:6} {target:>10} {r.verdict:6} {r.note}")


@contextmanager
def lab_running(backend: DockerBackend, topology_name: str, overrides: dict, name: str) -> Iterator[Lab]:
    """Topology `topology_name` with `overrides` up as lab `name` (images built if missing), then down."""
    topo = topology.load(topology_name, overrides)
    for kind in {n.image for n in topo.nodes.values()}:
        backend.images.ensure(kind)
    backend.down(name)
    try:
        yield backend.up(topo, name)
    finally:
        backend.down(name)
