"""Fixtures shared by the lab scenarios."""

import pytest
from pki import Pki


@pytest.fixture(scope="module")
def pki() -> Pki:
    """A lab CA that issues node certificates (made with `cryptography`), one per test module."""
    return Pki()
