"""Kerberos main mode (issue 13) against the real DC: two IKE instances in memory (the unit tests' network)
run with the host's venv inside member-a's network namespace, with member-a's and member-b's keytabs and the
members' krb5.conf; the KDC is the Samba DC of images/dc. Figures are printed: run with -s to see them."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from scapy.layers.inet import IP, UDP
from scapy.packet import Raw
from scapy.utils import wrpcap

from bench.bench_ike import in_netns
from lab import topology as topologies
from lab.docker_backend import DockerBackend
from lab.pytest_plugin import lab_prefix
from lab.running import Lab, Node

ROOT = Path(__file__).resolve().parents[2]
DC_FILES = "/var/lib/ipsec-lab"  # what the DC image exports for members (images/dc/README.md)
SCENARIO = Path(__file__).parent / "ike_kerberos_pair.py"
KDC_TIMEOUT = 3.0  # seconds (MIT's own retries take about 18 s)
SILENT_KDC = [
    "nft add table inet krbt; nft add chain inet krbt input '{ type filter hook input priority 0; }'; "
    "nft add rule inet krbt input udp dport 88 drop; nft add rule inet krbt input tcp dport 88 drop"
]


@pytest.fixture(scope="module")
def domain(
    lab_backend: DockerBackend, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Lab, Path]]:
    """The domain topology (its DC ready when `up` returns) and member-a's namespace; both members'
    keytabs and krb5.conf in a host folder."""
    name = f"{lab_prefix()}-krb-core"
    lab_backend.down(name)
    files = tmp_path_factory.mktemp("krb-core")
    lab = lab_backend.up(topologies.load("domain"), name, files / "lab")
    try:
        dc = lab.node("dc")
        for source in ("keytabs/member-a.keytab", "keytabs/member-b.keytab", "krb5.conf"):
            (files / Path(source).name).write_bytes(dc.get_file(f"{DC_FILES}/{source}"))
        yield lab, files
    finally:
        lab.down()


def main_mode(member: Node, files: Path, run: str, keytab_a: str = "member-a.keytab", tamper: bool = False
              ) -> dict:
    """One Kerberos main mode member-a -> member-b; each run name keeps its own ticket caches."""
    argv = [*in_netns(member.instance.name), sys.executable, str(SCENARIO)]
    argv += [str(files / keytab_a), str(files / f"{run}-a.ccache"), str(files / "member-b.keytab")]
    argv += [str(files / f"{run}-b.ccache"), str(files), str(KDC_TIMEOUT)] + (["tamper"] if tamper else [])
    env = {**os.environ, "KRB5_CONFIG": str(files / "krb5.conf"), "PYTHONPATH": str(ROOT)}
    done = subprocess.run(argv, capture_output=True, text=True, timeout=60, env=env, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout)


def established(result: dict) -> bool:
    return len(result["a"]["sas"]) == len(result["b"]["sas"]) == 1


def test_kerberos_main_mode_between_members_with_their_keytabs(domain: tuple[Lab, Path]) -> None:
    lab, files = domain
    member = lab.node("member-a")
    first = main_mode(member, files, "ok")
    cached = [main_mode(member, files, "ok") for _ in range(5)]
    assert established(first), first["a"]["events"] + first["b"]["events"]
    (sa_a,), (sa_b,) = first["a"]["sas"], first["b"]["sas"]
    assert sa_a["authentication"] == sa_b["authentication"] == "kerberos"
    assert sa_a["peer identity"] == "host/member-b.lab.test@LAB.TEST"
    assert sa_b["peer identity"] == "member-a$@LAB.TEST"
    assert all(established(c) for c in cached)
    mm3 = bytes.fromhex(first["messages"][2])
    assert b"\x60" in mm3 and bytes([129]) in mm3  # the AP-REQ (GSS-API InitialContextToken) in payload 129
    seconds = sorted(c["seconds"] for c in cached)
    print(
        f"\nKerberos main mode: first contact (AS + TGS + AP) {first['seconds'] * 1000:.0f} ms;"
        f" ticket cached: median {seconds[len(seconds) // 2] * 1000:.0f} ms ({len(mm3)}-byte main mode 3)"
    )


def what_tshark_shows(messages: list[str], pcap: Path) -> str:
    """tshark's verbose dissection of the exchange (member-a 10.0.0.1 sends the odd-numbered messages)."""
    ends = [("10.0.0.1", "10.0.0.2"), ("10.0.0.2", "10.0.0.1")]
    packets = [
        IP(src=ends[n % 2][0], dst=ends[n % 2][1]) / UDP(sport=500, dport=500) / Raw(bytes.fromhex(m))
        for n, m in enumerate(messages[:4])
    ]
    wrpcap(str(pcap), packets)
    argv = ["tshark", "-r", str(pcap), "-V"]
    return subprocess.run(argv, capture_output=True, text=True, check=True, timeout=60).stdout


@pytest.mark.skipif(shutil.which("tshark") is None, reason="tshark is not installed")
def test_what_tshark_shows_of_method_65001_and_payload_129(domain: tuple[Lab, Path]) -> None:
    """Wireshark's ISAKMP dissector knows neither: 65001 is XAUTH to it, 16384 and 129 private use, and the
    token stays opaque bytes (the GSS-API InitialContextToken of the AP-REQ starts 0x60)."""
    lab, files = domain
    shown = what_tshark_shows(main_mode(lab.node("member-a"), files, "ok")["messages"], files / "mm.pcap")
    assert shown.count("Authentication Method: XAUTHInitPreShared (65001)") == 2  # offer and reply
    assert shown.count("Type: Private use (16384)") == 2  # the GSS identities
    assert "Value: 68006f00730074002f006d0065006d006200650072002d0061" in shown  # "host/member-a", UTF-16LE
    assert shown.count("Payload: Private Use (129)") == 2
    assert "Vendor ID (13) : GSSAPI" in shown
    assert "Data Payload: 6082" in shown  # the AP-REQ, undecoded


def test_member_without_keytab_fails_with_no_credentials_counted(domain: tuple[Lab, Path]) -> None:
    lab, files = domain
    result = main_mode(lab.node("member-a"), files, "no-keytab", keytab_a="absent.keytab")
    assert not result["a"]["sas"] and not result["b"]["sas"]
    counters = result["a"]["counters"]
    assert counters["Authentication Failures"] == 1
    assert counters["Authentication Failures: no credentials"] == 1
    assert any("no credentials" in text for _, text in result["a"]["events"])
    assert result["b"]["counters"]["Authentication Failures"] == 1  # told by the notify


def test_kdc_silent_cached_ticket_works_and_a_new_one_fails_within_the_timeout(
    domain: tuple[Lab, Path],
) -> None:
    lab, files = domain
    dc, member = lab.node("dc"), lab.node("member-a")
    assert established(main_mode(member, files, "cached"))  # tickets now in cached-a.ccache
    dc.exec(["sh", "-c", *SILENT_KDC], check=True)
    try:
        still = main_mode(member, files, "cached")
        fresh = main_mode(member, files, "fresh")
    finally:
        dc.exec(["nft", "delete", "table", "inet", "krbt"], check=True)
    assert established(still), still["a"]["events"]
    assert not fresh["a"]["sas"]
    assert fresh["a"]["counters"]["Authentication Failures: KDC unreachable"] == 1
    assert KDC_TIMEOUT <= fresh["seconds"] < KDC_TIMEOUT + 2
    print(
        f"\nKDC silent: cached ticket {still['seconds'] * 1000:.0f} ms; "
        f"no ticket: failed after {fresh['seconds']:.2f} s (deadline {KDC_TIMEOUT:g} s)"
    )


def test_tampered_ap_req_is_rejected_by_the_acceptor_and_counted(domain: tuple[Lab, Path]) -> None:
    lab, files = domain
    result = main_mode(lab.node("member-a"), files, "tampered", tamper=True)
    assert not result["a"]["sas"] and not result["b"]["sas"]
    counters_b = result["b"]["counters"]
    assert counters_b["Authentication Failures"] == 1
    assert counters_b["Authentication Failures: integrity check failed"] == 1, result["b"]["events"]
    assert result["a"]["counters"]["Authentication Failures"] == 1  # told by AUTHENTICATION-FAILED
