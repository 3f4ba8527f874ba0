"""`lab scenario run` wall time per scenario of the catalogue (target 20 s, none for those whose point is a
timer) and for the whole catalogue, one scenario at a time, as a user runs them (the command, lab up to down).

BENCH_SCENARIOS=name,name limits the set (the whole catalogue takes minutes)."""

from __future__ import annotations

import os
import subprocess
import sys
import time

from bench.common import Row
from lab import scenario as scenarios
from lab.pytest_plugin import lab_prefix

TARGET_SECONDS = 20.0


def run() -> list[Row]:
    chosen = os.environ.get("BENCH_SCENARIOS")
    names = chosen.split(",") if chosen else scenarios.available()
    env = {**os.environ, "LAB_PREFIX": f"{lab_prefix()}-bench"}
    rows, total = [], 0.0
    for name in names:
        timer = scenarios.load(name).timer
        started = time.perf_counter()
        done = subprocess.run([sys.executable, "-m", "lab", "scenario", "run", name], env=env,
                              capture_output=True, text=True)
        seconds = time.perf_counter() - started
        total += seconds
        verdict = {0: "pass", 1: "FAIL", 2: "setup failed"}.get(done.returncode, f"exit {done.returncode}")
        rows.append(Row(f"lab scenario run {name}", seconds, "s", None if timer else TARGET_SECONDS,
                        note=verdict + (" (a timer scenario)" if timer else "")))
    rows.append(Row(f"the catalogue, {len(names)} scenarios one after another", total, "s"))
    return rows
