"""YAML with lines: the one place ipsecd turns a file's text into nodes and a field path into a line.

ipsecd.yaml (config.py) and policy files (policy/policyfile.py) name the file and line of every problem;
both compose the text here and look a field up here, by the path spelling they share: 'sas[1].spi'.
A misspelt name (a field, an algorithm, an action) gets the closest known one suggested.

>>> node = compose("a:\\n  b: [1, 2]\\n", "x.yaml")
>>> lines = value_lines(node)
>>> lines["a.b[1]"], enclosing_line(lines, "a.b[1].c")
(2, 2)
>>> did_you_mean("destinaton", ["source", "destination"])
" (did you mean 'destination'?)"
>>> compose("a: b: c", "x.yaml")
Traceback (most recent call last):
...
ipsecd.yaml_lines.YamlSyntaxError: x.yaml:1: not valid YAML: mapping values are not allowed in this context
"""

from __future__ import annotations

import difflib
import itertools
import re
from collections.abc import Iterable
from typing import Any

import yaml
from yaml._yaml import CParser
from yaml.composer import Composer
from yaml.constructor import SafeConstructor
from yaml.resolver import Resolver


class YamlSyntaxError(ValueError):
    """The text is not YAML: ``where`` is 'file:line' (or the file), ``message`` says why."""

    def __init__(self, where: str, message: str) -> None:
        super().__init__(f"{where}: not valid YAML: {message}")
        self.where, self.message = where, message


MAX_NESTING = 16  # a policy file nests 7 deep (policy, rules, rule, filter list, filters, filter, value)


class _BoundedLoader(Composer, CParser, SafeConstructor, Resolver):
    """The safe loader with libyaml's scanner and parser (ten times PyYAML's pure Python ones: a policy
    file is read at every start and every poll) and PyYAML's composer, which refuses collections nested
    deeper than a policy has any use for (libyaml's own limit is 1,000: composing that deep recursed
    out of the stack)."""

    depth = 0

    def __init__(self, stream: str) -> None:
        CParser.__init__(self, stream)
        SafeConstructor.__init__(self)
        Resolver.__init__(self)
        Composer.__init__(self)

    def compose_node(self, parent: yaml.Node | None, index: int) -> yaml.Node | None:
        if self.depth >= MAX_NESTING:
            mark: Any = getattr(self.peek_event(), "start_mark", None)  # libyaml's Mark: the same fields
            why = f"collections nested deeper than {MAX_NESTING}"
            raise yaml.composer.ComposerError(None, None, why, mark)
        self.depth += 1
        try:
            return Composer.compose_node(self, parent, index)
        finally:
            self.depth -= 1


def compose(text: str, source: str) -> yaml.Node | None:
    """The node tree of `text` (None for an empty document); YamlSyntaxError names `source` and the line."""
    try:
        loader = _BoundedLoader(text)
        try:
            return loader.get_single_node()
        finally:
            loader.dispose()
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"{source}:{mark.line + 1}" if mark else source
        raise YamlSyntaxError(where, str(getattr(e, "problem", e))) from None


def value_lines(node: yaml.Node | None, path: str = "", out: dict[str, int] | None = None) -> dict[str, int]:
    """Line number (1-based) of every value in the tree, keyed by its field path such as 'sas[1].spi'."""
    out = {} if out is None else out
    if node is None:
        return out
    out[path] = node.start_mark.line + 1
    if isinstance(node, yaml.MappingNode):
        for key, value in node.value:
            value_lines(value, f"{path}.{key.value}" if path else str(key.value), out)
    elif isinstance(node, yaml.SequenceNode):
        for i, value in enumerate(node.value):
            value_lines(value, f"{path}[{i}]", out)
    return out


def enclosing_line(lines: dict[str, int], path: str) -> int | None:
    """The line of the field at `path`, or of its nearest enclosing field (a missing field: its parent)."""
    while path and path not in lines:
        path = re.sub(r"(\.[^.\[]+|\[\d+\]|^[^.\[]+)$", "", path)
    return lines.get(path)


def did_you_mean(word: object, known: Iterable[str]) -> str:
    """' (did you mean 'x'?)' when a known name is close to a misspelt one (difflib), else ''.

    Of equally close names the one sharing the longest beginning wins: AES129 is AES128, not AES192.
    """
    text = str(word)
    close = difflib.get_close_matches(text, list(known), n=5, cutoff=0.6)
    if not close:
        return ""

    def score(name: str) -> tuple[float, int]:
        same = itertools.takewhile(lambda pair: pair[0] == pair[1], zip(text, name, strict=False))
        prefix = sum(1 for _ in same)
        return difflib.SequenceMatcher(None, text, name).ratio(), prefix

    return f" (did you mean {max(close, key=score)!r}?)"
