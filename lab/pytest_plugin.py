"""pytest fixtures: a topology up, node handles, captures, guaranteed teardown.

    def test_ping(lab_up):
        lab = lab_up("intranet-pair")                 # up once per module, down at the module's end
        a, b = lab.node("host-a"), lab.node("host-b")
        with b.capture("eth1") as cap:
            a.exec(["ping", "-c1", b.address()], check=True)
        assert_protocol_seen(cap.packets(), "icmp")

- `lab_up(topology, overrides=None, fresh=False)`: `overrides` is merged into the YAML before validation
  (e.g. {"nodes": {"host-a": {"ipsecd": "/abs/path/host-a.yaml"}}}); `fresh=True` gives a lab of its own,
  torn down at the end of the test instead of being shared by the module.
- Labs are named `<prefix>-<topology>[-n]`; the prefix is $LAB_PREFIX, or `t` plus a hash of the checkout's
  path, so test runs from different worktrees on one machine never touch each other's labs.
  `lab_name("x")` gives a test its own lab name with the same prefix.
- pcaps and lab.json go to results/<run>/<test>/ (LAB_RESULTS, LAB_RUN override the parts).
- Tests using these fixtures get the `lab` marker and are skipped, with the reason, without Docker or root
  (they fail instead when CI or LAB_REQUIRED is set, so a broken engine cannot turn CI green).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from lab import topology as topologies
from lab.backend import RESULTS, Backend
from lab.docker_backend import DockerBackend
from lab.model import Topology
from lab.running import Lab

LAB_FIXTURES = {"lab_up", "lab_backend", "lab_name"}
_RUN_KEY = pytest.StashKey[Path]()
_REPORT_KEY = pytest.StashKey[pytest.TestReport]()


def _results_root() -> Path:
    run = os.environ.get("LAB_RUN") or time.strftime("%Y%m%d-%H%M%S")
    return RESULTS / run


def lab_prefix() -> str:
    """$LAB_PREFIX, else `t` and 4 hex digits of this checkout's path."""
    checkout = str(Path(__file__).resolve().parent.parent)
    return os.environ.get("LAB_PREFIX") or "t" + hashlib.sha256(checkout.encode()).hexdigest()[:4]


@pytest.fixture
def lab_name() -> Callable[[str], str]:
    """lab_name("teardown") -> "<prefix>-teardown": a lab name of the test's own, clear of other runs."""
    return lambda suffix: f"{lab_prefix()}-{suffix}"


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "lab: needs Docker and root; brings up real containers")
    config.stash[_RUN_KEY] = _results_root()


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if LAB_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.lab)


def unavailable() -> str | None:
    """Why lab tests cannot run here, or None."""
    if os.geteuid() != 0:
        return "lab tests need root (network namespaces, veths)"
    try:
        import docker

        docker.from_env().ping()
    except Exception as exc:  # any failure to reach the engine means: skip, and say why
        return f"Docker engine not reachable: {exc}"
    return None


@pytest.fixture(scope="session")
def lab_backend() -> DockerBackend:
    reason = unavailable()
    if reason and (os.environ.get("CI") or os.environ.get("LAB_REQUIRED")):
        pytest.fail(f"lab tests cannot run in CI: {reason}", pytrace=False)
    if reason:
        pytest.skip(reason)
    return DockerBackend()


def _test_dir(request: pytest.FixtureRequest) -> Path:
    name = re.sub(r"[^A-Za-z0-9_.-]+", "_", request.node.nodeid.split("::", 1)[-1])[:100]
    module = request.node.module.__name__.rsplit(".", 1)[-1] if request.node.module else "session"
    return request.config.stash[_RUN_KEY] / module / name


class _Labs:
    """Labs brought up for one scope; brings them down in finalize()."""

    def __init__(self, backend: Backend, suffix: str = ""):
        self.backend, self.suffix = backend, suffix
        self.labs: dict[str, Lab] = {}
        self.names: set[str] = set()

    def get(self, key: str) -> Lab | None:
        return self.labs.get(key)

    def up(self, key: str, topo: Topology, results_dir: Path) -> Lab:
        base = f"{lab_prefix()}-{topo.name}{self.suffix}"
        name, n = base, 1
        while name in self.names:
            n += 1
            name = f"{base}-{n}"
        self.names.add(name)
        self.backend.down(name)  # a left-over from a crashed run of ours
        self.labs[key] = lab = self.backend.up(topo, name, results_dir)
        return lab

    def finalize(self) -> None:
        for lab in self.labs.values():
            self.backend.down(lab.name)
        self.labs.clear()


def _key(topology: str, overrides: dict | None) -> str:
    return topology + (
        "/" + hashlib.sha256(json.dumps(overrides, sort_keys=True).encode()).hexdigest()[:8]
        if overrides
        else ""
    )


@pytest.fixture(scope="module")
def _module_labs(lab_backend: Backend) -> Iterator[_Labs]:
    labs = _Labs(lab_backend)
    yield labs
    labs.finalize()


@pytest.fixture
def lab_up(
    request: pytest.FixtureRequest, lab_backend: Backend, _module_labs: _Labs
) -> Iterator[Callable[..., Lab]]:
    """Factory: lab_up("intranet-pair") -> a running Lab (shared by the module unless fresh=True)."""
    results_dir = _test_dir(request)
    own = _Labs(lab_backend, suffix="-f")
    used: list[Lab] = []

    def factory(topology: str, overrides: dict | None = None, fresh: bool = False) -> Lab:
        key = _key(topology, overrides)
        labs = own if fresh else _module_labs
        lab = None if fresh else labs.get(key)
        if lab is None:
            lab = labs.up(key, topologies.load(topology, overrides), results_dir)
        lab.results_dir = results_dir
        used.append(lab)
        return lab

    yield factory
    report = request.node.stash.get(_REPORT_KEY, None)
    if report is not None and report.failed:
        for lab in used:
            _save_node_state(lab, results_dir)
    own.finalize()


#: What a failed test leaves behind for each node, next to its pcaps, after the end of its logs.
NODE_STATE = (
    "echo '== ip addr'; ip -br addr; echo '== ip route'; ip route; echo '== ip rule'; ip rule; "
    "echo '== nft list ruleset'; nft list ruleset; echo '== ip xfrm state'; ip xfrm state; "
    "echo '== ps'; ps -eo pid,etime,args"
)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo):
    report = yield
    if report.when == "call":
        item.stash[_REPORT_KEY] = report
    return report


def _save_node_state(lab: Lab, results_dir: Path) -> None:
    """Logs, addresses, routes, rules and processes of every node, for a failed test."""
    results_dir.mkdir(parents=True, exist_ok=True)
    for node in lab.nodes.values():
        try:
            result = node.exec(NODE_STATE, timeout=10)
            state = node.tail_logs(200) + result.stdout + result.stderr
        except Exception as exc:  # a dead node is itself worth recording
            state = f"could not read the node's state: {exc}"
        (results_dir / f"{lab.name}-{node.name}.state.txt").write_text(state)
