"""Datasets for MEAN training and evaluation.

- `splits`: `load_train_pairs`, `load_eval_split`, `TrainSplit`, `EvalSplit`, `Pair`
  (readers: `university` for University-1652 and the synthetic layout, `sues200`);
- `sampler`: `ClassUniqueBatchSampler` (the reference's class-unique batches, DDP-aware);
- `pairs`: `PairDataset` (torch); `augment`: `PairAugment` (albumentations);
- `synth`: the synthetic cross-view world generator.

Names are resolved lazily so that importing one submodule (e.g. `synth`) does not import torch
or albumentations.
"""

import importlib
from typing import Any

_EXPORTS = {
    "load_train_pairs": "splits",
    "load_eval_split": "splits",
    "TrainSplit": "splits",
    "EvalSplit": "splits",
    "Pair": "splits",
    "ClassUniqueBatchSampler": "sampler",
    "PairDataset": "pairs",
    "PairAugment": "augment",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
