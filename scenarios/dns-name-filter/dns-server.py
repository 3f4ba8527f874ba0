"""A DNS server for the scenario's dns node (no IPsec there): answers A queries for the names below, nothing
else; the Python standard library only, as the node image has no DNS server."""

import socket
import struct

NAMES = {b"host-a.lab.test": "10.0.0.1", b"host-b.lab.test": "10.0.0.2"}


def answer(query: bytes) -> bytes | None:
    if len(query) < 12:
        return None
    labels, i = [], 12
    while i < len(query) and query[i]:
        labels.append(query[i + 1:i + 1 + query[i]])
        i += 1 + query[i]
    question = query[12:i + 5]
    name, qtype = b".".join(labels).lower(), query[i + 1:i + 3]
    address = NAMES.get(name) if qtype == b"\x00\x01" else None
    flags = 0x8180 if address else 0x8183  # a response; NXDOMAIN when we do not know the name
    header = query[:2] + struct.pack(">HHHHH", flags, 1, 1 if address else 0, 0, 0)
    record = b""
    if address:
        record = b"\xc0\x0c\x00\x01\x00\x01" + struct.pack(">IH", 60, 4) + socket.inet_aton(address)
    return header + question + record


sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
sock.bind(("0.0.0.0", 53))
while True:
    data, peer = sock.recvfrom(512)
    reply = answer(data)
    if reply:
        sock.sendto(reply, peer)
