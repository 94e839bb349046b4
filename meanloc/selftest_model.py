"""The selftest's built-in model: a tiny ConvNeXt-style embedder written as ONNX without torch or `onnx`.

`meanloc doctor --selftest` must run on a bare Jetson: JetPack has TensorRT and numpy, not torch
or the `onnx` package (and `pip install onnx` there upgrades JetPack's numpy; deployment.md §1).
Shipping a model file would put a binary in the repository, and asking for `--onnx` would need an
export first. So the model is generated here, from a seed, with the operators that matter to
TensorRT in MEAN: a strided stem Conv, a depthwise 7x7 Conv, LayerNorm over channels (native
LayerNormalization at opset 17, the decomposed ReduceMean/Sub/Pow/Add/Sqrt/Div/Mul/Add form at opset 16
for TensorRT 8.5), the pointwise MatMul -> Erf-GELU -> MatMul MLP with a residual Add, global average
pooling, a MatMul head and the L2 normalisation (Div by Sqrt(ReduceSum(x*x))), all with the meanloc
interface and metadata, so the real builder, calibrator and backends take it like an export.

It comes in the two forms `meanloc calibrate` makes, so all four engine precisions can be built:
the FP32 model, and a Q/DQ model in TensorRT's layout (FP32 weights behind their own per-channel
Q->DQ pair, a per-tensor Q->DQ pair on each Conv/MatMul activation input); plus per-tensor ranges
for a TensorRT calibration cache. `reference` computes the FP32 model in numpy: the FP32 reference
wherever ONNX Runtime is missing too.

The ONNX is written with a small protobuf encoder (field numbers of onnx/onnx.proto, encoding per
https://protobuf.dev/programming-guides/encoding/). Python 3.8, numpy only.
"""

import dataclasses
import hashlib
import json
import math
import struct
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from meanloc.export.onnx_graph import fp32_sensitive_nodes
from meanloc.runtime.identity import ModelIdentity
from meanloc.runtime.onnx_contract import (
    FP32_NODES_KEY,
    INPUT_NAME,
    LAYERNORM_KEY,
    OPSET_KEY,
    OUTPUT_NAME,
    QUANTIZATION_KEY,
)
from meanloc.runtime.onnx_file import parse_onnx_model
from meanloc.runtime.preprocess import PreprocessSpec

PRESET = "selftest-tiny"
SIZE, CHANNELS, HIDDEN, EMBED_DIM = 32, 32, 128, 64
LN_EPS = 1e-6
FLOAT, INT8, INT64 = 1, 3, 7  # onnx.TensorProto.DataType
QUANTIZED_OPS = ("Conv", "MatMul")


# --- protobuf encoding --------------------------------------------------------------------------


def _varint(value: int) -> bytes:
    value &= (1 << 64) - 1  # int64 negatives are ten-byte two's complement varints
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _key(number: int, wire: int) -> bytes:
    return _varint(number << 3 | wire)


def _bytes_field(number: int, payload: bytes) -> bytes:
    return _key(number, 2) + _varint(len(payload)) + payload


def _str_field(number: int, text: str) -> bytes:
    return _bytes_field(number, text.encode("utf-8"))


def _int_field(number: int, value: int) -> bytes:
    return _key(number, 0) + _varint(value)


def _attribute(name: str, value: object) -> bytes:
    # AttributeProto: name 1, f 2, i 3, ints 8, type 20 (FLOAT 1, INT 2, INTS 7).
    body = _str_field(1, name)
    if isinstance(value, float):
        body += _key(2, 5) + struct.pack("<f", value) + _int_field(20, 1)
    elif isinstance(value, int):
        body += _int_field(3, value) + _int_field(20, 2)
    else:
        body += b"".join(_int_field(8, int(v)) for v in value) + _int_field(20, 7)  # type: ignore[union-attr]
    return body


@dataclass
class _Node:
    op_type: str
    inputs: List[str]
    outputs: List[str]
    name: str
    attributes: Dict[str, object]

    def encode(self) -> bytes:
        body = b"".join(_str_field(1, name) for name in self.inputs)
        body += b"".join(_str_field(2, name) for name in self.outputs)
        body += _str_field(3, self.name) + _str_field(4, self.op_type)
        body += b"".join(_bytes_field(5, _attribute(k, v)) for k, v in self.attributes.items())
        return body


def _tensor(name: str, array: np.ndarray) -> bytes:
    data_type = {np.dtype(np.float32): FLOAT, np.dtype(np.int8): INT8, np.dtype(np.int64): INT64}[array.dtype]
    body = b"".join(_int_field(1, int(d)) for d in array.shape)
    body += _int_field(2, data_type) + _str_field(8, name) + _bytes_field(9, np.ascontiguousarray(array).tobytes())
    return body


def _value_info(name: str, dims: Sequence[object]) -> bytes:
    shape = b"".join(
        _bytes_field(1, _str_field(2, d) if isinstance(d, str) else _int_field(1, int(d))) for d in dims  # type: ignore[arg-type]
    )
    tensor_type = _int_field(1, FLOAT) + _bytes_field(2, shape)
    return _str_field(1, name) + _bytes_field(2, _bytes_field(1, tensor_type))


# --- the graph ----------------------------------------------------------------------------------


class _Graph:
    def __init__(self) -> None:
        self.nodes: List[_Node] = []
        self.initializers: Dict[str, np.ndarray] = {}

    def const(self, name: str, array: np.ndarray) -> str:
        self.initializers[name] = array
        return name

    def op(self, op_type: str, inputs: Sequence[str], name: str, output: Optional[str] = None, **attributes: object) -> str:
        out = output or name + "_output_0"
        self.nodes.append(_Node(op_type, list(inputs), [out], name, attributes))
        return out

    def encode(self, opset: int, metadata: Dict[str, str]) -> bytes:
        graph = b"".join(_bytes_field(1, node.encode()) for node in self.nodes)
        graph += _str_field(2, PRESET)
        graph += b"".join(_bytes_field(5, _tensor(name, array)) for name, array in self.initializers.items())
        graph += _bytes_field(11, _value_info(INPUT_NAME, ["batch", 3, SIZE, SIZE]))
        graph += _bytes_field(12, _value_info(OUTPUT_NAME, ["batch", EMBED_DIM]))
        model = _int_field(1, 8) + _str_field(2, "meanloc-selftest") + _bytes_field(7, graph)
        model += _bytes_field(8, _str_field(1, "") + _int_field(2, opset))
        model += b"".join(_bytes_field(14, _str_field(1, k) + _str_field(2, v)) for k, v in sorted(metadata.items()))
        return model


def _weights(seed: int) -> Dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)

    def he(shape: Tuple[int, ...], fan_in: int) -> np.ndarray:
        return (rng.standard_normal(shape) * math.sqrt(2.0 / fan_in)).astype(np.float32)

    return {
        "stem.weight": he((CHANNELS, 3, 4, 4), 3 * 16),
        "stem.bias": (rng.standard_normal(CHANNELS) * 0.05).astype(np.float32),
        "dwconv.weight": he((CHANNELS, 1, 7, 7), 49),
        "dwconv.bias": (rng.standard_normal(CHANNELS) * 0.05).astype(np.float32),
        "norm.weight": (1 + 0.2 * rng.standard_normal(CHANNELS)).astype(np.float32),
        "norm.bias": (0.1 * rng.standard_normal(CHANNELS)).astype(np.float32),
        "pwconv1.weight": he((CHANNELS, HIDDEN), CHANNELS),
        "pwconv1.bias": (0.05 * rng.standard_normal(HIDDEN)).astype(np.float32),
        "pwconv2.weight": he((HIDDEN, CHANNELS), HIDDEN) * 0.5,
        "pwconv2.bias": (0.05 * rng.standard_normal(CHANNELS)).astype(np.float32),
        "head.weight": he((CHANNELS, EMBED_DIM), CHANNELS),
        "head.bias": (0.05 * rng.standard_normal(EMBED_DIM)).astype(np.float32),
    }


def _build_graph(weights: Dict[str, np.ndarray], opset: int, quantized: Optional[Dict[str, float]] = None) -> _Graph:
    """The graph; with `quantized` (tensor -> amax), TensorRT-layout Q/DQ on every Conv/MatMul input."""
    g = _Graph()
    zero = g.const("zero_point", np.zeros((), dtype=np.int8)) if quantized is not None else ""

    def weight(name: str, axis: int) -> str:
        w = g.const(name, weights[name])
        if quantized is None:
            return w
        other = tuple(i for i in range(weights[name].ndim) if i != axis)
        scale = np.maximum(np.abs(weights[name]).max(axis=other), 1e-8).astype(np.float32) / 127.0
        s = g.const(name + "_scale", scale)
        zeros = g.const(name + "_zero_point", np.zeros(scale.shape, dtype=np.int8))
        q = g.op("QuantizeLinear", [w, s, zeros], name + "_QuantizeLinear", axis=axis)
        return g.op("DequantizeLinear", [q, s, zeros], name + "_DequantizeLinear", axis=axis)

    def activation(tensor: str, consumer: str) -> str:
        if quantized is None:
            return tensor
        s = g.const(consumer + "_input_scale", np.array(max(quantized[tensor], 1e-8) / 127.0, dtype=np.float32))
        q = g.op("QuantizeLinear", [tensor, s, zero], consumer + "_input_QuantizeLinear")
        return g.op("DequantizeLinear", [q, s, zero], consumer + "_input_DequantizeLinear")

    x = g.op("Conv", [activation(INPUT_NAME, "/stem/Conv"), weight("stem.weight", 0), g.const("stem.bias", weights["stem.bias"])],
             "/stem/Conv", kernel_shape=[4, 4], strides=[4, 4])
    shortcut = x
    x = g.op("Conv", [activation(x, "/dwconv/Conv"), weight("dwconv.weight", 0), g.const("dwconv.bias", weights["dwconv.bias"])],
             "/dwconv/Conv", kernel_shape=[7, 7], pads=[3, 3, 3, 3], group=CHANNELS)
    x = g.op("Transpose", [x], "/Transpose", perm=[0, 2, 3, 1])
    gamma, beta = g.const("norm.weight", weights["norm.weight"]), g.const("norm.bias", weights["norm.bias"])
    if opset >= 17:
        x = g.op("LayerNormalization", [x, gamma, beta], "/norm/LayerNormalization", axis=-1, epsilon=LN_EPS)
    else:  # the decomposed form torch exports below opset 17 (export/onnx_graph.decomposed_layernorms)
        mean = g.op("ReduceMean", [x], "/norm/ReduceMean", axes=[-1])
        centred = g.op("Sub", [x, mean], "/norm/Sub")
        squared = g.op("Pow", [centred, g.const("two", np.array(2.0, dtype=np.float32))], "/norm/Pow")
        variance = g.op("ReduceMean", [squared], "/norm/ReduceMean_1", axes=[-1])
        shifted = g.op("Add", [variance, g.const("eps", np.array(LN_EPS, dtype=np.float32))], "/norm/Add")
        deviation = g.op("Sqrt", [shifted], "/norm/Sqrt")
        x = g.op("Div", [centred, deviation], "/norm/Div")
        x = g.op("Mul", [x, gamma], "/norm/Mul")
        x = g.op("Add", [x, beta], "/norm/Add_1")
    x = g.op("MatMul", [activation(x, "/pwconv1/MatMul"), weight("pwconv1.weight", 1)], "/pwconv1/MatMul")
    x = g.op("Add", [x, g.const("pwconv1.bias", weights["pwconv1.bias"])], "/pwconv1/Add")
    # GELU as torch exports it before opset 20: x * 0.5 * (1 + erf(x / sqrt(2))).
    erf = g.op("Erf", [g.op("Div", [x, g.const("sqrt2", np.array(math.sqrt(2.0), dtype=np.float32))], "/act/Div")], "/act/Erf")
    one_plus = g.op("Add", [erf, g.const("one", np.array(1.0, dtype=np.float32))], "/act/Add")
    x = g.op("Mul", [g.op("Mul", [x, one_plus], "/act/Mul"), g.const("half", np.array(0.5, dtype=np.float32))], "/act/Mul_1")
    x = g.op("MatMul", [activation(x, "/pwconv2/MatMul"), weight("pwconv2.weight", 1)], "/pwconv2/MatMul")
    x = g.op("Add", [x, g.const("pwconv2.bias", weights["pwconv2.bias"])], "/pwconv2/Add")
    x = g.op("Transpose", [x], "/Transpose_1", perm=[0, 3, 1, 2])
    x = g.op("Add", [shortcut, x], "/Add")
    x = g.op("ReduceMean", [x], "/pool/ReduceMean", axes=[2, 3], keepdims=0)
    x = g.op("MatMul", [activation(x, "/head/MatMul"), weight("head.weight", 1)], "/head/MatMul")
    x = g.op("Add", [x, g.const("head.bias", weights["head.bias"])], "/head/Add")
    square = g.op("Mul", [x, x], "/l2/Mul")
    total = g.op("ReduceSum", [square, g.const("l2_axes", np.array([1], dtype=np.int64))], "/l2/ReduceSum", keepdims=1)
    norm = g.op("Sqrt", [total], "/l2/Sqrt")
    g.op("Div", [x, norm], "/l2/Div", output=OUTPUT_NAME)
    return g


# --- the numpy reference ------------------------------------------------------------------------


def _conv(x: np.ndarray, w: np.ndarray, b: np.ndarray, stride: int, pad: int, depthwise: bool) -> np.ndarray:
    """Conv2d by summing one kernel tap at a time (numpy 1.17, JetPack 5's, has no sliding windows)."""
    n, _, h, width = x.shape
    k = w.shape[-1]
    x = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    out_h, out_w = (h + 2 * pad - k) // stride + 1, (width + 2 * pad - k) // stride + 1
    out = np.zeros((n, w.shape[0], out_h, out_w), dtype=np.float64)
    for i in range(k):
        for j in range(k):
            tap = x[:, :, i : i + stride * out_h : stride, j : j + stride * out_w : stride]
            if depthwise:
                out += tap * w[None, :, 0, i, j, None, None]
            else:
                out += np.einsum("nchw,oc->nohw", tap, w[:, :, i, j])
    return (out + b[None, :, None, None]).astype(np.float32)


def _erf(x: np.ndarray) -> np.ndarray:
    return np.vectorize(math.erf, otypes=[np.float64])(x).astype(np.float32)


def _forward(weights: Dict[str, np.ndarray], images: np.ndarray) -> Dict[str, np.ndarray]:
    """Every tensor of the FP32 graph by its ONNX name (the opset-17 names; ranges cover both forms)."""
    t: Dict[str, np.ndarray] = {INPUT_NAME: images.astype(np.float32)}
    t["/stem/Conv_output_0"] = x = _conv(t[INPUT_NAME], weights["stem.weight"], weights["stem.bias"], 4, 0, False)
    t["/dwconv/Conv_output_0"] = y = _conv(x, weights["dwconv.weight"], weights["dwconv.bias"], 1, 3, True)
    t["/Transpose_output_0"] = y = y.transpose(0, 2, 3, 1)
    t["/norm/ReduceMean_output_0"] = mean = y.mean(axis=-1, keepdims=True)
    t["/norm/Sub_output_0"] = centred = y - mean
    t["/norm/Pow_output_0"] = squared = centred**2
    t["/norm/ReduceMean_1_output_0"] = variance = squared.mean(axis=-1, keepdims=True)
    t["/norm/Add_output_0"] = shifted = variance + np.float32(LN_EPS)
    t["/norm/Sqrt_output_0"] = deviation = np.sqrt(shifted)
    t["/norm/Div_output_0"] = y = centred / deviation
    t["/norm/Mul_output_0"] = y = y * weights["norm.weight"]
    t["/norm/LayerNormalization_output_0"] = t["/norm/Add_1_output_0"] = y = y + weights["norm.bias"]
    t["/pwconv1/MatMul_output_0"] = h = y @ weights["pwconv1.weight"]
    t["/pwconv1/Add_output_0"] = h = h + weights["pwconv1.bias"]
    t["/act/Div_output_0"] = scaled = h / np.float32(math.sqrt(2.0))
    t["/act/Erf_output_0"] = erf = _erf(scaled)
    t["/act/Add_output_0"] = one_plus = erf + np.float32(1.0)
    t["/act/Mul_output_0"] = gelu = h * one_plus
    t["/act/Mul_1_output_0"] = h = gelu * np.float32(0.5)
    t["/pwconv2/MatMul_output_0"] = h = h @ weights["pwconv2.weight"]
    t["/pwconv2/Add_output_0"] = h = h + weights["pwconv2.bias"]
    t["/Transpose_1_output_0"] = h = h.transpose(0, 3, 1, 2)
    t["/Add_output_0"] = z = x + h
    t["/pool/ReduceMean_output_0"] = p = z.mean(axis=(2, 3))
    t["/head/MatMul_output_0"] = e = p @ weights["head.weight"]
    t["/head/Add_output_0"] = e = e + weights["head.bias"]
    t["/l2/Mul_output_0"] = square = e * e
    t["/l2/ReduceSum_output_0"] = total = square.sum(axis=1, keepdims=True)
    t["/l2/Sqrt_output_0"] = norm = np.sqrt(total)
    t[OUTPUT_NAME] = e / norm
    return {name: value.astype(np.float32) for name, value in t.items()}


def sample_inputs(count: int, seed: int) -> np.ndarray:
    """Preprocessed-looking inputs: smooth random images, normalised like ImageNet inputs are."""
    rng = np.random.default_rng(seed)
    coarse = rng.standard_normal((count, 3, SIZE // 8, SIZE // 8)).astype(np.float32)
    fine = 0.3 * rng.standard_normal((count, 3, SIZE, SIZE)).astype(np.float32)
    return np.repeat(np.repeat(coarse, 8, axis=2), 8, axis=3) + fine


@dataclass
class SelftestModel:
    """The built-in model's files' bytes, its identity, numpy reference and calibration ranges."""

    opset: int
    fp32_onnx: bytes
    qdq_onnx: bytes
    amax: Dict[str, float]
    identity: ModelIdentity
    weights: Dict[str, np.ndarray]

    def reference(self, images: np.ndarray) -> np.ndarray:
        return _forward(self.weights, images)[OUTPUT_NAME]


def build_selftest_model(opset: int = 17, seed: int = 0, calibration_images: int = 16) -> SelftestModel:
    weights = _weights(seed)
    digest = hashlib.sha256()
    for name in sorted(weights):
        digest.update(name.encode() + weights[name].tobytes())
    identity = ModelIdentity(digest.hexdigest(), PRESET, EMBED_DIM, PreprocessSpec(size=SIZE))
    calibration = _forward(weights, sample_inputs(calibration_images, seed + 1))
    amax = {name: float(np.abs(value).max()) for name, value in calibration.items()}
    if opset < 17:  # the decomposed LayerNorm's output has the opset-16 name
        amax["/norm/Add_1_output_0"] = amax["/norm/LayerNormalization_output_0"]
    fp32_graph = _build_graph(weights, opset)
    metadata = dict(identity.to_onnx_metadata())
    metadata.update({OPSET_KEY: str(opset), LAYERNORM_KEY: "native" if opset >= 17 else "decomposed"})
    unmarked = fp32_graph.encode(opset, metadata)
    metadata[FP32_NODES_KEY] = json.dumps(fp32_sensitive_nodes(parse_onnx_model(unmarked)))
    qdq_metadata = dict(metadata)
    qdq_metadata.update(dataclasses.replace(identity, precision="int8-qdq-trt").to_onnx_metadata())
    qdq_metadata[QUANTIZATION_KEY] = json.dumps(
        {
            "precision": "int8-qdq-trt",
            "format": "QDQ",
            "weights": "int8 symmetric per-channel, FP32 initializers with Q/DQ pairs",
            "activations": "int8 symmetric per-tensor",
            "calibration_images": calibration_images,
        },
        sort_keys=True,
    )
    return SelftestModel(
        opset=opset,
        fp32_onnx=fp32_graph.encode(opset, metadata),
        qdq_onnx=_build_graph(weights, opset, quantized=amax).encode(opset, qdq_metadata),
        amax=amax,
        identity=identity,
        weights=weights,
    )
