"""The Interface Manager: this node's IPv4 addresses, which "my IP address" filters expand to.

The Policy Agent calls ``addresses()`` at every apply and poll and re-expands the filters when the list
changed. Addresses come from ``ip -4 -j address show`` (iproute2 is in every node image); loopback and
host-scope addresses, and interfaces named in ``exclude`` (the driver's TUN), are left out.

>>> parse('[{"ifname": "lo", "addr_info": [{"family": "inet", "local": "127.0.0.1", "scope": "host"}]},'
...       ' {"ifname": "eth1", "addr_info": [{"family": "inet", "local": "10.0.0.1", "scope": "global"}]}]')
[IPv4Address('10.0.0.1')]
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterable
from ipaddress import IPv4Address


def parse(ip_json: str, exclude: Iterable[str] = ()) -> list[IPv4Address]:
    skip = set(exclude)
    out = []
    for link in json.loads(ip_json):
        if link.get("ifname") in skip:
            continue
        for info in link.get("addr_info", []):
            if info.get("family") == "inet" and info.get("scope") != "host":
                out.append(IPv4Address(info["local"]))
    return sorted(set(out))


def addresses(exclude: Iterable[str] = ()) -> list[IPv4Address]:
    """This node's addresses now (OSError or CalledProcessError if iproute2 cannot be run)."""
    result = subprocess.run(["ip", "-4", "-j", "address", "show"], capture_output=True, text=True, check=True,
                            timeout=10)
    return parse(result.stdout, exclude)
