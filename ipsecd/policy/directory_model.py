"""Directory objects (ipsecPolicy, ipsecISAKMPPolicy, ipsecNFA, ipsecFilter, ipsecNegotiationPolicy) <-> model

``policy_from_objects`` follows one policy's references (policy -> ISAKMP policy and NFAs, NFA -> filter list
and negotiation policy) and builds a ``model.Policy``; a dangling reference, an object of the wrong class or
a blob that does not decode is refused with a :class:`DirectoryError` naming the DN and the attribute.
``policy_to_objects`` is the inverse: the objects, with their blobs, that store a policy, keeping every GUID
and change stamp the model carries.

What the directory format holds that the model does not, and how it is filled in:
- a filter's GUID: derived from its filter list's GUID and its position (uuid5), so that writing the same
  policy twice gives the same bytes;
- the default response rule's negotiation policy: its GUID derived from the rule's (uuid5);
- the ISAKMP policy's own identifier inside its blob: the object's GUID.
And the other way: a filter has one text (Windows' "Description"); it holds the model filter's name, then
a newline and the description if there is one. A quick mode offer lifetime of 0 (the default response
rule's, in Windows' blobs) reads as Windows' default, 3600 s / 100000 KB.
"""

from __future__ import annotations

import datetime
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from ipaddress import IPv4Address, IPv4Network

from ipsecd.driver import spd
from ipsecd.policy import ipsec_data as wire
from ipsecd.policy.model import (
    ANY,
    ME,
    AuthKind,
    AuthMethod,
    ConnectionType,
    DefaultResponseRule,
    Endpoint,
    EndpointKind,
    FilterAction,
    FilterList,
    IPFilter,
    KeyExchange,
    MainModeMethod,
    Policy,
    Rule,
)

CONTAINER = "CN=IP Security,CN=System"
CLASSES = tuple(wire.CLASS_RECORDS)
_DERIVED = uuid.UUID("0c6a3f8e-2b1d-4e5f-9a7b-3c2d1e0f4a5b")  # namespace of the GUIDs derived here

AUTH_KINDS = {wire.AUTH_PRESHARED_KEY: AuthKind.PRESHARED_KEY, wire.AUTH_CERTIFICATE: AuthKind.CERTIFICATE,
              wire.AUTH_KERBEROS: AuthKind.KERBEROS}
CONNECTION_TYPES = {wire.INTERFACE_ALL: ConnectionType.ALL, wire.INTERFACE_LAN: ConnectionType.LAN,
                    wire.INTERFACE_REMOTE_ACCESS: ConnectionType.REMOTE_ACCESS}
CIPHERS = {wire.CIPHER_DES: "des-cbc", wire.CIPHER_3DES: "3des-cbc"}
ESP_CIPHERS: dict[int, str | None] = {wire.CIPHER_NONE: None, **CIPHERS}
MM_HASHES = {wire.HASH_MD5: "md5", wire.HASH_SHA1: "sha1"}
INTEGRITY = {wire.HASH_MD5: "hmac-md5-96", wire.HASH_SHA1: "hmac-sha1-96"}
ESP_INTEGRITY: dict[int, str | None] = {wire.HASH_NONE: None, **INTEGRITY}
DH_GROUPS = {wire.DH_GROUP_1: 1, wire.DH_GROUP_2: 2, wire.DH_GROUP_2048: 14}
ACTIONS = {wire.ACTION_BLOCK: spd.Action.BLOCK, wire.ACTION_PERMIT: spd.Action.PERMIT,
           wire.ACTION_NEGOTIATE: spd.Action.NEGOTIATE,
           wire.ACTION_NEGOTIATE_INBOUND_PASSTHROUGH: spd.Action.NEGOTIATE}
DEFAULT_LIFETIME_SECONDS, DEFAULT_LIFETIME_KB = 3600, 100_000
ALL_ONES = IPv4Address("255.255.255.255")


class DirectoryError(ValueError):
    """A directory object that cannot be (or a policy that cannot become) part of a policy: DN, field, why."""

    def __init__(self, dn: str, field: str, reason: str):
        super().__init__(f"{dn}: {field}: {reason}")
        self.dn, self.field, self.reason = dn, field, reason


def dn_key(dn: str) -> str:
    """A DN compared as the directory does: case and spaces around commas do not count."""
    return ",".join(part.strip() for part in dn.split(",")).casefold()


def ipsec_id(guid: uuid.UUID) -> str:
    """The ipsecID attribute's spelling: '{72385230-70FA-11D1-864C-14A300000000}'."""
    return "{" + str(guid).upper() + "}"


def object_dn(object_class: str, guid: uuid.UUID, container: str) -> str:
    return f"CN={object_class}{ipsec_id(guid)},{container}"


def parse_generalized_time(text: str) -> int:
    """whenChanged ('20240501120000.0Z') -> Unix seconds."""
    stamp = datetime.datetime.strptime(text.split(".")[0].rstrip("Z"), "%Y%m%d%H%M%S")
    return int(stamp.replace(tzinfo=datetime.UTC).timestamp())


def format_generalized_time(stamp: int) -> str:
    return datetime.datetime.fromtimestamp(stamp, datetime.UTC).strftime("%Y%m%d%H%M%S.0Z")


@dataclass(frozen=True)
class DirectoryObject:
    """One IPsec object as LDAP holds it: its attributes, with ipsecData still a blob."""

    dn: str
    object_class: str
    guid: uuid.UUID  # ipsecID
    data: bytes  # ipsecData
    name: str | None = None  # ipsecName
    description: str | None = None
    data_type: int = wire.DATA_TYPE
    when_changed: int | None = None  # set by the directory; Unix seconds
    owners: tuple[str, ...] = ()  # ipsecOwnersReference
    nfa_references: tuple[str, ...] = ()  # ipsecPolicy
    isakmp_reference: str | None = None  # ipsecPolicy
    filter_references: tuple[str, ...] = ()  # ipsecNFA
    negotiation_policy_reference: str | None = None  # ipsecNFA
    negotiation_type: uuid.UUID | None = None  # ipsecNegotiationPolicy: iPSECNegotiationPolicyType
    negotiation_action: uuid.UUID | None = None  # iPSECNegotiationPolicyAction

    @classmethod
    def from_ldap(cls, dn: str, attributes: Mapping[str, Sequence[str | bytes]]) -> DirectoryObject:
        """From an LDAP entry's attributes (any case; values as str or bytes, ipsecData as bytes)."""
        attrs = {k.casefold(): list(v) for k, v in attributes.items()}

        def texts(name: str) -> tuple[str, ...]:
            values = attrs.get(name.casefold(), [])
            return tuple(v.decode() if isinstance(v, bytes) else str(v) for v in values)

        def one(name: str) -> str | None:
            values = texts(name)
            if len(values) > 1:
                raise DirectoryError(dn, name, f"holds {len(values)} values; it is single-valued")
            return values[0] if values else None

        def guid(name: str) -> uuid.UUID | None:
            text = one(name)
            try:
                return None if text is None else uuid.UUID(text)
            except ValueError:
                raise DirectoryError(dn, name, f"{text!r} is not a GUID") from None

        classes = [c for c in texts("objectClass") if c in CLASSES]
        if len(classes) != 1:
            raise DirectoryError(dn, "objectClass", f"{texts('objectClass')} holds not one of {CLASSES}")
        object_id, data = guid("ipsecID"), attrs.get("ipsecdata", [])
        if object_id is None:
            raise DirectoryError(dn, "ipsecID", "missing")
        if len(data) != 1:
            raise DirectoryError(dn, "ipsecData", f"holds {len(data)} values, not one")
        blob = data[0] if isinstance(data[0], bytes) else str(data[0]).encode("latin-1")
        data_type = one("ipsecDataType")
        when = one("whenChanged")
        if data_type is None or not data_type.isdigit():
            raise DirectoryError(dn, "ipsecDataType", f"{data_type!r} is not a number")
        try:
            when_changed = None if when is None else parse_generalized_time(when)
        except ValueError:
            raise DirectoryError(dn, "whenChanged", f"{when!r} is not a generalized time") from None
        return cls(dn, classes[0], object_id, blob, one("ipsecName"), one("description"), int(data_type),
                   when_changed, texts("ipsecOwnersReference"), texts("ipsecNFAReference"),
                   one("ipsecISAKMPReference"), texts("ipsecFilterReference"),
                   one("ipsecNegotiationPolicyReference"), guid("iPSECNegotiationPolicyType"),
                   guid("iPSECNegotiationPolicyAction"))

    def to_ldap(self) -> dict[str, list[str | bytes]]:
        """The attributes to add (whenChanged is the directory's to set)."""
        out: dict[str, list[str | bytes]] = {
            "objectClass": ["top", self.object_class], "ipsecID": [ipsec_id(self.guid)],
            "ipsecDataType": [str(self.data_type)], "ipsecData": [self.data]}
        optional: dict[str, list[str]] = {
            "ipsecName": [self.name] if self.name else [],
            "description": [self.description] if self.description else [],
            "ipsecOwnersReference": list(self.owners), "ipsecNFAReference": list(self.nfa_references),
            "ipsecISAKMPReference": [self.isakmp_reference] if self.isakmp_reference else [],
            "ipsecFilterReference": list(self.filter_references),
            "ipsecNegotiationPolicyReference":
                [self.negotiation_policy_reference] if self.negotiation_policy_reference else [],
            "iPSECNegotiationPolicyType": [ipsec_id(self.negotiation_type)] if self.negotiation_type else [],
            "iPSECNegotiationPolicyAction":
                [ipsec_id(self.negotiation_action)] if self.negotiation_action else []}
        out.update({k: list(v) for k, v in optional.items() if v})
        return out


# --- directory -> model ----------------------------------------------------------------------------


class _Graph:
    """The objects by DN, and the checks every reference goes through."""

    def __init__(self, objects: Iterable[DirectoryObject]):
        self.objects = {dn_key(o.dn): o for o in objects}

    def get(self, dn: str, object_class: str, referrer: DirectoryObject | None,
            field: str) -> DirectoryObject:
        where = referrer.dn if referrer else dn
        found = self.objects.get(dn_key(dn))
        if found is None:
            raise DirectoryError(where, field, f"refers to {dn}, which is not in the directory"
                                 if referrer else "no such object")
        if found.object_class != object_class:
            raise DirectoryError(where, field,
                                 f"refers to {dn}, an {found.object_class}, not an {object_class}")
        if f"{object_class}{ipsec_id(found.guid)}".casefold() != found.dn.split(",")[0].partition("=")[2] \
                .strip().casefold():
            raise DirectoryError(found.dn, "ipsecID",
                                 f"{ipsec_id(found.guid)} does not match the object's name")
        if found.data_type not in wire.DATA_TYPES:
            raise DirectoryError(found.dn, "ipsecDataType",
                                 f"{found.data_type} is not one of {wire.DATA_TYPES}")
        return found

    @staticmethod
    def record(obj: DirectoryObject) -> wire.Record:
        try:
            return wire.decode(obj.object_class, obj.data, obj.dn)
        except wire.IpsecDataError as e:
            raise DirectoryError(obj.dn, "ipsecData", str(e)) from None


def _stamp(obj: DirectoryObject) -> int:
    return obj.when_changed or 0


def policy_from_objects(objects: Iterable[DirectoryObject], policy_dn: str) -> Policy:
    """The model policy stored as ``policy_dn`` and the objects it refers to (others are ignored)."""
    graph = _Graph(objects)
    top = graph.get(policy_dn, "ipsecPolicy", None, "dn")
    policy_data = graph.record(top)
    assert isinstance(policy_data, wire.PolicyData)
    if not top.isakmp_reference:
        raise DirectoryError(top.dn, "ipsecISAKMPReference", "missing")
    key_exchange = _key_exchange(graph, graph.get(top.isakmp_reference, "ipsecISAKMPPolicy", top,
                                                  "ipsecISAKMPReference"))
    rules: list[Rule] = []
    default_response = None
    for dn in top.nfa_references:
        nfa = graph.get(dn, "ipsecNFA", top, "ipsecNFAReference")
        rule = _rule(graph, nfa)
        if isinstance(rule, DefaultResponseRule):
            if default_response is not None:
                raise DirectoryError(top.dn, "ipsecNFAReference", "holds two default response rules")
            default_response = rule
        else:
            rules.append(rule)
    return Policy(name=top.name or "", rules=tuple(rules), default_response=default_response,
                  key_exchange=key_exchange, polling_interval=policy_data.polling_interval, guid=top.guid,
                  when_changed=_stamp(top), description=top.description or "")


def _key_exchange(graph: _Graph, obj: DirectoryObject) -> KeyExchange:
    data = graph.record(obj)
    assert isinstance(data, wire.IsakmpData)
    if not data.offers:
        raise DirectoryError(obj.dn, "ipsecData", "no main mode security method")
    methods = []
    for index, offer in enumerate(data.offers):
        cipher, hash_ = CIPHERS.get(offer.cipher), MM_HASHES.get(offer.hash)
        group = DH_GROUPS.get(offer.dh_group)
        if cipher is None or hash_ is None or group is None:
            raise DirectoryError(obj.dn, f"ipsecData offers[{index}]", f"cipher {offer.cipher}, hash "
                                 f"{offer.hash}, DH group {offer.dh_group}: not a known combination")
        methods.append(MainModeMethod(cipher, hash_, group))
    first = data.offers[0]
    return KeyExchange(methods=tuple(methods), lifetime_seconds=first.lifetime_seconds,
                       sessions=first.quick_mode_limit, master_key_pfs=bool(data.master_key_pfs),
                       guid=obj.guid, when_changed=_stamp(obj))


def _rule(graph: _Graph, nfa: DirectoryObject) -> Rule | DefaultResponseRule:
    data = graph.record(nfa)
    assert isinstance(data, wire.NfaData)
    authentication = tuple(_auth(nfa, i, entry) for i, entry in enumerate(data.auth_methods))
    if not nfa.negotiation_policy_reference:
        raise DirectoryError(nfa.dn, "ipsecNegotiationPolicyReference", "missing")
    negotiation = graph.get(nfa.negotiation_policy_reference, "ipsecNegotiationPolicy", nfa,
                            "ipsecNegotiationPolicyReference")
    action, methods, fallback, pfs = _negotiation(graph, negotiation)
    if negotiation.negotiation_type == wire.NEGOTIATION_TYPE_DEFAULT_RESPONSE:
        if nfa.filter_references:
            raise DirectoryError(nfa.dn, "ipsecFilterReference", "a default response rule has no filter list")
        return DefaultResponseRule(authentication=authentication, security_methods=methods,
                                   active=bool(data.active), guid=nfa.guid, when_changed=_stamp(nfa))
    if negotiation.negotiation_type != wire.NEGOTIATION_TYPE_STANDARD:
        raise DirectoryError(negotiation.dn, "iPSECNegotiationPolicyType",
                             f"{negotiation.negotiation_type} is neither standard nor default response")
    if len(nfa.filter_references) != 1:
        raise DirectoryError(nfa.dn, "ipsecFilterReference",
                             f"holds {len(nfa.filter_references)} filter lists; a rule has one")
    filters = graph.get(nfa.filter_references[0], "ipsecFilter", nfa, "ipsecFilterReference")
    connection = CONNECTION_TYPES.get(data.interface_type)
    if connection is None:
        raise DirectoryError(nfa.dn, "ipsecData interface_type",
                             f"{data.interface_type:#x} is not a connection type")
    filter_action = FilterAction(
        name=negotiation.name or "", action=action, security_methods=methods, pfs=pfs,
        accept_unsecured=negotiation.negotiation_action == wire.ACTION_NEGOTIATE_INBOUND_PASSTHROUGH,
        fallback_to_clear=fallback, guid=negotiation.guid, when_changed=_stamp(negotiation),
        description=negotiation.description or "")
    filter_list = _filter_list(graph, filters)
    return Rule(name=nfa.name or filter_list.name, filter_list=filter_list, filter_action=filter_action,
                authentication=authentication, tunnel=data.tunnel_address if data.tunnel_flags else None,
                connection_type=connection, active=bool(data.active), guid=nfa.guid, when_changed=_stamp(nfa),
                description=nfa.description or "")


def _auth(nfa: DirectoryObject, index: int, entry: wire.AuthEntry) -> AuthMethod:
    kind = AUTH_KINDS.get(entry.method)
    if kind is None:
        raise DirectoryError(nfa.dn, f"ipsecData auth_methods[{index}]", f"method {entry.method} is not "
                             "pre-shared key (1), certificate (3) or Kerberos (5)")
    if kind is AuthKind.PRESHARED_KEY:
        return AuthMethod(kind, psk=entry.value or "")
    if kind is AuthKind.CERTIFICATE:
        return AuthMethod(kind, ca=entry.value or "")
    return AuthMethod(kind)


def _negotiation(graph: _Graph,
                 obj: DirectoryObject) -> tuple[spd.Action, tuple[spd.SecurityMethod, ...], bool, bool]:
    """(action, security methods, fall back to clear, PFS) of a negotiation policy."""
    action = ACTIONS.get(obj.negotiation_action) if obj.negotiation_action else None
    if action is None:
        raise DirectoryError(obj.dn, "iPSECNegotiationPolicyAction",
                             f"{obj.negotiation_action} is not block, permit or negotiate")
    data = graph.record(obj)
    assert isinstance(data, wire.NegotiationData)
    methods = []
    for index, offer in enumerate(data.offers):
        if offer.operations:
            methods.append(_security_method(obj, index, offer))
    fallback = len(methods) < len(data.offers)
    if action is spd.Action.NEGOTIATE and not methods:
        raise DirectoryError(obj.dn, "ipsecData", "negotiate security with no security method")
    return action, tuple(methods), fallback, any(o.pfs for o in data.offers if o.operations)


def _security_method(obj: DirectoryObject, index: int, offer: wire.QuickModeOfferData) -> spd.SecurityMethod:
    esp_cipher = esp_integrity = ah = None
    uses_esp = False
    for op in offer.operations:
        if op.protocol == wire.OPERATION_ESP and not uses_esp and op.algorithm in ESP_CIPHERS \
                and op.secondary_algorithm in ESP_INTEGRITY:
            esp_cipher, esp_integrity = ESP_CIPHERS[op.algorithm], ESP_INTEGRITY[op.secondary_algorithm]
            uses_esp = True
        elif op.protocol == wire.OPERATION_AH and ah is None and op.algorithm in INTEGRITY:
            ah = INTEGRITY[op.algorithm]
        else:
            raise DirectoryError(obj.dn, f"ipsecData offers[{index}]",
                                 f"operation {op} is not ESP or AH with DES/3DES and MD5/SHA1, "
                                 "or appears twice")
    try:
        return spd.SecurityMethod(esp_encryption=esp_cipher, esp_integrity=esp_integrity, ah_integrity=ah,
                                  lifetime_seconds=offer.lifetime_seconds or DEFAULT_LIFETIME_SECONDS,
                                  lifetime_kb=offer.lifetime_kb or DEFAULT_LIFETIME_KB)
    except ValueError as e:
        raise DirectoryError(obj.dn, f"ipsecData offers[{index}]", str(e)) from None


def _filter_list(graph: _Graph, obj: DirectoryObject) -> FilterList:
    data = graph.record(obj)
    assert isinstance(data, wire.FilterData)
    filters = []
    for index, entry in enumerate(data.entries):
        field = f"ipsecData entries[{index}]"
        name, _, description = (entry.description or "").partition("\n")
        filters.append(IPFilter(
            name=name or str(index + 1),
            source=_endpoint(obj.dn, field + " source", entry.source_address, entry.source_mask,
                             entry.source_name),
            destination=_endpoint(obj.dn, field + " destination", entry.destination_address,
                                  entry.destination_mask, entry.destination_name),
            protocol=entry.protocol or None, source_port=entry.source_port or None,
            destination_port=entry.destination_port or None, mirrored=bool(entry.mirrored),
            description=description))
    return FilterList(name=obj.name or "", filters=tuple(filters), guid=obj.guid, when_changed=_stamp(obj),
                      description=obj.description or "")


def _endpoint(dn: str, field: str, address: IPv4Address, mask: IPv4Address, dns_name: str | None) -> Endpoint:
    if dns_name:
        try:
            return Endpoint.parse(dns_name)
        except ValueError as e:
            raise DirectoryError(dn, field, str(e)) from None
    if int(address) == 0 and mask == ALL_ONES:
        return ME
    if int(address) == 0 and int(mask) == 0:
        return ANY
    try:
        network = IPv4Network(f"{address}/{mask}")
    except ValueError as e:
        raise DirectoryError(dn, field, f"{address} mask {mask}: {e}") from None
    return Endpoint(EndpointKind.ADDRESS if network.prefixlen == 32 else EndpointKind.SUBNET, network)


# --- model -> directory ----------------------------------------------------------------------------


def derived_guid(guid: uuid.UUID, what: str) -> uuid.UUID:
    """A GUID the directory needs and the model does not carry, the same every time for the same part."""
    return uuid.uuid5(_DERIVED, f"{guid}/{what}")


def policy_to_objects(policy: Policy, container: str) -> list[DirectoryObject]:
    """The objects that store ``policy`` under ``container`` (e.g. 'CN=IP Security,CN=System,DC=lab,DC=test').

    Ordered leaves first (ISAKMP policy, filter lists, negotiation policies, NFAs, the policy), the order in
    which a directory accepts them: a DN-valued attribute must name an existing object, so the owners
    references (which point back up) have to be written after the objects they name.
    """
    policy_dn = object_dn("ipsecPolicy", policy.guid, container)
    parts: dict[uuid.UUID, tuple[object, DirectoryObject]] = {}

    def add(source: object, obj: DirectoryObject) -> DirectoryObject:
        seen = parts.get(obj.guid)
        if seen is not None and seen[0] != source:
            raise DirectoryError(obj.dn, "ipsecID", "two different parts of the policy share this GUID")
        if seen is not None:
            obj = replace(seen[1], owners=seen[1].owners + obj.owners)
        parts[obj.guid] = (source, obj)
        return obj

    isakmp = add(policy.key_exchange, _isakmp_object(policy.key_exchange, container, policy_dn))
    nfas = []
    for rule in policy.rules:
        nfa_dn = object_dn("ipsecNFA", rule.guid, container)
        filters = add(rule.filter_list, _filter_object(rule.filter_list, container, nfa_dn))
        negotiation = add(rule.filter_action, _negotiation_object(rule.filter_action, container, nfa_dn))
        nfas.append(add(rule, DirectoryObject(
            nfa_dn, "ipsecNFA", rule.guid, _nfa_blob(nfa_dn, rule.authentication, rule.active,
                                                    rule.connection_type, rule.tunnel),
            name=rule.name, description=rule.description or None, when_changed=rule.when_changed or None,
            owners=(policy_dn,), filter_references=(filters.dn,),
            negotiation_policy_reference=negotiation.dn)))
    if policy.default_response:
        default = policy.default_response
        nfa_dn = object_dn("ipsecNFA", default.guid, container)
        negotiation_guid = derived_guid(default.guid, "ipsecNegotiationPolicy")
        negotiation = add(negotiation_guid, DirectoryObject(
            object_dn("ipsecNegotiationPolicy", negotiation_guid, container), "ipsecNegotiationPolicy",
            negotiation_guid, _offers_blob(object_dn("ipsecNegotiationPolicy", negotiation_guid, container),
                                           default.security_methods, False, False),
            when_changed=default.when_changed or None, owners=(nfa_dn,),
            negotiation_type=wire.NEGOTIATION_TYPE_DEFAULT_RESPONSE,
            negotiation_action=wire.ACTION_NEGOTIATE))
        nfas.append(add(default, DirectoryObject(
            nfa_dn, "ipsecNFA", default.guid, _nfa_blob(nfa_dn, default.authentication, default.active,
                                                    ConnectionType.ALL, None),
            when_changed=default.when_changed or None, owners=(policy_dn,),
            negotiation_policy_reference=negotiation.dn)))
    top = DirectoryObject(policy_dn, "ipsecPolicy", policy.guid,
                          wire.encode(wire.PolicyData(polling_interval=policy.polling_interval)),
                          name=policy.name, description=policy.description or None,
                          when_changed=policy.when_changed or None, nfa_references=tuple(n.dn for n in nfas),
                          isakmp_reference=isakmp.dn)
    order = {"ipsecISAKMPPolicy": 0, "ipsecFilter": 1, "ipsecNegotiationPolicy": 2, "ipsecNFA": 3}
    return [*sorted((obj for _, obj in parts.values()), key=lambda o: order[o.object_class]), top]


def _isakmp_object(key_exchange: KeyExchange, container: str, owner: str) -> DirectoryObject:
    dn = object_dn("ipsecISAKMPPolicy", key_exchange.guid, container)
    offers = []
    for index, method in enumerate(key_exchange.methods):
        cipher, hash_, group = (_number(CIPHERS, method.encryption), _number(MM_HASHES, method.hash),
                                _number(DH_GROUPS, method.dh_group))
        if cipher is None or hash_ is None or group is None:
            raise DirectoryError(dn, f"ipsecData offers[{index}]",
                                 f"{method}: the directory format has DES and 3DES, MD5 and SHA1, "
                                 "DH groups 1, 2 and 14")
        offers.append(wire.MainModeOfferData(cipher=cipher, hash=hash_, dh_group=group,
                                         lifetime_seconds=key_exchange.lifetime_seconds,
                                         quick_mode_limit=key_exchange.sessions))
    data = wire.IsakmpData(policy_id=key_exchange.guid, offers=tuple(offers),
                           master_key_pfs=int(key_exchange.master_key_pfs))
    return DirectoryObject(dn, "ipsecISAKMPPolicy", key_exchange.guid, _encode(dn, data),
                           when_changed=key_exchange.when_changed or None, owners=(owner,))


def _number(table: Mapping[int, object], value: object) -> int | None:
    return next((number for number, v in table.items() if v == value), None)


def _encode(dn: str, record: wire.Record) -> bytes:
    try:
        return wire.encode(record)
    except ValueError as e:
        raise DirectoryError(dn, "ipsecData", str(e)) from None


def _nfa_blob(dn: str, authentication: tuple[AuthMethod, ...], active: bool, connection: ConnectionType,
              tunnel: IPv4Address | None) -> bytes:
    numbers = {kind: number for number, kind in AUTH_KINDS.items()}
    entries = tuple(wire.AuthEntry(numbers[a.kind], a.psk if a.kind is AuthKind.PRESHARED_KEY else
                                   a.ca if a.kind is AuthKind.CERTIFICATE else "") for a in authentication)
    return _encode(dn, wire.NfaData(
        auth_methods=entries, interface_type=_number(CONNECTION_TYPES, connection) or wire.INTERFACE_ALL,
        tunnel_address=tunnel or wire.NO_ADDRESS, tunnel_flags=int(tunnel is not None), active=int(active)))


def _filter_object(filter_list: FilterList, container: str, owner: str) -> DirectoryObject:
    dn = object_dn("ipsecFilter", filter_list.guid, container)
    entries = []
    for index, f in enumerate(filter_list.filters):
        src, src_mask, src_name = _wire_endpoint(f.source)
        dst, dst_mask, dst_name = _wire_endpoint(f.destination)
        entries.append(wire.FilterEntry(
            filter_id=derived_guid(filter_list.guid, f"filter {index}"), source_address=src,
            source_mask=src_mask, destination_address=dst, destination_mask=dst_mask,
            protocol=f.protocol or 0,
            source_port=f.source_port or 0, destination_port=f.destination_port or 0,
            mirrored=int(f.mirrored),
            description=f.name + (f"\n{f.description}" if f.description else ""), source_name=src_name,
            destination_name=dst_name))
    return DirectoryObject(dn, "ipsecFilter", filter_list.guid, _encode(dn, wire.FilterData(tuple(entries))),
                           name=filter_list.name, description=filter_list.description or None,
                           when_changed=filter_list.when_changed or None, owners=(owner,))


def _wire_endpoint(endpoint: Endpoint) -> tuple[IPv4Address, IPv4Address, str]:
    """(address, mask, DNS name): 'me' is 0.0.0.0/255.255.255.255, 'any' 0.0.0.0/0.0.0.0."""
    if endpoint.network is not None:
        return endpoint.network.network_address, endpoint.network.netmask, ""
    if endpoint.kind is EndpointKind.ANY:
        return wire.NO_ADDRESS, wire.NO_ADDRESS, ""
    return wire.NO_ADDRESS, ALL_ONES, endpoint.dns_name or ""


def _negotiation_object(action: FilterAction, container: str, owner: str) -> DirectoryObject:
    dn = object_dn("ipsecNegotiationPolicy", action.guid, container)
    if action.action is spd.Action.NEGOTIATE:
        guid = wire.ACTION_NEGOTIATE_INBOUND_PASSTHROUGH if action.accept_unsecured else wire.ACTION_NEGOTIATE
    else:
        guid = wire.ACTION_BLOCK if action.action is spd.Action.BLOCK else wire.ACTION_PERMIT
    methods = action.security_methods if action.action is spd.Action.NEGOTIATE else ()
    fallback = action.fallback_to_clear and action.action is spd.Action.NEGOTIATE
    return DirectoryObject(dn, "ipsecNegotiationPolicy", action.guid,
                           _offers_blob(dn, methods, fallback, action.pfs), name=action.name,
                           description=action.description or None, when_changed=action.when_changed or None,
                           owners=(owner,), negotiation_type=wire.NEGOTIATION_TYPE_STANDARD,
                           negotiation_action=guid)


def _offers_blob(dn: str, methods: Sequence[spd.SecurityMethod], fallback: bool, pfs: bool) -> bytes:
    offers = []
    for index, m in enumerate(methods):
        ops = []
        if m.ah_integrity:
            ops.append(wire.Operation(_number(INTEGRITY, m.ah_integrity) or 0, 0, wire.OPERATION_AH))
        if m.uses_esp:
            cipher = _number(ESP_CIPHERS, m.esp_encryption)
            if cipher is None:
                raise DirectoryError(dn, f"ipsecData offers[{index}]",
                                     f"{m.describe()}: the directory format has DES and 3DES")
            integrity = _number(ESP_INTEGRITY, m.esp_integrity)
            ops.append(wire.Operation(cipher, integrity or 0, wire.OPERATION_ESP))
        offers.append(wire.QuickModeOfferData(operations=tuple(ops), lifetime_seconds=m.lifetime_seconds,
                                          lifetime_kb=m.lifetime_kb, pfs=int(pfs)))
    if fallback:
        offers.append(wire.QuickModeOfferData(operations=()))
    return _encode(dn, wire.NegotiationData(tuple(offers)))
