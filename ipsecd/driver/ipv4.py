"""IPv4 for the driver: headers (build, parse, rewrite), ECN at a tunnel's exit, and Internet checksums.

One place for the RFC 791/1071/1624 arithmetic that ESP, AH, the driver and the TUN offload share.
The one's complement sum of 16-bit words is taken as an integer modulo 0xFFFF (2**16 = 1 mod 0xFFFF): one
C-level operation instead of a Python loop, numpy from 1 KB (imported at the first such sum: an idle ipsecd
never loads its 16 MB and 0.1 s of CPU).
"""
from __future__ import annotations

import functools
import ipaddress
import socket
import struct
from types import ModuleType

from ipsecd.driver.errors import BadPacket, CongestionDrop

IPPROTO_IPIP = 4
IPPROTO_UDP = 17
IPPROTO_ESP = 50
IPPROTO_AH = 51
IPPROTO_NONE = 59  # RFC 4303 §2.6: dummy packet (traffic flow confidentiality), discarded
_IP = struct.Struct("!BBHHHBBH4s4s")
_unpack_addresses = struct.Struct("!4H").unpack
_pack_ip, _unpack_ip = _IP.pack, _IP.unpack_from
ECN_NOT_ECT, ECN_ECT1, ECN_ECT0, ECN_CE = 0, 1, 2, 3  # the low two bits of the TOS byte (RFC 3168)
#: Below this many bytes a big-integer sum beats numpy's fixed cost per call (1-2 us, measured).
NUMPY_FROM = 1024


# -- headers --

@functools.lru_cache(maxsize=4096)
def ip_to_bytes(address: str) -> bytes:
    """Dotted IPv4 address -> 4 bytes (ValueError names the address); cached for per-packet use."""
    return ipaddress.IPv4Address(address).packed


def ipv4_header(src: bytes, dst: bytes, protocol: int, payload_length: int, tos: int = 0,
                ident: int = 0, flags_fragment: int = 0, ttl: int = 64) -> bytes:
    """A 20-byte IPv4 header (no options) with its checksum."""
    return HeaderTemplate(src, dst, ttl).build(protocol, payload_length, tos, ident, flags_fragment)


class HeaderTemplate:
    """IPv4 headers src -> dst with a fixed TTL; the addresses' checksum share is precomputed."""

    __slots__ = ("_dst", "_partial", "_src", "_ttl")

    def __init__(self, src: bytes, dst: bytes, ttl: int = 64):
        self._src, self._dst, self._ttl = src, dst, ttl
        self._partial = int.from_bytes(src + dst, "big") % 0xFFFF + 0x4500 + (ttl << 8)

    def build(self, protocol: int, payload_length: int, tos: int = 0, ident: int = 0,
              flags_fragment: int = 0) -> bytes:
        total = 20 + payload_length
        rest = (self._partial + tos + total + ident + flags_fragment + protocol) % 0xFFFF
        return _pack_ip(0x45, tos, total, ident, flags_fragment, self._ttl, protocol,
                        0xFFFF - rest if rest else 0, self._src, self._dst)


def ipv4_fields(packet: bytes) -> tuple[int, int, int, int, int, int, int, int, bytes, bytes]:
    """(version/IHL, TOS, total length, ident, flags/fragment, TTL, protocol, checksum, src, dst) of
    a complete, unfragmented IPv4 packet, or BadPacket.  Header length: ``(fields[0] & 0x0F) * 4``."""
    if len(packet) < 20:
        raise BadPacket(f"{len(packet)} bytes is shorter than an IPv4 header")
    fields = _unpack_ip(packet)
    ver_ihl, total = fields[0], fields[2]
    ihl = (ver_ihl & 0x0F) * 4
    if ver_ihl >> 4 != 4 or ihl < 20 or total < ihl or total > len(packet):
        raise BadPacket(f"bad IPv4 header (version/IHL {ver_ihl:#04x}, total length {total}, "
                        f"{len(packet)} bytes)")
    if fields[4] & 0x3FFF:
        raise BadPacket("IPv4 fragment (the kernel reassembles before delivery)")
    return fields


def rewritten_ipv4_header(fields: tuple, protocol: int, total_length: int) -> bytes:
    """The fixed 20 bytes of the header ``fields`` (from ``ipv4_fields``) with a new protocol and
    total length; the checksum is updated from the old one, which the kernel has already verified or
    set.  RFC 1624 eqn. 3, HC' = ~(~HC + ~m + m'), with the one's complement sum taken
    modulo 0xFFFF as in ``ipv4_checksum`` (the protocol shares its 16-bit word with the TTL)."""
    ver_ihl, tos, old_total, ident, frag, ttl, old_protocol, checksum, src, dst = fields
    rest = ((checksum ^ 0xFFFF) + (old_total ^ 0xFFFF) + total_length + (old_protocol ^ 0xFFFF)
            + protocol) % 0xFFFF
    return _pack_ip(ver_ihl, tos, total_length, ident, frag, ttl, protocol,
                    0xFFFF - rest if rest else 0, src, dst)


def ecn_decapsulated(inner: bytes, outer_tos: int) -> bytes:
    """The inner IPv4 packet of a tunnel with the outer header's ECN field combined into its own, as a
    tunnel egress must (RFC 4301 §5.1.2.1, RFC 6040 §4.2): CE from a congested router on the way is kept
    (or the packet dropped, CongestionDrop, if it is not ECN-capable), ECT(1) over ECT(0) becomes ECT(1);
    anything else leaves the packet as it is. The header checksum is updated (RFC 1624).

    >>> inner = ipv4_header(bytes(4), bytes(4), 6, 0, tos=0x28 | ECN_ECT0)
    >>> marked = ecn_decapsulated(inner, ECN_CE)
    >>> hex(marked[1]), ipv4_checksum(marked)
    ('0x2b', 0)
    >>> ecn_decapsulated(inner, ECN_ECT0) is inner
    True
    """
    ecn = inner[1] & 3
    outer = outer_tos & 3
    if outer == ECN_CE and ecn != ECN_CE:
        if ecn == ECN_NOT_ECT:
            raise CongestionDrop("outer header marked CE, inner packet not ECN-capable (RFC 6040 §4.2)")
        changed = ECN_CE
    elif outer == ECN_ECT1 and ecn == ECN_ECT0:
        changed = ECN_ECT1
    else:
        return inner
    tos = inner[1] & 0xFC | changed
    rest = ((int.from_bytes(inner[10:12], "big") ^ 0xFFFF) + (inner[1] ^ 0xFFFF) + tos) % 0xFFFF
    return b"".join((inner[:1], bytes((tos,)), inner[2:10], (0xFFFF - rest if rest else 0).to_bytes(2, "big"),
                     inner[12:]))


def ntoa(address: int) -> str:
    return socket.inet_ntoa(address.to_bytes(4, "big"))


# -- checksums --

@functools.cache
def _numpy() -> ModuleType:
    """numpy, on first use: only sums of 1 KB and more need it (TUN super-packets, big NAT-T packets)."""
    import numpy

    return numpy


def fold_checksum(value: int) -> int:
    """The one's complement checksum of data whose 16-bit word sum is congruent to `value` modulo 0xFFFF.

    The one's complement sum of 16-bit words is the integer modulo 0xFFFF (2**16 = 1 mod 0xFFFF).
    """
    rest = value % 0xFFFF
    return 0xFFFF - rest if rest else 0


def word_sum(data: bytes | bytearray) -> int:
    """A value congruent modulo 0xFFFF to the RFC 1071 sum of `data` (at most 64 KB), an odd end padded."""
    if len(data) < NUMPY_FROM:
        value = int.from_bytes(data, "big")
        return value << 8 if len(data) & 1 else value
    # Little-endian words: no byte swapping; a swap is a rotation by 8 bits, times 256 modulo 0xFFFF
    np = _numpy()
    words = int(np.add.reduce(np.frombuffer(data, "<u2", len(data) // 2), dtype=np.uint32))
    return (words + (data[-1] if len(data) & 1 else 0)) << 8


def word_sums(data: bytes, size: int) -> list[int]:
    """`word_sum` of each `size`-byte piece of `data` (the last may be shorter), all in one step."""
    if len(data) < NUMPY_FROM:
        return [word_sum(data[start:start + size]) for start in range(0, max(len(data), 1), size)]
    count = -(-len(data) // size)
    np = _numpy()
    rows = np.frombuffer(data + bytes(count * size - len(data)), np.uint8).reshape(count, size)
    if size & 1:
        rows = np.concatenate((rows, np.zeros((count, 1), np.uint8)), axis=1)  # RFC 1071: pad each piece
    sums = np.add.reduce(rows.view("<u2"), axis=1, dtype=np.uint32)  # < 2**31: at most 32768 words each
    return (sums.astype(np.uint64) << 8).tolist()


def ipv4_checksum(header: bytes) -> int:
    """RFC 791 header checksum of ``header`` (its checksum field included as it is).

    The one's complement sum of 16-bit words is the big integer modulo 0xFFFF
    (2**16 = 1 mod 0xFFFF): one C-level operation instead of a Python loop.
    """
    rest = int.from_bytes(header, "big") % 0xFFFF
    return 0xFFFF - rest if rest else 0


def internet_checksum(data: bytes | bytearray, words: int = 0) -> int:
    """RFC 1071 checksum of `data` and `words` (the sum of further 16-bit words, e.g. a pseudo-header).

    The one's complement sum of 16-bit words is the integer modulo 0xFFFF (ipsecd.driver.offload.word_sum: a
    big integer for short data, numpy from 1 KB).

    >>> hex(internet_checksum(bytes.fromhex("4500003c1c46400040060000ac100a63ac100a0c")))
    '0xb1e6'
    >>> hex(internet_checksum(bytes.fromhex("4500003c1c4640004006"), 0xac10 + 0x0a63 + 0xac10 + 0x0a0c))
    '0xb1e6'
    """
    value = word_sum(data) + words
    rest = value % 0xFFFF
    return 0xFFFF - rest if rest else (0 if value else 0xFFFF)


def l4_checksum_at(packet: bytes) -> int | None:
    """Where the TCP or UDP checksum of an IPv4 packet is, if it can be redone for the packet's
    addresses; None for another protocol, a fragment, a truncated packet or UDP without a checksum.

    >>> l4_checksum_at(ipv4_header(bytes(4), bytes(4), 6, 20) + bytes(20))
    36
    """
    ihl = (packet[0] & 0x0F) * 4
    protocol = packet[9]
    at = ihl + (16 if protocol == 6 else 6)
    if (protocol not in (6, IPPROTO_UDP) or packet[6] & 0x3F or packet[7] or len(packet) < at + 2
            or (protocol == IPPROTO_UDP and packet[at:at + 2] == b"\x00\x00")):
        return None
    return at


def pseudo_header_sum(packet: bytes) -> int:
    """The sum of the TCP/UDP pseudo-header's 16-bit words (addresses, protocol, the length after the IP
    header), unfolded."""
    return int.from_bytes(packet[12:20], "big") + packet[9] + len(packet) - (packet[0] & 0x0F) * 4


def fix_l4_checksum(packet: bytes) -> bytes:
    """Recompute the TCP/UDP checksum of an IPv4 packet over its (possibly NAT-rewritten) addresses.

    Safe because ESP already proved the payload authentic (RFC 3948 §3.1.2 allows the receiver to
    skip or redo the check). UDP with checksum 0 stays 0.

    >>> from scapy.layers.inet import IP, TCP
    >>> p = bytearray(bytes(IP(src="192.168.1.10", dst="203.0.113.2") / TCP(dport=80)))
    >>> p[12:16] = bytes([203, 0, 113, 1])  # the NAT's address
    >>> fixed = IP(fix_l4_checksum(bytes(p)))
    >>> expected = IP(bytes(IP(src="203.0.113.1", dst="203.0.113.2") / TCP(dport=80)))[TCP].chksum
    >>> fixed[TCP].chksum == expected
    True
    """
    offset = l4_checksum_at(packet)
    if offset is None:
        return packet  # not TCP/UDP with a checksum, or a fragment: nothing we can recompute here
    # No copies: the pseudo-header's words, less the old checksum word, added to the segment's sum
    checksum = internet_checksum(packet[(packet[0] & 0x0F) * 4:],
                                 pseudo_header_sum(packet) - int.from_bytes(packet[offset:offset + 2], "big"))
    if packet[9] == 17 and checksum == 0:
        checksum = 0xFFFF
    return packet[:offset] + checksum.to_bytes(2, "big") + packet[offset + 2:]


def nat_checksum_fixup(packet: bytes, original_src: bytes, original_dst: bytes) -> bytes:
    """RFC 3948 §3.1.2 (transport mode through a NAT): update the TCP/UDP checksum, which
    the peer computed over its original addresses (NAT-OA, RFC 3947 §5.2), to the
    addresses now in ``packet``'s IPv4 header.  Incremental, RFC 1624 eqn. 3.
    """
    offset = l4_checksum_at(packet)
    if offset is None or packet[12:20] == original_src + original_dst:
        return packet
    checksum = int.from_bytes(packet[offset:offset + 2], "big")
    old, new = _unpack_addresses(original_src + original_dst), _unpack_addresses(packet[12:20])
    s = (~checksum & 0xFFFF) + 4 * 0xFFFF - sum(old) + sum(new)
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    fixed = ~s & 0xFFFF
    if fixed == 0 and packet[9] == IPPROTO_UDP:
        fixed = 0xFFFF  # RFC 768: a computed 0 is sent as all ones
    return packet[:offset] + fixed.to_bytes(2, "big") + packet[offset + 2:]
