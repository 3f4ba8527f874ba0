"""policy-secure-server on intranet-pair: Secure Server (Require Security) with a Client, and its twins.

See scenarios/policy-secure-server/README.md. host-b runs Secure Server in every test; host-a's IPsec
changes per test. The module shares one lab; each test restarts ipsecd and stops it at the end.
"""

import pytest
from pair import BARE_PAIR
from scapy.layers.inet import IP
from scapy.layers.ipsec import ESP

from lab.backend import CommandError
from lab.capture import Capture, assert_marker_absent, assert_only_protocols, assert_protocol_seen, wait_until
from lab.harness import (
    counters,
    esp_sas,
    from_first,
    ipsecctl,
    ipsecd_in,
    predefined_policy,
    sources,
    start_policy,
    stop,
    tshark_decrypted_payloads,
    wait_counter,
    wait_for_sas,
)
from lab.traffic import tcp_transfer

SCENARIO = "policy-secure-server"
MARKER = b"SECURE-SERVER-MARKER-"
A, B = "10.0.0.1", "10.0.0.2"
PSK = "policy-secure-server-lab"


@pytest.fixture
def pair(lab_up):
    pair = lab_up("intranet-pair", overrides=BARE_PAIR)
    with ipsecd_in(pair, {"host-b": predefined_policy("secure server", PSK)}) as lab:
        yield lab, lab.node("host-a"), lab.node("host-b")


def assert_secured(pkts, marker: bytes) -> list:
    """From the first IKE packet on only IKE and ESP between the hosts, the marker never in clear;
    returns the ESP packets."""
    assert_only_protocols(from_first(pkts, "udp/500", (A, B)), allowed={"udp/500", "esp"})
    assert_marker_absent(pkts, marker)
    return assert_protocol_seen(pkts, "esp", between=(A, B))


def assert_same_sas(a, b) -> None:
    """Each host's outbound SAs are the other's inbound ones, and both have a pair."""
    sa_a, sa_b = wait_for_sas(a, B), wait_for_sas(b, A)
    spis = {(s["direction"], s["spi"]) for s in sa_a}
    assert {("outbound" if d == "inbound" else "inbound", spi) for d, spi in spis} == {
        (s["direction"], s["spi"]) for s in sa_b}
    assert {s["mode"] for s in sa_a + sa_b} == {"transport"}


def secured_transfer(lab, client, server, port: int, payload: bytes) -> Capture:
    """With host-a running Client: a TCP transfer, secured after IKE, both hosts holding the SA pair."""
    start_policy(lab.node("host-a"), predefined_policy("client", PSK))
    with lab.capture_segment("lan") as cap:
        assert tcp_transfer(client, server, payload, port=port, timeout=20) == payload
    esp = assert_secured(cap.packets(), MARKER)
    assert_same_sas(lab.node("host-a"), lab.node("host-b"))
    assert {f"{p[ESP].spi:#010x}" for p in esp} <= {s["spi"] for s in esp_sas(lab.node("host-b"), A)}
    return cap


def test_client_connecting_to_the_secure_server_is_secured_after_ike(pair):
    lab, a, b = pair
    payload = MARKER * 3000
    cap = secured_transfer(lab, a, b, 5001, payload)
    pkts = cap.packets()
    assert sources(pkts, "udp/500") == {A, B}
    assert from_first(pkts, "udp/500", (A, B))[0][IP].src == B, "the server's secured answer starts IKE"
    assert {s["filter"] for s in esp_sas(b, A)} == {"All IP Traffic/all ip"}
    assert {s["filter"] for s in esp_sas(a, B)} == {"<Dynamic> 10.0.0.1/32 <-> 10.0.0.2/32"}  # answered
    inner, authentic = tshark_decrypted_payloads(cap.pcap, ipsecctl(b, "keys")["tshark_args"])
    assert MARKER * 10 in inner and authentic > 0  # the independent decoder finds it inside the ESP
    assert counters(b)["confidential_bytes_received"] >= len(payload)


def test_the_secure_server_opening_the_connection_sends_nothing_in_clear(pair):
    lab, a, b = pair
    cap = secured_transfer(lab, b, a, 5003, MARKER * 1000)
    assert_only_protocols(cap.packets(), between=(A, B), allowed={"udp/500", "esp"})  # even the first SYN


def test_ping_crosses_in_clear_all_icmp_traffic_is_permitted(pair):
    lab, a, b = pair
    start_policy(a, predefined_policy("client", PSK))
    with lab.capture_segment("lan") as cap:
        a.exec(["ping", "-c", "2", "-i", "0.2", "-W", "2", B], check=True)
    assert_only_protocols(cap.packets(), between=(A, B), allowed={"icmp"})
    assert esp_sas(b, A) == []  # nothing to negotiate for permitted traffic


def test_twin_a_client_with_another_key_gets_nothing_through(pair):
    lab, a, b = pair
    start_policy(a, predefined_policy("client", "not-" + PSK))
    with lab.capture_segment("lan") as cap, pytest.raises(CommandError):
        tcp_transfer(a, b, MARKER * 100, port=5004, timeout=8)
    pkts = cap.packets()
    assert sources(pkts, "udp/500") == {A, B}  # IKE was tried, and failed
    assert_only_protocols(pkts, between=(A, B), allowed={"udp/500", "tcp/5004"})
    assert sources(pkts, "tcp/5004") == {A}, "the server never answers in clear"
    assert_marker_absent(pkts, MARKER)
    assert esp_sas(a) == esp_sas(b) == []


def test_twin_a_host_without_ipsec_gets_only_ping_through(pair):
    lab, a, b = pair  # host-a runs no ipsecd
    before = counters(b)["dropped_by_policy"]
    with lab.capture_segment("lan") as cap:
        with pytest.raises(CommandError):
            tcp_transfer(a, b, MARKER * 100, port=5005, timeout=8)
        a.exec(["ping", "-c", "2", "-i", "0.2", "-W", "2", B], check=True)
    pkts = cap.packets()
    assert sources(pkts, "udp/500") == {B}  # host-b asks, nobody answers
    assert sources(pkts, "tcp/5005") == {A}, "the server never falls back to clear"
    assert_marker_absent(pkts, MARKER)
    assert wait_counter(b, "dropped_by_policy", before + 1) > before
    assert esp_sas(b) == []


def kill_ipsecd(node) -> None:
    """ipsecd dies as a crash would (SIGKILL: nothing of it runs to clean up)."""
    node.exec(["pkill", "-9", "-f", "ipsecd --config"], check=True)
    wait_until(lambda: not node.process("ipsecd").alive(), 5, what=f"{node.name}: ipsecd to die")


def test_secured_traffic_never_leaves_in_clear_while_ipsecd_is_dead_and_flows_again_after_a_restart(pair):
    lab, a, b = pair
    secured_transfer(lab, b, a, 5006, MARKER * 1000)
    kill_ipsecd(b)
    with lab.capture_segment("lan") as cap, pytest.raises(CommandError):
        tcp_transfer(b, a, MARKER * 1000, port=5007, timeout=6)
    pkts = cap.packets()
    assert_marker_absent(pkts, MARKER)
    assert sources(pkts, "tcp/5007") <= {A}, "host-b sent its connection in clear with ipsecd dead"
    start_policy(b, predefined_policy("secure server", PSK))  # replaces what the dead one left in the kernel
    assert counters(b)["dropped_fail_closed"] > 0  # the left-over ruleset's drops, carried over
    with lab.capture_segment("lan") as cap:
        assert tcp_transfer(b, a, MARKER * 1000, port=5008, timeout=20) == MARKER * 1000
    assert_secured(cap.packets(), MARKER)


def test_a_clean_stop_removes_the_kernel_policy(pair):
    b = pair[2]
    assert b.exec(["nft", "list", "table", "inet", "ipsecd"]).ok
    stop(b)
    assert not b.exec(["nft", "list", "table", "inet", "ipsecd"]).ok
    assert "fwmark" not in b.exec(["ip", "rule", "show"]).stdout
