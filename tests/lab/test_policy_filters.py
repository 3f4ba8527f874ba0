"""policy-filters on intranet-pair: block, permit and negotiate filter actions in one policy, and a twin.

See scenarios/policy-filters/README.md.
"""

import pytest
from pair import BARE_PAIR

from lab.backend import CommandError
from lab.capture import (
    assert_marker_absent,
    assert_marker_present,
    assert_only_protocols,
    assert_protocol_seen,
)
from lab.harness import (
    counters,
    ipsecctl,
    ipsecd_in,
    scenario_file,
    sources,
    start_policy,
    wait_counter,
    wait_for_sas,
)
from lab.traffic import tcp_transfer

SCENARIO = "policy-filters"
WEB, SECRET = b"POLICY-FILTERS-WEB-", b"POLICY-FILTERS-SECRET-"
A, B = "10.0.0.1", "10.0.0.2"


@pytest.fixture
def pair(lab_up):
    policies = {node: scenario_file(SCENARIO, node) for node in ("host-a", "host-b")}
    with ipsecd_in(lab_up("intranet-pair", overrides=BARE_PAIR), policies) as lab:
        yield lab, lab.node("host-a"), lab.node("host-b")


def filter_hits(node, rule: str) -> int:
    """Packets the kernel matched against the specific filters of one rule (ipsecctl filters)."""
    return sum(f["packets"] for f in ipsecctl(node, "filters") if f["rule"] == rule)


def test_icmp_is_blocked_both_ways_before_the_wire(pair):
    lab, a, b = pair
    before = counters(a)["blocked_by_filter"], counters(b)["blocked_by_filter"]
    with lab.capture_segment("lan") as cap:
        assert not a.exec(["ping", "-c", "2", "-i", "0.2", "-W", "1", B]).ok
        assert not b.exec(["ping", "-c", "2", "-i", "0.2", "-W", "1", A]).ok
    assert [p for p in cap.packets() if p.haslayer("ICMP")] == []
    assert wait_counter(a, "blocked_by_filter", before[0] + 2) >= before[0] + 2
    assert wait_counter(b, "blocked_by_filter", before[1] + 2) >= before[1] + 2
    assert filter_hits(a, "block icmp") >= 2 and filter_hits(b, "block icmp") >= 2


def test_web_crosses_in_clear_while_the_rest_is_secured(pair):
    lab, a, b = pair
    with lab.capture_segment("lan") as cap:
        assert tcp_transfer(a, b, WEB * 200, port=80) == WEB * 200
        assert tcp_transfer(a, b, SECRET * 200, port=5002, timeout=20) == SECRET * 200
    pkts = cap.packets()
    assert_only_protocols(pkts, between=(A, B), allowed={"tcp/80", "udp/500", "esp"})
    assert sources(pkts, "tcp/80") == {A, B}
    assert_marker_present(assert_protocol_seen(pkts, "tcp/80", between=(A, B)), WEB)
    assert_marker_absent(pkts, SECRET)
    assert_protocol_seen(pkts, "esp", between=(A, B))
    wait_for_sas(a, B)
    assert {s["filter"] for s in ipsecctl(a, "sa")} == {"secure the rest/all"}
    assert filter_hits(a, "web in clear") > 0 and filter_hits(b, "web in clear") > 0


def test_twin_without_the_web_permit_on_the_server_clear_web_is_dropped(pair):
    lab, a, b = pair
    start_policy(b, scenario_file(SCENARIO, "host-b-no-web"))
    before = counters(b)["unsecured_packets_dropped"]
    with lab.capture_segment("lan") as cap:
        with pytest.raises(CommandError):
            tcp_transfer(a, b, WEB * 10, port=80, timeout=4)
        assert tcp_transfer(a, b, SECRET * 200, port=5002, timeout=20) == SECRET * 200
    pkts = cap.packets()
    assert sources(pkts, "tcp/80") == {A}, "host-a sent its web request in clear; host-b never answered"
    assert_marker_absent(pkts, SECRET)
    assert wait_counter(b, "unsecured_packets_dropped", before + 1) > before
