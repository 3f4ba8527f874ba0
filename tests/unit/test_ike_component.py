"""The IKE component over an in-memory network and a manual clock.

Retransmission, duplicates, NAT-T with port rewriting, keepalives, lifetimes and rekey, deletes, counters.
(test_ike_loopback.py runs the same component over real sockets.)
"""

import dataclasses
import errno
import heapq
import itertools
import json
import os
from dataclasses import dataclass

import pytest

from ipsecd.ike import informational, isakmp, natt
from ipsecd.ike.component import IKE, RETRANSMIT_BACKOFF
from ipsecd.ike.settings import IKERule, MainModeOffer, PeerPolicy, PreSharedKey, QuickModeOffer, Selector
from tests.unit.test_ike_exchanges import mirrored


class ManualClock:
    def __init__(self):
        self.now, self.queue, self.seq = 0.0, [], itertools.count()

    def time(self):
        return self.now

    def call_later(self, delay, callback):
        handle = Handle(callback)
        heapq.heappush(self.queue, (self.now + delay, next(self.seq), handle))
        return handle

    def advance(self, seconds, network):
        end = self.now + seconds
        while self.queue and self.queue[0][0] <= end:
            when, _, handle = heapq.heappop(self.queue)
            self.now = when
            if not handle.cancelled:
                handle.callback()
            network.run()
        self.now = end


class Handle:
    def __init__(self, callback):
        self.callback, self.cancelled = callback, False

    def cancel(self):
        self.cancelled = True


class RecordingDriver:
    def __init__(self):
        self.added, self.deleted, self.inbound_added = [], [], []

    def add_inbound(self, sa):
        self.inbound_added.append(sa)

    def add_sa(self, sa):
        self.added.append(sa)

    def delete_sa(self, spi, destination, protocol):
        self.deleted.append((spi, destination, protocol))


class Network:
    """Delivers datagrams between IKE instances; optionally a NAT rewriting one node's address and ports."""

    def __init__(self, clock):
        self.nodes, self.queue, self.log, self.clock = {}, [], [], clock
        self.drop = lambda src, dst, data: False
        self.nat = None  # (private address, public address)
        self.mappings = {}

    def attach(self, address, policy_rules, **kw):
        driver = RecordingDriver()
        ike = IKE(
            address,
            driver,
            clock=self.clock,
            send_4500=lambda d, a, s=address: self.send(d, (s, 4500), a),
            **kw,
        )
        ike.sender = lambda d, a, port, s=address: self.send(natt.frame(d, port), (s, port), a)
        ike.load_policy(policy_rules)
        self.nodes[address] = (ike, driver)
        return ike, driver

    def send(self, data, src, dst):
        if self.nat and src[0] == self.nat[0]:
            port = self.mappings.setdefault(src, 40000 + len(self.mappings) * 7)
            src = (self.nat[1], port)
        if self.nat and dst[0] == self.nat[1]:
            dst = next(private for private, port in self.mappings.items() if port == dst[1])
        self.queue.append((data, src, dst))

    def run(self):
        while self.queue:
            data, src, dst = self.queue.pop(0)
            self.log.append((self.clock.now, src, dst, data))
            if self.drop(src, dst, data) or dst[0] not in self.nodes:
                continue
            ike = self.nodes[dst[0]][0]
            if dst[1] == 4500:
                ike.datagram_4500(data, src)
            else:
                ike.datagram_received(data, src, dst[1])


A, B = "10.0.0.1", "10.0.0.2"


def host(address):
    return Selector.parse(f"{address}/32")


def pair(policy_a, policy_b=None, address_a=A, address_b=B):
    clock = ManualClock()
    net = Network(clock)
    rule_a = IKERule("to-b", policy_a, host(address_a), Selector.parse("10.0.0.0/8"))
    rule_b = IKERule("to-a", policy_b or policy_a, host(address_b), Selector.parse("0.0.0.0/0"))
    a = net.attach(address_a, [rule_a])
    b = net.attach(address_b, [rule_b])
    return clock, net, a, b, rule_a


PSK = PeerPolicy(auth=[PreSharedKey(b"k")])


@dataclass
class Lab:
    clock: ManualClock
    net: Network
    ike_a: IKE
    drv_a: RecordingDriver
    ike_b: IKE
    drv_b: RecordingDriver
    rule: IKERule


def negotiate(policy_a=PSK, policy_b=None, **kw) -> Lab:
    clock, net, (ike_a, drv_a), (ike_b, drv_b), rule = pair(policy_a, policy_b, **kw)
    ike_a.acquire(rule, host(A), host(B), B)
    net.run()
    return Lab(clock, net, ike_a, drv_a, ike_b, drv_b, rule)


def test_acquire_negotiates_and_installs_matching_sas():
    lab = negotiate()
    assert len(lab.drv_a.added) == len(lab.drv_b.added) == 1
    sa_a, sa_b = lab.drv_a.added[0], lab.drv_b.added[0]
    assert mirrored(sa_a, sa_b)
    assert sa_a.inbound.dst == A and sa_a.outbound.dst == B
    assert len(lab.net.log) == 9  # 6 main mode + 3 quick mode messages
    for ike in (lab.ike_a, lab.ike_b):
        assert ike.counters["Oakley Main Modes"] == 1 and ike.counters["Oakley Quick Modes"] == 1
        assert ike.counters["Key Additions"] == 2
    assert lab.ike_a.main_mode_sas()[0]["algorithms"] == "3DES/SHA1/group 2"
    assert lab.ike_b.quick_mode_sas()[0]["security method"] == "ESP[3DES,SHA1]"
    status = json.loads(json.dumps(lab.ike_b.status()))  # what ipsecctl gets over the control socket
    assert status["counters"]["Oakley Quick Modes"] == 1 and status["main mode SAs"][0]["role"] == "responder"
    assert any("established" in text for _, text in lab.ike_a.events)


def drop_after(count: int, src_address: str):
    """A network filter that lets `count` datagrams from `src_address` through and drops the rest."""
    seen = []

    def drop(src, dst, data):
        if src[0] != src_address:
            return False
        seen.append(data)
        return len(seen) > count

    return drop


def test_the_responder_installs_its_inbound_sas_as_quick_mode_2_leaves():
    """The initiator sends on its new SAs right after quick mode 3; that ESP must not beat QM3 to an SA."""
    clock, net, (ike_a, drv_a), (ike_b, drv_b), rule = pair(PSK)
    net.drop = drop_after(4, A)  # MM1, MM3, MM5, QM1: every QM3 is lost
    ike_a.acquire(rule, host(A), host(B), B)
    net.run()
    (ready,) = drv_b.inbound_added
    assert drv_b.added == [] and len(drv_a.added) == 1  # the initiator has both, the responder inbound
    assert mirrored(drv_a.added[0], ready)
    clock.advance(200, net)  # QM2 retransmitted, every QM3 lost: the quick mode fails
    assert drv_b.added == [] and ike_b.counters["Negotiation Failures: no response"] == 1
    assert {(spi, dst) for spi, dst, _ in drv_b.deleted} == {(c.spi, c.dst) for c in ready.inbound.chain()}


def test_the_initiators_refusal_after_quick_mode_2_ends_the_responders_quick_mode():
    """strongSwan, as initiator, sends NO-PROPOSAL-CHOSEN naming its SPI instead of quick mode 3 when it
    cannot install the SAs quick mode 2 agreed (libipsec: transport mode, AH): the responder fails the quick
    mode at once (Failure Point: Peer) and removes its inbound SAs, rather than retransmitting quick mode 2
    for a minute and then saying the peer never answered."""
    clock, net, (ike_a, drv_a), (ike_b, drv_b), rule = pair(PSK)
    net.drop = drop_after(4, A)  # MM1, MM3, MM5, QM1: A's quick mode 3 never leaves
    ike_a.acquire(rule, host(A), host(B), B)
    net.run()
    (ready,) = drv_b.inbound_added
    (sa_a,) = [entry.sa for entry in ike_a.main_modes.values()]
    spi_a = drv_a.added[0].inbound.spi.to_bytes(4, "big")
    refusal = informational.notify(sa_a, isakmp.NotifyType.NO_PROPOSAL_CHOSEN, isakmp.ProtocolID.ESP, spi_a)
    ike_b.datagram_received(refusal, (A, 500), 500)
    failed = [t for _, t in ike_b.events if t.startswith("quick mode with")]
    assert len(failed) == 1
    assert f"Failure Point: Peer. Detail: peer {A} refused quick mode: NO-PROPOSAL-CHOSEN" in failed[0]
    assert ike_b.counters["Negotiation Failures: no proposal chosen"] == 1
    assert {(spi, dst) for spi, dst, _ in drv_b.deleted} == {(c.spi, c.dst) for c in ready.inbound.chain()}
    clock.advance(100, net)
    assert ike_b.counters["Retransmissions"] == 0 and drv_b.added == []


def test_a_completed_quick_mode_adds_the_responders_outbound_to_the_inbound_it_has():
    lab = negotiate()
    (ready,) = lab.drv_b.inbound_added
    assert lab.drv_b.added == [ready] and lab.drv_a.inbound_added == [] and lab.drv_b.deleted == []


def test_second_acquire_reuses_the_main_mode():
    lab = negotiate()
    lab.ike_a.acquire(lab.rule, Selector(host(A).network, 6), Selector(host(B).network, 6, 80), B)
    lab.net.run()
    assert lab.ike_a.counters["Oakley Main Modes"] == 1 and lab.ike_a.counters["Oakley Quick Modes"] == 2
    assert len(lab.net.log) == 12


def test_retransmission_backs_off_1_2_4_8_16_32_then_fails():
    clock, net, (ike_a, _), _, rule = pair(PSK)
    net.drop = lambda src, dst, data: dst[0] == B  # UDP 500 to B blocked
    ike_a.acquire(rule, host(A), host(B), B)
    net.run()
    clock.advance(200, net)
    sends = [t for t, src, dst, _ in net.log if dst[0] == B]
    assert sends == [0, 1, 3, 7, 15, 31, 63]
    assert ike_a.counters["Retransmissions"] == 6
    assert ike_a.counters["Negotiation Failures: no response"] == 1
    assert any("UDP 500 blocked" in text for _, text in ike_a.events)


def test_lost_reply_is_answered_from_the_last_reply():
    clock, net, (ike_a, drv_a), (ike_b, drv_b), rule = pair(PSK)
    dropped = []

    def drop_first_mm4(src, dst, data):
        if src[0] == B and len(data) > 150 and not dropped:  # MM4 (KE + nonce) is the first long reply
            dropped.append(data)
            return True
        return False

    net.drop = drop_first_mm4
    ike_a.acquire(rule, host(A), host(B), B)
    net.run()
    assert not drv_a.added and dropped
    clock.advance(1, net)
    assert ike_b.counters["Duplicates Answered"] == 1 and ike_a.counters["Retransmissions"] == 1
    assert len(drv_a.added) == len(drv_b.added) == 1


def test_a_lost_quick_mode_3_is_sent_again_for_each_quick_mode_2_the_responder_retransmits():
    """The lab's schedule (1, 1, 1): the responder sends quick mode 2 at 0, 1, 2 and 3 s and gives up at 4 s.
    The initiator, finished at 0 s, keeps its quick mode that long to answer them: forgotten after the last
    interval (1 s), it dropped the retransmissions and kept an SA pair the responder never installed."""
    clock, net, (ike_a, drv_a), (ike_b, drv_b), rule = pair(PSK)
    for ike in (ike_a, ike_b):
        ike.retransmit = (1, 1, 1)
    quick_mode_3 = []

    def lose_three_quick_mode_3(src, dst, data):
        if src[0] == A and isakmp.Message.decode(data).exchange == isakmp.ExchangeType.QUICK_MODE:
            quick_mode_3.append(data)  # QM1 too: the first one is let through below
            return 2 <= len(quick_mode_3) <= 4
        return False

    net.drop = lose_three_quick_mode_3
    ike_a.acquire(rule, host(A), host(B), B)
    net.run()
    clock.advance(10, net)
    assert len(quick_mode_3) == 5  # QM1, then QM3 at 0, 1, 2 (lost) and 3 s
    assert len(drv_a.added) == len(drv_b.added) == 1 and mirrored(drv_a.added[0], drv_b.added[0])
    assert ike_b.counters["Negotiation Failures"] == 0 and not drv_b.deleted


def test_the_drivers_repeated_acquires_during_a_slow_main_mode_give_one_quick_mode():
    """The driver asks again every 5 s while a packet waits (ACQUIRE_RETRY_SECONDS); a main mode that takes
    longer (lost datagrams, Windows' schedule) must still bring one quick mode, not one per acquire."""
    clock, net, (ike_a, drv_a), (_, drv_b), rule = pair(PSK)
    net.drop = lambda src, dst, data: src[0] == B and clock.now < 12  # main mode 2 lost until 15 s
    for _ in range(3):  # at 0, 5 and 10 s
        ike_a.acquire(rule, host(A), host(B), B)
        net.run()
        clock.advance(5, net)
    clock.advance(100, net)
    assert ike_a.counters["Oakley Main Modes"] == 1 and ike_a.counters["Negotiation Failures"] == 0
    assert len(drv_a.added) == len(drv_b.added) == 1 and mirrored(drv_a.added[0], drv_b.added[0])


def test_a_main_mode_half_open_at_the_responder_does_not_hold_back_its_own():
    """A's main mode fails (B's answers lost); B, left with it half-open, then has traffic for A. B waited
    for that main mode, which never ends (it is forgotten after 30 s), and then, the driver asking again
    every 5 s, waited on with none at all: B never reached A again."""
    clock, net, (ike_a, drv_a), (ike_b, drv_b), rule = pair(PSK)
    for ike in (ike_a, ike_b):
        ike.retransmit = (1, 1, 1)
    net.drop = lambda src, dst, data: src[0] == B and clock.now < 5
    ike_a.acquire(rule, host(A), host(B), B)
    net.run()
    clock.advance(5, net)
    assert ike_a.counters["Negotiation Failures: no response"] == 1 and ike_b.counters["Duplicates Answered"]
    while not drv_b.added and clock.now < 60:  # the driver's acquires while B's packet waits
        ike_b.acquire(ike_b.rules[0], host(B), host(A), A)
        net.run()
        clock.advance(5, net)
    assert clock.now == 10  # B negotiated at its first acquire
    assert len(drv_a.added) == len(drv_b.added) == 1 and mirrored(drv_a.added[0], drv_b.added[0])


def test_wrong_psk_counts_authentication_failures_on_both_sides():
    lab = negotiate(PSK, PeerPolicy(auth=[PreSharedKey(b"other")]))
    # the responder drops the first main mode 5 it cannot decrypt (a corrupted datagram looks the same)
    assert lab.ike_b.counters["Malformed Packets"] == 1 and lab.ike_b.counters["Authentication Failures"] == 0
    lab.clock.advance(1, lab.net)  # the initiator's retransmission settles it
    assert not lab.drv_a.added and not lab.drv_b.added
    for ike in (lab.ike_a, lab.ike_b):
        assert ike.counters["Authentication Failures"] == 1
        assert ike.counters["Negotiation Failures: authentication failed"] == 1


def test_main_mode_proposal_mismatch_is_logged_in_words():
    policy_b = PeerPolicy(auth=[PreSharedKey(b"k")], main_mode=[MainModeOffer("aes-cbc-128", "sha256", 14)])
    lab = negotiate(PSK, policy_b)
    assert lab.ike_b.counters["Negotiation Failures: no proposal chosen"] == 1
    assert any(
        "offered 3DES/SHA1/group 2/PSK; we accept AES128/SHA256/group 14/PSK" in t
        for _, t in lab.ike_b.events
    )
    assert lab.ike_a.counters["Negotiation Failures: no proposal chosen"] == 1


def test_quick_mode_mismatch_reaches_the_initiator():
    policy_b = PeerPolicy(auth=[PreSharedKey(b"k")], quick_mode=[QuickModeOffer("ah", None, "hmac-md5-96")])
    lab = negotiate(PSK, policy_b)
    assert lab.ike_a.counters["Oakley Main Modes"] == 1 and not lab.drv_a.added
    assert lab.ike_a.counters["Negotiation Failures: no proposal chosen"] == 1
    assert any("refused quick mode: NO-PROPOSAL-CHOSEN" in t for _, t in lab.ike_a.events)
    lab.clock.advance(100, lab.net)
    assert lab.ike_a.counters["Retransmissions"] == 0


def negotiate_through_nat() -> Lab:
    """A at 192.168.1.10 behind a NAT that shows it as 203.0.113.5 and rewrites its source ports."""
    clock = ManualClock()
    net = Network(clock)
    net.nat = ("192.168.1.10", "203.0.113.5")
    rule_a = IKERule("to-b", PSK, host("192.168.1.10"), host(B))
    (ike_a, drv_a), (ike_b, drv_b) = (net.attach("192.168.1.10", [rule_a]),
                                           net.attach(B, [IKERule("any", PSK)]))
    ike_a.acquire(rule_a, host("192.168.1.10"), host(B), B)
    net.run()
    return Lab(clock, net, ike_a, drv_a, ike_b, drv_b, rule_a)


def test_nat_with_port_rewriting_floats_to_4500_and_sends_keepalives():
    lab = negotiate_through_nat()
    clock, net, ike_a, drv_a, drv_b = lab.clock, lab.net, lab.ike_a, lab.drv_a, lab.drv_b
    ports = [(src, dst[1]) for _, src, dst, _ in net.log]
    assert [p for _, p in ports[:4]] == [500] * 4 and all(p == 4500 for _, p in ports[4:])
    assert ports[0][0] == ("203.0.113.5", 40000) and ports[4][0] == ("203.0.113.5", 40007)
    sa_a, sa_b = drv_a.added[0], drv_b.added[0]
    assert sa_a.udp_encapsulation == (4500, 4500) and sa_b.udp_encapsulation == (4500, 40007)
    assert sa_b.outbound.dst == "203.0.113.5"
    assert ike_a.main_mode_sas()[0]["nat"] == "we are behind a NAT"
    start = len(net.log)
    clock.advance(61, net)
    keepalives = [t for t, src, dst, d in net.log[start:] if d == natt.NAT_KEEPALIVE]
    assert keepalives == [20, 40, 60]


def test_a_send_the_kernel_refuses_on_udp_4500_is_counted_and_the_negotiation_fails_naming_it():
    """Main mode 5 with a large certificate once came back from the driver's UDP 4500 socket as EMSGSIZE: it
    escaped as an internal error and left main mode without a retransmission timer, so the peer was never
    tried again. A refused send is counted and said; the retransmissions run and the failure names it."""
    clock = ManualClock()
    net = Network(clock)
    net.nat = ("192.168.1.10", "203.0.113.5")  # a NAT: main mode 5 on goes to UDP 4500
    rule_a = IKERule("to-b", PSK, host("192.168.1.10"), host(B))
    (ike_a, _), _ = net.attach("192.168.1.10", [rule_a]), net.attach(B, [IKERule("any", PSK)])
    to_network = ike_a.sender

    def too_long(datagram, addr):
        raise OSError(errno.EMSGSIZE, os.strerror(errno.EMSGSIZE))

    ike_a.send_4500 = too_long
    ike_a.sender = lambda d, a, port: ike_a._send_udp(d, a, port) if port == 4500 else to_network(d, a, port)
    ike_a.acquire(rule_a, host("192.168.1.10"), host(B), B)
    net.run()
    assert ike_a.counters["Dropped: send failed"] == 1 and ike_a.counters["Dropped: internal error"] == 0
    assert any("could not send" in t and "Message too long" in t for _, t in ike_a.events)
    clock.advance(200, net)
    assert ike_a.counters["Dropped: send failed"] >= 7 and not ike_a.pending_main  # each send, resend
    (failed,) = [t for _, t in ike_a.events if t.startswith("main mode with") and " failed: " in t]
    assert "No response from peer" in failed and "(our sends failed: Message too long, " in failed


def test_quick_mode_rekeys_before_expiry_and_old_sas_go_at_hard_lifetime():
    policy = PeerPolicy(auth=[PreSharedKey(b"k")], quick_mode=[QuickModeOffer(lifetime_seconds=600)])
    lab = negotiate(policy)
    old = lab.drv_a.added[0]
    lab.clock.advance(541, lab.net)  # 90 %
    assert len(lab.drv_a.added) == len(lab.drv_b.added) == 2 and not lab.drv_a.deleted
    lab.clock.advance(60, lab.net)
    assert {spi for spi, *_ in lab.drv_a.deleted} == {old.inbound.spi, old.outbound.spi}
    assert {spi for spi, *_ in lab.drv_b.deleted} == {old.inbound.spi, old.outbound.spi}
    assert len(lab.ike_a.quick_modes) == len(lab.ike_b.quick_modes) == 1


@pytest.mark.parametrize(
    "steps",
    [
        # the driver refuses a packet at the hard byte limit and acquires; its periodic lifetime check sees
        # the soft limit of the old SA only after the new quick mode is installed (seen in the lab before
        # the packet that passes the soft limit asked at once; a soft limit in seconds can still do it)
        ("hard limit: acquire", "network", "soft limit: expire", "network"),
        ("hard limit: acquire", "soft limit: expire", "network"),  # the soft limit while negotiating
        ("soft limit: expire", "hard limit: acquire", "network"),  # the hard limit while rekeying
    ],
)
def test_one_quick_mode_replaces_an_sa_at_its_kilobyte_limits_whatever_their_order(steps):
    lab = negotiate()
    old = lab.drv_a.added[0]
    for step in steps:
        if step == "network":
            lab.net.run()
        elif step == "hard limit: acquire":
            lab.ike_a.acquire(lab.rule, host(A), host(B), B)
        else:
            lab.ike_a.expire(old.inbound.spi, hard=False)
    assert len(lab.drv_a.added) == len(lab.drv_b.added) == 2
    assert lab.ike_a.counters["Oakley Quick Modes"] == lab.ike_b.counters["Oakley Quick Modes"] == 2
    new = lab.drv_a.added[1].inbound.spi
    rekeys = [text for _, text in lab.ike_a.events if "rekeyed as" in text]
    assert rekeys == [f"quick mode SA {old.inbound.spi:#010x} rekeyed as {new:#010x}"]


def test_soft_lifetime_of_an_sa_the_peer_already_rekeyed_starts_no_second_rekey():
    lab = negotiate()
    old_a, old_b = lab.drv_a.added[0], lab.drv_b.added[0]
    lab.ike_a.expire(old_a.inbound.spi, hard=False)  # A's driver counts the pair's bytes past 90 % first
    lab.net.run()
    lab.ike_b.expire(old_b.inbound.spi, hard=False)  # then B's driver, counting the same bytes
    lab.net.run()
    assert len(lab.drv_a.added) == len(lab.drv_b.added) == 2
    assert any(f"{old_b.inbound.spi:#010x} rekeyed as" in text for _, text in lab.ike_b.events)


def short_main_mode(lifetime=300, **kw) -> Lab:
    return negotiate(PeerPolicy(auth=[PreSharedKey(b"k")], main_mode=[MainModeOffer(lifetime=lifetime)],
                                quick_mode=[QuickModeOffer(lifetime_seconds=3600)]), **kw)


def test_main_mode_is_renegotiated_before_it_expires_while_quick_mode_sas_are_in_use():
    """At 90 % of its lifetime the side that began it negotiates a new main mode (no INITIAL-CONTACT: the
    quick mode SAs stay); the old one expires on both sides and the quick mode SAs outlive it."""
    lab = short_main_mode()
    (old,) = lab.ike_a.main_modes
    lab.clock.advance(269, lab.net)
    assert lab.ike_a.counters["Oakley Main Modes"] == 1
    lab.clock.advance(2, lab.net)  # 90 %
    assert lab.ike_a.counters["Oakley Main Modes"] == lab.ike_b.counters["Oakley Main Modes"] == 2
    lab.clock.advance(30, lab.net)  # past the old one's lifetime
    for ike in (lab.ike_a, lab.ike_b):
        assert old not in ike.main_modes and len(ike.main_modes) == 1
        assert len(ike.quick_modes) == 1 and ike.counters["Key Deletions"] == 0
    lab.clock.advance(300 * 3, lab.net)  # three lifetimes more: one new main mode each time, no crossing
    assert lab.ike_a.counters["Oakley Main Modes"] == lab.ike_b.counters["Oakley Main Modes"] == 5
    assert len(lab.ike_a.main_modes) == len(lab.ike_b.main_modes) == 1
    assert len(lab.drv_a.added) == 1 and not lab.drv_a.deleted


def test_the_responder_renegotiates_a_main_mode_that_the_initiator_lets_expire():
    """A peer that keeps its quick mode SAs but does not renegotiate (strongSwan with a longer lifetime of its
    own): our responder side begins the new main mode at 95 %."""
    lab = short_main_mode()
    for entry in lab.ike_a.main_modes.values():  # A forgets its renegotiation: as if its lifetime were longer
        entry.timers[-1].cancel()
    lab.clock.advance(286, lab.net)
    assert lab.ike_b.counters["Oakley Main Modes"] == 2
    assert any("renegotiating" in text for _, text in lab.ike_b.events)


def test_main_mode_without_quick_mode_sas_expires_and_a_new_one_serves_the_next_acquire():
    lab = short_main_mode()
    lab.ike_a.idle(lab.drv_a.added[0].inbound.spi)
    lab.net.run()
    lab.clock.advance(301, lab.net)
    assert not lab.ike_a.main_modes and not lab.ike_b.main_modes
    lab.ike_a.acquire(lab.rule, host(A), host(B), B)
    lab.net.run()
    assert lab.ike_a.counters["Oakley Main Modes"] == 2 and len(lab.drv_b.added) == 2


def test_a_short_main_mode_lifetime_of_the_node_replaces_the_policys():
    lab = short_main_mode()
    lab.ike_a.main_mode_lifetime = 40
    lab.ike_a.load_policy([lab.rule])
    lab.ike_a.main_modes.clear()
    lab.ike_a.acquire(lab.rule, host(A), host(B), B)  # the policy's rule, as the Policy Agent gives it
    lab.net.run()
    assert {e.sa.lifetime for e in lab.ike_a.main_modes.values()} == {40}


def test_the_nodes_ike_settings_apply_to_what_it_initiates():
    """The Policy Agent acquires with its policy's own rule: ipsecd.yaml's `ike.nat_traversal: []` and
    `ike.main_mode_lifetime` must still shape main mode 1 (they did only as responder: a client with NAT-T
    off announced draft-02 and floated to UDP 4500 with a NAT-T server)."""
    clock = ManualClock()
    net = Network(clock)
    net.nat = ("192.168.1.10", "203.0.113.5")
    rule = IKERule("to-b", PSK, host("192.168.1.10"), host(B))
    ike_a, drv_a = net.attach("192.168.1.10", [rule], nat_traversal=(), main_mode_lifetime=40)
    ike_b, drv_b = net.attach(B, [IKERule("any", PSK)])
    ike_a.acquire(rule, host("192.168.1.10"), host(B), B)
    net.run()
    mm1 = isakmp.Message.decode(net.log[0][3])
    assert [natt.vendor_name(v.data) for v in mm1.all(isakmp.VendorID)] == ["MS NT5 ISAKMPOAKLEY version 4"]
    assert {dst[1] for *_, dst, _ in net.log} == {500} and len(drv_a.added) == len(drv_b.added) == 1
    assert drv_b.added[0].udp_encapsulation is None and ike_b.main_mode_sas()[0]["nat"] == "no NAT-T"
    assert {e.sa.lifetime for e in ike_b.main_modes.values()} == {40}  # what main mode 1 offered


def test_idle_sa_is_deleted_on_both_sides():
    lab = negotiate()
    lab.ike_a.idle(lab.drv_a.added[0].inbound.spi)
    lab.net.run()
    assert len(lab.drv_a.deleted) == len(lab.drv_b.deleted) == 2
    assert not lab.ike_b.quick_modes and lab.ike_b.counters["Key Deletions"] == 2


@pytest.mark.parametrize("dead", ["garbage", "truncated"])
def test_malformed_datagrams_are_dropped_and_counted(dead):
    lab = negotiate()
    data = b"\x00" * 40 if dead == "garbage" else lab.net.log[0][3][:50]
    lab.ike_b.datagram_received(data, (A, 500), 500)
    assert lab.ike_b.counters["Malformed Packets"] == 1
    assert any("malformed" in t for _, t in lab.ike_b.events)


def test_retransmission_constants_are_windows():
    assert RETRANSMIT_BACKOFF == (1, 2, 4, 8, 16, 32)


def test_invalid_spi_makes_the_peer_drop_its_outbound_sa():
    lab = negotiate()
    stale = lab.drv_b.added[0].inbound.spi
    lab.ike_b.quick_modes.clear()  # B lost the SA (say the driver was restarted) but A still uses it
    lab.ike_b.invalid_spi(stale, A)
    lab.ike_b.invalid_spi(stale, A)  # rate limited: one notify per SPI and minute
    lab.net.run()
    assert {spi for spi, *_ in lab.drv_a.deleted} == {stale, lab.drv_a.added[0].inbound.spi}
    assert len(lab.net.log) == 10 and not lab.ike_a.quick_modes
    assert any("does not know SPI" in t for _, t in lab.ike_a.events)


def test_initial_contact_from_a_restarted_peer_clears_its_old_sas():
    lab = negotiate()
    old = lab.drv_b.added[0]
    lab.clock.now += 60  # INITIAL-CONTACT clears what was set up before the new main mode began
    restarted, _ = lab.net.attach(A, [lab.rule])  # A comes back with no memory of its SAs
    restarted.acquire(lab.rule, host(A), host(B), B)
    lab.net.run()
    assert {spi for spi, *_ in lab.drv_b.deleted} == {old.inbound.spi, old.outbound.spi}
    assert len(lab.ike_b.main_modes) == 1 and len(lab.ike_b.quick_modes) == 1
    assert any("INITIAL-CONTACT" in t for _, t in lab.ike_b.events)


def test_bundle_sas_are_installed_and_deleted_together():
    bundle = PeerPolicy(
        auth=[PreSharedKey(b"k")],
        quick_mode=[QuickModeOffer("esp", "3des-cbc", "hmac-sha1-96", ah="hmac-sha1-96")],
    )
    lab = negotiate(bundle)
    assert lab.ike_a.counters["Key Additions"] == 4 and len(lab.drv_b.added[0].inbound.chain()) == 2
    lab.ike_a.idle(lab.drv_a.added[0].inbound.spi)
    lab.net.run()
    assert len(lab.drv_a.deleted) == len(lab.drv_b.deleted) == 4
    assert {p for *_, p in lab.drv_b.deleted} == {"ah", "esp"} and not lab.ike_b.quick_modes


def test_a_policy_change_of_authentication_deletes_the_main_mode_sa_at_both_ends():
    lab = negotiate()
    lab.ike_a.delete_main_modes({"unrelated rule"}, "not this one")
    assert len(lab.ike_a.main_modes) == 1
    lab.ike_a.delete_main_modes({"to-b"}, "the authentication of its policy rule changed")
    lab.net.run()
    assert not lab.ike_a.main_modes and not lab.ike_b.main_modes  # the peer got the ISAKMP delete
    assert any("deleted: the authentication of its policy rule changed" in t for _, t in lab.ike_a.events)
    # the next acquire authenticates anew: with a key the peer does not have, it fails
    rekeyed = dataclasses.replace(lab.rule, policy=PeerPolicy(auth=[PreSharedKey(b"changed on one side")]))
    lab.ike_a.load_policy([rekeyed])
    lab.ike_a.acquire(rekeyed, host(A), host(B), B)
    lab.net.run()
    lab.clock.advance(1, lab.net)
    assert lab.ike_b.counters["Negotiation Failures: authentication failed"] == 1
