"""Training configuration: one dataclass, filled from (lowest to highest precedence)
field defaults < the dataset's recipe < a YAML file < command-line options.

The recipe of the real datasets is the reference's (shared/docs/mean-model.md §6.1); the
synthetic recipe is ours, tuned for the demo's 10-minute, 2-core budget. Unknown keys (a typo in
the YAML or an override) are refused with a one-line error and a suggestion.
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from meanloc.cli_args import (
    DATASETS,
    add_batch_size,
    add_data,
    add_hidden_alias,
    add_out,
    add_progress,
    add_threads,
)
from meanloc.errors import MeanlocError

SYNTHETIC_STEPS = 1000  # the synthetic recipe's step budget
SYNTHETIC_DEFAULT_PX = 64  # input side for synthetic datasets that recommend none
SUES_ALTITUDES = (150, 200, 250, 300)


def _opt(default: Any, help: str) -> Any:
    return field(default=default, metadata={"help": help})


@dataclass
class TrainConfig:
    # --- data ------------------------------------------------------------------------------------
    dataset: str = _opt("synthetic", "recipe and reader: university, sues200 or synthetic (University-1652 layout)")
    data_root: str = _opt("", "dataset root (the folder holding train/, and val/ or test/)")
    altitude: int | None = _opt(None, "SUES-200 altitude in metres (150, 200, 250 or 300); one run per altitude")
    cache_images: bool = _opt(False, "decode and resize every training image once into RAM (fast on few CPU cores)")
    pose_aware_queries: bool = _opt(False, "rectify each drone view to a north-up ground square with the pose in its sidecar "
                                    "(synthetic data; the onboard loop then needs attitude and altitude)")
    augment: bool = _opt(True, "reference augmentations (joint flip, colour jitter, blur, dropout, satellite RandomRotate90)")
    num_workers: int = _opt(0, "DataLoader worker processes")
    skip_bad_images: bool = _opt(False, "skip damaged, truncated or unreadable training images (counted and named) "
                                 "instead of refusing to train")
    objective: str = _opt("supervised", "supervised (drone view <-> satellite tile pairs) or ssl: self-supervised "
                          "pretraining on the satellite orthophoto alone (synthetic/user datasets; no drone data)")
    attitude_noise: str = _opt("ideal", "pose-aware queries: rectify training views with attitude errors of this "
                               "sensor preset (ideal, good-gimbal, cheap-imu) so the model tolerates them")
    # --- model -----------------------------------------------------------------------------------
    preset: str = _opt("mean-paper", "model preset (mean-paper, mean-small, mean-nano)")
    img_size: int | None = _opt(None, "input side in pixels (default: the preset's)")
    num_classes: int | None = _opt(None, "classifier outputs (default: the number of training classes; SUES-200: 150 as the reference)")
    pretrained: str = _opt("", "ImageNet ConvNeXt weights (FAIR or timm layout, local file) for the backbone")
    init_checkpoint: str = _opt("", "start from the weights of this meanloc checkpoint (e.g. --objective ssl "
                                "pretraining); optimiser and schedule start fresh")
    fat_double_softmax: bool = _opt(True, "reference quirk: softmax FAT's output a second time (near-uniform weights)")
    # --- losses (None = the dataset's default weights) --------------------------------------------
    weight_infonce: float | None = _opt(None, "InfoNCE weight λ2 (University/SUES 1.0)")
    weight_ce: float | None = _opt(None, "3-head cross-entropy weight λ3 (University/SUES 0.1)")
    weight_cda: float | None = _opt(None, "CDA alignment weight λ1 (University 1.3, SUES 0.75)")
    weight_uniformity: float | None = _opt(None, "embedding uniformity weight (not MEAN; 0 for real data, anti-collapse from scratch)")
    label_smoothing: float = _opt(0.1, "InfoNCE label smoothing")
    max_logit_scale: float | None = _opt(None, "clamp exp(logit_scale) at this value (reference: no clamp)")
    cda_duplicate_mse: bool = _opt(True, "reference quirk: the CDA 'mse' term repeats the cosine term, L = 2(1-cos)")
    # --- optimisation ----------------------------------------------------------------------------
    epochs: int = _opt(2, "training epochs")
    batch_size: int = _opt(64, "global batch in pairs (split across DDP processes)")
    lr: float = _opt(1e-3, "AdamW peak learning rate")
    weight_decay: float = _opt(0.01, "AdamW weight decay")
    single_param_group: bool = _opt(True, "reference: decay every parameter incl. norms, biases and logit_scale")
    warmup_ratio: float = _opt(0.1, "linear warmup length as a fraction of all steps")
    grad_clip_value: float = _opt(100.0, "clip gradients by value after unscaling (0 = off)")
    amp: bool = _opt(True, "mixed precision + GradScaler (CUDA only; ignored on CPU)")
    grad_scaler_init: float = _opt(2.0**10, "GradScaler initial scale")
    sync_bn: bool = _opt(False, "convert BatchNorm to SyncBatchNorm under DDP (CUDA only)")
    max_minutes: float | None = _opt(None, "stop after this wall-clock budget (alone: the schedule spans the steps the "
                                     "step rate measured once at the start affords; with --max-steps only a stop)")
    max_steps: int | None = _opt(None, "optimiser steps; the schedule spans them (the same run on an idle or a busy machine)")
    # --- reproducibility, logging, selection -------------------------------------------------------
    seed: int = _opt(1, "seed for Python, NumPy, torch and the batch sampler")
    deterministic: bool = _opt(True, "torch.use_deterministic_algorithms on CPU")
    device: str = _opt("auto", "auto, cpu or cuda")
    threads: int | None = _opt(None, "torch intra-op threads (default: torch's choice)")
    out_dir: str = _opt("runs/train", "output folder: checkpoints, metrics.jsonl, config.yaml")
    resume: str = _opt("", "continue exactly from this checkpoint (model, optimiser, schedule, sampler, RNG); "
                       "alone: the interrupted run's last.pt in --out")
    checkpoint_every: int = _opt(0, "also save last.pt every N steps (0 = only at epoch ends)")
    selection: str = _opt("val", "best.pt by validation R@1 ('val') or the last epoch ('last'); never test")
    val_split: str = _opt("val", "split folder used for model selection")
    eval_batch_size: int = _opt(128, "batch size for validation embedding")
    val_every_min_steps: int = _opt(50, "validate (and save last.pt) at epoch ends, but at most once per this many "
                                    "steps (small datasets have epochs of a step or two); always at the end")
    log_every: int = _opt(10, "steps between metrics.jsonl lines")
    tensorboard: bool = _opt(False, "also log to TensorBoard (if installed)")
    progress: bool = _opt(True, "tqdm progress bar on rank 0")

    def validate(self) -> None:
        if self.dataset not in DATASETS:
            raise MeanlocError(f"unknown dataset '{self.dataset}'{_hint(self.dataset, DATASETS)}; choose from {', '.join(DATASETS)}")
        if not self.data_root:
            raise MeanlocError("no dataset root given (--data-root or data_root in the YAML)")
        if self.dataset == "sues200" and self.altitude not in SUES_ALTITUDES:
            raise MeanlocError(f"SUES-200 needs --altitude in {SUES_ALTITUDES}, got {self.altitude}")
        if self.objective not in ("supervised", "ssl"):
            raise MeanlocError(f"objective must be 'supervised' or 'ssl', got '{self.objective}'")
        if self.objective == "ssl" and self.dataset != "synthetic":
            raise MeanlocError("--objective ssl needs a dataset written by `meanloc data synth` (its orthophoto "
                               "and training area); University-1652 and SUES-200 have no orthophoto")
        if self.attitude_noise not in ("ideal", "good-gimbal", "cheap-imu"):
            raise MeanlocError(f"attitude_noise must be ideal, good-gimbal or cheap-imu, got '{self.attitude_noise}'")
        if self.init_checkpoint and (self.resume or self.pretrained):
            raise MeanlocError("--init-checkpoint starts from other weights: it cannot be combined with --resume "
                               "or --pretrained")
        if self.selection not in ("val", "last"):
            raise MeanlocError(f"selection must be 'val' or 'last' (test-set selection is not offered), got '{self.selection}'")
        if self.val_split == "test":
            raise MeanlocError("model selection on the test split is refused: use a validation split or --selection last")
        positive = {"epochs": self.epochs, "batch_size": self.batch_size, "lr": self.lr, "log_every": self.log_every}
        for name, value in positive.items():
            if value <= 0:
                raise MeanlocError(f"{name} must be > 0, got {value}")
        for name, value in (("max_steps", self.max_steps), ("max_minutes", self.max_minutes)):
            if value is not None and value <= 0:
                raise MeanlocError(f"{name} must be > 0 when given, got {value}")
        if not 0 <= self.warmup_ratio < 1:
            raise MeanlocError(f"warmup_ratio must be in [0, 1), got {self.warmup_ratio}")
        if self.device not in ("auto", "cpu", "cuda"):
            raise MeanlocError(f"device must be auto, cpu or cuda, got '{self.device}'")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# The reference recipes (mean-model.md §6.1) and the demo's.
RECIPES: dict[str, dict[str, Any]] = {
    # mean-paper runs at 384 px; the img_size default comes from whichever preset is chosen.
    "university": {"preset": "mean-paper", "epochs": 2, "batch_size": 64},
    "sues200": {"preset": "mean-paper", "epochs": 1, "batch_size": 24, "num_classes": 150},
    # For 2 CPU cores (bench/bench_train_throughput.py): the small net at the input size the dataset
    # recommends (64 px for the synthetic world's 200 m tiles, by ground resolution for a user's
    # orthophoto: SYNTHETIC_DEFAULT_PX when dataset.json has none), images decoded once
    # into RAM, clamped temperature, last epoch, pose-aware queries (a vehicle knows its attitude;
    # `--no-pose-aware-queries` gives MEAN as published), and a step budget (about 8 minutes on two
    # idle cores; a loaded machine takes longer but trains the same model). Loss weights: the
    # dataset defaults of losses.DATASET_LOSS_WEIGHTS (InfoNCE + the anti-collapse uniformity term).
    "synthetic": {
        "preset": "mean-small", "epochs": 100, "batch_size": 64, "lr": 2e-3, "cache_images": True,
        "max_steps": SYNTHETIC_STEPS, "max_logit_scale": 100.0, "selection": "last", "pose_aware_queries": True,
    },
}

FIELDS = {f.name: f for f in dataclasses.fields(TrainConfig)}


def _hint(key: str, choices) -> str:
    match = difflib.get_close_matches(key, sorted(choices), n=1)
    return f" (did you mean '{match[0]}'?)" if match else ""


def check_keys(values: dict[str, Any], what: str) -> None:
    for key in values:
        if key not in FIELDS:
            raise MeanlocError(f"{what}: unknown key '{key}'{_hint(key, FIELDS)}")


def read_yaml_config(path: str | Path) -> dict[str, Any]:
    import yaml

    path = Path(path)
    if not path.is_file():
        raise MeanlocError(f"config file not found: {path}")
    try:
        values = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise MeanlocError(f"{path} is not valid YAML ({str(exc).splitlines()[0]})") from None
    if not isinstance(values, dict):
        raise MeanlocError(f"{path} must hold a mapping of option: value")
    values = {str(key).replace("-", "_"): value for key, value in values.items()}
    check_keys(values, str(path))
    return values


def build_config(yaml_values: dict[str, Any] | None = None, cli_values: dict[str, Any] | None = None) -> TrainConfig:
    """defaults < recipe(dataset) < YAML < CLI; then type-checked and validated."""
    yaml_values, cli_values = dict(yaml_values or {}), dict(cli_values or {})
    check_keys(yaml_values, "config")
    check_keys(cli_values, "option")
    dataset = cli_values.get("dataset") or yaml_values.get("dataset") or TrainConfig.dataset
    if dataset not in RECIPES:
        raise MeanlocError(f"unknown dataset '{dataset}'{_hint(dataset, DATASETS)}; choose from {', '.join(DATASETS)}")
    merged = {**RECIPES[dataset], **yaml_values, **cli_values}
    config = TrainConfig(**{key: _coerce(key, value) for key, value in merged.items()})
    if config.resume == RESUME_IN_OUT:
        config.resume = str(Path(config.out_dir) / "last.pt")
    config.validate()
    return config


def _coerce(key: str, value: Any) -> Any:
    """Check a YAML/CLI value against the field's annotation (int/float/bool/str, optional None)."""
    kinds = _field_types(key)
    if value is None:
        if type(None) in kinds:
            return None
        raise MeanlocError(f"option '{key}' cannot be empty")
    if bool in kinds:
        if isinstance(value, bool):
            return value
        raise MeanlocError(f"option '{key}' must be true or false, got {value!r}")
    for kind in (int, float, str):
        if kind in kinds:
            if kind is float and isinstance(value, (int, float)) and not isinstance(value, bool):
                return float(value)
            if isinstance(value, kind) and not isinstance(value, bool):
                return value
    names = "/".join(k.__name__ for k in kinds if k is not type(None))
    raise MeanlocError(f"option '{key}' must be {names}, got {value!r}")


def _field_types(key: str) -> tuple[type, ...]:
    annotation = typing.get_type_hints(TrainConfig)[key]
    if isinstance(annotation, types.UnionType):
        return typing.get_args(annotation)
    return (annotation,)


# `--resume` alone: the last checkpoint of the run in --out.
RESUME_IN_OUT = "<out>/last.pt"
# Fields the command line spells with the shared vocabulary (meanloc/cli_args.py): field -> its option's dest.
SHARED_OPTIONS = {"data_root": "data", "out_dir": "out", "progress": "no_progress"}


def _add_shared_arguments(parser: argparse.ArgumentParser) -> set[str]:
    """--data/--dataset, --out, --batch-size, --threads and --no-progress as every command spells them
    (the old --data-root, --out-dir and --progress stay as hidden aliases); returns the fields they cover."""
    data = add_data(parser, required=False, dataset_default=None, help=FIELDS["data_root"].metadata["help"])
    add_hidden_alias(parser, "--data-root", data)
    add_out(parser, required=False, help=FIELDS["out_dir"].metadata["help"], old="--out-dir")
    add_batch_size(parser, None, help=FIELDS["batch_size"].metadata["help"])
    add_threads(parser, help=FIELDS["threads"].metadata["help"])
    add_progress(parser, help="hide the progress bar (rank 0 shows one by default)")
    parser.set_defaults(no_progress=None)  # not given: the YAML's or the recipe's
    parser.add_argument("--progress", dest="no_progress", action="store_const", const=False,
                        default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    # As `bank build --resume`: alone, it continues the interrupted run in --out.
    parser.add_argument("--resume", nargs="?", const=RESUME_IN_OUT, default=None, metavar="CHECKPOINT",
                        help=FIELDS["resume"].metadata["help"])
    return {"data_root", "dataset", "out_dir", "batch_size", "threads", "progress", "resume"}


def add_config_arguments(parser: argparse.ArgumentParser) -> None:
    """One `--option-name` per field, default None (= not given, so YAML/recipe values stay)."""
    shared = _add_shared_arguments(parser)
    for name, spec in FIELDS.items():
        if name in shared:
            continue
        kinds = _field_types(name)
        flag = "--" + name.replace("_", "-")
        help_text = spec.metadata["help"]
        if bool in kinds:
            parser.add_argument(flag, dest=name, action=argparse.BooleanOptionalAction, default=None, help=help_text)
        else:
            kind = next(k for k in kinds if k is not type(None))
            parser.add_argument(flag, dest=name, type=kind, default=None, help=help_text)


def cli_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """The fields given on the command line (None: not given)."""
    values = {name: getattr(args, SHARED_OPTIONS.get(name, name), None) for name in FIELDS}
    if values["progress"] is not None:
        values["progress"] = not values["progress"]  # the option is --no-progress
    return {name: value for name, value in values.items() if value is not None}


def input_px(config: TrainConfig) -> int:
    """The model's input side, derived once for data and model: --img-size, else what a synthetic
    dataset recommends, else the preset's."""
    if config.img_size:
        return config.img_size
    if config.dataset == "synthetic":
        from .data.query_images import dataset_input_px

        return dataset_input_px(config.data_root, SYNTHETIC_DEFAULT_PX)
    from .model import PRESETS

    return PRESETS[config.preset].img_size


# What a resumed run may set anew: where it reads and writes, when it stops, and what it shows. The
# rest is the interrupted run's (its checkpoint's train_config); a schedule fixed by the interrupted
# run stays, so --max-steps / --max-minutes only say where the resumed run stops.
RESUMABLE = frozenset({
    "resume", "max_steps", "max_minutes", "out_dir", "data_root", "num_workers", "threads", "device", "progress",
    "tensorboard", "log_every", "checkpoint_every", "cache_images", "skip_bad_images", "eval_batch_size",
    "val_every_min_steps",
})


def resumed_config(stated: dict[str, Any], manifest: dict[str, Any], source: str) -> TrainConfig | None:
    """The checkpoint's config with the options `stated` (YAML and command line) that may change on a
    resume; refuses any other stated option that contradicts the checkpoint. None: the checkpoint
    records no train_config (the trainer says why it cannot be resumed)."""
    recorded = {key: value for key, value in dict(manifest.get("train_config") or {}).items() if key in FIELDS}
    if not recorded:
        return None
    if not recorded.get("img_size"):  # older checkpoints: the model config holds the size actually trained
        recorded["img_size"] = dict(manifest.get("model_config") or {}).get("img_size")
    conflicts = [
        f"--{key.replace('_', '-')} {_coerce(key, value)!r} (the checkpoint: {recorded[key]!r})"
        for key, value in sorted(stated.items())
        if key not in RESUMABLE and key in recorded and _coerce(key, value) != recorded[key]
    ]
    if conflicts:
        raise MeanlocError(
            f"{source} was trained with other options: {'; '.join(conflicts)}. A resumed run continues its checkpoint's "
            "config (only where it reads and writes, when it stops and what it shows may change); start a new run, "
            "or use --init-checkpoint to start from its weights")
    merged = {**recorded, **{key: value for key, value in stated.items() if key in RESUMABLE}}
    config = TrainConfig(**{key: _coerce(key, value) for key, value in merged.items()})
    config.validate()
    return config
