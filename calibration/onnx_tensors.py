"""Which tensor names of an ONNX graph a calibration cache must (and may) contain."""

from __future__ import annotations

from typing import Any

# The layers TensorRT runs in INT8 and whose inputs/outputs therefore need a scale.
INT8_OP_TYPES = ("Conv", "MatMul", "Gemm")


def value_names(model: Any) -> set[str]:
    """Every tensor name in the graph: inputs, node outputs and initializers."""
    graph = model.graph
    names = {value.name for value in graph.input} | {init.name for init in graph.initializer}
    for node in graph.node:
        names.update(name for name in node.output if name)
    return names


def _constant_tensors(model: Any) -> set[str]:
    """Initializers and everything computed from them alone (Constant, Identity-of-weight, ...)."""
    constant = {init.name for init in model.graph.initializer}
    for node in model.graph.node:  # ONNX nodes are topologically sorted
        if node.op_type == "Constant" or all(name in constant for name in node.input if name):
            constant.update(node.output)
    return constant


def int8_activation_names(model: Any) -> set[str]:
    """The activations feeding or leaving Conv/MatMul/Gemm: they must all have a cache scale."""
    constant = _constant_tensors(model)
    required = set()
    for node in model.graph.node:
        if node.op_type in INT8_OP_TYPES:
            required.update(name for name in (*node.input, *node.output) if name and name not in constant)
    return required
