"""The TUN device: where the kernel hands the driver packets to secure, and takes back decrypted ones.

Packets routed into `ipsec0` (policy routing on the secure mark) are read here as bare IPv4 packets;
packets written here enter the IP stack as if received on `ipsec0`, for local delivery or forwarding.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import struct
import subprocess
from pathlib import Path

TUNSETIFF = 0x400454CA
TUNSETOFFLOAD = 0x400454D0
IFF_TUN = 0x0001
IFF_NO_PI = 0x1000
IFF_VNET_HDR = 0x4000
TUN_F_CSUM = 0x01
TUN_F_TSO4 = 0x02
# Packets the kernel queues for ipsecd before it drops (the TUN's own default is 500): TCP bursts through a
# gateway overran 500 while ipsecd was busy, and every drop costs a retransmission.
QUEUE_LENGTH = 4096


class Tun:
    """A non-blocking TUN device, created on open and gone when its file descriptor closes.

    `offload`: every frame read and written starts with a virtio-net header, and the kernel may hand
    over TCP super-packets (TSO4) with partial checksums and take them back (ipsecd.driver.offload).
    """

    def __init__(self, name: str = "ipsec0", mtu: int = 1400, offload: bool = False) -> None:
        self.name = name
        self.mtu = mtu
        self.offload = offload
        self.fd = os.open("/dev/net/tun", os.O_RDWR | os.O_NONBLOCK)
        flags = IFF_TUN | IFF_NO_PI | (IFF_VNET_HDR if offload else 0)
        try:
            fcntl.ioctl(self.fd, TUNSETIFF, struct.pack("16sH", name.encode(), flags))
            if offload:
                fcntl.ioctl(self.fd, TUNSETOFFLOAD, TUN_F_CSUM | TUN_F_TSO4)
            with contextlib.suppress(OSError):  # IPv4 only: no IPv6 chatter (router solicitations) in the TUN
                Path(f"/proc/sys/net/ipv6/conf/{name}/disable_ipv6").write_text("1")
            subprocess.run(["ip", "link", "set", name, "mtu", str(mtu), "txqueuelen", str(QUEUE_LENGTH),
                            "up"], check=True, capture_output=True, text=True)
        except (OSError, subprocess.CalledProcessError) as e:
            os.close(self.fd)
            detail = getattr(e, "stderr", None) or e
            raise OSError(f"cannot create TUN device {name}: {detail}") from None

    def read(self) -> bytes | None:
        """One packet (with `offload`: one frame), or None when the queue is empty."""
        try:
            return os.read(self.fd, 65535 + 10)  # an IPv4 packet and a virtio-net header
        except BlockingIOError:
            return None

    def write(self, packet: bytes) -> None:
        os.write(self.fd, packet)

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
