"""Real TensorRT engines from a mean-nano ONNX, compared with ONNX Runtime FP32.

Run on a TensorRT host with one command:  pytest -m gpu tests/test_export_engine_gpu.py
(skipped automatically where TensorRT or a CUDA GPU is missing; see tests/conftest.py).

Gates (deployment.md §6): mean cosine to the FP32 embeddings >= 0.99 for FP16 and >= 0.97 for
INT8, on held-out aerial-like images preprocessed by the runtime. INT8 implicit uses the cache
made on the CPU by `meanloc calibrate`'s pipeline (with the header of the installed TensorRT);
INT8 explicit uses its Q/DQ model. Opset 16 is used on TensorRT 8.5, which cannot parse
LayerNormalization.
"""

import re
from types import SimpleNamespace

import cv2
import numpy as np
import onnxruntime as ort
import pytest
import torch

from meanloc.export.engine_build import build_engine
from meanloc.export.onnx_export import export_model_onnx
from meanloc.export.parity import synthetic_aerial_image
from meanloc.runtime.identity import ModelIdentity
from meanloc.runtime.preprocess import PreprocessSpec, preprocess_batch
from meanloc.training.model import build_model, resolve_config

pytestmark = pytest.mark.gpu

GATES = {"fp32": 0.9999, "fp16": 0.99, "int8-implicit": 0.97, "int8-explicit": 0.97}


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory):
    trt = pytest.importorskip("tensorrt")
    from meanloc.calibration.calibset import from_folder
    from meanloc.calibration.pipeline import calibrate

    major, minor = (int(p) for p in re.findall(r"\d+", trt.__version__)[:2])
    opset = 16 if (major, minor) < (8, 6) else 17
    folder = tmp_path_factory.mktemp("gpu")
    torch.manual_seed(0)
    model = build_model(resolve_config("mean-nano")).eval()
    spec = PreprocessSpec(size=64)
    identity = ModelIdentity("cd" * 32, "mean-nano", 128, spec)
    onnx_path = export_model_onnx(model, identity, folder / "nano.onnx", opset=opset).path

    images = folder / "calib"
    images.mkdir()
    rng = np.random.default_rng(0)
    for index in range(64):
        cv2.imwrite(str(images / f"{index:03d}.png"), synthetic_aerial_image(rng, 96))
    calib_set = from_folder(images, spec, num_images=64, batch_size=8)
    calibration = calibrate(
        onnx_path, calib_set, folder / "int8", trt_version=trt.__version__, progress=False
    )

    held_out_rng = np.random.default_rng(1)
    batch = preprocess_batch([synthetic_aerial_image(held_out_rng, 96) for _ in range(16)], spec)
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    reference = session.run(None, {"images": batch})[0]
    return SimpleNamespace(
        onnx=onnx_path, calibration=calibration, batch=batch, reference=reference, opset=opset
    )


@pytest.mark.parametrize("precision", list(GATES))
def test_engine_embeddings_match_onnxruntime_fp32(artifacts, tmp_path, precision):
    from meanloc.runtime.backends import open_backend

    onnx_path = artifacts.calibration.qdq_trt if precision == "int8-explicit" else artifacts.onnx
    cache = artifacts.calibration.cache if precision == "int8-implicit" else None
    result = build_engine(
        onnx_path,
        tmp_path / f"{precision}.engine",
        precision=precision,
        min_batch=1,
        opt_batch=8,
        max_batch=16,
        calibration_cache=cache,
        timing_cache=tmp_path / "timing.cache",
        echo=None,
    )
    assert result.sidecar.precision == precision
    if precision.startswith("int8"):  # IEngineInspector saw INT8 layers on the real thing
        report = result.sidecar.int8_layers
        assert report["detailed"] and report["int8_layers"] > 0, report
        print(f"{precision}: {report}")
    with open_backend(str(result.engine_path)) as backend:
        assert backend.identity.precision == precision
        embeddings = backend.embed(artifacts.batch)
        single = backend.embed(artifacts.batch[:1])
    cosine = (embeddings * artifacts.reference).sum(axis=1)
    print(
        f"{precision} (opset {artifacts.opset}): cosine to ORT FP32 mean {cosine.mean():.5f} min {cosine.min():.5f}"
    )
    assert cosine.mean() >= GATES[precision]
    np.testing.assert_allclose(single[0], embeddings[0], atol=2e-2)  # batch 1 and batch 16 agree


def test_identical_engine_build_is_reused(artifacts, tmp_path):
    first = build_engine(
        artifacts.onnx, tmp_path / "a.engine", precision="fp16", timing_cache=None, echo=None
    )
    second = build_engine(
        artifacts.onnx, tmp_path / "a.engine", precision="fp16", timing_cache=None, echo=None
    )
    assert not first.reused and second.reused
    assert second.sidecar.engine_sha256 == first.sidecar.engine_sha256
