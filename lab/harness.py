"""ipsecd on lab nodes: the one harness the scenario runner (lab.scenario) and the Python lab tests use.

A scenario folder (scenarios/<name>/) holds one folder per node that runs ipsecd with policies: the node's
/etc/ipsecd (`ipsecd.yaml`, `policies/*.yaml`, certificates); `start(node, scenario, changes)` copies it in
(plus `changes`: file name -> text, a failure twin's edits) and starts ipsecd; `start_policy(node, policy)`
starts it with one policy text and nothing else; `restart_ipsecd(node)` starts it again as `lab up` did
(the topology's ipsecd for the node: a domain member's). Manual-key scenarios (the driver's) give a single
`<node>.yaml` that `lab up` starts (`overrides`). Then: ipsecctl views, counters, events, waits, the domain's
directory administered as its Administrator (`static`), and the independent decoder (tshark) that reads
captures with ipsecd's keys (ipsecctl keys, or the tables lab.keys collects beside every pcap).
"""

from __future__ import annotations

import contextlib
import json
import shlex
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from scapy.error import Scapy_Exception
from scapy.layers.inet import IP, UDP
from scapy.utils import PcapReader, wrpcap

from lab import keys as lab_keys
from lab.capture import Capture, ip_packets, protocol, wait_until
from lab.running import Lab, Node, Process
from lab.traffic import tcp_transfer

#: The catalogue of scenarios (README.md, scenario.yaml, node folders), at the repository's root.
SCENARIOS = Path(__file__).resolve().parent.parent / "scenarios"
#: The repository's example policies.
POLICIES = SCENARIOS.parent / "policies"
ETC = "/etc/ipsecd"
CONFIG = f"{ETC}/ipsecd.yaml"
LOG = "/var/log/ipsecd.log"
STORE = f"{ETC}/policies"
POLICY_FILE = "policy.yaml"
POLICY_NODE_CONFIG = """\
# ipsecd of a policy scenario: the Policy Agent reads the policy assigned in the store (lab.harness)
policy: {store: policies%s}
"""
#: The lab domain's Administrator (images/dc/README.md: a lab's password, never a real domain's), for
#: `ipsecctl static` in a node.
ADMIN = {"IPSEC_ADMIN_PASSWORD": "Lab-Admin-2003!"}


# -- starting and stopping ipsecd --------------------------------------------------------------------------
def node_files(scenario: str | Path, node: str) -> dict[str, str]:
    """The node's folder of the scenario: path relative to /etc/ipsecd -> text ({} if it has none)."""
    root = Path(SCENARIOS / scenario) / node
    return {str(p.relative_to(root)): p.read_text() for p in sorted(root.rglob("*")) if p.is_file()}


def start(node: Node, scenario: str | Path = "", changes: Mapping[str, str | bytes] | None = None) -> None:
    """(Re)start ipsecd in `node` with its folder of `scenario` (plus `changes`) as /etc/ipsecd;
    AssertionError with the end of its log if it exits at start."""
    stop(node)
    node.exec(["rm", "-rf", ETC], check=True)
    files: dict[str, str | bytes] = {**(node_files(scenario, node.name) if scenario else {})}
    files.update(changes or {})
    for name, text in files.items():
        node.put_file(f"{ETC}/{name}", text)
    node.exec(["rm", "-f", LOG], check=True)
    daemon = node.spawn(["ipsecd", "--config", CONFIG], name="ipsecd", log=LOG)

    def ready() -> bool:
        if not daemon.alive():
            raise AssertionError(f"{node.name}: ipsecd exited at start:\n{daemon.log()[-3000:]}")
        return node.exec(["ipsecctl", "status"]).ok

    wait_until(ready, 20, what=f"{node.name}: ipsecd to answer")


def start_policy(node: Node, policy: str | None, ike_address: str | None = None) -> None:
    """(Re)start ipsecd in `node` with `policy` assigned (None: the store is empty, nothing assigned);
    IKE on `ike_address` (a gateway's address towards its peer) or the node's first address."""
    config = POLICY_NODE_CONFIG % (", assign: " + POLICY_FILE if policy is not None else "")
    files = {"ipsecd.yaml": config + (f"ike: {{address: {ike_address}}}\n" if ike_address else "")}
    if policy is not None:
        files[f"policies/{POLICY_FILE}"] = policy
    start(node, "", files)


def restart_ipsecd(node: Node, config: str | None = None) -> float:
    """Stop ipsecd and start it again as `lab up` did (the topology's ipsecd for the node, as at boot), or
    with `config` as its ipsecd.yaml instead (beside the topology's files in /etc/ipsecd); the seconds until
    its control socket answers, after its first apply (a domain member's: after its DC or cache)."""
    ipsecd = node.process("ipsecd")
    ipsecd.stop()
    node.exec(["rm", "-f", ipsecd.pid_path])
    started = time.monotonic()
    if config is None:
        node.start_service("ipsecd")
    else:
        node.put_file(f"{ETC}/test.yaml", config)
        node.spawn(["ipsecd", "--config", f"{ETC}/test.yaml"], name="ipsecd", log=ipsecd.log_path)
        wait_until(lambda: running(node), 30, what=f"{node.name}: ipsecd to answer")
    return time.monotonic() - started


def stop(node: Node) -> None:
    """Stop ipsecd (SIGTERM: it deletes its SAs, telling the peer, and removes its kernel policy)."""
    daemon = node.process("ipsecd")
    if daemon.alive():
        daemon.stop()


def kill(node: Node) -> None:
    """A crash: SIGKILL (no deletes reach the peer), then remove what a clean stop would have removed."""
    node.exec(["sh", "-c", "kill -9 $(cat /run/lab/ipsecd.pid)"], check=True)
    node.exec("nft delete table inet ipsecd; ip link del ipsec0; ip rule del fwmark 0x2121 table 2121")


def stop_listeners(node: Node) -> None:
    """The TCP listeners a failed transfer left behind (lab.traffic's nc), so the next test finds a clean
    node."""
    node.exec("for f in /run/lab/nc-*.pid; do [ -e $f ] || continue; p=$(cat $f); "
              "pkill -P $p; kill $p; rm -f $f; done 2>/dev/null")


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


@contextlib.contextmanager
def ipsecd_in(lab: Lab, policies: dict[str, str | None]) -> Iterator[Lab]:
    """The lab with ipsecd started in the named nodes with their policies; at the end ipsecd and left-over
    listeners stopped in every node."""
    for name, policy in policies.items():
        start_policy(lab.node(name), policy)
    try:
        yield lab
    finally:
        for node in lab.nodes.values():
            stop(node)
            stop_listeners(node)


def overrides(scenario: str, *names: str) -> dict:
    """Topology overrides that give each node its manual-key configuration `<scenario>/<node>.yaml`, which
    `lab up` starts ipsecd with."""
    return {"nodes": {n: {"ipsecd": str(SCENARIOS / scenario / f"{n}.yaml")} for n in names}}


def scenario_file(scenario: str, name: str) -> str:
    """The text of `<name>.yaml` in a scenario folder (a manual-key configuration or a policy)."""
    return (SCENARIOS / scenario / f"{name}.yaml").read_text()


def example_policy(name: str) -> str:
    """The text of one of the repository's example policies (policies/<name>.yaml)."""
    return (POLICIES / f"{name}.yaml").read_text()


def predefined_policy(name: str, psk: str) -> str:
    """A predefined Windows policy ('client', 'server', 'secure server') authenticating with a PSK."""
    from ipsecd.policy import policyfile
    from ipsecd.policy.model import AuthKind, AuthMethod
    from ipsecd.policy.predefined import predefined

    policy = predefined(name, authentication=(AuthMethod(AuthKind.PRESHARED_KEY, psk=psk),))
    return policyfile.dumps(policy)


def edit(text: str, old: str, new: str, count: int = 1) -> str:
    """An administrator's edit of a policy: replace `old` (which must be there `count` times) with `new`."""
    if text.count(old) != count:
        raise ValueError(f"{old!r} is in the policy {text.count(old)} times, not {count}")
    return text.replace(old, new)


def change_policy(node: Node, policy: str) -> None:
    """Write a new version of the node's assigned policy in its store (no refresh: the caller decides)."""
    node.put_file(f"{STORE}/{POLICY_FILE}", policy)


def reload_config(node: Node, text: str) -> None:
    """Put a new manual-key configuration in the node and make ipsecd take it (`ipsecctl reload`)."""
    node.put_file(CONFIG, text)
    node.exec(["ipsecctl", "reload"], check=True)


# -- the domain's directory ------------------------------------------------------------------------------
def static(node: Node, *argv: str) -> Any:
    """`ipsecctl static ... --json` in the node as the domain's Administrator (a member finds the DC in its
    ipsecd.yaml), decoded; AssertionError with its output if it fails."""
    done = node.exec(["ipsecctl", "static", "--json", *argv], timeout=60, env=ADMIN)
    if not done.ok:
        raise AssertionError(f"{node.name}: ipsecctl static {' '.join(argv)}: {done.stdout}{done.stderr}")
    return json.loads(done.stdout)


def static_commands(node: Node, commands: Sequence[str]) -> str:
    """`ipsecctl static` command lines (shell words: `gpo delete "IPsec for Members"`) in the node as the
    domain's Administrator, in order and in one exec; their output. CommandError at the first that fails."""
    script = "set -e\n" + "".join(f"echo '> ipsecctl static '{shlex.quote(c)}; ipsecctl static {c}\n"
                                   for c in commands)
    return node.exec(["sh", "-c", script], check=True, timeout=60 + 30 * len(commands), env=ADMIN).stdout


# -- what ipsecd says ---------------------------------------------------------------------------------------
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
    return node.exec(["tail", "-n", "40", LOG]).stdout


def running(node: Node) -> bool:
    """ipsecd answers on its control socket."""
    return node.exec(["ipsecctl", "status"]).ok


def wait_ready(*handles: Node) -> None:
    """Until ipsecd answers on its control socket in every node (it starts with the lab)."""
    for node in handles:
        wait_until(lambda node=node: running(node), 20,  # type: ignore[misc]
                   what=f"ipsecd in {node.name} to answer (log: {ipsecd_log(node)!r})")


def wait_counter(node: Node, name: str, at_least: int, timeout: float = 10) -> int:
    """Poll ipsecctl until counter `name` reaches `at_least`; returns its value."""
    return wait_until(lambda: (v := counters(node)[name]) >= at_least and v, timeout,
                      what=f"{node.name}: counter {name} >= {at_least}")


def refresh(node: Node) -> dict:
    """`ipsecctl refresh`: the agent re-reads the store now; returns what changed."""
    return ipsecctl(node, "refresh")


def qmsa(node: Node) -> list[dict]:
    return ipsecctl(node, "qmsa")


def wait_quick_mode(node: Node, timeout: float = 20) -> list[dict]:
    """Until the node holds a quick mode SA pair; returns ipsecctl qmsa."""
    return wait_until(lambda: qmsa(node), timeout, what=f"{node.name}: a quick mode SA "
                                                        f"(log: {ipsecd_log(node)[-1500:]})")


def events(node: Node, kind: str | None = None) -> list[dict]:
    """The node's policy and negotiation events (ipsecctl events), optionally of one kind only."""
    return [e for e in ipsecctl(node, "events") if kind is None or e["kind"] == kind]


def wait_event(node: Node, text: str, timeout: float = 20) -> dict:
    """Until an `ipsecctl events` line contains `text`; returns that event."""
    def found():
        return next((e for e in events(node) if text in e["text"]), None)
    return wait_until(found, timeout, what=f"{node.name}: an event with {text!r}")


def esp_sas(node: Node, peer: str | None = None) -> list[dict]:
    """The node's ESP SAs (ipsecctl sa), optionally only those with `peer` as the other end."""
    return [s for s in ipsecctl(node, "sa") if s["protocol"] == "esp"
            and (peer is None or peer in (s["source"], s["destination"]))]


def spis_by_filter(node: Node) -> dict[str, set[str]]:
    """{filter name: SPIs} of the node's SAs, both directions."""
    out: dict[str, set[str]] = {}
    for sa in ipsecctl(node, "sa"):
        out.setdefault(sa["filter"], set()).add(sa["spi"])
    return out


def wait_for_sas(node: Node, peer: str, timeout: float = 20) -> list[dict]:
    """Poll until the node has an inbound and an outbound ESP SA with `peer`; returns them."""
    def both() -> list[dict] | None:
        sas = esp_sas(node, peer)
        return sas if {s["direction"] for s in sas} == {"inbound", "outbound"} else None

    try:
        return wait_until(both, timeout, what=f"{node.name}: ESP SAs with {peer}")
    except TimeoutError as e:
        raise AssertionError(f"{e}; ipsecd log:\n{ipsecd_log(node)}") from None


def refresh_while_silent(node: Node, peer: Node, silent: Node, port: int, marker: bytes) -> Process:
    """`ipsecctl refresh` on `node` while `silent` (a DC, a DNS server) drops what the refresh asks it: in
    the meantime `peer` negotiates with `node` and moves a TCP transfer, and `node`'s ipsecctl answers. The
    refresh, still waiting, is returned (a store read or a lookup that stalled ipsecd's loop failed here)."""
    refresh = node.spawn(["ipsecctl", "refresh"], name="refresh")
    wait_until(lambda: silent.dropped() > 0, 10, what=f"{node.name}'s refresh to reach {silent.name}")
    payload = marker * 50
    transferred = tcp_transfer(peer, node, payload, port=port, timeout=6)
    assert transferred == payload, f"{node.name}'s IKE did not answer"
    assert node.exec(["ipsecctl", "status"], timeout=3).ok, f"{node.name}'s ipsecctl did not answer"
    assert refresh.alive(), "the refresh was over before the negotiation: the test showed nothing"
    wait_for_sas(peer, node.address(), timeout=2)  # the transfer was secured, negotiated meanwhile
    return refresh


def dump(node: Node) -> str:
    """Everything worth reading when an IKE test fails."""
    return json.dumps({"events": events(node), "qmsa": qmsa(node)}, indent=1) + "\n" + ipsecd_log(node)


# -- the independent decoder ------------------------------------------------------------------------------
def tshark_fields(pcap: Path, args: list[str], fields: list[str], display: str = "",
                  keys: Path | None = None) -> list[list[str]]:
    """tshark (the independent decoder) over a capture, with our exported keys (`args`: ipsecctl keys'
    tshark_args, or `keys`: a folder of key tables, lab.keys): one row per packet."""
    options, env = lab_keys.tshark_environment(keys) if keys else ([], None)
    cmd = ["tshark", "-n", "-r", str(pcap), *options, *args, "-T", "fields", "-E", "separator=|"]
    cmd += ["-Y", display] if display else []
    for f in fields:
        cmd += ["-e", f]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True, timeout=120, env=env).stdout
    return [line.split("|") for line in out.splitlines()]


def tshark_decrypted_payloads(pcap: Path, tshark_args: Sequence[str] = (),
                              keys: Path | None = None) -> tuple[bytes, int]:
    """What tshark finds inside the ESP of a capture, given our exported keys (as tshark_fields): the
    concatenated inner payload bytes (TCP payloads, ICMP and UDP data) and how many ESP packets it decrypted
    and found authentic."""
    payload, authentic = b"", 0
    fields = ["esp.icv_good", "tcp.payload", "data.data"]
    for good, *hexes in tshark_fields(pcap, list(tshark_args), fields, "esp", keys):
        authentic += good == "1"
        for field in hexes:
            for part in filter(None, field.split(",")):
                payload += bytes.fromhex(part.replace(":", ""))
    return payload, authentic


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


# -- captures ------------------------------------------------------------------------------------------------
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


def peek(cap: Capture) -> list:
    """The packets captured so far, the capture still running (Capture.packets() stops it); tcpdump -U
    writes each packet as it comes, so only a last, half-written one can be missing."""
    packets: list = []
    with contextlib.suppress(EOFError, Scapy_Exception, OSError), PcapReader(str(cap.pcap)) as reader:
        packets.extend(reader)
    return packets


def from_first(packets, name: str, between: tuple[str, str]) -> list:
    """The IPv4 packets between two addresses from the first one of protocol `name` (e.g. 'udp/500') on."""
    seen = ip_packets(packets, between)
    first = next((i for i, p in enumerate(seen) if protocol(p) == name), None)
    if first is None:
        raise AssertionError(f"no {name} packet between {between[0]} and {between[1]} "
                             f"(seen: {sorted({protocol(p) for p in seen})})")
    return seen[first:]


def sources(packets, name: str) -> set[str]:
    """The source addresses of the packets of protocol `name`."""
    return {p[IP].src for p in ip_packets(packets) if protocol(p) == name}


def inject_frames(lab: Lab, segment: str, frames) -> None:
    """Put Ethernet frames on a segment's bridge, as a third host on the segment would."""
    tap = lab.capture_segment(segment)  # the bridge captures listen on, in the lab's fabric namespace
    with tempfile.NamedTemporaryFile(suffix=".pcap") as f:
        wrpcap(f.name, frames)
        send = f"from scapy.all import *; sendp(rdpcap({f.name!r}), iface={tap.device!r}, verbose=False)"
        subprocess.run(["ip", "netns", "exec", tap.fabric, sys.executable, "-c", send], check=True,
                       timeout=30)
