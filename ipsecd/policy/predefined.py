"""The three predefined policies of Windows Server 2003, as policy files loaded by the same loader.

- Client (Respond Only): only the default response rule; secures what a peer asks for, nothing else.
- Server (Request Security): All IP Traffic -> Request Security (Optional): accepts unsecured inbound,
  asks for security, falls back to clear with a peer that never answers IKE; All ICMP Traffic -> Permit.
- Secure Server (Require Security): All IP Traffic -> Require Security: accepts an unsecured first packet
  but always answers secured, never falls back; All ICMP Traffic -> Permit.

Their GUIDs, security methods, lifetimes and 180-minute polling interval are those of the default policy
objects a domain controller holds (decoded from their ipsecData). They authenticate with Kerberos, as
Windows does; ``predefined(name, authentication=...)`` gives the same policy with other methods, as an
administrator editing the rules would.

>>> [r.name for r in predefined("server").rules], predefined("client").rules
(['All IP Traffic', 'All ICMP Traffic'], ())
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from ipsecd.policy import policyfile
from ipsecd.policy.model import AuthMethod, Policy

FOLDER = Path(__file__).with_name("predefined-policies")
FILES = {
    "client": "client-respond-only.yaml",
    "server": "server-request-security.yaml",
    "secure server": "secure-server-require-security.yaml",
}


def predefined(name: str, authentication: tuple[AuthMethod, ...] | None = None) -> Policy:
    """'client', 'server' or 'secure server' (or the full Windows name, any case)."""
    key = name.lower().split(" (")[0]
    if key not in FILES:
        raise KeyError(f"{name!r}: the predefined policies are {', '.join(FILES)}")
    policy = policyfile.load(FOLDER / FILES[key])
    if authentication is None:
        return policy
    rules = tuple(dataclasses.replace(r, authentication=authentication) for r in policy.rules)
    response = policy.default_response and dataclasses.replace(policy.default_response,
                                                               authentication=authentication)
    return dataclasses.replace(policy, rules=rules, default_response=response)


def all_predefined() -> list[Policy]:
    return [predefined(name) for name in FILES]
