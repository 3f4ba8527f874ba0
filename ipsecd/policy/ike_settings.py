"""What the Policy Agent hands IKE: its own ``Rule``/``PeerPolicy`` objects (ipsecd.ike), built per policy.

One IKE rule per specific filter pair (local and remote selector), in SPD order (most specific first,
because IKE takes the first rule that covers a peer), then the default response rule, which covers any
peer and any traffic and so only answers what no other rule claims. Main mode offers come from the key
exchange settings; quick mode offers from the filter action; quick mode PFS uses the group of the first
main mode method (Windows uses the negotiated one). Authentication: pre-shared keys as they are,
certificates through ``certificate_for(ca_name)`` (the node's certificate and key, and that CA), Kerberos
as the node's computer account (``kerberos``: its keytab and principal, ipsecd.yaml's ``ike.kerberos``),
in the rule's order, so the predefined policies work as shipped on a domain member; an AH+ESP bundle
("AH[MD5]+ESP[3DES,SHA1]") is one proposal. What IKE cannot use is skipped with a warning; a rule left
without authentication or offers is not given to IKE, so its traffic cannot be secured (and is held, as
when a negotiation fails).

>>> from ipaddress import IPv4Address
>>> from ipsecd.policy.expand import expand_rules
>>> from ipsecd.policy.predefined import predefined
>>> p = predefined("secure server", authentication=(AuthMethod(AuthKind.PRESHARED_KEY, psk="lab"),))
>>> s = ike_settings(p, expand_rules(p, [IPv4Address("10.0.0.1")]))
>>> for r in s.rules: print(r.name, r.local, r.remote)
All IP Traffic/all ip 10.0.0.1/32 0.0.0.0/0
<Dynamic> default response 0.0.0.0/0 0.0.0.0/0
>>> [o.describe() for o in s.rules[0].policy.main_mode]
['3DES/SHA1/group 2', '3DES/MD5/group 2', 'DES/SHA1/group 1', 'DES/MD5/group 1']
>>> [(o.describe(), o.lifetime_seconds) for o in s.rules[0].policy.quick_mode][:2]
[('ESP[3DES,SHA1]', 900), ('ESP[3DES,MD5]', 900)]
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from ipaddress import IPv4Network

from ipsecd.driver import spd
from ipsecd.ike.settings import AuthMethod as IKEAuth
from ipsecd.ike.settings import (
    Certificates,
    IKERule,
    Kerberos,
    MainModeOffer,
    PeerPolicy,
    PreSharedKey,
    QuickModeOffer,
    Selector,
)
from ipsecd.policy.model import AuthKind, AuthMethod, DefaultResponseRule, Policy, Rule

ANY = Selector(IPv4Network("0.0.0.0/0"))

CertificateSource = Callable[[str], Certificates]


@dataclass(frozen=True)
class IKERuleSet:
    """The IKE rules in the order IKE must try them, and how to find the rule for a driver's acquire."""

    rules: tuple[IKERule, ...] = ()
    by_filter: dict[spd.Filter, IKERule] = field(default_factory=dict)
    warnings: tuple[str, ...] = ()

    def for_filter(self, f: spd.Filter) -> IKERule | None:
        """The IKE rule to pass to ``ike.acquire`` for a packet that hit this negotiate filter."""
        return self.by_filter.get(f)


def ike_settings(policy: Policy, filters_by_rule: dict[str, tuple[spd.Filter, ...]],
                 certificate_for: CertificateSource | None = None,
                 kerberos: Kerberos | None = None) -> IKERuleSet:
    lifetime = policy.key_exchange.lifetime_seconds
    main_mode = [MainModeOffer(m.encryption, m.hash, m.dh_group, lifetime)
                 for m in policy.key_exchange.methods]
    pfs_group = main_mode[0].group if main_mode else None
    warnings: list[str] = []
    ordered: list[tuple[spd.Filter, IKERule]] = []
    for rule in policy.rules:
        if not rule.active or rule.filter_action.action is not spd.Action.NEGOTIATE:
            continue
        auth = _auth(rule.name, rule.authentication, certificate_for, kerberos, warnings)
        if not auth:
            continue
        offers = _offers(rule.name, rule.filter_action.security_methods,
                         pfs_group if rule.filter_action.pfs else None, warnings)
        if not offers:
            continue
        peer_policy = PeerPolicy(auth, main_mode, offers, tunnel=rule.tunnel is not None)
        ordered += _rules_for_filters(rule, peer_policy, filters_by_rule.get(rule.name, ()))
    ordered.sort(key=lambda pair: pair[0].weight, reverse=True)  # stable: the SPD's own order
    rules: list[IKERule] = []
    for _, r in ordered:
        if r not in rules:  # the two filters of a mirrored pair give one rule
            rules.append(r)
    ordered += _inbound_tunnel_filters(policy, filters_by_rule, rules)
    if policy.default_response and policy.default_response.active:
        rules += _default_response(policy.default_response, main_mode, certificate_for, kerberos, warnings)
    return IKERuleSet(tuple(rules), dict(ordered), tuple(warnings))


def _rules_for_filters(rule: Rule, peer_policy: PeerPolicy,
                       filters: tuple[spd.Filter, ...]) -> list[tuple[spd.Filter, IKERule]]:
    """Both filters of a mirrored pair map to one IKE rule: local and remote as seen from this node."""
    out = []
    for f in filters:
        outbound = f.direction is spd.Direction.OUTBOUND
        if rule.tunnel and not outbound:
            continue  # the inbound tunnel rule names this gateway; the outbound one negotiates both ways
        src = Selector(f.src, f.protocol or 0, f.src_port or 0)
        dst = Selector(f.dst, f.protocol or 0, f.dst_port or 0)
        local, remote = (src, dst) if outbound else (dst, src)
        tunnel = str(rule.tunnel) if rule.tunnel else None
        out.append((f, IKERule(f.name, peer_policy, local, remote, tunnel)))
    return out


def _inbound_tunnel_filters(policy: Policy, filters_by_rule: dict[str, tuple[spd.Filter, ...]],
                            rules: list[IKERule]) -> list[tuple[spd.Filter, IKERule]]:
    """An inbound tunnel filter belongs to the IKE rule of the outbound tunnel filter it answers."""
    out = []
    for rule in policy.rules:
        for f in filters_by_rule.get(rule.name, ()) if rule.tunnel else ():
            if f.direction is spd.Direction.INBOUND:
                match = next((r for r in rules if r.name == f.name and r.tunnel_endpoint), None)
                if match:
                    out.append((f, match))
    return out


def _default_response(rule: DefaultResponseRule, main_mode: list[MainModeOffer],
                      certificate_for: CertificateSource | None, kerberos: Kerberos | None,
                      warnings: list[str]) -> list[IKERule]:
    auth = _auth(rule.name, rule.authentication, certificate_for, kerberos, warnings)
    if not auth:
        return []
    offers = _offers(rule.name, rule.security_methods, None, warnings)
    if not offers:
        return []
    return [IKERule(rule.name, PeerPolicy(auth, main_mode, offers), ANY, ANY)]


def _offers(rule: str, methods: tuple[spd.SecurityMethod, ...], pfs_group: int | None,
            warnings: list[str]) -> list[QuickModeOffer]:
    out = []
    for m in methods:
        if m.uses_esp:  # with ah_integrity: an AH+ESP bundle, AH outside (Windows "AH and ESP")
            out.append(QuickModeOffer("esp", m.esp_encryption, m.esp_integrity, m.lifetime_seconds,
                                      m.lifetime_kb, pfs_group, ah=m.ah_integrity))
        else:
            out.append(QuickModeOffer("ah", None, m.ah_integrity, m.lifetime_seconds,
                                      m.lifetime_kb, pfs_group))
    if not out:
        warnings.append(f"rule {rule!r}: no security method IKE can offer; its traffic cannot be secured")
    return out


def _auth(rule: str, methods: tuple[AuthMethod, ...], certificate_for: CertificateSource | None,
          kerberos: Kerberos | None, warnings: list[str]) -> list[IKEAuth]:
    out: list[IKEAuth] = []
    for m in methods:
        if m.kind is AuthKind.PRESHARED_KEY and m.psk:
            out.append(PreSharedKey(m.psk.encode()))
        elif m.kind is AuthKind.CERTIFICATE and certificate_for and m.ca:
            try:
                out.append(certificate_for(m.ca))
            except (OSError, ValueError, KeyError) as e:
                warnings.append(f"rule {rule!r}: authentication by {m} skipped ({e})")
        elif m.kind is AuthKind.KERBEROS and kerberos:
            out.append(kerberos)
        else:
            why = {AuthKind.CERTIFICATE: "no certificate on this node",
                   AuthKind.KERBEROS: "no ike.kerberos (keytab, principal) in the node configuration: "
                                      "not a domain member"}.get(m.kind, "not supported")
            warnings.append(f"rule {rule!r}: authentication by {m} skipped ({why})")
    if not out:
        warnings.append(f"rule {rule!r}: no authentication method IKE can use; its traffic cannot be secured")
    return out
