"""ike-nat-t on nat-t: IKE floats to UDP 4500 through a port-rewriting NAT, ESP goes in UDP, the client
sends NAT-T keepalives. See scenarios/ike-nat-t/README.md."""

import pytest
from scapy.layers.inet import ICMP, IP, UDP

from lab.capture import assert_marker_absent, assert_only_protocols, wait_until
from lab.harness import (
    counters,
    dump,
    first_sends,
    ipsecctl,
    isakmp_rows,
    nodes,
    peek,
    start,
    tshark_decrypted_payloads,
    wait_event,
    wait_quick_mode,
)
from lab.traffic import tcp_transfer

SCENARIO = "ike-nat-t"
MARKER = b"IKE-NAT-T-MARKER-"
NAT, SERVER = "203.0.113.1", "203.0.113.2"


@pytest.fixture
def natted(lab_up):
    lab = lab_up("nat-t")
    with nodes(lab, "client", "server") as handles:
        yield lab, *handles


def udp(pkts, port):
    return [p for p in pkts if UDP in p and port in (p[UDP].sport, p[UDP].dport)]


def udp_payload(p) -> bytes:
    """The UDP payload as bytes, whatever scapy decodes port 4500 as (it depends on the layers loaded)."""
    return bytes(p[UDP].payload)[:p[UDP].len - 8]


def test_ike_floats_to_4500_esp_in_udp_and_keepalives(natted):
    lab, client, server = natted
    for node in (client, server):
        start(node, SCENARIO)
    payload = MARKER * 1000
    with lab.capture_segment("outside") as cap:
        client.exec(["ping", "-c", "2", "-i", "0.2", "-W", "5", SERVER], check=True)
        assert tcp_transfer(client, server, payload, port=5001) == payload
        # NAT-T keepalives: one 0xFF byte on UDP 4500 from the client (every 2 s in this scenario).
        wait_until(lambda: [p for p in udp(peek(cap), 4500)
                            if udp_payload(p) == b"\xff" and p[IP].dst == SERVER],
                   10, what="a NAT-T keepalive from the client")
    pkts = cap.packets()
    assert_only_protocols(pkts, between=(NAT, SERVER), allowed={"udp/500", "udp/4500"})
    assert_marker_absent(pkts, MARKER)
    ike500, on4500 = first_sends(udp(pkts, 500)), udp(pkts, 4500)
    assert len(ike500) == 4, [p.summary() for p in ike500]  # main mode 1-4, then the float
    assert pkts.index(ike500[-1]) < pkts.index(on4500[0])
    nat_ports = {p[UDP].sport for p in on4500 if p[IP].src == NAT}
    assert len(nat_ports) == 1 and 40000 <= nat_ports.pop() <= 40999  # the NAT rewrote 4500
    esp_in_udp = [p for p in on4500 if len(udp_payload(p)) > 8 and udp_payload(p)[:4] != bytes(4)]
    assert len(esp_in_udp) > 10  # ESP after the float: SPI first, no non-ESP marker

    qc, qs = wait_quick_mode(client), wait_quick_mode(server)
    assert qc[0]["udp encapsulation"] and qs[0]["udp encapsulation"], dump(client)
    mc, ms = ipsecctl(client, "mmsa"), ipsecctl(server, "mmsa")
    assert mc[0]["nat"] == "we are behind a NAT" and ms[0]["nat"] == "the peer is behind a NAT"
    assert ms[0]["remote"].startswith(f"{NAT}:4")  # the server talks to the NAT's mapping of port 4500
    assert counters(server)["confidential_bytes_received"] >= len(payload)
    assert counters(server)["nat_keepalives_received"] >= 1

    args = ipsecctl(server, "keys")["tshark_args"]
    rows = isakmp_rows(cap.pcap, args, ["udp.srcport", "isakmp.exchangetype", "isakmp.id.data.ipv4_addr"])
    identities = [r[2] for r in rows if r[1] == "2" and r[2]]
    assert identities == ["192.168.1.10", SERVER]  # main mode 5-6 on 4500, decrypted after the marker
    inner, authentic = tshark_decrypted_payloads(cap.pcap, ["-d", "udp.port==4500,udpencap", *args])
    assert MARKER * 10 in inner and authentic > 0
    # the client's keys, behind the NAT, decrypt its ESP as the public side sees it (from the NAT's address)
    args = ipsecctl(client, "keys")["tshark_args"]
    inner, authentic = tshark_decrypted_payloads(cap.pcap, ["-d", "udp.port==4500,udpencap", *args])
    assert MARKER * 10 in inner and authentic == len(esp_in_udp)


def test_a_client_without_nat_t_announces_none_and_its_quick_mode_is_refused(natted):
    """`ike.nat_traversal: []` on the client (Windows 2000 without the NAT-T update) toward this NAT-T
    server: main mode 1 carries no NAT-T vendor ID, so no NAT-D and IKE stays on UDP 500; quick mode 1 then
    names the client's private address, which no filter of the server covers (its rule names the NAT's):
    refused as scenarios/transport-nat-without-nat-t says, and nothing crosses."""
    lab, client, server = natted
    start(client, "transport-nat-without-nat-t")
    start(server, SCENARIO)
    with lab.capture_segment("outside") as cap:
        client.exec(["ping", "-c", "1", "-W", "2", SERVER])
        wait_event(server, "No policy configured")
        wait_event(client, "refused quick mode: INVALID-ID-INFORMATION")
    pkts = cap.packets()
    assert not udp(pkts, 4500) and not [p for p in pkts if ICMP in p or p[IP].proto == 50]
    rows = isakmp_rows(cap.pcap, [], ["ip.src", "isakmp.exchangetype", "isakmp.vid_bytes"])
    mm1, mm2 = rows[0], rows[1]
    assert mm1[:2] == [NAT, "2"] and mm1[2] == "1e2b516905991c7d7c96fcbfb587e46100000004"  # MS NT5 alone
    assert "90cb80913ebb696e086381b5ec427b1f" in mm2[2]  # the server announces draft-02 all the same
    assert ipsecctl(server, "mmsa")[0]["nat"] == "no NAT-T" and not ipsecctl(server, "qmsa")
    assert counters(server)["ike_negotiation_failures_invalid_selectors"] >= 1
