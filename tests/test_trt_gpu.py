"""Real TensorRT + CUDA tests (marked `gpu`: skipped unless TensorRT imports and a CUDA GPU exists).

Run on a TensorRT host with: pytest -m gpu tests/test_trt_gpu.py
A tiny mean-nano engine is built with TensorRT's Python API from the real ONNX export, then the
TensorRT backend is compared with ONNX Runtime on CPU (the FP32 reference).
"""

import json
import shutil
import types

import numpy as np
import pytest
import torch

from meanloc.errors import ArtifactMismatchError
from meanloc.export.onnx_export import export_onnx
from meanloc.runtime.artifacts import atomic_write_bytes, atomic_write_json, new_manifest, sha256_file
from meanloc.runtime.backends import open_backend
from meanloc.runtime.cuda_device import available_cuda_libraries, open_cuda_memory
from meanloc.runtime.engine_sidecar import ENGINE_SIDECAR_KIND, engine_sidecar_path, recorded_environment
from meanloc.runtime.trt_api import tensorrt_logger
from meanloc.runtime.trt_env import engine_environment
from meanloc.training.checkpoint import save_checkpoint
from meanloc.training.model import build_model, resolve_config

pytestmark = pytest.mark.gpu

MAX_BATCH = 4


def build_test_engine(onnx_path, engine_path, identity, fp16):
    """Build with the name-independent parts of TensorRT's builder API (8.5, 8.6 and 10.x)."""
    import tensorrt as trt

    logger = tensorrt_logger(trt)  # TensorRT keeps one logger per process (#1475)
    builder = trt.Builder(logger)
    major = int(trt.__version__.split(".")[0])
    flags = 0 if major >= 10 else 1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        raise AssertionError([str(parser.get_error(i)) for i in range(parser.num_errors)])
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, 1 << 28)
    if fp16:
        config.set_flag(trt.BuilderFlag.FP16)
    size = identity.preprocess.size
    profile = builder.create_optimization_profile()
    profile.set_shape("images", (1, 3, size, size), (2, 3, size, size), (MAX_BATCH, 3, size, size))
    config.add_optimization_profile(profile)
    plan = builder.build_serialized_network(network, config)
    assert plan is not None, "TensorRT failed to build the test engine"
    atomic_write_bytes(engine_path, bytes(plan))
    precision = "fp16" if fp16 else "fp32"
    sidecar = new_manifest(
        ENGINE_SIDECAR_KIND,
        identity=identity.to_dict(),
        precision=precision,
        engine_sha256=sha256_file(engine_path),
        environment=recorded_environment(engine_environment(probe_dla=False)),
        profile={"min": 1, "opt": 2, "max": MAX_BATCH},
    )
    atomic_write_json(engine_sidecar_path(str(engine_path)), sidecar)
    return str(engine_path)


@pytest.fixture(scope="module")
def nano(tmp_path_factory):
    folder = tmp_path_factory.mktemp("trt")
    torch.manual_seed(3)
    config = resolve_config("mean-nano")
    checkpoint = folder / "nano.pt"
    save_checkpoint(checkpoint, build_model(config).eval(), config)
    onnx_path = folder / "nano.onnx"
    export_onnx(checkpoint, onnx_path, parity=False)
    with open_backend(str(onnx_path), providers=["cpu"]) as reference:
        identity = reference.identity
    engines = {
        precision: build_test_engine(onnx_path, folder / f"nano.{precision}.engine", identity, precision == "fp16")
        for precision in ("fp32", "fp16")
    }
    return types.SimpleNamespace(onnx=str(onnx_path), engines=engines, size=config.img_size)


def _batch(count, size):
    return np.random.default_rng(0).normal(size=(count, 3, size, size)).astype(np.float32)


@pytest.mark.parametrize("binding", ["pycuda", "cuda-python"])
@pytest.mark.parametrize(("precision", "min_cosine"), [("fp32", 0.999), ("fp16", 0.99)])
def test_engine_matches_onnxruntime(nano, binding, precision, min_cosine):
    if binding not in available_cuda_libraries():
        pytest.skip(f"{binding} is not installed")
    batch = _batch(MAX_BATCH + 2, nano.size)  # also exercises splitting past the profile max
    with open_backend(nano.onnx, providers=["cpu"]) as reference:
        expected = reference.embed(batch)
    with open_backend(nano.engines[precision], memory=open_cuda_memory(prefer=binding)) as engine:
        got = engine.embed(batch)
        timings = engine.stage_timings()
        assert engine.identity.precision == precision
        engine.identity.check_compatible(reference.identity, "engine vs ONNX")
    cosine = np.sum(got * expected, axis=1)
    assert got.shape == expected.shape and cosine.min() >= min_cosine, cosine
    assert set(timings) == {"h2d", "inference", "d2h"} and timings["inference"] > 0


def test_engine_sidecar_for_another_tensorrt_is_refused_here(nano, tmp_path):
    engine = tmp_path / "other.engine"
    shutil.copyfile(nano.engines["fp32"], engine)
    with open(engine_sidecar_path(nano.engines["fp32"])) as handle:
        sidecar = json.load(handle)
    sidecar["environment"]["tensorrt_version"] = "8.5.2.2"
    atomic_write_json(engine_sidecar_path(str(engine)), sidecar)
    with pytest.raises(ArtifactMismatchError, match=r"engine built for TensorRT 8\.5\.2\.2"):
        open_backend(str(engine))


def test_engine_from_the_export_builder_loads_and_matches(nano, tmp_path):
    """The sidecar written by `meanloc export engine` is the one this backend checks."""
    from meanloc.export.engine_build import build_engine

    result = build_engine(nano.onnx, tmp_path / "built.engine", precision="fp16", max_batch=MAX_BATCH, echo=None)
    batch = _batch(3, nano.size)
    with open_backend(nano.onnx, providers=["cpu"]) as reference, open_backend(str(result.engine_path)) as engine:
        assert engine.identity.precision == "fp16" and engine.max_batch == MAX_BATCH
        cosine = np.sum(engine.embed(batch) * reference.embed(batch), axis=1)
    assert cosine.min() >= 0.99, cosine
