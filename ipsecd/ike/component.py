"""The IKE component of ipsecd: UDP 500, exchanges, retransmission, SA lifetimes, talks to the driver.

It owns UDP 500. UDP 4500 belongs to the driver, which hands IKE the datagrams that carry the non-ESP
marker (``datagram_4500``) and sends IKE's for it (``send_4500``); for tests IKE can own a 4500 socket.
Time comes from a :class:`Clock` so tests drive retransmissions and lifetimes without sleeping.

The driver side is the :class:`SAInstaller` protocol: ``add_sa(QuickModeDone)`` installs both directions of a
quick mode, ``delete_sa(spi, destination, protocol)`` removes one direction.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import logging
import secrets
import socket
from collections.abc import Callable
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field
from typing import Any, Generic, Protocol, TypeVar

from ipsecd.ike import events, fragments, informational, isakmp, keylog, main_mode, natt, quick_mode
from ipsecd.ike.events import Established, Failure, InboundReady, NegotiationError
from ipsecd.ike.isakmp import ExchangeType, MalformedMessage, Message, NotifyType, ProtocolID
from ipsecd.ike.sa import IsakmpSA, QuickModeDone
from ipsecd.ike.settings import QUICK_MODE_IDLE_SECONDS, IKERule, PeerPolicy, Selector

log = logging.getLogger("ipsecd.ike")

RETRANSMIT_BACKOFF = (1, 2, 4, 8, 16, 32)  # seconds between sends, as Windows does (7 sends)
SOFT_LIFETIME = 0.9  # rekey quick mode SAs at 90 % of their lifetime
#: A main mode SA with quick mode SAs in use under it (or beside it, with the same peer) is renegotiated at
#: 90 % of its lifetime by the side that began it and at 95 % by the other if no newer one exists by then:
#: the quick mode SAs outlive it, and a peer that deletes its quick mode SAs with their main mode (strongSwan)
#: has moved them to the new one (its reauthentication of an IKEv1 SA) before ours expires.
MAIN_MODE_RENEGOTIATE = {True: 0.9, False: 0.95}  # by role: initiator, responder
COUNTER_NAMES = (
    "Oakley Main Modes",
    "Oakley Quick Modes",
    "Authentication Failures",
    "Key Additions",
    "Key Deletions",
    "Negotiation Failures",
    "Malformed Packets",
    "Retransmissions",
    "Duplicates Answered",
    "Duplicates Dropped",
    "Dropped: no SA for cookies",
    "Dropped: not expected in this state",
    "Dropped: delete of another peer's SA",
    "Dropped: unsupported exchange (aggressive mode)",
    "Dropped: unsupported exchange (other)",
    "Dropped: IKEv2 is not supported",
    "Dropped: internal error",
)
#: Half-open main modes (a responder that sent main mode 2 and waits for 3): what an attacker with spoofed
#: sources can make us hold. Bounded per source and in total (the oldest goes first), and kept only this long;
#: main mode 2 is not retransmitted (the initiator's retransmitted main mode 1 is answered from the last
#: reply), so spoofed sources draw one datagram each, not seven.
HALF_OPEN_PER_SOURCE = 16
HALF_OPEN_TOTAL = 1024
HALF_OPEN_SECONDS = 30.0
#: Bytes a socket may queue in user space when the kernel's send buffer is full (replies waiting for ARP to
#: spoofed on-link addresses fill it): past this a datagram is dropped and counted rather than queued behind
#: a backlog that delays the real peers' replies for minutes.
SEND_QUEUE_LIMIT = 64 * 1024
SEND_BUFFER = 4 * 1024 * 1024  # the kernel's send buffer of the IKE socket (root may exceed wmem_max)
RATE_TABLE_LIMIT = 4096  # entries of a table that rate-limits a reaction per peer or SPI
EVENT_LENGTH = 700  # characters of one event: a failure's Event 547 fields and its detail (cut at 320)
#: Exchange types of RFC 2408 ipsecd does not speak, as a rejection names them (others: "other").
UNSUPPORTED_EXCHANGES: dict[int, str] = {
    ExchangeType.AGGRESSIVE: "aggressive mode",
    ExchangeType.BASE: "base",
    ExchangeType.AUTH_ONLY: "authentication only",
}
IKEV2_MAJOR_VERSION = 2
#: A retransmission of the message we last answered is answered again at most this many times per exchange
#: (the peer retransmits 6 times; a replay flood gets no more).
DUPLICATE_ANSWERS = 4


class SAInstaller(Protocol):
    """What IKE needs from the IPsec driver."""

    def add_inbound(self, sa: QuickModeDone) -> None:
        """A responder's inbound SAs, as its quick mode 2 leaves; `add_sa` of the same quick mode follows
        (the inbound SAs already in stay), or `delete_sa` of each if the quick mode fails."""

    def add_sa(self, sa: QuickModeDone) -> None: ...

    def delete_sa(self, spi: int, destination: str, protocol: str) -> None: ...


class Timer(Protocol):
    def cancel(self) -> None: ...


class Clock(Protocol):
    def time(self) -> float: ...

    def call_later(self, delay: float, callback: Callable[[], None]) -> Timer: ...


Machine = TypeVar("Machine", main_mode.MainMode, quick_mode.QuickMode)


@dataclass
class Exchange(Generic[Machine]):
    """One exchange in flight: its state machine, where it talks, what to repeat."""

    machine: Machine
    peer: tuple[str, int]
    local_port: int
    rule: IKERule | None = None
    last_sent: list[bytes] = field(default_factory=list)
    last_received: bytes = b""
    answered: bytes = b""  # the received message that `last_sent` answers (b"" when nothing answers it)
    duplicates_answered: int = 0
    attempts: int = 0
    timer: Timer | None = None
    acquire: tuple[Selector, Selector] | None = None  # for quick mode initiators
    early_inbound: QuickModeDone | None = None  # a quick mode responder's inbound SAs, installed at QM2
    started: float = 0.0  # main mode: when its first message left or arrived


@dataclass
class MainModeEntry:
    sa: IsakmpSA
    rule: IKERule
    established: float
    exchange: Exchange[main_mode.MainMode]
    timers: list[Timer] = field(default_factory=list)


@dataclass
class QuickModeEntry:
    sa: QuickModeDone
    rule: IKERule | None
    installed: float
    initiator: bool
    timers: list[Timer] = field(default_factory=list)
    rekeyed: bool = False  # a newer quick mode for the same traffic is installed or being negotiated
    replaced_by: int | None = None  # the inbound SPI of the newer one, once installed

    def same_traffic(self, sa: QuickModeDone) -> bool:
        """Both secure the same selectors with the same peer: one replaces the other."""
        mine = self.sa
        return (mine.local_selector, mine.remote_selector, mine.isakmp_sa.remote[0]) == (
            sa.local_selector,
            sa.remote_selector,
            sa.isakmp_sa.remote[0],
        )


def _half_open(ex: Exchange) -> bool:
    """A main mode responder that answered main mode 1 and has heard nothing since: nothing proves that its
    peer exists (the source address may be spoofed)."""
    return isinstance(ex.machine, main_mode.MainModeResponder) and ex.machine.state == "MM2 sent"


def covers(outer: Selector, inner: Selector) -> bool:
    """Traffic of `inner` is traffic of `outer` (network, and protocol and port where `outer` names one)."""
    return (inner.network.subnet_of(outer.network) and outer.protocol in (0, inner.protocol)
            and outer.port in (0, inner.port))


def same_peer(old: IsakmpSA, new: IsakmpSA) -> bool:
    """The same peer computer: the same address, and when a NAT was seen on either (one public address may
    hide many hosts) the same authenticated identity too."""
    if old.remote[0] != new.remote[0]:
        return False
    nat = any(sa.nat and sa.nat.remote_behind_nat for sa in (old, new))
    return not nat or old.peer_identity == new.peer_identity


Key = TypeVar("Key")


_AUTH_WORDS = {"psk": "pre-shared key", "rsa-sig": "certificate"}


def _peer_identity(ex: Exchange) -> str:
    """Who the peer is, as far as the exchange got: the method, the identity main mode proved, the address."""
    machine = ex.machine
    if isinstance(machine, main_mode.MainMode):
        methods = dict.fromkeys(_AUTH_WORDS.get(a.method, a.method) for a in machine.policy.auth)
        offered = " or ".join(methods)
        how = _AUTH_WORDS.get(machine.method, machine.method) if machine.method else (
            f"{offered} (offered)" if machine.initiator else "not yet known")
        return f"{how}, peer IP address {ex.peer[0]}"
    how = _AUTH_WORDS.get(machine.sa.auth_method, machine.sa.auth_method)
    return f"{how} {machine.sa.peer_identity}, peer IP address {ex.peer[0]}"


def _refusable(ex: Exchange) -> bool:
    """A quick mode the peer can still refuse with an error notify: ours, or one we answered whose quick
    mode 3 has not come (strongSwan, as initiator, sends NO-PROPOSAL-CHOSEN instead when it cannot install
    the SAs our quick mode 2 agreed)."""
    return isinstance(ex.machine, quick_mode.QuickModeInitiator) or (
        ex.early_inbound is not None and not ex.machine.done)


def _quick_mode_spis(ex: Exchange) -> set[bytes]:
    """The SPIs a notify may name to refuse this quick mode: the ones its proposal carried, ours as initiator,
    the peer's and ours once we answered."""
    if isinstance(ex.machine, quick_mode.QuickModeInitiator):
        return {ex.machine.spi}
    done = ex.early_inbound
    children = [*done.inbound.chain(), *done.outbound.chain()] if done else []
    return {c.spi.to_bytes(4, "big") for c in children}


def _silent_exchange(table: dict[Key, Exchange[Any]], addr: tuple[str, int]) -> Key | None:
    """The newest exchange with `addr` that has sent nothing yet."""
    newest_first = reversed(list(table.items()))
    return next((key for key, ex in newest_first if ex.peer == addr and not ex.last_sent), None)


class AsyncioClock:
    def __init__(self, loop: asyncio.AbstractEventLoop | None = None):
        self.loop = loop or asyncio.get_event_loop()

    def time(self) -> float:
        return self.loop.time()

    def call_later(self, delay: float, callback: Callable[[], None]) -> Timer:
        return self.loop.call_later(delay, callback)


#: Runs blocking work (Kerberos: a ticket request) and then, on the event loop, the callback with the
#: exception the work raised (None when it returned).
BlockingRunner = Callable[[Callable[[], None], Callable[[BaseException | None], None]], None]


def run_inline(work: Callable[[], None], then: Callable[[BaseException | None], None]) -> None:
    """Blocking work done where it is asked for: tests with a manual clock, before start()."""
    try:
        work()
    except Exception as exc:
        then(exc)
        return
    then(None)


def run_in_executor(loop: asyncio.AbstractEventLoop) -> BlockingRunner:
    """Blocking work in the loop's thread pool; the callback back on the loop."""

    def run(work: Callable[[], None], then: Callable[[BaseException | None], None]) -> None:
        loop.run_in_executor(None, work).add_done_callback(lambda done: then(done.exception()))

    return run


class _UDP(asyncio.DatagramProtocol):
    def __init__(self, handler: Callable[[bytes, tuple[str, int]], None]):
        self.handler = handler

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self.handler(data, addr)


class IKE:
    """The IKE component. Construct, ``load_policy``, ``await start()``; the driver calls ``acquire``."""

    def __init__(
        self,
        local_address: str,
        driver: SAInstaller,
        *,
        clock: Clock | None = None,
        send_4500: Callable[[bytes, tuple[str, int]], None] | None = None,
        port: int = natt.IKE_PORT,
        natt_port: int = natt.NATT_PORT,
        spi_allocator: Callable[[], int] | None = None,
        retransmit: tuple[float, ...] = RETRANSMIT_BACKOFF,
        keepalive_interval: float = natt.KEEPALIVE_INTERVAL,
        on_peer_message: Callable[[str], None] | None = None,
        main_mode_lifetime: int | None = None,
        nat_traversal: tuple[str, ...] | None = None,
        run_blocking: BlockingRunner | None = None,
    ):
        self.local_address, self.driver = local_address, driver
        self._clock = clock
        self.port, self.natt_port = port, natt_port
        self.send_4500 = send_4500
        self.allocate_spi = spi_allocator or (lambda: secrets.randbelow(0xFFFFFF00) + 0x100)
        if not retransmit or min(retransmit) <= 0:
            raise ValueError(f"retransmission intervals must be positive seconds, got {retransmit!r}")
        self.retransmit = tuple(retransmit)  # seconds between sends; len + 1 sends in all
        self.keepalive_interval = keepalive_interval
        self.on_peer_message = on_peer_message  # the Negotiator: this peer speaks IKE (no soft association)
        self.main_mode_lifetime = main_mode_lifetime  # seconds, for every rule (a lab goes below 5 min)
        self.nat_traversal = nat_traversal  # NAT-T revisions for every rule; None: PeerPolicy's (draft-02)
        self._run_blocking = run_blocking  # once started: the loop's thread pool; before: inline
        self.rules: list[IKERule] = []
        self.counters: collections.Counter[str] = collections.Counter({name: 0 for name in COUNTER_NAMES})
        self.events: collections.deque[tuple[float, str]] = collections.deque(maxlen=1000)
        self.main_modes: dict[bytes, MainModeEntry] = {}  # by cookie pair
        self.quick_modes: dict[int, QuickModeEntry] = {}  # by inbound SPI
        # exchanges in flight: main modes by initiator cookie, quick modes by (cookies, message ID)
        self.pending_main: dict[bytes, Exchange[main_mode.MainMode]] = {}
        self.pending_quick: dict[tuple[bytes, int], Exchange[quick_mode.QuickMode]] = {}
        self.waiting: dict[str, list[tuple[IKERule, Selector, Selector]]] = {}
        self.sockets: list[asyncio.DatagramTransport] = []
        self.sender: Callable[[bytes, tuple[str, int], int], None] = self._send_udp
        self.keepalive_timers: dict[bytes, Timer] = {}
        self.invalid_spi_sent: dict[tuple[str, int], float] = {}
        self.send_errors: dict[str, str] = {}  # by peer address: why our last send on UDP 4500 failed
        self.reassembly = fragments.Reassembly()  # messages a peer sent in IKE fragments

    @property
    def give_up_after(self) -> float:
        """Seconds from an exchange's first send until it fails unanswered: its last send comes one
        interval before (Windows' schedule: sends at 0, 1, 3, 7, 15, 31, 63 s, failure at 95 s)."""
        return sum(self.retransmit) + self.retransmit[-1]

    @property
    def clock(self) -> Clock:
        """Time and timers: the one given, or the event loop's once started."""
        if self._clock is None:
            raise RuntimeError("IKE has no clock before start() (or pass clock=)")
        return self._clock

    # -- wiring -------------------------------------------------------------------------------------

    async def start(self, own_4500: bool = False) -> None:
        """Bind UDP 500 (and 4500 when ``own_4500`` or no driver callback is given)."""
        loop = asyncio.get_running_loop()
        self._clock = self._clock or AsyncioClock(loop)
        self._run_blocking = self._run_blocking or run_in_executor(loop)
        t500, _ = await loop.create_datagram_endpoint(
            lambda: _UDP(lambda d, a: self.datagram_received(d, a, self.port)),
            local_addr=(self.local_address, self.port),
            family=socket.AF_INET,
        )
        self.sockets.append(t500)
        sock = t500.get_extra_info("socket")
        for option in (getattr(socket, "SO_SNDBUFFORCE", 32), socket.SO_SNDBUF):
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, option, SEND_BUFFER)
                break
        if own_4500 or self.send_4500 is None:
            t4500, _ = await loop.create_datagram_endpoint(
                lambda: _UDP(lambda d, a: self.datagram_4500(d, a)),
                local_addr=(self.local_address, self.natt_port),
                family=socket.AF_INET,
            )
            self.sockets.append(t4500)
            self.send_4500 = t4500.sendto

    async def stop(self) -> None:
        """Delete every SA (telling the peers), then close the sockets."""
        for spi in list(self.quick_modes):
            self._remove_quick_mode(spi, "ipsecd stopping", notify_peer=True)
        for cookies in list(self.main_modes):
            self._remove_main_mode(cookies, "ipsecd stopping", notify_peer=True)
        for timer in self.keepalive_timers.values():
            timer.cancel()
        exchanges: list[Exchange[Any]] = [*self.pending_main.values(), *self.pending_quick.values()]
        for ex in exchanges:
            if ex.timer:
                ex.timer.cancel()
        for sock in self.sockets:
            sock.close()

    def load_policy(self, rules: list[IKERule]) -> None:
        self.rules = [self._with_node_settings(rule) for rule in rules]

    def _with_node_settings(self, rule: IKERule) -> IKERule:
        """`rule` with what ipsecd.yaml sets for every rule: `ike.main_mode_lifetime`, `ike.nat_traversal`."""
        policy = rule.policy
        if self.main_mode_lifetime is not None:
            offers = [dataclasses.replace(o, lifetime=self.main_mode_lifetime) for o in policy.main_mode]
            policy = dataclasses.replace(policy, main_mode=offers)
        if self.nat_traversal is not None:
            policy = dataclasses.replace(policy, nat_traversal=self.nat_traversal)
        return dataclasses.replace(rule, policy=policy)

    def _send_udp(self, data: bytes, addr: tuple[str, int], local_port: int) -> None:
        if local_port == self.natt_port:
            self._send_4500(natt.frame(data, natt.NATT_PORT), addr)
        # asyncio's datagram transports queue in user space and say how much (typeshed's class omits it)
        elif self.sockets[0].get_write_buffer_size() > SEND_QUEUE_LIMIT:  # type: ignore[attr-defined]
            self.counters["Dropped: send queue full"] += 1
        else:
            self.sockets[0].sendto(data, addr)

    def _send_4500(self, datagram: bytes, addr: tuple[str, int]) -> None:
        """A datagram on UDP 4500 through the driver's socket. A send the kernel refuses (a message too long
        for the link, no route) is counted and said, and the exchange goes on: its retransmissions try again
        and its failure names the error."""
        try:
            self._sender_4500()(datagram, addr)
        except OSError as exc:
            self.counters["Dropped: send failed"] += 1
            if len(self.send_errors) >= RATE_TABLE_LIMIT:  # addresses come from the network: bounded
                self.send_errors.clear()
            self.send_errors[addr[0]] = f"{exc.strerror or exc}, {len(datagram)} bytes"
            self.note(f"could not send {len(datagram)} bytes to {addr[0]}:{addr[1]} on UDP 4500: {exc}")
        else:
            self.send_errors.pop(addr[0], None)

    def _sender_4500(self) -> Callable[[bytes, tuple[str, int]], None]:
        """Who sends on UDP 4500: the driver (send_4500=) or, once started, our own socket."""
        if self.send_4500 is None:
            raise RuntimeError("IKE has no UDP 4500 sender before start() (or pass send_4500=)")
        return self.send_4500

    def note(self, text: str) -> None:
        """The event log, in words; an event is at most EVENT_LENGTH characters (the list keeps 1000)."""
        if len(text) > EVENT_LENGTH:
            text = text[: EVENT_LENGTH - 30] + f"... ({len(text)} characters)"
        self.events.append((self._clock.time() if self._clock else 0.0, text))
        log.info("%s", text)

    # -- driver -> IKE -------------------------------------------------------------------------------

    def acquire(self, rule: IKERule, local: Selector, remote: Selector, peer: str | None = None) -> None:
        """A packet needs an SA: reuse or negotiate a main mode with the peer, then a quick mode. `rule` is
        the Policy Agent's: ipsecd.yaml's IKE settings go on it here as on the rules we answer with."""
        peer = peer or rule.tunnel_endpoint or str(remote.network.network_address)
        self._acquire(self._with_node_settings(rule), local, remote, peer)

    def _acquire(self, rule: IKERule, local: Selector, remote: Selector, peer: str) -> None:
        if self._negotiating(local, remote, peer):
            return
        mm = self._main_mode_with(peer)
        if mm:
            self._start_quick_mode(mm, rule, local, remote)
            return
        if not self._waits(peer, local, remote):  # the driver asks every 5 s; a main mode may take longer
            self.waiting.setdefault(peer, []).append((rule, local, remote))
        if not self._main_mode_under_way(peer):
            self._start_main_mode(rule, peer)

    def _waits(self, peer: str, local: Selector, remote: Selector) -> bool:
        """This traffic waits for a main mode with `peer` (to start its quick mode when one is in)."""
        return any((waiting_local, waiting_remote) == (local, remote)
                   for _, waiting_local, waiting_remote in self.waiting.get(peer, ()))

    def _main_mode_under_way(self, peer: str) -> bool:
        """A main mode with `peer` that will end established or failed (and then serve or drop what waits
        for it): ours, or the peer's past its first message. A half-open one never ends so (its initiator
        may be gone: it is only forgotten after HALF_OPEN_SECONDS) and is not waited for."""
        return any(ex.peer[0] == peer and not _half_open(ex) for ex in self.pending_main.values())

    def _negotiating(self, local: Selector, remote: Selector, peer: str) -> bool:
        """A quick mode in progress with `peer` will secure this traffic: ours for the same acquire, or the
        peer's that we answered (its SAs cover the packet, typically our reply to the packet it holds).
        A finished exchange kept for duplicates does not count."""
        for ex in self.pending_quick.values():
            machine = ex.machine
            if machine.sa.remote[0] != peer or machine.done:
                continue
            if ex.acquire == (local, remote):
                return True
            answered = ex.early_inbound  # a responder's: set as its quick mode 2 leaves
            if answered and covers(answered.local_selector, local) and covers(
                    answered.remote_selector, remote):
                return True
        return False

    def datagram_4500(self, data: bytes, addr: tuple[str, int]) -> None:
        """A datagram on UDP 4500 (from the driver, or our own socket in tests)."""
        kind, message = natt.classify_4500(data)
        if kind == "ike":
            self.datagram_received(message, addr, self.natt_port)

    def has_main_mode_with(self, peer: str) -> bool:
        return self._main_mode_with(peer) is not None

    def invalid_spi(self, spi: int, peer: str, protocol: str = "esp") -> None:
        """The driver got a packet for an SPI it does not have: tell the peer (at most once per SPI and
        minute), which then deletes its outbound SA and negotiates afresh on its next packet."""
        mm = self._main_mode_with(peer)
        now = self.clock.time()
        if mm is None or now - self.invalid_spi_sent.get((peer, spi), -60.0) < 60:
            return
        if len(self.invalid_spi_sent) >= RATE_TABLE_LIMIT:  # SPIs come from the network: bounded
            self.invalid_spi_sent.clear()  # at worst one more notification per SPI
        self.invalid_spi_sent[(peer, spi)] = now
        proto = ProtocolID.ESP if protocol == "esp" else ProtocolID.AH
        self.sender(
            informational.notify(mm.sa, NotifyType.INVALID_SPI, proto, spi.to_bytes(4, "big")),
            mm.sa.remote,
            mm.sa.local[1],
        )
        self.note(f"told {peer} that SPI {spi:#010x} is unknown here (INVALID-SPI)")

    def expire(self, inbound_spi: int, hard: bool, reason: str = "lifetime") -> None:
        """The driver saw a soft/hard (kilobyte) lifetime or idle timeout on an SA."""
        if inbound_spi not in self.quick_modes:
            return
        if hard:
            self._remove_quick_mode(inbound_spi, reason, notify_peer=True)
        else:
            self._rekey(inbound_spi)

    def delete_main_modes(self, rule_names: AbstractSet[str], reason: str) -> None:
        """Delete (telling the peer) the main mode SAs negotiated under these rules: a policy change made
        the authentication they were established with invalid, so the next one must authenticate anew."""
        for cookies, entry in list(self.main_modes.items()):
            if entry.rule.name in rule_names:
                self._remove_main_mode(cookies, reason, notify_peer=True)

    # -- receiving ------------------------------------------------------------------------------------

    def datagram_received(self, data: bytes, addr: tuple[str, int], local_port: int) -> None:
        """Every datagram is processed or dropped and counted: a defect of ours that a datagram reaches is
        counted and said, the exchange it opened is freed, and IKE goes on with the next one."""
        opened = len(self.pending_main), len(self.pending_quick)
        try:
            self._dispatch(data, addr, local_port)
        except Exception as exc:
            self.counters["Dropped: internal error"] += 1
            self.note(f"dropped a datagram from {addr[0]}:{addr[1]} on an internal error: "
                      f"{type(exc).__name__}: {str(exc)[:200]}")
            log.debug("internal error on a datagram from %s", addr, exc_info=True)
            if (len(self.pending_main), len(self.pending_quick)) != opened:
                self._forget_half_open(addr)

    def _forget_half_open(self, addr: tuple[str, int]) -> None:
        """The newest exchange with `addr` that has sent nothing yet: opened by the datagram that failed."""
        main = _silent_exchange(self.pending_main, addr)
        if main is not None:
            del self.pending_main[main]
            return
        quick = _silent_exchange(self.pending_quick, addr)
        if quick is not None:
            del self.pending_quick[quick]

    def _drop(self, counter: str, text: str) -> None:
        """A rejected datagram: counted under "Dropped: <counter>" and said."""
        self.counters[f"Dropped: {counter}"] += 1
        self.note(f"dropped {text}")

    def _dispatch(self, data: bytes, addr: tuple[str, int], local_port: int) -> None:
        if len(data) > 17 and data[17] >> 4 == IKEV2_MAJOR_VERSION:
            self._drop("IKEv2 is not supported", f"an IKEv2 message from {addr[0]}:{addr[1]}: IKEv2 is not "
                                                 "supported (Windows Server 2003 speaks IKEv1 only)")
            return
        try:
            msg = Message.decode(data)
        except MalformedMessage as exc:
            self.counters["Malformed Packets"] += 1
            self.note(f"dropped a malformed packet from {addr[0]}:{addr[1]}: {exc}")
            return
        if len(msg.payloads) == 1 and isinstance(msg.payloads[0], isakmp.Fragment):
            self._fragment(msg, addr, local_port)
            return
        if self.on_peer_message:
            self.on_peer_message(addr[0])
        cookies = msg.icookie + msg.rcookie
        if msg.exchange not in (ExchangeType.MAIN_MODE, ExchangeType.QUICK_MODE, ExchangeType.INFORMATIONAL):
            counter = "aggressive mode" if msg.exchange == ExchangeType.AGGRESSIVE else "other"
            kind = UNSUPPORTED_EXCHANGES.get(msg.exchange, f"type {msg.exchange}")
            self._drop(f"unsupported exchange ({counter})",
                       f"a message from {addr[0]}:{addr[1]}: unsupported exchange ({kind})")
        elif msg.exchange == ExchangeType.MAIN_MODE or (
            msg.exchange == ExchangeType.INFORMATIONAL and cookies not in self.main_modes
        ):
            self._main_mode_message(msg, data, addr, local_port)
        elif cookies not in self.main_modes:
            self._no_sa(msg, addr)
        elif msg.exchange == ExchangeType.QUICK_MODE:
            self._quick_mode_message(self.main_modes[cookies], msg, data, addr, local_port)
        elif msg.exchange == ExchangeType.INFORMATIONAL:
            self._informational(self.main_modes[cookies], msg, addr)

    def _fragment(self, msg: Message, addr: tuple[str, int], local_port: int) -> None:
        """A piece of a message the peer cut into IKE fragments (fragments.py): once all are in, the whole
        message goes where it would have gone unfragmented."""
        self.counters["Fragments Received"] += 1
        try:
            whole = self.reassembly.add(addr[0], msg, self.clock.time())
        except fragments.FragmentError as exc:
            self._drop("bad fragment", f"a fragment from {addr[0]}:{addr[1]}: {exc}")
            return
        if whole is not None:
            self.counters["Fragmented Messages Reassembled"] += 1
            self._dispatch(whole, addr, local_port)

    def _no_sa(self, msg: Message, addr: tuple[str, int]) -> None:
        kind = "main mode" if msg.exchange == ExchangeType.MAIN_MODE else (
            "quick mode" if msg.exchange == ExchangeType.QUICK_MODE else "informational")
        self._drop("no SA for cookies", f"a {kind} message from {addr[0]}:{addr[1]}: no SA or exchange "
                                        f"with cookies {msg.icookie.hex()}:{msg.rcookie.hex()} here")

    def _duplicate(self, ex: Exchange, data: bytes) -> bool:
        """A retransmission of the last message received: answered again from the last reply if that reply
        answers it, a few times at most; dropped (and counted) if it ended the exchange on our side, such as
        main mode 6 at the initiator or quick mode 3 at the responder, whose "answer" would draw the peer's
        answer in turn: an endless loop between two daemons."""
        if data != ex.last_received:
            return False
        if data == ex.answered and ex.duplicates_answered < DUPLICATE_ANSWERS:
            ex.duplicates_answered += 1
            for wire in ex.last_sent:
                self.sender(wire, ex.peer, ex.local_port)
            self.counters["Duplicates Answered"] += 1
        else:
            self.counters["Duplicates Dropped"] += 1
        return True

    def _main_mode_message(self, msg: Message, data: bytes, addr: tuple[str, int], local_port: int) -> None:
        ex = self.pending_main.get(msg.icookie)
        done = self.main_modes.get(msg.icookie + msg.rcookie)
        if done and self._duplicate(done.exchange, data):
            return
        if ex is None:
            if done:  # a late message of a finished main mode that is not its last one
                self._unexpected(msg, addr, "main mode established")
                return
            if msg.exchange != ExchangeType.MAIN_MODE or msg.rcookie != bytes(8):
                self._no_sa(msg, addr)  # a stray informational or a message of a forgotten exchange
                return
            rule = next((r for r in self.rules if r.covers_peer(addr[0])), None)
            if rule is None:
                self.counters["Negotiation Failures"] += 1
                self.counters["Negotiation Failures: no policy for peer"] += 1
                failure = Failure(f"main mode from {addr[0]} refused: no rule covers this peer",
                                  "no policy for peer")
                self.note(f"main mode with {addr[0]} failed: "
                          + failure.describe(events.MAIN_MODE, f"{self.local_address} <-> {addr[0]}",
                                             f"not yet known, peer IP address {addr[0]}"))
                return
            if not self._admit_half_open(addr[0]):
                return
            machine = main_mode.MainModeResponder(rule.policy, (self.local_address, local_port), addr)
            ex = Exchange(machine, addr, local_port, rule, started=self.clock.time())
            self.pending_main[msg.icookie] = ex
        elif self._duplicate(ex, data):
            return
        if not ex.machine.initiator and ex.machine.state != "new" and msg.rcookie != ex.machine.rcookie:
            self._no_sa(msg, addr)  # our initiator cookie, not our responder cookie
            return
        self._feed(ex, msg, data, addr, local_port)
        self._main_mode_progress(ex, msg.icookie)
        self._run_blocking_work(ex, msg.icookie)

    def _admit_half_open(self, source: str) -> bool:
        """Room for one more half-open main mode from `source`: at most HALF_OPEN_PER_SOURCE from one
        address (refused), HALF_OPEN_TOTAL in all (the oldest makes room)."""
        half_open = [(cookie, ex) for cookie, ex in self.pending_main.items() if _half_open(ex)]
        if sum(ex.peer[0] == source for _, ex in half_open) >= HALF_OPEN_PER_SOURCE:
            self.counters["Dropped: half-open limit per source"] += 1
            return False
        if len(half_open) >= HALF_OPEN_TOTAL:
            cookie, oldest = half_open[0]
            self._cancel(oldest)
            del self.pending_main[cookie]
            self.counters["Half-Open Main Modes Evicted"] += 1
        return True

    def _expire_half_open(self, ex: Exchange, icookie: bytes) -> None:
        ex.timer = None
        if _half_open(ex) and self.pending_main.get(icookie) is ex:
            del self.pending_main[icookie]
            self.counters["Half-Open Main Modes Expired"] += 1

    def _feed(self, ex: Exchange, msg: Message, data: bytes, addr: tuple[str, int], local_port: int) -> None:
        before, dropped = ex.machine.state, len(ex.machine.dropped)
        replies = ex.machine.receive(msg)
        if len(ex.machine.dropped) > dropped:
            self.counters["Malformed Packets"] += 1
            self.note(
                f"dropped a message from {addr[0]} that failed its integrity check, waiting for the "
                f"retransmission: {ex.machine.dropped[-1]}"
            )
        if ex.machine.state == before:
            if len(ex.machine.dropped) == dropped:  # not for this state (late duplicate, stray message)
                self._unexpected(msg, addr, ex.machine.state)
            return
        ex.last_received, ex.answered = data, (data if replies else b"")
        ex.duplicates_answered = 0
        if ex.machine.state != "failed" and (addr, local_port) != (ex.peer, ex.local_port):
            ex.peer, ex.local_port = addr, local_port  # the peer floated or its NAT mapping moved
        self._cancel(ex)
        if (
            isinstance(ex.machine, main_mode.MainMode)
            and ex.machine.float_to_4500
            and ex.local_port != self.natt_port
            and ex.machine.initiator
        ):
            ex.peer, ex.local_port = (ex.peer[0], self.natt_port), self.natt_port
        if replies and _half_open(ex):
            self._transmit(ex, replies, expect_reply=False)
            ex.timer = self.clock.call_later(HALF_OPEN_SECONDS,
                                             lambda: self._expire_half_open(ex, msg.icookie))
        elif replies:
            self._transmit(ex, replies, expect_reply=not ex.machine.done)

    def _unexpected(self, msg: Message, addr: tuple[str, int], state: str) -> None:
        self._drop("not expected in this state",
                   f"a message of exchange type {msg.exchange} ({len(msg.body)} bytes) from "
                   f"{addr[0]}:{addr[1]}: not expected by the exchange {msg.icookie.hex()}:"
                   f"{msg.rcookie.hex()} in state {state}")

    def _main_mode_progress(self, ex: Exchange, icookie: bytes) -> None:
        machine = ex.machine
        for event in machine.events:
            if isinstance(event, Failure):
                self._failed("main mode", event, ex)
                self.pending_main.pop(icookie, None)
                for rule, *_ in self.waiting.pop(ex.peer[0], []):
                    self.note(f"rule {rule.name}: no SA with {ex.peer[0]} because main mode failed")
            elif isinstance(event, Established):
                self.pending_main.pop(icookie, None)
                self._established(ex, event.sa)
        machine.events.clear()

    def _run_blocking_work(self, ex: Exchange[main_mode.MainMode], icookie: bytes) -> None:
        """Work the main mode handed out (Kerberos: the ticket for main mode 3, up to the Kerberos timeout)
        runs off the event loop; the exchange goes on when it is done."""
        work = ex.machine.take_blocking()
        if work is None:
            return

        def resume(error: BaseException | None) -> None:
            if self.pending_main.get(icookie) is not ex:
                return  # ended meanwhile (the peer's notify, stop)
            if error is not None:
                ex.machine.fail(f"internal error before main mode 3: {type(error).__name__}: {error}",
                                "negotiation failed")
            replies = ex.machine.resume()
            if replies:
                ex.answered = ex.last_received  # a repeated main mode 2 gets main mode 3 again
                self._transmit(ex, replies, expect_reply=not ex.machine.done)
            self._main_mode_progress(ex, icookie)

        (self._run_blocking or run_inline)(work, resume)

    def _established(self, ex: Exchange, sa: IsakmpSA) -> None:
        sa.local, sa.remote = (self.local_address, ex.local_port), ex.peer
        self.counters["Oakley Main Modes"] += 1
        if ex.rule is None:
            raise RuntimeError(f"main mode with {ex.peer[0]} has no rule")  # both sides start one with a rule
        entry = MainModeEntry(sa, ex.rule, self.clock.time(), ex)
        self.main_modes[sa.cookies] = entry
        for other in self.pending_main.values():
            if other.machine.initiator and other.peer[0] == sa.remote[0]:
                # Begun when we had no SA with the peer (it was restarting): we have one now, and SAs under
                # it that the peer must keep, so its main mode 5 no longer says INITIAL-CONTACT.
                other.machine.initial_contact = False
        if ex.machine.peer_initial_contact:
            self._initial_contact(sa, ex.started)
        nat = f", {sa.nat.describe()}" if sa.nat else ""
        self.note(f"{sa.describe()} established{nat}, lifetime {sa.lifetime} s")
        entry.timers.append(
            self.clock.call_later(
                sa.lifetime,
                lambda: self._remove_main_mode(sa.cookies, "main mode lifetime expired", notify_peer=True),
            )
        )
        entry.timers.append(self.clock.call_later(sa.lifetime * MAIN_MODE_RENEGOTIATE[sa.initiator],
                                                  lambda: self._renegotiate_main_mode(sa.cookies)))
        if sa.nat and sa.nat.local_behind_nat:
            self._schedule_keepalive(sa)
        for rule, local, remote in self.waiting.pop(sa.remote[0], []):
            self._start_quick_mode(entry, rule, local, remote)

    def _schedule_keepalive(self, sa: IsakmpSA) -> None:
        """NAT keepalives every 20 s (``keepalive_interval``) while the main mode SA lives (RFC 3948 §2.3)."""
        self.keepalive_timers[sa.cookies] = self.clock.call_later(
            self.keepalive_interval, lambda: self._keepalive(sa)
        )

    def _keepalive(self, sa: IsakmpSA) -> None:
        if sa.cookies in self.main_modes:
            self._send_4500(natt.NAT_KEEPALIVE, sa.remote)
            self._schedule_keepalive(sa)

    def _quick_mode_message(
        self, mm: MainModeEntry, msg: Message, data: bytes, addr: tuple[str, int], local_port: int
    ) -> None:
        key = (mm.sa.cookies, msg.message_id)
        ex = self.pending_quick.get(key)
        if ex is None:
            if any(
                e.sa.message_id == msg.message_id and e.sa.isakmp_sa is mm.sa
                for e in self.quick_modes.values()
            ):
                self.counters["Duplicates Dropped"] += 1  # a late retransmission of a finished quick mode
                return
            machine = quick_mode.QuickModeResponder(
                mm.sa, msg.message_id, self._policy_for, self.allocate_spi
            )
            ex = Exchange(machine, addr, local_port)
            self.pending_quick[key] = ex
        elif self._duplicate(ex, data):
            return
        self._feed(ex, msg, data, addr, local_port)
        if ex.machine.state == "new":  # its first message was dropped: nothing to remember
            self.pending_quick.pop(key, None)
            return
        self._quick_mode_progress(ex, key)

    def _policy_for(self, sa: IsakmpSA, local: Selector, remote: Selector) -> PeerPolicy | None:
        behind_nat = bool(sa.nat and sa.nat.remote_behind_nat)  # then the peer names its private address
        rule = next(
            (
                r
                for r in self.rules
                if r.covers_peer(sa.remote[0])
                and (r.covers(local, remote) or (behind_nat and local.network.subnet_of(r.local.network)))
            ),
            None,
        )
        return rule.policy if rule else None

    def _quick_mode_progress(self, ex: Exchange, key: tuple[bytes, int]) -> None:
        for event in ex.machine.events:
            if isinstance(event, Failure):
                self._failed("quick mode", event, ex)
                if ex.early_inbound is not None:  # no quick mode 3: the inbound SAs go again
                    for child in ex.early_inbound.inbound.chain():
                        self.driver.delete_sa(child.spi, child.dst, child.protocol)
                    ex.early_inbound = None
            elif isinstance(event, InboundReady):
                self.driver.add_inbound(event.done)
                ex.early_inbound = event.done
            elif isinstance(event, QuickModeDone):
                ex.early_inbound = None
                self._install(event, ex)
        ex.machine.events.clear()
        if ex.machine.done and not ex.timer:
            # Kept while the peer may still retransmit (its schedule taken to be ours): the initiator answers
            # each QM2 repeated for a lost QM3 with QM3 again; the responder counts late QM3s as duplicates.
            self.clock.call_later(self.give_up_after, lambda: self._forget_quick(key))

    def _forget_quick(self, key: tuple[bytes, int]) -> None:
        self.pending_quick.pop(key, None)

    def _install(self, done: QuickModeDone, ex: Exchange) -> None:
        self.driver.add_sa(done)
        self.counters["Oakley Quick Modes"] += 1
        self.counters["Key Additions"] += len(done.inbound.chain()) * 2
        rule = ex.rule or next(
            (r for r in self.rules if r.covers(done.local_selector, done.remote_selector)), None
        )
        initiator = isinstance(ex.machine, quick_mode.QuickModeInitiator)
        entry = QuickModeEntry(done, rule, self.clock.time(), initiator)
        self._replace_older(done)
        self.quick_modes[done.inbound.spi] = entry
        self.note(f"{done.describe()} installed")
        if entry.initiator:
            entry.timers.append(
                self.clock.call_later(
                    done.lifetime_seconds * SOFT_LIFETIME, lambda: self._rekey(done.inbound.spi)
                )
            )
        entry.timers.append(
            self.clock.call_later(
                done.lifetime_seconds,
                lambda: self._remove_quick_mode(
                    done.inbound.spi, "quick mode lifetime expired", notify_peer=True
                ),
            )
        )

    def _replace_older(self, done: QuickModeDone) -> None:
        """The quick modes this one replaces (our rekey, the peer's, or an acquire after the driver stopped
        using an SA at its hard byte limit) need no rekey of their own when their soft lifetime is reported
        later: without this, a soft limit seen after the replacement is in place negotiates a third pair."""
        for older in self.quick_modes.values():
            if older.replaced_by is None and older.same_traffic(done):
                older.rekeyed, older.replaced_by = True, done.inbound.spi
                self.note(f"quick mode SA {older.sa.inbound.spi:#010x} rekeyed as {done.inbound.spi:#010x}")

    def _informational(self, mm: MainModeEntry, msg: Message, addr: tuple[str, int]) -> None:
        pending = [ex for ex in self.pending_quick.values() if ex.machine.sa is mm.sa and _refusable(ex)]
        try:
            payloads = informational.open_informational(mm.sa, msg)
        except NegotiationError as exc:
            self.counters["Malformed Packets"] += 1
            self.note(f"dropped an informational from {addr[0]}: {exc.reason}")
            return
        for p in payloads:
            if isinstance(p, isakmp.Delete):
                self._peer_delete(mm, p)
            elif isinstance(p, isakmp.Notify):
                self._peer_notify(mm, p, pending)
        others = [p for p in payloads if not isinstance(p, isakmp.Delete | isakmp.Notify)]
        if others or not payloads:
            self.note(f"informational from {addr[0]} with {isakmp.payload_names(others) or 'no payloads'} "
                      "besides notifications and deletes: those ignored")

    def _peer_delete(self, mm: MainModeEntry, delete: isakmp.Delete) -> None:
        """A DELETE acts on the sender's own SAs only: an SPI or cookie pair of another peer's SA is refused,
        counted and said; one of no SA (gone already: a late or replayed DELETE) is said."""
        sender = mm.sa.remote[0]
        reason = f"peer {sender} deleted it"
        for spi in delete.spis:
            if delete.protocol == ProtocolID.ISAKMP:
                target = self.main_modes.get(spi)
                owners = [target.sa] if target else []
                if target and same_peer(target.sa, mm.sa):
                    self._remove_main_mode(spi, reason, notify_peer=False)
            else:
                value = int.from_bytes(spi, "big")
                named = {inbound: entry.sa.isakmp_sa for inbound, entry in self.quick_modes.items()
                         if value in (c.spi for c in entry.sa.outbound.chain())}
                owners = list(named.values())
                for inbound, owner in named.items():
                    if same_peer(owner, mm.sa):
                        self._remove_quick_mode(inbound, reason, notify_peer=False)
            others = [sa for sa in owners if not same_peer(sa, mm.sa)]
            if others:
                self.counters["Dropped: delete of another peer's SA"] += 1
                self.note(f"refused a delete from peer {sender} of {spi.hex()}: an SA of peer "
                          f"{others[0].remote[0]} ({others[0].peer_identity}), not of the sender")
            elif not owners:
                self.note(f"peer {sender} deleted {spi.hex()}, which is none of its SAs here")

    def _initial_contact(self, sa: IsakmpSA, since: float) -> None:
        """The peer (re)started before `since` (when the main mode that told us began): the SAs we had with
        it from before then are stale, whatever main mode they were under. Those set up since are the
        restarted peer's own (two main modes crossing after a restart): they stay, on both sides."""
        reason = f"peer {sa.remote[0]} sent INITIAL-CONTACT"
        self.note(reason)
        for spi, qm in list(self.quick_modes.items()):
            if qm.installed < since and same_peer(qm.sa.isakmp_sa, sa):
                self._remove_quick_mode(spi, reason, notify_peer=False)
        for cookies, old in list(self.main_modes.items()):
            if old.established < since and old.sa is not sa and same_peer(old.sa, sa):
                self._remove_main_mode(cookies, reason, notify_peer=False)

    def _peer_notify(self, mm: MainModeEntry, notify: isakmp.Notify, pending: list[Exchange]) -> None:
        if notify.notify_type == NotifyType.INVALID_SPI:
            spi = int.from_bytes(notify.spi, "big") if len(notify.spi) == 4 else None
            for inbound, entry in list(self.quick_modes.items()):
                outbound = [child.spi for child in entry.sa.outbound.chain()]
                if spi in outbound and entry.sa.isakmp_sa.remote[0] == mm.sa.remote[0]:
                    self._remove_quick_mode(
                        inbound, f"peer {mm.sa.remote[0]} does not know SPI {spi:#010x}", notify_peer=False
                    )
            return
        if notify.notify_type == NotifyType.INITIAL_CONTACT:
            self._initial_contact(mm.sa, mm.established)
            return
        if notify.notify_type >= 8192:
            self.note(f"peer {mm.sa.remote[0]} sent status {notify.name}")
            return
        for ex in pending:
            if notify.spi in _quick_mode_spis(ex) or len(pending) == 1:
                ex.machine.fail(
                    f"peer {mm.sa.remote[0]} refused quick mode: {notify.name}",
                    events.REFUSAL_COUNTERS.get(notify.notify_type, "negotiation failed"),
                    point="peer",
                )
                self._cancel(ex)
                self._quick_mode_progress(ex, (mm.sa.cookies, ex.machine.message_id))
                self.pending_quick.pop((mm.sa.cookies, ex.machine.message_id), None)
                return
        self.note(f"peer {mm.sa.remote[0]} sent {notify.name}")

    # -- starting exchanges --------------------------------------------------------------------------

    def _main_mode_with(self, peer: str) -> MainModeEntry | None:
        """The newest main mode SA with `peer` (an older one may be near its end, or gone at the peer)."""
        return next((e for e in reversed(self.main_modes.values()) if e.sa.remote[0] == peer), None)

    def _renegotiate_main_mode(self, cookies: bytes) -> None:
        """Near the end of a main mode SA's lifetime: a new one with the same peer if quick mode SAs with it
        are in use (idle ones are deleted after 5 minutes) and none is newer or under way."""
        entry = self.main_modes.get(cookies)
        if entry is None:
            return
        peer = entry.sa.remote[0]
        newer = self._main_mode_with(peer) is not entry
        if newer or any(ex.peer[0] == peer for ex in self.pending_main.values()):
            return
        if not any(qm.sa.isakmp_sa.remote[0] == peer for qm in self.quick_modes.values()):
            return
        self.note(f"main mode SA {cookies[:8].hex()}:{cookies[8:].hex()} with {peer} near the end of its "
                  "lifetime, quick mode SAs in use: renegotiating")
        self._start_main_mode(entry.rule, peer)

    def _start_main_mode(self, rule: IKERule, peer: str) -> None:
        initial_contact = not any(e.sa.remote[0] == peer for e in self.main_modes.values())
        machine = main_mode.MainModeInitiator(
            rule.policy, (self.local_address, self.port), (peer, self.port), initial_contact=initial_contact
        )
        first = machine.start()
        ex = Exchange(machine, (peer, self.port), self.port, rule, started=self.clock.time())
        self.pending_main[machine.icookie] = ex
        self.note(f"rule {rule.name}: starting main mode with {peer}")
        self._transmit(ex, [first], expect_reply=True)

    def _start_quick_mode(self, mm: MainModeEntry, rule: IKERule, local: Selector, remote: Selector) -> None:
        machine = quick_mode.QuickModeInitiator(mm.sa, rule.policy, local, remote, self.allocate_spi)
        first = machine.start()
        ex = Exchange(machine, mm.sa.remote, mm.sa.local[1], rule, acquire=(local, remote))
        self.pending_quick[(mm.sa.cookies, machine.message_id)] = ex
        self._transmit(ex, [first], expect_reply=True)

    # -- sending and retransmitting --------------------------------------------------------------------

    def _transmit(self, ex: Exchange, datagrams: list[bytes], expect_reply: bool) -> None:
        ex.last_sent, ex.attempts = datagrams, 0
        for wire in datagrams:
            self.sender(wire, ex.peer, ex.local_port)
        if expect_reply:
            ex.timer = self.clock.call_later(self.retransmit[0], lambda: self._retransmit(ex))

    def _retransmit(self, ex: Exchange) -> None:
        ex.timer = None
        if ex.machine.done:
            return
        if ex.attempts >= len(self.retransmit):  # 7 sends, then one more interval of silence
            kind = "main mode" if isinstance(ex.machine, main_mode.MainMode) else "quick mode"
            hint = ""
            if ex.peer[0] in self.send_errors:
                hint = f" (our sends failed: {self.send_errors.pop(ex.peer[0])})"
            elif ex.machine.state in ("MM5 sent",):
                hint = " (the peer may have rejected our authentication: check the pre-shared key)"
            elif ex.machine.state == "MM1 sent":
                hint = " (is UDP 500 blocked or the peer down?)"
            ex.machine.fail(
                f"no answer from {ex.peer[0]} to {kind} after {ex.attempts} retransmissions, "
                f"state {ex.machine.state}{hint}",
                "no response",
            )
            if isinstance(ex.machine, main_mode.MainMode):
                self._main_mode_progress(ex, ex.machine.icookie)
            else:
                key = (ex.machine.sa.cookies, ex.machine.message_id)
                self._quick_mode_progress(ex, key)
                self.pending_quick.pop(key, None)
            return
        ex.attempts += 1
        self.counters["Retransmissions"] += 1
        for wire in ex.last_sent:
            self.sender(wire, ex.peer, ex.local_port)
        wait = self.retransmit[min(ex.attempts, len(self.retransmit) - 1)]
        ex.timer = self.clock.call_later(wait, lambda: self._retransmit(ex))

    def _cancel(self, ex: Exchange) -> None:
        if ex.timer:
            ex.timer.cancel()
            ex.timer = None

    def _failed(self, kind: str, event: Failure, ex: Exchange) -> None:
        self._cancel(ex)
        self.counters["Negotiation Failures"] += 1
        self.counters[f"Negotiation Failures: {event.counter}"] += 1
        if event.counter == "authentication failed":
            self.counters["Authentication Failures"] += 1
            if event.cause:  # Kerberos hook (issue 13): the failure counted once more, under its reason
                self.counters[f"Authentication Failures: {event.cause}"] += 1
        mode = events.MAIN_MODE if kind == "main mode" else events.QUICK_MODE
        self.note(f"{kind} with {ex.peer[0]} failed: "
                  + event.describe(mode, self._filter_text(ex), _peer_identity(ex)))

    def _filter_text(self, ex: Exchange) -> str:
        """The filter of a failed exchange, as Event 547 names it: main mode's two addresses, quick mode's
        selectors (addresses, protocol, ports), with the rule they come from."""
        rule = f" (rule {ex.rule.name})" if ex.rule else ""
        if isinstance(ex.machine, main_mode.MainMode):
            return f"{self.local_address} <-> {ex.peer[0]}{rule}"
        selectors = ex.acquire or getattr(ex.machine, "proposed", None)
        if selectors is None:
            return f"not yet known{rule}"
        return f"{selectors[0]} <-> {selectors[1]}{rule}"

    # -- lifetimes and deletion ---------------------------------------------------------------------

    def _rekey(self, inbound_spi: int) -> None:
        entry = self.quick_modes.get(inbound_spi)
        if entry is None or entry.rekeyed or entry.rule is None:
            return
        entry.rekeyed = True
        sa = entry.sa
        self.note(f"quick mode SA {inbound_spi:#010x} near the end of its lifetime: rekeying")
        self._acquire(entry.rule, sa.local_selector, sa.remote_selector, sa.isakmp_sa.remote[0])

    def idle(self, inbound_spi: int) -> None:
        """The driver saw no traffic on this SA for QUICK_MODE_IDLE_SECONDS: delete it (Windows: 5 min)."""
        self.expire(inbound_spi, hard=True, reason=f"idle for {QUICK_MODE_IDLE_SECONDS} s")

    def _remove_quick_mode(self, inbound_spi: int, reason: str, notify_peer: bool) -> None:
        entry = self.quick_modes.pop(inbound_spi, None)
        if entry is None:
            return
        for timer in entry.timers:
            timer.cancel()
        sa = entry.sa
        for child in [*sa.inbound.chain(), *sa.outbound.chain()]:
            self.driver.delete_sa(child.spi, child.dst, child.protocol)
            self.counters["Key Deletions"] += 1
        mm = self._main_mode_with(sa.isakmp_sa.remote[0])  # the newest: the peer may have dropped older ones
        if notify_peer and mm:
            self.sender(
                informational.delete_children(mm.sa, sa.inbound.chain()),
                mm.sa.remote,
                mm.sa.local[1],
            )
        self.note(f"quick mode SAs {sa.inbound.spi:#010x}/{sa.outbound.spi:#010x} deleted: {reason}")

    def _remove_main_mode(self, cookies: bytes, reason: str, notify_peer: bool) -> None:
        entry = self.main_modes.pop(cookies, None)
        if entry is None:
            return
        for timer in entry.timers:
            timer.cancel()
        if cookies in self.keepalive_timers:
            self.keepalive_timers.pop(cookies).cancel()
        if notify_peer:
            self.sender(informational.delete_isakmp(entry.sa), entry.sa.remote, entry.sa.local[1])
        self.note(
            f"main mode SA {cookies[:8].hex()}:{cookies[8:].hex()} with {entry.sa.remote[0]} "
            f"deleted: {reason}"
        )

    # -- monitoring ----------------------------------------------------------------------------------

    def status(self, events: int = 50) -> dict:
        """What ipsecctl shows: the ipsecmon counters, both SA tables and the latest events (JSON-ready)."""
        return {
            "counters": dict(self.counters),
            "main mode SAs": self.main_mode_sas(),
            "quick mode SAs": self.quick_mode_sas(),
            "events": [{"time": round(t, 3), "text": text} for t, text in list(self.events)[-events:]],
        }

    def ikev1_decryption_table(self) -> list[str]:
        """Rows for Wireshark's ikev1_decryption_table: every main mode SA we hold."""
        return keylog.ikev1_decryption_table(e.sa for e in self.main_modes.values())

    def main_mode_sas(self) -> list[dict]:
        now = self.clock.time()
        return [
            {
                "cookies": f"{e.sa.icookie.hex()}:{e.sa.rcookie.hex()}",
                "local": e.sa.local[0],
                "remote": f"{e.sa.remote[0]}:{e.sa.remote[1]}",
                "role": "initiator" if e.sa.initiator else "responder",
                "algorithms": e.sa.suite.describe(),
                "authentication": e.sa.auth_method,
                "peer identity": e.sa.peer_identity,
                "nat": e.sa.nat.describe() if e.sa.nat else "no NAT-T",
                "expires in": int(e.sa.lifetime - (now - e.established)),
            }
            for e in self.main_modes.values()
        ]

    def quick_mode_sas(self) -> list[dict]:
        now = self.clock.time()
        return [
            {
                "inbound spi": f"{e.sa.inbound.spi:#010x}",
                "outbound spi": f"{e.sa.outbound.spi:#010x}",
                "peer": e.sa.isakmp_sa.remote[0],
                "security method": e.sa.offer.describe(),
                "mode": e.sa.mode,
                "local": str(e.sa.local_selector),
                "remote": str(e.sa.remote_selector),
                "udp encapsulation": e.sa.udp_encapsulation,
                "expires in": int(e.sa.lifetime_seconds - (now - e.installed)),
            }
            for e in self.quick_modes.values()
        ]
