"""The catalogue's scenario files are valid, and a bad one is refused with file, line and field."""

import pytest

from lab import scenario as scenarios
from lab.ike_sequence import messages


@pytest.mark.parametrize("name", scenarios.available())
def test_every_catalogue_scenario_loads_and_has_a_readme(name):
    s = scenarios.load(name)
    assert (s.readme.startswith("# ") and "**Fix.**" in s.readme) or s.name.startswith(("ike-", "policy-"))
    assert s.expect


def refusal(path, text: str) -> list[str]:
    """What loading `text` as the scenario file `path` is refused with."""
    path.write_text(text)
    with pytest.raises(scenarios.ScenarioError) as refused:
        scenarios.load(path)
    return refused.value.problems


def test_the_catalogue_has_at_least_fifteen_cases():
    assert len(scenarios.available()) >= 15


HEAD = ("title: t\ntopology: intranet-pair\nsteps:\n  - start: [host-a]\n"
        "  - ping: {from: host-a, to: nowhere}\n  - stop: host-a\n    kill: host-b\n")


def test_errors_name_file_line_and_field(tmp_path):
    path = tmp_path / "scenario.yaml"
    problems = refusal(path, HEAD + "expect:\n  - counter: {node: host-a, name: x, op: '=', value: 1}\n")
    assert problems[0].startswith(f"{path}:9: expect[0].counter.op: '=' is not one of"), problems


def test_semantic_errors_after_the_schema(tmp_path):
    path = tmp_path / "scenario.yaml"
    problems = refusal(path, HEAD + "expect:\n  - capture: {segment: wan}\n")
    assert problems == [
        f"{path}:4: steps[0].start: {tmp_path}/host-a/ipsecd.yaml does not exist "
        "(a node's folder holds its /etc/ipsecd)",
        f"{path}:5: steps[1].ping.to: 'nowhere' is neither a node of intranet-pair, node:ifname, "
        "nor an IPv4 address",
        f"{path}:6: steps[2]: names 2 actions (stop, kill): one per item",
        f"{path}:9: expect[0].capture.segment: no segment 'wan' in intranet-pair (lan)",
    ]


def test_a_start_as_the_topology_gives_it_needs_a_node_the_topology_gives_ipsecd(tmp_path):
    path = tmp_path / "scenario.yaml"
    problems = refusal(path, "title: t\ntopology: domain\nsteps:\n"
                       "  - start: {node: member-a, topology: true}\n"
                       "  - start: {node: dc, topology: true}\n"
                       "  - directory: {node: member-b, commands: [gpo list]}\n"
                       "expect:\n  - in_force: {node: member-a}\n")
    assert problems == [
        f"{path}:5: steps[1].start.topology: the topology gives dc no ipsecd to start",
        f"{path}:8: expect[0].in_force: names no `policy` nor `source` to expect",
    ]


def test_sequence_marks_retransmissions_and_incomplete_exchanges():
    from scapy.layers.inet import IP, UDP
    from scapy.layers.isakmp import ISAKMP

    ike = UDP(sport=500, dport=500) / ISAKMP(init_cookie=b"A" * 8, exch_type=2)
    mm1 = IP(src="10.0.0.1", dst="10.0.0.2") / ike
    for i, p in enumerate((mm1, mm1, mm1)):
        p.time = float(i)
    found = messages([mm1.copy(), mm1.copy(), mm1.copy()])
    assert [m.kind for m in found] == ["failed", "retransmit", "retransmit"]
    assert found[0].label == "main mode 1: main mode never completed"


def test_a_misspelt_name_or_a_test_only_folder_says_what_to_run_instead():
    with pytest.raises(scenarios.ScenarioError) as misspelt:
        scenarios.load("wrong-pks")
    assert misspelt.value.problems == ["wrong-pks: no such scenario (did you mean 'wrong-psk'?)"]
    with pytest.raises(scenarios.ScenarioError) as test_only:
        scenarios.load("driver-transport")
    message = test_only.value.problems[0]
    assert "not in the catalogue (no scenario.yaml)" in message, message
    assert "tests/lab/test_driver_transport.py" in message and "lab scenario list" in message
    with pytest.raises(scenarios.ScenarioError) as unknown:
        scenarios.load("zzz")
    assert "(catalogue: cannot-be-secured, " in unknown.value.problems[0]


def test_a_capture_protocol_is_written_as_the_capture_names_it(tmp_path):
    path = tmp_path / "scenario.yaml"
    problems = refusal(path, HEAD + "expect:\n  - capture: {segment: lan, only: [udp/500, udp500]}\n")
    assert problems == [
        f"{path}:9: expect[0].capture.only[1]: 'udp500' is not valid here: expected esp, ah, icmp, tcp/PORT, "
        "udp/PORT or ip/PROTO, as lab.capture.protocol names a packet"]
