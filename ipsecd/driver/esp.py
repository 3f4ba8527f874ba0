"""ESP wire format (RFC 4303, RFC 4106 for AES-GCM) and UDP encapsulation (RFC 3948).

Bytes in, bytes out: this module knows SPI, sequence number, IV, padding, the
trailer and the ICV, nothing about SAs, lifetimes or replay (``sad.py``); IPv4 headers and checksums
are ``ipv4.py``'s, the drop reasons ``errors.py``'s.

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
import os
import struct
from typing import TYPE_CHECKING

from ipsecd.algorithms import Encryption, Integrity
from ipsecd.driver.errors import AuthenticationFailed, BadPacket, DecryptionFailed

if TYPE_CHECKING:  # a transform imports cryptography when the first SA is keyed (ipsecd.algorithms)
    from cryptography.hazmat.primitives.hmac import HMAC

ESP_HEADER = 8  # SPI + sequence number
UDP_HEADER = 8
NAT_T_PORT = 4500
NON_ESP_MARKER = b"\x00\x00\x00\x00"  # RFC 3948 §2.2: IKE on port 4500
NAT_KEEPALIVE = b"\xff"  # RFC 3948 §2.3
ISAKMP_HEADER = 28

_PAD = bytes(range(1, 256))  # RFC 4303 §2.4 default padding: 1, 2, 3, ...
_PAD_TAILS = tuple(_PAD[:n] + bytes((n,)) for n in range(256))  # padding + pad length, as received


def udp_header(sport: int, dport: int, payload_length: int) -> bytes:
    """RFC 3948 §2.1 UDP header; checksum 0 (allowed for IPv4, SHOULD for UDP-ESP)."""
    return struct.pack("!HHHH", sport, dport, UDP_HEADER + payload_length, 0)


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
    table: list[bytes] = []
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


def _keyed_hmac(integ: Integrity | None, key: bytes) -> HMAC | None:
    if integ is None:
        return None
    if len(key) != integ.key_size:
        raise ValueError(f"{integ.name} needs a {integ.key_size}-byte key, got {len(key)}")
    from cryptography.hazmat.primitives.hmac import HMAC  # with the first SA (ipsecd.algorithms)
    return HMAC(key, integ.hash())


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

    def seal(self, header: bytes, payload: bytes, next_header: int, prefix: bytes = b"",
             ) -> bytes:  # pragma: no cover - each transform has its own
        raise NotImplementedError

    def open(self, data: bytes, start: int = 0, end: int | None = None,
             ) -> tuple[int, bytes]:  # pragma: no cover - each transform has its own
        raise NotImplementedError

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
        if enc.cipher is None:
            raise ValueError(f"{enc.name} is not a CBC cipher")
        from cryptography.hazmat.primitives.ciphers import Cipher, modes  # with the first SA
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
            from cryptography.hazmat.primitives.ciphers import Cipher, modes  # known-answer tests only
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
        from cryptography.exceptions import InvalidTag  # with the first SA (ipsecd.algorithms)
        from cryptography.hazmat.primitives.ciphers.aead import AESGCM
        self._aead = AESGCM(key[: -enc.salt_size])
        self._tag_mismatch = InvalidTag  # what decrypt raises for a forged or damaged packet
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
        except self._tag_mismatch:
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


