"""A DNS-name filter whose DNS server goes silent (scenarios/dns-name-filter-exempt's lab and policies).

The scenarios say what data can (a name that does not resolve refuses the refresh, the exemption lets
lookups through); this is the race they cannot: while host-a's refresh waits on a DNS server that does not
answer, host-b negotiates with host-a and host-a's ipsecctl answers.
"""

import pytest
import yaml

from lab.capture import wait_until
from lab.harness import SCENARIOS, events, ipsecctl, nodes, qmsa, refresh_while_silent, start

SCENARIO = "dns-name-filter-exempt"
DNS_SERVER = SCENARIOS / "dns-name-filter" / "dns-server.py"
A = "10.0.0.1"
MARKER = b"DNS-SILENT-MARKER-"
DNS_TIMEOUT = 10  # resolv.conf's timeout, one attempt: a lookup of the silent server waits 10 s


@pytest.fixture
def dns_lab(lab_up):
    """The scenario's lab (intranet-pair and a DNS server without IPsec), its DNS server answering."""
    scenario = yaml.safe_load((SCENARIOS / SCENARIO / "scenario.yaml").read_text())
    lab = lab_up(scenario["topology"], overrides=scenario["overrides"])
    dns = lab.node("dns")
    dns.put_file("/usr/local/bin/dns-server.py", DNS_SERVER.read_text())
    server = dns.spawn(["python3", "/usr/local/bin/dns-server.py"], name="dns-server")
    try:
        yield lab
    finally:
        server.stop()


def test_a_silent_dns_server_stalls_neither_ike_nor_ipsecctl(dns_lab):
    """host-a's policy names host-b by DNS name; a refresh resolves it again. The lookup (getaddrinfo: the
    resolver's timeout × attempts) ran on ipsecd's one event loop, so IKE, the data path and the control
    socket stalled for it on every apply; it runs with the read of the store, in the reader thread."""
    with nodes(dns_lab, "host-a", "host-b", "dns") as (a, b, dns):
        resolv_conf = f"nameserver 10.0.0.53\noptions timeout:{DNS_TIMEOUT} attempts:1\n"
        a.exec(["sh", "-c", 'printf "$1" > /etc/resolv.conf', "-", resolv_conf], check=True)  # a bind mount
        start(a, SCENARIO)
        start(b, SCENARIO)
        by_name = [f for f in ipsecctl(a, "filters") if f["rule"] == "secure the file server"]
        assert {f["destination"] for f in by_name} >= {"10.0.0.2/32"}, "host-b.lab.test resolved at start"
        assert not qmsa(b), "no SA before the DNS server goes silent"
        dns.firewall(["udp/53"])
        refresh = refresh_while_silent(a, b, dns, port=5041, marker=MARKER)
        wait_until(lambda: not refresh.alive(), DNS_TIMEOUT + 10, what="host-a's refresh to give up")
        refused = events(a, "policy-refused")
        assert refused and "host-b.lab.test" in refused[-1]["text"], refused
        assert ipsecctl(a, "policy")["name"] == "dns name filter with the DNS exemption (host-a)"
        assert qmsa(a), "the policy in force stayed, and its SAs with it"
