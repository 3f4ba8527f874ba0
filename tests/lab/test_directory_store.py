"""The directory store against the real DC image (issue 12), from a member holding only its keytab: the
documents' "Supporting Lab Work" with the administration command line, Group Policy assignment, change
polling (one filter edited alone), the cache with the DC stopped, a corrupt blob refused with its DN.
Figures (bind, no-change poll, fall back to the cache) are printed: run with -s to see them."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from test_dc_image import DC_FILES, MEMBER_FILES, TOPOLOGY, running_dc, start_dc, stop_dc

from lab import topology as topologies
from lab.capture import wait_until
from lab.docker_backend import DockerBackend, Lab, Node
from lab.pytest_plugin import lab_prefix

PROBE = "directory_store_probe.py"
CACHE = "/var/lib/ipsecd/cache/policy.json"
ADMIN_PASSWORD = "Lab-Admin-2003!"  # images/dc/README.md (lab only)
DOMAIN = "DC=lab,DC=test"
SERVERS = f"OU=Servers,{DOMAIN}"


@pytest.fixture(scope="module")
def domain(lab_backend: DockerBackend, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    name = f"{lab_prefix()}-dirstore"
    lab_backend.down(name)
    lab = lab_backend.up(topologies.loads(TOPOLOGY), name, tmp_path_factory.mktemp("dirstore"))
    try:
        dc, member = lab.node("dc"), lab.node("member-a")
        for source, target in (("keytabs/member-a.keytab", "member-a.keytab"), ("krb5.conf", "krb5.conf")):
            member.put_file(f"{MEMBER_FILES}/{target}", dc.get_file(f"{DC_FILES}/{source}"), mode=0o600)
        member.put_file(f"{MEMBER_FILES}/ca.pem", dc.get_file(f"{DC_FILES}/ca.pem"))
        member.put_file(f"{MEMBER_FILES}/admin-password", ADMIN_PASSWORD, mode=0o600)
        member.put_file(f"{MEMBER_FILES}/{PROBE}", (Path(__file__).parent / PROBE).read_text())
        member.exec("echo '10.0.0.10 dc.lab.test' >> /etc/hosts", check=True)
        start_dc(dc)
        yield lab
    finally:
        lab.down()


def admin(member: Node, *argv: str) -> dict | list:
    """The administration command line, from the member, as Administrator (password file)."""
    done = member.exec(["python3", "-m", "ipsecd.policy.directory_admin", "--server", "10.0.0.10",
                        "--realm", "LAB.TEST", "--ca", f"{MEMBER_FILES}/ca.pem",
                        "--password-file", f"{MEMBER_FILES}/admin-password", "--json", *argv],
                       timeout=60, env={"KRB5_CONFIG": f"{MEMBER_FILES}/krb5.conf"})
    assert done.ok, f"admin {argv}: {done.stdout}{done.stderr}"
    return json.loads(done.stdout) if argv[0] not in ("show",) else done.stdout


def probe(member: Node, *argv: str) -> dict:
    done = member.exec(["python3", f"{MEMBER_FILES}/{PROBE}", *argv], timeout=60,
                       env={"KRB5_CONFIG": f"{MEMBER_FILES}/krb5.conf"})
    assert done.ok, done.stdout + done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


def dc_policy(member: Node, name: str) -> dict:
    return next(p for p in admin(member, "list") if p["name"] == name)


def edit_policy(member: Node, name: str, change) -> None:
    """Export, change the YAML, re-import: the snap-in's export/modify/import round."""
    admin(member, "export", name, "/tmp/policy.yaml")
    data = yaml.safe_load(member.get_file("/tmp/policy.yaml"))
    change(data)
    member.put_file("/tmp/policy.yaml", yaml.safe_dump(data, sort_keys=False))
    admin(member, "import", "/tmp/policy.yaml")


def add_rule(data: dict) -> None:
    data.setdefault("rules", []).append({
        "name": "secure web", "filter_list": {"name": "web", "filters": [
            {"name": "http", "source": "me", "destination": "any", "protocol": "tcp",
             "destination_port": 80}]},
        "filter_action": {"name": "Require ESP", "action": "negotiate",
                          "security_methods": ["ESP[3DES,SHA1]"]},
        "authentication": [{"psk": "lab"}]})


def test_supporting_lab_work_and_change_polling(domain: Lab) -> None:
    member = domain.node("member-a")
    created = admin(member, "create", "Test Policy")
    gpo = admin(member, "gpo", "create", "IPsec for Servers")["dn"]
    admin(member, "gpo", "link", "IPsec for Servers", SERVERS)
    admin(member, "assign", "IPsec for Servers", "Test Policy")
    assert admin(member, "resolve", "member-a")["policy"].lower() == created["dn"].lower()
    assert not member.exec(["test", "-e", CACHE]).ok, "a cache before the first download"

    first = probe(member, "sync", "20")
    on_dc = dc_policy(member, "Test Policy")
    assert first["source"] == "directory" and first["ipsec_id"] == created["ipsec_id"] == on_dc["ipsec_id"]
    assert first["gpo"].lower() == gpo.lower()
    stamp = time.strftime("%Y%m%d%H%M%S", time.gmtime(first["when_changed_unix"]))
    assert stamp == on_dc["when_changed"][:14]
    assert member.exec(["test", "-e", CACHE]).ok
    print(f"\nbind as member-a$ {first['timings']['bind'] * 1000:.0f} ms; first sync {first['seconds']} s; "
          f"no-change poll {first['poll_ms']} ms (median of 20)")
    assert first["poll_ms"] < 50

    time.sleep(1.1)  # whenChanged has a one-second resolution: the import must land in a later second
    edit_policy(member, "Test Policy", add_rule)
    second = probe(member, "sync")
    assert second["ipsec_id"] == first["ipsec_id"] and second["rules"] == ["secure web"]
    assert second["ports"] == [80]

    watcher = member.spawn(["env", f"KRB5_CONFIG={MEMBER_FILES}/krb5.conf", "python3",
                            f"{MEMBER_FILES}/{PROBE}", "watch", "30"], name="watch")
    watcher.wait_for_log("ready", timeout=30)
    edit_policy(member, "Test Policy", lambda d: d["rules"][0]["filter_list"]["filters"][0].update(
        destination_port=8080))
    wait_until(lambda: not watcher.alive(), 30, what="the watcher to see the change")
    seen = json.loads(watcher.log().strip().splitlines()[-1])
    assert seen["ports"] == [8080], seen
    assert [k.split(",")[0] for k in seen["moved"]] == [k.split(",")[0] for k in seen["moved"]
                                                        if k.startswith("cn=ipsecfilter")], seen["moved"]
    print(f"a filter edited alone: seen after {seen['detected_after']} s of 0.1 s polling")


def test_dc_stopped_the_cache_serves_and_a_corrupt_blob_is_refused_with_its_dn(domain: Lab) -> None:
    dc, member = domain.node("dc"), domain.node("member-a")
    samba = running_dc(dc)
    before = probe(member, "sync")
    stop_dc(samba)
    try:
        offline = probe(member, "sync")
    finally:
        start_dc(dc)
    assert offline["source"] == "cache", offline
    assert offline["ipsec_id"] == before["ipsec_id"] and offline["when_changed"] == before["when_changed"]
    assert offline["seconds"] < 3, offline
    print(f"\nDC stopped: the cache applies after {offline['seconds']} s ({offline['reason']})")
    dc.firewall(["tcp/636"])  # a DC that does not answer at all: the connect timeout, no resolver stall
    try:
        silent = probe(member, "sync")
        dropped = dc.dropped()
    finally:
        dc.firewall([])
    assert silent["source"] == "cache" and silent["ipsec_id"] == before["ipsec_id"], silent
    assert silent["seconds"] < 3 and dropped > 0, silent
    print(f"DC silent (packets dropped): the cache applies after {silent['seconds']} s")
    back = probe(member, "sync")
    assert back["source"] == "directory"

    filter_dn = next(k for k, _ in back["stamp"] if k.startswith("cn=ipsecfilter"))
    member.exec(["python3", "-c", (
        "from ipsecd.policy.ldap_directory import *; "
        "s = DirectoryServer('10.0.0.10', 'dc.lab.test', 'LAB.TEST', '/etc/ipsec-lab/ca.pem'); "
        "d = Directory(s, Credentials('Administrator', password=open('/etc/ipsec-lab/admin-password').read()"
        ".strip())).connect(); "
        f"d.write('modify', {filter_dn!r}, {{'ipsecData': [('MODIFY_REPLACE', [b'not a blob'])]}})")],
        check=True)
    refused = probe(member, "sync")
    assert "refused" in refused, refused
    assert filter_dn in refused["refused"].lower() and "ipsecData" in refused["refused"], refused["refused"]
    cached = json.loads(member.get_file(CACHE))
    assert any(k == filter_dn for k in cached["entries"]) and cached["stamp"] == back["stamp"]
