"""Main mode + quick mode setup latency between two ipsecd IKE components over real UDP on loopback.

Each run is a fresh pair of components (new main mode, then one quick mode), from acquire() until both
sides have installed their SAs. Prints the median of 20 runs per suite (target: strongSwan's ~5-13 ms).

    python -m bench ike            (a row per suite; part of make bench)
"""

from __future__ import annotations

import asyncio
import statistics
import time

from bench.common import Row
from ipsecd.ike.component import IKE
from ipsecd.ike.settings import IKERule, MainModeOffer, PeerPolicy, PreSharedKey, QuickModeOffer, Selector

SUITES = {
    "3des-sha1-modp1024 psk (Windows 2003 default)": PeerPolicy(auth=[PreSharedKey(b"bench")]),
    "aes128-sha1-modp2048 psk": PeerPolicy(
        auth=[PreSharedKey(b"bench")],
        main_mode=[MainModeOffer("aes-cbc-128", "sha1", 14)],
        quick_mode=[QuickModeOffer("esp", "aes-cbc-128", "hmac-sha1-96")],
    ),
    "aes128-sha1-modp2048 psk + pfs": PeerPolicy(
        auth=[PreSharedKey(b"bench")],
        main_mode=[MainModeOffer("aes-cbc-128", "sha1", 14)],
        quick_mode=[QuickModeOffer("esp", "aes-cbc-128", "hmac-sha1-96", pfs_group=14)],
    ),
}
A, B = "127.0.0.1", "127.0.0.2"


class Driver:
    def __init__(self, done: asyncio.Event):
        self.done = done

    def add_inbound(self, sa) -> None:
        pass

    def add_sa(self, sa) -> None:
        self.done.set()

    def delete_sa(self, spi, destination, protocol) -> None:
        pass


async def one_setup(policy: PeerPolicy, port: int) -> float:
    done_a, done_b = asyncio.Event(), asyncio.Event()
    a = IKE(A, Driver(done_a), port=port, natt_port=port + 1)
    b = IKE(B, Driver(done_b), port=port, natt_port=port + 1)
    rule = IKERule("bench", policy, Selector.parse(f"{A}/32"), Selector.parse(f"{B}/32"))
    a.load_policy([rule])
    b.load_policy([IKERule("bench", policy, Selector.parse(f"{B}/32"), Selector.parse(f"{A}/32"))])
    await a.start()
    await b.start()
    try:
        start = time.perf_counter()
        a.acquire(rule, rule.local, rule.remote)
        await asyncio.wait_for(asyncio.gather(done_a.wait(), done_b.wait()), 10)
        return time.perf_counter() - start
    finally:
        for ike in (a, b):
            for sock in ike.sockets:
                sock.close()


async def setup_times(runs: int) -> dict[str, list[float]]:
    """Seconds of each of `runs` setups, per suite."""
    return {name: [await one_setup(policy, 22500 + 2 * (i % 50)) for i in range(runs)]
            for name, policy in SUITES.items()}


def run(runs: int = 20) -> list[Row]:
    return [Row(f"IKEv1 MM+QM setup ipsecd↔ipsecd on loopback, {name}", statistics.median(times) * 1000, "ms",
                note=f"median of {runs}, min {min(times) * 1000:.1f} max {max(times) * 1000:.1f}; "
                     "two IKE components in one process, no driver")
            for name, times in asyncio.run(setup_times(runs)).items()]
