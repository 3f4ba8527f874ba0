"""Kerberos main mode (issue 13) between domain members, with the predefined policies AS SHIPPED (no
authentication override): ipsecd in the members' containers, their keytabs and krb5.conf from the Samba DC,
the KDC in the dc node. member-b runs Secure Server (Require Security), member-a Client (Respond Only), so
member-b's secured answer starts IKE: it is the initiator (it needs a ticket for host/member-a) and member-a
the acceptor. host-c is outside the domain (no keytab, no ipsecd).

The lab is topologies/domain.yaml with host-c added; `lab up` joins the members (keytab in /etc/krb5.keytab,
krb5.conf, FQDNs in /etc/hosts). Each test assigns the shipped policies locally (test_domain.py assigns them
by Group Policy).
"""

from __future__ import annotations

import pytest
from scapy.layers.inet import IP, TCP

from ipsecd.policy.predefined import FILES, FOLDER
from lab.backend import CommandError
from lab.capture import (
    assert_marker_absent,
    assert_only_protocols,
    assert_protocol_seen,
    ip_packets,
    protocol,
    wait_until,
)
from lab.harness import (
    counters,
    dump,
    esp_sas,
    events,
    from_first,
    ipsecctl,
    isakmp_rows,
    sources,
    start,
    stop,
    tshark_decrypted_payloads,
    wait_for_sas,
)
from lab.running import Lab, Node
from lab.traffic import tcp_transfer

A, B, C, DC = "10.0.0.1", "10.0.0.2", "10.0.0.3", "10.0.0.10"
MARKER = b"KERBEROS-DOMAIN-MARKER-"
KDC_TIMEOUT = 3  # seconds: ike.kerberos.kdc_timeout_seconds (MIT alone retries for about 18 s)
CCACHE = "/run/ipsecd-krb5cc"  # a file, so that tickets outlive an ipsecd restart
DOMAIN = {
    "nodes": {"host-c": {"role": "host", "interfaces": {"eth1": {"segment": "lan", "address": f"{C}/24"}}}},
}
SHIPPED = {name: (FOLDER / file).read_text() for name, file in FILES.items()}  # the files, untouched
SILENT_KDC = ("nft add table inet kdc; "
              "nft add chain inet kdc input '{ type filter hook input priority 0; }'; "
              "nft add rule inet kdc input th dport 88 drop")


def node_config(node: Node, keytab: str | None = None) -> str:
    keytab = keytab or "/etc/krb5.keytab"  # where `lab up` puts the computer account's keys
    return ("policy: {store: policies, assign: policy.yaml}\n"
            "ike:\n"
            f"  kerberos: {{keytab: {keytab}, principal: {node.name}$@LAB.TEST, ccache: 'FILE:{CCACHE}',\n"
            f"             kdc_timeout_seconds: {KDC_TIMEOUT}}}\n")


def start_member(node: Node, policy: str, keytab: str | None = None) -> None:
    """ipsecd in a member with a predefined policy as shipped, assigned locally."""
    start(node, "", {"ipsecd.yaml": node_config(node, keytab), "policies/policy.yaml": SHIPPED[policy]})


@pytest.fixture
def domain(lab_up) -> Lab:
    lab = lab_up("domain", overrides=DOMAIN)
    dc = lab.node("dc")
    for name in ("member-a", "member-b"):
        lab.node(name).exec(["rm", "-f", CCACHE], check=True)
    yield lab
    for node in lab.nodes.values():
        if node.name != "dc":
            stop(node)
            node.exec("for f in /run/lab/nc-*.pid; do [ -e $f ] || continue; p=$(cat $f); "
                      "pkill -P $p; kill $p; rm -f $f; done 2>/dev/null")
    dc.exec(["sh", "-c", "nft delete table inet kdc 2>/dev/null; true"])


def without_ike_fragments(packets: list) -> list:
    """Main mode 3 carries the AP-REQ (over 1500 bytes with the ticket), so IP fragments it: the later
    fragments have no UDP header; they go with the udp/500 first fragment of the same source and IP ID."""
    ike = {(p[IP].src, p[IP].id) for p in ip_packets(packets) if protocol(p) == "udp/500"}
    return [p for p in ip_packets(packets) if not (p[IP].frag and (p[IP].src, p[IP].id) in ike)]


def failed_events(node: Node) -> list[str]:
    return [e["text"] for e in events(node) if "failed" in e["text"]]


def test_secure_server_and_client_as_shipped_secure_their_traffic_with_kerberos(domain: Lab) -> None:
    a, b = domain.node("member-a"), domain.node("member-b")
    start_member(b, "secure server")
    start_member(a, "client")
    payload = MARKER * 3000
    with domain.capture_segment("lan") as cap:
        assert tcp_transfer(a, b, payload, port=5001, timeout=30) == payload, dump(b)
    pkts = cap.packets()
    # Client (Respond Only) sends in clear until it has an SA: only its connection attempts (SYNs, no data,
    # repeated while the first contact's tickets are fetched), and from the first ESP packet on only ESP.
    negotiating = without_ike_fragments(from_first(pkts, "udp/500", (A, B)))
    clear = [p for p in negotiating if protocol(p) not in ("udp/500", "esp")]
    assert all(p[IP].src == A and p[TCP].flags == "S" and not p[TCP].payload for p in clear), clear
    assert_only_protocols(without_ike_fragments(from_first(pkts, "esp", (A, B))), between=(A, B),
                          allowed={"udp/500", "esp"})
    assert_marker_absent(pkts, MARKER)
    assert_protocol_seen(pkts, "esp", between=(A, B))
    assert sources(pkts, "udp/500") == {A, B}
    wait_for_sas(a, B)
    (mm_b,), (mm_a,) = ipsecctl(b, "mmsa"), ipsecctl(a, "mmsa")
    assert (mm_b["role"], mm_a["role"]) == ("initiator", "responder")  # the server's answer starts IKE
    assert mm_b["authentication"] == mm_a["authentication"] == "kerberos"
    assert mm_b["peer identity"] == "host/member-a.lab.test@LAB.TEST"  # the service it has a ticket for
    assert mm_a["peer identity"] == "member-b$@LAB.TEST"  # the computer account the AP-REQ names
    # Keys exported like the others: tshark reads main mode 5/6 and the ESP with them.
    args = ipsecctl(b, "keys")["tshark_args"]
    rows = isakmp_rows(cap.pcap, args, ["isakmp.exchangetype", "isakmp.id.data.ipv4_addr"])
    assert [r[0] for r in rows[:6]] == ["2"] * 6 and (rows[4][1], rows[5][1]) == (B, A)
    inner, authentic = tshark_decrypted_payloads(cap.pcap, args)
    assert MARKER * 10 in inner and authentic > 0
    assert counters(b)["confidential_bytes_received"] >= len(payload)


def test_server_request_security_falls_back_to_clear_with_a_node_outside_the_domain(domain: Lab) -> None:
    a, c = domain.node("member-a"), domain.node("host-c")
    start_member(a, "server")
    with domain.capture_segment("lan") as cap:
        assert tcp_transfer(a, c, MARKER * 10, port=5002, timeout=30) == MARKER * 10
    pkts = cap.packets()
    assert sources(pkts, "udp/500") == {A}  # asked, nobody answered
    assert sources(pkts, "tcp/5002") == {A, C}  # then in clear, as Request Security allows
    assert counters(a)["ike_soft_associations"] >= 1, dump(a)


def test_twin_a_member_without_its_keytab_fails_authentication_with_the_reason(domain: Lab) -> None:
    a, b = domain.node("member-a"), domain.node("member-b")
    start_member(b, "secure server", keytab="/etc/absent.keytab")  # not joined
    start_member(a, "client")
    with pytest.raises(CommandError):
        tcp_transfer(a, b, MARKER * 10, port=5003, timeout=8)
    count = wait_until(lambda: counters(b).get("ike_authentication_failures_no_credentials"), 10,
                       what="member-b: an authentication failure for no credentials")
    assert count >= 1 and counters(b)["ike_authentication_failures"] >= count
    assert any("no credentials" in text for text in failed_events(b))
    assert esp_sas(a) == esp_sas(b) == [] and ipsecctl(b, "mmsa") == []


def test_twin_a_disabled_computer_account_fails_its_next_main_mode_with_the_kdcs_reason(domain: Lab) -> None:
    dc, a, b = domain.node("dc"), domain.node("member-a"), domain.node("member-b")
    dc.exec(["samba-tool", "user", "disable", "member-b$"], check=True)
    try:
        start_member(b, "secure server")
        start_member(a, "client")
        with pytest.raises(CommandError):
            tcp_transfer(a, b, MARKER * 10, port=5004, timeout=8)
        wait_until(lambda: counters(b).get("ike_authentication_failures_account_disabled"), 10,
                   what=f"member-b: an authentication failure 'account disabled' ({failed_events(b)})")
        assert esp_sas(b) == []
    finally:
        dc.exec(["samba-tool", "user", "enable", "member-b$"], check=True)
    assert any("revoked" in text for text in failed_events(b)), failed_events(b)  # the KDC's own words


def main_mode_seconds(node: Node) -> float:
    """From `starting main mode` to the failure, on the node's event clock."""
    texts = events(node)
    started = next(e["time"] for e in texts if "starting main mode" in e["text"])
    failed = next(e["time"] for e in texts if "main mode with" in e["text"] and "failed" in e["text"])
    return failed - started


def test_kdc_silent_a_cached_ticket_still_works_and_without_one_fails_within_the_timeout(domain: Lab) -> None:
    dc, a, b = domain.node("dc"), domain.node("member-a"), domain.node("member-b")
    start_member(b, "secure server")
    start_member(a, "client")
    assert tcp_transfer(a, b, MARKER, port=5005, timeout=30) == MARKER, dump(b)  # tickets now in the ccache
    stop(a)
    stop(b)  # the SAs go; the ticket stays in member-b's file ccache
    dc.exec(["sh", "-c", SILENT_KDC], check=True)
    start_member(b, "secure server")
    start_member(a, "client")
    assert tcp_transfer(a, b, MARKER, port=5006, timeout=30) == MARKER, dump(b)  # a new main mode, no KDC
    assert [m["authentication"] for m in ipsecctl(b, "mmsa")] == ["kerberos"]
    stop(a)
    stop(b)
    b.exec(["rm", "-f", CCACHE], check=True)
    start_member(b, "secure server")
    start_member(a, "client")
    with pytest.raises(CommandError):
        tcp_transfer(a, b, MARKER, port=5007, timeout=KDC_TIMEOUT + 5)
    wait_until(lambda: counters(b).get("ike_authentication_failures_kdc_unreachable"), 10,
               what="member-b: an authentication failure 'KDC unreachable'")
    assert KDC_TIMEOUT <= main_mode_seconds(b) < KDC_TIMEOUT + 2, events(b)
    assert any(f"within {KDC_TIMEOUT} s" in text for text in failed_events(b)), failed_events(b)
