"""The `lab` command end to end, as a user types it."""

import os
import subprocess
import sys

import pytest


@pytest.fixture
def lab_cli(lab_backend, tmp_path):
    env = {**os.environ, "LAB_RESULTS": str(tmp_path)}

    def run(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "lab", *args], capture_output=True, text=True, env=env)

    return run


def test_up_status_exec_capture_down(lab_cli, lab_backend, lab_name, tmp_path):
    name = lab_name("cli")
    lab_cli("down", "--name", name)
    try:
        up = lab_cli("up", "intranet-pair", "--name", name)
        assert up.returncode == 0, up.stderr
        assert f"{name}-host-a" in up.stdout
        assert "is already up" in lab_cli("up", "intranet-pair", "--name", name).stdout
        status = lab_cli("status").stdout
        assert f"{name:20} host-b       host       running   eth1=10.0.0.2/24" in status
        restarted = lab_cli("restart", "host-b", "--name", name)
        assert restarted.returncode == 0 and "restarted and re-wired" in restarted.stdout, restarted.stderr
        started = lab_cli("capture", "start", "host-b", "eth1", "--name", name)
        assert started.returncode == 0, started.stderr
        ping = lab_cli("exec", "host-a", "--name", name, "--", "ping", "-c1", "-W2", "10.0.0.2")
        assert ping.returncode == 0 and "1 received" in ping.stdout, ping.stdout + ping.stderr
        assert lab_cli("exec", "host-a", "--name", name, "--", "false").returncode == 1
        assert "no logs on host-a" in lab_cli("logs", "host-a", "--name", name).stdout
        assert lab_cli("capture", "stop", "host-b", "eth1", "--name", name).returncode == 0
        pcap = tmp_path / "labs" / name / "host-b-eth1.pcap"
        assert pcap.stat().st_size > 24 + 2 * 98  # header + echo request and reply
        assert str(pcap) in lab_cli("capture", "list").stdout
    finally:
        down = lab_cli("down", "--name", name)
    assert down.returncode == 0 and f"removed {name}-host" in down.stdout
    assert "nothing was left" in lab_cli("down", "--name", name).stdout
    assert lab_backend.containers(name) == []


def test_unrunnable_topology_and_bad_file_are_refused(lab_cli, lab_name, tmp_path):
    refused = lab_cli("up", "domain", "--name", lab_name("never"))
    assert refused.returncode == 1
    assert "not runnable yet: the domain controller image" in refused.stderr
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: bad\nsegments: {lan: {subnet: 10.0.0.0/33}}\nnodes: {}\n")
    checked = lab_cli("validate", str(bad))
    assert checked.returncode == 1
    assert f"{bad}:2: segments.lan.subnet: '10.0.0.0/33' is not an IPv4 network" in checked.stderr


def test_check_probes_the_machine(lab_cli):
    checked = lab_cli("check")
    assert checked.returncode == 0, checked.stdout
    for line in ("ok   docker", "ok   veth + bridge", "ok   tun device", "ok   nftables nat"):
        assert line in checked.stdout
