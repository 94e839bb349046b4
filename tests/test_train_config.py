"""`meanloc train` configuration: recipes, YAML < CLI precedence, typo keys refused with a hint."""

import pytest
import yaml

from meanloc.cli import main
from meanloc.errors import MeanlocError
from meanloc.training.config import build_config, read_yaml_config


def test_paper_recipes_are_the_defaults_for_the_real_datasets():
    university = build_config(cli_values={"dataset": "university", "data_root": "x"})
    assert (university.preset, university.epochs, university.batch_size) == ("mean-paper", 2, 64)
    assert (university.lr, university.weight_decay, university.warmup_ratio) == (1e-3, 0.01, 0.1)
    assert (university.grad_clip_value, university.grad_scaler_init) == (100.0, 1024.0)
    sues = build_config(cli_values={"dataset": "sues200", "data_root": "x", "altitude": 150})
    assert (sues.epochs, sues.batch_size, sues.num_classes) == (1, 24, 150)


def test_cli_overrides_yaml_which_overrides_the_recipe(tmp_path):
    path = tmp_path / "train.yaml"
    path.write_text(yaml.safe_dump({"dataset": "university", "data-root": "d", "batch_size": 32, "lr": 5e-4}))
    config = build_config(read_yaml_config(path), {"batch_size": 16})
    assert (config.batch_size, config.lr, config.epochs) == (16, 5e-4, 2)


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"batch_szie": 8}, "unknown key 'batch_szie' (did you mean 'batch_size'?)"),
        ({"dataset": "univresity"}, "did you mean 'university'?"),
        ({"dataset": "sues200", "altitude": 175}, "altitude"),
        ({"val_split": "test"}, "test split is refused"),
        ({"epochs": "two"}, "'epochs' must be int"),
    ],
)
def test_bad_values_are_one_line_errors(values, message):
    with pytest.raises(MeanlocError) as error:
        build_config(cli_values={"data_root": "x", **values})
    assert message in str(error.value) and "\n" not in str(error.value)


def test_yaml_typo_is_reported_with_the_file_name(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("learning_rate: 0.01\n")
    with pytest.raises(MeanlocError, match=r"bad.yaml: unknown key 'learning_rate'"):
        read_yaml_config(path)


def test_cli_prints_the_resolved_config(tmp_path, capsys):
    path = tmp_path / "c.yaml"
    path.write_text("dataset: university\ndata_root: somewhere\nepochs: 3\n")
    assert main(["train", "--config", str(path), "--batch-size", "8", "--no-augment", "--print-config"]) == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert (printed["epochs"], printed["batch_size"], printed["augment"], printed["data_root"]) == (3, 8, False, "somewhere")


def test_cli_typo_in_yaml_exits_2_with_one_line(tmp_path, capsys):
    path = tmp_path / "c.yaml"
    path.write_text("dataset: university\ndata_root: x\nwarmup_ratoi: 0.2\n")
    assert main(["train", "--config", str(path), "--print-config"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("meanloc: error:") and "did you mean 'warmup_ratio'" in err and "\n" not in err


def test_input_size_is_derived_once_from_the_options_or_the_preset():
    from meanloc.training.config import input_px

    assert input_px(build_config(cli_values={"dataset": "university", "data_root": "x"})) == 384  # mean-paper
    assert input_px(build_config(cli_values={"dataset": "university", "data_root": "x", "preset": "mean-nano"})) == 64
    assert input_px(build_config(cli_values={"dataset": "university", "data_root": "x", "img_size": 96})) == 96


def test_resume_continues_the_checkpoint_config_and_refuses_a_contradicting_command_line():
    from meanloc.training.config import resumed_config

    recorded = build_config(cli_values={"dataset": "synthetic", "data_root": "x", "lr": 0.005, "img_size": 48}).to_dict()
    manifest = {"train_config": recorded, "model_config": {"img_size": 48}}
    # Options not stated again are the checkpoint's (not the recipe's); where and how long it runs may change.
    resumed = resumed_config({"resume": "last.pt", "data_root": "y", "max_steps": 7}, manifest, "last.pt")
    assert (resumed.lr, resumed.img_size, resumed.data_root, resumed.max_steps) == (0.005, 48, "y", 7)
    assert resumed.resume == "last.pt"
    resumed_config({"resume": "last.pt", "lr": 0.005, "preset": "mean-small"}, manifest, "last.pt")  # the same: fine
    with pytest.raises(MeanlocError, match=r"--lr 0.002 \(the checkpoint: 0.005\); --preset 'mean-nano'") as error:
        resumed_config({"resume": "last.pt", "lr": 0.002, "preset": "mean-nano"}, manifest, "last.pt")
    assert "last.pt" in str(error.value) and "\n" not in str(error.value)
    # Older checkpoints record no size in their train config: the model config's is the one trained.
    legacy = {"train_config": {**recorded, "img_size": None}, "model_config": {"img_size": 48}}
    with pytest.raises(MeanlocError, match=r"--img-size 64 \(the checkpoint: 48\)"):
        resumed_config({"resume": "x", "img_size": 64}, legacy, "x")
    assert resumed_config({"resume": "x"}, {"model_config": {"img_size": 48}}, "x") is None  # weights only


def test_resume_alone_continues_the_run_in_out():
    from meanloc.cli import build_command_parser
    from meanloc.training.config import cli_overrides

    args = build_command_parser("train").parse_args(["--data", "x", "--out", "runs/a", "--resume"])
    assert build_config(cli_values=cli_overrides(args)).resume == "runs/a/last.pt"
    args = build_command_parser("train").parse_args(["--data", "x", "--resume", "other/best.pt"])
    assert build_config(cli_values=cli_overrides(args)).resume == "other/best.pt"
