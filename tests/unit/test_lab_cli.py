"""The `lab` command's answers that need no lab: validation, help, messages."""

import shutil

from lab import cli
from lab.cli import main
from lab.scenario import SCENARIOS


def test_validate_checks_scenarios_as_scenarios_and_topologies_as_topologies(tmp_path, capsys):
    folder = tmp_path / "mine"
    shutil.copytree(SCENARIOS / "wrong-psk", folder)
    assert main(["validate", str(folder), str(folder / "scenario.yaml"), "intranet-pair"]) == 0
    assert capsys.readouterr().out.count(": ok\n") == 3
    scenario = folder / "scenario.yaml"
    scenario.write_text(scenario.read_text().replace("table: qmsa", "table: qmsas"))
    assert main(["validate", str(folder)]) == 1
    refused = capsys.readouterr().err
    assert f"{scenario}:18: expect[5].sa.table: 'qmsas' is not one of mmsa, qmsa, sa" in refused, refused


def test_every_verb_and_argument_says_what_it_is():
    """`lab --help` ends with the first steps; no verb shows a bare argument without a word on it."""
    parser = cli.parser()
    assert "lab scenario list" in parser.format_help()
    verbs = parser._subparsers._group_actions[0].choices  # type: ignore[union-attr]
    bare = [f"{name} {action.dest}" for name, sub in verbs.items() for action in sub._actions
            if action.help is None and action.dest != "help"]
    assert bare == [], bare
