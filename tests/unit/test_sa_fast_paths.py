"""The per-packet fast paths of the SA and SAD: each shortcut must keep every rule of the slow path.

The ESP paths inline the sequence number and byte accounting and skip the replay window check for
in-order packets; SAD.inbound looks up plain ESP packets before validating anything else. These tests
pin the edges of each shortcut, with scapy as the independent decoder.
"""
from __future__ import annotations

import os
import random

import pytest

scapy = pytest.importorskip("scapy")
from scapy.layers.inet import IP, TCP, UDP  # noqa: E402

from ipsecd.driver.driver import flow_key  # noqa: E402
from ipsecd.driver.errors import AuthenticationFailed, BadPacket, Replayed, SAExpired, UnknownSPI  # noqa: E402
from ipsecd.driver.ipv4 import ip_to_bytes, ipv4_checksum, ipv4_header  # noqa: E402
from ipsecd.driver.sad import SAD, SEQ_MAX, Lifetime, SecurityAssociation  # noqa: E402

A, B = "192.0.2.1", "192.0.2.2"
GCM = dict(encryption="aes-gcm-128", encryption_key=bytes(range(20)))
CBC = dict(encryption="aes-cbc-128", encryption_key=bytes(16), integrity="hmac-sha1-96",
           integrity_key=bytes(20))

# every outbound ESP path: (mode, udp_encap, the method the driver calls)
PATHS = [("transport", None, "encapsulate"), ("tunnel", None, "encapsulate"),
         ("transport", (4500, 4500), "encapsulate"), ("tunnel", (4500, 4500), "encapsulate"),
         ("transport", (4500, 4500), "encapsulate_udp"), ("tunnel", (4500, 4500), "encapsulate_udp")]


def packet(size: int = 100) -> bytes:
    return ipv4_header(ip_to_bytes(A), ip_to_bytes(B), 17, size) + bytes(size)


def pair(mode="transport", udp=None, keys=GCM, **kw):
    return (SecurityAssociation(0x1000, "esp", "outbound", mode, A, B, udp_encap=udp, **keys, **kw),
            SecurityAssociation(0x1000, "esp", "inbound", mode, A, B, udp_encap=udp, **keys, **kw))


@pytest.mark.parametrize("mode,udp,method", PATHS)
def test_sequence_never_wraps_on_any_path(mode, udp, method):
    out, _ = pair(mode, udp)
    send = getattr(out, method)
    out.seq = SEQ_MAX - 1
    send(packet())
    before = (out.seq, out.counters.packets, out.counters.bytes)
    with pytest.raises(SAExpired, match="wrap"):
        send(packet())
    assert (out.seq, out.counters.packets, out.counters.bytes) == before == (SEQ_MAX, 1, before[2])


@pytest.mark.parametrize("mode,udp,method", PATHS)
def test_hard_byte_limit_refuses_on_any_path_and_counts_nothing(mode, udp, method):
    out, _ = pair(mode, udp, lifetime=Lifetime(hard_kilobytes=1))
    send = getattr(out, method)
    protected = 100 if mode == "transport" else 120  # tunnel mode protects the whole inner packet
    sent = 0
    while out.counters.bytes + protected <= 1024:
        send(packet())
        sent += 1
    with pytest.raises(SAExpired, match="1 KB"):
        send(packet())
    assert (out.seq, out.counters.packets, out.counters.bytes) == (sent, sent, sent * protected)
    assert out.hard_expired(out.created) is False  # refused before reaching it: not yet 1024 bytes


@pytest.mark.parametrize("mode,udp,method", PATHS)
def test_the_packet_that_passes_the_soft_byte_limit_raises_the_flag_on_any_path(mode, udp, method):
    out, _ = pair(mode, udp, lifetime=Lifetime(soft_kilobytes=1, hard_kilobytes=2))
    send = getattr(out, method)
    while out.counters.bytes <= 1024:
        assert not out.soft_due
        send(packet())
    assert out.soft_due  # set by the packet that went past 1024 bytes, which was sent
    out.soft_due = False
    while out.counters.bytes + 120 <= 2048:
        send(packet())
    assert not out.soft_due  # once: after the soft limit only the hard one is watched
    with pytest.raises(SAExpired, match="2 KB"):
        send(packet())


def test_exactly_the_hard_limit_is_allowed():
    out, _ = pair(lifetime=Lifetime(hard_kilobytes=1))
    for _ in range(8):
        out.encapsulate(packet(128))  # 8 x 128 = 1024: the last byte allowed
    assert out.counters.bytes == 1024 and out.hard_expired(out.created)
    with pytest.raises(SAExpired):
        out.encapsulate(packet(1))


@pytest.mark.parametrize("keys", [GCM, CBC], ids=["gcm", "cbc"])
@pytest.mark.parametrize("mode,udp", [("transport", None), ("tunnel", None), ("transport", (4500, 4500))])
def test_in_order_and_out_of_order_replay(keys, mode, udp):
    out, inbound = pair(mode, udp, keys)
    wire = [out.encapsulate(packet()) for _ in range(200)]
    for seq in (1, 2, 3, 5, 4, 60, 7, 6):  # in order, one late, a jump, two late inside the window
        assert inbound.decapsulate(wire[seq - 1]) == packet()
    assert inbound.seq == 60 and inbound.counters.packets == 8
    for seq in (4, 60, 6):  # duplicates, in and out of order
        with pytest.raises(Replayed, match="already received"):
            inbound.decapsulate(wire[seq - 1])
    assert inbound.decapsulate(wire[199]) == packet()  # a jump past the whole window
    for seq in (8, 136):  # never received, but 64 or more behind
        with pytest.raises(Replayed, match="left of the window"):
            inbound.decapsulate(wire[seq - 1])
    assert inbound.decapsulate(wire[137 - 1]) == packet()  # the oldest sequence number still inside
    assert inbound.seq == 200 and inbound.counters.replayed_packets == 5


@pytest.mark.parametrize("keys", [GCM, CBC], ids=["gcm", "cbc"])
def test_forged_in_order_packet_moves_nothing(keys):
    out, inbound = pair("tunnel", None, keys)
    good = out.encapsulate(packet())
    forged = bytearray(out.encapsulate(packet()))
    forged[-1] ^= 1
    with pytest.raises(AuthenticationFailed):
        inbound.decapsulate(bytes(forged))
    assert (inbound.seq, inbound.counters.packets, inbound.counters.bytes) == (0, 0, 0)
    assert inbound.decapsulate(good) == packet()
    assert inbound.counters.packets_not_authenticated == 1


def random_packet(rng: random.Random, options: bytes = b"") -> bytes:
    inner = IP(src=A, dst=B, tos=rng.randrange(256), ttl=rng.randrange(1, 256), id=rng.randrange(65536),
               flags=rng.choice(["DF", 0]), options=options) / TCP(sport=rng.randrange(1, 65536), dport=80)
    return bytes(inner / bytes(rng.randrange(200)))


@pytest.mark.parametrize("options", [b"", b"\x94\x04\x00\x00"], ids=["plain", "router-alert"])
@pytest.mark.parametrize("udp", [None, (4500, 4500)])
def test_transport_headers_rewritten_with_valid_checksums(options, udp):
    rng = random.Random(7)
    out, inbound = pair("transport", udp)
    for _ in range(50):
        original = random_packet(rng, options)
        wire = out.encapsulate(original)
        outer, sent = IP(wire), IP(original)
        assert ipv4_checksum(wire[:outer.ihl * 4]) == 0 and outer.len == len(wire)
        assert outer.proto == (17 if udp else 50) and wire[20:outer.ihl * 4] == original[20:sent.ihl * 4]
        assert (outer.tos, outer.ttl, outer.id, outer.flags) == (sent.tos, sent.ttl, sent.id, sent.flags)
        if udp:
            assert outer[UDP].len == len(wire) - outer.ihl * 4 and outer[UDP].chksum == 0
        assert inbound.decapsulate(wire) == original  # checksum field included


def test_tunnel_header_copies_tos_and_df_only():
    out, inbound = pair("tunnel")
    original = bytes(IP(src="10.1.0.1", dst="10.2.0.1", tos=0xB8, flags="DF", ttl=9) / TCP())
    outer = IP(out.encapsulate(original))
    assert (outer.src, outer.dst, outer.tos, outer.ttl, str(outer.flags)) == (A, B, 0xB8, 64, "DF")
    assert ipv4_checksum(bytes(outer)[:20]) == 0
    assert inbound.decapsulate(bytes(outer)) == original


def test_fast_lookup_follows_add_and_delete():
    out, inbound = pair()
    sad = SAD()
    sad.add(inbound)
    assert sad.inbound(out.encapsulate(packet()))[1] is inbound
    sad.delete(0x1000, B, "esp")
    with pytest.raises(UnknownSPI):
        sad.inbound(out.encapsulate(packet()))
    sad.add(SecurityAssociation(0x1000, "esp", "outbound", "transport", "192.0.2.9", B, **GCM))
    with pytest.raises(UnknownSPI):  # same key, but an outbound SA is never a receiver
        sad.inbound(out.encapsulate(packet()))
    assert sad.counters.bad_spi_packets == 2


def test_esp_with_ip_options_takes_the_general_lookup():
    out, inbound = pair()
    sad = SAD()
    sad.add(inbound)
    original = random_packet(random.Random(3), b"\x94\x04\x00\x00")
    inner, sa = sad.inbound(out.encapsulate(original))
    assert inner == original and sa is inbound


@pytest.mark.parametrize("bad", [b"", bytes(19), b"\x46" + bytes(23), b"\x45\x00\x00\x10" + bytes(20)])
def test_malformed_outer_headers_are_counted_not_looked_up(bad):
    sad = SAD()
    sad.add(pair()[1])
    with pytest.raises(BadPacket):
        sad.inbound(bad[:9] + b"\x32" + bad[10:] if len(bad) > 9 else bad)
    assert (sad.counters.malformed_packets, sad.counters.bad_spi_packets) == (1, 0)


def test_outbound_header_garbage_is_bad_packet_on_every_path():
    for mode, udp, method in PATHS:
        out, _ = pair(mode, udp)
        for garbage in (b"", b"\x45", b"\x60" + bytes(39), b"\x45\x00\x00\x14\x00\x00\x20\x00" + bytes(12)):
            if mode == "tunnel" and len(garbage) >= 20:
                continue  # tunnel mode carries any IPv4 packet, fragments included
            with pytest.raises(BadPacket):
                getattr(out, method)(garbage)
        assert out.seq == 0 and out.counters.packets == 0


def test_gcm_padding_of_every_length_matches_scapy():
    from scapy.layers import ipsec as scapy_ipsec

    key = os.urandom(20)
    out = SecurityAssociation(0x2000, "esp", "outbound", "tunnel", A, B, "aes-gcm-128", key)
    theirs = scapy_ipsec.SecurityAssociation(scapy_ipsec.ESP, spi=0x2000, crypt_algo="AES-GCM", crypt_key=key,
                                             tunnel_header=IP(src=A, dst=B))
    for size in range(0, 12):
        original = packet(size)
        assert bytes(theirs.decrypt(IP(out.encapsulate(original)))) == original


@pytest.mark.parametrize("hex_packet,expected", [
    ("450000280000400040060000" "0a000001" "0a000002" "04d20050", "06" "0a000001" "0a000002" "04d20050"),
    ("460000300000400040110000" "0a000001" "0a000002" "94040000" "04d20035",
     "11" "0a000001" "0a000002" "04d20035"),
    ("450000280000200540060000" "0a000001" "0a000002" "04d20050", "06" "0a000001" "0a000002"),
    ("450000280000000001010000" "0a000001" "0a000002" "08000000", "01" "0a000001" "0a000002"),
])
def test_flow_key_ports_only_for_tcp_udp_first_fragments(hex_packet, expected):
    assert flow_key(bytes.fromhex(hex_packet)).hex() == expected


def test_deleting_an_ah_sa_keeps_the_esp_sa_with_the_same_spi():
    sad = SAD()
    out, esp_in = pair()
    sad.add(esp_in)
    sad.add(SecurityAssociation(0x1000, "ah", "inbound", "transport", A, B, integrity="hmac-sha1-96",
                                integrity_key=bytes(20)))
    sad.delete(0x1000, B, "ah")
    assert sad.inbound(out.encapsulate(packet()))[1] is esp_in
