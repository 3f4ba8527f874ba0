"""The IPsec driver's counters, named as ipsecmon names them.

Windows 2000 ``ipsecmon`` (KB Q231587) shows Active Associations, Confidential
and Authenticated Bytes Sent/Received, Bad SPI Packets, Packets Not Decrypted,
Packets Not Authenticated and Key Additions; Windows 2003's IP Security Monitor
adds Key Deletions, Packets With Replay Detection and the transport/tunnel byte
counts.  "Packets Dropped By Policy", "Malformed Packets" and the congestion drops of tunnel
mode's ECN rules (RFC 6040) are ours.

>>> c = Counters()
>>> c.bad_spi_packets += 1
>>> c.as_dict()["bad_spi_packets"], dict(c.rows())["Bad SPI Packets"]
(1, 1)
"""
from __future__ import annotations

# (key, ipsecmon label); the order is the display order
GLOBAL_COUNTERS: tuple[tuple[str, str], ...] = (
    ("active_sas", "Active Associations"),
    ("key_additions", "Key Additions"),
    ("key_deletions", "Key Deletions"),
    ("confidential_bytes_sent", "Confidential Bytes Sent"),
    ("confidential_bytes_received", "Confidential Bytes Received"),
    ("authenticated_bytes_sent", "Authenticated Bytes Sent"),
    ("authenticated_bytes_received", "Authenticated Bytes Received"),
    ("transport_bytes_sent", "Transport Bytes Sent"),
    ("transport_bytes_received", "Transport Bytes Received"),
    ("tunnel_bytes_sent", "Bytes Sent In Tunnels"),
    ("tunnel_bytes_received", "Bytes Received In Tunnels"),
    ("bad_spi_packets", "Bad SPI Packets"),
    ("packets_not_decrypted", "Packets Not Decrypted"),
    ("packets_not_authenticated", "Packets Not Authenticated"),
    ("replayed_packets", "Packets With Replay Detection"),
    ("malformed_packets", "Malformed Packets"),
    ("dropped_by_policy", "Packets Dropped By Policy"),
    ("ecn_drops", "Packets Dropped For Congestion (ECN)"),
)

SA_COUNTERS: tuple[tuple[str, str], ...] = (
    ("packets", "Packets"),
    ("bytes", "Bytes"),
    ("packets_not_decrypted", "Packets Not Decrypted"),
    ("packets_not_authenticated", "Packets Not Authenticated"),
    ("replayed_packets", "Packets With Replay Detection"),
    ("malformed_packets", "Malformed Packets"),
    ("ecn_drops", "Packets Dropped For Congestion (ECN)"),
)


class _CounterSet:
    """Counters as int attributes, one per FIELDS key; each subclass declares them (for the type checker)."""

    FIELDS: tuple[tuple[str, str], ...] = ()
    __slots__ = ()

    def __init_subclass__(cls) -> None:
        declared = tuple(k for k in cls.__annotations__ if k != "FIELDS")
        if declared != tuple(key for key, _ in cls.FIELDS):
            raise TypeError(f"{cls.__name__}: declared counters {declared} differ from FIELDS")

    def __init__(self) -> None:
        for key, _ in self.FIELDS:
            setattr(self, key, 0)

    def count(self, key: str, amount: int = 1) -> None:
        setattr(self, key, getattr(self, key) + amount)

    def as_dict(self) -> dict[str, int]:
        """{key: value}, for JSON (ipsecctl --json)."""
        return {key: getattr(self, key) for key, _ in self.FIELDS}

    def rows(self) -> list[tuple[str, int]]:
        """[(ipsecmon label, value)], for display."""
        return [(label, getattr(self, key)) for key, label in self.FIELDS]

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.as_dict()})"


class Counters(_CounterSet):
    """Global counters. Byte counters of live SAs are added by ``SAD.snapshot()``."""

    FIELDS = GLOBAL_COUNTERS
    __slots__ = tuple(key for key, _ in GLOBAL_COUNTERS)
    active_sas: int
    key_additions: int
    key_deletions: int
    confidential_bytes_sent: int
    confidential_bytes_received: int
    authenticated_bytes_sent: int
    authenticated_bytes_received: int
    transport_bytes_sent: int
    transport_bytes_received: int
    tunnel_bytes_sent: int
    tunnel_bytes_received: int
    bad_spi_packets: int
    packets_not_decrypted: int
    packets_not_authenticated: int
    replayed_packets: int
    malformed_packets: int
    dropped_by_policy: int
    ecn_drops: int


class SACounters(_CounterSet):
    """Per-SA counters: protected packets/bytes (one direction) and drops."""

    FIELDS = SA_COUNTERS
    __slots__ = tuple(key for key, _ in SA_COUNTERS)
    packets: int
    bytes: int
    packets_not_decrypted: int
    packets_not_authenticated: int
    replayed_packets: int
    malformed_packets: int
    ecn_drops: int
