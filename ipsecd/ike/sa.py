"""IKE's security associations: the main mode SA (:class:`IsakmpSA`) that protects phase 2, and the quick
mode result (:class:`QuickModeDone`, both directions as :class:`ChildSA`) that the driver installs."""

from __future__ import annotations

from dataclasses import dataclass, field

from ipsecd.ike import isakmp, natt, oakley
from ipsecd.ike.events import NegotiationError
from ipsecd.ike.isakmp import ExchangeType, Flag, MalformedMessage, Message, NotifyType
from ipsecd.ike.settings import QuickModeOffer, Selector

MAX_IV_CHAINS = 64  # phase 2 exchanges of one main mode SA whose IV we keep


@dataclass
class IsakmpSA:
    """An established main mode SA: keys, peers, and the IV state of each phase 2 message ID."""

    icookie: bytes
    rcookie: bytes
    initiator: bool
    suite: oakley.Phase1Suite
    keys: oakley.Phase1Keys = field(repr=False)
    lifetime: int
    local: tuple[str, int]
    remote: tuple[str, int]
    auth_method: str
    peer_identity: str
    last_block: bytes  # last CBC block of main mode: seeds every phase 2 IV
    nat: natt.NatStatus | None = None
    natt_variant: natt.Variant | None = None
    peer_vendor_ids: list[bytes] = field(default_factory=list)
    ivs: dict[int, bytes] = field(default_factory=dict)

    @property
    def cookies(self) -> bytes:
        return self.icookie + self.rcookie

    def describe(self) -> str:
        return (
            f"main mode SA {self.icookie.hex()}:{self.rcookie.hex()} {self.local[0]} <-> {self.remote[0]} "
            f"({self.suite.describe()}, {self.auth_method}, peer {self.peer_identity})"
        )

    def _iv(self, message_id: int) -> bytes:
        """The IV chain of a phase 2 exchange; a message ID not seen yet starts one (App. B), stored only
        once a message of it is sealed or opened, and at most MAX_IV_CHAINS kept (the oldest go): message
        IDs come from the network."""
        iv = self.ivs.get(message_id)
        return iv if iv is not None else oakley.phase2_iv(self.suite, self.last_block, message_id)

    def _chain(self, message_id: int, body: bytes) -> None:
        self.ivs.pop(message_id, None)
        self.ivs[message_id] = body[-self.suite.cipher.block_size :]
        if len(self.ivs) > MAX_IV_CHAINS:
            del self.ivs[next(iter(self.ivs))]

    def seal(self, exchange: int, message_id: int, payloads: list[isakmp.Payload]) -> bytes:
        """Encrypt a phase 2 message and advance its IV chain."""
        first, plain = isakmp.build_payloads(payloads)
        body = self.suite.cipher.encrypt(self.keys.ka, self._iv(message_id), plain)
        self._chain(message_id, body)
        head = Message(self.icookie, self.rcookie, exchange, Flag.ENCRYPTION, message_id)
        return head.header(first, len(body)) + body

    def open(self, msg: Message) -> list[isakmp.Payload]:
        """Decrypt a phase 2 message; the IV chain moves on only when it parses."""
        if not msg.flags & Flag.ENCRYPTION:
            raise NegotiationError(
                f"{ExchangeType(msg.exchange).name} message not encrypted",
                NotifyType.INVALID_FLAGS,
                "malformed message",
                integrity=True,
            )
        try:
            plain = self.suite.cipher.decrypt(self.keys.ka, self._iv(msg.message_id), msg.body)
            payloads = isakmp.parse_payloads(msg.next_payload, plain, padded=True)
        except (ValueError, MalformedMessage) as exc:
            raise NegotiationError(
                f"could not decrypt message {msg.message_id:#x}: {exc}",
                NotifyType.PAYLOAD_MALFORMED,
                "malformed message",
                integrity=True,
            ) from None
        self._chain(msg.message_id, msg.body)
        return payloads

    def forget(self, message_id: int) -> None:
        self.ivs.pop(message_id, None)


@dataclass(frozen=True)
class ChildSA:
    """One direction of a quick mode SA pair, named as the driver's SAD names an SA's fields
    (``SecurityAssociation(**dataclasses.asdict(child))`` plus lifetimes) and its algorithms."""

    spi: int
    protocol: str  # esp or ah
    direction: str  # inbound or outbound
    mode: str  # transport or tunnel
    src: str  # outer addresses of this direction
    dst: str
    encryption: str  # driver names: des-cbc, 3des-cbc, aes-cbc-128, ..., null
    encryption_key: bytes = field(repr=False)
    integrity: str | None  # hmac-md5-96, hmac-sha1-96, hmac-sha256-128
    integrity_key: bytes = field(repr=False)
    udp_encap: tuple[int, int] | None  # (source port, destination port) of ESP in UDP
    inner: ChildSA | None = None  # AH+ESP bundle: this is the AH SA, ``inner`` the ESP SA below it

    def chain(self) -> list[ChildSA]:
        """This SA and the ones bundled below it."""
        return [self, *(self.inner.chain() if self.inner else [])]


@dataclass(frozen=True)
class QuickModeDone:
    """Quick mode SAs: both directions, algorithms, mode, selectors, lifetimes, NAT-T encapsulation."""

    inbound: ChildSA
    outbound: ChildSA
    mode: str  # transport or tunnel
    local_selector: Selector
    remote_selector: Selector
    offer: QuickModeOffer
    lifetime_seconds: int
    lifetime_kb: int
    udp_encapsulation: tuple[int, int] | None  # (local port, remote port) when ESP goes in UDP
    isakmp_sa: IsakmpSA = field(repr=False)
    message_id: int = 0
    peer_original_address: str | None = None  # NAT-OA: the peer's own address, for transport checksums

    def describe(self) -> str:
        enc = f", UDP-encapsulated {self.udp_encapsulation[1]}" if self.udp_encapsulation else ""
        return (
            f"quick mode SAs {self.offer.describe()} {self.mode}{enc}: {self.local_selector} <-> "
            f"{self.remote_selector}, inbound SPI {self.inbound.spi:#010x}, outbound SPI "
            f"{self.outbound.spi:#010x}, {self.lifetime_seconds} s / {self.lifetime_kb} KB"
        )
