"""SAs belong to the peer that negotiated them (issue 10, docs/ARCHITECTURE.md "Soundness guarantees"), on
the wire: another authenticated peer's DELETE does not remove them, and a graceful restart of one side with
traffic flowing both ways ends, through crossing main modes with INITIAL-CONTACT, in one SA set that both
sides agree on.

intranet-pair with a third host, host-c (10.0.0.3), on the same LAN. host-a and host-b run ipsecd with the
policies of scenarios/ike-transport-psk (everything between them ESP; host-b answers any peer that knows the
lab's pre-shared key with its default response rule). host-c runs ipsecd's own IKE alone (lab/ike_probe.py):
a real peer that authenticates to host-b with that key, then sends it DELETEs naming host-a's SAs.
"""

import pytest
from pair import BARE_PAIR
from scapy.layers.ipsec import ESP

from lab.capture import assert_marker_absent, assert_only_protocols, assert_protocol_seen, wait_until
from lab.harness import (
    counters,
    dump,
    ipsecctl,
    isakmp_rows,
    nodes,
    start,
    stop,
    wait_counter,
    wait_event,
    wait_quick_mode,
)
from lab.ike_probe import IkeProbe
from lab.traffic import tcp_transfer

SCENARIO = "ike-transport-psk"
PSK = "intranet-pair-lab"  # the scenario's key, in host-b's default response rule too
MARKER = b"SOUNDNESS-OWNERSHIP-MARKER-"
PATTERN = b"RESTART-MARKER!!"  # 16 bytes, ping's longest -p: every echo and reply carries it
RESTARTS = 3
A, B, C = "10.0.0.1", "10.0.0.2", "10.0.0.3"
HOST_C = {"role": "host", "interfaces": {"eth1": {"segment": "lan", "address": f"{C}/24"}}}
TRIO = {"nodes": {**BARE_PAIR["nodes"], "host-c": HOST_C}}


@pytest.fixture
def trio(lab_up):
    lab = lab_up("intranet-pair", overrides=TRIO)
    with nodes(lab, "host-a", "host-b", "host-c") as handles:
        yield lab, *handles


def spi(text: str) -> int:
    return int(text, 16)


def test_an_authenticated_peer_cannot_delete_another_peers_sas(trio):
    lab, a, b, c = trio
    for node in (a, b):
        start(node, SCENARIO)
    payload = MARKER * 400
    assert tcp_transfer(a, b, payload, port=5011) == payload
    (qa,) = wait_quick_mode(a)
    (qb,) = wait_quick_mode(b)
    assert (qa["inbound spi"], qa["outbound spi"]) == (qb["outbound spi"], qb["inbound spi"])
    (ma,) = ipsecctl(a, "mmsa")
    victims = {"esp": [spi(qa["inbound spi"]), spi(qa["outbound spi"])], "isakmp": [ma["cookies"]]}

    probe = IkeProbe(c)
    with lab.capture_segment("lan") as cap:
        # host-c: main mode (PSK) and quick mode with host-b, then DELETEs of host-a's SPIs and cookies
        probe.start({"local": C, "peer": B, "local_net": f"{C}/32", "remote_net": f"{B}/32",
                     "encryption": "3des-cbc", "group": 2, "psk": PSK, "tunnel": False, "initiate": True,
                     "delete": victims})
        probe.wait_for("sent_delete")
        # host-b refuses each: host-a's SPI it sends on (the one a DELETE of host-a names) and cookie pair
        wait_counter(b, "ike_dropped_delete_of_another_peer_s_sa", 2)
        wait_event(b, f"refused a delete from peer {C} of {ma['cookies'].replace(':', '')}")
        assert tcp_transfer(a, b, payload, port=5012) == payload
        assert tcp_transfer(b, a, payload, port=5013) == payload
    probe.stop()
    pkts = cap.packets()

    # On the wire: host-c negotiated with host-b, then its informationals (exchange 5), protected under its
    # own main mode SA, named host-a's SPIs and cookies (tshark decrypts them with host-b's keys)
    keys = ipsecctl(b, "keys")["tshark_args"]
    rows = isakmp_rows(cap.pcap, keys, ["ip.src", "isakmp.exchangetype", "isakmp.delete.spi"])
    assert {kind for src, kind, _ in rows if src == C} == {"2", "32", "5"}, rows
    deletes = [spis for src, kind, spis in rows if src == C and kind == "5"]
    named = {n.replace(":", "") for spis in deletes for n in spis.split(",")}
    assert {f"{s:08x}" for s in victims["esp"]} | {ma["cookies"].replace(":", "")} <= named, rows

    # host-a and host-b kept their SAs and went on using them: ESP on the same SPIs, no new IKE between them
    assert_only_protocols(pkts, between=(A, B), allowed={"esp"})
    assert_marker_absent(pkts, MARKER)
    esp = assert_protocol_seen(pkts, "esp", between=(A, B))
    assert {p[ESP].spi for p in esp} == set(victims["esp"]), dump(b)
    assert [(q["inbound spi"], q["outbound spi"]) for q in ipsecctl(b, "qmsa") if q["peer"] == A] == [
        (qb["inbound spi"], qb["outbound spi"])], dump(b)
    assert ma["cookies"] in {m["cookies"] for m in ipsecctl(b, "mmsa")}, dump(b)
    assert [(q["inbound spi"], q["outbound spi"]) for q in ipsecctl(a, "qmsa")] == [
        (qa["inbound spi"], qa["outbound spi"])], dump(a)
    assert counters(b)["bad_spi_packets"] == 0 and counters(a)["bad_spi_packets"] == 0
    assert any(q["peer"] == C for q in ipsecctl(b, "qmsa"))  # host-c's own SAs, which it did not delete


def ping(source, destination: str, count: int = 1, wait: float = 1):
    return source.exec(["ping", "-c", str(count), "-i", "0.2", "-W", str(wait), "-p", PATTERN.hex(),
                        destination])


def sa_set(a, b) -> tuple[set[tuple[str, str]], set[str]] | None:
    """Both sides' quick mode SAs (inbound, outbound SPI) and main mode cookies when they agree: host-a's
    outbound SPIs are host-b's inbound and back, nothing on one side that the other lacks; else None."""
    qa, qb = ipsecctl(a, "qmsa"), ipsecctl(b, "qmsa")
    pairs = {(q["inbound spi"], q["outbound spi"]) for q in qa}
    mm = {m["cookies"] for m in ipsecctl(a, "mmsa")}
    agree = pairs == {(q["outbound spi"], q["inbound spi"]) for q in qb}
    agree = agree and mm == {m["cookies"] for m in ipsecctl(b, "mmsa")} and len(pairs) == len(qa)
    return (pairs, mm) if pairs and agree else None


def settled(lab, a, b) -> tuple[set[tuple[str, str]], set[str]]:
    """Wait until both sides hold one SA set and ping each other through it; then, under a capture, that set
    stays and carries the traffic both ways: ESP on its SPIs only, no IKE, nothing in clear."""

    def flowing():
        now = sa_set(a, b)
        return now if now and ping(a, B).ok and ping(b, A).ok and sa_set(a, b) == now else None

    try:
        found = wait_until(flowing, 20, what="one SA set on both sides and pings both ways")
    except TimeoutError as exc:
        raise AssertionError(f"{exc}\nhost-a: {dump(a)}\nhost-b: {dump(b)}") from None
    with lab.capture_segment("lan") as cap:
        for source, destination in ((a, B), (b, A)):
            assert ping(source, destination, count=3, wait=2).ok, dump(source)
    pkts = cap.packets()
    assert_only_protocols(pkts, between=(A, B), allowed={"esp"})
    assert_marker_absent(pkts, PATTERN)
    esp = assert_protocol_seen(pkts, "esp", between=(A, B))
    assert {p[ESP].spi for p in esp} <= {spi(s) for pair in found[0] for s in pair}, found
    assert sa_set(a, b) == found, f"{dump(a)}\n{dump(b)}"
    return found


def test_graceful_restarts_with_traffic_both_ways_end_in_one_consistent_sa_set(trio):
    """host-b's ipsecd stopped on purpose (SIGTERM: deletes sent, policy removed) and started again, three
    times, while host-a and host-b ping each other every 0.2 s: each time both begin main mode at once, each
    with INITIAL-CONTACT, and must end with the same SAs on both sides, carrying the traffic."""
    lab, a, b, _ = trio
    for node in (a, b):
        start(node, SCENARIO)
    streams = [a.spawn(["ping", "-i", "0.2", "-p", PATTERN.hex(), B], name="ping-to-b"),
               b.spawn(["ping", "-i", "0.2", "-p", PATTERN.hex(), A], name="ping-to-a")]
    try:
        sets = [settled(lab, a, b)]
        for _ in range(RESTARTS):
            stop(b)
            wait_until(lambda: not ipsecctl(a, "qmsa"), 10, what="host-a to drop the SAs host-b deleted")
            start(b, SCENARIO)
            sets.append(settled(lab, a, b))
    finally:
        for stream in streams:
            stream.stop()
    spis = [pair for pairs, _ in sets for pair in pairs]
    assert len(set(spis)) == len(spis), sets  # every restart negotiated afresh
