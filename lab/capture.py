"""Packet captures on lab links, and assertions on the decoded packets (scapy).

A Capture runs tcpdump in the lab's fabric namespace on the fabric end of a node interface (or on a segment's
bridge) and writes a pcap under the results folder:

    with lab.node("host-b").capture("eth1") as cap:
        lab.node("host-a").exec(["ping", "-c1", "10.0.0.2"], check=True)
    assert_only_protocols(cap.packets(), between=("10.0.0.1", "10.0.0.2"), allowed={"esp", "udp/4500"})

Starting waits until tcpdump says it is listening; stopping waits until tcpdump has written every packet the
kernel handed it (strongSwan's SIGUSR1 counter handshake), then interrupts it, so nothing is lost at the end.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TypeVar

from scapy.layers.inet import ICMP, IP, TCP, UDP
from scapy.plist import PacketList
from scapy.utils import rdpcap

T = TypeVar("T")

IKE_PORTS = (500, 4500)
STATS = re.compile(r"(\d+) packets? captured.*?(\d+) packets? received by filter", re.S)


def wait_until(
    predicate: Callable[[], T | None], timeout: float = 10, what: str = "condition", interval: float = 0.02
) -> T:
    """Poll `predicate` until it returns something truthy and return that; TimeoutError naming `what`."""
    deadline = time.monotonic() + timeout
    delay = interval
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise TimeoutError(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(delay)
        delay = min(delay * 1.5, 0.25)


class Capture:
    """tcpdump on `device` inside network namespace `fabric`, writing `pcap`."""

    def __init__(self, fabric: str, device: str, pcap: Path, bpf: str = ""):
        self.fabric, self.device, self.pcap, self.bpf = fabric, device, Path(pcap), bpf
        self.log_path = self.pcap.with_suffix(".tcpdump.log")
        self.pid_path = Path(f"{self.pcap}.pid")
        self.process: subprocess.Popen | None = None

    def __repr__(self) -> str:
        return f"<Capture {self.device} in {self.fabric} -> {self.pcap}>"

    def start(self, detached: bool = False) -> Capture:
        """Start tcpdump and return once it is listening (detached: it outlives this process, for the CLI)."""
        self.pcap.parent.mkdir(parents=True, exist_ok=True)
        argv = [
            "ip",
            "netns",
            "exec",
            self.fabric,
            "tcpdump",
            "-n",
            "-U",
            "-s",
            "0",
            "-i",
            self.device,
            "-w",
            str(self.pcap),
            *self.bpf.split(),
        ]
        with open(self.log_path, "w") as log:
            process = subprocess.Popen(
                argv, stdout=subprocess.DEVNULL, stderr=log, start_new_session=detached
            )
        self.process = process
        self.pid_path.write_text(str(process.pid))
        wait_until(
            lambda: "listening on" in self._log() or process.poll() is not None,
            10,
            what=f"tcpdump on {self.device} to listen",
        )
        if process.poll() is not None:
            raise RuntimeError(f"tcpdump on {self.device} in {self.fabric} failed: {self._log().strip()}")
        return self

    def stop(self) -> Path:
        """Flush and stop; returns the pcap path."""
        if self.process is not None:
            _flush_and_stop(self.process.pid, self.log_path)
            self.process.wait(timeout=5)
            self.process = None
        self.pid_path.unlink(missing_ok=True)
        return self.pcap

    @staticmethod
    def stop_detached(pid_file: Path) -> None:
        """Stop a capture started by another process (`lab capture start`), found by its pid file."""
        pcap_log = Path(str(pid_file).removesuffix(".pid")).with_suffix(".tcpdump.log")
        try:
            _flush_and_stop(int(pid_file.read_text()), pcap_log)
            wait_until(lambda: not _alive(int(pid_file.read_text())), 5, what=f"capture {pid_file} to stop")
        except (ProcessLookupError, ValueError):
            pass
        pid_file.unlink(missing_ok=True)

    def packets(self) -> PacketList:
        """The captured packets, decoded by scapy (stop first; a context manager does it for you)."""
        if self.process is not None:
            self.stop()
        return rdpcap(str(self.pcap)) if self.pcap.stat().st_size > 24 else PacketList([])

    def _log(self) -> str:
        return self.log_path.read_text() if self.log_path.exists() else ""

    def __enter__(self) -> Capture:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie child of ours counts as gone
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(")")[1].split()[0] != "Z"
    except OSError:
        return False


def _flush_and_stop(pid: int, log_path: Path) -> None:
    """SIGUSR1 until tcpdump reports captured == received by filter (at most 1 s), then SIGINT."""
    deadline = time.monotonic() + 1
    while time.monotonic() < deadline and _alive(pid):
        os.kill(pid, signal.SIGUSR1)
        time.sleep(0.02)
        counts = STATS.findall(log_path.read_text() if log_path.exists() else "")
        if counts and counts[-1][0] == counts[-1][1]:
            break
    if _alive(pid):
        os.kill(pid, signal.SIGINT)


def tshark(
    pcap: Path | str, fields: Iterable[str], display_filter: str = "", options: Iterable[str] = ()
) -> list[list[str]]:
    """Decode a pcap with tshark, an independent decoder: one row of `fields` per matching packet.

    `options` are tshark preferences such as 'esp.enable_encryption_decode:TRUE' or a 'uat:esp_sa:...'
    line, so ESP can be decrypted with keys the test knows."""
    argv = ["tshark", "-n", "-r", str(pcap), "-T", "fields", "-E", "separator=/t", "-E", "occurrence=f"]
    argv += [a for f in fields for a in ("-e", f)]
    argv += [a for o in options for a in ("-o", o)]
    if display_filter:
        argv += ["-Y", display_filter]
    done = subprocess.run(argv, capture_output=True, text=True)
    if done.returncode:
        raise RuntimeError(f"tshark failed on {pcap}: {done.stderr.strip()}")
    return [line.split("\t") for line in done.stdout.splitlines()]


# -- assertions on decoded packets ------------------------------------------------------------------------


def protocol(packet) -> str:
    """A short name for what an IP packet carries: esp, ah, icmp, tcp/<port>, udp/<port>.

    The port is 500 or 4500 when either end uses it (IKE, NAT-T), else the lower of the two (the service).

    >>> protocol(IP(src="203.0.113.1", dst="203.0.113.2") / UDP(sport=40001, dport=4500))
    'udp/4500'
    >>> protocol(IP(proto=50) / (b"\\x00" * 16))
    'esp'
    """
    ip = packet[IP]
    named = {50: "esp", 51: "ah", 1: "icmp"}
    if ip.proto in named:
        return named[ip.proto]
    for layer, name in ((UDP, "udp"), (TCP, "tcp")):
        if layer in packet:
            ports = (packet[layer].dport, packet[layer].sport)
            return f"{name}/{next((p for p in ports if p in IKE_PORTS), min(ports))}"
    return f"ip/{ip.proto}"


def ip_packets(packets: Iterable, between: tuple[str, str] | None = None) -> list:
    """The IPv4 packets, optionally only those between two addresses (either direction)."""
    kept = [p for p in packets if IP in p]
    if between:
        ends = set(between)
        kept = [p for p in kept if {p[IP].src, p[IP].dst} == ends]
    return kept


def assert_only_protocols(
    packets: Iterable, allowed: set[str], between: tuple[str, str] | None = None
) -> None:
    """Every IPv4 packet (between the two addresses) is one of `allowed` (names as `protocol` gives them)."""
    seen = ip_packets(packets, between)
    wrong = [p for p in seen if protocol(p) not in allowed]
    if wrong:
        sample = "\n  ".join(p.summary() for p in wrong[:5])
        raise AssertionError(f"{len(wrong)} of {len(seen)} packets are not {sorted(allowed)}:\n  {sample}")


def assert_protocol_seen(packets: Iterable, name: str, between: tuple[str, str] | None = None) -> list:
    """At least one packet of protocol `name`; returns them."""
    seen = ip_packets(packets, between)
    matching = [p for p in seen if protocol(p) == name]
    if not matching:
        kinds = sorted({protocol(p) for p in seen})
        raise AssertionError(f"no {name} packet among {len(seen)} (seen: {kinds})")
    return matching


def assert_checksums_valid(packets: Iterable) -> int:
    """Every IPv4, TCP, UDP and ICMP checksum on the wire is right (no offload left a partial one); returns
    how many packets were checked."""
    checked = 0
    for packet in ip_packets(packets):
        for layer in (IP, TCP, UDP, ICMP):
            if layer not in packet or (layer is UDP and packet[UDP].chksum == 0):
                continue
            fresh = packet[IP].copy()
            fresh[layer].chksum = None
            if layer is IP:
                fresh.chksum = None
            expected = IP(bytes(fresh))[layer].chksum
            if packet[layer].chksum != expected:
                raise AssertionError(
                    f"bad {layer.__name__} checksum {packet[layer].chksum:#06x} "
                    f"(should be {expected:#06x}) in {packet.summary()}"
                )
        checked += 1
    return checked


def assert_marker_absent(packets: Iterable, marker: bytes) -> None:
    """The payload marker never appears in clear in any captured frame."""
    hits = [p for p in packets if marker in bytes(p)]
    if hits:
        raise AssertionError(f"marker {marker!r} in clear in {len(hits)} packets, first: {hits[0].summary()}")


def assert_marker_present(packets: Iterable, marker: bytes) -> list:
    """The marker appears in clear (the positive twin, for tests of the unencrypted path)."""
    packets = list(packets)
    hits = [p for p in packets if marker in bytes(p)]
    if not hits:
        raise AssertionError(f"marker {marker!r} is in none of {len(packets)} packets")
    return hits


def assert_source_seen(packets: Iterable, source: str, dst: str | None = None) -> list:
    """Some IPv4 packet has source address `source` (and destination `dst`, if given); returns them."""
    seen = ip_packets(packets)
    matching = [p for p in seen if p[IP].src == source and (dst is None or p[IP].dst == dst)]
    if not matching:
        sources = sorted({p[IP].src for p in seen if dst is None or p[IP].dst == dst})
        raise AssertionError(
            f"no packet from {source}{f' to {dst}' if dst else ''} (sources seen: {sources})"
        )
    return matching
