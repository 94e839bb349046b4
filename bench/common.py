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

    Random weights time exactly like trained ones, and need no download.
    """
    import torch

    from meanloc.export.onnx_export import export_model_onnx
    from meanloc.runtime.identity import ModelIdentity
    from meanloc.runtime.preprocess import PreprocessSpec
    from meanloc.training.model import build_model, resolve_config

    config = resolve_config(preset)
    torch.manual_seed(seed)
    model = build_model(config).eval()
    identity = ModelIdentity("0" * 64, preset, config.embed_dim, PreprocessSpec(size=config.img_size))
    return export_model_onnx(model, identity, path, parity=False), model
