"""Fake CUDA bindings for wiring tests: pycuda's driver module and cuda-python's runtime module.

"Device memory" is host memory (export_fake_tensorrt.FakeDeviceMemory), so pointers are real
addresses and copies are real memmoves; events advance a fake 1-ms clock. They model only the
calls runtime/cuda_device.py makes, with cuda-python's `(err, *values)` return convention.
"""

import ctypes
import enum
import itertools
import types

import numpy as np

FAKE_GPU = {"name": "Fake GPU", "major": 8, "minor": 9}
CUDA_MODULES = {
    "pycuda": ["pycuda", "pycuda.driver", "pycuda.autoprimaryctx"],
    "cuda-python": ["cuda", "cuda.bindings", "cuda.bindings.runtime", "cuda.cudart"],
}


class _Clock:
    """Event timestamps: each record advances a fake clock by 1 ms."""

    def __init__(self):
        self.now = itertools.count(1)


def make_fake_pycuda(memory):
    driver = types.ModuleType("pycuda.driver")
    clock = _Clock()
    handles = itertools.count(0x1000)

    class DeviceAllocation:
        def __init__(self, address):
            self.address = address

        def __int__(self):
            return self.address

        def free(self):
            memory.free(self.address)

    class Stream:
        def __init__(self):
            self.handle = next(handles)

        def synchronize(self):
            pass

    class Event:
        def record(self, stream):
            self.time = next(clock.now)

        def synchronize(self):
            pass

        def time_since(self, start):
            return float(self.time - start.time)

    class Device:
        def __init__(self, index):
            self.index = index

        @staticmethod
        def count():
            return 1

        def name(self):
            return FAKE_GPU["name"]

        def compute_capability(self):
            return FAKE_GPU["major"], FAKE_GPU["minor"]

    driver.DeviceAllocation, driver.Stream, driver.Event, driver.Device = DeviceAllocation, Stream, Event, Device
    driver.init = lambda: None
    driver.get_version = lambda: (12, 6, 0)
    driver.get_driver_version = lambda: 12080
    driver.mem_alloc = lambda nbytes: DeviceAllocation(memory.alloc(nbytes))
    driver.pagelocked_empty = lambda shape, dtype: np.empty(shape, dtype)
    driver.memcpy_htod_async = lambda dst, src, stream: ctypes.memmove(int(dst), src.ctypes.data, src.nbytes)
    driver.memcpy_dtoh_async = lambda dst, src, stream: ctypes.memmove(dst.ctypes.data, int(src), dst.nbytes)
    package = types.ModuleType("pycuda")
    autoprimaryctx = types.ModuleType("pycuda.autoprimaryctx")
    package.driver, package.autoprimaryctx = driver, autoprimaryctx
    return {"pycuda": package, "pycuda.driver": driver, "pycuda.autoprimaryctx": autoprimaryctx}


class cudaError_t(enum.IntEnum):
    cudaSuccess = 0
    cudaErrorMemoryAllocation = 2


class cudaMemcpyKind(enum.IntEnum):
    cudaMemcpyHostToDevice = 1
    cudaMemcpyDeviceToHost = 2


def make_fake_cudart(memory, device_limit=1 << 30):
    """cuda-python's runtime module: every call returns (err, *values)."""
    rt = types.ModuleType("cuda.bindings.runtime")
    ok = cudaError_t.cudaSuccess
    clock, events, streams = _Clock(), {}, itertools.count(0x2000)
    rt.cudaError_t, rt.cudaMemcpyKind = cudaError_t, cudaMemcpyKind

    def cuda_malloc(nbytes):
        if nbytes > device_limit:
            return (cudaError_t.cudaErrorMemoryAllocation, 0)
        return (ok, memory.alloc(nbytes))

    def memcpy_async(dst, src, nbytes, kind, stream):
        assert kind in (cudaMemcpyKind.cudaMemcpyHostToDevice, cudaMemcpyKind.cudaMemcpyDeviceToHost)
        ctypes.memmove(int(dst), int(src), nbytes)
        return (ok,)

    def event_create():
        event = len(events) + 1
        events[event] = 0
        return (ok, event)

    def event_record(event, stream):
        events[event] = next(clock.now)
        return (ok,)

    rt.cudaMalloc = cuda_malloc
    rt.cudaMallocHost = lambda nbytes: (ok, memory.alloc(nbytes))
    rt.cudaFree = rt.cudaFreeHost = lambda address: (memory.free(address), ok)[1:]
    rt.cudaMemcpyAsync = memcpy_async
    rt.cudaStreamCreate = lambda: (ok, next(streams))
    rt.cudaStreamSynchronize = rt.cudaStreamDestroy = rt.cudaEventSynchronize = rt.cudaEventDestroy = lambda *a: (ok,)
    rt.cudaEventCreate, rt.cudaEventRecord = event_create, event_record
    rt.cudaEventElapsedTime = lambda start, end: (ok, float(events[end] - events[start]))
    rt.cudaGetErrorString = lambda err: (ok, b"out of memory")
    rt.cudaGetDeviceCount = lambda: (ok, 1)
    props = types.SimpleNamespace(name=FAKE_GPU["name"].encode() + b"\x00" * 8, major=FAKE_GPU["major"],
                                  minor=FAKE_GPU["minor"])
    rt.cudaGetDeviceProperties = lambda index: (ok, props)
    rt.cudaRuntimeGetVersion = lambda: (ok, 12060)
    rt.cudaDriverGetVersion = lambda: (ok, 12080)
    cuda, bindings = types.ModuleType("cuda"), types.ModuleType("cuda.bindings")
    cuda.bindings, bindings.runtime = bindings, rt
    return {"cuda": cuda, "cuda.bindings": bindings, "cuda.bindings.runtime": rt}


def install_fake_gpu(monkeypatch, version="10.3.0.26", binding="pycuda", **behaviour):
    """Fake TensorRT `version` plus ONE fake CUDA binding (the other made unimportable), over shared
    host "device" memory; returns the fake `tensorrt` module (its `.memory` is that memory)."""
    import sys

    from export_fake_tensorrt import FakeDeviceMemory, FakeTensorRTForWiringTests

    memory = FakeDeviceMemory()
    fake = FakeTensorRTForWiringTests(version, memory=memory, **behaviour)
    modules = make_fake_pycuda(memory) if binding == "pycuda" else make_fake_cudart(memory)
    modules["tensorrt"] = fake
    for name, module in modules.items():
        monkeypatch.setitem(sys.modules, name, module)
    for name in CUDA_MODULES["cuda-python" if binding == "pycuda" else "pycuda"]:
        monkeypatch.setitem(sys.modules, name, None)  # makes `import name` raise ImportError
    return fake
