"""ipsecd's IKE component alone in a node, on real UDP 500/4500, against a peer (no data plane).

Lets the strongSwan interop tests and the bench run IKE before the daemon wires it to the driver. The host
side (`IkeProbe`) copies this file into a node that has ipsecd (image `node`) and runs it there:

    probe = IkeProbe(lab.node("gw-a"))
    probe.start({"local": "198.51.100.1", "peer": "198.51.100.2", "local_net": "10.1.0.0/24",
                 "remote_net": "10.2.0.0/24", "encryption": "aes-cbc-128", "group": 14, "psk": "...",
                 "initiate": True})          # or "cert", "key", "ca": paths in the node
    probe.wait_for("add_sa")                 # [{"event": "add_sa", "inbound": ..., "udp": [4500, 4500], ...}]
    probe.setup_time(config)                 # initiate once: seconds from main mode's first packet to the SA

In the node it prints one JSON line per SA IKE hands the driver (`add_sa`) or deletes, between IKE's event log
lines, and runs until stopped; with `"once": true` it initiates, prints `setup` (seconds from the acquire to
the quick mode SA handed to the driver), deletes its SAs (telling the peer) and exits. `"tunnel": false`
negotiates transport mode (`local_net`, `remote_net` then the two addresses). `"delete": {"esp": [SPI, ...],
"isakmp": ["<icookie hex>:<rcookie hex>", ...]}` makes it, once its SA is in, send the peer a DELETE of those
(protected under its main mode SA, as a peer deletes its own) and print `sent_delete`: a hostile peer naming
SAs that are not its own.
"""

from __future__ import annotations

import asyncio
import json
import logging
import sys
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from lab.running import Node, Process

NODE_PATH = "/opt/lab/ike_probe.py"
LOG = "/var/log/lab/ike-probe.log"


class IkeProbe:
    """Host side: the probe in one node."""

    def __init__(self, node: Node):
        self.node = node
        self.process: Process | None = None

    def _install(self) -> None:
        self.node.put_file(NODE_PATH, Path(__file__).read_bytes())
        self.node.exec(["rm", "-f", LOG])

    def start(self, config: dict) -> IkeProbe:
        """Run IKE with `config` in the background; returns once its sockets are bound."""
        self._install()
        self.process = self.node.spawn(["python3", NODE_PATH, json.dumps(config)], name="ike-probe", log=LOG)
        self.process.wait_for_log('"listening"')
        return self

    def events(self) -> list[dict]:
        """The JSON lines so far (the other lines are IKE's event log in words)."""
        if self.process is None:
            raise RuntimeError(f"{self.node.name}: the IKE probe was not started")
        return [json.loads(line) for line in self.process.log().splitlines() if line.startswith("{")]

    def wait_for(self, event: str, timeout: float = 20) -> list[dict]:
        from lab.capture import wait_until

        return wait_until(
            lambda: [e for e in self.events() if e["event"] == event],
            timeout,
            what=f"{self.node.name}: ipsecd's IKE to report {event} (log {LOG})",
        )

    def stop(self) -> None:
        if self.process is not None:
            self.process.stop()

    def setup_time(self, config: dict) -> float:
        """Initiate once (main mode + quick mode), then delete the SAs; seconds to the SA in the driver."""
        self._install()
        result = self.node.exec(
            ["python3", NODE_PATH, json.dumps({**config, "initiate": True, "once": True})], timeout=40
        )
        setups = [json.loads(line) for line in result.stdout.splitlines() if '"setup"' in line]
        if not setups:
            raise RuntimeError(
                f"{self.node.name}: ipsecd's IKE did not set up an SA:\n{result.stdout}{result.stderr}"
            )
        return setups[0]["seconds"]


# -- in the node ------------------------------------------------------------------------------------------


def emit(**fields) -> None:
    print(json.dumps(fields), flush=True)


class RecordingDriver:
    """Stands in for the IPsec driver: prints what IKE hands it."""

    def __init__(self):
        self.installed = asyncio.Event()

    def add_inbound(self, sa) -> None:
        emit(event="add_inbound", inbound=sa.inbound.spi)

    def add_sa(self, sa) -> None:
        self.installed.set()
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


def authentication(config: dict):
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    from ipsecd.ike.settings import Certificates, PreSharedKey

    if "psk" in config:
        return PreSharedKey(config["psk"].encode())
    cert = x509.load_pem_x509_certificate(Path(config["cert"]).read_bytes())
    key = serialization.load_pem_private_key(Path(config["key"]).read_bytes(), None)
    if not isinstance(key, rsa.RSAPrivateKey):
        raise ValueError(f"{config['key']}: not an RSA private key (IKE signs with RSA)")
    return Certificates(cert, key, (x509.load_pem_x509_certificate(Path(config["ca"]).read_bytes()),))


def send_delete(ike, peer: str, names: dict) -> None:
    """DELETEs naming `names` (ESP SPIs, ISAKMP cookie pairs), under our main mode SA with `peer`."""
    from ipsecd.ike import informational
    from ipsecd.ike.isakmp import Delete, ProtocolID

    mm = next(e for e in ike.main_modes.values() if e.sa.remote[0] == peer)
    esp = [spi.to_bytes(4, "big") for spi in names.get("esp", [])]
    cookies = [bytes.fromhex(pair.replace(":", "")) for pair in names.get("isakmp", [])]
    for protocol, spis in ((ProtocolID.ESP, esp), (ProtocolID.ISAKMP, cookies)):
        if spis:
            wire = informational.protect(mm.sa, [Delete.of(protocol, spis)])
            ike.sender(wire, mm.sa.remote, mm.sa.local[1])
    emit(event="sent_delete", under=f"{mm.sa.icookie.hex()}:{mm.sa.rcookie.hex()}", **names)


async def run(config: dict) -> None:
    from ipsecd.ike.component import IKE
    from ipsecd.ike.settings import IKERule, MainModeOffer, PeerPolicy, QuickModeOffer, Selector

    policy = PeerPolicy(
        auth=[authentication(config)],
        main_mode=[MainModeOffer(config["encryption"], "sha1", config["group"])],
        quick_mode=[QuickModeOffer("esp", config.get("esp_encryption", config["encryption"]),
                                   config.get("esp_integrity", "hmac-sha1-96"))],
        tunnel=config.get("tunnel", True),
    )
    local, remote = Selector.parse(config["local_net"]), Selector.parse(config["remote_net"])
    rule = IKERule("to the far site", policy, local, remote, tunnel_endpoint=config["peer"])
    driver = RecordingDriver()
    ike = IKE(config["local"], driver)
    ike.load_policy([rule])
    await ike.start(own_4500=True)
    emit(event="listening")
    loop = asyncio.get_running_loop()
    started = loop.time()
    if config.get("initiate"):
        ike.acquire(rule, local, remote)
    if "delete" in config:
        await asyncio.wait_for(driver.installed.wait(), 30)
        send_delete(ike, config["peer"], config["delete"])
    if not config.get("once"):
        await asyncio.Event().wait()
    await asyncio.wait_for(driver.installed.wait(), 30)
    emit(event="setup", seconds=loop.time() - started)
    await ike.stop()


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, stream=sys.stdout, format="%(message)s")
    asyncio.run(run(json.loads(sys.argv[1])))
