"""strongSwan in a lab node (image `strongswan`): swanctl.conf from a Tunnel, charon, SAs and timings.

The image's charon uses kernel-libipsec (this kernel has XFRM but no ESP), so strongSwan only does tunnel
mode, and its ESP always travels in UDP 4500: both charons fake their NAT-D hashes to force encapsulation
(../shared/research/strongswan-peer.md).

    gw = Charon(lab.node("gw-a")).start()
    gw.load(Tunnel("198.51.100.1", "198.51.100.2", "10.1.0.0/24", "10.2.0.0/24", psk="secret"))
    gw.initiate()                          # blocks until the quick mode SA is installed
    gw.child_sas()[0]["state"]             # 'INSTALLED'

>>> print(Tunnel("192.0.2.1", "192.0.2.2", "10.1.0.0/24", "10.2.0.0/24", psk="s").render())
... # doctest: +ELLIPSIS
connections {
    lab {
        version = 1
        aggressive = no
        local_addrs = 192.0.2.1
        remote_addrs = 192.0.2.2
        proposals = aes128-sha1-modp2048
        mobike = no
...
secrets {
    ike-lab {
        id-local = 192.0.2.1
        id-remote = 192.0.2.2
        secret = "s"
    }
}
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

from lab.capture import wait_until
from lab.docker_backend import Node

CHARON = "/usr/lib/ipsec/charon"
CHARON_LOG = "/var/log/charon.log"
KEY_LOG = "/var/log/charon-keys.log"
SWANCTL_CONF = "/etc/swanctl/swanctl.conf"
#: Level 4 on IKE and CHILD_SA events prints every key (SKEYID*, encryption key Ka, ESP keys) for tshark.
KEY_LOG_CONF = f"""charon {{
    filelog {{
        keys {{
            path = {KEY_LOG}
            default = -1
            ike = 4
            chd = 4
            flush_line = yes
        }}
    }}
}}
"""
LOG_TIME = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{3}) ")


@dataclass(frozen=True)
class Tunnel:
    """One IKEv1 main mode connection with one tunnel-mode child `net` (a Windows rule's worth).

    Proposals are swanctl's (e.g. "3des-sha1-modp1024" for main mode, "3des-sha1" for ESP; add a group to
    the ESP proposal for PFS). `psk` set: pre-shared key with ID_IPV4_ADDR identities; else certificates:
    `cert` (a file in /etc/swanctl/x509, key in /etc/swanctl/private) and the peer's DN as `remote_id`.
    `start_action`: none (initiate by hand), trap (on the first packet, like Windows), start (at load).
    """

    local_addr: str
    remote_addr: str
    local_ts: str
    remote_ts: str
    ike_proposal: str = "aes128-sha1-modp2048"
    esp_proposal: str = "aes128-sha1"
    psk: str | None = None
    cert: str | None = None
    remote_id: str | None = None
    start_action: str = "none"
    name: str = "lab"
    child: str = "net"

    def render(self) -> str:
        """The swanctl.conf text for this tunnel."""
        if self.psk is not None:
            local = ["auth = psk", f"id = {self.local_addr}"]
            remote = ["auth = psk", f"id = {self.remote_id or self.remote_addr}"]
        elif self.cert and self.remote_id:
            local = ["auth = pubkey", f"certs = {self.cert}"]
            remote = ["auth = pubkey", f'id = "{self.remote_id}"']
        else:
            raise ValueError("a Tunnel needs psk, or cert and remote_id (the peer's certificate DN)")
        conn = [
            "version = 1",
            "aggressive = no",
            f"local_addrs = {self.local_addr}",
            f"remote_addrs = {self.remote_addr}",
            f"proposals = {self.ike_proposal}",
            "mobike = no",
            "local {",
            *_indent(local),
            "}",
            "remote {",
            *_indent(remote),
            "}",
            "children {",
            *_indent(
                [
                    f"{self.child} {{",
                    *_indent(
                        [
                            "mode = tunnel",
                            f"local_ts = {self.local_ts}",
                            f"remote_ts = {self.remote_ts}",
                            f"esp_proposals = {self.esp_proposal}",
                            f"start_action = {self.start_action}",
                        ]
                    ),
                    "}",
                ]
            ),
            "}",
        ]
        lines = ["connections {", *_indent([f"{self.name} {{", *_indent(conn), "}"]), "}"]
        if self.psk is not None:
            secret = [
                f"id-local = {self.local_addr}",
                f"id-remote = {self.remote_id or self.remote_addr}",
                f'secret = "{self.psk}"',
            ]
            lines += ["secrets {", *_indent([f"ike-{self.name} {{", *_indent(secret), "}"]), "}"]
        return "\n".join(lines)


def _indent(lines: list[str]) -> list[str]:
    return ["    " + line for line in lines]


class Charon:
    """charon and swanctl in one node of image `strongswan`."""

    def __init__(self, node: Node):
        self.node = node

    def start(self, key_log: bool = False, timeout: float = 10) -> Charon:
        """Start charon in the foreground and wait for its vici socket; key_log: keys in KEY_LOG (level 4)."""
        if key_log:
            self.node.put_file("/etc/strongswan.lab.d/keys.conf", KEY_LOG_CONF)
        self.node.spawn([CHARON], name="charon")
        wait_until(
            lambda: self.node.exec(["swanctl", "--stats"]).ok,
            timeout,
            what=f"{self.node.name}: charon's vici socket (log: {CHARON_LOG})",
        )
        return self

    def swanctl(self, *args: str, timeout: float = 30) -> str:
        return self.node.exec(["swanctl", *args], check=True, timeout=timeout).stdout

    def load(self, *tunnels: Tunnel, files: dict[str, bytes | str] | None = None) -> None:
        """Write swanctl.conf (and credentials: {path: content}) and load it all (`swanctl --load-all`)."""
        for path, content in (files or {}).items():
            self.node.put_file(path, content, mode=0o600 if "/private/" in path else 0o644)
        self.node.put_file(SWANCTL_CONF, "\n".join(t.render() for t in tunnels) + "\n")
        self.swanctl("--load-all", "--noprompt")

    def initiate(self, child: str = "net", timeout: int = 20) -> str:
        """Main mode + quick mode for `child`; returns once the SA is installed (swanctl blocks)."""
        return self.swanctl("--initiate", "--child", child, "--timeout", str(timeout), timeout=timeout + 5)

    def rekey(self, child: str = "net") -> None:
        self.swanctl("--rekey", "--child", child)

    def terminate(self) -> None:
        """Delete every IKE SA and its children: established ones with a delete to the peer, half-open ones
        (a failed negotiation, or the responder's unnamed SA) at once."""
        for sa in self.sas():
            force = ["--force"] if sa.get("state") != "ESTABLISHED" else []
            self.node.exec(
                ["swanctl", "--terminate", "--ike-id", sa["uniqueid"], *force, "--timeout", "5"], timeout=10
            )

    def sas(self) -> list[dict]:
        """The IKE SAs as swanctl lists them, each {name, state, ..., 'child-sas': {name: {...}}}."""
        return [
            {"name": name, **fields}
            for event in parse_pretty(self.swanctl("--list-sas", "--pretty"))
            for name, fields in event.items()
        ]

    def child_sas(self) -> list[dict]:
        return [child for sa in self.sas() for child in sa.get("child-sas", {}).values()]

    def wait_child(self, where: Callable[[dict], bool] = lambda child: True, timeout: float = 20) -> dict:
        """Poll until a CHILD_SA is INSTALLED (and `where(child)` holds); returns it."""
        return wait_until(
            lambda: next((c for c in self.child_sas() if c.get("state") == "INSTALLED" and where(c)), None),
            timeout,
            what=f"{self.node.name}: an installed CHILD_SA",
        )

    def log(self) -> str:
        return self.node.exec(["cat", CHARON_LOG]).stdout

    def setup_times(self) -> list[float]:
        """Seconds from 'initiating Main Mode' to 'CHILD_SA ... established', per initiation in the log."""
        started, times = None, []
        for line in self.log().splitlines():
            stamp = LOG_TIME.match(line)
            if not stamp:
                continue
            if "initiating Main Mode" in line:
                started = datetime.fromisoformat(stamp.group(1))
            elif "CHILD_SA" in line and "established" in line and started is not None:
                times.append((datetime.fromisoformat(stamp.group(1)) - started).total_seconds())
                started = None
        return times


def parse_pretty(text: str) -> list[dict]:
    """`swanctl --list-* --pretty` output as a list of events, each a nested dict (lists for `[ ]`).

    >>> parse_pretty('list-sa event {\\n  lab {\\n    state = ESTABLISHED\\n'
    ...              '    tasks-queued = [\\n      QUICK_MODE\\n    ]\\n  }\\n}\\n')
    [{'lab': {'state': 'ESTABLISHED', 'tasks-queued': ['QUICK_MODE']}}]
    """
    events: list[dict] = []
    stack: list = []
    for raw in text.splitlines():
        line = raw.strip()
        if not line:
            continue
        name = line[:-2].removesuffix(" =")  # `name {`, `name [`, `name = [`
        if line.endswith(" {"):
            node: dict = {}
            if stack:
                stack[-1][name] = node
            else:
                events.append(node)
            stack.append(node)
        elif line.endswith(" ["):
            items: list = []
            stack[-1][name] = items
            stack.append(items)
        elif line in ("}", "]"):
            stack.pop()
        elif isinstance(stack[-1], list):
            stack[-1].append(line)
        else:
            key, _, value = line.partition(" = ")
            stack[-1][key] = value
    return events
