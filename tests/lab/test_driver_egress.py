"""driver-egress: ESP through the packet socket (transport and tunnel mode), and a peer whose MAC changes.

See scenarios/driver-egress/README.md. The configurations are those of driver-transport and driver-tunnel.
"""

import pytest
from scapy.layers.inet import IP
from scapy.layers.ipsec import ESP
from scapy.layers.l2 import Ether

from lab.capture import assert_marker_absent, assert_only_protocols, assert_protocol_seen, wait_until
from lab.harness import SCENARIOS, counters, ipsecctl, tshark_decrypted_payloads, wait_ready
from lab.traffic import tcp_transfer

MARKER = b"DRIVER-EGRESS-MARKER-"
A, B = "10.0.0.1", "10.0.0.2"
NEW_MAC = "02:00:00:e6:e6:02"


def pair_overrides() -> dict:
    config = SCENARIOS / "driver-transport"
    return {"nodes": {"host-a": {"ipsecd": str(config / "host-a.yaml")},
                      "host-b": {"ipsecd": str(config / "host-b.yaml"),
                                 "sysctls": {"net.ipv4.conf.all.arp_notify": "1"}}}}


@pytest.fixture
def pair(lab_up):
    lab = lab_up("intranet-pair", overrides=pair_overrides())
    a, b = lab.node("host-a"), lab.node("host-b")
    wait_ready(a, b)
    return lab, a, b


def sent(node) -> tuple[int, int]:
    c = counters(node)
    return c["packet_socket_packets"], c["raw_socket_packets"]


def sent_since(node, before: tuple[int, int]) -> tuple[int, int]:
    now = sent(node)
    return now[0] - before[0], now[1] - before[1]


def warm_up(client, address: str, sender) -> None:
    """Ping until `sender` uses its packet socket: the kernel has resolved the next hop and ipsecd read it."""
    start = sent(sender)[0]
    ping = ["ping", "-c", "1", "-W", "1", address]
    wait_until(lambda: client.exec(ping).ok and sent(sender)[0] > start, 15,
               what=f"{sender.name} to send through its packet socket")


def mac_of(node, ifname: str = "eth1") -> str:
    return node.exec(["cat", f"/sys/class/net/{ifname}/address"], check=True).stdout.strip()


def test_transport_esp_leaves_through_the_packet_socket(pair):
    lab, a, b = pair
    payload = MARKER * 4000
    warm_up(a, B, a)
    warm_up(b, A, b)
    before_a, before_b = sent(a), sent(b)
    with lab.capture_segment("lan") as cap:
        assert tcp_transfer(a, b, payload, port=5101) == payload
    pkts = cap.packets()
    assert_only_protocols(pkts, between=(A, B), allowed={"esp"})
    assert_marker_absent(pkts, MARKER)
    esp = assert_protocol_seen(pkts, "esp", between=(A, B))
    to_b = [p for p in esp if p[IP].dst == B]
    assert {p[Ether].dst for p in to_b} == {mac_of(b)}  # framed for the peer by the packet socket
    inner, authentic = tshark_decrypted_payloads(cap.pcap, ipsecctl(a, "keys")["tshark_args"])
    assert MARKER * 10 in inner and authentic > 0
    (packet_a, raw_a), (packet_b, raw_b) = sent_since(a, before_a), sent_since(b, before_b)
    # a's ESP packets on the wire: nearly all from the packet socket, a few raw (the per-second check packet)
    # (>=: the connection's last ACKs may leave after the capture stopped)
    assert packet_a + raw_a >= len(to_b)
    assert packet_a > 40 and packet_a > 4 * raw_a
    assert packet_b > 0 and packet_b + raw_b >= len(esp) - len(to_b)


def test_traffic_follows_the_peer_to_its_new_mac(pair):
    lab, a, b = pair
    old = mac_of(b)
    warm_up(a, B, a)
    b.exec(["ip", "link", "set", "eth1", "address", NEW_MAC], check=True)
    try:
        # host-b announces the change (arp_notify); host-a's kernel takes it, and ipsecd's next hop follows
        # at its next read of the kernel's tables (once a second): until then ESP may still go to the old MAC
        wait_until(lambda: a.exec(["ping", "-c", "1", "-W", "1", B]).ok, 10, what="ping after the MAC change")

        def esp_goes_to_the_new_mac() -> bool:
            with lab.capture_segment("lan") as probe:
                a.exec(["ping", "-c", "3", "-i", "0.2", "-W", "1", B])
            return {p[Ether].dst for p in probe.packets() if ESP in p and p[IP].dst == B} == {NEW_MAC}

        wait_until(esp_goes_to_the_new_mac, 10, what="ipsecd's ESP to go to the new MAC")
        before = sent(a)
        payload = MARKER * 2000
        with lab.capture_segment("lan") as cap:
            assert tcp_transfer(a, b, payload, port=5102) == payload
        to_b = [p for p in cap.packets() if ESP in p and p[IP].dst == B]
        assert {p[Ether].dst for p in to_b} == {NEW_MAC}
        assert sent_since(a, before)[0] > 20  # and the packet socket carries it again
    finally:
        b.exec(["ip", "link", "set", "eth1", "address", old], check=True)
        wait_until(lambda: a.exec(["ping", "-c", "1", "-W", "1", B]).ok, 10, what="ping after restoring")


def test_tunnel_esp_leaves_through_the_packet_socket(lab_up):
    config = SCENARIOS / "driver-tunnel"
    lab = lab_up("gateway-tunnel", overrides={"nodes": {n: {"ipsecd": str(config / f"{n}.yaml")}
                                                         for n in ("gw-a", "gw-b")}})
    host_a, host_b, gw_a, gw_b = (lab.node(n) for n in ("host-a", "host-b", "gw-a", "gw-b"))
    wait_ready(gw_a, gw_b)
    payload = MARKER * 3000
    warm_up(host_a, host_b.address(), gw_a)
    before = sent(gw_a)
    with lab.capture_segment("wan") as wan:
        assert tcp_transfer(host_a, host_b, payload, port=5103) == payload
    pkts = wan.packets()
    assert_only_protocols(pkts, allowed={"esp"})
    assert_marker_absent(pkts, MARKER)
    inner, authentic = tshark_decrypted_payloads(wan.pcap, ipsecctl(gw_a, "keys")["tshark_args"])
    assert MARKER * 10 in inner and authentic > 0
    from_a = [p for p in pkts if ESP in p and p[IP].src == "198.51.100.1"]
    packet_socket, raw = sent_since(gw_a, before)
    assert packet_socket + raw >= len(from_a)
    assert packet_socket > 30 and packet_socket > 4 * raw
