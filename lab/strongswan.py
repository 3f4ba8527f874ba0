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
from dataclasses import dataclass, field
from datetime import datetime

from lab.capture import wait_until
from lab.running import Node

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
#: charon's key log: `12[CHD] encryption initiator key => 16 bytes @ 0x...` then hex dump lines
KEY_LINE = re.compile(r"^(\d+)\[(\w+)\] (.*?) => \d+ bytes @ 0x[0-9a-f]+$")
DUMP_LINE = re.compile(r"^(\d+)\[\w+\] +\d+: ((?:[0-9A-F]{2} ?)+)")
USING = re.compile(r"^(\d+)\[CHD\] +using (\w+) for (encryption|integrity)")
#: charon's algorithm names -> tshark's ESP SA table names
TSHARK_ENCRYPTION = {
    "DES_CBC": "DES-CBC [RFC2405]",
    "AES_CBC": "AES-CBC [RFC3602]",
    "3DES_CBC": "TripleDES-CBC [RFC2451]",
    "AES_GCM_16": "AES-GCM with 16 octet ICV [RFC4106]",
}
TSHARK_INTEGRITY = {
    "HMAC_MD5_96": "HMAC-MD5-96 [RFC2403]",
    "HMAC_SHA1_96": "HMAC-SHA-1-96 [RFC2404]",
    "HMAC_SHA2_256_128": "HMAC-SHA-256-128 [RFC4868]",
}


@dataclass(frozen=True)
class Tunnel:
    """One IKEv1 main mode connection with one tunnel-mode child `net` (a Windows rule's worth).

    Proposals are swanctl's (e.g. "3des-sha1-modp1024" for main mode, "3des-sha1" for ESP; add a group to
    the ESP proposal for PFS). `psk` set: pre-shared key with ID_IPV4_ADDR identities; else certificates:
    `cert` (a file in /etc/swanctl/x509, key in /etc/swanctl/private) and the peer's DN as `remote_id`.
    `start_action`: none (initiate by hand) or start (at load); trap (on the first packet) does nothing
    with libipsec 5.9.8, which raises no acquire. `options` and `child_options` add or replace swanctl
    settings of the connection (version = 2, aggressive = yes, fragmentation = force, dpd_delay = 5s) and
    of the child (mode = transport, life_time = 40s).
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
    options: dict[str, str] = field(default_factory=dict)
    child_options: dict[str, str] = field(default_factory=dict)

    def render(self) -> str:
        """The swanctl.conf text for this tunnel."""
        if self.psk is not None:
            local = {"auth": "psk", "id": self.local_addr}
            remote = {"auth": "psk", "id": self.remote_id or self.remote_addr}
        elif self.cert and self.remote_id:
            local = {"auth": "pubkey", "certs": self.cert}
            remote = {"auth": "pubkey", "id": f'"{self.remote_id}"'}
        else:
            raise ValueError("a Tunnel needs psk, or cert and remote_id (the peer's certificate DN)")
        child = {
            "mode": "tunnel",
            "local_ts": self.local_ts,
            "remote_ts": self.remote_ts,
            "esp_proposals": self.esp_proposal,
            "start_action": self.start_action,
            **self.child_options,
        }
        connection = {
            "version": 1,
            "aggressive": "no",  # main mode
            "local_addrs": self.local_addr,
            "remote_addrs": self.remote_addr,
            "proposals": self.ike_proposal,
            "mobike": "no",
            "local": local,
            "remote": remote,
            "children": {self.child: child},
            **self.options,
        }
        settings: dict = {"connections": {self.name: connection}}
        if self.psk is not None:
            secret = {"id-local": local["id"], "id-remote": remote["id"], "secret": f'"{self.psk}"'}
            settings["secrets"] = {f"ike-{self.name}": secret}
        return "\n".join(_settings(settings))


def _settings(settings: dict, depth: int = 0) -> list[str]:
    """strongSwan's settings syntax: `name {` ... `}` for sections, `key = value` for the rest."""
    pad = "    " * depth
    lines = []
    for key, value in settings.items():
        if isinstance(value, dict):
            lines += [f"{pad}{key} {{", *_settings(value, depth + 1), f"{pad}}}"]
        else:
            lines.append(f"{pad}{key} = {value}")
    return lines


class Charon:
    """charon and swanctl in one node of image `strongswan`."""

    def __init__(self, node: Node):
        self.node = node

    def start(self, key_log: bool = False) -> Charon:
        """Start charon (service `charon` of images/strongswan/image.yaml: in the foreground, ready when
        swanctl gets an answer on its vici socket); key_log: keys in KEY_LOG (level 4)."""
        if key_log:
            self.node.put_file("/etc/strongswan.lab.d/keys.conf", KEY_LOG_CONF)
        self.node.start_service("charon")
        return self

    def fresh(self, key_log: bool = False) -> Charon:
        """charon running with no SA: started if it is not (a lab shared by tests), else every SA deleted."""
        if self.node.process("charon").alive():
            self.terminate()
        else:
            self.start(key_log=key_log)
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

    def esp_keys(self) -> list[EspKeys]:
        """Every ESP SA's keys so far (charon started with key_log=True)."""
        return esp_keys(self.node.exec(["cat", KEY_LOG], check=True).stdout)

    def tshark_args(self) -> list[str]:
        """tshark options that decrypt and authenticate the ESP of every SA this charon has had."""
        options = ["esp.enable_encryption_decode:TRUE", "esp.enable_authentication_check:TRUE"]
        options += [k.tshark_uat() for k in self.esp_keys()]
        return [arg for option in options for arg in ("-o", option)]

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


@dataclass(frozen=True)
class EspKeys:
    """One ESP SA's keys, as charon logged them (GCM keys are key || 4-byte salt)."""

    spi: int
    encryption: str
    encryption_key: bytes
    integrity: str | None
    integrity_key: bytes

    def tshark_uat(self) -> str:
        """This SA as an entry of tshark's `uat:esp_sa` table."""
        integrity = TSHARK_INTEGRITY[self.integrity] if self.integrity else "NULL"
        return (
            f'uat:esp_sa:"IPv4","*","*","{self.spi:#010x}","{TSHARK_ENCRYPTION[self.encryption]}",'
            f'"0x{self.encryption_key.hex()}","{integrity}","0x{self.integrity_key.hex()}"'
        )


def esp_keys(log: str) -> list[EspKeys]:
    """The ESP SAs in a charon key log (level 4 on chd). charon logs, per CHILD_SA and in one thread, the
    algorithms, the `initiator/responder SA seed` ([g(qm)^xy with PFS] | protocol | SPI | Ni | Nr, RFC 2409
    §5.5: the SPI the keys belong to), the keys, then `adding inbound ESP SA`; the seed binds each key to
    its SPI, read from its end (charon's and ipsecd's quick mode nonces are 32 bytes).

    >>> [k.spi for k in esp_keys(SAMPLE_KEY_LOG)]
    [3735928559, 3405691582]
    >>> pfs = SAMPLE_KEY_LOG.replace("03 DE AD BE EF", "77 " * 128 + "03 DE AD BE EF")  # g^xy first
    >>> [k.spi for k in esp_keys(pfs)][0] == 0xDEADBEEF
    True
    >>> esp_keys(SAMPLE_KEY_LOG)[0].tshark_uat()
    'uat:esp_sa:"IPv4","*","*","0xdeadbeef","AES-CBC [RFC3602]","0x0102","HMAC-SHA-1-96 [RFC2404]","0x0a0b"'
    """
    found: list[EspKeys] = []
    algorithms: dict[str, dict[str, str]] = {}  # per thread: "encryption"/"integrity" -> charon's name
    dumped: dict[str, dict[str, bytes]] = {}  # per thread: the values dumped so far, by their label
    label: dict[str, str] = {}  # per thread: the value whose hex dump follows
    for line in log.splitlines():
        if m := USING.match(line):
            algorithms.setdefault(m[1], {})[m[3]] = m[2]
        elif m := KEY_LINE.match(line):
            label[m[1]] = m[3]
            dumped.setdefault(m[1], {})[m[3]] = b""
        elif (m := DUMP_LINE.match(line)) and m[1] in label:
            dumped[m[1]][label[m[1]]] += bytes.fromhex(m[2].replace(" ", ""))
        elif (m := re.match(r"^(\d+)\[CHD\] adding (in|out)bound ESP SA", line)) and m[1] in dumped:
            values, used = dumped.pop(m[1]), algorithms.pop(m[1], {})
            label.pop(m[1], None)
            for side in ("initiator", "responder"):
                found.append(
                    EspKeys(
                        _seed_spi(values[f"{side} SA seed"]),
                        used["encryption"],
                        values[f"encryption {side} key"],
                        used.get("integrity"),
                        values.get(f"integrity {side} key", b""),
                    )
                )
    return found


def _seed_spi(seed: bytes) -> int:
    """The SPI in a KEYMAT seed: protocol and SPI sit just before the two 32-byte nonces."""
    at = len(seed) - 2 * QUICK_MODE_NONCE - 5
    return int.from_bytes(seed[at + 1 : at + 5], "big")


QUICK_MODE_NONCE = 32


def _dump(hex_bytes: str) -> str:
    """Bytes as charon dumps them: 16 a line, each line with its offset."""
    data = bytes.fromhex(hex_bytes)
    return "\n".join(f"12[CHD]  {i:3}: {data[i:i + 16].hex(' ').upper()}" for i in range(0, len(data), 16))


SAMPLE_KEY_LOG = f"""12[CHD]   using AES_CBC for encryption
12[CHD]   using HMAC_SHA1_96 for integrity
12[CHD] initiator SA seed => 69 bytes @ 0x7fec689b79e0
{_dump("03DEADBEEF" + "11" * 64)}
12[CHD] responder SA seed => 69 bytes @ 0x7fec689b7990
{_dump("03CAFEBABE" + "22" * 64)}
12[CHD] encryption initiator key => 2 bytes @ 0x7fec30002bb0
12[CHD]    0: 01 02                                            ..
12[CHD] encryption responder key => 2 bytes @ 0x7fec30002ec0
12[CHD]    0: 03 04                                            ..
12[CHD] integrity initiator key => 2 bytes @ 0x7fec30002b90
12[CHD]    0: 0A 0B                                            ..
12[CHD] integrity responder key => 2 bytes @ 0x7fec30002ee0
12[CHD]    0: 0C 0D                                            ..
12[CHD] adding inbound ESP SA
"""


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
