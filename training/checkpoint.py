"""Checkpoints in and out: meanloc's own format, official MEAN checkpoints, ImageNet backbones.

Our format is a `torch.save`d dict that holds only tensors and plain Python values, so it loads
with `torch.load(weights_only=True)` and nothing is ever unpickled:

    {"format": "meanloc-checkpoint", "manifest": {... "model_config": {...}},
     "state_dict": {<official MEAN key layout>}, "train_state": {...} | None}

The state dict uses the official MEAN layout (`model_1.*` plus `logit_scale`, `logit_scale_blocks`,
`w_blocks1..3`), so a checkpoint alone re-creates its model, and official checkpoints (a bare
state dict in that layout, optionally behind a `module.` prefix) load through the same strict
key/shape check. Official files carry no config: it is inferred from the tensor shapes.
"""

import pickle
import re
import warnings
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from meanloc.errors import ArtifactMismatchError, MeanlocError, first_sentence
from meanloc.runtime.artifacts import atomic_path, new_manifest, sha256_file
from meanloc.runtime.identity import ModelIdentity
from meanloc.runtime.preprocess import PreprocessSpec

from .model import MEAN, PRESETS, MeanConfig, build_model

CHECKPOINT_FORMAT = "meanloc-checkpoint"
_BACKBONE_PREFIX = "model_1.convnext."


@dataclass
class LoadedCheckpoint:
    model: MEAN
    config: MeanConfig
    sha256: str
    source_format: str  # "meanloc" or "official-mean"
    train_state: dict[str, Any] | None
    manifest: dict[str, Any]


def save_checkpoint(
    path: str | Path,
    model: MEAN,
    config: MeanConfig,
    train_state: dict[str, Any] | None = None,
    extra: dict[str, Any] | None = None,
) -> str:
    """Write atomically (temp file, fsync, rename); returns the file's sha256.

    `train_state` and `extra` must hold only tensors and plain values (dict/list/str/int/float/bool),
    so the file stays loadable with weights_only=True.
    """
    payload = {
        "format": CHECKPOINT_FORMAT,
        "manifest": new_manifest("checkpoint", model_config=config.to_dict(), **(extra or {})),
        "state_dict": {key: value.detach().cpu() for key, value in model.state_dict().items()},
        "train_state": train_state,
    }
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)
    return sha256_file(path)


def read_weights_file(path: str | Path) -> Any:
    """Load a .pt/.pth/.ckpt (weights_only) or .safetensors file; one-line errors for bad files."""
    path = Path(path)
    if not path.is_file():
        raise MeanlocError(f"checkpoint not found: {path}")
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except (SafetensorError, OSError) as exc:
            raise MeanlocError(f"{path} is not a readable safetensors file ({first_sentence(exc)})") from None
    try:
        with warnings.catch_warnings():  # torch's own warnings would come before our one-line error
            warnings.simplefilter("ignore")
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        found = re.search(r"GLOBAL ([\w.]+)", str(exc))
        what = f" ({found.group(1)})" if found else ""
        raise MeanlocError(
            f"refusing to load {path}: it contains pickled Python objects{what}, not plain tensors, and meanloc "
            "never unpickles a file; re-save only the state dict (torch.save(model.state_dict(), ...))"
        ) from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, ValueError, OSError) as exc:
        raise MeanlocError(
            f"{path} is truncated or not a PyTorch checkpoint (torch.load says: {first_sentence(exc)})"
        ) from None


def read_checkpoint_manifest(path: str | Path) -> dict[str, Any]:
    """The manifest of a meanloc checkpoint (model_config, train_config, ...); {} for other weight files."""
    payload = read_weights_file(path)
    if isinstance(payload, Mapping) and payload.get("format") == CHECKPOINT_FORMAT:
        return dict(payload.get("manifest") or {})
    return {}


def load_checkpoint(path: str | Path, preset: str | None = None, img_size: int | None = None) -> LoadedCheckpoint:
    """Re-create the model a checkpoint describes (ours or official MEAN), strictly.

    `preset`/`img_size` only matter for official checkpoints, which do not record the input size
    (default: the paper's 384 px).
    """
    payload = read_weights_file(path)
    sha256 = sha256_file(path)
    if isinstance(payload, Mapping) and payload.get("format") == CHECKPOINT_FORMAT:
        manifest = dict(payload.get("manifest") or {})
        config = MeanConfig.from_dict(dict(manifest.get("model_config") or {}))
        state_dict, source_format, train_state = payload["state_dict"], "meanloc", payload.get("train_state")
    elif isinstance(payload, Mapping):
        state_dict = _strip_module_prefix(payload)
        config = infer_config_from_state_dict(state_dict, preset=preset, img_size=img_size, source=str(path))
        manifest = new_manifest("checkpoint", model_config=config.to_dict(), source="official MEAN layout")
        source_format, train_state = "official-mean", None
    else:
        raise ArtifactMismatchError(f"{path} does not hold a state dict (found {type(payload).__name__})")
    model = build_model(config)
    load_state_dict_strict(model, state_dict, what=f"{path} ({config.preset})")
    return LoadedCheckpoint(model, config, sha256, source_format, train_state, manifest)


def checkpoint_identity(loaded: LoadedCheckpoint) -> ModelIdentity:
    """The identity every artifact derived from this checkpoint carries (ONNX, engine, bank)."""
    return model_identity(loaded.config, loaded.sha256)


def model_identity(config: MeanConfig, checkpoint_sha256: str) -> ModelIdentity:
    """A model's identity from its config: the one place the input size becomes a `PreprocessSpec`."""
    return ModelIdentity(
        checkpoint_sha256=checkpoint_sha256,
        preset=config.preset,
        embed_dim=config.embed_dim,
        preprocess=PreprocessSpec(size=config.img_size),
        precision="fp32",
        query_view=config.query_view,
    )


def _strip_module_prefix(state_dict: Mapping[str, Any]) -> dict[str, Any]:
    # The reference saves model.module.state_dict(), but DataParallel/DDP files may carry `module.`.
    return {(key[len("module.") :] if key.startswith("module.") else key): value for key, value in state_dict.items()}


def load_state_dict_strict(module: torch.nn.Module, state_dict: Mapping[str, Any], what: str) -> None:
    """Strict load with an error that names the first missing/unexpected keys and shape mismatches."""
    expected = module.state_dict()
    missing = [key for key in expected if key not in state_dict]
    unexpected = [key for key in state_dict if key not in expected]
    mismatched = [
        f"{key}: file {tuple(state_dict[key].shape)} vs model {tuple(expected[key].shape)}"
        for key in expected
        if key in state_dict and tuple(getattr(state_dict[key], "shape", ())) != tuple(expected[key].shape)
    ]
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing keys (first: {', '.join(missing[:4])})")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected keys (first: {', '.join(unexpected[:4])})")
    if mismatched:
        problems.append(f"{len(mismatched)} shape mismatches (first: {'; '.join(mismatched[:3])})")
    if problems:
        raise ArtifactMismatchError(f"checkpoint does not fit the model {what}: " + "; ".join(problems))
    module.load_state_dict(dict(state_dict), strict=True)


def infer_config_from_state_dict(
    state_dict: Mapping[str, Any], preset: str | None = None, img_size: int | None = None, source: str = "checkpoint"
) -> MeanConfig:
    """Read the architecture numbers off an official-layout state dict's tensor shapes."""
    key = _BACKBONE_PREFIX + "downsample_layers.0.0.weight"
    if key not in state_dict:
        sample = ", ".join(list(state_dict)[:3])
        raise ArtifactMismatchError(f"{source} is not a MEAN checkpoint: no '{key}' (first keys: {sample})")

    def shape(name: str) -> tuple[int, ...]:
        if name not in state_dict:
            raise ArtifactMismatchError(f"{source} is not a complete MEAN checkpoint: missing '{name}'")
        return tuple(state_dict[name].shape)

    stage_blocks: dict[int, set[int]] = {}
    for name in state_dict:
        match = re.match(re.escape(_BACKBONE_PREFIX) + r"stages\.(\d+)\.(\d+)\.", name)
        if match:
            stage_blocks.setdefault(int(match.group(1)), set()).add(int(match.group(2)))
    depths = tuple(len(stage_blocks[i]) for i in sorted(stage_blocks))
    dims = tuple(shape(f"{_BACKBONE_PREFIX}stages.{i}.0.gamma")[0] for i in sorted(stage_blocks))
    block = sum(f"model_1.classifier_mcb{i}.classifier.weight" in state_dict for i in (1, 2))
    base = PRESETS[preset] if preset else PRESETS["mean-paper"]
    values = {
        "preset": preset or ("mean-paper" if (depths, dims) == (base.depths, base.dims) else "custom"),
        "depths": depths,
        "dims": dims,
        "img_size": img_size or base.img_size,
        "num_classes": shape("model_1.classifier1.classifier.weight")[0],
        "block": block,
        "imagenet_head_classes": shape(_BACKBONE_PREFIX + "head.weight")[0],
        "deg_reduction": dims[-1] // shape("model_1.DEG.FC11.weight")[0],
        "proj_hidden": shape("model_1.proj.layers.0.0.weight")[0],
        "proj_dim": shape("model_1.proj.layers.1.0.weight")[0],
        "fused_dim": shape("model_1.MSF.conv1.weight")[0],
        "bottleneck": shape("model_1.classifier1.classifier.weight")[1],
    }
    return MeanConfig.from_dict({**base.to_dict(), **values})


# --- ImageNet ConvNeXt backbones (FAIR or timm layout), from a local file only -------------------

_TIMM_TO_FAIR = [
    (r"^stem\.([01])\.", r"downsample_layers.0.\1."),
    (r"^stages\.(\d+)\.downsample\.([01])\.", r"downsample_layers.\1.\2."),
    (r"^stages\.(\d+)\.blocks\.(\d+)\.conv_dw\.", r"stages.\1.\2.dwconv."),
    (r"^stages\.(\d+)\.blocks\.(\d+)\.mlp\.fc1\.", r"stages.\1.\2.pwconv1."),
    (r"^stages\.(\d+)\.blocks\.(\d+)\.mlp\.fc2\.", r"stages.\1.\2.pwconv2."),
    (r"^stages\.(\d+)\.blocks\.(\d+)\.", r"stages.\1.\2."),
    (r"^head\.norm\.", "norm."),
    (r"^head\.fc\.", "head."),
]


def timm_to_fair_key(key: str) -> str:
    """Map one timm ConvNeXt key to FAIR naming (mean-model.md §4 mapping table)."""
    for pattern, replacement in _TIMM_TO_FAIR:
        new_key, count = re.subn(pattern, replacement, key)
        if count:
            return new_key
    return key


def load_imagenet_backbone(model: MEAN, path: str | Path) -> str:
    """Load ImageNet ConvNeXt weights (FAIR `{"model": ...}` or timm layout) into the backbone, strictly.

    Returns the detected layout. A head with another class count (e.g. 22k) is skipped, since
    MEAN never uses it; every other key must match.
    """
    payload = read_weights_file(path)
    if isinstance(payload, Mapping) and isinstance(payload.get("model"), Mapping):
        payload = payload["model"]
    if not isinstance(payload, Mapping):
        raise ArtifactMismatchError(f"{path} does not hold a ConvNeXt state dict")
    state_dict = _strip_module_prefix(payload)
    if any(key.startswith("stem.") for key in state_dict):
        layout, state_dict = "timm", {timm_to_fair_key(key): value for key, value in state_dict.items()}
    elif any(key.startswith("downsample_layers.") for key in state_dict):
        layout = "fair"
    else:
        raise ArtifactMismatchError(f"{path} is neither a FAIR nor a timm ConvNeXt checkpoint (first key: {next(iter(state_dict), None)})")
    backbone = model.model_1.convnext
    head_shape = tuple(backbone.head.weight.shape)
    if "head.weight" in state_dict and tuple(state_dict["head.weight"].shape) != head_shape:
        state_dict = {k: v for k, v in state_dict.items() if not k.startswith("head.")}
        state_dict.update({f"head.{k}": v for k, v in backbone.head.state_dict().items()})
    load_state_dict_strict(backbone, state_dict, what=f"ConvNeXt backbone from {path} ({layout} layout)")
    return layout
