"""strongswan-tunnel on gateway-tunnel: both gateways run strongSwan (IKEv1 main mode), the interop anchor.

See scenarios/strongswan-tunnel/README.md. The hosts run no IPsec; the gateways have no plain route to the
other site, so traffic between the sites flows only through an installed SA, and the WAN must carry only
IKE (UDP 500, then 4500) and ESP in UDP 4500.
"""

from __future__ import annotations

import json

import pytest
from pki import Pki
from swan_lab import (
    GW_A,
    GW_B,
    REKEY_PING_LOSS,
    STRONGSWAN_GATEWAY,
    SUITES,
    credentials,
    lost_pings,
    tunnel,
    udp_esp,
)

from lab.backend import CommandError
from lab.capture import assert_marker_absent, assert_only_protocols, assert_protocol_seen, wait_until
from lab.harness import tshark_decrypted_payloads
from lab.strongswan import Charon, Tunnel
from lab.traffic import tcp_transfer, wait_listening

MARKER = b"STRONGSWAN-TUNNEL-MARKER-"
IKE_AND_ESP_IN_UDP = {"udp/500", "udp/4500"}
OVERRIDES = {"nodes": {"gw-a": STRONGSWAN_GATEWAY, "gw-b": STRONGSWAN_GATEWAY}}


@pytest.fixture
def lab(lab_up):
    return lab_up("gateway-tunnel", overrides=OVERRIDES)


@pytest.fixture
def charons(lab) -> dict[str, Charon]:
    """charon running in both gateways (started once per lab), with no SA left from an earlier test."""
    found = {name: Charon(lab.node(name)).fresh(key_log=True) for name in ("gw-a", "gw-b")}
    wait_until(lambda: not any(c.sas() for c in found.values()), 10, what="no IKE SA left on either gateway")
    return found


def load(charons: dict[str, Charon], pki: Pki, make) -> None:
    """Load the tunnel `make(gateway)` into each gateway, with its certificate and key."""
    for name, charon in charons.items():
        charon.load(make(name), files=credentials(pki, pki.issue(name, charon.node.address("eth2"))))


def pings(lab, count: int = 3) -> None:
    host_a, host_b = lab.node("host-a"), lab.node("host-b")
    host_a.exec(["ping", "-c", str(count), "-i", "0.2", "-W", "2", host_b.address()], check=True)
    host_b.exec(["ping", "-c", str(count), "-i", "0.2", "-W", "2", host_a.address()], check=True)


CASES = [
    ("3des-sha1-modp1024", "psk", "gw-a"),
    ("aes128-sha1-modp2048", "psk", "gw-b"),
    ("3des-sha1-modp1024", "cert", "gw-b"),
    ("aes128-sha1-modp2048", "cert", "gw-a"),
]


@pytest.mark.parametrize(("suite", "auth", "initiator"), CASES)
def test_sites_talk_through_strongswan_and_the_wan_carries_only_ike_and_esp_in_udp(
    lab, charons, pki, suite, auth, initiator
):
    suite_ = SUITES[suite]
    load(charons, pki, lambda gw: tunnel(gw, suite_, auth))
    payload = MARKER * 2000
    with lab.capture_segment("wan") as wan:
        charons[initiator].initiate()
        pings(lab)
        assert tcp_transfer(lab.node("host-a"), lab.node("host-b"), payload, port=5003) == payload
    pkts = wan.packets()
    assert_only_protocols(pkts, allowed=IKE_AND_ESP_IN_UDP)  # every IP packet on the WAN
    assert_protocol_seen(pkts, "udp/500", between=(GW_A, GW_B))  # MM1-MM4, then the float to 4500
    assert_marker_absent(pkts, MARKER)

    spis = {}
    for name, charon in charons.items():
        (sa,) = charon.sas()
        assert (sa["version"], sa["state"], sa["encr-alg"], sa["integ-alg"], sa["dh-group"]) == (
            "1",
            "ESTABLISHED",
            suite_.encr,
            "HMAC_SHA1_96",
            suite_.dh_group,
        ), sa
        assert sa.get("encr-keysize") == suite_.keysize
        assert sa.get("initiator") == ("yes" if name == initiator else None)
        if auth == "cert":
            assert sa["remote-id"] == Pki.dn_of("gw-b" if name == "gw-a" else "gw-a")
        (child,) = sa["child-sas"].values()
        assert (child["state"], child["mode"], child["protocol"], child["encap"]) == (
            "INSTALLED",
            "TUNNEL",
            "ESP",
            "yes",
        ), child
        spis[name] = (int(child["spi-in"], 16), int(child["spi-out"], 16))
        assert (
            int(child["bytes-in"]) > len(payload)
            if name == "gw-b"
            else int(child["bytes-out"]) > len(payload)
        )
    # the SPIs on the wire are the ones both daemons show, each direction with its own
    assert set(udp_esp(pkts)) == {(GW_A, GW_B, spis["gw-a"][1]), (GW_B, GW_A, spis["gw-a"][0])}
    assert spis["gw-a"] == spis["gw-b"][::-1]
    # tshark, keyed from charon's key log, decrypts every ESP packet, authenticates it, finds the marker
    inner, authentic = tshark_decrypted_payloads(wan.pcap, charons["gw-a"].tshark_args())
    assert authentic == len(udp_esp(pkts))  # every ESP packet on the WAN, ICV good
    assert MARKER * 10 in inner


def test_wrong_preshared_key_means_no_sa_and_no_traffic(lab, charons, pki):
    suite = SUITES["aes128-sha1-modp2048"]
    charons["gw-a"].load(tunnel("gw-a", suite, "psk"))
    charons["gw-b"].load(Tunnel(GW_B, GW_A, "10.2.0.0/24", "10.1.0.0/24", suite.ike, suite.esp, psk="wrong"))
    with lab.capture_segment("wan") as wan:
        with pytest.raises(CommandError, match="CHILD_SA 'net' not established"):
            charons["gw-a"].initiate(timeout=8)
        ping = lab.node("host-a").exec(["ping", "-c", "2", "-i", "0.2", "-W", "1", "10.2.0.10"])
    assert ping.rc != 0
    assert not charons["gw-b"].child_sas()
    assert_only_protocols(wan.packets(), allowed=IKE_AND_ESP_IN_UDP)
    # the responder cannot decrypt MM5: the keys derived from the two PSKs differ
    assert "decryption failed?" in charons["gw-b"].log()


def test_certificate_from_an_untrusted_ca_is_refused(lab, charons, pki):
    suite = SUITES["aes128-sha1-modp2048"]
    stranger = Pki("not-the-lab CA")
    charons["gw-a"].load(
        tunnel("gw-a", suite, "cert"), files=credentials(stranger, stranger.issue("gw-a", GW_A))
    )
    charons["gw-b"].load(tunnel("gw-b", suite, "cert"), files=credentials(pki, pki.issue("gw-b", GW_B)))
    with pytest.raises(CommandError):
        charons["gw-a"].initiate(timeout=8)
    assert not charons["gw-b"].child_sas()
    assert "no trusted RSA public key found" in charons["gw-b"].log()


def test_quick_mode_rekey_while_traffic_flows_loses_no_connection(lab, charons, pki):
    suite = SUITES["aes128-sha1-modp2048"]
    load(charons, pki, lambda gw: tunnel(gw, suite, "psk"))
    charons["gw-a"].initiate()
    ((old_in, old_out),) = {(c["spi-in"], c["spi-out"]) for c in charons["gw-a"].child_sas()}
    host_a, host_b = lab.node("host-a"), lab.node("host-b")
    server = host_b.spawn(["iperf3", "-s", "-1"], name="iperf3-rekey-server")
    wait_listening(host_b, 5201)
    with lab.capture_segment("wan") as wan:
        client = host_a.spawn(
            ["iperf3", "-J", "-t", "6", "-i", "0.5", "-b", "20M", "-c", host_b.address()],
            name="iperf3-rekey",
            log="/tmp/iperf3-rekey.json",
        )
        ping = host_a.spawn(
            ["ping", "-c", "100", "-i", "0.05", "-W", "1", host_b.address()], name="ping-rekey"
        )
        wait_until(lambda: int(charons["gw-b"].child_sas()[0]["bytes-in"]) > 1_000_000, 10, what="traffic")
        charons["gw-a"].rekey()
        new = charons["gw-a"].wait_child(lambda c: c["spi-in"] != old_in)
        charons["gw-b"].wait_child(lambda c: c["spi-out"] == new["spi-in"])
        wait_until(lambda: not client.alive() and not ping.alive(), 20, what="iperf3 and ping to finish")
    server.stop()
    result = json.loads(client.log())
    assert "error" not in result, result.get("error")
    intervals = [i["sum"]["bytes"] for i in result["intervals"]]
    assert len(intervals) >= 12 and min(intervals) > 0, intervals  # never a stalled half-second
    assert result["end"]["sum_received"]["bytes"] > 10_000_000
    assert lost_pings(ping.log()) <= REKEY_PING_LOSS, ping.log()
    # both the old and the new SA carried ESP from gw-a during the capture
    out_spis = {spi for src, _, spi in udp_esp(wan.packets()) if src == GW_A}
    assert out_spis == {int(old_out, 16), int(new["spi-out"], 16)}
    states = {c["spi-in"]: (c["state"], int(c["bytes-out"])) for c in charons["gw-a"].child_sas()}
    assert states[old_in][0] == "REKEYED"  # IKEv1: the old SA stays until it expires, unused
    assert states[new["spi-in"]][0] == "INSTALLED" and states[new["spi-in"]][1] > 1_000_000
