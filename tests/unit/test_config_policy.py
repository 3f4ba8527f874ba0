"""ipsecd.yaml with a policy: policy: and ike: are checked like the rest, and manual keys and a policy are
alternatives (docs/ike.md)."""

from ipaddress import IPv4Address
from pathlib import Path

import pytest

from ipsecd.config import ConfigError, parse

POLICY = """\
policy: {store: policies, assign: host-a.yaml}
ike:
  address: 10.0.0.1
  retransmit: [0.5, 1]
  keepalive_seconds: 2
  certificate: certs/host-a.pem
  private_key: /etc/keys/host-a.key
  trusted_cas: [certs/ca.pem]
  main_mode_lifetime: 40
  nat_traversal: [rfc3947, draft-02]
"""


def test_policy_and_ike_settings_with_paths_relative_to_the_file():
    cfg = parse(POLICY, "/etc/ipsecd/ipsecd.yaml")
    assert cfg.policy.store == Path("/etc/ipsecd/policies") and cfg.policy.assign == "host-a.yaml"
    assert cfg.ike.address == IPv4Address("10.0.0.1") and cfg.ike.retransmit == (0.5, 1)
    assert cfg.ike.keepalive_seconds == 2
    assert cfg.ike.certificate == Path("/etc/ipsecd/certs/host-a.pem")
    assert cfg.ike.private_key == Path("/etc/keys/host-a.key")
    assert cfg.ike.trusted_cas == (Path("/etc/ipsecd/certs/ca.pem"),)
    assert cfg.ike.main_mode_lifetime == 40 and cfg.ike.nat_traversal == ("rfc3947", "draft-02")
    assert len(cfg.spd) == 0 and cfg.sas == ()


@pytest.mark.parametrize(("text", "announced"), [
    ("[draft-02]", ("draft-02",)), ("[]", ()), ("[draft-02, rfc3947]", ("draft-02", "rfc3947"))])
def test_nat_traversal_is_a_node_setting_of_ike(text, announced):
    cfg = parse(f"policy: {{store: p}}\nike: {{nat_traversal: {text}}}\n", "ipsecd.yaml")
    assert cfg.ike.nat_traversal == announced


def test_defaults_are_windows_ones():
    cfg = parse("policy: {store: /var/lib/ipsecd/policies}\n", "ipsecd.yaml")
    assert cfg.policy.assign is None and cfg.ike.address is None
    assert cfg.ike.retransmit == (1, 2, 4, 8, 16, 32) and cfg.ike.keepalive_seconds == 20
    assert cfg.ike.main_mode_lifetime is None and cfg.ike.nat_traversal is None  # the policy's; draft-02


def test_directory_settings_and_their_defaults():
    cfg = parse("policy:\n  store: p\n  directory: {dc: 10.0.0.10, realm: lab.test, ca: ca.pem, "
                "group_policy_interval: 5s}\n", "/etc/ipsecd/ipsecd.yaml")
    d = cfg.policy.directory
    assert (str(d.dc), d.realm, d.dc_name, d.ca) == ("10.0.0.10", "LAB.TEST", "dc.lab.test",
                                                     Path("/etc/ipsecd/ca.pem"))
    assert (d.keytab, d.account, d.cache, d.group_policy_interval, d.timeout) == (
        Path("/etc/krb5.keytab"), None, Path("/var/lib/ipsecd/cache"), 5, 1.0)


@pytest.mark.parametrize(("text", "error"), [
    ("policy: {store: p}\nfilters:\n  - {name: x, action: permit}\n",
     "ipsecd.yaml:3: filters: a node takes either a policy"),
    ("policy: {store: p}\nsas: [{spi: 300}]\n", "ipsecd.yaml:2: sas: a node takes either a policy"),
    ("ike: {address: 10.0.0.1}\n", "ipsecd.yaml:1: ike: IKE negotiates what a policy asks for"),
    ("policy: {assign: a.yaml}\n", "ipsecd.yaml:1: policy.store: missing"),
    ("policy: {store: p, assign: ../a.yaml}\n", "policy.assign: expected the file name of a policy"),
    ("policy: {store: p, polling: 5}\n", "policy.polling: unknown field"),
    ("policy: {store: p}\nike: {address: 10.0.0}\n", "ipsecd.yaml:2: ike.address:"),
    ("policy: {store: p}\nike: {retransmit: [1, -1]}\n", "ike.retransmit: expected a list of positive"),
    ("policy: {store: p}\nike: {retransmit: []}\n", "ike.retransmit: expected a list of positive seconds"),
    ("policy: {store: p}\nike: {keepalive_seconds: 0}\n", "ike.keepalive_seconds: expected positive seconds"),
    ("policy: {store: p}\nike: {certificate: c.pem}\n", "ike.certificate: certificate and private_key go"),
    ("policy: {store: p}\nike: {trusted_cas: ca.pem}\n", "ike.trusted_cas: expected a list"),
    ("policy: {store: p}\nike: {main_mode_lifetime: 0}\n", "ike.main_mode_lifetime: expected whole seconds"),
    ("policy: {store: p}\nike: {nat_traversal: [draft02]}\n",
     "ipsecd.yaml:2: ike.nat_traversal[0]: 'draft02' is not a NAT-T revision (did you mean 'draft-02'?); "
     "known: rfc3947, draft-02 ([] turns NAT-T off)"),
    ("policy: {store: p}\nike: {nat_traversal: draft-02}\n", "ike.nat_traversal: expected a list"),
    ("policy: {store: p}\nike: {nat_traversal: [rfc3947, rfc3947]}\n",
     "ike.nat_traversal[1]: 'rfc3947' is named twice"),
    ("policy: {store: p}\nike: {nat_travesal: []}\n", "ike.nat_travesal: unknown field (did you mean "
                                                       "'nat_traversal'?)"),
    ("policy:\n  store: p\n  directory: {realm: LAB.TEST}\n", "ipsecd.yaml:3: policy.directory.dc: missing"),
    ("policy:\n  store: p\n  directory:\n    dc: dc.lab.test\n    realm: LAB.TEST\n",
     "ipsecd.yaml:4: policy.directory.dc: expected the DC's IPv4 address"),
    ("policy:\n  store: p\n  directory: {dc: 10.0.0.10, realm: LAB}\n",
     "policy.directory.realm: expected a realm"),
    ("policy:\n  store: p\n  directory:\n    dc: 10.0.0.10\n    realm: LAB.TEST\n"
     "    group_policy_interval: 90\n",
     "ipsecd.yaml:6: policy.directory.group_policy_interval: 90 is not a duration"),
    ("policy:\n  store: p\n  directory: {dc: 10.0.0.10, realm: LAB.TEST, timeout: 0}\n",
     "policy.directory.timeout: expected seconds in (0, 30]"),
    ("policy:\n  store: p\n  directory: {dc: 10.0.0.10, realm: LAB.TEST, kdc: x}\n",
     "policy.directory.kdc: unknown field"),
])
def test_refused_with_line_and_field(text, error):
    with pytest.raises(ConfigError, match=None) as caught:
        parse(text, "ipsecd.yaml")
    assert error in str(caught.value)


def test_check_reads_the_assigned_policy(tmp_path, capsys):
    from ipsecd.daemon import main

    store = tmp_path / "policies"
    store.mkdir()
    (store / "a.yaml").write_text("name: a\nrules: []\n")
    (tmp_path / "ipsecd.yaml").write_text("policy: {store: policies, assign: a.yaml}\n")
    assert main(["--check", "-c", str(tmp_path / "ipsecd.yaml")]) == 0
    assert "policy 'a'" in capsys.readouterr().out
    (store / "a.yaml").write_text("name: a\nrules: [{name: r}]\n")
    assert main(["--check", "-c", str(tmp_path / "ipsecd.yaml")]) == 2
    assert "the assigned policy is refused" in capsys.readouterr().err
    assert not (store / "assigned").exists()  # --check assigns nothing


def test_check_names_a_missing_assigned_file_with_the_store_it_looked_in(tmp_path, capsys):
    """It said only "cannot read: No such file or directory", without the field or what the store holds."""
    from ipsecd.daemon import main

    store = tmp_path / "policies"
    store.mkdir()
    (store / "secure-server.yaml").write_text("name: a\nrules: []\n")
    config_file = tmp_path / "ipsecd.yaml"
    config_file.write_text("policy: {store: policies, assign: secure-servr.yaml}\n")
    assert main(["--check", "-c", str(config_file)]) == 2
    assert capsys.readouterr().err.splitlines()[1] == (
        f"{config_file}: policy.assign: 'secure-servr.yaml' is not a policy file in the store {store} "
        "(did you mean 'secure-server.yaml'?); it holds: secure-server.yaml")


def test_check_names_every_problem_of_the_policy_at_once(tmp_path, capsys):
    from ipsecd.daemon import main

    store = tmp_path / "policies"
    store.mkdir()
    (store / "a.yaml").write_text(
        "name: a\npolling_interval: 90\nrules:\n  - name: r\n    filter_list: {name: l, filters: "
        "[{source: me, destination: 10.0.0.2, protocl: tcp}]}\n    filter_action: {name: n, "
        "action: negotiate, security_methods: ['ESP[3DES,SHA1]:0k/3600s']}\n"
        "    authentication: [{psk: ''}]\n")
    (tmp_path / "ipsecd.yaml").write_text("policy: {store: policies, assign: a.yaml}\n")
    assert main(["--check", "-c", str(tmp_path / "ipsecd.yaml")]) == 2
    err = capsys.readouterr().err.splitlines()
    assert err[0] == "ipsecd: the assigned policy is refused (4 problems):"
    where = [line.split(": ")[:2] for line in err[1:]]
    path = str(store / "a.yaml")
    assert where == [[f"{path}:2", "polling_interval"],
                     [f"{path}:5", "rules[0].filter_list.filters[0].protocl"],
                     [f"{path}:6", "rules[0].filter_action.security_methods[0]"],
                     [f"{path}:7", "rules[0].authentication[0].psk"]]
    assert "(did you mean 'protocol'?)" in err[2]
