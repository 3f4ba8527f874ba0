"""SPD: filter matching, weight ordering, mirroring, exemptions."""

from ipaddress import IPv4Network

import pytest
from scapy.layers.inet import ICMP, IP, TCP, UDP

from ipsecd.driver.spd import SPD, Action, Direction, Filter, PacketSelector, SecurityMethod, SPDAction

PERMIT = SPDAction("permit", Action.PERMIT)
BLOCK = SPDAction("block", Action.BLOCK)
SECURE = SPDAction("secure", Action.NEGOTIATE, (SecurityMethod(),))


def net(text: str) -> IPv4Network:
    return IPv4Network(text)


def sel(packet) -> PacketSelector:
    return PacketSelector.parse(bytes(packet))


def test_selector_reads_addresses_protocol_and_ports():
    s = sel(IP(src="10.0.0.1", dst="10.0.0.2") / TCP(sport=1234, dport=80))
    assert (s.protocol, s.src_port, s.dst_port) == (6, 1234, 80)
    assert str(s) == "10.0.0.1 -> 10.0.0.2 proto 6 1234->80"


def test_selector_has_no_ports_on_a_later_fragment():
    s = sel(IP(src="10.0.0.1", dst="10.0.0.2", frag=100) / UDP(sport=53, dport=53))
    assert (s.src_port, s.dst_port) == (0, 0)


@pytest.mark.parametrize("junk", [b"", b"\x45" * 10, bytes(IP())[:-1], b"\x60" + bytes(39)])
def test_selector_refuses_what_is_not_ipv4(junk):
    with pytest.raises(ValueError):
        PacketSelector.parse(junk)


def test_more_specific_filter_wins_whatever_the_given_order():
    spd = SPD(
        [
            Filter("any tcp", net("0.0.0.0/0"), net("0.0.0.0/0"), SECURE, protocol=6),
            Filter("host to host", net("10.0.0.1/32"), net("10.0.0.2/32"), BLOCK),
            Filter("host web", net("10.0.0.1/32"), net("10.0.0.2/32"), PERMIT, protocol=6, dst_port=80),
        ]
    )
    assert [f.name for f in spd.filters] == ["host web", "host to host", "any tcp"]
    web = sel(IP(src="10.0.0.1", dst="10.0.0.2") / TCP(dport=80))
    ssh = sel(IP(src="10.0.0.1", dst="10.0.0.2") / TCP(dport=22))
    other = sel(IP(src="10.0.0.3", dst="10.0.0.9") / TCP(dport=22))
    assert spd.lookup(web, Direction.OUTBOUND).name == "host web"
    assert spd.lookup(ssh, Direction.OUTBOUND).name == "host to host"
    assert spd.lookup(other, Direction.OUTBOUND).name == "any tcp"


def test_equal_weights_keep_the_given_order():
    spd = SPD(
        [
            Filter("first", net("10.0.0.0/24"), net("0.0.0.0/0"), PERMIT),
            Filter("second", net("10.0.0.0/24"), net("0.0.0.0/0"), BLOCK),
        ]
    )
    assert spd.lookup(sel(IP(src="10.0.0.5", dst="1.2.3.4") / ICMP()), Direction.OUTBOUND).name == "first"


def test_no_filter_means_no_match():
    spd = SPD([Filter("lan", net("10.0.0.0/24"), net("10.0.0.0/24"), SECURE)])
    assert spd.lookup(sel(IP(src="192.0.2.1", dst="10.0.0.1") / ICMP()), Direction.OUTBOUND) is None


def test_mirrored_filter_matches_the_reply_inbound_only():
    out, back = Filter(
        "web", net("10.0.0.1/32"), net("10.0.0.2/32"), SECURE, protocol=6, src_port=1024, dst_port=80
    ).mirrored()
    assert back.direction is Direction.INBOUND
    assert (back.src, back.dst, back.src_port, back.dst_port) == (out.dst, out.src, 80, 1024)
    spd = SPD([out, back])
    reply = sel(IP(src="10.0.0.2", dst="10.0.0.1") / TCP(sport=80, dport=1024))
    assert spd.lookup(reply, Direction.INBOUND) is back
    assert spd.lookup(reply, Direction.OUTBOUND) is None


@pytest.mark.parametrize(
    "packet",
    [
        IP(src="10.0.0.1", dst="10.0.0.2") / UDP(sport=500, dport=500),
        IP(src="10.0.0.1", dst="10.0.0.2") / UDP(sport=4500, dport=4500),
        IP(src="10.0.0.1", dst="224.0.0.5") / UDP(sport=1, dport=2),
        IP(src="10.0.0.1", dst="10.0.0.255") / UDP(sport=137, dport=137),
        IP(src="10.0.0.1", dst="10.0.0.10") / UDP(sport=40000, dport=88),  # to the KDC
        IP(src="10.0.0.10", dst="10.0.0.1") / TCP(sport=88, dport=40000),  # its answer
        IP(src="10.0.0.1", dst="10.0.0.2", proto=46),  # RSVP
    ],
)
def test_ike_kerberos_rsvp_broadcast_and_multicast_are_exempt(packet):
    assert sel(packet).is_exempt()


def test_ordinary_traffic_is_not_exempt():
    assert not sel(IP(src="10.0.0.1", dst="10.0.0.2") / UDP(sport=5000, dport=53)).is_exempt()


def test_invalid_definitions_are_refused():
    with pytest.raises(ValueError, match="ports need protocol"):
        Filter("bad", net("10.0.0.1/32"), net("10.0.0.2/32"), PERMIT, dst_port=80)
    with pytest.raises(ValueError, match="at least one security method"):
        SPDAction("empty", Action.NEGOTIATE)
    with pytest.raises(ValueError, match="ESP, AH or both"):
        SecurityMethod(esp_encryption=None, esp_integrity=None)


def test_describe_reads_like_netsh():
    f = Filter("web", net("10.0.0.1/32"), net("10.0.0.2/32"), SECURE, protocol=6, dst_port=80)
    assert f.describe() == "web: outbound 10.0.0.1/32 -> 10.0.0.2/32 tcp ports any->80 => negotiate"
    assert SecurityMethod().describe() == "ESP 3des-cbc/hmac-sha1-96, 3600 s/100000 KB"
