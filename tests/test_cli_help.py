"""`--help` at every level: what each command is for, a line for every argument, every default shown."""

from __future__ import annotations

import argparse

import pytest

from orchestrator.cli import build_parser


def _subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    (action,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return dict(action.choices)


def test_the_top_level_help_says_what_the_tool_does_and_shows_the_flow():
    text = build_parser().format_help()
    assert "Ray Tune" in text and "MLflow" in text and "champion" in text
    for step in ("orchestrator sweep", "orchestrator ui", "orchestrator promote", "orchestrator ask"):
        assert step in text
    for name in _subcommands(build_parser()):
        assert f"    {name} " in text  # each command listed with its one-line purpose


@pytest.mark.parametrize("name", sorted(_subcommands(build_parser())))
def test_every_argument_has_a_help_line_and_every_default_is_shown(name):
    command = _subcommands(build_parser())[name]
    text = command.format_help()
    assert command.description and " ".join(command.description.split()) in " ".join(text.split())
    for action in command._actions:
        assert action.help, f"{name}: {action.dest} has no help text"
        if action.nargs != 0 and action.default not in (None, [], argparse.SUPPRESS):
            shown = " ".join(command._get_formatter()._expand_help(action).split())
            assert "default" in shown and str(action.default) in shown, f"{name} {action.dest}: {shown}"


def test_promote_help_shows_its_defaults():
    text = " ".join(_subcommands(build_parser())["promote"].format_help().split())
    assert "(default: 3)" in text and "(default: recall-champion)" in text
