"""The node configuration file: good files load, every bad value is refused with file, line and field."""

from ipaddress import IPv4Address

import pytest

from ipsecd.config import ConfigError, load, parse
from ipsecd.driver.spd import Action, Direction

GOOD = """\
driver: {tun: ipsec0, mtu: 1400}
filters:
  - {name: a-b, source: 10.0.0.1, destination: 10.0.0.2, action: secure}
  - {name: web, source: 10.0.0.1, destination: 10.0.0.0/24, protocol: tcp, destination_port: 80,
     action: permit}
  - {name: site, source: 10.1.0.0/24, destination: 10.2.0.0/24, tunnel: 198.51.100.2, action: secure}
actions:
  secure:
    action: negotiate
    accept_unsecured: true
    methods: [{esp_encryption: aes-gcm-128, esp_integrity: null}]
sas:
  - spi: 0x1001
    protocol: esp
    direction: outbound
    source: 10.0.0.1
    destination: 10.0.0.2
    encryption: aes-cbc-128
    enc_key: "00112233445566778899aabbccddeeff"
    integrity: hmac-sha1-96
    auth_key: "0x0102030405060708090a0b0c0d0e0f1011121314"
    filter: a-b
  - {spi: 0x2001, protocol: esp, direction: outbound, mode: tunnel, source: 198.51.100.1,
     destination: 198.51.100.2, encryption: 3des-cbc, enc_key: "KEY3DES", integrity: hmac-md5-96,
     auth_key: "KEYMD5", filter: site, udp_encap: {sport: 4500, dport: 4500}, lifetime_kb: 1000}
""".replace("KEY3DES", "ab" * 24).replace("KEYMD5", "cd" * 16)


def test_a_good_file_loads_filters_actions_and_sas():
    cfg = parse(GOOD)
    assert [f.name for f in cfg.spd.filters] == ["a-b", "a-b", "web", "web", "site", "site"]
    web = cfg.spd.filters[2]
    assert (web.protocol, web.dst_port, web.action.action) == (6, 80, Action.PERMIT)
    a_b = [f for f in cfg.spd.filters if f.name == "a-b"]
    assert {f.direction for f in a_b} == {Direction.OUTBOUND, Direction.INBOUND}
    assert a_b[0].action.accept_unsecured
    first, tunnel = cfg.sas
    assert (first.spi, first.mode, first.enc_key.hex(), len(first.auth_key)) == (
        0x1001, "transport", "00112233445566778899aabbccddeeff", 20)
    assert (tunnel.mode, tunnel.destination, tunnel.udp_encap, tunnel.lifetime_kb) == (
        "tunnel", IPv4Address("198.51.100.2"), (4500, 4500), 1000)


def bad(text_old: str, text_new: str) -> str:
    assert text_old in GOOD
    with pytest.raises(ConfigError) as info:
        parse(GOOD.replace(text_old, text_new, 1))
    return str(info.value)


@pytest.mark.parametrize(("old", "new", "message"), [
    ('"00112233445566778899aabbccddeeff"', '"00112233445566778899aabbccddee0"',
     "ipsecd.yaml:19: sas[0].enc_key: expected 16 bytes of hex for aes-cbc-128, got 15.5"),
    ('"00112233445566778899aabbccddeeff"', '"00112233445566778899aabbccddee"',
     "ipsecd.yaml:19: sas[0].enc_key: expected 16 bytes of hex for aes-cbc-128, got 15"),
    ("encryption: aes-cbc-128", "encryption: rot13",
     "ipsecd.yaml:18: sas[0].encryption: unknown encryption algorithm 'rot13'"),
    ("spi: 0x1001", "spi: 7", "ipsecd.yaml:13: sas[0].spi: SPI 7 is reserved"),
    ("filter: a-b", "filter: nope", "ipsecd.yaml:22: sas[0].filter: no filter named 'nope'"),
    ("direction: outbound\n", "direction: sideways\n",
     "ipsecd.yaml:15: sas[0].direction: expected inbound or outbound"),
    ("source: 10.0.0.1\n", "source: 10.0.0.300\n", "ipsecd.yaml:16: sas[0].source:"),
    ("destination: 10.0.0.0/24", "destination: 10.0.0.1/24", "ipsecd.yaml:4: filters[1].destination:"),
    ("protocol: tcp", "protocol: tcpp", "ipsecd.yaml:4: filters[1].protocol: 'tcpp' is not 'any'"),
    ("destination_port: 80", "destination_port: 70000", "destination_port: 70000 is not 'any' or a port"),
    ("action: permit", "action: allow", "filters[1].action: no filter action 'allow'; known: permit, block"),
    ("mtu: 1400", "mtu: big", "ipsecd.yaml:1: driver.mtu: expected int, got 'big'"),
    ("accept_unsecured: true", "accept_unsecured: maybe", "actions.secure.accept_unsecured: expected true"),
    ("esp_encryption: aes-gcm-128", "esp_encryption: aes-gcm-100",
     "actions.secure.methods[0].esp_encryption"),
    ("protocol: esp\n", "protocol: ah\n", "sas[0].encryption: AH does not encrypt"),
    ("mode: tunnel", "mode: transport", "sas[1].mode: filter 'site' is a tunnel filter"),
    ("destination: 198.51.100.2, encryption", "destination: 198.51.100.9, encryption",
     "sas[1].destination: the tunnel endpoint of filter 'site' is 198.51.100.2"),
    ("enc_key: \"00112233445566778899aabbccddeeff\"", "enc_key: 12345",
     "sas[0].enc_key: expected a quoted string of hex digits"),
    ("    filter: a-b\n", "    filter: a-b\n    colour: blue\n", "sas[0].colour: unknown field"),
])
def test_bad_values_are_refused_naming_file_line_and_field(old, new, message):
    assert message in bad(old, new)


def test_gcm_with_a_separate_integrity_algorithm_is_refused():
    text = GOOD.replace("encryption: aes-cbc-128", "encryption: aes-gcm-128").replace(
        '"00112233445566778899aabbccddeeff"', '"' + "11" * 20 + '"')
    with pytest.raises(ConfigError, match=r"sas\[0\].integrity: aes-gcm-128 authenticates itself"):
        parse(text)


def test_duplicate_sa_is_refused():
    extra = GOOD + """  - {spi: 0x1001, protocol: esp, direction: outbound, source: 10.0.0.1,
     destination: 10.0.0.2, encryption: null, integrity: hmac-sha1-96, auth_key: "KEY", filter: a-b}
""".replace("KEY", "11" * 20)
    with pytest.raises(ConfigError, match=r"sas\[2\].spi: same SPI, destination and protocol as sas\[0\]"):
        parse(extra)


def test_broken_yaml_names_the_line():
    with pytest.raises(ConfigError, match=r"^node.yaml:3: not valid YAML"):
        parse("filters:\n  - {name: x\n", "node.yaml")


def test_a_missing_file_is_named(tmp_path):
    with pytest.raises(ConfigError, match=r"nope\.yaml: cannot read"):
        load(tmp_path / "nope.yaml")


def test_empty_file_is_an_empty_policy():
    cfg = parse("")
    assert len(cfg.spd) == 0 and cfg.sas == ()


@pytest.mark.parametrize(("spelling", "number"), [("tcp", 6), ("UDP", 17), ("egp", 8), (50, 50), ("51", 51)])
def test_manual_filters_take_the_protocols_policy_filters_take(spelling, number):
    from ipsecd.policy.model import parse_protocol

    text = GOOD.replace("protocol: tcp, destination_port: 80,", f"protocol: {spelling},", 1)
    web = next(f for f in parse(text, "ipsecd.yaml").spd.filters if f.name == "web")
    assert web.protocol == parse_protocol(spelling) == number
