"""Our ESP/AH against scapy's independent SecurityAssociation, both directions.

scapy (scapy/layers/ipsec.py) is used only here, as the second implementation:
every algorithm, transport and tunnel mode, with and without UDP encapsulation.
"""
from __future__ import annotations

import os
import warnings

import pytest

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from scapy.layers import ipsec as scapy_ipsec
    from scapy.layers.inet import ICMP, IP, TCP, UDP
    from scapy.packet import Raw, raw

from ipsecd.algorithms import ENCRYPTIONS, INTEGRITIES
from ipsecd.sad import SecurityAssociation

SCAPY_ENC = {"null": "NULL", "des-cbc": "DES", "3des-cbc": "3DES", "aes-cbc-128": "AES-CBC",
             "aes-cbc-192": "AES-CBC", "aes-cbc-256": "AES-CBC", "aes-gcm-128": "AES-GCM",
             "aes-gcm-256": "AES-GCM"}
SCAPY_AUTH = {None: "NULL", "hmac-md5-96": "HMAC-MD5-96", "hmac-sha1-96": "HMAC-SHA1-96",
              "hmac-sha256-128": "SHA2-256-128"}
assert set(SCAPY_ENC) == set(ENCRYPTIONS) and set(SCAPY_AUTH) - {None} == set(INTEGRITIES)

PEER_A, PEER_B = "192.0.2.1", "198.51.100.2"
SPI = 0x12345678


def suites():
    for enc in ENCRYPTIONS.values():
        for auth in (None, *INTEGRITIES) if not enc.aead else (None,):
            if enc.mode == "null" and auth is None:
                continue  # refused: protects nothing
            yield enc.name, auth


SUITES = list(suites())
MODES = [("transport", None), ("tunnel", None), ("transport", (4500, 4500)), ("tunnel", (40000, 4500))]


def inner_packets():
    """Inner IPv4 packets of several sizes and protocols (sizes hit every padding length)."""
    yield IP(src="10.1.0.1", dst="10.2.0.1", flags="DF", tos=0x28) / TCP(sport=45012, dport=80) / Raw(
        b"testdata")
    yield IP(src="10.1.0.1", dst="10.2.0.1") / ICMP() / Raw(b"x" * 1372)
    for n in range(0, 17):
        yield IP(src="10.1.0.1", dst="10.2.0.1", id=n) / UDP(sport=1000, dport=53) / Raw(b"q" * n)


def make_pair(enc, auth, mode, udp, protocol="esp"):
    """(our outbound SA, our inbound SA, scapy SA) sharing keys; addresses PEER_A -> PEER_B."""
    e = ENCRYPTIONS[enc]
    enc_key = os.urandom(e.key_size)
    auth_key = os.urandom(INTEGRITIES[auth].key_size) if auth else b""
    ours = {
        direction: SecurityAssociation(
            SPI, protocol, direction, mode, PEER_A, PEER_B, enc, enc_key, auth, auth_key,
            udp_encap=udp)
        for direction in ("outbound", "inbound")
    }
    kwargs = dict(spi=SPI, auth_algo=SCAPY_AUTH[auth], auth_key=auth_key or None)
    if protocol == "esp":
        kwargs.update(crypt_algo=SCAPY_ENC[enc], crypt_key=enc_key or None)
    if mode == "tunnel":
        kwargs["tunnel_header"] = IP(src=PEER_A, dst=PEER_B)
    if udp:
        kwargs["nat_t_header"] = UDP(sport=udp[0], dport=udp[1])
    theirs = scapy_ipsec.SecurityAssociation(scapy_ipsec.ESP if protocol == "esp" else scapy_ipsec.AH,
                                             **kwargs)
    return ours["outbound"], ours["inbound"], theirs


def transport_packet(p):
    """Transport mode protects the host's own packets: put the peers' addresses on it."""
    p = p.copy()
    p.src, p.dst = PEER_A, PEER_B
    return IP(raw(p))


def checksum_ok(packet: bytes) -> bool:
    """scapy recomputes the IPv4 header checksum and agrees with the one on the wire."""
    p = IP(packet)
    received = p.chksum
    del p.chksum
    return IP(raw(p)).chksum == received


def check_same_inner(ours: bytes, expected: IP, mode: str):
    got = IP(ours)
    assert raw(got.payload) == raw(expected.payload)
    if mode == "tunnel":
        assert ours == raw(expected)
    else:
        assert (got.src, got.dst, got.proto, got.len) == (expected.src, expected.dst, expected.proto,
                                                           expected.len)
        assert checksum_ok(ours)


@pytest.mark.parametrize("mode,udp", MODES, ids=lambda v: str(v))
@pytest.mark.parametrize("enc,auth", SUITES, ids=lambda v: str(v))
def test_esp_ours_decrypted_by_scapy(enc, auth, mode, udp):
    out, _, theirs = make_pair(enc, auth, mode, udp)
    for p in inner_packets():
        p = IP(raw(p)) if mode == "tunnel" else transport_packet(p)
        wire = IP(out.encapsulate(raw(p)))
        assert (wire.src, wire.dst) == (PEER_A, PEER_B)
        assert wire.proto == (17 if udp else 50)
        if udp:
            assert (wire[UDP].sport, wire[UDP].dport, wire[UDP].chksum) == (*udp, 0)
        assert checksum_ok(raw(wire))
        if mode == "tunnel":
            assert wire.ttl == 64 and wire.flags == p.flags and wire.tos == p.tos
        else:
            assert wire.ttl == p.ttl
        decrypted = theirs.decrypt(wire)
        check_same_inner(raw(decrypted), p, mode)


@pytest.mark.parametrize("mode,udp", MODES, ids=lambda v: str(v))
@pytest.mark.parametrize("enc,auth", SUITES, ids=lambda v: str(v))
def test_esp_scapy_decrypted_by_us(enc, auth, mode, udp):
    _, inbound, theirs = make_pair(enc, auth, mode, udp)
    for p in inner_packets():
        p = IP(raw(p)) if mode == "tunnel" else transport_packet(p)
        wire = raw(theirs.encrypt(p))
        check_same_inner(inbound.decapsulate(wire), p, mode)
    assert inbound.counters.packets == len(list(inner_packets()))


@pytest.mark.parametrize("mode", ["transport", "tunnel"])
@pytest.mark.parametrize("auth", list(INTEGRITIES))
def test_ah_both_directions_with_scapy(auth, mode):
    out, inbound, theirs = make_pair("null", auth, mode, None, protocol="ah")
    for p in inner_packets():
        p = IP(raw(p)) if mode == "tunnel" else transport_packet(p)
        wire = IP(out.encapsulate(raw(p)))
        assert wire.proto == 51
        wire.ttl = 3  # mutable: a router may change it
        del wire.chksum
        wire = IP(raw(wire))
        check_same_inner(raw(theirs.decrypt(wire)), p, mode)
        theirs_wire = theirs.encrypt(p)
        check_same_inner(inbound.decapsulate(raw(theirs_wire)), p, mode)
