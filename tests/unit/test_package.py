import ipsecd
import lab


def test_packages_import():
    assert ipsecd.__doc__ and lab.__doc__
