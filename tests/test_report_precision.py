"""`meanloc report precision` on a real mean-nano ONNX and its INT8 models (ORT on CPU)."""

import importlib.util
import json

import numpy as np
import onnxruntime as ort
import pytest
from calib_support import export_nano_onnx, write_university_tree

from meanloc.calibration.calibset import from_dataset
from meanloc.calibration.pipeline import calibrate
from meanloc.calibration.precision_report import build_precision_report
from meanloc.cli import main
from meanloc.errors import ArtifactMismatchError, MeanlocError
from meanloc.runtime.artifacts import new_manifest
from meanloc.runtime.engine_sidecar import ENGINE_SIDECAR_KIND
from meanloc.runtime.images import read_image
from meanloc.runtime.preprocess import PreprocessSpec, preprocess_batch
from meanloc.training.data.splits import load_eval_split


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("report")
    exported = export_nano_onnx(root / "nano.onnx")
    data = write_university_tree(root / "data", classes=5, drones=2)
    calib_set = from_dataset(data, exported.identity.preprocess, "train", num_images=8, batch_size=4)
    outputs = calibrate(exported.path, calib_set, root / "calib", method="minmax", progress=False)
    report = build_precision_report(exported.path, data, calib_dir=outputs.folder, batch_size=4)
    return exported, data, outputs, report


def _fp32_recall_at_1(onnx_path, data_root):
    """R@1 drone->satellite computed here with plain numpy, independent of the report's metrics code."""
    split = load_eval_split(data_root, "university", "d2s", "val")
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    spec = PreprocessSpec(size=session.get_inputs()[0].shape[2])

    def embed(paths):
        batch = preprocess_batch([read_image(p) for p in paths], spec)
        return session.run(None, {"images": batch})[0]

    best = np.argmax(embed(split.query_paths) @ embed(split.gallery_paths).T, axis=1)
    return 100.0 * np.mean(split.gallery_labels[best] == split.query_labels)


def test_report_has_a_row_per_cpu_precision_against_fp32(setup):
    exported, data, _, report = setup
    rows = {row["label"]: row for row in report["rows"]}
    assert list(rows) == ["ORT FP32", "ORT INT8 (CPU flavour)", "ORT Q/DQ (TensorRT flavour)"]
    assert [row["precision"] for row in rows.values()] == ["fp32", "int8-cpu", "int8-qdq-trt"]
    fp32 = rows["ORT FP32"]
    assert fp32["cosine_min"] == pytest.approx(1.0, abs=1e-6) and fp32["delta_R@1"] == 0.0
    assert fp32["R@1"] == pytest.approx(_fp32_recall_at_1(exported.path, data))
    for row in report["rows"][1:]:
        assert 0.98 < row["cosine_min"] <= row["cosine_mean"] <= 1.0 + 1e-6
        assert row["delta_R@1"] == pytest.approx(row["R@1"] - fp32["R@1"])
    assert report["evaluation"]["queries"] == 10 and report["evaluation"]["gallery"] == 5


@pytest.mark.skipif(importlib.util.find_spec("tensorrt") is not None, reason="TensorRT is installed here")
def test_engines_are_listed_as_skipped_without_tensorrt(setup, tmp_path):
    exported, data, _, _ = setup
    engine = tmp_path / "model.fp16.engine"
    engine.write_bytes(b"plan")
    with pytest.raises(ArtifactMismatchError, match="no sidecar manifest"):  # not a meanloc engine at all
        build_precision_report(exported.path, data, engines=[engine], batch_size=4)
    sidecar = new_manifest(ENGINE_SIDECAR_KIND, identity=exported.identity.to_dict(), environment={})
    (tmp_path / "model.fp16.engine.json").write_text(json.dumps(sidecar))
    report = build_precision_report(exported.path, data, engines=[engine], batch_size=4)
    assert [row["label"] for row in report["rows"]] == ["ORT FP32"]
    assert report["skipped"] == [
        {
            "label": "TensorRT model.fp16.engine",
            "path": str(engine),
            "reason": "TensorRT is not installed here",
        }
    ]


def test_cli_writes_json_and_markdown(setup, tmp_path, capsys):
    exported, data, outputs, _ = setup
    out = tmp_path / "reports" / "precision.json"
    args = ["report", "precision", "--onnx", str(exported.path), "--calib-dir", str(outputs.folder)]
    assert main([*args, "--data", str(data), "--batch", "4", "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    table = out.with_suffix(".md").read_text()
    assert report["kind"] == "precision_report" and len(report["rows"]) == 3
    for row in report["rows"]:
        assert f"| {row['label']} | {row['precision']} | {row['cosine_mean']:.5f} |" in table
    assert "ORT Q/DQ (TensorRT flavour)" in capsys.readouterr().out


def test_cli_bad_inputs_are_one_line_errors(setup, tmp_path, capsys):
    exported, data, outputs, _ = setup
    other = export_nano_onnx(tmp_path / "other.onnx", seed=1)
    base = ["report", "precision", "--data", str(data), "--out", str(tmp_path / "r.json")]
    cases = [
        (["--onnx", str(other.path), "--calib-dir", str(outputs.folder)], 3, "computed for another ONNX"),
        (["--onnx", str(outputs.qdq_trt)], 2, "the reference must be the FP32 ONNX"),
        (["--onnx", str(exported.path), "--engines", str(tmp_path / "missing.engine")], 2, "model not found"),
        (["--onnx", str(exported.path), "--calib-dir", str(tmp_path)], 2, "not a calibration folder"),
    ]
    for extra, code, message in cases:
        assert main(base + extra) == code, message
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1, err
    assert not (tmp_path / "r.json").exists()


@pytest.fixture(scope="module")
def pose_aware(tmp_path_factory):
    """A pose-aware mean-nano ONNX and the tiny synthetic dataset (drone views with pose sidecars)."""
    from meanloc.training.data.query_images import dataset_query_view
    from meanloc.training.data.synth.writer import preset_config, synthetic_sources, write_dataset

    root = tmp_path_factory.mktemp("pose")
    config = preset_config("tiny", seed=3)
    data = root / "ds"
    write_dataset(data, config, *synthetic_sources(config))
    view = dataset_query_view(data, pose_aware=True)
    exported = export_nano_onnx(root / "nano.onnx", query_view=view)
    return exported, data


def test_pose_aware_models_are_judged_on_rectified_queries(pose_aware):
    from meanloc.training.data.query_images import read_query_image

    exported, data = pose_aware
    assert exported.identity.query_view.rectified
    report = build_precision_report(exported.path, data, dataset="synthetic", batch_size=8)
    split = load_eval_split(data, "synthetic", "d2s", "val")
    session = ort.InferenceSession(str(exported.path), providers=["CPUExecutionProvider"])
    spec = exported.identity.preprocess

    def embed(images):
        return session.run(None, {"images": preprocess_batch(images, spec)})[0]

    # R@1 recomputed with plain numpy from queries rectified as the runtime rectifies them.
    queries = embed([read_query_image(p, exported.identity.query_view, spec.size) for p in split.query_paths])
    gallery = embed([read_image(p) for p in split.gallery_paths])
    best = np.argmax(queries @ gallery.T, axis=1)
    expected = 100.0 * np.mean(split.gallery_labels[best] == split.query_labels)
    assert report["rows"][0]["R@1"] == pytest.approx(expected)


def test_a_pose_aware_model_on_data_without_poses_is_one_clear_error(pose_aware, setup):
    pose_model, _ = pose_aware
    _, university, _, _ = setup
    with pytest.raises(MeanlocError, match="no pose sidecar") as error:
        build_precision_report(pose_model.path, university, batch_size=4)
    assert "\n" not in str(error.value)
