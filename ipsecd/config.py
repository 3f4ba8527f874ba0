"""The node configuration file (YAML): driver settings, filters, filter actions and manual SAs.

Manual keys come first (like `setkey`), so the driver works before IKE exists. Every value is checked and a
bad one is refused with the file, line and field named, so the daemon refuses to start (or a reload keeps
the previous configuration) instead of running with something half understood.

>>> cfg = parse('''
... filters:
...   - {name: a-b, source: 10.0.0.1, destination: 10.0.0.2, action: secure}
... actions:
...   secure: {action: negotiate}
... sas:
...   - {spi: 0x1001, protocol: esp, direction: outbound, source: 10.0.0.1, destination: 10.0.0.2,
...      encryption: aes-gcm-128, enc_key: "00112233445566778899aabbccddeeff01020304", filter: a-b}
... ''', "ipsecd.yaml")
>>> for f in cfg.spd.filters: print(f.describe())
a-b: outbound 10.0.0.1/32 -> 10.0.0.2/32 any => negotiate
a-b: inbound 10.0.0.2/32 -> 10.0.0.1/32 any => negotiate
>>> parse("driver:\\n  mtu: 50", "ipsecd.yaml")
Traceback (most recent call last):
...
ipsecd.config.ConfigError: ipsecd.yaml:2: driver.mtu: 50 is outside 576..9000
"""

from __future__ import annotations

import re
from collections.abc import Callable
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path
from typing import Any

import yaml

from ipsecd import algorithms, yaml_lines
from ipsecd.driver.spd import SPD, Action, Direction, Filter, SecurityMethod, SPDAction
from ipsecd.ike import natt
from ipsecd.ike.settings import Kerberos
from ipsecd.policy.model import parse_port, parse_protocol  # one spelling for manual and policy filters
from ipsecd.policy.policyfile import parse_duration

DEFAULT_PATH = Path("/etc/ipsecd/ipsecd.yaml")
ANY = IPv4Network("0.0.0.0/0")


class ConfigError(ValueError):
    """A configuration value that is wrong; the message names file, line and field."""


@dataclass(frozen=True)
class DriverSettings:
    tun: str = "ipsec0"
    mtu: int = 1400
    socket: str = "/run/ipsecd.sock"
    replay_window: int = 64
    idle_seconds: int = 300  # an SA that carries nothing this long is deleted (the documents' idle SAs)
    route_table: int = 2121  # policy routing table holding the default route into the TUN
    fwmark: int = 0x2121  # the mark nftables puts on packets to be secured
    bypass_mark: int = 0x2122  # the mark on the daemon's own packets, which are never secured again
    offload: bool = True  # TUN super-packets: TSO reads cut by ipsecd, coalesced GSO writes (offload.py)


@dataclass(frozen=True)
class ManualSA:
    """One manually keyed SA, as `setkey` would add it; the driver turns it into a SecurityAssociation."""

    spi: int
    protocol: str  # "esp" or "ah"
    direction: Direction
    mode: str  # "transport" or "tunnel"
    source: IPv4Address
    destination: IPv4Address
    filter: str
    encryption: str | None = None
    enc_key: bytes = b""
    integrity: str | None = None
    auth_key: bytes = b""
    udp_encap: tuple[int, int] | None = None  # (sport, dport) of RFC 3948 UDP encapsulation
    nat_keepalive: bool = False  # this end is behind the NAT: keep the mapping alive (RFC 3948 §2.3)
    lifetime_seconds: int | None = None
    lifetime_kb: int | None = None


@dataclass(frozen=True)
class IKESettings:
    """How IKE runs on this node (what it negotiates comes from the policy). Paths are absolute here."""

    address: IPv4Address | None = None  # UDP 500 is bound here; None: the node's first address (TUN excluded)
    retransmit: tuple[float, ...] = (1, 2, 4, 8, 16, 32)  # seconds between sends (Windows: 7 sends)
    keepalive_seconds: float = 20.0  # NAT-T keepalives from behind a NAT (RFC 3948 §2.3)
    certificate: Path | None = None  # this node's certificate (PEM), for certificate authentication
    private_key: Path | None = None  # its RSA key (PEM, unencrypted)
    trusted_cas: tuple[Path, ...] = ()  # CA certificates (PEM); a policy names the CA it trusts
    #: seconds, instead of every rule's master key lifetime: lets a lab cross main mode lifetimes in a test
    #: (a policy's floor is Windows' 5 minutes); None: the policy's
    main_mode_lifetime: int | None = None
    #: NAT-T revisions announced and accepted, by preference (rfc3947, draft-02); None: draft-02 only, as
    #: Windows Server 2003; [] turns NAT-T off
    nat_traversal: tuple[str, ...] | None = None
    kerberos: Kerberos | None = None  # a domain member's computer account: keytab, principal (method 65001)


@dataclass(frozen=True)
class DirectorySettings:
    """A domain member's directory store (docs/directory.md): its DC, its computer account, its cache."""

    dc: IPv4Address  # the DC's remembered address: no name lookup when it is down (a 49 s resolver stall)
    realm: str  # LAB.TEST
    dc_name: str  # the Kerberos target and the certificate's name; default dc.<realm>
    ca: Path | None  # the DC's CA (PEM) for LDAPS
    keytab: Path = Path("/etc/krb5.keytab")  # the computer account's keys (mode 600): no password
    account: str | None = None  # None: this host's name + "$", as Windows names computer accounts
    cache: Path = Path("/var/lib/ipsecd/cache")  # the documents' ...\IPSec\Policy\Cache
    ccache: Path = Path("/run/ipsecd/krb5cc")  # tickets kept between binds
    group_policy_interval: int = 90 * 60  # seconds; Winlogon's 90 minutes
    timeout: float = 1.0  # connect and receive, seconds: a DC that is down costs about this much
    krb5_config: Path | None = None  # KRB5_CONFIG for ipsecd (None: /etc/krb5.conf)


@dataclass(frozen=True)
class PolicySettings:
    """Where the Policy Agent reads the node's IPsec policy (docs/policy.md, docs/directory.md)."""

    store: Path  # a LocalStore folder: one policy per *.yaml and an `assigned` file
    assign: str | None = None  # at start, assign this file of the store (else `assigned` says which)
    directory: DirectorySettings | None = None  # a domain member: the directory first, the local store last


@dataclass(frozen=True)
class NodeConfig:
    path: str
    driver: DriverSettings
    spd: SPD
    sas: tuple[ManualSA, ...] = ()
    ike: IKESettings = field(default_factory=IKESettings)
    policy: PolicySettings | None = None  # IKE and a Windows-style policy instead of filters and manual SAs


def load(path: str | Path = DEFAULT_PATH) -> NodeConfig:
    """Read and check a configuration file; ConfigError names what is wrong."""
    try:
        text = Path(path).read_text()
    except OSError as e:
        raise ConfigError(f"{path}: cannot read: {e.strerror}") from None
    return parse(text, str(path))


def parse(text: str, name: str = "ipsecd.yaml") -> NodeConfig:
    try:
        root = yaml_lines.compose(text, name)
    except yaml_lines.YamlSyntaxError as e:
        raise ConfigError(str(e)) from None
    data = yaml.safe_load(text) if root is not None else None
    return _ConfigReader(name, yaml_lines.value_lines(root)).node(data if data is not None else {})


class _ConfigReader:
    """Turns the parsed YAML into checked objects; every error says where."""

    def __init__(self, name: str, lines: dict[str, int]) -> None:
        self.name = name
        self.lines = lines

    def error(self, path: str, message: str) -> ConfigError:
        line = yaml_lines.enclosing_line(self.lines, path)
        return ConfigError(f"{self.name}{f':{line}' if line else ''}: {path or 'top level'}: {message}")

    def mapping(self, value: Any, path: str, allowed: AbstractSet[str],
                required: AbstractSet[str] = frozenset()) -> dict:
        if not isinstance(value, dict):
            raise self.error(path, f"expected a mapping, got {type(value).__name__}")
        for key in value:
            if key not in allowed:
                raise self.error(f"{path}.{key}" if path else str(key),
                                 f"unknown field{yaml_lines.did_you_mean(key, allowed)}; "
                                 f"known: {', '.join(sorted(allowed))}")
        for key in sorted(required - value.keys()):
            raise self.error(f"{path}.{key}" if path else key, "missing")
        return value

    def sequence(self, value: Any, path: str) -> list:
        if value is None:
            return []
        if not isinstance(value, list):
            raise self.error(path, f"expected a list, got {type(value).__name__}")
        return value

    def convert(self, path: str, value: Any, parse: Callable[[Any], Any]) -> Any:
        try:
            return parse(value)
        except (ValueError, TypeError) as e:
            raise self.error(path, str(e)) from None

    # -- top level -------------------------------------------------------------------------------------------

    def node(self, data: Any) -> NodeConfig:
        data = self.mapping(data, "", {"node", "driver", "filters", "actions", "sas", "ike", "policy"})
        policy = self.policy(data["policy"]) if data.get("policy") is not None else None
        if policy is not None:
            manual = next((key for key in ("filters", "actions", "sas") if data.get(key)), None)
            if manual:
                raise self.error(manual, "a node takes either a policy (policy:, negotiated by IKE) or "
                                         "manual filters and SAs (filters:, actions:, sas:), not both; "
                                         "move the filters into the policy file")
        elif data.get("ike") is not None:
            raise self.error("ike", "IKE negotiates what a policy asks for: add policy: {store: ...}")
        driver = self.driver(data.get("driver") or {})
        actions = self.actions(data.get("actions") or {})
        filters = self.filters(data.get("filters"), actions)
        raw_sas = self.sequence(data.get("sas"), "sas")
        sas = tuple(self.sa(raw, f"sas[{i}]", filters) for i, raw in enumerate(raw_sas))
        seen: dict[tuple, int] = {}
        for i, sa in enumerate(sas):
            key = (sa.spi, sa.destination, sa.protocol)
            if key in seen:
                raise self.error(f"sas[{i}].spi", f"same SPI, destination and protocol as sas[{seen[key]}]")
            seen[key] = i
        ike = self.ike(data.get("ike") or {})
        spd = SPD(f for pair in filters.values() for f in pair)
        return NodeConfig(self.name, driver, spd, sas, ike, policy)

    def path(self, value: Any, path: str) -> Path:
        """A file or folder named in the configuration; relative paths are relative to the file itself."""
        if not isinstance(value, str) or not value:
            raise self.error(path, f"expected a path, got {value!r}")
        return (Path(self.name).parent / value).absolute()

    def policy(self, raw: Any) -> PolicySettings:
        raw = self.mapping(raw, "policy", {"store", "assign", "directory"}, {"store"})
        assign = raw.get("assign")
        if assign is not None and (not isinstance(assign, str) or "/" in assign or not assign):
            raise self.error("policy.assign", f"expected the file name of a policy in the store, "
                                              f"got {assign!r}")
        directory = self.directory(raw["directory"]) if raw.get("directory") is not None else None
        return PolicySettings(self.path(raw["store"], "policy.store"), assign, directory)

    def directory(self, raw: Any) -> DirectorySettings:
        path = "policy.directory"
        raw = self.mapping(raw, path, {"dc", "realm", "dc_name", "ca", "keytab", "account", "cache", "ccache",
                                       "group_policy_interval", "timeout", "krb5_config"}, {"dc", "realm"})
        realm = raw["realm"]
        if not isinstance(realm, str) or not re.fullmatch(r"[A-Za-z0-9-]+(\.[A-Za-z0-9-]+)+", realm):
            raise self.error(f"{path}.realm", f"expected a realm such as LAB.TEST, got {realm!r}")
        if not isinstance(raw["dc"], str) or not re.fullmatch(r"[0-9.]+", raw["dc"]):
            raise self.error(f"{path}.dc", f"expected the DC's IPv4 address (remembered: no name lookup when "
                                           f"it is down), got {raw['dc']!r}")
        values: dict[str, Any] = {"dc": self.convert(f"{path}.dc", raw["dc"], IPv4Address),
                                  "realm": realm.upper(), "dc_name": f"dc.{realm.lower()}", "ca": None}
        for key in ("dc_name", "account"):
            if key in raw:
                if not isinstance(raw[key], str) or not raw[key] or any(c.isspace() for c in raw[key]):
                    raise self.error(f"{path}.{key}", f"expected a name without spaces, got {raw[key]!r}")
                values[key] = raw[key]
        for key in ("ca", "keytab", "cache", "ccache", "krb5_config"):
            if key in raw:
                values[key] = self.path(raw[key], f"{path}.{key}")
        if "group_policy_interval" in raw:
            values["group_policy_interval"] = self.convert(f"{path}.group_policy_interval",
                                                           raw["group_policy_interval"], parse_duration)
        if "timeout" in raw:
            if not _positive(raw["timeout"]) or raw["timeout"] > 30:
                raise self.error(f"{path}.timeout", f"expected seconds in (0, 30], got {raw['timeout']!r}")
            values["timeout"] = float(raw["timeout"])
        return DirectorySettings(**values)

    def ike(self, raw: Any) -> IKESettings:
        raw = self.mapping(raw, "ike", {"address", "retransmit", "keepalive_seconds", "certificate",
                                        "private_key", "trusted_cas", "main_mode_lifetime", "nat_traversal",
                                        "kerberos"})
        values: dict[str, Any] = {}
        if raw.get("address") is not None:
            values["address"] = self.convert("ike.address", raw["address"], IPv4Address)
        if "retransmit" in raw:
            seconds = self.sequence(raw["retransmit"], "ike.retransmit")
            if not seconds or not all(_positive(s) for s in seconds):
                raise self.error("ike.retransmit", f"expected a list of positive seconds, got {seconds!r}")
            values["retransmit"] = tuple(seconds)
        if "keepalive_seconds" in raw:
            if not _positive(raw["keepalive_seconds"]):
                raise self.error("ike.keepalive_seconds", f"expected positive seconds, got "
                                                          f"{raw['keepalive_seconds']!r}")
            values["keepalive_seconds"] = raw["keepalive_seconds"]
        if "main_mode_lifetime" in raw:
            lifetime = raw["main_mode_lifetime"]
            if not isinstance(lifetime, int) or isinstance(lifetime, bool) or not 1 <= lifetime <= 48 * 3600:
                raise self.error("ike.main_mode_lifetime", f"expected whole seconds from 1 to 172800 (48 "
                                                           f"hours), got {lifetime!r}")
            values["main_mode_lifetime"] = lifetime
        for key in ("certificate", "private_key"):
            if raw.get(key) is not None:
                values[key] = self.path(raw[key], f"ike.{key}")
        values["trusted_cas"] = tuple(self.path(p, f"ike.trusted_cas[{i}]")
                                      for i, p in enumerate(self.sequence(raw.get("trusted_cas"),
                                                                          "ike.trusted_cas")))
        if ("certificate" in values) != ("private_key" in values):
            raise self.error("ike.certificate", "certificate and private_key go together")
        if raw.get("kerberos") is not None:
            values["kerberos"] = self.kerberos(raw["kerberos"])
        if "nat_traversal" in raw:
            values["nat_traversal"] = self.nat_traversal(raw["nat_traversal"])
        return IKESettings(**values)

    def kerberos(self, raw: Any) -> Kerberos:
        """``ike.kerberos``: the computer account IKE authenticates as (its keytab, no password)."""
        raw = self.mapping(raw, "ike.kerberos", {"keytab", "principal", "service", "ccache",
                                                 "kdc_timeout_seconds"}, {"keytab", "principal"})
        timeout = raw.get("kdc_timeout_seconds", Kerberos.kdc_timeout)
        if not _positive(timeout):
            raise self.error("ike.kerberos.kdc_timeout_seconds",
                             f"expected positive seconds, got {timeout!r}")
        for key in ("principal", "service", "ccache"):
            if key in raw and (not isinstance(raw[key], str) or not raw[key]):
                raise self.error(f"ike.kerberos.{key}", f"expected text, got {raw[key]!r}")
        try:
            return Kerberos(str(self.path(raw["keytab"], "ike.kerberos.keytab")), raw["principal"],
                            raw.get("service", ""), raw.get("ccache", ""), kdc_timeout=float(timeout))
        except ValueError as e:
            raise self.error("ike.kerberos.principal", str(e)) from None

    def nat_traversal(self, raw: Any) -> tuple[str, ...]:
        """The NAT-T revisions IKE announces: [draft-02] (the default, as Windows Server 2003), [rfc3947,
        draft-02], [] (none: no NAT-T vendor IDs, no NAT-D)."""
        names = self.sequence(raw, "ike.nat_traversal")
        for i, name in enumerate(names):
            path = f"ike.nat_traversal[{i}]"
            if name not in natt.VARIANTS:
                hint = yaml_lines.did_you_mean(name, natt.VARIANTS)
                raise self.error(path, f"{name!r} is not a NAT-T revision{hint}; known: "
                                       f"{', '.join(natt.VARIANTS)} ([] turns NAT-T off)")
            if name in names[:i]:
                raise self.error(path, f"{name!r} is named twice")
        return tuple(names)

    def driver(self, raw: Any) -> DriverSettings:
        known = DriverSettings.__dataclass_fields__
        raw = self.mapping(raw, "driver", set(known))
        values = {}
        for key, value in raw.items():
            expected = type(getattr(DriverSettings, key))
            if not isinstance(value, expected) or (isinstance(value, bool) and expected is not bool):
                raise self.error(f"driver.{key}", f"expected {expected.__name__}, got {value!r}")
            values[key] = value
        settings = DriverSettings(**values)
        if not 576 <= settings.mtu <= 9000:
            raise self.error("driver.mtu", f"{settings.mtu} is outside 576..9000")
        if not 32 <= settings.replay_window <= 4096:
            raise self.error("driver.replay_window", "RFC 4303 §3.4.3 wants 32..4096 (64 recommended)")
        return settings

    def actions(self, raw: Any) -> dict[str, SPDAction]:
        raw = self.mapping(raw, "actions", set(raw) if isinstance(raw, dict) else set())
        out = {}
        for name, spec in raw.items():
            path = f"actions.{name}"
            spec = self.mapping(spec, path, {"action", "methods", "pfs", "accept_unsecured",
                                             "fallback_to_clear"}, {"action"})
            action = self.convert(f"{path}.action", spec["action"], Action)
            methods = tuple(self.method(m, f"{path}.methods[{i}]")
                            for i, m in enumerate(self.sequence(spec.get("methods"), f"{path}.methods")))
            if action is Action.NEGOTIATE and not methods:
                methods = (SecurityMethod(),)
            flags = {k: spec.get(k, False) for k in ("pfs", "accept_unsecured", "fallback_to_clear")}
            for key, value in flags.items():
                if not isinstance(value, bool):
                    raise self.error(f"{path}.{key}", f"expected true or false, got {value!r}")
            out[name] = SPDAction(name, action, methods, **flags)
        return out

    def method(self, raw: Any, path: str) -> SecurityMethod:
        keys = {"esp_encryption", "esp_integrity", "ah_integrity", "lifetime_seconds", "lifetime_kb"}
        raw = self.mapping(raw, path, keys)
        for key in ("esp_encryption", "esp_integrity", "ah_integrity"):
            if raw.get(key) is not None:
                lookup = algorithms.encryption if key == "esp_encryption" else algorithms.integrity
                self.convert(f"{path}.{key}", raw[key], lookup)
        return self.convert(path, raw, lambda r: SecurityMethod(**r))

    def filters(self, raw: Any, actions: dict[str, SPDAction]) -> dict[str, tuple[Filter, ...]]:
        builtin = {a.value: SPDAction(a.value, a) for a in (Action.PERMIT, Action.BLOCK)}
        out: dict[str, tuple[Filter, ...]] = {}
        for i, spec in enumerate(self.sequence(raw, "filters")):
            path = f"filters[{i}]"
            spec = self.mapping(spec, path, {"name", "source", "destination", "protocol", "source_port",
                                             "destination_port", "mirrored", "tunnel", "action", "rule"},
                                {"name", "action"})
            name = str(spec["name"])
            if name in out:
                raise self.error(f"{path}.name", f"filter {name!r} is defined twice")
            action_name = spec["action"]
            action = actions.get(action_name) or builtin.get(action_name)
            if action is None:
                known = ", ".join([*builtin, *actions])
                raise self.error(f"{path}.action", f"no filter action {action_name!r}; known: {known}")
            protocol = self.convert(f"{path}.protocol", spec.get("protocol", "any"), parse_protocol)
            ports = [self.convert(f"{path}.{k}", spec.get(k, "any"), parse_port)
                     for k in ("source_port", "destination_port")]
            tunnel = spec.get("tunnel")
            mirrored = spec.get("mirrored", True)
            if not isinstance(mirrored, bool):
                raise self.error(f"{path}.mirrored", f"expected true or false, got {mirrored!r}")
            src = self.convert(f"{path}.source", spec.get("source", "any"), _network)
            dst = self.convert(f"{path}.destination", spec.get("destination", "any"), _network)
            tunnel = self.convert(f"{path}.tunnel", tunnel, IPv4Address) if tunnel is not None else None
            try:
                one = Filter(name, src, dst, action, Direction.OUTBOUND, protocol, ports[0], ports[1], tunnel,
                             str(spec.get("rule", "")))
            except ValueError as e:
                raise self.error(path, str(e)) from None
            out[name] = one.mirrored() if mirrored else (one,)
        return out

    def sa(self, raw: Any, path: str, filters: dict[str, tuple[Filter, ...]]) -> ManualSA:
        raw = self.mapping(raw, path, {"spi", "protocol", "direction", "mode", "source", "destination",
                                       "encryption", "enc_key", "integrity", "auth_key", "udp_encap",
                                       "filter", "lifetime_seconds", "lifetime_kb"},
                           {"spi", "protocol", "direction", "source", "destination", "filter"})
        spi = raw["spi"]
        if not isinstance(spi, int) or isinstance(spi, bool) or not 0 < spi < 2**32:
            raise self.error(f"{path}.spi", f"expected a number 256..4294967295, got {spi!r}")
        if spi < 256:
            raise self.error(f"{path}.spi", f"SPI {spi} is reserved (1-255); use 256..4294967295")
        protocol = raw["protocol"]
        if protocol not in ("esp", "ah"):
            raise self.error(f"{path}.protocol", f"expected esp or ah, got {protocol!r}")
        direction = raw["direction"]
        if direction not in tuple(Direction):
            raise self.error(f"{path}.direction", f"expected inbound or outbound, got {direction!r}")
        direction = Direction(direction)
        mode = raw.get("mode", "transport")
        if mode not in ("transport", "tunnel"):
            raise self.error(f"{path}.mode", f"expected transport or tunnel, got {mode!r}")
        source = self.convert(f"{path}.source", raw["source"], IPv4Address)
        destination = self.convert(f"{path}.destination", raw["destination"], IPv4Address)
        filter_name = raw["filter"]
        if filter_name not in filters:
            raise self.error(f"{path}.filter", f"no filter named {filter_name!r}")
        outbound = filters[filter_name][0]
        if outbound.action.action is not Action.NEGOTIATE:
            raise self.error(f"{path}.filter", f"filter {filter_name!r} does not negotiate security")
        if (mode == "tunnel") != (outbound.tunnel is not None):
            raise self.error(f"{path}.mode", f"filter {filter_name!r} is "
                             f"{'a tunnel filter' if outbound.tunnel else 'a transport filter'}")
        if direction is Direction.OUTBOUND and outbound.tunnel and destination != outbound.tunnel:
            raise self.error(f"{path}.destination", f"the tunnel endpoint of filter {filter_name!r} "
                             f"is {outbound.tunnel}")
        encryption, enc_key = self.algorithm_key(raw, path, "encryption", "enc_key", algorithms.encryption)
        integrity, auth_key = self.algorithm_key(raw, path, "integrity", "auth_key", algorithms.integrity)
        if protocol == "ah" and encryption:
            raise self.error(f"{path}.encryption", "AH does not encrypt; use protocol esp")
        if protocol == "ah" and not integrity:
            raise self.error(f"{path}.integrity", "AH needs an integrity algorithm")
        if protocol == "esp" and not (encryption or integrity):
            raise self.error(f"{path}.encryption", "ESP needs encryption, integrity or both")
        if encryption and algorithms.encryption(encryption).aead and integrity:
            raise self.error(f"{path}.integrity", f"{encryption} authenticates itself; leave integrity out")
        udp_encap = raw.get("udp_encap")
        if udp_encap is not None:
            if protocol == "ah":
                raise self.error(f"{path}.udp_encap", "AH cannot be UDP-encapsulated (RFC 3715 §2.1)")
            spec = self.mapping(udp_encap, f"{path}.udp_encap", {"sport", "dport", "keepalive"})
            udp_encap = tuple(self.convert(f"{path}.udp_encap.{k}", spec.get(k, 4500), _port_number)
                              for k in ("sport", "dport"))
            nat_keepalive = spec.get("keepalive", False)
            if not isinstance(nat_keepalive, bool):
                raise self.error(f"{path}.udp_encap.keepalive",
                                 f"expected true or false, got {nat_keepalive!r}")
        else:
            nat_keepalive = False
        lifetimes = {}
        for key in ("lifetime_seconds", "lifetime_kb"):
            value = raw.get(key)
            if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value <= 0):
                raise self.error(f"{path}.{key}", f"expected a positive number, got {value!r}")
            lifetimes[key] = value
        return ManualSA(spi, protocol, direction, mode, source, destination, filter_name, encryption, enc_key,
                        integrity, auth_key, udp_encap, nat_keepalive, **lifetimes)

    def algorithm_key(self, raw: dict, path: str, algo_key: str, key_key: str,
                      lookup: Callable[[str], Any]) -> tuple[str | None, bytes]:
        name = raw.get(algo_key)
        if name in (None, "none"):
            if raw.get(key_key):
                raise self.error(f"{path}.{key_key}", f"a key but no {algo_key} algorithm")
            return None, b""
        algo = self.convert(f"{path}.{algo_key}", str(name), lookup)
        text = raw.get(key_key, "")
        if not isinstance(text, str):
            raise self.error(f"{path}.{key_key}", "expected a quoted string of hex digits")
        digits = text.removeprefix("0x").replace(":", "").replace(" ", "")
        if len(digits) != 2 * algo.key_size:
            got = len(digits) / 2
            raise self.error(f"{path}.{key_key}", f"expected {algo.key_size} bytes of hex for {algo.name}, "
                             f"got {int(got) if got == int(got) else got}")
        try:
            return algo.name, bytes.fromhex(digits)
        except ValueError:
            raise self.error(f"{path}.{key_key}", "expected hex digits 0-9, a-f") from None


def _positive(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and value > 0


def _network(value: Any) -> IPv4Network:
    if value in ("any", None):
        return ANY
    try:
        return IPv4Network(str(value), strict=True)
    except ValueError as e:
        raise ValueError(f"expected any, an IPv4 address or a subnet like 10.0.0.0/24: {e}") from None


def _port_number(value: Any) -> int:
    if isinstance(value, int) and not isinstance(value, bool) and 0 < value < 65536:
        return value
    raise ValueError(f"expected a port 1..65535, got {value!r}")
