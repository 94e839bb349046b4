"""FP32 fallback of the TensorRT-flavour Q/DQ model: the greedy choice on a fake model, then the
real quantizer on a mean-nano ONNX (which layers lose their Q/DQ inputs, what the model records)."""

import json

import numpy as np
import onnx
import pytest
from calib_support import export_nano_onnx, write_university_tree
from onnx import numpy_helper

from meanloc.calibration.calibset import from_dataset
from meanloc.calibration.fallback import choose_fp32_fallback, max_fallback_nodes
from meanloc.calibration.qdq import quantize_for_cpu, quantize_for_tensorrt
from meanloc.calibration.ranges import collect_ranges
from meanloc.runtime.calibration_cache import INT8_OP_TYPES
from meanloc.runtime.onnx_contract import QUANTIZATION_KEY

# Fake model: quantizing a layer costs this much mean cosine, and costs add up.
DAMAGE = {"a": 0.002, "b": 0.015, "c": 0.0, "d": 0.006, "e": 0.001}


class FakeQuantizer:
    """build() writes an empty file per call and remembers which layers it quantized."""

    def __init__(self, folder):
        self.folder, self.quantized, self.builds = folder, {}, 0

    def build(self, nodes_to_quantize, nodes_to_exclude):
        path = self.folder / f"m{self.builds}.onnx"
        self.builds += 1
        path.write_bytes(b"")
        chosen = DAMAGE if nodes_to_quantize is None else nodes_to_quantize
        self.quantized[path] = [n for n in chosen if n not in nodes_to_exclude]
        return path

    def evaluate(self, path):
        return 1.0 - sum(DAMAGE[n] for n in self.quantized[path])


def test_the_most_damaging_layers_stay_float_until_the_target_is_met(tmp_path):
    fake = FakeQuantizer(tmp_path)
    choice, path = choose_fp32_fallback(list(DAMAGE), fake.build, fake.evaluate, target=0.995, max_nodes=3)
    assert choice.cosine_all_int8 == pytest.approx(1 - 0.024)
    assert choice.sensitivity == pytest.approx(DAMAGE)
    assert choice.nodes == ["b", "d"]  # b alone leaves 0.991
    assert choice.cosine == pytest.approx(1 - 0.003)
    assert fake.quantized[path] == ["a", "c", "e"]
    # Probes and rejected candidates are deleted; only the chosen model is left.
    assert [p.name for p in tmp_path.iterdir()] == [path.name]


def test_no_probes_when_the_all_int8_model_already_meets_the_target(tmp_path):
    fake = FakeQuantizer(tmp_path)
    choice, path = choose_fp32_fallback(list(DAMAGE), fake.build, fake.evaluate, target=0.97)
    assert choice.nodes == [] and fake.builds == 1 and fake.quantized[path] == list(DAMAGE)


def test_an_unreachable_target_keeps_at_most_max_nodes_float(tmp_path):
    fake = FakeQuantizer(tmp_path)
    choice, _ = choose_fp32_fallback(list(DAMAGE), fake.build, fake.evaluate, target=1.5, max_nodes=2)
    assert choice.nodes == ["b", "d"] and choice.cosine < choice.target
    assert max_fallback_nodes(58) == 9 and max_fallback_nodes(3) == 1


@pytest.fixture(scope="module")
def nano(tmp_path_factory):
    root = tmp_path_factory.mktemp("fallback")
    exported = export_nano_onnx(root / "nano.onnx")
    data = write_university_tree(root / "data", classes=4, drones=3)
    calib_set = from_dataset(data, exported.identity.preprocess, "train", num_images=8, batch_size=4)
    ranges = collect_ranges(exported.path, calib_set, "minmax", progress=False)
    return exported, ranges, list(calib_set.batches())


def _dequantized_inputs(model):
    """Names of the Conv/MatMul/Gemm nodes that read at least one DequantizeLinear output."""
    dq_outputs = {n.output[0] for n in model.graph.node if n.op_type == "DequantizeLinear"}
    return {n.name for n in model.graph.node if n.op_type in INT8_OP_TYPES and set(n.input) & dq_outputs}


def test_fallback_layers_lose_their_qdq_inputs_and_the_model_records_them(nano, tmp_path):
    exported, ranges, batches = nano
    source = onnx.load(str(exported.path))
    quantizable = {n.name for n in source.graph.node if n.op_type in INT8_OP_TYPES}
    # A target no int8 model can meet forces the largest fallback.
    out = quantize_for_tensorrt(
        exported.path, tmp_path / "q.onnx", ranges, exported.identity, eval_batches=batches, target_cosine=1.01
    )
    model = onnx.load(str(out))
    settings = json.loads({p.key: p.value for p in model.metadata_props}[QUANTIZATION_KEY])
    fallback = settings["fp32_fallback"]
    assert len(fallback["fp32_nodes"]) == max_fallback_nodes(len(quantizable))
    assert fallback["eval_images"] == sum(len(b) for b in batches) and fallback["target_cosine"] == 1.01
    assert _dequantized_inputs(model) == quantizable - set(fallback["fp32_nodes"])
    # A reachable target keeps everything int8.
    easy = quantize_for_tensorrt(
        exported.path, tmp_path / "e.onnx", ranges, exported.identity, eval_batches=batches, target_cosine=0.0
    )
    easy_model = onnx.load(str(easy))
    easy_settings = json.loads({p.key: p.value for p in easy_model.metadata_props}[QUANTIZATION_KEY])
    assert easy_settings["fp32_fallback"]["fp32_nodes"] == []
    assert _dequantized_inputs(easy_model) == quantizable


@pytest.mark.parametrize("recipe", ["integer-mlp", "dynamic", "static-u8s8"])
def test_cpu_flavour_weights_use_7_bits_so_avx2_int16_sums_cannot_saturate(nano, tmp_path, recipe):
    exported, ranges, _ = nano
    out = quantize_for_cpu(exported.path, tmp_path / "cpu.onnx", exported.identity, ranges, recipe=recipe)
    model = onnx.load(str(out))
    # The quantized weights: MatMulInteger's or MatMulIntegerToFloat's B, QLinearConv's W, and a
    # DequantizeLinear's constant input (static Q/DQ).
    weight_names = {n.input[1] for n in model.graph.node if n.op_type in ("MatMulInteger", "MatMulIntegerToFloat")}
    weight_names |= {n.input[3] for n in model.graph.node if n.op_type == "QLinearConv"}
    weight_names |= {n.input[0] for n in model.graph.node if n.op_type == "DequantizeLinear"}
    int8_weights = [
        numpy_helper.to_array(init)
        for init in model.graph.initializer
        if init.name in weight_names and init.data_type == onnx.TensorProto.INT8
    ]
    assert int8_weights  # MatMul weights are int8 ...
    largest = [int(np.abs(w.astype(np.int32)).max()) for w in int8_weights]
    assert max(largest) <= 64 and min(largest) >= 60  # each tensor/channel set fills the 7-bit range
