"""ipsecd starts small: what a node's configuration does not use is not imported at start (issue 16).

numpy (16 MB, 0.1 s of CPU) is for checksums of 1 KB and more, cryptography (6 MB; its x509 8 MB more) for
keyed SAs, IKE exchanges and certificates, the directory store (with ldap3, gssapi) for domain members only;
tempfile pulls shutil, bz2 and lzma. A hundred idle ipsecd paid for all of them.
"""

import shutil
import subprocess
import sys
from pathlib import Path

STAR = Path(__file__).parents[2] / "topologies" / "star"
DEFERRED = ("numpy", "cryptography", "ctypes.util", "tempfile", "ipsecd.policy.directory_store",
            "ipsecd.policy.ldap_directory", "ldap3", "gssapi")


def loaded_after(code: str) -> list[str]:
    """Which of DEFERRED a fresh interpreter has imported after running `code`."""
    probe = f"import sys\n{code}\nprint(' '.join(m for m in {DEFERRED!r} if m in sys.modules))"
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    return done.stdout.split()


def test_importing_ipsecd_imports_none_of_them():
    assert loaded_after("import ipsecd.daemon") == []


def test_a_psk_node_started_as_the_daemon_does_has_none_of_them_until_it_keys_an_sa(tmp_path):
    """The star client's configuration through the daemon's own wiring (daemon.PolicyKeying: IKE, the Policy
    Agent applying the assigned policy to the real driver), without the kernel's TUN and sockets."""
    shutil.copytree(STAR / "client", tmp_path / "client")
    code = f"""
from ipsecd import config, daemon
from ipsecd.driver.driver import IPsecDriver, RecordingWire
from ipsecd.driver.sad import SecurityAssociation
cfg = config.load({str(tmp_path / "client" / "ipsecd.yaml")!r})
wire = RecordingWire()
driver = IPsecDriver(cfg.spd, wire=wire)
keying = daemon.PolicyKeying(cfg, cfg.policy, driver, wire)
keying.agent.apply()
assert keying.agent.applied.policy.name == "star client", keying.agent.events
actions = {{(f.rule, f.action.action.value) for f in driver.spd.filters}}
assert actions == {{("secure the server", "negotiate")}}, actions
print(' '.join(m for m in {DEFERRED!r} if m in sys.modules), end=' | ')
SecurityAssociation(0x1000, "esp", "outbound", "transport", "10.0.1.1", "10.0.0.1", "3des-cbc", bytes(24),
                    "hmac-sha1-96", bytes(20))
"""
    assert loaded_after(code) == ["|", "cryptography"]  # none at start; the first keyed SA brings it


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
