"""Helpers for the Policy Agent's lab scenarios: policies into nodes, ipsecd started and stopped, SAs.

Each policy scenario folder holds a README.md (what and why) and the policy file of each node that runs
one, named `<node>.yaml` (failure twins `<node>-<variant>.yaml`); scenarios built on the predefined
policies take them from `ipsecd.policy.predefined` with a pre-shared key instead of Kerberos.

A node runs ipsecd with `policy: {store: ...}` in its configuration: the Policy Agent reads the assigned
policy from that folder (a LocalStore). Tests put the policy file there, start ipsecd, and change the file
in place as an administrator would, for the agent to take up by polling or on `ipsecctl refresh`.
"""

from __future__ import annotations

from scapy.layers.inet import IP
from scenarios.driver_lab import SCENARIOS, ipsecctl, ipsecd_log

from ipsecd.policy import policyfile
from ipsecd.policy.model import AuthKind, AuthMethod
from ipsecd.policy.predefined import predefined
from lab.capture import ip_packets, protocol, wait_until
from lab.docker_backend import IPSECD_CONFIG, IPSECD_LOG, IPSECD_SOCKET, Node

POLICIES = SCENARIOS.parent.parent.parent / "policies"  # the repository's example policies
STORE = "/etc/ipsecd/policies"
POLICY_FILE = "policy.yaml"
NODE_CONFIG = """\
# ipsecd of a policy scenario: the Policy Agent reads the policy assigned in the store (tests/lab/scenarios)
policy: {store: %s%s}
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


def start_ipsecd(node: Node, policy: str | None) -> None:
    """(Re)start ipsecd in `node` with `policy` assigned (None: the store is empty, nothing assigned)."""
    stop_ipsecd(node)
    node.exec(["rm", "-rf", STORE, IPSECD_LOG], check=True)
    node.exec(["mkdir", "-p", STORE], check=True)
    if policy is not None:
        node.put_file(f"{STORE}/{POLICY_FILE}", policy)
    node.put_file(IPSECD_CONFIG, NODE_CONFIG % (STORE, f", assign: {POLICY_FILE}" if policy else ""))
    daemon = node.spawn(["ipsecd", "--config", IPSECD_CONFIG], name="ipsecd", log=IPSECD_LOG)

    def answering() -> bool:
        if not daemon.alive():
            raise AssertionError(f"{node.name}: ipsecd exited at start:\n{daemon.log()[-2000:]}")
        return node.exec(["ipsecctl", "status"]).ok

    wait_until(answering, 20, what=f"{node.name}: ipsecd to answer on {IPSECD_SOCKET}")


def stop_ipsecd(*nodes: Node) -> None:
    """Stop ipsecd (it removes its kernel policy as it exits); nothing happens where it is not running."""
    for node in nodes:
        daemon = node.process("ipsecd")
        if node.exec(["test", "-s", daemon.pid_path]).ok:
            daemon.stop()
            node.exec(["rm", "-f", daemon.pid_path])


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
    """The node's Policy Agent events of one kind (ipsecctl events)."""
    return [e for e in ipsecctl(node, "events") if e["kind"] == kind]

