"""What the Policy Agent hands IKE: main mode settings for the node, quick mode settings per rule.

The driver tags every specific filter with its rule's name (``spd.Filter.rule``) and passes it to
``ike.acquire(rule, selector)``; IKE finds that rule's settings here with ``IKEPolicy.rule(name)``. As a
responder, IKE matches the peer's proposed traffic against the SPD to find the rule, and uses
``default_response`` when no rule matches (securing only what the peer asked for).

>>> from ipsecd.policy.predefined import predefined
>>> s = ike_settings(predefined("secure server"))
>>> [str(m) for m in s.main_mode.methods], s.main_mode.lifetime_seconds
(['3DES-SHA1-2', '3DES-MD5-2', 'DES-SHA1-1', 'DES-MD5-1'], 28800)
>>> s.rule("All IP Traffic").fallback_to_clear, s.default_response.rule
(False, '<Dynamic> default response')
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from ipaddress import IPv4Address

from ipsecd import spd
from ipsecd.policy.model import AuthMethod, ConnectionType, DefaultResponseRule, MainModeMethod, Policy, Rule


@dataclass(frozen=True)
class MainModePolicy:
    """Phase 1: offers in order, master key lifetime, and how many quick modes one main mode may key."""

    methods: tuple[MainModeMethod, ...]
    lifetime_seconds: int
    sessions_limit: int  # 0 = unlimited; master key PFS forces 1 (a new main mode for every quick mode)
    master_key_pfs: bool


@dataclass(frozen=True)
class QuickModePolicy:
    """Phase 2 for one rule: who we accept (authentication, in order) and what we offer."""

    rule: str
    authentication: tuple[AuthMethod, ...]
    offers: tuple[spd.SecurityMethod, ...]
    pfs: bool = False
    tunnel: IPv4Address | None = None
    accept_unsecured: bool = False
    fallback_to_clear: bool = False
    connection_type: ConnectionType = ConnectionType.ALL


@dataclass(frozen=True)
class IKEPolicy:
    policy: str
    guid: uuid.UUID
    main_mode: MainModePolicy
    rules: tuple[QuickModePolicy, ...]
    default_response: QuickModePolicy | None

    def rule(self, name: str) -> QuickModePolicy | None:
        if self.default_response and name == self.default_response.rule:
            return self.default_response
        return next((r for r in self.rules if r.rule == name), None)


def ike_settings(policy: Policy) -> IKEPolicy:
    kx = policy.key_exchange
    main_mode = MainModePolicy(kx.methods, kx.lifetime_seconds, 1 if kx.master_key_pfs else kx.sessions,
                               kx.master_key_pfs)
    rules = tuple(quick_mode(r) for r in policy.rules
                  if r.active and r.filter_action.action is spd.Action.NEGOTIATE)
    default = policy.default_response
    return IKEPolicy(policy.name, policy.guid, main_mode, rules,
                     default_response(default) if default and default.active else None)


def quick_mode(rule: Rule) -> QuickModePolicy:
    a = rule.filter_action
    return QuickModePolicy(rule.name, rule.authentication, a.security_methods, a.pfs, rule.tunnel,
                           a.accept_unsecured, a.fallback_to_clear, rule.connection_type)


def default_response(rule: DefaultResponseRule) -> QuickModePolicy:
    return QuickModePolicy(rule.name, rule.authentication, rule.security_methods)
