"""ike_bridge: what IKE negotiates, installed in two real drivers, carries a packet from one to the other;
the driver's lifetime and UDP 4500 hooks reach IKE in IKE's terms; certificates come from the node's files.
(The lab tests run the same wiring in ipsecd on the wire: tests/lab/test_ike_*.py.)"""

from ipaddress import IPv4Network

import pytest
from cryptography.hazmat.primitives import serialization
from scapy.layers.inet import ICMP, IP
from scapy.packet import Raw

from ipsecd.driver.driver import IPsecDriver, RecordingWire
from ipsecd.driver.spd import SPD, Action, Filter, SecurityMethod, SPDAction
from ipsecd.ike.settings import PeerPolicy, PreSharedKey, QuickModeOffer, Selector
from ipsecd.ike_bridge import IKEBridge, certificate_source, secured_filter
from tests.unit.test_ike_component import A, B, negotiate
from tests.vectors.pki import CA

SECURE = SPDAction("secure", Action.NEGOTIATE, (SecurityMethod(),))


def host_filter(name: str, me: str, peer: str) -> SPD:
    return SPD(Filter(name, IPv4Network(f"{me}/32"), IPv4Network(f"{peer}/32"), SECURE).mirrored())


class RecordingIKE:
    natt_port = 4500

    def __init__(self):
        self.expired, self.received = [], []

    def expire(self, inbound_spi, hard, reason="lifetime"):
        self.expired.append((inbound_spi, hard))

    def datagram_received(self, data, addr, local_port):
        self.received.append((data, addr, local_port))


def bridged(spd: SPD) -> tuple[IPsecDriver, IKEBridge, RecordingWire]:
    wire = RecordingWire()
    driver = IPsecDriver(spd, wire=wire)
    bridge = IKEBridge(driver)
    driver.ike = bridge
    bridge.ike = RecordingIKE()
    return driver, bridge, wire


def negotiated(ah: str | None):
    """One quick mode's results for host A and host B, and a bridged driver for each."""
    offer = QuickModeOffer("esp", "3des-cbc", "hmac-sha1-96", ah=ah)
    policy = PeerPolicy(auth=[PreSharedKey(b"k")], quick_mode=[offer])
    lab = negotiate(policy)
    return (lab.drv_a.added[0], lab.drv_b.added[0], bridged(host_filter("a-b", A, B)),
            bridged(host_filter("b-a", B, A)))


@pytest.mark.parametrize("ah", [None, "hmac-md5-96"])
def test_negotiated_sas_carry_a_packet_between_two_drivers(ah):
    done_a, done_b, (driver_a, bridge_a, wire_a), (driver_b, bridge_b, wire_b) = negotiated(ah)
    bridge_a.add_sa(done_a)
    bridge_b.add_sa(done_b)
    installed = {(s["direction"], s["filter"]) for s in driver_a.sa_table()}
    assert installed >= {("inbound", "a-b"), ("outbound", "a-b")}
    packet = bytes(IP(src=A, dst=B) / ICMP() / Raw(b"keyed by IKE"))
    driver_a.outbound(packet)
    (wire_packet, dst), = wire_a.sent
    assert dst == B and wire_packet[9] == (51 if ah else 50)  # AH outside ESP for the bundle
    driver_b.inbound(wire_packet)
    assert wire_b.delivered == [packet]


@pytest.mark.parametrize("ah", [None, "hmac-md5-96"])
def test_a_responders_inbound_sas_decrypt_before_quick_mode_3_and_its_outbound_follow(ah):
    done_a, done_b, (driver_a, bridge_a, wire_a), (driver_b, bridge_b, wire_b) = negotiated(ah)
    bridge_a.add_sa(done_a)
    bridge_b.add_inbound(done_b)  # quick mode 2 left; quick mode 3 is still on its way
    assert {s["direction"] for s in driver_b.sa_table()} == {"inbound"}
    packet = bytes(IP(src=A, dst=B) / ICMP() / Raw(b"sent right after QM3"))
    driver_a.outbound(packet)
    driver_b.inbound(wire_a.sent[0][0])
    assert wire_b.delivered == [packet]
    bridge_b.add_sa(done_b)  # quick mode 3 arrived: the outbound SAs join, the inbound ones stay
    assert sorted(s["direction"] for s in driver_b.sa_table() if s["bundle"] or not ah) == \
        ["inbound", "outbound"]
    assert len(driver_b.sad) == (4 if ah else 2)


def test_inbound_sas_of_a_quick_mode_that_failed_are_deleted_with_its_dynamic_filters():
    lab = negotiate()
    done_b = lab.drv_b.added[0]
    driver, bridge, _ = bridged(SPD())  # no filter of ours: the default response rule answered
    bridge.add_inbound(done_b)
    assert len(driver.sad) == 1 and bridge.dynamic
    for child in done_b.inbound.chain():
        bridge.delete_sa(child.spi, child.dst, child.protocol)
    assert list(driver.sad) == [] and not bridge.dynamic


def test_lifetimes_and_deletes_reach_ike_by_inbound_spi():
    lab = negotiate()
    done = lab.drv_a.added[0]
    driver, bridge, _ = bridged(host_filter("a-b", A, B))
    bridge.add_sa(done)
    outbound = next(sa for sa in driver.sad if sa.spi == done.outbound.spi)
    bridge.expire(outbound, hard=False)
    assert bridge.ike.expired == [(done.inbound.spi, False)]
    assert bridge.quick_modes_of_filters(frozenset({"a-b"})) == [done.inbound.spi]
    for child in (done.inbound, done.outbound):
        bridge.delete_sa(child.spi, child.dst, child.protocol)
    bridge.delete_sa(done.inbound.spi, done.inbound.dst, "esp")  # again: gone already, no error
    assert list(driver.sad) == [] and bridge.quick_modes_of_filters(frozenset({"a-b"})) == []


def test_ike_on_udp_4500_goes_to_ike_whole():
    _, bridge, _ = bridged(SPD())
    bridge.datagram_4500(b"isakmp message", ("203.0.113.1", 40001))
    assert bridge.ike.received == [(b"isakmp message", ("203.0.113.1", 40001), 4500)]


def test_secured_filter_behind_a_nat_falls_back_to_the_peer_address():
    spd = host_filter("nat", "203.0.113.2", "203.0.113.1")
    local, private = Selector.parse("203.0.113.2"), Selector.parse("192.168.1.10")
    assert secured_filter(spd, local, private, None, "203.0.113.1").name == "nat"
    assert secured_filter(spd, local, private, "203.0.113.1", "203.0.113.1") is None  # not a tunnel filter


def write_pem(tmp_path, name, data: bytes):
    path = tmp_path / name
    path.write_bytes(data)
    return path


def test_certificate_source_picks_the_named_ca(tmp_path):
    lab_ca, other = CA("Lab Root CA"), CA("Other CA")
    cert, key = lab_ca.issue("host-a")
    cas = tuple(write_pem(tmp_path, f"{i}.pem", c.cert.public_bytes(serialization.Encoding.PEM))
                for i, c in enumerate((lab_ca, other)))
    source = certificate_source(
        write_pem(tmp_path, "host.pem", cert.public_bytes(serialization.Encoding.PEM)),
        write_pem(tmp_path, "host.key", key.private_bytes(serialization.Encoding.PEM,
                                                          serialization.PrivateFormat.PKCS8,
                                                          serialization.NoEncryption())), cas)
    for name in ("CN=Lab Root CA", "Lab Root CA", "CN=Lab Root CA, O=ipsec-lab"):
        assert source(name).trusted_cas == (lab_ca.cert,)
    assert source("CN=Lab Root CA").certificate == cert
    with pytest.raises(KeyError, match=r"no trusted CA named 'CN=Nobody'.*have: CN=Lab Root CA,O=ipsec-lab"):
        source("CN=Nobody")
    with pytest.raises(KeyError, match=r"no ike\.certificate"):
        certificate_source(None, None, cas)("CN=Lab Root CA")


def test_default_response_sas_bring_their_own_filters_while_they_live():
    lab = negotiate()
    done_b = lab.drv_b.added[0]
    driver_b, bridge_b, wire_b = bridged(SPD())  # host-b has no rule for host-a: Client (Respond Only)
    bridge_b.load_policy(SPD())
    bridge_b.add_sa(done_b)
    names = {f.name for f in driver_b.spd.filters}
    assert names == {f"<Dynamic> {B}/32 <-> {A}/32"}
    driver_b.outbound(bytes(IP(src=B, dst=A) / ICMP()))  # the reply goes secured
    assert wire_b.sent and wire_b.sent[0][0][9] == 50
    bridge_b.load_policy(SPD())  # a policy poll keeps them
    assert {f.name for f in driver_b.spd.filters} == names
    for child in (done_b.inbound, done_b.outbound):
        bridge_b.delete_sa(child.spi, child.dst, child.protocol)
    assert len(driver_b.spd) == 0


def test_ike_reports_every_peer_that_speaks_and_retransmits_as_configured():
    from tests.unit.test_ike_component import PSK, IKERule, ManualClock, Network, host

    clock = ManualClock()
    net = Network(clock)
    heard = []
    ike_a, _ = net.attach(A, [IKERule("to-b", PSK, host(A), host(B))], retransmit=(1, 1),
                          on_peer_message=heard.append)
    net.attach(B, [IKERule("any", PSK)])
    net.drop = lambda src, dst, data: dst[0] == B  # B never hears A
    ike_a.acquire(ike_a.rules[0], host(A), host(B), B)
    net.run()
    clock.advance(5, net)
    assert [dst for _, _, dst, _ in net.log] == [(B, 500)] * 3  # the first send and two retransmissions
    assert ike_a.counters["Negotiation Failures: no response"] == 1 and heard == []
    net.drop = lambda src, dst, data: False
    ike_a.acquire(ike_a.rules[0], host(A), host(B), B)
    net.run()
    assert set(heard) == {B}  # the Negotiator learns B speaks IKE: no soft association for it


def test_unknown_spi_from_a_peer_without_main_mode_renegotiates():
    lab = negotiate()
    done_a = lab.drv_a.added[0]
    driver_b, bridge_b, _ = bridged(host_filter("b-a", B, A))  # host-b restarted: no SA, no main mode

    acquired = []

    class Negotiator:
        def acquire(self, f, sel):
            acquired.append((f.name, sel))

    bridge_b.negotiator = Negotiator()
    bridge_b.ike.local_address = B
    bridge_b.ike.has_main_mode_with = lambda peer: False
    wire_a = RecordingWire()
    driver_a = IPsecDriver(host_filter("a-b", A, B), wire=wire_a)
    IKEBridge(driver_a).add_sa(done_a)
    driver_a.outbound(bytes(IP(src=A, dst=B) / ICMP()))
    for _ in range(3):  # a burst: one reaction
        driver_b.inbound(wire_a.sent[0][0])
    assert [name for name, _ in acquired] == ["b-a"]
    assert driver_b.counter_values()["bad_spi_packets"] == 3
