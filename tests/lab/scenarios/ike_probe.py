"""Run ipsecd's IKE component alone in a node, on real UDP 500/4500, against a peer (no data plane).

    python3 ike_probe.py '{"local": "198.51.100.1", "peer": "198.51.100.2", "local_net": "10.1.0.0/24",
                           "remote_net": "10.2.0.0/24", "encryption": "aes128", "group": 14,
                           "psk": "...", "initiate": true}'

Prints one JSON line per SA the driver would install (`add_sa`) or delete, and IKE's event log lines;
runs until killed. Lets the strongSwan interop test IKE before the daemon wires IKE to the driver.
"""

import asyncio
import json
import logging
import sys

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from ipsecd.ike.ike import IKE, Rule
from ipsecd.ike.settings import (
    Certificates,
    MainModeOffer,
    PeerPolicy,
    PreSharedKey,
    QuickModeOffer,
    Selector,
)


def emit(**fields) -> None:
    print(json.dumps(fields), flush=True)


class Driver:
    """Records what IKE hands the IPsec driver."""

    def add_sa(self, sa) -> None:
        emit(
            event="add_sa",
            inbound=sa.inbound.spi,
            outbound=sa.outbound.spi,
            mode=sa.mode,
            udp=list(sa.udp_encapsulation) if sa.udp_encapsulation else None,
            describe=sa.describe(),
        )

    def delete_sa(self, spi: int, destination: str, protocol: str) -> None:
        emit(event="delete_sa", spi=spi, destination=destination, protocol=protocol)


def auth(cfg: dict):
    if "psk" in cfg:
        return PreSharedKey(cfg["psk"].encode())
    with open(cfg["cert"], "rb") as f:
        cert = x509.load_pem_x509_certificate(f.read())
    with open(cfg["key"], "rb") as f:
        key = serialization.load_pem_private_key(f.read(), None)
    with open(cfg["ca"], "rb") as f:
        ca = x509.load_pem_x509_certificate(f.read())
    return Certificates(cert, key, (ca,))


async def main(cfg: dict) -> None:
    policy = PeerPolicy(
        auth=[auth(cfg)],
        main_mode=[MainModeOffer(cfg["encryption"], "sha1", cfg["group"])],
        quick_mode=[QuickModeOffer("esp", cfg["encryption"], "sha1", **cfg.get("quick_mode", {}))],
        tunnel=True,
    )
    rule = Rule(
        "to the far site",
        policy,
        Selector.parse(cfg["local_net"]),
        Selector.parse(cfg["remote_net"]),
        tunnel_endpoint=cfg["peer"],
    )
    ike = IKE(cfg["local"], Driver())
    ike.load_policy([rule])
    await ike.start(own_4500=True)
    emit(event="listening")
    if cfg.get("initiate"):
        ike.acquire(rule, rule.local, rule.remote)
    await asyncio.Event().wait()


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, stream=sys.stdout, format="%(message)s")
    asyncio.run(main(json.loads(sys.argv[1])))
