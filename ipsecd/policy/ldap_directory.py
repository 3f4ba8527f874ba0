"""The LDAP connection to a domain controller, for the directory store (a member's computer account, Kerberos
from its keytab) and the administration command line (an administrator: password or keytab).

Facts behind the settings (shared/research/samba-dc.md): LDAPS on 636 with the DC's CA, the DC reached by
a remembered address (a DNS lookup of a DC that is also the DNS server stalls 49 s when it is down) and
named by its host name for Kerberos and the certificate; ldap3's GSSAPI bind has no SASL security layer,
so it runs over TLS; ``get_info=NONE`` (no schema download at each connect); short connect and receive
timeouts so that a DC that is down costs about one second, never a resolver or Kerberos stall (TLS is
tried first: no KDC is asked for anything while the DC does not answer).

ldap3 and gssapi are imported when a connection is made: the pure parts of the store load without them.
"""

from __future__ import annotations

import contextlib
import math
import ssl
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ipsecd.policy.store import StoreUnavailable

Attributes = dict[str, list[Any]]
BASE, ONE, SUBTREE = "BASE", "LEVEL", "SUBTREE"


class DirectoryUnavailable(StoreUnavailable):
    """The DC cannot be reached or refuses the bind (down, keytab gone, clock, certificate): why, where."""


@dataclass(frozen=True)
class DirectoryServer:
    """Where the DC is and how it is named."""

    address: str  # remembered address, e.g. 10.0.0.10: no name lookup at poll time
    dc_name: str  # dc.lab.test: the Kerberos target (ldap/dc.lab.test) and the certificate's name
    realm: str  # LAB.TEST
    ca_file: str | Path | None = None  # the DC's CA (None: certificate not checked; lab debugging only)
    port: int = 636
    timeout: float = 1.0  # connect and receive, seconds

    @property
    def domain_dn(self) -> str:
        return ",".join(f"DC={part}" for part in self.realm.lower().split("."))

    @property
    def store_dn(self) -> str:
        return f"CN=IP Security,CN=System,{self.domain_dn}"

    def describe(self) -> str:
        return f"{self.dc_name} ({self.address}:{self.port})"


@dataclass(frozen=True)
class Credentials:
    """A Kerberos principal with its keytab (a computer: 'member-a$'; an administrator), or a password."""

    principal: str  # 'member-a$' or 'Administrator' (the realm is added), or 'user@REALM'
    keytab: str | Path | None = None
    password: str | None = None
    ccache: str | Path | None = None  # where tickets are kept between binds (a file of the cache folder)

    def qualified(self, realm: str) -> str:
        return self.principal if "@" in self.principal else f"{self.principal}@{realm}"


class Directory:
    """One bound LDAP connection; every failure to reach or bind becomes DirectoryUnavailable."""

    def __init__(self, server: DirectoryServer, credentials: Credentials) -> None:
        self.server, self.credentials = server, credentials
        self.conn: Any = None

    def connect(self) -> Directory:
        import ldap3
        from ldap3.core.exceptions import LDAPException

        s, c = self.server, self.credentials
        tls = ldap3.Tls(ca_certs_file=str(s.ca_file) if s.ca_file else None,
                        validate=ssl.CERT_REQUIRED if s.ca_file else ssl.CERT_NONE, valid_names=[s.dc_name])
        server = ldap3.Server(s.address, port=s.port, use_ssl=True, tls=tls, get_info=ldap3.NONE,
                              connect_timeout=s.timeout)
        kerberos = c.keytab is not None
        conn = ldap3.Connection(server, user=None if kerberos else c.qualified(s.realm),
                                password=None if kerberos else c.password or "",
                                authentication=ldap3.SASL if kerberos else ldap3.SIMPLE,
                                sasl_mechanism=ldap3.GSSAPI if kerberos else None,
                                receive_timeout=max(1, math.ceil(s.timeout)),  # ldap3 packs it as an int
                                raise_exceptions=False)
        try:
            conn.open()  # TLS first: no KDC is asked anything while the DC does not answer
            if kerberos:
                conn.sasl_credentials = (s.dc_name, None, self._kerberos())
            bound = conn.bind()
        except (LDAPException, OSError, ValueError) as e:
            raise DirectoryUnavailable(f"{s.describe()}: {e}") from None
        except Exception as e:  # gssapi.exceptions.GSSError and kin: the keytab, the KDC, the clock
            if type(e).__module__.startswith("gssapi"):
                who = c.qualified(s.realm)
                raise DirectoryUnavailable(f"{s.describe()}: Kerberos as {who}: {e}") from None
            raise
        if not bound:
            self.conn = conn
            refusal = self.result()
            self.close()
            raise DirectoryUnavailable(f"{s.describe()}: bind as {c.qualified(s.realm)} refused: {refusal}")
        self.conn = conn
        return self

    def _kerberos(self) -> Any:
        import gssapi

        c = self.credentials
        store: dict[bytes | str, bytes | str] = {"client_keytab": str(c.keytab)}
        if c.ccache:
            store["ccache"] = f"FILE:{c.ccache}"
        if not Path(str(c.keytab)).is_file():
            raise DirectoryUnavailable(f"{self.server.describe()}: no keytab at {c.keytab}")
        name = gssapi.Name(c.qualified(self.server.realm), gssapi.NameType.kerberos_principal)
        return gssapi.Credentials(name=name, usage="initiate", store=store)

    def close(self) -> None:
        if self.conn is not None:
            with contextlib.suppress(Exception):  # closing a connection to a DC that is gone
                self.conn.unbind()
            self.conn = None

    def search(self, base: str, scope: str, ldap_filter: str = "(objectClass=*)",
               attributes: Sequence[str] = ("*",)) -> list[tuple[str, Attributes]]:
        """Entries as (DN, raw attribute values as bytes); a base that does not exist gives []."""
        from ldap3.core.exceptions import LDAPException

        if self.conn is None:
            self.connect()
        try:
            ok = self.conn.search(base, ldap_filter, search_scope=scope, attributes=list(attributes))
        except (LDAPException, OSError) as e:
            self.close()
            raise DirectoryUnavailable(f"{self.server.describe()}: search of {base}: {e}") from None
        if not ok and self.conn.result.get("description") not in ("success", "noSuchObject"):
            raise DirectoryUnavailable(f"{self.server.describe()}: search of {base}: {self.result()}")
        return [(e["dn"], dict(e["raw_attributes"])) for e in self.conn.response or ()
                if e.get("type") == "searchResEntry"]

    def write(self, operation: str, dn: str, *args: Any) -> None:
        """add/modify/delete; LDAP errors become DirectoryWriteError naming the DN."""
        ok = getattr(self.conn or self.connect().conn, operation)(dn, *args)
        if not ok:
            raise DirectoryWriteError(f"{operation} {dn}: {self.result()}")

    def result(self) -> str:
        """The last operation's result as LDAP said it."""
        result = self.conn.result if self.conn is not None else {}
        return f"{result.get('description')} {result.get('message') or ''}".strip()

    def root(self, *attributes: str) -> Attributes:
        found = self.search("", BASE, "(objectClass=*)", attributes)
        return found[0][1] if found else {}


class DirectoryWriteError(RuntimeError):
    """The directory refused a change (rights, a reference to a missing object, an existing name)."""


def text(attributes: Mapping[str, list[Any]], name: str) -> str | None:
    """One attribute's first value as text (attribute names in any case)."""
    for key, values in attributes.items():
        if key.casefold() == name.casefold() and values:
            value = values[0]
            return value.decode() if isinstance(value, bytes) else str(value)
    return None


def texts(attributes: Mapping[str, list[Any]], name: str) -> list[str]:
    for key, values in attributes.items():
        if key.casefold() == name.casefold():
            return [v.decode() if isinstance(v, bytes) else str(v) for v in values]
    return []
