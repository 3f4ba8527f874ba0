"""Outer IPv4 packets out through a packet socket, in batches: the cheap way past the kernel's IP output.

A raw IPPROTO_RAW `sendto` costs about 6 us of CPU per 1420-byte packet, nearly all of it in the kernel's
IP output path (routing, netfilter, neighbour lookup), and batching raw sends with sendmmsg saves nothing.
An AF_PACKET SOCK_DGRAM socket hands a finished IPv4 packet straight to the device (and its qdisc, so
tcpdump still sees it) for 3.8 us, and sendmmsg batches of 64 bring that to 2.7 us. The packets the driver
sends are complete (addresses, length, checksum), so all the kernel's path would add is the next hop's
MAC: `KernelTables` reads it from the kernel's own routing and neighbour tables over rtnetlink.

`Egress` sends every ESP and AH packet it can that way and everything else through the raw socket (clear
packets of a soft association always: the node's own NAT and firewall rules must see them), which lets the
kernel do what we cannot: no route or a non-unicast one, no usable neighbour entry yet (the kernel
resolves ARP), a packet bigger than the interface MTU, a packet-socket send that fails. Once a second
(`refresh`) the next hops of the destinations in use are read again, and the first packet to each
destination after that goes through the raw socket, so the kernel's neighbour state machine keeps
re-validating the entry (STALE -> DELAY -> PROBE) as it would if all traffic went its way: a peer whose
MAC changed is followed within a second of the kernel learning it.

The packet socket's packets never enter this node's netfilter, so they need no bypass mark; the raw
socket keeps its SO_MARK. Sending the stdlib's way only: rtnetlink with the socket module, sendmmsg
through ctypes (ipsecd.driver.mmsg); no pyroute2 in the node image: the few messages below are all we need.
"""

from __future__ import annotations

import ctypes
import errno
import logging
import os
import socket
import struct
from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property

from ipsecd.driver import mmsg
from ipsecd.driver.ipv4 import IPPROTO_AH, IPPROTO_ESP

log = logging.getLogger("ipsecd.egress")

BATCH = 64  # packets per sendmmsg
MAX_DESTINATIONS = 1024  # more destinations in one second than this and the rest go through the raw socket
ETH_P_IP = 0x0800
SECURED = (IPPROTO_ESP, IPPROTO_AH)  # a clear packet (soft association) keeps the kernel's path and its rules
ARPHRD_ETHER = 1

# -- rtnetlink (linux/netlink.h, linux/rtnetlink.h, linux/neighbour.h, linux/if_link.h) ------------------

NLMSG_ERROR, NLMSG_DONE = 2, 3
NLM_F_REQUEST, NLM_F_DUMP = 0x1, 0x300
RTM_NEWLINK, RTM_GETLINK = 16, 18
RTM_NEWROUTE, RTM_GETROUTE = 24, 26
RTM_NEWNEIGH, RTM_GETNEIGH = 28, 30
RTA_DST, RTA_OIF, RTA_GATEWAY, RTA_MARK = 1, 4, 5, 16
RTN_UNICAST = 1
NDA_DST, NDA_LLADDR = 1, 2
IFLA_MTU = 4
NUD_INCOMPLETE, NUD_REACHABLE, NUD_STALE, NUD_DELAY = 0x01, 0x02, 0x04, 0x08
NUD_PROBE, NUD_FAILED, NUD_NOARP, NUD_PERMANENT = 0x10, 0x20, 0x40, 0x80
NUD_USABLE = NUD_REACHABLE | NUD_STALE | NUD_DELAY | NUD_PROBE | NUD_PERMANENT  # has a MAC worth using

NLMSGHDR = struct.Struct("=IHHII")  # length, type, flags, sequence, port id
RTMSG = struct.Struct("=BBBBBBBBI")  # family, dst_len, src_len, tos, table, protocol, scope, type, flags
NDMSG = struct.Struct("=BxxxiHBB")  # family, ifindex, state, flags, type
IFINFOMSG = struct.Struct("=BxHiII")  # family, type (ARPHRD_*), index, flags, change
RTATTR = struct.Struct("=HH")  # length, type


def _align(length: int) -> int:
    return (length + 3) & ~3


def attribute(kind: int, value: bytes) -> bytes:
    """One rtattr, padded to 4 bytes."""
    length = RTATTR.size + len(value)
    return RTATTR.pack(length, kind) + value + bytes(_align(length) - length)


def message(kind: int, flags: int, seq: int, body: bytes) -> bytes:
    return NLMSGHDR.pack(NLMSGHDR.size + len(body), kind, flags, seq, 0) + body


def route_request(seq: int, dst: str, mark: int) -> bytes:
    """RTM_GETROUTE for one IPv4 destination, looked up with `mark` as the raw socket's SO_MARK would be."""
    body = (RTMSG.pack(socket.AF_INET, 32, 0, 0, 0, 0, 0, 0, 0) + attribute(RTA_DST, socket.inet_aton(dst))
            + attribute(RTA_MARK, struct.pack("=I", mark)))
    return message(RTM_GETROUTE, NLM_F_REQUEST, seq, body)


def dump_request(kind: int, seq: int) -> bytes:
    """A dump of all IPv4 neighbours (RTM_GETNEIGH) or of all links (RTM_GETLINK)."""
    header = NDMSG.pack(socket.AF_INET, 0, 0, 0, 0) if kind == RTM_GETNEIGH else IFINFOMSG.pack(0, 0, 0, 0, 0)
    return message(kind, NLM_F_REQUEST | NLM_F_DUMP, seq, header)


class NetlinkError(OSError):
    pass


def messages(data: bytes) -> list[tuple[int, int, bytes]]:
    """(type, sequence, body) of each netlink message in one datagram; NetlinkError for an error reply.

    An acknowledgment (NLMSG_ERROR with error 0) is left out.
    """
    out, offset = [], 0
    while offset + NLMSGHDR.size <= len(data):
        length, kind, _, seq, _ = NLMSGHDR.unpack_from(data, offset)
        if length < NLMSGHDR.size or offset + length > len(data):
            raise NetlinkError(errno.EBADMSG, "truncated netlink message")
        body = data[offset + NLMSGHDR.size:offset + length]
        if kind == NLMSG_ERROR:
            code = -struct.unpack_from("=i", body)[0] if len(body) >= 4 else errno.EBADMSG
            if code:
                raise NetlinkError(code, os.strerror(code))
        else:
            out.append((kind, seq, body))
        offset += _align(length)
    return out


def attributes(body: bytes, offset: int) -> dict[int, bytes]:
    """The rtattrs from `offset` on (the first of each type)."""
    found: dict[int, bytes] = {}
    while offset + RTATTR.size <= len(body):
        length, kind = RTATTR.unpack_from(body, offset)
        if length < RTATTR.size:
            break
        found.setdefault(kind & 0x3FFF, body[offset + RTATTR.size:offset + length])  # without NLA_F_ flags
        offset += _align(length)
    return found


@dataclass(frozen=True)
class Route:
    """Where the kernel sends a destination: the interface and the neighbour (gateway or the address)."""

    ifindex: int
    neighbour: str


def parse_route(body: bytes, dst: str) -> Route | None:
    """The RTM_NEWROUTE answer for `dst`; None unless it is a unicast route out of an interface."""
    rtm_type = RTMSG.unpack_from(body)[7]
    attrs = attributes(body, RTMSG.size)
    if rtm_type != RTN_UNICAST or len(attrs.get(RTA_OIF, b"")) != 4:
        return None
    gateway = attrs.get(RTA_GATEWAY)
    return Route(struct.unpack("=I", attrs[RTA_OIF])[0], socket.inet_ntoa(gateway) if gateway else dst)


def parse_neighbour(body: bytes) -> tuple[tuple[int, str], int, bytes] | None:
    """((ifindex, address), NUD state, MAC) of an RTM_NEWNEIGH; None if not IPv4 or without an address."""
    family, ifindex, state, _, _ = NDMSG.unpack_from(body)
    attrs = attributes(body, NDMSG.size)
    if family != socket.AF_INET or len(attrs.get(NDA_DST, b"")) != 4:
        return None
    return (ifindex, socket.inet_ntoa(attrs[NDA_DST])), state, attrs.get(NDA_LLADDR, b"")


def parse_link(body: bytes) -> tuple[int, int, int]:
    """(ifindex, ARPHRD type, MTU) of an RTM_NEWLINK."""
    _, hardware, index, _, _ = IFINFOMSG.unpack_from(body)
    mtu = attributes(body, IFINFOMSG.size).get(IFLA_MTU, b"\0\0\0\0")
    return index, hardware, struct.unpack("=I", mtu[:4])[0]


# -- next hops ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class NextHop:
    """An Ethernet next hop, with the sockaddr_ll a packet socket sends to it with."""

    ifindex: int
    mac: bytes
    mtu: int

    @property
    def sockaddr(self) -> bytes:
        """struct sockaddr_ll: family, protocol (network order), ifindex, hatype, pkttype, halen, address."""
        return (struct.pack("=H", socket.AF_PACKET) + struct.pack("!H", ETH_P_IP)
                + struct.pack("=iHBB8s", self.ifindex, 0, 0, len(self.mac), self.mac))

    @cached_property
    def _sockaddr_buffer(self) -> ctypes.Array:
        return ctypes.create_string_buffer(self.sockaddr, len(self.sockaddr))

    @cached_property
    def sockaddr_pointer(self) -> int:
        """Where the sockaddr_ll lives for sendmmsg (as long as this NextHop does)."""
        return ctypes.addressof(self._sockaddr_buffer)


def next_hops(routes: dict[str, Route | None], neighbours: dict[tuple[int, str], tuple[int, bytes]],
              links: dict[int, tuple[int, int]]) -> dict[str, NextHop | None]:
    """Each destination's next hop, or None where the raw socket must go (the kernel knows better).

    >>> routes = {"10.0.0.2": Route(3, "10.0.0.2"), "10.9.9.9": Route(3, "10.0.0.254"), "127.0.0.1": None}
    >>> neighbours = {(3, "10.0.0.2"): (NUD_STALE, bytes(range(6))), (3, "10.0.0.254"): (NUD_FAILED, b"")}
    >>> next_hops(routes, neighbours, {3: (ARPHRD_ETHER, 1500)})
    {'10.0.0.2': NextHop(ifindex=3, mac=b'\\x00\\x01\\x02\\x03\\x04\\x05', mtu=1500), '10.9.9.9': None, \
'127.0.0.1': None}
    """
    found: dict[str, NextHop | None] = {}
    for dst, route in routes.items():
        hop = None
        if route is not None and route.ifindex in links:
            hardware, mtu = links[route.ifindex]
            state, mac = neighbours.get((route.ifindex, route.neighbour), (0, b""))
            if hardware == ARPHRD_ETHER and state & NUD_USABLE and len(mac) == 6:
                hop = NextHop(route.ifindex, mac, mtu)
        found[dst] = hop
    return found


class KernelTables:
    """The kernel's routing, neighbour and link tables, read over rtnetlink (NETLINK_ROUTE)."""

    def __init__(self, mark: int) -> None:
        self.mark = mark
        self._sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, socket.NETLINK_ROUTE)
        self._sock.bind((0, 0))
        self._sock.settimeout(1.0)  # the kernel answers at once; never hang the data plane on it
        self._seq = 0

    def resolve(self, destinations: list[str]) -> dict[str, NextHop | None]:
        routes = {dst: self._route(dst) for dst in destinations}
        if not any(routes.values()):
            return dict.fromkeys(destinations)
        neighbours = {}
        for body in self._request(dump_request(RTM_GETNEIGH, self._next_seq()), dump=True):
            entry = parse_neighbour(body)
            if entry is not None:
                neighbours[entry[0]] = entry[1:]
        links = {}
        for body in self._request(dump_request(RTM_GETLINK, self._next_seq()), dump=True):
            index, hardware, mtu = parse_link(body)
            links[index] = (hardware, mtu)
        return next_hops(routes, neighbours, links)

    def _route(self, dst: str) -> Route | None:
        try:
            answer = self._request(route_request(self._next_seq(), dst, self.mark), dump=False)
        except NetlinkError:  # no route (ENETUNREACH and friends): the raw socket reports it as before
            return None
        return parse_route(answer[0], dst) if answer else None

    def _next_seq(self) -> int:
        self._seq = (self._seq + 1) & 0xFFFFFFFF
        return self._seq

    def _request(self, request: bytes, dump: bool) -> list[bytes]:
        """Send one request; the bodies of its answer (a dump's until NLMSG_DONE)."""
        seq = NLMSGHDR.unpack_from(request)[3]
        self._sock.send(request)
        bodies: list[bytes] = []
        while True:
            for kind, answer_seq, body in messages(self._sock.recv(1 << 16)):
                if answer_seq != seq:
                    continue  # an answer to an earlier request that timed out
                if kind == NLMSG_DONE:
                    return bodies
                if kind in (RTM_NEWROUTE, RTM_NEWNEIGH, RTM_NEWLINK):
                    bodies.append(body)
                if not dump:
                    return bodies

    def close(self) -> None:
        self._sock.close()


# -- the packet socket ----------------------------------------------------------------------------------


class PacketSocket:
    """An AF_PACKET SOCK_DGRAM socket sending IPv4 packets to next hops, up to BATCH per sendmmsg.

    Protocol 0: the socket only sends (ETH_P_IP goes in each destination address), so the kernel
    never queues a copy of the node's traffic to it.
    """

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_PACKET, socket.SOCK_DGRAM, 0)
        self._iovecs = (mmsg.Iovec * BATCH)()
        self._messages = mmsg.messages(BATCH, self._iovecs)
        for i in range(BATCH):
            self._messages[i].hdr.namelen = len(NextHop(0, bytes(6), 0).sockaddr)
        self._iovec_memory = mmsg.writable(self._iovecs)
        self._message_memory = mmsg.writable(self._messages)

    def send(self, packets: list[bytes], hops: list[NextHop]) -> int:
        """Send packets[i] to hops[i] (at most BATCH); how many went, from the first; OSError if none did."""
        joined = b"".join(packets)  # one buffer the iovecs point into, alive until sendmmsg returns
        address = ctypes.cast(ctypes.c_char_p(joined), ctypes.c_void_p).value
        if address is None:
            raise OSError("no buffer address for sendmmsg")
        iovecs, message_memory = self._iovec_memory, self._message_memory
        pack_iovec, pack_pointer = mmsg.IOVEC.pack_into, mmsg.POINTER.pack_into
        for i, packet in enumerate(packets):
            pack_iovec(iovecs, i * mmsg.IOVEC_SIZE, address, len(packet))
            pack_pointer(message_memory, i * mmsg.MMSGHDR_SIZE + mmsg.NAME_AT, hops[i].sockaddr_pointer)
            address += len(packet)
        sent = mmsg.sendmmsg(self.sock.fileno(), ctypes.addressof(self._messages), len(packets), 0)
        if sent < 0:
            raise mmsg.errno_error()
        return sent

    def close(self) -> None:
        self.sock.close()


# -- the component the wire uses ---------------------------------------------------------------------------


class _Destination:
    """A destination's next hop (None: the raw socket) and whether its next packet goes the kernel's way."""

    __slots__ = ("check", "hop")

    def __init__(self, hop: NextHop | None) -> None:
        self.hop = hop
        self.check = True


class Egress:
    """Sends outer IPv4 packets: through the packet socket where a next hop is known, else the raw socket.

    `resolve(destinations)` gives next hops (KernelTables.resolve), `transmit(packets, hops)` sends a batch
    (PacketSocket.send), `send_raw(packet, dst)` is the raw socket. While `batching` (a TUN drain), packets
    wait for `flush()` or a full batch; otherwise each goes at once. A raw send for one destination first
    flushes what waits, so packets leave in the order the driver sent them. Counters go to `counters`
    (the driver's: packet_socket_packets, raw_socket_packets); `report(topic, packets, message)` hears of
    packets lost after they were handed over (the driver's wire_error).
    """

    def __init__(self, resolve: Callable[[list[str]], dict[str, NextHop | None]],
                 transmit: Callable[[list[bytes], list[NextHop]], int],
                 send_raw: Callable[[bytes, str], object]) -> None:
        self._resolve = resolve
        self._transmit = transmit
        self._send_raw = send_raw
        self.counters = {"packet_socket_packets": 0, "raw_socket_packets": 0}
        self.report: Callable[[str, int, str], None] = lambda topic, packets, message: None
        self.batching = False
        self._destinations: dict[str, _Destination] = {}
        self._packets: list[bytes] = []
        self._hops: list[NextHop] = []

    def send(self, packet: bytes, dst: str) -> None:
        """Send or queue one packet; an OSError of an immediate raw send is the caller's (as before)."""
        destination = self._destinations.get(dst) or self._learn(dst)
        hop = destination.hop
        if hop is None or destination.check or len(packet) > hop.mtu or packet[9] not in SECURED:
            destination.check = False
            self.flush()
            self._send_raw(packet, dst)
            self.counters["raw_socket_packets"] += 1
            return
        self._packets.append(packet)
        self._hops.append(hop)
        if not self.batching or len(self._packets) >= BATCH:
            self.flush()

    def flush(self) -> None:
        """Send what waits; a packet the packet socket refuses goes through the raw socket instead."""
        packets, hops = self._packets, self._hops
        if not packets:
            return
        self._packets, self._hops = [], []
        start = 0
        while start < len(packets):
            try:
                sent = self._transmit(packets[start:], hops[start:])
            except OSError as e:
                self._fall_back(packets[start], e)
                start += 1
            else:
                self.counters["packet_socket_packets"] += sent
                start += sent

    def refresh(self) -> None:
        """Every second: forget destinations nobody sent to, read the others' next hops again.

        The first packet to each after this goes through the raw socket (`check`), which keeps the
        kernel's neighbour entry alive and re-validated.
        """
        used = [dst for dst, d in self._destinations.items() if not d.check]
        try:
            hops = self._resolve(used) if used else {}
        except OSError as e:
            log.warning("cannot read the kernel's routes and neighbours (%s): packets go through the raw "
                        "socket until the next try", e)
            hops = dict.fromkeys(used)
        self._destinations = {dst: _Destination(hop) for dst, hop in hops.items()}

    def _learn(self, dst: str) -> _Destination:
        if len(self._destinations) >= MAX_DESTINATIONS:
            return _Destination(None)  # not kept: this destination's packets take the raw socket
        try:
            hop = self._resolve([dst]).get(dst)
        except OSError as e:
            log.warning("cannot read the kernel's next hop to %s (%s): the raw socket sends", dst, e)
            hop = None
        destination = self._destinations[dst] = _Destination(hop)
        return destination

    def _fall_back(self, packet: bytes, error: OSError) -> None:
        dst = socket.inet_ntoa(packet[16:20])
        if error.errno != errno.ENOBUFS:  # not just a full queue: this next hop is unusable until refreshed
            log.info("packet socket refused a packet to %s (%s): raw socket until the next refresh",
                     dst, error.strerror)
            destination = self._destinations.get(dst)
            if destination is not None:
                destination.hop = None
        try:
            self._send_raw(packet, dst)
        except OSError as e:
            self.report("send", 1, f"cannot send to {dst}: {e.strerror}")
            return
        self.counters["raw_socket_packets"] += 1
