"""ipsecd: builds the IPsec driver from the node configuration and runs it with its control socket.

    ipsecd [-c /etc/ipsecd/ipsecd.yaml]        run (foreground; logs to stderr)
    ipsecd --check [-c FILE]                   check the configuration file and exit

A bad configuration file makes ipsecd refuse to start (exit code 2, the file, line and field on stderr);
`ipsecctl reload` (or SIGHUP) re-reads it and keeps the previous configuration if the new one is bad.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal
import sys
import time
from collections import defaultdict
from collections.abc import Iterable

from ipsecd import config, control, wireshark
from ipsecd.config import ConfigError, ManualSA, NodeConfig
from ipsecd.counters import GLOBAL_COUNTERS
from ipsecd.driver import DRIVER_COUNTERS, Driver, KernelWire
from ipsecd.netfilter import Marks, Netfilter
from ipsecd.sad import Lifetime, SecurityAssociation
from ipsecd.tun import Tun

log = logging.getLogger("ipsecd")

SOFT_FRACTION = 0.9  # a manual SA's soft lifetime, as a share of its hard lifetime
EXPIRY_INTERVAL = 1.0
COUNTER_LABELS = dict(GLOBAL_COUNTERS) | dict(DRIVER_COUNTERS) | {
    "blocked_by_filter": "Packets Blocked By Filters (kernel)",
    "unsecured_packets_dropped": "Unsecured Packets Dropped (kernel)",
}

Group = tuple[ManualSA, ...]


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
    """One node's ipsecd: TUN, sockets, kernel policy, driver, control socket, lifetime timer."""

    def __init__(self, path: str, cfg: NodeConfig) -> None:
        self.path = path
        self.cfg = cfg
        self.started = time.time()
        self.manual: dict[Group, SecurityAssociation] = {}
        s = cfg.driver
        self.tun = Tun(s.tun, s.mtu)
        self.wire = KernelWire(self.tun, s.bypass_mark)
        self.kernel = Netfilter(Marks(s.fwmark, s.bypass_mark, s.route_table, s.tun))
        self.driver = Driver(cfg.spd, wire=self.wire, kernel=self.kernel, idle_seconds=s.idle_seconds)
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
                self.driver.add_sa(sa, group[0].filter, manual=True)
                self.manual[group] = sa

    def reload(self) -> str:
        try:
            cfg = config.load(self.path)
        except ConfigError as e:
            log.error("reload refused, the previous configuration stays in force: %s", e)
            raise
        if cfg.driver != self.cfg.driver:
            log.warning("driver settings changed in %s: they take effect at the next start", self.path)
        self.driver.load_policy(cfg.spd)
        self.install_manual(cfg)
        self.cfg = cfg
        message = f"reloaded {self.path}: {len(cfg.spd)} filters, {len(cfg.sas)} manual SAs"
        log.info(message)
        return message

    def reload_quietly(self) -> None:
        """SIGHUP: reload; a bad file is logged and the running configuration stays."""
        with contextlib.suppress(ConfigError):
            self.reload()

    # -- control commands ------------------------------------------------------------------------------------

    def status(self) -> dict:
        counters = self.driver.counter_values()
        return {"config": self.path, "pid": os.getpid(), "uptime_seconds": round(time.time() - self.started),
                "tun": self.cfg.driver.tun, "filters": len(self.driver.spd),
                "active_sas": counters["active_sas"], "pending_acquires": self.driver.pending,
                "counters": counters}

    def stats(self) -> dict:
        counters = self.driver.counter_values()
        return {"counters": counters, "labels": {k: COUNTER_LABELS.get(k, k) for k in counters}}

    def keys(self) -> dict:
        sas = list(self.driver.sad)
        return {"esp_sa": wireshark.esp_sa_table(sas), "tshark_args": wireshark.tshark_esp_args(sas)}

    def handlers(self) -> dict:
        return {"status": self.status, "sa": self.driver.sa_table, "filters": self.driver.filter_table,
                "stats": self.stats, "keys": self.keys, "reload": self.reload}

    # -- running ------------------------------------------------------------------------------------------

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        loop.add_signal_handler(signal.SIGHUP, self.reload_quietly)
        self.wire.attach(loop, self.driver)
        server = await control.serve(self.cfg.driver.socket, self.handlers())
        log.info("ipsecd running: %d filters, %d manual SAs, TUN %s, control socket %s",
                 len(self.cfg.spd), len(self.cfg.sas), self.cfg.driver.tun, self.cfg.driver.socket)
        try:
            while not stop.is_set():
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), EXPIRY_INTERVAL)
                self.driver.expire()
        finally:
            server.close()
            self.close()

    def close(self) -> None:
        with contextlib.suppress(RuntimeError):
            self.wire.detach(asyncio.get_running_loop())
        self.kernel.remove()
        self.wire.close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.cfg.driver.socket)
        log.info("ipsecd stopped; kernel policy removed")


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
        print(f"{args.config}: OK, {len(cfg.spd)} filters, {len(cfg.sas)} manual SAs")
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
