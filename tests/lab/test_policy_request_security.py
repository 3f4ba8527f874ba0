"""policy-request-security on intranet-pair: Server (Request Security) falls back to clear with a computer
that does not speak IPsec (a soft association), and secures traffic with one that does.

See scenarios/policy-request-security/README.md. host-b runs Server (Request Security) in every test.
"""

import pytest
from pair import BARE_PAIR

from lab.capture import (
    assert_marker_absent,
    assert_marker_present,
    assert_only_protocols,
    assert_protocol_seen,
)
from lab.harness import (
    counters,
    esp_sas,
    events,
    from_first,
    ipsecd_in,
    predefined_policy,
    sources,
    start_policy,
    wait_for_sas,
)
from lab.traffic import tcp_transfer

MARKER = b"REQUEST-SECURITY-MARKER-"
A, B = "10.0.0.1", "10.0.0.2"
PSK = "policy-request-security-lab"


@pytest.fixture
def pair(lab_up):
    pair = lab_up("intranet-pair", overrides=BARE_PAIR)
    with ipsecd_in(pair, {"host-b": predefined_policy("server", PSK)}) as lab:
        yield lab, lab.node("host-a"), lab.node("host-b")


def assert_soft_association(lab, a, b, port: int) -> None:
    """host-b's connection to host-a: IKE to host-a unanswered, then the traffic in clear, counted."""
    payload = MARKER * 500
    with lab.capture_segment("lan") as cap:
        assert tcp_transfer(b, a, payload, port=port, timeout=30) == payload  # ~7 s: IKE tried first
    pkts = cap.packets()
    assert sources(pkts, "udp/500") == {B}, "host-b asked host-a for IKE and got no answer"
    after_ike = from_first(pkts, "udp/500", (A, B))
    assert_protocol_seen(after_ike, f"tcp/{port}", between=(A, B))
    assert_marker_present(after_ike, MARKER)
    first_tcp = assert_protocol_seen(pkts, f"tcp/{port}", between=(A, B))[0]
    assert first_tcp.time - after_ike[0].time >= 3, "it waited out the soft-association timeout in silence"
    assert esp_sas(b) == []
    stats = counters(b)
    assert stats["ike_soft_associations"] >= 1
    assert stats["soft_association_packets"] >= 1
    assert any(A in e["text"] for e in events(b, "soft-association"))


def test_a_host_without_ipsec_gets_clear_traffic_after_the_soft_association(pair):
    lab, a, b = pair  # host-a runs no ipsecd: nothing listens on UDP 500
    assert_soft_association(lab, a, b, port=5001)


def test_a_host_running_ipsecd_with_no_policy_gets_clear_traffic_too(pair):
    lab, a, b = pair
    start_policy(a, None)
    assert_soft_association(lab, a, b, port=5002)


def test_twin_a_client_answers_ike_so_the_traffic_is_secured(pair):
    lab, a, b = pair
    start_policy(a, predefined_policy("client", PSK))
    payload = MARKER * 500
    with lab.capture_segment("lan") as cap:
        assert tcp_transfer(b, a, payload, port=5003, timeout=20) == payload
    pkts = cap.packets()
    assert_only_protocols(pkts, between=(A, B), allowed={"udp/500", "esp"})
    assert sources(pkts, "udp/500") == {A, B}
    assert_marker_absent(pkts, MARKER)
    wait_for_sas(b, A)
    stats = counters(b)
    assert stats["ike_soft_associations"] == stats["soft_association_packets"] == 0
    assert events(b, "soft-association") == []
