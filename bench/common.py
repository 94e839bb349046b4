"""Shared pieces of the benchmark scripts (run as `python bench/<script>.py`, so `import common` works): what machine ran them, and a random-weight model.

Benchmarks report ratios measured in one run (absolute times on shared 2-core machines are
noisy), and every table names the CPU and date it was measured on.
"""

import datetime
import os
import platform
from pathlib import Path

SIMD_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "amx_int8")


def machine_description() -> str:
    """'AMD EPYC (avx2), 2 cores, 2026-11-25': the CPU model and the SIMD features that decide int8 speed."""
    from meanloc.runtime.trt_env import cpu_model

    flags_text = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    flags = [flag for flag in SIMD_FLAGS if f" {flag}" in flags_text]
    return (f"{cpu_model() or platform.processor() or platform.machine()} ({', '.join(flags) or 'no AVX2'}), "
            f"{os.cpu_count()} cores, {datetime.date.today()}")


def random_onnx(path: Path, preset: str = "mean-paper", seed: int = 0):
    """Export a random-weight model of `preset` through the real exporter; returns its ExportResult.

    Random weights time like trained ones and need no download, provided no parameter is a
    constant the exporter could fold away: the init's zero biases and unit LayerNorm scales would
    let onnxslim drop every bias Add (and share one initializer), so they are perturbed here.
    """
    import torch

    from meanloc.export.onnx_export import export_model_onnx
    from meanloc.runtime.identity import ModelIdentity
    from meanloc.runtime.preprocess import PreprocessSpec
    from meanloc.training.model import build_model, resolve_config

    config = resolve_config(preset)
    torch.manual_seed(seed)
    model = build_model(config).eval()
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if parameter.dim() == 1 and not name.endswith("gamma"):
                parameter.add_(torch.randn_like(parameter) * 0.02)
    identity = ModelIdentity("0" * 64, preset, config.embed_dim, PreprocessSpec(size=config.img_size))
    return export_model_onnx(model, identity, path, parity=False), model


def synthetic_calibration_set(folder: Path, spec, count: int = 16, batch_size: int = 4):
    """A CalibrationSet of `count` aerial-looking synthetic images (half "drone", half "satellite")
    written into `folder`, preprocessed by `spec`: ranges for the INT8 models without a dataset."""
    import cv2
    import numpy as np

    from meanloc.calibration.calibset import from_folder
    from meanloc.export.parity import synthetic_aerial_image

    rng = np.random.default_rng(0)
    for index in range(count):
        view = "drone" if index % 2 else "satellite"
        (folder / view).mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(folder / view / f"{index:03d}.png"), synthetic_aerial_image(rng, spec.size))
    return from_folder(folder, spec, count, batch_size)


def load_average() -> str:
    """'1.4 (1 min) / 0.9 (5 min) on 2 CPUs': printed beside timings taken on a shared machine."""
    one, five, _ = os.getloadavg()
    return f"{one:.1f} (1 min) / {five:.1f} (5 min) on {os.cpu_count()} CPUs"


def random_embedder(identity):
    """A backend that returns random unit vectors under a model's identity: a bank without
    thousands of network passes, for benches where retrieval quality does not matter (it is at
    chance), only the bank's size and dimension."""
    import numpy as np

    from meanloc.runtime.backends.base import EmbeddingBackend, l2_normalise

    class RandomEmbedder(EmbeddingBackend):
        name = "random"

        def __init__(self) -> None:
            self.identity = identity
            self.rng = np.random.RandomState(0)

        def _embed_chunk(self, batch):
            return l2_normalise(self.rng.randn(len(batch), self.identity.embed_dim).astype(np.float32))

    return RandomEmbedder()
