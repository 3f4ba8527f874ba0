"""Replays of a finished exchange's messages: answered from the last reply a few times at most, and never a
loop (a finished exchange does not answer the peer's answer to its own last message)."""

from ipsecd.ike.isakmp import ExchangeType, Message
from tests.unit.test_ike_component import A, B, negotiate


def messages(lab, exchange: int, src: str) -> list[bytes]:
    """The datagrams of one exchange type that `src` sent, in order (IKE on UDP 500 here: no NAT)."""
    return [data for _, s, _, data in lab.net.log
            if s[0] == src and Message.decode(data).exchange == exchange]


def replay_and_count(lab, data: bytes, src: str, dst: str, budget: int = 200) -> int:
    """Deliver one replayed datagram, then at most `budget` more; how many the two daemons sent."""
    before = len(lab.net.log)
    lab.net.queue.append((data, (src, 500), (dst, 500)))
    delivered = 0
    while lab.net.queue and delivered < budget:
        data_, s, d = lab.net.queue.pop(0)
        lab.net.log.append((lab.net.clock.now, s, d, data_))
        delivered += 1
        ike = lab.net.nodes[d[0]][0]
        ike.datagram_received(data_, s, d[1])
    return len(lab.net.log) - before - 1  # not the replay itself


def test_a_replayed_main_mode_5_is_answered_once_and_the_answer_is_not_answered():
    lab = negotiate()
    mm5 = messages(lab, ExchangeType.MAIN_MODE, A)[2]
    sent = replay_and_count(lab, mm5, A, B)
    assert sent == 1  # the responder's MM6 again; the initiator, finished, does not answer it
    assert lab.ike_b.counters["Duplicates Answered"] == 1


def test_a_replayed_quick_mode_3_is_not_answered():
    lab = negotiate()
    qm3 = messages(lab, ExchangeType.QUICK_MODE, A)[1]
    assert replay_and_count(lab, qm3, A, B) == 0


def test_a_replayed_quick_mode_2_gets_quick_mode_3_again_and_nothing_more():
    lab = negotiate()
    qm2 = messages(lab, ExchangeType.QUICK_MODE, B)[0]
    assert replay_and_count(lab, qm2, B, A) == 1


def test_a_finished_exchange_answers_a_flood_of_duplicates_a_few_times_only():
    lab = negotiate()
    mm5 = messages(lab, ExchangeType.MAIN_MODE, A)[2]
    answered = sum(replay_and_count(lab, mm5, A, B) for _ in range(50))
    assert 1 <= answered <= 5
