"""Kerberos (GSS-API) authentication in IKEv1 main mode, method 65001, as Windows 2000/XP/2003 do it.

draft-ietf-ipsec-isakmp-gss-auth-07, with what it leaves open fixed as racoon (ipsec-tools, the one open
implementation that worked with Windows 2000) does it:

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

import hashlib
from dataclasses import replace

from ipsecd.ike import kerberos
from ipsecd.ike.isakmp import Attribute, GssToken, Payload, Transform
from ipsecd.ike.natt import VID_MS_NT5
from ipsecd.ike.settings import Kerberos

AUTH_METHOD = 65001  # draft §3.3.1; also XAUTHInitPreShared, hence the vendor IDs
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


def with_gss_id(transform: Transform, gss_id: bytes) -> Transform:
    """The transform carrying our GSS identity instead of the peer's (the responder's reply)."""
    attributes = [a for a in transform.attributes if a.type != GSS_ID] + [Attribute(GSS_ID, gss_id)]
    return replace(transform, attributes=attributes)


class GssAuthentication:
    """The Kerberos part of one main mode: the context, the GSS identities and the tokens each side sent.

    Raises :class:`kerberos.KerberosError` (with its reason) for every failure."""

    def __init__(self, settings: Kerberos, initiator: bool, remote_address: str):
        self.settings, self.initiator, self.remote_address = settings, initiator, remote_address
        self.own_id = encode_gss_id(settings.service)
        self.peer_id: bytes | None = None
        self.sent: list[bytes] = []
        self.received: list[bytes] = []
        self.context: kerberos.Context | None = None
        self.answer = b""

    def take_peer_transform(self, transform: Transform) -> None:
        """Note the GSS identity in the peer's transform (offer or reply)."""
        self.peer_id = gss_id_of(transform)

    def key_exchange_payloads(self) -> list[Payload]:
        """The token for main mode 3 (the initiator's AP-REQ: tickets fetched now) or 4 (the AP-REP)."""
        if self.initiator:
            announced = decode_gss_id(self.peer_id) if self.peer_id else None
            target = kerberos.peer_target(self.settings, self.remote_address, announced)
            self.context = kerberos.Context(self.settings, initiator=True, target=target)
            token = self.context.step(None)
        else:
            token = self.answer
        self.sent.append(token)
        return [GssToken(token)]

    def take_key_exchange(self, payloads: list[Payload]) -> None:
        """The peer's token of main mode 3 (accepted, the answer kept for 4) or 4 (the context completes)."""
        tokens = [p.data for p in payloads if isinstance(p, GssToken)]
        if len(tokens) != 1:
            raise kerberos.KerberosError(
                kerberos.INTEGRITY,
                f"main mode {'4' if self.initiator else '3'} carries {len(tokens)} GSS tokens, not 1",
            )
        self.received.append(tokens[0])
        if self.context is None:
            self.context = kerberos.Context(self.settings, initiator=False)
        out = self.context.step(tokens[0])
        self.context.require_complete()
        if self.initiator and out:
            raise kerberos.KerberosError(kerberos.INTEGRITY, "the GSS-API context wants another round trip")
        self.answer = out

    def hash_extension(self, of_initiator: bool) -> bytes:
        """What the draft appends to IDii_b / IDir_b in HASH_I / HASH_R: that side's GSS identity (when both
        sides announced one) and the tokens it sent, in order."""
        own = of_initiator == self.initiator
        gss_id = (self.own_id if own else self.peer_id) if self.peer_id is not None else None
        return (gss_id or b"") + b"".join(self.sent if own else self.received)

    def protect(self, own_hash: bytes) -> bytes:
        assert self.context is not None
        return self.context.wrap(own_hash)

    def verify(self, wrapped: bytes, expected: bytes) -> str:
        """Unwrap the peer's hash and compare; returns the peer's authenticated principal."""
        assert self.context is not None
        if self.context.unwrap(wrapped) != expected:
            raise kerberos.KerberosError(
                kerberos.INTEGRITY, f"HASH from {self.remote_address} does not match"
            )
        return self.context.peer
