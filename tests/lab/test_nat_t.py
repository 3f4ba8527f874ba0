"""nat-t on real containers: the NAT box masquerades and rewrites UDP source ports."""

from scapy.layers.inet import IP, UDP

from lab.capture import assert_source_seen, ip_packets
from lab.traffic import udp_send


def test_server_sees_the_nat_address_and_rewritten_ports(lab_up):
    lab = lab_up("nat-t")
    client, server = lab.node("client"), lab.node("server")
    with server.capture("eth1") as outside, client.capture("eth1") as inside:
        client.exec(["ping", "-c", "2", "-i", "0.2", "-W", "2", server.address()], check=True)
        udp_send(client, server.address(), 500, b"looks-like-ike", source_port=500)
    seen = outside.packets()
    assert_source_seen(seen, "203.0.113.1", dst="203.0.113.2")
    assert not [p for p in ip_packets(seen) if p[IP].src.startswith("192.168.")], "private address leaked"
    udp = [p for p in ip_packets(seen) if UDP in p and p[UDP].dport == 500]
    assert udp and all(40000 <= p[UDP].sport <= 40999 for p in udp), [p.summary() for p in udp]
    # on the inside the client's own address and port are intact
    assert any(UDP in p and p[UDP].sport == 500 for p in assert_source_seen(inside.packets(), "192.168.1.10"))


def test_a_firewall_dropping_udp_500_on_the_nat_box(lab_up):
    """The troubleshooting case "a firewall drops IKE": UDP 500 vanishes, other traffic still passes."""
    lab = lab_up("nat-t")
    client, nat, server = lab.node("client"), lab.node("nat"), lab.node("server")
    nat.firewall(drop=["udp/500"])
    try:
        with server.capture("eth1") as outside:
            udp_send(client, server.address(), 500, b"ike-blocked", source_port=500)
            udp_send(client, server.address(), 4500, b"natt-passes", source_port=4500)
            client.exec(["ping", "-c", "1", "-W", "2", server.address()], check=True)
        ports = sorted(p[UDP].dport for p in ip_packets(outside.packets()) if UDP in p)
        assert ports == [4500]
        assert nat.dropped() == 1
    finally:
        nat.firewall(drop=[])
    with server.capture("eth1") as outside:
        udp_send(client, server.address(), 500, b"ike-again", source_port=500)
    assert [p[UDP].dport for p in ip_packets(outside.packets()) if UDP in p] == [500]
