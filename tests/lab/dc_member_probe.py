"""Run inside a member container (system python3 with Debian's ldap3 and gssapi): bind to the DC as the
computer account with Kerberos from the member's keytab alone (no password), over LDAPS with the DC's CA, and
print what the directory shows that account as JSON. Used by tests/lab/test_dc_image.py.

    python3 dc_member_probe.py ADDRESS KEYTAB CA_PEM [SEARCHES]

ADDRESS is where to connect; the Kerberos target and the certificate name stay dc.lab.test, so any address of
the DC works. The KDC comes from $KRB5_CONFIG.
"""

import json
import ssl
import sys
import tempfile
import time

import gssapi
from ldap3 import BASE, GSSAPI, NONE, SASL, SUBTREE, Connection, Server, Tls
from ldap3.protocol.formatters.formatters import format_sid

DC_NAME = "dc.lab.test"
MEMBER = "member-a"
DOMAIN_DN = "DC=lab,DC=test"
STORE_DN = f"CN=IP Security,CN=System,{DOMAIN_DN}"


def main(address: str, keytab: str, ca_pem: str, searches: int = 0) -> dict:
    with tempfile.TemporaryDirectory(prefix="probe-") as ccache_dir:
        return bind_and_read(address, keytab, ca_pem, searches, f"FILE:{ccache_dir}/ccache")


def bind_and_read(address: str, keytab: str, ca_pem: str, searches: int, ccache: str) -> dict:
    started = time.monotonic()
    creds = gssapi.Credentials(
        name=gssapi.Name(f"{MEMBER}$@LAB.TEST", gssapi.NameType.kerberos_principal),
        usage="initiate",
        store={"client_keytab": keytab, "ccache": ccache},
    )
    tls = Tls(ca_certs_file=ca_pem, validate=ssl.CERT_REQUIRED, valid_names=[DC_NAME])
    server = Server(address, port=636, use_ssl=True, tls=tls, get_info=NONE, connect_timeout=5)
    conn = Connection(
        server, authentication=SASL, sasl_mechanism=GSSAPI, sasl_credentials=(DC_NAME, None, creds)
    )
    if not conn.bind():
        return {"bound": False, "result": conn.result["description"], "message": conn.result["message"]}
    bind_seconds = time.monotonic() - started
    conn.search("", "(objectClass=*)", BASE, attributes=["tokenGroups"])
    token = [format_sid(sid) for sid in conn.response[0]["raw_attributes"]["tokenGroups"]]
    conn.search(DOMAIN_DN, f"(sAMAccountName={MEMBER}$)", SUBTREE, attributes=["objectSid"])
    account = conn.entries[0]
    conn.search(STORE_DN, "(objectClass=*)", BASE, attributes=["cn"])
    store = [e.entry_dn for e in conn.entries]
    names_started = time.monotonic()
    for _ in range(max(searches, 1)):
        conn.search(STORE_DN, "(objectClass=ipsecPolicy)", SUBTREE, attributes=["ipsecName"])
    search_ms = (time.monotonic() - names_started) * 1000 / max(searches, 1)
    policies = sorted(e.ipsecName.value for e in conn.entries)
    conn.unbind()
    return {
        "bound": True,
        "principal": str(gssapi.Credentials(usage="initiate", store={"ccache": ccache}).name),
        "bind_seconds": round(bind_seconds, 3),
        "token_user_sid": token[0],
        "account_dn": account.entry_dn,
        "account_sid": format_sid(account.objectSid.raw_values[0]),
        "store": store,
        "policies": policies,
        "search_ms": round(search_ms, 2),
    }


if __name__ == "__main__":
    args = sys.argv[1:]
    print(json.dumps(main(*args[:3], *(int(a) for a in args[3:]))))
