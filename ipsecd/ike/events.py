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
    second chance, quick mode waits for its retransmission timer). ``point`` is who refused: "me" (this
    node's check) or "peer" (its error notify); ``windows`` the failure reason as Windows words it, when
    the notify and counter do not say it (see failure_reason)."""

    def __init__(
        self,
        reason: str,
        notify: int | None = None,
        counter: str = "negotiation failed",
        integrity: bool = False,
        point: str = "me",
        windows: str = "",
        cause: str = "",
    ):
        super().__init__(reason)
        self.reason, self.notify, self.counter, self.integrity = reason, notify, counter, integrity
        self.point, self.windows = point, windows or failure_reason(counter, notify)
        self.cause = cause  # why authentication failed, counted on its own (Kerberos: "clock skew", ...)


# The failure reasons as Windows words them: its IKE error texts, which Event 547 ("IKE security association
# negotiation failed") and the Oakley log give as "Failure Reason".
NO_POLICY = "No policy configured"
ATTRIBUTES_UNACCEPTABLE = "IKE security attributes are unacceptable"
CREDENTIALS_UNACCEPTABLE = "IKE authentication credentials are unacceptable"
SIGNATURE_FAILED = "Failed to verify signature"
INVALID_HASH = "Invalid hash"
NO_RESPONSE = "No response from peer"
INVALID_PAYLOAD = "Invalid payload received"
GENERAL_ERROR = "General processing error"

_BY_NOTIFY: dict[int, str] = {
    NotifyType.NO_PROPOSAL_CHOSEN: ATTRIBUTES_UNACCEPTABLE,
    NotifyType.AUTHENTICATION_FAILED: CREDENTIALS_UNACCEPTABLE,
    NotifyType.INVALID_CERTIFICATE: CREDENTIALS_UNACCEPTABLE,
    NotifyType.INVALID_CERT_AUTHORITY: CREDENTIALS_UNACCEPTABLE,
    NotifyType.CERTIFICATE_UNAVAILABLE: CREDENTIALS_UNACCEPTABLE,
    NotifyType.INVALID_SIGNATURE: SIGNATURE_FAILED,
    NotifyType.INVALID_HASH_INFORMATION: INVALID_HASH,
    NotifyType.INVALID_ID_INFORMATION: NO_POLICY,
    NotifyType.PAYLOAD_MALFORMED: INVALID_PAYLOAD,
}
_BY_COUNTER = {
    "no proposal chosen": ATTRIBUTES_UNACCEPTABLE,
    "authentication failed": CREDENTIALS_UNACCEPTABLE,
    "invalid selectors": NO_POLICY,
    "no policy for peer": NO_POLICY,
    "malformed message": INVALID_PAYLOAD,
    "no response": NO_RESPONSE,
}


def failure_reason(counter: str, notify: int | None = None) -> str:
    """Windows' words for a failure: from the notify it sends or got when that is specific, else the counter.

    >>> failure_reason("authentication failed", NotifyType.INVALID_SIGNATURE)
    'Failed to verify signature'
    >>> failure_reason("no response")
    'No response from peer'
    """
    missing_hash = notify == NotifyType.INVALID_HASH_INFORMATION and counter == "malformed message"
    if notify in _BY_NOTIFY and not missing_hash:
        return _BY_NOTIFY[notify]
    return _BY_COUNTER.get(counter, GENERAL_ERROR)


DETAIL_LENGTH = 320  # characters of a failure's detail (a refusal listing 255 transforms is said in part)
MAIN_MODE = "Key Exchange Mode (Main Mode)"
QUICK_MODE = "Data Protection Mode (Quick Mode)"


@dataclass
class Failure:
    """A negotiation that failed: ``reason`` in ipsecd's words (the detail), ``counter`` the one to bump,
    ``point`` who refused or gave up ("me" or "peer"), ``windows`` the reason as Windows words it."""

    reason: str
    counter: str  # "no proposal chosen", "authentication failed", ...
    point: str = "me"
    windows: str = ""
    cause: str = ""  # what made authentication fail: "KDC unreachable", "no credentials", ...

    def __post_init__(self) -> None:
        self.windows = self.windows or failure_reason(self.counter)

    @classmethod
    def of(cls, exc: NegotiationError) -> Failure:
        return cls(exc.reason, exc.counter, exc.point, exc.windows, exc.cause)

    def describe(self, mode: str, filter_text: str, peer_identity: str) -> str:
        """What a Windows administrator reads in Event 547 and the Oakley log, then the detail.

        >>> print(Failure("no answer from 10.0.0.2 after 6 retransmissions", "no response").describe(
        ...     MAIN_MODE, "rule a: 10.0.0.1 <-> 10.0.0.2", "pre-shared key, 10.0.0.2"))
        No response from peer. Mode: Key Exchange Mode (Main Mode). Filter: rule a: 10.0.0.1 <-> 10.0.0.2. \
Peer Identity: pre-shared key, 10.0.0.2. Failure Point: Me. Detail: no answer from 10.0.0.2 after 6 \
retransmissions
        """
        detail = self.reason if len(self.reason) <= DETAIL_LENGTH else self.reason[:DETAIL_LENGTH] + "..."
        return (f"{self.windows}. Mode: {mode}. Filter: {filter_text}. Peer Identity: {peer_identity}. "
                f"Failure Point: {self.point.capitalize()}. Detail: {detail}")


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
    raise NegotiationError(f"peer {peer} refused {exchange}: {notify.name}{advice}", None, counter,
                           point="peer", windows=failure_reason(counter, notify.notify_type))


@dataclass(frozen=True)
class InboundReady:
    """The responder's quick mode 2 is leaving: its inbound SAs can be installed now, since the initiator
    may send on them as soon as it has sent quick mode 3 (which `done` follows, or a Failure)."""

    done: QuickModeDone

