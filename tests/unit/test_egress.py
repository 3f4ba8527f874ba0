"""ipsecd.driver.egress: rtnetlink messages, next-hop decisions and the packet-socket/raw-socket split.

The netlink code is checked against the kernel itself (root, on the host): our answers must be what
`ip route get` and `ip neigh` say. The batching and fallback decisions run against fakes.
"""

from __future__ import annotations

import errno
import json
import os
import socket
import struct
import subprocess

import pytest
from scapy.layers.inet import IP

from ipsecd.driver.egress import (
    ARPHRD_ETHER,
    BATCH,
    IFINFOMSG,
    NDA_DST,
    NDA_LLADDR,
    NDMSG,
    NLMSG_DONE,
    NLMSG_ERROR,
    NLMSGHDR,
    NUD_DELAY,
    NUD_FAILED,
    NUD_INCOMPLETE,
    NUD_NOARP,
    NUD_PERMANENT,
    NUD_REACHABLE,
    RTA_DST,
    RTA_GATEWAY,
    RTA_MARK,
    RTA_OIF,
    RTM_GETLINK,
    RTM_GETNEIGH,
    RTM_GETROUTE,
    RTMSG,
    Egress,
    KernelTables,
    NetlinkError,
    NextHop,
    Route,
    attribute,
    attributes,
    dump_request,
    message,
    messages,
    next_hops,
    parse_link,
    parse_neighbour,
    parse_route,
    route_request,
)

MAC = bytes.fromhex("020000000002")
HOP = NextHop(3, MAC, 1500)


def packet(dst: str = "10.0.0.2", size: int = 100, seq: int = 0, proto: int = 50) -> bytes:
    return bytes(IP(src="10.0.0.1", dst=dst, proto=proto, id=seq) / bytes(size - 20))


# -- netlink messages --------------------------------------------------------------------------------------


def test_route_request_asks_for_one_ipv4_destination_with_the_mark():
    request = route_request(7, "10.0.0.2", 0x2222)
    length, kind, flags, seq, _ = NLMSGHDR.unpack_from(request)
    assert (length, kind, flags, seq) == (len(request), RTM_GETROUTE, 1, 7)
    family, dst_len, *_ = RTMSG.unpack_from(request, NLMSGHDR.size)
    assert (family, dst_len) == (socket.AF_INET, 32)
    attrs = attributes(request, NLMSGHDR.size + RTMSG.size)
    assert attrs == {RTA_DST: socket.inet_aton("10.0.0.2"), RTA_MARK: struct.pack("=I", 0x2222)}


def test_dump_requests():
    neigh, link = dump_request(RTM_GETNEIGH, 1), dump_request(RTM_GETLINK, 2)
    assert NLMSGHDR.unpack_from(neigh)[1:4] == (RTM_GETNEIGH, 0x301, 1)
    assert NDMSG.unpack_from(neigh, NLMSGHDR.size)[0] == socket.AF_INET
    assert NLMSGHDR.unpack_from(link)[1:4] == (RTM_GETLINK, 0x301, 2)
    assert len(link) == NLMSGHDR.size + IFINFOMSG.size


def test_attributes_are_padded_and_parsed_back():
    body = attribute(1, b"abcde") + attribute(2, b"xy")
    assert len(body) == 12 + 8
    assert attributes(body, 0) == {1: b"abcde", 2: b"xy"}


def test_messages_split_a_datagram_and_raise_on_an_error_reply():
    done = message(NLMSG_DONE, 0, 5, struct.pack("=i", 0))
    ack = message(NLMSG_ERROR, 0, 5, struct.pack("=i", 0) + bytes(16))
    assert messages(ack + done) == [(NLMSG_DONE, 5, struct.pack("=i", 0))]
    with pytest.raises(NetlinkError) as raised:
        messages(message(NLMSG_ERROR, 0, 5, struct.pack("=i", -errno.ENETUNREACH) + bytes(16)))
    assert raised.value.errno == errno.ENETUNREACH
    with pytest.raises(NetlinkError):
        messages(struct.pack("=I", 40) + done[4:])  # a length beyond the datagram


def route_answer(rtm_type: int, oif: int | None, gateway: str | None) -> bytes:
    attrs = attribute(RTA_DST, socket.inet_aton("10.9.9.9"))
    if oif is not None:
        attrs += attribute(RTA_OIF, struct.pack("=I", oif))
    if gateway:
        attrs += attribute(RTA_GATEWAY, socket.inet_aton(gateway))
    return RTMSG.pack(socket.AF_INET, 32, 0, 0, 254, 0, 0, rtm_type, 0) + attrs


def test_parse_route_gateway_on_link_and_not_unicast():
    assert parse_route(route_answer(1, 3, "10.0.0.254"), "10.9.9.9") == Route(3, "10.0.0.254")
    assert parse_route(route_answer(1, 3, None), "10.9.9.9") == Route(3, "10.9.9.9")
    assert parse_route(route_answer(2, 1, None), "10.9.9.9") is None  # RTN_LOCAL: the kernel's job
    assert parse_route(route_answer(1, None, None), "10.9.9.9") is None


def test_parse_neighbour_and_link():
    body = (NDMSG.pack(socket.AF_INET, 3, NUD_REACHABLE, 0, 1)
            + attribute(NDA_DST, socket.inet_aton("10.0.0.2")) + attribute(NDA_LLADDR, MAC))
    assert parse_neighbour(body) == ((3, "10.0.0.2"), NUD_REACHABLE, MAC)
    assert parse_neighbour(NDMSG.pack(socket.AF_INET6, 3, NUD_REACHABLE, 0, 1)) is None
    link = IFINFOMSG.pack(0, ARPHRD_ETHER, 3, 0, 0) + attribute(4, struct.pack("=I", 1400))
    assert parse_link(link) == (3, ARPHRD_ETHER, 1400)


@pytest.mark.parametrize(("state", "mac", "hardware", "usable"), [
    (NUD_REACHABLE, MAC, ARPHRD_ETHER, True),
    (NUD_DELAY, MAC, ARPHRD_ETHER, True),
    (NUD_PERMANENT, MAC, ARPHRD_ETHER, True),
    (NUD_INCOMPLETE, b"", ARPHRD_ETHER, False),
    (NUD_FAILED, MAC, ARPHRD_ETHER, False),
    (NUD_NOARP, b"", ARPHRD_ETHER, False),
    (NUD_REACHABLE, MAC, 65534, False),  # not Ethernet (a tunnel device): no MAC to send to
])
def test_which_neighbour_entries_are_used(state, mac, hardware, usable):
    neighbours = {(3, "10.0.0.2"): (state, mac)}
    hops = next_hops({"10.0.0.2": Route(3, "10.0.0.2")}, neighbours, {3: (hardware, 1500)})
    assert hops == {"10.0.0.2": HOP if usable else None}


def test_sockaddr_ll():
    family, protocol, ifindex, _, _, halen, address = struct.unpack("=HHiHBB8s", HOP.sockaddr)
    assert (family, socket.ntohs(protocol), ifindex, halen, address) == (
        socket.AF_PACKET, 0x0800, 3, 6, MAC + b"\0\0")


def ip_json(*args: str):
    return json.loads(subprocess.run(["ip", "-j", *args], capture_output=True, text=True, check=True).stdout)


@pytest.mark.skipif(os.geteuid() != 0, reason="netlink route lookups with a mark need root")
def test_kernel_tables_agree_with_iproute2():
    """The kernel's own answers, read by us and by `ip`: the same interface, gateway and MAC."""
    default = [r for r in ip_json("route", "show", "default") if "gateway" in r]
    if not default:
        pytest.skip("no default route on this machine")
    dst = "192.0.2.77" if not default[0]["gateway"].startswith("192.0.2.") else "198.51.100.77"
    route = ip_json("route", "get", dst)[0]
    tables = KernelTables(0)
    try:
        hops = tables.resolve([dst, "127.0.0.1"])
    finally:
        tables.close()
    assert hops["127.0.0.1"] is None  # a local route: the raw socket
    neighbours = {(n["dst"], n["dev"]): n for n in ip_json("neigh", "show")}
    entry = neighbours.get((route.get("gateway", dst), route["dev"]))
    usable = entry and "lladdr" in entry and not {"FAILED", "INCOMPLETE"} & set(entry.get("state", []))
    if not usable:
        assert hops[dst] is None
        return
    hop = hops[dst]
    assert hop is not None
    assert hop.ifindex == socket.if_nametoindex(route["dev"])
    assert hop.mac == bytes.fromhex(entry["lladdr"].replace(":", ""))
    assert hop.mtu == ip_json("link", "show", route["dev"])[0]["mtu"]


# -- the packet-socket / raw-socket split --------------------------------------------------------------------


class FakeKernel:
    """Next hops from a table the test changes; a packet socket that records, or refuses."""

    def __init__(self) -> None:
        self.hops: dict[str, NextHop | None] = {"10.0.0.2": HOP, "10.0.0.3": None}
        self.lookups: list[list[str]] = []
        self.batches: list[list[tuple[bytes, NextHop]]] = []
        self.raw: list[tuple[bytes, str]] = []
        self.order: list[bytes] = []  # every packet, in the order it left
        self.refuse: dict[bytes, OSError] = {}  # packet -> the error the packet socket gives it, once

    def resolve(self, destinations):
        self.lookups.append(list(destinations))
        return {dst: self.hops.get(dst) for dst in destinations}

    def transmit(self, packets, hops):
        """Like sendmmsg: up to the first refused packet; its error if it is the first."""
        sent = next((i for i, p in enumerate(packets) if p in self.refuse), len(packets))
        if sent == 0:
            raise self.refuse.pop(packets[0])
        self.batches.append(list(zip(packets[:sent], hops[:sent], strict=True)))
        self.order += packets[:sent]
        return sent

    def send_raw(self, packet, dst):
        self.raw.append((packet, dst))
        self.order.append(packet)


@pytest.fixture
def kernel():
    return FakeKernel()


@pytest.fixture
def egress(kernel):
    return Egress(kernel.resolve, kernel.transmit, kernel.send_raw)


def test_first_packet_per_destination_goes_the_kernels_way_then_the_packet_socket(kernel, egress):
    first, second = packet(seq=1), packet(seq=2)
    egress.send(first, "10.0.0.2")
    egress.send(second, "10.0.0.2")
    assert kernel.raw == [(first, "10.0.0.2")]
    assert kernel.batches == [[(second, HOP)]]  # not batching: at once
    assert egress.counters == {"packet_socket_packets": 1, "raw_socket_packets": 1}
    assert kernel.lookups == [["10.0.0.2"]]  # learned once


def test_ah_goes_through_the_packet_socket_and_clear_packets_never_do(kernel, egress):
    egress.send(packet(seq=0), "10.0.0.2")  # the destination's check packet
    ah, clear = packet(seq=1, proto=51), packet(seq=2, proto=6)  # clear: a soft association's TCP
    egress.send(ah, "10.0.0.2")
    egress.send(clear, "10.0.0.2")
    assert kernel.batches == [[(ah, HOP)]]
    assert kernel.raw[-1] == (clear, "10.0.0.2")


def test_a_drain_sends_one_batch_in_order(kernel, egress):
    packets = [packet(seq=i) for i in range(10)]
    egress.batching = True
    for p in packets:
        egress.send(p, "10.0.0.2")
    assert kernel.batches == []  # waits for the drain's end
    egress.batching = False
    egress.flush()
    assert kernel.order == packets
    assert len(kernel.batches) == 1 and len(kernel.batches[0]) == 9


def test_a_full_batch_goes_without_waiting(kernel, egress):
    egress.batching = True
    for i in range(BATCH + 2):
        egress.send(packet(seq=i), "10.0.0.2")
    assert [len(b) for b in kernel.batches] == [BATCH]


def test_raw_packets_never_overtake_queued_ones(kernel, egress):
    egress.send(packet(seq=0), "10.0.0.2")  # the destination's check packet
    egress.batching = True
    queued, other = packet(seq=1), packet("10.0.0.3", seq=2)
    egress.send(queued, "10.0.0.2")
    egress.send(other, "10.0.0.3")  # no next hop: raw, after what waits
    egress.flush()
    assert kernel.order[1:] == [queued, other]


def test_no_route_no_neighbour_or_too_big_goes_through_the_raw_socket(kernel, egress):
    egress.send(packet(seq=0), "10.0.0.2")
    egress.send(packet("10.0.0.3"), "10.0.0.3")
    egress.send(packet("10.0.0.3"), "10.0.0.3")
    big = packet(size=1501)
    egress.send(big, "10.0.0.2")
    assert [dst for _, dst in kernel.raw] == ["10.0.0.2", "10.0.0.3", "10.0.0.3", "10.0.0.2"]
    assert kernel.raw[-1][0] == big and kernel.batches == []


def test_a_refused_packet_goes_through_the_raw_socket_and_the_rest_of_the_batch_follows(kernel, egress):
    egress.send(packet(seq=0), "10.0.0.2")
    packets = [packet(seq=i) for i in range(1, 6)]
    kernel.refuse = {packets[2]: OSError(errno.ENETDOWN, "Network is down")}
    egress.batching = True
    for p in packets:
        egress.send(p, "10.0.0.2")
    egress.flush()
    assert kernel.order[1:] == packets
    assert kernel.raw[1] == (packets[2], "10.0.0.2")
    assert egress.counters == {"packet_socket_packets": 4, "raw_socket_packets": 2}
    egress.send(packet(seq=9), "10.0.0.2")  # that next hop is not trusted again before the refresh
    assert kernel.raw[-1][0] == packet(seq=9)


def test_a_full_queue_is_not_held_against_the_next_hop(kernel, egress):
    egress.send(packet(seq=0), "10.0.0.2")
    kernel.refuse = {packet(seq=1): OSError(errno.ENOBUFS, "No buffer space available")}
    egress.send(packet(seq=1), "10.0.0.2")
    egress.send(packet(seq=2), "10.0.0.2")
    assert kernel.raw[1][0] == packet(seq=1)
    assert kernel.batches[-1] == [(packet(seq=2), HOP)]


def test_a_failing_raw_fallback_is_reported(kernel, egress):
    egress.send(packet(seq=0), "10.0.0.2")
    reports = []
    egress.report = lambda topic, packets, text: reports.append((topic, packets, text))

    def refuse_raw(packet, dst):
        raise OSError(errno.EPERM, "Operation not permitted")

    egress._send_raw = refuse_raw
    kernel.refuse = {packet(seq=1): OSError(errno.ENETDOWN, "Network is down")}
    egress.send(packet(seq=1), "10.0.0.2")
    assert reports == [("send", 1, "cannot send to 10.0.0.2: Operation not permitted")]


def test_an_immediate_raw_send_error_is_the_callers(kernel, egress):
    def refuse_raw(packet, dst):
        raise OSError(errno.EPERM, "Operation not permitted")

    egress._send_raw = refuse_raw
    with pytest.raises(OSError):
        egress.send(packet(), "10.0.0.2")


def test_refresh_reads_used_destinations_again_forgets_idle_ones_and_rechecks(kernel, egress):
    egress.send(packet(seq=0), "10.0.0.2")
    egress.send(packet(seq=1), "10.0.0.2")
    egress.refresh()
    assert kernel.lookups[-1] == ["10.0.0.2"]
    new_mac = NextHop(3, bytes.fromhex("020000000099"), 1500)
    kernel.hops["10.0.0.2"] = new_mac  # the peer's MAC changed and the kernel learned it
    lookups = len(kernel.lookups)
    egress.refresh()  # nothing was sent since the last refresh: forgotten, not read again
    assert len(kernel.lookups) == lookups
    egress.send(packet(seq=2), "10.0.0.2")
    assert kernel.lookups[lookups:] == [["10.0.0.2"]] and kernel.raw[-1][0] == packet(seq=2)  # learned
    egress.send(packet(seq=3), "10.0.0.2")
    assert kernel.batches[-1] == [(packet(seq=3), new_mac)]
    egress.refresh()
    egress.send(packet(seq=4), "10.0.0.2")  # the first packet after a refresh: the kernel's way
    assert kernel.raw[-1][0] == packet(seq=4)


def test_a_failing_table_read_means_the_raw_socket(kernel, egress):
    def broken(destinations):
        raise OSError(errno.ETIMEDOUT, "timed out")

    egress._resolve = broken
    egress.send(packet(seq=0), "10.0.0.2")
    egress.send(packet(seq=1), "10.0.0.2")
    egress.refresh()
    egress.send(packet(seq=2), "10.0.0.2")
    assert len(kernel.raw) == 3 and kernel.batches == []
