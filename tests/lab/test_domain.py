"""The domain topology (issue 12): a Samba AD DC and two members whose ipsecd reads its policy from the
directory by Group Policy, polls it and falls back to its cache. The documents' "Supporting Lab Work" step
by step with `ipsecctl static`, Group Policy precedence, a silent DC that stalls neither IKE nor ipsecctl,
and the failure twins. Members authenticate IKE with a pre-shared key in the policies these tests make, and
with Kerberos in the shipped ones the last test assigns. The DC unreachable (the cache in force, across an
ipsecd restart, replaced by the directory's newer policy on reconnection) and a GPO deleted with its policy
still assigned are scenarios: scenarios/dc-unreachable and scenarios/gpo-deleted.

The tests share one lab and run in file order; each sets the directory up as it needs it. Figures (fall back
to the cache, a change seen by polling) are printed: run with -s to see them.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable

import pytest
import yaml

from lab.capture import assert_marker_absent, assert_only_protocols, wait_until
from lab.harness import (
    ADMIN,
    CONFIG,
    edit,
    ipsecctl,
    refresh_while_silent,
    restart_ipsecd,
    static,
    wait_for_sas,
)
from lab.running import Lab, Node
from lab.traffic import tcp_transfer

DOMAIN = "DC=lab,DC=test"
SERVERS, CLIENTS = f"OU=Servers,{DOMAIN}", f"OU=Clients,{DOMAIN}"
CACHE = "/var/lib/ipsecd/cache/policy.json"
A, B = "10.0.0.1", "10.0.0.2"
MARKER = b"DOMAIN-POLICY-MARKER-"
SECURED = "secure tcp between members"
MEMBERS = "10.0.0.0/29"  # member-a and member-b, not the DC (10.0.0.10): LDAP to it stays in clear
SILENT_DC_TIMEOUT = 8  # connect and receive: a read that waits on the silent DC up to 16 s


@pytest.fixture
def domain(lab_up) -> Lab:
    return lab_up("domain")


def source(node: Node) -> dict:
    """Where the member's policy in force came from (ipsecctl policy)."""
    return ipsecctl(node, "policy")["source"]


def rules(node: Node) -> list[str]:
    return sorted(r["name"] for r in ipsecctl(node, "policy").get("rules", []))


def on_dc(node: Node, name: str) -> dict:
    return next(p for p in static(node, "list") if p["name"] == name)


def edit_policy(node: Node, name: str, change: Callable[[dict], None]) -> None:
    """Export, change the YAML, re-import: the snap-in's export, modify, import round."""
    static(node, "export", name, "/tmp/policy.yaml")
    data = yaml.safe_load(node.get_file("/tmp/policy.yaml"))
    change(data)
    node.put_file("/tmp/policy.yaml", yaml.safe_dump(data, sort_keys=False))
    static(node, "import", "/tmp/policy.yaml")


def add_secured_rule(data: dict) -> None:
    data.setdefault("rules", []).append({
        "name": SECURED, "filter_list": {"name": "members", "filters": [
            {"name": "members tcp", "source": "me", "destination": MEMBERS, "protocol": "tcp"}]},
        "filter_action": {"name": "Require ESP", "action": "negotiate",
                          "security_methods": ["ESP[3DES,SHA1]"]},
        "authentication": [{"psk": "domain-lab"}]})


def ensure(node: Node, name: str, gpo: str, *containers: str) -> dict:
    """Policy `name` (with the secured rule, polled every 3 s) assigned by GPO `gpo` linked to exactly
    `containers`; returns the policy as the DC lists it."""
    if not any(p["name"] == name for p in static(node, "list")):
        static(node, "create", name, "--polling-interval", "3s")
        edit_policy(node, name, add_secured_rule)
    if gpo not in {g["name"] for g in static(node, "gpo", "list")}:
        static(node, "gpo", "create", gpo)
    for container in (DOMAIN, SERVERS, CLIENTS):  # link and unlink are idempotent
        static(node, "gpo", "link" if container in containers else "unlink", gpo, container)
    static(node, "assign", gpo, name)
    return on_dc(node, name)


def secured_traffic(lab: Lab, a: Node, b: Node, port: int = 5001) -> None:
    """A first transfer negotiates; a second, captured, is ESP only with the marker absent."""
    assert tcp_transfer(a, b, MARKER * 50, port=port, timeout=20) == MARKER * 50
    wait_for_sas(b, A)
    with lab.capture_segment("lan") as cap:
        assert tcp_transfer(a, b, MARKER * 50, port=port) == MARKER * 50
    assert_only_protocols(cap.packets(), between=(A, B), allowed={"esp"})
    assert_marker_absent(cap.packets(), MARKER)


def test_supporting_lab_work(domain: Lab) -> None:
    a, b = domain.node("member-a"), domain.node("member-b")
    assert source(a)["source"] == "none", "lab up: no GPO assigns a policy yet"
    created = static(a, "create", "Test Policy", "--polling-interval", "3s")
    gpo = static(a, "gpo", "create", "IPsec for Servers")["dn"]
    static(a, "gpo", "link", "IPsec for Servers", SERVERS)
    static(a, "gpo", "link", "IPsec for Servers", CLIENTS)  # member-b runs it too: the traffic's peer
    static(a, "assign", "IPsec for Servers", "Test Policy")
    assert not a.exec(["test", "-e", CACHE]).ok, "a cache before the first download"

    for member in (a, b):
        ipsecctl(member, "refresh")  # gpupdate /force
    first, listed = source(a), on_dc(a, "Test Policy")
    assert first["source"] == "directory", first
    assert first["ipsec_id"] == created["ipsec_id"] == listed["ipsec_id"]
    assert first["gpo"].lower() == gpo.lower()
    assert first["when_changed"].replace("-", "").replace("T", "").replace(":", "")[:14] \
        == listed["when_changed"][:14]
    cached = json.loads(a.get_file(CACHE))
    assert cached["policy_dn"].lower() == created["dn"].lower() and cached["gpo_dn"].lower() == gpo.lower()

    edit_policy(a, "Test Policy", add_secured_rule)  # a rule with a new filter, the same GUIDs
    edited = on_dc(a, "Test Policy")
    assert (edited["ipsec_id"], edited["dn"]) == (listed["ipsec_id"], listed["dn"])
    assert edited["when_changed"] > listed["when_changed"]
    started = time.monotonic()
    for member in (a, b):  # polling, no refresh
        wait_until(lambda m=member: SECURED in rules(m), 20, what=f"{member.name}'s poll to take the rule")
    print(f"\nthe re-imported policy in force by polling after {time.monotonic() - started:.1f} s")
    assert source(a)["ipsec_id"] == created["ipsec_id"]
    assert source(a)["when_changed"] != first["when_changed"]
    assert json.loads(a.get_file(CACHE))["stamp"] != cached["stamp"]
    secured_traffic(domain, a, b)


def test_ou_beats_domain_block_inheritance_and_unassigning_at_the_group_policy_poll(domain: Lab) -> None:
    a, b = domain.node("member-a"), domain.node("member-b")
    servers = ensure(a, "Test Policy", "IPsec for Servers", SERVERS)
    everyone = ensure(a, "Domain Policy", "Domain IPsec", DOMAIN)
    for member in (a, b):
        ipsecctl(member, "refresh")
    assert source(a)["ipsec_id"] == servers["ipsec_id"], "the OU's GPO beats the domain's"
    assert source(b)["ipsec_id"] == everyone["ipsec_id"], "OU=Clients inherits the domain's"

    static(a, "gpo", "block", CLIENTS)
    try:
        ipsecctl(b, "refresh")
        assert source(b)["source"] == "none" and "policy" not in rules(b), source(b)
    finally:
        static(a, "gpo", "block", CLIENTS, "--off")
    ipsecctl(b, "refresh")
    assert source(b)["ipsec_id"] == everyone["ipsec_id"]

    config = b.get_file("/etc/ipsecd/ipsecd.yaml").decode()
    restart_ipsecd(b, config.replace("group_policy_interval: 90min", "group_policy_interval: 3s"))
    try:
        assert source(b)["ipsec_id"] == everyone["ipsec_id"]
        static(a, "unassign", "Domain IPsec")
        started = time.monotonic()
        wait_until(lambda: source(b)["source"] == "none", 20, what="member-b's Group Policy poll")
        print(f"\nunassigned: member-b without a policy {time.monotonic() - started:.1f} s later (3 s GP)")
        assert not b.exec(["test", "-e", CACHE]).ok, "the cache of an unassigned policy is dropped"
    finally:
        restart_ipsecd(b)


def test_a_silent_dc_stalls_neither_ike_nor_ipsecctl(domain: Lab) -> None:
    """A race, which data cannot say: while member-a's read of the directory waits on a DC that does not
    answer (LDAPS dropped at the DC; its timeouts raised to 8 s, so the kept connection's receive and a new
    connect take up to 16 s), member-b negotiates with member-a and ipsecctl answers; the read, in the Policy
    Agent's reader thread, falls back to the cache when it gives up. The reads ran in ipsecd's one event
    loop: IKE, the data path and the control socket stalled for each attempt (2 s with the default 1 s)."""
    dc, a, b = domain.node("dc"), domain.node("member-a"), domain.node("member-b")
    before = ensure(a, "Test Policy", "IPsec for Servers", SERVERS, CLIENTS)
    config = a.get_file(CONFIG).decode()
    realm = "    realm: LAB.TEST\n"
    restart_ipsecd(a, edit(config, realm, f"{realm}    timeout: {SILENT_DC_TIMEOUT}\n"))
    ipsecctl(b, "refresh")
    assert source(a)["source"] == "directory" and not ipsecctl(b, "qmsa"), "no SA before the DC goes silent"
    dc.firewall(["tcp/636"])
    try:
        refresh_while_silent(a, b, dc, port=5031, marker=MARKER)  # gpupdate /force, waiting on the DC
        wait_until(lambda: source(a)["source"] == "cache", 2 * SILENT_DC_TIMEOUT + 10,
                   what="member-a's read to give up and fall back to its cache")
    finally:
        dc.firewall([])
    silent = source(a)
    assert silent["ipsec_id"] == before["ipsec_id"] and "timed out" in silent["reason"], silent
    in_ipsecd = silent["timings"]["failed_search"] + silent["timings"]["cache_read"]
    print(f"\nDC silent (LDAPS dropped, {SILENT_DC_TIMEOUT} s timeouts): IKE negotiated meanwhile; the cache "
          f"applies {in_ipsecd:.1f} s after the attempt started")
    restart_ipsecd(a)  # the topology's ipsecd.yaml again


def test_a_member_that_cannot_bind_uses_its_cache_and_says_so(domain: Lab) -> None:
    dc, a = domain.node("dc"), domain.node("member-a")
    before = ensure(a, "Test Policy", "IPsec for Servers", SERVERS)
    ipsecctl(a, "refresh")
    keytab = a.get_file("/etc/krb5.keytab")
    a.exec(["rm", "-f", "/etc/krb5.keytab", "/run/ipsecd/krb5cc"], check=True)
    try:
        restart_ipsecd(a)
        state = source(a)
        assert state["source"] == "cache" and state["ipsec_id"] == before["ipsec_id"], state
        assert "keytab" in state["reason"], state
        shown = a.exec(["ipsecctl", "policy"], check=True).stdout
        assert "from the local cache" in shown and "/etc/krb5.keytab" in shown, shown
    finally:
        a.put_file("/etc/krb5.keytab", keytab, mode=0o600)
        restart_ipsecd(a)
    assert source(a)["source"] == "directory"
    assert dc.exec(["dc-ready"]).ok


def test_a_corrupt_blob_is_refused_with_its_dn_and_the_policy_in_force_stays(domain: Lab) -> None:
    a = domain.node("member-a")
    ensure(a, "Test Policy", "IPsec for Servers", SERVERS)
    ipsecctl(a, "refresh")
    in_force = rules(a)
    static(a, "export", "Test Policy", "/tmp/good.yaml")
    entries = json.loads(a.get_file(CACHE))["entries"]
    filter_dn = next(key for key in entries if key.startswith("cn=ipsecfilter"))
    corrupt = ("from ipsecd.policy.ldap_directory import *; import os; "
               "s = DirectoryServer('10.0.0.10', 'dc.lab.test', 'LAB.TEST', '/etc/ipsec-lab/dc-ca.pem'); "
               "d = Directory(s, Credentials('Administrator', password=os.environ['IPSEC_ADMIN_PASSWORD'])); "
               f"d.connect().write('modify', {filter_dn!r}, "
               "{'ipsecData': [('MODIFY_REPLACE', [b'not a blob'])]})")
    a.exec(["python3", "-c", corrupt], check=True, env=ADMIN)
    try:
        refused = wait_until(lambda: [e for e in ipsecctl(a, "events") if e["kind"] == "policy-refused"], 20,
                             what="member-a's poll to refuse the corrupt filter")
        assert filter_dn in refused[-1]["text"].lower() and "ipsecData" in refused[-1]["text"], refused[-1]
        assert rules(a) == in_force, "the policy in force changed"
        assert filter_dn in json.loads(a.get_file(CACHE))["entries"]
    finally:
        static(a, "import", "/tmp/good.yaml")


SHIPPED = {"Shipped for Servers": (SERVERS, "Secure Server (Require Security)"),
           "Shipped for Clients": (CLIENTS, "Client (Respond Only)")}


def test_the_shipped_policies_assigned_by_group_policy_secure_the_members_with_kerberos(domain: Lab) -> None:
    """Issue 13 as the documents ship it: the directory's own Secure Server and Client (Windows' blobs,
    Kerberos authentication), assigned by Group Policy to each member's OU; the members' traffic is ESP,
    main mode authenticated by Kerberos as their computer accounts."""
    a, b = domain.node("member-a"), domain.node("member-b")
    for gpo in static(a, "gpo", "list"):  # what earlier tests linked goes: one GPO per OU here
        for container in (DOMAIN, SERVERS, CLIENTS):
            static(a, "gpo", "unlink", gpo["name"], container)
    for gpo, (ou, policy) in SHIPPED.items():
        if gpo not in {g["name"] for g in static(a, "gpo", "list")}:
            static(a, "gpo", "create", gpo)
        static(a, "gpo", "link", gpo, ou)
        static(a, "assign", gpo, policy)
    for node in (a, b):  # the computer account's keys, which `lab up` put in /etc/krb5.keytab, for IKE too
        config = node.get_file("/etc/ipsecd/ipsecd.yaml").decode()
        restart_ipsecd(node, config + f"ike:\n  kerberos: {{keytab: /etc/krb5.keytab, "
                                      f"principal: {node.name}$@LAB.TEST}}\n")
        ipsecctl(node, "refresh")
    assert ipsecctl(a, "policy")["name"] == "Secure Server (Require Security)"
    assert ipsecctl(b, "policy")["name"] == "Client (Respond Only)"
    assert source(b)["source"] == "directory"
    # Secure Server also requires IPsec for member-a's LDAP to the DC, which speaks none: from its next poll
    # on, member-a's policy comes from its cache (a Windows member under Secure Server does the same).
    assert source(a)["source"] in ("directory", "cache")
    payload = MARKER * 500
    assert tcp_transfer(b, a, payload, port=5021, timeout=30) == payload  # the server's answer starts IKE
    with domain.capture_segment("lan") as cap:
        assert tcp_transfer(b, a, payload, port=5022, timeout=20) == payload
    assert_only_protocols(cap.packets(), between=(A, B), allowed={"esp"})
    assert_marker_absent(cap.packets(), MARKER)
    (mm_a,), (mm_b,) = ipsecctl(a, "mmsa"), ipsecctl(b, "mmsa")
    assert mm_a["authentication"] == mm_b["authentication"] == "kerberos"
    assert mm_a["role"] == "initiator"  # the secure server's answer started IKE: it needs the ticket
    assert mm_a["peer identity"] == "host/member-b.lab.test@LAB.TEST"  # the service it has a ticket for
    assert mm_b["peer identity"] == "member-a$@LAB.TEST"  # the computer account the AP-REQ names
