"""Super-packet I/O on the TUN (virtio-net header, TSO4): one read or write carries a whole TCP burst.

Per-packet syscalls, not crypto, bound a userspace data plane (shared/research/dataplane.md §4): with
`IFF_VNET_HDR` and TSO4 the kernel hands the driver a TCP super-packet of up to 64 KB in one `read()`,
and takes a run of decrypted segments of one flow back in one `write()`. The driver itself still sees
ordinary packets: `segments()` cuts a read into the packets the kernel would have put on a wire (the SPD,
the SAD and the counters apply to each), and `Coalescer` merges consecutive delivered segments of one TCP
flow the way Linux GRO does, so that nothing but the number of syscalls changes.

Every frame read or written starts with a 10-byte virtio-net header (`<BBHHHH`: flags, GSO type,
header length, segment size, checksum start, checksum offset).

>>> from scapy.layers.inet import IP, TCP
>>> big = IP(src="10.0.0.1", dst="10.0.0.2") / TCP(sport=1, dport=2, flags="PA", seq=1000) / (b"x" * 3000)
>>> raw = bytearray(bytes(big))
>>> frame = VNET_HEADER.pack(NEEDS_CSUM, GSO_TCPV4, 40, 1400, 20, 16) + bytes(raw)
>>> [(IP(p).len, IP(p)[TCP].seq, str(IP(p)[TCP].flags)) for p in segments(frame)]
[(1440, 1000, 'A'), (1440, 2400, 'A'), (240, 3800, 'PA')]
>>> def recomputed(packet):
...     p = IP(packet)
...     del p.chksum, p[TCP].chksum
...     return bytes(p)
>>> all(recomputed(p) == p for p in segments(frame))
True
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from functools import lru_cache

from ipsecd.driver.ipv4 import fold_checksum, l4_checksum_at, pseudo_header_sum, word_sum, word_sums

VNET_HEADER = struct.Struct("<BBHHHH")  # struct virtio_net_hdr, host (little-endian) byte order
VNET_HEADER_SIZE = VNET_HEADER.size
NEEDS_CSUM = 1  # VIRTIO_NET_HDR_F_NEEDS_CSUM: the checksum at csum_start + csum_offset is only partial
GSO_NONE, GSO_TCPV4 = 0, 1
GSO_ECN = 0x80
PLAIN_HEADER = bytes(VNET_HEADER_SIZE)  # a single, complete packet
MAX_FRAME = 65535  # largest IPv4 packet: a coalesced run never grows beyond it

TCP_FIN, TCP_SYN, TCP_RST, TCP_PSH, TCP_ACK, TCP_URG, TCP_ECE, TCP_CWR = 1, 2, 4, 8, 16, 32, 64, 128


#: Below this many bytes a big-integer sum beats numpy's fixed cost per call (1-2 us, measured).
def complete_checksum(packet: bytes, start: int, offset: int) -> bytes:
    """Finish a CHECKSUM_PARTIAL packet: the field holds the pseudo-header sum, the rest is ours to add."""
    checksum = fold_checksum(word_sum(packet[start:]))
    if packet[9] == 17 and checksum == 0:
        checksum = 0xFFFF  # RFC 768: a computed 0 is sent as all ones
    at = start + offset
    return packet[:at] + checksum.to_bytes(2, "big") + packet[at + 2:]


def partial_frame(packet: bytes) -> bytes:
    """A frame for one TCP or UDP packet whose checksum no longer matches its addresses (a NAT rewrote
    them, RFC 3948 §3.1.2): the field gets the pseudo-header sum and NEEDS_CSUM, as in a GSO write, so
    the kernel trusts it on local delivery and completes it where it forwards. Anything else (a fragment,
    UDP without checksum, another protocol, truncated) is framed as it is.

    >>> from scapy.layers.inet import IP, TCP
    >>> natted = bytearray(bytes(IP(src="192.168.1.10", dst="203.0.113.2") / TCP(dport=80)))
    >>> natted[12:16] = bytes([203, 0, 113, 1])  # the NAT's address: the TCP checksum is now wrong
    >>> frame = partial_frame(bytes(natted))
    >>> completed = IP(complete_checksum(frame[10:], 20, 16))  # what the kernel does where it must
    >>> VNET_HEADER.unpack_from(frame), completed[TCP].chksum == IP(bytes(
    ...     IP(src="203.0.113.1", dst="203.0.113.2") / TCP(dport=80)))[TCP].chksum
    ((1, 0, 0, 0, 20, 16), True)
    """
    at = l4_checksum_at(packet)
    if at is None:
        return PLAIN_HEADER + packet
    ihl = (packet[0] & 0x0F) * 4
    return b"".join((VNET_HEADER.pack(NEEDS_CSUM, GSO_NONE, 0, 0, ihl, at - ihl), packet[:at],
                     _partial_field(pseudo_header_sum(packet)), packet[at + 2:]))


def _partial_field(pseudo: int) -> bytes:
    """What a CHECKSUM_PARTIAL packet's checksum field holds: the folded pseudo-header sum, not inverted."""
    return (pseudo % 0xFFFF or 0xFFFF).to_bytes(2, "big")


def segments(frame: bytes) -> list[bytes]:
    """The IPv4 packets in one frame read from a TUN with a virtio-net header, checksums complete.

    A TSO4 super-packet is cut into `gso_size` segments as the kernel would (sequence numbers, IP
    identification +1, FIN/PSH on the last segment only, CWR on the first only); anything else is one
    packet, its partial checksum (if any) completed. A frame too short or of another GSO type is returned
    as is, for the driver to count as malformed.
    """
    if len(frame) < VNET_HEADER_SIZE + 20:
        return [frame[VNET_HEADER_SIZE:]]
    flags, gso_type, _, gso_size, csum_start, csum_offset = VNET_HEADER.unpack_from(frame)
    packet = frame[VNET_HEADER_SIZE:]
    if gso_type & ~GSO_ECN == GSO_TCPV4 and gso_size:
        return segment_tcp4(packet, gso_size)
    if flags & NEEDS_CSUM and csum_start + csum_offset + 2 <= len(packet):
        return [complete_checksum(packet, csum_start, csum_offset)]
    return [packet]


@lru_cache(maxsize=64)
def _segment_header(ip_length: int, tcp_length: int) -> struct.Struct:
    """IPv4 + TCP header: what varies per segment as numbers, the runs of shared bytes as strings."""
    # version/TOS, total length, identification, fragment/TTL/protocol, checksum, addresses (and options),
    # ports, sequence number, acknowledgment and data offset, flags, window, checksum, urgent and options
    return struct.Struct(f"!2sHH4sH{ip_length - 12}s4sI5sB2sH{tcp_length - 18}s")


def segment_tcp4(packet: bytes, mss: int) -> list[bytes]:
    """Cut a TCP/IPv4 super-packet into segments of `mss` payload bytes with complete checksums.

    Both checksums start from the sum of the fields all segments share; per segment only the IP length
    and identification, the TCP length, sequence number, flags and payload are added (RFC 1071 sums
    are sums of 16-bit words, in any order). The payload sums of all segments come in one numpy step.
    """
    ihl = (packet[0] & 0x0F) * 4
    if ihl < 20 or len(packet) < ihl + 20 or packet[9] != 6:
        return [packet]  # malformed, or not TCP: for the driver to count
    header_end = ihl + (packet[ihl + 12] >> 4) * 4
    if header_end < ihl + 20 or len(packet) < header_end:
        return [packet]
    version_tos, ident, fragment_protocol = packet[:2], int.from_bytes(packet[4:6], "big"), packet[6:10]
    addresses, ports = packet[12:ihl], packet[ihl:ihl + 4]
    seq = int.from_bytes(packet[ihl + 4:ihl + 8], "big")
    ack_offset, flags = packet[ihl + 8:ihl + 13], packet[ihl + 13]  # acknowledgment, data offset; flags
    window, urgent_options = packet[ihl + 14:ihl + 16], packet[ihl + 18:header_end]
    ip_shared = int.from_bytes(version_tos + fragment_protocol + addresses, "big")
    tcp_shared = (int.from_bytes(packet[12:20], "big") + 6 - ihl  # pseudo-header (its length: total - ihl)
                  + int.from_bytes(ports + packet[ihl + 8:ihl + 12] + window + urgent_options, "big")
                  + (packet[ihl + 12] << 8))
    payload_sums = word_sums(packet[header_end:], mss)
    segment_flags = [flags & ~(TCP_FIN | TCP_PSH | TCP_CWR)] * len(payload_sums)
    segment_flags[-1] = flags & ~TCP_CWR
    segment_flags[0] |= flags & TCP_CWR
    pack = _segment_header(ihl, header_end - ihl).pack
    total = header_end + mss
    out = []
    for index, (payload_sum, tcp_flags) in enumerate(zip(payload_sums, segment_flags, strict=True)):
        start = header_end + index * mss
        chunk = packet[start:start + mss]
        if len(chunk) < mss:
            total = header_end + len(chunk)
        ip_id, segment_seq = (ident + index) & 0xFFFF, (seq + index * mss) & 0xFFFFFFFF
        ip_checksum = fold_checksum(ip_shared + total + ip_id)
        # seq: 2**16 = 1 modulo 0xFFFF
        tcp_checksum = fold_checksum(tcp_shared + total + segment_seq + tcp_flags + payload_sum)
        out.append(pack(version_tos, total, ip_id, fragment_protocol, ip_checksum, addresses, ports,
                        segment_seq, ack_offset, tcp_flags, window, tcp_checksum, urgent_options) + chunk)
    return out


class Coalescer:
    """Merges consecutive TCP segments of one flow into one GSO_TCPV4 TUN write, as Linux GRO would.

    `add(packet)` per delivered packet, `flush()` after each batch; `write(frame)` gets each frame, its
    virtio-net header included. Segments merge when they continue the run exactly: same IPv4 header
    fields (no options, no fragment), the next IP identification, same ports, acknowledgment, window and
    TCP options, the next sequence number, plain ACK flags (PSH ends a run), no segment longer than the
    first. (GRO also merges DF segments of one fixed identification; re-segmented from a TUN write they
    would come out incrementing, so those stay apart here.)
    """

    def __init__(self, write: Callable[[bytes], object]) -> None:
        self._write = write
        self._run: list[bytes] = []
        self._key: tuple | None = None  # what every segment of the run shares
        self._header = 0  # IPv4 + TCP header length of the run's segments
        self._flags = 0  # TCP flags of the merged segment
        self._next_seq = 0
        self._next_ident = 0
        self._mss = 0
        self._length = 0
        self._open = False  # a further segment may join
        self._stale = False  # the run's first packet has a checksum that does not cover its addresses

    def add(self, packet: bytes, stale_checksum: bool = False) -> None:
        """One delivered packet; `stale_checksum`: its TCP/UDP checksum does not cover its addresses (see
        `partial_frame`), which matters only if it is written alone."""
        key, ident, seq, payload = _tcp_run_key(packet)
        if self._run:
            if (self._open and key == self._key and seq == self._next_seq and ident == self._next_ident
                    and payload <= self._mss and self._length + payload <= MAX_FRAME):
                self._run.append(packet[self._header:])
                self._flags |= packet[33]  # PSH of the last segment goes on the merged one (as GRO does)
                self._length += payload
                self._next_seq = (seq + payload) & 0xFFFFFFFF
                self._next_ident = (ident + 1) & 0xFFFF
                self._open = payload == self._mss and not packet[33] & TCP_PSH
                return
            self.flush()
        if key is None:
            self._write(partial_frame(packet) if stale_checksum else PLAIN_HEADER + packet)
            return
        self._run, self._key, self._mss, self._length = [packet], key, payload, len(packet)
        self._stale = stale_checksum
        self._header, self._flags = len(packet) - payload, packet[33]
        self._next_seq, self._next_ident = (seq + payload) & 0xFFFFFFFF, (ident + 1) & 0xFFFF
        self._open = not packet[33] & TCP_PSH

    def flush(self) -> None:
        """Write the run collected so far: one plain packet, or one GSO super-packet."""
        run = self._run
        if not run:
            return
        self._run = []
        if len(run) == 1:
            self._write(partial_frame(run[0]) if self._stale else PLAIN_HEADER + run[0])
            return
        first, total = run[0], self._length
        ip_head = first[:2] + total.to_bytes(2, "big") + first[4:10]
        ip_checksum = fold_checksum(int.from_bytes(ip_head + first[12:20], "big")).to_bytes(2, "big")
        # NEEDS_CSUM: the TCP checksum field holds the pseudo-header sum, not inverted; the kernel
        # completes it when it has to (forwarding), local delivery trusts it (ESP authenticated it)
        pseudo = _partial_field(int.from_bytes(first[12:20], "big") + 6 + total - 20)
        vnet = VNET_HEADER.pack(NEEDS_CSUM, GSO_TCPV4, self._header, self._mss, 20, 16)
        self._write(b"".join((vnet, ip_head, ip_checksum, first[12:33], bytes((self._flags,)),
                              first[34:36], pseudo, first[38:], *run[1:])))


#: IPv4 (no options) + TCP up to the window: version/IHL, TOS, total length, identification, fragment,
#: TTL, protocol, (checksum), addresses and ports, sequence number, acknowledgment and data offset, flags,
#: window
_RUN_FIELDS = struct.Struct("!BBHHHBB2x12sI5sBH")


def _tcp_run_key(packet: bytes) -> tuple[tuple | None, int, int, int]:
    """(what a run's segments share, IP identification, sequence number, payload length).

    The key is None for a packet that cannot join a run: only TCP/IPv4 without IP options, unfragmented,
    with the ACK flag alone (PSH allowed: it closes the run), carrying data can.
    """
    if len(packet) < 40:
        return None, 0, 0, 0
    version_ihl, tos, total, ident, fragment, ttl, protocol, flow, seq, ack_offset, flags, window = \
        _RUN_FIELDS.unpack_from(packet)
    if version_ihl != 0x45 or protocol != 6 or fragment & 0x3FFF or flags & ~TCP_PSH != TCP_ACK:
        return None, 0, 0, 0
    header = 20 + (ack_offset[4] >> 4) * 4
    payload = total - header
    if payload <= 0 or total != len(packet) or header < 40:
        return None, 0, 0, 0
    # TOS, DF, TTL, addresses, ports, acknowledgment, data offset, window, TCP options
    return (tos, fragment, ttl, flow, ack_offset, window, packet[40:header]), ident, seq, payload


SOL_UDP = 17
UDP_SEGMENT = 103  # send: the kernel cuts the buffer into datagrams of this size
UDP_GRO = 104  # receive: consecutive datagrams of one flow arrive as one buffer, this size each
UDP_MAX_SEGMENTS = 64
UDP_MAX_PAYLOAD = 65507


class GsoSender:
    """Collects the ESP-in-UDP datagrams of a drain and sends each run to one peer with UDP_SEGMENT.

    A run is datagrams of one size and TOS to one address (the last may be shorter), at most 64 of them:
    one `sendmsg` instead of one `sendto` each; the wire carries the same datagrams. `send(buffer, size,
    addr, tos)` does the sending; when it raises OSError the run is lost, counted in `lost`, the error kept
    in `error` for the caller to report.
    """

    def __init__(self, send: Callable[[bytes, int, tuple[str, int], int], object]) -> None:
        self._send = send
        self._run: list[bytes] = []
        self._addr: tuple[str, int] | None = None
        self._tos = 0
        self._size = 0
        self._length = 0
        self.lost = 0
        self.error: OSError | None = None

    def add(self, payload: bytes, addr: tuple[str, int], tos: int = 0) -> None:
        run = self._run
        if run and (addr != self._addr or tos != self._tos or len(payload) > self._size
                    or len(run) == UDP_MAX_SEGMENTS or self._length + len(payload) > UDP_MAX_PAYLOAD
                    or len(run[-1]) < self._size):
            self.flush()
        if not self._run:
            self._addr, self._tos, self._size, self._length = addr, tos, len(payload), 0
        self._run.append(payload)
        self._length += len(payload)

    def flush(self) -> None:
        run, addr = self._run, self._addr
        if not run or addr is None:  # a run always has its address
            return
        self._run = []
        try:
            self._send(b"".join(run), self._size, addr, self._tos)
        except OSError as e:
            self.lost += len(run)
            self.error = e


def split_gro(buffer: bytes, size: int) -> list[bytes]:
    """The datagrams in one UDP_GRO buffer (all `size` bytes but the last).

    >>> split_gro(b"aaabbbc", 3)
    [b'aaa', b'bbb', b'c']
    """
    if not size or len(buffer) <= size:
        return [buffer]
    return [buffer[i:i + size] for i in range(0, len(buffer), size)]
