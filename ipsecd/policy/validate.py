"""Policy checks: a bad policy is refused with the object and field named, never half applied.

Problems carry a path into the policy ('rules[0].filter_list.filters[2].destination'); the YAML loader adds
the file and line. ``validate`` checks what the data types alone cannot: references between parts, names
that must be unique, settings that make no sense together.

>>> from ipsecd.policy.model import Policy, KeyExchange
>>> validate(Policy("p", key_exchange=KeyExchange(methods=())))
Traceback (most recent call last):
...
ipsecd.policy.validate.PolicyError: key_exchange.methods: main mode needs at least one security method
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from ipsecd.driver import spd
from ipsecd.ike import settings
from ipsecd.policy.model import AuthKind, AuthMethod, Policy, Rule

SESSIONS_MAX = 2_147_483_647  # quick modes per main mode (a DWORD in ipsecISAKMPPolicy's data)


@dataclass(frozen=True)
class Problem:
    path: str
    message: str
    source: str = ""  # 'file:line' when known

    def __str__(self) -> str:
        where = f"{self.source}: " if self.source else ""
        field = f"{self.path}: " if self.path else ""
        return f"{where}{field}{self.message}"


class PolicyError(ValueError):
    """A policy that cannot be applied; str() lists every problem, one a line."""

    def __init__(self, problems: list[Problem]) -> None:
        self.problems = problems
        super().__init__("\n".join(map(str, problems)))


def validate(policy: Policy) -> Policy:
    """Return the policy unchanged, or raise PolicyError naming every problem."""
    problems = [Problem(path, message) for path, message in _check(policy)]
    if problems:
        raise PolicyError(problems)
    return policy


def _check(policy: Policy) -> Iterator[tuple[str, str]]:
    if not policy.name.strip():
        yield "name", "a policy needs a name"
    if policy.polling_interval <= 0:
        yield "polling_interval", "must be more than 0"
    kx = policy.key_exchange
    if not kx.methods:
        yield "key_exchange.methods", "main mode needs at least one security method"
    if not settings.MAIN_MODE_LIFETIME_MIN <= kx.lifetime_seconds <= settings.MAIN_MODE_LIFETIME_MAX:
        yield "key_exchange.lifetime", (f"the master key lifetime is between 5min and 48h (Windows' range), "
                                        f"not {kx.lifetime_seconds} s")
    if not 0 <= kx.sessions <= SESSIONS_MAX:
        yield "key_exchange.sessions", f"must be 0 (unlimited) .. {SESSIONS_MAX}, not {kx.sessions}"
    seen: dict[str, int] = {}
    for i, rule in enumerate(policy.rules):
        if rule.name in seen:
            yield f"rules[{i}].name", f"{rule.name!r} is already the name of rules[{seen[rule.name]}]"
        seen.setdefault(rule.name, i)
        yield from _check_rule(rule, f"rules[{i}]")
    if policy.default_response and policy.default_response.active:
        if not policy.default_response.security_methods:
            yield "default_response_rule.security_methods", "needs at least one security method"
        yield from _check_lifetimes(policy.default_response.security_methods,
                                    "default_response_rule.security_methods")
        yield from _check_auth(policy.default_response.authentication, "default_response_rule.authentication")
    yield from _check_guids(policy)


def _check_rule(rule: Rule, path: str) -> Iterator[tuple[str, str]]:
    if not rule.name.strip():
        yield f"{path}.name", "a rule needs a name"
    if not rule.filter_list.filters:
        yield f"{path}.filter_list.filters", "a filter list needs at least one filter"
    for j, f in enumerate(rule.filter_list.filters):
        fpath = f"{path}.filter_list.filters[{j}]"
        if (f.source_port or f.destination_port) and f.protocol not in (6, 17):
            yield fpath + ".protocol", "ports need protocol tcp or udp"
        if rule.tunnel and f.mirrored:
            yield fpath + ".mirrored", "filters of a tunnel rule cannot be mirrored (one rule per direction)"
    action = rule.filter_action
    apath = f"{path}.filter_action"
    yield from _check_lifetimes(action.security_methods, apath + ".security_methods")
    if action.action is spd.Action.NEGOTIATE:
        if not action.security_methods:
            yield apath + ".security_methods", "negotiate needs at least one security method"
        yield from _check_auth(rule.authentication, f"{path}.authentication")
    else:
        if action.security_methods:
            yield apath + ".security_methods", f"only negotiate uses security methods, not {action.action}"
        for flag in ("accept_unsecured", "fallback_to_clear", "pfs"):
            if getattr(action, flag):
                yield f"{apath}.{flag}", f"only negotiate uses {flag}, not {action.action}"
        if rule.tunnel:
            yield path + ".tunnel", f"a tunnel needs a negotiate action, not {action.action}"


def _check_lifetimes(methods: tuple[spd.SecurityMethod, ...], path: str) -> Iterator[tuple[str, str]]:
    """Session key lifetimes in the ranges Windows takes (it refuses '10s' or '0k' when they are typed)."""
    for k, m in enumerate(methods):
        if not settings.QUICK_MODE_SECONDS_MIN <= m.lifetime_seconds <= settings.QUICK_MODE_SECONDS_MAX:
            yield (f"{path}[{k}]", f"a lifetime of {m.lifetime_seconds} s is outside Windows' range "
                                   f"{settings.QUICK_MODE_SECONDS_MIN}..{settings.QUICK_MODE_SECONDS_MAX} s")
        if not settings.QUICK_MODE_KB_MIN <= m.lifetime_kb <= settings.QUICK_MODE_KB_MAX:
            yield (f"{path}[{k}]", f"a lifetime of {m.lifetime_kb} KB is outside Windows' range "
                                   f"{settings.QUICK_MODE_KB_MIN}..{settings.QUICK_MODE_KB_MAX} KB")


def _check_auth(methods: tuple[AuthMethod, ...], path: str) -> Iterator[tuple[str, str]]:
    if not methods:
        yield path, "negotiating security needs at least one authentication method"
    for k, method in enumerate(methods):
        if method.kind is AuthKind.PRESHARED_KEY and not method.psk:
            yield f"{path}[{k}].psk", "the pre-shared key is empty"
        if method.kind is AuthKind.CERTIFICATE and not method.ca:
            yield f"{path}[{k}].certificate", "name the certificate authority"


def _check_guids(policy: Policy) -> Iterator[tuple[str, str]]:
    """One GUID, one object: a filter list or action shared by two rules must be the same object."""
    owners: dict[object, tuple[str, object]] = {}
    parts: list[tuple[str, object]] = [("", policy), ("key_exchange", policy.key_exchange)]
    for i, rule in enumerate(policy.rules):
        parts += [(f"rules[{i}]", rule), (f"rules[{i}].filter_list", rule.filter_list),
                  (f"rules[{i}].filter_action", rule.filter_action)]
    if policy.default_response:
        parts.append(("default_response_rule", policy.default_response))
    for path, part in parts:
        guid = part.guid  # type: ignore[attr-defined]
        if guid in owners and owners[guid][1] != part:
            yield (f"{path}.guid".lstrip("."),
                   f"{guid} is already the GUID of {owners[guid][0] or 'the policy'}, a different object")
        owners.setdefault(guid, (path, part))
