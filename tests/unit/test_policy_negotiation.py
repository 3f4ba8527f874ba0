"""Two nodes in one process: each a Policy Agent feeding the real IPsec driver and the real IKE component,
IKE talking over an in-memory network with a manual clock. What a predefined policy does against a peer
running another one, or nothing at all (the lab repeats these on the wire)."""

import dataclasses
from ipaddress import IPv4Address

import pytest
from scapy.layers.inet import IP, TCP

from ipsecd.driver.driver import IPsecDriver, RecordingWire
from ipsecd.driver.spd import SPD
from ipsecd.ike import natt
from ipsecd.ike.component import IKE
from ipsecd.policy.agent import Negotiator, PolicyAgent
from ipsecd.policy.model import AuthKind, AuthMethod
from ipsecd.policy.predefined import predefined
from ipsecd.policy.soft_association import SoftAssociations
from ipsecd.policy.store import LocalStore
from tests.unit.test_ike_component import ManualClock
from tests.vectors.pki import CA

A, B = "10.0.0.1", "10.0.0.2"


def psk(key: str = "lab"):
    return (AuthMethod(AuthKind.PRESHARED_KEY, psk=key),)


class IKEKeys:
    """IKE's driver side: the quick mode results (the daemon turns them into the driver's SAs)."""

    def __init__(self):
        self.added = []

    def add_inbound(self, done):
        pass

    def add_sa(self, done):
        self.added.append(done)

    def delete_sa(self, spi, destination, protocol):
        pass


class Node:
    def __init__(self, address, policy, clock, network, tmp_path, certificate_for=None):
        store = LocalStore(tmp_path / address)
        store.assign(store.save(policy))
        self.keys = IKEKeys()
        self.ike = IKE(address, self.keys, clock=clock, send_4500=lambda d, a: None)
        self.ike.sender = lambda data, addr, port: network.send(natt.frame(data, port), (address, port), addr)
        self.wire = RecordingWire()
        self.driver = IPsecDriver(SPD(), wire=self.wire, ike=self, clock=clock.time)
        addresses = [IPv4Address(address)]
        self.agent = PolicyAgent(store, self.driver, self.ike, lambda: addresses, clock=clock.time,
                                 certificate_for=certificate_for)
        self.negotiator = Negotiator(self.agent, self.ike, self.driver, SoftAssociations(timeout=3.0))
        self.agent.apply()

    # the driver's IKE hooks, as the daemon wires them
    def acquire(self, f, selector):
        self.negotiator.acquire(f, selector)

    def expire(self, sa, hard):
        pass

    def datagram_4500(self, data, addr):
        pass

    def clear_tcp_sent(self):
        return [p for p, _ in self.wire.sent if IP(p).haslayer(TCP)]


class Network:
    def __init__(self):
        self.nodes, self.queue = {}, []

    def send(self, data, src, dst):
        self.queue.append((data, src, dst))

    def run(self):
        while self.queue:
            data, src, dst = self.queue.pop(0)
            node = self.nodes.get(dst[0])
            if node is None:
                continue  # no IPsec there: nothing answers
            node.negotiator.peer_answered(src[0])
            node.ike.datagram_received(data, src, dst[1])


class Lab:
    """Nodes on one network; an address with no node is a computer without IPsec (it never answers IKE)."""

    def __init__(self, tmp_path):
        self.clock, self.network, self.tmp_path = ManualClock(), Network(), tmp_path

    def node(self, address, policy, certificate_for=None):
        self.network.nodes[address] = Node(address, policy, self.clock, self.network, self.tmp_path,
                                           certificate_for)
        return self.network.nodes[address]

    def run(self, seconds=0):
        self.network.run()
        self.clock.advance(seconds, self.network)


@pytest.fixture
def lab(tmp_path):
    return Lab(tmp_path)


SYN = bytes(IP(src=A, dst=B) / TCP(sport=40000, dport=445, flags="S"))


def test_secure_server_against_client_respond_only_is_secured(lab):
    server = lab.node(A, predefined("secure server", authentication=psk()))
    client = lab.node(B, predefined("client", authentication=psk()))
    server.driver.outbound(SYN)
    lab.run()
    (mine,), (theirs,) = server.keys.added, client.keys.added
    assert mine.offer.describe() == "ESP[3DES,SHA1]" and mine.lifetime_seconds == 900
    assert (mine.outbound.spi, mine.inbound.spi) == (theirs.inbound.spi, theirs.outbound.spi)
    assert [e.rule.name for e in client.ike.quick_modes.values()] == ["<Dynamic> default response"]
    assert server.clear_tcp_sent() == []


def test_certificates_issued_by_the_named_ca_authenticate(lab):
    ca = CA("Lab Root CA")
    by_certificate = (AuthMethod(AuthKind.CERTIFICATE, ca="CN=Lab Root CA"),)

    def credentials(node_name):
        def certificate_for(ca_name):
            assert ca_name == "CN=Lab Root CA"
            return ca.credentials(node_name)
        return certificate_for

    server = lab.node(A, predefined("secure server", authentication=by_certificate), credentials("host-a"))
    client = lab.node(B, predefined("client", authentication=by_certificate), credentials("host-b"))
    server.driver.outbound(SYN)
    lab.run()
    assert len(server.keys.added) == len(client.keys.added) == 1


def test_request_security_against_a_node_without_ipsec_falls_back_to_clear(lab):
    server = lab.node(A, predefined("server", authentication=psk()))
    server.driver.outbound(SYN)
    lab.run()
    assert server.clear_tcp_sent() == []  # first it asks for security
    lab.run(5)
    server.driver.outbound(SYN)  # the driver asks again: the peer never answered, so a soft association
    assert server.clear_tcp_sent() == [SYN]
    server.driver.outbound(SYN)
    assert len(server.clear_tcp_sent()) == 2 and server.driver.counters["soft_association_packets"] == 1
    assert server.negotiator.soft.count == 1
    assert server.agent.events[-1].kind == "soft-association"


def test_require_security_against_a_node_without_ipsec_lets_nothing_through(lab):
    server = lab.node(A, predefined("secure server", authentication=psk()))
    for _ in range(12):  # a minute of retries
        server.driver.outbound(SYN)
        lab.run(5)
    assert server.clear_tcp_sent() == [] and server.negotiator.soft.count == 0
    assert server.keys.added == []


def test_request_security_never_falls_back_once_the_peer_answered(lab):
    server = lab.node(A, predefined("server", authentication=psk()))
    lab.node(B, predefined("client", authentication=psk("another key")))  # answers IKE, fails to authenticate
    for _ in range(12):
        server.driver.outbound(SYN)
        lab.run(5)
    assert server.clear_tcp_sent() == [] and server.negotiator.soft.count == 0
    assert server.keys.added == []


def test_a_refresh_that_changes_the_action_touches_only_that_rule(lab):
    server = lab.node(A, predefined("secure server", authentication=psk()))
    lab.node(B, predefined("client", authentication=psk()))
    server.driver.outbound(SYN)
    lab.run()
    store = server.agent.store
    ref = store.assigned_policy()
    policy = store.load(ref)
    rule = policy.rules[0]
    weaker = dataclasses.replace(rule.filter_action, security_methods=rule.filter_action.security_methods[2:])
    store.save(dataclasses.replace(policy, rules=(dataclasses.replace(rule, filter_action=weaker),
                                                   *policy.rules[1:])))
    change = server.agent.refresh()
    assert change.touched_rules == {"All IP Traffic"} and change.touched_filters == {"All IP Traffic/all ip"}
    # what the daemon deletes: the quick modes negotiated under those filters' IKE rules
    assert {e.rule.name for e in server.ike.quick_modes.values()} <= change.touched_filters
