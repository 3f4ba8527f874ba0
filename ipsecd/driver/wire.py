"""The driver's I/O adapter: the kernel sockets and the TUN it reads and writes (``KernelWire``).

The driver itself (driver.py) does no I/O: it calls a ``Wire``. This one reads the TUN, the raw ESP/AH
sockets (recvmmsg) and UDP 4500 (UDP_GRO) in drains of up to 64 packets per wake-up, and sends through
the packet socket (egress.py), the raw IP socket or UDP 4500 (UDP_SEGMENT runs).
"""

from __future__ import annotations

import contextlib
import logging
import socket
import struct
import sys
from typing import TYPE_CHECKING

from ipsecd.driver.egress import Egress, KernelTables, PacketSocket
from ipsecd.driver.ipv4 import IPPROTO_AH, IPPROTO_ESP, fix_l4_checksum
from ipsecd.driver.mmsg import BatchReceiver
from ipsecd.driver.offload import SOL_UDP, UDP_GRO, UDP_SEGMENT, Coalescer, GsoSender, segments, split_gro

if TYPE_CHECKING:
    from ipsecd.driver.driver import IPsecDriver

log = logging.getLogger("ipsecd.driver")

IP_PKTINFO = 8
IP_TOS, IP_RECVERR, IP_RECVTOS = 1, 11, 13
SO_RCVBUFFORCE = 33
RECEIVE_BUFFER = 8 << 20
IP_MTU_DISCOVER = 10
IP_PMTUDISC_DONT, IP_PMTUDISC_PROBE = 0, 3
DRAIN = 64  # packets read per wake-up
REFRESH_SECONDS = 1.0  # how often the packet socket's next hops are read again from the kernel


def udp_4500_socket(port: int, bypass_mark: int) -> socket.socket:
    """The UDP 4500 socket: ESP in UDP and IKE after a NAT, marked to bypass our own policy routing. It sends
    with DF and ignores the path MTU the kernel learns for inner traffic (the TUN MTU), which must not cap
    our outer packets; the TUN MTU keeps ESP under the link's."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.IPPROTO_IP, IP_PKTINFO, 1)
    sock.setsockopt(socket.IPPROTO_IP, IP_RECVTOS, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_MARK, bypass_mark)
    sock.setsockopt(socket.IPPROTO_IP, IP_MTU_DISCOVER, IP_PMTUDISC_PROBE)
    sock.bind(("0.0.0.0", port))
    return sock


def send_fragmentable(sock: socket.socket, datagram: bytes, addr: tuple[str, int]) -> None:
    """One datagram that the kernel may cut into IP fragments, from a socket that otherwise sends with DF
    (udp_4500_socket): a main mode message with a certificate is longer than the link MTU, and with DF the
    kernel refuses it (EMSGSIZE) where Windows, and our UDP 500 socket, send it in fragments."""
    sock.setsockopt(socket.IPPROTO_IP, IP_MTU_DISCOVER, IP_PMTUDISC_DONT)
    try:
        sock.sendto(datagram, addr)
    finally:
        sock.setsockopt(socket.IPPROTO_IP, IP_MTU_DISCOVER, IP_PMTUDISC_PROBE)


class KernelWire:
    """The real I/O: TUN device, raw sockets for ESP and AH, the UDP 4500 socket, a packet socket.

    Outer IPv4 packets (`send_ip`) go out through ipsecd.driver.egress: a packet socket straight to the next
    hop where the kernel's tables name one, batched per TUN drain, else the raw socket. Everything the
    daemon sends through the kernel's IP stack carries the bypass mark, so the nftables rules never mark
    it for securing again (the packet socket's packets never meet them). With an offload TUN
    (`tun.offload`), a read may hold a TCP super-packet that is cut into the segments the driver sees,
    and the packets delivered during one drain are coalesced into GSO writes (ipsecd.driver.offload): fewer
    syscalls, the same packets through the driver.
    """

    def __init__(self, tun, bypass_mark: int, nat_t_port: int = 4500) -> None:
        self.tun = tun
        self.raw_out = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
        self.esp_in = socket.socket(socket.AF_INET, socket.SOCK_RAW, IPPROTO_ESP)
        self.ah_in = socket.socket(socket.AF_INET, socket.SOCK_RAW, IPPROTO_AH)
        self.udp = udp_4500_socket(nat_t_port, bypass_mark)
        # A full device queue drops a raw send silently unless the socket asks for errors: with IP_RECVERR
        # the ENOBUFS comes back and the packet is counted as a send error, not lost unseen.
        self.raw_out.setsockopt(socket.IPPROTO_IP, IP_RECVERR, 1)
        self.raw_out.setsockopt(socket.SOL_SOCKET, socket.SO_MARK, bypass_mark)
        self.raw_out.setsockopt(socket.IPPROTO_IP, IP_MTU_DISCOVER, IP_PMTUDISC_PROBE)
        for sock in (self.esp_in, self.ah_in, self.udp):
            # Bursts arrive faster than Python drains them; a deep queue beats dropping (and TCP backing off).
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, RECEIVE_BUFFER)
        for sock in (self.esp_in, self.ah_in):
            sock.setblocking(False)
        self._esp_receiver = BatchReceiver(self.esp_in, DRAIN)
        self._ah_receiver = BatchReceiver(self.ah_in, DRAIN)
        self._coalescer = Coalescer(self._write_frame) if tun.offload else None
        self._gso = GsoSender(self._send_segments) if tun.offload else None
        self._batch: GsoSender | None = None  # inside a TUN drain: UDP sends wait for the drain's end here
        self.packet_socket = PacketSocket()
        self.tables = KernelTables(bypass_mark)
        self.egress = Egress(self.tables.resolve, self.packet_socket.send, self._send_raw)
        self._refresh_timer = None
        if tun.offload:
            with contextlib.suppress(OSError):
                self.udp.setsockopt(SOL_UDP, UDP_GRO, 1)

    def send_ip(self, packet: bytes, dst: str) -> None:
        self.egress.send(packet, dst)

    def _send_raw(self, packet: bytes, dst: str) -> None:
        self.raw_out.sendto(packet, (dst, 0))

    def send_ike(self, datagram: bytes, addr: tuple[str, int]) -> None:
        """IKE's datagrams on UDP 4500 (after the non-ESP marker) and its NAT keepalives: sent at once, and
        cut into IP fragments when longer than the link MTU (send_fragmentable)."""
        send_fragmentable(self.udp, datagram, addr)

    def send_udp(self, payload: bytes, addr: tuple[str, int], tos: int = 0) -> None:
        batch = self._batch
        if batch is not None:
            batch.add(payload, addr, tos)
        else:
            self._send_segments(payload, len(payload), addr, tos)

    def _send_segments(self, buffer: bytes, size: int, addr: tuple[str, int], tos: int = 0) -> None:
        """One datagram, or a run of `size`-byte ones cut by the kernel (UDP_SEGMENT), with IP TOS `tos`."""
        ancillary = [] if len(buffer) == size else [(SOL_UDP, UDP_SEGMENT, struct.pack("=H", size))]
        if tos:
            ancillary.append((socket.IPPROTO_IP, IP_TOS, struct.pack("=i", tos)))
        if ancillary:
            self.udp.sendmsg([buffer], ancillary, 0, addr)
        else:
            self.udp.sendto(buffer, addr)

    def deliver(self, packet: bytes, stale_checksum: bool = False) -> None:
        if self._coalescer is not None:
            self._coalescer.add(packet, stale_checksum)  # written at the latest when the drain ends
        else:
            self.tun.write(fix_l4_checksum(packet) if stale_checksum else packet)

    def _write_frame(self, frame: bytes) -> None:
        self.tun.write(frame)

    def attach(self, loop, driver: IPsecDriver) -> None:
        """Register the readers on an asyncio loop; each wake-up drains up to DRAIN packets."""
        loop.add_reader(self.tun.fd, self._drain_tun, driver)
        loop.add_reader(self.esp_in.fileno(), self._drain_raw, self._esp_receiver, driver)
        loop.add_reader(self.ah_in.fileno(), self._drain_raw, self._ah_receiver, driver)
        loop.add_reader(self.udp.fileno(), self._drain_udp, driver)
        self.egress.counters, self.egress.report = driver.counters, driver.wire_error
        self._refresh_timer = loop.call_later(REFRESH_SECONDS, self._refresh, loop)

    def detach(self, loop) -> None:
        for fd in (self.tun.fd, self.esp_in.fileno(), self.ah_in.fileno(), self.udp.fileno()):
            loop.remove_reader(fd)
        if self._refresh_timer is not None:
            self._refresh_timer.cancel()

    def _refresh(self, loop) -> None:
        self.egress.refresh()
        self._refresh_timer = loop.call_later(REFRESH_SECONDS, self._refresh, loop)

    def _drain_tun(self, driver: IPsecDriver) -> None:
        """Up to DRAIN reads from the TUN; what the driver sends meanwhile goes out in batches at the end."""
        read, outbound = self.tun.read, driver.outbound
        self.egress.batching = True
        self._batch = self._gso
        try:
            for _ in range(DRAIN):
                frame = read()
                if frame is None:
                    return
                if self._gso is None:
                    outbound(frame)
                    continue
                for packet in segments(frame):
                    outbound(packet)
        finally:
            self.egress.batching = False
            self._batch = None
            self.egress.flush()
            if self._gso is not None:
                self._gso.flush()
                if self._gso.lost:
                    driver.wire_error("send", self._gso.lost, f"cannot send UDP: {self._gso.error}")
                    self._gso.lost = 0

    def _drain_raw(self, receiver: BatchReceiver, driver: IPsecDriver) -> None:
        """Up to DRAIN packets from a raw socket, in one recvmmsg."""
        inbound = driver.inbound
        try:
            for packet in receiver.receive():
                inbound(packet)
        finally:
            self._flush(driver)

    def _drain_udp(self, driver: IPsecDriver) -> None:
        recvmsg, inbound_udp = self.udp.recvmsg, driver.inbound_udp
        try:
            for _ in range(DRAIN):
                payload, ancillary, _, (src, sport) = recvmsg(65535, 64, socket.MSG_DONTWAIT)
                dst, size, tos = "0.0.0.0", 0, 0
                for level, kind, data in ancillary:
                    if level == socket.IPPROTO_IP and kind == IP_PKTINFO:
                        dst = socket.inet_ntoa(data[8:12])
                    elif level == socket.IPPROTO_IP and kind == IP_TOS:
                        tos = data[0]  # GRO merges only datagrams of one TOS
                    elif level == SOL_UDP and kind == UDP_GRO:
                        size = int.from_bytes(data[:4], sys.byteorder)  # datagrams GRO merged
                for datagram in split_gro(payload, size):
                    inbound_udp(datagram, src, sport, dst, tos)
        except BlockingIOError:
            pass
        finally:
            self._flush(driver)

    def _flush(self, driver: IPsecDriver) -> None:
        """Write what the drain coalesced; a TUN that refuses it is counted like a refused packet."""
        if self._coalescer is None:
            return
        try:
            self._coalescer.flush()
        except OSError as e:
            driver.wire_error("deliver", 1, f"cannot write to the TUN: {e.strerror}")

    def close(self) -> None:
        for sock in (self.raw_out, self.esp_in, self.ah_in, self.udp):
            sock.close()
        self.packet_socket.close()
        self.tables.close()
        self.tun.close()
