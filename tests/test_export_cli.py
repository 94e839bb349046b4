"""`meanloc export onnx|engine` end to end in-process: outputs, and one-line errors for bad input."""

import json
import subprocess
import sys

import onnx
import pytest
import torch
from export_fake_tensorrt import FakeTensorRTForWiringTests
from fake_cuda_bindings import install_fake_gpu

from meanloc.cli import main
from meanloc.errors import EXIT_ARTIFACT_MISMATCH, EXIT_MISSING_DEPENDENCY
from meanloc.training.checkpoint import save_checkpoint
from meanloc.training.model import build_model, resolve_config


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """A nano checkpoint and its opset-16 ONNX, made through the CLI."""
    folder = tmp_path_factory.mktemp("cli")
    torch.manual_seed(0)
    config = resolve_config("mean-nano")
    save_checkpoint(folder / "nano.pt", build_model(config), config)
    code = main(
        [
            "export",
            "onnx",
            "--checkpoint",
            str(folder / "nano.pt"),
            "--out",
            str(folder / "nano.onnx"),
            "--opset",
            "16",
        ]
    )
    assert code == 0
    return folder


def _error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    return err[0]


def test_export_onnx_writes_model_and_reports_parity(exported, capsys, tmp_path):
    code = main(
        ["export", "onnx", "--checkpoint", str(exported / "nano.pt"), "--out", str(tmp_path / "m.onnx")]
    )
    out = capsys.readouterr().out
    assert code == 0 and "parity vs PyTorch PASS" in out and "opset 17" in out
    model = onnx.load(tmp_path / "m.onnx")
    props = {p.key: p.value for p in model.metadata_props}
    assert props["meanloc.opset"] == "17" and props["meanloc.preset"] == "mean-nano"
    assert (exported / "nano.onnx").exists()

    code = main(
        [
            "export",
            "onnx",
            "--checkpoint",
            str(exported / "nano.pt"),
            "--out",
            str(tmp_path / "n.onnx"),
            "--no-parity",
            "--no-simplify",
        ]
    )
    assert code == 0 and "parity" not in capsys.readouterr().out


def test_export_onnx_bad_checkpoint_and_unwritable_output(exported, capsys, tmp_path):
    broken = tmp_path / "broken.pt"
    broken.write_bytes(b"PK\x03\x04 truncated")
    assert main(["export", "onnx", "--checkpoint", str(broken), "--out", str(tmp_path / "x.onnx")]) == 2
    assert "truncated or not a PyTorch checkpoint" in _error_line(capsys)

    blocker = tmp_path / "file"
    blocker.write_text("x")
    assert (
        main(["export", "onnx", "--checkpoint", str(exported / "nano.pt"), "--out", str(blocker / "x.onnx")])
        == 2
    )
    assert "cannot create output folder" in _error_line(capsys)


def test_export_engine_without_tensorrt_says_how_to_install(exported, capsys, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorrt", None)
    code = main(
        ["export", "engine", "--onnx", str(exported / "nano.onnx"), "--out", str(tmp_path / "m.engine")]
    )
    assert code == EXIT_MISSING_DEPENDENCY and "TensorRT is not installed" in _error_line(capsys)


def test_export_engine_refuses_corrupt_and_foreign_onnx(exported, capsys, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorrt", FakeTensorRTForWiringTests("10.3.0.26"))
    corrupt = tmp_path / "corrupt.onnx"
    corrupt.write_bytes((exported / "nano.onnx").read_bytes()[:3000])
    assert main(["export", "engine", "--onnx", str(corrupt), "--out", str(tmp_path / "a.engine")]) == 2
    assert "corrupt.onnx" in _error_line(capsys)

    foreign = onnx.load(exported / "nano.onnx")
    foreign.graph.input[0].name = "input"
    for node in foreign.graph.node:
        node.input[:] = ["input" if name == "images" else name for name in node.input]
    onnx.save(foreign, tmp_path / "foreign.onnx")
    assert (
        main(
            [
                "export",
                "engine",
                "--onnx",
                str(tmp_path / "foreign.onnx"),
                "--out",
                str(tmp_path / "b.engine"),
            ]
        )
        == EXIT_ARTIFACT_MISMATCH  # a foreign ONNX is exit 3 in every command
    )
    assert "not a meanloc embedder" in _error_line(capsys)
    assert not list(tmp_path.glob("*.engine*"))


def test_export_engine_builds_then_reuses_and_refuses_what_trt_cannot_build(
    exported, capsys, tmp_path, monkeypatch
):
    install_fake_gpu(monkeypatch, "8.5.2.2")  # with the CUDA binding whose GPU probe the sidecar records
    args = [
        "export",
        "engine",
        "--onnx",
        str(exported / "nano.onnx"),
        "--out",
        str(tmp_path / "m.engine"),
        "--precision",
        "fp16",
        "--max-batch",
        "4",
        "--timing-cache",
        str(tmp_path / "timing.cache"),
        "--quiet",
    ]
    assert main(args) == 0
    assert "fp16 engine, batch 1/1/4" in capsys.readouterr().out
    sidecar = json.loads((tmp_path / "m.engine.json").read_text())
    assert sidecar["environment"]["tensorrt_version"] == "8.5.2.2" and (tmp_path / "timing.cache").exists()
    assert sidecar["environment"]["gpu_name"] == "Fake GPU"
    assert main(args) == 0 and "reused identical build" in capsys.readouterr().out

    assert main(args[:-1] + ["--opt-level", "4"]) == 2
    assert "--opt-level needs TensorRT >= 8.6" in _error_line(capsys)

    monkeypatch.setitem(sys.modules, "tensorrt", FakeTensorRTForWiringTests("11.0.0.1"))
    cache = tmp_path / "c.cache"
    cache.write_text("TRT-100300-EntropyCalibration2\nimages: 3c010204\n")
    assert (
        main(
            args[:4]
            + [
                "--out",
                str(tmp_path / "i.engine"),
                "--precision",
                "int8-implicit",
                "--calib-cache",
                str(cache),
            ]
        )
        == 2
    )
    assert "TensorRT 11.0.0.1 is not supported" in _error_line(capsys)


def test_help_does_not_import_torch_or_tensorrt():
    code = (
        "import sys\n"
        "from meanloc.cli import main\n"
        "try:\n    main(['export', 'engine', '--help'])\n"
        "except SystemExit:\n    pass\n"
        "print(sorted(m for m in ('torch', 'tensorrt', 'onnx') if m in sys.modules))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert "--calib-cache" in result.stdout and result.stdout.strip().endswith("[]")
