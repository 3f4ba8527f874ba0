"""ike-transport-cert on intranet-pair: main mode authenticated with certificates from a CA made here, and
the twin where host-a's certificate comes from a CA host-b does not trust.
See scenarios/ike-transport-cert/README.md."""

import pytest
from cryptography.hazmat.primitives import serialization
from pair import BARE_PAIR
from scapy.layers.ipsec import ESP

from lab.capture import assert_marker_absent, assert_only_protocols, assert_protocol_seen
from lab.harness import counters, dump, ipsecctl, isakmp_rows, nodes, start, wait_event, wait_quick_mode
from lab.traffic import tcp_transfer
from tests.vectors.pki import CA

SCENARIO = "ike-transport-cert"
MARKER = b"IKE-CERT-MARKER-"
A, B = "10.0.0.1", "10.0.0.2"


def pem(cert) -> str:
    return cert.public_bytes(serialization.Encoding.PEM).decode()


def key_pem(key) -> str:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption()).decode()


def certificates(ca: CA, node: str, issuer: CA | None = None) -> dict[str, str]:
    """The node's /etc/ipsecd/certs: its certificate (from `issuer`, the trusted `ca` by default) and key."""
    cert, key = (issuer or ca).issue(node)
    return {"certs/ca.pem": pem(ca.cert), f"certs/{node}.pem": pem(cert), f"certs/{node}.key": key_pem(key)}


@pytest.fixture(scope="module")
def ca():
    return CA("Lab Root CA")


@pytest.fixture
def pair(lab_up):
    lab = lab_up("intranet-pair", overrides=BARE_PAIR)
    with nodes(lab, "host-a", "host-b") as handles:
        yield lab, *handles


def test_certificates_authenticate_main_mode(pair, ca):
    lab, a, b = pair
    for node in (a, b):
        start(node, SCENARIO, certificates(ca, node.name))
    payload = MARKER * 500
    with lab.capture_segment("lan") as cap:
        a.exec(["ping", "-c", "2", "-i", "0.2", "-W", "5", B], check=True)
        assert tcp_transfer(a, b, payload, port=5002) == payload
    pkts = cap.packets()
    assert_only_protocols(pkts, between=(A, B), allowed={"esp", "udp/500"})
    assert_marker_absent(pkts, MARKER)
    esp = assert_protocol_seen(pkts, "esp", between=(A, B))
    qa = wait_quick_mode(a)
    assert {p[ESP].spi for p in esp} == {int(qa[0]["inbound spi"], 16), int(qa[0]["outbound spi"], 16)}
    ma, mb = ipsecctl(a, "mmsa"), ipsecctl(b, "mmsa")
    assert ma[0]["authentication"] == mb[0]["authentication"] == "rsa-sig", dump(a)
    assert "CN=host-b" in ma[0]["peer identity"] and "CN=host-a" in mb[0]["peer identity"]
    # tshark, with the exported keys, reads the certificates and signatures of main mode 5-6.
    rows = isakmp_rows(cap.pcap, ipsecctl(b, "keys")["tshark_args"],
                       ["isakmp.exchangetype", "isakmp.cert.encoding", "isakmp.sig"])
    assert [r[0] for r in rows[:6]] == ["2"] * 6
    assert rows[4][1] == rows[5][1] == "4"  # X.509 certificate - signature, in MM5 and MM6
    assert rows[4][2] and rows[5][2]
    assert counters(a)["ike_oakley_main_modes"] == 1


def test_untrusted_certificate_is_refused(pair, ca):
    _, a, b = pair
    rogue = CA("Lab Root CA")  # same name, another key: host-b must not be fooled by the name
    start(a, SCENARIO, certificates(ca, "host-a", issuer=rogue))
    start(b, SCENARIO, certificates(ca, "host-b"))
    assert not a.exec(["ping", "-c", "2", "-W", "2", B]).ok
    refused = wait_event(b, "does not chain to a trusted CA")
    assert refused["kind"] == "negotiation-failed" and "CN=host-a" in refused["text"]
    assert counters(b)["ike_authentication_failures"] >= 1
    assert ipsecctl(a, "sa") == [] and ipsecctl(b, "sa") == [] and ipsecctl(b, "mmsa") == []
