"""IKE under a spoofed flood: 20,000 main mode 1 datagrams at 1,000 per second, half of them from on-link
addresses that do not exist (host-b's replies wait for ARP and fill its socket's send buffer), the other half
from off-link ones. Measured: how long the real peer (host-a's ipsecd) takes to get its SAs during the flood
and after it, and how much host-b's ipsecd grows. Issue 10's targets: 5 s, 1 s, 20 MB.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from bench.common import Row, lab_running
from ipsecd.ike.isakmp import SA, Message, Proposal, ProtocolID
from ipsecd.ike.main_mode import offer_transform
from ipsecd.ike.settings import MainModeOffer
from lab.capture import wait_until
from lab.docker_backend import DockerBackend
from lab.pytest_plugin import lab_prefix
from lab.running import Node

SCENARIO = Path(__file__).resolve().parent.parent / "scenarios" / "ike-transport-psk"
DATAGRAMS = int(os.environ.get("BENCH_FLOOD_DATAGRAMS", "20000"))
RATE = 1000  # per second
B = "10.0.0.2"

#: Runs in host-a: raw IPv4/UDP datagrams to host-b:500 from spoofed sources, each with a fresh cookie.
FLOODER = """\
import os, socket, struct, sys, time
template = open(sys.argv[1], "rb").read()
count, rate, target = int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
raw = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
dst = socket.inet_aton(target)
start = time.monotonic()
for i in range(count):
    src = f"10.0.0.{3 + i % 250}" if i % 2 else f"172.{16 + i % 16}.{i // 256 % 256}.{i % 256}"
    body = os.urandom(8) + template[8:]
    udp = struct.pack("!HHHH", 500, 500, 8 + len(body), 0) + body
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), i & 0xFFFF, 0, 64, 17, 0,
                     socket.inet_aton(src), dst)
    raw.sendto(ip + udp, (target, 0))
    ahead = (i + 1) / rate - (time.monotonic() - start)
    if ahead > 0:
        time.sleep(ahead)
print(f"sent {count} in {time.monotonic() - start:.1f} s")
"""


def main_mode_1() -> bytes:
    transform = offer_transform(1, MainModeOffer(), "psk")
    return Message(bytes(8), payloads=[SA([Proposal(1, ProtocolID.ISAKMP, b"", [transform])])]).encode()


def start_ipsecd(node: Node) -> None:
    """ipsecd with the ike-transport-psk scenario's folder (PSK, ESP transport between the hosts)."""
    node.exec(["pkill", "-f", "ipsecd --config"])
    wait_until(lambda: not node.exec(["pgrep", "-f", "ipsecd --config"]).ok, 10, what="old ipsecd to stop")
    node.exec(["rm", "-rf", "/etc/ipsecd"], check=True)
    root = SCENARIO / node.name
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        node.put_file(f"/etc/ipsecd/{path.relative_to(root)}", path.read_bytes())
    node.start_service("ipsecd")


def rss_mb(node: Node) -> float:
    pid = node.exec(["pgrep", "-f", "ipsecd --config"], check=True).stdout.split()[0]
    status = node.exec(["cat", f"/proc/{pid}/status"], check=True).stdout
    return int(next(line.split()[1] for line in status.splitlines() if line.startswith("VmRSS"))) / 1024


def evicted(node: Node) -> int:
    stats = json.loads(node.exec(["ipsecctl", "stats", "--json"], check=True).stdout)
    return int(stats["counters"].get("ike_half_open_main_modes_evicted", 0))


def time_to_sa(a: Node) -> float:
    """From a first packet to host-b until one gets through secured (the acquire starts IKE)."""
    started = time.perf_counter()
    wait_until(lambda: a.exec(["ping", "-c", "1", "-W", "1", B]).ok, 60, what="host-a's ping to pass")
    return time.perf_counter() - started


def run() -> list[Row]:
    backend = DockerBackend()
    with lab_running(backend, "intranet-pair", {}, f"{lab_prefix()}-flood") as lab:
        a, b = lab.node("host-a"), lab.node("host-b")
        for node in (a, b):
            start_ipsecd(node)
        before = rss_mb(b)
        a.put_file("/tmp/flood.py", FLOODER)
        a.put_file("/tmp/mm1.bin", main_mode_1())
        flood = a.spawn(["python3", "/tmp/flood.py", "/tmp/mm1.bin", str(DATAGRAMS), str(RATE), B],
                        name="flood")
        wait_until(lambda: evicted(b) > 0, 30, what="host-b's half-open table to fill")  # the flood in swing
        during = time_to_sa(a)
        wait_until(lambda: not flood.alive(), DATAGRAMS / RATE * 3 + 30, what="the flood to end")
        peak = rss_mb(b)
        start_ipsecd(a)  # a restarted peer (INITIAL-CONTACT): a fresh negotiation after the flood
        after = time_to_sa(a)
        evictions = evicted(b)
    note = f"{DATAGRAMS} spoofed main mode 1 at {RATE}/s, half on-link"
    return [
        Row("IKE flood: real peer's SA during the flood", during, "s", 5.0, note=note),
        Row("IKE flood: real peer's SA after the flood", after, "s", 1.0),
        Row("IKE flood: ipsecd memory growth", peak - before, "MB", 20.0,
            note=f"{before:.1f} -> {peak:.1f} MB, {evictions} half-open main modes evicted"),
    ]
