"""gateway-tunnel on real containers: traffic between the sites is routed across the WAN."""

from lab.capture import assert_marker_present, assert_protocol_seen, wait_until
from lab.traffic import tcp_transfer

MARKER = b"SITE-TO-SITE-MARKER"


def test_site_to_site_traffic_crosses_the_wan(lab_up):
    lab = lab_up("gateway-tunnel")
    host_a, host_b = lab.node("host-a"), lab.node("host-b")
    with lab.node("gw-a").capture("eth2") as wan:
        host_a.exec(["ping", "-c", "2", "-i", "0.2", "-W", "2", host_b.address()], check=True)
        assert tcp_transfer(host_a, host_b, MARKER * 100, port=5002) == MARKER * 100
    pkts = wan.packets()
    assert len(assert_protocol_seen(pkts, "icmp", between=("10.1.0.10", "10.2.0.10"))) == 4
    assert_protocol_seen(pkts, "tcp/5002", between=("10.1.0.10", "10.2.0.10"))
    assert_marker_present(pkts, MARKER)
    assert host_a.exec(["ping", "-c", "1", "-W", "2", "host-b"]).ok, "node names resolve through /etc/hosts"
    hops = host_a.exec(["ping", "-c", "1", "-t", "2", "-W", "2", host_b.address()])
    assert hops.rc != 0, "two routers lie between the sites, so TTL 2 must not reach host-b"


def test_cutting_the_wan_separates_the_sites(lab_up):
    lab = lab_up("gateway-tunnel")
    host_a, host_b = lab.node("host-a"), lab.node("host-b")
    lab.set_link("gw-a", "eth2", up=False)
    try:
        assert not host_a.exec(["ping", "-c", "1", "-W", "1", host_b.address()]).ok
        assert "NO-CARRIER" in lab.node("gw-a").exec(["ip", "link", "show", "eth2"]).stdout
    finally:
        lab.set_link("gw-a", "eth2", up=True)
    wait_until(lambda: host_a.exec(["ping", "-c", "1", "-W", "1", host_b.address()]).ok, 10, what="WAN back")


def test_a_restarted_gateway_comes_back_wired(lab_up):
    lab = lab_up("gateway-tunnel")
    host_a, host_b = lab.node("host-a"), lab.node("host-b")
    lab.node("gw-a").put_file("/tmp/before-restart", "x")
    old_id = lab.node("gw-a").instance.id
    gw = lab.restart("gw-a")
    assert gw.instance.id != old_id and not gw.exec(["test", "-e", "/tmp/before-restart"]).ok
    with gw.capture("eth2") as wan:
        host_a.exec(["ping", "-c", "1", "-W", "2", host_b.address()], check=True)
    assert len(assert_protocol_seen(wan.packets(), "icmp", between=("10.1.0.10", "10.2.0.10"))) == 2
