"""Capture assertions on synthetic packets: each passes on what it should and fails on what it should not."""

import pytest
from scapy.layers.inet import ICMP, IP, TCP, UDP
from scapy.layers.l2 import ARP, Ether

from lab.capture import (
    assert_checksums_valid,
    assert_marker_absent,
    assert_marker_present,
    assert_only_protocols,
    assert_protocol_seen,
    assert_source_seen,
    protocol,
    wait_until,
)

A, B = "10.0.0.1", "10.0.0.2"


def wire(packet):
    """The packet as a receiver decodes it (checksums filled in)."""
    return Ether(bytes(Ether() / packet))


ESP_PACKET = wire(IP(src=A, dst=B, proto=50) / (b"\x00\x00\x10\x01" + b"\x00\x00\x00\x01" + b"\xaa" * 32))
NATT = wire(IP(src=A, dst=B) / UDP(sport=40001, dport=4500) / (b"\x00\x00\x10\x01" + b"\xbb" * 24))
IKE = wire(IP(src=A, dst=B) / UDP(sport=500, dport=500) / (b"\x11" * 28))
CLEAR = wire(IP(src=A, dst=B) / TCP(sport=45000, dport=5001) / b"hello MARKER")
PING = wire(IP(src=B, dst=A) / ICMP())
ARP_FRAME = Ether() / ARP(psrc=A, pdst=B)


@pytest.mark.parametrize(
    ("packet", "name"),
    [(ESP_PACKET, "esp"), (NATT, "udp/4500"), (IKE, "udp/500"), (CLEAR, "tcp/5001"), (PING, "icmp")],
)
def test_protocol_names(packet, name):
    assert protocol(packet) == name


def test_only_protocols_between_two_hosts():
    assert_only_protocols([ESP_PACKET, NATT, IKE, ARP_FRAME], {"esp", "udp/4500", "udp/500"}, between=(A, B))
    with pytest.raises(AssertionError, match=r"(?s)1 of 4 packets are not .*TCP 10.0.0.1:45000"):
        assert_only_protocols([ESP_PACKET, NATT, IKE, CLEAR], {"esp", "udp/4500", "udp/500"}, between=(A, B))
    # packets between other addresses are not judged
    other = wire(IP(src="10.0.0.3", dst=B) / TCP(dport=80))
    assert_only_protocols([ESP_PACKET, other], {"esp"}, between=(A, B))


def test_marker_absent_and_present():
    assert_marker_absent([ESP_PACKET, NATT], b"MARKER")
    with pytest.raises(AssertionError, match="in clear in 1 packets"):
        assert_marker_absent([ESP_PACKET, CLEAR], b"MARKER")
    assert assert_marker_present([CLEAR], b"MARKER") == [CLEAR]
    with pytest.raises(AssertionError):
        assert_marker_present([ESP_PACKET], b"MARKER")


def test_protocol_and_source_seen():
    assert assert_protocol_seen([PING, CLEAR], "icmp") == [PING]
    with pytest.raises(AssertionError, match=r"no esp packet among 2 \(seen: \['icmp', 'tcp/5001'\]\)"):
        assert_protocol_seen([PING, CLEAR], "esp")
    assert assert_source_seen([PING, CLEAR], B, dst=A) == [PING]
    with pytest.raises(
        AssertionError, match=r"no packet from 192.168.1.10 \(sources seen: \['10.0.0.1', '10.0.0.2'\]\)"
    ):
        assert_source_seen([PING, CLEAR], "192.168.1.10")


def test_checksums():
    assert assert_checksums_valid([CLEAR, NATT, PING]) == 3
    broken = CLEAR.copy()
    broken[TCP].chksum ^= 0xFFFF
    with pytest.raises(AssertionError, match="bad TCP checksum"):
        assert_checksums_valid([broken])


def test_wait_until_returns_the_value_or_names_what_it_waited_for():
    answers = iter([None, 0, "ready"])
    assert wait_until(lambda: next(answers), timeout=2, interval=0.001) == "ready"
    with pytest.raises(TimeoutError, match="waiting for the moon"):
        wait_until(lambda: False, timeout=0.05, what="the moon")


def test_tshark_decodes_independently(tmp_path):
    from scapy.utils import wrpcap

    from lab.capture import tshark

    pcap = tmp_path / "x.pcap"
    wrpcap(str(pcap), [ESP_PACKET, NATT, IKE, CLEAR])
    assert tshark(pcap, ["ip.src", "esp.spi"], "esp") == [["10.0.0.1", "0x00001001"]] * 2
    assert tshark(pcap, ["tcp.dstport"], "tcp") == [["5001"]]
    with pytest.raises(RuntimeError, match="tshark failed"):
        tshark(pcap, ["no.such.field"])
