"""ipsecd: builds the IPsec driver from the node configuration and runs it with its control socket.

    ipsecd [-c /etc/ipsecd/ipsecd.yaml]        run (foreground; logs to stderr)
    ipsecd --check [-c FILE]                   check the configuration file (and the assigned policy) and exit

Two ways to configure a node (docs/ike.md): manual filters and SAs (`filters:`, `sas:`), or a Windows-style
policy (`policy:`), which the Policy Agent reads and IKE negotiates (`ike:` says how IKE runs). With a policy
the three components are wired as docs/ARCHITECTURE.md draws them, through ike_bridge.IKEBridge.

A bad configuration file makes ipsecd refuse to start (exit code 2, the file, line and field on stderr);
`ipsecctl reload` (or SIGHUP) re-reads it and keeps the previous configuration if the new one is bad. A bad
policy is refused by the Policy Agent (`ipsecctl events` says why) and the policy in force stays.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal
import socket
import sys
import time
from collections import defaultdict
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from ipsecd import config, control
from ipsecd.config import ConfigError, DirectorySettings, ManualSA, NodeConfig, PolicySettings
from ipsecd.counters import GLOBAL_COUNTERS
from ipsecd.driver import keyexport
from ipsecd.driver.driver import DRIVER_COUNTERS, IKEHooks, IPsecDriver
from ipsecd.driver.netfilter import Marks, Netfilter
from ipsecd.driver.sad import Lifetime, SecurityAssociation
from ipsecd.driver.tun import Tun
from ipsecd.driver.wire import KernelWire
from ipsecd.ike.component import IKE
from ipsecd.ike_bridge import IKEBridge, certificate_source
from ipsecd.policy import interface_manager
from ipsecd.policy.agent import Negotiator, PolicyAgent, PolicyChange
from ipsecd.policy.store import LocalStore, PolicyRef, StoreUnavailable
from ipsecd.policy.validate import PolicyError, Problem
from ipsecd.yaml_lines import did_you_mean

if TYPE_CHECKING:  # a domain member's store is imported by directory_store(): other nodes never load it
    from ipsecd.policy.directory_store import DirectoryStore

log = logging.getLogger("ipsecd")

SOFT_FRACTION = 0.9  # a manual SA's soft lifetime, as a share of its hard lifetime
EXPIRY_INTERVAL = 1.0
COUNTER_LABELS = dict(GLOBAL_COUNTERS) | dict(DRIVER_COUNTERS) | {
    "blocked_by_filter": "Packets Blocked By Filters (kernel)",
    "unsecured_packets_dropped": "Unsecured Packets Dropped (kernel)",
    "dropped_fail_closed": "Packets Dropped While The Driver Was Down (kernel)",
}

Group = tuple[ManualSA, ...]


def ike_counter_key(name: str) -> str:
    """An IKE counter (ipsecmon's name) as a stats key, prefixed so it never meets a driver counter.

    >>> ike_counter_key("Oakley Main Modes")
    'ike_oakley_main_modes'
    """
    return "ike_" + "_".join("".join(c if c.isalnum() else " " for c in name.lower()).split())


def event_kind(text: str) -> str:
    """A kind for an IKE event line, so `ipsecctl events` reads like the policy events beside it."""
    for word, kind in (("dropped", "dropped"), ("failed", "negotiation-failed"),
                       ("refused", "negotiation-failed"), ("no answer", "negotiation-failed"),
                       ("established", "main-mode"),
                       ("installed", "quick-mode"), ("rekey", "rekey"), ("deleted", "sa-deleted"),
                       ("malformed", "malformed")):
        if word in text:
            return kind
    return "ike"


def directory_store(d: DirectorySettings, local: LocalStore) -> DirectoryStore:
    """A domain member's store: its DC by remembered address, its computer account's keytab, its cache."""
    from ipsecd.policy.directory_store import DirectoryStore
    from ipsecd.policy.ldap_directory import Credentials, DirectoryServer

    if d.krb5_config is not None:
        os.environ["KRB5_CONFIG"] = str(d.krb5_config)  # read by the Kerberos library at the first bind
    d.ccache.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    server = DirectoryServer(str(d.dc), d.dc_name, d.realm, d.ca, timeout=d.timeout)
    account = d.account or f"{socket.gethostname().split('.')[0]}$"
    credentials = Credentials(account, keytab=d.keytab, ccache=d.ccache)
    return DirectoryStore(server, credentials, d.cache, local=local,
                          group_policy_interval=d.group_policy_interval)


class PolicyKeying:
    """The Policy Agent, IKE and the Negotiator of a policy-configured node, wired to its driver."""

    def __init__(self, cfg: NodeConfig, p: PolicySettings, driver: IPsecDriver, wire: KernelWire) -> None:
        s = cfg.ike
        self.settings = p
        self.tun = cfg.driver.tun
        self.bridge = IKEBridge(driver, cfg.driver.replay_window)
        driver.ike = self.bridge
        address = s.address or next(iter(self.addresses()), None)
        if address is None:
            raise ConfigError(f"{cfg.path}: ike.address: this node has no IPv4 address to run IKE on")
        self.ike = IKE(str(address), self.bridge, send_4500=wire.send_ike, retransmit=s.retransmit,
                       keepalive_interval=s.keepalive_seconds, main_mode_lifetime=s.main_mode_lifetime,
                       nat_traversal=s.nat_traversal)
        self.bridge.ike = self.ike
        local = LocalStore(p.store)
        if p.assign:
            path = p.store / p.assign
            if not path.is_file():
                raise ConfigError(f"{cfg.path}: policy.assign: {path} does not exist")
            local.assign(PolicyRef(str(path)))
        directory = directory_store(p.directory, local) if p.directory else None
        certificates = certificate_source(s.certificate, s.private_key, s.trusted_cas)
        self.agent = PolicyAgent(directory or local, self.bridge, self.ike, addresses=self.addresses,
                                 certificate_for=certificates, kerberos=s.kerberos,
                                 log=lambda event: log.info("%s", event))
        if directory:
            directory.log = self.agent.note  # the store's warnings (cache in use, refused objects) as events
        self.negotiator = Negotiator(self.agent, self.ike, driver)
        self.bridge.negotiator = self.negotiator
        self.ike.on_peer_message = self.negotiator.peer_answered
        self.clock_offset = 0.0  # wall clock minus IKE's loop clock, for one time line in `events`

    def addresses(self):
        return interface_manager.addresses(exclude=[self.tun])

    def store_name(self) -> str:
        d = self.settings.directory
        return f"{self.settings.store}" + (f" under the directory of {d.realm} (DC {d.dc})" if d else "")

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self.clock_offset = time.time() - loop.time()
        await self.ike.start()
        with contextlib.suppress(PolicyError, StoreUnavailable):  # logged as events; polling goes on
            await self.agent.look(force=True)

    async def poll(self) -> None:
        """The Policy Agent's polling (its reads of the store in its reader thread), acting on what each
        change touched."""
        await self.agent.run(self.changed)

    def changed(self, change: PolicyChange | None) -> None:
        """Delete the SAs of the rules a policy change touched (telling the peer), and the main mode SAs
        authenticated otherwise than the new policy says; every other SA stays."""
        if change is None:
            return
        for spi in self.bridge.quick_modes_of_filters(change.touched_filters):
            self.ike.expire(spi, hard=True, reason="its policy rule changed")
        self.ike.delete_main_modes(change.reauthenticate, "the authentication of its policy rule changed")

    async def refresh(self) -> dict:
        change = await self.agent.look(force=True, group_policy=True)
        assert change is not None
        self.changed(change)
        applied = self.agent.applied
        return {"policy": applied.policy.name if applied else None, "change": change.to_dict()}

    def summary(self) -> dict:
        """One line's worth for `ipsecctl status`: the policy in force and IKE's SAs."""
        applied = self.agent.applied
        return {"policy": applied.policy.name if applied else None, "ike_address": self.ike.local_address,
                "main_mode_sas": len(self.ike.main_modes), "quick_mode_sas": len(self.ike.quick_modes)}

    def counters(self) -> dict[str, tuple[str, int]]:
        values = {ike_counter_key(name): (f"IKE: {name}", n) for name, n in self.ike.counters.items()}
        values["ike_soft_associations"] = ("IKE: Soft Associations", self.negotiator.soft.count)
        return values

    def events(self, since: float = 0.0) -> list[dict[str, Any]]:
        """Policy and negotiation events on one time line (wall clock), oldest first."""
        rows: list[dict[str, Any]] = [{"time": round(e.time, 3), "kind": e.kind, "text": e.message}
                                      for e in self.agent.event_list()]
        rows += [{"time": round(t + self.clock_offset, 3), "kind": event_kind(text), "text": text}
                 for t, text in self.ike.events]
        return sorted((r for r in rows if r["time"] >= since), key=lambda r: r["time"])

    def handlers(self) -> dict:
        agent = self.agent.handlers()
        kept = ("policy", "policies", "policy_filters")
        return {**{name: agent[name] for name in kept}, "refresh": self.refresh, "events": self.events,
                "mmsa": self.ike.main_mode_sas, "qmsa": self.ike.quick_mode_sas,
                # "file", not "path": control.request() has a parameter of that name
                "export": lambda file, location=None: agent["export"](file, location),
                "import": lambda file, assign=False: agent["import"](file, assign)}


def manual_groups(sas: Iterable[ManualSA]) -> list[Group]:
    """Manual SAs grouped into what the driver installs: one SA, or an AH SA and an ESP SA as a bundle."""
    groups: dict[tuple, list[ManualSA]] = defaultdict(list)
    for sa in sas:
        groups[(sa.filter, sa.direction, sa.source, sa.destination)].append(sa)
    out: list[Group] = []
    for members in groups.values():
        protocols = sorted(m.protocol for m in members)
        if protocols == ["ah", "esp"]:
            out.append(tuple(sorted(members, key=lambda m: m.protocol)))  # (ah, esp)
        else:
            out.extend((m,) for m in members)
    return out


def build_sa(group: Group, replay_window: int) -> SecurityAssociation:
    """The SecurityAssociation for one group; for a bundle the AH SA with the ESP SA inside."""
    def one(m: ManualSA, inner: SecurityAssociation | None = None) -> SecurityAssociation:
        hard_s, hard_kb = m.lifetime_seconds, m.lifetime_kb
        lifetime = Lifetime(soft_kilobytes=int(hard_kb * SOFT_FRACTION) if hard_kb else None,
                            hard_kilobytes=hard_kb,
                            soft_seconds=hard_s * SOFT_FRACTION if hard_s else None, hard_seconds=hard_s)
        return SecurityAssociation(m.spi, m.protocol, str(m.direction), m.mode, str(m.source),
                                   str(m.destination), m.encryption or "null", m.enc_key, m.integrity,
                                   m.auth_key, udp_encap=m.udp_encap, lifetime=lifetime,
                                   replay_window=replay_window, inner=inner)

    if len(group) == 2:
        ah, esp = group
        return one(ah, one(esp))
    return one(group[0])


class Daemon:
    """One node's ipsecd: TUN, sockets, kernel policy, driver, control socket, lifetime timer.

    IKE plugs in as `ike` (acquire/expire/datagram_4500) and calls `daemon.driver` back.
    """

    def __init__(self, path: str, cfg: NodeConfig, ike: IKEHooks | None = None) -> None:
        self.path = path
        self.cfg = cfg
        self.started = time.time()
        self.manual: dict[Group, SecurityAssociation] = {}
        s = cfg.driver
        self.tun = Tun(s.tun, s.mtu, s.offload)
        self.wire = KernelWire(self.tun, s.bypass_mark)
        self.kernel = Netfilter(Marks(s.fwmark, s.bypass_mark, s.route_table, s.tun))
        self.driver = IPsecDriver(cfg.spd, wire=self.wire, kernel=self.kernel, ike=ike,
                             idle_seconds=s.idle_seconds)
        # With a policy, the Policy Agent and IKE come in through the bridge (it replaces `ike`).
        self.keying = PolicyKeying(cfg, cfg.policy, self.driver, self.wire) if cfg.policy else None
        self.install_manual(cfg)

    def install_manual(self, cfg: NodeConfig) -> None:
        """Make the driver's manual SAs those of `cfg`; unchanged SAs stay, with their sequence numbers."""
        wanted = manual_groups(cfg.sas)
        for group in [g for g in self.manual if g not in wanted]:
            sa = self.manual.pop(group)
            with contextlib.suppress(KeyError):  # already gone (hard lifetime)
                self.driver.delete_sa(sa.spi, sa.dst, sa.protocol)
        for group in wanted:
            if group not in self.manual:
                sa = build_sa(group, cfg.driver.replay_window)
                self.driver.add_sa(sa, group[0].filter, manual=True,
                                   nat_keepalive=any(m.nat_keepalive for m in group))
                self.manual[group] = sa

    async def reload(self) -> str:
        try:
            cfg = config.load(self.path)
        except ConfigError as e:
            log.error("reload refused, the previous configuration stays in force: %s", e)
            raise
        if (cfg.policy is None) != (self.keying is None):
            error = ConfigError(f"{self.path}: switching between a policy and manual SAs takes a restart of "
                                "ipsecd; the running configuration stays")
            log.error("reload refused: %s", error)
            raise error
        if (cfg.driver, cfg.ike, cfg.policy) != (self.cfg.driver, self.cfg.ike, self.cfg.policy):
            log.warning("driver, ike or policy settings changed in %s: they take effect at the next start",
                        self.path)
        if self.keying:
            self.cfg = cfg
            return f"reloaded {self.path}; the policy: {(await self.keying.refresh())['change']['text']}"
        self.driver.load_policy(cfg.spd)
        self.install_manual(cfg)
        self.cfg = cfg
        message = f"reloaded {self.path}: {len(cfg.spd)} filters, {len(cfg.sas)} manual SAs"
        log.info(message)
        return message

    async def reload_quietly(self) -> None:
        """SIGHUP: reload; a bad file is logged and the running configuration stays."""
        with contextlib.suppress(ConfigError, PolicyError, StoreUnavailable):
            await self.reload()

    # -- control commands ------------------------------------------------------------------------------------

    def status(self) -> dict:
        counters = self.driver.counter_values()
        return {"config": self.path, "pid": os.getpid(), "uptime_seconds": round(time.time() - self.started),
                "tun": self.cfg.driver.tun, "filters": len(self.driver.spd),
                "active_sas": counters["active_sas"], "pending_acquires": self.driver.pending,
                "counters": counters, "keying": self.keying.summary() if self.keying else None}

    def stats(self) -> dict:
        counters = self.driver.counter_values()
        labels = {k: COUNTER_LABELS.get(k, k) for k in counters}
        for key, (label, value) in (self.keying.counters() if self.keying else {}).items():
            counters[key], labels[key] = value, label
        return {"counters": counters, "labels": labels}

    def keys(self) -> dict:
        """The esp_sa table and, with IKE, the ikev1_decryption_table (Wireshark's two UAT files)."""
        sas = list(self.driver.sad)
        ike = self.keying.ike.ikev1_decryption_table() if self.keying else []
        return {"esp_sa": keyexport.esp_sa_table(sas), "ikev1_decryption_table": ike,
                "tshark_args": keyexport.tshark_esp_args(sas)
                + [arg for row in ike for arg in ("-o", f"uat:ikev1_decryption_table:{row}")]}

    def handlers(self) -> dict:
        handlers = {"status": self.status, "sa": self.driver.sa_table, "filters": self.driver.filter_table,
                    "stats": self.stats, "keys": self.keys, "reload": self.reload}
        policy = self.keying.handlers() if self.keying else {}
        for command in ("policy", "policies", "policy_filters", "export", "import", "refresh", "events",
                        "mmsa", "qmsa"):
            handlers[command] = policy.get(command) or _manual_only(command)
        return handlers

    # -- running ------------------------------------------------------------------------------------------

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        reloads: set[asyncio.Task] = set()  # kept until done (the loop holds only weak references)

        def reload_on_hangup() -> None:
            task = loop.create_task(self.reload_quietly())
            reloads.add(task)
            task.add_done_callback(reloads.discard)
        loop.add_signal_handler(signal.SIGHUP, reload_on_hangup)
        self.wire.attach(loop, self.driver)
        polling = None
        if self.keying:
            await self.keying.start()
            polling = asyncio.create_task(self.keying.poll())
        server = await control.serve(self.cfg.driver.socket, self.handlers())
        keying = self.keying
        how = (f"policy store {keying.store_name()}, IKE on {keying.ike.local_address}" if keying
               else f"{len(self.cfg.spd)} filters, {len(self.cfg.sas)} manual SAs")
        log.info("ipsecd running: %s, TUN %s, control socket %s", how, self.cfg.driver.tun,
                 self.cfg.driver.socket)
        try:
            while not stop.is_set():
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), EXPIRY_INTERVAL)
                self.driver.expire()
        finally:
            server.close()
            if polling:
                polling.cancel()
            if self.keying:
                await self.keying.ike.stop()  # deletes every SA, telling the peers, before the sockets close
            self.close()

    def close(self) -> None:
        with contextlib.suppress(RuntimeError):
            self.wire.detach(asyncio.get_running_loop())
        self.kernel.remove()
        self.wire.close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.cfg.driver.socket)
        log.info("ipsecd stopped; kernel policy removed")


def _manual_only(command: str):
    def refuse(**_) -> None:
        raise RuntimeError(f"{command}: this node runs manual SAs (no policy: in its ipsecd.yaml), "
                           "so it has no Policy Agent and no IKE")
    return refuse


def check_policy(settings: PolicySettings, config_path: str = "") -> str:
    """`ipsecd --check` for a policy node: the assigned policy, read and checked as the agent does."""
    store, assign = LocalStore(settings.store), settings.assign
    if assign and not (settings.store / assign).is_file():
        present = sorted(p.name for p in settings.store.glob("*.yaml"))
        raise PolicyError([Problem("policy.assign", f"{assign!r} is not a policy file in the store "
                                   f"{settings.store}{did_you_mean(assign, present)}; it holds: "
                                   f"{', '.join(present) or 'no policy file'}", config_path)])
    ref = PolicyRef(str(settings.store / assign)) if assign else store.assigned_policy()
    d = settings.directory
    domain = f"; the domain's Group Policy first (DC {d.dc}, {d.realm}: not contacted by --check)" \
        if d else ""
    if ref is None:
        return f"no policy assigned in {settings.store}{domain}"
    policy = store.load(ref)
    return f"local policy {policy.name!r} ({ref.location}): {len(policy.rules)} rules{domain}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="ipsecd", description="IPsec driver daemon (userspace ESP/AH)")
    parser.add_argument("-c", "--config", default=str(config.DEFAULT_PATH), help="node configuration file")
    parser.add_argument("--check", action="store_true", help="check the configuration file and exit")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, stream=sys.stderr,
                        format="%(asctime)s ipsecd %(levelname)s: %(message)s")
    try:
        cfg = config.load(args.config)
    except ConfigError as e:
        print(f"ipsecd: refusing to start: {e}", file=sys.stderr)
        return 2
    if args.check:
        if cfg.policy is None:
            print(f"{args.config}: OK, {len(cfg.spd)} filters, {len(cfg.sas)} manual SAs")
            return 0
        try:
            print(f"{args.config}: OK, {check_policy(cfg.policy, args.config)}")
        except PolicyError as e:
            count = len(e.problems)
            print(f"ipsecd: the assigned policy is refused ({count} problem{'s' * (count != 1)}):\n{e}",
                  file=sys.stderr)
            return 2
        except OSError as e:
            print(f"ipsecd: the assigned policy is refused: {e}", file=sys.stderr)
            return 2
        return 0
    try:
        daemon = Daemon(args.config, cfg)
    except (OSError, RuntimeError, ValueError) as e:
        print(f"ipsecd: cannot start: {e}", file=sys.stderr)
        return 1
    asyncio.run(daemon.run())
    return 0


if __name__ == "__main__":
    sys.exit(main())
