"""`meanloc calibrate` on a real mean-nano ONNX: one ORT range pass -> TensorRT cache, TensorRT
Q/DQ model and CPU INT8 model, all consistent with each other and with the FP32 graph."""

import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from calib_support import export_nano_onnx, write_folder_tree, write_university_tree
from onnx import TensorProto, helper, numpy_helper

from meanloc.calibration.calibset import from_dataset, from_folder
from meanloc.calibration.pipeline import calibrate, open_calibration_dir
from meanloc.calibration.qdq import quantize_for_cpu
from meanloc.calibration.ranges import collect_ranges
from meanloc.cli import main
from meanloc.errors import EXIT_ARTIFACT_MISMATCH, EXIT_BAD_INPUT, ArtifactMismatchError, MeanlocError
from meanloc.runtime.calibration_cache import (
    INT8_OP_TYPES,
    check_cache_names,
    int8_activation_names,
    read_calibration_cache,
    value_names,
)
from meanloc.runtime.identity import ModelIdentity
from meanloc.runtime.preprocess import PreprocessSpec


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    return write_university_tree(tmp_path_factory.mktemp("data"), classes=4, drones=3)


@pytest.fixture(scope="module")
def calibrated(tmp_path_factory, data_root):
    root = tmp_path_factory.mktemp("calib")
    exported = export_nano_onnx(root / "nano.onnx")
    calib_set = from_dataset(data_root, exported.identity.preprocess, "train", num_images=12, batch_size=4)
    outputs = calibrate(
        exported.path, calib_set, root / "out", method="minmax", trt_version="10.3", progress=False
    )
    return exported, calib_set, outputs


def _session(path):
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def _embed(path, batches):
    session = _session(path)
    return np.concatenate([session.run(None, {"images": batch})[0] for batch in batches])


def test_folder_holds_every_artifact_and_a_manifest_describing_them(calibrated):
    exported, calib_set, outputs = calibrated
    assert sorted(p.name for p in outputs.folder.iterdir()) == [
        "calibration.cache",
        "calibration.cache.json",
        "model.int8-cpu.onnx",
        "model.int8-qdq-trt.onnx",
    ]
    manifest = open_calibration_dir(outputs.folder, exported.sha256).manifest
    assert manifest["onnx_sha256"] == exported.sha256 and manifest["method"] == "minmax"
    assert manifest["calibration_set"]["num_images"] == calib_set.num_images == 12
    assert manifest["header"] == "TRT-100300-EntropyCalibration2"
    assert ModelIdentity.from_dict(manifest["identity"]) == ModelIdentity.from_dict(
        exported.identity.to_dict()
    )
    # Each artifact's quantization settings, as its own metadata has them.
    for precision, entry in manifest["artifacts"].items():
        metadata = _session(outputs.folder / entry["file"]).get_modelmeta().custom_metadata_map
        assert entry["quantization"] == json.loads(metadata["meanloc.quantization"])
        assert entry["quantization"]["precision"] == precision
    assert manifest["artifacts"]["int8-cpu"]["quantization"]["reduce_range"] is True
    fallback = manifest["artifacts"]["int8-qdq-trt"]["quantization"]["fp32_fallback"]
    assert fallback["eval_images"] == 12 and fallback["cosine"] >= fallback["cosine_all_int8"]


def test_cache_covers_the_onnx_activations_with_amax_of_what_the_model_computes(calibrated):
    exported, calib_set, outputs = calibrated
    cache = read_calibration_cache(outputs.cache)
    model = onnx.load(str(exported.path))
    check_cache_names(cache, value_names(model), int8_activation_names(model), "cache")
    batches = list(calib_set.batches())
    # Independent of ORT's calibrator: the input and output ranges straight from the data / FP32 run.
    assert cache.amax()["images"] == pytest.approx(max(np.abs(b).max() for b in batches), rel=1e-6)
    assert cache.amax()["embedding"] == pytest.approx(np.abs(_embed(exported.path, batches)).max(), rel=1e-6)


def test_tensorrt_qdq_model_follows_tensorrts_rules_and_uses_the_same_ranges(calibrated):
    """Defect 2 of issue 15: TensorRT 8.x takes FP32 weights behind their own Q->DQ pair (8.6 developer
    guide, "Quantized Weights") and a dedicated pair per quantizable input, not ORT's default
    INT8-initializer -> DequantizeLinear."""
    exported, _, outputs = calibrated
    model = onnx.load(str(outputs.qdq_trt))
    initializers = {init.name: numpy_helper.to_array(init) for init in model.graph.initializer}
    consumers = {}
    for node in model.graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    producers = {out: node for node in model.graph.node for out in node.output}
    cache_scales = read_calibration_cache(outputs.cache).scales
    dequantized = [node for node in model.graph.node if node.op_type == "DequantizeLinear"]
    assert dequantized and {n.op_type for n in model.graph.node} >= {"QuantizeLinear", "Conv", "MatMul"}
    weights = 0
    for dq in dequantized:
        # A dedicated pair per Conv/MatMul/Gemm input (a residual Add reading the same activation may
        # share its DQ), never on LayerNorm, Transpose, ...
        receivers = [c.op_type for c in consumers[dq.output[0]]]
        assert sum(r in INT8_OP_TYPES for r in receivers) == 1 and set(receivers) <= {*INT8_OP_TYPES, "Add"}
        assert dq.input[0] not in initializers, "an INT8 weight initializer feeds a DequantizeLinear"
        quantize = producers[dq.input[0]]
        assert quantize.op_type == "QuantizeLinear" and len(consumers[quantize.output[0]]) == 1
        zero_point = initializers[dq.input[2]]
        assert zero_point.dtype == np.int8 and not zero_point.any()  # signed, symmetric
        if quantize.input[0] in initializers:  # a weight: FP32, quantized per output channel by TensorRT
            weights += 1
            assert initializers[quantize.input[0]].dtype == np.float32
            assert initializers[dq.input[1]].size > 1
        else:  # an activation: per tensor, scale = the cache's amax / 127
            scale = float(initializers[dq.input[1]])
            assert scale == pytest.approx(cache_scales[quantize.input[0]], rel=1e-5)
    assert weights == sum(node.op_type in INT8_OP_TYPES for node in model.graph.node)
    assert next(e.version for e in model.opset_import if e.domain in ("", "ai.onnx")) == 17
    props = {p.key: p.value for p in model.metadata_props}
    identity = ModelIdentity.from_onnx_metadata(props, "qdq")
    assert identity.precision == "int8-qdq-trt"
    assert identity.checkpoint_sha256 == exported.identity.checkpoint_sha256
    # The CPU flavour keeps ORT's INT8 weight initializers: ORT folds them into its integer kernels.
    cpu_model = onnx.load(str(outputs.cpu))
    assert any(init.data_type == onnx.TensorProto.INT8 for init in cpu_model.graph.initializer)


def test_both_int8_models_track_fp32_embeddings(calibrated):
    exported, calib_set, outputs = calibrated
    batches = list(calib_set.batches())
    reference = _embed(exported.path, batches)
    for path, precision in ((outputs.qdq_trt, "int8-qdq-trt"), (outputs.cpu, "int8-cpu")):
        embeddings = _embed(path, batches)
        cosine = np.sum(reference * embeddings, axis=1) / np.linalg.norm(embeddings, axis=1)
        assert cosine.min() > 0.98, precision
        assert _session(path).get_modelmeta().custom_metadata_map["meanloc.precision"] == precision
    # The default CPU recipe: every MLP in uint8, every convolution fused to QLinearConv by ORT.
    source = onnx.load(str(exported.path))
    cpu_model = onnx.load(str(outputs.cpu))
    cpu_ops = [node.op_type for node in cpu_model.graph.node]
    assert "MatMul" not in cpu_ops and "Erf" not in cpu_ops
    mlps = [node for node in source.graph.node if node.op_type == "Erf"]
    for op_type in ("QLinearConv", "QLinearSigmoid", "QLinearMul", "MatMulIntegerToFloat"):
        assert cpu_ops.count(op_type) == len(mlps) > 0, op_type
    convs = [node for node in source.graph.node if node.op_type == "Conv"]
    assert len(convs) == cpu_ops.count("Conv")  # each between its own DequantizeLinear and QuantizeLinear
    assert json.loads(_session(outputs.cpu).get_modelmeta().custom_metadata_map["meanloc.quantization"])[
        "mlp_blocks"
    ] == len(mlps)


def test_static_cpu_recipe_quantizes_matmuls_only(calibrated, tmp_path):
    exported, calib_set, _ = calibrated
    ranges = collect_ranges(exported.path, calib_set, "minmax", progress=False)
    out = quantize_for_cpu(
        exported.path, tmp_path / "static.onnx", exported.identity, ranges, recipe="static-u8s8"
    )
    model = onnx.load(str(out))
    consumers = {name: node.op_type for node in model.graph.node for name in node.input}
    quantized = {consumers[node.output[0]] for node in model.graph.node if node.op_type == "DequantizeLinear"}
    assert quantized == {"MatMul"}
    with pytest.raises(MeanlocError, match="needs calibration ranges"):
        quantize_for_cpu(exported.path, tmp_path / "x.onnx", exported.identity, None, recipe="static-u8s8")


def test_entropy_and_percentile_clip_inside_the_minmax_range(calibrated, data_root):
    exported, calib_set, _ = calibrated
    one_batch = from_dataset(data_root, calib_set.spec, "train", num_images=4, batch_size=4)
    minmax = collect_ranges(exported.path, one_batch, "minmax", progress=False).amax()
    for method in ("entropy", "percentile"):
        clipped = collect_ranges(exported.path, one_batch, method, progress=False).amax()
        assert set(clipped) == set(minmax)
        assert all(clipped[name] <= minmax[name] * (1 + 1e-6) + 1e-12 for name in minmax), method
        assert any(clipped[name] < 0.9 * minmax[name] for name in minmax), method


def test_calibration_folder_refuses_changed_files_and_other_onnx(calibrated, tmp_path):
    exported, _, outputs = calibrated
    with pytest.raises(ArtifactMismatchError, match="another ONNX"):
        open_calibration_dir(outputs.folder, "0" * 64)
    copy = tmp_path / "copy"
    copy.mkdir()
    for path in outputs.folder.iterdir():
        (copy / path.name).write_bytes(path.read_bytes())
    (copy / "model.int8-cpu.onnx").write_bytes(b"truncated")
    with pytest.raises(MeanlocError, match="changed since calibration"):
        open_calibration_dir(copy, exported.sha256)
    with pytest.raises(MeanlocError, match="not a calibration folder"):
        open_calibration_dir(tmp_path)


def test_cache_of_one_graph_does_not_pass_for_another(calibrated):
    _, _, outputs = calibrated
    other = _tiny_graph("x")
    with pytest.raises(ArtifactMismatchError, match=r"have no scale.*not in the ONNX"):
        check_cache_names(
            read_calibration_cache(outputs.cache), value_names(other), int8_activation_names(other), "c"
        )


def _tiny_graph(input_name):
    weight = numpy_helper.from_array(np.ones((3, 4), dtype=np.float32), "w")
    graph = helper.make_graph(
        [helper.make_node("MatMul", [input_name, "w"], ["embedding"])],
        "foreign",
        [helper.make_tensor_value_info(input_name, TensorProto.FLOAT, ["N", 3])],
        [helper.make_tensor_value_info("embedding", TensorProto.FLOAT, ["N", 4])],
        [weight],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_cli_writes_the_folder(calibrated, tmp_path, capsys):
    exported, _, _ = calibrated
    images = tmp_path / "images"
    write_folder_tree(images, {"drone": 4, "satellite": 4})
    code = main(
        ["calibrate", "--onnx", str(exported.path), "--images", str(images), "--out", str(tmp_path / "out"),
         "--num-images", "8", "--batch", "4", "--method", "minmax", "--trt-version", "8.5", "--no-progress"]
    )  # fmt: skip
    assert code == 0
    assert "TRT-8502-EntropyCalibration2" in capsys.readouterr().out
    assert read_calibration_cache(tmp_path / "out" / "calibration.cache").version_code == 8502
    assert open_calibration_dir(tmp_path / "out").manifest["artifacts"]["int8-cpu"]["quantization"]["recipe"] == (
        "integer-mlp"
    )


def test_cli_cpu_recipe_option_picks_the_cpu_quantization(calibrated, tmp_path):
    exported, _, _ = calibrated
    images = tmp_path / "images"
    write_folder_tree(images, {"drone": 4, "satellite": 4})
    code = main(
        ["calibrate", "--onnx", str(exported.path), "--images", str(images), "--out", str(tmp_path / "out"),
         "--num-images", "4", "--batch", "4", "--method", "minmax", "--cpu-recipe", "dynamic", "--no-progress"]
    )  # fmt: skip
    assert code == 0
    outputs = open_calibration_dir(tmp_path / "out")
    assert outputs.manifest["artifacts"]["int8-cpu"]["quantization"]["recipe"] == "dynamic"
    assert {"DynamicQuantizeLinear", "MatMulInteger"} <= {n.op_type for n in onnx.load(str(outputs.cpu)).graph.node}


def test_cli_bad_inputs_are_one_line_errors(calibrated, tmp_path, capsys):
    exported, _, _ = calibrated
    images = tmp_path / "images"
    write_folder_tree(images, {"a": 4})
    (tmp_path / "empty").mkdir()
    foreign = tmp_path / "foreign.onnx"
    onnx.save(_tiny_graph("x"), str(foreign))
    corrupt = tmp_path / "corrupt.onnx"
    corrupt.write_bytes(b"\x08\x07garbage")
    blocker = tmp_path / "file"
    blocker.write_text("a file where the output folder should go")
    base = ["calibrate", "--method", "minmax", "--batch", "4", "--no-progress"]
    cases = {
        "is not a meanloc embedder": ["--onnx", str(foreign), "--images", str(images), "--out", str(tmp_path / "o1")],
        "not a valid ONNX": ["--onnx", str(corrupt), "--images", str(images), "--out", str(tmp_path / "o2")],
        "no images found": ["--onnx", str(exported.path), "--images", str(tmp_path / "empty"), "--out", str(tmp_path / "o3")],
        "fewer than one calibration batch": [
            "--onnx", str(exported.path), "--images", str(images), "--out", str(tmp_path / "o4"), "--batch", "8"
        ],
        "cannot create output folder": ["--onnx", str(exported.path), "--images", str(images), "--out", str(blocker / "out")],
        "unsupported TensorRT version": [
            "--onnx", str(exported.path), "--images", str(images), "--out", str(tmp_path / "o5"), "--trt-version", "11.0"
        ],
    }  # fmt: skip
    for message, args in cases.items():
        expected = EXIT_ARTIFACT_MISMATCH if message == "is not a meanloc embedder" else EXIT_BAD_INPUT
        assert main(base + args) == expected, message
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1 and err.startswith("meanloc: error:"), err
    assert not (tmp_path / "o5").exists()  # refused before any work


def test_calibration_set_must_match_the_models_preprocessing(calibrated, tmp_path):
    exported, _, _ = calibrated
    write_folder_tree(tmp_path / "img", {"a": 4})
    wrong_size = from_folder(tmp_path / "img", PreprocessSpec(size=96), batch_size=4)
    with pytest.raises(ArtifactMismatchError, match="preprocessing differs"):
        calibrate(exported.path, wrong_size, tmp_path / "out", method="minmax", progress=False)
