"""Quick mode (RFC 2409 §5.5): three messages under a main mode SA, optional PFS, KEYMAT.

Like main mode, a sans-I/O state machine: fed decoded messages, returns datagrams, appends
:class:`~ipsecd.ike.sa.QuickModeDone` or :class:`~ipsecd.ike.events.Failure` to ``events``. The result carries
everything the driver needs to install the inbound and the outbound SA.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import secrets
from collections.abc import Callable

from ipsecd import algorithms
from ipsecd.ike import informational, isakmp, natt, oakley
from ipsecd.ike.events import Failure, InboundReady, NegotiationError, refusal
from ipsecd.ike.isakmp import (
    ID,
    KE,
    SA,
    Attribute,
    ExchangeType,
    Hash,
    Nonce,
    NotifyType,
    Proposal,
    Transform,
)
from ipsecd.ike.sa import ChildSA, IsakmpSA, QuickModeDone
from ipsecd.ike.settings import PeerPolicy, QuickModeOffer, Selector

# IPsec DOI (RFC 2407 §4.5) attribute classes and values; transform ids and algorithm values are the
# algorithm table's (ipsecd.algorithms), so quick mode offers and accepts whatever the driver implements.
LIFE_TYPE, LIFE_DURATION, GROUP, ENCAPSULATION, AUTH_ALGORITHM, KEY_LENGTH = 1, 2, 3, 4, 5, 6
LIFE_SECONDS, LIFE_KILOBYTES = 1, 2
TUNNEL, TRANSPORT = 1, 2
PROTOCOLS = {"esp": isakmp.ProtocolID.ESP, "ah": isakmp.ProtocolID.AH}


def _encapsulation(isakmp_sa: IsakmpSA, tunnel: bool) -> int:
    if isakmp_sa.nat and isakmp_sa.nat.detected and isakmp_sa.natt_variant:
        v = isakmp_sa.natt_variant
        return v.udp_tunnel if tunnel else v.udp_transport
    return TUNNEL if tunnel else TRANSPORT


def legs(offer: QuickModeOffer) -> list[tuple[str, str | None, str | None]]:
    """(protocol, encryption, integrity) of each SA an offer makes: AH first for an AH+ESP bundle."""
    if offer.protocol == "ah":
        return [("ah", None, offer.integrity)]
    esp = ("esp", offer.encryption, offer.integrity)
    return [("ah", None, offer.ah), esp] if offer.ah else [esp]


def leg_transform(
    leg: tuple[str, str | None, str | None], offer: QuickModeOffer, encapsulation: int
) -> Transform:
    protocol, encryption, integrity = leg
    attrs = [
        Attribute(LIFE_TYPE, LIFE_SECONDS),
        Attribute(LIFE_DURATION, offer.lifetime_seconds),
        Attribute(LIFE_TYPE, LIFE_KILOBYTES),
        Attribute(LIFE_DURATION, offer.lifetime_kb),
        Attribute(ENCAPSULATION, encapsulation),
    ]
    if offer.pfs_group:
        attrs.append(Attribute(GROUP, offer.pfs_group))
    integ = algorithms.integrity(integrity) if integrity else None
    if integ:
        attrs.append(Attribute(AUTH_ALGORITHM, integ.ikev1_auth))
    if protocol == "ah":
        if integ is None:
            raise ValueError(f"{offer.describe()}: AH needs an integrity algorithm")
        return Transform(1, integ.ikev1_ah_transform, attrs)
    enc = algorithms.encryption(encryption or "null")
    if enc.ikev1_key_length:  # AES: Key Length attribute (RFC 2407 §4.5; RFC 4106 §8.1 for GCM)
        attrs.append(Attribute(KEY_LENGTH, enc.ikev1_key_length))
    return Transform(1, enc.ikev1_transform, attrs)


def offer_proposals(
    number: int, offer: QuickModeOffer, encapsulation: int, spis: dict[str, bytes]
) -> list[Proposal]:
    """The proposal payloads of one offer: one per protocol, all with the same number (RFC 2408 §4.2)."""
    return [
        Proposal(number, PROTOCOLS[leg[0]], spis[leg[0]], [leg_transform(leg, offer, encapsulation)])
        for leg in legs(offer)
    ]


def _lifetimes(t: Transform) -> tuple[int | None, int | None]:
    seconds = kb = None
    kind = None
    for a in t.attributes:
        if a.type == LIFE_TYPE:
            kind = a.as_int()
        elif a.type == LIFE_DURATION:
            if kind == LIFE_SECONDS:
                seconds = a.as_int()
            elif kind == LIFE_KILOBYTES:
                kb = a.as_int()
    return seconds, kb


def describe_proposal(p: Proposal) -> str:
    out = []
    for t in p.transforms:
        if p.protocol == isakmp.ProtocolID.AH:
            integrities = algorithms.INTEGRITIES.values()
            name = next((i.windows for i in integrities if i.ikev1_ah_transform == t.transform_id),
                        str(t.transform_id))
            out.append(f"AH[{name}]")
            continue
        try:
            enc = algorithms.encryption_by_ikev1(t.transform_id, t.attr(KEY_LENGTH)).windows
        except ValueError:
            enc = f"#{t.transform_id}"
        auth = t.attr(AUTH_ALGORITHM)
        integ = next((i.windows for i in algorithms.INTEGRITIES.values() if i.ikev1_auth == auth), "NONE")
        pfs = f" PFS group {t.attr(GROUP)}" if t.attr(GROUP) else ""
        out.append(f"ESP[{enc},{integ}]{pfs}")
    return " ".join(out) or f"protocol {p.protocol} without transforms"


def proposal_groups(sa: SA) -> list[list[Proposal]]:
    """Proposals with the same number form one choice (e.g. AH and ESP together), in the peer's order."""
    groups: dict[int, list[Proposal]] = {}
    for p in sa.proposals:
        groups.setdefault(p.number, []).append(p)
    return list(groups.values())


def _transform_matches(t: Transform, expected: Transform, encapsulation: int) -> bool:
    return (
        t.transform_id == expected.transform_id
        and t.attr(KEY_LENGTH) == expected.attr(KEY_LENGTH)
        and t.attr(AUTH_ALGORITHM) == expected.attr(AUTH_ALGORITHM)
        and t.attr(GROUP) == expected.attr(GROUP)
        and t.attr(ENCAPSULATION, TRANSPORT) == encapsulation
    )


def match_group(group: list[Proposal], offer: QuickModeOffer, encapsulation: int) -> list[Transform] | None:
    """The transform chosen in each proposal of the group if the group is this offer, else None."""
    wanted = legs(offer)
    if len(group) != len(wanted):
        return None
    chosen = []
    for proposal, leg in zip(group, wanted, strict=True):
        expected = leg_transform(leg, offer, encapsulation)
        if proposal.protocol != PROTOCOLS[leg[0]] or len(proposal.spi) != 4:
            return None
        t = next((t for t in proposal.transforms if _transform_matches(t, expected, encapsulation)), None)
        if t is None:
            return None
        chosen.append(t)
    return chosen


def _responder_lifetime(chosen: Transform, offer: QuickModeOffer, protocol: int, spi: bytes
                        ) -> list[isakmp.Payload]:
    """RESPONDER-LIFETIME in quick mode 2 (RFC 2407 §4.6.3.1) when our lifetime in seconds or kilobytes is
    shorter than the one proposed (the chosen transform goes back unchanged): named by our inbound SPI of
    the first protocol of the bundle, as the SA payload of quick mode 2 names it."""
    seconds, kilobytes = _lifetimes(chosen)
    shorter_seconds = offer.lifetime_seconds if offer.lifetime_seconds < (seconds or 28800) else None
    shorter_kb = offer.lifetime_kb if kilobytes is None or offer.lifetime_kb < kilobytes else None
    if shorter_seconds is None and shorter_kb is None:
        return []
    return [isakmp.Notify.responder_lifetime(protocol, spi, shorter_seconds, shorter_kb)]


def _initiators_first(group: list[Proposal], offers: list[QuickModeOffer], encapsulation: int
                      ) -> tuple[QuickModeOffer, list[Transform]] | None:
    """Of our offers that a proposal group matches, the one whose transforms come first in the initiator's
    order (a proposal may carry several transforms): the initiator's preference decides, ours only says
    what we accept."""
    matches = [(offer, chosen) for offer in offers if (chosen := match_group(group, offer, encapsulation))]
    if not matches:
        return None

    def rank(match: tuple[QuickModeOffer, list[Transform]]) -> list[int]:
        return [proposal.transforms.index(t) for proposal, t in zip(group, match[1], strict=True)]

    return min(matches, key=rank)


def selector_id(sel: Selector) -> ID:
    return ID.for_network(sel.network, sel.protocol, sel.port)


def id_selector(ident: ID) -> Selector:
    try:
        return Selector(ident.network(), ident.protocol, ident.port)
    except ValueError as exc:
        raise NegotiationError(
            f"unsupported quick mode ID: {exc}", NotifyType.INVALID_ID_INFORMATION, "invalid selectors"
        ) from None


class QuickMode:
    """State both sides share: the main mode SA, message ID, nonces, PFS key."""

    def __init__(self, isakmp_sa: IsakmpSA, message_id: int):
        self.sa, self.message_id = isakmp_sa, message_id
        self.events: list[QuickModeDone | InboundReady | Failure] = []
        self.state = "new"
        self.ni = self.nr = b""
        self.private = 0
        self.pfs_gxy = b""
        self.own_ke = b""
        self.dropped: list[str] = []
        self.notify_ref: tuple[int, bytes] = (isakmp.ProtocolID.ISAKMP, isakmp_sa.cookies)  # what errors name

    @property
    def suite(self) -> oakley.Phase1Suite:
        return self.sa.suite

    @property
    def done(self) -> bool:
        return self.state in ("done", "failed")

    def receive(self, msg: isakmp.Message) -> list[bytes]:
        if self.done:
            return []
        saved_iv = self.sa.ivs.get(self.message_id)
        try:
            if msg.exchange == ExchangeType.INFORMATIONAL:
                for p in informational.open_informational(self.sa, msg):
                    if isinstance(p, isakmp.Notify):
                        refusal(p, "quick mode", self.sa.remote[0])
                return []
            return self._step(self.sa.open(msg))
        except NegotiationError as exc:
            if exc.integrity:  # maybe a corrupted datagram: the retransmission decides
                self.dropped.append(exc.reason)
                self.sa.ivs.pop(self.message_id, None)
                if saved_iv is not None:
                    self.sa.ivs[self.message_id] = saved_iv
                return []
            self.state = "failed"
            self.events.append(Failure.of(exc))
            if not exc.notify:
                return []
            return [informational.notify(self.sa, exc.notify, *self.notify_ref)]

    def fail(self, reason: str, counter: str, point: str = "me") -> None:
        """Give up from outside: retransmissions exhausted, or the peer's error notify ("peer")."""
        if not self.done:
            self.state = "failed"
            self.events.append(Failure(reason, counter, point))

    def _step(self, payloads: list[isakmp.Payload]) -> list[bytes]:
        raise NotImplementedError

    def _seal(self, payloads: list[isakmp.Payload], hash_fn: Callable[[bytes], bytes]) -> bytes:
        """Prepend HASH(n) computed over the payloads that follow it, then encrypt."""
        rest = isakmp.build_payloads(payloads)[1]
        return self.sa.seal(ExchangeType.QUICK_MODE, self.message_id, [Hash(hash_fn(rest)), *payloads])

    def _check_hash(self, payloads: list[isakmp.Payload], expected_fn: Callable[[bytes], bytes], which: str):
        if not payloads or not isinstance(payloads[0], Hash):
            raise NegotiationError(
                f"quick mode message without {which} first",
                NotifyType.INVALID_HASH_INFORMATION,
                "malformed message",
                integrity=True,
            )
        rest = isakmp.build_payloads(payloads[1:])[1]
        if payloads[0].data != expected_fn(rest):
            raise NegotiationError(
                f"quick mode {which} does not verify",
                NotifyType.INVALID_HASH_INFORMATION,
                "authentication failed",
                integrity=True,
            )

    def _pfs(self, group_number: int | None, peer_ke: KE | None) -> None:
        if not group_number:
            return
        if peer_ke is None:
            raise NegotiationError(
                "PFS negotiated but no KE payload", NotifyType.PAYLOAD_MALFORMED, "malformed message"
            )
        try:
            self.pfs_gxy = oakley.GROUPS[group_number].shared_secret(self.private, peer_ke.data)
        except ValueError as exc:
            raise NegotiationError(
                f"PFS: {exc}", NotifyType.INVALID_KEY_INFORMATION, "malformed message"
            ) from None

    def _nat_oa(self, encap: int) -> list[isakmp.Payload]:
        """NAT-OAi and NAT-OAr in UDP-encapsulated transport mode (RFC 3947 §5.2): the initiator's and the
        responder's addresses as this side knows them."""
        variant = self.sa.natt_variant
        if variant is None or encap != variant.udp_transport:
            return []
        local, remote = (ipaddress.IPv4Address(a).packed for a in (self.sa.local[0], self.sa.remote[0]))
        initiator, responder = (local, remote) if isinstance(self, QuickModeInitiator) else (remote, local)
        return [variant.natoa(initiator), variant.natoa(responder)]

    def _peer_original_address(self, payloads: list[isakmp.Payload]) -> str | None:
        oas = [p for p in payloads if isinstance(p, isakmp.NatOA) and len(p.address) == 4]
        if len(oas) != 2:
            return None
        return str(ipaddress.IPv4Address(oas[1 if isinstance(self, QuickModeInitiator) else 0].address))

    def _result(
        self,
        offer: QuickModeOffer,
        transforms: list[Transform],
        spis_in: dict[str, bytes],
        spis_out: dict[str, bytes],
        local: Selector,
        remote: Selector,
        tunnel: bool,
        peer_payloads: list[isakmp.Payload],
    ) -> QuickModeDone:
        seconds, kb = _lifetimes(transforms[0])
        encap = transforms[0].attr(ENCAPSULATION, TRANSPORT)
        udp = (self.sa.local[1], self.sa.remote[1]) if encap not in (TUNNEL, TRANSPORT) else None
        local_ip, remote_ip = self.sa.local[0], self.sa.remote[0]
        mode = "tunnel" if tunnel else "transport"

        def chain(inbound: bool) -> ChildSA:
            """The SAs of one direction, innermost (ESP) first, each bundled under the next."""
            below: ChildSA | None = None
            for protocol, encryption, integrity in reversed(legs(offer)):
                spi = (spis_in if inbound else spis_out)[protocol]
                enc = algorithms.encryption(encryption or "null")
                integ = algorithms.integrity(integrity) if integrity else None
                km = oakley.keymat(
                    self.suite,
                    self.sa.keys.skeyid_d,
                    PROTOCOLS[protocol],
                    spi,
                    self.ni,
                    self.nr,
                    algorithms.keymat_length(enc, integ),  # AES-GCM: its 4-byte salt included (RFC 4106 §8.1)
                    self.pfs_gxy,
                )
                encryption_key, integrity_key = algorithms.split_keymat(enc, integ, km)
                src, dst = (remote_ip, local_ip) if inbound else (local_ip, remote_ip)
                ports = (udp[::-1] if inbound else udp) if udp and protocol == "esp" else None
                below = ChildSA(
                    int.from_bytes(spi, "big"),
                    protocol,
                    "inbound" if inbound else "outbound",
                    mode,
                    src,
                    dst,
                    enc.name,
                    encryption_key,
                    integrity,
                    integrity_key,
                    ports,
                    below,
                )
            if below is None:
                raise ValueError(f"{offer.describe()}: an offer without SAs")
            return below

        return QuickModeDone(
            chain(True),
            chain(False),
            mode,
            local,
            remote,
            offer,
            min(seconds or offer.lifetime_seconds, offer.lifetime_seconds),
            min(kb or offer.lifetime_kb, offer.lifetime_kb),
            udp,
            self.sa,
            self.message_id,
            self._peer_original_address(peer_payloads),
        )


class QuickModeInitiator(QuickMode):
    """Quick mode initiator for one acquire; ``spi_allocator`` gives our inbound SPIs."""

    def __init__(
        self,
        isakmp_sa: IsakmpSA,
        policy: PeerPolicy,
        local: Selector,
        remote: Selector,
        spi_allocator: Callable[[], int],
    ):
        super().__init__(isakmp_sa, secrets.randbits(32) or 1)
        self.policy, self.local_sel, self.remote_sel = policy, local, remote
        protocols = dict.fromkeys(leg[0] for offer in policy.quick_mode for leg in legs(offer))
        self.spis = {protocol: spi_allocator().to_bytes(4, "big") for protocol in protocols}
        first = legs(policy.quick_mode[0])[0][0]
        self.spi = self.spis[first]
        self.notify_ref = (PROTOCOLS[first], self.spi)

    def start(self) -> bytes:
        encap = _encapsulation(self.sa, self.policy.tunnel)
        self.proposals = [
            p
            for n, o in enumerate(self.policy.quick_mode, start=1)
            for p in offer_proposals(n, o, encap, self.spis)
        ]
        self.ni = secrets.token_bytes(32)
        payloads: list[isakmp.Payload] = [SA(self.proposals), Nonce(self.ni)]
        group = self.policy.quick_mode[0].pfs_group
        if group:
            self.private = oakley.GROUPS[group].private_key()
            payloads.append(KE(oakley.GROUPS[group].public_key(self.private)))
        payloads += [selector_id(self.local_sel), selector_id(self.remote_sel), *self._nat_oa(encap)]
        self.state = "QM1 sent"
        return self._seal(
            payloads, lambda rest: oakley.qm_hash1(self.suite, self.sa.keys.skeyid_a, self.message_id, rest)
        )

    def _step(self, payloads: list[isakmp.Payload]) -> list[bytes]:
        if self.state != "QM1 sent":
            return []
        self._check_hash(
            payloads,
            lambda rest: oakley.qm_hash2(self.suite, self.sa.keys.skeyid_a, self.message_id, self.ni, rest),
            "HASH(2)",
        )
        nonce = next((p for p in payloads if isinstance(p, Nonce)), None)
        if nonce is None:
            raise NegotiationError(
                "quick mode 2 without a nonce", NotifyType.PAYLOAD_MALFORMED, "malformed message"
            )
        self.nr = nonce.data
        sa = next((p for p in payloads if isinstance(p, SA)), None)
        groups = proposal_groups(sa) if sa else []
        if len(groups) != 1 or any(len(p.transforms) != 1 for p in groups[0]):
            raise NegotiationError(
                "quick mode 2 must carry one proposal (one per protocol) with one transform each",
                NotifyType.PAYLOAD_MALFORMED,
                "malformed message",
            )
        encap = _encapsulation(self.sa, self.policy.tunnel)
        choice = next(
            ((o, t) for o in self.policy.quick_mode if (t := match_group(groups[0], o, encap))), None
        )
        if choice is None:
            raise NegotiationError(
                f"peer chose {' + '.join(describe_proposal(p) for p in groups[0])}, which we did not offer",
                NotifyType.NO_PROPOSAL_CHOSEN,
                "no proposal chosen",
            )
        offer, transforms = choice
        self._pfs(offer.pfs_group, next((p for p in payloads if isinstance(p, KE)), None))
        theirs = {leg[0]: p.spi for leg, p in zip(legs(offer), groups[0], strict=True)}
        done = self._result(
            offer,
            transforms,
            self.spis,
            theirs,
            self.local_sel,
            self.remote_sel,
            self.policy.tunnel,
            payloads,
        )
        seconds, kilobytes = informational.responder_lifetime(payloads)
        done = dataclasses.replace(done, lifetime_seconds=min(done.lifetime_seconds, seconds or 1 << 32),
                                   lifetime_kb=min(done.lifetime_kb, kilobytes or 1 << 32))
        reply = self.sa.seal(
            ExchangeType.QUICK_MODE,
            self.message_id,
            [Hash(oakley.qm_hash3(self.suite, self.sa.keys.skeyid_a, self.message_id, self.ni, self.nr))],
        )
        self.state = "done"
        self.events.append(done)
        return [reply]


PolicyLookup = Callable[[IsakmpSA, Selector, Selector], "PeerPolicy | None"]


class QuickModeResponder(QuickMode):
    """Created for a quick mode 1; ``policy_for`` finds the rule that covers the proposed selectors."""

    def __init__(
        self, isakmp_sa: IsakmpSA, message_id: int, policy_for: PolicyLookup, spi_allocator: Callable[[], int]
    ):
        super().__init__(isakmp_sa, message_id)
        self.policy_for, self.allocate_spi = policy_for, spi_allocator
        self.proposed: tuple[Selector, Selector] | None = None  # (ours, the peer's) as quick mode 1 says

    def _step(self, payloads: list[isakmp.Payload]) -> list[bytes]:
        if self.state == "new":
            return self._first(payloads)
        if self.state == "QM2 sent":
            if (
                not payloads
                or not isinstance(payloads[0], Hash)
                or payloads[0].data
                != oakley.qm_hash3(self.suite, self.sa.keys.skeyid_a, self.message_id, self.ni, self.nr)
            ):
                raise NegotiationError(
                    "quick mode HASH(3) does not verify",
                    NotifyType.INVALID_HASH_INFORMATION,
                    "authentication failed",
                    integrity=True,
                )
            self.state = "done"
            self.events.append(self.pending)
        return []

    def _first(self, payloads: list[isakmp.Payload]) -> list[bytes]:
        self._check_hash(
            payloads,
            lambda rest: oakley.qm_hash1(self.suite, self.sa.keys.skeyid_a, self.message_id, rest),
            "HASH(1)",
        )
        sa = next((p for p in payloads if isinstance(p, SA)), None)
        nonce = next((p for p in payloads if isinstance(p, Nonce)), None)
        if sa is None or nonce is None:
            raise NegotiationError(
                "quick mode 1 without SA or nonce", NotifyType.PAYLOAD_MALFORMED, "malformed message"
            )
        self.ni = nonce.data
        self.notify_ref = (sa.proposals[0].protocol, sa.proposals[0].spi) if sa.proposals else self.notify_ref
        ids = [p for p in payloads if isinstance(p, ID)]
        if ids and len(ids) != 2:
            raise NegotiationError(
                "quick mode 1 must carry both IDci and IDcr",
                NotifyType.INVALID_ID_INFORMATION,
                "invalid selectors",
            )
        host = ipaddress.IPv4Network
        peer_sel = id_selector(ids[0]) if ids else Selector(host(self.sa.remote[0]))
        own_sel = id_selector(ids[1]) if ids else Selector(host(self.sa.local[0]))
        self.proposed = (own_sel, peer_sel)  # the filter a failure event names
        policy = self.policy_for(self.sa, own_sel, peer_sel)
        if policy is None:
            raise NegotiationError(
                f"no rule covers the proposed selectors {peer_sel} <-> {own_sel}",
                NotifyType.INVALID_ID_INFORMATION,
                "invalid selectors",
            )
        encap = _encapsulation(self.sa, policy.tunnel)
        for group in proposal_groups(sa):
            choice = _initiators_first(group, policy.quick_mode, encap)
            if choice:
                offer, transforms = choice
                return self._answer(payloads, ids, group, transforms, offer, policy, own_sel, peer_sel)
        ours = " ".join(
            o.describe() + (f" PFS group {o.pfs_group}" if o.pfs_group else "") for o in policy.quick_mode
        )
        offered = "; ".join(" + ".join(describe_proposal(p) for p in g) for g in proposal_groups(sa))
        mode = natt.ENCAPSULATION_MODES.get(encap, str(encap))
        raise NegotiationError(
            f"no proposal chosen: peer {self.sa.remote[0]} offered {offered}; we accept {ours} "
            f"in {mode} mode",
            NotifyType.NO_PROPOSAL_CHOSEN,
            "no proposal chosen",
        )

    def _answer(self, payloads, ids, group, transforms, offer, policy, own_sel, peer_sel) -> list[bytes]:
        self.nr = secrets.token_bytes(32)
        ours = {leg[0]: self.allocate_spi().to_bytes(4, "big") for leg in legs(offer)}
        theirs = {leg[0]: p.spi for leg, p in zip(legs(offer), group, strict=True)}
        chosen = [
            Proposal(p.number, p.protocol, ours[leg[0]], [t])
            for p, t, leg in zip(group, transforms, legs(offer), strict=True)
        ]
        reply: list[isakmp.Payload] = [SA(chosen), Nonce(self.nr)]
        if offer.pfs_group:
            self.private = oakley.GROUPS[offer.pfs_group].private_key()
            reply.append(KE(oakley.GROUPS[offer.pfs_group].public_key(self.private)))
            self._pfs(offer.pfs_group, next((p for p in payloads if isinstance(p, KE)), None))
        reply += [*ids, *self._nat_oa(transforms[0].attr(ENCAPSULATION, TRANSPORT))]
        first = legs(offer)[0][0]
        reply += _responder_lifetime(transforms[0], offer, PROTOCOLS[first], ours[first])
        self.pending = self._result(
            offer, transforms, ours, theirs, own_sel, peer_sel, policy.tunnel, payloads
        )
        self.events.append(InboundReady(self.pending))
        self.state = "QM2 sent"
        return [
            self._seal(
                reply,
                lambda rest: oakley.qm_hash2(
                    self.suite, self.sa.keys.skeyid_a, self.message_id, self.ni, rest
                ),
            )
        ]
