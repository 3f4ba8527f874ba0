"""What a node of an image runs at start, as data: images/<kind>/image.yaml (schema lab/image.schema.json).

The backend knows no daemon: lab.node_setup starts, through the node handle, the services the image file
declares, and lab.running.Node.start_service runs one (copy the topology's file for it, spawn the command
with its output in `log`, poll `ready` until every condition holds; if the process dies first, the error
shows the end of its log). An image without image.yaml runs nothing.

>>> image = loads('''
... services:
...   samba:
...     start: up
...     command: [samba, -M, single, -i]
...     ready: [{tcp: 389}, {tcp: 88}]
...     log: /var/log/samba.log
... ''', "images/dc/image.yaml", "dc")
>>> [r.what for r in image.service("samba").ready]
['TCP port 389 answers', 'TCP port 88 answers']
>>> loads("services: {x: {start: later, command: [x], ready: [{tcp: 1}], log: /l}}", "i.yaml", "k")
Traceback (most recent call last):
...
lab.services.ImageServicesError: i.yaml:1: services.x.start: 'later' is not one of up, with-file, on-demand
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

from lab import images, yaml_source
from lab.backend import LabError

SCHEMA_PATH = Path(__file__).with_name("image.schema.json")
DEFAULT_TIMEOUT = 15.0
#: Where Node.spawn sends the output of processes that are no service of the image.
SPAWN_LOGS = "/var/log/lab"


class ImageServicesError(yaml_source.FileProblems):
    """An image.yaml was refused; `problems` holds one 'file:line: field: message' string per error."""


@dataclass(frozen=True)
class Readiness:
    """One condition of a service being ready: `argv` succeeds in the node; `what` says it for people."""

    what: str
    argv: tuple[str, ...]


@dataclass(frozen=True)
class Service:
    """One service of an image: how it starts, when it is ready, where it logs."""

    name: str
    start: str
    command: tuple[str, ...]
    ready: tuple[Readiness, ...]
    log: str
    file: str | None = None
    timeout: float = DEFAULT_TIMEOUT
    logs: tuple[str, ...] = ()


@dataclass(frozen=True)
class ImageServices:
    """The services of image `kind`, as `path` declares them (path None: the image has no image.yaml)."""

    kind: str
    path: Path | None
    services: dict[str, Service] = field(default_factory=dict)

    def service(self, name: str) -> Service:
        if name not in self.services:
            where = self.path or images.IMAGES_DIR / self.kind / "image.yaml"
            raise LabError(
                f"image {self.kind} has no service {name!r} ({where} declares: "
                f"{', '.join(self.services) or 'none'})"
            )
        return self.services[name]

    def at_up(self, files: dict[str, Path]) -> list[Service]:
        """The services `lab up` starts on a node that gives its services `files` (by service name)."""
        wanted = [s for s in self.services.values() if s.start == "up" or s.start == "with-file"]
        return [s for s in wanted if s.start == "up" or s.name in files]

    def log_files(self) -> list[str]:
        """Every log the services write, then the logs of spawned processes (a shell glob)."""
        return [*(path for s in self.services.values() for path in (s.log, *s.logs)), f"{SPAWN_LOGS}/*.log"]


def _readiness(condition: dict) -> Readiness:
    (kind, value), *_ = condition.items()
    if kind == "socket":
        return Readiness(f"{value} is a socket", ("test", "-S", value))
    if kind == "tcp":
        return Readiness(f"TCP port {value} answers", ("bash", "-c", f"exec 3<>/dev/tcp/127.0.0.1/{value}"))
    return Readiness(f"`{' '.join(value)}` succeeds", tuple(value))


@cache
def _schema() -> dict:
    return json.loads(SCHEMA_PATH.read_text())


def loads(text: str, path: Path | str, kind: str) -> ImageServices:
    """Read and check an image.yaml; ImageServicesError naming file, line and field."""
    source = yaml_source.parse(text, path, ImageServicesError)
    problems = yaml_source.schema_problems(source, source.data, _schema())
    problems += [
        source.locate(("services", name, "start"), "with-file needs `file` (where the topology's file goes)")
        for name, s in (source.data.get("services") or {}).items()
        if isinstance(s, dict) and s.get("start") == "with-file" and "file" not in s
    ]
    if problems:
        raise ImageServicesError(yaml_source.in_line_order(problems))
    return ImageServices(
        kind,
        Path(path),
        {
            name: Service(
                name,
                s["start"],
                tuple(s["command"]),
                tuple(_readiness(r) for r in s["ready"]),
                s["log"],
                s.get("file"),
                float(s.get("timeout", DEFAULT_TIMEOUT)),
                tuple(s.get("logs", ())),
            )
            for name, s in source.data["services"].items()
        },
    )


def load(kind: str) -> ImageServices:
    """The services of image `kind` (images/<kind>/image.yaml; none if the file does not exist)."""
    return _load(images.IMAGES_DIR / kind / "image.yaml", kind)


@cache
def _load(path: Path, kind: str) -> ImageServices:
    if not path.is_file():
        return ImageServices(kind, None)
    return loads(path.read_text(), path, kind)
