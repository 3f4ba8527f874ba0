"""ipsecctl's command line as a user meets it: --help names every command, a typo gets the closest."""

import pytest

from ipsecd import ipsecctl


def test_help_says_what_every_command_shows(capsys):
    with pytest.raises(SystemExit):
        ipsecctl.main(["--help"])
    shown = capsys.readouterr().out
    for command in ipsecctl.COMMANDS:
        assert f"ipsecctl {command}" in shown or f"| {command}" in shown, command
    assert "EXPIRES IN: seconds" in shown


def test_a_misspelt_command_gets_the_closest(capsys):
    assert ipsecctl.main(["qmsas"]) == 2
    assert "ipsecctl: no command 'qmsas' (did you mean 'qmsa'?)" in capsys.readouterr().err
