"""ike-respond-only on intranet-pair: the predefined Secure Server and Client (Respond Only) policies; the
client answers under its default response rule with dynamic filters. See scenarios/ike-respond-only."""

import pytest
from scenarios.driver_lab import ipsecctl
from scenarios.ike_lab import dump, nodes, start, stop, wait_quick_mode

from lab.capture import assert_marker_absent, assert_only_protocols, assert_protocol_seen, wait_until
from lab.traffic import tcp_transfer

SCENARIO = "ike-respond-only"
MARKER = b"IKE-RESPOND-ONLY-MARKER-"
A, B = "10.0.0.1", "10.0.0.2"


@pytest.fixture
def pair(lab_up):
    lab = lab_up("intranet-pair")
    with nodes(lab, "host-a", "host-b") as handles:
        yield lab, *handles


def test_client_respond_only_answers_secure_server(pair):
    lab, a, b = pair
    for node in (a, b):
        start(node, SCENARIO)
    payload = MARKER * 500
    with lab.capture_segment("lan") as cap:
        a.exec(["ping", "-c", "1", "-W", "2", B], check=True)  # ICMP is permitted in clear
        assert tcp_transfer(a, b, payload, port=5003) == payload
    pkts = cap.packets()
    assert_only_protocols(pkts, between=(A, B), allowed={"icmp", "udp/500", "esp"})
    assert_marker_absent(pkts, MARKER)
    assert_protocol_seen(pkts, "esp", between=(B, A))  # host-b's replies, secured by its dynamic filters
    assert_protocol_seen(pkts, "icmp", between=(A, B))
    qb = wait_quick_mode(b)
    assert qb[0]["security method"] == "ESP[3DES,SHA1]", dump(b)
    dynamic = [f for f in ipsecctl(b, "filters") if f["name"].startswith("<Dynamic>")]
    assert {(f["direction"], f["source"], f["destination"]) for f in dynamic} == {
        ("outbound", "10.0.0.2/32", "10.0.0.1/32"), ("inbound", "10.0.0.1/32", "10.0.0.2/32")}
    assert ipsecctl(b, "filters", "--specific") == []  # the policy itself has none
    stop(a)  # host-a deletes its SAs at host-b: the dynamic filters go with them
    wait_until(lambda: not [f for f in ipsecctl(b, "filters") if f["name"].startswith("<Dynamic>")], 10,
               what="host-b to drop its dynamic filters")
