"""`meanloc calibrate` end to end: one range pass, then every INT8 artifact from it.

Writes into the output folder:
- `calibration.cache`: TensorRT's calibration cache text for the chosen TensorRT version;
- `model.int8-qdq-trt.onnx`: the Q/DQ model for TensorRT explicit quantization;
- `model.int8-cpu.onnx`: the ONNX Runtime CPU flavour;
- `calibration.cache.json`: the manifest, written last, so a folder with a manifest is complete.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from meanloc.errors import ArtifactMismatchError, MeanlocError
from meanloc.runtime.artifacts import ensure_writable_dir, sha256_file
from meanloc.runtime.calibration_cache import (
    build_cache,
    check_cache_names,
    int8_activation_names,
    manifest_path,
    parse_trt_version,
    read_cache_manifest,
    read_calibration_cache,
    value_names,
    write_cache_manifest,
    write_calibration_cache,
)
from meanloc.runtime.onnx_file import load_embedding_onnx

from .calibset import CalibrationSet
from .fallback import EVAL_IMAGES
from .qdq import (
    CPU_PRECISION,
    DEFAULT_CPU_RECIPE,
    TRT_PRECISION,
    check_cpu_recipe,
    quantize_for_cpu,
    quantize_for_tensorrt,
    read_quantization_settings,
)
from .ranges import check_method, collect_ranges

CACHE_NAME = "calibration.cache"
QDQ_TRT_NAME = f"model.{TRT_PRECISION}.onnx"
CPU_NAME = f"model.{CPU_PRECISION}.onnx"


@dataclass(frozen=True)
class CalibrationOutputs:
    folder: Path
    manifest: dict[str, Any]

    @property
    def cache(self) -> Path:
        return self.folder / CACHE_NAME

    @property
    def qdq_trt(self) -> Path:
        return self.folder / QDQ_TRT_NAME

    @property
    def cpu(self) -> Path:
        return self.folder / CPU_NAME


def calibrate(
    onnx_path: str | Path,
    calib_set: CalibrationSet,
    out_dir: str | Path,
    method: str = "entropy",
    trt_version: str = "10.3",
    progress: bool = True,
    cpu_recipe: str = DEFAULT_CPU_RECIPE,
) -> CalibrationOutputs:
    """Collect ranges of the FP32 ONNX on `calib_set` and write all INT8 artifacts into `out_dir`."""
    check_method(method)
    check_cpu_recipe(cpu_recipe)
    parse_trt_version(trt_version)  # bad input fails before minutes of calibration
    folder = ensure_writable_dir(out_dir)
    fp32 = load_embedding_onnx(onnx_path, "FP32 ONNX model")
    calib_set.spec.check_same(fp32.identity.preprocess, "calibration set vs ONNX model")

    ranges = collect_ranges(fp32.path, calib_set, method, progress=progress)
    cache = build_cache(ranges.amax(), trt_version)
    # The manifest marks a complete folder: drop an earlier run's before replacing its artifacts one by
    # one, so that a failure from here on leaves a folder that is refused, never a silent mix of two runs.
    manifest_path(folder / CACHE_NAME).unlink(missing_ok=True)
    write_calibration_cache(folder / CACHE_NAME, cache)
    # Read it back: what TensorRT will parse must carry the scales of the ONNX's activations.
    check_cache_names(
        read_calibration_cache(folder / CACHE_NAME),
        value_names(fp32.model),
        int8_activation_names(fp32.model),
        str(folder / CACHE_NAME),
    )
    quantize_for_tensorrt(
        fp32.path, folder / QDQ_TRT_NAME, ranges, fp32.identity, eval_batches=_eval_batches(calib_set)
    )
    quantize_for_cpu(fp32.path, folder / CPU_NAME, fp32.identity, ranges, recipe=cpu_recipe)

    manifest = write_cache_manifest(
        folder / CACHE_NAME,
        cache,
        onnx_path=str(fp32.path),
        onnx_sha256=fp32.sha256,
        identity=fp32.identity.to_dict(),
        method=method,
        trt_version=trt_version,
        calibration_set=calib_set.describe(),
        artifacts={
            TRT_PRECISION: _artifact_entry(folder / QDQ_TRT_NAME),
            CPU_PRECISION: _artifact_entry(folder / CPU_NAME),
        },
    )
    return CalibrationOutputs(folder, manifest)


def _eval_batches(calib_set: CalibrationSet, images: int = EVAL_IMAGES) -> list[np.ndarray]:
    """The first calibration batches, about `images` images: what the FP32 fallback is judged on."""
    batches: list[np.ndarray] = []
    for batch in calib_set.batches():
        batches.append(batch)
        if sum(len(b) for b in batches) >= images:
            break
    return batches


def _artifact_entry(path: Path) -> dict[str, Any]:
    # The quantization settings (recipe, FP32 fallback layers, ...) as the model's metadata has them.
    return {"file": path.name, "sha256": sha256_file(path), "quantization": read_quantization_settings(path)}


def open_calibration_dir(folder: str | Path, onnx_sha256: str | None = None) -> CalibrationOutputs:
    """A folder written by `calibrate`, checked against its manifest (and the FP32 ONNX, if given)."""
    folder = Path(folder)
    if not (folder / CACHE_NAME).is_file():
        raise MeanlocError(f"{folder} is not a calibration folder (no {CACHE_NAME}; run `meanloc calibrate`)")
    read_calibration_cache(folder / CACHE_NAME)  # a damaged cache is bad input (2), as in `export engine`
    manifest = read_cache_manifest(folder / CACHE_NAME, onnx_sha256)
    for precision, entry in manifest.get("artifacts", {}).items():
        path = folder / entry["file"]
        if not path.is_file() or sha256_file(path) != entry["sha256"]:
            raise ArtifactMismatchError(
                f"{path} ({precision}) is missing or changed since calibration; rerun `meanloc calibrate`"
            )
    return CalibrationOutputs(folder, manifest)
