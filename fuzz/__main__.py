"""``python -m fuzz [TARGET...] [--inputs N] [--seconds S] [--seed K]``: exit 1 on any crash (saved)."""

from __future__ import annotations

import argparse
import sys

from fuzz.engine import Target, run, say
from fuzz.esp import ESPTarget
from fuzz.ike import IKETarget
from fuzz.policy import PolicyTarget

TARGETS: dict[str, type[Target]] = {t.name: t for t in (IKETarget, ESPTarget, PolicyTarget)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m fuzz", description=__doc__)
    parser.add_argument("targets", nargs="*", choices=[[], *TARGETS], default=[], metavar="TARGET",
                        help=f"one or more of {', '.join(TARGETS)} (default: all)")
    parser.add_argument("--inputs", type=int, default=1_000_000, help="inputs per target (default 1000000)")
    parser.add_argument("--seconds", type=float, help="stop each target after this long")
    parser.add_argument("--seed", type=int, default=0, help="the run replays from its seed (default 0)")
    args = parser.parse_args(argv)
    failed = False
    for name in args.targets or TARGETS:
        report = run(TARGETS[name], args.inputs, args.seconds, args.seed, progress=say)
        say(report.describe(top=40))
        failed |= report.crash is not None
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
