"""strongswan-interop on gateway-tunnel: ipsecd gateway (gw-a) ↔ strongSwan gateway (gw-b), IKEv1 main mode.

See scenarios/strongswan-interop/README.md. strongSwan plays the documents' "non-Microsoft gateway": its
ESP is always in UDP 4500 (libipsec; it fakes its NAT-D hash), so ipsecd must detect "peer behind NAT",
float IKE to 4500 and use UDP-encapsulated tunnel mode (RFC 3947/3948) even with no NAT on the path.
"""

from __future__ import annotations

import json

import pytest
from pki import Pki
from swan_lab import (
    AES_GCM,
    GW_A,
    GW_B,
    PSK,
    REKEY_PING_LOSS,
    SITE_A,
    SITE_B,
    STRONGSWAN_GATEWAY,
    SUITES,
    credentials,
    ipsecd_policy,
    lost_pings,
    manual_sa_config,
    tunnel,
    udp_esp,
)

from lab.capture import assert_marker_absent, assert_only_protocols, assert_protocol_seen, wait_until
from lab.harness import tshark_decrypted_payloads
from lab.ike_probe import IkeProbe
from lab.running import Node
from lab.strongswan import Charon
from lab.traffic import tcp_transfer, wait_listening

MARKER = b"STRONGSWAN-INTEROP-MARKER-"
IKE_AND_ESP_IN_UDP = {"udp/500", "udp/4500"}
OVERRIDES = {"nodes": {"gw-b": STRONGSWAN_GATEWAY}}  # gw-a keeps the node image (ipsecd) and its routes
POLICY_DIR = "/var/lib/ipsecd/policies"
CERT_DIR = "/etc/ipsecd/certificates"
CONFIG = "/etc/ipsecd/ipsecd.yaml"


@pytest.fixture
def lab(lab_up):
    return lab_up("gateway-tunnel", overrides=OVERRIDES)


@pytest.fixture
def strongswan(lab) -> Charon:
    return Charon(lab.node("gw-b")).fresh(key_log=True)


def install_credentials(node: Node, pki: Pki) -> dict[str, str]:
    """gw-a's certificate, key and the CA in CERT_DIR; returns their paths."""
    me = pki.issue("gw-a", GW_A)
    paths = {"cert": f"{CERT_DIR}/gw-a.pem", "key": f"{CERT_DIR}/gw-a.key", "ca": f"{CERT_DIR}/lab-ca.pem"}
    node.put_file(paths["cert"], me.cert_pem)
    node.put_file(paths["key"], me.key_pem, mode=0o600)
    node.put_file(paths["ca"], pki.ca_pem)
    return paths


def ipsecd_config(credentials: dict[str, str], main_mode_lifetime: int | None = None) -> str:
    """gw-a's ipsecd.yaml: the policy store (its `assigned` file picks the policy), IKE on the WAN address,
    the certificate, key and CA for the certificate cases (docs/ike.md, strongswan-interop layout), and a
    lab's main mode lifetime if given."""
    return (
        f"policy: {{store: {POLICY_DIR}}}\n"
        "ike:\n"
        f"  address: {GW_A}\n"
        f"  certificate: {credentials['cert']}\n"
        f"  private_key: {credentials['key']}\n"
        f"  trusted_cas: [{credentials['ca']}]\n"
        + (f"  main_mode_lifetime: {main_mode_lifetime}\n" if main_mode_lifetime else "")
    )


def configure_ipsecd(node: Node, policy: str, pki: Pki, main_mode_lifetime: int | None = None) -> None:
    """Give ipsecd in gw-a the policy (local store: a folder of policies and the `assigned` one), its
    certificate and the CA; make a running ipsecd re-read the policy (`ipsecctl refresh`), or (re)start it
    when it runs another configuration (a manual-key test before this one leaves its own ipsecd.yaml)."""
    config = ipsecd_config(install_credentials(node, pki), main_mode_lifetime)
    node.put_file(f"{POLICY_DIR}/interop.yaml", policy)
    node.put_file(f"{POLICY_DIR}/assigned", "interop.yaml\n")
    daemon = node.process("ipsecd")
    if daemon.alive() and node.get_file(CONFIG) == config.encode():
        node.exec(["ipsecctl", "refresh"], check=True, timeout=20)
        return
    if daemon.alive():
        daemon.stop()
    node.put_file(CONFIG, config)
    node.spawn(["ipsecd", "--config", CONFIG], name="ipsecd", log="/var/log/ipsecd.log")
    wait_until(lambda: node.exec(["ipsecctl", "status"]).ok, 20, what=f"{node.name}: ipsecd to answer")


def ipsecd_sas(node: Node) -> list[dict]:
    return json.loads(node.exec(["ipsecctl", "sa", "--json"], check=True, timeout=20).stdout)


def until_ping_passes(lab, timeout: float = 20) -> None:
    """The first packet starts IKE in ipsecd (acquire); ping until one gets through."""
    host_a = lab.node("host-a")
    wait_until(
        lambda: host_a.exec(["ping", "-c", "1", "-W", "1", lab.node("host-b").address()]).ok,
        timeout,
        what="a ping from host-a through the negotiated tunnel",
    )


CASES = [
    (suite, auth, initiator)
    for suite in SUITES
    for auth in ("psk", "cert")
    for initiator in ("ipsecd", "strongswan")
]


@pytest.mark.parametrize(("suite", "auth", "initiator"), CASES)
def test_ike_component_negotiates_with_strongswan(lab, strongswan, pki, suite, auth, initiator):
    """ipsecd's IKE alone (lab/ike_probe.py, no data plane) against strongSwan over the WAN."""
    suite_ = SUITES[suite]
    gw_a = lab.node("gw-a")
    strongswan.load(tunnel("gw-b", suite_, auth), files=credentials(pki, pki.issue("gw-b", GW_B)))
    config = {
        "local": GW_A,
        "peer": GW_B,
        "local_net": SITE_A,
        "remote_net": SITE_B,
        "initiate": initiator == "ipsecd",
        "encryption": suite_.encryption,
        "group": suite_.group,
        **({"psk": PSK} if auth == "psk" else install_credentials(gw_a, pki)),
    }
    probe = IkeProbe(gw_a)
    with lab.capture_segment("wan") as wan:
        try:
            probe.start(config)
            if initiator == "strongswan":
                strongswan.initiate()
            added = probe.wait_for("add_sa")
            child = strongswan.wait_child()
        finally:
            probe.stop()
    (sa,) = added
    assert (sa["inbound"], sa["outbound"]) == (int(child["spi-out"], 16), int(child["spi-in"], 16))
    assert (sa["mode"], sa["udp"]) == ("tunnel", [4500, 4500])  # ESP in UDP 4500, as strongSwan requires
    (ike_sa,) = strongswan.sas()
    assert (ike_sa["encr-alg"], ike_sa["dh-group"], child["encap"]) == (suite_.encr, suite_.dh_group, "yes")
    assert ike_sa.get("initiator") == ("yes" if initiator == "strongswan" else None)
    if auth == "cert":
        assert ike_sa["remote-id"] == Pki.dn_of("gw-a")
    pkts = wan.packets()
    assert_only_protocols(pkts, allowed=IKE_AND_ESP_IN_UDP)
    assert_protocol_seen(pkts, "udp/500", between=(GW_A, GW_B))  # main mode 1-4, then 4500 (marker)
    assert_protocol_seen(pkts, "udp/4500", between=(GW_A, GW_B))


@pytest.mark.parametrize("suite", SUITES)
def test_ipsecd_driver_keyed_from_the_negotiation_carries_traffic_with_strongswan(
    lab, strongswan, pki, suite
):
    """ipsecd's data plane against libipsec before the daemon runs IKE: ipsecd's IKE negotiates, then
    ipsecd's driver gets that SA pair as manual SAs (keys from strongSwan's key log), ESP in UDP 4500."""
    suite_ = SUITES[suite]
    gw_a, host_a, host_b = lab.node("gw-a"), lab.node("host-a"), lab.node("host-b")
    strongswan.load(tunnel("gw-b", suite_, "psk"))
    config = {
        "local": GW_A,
        "peer": GW_B,
        "local_net": SITE_A,
        "remote_net": SITE_B,
        "psk": PSK,
        "encryption": suite_.encryption,
        "group": suite_.group,
        "initiate": True,
    }
    probe = IkeProbe(gw_a).start(config)
    try:
        probe.wait_for("add_sa")
    finally:
        gw_a.exec("kill -9 $(cat /run/lab/ike-probe.pid)")  # gone without deleting: strongSwan keeps the SA
    child = strongswan.wait_child()
    spi_in, spi_out = int(child["spi-in"], 16), int(child["spi-out"], 16)
    keys = {k.spi: k for k in strongswan.esp_keys()}
    gw_a.put_file(CONFIG, manual_sa_config(keys, outbound=spi_in, inbound=spi_out))
    daemon = gw_a.spawn(
        ["ipsecd", "--config", "/etc/ipsecd/ipsecd.yaml"], name="ipsecd", log="/var/log/ipsecd.log"
    )
    try:
        wait_until(lambda: gw_a.exec(["ipsecctl", "status"]).ok, 20, what="ipsecd to answer")
        payload = MARKER * 2000
        with lab.capture_segment("wan") as wan:
            host_a.exec(["ping", "-c", "3", "-i", "0.2", "-W", "2", host_b.address()], check=True)
            host_b.exec(["ping", "-c", "3", "-i", "0.2", "-W", "2", host_a.address()], check=True)
            assert tcp_transfer(host_a, host_b, payload, port=5006) == payload
            assert tcp_transfer(host_b, host_a, payload, port=5007) == payload
        counters = json.loads(gw_a.exec(["ipsecctl", "stats", "--json"], check=True).stdout)["counters"]
    finally:
        daemon.stop()
    pkts = wan.packets()
    assert_only_protocols(pkts, allowed={"udp/4500"})
    assert_marker_absent(pkts, MARKER)
    assert set(udp_esp(pkts)) == {(GW_A, GW_B, spi_in), (GW_B, GW_A, spi_out)}
    assert counters["packets_not_authenticated"] == counters["packets_not_decrypted"] == 0
    assert counters["confidential_bytes_received"] >= len(payload)
    (child,) = strongswan.child_sas()
    assert int(child["bytes-in"]) >= len(payload) and int(child["bytes-out"]) >= len(payload)
    # tshark with strongSwan's keys authenticates every packet, ipsecd's included, and finds both transfers
    inner, authentic = tshark_decrypted_payloads(wan.pcap, strongswan.tshark_args())
    assert authentic == len(udp_esp(pkts))  # every ESP packet on the WAN, ICV good
    assert inner.count(MARKER * 10) >= 2


@pytest.mark.parametrize(("suite", "auth", "initiator"), [*CASES, (AES_GCM.name, "psk", "ipsecd")])
def test_ipsecd_and_strongswan_secure_the_sites(lab, strongswan, pki, suite, auth, initiator):
    """The daemon (policy -> IKE -> driver) against strongSwan; also with AES-GCM in quick mode."""
    suite_ = {**SUITES, AES_GCM.name: AES_GCM}[suite]
    gw_a = lab.node("gw-a")
    configure_ipsecd(gw_a, ipsecd_policy("gw-a", suite_, auth, pki), pki)
    strongswan.load(tunnel("gw-b", suite_, auth), files=credentials(pki, pki.issue("gw-b", GW_B)))
    host_a, host_b = lab.node("host-a"), lab.node("host-b")
    payload = MARKER * 2000
    with lab.capture_segment("wan") as wan:
        if initiator == "strongswan":
            strongswan.initiate()
        else:
            until_ping_passes(lab)
        host_a.exec(["ping", "-c", "3", "-i", "0.2", "-W", "2", host_b.address()], check=True)
        host_b.exec(["ping", "-c", "3", "-i", "0.2", "-W", "2", host_a.address()], check=True)
        assert tcp_transfer(host_a, host_b, payload, port=5004) == payload
        assert tcp_transfer(host_b, host_a, payload, port=5005) == payload
    pkts = wan.packets()
    assert_only_protocols(pkts, allowed=IKE_AND_ESP_IN_UDP)
    assert_protocol_seen(pkts, "udp/500", between=(GW_A, GW_B))
    assert_marker_absent(pkts, MARKER)

    (sa,) = strongswan.sas()
    assert (sa["version"], sa["state"], sa["encr-alg"], sa["dh-group"]) == (
        "1",
        "ESTABLISHED",
        suite_.encr,
        suite_.dh_group,
    ), sa
    assert sa.get("initiator") == ("yes" if initiator == "strongswan" else None)
    if auth == "cert":
        assert sa["remote-id"] == Pki.dn_of("gw-a")
    (child,) = sa["child-sas"].values()
    assert (child["state"], child["mode"], child["encap"]) == ("INSTALLED", "TUNNEL", "yes"), child
    spi_in, spi_out = int(child["spi-in"], 16), int(child["spi-out"], 16)
    # ipsecd shows the same pair, UDP-encapsulated on 4500 both ways
    ours = {int(s["spi"], 16): s for s in ipsecd_sas(gw_a) if s["protocol"] == "esp"}
    assert ours[spi_in]["direction"] == "outbound" and ours[spi_out]["direction"] == "inbound", ours
    for spi in (spi_in, spi_out):
        assert (ours[spi]["mode"], ours[spi]["udp_encap"]) == ("tunnel", [4500, 4500]), ours[spi]
        assert (ours[spi]["encryption"], ours[spi]["integrity"]) == (
            suite_.quick_mode_encryption, suite_.esp_integrity), ours[spi]
    assert set(udp_esp(pkts)) == {(GW_A, GW_B, spi_in), (GW_B, GW_A, spi_out)}
    # tshark with strongSwan's keys (not ours) authenticates and decrypts ipsecd's ESP too
    inner, authentic = tshark_decrypted_payloads(wan.pcap, strongswan.tshark_args())
    assert authentic == len(udp_esp(pkts))  # every ESP packet on the WAN, ICV good
    assert inner.count(MARKER * 10) >= 2  # both transfers, one sent by each side's data plane


@pytest.mark.parametrize("rekeyed_by", ["strongswan", "ipsecd"])
def test_quick_mode_rekey_while_traffic_flows_loses_no_connection(lab, strongswan, pki, rekeyed_by):
    """strongSwan rekeys on `swanctl --rekey`; ipsecd on its kilobyte lifetime: the packet that passes the
    soft limit (90 %) asks, or, if the quick mode is slower than the last 10 %, an acquire at the hard limit
    does; one new pair."""
    suite = SUITES["aes128-sha1-modp2048"]
    # 8 s at 40 Mbit/s is about 40 MB: a 30 MB lifetime is crossed once (soft at 90 %, mid-stream)
    lifetime = "30720k/3600s" if rekeyed_by == "ipsecd" else "100000k/3600s"
    gw_a = lab.node("gw-a")
    configure_ipsecd(gw_a, ipsecd_policy("gw-a", suite, "psk", pki, lifetime=lifetime), pki)
    strongswan.load(tunnel("gw-b", suite, "psk"))
    strongswan.initiate()
    ((old_in, old_out),) = {(c["spi-in"], c["spi-out"]) for c in strongswan.child_sas()}
    host_a, host_b = lab.node("host-a"), lab.node("host-b")
    server = host_b.spawn(["iperf3", "-s", "-1"], name="iperf3-interop-server")
    wait_listening(host_b, 5201)
    with lab.capture_segment("wan") as wan:
        client = host_a.spawn(
            ["iperf3", "-J", "-t", "8", "-i", "0.5", "-b", "40M", "-c", host_b.address()],
            name=f"iperf3-interop-{rekeyed_by}",  # a log of its own per case: spawn appends
            log=f"/tmp/iperf3-interop-{rekeyed_by}.json",
        )
        ping = host_a.spawn(
            ["ping", "-c", "120", "-i", "0.05", "-W", "1", host_b.address()],
            name=f"ping-interop-{rekeyed_by}",
        )
        if rekeyed_by == "strongswan":
            wait_until(lambda: int(strongswan.child_sas()[0]["bytes-in"]) > 1_000_000, 10, what="traffic")
            strongswan.rekey()
        new = strongswan.wait_child(lambda c: c["spi-in"] != old_in, timeout=30)
        wait_until(lambda: not client.alive() and not ping.alive(), 30, what="iperf3 and ping to finish")
    server.stop()
    result = json.loads(client.log())
    assert "error" not in result, result.get("error")
    intervals = [i["sum"]["bytes"] for i in result["intervals"]]
    assert len(intervals) >= 16 and min(intervals) > 0, intervals
    assert lost_pings(ping.log()) <= REKEY_PING_LOSS, ping.log()
    out_spis = {spi for src, _, spi in udp_esp(wan.packets()) if src == GW_B}
    assert out_spis == {int(old_out, 16), int(new["spi-out"], 16)}
    assert int(new["spi-in"], 16) in {int(s["spi"], 16) for s in ipsecd_sas(gw_a)}


#: ipsecd's main mode lifetime in the lifetime test (ipsecd.yaml ike.main_mode_lifetime: a lab's, below the
#: 5 minutes a Windows policy allows), against strongSwan's 4 hours (+10 %).
SHORT_MAIN_MODE = 40


def test_a_main_mode_lifetime_shorter_than_strongswans_keeps_the_tunnel(lab, strongswan, pki):
    """Issue 10 item 7: strongSwan begins main mode with its 4 h; ipsecd answers with RESPONDER-LIFETIME
    40 s in main mode 6 and renegotiates main mode at 95 % (then 90 % of the ones it began) while the
    quick mode SAs are in use; strongSwan moves its CHILD_SA to each new IKE SA (its IKEv1 reauthentication),
    so the one quick mode SA pair carries a ping every 0.5 s across two main mode lifetimes and more.
    Before, ipsecd deleted its expired main mode, strongSwan deleted the CHILD_SA with it, and ipsecd went on
    sending on its own: every packet lost until the quick mode SA ended."""
    suite = SUITES["aes128-sha1-modp2048"]
    gw_a, host_a, host_b = lab.node("gw-a"), lab.node("host-a"), lab.node("host-b")
    configure_ipsecd(gw_a, ipsecd_policy("gw-a", suite, "psk", pki), pki, main_mode_lifetime=SHORT_MAIN_MODE)
    strongswan.load(tunnel("gw-b", suite, "psk"))
    strongswan.initiate()
    ((spi_in, spi_out),) = {(c["spi-in"], c["spi-out"]) for c in strongswan.child_sas()}
    count = int(2.5 * SHORT_MAIN_MODE / 0.5)
    ping = host_a.spawn(["ping", "-c", str(count), "-i", "0.5", "-W", "1", host_b.address()],
                        name="ping-main-mode-lifetime")
    wait_until(lambda: not ping.alive(), count * 0.5 + 30, what="the pings across two main mode lifetimes")
    stats = json.loads(gw_a.exec(["ipsecctl", "stats", "--json"], check=True).stdout)["counters"]
    assert lost_pings(ping.log()) <= 3, ping.log()
    assert stats["ike_oakley_main_modes"] >= 3, stats  # strongSwan's, then ipsecd's before each one expired
    assert {(c["spi-in"], c["spi-out"]) for c in strongswan.child_sas()} == {(spi_in, spi_out)}
    assert "adopting 1 children" in strongswan.log()


def test_a_restarted_strongswan_clears_ipsecds_stale_sas_with_initial_contact(lab, strongswan, pki):
    """Issue 10 item 6 on the wire: charon is killed (no DELETE) and started again; its new main mode carries
    INITIAL-CONTACT, and ipsecd drops every SA it had with the old charon although a NAT was seen
    (strongSwan's libipsec always reports one): one main mode SA and one quick mode pair left, both the new
    charon's, and traffic flows. Before, INITIAL-CONTACT was ignored after a NAT, and ipsecd's later quick
    modes went out under the dead main mode SA for the rest of its lifetime."""
    suite = SUITES["aes128-sha1-modp2048"]
    gw_a, gw_b = lab.node("gw-a"), lab.node("gw-b")
    configure_ipsecd(gw_a, ipsecd_policy("gw-a", suite, "psk", pki), pki)
    strongswan.load(tunnel("gw-b", suite, "psk"))
    strongswan.initiate()
    gw_b.exec(["sh", "-c", "kill -9 $(pidof charon)"], check=True)
    wait_until(lambda: not gw_b.process("charon").alive(), 10, what="charon to die")
    strongswan.start()
    strongswan.load(tunnel("gw-b", suite, "psk"))
    strongswan.initiate()
    (sa,) = strongswan.sas()
    (child,) = sa["child-sas"].values()
    cookies = f"{sa['initiator-spi']}:{sa['responder-spi']}"

    def only_the_new_charons() -> bool:
        main = json.loads(gw_a.exec(["ipsecctl", "mmsa", "--json"], check=True).stdout)
        quick = json.loads(gw_a.exec(["ipsecctl", "qmsa", "--json"], check=True).stdout)
        return [m["cookies"] for m in main] == [cookies] and [q["inbound spi"] for q in quick] == [
            f"{int(child['spi-out'], 16):#010x}"]

    wait_until(only_the_new_charons, 10, what="ipsecd to hold the new charon's SAs only")
    host_a, host_b = lab.node("host-a"), lab.node("host-b")
    host_a.exec(["ping", "-c", "3", "-i", "0.2", "-W", "2", host_b.address()], check=True)
    host_b.exec(["ping", "-c", "3", "-i", "0.2", "-W", "2", host_a.address()], check=True)
