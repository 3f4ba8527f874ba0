"""The driver's checksum helpers against scapy's own checksums: NAT-T transport mode recomputes them."""

from __future__ import annotations

import random

import pytest
from scapy.layers.inet import IP, TCP, UDP

from ipsecd.driver.ipv4 import fix_l4_checksum, nat_checksum_fixup


def natted(packet: bytes) -> bytes:
    """The packet with another source address (a NAT's), its TCP/UDP checksum left stale."""
    return packet[:12] + bytes([203, 0, 113, 1]) + packet[16:]


@pytest.mark.parametrize("seed", range(4))
def test_tcp_and_udp_checksums_are_recomputed_as_scapy_computes_them(seed):
    rng = random.Random(seed)
    for _ in range(50):
        length = rng.choice([0, 1, 2, 3, rng.randint(4, 1472)])
        layer = rng.choice([TCP(sport=rng.randint(1, 0xFFFF), dport=80, seq=rng.randint(0, 2**32 - 1),
                                flags="PA", options=rng.choice([[], [("NOP", None), ("MSS", 1400)]])),
                            UDP(sport=rng.randint(1, 0xFFFF), dport=53)])
        options = rng.choice([[], [b"\x94\x04\x00\x00"]])  # none, or Router Alert
        ip = IP(src="192.168.1.10", dst="203.0.113.2", options=options)
        packet = bytes(ip / layer / rng.randbytes(length))
        expected = IP(natted(packet))
        del expected[type(layer)].chksum  # scapy computes it anew; the IPv4 header stays as it came
        assert fix_l4_checksum(natted(packet)) == bytes(expected)


def test_udp_without_checksum_stays_without_and_a_computed_zero_is_sent_as_all_ones():
    no_checksum = bytes(IP(src="10.0.0.1", dst="10.0.0.2") / UDP(sport=1, dport=2, chksum=0) / b"abc")
    assert fix_l4_checksum(no_checksum) == no_checksum
    # payload = the checksum over a zero payload: the one's complement sum becomes all ones, the checksum 0
    zeroed = IP(bytes(IP(src="10.0.0.1", dst="10.0.0.2") / UDP(sport=1, dport=2) / b"\x00\x00"))
    packet = bytes(zeroed)[:28] + zeroed[UDP].chksum.to_bytes(2, "big")
    assert fix_l4_checksum(packet)[26:28] == b"\xff\xff"
    assert IP(fix_l4_checksum(packet))[UDP].chksum == 0xFFFF


def test_fragments_and_other_protocols_are_left_alone():
    fragment = bytes(IP(src="10.0.0.1", dst="10.0.0.2", flags="MF") / UDP(sport=1, dport=2) / (b"x" * 40))
    later = bytes(IP(src="10.0.0.1", dst="10.0.0.2", proto=17, frag=5) / (b"y" * 40))  # no UDP header in it
    icmp = bytes(IP(src="10.0.0.1", dst="10.0.0.2", proto=1) / b"\x08\x00\x00\x00")
    original = bytes([192, 168, 1, 10]), bytes([10, 0, 0, 2])
    for packet in (natted(fragment), natted(later), icmp):
        assert fix_l4_checksum(packet) == packet
        assert nat_checksum_fixup(packet, *original) == packet  # NAT-OA's incremental update, likewise
