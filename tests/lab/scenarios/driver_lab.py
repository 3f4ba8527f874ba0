"""Helpers for the driver's lab scenarios: configs from the scenario folders, ipsecctl, tshark.

Each scenario folder holds a README.md (what and why) and one ipsecd configuration per node, named
`<node>.yaml`; the lab copies it to /etc/ipsecd/ipsecd.yaml and starts ipsecd when it brings the node up.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path

from scapy.utils import wrpcap

from lab.capture import wait_until
from lab.running import Lab, Node

SCENARIOS = Path(__file__).parent
CONFIG = "/etc/ipsecd/ipsecd.yaml"


def overrides(scenario: str, *nodes: str) -> dict:
    """Topology overrides that give each node its ipsecd configuration from the scenario folder."""
    return {"nodes": {n: {"ipsecd": str(SCENARIOS / scenario / f"{n}.yaml")} for n in nodes}}


def ipsecctl(node: Node, *args: str):
    """`ipsecctl <args> --json` in the node, decoded."""
    result = node.exec(["ipsecctl", *args, "--json"], timeout=20)
    if not result.ok:
        raise AssertionError(f"{node.name}: ipsecctl {' '.join(args)} failed: {result.stderr}\n"
                             f"ipsecd log:\n{ipsecd_log(node)}")
    return json.loads(result.stdout)


def counters(node: Node) -> dict[str, int]:
    return ipsecctl(node, "stats")["counters"]


def ipsecd_log(node: Node) -> str:
    return node.exec(["tail", "-n", "40", "/var/log/ipsecd.log"]).stdout


def wait_ready(*nodes: Node) -> None:
    """Until ipsecd answers on its control socket in every node (it starts with the lab)."""
    for node in nodes:
        wait_until(lambda node=node: node.exec(["ipsecctl", "status"]).ok, 20,
                   what=f"ipsecd in {node.name} to answer (log: {ipsecd_log(node)!r})")


def wait_counter(node: Node, name: str, at_least: int, timeout: float = 10) -> int:
    """Poll ipsecctl until counter `name` reaches `at_least`; returns its value."""
    return wait_until(lambda: (v := counters(node)[name]) >= at_least and v, timeout,
                      what=f"{node.name}: counter {name} >= {at_least}")


def reload_config(node: Node, text: str) -> None:
    """Put a new configuration in the node and make ipsecd take it (`ipsecctl reload`)."""
    node.put_file(CONFIG, text)
    node.exec(["ipsecctl", "reload"], check=True)


def scenario_config(scenario: str, node: str) -> str:
    return (SCENARIOS / scenario / f"{node}.yaml").read_text()


def tshark_decrypted_payloads(pcap: Path, tshark_args: list[str]) -> tuple[bytes, int]:
    """What tshark (the independent decoder) finds inside the ESP of a capture, given our exported keys.

    Returns the concatenated inner payload bytes (TCP payloads, ICMP and UDP data) and how many ESP
    packets tshark decrypted and found authentic.
    """
    out = subprocess.run(
        ["tshark", "-n", "-r", str(pcap), *tshark_args, "-Y", "esp", "-T", "fields", "-E", "separator=|",
         "-e", "esp.icv_good", "-e", "tcp.payload", "-e", "data.data"],
        capture_output=True, text=True, check=True, timeout=120).stdout
    payload, authentic = b"", 0
    for line in out.splitlines():
        good, *hexes = line.split("|")
        authentic += good == "1"
        for field in hexes:
            for part in filter(None, field.split(",")):
                payload += bytes.fromhex(part.replace(":", ""))
    return payload, authentic


def inject_frames(lab: Lab, segment: str, frames) -> None:
    """Put Ethernet frames on a segment's bridge, as a third host on the segment would."""
    tap = lab.capture_segment(segment)  # the bridge captures listen on, in the lab's fabric namespace
    with tempfile.NamedTemporaryFile(suffix=".pcap") as f:
        wrpcap(f.name, frames)
        send = f"from scapy.all import *; sendp(rdpcap({f.name!r}), iface={tap.device!r}, verbose=False)"
        subprocess.run(["ip", "netns", "exec", tap.fabric, sys.executable, "-c", send], check=True,
                       timeout=30)
