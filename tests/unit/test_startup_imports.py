"""ipsecd starts small: what a node's configuration does not use is not imported at start (issue 16).

numpy (16 MB, 0.1 s of CPU) is for checksums of 1 KB and more, cryptography.x509 (8 MB) for certificates,
ctypes.util found libc by name and tempfile writes policies (both pull shutil, bz2, lzma): a hundred
idle ipsecd paid for all of them.
"""

import subprocess
import sys

DEFERRED = ("numpy", "cryptography.x509", "ctypes.util", "tempfile")


def loaded_after(code: str) -> list[str]:
    probe = f"import sys\n{code}\nprint(' '.join(m for m in {DEFERRED!r} if m in sys.modules))"
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    return done.stdout.split()


def test_starting_ipsecd_imports_neither_numpy_nor_x509():
    assert loaded_after("import ipsecd.daemon") == []


def test_numpy_comes_with_the_first_sum_that_needs_it_and_gives_the_same_checksum():
    code = (
        "from ipsecd.driver.ipv4 import internet_checksum, NUMPY_FROM\n"
        "data = bytes(range(256)) * 8 + b'x'\n"
        "big = internet_checksum(data)\n"
        "assert 'numpy' in sys.modules and len(data) >= NUMPY_FROM\n"
        "assert big == internet_checksum(data[:500] + data[500:])\n"
        "value = int.from_bytes(data + b'\\0', 'big') % 0xFFFF\n"
        "assert big == (0xFFFF - value if value else 0xFFFF), big"
    )
    assert loaded_after(code) == ["numpy"]
