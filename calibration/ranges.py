"""Per-tensor activation ranges, collected on CPU with ONNX Runtime's calibrators.

One pass over the calibration set gives the ranges that every INT8 artifact is made from: the
TensorRT cache (as amax), and the Q/DQ models (ORT reloads them from `ort_ranges.json` instead
of calibrating again). ORT's own calibration table stores the range *max*, not max(|min|, |max|)
(deployment.md §5.2), so amax is computed here from the (min, max) pair.

Batches are fed one per `collect_data` call: ORT keeps every intermediate output of a call in
memory, which for ConvNeXt-T at 384 px is ~100 MB per image.
"""

from __future__ import annotations

import contextlib
import io
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from meanloc.errors import MeanlocError
from meanloc.runtime.onnx_contract import INPUT_NAME

from .calibset import CalibrationSet

METHODS = ("entropy", "percentile", "minmax")
# Entropy: TensorRT's calibrator searches 128 quantized bins; ORT's default of 128 histogram bins
# would leave nothing to search, and ORT's search costs ~bins^2 per tensor (512 bins: 8x slower
# than 256), so 256 bins it is. Percentile keeps 99.99 % of the values; its histogram spans
# [-max|x|, max|x|] (ORT's |x| histogram fails on tensors with a tiny spread, e.g. the L2 norm).
_CALIBRATOR_OPTIONS: dict[str, dict[str, Any]] = {
    "entropy": {"num_bins": 256, "num_quantized_bins": 128},
    "percentile": {"num_bins": 2048, "percentile": 99.99, "symmetric": False},
    "minmax": {},
}


def ort_method(method: str) -> Any:
    from onnxruntime.quantization import CalibrationMethod

    check_method(method)
    return {
        "entropy": CalibrationMethod.Entropy,
        "percentile": CalibrationMethod.Percentile,
        "minmax": CalibrationMethod.MinMax,
    }[method]


def check_method(method: str) -> str:
    if method not in METHODS:
        raise MeanlocError(f"unknown calibration method '{method}' (valid: {', '.join(METHODS)})")
    return method


@dataclass
class TensorRanges:
    """What one calibration pass produced: ORT's TensorsData plus the amax view of it."""

    method: str
    tensors_data: Any  # onnxruntime.quantization.TensorsData, reused by quantize_static
    num_images: int

    def min_max(self) -> dict[str, tuple[float, float]]:
        # Calibrators differ in how they shape the values (scalars, 0-d or (1,) arrays).
        return {
            name: (float(np.min(data.range_value[0])), float(np.max(data.range_value[1])))
            for name, data in self.tensors_data.data.items()
        }

    def amax(self) -> dict[str, float]:
        """max(|min|, |max|) per tensor: the symmetric range TensorRT's scale = amax / 127 needs."""
        return {name: max(abs(low), abs(high)) for name, (low, high) in self.min_max().items()}

    def save_for_ort(self, path: str | Path) -> Path:
        """ORT's JSON range cache, which `quantize_static(calibration_cache_path=...)` reads back."""
        from onnxruntime.quantization import save_tensors_data

        save_tensors_data(self.tensors_data, path)
        return Path(path)


class _OneBatchReader:
    """A CalibrationDataReader that yields a single batch (see the module note on memory)."""

    def __init__(self, input_name: str, batch: np.ndarray) -> None:
        self._pending: dict[str, np.ndarray] | None = {input_name: batch}

    def get_next(self) -> dict[str, np.ndarray] | None:
        pending, self._pending = self._pending, None
        return pending


def _quiet() -> contextlib.AbstractContextManager:
    # ORT's histogram calibrators print a line per call, which would break the progress bar.
    return contextlib.redirect_stdout(io.StringIO())


def _with_progress(batches: Iterator[np.ndarray], total: int, enabled: bool) -> Iterator[np.ndarray]:
    if not enabled:
        return batches
    from tqdm import tqdm

    return iter(tqdm(batches, total=total, desc="calibrating", unit="batch"))


def collect_ranges(
    onnx_path: str | Path,
    calib_set: CalibrationSet,
    method: str = "entropy",
    input_name: str = INPUT_NAME,
    progress: bool = True,
) -> TensorRanges:
    """Run the FP32 ONNX over the calibration set and return the ranges of all float tensors."""
    from onnxruntime.quantization import TensorsData, create_calibrator

    check_method(method)
    with tempfile.TemporaryDirectory(prefix="meanloc-calib-") as work:
        calibrator = create_calibrator(
            str(onnx_path),
            op_types_to_calibrate=[],  # every node: the TensorRT cache needs a scale for all activations
            augmented_model_path=str(Path(work) / "augmented.onnx"),
            calibrate_method=ort_method(method),
            providers=["CPUExecutionProvider"],
            extra_options=_CALIBRATOR_OPTIONS[method],
        )
        for batch in _with_progress(calib_set.batches(), calib_set.num_batches, progress):
            with _quiet():
                calibrator.collect_data(_OneBatchReader(input_name, batch))
        with _quiet():
            data = calibrator.compute_data()
    if not isinstance(data, TensorsData) or not data.data:
        raise MeanlocError(f"ONNX Runtime returned no tensor ranges for {onnx_path}")
    return TensorRanges(method=method, tensors_data=data, num_images=calib_set.num_images)
