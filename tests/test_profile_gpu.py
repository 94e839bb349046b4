"""`meanloc profile --engine X.engine` on a TensorRT host, with no code change (issue 6).

Run with `python -m pytest -m gpu tests/test_profile_gpu.py`; skipped without TensorRT and CUDA.
The engine's H2D / inference / D2H split must come from the backend's CUDA events.
"""

import json

import pytest
import torch

from meanloc.cli import main
from meanloc.export.engine_build import build_engine
from meanloc.export.onnx_export import export_model_onnx
from meanloc.runtime.identity import ModelIdentity
from meanloc.runtime.preprocess import PreprocessSpec
from meanloc.training.model import build_model, resolve_config

pytestmark = pytest.mark.gpu


def test_profile_engine_reports_device_stage_split(tmp_path):
    torch.manual_seed(0)
    identity = ModelIdentity("ef" * 32, "mean-nano", 128, PreprocessSpec(size=64))
    onnx_path = export_model_onnx(build_model(resolve_config("mean-nano")).eval(), identity, tmp_path / "nano.onnx").path
    engine = build_engine(onnx_path, tmp_path / "nano.fp16.engine", precision="fp16", max_batch=4).engine_path
    assert main(["profile", "--engine", str(engine), "--model", str(onnx_path), "--batch", "1,4",
                 "--iterations", "50", "--out", str(tmp_path / "profile")]) == 0
    report = json.loads((tmp_path / "profile" / "report.json").read_text())
    engine_rows = [r for r in report["results"] if r["backend"]["backend"] == "tensorrt"]
    assert [r["batch_size"] for r in engine_rows] == [1, 4]
    for row in engine_rows:
        assert {"h2d", "inference", "d2h"} <= set(row["stages"])
