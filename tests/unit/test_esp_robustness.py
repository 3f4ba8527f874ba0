"""Tampering with every region of an ESP packet, and malformed input of every length.

A modified packet must be dropped with the right exception and counted; nothing a
peer sends may raise anything but an ``IPsecError``.
"""
from __future__ import annotations

import hashlib
import hmac
import os
import random

import pytest
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from ipsecd.driver.errors import AuthenticationFailed, BadPacket, DecryptionFailed, DummyPacket, IPsecError
from ipsecd.driver.esp import classify_udp4500
from ipsecd.driver.ipv4 import ip_to_bytes, ipv4_header
from ipsecd.driver.sad import SAD, SecurityAssociation

A, B = "192.0.2.1", "192.0.2.2"
SUITES = [("aes-gcm-128", None), ("aes-cbc-128", "hmac-sha1-96"), ("3des-cbc", "hmac-md5-96"),
          ("des-cbc", "hmac-sha256-128"), ("null", "hmac-sha1-96")]


def pair(enc, auth, mode="tunnel", udp=None):
    from ipsecd.algorithms import ENCRYPTIONS, INTEGRITIES

    keys = dict(encryption=enc, encryption_key=os.urandom(ENCRYPTIONS[enc].key_size), integrity=auth,
                integrity_key=os.urandom(INTEGRITIES[auth].key_size) if auth else b"", udp_encap=udp)
    out = SecurityAssociation(0x1234, "esp", "outbound", mode, A, B, **keys)
    sad = SAD()
    sad.add(SecurityAssociation(0x1234, "esp", "inbound", mode, A, B, **keys))
    return out, sad


def inner(size=64) -> bytes:
    return ipv4_header(ip_to_bytes("10.1.0.1"), ip_to_bytes("10.2.0.1"), 17, size) + os.urandom(size)


def regions(enc, auth):
    """(name, offset into the outer packet) of every ESP region, tunnel mode, no UDP."""
    from ipsecd.algorithms import ENCRYPTIONS, INTEGRITIES

    iv = ENCRYPTIONS[enc].iv_size
    icv = ENCRYPTIONS[enc].icv_size or INTEGRITIES[auth].icv_size
    start = 20
    named = [("seq", start + 7), ("payload", start + 8 + iv + 5), ("padding/trailer", -icv - 2),
             ("icv", -1)]
    return named + ([("iv", start + 8)] if iv else [])


@pytest.mark.parametrize("enc,auth", SUITES)
def test_tamper_every_region(enc, auth):
    out, sad = pair(enc, auth)
    for region, offset in regions(enc, auth):
        wire = bytearray(out.encapsulate(inner()))
        wire[offset] ^= 0x40
        with pytest.raises(AuthenticationFailed, match=r"ICV|tag"):
            sad.inbound(bytes(wire))
        assert sad.snapshot().packets_not_authenticated == regions(enc, auth).index((region, offset)) + 1
    spi_changed = bytearray(out.encapsulate(inner()))
    spi_changed[23] ^= 1
    with pytest.raises(IPsecError) as e:
        sad.inbound(bytes(spi_changed))
    assert e.value.counter == "bad_spi_packets"
    counters = sad.snapshot()
    assert counters.packets_not_authenticated == len(regions(enc, auth))
    assert counters.bad_spi_packets == 1
    ok, sa = sad.inbound(out.encapsulate(packet := inner()))  # later packets still pass
    assert ok == packet and sa.counters.packets_not_authenticated == len(regions(enc, auth))


def test_outer_header_is_not_covered_by_esp_but_checked():
    out, sad = pair("aes-gcm-128", None, mode="transport")
    wire = bytearray(out.encapsulate(ipv4_header(ip_to_bytes(A), ip_to_bytes(B), 17, 30) + bytes(30)))
    ttl_changed = bytearray(wire)
    ttl_changed[8] = 3  # routers change the TTL: ESP does not protect the outer header
    ttl_changed[10:12] = b"\x00\x00"
    assert sad.inbound(bytes(ttl_changed))[0][8] == 3
    too_long = bytearray(wire)
    too_long[3] += 1  # total length beyond the data
    with pytest.raises(BadPacket):
        sad.inbound(bytes(too_long))
    fragment = bytearray(wire)
    fragment[6] |= 0x20  # more-fragments
    with pytest.raises(BadPacket):
        sad.inbound(bytes(fragment))
    assert sad.counters.malformed_packets == 2


def cbc_sha1_with_plaintext(sa_keys, plaintext: bytes, seq: int) -> bytes:
    """An ESP packet built with cryptography + hashlib only, for payloads our sender never makes."""
    enc_key, auth_key = sa_keys
    iv = os.urandom(16)
    e = Cipher(algorithms.AES(enc_key), modes.CBC(iv)).encryptor()
    msg = (0x1234).to_bytes(4, "big") + seq.to_bytes(4, "big") + iv + e.update(plaintext) + e.finalize()
    msg += hmac.new(auth_key, msg, hashlib.sha1).digest()[:12]
    return ipv4_header(ip_to_bytes(A), ip_to_bytes(B), 50, len(msg)) + msg


@pytest.mark.parametrize("trailer,error", [
    (bytes([9, 9, 2, 4]), DecryptionFailed),  # padding bytes must be 1, 2 (RFC 4303 §2.4)
    (bytes([1, 2, 200, 4]), DecryptionFailed),  # pad length longer than the payload
    (bytes([1, 2, 2, 59]), DummyPacket),  # next header 59: dummy, dropped silently
    (bytes([1, 2, 2, 6]), BadPacket),  # tunnel SA but the payload is not IPv4-in-ESP
])
def test_authenticated_but_bad_payload(trailer, error):
    enc_key, auth_key = os.urandom(16), os.urandom(20)
    sad = SAD()
    sad.add(SecurityAssociation(0x1234, "esp", "inbound", "tunnel", A, B, "aes-cbc-128", enc_key,
                                "hmac-sha1-96", auth_key))
    plaintext = inner(24) + trailer  # 44 + 4 = 48: whole AES blocks
    wire = cbc_sha1_with_plaintext((enc_key, auth_key), plaintext, 1)
    with pytest.raises(error):
        sad.inbound(wire)
    if error is DecryptionFailed:
        assert sad.snapshot().packets_not_decrypted == 1


def test_independently_built_packet_is_accepted():
    """Control for the test above: the same builder with a correct trailer decrypts."""
    enc_key, auth_key = os.urandom(16), os.urandom(20)
    sad = SAD()
    sad.add(SecurityAssociation(0x1234, "esp", "inbound", "tunnel", A, B, "aes-cbc-128", enc_key,
                                "hmac-sha1-96", auth_key))
    packet = inner(24)
    assert sad.inbound(cbc_sha1_with_plaintext((enc_key, auth_key), packet + b"\x01\x02\x02\x04", 7))[0] \
        == packet


@pytest.mark.parametrize("udp", [None, (4500, 4500)])
@pytest.mark.parametrize("enc,auth", SUITES)
def test_truncations_and_random_bytes_only_raise_ipsec_errors(enc, auth, udp):
    out, sad = pair(enc, auth, udp=udp)
    rng = random.Random(4303)
    wire = out.encapsulate(inner(40))
    candidates = []
    for n in range(len(wire)):
        cut = bytearray(wire[:n])
        candidates.append(bytes(cut))
        if n >= 4:
            cut[2:4] = n.to_bytes(2, "big")  # consistent IP length: reaches the deeper checks
            candidates.append(bytes(cut))
    for _ in range(300):
        flipped = bytearray(wire)
        for _ in range(rng.randint(1, 4)):
            flipped[rng.randrange(len(flipped))] = rng.randrange(256)
        candidates.append(bytes(flipped))
        candidates.append(wire[:20] + rng.randbytes(rng.randrange(60)))
        candidates.append(rng.randbytes(rng.randrange(80)))
    drops = 0
    for data in candidates:  # anything but IPsecError fails the test
        for deliver in (lambda d: sad.inbound(d), lambda d: sad.inbound_udp(d[28:], A, B)):
            try:
                deliver(data)  # may pass: the outer header (TTL, ID, checksum) is not protected
            except IPsecError as e:
                drops += e.counter is not None
        assert classify_udp4500(data[28:]) in ("esp", "ike", "keepalive", "malformed")
    counted = sum(v for k, v in sad.snapshot().as_dict().items()
                  if k in ("bad_spi_packets", "packets_not_decrypted", "packets_not_authenticated",
                           "replayed_packets", "malformed_packets", "dropped_by_policy"))
    assert counted == drops > len(candidates)  # every drop counted once


def test_gcm_ivs_unique_per_sa_and_distinct_between_sas_sharing_a_key():
    """Manual keying may give both directions one key: their GCM nonces must still differ."""
    key = os.urandom(20)
    a, b = (SecurityAssociation(spi, "esp", "outbound", "tunnel", A, B, "aes-gcm-128", key)
            for spi in (0x1000, 0x2000))
    ivs_a = [a.encapsulate(inner(8))[28:36] for _ in range(2000)]
    ivs_b = [b.encapsulate(inner(8))[28:36] for _ in range(2000)]
    assert len(set(ivs_a)) == 2000 and not set(ivs_a) & set(ivs_b)


@pytest.mark.parametrize("protocol,mode", [("esp", "transport"), ("esp", "tunnel"), ("ah", "transport"),
                                           ("ah", "tunnel")])
def test_outbound_garbage_from_the_tun_only_raises_ipsec_errors(protocol, mode):
    keys = dict(encryption="aes-cbc-128", encryption_key=os.urandom(16)) if protocol == "esp" else {}
    sa = SecurityAssociation(0x1234, protocol, "outbound", mode, A, B, integrity="hmac-sha1-96",
                             integrity_key=os.urandom(20), **keys)
    rng = random.Random(791)
    good = inner(30)
    samples = [good[:n] for n in range(len(good))] + [rng.randbytes(rng.randrange(70)) for _ in range(500)]
    samples += [b"\x45" + rng.randbytes(rng.randrange(19, 70)) for _ in range(500)]
    for data in samples:
        try:
            sa.encapsulate(data)
        except IPsecError as e:
            assert isinstance(e, BadPacket)
