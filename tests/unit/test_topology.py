"""Topology files: the shipped ones load; each kind of bad file is refused naming file, line and field."""

import doctest
import importlib
import pkgutil
import struct
from pathlib import Path

import pytest

import lab
from lab import model, topology
from lab.backend import LabError
from lab.docker_backend import DockerBackend
from lab.graph import render, to_dot
from lab.node_setup import firewall_ruleset, hosts_file, krb5_conf, nat_ruleset

GOOD = """\
name: demo
segments:
  lan: {subnet: 10.0.0.0/24}
  wan: {subnet: 198.51.100.0/24}
nodes:
  a:
    interfaces:
      eth1: {segment: lan, address: 10.0.0.1/24}
    routes:
      - {to: default, via: 10.0.0.254}
  gw:
    role: nat
    interfaces:
      eth1: {segment: lan, address: 10.0.0.254/24}
      eth2: {segment: wan, address: 198.51.100.1/24}
    nat: {outside: eth2, ports: 40000-40999}
"""


def refused(text: str) -> list[str]:
    with pytest.raises(topology.TopologyError) as caught:
        topology.loads(text, "topologies/x.yaml")
    return caught.value.problems


@pytest.mark.parametrize("name", ["intranet-pair", "nat-t", "gateway-tunnel", "domain", "star"])
def test_shipped_topologies_load(name):
    topo = topology.load(name)
    assert topo.name == name
    assert topo.path == topology.TOPOLOGY_DIR / f"{name}.yaml"


def test_canonical_addresses():
    assert topology.load("intranet-pair").node("host-b").address("eth1") == "10.0.0.2"
    nat = topology.load("nat-t")
    assert (nat.node("nat").address("eth2"), nat.node("server").address()) == ("203.0.113.1", "203.0.113.2")
    gw = topology.load("gateway-tunnel")
    assert gw.node("host-a").routes[0].via == gw.node("gw-a").interfaces["eth1"].address.ip
    domain = topology.load("domain")
    assert domain.runnable and domain.domain == model.Domain("LAB.TEST", "dc")
    assert [(n.name, n.join.ou) for n in domain.domain_members()] == [("member-a", "OU=Servers"),
                                                                       ("member-b", "OU=Clients")]


def test_good_file_builds_the_model():
    topo = topology.loads(GOOD, "x.yaml")
    assert topo.node("gw").nat == model.Nat("eth2", (40000, 40999))
    assert str(topo.node("a").routes[0].to) == "0.0.0.0/0"
    assert topo.node("gw").all_sysctls()["net.ipv4.ip_forward"] == "1"
    assert topo.node("a").all_sysctls()["net.ipv4.ip_forward"] == "0"
    assert [n.name for n, _ in topo.members("lan")] == ["a", "gw"]


@pytest.mark.parametrize(
    ("old", "new", "expected"),
    [
        (
            "address: 10.0.0.1/24",
            "address: 10.0.0.300/24",
            "topologies/x.yaml:8: nodes.a.interfaces.eth1.address: '10.0.0.300/24' is not an IPv4 interface",
        ),
        (
            "address: 10.0.0.1/24",
            "address: 10.0.0.1",
            "topologies/x.yaml:8: nodes.a.interfaces.eth1.address: '10.0.0.1' is not an IPv4 interface",
        ),
        (
            "subnet: 10.0.0.0/24",
            "subnet: 10.0.0.1/24",
            "topologies/x.yaml:3: segments.lan.subnet: '10.0.0.1/24' is not an IPv4 network",
        ),
        (
            "    routes:",
            "    colour: red\n    routes:",
            "topologies/x.yaml:9: nodes.a.colour: unknown field 'colour'",
        ),
        (
            "role: nat",
            "role: firewall",
            "topologies/x.yaml:12: nodes.gw.role: 'firewall' is not one of host, gateway",
        ),
        (
            "eth1: {segment: lan, address: 10.0.0.1/24}",
            "eth1: {address: 10.0.0.1/24}",
            "topologies/x.yaml:8: nodes.a.interfaces.eth1: 'segment' is required",
        ),
        (
            "via: 10.0.0.254",
            "via: 10.0.0.254/24",
            "topologies/x.yaml:10: nodes.a.routes[0].via: '10.0.0.254/24' is not an IPv4 address",
        ),
        (
            "ports: 40000-40999",
            "ports: 40999-40000",
            "topologies/x.yaml:16: nodes.gw.nat.ports: '40999-40000' is not a port range",
        ),
        ("  a:\n", "  A:\n", "topologies/x.yaml:6: nodes.A: 'A' is not a valid name"),
        (
            "    role: nat\n",
            "    role: nat\n    drop: [udp500]\n",
            "topologies/x.yaml:13: nodes.gw.drop[0]: 'udp500'",
        ),
        # semantic errors, found after the schema passed
        (
            "eth1: {segment: lan, address: 10.0.0.1/24}",
            "eth1: {segment: lam, address: 10.0.0.1/24}",
            "topologies/x.yaml:8: nodes.a.interfaces.eth1.segment: unknown segment 'lam' (segments: lan, wan",
        ),
        (
            "address: 10.0.0.254/24",
            "address: 10.0.0.1/24",
            "topologies/x.yaml:14: nodes.gw.interfaces.eth1.address: 10.0.0.1 is already used by nodes.a",
        ),
        (
            "address: 198.51.100.1/24",
            "address: 198.51.101.1/24",
            "topologies/x.yaml:15: nodes.gw.interfaces.eth2.address: 198.51.101.1/24 is outside segment wan",
        ),
        (
            "via: 10.0.0.254",
            "via: 10.9.0.254",
            "topologies/x.yaml:10: nodes.a.routes[0].via: gateway 10.9.0.254 is not on any of a's subnets",
        ),
        (
            "outside: eth2",
            "outside: eth9",
            "topologies/x.yaml:16: nodes.gw.nat.outside: 'eth9' is not an interface of gw",
        ),
        (
            "    nat: {outside: eth2, ports: 40000-40999}\n",
            "",
            "topologies/x.yaml:11: nodes.gw.nat: a node with role nat needs nat settings",
        ),
        ("  a:\n", "  a:\n    ipsecd: missing.yaml\n", "topologies/x.yaml:7: nodes.a.ipsecd: "),
        ("  a:\n", "  a:\n    image: nod\n",
         "topologies/x.yaml:7: nodes.a.image: no image kind 'nod' (did you mean 'node'?) (images/: dc, "),
        # YAML-level errors
        (
            "  wan: {subnet: 198.51.100.0/24}",
            "  lan: {subnet: 198.51.100.0/24}",
            "topologies/x.yaml:4: segments.lan: duplicate key",
        ),
        ("nodes:", "nodes: [", "topologies/x.yaml:7: not valid YAML"),
    ],
)
def test_bad_file_is_refused_with_file_line_and_field(old, new, expected):
    assert old in GOOD
    problems = refused(GOOD.replace(old, new, 1))
    assert any(p.startswith(expected) for p in problems), problems


def test_several_problems_are_all_reported_in_line_order():
    problems = refused(GOOD.replace("10.0.0.1/24", "10.0.0.300/24").replace("role: nat", "role: nope"))
    assert [p.split(":")[1] for p in problems] == ["8", "12"]


def test_empty_and_missing_files():
    assert refused("") == ["topologies/x.yaml:1: the file is empty"]
    with pytest.raises(topology.TopologyError, match=r"no such topology .*known: domain"):
        topology.load("no-such-topology")


def test_overrides_are_merged_before_validation(tmp_path: Path):
    config = tmp_path / "a.yaml"
    config.write_text("{}\n")
    topo = topology.loads(GOOD, "x.yaml", {"nodes": {"a": {"ipsecd": str(config)}}})
    assert topo.node("a").ipsecd == config
    assert topo.node("a").interfaces["eth1"].address is not None


COUNTED = """\
name: star
parameters: {clients: 3}
segments:
  lan: {subnet: 10.0.0.0/24}
nodes:
  server:
    interfaces:
      eth1: {segment: lan, address: 10.0.0.1/24}
  client:
    count: clients
    interfaces:
      eth1: {segment: lan, address: 10.0.0.10/24}
"""


def test_a_counted_node_becomes_numbered_copies_with_shifted_addresses():
    topo = topology.loads(COUNTED, "x.yaml")
    assert {n: str(s.interfaces["eth1"].address) for n, s in topo.nodes.items()} == {
        "server": "10.0.0.1/24", "client-1": "10.0.0.10/24", "client-2": "10.0.0.11/24",
        "client-3": "10.0.0.12/24"}
    assert len(topology.loads(COUNTED, "x.yaml", {"parameters": {"clients": 200}}).nodes) == 201
    assert list(topology.loads(COUNTED.replace("count: clients", "count: 0"), "x.yaml").nodes) == ["server"]
    shipped = topology.load("star", {"parameters": {"clients": 100}})
    assert shipped.node("client-100").address() == "10.0.1.100" and shipped.node("client-1").ipsecd.is_dir()


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        ({"parameters": {"clients": 300}},
         "x.yaml:12: nodes.client.interfaces.eth1.address: client-247: 10.0.1.0/24 is outside segment lan's"),
        ({"parameters": {"client": 3}}, "x.yaml: parameters.client: given, but the topology has no such"),
        ({"nodes": {"client": {"count": "n"}}}, "x.yaml:10: nodes.client.count: 'n' is not a parameter"),
        ({"nodes": {"client": {"count": -1}}}, "x.yaml:10: nodes.client.count: -1 is less than the minimum"),
        ({"nodes": {"client-2": {"interfaces": {"eth1": {"segment": "lan"}}}}},
         "x.yaml:9: nodes.client: client-2: a node of the file has the name of this copy of client"),
        ({"nodes": {"client": {"interfaces": {"eth1": {"mac": "02:00:00:00:00:01"}}}}},
         "x.yaml:12: nodes.client.interfaces.eth1.mac: client-1: a counted node cannot give a MAC"),
    ],
)
def test_bad_counts_and_parameters_are_refused_once_at_the_counted_node(overrides, expected):
    with pytest.raises(topology.TopologyError) as caught:
        topology.loads(COUNTED, "x.yaml", overrides)
    problems = caught.value.problems
    assert len(problems) == 1 and problems[0].startswith(expected), problems


def test_macs_are_deterministic_locally_administered_unicast():
    mac = model.mac_address("lab", "host-a", "eth1")
    assert mac == model.mac_address("lab", "host-a", "eth1") != model.mac_address("lab2", "host-a", "eth1")
    first = int(mac.split(":")[0], 16)
    assert first & 0x02 and not first & 0x01


def test_nat_ruleset_rewrites_ports():
    rules = nat_ruleset(model.Nat("eth2", (40000, 40999)))
    assert "oifname eth2 meta l4proto { tcp, udp } masquerade to :40000-40999" in rules


def test_firewall_ruleset_drops_in_every_direction():
    topo = topology.loads(
        GOOD.replace("    role: nat\n", "    role: nat\n    drop: [esp, udp/500]\n"), "x.yaml"
    )
    rules = firewall_ruleset(topo.node("gw").drop)
    for hook in ("input", "forward", "output"):
        assert f"type filter hook {hook} priority filter;" in rules
    assert rules.count("meta l4proto esp counter drop") == 3
    assert rules.count("udp dport 500 counter drop") == rules.count("udp sport 500 counter drop") == 3
    assert "counter drop" not in firewall_ruleset([])


def test_unrunnable_topology_is_refused_with_its_reason():
    unrunnable = topology.loads(GOOD.replace("nodes:", "runnable: false\nreason: not yet\nnodes:", 1))
    with pytest.raises(LabError, match="not runnable yet: not yet"):
        DockerBackend(client=object(), images=object()).up(unrunnable)


DOMAIN = "domain: {realm: LAB.TEST, controller: %s}\n"


@pytest.mark.parametrize(("domain", "join", "expected"), [
    ("", "{ou: OU=Servers}", "topologies/x.yaml:7: nodes.a.join: no domain to join"),
    (DOMAIN % "dc", "{}", "topologies/x.yaml:1: domain.controller: no node 'dc'"),
    (DOMAIN % "a", "{}", "topologies/x.yaml:8: nodes.a.join: the controller cannot join"),
    ("domain: {realm: LAB, controller: gw}\n", "{}", "topologies/x.yaml:1: domain.realm: 'LAB' is not valid"),
    (DOMAIN % "gw", "{ou: Servers}", "topologies/x.yaml:8: nodes.a.join.ou: 'Servers' is not valid"),
])
def test_domain_membership_is_checked(domain, join, expected):
    problems = refused(domain + GOOD.replace("  a:\n", f"  a:\n    join: {join}\n", 1))
    assert any(p.startswith(expected) for p in problems), problems


def test_domain_members_get_fully_qualified_names_and_a_krb5_conf_naming_the_kdc():
    domain = topology.load("domain")
    assert "10.0.0.10\tdc dc.lab.test dc-eth1" in hosts_file(domain)
    conf = krb5_conf(domain.domain, "10.0.0.10")
    assert "default_realm = LAB.TEST" in conf and "kdc = 10.0.0.10" in conf
    assert "dns_lookup_kdc = false" in conf


def test_graph_names_every_node_segment_and_address():
    dot = to_dot(topology.load("gateway-tunnel"))
    for text in ("gw-a", "host-b", "wan", "198.51.100.0/24", "10.2.0.10/24"):
        assert text in dot


GATEWAY_POLICY = """
name: gw-a
rules:
  - name: to site b
    filter_list:
      name: site a <-> site b
      filters: [{name: t, source: 10.1.0.0/24, destination: 10.2.0.0/24, protocol: any, mirrored: false}]
    filter_action: {name: Require, action: negotiate, security_methods: ["ESP[3DES,SHA1]"]}
    authentication: [{psk: k}]
    tunnel: 198.51.100.2
"""


def test_graph_shows_firewall_tunnel_and_a_readable_shape(tmp_path: Path):
    """A node's `drop:` firewall and its tunnel (from the policy its ipsecd folder assigns) are drawn, and
    the five-node chain is not a long strip."""
    folder = tmp_path / "gw-a"
    (folder / "policies").mkdir(parents=True)
    (folder / "ipsecd.yaml").write_text("policy: {store: policies, assign: gw-a.yaml}\n")
    (folder / "policies" / "gw-a.yaml").write_text(GATEWAY_POLICY)
    overrides = {"nodes": {"gw-a": {"ipsecd": str(folder)}, "host-a": {"drop": ["esp", "udp/500"]}}}
    topo = topology.load("gateway-tunnel", overrides)
    dot = to_dot(topo)
    assert "firewall drops esp, udp/500" in dot
    assert '"gw-a" -- "gw-b" [label="tunnel 10.1.0.0/24 <-> 10.2.0.0/24\\nESP[3DES,SHA1]"' in dot
    png = render(topo, tmp_path / "g.png").read_bytes()
    width, height = struct.unpack(">II", png[16:24])
    assert width / height < 8, (width, height)


def test_graph_of_the_default_lab_shows_esp_between_the_hosts():
    dot = to_dot(topology.load("intranet-pair"))
    assert '"host-a" -- "host-b" [label="ESP[3DES,SHA1] all traffic"' in dot


def test_overrides_remove_a_key_with_none():
    """JSON merge patch: a test that wants the bare pair removes the default lab's ipsecd."""
    bare = topology.load("intranet-pair", {"nodes": {"host-a": {"ipsecd": None}, "host-b": {"ipsecd": None}}})
    assert [n.ipsecd for n in bare.nodes.values()] == [None, None]
    assert all(n.ipsecd for n in topology.load("intranet-pair").nodes.values())


def test_ipsecd_folder_must_hold_the_config(tmp_path: Path):
    (tmp_path / "empty").mkdir()
    refused = r"nodes.host-a.ipsecd: folder .*empty has no ipsecd.yaml"
    with pytest.raises(topology.TopologyError, match=refused):
        topology.load("intranet-pair", {"nodes": {"host-a": {"ipsecd": str(tmp_path / "empty")}}})


def test_graph_renders_png(tmp_path: Path):
    out = render(topology.load("nat-t"), tmp_path / "nat-t.png")
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_hosts_file_names_every_node():
    hosts = hosts_file(topology.load("nat-t"))
    assert "192.168.1.1\tnat nat-eth1\n" in hosts
    assert "203.0.113.1\tnat-eth2\n" in hosts
    assert "203.0.113.2\tserver server-eth1\n" in hosts


@pytest.mark.parametrize(
    "name", [m.name for m in pkgutil.iter_modules(lab.__path__, "lab.") if m.name != "lab.__main__"]
)
def test_lab_docstring_examples(name):
    assert doctest.testmod(importlib.import_module(name)).failed == 0
