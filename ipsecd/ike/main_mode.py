"""Main mode (RFC 2409 §5): the six-message phase 1 exchange, as sans-I/O state machines.

A :class:`MainModeInitiator` or :class:`MainModeResponder` is fed decoded messages and returns the datagrams
to send; what happened is appended to ``events`` (:class:`Established` or :class:`Failure`). Sockets, ports,
retransmission and timers belong to component.py, and so does work that blocks: with Kerberos the initiator's
main mode 3 needs a ticket first (the KDC, up to the Kerberos timeout), so after main mode 2 it hands that
work out (``take_blocking()``) and goes on when ``resume()`` is called. The result, an :class:`IsakmpSA`,
protects the quick mode and informational exchanges that follow (App. B IV chaining per message ID).
"""

from __future__ import annotations

import datetime
import ipaddress
import secrets
from collections.abc import Callable

from ipsecd.ike import auth as authentication
from ipsecd.ike import informational, isakmp, natt, oakley
from ipsecd.ike.auth import (
    AUTH_IDS,
    AUTH_NAMES,
    load_certificate,
    rsa_sign_raw,
    rsa_verify_raw,
    verify_chain,
)
from ipsecd.ike.events import Established, Failure, NegotiationError, refusal
from ipsecd.ike.isakmp import (
    ID,
    KE,
    SA,
    Attribute,
    Cert,
    CertRequest,
    ExchangeType,
    Flag,
    Hash,
    IDType,
    MalformedMessage,
    Message,
    Nonce,
    Notify,
    NotifyType,
    Proposal,
    ProtocolID,
    Signature,
    Transform,
    VendorID,
)
from ipsecd.ike.sa import IsakmpSA
from ipsecd.ike.settings import Certificates, Kerberos, MainModeOffer, PeerPolicy, PreSharedKey

# Oakley attribute classes (RFC 2409 App. A)
ENCRYPTION, HASH, AUTH_METHOD, GROUP, LIFE_TYPE, LIFE_DURATION, KEY_LENGTH = 1, 2, 3, 4, 11, 12, 14
LIFE_SECONDS = 1
KEY_IKE = 1
NONCE_SIZE = 32


# --- proposals ------------------------------------------------------------------------------------


def offer_transform(
    number: int, offer: MainModeOffer, method: str, extra: tuple[Attribute, ...] = ()
) -> Transform:
    cipher = oakley.CIPHERS[offer.encryption]
    attrs = [Attribute(ENCRYPTION, cipher.oakley_id)]
    if cipher.variable_key:
        attrs.append(Attribute(KEY_LENGTH, cipher.key_size * 8))
    attrs += [
        Attribute(HASH, oakley.HASHES[offer.hash].oakley_id),
        Attribute(AUTH_METHOD, AUTH_IDS[method]),
        Attribute(GROUP, offer.group),
        Attribute(LIFE_TYPE, LIFE_SECONDS),
        Attribute(LIFE_DURATION, offer.lifetime),
        *extra,
    ]
    return Transform(number, KEY_IKE, attrs)


def _cipher_name(transform: Transform) -> str | None:
    enc, bits = transform.attr(ENCRYPTION), transform.attr(KEY_LENGTH)
    for c in oakley.CIPHERS.values():
        if c.oakley_id == enc and (not c.variable_key or bits == c.key_size * 8):
            return c.name
    return None


def describe_transform(t: Transform) -> str:
    """'3DES/MD5/group 1/PSK' for a received transform, with numbers for what we do not know."""
    name = _cipher_name(t)
    cipher = oakley.CIPHERS[name].algorithm.windows if name else f"CIPHER {t.attr(ENCRYPTION)}"
    hash_name = next(
        (h.name for h in oakley.HASHES.values() if h.oakley_id == t.attr(HASH)), f"hash {t.attr(HASH)}"
    )
    auth = AUTH_NAMES.get(t.attr(AUTH_METHOD) or 0, f"auth {t.attr(AUTH_METHOD)}")
    return f"{cipher}/{hash_name.upper()}/group {t.attr(GROUP)}/{auth}"


def _matches(t: Transform, offer: MainModeOffer, method: str) -> bool:
    return (
        t.transform_id == KEY_IKE
        and _cipher_name(t) == offer.encryption
        and t.attr(HASH) == oakley.HASHES[offer.hash].oakley_id
        and t.attr(GROUP) == offer.group
        and t.attr(AUTH_METHOD) == AUTH_IDS[method]
    )


def _lifetime(t: Transform, default: int) -> int:
    duration = t.attr(LIFE_DURATION)
    return duration if duration is not None and t.attr(LIFE_TYPE, LIFE_SECONDS) == LIFE_SECONDS else default


# --- the exchange ----------------------------------------------------------------------------------


def notify_message(icookie: bytes, rcookie: bytes, notify_type: int) -> bytes:
    """An unprotected informational with one notify, as sent before keys are agreed."""
    return Message(
        icookie,
        rcookie,
        ExchangeType.INFORMATIONAL,
        message_id=secrets.randbits(32) or 1,
        payloads=[Notify(notify_type, ProtocolID.ISAKMP, icookie + rcookie)],
    ).encode()


class MainMode:
    """What initiator and responder share: policy, keys, the six-message bookkeeping."""

    initiator: bool

    def __init__(
        self,
        policy: PeerPolicy,
        local: tuple[str, int],
        remote: tuple[str, int],
        clock=lambda: datetime.datetime.now(datetime.UTC),
        initial_contact: bool = True,
    ):
        self.policy, self.local, self.remote, self.clock = policy, local, remote, clock
        self.initial_contact = initial_contact
        self.events: list[Established | Failure] = []
        self.state = "new"
        self.icookie = self.rcookie = bytes(8)
        self.sai_b = b""
        self._suite: oakley.Phase1Suite | None = None
        self.method = ""
        self.lifetime = 0
        self.proposed_lifetime = 0  # what the transform chosen says (RFC 2407 §4.5: 8 hours if nothing)
        self.peer_vids: list[bytes] = []
        self.variant: natt.Variant | None = None
        self.nat: natt.NatStatus | None = None
        self.private = 0
        self.own_ke = self.peer_ke = self.ni = self.nr = b""
        self._keys: oakley.Phase1Keys | None = None
        self.iv = b""
        self.sa: IsakmpSA | None = None
        self.peer_initial_contact = False
        self.dropped: list[str] = []  # messages dropped as corrupted, in words
        self.gss: authentication.GssAuthentication | None = None  # with Kerberos: its part of this exchange
        self._blocking: Callable[[], None] | None = None  # work to run off the event loop, then resume()

    @property
    def done(self) -> bool:
        return self.state in ("established", "failed")

    @property
    def suite(self) -> oakley.Phase1Suite:
        """The agreed algorithms (from main mode 1/2 on): a message that needs them earlier is malformed."""
        if self._suite is None:
            raise NegotiationError("main mode message before a proposal was agreed",
                                   NotifyType.PAYLOAD_MALFORMED, "malformed message")
        return self._suite

    @property
    def keys(self) -> oakley.Phase1Keys:
        """SKEYID and the keys derived from it (from main mode 3/4 on)."""
        if self._keys is None:
            raise NegotiationError("main mode message before the key exchange",
                                   NotifyType.PAYLOAD_MALFORMED, "malformed message")
        return self._keys

    @property
    def float_to_4500(self) -> bool:
        """After main mode 3/4: NAT seen, so message 5 on goes to UDP 4500 (RFC 3947 §4)."""
        return bool(self.nat and self.nat.detected)

    def receive(self, msg: Message) -> list[bytes]:
        """Process one message of this exchange; returns what to send back."""
        if self.done:
            return []
        if msg.exchange == ExchangeType.INFORMATIONAL and not msg.flags & Flag.ENCRYPTION:
            return self._guarded(lambda: self._peer_notify(msg))
        if msg.exchange == ExchangeType.INFORMATIONAL:
            return self._guarded(lambda: self._protected_notify(msg))
        if msg.exchange != ExchangeType.MAIN_MODE:
            return []
        return self._guarded(lambda: self._step(msg))

    def take_blocking(self) -> Callable[[], None] | None:
        """Work that blocks (Kerberos: fetching the ticket for main mode 3), once: the caller runs it off its
        event loop, then calls :meth:`resume`."""
        work, self._blocking = self._blocking, None
        return work

    def resume(self) -> list[bytes]:
        """After the blocking work: what to send now."""
        if self.done:
            return []
        return self._guarded(self._resumed)

    def _resumed(self) -> list[bytes]:
        return []  # nothing waits for blocking work (the responder never has any)

    def _guarded(self, step: Callable[[], list[bytes]]) -> list[bytes]:
        try:
            return step()
        except NegotiationError as exc:
            if exc.integrity and not self.dropped:
                self.dropped.append(exc.reason)
                return []
            self.state = "failed"
            self.events.append(Failure.of(exc))
            return [notify_message(self.icookie, self.rcookie, exc.notify)] if exc.notify else []

    def fail(self, reason: str, counter: str, point: str = "me") -> None:
        """Give up from outside (retransmissions exhausted)."""
        if not self.done:
            self.state = "failed"
            self.events.append(Failure(reason, counter, point))

    def _peer_notify(self, msg: Message) -> list[bytes]:
        notify = msg.first(Notify)
        if notify is not None:
            refusal(notify, "main mode", self.remote[0])
        return []

    def _protected_notify(self, msg: Message) -> list[bytes]:
        """An encrypted informational before main mode ends: the peer's refusal of our main mode 5 (strongSwan
        sends AUTHENTICATION-FAILED so when no configuration accepts our identity), under the keys of main
        mode 3/4 with its IV from the last main mode block (RFC 2409 App. B; MS-IKEE <12>). One that does
        not decrypt or whose HASH(1) does not verify is dropped (and counted), as a corrupted message is."""
        if self._keys is None:
            return []
        unfinished = IsakmpSA(self.icookie, self.rcookie, self.initiator, self.suite, self.keys,
                              self.lifetime, self.local, self.remote, self.method, "", self.iv)
        try:
            payloads = informational.open_informational(unfinished, msg)
        except NegotiationError as exc:
            self.dropped.append(f"encrypted informational: {exc.reason}")
            return []
        for notify in (p for p in payloads if isinstance(p, Notify)):
            refusal(notify, "main mode", self.remote[0])
        return []

    def _step(self, msg: Message) -> list[bytes]:
        raise NotImplementedError

    # -- pieces both sides use --

    def _auth(self):
        return next(a for a in self.policy.auth if a.method == self.method)

    def _choose(self, proposal: Proposal) -> Transform:
        """MainModeResponder: the first transform of the initiator that our policy accepts (65001 only from
        a peer whose vendor IDs say it means Kerberos, not XAUTH)."""
        gss_peer = authentication.peer_does_gss(self.peer_vids)
        for t in proposal.transforms:
            for offer in self.policy.main_mode:
                for auth in self.policy.auth:
                    if _matches(t, offer, auth.method) and (auth.method != "kerberos" or gss_peer):
                        return t
        offered = "; ".join(describe_transform(t) for t in proposal.transforms) or "nothing"
        ours = "; ".join(
            f"{o.describe()}/{AUTH_NAMES[AUTH_IDS[a.method]]}"
            for o in self.policy.main_mode
            for a in self.policy.auth
        )
        raise NegotiationError(
            f"no proposal chosen: peer {self.remote[0]} offered {offered}; we accept {ours}",
            NotifyType.NO_PROPOSAL_CHOSEN,
            "no proposal chosen",
        )

    def _adopt(self, t: Transform) -> None:
        name, group = _cipher_name(t), t.attr(GROUP)
        hash_name = next((h.name for h in oakley.HASHES.values() if h.oakley_id == t.attr(HASH)), None)
        if name is None or hash_name is None or group not in oakley.GROUPS:
            raise NegotiationError(f"transform {describe_transform(t)} is not one we offer",
                                   NotifyType.NO_PROPOSAL_CHOSEN, "no proposal chosen")
        self._suite = oakley.Phase1Suite(name, hash_name, group)
        self.method = next(m for m, i in AUTH_IDS.items() if i == t.attr(AUTH_METHOD))
        own = min((o.lifetime for o in self.policy.main_mode), default=28800)
        self.proposed_lifetime = _lifetime(t, 28800)
        self.lifetime = min(self.proposed_lifetime, own)
        self.private = self.suite.group.private_key()
        self.own_ke = self.suite.group.public_key(self.private)
        auth = self._auth()
        if isinstance(auth, Kerberos):  # the peer's GSS identity is in its offer or reply
            self.gss = authentication.GssAuthentication(auth, self.initiator, self.remote[0])
            self.gss.take_peer_transform(t)

    def _vendor_ids(self) -> list[isakmp.Payload]:
        vids = [natt.VID_WINDOWS_2003] + [natt.VARIANTS[name].vendor_id for name in self.policy.nat_traversal]
        if any(isinstance(a, Kerberos) for a in self.policy.auth):
            vids += authentication.SENT_VENDOR_IDS
        return [VendorID(v) for v in vids]

    def _note_vendor_ids(self, msg: Message) -> None:
        self.peer_vids = [v.data for v in msg.all(VendorID)]
        self.variant = natt.choose_variant(self.peer_vids, self.policy.nat_traversal)

    def _key_exchange_payloads(self) -> list[isakmp.Payload]:
        nonce = self.ni if self.initiator else self.nr
        out: list[isakmp.Payload] = [KE(self.own_ke), Nonce(nonce)]
        auth = self._auth()
        if isinstance(auth, Certificates):
            out += [CertRequest(ca.subject.public_bytes()) for ca in auth.trusted_cas]
        if self.gss:  # AP-REQ in main mode 3, AP-REP in 4
            out += self.gss.key_exchange_payloads()
        if self.variant:
            out += natt.natd_payloads(
                self.variant, self.suite.hash, self.icookie, self.rcookie, self.local, self.remote
            )
        return out

    def _take_responder_lifetime(self, payloads: list[isakmp.Payload]) -> None:
        """The responder's shorter lifetime (RESPONDER-LIFETIME in main mode 6) becomes ours: we renegotiate
        before it expires on the responder's side."""
        seconds, _ = informational.responder_lifetime(payloads)
        self.lifetime = min(self.lifetime, seconds or self.lifetime)

    def _take_key_exchange(self, msg: Message) -> None:
        ke, nonce = msg.first(KE), msg.first(Nonce)
        if ke is None or nonce is None:
            raise NegotiationError(
                f"main mode message without KE or nonce ({isakmp.payload_names(msg.payloads)})",
                NotifyType.PAYLOAD_MALFORMED,
                "malformed message",
            )
        if not 8 <= len(nonce.data) <= 256:
            raise NegotiationError(
                f"nonce of {len(nonce.data)} bytes", NotifyType.PAYLOAD_MALFORMED, "malformed message"
            )
        try:
            gxy = self.suite.group.shared_secret(self.private, ke.data)
        except ValueError as exc:
            raise NegotiationError(
                str(exc), NotifyType.INVALID_KEY_INFORMATION, "malformed message"
            ) from None
        self.peer_ke = ke.data
        if self.initiator:
            self.nr = nonce.data
        else:
            self.ni = nonce.data
        natds = [p.data for p in msg.all(isakmp.NatD)]
        if self.variant and natds:
            try:
                self.nat = natt.detect(
                    natds, self.suite.hash, self.icookie, self.rcookie, self.local, self.remote
                )
            except ValueError as exc:
                raise NegotiationError(str(exc), NotifyType.PAYLOAD_MALFORMED, "malformed message") from None
        if self.gss:
            self.gss.take_key_exchange(msg.payloads)
        auth = self._auth()
        if isinstance(auth, PreSharedKey):
            skeyid = oakley.skeyid_psk(self.suite, auth.key, self.ni, self.nr)
        else:
            skeyid = oakley.skeyid_signature(self.suite, self.ni, self.nr, gxy)
        self._keys = oakley.derive_phase1(self.suite, skeyid, gxy, self.icookie, self.rcookie)
        self.iv = oakley.phase1_iv(self.suite, self.gxi, self.gxr)

    @property
    def gxi(self) -> bytes:
        return self.own_ke if self.initiator else self.peer_ke

    @property
    def gxr(self) -> bytes:
        return self.peer_ke if self.initiator else self.own_ke

    def _identity(self) -> ID:
        auth = self._auth()
        if isinstance(auth, Certificates):
            return ID(IDType.DER_ASN1_DN, auth.certificate.subject.public_bytes())
        return ID(IDType.IPV4_ADDR, ipaddress.IPv4Address(self.local[0]).packed)

    def _auth_payloads(self, own_hash: bytes) -> list[isakmp.Payload]:
        auth = self._auth()
        if isinstance(auth, Certificates):
            from cryptography.hazmat.primitives.serialization import Encoding  # certificates only (auth.py)

            return [
                Cert(auth.certificate.public_bytes(Encoding.DER)),
                Signature(rsa_sign_raw(auth.private_key, own_hash)),
            ]
        if self.gss:  # the hash wrapped with the GSS-API context
            return [Hash(self.gss.protect(own_hash))]
        return [Hash(own_hash)]

    def _hash(self, of_initiator: bool, id_body: bytes) -> bytes:
        if self.gss:  # the draft's extended hash input
            id_body += self.gss.hash_extension(of_initiator)
        return oakley.phase1_hash(
            self.suite,
            self.keys.skeyid,
            self.gxi,
            self.gxr,
            self.icookie,
            self.rcookie,
            self.sai_b,
            id_body,
            initiator=of_initiator,
        )

    def _seal_phase1(self, payloads: list[isakmp.Payload]) -> bytes:
        first, plain = isakmp.build_payloads(payloads)
        body = self.suite.cipher.encrypt(self.keys.ka, self.iv, plain)
        self.iv = body[-self.suite.cipher.block_size :]
        head = Message(self.icookie, self.rcookie, ExchangeType.MAIN_MODE, Flag.ENCRYPTION)
        return head.header(first, len(body)) + body

    def _open_phase1(self, msg: Message) -> list[isakmp.Payload]:
        """Decrypt main mode 5/6; the IV moves on only once the caller has verified the contents."""
        wrong_key = "pre-shared keys differ" if self.method == "psk" else "keys differ"
        if not msg.flags & Flag.ENCRYPTION:
            raise NegotiationError(
                "main mode message 5/6 not encrypted", NotifyType.INVALID_FLAGS, "malformed message"
            )
        try:
            plain = self.suite.cipher.decrypt(self.keys.ka, self.iv, msg.body)
            payloads = isakmp.parse_payloads(msg.next_payload, plain, padded=True)
        except (ValueError, MalformedMessage) as exc:
            raise NegotiationError(
                f"authentication failed: encrypted message from {self.remote[0]} does not "
                f"decrypt to valid payloads ({wrong_key}?): {exc}",
                NotifyType.AUTHENTICATION_FAILED,
                "authentication failed",
                integrity=True,
            ) from None
        return payloads

    def _verify_peer(self, payloads: list[isakmp.Payload]) -> str:
        """Check the peer's HASH or signature; returns its identity in words."""
        peer_id = next((p for p in payloads if isinstance(p, ID)), None)
        if peer_id is None:
            raise NegotiationError(
                "no ID payload in main mode 5/6", NotifyType.PAYLOAD_MALFORMED, "malformed message"
            )
        expected = self._hash(not self.initiator, peer_id.body())
        if self.gss:  # the peer's identity is its Kerberos principal
            return self.gss.verify(next((p.data for p in payloads if isinstance(p, Hash)), b""), expected)
        auth = self._auth()
        if isinstance(auth, PreSharedKey):
            got = next((p.data for p in payloads if isinstance(p, Hash)), None)
            if got != expected:
                raise NegotiationError(
                    f"authentication failed: HASH from {self.remote[0]} does not match "
                    "(pre-shared keys differ?)",
                    NotifyType.AUTHENTICATION_FAILED,
                    "authentication failed",
                    integrity=True,
                )
            return _id_text(peer_id)
        certs = [load_certificate(p.data) for p in payloads if isinstance(p, Cert)]
        sig = next((p.data for p in payloads if isinstance(p, Signature)), None)
        if not certs or sig is None:
            raise NegotiationError(
                "peer sent no certificate or no signature",
                NotifyType.CERTIFICATE_UNAVAILABLE,
                "authentication failed",
            )
        verify_chain(certs[0], certs[1:], auth.trusted_cas, self.clock())
        if peer_id.id_type == IDType.DER_ASN1_DN and peer_id.data != certs[0].subject.public_bytes():
            raise NegotiationError(
                "peer ID does not match the subject of its certificate",
                NotifyType.INVALID_ID_INFORMATION,
                "authentication failed",
            )
        from cryptography.hazmat.primitives.asymmetric import rsa  # certificates only (auth.py)

        public_key = certs[0].public_key()
        if not isinstance(public_key, rsa.RSAPublicKey):
            raise NegotiationError(f"certificate {certs[0].subject.rfc4514_string()} has no RSA key",
                                   NotifyType.INVALID_CERTIFICATE, "authentication failed")
        if not rsa_verify_raw(public_key, sig, expected):
            raise NegotiationError(
                f"authentication failed: signature of {certs[0].subject.rfc4514_string()} does not verify",
                NotifyType.INVALID_SIGNATURE,
                "authentication failed",
                integrity=True,
            )
        return certs[0].subject.rfc4514_string()

    def _establish(self, peer_identity: str) -> None:
        self.sa = IsakmpSA(
            self.icookie,
            self.rcookie,
            self.initiator,
            self.suite,
            self.keys,
            self.lifetime,
            self.local,
            self.remote,
            self.method,
            peer_identity,
            self.iv,
            self.nat,
            self.variant,
            self.peer_vids,
        )
        self.state = "established"
        self.events.append(Established(self.sa))


def _id_text(ident: ID) -> str:
    if ident.id_type == IDType.IPV4_ADDR and len(ident.data) == 4:
        return str(ipaddress.IPv4Address(ident.data))
    if ident.id_type in (IDType.FQDN, IDType.USER_FQDN):
        return ident.data.decode("utf-8", "replace")
    return f"ID type {ident.id_type} {ident.data.hex()}"


class MainModeInitiator(MainMode):
    """Main mode initiator: ``start()`` gives message 1, ``receive()`` the rest."""

    initiator = True

    def start(self) -> bytes:
        self.icookie = secrets.token_bytes(8)
        transforms = [
            offer_transform(n, offer, auth.method, authentication.gss_id_attributes(auth))
            for n, (offer, auth) in enumerate(
                ((o, a) for o in self.policy.main_mode for a in self.policy.auth), start=1
            )
        ]
        sa = SA([Proposal(1, ProtocolID.ISAKMP, b"", transforms)])
        self.sai_b = sa.body()
        self.state = "MM1 sent"
        return Message(
            self.icookie, self.rcookie, ExchangeType.MAIN_MODE, payloads=[sa, *self._vendor_ids()]
        ).encode()

    def _step(self, msg: Message) -> list[bytes]:
        if self.state == "MM1 sent" and not msg.flags & Flag.ENCRYPTION:
            sa = msg.first(SA)
            if sa is None or len(sa.proposals) != 1 or len(sa.proposals[0].transforms) != 1:
                raise NegotiationError(
                    "main mode 2 must carry an SA with exactly one transform",
                    NotifyType.PAYLOAD_MALFORMED,
                    "malformed message",
                )
            chosen = sa.proposals[0].transforms[0]
            if not any(
                _matches(chosen, o, a.method) for o in self.policy.main_mode for a in self.policy.auth
            ):
                raise NegotiationError(
                    f"peer chose {describe_transform(chosen)}, which we did not offer",
                    NotifyType.NO_PROPOSAL_CHOSEN,
                    "no proposal chosen",
                )
            self.rcookie = msg.rcookie
            self._note_vendor_ids(msg)
            if chosen.attr(AUTH_METHOD) == authentication.KERBEROS and not authentication.peer_does_gss(
                self.peer_vids
            ):
                raise NegotiationError(
                    f"peer {self.remote[0]} chose method 65001 without a GSS-API vendor ID (XAUTH?)",
                    NotifyType.NO_PROPOSAL_CHOSEN,
                    "no proposal chosen",
                )
            self._adopt(chosen)
            self.ni = secrets.token_bytes(NONCE_SIZE)
            self.state = "MM2 received"
            if self.gss:  # the AP-REQ first: it may wait for the KDC
                self._blocking = self.gss.fetch_ticket
                return []
            return self._resumed()
        if self.state == "MM3 sent" and not msg.flags & Flag.ENCRYPTION:
            self._take_key_exchange(msg)
            ident = self._identity()
            payloads = [ident, *self._auth_payloads(self._hash(True, ident.body()))]
            if self.initial_contact:
                payloads.append(
                    Notify(NotifyType.INITIAL_CONTACT, ProtocolID.ISAKMP, self.icookie + self.rcookie)
                )
            self.state = "MM5 sent"
            return [self._seal_phase1(payloads)]
        if self.state == "MM5 sent" and msg.flags & Flag.ENCRYPTION:
            payloads = self._open_phase1(msg)
            peer = self._verify_peer(payloads)
            self.iv = msg.body[-self.suite.cipher.block_size :]
            self._take_responder_lifetime(payloads)
            self._establish(peer)
            return []
        return []

    def _resumed(self) -> list[bytes]:
        """Main mode 3 (with Kerberos once the ticket is there)."""
        if self.state != "MM2 received":
            return []
        self.state = "MM3 sent"
        return [Message(self.icookie, self.rcookie, payloads=self._key_exchange_payloads()).encode()]


class MainModeResponder(MainMode):
    """Main mode responder: created for a message 1, fed every message of the exchange."""

    initiator = False

    def _responder_lifetime(self) -> list[isakmp.Payload]:
        """RESPONDER-LIFETIME in main mode 6 when our lifetime is shorter than the one proposed (RFC 2407
        §4.6.3.1; the chosen transform is echoed unchanged in main mode 2, so this is how the initiator
        learns it): protected by the SA it describes, named by its cookies."""
        if self.lifetime >= self.proposed_lifetime:
            return []
        return [Notify.responder_lifetime(ProtocolID.ISAKMP, self.icookie + self.rcookie, self.lifetime)]

    def _step(self, msg: Message) -> list[bytes]:
        if self.state == "new":
            sa = msg.first(SA)
            if sa is None or not sa.proposals:
                raise NegotiationError(
                    "main mode 1 without an SA payload", NotifyType.PAYLOAD_MALFORMED, "malformed message"
                )
            self.icookie, self.rcookie = msg.icookie, secrets.token_bytes(8)
            self.sai_b = sa.body()
            proposal = next((p for p in sa.proposals if p.protocol == ProtocolID.ISAKMP), sa.proposals[0])
            self._note_vendor_ids(msg)
            chosen = self._choose(proposal)
            self._adopt(chosen)
            if self.gss:  # our GSS identity in the reply
                chosen = authentication.with_gss_id(chosen, self.gss.own_id)
            reply = SA([Proposal(proposal.number, ProtocolID.ISAKMP, b"", [chosen])], sa.doi, sa.situation)
            self.state = "MM2 sent"
            return [Message(self.icookie, self.rcookie, payloads=[reply, *self._vendor_ids()]).encode()]
        if self.state == "MM2 sent" and not msg.flags & Flag.ENCRYPTION:
            self.nr = secrets.token_bytes(NONCE_SIZE)
            if not msg.all(isakmp.NatD):
                self.variant = None  # the initiator did not do NAT-D: neither do we
            self._take_key_exchange(msg)
            self.state = "MM4 sent"
            return [Message(self.icookie, self.rcookie, payloads=self._key_exchange_payloads()).encode()]
        if self.state == "MM4 sent" and msg.flags & Flag.ENCRYPTION:
            payloads = self._open_phase1(msg)
            peer = self._verify_peer(payloads)
            self.iv = msg.body[-self.suite.cipher.block_size :]
            self.peer_initial_contact = any(
                isinstance(p, Notify) and p.notify_type == NotifyType.INITIAL_CONTACT for p in payloads
            )
            ident = self._identity()
            message_6 = self._seal_phase1([ident, *self._auth_payloads(self._hash(False, ident.body())),
                                           *self._responder_lifetime()])
            self._establish(peer)
            return [message_6]
        return []
