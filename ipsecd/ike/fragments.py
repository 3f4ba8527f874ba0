"""IKEv1 fragmentation as a receiver (MS-IKEE §2.2.3, §3.3): the pieces of one IKE message put together.

A peer may cut a long message (main mode 5 or 6 with a certificate) into payload-132 fragments so that no IP
fragment has to cross a NAT; Windows Server 2003 reassembles them, and strongSwan with `fragmentation =
force` sends them to any peer. Each fragment is an ISAKMP message of its own (same cookies, not encrypted)
with one Fragment payload; the data of fragments 1..N, in order, is the whole message, header included.
We send our own messages whole (the kernel cuts them into IP fragments) and do not announce the
FRAGMENTATION vendor ID, which Windows Server 2003 is not known to send.

Everything here comes from the network, so it is bounded: pieces per message, bytes per message, messages
being put together at once (the oldest goes), and time (Windows' reassembly timer, MS-IKEE <17>).

>>> from ipsecd.ike.isakmp import Fragment, Message, Nonce
>>> whole = Message(b"\\x01" * 8, b"\\x02" * 8, payloads=[Nonce(b"n" * 40)]).encode()
>>> pieces = [whole[:30], whole[30:]]
>>> reassembly = Reassembly()
>>> [reassembly.add("192.0.2.1", Message.decode(Message(b"\\x01" * 8, b"\\x02" * 8, payloads=[
...     Fragment(7, n, piece, Fragment.LAST if n == 2 else 0)]).encode()), 0.0) == whole
...  for n, piece in ((2, pieces[1]), (1, pieces[0]))]
[False, True]
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field

from ipsecd.ike.isakmp import HEADER_SIZE, Fragment, Message, PayloadType

MAX_PIECES = 32  # fragments of one message (strongSwan cuts 1200-byte pieces: 38 KB)
MAX_MESSAGE = 65535  # bytes of a reassembled message: what one UDP datagram could have carried
MAX_PENDING = 64  # messages being put together at once, from every peer
REASSEMBLY_SECONDS = 70.0  # MS-IKEE <17>: a message whose pieces do not all come within this is dropped


class FragmentError(ValueError):
    """A fragment that cannot be part of a message, in words."""


@dataclass
class _Pieces:
    started: float
    data: dict[int, bytes] = field(default_factory=dict)
    last: int | None = None  # the number of the piece flagged last, once it came
    size: int = 0


class Reassembly:
    """Messages being put together, by source address, cookies and fragment ID."""

    def __init__(self) -> None:
        self.pending: OrderedDict[tuple[str, bytes, int], _Pieces] = OrderedDict()

    def add(self, source: str, msg: Message, now: float) -> bytes | None:
        """The whole message once `msg` (a fragment from `source`) completes it, else None; FragmentError
        for a piece that cannot belong to a message (that message is dropped with it)."""
        if len(msg.payloads) != 1 or not isinstance(msg.payloads[0], Fragment):
            raise FragmentError("a fragment message carries exactly one fragment payload")
        piece = msg.payloads[0]
        if not 1 <= piece.number <= MAX_PIECES:
            raise FragmentError(f"fragment number {piece.number} outside 1..{MAX_PIECES}")
        self._expire(now)
        key = (source, msg.icookie + msg.rcookie, piece.fragment_id)
        pieces = self.pending.get(key)
        if pieces is None:
            if len(self.pending) >= MAX_PENDING:
                self.pending.popitem(last=False)
            pieces = self.pending[key] = _Pieces(now)
        if piece.number in pieces.data:
            return None  # a retransmission of a piece we have
        try:
            self._take(pieces, piece)
        except FragmentError:
            del self.pending[key]
            raise
        if pieces.last is None or len(pieces.data) != pieces.last:
            return None
        del self.pending[key]
        whole = b"".join(pieces.data[n] for n in range(1, pieces.last + 1))
        if len(whole) < HEADER_SIZE or whole[:16] != msg.icookie + msg.rcookie:
            raise FragmentError(f"fragment ID {piece.fragment_id}: the reassembled message is not one of "
                                "these cookies")
        if whole[16] == PayloadType.FRAGMENT:
            raise FragmentError(f"fragment ID {piece.fragment_id}: the reassembled message is a fragment")
        return whole

    @staticmethod
    def _take(pieces: _Pieces, piece: Fragment) -> None:
        if piece.flags & Fragment.LAST:
            if pieces.last is not None:
                raise FragmentError(f"fragment ID {piece.fragment_id}: two pieces flagged last")
            pieces.last = piece.number
        if pieces.last is not None and max([piece.number, *pieces.data]) > pieces.last:
            raise FragmentError(f"fragment ID {piece.fragment_id}: a piece numbered after the last, "
                                f"{pieces.last}")
        pieces.size += len(piece.data)
        if pieces.size > MAX_MESSAGE:
            raise FragmentError(f"fragment ID {piece.fragment_id}: more than {MAX_MESSAGE} bytes")
        pieces.data[piece.number] = piece.data

    def _expire(self, now: float) -> None:
        while self.pending:
            key, oldest = next(iter(self.pending.items()))
            if now - oldest.started <= REASSEMBLY_SECONDS:
                return
            del self.pending[key]
