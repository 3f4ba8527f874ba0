"""Two IKE components over real UDP sockets on 127.0.0.1 and 127.0.0.2 (loopback only, fake driver)."""

import asyncio

import pytest

from ipsecd.ike.component import IKE
from ipsecd.ike.settings import IKERule, PeerPolicy, PreSharedKey, Selector
from tests.unit.test_ike_component import RecordingDriver
from tests.unit.test_ike_exchanges import mirrored
from tests.vectors.pki import CA

PORTS = {"port": 21500, "natt_port": 24500}  # unprivileged, so a real IKE daemon on the host does not clash


async def until(condition, timeout=10.0):
    """Poll for a condition instead of sleeping a fixed time."""
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    while not condition():
        if loop.time() > end:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.005)


async def run_pair(policy_a, policy_b):
    drivers = RecordingDriver(), RecordingDriver()
    a = IKE("127.0.0.1", drivers[0], **PORTS)
    b = IKE("127.0.0.2", drivers[1], **PORTS)
    rule_a = IKERule("to-b", policy_a, Selector.parse("127.0.0.1/32"), Selector.parse("127.0.0.2/32"))
    a.load_policy([rule_a])
    b.load_policy([IKERule("to-a", policy_b, Selector.parse("127.0.0.2/32"), Selector.parse("127.0.0.1/32"))])
    await a.start()
    await b.start()
    try:
        a.acquire(rule_a, Selector.parse("127.0.0.1/32"), Selector.parse("127.0.0.2/32"))
        await until(lambda: (drivers[0].added and drivers[1].added) or a.counters["Negotiation Failures"])
        result = (list(drivers[0].added), list(drivers[1].added), dict(a.counters), dict(b.counters))
        await a.stop()  # sends deletes for everything it holds
        if drivers[0].added:
            await until(lambda: len(drivers[1].deleted) == 2)
        return (*result, drivers[1].deleted)
    finally:
        await a.stop()
        await b.stop()


def test_psk_over_udp_sockets():
    psk = PeerPolicy(auth=[PreSharedKey(b"loopback")])
    added_a, added_b, counters_a, counters_b, deleted_b = asyncio.run(run_pair(psk, psk))
    assert mirrored(added_a[0], added_b[0])
    assert counters_a["Oakley Main Modes"] == counters_b["Oakley Main Modes"] == 1
    assert {spi for spi, *_ in deleted_b} == {added_b[0].inbound.spi, added_b[0].outbound.spi}


def test_certificates_over_udp_sockets():
    ca = CA()
    added_a, added_b, *_ = asyncio.run(
        run_pair(PeerPolicy(auth=[ca.credentials("a")]), PeerPolicy(auth=[ca.credentials("b")]))
    )
    assert added_a[0].isakmp_sa.peer_identity == "CN=b,O=ipsec-lab"
    assert added_b[0].isakmp_sa.auth_method == "rsa-sig"


@pytest.mark.parametrize("twin", ["wrong psk", "untrusted certificate"])
def test_failure_twins_over_udp_sockets(twin):
    if twin == "wrong psk":
        policies = PeerPolicy(auth=[PreSharedKey(b"one")]), PeerPolicy(auth=[PreSharedKey(b"two")])
    else:
        ca, rogue = CA(), CA("rogue")
        policies = (
            PeerPolicy(auth=[rogue.credentials("a", trusted=(ca.cert,))]),
            PeerPolicy(auth=[ca.credentials("b")]),
        )
    added_a, added_b, counters_a, counters_b, _ = asyncio.run(run_pair(*policies))
    assert not added_a and not added_b
    assert counters_a["Authentication Failures"] == 1
    assert counters_b["Authentication Failures"] == 1
