"""ConvNeXt's pointwise MLP (Linear -> GELU -> Linear) rewritten to run in uint8 on ONNX Runtime's CPU kernels.

Why: at 384 px the MLP MatMuls are ~75 % of FP32 time and, without VNNI, an int8 GEMM is only ~1.8x
an FP32 one, so quantizing the MatMuls alone leaves the float GELU (~9 % of FP32 time) and a
quantization pass over its 4C-wide output, and tops out near 0.66x FP32 (qdq.py has the numbers).
Here the hidden activation never leaves uint8:

    x (float, N,H,W,C) -> QuantizeLinear -> fc1: com.microsoft QLinearConv 1x1, channels_last, int32 bias
      -> GELU(a) ~ a * sigmoid(1.702 a): QLinearSigmoid (a 256-entry table) x QLinearMul, uint8
      -> fc2: MatMulIntegerToFloat with the float bias -> float, as before

- fc1 is a 1x1 QLinearConv because ONNX's QLinearMatMul has no bias input (a QLinearAdd for it cost
  what the rest saved) and ORT's QGemm does not pre-pack its weights (1.5x slower at these shapes).
- GELU: ORT has no uint8 GELU, and an exact table through standard ops (Cast to int32, Gather) was
  8x slower than the float GELU. The sigmoid form is the GELU paper's own approximation: at most
  0.020 from the exact curve (at a = -2.27), about half a uint8 step of the hidden activation.
- Activations: uint8, asymmetric, per tensor, from the calibration ranges (the GELU output's
  lower bound is GELU's minimum, -0.170, whatever a symmetric calibrator returned). Weights: int8,
  symmetric, per output channel, 7-bit (qdq.py: ORT's AVX2 U8S8 kernel saturates with 8-bit).

A block matches when it is exactly what `torch.onnx` exports for `Linear -> nn.GELU() -> Linear` on
a channels-last tensor: MatMul and Add with constant weight and bias, GELU as one Gelu node or as
the erf form (Div by sqrt 2, Erf, Add 1, Mul by the input, Mul by 0.5), each intermediate used
only inside the block. Anything else is left as it is.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from meanloc.errors import MeanlocError

GELU_SIGMOID_SLOPE = 1.702
GELU_MINIMUM = -0.16997  # min over a of a * Phi(a), at a = -0.752
MS_DOMAIN = "com.microsoft"
# The erf form of GELU as torch exports it: (op, the constant operand's value or None).
_ERF_GELU = (("Div", np.sqrt(2.0)), ("Erf", None), ("Add", 1.0), ("Mul", None), ("Mul", 0.5))


@dataclass(frozen=True)
class MlpBlock:
    """One matched Linear -> GELU -> Linear, by the names of its nodes and tensors."""

    nodes: tuple[str, ...]  # every node the rewrite replaces, fc1's MatMul first
    x: str  # fc1's input
    w1: str
    b1: str | None  # None: no bias
    hidden: str  # fc1 + bias, GELU's input
    activated: str  # GELU's output, fc2's input
    w2: str
    b2: str | None
    out: str  # fc2 + bias


class _Graph:
    """Lookups over an ONNX graph: constant values, the consumers and the rank of each tensor."""

    def __init__(self, model: Any) -> None:
        from onnx import numpy_helper, shape_inference

        graph = model.graph
        inferred = shape_inference.infer_shapes(model).graph
        self.ranks = {
            value.name: len(value.type.tensor_type.shape.dim)
            for value in (*inferred.input, *inferred.value_info)
            if value.type.tensor_type.HasField("shape")
        }
        self.constants = {init.name: numpy_helper.to_array(init) for init in graph.initializer}
        for node in graph.node:
            if node.op_type == "Constant" and node.attribute and node.attribute[0].name == "value":
                self.constants[node.output[0]] = numpy_helper.to_array(node.attribute[0].t)
        self.consumers: dict[str, list[Any]] = {}
        for node in graph.node:
            for name in node.input:
                self.consumers.setdefault(name, []).append(node)
        self.graph_outputs = {value.name for value in graph.output}

    def sole_consumer(self, tensor: str, op_type: str) -> Any | None:
        users = self.consumers.get(tensor, [])
        if len(users) != 1 or users[0].op_type != op_type or tensor in self.graph_outputs:
            return None
        return users[0]

    def split_constant(self, node: Any, value: float | None = None) -> tuple[str, str] | None:
        """(the variable input, the constant input) of a binary node; the constant must equal `value` if given."""
        if len(node.input) != 2:
            return None
        for variable, constant in (node.input, node.input[::-1]):
            if (
                constant in self.constants
                and variable not in self.constants
                and (value is None or np.allclose(self.constants[constant], value, rtol=1e-4))
            ):
                return variable, constant
        return None


def _match_gelu(graph: _Graph, hidden: str) -> tuple[list[Any], str] | None:
    """GELU nodes reading `hidden`, and GELU's output tensor."""
    users = graph.consumers.get(hidden, [])
    if len(users) == 1 and users[0].op_type == "Gelu" and not users[0].attribute:
        return [users[0]], users[0].output[0]
    divide = next((user for user in users if user.op_type == "Div" and user.input[0] == hidden), None)
    if len(users) != 2 or hidden in graph.graph_outputs or divide is None:
        return None
    nodes: list[Any] = []
    node = divide
    for index, (op_type, value) in enumerate(_ERF_GELU):
        if node is None or node.op_type != op_type:
            return None
        if index == 3:  # the Mul by GELU's own input
            if sorted(node.input) != sorted([hidden, nodes[-1].output[0]]):
                return None
        elif value is not None and graph.split_constant(node, value) is None:
            return None
        nodes.append(node)
        if index + 1 < len(_ERF_GELU):
            node = graph.sole_consumer(node.output[0], _ERF_GELU[index + 1][0])
    if {id(user) for user in users} != {id(divide), id(nodes[3])}:
        return None
    return nodes, nodes[-1].output[0]


def _is_matrix(graph: _Graph, name: str) -> bool:
    return name in graph.constants and graph.constants[name].ndim == 2


def _linear(graph: _Graph, matmul: Any) -> tuple[list[Any], str | None, str] | None:
    """A MatMul by a constant matrix and its optional constant bias Add: (nodes, bias, output)."""
    if not _is_matrix(graph, matmul.input[1]):
        return None
    add = graph.sole_consumer(matmul.output[0], "Add")
    split = add and graph.split_constant(add)
    if not split:  # no bias (torch's Linear(bias=False), or a zero bias the exporter folded away)
        return [matmul], None, matmul.output[0]
    if graph.constants[split[1]].shape != graph.constants[matmul.input[1]].shape[1:]:
        return None
    return [matmul, add], split[1], add.output[0]


def _match_block(graph: _Graph, fc1: Any) -> MlpBlock | None:
    # QLinearConv with channels_last reads N,H,W,C: the input must be known to have rank 4.
    first = _linear(graph, fc1) if graph.ranks.get(fc1.input[0]) == 4 else None
    gelu = first and _match_gelu(graph, first[2])
    if not gelu:
        return None
    fc2 = graph.sole_consumer(gelu[1], "MatMul")
    second = fc2 and fc2.input[0] == gelu[1] and _linear(graph, fc2)
    if not second:
        return None
    return MlpBlock(
        nodes=tuple(node.name for node in (*first[0], *gelu[0], *second[0])),
        x=fc1.input[0], w1=fc1.input[1], b1=first[1], hidden=first[2],
        activated=gelu[1], w2=fc2.input[1], b2=second[1], out=second[2],
    )  # fmt: skip


def find_mlp_blocks(model: Any) -> list[MlpBlock]:
    """Every Linear -> GELU -> Linear of the graph that the rewrite applies to (see the module note)."""
    graph = _Graph(model)
    blocks = [_match_block(graph, node) for node in model.graph.node if node.op_type == "MatMul"]
    return [block for block in blocks if block is not None]


def _uint8_params(low: float, high: float) -> tuple[np.ndarray, np.ndarray]:
    """(scale, zero point) of an asymmetric uint8 range, by ORT's own rule (zero stays exact)."""
    from onnxruntime.quantization.quant_utils import compute_scale_zp

    zero_point, scale = compute_scale_zp(
        np.array(low, dtype=np.float32), np.array(high, dtype=np.float32),
        np.array(0, dtype=np.uint8), np.array(255, dtype=np.uint8),
    )  # fmt: skip
    return np.asarray(scale, dtype=np.float32), np.asarray(zero_point, dtype=np.uint8)


def _weights_per_output_channel(weight: np.ndarray, bits: int) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric int8 per output column of an (in, out) matrix; `bits` < 8 leaves headroom."""
    limit = 2 ** (bits - 1) - 1
    scale = (np.abs(weight).max(axis=0) / limit).astype(np.float32)
    scale[scale == 0] = 1.0
    return np.clip(np.round(weight / scale), -limit, limit).astype(np.int8), scale


def _range(ranges: dict[str, tuple[float, float]], tensor: str) -> tuple[float, float]:
    if tensor not in ranges:
        raise MeanlocError(f"no calibration range for tensor '{tensor}'; recalibrate this ONNX model")
    return ranges[tensor]


def _block_nodes(
    block: MlpBlock,
    graph: _Graph,
    ranges: dict[str, tuple[float, float]],
    weight_bits: int,
    add_constant: Any,
) -> list[Any]:
    """The uint8 form of one block; `add_constant(name, array)` registers an initializer."""
    from onnx import helper

    x_scale, x_zero = _uint8_params(*_range(ranges, block.x))
    hidden_scale, hidden_zero = _uint8_params(*_range(ranges, block.hidden))
    low, high = _range(ranges, block.activated)
    out_scale, out_zero = _uint8_params(max(low, GELU_MINIMUM), high)
    w1, w1_scale = _weights_per_output_channel(graph.constants[block.w1], weight_bits)
    w2, w2_scale = _weights_per_output_channel(graph.constants[block.w2], weight_bits)
    bias1 = (
        np.round(graph.constants[block.b1] / (x_scale * w1_scale)) if block.b1 else np.zeros_like(w1_scale)
    )
    bias1 = np.clip(bias1, np.iinfo(np.int32).min, np.iinfo(np.int32).max).astype(np.int32)
    prefix = f"{block.nodes[0]}/integer_mlp"

    def const(name: str, value: np.ndarray | float) -> str:
        return add_constant(f"{prefix}/{name}", np.asarray(value))

    def tensor(name: str) -> str:
        return f"{prefix}/{name}"

    x_q = [tensor("x_q"), const("x_scale", x_scale), const("x_zero", x_zero)]
    hidden_q = [tensor("hidden_q"), const("hidden_scale", hidden_scale), const("hidden_zero", hidden_zero)]
    gate_q = [tensor("gate_q"), const("gate_scale", np.float32(1 / 255)), const("gate_zero", np.uint8(0))]
    out_q = [const("act_scale", out_scale), const("act_zero", out_zero)]
    return [
        helper.make_node("QuantizeLinear", [block.x, *x_q[1:]], x_q[:1], name=tensor("quantize")),
        helper.make_node(
            "QLinearConv",
            [
                *x_q,
                const("w1", w1.T[:, :, None, None]),
                const("w1_scale", w1_scale),
                const("w1_zero", np.zeros_like(w1_scale, dtype=np.int8)),
                *hidden_q[1:],
                const("b1", bias1),
            ],
            hidden_q[:1],
            name=tensor("fc1"),
            domain=MS_DOMAIN,
            channels_last=1,
        ),
        helper.make_node(
            "QLinearSigmoid",
            [
                hidden_q[0],
                const("gate_input_scale", np.float32(hidden_scale * GELU_SIGMOID_SLOPE)),
                hidden_q[2],
                *gate_q[1:],
            ],
            gate_q[:1],
            name=tensor("gelu_gate"),
            domain=MS_DOMAIN,
        ),
        helper.make_node(
            "QLinearMul",
            [*hidden_q, *gate_q, *out_q],
            [tensor("act_q")],
            name=tensor("gelu"),
            domain=MS_DOMAIN,
        ),
        helper.make_node(
            "MatMulIntegerToFloat",
            [
                tensor("act_q"),
                const("w2", w2),
                out_q[0],
                const("w2_scale", w2_scale),
                out_q[1],
                const("w2_zero", np.zeros_like(w2_scale, dtype=np.int8)),
                *([block.b2] if block.b2 else []),
            ],
            [block.out],
            name=tensor("fc2"),
            domain=MS_DOMAIN,
        ),
    ]


def rewrite_mlp_blocks(model: Any, ranges: dict[str, tuple[float, float]], weight_bits: int = 7) -> int:
    """Replace every matched MLP block of `model` (in place) by its uint8 form; returns how many.

    `ranges`: (min, max) per float tensor of the FP32 graph, from the calibration pass.
    """
    from onnx import helper, numpy_helper

    if not 2 <= weight_bits <= 8:
        raise MeanlocError(f"weight bits must be 2..8, not {weight_bits}")
    graph = _Graph(model)
    blocks = find_mlp_blocks(model)
    added: list[Any] = []

    def add_constant(name: str, value: np.ndarray) -> str:
        added.append(numpy_helper.from_array(value, name))
        return name

    replacements = {
        block.nodes[0]: _block_nodes(block, graph, ranges, weight_bits, add_constant) for block in blocks
    }
    replaced = {name for block in blocks for name in block.nodes}
    nodes: list[Any] = []
    for node in model.graph.node:
        # fc1 comes first in topological order and the new nodes read only fc1's input: insert them there.
        nodes.extend(replacements.get(node.name, [] if node.name in replaced else [node]))
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    model.graph.initializer.extend(added)
    _drop_unused_constants(model)
    if blocks and not any(entry.domain == MS_DOMAIN for entry in model.opset_import):
        model.opset_import.append(helper.make_opsetid(MS_DOMAIN, 1))
    return len(blocks)


def _drop_unused_constants(model: Any) -> None:
    """Initializers and Constant nodes (the replaced GELU's) that nothing reads any more."""
    used = {name for node in model.graph.node for name in node.input} | {
        value.name for value in model.graph.output
    }
    nodes = [node for node in model.graph.node if node.op_type != "Constant" or node.output[0] in used]
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    kept = [init for init in model.graph.initializer if init.name in used]
    del model.graph.initializer[:]
    model.graph.initializer.extend(kept)
