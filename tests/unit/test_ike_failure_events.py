"""IKE failure events say what a Windows administrator looks for in Event 547 and the Oakley log: the mode,
the filter, the peer's identity, who failed (me or the peer) and the reason in Windows' words, then the
detail. One test per kind of failure, over the in-memory network of test_ike_component."""

import dataclasses

import pytest
from test_ike_component import PSK, A, B, host, negotiate, pair

from ipsecd.ike import events, informational
from ipsecd.ike.isakmp import Message, NotifyType
from ipsecd.ike.settings import IKERule, MainModeOffer, PeerPolicy, PreSharedKey, QuickModeOffer, Selector

MM = "Mode: Key Exchange Mode (Main Mode)"
QM = "Mode: Data Protection Mode (Quick Mode)"


def failures(ike) -> list[str]:
    return [text for _, text in ike.events if text.startswith(("main mode with", "quick mode with"))
            and " failed: " in text]


def only_failure(ike) -> str:
    (text,) = failures(ike)
    return text


def test_no_response_from_peer():
    clock, net, (ike_a, _), _, rule = pair(PSK)
    net.drop = lambda src, dst, data: dst[0] == B
    ike_a.acquire(rule, host(A), host(B), B)
    net.run()
    clock.advance(200, net)
    assert only_failure(ike_a).startswith(
        f"main mode with {B} failed: No response from peer. {MM}. Filter: {A} <-> {B} (rule to-b). "
        f"Peer Identity: pre-shared key (offered), peer IP address {B}. Failure Point: Me. "
        f"Detail: no answer from {B}")


def test_wrong_pre_shared_key_at_both_ends():
    lab = negotiate(PSK, PeerPolicy(auth=[PreSharedKey(b"other")]))
    lab.clock.advance(1, lab.net)
    responder = only_failure(lab.ike_b)
    assert responder.startswith(
        f"main mode with {A} failed: IKE authentication credentials are unacceptable. {MM}. "
        f"Filter: {B} <-> {A} (rule to-a). Peer Identity: pre-shared key, peer IP address {A}. "
        "Failure Point: Me. Detail: ")
    # the parser's finding comes after its meaning, in words
    detail = responder.split("Detail: ")[1]
    assert "(pre-shared keys differ?)" in detail and "malformed message (" in detail
    assert not responder.endswith("characters)")  # the detail is cut, not the event
    assert only_failure(lab.ike_a).startswith(
        f"main mode with {B} failed: IKE authentication credentials are unacceptable. {MM}. "
        f"Filter: {A} <-> {B} (rule to-b). Peer Identity: pre-shared key, peer IP address {B}. "
        "Failure Point: Peer. Detail: peer 10.0.0.2 refused main mode: AUTHENTICATION-FAILED")


def test_main_mode_proposal_mismatch():
    policy_b = PeerPolicy(auth=[PreSharedKey(b"k")], main_mode=[MainModeOffer("aes-cbc-128", "sha256", 14)])
    lab = negotiate(PSK, policy_b)
    assert only_failure(lab.ike_b).startswith(
        f"main mode with {A} failed: IKE security attributes are unacceptable. {MM}. Filter: {B} <-> {A} "
        f"(rule to-a). Peer Identity: not yet known, peer IP address {A}. Failure Point: Me. "
        "Detail: no proposal chosen: peer 10.0.0.1 offered 3DES/SHA1/group 2/PSK")
    assert "IKE security attributes are unacceptable" in only_failure(lab.ike_a)
    assert "Failure Point: Peer. Detail: peer 10.0.0.2 refused main mode: NO-PROPOSAL-CHOSEN" in (
        only_failure(lab.ike_a))


def test_quick_mode_proposal_mismatch_names_the_filter():
    policy_b = PeerPolicy(auth=[PreSharedKey(b"k")], quick_mode=[QuickModeOffer("ah", None, "hmac-md5-96")])
    lab = negotiate(PSK, policy_b)
    assert only_failure(lab.ike_b).startswith(
        f"quick mode with {A} failed: IKE security attributes are unacceptable. {QM}. "
        f"Filter: {B}/32 <-> {A}/32. Peer Identity: pre-shared key {A}, peer IP address {A}. "
        "Failure Point: Me. Detail: no proposal chosen")
    assert only_failure(lab.ike_a).startswith(
        f"quick mode with {B} failed: IKE security attributes are unacceptable. {QM}. "
        f"Filter: {A}/32 <-> {B}/32 (rule to-b). Peer Identity: pre-shared key {B}, peer IP address {B}. "
        "Failure Point: Peer. Detail: peer 10.0.0.2 refused quick mode: NO-PROPOSAL-CHOSEN")


def test_traffic_no_rule_of_the_responder_covers():
    _, net, (ike_a, _), (ike_b, _), rule = pair(PSK)
    ike_b.load_policy([IKERule("to-a web", PSK, Selector(host(B).network, 6, 80), host(A))])
    ike_a.acquire(rule, Selector(host(A).network, 17), Selector(host(B).network, 17, 53), B)
    net.run()
    assert only_failure(ike_b).startswith(
        f"quick mode with {A} failed: No policy configured. {QM}. Filter: {B}/32 proto 17 port 53 <-> "
        f"{A}/32 proto 17. Peer Identity: pre-shared key {A}, peer IP address {A}. Failure Point: Me.")
    assert "No policy configured" in only_failure(ike_a) and "Failure Point: Peer" in only_failure(ike_a)


def test_a_peer_no_rule_covers():
    _, net, (ike_a, _), (ike_b, _), rule = pair(PSK)
    ike_b.load_policy([IKERule("elsewhere", PSK, host(B), Selector.parse("192.0.2.0/24"))])
    ike_a.acquire(rule, host(A), host(B), B)
    net.run()
    assert only_failure(ike_b) == (
        f"main mode with {A} failed: No policy configured. {MM}. Filter: {B} <-> {A}. "
        f"Peer Identity: not yet known, peer IP address {A}. Failure Point: Me. "
        f"Detail: main mode from {A} refused: no rule covers this peer")
    assert ike_b.counters["Negotiation Failures: no policy for peer"] == 1


@pytest.mark.parametrize(("counter", "notify", "words"), [
    ("authentication failed", NotifyType.INVALID_SIGNATURE, "Failed to verify signature"),
    ("authentication failed", NotifyType.INVALID_HASH_INFORMATION, "Invalid hash"),
    ("malformed message", NotifyType.INVALID_HASH_INFORMATION, "Invalid payload received"),  # no HASH at all
    ("authentication failed", NotifyType.INVALID_CERT_AUTHORITY, "IKE authentication credentials are "
                                                                 "unacceptable"),
    ("malformed message", NotifyType.PAYLOAD_MALFORMED, "Invalid payload received"),
    ("invalid selectors", NotifyType.INVALID_ID_INFORMATION, "No policy configured"),
    ("negotiation failed", None, "General processing error"),
])
def test_every_notify_and_counter_has_windows_words(counter, notify, words):
    assert events.NegotiationError("detail", notify, counter).windows == words


def test_a_refusal_from_the_peer_is_the_peers_failure_point():
    from ipsecd.ike.isakmp import Notify, ProtocolID

    with pytest.raises(events.NegotiationError) as refused:
        events.refusal(Notify(NotifyType.INVALID_SIGNATURE, ProtocolID.ISAKMP, b""), "main mode", B)
    assert (refused.value.point, refused.value.windows) == ("peer", "Failed to verify signature")


def test_a_malformed_datagram_is_said_in_words_before_the_parser_detail():
    lab = negotiate()
    first = bytearray(lab.net.log[0][3])
    first[30:32] = (22315).to_bytes(2, "big")  # the SA payload's length, far past the end
    lab.ike_b.datagram_received(bytes(first), (A, 500), 500)
    text = [t for _, t in lab.ike_b.events if "malformed" in t][-1]
    assert "malformed message (invalid payload length): SA at offset 28: payload length 22315 with" in text
    with pytest.raises(ValueError, match=r"^malformed message \(invalid payload length\)"):
        Message.decode(bytes(first))


def main_mode_6_lost():
    """A waits in "MM5 sent" (main mode 6 lost); B has the keys. Returns the clock, the network, A, B's main
    mode SA and main mode 5 as A sent it."""
    clock, net, (ike_a, _), (ike_b, _), rule = pair(PSK)
    net.drop = lambda src, dst, data: src[0] == B and len([d for _, s, _, d in net.log if s[0] == B]) >= 3
    ike_a.acquire(rule, host(A), host(B), B)
    net.run()
    (established,) = [entry.sa for entry in ike_b.main_modes.values()]
    return clock, net, ike_a, established, [d for _, s, _, d in net.log if s[0] == A][2]


def test_an_encrypted_refusal_of_main_mode_5_ends_the_negotiation_at_once():
    """strongSwan refuses main mode 5 (no configuration accepts our identity) with an informational HASH +
    N(AUTHENTICATION-FAILED) under the main mode keys, its IV from main mode 5's last block: the initiator
    reads the refusal (Failure Point: Peer) instead of dropping it as unexpected and retransmitting main
    mode 5 for a minute to a peer that has forgotten the exchange."""
    clock, net, ike_a, established, mm5 = main_mode_6_lost()
    refusing = dataclasses.replace(established, last_block=mm5[-established.suite.cipher.block_size:])
    ike_a.datagram_received(informational.notify(refusing, NotifyType.AUTHENTICATION_FAILED), (B, 500), 500)
    assert only_failure(ike_a).startswith(
        f"main mode with {B} failed: IKE authentication credentials are unacceptable. {MM}. "
        f"Filter: {A} <-> {B} (rule to-b). Peer Identity: pre-shared key, peer IP address {B}. "
        f"Failure Point: Peer. Detail: peer {B} refused main mode: AUTHENTICATION-FAILED")
    assert ike_a.counters["Authentication Failures"] == 1 and not ike_a.pending_main
    clock.advance(100, net)
    assert ike_a.counters["Retransmissions"] == 0


def test_an_encrypted_informational_that_does_not_verify_is_dropped_and_counted():
    _, _, ike_a, established, _ = main_mode_6_lost()
    wrong_iv = informational.notify(established, NotifyType.AUTHENTICATION_FAILED)  # MM6's block, not MM5's
    ike_a.datagram_received(wrong_iv, (B, 500), 500)
    assert not failures(ike_a) and ike_a.counters["Malformed Packets"] == 1
    assert ike_a.pending_main  # still waiting for main mode 6
