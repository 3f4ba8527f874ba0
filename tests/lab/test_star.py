"""The star (topologies/star.yaml) with 10 clients pinging the server at the same instant: every client
ends with exactly one quick mode SA pair with the server, and the server negotiated without a failure.

Before the fix in ipsecd.ike (an acquire waits for the quick mode in progress with the peer) the server's
reply to each held ping started a second quick mode the other way: two SA pairs per client.

An idle ipsecd stays small (issue 16): a pre-shared key node loads cryptography (6 MB) with its first
negotiation, not at start.
"""

from lab.running import Node
from lab.star import clients, peers, ping_all_at_once, quick_modes

CLIENTS = 10
#: Whether ipsecd has mapped cryptography's compiled core (its OpenSSL included) into its memory.
MAPS_CRYPTOGRAPHY = "grep -c /cryptography/ /proc/$(cat /run/lab/ipsecd.pid)/maps"


def has_cryptography(node: Node) -> bool:
    result = node.exec(["bash", "-c", MAPS_CRYPTOGRAPHY])
    assert result.stdout.strip().isdigit(), f"{node.name}: no ipsecd to look at: {result.stderr}"
    return int(result.stdout) > 0


def test_a_psk_ipsecd_loads_cryptography_with_its_first_negotiation_not_at_start(lab_up):
    lab = lab_up("star", overrides={"parameters": {"clients": 1}})
    server, client = lab.node("server"), clients(lab)[0]
    assert (has_cryptography(server), has_cryptography(client)) == (False, False)
    assert client.exec(["ping", "-n", "-c", "1", "-W", "10", server.address()]).ok
    assert peers(client) == {server.address()}
    assert (has_cryptography(server), has_cryptography(client)) == (True, True)


def test_every_client_pinging_at_once_gets_one_quick_mode_and_the_server_no_failure(lab_up):
    lab = lab_up("star", overrides={"parameters": {"clients": CLIENTS}})
    result = ping_all_at_once(lab, timeout=30)
    assert {name: rc for name, (rc, _) in result.replies.items()} == {n.name: 0 for n in clients(lab)}
    server = lab.node("server")
    per_client = {node.name: [(q["peer"], q["local"], q["remote"]) for q in quick_modes(node)]
                  for node in clients(lab)}
    expected = {node.name: [(server.address(), f"{node.address()}/32", f"{server.address()}/32")]
                for node in clients(lab)}
    assert per_client == expected
    on_server = sorted(q["peer"] for q in quick_modes(server))
    assert on_server == sorted(node.address() for node in clients(lab))  # one pair per client, no second
    assert result.server_counters["ike_negotiation_failures"] == 0
    assert result.server_counters["ike_oakley_quick_modes"] == CLIENTS
