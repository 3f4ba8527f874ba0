"""The `lab` command's answers that need no lab: validation, help, messages."""

import shutil
import warnings

import pytest

from ipsecd.driver.keyexport import esp_sa_table
from ipsecd.driver.sad import SecurityAssociation
from lab import cli
from lab.cli import main
from lab.scenario import SCENARIOS

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from scapy.layers.inet import ICMP, IP
    from scapy.layers.l2 import Ether
    from scapy.packet import Raw, raw
    from scapy.utils import wrpcap


def test_validate_checks_scenarios_as_scenarios_and_topologies_as_topologies(tmp_path, capsys):
    folder = tmp_path / "mine"
    shutil.copytree(SCENARIOS / "wrong-psk", folder)
    assert main(["validate", str(folder), str(folder / "scenario.yaml"), "intranet-pair"]) == 0
    assert capsys.readouterr().out.count(": ok\n") == 3
    scenario = folder / "scenario.yaml"
    scenario.write_text(scenario.read_text().replace("table: qmsa", "table: qmsas"))
    assert main(["validate", str(folder)]) == 1
    refused = capsys.readouterr().err
    assert f"{scenario}:18: expect[5].sa.table: 'qmsas' is not one of mmsa, qmsa, sa" in refused, refused


def test_every_verb_and_argument_says_what_it_is():
    """`lab --help` ends with the first steps; no verb shows a bare argument without a word on it."""
    parser = cli.parser()
    assert "lab scenario list" in parser.format_help()
    verbs = parser._subparsers._group_actions[0].choices  # type: ignore[union-attr]
    bare = [f"{name} {action.dest}" for name, sub in verbs.items() for action in sub._actions
            if action.help is None and action.dest != "help"]
    assert bare == [], bare


@pytest.mark.skipif(shutil.which("tshark") is None, reason="tshark is not installed")
def test_decode_shows_each_esp_packet_decrypted_with_its_spi(tmp_path, capfd):
    sa = SecurityAssociation(0x1234ABCD, "esp", "outbound", "transport", "10.0.0.1", "10.0.0.2",
                             "aes-cbc-128", bytes(range(16)), "hmac-sha1-96", bytes(range(20)))
    inner = IP(src="10.0.0.1", dst="10.0.0.2") / ICMP() / Raw(b"DECODE-MARKER")
    wrpcap(str(tmp_path / "lan.pcap"), [Ether() / IP(sa.encapsulate(raw(inner)))])
    (tmp_path / "wireshark").mkdir()
    (tmp_path / "wireshark" / "esp_sa").write_text(esp_sa_table([sa]))
    (tmp_path / "wireshark" / "ikev1_decryption_table").write_text("")
    assert main(["decode", str(tmp_path / "lan.pcap")]) == 0
    out = capfd.readouterr().out
    assert "an ESP packet shows its SPI" in out
    assert "10.0.0.1 → 10.0.0.2     ICMP 102 0x1234abcd Echo (ping) request" in out, out
