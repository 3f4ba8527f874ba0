"""Link faults at a node's interface, on kernels without tc netem (`lab check`: netem `no`).

Loss, duplication and cuts are nftables rules in a `netdev` table of the node, hooked on the interface:
`ingress` for what the node receives, `egress` for what it sends (ipsecd's packet-socket ESP included, which
the node's `inet` hooks never see). Loss follows a fixed pattern (`numgen inc`: the same packets of a
sequence are lost in every run) or a random fraction (`numgen random`). Delay and reordering need a queue:
the node's `raw` PREROUTING hands what it receives to NFQUEUE, and lab/nfqueue_delay.py, run in the node,
releases each packet late (every Nth one after K later ones: reordered by K places). Every rule counts what
it did (`counts`), the delayer too (`delayed`).

    faults = LinkFaults(lab.node("host-b"))
    faults.set(lose("in", "udp dport 500", every=3), duplicate("out", "ip protocol esp"))
    faults.delay(300, match="-p udp --dport 500")      # what host-b receives, 300 ms late
    faults.delay(0, "-p esp", hold_every=10, overtaken_by=8, hold_ms=1000)   # reordered
    ...
    faults.clear()
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from lab.capture import wait_until
from lab.running import Node, Process

TABLE = "lab_faults"
MARK = 0x4C41  # a duplicate's mark: its copy is not duplicated again on its way out
QUEUE = 7
DELAYER = "/usr/local/lib/lab/nfqueue_delay.py"


@dataclass(frozen=True)
class Fault:
    """One nftables rule on the interface: what it matches, in which direction, and what it does."""

    direction: str  # "in": what the node receives; "out": what it sends
    match: str  # nftables match ("udp dport 500", "ip protocol esp"); "" for every frame
    action: str  # nftables statements
    name: str  # the rule's comment, the key of its count

    def rule(self) -> str:
        return f'{self.match} counter {self.action} comment "{self.name}"'.strip()


def lose(direction: str, match: str = "", *, every: int = 0, first: int = 1, percent: int = 0) -> Fault:
    """Drop `first` packets of every `every` matching ones (the 1st, 2nd, ... of each run of `every`: a
    fixed pattern), or a random `percent` of them."""
    if every:
        pattern, what = f"numgen inc mod {every} < {first}", f"{first} in {every}"
    elif percent:
        pattern, what = f"numgen random mod 100 < {percent}", f"{percent}%"
    else:
        raise ValueError("lose() needs every= or percent=")
    return Fault(direction, f"{match} {pattern}".strip(), "drop", f"lose {what} {direction} {match}".strip())


def duplicate(direction: str, match: str = "") -> Fault:
    """Send every matching packet twice, back to back (the copy once only: it carries MARK)."""
    return Fault(direction, f"meta mark != {MARK:#x} {match}".strip(),
                 f'meta mark set {MARK:#x} dup to "{{dev}}"', f"duplicate {direction} {match}".strip())


def cut() -> tuple[Fault, Fault]:
    """The link cut silently, both ways (the carrier stays up: no routes go, nothing is told)."""
    return Fault("in", "", "drop", "cut in"), Fault("out", "", "drop", "cut out")


class LinkFaults:
    """The faults of one interface of a node; `set` replaces them, `clear` lifts them all."""

    def __init__(self, node: Node, ifname: str = "eth1"):
        self.node, self.ifname = node, ifname
        self.delayer: Process | None = None

    def ruleset(self, faults: tuple[Fault, ...]) -> str:
        """The nftables script: the table made if missing, deleted, made again with the faults."""
        lines = [f"table netdev {TABLE} {{}}", f"delete table netdev {TABLE}", f"table netdev {TABLE} {{"]
        for direction, hook in (("in", "ingress"), ("out", "egress")):
            lines += [f"  chain {direction} {{",
                      f'    type filter hook {hook} device "{self.ifname}" priority filter;']
            lines += [f"    {f.rule().replace('{dev}', self.ifname)}"
                      for f in faults if f.direction == direction]
            lines.append("  }")
        return "\n".join([*lines, "}", ""])

    def set(self, *faults: Fault | tuple[Fault, ...]) -> None:
        """Apply these faults (each a Fault or a tuple of them, as cut() gives), replacing the last ones."""
        flat = tuple(f for item in faults for f in (item if isinstance(item, tuple) else (item,)))
        path = f"/etc/lab/{TABLE}-{self.ifname}.nft"
        self.node.put_file(path, self.ruleset(flat))
        self.node.exec(["nft", "-f", path], check=True)

    def counts(self) -> dict[str, int]:
        """Packets each fault rule has matched so far, by its name."""
        table = self.node.exec(["nft", "list", "table", "netdev", TABLE]).stdout
        found = re.findall(r'counter packets (\d+) bytes \d+ .*comment "([^"]*)"', table)
        return {name: int(packets) for packets, name in found}

    def delay(self, ms: float, match: str = "", hold_every: int = 0, overtaken_by: int = 0,
              hold_ms: float = 0) -> None:
        """What the node receives on the interface (`match`: iptables words, e.g. "-p udp --dport 500")
        released `ms` late; with `hold_every`, every Nth packet held back until `overtaken_by` later ones
        have passed it or for `hold_ms` more (lab/nfqueue_delay.py)."""
        self.undelay()
        self.node.put_file(DELAYER, (Path(__file__).parent / "nfqueue_delay.py").read_text())
        argv = ["python3", DELAYER, str(QUEUE), str(ms)]
        if hold_every:
            argv += ["--hold-every", str(hold_every), "--overtaken-by", str(overtaken_by),
                     "--hold-ms", str(hold_ms)]
        self.delayer = self.node.spawn(argv, name="nfqueue-delay")
        self.delayer.wait_for_log("queue ")
        self.node.exec(f"iptables -t raw -A PREROUTING -i {self.ifname} {match} "
                       f"-j NFQUEUE --queue-num {QUEUE} --queue-bypass", check=True)

    def delayed(self) -> dict[str, int]:
        """What the delayer did so far: packets queued, released, and those that overtook a held one."""
        if self.delayer is None:
            raise RuntimeError(f"{self.node.name}: no delay on {self.ifname}")
        lines = len(self.delayer.log().splitlines())
        self.node.exec(["sh", "-c", f"kill -USR1 $(cat {self.delayer.pid_path})"], check=True)
        report = wait_until(lambda: self.delayer.log().splitlines()[lines:], 5,  # type: ignore[union-attr]
                            what=f"{self.node.name}: the delayer's counts")
        words = report[0].split()
        return {name: int(value) for name, value in zip(words[::2], words[1::2], strict=True)}

    def undelay(self) -> None:
        """No more delay: the queue rule goes, then the delayer (releasing what it holds)."""
        self.node.exec("iptables -t raw -F PREROUTING 2>/dev/null; true")
        if self.delayer is not None:
            self.delayer.stop()
            self.delayer = None

    def clear(self) -> None:
        """Every fault lifted."""
        self.undelay()
        self.set()
