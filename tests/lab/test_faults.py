"""ipsecd pairs under link faults: loss, duplication, reordering and cuts of the link between host-a and
host-b (lab.linkfaults: nftables and NFQUEUE in the nodes, as this kernel has no netem), ridden out by IKE's
retransmissions (RFC 2408 §5.9: Windows' schedule, the scenario's [1, 1, 1] here) and the anti-replay window
(RFC 4303 §3.4.3): both sides end with one SA set they agree on, every fault counted where it was met.

intranet-pair with ipsecd on both hosts under scenarios/ike-transport-psk (everything between them ESP).
The first three tests hold defects the faults found; the last one what they showed to work.
"""

import pytest
from pair import BARE_PAIR

from lab.capture import assert_marker_absent, assert_only_protocols, wait_until
from lab.harness import (
    counters,
    dump,
    ipsecctl,
    node_files,
    nodes,
    qmsa,
    start,
    wait_counter,
    wait_quick_mode,
)
from lab.linkfaults import LinkFaults, cut, duplicate, lose
from lab.traffic import tcp_transfer

SCENARIO = "ike-transport-psk"
A, B = "10.0.0.1", "10.0.0.2"
MARKER = b"LINK-FAULTS-MARKER-"
# ISAKMP header fields for nftables (@th counts bits from the UDP header): first payload at byte 16,
# exchange type at byte 18. Quick mode 3 is HASH(3) alone (64 bytes of UDP); quick mode 1 and 2 carry SA,
# nonce and IDs. Main mode with SA first, sent by the responder: main mode 2.
QUICK_MODE = "udp dport 500 @th,208,8 32"
QUICK_MODE_3 = f"{QUICK_MODE} udp length < 100"
MAIN_MODE_2 = "udp dport 500 @th,208,8 2 @th,192,8 1"


@pytest.fixture
def pair(lab_up):
    lab = lab_up("intranet-pair", overrides=BARE_PAIR)
    with nodes(lab, "host-a", "host-b") as (a, b):
        faults = LinkFaults(a), LinkFaults(b)
        try:
            yield lab, a, b, *faults
        finally:
            for f in faults:
                f.clear()


def start_pair(*handles, retransmit: str = "[1, 1, 1]") -> None:
    """ipsecd on each node with the scenario's folder and this retransmission schedule (the scenario's)."""
    for node in handles:
        config = node_files(SCENARIO, node.name)["ipsecd.yaml"].replace("[1, 1, 1]", retransmit)
        start(node, SCENARIO, {"ipsecd.yaml": config})


def assert_one_sa_set(a, b) -> None:
    """Each side holds one main mode SA and one quick mode pair, the same ones, its driver their two SAs."""
    qa, qb = qmsa(a), qmsa(b)
    assert len(qa) == len(qb) == 1, dump(a) + dump(b)
    assert (qa[0]["inbound spi"], qa[0]["outbound spi"]) == (qb[0]["outbound spi"], qb[0]["inbound spi"])
    ma, mb = ipsecctl(a, "mmsa"), ipsecctl(b, "mmsa")
    assert len(ma) == 1 and [m["cookies"] for m in ma] == [m["cookies"] for m in mb], dump(a) + dump(b)
    assert len(ipsecctl(a, "sa")) == len(ipsecctl(b, "sa")) == 2


def ike_counters(*handles) -> list[dict[str, int]]:
    return [{k: v for k, v in counters(node).items() if k.startswith("ike_")} for node in handles]


def test_a_lost_quick_mode_3_is_sent_again_and_both_sides_hold_the_same_pair(pair):
    """host-a's first two quick mode 3 are lost: host-b repeats quick mode 2 at 1 s and 2 s and host-a answers
    each. Before, host-a forgot its quick mode 1 s after quick mode 3 and dropped the repeats: host-b's quick
    mode failed and host-a kept a pair host-b never installed."""
    _, a, b, fa, _ = pair
    start_pair(a, b)
    fa.set(lose("out", QUICK_MODE_3, every=100, first=2))
    a.exec(["ping", "-c", "1", "-W", "8", B], check=True)
    wait_quick_mode(b)
    assert fa.counts() == {f"lose 2 in 100 out {QUICK_MODE_3}": 2}
    assert_one_sa_set(a, b)
    assert counters(a)["ike_duplicates_answered"] == 2 and counters(b)["ike_negotiation_failures"] == 0
    b.exec(["ping", "-c", "1", "-W", "2", A], check=True)
    assert counters(b)["bad_spi_packets"] == counters(a)["bad_spi_packets"] == 0


def test_a_main_mode_the_initiator_gave_up_does_not_hold_back_the_responders_own(pair):
    """Every answer of host-b lost: host-a's main mode fails (4 s), host-b is left with it half-open. host-b's
    own traffic for host-a then negotiates at once. Before, host-b waited for that main mode, which never
    ends, and once it was forgotten (30 s) waited on for good: host-b never reached host-a again."""
    _, a, b, _, fb = pair
    start_pair(a, b)
    fb.set(lose("out", "udp sport 500", every=1))
    assert not a.exec(["ping", "-c", "1", "-W", "6", B]).ok  # one packet: host-a's driver asks IKE once
    wait_counter(a, "ike_negotiation_failures_no_response", 1)
    fb.clear()
    b.exec(["ping", "-c", "1", "-W", "5", A], check=True)
    assert_one_sa_set(a, b)
    assert counters(b)["ike_duplicates_answered"] == 3  # it did answer host-a's main mode 1 each time


def test_a_main_mode_slower_than_the_drivers_second_ask_brings_one_quick_mode(pair):
    """Windows-like retransmissions [1, 2, 4, 8] and host-b's first three main mode 2 lost: main mode takes
    7 s, and host-a's pings (every 0.5 s) make its driver ask IKE again after 5 s. One quick mode comes of
    it; before, one per ask: two SA pairs for the same traffic on each side."""
    _, a, b, _, fb = pair
    start_pair(a, b, retransmit="[1, 2, 4, 8]")
    fb.set(lose("out", MAIN_MODE_2, every=100, first=3))
    a.exec(["ping", "-c", "18", "-i", "0.5", "-W", "2", B], timeout=30)
    wait_quick_mode(b)
    assert fb.counts() == {f"lose 3 in 100 out {MAIN_MODE_2}": 3}
    assert counters(a)["acquires"] >= 2 and counters(a)["ike_oakley_main_modes"] == 1
    assert_one_sa_set(a, b)


def test_ike_and_esp_ride_out_loss_duplication_reordering_and_a_cut(pair):
    """The faults a lossy link brings, one after the other; after each both sides agree on one SA set and
    nothing leaves in clear. Retransmission crossing its answer, duplicates answered a few times at most
    (no loop), ESP reordered within the anti-replay window accepted, beyond it counted, TCP unharmed."""
    lab, a, b, fa, fb = pair
    with lab.capture_segment("lan") as cap:
        # 1 in 3 IKE datagrams lost each way, from the first: converges by retransmission
        start_pair(a, b)
        fa.set(lose("out", "udp dport 500", every=3))
        fb.set(lose("out", "udp dport 500", every=3))
        wait_until(lambda: a.exec(["ping", "-c", "1", "-W", "1", B]).ok, 30, what="ESP through 1/3 IKE loss")
        assert all(n > 0 for n in [*fa.counts().values(), *fb.counts().values()])
        fa.clear()
        fb.clear()
        assert_one_sa_set(a, b)

        # every IKE and ESP datagram twice, each way: one SA set, each ESP copy a counted replay, no loop
        start_pair(a, b)
        for faults in (fa, fb):
            faults.set(duplicate("out", "udp dport 500"), duplicate("out", "ip protocol esp"))
        pings = a.exec(["ping", "-c", "10", "-i", "0.1", "-W", "5", B], check=True).stdout
        assert "DUP!" not in pings and " 0% packet loss" in pings
        settled = ike_counters(a, b)
        assert_one_sa_set(a, b)
        assert ike_counters(a, b) == settled  # nothing still going back and forth
        copies_a, copies_b = fa.counts(), fb.counts()
        assert counters(b)["replayed_packets"] == copies_a["duplicate out ip protocol esp"] > 0
        assert counters(a)["replayed_packets"] == copies_b["duplicate out ip protocol esp"] > 0
        assert copies_a["duplicate out udp dport 500"] + copies_b["duplicate out udp dport 500"] < 40
        fa.clear()
        fb.clear()

        # ESP to host-b reordered: every 10th packet overtaken by 8 (within the 64-packet anti-replay
        # window: accepted), then by 100 (beyond it: counted as replayed, its data sent again by TCP)
        payload = MARKER * 50_000
        for overtaken_by, replays in ((8, False), (100, True)):
            fb.delay(0, "-p esp", hold_every=10, overtaken_by=overtaken_by, hold_ms=1000)
            before = counters(b)
            assert tcp_transfer(a, b, payload, port=5020, timeout=30) == payload
            assert fb.delayed()["overtook"] > 0
            after = counters(b)
            assert (after["replayed_packets"] > before["replayed_packets"]) == replays, (before, after)
            assert after["packets_not_authenticated"] == before["packets_not_authenticated"]
        fb.undelay()

        # the link cut in the middle of quick mode (host-b's quick mode 2 lost, then everything) for two
        # of host-a's sends: quick mode completes by retransmission once it is back
        start_pair(a, b, retransmit="[1, 2, 4]")  # sends at 0, 1, 3 and 7 s
        fb.set(lose("out", QUICK_MODE, every=1))  # host-b, the responder, sends quick mode 2 only
        ping = a.spawn(["ping", "-c", "1", "-W", "15", B], name="ping-through-cut")
        wait_counter(a, "ike_retransmissions", 1)
        fa.set(cut())
        fb.clear()
        wait_counter(a, "ike_retransmissions", 2)
        fa.clear()
        wait_until(lambda: not ping.alive(), 15, what="the ping through the cut")
        assert " 0% packet loss" in ping.log(), ping.log()
        assert_one_sa_set(a, b)
        assert counters(a)["ike_negotiation_failures"] == counters(b)["ike_negotiation_failures"] == 0
    packets = cap.packets()
    assert_only_protocols(packets, between=(A, B), allowed={"esp", "udp/500"})
    assert_marker_absent(packets, MARKER)
