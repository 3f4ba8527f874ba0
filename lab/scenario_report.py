"""`lab scenario run`: a scenario's lab up, its run (lab.scenario.Runner), and its report folder.

results/scenarios/<name>/<timestamp>/ holds: index.html (the page tying it together), results.json, the
pcaps of every captured segment with the key tables beside them (lab.keys: wireshark/esp_sa and
wireshark/ikev1_decryption_table, what `lab decode` reads),
counters before and after per node, each node's events and ipsecd log, the topology graph and an IKE sequence
diagram per segment (lab.ike_sequence).
"""

from __future__ import annotations

import html
import json
import re
import shlex
import shutil
import time
from collections.abc import Callable
from pathlib import Path

from lab import graph, harness, ike_sequence, keys
from lab.backend import RESULTS, Backend, LabError
from lab.images import ImageError
from lab.running import Lab
from lab.scenario import Outcome, Runner, Scenario


def report_folder(scenario: Scenario, root: Path | None = None) -> Path:
    folder = (root or RESULTS / "scenarios") / scenario.name / time.strftime("%Y%m%d-%H%M%S")
    n = 1
    while folder.exists():
        n += 1
        folder = folder.with_name(f"{folder.name.split('.')[0]}.{n}")
    folder.mkdir(parents=True)
    return folder


def execute(scenario: Scenario, backend: Backend, lab_name: str, report: Path, keep: bool = False,
            echo: Callable[[str], None] = print) -> Outcome:
    """Bring the scenario's lab up, run it, write the report; the lab goes down unless `keep`."""
    started = time.monotonic()
    backend.down(lab_name)  # a left-over of an earlier run of ours
    try:
        lab = backend.up(scenario.topology, lab_name, report)
    except (LabError, ImageError, TimeoutError, OSError) as exc:
        outcome = Outcome(scenario, setup_error=f"the lab could not be set up: {exc}")
        echo(f"SETUP  {outcome.setup_error}")
        backend.down(lab_name)
        write(outcome, None, report, {})
        return outcome
    runner = Runner(scenario, lab, report, echo)
    try:
        outcome = runner.run()
        outcome.seconds = time.monotonic() - started
        write(outcome, lab, report, runner.counters_before)
    finally:
        if keep:
            echo(f"lab {lab_name} kept: lab exec NODE --name {lab_name} -- ...; lab down --name {lab_name}")
        else:
            backend.down(lab_name)
    return outcome


def write(outcome: Outcome, lab: Lab | None, report: Path, before: dict[str, dict[str, int]]) -> None:
    """Everything the page shows, then the page."""
    scenario = outcome.scenario
    for name in ("README.md", "scenario.yaml"):
        if (scenario.folder / name).is_file():
            shutil.copy(scenario.folder / name, report / name)
    graph.render(scenario.topology, report / "topology.svg")
    names = {str(i.address.ip): n.name for n in scenario.topology.nodes.values()
             for i in n.interfaces.values() if i.address is not None}
    diagrams = {}
    for pcap in sorted(report.glob("*.pcap")):
        svg = pcap.with_suffix(".ike.svg")
        found = ike_sequence.draw(pcap, svg, names, f"{scenario.name}: {pcap.stem}")
        diagrams[pcap.name] = (svg.name, len(found))
    after: dict[str, dict[str, int]] = {}
    nodes_seen = []
    for node in (lab.nodes.values() if lab else []):
        if not harness.running(node):
            continue
        nodes_seen.append(node.name)
        after[node.name] = harness.counters(node)
        (report / f"{node.name}.events.json").write_text(json.dumps(harness.events(node), indent=1))
        (report / f"{node.name}.ipsecd.log").write_text(node.exec(["cat", harness.LOG]).stdout)
    (report / "counters.json").write_text(json.dumps({"before": before, "after": after}, indent=1))
    (report / "steps.txt").write_text("\n".join(outcome.log) + "\n")
    (report / "results.json").write_text(json.dumps({
        "scenario": scenario.name, "title": scenario.title, "code": outcome.code,
        "seconds": round(outcome.seconds, 1), "setup_error": outcome.setup_error,
        "checks": [{"what": c.what, "passed": c.passed, "detail": c.detail, "where": c.where}
                   for c in outcome.checks]}, indent=1))
    (report / "index.html").write_text(page(outcome, report, diagrams, before, after, nodes_seen))


_BOLD = re.compile(r"\*\*(.+?)\*\*")


def _markdown(text: str) -> str:
    """README.md as HTML: headings, paragraphs, list items, **bold** and `code` (all the READMEs use).

    >>> _markdown("**Symptom.** ping fails: `a**b`")
    '<p><b>Symptom.</b> ping fails: <code>a**b</code></p>'
    """
    out: list[str] = []
    paragraph: list[str] = []

    def inline(s: str) -> str:
        parts = html.escape(s).split("`")
        return "".join(f"<code>{p}</code>" if i % 2 else _BOLD.sub(r"<b>\1</b>", p)
                       for i, p in enumerate(parts))

    def flush() -> None:
        if paragraph:
            out.append(f"<p>{inline(' '.join(paragraph))}</p>")
            paragraph.clear()
    for line in text.splitlines():
        if line.startswith("#"):
            flush()
            level = min(len(line) - len(line.lstrip("#")) + 1, 4)
            out.append(f"<h{level}>{inline(line.lstrip('#').strip())}</h{level}>")
        elif line.lstrip().startswith(("- ", "* ")):
            flush()
            out.append(f"<li>{inline(line.lstrip()[2:])}</li>")
        elif not line.strip():
            flush()
        else:
            paragraph.append(line.strip())
    flush()
    return "\n".join(out)


STYLE = """
body { font-family: Helvetica, Arial, sans-serif; margin: 2em auto; max-width: 1100px; color: #222; }
.PASS { color: #1b7f2a; font-weight: bold; } .FAIL { color: #b3261e; font-weight: bold; }
table { border-collapse: collapse; } td, th { border: 1px solid #ccc; padding: 3px 8px; text-align: left; }
pre { background: #f4f4f4; padding: 8px; overflow-x: auto; } img { max-width: 100%; border: 1px solid #ddd; }
.readme { background: #fafafa; border-left: 4px solid #888; padding: 0 1em; }
"""


def page(outcome: Outcome, report: Path, diagrams: dict[str, tuple[str, int]],
         before: dict[str, dict[str, int]], after: dict[str, dict[str, int]], nodes: list[str]) -> str:
    """index.html: verdict, README, checks, topology, IKE sequence per capture, captures and keys, counters
    that moved, events and logs. Every link is relative (the folder can be copied elsewhere)."""
    s = outcome.scenario
    verdict = {0: "PASS", 1: "FAIL", 2: "SETUP FAILED"}[outcome.code]
    e = html.escape
    rows = "\n".join(f'<tr><td class="{"PASS" if c.passed else "FAIL"}">{"PASS" if c.passed else "FAIL"}</td>'
                     f"<td>{e(c.what)}</td><td><pre>{e(c.detail)}</pre></td><td>{e(c.where)}</td></tr>"
                     for c in outcome.checks)
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>{e(s.name)}: {verdict}</title>"
             f"<style>{STYLE}</style></head><body>",
             f"<h1>{e(s.title)} <span class='{verdict.split()[0]}' id='verdict'>{verdict}</span></h1>",
             f"<p>Scenario <code>{e(s.name)}</code> on topology <code>{e(s.topology.name)}</code>, "
             f"{outcome.seconds:.1f} s. Run it again: <code>lab scenario run {e(s.name)}</code>.</p>"]
    if outcome.setup_error:
        parts.append(f"<p class='FAIL'>{e(outcome.setup_error)}</p>")
    parts += [f"<div class='readme'>{_markdown(s.readme)}</div>",
              "<h2>Checks</h2>", f"<table id='checks'><tr><th></th><th>expectation</th><th>detail</th>"
              f"<th>defined at</th></tr>{rows}</table>",
              "<h2>Topology</h2><img src='topology.svg' alt='topology'>"]
    parts.append("<h2>IKE sequence</h2>")
    for pcap, (svg, count) in diagrams.items():
        parts.append(f"<h3>{e(pcap)} ({count} IKE messages and ESP SPIs)</h3>")
        parts.append(f"<img src='{e(svg)}' alt='{e(svg)}'>")
    parts.append("<h2>Captures and keys</h2><ul>")
    for pcap in diagrams:
        parts.append(f"<li><a href='{e(pcap)}'>{e(pcap)}</a></li>")
    tables = " and ".join(f"<a href='{keys.FOLDER}/{t}'>{keys.FOLDER}/{t}</a>" for t in keys.TABLES)
    parts.append(f"<li>{tables}: the keys of every SA the lab's ipsecd nodes had, a Wireshark configuration "
                 "folder; open a capture decrypted with:</li></ul>")
    if diagrams:
        first, tables = (shlex.quote(str(report / name)) for name in (next(iter(diagrams)), keys.FOLDER))
        parts.append(f"<pre>lab decode {e(first)}\n"
                     f"WIRESHARK_CONFIG_DIR={e(tables)} wireshark {e(first)}</pre>")
    parts.append("<h2>Counters that moved (before → after)</h2><table><tr><th>node</th><th>counter</th>"
                 "<th>before</th><th>after</th></tr>")
    for node, values in after.items():
        for name, value in values.items():
            old = before.get(node, {}).get(name, 0)
            if value != old:
                parts.append(f"<tr><td>{e(node)}</td><td>{e(name)}</td><td>{old}</td><td>{value}</td></tr>")
    parts.append("</table><p><a href='counters.json'>counters.json</a> (all of them)</p>")
    parts.append("<h2>Events and logs</h2><ul>")
    for node in nodes:
        parts.append(f"<li>{e(node)}: <a href='{e(node)}.events.json'>events</a>, "
                     f"<a href='{e(node)}.ipsecd.log'>ipsecd log</a></li>")
    parts.append("<li><a href='steps.txt'>steps.txt</a> (what the run did, in time order), "
                 "<a href='results.json'>results.json</a>, "
                 "<a href='scenario.yaml'>scenario.yaml</a></li></ul>")
    parts.append(f"<h2>Steps</h2><pre>{e(chr(10).join(outcome.log))}</pre></body></html>")
    return "\n".join(parts) + "\n"
