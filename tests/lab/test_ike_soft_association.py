"""ike-soft-association on intranet-pair: Server (Request Security) falls back to clear with a computer that
never answers IKE. See scenarios/ike-soft-association/README.md."""

from scapy.layers.inet import TCP, UDP
from scenarios.driver_lab import counters, ipsecctl
from scenarios.ike_lab import start, stop, wait_event

from lab.capture import assert_marker_present, assert_only_protocols
from lab.traffic import tcp_transfer

SCENARIO = "ike-soft-association"
MARKER = b"IKE-SOFT-ASSOCIATION-MARKER-"
A, B = "10.0.0.1", "10.0.0.2"


def test_request_security_falls_back_to_clear_with_a_non_ipsec_peer(lab_up):
    lab = lab_up("intranet-pair")
    a = lab.node("host-a")
    start(a, SCENARIO)
    try:
        payload = MARKER * 100
        with lab.capture_segment("lan") as cap:
            assert tcp_transfer(a, lab.node("host-b"), payload, port=5004, timeout=30) == payload
        pkts = cap.packets()
        # ICMP: host-b says port 500 is closed
        assert_only_protocols(pkts, between=(A, B), allowed={"tcp/5004", "udp/500", "icmp"})
        assert_marker_present(pkts, MARKER)  # in clear: host-b speaks no IPsec
        ike = [p for p in pkts if UDP in p and p[UDP].dport == 500]
        first_clear = next(p for p in pkts if TCP in p)
        assert ike and ike[0].time < first_clear.time  # it tried IKE first
        assert first_clear.time - ike[0].time >= 3  # and waited for the soft-association timeout
        event = wait_event(a, "never answered IKE")
        assert event["kind"] == "soft-association"
        c = counters(a)
        assert c["ike_soft_associations"] == 1 and c["soft_association_packets"] >= 1
        assert c["ike_oakley_main_modes"] == 0 and ipsecctl(a, "sa") == []
    finally:
        stop(a)
