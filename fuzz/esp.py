"""Fuzz target `esp`: the driver's inbound data path (IPsecDriver.inbound / inbound_udp over the
SAD, ESP and AH), without a TUN: a RecordingWire takes what is delivered.

One driver (host 10.0.0.1) holds live inbound SAs of every kind it negotiates: ESP AES-GCM transport, AH
transport, ESP in UDP 4500 (NAT-T), ESP 3DES/MD5 in tunnel mode between gateways, and an AH+ESP bundle.
The peers' outbound twins (same SPIs and keys) make real packets; the inputs are those packets mutated
(bit flips, edge values in the IP, UDP and ESP/AH header fields, truncations, splices, replays of other
packets), real packets replayed, authenticated packets whose inner packet is garbage or foreign traffic,
and non-ESP datagrams on port 4500. Each input must end in exactly one place: delivered to the wire, or
one drop counter moved by one (Bad SPI, Not Decrypted, Not Authenticated, Replay, Malformed, Dropped By
Policy, ECN), or counted as IKE or a NAT-T keepalive on port 4500; nothing raises.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network

from fuzz.engine import Defect, Mutator, Target
from ipsecd.algorithms import ENCRYPTIONS, INTEGRITIES
from ipsecd.driver.driver import IPsecDriver, RecordingWire
from ipsecd.driver.errors import IPsecError
from ipsecd.driver.esp import NON_ESP_MARKER
from ipsecd.driver.ipv4 import ip_to_bytes, ipv4_header
from ipsecd.driver.sad import SecurityAssociation
from ipsecd.driver.spd import SPD, Action, Filter, SecurityMethod, SPDAction

HOST = "10.0.0.1"
SECURE = SPDAction("secure", Action.NEGOTIATE, (SecurityMethod(),))
DROP_COUNTERS = ("bad_spi_packets", "packets_not_decrypted", "packets_not_authenticated", "replayed_packets",
                 "malformed_packets", "dropped_by_policy", "ecn_drops")
BATCH = 200


@dataclass
class Channel:
    """A live inbound SA (or bundle) and the peer's outbound twin that makes its packets."""

    name: str
    sender: SecurityAssociation
    inner_src: str  # the addresses of the traffic the SA's filter secures
    inner_dst: str
    udp: bool = False

    @property
    def peer(self) -> str:
        return self.sender.src


def _keys(encryption: str, integrity: str | None, rng: random.Random) -> dict:
    return dict(encryption=encryption, encryption_key=rng.randbytes(ENCRYPTIONS[encryption].key_size),
                integrity=integrity,
                integrity_key=rng.randbytes(INTEGRITIES[integrity].key_size) if integrity else b"")


def _pair(spi: int, protocol: str, mode: str, peer: str, local: str, keys: dict, **kw) -> tuple:
    """(peer's outbound, our inbound) with the same SPI and keys."""
    return tuple(SecurityAssociation(spi, protocol, direction, mode, peer, local, **keys, **kw)
                 for direction in ("outbound", "inbound"))


def build_driver(rng: random.Random) -> tuple[IPsecDriver, RecordingWire, list[Channel]]:
    gateway, site_local, site_remote = "198.51.100.2", "10.1.0.0/24", "10.2.0.0/24"
    filters = [Filter(f"to {peer}", IPv4Network(HOST), IPv4Network(peer), SECURE).mirrored()
               for peer in ("10.0.0.2", "10.0.0.3", "10.0.0.4", "10.0.0.5")]
    filters.append(Filter("site", IPv4Network(site_local), IPv4Network(site_remote), SECURE,
                          tunnel=IPv4Address(gateway)).mirrored())
    wire = RecordingWire()
    driver = IPsecDriver(SPD(f for pair in filters for f in pair), wire=wire, ike=_IKEHooks())
    channels = []

    def install(name: str, filter_name: str, pair: tuple, inner: tuple[str, str], udp: bool = False) -> None:
        driver.add_sa(pair[1], filter_name)
        channels.append(Channel(name, pair[0], *inner, udp=udp))

    install("esp gcm transport", "to 10.0.0.2",
            _pair(0x1001, "esp", "transport", "10.0.0.2", HOST, _keys("aes-gcm-128", None, rng)),
            ("10.0.0.2", HOST))
    install("ah transport", "to 10.0.0.3",
            _pair(0x1002, "ah", "transport", "10.0.0.3", HOST, _keys("null", "hmac-sha1-96", rng)),
            ("10.0.0.3", HOST))
    install("esp-in-udp transport", "to 10.0.0.4",
            _pair(0x1003, "esp", "transport", "10.0.0.4", HOST, _keys("aes-cbc-128", "hmac-sha256-128", rng),
                  udp_encap=(4500, 4500)),
            ("10.0.0.4", HOST), udp=True)
    install("esp tunnel", "site",
            _pair(0x1004, "esp", "tunnel", gateway, "198.51.100.1", _keys("3des-cbc", "hmac-md5-96", rng)),
            ("10.2.0.7", "10.1.0.9"))
    esp_keys, ah_keys = _keys("aes-cbc-256", None, rng), _keys("null", "hmac-sha1-96", rng)
    inner_pair = _pair(0x1005, "esp", "transport", "10.0.0.5", HOST, esp_keys)
    bundle = tuple(SecurityAssociation(0x1006, "ah", side.direction, "transport", "10.0.0.5", HOST, **ah_keys,
                                       inner=side) for side in inner_pair)
    install("ah+esp bundle", "to 10.0.0.5", bundle, ("10.0.0.5", HOST))
    return driver, wire, channels


class _IKEHooks:
    """What the driver tells IKE; the fuzz target only needs it to accept the calls."""

    def acquire(self, f, sel) -> None: ...

    def expire(self, sa, hard) -> None: ...

    def datagram_4500(self, data, addr) -> None: ...

    def invalid_spi(self, spi, peer, protocol) -> None: ...


def esp_fields(packet: bytes, udp: bool) -> list[tuple[int, int]]:
    """Header fields worth edge values: the ESP header of a UDP payload, or IP (version/IHL, total length,
    fragment bits, protocol) and the ESP/AH header after it."""
    if udp:
        return [(0, 4), (4, 4)]
    ihl = (packet[0] & 0x0F) * 4 if packet else 20
    return [(0, 1), (2, 2), (6, 2), (9, 1), (ihl, 1), (ihl + 1, 1), (ihl, 4), (ihl + 4, 4), (ihl + 8, 4)]


class ESPTarget(Target):
    name = "esp"

    def __init__(self, rng: random.Random) -> None:
        super().__init__(rng)
        self.mutator = Mutator(rng)
        self.driver, self.wire, self.channels = build_driver(rng)
        self.recent: dict[str, list[bytes]] = {c.name: [] for c in self.channels}

    def _inner(self, channel: Channel) -> bytes:
        size = self.rng.choice((0, 8, 40, 200, 1400))
        protocol = self.rng.choice((1, 6, 17))
        return ipv4_header(ip_to_bytes(channel.inner_src), ip_to_bytes(channel.inner_dst), protocol,
                           size) + self.rng.randbytes(size)

    def _seal(self, channel: Channel, inner: bytes) -> bytes | None:
        """The peer's packet (the UDP payload for ESP in UDP); None if the sender refuses the inner one."""
        try:
            return channel.sender.encapsulate_udp(inner) if channel.udp else channel.sender.encapsulate(inner)
        except IPsecError:
            return None

    def step(self) -> None:
        self.wire.delivered.clear()
        for _ in range(BATCH):
            channel = self.rng.choice(self.channels)
            recent = self.recent[channel.name]
            choice = self.rng.random()
            if choice < 0.1 or not recent:
                packet = self._seal(channel, self._inner(channel))
                recent.append(packet)
                del recent[:-32]
            elif choice < 0.2:  # authenticated garbage: a mutated inner packet, or foreign traffic
                inner = self._inner(channel)
                if self.rng.random() < 0.5:
                    inner = ipv4_header(ip_to_bytes("10.9.9.9"), inner[16:20], inner[9], len(inner) - 20) \
                        + inner[20:]
                packet = self._seal(channel, self.mutator.mutate(inner, []))
                if packet is None:
                    continue
            elif choice < 0.25:
                packet = self.rng.choice(recent)  # a replay
            elif choice < 0.28 and channel.udp:  # IKE or a keepalive on port 4500, whole or mutated
                packet = self.mutator.mutate(self.rng.choice((NON_ESP_MARKER + bytes(28), b"\xff")), [])
            else:  # mostly a fresh packet, whose sequence number passes the replay window to the ICV check
                base = self._seal(channel, self._inner(channel)) if self.rng.random() < 0.6 else None
                base = base or self.rng.choice(recent)
                packet = bytearray(self.mutator.mutate(base, recent, esp_fields(base, channel.udp)))
                if not channel.udp and len(packet) >= 4 and self.rng.random() < 0.5:
                    packet[2:4] = min(len(packet), 0xFFFF).to_bytes(2, "big")  # reaches the ESP checks
                packet = bytes(packet)
            self.check(packet, f"{channel.name} SA from {channel.peer}", self._deliver(channel))

    def _deliver(self, channel: Channel):
        def deliver(packet: bytes) -> str:
            before = self._places()
            if channel.udp:
                self.driver.inbound_udp(packet, channel.peer, 4500, HOST)
            else:
                self.driver.inbound(packet)
            moved = {k: v - before.get(k, 0) for k, v in self._places().items() if v != before.get(k, 0)}
            if list(moved.values()) != [1]:
                raise Defect(f"a packet must end in one place, it moved {moved or 'nothing'}")
            return next(iter(moved))
        return deliver

    def _places(self) -> dict[str, int]:
        counters = self.driver.sad.counters
        places = {name: getattr(counters, name) for name in DROP_COUNTERS}
        places["delivered"] = len(self.wire.delivered)
        places["ike_datagrams_4500"] = self.driver.counters["ike_datagrams_4500"]
        places["nat_keepalives_received"] = self.driver.counters["nat_keepalives_received"]
        return places
