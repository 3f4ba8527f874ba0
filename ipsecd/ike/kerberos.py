"""Kerberos through GSS-API for IKE (method 65001): the computer's credentials from its keytab, one security
context per main mode, and every failure in one of the words ipsecmon's Oakley log uses.

The binding is python-gssapi over MIT Kerberos (Debian's python3-gssapi in the node image, the `gssapi`
package of the `kerberos` extra in the venv): it is maintained, and it has MIT's credential store extension,
so the initiator's tickets come from the keytab alone (no kinit, no password) into a credential cache of ours,
and the acceptor reads the same keytab. As Windows does, the initiator is the computer account
(``member-a$@LAB.TEST``: Samba's KDC refuses ``host/...`` as a client) and the target is
``host/<peer's FQDN>``. gssapi is imported when a context is made, as ipsecd/policy/ldap_directory.py does:
a node without Kerberos in its policy runs without it.

MIT 1.20 (Debian 12) has no setting that shortens its KDC retries (``kdc_timeout`` and ``max_retries`` are
Heimdal's; ``request_timeout`` came later): a ticket request with the KDC silent gives up after about 18 s.
The initiator's step that may contact the KDC therefore runs against a deadline of our own
(:attr:`Kerberos.kdc_timeout`) and fails with "KDC unreachable" when it passes. It blocks its caller for
that long: the IKE component runs it off the event loop (``MainMode.take_blocking``).
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable
from types import ModuleType
from typing import TYPE_CHECKING, Any

from ipsecd.ike.settings import Kerberos

if TYPE_CHECKING:
    import gssapi

# Failure reasons, as the Oakley log and the counters name them (issue 13).
NO_CREDENTIALS = "no credentials"
UNKNOWN_PRINCIPAL = "unknown principal"
CLOCK_SKEW = "clock skew"
KDC_UNREACHABLE = "KDC unreachable"
INTEGRITY = "integrity check failed"
ACCOUNT_DISABLED = "account disabled"
OTHER = "Kerberos error"

_KRB5 = -1765328384  # ERROR_TABLE_BASE_krb5: MIT's minor status codes (krb5.h), signed
MINOR_REASONS = {
    (_KRB5 + code) & 0xFFFFFFFF: reason
    for code, reason in (
        (6, UNKNOWN_PRINCIPAL),  # KRB5KDC_ERR_C_PRINCIPAL_UNKNOWN: "Client not found in Kerberos database"
        (7, UNKNOWN_PRINCIPAL),  # KRB5KDC_ERR_S_PRINCIPAL_UNKNOWN: "Server not found in Kerberos database"
        (18, ACCOUNT_DISABLED),  # KRB5KDC_ERR_CLIENT_REVOKED: "Client's credentials have been revoked"
        (31, INTEGRITY),  # KRB5KRB_AP_ERR_BAD_INTEGRITY: "Decrypt integrity check failed"
        (33, CLOCK_SKEW),  # KRB5KRB_AP_ERR_TKT_NYV: "Ticket not yet valid"
        (37, CLOCK_SKEW),  # KRB5KRB_AP_ERR_SKEW: "Clock skew too great"
        (41, INTEGRITY),  # KRB5KRB_AP_ERR_MODIFIED: "Message stream modified"
        (45, NO_CREDENTIALS),  # KRB5KRB_AP_ERR_NOKEY: "Service key not available"
        (141, NO_CREDENTIALS),  # KRB5_CC_NOTFOUND
        (154, KDC_UNREACHABLE),  # KRB5_REALM_UNKNOWN: "Cannot find KDC for realm"
        (156, KDC_UNREACHABLE),  # KRB5_KDC_UNREACH: "Cannot contact any KDC for realm"
        (181, NO_CREDENTIALS),  # KRB5_KT_NOTFOUND: "Key table entry not found"
        (182, NO_CREDENTIALS),  # KRB5_KT_END
        (195, NO_CREDENTIALS),  # KRB5_FCC_NOFILE
        (220, KDC_UNREACHABLE),  # KRB5_REALM_CANT_RESOLVE
        (230, NO_CREDENTIALS),  # KRB5_KT_KVNONOTFOUND: "Key version number for principal in key table..."
    )
}
ENOENT = 2  # a keytab that is not there: MIT passes errno through as the minor status
#: GSS-API routine errors (gssapi.raw.exceptions class names) when the minor code names nothing.
MAJOR_REASONS = {
    "MissingCredentialsError": NO_CREDENTIALS,
    "InvalidCredentialsError": NO_CREDENTIALS,
    "BadNameError": UNKNOWN_PRINCIPAL,
    "BadMICError": INTEGRITY,
    "InvalidTokenError": INTEGRITY,
    "DuplicateTokenError": INTEGRITY,
}


class KerberosError(Exception):
    """A Kerberos failure: ``reason`` is one of the words above, ``detail`` what the library said."""

    def __init__(self, reason: str, detail: str):
        super().__init__(f"{reason}: {detail}")
        self.reason, self.detail = reason, detail


def _gssapi() -> ModuleType:
    """python-gssapi, or a Kerberos failure that says how to get it."""
    try:
        import gssapi
    except ImportError:
        raise KerberosError(
            OTHER, "python-gssapi is not installed (Debian python3-gssapi; pip install 'ipsec-lab[kerberos]')"
        ) from None
    return gssapi


def is_gss_error(exc: BaseException) -> bool:
    """A GSSError of python-gssapi (its classes live in gssapi.raw.*), told apart without importing it."""
    return type(exc).__module__.startswith("gssapi") and hasattr(exc, "min_code")


def classify(exc: Any) -> KerberosError:
    """The reason a GSS-API error (a gssapi GSSError) stands for: the Kerberos minor code first (it names
    the KDC's answer), then the GSS-API routine error."""
    minor = exc.min_code or 0
    reason = MINOR_REASONS.get(minor)
    if reason is None and minor == ENOENT:
        reason = NO_CREDENTIALS
    if reason is None:
        kinds = {kind.__name__ for kind in type(exc).__mro__}
        reason = next((r for name, r in MAJOR_REASONS.items() if name in kinds), OTHER)
    return KerberosError(reason, " ".join(exc.gen_message().split()))


def realm_of(principal: str) -> str:
    return principal.rpartition("@")[2] if "@" in principal else ""


def service_principal(name: str, realm: str) -> str:
    """``host/member-b.lab.test`` -> ``host/member-b.lab.test@LAB.TEST`` (a name with a realm stays)."""
    return name if "@" in name or not realm else f"{name}@{realm}"


def reverse_lookup(address: str) -> str | None:
    """The peer's FQDN the Windows way, from the resolver (DNS PTR or hosts file); None when unnamed."""
    try:
        return socket.gethostbyaddr(address)[0]
    except OSError:
        return None


def peer_target(settings: Kerberos, address: str, announced: str | None) -> str:
    """The service the initiator asks a ticket for: the name the peer announced (its GSS identity), else
    ``host/`` and the name its address resolves to. A peer with neither is not in the domain: fail now."""
    realm = realm_of(settings.principal)
    if announced:
        return service_principal(announced, realm)
    resolve: Callable[[str], str | None] = settings.resolve or reverse_lookup
    fqdn = resolve(address)
    if not fqdn:
        raise KerberosError(
            UNKNOWN_PRINCIPAL, f"peer {address} sent no GSS identity and has no name (reverse lookup)"
        )
    return service_principal(f"host/{fqdn}", realm)


def _store(settings: Kerberos, **extra: str) -> dict[bytes | str, bytes | str]:
    store: dict[bytes | str, bytes | str] = {key: value for key, value in extra.items()}
    if settings.rcache:
        store["rcache"] = settings.rcache
    return store


class Context:
    """One side's GSS-API security context for one main mode (Kerberos 5 mechanism)."""

    def __init__(self, settings: Kerberos, initiator: bool, target: str | None = None):
        self.settings, self.initiator = settings, initiator
        self.target = target
        self._ctx: gssapi.SecurityContext | None = None

    def _initiator_context(self) -> gssapi.SecurityContext:
        assert self.target is not None
        lib = _gssapi()
        name = lib.Name(self.settings.principal, lib.NameType.kerberos_principal)
        store = _store(
            self.settings, client_keytab=self.settings.keytab, ccache=self.settings.credential_cache
        )
        creds = lib.Credentials(name=name, usage="initiate", store=store)
        flags = (
            lib.RequirementFlag.mutual_authentication
            | lib.RequirementFlag.out_of_sequence_detection
            | lib.RequirementFlag.confidentiality
            | lib.RequirementFlag.integrity
        )
        return lib.SecurityContext(
            name=lib.Name(self.target, lib.NameType.kerberos_principal),
            creds=creds,
            usage="initiate",
            mech=lib.MechType.kerberos,
            flags=flags,
        )

    def _acceptor_context(self) -> gssapi.SecurityContext:
        lib = _gssapi()
        store = _store(self.settings, keytab=self.settings.keytab)
        return lib.SecurityContext(creds=lib.Credentials(usage="accept", store=store), usage="accept")

    def step(self, token: bytes | None) -> bytes:
        """Feed the peer's token (None for the initiator's first step); returns the token to send (b"" for
        none). The initiator's first step fetches tickets, so it runs against the KDC deadline."""
        if self._ctx is None and self.initiator:
            return self._first_step()
        return self._guarded(lambda: self._step(token))

    def _step(self, token: bytes | None) -> bytes:
        if self._ctx is None:
            self._ctx = self._initiator_context() if self.initiator else self._acceptor_context()
        out = self._ctx.step(token) or b""
        # python-gssapi: a failing acceptor returns the KRB-ERROR for the peer instead of raising; the
        # error surfaces at the next use of the context, so ask.
        _ = self._ctx.complete
        return out

    def _first_step(self) -> bytes:
        result: list[bytes] = []
        failure: list[BaseException] = []

        def run() -> None:
            try:
                result.append(self._step(None))
            except BaseException as exc:
                failure.append(exc)

        worker = threading.Thread(target=run, name="kerberos-init", daemon=True)
        worker.start()
        worker.join(self.settings.kdc_timeout)
        if worker.is_alive():  # MIT keeps retrying for ~18 s; the thread's late answer is dropped
            raise KerberosError(
                KDC_UNREACHABLE,
                f"no ticket for {self.target} within {self.settings.kdc_timeout:g} s (KDC not answering)",
            )
        if failure:
            exc = failure[0]
            if is_gss_error(exc):
                raise classify(exc) from None
            raise exc
        return result[0]

    def _guarded(self, action: Callable[[], bytes]) -> bytes:
        try:
            return action()
        except Exception as exc:
            if is_gss_error(exc):
                raise classify(exc) from None
            raise

    @property
    def complete(self) -> bool:
        return bool(self._ctx is not None and self._ctx.complete)

    def _established(self) -> gssapi.SecurityContext:
        if self._ctx is None:
            raise KerberosError(INTEGRITY, "no GSS-API context yet")
        return self._ctx

    def require_complete(self) -> None:
        """The exchange has no more rounds: a context not established here has failed."""
        if not self.complete:
            raise KerberosError(INTEGRITY, "the GSS-API context did not complete in one round trip")
        if (
            self.initiator
            and not self._established().actual_flags & _gssapi().RequirementFlag.mutual_authentication
        ):
            raise KerberosError(
                INTEGRITY, f"{self.target} did not authenticate itself (no mutual authentication)"
            )

    @property
    def peer(self) -> str:
        """The peer's authenticated principal: the initiator's client name, or the acceptor's service name."""
        ctx = self._established()
        return str(ctx.target_name if self.initiator else ctx.initiator_name)

    def wrap(self, data: bytes) -> bytes:
        ctx = self._established()
        return self._guarded(lambda: ctx.wrap(data, True).message)

    def unwrap(self, token: bytes) -> bytes:
        ctx = self._established()
        return self._guarded(lambda: ctx.unwrap(token).message)
