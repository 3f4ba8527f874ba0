"""sendmmsg and recvmmsg through ctypes: many datagrams per system call (the stdlib has neither).

Per packet, a system call costs more than the Python around it (shared/research/dataplane.md §4), so the
driver's hot sockets move packets in batches: `PacketSocket` (ipsecd.driver.egress) sends a TUN drain's ESP
with one `sendmmsg`, and `BatchReceiver` reads what raw ESP and AH sockets hold with one `recvmmsg`.
The message headers are ctypes arrays allocated once; per call only their lengths and pointers are
written or read, with struct (much cheaper per packet than ctypes attribute access).

>>> import socket
>>> a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
>>> for data in (b"one", b"two", b"three"):
...     _ = a.send(data)
>>> receiver = BatchReceiver(b, batch=2, size=16)
>>> receiver.receive(), receiver.receive(), receiver.receive()
([b'one', b'two'], [b'three'], [])
"""

from __future__ import annotations

import ctypes
import mmap
import os
import socket
import struct


class Iovec(ctypes.Structure):
    _fields_ = [("base", ctypes.c_void_p), ("length", ctypes.c_size_t)]


class Msghdr(ctypes.Structure):
    _fields_ = [("name", ctypes.c_void_p), ("namelen", ctypes.c_uint32), ("iov", ctypes.POINTER(Iovec)),
                ("iovlen", ctypes.c_size_t), ("control", ctypes.c_void_p), ("controllen", ctypes.c_size_t),
                ("flags", ctypes.c_int)]


class Mmsghdr(ctypes.Structure):
    _fields_ = [("hdr", Msghdr), ("length", ctypes.c_uint)]


IOVEC, IOVEC_SIZE = struct.Struct("@PN"), ctypes.sizeof(Iovec)
POINTER, MMSGHDR_SIZE = struct.Struct("@P"), ctypes.sizeof(Mmsghdr)
NAME_AT = Mmsghdr.hdr.offset + Msghdr.name.offset
_LENGTH = struct.Struct("@I")
_LENGTH_AT = Mmsghdr.length.offset

_libc = ctypes.CDLL(None, use_errno=True)  # libc is in the process already (ctypes.util, which finds it by
# name, costs imports of tempfile, shutil, bz2, lzma and a child process on some systems)
sendmmsg = _libc.sendmmsg
sendmmsg.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_uint, ctypes.c_int]
sendmmsg.restype = ctypes.c_int
recvmmsg = _libc.recvmmsg
recvmmsg.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_uint, ctypes.c_int, ctypes.c_void_p]
recvmmsg.restype = ctypes.c_int


def writable(array: ctypes.Array) -> memoryview:
    """The bytes of a ctypes array, for struct.pack_into and unpack_from."""
    return memoryview((ctypes.c_char * ctypes.sizeof(array)).from_buffer(array)).cast("B")


def messages(count: int, iovecs: ctypes.Array) -> ctypes.Array:
    """`count` message headers, the i-th with the one buffer iovecs[i]."""
    array = (Mmsghdr * count)()
    for i in range(count):
        array[i].hdr.iov, array[i].hdr.iovlen = ctypes.pointer(iovecs[i]), 1
    return array


def errno_error() -> OSError:
    code = ctypes.get_errno()
    return OSError(code, os.strerror(code))


class BatchReceiver:
    """Reads up to `batch` datagrams of at most `size` bytes from `sock` per `receive()` (non-blocking).

    Each datagram is copied out of one preallocated buffer; a longer one would be cut (MSG_TRUNC), so
    `size` must be the largest datagram the socket can carry (65535 for raw IPv4).
    """

    def __init__(self, sock: socket.socket, batch: int = 64, size: int = 65536) -> None:
        self._fd = sock.fileno()
        self._batch, self._size = batch, size
        # Anonymous memory, not a ctypes buffer: its pages are only made when a datagram lands in them, where
        # create_string_buffer zeroed all 4 MB at start (RSS and 25 ms of CPU per receiver of an idle ipsecd)
        self._buffer = mmap.mmap(-1, batch * size)
        self._data = memoryview(self._buffer)
        self._start = ctypes.c_char.from_buffer(self._buffer)  # its address; holds the mapping open
        iovecs = (Iovec * batch)()
        base = ctypes.addressof(self._start)
        for i in range(batch):
            iovecs[i].base, iovecs[i].length = base + i * size, size
        self._iovecs = iovecs  # the message headers point into it
        self._messages = messages(batch, iovecs)
        self._address = ctypes.addressof(self._messages)
        self._message_memory = writable(self._messages)

    def receive(self) -> list[bytes]:
        """The datagrams waiting, at most `batch`; [] when there are none; OSError on another error."""
        count = recvmmsg(self._fd, self._address, self._batch, socket.MSG_DONTWAIT, None)
        if count < 0:
            error = errno_error()
            if isinstance(error, BlockingIOError):
                return []
            raise error
        data, size, memory, length = self._data, self._size, self._message_memory, _LENGTH.unpack_from
        return [data[i * size:i * size + length(memory, i * MMSGHDR_SIZE + _LENGTH_AT)[0]].tobytes()
                for i in range(count)]
