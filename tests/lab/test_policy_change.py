"""policy-change on intranet-pair: an edited policy taken up by polling and by `ipsecctl refresh`; the SAs
of untouched rules stay, those of a changed rule are renegotiated.

See scenarios/policy-change/README.md.
"""

import pytest
from pair import BARE_PAIR

from lab.backend import CommandError
from lab.capture import assert_marker_absent, assert_only_protocols, wait_until
from lab.harness import (
    change_policy,
    counters,
    edit,
    ipsecctl,
    ipsecd_in,
    refresh,
    scenario_file,
    spis_by_filter,
    start_policy,
    wait_counter,
    wait_for_sas,
)
from lab.traffic import tcp_transfer, udp_send

SCENARIO = "policy-change"
MARKER = b"POLICY-CHANGE-MARKER-"
A, B = "10.0.0.1", "10.0.0.2"
TCP_5001, REST = "secure tcp 5001/tcp 5001", "secure the rest/all"


@pytest.fixture
def pair(lab_up):
    # each test starts ipsecd with its own policies
    with ipsecd_in(lab_up("intranet-pair", overrides=BARE_PAIR), {}) as lab:
        yield lab, lab.node("host-a"), lab.node("host-b")


def secure_both_rules(a, b) -> dict[str, set[str]]:
    """Traffic for each negotiate rule (TCP 5001, and 5002 for "the rest"); returns host-b's SPIs."""
    for port in (5001, 5002):
        assert tcp_transfer(a, b, MARKER * 100, port=port, timeout=20) == MARKER * 100
    wait_for_sas(b, A)
    spis = spis_by_filter(b)
    assert len(spis.get(TCP_5001, ())) == len(spis.get(REST, ())) == 2, spis
    return spis


def test_a_changed_policy_is_taken_up_at_the_next_poll(pair):
    lab, a, b = pair
    policy_b = scenario_file(SCENARIO, "host-b")
    start_policy(a, scenario_file(SCENARIO, "host-a"))
    start_policy(b, policy_b)
    assert tcp_transfer(a, b, MARKER, port=80) == MARKER  # web is permitted in clear
    spis = secure_both_rules(a, b)
    before = counters(b)["blocked_by_filter"]

    change_policy(b, edit(policy_b, "{name: Permit, action: permit}", "{name: Block, action: block}"))
    wait_until(lambda: {f["verdict"] for f in ipsecctl(b, "filters") if f["rule"] == "web in clear"}
               == {"block"}, 15, what="host-b's poll to take up the web block")
    with pytest.raises(CommandError):
        tcp_transfer(a, b, MARKER, port=80, timeout=3)
    assert wait_counter(b, "blocked_by_filter", before + 1) > before

    with lab.capture_segment("lan") as cap:
        assert tcp_transfer(a, b, MARKER * 100, port=5002) == MARKER * 100
    assert_only_protocols(cap.packets(), between=(A, B), allowed={"esp"})  # no new IKE: the SAs stayed
    assert_marker_absent(cap.packets(), MARKER)
    assert spis_by_filter(b) == spis


def test_refresh_renegotiates_the_changed_rule_and_keeps_the_others(pair):
    lab, a, b = pair
    slow = {n: edit(scenario_file(SCENARIO, n.name), "polling_interval: 3s", "polling_interval: 180min")
            for n in (a, b)}
    for node, policy in slow.items():
        start_policy(node, policy)
    spis = secure_both_rules(a, b)

    for node, policy in slow.items():  # MD5 instead of SHA1 for TCP 5001, and a new rule blocking UDP 9999
        policy = edit(policy, 'name: ESP 3DES SHA1, action: negotiate, security_methods: ["ESP[3DES,SHA1]"]',
                      'name: ESP 3DES MD5, action: negotiate, security_methods: ["ESP[3DES,MD5]"]')
        peer = B if node is a else A
        policy += f"""\
  - name: block udp 9999
    filter_list:
      name: udp 9999
      filters: [{{name: udp 9999, source: me, destination: {peer}, protocol: udp, destination_port: 9999}}]
    filter_action: {{name: Block, action: block}}
"""
        change_policy(node, policy)
    assert "block udp 9999" not in {f["rule"] for f in ipsecctl(b, "filters")}  # written, not in force
    changes = {node.name: refresh(node)["change"] for node in (a, b)}
    for change in changes.values():
        assert change["touched_rules"] == ["secure tcp 5001"]
        assert change["added_rules"] == ["block udp 9999"]
    assert TCP_5001 not in spis_by_filter(b)

    with lab.capture_segment("lan") as cap:
        assert tcp_transfer(a, b, MARKER * 100, port=5001, timeout=20) == MARKER * 100
        before = counters(a)["blocked_by_filter"]
        udp_send(a, B, 9999, MARKER)
    assert_marker_absent(cap.packets(), MARKER)
    wait_for_sas(b, A)
    after = spis_by_filter(b)
    assert after[REST] == spis[REST]
    assert len(after[TCP_5001]) == 2 and not after[TCP_5001] & spis[TCP_5001]
    assert {s["integrity"] for s in ipsecctl(b, "sa") if s["filter"] == TCP_5001} == {"hmac-md5-96"}
    assert wait_counter(a, "blocked_by_filter", before + 1) > before
