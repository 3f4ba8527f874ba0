"""Main mode 1 from spoofed sources: half-open state bounded per source and in total, expiring, answered
once each; the IKE socket's user-space queue bounded; a real peer still negotiates."""

import os

from ipsecd.ike import component
from ipsecd.ike.component import HALF_OPEN_PER_SOURCE, HALF_OPEN_SECONDS, HALF_OPEN_TOTAL, IKE
from ipsecd.ike.isakmp import SA, Message, Proposal, ProtocolID
from ipsecd.ike.main_mode import offer_transform
from ipsecd.ike.settings import MainModeOffer
from tests.unit.test_ike_component import PSK, A, B, RecordingDriver, host, pair


def main_mode_1() -> bytes:
    transform = offer_transform(1, MainModeOffer(), "psk")
    return Message(os.urandom(8), payloads=[SA([Proposal(1, ProtocolID.ISAKMP, b"", [transform])])]).encode()


def spoofed(n: int) -> list[str]:
    return [f"10.{1 + i // 65536 % 200}.{i // 256 % 256}.{i % 256}" for i in range(n)]


def test_a_flood_from_many_sources_holds_at_most_the_total_and_a_real_peer_still_negotiates():
    clock, net, (ike_a, drv_a), (ike_b, drv_b), rule = pair(PSK)
    for source in spoofed(3 * HALF_OPEN_TOTAL):
        ike_b.datagram_received(main_mode_1(), (source, 500), 500)
    net.queue.clear()  # the answers to spoofed sources go nowhere
    assert len(ike_b.pending_main) == HALF_OPEN_TOTAL
    assert ike_b.counters["Half-Open Main Modes Evicted"] == 2 * HALF_OPEN_TOTAL
    ike_a.acquire(rule, host(A), host(B), B)
    net.run()
    assert len(drv_a.added) == len(drv_b.added) == 1
    clock.advance(HALF_OPEN_SECONDS + 1, net)
    assert not ike_b.pending_main and ike_b.counters["Half-Open Main Modes Expired"] == HALF_OPEN_TOTAL - 1
    assert ike_b.counters["Retransmissions"] == 0  # main mode 2 is never repeated unasked


def test_one_source_holds_at_most_its_share():
    ike_b = pair(PSK)[3][0]
    for _ in range(5 * HALF_OPEN_PER_SOURCE):
        ike_b.datagram_received(main_mode_1(), ("10.9.9.9", 500), 500)
    assert len(ike_b.pending_main) == HALF_OPEN_PER_SOURCE
    assert ike_b.counters["Dropped: half-open limit per source"] == 4 * HALF_OPEN_PER_SOURCE


def test_a_retransmitted_main_mode_1_is_answered_from_the_last_reply():
    _, net, _, (ike_b, _), _ = pair(PSK)
    first = main_mode_1()
    for _ in range(3):
        ike_b.datagram_received(first, ("10.9.9.9", 500), 500)
    assert len([d for d in net.queue if d[2][0] == "10.9.9.9"]) == 3
    assert ike_b.counters["Duplicates Answered"] == 2


class FullSocket:
    """A transport whose kernel buffer is full: asyncio would queue every datagram without limit."""

    def __init__(self):
        self.queued = []

    def get_write_buffer_size(self):
        return sum(len(d) for d in self.queued)

    def sendto(self, data, addr):
        self.queued.append(data)


def test_sends_queue_at_most_the_limit_then_drop_and_count():
    ike = IKE(A, RecordingDriver())
    ike.sockets.append(FullSocket())
    for _ in range(1000):
        ike._send_udp(b"x" * 500, (B, 500), 500)
    assert ike.sockets[0].get_write_buffer_size() <= component.SEND_QUEUE_LIMIT + 500
    assert ike.counters["Dropped: send queue full"] == 1000 - len(ike.sockets[0].queued)
