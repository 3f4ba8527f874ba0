"""ISAKMP (RFC 2408) message codec: header and payloads, declared as data.

Each payload lists its wire fields in ``FIELDS``; one small reader/writer walks
them, so a new payload is a class with a field list and nothing else. Parsing
is strict: every length is checked against what is left, and any
inconsistency raises :class:`MalformedMessage` naming the payload and the
byte offset, never anything else.

>>> msg = Message(icookie=b"\\x01" * 8, exchange=ExchangeType.MAIN_MODE,
...               payloads=[Nonce(data=b"\\x02" * 16), VendorID(data=b"x")])
>>> Message.decode(msg.encode()).payloads[0].data == b"\\x02" * 16
True
"""

from __future__ import annotations

import enum
import ipaddress
import struct
from dataclasses import dataclass, field, fields
from typing import Any, ClassVar


class MalformedMessage(ValueError):
    """A message that does not parse: what is wrong in words (``kind``: 'invalid payload length'), then
    which payload, where and the numbers.

    >>> str(MalformedMessage("ID", 28, "payload length 22315 with 64 bytes left", "invalid payload length"))
    'malformed message (invalid payload length): ID at offset 28: payload length 22315 with 64 bytes left'
    """

    def __init__(self, what: str, offset: int, reason: str, kind: str = "invalid payload"):
        super().__init__(f"malformed message ({kind}): {what} at offset {offset}: {reason}")
        self.what, self.offset, self.reason, self.kind = what, offset, reason, kind


class ExchangeType(enum.IntEnum):
    BASE = 1
    MAIN_MODE = 2  # identity protection
    AUTH_ONLY = 3
    AGGRESSIVE = 4
    INFORMATIONAL = 5
    QUICK_MODE = 32


class PayloadType(enum.IntEnum):
    NONE = 0
    SA = 1
    PROPOSAL = 2
    TRANSFORM = 3
    KE = 4
    ID = 5
    CERT = 6
    CERTREQ = 7
    HASH = 8
    SIG = 9
    NONCE = 10
    NOTIFY = 11
    DELETE = 12
    VENDOR_ID = 13
    NAT_D = 20  # RFC 3947
    NAT_OA = 21
    GSS_TOKEN = 129  # draft-ietf-ipsec-isakmp-gss-auth-07 §3.3 (private range): Kerberos in main mode
    NAT_D_DRAFT = 130  # draft-ietf-ipsec-nat-t-ike-02, what Windows 2003 sends
    NAT_OA_DRAFT = 131
    FRAGMENT = 132  # IKEv1 fragmentation (MS-IKEE §2.2.3; Cisco's, as strongSwan sends it)


class Flag(enum.IntFlag):
    ENCRYPTION = 0x01
    COMMIT = 0x02
    AUTH_ONLY = 0x04


class ProtocolID(enum.IntEnum):
    ISAKMP = 1
    AH = 2
    ESP = 3


class NotifyType(enum.IntEnum):
    """RFC 2408 §3.14.1 error types and RFC 2407 §4.6.3 status types."""

    INVALID_PAYLOAD_TYPE = 1
    INVALID_COOKIE = 4
    INVALID_EXCHANGE_TYPE = 7
    INVALID_FLAGS = 8
    INVALID_MESSAGE_ID = 9
    INVALID_SPI = 11
    NO_PROPOSAL_CHOSEN = 14
    PAYLOAD_MALFORMED = 16
    INVALID_KEY_INFORMATION = 17
    INVALID_ID_INFORMATION = 18
    INVALID_CERTIFICATE = 20
    CERT_TYPE_UNSUPPORTED = 21
    INVALID_CERT_AUTHORITY = 22
    INVALID_HASH_INFORMATION = 23
    AUTHENTICATION_FAILED = 24
    INVALID_SIGNATURE = 25
    CERTIFICATE_UNAVAILABLE = 28
    CONNECTED = 16384
    RESPONDER_LIFETIME = 24576
    REPLAY_STATUS = 24577
    INITIAL_CONTACT = 24578


class IDType(enum.IntEnum):
    IPV4_ADDR = 1
    FQDN = 2
    USER_FQDN = 3
    IPV4_ADDR_SUBNET = 4
    IPV6_ADDR = 5
    IPV6_ADDR_SUBNET = 6
    IPV4_ADDR_RANGE = 7
    IPV6_ADDR_RANGE = 8
    DER_ASN1_DN = 9
    DER_ASN1_GN = 10
    KEY_ID = 11


class CertEncoding(enum.IntEnum):
    X509_SIGNATURE = 4


DOI_IPSEC = 1
SITUATION_IDENTITY_ONLY = 1
HEADER_SIZE = 28
VERSION_1_0 = 0x10


# --- fields: how one value sits on the wire -------------------------------------------------------


class Field:
    """One wire field of a payload body; ``read`` returns (value, new position)."""

    def __init__(self, name: str):
        self.name = name

    def read(self, buf: bytes, pos: int, end: int, values: dict[str, Any]) -> tuple[Any, int]:
        raise NotImplementedError

    def write(self, obj: Any) -> bytes:
        raise NotImplementedError


class Int(Field):
    """Unsigned big-endian integer of 1, 2 or 4 bytes."""

    FORMATS: ClassVar[dict[int, str]] = {1: "!B", 2: "!H", 3: "!I", 4: "!I"}

    def __init__(self, name: str, size: int):
        super().__init__(name)
        self.size, self.fmt = size, self.FORMATS[size]

    def read(self, buf, pos, end, values):
        if end - pos < self.size:
            raise ValueError(f"field {self.name!r} needs {self.size} bytes, {end - pos} left")
        if self.size == 3:
            return int.from_bytes(buf[pos : pos + 3], "big"), pos + 3
        return struct.unpack_from(self.fmt, buf, pos)[0], pos + self.size

    def write(self, obj):
        value = self.value(obj)
        if not 0 <= value < 1 << (8 * self.size):
            raise ValueError(f"field {self.name!r} value {value} does not fit in {self.size} bytes")
        return value.to_bytes(self.size, "big")

    def value(self, obj) -> int:
        return getattr(obj, self.name)


class LengthOf(Int):
    """A size or count written from another field (SPI size, number of transforms...)."""

    def __init__(self, name: str, size: int, of: str, unit: int = 1):
        super().__init__(name, size)
        self.of, self.unit = of, unit

    def value(self, obj):
        return len(getattr(obj, self.of)) // self.unit


class Sized(Field):
    """Bytes whose length is the value of an earlier field (times ``unit``)."""

    def __init__(self, name: str, length_from: str, unit_from: str | None = None):
        super().__init__(name)
        self.length_from, self.unit_from = length_from, unit_from

    def read(self, buf, pos, end, values):
        size = values[self.length_from] * (values[self.unit_from] if self.unit_from else 1)
        if end - pos < size:
            raise ValueError(f"field {self.name!r} claims {size} bytes, {end - pos} left")
        return bytes(buf[pos : pos + size]), pos + size

    def write(self, obj):
        return getattr(obj, self.name)


class Rest(Field):
    """All bytes to the end of the payload body."""

    def read(self, buf, pos, end, values):
        return bytes(buf[pos:end]), end

    def write(self, obj):
        return getattr(obj, self.name)


class Attributes(Field):
    """Data attributes (RFC 2408 §3.3): TV when the AF bit is set, else TLV."""

    def read(self, buf, pos, end, values):
        attrs = []
        while pos < end:
            if end - pos < 4:
                raise ValueError(f"attribute header needs 4 bytes, {end - pos} left")
            kind, value = struct.unpack_from("!HH", buf, pos)
            pos += 4
            if kind & 0x8000:
                attrs.append(Attribute(kind & 0x7FFF, value))
                continue
            if end - pos < value:
                raise ValueError(f"attribute {kind} claims {value} bytes, {end - pos} left")
            attrs.append(Attribute(kind, bytes(buf[pos : pos + value])))
            pos += value
        return attrs, pos

    def write(self, obj):
        out = bytearray()
        for attr in getattr(obj, self.name):
            if isinstance(attr.value, int) and attr.value < 0x10000:
                out += struct.pack("!HH", attr.type | 0x8000, attr.value)
            else:
                value = attr.value if isinstance(attr.value, bytes) else attr.value.to_bytes(4, "big")
                out += struct.pack("!HH", attr.type, len(value)) + value
        return bytes(out)


class Chain(Field):
    """A chain of nested payloads (proposals in an SA, transforms in a proposal)."""

    def __init__(self, name: str, kind: type[Payload]):
        super().__init__(name)
        self.kind = kind

    def read(self, buf, pos, end, values):
        items, _, pos = _read_chain(buf, pos, end, self.kind.TYPE, {self.kind.TYPE: self.kind})
        return items, pos

    def write(self, obj):
        return _write_chain(getattr(obj, self.name))


# --- payloads --------------------------------------------------------------------------------------


@dataclass
class Attribute:
    type: int
    value: int | bytes

    def as_int(self) -> int:
        return self.value if isinstance(self.value, int) else int.from_bytes(self.value, "big")


class Payload:
    """Base of every payload: ``TYPE`` and the wire ``FIELDS`` of its body."""

    TYPE: ClassVar[int]
    FIELDS: ClassVar[tuple[Field, ...]]

    @classmethod
    def parse_body(cls, buf: bytes, pos: int, end: int) -> Payload:
        values: dict[str, Any] = {}
        for f in cls.FIELDS:
            try:
                values[f.name], pos = f.read(buf, pos, end, values)
            except MalformedMessage:
                raise
            except ValueError as exc:
                raise MalformedMessage(cls.__name__, pos, str(exc),
                                       f"invalid {cls.__name__} payload") from None
        if pos != end:
            raise MalformedMessage(cls.__name__, pos, f"{end - pos} unexpected bytes at the end",
                                   "invalid payload length")
        for f in cls.FIELDS:  # a count must say what follows: a payload is re-encoded for hashes and replies
            if isinstance(f, LengthOf) and f.unit == 1 and len(values[f.of]) != values[f.name]:
                raise MalformedMessage(cls.__name__, pos, f"{f.name} {values[f.name]} but "
                                       f"{len(values[f.of])} {f.of} follow", "inconsistent count")
        names = {f.name for f in fields(cls)}  # type: ignore[arg-type]
        return cls(**{k: v for k, v in values.items() if k in names})

    def body(self) -> bytes:
        return b"".join(f.write(self) for f in self.FIELDS)


@dataclass
class Transform(Payload):
    TYPE = PayloadType.TRANSFORM
    FIELDS = (Int("number", 1), Int("transform_id", 1), Int("reserved", 2), Attributes("attributes"))
    number: int
    transform_id: int
    attributes: list[Attribute] = field(default_factory=list)
    reserved: int = 0

    def attr(self, kind: int, default: int | None = None) -> int | None:
        """The first attribute of this type as an integer."""
        for a in self.attributes:
            if a.type == kind:
                return a.as_int()
        return default


@dataclass
class Proposal(Payload):
    TYPE = PayloadType.PROPOSAL
    FIELDS = (
        Int("number", 1),
        Int("protocol", 1),
        LengthOf("spi_size", 1, "spi"),
        LengthOf("transform_count", 1, "transforms"),
        Sized("spi", "spi_size"),
        Chain("transforms", Transform),
    )
    number: int
    protocol: int
    spi: bytes = b""
    transforms: list[Transform] = field(default_factory=list)


@dataclass
class SA(Payload):
    TYPE = PayloadType.SA
    FIELDS = (Int("doi", 4), Int("situation", 4), Chain("proposals", Proposal))
    proposals: list[Proposal] = field(default_factory=list)
    doi: int = DOI_IPSEC
    situation: int = SITUATION_IDENTITY_ONLY


@dataclass
class Opaque(Payload):
    """A payload whose body is one opaque value (KE, HASH, SIG, NONCE, vendor ID, NAT-D)."""

    FIELDS = (Rest("data"),)
    data: bytes


@dataclass
class KE(Opaque):
    TYPE = PayloadType.KE


@dataclass
class ID(Payload):
    """Identification (RFC 2407 §4.6.2): phase 1 identity or quick mode selector."""

    TYPE = PayloadType.ID
    FIELDS = (Int("id_type", 1), Int("protocol", 1), Int("port", 2), Rest("data"))
    id_type: int
    data: bytes
    protocol: int = 0
    port: int = 0

    @classmethod
    def for_network(cls, network: ipaddress.IPv4Network, protocol: int = 0, port: int = 0) -> ID:
        """ID_IPV4_ADDR for a host, ID_IPV4_ADDR_SUBNET otherwise (as Windows sends them)."""
        if network.prefixlen == 32:
            return cls(IDType.IPV4_ADDR, network.network_address.packed, protocol, port)
        return cls(
            IDType.IPV4_ADDR_SUBNET, network.network_address.packed + network.netmask.packed, protocol, port
        )

    def network(self) -> ipaddress.IPv4Network:
        """The selector as a network; ValueError for identity types that are not addresses."""
        if self.id_type == IDType.IPV4_ADDR and len(self.data) == 4:
            return ipaddress.IPv4Network(ipaddress.IPv4Address(self.data))
        if self.id_type == IDType.IPV4_ADDR_SUBNET and len(self.data) == 8:
            addr, mask = ipaddress.IPv4Address(self.data[:4]), ipaddress.IPv4Address(self.data[4:])
            return ipaddress.IPv4Network(f"{addr}/{mask}", strict=False)
        raise ValueError(f"ID type {self.id_type} with {len(self.data)} bytes is not an IPv4 selector")


@dataclass
class Cert(Payload):
    TYPE = PayloadType.CERT
    FIELDS = (Int("encoding", 1), Rest("data"))
    data: bytes
    encoding: int = CertEncoding.X509_SIGNATURE


@dataclass
class CertRequest(Payload):
    TYPE = PayloadType.CERTREQ
    FIELDS = (Int("encoding", 1), Rest("authority"))
    authority: bytes = b""
    encoding: int = CertEncoding.X509_SIGNATURE


@dataclass
class Hash(Opaque):
    TYPE = PayloadType.HASH


@dataclass
class Signature(Opaque):
    TYPE = PayloadType.SIG


@dataclass
class Nonce(Opaque):
    TYPE = PayloadType.NONCE


@dataclass
class Notify(Payload):
    TYPE = PayloadType.NOTIFY
    FIELDS = (
        Int("doi", 4),
        Int("protocol", 1),
        LengthOf("spi_size", 1, "spi"),
        Int("notify_type", 2),
        Sized("spi", "spi_size"),
        Rest("data"),
    )
    notify_type: int
    protocol: int = ProtocolID.ISAKMP
    spi: bytes = b""
    data: bytes = b""
    doi: int = DOI_IPSEC

    @property
    def name(self) -> str:
        try:
            return NotifyType(self.notify_type).name.replace("_", "-")
        except ValueError:
            return f"notify type {self.notify_type}"

    @classmethod
    def responder_lifetime(cls, protocol: int, spi: bytes, seconds: int | None, kilobytes: int | None = None
                           ) -> Notify:
        """RESPONDER-LIFETIME (RFC 2407 §4.6.3.1): the shorter lifetime(s) the responder chose, as a list of
        life type and life duration attributes; `spi` names the SA (cookies in phase 1)."""
        life_type, duration = _lifetime_classes(protocol)
        attributes = []
        for kind, value in ((1, seconds), (2, kilobytes)):  # 1 seconds, 2 kilobytes in both numberings
            if value is not None:
                attributes += [Attribute(life_type, kind), Attribute(duration, value)]
        data = Attributes("attributes").write(_AttributeList(attributes))
        return cls(NotifyType.RESPONDER_LIFETIME, protocol, spi, data)

    def lifetimes(self) -> tuple[int | None, int | None]:
        """(seconds, kilobytes) of a RESPONDER-LIFETIME notify, None where it names none; MalformedMessage if
        its data is not an attribute list."""
        life_type, duration = _lifetime_classes(self.protocol)
        try:
            attributes, _ = Attributes("attributes").read(self.data, 0, len(self.data), {})
        except ValueError as exc:
            raise MalformedMessage("Notify", 0, f"RESPONDER-LIFETIME: {exc}") from None
        found: dict[int, int] = {}
        kind = None
        for a in attributes:
            if a.type == life_type:
                kind = a.as_int()
            elif a.type == duration and kind in (1, 2):
                found[kind] = a.as_int()
        return found.get(1), found.get(2)


def _lifetime_classes(protocol: int) -> tuple[int, int]:
    """The attribute classes of a lifetime pair (type, duration): Oakley's for the ISAKMP SA (RFC 2409
    App. A), the IPsec DOI's for ESP and AH (RFC 2407 §4.5)."""
    return (11, 12) if protocol == ProtocolID.ISAKMP else (1, 2)


@dataclass
class _AttributeList:
    """What the Attributes field writes from: a notify's data as an attribute list."""

    attributes: list[Attribute]


@dataclass
class Delete(Payload):
    """Delete (RFC 2408 §3.15): ISAKMP SAs by cookie pair (16 bytes), ESP/AH by 4-byte SPI."""

    TYPE = PayloadType.DELETE
    FIELDS = (
        Int("doi", 4),
        Int("protocol", 1),
        Int("spi_size", 1),
        Int("count", 2),
        Sized("spi_bytes", "count", unit_from="spi_size"),
    )
    protocol: int
    spi_size: int
    count: int
    spi_bytes: bytes
    doi: int = DOI_IPSEC

    @classmethod
    def of(cls, protocol: int, spis: list[bytes]) -> Delete:
        size = len(spis[0]) if spis else 4
        return cls(protocol, size, len(spis), b"".join(spis))

    @property
    def spis(self) -> list[bytes]:
        size = self.spi_size
        return [self.spi_bytes[i : i + size] for i in range(0, size * self.count, size)] if size else []


@dataclass
class VendorID(Opaque):
    TYPE = PayloadType.VENDOR_ID


@dataclass
class GssToken(Opaque):
    """A GSS-API token (Kerberos AP-REQ / AP-REP in main mode 3/4), the bare token as racoon sends it."""

    TYPE = PayloadType.GSS_TOKEN


@dataclass
class NatD(Opaque):
    TYPE = PayloadType.NAT_D


@dataclass
class NatDDraft(NatD):
    TYPE = PayloadType.NAT_D_DRAFT


@dataclass
class NatOA(Payload):
    TYPE = PayloadType.NAT_OA
    FIELDS = (Int("id_type", 1), Int("reserved", 3), Rest("address"))
    address: bytes
    id_type: int = IDType.IPV4_ADDR
    reserved: int = 0


@dataclass
class NatOADraft(NatOA):
    TYPE = PayloadType.NAT_OA_DRAFT


@dataclass
class Fragment(Payload):
    """One piece of an IKE message cut to fit the path (MS-IKEE §2.2.3): the pieces' data, in order of
    their numbers (from 1, the last flagged), is the whole message, ISAKMP header included."""

    TYPE = PayloadType.FRAGMENT
    LAST = 0x01
    FIELDS = (Int("fragment_id", 2), Int("number", 1), Int("flags", 1), Rest("data"))
    fragment_id: int
    number: int
    data: bytes
    flags: int = 0


@dataclass
class Unknown(Payload):
    """A payload type we do not know: kept as raw bytes so the exchange can refuse it."""

    TYPE = -1
    FIELDS = (Rest("data"),)
    data: bytes
    payload_type: int = 0


TOP_LEVEL: dict[int, type[Payload]] = {
    cls.TYPE: cls
    for cls in (
        SA,
        KE,
        ID,
        Cert,
        CertRequest,
        Hash,
        Signature,
        Nonce,
        Notify,
        Delete,
        VendorID,
        GssToken,
        NatD,
        NatDDraft,
        NatOA,
        NatOADraft,
        Fragment,
    )
}


def _payload_type(p: Payload) -> int:
    return p.payload_type if isinstance(p, Unknown) else p.TYPE


def _read_chain(
    buf: bytes, pos: int, end: int, first: int, kinds: dict[int, type[Payload]], trailing_ok: bool = False
) -> tuple[list[Payload], int, int]:
    """Walk generic payload headers (RFC 2408 §3.2); returns (payloads, trailing bytes, end position)."""
    items: list[Payload] = []
    kind = first
    while kind != PayloadType.NONE:
        cls = kinds.get(kind, Unknown)
        name = cls.__name__ if cls is not Unknown else f"payload type {kind}"
        if end - pos < 4:
            raise MalformedMessage(name, pos, f"generic header needs 4 bytes, {end - pos} left",
                                   "truncated payload")
        next_kind, _reserved, length = struct.unpack_from("!BBH", buf, pos)
        if length < 4 or length > end - pos:
            raise MalformedMessage(name, pos, f"payload length {length} with {end - pos} bytes left",
                                   "invalid payload length")
        item = cls.parse_body(buf, pos + 4, pos + length)
        if isinstance(item, Unknown):
            item.payload_type = kind
        items.append(item)
        pos += length
        kind = next_kind
    if pos != end and not trailing_ok:
        raise MalformedMessage("payload chain", pos, f"{end - pos} bytes after the last payload",
                               "bytes after the last payload")
    return items, end - pos, pos


def _write_chain(items: list[Payload]) -> bytes:
    out = bytearray()
    for i, item in enumerate(items):
        body = item.body()
        next_kind = _payload_type(items[i + 1]) if i + 1 < len(items) else 0
        if len(body) + 4 > 0xFFFF:
            raise ValueError(f"{type(item).__name__} too long ({len(body)} bytes)")
        out += struct.pack("!BBH", next_kind, 0, len(body) + 4) + body
    return bytes(out)


def parse_payloads(first: int, body: bytes, offset: int = HEADER_SIZE, padded: bool = False) -> list[Payload]:
    """Parse a top-level payload chain; ``padded`` allows the zero padding of a decrypted body."""
    buf = bytes(offset) + body  # offsets in errors count from the start of the message
    items, _, _ = _read_chain(buf, offset, len(buf), first, TOP_LEVEL, trailing_ok=padded)
    return items


def build_payloads(items: list[Payload]) -> tuple[int, bytes]:
    """(type of the first payload, bytes of the chain)."""
    return (_payload_type(items[0]) if items else 0), _write_chain(items)


# --- the message -----------------------------------------------------------------------------------


@dataclass
class Message:
    """An ISAKMP message. When ``flags`` has ENCRYPTION, ``payloads`` is empty after ``decode`` and
    ``body`` holds the ciphertext; the exchange decrypts it and calls :func:`parse_payloads`."""

    icookie: bytes
    rcookie: bytes = bytes(8)
    exchange: int = ExchangeType.MAIN_MODE
    flags: int = 0
    message_id: int = 0
    payloads: list[Payload] = field(default_factory=list)
    next_payload: int = 0
    body: bytes = b""
    version: int = VERSION_1_0

    HEADER: ClassVar[str] = "!8s8sBBBBII"

    def header(self, next_payload: int, body_length: int) -> bytes:
        return struct.pack(
            self.HEADER,
            self.icookie,
            self.rcookie,
            next_payload,
            self.version,
            self.exchange,
            self.flags,
            self.message_id,
            HEADER_SIZE + body_length,
        )

    def encode(self) -> bytes:
        """Plain message bytes (for an encrypted message use the exchange's protect())."""
        first, body = build_payloads(self.payloads)
        return self.header(first, len(body)) + body

    @classmethod
    def decode(cls, data: bytes) -> Message:
        if len(data) < HEADER_SIZE:
            raise MalformedMessage("ISAKMP header", 0, f"needs {HEADER_SIZE} bytes, got {len(data)}",
                                   "truncated header")
        icky, rcky, first, version, exchange, flags, mid, length = struct.unpack_from(cls.HEADER, data)
        if length != len(data):
            raise MalformedMessage("ISAKMP header", 24, f"length field {length}, datagram {len(data)}",
                                   "invalid header length")
        if version >> 4 != 1:
            raise MalformedMessage("ISAKMP header", 17, f"major version {version >> 4}, not IKEv1",
                                   "invalid major version")
        msg = cls(
            icky, rcky, exchange, flags, mid, next_payload=first, body=data[HEADER_SIZE:], version=version
        )
        if not flags & Flag.ENCRYPTION:
            msg.payloads = parse_payloads(first, msg.body)
        return msg

    def first(self, kind: type[Payload]) -> Any:
        """The first payload of this class (exact class match), or None."""
        return next((p for p in self.payloads if type(p) is kind), None)

    def all(self, kind: type[Payload]) -> list[Any]:
        return [p for p in self.payloads if isinstance(p, kind)]


def payload_names(payloads: list[Payload]) -> str:
    """A short description like 'HASH, SA, NONCE, ID, ID' for logs."""
    names = []
    for p in payloads:
        kind = _payload_type(p)
        try:
            names.append(PayloadType(kind).name.replace("_", "-"))
        except ValueError:
            names.append(str(kind))
    return ", ".join(names)
