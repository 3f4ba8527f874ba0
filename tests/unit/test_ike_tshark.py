"""tshark, given the keys we export, must decrypt our main mode 5-6, quick mode and informational messages,
and the ESP made with the quick mode keys (tshark is the independent IKEv1 implementation here)."""

import shutil
import subprocess

import pytest
from scapy.layers.inet import ICMP, IP, UDP
from scapy.layers.ipsec import ESP, SecurityAssociation
from scapy.packet import Raw
from scapy.utils import wrpcap

from ipsecd.ike.settings import MainModeOffer, PeerPolicy, PreSharedKey, QuickModeOffer
from tests.unit.test_ike_component import A, B, negotiate, negotiate_through_nat

pytestmark = pytest.mark.skipif(shutil.which("tshark") is None, reason="tshark is not installed")

ESP_NAMES = {"3des-cbc": "TripleDES-CBC [RFC2451]", "aes-cbc-128": "AES-CBC [RFC3602]",
             "aes-gcm-128": "AES-GCM with 16 octet ICV [RFC4106]"}
AUTH_NAMES = {"hmac-sha1-96": "HMAC-SHA-1-96 [RFC2404]", "hmac-md5-96": "HMAC-MD5-96 [RFC2403]", None: "NULL"}
SCAPY_NAMES = {"3des-cbc": "3DES", "aes-cbc-128": "AES-CBC", "aes-gcm-128": "AES-GCM",
               "hmac-sha1-96": "HMAC-SHA1-96", "hmac-md5-96": "HMAC-MD5-96", None: None}


def tshark(pcap, options, fields):
    cmd = ["tshark", "-r", str(pcap), "-T", "fields", "-E", "separator=|"]
    for option in options:
        cmd += ["-o", option]
    for f in fields:
        cmd += ["-e", f]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True, timeout=60).stdout
    return [line.split("|") for line in out.splitlines()]


@pytest.mark.parametrize(("main_mode_cipher", "cipher", "integrity", "group"), [
    ("3des-cbc", "3des-cbc", "hmac-sha1-96", 2),
    ("aes-cbc-128", "aes-cbc-128", "hmac-md5-96", 14),
    ("aes-cbc-128", "aes-gcm-128", None, 14),  # RFC 4106 in quick mode: KEYMAT ends with the 4-byte salt
])
def test_tshark_decrypts_our_ike_and_esp(tmp_path, main_mode_cipher, cipher, integrity, group):
    policy = PeerPolicy(
        auth=[PreSharedKey(b"k")],
        main_mode=[MainModeOffer(main_mode_cipher, "sha1", group)],
        quick_mode=[QuickModeOffer("esp", cipher, integrity)],
    )
    lab = negotiate(policy)
    lab.ike_a.idle(lab.drv_a.added[0].inbound.spi)  # an informational delete at the end
    lab.net.run()
    done = lab.drv_a.added[0]
    packets = [
        IP(src=src[0], dst=dst[0]) / UDP(sport=src[1], dport=dst[1]) / Raw(data)
        for _, src, dst, data in lab.net.log
    ]
    ping = IP(src=A, dst=B) / ICMP() / Raw(b"ipsec-lab ike keys")
    out = done.outbound
    sa = SecurityAssociation(
        ESP,
        spi=out.spi,
        crypt_algo=SCAPY_NAMES[cipher],
        crypt_key=out.encryption_key,
        auth_algo=SCAPY_NAMES[integrity],
        auth_key=out.integrity_key,
    )
    packets.append(sa.encrypt(ping))
    pcap = tmp_path / "ike.pcap"
    wrpcap(str(pcap), packets)

    keys = lab.ike_a.ikev1_decryption_table()
    assert keys == [f"{done.isakmp_sa.icookie.hex()},{done.isakmp_sa.keys.ka.hex()}"]
    options = [
        f"uat:ikev1_decryption_table:{keys[0]}",
        "esp.enable_encryption_decode:TRUE",
        "esp.enable_authentication_check:TRUE",
        f'uat:esp_sa:"IPv4","{A}","{B}","{out.spi:#010x}","{ESP_NAMES[cipher]}",'
        f'"0x{out.encryption_key.hex()}","{AUTH_NAMES[integrity]}","0x{out.integrity_key.hex()}"',
    ]
    rows = tshark(
        pcap,
        options,
        [
            "frame.number",
            "isakmp.exchangetype",
            "isakmp.id.data.ipv4_addr",
            "isakmp.spi",
            "isakmp.delete.protoid",
            "icmp.type",
            "esp.icv_good",
        ],
    )
    mm5, mm6, qm1, qm2 = rows[4], rows[5], rows[6], rows[7]
    assert mm5[2] == A and mm6[2] == B  # the identities are only readable after decryption
    spi_in, spi_out = f"{done.inbound.spi:08x}", f"{done.outbound.spi:08x}"
    assert spi_in in qm1[3].replace(":", "") and qm1[2] == f"{A},{B}"
    assert spi_out in qm2[3].replace(":", "")
    delete = rows[9]
    assert delete[1] == "5" and delete[4] == "3"  # informational, delete of an ESP SA
    assert rows[-1][5] == "8" and rows[-1][6] == "1"  # the ESP decrypts to an echo request, ICV good


def test_tshark_follows_the_float_to_udp_4500_through_a_nat(tmp_path):
    lab = negotiate_through_nat()
    pcap = tmp_path / "nat.pcap"
    wrpcap(
        str(pcap),
        [
            IP(src=src[0], dst=dst[0]) / UDP(sport=src[1], dport=dst[1]) / Raw(data)
            for _, src, dst, data in lab.net.log
        ],
    )
    rows = tshark(
        pcap,
        [f"uat:ikev1_decryption_table:{lab.ike_b.ikev1_decryption_table()[0]}"],
        ["udp.dstport", "isakmp.exchangetype", "isakmp.id.data.ipv4_addr", "isakmp.spi"],
    )
    assert [r[0] for r in rows[:9]] == ["500"] * 4 + ["4500"] * 5
    assert rows[4][2] == "192.168.1.10" and rows[5][2] == B  # main mode 5/6 read after the non-ESP marker
    assert f"{lab.drv_b.added[0].inbound.spi:08x}" in rows[7][3].replace(":", "")
