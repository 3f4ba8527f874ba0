"""Run the benchmarks: `python -m bench [NAME...]` (NAME = module suffix, e.g. `lab` for bench_lab)."""

from __future__ import annotations

import importlib
import pkgutil
import sys

import bench
from bench.common import print_table


def main(only: list[str]) -> int:
    names = sorted(m.name for m in pkgutil.iter_modules(bench.__path__) if m.name.startswith("bench_"))
    chosen = [n for n in names if not only or n.removeprefix("bench_") in only]
    rows = []
    for name in chosen:
        print(f"== {name}", file=sys.stderr, flush=True)
        rows += importlib.import_module(f"bench.{name}").run()
    print_table(rows)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
