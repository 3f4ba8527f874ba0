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
    rows, failed = [], []
    for name in chosen:
        print(f"== {name}", file=sys.stderr, flush=True)
        try:
            rows += importlib.import_module(f"bench.{name}").run()
        except Exception as exc:  # one broken benchmark must not hide the others' numbers
            failed.append(f"{name}: {type(exc).__name__}: {exc}")
    print_table(rows)
    for line in failed:
        print(f"FAILED {line}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
