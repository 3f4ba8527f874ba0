"""The driver's UDP 4500 socket against the kernel, in a network namespace of its own whose loopback has a
1500-byte MTU, as a lab link has (root: `unshare --net`)."""

import os
import shutil
import subprocess
import sys

import pytest

# In the namespace: the socket as KernelWire makes it; a 4000-byte datagram (main mode 5 with a 4096-bit
# certificate) to a receiver on loopback, plainly and through send_fragmentable.
PROBE = """
import errno, socket, subprocess
from ipsecd.driver.wire import send_fragmentable, udp_4500_socket
subprocess.run(["ip", "link", "set", "lo", "mtu", "1500", "up"], check=True)
receiver = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
receiver.bind(("127.0.0.1", 4501))
receiver.settimeout(5)
sock = udp_4500_socket(4500, 0x1)
message = bytes(4) + b"M" * 3996
try:
    sock.sendto(message, ("127.0.0.1", 4501))
    print("plain: sent")
except OSError as exc:
    print("plain:", errno.errorcode[exc.errno])
send_fragmentable(sock, message, ("127.0.0.1", 4501))
print("fragmentable:", len(receiver.recv(65535)))
sock.sendto(b"E" * 100, ("127.0.0.1", 4501))  # ESP in UDP after it: the socket is as it was
print("after:", len(receiver.recv(65535)))
"""


@pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("unshare"), reason="a network namespace needs root")
def test_an_ike_message_longer_than_the_link_mtu_leaves_udp_4500_in_ip_fragments():
    """The socket sends ESP with DF, so the kernel refuses a datagram longer than the link (EMSGSIZE); IKE's
    main mode 5 or 6 with a large certificate goes through send_fragmentable and arrives whole."""
    done = subprocess.run(["unshare", "--net", sys.executable, "-c", PROBE], capture_output=True, text=True,
                          timeout=30)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split("\n")[:3] == ["plain: EMSGSIZE", "fragmentable: 4000", "after: 100"], done.stdout
