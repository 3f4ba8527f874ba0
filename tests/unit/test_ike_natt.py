"""NAT-T: vendor IDs, NAT-D against the strongSwan capture, detection and float, UDP 4500 framing."""

from itertools import count

import pytest

from ipsecd.ike import isakmp, main_mode, natt, oakley, quick_mode
from ipsecd.ike.settings import PeerPolicy, PreSharedKey, Selector
from tests.unit.test_ike_exchanges import converse
from tests.vectors import strongswan_ikev1 as vectors

SHA1 = oakley.HASHES["sha1"]


def test_vendor_ids_are_the_md5s_of_their_strings():
    assert natt.VID_RFC3947.hex() == "4a131c81070358455c5728f20e95452f"
    assert natt.VID_DRAFT_02.hex() == "90cb80913ebb696e086381b5ec427b1f"
    assert natt.VID_WINDOWS_2003.hex() == "1e2b516905991c7d7c96fcbfb587e461" + "00000004"
    assert natt.VID_INITIAL_CONTACT.hex() == "26244d38eddb61b3172a36e3d0cfb819"
    assert natt.vendor_name(natt.VID_WINDOWS_2003) == "MS NT5 ISAKMPOAKLEY version 4"


def test_variant_choice_prefers_rfc_and_falls_back_to_windows_draft():
    assert natt.choose_variant([natt.VID_DRAFT_02, natt.VID_RFC3947]) is natt.RFC3947
    draft = natt.choose_variant([natt.VID_WINDOWS_2003, natt.VID_DRAFT_02])
    assert draft is natt.DRAFT_02 and draft.natd.TYPE == 130 and draft.udp_transport == 61444
    assert natt.choose_variant([natt.VID_WINDOWS_2003]) is None


@pytest.mark.parametrize("case", vectors.CASES)
def test_natd_matches_strongswan(case):
    c = vectors.load(case)
    mm1, mm2, mm3, mm4 = (isakmp.Message.decode(d.data) for d in c.ike()[:4])
    assert [natt.vendor_name(v.data) for v in mm1.all(isakmp.VendorID)][3:] == [
        "NAT-T (RFC 3947)",
        "NAT-T (draft-02)",
    ]
    cky = (mm1.icookie, mm2.rcookie)
    ours = natt.natd_hash(SHA1, *cky, "10.77.0.2", 500)
    assert ours == c.value("natd_hash", 0) and ours == mm3.all(isakmp.NatD)[0].data
    # strongSwan fakes its own NAT-D on both sides (libipsec wants UDP encapsulation), so each side of the
    # capture must conclude "the peer is behind a NAT" and nothing else
    as_responder = natt.detect(
        [p.data for p in mm3.all(isakmp.NatD)], SHA1, *cky, ("10.77.0.2", 500), ("10.77.0.1", 500)
    )
    assert as_responder == natt.NatStatus(local_behind_nat=False, remote_behind_nat=True)
    status = natt.detect(
        [p.data for p in mm4.all(isakmp.NatD)], SHA1, *cky, ("10.77.0.1", 500), ("10.77.0.2", 500)
    )
    assert status == natt.NatStatus(local_behind_nat=False, remote_behind_nat=True)
    assert status.describe() == "the peer is behind a NAT"


def test_nat_between_peers_floats_and_selects_udp_encapsulation():
    pol = PeerPolicy(auth=[PreSharedKey(b"k")])
    # the initiator sits at 192.168.1.10 behind a NAT that shows it as 203.0.113.5:40110
    i = main_mode.MainModeInitiator(pol, ("192.168.1.10", 500), ("198.51.100.2", 500))
    r = main_mode.MainModeResponder(pol, ("198.51.100.2", 500), ("203.0.113.5", 40110))
    converse(i, r, i.start())
    assert i.float_to_4500 and r.float_to_4500
    assert i.sa.nat.local_behind_nat and not i.sa.nat.remote_behind_nat
    assert r.sa.nat.remote_behind_nat and not r.sa.nat.local_behind_nat
    q = quick_mode.QuickModeInitiator(
        i.sa, pol, Selector.parse("192.168.1.10/32"), Selector.parse("198.51.100.2/32"), count(7).__next__
    )
    first = q.start()
    qr = quick_mode.QuickModeResponder(
        r.sa, isakmp.Message.decode(first).message_id, lambda *_: pol, count(9).__next__
    )
    converse(q, qr, first)
    assert q.events[0].udp_encapsulation == (500, 500)  # ike.py moves the SA to 4500 when it floats
    # NAT-OA (RFC 3947 §5.2): each side learns the other's own address for transport-mode checksums
    assert qr.events[-1].peer_original_address == "192.168.1.10"
    assert q.events[0].peer_original_address == "198.51.100.2"
    assert "UDP-encapsulated" in qr.events[-1].describe()


def test_udp_4500_framing():
    assert natt.classify_4500(natt.frame(b"ike-message", 4500)) == ("ike", b"ike-message")
    assert natt.frame(b"m", 500) == b"m"
    assert natt.classify_4500(b"\x01\x02\x03\x04esp") == ("esp", b"\x01\x02\x03\x04esp")
    assert natt.classify_4500(natt.NAT_KEEPALIVE) == ("keepalive", b"")


def test_main_mode_announces_only_the_draft_02_nat_t_revision_as_windows_2003_does():
    """MS-IKEE <13>, <15>: Windows 2000 SP4, XP SP2 and Server 2003 send the draft-02 vendor ID alone (RFC
    3947's from Vista on, which ipsecd.yaml's ike.nat_traversal: [rfc3947, draft-02] gives)."""
    default = main_mode.MainModeInitiator(PeerPolicy(auth=[PreSharedKey(b"k")]), ("192.0.2.1", 500),
                                          ("192.0.2.2", 500))
    vids = [natt.vendor_name(v.data) for v in isakmp.Message.decode(default.start()).all(isakmp.VendorID)]
    assert vids == ["MS NT5 ISAKMPOAKLEY version 4", "NAT-T (draft-02)"]
    vista = PeerPolicy(auth=[PreSharedKey(b"k")], nat_traversal=("rfc3947", "draft-02"))
    i = main_mode.MainModeInitiator(vista, ("192.0.2.1", 500), ("192.0.2.2", 500))
    assert natt.VID_RFC3947 in [v.data for v in isakmp.Message.decode(i.start()).all(isakmp.VendorID)]


def test_windows_2003_style_peer_gets_draft_02_numbers_on_the_wire():
    windows = PeerPolicy(auth=[PreSharedKey(b"k")], nat_traversal=("draft-02",))
    ours = PeerPolicy(auth=[PreSharedKey(b"k")], nat_traversal=("rfc3947", "draft-02"))
    i = main_mode.MainModeInitiator(windows, ("192.168.1.10", 500), ("198.51.100.2", 500))
    r = main_mode.MainModeResponder(ours, ("198.51.100.2", 500), ("203.0.113.5", 40110))
    mm1 = i.start()
    assert [natt.vendor_name(v.data) for v in isakmp.Message.decode(mm1).all(isakmp.VendorID)] == [
        "MS NT5 ISAKMPOAKLEY version 4",
        "NAT-T (draft-02)",
    ]
    [mm2] = r.receive(isakmp.Message.decode(mm1))
    [mm3] = i.receive(isakmp.Message.decode(mm2))
    assert [type(p).__name__ for p in isakmp.Message.decode(mm3).payloads][2:] == ["NatDDraft", "NatDDraft"]
    converse(i, r, mm3)
    assert i.sa.natt_variant is natt.DRAFT_02 and r.sa.natt_variant is natt.DRAFT_02
    q = quick_mode.QuickModeInitiator(
        i.sa, windows, Selector.parse("192.168.1.10/32"), Selector.parse("198.51.100.2/32"), count(7).__next__
    )
    first = q.start()
    qr = quick_mode.QuickModeResponder(
        r.sa, isakmp.Message.decode(first).message_id, lambda *_: ours, count(9).__next__
    )
    converse(q, qr, first)
    transform = q.proposals[0].transforms[0]
    assert transform.attr(quick_mode.ENCAPSULATION) == 61444  # UDP-Encapsulated-Transport, draft numbering
    assert qr.events[-1].udp_encapsulation is not None


def test_nat_traversal_off_sends_no_natd():
    off = PeerPolicy(auth=[PreSharedKey(b"k")], nat_traversal=())
    i = main_mode.MainModeInitiator(off, ("192.0.2.1", 500), ("192.0.2.2", 500))
    psk_only = PeerPolicy(auth=[PreSharedKey(b"k")])
    r = main_mode.MainModeResponder(psk_only, ("192.0.2.2", 500), ("192.0.2.1", 500))
    converse(i, r, i.start())
    assert i.sa.natt_variant is None and r.sa.nat is None and not i.float_to_4500
