"""Helpers for the Policy Agent's lab scenarios: policies into nodes, ipsecd started and stopped, SAs.

Each policy scenario folder holds a README.md (what and why) and the policy file of each node that runs
one, named `<node>.yaml` (failure twins `<node>-<variant>.yaml`); scenarios built on the predefined
policies take them from `ipsecd.policy.predefined` with a pre-shared key instead of Kerberos.

A node runs ipsecd with `policy: {store: ...}` in its configuration: the Policy Agent reads the assigned
policy from that folder (a LocalStore). Tests put the policy file there, start ipsecd, and change the file
in place as an administrator would, for the agent to take up by polling or on `ipsecctl refresh`.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from scapy.layers.inet import IP
from scenarios import ike_lab
from scenarios.driver_lab import SCENARIOS, ipsecctl, ipsecd_log

from ipsecd.policy import policyfile
from ipsecd.policy.model import AuthKind, AuthMethod
from ipsecd.policy.predefined import predefined
from lab.capture import ip_packets, protocol, wait_until
from lab.running import Lab, Node

POLICIES = SCENARIOS.parent.parent.parent / "policies"  # the repository's example policies
STORE = f"{ike_lab.ETC}/policies"
POLICY_FILE = "policy.yaml"
NODE_CONFIG = """\
# ipsecd of a policy scenario: the Policy Agent reads the policy assigned in the store (tests/lab/scenarios)
policy: {store: policies%s}
"""


def scenario_policy(scenario: str, name: str) -> str:
    """The text of `<name>.yaml` in a scenario folder."""
    return (SCENARIOS / scenario / f"{name}.yaml").read_text()


def example_policy(name: str) -> str:
    """The text of one of the repository's example policies (policies/<name>.yaml)."""
    return (POLICIES / f"{name}.yaml").read_text()


def predefined_policy(name: str, psk: str) -> str:
    """A predefined Windows policy ('client', 'server', 'secure server') authenticating with a PSK."""
    policy = predefined(name, authentication=(AuthMethod(AuthKind.PRESHARED_KEY, psk=psk),))
    return policyfile.dumps(policy)


def edit(text: str, old: str, new: str, count: int = 1) -> str:
    """An administrator's edit of a policy: replace `old` (which must be there `count` times) with `new`."""
    if text.count(old) != count:
        raise ValueError(f"{old!r} is in the policy {text.count(old)} times, not {count}")
    return text.replace(old, new)


def start_ipsecd(node: Node, policy: str | None, ike_address: str | None = None) -> None:
    """(Re)start ipsecd in `node` with `policy` assigned (None: the store is empty, nothing assigned);
    IKE on `ike_address` (a gateway's address towards its peer) or the node's first address."""
    config = NODE_CONFIG % (", assign: " + POLICY_FILE if policy is not None else "")
    files = {"ipsecd.yaml": config + (f"ike: {{address: {ike_address}}}\n" if ike_address else "")}
    if policy is not None:
        files[f"policies/{POLICY_FILE}"] = policy
    ike_lab.start(node, "", files)  # no folder of its own in the scenario: every file is given here


def stop_ipsecd(*nodes: Node) -> None:
    """Stop ipsecd (it deletes its SAs, telling the peer, and removes its kernel policy) where it runs."""
    for node in nodes:
        ike_lab.stop(node)


@contextmanager
def ipsecd_in(lab: Lab, policies: dict[str, str | None]) -> Iterator[Lab]:
    """The lab with ipsecd started in the named nodes with their policies; at the end ipsecd stopped in
    every node, and the TCP listeners a failed transfer left behind too (so the next test finds a clean
    lab)."""
    for name, policy in policies.items():
        start_ipsecd(lab.node(name), policy)
    try:
        yield lab
    finally:
        for node in lab.nodes.values():
            stop_ipsecd(node)
            node.exec("for f in /run/lab/nc-*.pid; do [ -e $f ] || continue; p=$(cat $f); "
                      "pkill -P $p; kill $p; rm -f $f; done 2>/dev/null")


def change_policy(node: Node, policy: str) -> None:
    """Write a new version of the node's assigned policy in its store (no refresh: the caller decides)."""
    node.put_file(f"{STORE}/{POLICY_FILE}", policy)


def refresh(node: Node) -> dict:
    """`ipsecctl refresh`: the agent re-reads the store now; returns what changed."""
    return ipsecctl(node, "refresh")


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


def events(node: Node, kind: str) -> list[dict]:
    """The node's policy and negotiation events of one kind (ipsecctl events)."""
    return [e for e in ike_lab.events(node) if e["kind"] == kind]

