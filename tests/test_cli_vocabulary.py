"""One command-line vocabulary: every `meanloc` command's parser is walked, and an option name means
the same thing wherever it appears (destination, type and validation, flag or value), the shared
options (meanloc/cli_args.py) are spelled alike everywhere, and every hidden alias is an old spelling
of a visible option of its own command."""

import argparse
import itertools

import pytest

from meanloc import cli_args
from meanloc.cli import COMMANDS, build_command_parser, main

SHARED = {"--batch-size": cli_args.positive_int, "--threads": cli_args.positive_int, "--out": None,
          "--overwrite": None, "--no-progress": None, "--dataset": None, "--data": None, "--model": None}
RETIRED = {"--batch", "--quiet", "--out-dir", "--data-root"}  # hidden aliases now, gone in the next release


def _parsers(parser, path):
    yield path, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, child in action.choices.items():
                yield from _parsers(child, (*path, name))


def _options():
    """(command path, option string, action, hidden) for every option of every command."""
    for name in COMMANDS:
        for path, parser in _parsers(build_command_parser(name), (name,)):
            for action in parser._actions:
                for option in action.option_strings:
                    if option not in ("-h", "--help"):
                        yield path, option, action, action.help == argparse.SUPPRESS


def _meaning(action):
    kind = "flag" if action.nargs in (0, "?") else "value"  # "?": a flag that may name its value
    value_type = action.type if action.type is not None else str
    return action.dest, value_type, kind


OPTIONS = list(_options())


def test_every_command_is_walked():
    commands = {path for path, *_ in OPTIONS}
    assert {("train",), ("eval",), ("bank", "build"), ("localize",), ("profile",), ("calibrate",),
            ("report", "precision"), ("export", "engine"), ("data", "synth"), ("doctor",)} <= commands


@pytest.mark.parametrize("option", sorted({option for _, option, _, hidden in OPTIONS if not hidden}))
def test_an_option_means_the_same_in_every_command(option):
    uses = [(path, action) for path, name, action, hidden in OPTIONS if name == option and not hidden]
    meanings = {_meaning(action) for _, action in uses}
    assert len(meanings) == 1, f"{option}: " + "; ".join(f"{' '.join(p)} {_meaning(a)}" for p, a in uses)
    # A command may accept fewer values than another, never other ones.
    for (path_a, a), (path_b, b) in itertools.combinations(uses, 2):
        if a.choices is not None or b.choices is not None:
            small, large = sorted((set(a.choices or ()), set(b.choices or ())), key=len)
            assert small <= large, f"{option}: {' '.join(path_a)} {a.choices} vs {' '.join(path_b)} {b.choices}"


def test_shared_options_use_the_shared_validation():
    for path, option, action, hidden in OPTIONS:
        if option in SHARED and SHARED[option] is not None and not hidden:
            assert action.type is SHARED[option], f"{' '.join(path)} {option}"
    spellings = {option for _, option, _, hidden in OPTIONS if not hidden}
    assert not spellings & RETIRED, "an old spelling is still shown in --help"
    assert "--batch" not in spellings and "--out-dir" not in spellings


def test_hidden_aliases_are_old_spellings_of_a_visible_option_of_the_same_command():
    by_command = {}
    for path, option, action, hidden in OPTIONS:
        by_command.setdefault(path, []).append((option, action, hidden))
    aliases = 0
    for path, options in by_command.items():
        visible = {action.dest for _, action, hidden in options if not hidden}
        for option, action, hidden in options:
            if hidden:
                aliases += 1
                assert action.dest in visible, f"{' '.join(path)} {option} hides {action.dest}, which has no visible option"
    assert aliases >= 8


@pytest.mark.parametrize("argv", [
    ["report", "precision", "--onnx", "m.onnx", "--data", "d", "--out", "r.json", "--batch-size", "0"],
    ["bank", "build", "--model", "m.onnx", "--orthophoto", "o.tif", "--out", "b", "--threads", "-1"],
    ["profile", "--model", "m.onnx", "--threads", "0"],
    ["eval", "--onnx", "m.onnx", "--data", "d", "--batch", "x"],
])
def test_bad_shared_values_are_refused_alike(argv, capsys):
    with pytest.raises(SystemExit) as error:
        main(argv)
    assert error.value.code == 2
    err = capsys.readouterr().err
    assert "must be > 0" in err or "expected a positive integer" in err


def test_old_spellings_still_work_for_one_release():
    bank = build_command_parser("bank")
    old = bank.parse_args(["build", "--model", "m.onnx", "--orthophoto", "o.tif", "--out", "b", "--batch", "8"])
    new = bank.parse_args(["build", "--model", "m.onnx", "--orthophoto", "o.tif", "--out", "b", "--batch-size", "8"])
    assert old.batch_size == new.batch_size == 8
    profile = build_command_parser("profile").parse_args(["--model", "m.onnx", "--batch", "1,4"])
    assert profile.batch_sizes == [1, 4]
    engine = build_command_parser("export").parse_args(["engine", "--onnx", "m.onnx", "--out", "e", "--quiet"])
    assert engine.no_progress is True
    synth = build_command_parser("data").parse_args(["synth", "--out", "d", "--preset", "tiny", "--altitude", "80", "120"])
    assert synth.data_preset == "tiny" and synth.view_altitude == [80.0, 120.0]


def test_train_speaks_the_shared_vocabulary_and_keeps_its_config_keys():
    from meanloc.training.config import cli_overrides

    parser = build_command_parser("train")
    new = cli_overrides(parser.parse_args(["--data", "d", "--out", "o", "--batch-size", "8", "--threads", "2",
                                           "--no-progress", "--dataset", "university"]))
    old = cli_overrides(parser.parse_args(["--data-root", "d", "--out-dir", "o", "--batch-size", "8", "--threads",
                                           "2", "--no-progress", "--dataset", "university"]))
    assert new == old == {"data_root": "d", "out_dir": "o", "batch_size": 8, "threads": 2, "progress": False,
                          "dataset": "university"}
    assert cli_overrides(parser.parse_args(["--progress"]))["progress"] is True
    assert "progress" not in cli_overrides(parser.parse_args([]))  # not given: the YAML's or the recipe's
