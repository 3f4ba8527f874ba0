"""Unauthenticated datagrams built to break the responder: refused and counted, never an exception, and no
half-open exchange left behind."""

import struct

from ipsecd.ike import informational
from ipsecd.ike.component import EVENT_LENGTH, RATE_TABLE_LIMIT
from ipsecd.ike.isakmp import (
    SA,
    ExchangeType,
    Hash,
    Message,
    Nonce,
    PayloadType,
    Proposal,
    ProtocolID,
    Transform,
)
from ipsecd.ike.main_mode import offer_transform
from ipsecd.ike.sa import MAX_IV_CHAINS
from ipsecd.ike.settings import MainModeOffer, PeerPolicy, PreSharedKey
from tests.unit.test_ike_component import A, B, negotiate, pair

PSK = PeerPolicy(auth=[PreSharedKey(b"k")])


def main_mode_1(transforms: list[Transform], count: int | None = None) -> bytes:
    """Main mode 1 with these transforms; `count` overrides the proposal's number-of-transforms byte."""
    wire = Message(b"\x11" * 8, payloads=[SA([Proposal(1, ProtocolID.ISAKMP, b"", [])])]).encode()
    chain = b""
    for i, t in enumerate(transforms):
        body = t.body()
        chain += struct.pack("!BBH", PayloadType.TRANSFORM if i + 1 < len(transforms) else 0, 0,
                             len(body) + 4) + body
    header = wire[:28]
    proposal = struct.pack("!BBBB", 1, ProtocolID.ISAKMP, 0, len(transforms) if count is None else count)
    proposal_payload = struct.pack("!BBH", 0, 0, 4 + len(proposal) + len(chain)) + proposal + chain
    sa_body = struct.pack("!II", 1, 1) + proposal_payload
    sa = struct.pack("!BBH", 0, 0, 4 + len(sa_body)) + sa_body
    return header[:24] + struct.pack("!I", 28 + len(sa)) + sa


def responder():
    """ipsecd B's IKE, with A covered by its policy."""
    return pair(PSK)[3][0]


def feed(ike, data: bytes) -> None:
    ike.datagram_received(data, (A, 500), 500)


def transforms(n: int) -> list[Transform]:
    """`n` copies of an acceptable main mode transform."""
    attributes = offer_transform(1, MainModeOffer("3des-cbc", "sha1", 2), "psk").attributes
    return [Transform(i % 256, 1, attributes) for i in range(n)]


def test_256_transforms_are_refused_as_malformed_without_an_exception_or_half_open_state():
    ike = responder()
    feed(ike, main_mode_1(transforms(256), count=0))  # the count byte cannot say 256
    assert ike.counters["Malformed Packets"] == 1
    assert not ike.pending_main


def test_255_unacceptable_transforms_are_refused_as_a_failed_negotiation():
    ike = responder()
    junk = [Transform(n, 1, offer_transform(1, MainModeOffer("3des-cbc", "sha1", 2), "psk").attributes[:1])
            for n in range(255)]
    feed(ike, main_mode_1(junk))
    assert ike.counters["Negotiation Failures"] == 1
    assert not ike.pending_main
    assert max(len(text) for _, text in ike.events) <= EVENT_LENGTH  # it listed all 255: 11,000 characters


def test_a_defect_reached_by_a_datagram_is_counted_and_frees_the_exchange_it_opened(monkeypatch):
    from ipsecd.ike import main_mode

    def broken(self, msg):
        raise RuntimeError("a defect")

    monkeypatch.setattr(main_mode.MainModeResponder, "_step", broken)
    ike = responder()
    valid = [offer_transform(1, MainModeOffer("3des-cbc", "sha1", 2), "psk")]
    for _ in range(3):
        feed(ike, main_mode_1(valid))
    assert ike.counters["Dropped: internal error"] == 3
    assert not ike.pending_main


def retyped(wire: bytes, exchange: int | None = None, version: int | None = None) -> bytes:
    """The datagram with another exchange type or version byte in its ISAKMP header."""
    out = bytearray(wire)
    if exchange is not None:
        out[18] = exchange
    if version is not None:
        out[17] = version
    return bytes(out)


def test_aggressive_mode_and_ikev2_are_refused_as_such_not_as_malformed():
    ike = responder()
    valid = main_mode_1([offer_transform(1, MainModeOffer("3des-cbc", "sha1", 2), "psk")])
    feed(ike, retyped(valid, exchange=4))
    feed(ike, retyped(valid, exchange=1))
    feed(ike, retyped(valid, version=0x20))
    assert ike.counters["Dropped: unsupported exchange (aggressive mode)"] == 1
    assert ike.counters["Dropped: unsupported exchange (other)"] == 1
    assert ike.counters["Dropped: IKEv2 is not supported"] == 1
    assert ike.counters["Malformed Packets"] == 0 and not ike.pending_main
    said = [text for _, text in ike.events]
    assert "unsupported exchange (aggressive mode)" in said[0] and "IKEv2 is not supported" in said[2]


def test_messages_for_unknown_cookies_or_the_wrong_state_are_counted_by_name():
    lab = negotiate()
    ike, log = lab.ike_b, [data for _, _, _, data in lab.net.log]
    before = dict(ike.counters)
    unknown = b"\x99" * 16
    feed(ike, unknown + log[6][16:])  # quick mode 1 under cookies nobody has
    feed(ike, unknown + retyped(log[6], exchange=5)[16:])  # an informational: was dropped silently
    feed(ike, log[4][:16] + log[0][16:])  # main mode 1 under the established SA's cookies
    moved = {k: v - before.get(k, 0) for k, v in ike.counters.items() if v != before.get(k, 0)}
    assert moved == {"Dropped: no SA for cookies": 2, "Dropped: not expected in this state": 1}


def test_a_replayed_delete_and_an_informational_without_notifications_are_said():
    lab = negotiate()
    spi = lab.drv_a.added[0].inbound.spi
    lab.ike_a.expire(spi, hard=True)
    lab.net.run()
    delete = lab.net.log[-1][3]
    (mm,) = lab.ike_a.main_modes.values()
    nonce_only = informational.protect(mm.sa, [Nonce(bytes(16))])
    for wire in (delete, nonce_only):  # both verify, neither acts on anything
        events = len(lab.ike_b.events)
        feed(lab.ike_b, wire)
        assert len(lab.ike_b.events) == events + 1
    texts = [text for _, text in list(lab.ike_b.events)[-2:]]
    assert "none of its SAs here" in texts[0] and "NONCE besides notifications" in texts[1]


def test_phase_2_iv_chains_and_the_invalid_spi_table_stay_bounded():
    """Message IDs and SPIs come from the network: what IKE keeps per ID or SPI has a ceiling."""
    lab = negotiate()
    (entry,) = lab.ike_a.main_modes.values()
    for message_id in range(1, 1000):
        entry.sa.seal(ExchangeType.QUICK_MODE, message_id, [Hash(bytes(20))])
    assert len(entry.sa.ivs) == MAX_IV_CHAINS
    for spi in range(RATE_TABLE_LIMIT * 2):
        lab.ike_a.invalid_spi(spi + 0x1000, B)
    assert len(lab.ike_a.invalid_spi_sent) <= RATE_TABLE_LIMIT
