"""The IPsec driver: SPD, SAD, ESP and AH applied to packets, and its kernel I/O.

- ``spd``: Security Policy Database (filters, filter actions, ordered lookup).
- ``sad``: Security Association Database (keys, sequence numbers, replay window, lifetimes, counters).
- ``esp``, ``ah``: the transforms, bytes in and bytes out.
- ``driver``: the driver itself: packets in and out, SPD + SAD applied, acquire/expire to IKE.
- kernel I/O: ``tun`` (the ipsec0 device), ``offload`` (TSO/GSO super-packets), ``egress`` (next hop through
  an AF_PACKET socket), ``mmsg`` (sendmmsg/recvmmsg), ``netfilter`` (the SPD compiled to nftables),
  ``wire`` (the sockets the driver reads and writes).
- ``keyexport``: SA keys as Wireshark/tshark decryption tables.
"""
