"""ipsecctl's IKE and policy commands: what is asked of ipsecd, and how answers read (no daemon needed)."""

import argparse
import json

from ipsecd import ipsecctl
from ipsecd.daemon import event_kind, ike_counter_key


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
