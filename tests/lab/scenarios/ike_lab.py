"""Helpers for the IKE lab scenarios: a node's folder from the scenario into /etc/ipsecd, ipsecd started.

An IKE scenario folder holds README.md and one folder per node, the node's /etc/ipsecd: `ipsecd.yaml`
(policy store, IKE settings), `policies/*.yaml` (Windows-style policies) and, when used, certificates.
Tests that need a variant (a failure twin) pass `changes`: file name -> new text, applied on top.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
from collections.abc import Iterator
from pathlib import Path

from scapy.error import Scapy_Exception
from scapy.layers.inet import UDP
from scapy.utils import PcapReader
from scenarios.driver_lab import ipsecctl, ipsecd_log

from lab.capture import Capture, wait_until
from lab.running import Lab, Node

SCENARIOS = Path(__file__).parent
ETC = "/etc/ipsecd"
CONFIG = f"{ETC}/ipsecd.yaml"
LOG = "/var/log/ipsecd.log"


def node_files(scenario: str, node: str) -> dict[str, str]:
    """The node's folder of the scenario: path relative to /etc/ipsecd -> text."""
    root = SCENARIOS / scenario / node
    return {str(p.relative_to(root)): p.read_text() for p in sorted(root.rglob("*")) if p.is_file()}


def start(node: Node, scenario: str, changes: dict[str, str | bytes] | None = None) -> None:
    """(Re)start ipsecd in `node` with its folder of `scenario` (plus `changes`) as /etc/ipsecd."""
    stop(node)
    node.exec(["rm", "-rf", ETC], check=True)
    for name, text in {**node_files(scenario, node.name), **(changes or {})}.items():
        node.put_file(f"{ETC}/{name}", text)
    node.exec(["rm", "-f", LOG], check=True)
    daemon = node.spawn(["ipsecd", "--config", CONFIG], name="ipsecd", log=LOG)

    def ready() -> bool:
        if not daemon.alive():
            raise AssertionError(f"{node.name}: ipsecd exited at start:\n{daemon.log()[-3000:]}")
        return node.exec(["ipsecctl", "status"]).ok

    wait_until(ready, 20, what=f"{node.name}: ipsecd to answer")


@contextlib.contextmanager
def nodes(lab: Lab, *names: str) -> Iterator[tuple[Node, ...]]:
    """The named nodes of a shared lab; at the end ipsecd is stopped and the firewall lifted in each, whatever
    the test did, so the next test starts clean."""
    handles = tuple(lab.node(name) for name in names)
    try:
        yield handles
    finally:
        for node in handles:
            stop(node)
            node.firewall(drop=[])


def stop(node: Node) -> None:
    """Stop ipsecd (SIGTERM: it deletes its SAs, telling the peer, and removes its kernel policy)."""
    daemon = node.process("ipsecd")
    if daemon.alive():
        daemon.stop()


def qmsa(node: Node) -> list[dict]:
    return ipsecctl(node, "qmsa")


def wait_quick_mode(node: Node, timeout: float = 20) -> list[dict]:
    """Until the node holds a quick mode SA pair; returns ipsecctl qmsa."""
    return wait_until(lambda: qmsa(node), timeout, what=f"{node.name}: a quick mode SA "
                                                        f"(log: {ipsecd_log(node)[-1500:]})")


def events(node: Node) -> list[dict]:
    return ipsecctl(node, "events")


def wait_event(node: Node, text: str, timeout: float = 20) -> dict:
    """Until an `ipsecctl events` line contains `text`; returns that event."""
    def found():
        return next((e for e in events(node) if text in e["text"]), None)
    return wait_until(found, timeout, what=f"{node.name}: an event with {text!r}")


def keys(node: Node) -> dict:
    return ipsecctl(node, "keys")


def tshark_fields(pcap: Path, args: list[str], fields: list[str], display: str = "") -> list[list[str]]:
    """tshark (the independent decoder) over a capture, with our exported keys: one row per packet."""
    cmd = ["tshark", "-n", "-r", str(pcap), *args, "-T", "fields", "-E", "separator=|"]
    cmd += ["-Y", display] if display else []
    for f in fields:
        cmd += ["-e", f]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True, timeout=120).stdout
    return [line.split("|") for line in out.splitlines()]


def isakmp_rows(pcap: Path, args: list[str], fields: list[str]) -> list[list[str]]:
    """tshark rows of the ISAKMP messages in a capture, each message once: a retransmission (the same bytes
    again, when a busy machine keeps a peer waiting over a second) is left out, so tests can name messages
    by their position (rows[4] is main mode 5)."""
    seen: set[str] = set()
    out = []
    for payload, *row in tshark_fields(pcap, args, ["udp.payload", *fields], "isakmp"):
        if payload not in seen:
            seen.add(payload)
            out.append(row)
    return out


def first_sends(packets: list) -> list:
    """UDP packets without their retransmissions (the same payload again)."""
    seen: set[bytes] = set()
    out = []
    for p in packets:
        data = bytes(p[UDP].payload)
        if data not in seen:
            seen.add(data)
            out.append(p)
    return out


def dump(node: Node) -> str:
    """Everything worth reading when an IKE test fails."""
    return json.dumps({"events": events(node), "qmsa": qmsa(node)}, indent=1) + "\n" + ipsecd_log(node)


def peek(cap: Capture) -> list:
    """The packets captured so far, the capture still running (Capture.packets() stops it); tcpdump -U
    writes each packet as it comes, so only a last, half-written one can be missing."""
    packets = []
    with contextlib.suppress(EOFError, Scapy_Exception, OSError), PcapReader(str(cap.pcap)) as reader:
        packets.extend(reader)
    return packets
