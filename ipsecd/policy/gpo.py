"""Group Policy resolution, pure logic: which GPOs apply to a computer, in which precedence, and which one's
IPsec policy it runs.

The Windows rules ([MS-GPOL], as GPMC shows them): GPOs linked to the domain and to each OU above the
computer apply, the nearer container winning (local < site < domain < OU < child OU). Within one container
the link order decides: a container's ``gPLink`` lists its links lowest precedence first, so the last
``[LDAP://...;options]`` entry is link order 1 (a new link is prepended: it starts with the lowest
precedence). A disabled link (option bit 1) is ignored. An OU with ``gPOptions`` = 1 blocks inheritance:
links of the containers above it no longer apply, except enforced ones (option bit 2). Enforced links win
over every non-enforced one, and among enforced links the one nearer the domain wins (a domain
administrator's enforcement cannot be overridden by an OU's).

The IPsec part ([MS-GPIPSEC]): a GPO assigns an IPsec policy through an object
``CN=ipsec,CN=Windows,CN=Microsoft,CN=Machine,<GPO DN>`` whose ``ipsecOwnersReference`` names the
ipsecPolicy. The computer runs the policy of the highest-precedence GPO that has one; policies are never
merged.

>>> domain = Container("DC=lab,DC=test", parse_gplink("[LDAP://cn={A},cn=policies,cn=system,DC=lab,DC=test;0]"))
>>> servers = Container("OU=Servers,DC=lab,DC=test",
...                     parse_gplink("[LDAP://cn={B},cn=policies,cn=system,DC=lab,DC=test;0]"))
>>> [gpo_guid(dn) for dn in precedence([domain, servers])]
['{B}', '{A}']
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from ipsecd.policy.directory_model import DirectoryError, dn_key

LINK_DISABLED = 1
LINK_ENFORCED = 2
BLOCK_INHERITANCE = 1
POLICIES = "CN=Policies,CN=System"
IPSEC_POINTER = "CN=ipsec,CN=Windows,CN=Microsoft,CN=Machine"
_LINK = re.compile(r"\[LDAP://([^;\]]+);(\d+)\]", re.IGNORECASE)


@dataclass(frozen=True)
class GPLink:
    """One link of a container's gPLink: the GPO's DN and the link options."""

    gpo_dn: str
    options: int = 0

    @property
    def disabled(self) -> bool:
        return bool(self.options & LINK_DISABLED)

    @property
    def enforced(self) -> bool:
        return bool(self.options & LINK_ENFORCED)


@dataclass(frozen=True)
class Container:
    """A scope of management (the domain, an OU; a site): its links as gPLink holds them, and gPOptions."""

    dn: str
    links: tuple[GPLink, ...] = ()
    block_inheritance: bool = False

    @classmethod
    def from_attributes(cls, dn: str, gplink: str | None, gpoptions: str | int | None) -> Container:
        """From the container's gPLink and gPOptions as LDAP returns them (either may be absent)."""
        try:
            options = int(gpoptions or 0)
        except ValueError:
            raise DirectoryError(dn, "gPOptions", f"{gpoptions!r} is not a number") from None
        return cls(dn, parse_gplink(gplink or "", dn), bool(options & BLOCK_INHERITANCE))


def parse_gplink(text: str, where: str = "<gPLink>") -> tuple[GPLink, ...]:
    """'[LDAP://cn={GUID},cn=policies,...;0][LDAP://...;2]' -> links, in the attribute's order."""
    links, end = [], 0
    for match in [*_LINK.finditer(text), None]:
        between = text[end:match.start() if match else len(text)]
        if between.strip():
            raise DirectoryError(where, "gPLink", f"{between!r} is not a [LDAP://dn;options] link")
        if match:
            links.append(GPLink(match.group(1).strip(), int(match.group(2))))
            end = match.end()
    return tuple(links)


def format_gplink(links: Iterable[GPLink]) -> str:
    return "".join(f"[LDAP://{link.gpo_dn};{link.options}]" for link in links)


def gpo_dn(guid: str, domain_dn: str) -> str:
    """'{31B2F340-...}' -> 'CN={31B2F340-...},CN=Policies,CN=System,DC=...'."""
    return f"CN={guid},{POLICIES},{domain_dn}"


def gpo_guid(dn: str) -> str:
    """The GPO's curly-braced GUID, its CN."""
    return dn.split(",")[0].partition("=")[2].strip()


def ipsec_pointer_dn(gpo: str) -> str:
    """Where a GPO points at its IPsec policy ([MS-GPIPSEC])."""
    return f"{IPSEC_POINTER},{gpo}"


def scopes(member_dn: str, domain_dn: str) -> list[str]:
    """The containers whose links apply to the object, domain first, then each OU down to its parent.

    'CN=member-a,OU=Servers,DC=lab,DC=test' -> ['DC=lab,DC=test', 'OU=Servers,DC=lab,DC=test']. Plain
    containers (CN=Computers) take no links and are skipped.
    """
    parts = [p.strip() for p in member_dn.split(",")]
    domain_parts = len([p for p in domain_dn.split(",") if p.strip()])
    if dn_key(",".join(parts[-domain_parts:])) != dn_key(domain_dn):
        raise DirectoryError(member_dn, "distinguishedName", f"is not in the domain {domain_dn}")
    out = [domain_dn]
    for depth in range(len(parts) - domain_parts - 1, 0, -1):
        if parts[depth].upper().startswith("OU="):
            out.append(",".join(parts[depth:]))
    return out


def precedence(chain: Sequence[Container], site: Container | None = None) -> list[str]:
    """GPO DNs that apply, highest precedence first.

    ``chain`` is the domain first, then the OUs down to the computer's own (``scopes``' order). A GPO
    linked twice counts at its highest-precedence link.
    """
    containers = ([site] if site else []) + list(chain)
    enforced: list[str] = []  # highest first: the container nearest the top wins
    for container in containers:
        enforced += [link.gpo_dn for link in reversed(container.links) if link.enforced and not link.disabled]
    normal: list[str] = []  # highest first: the nearest container, until one blocks inheritance
    for container in reversed(containers):
        normal += [link.gpo_dn for link in reversed(container.links)
                   if not link.enforced and not link.disabled]
        if container.block_inheritance:
            break
    seen: set[str] = set()
    out = []
    for dn in enforced + normal:
        if dn_key(dn) not in seen:
            seen.add(dn_key(dn))
            out.append(dn)
    return out


@dataclass(frozen=True)
class Assignment:
    """The IPsec policy a computer runs, and the GPO that assigns it."""

    policy_dn: str
    gpo_dn: str
    pointer_dn: str


def assigned(gpos: Sequence[str], pointer: Callable[[str], str | None]) -> Assignment | None:
    """The first GPO (highest precedence) whose IPsec pointer names a policy; ``pointer(dn)`` reads the
    pointer object's ipsecOwnersReference (None when the GPO has no pointer object or the pointer is
    empty)."""
    for gpo in gpos:
        policy = pointer(ipsec_pointer_dn(gpo))
        if policy:
            return Assignment(policy, gpo, ipsec_pointer_dn(gpo))
    return None
