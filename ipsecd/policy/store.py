"""Policy stores: where policies live, behind one interface the Policy Agent reads through.

``LocalStore`` is the node's own store, a folder (the documents' local registry key): one YAML file per
policy and an ``assigned`` file naming the one assigned policy. A directory store on a domain controller
(ipsecPolicy -> ipsecISAKMPPolicy, ipsecNFA -> ipsecFilter + ipsecNegotiationPolicy objects, same GUIDs
and change stamps as the model) and its local cache (a LocalStore in another folder, written after each
successful download, read when the DC cannot be reached) implement the same ``PolicyStore`` protocol;
the agent then reads the directory first (domain policy takes precedence over local).

>>> import tempfile
>>> from ipsecd.policy.predefined import predefined
>>> store = LocalStore(tempfile.mkdtemp())
>>> ref = store.save(predefined("secure server"))
>>> store.assign(ref)
>>> store.assigned_policy() == ref, Path(ref.location).name
(True, 'secure-server-require-security.yaml')
"""

from __future__ import annotations

import os
import re
import uuid
from collections.abc import Hashable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from ipsecd.policy import policyfile
from ipsecd.policy.model import Policy
from ipsecd.policy.validate import PolicyError

ASSIGNED = "assigned"


@dataclass(frozen=True)
class PolicyRef:
    """Where a policy is in its store: a file path here, a distinguished name in a directory."""

    location: str


class StoreUnavailable(Exception):
    """The store cannot be reached right now (a DC down); the agent keeps the policy in force."""


class PolicyStore(Protocol):
    def assigned_policy(self) -> PolicyRef | None:
        """The policy assigned to this node, or None (the agent then waits for one)."""

    def load(self, ref: PolicyRef) -> Policy:
        """The whole policy, validated; PolicyError names what is wrong."""

    def change_stamp(self, ref: PolicyRef) -> Hashable:
        """A cheap value that moves whenever the policy or any of its parts changes (for polling)."""

    def list(self) -> list[tuple[PolicyRef, Policy]]:
        """Every valid policy in the store."""

    def save(self, policy: Policy) -> PolicyRef:
        """Store a policy, replacing the one with the same GUID (import keeps identity and stamps)."""


class LocalStore:
    """A folder of policy files plus an ``assigned`` pointer file holding one file name."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)

    def assigned_policy(self) -> PolicyRef | None:
        try:
            name = (self.root / ASSIGNED).read_text().strip()
        except FileNotFoundError:
            return None
        return PolicyRef(str(self.root / name)) if name else None

    def assign(self, ref: PolicyRef | None) -> None:
        """Assign a policy of this store (None unassigns): what the snap-in's 'Assign' does locally."""
        pointer = self.root / ASSIGNED
        if ref is None:
            pointer.unlink(missing_ok=True)
            return
        path = Path(ref.location)
        if path.parent.resolve() != self.root.resolve():
            raise ValueError(f"{ref.location} is not in the store {self.root}")
        policyfile.write_atomically(pointer, path.name + "\n")

    def load(self, ref: PolicyRef) -> Policy:
        return policyfile.load(ref.location)

    def change_stamp(self, ref: PolicyRef) -> Hashable:
        """The file's inode, size and modification time: any edit or replacement moves it."""
        try:
            st = os.stat(ref.location)
        except FileNotFoundError:
            return None
        return (st.st_ino, st.st_size, st.st_mtime_ns)

    def list(self) -> list[tuple[PolicyRef, Policy]]:
        out = []
        for path in sorted(self.root.glob("*.yaml")):
            try:
                out.append((PolicyRef(str(path)), policyfile.load(path)))
            except PolicyError:
                continue  # a broken file is reported when someone assigns or loads it
        return out

    def find(self, guid: uuid.UUID) -> PolicyRef | None:
        return next((ref for ref, policy in self.list() if policy.guid == guid), None)

    def save(self, policy: Policy) -> PolicyRef:
        ref = self.find(policy.guid) or PolicyRef(str(self._free_name(policy.name)))
        policyfile.save(policy, ref.location)
        return ref

    def _free_name(self, name: str) -> Path:
        slug = re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-") or "policy"
        path, n = self.root / f"{slug}.yaml", 1
        while path.exists():
            n += 1
            path = self.root / f"{slug}-{n}.yaml"
        return path

