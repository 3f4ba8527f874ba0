"""Unauthenticated datagrams built to break the responder: refused and counted, never an exception, and no
half-open exchange left behind."""

import struct

from ipsecd.ike.component import EVENT_LENGTH, RATE_TABLE_LIMIT
from ipsecd.ike.isakmp import SA, ExchangeType, Hash, Message, PayloadType, Proposal, ProtocolID, Transform
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
