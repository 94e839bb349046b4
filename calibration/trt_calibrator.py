"""TensorRT INT8 calibrators (implicit quantization, TensorRT 8.5-10.x; removed in 11).

- `entropy_calibrator`: an `IInt8EntropyCalibrator2` that calibrates on the device (route E of
  deployment.md §5.1) from the same preprocessed batches as the CPU path, copied into a device
  buffer; it reads an existing cache for this TensorRT (which then skips calibration) and writes
  the one TensorRT produces, atomically, in the same file format.
- `cache_only_calibrator`: feeds no data and hands TensorRT the cache made on the CPU (route C),
  so a Jetson builds an implicit-INT8 engine without calibration images. The engine builder
  checks the cache (TensorRT version, tensor names) before it gets here.

`tensorrt` and the CUDA bindings are imported only when a calibrator is made, so this module
imports anywhere; the classes are built on the fly as subclasses of the live TensorRT's base.
Device memory: pycuda as NVIDIA's JetPack 5 samples use it, else cuda-python (deployment.md §4).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from meanloc.errors import MeanlocError, MissingDependencyError
from meanloc.runtime.artifacts import atomic_write_bytes

from .cache import parse_calibration_cache, trt_version_code


class DeviceMemory(Protocol):
    def alloc(self, nbytes: int) -> int: ...

    def copy_to_device(self, pointer: int, array: np.ndarray) -> None: ...

    def free(self, pointer: int) -> None: ...


class PyCudaMemory:
    def __init__(self) -> None:
        import pycuda.autoprimaryctx  # noqa: F401  (retains the primary context, as NVIDIA's 8.5 samples prefer)
        import pycuda.driver as cuda

        self._cuda = cuda
        self._buffers: dict[int, Any] = {}

    def alloc(self, nbytes: int) -> int:
        buffer = self._cuda.mem_alloc(nbytes)
        self._buffers[int(buffer)] = buffer
        return int(buffer)

    def copy_to_device(self, pointer: int, array: np.ndarray) -> None:
        self._cuda.memcpy_htod(pointer, array)

    def free(self, pointer: int) -> None:
        self._buffers.pop(pointer).free()


class CudaPythonMemory:
    def __init__(self) -> None:
        try:
            from cuda.bindings import runtime as cudart
        except ImportError:  # cuda-python < 12.6.1 / 11.8.4
            from cuda import cudart
        self._cudart = cudart

    def _check(self, result: Any, what: str) -> Any:
        error, *values = result if isinstance(result, tuple) else (result,)
        if error != self._cudart.cudaError_t.cudaSuccess:
            raise MeanlocError(f"CUDA {what} failed: {error}")
        return values[0] if values else None

    def alloc(self, nbytes: int) -> int:
        return int(self._check(self._cudart.cudaMalloc(nbytes), "cudaMalloc"))

    def copy_to_device(self, pointer: int, array: np.ndarray) -> None:
        kind = self._cudart.cudaMemcpyKind.cudaMemcpyHostToDevice
        self._check(self._cudart.cudaMemcpy(pointer, array.ctypes.data, array.nbytes, kind), "cudaMemcpy")

    def free(self, pointer: int) -> None:
        self._check(self._cudart.cudaFree(pointer), "cudaFree")


def open_device_memory() -> DeviceMemory:
    """pycuda if installed, else cuda-python; one-line error if neither is."""
    for backend in (PyCudaMemory, CudaPythonMemory):
        try:
            return backend()
        except ImportError:
            continue
    raise MissingDependencyError("device calibration needs pycuda or cuda-python (pip install 'cuda-python>=12.6,<13')")


def import_tensorrt_for_calibration() -> Any:
    try:
        import tensorrt
    except ImportError:
        raise MissingDependencyError("TensorRT is not installed: INT8 calibration on the device needs it") from None
    return tensorrt


def _check_calibrators(trt: Any) -> None:
    if not hasattr(trt, "IInt8EntropyCalibrator2"):
        raise MeanlocError(
            f"TensorRT {trt.__version__} has no implicit INT8 calibrators (removed in 11); "
            "use the Q/DQ model (model.int8-qdq-trt.onnx) instead"
        )


def _calibrator_classes(trt: Any) -> tuple[type, type]:
    """(EntropyCalibrator, CacheOnlyCalibrator), subclasses of this TensorRT's IInt8EntropyCalibrator2."""
    _check_calibrators(trt)

    class EntropyCalibrator(trt.IInt8EntropyCalibrator2):
        def __init__(
            self,
            batches: Iterable[np.ndarray],
            batch_size: int,
            sample_shape: tuple[int, ...],
            cache_path: Path,
            memory: DeviceMemory,
        ) -> None:
            trt.IInt8EntropyCalibrator2.__init__(self)
            self.cache_path = Path(cache_path)
            self.batches_fed = 0
            self._batches: Iterator[np.ndarray] = iter(batches)
            self._batch_size = batch_size
            self._shape = (batch_size, *sample_shape)
            self._memory = memory
            self._device: int | None = memory.alloc(int(np.prod(self._shape)) * 4)

        def get_batch_size(self) -> int:
            return self._batch_size

        def get_batch(self, names: list[str]) -> list[int] | None:
            batch = next(self._batches, None)
            if batch is None or self._device is None:
                return None
            if batch.shape != self._shape:
                raise MeanlocError(f"calibration batch has shape {batch.shape}, expected {self._shape}")
            self._memory.copy_to_device(self._device, np.ascontiguousarray(batch, dtype=np.float32))
            self.batches_fed += 1
            return [self._device] * len(names)

        def read_calibration_cache(self) -> bytes | None:
            """The existing cache if it was made for this TensorRT; else None, and TensorRT calibrates."""
            if not self.cache_path.is_file():
                return None
            data = self.cache_path.read_bytes()
            cache = parse_calibration_cache(data, str(self.cache_path))
            return data if cache.version_code == trt_version_code(trt.__version__) else None

        def write_calibration_cache(self, cache: Any) -> None:
            data = bytes(cache)
            parse_calibration_cache(data, "the cache TensorRT produced")  # never store what we cannot read
            atomic_write_bytes(self.cache_path, data)

        def release(self) -> None:
            """Free the device buffer (call after the engine is built)."""
            if self._device is not None:
                self._memory.free(self._device)
                self._device = None

    class CacheOnlyCalibrator(trt.IInt8EntropyCalibrator2):
        def __init__(self, cache_bytes: bytes, batch_size: int) -> None:
            trt.IInt8EntropyCalibrator2.__init__(self)
            self._data = cache_bytes
            self._batch_size = batch_size

        def get_batch_size(self) -> int:
            return self._batch_size

        def get_batch(self, names: list[str]) -> None:
            # Only reached if TensorRT rejected the cache: fail rather than calibrate on nothing.
            raise MeanlocError("TensorRT did not accept the calibration cache and asked for calibration data")

        def read_calibration_cache(self) -> bytes:
            return self._data

        def write_calibration_cache(self, cache: Any) -> None:
            """The CPU-made cache stays as it is."""

    return EntropyCalibrator, CacheOnlyCalibrator


def entropy_calibrator(
    trt: Any | None,
    batches: Iterable[np.ndarray],
    batch_size: int,
    sample_shape: tuple[int, ...],
    cache_path: str | Path,
    memory: DeviceMemory | None = None,
) -> Any:
    """Device calibrator over preprocessed (batch_size, *sample_shape) float32 batches.

    `trt`: the tensorrt module (None: import it). Pass `CalibrationSet.batches()`; call
    `.release()` after the build to free the device buffer.
    """
    trt = trt or import_tensorrt_for_calibration()
    entropy_class, _ = _calibrator_classes(trt)
    return entropy_class(
        batches, batch_size, tuple(sample_shape), Path(cache_path), memory or open_device_memory()
    )


def cache_only_calibrator(trt: Any | None, cache_bytes: bytes, batch_size: int = 1) -> Any:
    """Calibrator that only serves `cache_bytes` (a TensorRT cache text, e.g. from `meanloc calibrate`)."""
    trt = trt or import_tensorrt_for_calibration()
    parse_calibration_cache(cache_bytes, "calibration cache")
    _, cache_only_class = _calibrator_classes(trt)
    return cache_only_class(bytes(cache_bytes), batch_size)
