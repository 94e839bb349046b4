"""The uint8 rewrite of Linear -> GELU -> Linear, on blocks exported by torch.onnx and run by ONNX Runtime."""

import warnings

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import numpy_helper

from meanloc.calibration.integer_mlp import GELU_MINIMUM, find_mlp_blocks, rewrite_mlp_blocks
from meanloc.errors import MeanlocError

CHANNELS, HIDDEN = 16, 64


class ChannelsLastMlp(torch.nn.Module):
    """ConvNeXt's pointwise MLP on an N,H,W,C tensor, optionally with the GELU output reused."""

    def __init__(self, bias: bool = True, activation: torch.nn.Module | None = None, reuse: bool = False):
        super().__init__()
        self.fc1 = torch.nn.Linear(CHANNELS, HIDDEN, bias=bias)
        self.act = activation or torch.nn.GELU()
        self.fc2 = torch.nn.Linear(HIDDEN, CHANNELS, bias=bias)
        self.reuse = reuse
        with torch.no_grad():  # biases large enough that a dropped or mis-scaled bias shows
            for layer in (self.fc1, self.fc2):
                if layer.bias is not None:
                    layer.bias.uniform_(-0.5, 0.5)

    def forward(self, x):
        hidden = self.act(self.fc1(x))
        out = self.fc2(hidden)
        return out + hidden[..., :CHANNELS] if self.reuse else out


def _export(module, path, shape=(1, 6, 6, CHANNELS)):
    with warnings.catch_warnings():  # the TorchScript exporter's deprecation notices, as in export/
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(module.eval(), torch.randn(shape), str(path), input_names=["x"], output_names=["y"],
                          opset_version=17, dynamo=False)  # fmt: skip
    return onnx.load(str(path))


def _ranges(model, x):
    """(min, max) of every float tensor, measured by running the FP32 graph with all of them as outputs."""
    names = [out for node in model.graph.node for out in node.output]
    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    del probe.graph.output[:]
    probe.graph.output.extend(onnx.helper.make_empty_tensor_value_info(name) for name in names)
    values = ort.InferenceSession(probe.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})
    ranges = {name: (float(v.min()), float(v.max())) for name, v in zip(names, values) if v.dtype == np.float32}
    return {**ranges, "x": (float(x.min()), float(x.max()))}


def _run(model, x):
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, {"x": x})[0]


@pytest.mark.parametrize("bias", [True, False])
def test_exported_mlp_runs_in_uint8_and_tracks_the_float_block(tmp_path, bias):
    torch.manual_seed(0)
    module = ChannelsLastMlp(bias=bias)
    model = _export(module, tmp_path / "mlp.onnx")
    x = np.random.default_rng(1).standard_normal((1, 6, 6, CHANNELS)).astype(np.float32)
    with torch.no_grad():
        reference = module(torch.from_numpy(x)).numpy()
    assert rewrite_mlp_blocks(model, _ranges(model, x)) == 1
    onnx.checker.check_model(model)
    ops = {node.op_type for node in model.graph.node}
    assert ops == {"QuantizeLinear", "QLinearConv", "QLinearSigmoid", "QLinearMul", "MatMulIntegerToFloat"}
    # The float weight matrices are gone, not just unused.
    assert not [i.name for i in model.graph.initializer if i.data_type == onnx.TensorProto.FLOAT and len(i.dims) == 2]
    out = _run(model, x)
    cosine = np.sum(out * reference, -1) / np.linalg.norm(out, axis=-1) / np.linalg.norm(reference, axis=-1)
    assert cosine.min() > 0.995
    assert np.abs(out - reference).mean() < 0.05 * np.abs(reference).mean()


def test_the_gelu_approximation_is_what_limits_the_error(tmp_path):
    """With GELU replaced by the same sigmoid form in float, the uint8 block is much closer: the
    remaining error is rounding, and the approximation's share is measured, not assumed."""
    torch.manual_seed(0)
    exact = ChannelsLastMlp()
    model = _export(exact, tmp_path / "mlp.onnx")
    x = np.random.default_rng(2).standard_normal((1, 6, 6, CHANNELS)).astype(np.float32) * 2
    rewrite_mlp_blocks(model, _ranges(model, x))
    out = _run(model, x)
    with torch.no_grad():
        t = torch.from_numpy(x)
        hidden = exact.fc1(t)
        sigmoid_form = exact.fc2(hidden * torch.sigmoid(1.702 * hidden)).numpy()
        reference = exact(t).numpy()
    assert np.abs(out - sigmoid_form).mean() < np.abs(out - reference).mean()


@pytest.mark.parametrize(
    "module, shape",
    [
        (ChannelsLastMlp(activation=torch.nn.ReLU()), (1, 6, 6, CHANNELS)),  # not GELU
        (ChannelsLastMlp(reuse=True), (1, 6, 6, CHANNELS)),  # GELU output also read outside the block
        (ChannelsLastMlp(), (6, 6, CHANNELS)),  # not N,H,W,C: channels_last QLinearConv cannot take it
    ],
    ids=["relu", "reused-hidden", "rank-3"],
)
def test_blocks_that_differ_are_left_alone(tmp_path, module, shape):
    model = _export(module, tmp_path / "other.onnx", shape)
    before = [node.op_type for node in model.graph.node]
    x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    assert find_mlp_blocks(model) == []
    assert rewrite_mlp_blocks(model, _ranges(model, x)) == 0
    assert [node.op_type for node in model.graph.node] == before


def test_gelu_output_range_starts_at_gelus_minimum(tmp_path):
    model = _export(ChannelsLastMlp(), tmp_path / "mlp.onnx")
    (block,) = find_mlp_blocks(model)
    x = np.random.default_rng(0).standard_normal((1, 6, 6, CHANNELS)).astype(np.float32)
    ranges = _ranges(model, x)
    high = ranges[block.activated][1]
    ranges[block.activated] = (-high, high)  # what a symmetric calibrator reports
    rewrite_mlp_blocks(model, ranges)
    consts = {init.name: numpy_helper.to_array(init) for init in model.graph.initializer}
    scale = float(next(v for k, v in consts.items() if k.endswith("/act_scale")))
    zero = int(next(v for k, v in consts.items() if k.endswith("/act_zero")))
    assert scale == pytest.approx((high - GELU_MINIMUM) / 255, rel=1e-5)
    assert zero == round(-GELU_MINIMUM / scale)


def test_a_tensor_without_a_range_is_a_clear_error(tmp_path):
    model = _export(ChannelsLastMlp(), tmp_path / "mlp.onnx")
    (block,) = find_mlp_blocks(model)
    x = np.random.default_rng(0).standard_normal((1, 6, 6, CHANNELS)).astype(np.float32)
    ranges = _ranges(model, x)
    del ranges[block.hidden]
    with pytest.raises(MeanlocError, match="no calibration range"):
        rewrite_mlp_blocks(model, ranges)
