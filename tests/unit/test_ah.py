"""AH (RFC 4302): mutable header fields may change in transit, everything else is covered.

The ICV itself is cross-checked with scapy in test_esp_interop.py; here an
independent hmac/hashlib computation of RFC 4302 §3.3.3 pins the byte layout.
"""
from __future__ import annotations

import hashlib
import hmac
import random

import pytest

from ipsecd.driver.errors import AuthenticationFailed, BadPacket, IPsecError, UnknownSPI
from ipsecd.driver.ipv4 import ip_to_bytes, ipv4_header
from ipsecd.driver.sad import SAD, SecurityAssociation

A, B = "192.0.2.1", "192.0.2.2"
KEY = bytes(range(20))


def pair(mode="transport"):
    out = SecurityAssociation(0x2222, "ah", "outbound", mode, A, B, integrity="hmac-sha1-96",
                              integrity_key=KEY)
    sad = SAD()
    sad.add(SecurityAssociation(0x2222, "ah", "inbound", mode, A, B, integrity="hmac-sha1-96",
                                integrity_key=KEY))
    return out, sad


def original(tos=0x10, ttl=61, df=True) -> bytes:
    return ipv4_header(ip_to_bytes(A), ip_to_bytes(B), 17, 12, tos=tos, ttl=ttl, ident=0x4242,
                       flags_fragment=0x4000 if df else 0) + b"udp-datagram"


def with_checksum(packet: bytearray) -> bytes:
    packet[10:12] = b"\x00\x00"
    return ipv4_header(packet[12:16], packet[16:20], packet[9], len(packet) - 20, tos=packet[1],
                       ident=int.from_bytes(packet[4:6], "big"),
                       flags_fragment=int.from_bytes(packet[6:8], "big"), ttl=packet[8]) + packet[20:]


def test_icv_is_rfc4302_hmac_over_zeroed_mutable_fields():
    out, _ = pair()
    wire = out.encapsulate(original())
    assert (wire[9], wire[20], wire[21]) == (51, 17, 4)  # AH, next header UDP, payload len 24/4-2
    zeroed = bytearray(wire[:20])
    zeroed[1] = 0  # TOS
    zeroed[6:9] = b"\x00\x00\x00"  # flags, fragment offset, TTL
    zeroed[10:12] = b"\x00\x00"  # checksum
    icv_input = bytes(zeroed) + wire[20:32] + bytes(12) + wire[44:]
    assert wire[32:44] == hmac.new(KEY, icv_input, hashlib.sha1).digest()[:12]
    assert wire[8] == 61 and wire[1] == 0x10  # transport mode keeps TTL and TOS


@pytest.mark.parametrize("mode", ["transport", "tunnel"])
def test_mutable_fields_may_change(mode):
    out, sad = pair(mode)
    wire = bytearray(out.encapsulate(original()))
    wire[1] = 0xB8  # DSCP rewritten
    wire[8] = 1  # TTL
    wire[6] ^= 0x40  # DF cleared
    inner, _ = sad.inbound(with_checksum(wire))
    assert inner[20:] == b"udp-datagram" and inner[9] == 17


@pytest.mark.parametrize("offset,field", [(4, "id"), (12, "src"), (19, "dst"), (3, "length+1"),
                                          (20, "next header"), (31, "seq"), (40, "icv"), (50, "payload")])
@pytest.mark.parametrize("mode", ["transport", "tunnel"])
def test_immutable_fields_are_covered(offset, field, mode):
    out, sad = pair(mode)
    wire = bytearray(out.encapsulate(original()))
    if field == "length+1":
        wire.append(0)
    wire[offset] ^= 0x01 if field == "length+1" else 0x02
    with pytest.raises(UnknownSPI if field == "dst" else AuthenticationFailed):  # dst: part of the SA key
        sad.inbound(with_checksum(wire))


def test_spi_changed_is_a_bad_spi():
    out, sad = pair()
    wire = bytearray(out.encapsulate(original()))
    wire[27] ^= 1
    with pytest.raises(IPsecError):
        sad.inbound(bytes(wire))
    assert sad.counters.bad_spi_packets == 1


def test_ipv4_options_are_refused_both_ways():
    out, sad = pair()
    with_options = bytearray(original())
    with_options[0] = 0x46
    with_options[20:20] = b"\x01\x01\x01\x00"  # NOP NOP NOP EOL
    with_options[2:4] = len(with_options).to_bytes(2, "big")
    with pytest.raises(BadPacket, match="options"):
        out.encapsulate(bytes(with_options))
    wire = bytearray(out.encapsulate(original()))
    wire[0] = 0x46
    wire[20:20] = b"\x01\x01\x01\x00"
    wire[2:4] = len(wire).to_bytes(2, "big")
    with pytest.raises(BadPacket, match="options"):
        sad.inbound(bytes(wire))


def test_malformed_ah_only_raises_ipsec_errors():
    out, sad = pair()
    wire = out.encapsulate(original())
    rng = random.Random(4302)
    for n in range(len(wire)):
        cut = bytearray(wire[:n])
        if n >= 4:
            cut[2:4] = n.to_bytes(2, "big")
        with pytest.raises(IPsecError):
            sad.inbound(bytes(cut))
    for _ in range(500):
        junk = bytearray(wire)
        junk[20 + rng.randrange(len(wire) - 20)] = rng.randrange(256)
        if bytes(junk) != wire:
            with pytest.raises(IPsecError):
                sad.inbound(bytes(junk))
