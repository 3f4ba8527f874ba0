"""Kerberos (GSS-API, method 65001) in main mode: the wire format, the extended hash, the vendor IDs that make
65001 GSS-API rather than XAUTH, fallback to the next method, tampering; and the MIT wrapper's failure words.

The exchange tests run the real main mode machines with a small stand-in mechanism in place of Kerberos
(no KDC here); tests/lab/test_ike_kerberos_core.py runs the same exchange with real Kerberos and a real KDC.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import os
import threading
from ipaddress import IPv4Address

import pytest

from ipsecd import config
from ipsecd.ike import auth, isakmp, kerberos, main_mode
from ipsecd.ike.events import NegotiationError
from ipsecd.ike.isakmp import GssToken, Message, PayloadType, VendorID
from ipsecd.ike.settings import Kerberos, PeerPolicy
from ipsecd.policy.expand import expand_rules
from ipsecd.policy.ike_settings import ike_settings
from ipsecd.policy.predefined import predefined
from tests.unit.test_ike_component import A as CA_A
from tests.unit.test_ike_component import B as CA_B
from tests.unit.test_ike_component import host, pair
from tests.unit.test_ike_exchanges import PSK, A, B, converse
from tests.unit.test_ike_loopback import run_pair

REALM = "LAB.TEST"
KEYS = {"host/member-a.lab.test@LAB.TEST": b"key-a" * 4, "host/member-b.lab.test@LAB.TEST": b"key-b" * 4}
KERB_A = Kerberos(keytab="host/member-a.lab.test@LAB.TEST", principal="member-a$@LAB.TEST")
KERB_B = Kerberos(keytab="host/member-b.lab.test@LAB.TEST", principal="member-b$@LAB.TEST")
MIT_CONTEXT = kerberos.Context  # the real one; the exchange tests put StandInContext in its place


def _mac(key: bytes, data: bytes) -> bytes:
    return hmac.new(key, data, hashlib.sha256).digest()[:16]


class StandInContext:
    """A GSS-API mechanism shaped like Kerberos (AP-REQ sealed for the target's key, AP-REP, wrap): the
    'keytab' names the service key in KEYS. It raises the wrapper's errors as the real one does."""

    def __init__(self, settings: Kerberos, initiator: bool, target: str | None = None):
        self.settings, self.initiator, self.target = settings, initiator, target
        self.session, self.peer, self.complete = b"", "", False

    def step(self, token: bytes | None) -> bytes:
        if self.initiator and token is None:
            nonce = os.urandom(16)
            self.session = hashlib.sha256(KEYS[self.target] + nonce).digest()
            client = self.settings.principal.encode()
            return b"AP-REQ" + nonce + _mac(KEYS[self.target], nonce + client) + client
        if self.initiator:
            if token != b"AP-REP" + _mac(self.session, b"rep"):
                raise kerberos.KerberosError(kerberos.INTEGRITY, "AP-REP does not verify")
            self.peer, self.complete = self.target, True
            return b""
        key = KEYS[self.settings.keytab]
        nonce, seal, client = token[6:22], token[22:38], token[38:]
        if not token.startswith(b"AP-REQ") or _mac(key, nonce + client) != seal:
            raise kerberos.KerberosError(kerberos.INTEGRITY, "Decrypt integrity check failed")
        self.session = hashlib.sha256(key + nonce).digest()
        self.peer, self.complete = client.decode(), True
        return b"AP-REP" + _mac(self.session, b"rep")

    def require_complete(self) -> None:
        assert self.complete

    def wrap(self, data: bytes) -> bytes:
        return _mac(self.session, bytes([self.initiator]) + data) + data

    def unwrap(self, token: bytes) -> bytes:
        if _mac(self.session, bytes([not self.initiator]) + token[16:]) != token[:16]:
            raise kerberos.KerberosError(kerberos.INTEGRITY, "wrap token does not verify")
        return token[16:]


@pytest.fixture(autouse=True)
def stand_in(monkeypatch):
    monkeypatch.setattr(kerberos, "Context", StandInContext)


def run(pol_i: PeerPolicy, pol_r: PeerPolicy, tamper=lambda wire: wire):
    """A main mode between two machines; returns them and every datagram, in order."""
    i, r = main_mode.MainModeInitiator(pol_i, A, B), main_mode.MainModeResponder(pol_r, B, A)
    wires: list[bytes] = []

    def logged(step):
        def logged_step(*args):
            out = step(*args)
            wires.extend(out)
            return [tamper(w) for w in out]

        return logged_step

    for side in (i, r):
        side.receive, side.resume = logged(side.receive), logged(side.resume)
    first = i.start()
    wires.append(first)
    converse(i, r, tamper(first))
    return i, r, wires


def transform_of(wire: bytes) -> isakmp.Transform:
    return Message.decode(wire).first(isakmp.SA).proposals[0].transforms[0]


def test_main_mode_with_kerberos_carries_the_draft_payloads():
    i, r, wires = run(PeerPolicy(auth=[KERB_A]), PeerPolicy(auth=[KERB_B]))
    assert i.state == r.state == "established", (i.events, r.events)
    mm1, mm2, mm3, mm4 = (Message.decode(w) for w in wires[:4])
    offer = transform_of(wires[0])
    assert offer.attr(main_mode.AUTH_METHOD) == 65001
    assert auth.gss_id_of(offer) == "host/member-a.lab.test".encode("utf-16-le")
    assert auth.gss_id_of(transform_of(wires[1])) == "host/member-b.lab.test".encode("utf-16-le")
    for msg in (mm1, mm2):
        vids = [v.data for v in msg.all(VendorID)]
        assert auth.VID_GSSAPI in vids and auth.VID_GSS_DRAFT in vids
    for msg, kind in ((mm3, b"AP-REQ"), (mm4, b"AP-REP")):
        assert [type(p).__name__ for p in msg.payloads[:2]] == ["KE", "Nonce"]
        (token,) = msg.all(GssToken)
        assert token.data.startswith(kind)
    # the generic header names payload type 129 before the token
    assert PayloadType.GSS_TOKEN == 129 and bytes([129]) in wires[2][28:]
    assert i.sa.auth_method == r.sa.auth_method == "kerberos"
    assert i.sa.peer_identity == "host/member-b.lab.test@LAB.TEST"
    assert r.sa.peer_identity == "member-a$@LAB.TEST"
    assert i.sa.keys.ka == r.sa.keys.ka


def test_extended_hash_is_the_drafts_formula_known_answer():
    i, r, _ = run(PeerPolicy(auth=[KERB_A]), PeerPolicy(auth=[KERB_B]))
    id_i = i._identity().body()
    expected = hmac.new(
        i.keys.skeyid,
        i.gxi
        + i.gxr
        + i.icookie
        + i.rcookie
        + i.sai_b
        + id_i
        + "host/member-a.lab.test".encode("utf-16-le")
        + i.gss.sent[0],
        hashlib.sha1,
    ).digest()
    assert i._hash(True, id_i) == r._hash(True, id_i) == expected
    assert r._hash(False, id_i) != expected
    # SKEYID as for signatures: prf(Ni_b | Nr_b, g^xy)
    gxy = i.suite.group.shared_secret(i.private, i.peer_ke)
    assert i.keys.skeyid == hmac.new(i.ni + i.nr, gxy, hashlib.sha1).digest()


def test_vendor_ids_and_gss_identity_encoding_known_answers():
    assert auth.VID_GSSAPI.hex() == "621b04bb09882ac1e15935fefa24aeee"
    assert auth.VID_GSS_DRAFT.hex() == "ad2c0dd0b9c32083ccba25b8861ec455"
    assert auth.VID_GSS_DRAFT_NEWLINE.hex() == "b46d8914f3aaa3f2fedeb7c7db2943ca"
    assert auth.encode_gss_id("host/b") == b"h\0o\0s\0t\0/\0b\0"
    assert auth.decode_gss_id(b"h\0o\0s\0t\0/\0b\0") == "host/b"
    assert auth.decode_gss_id(b"host/b") == "host/b"  # old racoon's Latin-1


def strip_gss_vendor_ids(wire: bytes) -> bytes:
    msg = Message.decode(wire)
    if msg.flags & isakmp.Flag.ENCRYPTION or not msg.all(VendorID):
        return wire
    keep = [p for p in msg.payloads if not isinstance(p, VendorID) or not auth.peer_does_gss([p.data])]
    return Message(msg.icookie, msg.rcookie, msg.exchange, msg.flags, msg.message_id, keep).encode()


def test_65001_from_a_peer_without_gss_vendor_ids_is_xauth_not_kerberos():
    i, r, _ = run(PeerPolicy(auth=[KERB_A, PSK]), PeerPolicy(auth=[KERB_B, PSK]), strip_gss_vendor_ids)
    assert i.state == r.state == "established"
    assert i.sa.auth_method == r.sa.auth_method == "psk"
    i, r, _ = run(PeerPolicy(auth=[KERB_A]), PeerPolicy(auth=[KERB_B]), strip_gss_vendor_ids)
    assert r.events[0].counter == "no proposal chosen"


def test_initiator_refuses_65001_chosen_by_a_responder_without_gss_vendor_ids():
    def strip_in_mm2(wire):
        return strip_gss_vendor_ids(wire) if Message.decode(wire).rcookie != bytes(8) else wire

    i, _, _ = run(PeerPolicy(auth=[KERB_A]), PeerPolicy(auth=[KERB_B]), strip_in_mm2)
    assert i.state == "failed" and "65001 without a GSS-API vendor ID" in i.events[0].reason


def test_kerberos_first_falls_back_to_psk_with_a_peer_without_kerberos():
    i, r, wires = run(PeerPolicy(auth=[KERB_A, PSK]), PeerPolicy(auth=[PSK]))
    assert i.state == r.state == "established"
    assert i.sa.auth_method == "psk"
    methods = [
        t.attr(main_mode.AUTH_METHOD)
        for t in Message.decode(wires[0]).first(isakmp.SA).proposals[0].transforms
    ]
    assert methods == [65001, 1]  # offered in the rule's order


def test_tampered_gss_token_is_rejected_and_counted_with_its_reason():
    def tamper(wire):
        msg = Message.decode(wire)
        if not msg.all(GssToken) or not msg.first(GssToken).data.startswith(b"AP-REQ"):
            return wire
        payloads = [GssToken(p.data[:-1] + b"X") if isinstance(p, GssToken) else p for p in msg.payloads]
        return Message(msg.icookie, msg.rcookie, payloads=payloads).encode()

    i, r, _ = run(PeerPolicy(auth=[KERB_A]), PeerPolicy(auth=[KERB_B]), tamper)
    assert r.state == "failed"
    (failure,) = r.events
    assert (failure.counter, failure.cause) == ("authentication failed", kerberos.INTEGRITY)
    assert "Decrypt integrity check failed" in failure.reason
    assert i.state == "failed" and "AUTHENTICATION-FAILED" in i.events[0].reason


def test_tampered_wrapped_hash_is_rejected():
    i, r, _ = run(PeerPolicy(auth=[KERB_A]), PeerPolicy(auth=[KERB_B]))
    wrapped = i.gss.protect(b"h" * 20)
    assert r.gss.verify(wrapped, b"h" * 20) == "member-a$@LAB.TEST"
    with pytest.raises(NegotiationError) as bad:
        r.gss.verify(wrapped[:-1] + b"?", b"h" * 20)
    assert (bad.value.counter, bad.value.cause) == ("authentication failed", kerberos.INTEGRITY)
    assert bad.value.notify == isakmp.NotifyType.AUTHENTICATION_FAILED


def test_peer_target_from_its_identity_or_its_name_else_unknown_principal():
    named = Kerberos(
        keytab="k", principal="member-a$@LAB.TEST", resolve={"10.0.0.2": "member-b.lab.test"}.get
    )
    assert kerberos.peer_target(named, "10.0.0.9", "host/x.lab.test") == "host/x.lab.test@LAB.TEST"
    assert kerberos.peer_target(named, "10.0.0.2", None) == "host/member-b.lab.test@LAB.TEST"
    with pytest.raises(kerberos.KerberosError) as unnamed:
        kerberos.peer_target(named, "10.0.0.9", None)
    assert unnamed.value.reason == kerberos.UNKNOWN_PRINCIPAL


def test_default_service_name_is_host_and_the_account():
    assert KERB_A.service == "host/member-a.lab.test"
    with pytest.raises(ValueError, match="no realm"):
        Kerberos(keytab="k", principal="member-a$")


def test_mit_wrapper_says_no_credentials_for_a_missing_keytab(tmp_path, monkeypatch):
    """The real library, no KDC needed: neither side can act without its keytab, and says so."""
    (tmp_path / "krb5.conf").write_text(f"[libdefaults]\n default_realm = {REALM}\n")
    monkeypatch.setenv("KRB5_CONFIG", str(tmp_path / "krb5.conf"))
    settings = Kerberos(
        keytab=str(tmp_path / "absent.keytab"), principal="member-a$@LAB.TEST", ccache=f"FILE:{tmp_path}/cc"
    )
    for initiator, token in ((True, None), (False, b"\x60\x03\x06\x01\x00")):
        with pytest.raises(kerberos.KerberosError) as failed:
            MIT_CONTEXT(settings, initiator, "host/member-b.lab.test@LAB.TEST").step(token)
        assert failed.value.reason == kerberos.NO_CREDENTIALS, failed.value


# --- the IKE component: the ticket fetch off the event loop, failures counted with their reason -------


def test_component_hands_the_ticket_fetch_out_and_sends_main_mode_3_when_it_is_done():
    handed: list = []
    _, net, (ike_a, _), (ike_b, _), rule = pair(PeerPolicy(auth=[KERB_A]), PeerPolicy(auth=[KERB_B]))
    ike_a._run_blocking = lambda work, then: handed.append((work, then))
    ike_a.acquire(rule, host(CA_A), host(CA_B), CA_B)
    net.run()
    assert len(handed) == 1 and len(net.log) == 2  # main mode 1 and 2; main mode 3 waits for the ticket
    (ex,) = ike_a.pending_main.values()
    assert ex.machine.state == "MM2 received" and ex.timer is None  # no retransmission of 1 meanwhile
    work, then = handed[0]
    work()
    then(None)
    net.run()
    assert [sa["authentication"] for sa in ike_a.main_mode_sas() + ike_b.main_mode_sas()] == ["kerberos"] * 2
    assert ike_b.main_mode_sas()[0]["peer identity"] == "member-a$@LAB.TEST"


def test_component_counts_a_tampered_token_once_under_its_reason():
    _, net, (ike_a, _), (ike_b, _), rule = pair(PeerPolicy(auth=[KERB_A]), PeerPolicy(auth=[KERB_B]))
    sent = net.send

    def tamper(data, src, dst):
        msg = Message.decode(data[4:] if data[:4] == bytes(4) else data)
        token = msg.first(GssToken)
        if token is not None and token.data.startswith(b"AP-REQ"):
            payloads = [GssToken(p.data[:-1] + b"X") if p is token else p for p in msg.payloads]
            data = Message(msg.icookie, msg.rcookie, payloads=payloads).encode()
        sent(data, src, dst)

    net.send = tamper
    ike_a.acquire(rule, host(CA_A), host(CA_B), CA_B)
    net.run()
    assert not ike_a.main_mode_sas() and not ike_b.main_mode_sas()
    assert ike_b.counters["Authentication Failures"] == 1
    assert ike_b.counters["Authentication Failures: integrity check failed"] == 1
    assert ike_a.counters["Authentication Failures"] == 1  # told by AUTHENTICATION-FAILED
    assert any("Decrypt integrity check failed" in text for _, text in ike_b.events)


def test_event_loop_runs_while_a_ticket_is_fetched(monkeypatch):
    """Over real sockets: the initiator's first GSS step blocks until the event loop itself releases it,
    which it can only do if the step runs off the loop (inline it would wait out its 5 s and fail)."""
    released = threading.Event()

    class SlowKdc(StandInContext):
        def step(self, token):
            if self.initiator and token is None and not released.wait(5):
                raise kerberos.KerberosError(kerberos.KDC_UNREACHABLE, "the event loop was blocked")
            return super().step(token)

    monkeypatch.setattr(kerberos, "Context", SlowKdc)

    async def main():
        loop = asyncio.get_running_loop()
        loop.call_later(0.2, released.set)  # runs only if the loop is free while the step waits
        return await run_pair(PeerPolicy(auth=[KERB_A]), PeerPolicy(auth=[KERB_B]))

    added_a, added_b, counters_a, *_ = asyncio.run(main())
    assert added_a and added_b, counters_a
    assert added_b[0].isakmp_sa.peer_identity == "member-a$@LAB.TEST"


# --- policy: the predefined policies as shipped, Kerberos from the node configuration --------------------


def test_predefined_policies_as_shipped_authenticate_with_the_nodes_kerberos():
    for name in ("client", "server", "secure server"):
        policy = predefined(name)
        settings = ike_settings(policy, expand_rules(policy, [IPv4Address("10.0.0.1")]), kerberos=KERB_A)
        assert settings.rules and not settings.warnings, settings.warnings
        assert all(rule.policy.auth == [KERB_A] for rule in settings.rules)


def test_predefined_policy_without_kerberos_settings_says_the_node_is_not_a_member():
    policy = predefined("secure server")
    settings = ike_settings(policy, expand_rules(policy, [IPv4Address("10.0.0.1")]))
    assert not settings.rules
    assert any("no ike.kerberos (keytab, principal)" in w for w in settings.warnings)


def test_node_configuration_names_the_computer_account():
    cfg = config.parse(
        "policy: {store: policies}\n"
        "ike:\n"
        "  kerberos: {keytab: /etc/ipsec-lab/member-a.keytab, principal: member-a$@LAB.TEST,\n"
        "             kdc_timeout_seconds: 3}\n",
        "/etc/ipsecd/ipsecd.yaml",
    )
    kerb = cfg.ike.kerberos
    assert (kerb.keytab, kerb.principal, kerb.service, kerb.kdc_timeout) == (
        "/etc/ipsec-lab/member-a.keytab", "member-a$@LAB.TEST", "host/member-a.lab.test", 3.0)
    with pytest.raises(config.ConfigError, match=r"ipsecd.yaml:3: ike.kerberos.principal: .* no realm"):
        config.parse("policy: {store: p}\nike:\n  kerberos: {keytab: k, principal: member-a$}\n")
    with pytest.raises(config.ConfigError, match=r"ike.kerberos.keytab: missing"):
        config.parse("policy: {store: p}\nike:\n  kerberos: {principal: member-a$@LAB.TEST}\n")
