"""ike-tunnel on gateway-tunnel: the gateways negotiate an ESP tunnel for their sites with IKE; the hosts
talk and the WAN carries only IKE and ESP. See scenarios/ike-tunnel/README.md."""

import pytest
from scapy.layers.ipsec import ESP

from lab.capture import assert_marker_absent, assert_only_protocols, assert_protocol_seen
from lab.harness import counters, dump, ipsecctl, nodes, start, tshark_decrypted_payloads, wait_quick_mode
from lab.traffic import tcp_transfer

SCENARIO = "ike-tunnel"
MARKER = b"IKE-TUNNEL-MARKER-"
GW_A, GW_B = "198.51.100.1", "198.51.100.2"
HOST_A, HOST_B = "10.1.0.10", "10.2.0.10"


@pytest.fixture
def sites(lab_up):
    lab = lab_up("gateway-tunnel")
    with nodes(lab, "host-a", "host-b", "gw-a", "gw-b") as handles:
        yield lab, *handles


def test_hosts_talk_through_a_negotiated_tunnel(sites):
    lab, host_a, host_b, gw_a, gw_b = sites
    for gw in (gw_a, gw_b):
        start(gw, SCENARIO)
    payload = MARKER * 1500
    with lab.capture_segment("wan") as cap:
        host_a.exec(["ping", "-c", "3", "-i", "0.2", "-W", "5", HOST_B], check=True)
        assert tcp_transfer(host_a, host_b, payload, port=5001) == payload
        host_b.exec(["ping", "-c", "1", "-W", "2", HOST_A], check=True)  # the other way, same SAs
    pkts = cap.packets()
    assert_only_protocols(pkts, between=(GW_A, GW_B), allowed={"udp/500", "esp"})
    assert_marker_absent(pkts, MARKER)
    esp = assert_protocol_seen(pkts, "esp", between=(GW_A, GW_B))
    assert not [p for p in pkts if p.haslayer("IP") and {p["IP"].src, p["IP"].dst} & {HOST_A, HOST_B}]

    qa, qb = wait_quick_mode(gw_a), wait_quick_mode(gw_b)
    assert len(qa) == 1 and qa[0]["mode"] == "tunnel", dump(gw_a)
    assert (qa[0]["local"], qa[0]["remote"]) == ("10.1.0.0/24", "10.2.0.0/24")
    assert (qb[0]["local"], qb[0]["remote"]) == ("10.2.0.0/24", "10.1.0.0/24")
    assert {p[ESP].spi for p in esp} == {int(qa[0]["inbound spi"], 16), int(qa[0]["outbound spi"], 16)}
    assert counters(gw_b)["tunnel_bytes_received"] >= len(payload)
    assert counters(gw_a)["ike_oakley_quick_modes"] == 1

    inner, authentic = tshark_decrypted_payloads(cap.pcap, ipsecctl(gw_a, "keys")["tshark_args"])
    assert MARKER * 10 in inner and authentic > 0
