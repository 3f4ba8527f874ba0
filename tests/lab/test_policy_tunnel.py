"""policy-tunnel on gateway-tunnel: a tunnel rule negotiated by IKE between the gateways, and its twin.

See scenarios/policy-tunnel/README.md.
"""

import pytest

from lab.backend import CommandError
from lab.capture import (
    assert_marker_absent,
    assert_marker_present,
    assert_only_protocols,
    ip_packets,
)
from lab.harness import edit, example_policy, ipsecctl, ipsecd_in, sources, start_policy, wait_for_sas
from lab.traffic import tcp_transfer

MARKER = b"POLICY-TUNNEL-MARKER-"
GW_A, GW_B = "198.51.100.1", "198.51.100.2"
HOST_A, HOST_B = "10.1.0.10", "10.2.0.10"


@pytest.fixture
def sites(lab_up):
    with ipsecd_in(lab_up("gateway-tunnel"), {}) as lab:
        gw_a, gw_b = lab.node("gw-a"), lab.node("gw-b")
        start_policy(gw_a, example_policy("gateway-tunnel-gw-a"), ike_address=GW_A)
        yield lab, gw_a, gw_b


def assert_wan_carries_only_ike_and_esp(pkts) -> None:
    assert_only_protocols(pkts, allowed={"udp/500", "esp"})
    assert ip_packets(pkts, between=(HOST_A, HOST_B)) == []
    assert_marker_absent(pkts, MARKER)


def test_the_sites_talk_through_the_tunnel(sites):
    lab, gw_a, gw_b = sites
    start_policy(gw_b, example_policy("gateway-tunnel-gw-b"), ike_address=GW_B)
    host_a, host_b = lab.node("host-a"), lab.node("host-b")
    payload = MARKER * 1000
    with lab.capture_segment("wan") as wan, lab.capture_segment("site-b") as site_b:
        host_a.exec(["ping", "-c", "3", "-i", "0.2", "-W", "3", HOST_B], check=True, timeout=30)
        assert tcp_transfer(host_a, host_b, payload, port=5001, timeout=20) == payload
    pkts = wan.packets()
    assert_wan_carries_only_ike_and_esp(pkts)
    assert sources(pkts, "udp/500") == {GW_A, GW_B}
    assert sources(pkts, "esp") == {GW_A, GW_B}
    assert_marker_present(site_b.packets(), MARKER)  # in clear behind the gateway
    for gw, peer in ((gw_a, GW_B), (gw_b, GW_A)):
        sas = wait_for_sas(gw, peer)
        assert {s["mode"] for s in sas} == {"tunnel"}
    assert {s["filter"] for s in ipsecctl(gw_a, "sa")} == {"to the far site/out"}


def test_twin_another_key_on_gw_b_lets_nothing_cross(sites):
    lab, gw_a, gw_b = sites
    wrong_key = edit(example_policy("gateway-tunnel-gw-b"), "gateway-tunnel-lab", "another-key", count=2)
    start_policy(gw_b, wrong_key, ike_address=GW_B)
    host_a, host_b = lab.node("host-a"), lab.node("host-b")
    with lab.capture_segment("wan") as wan:
        assert not host_a.exec(["ping", "-c", "2", "-i", "0.5", "-W", "2", HOST_B]).ok
        with pytest.raises(CommandError):
            tcp_transfer(host_a, host_b, MARKER * 10, port=5002, timeout=4)
    pkts = wan.packets()
    assert_only_protocols(pkts, allowed={"udp/500"})
    assert sources(pkts, "udp/500") == {GW_A, GW_B}
    assert ipsecctl(gw_a, "sa") == ipsecctl(gw_b, "sa") == []
