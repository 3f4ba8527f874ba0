"""Delay and reorder packets of one NFQUEUE queue: the link impairments tc netem would give, for kernels
without sch_netem (lab.linkfaults copies this file into a node and runs it there; Python's standard library
only, as a node has no more).

    python3 nfqueue_delay.py QUEUE DELAY_MS [--hold-every N [--overtaken-by K] [--hold-ms MS]]

Every packet the queue receives is released DELAY_MS after it arrived. With --hold-every N, every Nth packet
(the Nth, 2Nth, ...) is held back until K packets that came after it have been released (a reordering by
exactly K places, whatever the rate) or for MS milliseconds more, whichever comes first. It prints
`queued N released M overtook K` (K: packets released while one that arrived before them was held back) on
SIGUSR1 and at exit (SIGTERM, releasing what it holds).
"""

from __future__ import annotations

import argparse
import heapq
import select
import signal
import socket
import struct
import sys
import time
from collections.abc import Iterator

NETLINK_NETFILTER = 12
NFNL_SUBSYS_QUEUE = 3
NFQNL_MSG_PACKET, NFQNL_MSG_VERDICT, NFQNL_MSG_CONFIG = 0, 1, 2
NFQA_CFG_CMD, NFQA_CFG_PARAMS = 1, 2
NFQA_PACKET_HDR, NFQA_VERDICT_HDR = 1, 2
NFQNL_CFG_CMD_BIND = 1
NFQNL_COPY_META = 1
NF_ACCEPT = 1
NLM_F_REQUEST, NLM_F_ACK = 1, 4
NLMSG_ERROR = 2


def message(kind: int, queue: int, attributes: list[tuple[int, bytes]], flags: int = NLM_F_REQUEST) -> bytes:
    """One nfnetlink message of the queue subsystem: netlink header, nfgenmsg (AF_UNSPEC, version 0, the
    queue number big-endian), then attributes padded to 4 bytes."""
    body = struct.pack("!BBH", socket.AF_UNSPEC, 0, queue)
    for kind_, value in attributes:
        attribute = struct.pack("=HH", 4 + len(value), kind_) + value
        body += attribute + b"\0" * (-len(attribute) % 4)
    return struct.pack("=IHHII", 16 + len(body), (NFNL_SUBSYS_QUEUE << 8) | kind, flags, 0, 0) + body


def verdict(queue: int, packet: int) -> bytes:
    """Accept one packet: it goes on through the stack."""
    return message(NFQNL_MSG_VERDICT, queue, [(NFQA_VERDICT_HDR, struct.pack("!II", NF_ACCEPT, packet))])


def packet_ids(data: bytes) -> Iterator[int]:
    """The packet ids of the NFQNL_MSG_PACKET messages in one netlink read (errors raise)."""
    offset = 0
    while offset + 16 <= len(data):
        length, kind = struct.unpack_from("=IH", data, offset)
        if kind == NLMSG_ERROR:
            error = struct.unpack_from("=i", data, offset + 16)[0]
            if error:
                raise OSError(-error, f"nfnetlink: {error}")
        elif kind == (NFNL_SUBSYS_QUEUE << 8) | NFQNL_MSG_PACKET:
            at = offset + 20
            while at + 4 <= offset + length:
                alen, atype = struct.unpack_from("=HH", data, at)
                if atype & 0x7FFF == NFQA_PACKET_HDR:
                    yield struct.unpack_from("!I", data, at + 4)[0]
                at += (alen + 3) & ~3
        offset += (length + 3) & ~3


class Shaper:
    """Which packets go when (the module's text says what); packet ids grow with arrival."""

    def __init__(self, delay_ms: float, hold_every: int, overtaken_by: int, hold_ms: float):
        self.delay, self.hold_every, self.overtaken_by = delay_ms / 1000, hold_every, overtaken_by
        self.hold = hold_ms / 1000 if hold_ms else 3600.0  # no time limit: until overtaken
        self.counts = {"queued": 0, "released": 0, "overtook": 0}
        self.due: list[tuple[float, int]] = []  # (release time, packet id), a heap
        self.held_back: dict[int, int] = {}  # packet id -> later packets still to overtake it (0: no count)
        self.gone: set[int] = set()  # held back, released early by count, still in the heap

    def arrived(self, packet: int, now: float) -> None:
        self.counts["queued"] += 1
        if self.hold_every and self.counts["queued"] % self.hold_every == 0:
            self.held_back[packet] = self.overtaken_by
            heapq.heappush(self.due, (now + self.delay + self.hold, packet))
        else:
            heapq.heappush(self.due, (now + self.delay, packet))

    def next_due(self) -> float | None:
        return self.due[0][0] if self.due else None

    def release(self, now: float) -> list[int]:
        """The packets to accept now, in order."""
        out: list[int] = []
        while self.due and self.due[0][0] <= now:
            _, packet = heapq.heappop(self.due)
            if packet in self.gone:
                self.gone.discard(packet)
                continue
            self.held_back.pop(packet, None)
            self._go(packet, out)
        return out

    def release_all(self) -> list[int]:
        return sorted(packet for _, packet in self.due if packet not in self.gone)

    def _go(self, packet: int, out: list[int]) -> None:
        out.append(packet)
        self.counts["released"] += 1
        overtaken = [held for held in self.held_back if held < packet]
        self.counts["overtook"] += bool(overtaken)
        for held in overtaken:
            if self.held_back[held] == 0:
                continue
            self.held_back[held] -= 1
            if self.held_back[held] == 0:
                del self.held_back[held]
                self.gone.add(held)
                self._go(held, out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("queue", type=int)
    parser.add_argument("delay_ms", type=float)
    parser.add_argument("--hold-every", type=int, default=0)
    parser.add_argument("--overtaken-by", type=int, default=0)
    parser.add_argument("--hold-ms", type=float, default=0.0)
    args = parser.parse_args()
    sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_NETFILTER)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
    sock.bind((0, 0))
    bind = struct.pack("!BxH", NFQNL_CFG_CMD_BIND, socket.AF_UNSPEC)
    params = struct.pack("!IB", 0xFFFF, NFQNL_COPY_META)
    for attribute in ((NFQA_CFG_CMD, bind), (NFQA_CFG_PARAMS, params)):
        sock.send(message(NFQNL_MSG_CONFIG, args.queue, [attribute], NLM_F_REQUEST | NLM_F_ACK))
        list(packet_ids(sock.recv(65536)))  # the ack: raises if the kernel refused
    shaper = Shaper(args.delay_ms, args.hold_every, args.overtaken_by, args.hold_ms)

    def report(*_: object) -> None:
        print("queued {queued} released {released} overtook {overtook}".format(**shaper.counts), flush=True)

    def stop(*_: object) -> None:
        for packet in shaper.release_all():  # nothing stays queued in the kernel behind us
            sock.send(verdict(args.queue, packet))
            shaper.counts["released"] += 1
        report()
        sys.exit(0)

    signal.signal(signal.SIGUSR1, report)
    signal.signal(signal.SIGTERM, stop)
    print(f"queue {args.queue}: {vars(args)}", flush=True)
    while True:
        due = shaper.next_due()
        if select.select([sock], [], [], None if due is None else max(0.0, due - time.monotonic()))[0]:
            now = time.monotonic()
            for packet in packet_ids(sock.recv(65536)):
                shaper.arrived(packet, now)
        for packet in shaper.release(time.monotonic()):
            sock.send(verdict(args.queue, packet))


if __name__ == "__main__":
    main()
