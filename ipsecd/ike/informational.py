"""Informational exchanges under a main mode SA (RFC 2409 §5.7): notify and delete, with HASH(1).

Each informational message has its own message ID, so its IV is hash(last phase 1 block | M-ID).
"""

from __future__ import annotations

import secrets

from ipsecd.ike import isakmp, oakley
from ipsecd.ike.events import NegotiationError
from ipsecd.ike.isakmp import Delete, ExchangeType, Hash, Notify, NotifyType, ProtocolID
from ipsecd.ike.sa import ChildSA, IsakmpSA


def protect(sa: IsakmpSA, payloads: list[isakmp.Payload]) -> bytes:
    message_id = secrets.randbits(32) or 1
    rest = isakmp.build_payloads(payloads)[1]
    wire = sa.seal(
        ExchangeType.INFORMATIONAL,
        message_id,
        [Hash(oakley.qm_hash1(sa.suite, sa.keys.skeyid_a, message_id, rest)), *payloads],
    )
    sa.forget(message_id)
    return wire


def notify(
    sa: IsakmpSA, notify_type: int, protocol: int = ProtocolID.ISAKMP, spi: bytes | None = None
) -> bytes:
    return protect(sa, [Notify(notify_type, protocol, sa.cookies if spi is None else spi)])


def delete_isakmp(sa: IsakmpSA) -> bytes:
    return protect(sa, [Delete.of(ProtocolID.ISAKMP, [sa.cookies])])


def delete_children(sa: IsakmpSA, children: list[ChildSA]) -> bytes:
    """One informational deleting quick mode SAs (our inbound ones): a Delete payload per SA."""
    proto = {"esp": ProtocolID.ESP, "ah": ProtocolID.AH}
    return protect(sa, [Delete.of(proto[c.protocol], [c.spi.to_bytes(4, "big")]) for c in children])


def open_informational(sa: IsakmpSA, msg: isakmp.Message) -> list[isakmp.Payload]:
    """Decrypt and verify HASH(1); returns the notify/delete payloads that follow it."""
    payloads = sa.open(msg)
    sa.forget(msg.message_id)
    if not payloads or not isinstance(payloads[0], Hash):
        raise NegotiationError(
            "informational message without HASH(1)", NotifyType.INVALID_HASH_INFORMATION, "malformed message"
        )
    rest = isakmp.build_payloads(payloads[1:])[1]
    if payloads[0].data != oakley.qm_hash1(sa.suite, sa.keys.skeyid_a, msg.message_id, rest):
        raise NegotiationError(
            "informational HASH(1) does not verify",
            NotifyType.INVALID_HASH_INFORMATION,
            "authentication failed",
            integrity=True,
        )
    return payloads[1:]


def responder_lifetime(payloads: list[isakmp.Payload]) -> tuple[int | None, int | None]:
    """(seconds, kilobytes) of the peer's RESPONDER-LIFETIME among `payloads` (main mode 6, quick mode 2),
    None where it names none."""
    for p in payloads:
        if isinstance(p, Notify) and p.notify_type == NotifyType.RESPONDER_LIFETIME:
            try:
                return p.lifetimes()
            except isakmp.MalformedMessage as exc:
                raise NegotiationError(str(exc), NotifyType.PAYLOAD_MALFORMED, "malformed message") from None
    return None, None
