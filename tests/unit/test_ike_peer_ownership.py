"""SAs belong to the peer that negotiated them: a DELETE from one peer never removes another's SAs, and
INITIAL-CONTACT clears the sender's stale SAs whether or not a NAT was seen."""

from ipsecd.ike import informational
from ipsecd.ike.isakmp import Delete, ProtocolID
from ipsecd.ike.natt import NatStatus
from ipsecd.ike.settings import IKERule, Selector
from tests.unit.test_ike_component import PSK, A, B, host, pair

C = "10.0.0.3"


def three_peers():
    """A and C each with a main mode and a quick mode with B."""
    _, net, (ike_a, _), (ike_b, _), rule_a = pair(PSK)
    ike_c, _ = net.attach(C, [IKERule("to-b", PSK, host(C), Selector.parse("10.0.0.0/8"))])
    ike_a.acquire(rule_a, host(A), host(B), B)
    ike_c.acquire(ike_c.rules[0], host(C), host(B), B)
    net.run()
    assert len(ike_b.quick_modes) == 2 and len(ike_b.main_modes) == 2
    return net, ike_a, ike_b, ike_c


def of_peer(ike, peer: str):
    return [e for e in ike.quick_modes.values() if e.sa.isakmp_sa.remote[0] == peer]


def test_a_peer_cannot_delete_the_quick_mode_sas_of_another_peer():
    net, _, ike_b, ike_c = three_peers()
    (victim,) = of_peer(ike_b, A)
    (c_main,) = ike_c.main_modes.values()
    net.send(informational.delete_children(c_main.sa, victim.sa.outbound.chain()), (C, 500), (B, 500))
    net.run()
    assert of_peer(ike_b, A) == [victim]
    assert ike_b.counters["Dropped: delete of another peer's SA"] == len(victim.sa.outbound.chain())
    assert f"refused a delete from peer {C}" in ike_b.events[-1][1], ike_b.events[-1]


def test_a_peer_cannot_delete_the_main_mode_sa_of_another_peer():
    net, ike_a, ike_b, ike_c = three_peers()
    (a_main,) = ike_a.main_modes.values()
    (c_main,) = ike_c.main_modes.values()
    delete = informational.protect(c_main.sa, [Delete.of(ProtocolID.ISAKMP, [a_main.sa.cookies])])
    net.send(delete, (C, 500), (B, 500))
    net.run()
    assert any(e.sa.remote[0] == A for e in ike_b.main_modes.values())
    assert ike_b.counters["Dropped: delete of another peer's SA"] == 1


def restart_with_initial_contact(nat: bool):
    """A negotiated with B, then A restarts (a new IKE, same address) and negotiates again."""
    clock, net, (ike_a, _), (ike_b, _), rule = pair(PSK)
    ike_a.acquire(rule, host(A), host(B), B)
    net.run()
    if nat:  # as strongSwan reports (it fakes NAT-D to force UDP encapsulation)
        for entry in ike_b.main_modes.values():
            entry.sa.nat = NatStatus(local_behind_nat=False, remote_behind_nat=True)
    old = set(ike_b.quick_modes)
    clock.now += 60
    fresh, _ = net.attach(A, [rule])
    fresh.acquire(rule, host(A), host(B), B)
    net.run()
    return ike_b, old


def test_initial_contact_clears_the_peers_stale_sas():
    ike_b, old = restart_with_initial_contact(nat=False)
    assert not old & set(ike_b.quick_modes) and len(ike_b.main_modes) == 1


def test_initial_contact_clears_the_peers_stale_sas_when_a_nat_was_seen():
    ike_b, old = restart_with_initial_contact(nat=True)
    assert not old & set(ike_b.quick_modes) and len(ike_b.main_modes) == 1


def test_main_modes_crossing_after_a_restart_leave_one_consistent_set_on_both_sides():
    """Both sides start a main mode with INITIAL-CONTACT at once (a graceful restart deleted everything):
    neither one's INITIAL-CONTACT removes the SAs set up in the crossing exchange."""
    clock, net, (ike_a, _), (ike_b, _), rule_a = pair(PSK)
    rule_b = ike_b.rules[0]
    ike_a.acquire(rule_a, host(A), host(B), B)
    ike_b.acquire(rule_b, host(B), host(A), A)
    net.run()
    clock.advance(120, net)
    inbound_a = {c.spi for e in ike_a.quick_modes.values() for c in e.sa.inbound.chain()}
    outbound_b = {c.spi for e in ike_b.quick_modes.values() for c in e.sa.outbound.chain()}
    assert inbound_a and inbound_a == outbound_b
    assert {c.spi for e in ike_b.quick_modes.values() for c in e.sa.inbound.chain()} == {
        c.spi for e in ike_a.quick_modes.values() for c in e.sa.outbound.chain()}


def spis(ike, direction: str) -> set[int]:
    return {c.spi for e in ike.quick_modes.values() for c in getattr(e.sa, direction).chain()}


def test_a_main_mode_begun_while_the_peer_was_down_says_no_initial_contact_once_the_peers_own_is_in():
    """A graceful restart of B with traffic both ways (lab: test_soundness_ownership.py): A's next packet
    begins a main mode that B, down, does not hear; B comes back and begins its own, under which quick modes
    go both ways; then A's retransmitted main mode 1 reaches B. A holds SAs with B by the time that main
    mode says who it is: an INITIAL-CONTACT there made B delete the quick modes both had just set up, while
    A kept them (an extra, dead pair at A)."""
    clock, net, (ike_a, _), (ike_b, _), rule_a = pair(PSK)
    net.drop = lambda src, dst, data: dst[0] == B  # B's ipsecd is down
    ike_a.acquire(rule_a, host(A), host(B), B)
    net.run()
    net.drop = lambda src, dst, data: False
    clock.now += 0.5  # B is back before A retransmits (1 s)
    ike_b.acquire(ike_b.rules[0], host(B), host(A), A)
    net.run()
    assert len(ike_a.pending_main) == 1 and spis(ike_a, "inbound")  # A's first main mode still under way
    clock.advance(120, net)
    assert not ike_a.pending_main and len(ike_a.main_modes) == len(ike_b.main_modes) == 2
    assert spis(ike_a, "inbound") == spis(ike_b, "outbound")
    assert spis(ike_a, "outbound") == spis(ike_b, "inbound")
    assert any(f"peer {B} sent INITIAL-CONTACT" in text for _, text in ike_a.events)  # B did restart
    assert not any(f"peer {A} sent INITIAL-CONTACT" in text for _, text in ike_b.events)
