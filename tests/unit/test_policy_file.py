"""Policy files: parsing of every field, errors with file/line/field, round trip, shared parts."""

import re
import uuid
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path

import pytest

from ipsecd.driver import spd
from ipsecd.policy import model, policyfile
from ipsecd.policy.model import Endpoint, EndpointKind, MainModeMethod, parse_security_method
from ipsecd.policy.validate import PolicyError

WEB = """\
name: Web servers
guid: 298d1349-9106-4074-80e8-0ab25a82fedc
when_changed: 2004-05-13T08:21:40Z
polling_interval: 5s
key_exchange:
  methods: [3DES-SHA1-14, DES-MD5-1]
  lifetime: 8h
  sessions: 0
  master_key_pfs: true
rules:
  - name: secure web
    filter_list: &web
      name: web
      filters:
        - {name: http, source: me, destination: 10.0.0.0/24, protocol: tcp, destination_port: 80}
        - {name: dns, source: any, destination: dc.lab.test, protocol: udp, source_port: 53, mirrored: false}
    filter_action:
      name: require
      action: negotiate
      pfs: true
      security_methods: ["ESP[3DES,SHA1]:50000k/600s", "AH[MD5]+ESP[DES,None]"]
    authentication: [{psk: s3cret}, {certificate: CN=Lab Root CA}, kerberos]
  - name: block web elsewhere
    filter_list: *web
    filter_action: {name: block, action: block}
    connection_type: lan
    active: false
  - name: to branch
    filter_list:
      name: lan to branch
      filters: [{source: 10.1.0.0/16, destination: 10.2.0.0/16, mirrored: false}]
    filter_action: {name: tunnel, action: negotiate, security_methods: ["ESP[3DES,SHA1]"]}
    authentication: [{psk: branch}]
    tunnel: 192.0.2.2
default_response_rule:
  authentication: [{psk: s3cret}]
"""


def fail(text: str, source: str = "p.yaml") -> str:
    with pytest.raises(PolicyError) as e:
        policyfile.loads(text, source)
    return str(e.value)


def test_every_field_is_read():
    p = policyfile.loads(WEB)
    assert p.guid == uuid.UUID("298d1349-9106-4074-80e8-0ab25a82fedc")
    assert p.when_changed == 0x40A33014  # the documents' whenChanged of this policy, 40a33014
    assert p.polling_interval == 5
    assert p.key_exchange.methods == (MainModeMethod("3des-cbc", "sha1", 14),
                                      MainModeMethod("des-cbc", "md5", 1))
    assert (p.key_exchange.lifetime_seconds, p.key_exchange.master_key_pfs) == (28800, True)
    web, blocked, branch = p.rules
    http, dns = web.filter_list.filters
    assert http.source.kind is EndpointKind.ME and http.destination.network == IPv4Network("10.0.0.0/24")
    assert (http.protocol, http.source_port, http.destination_port, http.mirrored) == (6, None, 80, True)
    assert dns.destination == Endpoint(EndpointKind.DNS, dns_name="dc.lab.test")
    assert (dns.protocol, dns.source_port, dns.mirrored) == (17, 53, False)
    action = web.filter_action
    assert action.action is spd.Action.NEGOTIATE and action.pfs
    assert action.security_methods[0] == spd.SecurityMethod("3des-cbc", "hmac-sha1-96", None, 600, 50000)
    assert action.security_methods[1] == spd.SecurityMethod("des-cbc", None, "hmac-md5-96", 3600, 100000)
    assert [a.kind for a in web.authentication] == ["psk", "certificate", "kerberos"]
    assert (web.authentication[0].psk, web.authentication[1].ca) == ("s3cret", "CN=Lab Root CA")
    assert blocked.filter_list is web.filter_list  # a YAML alias is one shared object
    assert (blocked.active, blocked.connection_type) == (False, model.ConnectionType.LAN)
    assert branch.tunnel == IPv4Address("192.0.2.2") and web.tunnel is None
    assert p.default_response.security_methods == model.DEFAULT_RESPONSE_METHODS


def test_round_trip_keeps_identities_stamps_and_sharing():
    p = policyfile.loads(WEB)
    text = policyfile.dumps(p)
    assert policyfile.loads(text) == p
    assert text.count("name: web\n") == 1  # the shared filter list is written once, then referenced


def test_missing_guids_are_derived_and_stable():
    first, second = policyfile.loads(WEB), policyfile.loads(WEB)
    assert first.rules[0].guid == second.rules[0].guid
    assert len({first.guid, first.rules[0].guid, first.rules[2].guid, first.key_exchange.guid}) == 4
    assert first.rules[0].when_changed == first.when_changed  # parts without a stamp take the policy's


@pytest.mark.parametrize(("text", "expected"), [
    ("10.0.0.1", Endpoint(EndpointKind.ADDRESS, IPv4Network("10.0.0.1/32"))),
    ("10.0.0.1/32", Endpoint(EndpointKind.SUBNET, IPv4Network("10.0.0.1/32"))),
    ("ME", model.ME),
    ("any", model.ANY),
    ("Server-1.lab.test.", Endpoint(EndpointKind.DNS, dns_name="server-1.lab.test")),
])
def test_endpoints(text, expected):
    assert Endpoint.parse(text) == expected


@pytest.mark.parametrize("text", ["my ip", "10.0.0.300", "10.0.0.1/24", "-bad.lab", "10.0.0.0/33", ""])
def test_bad_endpoints_are_refused(text):
    with pytest.raises(ValueError):
        Endpoint.parse(text)


@pytest.mark.parametrize("text", ["ESP[3DES]", "ESP[None,None]", "AH[3DES]", "ESP[DES,MD5]+ESP[DES,MD5]",
                                  "ESP[DES,MD5]:abc", "GRE[X]"])
def test_bad_security_methods_are_refused(text):
    with pytest.raises(ValueError):
        parse_security_method(text)


def test_security_methods_format_back_as_netsh_writes_them():
    for text in ("ESP[3DES,SHA1]:100000k/3600s", "AH[MD5]+ESP[DES,None]:1000k/60s", "AH[SHA1]:100000k/300s"):
        assert model.format_security_method(parse_security_method(text)) == text


def test_error_names_file_line_and_field():
    text = WEB.replace("destination: 10.0.0.0/24", "destination: my ip")
    assert fail(text, "policies/web.yaml") == (
        "policies/web.yaml:15: rules[0].filter_list.filters[0].destination: "
        "'my ip' is not an address, subnet, 'me', 'any' or DNS name")


@pytest.mark.parametrize(("old", "new", "expected"), [
    ("  lifetime: 8h", "  lifetime: 480", "p.yaml:7: key_exchange.lifetime: 480 is not a duration"),
    ("    connection_type: lan", "    connection_type: dialup",
     "p.yaml:26: rules[1].connection_type: 'dialup' is not all, lan or remote_access"),
    ("      pfs: true", "      pfs: yes please",
     "p.yaml:20: rules[0].filter_action.pfs: 'yes please' is not true"),
    ("    tunnel: 192.0.2.2", "    tunnel: gw.lab",
     "p.yaml:34: rules[2].tunnel: 'gw.lab' is not the IPv4 address"),
    ("    filter_action: {name: block, action: block}", "    filter_action: {name: block, action: deny}",
     "p.yaml:25: rules[1].filter_action.action: 'deny' is not permit, block or negotiate"),
    ("  methods: [3DES-SHA1-14, DES-MD5-1]", "  methods: [3DES-SHA1-5]",
     "p.yaml:6: key_exchange.methods[0]: '3DES-SHA1-5': '5' is not a Diffie-Hellman group; write "
     "<DES|3DES|AES128|AES192|AES256>-<SHA1|MD5>-<1|2|14>"),
    ("    active: false", "    actve: false", "p.yaml:27: rules[1].actve: unknown field"),
    ("{psk: s3cret}, {cert", "{psk: s3cret, certificate: x}, {cert",
     "p.yaml:22: rules[0].authentication[0]: write kerberos"),
    ("name: Web servers\n", "", "p.yaml:1: name: missing field"),
    ("  - name: to branch\n", "  - nom: to branch\n", "p.yaml:28: rules[2].nom: unknown field"),
])
def test_structural_errors(old, new, expected):
    assert old in WEB
    assert fail(WEB.replace(old, new)).startswith(expected)


@pytest.mark.parametrize(("old", "new", "expected"), [
    ("destination_port: 80}", "destination_port: 80, protocol: icmp}", "given twice"),
    ("protocol: tcp, destination_port: 80", "protocol: icmp, destination_port: 80",
     "p.yaml:15: rules[0].filter_list.filters[0].protocol: ports need protocol tcp or udp"),
    ("10.2.0.0/16, mirrored: false}", "10.2.0.0/16}",
     "p.yaml:31: rules[2].filter_list.filters[0].mirrored: filters of a tunnel rule cannot be mirrored"),
    ("    authentication: [{psk: branch}]\n", "",
     "p.yaml:28: rules[2].authentication: negotiating security needs at least one authentication method"),
    ("{psk: branch}", "{psk: ''}", "p.yaml:33: rules[2].authentication[0].psk: the pre-shared key is empty"),
    ("  - name: to branch", "  - name: secure web",
     "p.yaml:28: rules[2].name: 'secure web' is already the name"),
    ("{name: block, action: block}", "{name: block, action: block, security_methods: ['AH[MD5]']}",
     "p.yaml:25: rules[1].filter_action.security_methods: only negotiate uses security methods, not block"),
    ("      action: negotiate\n      pfs: true\n", "      action: permit\n      pfs: true\n",
     "p.yaml:20: rules[0].filter_action.pfs: only negotiate uses pfs, not permit"),
])
def test_validation_errors_have_lines(old, new, expected):
    assert old in WEB
    assert expected in fail(WEB.replace(old, new))


def test_every_problem_is_reported_at_once():
    text = WEB.replace("{psk: branch}", "{psk: ''}").replace("10.2.0.0/16, mirrored: false}", "10.2.0.0/16}")
    assert len(fail(text).splitlines()) == 2


def test_a_guid_used_by_two_different_objects_is_refused():
    text = WEB.replace("      name: lan to branch\n",
                       "      name: lan to branch\n      guid: 298d1349-9106-4074-80e8-0ab25a82fedc\n")
    expected = "rules[2].filter_list.guid: 298d1349-9106-4074-80e8-0ab25a82fedc is already the GUID of the p"
    assert expected in fail(text)


def test_not_yaml_and_empty_files_are_refused_with_their_line():
    assert fail("name: [unclosed\nrules: []\n").startswith("p.yaml:2: not valid YAML")
    assert fail("") == "p.yaml: the file is empty"
    assert fail("- a list\n") == "p.yaml:1: must be a mapping"


def test_load_names_a_missing_file(tmp_path):
    with pytest.raises(PolicyError, match=r"nothere\.yaml: cannot read"):
        policyfile.load(tmp_path / "nothere.yaml")


def test_hidden_keys_are_hidden():
    text = policyfile.dumps(policyfile.loads(WEB), hide_keys=True)
    assert "s3cret" not in text and "branch}" not in text and "********" in text


def test_the_documented_example_loads():
    doc = (Path(__file__).parents[2] / "docs" / "policy.md").read_text()
    example = doc.split("```yaml\n", 1)[1].split("```", 1)[0]
    rules = policyfile.loads(example, "docs/policy.md").rules
    assert [r.name for r in rules] == ["block telnet", "secure host-b"]


@pytest.mark.parametrize("value,message", [
    ("!!python/name:os.system ''", "the tag tag:yaml.org,2002:python/name:os.system is not allowed"),
    ("!!timestamp soon", "'soon' is not a valid timestamp"),
    ("!!bool maybe", "'maybe' is not a valid bool"),
])
def test_yaml_tags_are_refused_with_file_line_and_field(value, message):
    """A constructor error escaped as a YAML exception, or as AttributeError/KeyError from PyYAML."""
    with pytest.raises(PolicyError, match=rf"p\.yaml:1: name: {re.escape(message)}"):
        policyfile.loads(f"name: {value}\nrules: []", "p.yaml")


def test_a_guid_that_is_a_number_is_refused_with_its_field():
    with pytest.raises(PolicyError, match=r"p\.yaml:2: guid: 123 is not a GUID"):
        policyfile.loads("name: p\nguid: 123", "p.yaml")


@pytest.mark.timeout(20)
def test_an_alias_bomb_as_a_field_name_is_refused_at_once():
    """str() of the key walked 9**8 nodes: the Policy Agent hung."""
    bomb = "[&k1 [" + ", ".join(["lol"] * 9) + "], " + ", ".join(
        f"&k{i + 1} [{', '.join([f'*k{i}'] * 9)}]" for i in range(1, 9)) + "]"
    with pytest.raises(PolicyError, match=r"p\.yaml:2: a field name must be a single word"):
        policyfile.loads(f"name: p\n{bomb}: 1", "p.yaml")


@pytest.mark.parametrize("depth, why", [(20, "collections nested deeper than 16"),
                                        (3000, "exceeded maximum nesting depth")])  # libyaml's own bound
def test_deep_nesting_is_refused_as_yaml_not_a_recursion_error(depth, why):
    with pytest.raises(PolicyError, match=rf"p\.yaml:2: not valid YAML: {why}"):
        policyfile.loads("name: p\nrules: " + "[" * depth + "]" * depth, "p.yaml")


def test_a_file_that_is_not_utf8_names_its_line_and_column(tmp_path):
    path = tmp_path / "p.yaml"
    path.write_bytes(b"name: p\ndescription: caf\xe9\n")
    with pytest.raises(PolicyError, match=r"p\.yaml:2: not UTF-8 text: byte 0xe9 at column 17"):
        policyfile.load(path)


@pytest.mark.parametrize("stamp", ["99999999999999", "-5", "0001-01-01T00:00:00Z"])
def test_a_change_stamp_beyond_what_a_time_can_show_is_refused(stamp):
    """It loaded, then the agent's message about it raised OverflowError and ended its polling."""
    with pytest.raises(PolicyError, match=r"p\.yaml:2: when_changed: .* is not a time between 1970 and 9999"):
        policyfile.loads(f"name: p\nwhen_changed: {stamp}", "p.yaml")


# Six mistakes of six kinds, one per line: a misspelt field, an address, an action, an algorithm, a quick mode
# lifetime Windows refuses and ports on ICMP (a check across fields).
SIX_MISTAKES = """\
name: six mistakes
rules:
  - name: one
    filter_list:
      name: l
      filters:
        - {source: me, destinaton: 10.0.0.2}
        - {source: my ip, destination: 10.0.0.3}
        - {source: me, destination: 10.0.0.4, protocol: icmp, destination_port: 23}
    filter_action: {name: a, action: negociate, security_methods: ["ESP[AES129,SHA1]", "ESP[3DES,SHA1]:10s"]}
    authentication: [kerbros]
"""


def test_every_problem_of_a_file_in_one_run_in_line_order():
    lines = fail(SIX_MISTAKES).splitlines()
    assert lines == [
        "p.yaml:7: rules[0].filter_list.filters[0].destinaton: unknown field (did you mean 'destination'?); "
        "expected one of: name, description, source, destination, protocol, source_port, destination_port, "
        "mirrored",
        "p.yaml:7: rules[0].filter_list.filters[0].destination: missing field",
        "p.yaml:8: rules[0].filter_list.filters[1].source: 'my ip' is not an address, subnet, 'me', 'any' or "
        "DNS name",
        "p.yaml:9: rules[0].filter_list.filters[2].protocol: ports need protocol tcp or udp",
        "p.yaml:10: rules[0].filter_action.action: 'negociate' is not permit, block or negotiate "
        "(did you mean 'negotiate'?)",
        "p.yaml:10: rules[0].filter_action.security_methods[0]: 'ESP[AES129,SHA1]': 'AES129' is not an ESP "
        "cipher (did you mean 'AES128'?); known: None|DES|3DES|AES128|AES192|AES256|AES-GCM128|AES-GCM256",
        "p.yaml:10: rules[0].filter_action.security_methods[1]: a lifetime of 10 s is outside Windows' range "
        "300..172800 s",
        "p.yaml:11: rules[0].authentication[0]: 'kerbros' is not an authentication method "
        "(did you mean 'kerberos'?); write kerberos, {psk: <key>} or {certificate: <CA name>}",
    ]


def test_a_value_that_could_not_be_read_raises_no_second_guess_about_its_part():
    # 'deny' stands in as permit: the checks of permit (no security methods, no PFS) would only mislead
    text = WEB.replace("      action: negotiate\n      pfs: true\n", "      action: deny\n      pfs: true\n")
    assert fail(text).splitlines() == [
        "p.yaml:19: rules[0].filter_action.action: 'deny' is not permit, block or negotiate"]


@pytest.mark.parametrize(("lifetime", "expected"), [
    ("100000k/99999999s", "a lifetime of 99999999 s is outside Windows' range 300..172800 s"),
    ("0k/3600s", "a lifetime of 0 KB is outside Windows' range 20480..2147483647 KB"),
    ("10s", "a lifetime of 10 s is outside Windows' range 300..172800 s"),
    ("20479k", "a lifetime of 20479 KB is outside Windows' range 20480..2147483647 KB"),
    ("2147483648k", "a lifetime of 2147483648 KB is outside Windows' range 20480..2147483647 KB"),
    ("172801s", "a lifetime of 172801 s is outside Windows' range 300..172800 s"),
])
def test_quick_mode_lifetimes_outside_windows_ranges_are_refused(lifetime, expected):
    text = WEB.replace('"ESP[3DES,SHA1]:50000k/600s"', f'"ESP[3DES,SHA1]:{lifetime}"')
    assert fail(text) == f"p.yaml:21: rules[0].filter_action.security_methods[0]: {expected}"


def test_quick_mode_lifetimes_at_windows_limits_are_taken():
    for lifetime in ("20480k/300s", "2147483647k/172800s"):
        policyfile.loads(WEB.replace('"ESP[3DES,SHA1]:50000k/600s"', f'"ESP[3DES,SHA1]:{lifetime}"'))


def test_default_response_methods_and_key_exchange_are_held_to_windows_ranges_too():
    text = WEB.replace("  authentication: [{psk: s3cret}]\n",
                       '  authentication: [{psk: s3cret}]\n  security_methods: ["AH[MD5]:60s"]\n', 1)
    text = text.replace("  lifetime: 8h", "  lifetime: 49h").replace("  sessions: 0", "  sessions: -1")
    assert fail(text).splitlines() == [
        "p.yaml:7: key_exchange.lifetime: the master key lifetime is between 5min and 48h (Windows' range), "
        "not 176400 s",
        "p.yaml:8: key_exchange.sessions: must be 0 (unlimited) .. 2147483647, not -1",
        "p.yaml:37: default_response_rule.security_methods[0]: a lifetime of 60 s is outside Windows' range "
        "300..172800 s",
    ]


def test_algorithm_messages_list_what_the_algorithm_table_has():
    from ipsecd import algorithms

    message = fail(WEB.replace('"AH[MD5]+ESP[DES,None]"', '"ESP[RC4,SHA1]"'))
    known = message.split("known: ")[1].split("|")
    assert known == [e.windows.replace("NONE", "None") for e in algorithms.ENCRYPTIONS.values()]
    message = fail(WEB.replace('"AH[MD5]+ESP[DES,None]"', '"AH[SHA384]"'))
    assert message.split("known: ")[1].split("|") == [i.windows for i in algorithms.INTEGRITIES.values()]
    for e in algorithms.ENCRYPTIONS.values():  # and every word listed is taken
        if e.name != "null":
            integrity = "None" if e.aead else "SHA1"
            policyfile.loads(WEB.replace('"AH[MD5]+ESP[DES,None]"', f'"ESP[{e.windows},{integrity}]"'))


@pytest.mark.parametrize(("old", "new", "suggestion"), [
    ("protocol: tcp", "protocol: tpc", "(did you mean 'tcp'?)"),
    ("    connection_type: lan", "    connection_type: lna", "(did you mean 'lan'?)"),
    ("3DES-SHA1-14, DES-MD5-1", "3DES-SHA1-14, DES-MD6-1", "(did you mean 'MD5'?)"),
    ("polling_interval: 5s", "poling_interval: 5s", "(did you mean 'polling_interval'?)"),
    ("    tunnel: 192.0.2.2", "    tunel: 192.0.2.2", "(did you mean 'tunnel'?)"),
])
def test_close_matches_are_suggested_for_unknown_names(old, new, suggestion):
    assert old in WEB
    assert suggestion in fail(WEB.replace(old, new))
