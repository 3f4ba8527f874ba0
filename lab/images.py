"""Node images, built with no container registry and tagged by a hash of their inputs.

- `base`: a debootstrap of Debian bookworm (variant minbase) with the packages of images/*/packages.txt,
  loaded with `docker import`. Setting LAB_BASE=debian:bookworm-slim (a registry image) builds it from
  images/base/Dockerfile.registry instead.
- any other kind (`node`, and later `strongswan`, `dc`): the folder images/<kind>/ is the build context,
  its Dockerfile starts with `ARG BASE` / `FROM ${BASE}`. If the Dockerfile mentions `wheels`, the context
  also gets wheels/: the project and its dependencies built on the host with `pip wheel`, so that
  `pip install --no-index` needs no network inside the build. images/<kind>/image.yaml (what its nodes run,
  lab.services) is read on the host: it is neither in the context nor in the tag.

Tags are `ipsec-lab/<kind>:<hash12>`; an unchanged input means no rebuild, and worktrees with different
ipsecd code never clobber each other's images.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from pathlib import Path

import docker

ROOT = Path(__file__).resolve().parent.parent
IMAGES_DIR = ROOT / "images"
BUILD_DIR = ROOT / ".build"
REPOSITORY = "ipsec-lab"
SUITE = "bookworm"
IMAGE_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
MIRROR = os.environ.get("LAB_MIRROR", "http://deb.debian.org/debian")
#: Project files whose content matters in the node image (lab/ runs on the host, README is metadata).
PROJECT_INPUTS = ("pyproject.toml", "ipsecd")
#: Files of images/<kind>/ that the host reads and the image does not hold (what a node runs: lab.services).
HOST_SIDE = ("image.yaml",)


#: debootstrap prints one line per package per step: show only the steps.
CHATTER = ("I: Retrieving", "I: Validating", "I: Extracting", "I: Unpacking", "I: Configuring")


class ImageError(RuntimeError):
    pass


def _files(paths: Iterable[Path]) -> list[Path]:
    found = []
    for path in paths:
        if path.is_dir():
            found += [
                p
                for p in sorted(path.rglob("*"))
                if p.is_file() and "__pycache__" not in p.parts and p.name not in HOST_SIDE
            ]
        elif path.is_file():
            found.append(path)
    return found


def _digest(*parts: str | Path | Iterable[Path]) -> str:
    h = hashlib.sha256()
    for part in parts:
        if isinstance(part, str):
            h.update(part.encode() + b"\0")
        else:
            for path in _files([part] if isinstance(part, Path) else part):
                h.update(str(path.relative_to(ROOT)).encode() + b"\0" + path.read_bytes() + b"\0")
    return h.hexdigest()[:12]


def base_packages() -> list[str]:
    """The union of images/*/packages.txt, sorted."""
    names = set()
    for listing in IMAGES_DIR.glob("*/packages.txt"):
        names |= {w for line in listing.read_text().splitlines() for w in line.split("#")[0].split()}
    return sorted(names)


class Images:
    """Builds and names images; `log` receives progress lines."""

    def __init__(self, client: docker.DockerClient | None = None, log: Callable[[str], None] | None = None):
        self.client = client or docker.from_env()
        self.log = log or (lambda line: print(line, file=sys.stderr, flush=True))

    # -- names -------------------------------------------------------------------------------------------
    def base_tag(self) -> str:
        registry_base = os.environ.get("LAB_BASE", "")
        inputs = _digest(SUITE, MIRROR, registry_base, " ".join(base_packages()), IMAGES_DIR / "base")
        return f"{REPOSITORY}/base:{inputs}"

    def tag(self, kind: str) -> str:
        if kind == "base":
            return self.base_tag()
        folder = self._folder(kind)
        project = [ROOT / p for p in PROJECT_INPUTS] if self._uses_wheels(folder) else []
        return f"{REPOSITORY}/{kind}:{_digest(self.base_tag(), folder, project)}"

    def exists(self, tag: str) -> bool:
        try:
            self.client.images.get(tag)
        except docker.errors.ImageNotFound:
            return False
        return True

    def prune(
        self, keep: set[str], older_than_hours: float = 1.0, kinds: set[str] | None = None
    ) -> list[str]:
        """Remove node-level images (every kind but base) that no container uses, older than the given age,
        except the tags in `keep`. Bases stay: a rebuild of one costs a debootstrap. Another checkout whose
        image goes rebuilds it on its next run (seconds). `kinds` limits it to those kinds. Returns the
        removed tags."""
        in_use = {c.image.id for c in self.client.containers.list(all=True)}
        cutoff = time.time() - older_than_hours * 3600
        removed = []
        for image in self.client.images.list(name=f"{REPOSITORY}/*"):
            created = datetime.fromisoformat(image.attrs["Created"][:19]).replace(tzinfo=UTC).timestamp()
            if image.id in in_use or created > cutoff:
                continue
            for tag in image.tags:
                kind = tag.split("/", 1)[1].split(":")[0]
                if tag not in keep and kind != "base" and (kinds is None or kind in kinds):
                    self.client.images.remove(tag)
                    removed.append(tag)
        return removed

    # -- building ----------------------------------------------------------------------------------------
    def ensure(self, kind: str) -> str:
        """The tag of image `kind`, built first if missing (and the base before it)."""
        tag = self.tag(kind)
        if self.exists(tag):
            return tag
        base = None if kind == "base" else self.ensure("base")
        BUILD_DIR.mkdir(parents=True, exist_ok=True)
        with open(BUILD_DIR / f"{kind}.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)  # another run in this checkout may be building it right now
            if self.exists(tag):
                return tag
            if base is None:
                self._build_base(tag)
            else:
                self._build_kind(kind, tag, base)
        return tag

    def _folder(self, kind: str) -> Path:
        folder = IMAGES_DIR / kind
        if not (folder / "Dockerfile").is_file():
            known = ", ".join(sorted(p.parent.name for p in IMAGES_DIR.glob("*/Dockerfile")))
            raise ImageError(f"no image kind {kind!r}: {folder}/Dockerfile is missing (known: {known})")
        return folder

    @staticmethod
    def _uses_wheels(folder: Path) -> bool:
        return "wheels" in (folder / "Dockerfile").read_text()

    def _build_base(self, tag: str) -> None:
        packages = base_packages()
        registry_base = os.environ.get("LAB_BASE")
        if registry_base:
            self.log(f"[images] building {tag} from registry image {registry_base}")
            context = self._fresh_dir(BUILD_DIR / "base-context")
            shutil.copy(IMAGES_DIR / "base" / "Dockerfile.registry", context / "Dockerfile")
            (context / "packages.txt").write_text("\n".join(packages) + "\n")
            self._docker_build(context, tag, {"FROM": registry_base})
            return
        if os.geteuid() != 0 or not shutil.which("debootstrap"):
            raise ImageError(
                "building the base image needs root and debootstrap (apt-get install debootstrap)"
            )
        rootfs = self._fresh_dir(BUILD_DIR / "base-rootfs")
        self.log(f"[images] debootstrap {SUITE} (minbase + {len(packages)} packages) into {rootfs} ...")
        include = f"--include={','.join(packages)}"
        self._run(["debootstrap", "--variant=minbase", include, SUITE, str(rootfs), MIRROR])
        for junk in ("var/cache/apt/archives", "var/lib/apt/lists"):
            for path in (rootfs / junk).glob("*"):
                if path.is_file():
                    path.unlink()
        self.log(f"[images] docker import -> {tag}")
        archive = ["tar", "-C", str(rootfs), "--numeric-owner", "-c", "."]
        tar = subprocess.Popen(archive, stdout=subprocess.PIPE)
        repository, _, version = tag.partition(":")
        changes = [f"ENV PATH={IMAGE_PATH}", 'CMD ["sleep", "infinity"]']
        answer = self.client.api.import_image_from_stream(tar.stdout, repository, version, changes)
        if tar.wait() or not self.exists(tag):
            raise ImageError(f"docker import of {rootfs} as {tag} failed: {answer}")
        shutil.rmtree(rootfs)

    def _build_kind(self, kind: str, tag: str, base: str) -> None:
        folder = self._folder(kind)
        context = self._fresh_dir(BUILD_DIR / f"context-{kind}")
        shutil.copytree(folder, context, dirs_exist_ok=True, ignore=shutil.ignore_patterns(*HOST_SIDE))
        if self._uses_wheels(folder):
            self.log(f"[images] pip wheel {ROOT.name} and its dependencies -> {context / 'wheels'}")
            self._run(
                [
                    sys.executable,
                    "-m",
                    "pip",
                    "wheel",
                    "--quiet",
                    "--wheel-dir",
                    str(context / "wheels"),
                    str(ROOT),
                ]
            )
        self.log(f"[images] docker build {tag} (images/{kind}, FROM {base})")
        self._docker_build(context, tag, {"BASE": base})
        shutil.rmtree(context)

    def _docker_build(self, context: Path, tag: str, buildargs: dict[str, str]) -> None:
        for chunk in self.client.api.build(
            path=str(context), tag=tag, buildargs=buildargs, rm=True, forcerm=True, decode=True
        ):
            if "error" in chunk:
                raise ImageError(f"docker build {tag}: {chunk['error'].strip()}")
            line = re.sub(r"\x1b\[[0-9;]*m", "", chunk.get("stream", "")).rstrip()
            if line:
                self.log(f"  {line}")

    def _run(self, argv: list[str]) -> None:
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        tail: list[str] = []
        for line in proc.stdout or []:
            if not line.startswith(CHATTER):
                self.log(f"  {line.rstrip()}")
            tail = [*tail[-20:], line]
        if proc.wait():
            raise ImageError(f"{argv[0]} failed (exit {proc.returncode}):\n{''.join(tail)}")

    @staticmethod
    def _fresh_dir(path: Path) -> Path:
        shutil.rmtree(path, ignore_errors=True)
        path.mkdir(parents=True)
        return path
