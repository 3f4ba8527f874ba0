"""Key export as Wireshark/tshark decryption tables.

``esp_sa_table`` writes Wireshark's ``esp_sa`` UAT file (Preferences > Protocols >
ESP > ESP SAs; the file ``~/.config/wireshark/esp_sa``): one line per ESP SA,
protocol, source, destination, SPI, encryption algorithm and key, authentication
algorithm and key.  ``tshark_esp_args`` gives the same as ``tshark -o`` options.

>>> from ipsecd.driver.sad import SecurityAssociation
>>> sa = SecurityAssociation(0x1000, "esp", "outbound", "tunnel", "192.0.2.1", "192.0.2.2",
...                          "aes-cbc-128", bytes(16), "hmac-sha1-96", bytes(range(20)))
>>> esp_sa_table([sa]).split(",")[:5]
['"IPv4"', '"192.0.2.1"', '"192.0.2.2"', '"0x00001000"', '"AES-CBC [RFC3602]"']
>>> esp_sa_line(sa).split(",")[6:]
['"HMAC-SHA-1-96 [RFC2404]"', '"0x000102030405060708090a0b0c0d0e0f10111213"']
>>> sa.udp_encap = (4500, 4500)  # NAT-T: our address may be a private one the capture never shows
>>> esp_sa_line(sa).split(",")[1:3]
['"*"', '"*"']
"""
from __future__ import annotations

from collections.abc import Iterable

from ipsecd.algorithms import encryption, integrity
from ipsecd.driver.sad import SecurityAssociation


def _esp_sas(sas: Iterable[SecurityAssociation]) -> Iterable[SecurityAssociation]:
    """ESP SAs only (AH needs no keys to read), including the ESP half of bundles."""
    for sa in sas:
        for member in (sa, sa.inner):
            if member is not None and member.protocol == "esp":
                yield member


def _hex(key: bytes) -> str:
    return "0x" + key.hex() if key else ""


def esp_sa_line(sa: SecurityAssociation) -> str:
    """One ``esp_sa`` UAT record (quoted CSV, as Wireshark writes it). ESP in UDP gets "*" for both
    addresses: behind a NAT our own is the private one, which a capture on the public side never shows
    (the SPI alone finds the SA)."""
    auth = integrity(sa.integrity).wireshark if sa.integrity else "NULL"
    src, dst = ("*", "*") if sa.udp_encap else (sa.src, sa.dst)
    fields = ("IPv4", src, dst, f"0x{sa.spi:08x}", encryption(sa.encryption).wireshark,
              _hex(sa.encryption_key), auth, _hex(sa.integrity_key))
    return ",".join(f'"{f}"' for f in fields)


def esp_sa_table(sas: Iterable[SecurityAssociation]) -> str:
    """The ``esp_sa`` file for ``sas`` (ESP only; AH SAs are skipped)."""
    return "".join(esp_sa_line(sa) + "\n" for sa in _esp_sas(sas))


def tshark_esp_args(sas: Iterable[SecurityAssociation]) -> list[str]:
    """``tshark`` options that decrypt and authenticate the ESP of ``sas``."""
    args = ["-o", "esp.enable_encryption_decode:TRUE", "-o", "esp.enable_authentication_check:TRUE"]
    for sa in _esp_sas(sas):
        args += ["-o", f"uat:esp_sa:{esp_sa_line(sa)}"]
    return args
