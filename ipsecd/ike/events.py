"""What the sans-I/O exchanges report, as plain dataclasses (the aioquic way): the component reads them.

Main mode appends :class:`Established` or :class:`Failure` to its ``events``; quick mode appends
:class:`~ipsecd.ike.sa.QuickModeDone` (the SAs), :class:`InboundReady` (a responder's inbound SAs may go in)
or :class:`Failure`. Inside an exchange a :class:`NegotiationError` stops it and becomes a Failure.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from ipsecd.ike.isakmp import Notify, NotifyType

if TYPE_CHECKING:
    from ipsecd.ike.sa import IsakmpSA, QuickModeDone


class NegotiationError(Exception):
    """Stops an exchange: ``reason`` in words, the notify to send (if any), the counter to bump.

    ``integrity`` marks a message that failed decryption or its hash: it may be a corrupted datagram, so
    the exchange drops it and waits for the retransmission before believing it (main mode gives one
    second chance, quick mode waits for its retransmission timer)."""

    def __init__(
        self,
        reason: str,
        notify: int | None = None,
        counter: str = "negotiation failed",
        integrity: bool = False,
        cause: str = "",
    ):
        super().__init__(reason)
        self.reason, self.notify, self.counter, self.integrity = reason, notify, counter, integrity
        self.cause = cause  # why authentication failed, counted on its own (Kerberos: "clock skew", ...)


@dataclass
class Failure:
    reason: str
    counter: str  # "no proposal chosen", "authentication failed", ...
    cause: str = ""  # what made authentication fail: "KDC unreachable", "no credentials", ...


@dataclass
class Established:
    sa: IsakmpSA


REFUSAL_COUNTERS: dict[int, str] = {
    NotifyType.NO_PROPOSAL_CHOSEN: "no proposal chosen",
    NotifyType.AUTHENTICATION_FAILED: "authentication failed",
    NotifyType.INVALID_CERTIFICATE: "authentication failed",
    NotifyType.INVALID_CERT_AUTHORITY: "authentication failed",
    NotifyType.INVALID_SIGNATURE: "authentication failed",
    NotifyType.INVALID_HASH_INFORMATION: "authentication failed",
    NotifyType.INVALID_ID_INFORMATION: "invalid selectors",
}


def refusal(notify: Notify, exchange: str, peer: str) -> None:
    """Raise the failure an error notify from the peer means; status notifies (>= 8192) pass."""
    if notify.notify_type >= 8192:
        return
    counter = REFUSAL_COUNTERS.get(notify.notify_type, "negotiation failed")
    advice = " (check the pre-shared key or the certificates)" if counter == "authentication failed" else ""
    raise NegotiationError(f"peer {peer} refused {exchange}: {notify.name}{advice}", None, counter)


@dataclass(frozen=True)
class InboundReady:
    """The responder's quick mode 2 is leaving: its inbound SAs can be installed now, since the initiator
    may send on them as soon as it has sent quick mode 3 (which `done` follows, or a Failure)."""

    done: QuickModeDone

