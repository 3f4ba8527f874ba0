"""Fuzz target `ike`: the IKE component's state machine, not only its decoder.

Each episode is a real negotiation between two IKE components over the in-memory network and manual clock
of tests/unit/test_ike_component.py (main mode, quick mode, a second quick mode, a DELETE, then the
retransmission timers run out): PSK or certificates, with or without a NAT that rewrites ports (NAT-T,
port 4500), with and without PFS and AH bundles. Before each real datagram is delivered, mutants are fed
to the node about to receive it (or to its peer, at the state it is in): mutations of that datagram, of
others of the episode (replays out of place), and of datagrams of earlier episodes given the live cookies
and message ID, so that mutated input reaches the encrypted states. The real datagram then goes on. Each
episode attacks one stage (a mutant may fail the exchange, as an attacker who sees the cookies can in
IKEv1), and ends with mutants against the established SAs, so the episodes together reach every state.
Every datagram that reaches IKE, mutant or real, is checked:

- no exception escapes, and "Dropped: internal error" (the receive path's catch-all) stays 0;
- it moved a counter, or changed the exchanges or SA tables, or was said in the event log (an
  authenticated informational that acts on nothing): a datagram that does none of these was dropped
  silently.
"""

from __future__ import annotations

import collections
import random
import traceback
from collections.abc import Callable

from fuzz.engine import Defect, Mutator, Target
from fuzz.pki import seeded_credentials
from ipsecd.ike import natt
from ipsecd.ike.component import IKE
from ipsecd.ike.settings import MainModeOffer, PeerPolicy, PreSharedKey, QuickModeOffer, Selector
from tests.unit.test_ike_component import B, host, pair

PSK = PreSharedKey(b"fuzz")
NAT = ("192.168.1.10", "203.0.113.5")  # A's private address, the NAT's public one
REAL_DATAGRAMS = 13  # of an episode: main mode 6, two quick modes 3 each, a DELETE
MUTANTS_AT_STAGE = 60  # on average, before the real datagram chosen for the episode
MUTANTS_AFTER = 60  # at the end of an episode, against the established SAs


def isakmp_fields(data: bytes) -> list[tuple[int, int]]:
    """(offset, size) of the ISAKMP header's fields and of each payload's next-payload and length (and
    an SA payload's proposal count fields), for the mutator's edge values."""
    fields = [(16, 1), (17, 1), (18, 1), (19, 1), (20, 4), (24, 4)]
    if len(data) < 28 or data[19] & 1:  # encrypted: the payloads are out of reach
        return fields
    kind, offset = data[16], 28
    while kind and offset + 4 <= len(data):
        fields += [(offset, 1), (offset + 2, 2)]
        if kind == 1 and offset + 20 <= len(data):  # SA: DOI, situation, then a proposal's header
            proposal = offset + 12
            fields += [(proposal + 2, 2), (proposal + 6, 1), (proposal + 7, 1)]
        kind, length = data[offset], int.from_bytes(data[offset + 2:offset + 4], "big")
        if length < 4:
            break
        offset += length
    return fields


def _scenarios(rng: random.Random) -> list[tuple[str, Callable[[], tuple]]]:
    """(name, build) of each kind of negotiation; build gives test_ike_component.pair's lab."""
    cert_a, cert_b = seeded_credentials(rng, ("node-a", "node-b"))
    aes_pfs = PeerPolicy(auth=[PSK], main_mode=[MainModeOffer("aes-cbc-128", "sha256", 2)],
                         quick_mode=[QuickModeOffer("esp", "aes-cbc-128", "hmac-sha1-96", pfs_group=2)])
    ah_bundle = PeerPolicy(auth=[PSK], quick_mode=[QuickModeOffer("esp", "3des-cbc", None, ah="hmac-md5-96")])
    return [
        ("psk", lambda: pair(PeerPolicy(auth=[PSK]))),
        ("psk aes pfs", lambda: pair(aes_pfs)),
        ("psk ah+esp tunnel", lambda: pair(PeerPolicy(auth=[PSK], quick_mode=ah_bundle.quick_mode,
                                                      tunnel=True))),
        ("certificates", lambda: pair(PeerPolicy(auth=[cert_a]), PeerPolicy(auth=[cert_b]))),
        ("psk nat-t", lambda: _behind_nat(PeerPolicy(auth=[PSK]))),
    ]


def _behind_nat(policy: PeerPolicy) -> tuple:
    """test_ike_component.pair with A behind a NAT that rewrites its address and source ports."""
    lab = pair(policy, address_a=NAT[0])
    lab[1].nat = NAT
    return lab


def _state(ike: IKE) -> tuple:
    """What processing a datagram may change: the exchanges in flight with their states, the SAs."""
    return (
        tuple((k, ex.machine.state, len(ex.machine.dropped)) for k, ex in ike.pending_main.items()),
        tuple((k, ex.machine.state, len(ex.machine.dropped)) for k, ex in ike.pending_quick.items()),
        tuple(ike.main_modes),
        tuple(ike.quick_modes),
    )


class IKETarget(Target):
    name = "ike"

    def __init__(self, rng: random.Random) -> None:
        super().__init__(rng)
        self.mutator = Mutator(rng)
        self.scenarios = _scenarios(rng)
        self.corpus: collections.deque[bytes] = collections.deque(maxlen=2000)  # ISAKMP messages
        self.episode = 0
        self.nodes: dict[str, IKE] = {}  # of the current episode, by address
        self.net, self.deliveries, self.stage = None, 0, 0  # its network, datagrams so far, the one attacked
        self.outcome = ""
        self.error = ""
        self.notes = 0

    # -- watching each node ------------------------------------------------------------------------

    def _watch(self, ike: IKE) -> None:
        """Wrap this node's receive path with the checks, its dispatch to keep a traceback, its note to
        see what it said."""
        receive, dispatch, note = ike.datagram_received, ike._dispatch, ike.note

        def traced_dispatch(data: bytes, addr: tuple[str, int], port: int) -> None:
            try:
                dispatch(data, addr, port)
            except Exception:
                self.error = traceback.format_exc()
                raise

        def counted_note(text: str) -> None:
            self.notes += 1
            note(text)

        def checked_receive(data: bytes, addr: tuple[str, int], port: int) -> None:
            counters, state, notes = dict(ike.counters), _state(ike), self.notes
            receive(data, addr, port)
            if ike.counters["Dropped: internal error"]:
                raise Defect(f"'Dropped: internal error' moved at {ike.local_address}", self.error)
            moved = [k for k, v in ike.counters.items() if v != counters.get(k, 0)]
            if moved:
                self.outcome = min(moved, key=len)  # the most general name ("Negotiation Failures")
            elif _state(ike) != state:
                self.outcome = "processed"
            elif self.notes != notes:
                self.outcome = "processed (said only)"
            else:
                raise Defect(f"datagram to {ike.local_address}:{port} from {addr[0]}:{addr[1]} moved no "
                             "counter, changed no state and was not said: a silent drop")

        ike.datagram_received, ike._dispatch, ike.note = checked_receive, traced_dispatch, counted_note

    # -- one episode -------------------------------------------------------------------------------

    def step(self) -> None:
        _, build = self.scenarios[self.episode % len(self.scenarios)]
        self.episode += 1
        clock, net, (ike_a, _), (ike_b, _), rule = build()
        self.nodes = {ike_a.local_address: ike_a, ike_b.local_address: ike_b}
        for ike in self.nodes.values():
            self._watch(ike)
        self.net, self.deliveries, self.stage = net, 0, self.rng.randrange(REAL_DATAGRAMS + 1)
        net.drop = self._before_delivery
        local = host(ike_a.local_address)
        ike_a.acquire(rule, local, host(B), B)
        net.run()
        ike_a.acquire(rule, Selector(local.network, 6), Selector(host(B).network, 6, 80), B)  # 2nd QM
        net.run()
        if ike_a.quick_modes:
            ike_a.expire(next(iter(ike_a.quick_modes)), hard=True)  # a DELETE informational
            net.run()
        for _ in range(self.rng.randrange(2 * MUTANTS_AFTER)):
            self._inject_from_log()
        net.run()
        clock.advance(200, net)  # retransmissions of what mutants opened, then their timeouts
        for _, _, dst, data in net.log:
            self.corpus.append(data[4:] if dst[1] == natt.NATT_PORT else data)

    def _before_delivery(self, src: tuple[str, int], dst: tuple[str, int], data: bytes) -> bool:
        """The in-memory network's hook before each real datagram: mutants first, then let it through."""
        self.deliveries += 1
        if dst[0] in self.nodes and self.deliveries == self.stage:
            for _ in range(self.rng.randrange(2 * MUTANTS_AT_STAGE)):
                choice = self.rng.random()
                if choice < 0.65:
                    self._inject(self._unframe(data, dst), src, dst)
                elif choice < 0.85:
                    self._inject_from_log()
                elif self.corpus:
                    self._inject(self._transplant(self.rng.choice(self.corpus), self._unframe(data, dst)),
                                 src, dst)
        return False

    def _inject_from_log(self) -> None:
        """A datagram of this episode mutated and sent again where it went: a node at a later state."""
        _, src, dst, data = self.rng.choice(self.net.log)
        if dst[0] in self.nodes:  # not a reply to a stranger's mutant
            self._inject(self._unframe(data, dst), src, dst)

    @staticmethod
    def _unframe(data: bytes, dst: tuple[str, int]) -> bytes:
        return data[4:] if dst[1] == natt.NATT_PORT else data

    def _transplant(self, other: bytes, live: bytes) -> bytes:
        """Another episode's message given the live exchange's cookies (and often its message ID)."""
        out = bytearray(other)
        out[:16] = live[:16]
        if self.rng.random() < 0.5:
            out[20:24] = live[20:24]
        return bytes(out)

    def _inject(self, message: bytes, src: tuple[str, int], dst: tuple[str, int]) -> None:
        mutant = bytearray(self.mutator.mutate(message, list(self.corpus)[-50:], isakmp_fields(message)))
        if len(mutant) >= 28 and self.rng.random() < 0.5:
            mutant[24:28] = len(mutant).to_bytes(4, "big")  # a consistent length reaches the payloads
        if self.rng.random() < 0.1:  # now and then from a stranger, or to the other port
            src = (f"10.{self.rng.randrange(256)}.0.{self.rng.randrange(1, 255)}", src[1])
        if self.rng.random() < 0.05:
            dst = (dst[0], natt.NATT_PORT if dst[1] != natt.NATT_PORT else natt.IKE_PORT)
        ike = self.nodes[dst[0]]

        def deliver(data: bytes) -> str:
            self.outcome = "not IKE (port 4500: counted by the driver)"
            if dst[1] == natt.NATT_PORT:
                ike.datagram_4500(natt.frame(data, natt.NATT_PORT), src)
            else:
                ike.datagram_received(data, src, dst[1])
            return self.outcome

        self.check(bytes(mutant), f"{dst[0]}:{dst[1]} from {src[0]}:{src[1]}", deliver)
