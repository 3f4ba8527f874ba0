"""Main mode, quick mode and informational exchanges: two of our state machines talking in-process."""

import dataclasses
from itertools import count

import pytest
from cryptography.hazmat.primitives import serialization

from ipsecd import algorithms
from ipsecd.ike import events, informational, isakmp, main_mode, quick_mode
from ipsecd.ike.events import Established, Failure
from ipsecd.ike.settings import MainModeOffer, PeerPolicy, PreSharedKey, QuickModeOffer, Selector
from tests.vectors.pki import CA

A, B = ("192.0.2.1", 500), ("192.0.2.2", 500)
PSK = PreSharedKey(b"lab-secret")


def converse(initiator, responder, first: bytes) -> int:
    """Deliver datagrams back and forth until nobody has anything to say; returns the message count.

    When a side stays silent without being done, the last datagrams are delivered once more, as the
    peer's retransmission would (exchanges drop a message that fails its integrity check once)."""
    pending, side, count, repeated = [first], responder, 1, False
    while pending:
        replies = []
        for wire in pending:
            replies += side.receive(isakmp.Message.decode(wire))
            work = side.take_blocking() if isinstance(side, main_mode.MainMode) else None
            if work:  # what the component runs off its event loop (Kerberos: the ticket for main mode 3)
                work()
                replies += side.resume()
        if not replies and not side.done and not repeated:
            repeated = True
            continue
        count += len(replies)
        pending, side, repeated = replies, (initiator if side is responder else responder), False
    return count


def mirrored(ours, theirs) -> bool:
    """Our inbound SA is the peer's outbound one and the other way round (same SPI, keys, addresses)."""

    def same(a, b):
        return (a.spi, a.src, a.dst, a.encryption, a.encryption_key, a.integrity, a.integrity_key) == (
            b.spi,
            b.src,
            b.dst,
            b.encryption,
            b.encryption_key,
            b.integrity,
            b.integrity_key,
        )

    return same(ours.inbound, theirs.outbound) and same(ours.outbound, theirs.inbound)


def main_mode_pair(pol_i: PeerPolicy, pol_r: PeerPolicy):
    i, r = main_mode.MainModeInitiator(pol_i, A, B), main_mode.MainModeResponder(pol_r, B, A)
    count = converse(i, r, i.start())
    return i, r, count


def quick_mode_pair(sa_i, sa_r, pol_i, pol_r, local="192.0.2.1/32", remote="192.0.2.2/32"):
    q = quick_mode.QuickModeInitiator(
        sa_i, pol_i, Selector.parse(local), Selector.parse(remote), count(0x1000).__next__
    )
    first = q.start()
    r = quick_mode.QuickModeResponder(
        sa_r, isakmp.Message.decode(first).message_id, lambda *_: pol_r, count(0x2000).__next__
    )
    converse(q, r, first)
    return q, r


SUITES = [
    MainModeOffer("des-cbc", "md5", 1),
    MainModeOffer("3des-cbc", "sha1", 2),
    MainModeOffer("aes-cbc-128", "sha256", 14),
    MainModeOffer("aes-cbc-256", "sha1", 2),
]


@pytest.mark.parametrize("offer", SUITES, ids=lambda o: o.describe())
def test_main_mode_psk_every_suite(offer):
    pol = PeerPolicy(auth=[PSK], main_mode=[offer])
    i, r, count = main_mode_pair(pol, pol)
    assert count == 6
    assert isinstance(i.events[0], Established) and isinstance(r.events[0], Established)
    assert i.sa.keys == r.sa.keys and i.sa.suite.describe() == offer.describe()
    assert i.sa.peer_identity == "192.0.2.2" and r.sa.peer_identity == "192.0.2.1"
    assert r.peer_initial_contact and not i.float_to_4500


def test_responder_picks_first_initiator_offer_it_accepts():
    pol_i = PeerPolicy(
        auth=[PSK],
        main_mode=[
            MainModeOffer("des-cbc", "md5", 1),
            MainModeOffer("3des-cbc", "sha1", 2),
            MainModeOffer("3des-cbc", "md5", 2),
        ],
    )
    pol_r = PeerPolicy(
        auth=[PSK], main_mode=[MainModeOffer("3des-cbc", "md5", 2), MainModeOffer("3des-cbc", "sha1", 2)]
    )
    _i, r, _ = main_mode_pair(pol_i, pol_r)
    assert r.sa.suite.describe() == "3DES/SHA1/group 2"


def test_main_mode_lifetime_is_the_smaller_one():
    i, r, _ = main_mode_pair(
        PeerPolicy(auth=[PSK], main_mode=[MainModeOffer(lifetime=3600)]), PeerPolicy(auth=[PSK])
    )
    assert i.sa.lifetime == r.sa.lifetime == 3600
    with pytest.raises(ValueError, match="48 hours"):
        MainModeOffer(lifetime=49 * 3600)


def test_a_responder_with_a_shorter_main_mode_lifetime_says_so_in_main_mode_6():
    """Main mode 2 echoes the initiator's transform unchanged: RESPONDER-LIFETIME (RFC 2407 §4.6.3.1) tells
    the initiator the shorter lifetime, so both renegotiate before the responder's SA ends."""
    short = PeerPolicy(auth=[PSK], main_mode=[MainModeOffer(lifetime=40)])
    i, r, _ = main_mode_pair(PeerPolicy(auth=[PSK]), short)
    assert (r.proposed_lifetime, r.sa.lifetime, i.sa.lifetime) == (28800, 40, 40)


def test_a_responder_with_a_shorter_quick_mode_lifetime_says_so_in_quick_mode_2():
    i, r, _ = main_mode_pair(PeerPolicy(auth=[PSK]), PeerPolicy(auth=[PSK]))
    short = PeerPolicy(auth=[PSK], quick_mode=[QuickModeOffer(lifetime_seconds=300, lifetime_kb=20480)])
    q_i, q_r = quick_mode_pair(i.sa, r.sa, PeerPolicy(auth=[PSK]), short)
    (done_i,), (_ready, done_r) = q_i.events, q_r.events
    assert (done_r.lifetime_seconds, done_r.lifetime_kb) == (done_i.lifetime_seconds, done_i.lifetime_kb)
    assert (done_i.lifetime_seconds, done_i.lifetime_kb) == (300, 20480)


def test_wrong_psk_fails_on_both_sides_with_reason():
    i, r, _ = main_mode_pair(PeerPolicy(auth=[PSK]), PeerPolicy(auth=[PreSharedKey(b"other")]))
    assert isinstance(r.events[0], Failure) and r.events[0].counter == "authentication failed"
    assert "pre-shared keys differ" in r.events[0].reason
    assert isinstance(i.events[0], Failure) and i.events[0].counter == "authentication failed"
    assert "AUTHENTICATION-FAILED" in i.events[0].reason and "pre-shared key" in i.events[0].reason


def test_proposal_mismatch_names_both_sides():
    i, r, count = main_mode_pair(
        PeerPolicy(auth=[PSK], main_mode=[MainModeOffer("3des-cbc", "md5", 1)]),
        PeerPolicy(auth=[PSK], main_mode=[MainModeOffer("aes-cbc-128", "sha1", 14)]),
    )
    assert count == 2
    assert r.events[0].counter == "no proposal chosen"
    assert r.events[0].reason == (
        "no proposal chosen: peer 192.0.2.1 offered 3DES/MD5/group 1/PSK; we accept AES128/SHA1/group 14/PSK"
    )
    assert i.events[0].counter == "no proposal chosen" and "NO-PROPOSAL-CHOSEN" in i.events[0].reason


@pytest.fixture(scope="module")
def pki():
    ca = CA()
    return ca, ca.credentials("node-a"), ca.credentials("node-b")


def test_main_mode_certificates(pki):
    _ca, cred_a, cred_b = pki
    i, r, _ = main_mode_pair(PeerPolicy(auth=[cred_a]), PeerPolicy(auth=[cred_b]))
    assert isinstance(i.events[0], Established) and isinstance(r.events[0], Established)
    assert i.sa.auth_method == "rsa-sig" and i.sa.peer_identity == "CN=node-b,O=ipsec-lab"
    assert r.sa.peer_identity == "CN=node-a,O=ipsec-lab"


def test_untrusted_certificate_is_refused(pki):
    _, cred_a, _ = pki
    other = CA("rogue CA")
    i, r, _ = main_mode_pair(
        PeerPolicy(auth=[other.credentials("node-x", trusted=cred_a.trusted_cas)]), PeerPolicy(auth=[cred_a])
    )
    assert r.events[0].counter == "authentication failed"
    assert "does not chain to a trusted CA" in r.events[0].reason
    assert "INVALID-CERT-AUTHORITY" in i.events[0].reason


def test_expired_certificate_is_refused(pki):
    ca, cred_a, _ = pki
    expired = ca.credentials("node-old", days_valid=(-30, -1))
    i, r, _ = main_mode_pair(PeerPolicy(auth=[expired]), PeerPolicy(auth=[cred_a]))
    assert "not in date" in r.events[0].reason and i.events[0].counter == "authentication failed"


def test_psk_and_certificate_methods_negotiate_the_common_one(pki):
    _, cred_a, _cred_b = pki
    i, r, _ = main_mode_pair(PeerPolicy(auth=[cred_a, PSK]), PeerPolicy(auth=[PSK]))
    assert i.sa.auth_method == r.sa.auth_method == "psk"


QM_OFFERS = [
    QuickModeOffer(),
    QuickModeOffer("esp", "aes-cbc-128", "hmac-sha1-96"),
    QuickModeOffer("esp", "des-cbc", "hmac-md5-96"),
    QuickModeOffer("esp", None, "hmac-sha1-96"),
    QuickModeOffer("ah", None, "hmac-sha1-96"),
    QuickModeOffer("esp", "aes-cbc-256", "hmac-sha256-128", pfs_group=14),
    QuickModeOffer(pfs_group=2),
    QuickModeOffer("esp", "aes-gcm-128", None),
    QuickModeOffer("esp", "aes-gcm-256", None, pfs_group=2),
]


@pytest.mark.parametrize("offer", QM_OFFERS, ids=lambda o: o.describe() + str(o.pfs_group))
def test_quick_mode_pairs_match(offer):
    pol = PeerPolicy(auth=[PSK], quick_mode=[offer])
    i, r, _ = main_mode_pair(pol, pol)
    q, qr = quick_mode_pair(i.sa, r.sa, pol, pol)
    (done_i,), (ready, done_r) = q.events, qr.events
    assert ready == events.InboundReady(done_r)  # the responder's inbound SAs, as its QM2 left
    assert mirrored(done_i, done_r)
    assert done_i.inbound.direction == "inbound" and done_i.outbound.mode == "transport"
    assert done_i.inbound.spi == 0x1000 and done_i.outbound.spi == 0x2000
    assert done_i.inbound.encryption_key != done_i.outbound.encryption_key or offer.encryption is None
    enc = algorithms.encryption(offer.encryption or "null" if offer.protocol == "esp" else "null")
    assert len(done_i.inbound.encryption_key) == enc.key_size  # AES-GCM: key and 4-byte salt (RFC 4106 §8.1)
    integ = algorithms.integrity(offer.integrity).key_size if offer.integrity else 0
    assert len(done_i.inbound.integrity_key) == integ
    assert done_i.mode == "transport" and done_i.udp_encapsulation is None
    assert (q.pfs_gxy == qr.pfs_gxy) and bool(q.pfs_gxy) == bool(offer.pfs_group)


def test_quick_mode_tunnel_with_subnets():
    pol = PeerPolicy(auth=[PSK], tunnel=True)
    i, r, _ = main_mode_pair(pol, pol)
    _q, qr = quick_mode_pair(i.sa, r.sa, pol, pol, "10.1.0.0/16", "10.2.0.0/24")
    assert qr.events[-1].mode == "tunnel"
    assert str(qr.events[-1].local_selector) == "10.2.0.0/24"
    assert str(qr.events[-1].remote_selector) == "10.1.0.0/16"


def test_quick_mode_mismatch_is_readable_and_notified():
    pol_i = PeerPolicy(auth=[PSK], quick_mode=[QuickModeOffer("esp", "des-cbc", "hmac-md5-96")])
    pfs = QuickModeOffer("esp", "3des-cbc", "hmac-sha1-96", pfs_group=2)
    pol_r = PeerPolicy(auth=[PSK], quick_mode=[pfs])
    i, r, _ = main_mode_pair(pol_i, pol_r)
    q, qr = quick_mode_pair(i.sa, r.sa, pol_i, pol_r)
    assert qr.events[0].reason == (
        "no proposal chosen: peer 192.0.2.1 offered ESP[DES,MD5]; we accept "
        "ESP[3DES,SHA1] PFS group 2 in transport mode"
    )
    # the responder's encrypted NO-PROPOSAL-CHOSEN (naming our SPI) reaches the initiator
    assert q.events[0].counter == "no proposal chosen"
    assert q.events[0].reason == "peer 192.0.2.2 refused quick mode: NO-PROPOSAL-CHOSEN"


def test_informational_delete_and_notify_round_trip():
    pol = PeerPolicy(auth=[PSK])
    i, r, _ = main_mode_pair(pol, pol)
    q, _ = quick_mode_pair(i.sa, r.sa, pol, pol)
    wire = informational.delete_children(i.sa, q.events[0].inbound.chain())
    payloads = informational.open_informational(r.sa, isakmp.Message.decode(wire))
    assert payloads[0].protocol == isakmp.ProtocolID.ESP and payloads[0].spis == [b"\x00\x00\x10\x00"]
    wire = informational.delete_isakmp(r.sa)
    assert informational.open_informational(i.sa, isakmp.Message.decode(wire))[0].spis == [i.sa.cookies]
    tampered = bytearray(informational.notify(i.sa, isakmp.NotifyType.INITIAL_CONTACT))
    tampered[-1] ^= 1
    with pytest.raises(events.NegotiationError):
        informational.open_informational(r.sa, isakmp.Message.decode(bytes(tampered)))


def test_our_responder_accepts_strongswans_main_mode_1():
    from ipsecd.ike import natt
    from tests.vectors import strongswan_ikev1 as vectors

    case = vectors.load("v1-3des-sha1-modp1024")
    mm1 = isakmp.Message.decode(case.ike()[0].data)
    policy = PeerPolicy(
        auth=[PreSharedKey(vectors.PSK)],
        main_mode=[MainModeOffer("aes-cbc-128", "sha1", 14), MainModeOffer("3des-cbc", "sha1", 2)],
    )
    r = main_mode.MainModeResponder(policy, ("10.77.0.2", 500), ("10.77.0.1", 500))
    [mm2] = r.receive(mm1)
    reply = isakmp.Message.decode(mm2)
    chosen = reply.first(isakmp.SA).proposals[0].transforms[0]
    assert reply.icookie == mm1.icookie and reply.rcookie != bytes(8)
    assert main_mode.describe_transform(chosen) == "3DES/SHA1/group 2/PSK"
    assert r.lifetime == 15840  # strongSwan's 4 h + 10 %
    assert r.variant is natt.DRAFT_02  # strongSwan announces both revisions; we, as Windows 2003, draft-02
    assert [natt.vendor_name(v) for v in r.peer_vids] == [
        "XAuth",
        "DPD (RFC 3706)",
        "FRAGMENTATION",
        "NAT-T (RFC 3947)",
        "NAT-T (draft-02)",
    ]


def test_ah_plus_esp_bundle_as_windows_offers_it():
    bundle = QuickModeOffer("esp", "3des-cbc", None, ah="hmac-md5-96")
    assert bundle.describe() == "AH[MD5]+ESP[3DES,NONE]"
    pol = PeerPolicy(auth=[PSK], quick_mode=[QuickModeOffer("esp", "aes-cbc-128", "hmac-sha1-96"), bundle])
    pol_r = PeerPolicy(auth=[PSK], quick_mode=[bundle])
    i, r, _ = main_mode_pair(pol, pol_r)
    q, qr = quick_mode_pair(i.sa, r.sa, pol, pol_r)
    assert [(p.number, p.protocol) for p in q.proposals] == [(1, 3), (2, 2), (2, 3)]  # AH and ESP share #2
    done = q.events[0]
    ah, esp = done.inbound.chain()
    assert (ah.protocol, ah.integrity, len(ah.integrity_key), ah.encryption) == (
        "ah",
        "hmac-md5-96",
        16,
        "null",
    )
    assert (esp.protocol, esp.encryption, len(esp.encryption_key), esp.integrity) == (
        "esp",
        "3des-cbc",
        24,
        None,
    )
    assert ah.spi != esp.spi and mirrored(done, qr.events[-1])
    theirs_ah, theirs_esp = qr.events[-1].outbound.chain()
    assert (theirs_ah.spi, theirs_esp.spi) == (ah.spi, esp.spi)
    assert theirs_esp.encryption_key == esp.encryption_key and theirs_ah.integrity_key == ah.integrity_key


def test_bundle_mismatch_names_the_bundle():
    pol_i = PeerPolicy(auth=[PSK], quick_mode=[QuickModeOffer("esp", "3des-cbc", None, ah="hmac-md5-96")])
    pol_r = PeerPolicy(auth=[PSK], quick_mode=[QuickModeOffer("esp", "3des-cbc", "hmac-sha1-96")])
    i, r, _ = main_mode_pair(pol_i, pol_r)
    _, qr = quick_mode_pair(i.sa, r.sa, pol_i, pol_r)
    assert qr.events[0].reason == (
        "no proposal chosen: peer 192.0.2.1 offered AH[MD5] + ESP[3DES,NONE]; "
        "we accept ESP[3DES,SHA1] in transport mode"
    )


class CorruptOnTheWire:
    """A certificate whose DER, as sent in the CERT payload, has a subject that does not parse (CBC lets an
    attacker flip bits of main mode 5's plaintext); everything else is the real certificate's."""

    def __init__(self, cert):
        self.cert = cert
        der = bytearray(cert.public_bytes(serialization.Encoding.DER))
        der[der.index(cert.subject.public_bytes()) + 15] = 0xFF  # inside the first attribute's value
        self.der = bytes(der)

    def __getattr__(self, name):
        return getattr(self.cert, name)

    def public_bytes(self, encoding):
        return self.der


def test_a_certificate_whose_subject_does_not_parse_is_refused_not_raised(pki):
    """cryptography parses the subject lazily: it raised ValueError out of the chain check (the fuzzer)."""
    _, cred_a, cred_b = pki
    corrupt = dataclasses.replace(cred_a, certificate=CorruptOnTheWire(cred_a.certificate))
    i, r, _ = main_mode_pair(PeerPolicy(auth=[corrupt]), PeerPolicy(auth=[cred_b]))
    assert "INVALID-CERTIFICATE" in i.events[0].reason
    assert r.events[0].counter == "authentication failed"
    assert "CERT payload is not a DER X.509 certificate" in r.events[0].reason


def one_proposal(proposals: list[isakmp.Proposal]) -> isakmp.SA:
    """The initiator's offers as the transforms of one proposal, in its order (some initiators send that)."""
    first = proposals[0]
    transforms = [isakmp.Transform(n, t.transform_id, t.attributes)
                  for n, t in enumerate((p.transforms[0] for p in proposals), start=1)]
    return isakmp.SA([isakmp.Proposal(1, first.protocol, first.spi, transforms)])


@pytest.mark.parametrize("layout", ["one proposal per offer", "one proposal, a transform per offer"])
def test_the_quick_mode_responder_takes_the_initiators_first_acceptable_offer(monkeypatch, layout):
    """As main mode does (RFC 2409 leaves the choice to the responder; Windows honours the initiator's order):
    the responder's own order only says what it accepts."""
    i, r, _ = main_mode_pair(PeerPolicy(auth=[PSK]), PeerPolicy(auth=[PSK]))
    aes, des3 = QuickModeOffer("esp", "aes-cbc-128"), QuickModeOffer("esp", "3des-cbc")
    q = quick_mode.QuickModeInitiator(i.sa, PeerPolicy(auth=[PSK], quick_mode=[aes, des3]),
                                      Selector.parse("192.0.2.1/32"), Selector.parse("192.0.2.2/32"),
                                      count(0x1000).__next__)
    with monkeypatch.context() as patch:
        if layout != "one proposal per offer":
            patch.setattr(quick_mode, "SA", one_proposal)
        first = q.start()
    responder = quick_mode.QuickModeResponder(
        r.sa, isakmp.Message.decode(first).message_id,
        lambda *_: PeerPolicy(auth=[PSK], quick_mode=[des3, aes]), count(0x2000).__next__)
    converse(q, responder, first)
    (done,) = q.events
    assert done.offer == aes and done.inbound.encryption == "aes-cbc-128"
