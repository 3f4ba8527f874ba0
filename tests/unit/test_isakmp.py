"""ISAKMP codec: round trips, the strongSwan capture, scapy as an independent decoder, fuzzing."""

import contextlib
import random

import pytest
from scapy.layers.isakmp import ISAKMP

from ipsecd.ike import isakmp as I
from tests.vectors import strongswan_ikev1 as vectors

EVERY_PAYLOAD = [
    I.SA(
        [
            I.Proposal(
                1,
                I.ProtocolID.ISAKMP,
                b"",
                [
                    I.Transform(
                        1, 1, [I.Attribute(1, 5), I.Attribute(2, 2), I.Attribute(12, b"\x00\x01\x51\x80")]
                    )
                ],
            )
        ]
    ),
    I.KE(b"\x11" * 128),
    I.ID(I.IDType.IPV4_ADDR, bytes([10, 0, 0, 1]), 17, 500),
    I.Cert(b"\x30\x82" + bytes(40)),
    I.CertRequest(b"\x30\x00"),
    I.Hash(b"\x22" * 20),
    I.Signature(b"\x33" * 128),
    I.Nonce(b"\x44" * 32),
    I.Notify(I.NotifyType.INITIAL_CONTACT, I.ProtocolID.ISAKMP, b"\x55" * 16),
    I.Delete.of(I.ProtocolID.ESP, [b"\x01\x02\x03\x04", b"\x05\x06\x07\x08"]),
    I.VendorID(b"\x66" * 16),
    I.NatD(b"\x77" * 20),
    I.NatDDraft(b"\x88" * 20),
    I.NatOA(bytes([192, 168, 1, 2])),
    I.NatOADraft(bytes([192, 168, 1, 3])),
]


def test_every_payload_round_trips():
    msg = I.Message(b"\x01" * 8, b"\x02" * 8, I.ExchangeType.MAIN_MODE, payloads=EVERY_PAYLOAD)
    wire = msg.encode()
    back = I.Message.decode(wire)
    assert back.payloads == EVERY_PAYLOAD
    assert back.encode() == wire
    assert back.first(I.Delete).spis == [b"\x01\x02\x03\x04", b"\x05\x06\x07\x08"]
    assert back.first(I.SA).proposals[0].transforms[0].attr(12) == 86400


def test_unknown_payload_is_kept_with_its_type():
    msg = I.Message(b"\x01" * 8, payloads=[I.Unknown(b"abc", payload_type=99), I.Nonce(b"n" * 8)])
    back = I.Message.decode(msg.encode())
    assert back.payloads[0].payload_type == 99 and back.payloads[1].data == b"n" * 8


def test_selector_ids():
    import ipaddress

    host = I.ID.for_network(ipaddress.IPv4Network("10.0.0.1/32"))
    net = I.ID.for_network(ipaddress.IPv4Network("10.1.0.0/16"), 6, 80)
    assert host.id_type == I.IDType.IPV4_ADDR and net.id_type == I.IDType.IPV4_ADDR_SUBNET
    assert str(net.network()) == "10.1.0.0/16" and str(host.network()) == "10.0.0.1/32"
    with pytest.raises(ValueError):
        I.ID(I.IDType.FQDN, b"example.org").network()


@pytest.mark.parametrize("case", vectors.CASES)
def test_strongswan_capture_decodes_and_reencodes(case):
    c = vectors.load(case)
    messages = [I.Message.decode(d.data) for d in c.ike()]
    assert [m.exchange for m in messages[:9]] == [2] * 6 + [32] * 3
    mm1 = messages[0]
    assert I.payload_names(mm1.payloads) == "SA, " + ", ".join(["VENDOR-ID"] * 5)
    transform = mm1.first(I.SA).proposals[0].transforms[0]
    assert transform.attr(3) == 1 and transform.attr(12) == 15840  # PSK, 4 h + 10 %
    for d, m in zip(c.ike(), messages, strict=True):
        if not m.flags & I.Flag.ENCRYPTION:
            assert m.encode() == d.data
        else:
            assert m.payloads == [] and len(m.body) % 8 == 0
    assert I.payload_names(messages[2].payloads) == "KE, NONCE, NAT-D, NAT-D"


def test_scapy_decodes_what_we_build():
    sa = EVERY_PAYLOAD[0]
    msg = I.Message(b"\x01" * 8, payloads=[sa, I.VendorID(b"\x66" * 16)])
    pkt = ISAKMP(msg.encode())
    assert pkt.init_cookie == b"\x01" * 8 and pkt.exch_type == 2
    transform = pkt.payload.prop.trans
    assert dict(transform.transforms)["Encryption"] == "3DES-CBC"
    assert dict(transform.transforms)["Hash"] == "SHA"
    assert pkt.payload.payload.VendorID == b"\x66" * 16
    assert dict(transform.transforms)["LifeDuration"] == 86400


@pytest.mark.parametrize("case", vectors.CASES)
def test_truncated_and_corrupted_messages_raise_only_malformed(case):
    rng = random.Random(4)
    samples = [d.data for d in vectors.load(case).ike()[:9]]
    samples.append(I.Message(b"\x01" * 8, payloads=EVERY_PAYLOAD).encode())
    for wire in samples:
        for cut in range(len(wire)):
            with pytest.raises(I.MalformedMessage):
                I.Message.decode(wire[:cut])
        for _ in range(300):
            bad = bytearray(wire)
            for _ in range(rng.randint(1, 4)):
                bad[rng.randrange(len(bad))] = rng.randrange(256)
            with contextlib.suppress(I.MalformedMessage):
                I.Message.decode(bytes(bad))
    for _ in range(2000):
        with contextlib.suppress(I.MalformedMessage):
            I.Message.decode(rng.randbytes(rng.randint(0, 200)))


def test_error_names_payload_and_offset():
    wire = bytearray(I.Message(b"\x01" * 8, payloads=[I.Nonce(b"n" * 16), I.Hash(b"h" * 20)]).encode())
    wire[28 + 20 + 3] = 200  # HASH payload length beyond the end
    with pytest.raises(I.MalformedMessage) as err:
        I.Message.decode(bytes(wire))
    assert err.value.what == "Hash" and err.value.offset == 48
    assert "Hash at offset 48" in str(err.value)
