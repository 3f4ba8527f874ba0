"""Fuzz target `policy`: the policy reader (ipsecd.policy.policyfile.load, as LocalStore loads) and the
Policy Agent polling a store whose assigned file is mutated.

The corpus is the repository's policy files (policies/ and the predefined ones). Inputs are those files
mutated as bytes (invalid UTF-8 included) and as YAML: tags (!!python/object, !!timestamp on a non-time,
!!set, ...), anchor/alias bombs (billion laughs), huge numbers, deep nesting, keys that are not scalars,
control characters. Every input either loads, or is refused with a PolicyError naming the file (and its
line when it has one), within a bounded time. Every 16th input goes through the agent: the assigned file
is replaced by the mutant and the agent polls: it must not raise, and a refused file leaves the policy in
force; a valid file is put back afterwards so the next poll sees a change again.
"""

from __future__ import annotations

import random
import shutil
import tempfile
import time
from ipaddress import IPv4Address
from pathlib import Path

from fuzz.engine import Defect, Mutator, Target
from ipsecd.policy import policyfile
from ipsecd.policy.agent import Event, PolicyAgent
from ipsecd.policy.store import LocalStore, PolicyRef
from ipsecd.policy.validate import PolicyError

REPOSITORY = Path(__file__).resolve().parent.parent
VALID = REPOSITORY / "policies" / "intranet-pair-filters.yaml"  # put back after each agent input
SECONDS_PER_INPUT = 5.0  # a bomb must be refused well within this on a slow machine
AGENT_EVERY = 16
ADDRESS = IPv4Address("10.0.0.1")

LAUGHS = "l1: &l1 [" + ", ".join(["lol"] * 9) + "]\n" + "".join(
    f"l{i + 1}: &l{i + 1} [{', '.join([f'*l{i}'] * 9)}]\n" for i in range(1, 9))  # 9**9 lols as a tree
KEY_BOMB = "[&k1 [" + ", ".join(["lol"] * 9) + "], " + ", ".join(
    f"&k{i + 1} [{', '.join([f'*k{i}'] * 9)}]" for i in range(1, 9)) + "]"  # the same, as one key
SNIPPETS = (
    "!!python/object/apply:os.system ['true']", "!!python/name:os.system", "!!python/object:object {}",
    "!!timestamp not-a-time", "!!bool maybe", "!!int 12x", "!!float nan", "!!binary '%%%'", "!!set {a: 1}",
    "!!omap [a, b]", "!!str", "!<tag:example.com,2000:x> 1", "!local 1", "!!merge x",
    "9" * 5000, "-0x" + "f" * 300, "1e99999", "0o" + "7" * 400, ".inf", "2026-13-45T99:99:99Z",
    "[" * 40 + "]" * 40, "{a: " * 40 + "1" + "}" * 40, "&a [*a]", "*undefined", "&x 1",
    "{? [a, b]: c}", "{[1, 2]: x}", "~", "''", "\t", "\x00", "\x1b[31m", "\ufeff", "\U0001f600" * 10,
    KEY_BOMB,
)
HEAVY = ("[" * 3000 + "]" * 3000, "{a: " * 2000 + "1" + "}" * 2000, "'" + "x" * 100_000 + "'",
         "[" * 100_000)  # PyYAML's worst cases: seconds each here, so 1 input in 100
RAW = (b"\xff", b"\xc3\x28", b"\xed\xa0\x80", b"\xf4\x90\x80\x80", b"\xc0\xaf", b"\xef\xbb\xbf", b"\xfe\xff",
       b"\x00\x00\xfe\xff", b"\x80" * 3)


def corpus() -> list[bytes]:
    files = sorted((REPOSITORY / "policies").rglob("*.yaml"))
    files += sorted((REPOSITORY / "ipsecd" / "policy" / "predefined-policies").glob("*.yaml"))
    return [f.read_bytes() for f in files]


class _Recorder:
    """The driver and IKE as the agent sees them: they take what is put in force."""

    def load_policy(self, what) -> None:
        self.loaded = what


def _no_dns(name: str):
    raise ValueError(f"{name}: no DNS in the fuzzer")


class PolicyTarget(Target):
    name = "policy"

    def __init__(self, rng: random.Random) -> None:
        super().__init__(rng)
        self.mutator = Mutator(rng)
        self.corpus = corpus()
        self.folder = Path(tempfile.mkdtemp(prefix="fuzz-policy-"))
        self.path = self.folder / "policy.yaml"
        self.store = LocalStore(self.folder)
        self.valid = VALID.read_bytes()
        self.path.write_bytes(self.valid)
        self.store.assign(PolicyRef(str(self.path)))
        self.refusals = 0
        self.agent = PolicyAgent(self.store, _Recorder(), _Recorder(), addresses=lambda: [ADDRESS],
                                 resolve=_no_dns, clock=self._clock, log=self._event)
        self.now = 0.0
        self.agent.apply()

    def close(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)

    def _event(self, event: Event) -> None:
        self.refusals += event.kind == "policy-refused"

    def _clock(self) -> float:
        return self.now

    def mutant(self) -> bytes:
        text = self.rng.choice(self.corpus)
        if self.rng.random() < 0.4:
            return self.mutator.mutate(text, self.corpus)
        lines = text.split(b"\n")
        at = self.rng.randrange(len(lines))
        kind = self.rng.random()
        piece = self.rng.choice(HEAVY if kind < 0.01 else SNIPPETS if kind < 0.8 else RAW)
        piece = piece.encode() if isinstance(piece, str) else piece
        line = lines[at]
        choice = self.rng.random()
        if choice < 0.5 and b": " in line:  # a field's value
            lines[at] = line[:line.index(b": ") + 2] + piece
        elif choice < 0.7:  # a key
            indent = line[:len(line) - len(line.lstrip())]
            lines[at] = indent + piece + b": " + line.lstrip()
        elif choice < 0.85:  # a bomb's anchors before, its alias in a field
            lines[at] = line[:line.index(b": ") + 2] + b"*l9" if b": " in line else line
            lines.insert(0, LAUGHS.encode())
        else:
            lines.insert(at, piece)
        return b"\n".join(lines)

    def step(self) -> None:
        data = self.mutant()
        through_agent = self.inputs % AGENT_EVERY == 0
        self.check(data, f"{'the agent polling ' if through_agent else ''}{self.path}",
                   self._poll if through_agent else self._load)

    def _load(self, data: bytes) -> str:
        self.path.write_bytes(data)
        start = time.monotonic()
        try:
            policyfile.load(self.path)
            outcome = "loaded"
        except PolicyError as e:
            outcome = self._refused(e)
        if time.monotonic() - start > SECONDS_PER_INPUT:
            raise Defect(f"took {time.monotonic() - start:.1f} s (bound {SECONDS_PER_INPUT} s)")
        return outcome

    def _refused(self, error: PolicyError) -> str:
        if not error.problems or not all(p.source.startswith(str(self.path)) for p in error.problems):
            raise Defect(f"a refusal that does not name the file: {error}")
        message = error.problems[0].message
        return "refused: " + (message.split(":")[0] if message.startswith("not ") else "a field")

    def _poll(self, data: bytes) -> str:
        in_force = self.agent.applied
        policyfile.write_atomically(self.path, "")  # a new inode, so the stamp moves whatever the size
        self.path.write_bytes(data)
        self.now += 10_000  # past any polling interval
        refused = self.refusals
        self.agent.poll()
        if self.refusals > refused:
            if self.agent.applied is not in_force:
                raise Defect("a refused policy file changed the policy in force")
            outcome = "agent: refused, policy in force kept"
        elif self.agent.applied is in_force or self.agent.applied is None:
            raise Defect("the agent neither applied nor refused a changed policy file")
        else:
            outcome = "agent: applied"
        policyfile.write_atomically(self.path, self.valid.decode())
        self.now += 10_000
        self.agent.poll()
        if self.agent.applied is None or self.agent.applied.ref.location != str(self.path):
            raise Defect("the agent did not put the valid policy back in force: it stopped polling?")
        return outcome
