"""TUN super-packets: TSO segmentation and GRO-style coalescing, checked against scapy's own checksums."""

from __future__ import annotations

import random

import pytest
from scapy.layers.inet import ICMP, IP, TCP, UDP

from ipsecd.driver.ipv4 import NUMPY_FROM
from ipsecd.driver.offload import (
    GSO_ECN,
    GSO_NONE,
    GSO_TCPV4,
    NEEDS_CSUM,
    PLAIN_HEADER,
    VNET_HEADER,
    VNET_HEADER_SIZE,
    Coalescer,
    GsoSender,
    complete_checksum,
    partial_frame,
    segments,
    split_gro,
)

TIMESTAMP = [("NOP", None), ("NOP", None), ("Timestamp", (1234, 5678))]


def recomputed(packet: bytes) -> bytes:
    """The packet as scapy builds it with its own IPv4 and TCP/UDP checksums."""
    p = IP(packet)
    del p.chksum
    if p.haslayer(TCP):
        del p[TCP].chksum
    if p.haslayer(UDP):
        del p[UDP].chksum
    return bytes(p)


def super_packet(length: int, flags: str = "PA", seq: int = 0xFFFFF000) -> bytes:
    payload = bytes(i * 7 % 251 for i in range(length))
    return bytes(IP(src="10.0.0.1", dst="10.0.0.2", id=0xFFFE, flags="DF") /
                 TCP(sport=40000, dport=5201, seq=seq, ack=99, flags=flags, options=TIMESTAMP) / payload)


def tso_frame(packet: bytes, mss: int) -> bytes:
    return VNET_HEADER.pack(NEEDS_CSUM, GSO_TCPV4, 52, mss, 20, 16) + packet


def test_tso_read_is_cut_into_segments_as_the_kernel_would():
    original = super_packet(5000, flags="FPA")
    parts = segments(tso_frame(original, 1348))
    assert [len(IP(p)[TCP].payload) for p in parts] == [1348, 1348, 1348, 956]
    assert all(recomputed(p) == p for p in parts)  # IPv4 and TCP checksums complete and right
    assert [IP(p).id for p in parts] == [0xFFFE, 0xFFFF, 0, 1]
    assert [str(IP(p)[TCP].flags) for p in parts] == ["A", "A", "A", "FPA"]
    assert [IP(p)[TCP].seq for p in parts] == [(0xFFFFF000 + i * 1348) % 2**32 for i in range(4)]
    assert b"".join(bytes(IP(p)[TCP].payload) for p in parts) == bytes(IP(original)[TCP].payload)
    assert all(IP(p)[TCP].options == IP(original)[TCP].options for p in parts)


def test_odd_lengths_and_a_lone_segment_keep_right_checksums():
    for length, mss in ((2001, 1000), (999, 1000), (1, 1000)):
        parts = segments(tso_frame(super_packet(length), mss))
        assert all(recomputed(p) == p for p in parts)
        assert sum(len(IP(p)[TCP].payload) for p in parts) == length


OPTIONS = [[], TIMESTAMP, [("MSS", 1460), ("NOP", None), ("WScale", 7), ("SAckOK", b""), ("EOL", None)]]


@pytest.mark.parametrize("seed", range(8))
def test_random_super_packets_are_cut_with_the_checksums_scapy_computes(seed):
    """Even and odd mss, odd payload lengths, TCP and IP options, every flag the cut treats apart."""
    rng = random.Random(seed)
    for _ in range(25):
        mss = rng.choice([1, 2, 535, 536, 1347, 1348, 1448, rng.randint(3, 9000)])
        length = rng.choice([0, 1, mss - 1, mss, mss + 1, NUMPY_FROM - 1, NUMPY_FROM, rng.randint(1, 64000)])
        length = max(0, min(length, 300 * mss, 64000))
        flags = rng.choice(["A", "PA", "FPA", "FA", "CA", "CPA", "CFPA", "EA", "UA"])
        ip_options = rng.choice([[], [b"\x94\x04\x00\x00"]])  # none, or Router Alert
        ip = IP(src="10.0.0.1", dst="10.0.0.2", id=rng.randint(0, 0xFFFF), flags="DF",
                tos=rng.randint(0, 255), options=ip_options)
        tcp = TCP(sport=rng.randint(1, 0xFFFF), dport=5201, seq=rng.randint(0, 2**32 - 1),
                  ack=rng.randint(0, 2**32 - 1), window=rng.randint(0, 0xFFFF), flags=flags,
                  urgptr=7 if "U" in flags else 0, options=rng.choice(OPTIONS))
        packet = IP(bytes(ip / tcp / rng.randbytes(length)))
        gso_type = GSO_TCPV4 | (GSO_ECN if "E" in flags else 0)
        frame = VNET_HEADER.pack(NEEDS_CSUM, gso_type, len(packet) - length, mss, 20, 16)
        parts = [IP(p) for p in segments(frame + bytes(packet))]
        assert all(recomputed(bytes(p)) == bytes(p) for p in parts), (mss, length, flags)
        count = max(1, -(-length // mss))
        assert [len(p[TCP].payload) for p in parts] == [mss] * (count - 1) + [length - (count - 1) * mss]
        assert b"".join(bytes(p[TCP].payload) for p in parts) == bytes(packet[TCP].payload)
        assert [p.id for p in parts] == [(packet.id + i) % 2**16 for i in range(count)]
        assert [p[TCP].seq for p in parts] == [(packet[TCP].seq + i * mss) % 2**32 for i in range(count)]
        expected = [packet[TCP].flags & ~0x89 | (packet[TCP].flags & 0x80 if i == 0 else 0)
                    | (packet[TCP].flags & 0x09 if i == count - 1 else 0) for i in range(count)]
        assert [int(p[TCP].flags) for p in parts] == expected
        assert all(p.options == packet.options and p[TCP].options == packet[TCP].options for p in parts)
        assert all((p.tos, p[TCP].ack, p[TCP].window, p[TCP].urgptr) ==
                   (packet.tos, packet[TCP].ack, packet[TCP].window, packet[TCP].urgptr) for p in parts)


def test_a_malformed_tso_read_comes_back_whole_for_the_driver_to_count():
    good = bytearray(super_packet(3000))
    short_ip, short_tcp, truncated = bytearray(good), bytearray(good), bytes(good[:45])
    short_ip[0] = 0x44  # IHL 16 bytes
    short_tcp[32] = 0x40  # data offset 16 bytes
    for packet in (bytes(short_ip), bytes(short_tcp), truncated, bytes(good[:30])):
        assert segments(tso_frame(packet, 1000)) == [packet]


def test_partial_checksum_of_a_single_packet_is_completed():
    udp = IP(bytes(IP(src="10.0.0.1", dst="10.0.0.2") / UDP(sport=1, dport=2) / b"odd length"))
    partial = bytearray(bytes(udp))
    pseudo = (int.from_bytes(partial[12:20], "big") + 17 + len(udp[UDP])) % 0xFFFF
    partial[26:28] = pseudo.to_bytes(2, "big")  # what the kernel leaves for CHECKSUM_PARTIAL
    frame = VNET_HEADER.pack(NEEDS_CSUM, GSO_NONE, 0, 0, 20, 6) + bytes(partial)
    assert segments(frame) == [bytes(udp)]
    ping = bytes(IP(src="10.0.0.1", dst="10.0.0.2") / ICMP())
    assert segments(PLAIN_HEADER + ping) == [ping]


@pytest.mark.parametrize("length", [1, 2, 63, 64, NUMPY_FROM - 1, NUMPY_FROM, NUMPY_FROM + 1, 9001, 65495])
def test_partial_checksums_of_every_size_are_completed(length):
    for layer, protocol, at in ((TCP(sport=1, dport=2, flags="PA"), 6, 36), (UDP(sport=1, dport=2), 17, 26)):
        complete = bytes(IP(src="10.0.0.1", dst="10.0.0.2") / layer / random.Random(length).randbytes(length))
        partial = bytearray(complete)
        pseudo = (int.from_bytes(partial[12:20], "big") + protocol + len(partial) - 20) % 0xFFFF
        partial[at:at + 2] = pseudo.to_bytes(2, "big")
        frame = VNET_HEADER.pack(NEEDS_CSUM, GSO_NONE, 0, 0, 20, at - 20) + bytes(partial)
        assert segments(frame) == [complete]


def test_a_run_of_segments_becomes_one_gso_write_with_the_original_payload():
    original = super_packet(5000, flags="PA")
    frames: list[bytes] = []
    coalescer = Coalescer(frames.append)
    for p in segments(tso_frame(original, 1348)):
        coalescer.add(p)
    coalescer.flush()
    assert len(frames) == 1
    flags, gso_type, header_length, gso_size, csum_start, csum_offset = VNET_HEADER.unpack_from(frames[0])
    assert (flags, gso_type, header_length, gso_size, csum_start, csum_offset) == \
        (NEEDS_CSUM, GSO_TCPV4, 52, 1348, 20, 16)
    merged = IP(frames[0][VNET_HEADER_SIZE:])
    assert merged.len == len(original) and bytes(merged[TCP].payload) == bytes(IP(original)[TCP].payload)
    assert str(merged[TCP].flags) == "PA" and merged[TCP].seq == 0xFFFFF000
    assert IP(recomputed(bytes(merged))).chksum == merged.chksum  # IPv4 header checksum complete
    pseudo = (int.from_bytes(original[12:20], "big") + 6 + len(original) - 20) % 0xFFFF
    assert merged[TCP].chksum == pseudo  # partial, as NEEDS_CSUM says


def test_what_cannot_continue_a_run_is_written_apart():
    frames: list[bytes] = []
    coalescer = Coalescer(frames.append)
    first, second, third, fourth = segments(tso_frame(super_packet(4000, flags="A"), 1000))
    other_flow = recomputed(first.replace(b"\x9c\x40", b"\x9c\x41", 1))  # source port 40001
    ping = bytes(IP(src="10.0.0.2", dst="10.0.0.1") / ICMP())
    for p in (first, third, other_flow, ping, second, fourth):  # a gap, another flow, no TCP
        coalescer.add(p)
    coalescer.flush()
    assert [f[:VNET_HEADER_SIZE] == PLAIN_HEADER for f in frames] == [True] * 6
    assert [f[VNET_HEADER_SIZE:] for f in frames] == [first, third, other_flow, ping, second, fourth]


@pytest.mark.parametrize("change", [
    {"tos": 4}, {"ttl": 63}, {"flags": 0}, {"id": 0xFFFE},  # IPv4: TOS, TTL, DF, identification not the next
    {"ack": 100}, {"window": 1}, {"options": [("NOP", None), ("NOP", None), ("Timestamp", (1235, 5678))]},
    {"tcp_flags": "EA"}, {"tcp_flags": "UA"},  # ECE and URG never join a run
])
def test_a_segment_that_differs_from_its_run_where_gro_compares_is_written_apart(change):
    frames: list[bytes] = []
    coalescer = Coalescer(frames.append)
    first, second = segments(tso_frame(super_packet(2000, flags="A"), 1000))
    changed = IP(second)
    for field in ("tos", "ttl", "flags", "id"):
        if field in change:
            setattr(changed, field, change[field])
    for field in ("ack", "window", "options"):
        if field in change:
            setattr(changed[TCP], field, change[field])
    if "tcp_flags" in change:
        changed[TCP].flags = change["tcp_flags"]
    changed = recomputed(bytes(changed))
    coalescer.add(first)
    coalescer.add(changed)
    coalescer.flush()
    assert len(frames) == 2


def natted(packet: bytes, source: bytes = bytes([203, 0, 113, 1])) -> bytes:
    """The packet from another source address, as a NAT writes it: IPv4 checksum fixed, TCP/UDP not."""
    p = IP(packet[:12] + source + packet[16:])
    del p.chksum
    return bytes(p)


def test_a_lone_packet_with_a_stale_checksum_is_written_partial_for_the_kernel_to_complete():
    frames: list[bytes] = []
    coalescer = Coalescer(frames.append)
    syn = bytes(IP(src="192.168.1.10", dst="10.0.0.2") / TCP(sport=5555, dport=22, flags="S"))
    udp = bytes(IP(src="192.168.1.10", dst="10.0.0.2") / UDP(sport=5555, dport=53) / b"query")
    no_checksum = bytearray(udp)
    no_checksum[26:28] = b"\x00\x00"
    ping = bytes(IP(src="192.168.1.10", dst="10.0.0.2") / ICMP())
    for packet in (syn, udp, bytes(no_checksum), ping):
        coalescer.add(natted(packet), stale_checksum=True)
    coalescer.flush()
    (syn_frame, udp_frame, no_checksum_frame, ping_frame) = frames
    for frame, offset in ((syn_frame, 16), (udp_frame, 6)):
        assert VNET_HEADER.unpack_from(frame) == (NEEDS_CSUM, GSO_NONE, 0, 0, 20, offset)
        assert complete_checksum(frame[VNET_HEADER_SIZE:], 20, offset) == recomputed(frame[VNET_HEADER_SIZE:])
    assert no_checksum_frame == PLAIN_HEADER + natted(bytes(no_checksum))  # UDP without checksum stays so
    assert ping_frame == PLAIN_HEADER + natted(ping)


def test_a_fragment_with_a_stale_checksum_is_left_as_it_is():
    fragment = natted(bytes(IP(src="192.168.1.10", dst="10.0.0.2", flags="MF") / UDP() / b"first part"))
    assert partial_frame(fragment) == PLAIN_HEADER + fragment


def test_a_run_of_segments_with_stale_checksums_is_one_gso_write_whose_checksum_the_kernel_redoes():
    frames: list[bytes] = []
    coalescer = Coalescer(frames.append)
    parts = [natted(p) for p in segments(tso_frame(super_packet(4000, flags="PA"), 1000))]
    for p in parts:
        coalescer.add(p, stale_checksum=True)
    coalescer.flush()
    (frame,) = frames
    assert VNET_HEADER.unpack_from(frame)[:2] == (NEEDS_CSUM, GSO_TCPV4)
    merged = frame[VNET_HEADER_SIZE:]
    pseudo = (int.from_bytes(merged[12:20], "big") + 6 + len(merged) - 20) % 0xFFFF
    assert merged[12:16] == bytes([203, 0, 113, 1]) and IP(merged)[TCP].chksum == pseudo


def test_push_closes_a_run():
    frames: list[bytes] = []
    coalescer = Coalescer(frames.append)
    a = segments(tso_frame(super_packet(2000, flags="PA"), 1000))
    b = segments(tso_frame(super_packet(2000, flags="PA", seq=(0xFFFFF000 + 2000) % 2**32), 1000))
    for p in a + b:
        coalescer.add(p)
    coalescer.flush()
    assert [len(f) - VNET_HEADER_SIZE for f in frames] == [2052, 2052]


def test_udp_datagrams_of_a_drain_go_out_in_runs_per_peer_size_and_tos():
    sent: list[tuple[bytes, int, tuple[str, int], int]] = []
    gso = GsoSender(lambda buffer, size, addr, tos: sent.append((buffer, size, addr, tos)))
    a, b = ("10.0.0.2", 4500), ("10.0.0.3", 4500)
    for payload, addr, tos in [(b"1" * 8, a, 0), (b"2" * 8, a, 0), (b"3" * 5, a, 0), (b"4" * 8, a, 0),
                               (b"5" * 8, b, 0), (b"6" * 8, b, 0x28)]:  # another TOS: another run
        gso.add(payload, addr, tos)
    gso.flush()
    assert sent == [(b"1" * 8 + b"2" * 8 + b"3" * 5, 8, a, 0), (b"4" * 8, 8, a, 0), (b"5" * 8, 8, b, 0),
                    (b"6" * 8, 8, b, 0x28)]
    assert [d for buffer, size, _, _ in sent for d in split_gro(buffer, size)] == \
        [b"1" * 8, b"2" * 8, b"3" * 5, b"4" * 8, b"5" * 8, b"6" * 8]


def test_a_refused_udp_run_is_counted_not_raised():
    def refuse(buffer: bytes, size: int, addr: tuple[str, int], tos: int) -> None:
        raise OSError(101, "Network is unreachable")

    gso = GsoSender(refuse)
    gso.add(b"x" * 8, ("10.0.0.2", 4500))
    gso.add(b"y" * 8, ("10.0.0.2", 4500))
    gso.flush()
    assert gso.lost == 2 and gso.error.strerror == "Network is unreachable"
