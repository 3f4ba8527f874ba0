"""Corrupted datagrams at every step of a negotiation: never an exception; a corrupted encrypted message is
dropped, counted, and the retransmission completes the exchange."""

import random

import pytest

from ipsecd.ike.settings import PeerPolicy
from tests.unit.test_ike_component import PSK, A, B, host, pair
from tests.vectors.pki import CA


def corrupt(rng: random.Random, data: bytes) -> bytes:
    bad = bytearray(data)
    for _ in range(rng.randint(1, 3)):
        if rng.random() < 0.3 and len(bad) > 30:
            del bad[rng.randrange(28, len(bad)) :]
        else:
            bad[rng.randrange(len(bad))] = rng.randrange(256)
    return bytes(bad)


@pytest.fixture(scope="module")
def certificate_policies():
    ca = CA()
    return PeerPolicy(auth=[ca.credentials("a")]), PeerPolicy(auth=[ca.credentials("b")])


@pytest.mark.parametrize("auth", ["psk", "certificates"])
def test_corrupted_datagrams_never_raise_and_encrypted_ones_recover(auth, certificate_policies):
    rng = random.Random(auth)
    policies = (PSK, PSK) if auth == "psk" else certificate_policies
    for trial in range(90):
        clock, net, (ike_a, drv_a), (_, drv_b), rule = pair(*policies)
        victim, seen = trial % 9, [0]

        def tamper(src, dst, data, victim=victim, seen=seen, net=net):
            seen[0] += 1
            if seen[0] - 1 != victim:
                return False
            target = net.nodes[dst[0]][0]
            if dst[1] == 4500:
                target.datagram_4500(corrupt(rng, data), src)
            else:
                target.datagram_received(corrupt(rng, data), src, dst[1])
            return True  # the original is lost; the corrupted copy arrived instead

        net.drop = tamper
        ike_a.acquire(rule, host(A), host(B), B)
        net.run()
        clock.advance(120, net)
        if victim >= 6:  # quick mode messages are all encrypted and hashed
            assert drv_a.added and drv_b.added, f"quick mode message {victim - 5} corrupted: no SAs"
