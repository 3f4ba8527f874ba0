"""The default response rule's dynamic filters (ipsecd.ike_bridge): quick modes a node answered without a
filter of its own get a filter pair while they live, so the node's traffic goes into their SAs."""

from types import SimpleNamespace

from scapy.layers.inet import IP, TCP

from ipsecd.driver import Driver, RecordingWire
from ipsecd.ike.quick_mode import ChildSA, QuickModeDone
from ipsecd.ike.settings import QuickModeOffer, Selector
from ipsecd.ike_bridge import IKEBridge
from ipsecd.spd import SPD

A, B = "10.0.0.1", "10.0.0.2"


def answered(inbound_spi: int, outbound_spi: int) -> QuickModeDone:
    """A transport quick mode host-a answered for host-b (no filter of host-a asked for it)."""
    def child(spi, direction, src, dst):
        return ChildSA(spi, "esp", direction, "transport", src, dst, "3des-cbc", bytes(24), "hmac-sha1-96",
                       bytes(20), None)

    return QuickModeDone(child(inbound_spi, "inbound", B, A), child(outbound_spi, "outbound", A, B),
                         "transport", Selector.parse(A), Selector.parse(B), QuickModeOffer(), 900, 100_000,
                         None, SimpleNamespace(remote=(B, 500)))


def test_answered_quick_modes_get_filters_that_outlive_policy_loads_and_rekeys():
    wire = RecordingWire()
    bridge = IKEBridge(Driver(SPD(), wire=wire))
    bridge.load_policy(SPD())  # Client (Respond Only): no filters of its own
    bridge.add_sa(answered(0x1001, 0x2001))
    assert [(f.direction.value, str(f.src), str(f.dst)) for f in bridge.driver.spd.filters] == [
        ("outbound", f"{A}/32", f"{B}/32"), ("inbound", f"{B}/32", f"{A}/32")]

    bridge.load_policy(SPD())  # a policy refresh keeps them
    bridge.driver.outbound(bytes(IP(src=A, dst=B) / TCP(sport=40000, dport=5001)))
    assert [IP(packet).proto for packet, _ in wire.sent] == [50]  # into the SA, as ESP

    bridge.add_sa(answered(0x1002, 0x2002))  # a rekey with the same selectors
    bridge.delete_sa(0x1001, A, "esp")
    assert len(bridge.driver.spd) == 2  # the rekeyed quick mode still needs them
    bridge.delete_sa(0x1002, A, "esp")
    assert len(bridge.driver.spd) == 0
