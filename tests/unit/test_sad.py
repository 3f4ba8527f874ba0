"""SAD and SA state: anti-replay window, sequence numbers, lifetimes, idle, counters, bundles."""
from __future__ import annotations

import os

import pytest

from ipsecd.driver.errors import (
    AuthenticationFailed,
    BadPacket,
    CongestionDrop,
    Replayed,
    SAExpired,
    UnknownSPI,
)
from ipsecd.driver.ipv4 import ip_to_bytes, ipv4_header
from ipsecd.driver.sad import SAD, SEQ_MAX, Lifetime, PolicyViolation, ReplayWindow, SecurityAssociation

A, B = "192.0.2.1", "192.0.2.2"


def packet(size: int = 100) -> bytes:
    return ipv4_header(ip_to_bytes(A), ip_to_bytes(B), 17, size) + bytes(size)


def sa_pair(protocol="esp", mode="transport", spi=0x1000, **kw):
    keys = dict(encryption="aes-gcm-128", encryption_key=os.urandom(20)) if protocol == "esp" else dict(
        integrity="hmac-sha1-96", integrity_key=os.urandom(20))
    keys.update(kw)
    return (SecurityAssociation(spi, protocol, "outbound", mode, A, B, **keys),
            SecurityAssociation(spi, protocol, "inbound", mode, A, B, **keys))


# -- replay window (RFC 4303 §3.4.3, Appendix A) --

def accept(w: ReplayWindow, seq: int) -> None:
    w.check(seq)
    w.accept(seq)


def test_window_first_packet_and_zero():
    w = ReplayWindow()
    with pytest.raises(Replayed):
        w.check(0)
    accept(w, 1)
    assert (w.top, w.bitmap) == (1, 1)


def test_window_duplicates_and_reordering():
    w = ReplayWindow()
    for seq in (1, 3, 2, 5):
        accept(w, seq)
    for seq in (1, 2, 3, 5):
        with pytest.raises(Replayed, match="already"):
            w.check(seq)
    accept(w, 4)  # late but inside the window


def test_window_edges():
    w = ReplayWindow(64)
    accept(w, 100)
    accept(w, 100 - 63)  # the oldest slot of the window
    with pytest.raises(Replayed, match="left of the window"):
        w.check(100 - 64)
    accept(w, 101)  # slide by one: 37 is now exactly out
    with pytest.raises(Replayed):
        w.check(37)
    accept(w, 38)


def test_window_large_jump_keeps_bitmap_small():
    w = ReplayWindow(64)
    accept(w, 5)
    accept(w, 2**32 - 1)
    assert w.bitmap == 1 and w.top == 2**32 - 1
    with pytest.raises(Replayed):
        w.check(5)
    accept(w, 2**32 - 64)


def test_window_bigger_than_64_and_minimum():
    w = ReplayWindow(1024)
    accept(w, 2000)
    accept(w, 2000 - 1023)
    with pytest.raises(Replayed):
        w.check(2000 - 1024)
    with pytest.raises(ValueError):
        ReplayWindow(32)


def test_replay_window_moves_only_after_the_icv_verifies():
    out, inbound = sa_pair()
    first = out.encapsulate(packet())
    forged_high = bytearray(out.encapsulate(packet()))
    forged_high[24:28] = (1000).to_bytes(4, "big")  # seq field, inside the transport packet
    with pytest.raises(AuthenticationFailed):
        inbound.decapsulate(bytes(forged_high))
    assert inbound._replay.top == 0
    inbound.decapsulate(first)
    with pytest.raises(Replayed):
        inbound.decapsulate(first)
    assert inbound.counters.replayed_packets == 1 and inbound.counters.packets_not_authenticated == 1


# -- sequence numbers (RFC 4303 §3.3.3: never wrap, no ESN) --

def test_sequence_starts_at_one_and_never_wraps():
    out, _ = sa_pair()
    out.encapsulate(packet())
    assert out.seq == 1
    out.seq = SEQ_MAX - 1
    out.encapsulate(packet())  # SEQ_MAX itself is the last usable number
    assert out.seq == SEQ_MAX and out.hard_expired(out.created)
    with pytest.raises(SAExpired, match="wrap"):
        out.encapsulate(packet())
    assert out.seq == SEQ_MAX


def test_sequence_nearing_the_end_asks_for_a_rekey():
    out, _ = sa_pair()
    assert not out.soft_expired(out.created)
    out.seq = SEQ_MAX - 2**20
    assert out.soft_expired(out.created) and not out.hard_expired(out.created)


# -- lifetimes, injected time, no sleeping --

def test_lifetime_by_seconds():
    out, _ = sa_pair(lifetime=Lifetime(soft_seconds=2700, hard_seconds=3600), created=1000.0)
    assert not out.soft_expired(3699) and out.soft_expired(3700)
    assert not out.hard_expired(4599) and out.hard_expired(4600)


def test_lifetime_by_kilobytes_refuses_the_packet_that_would_pass_it():
    out, inbound = sa_pair(lifetime=Lifetime(soft_kilobytes=1, hard_kilobytes=2))
    t0 = out.created
    for _ in range(10):  # 10 x 100 protected bytes (transport mode: the IP payload)
        inbound.decapsulate(out.encapsulate(packet()))
    assert out.counters.bytes == 1000 and inbound.counters.bytes == 1000
    assert not out.soft_expired(t0)
    inbound.decapsulate(out.encapsulate(packet()))
    assert out.soft_expired(t0) and inbound.soft_expired(t0) and not out.hard_expired(t0)
    for _ in range(9):
        out.encapsulate(packet())
    with pytest.raises(SAExpired, match="2 KB"):
        out.encapsulate(packet())  # 20 * 100 = 2000; one more is 2100 > 2048
    assert out.counters.bytes == 2000 and out.seq == 20


def test_sad_expire_reports_soft_once_and_deletes_hard_and_idle():
    sad = SAD()
    soft = SecurityAssociation(0x2001, "esp", "inbound", "tunnel", A, B, "aes-gcm-128", bytes(20),
                               lifetime=Lifetime(soft_seconds=10, hard_seconds=20), created=0.0)
    idle = SecurityAssociation(0x2002, "esp", "inbound", "tunnel", A, B, "aes-gcm-128", bytes(20),
                               idle_timeout=300, created=0.0)
    sad.add(soft)
    sad.add(idle)
    assert sad.expire(5) == []
    assert sad.expire(10) == [(soft, "soft")]
    assert sad.expire(11) == []
    assert sad.expire(20) == [(soft, "hard")]
    assert list(sad) == [idle]
    idle.counters.packets += 1  # traffic seen at the next check restarts the idle clock
    assert sad.expire(299) == []
    assert sad.expire(598) == []
    assert sad.expire(599) == [(idle, "idle")]
    counters = sad.snapshot()
    assert (counters.active_sas, counters.key_additions, counters.key_deletions) == (0, 2, 2)


# -- SAD lookup and counters --

def test_unknown_spi_is_counted():
    sad = SAD()
    out, inbound = sa_pair()
    sad.add(inbound)
    other = SecurityAssociation(0x9999, "esp", "outbound", "transport", A, B, "aes-gcm-128", bytes(20))
    with pytest.raises(UnknownSPI):
        sad.inbound(other.encapsulate(packet()))
    with pytest.raises(UnknownSPI):
        sad.lookup(0x1000, "192.0.2.99", "esp")  # right SPI, other destination
    with pytest.raises(UnknownSPI):
        sad.lookup(0x1000, B, "ah")
    assert sad.counters.bad_spi_packets == 3
    inner, sa = sad.inbound(out.encapsulate(packet()))
    assert sa is inbound and inner == packet()


def test_outbound_sa_is_not_an_inbound_match():
    sad = SAD()
    out, _ = sa_pair()
    sad.add(out)
    with pytest.raises(UnknownSPI):
        sad.inbound(out.encapsulate(packet()))


def test_duplicate_sa_refused_and_delete():
    sad = SAD()
    _, inbound = sa_pair()
    sad.add(inbound)
    with pytest.raises(ValueError, match="already exists"):
        sad.add(sa_pair()[1])
    assert sad.delete(0x1000, B, "esp") is inbound and len(sad) == 0
    with pytest.raises(KeyError):
        sad.delete(0x1000, B, "esp")


def test_global_counters_named_as_ipsecmon():
    sad = SAD()
    out, inbound = sa_pair()
    ah_out, ah_in = sa_pair("ah", spi=0x3000)
    sad.add(inbound)
    sad.add(ah_in)
    for _ in range(3):
        sad.inbound(out.encapsulate(packet()))
    tampered = bytearray(out.encapsulate(packet()))
    tampered[-1] ^= 1
    with pytest.raises(AuthenticationFailed):
        sad.inbound(bytes(tampered))
    sad.inbound(ah_out.encapsulate(packet()))
    with pytest.raises(BadPacket):
        sad.inbound(b"\x45" + bytes(10))
    rows = dict(sad.snapshot().rows())
    assert rows["Confidential Bytes Received"] == 3 * 100
    assert rows["Authenticated Bytes Received"] == 4 * 100  # GCM authenticates too
    assert rows["Transport Bytes Received"] == 4 * 100
    assert rows["Packets Not Authenticated"] == 1 and rows["Malformed Packets"] == 1
    assert rows["Active Associations"] == 2 and rows["Key Additions"] == 2
    sad.delete(0x1000, B, "esp")  # bytes of deleted SAs stay in the totals
    assert sad.snapshot().confidential_bytes_received == 3 * 100


# -- validation --

@pytest.mark.parametrize("kwargs,match", [
    (dict(protocol="gre"), "protocol"),
    (dict(mode="beet"), "mode"),
    (dict(spi=5), "SPI"),
    (dict(encryption="rc4"), "unknown encryption"),
    (dict(encryption_key=bytes(16)), "20-byte key"),
    (dict(encryption="null", encryption_key=b""), "protects nothing"),
    (dict(integrity="hmac-sha1-96", integrity_key=bytes(20)), "AEAD"),
    (dict(src="10.0.0.300"), "src"),
])
def test_bad_sa_parameters_are_refused_with_the_field(kwargs, match):
    args = dict(spi=0x1000, protocol="esp", direction="inbound", mode="tunnel", src=A, dst=B,
                encryption="aes-gcm-128", encryption_key=bytes(20))
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        SecurityAssociation(**args)


def test_keys_are_not_in_repr():
    out, _ = sa_pair()
    assert out.encryption_key.hex() not in repr(out)


# -- AH + ESP bundles (ESP first, then AH over it) --

def bundle(direction, mode):
    esp_sa = SecurityAssociation(0x4001, "esp", direction, mode, A, B, "3des-cbc", b"k" * 24,
                                 "hmac-sha1-96", b"e" * 20)
    return SecurityAssociation(0x4002, "ah", direction, mode, A, B, integrity="hmac-md5-96",
                               integrity_key=b"a" * 16, inner=esp_sa)


@pytest.mark.parametrize("mode", ["transport", "tunnel"])
def test_bundle_round_trip_and_layout(mode):
    out, sad = bundle("outbound", mode), SAD()
    sad.add(bundle("inbound", mode))
    wire = out.encapsulate(packet())
    assert wire[9] == 51 and wire[20] == 50  # IP | AH(next header ESP) | ESP
    assert wire[44:48] == (0x4001).to_bytes(4, "big")  # ESP SPI after IP(20) + AH(24)
    inner, sa = sad.inbound(wire)
    assert inner == packet() and sa.spi == 0x4002 and sa.inner.counters.packets == 1
    assert len(sad) == 2 and sad.snapshot().key_additions == 2


def test_bundle_esp_alone_is_a_policy_violation():
    out, sad = bundle("outbound", "tunnel"), SAD()
    sad.add(bundle("inbound", "tunnel"))
    wire = out.encapsulate(packet())
    stripped = ipv4_header(ip_to_bytes(A), ip_to_bytes(B), 50, len(wire) - 44) + wire[44:]
    with pytest.raises(PolicyViolation):
        sad.inbound(stripped)
    assert sad.counters.dropped_by_policy == 1
    sad.delete(0x4001, B, "esp")  # deleting one half removes the bundle
    assert len(sad) == 0


@pytest.mark.parametrize("enc,auth,mode,udp", [
    ("aes-gcm-128", None, "tunnel", (4500, 4500)), ("aes-cbc-256", "hmac-sha256-128", "tunnel", None),
    ("3des-cbc", "hmac-sha1-96", "transport", None), ("null", "hmac-md5-96", "transport", (4500, 4500))])
def test_overhead_is_the_worst_case(enc, auth, mode, udp):
    from ipsecd.algorithms import ENCRYPTIONS, INTEGRITIES

    sa = SecurityAssociation(0x1000, "esp", "outbound", mode, A, B, enc,
                             os.urandom(ENCRYPTIONS[enc].key_size), auth,
                             os.urandom(INTEGRITIES[auth].key_size) if auth else b"", udp_encap=udp)
    added = {len(sa.encapsulate(packet(n))) - len(packet(n)) for n in range(40, 60)}
    assert max(added) == sa.overhead


def test_bundle_overhead_adds_both():
    out = bundle("outbound", "tunnel")
    added = {len(out.encapsulate(packet(n))) - len(packet(n)) for n in range(40, 60)}
    assert max(added) == out.overhead == 24 + 20 + 8 + 8 + 7 + 2 + 12


def test_ike_and_keepalives_are_not_looked_up_as_esp():
    """SPI 0 is the non-ESP marker (RFC 3948 §2.2): malformed for the SAD, never a bad SPI."""
    sad = SAD()
    ike = bytes(4) + bytes(28)
    udp = ipv4_header(ip_to_bytes(A), ip_to_bytes(B), 17, 8 + len(ike)) + bytes(8) + ike
    for call in (lambda: sad.inbound(udp), lambda: sad.inbound_udp(ike, A, B),
                 lambda: sad.inbound_udp(b"\xff", A, B)):
        with pytest.raises(BadPacket):
            call()
    assert (sad.counters.malformed_packets, sad.counters.bad_spi_packets) == (3, 0)


def test_transport_esp_from_a_udp_socket_gets_the_datagrams_tos_and_consecutive_identifications():
    """The UDP socket hides the outer header: the rebuilt inner header takes the TOS (ECN) the socket
    reports and identifications from the ESP sequence numbers, so consecutive TCP segments can be merged
    into one TUN write again (offload.Coalescer) and the TOS seen on the wire reaches the stack."""
    from scapy.layers.inet import IP, TCP

    from ipsecd.driver.offload import VNET_HEADER_SIZE, Coalescer

    out, inbound = sa_pair(udp_encap=(4500, 4500))
    sad = SAD()
    sad.add(inbound)
    frames: list[bytes] = []
    coalescer = Coalescer(frames.append)
    # the identification the sender gave (7) is lost with the outer header
    sent = [bytes(IP(src=A, dst=B, id=7) / TCP(sport=1, dport=2, flags="A", seq=1000 * i)
                  / (bytes([i]) * 1000))
            for i in range(4)]
    for segment in sent:
        inner, _ = sad.inbound_udp(out.encapsulate_udp(segment), A, B, tos=0x03)
        header = IP(inner)
        assert (header.tos, header.ttl, header.src, header.dst) == (0x03, 64, A, B)
        assert header.id == out.seq and bytes(header[TCP]) == bytes(IP(segment)[TCP])
        coalescer.add(inner)
    coalescer.flush()
    (merged,) = frames
    assert bytes(IP(merged[VNET_HEADER_SIZE:])[TCP].payload) == b"".join(
        bytes(IP(s)[TCP].payload) for s in sent)


# RFC 6040 §4.2, the decapsulation table: (inner ECN, outer ECN) -> inner ECN after, None = dropped
ECN_TABLE = {
    (0, 0): 0, (0, 1): 0, (0, 2): 0, (0, 3): None,  # Not-ECT inside: CE outside can only be a drop
    (2, 0): 2, (2, 1): 1, (2, 2): 2, (2, 3): 3,  # ECT(0)
    (1, 0): 1, (1, 1): 1, (1, 2): 1, (1, 3): 3,  # ECT(1)
    (3, 0): 3, (3, 1): 3, (3, 2): 3, (3, 3): 3,  # CE stays CE
}


@pytest.mark.parametrize("inner_ecn,outer_ecn", sorted(ECN_TABLE))
@pytest.mark.parametrize("udp", [None, (4500, 4500)], ids=["esp", "udp"])
def test_tunnel_decapsulation_combines_the_outer_ecn_as_rfc_6040_says(inner_ecn, outer_ecn, udp):
    from scapy.layers.inet import IP, UDP

    out, inbound = sa_pair(mode="tunnel", udp_encap=udp)
    sad = SAD()
    sad.add(inbound)
    inner = bytes(IP(src="10.1.0.1", dst="10.2.0.1", tos=0xB8 | inner_ecn) / UDP() / b"voice")
    wire = IP(out.encapsulate(inner))
    assert wire.tos == 0xB8 | inner_ecn  # the encapsulator copies DSCP and ECN (RFC 4301 §5.1.2.1)
    wire.tos = 0xB8 | outer_ecn  # what a router on the way may do: the outer header is not protected
    del wire.chksum
    expected = ECN_TABLE[inner_ecn, outer_ecn]
    deliver = (lambda: sad.inbound(bytes(wire))) if udp is None else \
        (lambda: sad.inbound_udp(bytes(wire[UDP].payload), A, B, wire.tos))
    if expected is None:
        with pytest.raises(CongestionDrop):
            deliver()
        assert inbound.counters.ecn_drops == sad.counters.ecn_drops == 1
        return
    got = IP(deliver()[0])
    assert got.tos == 0xB8 | expected and bytes(got[UDP].payload) == b"voice"
    recomputed = IP(bytes(got))
    del recomputed.chksum
    assert IP(bytes(recomputed)).chksum == got.chksum  # the header checksum follows the new TOS
