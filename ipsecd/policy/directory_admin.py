"""Administer IPsec policies in the directory, as the IP Security Policies snap-in and ``netsh ipsec static``
do: list, show, create, import, export and delete policies under ``CN=IP Security,CN=System``; create and
delete Group Policy objects, link them to the domain or an OU, block inheritance, assign and unassign an
IPsec policy in a GPO; show which GPOs apply to a computer and which policy it gets (``resolve``).

It works from any machine that reaches the DC's LDAPS port, with administrator credentials (a password, or
a keytab for Kerberos): everything is written over LDAP, including the GPO (its groupPolicyContainer object
with the User and Machine containers; the GPO's files in sysvol are not written: the IPsec extension keeps
its data in the directory, and the lab's DC serves no SMB). See docs/directory.md.

    directory_admin.main(["--server", "10.0.0.10", "--realm", "LAB.TEST", "--ca", "ca.pem",
                          "--user", "Administrator", "--password-file", "pw", "list"])
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ipsecd.policy import policyfile
from ipsecd.policy.directory_model import DirectoryError, dn_key, ipsec_id, object_dn, policy_to_objects
from ipsecd.policy.directory_store import IPSEC_FILTER, REFERENCES, policy_from_entries, policy_graph
from ipsecd.policy.gpo import (
    LINK_DISABLED,
    LINK_ENFORCED,
    Container,
    GPLink,
    assigned,
    format_gplink,
    gpo_dn,
    ipsec_pointer_dn,
    parse_gplink,
    precedence,
    scopes,
)
from ipsecd.policy.ldap_directory import (
    BASE,
    SUBTREE,
    Attributes,
    Credentials,
    Directory,
    DirectoryServer,
    DirectoryUnavailable,
    DirectoryWriteError,
    text,
    texts,
)
from ipsecd.policy.model import AuthKind, AuthMethod, DefaultResponseRule, Policy
from ipsecd.policy.validate import PolicyError

IPSEC_CSE = "[{E437BC1C-AA7D-11D2-A382-00C04F991E27}{DEA8AFA0-CC85-11D0-9CE2-0080C7E9D48E}]"
MODIFY_REPLACE = "MODIFY_REPLACE"  # ldap3's spelling


class AdminError(Exception):
    """A request that cannot be done as asked: no such policy or GPO, two with the same name."""


class Admin:
    """The operations, on one administrator connection."""

    def __init__(self, directory: Directory) -> None:
        self.d = directory
        self.domain = directory.server.domain_dn
        self.store = directory.server.store_dn

    # --- policies

    def entries(self) -> dict[str, Attributes]:
        found = self.d.search(self.store, SUBTREE, IPSEC_FILTER, ["*", "uSNChanged", "whenChanged"])
        return {dn_key(dn): {**attrs, "distinguishedName": [dn.encode()]} for dn, attrs in found}

    def policies(self) -> list[tuple[str, Attributes]]:
        return sorted(((text(a, "distinguishedName") or k, a) for k, a in self.entries().items()
                       if "ipsecpolicy" in {c.casefold() for c in texts(a, "objectClass")}),
                      key=lambda p: (text(p[1], "ipsecName") or "").casefold())

    def find_policy(self, which: str) -> str:
        """A policy's DN from its name, ipsecID or DN."""
        matches = [dn for dn, a in self.policies()
                   if which.casefold() in {(text(a, "ipsecName") or "").casefold(), dn.casefold(),
                                           (text(a, "ipsecID") or "").casefold().strip("{}")}
                   or which.casefold().strip("{}") == (text(a, "ipsecID") or "").casefold().strip("{}")]
        if len(matches) != 1:
            raise AdminError(f"{len(matches)} policies match {which!r} in {self.store}")
        return matches[0]

    def load(self, which: str) -> Policy:
        dn = self.find_policy(which)
        return policy_from_entries(dn, self.entries())

    def write(self, policy: Policy) -> str:
        """Create or replace the policy (same GUIDs: an import overwrites the objects it came from), writing
        only what changed, so that an edit of one filter moves that filter's uSNChanged alone."""
        existing = self.entries()
        policy_dn = object_dn("ipsecPolicy", policy.guid, self.store)
        old = set(policy_graph(policy_dn, existing)) if dn_key(policy_dn) in existing else set()
        objects = policy_to_objects(policy, self.store)
        for obj in objects:  # leaves first; owners (pointing up) in a second pass
            attrs = obj.to_ldap()
            attrs.pop("ipsecOwnersReference", None)
            self._put(obj.dn, attrs, existing.get(dn_key(obj.dn)))
        new = {dn_key(o.dn) for o in objects}
        for obj in objects:
            kept = [dn for dn in texts(existing.get(dn_key(obj.dn), {}), "ipsecOwnersReference")
                    if dn_key(dn) not in old and dn_key(dn) in existing]
            owners = list(dict.fromkeys([*obj.owners, *kept]))
            current = texts(existing.get(dn_key(obj.dn), {}), "ipsecOwnersReference")
            if sorted(map(dn_key, owners)) != sorted(map(dn_key, current)):
                self.d.write("modify", obj.dn, {"ipsecOwnersReference": [(MODIFY_REPLACE, owners)]})
        self._remove_orphans(old - new)
        return policy_dn

    def _put(self, dn: str, attrs: dict[str, list[Any]], current: Attributes | None) -> None:
        if current is None:
            classes = attrs.pop("objectClass")
            self.d.write("add", dn, classes, attrs)
            return
        changes = {}
        for name in ("ipsecName", "description", "ipsecDataType", "ipsecData", "ipsecID", *REFERENCES,
                     "iPSECNegotiationPolicyType", "iPSECNegotiationPolicyAction"):
            want = attrs.get(name, [])
            have = texts(current, name) if name != "ipsecData" else list(current.get("ipsecData", []))
            same = (sorted(map(dn_key, map(str, want))) == sorted(map(dn_key, have)) if name in REFERENCES
                    else [v if isinstance(v, bytes) else str(v) for v in want] == have)
            if not same:
                changes[name] = [(MODIFY_REPLACE, want)]
        if changes:
            self.d.write("modify", dn, changes)

    def _remove_orphans(self, candidates: set[str]) -> None:
        """Delete objects a policy no longer uses, unless another object still refers to them."""
        while candidates:
            entries = self.entries()
            referenced = {dn_key(dn) for a in entries.values() for n in REFERENCES for dn in texts(a, n)}
            gone = [k for k in candidates if k in entries and k not in referenced]
            if not gone:
                return
            for key in gone:
                self.d.write("delete", text(entries[key], "distinguishedName") or key)
            candidates -= set(gone)

    def delete(self, which: str) -> str:
        dn = self.find_policy(which)
        for pointer, _ in self.d.search(f"CN=Policies,CN=System,{self.domain}", SUBTREE,
                                        f"(ipsecOwnersReference={dn})", ["cn"]):
            raise AdminError(f"{dn} is assigned by {pointer}: unassign it first")
        graph = set(policy_graph(dn, self.entries()))
        self.d.write("delete", dn)
        self._remove_orphans(graph - {dn_key(dn)})
        return dn

    # --- Group Policy objects

    def gpos(self) -> list[tuple[str, Attributes]]:
        return self.d.search(f"CN=Policies,CN=System,{self.domain}", "LEVEL",
                             "(objectClass=groupPolicyContainer)", ["displayName", "flags", "versionNumber"])

    def find_gpo(self, which: str) -> str:
        matches = [dn for dn, a in self.gpos()
                   if which.casefold().strip("{}") in {(text(a, "displayName") or "").casefold(),
                                                       dn.split(",")[0][3:].casefold().strip("{}")}]
        if len(matches) != 1:
            raise AdminError(f"{len(matches)} Group Policy objects match {which!r}")
        return matches[0]

    def create_gpo(self, name: str) -> str:
        guid = "{" + str(uuid.uuid4()).upper() + "}"
        dn = gpo_dn(guid, self.domain)
        realm = self.d.server.realm.lower()
        self.d.write("add", dn, ["top", "container", "groupPolicyContainer"], {
            "displayName": name, "flags": "0", "versionNumber": "0", "gPCFunctionalityVersion": "2",
            "gPCFileSysPath": f"\\\\{realm}\\SysVol\\{realm}\\Policies\\{guid}"})
        for part in ("CN=User", "CN=Machine"):
            self.d.write("add", f"{part},{dn}", ["top", "container"], {})
        return dn

    def delete_gpo(self, which: str) -> str:
        """Delete the GPO and its links; an IPsec policy it assigned stays assigned in members' caches."""
        dn = self.find_gpo(which)
        for container, attrs in self.d.search(self.domain, SUBTREE, f"(gPLink=*{dn.split(',')[0][3:]}*)",
                                              ["gPLink"]):
            self._set_links(container, [link for link in parse_gplink(text(attrs, "gPLink") or "", container)
                                        if dn_key(link.gpo_dn) != dn_key(dn)])
        below = self.d.search(dn, SUBTREE, "(objectClass=*)", ["cn"])
        for child, _ in sorted(below, key=lambda e: -e[0].count(",")):
            self.d.write("delete", child)
        return dn

    def links(self, container: str) -> list[GPLink]:
        found = self.d.search(container, BASE, "(objectClass=*)", ["gPLink"])
        if not found:
            raise AdminError(f"no container {container}")
        return list(parse_gplink(text(found[0][1], "gPLink") or "", container))

    def _set_links(self, container: str, links: Sequence[GPLink]) -> None:
        value = [format_gplink(links)] if links else []
        self.d.write("modify", container, {"gPLink": [(MODIFY_REPLACE, value)]})

    def link(self, which: str, container: str, enforced: bool = False, disabled: bool = False) -> str:
        """Link (or re-flag a link); a new link gets the lowest precedence in its container, as GPMC does."""
        dn = self.find_gpo(which)
        options = (LINK_ENFORCED if enforced else 0) | (LINK_DISABLED if disabled else 0)
        links = self.links(container)
        if any(dn_key(link.gpo_dn) == dn_key(dn) for link in links):
            links = [GPLink(link.gpo_dn, options) if dn_key(link.gpo_dn) == dn_key(dn) else link
                     for link in links]
        else:
            links.insert(0, GPLink(dn, options))
        self._set_links(container, links)
        return dn

    def unlink(self, which: str, container: str) -> str:
        dn = self.find_gpo(which)
        self._set_links(container, [link for link in self.links(container)
                                    if dn_key(link.gpo_dn) != dn_key(dn)])
        return dn

    def block_inheritance(self, container: str, block: bool) -> None:
        self.d.write("modify", container, {"gPOptions": [(MODIFY_REPLACE, ["1" if block else "0"])]})

    def assign(self, which_gpo: str, which_policy: str) -> str:
        """Point the GPO at the policy ([MS-GPIPSEC]: CN=ipsec under the GPO's machine part)."""
        gpo, policy = self.find_gpo(which_gpo), self.find_policy(which_policy)
        name = text(self.entries()[dn_key(policy)], "ipsecName") or ""
        machine = f"CN=Machine,{gpo}"
        for part in ("CN=Microsoft", "CN=Windows,CN=Microsoft"):
            if not self.d.search(f"{part},{machine}", BASE, "(objectClass=*)", ["cn"]):
                self.d.write("add", f"{part},{machine}", ["top", "container"], {})
        pointer = ipsec_pointer_dn(gpo)
        attrs = {"ipsecOwnersReference": [policy], "ipsecName": [name], "description": [name]}
        if self.d.search(pointer, BASE, "(objectClass=*)", ["cn"]):
            self.d.write("modify", pointer, {k: [(MODIFY_REPLACE, v)] for k, v in attrs.items()})
        else:
            self.d.write("add", pointer, ["top", "ipsecPolicy"], attrs)
        self._touch(gpo, add_extension=True)
        return pointer

    def unassign(self, which_gpo: str) -> str:
        gpo = self.find_gpo(which_gpo)
        pointer = ipsec_pointer_dn(gpo)
        if not self.d.search(pointer, BASE, "(objectClass=*)", ["cn"]):
            raise AdminError(f"{gpo} assigns no IPsec policy")
        self.d.write("delete", pointer)
        self._touch(gpo, add_extension=False)
        return pointer

    def _touch(self, gpo: str, add_extension: bool) -> None:
        """Bump the GPO's computer version (a Windows client reprocesses a GPO whose version moved) and name
        the IPsec client-side extension in gPCMachineExtensionNames while a policy is assigned."""
        attrs = self.d.search(gpo, BASE, "(objectClass=*)", ["versionNumber"])[0][1]
        version = int(text(attrs, "versionNumber") or 0) + 1
        self.d.write("modify", gpo, {"versionNumber": [(MODIFY_REPLACE, [str(version)])],
                                     "gPCMachineExtensionNames": [(MODIFY_REPLACE,
                                                                   [IPSEC_CSE] if add_extension else [])]})

    def resolve(self, computer: str) -> dict[str, Any]:
        """What the member's Policy Agent will find: its scopes, the GPOs in precedence, the assignment."""
        found = self.d.search(self.domain, SUBTREE,
                              f"(&(objectClass=computer)(sAMAccountName={computer.rstrip('$')}$))", ["cn"])
        if not found:
            raise AdminError(f"no computer {computer} in {self.domain}")
        chain = []
        for dn in scopes(found[0][0], self.domain):
            attrs = self.d.search(dn, BASE, "(objectClass=*)", ["gPLink", "gPOptions"])[0][1]
            chain.append(Container.from_attributes(dn, text(attrs, "gPLink"), text(attrs, "gPOptions")))
        gpos = precedence(chain)

        def pointer(dn: str) -> str | None:
            return next((text(a, "ipsecOwnersReference") for _, a in
                         self.d.search(dn, BASE, "(objectClass=*)", ["ipsecOwnersReference"])), None)

        assignment = assigned(gpos, pointer)
        return {"computer": found[0][0], "scopes": [c.dn for c in chain], "gpos": gpos,
                "policy": assignment.policy_dn if assignment else None,
                "gpo": assignment.gpo_dn if assignment else None}


# --- the command line


def _parser() -> argparse.ArgumentParser:
    env = os.environ.get
    p = argparse.ArgumentParser(prog="ipsecctl static", description=__doc__.split("\n\n")[0])
    p.add_argument("--server", default=env("IPSEC_DC_ADDRESS"), help="the DC's address ($IPSEC_DC_ADDRESS)")
    p.add_argument("--realm", default=env("IPSEC_REALM"), help="e.g. LAB.TEST ($IPSEC_REALM)")
    p.add_argument("--dc-name", default=env("IPSEC_DC_NAME"), help="the DC's host name (default dc.<realm>)")
    p.add_argument("--ca", default=env("IPSEC_DC_CA"), help="the DC's CA certificate ($IPSEC_DC_CA)")
    p.add_argument("--user", default=env("IPSEC_ADMIN", "Administrator"),
                   help="principal (default Administrator)")
    p.add_argument("--password-file", default=env("IPSEC_ADMIN_PASSWORD_FILE"))
    p.add_argument("--keytab", default=env("IPSEC_ADMIN_KEYTAB"), help="Kerberos instead of a password")
    p.add_argument("--json", action="store_true", help="answers as JSON")
    sub = p.add_subparsers(dest="command", required=True)
    sub.add_parser("list", help="the policies in the directory")
    show = sub.add_parser("show", help="one policy, as its YAML file reads (keys hidden)")
    show.add_argument("policy", help="name, ipsecID or DN")
    create = sub.add_parser("create", help="a new policy with only the default response rule")
    create.add_argument("name")
    create.add_argument("--description", default="")
    create.add_argument("--polling-interval", default="180min")
    imp = sub.add_parser("import", help="create or replace a policy from a YAML policy file (GUIDs kept)")
    imp.add_argument("file")
    exp = sub.add_parser("export", help="write a policy to a YAML policy file")
    exp.add_argument("policy")
    exp.add_argument("file")
    delete = sub.add_parser("delete", help="delete a policy and the parts no other policy uses")
    delete.add_argument("policy")
    gpo = sub.add_parser("gpo", help="Group Policy objects").add_subparsers(dest="gpo_command", required=True)
    gpo.add_parser("list")
    gpo.add_parser("create").add_argument("name")
    gpo.add_parser("delete").add_argument("gpo")
    for name in ("link", "unlink"):
        cmd = gpo.add_parser(name)
        cmd.add_argument("gpo")
        cmd.add_argument("container", help="the domain's or an OU's DN")
        if name == "link":
            cmd.add_argument("--enforced", action="store_true")
            cmd.add_argument("--disabled", action="store_true")
    block = gpo.add_parser("block", help="block inheritance on an OU")
    block.add_argument("container")
    block.add_argument("--off", action="store_true")
    assign = sub.add_parser("assign", help="assign a policy in a GPO")
    assign.add_argument("gpo")
    assign.add_argument("policy")
    sub.add_parser("unassign", help="remove the GPO's IPsec policy").add_argument("gpo")
    sub.add_parser("resolve", help="the GPOs and the policy a computer gets").add_argument("computer")
    return p


def _run(admin: Admin, a: argparse.Namespace) -> Any:
    if a.command == "list":
        return [{"name": text(attrs, "ipsecName"), "ipsec_id": text(attrs, "ipsecID"), "dn": dn,
                 "when_changed": text(attrs, "whenChanged")} for dn, attrs in admin.policies()]
    if a.command == "show":
        return policyfile.dumps(admin.load(a.policy), hide_keys=True)
    if a.command == "create":
        policy = Policy(a.name, description=a.description,
                        polling_interval=policyfile.parse_duration(a.polling_interval),
                        default_response=DefaultResponseRule((AuthMethod(AuthKind.KERBEROS),)))
        return {"dn": admin.write(policy), "ipsec_id": ipsec_id(policy.guid)}
    if a.command == "import":
        policy = policyfile.load(a.file)
        return {"dn": admin.write(policy), "ipsec_id": ipsec_id(policy.guid)}
    if a.command == "export":
        policy = admin.load(a.policy)
        policyfile.save(policy, a.file)
        return {"file": a.file, "ipsec_id": ipsec_id(policy.guid)}
    if a.command == "delete":
        return {"deleted": admin.delete(a.policy)}
    if a.command == "assign":
        return {"pointer": admin.assign(a.gpo, a.policy)}
    if a.command == "unassign":
        return {"removed": admin.unassign(a.gpo)}
    if a.command == "resolve":
        return admin.resolve(a.computer)
    g = a.gpo_command
    if g == "list":
        return [{"name": text(attrs, "displayName"), "dn": dn,
                 "ipsec": next((text(x, "ipsecOwnersReference") for _, x in admin.d.search(
                     ipsec_pointer_dn(dn), BASE, "(objectClass=*)", ["ipsecOwnersReference"])), None)}
                for dn, attrs in admin.gpos()]
    if g == "create":
        return {"dn": admin.create_gpo(a.name)}
    if g == "delete":
        return {"deleted": admin.delete_gpo(a.gpo)}
    if g == "link":
        return {"linked": admin.link(a.gpo, a.container, a.enforced, a.disabled), "to": a.container}
    if g == "unlink":
        return {"unlinked": admin.unlink(a.gpo, a.container), "from": a.container}
    admin.block_inheritance(a.container, not a.off)
    return {"container": a.container, "block_inheritance": not a.off}


def connect(a: argparse.Namespace) -> Directory:
    if not a.server or not a.realm:
        raise AdminError("say where the DC is: --server ADDRESS --realm REALM "
                         "(or $IPSEC_DC_ADDRESS, $IPSEC_REALM)")
    server = DirectoryServer(a.server, a.dc_name or f"dc.{a.realm.lower()}", a.realm.upper(), a.ca)
    password = (Path(a.password_file).read_text().strip() if a.password_file
                else os.environ.get("IPSEC_ADMIN_PASSWORD"))
    if not a.keytab and not password:
        raise AdminError("give a password (--password-file, $IPSEC_ADMIN_PASSWORD) or a keytab (--keytab)")
    return Directory(server, Credentials(a.user, keytab=a.keytab, password=password)).connect()


def main(argv: Sequence[str] | None = None) -> int:
    a = _parser().parse_args(argv)
    try:
        directory = connect(a)
        try:
            answer = _run(Admin(directory), a)
        finally:
            directory.close()
    except (AdminError, DirectoryUnavailable, DirectoryWriteError, DirectoryError, PolicyError, OSError) as e:
        print(f"ipsecctl static: {e}", file=sys.stderr)
        return 1
    if isinstance(answer, str):
        print(answer, end="")
    elif a.json:
        print(json.dumps(answer, indent=1))
    else:
        for row in answer if isinstance(answer, list) else [answer]:
            print("  ".join(f"{k}={v}" for k, v in row.items() if not isinstance(v, list))
                  + "".join(f"\n  {k}: {', '.join(map(str, v))}" for k, v in row.items()
                            if isinstance(v, list)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
