"""The `lab` command end to end, as a user types it."""

import os
import subprocess
import sys

import pytest

from lab.capture import tshark
from lab.docker_backend import DockerBackend
from lab.topology import load


@pytest.fixture
def lab_cli(lab_backend, tmp_path):
    env = {**os.environ, "LAB_RESULTS": str(tmp_path)}

    def run(*args: str, stdin: str = "") -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", "lab", *args], capture_output=True, text=True, env=env, input=stdin
        )

    return run


def test_up_status_exec_capture_down(lab_cli, lab_backend, lab_name, tmp_path):
    name = lab_name("cli")
    lab_cli("down", "--name", name)
    try:
        up = lab_cli("up", "intranet-pair", "--name", name)
        assert up.returncode == 0, up.stderr
        assert f"{name}-host-a" in up.stdout
        tries = up.stdout.split("try:\n")[1].splitlines()
        assert len(tries) == 3 and all(f"--name {name}" in line for line in tries), up.stdout
        assert "ipsecctl qmsa" in tries[1] and "lab capture stop" in tries[2]
        assert "is already up" in lab_cli("up", "intranet-pair", "--name", name).stdout
        status = lab_cli("status").stdout
        row = [name, "host-b", "host", "running", "ipsecd", "running", "eth1=10.0.0.2/24"]
        assert row in [line.split() for line in status.splitlines()], status
        # a mistyped node, interface or lab is named with the closest, never a traceback
        for argv, expected in (
            (("exec", "router", "--name", name, "--", "true"), "no node 'router' (nodes: host-a, host-b)"),
            (("logs", "hostb", "--name", name), "has no node 'hostb' (did you mean 'host-b'?)"),
            (("capture", "start", "host-b", "eht1", "--name", name), "'eht1' (did you mean 'eth1'?)"),
            (("exec", "host-a", "--name", f"{name}x", "--", "true"), f"lab {name}x is not up (did you mean"),
        ):
            refused = lab_cli(*argv)
            assert refused.returncode == 1 and expected in refused.stderr, refused.stderr
            assert "Traceback" not in refused.stderr
        restarted = lab_cli("restart", "host-b", "--name", name)
        assert restarted.returncode == 0 and "restarted and re-wired" in restarted.stdout, restarted.stderr
        started = lab_cli("capture", "start", "host-b", "eth1", "--name", name)
        assert started.returncode == 0, started.stderr
        # the default lab: ipsecd on both hosts, so the very first ping is negotiated and sent as ESP
        ping = lab_cli("exec", "host-a", "--name", name, "--", "ping", "-c1", "-W5", "host-b")
        assert ping.returncode == 0 and "1 received" in ping.stdout, ping.stdout + ping.stderr
        assert lab_cli("exec", "host-a", "--name", name, "--", "false").returncode == 1
        assert "==> /var/log/ipsecd.log <==" in lab_cli("logs", "host-a", "--name", name).stdout
        stopped = lab_cli("capture", "stop", "host-b", "eth1", "--name", name)
        pcap = tmp_path / "labs" / name / "host-b-eth1.pcap"
        assert stopped.returncode == 0 and f"lab decode {pcap}" in stopped.stdout, stopped.stdout
        assert {p.name for p in (pcap.parent / "wireshark").iterdir()} == {"esp_sa", "ikev1_decryption_table"}
        assert str(pcap) in lab_cli("capture", "list").stdout
        on_wire = [r[0] for r in tshark(pcap, ["_ws.col.Protocol"], "ip")]
        assert "ESP" in on_wire and "ICMP" not in on_wire, on_wire
        decoded = lab_cli("decode", str(pcap)).stdout
        assert "Echo (ping) request" in decoded and "Echo (ping) reply" in decoded, decoded
        assert "Identity Protection (Main Mode)" in decoded and "Quick Mode" in decoded
    finally:
        down = lab_cli("down", "--name", name)
    assert down.returncode == 0 and f"removed {name}-host" in down.stdout
    assert "nothing was left" in lab_cli("down", "--name", name).stdout
    assert lab_backend.containers(name) == []


def test_unrunnable_topology_and_bad_file_are_refused(lab_cli, lab_name, tmp_path):
    later = tmp_path / "later.yaml"
    later.write_text("name: later\nrunnable: false\nreason: its image comes later\n"
                     "segments: {lan: {subnet: 10.0.0.0/24}}\n"
                     "nodes: {a: {interfaces: {eth1: {segment: lan}}}}\n")
    refused = lab_cli("up", str(later), "--name", lab_name("never"))
    assert refused.returncode == 1
    assert "not runnable yet: its image comes later" in refused.stderr
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


def test_stdin_cp_shell_and_this_checkouts_lab_on_a_shared_machine(lab_cli, lab_backend, lab_name, tmp_path):
    """Two labs hold a host-a: the one of another checkout is left alone by look-ups and `down --all`."""
    mine, theirs = lab_name("mine"), lab_name("theirs")
    bare = {"nodes": {"host-a": {"ipsecd": None}, "host-b": {"ipsecd": None}}}
    other = DockerBackend(checkout=tmp_path / "another-checkout")
    for name in (mine, theirs):
        lab_cli("down", "--name", name)
    try:
        lab_backend.up(load("intranet-pair", bare), mine)
        other.up(load("intranet-pair", bare), theirs)
        assert lab_cli("exec", "host-a", "--", "cat", stdin="typed\n").stdout == "typed\n"
        assert lab_cli("shell", "host-b", stdin="echo $(hostname) from bash\n").stdout == "host-b from bash\n"
        (tmp_path / "in").mkdir()
        (tmp_path / "in" / "f.txt").write_text("hello\n")
        assert lab_cli("cp", str(tmp_path / "in"), "host-a:/tmp").returncode == 0
        assert lab_cli("exec", "host-a", "--", "cat", "/tmp/in/f.txt").stdout == "hello\n"
        copied = lab_cli("cp", "host-a:/tmp/in/f.txt", str(tmp_path / "back.txt"))
        assert copied.returncode == 0 and (tmp_path / "back.txt").read_text() == "hello\n", copied.stderr
        down = lab_cli("down", "--all")
        assert f"lab {mine} down" in down.stdout and theirs in down.stdout and "--force" in down.stdout
        assert lab_backend.containers(mine) == [] and len(lab_backend.containers(theirs)) == 2
    finally:
        for name in (mine, theirs):
            lab_cli("down", "--name", name)
