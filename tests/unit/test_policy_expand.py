"""Expansion of generic filters into the driver's specific filters, and what packets they then match."""

from ipaddress import IPv4Address, IPv4Network
from pathlib import Path

import pytest
from scapy.layers.inet import ICMP, IP, TCP, UDP

from ipsecd.driver import spd
from ipsecd.policy import policyfile
from ipsecd.policy.expand import expand, expand_rules
from ipsecd.policy.validate import PolicyError

ME1, ME2 = IPv4Address("10.0.0.1"), IPv4Address("172.16.0.1")
DNS = {"server.lab.test": [IPv4Address("10.0.0.9")], "pair.lab.test": [IPv4Address("10.0.0.7"),
                                                                       IPv4Address("10.0.0.8")]}


def resolve(name: str) -> list[IPv4Address]:
    if name not in DNS:
        raise ValueError(f"cannot resolve {name!r}: Name or service not known")
    return DNS[name]


def policy(rules: str):
    return policyfile.loads(f"name: test\nrules:\n{rules}", "t.yaml")


def rule(name: str, filters: str, action: str = "{name: permit, action: permit}", extra: str = "") -> str:
    return (f"  - name: {name}\n    filter_list: {{name: {name}, filters: [{filters}]}}\n"
            f"    filter_action: {action}\n    authentication: [{{psk: k}}]\n{extra}")


SECURE = '{name: secure, action: negotiate, security_methods: ["ESP[3DES,SHA1]"]}'


def lookup(filters, packet, direction=spd.Direction.OUTBOUND):
    hit = spd.SPD(filters).lookup(spd.PacketSelector.parse(bytes(packet)), direction)
    return hit and hit.rule


def test_my_ip_address_becomes_each_address_and_mirrored_doubles():
    p = policy(rule("all", "{source: me, destination: any}"))
    filters = expand(p, [ME1, ME2])
    assert sorted((f.direction.value, str(f.src), str(f.dst)) for f in filters) == [
        ("inbound", "0.0.0.0/0", "10.0.0.1/32"), ("inbound", "0.0.0.0/0", "172.16.0.1/32"),
        ("outbound", "10.0.0.1/32", "0.0.0.0/0"), ("outbound", "172.16.0.1/32", "0.0.0.0/0")]
    assert lookup(filters, IP(src="172.16.0.1", dst="8.8.8.8") / ICMP()) == "all"
    assert lookup(filters, IP(src="8.8.8.8", dst="10.0.0.1") / ICMP(), spd.Direction.INBOUND) == "all"
    assert lookup(filters, IP(src="10.0.0.5", dst="8.8.8.8") / ICMP()) is None  # not one of my addresses


def test_no_address_no_filter():
    assert expand(policy(rule("all", "{source: me, destination: any}")), []) == []


def test_mirrored_swaps_ports_too():
    p = policy(rule("web", "{source: me, destination: 10.0.0.2, protocol: tcp, source_port: 1024, "
                           "destination_port: 80}"))
    out, back = sorted(expand(p, [ME1]), key=lambda f: f.direction != spd.Direction.OUTBOUND)
    assert (out.src_port, out.dst_port, back.src_port, back.dst_port) == (1024, 80, 80, 1024)
    assert (back.src, back.dst, back.direction) == (out.dst, out.src, spd.Direction.INBOUND)


def test_not_mirrored_matches_one_direction_chosen_by_where_i_am():
    p = policy(rule("snmp in", "{source: 10.0.0.50, destination: me, protocol: udp, destination_port: 161, "
                               "mirrored: false}")
               + rule("out", "{source: me, destination: 10.0.0.50, mirrored: false}")
               + rule("transit", "{source: 10.1.0.0/16, destination: 10.2.0.0/16, mirrored: false}"))
    by_rule = expand_rules(p, [ME1])
    assert [f.direction for f in by_rule["snmp in"]] == [spd.Direction.INBOUND]
    assert [f.direction for f in by_rule["out"]] == [spd.Direction.OUTBOUND]
    assert [f.direction for f in by_rule["transit"]] == [spd.Direction.OUTBOUND]
    # a filter naming one of my addresses literally is "me" too
    literal = policy(rule("snmp in", "{source: 10.0.0.50, destination: 10.0.0.1, mirrored: false}"))
    assert [f.direction for f in expand(literal, [ME1])] == [spd.Direction.INBOUND]


def test_most_specific_filter_wins_across_rules():
    p = policy(rule("all", "{source: me, destination: any}", SECURE)
               + rule("block telnet", "{source: me, destination: any, protocol: tcp, destination_port: 23}",
                      "{name: block, action: block}")
               + rule("lan web", "{source: me, destination: 10.0.0.0/24, protocol: tcp, "
                                 "destination_port: 80}")
               + rule("icmp", "{source: me, destination: any, protocol: icmp}"))
    filters = expand(p, [ME1])
    assert [f.rule for f in filters if f.direction is spd.Direction.OUTBOUND] == [
        "lan web", "block telnet", "icmp", "all"]
    assert lookup(filters, IP(src="10.0.0.1", dst="10.0.0.2") / TCP(dport=80)) == "lan web"
    assert lookup(filters, IP(src="10.0.0.1", dst="192.0.2.1") / TCP(dport=80)) == "all"
    assert lookup(filters, IP(src="10.0.0.1", dst="10.0.0.2") / TCP(dport=23)) == "block telnet"
    assert lookup(filters, IP(src="10.0.0.1", dst="192.0.2.1") / ICMP()) == "icmp"
    assert lookup(filters, IP(src="10.0.0.1", dst="192.0.2.1") / UDP(dport=53)) == "all"
    assert lookup(filters, IP(src="192.0.2.1", dst="10.0.0.1") / TCP(sport=80, dport=5555),
                  spd.Direction.INBOUND) == "all"  # the reply to 'lan web' from outside the LAN


def test_actions_reach_the_driver():
    p = policy(rule("secure", "{source: me, destination: 10.0.0.2}",
                    '{name: req, action: negotiate, accept_unsecured: true, fallback_to_clear: true,'
                    ' pfs: true, security_methods: ["ESP[DES,MD5]:20480k/300s"]}'))
    action = expand(p, [ME1])[0].action
    assert action == spd.SPDAction("req", spd.Action.NEGOTIATE,
                                      (spd.SecurityMethod("des-cbc", "hmac-md5-96", None, 300, 20480),),
                                      pfs=True, accept_unsecured=True, fallback_to_clear=True)


def test_dns_names_resolve_at_apply_to_every_address():
    p = policy(rule("pair", "{source: me, destination: pair.lab.test, mirrored: false}"))
    assert sorted(str(f.dst) for f in expand(p, [ME1], resolve)) == ["10.0.0.7/32", "10.0.0.8/32"]
    moved = {"pair.lab.test": [IPv4Address("10.0.0.6")]}
    assert [str(f.dst) for f in expand(p, [ME1], moved.__getitem__)] == ["10.0.0.6/32"]


def test_a_name_that_does_not_resolve_refuses_the_policy_naming_the_field():
    p = policy(rule("ok", "{source: me, destination: server.lab.test}")
               + rule("bad", "{source: nowhere.lab.test, destination: me}"))
    with pytest.raises(PolicyError) as e:
        expand(p, [ME1], resolve)
    assert str(e.value) == ("rules[1].filter_list.filters[0].source: "
                            "cannot resolve 'nowhere.lab.test': Name or service not known")


def test_tunnel_rules_direction_follows_the_endpoint():
    tunnel_out = rule("to branch", "{source: 10.1.0.0/16, destination: 10.2.0.0/16, mirrored: false}", SECURE,
                      "    tunnel: 192.0.2.2\n")
    tunnel_in = rule("from branch", "{source: 10.2.0.0/16, destination: 10.1.0.0/16, mirrored: false}",
                     SECURE, "    tunnel: 192.0.2.1\n")
    gateway = [IPv4Address("192.0.2.1"), IPv4Address("10.1.0.1")]
    by_rule = expand_rules(policy(tunnel_out + tunnel_in), gateway)
    (out,), (back,) = by_rule["to branch"], by_rule["from branch"]
    assert (out.direction, out.tunnel) == (spd.Direction.OUTBOUND, IPv4Address("192.0.2.2"))
    assert (back.direction, back.tunnel) == (spd.Direction.INBOUND, IPv4Address("192.0.2.1"))
    assert (out.src, out.dst) == (IPv4Network("10.1.0.0/16"), IPv4Network("10.2.0.0/16"))
    # the inbound tunnel filter answers the outbound one: same name, the one its SAs are known by
    assert (back.name, back.rule) == ("to branch/1", "from branch")


POLICIES = Path(__file__).parents[2] / "policies"
EXAMPLES = sorted([*POLICIES.glob("*.yaml"), *POLICIES.glob("*/*.yaml")])  # predefined/ is a symlink


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.name for p in EXAMPLES])
def test_every_shipped_policy_file_loads_and_expands(path):
    p = policyfile.load(path)
    assert expand(p, [IPv4Address("10.0.0.1"), IPv4Address("198.51.100.1")], resolve) is not None


def test_the_examples_are_there():
    assert {p.name for p in EXAMPLES} >= {"intranet-pair-filters.yaml", "gateway-tunnel-gw-a.yaml",
                                          "gateway-tunnel-gw-b.yaml", "secure-server-require-security.yaml"}


def test_inactive_rules_and_me_to_me_add_nothing():
    p = policy(rule("off", "{source: me, destination: any}", extra="    active: false\n")
               + rule("self", "{source: me, destination: me}"))
    assert expand_rules(p, [ME1, ME2]) == {"self": expand_rules(p, [ME1, ME2])["self"]}
    assert {(str(f.src), str(f.dst)) for f in expand(p, [ME1, ME2])} == {
        ("10.0.0.1/32", "172.16.0.1/32"), ("172.16.0.1/32", "10.0.0.1/32")}
