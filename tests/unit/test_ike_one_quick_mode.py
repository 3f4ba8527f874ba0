"""An acquire for traffic a quick mode already in progress with that peer will secure waits for it: the
responder's reply to the held packet started a second quick mode the other way (two SA pairs per client,
and at 100 clients crossing quick modes that failed)."""

from ipsecd.ike.isakmp import ExchangeType, Message
from tests.unit.test_ike_component import PSK, A, B, host, pair


def test_the_responder_answering_the_held_packet_starts_no_second_quick_mode():
    clock, net, (ike_a, drv_a), (ike_b, drv_b), rule = pair(PSK)
    acquired = []

    def reply_during_quick_mode(src, dst, data):
        """The first time host-b answers a quick mode 1, its reply packet hits its own negotiate filter."""
        msg = Message.decode(data[4:] if dst[1] == 4500 else data)
        if src[0] == B and msg.exchange == ExchangeType.QUICK_MODE and not acquired:
            acquired.append(True)
            ike_b.acquire(ike_b.rules[0], host(B), host(A), A)
        return False

    net.drop = reply_during_quick_mode
    ike_a.acquire(rule, host(A), host(B), B)
    net.run()
    clock.advance(60, net)
    assert acquired
    assert len(drv_a.added) == len(drv_b.added) == 1
    assert ike_a.counters["Oakley Quick Modes"] == ike_b.counters["Oakley Quick Modes"] == 1
