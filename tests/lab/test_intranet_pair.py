"""intranet-pair on real containers: ping and TCP between the hosts, seen in clear on the LAN."""

from lab.capture import (
    assert_checksums_valid,
    assert_marker_present,
    assert_only_protocols,
    assert_protocol_seen,
    assert_source_seen,
)
from lab.traffic import iperf3, tcp_transfer

MARKER = b"IPSEC-LAB-MARKER-"


def test_ping_between_hosts_is_seen_in_clear(lab_up):
    lab = lab_up("intranet-pair")
    a, b = lab.node("host-a"), lab.node("host-b")
    assert (a.address("eth1"), b.address("eth1")) == ("10.0.0.1", "10.0.0.2")
    with b.capture("eth1") as cap:
        a.exec(["ping", "-c", "3", "-i", "0.2", "-W", "2", b.address()], check=True)
    pkts = cap.packets()
    assert len(assert_protocol_seen(pkts, "icmp", between=("10.0.0.1", "10.0.0.2"))) == 6
    assert_source_seen(pkts, "10.0.0.2", dst="10.0.0.1")
    assert cap.pcap.exists() and cap.pcap.parent.name.startswith("test_ping")


def test_tcp_transfer_arrives_whole_and_in_clear(lab_up):
    lab = lab_up("intranet-pair")
    a, b = lab.node("host-a"), lab.node("host-b")
    payload = MARKER * 2000  # 34 kB: many segments, checksums verified by the receiving kernel
    with lab.capture_segment("lan") as cap:
        assert tcp_transfer(a, b, payload, port=5001) == payload
    pkts = cap.packets()
    assert_only_protocols(pkts, between=("10.0.0.1", "10.0.0.2"), allowed={"tcp/5001"})
    assert_marker_present(pkts, MARKER)
    assert assert_checksums_valid(pkts) > 10  # TX checksum offload is off on lab links


def test_bulk_tcp_with_iperf3(lab_up):
    lab = lab_up("intranet-pair")
    summary = iperf3(lab.node("host-a"), lab.node("host-b"), seconds=1)
    assert summary["sum_received"]["bytes"] > 1_000_000


def test_node_handle_files_processes_and_errors(lab_up):
    import pytest

    from lab.docker_backend import CommandError

    node = lab_up("intranet-pair").node("host-a")
    node.put_file("/etc/ipsecd/test.txt", "hello\n")
    assert node.exec(["cat", "/etc/ipsecd/test.txt"], check=True).stdout == "hello\n"
    assert node.get_file("/etc/ipsecd/test.txt") == b"hello\n"
    with pytest.raises(CommandError, match=r"(?s)`ls /nonexistent` exited 2.*No such file"):
        node.exec(["ls", "/nonexistent"], check=True)
    proc = node.spawn(["sh", "-c", "echo started; exec sleep 60"], name="sleeper")
    proc.wait_for_log("started")
    assert proc.alive()
    proc.stop()
    assert not proc.alive()
    assert node.host.interface("eth1").addresses == ["10.0.0.1"]
    assert node.exec("ethtool -k eth1 | grep '^tx-checksumming'").stdout.strip() == "tx-checksumming: off"


def test_ipsecd_config_from_the_topology_is_copied_into_the_node(lab_up, tmp_path, caplog):
    config = tmp_path / "host-a.yaml"
    config.write_text("# ipsecd node config\nrules: []\n")
    lab = lab_up("intranet-pair", overrides={"nodes": {"host-a": {"ipsecd": str(config)}}}, fresh=True)
    assert lab.node("host-a").get_file("/etc/ipsecd/ipsecd.yaml") == config.read_bytes()
    assert lab.node("host-b").exec(["test", "-e", "/etc/ipsecd/ipsecd.yaml"]).rc == 1
    daemon = lab.node("host-a").exec(["python3", "-c", "import ipsecd.daemon"]).ok
    started = "ipsecd started" in caplog.text
    assert started == daemon, caplog.text  # started exactly when the image has the daemon
