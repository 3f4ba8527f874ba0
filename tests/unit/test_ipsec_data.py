"""The ipsecData codec against Windows' own blobs (Samba's provisioned default policies), and the mapping
between directory objects and the policy model."""

import base64
import dataclasses
import random
import re
import struct
import uuid
from ipaddress import IPv4Address
from pathlib import Path

import pytest

from ipsecd.driver import spd
from ipsecd.policy import ipsec_data as wire
from ipsecd.policy import policyfile
from ipsecd.policy.directory_model import (
    DirectoryError,
    DirectoryObject,
    format_generalized_time,
    object_dn,
    policy_from_objects,
    policy_to_objects,
)
from ipsecd.policy.model import ANY, ME, AuthKind, AuthMethod, MainModeMethod, parse_security_method
from ipsecd.policy.predefined import all_predefined, predefined

ROOT = Path(__file__).resolve().parents[2]
LDIF = ROOT / "tests/vectors/samba-ipsec/provision-ipsec.ldif"
DOMAIN = "DC=lab,DC=test"
CONTAINER = f"CN=IP Security,CN=System,{DOMAIN}"


def load_ldif() -> list[DirectoryObject]:
    """Samba's IP Security objects (the container itself is not an IPsec object and is left out)."""
    text = re.sub(r"\n ", "", LDIF.read_text()).replace("${DOMAINDN}", DOMAIN)
    objects = []
    for block in text.split("\n\n"):
        attrs: dict[str, list[str | bytes]] = {}
        for line in block.splitlines():
            if line.startswith("#") or ":" not in line:
                continue
            name, _, value = line.partition(":")
            attrs.setdefault(name, []).append(base64.b64decode(value[2:]) if value.startswith(":")
                                              else value.strip())
        if "ipsecData" in attrs:
            objects.append(DirectoryObject.from_ldap(str(attrs.pop("dn")[0]), attrs))
    return objects


SAMBA = load_ldif()
BLOBS = [pytest.param(o.object_class, o.data, id=f"{o.object_class}{o.guid}") for o in SAMBA]
POLICIES = {"Server (Request Security)": "72385230", "Client (Respond Only)": "72385236",
            "Secure Server (Require Security)": "7238523c"}


def policy_dn(prefix: str) -> str:
    return object_dn("ipsecPolicy", next(o.guid for o in SAMBA if str(o.guid).startswith(prefix)), CONTAINER)


def samba_policy(name: str):
    return policy_from_objects(SAMBA, policy_dn(POLICIES[name]))


def test_the_vectors_hold_every_class():
    counts = {c: sum(o.object_class == c for o in SAMBA) for c in wire.CLASS_RECORDS}
    assert counts == {"ipsecPolicy": 3, "ipsecISAKMPPolicy": 3, "ipsecNFA": 8, "ipsecFilter": 2,
                      "ipsecNegotiationPolicy": 6}
    assert {o.data_type for o in SAMBA} == {598}


@pytest.mark.parametrize(("object_class", "blob"), BLOBS)
def test_every_samba_blob_decodes_and_reencodes_byte_for_byte(object_class, blob):
    data = wire.IpsecData.decode(blob, object_class)
    assert data.encode() == blob
    record = wire.decode(object_class, blob)
    assert isinstance(record, wire.CLASS_RECORDS[object_class])
    if len(data.records) == 1:
        assert wire.encode(record) == blob
        assert record.extension == b""  # every field of Windows 2000's records is known


def test_version_object_keeps_its_unknown_record():
    version = next(o for o in SAMBA if o.name == "Version Information Object")
    data = wire.IpsecData.decode(version.data, version.dn)
    assert [type(r).__name__ for r in data.records] == ["OpaqueRecord", "NfaData"]
    assert data.records[0].kind == wire.VERSION_RECORD == version.guid
    assert "Windows 2000".encode("utf-16-le") in data.records[0].body


def test_fields_decoded_by_hand_from_the_bytes():
    """Offsets read off a hex dump of two blobs, independently of the codec's field lists."""
    icmp = next(o.data for o in SAMBA if o.name == "All ICMP Traffic")
    assert uuid.UUID(bytes_le=icmp[0:16]) == uuid.UUID("80dc20b5-2ec8-11d1-a89e-00a0248d3021")
    assert struct.unpack_from("<3IH", icmp, 16) == (82, 1, 2, 0)  # length, 1 filter, empty source DNS name
    assert struct.unpack_from("<I", icmp, 36)[0] == 10 and icmp[40:50] == "ICMP\0".encode("utf-16-le")
    assert struct.unpack_from("<I5I", icmp, 66) == (1, 0, 0xFFFFFFFF, 0, 0, 0)  # mirrored, me -> any
    assert struct.unpack_from("<I", icmp, 90)[0] == 1 and icmp[-1:] == b"\0"  # ICMP; terminator
    filt = wire.decode("ipsecFilter", icmp)
    entry = filt.entries[0]
    assert (entry.description, entry.mirrored, entry.protocol) == ("ICMP", 1, 1)
    assert (entry.source_mask, entry.destination_mask) == (IPv4Address("255.255.255.255"), IPv4Address(0))

    request = next(o.data for o in SAMBA if o.name == "Request Security (Optional)")
    offers = struct.unpack_from("<I", request, 20)[0]
    rows = [struct.unpack_from("<5I3I", request, 24 + 80 * i) for i in range(offers)]
    # lifetime s, KB, 0, PFS, operations; then cipher/integrity, integrity, protocol (2 ESP, 1 AH)
    assert rows == [
        (900, 100000, 0, 0, 1, 3, 2, 2), (900, 100000, 0, 0, 1, 1, 2, 2), (300, 100000, 0, 0, 1, 2, 0, 1),
        (300, 100000, 0, 0, 1, 1, 0, 1), (0, 0, 0, 0, 0, 1, 1, 2)]  # the last: no operation (stale bytes)
    decoded = wire.decode("ipsecNegotiationPolicy", request).offers
    assert [(o.lifetime_seconds, len(o.operations)) for o in decoded] == [(r[0], r[4]) for r in rows]


def test_server_request_security_as_windows_shows_it():
    server = samba_policy("Server (Request Security)")
    assert server.name == "Server (Request Security)" and server.polling_interval == 180 * 60
    assert server.key_exchange.methods == tuple(MainModeMethod.parse(m) for m in
                                                ("3DES-SHA1-2", "3DES-MD5-2", "DES-SHA1-1", "DES-MD5-1"))
    assert server.key_exchange.lifetime_seconds == 480 * 60 and server.key_exchange.sessions == 0
    shown = {(r.filter_list.name, r.filter_action.name, tuple(a.kind for a in r.authentication), r.tunnel)
             for r in server.rules}
    assert shown == {("All IP Traffic", "Request Security (Optional)", (AuthKind.KERBEROS,), None),
                     ("All ICMP Traffic", "Permit", (AuthKind.KERBEROS,), None)}
    request = server.rule("Request Security (Optional) Rule").filter_action
    assert request.action is spd.Action.NEGOTIATE and request.accept_unsecured and request.fallback_to_clear
    assert [m.describe() for m in request.security_methods] == [
        "ESP 3des-cbc/hmac-sha1-96, 900 s/100000 KB", "ESP des-cbc/hmac-sha1-96, 900 s/100000 KB",
        "AH hmac-sha1-96, 300 s/100000 KB", "AH hmac-md5-96, 300 s/100000 KB"]
    icmp = server.rule("Permit unsecure ICMP packets to pass through.")
    assert icmp.filter_action.action is spd.Action.PERMIT
    assert [(f.source, f.destination, f.protocol, f.mirrored) for f in icmp.filter_list.filters] == [
        (ME, ANY, 1, True)]
    assert server.default_response
    assert server.default_response.authentication == (AuthMethod(AuthKind.KERBEROS),)


def test_secure_server_requires_security_with_kerberos():
    secure = samba_policy("Secure Server (Require Security)")
    require = secure.rule("Require Security")
    assert require.filter_list.name == "All IP Traffic"
    assert [(f.source, f.destination, f.protocol) for f in require.filter_list.filters] == [(ME, ANY, None)]
    action = require.filter_action
    assert action.name == "Require Security" and action.action is spd.Action.NEGOTIATE
    assert action.accept_unsecured and not action.fallback_to_clear
    assert all(m.uses_esp and m.lifetime_seconds == 900 for m in action.security_methods)
    assert require.authentication == (AuthMethod(AuthKind.KERBEROS),)


def test_client_respond_only_has_just_the_default_response_rule():
    client = samba_policy("Client (Respond Only)")
    assert client.rules == () and client.default_response is not None
    assert client.default_response.security_methods == tuple(parse_security_method(m) for m in (
        "ESP[3DES,SHA1]", "ESP[3DES,MD5]", "ESP[DES,SHA1]", "ESP[DES,MD5]", "AH[SHA1]", "AH[MD5]"))


@pytest.mark.parametrize("name", POLICIES)
def test_the_predefined_policies_are_the_directory_defaults(name):
    """predefined-policies/*.yaml say they hold these objects' settings: the filter actions, key exchange
    and default response rule must agree (rule and filter names are the files' own; their descriptions are
    folded YAML, which loses Windows' double spaces)."""
    ours, theirs = predefined(name), samba_policy(name)

    def unstamped(part):
        part = dataclasses.replace(part, when_changed=0)
        if hasattr(part, "description"):
            part = dataclasses.replace(part, description=" ".join(part.description.split()))
        return part

    assert ours.guid == theirs.guid and ours.polling_interval == theirs.polling_interval
    assert unstamped(ours.key_exchange) == unstamped(theirs.key_exchange)
    assert unstamped(ours.default_response) == unstamped(theirs.default_response)
    by_guid = {r.guid: r for r in theirs.rules}
    assert set(by_guid) == {r.guid for r in ours.rules}
    for rule in ours.rules:
        assert unstamped(rule.filter_action) == unstamped(by_guid[rule.guid].filter_action)
        assert rule.filter_list.guid == by_guid[rule.guid].filter_list.guid


OWN = [pytest.param(p, id=p.name) for p in all_predefined()] + [
    pytest.param(policyfile.load(path), id=path.name) for path in sorted((ROOT / "policies").glob("*.yaml"))]


@pytest.mark.parametrize("policy", OWN)
def test_own_policies_round_trip_through_directory_objects(policy):
    objects = policy_to_objects(policy, CONTAINER)
    assert policy_to_objects(policy, CONTAINER) == objects  # the same bytes every time
    from_ldap = [DirectoryObject.from_ldap(o.dn, {**o.to_ldap(), **_stamp(o)}) for o in objects]
    for obj in from_ldap:
        record = wire.decode(obj.object_class, obj.data, obj.dn)
        assert wire.encode(record) == obj.data
    assert policy_from_objects(from_ldap, objects[-1].dn) == policy


def _stamp(obj: DirectoryObject) -> dict[str, list[str]]:
    """The whenChanged the directory would have set."""
    return {"whenChanged": [format_generalized_time(obj.when_changed)]} if obj.when_changed else {}


def test_authentication_methods_and_tunnel_round_trip():
    base = predefined("server")
    auth = (AuthMethod(AuthKind.CERTIFICATE, ca="CN=Lab Root CA,DC=lab,DC=test"),
            AuthMethod(AuthKind.PRESHARED_KEY, psk="s3cret ünïcode"), AuthMethod(AuthKind.KERBEROS))
    rule = dataclasses.replace(base.rules[0], authentication=auth, tunnel=IPv4Address("198.51.100.2"),
                               active=False)
    policy = dataclasses.replace(base, rules=(rule,))
    objects = policy_to_objects(policy, CONTAINER)
    back = policy_from_objects(objects, objects[-1].dn)
    assert back.rules[0].authentication == auth and back.rules[0].tunnel == IPv4Address("198.51.100.2")
    assert not back.rules[0].active
    nfa = wire.decode("ipsecNFA", next(o.data for o in objects if o.guid == rule.guid))
    assert [a.method for a in nfa.auth_methods] == [3, 1, 5]
    assert nfa.tunnel_address.packed == bytes([198, 51, 100, 2])


def test_aes_cannot_be_stored_in_the_windows_format():
    base = predefined("secure server")
    action = dataclasses.replace(base.rules[0].filter_action,
                                 security_methods=(parse_security_method("ESP[AES128,SHA1]"),))
    policy = dataclasses.replace(base, rules=(dataclasses.replace(base.rules[0], filter_action=action),))
    with pytest.raises(DirectoryError, match=r"ipsecNegotiationPolicy\{7238523F.*offers\[0\].*DES and 3DES"):
        policy_to_objects(policy, CONTAINER)


# --- corrupt blobs: one error type, never another exception ----------------------------------------


@pytest.mark.parametrize(("object_class", "blob"), BLOBS)
def test_every_truncation_is_refused(object_class, blob):
    for size in range(len(blob)):
        with pytest.raises(wire.IpsecDataError):
            wire.decode(object_class, blob[:size], "cut")


def test_random_byte_flips_give_the_codec_error_or_a_blob():
    rng = random.Random(12)
    for obj in SAMBA:
        for _ in range(300):
            blob = bytearray(obj.data)
            for _ in range(rng.randint(1, 3)):
                blob[rng.randrange(len(blob))] ^= 1 << rng.randrange(8)
            try:
                record = wire.decode(obj.object_class, bytes(blob))
            except wire.IpsecDataError:
                continue
            assert wire.IpsecData.decode(bytes(blob), "x").encode() == bytes(blob)
            assert isinstance(record, wire.Record)


def test_bad_lengths_name_the_field_and_offset():
    icmp = next(o.data for o in SAMBA if o.name == "All ICMP Traffic")
    huge_record = icmp[:16] + struct.pack("<I", 0xFFFFFFF0) + icmp[20:]
    with pytest.raises(wire.IpsecDataError, match=r"records\[0\] at offset 16: record length 4294967280"):
        wire.decode("ipsecFilter", huge_record)
    huge_count = icmp[:20] + struct.pack("<I", 0xFFFFFFFF) + icmp[24:]
    with pytest.raises(wire.IpsecDataError, match=r"entries at offset 20: count 4294967295"):
        wire.decode("ipsecFilter", huge_count)
    odd_text = icmp[:36] + struct.pack("<I", 9) + icmp[40:]
    with pytest.raises(wire.IpsecDataError, match=r"entries\.\[0\]\.description at offset 36: text length 9"):
        wire.decode("ipsecFilter", odd_text)
    permit = next(o.data for o in SAMBA if o.name == "Permit")
    with pytest.raises(wire.IpsecDataError, match="terminator"):
        wire.decode("ipsecNegotiationPolicy", permit[:-1] + b"\x07")


def test_a_record_of_the_wrong_kind_is_refused():
    icmp = next(o.data for o in SAMBA if o.name == "All ICMP Traffic")
    with pytest.raises(wire.IpsecDataError, match=r"of ipsecNFA: field records .*no NfaData record"):
        wire.decode("ipsecNFA", icmp)
    bad_guid = bytes([icmp[0] ^ 0xFF]) + icmp[1:]
    with pytest.raises(wire.IpsecDataError, match="no FilterData record"):
        wire.decode("ipsecFilter", bad_guid)


# --- directory graph errors: DN and field ----------------------------------------------------------


def _swap(old: DirectoryObject, **changes) -> list[DirectoryObject]:
    return [dataclasses.replace(o, **changes) if o is old else o for o in SAMBA]


def test_dangling_reference_names_the_dn_and_field():
    server_dn = policy_dn("72385230")
    nfa = next(o for o in SAMBA if o.name == "Request Security (Optional) Rule")
    missing = object_dn("ipsecFilter", uuid.UUID(int=1), CONTAINER)
    objects = _swap(nfa, filter_references=(missing,))
    with pytest.raises(DirectoryError) as e:
        policy_from_objects(objects, server_dn)
    assert (e.value.dn, e.value.field) == (nfa.dn, "ipsecFilterReference")
    assert "not in the directory" in str(e.value)


def test_wrong_class_is_refused():
    server_dn = policy_dn("72385230")
    top = next(o for o in SAMBA if o.dn == server_dn)
    filters = next(o for o in SAMBA if o.object_class == "ipsecFilter")
    with pytest.raises(DirectoryError, match=r"ipsecISAKMPReference: refers to .*an ipsecFilter, not an "):
        policy_from_objects(_swap(top, isakmp_reference=filters.dn), server_dn)


def test_corrupt_blob_is_refused_with_its_dn():
    server_dn = policy_dn("72385230")
    permit = next(o for o in SAMBA if o.name == "Permit")
    with pytest.raises(DirectoryError) as e:
        policy_from_objects(_swap(permit, data=permit.data[:-3]), server_dn)
    assert (e.value.dn, e.value.field) == (permit.dn, "ipsecData")


def test_ipsec_id_must_match_the_dn():
    server_dn = policy_dn("72385230")
    isakmp = next(o for o in SAMBA if o.object_class == "ipsecISAKMPPolicy" and "72385231" in o.dn)
    with pytest.raises(DirectoryError, match="ipsecID"):
        policy_from_objects(_swap(isakmp, guid=uuid.UUID(int=7)), server_dn)
