"""driver-nat-t on nat-t: transport-mode ESP in UDP 4500 through a port-rewriting NAT, manual keys.

See scenarios/driver-nat-t/README.md.
"""

from scapy.layers.inet import IP, UDP
from scenarios.driver_lab import counters, ipsecctl, overrides, wait_ready

from lab.capture import assert_marker_absent, assert_only_protocols, ip_packets
from lab.traffic import tcp_transfer

MARKER = b"DRIVER-NAT-T-MARKER-"
NAT, SERVER = "203.0.113.1", "203.0.113.2"


def test_esp_in_udp_crosses_the_nat_both_ways(lab_up):
    lab = lab_up("nat-t", overrides=overrides("driver-nat-t", "client", "server"))
    client, server = lab.node("client"), lab.node("server")
    wait_ready(client, server)
    payload = MARKER * 2000
    with lab.capture_segment("outside") as outside:
        client.exec(["ping", "-c", "3", "-i", "0.2", "-W", "2", SERVER], check=True)
        assert tcp_transfer(client, server, payload, port=5003, address=SERVER) == payload
    pkts = outside.packets()
    assert_only_protocols(pkts, between=(NAT, SERVER), allowed={"udp/4500"})
    assert_marker_absent(pkts, MARKER)
    esp_in_udp = [p for p in ip_packets(pkts, between=(NAT, SERVER)) if UDP in p]
    nat_ports = {p[UDP].sport for p in esp_in_udp if p[IP].src == NAT}
    assert len(nat_ports) == 1 and 40000 <= nat_ports.pop() <= 40999  # the port the NAT chose
    assert any(p[IP].src == SERVER and p[UDP].sport == 4500 for p in esp_in_udp)  # answered there
    stats = counters(server)
    assert stats["confidential_bytes_received"] >= len(payload)
    assert stats["packets_not_authenticated"] == stats["dropped_by_policy"] == 0, stats
    assert stats["nat_keepalives_received"] >= 1  # the client, behind the NAT, keeps its mapping open
    sa = {s["spi"]: s for s in ipsecctl(client, "sa")}["0x00004002"]
    assert sa["udp_encap"] == [4500, 4500] and sa["counters"]["packets"] > 3
