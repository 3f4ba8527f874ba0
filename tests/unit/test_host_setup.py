"""The set-up a new user runs: host packages from one list, `lab` on the PATH, progress shown, and what
`lab check` says an optional kernel feature costs."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from lab import preflight

ROOT = Path(__file__).resolve().parents[2]


def fake_tools(folder: Path, uid: int, installed: set[str]) -> dict[str, str]:
    """dpkg-query, id and apt-get stand-ins on the PATH; apt-get records its arguments."""
    folder.mkdir()
    scripts = {
        "dpkg-query": "case \" $INSTALLED \" in *\" $4 \"*) printf 'install ok installed';; *) exit 1;; esac",
        "id": f"echo {uid}",
        "apt-get": f'echo "$@" >> {folder}/apt-get.log',
    }
    for name, body in scripts.items():
        (folder / name).write_text(f"#!/bin/sh\n{body}\n")
        (folder / name).chmod(0o755)
    return {**os.environ, "PATH": f"{folder}:{os.environ['PATH']}", "INSTALLED": " ".join(installed)}


def listed() -> list[str]:
    text = (ROOT / "host-packages.txt").read_text()
    return [word for line in text.splitlines() for word in line.split("#")[0].split()]


def test_root_installs_the_missing_host_packages(tmp_path):
    env = fake_tools(tmp_path / "bin", 0, {"tcpdump"})
    done = subprocess.run([ROOT / "tools/host-packages"], env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    missing = [p for p in listed() if p != "tcpdump"]
    calls = (tmp_path / "bin/apt-get.log").read_text().splitlines()
    assert calls == ["update", f"install -y {' '.join(missing)}"]


def test_non_root_is_told_the_exact_command(tmp_path):
    env = fake_tools(tmp_path / "bin", 1000, set(listed()) - {"debootstrap", "tshark"})
    done = subprocess.run([ROOT / "tools/host-packages"], env=env, capture_output=True, text=True)
    assert done.returncode == 1
    assert "run as root: apt-get install -y debootstrap tshark" in done.stderr
    assert not (tmp_path / "bin/apt-get.log").exists()


def test_ci_and_make_use_the_one_list():
    assert "tools/host-packages" in (ROOT / ".ci/run").read_text()
    plan = subprocess.run(["make", "-n", "-C", str(ROOT), "lab-up"], capture_output=True, text=True).stdout
    assert "tools/host-packages" in plan and "tools/lab-on-path" in plan


def test_lab_goes_on_the_path(tmp_path):
    done = subprocess.run([ROOT / "tools/lab-on-path", str(tmp_path)], capture_output=True, text=True)
    assert done.returncode == 0
    assert os.readlink(tmp_path / "lab") == str(ROOT / ".venv/bin/lab")


def test_another_checkouts_lab_is_left_alone(tmp_path):
    other = tmp_path / "other-lab"
    other.write_text("")
    (tmp_path / "lab").symlink_to(other)
    done = subprocess.run([ROOT / "tools/lab-on-path", str(tmp_path)], capture_output=True, text=True)
    assert os.readlink(tmp_path / "lab") == str(other)
    assert f"export PATH={ROOT}/.venv/bin:$PATH" in done.stdout


def test_long_steps_show_progress():
    """pip without -q (a first install takes tens of seconds), pytest -v (test names as they run)."""
    venv = subprocess.run(["make", "-n", "-B", "-C", str(ROOT), ".venv/.installed"], capture_output=True,
                          text=True).stdout
    assert "pip install" in venv and " -q" not in venv
    test = subprocess.run(["make", "-n", "-C", str(ROOT), "test"], capture_output=True, text=True).stdout
    assert "pytest -v" in test


def test_check_says_what_no_netem_costs(monkeypatch):
    monkeypatch.setattr(preflight, "_scratch", lambda script: (False, "Error: Specified qdisc not found."))
    netem = next(c for c in (check() for check in preflight.KERNEL) if c.name == "netem")
    assert not netem.ok and not netem.required
    assert "not needed: lab.linkfaults" in netem.detail
