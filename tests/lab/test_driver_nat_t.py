"""driver-nat-t on nat-t: transport-mode ESP in UDP 4500 through a port-rewriting NAT, manual keys.

See scenarios/driver-nat-t/README.md.
"""

from scapy.layers.inet import IP, UDP

from lab.capture import assert_marker_absent, assert_only_protocols, ip_packets
from lab.harness import counters, ipsecctl, overrides, wait_ready
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


def test_tos_crosses_in_the_outer_header_and_bulk_tcp_is_merged_again(lab_up):
    """The server rebuilds each inner header from the datagram (its TOS, identifications that follow the
    ESP sequence) and hands the NAT-stale TCP checksum to the kernel as a partial one, so a bulk transfer
    reaches its stack in super-packets; the TOS a packet had rides on its UDP datagram both ways."""
    lab = lab_up("nat-t", overrides=overrides("driver-nat-t", "client", "server"))
    client, server = lab.node("client"), lab.node("server")
    wait_ready(client, server)
    with lab.capture_segment("outside") as outside:
        client.exec(["ping", "-c", "2", "-i", "0.2", "-W", "2", "-Q", "0x28", SERVER], check=True)
    tos = {(p[IP].src, p[IP].tos) for p in ip_packets(outside.packets(), between=(NAT, SERVER))
           if UDP in p and len(p[UDP].payload) > 1}  # not the one-byte keepalives
    assert tos == {(NAT, 0x28), (SERVER, 0x28)}  # the echo reply copies the request's TOS the server saw

    def tun_writes() -> int:
        return int(server.exec(["cat", "/sys/class/net/ipsec0/statistics/rx_packets"], check=True).stdout)

    def esp_received() -> int:
        return {s["spi"]: s for s in ipsecctl(server, "sa")}["0x00004001"]["counters"]["packets"]

    writes, received = tun_writes(), esp_received()
    payload = MARKER * 100_000  # 2 MB
    assert tcp_transfer(client, server, payload, port=5004, address=SERVER) == payload
    writes, received = tun_writes() - writes, esp_received() - received
    assert received > 1000 and writes < received / 2, (writes, received)
