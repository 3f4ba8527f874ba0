"""AH wire format (RFC 4302): an HMAC over the packet's immutable IPv4 fields.

    IPv4 header | Next header(1) | Payload len(1) | Reserved(2) | SPI(4) | Seq(4) | ICV | payload

The ICV covers the IPv4 header with its mutable fields zeroed (RFC 4302
§3.3.3.1.1.1: TOS, flags and fragment offset, TTL, header checksum), the AH header
with the ICV field zeroed, and everything after AH.  IPv4 options are rejected
(BadPacket): RFC 4302 would need per-option mutability rules, Windows 2003 and
our own peers never send them, and an unchecked option would be a hole.

>>> from ipsecd.algorithms import integrity
>>> from ipsecd.driver.ipv4 import ip_to_bytes, ipv4_header
>>> ah = AhTransform(integrity("hmac-sha1-96"), bytes(20))
>>> hdr = ipv4_header(ip_to_bytes("10.0.0.1"), ip_to_bytes("10.0.0.2"), 51, ah.length + 4)
>>> packet = hdr + ah.seal(hdr, b"data", 17, 0x100, 1) + b"data"
>>> ah.open(packet[:8] + b"\\x07" + packet[9:])  # a router changed the TTL: still valid
(17, 1, b'data')
"""
from __future__ import annotations

import hmac
import struct

from ipsecd.algorithms import Integrity
from ipsecd.driver.errors import AuthenticationFailed, BadPacket

_ah_header = struct.Struct("!BBHII")
AH_FIXED = 12  # next header, payload length, reserved, SPI, sequence number


def zero_mutable(header: bytes) -> bytes:
    """A 20-byte IPv4 header with TOS, flags+fragment offset, TTL and checksum set to 0."""
    return header[:1] + b"\x00" + header[2:6] + b"\x00\x00\x00" + header[9:10] + b"\x00\x00" + header[12:20]


class AhTransform:
    """One keyed AH integrity context per SA."""

    def __init__(self, integ: Integrity, key: bytes):
        if len(key) != integ.key_size:
            raise ValueError(f"{integ.name} needs a {integ.key_size}-byte key, got {len(key)}")
        self.integrity = integ
        self.icv_size = integ.icv_size
        self.length = AH_FIXED + -(-integ.icv_size // 4) * 4  # IPv4: 32-bit aligned
        self._payload_len = self.length // 4 - 2  # RFC 4302 §2.2
        self._zero_icv = bytes(self.length - AH_FIXED)
        from cryptography.hazmat.primitives.hmac import HMAC  # with the first SA (ipsecd.algorithms)
        self._mac = HMAC(key, integ.hash())

    def _icv(self, header: bytes, fixed: bytes, payload: bytes) -> bytes:
        h = self._mac.copy()
        h.update(zero_mutable(header) + fixed + self._zero_icv + payload)
        return h.finalize()[: self.icv_size]

    def seal(self, header: bytes, payload: bytes, next_header: int, spi: int, seq: int) -> bytes:
        """AH header + ICV for ``header`` (the final outer header: protocol 51, final length)."""
        fixed = _ah_header.pack(next_header, self._payload_len, 0, spi, seq)
        icv = self._icv(header, fixed, payload)
        return fixed + icv + self._zero_icv[self.icv_size:]

    def open(self, packet: bytes) -> tuple[int, int, bytes]:
        """Verify a complete IPv4+AH packet; (next header, sequence number, payload after AH)."""
        if packet[0] != 0x45:
            raise BadPacket("AH packet with IPv4 options (not supported) or not IPv4")
        if len(packet) < 20 + self.length:
            raise BadPacket(f"AH packet of {len(packet)} bytes, needs at least {20 + self.length}")
        next_header, payload_len, _, _, seq = _ah_header.unpack_from(packet, 20)
        if payload_len != self._payload_len:
            raise BadPacket(f"AH payload length {payload_len}, {self.integrity.name} uses "
                            f"{self._payload_len}")
        end = 20 + self.length
        received = packet[20 + AH_FIXED: 20 + AH_FIXED + self.icv_size]
        if not hmac.compare_digest(self._icv(packet[:20], packet[20:32], packet[end:]), received):
            raise AuthenticationFailed("AH ICV mismatch")
        return next_header, seq, packet[end:]
