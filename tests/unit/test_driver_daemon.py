"""ipsecd's start-up checks, manual SA building, the control socket and ipsecctl's output."""

import asyncio
import json
import subprocess
import sys

import pytest

from ipsecd import control, ipsecctl
from ipsecd.config import parse
from ipsecd.daemon import build_sa, main, manual_groups

BUNDLE = """
filters: [{name: a-b, source: 10.0.0.1, destination: 10.0.0.2, action: secure}]
actions: {secure: {action: negotiate}}
sas:
  - {spi: 0x101, protocol: esp, direction: outbound, source: 10.0.0.1, destination: 10.0.0.2,
     encryption: 3des-cbc, enc_key: "K1", integrity: hmac-md5-96, auth_key: "K2", filter: a-b,
     lifetime_seconds: 100}
  - {spi: 0x102, protocol: ah, direction: outbound, source: 10.0.0.1, destination: 10.0.0.2,
     integrity: hmac-sha1-96, auth_key: "K3", filter: a-b}
  - {spi: 0x201, protocol: esp, direction: inbound, source: 10.0.0.2, destination: 10.0.0.1,
     encryption: null, integrity: hmac-sha1-96, auth_key: "K4", filter: a-b}
""".replace("K1", "11" * 24).replace("K2", "22" * 16).replace("K3", "33" * 20).replace("K4", "44" * 20)


def test_an_ah_and_an_esp_sa_of_one_filter_and_direction_become_a_bundle():
    groups = manual_groups(parse(BUNDLE).sas)
    assert sorted([m.spi for m in g] for g in groups) == [[0x102, 0x101], [0x201]]
    bundle = build_sa(next(g for g in groups if len(g) == 2), 64)
    assert (bundle.protocol, bundle.inner.protocol, bundle.inner.spi) == ("ah", "esp", 0x101)
    assert bundle.inner.lifetime.hard_seconds == 100 and bundle.inner.lifetime.soft_seconds == 90


def test_a_bad_file_makes_ipsecd_refuse_to_start_naming_the_field(tmp_path, capsys):
    bad = tmp_path / "ipsecd.yaml"
    bad.write_text(BUNDLE.replace("11" * 24, "1122"))
    assert main(["-c", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "refusing to start" in err
    assert f"{bad}:6: sas[0].enc_key: expected 24 bytes of hex for 3des-cbc, got 2" in err


def test_check_mode_through_the_installed_command(tmp_path):
    good = tmp_path / "ipsecd.yaml"
    good.write_text(BUNDLE)
    done = subprocess.run([sys.executable, "-m", "ipsecd.daemon", "--check", "-c", str(good)],
                          capture_output=True, text=True)
    assert done.returncode == 0 and "2 filters, 3 manual SAs" in done.stdout


def test_control_socket_answers_errors_instead_of_crashing(tmp_path):
    path = str(tmp_path / "ctl.sock")

    def boom():
        raise ValueError("no such thing")

    async def scenario():
        server = await control.serve(path, {"ok": lambda: {"n": 1}, "boom": boom})
        try:
            ok = await asyncio.to_thread(control.request, path, "ok")
            with pytest.raises(control.ControlError, match="boom: no such thing"):
                await asyncio.to_thread(control.request, path, "boom")
            with pytest.raises(control.ControlError, match="commands: boom, ok"):
                await asyncio.to_thread(control.request, path, "nope")
            return ok
        finally:
            server.close()

    assert asyncio.run(scenario()) == {"n": 1}


def test_ipsecctl_says_when_ipsecd_is_not_running(tmp_path, capsys):
    assert ipsecctl.main(["-s", str(tmp_path / "none.sock"), "status"]) == 1
    assert "is ipsecd running?" in capsys.readouterr().err


def test_ipsecctl_text_and_json_views(tmp_path, monkeypatch, capsys):
    sa = {"spi": "0x00001001", "protocol": "esp", "direction": "outbound", "mode": "transport",
          "source": "10.0.0.1", "destination": "10.0.0.2", "encryption": "aes-gcm-128", "integrity": None,
          "udp_encap": [4500, 4500], "filter": "a-b", "counters": {"packets": 3, "bytes": 300},
          "sequence": 3, "age_seconds": 1.5}
    monkeypatch.setattr(ipsecctl, "request", lambda path, command: [sa])
    assert ipsecctl.main(["sa"]) == 0
    text = capsys.readouterr().out
    assert "0x00001001  ESP    outbound  transport  10.0.0.1 -> 10.0.0.2  aes-gcm-128  udp 4500->4500" in text
    assert ipsecctl.main(["sa", "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == [sa]
