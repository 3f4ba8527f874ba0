"""Traffic between nodes, with payloads the capture assertions can look for.

received = tcp_transfer(lab.node("host-a"), lab.node("host-b"), b"MARKER" * 100)
assert received == b"MARKER" * 100
"""

from __future__ import annotations

import json
import shlex

from lab.capture import wait_until
from lab.running import Node


def wait_listening(node: Node, port: int, proto: str = "tcp", timeout: float = 5) -> None:
    """Poll until something in `node` listens on `port` (`ss`, so no sleeping)."""
    flag = "-ltnH" if proto == "tcp" else "-lunH"
    wait_until(
        lambda: f":{port} " in node.exec(["ss", flag]).stdout,
        timeout,
        what=f"{node.name} to listen on {proto}/{port}",
    )


def tcp_transfer(
    client: Node,
    server: Node,
    payload: bytes,
    port: int = 5001,
    address: str | None = None,
    timeout: float = 10,
) -> bytes:
    """Send `payload` from client to server over one TCP connection; return what the server received."""
    target = address or server.address()
    out = f"/tmp/tcp-{port}.received"
    listener = server.spawn(["sh", "-c", f"nc -l -N {port} > {out}"], name=f"nc-{port}")
    wait_listening(server, port)
    client.put_file(f"/tmp/tcp-{port}.payload", payload)
    client.exec(
        f"nc -N -w {int(timeout)} {shlex.quote(target)} {port} < /tmp/tcp-{port}.payload",
        check=True,
        timeout=timeout,
    )
    wait_until(lambda: not listener.alive(), timeout, what=f"{server.name}: nc on {port} to finish")
    return server.get_file(out)


def udp_send(client: Node, address: str, port: int, payload: bytes, source_port: int | None = None) -> None:
    """Send one UDP datagram (optionally from a fixed source port, e.g. 500 to look like IKE)."""
    client.put_file("/tmp/udp.payload", payload)
    sport = f"-p {source_port} " if source_port else ""
    client.exec(
        f"nc -u -w1 -q0 {sport}{shlex.quote(address)} {port} < /tmp/udp.payload", check=True, timeout=5
    )


def iperf3(client: Node, server: Node, seconds: float = 1, address: str | None = None) -> dict:
    """A TCP iperf3 run (server started and stopped here); returns iperf3's JSON 'end' summary."""
    process = server.spawn(["iperf3", "-s", "-1"], name="iperf3-server")
    wait_listening(server, 5201)
    try:
        result = client.exec(
            ["iperf3", "-J", "-t", str(seconds), "-c", address or server.address()],
            check=True,
            timeout=seconds + 15,
        )
    finally:
        process.stop()
    return json.loads(result.stdout)["end"]
