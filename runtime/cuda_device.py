"""CUDA for meanloc: the GPU probe, and pinned host buffers, device buffers, streams, copies and events.

The one CUDA layer of the project: the TensorRT backend and the device calibrator allocate through
it, and the engine builder and the backend both identify the GPU through `probe_gpu()`, so an engine
sidecar and the machine it is checked on are described by the same CUDA call (nvidia-smi, the
doctor's fallback, may be missing on a Jetson and reports NVML's device name, not CUDA's).

Two interchangeable implementations of one small interface:
- `PycudaMemory`: pycuda, made current with `pycuda.autoprimaryctx` (NVIDIA's TRT 8.5 samples
  prefer it to `autoinit`: it retains the primary context TensorRT's runtime API also uses);
- `CudaPythonMemory`: NVIDIA's cuda-python runtime bindings, for machines without pycuda
  (pycuda builds from source and needs nvcc). Every call returns `(err, *results)`, and
  `_check` turns a non-success code into a one-line error.

`open_cuda_memory()` picks pycuda first, then cuda-python (deployment.md §4); `probe_gpu()` asks
the same bindings in the same order. Device pointers are plain ints, as
`IExecutionContext.set_tensor_address` wants them. Everything allocated is freed by `close()`.
Never imports torch. Python 3.8 compatible.
"""

import ctypes
from typing import Any, Dict, List, Optional, Sequence

import numpy as np

from meanloc.errors import MeanlocError, MissingDependencyError

INSTALL_HINT = (
    "install pycuda (pip install pycuda; needs nvcc and the CUDA headers) or cuda-python "
    "(pip install 'cuda-python>=12.6,<13' on JetPack 6, 11.8.x on JetPack 5)"
)


class CudaMemory:
    """The interface the TensorRT backend uses. Streams and events are opaque objects."""

    name = "cuda"

    def alloc_pinned(self, shape: Sequence[int], dtype: Any) -> np.ndarray:
        raise NotImplementedError

    def alloc_device(self, nbytes: int) -> int:
        raise NotImplementedError

    def create_stream(self) -> Any:
        raise NotImplementedError

    def stream_handle(self, stream: Any) -> int:
        raise NotImplementedError

    def copy_htod_async(self, device_ptr: int, host: np.ndarray, stream: Any) -> None:
        raise NotImplementedError

    def copy_dtoh_async(self, host: np.ndarray, device_ptr: int, stream: Any) -> None:
        raise NotImplementedError

    def synchronize(self, stream: Any) -> None:
        raise NotImplementedError

    def create_event(self) -> Any:
        raise NotImplementedError

    def record_event(self, event: Any, stream: Any) -> None:
        raise NotImplementedError

    def elapsed_ms(self, start: Any, end: Any) -> float:
        """Milliseconds between two recorded, completed events."""
        raise NotImplementedError

    def close(self) -> None:
        """Free every buffer, stream and event this object created (idempotent)."""
        raise NotImplementedError


def _nbytes(shape: Sequence[int], dtype: Any) -> int:
    return int(np.prod(shape)) * np.dtype(dtype).itemsize


class PycudaMemory(CudaMemory):
    name = "pycuda"

    def __init__(self) -> None:
        import pycuda.autoprimaryctx  # noqa: F401  (makes the primary context current)
        import pycuda.driver as cuda

        self._cuda = cuda
        self._keep = []  # type: List[Any]  # pycuda frees device memory when these are collected

    def alloc_pinned(self, shape: Sequence[int], dtype: Any) -> np.ndarray:
        host = self._cuda.pagelocked_empty(tuple(shape), np.dtype(dtype))
        self._keep.append(host)
        return host

    def alloc_device(self, nbytes: int) -> int:
        allocation = self._cuda.mem_alloc(int(nbytes))
        self._keep.append(allocation)
        return int(allocation)

    def create_stream(self) -> Any:
        stream = self._cuda.Stream()
        self._keep.append(stream)
        return stream

    def stream_handle(self, stream: Any) -> int:
        return int(stream.handle)

    def copy_htod_async(self, device_ptr: int, host: np.ndarray, stream: Any) -> None:
        self._cuda.memcpy_htod_async(device_ptr, host, stream)

    def copy_dtoh_async(self, host: np.ndarray, device_ptr: int, stream: Any) -> None:
        self._cuda.memcpy_dtoh_async(host, device_ptr, stream)

    def synchronize(self, stream: Any) -> None:
        stream.synchronize()

    def create_event(self) -> Any:
        return self._cuda.Event()

    def record_event(self, event: Any, stream: Any) -> None:
        event.record(stream)

    def elapsed_ms(self, start: Any, end: Any) -> float:
        end.synchronize()
        return float(end.time_since(start))

    def close(self) -> None:
        for item in self._keep:
            free = getattr(item, "free", None)  # DeviceAllocation; pinned arrays go with their refcount
            if free is not None:
                free()
        self._keep = []


class CudaPythonMemory(CudaMemory):
    name = "cuda-python"

    def __init__(self, cudart: Any = None) -> None:
        self._rt = cudart if cudart is not None else import_cudart()
        if self._rt is None:
            raise MissingDependencyError("cuda-python is not installed; " + INSTALL_HINT)
        self._pinned = []  # type: List[int]
        self._device = []  # type: List[int]
        self._streams = []  # type: List[Any]
        self._events = []  # type: List[Any]

    def _check(self, result: Any, call: str) -> Any:
        """cuda-python returns (err, *values): raise on err, return the value(s)."""
        if not isinstance(result, tuple):
            result = (result,)
        err, values = result[0], result[1:]
        if err != self._rt.cudaError_t.cudaSuccess:
            raise MeanlocError("CUDA call {} failed: {} ({})".format(call, _enum_name(err), self._error_string(err)))
        if not values:
            return None
        return values[0] if len(values) == 1 else values

    def _error_string(self, err: Any) -> str:
        try:
            message = self._rt.cudaGetErrorString(err)[1]
        except Exception:
            return "no description"
        return message.decode("utf-8", "replace") if isinstance(message, bytes) else str(message)

    def alloc_pinned(self, shape: Sequence[int], dtype: Any) -> np.ndarray:
        nbytes = max(_nbytes(shape, dtype), 1)
        pointer = int(self._check(self._rt.cudaMallocHost(nbytes), "cudaMallocHost"))
        self._pinned.append(pointer)
        raw = (ctypes.c_byte * nbytes).from_address(pointer)
        return np.frombuffer(raw, dtype=np.dtype(dtype), count=int(np.prod(shape))).reshape(tuple(shape))

    def alloc_device(self, nbytes: int) -> int:
        pointer = int(self._check(self._rt.cudaMalloc(max(int(nbytes), 1)), "cudaMalloc"))
        self._device.append(pointer)
        return pointer

    def create_stream(self) -> Any:
        stream = self._check(self._rt.cudaStreamCreate(), "cudaStreamCreate")
        self._streams.append(stream)
        return stream

    def stream_handle(self, stream: Any) -> int:
        return int(stream)

    def copy_htod_async(self, device_ptr: int, host: np.ndarray, stream: Any) -> None:
        kind = self._rt.cudaMemcpyKind.cudaMemcpyHostToDevice
        self._check(self._rt.cudaMemcpyAsync(device_ptr, host.ctypes.data, host.nbytes, kind, stream), "cudaMemcpyAsync")

    def copy_dtoh_async(self, host: np.ndarray, device_ptr: int, stream: Any) -> None:
        kind = self._rt.cudaMemcpyKind.cudaMemcpyDeviceToHost
        self._check(self._rt.cudaMemcpyAsync(host.ctypes.data, device_ptr, host.nbytes, kind, stream), "cudaMemcpyAsync")

    def synchronize(self, stream: Any) -> None:
        self._check(self._rt.cudaStreamSynchronize(stream), "cudaStreamSynchronize")

    def create_event(self) -> Any:
        event = self._check(self._rt.cudaEventCreate(), "cudaEventCreate")
        self._events.append(event)
        return event

    def record_event(self, event: Any, stream: Any) -> None:
        self._check(self._rt.cudaEventRecord(event, stream), "cudaEventRecord")

    def elapsed_ms(self, start: Any, end: Any) -> float:
        self._check(self._rt.cudaEventSynchronize(end), "cudaEventSynchronize")
        return float(self._check(self._rt.cudaEventElapsedTime(start, end), "cudaEventElapsedTime"))

    def close(self) -> None:
        # Best effort: a failing free during shutdown must not hide the original error.
        for release, items in (
            (self._rt.cudaEventDestroy, self._events),
            (self._rt.cudaStreamDestroy, self._streams),
            (self._rt.cudaFree, self._device),
            (self._rt.cudaFreeHost, self._pinned),
        ):
            for item in items:
                release(item)
        self._events, self._streams, self._device, self._pinned = [], [], [], []


def _enum_name(err: Any) -> str:
    return str(getattr(err, "name", err))


def import_cudart() -> Any:
    """cuda-python's runtime module (`cuda.bindings.runtime`, or `cuda.cudart` before 12.6.1), or None."""
    try:
        from cuda.bindings import runtime as cudart
    except ImportError:
        try:
            from cuda import cudart
        except ImportError:
            return None
    return cudart


def available_cuda_libraries() -> List[str]:
    """Which of the two bindings import here (cheap: no CUDA context is created)."""
    found = []  # type: List[str]
    try:
        import pycuda.driver  # noqa: F401

        found.append(PycudaMemory.name)
    except ImportError:
        pass
    if import_cudart() is not None:
        found.append(CudaPythonMemory.name)
    return found


def open_cuda_memory(prefer: Optional[str] = None) -> CudaMemory:
    """pycuda if it imports (or `prefer="pycuda"`), else cuda-python; one-line error if neither."""
    order = [PycudaMemory, CudaPythonMemory]  # type: List[Any]
    if prefer is not None:
        order = [cls for cls in order if cls.name == prefer]
        if not order:
            raise MeanlocError("unknown CUDA binding '{}' (use pycuda or cuda-python)".format(prefer))
    available = available_cuda_libraries()
    for cls in order:
        if cls.name in available:
            return cls()
    raise MissingDependencyError("the TensorRT backend needs a CUDA binding; " + INSTALL_HINT)


# --- the GPU probe -----------------------------------------------------------------------------------

GPU_NAME = "gpu_name"
COMPUTE_CAPABILITY = "compute_capability"
CUDA_RUNTIME_VERSION = "cuda_runtime_version"
CUDA_DRIVER_VERSION = "cuda_driver_version"


def format_cuda_version(value: int) -> str:
    """CUDA encodes versions as 1000*major + 10*minor (12060 -> '12.6')."""
    return "{}.{}".format(value // 1000, (value % 1000) // 10)


def probe_gpu() -> Optional[Dict[str, Any]]:
    """Device 0 as CUDA names it, through the first binding that answers; None without one or a GPU.

    Keys: gpu_name, compute_capability ('8.7'), cuda_runtime_version, cuda_driver_version, gpu_probe.
    A half-installed CUDA stack counts as no answer, never as an exception.
    """
    for probe in (_probe_pycuda, _probe_cuda_python):
        try:
            found = probe()
        except Exception:
            found = None
        if found:
            return found
    return None


def _probe_pycuda() -> Optional[Dict[str, Any]]:
    try:
        import pycuda.driver as cuda
    except ImportError:
        return None
    cuda.init()
    if cuda.Device.count() < 1:
        return None
    device = cuda.Device(0)
    major, minor = device.compute_capability()
    return {
        GPU_NAME: str(device.name()).strip(),
        COMPUTE_CAPABILITY: "{}.{}".format(major, minor),
        # pycuda reports the toolkit it was built with, which is what it runs against.
        CUDA_RUNTIME_VERSION: ".".join(str(part) for part in cuda.get_version()[:2]),
        CUDA_DRIVER_VERSION: format_cuda_version(cuda.get_driver_version()),
        "gpu_probe": PycudaMemory.name,
    }


def _probe_cuda_python() -> Optional[Dict[str, Any]]:
    cudart = import_cudart()
    if cudart is None:
        return None
    success = cudart.cudaError_t.cudaSuccess
    err, count = cudart.cudaGetDeviceCount()
    if err != success or count < 1:
        return None
    err, props = cudart.cudaGetDeviceProperties(0)
    if err != success:
        return None
    name = props.name
    if isinstance(name, bytes):
        name = name.split(b"\x00", 1)[0].decode("utf-8", "replace")
    info = {
        GPU_NAME: str(name).strip(),
        COMPUTE_CAPABILITY: "{}.{}".format(props.major, props.minor),
        CUDA_RUNTIME_VERSION: None,
        CUDA_DRIVER_VERSION: None,
        "gpu_probe": CudaPythonMemory.name,
    }  # type: Dict[str, Any]
    err, runtime_version = cudart.cudaRuntimeGetVersion()
    if err == success:
        info[CUDA_RUNTIME_VERSION] = format_cuda_version(runtime_version)
    err, driver_version = cudart.cudaDriverGetVersion()
    if err == success:
        info[CUDA_DRIVER_VERSION] = format_cuda_version(driver_version)
    return info
