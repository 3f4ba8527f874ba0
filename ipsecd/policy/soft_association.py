"""Soft associations: when a negotiate filter may fall back to clear text, and when it never may.

Windows (KB Q234580): the initiator sends IKE and gets no answer (nothing, or ICMP unreachable); if the
filter action allows "unsecured communication with non-IPsec-aware computers", it then installs a *soft
association*, an SA with no protection, and the traffic flows in clear; ipsecmon counts it under "Soft
Associations". Once the peer has answered IKE it is IPsec-aware, and a failed negotiation never falls back.

This is the decision alone, per peer, with time passed in: the daemon calls ``negotiation_started`` when
IKE sends the first main mode message, ``peer_answered`` on any IKE reply, ``verdict`` for each packet
the driver holds for that peer, and ``expire`` when the soft association idles out (5 minutes, the
quick mode idle timer), after which the next packet tries IKE again.

>>> from ipsecd.driver import spd
>>> request = spd.SPDAction("request", spd.Action.NEGOTIATE, (spd.SecurityMethod(),),
...                            fallback_to_clear=True)
>>> soft = SoftAssociations(timeout=3.0)
>>> soft.negotiation_started("10.0.0.9", now=100.0)
>>> soft.verdict("10.0.0.9", request, now=101.0), soft.verdict("10.0.0.9", request, now=103.0), soft.count
(<Verdict.WAIT: 'wait'>, <Verdict.CLEAR: 'clear'>, 1)
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from ipaddress import IPv4Address

from ipsecd.driver import spd

# Windows Server 2003 falls back after about 3 s of silence (reported, not verified in a capture).
DEFAULT_TIMEOUT = 3.0

Peer = str | IPv4Address


class Verdict(StrEnum):
    WAIT = "wait"  # IKE is still trying (or the peer answered and IKE is negotiating): hold or drop
    CLEAR = "clear"  # a soft association: send in clear
    DROP = "drop"  # no answer and the action does not allow clear text: nothing gets through


@dataclass
class PeerState:
    started: float  # when IKE first sent to this peer
    answered: bool = False
    soft: bool = False


class SoftAssociations:
    """Per-peer fallback state and the ipsecmon 'Soft Associations' count."""

    def __init__(self, timeout: float = DEFAULT_TIMEOUT) -> None:
        self.timeout = timeout
        self.count = 0
        self.peers: dict[str, PeerState] = {}

    def negotiation_started(self, peer: Peer, now: float) -> None:
        self.peers.setdefault(str(peer), PeerState(now))

    def peer_answered(self, peer: Peer) -> None:
        """Any IKE message from the peer: it speaks IPsec, so never fall back to clear with it."""
        state = self.peers.get(str(peer))
        if state:
            state.answered, state.soft = True, False

    def verdict(self, peer: Peer, action: spd.SPDAction, now: float) -> Verdict:
        state = self.peers.get(str(peer))
        if state is None or state.answered:
            return Verdict.WAIT
        if state.soft:
            return Verdict.CLEAR
        if now - state.started < self.timeout:
            return Verdict.WAIT
        if not action.fallback_to_clear:
            return Verdict.DROP
        state.soft = True
        self.count += 1
        return Verdict.CLEAR

    def expire(self, peer: Peer) -> None:
        """Forget the peer (soft association idle, or its SAs deleted): the next packet negotiates again."""
        self.peers.pop(str(peer), None)

    def is_soft(self, peer: Peer) -> bool:
        state = self.peers.get(str(peer))
        return bool(state and state.soft)
