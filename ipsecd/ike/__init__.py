"""IKE (ISAKMP/Oakley, IKEv1): the key exchange component of ipsecd.

Layers, each usable alone:

- ``isakmp``: the RFC 2408 codec (payloads declared as data; ``MalformedMessage`` names payload and offset).
- ``oakley``: groups 1/2/14, PRFs, phase 1 ciphers, RFC 2409 §5 key derivation and App. B IVs.
- ``settings``: the policy as plain dataclasses (``IKERule``, ``PeerPolicy``, ``MainModeOffer``,
  ``QuickModeOffer``, ``PreSharedKey``, ``Certificates``, ``Selector``).
- ``sa``: the SAs (``IsakmpSA``; ``QuickModeDone`` with a ``ChildSA`` per direction).
- ``events``: what the exchanges report (``Established``, ``Failure``, ``InboundReady``) and
  ``NegotiationError``.
- ``auth``: authentication methods: RSA signatures and certificate chains (pre-shared keys key SKEYID).
- ``main_mode``, ``quick_mode``, ``informational``: sans-I/O exchanges (bytes in, bytes out, events).
- ``natt``: NAT-T vendor IDs, NAT-D, the UDP 4500 framing, keepalive interval.
- ``keylog``: IKE keys as Wireshark's ikev1_decryption_table.
- ``component``: the I/O around them (sockets, retransmission timers, SA lifetimes):
  ``IKE(local_address, driver, send_4500=...)``, ``load_policy([IKERule])``,
  ``await start()``, then the driver calls ``acquire(rule, local, remote)``, ``datagram_4500(data, addr)``,
  ``expire(spi, hard)``, ``idle(spi)``, ``invalid_spi(spi, peer)``; IKE calls ``driver.add_sa(QuickModeDone)``
  and ``driver.delete_sa(spi, dst, protocol)``. ``counters``, ``events``, ``main_mode_sas()``,
  ``quick_mode_sas()`` and ``ikev1_decryption_table()`` are for ipsecctl and the lab.
"""
