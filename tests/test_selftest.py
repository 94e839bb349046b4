"""`meanloc doctor --selftest`: its built-in model, its CPU part for real, its TensorRT part against the fake.

Here (no TensorRT) the command runs the ONNX Runtime twins and writes the report, and says in one
line why the TensorRT part was skipped. The TensorRT part is driven through the faithful fake
(tests/export_fake_tensorrt.py, which computes a plan's ONNX with ONNX Runtime) to check that all four
precisions are built by the real builder and run by the real backend, and that failures land in the
report with TensorRT's log lines. On a TensorRT host, `pytest -m gpu` runs it for real.
"""

import importlib.util
import json
import subprocess
import sys

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from fake_cuda_bindings import install_fake_gpu
from onnx import numpy_helper

from meanloc.errors import EXIT_BAD_INPUT
from meanloc.export.onnx_graph import decomposed_layernorms, l2_normalisation_nodes
from meanloc.runtime.onnx_contract import FP32_NODES_KEY, onnx_metadata
from meanloc.runtime.onnx_file import load_embedding_onnx
from meanloc.selftest import PRECISIONS, passed, run_selftest
from meanloc.selftest_model import build_selftest_model, sample_inputs


@pytest.mark.parametrize("opset", [16, 17])
def test_built_in_model_is_valid_onnx_that_onnxruntime_and_numpy_agree_on(opset, tmp_path):
    model = build_selftest_model(opset)
    fp32, qdq = onnx.load_model_from_string(model.fp32_onnx), onnx.load_model_from_string(model.qdq_onnx)
    onnx.checker.check_model(fp32, full_check=True)
    onnx.checker.check_model(qdq, full_check=True)
    (tmp_path / "m.onnx").write_bytes(model.fp32_onnx)
    loaded = load_embedding_onnx(tmp_path / "m.onnx")  # the meanloc interface and identity
    assert loaded.identity == model.identity.__class__(**{**model.identity.__dict__, "artifact_sha256": loaded.sha256})
    assert loaded.opset == opset
    marked = json.loads(onnx_metadata(fp32)[FP32_NODES_KEY])
    assert set(l2_normalisation_nodes(fp32)) <= set(marked)
    assert (len(decomposed_layernorms(fp32)) == 1) is (opset == 16)
    images = sample_inputs(6, seed=5)
    reference = model.reference(images)
    assert np.allclose(np.linalg.norm(reference, axis=1), 1.0, atol=1e-5)
    for data, minimum in ((model.fp32_onnx, 0.99999), (model.qdq_onnx, 0.97)):
        out = ort.InferenceSession(data, providers=["CPUExecutionProvider"]).run(None, {"images": images})[0]
        assert np.sum(out * reference, axis=1).min() > minimum
    # TensorRT's Q/DQ layout: FP32 weights behind their own Q->DQ pair, per channel (issue 15, defect 2).
    initializers = {init.name: numpy_helper.to_array(init) for init in qdq.graph.initializer}
    producers = {out: node for node in qdq.graph.node for out in node.output}
    for node in qdq.graph.node:
        if node.op_type in ("Conv", "MatMul"):
            dq = producers[node.input[1]]
            assert dq.op_type == "DequantizeLinear" and producers[dq.input[0]].op_type == "QuantizeLinear"
            assert initializers[producers[dq.input[0]].input[0]].dtype == np.float32
            assert initializers[dq.input[1]].size > 1
            assert producers[node.input[0]].op_type == "DequantizeLinear"


@pytest.mark.skipif(importlib.util.find_spec("tensorrt") is not None, reason="TensorRT is installed here")
def test_selftest_runs_its_cpu_part_here_and_says_why_tensorrt_was_skipped(tmp_path):
    out = tmp_path / "report.json"
    out.write_text("an older report")  # replaced (with --overwrite) only once the new one is complete
    result = subprocess.run(
        [sys.executable, "-m", "meanloc", "doctor", "--selftest", "--out", str(out), "--iterations", "5", "--overwrite"],
        capture_output=True, text=True, timeout=300, check=False,
    )
    assert result.returncode == 0, result.stderr
    skip_lines = [line for line in result.stdout.splitlines() if "tensorrt" in line]
    assert skip_lines == ["  tensorrt    skipped: TensorRT is not installed"]
    report = json.loads(out.read_text())
    assert report["kind"] == "meanloc-selftest" and report["tensorrt"] == {
        "status": "skipped", "reason": "TensorRT is not installed"}
    assert report["onnxruntime"]["fp32"]["cosine_to_fp32"]["min"] > 0.99999
    assert report["onnxruntime"]["int8-qdq"]["cosine_to_fp32"]["mean"] > 0.97
    latency = report["onnxruntime"]["fp32"]["latency_ms"]
    assert latency["count"] == 5 and latency["median_ms"] <= latency["p90_ms"] <= latency["p99_ms"]
    assert report["versions"]["onnxruntime_version"] == ort.__version__ and "tensorrt_version" in report["versions"]
    assert report["summary"][-1] == "  result: PASS"
    assert [p.name for p in tmp_path.iterdir()] == ["report.json"]  # no temporary file left behind


def test_selftest_options_are_checked(tmp_path):
    from meanloc.cli import main

    assert main(["doctor", "--selftest", "--qdq-onnx", "x.onnx", "--out", str(tmp_path / "r.json")]) == 2
    assert main(["doctor", "--selftest", "--onnx", str(tmp_path / "missing.onnx"), "--out", str(tmp_path / "r.json")]) == 2
    assert not (tmp_path / "r.json").exists()


def test_selftest_never_replaces_an_earlier_report_without_overwrite(tmp_path, capsys):
    from meanloc.cli import main

    earlier = tmp_path / "meanloc-selftest.json"
    earlier.write_text("the report sent with a question")
    assert main(["doctor", "--selftest", "--out", str(earlier), "--iterations", "1"]) == EXIT_BAD_INPUT
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and str(earlier) in err and "--overwrite" in err, err
    assert earlier.read_text() == "the report sent with a question"
    assert [p.name for p in tmp_path.iterdir()] == [earlier.name]


@pytest.fixture
def fake_device(monkeypatch):
    return lambda version="10.3.0.26", **behaviour: install_fake_gpu(monkeypatch, version, **behaviour)


@pytest.mark.parametrize(("version", "opset"), [("8.5.2.2", 16), ("10.3.0.26", 17)])
def test_selftest_builds_and_runs_every_precision_through_the_real_builder_and_backend(
    fake_device, tmp_path, version, opset
):
    fake = fake_device(version)
    lines = []
    report = run_selftest(out=str(tmp_path / "r.json"), iterations=5, echo=lines.append)
    assert report["model"]["opset"] == opset  # TensorRT 8.5 gets the decomposed-LayerNorm form
    engines = report["tensorrt"]["precisions"]
    assert list(engines) == list(PRECISIONS) and passed(report), lines
    for precision, entry in engines.items():
        assert entry["status"] == "ok", (precision, entry)
        assert entry["engine_bytes"] > 0 and entry["cosine_to_fp32"]["mean"] > 0.97
        assert entry["cosine_to_onnxruntime_twin"]["min"] > 0.9999  # the fake computes with the same ONNX
        assert set(entry["latency_ms"]["device_ms"]) == {"h2d", "inference", "d2h"}
    assert engines["int8-implicit"]["int8_layers"]["in_int8"] == engines["int8-implicit"]["int8_layers"]["quantizable"]
    assert engines["int8-explicit"]["int8_layers"]["in_int8"] > 0
    assert fake.last_build is not None and json.loads((tmp_path / "r.json").read_text())["summary"] == report["summary"]


def test_selftest_records_what_failed_with_the_tensorrt_log(fake_device, tmp_path, capsys):
    from meanloc.cli import main

    fake_device(build_fails=True)
    out = tmp_path / "r.json"
    assert main(["doctor", "--selftest", "--out", str(out), "--iterations", "3"]) == 1
    report = json.loads(out.read_text())
    for entry in report["tensorrt"]["precisions"].values():
        assert entry["status"] == "failed" and "no kernels found" in entry["error"]
        assert any("no kernels found" in line for line in entry["tensorrt_log"])
    assert report["summary"][-1].startswith("  result: FAIL")
    assert "selftest failed: send" in capsys.readouterr().err


@pytest.mark.gpu
def test_gpu_selftest_passes_on_this_tensorrt_host(tmp_path):
    """The real thing: every precision builds and runs here and meets the cosine gates."""
    report = run_selftest(out=str(tmp_path / "selftest.json"), iterations=20)
    assert report["tensorrt"]["status"] == "ran" and passed(report), "\n".join(report["summary"])


def test_selftest_skips_an_unsupported_tensorrt_in_one_line(fake_device, tmp_path):
    fake_device("11.0.0.1")
    report = run_selftest(out=str(tmp_path / "r.json"), iterations=2, echo=lambda line: None)
    assert report["tensorrt"]["status"] == "skipped" and "TensorRT 11.0.0.1 is not supported" in report["tensorrt"]["reason"]
    assert report["onnxruntime"]["fp32"]["status"] == "ok" and passed(report)
