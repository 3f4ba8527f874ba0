"""The SPD compiled into the kernel: an nftables table of our own plus policy routing into the TUN.

The kernel decides per packet, so the daemon sees only traffic it must secure:

- block filters drop (counted), permit filters accept;
- negotiate filters mark outbound (locally sent or forwarded) packets; `ip rule fwmark` routes marked
  packets into the `ipsec0` TUN device, where the driver encrypts them;
- inbound clear packets that a negotiate filter says must be secured are dropped (counted), unless the
  filter action accepts unsecured communication or falls back to clear;
- fail closed: a packet marked for securing leaves by no other device than the TUN. When ipsecd dies, the
  TUN and its route go with the process, the marking rules stay, and marked packets that the main table
  routes out of a NIC are dropped (and counted) in postrouting: what policy says to secure is never sent
  in clear until ipsecd is back (its ruleset replaces this one in one transaction) or stopped cleanly
  (`remove`), as the Windows IPsec driver keeps its filters in force when the IPSec service dies;
- IKE (UDP 500/4500), Kerberos (TCP/UDP 88), RSVP, ESP/AH themselves, broadcast and multicast are exempt
  (spd.KERBEROS_PORT says why), in the same terms as
  `PacketSelector.is_exempt`; packets the daemon sends carry a bypass mark and are never re-marked; packets
  the daemon writes back to the TUN after decapsulation are accepted;
- what this host sends itself (to one of its own addresses, by lo) is left alone: it never reaches a wire,
  and a `me <-> any` rule or a rule naming the host's own subnet would otherwise mark it for the TUN, where
  the fail-closed rule drops it, among it the kernel's ICMP "fragmentation needed" that tells TCP the
  TUN's MTU (TCP through the SA then stalls after its handshake).

The table is replaced atomically (one `nft -f` transaction), so a policy change never leaves a gap.

>>> from ipaddress import IPv4Network as N
>>> from ipsecd.driver.spd import SPD, Action, Filter, SPDAction
>>> print(filter_rule(Filter("web", N("10.0.0.1/32"), N("10.0.0.0/24"), SPDAction("p", Action.PERMIT),
...                          protocol=6, dst_port=80)))
ip saddr 10.0.0.1 ip daddr 10.0.0.0/24 meta l4proto 6 th dport 80 counter return comment "permit web"
"""

from __future__ import annotations

import contextlib
import json
import logging
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ipsecd.driver.spd import SPD, Action, Direction, Filter

log = logging.getLogger("ipsecd.netfilter")

TABLE = "ipsecd"


@dataclass(frozen=True)
class Marks:
    secure: int  # set on packets to be secured: routed into the TUN
    bypass: int  # carried by the daemon's own sockets: never re-marked
    table: int  # policy routing table with the default route into the TUN
    tun: str


def filter_rule(f: Filter, secure_mark: int = 0x2121) -> str:
    """One filter as one nftables rule; the verdict depends on the direction and the filter action."""
    match = ["meta nfproto ipv4"] if f.src.prefixlen == 0 and f.dst.prefixlen == 0 else []
    if f.src.prefixlen:
        match.append(f"ip saddr {f.src.with_prefixlen.removesuffix('/32')}")
    if f.dst.prefixlen:
        match.append(f"ip daddr {f.dst.with_prefixlen.removesuffix('/32')}")
    if f.protocol is not None:
        match.append(f"meta l4proto {f.protocol}")
    if f.src_port is not None:
        match.append(f"th sport {f.src_port}")
    if f.dst_port is not None:
        match.append(f"th dport {f.dst_port}")
    action = f.action
    if action.action is Action.PERMIT:
        verdict, word = "return", "permit"
    elif action.action is Action.BLOCK:
        verdict, word = "drop", "block"
    elif f.direction is Direction.OUTBOUND:
        verdict, word = f"meta mark set {secure_mark:#x} return", "secure"
    elif action.accept_unsecured or action.fallback_to_clear:
        # Inbound passthrough, or a peer that may turn out not to speak IPsec (soft association).
        verdict, word = "return", "accept-unsecured"
    else:
        verdict, word = "drop", "unsecured"
    # The comment (verdict word, filter name) is how counters() tells the rules apart.
    return f'{" ".join(match)} counter {verdict} comment "{word} {comment_name(f.name)}"'


def comment_name(name: str) -> str:
    """A filter name as it can stand in an nftables comment."""
    return name.replace('"', "'")[:100]


def ruleset(spd: SPD, marks: Marks) -> str:
    """The whole table as one `nft -f` transaction that replaces the previous one."""
    def rules(direction: Direction) -> str:
        return "\n".join(f"    {filter_rule(f, marks.secure)}"
                         for f in spd.filters if f.direction is direction)

    tun = marks.tun
    return f"""\
table inet {TABLE}
delete table inet {TABLE}
table inet {TABLE} {{
  chain exempt {{
    udp sport {{ 500, 4500 }} accept
    udp dport {{ 500, 4500 }} accept
    meta l4proto {{ tcp, udp }} th sport 88 accept
    meta l4proto {{ tcp, udp }} th dport 88 accept
    meta l4proto {{ esp, ah, 46 }} accept
    ip daddr 224.0.0.0/4 accept
    ip daddr & 0.0.0.255 == 0.0.0.255 accept
    fib daddr type {{ broadcast, multicast }} accept
  }}
  chain outbound {{
{rules(Direction.OUTBOUND)}
  }}
  chain inbound {{
{rules(Direction.INBOUND)}
  }}
  chain local_out {{
    type route hook output priority mangle; policy accept;
    meta mark {marks.bypass:#x} accept
    fib daddr type local accept
    jump exempt
    jump outbound
  }}
  chain egress {{
    type filter hook postrouting priority filter; policy accept;
    meta mark {marks.secure:#x} oifname != "{tun}" counter drop comment "fail-closed egress"
  }}
  chain prerouting {{
    type filter hook prerouting priority mangle; policy accept;
    iifname "{tun}" accept
    fib daddr type local accept
    jump exempt
    jump outbound
  }}
  chain input {{
    type filter hook input priority filter; policy accept;
    iifname "{tun}" accept
    iifname "lo" accept
    jump exempt
    jump inbound
  }}
  chain forward {{
    type filter hook forward priority filter; policy accept;
    iifname "{tun}" accept
    oifname "{tun}" accept
    jump exempt
    jump inbound
  }}
}}
"""


def rule_counters(listing: dict) -> list[dict]:
    """Per-rule packet and byte counts from `nft -j list table`: [{verdict, filter, chain, packets, ...}]."""
    out = []
    for item in listing.get("nftables", []):
        rule = item.get("rule")
        if not rule or "comment" not in rule:
            continue
        verdict, _, name = rule["comment"].partition(" ")
        counter: dict[str, int] = next((e["counter"] for e in rule.get("expr", []) if "counter" in e), {})
        out.append({"verdict": verdict, "filter": name, "chain": rule["chain"],
                    "packets": counter.get("packets", 0), "bytes": counter.get("bytes", 0)})
    return out


Runner = Callable[..., subprocess.CompletedProcess]


class Netfilter:
    """Installs and removes the kernel half of the driver: nftables table, policy routing, sysctls."""

    def __init__(self, marks: Marks, run: Runner = subprocess.run) -> None:
        self.marks = marks
        self._run = run
        self._retired: list[dict] = []  # counters of rules a reload replaced, so totals never go back

    def cmd(self, *args: str, stdin: str | None = None, check: bool = True) -> str:
        done = self._run(list(args), input=stdin, capture_output=True, text=True)
        if check and done.returncode != 0:
            raise RuntimeError(f"{' '.join(args[:3])} failed: {done.stderr.strip()}")
        return done.stdout

    def install(self, spd: SPD) -> None:
        """Replace the ruleset atomically and make sure the routing into the TUN is in place."""
        with contextlib.suppress(RuntimeError):  # no table yet
            self._retired.extend(self.counters())
        self.cmd("nft", "-f", "-", stdin=ruleset(spd, self.marks))
        m = self.marks
        self.cmd("ip", "route", "replace", "default", "dev", m.tun, "table", str(m.table))
        rules = self.cmd("ip", "-j", "rule", "show")
        if not any(r.get("table") == str(m.table) for r in json.loads(rules or "[]")):
            self.cmd("ip", "rule", "add", "fwmark", f"{m.secure:#x}", "lookup", str(m.table),
                     "priority", "100")
        # Decapsulated packets arrive on the TUN with addresses routed elsewhere: loose reverse path.
        for iface in ("all", "default", m.tun):
            _sysctl(f"net/ipv4/conf/{iface}/rp_filter", "0")
        log.info("kernel policy installed: %d filters in nftables table inet %s", len(spd), TABLE)

    def counters(self) -> list[dict]:
        return rule_counters(json.loads(self.cmd("nft", "-j", "list", "table", "inet", TABLE)))

    def totals(self) -> dict[str, int]:
        """Packets dropped in the kernel: by block filters, and clear packets a filter wanted secured."""
        try:
            rules = [*self._retired, *self.counters()]
        except RuntimeError:
            rules = list(self._retired)
        return {verdict: sum(r["packets"] for r in rules if r["verdict"] == verdict)
                for verdict in ("block", "unsecured", "fail-closed")}

    def remove(self) -> None:
        m = self.marks
        self.cmd("nft", "delete", "table", "inet", TABLE, check=False)
        self.cmd("ip", "rule", "del", "fwmark", f"{m.secure:#x}", "lookup", str(m.table), check=False)
        self.cmd("ip", "route", "flush", "table", str(m.table), check=False)


def _sysctl(key: str, value: str) -> None:
    path = Path("/proc/sys", key)
    try:
        if path.read_text().strip() != value:
            path.write_text(value)
    except OSError as e:  # a read-only /proc/sys in a container: say so, carry on
        log.warning("cannot set %s=%s (%s); decapsulated packets may be dropped", key, value, e.strerror)

