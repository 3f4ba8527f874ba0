"""Two IKE instances on tests/unit/test_ike_component.py's in-memory network, authenticating with real
Kerberos against the lab's DC: member-a (10.0.0.1, initiator) and member-b (10.0.0.2). Run inside a node's
network namespace (the KDC is 10.0.0.10 there) with the host's venv; prints what happened as JSON.

    python ike_kerberos_pair.py KEYTAB_A CCACHE_A KEYTAB_B CCACHE_B STATE_DIR KDC_TIMEOUT [tamper]

With `tamper` the last byte of the AP-REQ in main mode 3 is flipped on its way (its authenticator's
checksum), for the acceptor's MIT library to reject.
"""

import json
import sys
import time

from ipsecd.ike.isakmp import GssToken, Message
from ipsecd.ike.settings import Kerberos, PeerPolicy
from tests.unit.test_ike_component import A, B, host, pair


def tamper_ap_req(send):
    """The network's send, with the last byte of a GSS token that starts a context (0x60) flipped."""

    def tampered(data, src, dst):
        msg = Message.decode(data)
        token = msg.first(GssToken)
        if token is not None and token.data[:1] == b"\x60":
            flipped = GssToken(token.data[:-1] + bytes([token.data[-1] ^ 0xFF]))
            data = Message(msg.icookie, msg.rcookie, payloads=[flipped if p is token else p
                                                               for p in msg.payloads]).encode()
        send(data, src, dst)

    return tampered


def main(keytab_a: str, ccache_a: str, keytab_b: str, ccache_b: str, state: str, kdc_timeout: str,
         tamper: str = "") -> None:
    def member(name: str, keytab: str, ccache: str) -> PeerPolicy:
        settings = Kerberos(
            keytab=keytab,
            principal=f"{name}$@LAB.TEST",
            ccache=f"FILE:{ccache}",
            rcache=f"file2:{state}/{name}.rcache",
            kdc_timeout=float(kdc_timeout),
        )
        return PeerPolicy(auth=[settings])

    _, net, (ike_a, _), (ike_b, _), rule = pair(
        member("member-a", keytab_a, ccache_a), member("member-b", keytab_b, ccache_b)
    )
    if tamper:
        net.send = tamper_ap_req(net.send)
    started = time.monotonic()
    ike_a.acquire(rule, host(A), host(B), B)
    net.run()
    seconds = time.monotonic() - started
    print(
        json.dumps(
            {
                "seconds": seconds,
                "a": {
                    "sas": ike_a.main_mode_sas(),
                    "counters": dict(ike_a.counters),
                    "events": list(ike_a.events),
                },
                "b": {
                    "sas": ike_b.main_mode_sas(),
                    "counters": dict(ike_b.counters),
                    "events": list(ike_b.events),
                },
                "messages": [data.hex() for _, _, _, data in net.log],
            }
        )
    )


if __name__ == "__main__":
    main(*sys.argv[1:])
