"""The IPsec policy model, pure data: what an administrator configures, before the Policy Agent applies it.

One *policy* holds key exchange settings and *rules*; a rule joins one *filter list*, one *filter action*,
authentication methods, a tunnel endpoint (None = transport mode) and a connection type. The *default
response rule* is the rule without a filter list that answers peers asking for security. Every part has a
GUID (the documents' ``ipsecID``) and a change stamp (``whenChanged``, Unix seconds) so that a directory
store (ipsecPolicy, ipsecISAKMPPolicy, ipsecNFA, ipsecFilter, ipsecNegotiationPolicy objects) and its local
cache map onto the same objects, and an exported policy keeps its identity when imported elsewhere.

Filters here are *generic*: they may say "me" (my IP address), "any" or a DNS name. ``expand`` turns them
into the driver's *specific* filters (``ipsecd.driver.spd.Filter``).

>>> Endpoint.parse("10.0.0.0/24"), Endpoint.parse("me"), str(Endpoint.parse("dc.lab.test"))
(Endpoint(kind=<EndpointKind.SUBNET: 'subnet'>, network=IPv4Network('10.0.0.0/24'), dns_name=None), \
Endpoint(kind=<EndpointKind.ME: 'me'>, network=None, dns_name=None), 'dc.lab.test')
>>> MainModeMethod.parse("3DES-SHA1-2")
MainModeMethod(encryption='3des-cbc', hash='sha1', dh_group=2)
>>> parse_security_method("ESP[3DES,SHA1]:100000k/900s").describe()
'ESP 3des-cbc/hmac-sha1-96, 900 s/100000 KB'
"""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass, field
from enum import StrEnum
from ipaddress import IPv4Address, IPv4Network

from ipsecd import algorithms
from ipsecd.driver import spd
from ipsecd.yaml_lines import did_you_mean

# Protocol names the Windows filter dialog offers, plus the SPD's own; any other protocol is a number.
PROTOCOLS = {**spd.PROTOCOL_NUMBERS, "egp": 8, "hmp": 20, "xns-idp": 22, "rdp": 27, "rvd": 66, "raw": 255}

# netsh spellings (qmsecmethods / mmsecmethods) -> the algorithm table's names (ipsecd.algorithms), which the
# driver and IKE use. Windows Server 2003 has DES, 3DES, MD5 and SHA1; AES128/192/256, AES-GCM128/256 and
# SHA256 are the names later Windows gives the others the driver implements, for peers such as strongSwan.
ESP_CIPHERS: dict[str, str | None] = {e.windows: None if e.name == "null" else e.name
                                       for e in algorithms.ENCRYPTIONS.values()}
ESP_INTEGRITY: dict[str, str | None] = {**{i.windows: i.name for i in algorithms.INTEGRITIES.values()},
                                         "NONE": None}
MM_CIPHERS = {e.windows: e.name for e in algorithms.ENCRYPTIONS.values() if e.oakley_id is not None}
MM_HASHES = {"SHA1": "sha1", "MD5": "md5"}
DH_GROUPS = (1, 2, 14)  # Windows Server 2003: 768, 1024 and ("High") 2048-bit MODP

_DNS_LABEL = re.compile(r"(?!-)[A-Za-z0-9-]{1,63}(?<!-)")


def new_guid() -> uuid.UUID:
    return uuid.uuid4()


class EndpointKind(StrEnum):
    ME = "me"  # "My IP address": each address of this node, re-expanded when addresses change
    ANY = "any"
    ADDRESS = "address"
    SUBNET = "subnet"
    DNS = "dns"  # resolved when the policy is applied


@dataclass(frozen=True)
class Endpoint:
    """One side of a generic filter, as the filter dialog's address choices."""

    kind: EndpointKind
    network: IPv4Network | None = None
    dns_name: str | None = None

    @classmethod
    def parse(cls, text: str) -> Endpoint:
        """'me', 'any', an IPv4 address, a subnet (no host bits set) or a DNS name; ValueError otherwise."""
        word = str(text).strip()
        if word.lower() in ("me", "any"):
            return cls(EndpointKind(word.lower()))
        if re.fullmatch(r"[0-9./]+", word):
            try:
                net = IPv4Network(word)
            except ValueError as e:
                raise ValueError(f"{text!r} is not a valid address or subnet ({e})") from None
            if net.prefixlen == 32 and "/" not in word:
                return cls(EndpointKind.ADDRESS, net)
            return cls(EndpointKind.SUBNET, net)
        labels = word.rstrip(".").split(".")
        if all(_DNS_LABEL.fullmatch(label) for label in labels) and not labels[-1].isdigit():
            return cls(EndpointKind.DNS, dns_name=word.rstrip(".").lower())
        raise ValueError(f"{text!r} is not an address, subnet, 'me', 'any' or DNS name")

    def __str__(self) -> str:
        if self.kind is EndpointKind.ADDRESS and self.network is not None:
            return str(self.network.network_address)
        if self.network is not None:
            return str(self.network)
        return self.dns_name or self.kind.value


ME = Endpoint(EndpointKind.ME)
ANY = Endpoint(EndpointKind.ANY)


def parse_protocol(value: str | int) -> int | None:
    """'any' -> None, a name from PROTOCOLS or a number 0-255 -> the IP protocol number."""
    word = str(value).strip().lower()
    if word == "any":
        return None
    if word in PROTOCOLS:
        return PROTOCOLS[word]
    if word.isdigit() and 0 <= int(word) <= 255:
        return int(word)
    raise ValueError(f"{value!r} is not 'any', a protocol name ({', '.join(PROTOCOLS)}) or a number 0-255"
                     f"{did_you_mean(word, ['any', *PROTOCOLS])}")


def protocol_name(number: int | None) -> str:
    if number is None:
        return "any"
    return next((name for name, n in PROTOCOLS.items() if n == number), str(number))


def parse_port(value: str | int) -> int | None:
    word = str(value).strip().lower()
    if word == "any":
        return None
    if word.isdigit() and 1 <= int(word) <= 65535:
        return int(word)
    raise ValueError(f"{value!r} is not 'any' or a port number 1-65535")


_QM_PART = re.compile(r"(ESP|AH)\[([A-Z0-9-]+)(?:,([A-Z0-9-]+))?\]")
_QM_LIFETIME = re.compile(r"(?:(\d+)k)?/?(?:(\d+)s)?")


def _words(table: dict[str, str | None], none: bool = True) -> str:
    """The netsh words a table takes, for an error message: '3DES|DES|...|None'."""
    return "|".join(_spelt(k) for k, v in table.items() if none or v is not None)


def _spelt(word: str) -> str:
    return word.replace("NONE", "None")


def _unknown(text: str, what: str, word: str, table: dict[str, str | None], none: bool = True) -> ValueError:
    """An algorithm the table does not have: what it takes (read from ipsecd.algorithms), the closest name."""
    known = [k for k, v in table.items() if none or v is not None]
    hint = did_you_mean(word, known).replace("NONE", "None")
    return ValueError(f"{text!r}: {_spelt(word)!r} is not {what}{hint}; "
                      f"known: {_words(table, none)}")


def parse_security_method(text: str) -> spd.SecurityMethod:
    """A netsh ``qmsecmethods`` entry: 'ESP[3DES,SHA1]:100000k/3600s', 'AH[MD5]+ESP[DES,None]', 'AH[SHA1]'.

    ESP takes [cipher,integrity] (ESP_CIPHERS, ESP_INTEGRITY), AH takes [integrity]; the lifetime part
    ':<KB>k/<seconds>s' is optional, either half may be left out (Windows defaults: 100000 KB, 3600 s).
    Its ranges (Windows': 300..172800 s, 20480..2147483647 KB) are checked with the policy (validate.py).

    >>> parse_security_method("ESP[AES129,SHA1]")
    Traceback (most recent call last):
    ...
    ValueError: 'ESP[AES129,SHA1]': 'AES129' is not an ESP cipher (did you mean 'AES128'?); \
known: None|DES|3DES|AES128|AES192|AES256|AES-GCM128|AES-GCM256
    """
    spec, _, lifetime = str(text).upper().replace(" ", "").partition(":")
    esp_cipher = esp_integrity = ah = None
    parts = spec.split("+")
    for part in parts:
        m = _QM_PART.fullmatch(part)
        if not m:
            raise ValueError(f"{text!r}: {part!r} is not ESP[cipher,integrity] or AH[integrity]")
        proto, first, second = m.groups()
        if proto == "ESP":
            if second is None:
                raise ValueError(f"{text!r}: ESP takes [cipher,integrity]: a cipher of {_words(ESP_CIPHERS)} "
                                 f"and an integrity algorithm of {_words(ESP_INTEGRITY)}")
            if first not in ESP_CIPHERS:
                raise _unknown(str(text), "an ESP cipher", first, ESP_CIPHERS)
            if second not in ESP_INTEGRITY:
                raise _unknown(str(text), "an ESP integrity algorithm", second, ESP_INTEGRITY)
            esp_cipher, esp_integrity = ESP_CIPHERS[first], ESP_INTEGRITY[second]
            if esp_cipher is None and esp_integrity is None:
                raise ValueError(f"{text!r}: ESP[None,None] protects nothing")
            if esp_cipher and algorithms.encryption(esp_cipher).aead and esp_integrity:
                raise ValueError(f"{text!r}: {first} authenticates itself; its integrity must be None")
        else:
            if second is not None or ESP_INTEGRITY.get(first) is None:
                raise _unknown(str(text), "an AH integrity algorithm", first, ESP_INTEGRITY, none=False)
            ah = ESP_INTEGRITY[first]
    if len({p[:p.index("[")] for p in parts}) != len(parts):
        raise ValueError(f"{text!r}: ESP and AH may each appear once")
    kb, seconds = 100_000, 3600
    if lifetime:
        m = _QM_LIFETIME.fullmatch(lifetime.lower())
        if not m or not any(m.groups()):
            raise ValueError(f"{text!r}: lifetime must read '<KB>k/<seconds>s'")
        kb = int(m.group(1)) if m.group(1) else kb
        seconds = int(m.group(2)) if m.group(2) else seconds
    return spd.SecurityMethod(esp_encryption=esp_cipher, esp_integrity=esp_integrity, ah_integrity=ah,
                              lifetime_seconds=seconds, lifetime_kb=kb)


def format_security_method(method: spd.SecurityMethod) -> str:
    """The inverse of parse_security_method, in netsh spelling."""
    def word(table: dict[str, str | None], value: str | None) -> str:
        return next(k for k, v in table.items() if v == value).replace("NONE", "None")

    parts = []
    if method.ah_integrity:
        parts.append(f"AH[{word(ESP_INTEGRITY, method.ah_integrity)}]")
    if method.uses_esp:
        parts.append(f"ESP[{word(ESP_CIPHERS, method.esp_encryption)},"
                     f"{word(ESP_INTEGRITY, method.esp_integrity)}]")
    return f"{'+'.join(parts)}:{method.lifetime_kb}k/{method.lifetime_seconds}s"


@dataclass(frozen=True)
class MainModeMethod:
    """One main mode security method (IKE phase 1 offer): cipher, hash and Diffie-Hellman group."""

    encryption: str = "3des-cbc"
    hash: str = "sha1"
    dh_group: int = 2

    @classmethod
    def parse(cls, text: str) -> MainModeMethod:
        """netsh ``mmsecmethods`` spelling: '3DES-SHA1-2' (cipher-hash-group; group 1, 2 or 14)."""
        form = f"<{'|'.join(MM_CIPHERS)}>-<{'|'.join(MM_HASHES)}>-<{'|'.join(map(str, DH_GROUPS))}>"
        parts = str(text).upper().split("-")
        if len(parts) != 3:
            raise ValueError(f"{text!r} is not {form}")
        cipher, hash_, group = parts
        for word, known, what in ((cipher, MM_CIPHERS, "a main mode cipher"), (hash_, MM_HASHES, "a hash"),
                                  (group, [str(g) for g in DH_GROUPS], "a Diffie-Hellman group")):
            if word not in known:
                raise ValueError(f"{text!r}: {word!r} is not {what}{did_you_mean(word, known)}; "
                                 f"write {form}")
        return cls(MM_CIPHERS[cipher], MM_HASHES[hash_], int(group))

    def __str__(self) -> str:
        cipher = next(k for k, v in MM_CIPHERS.items() if v == self.encryption)
        return f"{cipher}-{self.hash.upper()}-{self.dh_group}"


# Windows Server 2003 defaults, as the default policies in a directory carry them (ipsecISAKMPPolicy data).
DEFAULT_MAIN_MODE_METHODS = tuple(MainModeMethod.parse(m)
                                  for m in ("3DES-SHA1-2", "3DES-MD5-2", "DES-SHA1-1", "DES-MD5-1"))
DEFAULT_POLLING_INTERVAL = 180 * 60
DEFAULT_MASTER_KEY_LIFETIME = 480 * 60


class AuthKind(StrEnum):
    PRESHARED_KEY = "psk"
    CERTIFICATE = "certificate"
    KERBEROS = "kerberos"


@dataclass(frozen=True)
class AuthMethod:
    """One authentication method of a rule; a rule offers its methods in order."""

    kind: AuthKind
    psk: str | None = None  # the pre-shared key
    ca: str | None = None  # the certificate authority whose certificates are trusted

    def __str__(self) -> str:
        if self.kind is AuthKind.CERTIFICATE:
            return f"certificate (CA {self.ca})"
        return "pre-shared key" if self.kind is AuthKind.PRESHARED_KEY else "kerberos"


class ConnectionType(StrEnum):
    ALL = "all"
    LAN = "lan"
    REMOTE_ACCESS = "remote_access"


@dataclass(frozen=True)
class IPFilter:
    """One generic filter of a filter list. Mirrored: the reply traffic matches too (Windows' default)."""

    name: str
    source: Endpoint
    destination: Endpoint
    protocol: int | None = None
    source_port: int | None = None
    destination_port: int | None = None
    mirrored: bool = True
    description: str = ""


@dataclass(frozen=True)
class FilterList:
    """A named, reusable list of filters (directory class ipsecFilter)."""

    name: str
    filters: tuple[IPFilter, ...]
    guid: uuid.UUID = field(default_factory=new_guid)
    when_changed: int = 0
    description: str = ""


@dataclass(frozen=True)
class FilterAction:
    """Permit, block or negotiate security (directory class ipsecNegotiationPolicy)."""

    name: str
    action: spd.Action
    security_methods: tuple[spd.SecurityMethod, ...] = ()
    pfs: bool = False  # quick mode (session key) perfect forward secrecy
    accept_unsecured: bool = False  # "Accept unsecured communication, but always respond using IPsec"
    fallback_to_clear: bool = False  # "Allow unsecured communication with non-IPsec-aware computers"
    guid: uuid.UUID = field(default_factory=new_guid)
    when_changed: int = 0
    description: str = ""

    def to_spd(self) -> spd.SPDAction:
        return spd.SPDAction(self.name, self.action, self.security_methods, self.pfs,
                                self.accept_unsecured, self.fallback_to_clear)


@dataclass(frozen=True)
class Rule:
    """Filter list + filter action + authentication + tunnel setting (directory class ipsecNFA)."""

    name: str
    filter_list: FilterList
    filter_action: FilterAction
    authentication: tuple[AuthMethod, ...] = ()
    tunnel: IPv4Address | None = None  # the tunnel endpoint; None = transport mode
    connection_type: ConnectionType = ConnectionType.ALL
    active: bool = True
    guid: uuid.UUID = field(default_factory=new_guid)
    when_changed: int = 0
    description: str = ""


# The default response rule's quick mode offers in the Windows default policies (ipsecNegotiationPolicy data).
DEFAULT_RESPONSE_METHODS = tuple(parse_security_method(m) for m in (
    "ESP[3DES,SHA1]", "ESP[3DES,MD5]", "ESP[DES,SHA1]", "ESP[DES,MD5]", "AH[SHA1]", "AH[MD5]"))


@dataclass(frozen=True)
class DefaultResponseRule:
    """The rule without filters: answer a peer that asks for security, securing only what it asks for."""

    authentication: tuple[AuthMethod, ...]
    security_methods: tuple[spd.SecurityMethod, ...] = DEFAULT_RESPONSE_METHODS
    active: bool = True
    guid: uuid.UUID = field(default_factory=new_guid)
    when_changed: int = 0

    name = "<Dynamic> default response"  # what Windows shows for it; not a field, it cannot be renamed


@dataclass(frozen=True)
class KeyExchange:
    """Main mode settings (directory class ipsecISAKMPPolicy)."""

    methods: tuple[MainModeMethod, ...] = DEFAULT_MAIN_MODE_METHODS
    lifetime_seconds: int = DEFAULT_MASTER_KEY_LIFETIME
    sessions: int = 0  # quick modes per main mode, 0 = unlimited
    master_key_pfs: bool = False  # a new main mode for every quick mode
    guid: uuid.UUID = field(default_factory=new_guid)
    when_changed: int = 0


@dataclass(frozen=True)
class Policy:
    """An IPsec policy (directory class ipsecPolicy); a node has at most one assigned."""

    name: str
    rules: tuple[Rule, ...] = ()
    default_response: DefaultResponseRule | None = None
    key_exchange: KeyExchange = field(default_factory=KeyExchange)
    polling_interval: int = DEFAULT_POLLING_INTERVAL  # seconds between checks of the store for changes
    guid: uuid.UUID = field(default_factory=new_guid)
    when_changed: int = 0
    description: str = ""

    @property
    def last_changed(self) -> int:
        """The newest change stamp of the policy and all its parts.

        A directory does not move the policy object's whenChanged when only a filter list or filter action
        changes, so a poller must look at the parts too.
        """
        stamps = [self.when_changed, self.key_exchange.when_changed]
        for rule in self.rules:
            stamps += [rule.when_changed, rule.filter_list.when_changed, rule.filter_action.when_changed]
        if self.default_response:
            stamps.append(self.default_response.when_changed)
        return max(stamps)

    def rule(self, name: str) -> Rule:
        return next(r for r in self.rules if r.name == name)
