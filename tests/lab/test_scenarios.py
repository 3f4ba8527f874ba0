"""The troubleshooting catalogue (scenarios/*/scenario.yaml) run through the runner of `lab scenario run`:
one definition for users and CI. Each scenario passes when every expectation holds; those that show a product
defect are expected to fail, with the defect as the reason, until it is fixed.

The report of one run is also opened in a real headless browser (Debian's chromium): the page renders, shows
the verdict and every check, and every link and image in it resolves to a file of the report folder.
"""

import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import pytest

from lab import scenario as scenarios
from lab.scenario_report import execute, report_folder

#: Scenarios whose correct behaviour ipsecd does not have yet: name -> the defect.
KNOWN_DEFECTS: dict[str, str] = {}
REPORTS: dict[str, Path] = {}


def run(name: str, lab_backend, lab_name) -> Path:
    scenario = scenarios.load(name)
    report = report_folder(scenario)
    outcome = execute(scenario, lab_backend, lab_name(f"s-{name}"), report, echo=lambda line: None)
    REPORTS[name] = report
    failed = [f"{c.what}: {c.detail}" for c in outcome.checks if not c.passed]
    assert outcome.code != 2, outcome.setup_error
    assert outcome.code == 0, f"{len(failed)} checks failed ({report}/index.html):\n" + "\n".join(failed)
    return report


def _catalogue() -> list:
    return [pytest.param(n, marks=pytest.mark.xfail(reason=KNOWN_DEFECTS[n], strict=True))
            if n in KNOWN_DEFECTS else n for n in scenarios.available()]


@pytest.mark.parametrize("name", _catalogue())
def test_scenario(name, lab_backend, lab_name):
    run(name, lab_backend, lab_name)


class _Links(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.links: list[str] = []

    def handle_starttag(self, tag, attrs):
        self.links += [value for key, value in attrs if key in ("href", "src") and value]


def test_the_report_renders_in_a_headless_browser(lab_backend, lab_name, tmp_path):
    chromium = shutil.which("chromium")
    if chromium is None:
        pytest.fail("chromium is not installed (.ci/run installs it)")
    name = "ike-transport-psk"
    report = REPORTS.get(name) or run(name, lab_backend, lab_name)
    browser = [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--allow-file-access-from-files"]
    page = f"file://{report}/index.html"
    dom = subprocess.run([*browser, "--dump-dom", page], capture_output=True, text=True, timeout=120).stdout
    assert re.search(r"id=\"verdict\"[^>]*>PASS<", dom), dom[:2000]
    checks = len(scenarios.load(name).steps) - 1 + len(scenarios.load(name).expect)  # start is no check
    assert dom.count('<td class="PASS">PASS</td>') == checks
    parser = _Links()
    parser.feed(dom)
    local = [link for link in parser.links if "://" not in link]
    assert {"topology.svg", "segment-lan.pcap", "segment-lan.ike.svg", "wireshark/esp_sa"} <= set(local)
    missing = [link for link in local if not (report / link).is_file()]
    assert not missing, missing
    diagram = (report / "segment-lan.ike.svg").read_text()
    assert diagram.count("main mode ") >= 6 and diagram.count("quick mode ") >= 3 and "ESP SPI" in diagram
    shot = tmp_path / "report.png"
    subprocess.run([*browser, f"--screenshot={shot}", "--window-size=1200,3000", page], capture_output=True,
                   timeout=120, check=True)
    assert shot.stat().st_size > 50_000  # text, tables and two drawings, not a blank page
