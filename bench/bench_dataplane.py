"""Data-plane throughput: iperf3 over the plain lab link, ipsecd transport and tunnel mode, strongSwan.

Every case gets its own lab, all up at once; then BENCH_ROUNDS rounds (3) each run iperf3 TCP and UDP
(large datagrams, paced) through every case in turn. A machine shared with other tenants drifts in speed by
tens of percent within minutes (measured here: the same driver path 3.6 us one day, 6-12 us another), so
interleaving puts each case under the same conditions as its baselines: a row is the median of its rounds
with their range, and the ratio rows (ipsecd against strongSwan, against the plain link) are medians of
per-round ratios. The machine-speed rows, timed each round, tell how fast the machine was, for comparing
one run with another.

Rows report Mbit/s, packets per second on the wire and CPU (whole machine, and the daemons: ipsecd or
charon). Each ipsecd case runs with TUN super-packet I/O (`offload`, the default) and, side by side, with
one packet per TUN read/write (`driver: {offload: false}`); ESP in UDP adds UDP GSO/GRO; the last rows
turn the veths' TX offload on (the lab keeps it off for true checksums in captures, which also stops GSO at
the link). strongSwan (5.9.8, kernel-libipsec: ESP in UDP 4500, userspace) runs on the same topology with
the same iperf3. Targets from issue 3 for this 2-core machine: TCP with AES-GCM-128 >= 1000 Mbit/s
transport, >= 1300 Mbit/s tunnel; 3DES >= 150.

Before/after a change: BENCH_BASELINE=<git ref> adds twins of the ipsecd transport and tunnel cases whose
nodes run ipsecd as it was at that ref (a node image with that ref's package installed over the current
one, built from `git archive`), measured in the same rounds, and ratio rows new / baseline (medians of
per-round ratios). BENCH_CASES=<label,...> keeps only those cases (and their baseline twins).

    python -m bench dataplane            (BENCH_SECONDS=5, BENCH_ROUNDS=3, BENCH_UDP_RATE=500M)
    BENCH_BASELINE=049daa1 BENCH_CASES="ipsecd transport aes-gcm-128,ipsecd tunnel aes-gcm-128" \\
        python -m bench dataplane
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, replace
from pathlib import Path

from bench.bench_strongswan import STRONGSWAN, fresh_sa
from bench.common import Row, lab_running
from lab.docker_backend import DockerBackend
from lab.images import BUILD_DIR, REPOSITORY, ROOT, Images
from lab.running import Lab, Node
from lab.strongswan import Charon
from lab.traffic import wait_listening

SECONDS = float(os.environ.get("BENCH_SECONDS", "5"))
ROUNDS = int(os.environ.get("BENCH_ROUNDS", "3"))
UDP_RATE = os.environ.get("BENCH_UDP_RATE", "500M")  # paced: a flood starves the daemons (dataplane.md)
UDP_LENGTH = 1372  # 1400-byte IP packets: the TUN MTU, so ipsecd never fragments
BASELINE = os.environ.get("BENCH_BASELINE")  # a git ref whose ipsecd is measured beside this one
ONLY = [w.strip() for w in os.environ.get("BENCH_CASES", "").split(",") if w.strip()]
ALGORITHMS = {"aes-gcm-128": ("aes-gcm-128", None), "3des-sha1": ("3des-cbc", "hmac-sha1-96")}


@dataclass(frozen=True)
class Case:
    label: str
    topology: str
    client: str
    server: str
    wire: tuple[str, str]  # node and interface whose TX packets are the encrypted (or plain) stream
    algorithm: str | None = None  # None: no ipsecd
    tcp_target: float | None = None
    offload: bool = True  # TUN super-packets (ipsecd.driver.offload) or one packet per read/write
    udp_encap: bool = False  # ESP in UDP 4500 (RFC 3948) instead of IP protocol 50: UDP GSO and GRO
    link_offload: bool = False  # veth TX offload on (the lab turns it off so captures show real checksums)
    strongswan: str | None = None  # swanctl's ESP proposal: both gateways run charon instead of ipsecd
    baseline: str | None = None  # a git ref: the nodes run ipsecd as it was there (BENCH_BASELINE)

    @property
    def daemon(self) -> str | None:
        """The data-plane process whose CPU the rows report."""
        return "charon" if self.strongswan else "ipsecd" if self.algorithm else None


TRANSPORT = ("intranet-pair", "host-a", "host-b", ("host-a", "eth1"))
TUNNEL = ("gateway-tunnel", "host-a", "host-b", ("gw-a", "eth2"))
CASES = (
    Case("plain lab link", *TRANSPORT),
    *(Case(f"ipsecd {mode} {algorithm}{'' if offload else ', no offload'}", *where, algorithm,
           target if offload else None, offload)
      for algorithm, mode, where, target in (("aes-gcm-128", "transport", TRANSPORT, 1000),
                                             ("aes-gcm-128", "tunnel", TUNNEL, 1300),
                                             ("3des-sha1", "transport", TRANSPORT, 150),
                                             ("3des-sha1", "tunnel", TUNNEL, 150))
      for offload in (False, True)),
    Case("ipsecd transport aes-gcm-128, ESP in UDP", *TRANSPORT, "aes-gcm-128", udp_encap=True),
    Case("ipsecd tunnel aes-gcm-128, ESP in UDP", *TUNNEL, "aes-gcm-128", udp_encap=True),
    # What the links cost: with TX offload the kernel passes TSO and UDP GSO super-packets over the veth
    Case("plain lab link, veth offload on", *TRANSPORT, link_offload=True),
    Case("ipsecd transport aes-gcm-128, ESP in UDP, veth offload on", *TRANSPORT, "aes-gcm-128",
         udp_encap=True, link_offload=True),
    Case("ipsecd tunnel aes-gcm-128, ESP in UDP, veth offload on", *TUNNEL, "aes-gcm-128", udp_encap=True,
         link_offload=True),
    *(Case(f"strongSwan tunnel {algorithm}", *TUNNEL, algorithm, strongswan=proposal)
      for proposal, algorithm in (("aes128gcm16", "aes-gcm-128"), ("aes128-sha1", "aes-128-cbc/sha1"),
                                  ("3des-sha1", "3des-sha1"))),
)
#: The cases BENCH_BASELINE measures twice: this checkout and the ref (TUN offload on, as deployed)
BASELINE_CASES = ("ipsecd transport aes-gcm-128", "ipsecd tunnel aes-gcm-128", "ipsecd transport 3des-sha1",
                  "ipsecd tunnel 3des-sha1")


def baseline_label(label: str, ref: str) -> str:
    return f"{label}, baseline {ref}"


def with_baseline(cases: tuple[Case, ...], ref: str | None) -> tuple[Case, ...]:
    """`cases` and, with a baseline ref, a twin of each BASELINE_CASES case running that ref's ipsecd."""
    twins = [replace(c, label=baseline_label(c.label, ref), tcp_target=None, baseline=ref)
             for c in cases if ref and c.label in BASELINE_CASES]
    return (*cases, *twins)


def selected(cases: tuple[Case, ...], labels: list[str]) -> tuple[Case, ...]:
    """The cases named in `labels` (all if none), each with its baseline twin."""
    def own(case: Case) -> str:
        return case.label.removesuffix(f", baseline {case.baseline}") if case.baseline else case.label
    return tuple(c for c in cases if not labels or own(c) in labels)


class BaselineImages(Images):
    """Images whose "node" is the node image with ipsecd from git ref `ref` installed over it."""

    def __init__(self, ref: str) -> None:
        super().__init__()
        self.ref = ref
        self.commit = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--verify", f"{ref}^{{commit}}"],
                                     capture_output=True, text=True, check=True).stdout.strip()

    def ensure(self, kind: str) -> str:
        current = super().ensure(kind)
        if kind != "node":
            return current
        tag = f"{REPOSITORY}/node-baseline:{self.commit[:12]}-{current.rsplit(':', 1)[1][:12]}"
        if not self.exists(tag):
            self._build_baseline(current, tag)
        return tag

    def _build_baseline(self, current: str, tag: str) -> None:
        context = BUILD_DIR / "context-node-baseline"
        shutil.rmtree(context, ignore_errors=True)
        (context / "source").mkdir(parents=True)
        self.log(f"[images] {self.ref} ({self.commit[:12]}): git archive, pip wheel -> {tag}")
        archive = subprocess.run(["git", "-C", str(ROOT), "archive", self.commit], capture_output=True,
                                 check=True).stdout
        subprocess.run(["tar", "-x", "-C", str(context / "source")], input=archive, check=True)
        subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps",
                        "--wheel-dir", str(context / "wheels"), str(context / "source")], check=True)
        shutil.rmtree(context / "source")
        (context / "Dockerfile").write_text(
            "ARG BASE\nFROM ${BASE}\nCOPY wheels /tmp/wheels\n"
            "RUN pip install --no-index --no-deps --force-reinstall --no-cache-dir --break-system-packages "
            "/tmp/wheels/*.whl && rm -rf /tmp/wheels\n")
        self._docker_build(context, tag, {"BASE": current})
        shutil.rmtree(context)


#: (what, numerator case, denominator case): medians of per-round TCP ratios
RATIOS = (
    ("ipsecd tunnel / strongSwan tunnel, AES-GCM-128", "ipsecd tunnel aes-gcm-128",
     "strongSwan tunnel aes-gcm-128"),
    ("ipsecd tunnel / strongSwan tunnel, 3DES-SHA1", "ipsecd tunnel 3des-sha1",
     "strongSwan tunnel 3des-sha1"),
    ("ipsecd transport AES-GCM-128 / plain lab link", "ipsecd transport aes-gcm-128", "plain lab link"),
)

LINK_OFFLOAD = ("for i in /sys/class/net/eth*; do ethtool -K ${i##*/} tx on tx-udp-segmentation on gro on"
                " rx-udp-gro-forwarding on >/dev/null 2>&1; done;"
                " ethtool -k eth1 | grep -q 'tx-udp-segmentation: on'")


def manual_config(me: str, peer: str, mine: str, theirs: str, algorithm: str, keys: dict[int, bytes],
                  tunnel: bool, offload: bool = True, udp_encap: bool = False) -> str:
    """An ipsecd configuration: one mirrored filter, one SA each way (SPI 0x100 + sender's last octet)."""
    encryption, integrity = ALGORITHMS[algorithm]
    mode = "tunnel" if tunnel else "transport"
    lines = [f"driver: {{offload: {str(offload).lower()}}}", "filters:",
             f"  - {{name: bench, source: {mine}, destination: {theirs}, action: secure"
             + (f", tunnel: {peer}}}" if tunnel else "}"),
             "actions: {secure: {action: negotiate}}", "sas:"]
    for direction, src, dst in (("outbound", me, peer), ("inbound", peer, me)):
        spi = 0x100 + int(src.rsplit(".", 1)[1])
        enc_key, auth_key = keys[spi][:24 if "3des" in encryption else 20], keys[spi][24:44]
        lines.append(f"  - {{spi: {spi}, protocol: esp, direction: {direction}, mode: {mode}, source: {src}, "
                     f"destination: {dst}, encryption: {encryption}, enc_key: \"{enc_key.hex()}\", "
                     + (f"integrity: {integrity}, auth_key: \"{auth_key.hex()}\", " if integrity else "")
                     + ("udp_encap: {}, " if udp_encap else "") + "filter: bench}")
    return "\n".join(lines) + "\n"


def configs(case: Case, folder: Path) -> dict:
    """Topology overrides for `case`: the ipsecd nodes' configuration files, or strongSwan's gateways."""
    if case.strongswan:
        return {"nodes": {"gw-a": STRONGSWAN, "gw-b": STRONGSWAN}}
    if case.algorithm is None:  # the plain link: the default lab's ipsecd removed (None deletes a key)
        return {"nodes": {node: {"ipsecd": None} for node in ("host-a", "host-b")}} \
            if case.topology == "intranet-pair" else {}
    keys = {spi: os.urandom(44) for spi in range(0x100, 0x200)}
    if case.topology == "intranet-pair":
        pairs = {"host-a": ("10.0.0.1", "10.0.0.2", "10.0.0.1", "10.0.0.2"),
                 "host-b": ("10.0.0.2", "10.0.0.1", "10.0.0.2", "10.0.0.1")}
    else:
        pairs = {"gw-a": ("198.51.100.1", "198.51.100.2", "10.1.0.0/24", "10.2.0.0/24"),
                 "gw-b": ("198.51.100.2", "198.51.100.1", "10.2.0.0/24", "10.1.0.0/24")}
    nodes = {}
    for node, (me, peer, mine, theirs) in pairs.items():
        variant = f"{case.topology}-{case.algorithm}-{case.offload}-{case.udp_encap}-{case.baseline}"
        path = folder / f"{variant}-{node}.yaml"
        path.write_text(manual_config(me, peer, mine, theirs, case.algorithm, keys,
                                      case.topology != "intranet-pair", case.offload, case.udp_encap))
        nodes[node] = {"ipsecd": str(path)}
    return {"nodes": nodes}


def cpu_times() -> tuple[float, float]:
    """(busy, total) jiffies of the whole machine."""
    fields = [float(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + fields[4]
    return sum(fields) - idle, sum(fields)


def daemon_cpu(nodes: list[Node], daemon: str | None) -> float:
    """CPU seconds used so far by the `daemon` processes (ipsecd or charon) of `nodes`."""
    total = 0.0
    pattern = {"ipsecd": "[i]psecd --config", "charon": "[c]haron"}.get(daemon or "")
    for node in nodes if pattern else ():
        script = f"for p in $(pgrep -f '{pattern}'); do cut -d' ' -f14,15 /proc/$p/stat; done"
        for line in node.exec(["sh", "-c", script]).stdout.split("\n"):
            if line.strip():
                total += sum(int(x) for x in line.split()) / os.sysconf("SC_CLK_TCK")
    return total


def tx_packets(node: Node, ifname: str) -> int:
    return int(node.exec(["cat", f"/sys/class/net/{ifname}/statistics/tx_packets"], check=True).stdout)


def measure(lab: Lab, case: Case, udp: bool) -> dict:
    client, server = lab.node(case.client), lab.node(case.server)
    wire_node = lab.node(case.wire[0])
    daemons = [lab.node(n) for n in ("gw-a", "gw-b")] if case.strongswan else \
        [n for n in lab.nodes.values() if n.spec.ipsecd is not None]
    iperf_server = server.spawn(["iperf3", "-s", "-1"], name="iperf3-bench")
    wait_listening(server, 5201)
    argv = ["iperf3", "-J", "-t", str(SECONDS), "-c", server.address()]
    if udp:
        argv += ["-u", "-b", UDP_RATE, "-l", str(UDP_LENGTH)]
    packets, cpu, used = tx_packets(wire_node, case.wire[1]), cpu_times(), daemon_cpu(daemons, case.daemon)
    started = time.monotonic()
    try:
        result = json.loads(client.exec(argv, check=True, timeout=SECONDS + 30).stdout)
    finally:
        iperf_server.stop()
    elapsed = time.monotonic() - started
    packets = tx_packets(wire_node, case.wire[1]) - packets
    busy, total = (a - b for a, b in zip(cpu_times(), cpu, strict=True))
    end = result["end"]
    daemon_seconds = daemon_cpu(daemons, case.daemon) - used
    return {"mbits": end["sum_received"]["bits_per_second"] / 1e6, "kpps": packets / elapsed / 1000,
            "cpu": 100 * busy / total * os.cpu_count(), "daemon_cpu": 100 * daemon_seconds / elapsed,
            "us_per_packet": 1e6 * daemon_seconds / packets if packets else 0.0,
            "loss": end.get("sum", {}).get("lost_percent"), "retransmits": end["sum_sent"].get("retransmits")}


class _NullWire:
    """A Wire that keeps only the last packet: the driver's own cost, without syscalls."""

    last = b""

    def send_ip(self, packet: bytes, dst: str) -> None:
        self.last = packet

    def send_udp(self, payload: bytes, addr: tuple[str, int], tos: int = 0) -> None:
        self.last = payload

    def deliver(self, packet: bytes, stale_checksum: bool = False) -> None:
        self.last = packet


def driver_cost(encryption: str, integrity: str | None, count: int = 20000) -> tuple[float, float]:
    """CPU µs per 1400-byte packet of IPsecDriver.outbound and IPsecDriver.inbound (SPD, SAD, codec; no I/O).

    Process CPU time, so other tenants of the machine change it less than wall time.
    """
    from ipaddress import IPv4Network

    from ipsecd import algorithms
    from ipsecd.driver.driver import IPsecDriver
    from ipsecd.driver.sad import SecurityAssociation
    from ipsecd.driver.spd import SPD, Action, Filter, SecurityMethod, SPDAction

    secure = SPDAction("secure", Action.NEGOTIATE, (SecurityMethod(),))
    integ = algorithms.integrity(integrity) if integrity else None
    keys = (os.urandom(algorithms.encryption(encryption).key_size),
            os.urandom(integ.key_size) if integ else b"")

    def node(me: str, peer: str, direction: str) -> tuple[IPsecDriver, _NullWire]:
        wire = _NullWire()
        spd = SPD(Filter("f", IPv4Network(me), IPv4Network(peer), secure).mirrored())
        driver = IPsecDriver(spd, wire=wire)
        src, dst = (me, peer) if direction == "outbound" else (peer, me)
        sa = SecurityAssociation(0x1000, "esp", direction, "transport", src, dst, encryption, keys[0],
                                 integrity, keys[1])
        driver.add_sa(sa, "f", manual=True)
        return driver, wire

    sender, sent = node("10.0.0.1", "10.0.0.2", "outbound")
    receiver, _ = node("10.0.0.2", "10.0.0.1", "inbound")
    header = bytes.fromhex("45000578000040004006" "0000" "0a000001" "0a000002")
    packet = header + bytes.fromhex("04d2005000000001000000005010ffff00000000") + bytes(1360)
    started = time.process_time()
    wire_packets = []
    for _ in range(count):
        sender.outbound(packet)
        wire_packets.append(sent.last)
    middle = time.process_time()
    for outer in wire_packets:
        receiver.inbound(outer)
    done = time.process_time()
    if next(iter(receiver.sad)).counters.packets != count:
        raise RuntimeError(f"driver path: not every packet was delivered: {receiver.counter_values()}")
    return 1e6 * (middle - started) / count, 1e6 * (done - middle) / count


def offload_cost(mss: int = 1348, count: int = 48, runs: int = 300) -> tuple[float, float]:
    """CPU µs per segment of cutting a TSO super-packet read from the TUN into `count` segments
    (`offload.segments`: checksums included) and of coalescing them back into one GSO write (`Coalescer`)."""
    from ipsecd.driver.offload import GSO_TCPV4, NEEDS_CSUM, VNET_HEADER, Coalescer, segments

    header = bytes.fromhex("45000000000040004006" "0000" "0a000001" "0a000002")
    tcp = bytes.fromhex("04d2145100000001000000018010ffff00000000" "0101080a000004d20000162e")  # timestamps
    packet = bytearray(header + tcp + os.urandom(mss * count))
    packet[2:4] = len(packet).to_bytes(2, "big")
    frame = VNET_HEADER.pack(NEEDS_CSUM, GSO_TCPV4, len(header + tcp), mss, 20, 16) + bytes(packet)
    started = time.process_time()
    for _ in range(runs):
        parts = segments(frame)
    middle = time.process_time()
    coalescer = Coalescer(lambda frame: None)
    for _ in range(runs):
        for part in parts:
            coalescer.add(part)
        coalescer.flush()
    done = time.process_time()
    if len(parts) != count:
        raise RuntimeError(f"offload path: {len(parts)} segments, not {count}")
    return 1e6 * (middle - started) / runs / count, 1e6 * (done - middle) / runs / count


@contextmanager
def case_lab(backend: DockerBackend, case: Case, name: str, folder: Path) -> Iterator[Lab]:
    """The lab of `case`, ready to carry traffic (strongSwan's tunnel initiated), removed afterwards."""
    with lab_running(backend, case.topology, configs(case, folder), name) as lab:
        if case.link_offload:
            for node in lab.nodes.values():
                node.exec(["sh", "-c", LINK_OFFLOAD], check=True)
        if case.strongswan:
            charons = {n: Charon(lab.node(n)).start() for n in ("gw-a", "gw-b")}
            fresh_sa(charons, lab, "aes128-sha1-modp2048", case.strongswan)
        yield lab


def baseline_driver_rows(ref: str, rounds: int = 5) -> list[Row]:
    """The driver path (no I/O, process CPU time) of this checkout and of `ref`, alternating in `rounds`
    rounds; `ref`'s own driver_cost runs in a subprocess on a `git archive` of it."""
    rows = []
    with tempfile.TemporaryDirectory() as source:
        archive = subprocess.run(["git", "-C", str(ROOT), "archive", ref], capture_output=True,
                                 check=True).stdout
        subprocess.run(["tar", "-x", "-C", source], input=archive, check=True)
        for label, (encryption, integrity) in ALGORITHMS.items():
            ours, theirs = [], []
            for _ in range(rounds):
                ours.append(driver_cost(encryption, integrity))
                script = ("import json; from bench.bench_dataplane import driver_cost; "
                          f"print(json.dumps(driver_cost({encryption!r}, {integrity!r})))")
                out = subprocess.run([sys.executable, "-c", script], cwd=source, capture_output=True,
                                     text=True, check=True, env={**os.environ, "PYTHONPATH": source}).stdout
                theirs.append(tuple(json.loads(out)))
            for index, way in enumerate(("outbound", "inbound")):
                ratios = [a[index] / b[index] for a, b in zip(ours, theirs, strict=True)]
                rows.append(_median_row(f"driver path {label}, {way}: this checkout / {ref}", ratios, "x",
                                        note="per-round ratio of CPU us/packet (lower is faster)"))
    return rows


def machine_speed(count: int = 20000) -> tuple[float, float]:
    """CPU µs of one AES-GCM-128 seal of 1400 bytes, and of 1000 turns of a plain Python loop: how fast
    the machine is right now (the same code measures 2-3 times slower on a busy host)."""
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    aead, nonce, data = AESGCM(bytes(16)), bytes(12), bytes(1400)
    started = time.process_time()
    for _ in range(count):
        aead.encrypt(nonce, data, None)
    middle = time.process_time()
    total = 0
    for i in range(count * 50):
        total += i
    done = time.process_time()
    return 1e6 * (middle - started) / count, 1e6 * (done - middle) / count / 50 * 1000


def _median_row(name: str, values: list[float], unit: str, note: str, **kw) -> Row:
    return Row(name, statistics.median(values), unit,
               note=f"median of {len(values)} rounds, {min(values):.1f}-{max(values):.1f}; {note}", **kw)


def case_rows(case: Case, udp: bool, runs: list[dict]) -> Row:
    """One row for `case`: the median of its rounds, with what the median run saw."""
    middle = sorted(runs, key=lambda m: m["mbits"])[len(runs) // 2]
    extra = f", loss {middle['loss']:.1f}%" if udp else f", {middle['retransmits']} retransmits"
    # with TX offload the veth counts GSO buffers, not the datagrams on the wire
    rate, per = (("k veth buffers/s", "veth buffer") if case.link_offload
                 else ("kpps on the wire", "wire packet"))
    daemon = f", {case.daemon} {middle['daemon_cpu']:.0f}% ({middle['us_per_packet']:.1f} us/{per})" \
        if case.daemon else ""
    return _median_row(f"{'UDP' if udp else 'TCP'} {case.label}", [m["mbits"] for m in runs], "Mbit/s",
                       target=None if udp else case.tcp_target, higher_is_better=True,
                       note=f"{middle['kpps']:.1f} {rate}, CPU {middle['cpu']:.0f}% of 200%{daemon}{extra}")


def run() -> list[Row]:
    rows = []
    for label, (encryption, integrity) in ALGORITHMS.items():
        out, back = driver_cost(encryption, integrity)
        rows.append(Row(f"driver path {label}, outbound (no I/O)", out, "us/pkt",
                        note="IPsecDriver.outbound: flow cache, SA, ESP build; process CPU time"))
        rows.append(Row(f"driver path {label}, inbound (no I/O)", back, "us/pkt",
                        note="IPsecDriver.inbound: SAD, replay, ICV, decrypt, policy check"))
    if BASELINE:
        rows += baseline_driver_rows(BASELINE)
    cut, merge = offload_cost()
    rows.append(Row("TUN offload: cut a 64 KB TSO read (no I/O)", cut, "us/seg",
                    note="offload.segments: 48 segments of 1348 bytes, IP and TCP checksums; CPU time"))
    rows.append(Row("TUN offload: coalesce the segments (no I/O)", merge, "us/seg",
                    note="Coalescer.add per segment, one GSO write per 48"))
    backend = DockerBackend()
    baseline_backend = DockerBackend(images=BaselineImages(BASELINE)) if BASELINE else None
    cases = selected(with_baseline(CASES, BASELINE), ONLY)
    prefix = os.environ.get("LAB_PREFIX", "b")
    results: dict[tuple[str, bool], list[dict]] = {(c.label, udp): [] for c in cases for udp in (False, True)}
    speeds = []
    with tempfile.TemporaryDirectory() as folder, ExitStack() as labs:
        lab_of = {}
        for index, case in enumerate(cases):
            print(f"[bench] lab {index + 1}/{len(cases)} up: {case.label}", file=sys.stderr, flush=True)
            engine = baseline_backend if case.baseline and baseline_backend else backend
            running = case_lab(engine, case, f"{prefix}-dp{index}", Path(folder))
            lab_of[case.label] = labs.enter_context(running)
        for round_ in range(ROUNDS):
            speeds.append(machine_speed())
            for case in cases:
                for udp in (False, True):
                    print(f"[bench] round {round_ + 1}/{ROUNDS}: {'UDP' if udp else 'TCP'} {case.label}",
                          file=sys.stderr, flush=True)
                    results[case.label, udp].append(measure(lab_of[case.label], case, udp))
    rows.append(_median_row("machine speed: AES-GCM-128 seal of 1400 bytes", [s[0] for s in speeds], "us",
                            note="CPU time, timed before each round"))
    rows.append(_median_row("machine speed: 1000 turns of a Python loop", [s[1] for s in speeds], "us",
                            note="CPU time, timed before each round"))
    rows += [case_rows(case, udp, results[case.label, udp]) for case in cases for udp in (False, True)]
    baseline_ratios = [(f"{label}: this checkout / {BASELINE}", label, baseline_label(label, BASELINE))
                       for label in BASELINE_CASES] if BASELINE else []
    for name, numerator, denominator in (*RATIOS, *baseline_ratios):
        if not {(numerator, False), (denominator, False)} <= results.keys():
            continue  # a shortened CASES (while working on the bench)
        pairs = zip(results[numerator, False], results[denominator, False], strict=True)
        ratios = [a["mbits"] / b["mbits"] for a, b in pairs if b["mbits"]]
        if ratios:
            rows.append(_median_row(f"TCP {name}", ratios, "x", higher_is_better=True,
                                    note="per-round ratio of Mbit/s"))
    return rows
