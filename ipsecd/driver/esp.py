"""ESP wire format (RFC 4303, RFC 4106 for AES-GCM) and UDP encapsulation (RFC 3948).

Bytes in, bytes out: this module knows SPI, sequence number, IV, padding, the
trailer and the ICV, nothing about SAs, lifetimes or replay (``sad.py``).  It
also holds the small IPv4 helpers and the error classes shared with ``ah.py``.

An ESP packet (RFC 4303 §2)::

    SPI(4) | Seq(4) | IV | encrypt(payload | padding | pad length(1) | next header(1)) | ICV

Speed (see shared/research/dataplane.md): one pre-keyed cipher and HMAC per SA;
CBC keeps one streaming encryptor and feeds it a zero block before each packet,
so E_K(previous ciphertext block) becomes the packet's unpredictable explicit IV
(RFC 3602 §3 asks for an unpredictable IV); CBC decryption feeds IV | ciphertext to one
running CBC decryptor and drops the first output block: no new context per packet.

>>> from ipsecd.algorithms import encryption, integrity
>>> t = transform(encryption("aes-gcm-128"), bytes(20), None, b"")
>>> wire = t.seal(b"\\x00\\x00\\x01\\x00\\x00\\x00\\x00\\x01", b"hello", 17)
>>> t.open(wire)
(17, b'hello')
"""
from __future__ import annotations

import functools
import hmac
import ipaddress
import os
import struct

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hmac as crypto_hmac
from cryptography.hazmat.primitives.ciphers import Cipher, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from ipsecd.algorithms import Encryption, Integrity

IPPROTO_IPIP = 4
IPPROTO_UDP = 17
IPPROTO_ESP = 50
IPPROTO_AH = 51
IPPROTO_NONE = 59  # RFC 4303 §2.6: dummy packet (traffic flow confidentiality), discarded
ESP_HEADER = 8  # SPI + sequence number
UDP_HEADER = 8
NAT_T_PORT = 4500
NON_ESP_MARKER = b"\x00\x00\x00\x00"  # RFC 3948 §2.2: IKE on port 4500
NAT_KEEPALIVE = b"\xff"  # RFC 3948 §2.3
ISAKMP_HEADER = 28

_PAD = bytes(range(1, 256))  # RFC 4303 §2.4 default padding: 1, 2, 3, ...
_IP = struct.Struct("!BBHHHBBH4s4s")
_pack_ip, _unpack_ip = _IP.pack, _IP.unpack_from
_unpack_addresses = struct.Struct("!4H").unpack
_PAD_TAILS = tuple(_PAD[:n] + bytes((n,)) for n in range(256))  # padding + pad length, as received


# -- errors: each names the counter (ipsecd.counters) the drop is counted under --

class IPsecError(Exception):
    """A packet was dropped; ``counter`` is the counters.py key it is counted under."""

    counter: str | None = "malformed_packets"


class BadPacket(IPsecError):
    """Malformed: truncated, wrong lengths, unsupported header, wrong SPI for this SA."""


class UnknownSPI(IPsecError):
    """No SA for this SPI/destination/protocol (RFC 4301 §5.2 'invalid SPI')."""

    counter = "bad_spi_packets"


class AuthenticationFailed(IPsecError):
    """ICV (HMAC or AEAD tag) did not verify (RFC 4303 §3.4.4): a modified packet."""

    counter = "packets_not_authenticated"


class DecryptionFailed(IPsecError):
    """Decrypted payload is not a valid ESP payload (bad padding or pad length)."""

    counter = "packets_not_decrypted"


class Replayed(IPsecError):
    """Duplicate or too old for the anti-replay window (RFC 4303 §3.4.3)."""

    counter = "replayed_packets"


class SAExpired(IPsecError):
    """Outbound SA unusable: hard lifetime reached or sequence numbers exhausted."""

    counter = None


class CongestionDrop(IPsecError):
    """Tunnel mode: the outer header is marked CE but the inner packet is not ECN-capable, so the
    congestion can only be signalled by dropping it (RFC 6040 §4.2)."""

    counter = "ecn_drops"


class DummyPacket(IPsecError):
    """Next header 59: a TFC dummy packet, silently discarded (RFC 4303 §2.6)."""

    counter = None


# -- IPv4 helpers --

def ipv4_checksum(header: bytes) -> int:
    """RFC 791 header checksum of ``header`` (its checksum field included as it is).

    The one's complement sum of 16-bit words is the big integer modulo 0xFFFF
    (2**16 = 1 mod 0xFFFF): one C-level operation instead of a Python loop.
    """
    rest = int.from_bytes(header, "big") % 0xFFFF
    return 0xFFFF - rest if rest else 0


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


ECN_NOT_ECT, ECN_ECT1, ECN_ECT0, ECN_CE = 0, 1, 2, 3  # the low two bits of the TOS byte (RFC 3168)


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


def udp_header(sport: int, dport: int, payload_length: int) -> bytes:
    """RFC 3948 §2.1 UDP header; checksum 0 (allowed for IPv4, SHOULD for UDP-ESP)."""
    return struct.pack("!HHHH", sport, dport, UDP_HEADER + payload_length, 0)


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


def classify_udp4500(payload: bytes) -> str:
    """What arrived on UDP 4500 (RFC 3948 §2): "esp", "ike", "keepalive" or "malformed".

    >>> [classify_udp4500(p) for p in (b"\\xff", bytes(32), b"\\x00\\x00\\x01\\x00" + bytes(20), b"ab")]
    ['keepalive', 'ike', 'esp', 'malformed']
    """
    if payload == NAT_KEEPALIVE:
        return "keepalive"
    if payload[:4] == NON_ESP_MARKER:
        return "ike" if len(payload) >= 4 + ISAKMP_HEADER else "malformed"
    return "esp" if len(payload) >= ESP_HEADER else "malformed"


@functools.cache
def _trailers(block: int) -> tuple[bytes, ...]:
    """Padding + pad length + next header for every (payload length % block) << 8 | next header.

    Shared by every SA with this block size, so sealing a packet pads with one tuple index.
    """
    table = []
    for rest in range(block):
        padlen = -(rest + 2) % block
        table.extend(_PAD[:padlen] + bytes((padlen, next_header)) for next_header in range(256))
    return tuple(table)


def _unpad(plain: bytes) -> tuple[int, bytes]:
    padlen = plain[-2]
    end = len(plain) - 2 - padlen
    if not plain.endswith(_PAD_TAILS[padlen], 0, -1):  # also False when padlen overruns the packet
        raise DecryptionFailed(f"bad ESP padding (pad length {padlen}, {len(plain)} bytes)")
    return plain[-1], plain[:end]


def _keyed_hmac(integ: Integrity | None, key: bytes) -> crypto_hmac.HMAC | None:
    if integ is None:
        return None
    if len(key) != integ.key_size:
        raise ValueError(f"{integ.name} needs a {integ.key_size}-byte key, got {len(key)}")
    return crypto_hmac.HMAC(key, integ.hash())


# -- transforms: one object per SA, holding the keyed cipher and HMAC --

class _Transform:
    """seal(): ESP header (SPI+seq, 8 bytes) + payload -> wire bytes; open(): the reverse.

    ``seal`` puts ``prefix`` (the outer headers) in front, so a packet is joined once; its
    length is known in advance: ``overhead + len(payload) + (-(len(payload) + 2) % pad_block)``.
    ``open`` reads the ESP packet ``data[start:end]`` in place (the whole of ``data`` by default).
    """

    def __init__(self, enc: Encryption, integ: Integrity | None, integ_key: bytes, pad_block: int):
        self.encryption = enc
        self.integrity = integ
        self._mac = _keyed_hmac(integ, integ_key)
        self.icv_size = enc.icv_size or (integ.icv_size if integ else 0)
        self.min_length = ESP_HEADER + enc.iv_size + max(enc.block_size, 4) + self.icv_size
        self.pad_block = pad_block
        self.overhead = ESP_HEADER + enc.iv_size + 2 + self.icv_size
        self._trailers = _trailers(pad_block)
        self._block_mask = pad_block - 1

    def _verify(self, data: bytes, start: int, end: int) -> None:
        """HMAC of data[start:end - icv] against the ICV at its end (no HMAC: nothing to verify)."""
        if self._mac is not None:
            h = self._mac.copy()
            h.update(memoryview(data)[start:end - self.icv_size])
            if not hmac.compare_digest(h.finalize()[: self.icv_size], data[end - self.icv_size:end]):
                raise AuthenticationFailed("ICV mismatch")

    def _bounds(self, data: bytes, start: int, end: int | None) -> int:
        end = len(data) if end is None else end
        if end - start < self.min_length:
            raise BadPacket(f"ESP packet of {end - start} bytes, {self.encryption.name} needs "
                            f"at least {self.min_length}")
        return end

    def _with_icv(self, prefix: bytes, header: bytes, body: bytes) -> bytes:
        """prefix | header | body | HMAC(header | body): one join, no intermediate message."""
        if self._mac is None:
            return prefix + header + body
        h = self._mac.copy()
        h.update(header)
        h.update(body)
        return b"".join((prefix, header, body, h.finalize()[: self.icv_size]))


class NullTransform(_Transform):
    """ESP with NULL encryption (RFC 2410): integrity only, the payload stays readable."""

    def __init__(self, enc: Encryption, integ: Integrity, integ_key: bytes):
        super().__init__(enc, integ, integ_key, 4)

    def seal(self, header: bytes, payload: bytes, next_header: int, prefix: bytes = b"",
             iv: bytes | None = None) -> bytes:
        trailer = self._trailers[(len(payload) & self._block_mask) << 8 | next_header]
        return self._with_icv(prefix, header, payload + trailer)

    def open(self, data: bytes, start: int = 0, end: int | None = None) -> tuple[int, bytes]:
        end = self._bounds(data, start, end)
        self._verify(data, start, end)
        return _unpad(data[start + ESP_HEADER: end - self.icv_size])


class CbcTransform(_Transform):
    """DES, 3DES, AES in CBC mode with an explicit IV (RFC 2405, 2451, 3602) + optional HMAC."""

    def __init__(self, enc: Encryption, key: bytes, integ: Integrity | None, integ_key: bytes):
        super().__init__(enc, integ, integ_key, enc.block_size)
        self._cipher = enc.cipher(key)
        self._stream = Cipher(self._cipher, modes.CBC(os.urandom(enc.block_size))).encryptor()
        self._zero = bytes(enc.block_size)
        self._chained = Cipher(self._cipher, modes.CBC(self._zero)).decryptor()

    def seal(self, header: bytes, payload: bytes, next_header: int, prefix: bytes = b"",
             iv: bytes | None = None) -> bytes:
        """``iv`` forces an explicit IV (known-answer tests); normally it is derived (see module doc)."""
        trailer = self._trailers[(len(payload) & self._block_mask) << 8 | next_header]
        if iv is None:
            body = self._stream.update(b"".join((self._zero, payload, trailer)))
        else:
            body = iv + Cipher(self._cipher, modes.CBC(iv)).encryptor().update(payload + trailer)
        return self._with_icv(prefix, header, body)

    def open(self, data: bytes, start: int = 0, end: int | None = None) -> tuple[int, bytes]:
        end = self._bounds(data, start, end) - self.icv_size
        block = self.encryption.block_size
        if (end - start - ESP_HEADER) % block:
            raise BadPacket(f"ESP ciphertext of {end - start - ESP_HEADER - block} bytes is not a "
                            f"multiple of the {block}-byte block")
        self._verify(data, start, end + self.icv_size)
        # IV | ciphertext into the SA's running CBC decryptor: the IV's own output block is
        # garbage (chained to the previous packet), every later block is this packet's plaintext
        return _unpad(self._chained.update(memoryview(data)[start + ESP_HEADER:end])[block:])


class GcmTransform(_Transform):
    """AES-GCM with a 16-byte ICV (RFC 4106): nonce = salt | 8-byte explicit IV, AAD = SPI | seq.

    The explicit IV is the ESP header (SPI | sequence number) XOR a random 64-bit mask
    chosen per SA (as Linux's seqiv does with the sequence number): unique within the
    SA because the sequence number never wraps (RFC 4106 §3.1 requires uniqueness
    only), and two SAs that share a key - manual keying often uses one key both
    ways - collide only if their masks XOR their SPIs agree in the upper 32 bits
    (probability 2**-32).
    """

    def __init__(self, enc: Encryption, key: bytes):
        super().__init__(enc, None, b"", 4)
        self._aead = AESGCM(key[: -enc.salt_size])
        self._salt = key[-enc.salt_size:]
        self._iv_mask = int.from_bytes(os.urandom(8), "big")

    def seal(self, header: bytes, payload: bytes, next_header: int, prefix: bytes = b"",
             iv: bytes | None = None) -> bytes:
        if iv is None:
            iv = (self._iv_mask ^ int.from_bytes(header, "big")).to_bytes(8, "big")
        plain = payload + self._trailers[(len(payload) & 3) << 8 | next_header]
        return b"".join((prefix, header, iv, self._aead.encrypt(self._salt + iv, plain, header)))

    def open(self, data: bytes, start: int = 0, end: int | None = None) -> tuple[int, bytes]:
        end = self._bounds(data, start, end)
        try:
            plain = self._aead.decrypt(self._salt + data[start + 8:start + 16], data[start + 16:end],
                                       data[start:start + 8])
        except InvalidTag:
            raise AuthenticationFailed("AES-GCM tag mismatch") from None
        return _unpad(plain)


def transform(enc: Encryption, enc_key: bytes, integ: Integrity | None, integ_key: bytes) -> _Transform:
    """The keyed ESP transform for one SA (ValueError on a bad key or combination)."""
    if len(enc_key) != enc.key_size:
        raise ValueError(f"{enc.name} needs a {enc.key_size}-byte key, got {len(enc_key)}")
    if enc.aead:
        if integ is not None:
            raise ValueError(f"{enc.name} is an AEAD cipher: no separate integrity algorithm")
        return GcmTransform(enc, enc_key)
    if enc.mode == "null":
        if integ is None:
            raise ValueError("ESP with NULL encryption and no integrity protects nothing "
                             "(RFC 4303 §3.2)")
        return NullTransform(enc, integ, integ_key)
    return CbcTransform(enc, enc_key, integ, integ_key)


@functools.lru_cache(maxsize=4096)
def ip_to_bytes(address: str) -> bytes:
    """Dotted IPv4 address -> 4 bytes (ValueError names the address); cached for per-packet use."""
    return ipaddress.IPv4Address(address).packed
