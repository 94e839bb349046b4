"""The `meanloc` command: every subcommand and option explains itself; bad input is one line."""

import argparse
import subprocess
import sys

import pytest

from meanloc.cli import COMMANDS, build_command_parser


def _all_parsers(parser: argparse.ArgumentParser):
    yield parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                yield from _all_parsers(sub)


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_every_option_of_every_command_has_help(name):
    parsers = list(_all_parsers(build_command_parser(name)))
    undocumented = [
        f"{parser.prog} {'/'.join(action.option_strings) or action.dest}"
        for parser in parsers
        for action in parser._actions
        if not isinstance(action, (argparse._HelpAction, argparse._SubParsersAction)) and not action.help
    ]
    assert undocumented == []
    assert any(getattr(p, "_defaults", {}).get("handler") for p in parsers), "command runs nothing"


def _meanloc(*argv: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "meanloc", *argv], capture_output=True, text=True, timeout=120)


def test_top_level_help_lists_every_command_without_importing_stages():
    result = _meanloc("--help")
    assert result.returncode == 0
    assert all(name in result.stdout for name in COMMANDS)


@pytest.mark.parametrize(
    "argv, message",
    [
        (["model", "summary", "--preset", "mean-tiny"], "unknown model preset 'mean-tiny'"),
        (["eval", "--checkpoint", "/nonexistent.pt", "--data", "/nonexistent"], "/nonexistent"),
        (["bank", "info", "/nonexistent-bank"], "/nonexistent-bank"),
    ],
)
def test_bad_input_is_one_line_and_non_zero(argv, message):
    result = _meanloc(*argv)
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("meanloc: error:") and message in lines[0]
