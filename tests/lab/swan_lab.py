"""Helpers for the strongSwan scenarios on gateway-tunnel: node overrides, suites, credentials, WAN checks.

See scenarios/strongswan-tunnel/README.md (both gateways strongSwan, the anchor) and
scenarios/strongswan-interop/README.md (ipsecd gateway ↔ strongSwan gateway).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import yaml
from pki import Identity, Pki
from scapy.layers.inet import IP, UDP

from ipsecd import algorithms
from lab.strongswan import EspKeys, Tunnel

GW_A, GW_B = "198.51.100.1", "198.51.100.2"
SITE_A, SITE_B = "10.1.0.0/24", "10.2.0.0/24"
PSK = "ipsec-lab interop key"
#: No plain route between the sites on a strongSwan gateway: a missing SA means no traffic, not plaintext.
STRONGSWAN_GATEWAY = {"image": "strongswan", "routes": []}


@dataclass(frozen=True)
class Suite:
    """Main mode and quick mode methods, in swanctl's words and in the documents' words."""

    ike: str
    esp: str
    encr: str  # swanctl --list-sas encr-alg / encr-keysize, integ-alg, dh-group
    keysize: str | None
    dh_group: str
    encryption: str  # main mode cipher, as ipsecd.algorithms names it (3des-cbc, aes-cbc-128), with SHA1
    group: int  # Oakley group 2 or 14
    esp_encryption: str | None = None  # quick mode: the main mode cipher unless named (aes-gcm-128)
    esp_integrity: str | None = "hmac-sha1-96"  # None with AES-GCM

    @property
    def name(self) -> str:
        return self.ike if self.esp_encryption is None else f"{self.ike} esp {self.esp}"

    @property
    def quick_mode_encryption(self) -> str:
        return self.esp_encryption or self.encryption

    @property
    def windows(self) -> tuple[str, str]:
        """The policy file's main mode method and quick mode security method (docs/policy.md)."""
        cipher = algorithms.encryption(self.encryption).windows
        esp_cipher = algorithms.encryption(self.quick_mode_encryption).windows
        integrity = algorithms.integrity(self.esp_integrity).windows if self.esp_integrity else "None"
        return f"{cipher}-SHA1-{self.group}", f"ESP[{esp_cipher},{integrity}]"


SUITES = {
    s.name: s
    for s in (
        Suite("3des-sha1-modp1024", "3des-sha1", "3DES_CBC", None, "MODP_1024", "3des-cbc", 2),
        Suite("aes128-sha1-modp2048", "aes128-sha1", "AES_CBC", "128", "MODP_2048", "aes-cbc-128", 14),
    )
}
#: ESP AES-GCM-16 with a 128-bit key in quick mode (RFC 4106 §8.1: transform 20, Key Length 128, no
#: integrity attribute, KEYMAT with the 4-byte salt) under an AES-CBC main mode.
AES_GCM = Suite("aes128-sha1-modp2048", "aes128gcm16", "AES_CBC", "128", "MODP_2048", "aes-cbc-128", 14,
                esp_encryption="aes-gcm-128", esp_integrity=None)
GATEWAYS = {"gw-a": (GW_A, GW_B, SITE_A, SITE_B), "gw-b": (GW_B, GW_A, SITE_B, SITE_A)}


def tunnel(gateway: str, suite: Suite, auth: str, **extra) -> Tunnel:
    """The strongSwan tunnel of `gateway` (gw-a or gw-b) to the other one, PSK or certificates."""
    me, peer, mine, theirs = GATEWAYS[gateway]
    common = dict(ike_proposal=suite.ike, esp_proposal=suite.esp, **extra)
    if auth == "psk":
        return Tunnel(me, peer, mine, theirs, psk=PSK, **common)
    other = "gw-b" if gateway == "gw-a" else "gw-a"
    return Tunnel(me, peer, mine, theirs, cert=f"{gateway}.pem", remote_id=Pki.dn_of(other), **common)


def credentials(pki: Pki, me: Identity) -> dict[str, bytes]:
    """The files swanctl --load-all reads: the CA, our certificate, our key."""
    return {
        "/etc/swanctl/x509ca/lab-ca.pem": pki.ca_pem,
        f"/etc/swanctl/x509/{me.name}.pem": me.cert_pem,
        f"/etc/swanctl/private/{me.name}.pem": me.key_pem,
    }


def udp_esp(packets) -> list[tuple[str, str, int]]:
    """(source, destination, SPI) of every ESP-in-UDP packet (port 4500, no non-ESP marker, RFC 3948)."""
    found = []
    for p in packets:
        if IP in p and UDP in p and 4500 in (p[UDP].sport, p[UDP].dport):
            data = bytes(p[UDP].payload)
            if len(data) > 8 and data[:4] != bytes(4):
                found.append((p[IP].src, p[IP].dst, int.from_bytes(data[:4], "big")))
    return found


def ipsecd_policy(
    gateway: str, suite: Suite, auth: str, pki: Pki | None = None, lifetime: str = "100000k/3600s"
) -> str:
    """The ipsecd gateway's policy (the Policy Agent's format, branch policy: docs/policy.md): two tunnel
    rules as Windows has them, one per direction, with this suite and PSK or certificate authentication."""
    me, peer, mine, theirs = GATEWAYS[gateway]
    main_mode, quick_mode = suite.windows
    authentication = [{"psk": PSK} if auth == "psk" else {"certificate": pki.ca_dn()}]
    action = {
        "name": "Require Security (tunnel)",
        "action": "negotiate",
        "security_methods": [f"{quick_mode}:{lifetime}"],
    }
    rules = [
        {
            "name": name,
            "filter_list": {
                "name": f"{source} -> {destination}",
                "filters": [
                    {
                        "name": name,
                        "source": source,
                        "destination": destination,
                        "protocol": "any",
                        "mirrored": False,
                    }
                ],
            },
            "filter_action": action,
            "authentication": authentication,
            "tunnel": endpoint,
        }
        for name, source, destination, endpoint in (
            ("to the far site", mine, theirs, peer),
            ("from the far site", theirs, mine, me),
        )
    ]
    policy = {
        "name": f"strongswan interop ({gateway})",
        "polling_interval": "30s",
        "key_exchange": {"methods": [main_mode]},
        "rules": rules,
    }
    return yaml.safe_dump(policy, sort_keys=False)


#: charon's cipher names -> ipsecd's (ipsecd/algorithms.py)
IPSECD_ENCRYPTION = {"AES_CBC": "aes-cbc-128", "3DES_CBC": "3des-cbc"}


def manual_sa_config(keys: dict[int, EspKeys], outbound: int, inbound: int) -> str:
    """An ipsecd node configuration (driver branch format) for gw-a: the site-to-site filter, and the SA
    pair strongSwan negotiated as manual SAs, ESP in UDP 4500 both ways (what strongSwan's libipsec sends)."""
    encryption = IPSECD_ENCRYPTION[keys[outbound].encryption]
    name = "site-a<->site-b"
    sas = [
        {
            "spi": spi,
            "protocol": "esp",
            "direction": direction,
            "mode": "tunnel",
            "source": source,
            "destination": destination,
            "encryption": encryption,
            "enc_key": keys[spi].encryption_key.hex(),
            "integrity": "hmac-sha1-96",
            "auth_key": keys[spi].integrity_key.hex(),
            "udp_encap": {"sport": 4500, "dport": 4500},
            "filter": name,
        }
        for spi, direction, source, destination in (
            (outbound, "outbound", GW_A, GW_B),
            (inbound, "inbound", GW_B, GW_A),
        )
    ]
    methods = [{"esp_encryption": encryption, "esp_integrity": "hmac-sha1-96"}]
    return yaml.safe_dump(
        {
            "filters": [
                {"name": name, "source": SITE_A, "destination": SITE_B, "tunnel": GW_B, "action": "tunnel"}
            ],
            "actions": {"tunnel": {"action": "negotiate", "methods": methods}},
            "sas": sas,
        },
        sort_keys=False,
    )


#: strongSwan itself loses a few packets while it swaps a rekeyed SA in libipsec (0-3 of 60 pings 10 ms apart
#: between two strongSwan gateways, even with no other traffic): the bound rekey tests allow pings.
REKEY_PING_LOSS = 5


def lost_pings(ping_output: str) -> int:
    """How many echo requests got no reply, from ping's summary line."""
    sent, received = re.search(r"(\d+) packets transmitted, (\d+) received", ping_output).groups()
    return int(sent) - int(received)
