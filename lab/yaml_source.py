"""YAML files checked against a JSON schema, each problem as `file:line: field: message`.

One reader for the lab's two file kinds (topologies/*.yaml, images/<kind>/image.yaml): the line of every key
is kept, so that schema errors and the callers' own checks name the line.

>>> source = parse("a:\\n  b: 1\\n", "x.yaml", FileProblems)
>>> source.locate(("a", "b"), "too small")
'x.yaml:2: a.b: too small'
>>> parse("a: 1\\na: 2\\n", "x.yaml", FileProblems)
Traceback (most recent call last):
...
lab.yaml_source.FileProblems: x.yaml:2: a: duplicate key
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jsonschema
import yaml

from lab.model import FieldPath


class FileProblems(ValueError):
    """A file was refused; `problems` holds one 'file:line: field: message' string per error."""

    def __init__(self, problems: list[str]):
        self.problems = problems
        super().__init__("\n".join(problems))


@dataclass
class YamlSource:
    """A parsed YAML file and the line of every key and item in it."""

    path: Path
    data: Any
    lines: dict[FieldPath, int]

    def locate(self, field: FieldPath, message: str) -> str:
        """`file:line: field: message`, at the line of `field` or of its nearest parent in the file."""
        line = next((self.lines[field[:n]] for n in range(len(field), -1, -1) if field[:n] in self.lines), 1)
        return f"{self.path}:{line}: {dotted(field) or '(top level)'}: {message}"


def parse(text: str, path: Path | str, error: type[FileProblems]) -> YamlSource:
    """Parse `text`; `error` (naming file and line) for invalid YAML, an empty file or a duplicate key."""
    path = Path(path)
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = mark.line + 1 if mark else 1
        raise error([f"{path}:{line}: not valid YAML: {getattr(exc, 'problem', exc)}"]) from None
    if root is None:
        raise error([f"{path}:1: the file is empty"])
    lines: dict[FieldPath, int] = {}
    duplicates = list(_index_lines(root, (), lines))
    if duplicates:
        raise error([f"{path}:{lines[d]}: {dotted(d)}: duplicate key" for d in duplicates])
    return YamlSource(path, yaml.safe_load(text), lines)


def schema_problems(
    source: YamlSource,
    data: Any,
    schema: dict,
    formats: jsonschema.FormatChecker | None = None,
    format_names: dict[str, str] | None = None,
) -> list[str]:
    """What `schema` refuses in `data` (the source's data, possibly with overrides merged), in line order."""
    validator = jsonschema.Draft202012Validator(schema, format_checker=formats)
    return in_line_order(
        source.locate(*_describe(e, format_names or {})) for e in validator.iter_errors(data)
    )


def in_line_order(problems: Iterator[str] | list[str]) -> list[str]:
    return sorted(problems, key=lambda problem: int(problem.split(":")[1]))


def dotted(field: FieldPath) -> str:
    return ".".join(f"[{p}]" if isinstance(p, int) else p for p in field).replace(".[", "[")


def _index_lines(node: yaml.Node, here: FieldPath, lines: dict[FieldPath, int]) -> Iterator[FieldPath]:
    """Record the line of every key and item; yield the paths of duplicate keys."""
    lines.setdefault(here, node.start_mark.line + 1)
    if isinstance(node, yaml.MappingNode):
        seen = set()
        for key, value in node.value:
            path = (*here, key.value)
            if key.value in seen:
                lines[path] = key.start_mark.line + 1
                yield path
            seen.add(key.value)
            lines[path] = key.start_mark.line + 1
            yield from _index_lines(value, path, lines)
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            yield from _index_lines(item, (*here, index), lines)


def _describe(error: jsonschema.ValidationError, format_names: dict[str, str]) -> tuple[FieldPath, str]:
    """A schema error as (field, message), with messages written for people, not for schema authors."""
    field = tuple(error.absolute_path)
    if error.validator == "format":
        wanted = format_names.get(error.validator_value, error.validator_value)
        return field, f"{error.instance!r} is not {wanted}"
    if error.validator == "additionalProperties":
        extra = sorted(set(error.instance) - set(error.schema.get("properties", {})))
        allowed = ", ".join(error.schema.get("properties", {}))
        return (*field, extra[0]), f"unknown field {extra[0]!r} (allowed: {allowed})"
    if error.validator == "required":
        return field, error.message.replace("is a required property", "is required")
    if error.validator == "enum":
        return field, f"{error.instance!r} is not one of {', '.join(map(str, error.validator_value))}"
    if error.validator == "propertyNames" or (
        error.validator == "pattern" and list(error.absolute_schema_path)[-2:-1] == ["propertyNames"]
    ):
        return (*field, error.instance), f"{error.instance!r} is not a valid name ({error.message})"
    if error.validator == "pattern" and "description" in error.schema:
        return field, f"{error.instance!r} is not valid here: expected {error.schema['description']}"
    if error.validator == "pattern":
        return field, f"{error.instance!r} is not valid here ({error.message})"
    return field, error.message
