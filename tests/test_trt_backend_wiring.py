"""TensorRT backend WIRING tests, with fakes: no TensorRT or CUDA is involved here.

`FakeTensorRTForWiringTests`, a fake pycuda and a fake cuda-python are injected through
`sys.modules`. They check how the backend drives TensorRT's name-based API and the CUDA memory
layer (sidecar check before deserializing, buffers allocated once at the profile max, every I/O
tensor address set, a non-default stream, batch splitting and padding, per-stage timings,
freeing). They say nothing about numerical behaviour on a real GPU: that is what the
`@pytest.mark.gpu` tests in test_trt_gpu.py are for. "Device memory" is host memory here, so
pointers are real addresses and copies are real memmoves.
"""

import ctypes
import enum
import itertools
import json
import sys
import types

import numpy as np
import pytest

from meanloc.errors import ArtifactMismatchError, MeanlocError
from meanloc.runtime.artifacts import atomic_write_bytes, atomic_write_json, new_manifest, sha256_file
from meanloc.runtime.backends import open_backend
from meanloc.runtime.backends.base import l2_normalise
from meanloc.runtime.backends.tensorrt_backend import TensorRTBackend
from meanloc.runtime.cuda_memory import CudaPythonMemory, open_cuda_memory
from meanloc.runtime.identity import ModelIdentity
from meanloc.runtime.preprocess import PreprocessSpec
from meanloc.runtime.trt_env import (
    ENGINE_SIDECAR_KIND,
    describe_environment,
    engine_sidecar_environment,
    engine_sidecar_path,
)

SIZE, DIM = 8, 4
FAKE_GPU = {"name": "Fake GPU", "major": 8, "minor": 9}


class FakeDeviceMemory:
    """Host buffers standing in for device (and pinned) memory; tracks what is still allocated."""

    def __init__(self):
        self.live = {}

    def alloc(self, nbytes):
        buffer = (ctypes.c_byte * max(int(nbytes), 1))()
        address = ctypes.addressof(buffer)
        self.live[address] = buffer
        return address

    def free(self, address):
        del self.live[int(address)]

    @staticmethod
    def view(address, shape, dtype):
        count = int(np.prod(shape))
        raw = (ctypes.c_byte * (count * np.dtype(dtype).itemsize)).from_address(int(address))
        return np.frombuffer(raw, dtype=dtype, count=count).reshape(shape)


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


class FakeTensorRTForWiringTests(types.ModuleType):
    """A stand-in `tensorrt` module exposing ONLY the name-based I/O API (no bindings API).

    A "plan" is JSON describing the engine; its "network" is a fixed random projection of the
    flattened input, so results can be checked against numpy. Wiring tests only.
    """

    class Logger:
        WARNING, ERROR = 2, 1

        def __init__(self, severity):
            self.severity = severity

    class TensorIOMode(enum.Enum):
        INPUT = 1
        OUTPUT = 2

    class DataType(enum.Enum):
        FLOAT = 0
        HALF = 1
        BF16 = 7

    def __init__(self, memory, version="10.3.0.30", dla_cores=0):
        super().__init__("tensorrt")
        self.__version__ = version
        self.memory = memory
        self.deserialized = []
        self.contexts = []
        fake = self

        class Runtime:
            def __init__(self, logger):
                self.logger = logger

            def deserialize_cuda_engine(self, plan):
                fake.deserialized.append(plan)
                if not plan.startswith(b"{"):
                    return None  # what TensorRT returns for a plan it cannot read
                return FakeEngine(fake, json.loads(plan.decode()))

        class Builder:
            num_DLA_cores = dla_cores

            def __init__(self, logger):
                pass

        self.Runtime, self.Builder = Runtime, Builder

    def nptype(self, dtype):
        raise AssertionError("trt.nptype breaks on TensorRT 8.5.2 with NumPy >= 1.24; never call it")


class FakeEngine:
    def __init__(self, trt, spec):
        self.trt, self.spec = trt, spec
        self.weights = np.random.default_rng(spec["seed"]).normal(size=(3 * SIZE * SIZE, DIM)).astype(np.float32)
        self.names = [spec.get("input_name", "images"), "embedding"]
        self.num_io_tensors = 2

    def get_tensor_name(self, index):
        return self.names[index]

    def get_tensor_mode(self, name):
        return self.trt.TensorIOMode.INPUT if name == self.names[0] else self.trt.TensorIOMode.OUTPUT

    def get_tensor_dtype(self, name):
        return self.trt.DataType[self.spec.get("out_dtype", "FLOAT") if name == "embedding" else "FLOAT"]

    def get_tensor_shape(self, name):
        batch = -1 if self.spec["min"] != self.spec["max"] else self.spec["min"]
        return (batch, 3, SIZE, SIZE) if name == self.names[0] else (batch, DIM)

    def get_tensor_profile_shape(self, name, profile_index):
        assert name == self.names[0] and profile_index == 0
        return [(self.spec[key], 3, SIZE, SIZE) for key in ("min", "opt", "max")]

    def create_execution_context(self):
        context = FakeContext(self)
        self.trt.contexts.append(context)
        return context


class FakeContext:
    def __init__(self, engine):
        self.engine, self.calls, self.addresses, self.batch = engine, [], {}, None

    def set_input_shape(self, name, shape):
        self.calls.append(("set_input_shape", tuple(shape)))
        spec = self.engine.spec
        if name != "images" or not spec["min"] <= shape[0] <= spec["max"] or tuple(shape[1:]) != (3, SIZE, SIZE):
            return False
        self.batch = shape[0]
        return True

    def set_tensor_address(self, name, address):
        self.calls.append(("set_tensor_address", name))
        self.addresses[name] = int(address)
        return True

    def get_tensor_shape(self, name):
        return (self.batch, DIM) if name == "embedding" else (self.batch, 3, SIZE, SIZE)

    def execute_async_v3(self, stream_handle):
        self.calls.append(("execute_async_v3", stream_handle))
        if not stream_handle or set(self.addresses) != {"images", "embedding"} or self.engine.spec.get("fail"):
            return False  # default stream, an unbound tensor, or a simulated kernel failure
        memory = self.engine.trt.memory
        images = memory.view(self.addresses["images"], (self.batch, 3, SIZE, SIZE), np.float32)
        out_dtype = np.float16 if self.engine.get_tensor_dtype("embedding").name == "HALF" else np.float32
        output = memory.view(self.addresses["embedding"], (self.batch, DIM), out_dtype)
        output[:] = (images.reshape(self.batch, -1) @ self.engine.weights).astype(out_dtype)
        return True


def reference_embeddings(batch, seed):
    weights = np.random.default_rng(seed).normal(size=(3 * SIZE * SIZE, DIM)).astype(np.float32)
    return l2_normalise(batch.reshape(len(batch), -1) @ weights)


@pytest.fixture(params=["pycuda", "cuda-python"])
def fake_gpu(request, monkeypatch):
    """Fake TensorRT plus ONE fake CUDA binding (the other made unimportable)."""
    memory = FakeDeviceMemory()
    if request.param == "pycuda":
        modules = make_fake_pycuda(memory)
        absent = ["cuda", "cuda.bindings", "cuda.bindings.runtime", "cuda.cudart"]
    else:
        modules = make_fake_cudart(memory)
        absent = ["pycuda", "pycuda.driver", "pycuda.autoprimaryctx"]
    modules["tensorrt"] = FakeTensorRTForWiringTests(memory)
    for name, module in modules.items():
        monkeypatch.setitem(sys.modules, name, module)
    for name in absent:
        monkeypatch.setitem(sys.modules, name, None)  # makes `import name` raise ImportError
    return types.SimpleNamespace(binding=request.param, memory=memory, trt=modules["tensorrt"])


def write_engine(folder, min_batch=1, opt_batch=2, max_batch=4, seed=0, environment=None, name="nano.engine", **spec):
    spec.update({"min": min_batch, "opt": opt_batch, "max": max_batch, "seed": seed})
    path = folder / name
    atomic_write_bytes(path, json.dumps(spec).encode())
    identity = ModelIdentity("cd" * 32, "mean-nano", DIM, PreprocessSpec(size=SIZE))
    sidecar = new_manifest(
        ENGINE_SIDECAR_KIND,
        identity=identity.to_dict(),
        precision="fp16",
        engine_sha256=sha256_file(path),
        environment=environment or engine_sidecar_environment(describe_environment(probe_dla=False)),
        profile={"min": min_batch, "opt": opt_batch, "max": max_batch},
    )
    atomic_write_json(engine_sidecar_path(str(path)), sidecar)
    return str(path)


def _batch(count, seed=5):
    return np.random.default_rng(seed).normal(size=(count, 3, SIZE, SIZE)).astype(np.float32)


def test_engine_runs_through_the_name_based_api_on_a_stream(fake_gpu, tmp_path):
    backend = open_backend(write_engine(tmp_path, seed=11))
    assert isinstance(backend, TensorRTBackend)
    context = fake_gpu.trt.contexts[-1]
    warmup_calls = list(context.calls)
    batch = _batch(6)
    embeddings = backend.embed(batch)

    assert np.allclose(embeddings, reference_embeddings(batch, seed=11), atol=1e-5)
    assert backend.identity.precision == "fp16" and backend.identity.artifact_sha256 == sha256_file(backend.path)
    # Every I/O tensor is bound exactly once, before any inference (buffers are never reallocated).
    binds = [call for call in context.calls if call[0] == "set_tensor_address"]
    assert binds == [("set_tensor_address", "images"), ("set_tensor_address", "embedding")]
    assert context.calls.index(binds[-1]) < context.calls.index(next(c for c in context.calls if c[0] == "execute_async_v3"))
    # Two warm-up runs at the profile max, then 6 images split as 4 + 2.
    shapes = [call[1][0] for call in context.calls if call[0] == "set_input_shape"]
    assert shapes[: len(shapes) - 2] == [4, 4] and shapes[-2:] == [4, 2]
    assert len([c for c in warmup_calls if c[0] == "execute_async_v3"]) == 2
    handles = {call[1] for call in context.calls if call[0] == "execute_async_v3"}
    assert handles == {backend._stream_handle} and 0 not in handles  # a non-default stream
    timings = backend.stage_timings()
    assert set(timings) == {"h2d", "inference", "d2h"} and all(v > 0 for v in timings.values())
    assert backend.describe()["cuda_binding"] == fake_gpu.binding
    backend.close()
    backend.close()  # idempotent
    assert fake_gpu.memory.live == {}  # every device (and cuda-python pinned) buffer freed


def test_fixed_shape_engine_pads_and_drops_the_padding(fake_gpu, tmp_path):
    with open_backend(write_engine(tmp_path, min_batch=2, opt_batch=2, max_batch=2, seed=3)) as backend:
        assert backend.max_batch == 2
        batch = _batch(3, seed=9)
        embeddings = backend.embed(batch)
        shapes = [c[1][0] for c in fake_gpu.trt.contexts[-1].calls if c[0] == "set_input_shape"]
    assert embeddings.shape == (3, DIM) and shapes[-2:] == [2, 2]
    assert np.allclose(embeddings, reference_embeddings(batch, seed=3), atol=1e-5)


def test_fp16_engine_output_is_renormalised_in_float32(fake_gpu, tmp_path):
    with open_backend(write_engine(tmp_path, out_dtype="HALF", seed=4)) as backend:
        batch = _batch(3)
        embeddings = backend.embed(batch)
    assert embeddings.dtype == np.float32
    assert np.allclose(np.linalg.norm(embeddings, axis=1), 1.0, atol=1e-6)
    assert np.allclose(embeddings, reference_embeddings(batch, seed=4), atol=5e-3)


def test_requested_max_batch_is_clipped_to_the_profile(fake_gpu, tmp_path):
    path = write_engine(tmp_path)
    with open_backend(path, max_batch=2) as small, open_backend(path, max_batch=64) as large:
        assert (small.max_batch, large.max_batch) == (2, 4)


def test_engine_from_another_machine_is_refused_before_deserializing(fake_gpu, tmp_path):
    orin = {"tensorrt_version": "8.5.2.2", "cuda_runtime_version": "11.4", "gpu_name": "Orin",
            "compute_capability": "8.7", "l4t_release": "35.4.1", "dla_core": None}
    path = write_engine(tmp_path, environment=orin)
    with pytest.raises(ArtifactMismatchError) as caught:
        open_backend(path)
    message = str(caught.value)
    assert "engine built for TensorRT 8.5.2.2 on Orin (sm_87), L4T 35.4.1" in message
    assert "this machine has TensorRT 10.3.0.30 on Fake GPU (sm_89)" in message
    assert "rebuild it here with `meanloc export engine`" in message
    assert fake_gpu.trt.deserialized == []


def test_engine_without_matching_sidecar_or_readable_plan_is_refused(fake_gpu, tmp_path):
    path = write_engine(tmp_path)
    with open(path, "ab") as handle:
        handle.write(b" ")  # the plan changed after its sidecar was written
    with pytest.raises(ArtifactMismatchError, match="does not match its sidecar"):
        open_backend(path)

    lonely = tmp_path / "lonely.engine"
    lonely.write_bytes(b"{}")
    with pytest.raises(ArtifactMismatchError, match="has no sidecar manifest"):
        open_backend(str(lonely))

    corrupt = tmp_path / "corrupt.engine"
    path = write_engine(tmp_path, name="corrupt.engine")
    corrupt.write_bytes(b"\x00garbage")
    with open(engine_sidecar_path(path)) as handle:
        sidecar = json.load(handle)
    sidecar["engine_sha256"] = sha256_file(corrupt)
    atomic_write_json(engine_sidecar_path(path), sidecar)
    with pytest.raises(ArtifactMismatchError, match="could not deserialize"):
        open_backend(path)


def test_foreign_engine_io_or_tensor_type_is_refused(fake_gpu, tmp_path):
    with pytest.raises(ArtifactMismatchError, match="not a meanloc embedder engine"):
        open_backend(write_engine(tmp_path, input_name="input"))
    with pytest.raises(MeanlocError, match="engine tensor type BF16 is not supported"):
        open_backend(write_engine(tmp_path, name="bf16.engine", out_dtype="BF16"))


def test_describe_environment_reads_the_gpu_through_either_binding(fake_gpu):
    env = describe_environment(probe_dla=True)
    assert env["gpu_name"] == "Fake GPU" and env["compute_capability"] == "8.9"
    assert env["gpu"] == "Fake GPU (sm_89)" and env["gpu_probe"] == fake_gpu.binding
    assert env["cuda_runtime_version"] == "12.6" and env["cuda_driver_version"] == "12.8"
    assert env["tensorrt_version"] == "10.3.0.30" and env["dla_cores"] == 0


def test_cuda_python_errors_become_one_line_errors():
    memory = FakeDeviceMemory()
    cudart = make_fake_cudart(memory, device_limit=1024)["cuda.bindings.runtime"]
    cuda = CudaPythonMemory(cudart)
    pinned = cuda.alloc_pinned((2, 3), np.float32)
    pinned[:] = np.arange(6, dtype=np.float32).reshape(2, 3)
    device = cuda.alloc_device(pinned.nbytes)
    stream = cuda.create_stream()
    cuda.copy_htod_async(device, pinned, stream)
    back = np.zeros((2, 3), np.float32)
    cuda.copy_dtoh_async(back, device, stream)
    cuda.synchronize(stream)
    assert np.array_equal(back, pinned)
    with pytest.raises(MeanlocError, match="CUDA call cudaMalloc failed: cudaErrorMemoryAllocation \\(out of memory\\)"):
        cuda.alloc_device(4096)
    cuda.close()
    assert memory.live == {}


def test_no_cuda_binding_gives_the_install_hint(monkeypatch):
    for name in ("pycuda", "pycuda.driver", "pycuda.autoprimaryctx", "cuda", "cuda.bindings",
                 "cuda.bindings.runtime", "cuda.cudart"):
        monkeypatch.setitem(sys.modules, name, None)
    with pytest.raises(MeanlocError, match=r"needs a CUDA binding; install pycuda .* or cuda-python"):
        open_cuda_memory()
    with pytest.raises(MeanlocError, match="unknown CUDA binding 'cupy'"):
        open_cuda_memory(prefer="cupy")


def test_failure_during_warm_up_frees_what_was_allocated(fake_gpu, tmp_path):
    with pytest.raises(MeanlocError, match="TensorRT inference failed"):
        open_backend(write_engine(tmp_path, fail=True))
    assert fake_gpu.trt.contexts and fake_gpu.memory.live == {}
