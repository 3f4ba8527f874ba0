"""`lab scenario list | show NAME | run NAME [--keep]`: the troubleshooting catalogue (scenarios/)."""

from __future__ import annotations

import argparse
import os
import sys

from lab import scenario as scenarios
from lab.scenario_report import execute, report_folder

#: Scenario labs are named <prefix>-<scenario>; LAB_PREFIX keeps people sharing a machine apart.
DEFAULT_PREFIX = "scn"


def add_to(sub: argparse._SubParsersAction) -> None:
    """The `scenario` verb of the `lab` command."""
    s = sub.add_parser("scenario", help="troubleshooting scenarios: list, show, run")
    s.set_defaults(func=cmd_scenario)
    s.add_argument("action", choices=["list", "show", "run"],
                   help="list the catalogue, show one's README and checks, run one with a report")
    s.add_argument("scenario", nargs="?", help="a name from `lab scenario list`, or a folder")
    s.add_argument("--keep", action="store_true", help="run: leave the lab up afterwards")
    s.add_argument("--name", help="run: the lab's name (default: $LAB_PREFIX or scn, then the scenario)")


def cmd_scenario(args) -> int:
    if args.action == "list":
        for name in scenarios.available():
            s = scenarios.load(name)
            print(f"{name:34} {s.topology.name:15} {s.outcome:6} {s.title}")
        return 0
    if not args.scenario:
        raise scenarios.ScenarioError([f"lab scenario {args.action} NAME: which one? (lab scenario list)"])
    s = scenarios.load(args.scenario)
    if args.action == "show":
        print(s.readme or s.title)
        print(f"topology: {s.topology.name}; steps:")
        print("\n".join(f"  {i}. {step.describe()}" for i, step in enumerate(s.steps, 1)))
        print("expect:\n" + "\n".join(f"  - {item.describe()}" for item in s.expect))
        return 0
    from lab.cli import backend

    name = args.name or scenarios.lab_name_for(s.name, os.environ.get("LAB_PREFIX") or DEFAULT_PREFIX)
    report = report_folder(s)
    print(f"== {s.name}: {s.title} (lab {name})")
    outcome = execute(s, backend(), name, report, keep=args.keep, echo=lambda line: print(line, flush=True))
    verdict = {0: "PASS", 1: "FAIL", 2: "SETUP FAILED"}[outcome.code]
    failed = sum(not c.passed for c in outcome.checks)
    print(f"== {verdict}: {len(outcome.checks) - failed} of {len(outcome.checks)} checks passed in "
          f"{outcome.seconds:.1f} s; report: {report / 'index.html'}", file=sys.stdout)
    return outcome.code
