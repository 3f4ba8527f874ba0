"""ike-transport-psk on intranet-pair: two ipsecd nodes negotiate ESP transport mode with IKE, configured by
Windows-style policies, and the failure twins (wrong pre-shared key, proposal mismatch, UDP 500 dropped).

See scenarios/ike-transport-psk/README.md. The module shares one lab; every test (re)starts ipsecd on both
nodes with the scenario's folders, plus the change its twin makes.
"""

import pytest
from scapy.layers.inet import IP, UDP
from scapy.layers.ipsec import ESP
from scenarios.driver_lab import counters, ipsecctl, tshark_decrypted_payloads
from scenarios.ike_lab import (
    dump,
    events,
    node_files,
    start,
    stop,
    tshark_fields,
    wait_event,
    wait_quick_mode,
)

from lab.capture import assert_marker_absent, assert_only_protocols, assert_protocol_seen, wait_until
from lab.traffic import tcp_transfer

SCENARIO = "ike-transport-psk"
MARKER = b"IKE-TRANSPORT-MARKER-"
A, B = "10.0.0.1", "10.0.0.2"


@pytest.fixture
def pair(lab_up):
    lab = lab_up("intranet-pair")
    a, b = lab.node("host-a"), lab.node("host-b")
    yield lab, a, b
    for node in (a, b):
        stop(node)
        node.firewall(drop=[])


def policy_of(node, old: str, new: str) -> dict[str, str]:
    """The node's policy file of the scenario with one text replaced: a failure twin's change."""
    name = f"policies/{node}.yaml"
    text = node_files(SCENARIO, node)[name]
    assert old in text
    return {name: text.replace(old, new)}


def test_psk_negotiation_then_only_esp(pair):
    lab, a, b = pair
    for node in (a, b):
        start(node, SCENARIO)
    payload = MARKER * 2000
    with lab.capture_segment("lan") as cap:
        a.exec(["ping", "-c", "3", "-i", "0.2", "-W", "5", B], check=True)  # the first packet waits for IKE
        assert tcp_transfer(a, b, payload, port=5001) == payload
    pkts = cap.packets()
    assert_only_protocols(pkts, between=(A, B), allowed={"esp", "udp/500"})
    assert_marker_absent(pkts, MARKER)
    ike = [p for p in pkts if UDP in p and p[UDP].dport == 500]
    esp = assert_protocol_seen(pkts, "esp", between=(A, B))
    assert len(ike) == 9, [p.summary() for p in ike]  # main mode 6 + quick mode 3, no retransmission
    assert pkts.index(ike[-1]) < pkts.index(esp[0])  # ISAKMP first, then only ESP

    qa, qb = wait_quick_mode(a), wait_quick_mode(b)
    assert len(qa) == len(qb) == 1, dump(a)
    assert qa[0]["inbound spi"] == qb[0]["outbound spi"] and qa[0]["outbound spi"] == qb[0]["inbound spi"]
    assert qa[0]["security method"] == "ESP[3DES,SHA1]" and qa[0]["mode"] == "transport"
    assert {p[ESP].spi for p in esp} == {int(qa[0]["inbound spi"], 16), int(qa[0]["outbound spi"], 16)}
    ma, mb = ipsecctl(a, "mmsa"), ipsecctl(b, "mmsa")
    assert [m["role"] for m in ma] == ["initiator"] and [m["role"] for m in mb] == ["responder"]
    assert ma[0]["cookies"] == mb[0]["cookies"] and ma[0]["authentication"] == "psk"
    assert ma[0]["algorithms"].startswith("3DES/SHA1")

    for node in (a, b):
        c = counters(node)
        assert c["ike_oakley_main_modes"] == 1 and c["ike_oakley_quick_modes"] == 1, c
        assert c["ike_key_additions"] == 2 and c["ike_authentication_failures"] == 0
    assert counters(b)["confidential_bytes_received"] >= len(payload)

    # The independent decoder: tshark with the keys ipsecctl exports reads main mode 5-6 (identities),
    # quick mode (SPIs) and the ESP (the marker, ICV good).
    args = ipsecctl(a, "keys")["tshark_args"]
    rows = tshark_fields(cap.pcap, args, ["isakmp.exchangetype", "isakmp.id.data.ipv4_addr", "isakmp.spi"],
                         "isakmp")
    assert [r[0] for r in rows] == ["2"] * 6 + ["32"] * 3
    assert rows[4][1] == A and rows[5][1] == B  # readable only once decrypted
    assert qa[0]["inbound spi"][2:] in rows[6][2].replace(":", "")
    inner, authentic = tshark_decrypted_payloads(cap.pcap, args)
    assert MARKER * 10 in inner and authentic > 0


def test_daemon_stop_deletes_the_sas_at_the_peer(pair):
    _lab, a, b = pair
    for node in (a, b):
        start(node, SCENARIO)
    a.exec(["ping", "-c", "1", "-W", "5", B], check=True)
    wait_quick_mode(b)
    stop(a)  # IKE.stop(): a delete for the quick mode SAs and one for the main mode SA
    wait_until(lambda: not ipsecctl(b, "qmsa") and not ipsecctl(b, "mmsa"), 10,
               what="host-b to drop the SAs host-a deleted")
    assert any("deleted" in e["text"] and A in e["text"] for e in events(b)) or ipsecctl(b, "sa") == []


def test_wrong_psk_no_sa_and_authentication_failure(pair):
    _lab, a, b = pair
    start(a, SCENARIO)
    start(b, SCENARIO, policy_of("host-b", "intranet-pair-lab", "not-the-key"))
    assert not a.exec(["ping", "-c", "2", "-W", "2", B]).ok
    failure = wait_event(b, "authentication failed")
    assert failure["kind"] == "negotiation-failed"
    wait_until(lambda: counters(b)["ike_authentication_failures"] >= 1, 10, what="the counter")
    assert ipsecctl(a, "qmsa") == [] and ipsecctl(b, "qmsa") == []
    assert ipsecctl(a, "sa") == [] and ipsecctl(b, "sa") == []


def test_proposal_mismatch_has_a_readable_reason(pair):
    _lab, a, b = pair
    start(a, SCENARIO)
    start(b, SCENARIO, policy_of("host-b", '["ESP[3DES,SHA1]"]', '["ESP[DES,MD5]"]'))
    assert not a.exec(["ping", "-c", "2", "-W", "2", B]).ok
    refused = wait_event(b, "quick mode")
    assert "proposal" in refused["text"].lower() or "no acceptable" in refused["text"].lower(), events(b)
    wait_event(a, "NO-PROPOSAL-CHOSEN")
    assert counters(b)["ike_negotiation_failures"] >= 1
    assert ipsecctl(a, "sa") == [] and ipsecctl(b, "sa") == []


def test_udp_500_dropped_no_sa_after_retransmissions(pair):
    lab, a, b = pair
    for node in (a, b):
        start(node, SCENARIO)
    b.firewall(drop=["udp/500"])
    with lab.capture_segment("lan") as cap:
        assert not a.exec(["ping", "-c", "1", "-W", "2", B]).ok
        failure = wait_event(a, "no answer", timeout=15)  # retransmit [1, 1, 1]: 4 sends, then 1 s
    assert "main mode" in failure["text"] and "UDP 500" in failure["text"]
    sent = [p for p in cap.packets() if UDP in p and p[UDP].dport == 500 and p[IP].src == A]
    assert len(sent) >= 4  # the first send and three retransmissions
    c = counters(a)
    assert c["ike_negotiation_failures_no_response"] == 1 and c["ike_retransmissions"] == 3
    assert b.dropped() >= 4 and ipsecctl(a, "sa") == []
