"""Authentication in main mode: the methods' Oakley numbers, RSA signatures as IKEv1 makes them, the
certificate checks, and Kerberos (GSS-API, method 65001) as Windows 2000/XP/2003 do it. Pre-shared keys need
no code here (they key SKEYID, oakley.skeyid_psk).

Kerberos follows draft-ietf-ipsec-isakmp-gss-auth-07, with what it leaves open fixed as racoon (ipsec-tools,
the one open implementation that worked with Windows 2000) does it (the library part is kerberos.py):

- 65001 means GSS-API only with a peer that sent the "GSSAPI", "A GSS-API Authentication Method for IKE" or
  "MS NT5 ISAKMPOAKLEY" vendor ID; otherwise it is XAUTHInitPreShared (draft-ietf-ipsec-isakmp-xauth).
- Each 65001 transform carries the sender's GSS identity, attribute 16384 (variable length), UTF-16LE
  ("for Windows 2000 compatibility", racoon): the initiator's in its offer, the responder's in its reply.
  The initiator asks a ticket for the identity the responder announced (else host/<reverse lookup>).
- SKEYID as for signatures: prf(Ni_b | Nr_b, g^xy).
- MM3 = KE, Ni, GSS(AP-REQ); MM4 = KE, Nr, GSS(AP-REP) (payload type 129, the bare token). Kerberos with
  mutual authentication completes in this one round trip; a mechanism wanting more rounds is refused.
- MM5/MM6: ID and a HASH payload holding gss_wrap(conf) of HASH_I / HASH_R, where the hash input is
  extended with the sender's GSS identity (when both sides announced one) and every token the sender sent:
  HASH_I = prf(SKEYID, g^xi | g^xr | CKY-I | CKY-R | SAi_b | IDii_b | GSS-ID_i | tokens_i).
  The receiver unwraps it with the context and compares with its own computation.
"""

from __future__ import annotations

import datetime
import hashlib
from collections.abc import Callable
from dataclasses import replace
from typing import TYPE_CHECKING, TypeVar

from ipsecd.ike import kerberos
from ipsecd.ike.events import NegotiationError
from ipsecd.ike.isakmp import Attribute, GssToken, NotifyType, Payload, Transform
from ipsecd.ike.natt import VID_MS_NT5
from ipsecd.ike.settings import Kerberos

if TYPE_CHECKING:  # cryptography is imported where certificates are used: a PSK-only ipsecd never loads it
    from cryptography import x509
    from cryptography.hazmat.primitives.asymmetric import rsa

KERBEROS = 65001  # draft §3.3.1; also XAUTHInitPreShared, hence the vendor IDs
AUTH_IDS = {"psk": 1, "rsa-sig": 3, "kerberos": KERBEROS}  # Oakley Authentication Method (RFC 2409 App. A)
AUTH_NAMES = {1: "PSK", 3: "RSA-SIG", KERBEROS: "Kerberos"}


# --- RSA signatures as IKEv1 uses them: PKCS#1 v1.5 over the bare hash, no DigestInfo -----------------


def rsa_sign_raw(key: rsa.RSAPrivateKey, data: bytes) -> bytes:
    numbers = key.private_numbers()
    size = (key.key_size + 7) // 8
    if len(data) > size - 11:
        raise ValueError("hash too long for the RSA key")
    m = int.from_bytes(b"\x00\x01" + b"\xff" * (size - 3 - len(data)) + b"\x00" + data, "big")
    m1, m2 = pow(m, numbers.dmp1, numbers.p), pow(m, numbers.dmq1, numbers.q)
    return (m2 + numbers.iqmp * (m1 - m2) % numbers.p * numbers.q).to_bytes(size, "big")


def rsa_verify_raw(key: rsa.RSAPublicKey, signature: bytes, data: bytes) -> bool:
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives.asymmetric import padding

    try:
        return key.recover_data_from_signature(signature, padding.PKCS1v15(), None) == data
    except (InvalidSignature, ValueError):
        return False


def verify_chain(
    cert: x509.Certificate,
    extra: list[x509.Certificate],
    trusted: tuple[x509.Certificate, ...],
    now: datetime.datetime,
) -> None:
    """The peer's certificate must chain (through ``extra``) to a trusted CA, every link in date."""
    current, seen = cert, 0
    while seen < 8:
        if not in_date(current, now):
            raise NegotiationError(
                f"certificate {current.subject.rfc4514_string()} is not in date "
                f"({current.not_valid_before_utc:%Y-%m-%d} .. "
                f"{current.not_valid_after_utc:%Y-%m-%d})",
                NotifyType.INVALID_CERTIFICATE,
                "authentication failed",
            )
        for ca in trusted:
            if current.issuer == ca.subject and _issued_by(current, ca):
                if not in_date(ca, now):
                    raise NegotiationError(
                        f"trusted CA {ca.subject.rfc4514_string()} is not in date",
                        NotifyType.INVALID_CERTIFICATE,
                        "authentication failed",
                    )
                return
        parent = next((c for c in extra if c.subject == current.issuer and _issued_by(current, c)), None)
        if parent is None:
            raise NegotiationError(
                f"certificate {cert.subject.rfc4514_string()} (issuer "
                f"{cert.issuer.rfc4514_string()}) does not chain to a trusted CA",
                NotifyType.INVALID_CERT_AUTHORITY,
                "authentication failed",
            )
        current, seen = parent, seen + 1
    raise NegotiationError(
        "certificate chain too long", NotifyType.INVALID_CERTIFICATE, "authentication failed"
    )


def _issued_by(cert: x509.Certificate, issuer: x509.Certificate) -> bool:
    from cryptography.exceptions import InvalidSignature

    try:
        cert.verify_directly_issued_by(issuer)
        return True
    except (ValueError, TypeError, InvalidSignature):
        return False


def in_date(cert: x509.Certificate, now: datetime.datetime) -> bool:
    return cert.not_valid_before_utc <= now <= cert.not_valid_after_utc


def load_certificate(der: bytes) -> x509.Certificate:
    """A peer's CERT payload, every field the checks read parsed now: cryptography parses the names, dates
    and key only when they are read, so a corrupt subject raised ValueError from inside the chain check."""
    from cryptography import x509  # here: a PSK-only ipsecd never loads it (8 MB)
    from cryptography.exceptions import UnsupportedAlgorithm
    from cryptography.hazmat.primitives.asymmetric import rsa

    try:
        cert = x509.load_der_x509_certificate(der)
        _ = cert.subject, cert.issuer, cert.not_valid_before_utc, cert.not_valid_after_utc
        key = cert.public_key()
    except (ValueError, UnsupportedAlgorithm) as e:
        raise NegotiationError(
            f"CERT payload is not a DER X.509 certificate ({e})", NotifyType.INVALID_CERTIFICATE,
            "authentication failed",
        ) from None
    if not isinstance(key, rsa.RSAPublicKey):
        raise NegotiationError(
            f"certificate {cert.subject.rfc4514_string()} has no RSA key: RSA signatures only",
            NotifyType.INVALID_CERTIFICATE, "authentication failed",
        )
    return cert


# --- Kerberos (GSS-API), method 65001 ------------------------------------------------------------------

GSS_ID = 16384  # draft §3.3.2: phase 1 SA attribute, the principal name
VID_GSSAPI = hashlib.md5(b"GSSAPI").digest()  # Windows 2000 recognises it
VID_GSS_DRAFT = hashlib.md5(b"A GSS-API Authentication Method for IKE").digest()
VID_GSS_DRAFT_NEWLINE = hashlib.md5(b"A GSS-API Authentication Method for IKE\n").digest()
SENT_VENDOR_IDS = (VID_GSSAPI, VID_GSS_DRAFT)
GSS_VENDOR_IDS = (VID_GSSAPI, VID_GSS_DRAFT, VID_GSS_DRAFT_NEWLINE)


def peer_does_gss(vendor_ids: list[bytes]) -> bool:
    """Whether the peer's 65001 means GSS-API (a GSS or Windows vendor ID) rather than XAUTH."""
    return any(v in GSS_VENDOR_IDS or v.startswith(VID_MS_NT5) for v in vendor_ids)


def encode_gss_id(name: str) -> bytes:
    return name.encode("utf-16-le")


def decode_gss_id(data: bytes) -> str:
    """UTF-16LE as Windows and racoon send it; Latin-1 as old racoon did (`gss_id_enc latin1`)."""
    if len(data) % 2 == 0 and data[1::2].count(0) == len(data) // 2:
        return data.decode("utf-16-le")
    return data.decode("latin-1")


def gss_id_of(transform: Transform) -> bytes | None:
    return next(
        (a.value for a in transform.attributes if a.type == GSS_ID and isinstance(a.value, bytes)), None
    )


def gss_id_attributes(auth: object) -> tuple[Attribute, ...]:
    """What a transform of this method carries beyond RFC 2409's: a 65001 transform our GSS identity."""
    return (Attribute(GSS_ID, encode_gss_id(auth.service)),) if isinstance(auth, Kerberos) else ()


def with_gss_id(transform: Transform, gss_id: bytes) -> Transform:
    """The transform carrying our GSS identity instead of the peer's (the responder's reply)."""
    attributes = [a for a in transform.attributes if a.type != GSS_ID] + [Attribute(GSS_ID, gss_id)]
    return replace(transform, attributes=attributes)


Result = TypeVar("Result")


class GssAuthentication:
    """The Kerberos part of one main mode: the context, the GSS identities and the tokens each side sent.

    Every Kerberos failure becomes a :class:`NegotiationError` "authentication failed" (AUTHENTICATION-FAILED
    to the peer) whose ``cause`` is the reason (kerberos.NO_CREDENTIALS, ...), counted on its own."""

    def __init__(self, settings: Kerberos, initiator: bool, remote_address: str):
        self.settings, self.initiator, self.remote_address = settings, initiator, remote_address
        self.own_id = encode_gss_id(settings.service)
        self.peer_id: bytes | None = None
        self.sent: list[bytes] = []
        self.received: list[bytes] = []
        self.context: kerberos.Context | None = None
        self.answer = b""  # the responder's AP-REP, or the initiator's AP-REQ once fetched
        self.failure: kerberos.KerberosError | None = None  # of fetch_ticket, raised when MM3 is built

    def _guard(self, action: Callable[[], Result]) -> Result:
        try:
            return action()
        except kerberos.KerberosError as exc:
            raise self._failed(exc) from None

    def _failed(self, exc: kerberos.KerberosError) -> NegotiationError:
        return NegotiationError(
            f"Kerberos authentication with {self.remote_address} failed: {exc}",
            NotifyType.AUTHENTICATION_FAILED,
            "authentication failed",
            cause=exc.reason,
        )

    def take_peer_transform(self, transform: Transform) -> None:
        """Note the GSS identity in the peer's transform (offer or reply)."""
        self.peer_id = gss_id_of(transform)

    def fetch_ticket(self) -> None:
        """Initiator, before main mode 3: the AP-REQ, which may need the KDC (a TGT, a service ticket) and
        the resolver, so it blocks up to the Kerberos timeout: the IKE component runs it off its event loop.
        A failure is kept for :meth:`key_exchange_payloads`."""
        try:
            announced = decode_gss_id(self.peer_id) if self.peer_id else None
            target = kerberos.peer_target(self.settings, self.remote_address, announced)
            self.context = kerberos.Context(self.settings, initiator=True, target=target)
            self.answer = self.context.step(None)
        except kerberos.KerberosError as exc:
            self.failure = exc

    def key_exchange_payloads(self) -> list[Payload]:
        """The token for main mode 3 (the initiator's AP-REQ, fetched before) or 4 (the AP-REP)."""
        if self.failure:
            raise self._failed(self.failure)
        self.sent.append(self.answer)
        return [GssToken(self.answer)]

    def take_key_exchange(self, payloads: list[Payload]) -> None:
        """The peer's token of main mode 3 (accepted, the answer kept for 4) or 4 (the context completes)."""
        tokens = [p.data for p in payloads if isinstance(p, GssToken)]
        if len(tokens) != 1:
            raise self._failed(kerberos.KerberosError(
                kerberos.INTEGRITY, f"main mode {'4' if self.initiator else '3'} carries {len(tokens)} GSS "
                                    "tokens, not 1"))
        self.received.append(tokens[0])
        self.answer = self._guard(lambda: self._step(tokens[0]))

    def _step(self, token: bytes) -> bytes:
        if self.context is None:
            self.context = kerberos.Context(self.settings, initiator=False)
        out = self.context.step(token)
        self.context.require_complete()
        if self.initiator and out:
            raise kerberos.KerberosError(kerberos.INTEGRITY, "the GSS-API context wants another round trip")
        return out

    def hash_extension(self, of_initiator: bool) -> bytes:
        """What the draft appends to IDii_b / IDir_b in HASH_I / HASH_R: that side's GSS identity (when both
        sides announced one) and the tokens it sent, in order."""
        own = of_initiator == self.initiator
        gss_id = (self.own_id if own else self.peer_id) if self.peer_id is not None else None
        return (gss_id or b"") + b"".join(self.sent if own else self.received)

    def _established(self) -> kerberos.Context:
        if self.context is None:
            raise self._failed(kerberos.KerberosError(kerberos.INTEGRITY, "no GSS-API context yet"))
        return self.context

    def protect(self, own_hash: bytes) -> bytes:
        """Our HASH_I / HASH_R, wrapped with the context (main mode 5/6)."""
        context = self._established()
        return self._guard(lambda: context.wrap(own_hash))

    def verify(self, wrapped: bytes, expected: bytes) -> str:
        """Unwrap the peer's hash and compare; returns the peer's authenticated principal."""
        context = self._established()
        if self._guard(lambda: context.unwrap(wrapped)) != expected:
            raise self._failed(
                kerberos.KerberosError(kerberos.INTEGRITY, f"HASH from {self.remote_address} does not match")
            )
        return self._guard(lambda: context.peer)
