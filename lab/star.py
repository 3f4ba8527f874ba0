"""The star lab (topologies/star.yaml) at scale: every client pings the server at the same instant, and
what it took is read back with ipsecctl (for tests/lab/test_star.py and bench/bench_star.py).

The clients start together on the host's clock (containers share it): each waits in its own shell until
the agreed instant, so a hundred pings leave within milliseconds of each other however long it took to
ask each node, and the only thing polled meanwhile is the server.
"""

from __future__ import annotations

import json
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from lab.capture import wait_until
from lab.running import Lab, Node

RESULT = "/run/lab/star-ping"  # in each client: the ping's exit code, then the wall clock when it ended
SERVER = "server"
#: Seconds between asking the first client to ping and the instant they all do (asking takes a while).
LEAD_PER_CLIENT = 0.1


@dataclass
class Convergence:
    """What one round of pings took: seconds from the common start to the last client's reply, per
    client its ping's exit code and reply time, the server's counters."""

    seconds: float
    replies: dict[str, tuple[int, float]]
    server_counters: dict[str, int]


def clients(lab: Lab) -> list[Node]:
    return [node for name, node in lab.nodes.items() if name != SERVER]


def ipsecctl(node: Node, *args: str) -> list | dict:
    """`ipsecctl <args> --json` in the node, decoded; AssertionError with ipsecd's log if it fails."""
    result = node.exec(["ipsecctl", *args, "--json"], timeout=30)
    if not result.ok:
        log = node.exec(["tail", "-n", "30", "/var/log/ipsecd.log"]).stdout
        raise AssertionError(f"{node.name}: ipsecctl {' '.join(args)} failed: {result.stderr}\n{log}")
    return json.loads(result.stdout)


def ping_all_at_once(lab: Lab, timeout: float = 60, workers: int = 8) -> Convergence:
    """Every client pings the server once at the same instant; returns when every client has its reply
    (or `timeout` after the start, with the clients that got none marked by their ping's exit code)."""
    nodes = clients(lab)
    start = time.time() + 1 + LEAD_PER_CLIENT * len(nodes)
    server_address = lab.node(SERVER).address()
    script = (
        f"rm -f {RESULT}; d=$(( {int(start * 1e6)} - ${{EPOCHREALTIME/./}} )); "
        "[ $d -gt 0 ] && sleep $(printf '%d.%06d' $((d / 1000000)) $((d % 1000000))); "
        f"ping -n -c 1 -W {int(timeout)} {server_address} >/dev/null 2>&1; "
        f'echo "$? $EPOCHREALTIME" > {RESULT}.tmp && mv {RESULT}.tmp {RESULT}'
    )
    with ThreadPoolExecutor(max_workers=workers) as pool:  # a detached exec each, nothing waited for
        list(pool.map(lambda node: node.backend.spawn(lab.name, node.name, ["bash", "-c", script]), nodes))
    if time.time() > start:
        raise AssertionError(f"asking {len(nodes)} clients to ping took longer than the {start:.1f} s lead")
    server = lab.node(SERVER)
    wait_until(
        lambda: len(peers(server)) >= len(nodes),
        timeout + 2,
        what=f"the server to hold quick mode SAs with all {len(nodes)} clients",
        interval=0.2,
    )
    replies = wait_until(lambda: _replies(nodes), timeout, what="every client's ping to end", interval=0.2)
    last = max(at for _, at in replies.values())
    return Convergence(last - start, replies, counters(server))


def _replies(nodes: list[Node]) -> dict[str, tuple[int, float]] | None:
    """{client: (ping exit code, wall clock at its end)} once every client has one, else None."""
    with ThreadPoolExecutor(max_workers=8) as pool:
        outputs = list(pool.map(lambda node: node.exec(["cat", RESULT]), nodes))
    if not all(out.ok for out in outputs):
        return None
    return {
        node.name: (int(out.stdout.split()[0]), float(out.stdout.split()[1]))
        for node, out in zip(nodes, outputs, strict=True)
    }


def quick_modes(node: Node) -> list[dict]:
    """The node's quick mode SA pairs (ipsecctl qmsa)."""
    rows = ipsecctl(node, "qmsa")
    assert isinstance(rows, list)
    return rows


def peers(node: Node) -> set[str]:
    """The peers the node holds a quick mode SA pair with."""
    return {row["peer"] for row in quick_modes(node)}


def counters(node: Node) -> dict[str, int]:
    """ipsecctl stats: every counter by its key (ike_negotiation_failures, ...)."""
    stats = ipsecctl(node, "stats")
    assert isinstance(stats, dict)
    return stats["counters"]
