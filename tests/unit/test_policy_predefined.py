"""The predefined policies behave as the documents say, and soft associations follow Windows' rule."""

import uuid
from ipaddress import IPv4Address

import pytest
from scapy.layers.inet import ICMP, IP, TCP

from ipsecd.driver import spd
from ipsecd.policy.expand import expand
from ipsecd.policy.ike_settings import ike_settings
from ipsecd.policy.model import AuthKind, AuthMethod, MainModeMethod
from ipsecd.policy.predefined import all_predefined, predefined
from ipsecd.policy.soft_association import SoftAssociations, Verdict

ME = [IPv4Address("10.0.0.1")]
PSK = (AuthMethod(AuthKind.PRESHARED_KEY, psk="lab"),)


def hit(policy, packet, direction=spd.Direction.OUTBOUND):
    return spd.SPD(expand(policy, ME)).lookup(spd.PacketSelector.parse(bytes(packet)), direction)


def test_windows_identities_and_key_exchange_defaults():
    guids = {p.name: p.guid for p in all_predefined()}
    assert guids == {
        "Client (Respond Only)": uuid.UUID("72385236-70fa-11d1-864c-14a300000000"),
        "Server (Request Security)": uuid.UUID("72385230-70fa-11d1-864c-14a300000000"),
        "Secure Server (Require Security)": uuid.UUID("7238523c-70fa-11d1-864c-14a300000000"),
    }
    for p in all_predefined():
        assert p.polling_interval == 180 * 60
        assert p.key_exchange.lifetime_seconds == 480 * 60 and not p.key_exchange.master_key_pfs
        assert p.key_exchange.methods[0] == MainModeMethod("3des-cbc", "sha1", 2)
        assert p.default_response and p.default_response.active
        assert all(a.kind is AuthKind.KERBEROS for r in p.rules for a in r.authentication)


def test_client_respond_only_has_only_the_default_response_rule():
    client = predefined("Client (Respond Only)")
    assert client.rules == () and expand(client, ME) == []
    settings = ike_settings(predefined("client", authentication=PSK), {})
    (response,) = settings.rules
    assert response.name == "<Dynamic> default response" and len(response.policy.quick_mode) == 6
    assert [o.protocol for o in response.policy.quick_mode] == ["esp"] * 4 + ["ah"] * 2
    assert hit(client, IP(src="10.0.0.1", dst="10.0.0.2") / TCP()) is None  # clear unless asked


def test_server_requests_security_accepts_unsecured_and_falls_back():
    server = predefined("server")
    tcp = hit(server, IP(src="10.0.0.1", dst="10.0.0.2") / TCP(dport=445))
    assert tcp.action.action is spd.Action.NEGOTIATE
    assert tcp.action.accept_unsecured and tcp.action.fallback_to_clear
    inbound = hit(server, IP(src="10.0.0.2", dst="10.0.0.1") / TCP(dport=445), spd.Direction.INBOUND)
    assert inbound.action.accept_unsecured  # an unsecured request gets in; the answer asks for IPsec
    assert hit(server, IP(src="10.0.0.1", dst="10.0.0.2") / ICMP()).action.action is spd.Action.PERMIT
    offers = server.rules[0].filter_action.security_methods
    assert [m.uses_esp for m in offers] == [True, True, False, False]  # ESP first, then AH


def test_secure_server_requires_security_and_never_falls_back():
    secure = predefined("secure server")
    tcp = hit(secure, IP(src="10.0.0.1", dst="10.0.0.2") / TCP(dport=445))
    assert tcp.action.action is spd.Action.NEGOTIATE and not tcp.action.fallback_to_clear
    assert tcp.action.accept_unsecured
    assert all(m.esp_encryption for m in tcp.action.security_methods)  # confidentiality always
    assert hit(secure, IP(src="10.0.0.1", dst="10.0.0.2") / ICMP()).action.action is spd.Action.PERMIT


def test_other_authentication_replaces_kerberos_everywhere():
    secure = predefined("secure server", authentication=PSK)
    assert all(r.authentication == PSK for r in secure.rules)
    assert secure.default_response.authentication == PSK
    assert secure.guid == predefined("secure server").guid


def test_unknown_predefined_name():
    with pytest.raises(KeyError, match="the predefined policies are"):
        predefined("lockdown")


REQUEST = predefined("server").rules[0].filter_action.to_spd()
REQUIRE = predefined("secure server").rules[0].filter_action.to_spd()


def test_silent_peer_gets_a_soft_association_when_the_action_allows_it():
    soft = SoftAssociations(timeout=3.0)
    soft.negotiation_started(IPv4Address("10.0.0.2"), now=10.0)
    soft.negotiation_started(IPv4Address("10.0.0.2"), now=12.0)  # retransmission: the clock keeps its start
    assert soft.verdict("10.0.0.2", REQUEST, now=12.9) is Verdict.WAIT
    assert soft.verdict("10.0.0.2", REQUEST, now=13.0) is Verdict.CLEAR
    assert soft.verdict("10.0.0.2", REQUEST, now=14.0) is Verdict.CLEAR
    assert soft.count == 1 and soft.is_soft("10.0.0.2")


def test_silent_peer_gets_nothing_under_require_security():
    soft = SoftAssociations(timeout=3.0)
    soft.negotiation_started("10.0.0.3", now=0.0)
    assert soft.verdict("10.0.0.3", REQUIRE, now=60.0) is Verdict.DROP
    assert soft.count == 0


def test_a_peer_that_answered_ike_never_falls_back():
    soft = SoftAssociations(timeout=3.0)
    soft.negotiation_started("10.0.0.4", now=0.0)
    soft.peer_answered("10.0.0.4")
    assert soft.verdict("10.0.0.4", REQUEST, now=600.0) is Verdict.WAIT
    assert soft.count == 0


def test_an_expired_soft_association_negotiates_again():
    soft = SoftAssociations(timeout=3.0)
    soft.negotiation_started("10.0.0.5", now=0.0)
    assert soft.verdict("10.0.0.5", REQUEST, now=5.0) is Verdict.CLEAR
    soft.expire("10.0.0.5")
    assert soft.verdict("10.0.0.5", REQUEST, now=305.0) is Verdict.WAIT  # nothing sent yet
    soft.negotiation_started("10.0.0.5", now=305.0)
    soft.peer_answered("10.0.0.5")  # it runs IPsec now
    assert soft.verdict("10.0.0.5", REQUEST, now=400.0) is Verdict.WAIT and not soft.is_soft("10.0.0.5")
    assert soft.count == 1
