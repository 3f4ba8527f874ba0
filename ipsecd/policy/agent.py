"""The Policy Agent: reads the assigned policy from its store, checks it, and hands it to the driver and IKE.

As the documents describe it: at start and at the policy's polling interval it asks the store whether the
assigned policy changed (a cheap change stamp, the documents' whenChanged); on ``refresh`` (``ipsecctl
refresh``, the equivalent of ``gpupdate``) it reads it whatever the stamp says. A policy that fails its
checks is refused with the file, line, object and field named, and the policy in force stays in force.
When the node's addresses change (the Interface Manager's job) "my IP address" filters are re-expanded.

Every apply returns a ``PolicyChange`` saying which rules changed or went away: the daemon deletes the
SAs negotiated under those rules (the driver tags them with the rule name) and keeps every other SA.

Each look at the store is two halves: ``read`` does the store's I/O and nothing else (a directory store's
LDAP to a DC that may not answer: seconds), ``act`` applies what it found. In the daemon (``look``) the read
runs in a reader thread and the act on the event loop, so IKE, the driver and the control socket go on
while a DC times out; ``apply``, ``poll`` and ``refresh`` do both halves in the caller's thread.

>>> import tempfile
>>> from ipaddress import IPv4Address, IPv4Network
>>> from ipsecd.policy.store import LocalStore
>>> from ipsecd.policy.predefined import predefined
>>> class Recorder:
...     def load_policy(self, settings): self.settings = settings
>>> from ipsecd.policy.model import AuthKind, AuthMethod
>>> store = LocalStore(tempfile.mkdtemp())
>>> psk = (AuthMethod(AuthKind.PRESHARED_KEY, psk="lab"),)
>>> store.assign(store.save(predefined("server", authentication=psk)))
>>> driver, ike = Recorder(), Recorder()
>>> agent = PolicyAgent(store, driver, ike, lambda: [IPv4Address("10.0.0.1")], clock=lambda: 0.0)
>>> sorted(agent.apply().touched_rules), len(driver.settings), [rule.name for rule in ike.settings]
([], 4, ['All IP Traffic/all ip', '<Dynamic> default response'])
>>> print(agent.events[-1])
1970-01-01T00:00:00Z policy-applied: Server (Request Security) {72385230-70fa-11d1-864c-14a300000000} \
changed 2003-04-24T00:00:00Z: 2 rules, 4 specific filters
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Hashable, Iterable
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import yaml

from ipsecd.driver import spd
from ipsecd.ike.settings import IKERule, Kerberos, PreSharedKey
from ipsecd.ike.settings import Selector as IKESelector
from ipsecd.policy import model, policyfile
from ipsecd.policy.expand import Resolver, expand_rules, resolve_dns
from ipsecd.policy.ike_settings import CertificateSource, IKERuleSet, ike_settings
from ipsecd.policy.soft_association import SoftAssociations, Verdict
from ipsecd.policy.store import LocalStore, PolicyRef, PolicyStore, StoreUnavailable
from ipsecd.policy.validate import PolicyError

#: How long the loop waits for one read of the store: a backstop over the store's own timeouts (a directory
#: store: 1 s to connect and 1 s to receive by default, 30 s at most); past it the policy in force stays.
READ_TIMEOUT = 60.0
RESCHEDULE_SECONDS = 1.0  # the polling task's longest sleep

log = logging.getLogger("ipsecd.policy")


class StoreThread:
    """The store's I/O off the event loop: one call at a time, each in a daemon thread, its outcome
    delivered on the loop. Not an executor: its worker would hold ipsecd's exit until a read waiting on a
    silent DC timed out."""

    def __init__(self) -> None:
        self._one_at_a_time = threading.Lock()

    def run(self, function: Callable[..., Any], *args: Any) -> asyncio.Future[Any]:
        loop = asyncio.get_running_loop()
        outcome: asyncio.Future[Any] = loop.create_future()

        def settle(value: Any, failed: bool) -> None:
            if not outcome.done():  # a caller may have stopped waiting
                (outcome.set_exception if failed else outcome.set_result)(value)

        def work() -> None:
            with self._one_at_a_time:
                try:
                    value, failed = function(*args), False
                except Exception as e:  # handed to the caller on the loop
                    value, failed = e, True
            with contextlib.suppress(RuntimeError):  # the loop is closed: ipsecd is stopping
                loop.call_soon_threadsafe(settle, value, failed)

        threading.Thread(target=work, name="policy-store", daemon=True).start()
        return outcome


class StoreStatus(Protocol):
    def to_dict(self) -> dict[str, Any]: ...


@runtime_checkable
class GroupPolicyStore(Protocol):
    """What a directory store adds to a PolicyStore (ipsecd.policy.directory_store.DirectoryStore)."""

    status: StoreStatus

    def refresh(self) -> None: ...

    def seconds_until_group_policy(self) -> float: ...


class FilterLoader(Protocol):
    """What the Policy Agent needs from the IPsec driver."""

    def load_policy(self, spd: spd.SPD) -> None: ...


class IKERuleLoader(Protocol):
    """What the Policy Agent needs from IKE."""

    def load_policy(self, rules: list[IKERule]) -> None: ...


class Acquiring(Protocol):
    def acquire(self, rule: IKERule, local: IKESelector, remote: IKESelector, peer: str | None = None,
                ) -> None: ...


class SoftSAs(Protocol):
    def add_soft_sa(self, filter_name: str, peer: str) -> None: ...


@dataclass(frozen=True)
class Event:
    """One line of the event log: policy changes here, negotiations from IKE in the same form."""

    time: float
    kind: str  # policy-applied, policy-refused, policy-unassigned, addresses-changed, store-unavailable,
    # policy-imported, policy-exported
    message: str

    def __str__(self) -> str:
        return f"{policyfile.format_stamp(int(self.time))} {self.kind}: {self.message}"

    def to_dict(self) -> dict[str, Any]:
        return {"time": self.time, "kind": self.kind, "message": self.message}


@dataclass(frozen=True)
class Reading:
    """What one read of the store found: the assigned policy's reference and stamp, the policy itself when
    it was loaded (forced, or the stamp moved), or why the store could not answer or refused the policy."""

    ref: PolicyRef | None = None
    stamp: Hashable = None
    policy: model.Policy | None = None
    error: PolicyError | StoreUnavailable | None = None


@dataclass(frozen=True)
class AppliedPolicy:
    """The policy in force: as read, as expanded for these addresses, as handed to IKE."""

    ref: PolicyRef
    stamp: Hashable
    policy: model.Policy
    addresses: tuple[IPv4Address, ...]
    filters_by_rule: dict[str, tuple[spd.Filter, ...]]
    spd: spd.SPD
    ike: IKERuleSet


@dataclass(frozen=True)
class PolicyChange:
    """What an apply changed. touched_rules: rules of the previous policy whose SAs must be deleted
    (their filters, action, authentication or tunnel changed, or they are gone), and touched_filters the
    names of their specific filters (what the driver tags SAs with); added_rules: new ones."""

    touched_rules: frozenset[str]
    touched_filters: frozenset[str]
    added_rules: frozenset[str]
    main_mode_changed: bool  # new main modes use the new settings; existing ones run to their lifetime
    # IKE rules (their names) whose authentication changed or that are gone: the main mode SAs authenticated
    # under them no longer hold (Windows: "New policy invalidated SAs formed with old policy") and go too
    reauthenticate: frozenset[str] = frozenset()

    def describe(self) -> str:
        parts = []
        if self.touched_rules:
            parts.append(f"SAs of {', '.join(sorted(self.touched_rules))} deleted")
        if self.reauthenticate:
            parts.append(f"main mode SAs of {', '.join(sorted(self.reauthenticate))} deleted "
                         f"(authentication changed)")
        if self.added_rules:
            parts.append(f"new rules {', '.join(sorted(self.added_rules))}")
        if self.main_mode_changed:
            parts.append("main mode settings changed")
        return "; ".join(parts) or "no SA touched"

    def to_dict(self) -> dict[str, Any]:
        return {"touched_rules": sorted(self.touched_rules), "touched_filters": sorted(self.touched_filters),
                "added_rules": sorted(self.added_rules), "main_mode_changed": self.main_mode_changed,
                "reauthenticate": sorted(self.reauthenticate), "text": self.describe()}


def compare(old: AppliedPolicy | None, new: AppliedPolicy | None) -> PolicyChange:
    before, after = _fingerprints(old), _fingerprints(new)
    touched = frozenset(name for name, fp in before.items() if after.get(name) != fp)
    filters = old.filters_by_rule if old else {}
    return PolicyChange(
        touched_rules=touched,
        touched_filters=frozenset(f.name for name in touched for f in filters.get(name, ())),
        added_rules=frozenset(after.keys() - before.keys()),
        main_mode_changed=_main_mode(old) != _main_mode(new),
        reauthenticate=_reauthenticate(old, new),
    )


def _reauthenticate(old: AppliedPolicy | None, new: AppliedPolicy | None) -> frozenset[str]:
    """The IKE rules of `old` that `new` authenticates otherwise (another key, CA or method) or not at all."""
    if old is None:
        return frozenset()
    now = {r.name: _credentials(r) for r in new.ike.rules} if new else {}
    return frozenset(r.name for r in old.ike.rules if now.get(r.name) != _credentials(r))


def _credentials(rule: IKERule) -> tuple[Any, ...]:
    """What a main mode SA of this rule was authenticated with, comparable across two loads of the policy."""
    out: list[Any] = []
    for auth in rule.policy.auth:
        if isinstance(auth, PreSharedKey):
            out.append(("psk", auth.key))
        elif isinstance(auth, Kerberos):
            out.append(("kerberos", auth.keytab, auth.principal))
        else:
            out.append(("rsa-sig", auth.certificate, auth.trusted_cas))
    return tuple(out)


def _fingerprints(applied: AppliedPolicy | None) -> dict[str, tuple[Any, ...]]:
    """Per rule, everything an SA negotiated under it depends on: its filters and its IKE settings."""
    if applied is None:
        return {}
    out: dict[str, tuple[Any, ...]] = {
        name: (filters, [applied.ike.for_filter(f) for f in filters])
        for name, filters in applied.filters_by_rule.items()
    }
    response = applied.policy.default_response
    if response and response.active:
        out[response.name] = ((), [r for r in applied.ike.rules if r.name == response.name])
    return out


def _main_mode(applied: AppliedPolicy | None) -> tuple[Any, ...] | None:
    if applied is None:
        return None
    kx = applied.policy.key_exchange
    return (kx.methods, kx.lifetime_seconds, kx.sessions, kx.master_key_pfs)


class PolicyAgent:
    """Reads, validates, applies, polls and refreshes the node's one assigned policy."""

    def __init__(self, store: PolicyStore, driver: FilterLoader, ike: IKERuleLoader,
                 addresses: Callable[[], Iterable[IPv4Address]], clock: Callable[[], float] = time.time,
                 resolve: Resolver = resolve_dns, certificate_for: CertificateSource | None = None,
                 kerberos: Kerberos | None = None,
                 unassigned_poll_interval: float = model.DEFAULT_POLLING_INTERVAL,
                 log: Callable[[Event], None] | None = None, max_events: int = 1000) -> None:
        self.store, self.driver, self.ike = store, driver, ike
        self.addresses, self.clock, self.resolve = addresses, clock, resolve
        self.certificate_for = certificate_for
        self.kerberos = kerberos  # the node's computer account, for rules that authenticate with Kerberos
        self.unassigned_poll_interval = unassigned_poll_interval
        self.log = log
        self.applied: AppliedPolicy | None = None
        self.events: deque[Event] = deque(maxlen=max_events)
        self._events_lock = threading.Lock()  # the store notes from the reader thread (its warnings)
        self._refused: tuple[PolicyRef, Hashable] | None = None  # not retried until its stamp moves
        self._next_poll = 0.0
        self._reader = StoreThread()
        self._reading: asyncio.Future[Reading] | None = None  # the read in the reader thread, if one runs

    # --- applying

    def apply(self) -> PolicyChange:
        """Read the assigned policy and put it in force. Raises PolicyError or StoreUnavailable (the policy
        in force stays)."""
        change = self.act(self.read(force=True), force=True)
        assert change is not None  # a forced act raises rather than returning None
        return change

    def refresh(self) -> PolicyChange:
        """``ipsecctl refresh``: re-read the store now, whatever the change stamp says; a directory store
        reads its Group Policy objects again first (``gpupdate /force``)."""
        change = self.act(self.read(force=True, group_policy=True), force=True)
        assert change is not None
        return change

    def poll(self) -> PolicyChange | None:
        """The periodic check: apply when the assigned policy, its stamp or this node's addresses moved.

        Never raises for a bad policy or an unreachable store: both are logged and the old policy stays.
        """
        return self.act(self.read(), force=False)

    def read(self, force: bool = False, group_policy: bool = False) -> Reading:
        """The store's half of a look, and only its I/O (safe in the reader thread: it changes nothing the
        loop uses): the assigned policy, its stamp, and the policy itself when `force` or when the stamp
        moved from the one in force or refused. `group_policy`: ``gpupdate /force`` first."""
        if group_policy and isinstance(self.store, GroupPolicyStore):
            self.store.refresh()
        ref: PolicyRef | None = None
        stamp: Hashable = None
        try:
            ref = self.store.assigned_policy()
            if ref is None:
                return Reading()
            stamp = self.store.change_stamp(ref)
            current = self.applied
            known = {(current.ref, current.stamp) if current else None, self._refused}
            if not force and (ref, stamp) in known:
                return Reading(ref, stamp)
            return Reading(ref, stamp, self.store.load(ref))
        except (PolicyError, StoreUnavailable) as e:
            return Reading(ref, stamp, error=e)

    def act(self, reading: Reading, force: bool) -> PolicyChange | None:
        """The loop's half: put what `read` found in force. `force` (apply, refresh) raises the reading's
        error and always returns a change; otherwise (a poll) errors are logged, None when nothing moved."""
        self._schedule_poll()
        ref, stamp, error = reading.ref, reading.stamp, reading.error
        if isinstance(error, StoreUnavailable):
            self.note("store-unavailable", f"{error}; keeping {self._in_force()}")
        elif isinstance(error, PolicyError):
            self._refuse(ref, stamp, error)
        elif ref is None:
            return self._unassign() if force or self.applied else None
        elif reading.policy is not None:
            try:
                return self._install(ref, stamp, reading.policy, "policy-applied")
            except PolicyError:
                if force:
                    raise
            return None
        elif self.applied and (ref, stamp) == (self.applied.ref, self.applied.stamp) \
                and self._my_addresses() != self.applied.addresses:
            with contextlib.suppress(PolicyError):
                return self._install(ref, stamp, self.applied.policy, "addresses-changed")
        if force and error is not None:
            raise error
        return None

    async def look(self, force: bool = False, group_policy: bool = False) -> PolicyChange | None:
        """`read` in the reader thread, `act` here on the loop: apply (`force`), refresh (and `group_policy`)
        or poll without stalling the loop while the store waits on a DC. One read at a time: a read still
        running (a refresh's, or one past READ_TIMEOUT still waiting on the DC) is waited for first; each
        wait is bounded by READ_TIMEOUT, past which the store is unavailable and the policy in force stays."""
        reading = Reading(error=StoreUnavailable(f"the policy store did not answer in {READ_TIMEOUT:g} s"))
        if await self._finished(self._reading):
            self._reading = ours = self._reader.run(self.read, force, group_policy)
            if await self._finished(ours):
                reading = ours.result()
        return self.act(reading, force)

    @staticmethod
    async def _finished(read: asyncio.Future[Reading] | None) -> bool:
        """Whether `read` (None: no read) has finished, waiting up to READ_TIMEOUT for it."""
        if read is None or read.done():
            return True
        done, _running = await asyncio.wait({read}, timeout=READ_TIMEOUT)
        return bool(done)

    async def in_reader(self, function: Callable[..., Any], *args: Any) -> Any:
        """`function(*args)` in the reader thread, after any read of the store there (one at a time)."""
        return await self._reader.run(function, *args)

    def seconds_until_poll(self) -> float:
        """Until the policy's polling interval ends or, with a directory store, the Group Policy one."""
        wait = self._next_poll - self.clock()
        if isinstance(self.store, GroupPolicyStore):
            wait = min(wait, self.store.seconds_until_group_policy())
        return max(0.0, wait)

    async def run(self, on_change: Callable[[PolicyChange | None], None] = lambda change: None) -> None:
        """Poll at the policy's interval for ever (a task of the daemon's loop, after the first apply),
        each look's change to `on_change`. It looks at the schedule every second at least: a refresh
        applying a policy with a shorter interval moves the next poll closer."""
        while True:
            await asyncio.sleep(min(self.seconds_until_poll(), RESCHEDULE_SECONDS))
            if self.seconds_until_poll() <= 0:
                try:
                    on_change(await self.look())
                except Exception as e:  # a defect, not a refusal or a silent store: said, and polling goes on
                    self._schedule_poll()
                    log.error("the Policy Agent's poll failed", exc_info=True)
                    self.note("internal-error", f"the poll failed: {type(e).__name__}: {e}; "
                                                f"keeping {self._in_force()}")

    def _install(self, ref: PolicyRef, stamp: Hashable, policy: model.Policy, kind: str) -> PolicyChange:
        addresses = self._my_addresses()
        try:
            by_rule = expand_rules(policy, addresses, self.resolve)
        except PolicyError as e:
            self._refuse(ref, stamp, e)
            raise
        filters = spd.SPD(f for rule_filters in by_rule.values() for f in rule_filters)
        settings = ike_settings(policy, by_rule, self.certificate_for, self.kerberos)
        new = AppliedPolicy(ref, stamp, policy, addresses, by_rule, filters, settings)
        previous = self.applied
        change = compare(previous, new)
        self.ike.load_policy(list(settings.rules))  # IKE first: it must know the rules the driver acquires
        self.driver.load_policy(new.spd)
        self.applied, self._refused = new, None
        self._schedule_poll()
        stamp_text = policyfile.format_stamp(policy.last_changed)
        self.note(kind, f"{policy.name} {{{policy.guid}}} changed {stamp_text}: {len(policy.rules)} rules, "
                          f"{len(filters)} specific filters" + (f"; {change.describe()}" if previous else ""))
        for warning in settings.warnings:
            self.note("policy-warning", warning)
        return change

    def _unassign(self) -> PolicyChange:
        change = compare(self.applied, None)
        if self.applied:
            self.ike.load_policy([])
            self.driver.load_policy(spd.SPD())
            self.note("policy-unassigned", f"{self.applied.policy.name} no longer assigned; "
                                             f"{change.describe()}")
        self.applied = None
        return change

    def _refuse(self, ref: PolicyRef | None, stamp: Hashable, error: PolicyError) -> None:
        self._refused = (ref, stamp) if ref else None
        where = ref.location if ref else "the assigned policy"
        self.note("policy-refused", f"{where} refused, keeping {self._in_force()}:\n{error}")

    def _in_force(self) -> str:
        return f"{self.applied.policy.name!r} in force" if self.applied else "no policy in force"

    def _my_addresses(self) -> tuple[IPv4Address, ...]:
        return tuple(sorted(set(self.addresses())))

    def _schedule_poll(self) -> None:
        interval = self.applied.policy.polling_interval if self.applied else self.unassigned_poll_interval
        self._next_poll = self.clock() + interval

    def note(self, kind: str, message: str) -> None:
        """Add an event to the log (the Negotiator adds soft associations here too; the store its warnings,
        from the reader thread)."""
        event = Event(self.clock(), kind, message)
        with self._events_lock:
            self.events.append(event)
        if self.log:
            self.log(event)

    def event_list(self) -> list[Event]:
        """The events so far, oldest first (a copy: the reader thread may add one meanwhile)."""
        with self._events_lock:
            return list(self.events)

    def ike_rule_for(self, f: spd.Filter) -> IKERule | None:
        """The IKE rule for a driver's acquire on filter f (the daemon's glue between the two)."""
        return self.applied.ike.for_filter(f) if self.applied else None

    # --- import and export (a file, keeping GUIDs and change stamps)

    def export(self, path: str | Path, ref: PolicyRef | None = None) -> model.Policy:
        """Write a policy of the store (the assigned one by default) to a file another node can import."""
        ref = ref or self.store.assigned_policy()
        if ref is None:
            raise LookupError("no policy is assigned; name the policy to export")
        policy = self.store.load(ref)
        policyfile.save(policy, path)
        self.note("policy-exported", f"{policy.name} {{{policy.guid}}} to {path}")
        return policy

    def import_(self, path: str | Path, assign: bool = False) -> PolicyRef:
        """Store the policy in a file, replacing the stored policy with the same GUID; optionally assign it.

        It takes effect at the next poll or refresh, as in Windows. PolicyError if the file is bad.
        """
        policy = policyfile.load(path)
        ref = self.store.save(policy)
        if assign:
            if not isinstance(self.store, LocalStore):
                raise TypeError("only a local store takes assignments from this node")
            self.store.assign(ref)
        self.note("policy-imported", f"{policy.name} {{{policy.guid}}} from {path} to {ref.location}"
                                       + (", assigned" if assign else ""))
        return ref

    # --- what ipsecctl shows (JSON-ready)

    def show_policy(self) -> dict[str, Any] | None:
        """``ipsecctl show policy``: the policy in force as its file would read, pre-shared keys hidden;
        with a directory store, first where it came from (directory, cache, local), its ipsecID and
        whenChanged, its GPO and why the cache or the local store is used."""
        source = {"source": self.store.status.to_dict()} if isinstance(self.store, GroupPolicyStore) else {}
        if not self.applied:
            return source or None
        as_file = yaml.safe_load(policyfile.dumps(self.applied.policy, hide_keys=True))
        return {**source, "location": self.applied.ref.location, **as_file}

    def generic_filters(self) -> list[dict[str, Any]]:
        """``ipsecctl show filters generic``: the policy's filters as configured ('me', DNS names)."""
        if not self.applied:
            return []
        rows = []
        for rule in self.applied.policy.rules:
            for f in rule.filter_list.filters:
                rows.append({
                    "rule": rule.name, "filter_list": rule.filter_list.name, "filter": f.name,
                    "source": str(f.source), "destination": str(f.destination),
                    "protocol": model.protocol_name(f.protocol), "source_port": f.source_port or "any",
                    "destination_port": f.destination_port or "any", "mirrored": f.mirrored,
                    "action": rule.filter_action.name, "tunnel": str(rule.tunnel) if rule.tunnel else None,
                    "active": rule.active,
                })
        return rows

    def specific_filters(self) -> list[dict[str, Any]]:
        """``ipsecctl show filters specific``: what the driver holds, most specific first."""
        if not self.applied:
            return []
        return [{
            "name": f.name, "rule": f.rule, "direction": f.direction.value, "source": str(f.src),
            "destination": str(f.dst), "protocol": model.protocol_name(f.protocol),
            "source_port": f.src_port or "any", "destination_port": f.dst_port or "any",
            "action": f.action.action.value, "tunnel": str(f.tunnel) if f.tunnel else None,
            "weight": list(f.weight), "text": f.describe(),
        } for f in self.applied.spd.filters]

    def event_log(self, since: float = 0.0) -> list[dict[str, Any]]:
        return [e.to_dict() | {"text": str(e)} for e in self.event_list() if e.time >= since]

    def stored_policies(self) -> list[dict[str, Any]]:
        """``ipsecctl show policy --all``: every policy in the store, the assigned one marked."""
        assigned = self.store.assigned_policy()
        return [{"location": ref.location, "name": p.name, "guid": str(p.guid),
                 "when_changed": policyfile.format_stamp(p.last_changed), "assigned": ref == assigned}
                for ref, p in self.store.list()]

    def handlers(self) -> dict[str, Callable[..., Any]]:
        """The control-socket commands of the Policy Agent, to merge into the daemon's table for ipsecctl.

        Each takes keyword arguments from the request and returns JSON-ready data, or a coroutine of it for
        those that read the store (in the reader thread); an exception (a refused policy: PolicyError, with
        file, line and field) becomes the error answer.
        """
        async def refresh() -> dict[str, Any]:
            change = await self.look(force=True, group_policy=True)
            assert change is not None
            applied = self.applied
            return {"policy": applied.policy.name if applied else None, "change": change.to_dict()}

        async def export(path: str, location: str | None = None) -> dict[str, Any]:
            policy = await self.in_reader(self.export, path, PolicyRef(location) if location else None)
            return {"path": path, "name": policy.name, "guid": str(policy.guid)}

        async def policies() -> list[dict[str, Any]]:
            return await self.in_reader(self.stored_policies)

        def import_(path: str, assign: bool = False) -> dict[str, Any]:
            return {"location": self.import_(path, assign).location, "assigned": assign}

        def filters(kind: str = "specific") -> list[dict[str, Any]]:
            if kind not in ("generic", "specific"):
                raise ValueError(f"filters are generic or specific, not {kind!r}")
            return self.generic_filters() if kind == "generic" else self.specific_filters()

        return {"policy": self.show_policy, "policies": policies, "policy_filters": filters,
                "policy_events": self.event_log, "refresh": refresh, "export": export, "import": import_}



class Negotiator:
    """The driver's acquire, seen with the policy: which IKE rule negotiates, and when a silent peer gets a
    soft association instead (the driver's ``ike.acquire(filter, selector)`` hook delegates here).

    Transport mode negotiates for this packet's two addresses (with the filter's protocol and ports), as
    Windows makes a specific filter per peer; tunnel mode for the filter's subnets. IKE must call
    ``peer_answered(peer)`` on any message from a peer: from then on it never gets clear text.
    """

    def __init__(self, agent: PolicyAgent, ike: Acquiring, driver: SoftSAs,
                 soft: SoftAssociations | None = None) -> None:
        self.agent, self.ike, self.driver = agent, ike, driver
        self.soft = soft or SoftAssociations()

    def acquire(self, f: spd.Filter, sel: spd.PacketSelector) -> None:
        peer = str(f.tunnel) if f.tunnel else str(IPv4Address(sel.dst))
        now = self.agent.clock()
        if self.soft.verdict(peer, f.action, now) is Verdict.CLEAR:
            self.driver.add_soft_sa(f.name, peer)
            self.agent.note("soft-association", f"{peer} never answered IKE: {f.name} traffic goes in clear"
                                                f" ({self.soft.count} soft associations)")
            return
        rule = self.agent.ike_rule_for(f)
        if rule is None:
            self.agent.note("no-ike-rule", f"{f.name}: no IKE rule (see the policy warnings); not secured")
            return
        ports = (f.protocol or 0, f.src_port or 0, f.dst_port or 0)
        if f.tunnel:
            local, remote = IKESelector(f.src, ports[0], ports[1]), IKESelector(f.dst, ports[0], ports[2])
        else:
            local = IKESelector(IPv4Network(IPv4Address(sel.src)), ports[0], ports[1])
            remote = IKESelector(IPv4Network(IPv4Address(sel.dst)), ports[0], ports[2])
        self.soft.negotiation_started(peer, now)
        self.ike.acquire(rule, local, remote, peer)

    def peer_answered(self, peer: str) -> None:
        self.soft.peer_answered(peer)
