"""TensorRT INT8 calibrators (implicit quantization, TensorRT 8.5-10.x; removed in 11).

- `entropy_calibrator`: an `IInt8EntropyCalibrator2` that calibrates on the device (route E of
  deployment.md §5.1) from the same preprocessed batches as the CPU path, copied into a device
  buffer; it reads an existing cache for this TensorRT (which then skips calibration) and writes
  the one TensorRT produces, atomically, in the same file format.
- `cache_only_calibrator`: feeds no data and hands TensorRT the cache made on the CPU (route C),
  so a Jetson builds an implicit-INT8 engine without calibration images. The engine builder
  checks the cache (TensorRT version, tensor names) before it gets here.

TensorRT calls these methods from C++ through `noexcept` trampolines that catch any exception,
print "[ERROR] Exception caught in get_batch(): ..." and carry on as if there were no more
batches, no cache, or a written cache (python/src/infer/pyInt8.cpp, release/8.5, 8.6 and v10.3.0;
seen in ultralytics#10165, where a Ctrl-C in get_batch() ended calibration early and the build went
on). So every callback records the first exception it raises, and whoever ran the build calls
`raise_callback_error(calibrator)` afterwards: an error in a callback fails the build instead of
quietly calibrating on fewer batches.

`tensorrt` and the CUDA bindings are imported only when a calibrator is made, through the device
layer (runtime/trt_api.py, runtime/cuda_device.py), so this module imports anywhere.
"""

import functools
from pathlib import Path
from typing import Any, Callable, Iterable, List, Optional, Tuple, Union

import numpy as np

from meanloc.errors import MeanlocError

from .artifacts import atomic_write_bytes
from .calibration_cache import ENTROPY_ALGORITHM, MINMAX_ALGORITHM, parse_calibration_cache, trt_version_code
from .cuda_device import CudaMemory, open_cuda_memory
from .trt_api import import_tensorrt

# The calibrator class whose cache header carries each algorithm name (NvInfer.h, CalibrationAlgoType).
CALIBRATOR_BASES = {
    ENTROPY_ALGORITHM: "IInt8EntropyCalibrator2",
    MINMAX_ALGORITHM: "IInt8MinMaxCalibrator",
    "EntropyCalibration": "IInt8EntropyCalibrator",
}


def _records_errors(method: Callable[..., Any]) -> Callable[..., Any]:
    """Remember the first exception a TensorRT callback raises (TensorRT itself swallows it)."""

    @functools.wraps(method)
    def callback(self: Any, *args: Any) -> Any:
        try:
            return method(self, *args)
        except BaseException as exc:  # KeyboardInterrupt too: it must stop the build afterwards
            if self.callback_error is None:
                self.callback_error = exc
            raise

    return callback


def raise_callback_error(calibrator: Any) -> None:
    """Re-raise the first exception a calibrator callback raised during the build, if any."""
    error = getattr(calibrator, "callback_error", None)
    if error is not None:
        raise error


def _base_class(trt: Any, algorithm: str = ENTROPY_ALGORITHM) -> type:
    name = CALIBRATOR_BASES.get(algorithm)
    base = getattr(trt, name, None) if name else None
    if base is None:
        if not hasattr(trt, "IInt8EntropyCalibrator2"):
            raise MeanlocError(
                f"TensorRT {trt.__version__} has no implicit INT8 calibrators (removed in 11); "
                "use the Q/DQ model (model.int8-qdq-trt.onnx) instead"
            )
        raise MeanlocError(f"calibration caches of algorithm '{algorithm}' are not supported (use EntropyCalibration2)")
    return base


def entropy_calibrator(
    trt: Optional[Any],
    batches: Iterable[np.ndarray],
    batch_size: int,
    sample_shape: Tuple[int, ...],
    cache_path: Union[str, Path],
    memory: Optional[CudaMemory] = None,
) -> Any:
    """Device calibrator over preprocessed (batch_size, *sample_shape) float32 batches.

    `trt`: the tensorrt module (None: import it). Pass `CalibrationSet.batches()`; call
    `raise_callback_error(calibrator)` after the build, then `.release()` to free the buffers.
    """
    trt = trt or import_tensorrt()
    base = _base_class(trt)

    class EntropyCalibrator(base):  # type: ignore[misc, valid-type]
        def __init__(self) -> None:
            base.__init__(self)  # pybind11 trampolines must be initialised explicitly
            self.callback_error = None  # type: Optional[BaseException]
            self.cache_path = Path(cache_path)
            self.batches_fed = 0
            self._batches = iter(batches)  # type: Iterator[np.ndarray]
            self._batch_size = batch_size
            self._shape = (batch_size, *sample_shape)
            self._memory = memory if memory is not None else open_cuda_memory()
            self._stream = self._memory.create_stream()
            self._host = self._memory.alloc_pinned(self._shape, np.float32)
            self._device = self._memory.alloc_device(self._host.nbytes)  # type: Optional[int]

        @_records_errors
        def get_batch_size(self) -> int:
            return self._batch_size

        @_records_errors
        def get_batch(self, names: List[str]) -> Optional[List[int]]:
            batch = next(self._batches, None)
            if batch is None or self._device is None:
                return None
            if batch.shape != self._shape:
                raise MeanlocError(f"calibration batch has shape {batch.shape}, expected {self._shape}")
            self._host[...] = batch
            self._memory.copy_htod_async(self._device, self._host, self._stream)
            self._memory.synchronize(self._stream)
            self.batches_fed += 1
            return [self._device] * len(names)

        @_records_errors
        def read_calibration_cache(self) -> Optional[bytes]:
            """The existing cache if it was made for this TensorRT; else None, and TensorRT calibrates."""
            if not self.cache_path.is_file():
                return None
            data = self.cache_path.read_bytes()
            cache = parse_calibration_cache(data, str(self.cache_path))
            return data if cache.version_code == trt_version_code(trt.__version__) else None

        @_records_errors
        def write_calibration_cache(self, cache: Any) -> None:
            data = bytes(cache)
            parse_calibration_cache(data, "the cache TensorRT produced")  # never store what we cannot read
            atomic_write_bytes(self.cache_path, data)

        def release(self) -> None:
            """Free the buffers and stream (call after the engine is built)."""
            if self._device is not None:
                self._memory.close()
                self._device = None

    return EntropyCalibrator()


def cache_only_calibrator(trt: Optional[Any], cache_bytes: bytes, batch_size: int = 1) -> Any:
    """Calibrator that only serves `cache_bytes` (a TensorRT cache text, e.g. from `meanloc calibrate`)."""
    trt = trt or import_tensorrt()
    parsed = parse_calibration_cache(cache_bytes, "calibration cache")
    base = _base_class(trt, parsed.algorithm)
    data = bytes(cache_bytes)

    class CacheOnlyCalibrator(base):  # type: ignore[misc, valid-type]
        def __init__(self) -> None:
            base.__init__(self)
            self.callback_error = None  # type: Optional[BaseException]

        @_records_errors
        def get_batch_size(self) -> int:
            return batch_size

        @_records_errors
        def get_batch(self, names: List[str]) -> None:
            # Only reached if TensorRT rejected the cache: fail rather than calibrate on nothing.
            raise MeanlocError(
                "TensorRT did not accept the calibration cache and asked for calibration data "
                f"(header {parsed.header}); recalibrate for this TensorRT with `meanloc calibrate --trt-version`"
            )

        @_records_errors
        def read_calibration_cache(self) -> bytes:
            return data

        @_records_errors
        def write_calibration_cache(self, cache: Any) -> None:
            """The CPU-made cache stays as it is."""

    return CacheOnlyCalibrator()
