"""The IPsec driver: applies the SPD and the SAD to packets going out, coming in and passing through.

The kernel (see netfilter.py) already permits, blocks and drops unsecured inbound packets; what reaches
the driver is:

- outbound: packets a negotiate filter marked, read from the TUN. The driver finds the filter again
  (per-flow cache), the SA bundle for that filter and peer, encapsulates and sends through a raw IP socket
  or the UDP 4500 socket (NAT-T). With no SA yet it keeps only the last packet per (filter, peer) and
  asks IKE for one, as the documents say; with manual keys only, it counts and drops.
- inbound: ESP and AH from raw sockets and ESP-in-UDP from port 4500 (where the non-ESP marker means
  IKE and 0xFF a NAT keepalive). The SAD finds the SA by SPI, checks replay and ICV, decrypts; the driver
  then checks the inner packet against the SA's filter (RFC 4301 §5.2) and writes it to the TUN.

Every drop is counted under the ipsecmon counter it belongs to and the daemon goes on: a malformed
packet never stops the data plane.

Interfaces for IKE and the Policy Agent: `load_policy(spd)`, `add_sa(sa, filter_name)`,
`delete_sa(spi, dst, protocol)`, `add_soft_sa(filter_name, peer)`, `send_4500(data, addr)`; the driver
calls `ike.acquire(filter, selector)`, `ike.expire(sa, hard)`, `ike.datagram_4500(data, addr)` and, when
IKE has it, `ike.invalid_spi(spi, peer, protocol)` for a packet on an SA it does not know.

>>> from scapy.layers.inet import IP, ICMP
>>> wire = RecordingWire()
>>> driver = IPsecDriver(SPD(), wire=wire)
>>> driver.outbound(bytes(IP(src="10.0.0.1", dst="10.0.0.2") / ICMP()))  # no filter: sent in clear
>>> wire.sent[0][1]
'10.0.0.2'
"""

from __future__ import annotations

import contextlib
import logging
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from ipsecd.driver.errors import IPsecError, SAExpired, UnknownSPI
from ipsecd.driver.esp import NON_ESP_MARKER, classify_udp4500
from ipsecd.driver.ipv4 import IPPROTO_AH, fix_l4_checksum, ntoa
from ipsecd.driver.netfilter import Netfilter, comment_name
from ipsecd.driver.sad import SAD, SecurityAssociation
from ipsecd.driver.spd import SPD, Action, Direction, Filter, PacketSelector

log = logging.getLogger("ipsecd.driver")

FLOW_CACHE_SIZE = 65536
NAT_KEEPALIVE_SECONDS = 20.0
ACQUIRE_RETRY_SECONDS = 5.0  # how long a pending acquire waits before the driver asks IKE again

# IPsecDriver counters beyond the SAD's ipsecmon counters: (key, label).
DRIVER_COUNTERS: tuple[tuple[str, str], ...] = (
    ("packets_without_sa", "Packets Dropped Waiting For An SA"),
    ("acquires", "SA Requests To IKE (Acquire)"),
    ("soft_association_packets", "Packets Sent In Clear By Soft Associations"),
    ("nat_keepalives_received", "NAT-T Keepalives Received"),
    ("ike_datagrams_4500", "IKE Datagrams On Port 4500"),
    ("send_errors", "Send Errors"),
    ("packet_socket_packets", "Packets Sent By The Packet Socket"),
    ("raw_socket_packets", "Packets Sent By The Raw Socket"),
)


class IKEHooks(Protocol):
    """What the driver asks of IKE (ipsecd.ike); None means manual keys only."""

    def acquire(self, filter: Filter, selector: PacketSelector) -> None: ...
    def expire(self, sa: SecurityAssociation, hard: bool) -> None: ...
    def datagram_4500(self, data: bytes, addr: tuple[str, int]) -> None: ...


class Wire(Protocol):
    """The driver's packet I/O: the kernel sockets and the TUN, or a recording double in unit tests."""

    def send_ip(self, packet: bytes, dst: str) -> None: ...
    def send_udp(self, payload: bytes, addr: tuple[str, int], tos: int = 0) -> None:
        """A datagram from port 4500; `tos` for its IP header (ESP carries the inner packet's, RFC 4301
        §5.1.2.1; in transport mode the outer header stands for the original one)."""
    def deliver(self, packet: bytes, stale_checksum: bool = False) -> None:
        """Hand a decrypted packet to the kernel; `stale_checksum`: its TCP/UDP checksum was computed over
        addresses a NAT has since rewritten, and the kernel must be made to accept it."""


@dataclass
class RecordingWire:
    """A Wire that keeps what the driver sends and delivers (unit tests, doctests)."""

    sent: list[tuple[bytes, str]] = field(default_factory=list)
    sent_udp: list[tuple[bytes, tuple[str, int]]] = field(default_factory=list)
    sent_udp_tos: list[int] = field(default_factory=list)
    delivered: list[bytes] = field(default_factory=list)

    def send_ip(self, packet: bytes, dst: str) -> None:
        self.sent.append((packet, dst))

    def send_udp(self, payload: bytes, addr: tuple[str, int], tos: int = 0) -> None:
        self.sent_udp.append((payload, addr))
        self.sent_udp_tos.append(tos)

    def send_ike(self, datagram: bytes, addr: tuple[str, int]) -> None:
        """IKE's datagrams on port 4500 (KernelWire.send_ike; the daemon wires IKE to it)."""
        self.send_udp(datagram, addr)

    def deliver(self, packet: bytes, stale_checksum: bool = False) -> None:
        self.delivered.append(fix_l4_checksum(packet) if stale_checksum else packet)


def flow_key(packet: bytes) -> bytes | None:
    """What filters look at, as raw bytes (protocol, addresses, first-fragment ports); None if not IPv4.

    >>> flow_key(bytes.fromhex("450000540000400040015b3e0a0000010a000002")).hex()
    '010a0000010a000002'
    """
    if len(packet) < 20 or packet[0] >> 4 != 4:
        return None
    if packet[9] in (6, 17) and not (packet[6] & 0x1F or packet[7]):
        if packet[0] == 0x45:  # no options: the ports follow the addresses
            return packet[9:10] + packet[12:24]
        ihl = (packet[0] & 0x0F) << 2
        return packet[9:10] + packet[12:20] + packet[ihl:ihl + 4]
    return packet[9:10] + packet[12:20]


class PeerTraffic:
    """What the driver keeps for the traffic of one negotiate filter with one peer (its key: filter, peer):
    the outbound SA, the one packet held while IKE negotiates and when IKE was last asked, whether a soft
    association lets it go in clear, and NAT-T's port of the peer and keepalives."""

    __slots__ = ("asked", "held", "keepalive", "nat_port", "sa", "soft")

    def __init__(self) -> None:
        self.sa: SecurityAssociation | None = None  # the outer SA of the bundle that secures it
        self.held: bytes | None = None
        self.asked = 0.0
        self.soft = False
        self.nat_port: int | None = None  # the UDP port the peer's packets come from, when a NAT changed it
        self.keepalive = False  # this end is behind a NAT: keep its mapping open (RFC 3948 §2.3)


class IPsecDriver:
    """The SPD, the SAD and the packets between them; I/O through `wire`, kernel policy through `kernel`.

    `kernel` is a netfilter.Netfilter (None in unit tests, where no kernel policy is installed);
    `ike` is None with manual keys only; `clock` is injectable so lifetimes are testable.
    """

    def __init__(self, spd: SPD | None = None, *, wire: Wire | None = None, ike: IKEHooks | None = None,
                 kernel: Netfilter | None = None, idle_seconds: float | None = 300,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.sad = SAD()
        self.wire = wire or RecordingWire()
        self.ike = ike
        self.kernel = kernel
        self.idle_seconds = idle_seconds
        self.clock = clock
        self.counters = dict.fromkeys((key for key, _ in DRIVER_COUNTERS), 0)
        self._peers: dict[tuple[str, str], PeerTraffic] = {}  # by (filter, peer)
        self._filter_of: dict[tuple, str] = {}  # SA key -> the filter it secures
        self._log_times: dict[str, float] = {}
        self._last_keepalive = -NAT_KEEPALIVE_SECONDS
        self.load_policy(spd or SPD())

    # -- the Policy Agent's and IKE's interface -------------------------------------------------------------

    def load_policy(self, spd: SPD) -> None:
        """Replace the filters atomically; SAs stay (IKE deletes what the new policy no longer wants)."""
        if self.kernel is not None:
            self.kernel.install(spd)
        self.spd = spd
        self._flows: dict[bytes, PeerTraffic] = {}  # flow -> the traffic of its negotiate filter and peer
        self._inbound_flows: set[tuple[int, bytes]] = set()  # (SPI, flow) the SA's filter allows
        self._inbound_filters: dict[str, list[Filter]] = {}
        for f in spd.filters:
            if f.direction is Direction.INBOUND:
                self._inbound_filters.setdefault(f.name, []).append(f)
        names = {f.name for f in spd.filters}
        for (name, _), peer in self._peers.items():
            if name not in names:
                peer.held = None
        log.info("policy loaded: %d filters", len(spd))

    def add_sa(self, sa: SecurityAssociation, filter_name: str, *, manual: bool = False,
               nat_keepalive: bool = False) -> None:
        """Install an SA (or an AH+ESP bundle through its AH SA) that secures traffic of `filter_name`.

        An outbound SA becomes the one used for that filter and peer (a rekey replaces the old one, which
        IKE deletes later); the packet kept while negotiating goes out at once. Negotiated SAs that carry
        nothing for `idle_seconds` are deleted; manual ones (nobody would renew them) are not.
        `nat_keepalive`: this end is behind a NAT (IKE knows it from NAT-D), so a UDP-encapsulated
        outbound SA gets keepalives; the end in front of the NAT sends none (RFC 3948 §2.3).
        """
        if sa.idle_timeout is None and self.idle_seconds and not manual:
            sa.idle_timeout = self.idle_seconds
        self.sad.add(sa)
        self._inbound_flows.clear()
        for member in (sa, sa.inner):
            if member is not None:
                self._filter_of[member.key] = filter_name
        log.info("SA added: %s for filter %s", describe_sa(sa), filter_name)
        if sa.direction == "outbound":
            peer = self._peer((filter_name, sa.dst))
            peer.sa = sa
            peer.keepalive = peer.keepalive or bool(nat_keepalive and sa.udp_encap)
            peer.soft = False
            held, peer.held = peer.held, None
            if held is not None:
                self._send(sa, peer, held)

    def delete_sa(self, spi: int, dst: str, protocol: str) -> SecurityAssociation:
        """Remove an SA (with its bundle); KeyError if there is none."""
        sa = self.sad.delete(spi, dst, protocol)
        self._forget(sa)
        log.info("SA deleted: %s", describe_sa(sa))
        return sa

    def add_soft_sa(self, filter_name: str, peer: str) -> None:
        """A soft association: IKE got no answer and the filter action falls back to clear."""
        traffic = self._peer((filter_name, peer))
        traffic.soft = True
        held, traffic.held = traffic.held, None
        if held is not None:
            self._send_clear(held, socket.inet_ntoa(held[16:20]))
        log.info("soft association: traffic of filter %s to %s goes in clear", filter_name, peer)

    def send_4500(self, data: bytes, addr: tuple[str, int]) -> None:
        """IKE sends on port 4500 through the driver's socket; the non-ESP marker is added here."""
        self.wire.send_udp(NON_ESP_MARKER + data, addr)

    def expire(self, now: float | None = None) -> None:
        """Apply lifetimes: soft tells IKE to rekey; hard and idle SAs are deleted (called every second).

        Also sends the NAT-T keepalives (RFC 3948 §2.3, every 20 s as Windows does) from behind a NAT
        to the peers of UDP-encapsulated SAs, so the NAT keeps its mapping while the SA is quiet.
        """
        now = self.clock() if now is None else now
        if now - self._last_keepalive >= NAT_KEEPALIVE_SECONDS:
            self._last_keepalive = now
            for peer in self._peers.values():
                sa = peer.sa
                if peer.keepalive and sa is not None and sa.udp_encap:
                    with contextlib.suppress(OSError):
                        self.wire.send_udp(b"\xff", (sa.dst, peer.nat_port or sa.udp_encap[1]))
        for sa, reason in self.sad.expire(now):
            self._lifetime_event(sa, reason)

    def _lifetime_event(self, sa: SecurityAssociation, reason: str) -> None:
        """Tell IKE an SA reached its soft lifetime (rekey) or was deleted (hard, idle)."""
        words = {"soft": "soft lifetime reached, rekey wanted", "hard": "hard lifetime reached, deleted",
                 "idle": f"idle for {sa.idle_timeout:.0f} s, deleted"}[reason]
        log.info("SA %s: %s", describe_sa(sa), words)
        if reason != "soft":
            self._forget(sa)
        if self.ike is not None:
            self.ike.expire(sa, reason != "soft")

    # -- data plane -----------------------------------------------------------------------------------------

    def outbound(self, packet: bytes) -> None:
        """A packet read from the TUN: the kernel marked it for a negotiate filter."""
        flow = flow_key(packet)
        cached = self._flows.get(flow) if flow is not None else None
        if cached is not None:  # the fast path: a known flow with its SA
            sa = cached.sa
            if sa is not None:
                self._send(sa, cached, packet)
                return
        try:
            sel = PacketSelector.parse(packet)
        except ValueError:
            self.sad.counters.malformed_packets += 1
            return
        f = self.spd.lookup(sel, Direction.OUTBOUND)
        if f is None or f.action.action is not Action.NEGOTIATE:
            # The policy changed while the packet was on its way: do what the policy says now.
            if f is not None and f.action.action is Action.BLOCK:
                self.sad.counters.dropped_by_policy += 1
            else:
                self._send_clear(packet, ntoa(sel.dst))
            return
        peer = str(f.tunnel) if f.tunnel is not None else ntoa(sel.dst)
        key = (f.name, peer)
        traffic = self._peer(key)
        if flow is not None:
            if len(self._flows) >= FLOW_CACHE_SIZE:
                self._flows.clear()
            self._flows[flow] = traffic
        sa = traffic.sa
        if sa is not None:
            self._send(sa, traffic, packet)
        elif traffic.soft:
            self.counters["soft_association_packets"] += 1
            self._send_clear(packet, ntoa(sel.dst))
        else:
            self._hold(key, traffic, f, sel, packet)

    def inbound(self, packet: bytes) -> None:
        """An ESP or AH packet from a raw socket (the whole IPv4 packet)."""
        try:
            inner, sa = self.sad.inbound(packet)
        except IPsecError as e:
            self._dropped(e)
            if isinstance(e, UnknownSPI):
                ihl = (packet[0] & 0x0F) * 4 + (4 if packet[9] == IPPROTO_AH else 0)
                self._unknown_spi(packet[ihl:ihl + 4], ntoa(int.from_bytes(packet[12:16], "big")),
                                  "ah" if packet[9] == IPPROTO_AH else "esp")
            return
        self._deliver(inner, sa)

    def inbound_udp(self, payload: bytes, src: str, sport: int, dst: str, tos: int = 0) -> None:
        """A datagram from UDP port 4500: ESP (RFC 3948), IKE after the non-ESP marker, or a keepalive.

        `tos`: the datagram's TOS byte, which transport mode carries into the inner header."""
        kind = classify_udp4500(payload)
        if kind == "esp":
            try:
                inner, sa = self.sad.inbound_udp(payload, src, dst, tos)
            except IPsecError as e:
                self._dropped(e)
                if isinstance(e, UnknownSPI):
                    self._unknown_spi(payload[:4], src, "esp")
                return
            self._learn_nat_port(sa, src, sport)
            # RFC 3948 §3.1.2: a NAT may have changed the addresses the checksum covers, and no NAT-OA from
            # IKE says which (manual SAs): the wire has it redone, ESP having proved the payload authentic.
            self._deliver(inner, sa, sa.mode == "transport" and sa.nat_oa is None)
        elif kind == "ike":
            self.counters["ike_datagrams_4500"] += 1
            if self.ike is not None:
                self.ike.datagram_4500(payload[4:], (src, sport))
        elif kind == "keepalive":
            self.counters["nat_keepalives_received"] += 1
        else:
            self.sad.counters.malformed_packets += 1

    # -- status for ipsecctl -------------------------------------------------------------------------------

    @property
    def pending(self) -> int:
        """How many (filter, peer) pairs wait for IKE, each with its one kept packet."""
        return sum(peer.held is not None for peer in self._peers.values())

    def counter_values(self) -> dict[str, int]:
        """The ipsecmon counters plus the driver's own; 'dropped by policy' includes the kernel's drops."""
        values = self.sad.snapshot().as_dict()
        kernel = self.kernel.totals() if self.kernel is not None else {}
        values["blocked_by_filter"] = kernel.get("block", 0)
        values["unsecured_packets_dropped"] = kernel.get("unsecured", 0)
        values["dropped_fail_closed"] = kernel.get("fail-closed", 0)
        values["dropped_by_policy"] += (sum(kernel.values())
                                        + self.counters["packets_without_sa"])
        values.update(self.counters)
        return values

    def sa_table(self) -> list[dict]:
        now = self.clock()
        return [sa_status(sa, self._filter_of.get(sa.key, ""), now) for sa in self.sad]

    def filter_table(self) -> list[dict]:
        rules = self.kernel.counters() if self.kernel is not None else []
        hits: dict[tuple[str, str], int] = {}
        for rule in rules:
            if rule["chain"] in ("inbound", "outbound"):
                hits[(rule["filter"], rule["chain"])] = rule["packets"]
        return [{"name": f.name, "direction": str(f.direction), "source": str(f.src),
                 "destination": str(f.dst), "protocol": f.protocol, "source_port": f.src_port,
                 "destination_port": f.dst_port, "tunnel": str(f.tunnel) if f.tunnel else None,
                 "action": f.action.name, "verdict": str(f.action.action), "rule": f.rule,
                 "packets": hits.get((comment_name(f.name), str(f.direction)), 0),
                 "description": f.describe()} for f in self.spd.filters]

    # -- inside ---------------------------------------------------------------------------------------------

    def _peer(self, key: tuple[str, str]) -> PeerTraffic:
        peer = self._peers.get(key)
        if peer is None:
            peer = self._peers[key] = PeerTraffic()
        return peer

    def _send(self, sa: SecurityAssociation, peer: PeerTraffic, packet: bytes) -> None:
        try:
            if sa.udp_encap:
                port = peer.nat_port or sa.udp_encap[1]
                self.wire.send_udp(sa.encapsulate_udp(packet), (sa.dst, port), packet[1])
            else:
                self.wire.send_ip(sa.encapsulate(packet), sa.dst)
            if sa.soft_due:  # this packet passed the soft byte limit
                sa.soft_due = False
                if not sa.soft_notified:
                    sa.soft_notified = True
                    self._lifetime_event(sa, "soft")
        except SAExpired as e:
            self._say("expired", f"outbound SA can carry no more: {e}")
            if peer.sa is sa:
                peer.sa = None
            self.counters["packets_without_sa"] += 1
        except IPsecError as e:
            self._dropped(e)
        except OSError as e:
            self.counters["send_errors"] += 1
            self._say("send", f"cannot send to {sa.dst}: {e.strerror}")

    def _send_clear(self, packet: bytes, dst: str) -> None:
        try:
            self.wire.send_ip(packet, dst)
        except OSError as e:
            self.counters["send_errors"] += 1
            self._say("send", f"cannot send to {dst}: {e.strerror}")

    def _hold(self, key: tuple[str, str], peer: PeerTraffic, f: Filter, sel: PacketSelector,
              packet: bytes) -> None:
        """No SA yet: keep only this last packet and ask IKE (not more often than every few seconds)."""
        now = self.clock()
        waiting = peer.held is not None
        if waiting:
            self.counters["packets_without_sa"] += 1  # the packet it replaces is lost
            peer.held = packet
            if now - peer.asked < ACQUIRE_RETRY_SECONDS:
                return
            peer.asked = now
        if self.ike is None:
            self.counters["packets_without_sa"] += 1
            self._say(f"nosa {key}", f"no SA for filter {f.name} to {key[1]} and no IKE to negotiate one: "
                                     "packets dropped (add manual SAs to the configuration)")
            return
        if not waiting:
            peer.held, peer.asked = packet, now
        self.counters["acquires"] += 1
        log.info("asking IKE for an SA: filter %s, packet %s", f.name, sel)
        self.ike.acquire(f, sel)

    def _deliver(self, inner: bytes, sa: SecurityAssociation, stale_checksum: bool = False) -> None:
        """The inner packet must be what the SA's filter secures (RFC 4301 §5.2), then it goes up."""
        flow = flow_key(inner)
        if flow is None or (sa.spi, flow) not in self._inbound_flows:
            try:
                sel = PacketSelector.parse(inner)
            except ValueError:
                self.sad.counters.malformed_packets += 1
                return
            name = self._filter_of.get(sa.key)
            best = self.spd.lookup(sel, Direction.INBOUND)
            blocked = best is not None and best.action.action is Action.BLOCK
            permitted = best is not None and best.action.action is Action.PERMIT
            own = self._inbound_filters.get(name, ()) if name is not None else ()
            if blocked or not (permitted or any(f.matches(sel) for f in own)):
                self.sad.counters.dropped_by_policy += 1
                self._say(f"selector {name}", f"packet {sel} arrived on SA {sa.spi:#x} but is not traffic "
                                              f"of its filter {name}: dropped")
                return
            if flow is not None:
                if len(self._inbound_flows) >= FLOW_CACHE_SIZE:
                    self._inbound_flows.clear()
                self._inbound_flows.add((sa.spi, flow))
        try:
            self.wire.deliver(inner, stale_checksum)
        except OSError as e:
            self.counters["send_errors"] += 1
            self._say("deliver", f"cannot write to the TUN: {e.strerror}")

    def _learn_nat_port(self, sa: SecurityAssociation, src: str, sport: int) -> None:
        """A NAT may have picked another port for the peer: answer where its packets come from."""
        name = self._filter_of.get(sa.key)
        peer = self._peers.get((name, src)) if name is not None else None
        if peer is not None and peer.sa is not None and peer.nat_port != sport:
            peer.nat_port = sport
            log.info("NAT-T: peer %s of filter %s is reached at UDP port %d", src, name, sport)

    def _forget(self, sa: SecurityAssociation) -> None:
        self._inbound_flows.clear()
        outer = sa.outer or sa
        for peer in self._peers.values():
            if peer.sa is outer:
                peer.sa = None
        for member in (outer, outer.inner):
            if member is not None:
                self._filter_of.pop(member.key, None)

    def _unknown_spi(self, spi: bytes, peer: str, protocol: str) -> None:
        """A peer uses an SA we do not have (we restarted, or deleted it): IKE may tell it or renegotiate."""
        report = getattr(self.ike, "invalid_spi", None)
        if report is not None and len(spi) == 4:
            report(int.from_bytes(spi, "big"), peer, protocol)

    def wire_error(self, topic: str, packets: int, message: str) -> None:
        """Batched I/O (driver.offload) failed after the driver handed the packets over: send errors."""
        self.counters["send_errors"] += packets
        self._say(topic, message)

    def _dropped(self, error: IPsecError) -> None:
        self._say(type(error).__name__, f"packet dropped: {error}")

    def _say(self, topic: str, message: str, every: float = 10.0) -> None:
        """Log a drop once per topic every few seconds, so a flood cannot flood the log."""
        now = self.clock()
        if now - self._log_times.get(topic, -every) >= every:
            self._log_times[topic] = now
            log.warning(message)


def describe_sa(sa: SecurityAssociation) -> str:
    algo = sa.encryption if sa.protocol == "esp" else ""
    if sa.integrity:
        algo = f"{algo}/{sa.integrity}" if algo else sa.integrity
    inner = f" + {describe_sa(sa.inner)}" if sa.inner is not None else ""
    encap = f" in UDP {sa.udp_encap[0]}->{sa.udp_encap[1]}" if sa.udp_encap else ""
    return (f"{sa.direction} {sa.protocol.upper()} SPI {sa.spi:#010x} {sa.src} -> {sa.dst} {sa.mode} "
            f"{algo}{encap}{inner}")


def sa_status(sa: SecurityAssociation, filter_name: str, now: float) -> dict:
    return {"spi": f"{sa.spi:#010x}", "protocol": sa.protocol, "direction": sa.direction, "mode": sa.mode,
            "source": sa.src, "destination": sa.dst,
            "encryption": sa.encryption if sa.protocol == "esp" else None,
            "integrity": sa.integrity, "udp_encap": list(sa.udp_encap) if sa.udp_encap else None,
            "filter": filter_name, "age_seconds": round(now - sa.created, 1), "sequence": sa.seq,
            "bundle": f"{sa.inner.spi:#010x}" if sa.inner is not None else None,
            "counters": sa.counters.as_dict(), "description": describe_sa(sa)}
