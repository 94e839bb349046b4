"""TensorRT backend WIRING tests, with fakes: no TensorRT or CUDA is involved here.

`FakeTensorRTForWiringTests` (tests/export_fake_tensorrt.py, the one fake TensorRT), a fake pycuda
and a fake cuda-python are injected through `sys.modules`. They check how the backend drives TensorRT's name-based API and the CUDA memory
layer (sidecar check before deserializing, buffers allocated once at the profile max, every I/O
tensor address set, a non-default stream, batch splitting and padding, per-stage timings,
freeing). They say nothing about numerical behaviour on a real GPU: that is what the
`@pytest.mark.gpu` tests in test_trt_gpu.py are for. "Device memory" is host memory here, so
pointers are real addresses and copies are real memmoves.
"""

import json
import sys
import types

import numpy as np
import pytest
from export_fake_tensorrt import (
    SINGLE_LOGGER_WARNING,
    FakeDeviceMemory,
    reference_embeddings,
)
from fake_cuda_bindings import CUDA_MODULES, install_fake_gpu, make_fake_cudart

from meanloc.errors import ArtifactMismatchError, MeanlocError, MissingDependencyError
from meanloc.runtime.artifacts import atomic_write_bytes, atomic_write_json, new_manifest, sha256_file
from meanloc.runtime.backends import open_backend
from meanloc.runtime.backends.tensorrt_backend import TensorRTBackend
from meanloc.runtime.cuda_device import CudaPythonMemory, open_cuda_memory
from meanloc.runtime.engine_sidecar import ENGINE_SIDECAR_KIND, engine_sidecar_path, recorded_environment
from meanloc.runtime.identity import ModelIdentity
from meanloc.runtime.preprocess import PreprocessSpec
from meanloc.runtime.trt_env import describe_environment

SIZE, DIM = 8, 4


@pytest.fixture(params=["pycuda", "cuda-python"])
def fake_gpu(request, monkeypatch):
    """Fake TensorRT plus ONE fake CUDA binding (the other made unimportable)."""
    fake = install_fake_gpu(monkeypatch, "10.3.0.30", binding=request.param, num_dla_cores=2)
    return types.SimpleNamespace(binding=request.param, memory=fake.memory, trt=fake)


def write_engine(
    folder, min_batch=1, opt_batch=2, max_batch=4, seed=0, environment=None, name="nano.engine", dla_core=None, **spec
):
    spec.update({"min": min_batch, "opt": opt_batch, "max": max_batch, "seed": seed, "size": SIZE, "dim": DIM})
    path = folder / name
    atomic_write_bytes(path, json.dumps(spec).encode())
    identity = ModelIdentity("cd" * 32, "mean-nano", DIM, PreprocessSpec(size=SIZE))
    sidecar = new_manifest(
        ENGINE_SIDECAR_KIND,
        identity=identity.to_dict(),
        precision="fp16",
        engine_sha256=sha256_file(path),
        environment=environment or recorded_environment(describe_environment(probe_dla=False), dla_core),
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
    # Two warm-up runs at the profile's opt batch (2 here), then 6 images split as 4 + 2.
    shapes = [call[1][0] for call in context.calls if call[0] == "set_input_shape"]
    assert shapes[: len(shapes) - 2] == [2, 2] and shapes[-2:] == [4, 2]
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
    assert env["tensorrt_version"] == "10.3.0.30" and env["dla_cores"] == 2


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
    for name in CUDA_MODULES["pycuda"] + CUDA_MODULES["cuda-python"]:
        monkeypatch.setitem(sys.modules, name, None)
    with pytest.raises(MissingDependencyError, match=r"needs a CUDA binding; install pycuda .* or cuda-python"):
        open_cuda_memory()
    with pytest.raises(MeanlocError, match="unknown CUDA binding 'cupy'"):
        open_cuda_memory(prefer="cupy")


def test_failure_during_warm_up_frees_what_was_allocated(fake_gpu, tmp_path):
    with pytest.raises(MeanlocError, match="TensorRT inference failed"):
        open_backend(write_engine(tmp_path, fail=True))
    assert fake_gpu.trt.contexts and fake_gpu.memory.live == {}


def test_defect_5_warm_up_runs_at_the_shape_the_loop_runs(fake_gpu, tmp_path):
    """The loop embeds one frame at a time: warming up at the profile max left batch 1 cold."""
    with open_backend(write_engine(tmp_path, min_batch=1, opt_batch=1, max_batch=8)) as backend:
        shapes = [c[1][0] for c in fake_gpu.trt.contexts[-1].calls if c[0] == "set_input_shape"]
        assert shapes == [1, 1] and backend.max_batch == 8
    with open_backend(write_engine(tmp_path, name="b.engine", opt_batch=1, max_batch=8), warmup_batch=4):
        shapes = [c[1][0] for c in fake_gpu.trt.contexts[-1].calls if c[0] == "set_input_shape"]
        assert shapes == [4, 4]


def test_defect_7_dla_engine_is_deserialized_for_its_core(fake_gpu, tmp_path):
    """IRuntime.DLA_core selects the core a DLA plan runs on; it must be set before deserializing."""
    with open_backend(write_engine(tmp_path, min_batch=1, opt_batch=1, max_batch=1, dla_core=1)) as backend:
        assert fake_gpu.trt.deserialized[-1]["DLA_core"] == 1 and backend.describe()["dla_core"] == 1
    with open_backend(write_engine(tmp_path, name="gpu.engine")):
        assert fake_gpu.trt.deserialized[-1]["DLA_core"] == -1  # GPU engines leave TensorRT's default


def test_defect_10_a_build_while_an_engine_is_open_still_sees_tensorrt_errors(fake_gpu, tmp_path):
    """TensorRT keeps one logger pointer while a runtime lives (#1475): a per-build logger made next to
    an open backend received nothing, so a failed build reported "no error message"."""
    from calib_support import export_nano_onnx

    from meanloc.export.engine_build import build_engine

    onnx_path = export_nano_onnx(tmp_path / "nano.onnx").path
    environment = describe_environment(probe_dla=False)
    with open_backend(write_engine(tmp_path)):
        fake_gpu.trt.build_fails = True
        with pytest.raises(MeanlocError, match=r"failed to build the engine: \[ERROR\].*no kernels found"):
            build_engine(onnx_path, tmp_path / "x.engine", environment=environment, echo=None)
    assert not any(SINGLE_LOGGER_WARNING[40:80] in message for _, message in fake_gpu.trt.logged)
