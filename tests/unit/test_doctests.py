"""Every docstring example in ipsecd runs: the examples are documentation that cannot go stale."""

import doctest
import importlib
import pkgutil

import pytest

import ipsecd

MODULES = [m.name for m in pkgutil.walk_packages(ipsecd.__path__, "ipsecd.")]


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name):
    result = doctest.testmod(importlib.import_module(name))
    assert result.failed == 0
