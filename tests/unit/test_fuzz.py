"""The fuzzers of fuzz/ (IKE state machine, inbound data path, policy reader and agent), briefly: `make fuzz`
runs them at length. Each must end without a crash, and its outcomes must show it reached the checks that
matter (a fuzzer stuck at the first length check would pass too)."""

import pytest

from fuzz.engine import Defect, Target, run
from fuzz.esp import ESPTarget
from fuzz.ike import IKETarget
from fuzz.policy import PolicyTarget


@pytest.mark.parametrize("target,inputs,reached", [
    (IKETarget, 3000, {"Malformed Packets", "Dropped: no SA for cookies", "Negotiation Failures",
                       "processed"}),
    (ESPTarget, 3000, {"delivered", "packets_not_authenticated", "replayed_packets", "bad_spi_packets",
                       "malformed_packets", "dropped_by_policy"}),
    (PolicyTarget, 600, {"loaded", "refused: not UTF-8 text", "refused: not valid YAML", "refused: a field",
                         "agent: refused, policy in force kept", "agent: applied"}),
], ids=lambda t: getattr(t, "name", None))
def test_a_brief_run_finds_nothing_and_reaches_the_checks(target, inputs, reached, tmp_path):
    report = run(target, inputs, seed=1, results=tmp_path)
    assert report.crash is None, (tmp_path / report.crash.name).with_suffix(".txt").read_text()
    assert report.inputs >= inputs
    assert reached <= set(report.tally), report.describe()


def test_a_seed_replays_the_same_run(tmp_path):
    first, second = (run(IKETarget, 400, seed=7, results=tmp_path).tally for _ in range(2))
    assert first == second


class Fragile(Target):
    """Breaks on an input starting with 0xff, raises a Defect on one starting with 0xfe."""

    name = "fragile"

    def step(self) -> None:
        def deliver(data: bytes) -> str:
            if data[0] == 0xFE:
                raise Defect("an invariant broke", "its detail")
            if data[0] == 0xFF:
                raise IndexError("a defect of the code under test")
            return "fine"

        self.check(bytes([self.rng.randrange(256)]) + b"tail", "the fragile thing", deliver)


def test_a_crash_is_saved_with_its_input_and_what_happened(tmp_path):
    report = run(Fragile, 10_000, seed=3, results=tmp_path)
    assert report.crash is not None and report.crash.parent == tmp_path / "fragile"
    data = report.crash.read_bytes()
    assert data[0] in (0xFE, 0xFF) and data[1:] == b"tail"
    text = report.crash.with_suffix(".txt").read_text()
    assert "seed 3" in text and "the fragile thing" in text
    expected = ["IndexError"] if data[0] == 0xFF else ["an invariant broke", "its detail"]
    assert all(words in text for words in expected)

