"""tshark, given our exported keys, decrypts and authenticates the ESP we build.

One pcap holds a packet of every algorithm pair, in both modes, with and without
UDP encapsulation (one SA, one SPI each); tshark must show each inner UDP marker
and report no bad ICV.  Both forms are checked: ``-o uat:esp_sa:...`` options and
the ``esp_sa`` file in a Wireshark configuration folder.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import warnings

import pytest

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from scapy.layers.inet import IP, UDP
    from scapy.layers.l2 import Ether
    from scapy.packet import Raw, raw
    from scapy.utils import wrpcap

from ipsecd.algorithms import ENCRYPTIONS, INTEGRITIES
from ipsecd.driver.keyexport import esp_sa_table, tshark_esp_args
from ipsecd.driver.sad import SecurityAssociation

pytestmark = pytest.mark.skipif(shutil.which("tshark") is None, reason="tshark is not installed")

PEER_A, PEER_B = "192.0.2.1", "198.51.100.2"


def all_sas():
    spi = 0x5000
    for enc in ENCRYPTIONS.values():
        for auth in (None,) if enc.aead else (None, *INTEGRITIES):
            if enc.mode == "null" and auth is None:
                continue
            for mode in ("transport", "tunnel"):
                for udp in (None, (4500, 4500)):
                    spi += 1
                    yield SecurityAssociation(
                        spi, "esp", "outbound", mode, PEER_A, PEER_B, enc.name,
                        os.urandom(enc.key_size), auth,
                        os.urandom(INTEGRITIES[auth].key_size) if auth else b"", udp_encap=udp)


def marker(sa: SecurityAssociation, n: int) -> bytes:
    return f"ipsec-lab-{sa.spi:08x}-{n}|".encode()


@pytest.fixture(scope="module")
def capture(tmp_path_factory):
    sas = list(all_sas())
    packets = []
    for sa in sas:
        for n, size in enumerate((0, 7, 300)):
            src, dst = (PEER_A, PEER_B) if sa.mode == "transport" else ("10.1.0.1", "10.2.0.1")
            inner = IP(src=src, dst=dst) / UDP(sport=1234, dport=7777) / Raw(marker(sa, n) + bytes(size))
            packets.append(Ether() / IP(sa.encapsulate(raw(inner))))
    path = tmp_path_factory.mktemp("esp") / "esp.pcap"
    wrpcap(str(path), packets)
    return sas, path


MARKER_LENGTH = len(marker(all_sas().__next__(), 0))


def tshark_fields(path, args, env=None):
    out = subprocess.run(
        ["tshark", "-n", "-r", str(path), *args, "-T", "fields", "-E", "separator=|",
         "-e", "esp.spi", "-e", "data.data", "-e", "esp.icv_good", "-e", "esp.icv_bad"],
        capture_output=True, text=True, check=True, env=env, timeout=120).stdout
    return [line.split("|") for line in out.splitlines()]


def check_all_decrypted(sas, rows):
    assert len(rows) == 3 * len(sas)
    seen = set()
    for spi, data, good, bad in rows:
        assert bad in ("", "0"), f"tshark says ICV bad for SPI {spi}"
        seen.add(bytes.fromhex(data.split(",")[-1])[:MARKER_LENGTH])
        sa = next(s for s in sas if s.spi == int(spi, 16))
        if sa.integrity:
            assert good == "1", f"tshark did not verify the ICV of SPI {spi}"
    for sa in sas:
        for n in range(3):
            assert marker(sa, n) in seen, f"SPI {sa.spi:#x} ({sa.encryption}, {sa.integrity}, " \
                                               f"{sa.mode}, udp={sa.udp_encap}) not decrypted"


def test_tshark_decrypts_with_o_options(capture):
    sas, path = capture
    check_all_decrypted(sas, tshark_fields(path, tshark_esp_args(sas)))


def test_tshark_decrypts_with_esp_sa_file(capture, tmp_path):
    sas, path = capture
    (tmp_path / "wireshark").mkdir()
    (tmp_path / "wireshark" / "esp_sa").write_text(esp_sa_table(sas))
    env = dict(os.environ, XDG_CONFIG_HOME=str(tmp_path), HOME=str(tmp_path))
    args = ["-o", "esp.enable_encryption_decode:TRUE", "-o", "esp.enable_authentication_check:TRUE"]
    check_all_decrypted(sas, tshark_fields(path, args, env))


def test_wrong_keys_fail_in_tshark_too(capture):
    """The check above could pass vacuously if tshark ignored keys: with other keys it must fail."""
    sas, path = capture
    wrong = [SecurityAssociation(sa.spi, "esp", "outbound", sa.mode, sa.src, sa.dst, sa.encryption,
                                 os.urandom(len(sa.encryption_key)), sa.integrity,
                                 os.urandom(len(sa.integrity_key)),
                                 udp_encap=sa.udp_encap) for sa in sas]
    by_spi = {sa.spi: sa for sa in sas}
    for spi, data, good, bad in tshark_fields(path, tshark_esp_args(wrong)):
        sa = by_spi[int(spi.split(",")[0], 16)]  # garbage may look like a nested ESP
        if sa.integrity:
            assert good != "1" and bad in ("1", ""), (sa.encryption, sa.integrity, bad)  # "": gave up
        if sa.encryption != "null":
            assert b"ipsec-lab" not in bytes.fromhex(data.split(",")[-1])


def test_tshark_reads_ah_esp_bundles(tmp_path):
    """The table exports the ESP half of a bundle; tshark checks AH's framing and decrypts the ESP."""
    packets, sas = [], []
    for n, mode in enumerate(("transport", "tunnel")):
        esp_sa = SecurityAssociation(0x6001 + n, "esp", "outbound", mode, PEER_A, PEER_B, "3des-cbc",
                                     os.urandom(24), "hmac-sha1-96", os.urandom(20))
        sa = SecurityAssociation(0x7001 + n, "ah", "outbound", mode, PEER_A, PEER_B,
                                 integrity="hmac-md5-96", integrity_key=os.urandom(16), inner=esp_sa)
        sas.append(sa)
        inner = IP(src=PEER_A, dst=PEER_B) / UDP(sport=1234, dport=7777) / Raw(marker(esp_sa, 0))
        packets.append(Ether() / IP(sa.encapsulate(raw(inner))))
    wrpcap(str(tmp_path / "bundle.pcap"), packets)
    assert esp_sa_table(sas).count("\n") == 2 and "0x00007001" not in esp_sa_table(sas)
    out = subprocess.run(["tshark", "-n", "-r", str(tmp_path / "bundle.pcap"), *tshark_esp_args(sas),
                          "-T", "fields", "-E", "separator=|", "-e", "ah.spi", "-e", "esp.spi",
                          "-e", "data.data", "-e", "esp.icv_good"],
                         capture_output=True, text=True, check=True, timeout=120).stdout
    rows = [line.split("|") for line in out.splitlines()]
    assert [(int(a, 16), int(e, 16), good) for a, e, _, good in rows] == [
        (0x7001, 0x6001, "1"), (0x7002, 0x6002, "1")]
    assert [bytes.fromhex(r[2]) for r in rows] == [marker(sa.inner, 0) for sa in sas]
