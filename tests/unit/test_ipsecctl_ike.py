"""ipsecctl's IKE and policy commands: what is asked of ipsecd, and how answers read (no daemon needed)."""

import argparse
import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from ipsecd import ipsecctl
from ipsecd.daemon import event_kind, ike_counter_key
from ipsecd.driver import keyexport
from ipsecd.driver.sad import SecurityAssociation


def args(*argv: str) -> argparse.Namespace:
    return ipsecctl.make_parser().parse_args(argv)


def test_requests_for_what_was_typed(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert ipsecctl.request_for(args("filters", "--generic")) == ("policy_filters", {"kind": "generic"})
    assert ipsecctl.request_for(args("filters")) == ("filters", {})
    assert ipsecctl.request_for(args("policy", "--all")) == ("policies", {})
    assert ipsecctl.request_for(args("import", "p.yaml", "--assign")) == (
        "import", {"file": str(tmp_path / "p.yaml"), "assign": True})


def test_keys_into_a_wireshark_profile_folder(tmp_path):
    result = {"esp_sa": '"IPv4","10.0.0.1","10.0.0.2","0x00001001","NULL","","NULL",""\n',
              "ikev1_decryption_table": ["0011223344556677,00ff"], "tshark_args": []}
    ipsecctl.write_keys(result, args("keys", "--wireshark", "-o", str(tmp_path)))
    assert (tmp_path / "esp_sa").read_text() == result["esp_sa"]
    assert (tmp_path / "ikev1_decryption_table").read_text() == "0011223344556677,00ff\n"


def test_views_read_like_ipsecmon():
    events = [{"time": 0, "kind": "negotiation-failed", "text": "main mode with 10.0.0.2 failed: no answer"}]
    assert ipsecctl.show_events(events) == f"00:00:00 negotiation-failed: {events[0]['text']}"
    qmsa = ipsecctl.VIEWS["qmsa"]([{"peer": "10.0.0.2", "inbound spi": "0x00000101", "mode": "transport"}])
    assert qmsa.splitlines()[0].split()[:3] == ["PEER", "INBOUND", "SPI"]
    assert "10.0.0.2" in qmsa and ipsecctl.VIEWS["mmsa"]([]) == "no main mode SAs"
    assert json.loads(json.dumps(events)) == events
    assert ike_counter_key("Negotiation Failures: no response") == "ike_negotiation_failures_no_response"
    assert event_kind("quick mode SAs ESP[3DES,SHA1] transport ... installed") == "quick-mode"
    assert event_kind("dropped a message from 10.0.0.1 that failed its integrity check") == "dropped"
    counters = ["confidential_bytes_sent", "confidential_bytes_received", "bad_spi_packets",
                "packets_not_decrypted", "packets_not_authenticated", "replayed_packets", "dropped_by_policy"]
    status = {"pid": 1, "uptime_seconds": 2, "config": "c", "filters": 2, "active_sas": 2,
              "pending_acquires": 0, "tun": "ipsec0", "counters": dict.fromkeys(counters, 0),
              "keying": {"policy": "p", "ike_address": "10.0.0.1", "main_mode_sas": 1, "quick_mode_sas": 1}}
    assert ipsecctl.show_status(status).splitlines()[1] == (
        "policy: p   IKE on 10.0.0.1: 1 main mode SAs, 1 quick mode SAs")


VECTORS = Path(__file__).resolve().parents[2].parent / "shared" / "vectors" / "strongswan-ikev1"


@pytest.mark.skipif(shutil.which("tshark") is None or not VECTORS.is_dir(), reason="needs tshark and vectors")
def test_keys_folder_is_made_and_tshark_decrypts_with_it(tmp_path):
    """`ipsecctl keys --wireshark -o DIR` makes DIR and writes the two UAT files Wireshark loads from a
    configuration folder: with them tshark decrypts strongSwan's main mode message 5 and its ESP."""
    sas = [SecurityAssociation(0x2C2A598D, "esp", "outbound", "tunnel", "10.77.0.1", "10.77.0.2",
                               "aes-cbc-128", bytes.fromhex("a4f53ea023eed6ca6a52b4e9c2e0388b"),
                               "hmac-sha1-96", bytes.fromhex("ce4d49cc19b97ad246f94d1ea736af137d75454d"))]
    result = {"esp_sa": keyexport.esp_sa_table(sas), "tshark_args": [],
              "ikev1_decryption_table": ["aecc403f3918efa0,36206d4ef5b4ac7429045639152ca465"]}
    folder = tmp_path / "keys"
    ipsecctl.write_keys(result, args("keys", "--wireshark", "-o", str(folder)))
    pcap = VECTORS / "cap-v1-aes128-sha1-modp2048-outer.pcap"
    decoded = subprocess.run(
        ["tshark", "-n", "-r", str(pcap), "-o", "esp.enable_encryption_decode:TRUE",
         "-Y", "frame.number == 5 || frame.number == 10",
         "-T", "fields", "-e", "isakmp.id.type", "-e", "icmp.type"],
        capture_output=True, text=True, env={**os.environ, "WIRESHARK_CONFIG_DIR": str(folder)}, check=True)
    assert decoded.stdout.split() == ["1", "8"]  # MM5's ID payload (ID_IPV4_ADDR), an echo request


def test_keys_to_a_file_is_refused(tmp_path):
    (tmp_path / "keys.txt").write_text("")
    with pytest.raises(SystemExit, match="not a folder"):
        ipsecctl.write_keys({"esp_sa": ""}, args("keys", "--wireshark", "-o", str(tmp_path / "keys.txt")))


def test_policy_says_where_a_domain_members_policy_came_from():
    source = {"source": "cache", "dc": "dc.lab.test (10.0.0.10:636)", "gpo": "CN={G},CN=Policies",
              "ipsec_id": "{298D1349}", "when_changed": "2004-05-13T08:00:00Z",
              "reason": "dc.lab.test (10.0.0.10:636): no keytab at /etc/krb5.keytab"}
    shown = ipsecctl.show_policy({"source": source, "name": "Test Policy", "rules": []})
    first, because, *policy = shown.splitlines()
    assert first == ("# policy source: from the local cache; GPO CN={G},CN=Policies, ipsecID {298D1349}, "
                     "whenChanged 2004-05-13T08:00:00Z")
    assert because.endswith("no keytab at /etc/krb5.keytab") and "name: Test Policy" in policy
    assert ipsecctl.show_policy({"source": {**source, "source": "none", "reason": ""}}).splitlines() == [
        "# policy source: none; GPO CN={G},CN=Policies, ipsecID {298D1349}, whenChanged 2004-05-13T08:00:00Z",
        "no policy assigned"]


def test_static_takes_the_dc_from_ipsecd_yaml(tmp_path, monkeypatch):
    config = tmp_path / "ipsecd.yaml"
    config.write_text("policy:\n  store: p\n  directory: {dc: 10.0.0.10, realm: LAB.TEST, ca: ca.pem}\n")
    seen = {}
    monkeypatch.setattr("ipsecd.policy.directory_admin.main", lambda argv: seen.update(
        argv=argv, server=os.environ["IPSEC_DC_ADDRESS"], ca=os.environ["IPSEC_DC_CA"]) or 0)
    for name in ("IPSEC_DC_ADDRESS", "IPSEC_DC_CA", "IPSEC_REALM", "IPSEC_DC_NAME"):
        monkeypatch.delenv(name, raising=False)
    assert ipsecctl.static(["list"], str(config)) == 0
    assert seen == {"argv": ["list"], "server": "10.0.0.10", "ca": str(tmp_path / "ca.pem")}
