"""Weights in and out: our format, the official MEAN layout, ImageNet backbones, bad files."""

import pickle

import pytest
import torch

from meanloc.errors import MeanlocError
from meanloc.training.checkpoint import (
    infer_config_from_state_dict,
    load_checkpoint,
    load_imagenet_backbone,
    save_checkpoint,
    timm_to_fair_key,
)
from meanloc.training.model import build_model, resolve_config


def _nano(seed: int = 0):
    torch.manual_seed(seed)
    config = resolve_config("mean-nano")
    return build_model(config).eval(), config


def test_own_checkpoint_recreates_model_and_training_state(tmp_path):
    model, config = _nano()
    state = {"step": 7, "rng": torch.get_rng_state()}
    sha = save_checkpoint(tmp_path / "a.pt", model, config, train_state=state, extra={"note": "x"})
    loaded = load_checkpoint(tmp_path / "a.pt")
    assert loaded.sha256 == sha and loaded.source_format == "meanloc"
    assert loaded.config == config and loaded.train_state["step"] == 7
    images = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(loaded.model.eval().embed(images), model.embed(images))


def test_official_layout_state_dict_round_trips_with_same_embeddings(tmp_path):
    # Build a state dict exactly in the official layout (bare dict, DataParallel prefix), with
    # a class count of its own, and check that loading gives the reference network's embeddings.
    config = resolve_config("mean-nano", num_classes=11)
    torch.manual_seed(3)
    reference = build_model(config).eval()
    official = {"module." + k: v.clone() for k, v in reference.state_dict().items()}
    torch.save(official, tmp_path / "official.pth")
    loaded = load_checkpoint(tmp_path / "official.pth", preset="mean-nano")
    assert loaded.source_format == "official-mean"
    assert loaded.config.num_classes == 11 and loaded.config.dims == config.dims
    images = torch.randn(3, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(loaded.model.eval().embed(images), reference.embed(images))


def test_official_paper_layout_infers_paper_config():
    state = build_model(resolve_config("mean-paper")).state_dict()
    config = infer_config_from_state_dict(state)
    assert config == resolve_config("mean-paper")


def test_missing_and_unexpected_keys_are_listed(tmp_path):
    model, _ = _nano()
    state = model.state_dict()
    state.pop("model_1.DEG.FC1.bias")
    state["model_1.extra.weight"] = torch.zeros(1)
    torch.save(state, tmp_path / "bad.pth")
    with pytest.raises(MeanlocError, match=r"missing keys \(first: model_1.DEG.FC1.bias\).*unexpected keys"):
        load_checkpoint(tmp_path / "bad.pth", preset="mean-nano")


def test_checkpoint_for_another_architecture_names_mismatched_shapes(tmp_path):
    other, _ = _nano()
    state = other.state_dict()
    key = "model_1.convnext.stages.0.0.pwconv1.weight"
    state[key] = torch.zeros(5, 5)
    torch.save(state, tmp_path / "other.pth")
    with pytest.raises(MeanlocError, match=r"shape mismatches .*pwconv1\.weight: file \(5, 5\)"):
        load_checkpoint(tmp_path / "other.pth", preset="mean-nano")


class _Payload:
    pass


def test_pickled_objects_are_refused(tmp_path):
    with open(tmp_path / "evil.pt", "wb") as handle:
        torch.save({"obj": _Payload()}, handle)
    with pytest.raises(MeanlocError, match="pickled Python objects"):
        load_checkpoint(tmp_path / "evil.pt")
    (tmp_path / "raw.pkl").write_bytes(pickle.dumps({"a": _Payload()}))
    with pytest.raises(MeanlocError):
        load_checkpoint(tmp_path / "raw.pkl")


def test_missing_and_truncated_files(tmp_path):
    with pytest.raises(MeanlocError, match="not found"):
        load_checkpoint(tmp_path / "nope.pt")
    model, config = _nano()
    save_checkpoint(tmp_path / "full.pt", model, config)
    data = (tmp_path / "full.pt").read_bytes()
    (tmp_path / "cut.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(MeanlocError, match="truncated or not a PyTorch checkpoint"):
        load_checkpoint(tmp_path / "cut.pt")


def _fair_imagenet_state(model):
    return {k: v.clone() for k, v in model.model_1.convnext.state_dict().items()}


def test_imagenet_fair_layout_loads_into_backbone(tmp_path):
    source, _ = _nano(1)
    torch.save({"model": _fair_imagenet_state(source)}, tmp_path / "convnext_fair.pth")
    target, _ = _nano(2)
    assert load_imagenet_backbone(target, tmp_path / "convnext_fair.pth") == "fair"
    images = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(target.embed(images), source.embed(images))


def test_imagenet_timm_layout_loads_via_key_mapping(tmp_path):
    from safetensors.torch import save_file

    source, _ = _nano(1)
    fair = _fair_imagenet_state(source)
    fair_to_timm = {}
    for key in fair:  # build timm names independently of the loader's mapping table
        parts = key.split(".")
        if key.startswith("downsample_layers.0."):
            name = "stem." + ".".join(parts[2:])
        elif key.startswith("downsample_layers."):
            name = f"stages.{parts[1]}.downsample." + ".".join(parts[2:])
        elif key.startswith("stages."):
            leaf = {"dwconv": "conv_dw", "pwconv1": "mlp.fc1", "pwconv2": "mlp.fc2"}.get(parts[3], parts[3])
            name = f"stages.{parts[1]}.blocks.{parts[2]}.{leaf}" + ("." + ".".join(parts[4:]) if parts[4:] else "")
        elif key.startswith("norm."):
            name = "head.norm." + parts[1]
        else:
            name = "head.fc." + parts[1]
        fair_to_timm[key] = name
    assert all(timm_to_fair_key(t) == f for f, t in fair_to_timm.items())
    save_file({fair_to_timm[k]: v.contiguous() for k, v in fair.items()}, str(tmp_path / "timm.safetensors"))
    target, _ = _nano(2)
    assert load_imagenet_backbone(target, tmp_path / "timm.safetensors") == "timm"
    images = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(target.embed(images), source.embed(images))
