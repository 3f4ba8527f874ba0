"""Security Association Database (RFC 4301 §4.4.2): SAs with keys, sequence numbers,
anti-replay windows, lifetimes and counters, and the packet transforms that use them.

An SA is one direction of one protocol.  The driver calls, per packet::

    outer = sa.encapsulate(inner_ipv4_packet)        # outbound SA (or the outer SA of a bundle)
    esp_bytes = sa.encapsulate_udp(inner_ipv4_packet)  # the same, for the UDP 4500 socket
    inner, sa = sad.inbound(outer_ipv4_packet)       # raw socket: proto 50, 51, or UDP-ESP
    inner, sa = sad.inbound_udp(esp, src, dst)       # ESP read from the UDP 4500 socket
    if esp.classify_udp4500(datagram) == "ike": ...  # before inbound_udp (RFC 3948 §2)

and, periodically, ``for sa, reason in sad.expire(now)`` ("soft": ask IKE to rekey;
"hard"/"idle": already deleted), ``sad.snapshot()`` for ipsecctl.

Drops raise an ``ipsecd.driver.errors.IPsecError`` subclass; the SA/SAD has already counted it
under ``exc.counter`` (per SA and globally), so the driver only logs and drops.

Lifetimes (RFC 4301 §4.4.2.1, first of bytes/seconds wins) are checked by
``SAD.expire(now)``, which the driver calls periodically; an outbound SA also
refuses a packet that would pass its hard byte limit or wrap the 32-bit sequence
number (RFC 4303 §3.3.3; no ESN, as in RFC 2406 and Windows 2003).

>>> out = SecurityAssociation(0x1000, "esp", "outbound", "tunnel", "192.0.2.1", "192.0.2.2",
...                           "aes-gcm-128", bytes(20))
>>> sad = SAD()
>>> sad.add(SecurityAssociation(0x1000, "esp", "inbound", "tunnel", "192.0.2.1", "192.0.2.2",
...                             "aes-gcm-128", bytes(20)))
>>> from ipsecd.driver.ipv4 import ip_to_bytes, ipv4_header
>>> packet = ipv4_header(ip_to_bytes("10.1.0.1"), ip_to_bytes("10.2.0.1"), 17, 4) + b"ping"
>>> inner, sa = sad.inbound(out.encapsulate(packet))
>>> inner == packet, sa.counters.packets, sad.snapshot().confidential_bytes_received
(True, 1, 24)
"""
from __future__ import annotations

import struct
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from ipsecd import algorithms
from ipsecd.counters import Counters, SACounters
from ipsecd.driver import esp
from ipsecd.driver.ah import AhTransform
from ipsecd.driver.errors import BadPacket, DummyPacket, IPsecError, Replayed, SAExpired, UnknownSPI
from ipsecd.driver.esp import UDP_HEADER
from ipsecd.driver.ipv4 import (
    IPPROTO_AH,
    IPPROTO_ESP,
    IPPROTO_IPIP,
    IPPROTO_NONE,
    IPPROTO_UDP,
    HeaderTemplate,
    ecn_decapsulated,
    ip_to_bytes,
    ipv4_fields,
    nat_checksum_fixup,
    rewritten_ipv4_header,
)

SEQ_MAX = 2**32 - 1  # last usable sequence number (RFC 4303 §3.3.3)
SEQ_SOFT = SEQ_MAX - 2**24  # ask for a rekey well before the counter runs out
NO_LIMIT = 1 << 64  # hard byte limit of an SA without one (an int: compared per packet)
PROTOCOLS = {"esp": IPPROTO_ESP, "ah": IPPROTO_AH}
_esp_header = struct.Struct("!II").pack  # SPI, sequence number
_unpack_seq = struct.Struct("!I").unpack_from


class PolicyViolation(IPsecError):
    """The packet used an SA in a way its policy forbids (e.g. ESP of an AH+ESP bundle alone)."""

    counter = "dropped_by_policy"


@dataclass
class Lifetime:
    """Soft and hard limits (None = unlimited). Soft: IKE should rekey; hard: the SA is deleted."""

    soft_kilobytes: int | None = None
    hard_kilobytes: int | None = None
    soft_seconds: float | None = None
    hard_seconds: float | None = None


class ReplayWindow:
    """Anti-replay sliding window (RFC 4303 §3.4.3 and Appendix A2), bitmap in an int.

    ``check`` runs before the ICV check (cheap rejection); ``accept`` only after the
    ICV verified, so forged packets cannot move the window.
    """

    __slots__ = ("_mask", "bitmap", "size", "top")

    def __init__(self, size: int = 64):
        if size < 64:
            raise ValueError(f"replay window of {size} packets: at least 64 required")
        self.size = size
        self.top = 0  # highest authenticated sequence number
        self.bitmap = 0  # bit i set: top - i was received
        self._mask = (1 << size) - 1

    def check(self, seq: int) -> None:
        if seq > self.top:
            return
        if seq == 0:
            raise Replayed("sequence number 0 is never sent (RFC 4303 §3.3.3)")
        behind = self.top - seq
        if behind >= self.size:
            raise Replayed(f"sequence number {seq} is left of the window (highest {self.top}, "
                           f"size {self.size})")
        if self.bitmap >> behind & 1:
            raise Replayed(f"sequence number {seq} already received")

    def accept(self, seq: int) -> None:
        if seq > self.top:
            shift = seq - self.top
            self.bitmap = ((self.bitmap << shift) | 1) & self._mask if shift < self.size else 1
            self.top = seq
        else:
            self.bitmap |= 1 << (self.top - seq)


def _choice(name: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ValueError(f"SA {name} must be one of {', '.join(allowed)}, not {value!r}")


@dataclass(eq=False)
class SecurityAssociation:
    """One SA. ``src``/``dst`` are the outer (tunnel or host) addresses of this direction.

    ``udp_encap`` = (sport, dport) puts ESP in UDP (RFC 3948); on an inbound transport
    SA ``nat_oa`` = the original (source, destination) the peer used, from quick mode's
    NAT-OA payloads, makes decapsulation fix the inner TCP/UDP checksum for the
    addresses a NAT wrote into the header (RFC 3948 §3.1.2).  ``inner`` makes an
    AH+ESP bundle (RFC 4301 §4.5, Windows "AH and ESP"): this SA must be AH, ``inner``
    the ESP SA of the same direction and peers; outbound ESP is applied first (in
    the bundle's mode), then AH over the result (IP | AH | ESP | ...), inbound the
    reverse.  Keys are bytes of exactly the algorithm's key size (GCM: salt included).
    """

    spi: int
    protocol: str  # "esp" | "ah"
    direction: str  # "inbound" | "outbound"
    mode: str  # "transport" | "tunnel"
    src: str
    dst: str
    encryption: str = "null"
    encryption_key: bytes = field(default=b"", repr=False)
    integrity: str | None = None
    integrity_key: bytes = field(default=b"", repr=False)
    udp_encap: tuple[int, int] | None = None
    nat_oa: tuple[str, str] | None = None  # original (src, dst) from NAT-OA, transport + UDP only
    lifetime: Lifetime = field(default_factory=Lifetime)
    idle_timeout: float | None = None  # seconds without packets before SAD.expire deletes it
    replay_window: int = 64
    inner: SecurityAssociation | None = None
    created: float = field(default_factory=time.monotonic)
    seq: int = 0  # outbound: last sequence number sent; inbound: highest accepted
    counters: SACounters = field(default_factory=SACounters, repr=False)

    def __post_init__(self) -> None:
        _choice("protocol", self.protocol, ("esp", "ah"))
        _choice("direction", self.direction, ("inbound", "outbound"))
        _choice("mode", self.mode, ("transport", "tunnel"))
        if not 256 <= self.spi <= SEQ_MAX:
            raise ValueError(f"SPI {self.spi:#x} outside 0x100-0xffffffff (RFC 4303 §2.1)")
        try:
            self._src, self._dst = ip_to_bytes(self.src), ip_to_bytes(self.dst)
        except ValueError as e:
            raise ValueError(f"SA src/dst: {e}") from None
        enc = algorithms.encryption(self.encryption)
        integ = algorithms.integrity(self.integrity) if self.integrity else None
        self._esp: esp._Transform | None = None
        self._ah: AhTransform | None = None
        if self.protocol == "esp":
            self._esp = esp.transform(enc, self.encryption_key, integ, self.integrity_key)
        else:
            if enc.mode != "null" or integ is None:
                raise ValueError("an AH SA needs an integrity algorithm and no encryption")
            if self.udp_encap:
                raise ValueError("AH cannot be UDP-encapsulated (RFC 3715 §2.1)")
            self._ah = AhTransform(integ, self.integrity_key)
        self.confidential = enc.mode != "null"
        self.authenticated = self.protocol == "ah" or integ is not None or enc.aead
        if self.inner is not None and (
                self.protocol != "ah" or self.inner.protocol != "esp"
                or (self.inner.direction, self.inner.src, self.inner.dst, self.inner.mode)
                != (self.direction, self.src, self.dst, self.mode)):
            raise ValueError("a bundle is an AH SA whose inner SA is ESP with the same direction, "
                             "addresses and mode")
        # in a bundle the ESP SA builds the tunnel header; AH goes over it like transport mode
        self._tunnel = self.mode == "tunnel" and self.inner is None
        if self.nat_oa and (self._tunnel or not self.udp_encap):
            raise ValueError("nat_oa applies to transport mode with UDP encapsulation only")
        self._nat_oa = b"".join(map(ip_to_bytes, self.nat_oa)) if self.nat_oa else None
        self._spi_bytes = self.spi.to_bytes(4, "big")
        self._outer = HeaderTemplate(self._src, self._dst)
        # raw socket: the IP protocol of what ESP is sent in (RFC 3948: UDP, checksum 0)
        self._esp_carrier = IPPROTO_UDP if self.udp_encap else IPPROTO_ESP
        self._replay = ReplayWindow(self.replay_window) if self.direction == "inbound" else None
        hard_kb, soft_kb = self.lifetime.hard_kilobytes, self.lifetime.soft_kilobytes
        self._hard_bytes = NO_LIMIT if hard_kb is None else hard_kb * 1024
        self._soft_bytes = NO_LIMIT if soft_kb is None else soft_kb * 1024
        # what an outbound packet is compared with: the soft byte limit until it is passed, then the hard one
        self._byte_limit = min(self._soft_bytes, self._hard_bytes)
        self.outer: SecurityAssociation | None = None  # set on the ESP SA of a bundle
        # encapsulate(packet) protects a complete inner IPv4 packet and returns the outer IPv4 packet for
        # a raw socket. Transport mode keeps the packet's header (TTL kept; protocol, length and checksum
        # fixed); tunnel mode adds a header src -> dst with TTL 64 and TOS and DF copied from the inner header
        # (RFC 4301 §5.1.2.1). With ``udp_encap`` the ESP rides in UDP (checksum 0). Transport mode + UDP
        # leaves the inner TCP/UDP checksum alone: our peers see our real addresses (RFC 3948 §3.1.2 is the
        # receiver's job when a NAT rewrote them). Raises SAExpired, BadPacket. One decision per SA, not per
        # packet: a plain ESP SA seals in _esp_encapsulate, AH (alone or over the ESP SA of a bundle) in
        # _ah_encapsulate_bundle.
        self.encapsulate: Callable[[bytes], bytes] = (
            self._esp_encapsulate if self._esp is not None else self._ah_encapsulate_bundle)
        self.soft_notified = False
        self.soft_due = False  # an outbound packet passed the soft byte limit: the driver asks for a rekey
        self._idle_packets, self._idle_since = 0, self.created
        self._global: Counters | None = None  # the SAD's counters, set by SAD.add

    # -- outbound --

    def _ah_encapsulate_bundle(self, packet: bytes) -> bytes:
        """``encapsulate`` of an AH SA: AH alone, or over the ESP SA of a bundle."""
        return self._ah_encapsulate(packet if self.inner is None else self.inner.encapsulate(packet))

    def encapsulate_udp(self, packet: bytes) -> bytes:
        """The ESP bytes only (SPI to ICV), for sending on the UDP 4500 socket to ``udp_encap``.

        Transport mode relies on the socket's addresses being the packet's own.
        """
        if self._esp is None or self.inner is not None:
            raise ValueError(f"SA {self.spi:#x}: only a plain ESP SA can use a UDP socket")
        return self._esp_encapsulate(packet, False)

    def _esp_encapsulate(self, packet: bytes, outer_headers: bool = True) -> bytes:
        """The ESP hot path: one header parse, the sequence number and counters inline (as in
        ``_next_seq``, with ``_at_limit`` past a limit), the outer headers packed first (the ESP length is
        known before encrypting) and joined with the ESP packet once, by ``seal``."""
        transform = self._esp
        if transform is None:
            raise BadPacket(f"SA {self.spi:#x} is not an ESP SA")
        if self._tunnel:
            if len(packet) < 20 or packet[0] >> 4 != 4:
                raise BadPacket("inner packet is not IPv4")
            payload, next_header = packet, IPPROTO_IPIP
            n = len(packet)
        else:
            fields = ipv4_fields(packet)
            ihl = (fields[0] & 0x0F) * 4
            total, next_header = fields[2], fields[6]
            payload = packet[ihl:total]
            n = total - ihl
        seq = self.seq + 1
        counters = self.counters
        nbytes = counters.bytes + n
        if seq > SEQ_MAX or nbytes > self._byte_limit:
            self._at_limit(seq, nbytes)
        self.seq = seq
        counters.packets += 1
        counters.bytes = nbytes
        if not outer_headers:
            return transform.seal(_esp_header(self.spi, seq), payload, next_header)
        length = n + transform.overhead + -(n + 2) % transform.pad_block  # of the ESP packet
        carried = length + UDP_HEADER if self.udp_encap else length
        if self._tunnel:
            # TOS and DF copied from the inner header (RFC 4301 §5.1.2.1), the ident from the sequence
            prefix = self._outer.build(self._esp_carrier, carried, packet[1], seq & 0xFFFF,
                                       packet[6] << 8 & 0x4000)
        else:
            prefix = rewritten_ipv4_header(fields, self._esp_carrier, ihl + carried)
            if ihl != 20:
                prefix += packet[20:ihl]
        if self.udp_encap:
            prefix += esp.udp_header(*self.udp_encap, length)
        return transform.seal(_esp_header(self.spi, seq), payload, next_header, prefix)

    def _ah_encapsulate(self, packet: bytes) -> bytes:
        ah = self._ah
        if ah is None:
            raise BadPacket(f"SA {self.spi:#x} is not an AH SA")
        if self._tunnel:
            if len(packet) < 20 or packet[0] >> 4 != 4:
                raise BadPacket("inner packet is not IPv4")
            payload, next_header = packet, IPPROTO_IPIP
            seq = self._next_seq(len(payload))
            header = self._outer.build(IPPROTO_AH, ah.length + len(payload), packet[1], seq & 0xFFFF,
                                       packet[6] << 8 & 0x4000)  # as for ESP
        else:
            fields = ipv4_fields(packet)
            if fields[0] != 0x45:
                raise BadPacket("AH over an IPv4 header with options is not supported")
            payload, next_header = packet[20:fields[2]], fields[6]
            seq = self._next_seq(len(payload))
            header = rewritten_ipv4_header(fields, IPPROTO_AH, 20 + ah.length + len(payload))
        return header + ah.seal(header, payload, next_header, self.spi, seq) + payload

    def _next_seq(self, nbytes: int) -> int:
        """The next sequence number, with ``nbytes`` counted; SAExpired instead of wrapping it or
        passing the hard byte limit."""
        seq = self.seq + 1
        counters = self.counters
        total = counters.bytes + nbytes
        if seq > SEQ_MAX or total > self._byte_limit:
            self._at_limit(seq, total)
        self.seq = seq
        counters.packets += 1
        counters.bytes = total
        return seq

    def _at_limit(self, seq: int, total: int) -> None:
        """An outbound packet would be number ``seq`` and bring the bytes to ``total``, past a limit.

        Past a hard one: SAExpired (the packet is not sent). Past the soft byte limit: ``soft_due``, so the
        rekey starts with this packet; at line rate a once-a-second check would come after the hard limit.
        """
        if seq > SEQ_MAX:
            raise SAExpired(f"SA {self.spi:#x}: sequence number would wrap (RFC 4303 §3.3.3)")
        if total > self._hard_bytes:
            raise SAExpired(f"SA {self.spi:#x}: hard lifetime of {self.lifetime.hard_kilobytes} KB reached")
        self._byte_limit = self._hard_bytes
        self.soft_due = True

    # -- inbound --

    def decapsulate(self, packet: bytes) -> bytes:
        """Verify and strip ESP/AH from a complete outer IPv4 packet (proto 50, 51 or UDP-ESP).

        Returns the inner IPv4 packet: tunnel mode the encapsulated packet, transport
        mode the received header with the next protocol, length and checksum fixed.
        Raises (after counting) BadPacket, AuthenticationFailed, DecryptionFailed,
        Replayed, DummyPacket, PolicyViolation.
        """
        replay, ah, transform = self._replay, self._ah, self._esp
        if replay is None:
            raise ValueError(f"SA {self.spi:#x} is outbound: it cannot decapsulate")
        try:
            fields = ipv4_fields(packet)
            ihl = (fields[0] & 0x0F) * 4
            protocol = fields[6]
            if ah is not None:
                next_header, payload = self._ah_open(ah, replay, fields, packet)
            elif transform is None:
                raise BadPacket(f"SA {self.spi:#x} has neither AH nor ESP")  # __post_init__ gives it one
            elif protocol == IPPROTO_ESP:
                next_header, payload = self._esp_open(transform, replay, packet, ihl, fields[2])
            elif protocol == IPPROTO_UDP:
                next_header, payload = self._esp_open(transform, replay, packet, ihl + UDP_HEADER, fields[2])
            else:
                raise BadPacket(f"IP protocol {protocol} for ESP SA {self.spi:#x}")
            if self._tunnel:
                result = self._tunnel_inner(next_header, payload, fields[1])
            else:
                header = rewritten_ipv4_header(fields, next_header, ihl + len(payload))
                result = header + payload if ihl == 20 else header + packet[20:ihl] + payload
                if self._nat_oa is not None:
                    result = self._nat_fixup(result, self._nat_oa)
        except IPsecError as e:
            self._count_drop(e)
            raise
        return result if self.inner is None else self.inner.decapsulate(result)

    def decapsulate_udp(self, payload: bytes, src: str, dst: str, tos: int = 0) -> bytes:
        """``decapsulate`` for ESP read from a UDP socket: ``payload`` starts at the SPI.

        ``src``/``dst`` are the datagram's addresses and ``tos`` its TOS byte (ECN
        included); transport mode rebuilds the inner header from them, with TTL 64 and,
        for the identification the socket does not tell, the ESP sequence number's low
        16 bits: packets in sequence get consecutive identifications, so the receiving
        side can still merge a flow's segments (ipsecd.driver.offload).
        """
        replay, transform = self._replay, self._esp
        if replay is None or transform is None:
            raise ValueError(f"SA {self.spi:#x} is not an inbound ESP SA: it cannot decapsulate ESP")
        try:
            next_header, inner = self._esp_open(transform, replay, payload, 0, len(payload))
            if self._tunnel:
                return self._tunnel_inner(next_header, inner, tos)
            template = self._outer if src == self.src and dst == self.dst else \
                HeaderTemplate(ip_to_bytes(src), ip_to_bytes(dst))
            inner = template.build(next_header, len(inner), tos, payload[6] << 8 | payload[7]) + inner
            return inner if self._nat_oa is None else self._nat_fixup(inner, self._nat_oa)
        except IPsecError as e:
            self._count_drop(e)
            raise

    def _esp_open(self, transform: esp._Transform, replay: ReplayWindow, data: bytes, start: int, end: int,
                  ) -> tuple[int, bytes]:
        """SPI, replay check (before the ICV), transform.open, replay accept (after): data[start:end]."""
        if end - start < transform.min_length or data[start:start + 4] != self._spi_bytes:
            raise BadPacket(f"ESP packet of {end - start} bytes starting {data[start:start + 4].hex()} "
                            f"is not one of SA {self.spi:#x}")
        seq = _unpack_seq(data, start + 4)[0]
        if seq <= replay.top:  # in order (the common case) needs no window check
            replay.check(seq)
        next_header, payload = transform.open(data, start, end)
        self._accepted(replay, seq, next_header, len(payload))
        return next_header, payload

    def _ah_open(self, ah: AhTransform, replay: ReplayWindow, fields: tuple, packet: bytes,
                 ) -> tuple[int, bytes]:
        total = fields[2]
        if fields[6] != IPPROTO_AH or total < 32:
            raise BadPacket(f"not an AH packet (protocol {fields[6]}, {total} bytes)")
        if fields[0] != 0x45:
            raise BadPacket("AH packet with IPv4 options (not supported)")
        if packet[24:28] != self._spi_bytes:
            raise BadPacket(f"SPI {packet[24:28].hex()} is not SA {self.spi:#x}")
        replay.check(_unpack_seq(packet, 28)[0])
        next_header, seq, payload = ah.open(packet[:total])
        self._accepted(replay, seq, next_header, len(payload))
        return next_header, payload

    def _accepted(self, replay: ReplayWindow, seq: int, next_header: int, nbytes: int) -> None:
        """The ICV verified: move the replay window, count the packet, discard a dummy one."""
        replay.accept(seq)
        self.seq = replay.top
        counters = self.counters
        counters.packets += 1
        counters.bytes += nbytes
        if next_header == IPPROTO_NONE:
            raise DummyPacket("dummy packet (next header 59)")

    def _tunnel_inner(self, next_header: int, payload: bytes, outer_tos: int) -> bytes:
        """The inner packet (TFC padding cut, RFC 4303 §2.4) with the outer header's ECN (RFC 6040)."""
        total = int.from_bytes(payload[2:4], "big")
        if next_header != IPPROTO_IPIP or len(payload) < 20 or payload[0] >> 4 != 4 \
                or not 20 <= total <= len(payload):
            raise BadPacket(f"tunnel SA {self.spi:#x}: payload is not one IPv4 packet "
                            f"(next header {next_header})")
        inner = payload if total == len(payload) else payload[:total]
        # the encapsulator copied the ECN field: only a change on the way needs the RFC 6040 rules
        return inner if (outer_tos ^ inner[1]) & 3 == 0 else ecn_decapsulated(inner, outer_tos)

    @staticmethod
    def _nat_fixup(inner: bytes, nat_oa: bytes) -> bytes:
        """The TCP/UDP checksum for the addresses in `inner`, not NAT-OA's (the peers' own, 8 bytes)."""
        return nat_checksum_fixup(inner, nat_oa[:4], nat_oa[4:])

    def _count_drop(self, error: IPsecError) -> None:
        key = error.counter
        if key is None:
            return
        if key in SACounters.__slots__:
            self.counters.count(key)
        if self._global is not None:
            self._global.count(key)

    # -- lifetimes --

    def soft_expired(self, now: float) -> bool:
        """Soft lifetime (bytes or seconds) reached, or the sequence number nears its end."""
        lt = self.lifetime
        return (_reached(self.counters.bytes, lt.soft_kilobytes, 1024)
                or _reached(now - self.created, lt.soft_seconds, 1) or self.seq >= SEQ_SOFT)

    def hard_expired(self, now: float) -> bool:
        """Hard lifetime reached or sequence numbers exhausted: the SA must be deleted."""
        lt = self.lifetime
        return (_reached(self.counters.bytes, lt.hard_kilobytes, 1024)
                or _reached(now - self.created, lt.hard_seconds, 1) or self.seq >= SEQ_MAX)

    def idle(self, now: float) -> bool:
        """No packet for ``idle_timeout`` seconds, as seen by successive calls (no per-packet clock)."""
        if self.idle_timeout is None:
            return False
        if self.counters.packets != self._idle_packets:
            self._idle_packets, self._idle_since = self.counters.packets, now
            return False
        return now - self._idle_since >= self.idle_timeout

    @property
    def overhead(self) -> int:
        """Most bytes ``encapsulate`` adds to a packet (bundle included): for MTU/MSS planning."""
        added = 0
        if self._ah is not None:
            added = self._ah.length
        if self._esp is not None:
            enc = self._esp.encryption
            added = 8 + enc.iv_size + max(enc.block_size, 4) - 1 + 2 + self._esp.icv_size
            added += UDP_HEADER if self.udp_encap else 0
        added += 20 if self._tunnel else 0
        return added + (self.inner.overhead if self.inner is not None else 0)

    @property
    def key(self) -> tuple[int, bytes, int]:
        """The SAD key (RFC 4301 §4.1): SPI, destination, protocol number."""
        return self.spi, self._dst, PROTOCOLS[self.protocol]


def _reached(value: float, limit: float | None, unit: int) -> bool:
    return limit is not None and value >= limit * unit


class SAD:
    """The SAs of one node; inbound lookup by (SPI, destination, protocol).

    Outbound SA selection belongs to the driver (SPD); the SAD only holds them for
    expiry, monitoring and deletion.  A bundle is added through its outer (AH) SA.
    """

    def __init__(self) -> None:
        self.counters = Counters()
        self._sas: dict[tuple[int, bytes, int], SecurityAssociation] = {}
        # inbound ESP SAs outside bundles by destination | SPI: bytes 16-24 of a plain ESP packet
        self._esp_receivers: dict[bytes, SecurityAssociation] = {}

    def add(self, sa: SecurityAssociation) -> None:
        """Install an SA (and the inner SA of a bundle). ValueError if the key is taken."""
        members = [sa] if sa.inner is None else [sa, sa.inner]
        for member in members:
            if member.key in self._sas:
                raise ValueError(f"an SA with SPI {member.spi:#x}, destination {member.dst}, "
                                 f"protocol {member.protocol} already exists")
        if sa.inner is not None:
            sa.inner.outer = sa
        for member in members:
            self._sas[member.key] = member
            member._global = self.counters
            self.counters.key_additions += 1
        if sa.direction == "inbound" and sa.protocol == "esp":
            self._esp_receivers[sa._dst + sa._spi_bytes] = sa

    def delete(self, spi: int, dst: str, protocol: str) -> SecurityAssociation:
        """Remove an SA (a whole bundle if it is part of one); KeyError if absent."""
        sa = self._sas[(spi, ip_to_bytes(dst), PROTOCOLS[protocol])]
        outer = sa.outer or sa
        for member in (outer, outer.inner):
            if member is not None and self._sas.pop(member.key, None) is member:
                if self._esp_receivers.get(member._dst + member._spi_bytes) is member:
                    del self._esp_receivers[member._dst + member._spi_bytes]
                self._retire(member)
        return sa

    def lookup(self, spi: int, dst: str | bytes, protocol: str | int) -> SecurityAssociation:
        """The SA for an inbound packet, or UnknownSPI (counted as a bad SPI packet)."""
        dst_bytes = dst if isinstance(dst, bytes) else ip_to_bytes(dst)
        proto = protocol if isinstance(protocol, int) else PROTOCOLS[protocol]
        sa = self._sas.get((spi, dst_bytes, proto))
        if sa is None or sa.direction != "inbound":
            self.counters.bad_spi_packets += 1
            raise UnknownSPI(f"no inbound SA for SPI {spi:#x}, destination "
                             f"{'.'.join(map(str, dst_bytes))}, protocol {proto}")
        return sa

    def inbound(self, packet: bytes) -> tuple[bytes, SecurityAssociation]:
        """Look up and decapsulate an outer IPv4 packet (ESP, AH or ESP in UDP).

        Returns (inner packet, the SA that matched first: for a bundle the AH SA).
        """
        if len(packet) >= 24 and packet[0] == 0x45 and packet[9] == IPPROTO_ESP:  # the common case
            sa = self._esp_receivers.get(packet[16:24])
            if sa is not None:
                return sa.decapsulate(packet), sa
        try:
            if len(packet) < 20:
                raise BadPacket(f"{len(packet)}-byte packet")
            offset = (packet[0] & 0x0F) * 4
            protocol = packet[9]
            if protocol == IPPROTO_UDP:
                offset, protocol = offset + UDP_HEADER, IPPROTO_ESP
            elif protocol == IPPROTO_AH:
                offset += 4
            elif protocol != IPPROTO_ESP:
                raise BadPacket(f"IP protocol {protocol} is neither ESP nor AH")
            if len(packet) < offset + 4:
                raise BadPacket(f"{len(packet)}-byte packet too short for an SPI")
        except BadPacket:
            self.counters.malformed_packets += 1
            raise
        sa = self._inbound_sa(_unpack_seq(packet, offset)[0], packet[16:20], protocol)
        return sa.decapsulate(packet), sa

    def inbound_udp(self, payload: bytes, src: str, dst: str,
                    tos: int = 0) -> tuple[bytes, SecurityAssociation]:
        """``inbound`` for an ESP payload read from the UDP 4500 socket (classify it first); ``tos`` is the
        datagram's TOS byte (transport mode carries it into the rebuilt inner header)."""
        if len(payload) < esp.ESP_HEADER or payload[:4] == esp.NON_ESP_MARKER:  # classify_udp4500 != "esp"
            self.counters.malformed_packets += 1
            raise BadPacket(f"{len(payload)}-byte UDP 4500 payload is not ESP (RFC 3948 §2)")
        destination = ip_to_bytes(dst)
        sa = self._esp_receivers.get(destination + payload[:4]) or \
            self._inbound_sa(_unpack_seq(payload)[0], destination, IPPROTO_ESP)
        return sa.decapsulate_udp(payload, src, dst, tos), sa

    def _inbound_sa(self, spi: int, dst: bytes, protocol: int) -> SecurityAssociation:
        """The slow path of a lookup: drops counted as malformed, bad SPI or against policy."""
        if spi == 0 and protocol == IPPROTO_ESP:
            self.counters.malformed_packets += 1
            raise BadPacket("SPI 0: IKE after the non-ESP marker (RFC 3948 §2.2), not ESP")
        sa = self.lookup(spi, dst, protocol)
        if sa.outer is not None:
            self.counters.dropped_by_policy += 1
            raise PolicyViolation(f"ESP SA {spi:#x} belongs to an AH+ESP bundle: AH missing")
        return sa

    def expire(self, now: float | None = None) -> list[tuple[SecurityAssociation, str]]:
        """Lifetime events since the last call: (sa, "soft" | "hard" | "idle").

        Hard-expired and idle SAs (whole bundles) are deleted; soft is reported once.
        """
        now = time.monotonic() if now is None else now
        events = []
        for sa in list(self._sas.values()):
            if sa.key not in self._sas:
                continue  # deleted with its bundle
            reason = "hard" if sa.hard_expired(now) else "idle" if sa.idle(now) else None
            if reason:
                self.delete(sa.spi, sa.dst, sa.protocol)
                events.append((sa, reason))
            elif not sa.soft_notified and sa.soft_expired(now):
                sa.soft_notified = True
                events.append((sa, "soft"))
        return events

    def snapshot(self) -> Counters:
        """Global counters with the live SAs' bytes added (for ipsecctl)."""
        total = Counters()
        for key, _ in total.FIELDS:
            setattr(total, key, getattr(self.counters, key))
        for sa in self._sas.values():
            _add_bytes(total, sa)
        total.active_sas = len(self._sas)
        return total

    def _retire(self, sa: SecurityAssociation) -> None:
        _add_bytes(self.counters, sa)
        self.counters.key_deletions += 1

    def __iter__(self) -> Iterator[SecurityAssociation]:
        return iter(list(self._sas.values()))

    def __len__(self) -> int:
        return len(self._sas)


def _add_bytes(counters: Counters, sa: SecurityAssociation) -> None:
    side = "sent" if sa.direction == "outbound" else "received"
    n = sa.counters.bytes
    if sa.confidential:
        counters.count(f"confidential_bytes_{side}", n)
    if sa.authenticated:
        counters.count(f"authenticated_bytes_{side}", n)
    counters.count(f"{'tunnel' if sa.mode == 'tunnel' else 'transport'}_bytes_{side}", n)
