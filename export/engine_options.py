"""What `meanloc export engine` is asked to build, checked before TensorRT is touched.

Precisions:
- fp32 (TF32 off: the accuracy reference);
- fp16: FP16 flag. LayerNorms that were decomposed for TensorRT 8.5 (opset-16 ONNX) and the final
  L2 normalisation are pinned to FP32 with PREFER_PRECISION_CONSTRAINTS (deployment.md §6);
- int8-implicit: INT8 + FP16 with a calibration cache fed through a cache-only calibrator (no
  images on the device);
- int8-explicit: a Q/DQ ONNX (`meanloc calibrate`); INT8 + FP16 flags (weakly typed networks).

The optimization profile defaults to min = opt = 1 and max 8: TensorRT chooses kernels for the
opt shape ("kOPT: the value that is used in the optimization (kernel selection)", NvInferRuntime.h,
OptProfileSelector), and the onboard loop runs batch 1. Python 3.8 compatible (engines are built
on the Jetson).
"""

from __future__ import annotations

from dataclasses import dataclass

from meanloc.errors import MeanlocError

PRECISIONS = ("fp32", "fp16", "int8-implicit", "int8-explicit")
DEFAULT_OPT_BATCH = 1
DEFAULT_MAX_BATCH = 8
# `timing_cache="auto"`: one persistent cache per TensorRT version and GPU (engine_cache.default_timing_cache_path).
AUTO_TIMING_CACHE = "auto"


@dataclass(frozen=True)
class EngineOptions:
    precision: str = "fp16"
    min_batch: int = 1
    opt_batch: int = DEFAULT_OPT_BATCH
    max_batch: int = DEFAULT_MAX_BATCH
    workspace_mb: int = 1024
    calibration_cache: str | None = None
    timing_cache: str | None = None
    opt_level: int | None = None
    dla_core: int | None = None

    @property
    def profile(self) -> dict[str, int]:
        return {"min": self.min_batch, "opt": self.opt_batch, "max": self.max_batch}

    @property
    def int8(self) -> bool:
        return self.precision.startswith("int8")

    def validate(self) -> None:
        """Checks that need no TensorRT (so they fail fast, also on a dev box)."""
        if self.precision not in PRECISIONS:
            raise MeanlocError(f"unknown precision '{self.precision}'; choose from {', '.join(PRECISIONS)}")
        if not 1 <= self.min_batch <= self.opt_batch <= self.max_batch:
            raise MeanlocError(
                f"batch profile must satisfy 1 <= min <= opt <= max, got {self.min_batch}/{self.opt_batch}/{self.max_batch}"
            )
        if self.workspace_mb < 1:
            raise MeanlocError(f"workspace must be at least 1 MiB, got {self.workspace_mb}")
        if self.opt_level is not None and not 0 <= self.opt_level <= 5:
            raise MeanlocError(f"builder optimization level must be 0..5, got {self.opt_level}")
        if (self.precision == "int8-implicit") != (self.calibration_cache is not None):
            raise MeanlocError(
                "int8-implicit needs a calibration cache (--calib-cache, from `meanloc calibrate`)"
                if self.precision == "int8-implicit"
                else f"a calibration cache is only used with int8-implicit, not {self.precision}"
            )
        if self.dla_core is not None:
            if self.dla_core < 0:
                raise MeanlocError(f"DLA core must be >= 0, got {self.dla_core}")
            if self.precision not in ("fp16", "int8-implicit"):
                raise MeanlocError(
                    "DLA runs FP16, or INT8 with calibration-cache scales only: use --precision fp16 or int8-implicit"
                )
            if not self.min_batch == self.opt_batch == self.max_batch:
                raise MeanlocError("DLA engines need a fixed batch: set --min-batch = --opt-batch = --max-batch")


def resolve_opt_batch(min_batch: int, opt_batch: int | None) -> int:
    """The opt batch to use: as given, else 1 raised to the profile's minimum (fixed-batch DLA engines)."""
    return max(min_batch, DEFAULT_OPT_BATCH) if opt_batch is None else opt_batch
