"""Generic filters to specific filters: what the Policy Agent hands the IPsec driver.

"My IP address" becomes one filter per address of this node (re-expanded when addresses change), a DNS name
one filter per address it resolves to (resolved when the policy is applied), "any" 0.0.0.0/0. A mirrored
filter becomes two, one per direction. The result is ordered most specific first (``spd.Filter.weight``).
The Policy Agent looks a policy's names up at once as it reads the policy (``ResolvedNames.lookup``, in its
reader thread: a DNS server that does not answer holds a lookup for seconds) and expands with the answers.

A filter that is not mirrored matches one direction: inbound when its destination is this node and its
source is not, outbound otherwise; in a tunnel rule, inbound when the tunnel endpoint is this node (and
then it takes the name of the outbound tunnel filter it answers, the name its SAs are known by).
The default response rule adds no filter: IKE answers with it and secures only what the peer asks for.

>>> from ipsecd.policy.policyfile import loads
>>> p = loads('''
... name: web
... rules:
...  - name: secure web
...    filter_list: {name: web, filters: [{source: me, destination: 10.0.0.0/24, protocol: tcp,
...                                        destination_port: 80}]}
...    filter_action: {name: require, action: negotiate, security_methods: ["ESP[3DES,SHA1]"]}
...    authentication: [{psk: secret}]
... ''')
>>> for f in expand(p, [IPv4Address("10.0.0.1"), IPv4Address("192.0.2.1")]):
...     print(f.describe())
secure web/1: outbound 10.0.0.1/32 -> 10.0.0.0/24 tcp ports any->80 => negotiate
secure web/1: inbound 10.0.0.0/24 -> 10.0.0.1/32 tcp ports 80->any => negotiate
secure web/1: outbound 192.0.2.1/32 -> 10.0.0.0/24 tcp ports any->80 => negotiate
secure web/1: inbound 10.0.0.0/24 -> 192.0.2.1/32 tcp ports 80->any => negotiate
"""

from __future__ import annotations

import dataclasses
import socket
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv4Network

from ipsecd.driver import spd
from ipsecd.policy.model import Endpoint, EndpointKind, IPFilter, Policy, Rule
from ipsecd.policy.validate import PolicyError, Problem

Resolver = Callable[[str], Sequence[IPv4Address]]


def resolve_dns(name: str) -> list[IPv4Address]:
    """The IPv4 addresses of a DNS name, through the system resolver; ValueError if there are none."""
    try:
        infos = socket.getaddrinfo(name, None, socket.AF_INET, socket.SOCK_STREAM)
    except socket.gaierror as e:
        raise ValueError(f"cannot resolve {name!r}: {e.strerror}") from None
    return list(dict.fromkeys(IPv4Address(info[4][0]) for info in infos))


@dataclass(frozen=True)
class ResolvedNames:
    """A policy's DNS names, each with its addresses or why it did not resolve, looked up before expanding:
    a Resolver that never waits, so the expansion can run on the event loop."""

    answers: Mapping[str, tuple[IPv4Address, ...] | str] = field(default_factory=dict)

    @classmethod
    def lookup(cls, policy: Policy, resolve: Resolver = resolve_dns) -> ResolvedNames:
        """Resolve every name the policy's active rules use (the ones `expand_rules` asks for)."""
        answers: dict[str, tuple[IPv4Address, ...] | str] = {}
        for name in dns_names(policy):
            try:
                answers[name] = tuple(resolve(name))
            except ValueError as e:
                answers[name] = str(e)
        return cls(answers)

    def __call__(self, name: str) -> Sequence[IPv4Address]:
        """The addresses `name` resolved to; ValueError (why) if it did not. KeyError: never looked up."""
        answer = self.answers[name]
        if isinstance(answer, str):
            raise ValueError(answer)
        return answer


def dns_names(policy: Policy) -> list[str]:
    """The DNS names in the filters of the policy's active rules, each once, in the policy's order."""
    return list(dict.fromkeys(endpoint.dns_name for rule in policy.rules if rule.active
                              for generic in rule.filter_list.filters
                              for endpoint in (generic.source, generic.destination) if endpoint.dns_name))


def expand(policy: Policy, my_addresses: Iterable[IPv4Address],
           resolve: Resolver = resolve_dns) -> list[spd.Filter]:
    """The policy's specific filters, most specific first. PolicyError names a DNS name that won't resolve."""
    by_rule = expand_rules(policy, my_addresses, resolve)
    return list(spd.SPD(f for filters in by_rule.values() for f in filters).filters)


def expand_rules(policy: Policy, my_addresses: Iterable[IPv4Address],
                 resolve: Resolver = resolve_dns) -> dict[str, tuple[spd.Filter, ...]]:
    """The specific filters of each active rule, by rule name (the name the driver tags SAs with)."""
    mine = tuple(dict.fromkeys(my_addresses))
    problems: list[Problem] = []
    out: dict[str, tuple[spd.Filter, ...]] = {}
    for i, rule in enumerate(policy.rules):
        if not rule.active:
            continue
        action = rule.filter_action.to_spd()
        filters: list[spd.Filter] = []
        for j, generic in enumerate(rule.filter_list.filters):
            path = f"rules[{i}].filter_list.filters[{j}]"
            try:
                sources = _networks(generic.source, mine, resolve)
            except ValueError as e:
                problems.append(Problem(path + ".source", str(e)))
                continue
            try:
                destinations = _networks(generic.destination, mine, resolve)
            except ValueError as e:
                problems.append(Problem(path + ".destination", str(e)))
                continue
            filters += _specific(rule, generic, action, sources, destinations, mine)
        out[rule.name] = tuple(filters)
    if problems:
        raise PolicyError(problems)
    return _pair_tunnels(out)


def _pair_tunnels(by_rule: dict[str, tuple[spd.Filter, ...]]) -> dict[str, tuple[spd.Filter, ...]]:
    """Name each inbound tunnel filter after the outbound one it answers (reverse addresses and ports).

    Windows needs two tunnel rules, one per direction; the driver knows an SA's inbound filter by the name
    of the filter the SA was negotiated for, which is the outbound one.
    """
    outbound = {(f.dst, f.src, f.protocol, f.dst_port, f.src_port): f.name
                for filters in by_rule.values() for f in filters
                if f.tunnel and f.direction is spd.Direction.OUTBOUND}

    def paired(f: spd.Filter) -> spd.Filter:
        if not f.tunnel or f.direction is spd.Direction.OUTBOUND:
            return f
        name = outbound.get((f.src, f.dst, f.protocol, f.src_port, f.dst_port))
        return dataclasses.replace(f, name=name) if name else f

    return {rule: tuple(paired(f) for f in filters) for rule, filters in by_rule.items()}


def _networks(endpoint: Endpoint, mine: tuple[IPv4Address, ...], resolve: Resolver) -> list[IPv4Network]:
    if endpoint.kind is EndpointKind.ME:
        return [IPv4Network(a) for a in mine]
    if endpoint.kind is EndpointKind.ANY:
        return [IPv4Network("0.0.0.0/0")]
    if endpoint.kind is EndpointKind.DNS:
        assert endpoint.dns_name is not None
        return [IPv4Network(a) for a in resolve(endpoint.dns_name)]
    assert endpoint.network is not None
    return [endpoint.network]


def _is_mine(endpoint: Endpoint, mine: tuple[IPv4Address, ...]) -> bool:
    if endpoint.kind is EndpointKind.ME:
        return True
    return (endpoint.kind is EndpointKind.ADDRESS and endpoint.network is not None
            and endpoint.network.network_address in mine)


def _specific(rule: Rule, generic: IPFilter, action: spd.SPDAction, sources: list[IPv4Network],
              destinations: list[IPv4Network], mine: tuple[IPv4Address, ...]) -> list[spd.Filter]:
    if rule.tunnel:
        direction = spd.Direction.INBOUND if rule.tunnel in mine else spd.Direction.OUTBOUND
    elif _is_mine(generic.destination, mine) and not _is_mine(generic.source, mine):
        direction = spd.Direction.INBOUND
    else:
        direction = spd.Direction.OUTBOUND
    out: list[spd.Filter] = []
    for src in sources:
        for dst in destinations:
            if src == dst and src.prefixlen == 32:
                continue  # "me" to "me": a node's traffic to itself never reaches the wire
            specific = spd.Filter(f"{rule.name}/{generic.name}", src, dst, action, direction,
                                  generic.protocol, generic.source_port, generic.destination_port,
                                  rule.tunnel, rule.name)
            out += specific.mirrored() if generic.mirrored else (specific,)
    return out
