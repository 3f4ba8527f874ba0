"""The driver's packet logic, checked against scapy's independent ESP/AH code (no kernel I/O here).

Outbound packets the driver builds are decrypted by scapy; inbound packets scapy builds are fed to the
driver; drops must land on the ipsecmon counter they belong to.
"""

from ipaddress import IPv4Address, IPv4Network

import pytest
from scapy.layers.inet import ICMP, IP, TCP, UDP
from scapy.layers.ipsec import AH, ESP, SecurityAssociation

from ipsecd.driver.driver import IPsecDriver, RecordingWire
from ipsecd.driver.sad import Lifetime
from ipsecd.driver.sad import SecurityAssociation as SA
from ipsecd.driver.spd import SPD, Action, Filter, SecurityMethod, SPDAction

A, B = "10.0.0.1", "10.0.0.2"
GCM_KEY = bytes(range(20))
CBC_KEY, SHA1_KEY = bytes(range(16)), bytes(range(100, 120))
SECURE = SPDAction("secure", Action.NEGOTIATE, (SecurityMethod(),))


def host_filter(action=SECURE, tunnel=None, src=A, dst=B):
    return Filter("a-b", IPv4Network(src), IPv4Network(dst), action, tunnel=tunnel).mirrored()


def scapy_gcm(spi, **kw):
    return SecurityAssociation(ESP, spi=spi, crypt_algo="AES-GCM", crypt_key=GCM_KEY, **kw)


class FakeIKE:
    def __init__(self):
        self.acquired, self.expired, self.datagrams = [], [], []

    def acquire(self, f, sel):
        self.acquired.append((f.name, str(sel)))

    def expire(self, sa, hard):
        self.expired.append((sa.spi, hard))

    def datagram_4500(self, data, addr):
        self.datagrams.append((data, addr))


@pytest.fixture
def host():
    """Host A: one mirrored filter to B and a GCM SA pair in transport mode."""
    wire = RecordingWire()
    driver = IPsecDriver(SPD(host_filter()), wire=wire)
    driver.add_sa(SA(0x1001, "esp", "outbound", "transport", A, B, "aes-gcm-128", GCM_KEY), "a-b")
    driver.add_sa(SA(0x2001, "esp", "inbound", "transport", B, A, "aes-gcm-128", GCM_KEY), "a-b")
    return driver, wire


def ping(src=A, dst=B, load=b"marker-1234"):
    return IP(src=src, dst=dst, id=7) / ICMP(id=1, seq=1) / load


def test_outbound_transport_esp_decrypts_with_scapy(host):
    driver, wire = host
    driver.outbound(bytes(ping()))
    (packet, dst), = wire.sent
    assert dst == B and b"marker-1234" not in packet
    outer = IP(packet)
    assert outer.proto == 50 and outer[ESP].spi == 0x1001 and outer[ESP].seq == 1
    inner = scapy_gcm(0x1001).decrypt(outer)
    assert bytes(inner[ICMP]) == bytes(ping()[ICMP])
    assert driver.counter_values()["confidential_bytes_sent"] > 0


def test_inbound_from_scapy_is_delivered_and_counted(host):
    driver, wire = host
    sealed = scapy_gcm(0x2001).encrypt(IP(bytes(ping(B, A))))
    driver.inbound(bytes(sealed))
    (delivered,) = wire.delivered
    assert IP(delivered)[ICMP].load == b"marker-1234"
    assert driver.counter_values()["confidential_bytes_received"] > 0


def test_tampered_replayed_and_unknown_spi_packets_are_counted(host):
    driver, wire = host
    sealed = bytes(scapy_gcm(0x2001).encrypt(IP(bytes(ping(B, A)))))
    tampered = bytearray(sealed)
    tampered[-20] ^= 1
    driver.inbound(bytes(tampered))
    driver.inbound(sealed)
    driver.inbound(sealed)  # the same again: a replay
    driver.inbound(bytes(scapy_gcm(0x9999).encrypt(IP(bytes(ping(B, A))))))
    driver.inbound(b"\x45\x00garbage")
    counters = driver.counter_values()
    assert len(wire.delivered) == 1
    assert counters["packets_not_authenticated"] == 1
    assert counters["replayed_packets"] == 1
    assert counters["bad_spi_packets"] == 1
    assert counters["malformed_packets"] == 1
    sa_counters = {s["spi"]: s["counters"] for s in driver.sa_table()}["0x00002001"]
    assert (sa_counters["packets"], sa_counters["replayed_packets"]) == (1, 1)


def test_inner_packet_outside_the_sa_filter_is_dropped(host):
    driver, wire = host
    stranger = IP(src="10.9.9.9", dst=A) / ICMP()
    driver.inbound(bytes(scapy_gcm(0x2001).encrypt(IP(bytes(stranger)))))
    assert wire.delivered == []
    assert driver.counter_values()["dropped_by_policy"] == 1


def test_tunnel_mode_cbc_sha1_between_gateways():
    wire = RecordingWire()
    site = Filter("site", IPv4Network("10.1.0.0/24"), IPv4Network("10.2.0.0/24"), SECURE,
                  tunnel=IPv4Address("198.51.100.2")).mirrored()
    driver = IPsecDriver(SPD(site), wire=wire)
    driver.add_sa(SA(0x3001, "esp", "outbound", "tunnel", "198.51.100.1", "198.51.100.2", "aes-cbc-128",
                     CBC_KEY, "hmac-sha1-96", SHA1_KEY), "site")
    driver.add_sa(SA(0x3002, "esp", "inbound", "tunnel", "198.51.100.2", "198.51.100.1", "aes-cbc-128",
                     CBC_KEY, "hmac-sha1-96", SHA1_KEY), "site")
    inner = IP(src="10.1.0.10", dst="10.2.0.10") / TCP(sport=1234, dport=80) / b"hello"
    driver.outbound(bytes(inner))
    (packet, dst), = wire.sent
    outer = IP(packet)
    assert (dst, outer.src, outer.dst) == ("198.51.100.2", "198.51.100.1", "198.51.100.2")
    theirs = SecurityAssociation(ESP, spi=0x3001, crypt_algo="AES-CBC", crypt_key=CBC_KEY,
                                 auth_algo="HMAC-SHA1-96", auth_key=SHA1_KEY,
                                 tunnel_header=IP(src="198.51.100.1", dst="198.51.100.2"))
    assert bytes(theirs.decrypt(outer)) == bytes(inner)
    back = IP(src="10.2.0.10", dst="10.1.0.10") / TCP(sport=80, dport=1234) / b"reply"
    sealer = SecurityAssociation(ESP, spi=0x3002, crypt_algo="AES-CBC", crypt_key=CBC_KEY,
                                 auth_algo="HMAC-SHA1-96", auth_key=SHA1_KEY,
                                 tunnel_header=IP(src="198.51.100.2", dst="198.51.100.1"))
    driver.inbound(bytes(sealer.encrypt(IP(bytes(back)))))
    assert wire.delivered == [bytes(back)]


def test_udp_encapsulation_learns_the_port_a_nat_chose():
    wire = RecordingWire()
    server, nat = "203.0.113.2", "203.0.113.1"
    driver = IPsecDriver(SPD(host_filter(src=server, dst=nat)), wire=wire)
    driver.add_sa(SA(0x4001, "esp", "outbound", "transport", server, nat, "aes-gcm-128", GCM_KEY,
                     udp_encap=(4500, 4500)), "a-b")
    driver.add_sa(SA(0x4002, "esp", "inbound", "transport", nat, server, "aes-gcm-128", GCM_KEY,
                     udp_encap=(4500, 4500)), "a-b")
    # The client sent from its private address; the NAT rewrote it (and the TCP checksum is now wrong).
    original = IP(src="192.168.1.10", dst=server) / TCP(sport=5555, dport=22, flags="S")
    sealed = scapy_gcm(0x4002, nat_t_header=UDP(sport=40001, dport=4500)).encrypt(IP(bytes(original)))
    driver.inbound_udp(bytes(sealed[ESP]), nat, 40001, server)
    (delivered,) = wire.delivered
    rebuilt = IP(delivered)
    assert (rebuilt.src, rebuilt.dst) == (nat, server)
    recomputed = IP(bytes(IP(src=nat, dst=server) / TCP(sport=5555, dport=22, flags="S")))
    assert rebuilt[TCP].chksum == recomputed[TCP].chksum
    driver.outbound(bytes(IP(src=server, dst=nat, tos=0x2A) / TCP(sport=22, dport=5555, flags="SA")))
    (payload, addr), = wire.sent_udp
    assert addr == (nat, 40001) and wire.sent_udp_tos == [0x2A]  # DSCP and ECN ride on the outer header
    assert scapy_gcm(0x4001).decrypt(IP(src=server, dst=nat, proto=50) / ESP(payload))[TCP].flags == "SA"


def test_port_4500_demux_hands_ike_over_and_counts_keepalives(host):
    driver, wire = host
    ike = FakeIKE()
    driver.ike = ike
    isakmp = bytes(range(28))
    driver.inbound_udp(b"\x00\x00\x00\x00" + isakmp, B, 4500, A)
    driver.inbound_udp(b"\xff", B, 4500, A)
    driver.inbound_udp(b"\x01", B, 4500, A)
    assert ike.datagrams == [(isakmp, (B, 4500))]
    counters = driver.counter_values()
    assert (counters["nat_keepalives_received"], counters["malformed_packets"]) == (1, 1)
    driver.send_4500(isakmp, (B, 4500))
    assert wire.sent_udp == [(b"\x00\x00\x00\x00" + isakmp, (B, 4500))]


def test_without_ike_packets_with_no_sa_are_dropped_and_counted():
    wire = RecordingWire()
    driver = IPsecDriver(SPD(host_filter()), wire=wire)
    driver.outbound(bytes(ping()))
    driver.outbound(bytes(ping()))
    assert wire.sent == [] and driver.counter_values()["packets_without_sa"] == 2


def test_acquire_keeps_only_the_last_packet_and_sends_it_when_the_sa_arrives():
    clock = [100.0]
    wire, ike = RecordingWire(), FakeIKE()
    driver = IPsecDriver(SPD(host_filter()), wire=wire, ike=ike, clock=lambda: clock[0])
    for n in range(3):
        driver.outbound(bytes(ping(load=b"packet-%d" % n)))
    assert ike.acquired == [("a-b", f"{A} -> {B} proto 1")]  # asked once, not per packet
    clock[0] += 6
    driver.outbound(bytes(ping(load=b"packet-3")))
    assert len(ike.acquired) == 2  # asked again after the retry interval
    driver.add_sa(SA(0x1001, "esp", "outbound", "transport", A, B, "aes-gcm-128", GCM_KEY), "a-b")
    (packet, _), = wire.sent
    assert scapy_gcm(0x1001).decrypt(IP(packet))[ICMP].load == b"packet-3"
    assert driver.counter_values()["packets_without_sa"] == 3


def test_ah_plus_esp_bundle_is_readable_by_scapy():
    wire = RecordingWire()
    driver = IPsecDriver(SPD(host_filter()), wire=wire)
    esp_sa = SA(0x5001, "esp", "outbound", "transport", A, B, "3des-cbc", bytes(range(24)),
                "hmac-md5-96", bytes(16))
    driver.add_sa(SA(0x5002, "ah", "outbound", "transport", A, B, integrity="hmac-sha1-96",
                     integrity_key=SHA1_KEY, inner=esp_sa), "a-b")
    driver.outbound(bytes(ping()))
    (packet, _), = wire.sent
    ah = SecurityAssociation(AH, spi=0x5002, auth_algo="HMAC-SHA1-96", auth_key=SHA1_KEY)
    esp = SecurityAssociation(ESP, spi=0x5001, crypt_algo="3DES", crypt_key=bytes(range(24)),
                              auth_algo="HMAC-MD5-96", auth_key=bytes(16))
    assert esp.decrypt(IP(bytes(ah.decrypt(IP(packet)))))[ICMP].load == b"marker-1234"


def test_a_block_filter_loaded_later_drops_what_the_kernel_already_marked(host):
    driver, wire = host
    driver.load_policy(SPD(host_filter(SPDAction("block", Action.BLOCK))))
    driver.outbound(bytes(ping()))
    assert wire.sent == [] and driver.counter_values()["dropped_by_policy"] == 1


def test_soft_association_sends_in_clear():
    wire = RecordingWire()
    driver = IPsecDriver(SPD(host_filter()), wire=wire, ike=FakeIKE())
    driver.outbound(bytes(ping(load=b"first")))
    driver.add_soft_sa("a-b", B)
    driver.outbound(bytes(ping(load=b"second")))
    assert [IP(p)[ICMP].load for p, _ in wire.sent] == [b"first", b"second"]


def test_idle_and_hard_expiry_delete_and_tell_ike(host):
    driver, _ = host
    ike = FakeIKE()
    driver.ike = ike
    driver.add_sa(SA(0x6001, "esp", "outbound", "transport", A, "10.0.0.3", "aes-gcm-128", GCM_KEY,
                     lifetime=Lifetime(soft_seconds=1, hard_seconds=2)), "a-b")
    sa = next(s for s in driver.sad if s.spi == 0x6001)
    driver.expire(sa.created + 1.5)
    assert ike.expired == [(0x6001, False)]
    driver.expire(sa.created + 2.5)
    assert (0x6001, True) in ike.expired
    assert all(s.spi != 0x6001 for s in driver.sad)
    driver.expire(sa.created + 1000)  # the idle timeout (300 s) removes the quiet host SAs too
    assert len(driver.sad) == 0


def test_the_packet_past_the_soft_byte_limit_asks_ike_for_a_rekey_at_once():
    """At line rate a once-a-second lifetime check comes after the hard limit: the rekey would wait for
    traffic to stop at it. The packet that passes the soft limit asks, once, without waiting for expire()."""
    wire, ike = RecordingWire(), FakeIKE()
    driver = IPsecDriver(SPD(host_filter()), wire=wire, ike=ike)
    driver.add_sa(SA(0x6002, "esp", "outbound", "transport", A, B, "aes-gcm-128", GCM_KEY,
                     lifetime=Lifetime(soft_kilobytes=2, hard_kilobytes=3)), "a-b")
    (sa,) = driver.sad
    sent = 0
    while sa.counters.bytes <= 2048:
        assert ike.expired == [] and sent < 30
        driver.outbound(bytes(IP(src=A, dst=B) / UDP() / bytes(92)))  # 100 protected bytes
        sent += 1
    assert ike.expired == [(0x6002, False)] and len(wire.sent) == sent  # the packet that asked went too
    driver.outbound(bytes(IP(src=A, dst=B) / UDP() / bytes(92)))
    driver.expire(sa.created + 0.5)
    assert ike.expired == [(0x6002, False)]  # asked once: neither the next packet nor expire() asks again


def test_nat_keepalives_go_to_udp_encapsulated_peers_every_20_seconds():
    clock = [1000.0]
    wire = RecordingWire()
    driver = IPsecDriver(SPD(host_filter()), wire=wire, clock=lambda: clock[0])
    driver.add_sa(SA(0x7001, "esp", "outbound", "transport", A, B, "aes-gcm-128", GCM_KEY,
                     udp_encap=(4500, 4500)), "a-b", manual=True, nat_keepalive=True)
    driver.add_sa(SA(0x7002, "esp", "outbound", "transport", A, "10.0.0.3", "aes-gcm-128", GCM_KEY,
                     udp_encap=(4500, 4500)), "a-b", manual=True)  # in front of the NAT: no keepalives
    for step in (0, 5, 21):
        clock[0] = 1000.0 + step
        driver.expire()
    assert wire.sent_udp == [(b"\xff", (B, 4500))] * 2


def test_a_block_filter_applies_to_decapsulated_packets_too(host):
    driver, wire = host
    block = SPDAction("block", Action.BLOCK)
    driver.load_policy(SPD([*host_filter(),
                            *Filter("no-dns", IPv4Network(A), IPv4Network(B), block, protocol=17,
                                    dst_port=53).mirrored()]))
    dns = IP(src=B, dst=A) / UDP(sport=53, dport=4000) / b"answer"
    driver.inbound(bytes(scapy_gcm(0x2001).encrypt(IP(bytes(dns)))))
    assert wire.delivered == [] and driver.counter_values()["dropped_by_policy"] == 1


def test_garbage_from_every_side_is_counted_never_raised(host):
    """The daemon never crashes on a malformed packet: random bytes, truncations and bit flips."""
    import random

    driver, _ = host
    rng = random.Random(4303)
    valid_out = bytes(ping())
    valid_in = bytes(scapy_gcm(0x2001).encrypt(IP(bytes(ping(B, A)))))
    samples = [bytes(rng.getrandbits(8) for _ in range(rng.randrange(0, 80))) for _ in range(300)]
    samples += [valid_in[:n] for n in range(len(valid_in))] + [valid_out[:n] for n in range(len(valid_out))]
    for n in range(len(valid_in)):
        flipped = bytearray(valid_in)
        flipped[n] ^= 0x80
        samples.append(bytes(flipped))
    for sample in samples:
        driver.outbound(sample)
        driver.inbound(sample)
        driver.inbound_udp(sample, B, 4500, A)
    counters = driver.counter_values()
    drops = ("malformed_packets", "bad_spi_packets", "packets_not_authenticated", "replayed_packets")
    assert sum(counters[name] for name in drops) > 300
