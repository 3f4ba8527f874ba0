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


@pytest.mark.parametrize("argv, said", [
    (["filters", "--all"], "--all is an option of `ipsecctl policy`, not of `ipsecctl filters`"),
    (["qmsa", "--since", "60"], "--since is an option of `ipsecctl events`, not of `ipsecctl qmsa`"),
    (["events", "--since", "5m"], "'5m' is not an age such as 90, 90s, 5min or 2h"),
])
def test_an_option_the_command_does_not_take_or_a_bad_age_is_refused_not_ignored(argv, said, capsys):
    """`filters --all` printed the filters as if --all were not there; `--since 5m` said 'invalid float'."""
    with pytest.raises(SystemExit) as exit_:
        ipsecctl.main(argv)
    assert exit_.value.code == 2 and said in capsys.readouterr().err


@pytest.mark.parametrize("text, seconds", [("90", 90.0), ("2.5", 2.5), ("90s", 90.0), ("5min", 300.0),
                                           ("2h", 7200.0)])
def test_since_takes_seconds_or_a_duration(text, seconds):
    assert ipsecctl.age(text) == seconds


def test_a_table_says_yes_and_no_not_pythons_true_and_false():
    rows = [{"rule": "r", "mirrored": True, "tunnel": None}, {"rule": "s", "mirrored": False}]
    shown = ipsecctl.GENERIC(rows)
    assert shown.split("\n")[1].split() == ["r", "yes"] and shown.split("\n")[2].split() == ["s", "no"]
