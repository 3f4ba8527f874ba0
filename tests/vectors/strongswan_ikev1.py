"""Loader for the strongSwan IKEv1 captures in ../shared/vectors/strongswan-ikev1 (see its README).

A case gives the datagrams of the capture (IKE with the non-ESP marker removed, ESP in UDP as is),
the pre-shared key, every value strongSwan logged at key level (by label, in order) and the ESP SAs.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path

SHARED = Path(os.environ.get("IPSEC_LAB_SHARED", Path(__file__).resolve().parents[2] / ".." / "shared"))
DIR = SHARED / "vectors" / "strongswan-ikev1"
PSK = b"ss-anchor-psk-0123456789"
CASES = ("v1-3des-sha1-modp1024", "v1-aes128-sha1-modp2048")


@dataclass
class Datagram:
    src: str
    sport: int
    dst: str
    dport: int
    data: bytes  # IKE message (marker stripped) or the UDP payload of ESP-in-UDP
    kind: str  # "ike" or "esp"
    ip_packet: bytes = b""


@dataclass
class EspKeys:
    spi: int
    direction: str
    src: str
    dst: str
    enc: str
    enc_key: bytes
    integ: str
    integ_key: bytes


@dataclass
class Case:
    name: str
    datagrams: list[Datagram]
    logged: dict[str, list[bytes]]
    esp: list[EspKeys]
    cky_i: bytes
    ka: bytes
    kdf: dict[str, bytes] = field(default_factory=dict)

    def ike(self) -> list[Datagram]:
        return [d for d in self.datagrams if d.kind == "ike"]

    def value(self, label: str, index: int = 0) -> bytes:
        return self.logged[label][index]


def _keylog(path: Path) -> dict[str, list[bytes]]:
    values: dict[str, list[bytes]] = {}
    label, chunks, remaining = None, bytearray(), 0
    for line in path.read_text().splitlines():
        head = re.search(r"> (.+?) => (\d+) bytes @", line)
        if head:
            label, chunks, remaining = head.group(1), bytearray(), int(head.group(2))
            continue
        row = re.search(r">\s+\d+: ((?:[0-9A-F]{2} ){1,16})", line)
        if label and row:
            chunks += bytes.fromhex(row.group(1))
            if len(chunks) >= remaining:
                values.setdefault(label, []).append(bytes(chunks[:remaining]))
                label = None
    return values


def load(name: str) -> Case:
    from scapy.all import IP, UDP, rdpcap

    datagrams = []
    for pkt in rdpcap(str(DIR / f"cap-{name}-outer.pcap")):
        if UDP not in pkt:
            continue
        udp, payload = pkt[UDP], bytes(pkt[UDP].payload)
        if udp.dport == 4500 and payload[:4] == bytes(4):
            kind, payload = "ike", payload[4:]
        elif udp.dport == 4500:
            kind = "keepalive" if payload == b"\xff" else "esp"
        else:
            kind = "ike"
        datagrams.append(
            Datagram(pkt[IP].src, udp.sport, pkt[IP].dst, udp.dport, payload, kind, bytes(pkt[IP]))
        )
    esp, cky_i, ka = [], b"", b""
    for line in (DIR / f"keys-{name}.txt").read_text().splitlines():
        m = re.match(
            r"ESP (in|out)\s+spi=0x(\w+) ([\d.]+)->([\d.]+) enc=(\S+) key=0x(\w+) "
            r"integ=(\S+) key=0x(\w+)",
            line,
        )
        if m:
            esp.append(
                EspKeys(int(m[2], 16), m[1], m[3], m[4], m[5], bytes.fromhex(m[6]), m[7], bytes.fromhex(m[8]))
            )
        m = re.match(r"IKEv1 sa=\d+ CKY-I=(\w+) Ka=(\w+)", line)
        if m:
            cky_i, ka = bytes.fromhex(m[1]), bytes.fromhex(m[2])
    kdf = {}
    for line in (DIR / f"kdf-{name}.txt").read_text().splitlines():
        m = re.match(r"(SKEYID\w*|encryption key Ka)\s+([0-9a-f]+)\s+MATCH", line)
        if m:
            kdf[m[1]] = bytes.fromhex(m[2])
    return Case(name, datagrams, _keylog(DIR / f"keylog-{name}-left.log"), esp, cky_i, ka, kdf)
