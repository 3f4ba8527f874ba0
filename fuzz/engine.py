"""The fuzzing engine: seeded mutation, the input loop, progress, crash files.

A target owns its corpus and its invariants; it hands every mutated input to :meth:`Target.check`, which
delivers it and raises :class:`Defect` when an invariant breaks. Anything raised from a delivery (a
Defect, or an exception that escaped the code under test) stops the run and is saved with the input as
``results/fuzz/<target>/crash-<hash>`` (the bytes) and ``crash-<hash>.txt`` (what happened, the seed).
Plain Python mutation, no coverage guidance: every choice comes from one ``random.Random(seed)`` and the
daemon's own randomness (cookies, nonces, SPIs, IVs) is drawn from a seeded generator too, so a seed
replays the same run.
"""

from __future__ import annotations

import collections
import contextlib
import hashlib
import logging
import os
import random
import secrets
import sys
import time
import traceback
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

RESULTS = Path("results/fuzz")

# Values that sit on the edges of length and count fields.
INTERESTING_8 = (0, 1, 0x7F, 0x80, 0xFF)
INTERESTING_16 = (0, 1, 0x7FFF, 0x8000, 0xFFFF, 4, 8, 20, 28)
INTERESTING_32 = (0, 1, 0x7FFFFFFF, 0x80000000, 0xFFFFFFFF, 28)


class Defect(Exception):
    """An invariant of the target broke (silent drop, counter not moved, policy lost, ...)."""

    def __init__(self, message: str, detail: str = "") -> None:
        super().__init__(message)
        self.detail = detail


class Crash(Exception):
    """A delivery raised: the input, where it went, and the error."""

    def __init__(self, data: bytes, context: str, error: BaseException, detail: str = "") -> None:
        super().__init__(f"{type(error).__name__}: {error}")
        self.data, self.context, self.error, self.detail = data, context, error, detail


@dataclass
class Target:
    """Base of the fuzz targets: a seeded generator, the input count and the rejection tally."""

    rng: random.Random
    inputs: int = 0
    tally: collections.Counter[str] = field(default_factory=collections.Counter)
    last: tuple[bytes, str] = (b"", "no input yet")  # the latest input and where it went

    name = "target"

    def step(self) -> None:
        """Run some inputs (one episode, one batch): each through `check`."""
        raise NotImplementedError

    def close(self) -> None:
        """Remove what the target made outside memory (files)."""

    def check(self, data: bytes, context: str, deliver: Callable[[bytes], str]) -> None:
        """Deliver one input; `deliver` returns the outcome's name (the counter it moved) for the tally."""
        self.inputs += 1
        self.last = (data, context)
        try:
            self.tally[deliver(data)] += 1
        except Defect as e:
            raise Crash(data, context, e, e.detail) from e
        except Exception as e:
            raise Crash(data, context, e, traceback.format_exc()) from e


class Mutator:
    """Byte-level mutations, stacked 1 to 4 at a time; `fields` lists (offset, size) of length fields."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng

    def mutate(self, data: bytes, corpus: Sequence[bytes], fields: Sequence[tuple[int, int]] = ()) -> bytes:
        out = bytearray(data)
        for _ in range(self.rng.choice((1, 1, 1, 2, 2, 3, 4))):
            self.rng.choice(self.OPERATIONS)(self, out, corpus, fields)
        return bytes(out)

    def _flip(self, out: bytearray, corpus, fields) -> None:
        if out:
            out[self.rng.randrange(len(out))] ^= 1 << self.rng.randrange(8)

    def _set_byte(self, out: bytearray, corpus, fields) -> None:
        if out:
            value = self.rng.choice((*INTERESTING_8, self.rng.randrange(256)))
            out[self.rng.randrange(len(out))] = value

    def _field(self, out: bytearray, corpus, fields) -> None:
        """An edge value in a length or count field (or any 2 or 4 bytes)."""
        places = [f for f in fields if f[0] + f[1] <= len(out)]
        if places and self.rng.random() < 0.8:
            offset, size = self.rng.choice(places)
        else:
            size = self.rng.choice((1, 2, 4))
            if len(out) < size:
                return
            offset = self.rng.randrange(len(out) - size + 1)
        values = {1: INTERESTING_8, 2: INTERESTING_16, 4: INTERESTING_32}[size]
        old = int.from_bytes(out[offset:offset + size], "big")
        value = self.rng.choice((*values, (old + self.rng.choice((-1, 1, 4, -4))) % (1 << 8 * size)))
        out[offset:offset + size] = value.to_bytes(size, "big")

    def _truncate(self, out: bytearray, corpus, fields) -> None:
        if out:
            del out[self.rng.randrange(len(out)):]

    def _extend(self, out: bytearray, corpus, fields) -> None:
        out += self.rng.randbytes(self.rng.choice((1, 4, 8, 16, self.rng.randrange(1, 300))))

    def _cut(self, out: bytearray, corpus, fields) -> None:
        if len(out) > 1:
            start = self.rng.randrange(len(out))
            del out[start:start + self.rng.randrange(1, 32)]

    def _insert(self, out: bytearray, corpus, fields) -> None:
        at = self.rng.randrange(len(out) + 1)
        out[at:at] = self.rng.randbytes(self.rng.randrange(1, 32))

    def _splice(self, out: bytearray, corpus, fields) -> None:
        """Our head, another input's tail."""
        if corpus:
            other = self.rng.choice(corpus)
            cut = self.rng.randrange(len(out) + 1)
            out[cut:] = other[min(cut, len(other)):]

    def _replay(self, out: bytearray, corpus, fields) -> None:
        """Another input whole: a message out of its place."""
        if corpus:
            out[:] = self.rng.choice(corpus)

    OPERATIONS: tuple[Callable[..., None], ...] = (
        _flip, _flip, _set_byte, _set_byte, _field, _field, _field, _truncate, _extend, _cut, _insert,
        _splice, _replay,
    )


@contextlib.contextmanager
def seeded_randomness(seed: int) -> Iterator[None]:
    """The daemon's cookies, nonces, DH exponents, SPIs and IVs from a seeded generator (``secrets`` and
    ``os.urandom``), so that a run replays from its seed; the real sources come back on exit."""
    rng = random.Random(seed ^ 0x5EED)
    saved = secrets.token_bytes, secrets.randbits, secrets.randbelow, os.urandom
    secrets.token_bytes = lambda n=32: rng.randbytes(32 if n is None else n)  # type: ignore[assignment]
    secrets.randbits = rng.getrandbits  # type: ignore[assignment]
    secrets.randbelow = rng.randrange  # type: ignore[assignment]
    os.urandom = rng.randbytes  # type: ignore[assignment]
    try:
        yield
    finally:
        secrets.token_bytes, secrets.randbits, secrets.randbelow, os.urandom = saved  # type: ignore[misc]


@dataclass
class Report:
    target: str
    inputs: int
    seconds: float
    tally: collections.Counter[str]
    crash: Path | None = None

    @property
    def rate(self) -> float:
        return self.inputs / self.seconds if self.seconds else 0.0

    def describe(self, top: int = 12) -> str:
        rows = ", ".join(f"{name} {count}" for name, count in self.tally.most_common(top))
        more = len(self.tally) - top
        return (f"{self.target}: {self.inputs} inputs in {self.seconds:.1f} s ({self.rate:.0f}/s); "
                f"outcomes: {rows}{f', and {more} more' if more > 0 else ''}")


def save_crash(target: str, seed: int, crash: Crash, results: Path = RESULTS) -> Path:
    """The crashing input as results/fuzz/<target>/crash-<hash>, what happened beside it."""
    folder = results / target
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"crash-{hashlib.sha256(crash.data).hexdigest()[:16]}"
    path.write_bytes(crash.data)
    path.with_suffix(".txt").write_text(
        f"target {target}, seed {seed}\ninput went to: {crash.context}\nerror: {crash}\n\n{crash.detail}\n"
    )
    return path


def run(target_class: type[Target], inputs: int, seconds: float | None = None, seed: int = 0,
        progress: Callable[[str], None] | None = None, results: Path = RESULTS) -> Report:
    """Fuzz one target until `inputs` inputs or `seconds` have passed; a crash ends the run (saved)."""
    target = target_class(random.Random(seed))
    start = last = time.monotonic()
    crash_path = None
    quiet = logging.getLogger("ipsecd")
    level, quiet.level = quiet.level, logging.CRITICAL  # the daemon's drop warnings: millions of them
    with seeded_randomness(seed):
        try:
            while target.inputs < inputs and (seconds is None or time.monotonic() - start < seconds):
                target.step()
                now = time.monotonic()
                if progress and now - last >= 5:
                    last = now
                    progress(Report(target.name, target.inputs, now - start, target.tally).describe(6))
        except Exception as error:
            crash = error if isinstance(error, Crash) else Crash(
                target.last[0], f"{target.last[1]}, the latest input (raised later in its episode)", error,
                getattr(error, "detail", "") or traceback.format_exc())
            crash_path = save_crash(target.name, seed, crash, results)
            if progress:
                progress(f"{target.name}: CRASH after {target.inputs} inputs: {crash} (input to "
                         f"{crash.context}); saved as {crash_path}\n{crash.detail}")
        finally:
            quiet.setLevel(level)
            target.close()
    return Report(target.name, target.inputs, time.monotonic() - start, target.tally, crash_path)


def say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)
