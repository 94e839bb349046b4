"""MEAN: model definition, presets and size accounting."""

from .mean import MEAN, MEANBranches, MEANEmbedder, ViewOutputs, build_model
from .presets import PRESETS, MeanConfig, resolve_config

__all__ = ["MEAN", "PRESETS", "MEANBranches", "MEANEmbedder", "MeanConfig", "ViewOutputs", "build_model", "resolve_config"]
