"""The directory store: a domain member's IPsec policy from Active Directory, by Group Policy, with its cache.

What the documents describe (Policy Agent, local cache, policies stored in Active Directory), the Windows way:
- The member binds to its DC as its computer account (``member-a$``) with Kerberos from its keytab (no
  password), over LDAPS, the DC reached by a remembered address (``ldap_directory``).
- Its policy is the one of the highest-precedence GPO linked to its OU chain and the domain that points at
  an IPsec policy (``gpo``). The chain is read again at the Group Policy interval (90 min by default, as
  Winlogon) and on ``refresh()`` (``gpupdate /force``), not at every poll.
- Polling is cheap: the rootDSE's ``highestCommittedUSN`` first (one base search on a kept connection);
  only when it moved, the ``uSNChanged`` of every object of the assigned policy (the policy, its ISAKMP
  policy, NFAs, filters, negotiation policies): an edit of one filter alone moves the stamp, although it
  does not touch the policy object's own whenChanged.
- Every successful download is written to the cache atomically (one JSON file, tmp + rename, mode 600),
  holding the objects as the directory gave them; when the DC cannot be reached or refuses the bind, the
  cache is served through the same decoding and checks, with the same stamp, so the agent sees no change
  and the SAs in force stay. ``status`` says where the policy came from (directory, cache, local), its
  ipsecID and whenChanged, and why.
- Bad input (a corrupt ipsecData blob, a dangling reference, an object of the wrong class) is refused as a
  ``PolicyError`` naming the DN and the field; the cache keeps the last good download.
- No GPO assigns a policy: the local store's assigned policy applies (precedence OU > domain > local); the
  cache is dropped, as Windows drops it. The documents' warning case holds: when the GPO that assigned the
  policy is deleted without unassigning it first, the member "treat[s] the IPSec policy as if it cannot be
  located and continue[s] to use a cached copy" (seed 004, KB Q234320): the cache is served, an ipsecd
  restart included (the cache names the GPO), until a GPO assigns a policy again.
"""

from __future__ import annotations

import base64
import builtins
import json
import os
import time
from collections.abc import Callable, Hashable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ipsecd.policy import policyfile
from ipsecd.policy.directory_model import (
    CLASSES,
    DirectoryError,
    DirectoryObject,
    dn_key,
    ipsec_id,
    policy_from_objects,
)
from ipsecd.policy.gpo import Assignment, Container, assigned, ipsec_pointer_dn, precedence, scopes
from ipsecd.policy.ldap_directory import (
    BASE,
    SUBTREE,
    Attributes,
    Credentials,
    Directory,
    DirectoryServer,
    DirectoryUnavailable,
    text,
    texts,
)
from ipsecd.policy.model import Policy
from ipsecd.policy.store import LocalStore, PolicyRef, StoreUnavailable
from ipsecd.policy.validate import PolicyError, Problem, validate

GROUP_POLICY_INTERVAL = 90 * 60  # Winlogon's default
CACHE_FILE = "policy.json"
CACHE_VERSION = 1
REFERENCES = ("ipsecNFAReference", "ipsecISAKMPReference", "ipsecFilterReference",
              "ipsecNegotiationPolicyReference")
GPO_MACHINE_DISABLED = 2  # groupPolicyContainer flags: computer settings disabled
IPSEC_FILTER = "(|" + "".join(f"(objectClass={c})" for c in CLASSES) + ")"

Stamp = tuple[tuple[str, int | None], ...]


def policy_graph(policy_dn: str, references: dict[str, Attributes]) -> list[str]:
    """The DNs (as dn_key) of a policy and every object it reaches, missing ones included.

    ``references`` maps dn_key -> the object's attributes (its reference attributes are enough).
    """
    seen: list[str] = []
    todo = [dn_key(policy_dn)]
    while todo:
        key = todo.pop()
        if key in seen:
            continue
        seen.append(key)
        attrs = references.get(key, {})
        todo += [dn_key(dn) for name in REFERENCES for dn in texts(attrs, name)]
    return sorted(seen)


def graph_stamp(policy_dn: str, entries: dict[str, Attributes]) -> Stamp:
    """(dn_key, uSNChanged) of every object of the policy; a missing object has None: any add, edit,
    removal or re-pointing of a part moves it."""
    out = []
    for key in policy_graph(policy_dn, entries):
        usn = text(entries[key], "uSNChanged") if key in entries else None
        out.append((key, int(usn) if usn and usn.isdigit() else None))
    return tuple(out)


def as_policy_error(error: DirectoryError) -> PolicyError:
    return PolicyError([Problem(error.field, error.reason, source=error.dn)])


def policy_from_entries(policy_dn: str, entries: dict[str, Attributes]) -> Policy:
    """The policy from its objects' raw attributes (a download or the cache), checked; PolicyError names
    the DN and field of what is wrong."""
    try:
        objects = [DirectoryObject.from_ldap(text(entries[key], "distinguishedName") or key, entries[key])
                   for key in policy_graph(policy_dn, entries) if key in entries]
        return validate(policy_from_objects(objects, policy_dn))
    except DirectoryError as e:
        raise as_policy_error(e) from None
    except PolicyError as e:
        raise PolicyError([Problem(p.path, p.message, source=p.source or policy_dn) for p in e.problems]) \
            from None


@dataclass(frozen=True)
class CachedPolicy:
    """What the cache holds: the assigned policy's objects as downloaded, where they came from, the stamp."""

    policy_dn: str
    gpo_dn: str
    stamp: Stamp
    entries: dict[str, Attributes]  # dn_key -> raw attributes (values bytes)
    downloaded: float  # Unix time

    def to_json(self) -> str:
        return json.dumps({
            "version": CACHE_VERSION, "policy_dn": self.policy_dn, "gpo_dn": self.gpo_dn,
            "stamp": [list(s) for s in self.stamp], "downloaded": self.downloaded,
            "entries": {key: {name: [base64.b64encode(v if isinstance(v, bytes) else str(v).encode()).decode()
                                     for v in values] for name, values in attrs.items()}
                        for key, attrs in self.entries.items()}}, indent=1, sort_keys=True)

    @classmethod
    def from_json(cls, data: str, where: str) -> CachedPolicy:
        try:
            raw = json.loads(data)
            if raw.get("version") != CACHE_VERSION:
                raise ValueError(f"version {raw.get('version')!r}, not {CACHE_VERSION}")
            entries = {key: {name: [base64.b64decode(v) for v in values] for name, values in attrs.items()}
                       for key, attrs in raw["entries"].items()}
            stamp = tuple((str(k), None if u is None else int(u)) for k, u in raw["stamp"])
            return cls(str(raw["policy_dn"]), str(raw["gpo_dn"]), stamp, entries, float(raw["downloaded"]))
        except (ValueError, KeyError, TypeError, AttributeError) as e:
            raise PolicyError([Problem("", f"the cache is unreadable: {e}", source=where)]) from None


class PolicyCache:
    """The member's cache of its directory policy (the documents' ...\\IPSec\\Policy\\Cache): one file."""

    def __init__(self, folder: str | os.PathLike[str]) -> None:
        self.folder = Path(folder)
        self.path = self.folder / CACHE_FILE

    def write(self, cached: CachedPolicy) -> None:
        """Atomically (tmp + rename, mode 600): a crash mid-write leaves the previous cache whole."""
        self.folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        policyfile.write_atomically(self.path, cached.to_json())

    def read(self) -> CachedPolicy | None:
        """The cached policy, None when there is none; PolicyError when the file is damaged."""
        try:
            data = self.path.read_text()
        except FileNotFoundError:
            return None
        return CachedPolicy.from_json(data, str(self.path))

    def clear(self) -> None:
        self.path.unlink(missing_ok=True)


@dataclass
class StoreStatus:
    """Where the policy in force comes from, for ``ipsecctl policy``."""

    source: str = "none"  # directory | cache | local | none
    policy_dn: str | None = None
    ipsec_id: str | None = None
    when_changed: int | None = None  # the ipsecPolicy object's whenChanged, Unix seconds
    gpo_dn: str | None = None
    dc: str = ""
    reason: str = ""  # why the cache or the local store is used
    last_contact: float | None = None  # Unix time of the last successful read from the DC
    timings: dict[str, float] = field(default_factory=dict)  # seconds of the last bind, poll, fallback

    def to_dict(self) -> dict[str, Any]:
        stamp = self.when_changed
        return {"source": self.source, "policy_dn": self.policy_dn, "ipsec_id": self.ipsec_id,
                "when_changed": policyfile.format_stamp(stamp) if stamp else None,
                "when_changed_hex": f"{stamp:08x}" if stamp else None,  # as the registry cache shows it
                "gpo": self.gpo_dn, "dc": self.dc, "reason": self.reason, "last_contact": self.last_contact,
                "timings": dict(self.timings)}


class DirectoryStore:
    """A PolicyStore reading a member's assigned policy from its DC, with a cache and the local store."""

    def __init__(self, server: DirectoryServer, credentials: Credentials, cache_dir: str | os.PathLike[str],
                 local: LocalStore | None = None, group_policy_interval: float = GROUP_POLICY_INTERVAL,
                 retry_after: float = 5.0, clock: Callable[[], float] = time.monotonic,
                 log: Callable[[str, str], None] | None = None) -> None:
        self.server, self.credentials = server, credentials
        self.cache = PolicyCache(cache_dir)
        self.local = local
        self.group_policy_interval, self.retry_after = group_policy_interval, retry_after
        self.clock, self.log = clock, log
        self.status = StoreStatus(dc=server.describe())
        self._directory = Directory(server, credentials)
        self._failed: tuple[float, DirectoryUnavailable] | None = None
        self._assignment: Assignment | None = None
        self._orphaned = ""  # why the assignment is served from the cache: its GPO was deleted (or "")
        self._resolved_at: float | None = None
        self._usn: tuple[str | None, str | None] = (None, None)  # (dsServiceName, highestCommittedUSN)
        self._stamps: dict[str, Stamp] = {}

    # --- the PolicyStore protocol

    def refresh(self) -> None:
        """``gpupdate /force``: the next calls read the GPO chain and the policy's stamp again."""
        self._resolved_at, self._usn, self._failed = None, (None, None), None

    def seconds_until_group_policy(self) -> float:
        """Until the GPO chain is read again; after a failed attempt, until the next try (retry_after)."""
        if self._failed is not None:
            return max(0.0, self._failed[0] + self.retry_after - self.clock())
        if self._resolved_at is None:
            return 0.0
        return max(0.0, self._resolved_at + self.group_policy_interval - self.clock())

    def assigned_policy(self) -> PolicyRef | None:
        if self._resolved_at is None or self.seconds_until_group_policy() == 0:
            try:
                self._resolve()
            except DirectoryUnavailable as e:
                self._failed_now(e)  # the next try after retry_after
                return self._cached_ref(e)
        if self._assignment is None:
            return self._local_ref()
        return PolicyRef(self._assignment.policy_dn)

    def change_stamp(self, ref: PolicyRef) -> Hashable:
        if self._is_local(ref):
            return ("local", self.local.change_stamp(ref)) if self.local else None
        if self._orphaned:
            cached = self._cached_copy(ref, self._orphaned, announce=False)
            return cached.stamp if cached else None
        try:
            started = time.monotonic()
            stamp = self._directory_stamp(ref.location)
            self.status.timings["poll"] = time.monotonic() - started
        except DirectoryUnavailable as e:
            cached = self._cached_copy(ref, str(e))
            return cached.stamp if cached else None
        if self.status.source == "cache" and self._cache_matches(ref.location, stamp):
            self.status.source, self.status.reason = "directory", ""  # the DC is back with the same objects
        return stamp

    def load(self, ref: PolicyRef) -> Policy:
        if self._is_local(ref):
            assert self.local is not None
            policy = self.local.load(ref)
            self._report("local", policy, None, None)
            return policy
        reason = self._orphaned
        if not reason:
            try:
                return self._download(ref.location)
            except DirectoryUnavailable as e:
                reason = str(e)
        cached = self._cached_copy(ref, reason, announce=not self._orphaned)
        if cached is None:
            raise StoreUnavailable(f"{reason}; no cached copy of {ref.location}")
        policy = policy_from_entries(cached.policy_dn, cached.entries)
        self._report("cache", policy, cached.policy_dn, cached.gpo_dn)
        return policy

    def list(self) -> list[tuple[PolicyRef, Policy]]:
        """Every valid policy in the directory (the cached one when the DC cannot be reached)."""
        try:
            entries = self._ipsec_entries()
        except DirectoryUnavailable as e:
            cached = self._use_cache(str(e))
            return [] if cached is None else [(PolicyRef(cached.policy_dn),
                                               policy_from_entries(cached.policy_dn, cached.entries))]
        out = []
        for key, attrs in sorted(entries.items()):
            if "ipsecpolicy" in {c.casefold() for c in texts(attrs, "objectClass")}:
                try:
                    out.append((PolicyRef(text(attrs, "distinguishedName") or key),
                                policy_from_entries(key, entries)))
                except PolicyError:
                    continue  # reported when it is assigned and loaded
        return out

    def save(self, policy: Policy) -> PolicyRef:
        raise PermissionError("this node's policies come from the directory, where a member cannot write: "
                              "import with `ipsecctl static import FILE` and administrator credentials "
                              "(docs/directory.md)")

    # --- the directory

    def _connected(self) -> Directory:
        """The kept connection, or a new one; after a failure, no new attempt for retry_after seconds."""
        if self._directory.conn is not None:
            return self._directory
        if self._failed and self.clock() - self._failed[0] < self.retry_after:
            raise self._failed[1]
        started = time.monotonic()
        try:
            self._directory.connect()
        except DirectoryUnavailable as e:
            self._failed = (self.clock(), e)
            self.status.timings["failed_connect"] = time.monotonic() - started
            raise
        self.status.timings["bind"] = time.monotonic() - started
        self._failed = None
        return self._directory

    def _failed_now(self, error: DirectoryUnavailable) -> None:
        """Remember a new failure; the remembered one raised again does not put the next try off (polls more
        frequent than retry_after would never reach the DC again)."""
        if self._failed is None or self._failed[1] is not error:
            self._failed = (self.clock(), error)

    def _search(self, base: str, scope: str, ldap_filter: str, attributes: Iterable[str]) \
            -> builtins.list[tuple[str, Attributes]]:
        """One search; a kept connection that broke (the DC restarted) is replaced once. The seconds of a
        failed attempt (timeouts included; not a remembered failure raised again) go to
        status.timings["failed_search"]."""
        fresh, started = self._directory.conn is None, time.monotonic()
        remembered = self._failed[1] if self._failed else None
        try:
            try:
                found = self._connected().search(base, scope, ldap_filter, tuple(attributes))
            except DirectoryUnavailable as e:
                if fresh:
                    self._failed_now(e)
                    raise
                found = self._connected().search(base, scope, ldap_filter, tuple(attributes))
        except DirectoryUnavailable as e:
            if e is not remembered:
                self.status.timings["failed_search"] = time.monotonic() - started
            raise
        self.status.last_contact = time.time()
        return found

    def _resolve(self) -> None:
        """Read the member's GPO chain and the IPsec pointers: which policy is assigned, by which GPO."""
        domain = self.server.domain_dn
        account = self.credentials.principal.split("@")[0]
        found = self._search(domain, SUBTREE, f"(&(objectClass=computer)(sAMAccountName={account}))", ["cn"])
        if not found:
            raise DirectoryUnavailable(f"{self.server.describe()}: no computer account {account} in {domain}")
        chain = []
        for dn in scopes(found[0][0], domain):
            found_scope = self._search(dn, BASE, "(objectClass=*)", ["gPLink", "gPOptions"])
            attrs = found_scope[0][1] if found_scope else {}
            try:
                chain.append(Container.from_attributes(dn, text(attrs, "gPLink"), text(attrs, "gPOptions")))
            except DirectoryError as e:
                self._note("policy-refused", f"{e}: the container's links are ignored")
                chain.append(Container(dn))
        gpos = []
        for gpo_dn in precedence(chain):
            gpo = self._search(gpo_dn, BASE, "(objectClass=groupPolicyContainer)", ["flags"])
            if gpo and not int(text(gpo[0][1], "flags") or 0) & GPO_MACHINE_DISABLED:
                gpos.append(gpo_dn)

        def pointer(dn: str) -> str | None:
            return next((text(attrs, "ipsecOwnersReference") for _, attrs in
                         self._search(dn, BASE, "(objectClass=*)", ["ipsecOwnersReference"])), None)

        chosen, orphaned = assigned(gpos, pointer), ""
        if chosen is None:
            chosen, orphaned = self._orphan(self._assignment)
        if orphaned and not self._orphaned:
            assert chosen is not None
            self._note("policy-warning", f"the GPO {chosen.gpo_dn} that assigned {chosen.policy_dn} was "
                                         "deleted without unassigning it first: its cached copy stays")
        previous, self._assignment, self._orphaned = self._assignment, chosen, orphaned
        self._resolved_at, self._failed = self.clock(), None
        if self._assignment is None:
            self.cache.clear()
        if previous != self._assignment:
            self._stamps.clear()
            self._usn = (None, None)

    def _orphan(self, previous: Assignment | None) -> tuple[Assignment | None, str]:
        """The documents' warning, when no GPO assigns a policy: the assignment known so far (or, after a
        restart, the cache's) stays if its GPO was deleted rather than unassigned, served from the cache as a
        policy that "cannot be located" (the assignment, and why). (None, "") when its GPO is still there
        (unassigned or unlinked: the policy goes, as it should)."""
        known = previous
        if known is None:
            try:
                cached = self.cache.read()
            except PolicyError:
                return None, ""
            if cached is None or not cached.gpo_dn:
                return None, ""
            known = Assignment(cached.policy_dn, cached.gpo_dn, ipsec_pointer_dn(cached.gpo_dn))
        if self._search(known.gpo_dn, BASE, "(objectClass=*)", ["cn"]):
            return None, ""
        return known, (f"the GPO {known.gpo_dn} that assigned it was deleted without unassigning it first: "
                       "the policy cannot be located, its cached copy stays in force")

    def _directory_stamp(self, policy_dn: str) -> Stamp:
        root = self._search("", BASE, "(objectClass=*)", ["highestCommittedUSN", "dsServiceName"])
        attrs = root[0][1] if root else {}
        usn = (text(attrs, "dsServiceName"), text(attrs, "highestCommittedUSN"))
        known = self._stamps.get(dn_key(policy_dn))
        if known is not None and usn == self._usn and usn[1] is not None:
            return known  # nothing at all was written on this DC since the last look
        entries = self._ipsec_entries(["uSNChanged", *REFERENCES])
        stamp = graph_stamp(policy_dn, entries)
        self._stamps[dn_key(policy_dn)], self._usn = stamp, usn
        return stamp

    def _ipsec_entries(self, attributes: Iterable[str] = ("*", "uSNChanged", "whenChanged")) \
            -> dict[str, Attributes]:
        found = self._search(self.server.store_dn, SUBTREE, IPSEC_FILTER,
                             ["objectClass", "distinguishedName", *attributes])
        return {dn_key(dn): {**attrs, "distinguishedName": [dn.encode()]} for dn, attrs in found}

    def _download(self, policy_dn: str) -> Policy:
        entries = self._ipsec_entries()
        policy = policy_from_entries(policy_dn, entries)
        graph = {key: entries[key] for key in policy_graph(policy_dn, entries) if key in entries}
        stamp = graph_stamp(policy_dn, entries)
        self._stamps[dn_key(policy_dn)] = stamp
        gpo = self._assignment.gpo_dn if self._assignment else ""
        self.cache.write(CachedPolicy(policy_dn, gpo, stamp, graph, time.time()))
        self._report("directory", policy, policy_dn, gpo)
        return policy

    # --- the cache and the local store

    def _use_cache(self, reason: str, announce: bool = True) -> CachedPolicy | None:
        """The cached policy, served because of `reason` (the DC cannot be used: a store-unavailable event
        when the cache starts to serve, if `announce`)."""
        started = time.monotonic()
        try:
            cached = self.cache.read()
        except PolicyError as e:
            self._note("store-unavailable", f"{reason}; {e}")
            return None
        if cached is not None:
            if self.status.source != "cache" and announce:
                self._note("store-unavailable", f"{reason}; using the cached {cached.policy_dn}")
            self.status.source, self.status.reason = "cache", reason
            self.status.timings["cache_read"] = time.monotonic() - started
        return cached

    def _cached_copy(self, ref: PolicyRef, reason: str, announce: bool = True) -> CachedPolicy | None:
        """The cache, if it holds the policy `ref` names."""
        cached = self._use_cache(reason, announce)
        return cached if cached and dn_key(cached.policy_dn) == dn_key(ref.location) else None

    def _cache_matches(self, policy_dn: str, stamp: Stamp) -> bool:
        try:
            cached = self.cache.read()
        except PolicyError:
            return False
        return cached is not None and dn_key(cached.policy_dn) == dn_key(policy_dn) and cached.stamp == stamp

    def _cached_ref(self, error: DirectoryUnavailable) -> PolicyRef | None:
        cached = self._use_cache(str(error))
        if cached is not None:
            return PolicyRef(cached.policy_dn)
        if self.local is not None:
            return self._local_ref(str(error))
        raise StoreUnavailable(f"{error}; no cached policy") from None

    def _local_ref(self, reason: str = "no Group Policy object assigns an IPsec policy") -> PolicyRef | None:
        ref = self.local.assigned_policy() if self.local else None
        self.status.source, self.status.reason = ("local" if ref else "none"), reason
        if ref is None:  # what an earlier directory policy left there no longer applies
            s = self.status
            s.policy_dn = s.ipsec_id = s.when_changed = s.gpo_dn = None
        return ref

    def _is_local(self, ref: PolicyRef) -> bool:
        return not ref.location.upper().startswith("CN=")

    def _report(self, source: str, policy: Policy, policy_dn: str | None, gpo_dn: str | None) -> None:
        s = self.status
        s.source, s.policy_dn, s.gpo_dn = source, policy_dn, gpo_dn
        s.ipsec_id, s.when_changed = ipsec_id(policy.guid), policy.when_changed
        if source == "directory":
            s.reason = ""

    def _note(self, kind: str, message: str) -> None:
        if self.log:
            self.log(kind, message)
