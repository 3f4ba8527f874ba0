"""NAT-T for IKEv1: vendor IDs, NAT-D hashes and detection, the UDP 4500 framing, keepalives.

Windows Server 2003 speaks draft-ietf-ipsec-nat-t-ike-02 only (payloads 130/131, encapsulation
modes 61443/61444); RFC 3947 peers use 20/21 and 3/4. By default we announce draft-02 alone, as Windows
Server 2003 does; with both (ipsecd.yaml ike.nat_traversal) we use RFC 3947 when the peer knows it.

>>> classify_4500(b"\\xff")
('keepalive', b'')
>>> classify_4500(NON_ESP_MARKER + b"ike")
('ike', b'ike')
"""

from __future__ import annotations

import hashlib
import ipaddress
from dataclasses import dataclass

from ipsecd.driver.esp import NAT_KEEPALIVE, NON_ESP_MARKER  # RFC 3948 framing: the driver's ESP owns it
from ipsecd.ike import isakmp
from ipsecd.ike.oakley import HashAlg

KEEPALIVE_INTERVAL = 20.0  # seconds; Windows uses 20 s too (MS-IKEE <14>)
IKE_PORT, NATT_PORT = 500, 4500


def _md5(text: bytes) -> bytes:
    return hashlib.md5(text).digest()


VID_MS_NT5 = _md5(b"MS NT5 ISAKMPOAKLEY")  # followed by a 4-byte version: 4 = Windows Server 2003
VID_WINDOWS_2003 = VID_MS_NT5 + (4).to_bytes(4, "big")
VID_RFC3947 = _md5(b"RFC 3947")
VID_DRAFT_02 = _md5(b"draft-ietf-ipsec-nat-t-ike-02\n")
VID_INITIAL_CONTACT = _md5(b"Vid-Initial-Contact")
VID_NAMES = {
    VID_RFC3947: "NAT-T (RFC 3947)",
    VID_DRAFT_02: "NAT-T (draft-02)",
    VID_INITIAL_CONTACT: "Vid-Initial-Contact",
    _md5(b"GSSAPI"): "GSSAPI",
    bytes.fromhex("afcad71368a1f1c96b8696fc77570100"): "DPD (RFC 3706)",
    bytes.fromhex("09002689dfd6b712"): "XAuth",
    bytes.fromhex("4048b7d56ebce88525e7de7f00d6c2d3"): "FRAGMENTATION",
}


def vendor_name(vid: bytes) -> str:
    """A readable name for a vendor ID payload ('MS NT5 ISAKMPOAKLEY version 4', ...)."""
    if vid.startswith(VID_MS_NT5) and len(vid) == 20:
        return f"MS NT5 ISAKMPOAKLEY version {int.from_bytes(vid[16:], 'big')}"
    for known, name in VID_NAMES.items():
        if vid.startswith(known):
            return name
    return vid.hex()


@dataclass(frozen=True)
class Variant:
    """The numbers one NAT-T revision uses on the wire."""

    name: str
    vendor_id: bytes
    natd: type[isakmp.NatD]
    natoa: type[isakmp.NatOA]
    udp_tunnel: int
    udp_transport: int


RFC3947 = Variant("RFC 3947", VID_RFC3947, isakmp.NatD, isakmp.NatOA, 3, 4)
DRAFT_02 = Variant("draft-02", VID_DRAFT_02, isakmp.NatDDraft, isakmp.NatOADraft, 61443, 61444)
ENCAPSULATION_MODES = {
    1: "tunnel",
    2: "transport",
    3: "udp-tunnel",
    4: "udp-transport",
    61443: "udp-tunnel",
    61444: "udp-transport",
}


VARIANTS = {"rfc3947": RFC3947, "draft-02": DRAFT_02}  # in order of preference


def choose_variant(peer_vendor_ids: list[bytes], ours: tuple[str, ...] = tuple(VARIANTS)) -> Variant | None:
    """The first NAT-T revision both sides announced: RFC 3947, else draft-02 (Windows 2003), else none."""
    for name, variant in VARIANTS.items():
        if name in ours and variant.vendor_id in peer_vendor_ids:
            return variant
    return None


def natd_hash(hash_alg: HashAlg, cky_i: bytes, cky_r: bytes, address: str, port: int) -> bytes:
    """HASH(CKY-I | CKY-R | IP | Port) with the negotiated hash (RFC 3947 §3.2)."""
    return hash_alg.hash(cky_i + cky_r + ipaddress.ip_address(address).packed + port.to_bytes(2, "big"))


def natd_payloads(
    variant: Variant,
    hash_alg: HashAlg,
    cky_i: bytes,
    cky_r: bytes,
    local: tuple[str, int],
    remote: tuple[str, int],
) -> list[isakmp.Payload]:
    """The two NAT-D payloads: first the peer's address as we see it, then our own."""
    return [
        variant.natd(natd_hash(hash_alg, cky_i, cky_r, *remote)),
        variant.natd(natd_hash(hash_alg, cky_i, cky_r, *local)),
    ]


@dataclass(frozen=True)
class NatStatus:
    local_behind_nat: bool
    remote_behind_nat: bool

    @property
    def detected(self) -> bool:
        return self.local_behind_nat or self.remote_behind_nat

    def describe(self) -> str:
        if not self.detected:
            return "no NAT between the peers"
        where = [
            w for w, f in (("we are", self.local_behind_nat), ("the peer is", self.remote_behind_nat)) if f
        ]
        return " and ".join(where) + " behind a NAT"


def detect(
    received: list[bytes],
    hash_alg: HashAlg,
    cky_i: bytes,
    cky_r: bytes,
    local: tuple[str, int],
    remote: tuple[str, int],
) -> NatStatus:
    """Compare the peer's NAT-D hashes with our view of both addresses (RFC 3947 §3.2)."""
    if len(received) < 2:
        raise ValueError(f"expected at least two NAT-D payloads, got {len(received)}")
    local_ok = received[0] == natd_hash(hash_alg, cky_i, cky_r, *local)
    remote_ok = natd_hash(hash_alg, cky_i, cky_r, *remote) in received[1:]
    return NatStatus(not local_ok, not remote_ok)


def classify_4500(data: bytes) -> tuple[str, bytes]:
    """What arrived on UDP 4500: ('ike', message), ('keepalive', b'') or ('esp', datagram)."""
    if data == NAT_KEEPALIVE:
        return "keepalive", b""
    if data[:4] == NON_ESP_MARKER:
        return "ike", data[4:]
    return "esp", data


def frame(message: bytes, port: int) -> bytes:
    """Prefix the non-ESP marker when the message travels on UDP 4500."""
    return NON_ESP_MARKER + message if port == NATT_PORT else message
