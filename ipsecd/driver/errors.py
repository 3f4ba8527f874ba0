"""Why the driver drops a packet: one exception class per reason, each naming the counter
(ipsecd.counters) the drop is counted under. Shared by ESP, AH, the SAD and the IPv4 helpers."""
from __future__ import annotations


class IPsecError(Exception):
    """A packet was dropped; ``counter`` is the counters.py key it is counted under."""

    counter: str | None = "malformed_packets"


class BadPacket(IPsecError):
    """Malformed: truncated, wrong lengths, unsupported header, wrong SPI for this SA."""


class UnknownSPI(IPsecError):
    """No SA for this SPI/destination/protocol (RFC 4301 §5.2 'invalid SPI')."""

    counter = "bad_spi_packets"


class AuthenticationFailed(IPsecError):
    """ICV (HMAC or AEAD tag) did not verify (RFC 4303 §3.4.4): a modified packet."""

    counter = "packets_not_authenticated"


class DecryptionFailed(IPsecError):
    """Decrypted payload is not a valid ESP payload (bad padding or pad length)."""

    counter = "packets_not_decrypted"


class Replayed(IPsecError):
    """Duplicate or too old for the anti-replay window (RFC 4303 §3.4.3)."""

    counter = "replayed_packets"


class SAExpired(IPsecError):
    """Outbound SA unusable: hard lifetime reached or sequence numbers exhausted."""

    counter = None


class CongestionDrop(IPsecError):
    """Tunnel mode: the outer header is marked CE but the inner packet is not ECN-capable, so the
    congestion can only be signalled by dropping it (RFC 6040 §4.2)."""

    counter = "ecn_drops"


class DummyPacket(IPsecError):
    """Next header 59: a TFC dummy packet, silently discarded (RFC 4303 §2.6)."""

    counter = None
