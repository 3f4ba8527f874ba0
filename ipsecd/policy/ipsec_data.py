"""The binary ``ipsecData`` of the five IPsec directory classes ([MS-GPIPSEC] 2.2.1), declared as data.

A blob is one or more *records* and a terminating zero byte. A record is a 16-byte GUID naming its layout
(little-endian GUID byte order), a 4-byte little-endian body length, and the body. Every class stores one
record of its own kind; Windows' "Version Information Object" (an ``ipsecNFA``) stores a version record
followed by an NFA record. Integers are little-endian; IPv4 addresses are in network byte order; texts are a
4-byte byte length and NUL-terminated UTF-16LE.

Each record class lists its wire fields in ``FIELDS``, as ``ipsecd.ike.isakmp`` does for ISAKMP payloads;
one reader and one writer walk them. Windows leaves some padding uninitialised (0xCD fill, stale UTF-16
text): those bytes are fields too (``padding_*``, ``unused_*``), so a decoded blob encodes to the same bytes.
Bytes a record holds beyond its known fields (later Windows versions append some) are kept in ``extension``.

Decoding is bounded and strict: any inconsistency raises :class:`IpsecDataError` naming the object, the
field and the byte offset, never anything else.

>>> blob = bytes.fromhex("63212022 4c4f d111 863b00a0248d3021 04000000 302a0000 00".replace(" ", ""))
>>> decode("ipsecPolicy", blob)
PolicyData(polling_interval=10800, extension=b'')
>>> encode(PolicyData(polling_interval=10800)) == blob
True
"""

from __future__ import annotations

import struct
import uuid
from dataclasses import dataclass
from ipaddress import IPv4Address
from typing import Any, ClassVar, NoReturn, TypeVar

# What Samba's provisioned (Windows 2000) default objects carry; [MS-GPIPSEC] says 0x100 (256), which is
# what a policy written here carries. 598 is 0x256: the same number written in hexadecimal.
DATA_TYPE = 256
DATA_TYPES = (256, 598)

# Negotiation policy (filter action) attributes outside the blob: iPSECNegotiationPolicyType and -Action.
NEGOTIATION_TYPE_STANDARD = uuid.UUID("62f49e10-6c37-11d1-864c-14a300000000")
NEGOTIATION_TYPE_DEFAULT_RESPONSE = uuid.UUID("62f49e13-6c37-11d1-864c-14a300000000")
ACTION_BLOCK = uuid.UUID("3f91a819-7647-11d1-864d-d46a00000000")
ACTION_PERMIT = uuid.UUID("8a171dd2-77e3-11d1-8659-a04f00000000")
ACTION_NEGOTIATE = uuid.UUID("8a171dd3-77e3-11d1-8659-a04f00000000")
ACTION_NEGOTIATE_INBOUND_PASSTHROUGH = uuid.UUID("3f91a81a-7647-11d1-864d-d46a00000000")  # accept unsecured

# NFA: authentication method numbers and interface (connection) types.
AUTH_PRESHARED_KEY, AUTH_CERTIFICATE, AUTH_KERBEROS = 1, 3, 5
INTERFACE_ALL, INTERFACE_LAN, INTERFACE_REMOTE_ACCESS = 0xFFFFFFFD, 0xFFFFFFFE, 0xFFFFFFFF

# Negotiation policy offers: operation protocols; algorithm numbers of both main and quick mode.
OPERATION_AH, OPERATION_ESP = 1, 2
CIPHER_NONE, CIPHER_DES, CIPHER_3DES = 0, 1, 3
HASH_NONE, HASH_MD5, HASH_SHA1 = 0, 1, 2
DH_GROUP_1, DH_GROUP_2 = 1, 2
DH_GROUP_2048 = 0x10000000  # "High (2048)" of Windows Server 2003: not in Samba's blobs, unverified
KEY_BITS, ROUNDS = 64, 8  # what Windows writes beside every algorithm number

NO_ADDRESS = IPv4Address(0)
VERSION_RECORD = uuid.UUID("6a1f5c6f-72b7-11d2-acf0-0060b0ecca17")  # kept opaque


class IpsecDataError(ValueError):
    """A blob that does not decode (or a value that cannot be encoded); says which object, field and where."""

    def __init__(self, what: str, field: str, offset: int, reason: str):
        super().__init__(f"ipsecData of {what}: field {field} at offset {offset}: {reason}")
        self.what, self.field, self.offset, self.reason = what, field, offset, reason


class _Reader:
    """A position in one blob, the path of the field being read, and the error that names both."""

    def __init__(self, buf: bytes, what: str):
        self.buf, self.what, self.pos = buf, what, 0
        self.path: list[str] = []

    def fail(self, reason: str, at: int | None = None) -> NoReturn:
        raise IpsecDataError(self.what, ".".join(self.path) or "record", self.pos if at is None else at,
                             reason)

    def take(self, size: int, end: int) -> bytes:
        if size > end - self.pos:
            self.fail(f"needs {size} bytes, {end - self.pos} left")
        out = self.buf[self.pos : self.pos + size]
        self.pos += size
        return out


# --- fields: how one value sits in the blob -----------------------------------------------------------


class BlobField:
    """One wire field of a record or of an item in it; ``MIN_SIZE`` bounds item counts before reading."""

    MIN_SIZE: ClassVar[int] = 0

    def __init__(self, name: str):
        self.name = name

    def read(self, r: _Reader, end: int, values: dict[str, Any]) -> Any:
        raise NotImplementedError

    def write(self, obj: Any) -> bytes:
        raise NotImplementedError

    def min_size(self) -> int:
        return self.MIN_SIZE


class U32(BlobField):
    MIN_SIZE = 4
    FORMAT = "<I"

    def read(self, r, end, values):
        return struct.unpack(self.FORMAT, r.take(self.MIN_SIZE, end))[0]

    def write(self, obj):
        value = getattr(obj, self.name)
        if not 0 <= value < 1 << (8 * self.MIN_SIZE):
            raise ValueError(f"{type(obj).__name__}.{self.name}: {value} does not fit in {self.MIN_SIZE} "
                             "bytes")
        return struct.pack(self.FORMAT, value)


class U16(U32):
    MIN_SIZE = 2
    FORMAT = "<H"


class Raw(BlobField):
    """Bytes of a fixed size: padding and fields whose meaning is unknown, carried unchanged."""

    def __init__(self, name: str, size: int):
        super().__init__(name)
        self.size = size

    def min_size(self) -> int:
        return self.size

    def read(self, r, end, values):
        return r.take(self.size, end)

    def write(self, obj):
        value = getattr(obj, self.name)
        if len(value) != self.size:
            raise ValueError(f"{type(obj).__name__}.{self.name}: needs {self.size} bytes, not {len(value)}")
        return value


class Guid(BlobField):
    MIN_SIZE = 16

    def read(self, r, end, values):
        return uuid.UUID(bytes_le=r.take(16, end))

    def write(self, obj):
        return getattr(obj, self.name).bytes_le


class Address(BlobField):
    MIN_SIZE = 4

    def read(self, r, end, values):
        return IPv4Address(r.take(4, end))

    def write(self, obj):
        return getattr(obj, self.name).packed


class Text(BlobField):
    """A byte length and NUL-terminated UTF-16LE text; a length of 0 (no terminator) reads as None."""

    MIN_SIZE = 4

    def read(self, r, end, values):
        at = r.pos
        size = struct.unpack("<I", r.take(4, end))[0]
        if size == 0:
            return None
        if size % 2 or size > end - r.pos:
            r.fail(f"text length {size} is odd or more than the {end - r.pos} bytes left", at)
        raw = r.take(size, end)
        if raw[-2:] != b"\0\0":
            r.fail("text is not NUL-terminated", at)
        text = raw[:-2].decode("utf-16-le", "surrogatepass")  # even length: cannot fail
        if "\0" in text:
            r.fail("text holds a NUL before its end", at)
        return text

    def write(self, obj):
        value = getattr(obj, self.name)
        if value is None:
            return bytes(4)
        raw = value.encode("utf-16-le", "surrogatepass") + b"\0\0"
        return struct.pack("<I", len(raw)) + raw


class Items(BlobField):
    """A 4-byte count, then that many items of one kind."""

    MIN_SIZE = 4

    def __init__(self, name: str, kind: type[Struct]):
        super().__init__(name)
        self.kind = kind

    def read(self, r, end, values):
        at = r.pos
        count = struct.unpack("<I", r.take(4, end))[0]
        if count * self.kind.min_size() > end - r.pos:
            r.fail(f"count {count} of {self.kind.__name__} cannot fit in the {end - r.pos} bytes left", at)
        items = []
        for index in range(count):
            r.path.append(f"[{index}]")
            items.append(self.kind.read(r, end))
            r.path.pop()
        return tuple(items)

    def write(self, obj):
        items = getattr(obj, self.name)
        return struct.pack("<I", len(items)) + b"".join(item.encode() for item in items)


class Slots(Items):
    """A count, then a fixed number of item slots of which the first ``count`` are used.

    The unused slots' bytes (uninitialised memory in Windows' blobs) go to the field named ``unused``.
    """

    def __init__(self, name: str, kind: type[Struct], slots: int, unused: str):
        super().__init__(name, kind)
        self.slots, self.unused = slots, unused

    def min_size(self) -> int:
        return 4 + self.slots * self.kind.min_size()

    def read(self, r, end, values):
        at = r.pos
        count = struct.unpack("<I", r.take(4, end))[0]
        if count > self.slots:
            r.fail(f"count {count} is more than the {self.slots} slots", at)
        items = []
        for index in range(count):
            r.path.append(f"[{index}]")
            items.append(self.kind.read(r, end))
            r.path.pop()
        values[self.unused] = r.take((self.slots - count) * self.kind.min_size(), end)
        return tuple(items)

    def write(self, obj):
        items = getattr(obj, self.name)
        unused = getattr(obj, self.unused)
        if len(items) > self.slots or len(unused) != (self.slots - len(items)) * self.kind.min_size():
            raise ValueError(f"{type(obj).__name__}.{self.name}: {len(items)} items and {len(unused)} unused "
                             f"bytes do not fill {self.slots} slots")
        return struct.pack("<I", len(items)) + b"".join(i.encode() for i in items) + unused


class Extension(BlobField):
    """The bytes of a record after its known fields."""

    def read(self, r, end, values):
        return r.take(end - r.pos, end)

    def write(self, obj):
        return getattr(obj, self.name)


# --- structures ----------------------------------------------------------------------------------------


S = TypeVar("S", bound="Struct")


class Struct:
    """A dataclass whose wire layout is ``FIELDS``; its dataclass fields have the same names."""

    FIELDS: ClassVar[tuple[BlobField, ...]]

    @classmethod
    def min_size(cls) -> int:
        return sum(f.min_size() for f in cls.FIELDS)

    @classmethod
    def read(cls: type[S], r: _Reader, end: int) -> S:
        values: dict[str, Any] = {}
        for f in cls.FIELDS:
            r.path.append(f.name)
            values[f.name] = f.read(r, end, values)
            r.path.pop()
        return cls(**values)

    def encode(self) -> bytes:
        return b"".join(f.write(self) for f in self.FIELDS)


class Record(Struct):
    """A top-level record; ``KIND`` is the GUID that heads it."""

    KIND: ClassVar[uuid.UUID]


@dataclass(frozen=True)
class PolicyData(Record):
    """ipsecPolicy: how often (seconds) a member checks the directory for changes."""

    KIND = uuid.UUID("22202163-4f4c-11d1-863b-00a0248d3021")
    FIELDS = (U32("polling_interval"), Extension("extension"))
    polling_interval: int
    extension: bytes = b""


@dataclass(frozen=True)
class MainModeOfferData(Struct):
    """One main mode security method of an ISAKMP policy (64 bytes)."""

    FIELDS = (Raw("padding_0", 4), U32("cipher"), U32("cipher_key_bits"), U32("cipher_rounds"), U32("hash"),
              U32("hash_key_bits"), U32("hash_rounds"), Raw("unused_algorithm", 12), Raw("padding_40", 4),
              U32("dh_group"), U32("quick_mode_limit"), U32("lifetime_kb"), U32("lifetime_seconds"),
              Raw("padding_60", 4))
    cipher: int
    hash: int
    dh_group: int
    lifetime_seconds: int
    quick_mode_limit: int = 0  # quick modes per main mode, 0 = unlimited
    lifetime_kb: int = 0  # zero in every known blob; the snap-in offers no kilobyte limit
    cipher_key_bits: int = KEY_BITS
    cipher_rounds: int = ROUNDS
    hash_key_bits: int = KEY_BITS
    hash_rounds: int = 0
    padding_0: bytes = bytes(4)
    unused_algorithm: bytes = bytes(12)
    padding_40: bytes = bytes(4)
    padding_60: bytes = bytes(4)


@dataclass(frozen=True)
class IsakmpData(Record):
    """ipsecISAKMPPolicy: main mode (key exchange) settings and offers."""

    KIND = uuid.UUID("80dc20b8-2ec8-11d1-a89e-00a0248d3021")
    FIELDS = (Guid("policy_id"), U32("flags"), U32("master_key_pfs"), Raw("reserved", 36),
              Items("offers", MainModeOfferData), Extension("extension"))
    policy_id: uuid.UUID  # Windows' own identifier of the main mode policy; not the object's ipsecID
    offers: tuple[MainModeOfferData, ...]
    master_key_pfs: int = 0
    flags: int = 0  # zero in every known blob
    reserved: bytes = bytes(36)
    extension: bytes = b""


@dataclass(frozen=True)
class AuthEntry(Struct):
    """One authentication method of a rule: its number and its text (key, CA name, or empty for Kerberos)."""

    FIELDS = (U32("method"), Text("value"))
    method: int
    value: str | None = ""


@dataclass(frozen=True)
class NfaData(Record):
    """ipsecNFA (a rule): authentication methods, connection type, tunnel endpoint, active flag."""

    KIND = uuid.UUID("11bbac00-498d-11d1-8639-00a0248d3021")
    FIELDS = (Items("auth_methods", AuthEntry), U32("interface_type"), Text("interface_name"),
              Address("tunnel_address"), U32("tunnel_flags"), U32("active"), Text("endpoint_name"),
              Extension("extension"))
    auth_methods: tuple[AuthEntry, ...]
    interface_type: int = INTERFACE_ALL
    interface_name: str | None = ""
    tunnel_address: IPv4Address = NO_ADDRESS
    tunnel_flags: int = 0  # nonzero: tunnel mode to tunnel_address (no tunnel rule in the known blobs)
    active: int = 1
    endpoint_name: str | None = ""
    extension: bytes = b""


@dataclass(frozen=True)
class FilterEntry(Struct):
    """One filter of a filter list. 'My IP address' is 0.0.0.0 with mask 255.255.255.255, 'any' 0/0."""

    FIELDS = (Text("source_name"), Text("destination_name"), Text("description"), Guid("filter_id"),
              U32("mirrored"), Address("source_address"), Address("source_mask"),
              Address("destination_address"), Address("destination_mask"), U32("flags"), U32("protocol"),
              U16("source_port"), U16("destination_port"), U32("trailing_flags"))
    filter_id: uuid.UUID
    source_address: IPv4Address
    source_mask: IPv4Address
    destination_address: IPv4Address
    destination_mask: IPv4Address
    protocol: int = 0  # 0 = any
    source_port: int = 0  # 0 = any
    destination_port: int = 0
    mirrored: int = 1
    description: str | None = ""
    source_name: str | None = ""  # the DNS name the address came from, if any
    destination_name: str | None = ""
    flags: int = 0  # zero in every known blob
    trailing_flags: int = 0  # likewise


@dataclass(frozen=True)
class FilterData(Record):
    """ipsecFilter (a filter list): its filters."""

    KIND = uuid.UUID("80dc20b5-2ec8-11d1-a89e-00a0248d3021")
    FIELDS = (Items("entries", FilterEntry), Extension("extension"))
    entries: tuple[FilterEntry, ...]
    extension: bytes = b""


@dataclass(frozen=True)
class Operation(Struct):
    """One transform of a quick mode offer: ESP (cipher, integrity) or AH (integrity, 0)."""

    FIELDS = (U32("algorithm"), U32("secondary_algorithm"), U32("protocol"), U32("key_bits"), U32("rounds"))
    algorithm: int
    secondary_algorithm: int
    protocol: int
    key_bits: int = KEY_BITS
    rounds: int = ROUNDS


@dataclass(frozen=True)
class QuickModeOfferData(Struct):
    """One security method of a filter action (80 bytes); no operations = 'allow unsecured communication'."""

    FIELDS = (U32("lifetime_seconds"), U32("lifetime_kb"), U32("flags"), U32("pfs"),
              Slots("operations", Operation, 3, "unused_slots"))
    operations: tuple[Operation, ...]
    lifetime_seconds: int = 0  # 0 = Windows' default
    lifetime_kb: int = 0
    pfs: int = 0
    flags: int = 0  # zero in every known blob
    unused_slots: bytes = b""

    def __post_init__(self) -> None:
        if not self.unused_slots and len(self.operations) < 3:
            object.__setattr__(self, "unused_slots", bytes(20 * (3 - len(self.operations))))


@dataclass(frozen=True)
class NegotiationData(Record):
    """ipsecNegotiationPolicy (a filter action): its quick mode offers, in order."""

    KIND = uuid.UUID("80dc20b9-2ec8-11d1-a89e-00a0248d3021")
    FIELDS = (Items("offers", QuickModeOfferData), Extension("extension"))
    offers: tuple[QuickModeOfferData, ...]
    extension: bytes = b""


@dataclass(frozen=True)
class OpaqueRecord:
    """A record of a kind this codec does not know (the version record): its GUID and body, unchanged."""

    kind: uuid.UUID
    body: bytes

    def encode(self) -> bytes:
        return self.body


RECORDS: dict[uuid.UUID, type[Record]] = {
    cls.KIND: cls for cls in (PolicyData, IsakmpData, NfaData, FilterData, NegotiationData)}
CLASS_RECORDS: dict[str, type[Record]] = {
    "ipsecPolicy": PolicyData, "ipsecISAKMPPolicy": IsakmpData, "ipsecNFA": NfaData,
    "ipsecFilter": FilterData, "ipsecNegotiationPolicy": NegotiationData}

R = TypeVar("R", bound=Record)


@dataclass(frozen=True)
class IpsecData:
    """A whole blob: its records in order (the terminating zero byte is implied)."""

    records: tuple[Record | OpaqueRecord, ...]

    @classmethod
    def decode(cls, blob: bytes, what: str) -> IpsecData:
        r = _Reader(bytes(blob), what)
        records: list[Record | OpaqueRecord] = []
        while len(r.buf) - r.pos != 1 or not records:
            r.path = [f"records[{len(records)}]"]
            if records and r.pos == len(r.buf):
                r.fail("the blob ends without its terminating zero byte")
            header_at = r.pos
            kind = uuid.UUID(bytes_le=r.take(16, len(r.buf)))
            size = struct.unpack("<I", r.take(4, len(r.buf)))[0]
            if size > len(r.buf) - r.pos - 1:
                r.fail(f"record length {size} leaves no room for the terminator in the "
                       f"{len(r.buf) - r.pos} bytes left", header_at + 16)
            end = r.pos + size
            known = RECORDS.get(kind)
            if known is None:
                records.append(OpaqueRecord(kind, r.take(size, end)))
            else:
                r.path.append(known.__name__)
                records.append(known.read(r, end))
        if r.buf[r.pos] != 0:
            r.path = ["terminator"]
            r.fail(f"the byte after the last record is {r.buf[r.pos]:#04x}, not 0")
        return cls(tuple(records))

    def encode(self) -> bytes:
        out = bytearray()
        for record in self.records:
            body = record.encode()
            kind = record.kind if isinstance(record, OpaqueRecord) else record.KIND
            out += kind.bytes_le + struct.pack("<I", len(body)) + body
        return bytes(out + b"\0")

    def record(self, kind: type[R]) -> R | None:
        return next((rec for rec in self.records if isinstance(rec, kind)), None)


def decode(object_class: str, blob: bytes, what: str | None = None) -> Record:
    """The record of ``object_class`` ('ipsecFilter'...) in ``blob``; ``what`` names the object in errors."""
    kind = CLASS_RECORDS.get(object_class)
    label = what or object_class
    if kind is None:
        raise IpsecDataError(label, "objectClass", 0,
                             f"{object_class!r} is not one of {', '.join(CLASS_RECORDS)}")
    data = IpsecData.decode(blob, label)
    record = data.record(kind)
    if record is None:
        found = ", ".join(str(r.kind if isinstance(r, OpaqueRecord) else r.KIND) for r in data.records)
        raise IpsecDataError(label, "records", 0,
                             f"no {kind.__name__} record ({{{kind.KIND}}}); found {found}")
    return record


def encode(record: Record) -> bytes:
    """A blob holding just this record, as Windows writes one for each object."""
    return IpsecData((record,)).encode()

