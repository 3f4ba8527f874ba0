"""driver-tunnel on gateway-tunnel: ESP tunnel mode between the gateways, manual 3DES/SHA1 keys.

See scenarios/driver-tunnel/README.md. The hosts run no IPsec; the gateways secure what they forward.
"""

import pytest
from scapy.layers.inet import ICMP, IP
from scapy.layers.ipsec import ESP
from scapy.layers.l2 import Ether

from lab.capture import assert_marker_absent, assert_marker_present, assert_only_protocols
from lab.harness import (
    counters,
    inject_frames,
    ipsecctl,
    overrides,
    tshark_decrypted_payloads,
    wait_counter,
    wait_ready,
)
from lab.traffic import tcp_transfer

MARKER = b"DRIVER-TUNNEL-MARKER-"
GW_A, GW_B = "198.51.100.1", "198.51.100.2"


@pytest.fixture
def tunnel(lab_up):
    lab = lab_up("gateway-tunnel", overrides=overrides("driver-tunnel", "gw-a", "gw-b"))
    wait_ready(lab.node("gw-a"), lab.node("gw-b"))
    return lab


def test_sites_talk_through_the_tunnel_and_the_wan_carries_only_esp(tunnel):
    lab = tunnel
    host_a, host_b, gw_a, gw_b = (lab.node(n) for n in ("host-a", "host-b", "gw-a", "gw-b"))
    payload = MARKER * 2000
    with lab.capture_segment("wan") as wan, lab.capture_segment("site-b") as site_b:
        host_a.exec(["ping", "-c", "3", "-i", "0.2", "-W", "2", host_b.address()], check=True)
        host_b.exec(["ping", "-c", "2", "-i", "0.2", "-W", "2", host_a.address()], check=True)
        assert tcp_transfer(host_a, host_b, payload, port=5002) == payload
    pkts = wan.packets()
    assert_only_protocols(pkts, allowed={"esp"})
    assert {(p[IP].src, p[IP].dst, p[ESP].spi) for p in pkts if ESP in p} == {
        (GW_A, GW_B, 0x3001), (GW_B, GW_A, 0x3002)}
    assert_marker_absent(pkts, MARKER)
    assert_marker_present(site_b.packets(), MARKER)  # in clear inside the site, as it should be
    inner, authentic = tshark_decrypted_payloads(wan.pcap, ipsecctl(gw_a, "keys")["tshark_args"])
    assert MARKER * 10 in inner
    assert authentic >= len([p for p in pkts if ESP in p]) * 0.9  # HMAC-SHA1 verified by tshark
    stats = counters(gw_b)
    assert stats["tunnel_bytes_received"] >= len(payload)
    assert stats["confidential_bytes_received"] >= len(payload)
    assert stats["packets_not_authenticated"] == stats["dropped_by_policy"] == 0


def test_site_traffic_arriving_in_clear_over_the_wan_is_not_forwarded(tunnel):
    """Someone on the WAN sends site-a -> site-b traffic without ESP: gw-b drops it and counts it."""
    lab = tunnel
    gw_a, gw_b = lab.node("gw-a"), lab.node("gw-b")
    mac = {n.name: n.exec(["cat", "/sys/class/net/eth2/address"], check=True).stdout.strip()
           for n in (gw_a, gw_b)}
    forged = (Ether(src=mac["gw-a"], dst=mac["gw-b"]) / IP(src="10.1.0.10", dst="10.2.0.10")
              / ICMP() / (MARKER + b"forged"))
    before = counters(gw_b)["unsecured_packets_dropped"]
    with lab.capture_segment("site-b") as site_b:
        inject_frames(lab, "wan", [forged] * 3)
        wait_counter(gw_b, "unsecured_packets_dropped", before + 3)
    assert not [p for p in site_b.packets() if MARKER + b"forged" in bytes(p)]


def test_congestion_marked_on_the_wan_reaches_the_site_or_drops_what_cannot_carry_it(tunnel):
    """A router between the gateways marks the ESP packets CE (here gw-b's own prerouting hook, before
    ipsecd reads them): an ECN-capable inner packet arrives at host-b marked CE, a Not-ECT one is dropped
    and counted (RFC 6040 §4.2); ipsecd copied the inner ECN field out when it encapsulated."""
    lab = tunnel
    host_a, host_b, gw_b = (lab.node(n) for n in ("host-a", "host-b", "gw-b"))
    gw_b.exec(["nft", "add table ip congested; add chain ip congested wan { type filter hook prerouting "
                      "priority -300; }; add rule ip congested wan ip protocol esp ip ecn set ce"],
              check=True)
    with lab.capture_segment("wan") as wan, lab.capture_segment("site-b") as site_b:
        host_a.exec(["ping", "-c", "2", "-i", "0.2", "-W", "2", "-Q", "0x2a", host_b.address()], check=True)
        assert not host_a.exec(["ping", "-c", "2", "-i", "0.2", "-W", "1", "-Q", "0x28",
                                host_b.address()]).ok
    outer = {p[IP].tos for p in wan.packets() if ESP in p and p[IP].src == GW_A}
    assert outer == {0x2a, 0x28}  # DSCP and ECN copied to the outer header (ECT(0), Not-ECT)
    requests = [p for p in site_b.packets() if ICMP in p and p[ICMP].type == 8]
    assert [p[IP].tos for p in requests] == [0x2b, 0x2b]  # ECT(0) became CE; Not-ECT never arrived
    assert counters(gw_b)["ecn_drops"] == 2
