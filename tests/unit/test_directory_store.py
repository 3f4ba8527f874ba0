"""The directory store's own logic, without a DC: the cache file (atomic, exact round trip), the change
stamp over every object of the assigned policy, refusal of bad objects with their DN and field, and the
fall-back when the DC cannot be reached (a refused port here; the real DC is in tests/lab)."""

import json
import os
import socket
import time
from pathlib import Path

import pytest

from ipsecd.policy import policyfile
from ipsecd.policy.directory_model import dn_key, object_dn, policy_to_objects
from ipsecd.policy.directory_store import (
    CachedPolicy,
    DirectoryStore,
    PolicyCache,
    graph_stamp,
    policy_from_entries,
)
from ipsecd.policy.ldap_directory import Credentials, Directory, DirectoryServer
from ipsecd.policy.model import AuthKind, AuthMethod
from ipsecd.policy.predefined import predefined
from ipsecd.policy.store import LocalStore, PolicyRef, StoreUnavailable
from ipsecd.policy.validate import PolicyError

STORE = "CN=IP Security,CN=System,DC=lab,DC=test"
POLICY = predefined("secure server", authentication=(AuthMethod(AuthKind.PRESHARED_KEY, psk="lab"),))
POLICY_DN = object_dn("ipsecPolicy", POLICY.guid, STORE)


def entries(usn: int = 100) -> dict[str, dict[str, list]]:
    """The policy's objects as LDAP returns them (values as bytes), with uSNChanged and whenChanged."""
    out = {}
    for n, obj in enumerate(policy_to_objects(POLICY, STORE)):
        attrs = {k: [v if isinstance(v, bytes) else str(v).encode() for v in vs]
                 for k, vs in obj.to_ldap().items()}
        attrs |= {"uSNChanged": [str(usn + n).encode()], "whenChanged": [b"20240513120000.0Z"],
                  "distinguishedName": [obj.dn.encode()]}
        out[dn_key(obj.dn)] = attrs
    return out


def filter_key(found: dict) -> str:
    return next(k for k in found if k.startswith("cn=ipsecfilter"))


def test_the_stamp_moves_when_one_filter_alone_changes_and_when_a_part_goes():
    base = entries()
    stamp = graph_stamp(POLICY_DN, base)
    assert len(stamp) == len(base)  # every object of the policy counts
    edited = dict(base)
    edited[filter_key(base)] = {**base[filter_key(base)], "uSNChanged": [b"999"]}
    assert graph_stamp(POLICY_DN, edited) != stamp
    assert graph_stamp(POLICY_DN, {**base, "cn=unrelated,dc=lab,dc=test": {"uSNChanged": [b"5000"]}}) == stamp
    gone = {k: v for k, v in base.items() if k != filter_key(base)}
    assert (filter_key(base), None) in graph_stamp(POLICY_DN, gone)


def test_a_corrupt_blob_a_dangling_reference_and_a_wrong_class_are_refused_with_dn_and_field():
    base = entries()
    policy = policy_from_entries(POLICY_DN, base)
    assert policy.guid == POLICY.guid and policy.when_changed == 1715601600  # whenChanged from the directory
    corrupt = {**base, filter_key(base): {**base[filter_key(base)], "ipsecData": [b"not a blob"]}}
    with pytest.raises(PolicyError) as bad:
        policy_from_entries(POLICY_DN, corrupt)
    assert bad.value.problems[0].source.lower() == filter_key(base) and "ipsecData" in str(bad.value)
    with pytest.raises(PolicyError, match="not in the directory"):
        policy_from_entries(POLICY_DN, {k: v for k, v in base.items() if k != filter_key(base)})
    wrong = {**base, filter_key(base): {**base[filter_key(base)], "objectClass": [b"top", b"ipsecNFA"]}}
    with pytest.raises(PolicyError, match="not an ipsecFilter"):
        policy_from_entries(POLICY_DN, wrong)


def test_the_cache_round_trips_exactly_and_is_written_atomically(tmp_path: Path):
    cache = PolicyCache(tmp_path / "cache")
    assert cache.read() is None
    written = CachedPolicy(POLICY_DN, "CN={G},CN=Policies,CN=System,DC=lab,DC=test",
                           graph_stamp(POLICY_DN, entries()), entries(), time.time())
    cache.write(written)
    assert cache.read() == written
    assert os.stat(cache.path).st_mode & 0o777 == 0o600
    assert policy_from_entries(POLICY_DN, cache.read().entries) == policy_from_entries(POLICY_DN, entries())
    cache.write(CachedPolicy(POLICY_DN, "", (), {}, 0.0))  # replaced whole, no temporary file left
    assert [p.name for p in cache.folder.iterdir()] == ["policy.json"]
    cache.path.write_text(json.dumps({"version": 99}))
    with pytest.raises(PolicyError, match=str(cache.path)):
        cache.read()


@pytest.fixture
def refused_port() -> int:
    """A local port nobody listens on: connecting is refused at once, like a DC whose samba is stopped."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def store(tmp_path: Path, port: int, local: LocalStore | None = None) -> DirectoryStore:
    server = DirectoryServer("127.0.0.1", "dc.lab.test", "LAB.TEST", port=port, timeout=1.0)
    credentials = Credentials("member-a$", password="unused")
    return DirectoryStore(server, credentials, tmp_path / "cache", local=local)


def test_with_the_dc_unreachable_the_cache_serves_the_same_policy_and_stamp(tmp_path, refused_port):
    cached = CachedPolicy(POLICY_DN, "CN={G},CN=Policies,CN=System,DC=lab,DC=test",
                          graph_stamp(POLICY_DN, entries()), entries(), time.time())
    PolicyCache(tmp_path / "cache").write(cached)
    s = store(tmp_path, refused_port)
    started = time.monotonic()
    ref = s.assigned_policy()
    assert ref == PolicyRef(POLICY_DN)
    assert s.change_stamp(ref) == cached.stamp  # the agent sees no change: SAs in force stay
    assert s.load(ref).guid == POLICY.guid
    assert time.monotonic() - started < 3
    status = s.status.to_dict()
    assert status["source"] == "cache" and status["ipsec_id"] == "{" + str(POLICY.guid).upper() + "}"
    assert status["when_changed_hex"] == f"{1715601600:08x}" and "refused" in status["reason"].lower()


def test_polls_more_frequent_than_the_retry_delay_still_try_the_dc_again(tmp_path, refused_port, monkeypatch):
    gpo = "CN={G},CN=Policies,CN=System,DC=lab,DC=test"
    PolicyCache(tmp_path / "cache").write(CachedPolicy(POLICY_DN, gpo, graph_stamp(POLICY_DN, entries()),
                                                       entries(), 0.0))
    now = [0.0]
    server = DirectoryServer("127.0.0.1", "dc.lab.test", "LAB.TEST", port=refused_port, timeout=1.0)
    s = DirectoryStore(server, Credentials("member-a$", password="unused"), tmp_path / "cache",
                       retry_after=5, clock=lambda: now[0])
    attempts, connect = [], Directory.connect
    monkeypatch.setattr(Directory, "connect", lambda self: (attempts.append(now[0]), connect(self))[1])
    for now[0] in (0, 3, 6, 9, 12):  # the agent polling every 3 s with the DC down
        s.change_stamp(s.assigned_policy())
        assert 0 < s.seconds_until_group_policy() <= 5
    assert attempts == [0, 6, 12]


def test_with_the_dc_unreachable_and_no_cache_the_local_policy_or_unavailable(tmp_path, refused_port):
    with pytest.raises(StoreUnavailable):
        store(tmp_path, refused_port).assigned_policy()
    local = LocalStore(tmp_path / "local")
    local.assign(local.save(POLICY))
    s = store(tmp_path, refused_port, local)
    ref = s.assigned_policy()
    assert ref is not None and s.load(ref).name == POLICY.name and s.status.source == "local"
    with pytest.raises(PermissionError, match="cannot write"):
        s.save(POLICY)
    assert policyfile.load(ref.location).guid == POLICY.guid
