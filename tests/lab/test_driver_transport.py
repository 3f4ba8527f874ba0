"""driver-transport on intranet-pair: ESP transport mode with manual keys, and its failure twins.

See scenarios/driver-transport/README.md. The module shares one lab; tests that change a node's
configuration put the scenario's own back when they end.
"""

import pytest
from scapy.layers.inet import IP
from scapy.layers.ipsec import AH, ESP
from scapy.layers.l2 import Ether

from lab.capture import (
    assert_marker_absent,
    assert_marker_present,
    assert_only_protocols,
    assert_protocol_seen,
    wait_until,
)
from lab.harness import (
    counters,
    inject_frames,
    ipsecctl,
    overrides,
    reload_config,
    scenario_file,
    tshark_decrypted_payloads,
    wait_counter,
    wait_ready,
)
from lab.traffic import tcp_transfer, udp_send

SCENARIO = "driver-transport"
MARKER = b"DRIVER-TRANSPORT-MARKER-"
A, B = "10.0.0.1", "10.0.0.2"


@pytest.fixture
def pair(lab_up):
    lab = lab_up("intranet-pair", overrides=overrides(SCENARIO, "host-a", "host-b"))
    a, b = lab.node("host-a"), lab.node("host-b")
    wait_ready(a, b)
    yield lab, a, b
    for node in (a, b):  # whatever a test changed, the next one starts from the scenario's configuration
        reload_config(node, scenario_file(SCENARIO, node.name))


def secured_exchange(lab, a, b, payload: bytes, port: int, protocol: str):
    """Ping and a TCP transfer from a to b; the LAN must show only `protocol` and never the marker."""
    with lab.capture_segment("lan") as cap:
        a.exec(["ping", "-c", "2", "-i", "0.2", "-W", "2", B], check=True)
        assert tcp_transfer(a, b, payload, port=port) == payload
    pkts = cap.packets()
    assert_only_protocols(pkts, between=(A, B), allowed={protocol})
    assert_marker_absent(pkts, MARKER)
    return cap, pkts


def test_ping_and_tcp_cross_the_lan_only_as_esp(pair):
    lab, a, b = pair
    payload = MARKER * 3000  # 72 kB: many full-size segments
    cap, pkts = secured_exchange(lab, a, b, payload, 5001, "esp")
    esp = assert_protocol_seen(pkts, "esp", between=(A, B))
    assert {p[ESP].spi for p in esp} == {0x1001, 0x2001}
    # The independent decoder: tshark, given the keys ipsecctl exports, finds the marker inside the ESP
    # and verifies the HMAC-SHA1 ICVs of host-b's direction.
    inner, authentic = tshark_decrypted_payloads(cap.pcap, ipsecctl(a, "keys")["tshark_args"])
    assert MARKER * 10 in inner
    assert authentic > 0
    sas = {s["spi"]: s for s in ipsecctl(a, "sa")}
    assert sas["0x00001001"]["counters"]["packets"] > 40 and sas["0x00002001"]["counters"]["packets"] > 2
    stats = counters(b)
    assert stats["confidential_bytes_received"] >= len(payload)
    assert stats["packets_not_authenticated"] == stats["bad_spi_packets"] == 0


def test_ah_plus_esp_bundles_carry_the_traffic(pair):
    lab, a, b = pair
    for node in (a, b):
        reload_config(node, scenario_file(SCENARIO, f"{node.name}-ah-esp"))
    payload = MARKER * 1000
    cap, pkts = secured_exchange(lab, a, b, payload, 5004, "ah")
    assert {p[AH].spi for p in pkts if AH in p} == {0x5102, 0x5202}
    assert {p[AH].nh for p in pkts if AH in p} == {50}  # AH outside, ESP inside (RFC 4301 §4.5)
    inner, authentic = tshark_decrypted_payloads(cap.pcap, ipsecctl(a, "keys")["tshark_args"])
    assert MARKER * 10 in inner and authentic > 0
    assert {s["spi"]: s["bundle"] for s in ipsecctl(b, "sa")} == {
        "0x00005102": "0x00005101", "0x00005101": None, "0x00005202": "0x00005201", "0x00005201": None}
    assert counters(b)["authenticated_bytes_received"] >= len(payload)


def test_esp_sa_table_for_wireshark(pair):
    _, a, _ = pair
    table = a.exec(["ipsecctl", "keys", "--wireshark"], check=True).stdout.splitlines()
    assert table == [
        '"IPv4","10.0.0.1","10.0.0.2","0x00001001","AES-GCM with 16 octet ICV [RFC4106]",'
        '"0x05cb533f1bda15947e50d12fd489aeed809d230a","NULL",""',
        '"IPv4","10.0.0.2","10.0.0.1","0x00002001","AES-CBC [RFC3602]","0xb610bd7aa2abb603f64f309d8142bc95",'
        '"HMAC-SHA-1-96 [RFC2404]","0x00b2f61b085dfc0c02411b4c1105827eb3fcb9ea"',
    ]


def test_a_bad_configuration_is_refused_on_reload_and_the_old_one_stays(pair):
    _, a, _ = pair
    bad = scenario_file(SCENARIO, "host-a").replace("encryption: aes-gcm-128", "encryption: aes-gcm-127")
    a.put_file("/etc/ipsecd/ipsecd.yaml", bad)
    refused = a.exec(["ipsecctl", "reload"])
    assert refused.rc == 1
    assert "ipsecd.yaml:17: sas[0].encryption: unknown encryption algorithm 'aes-gcm-127'" in refused.stderr
    a.exec(["ping", "-c", "1", "-W", "2", B], check=True)  # still secured with the previous configuration
    assert len(ipsecctl(a, "sa")) == 2


def test_a_host_without_the_sa_sending_in_clear_gets_nothing_through(pair):
    lab, a, b = pair
    reload_config(a, "filters: []\n")  # host-a now sends everything in clear
    before = counters(b)["unsecured_packets_dropped"]
    with lab.capture_segment("lan") as cap:
        assert a.exec(["ping", "-c", "2", "-i", "0.2", "-W", "1", B]).rc != 0
    assert_protocol_seen(cap.packets(), "icmp", between=(A, B))  # it did go out, in clear
    assert wait_counter(b, "unsecured_packets_dropped", before + 2) >= before + 2
    assert counters(b)["dropped_by_policy"] >= before + 2


def test_a_wrong_key_is_counted_as_not_authenticated(pair):
    _, a, b = pair
    wrong = scenario_file(SCENARIO, "host-b").replace("05cb533f1bda15947e50d12fd489aeed809d230a",
                                                        "15cb533f1bda15947e50d12fd489aeed809d230a")
    reload_config(b, wrong)
    assert a.exec(["ping", "-c", "2", "-i", "0.2", "-W", "1", B]).rc != 0
    assert wait_counter(b, "packets_not_authenticated", 2) >= 2
    sa = {s["spi"]: s for s in ipsecctl(b, "sa")}["0x00001001"]
    assert sa["counters"]["packets_not_authenticated"] >= 2 and sa["counters"]["packets"] == 0


def test_block_and_permit_filters_do_what_they_say(pair):
    lab, a, b = pair
    before = counters(a)["blocked_by_filter"]
    with lab.capture_segment("lan") as cap:
        udp_send(a, B, 9999, MARKER + b"blocked")
        assert tcp_transfer(a, b, MARKER * 10, port=7000) == MARKER * 10
    pkts = cap.packets()
    assert not [p for p in pkts if MARKER + b"blocked" in bytes(p)]  # dropped before the wire
    assert_marker_present(pkts, MARKER)  # TCP 7000 is permitted in clear
    assert_protocol_seen(pkts, "tcp/7000", between=(A, B))
    assert wait_counter(a, "blocked_by_filter", before + 1) >= before + 1
    filters = {(f["name"], f["direction"]): f for f in ipsecctl(a, "filters")}
    assert filters[("no-udp-9999", "outbound")]["packets"] >= 1
    assert filters[("clear-tcp-7000", "outbound")]["packets"] >= 1


def test_tampered_replayed_and_unknown_spi_packets_raise_their_counters(pair):
    lab, a, b = pair
    with lab.capture_segment("lan") as cap:
        a.exec(["ping", "-c", "1", "-W", "2", B], check=True)
    original = next(p for p in cap.packets() if ESP in p and p[IP].dst == B)
    frame = bytes(original)
    tampered = bytearray(frame)  # a later sequence number (so the replay check passes) and a flipped bit
    tampered[14 + 24:14 + 28] = (original[ESP].seq + 1000).to_bytes(4, "big")
    tampered[-20] ^= 0x01
    unknown = bytearray(frame)
    unknown[14 + 20:14 + 24] = (0x0BAD).to_bytes(4, "big")  # the SPI
    ether = original[Ether]
    truncated = Ether(src=ether.src, dst=ether.dst) / IP(src=A, dst=B, proto=50) / b"\x00\x00\x10"  # no SPI
    before = counters(b)
    inject_frames(lab, "lan", [Ether(frame), Ether(bytes(tampered)), Ether(bytes(unknown)), truncated])
    wait_counter(b, "replayed_packets", before["replayed_packets"] + 1)
    wait_counter(b, "packets_not_authenticated", before["packets_not_authenticated"] + 1)
    wait_counter(b, "bad_spi_packets", before["bad_spi_packets"] + 1)
    wait_counter(b, "malformed_packets", before["malformed_packets"] + 1)
    after = counters(b)
    assert after["confidential_bytes_received"] == before["confidential_bytes_received"]
    wait_until(lambda: a.exec(["ping", "-c", "1", "-W", "1", B]).ok, 5, what="ping after the injections")


def test_stopping_ipsecd_removes_its_kernel_policy(lab_up):
    lab = lab_up("intranet-pair", overrides=overrides(SCENARIO, "host-a", "host-b"), fresh=True)
    a = lab.node("host-a")
    wait_ready(a)
    assert "table inet ipsecd" in a.exec(["nft", "list", "tables"], check=True).stdout
    pid = a.exec(["pgrep", "-f", "ipsecd --config"], check=True).stdout.split()[0]
    a.exec(["kill", "-TERM", pid], check=True)
    wait_until(lambda: a.exec(["kill", "-0", pid]).rc != 0, 10, what="ipsecd to exit")
    assert "ipsecd" not in a.exec(["nft", "list", "tables"], check=True).stdout
    assert "0x2121" not in a.exec(["ip", "rule"], check=True).stdout
    assert "ipsec0" not in a.exec(["ip", "-br", "link"], check=True).stdout
    assert "kernel policy removed" in a.exec(["cat", "/var/log/ipsecd.log"], check=True).stdout
