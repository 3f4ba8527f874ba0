"""An IKE sequence diagram drawn from a capture: main mode and quick mode messages between the nodes in time
order, retransmissions and exchanges that never completed marked, ESP shown by its first packet per SPI.

The capture is decoded here with scapy (ISAKMP header: cookies, exchange type, message id; the payloads are
encrypted from main mode 5 on, and need none of them: a message is named by its place in its exchange).
"""

from __future__ import annotations

import html
from dataclasses import dataclass
from pathlib import Path

from scapy.layers.inet import IP, UDP
from scapy.layers.ipsec import ESP
from scapy.layers.isakmp import ISAKMP
from scapy.utils import rdpcap

EXCHANGES = {2: "main mode", 4: "aggressive mode", 5: "informational", 32: "quick mode"}
#: How many messages make each exchange complete.
COMPLETE = {2: 6, 32: 3}


@dataclass
class Message:
    """One arrow: when, from and to which address, its label, and how to mark it."""

    time: float
    source: str
    destination: str
    label: str
    kind: str  # "ike", "retransmit", "failed", "esp"


def ike_payload(packet) -> bytes | None:
    """The ISAKMP message a UDP 500 or 4500 datagram carries (after the non-ESP marker on 4500), or None."""
    if IP not in packet or UDP not in packet:
        return None
    data = bytes(packet[UDP].payload)
    ports = (packet[UDP].sport, packet[UDP].dport)
    if 4500 in ports:
        if len(data) < 32 or data[:4] != bytes(4):
            return None  # ESP in UDP, or a NAT-T keepalive
        return data[4:]
    return data if 500 in ports and len(data) >= 28 else None


def messages(packets) -> list[Message]:
    """The capture's IKE messages (named by exchange and position), retransmissions and ESP first packets."""
    out: list[Message] = []
    seen: set[bytes] = set()
    exchanges: dict[tuple, list[int]] = {}  # exchange key -> indices in `out` of its distinct messages
    spis: set[int] = set()
    start = float(packets[0].time) if packets else 0.0
    for packet in packets:
        when = float(packet.time) - start
        data = ike_payload(packet)
        if data is None:
            if IP in packet and ESP in packet and packet[ESP].spi not in spis:
                spis.add(packet[ESP].spi)
                out.append(Message(when, packet[IP].src, packet[IP].dst, f"ESP SPI {packet[ESP].spi:#010x}",
                                   "esp"))
            continue
        header = ISAKMP(data)
        exchange = EXCHANGES.get(header.exch_type, f"exchange {header.exch_type}")
        key = (header.init_cookie, header.exch_type, header.id if header.exch_type != 2 else 0)
        if data in seen:
            out.append(Message(when, packet[IP].src, packet[IP].dst, f"{exchange} (retransmission)",
                               "retransmit"))
            continue
        seen.add(data)
        members = exchanges.setdefault(key, [])
        number = len(members) + 1
        label = f"{exchange} {number}" if header.exch_type in COMPLETE else exchange
        members.append(len(out))
        out.append(Message(when, packet[IP].src, packet[IP].dst, label, "ike"))
    for (_, exch_type, _), members in exchanges.items():
        if exch_type in COMPLETE and len(members) < COMPLETE[exch_type]:
            last = out[members[-1]]
            last.kind, last.label = "failed", f"{last.label}: {EXCHANGES[exch_type]} never completed"
    return out


def svg(found: list[Message], names: dict[str, str], title: str) -> str:
    """The diagram: one lifeline per address (named after its node), one arrow per message."""
    addresses = list(dict.fromkeys(a for m in found for a in (m.source, m.destination)))
    width, lane, top, step = 260 + 240 * max(len(addresses) - 1, 1), 240, 70, 24
    x = {a: 130 + lane * i for i, a in enumerate(addresses)}
    height = top + step * (len(found) + 1) + 20
    colour = {"ike": "#1f4e8c", "retransmit": "#c0392b", "failed": "#c0392b", "esp": "#2e7d32"}
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
             f'font-family="Helvetica, Arial, sans-serif" font-size="12">',
             '<defs><marker id="arrow" markerWidth="8" markerHeight="8" refX="7" refY="4" orient="auto">'
             '<path d="M0,0 L8,4 L0,8 z" fill="context-stroke"/></marker></defs>',
             f'<text x="10" y="20" font-size="15" font-weight="bold">{html.escape(title)}</text>']
    for address in addresses:
        name = names.get(address, "")
        parts.append(f'<text x="{x[address]}" y="{top - 22}" text-anchor="middle" font-weight="bold">'
                     f'{html.escape(name or address)}</text>')
        parts.append(f'<text x="{x[address]}" y="{top - 8}" text-anchor="middle" fill="#555">'
                     f'{address if name else ""}</text>')
        parts.append(f'<line x1="{x[address]}" y1="{top}" x2="{x[address]}" y2="{height - 10}" '
                     f'stroke="#999" stroke-dasharray="4 3"/>')
    if not found:
        parts.append(f'<text x="10" y="{top + 20}">no IKE or ESP packet in this capture</text>')
    for i, m in enumerate(found):
        y = top + step * (i + 1)
        dash = ' stroke-dasharray="6 4"' if m.kind == "retransmit" else ""
        parts.append(f'<text x="8" y="{y + 4}" fill="#555">{m.time:7.3f} s</text>')
        parts.append(f'<line x1="{x[m.source]}" y1="{y}" x2="{x[m.destination]}" y2="{y}" '
                     f'stroke="{colour[m.kind]}" stroke-width="1.6" marker-end="url(#arrow)"{dash}/>')
        middle = (x[m.source] + x[m.destination]) / 2
        weight = ' font-weight="bold"' if m.kind == "failed" else ""
        parts.append(f'<text x="{middle}" y="{y - 4}" text-anchor="middle" fill="{colour[m.kind]}"{weight}>'
                     f'{html.escape(m.label)}</text>')
    return "\n".join([*parts, "</svg>", ""])


def draw(pcap: Path, output: Path, names: dict[str, str], title: str) -> list[Message]:
    """Write the diagram of `pcap` to `output` (SVG); returns the messages drawn."""
    packets: list = list(rdpcap(str(pcap))) if pcap.stat().st_size > 24 else []
    found = messages(packets)
    output.write_text(svg(found, names, title))
    return found
