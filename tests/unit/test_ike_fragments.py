"""IKE fragments (payload 132) as strongSwan sends them with `fragmentation = force`: put together in any
order, bounded, and the whole message negotiated as if it had come in one datagram."""

import random

import pytest
from test_ike_component import PSK, A, B, host, pair

from ipsecd.ike import fragments
from ipsecd.ike.fragments import FragmentError, Reassembly
from ipsecd.ike.isakmp import ExchangeType, Fragment, Message, Nonce

COOKIES = b"\x11" * 8, b"\x22" * 8


def cut(whole: bytes, size: int, fragment_id: int = 1) -> list[bytes]:
    """`whole` as strongSwan cuts it: ISAKMP messages with the same cookies, each one Fragment payload."""
    chunks = [whole[i : i + size] for i in range(0, len(whole), size)]
    return [
        Message(whole[:8], whole[8:16], ExchangeType.MAIN_MODE, payloads=[
            Fragment(fragment_id, n, chunk, Fragment.LAST if n == len(chunks) else 0)]).encode()
        for n, chunk in enumerate(chunks, start=1)
    ]


def piece(number: int, flags: int = 0) -> bytes:
    """One fragment of fragment ID 1 with one byte of data."""
    return Message(*COOKIES, payloads=[Fragment(1, number, b"x", flags)]).encode()


def message(size: int = 3000) -> bytes:
    return Message(*COOKIES, payloads=[Nonce(b"n" * size)]).encode()


def add_all(reassembly: Reassembly, pieces: list[bytes], now: float = 0.0) -> list[bytes | None]:
    return [reassembly.add("192.0.2.1", Message.decode(p), now) for p in pieces]


def test_the_fragment_payload_is_laid_out_as_strongswan_sends_it():
    """Generic header, fragment ID (2), number (1), flags (1, 0x01 on the last), then the data: the bytes
    of strongSwan 5.9.8's fourth and last fragment of a main mode 5 (fragment ID 1)."""
    wire = Message(*COOKIES, payloads=[Fragment(1, 4, b"DATA", Fragment.LAST)]).encode()
    assert wire[16] == 132 and wire[28:36].hex() == "0000000c00010401" and wire[36:] == b"DATA"


def test_pieces_in_any_order_and_repeated_give_the_message_once():
    whole = message()
    pieces = cut(whole, 1200)
    got = add_all(Reassembly(), [pieces[2], pieces[0], pieces[0], pieces[1]])
    assert got == [None, None, None, whole]


@pytest.mark.parametrize(("pieces", "error"), [
    (lambda w: [piece(fragments.MAX_PIECES + 1, Fragment.LAST)], "outside 1..32"),
    (lambda w: [*cut(w, 1000)[-1:], piece(1, Fragment.LAST)], "two pieces flagged last"),
    (lambda w: [*cut(w, 1000)[-1:], piece(9)], "numbered after the last"),
    (lambda w: [Message(*COOKIES, payloads=[Fragment(1, 1, Message(b"\x33" * 8).encode(), Fragment.LAST)]
                        ).encode()],
     "not one of these cookies"),
    (lambda w: [Message(*COOKIES, payloads=[Fragment(1, n, b"x" * 4000)]).encode() for n in range(1, 18)],
     f"more than {fragments.MAX_MESSAGE} bytes"),
])
def test_a_piece_that_cannot_belong_to_a_message_is_refused_in_words(pieces, error):
    reassembly = Reassembly()
    with pytest.raises(FragmentError, match=error):
        add_all(reassembly, pieces(message()))
    assert not reassembly.pending


def test_the_reassembled_message_may_not_be_a_fragment_itself():
    inner = cut(message(), 1000)[0]
    outer = Message(*COOKIES, payloads=[Fragment(2, 1, inner, Fragment.LAST)]).encode()
    with pytest.raises(FragmentError, match="is a fragment"):
        add_all(Reassembly(), [outer])


def test_unfinished_messages_are_bounded_in_number_and_time():
    reassembly = Reassembly()
    for fragment_id in range(fragments.MAX_PENDING + 5):
        add_all(reassembly, cut(message(), 1200, fragment_id)[:1])
    assert len(reassembly.pending) == fragments.MAX_PENDING
    add_all(reassembly, cut(message(), 1200, 999)[:1], now=fragments.REASSEMBLY_SECONDS + 1)
    assert len(reassembly.pending) == 1  # the others were older than Windows' reassembly timer


def test_main_mode_5_in_fragments_is_negotiated_as_if_it_came_whole():
    """strongSwan's `fragmentation = force` with a certificate: main mode 5 in pieces, out of order."""
    _, net, (ike_a, drv_a), (ike_b, drv_b), rule = pair(PSK)
    sent_by_a = []

    def fragment_main_mode_5(src, dst, data):
        if src[0] != A:
            return False
        sent_by_a.append(data)
        if len(sent_by_a) != 3:
            return False
        net.queue.extend((piece, src, dst) for piece in reversed(cut(data, 40)))  # small pieces, reversed
        return True

    net.drop = fragment_main_mode_5
    ike_a.acquire(rule, host(A), host(B), B)
    net.run()
    assert len(drv_a.added) == len(drv_b.added) == 1
    assert ike_b.counters["Fragments Received"] >= 3
    assert ike_b.counters["Fragmented Messages Reassembled"] == 1
    assert ike_b.counters["Dropped: bad fragment"] == 0 and ike_b.counters["Malformed Packets"] == 0


def test_random_fragments_are_each_counted_and_never_an_internal_error():
    """Pieces with random IDs, numbers, flags and data, some completing into garbage or into messages of
    the live exchange: each moves "Fragments Received", nothing escapes, the table stays bounded."""
    rng = random.Random(7)
    _, net, (ike_a, _), (ike_b, _), rule = pair(PSK)
    ike_a.acquire(rule, host(A), host(B), B)
    net.run()
    cookies = [d[:16] for _, _, _, d in net.log[:2]] + [bytes(16)]
    for _ in range(2000):
        icookie_rcookie = rng.choice(cookies)
        data = rng.choice([rng.randbytes(rng.randrange(0, 60)), net.log[rng.randrange(len(net.log))][3]])
        piece = Fragment(rng.randrange(3), rng.randrange(0, 5), data, rng.choice([0, Fragment.LAST]))
        ike_b.datagram_received(Message(icookie_rcookie[:8], icookie_rcookie[8:], payloads=[piece]).encode(),
                                (A, 500), 500)
    assert ike_b.counters["Fragments Received"] == 2000 and ike_b.counters["Dropped: internal error"] == 0
    assert len(ike_b.reassembly.pending) <= fragments.MAX_PENDING
