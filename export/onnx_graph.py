"""Inspecting meanloc's embedding ONNX graphs (no torch, no onnx import: the engine builder on a
Jetson uses this on the graph `runtime.onnx_file` parsed, so it stays Python 3.8 compatible).

- `op_counts` summarises a graph by operator type.
- `fp32_sensitive_nodes` finds the nodes TensorRT must keep in FP32 under FP16/INT8 builds: every
  LayerNorm that was decomposed into ReduceMean/Sub/Pow/Add/Sqrt/Div(/Mul/Add) for opset 16, and the
  final L2 normalisation (a sum of D squares that can overflow FP16; deployment.md §6). The graph is
  the single source of truth, so the builder runs the same detection on the file it builds.

Loading and validating a file is `runtime.onnx_file.load_embedding_onnx`; names and metadata keys
are `runtime.onnx_contract`.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from typing import Any

from meanloc.runtime.onnx_contract import OUTPUT_NAME


def op_counts(model: Any) -> dict[str, int]:
    return dict(sorted(Counter(node.op_type for node in model.graph.node).items()))


class _GraphIndex:
    """Producer/consumer lookups over a GraphProto."""

    def __init__(self, graph: Any) -> None:
        self.producer: dict[str, Any] = {}
        self.consumers: dict[str, list[Any]] = {}
        for node in graph.node:
            for name in node.output:
                self.producer[name] = node
            for name in node.input:
                self.consumers.setdefault(name, []).append(node)

    def parent(self, node: Any, index: int, op_type: str) -> Any | None:
        if index >= len(node.input):
            return None
        parent = self.producer.get(node.input[index])
        return parent if parent is not None and parent.op_type == op_type else None

    def only_child(self, node: Any, op_type: str) -> Any | None:
        children = self.consumers.get(node.output[0], [])
        return children[0] if len(children) == 1 and children[0].op_type == op_type else None


def decomposed_layernorms(model: Any) -> list[list[str]]:
    """Node names of each LayerNorm written out as primitive ops (torch's opset < 17 export).

    Pattern (anchored on Sqrt): Div(Sub(x, ReduceMean(x)), Sqrt(Add(ReduceMean(Pow(Sub, 2)), eps))),
    followed by the optional affine Mul(weight) and Add(bias) (onnxslim drops them when they are 1/0).
    """
    index = _GraphIndex(model.graph)
    groups = []
    for sqrt in (node for node in model.graph.node if node.op_type == "Sqrt"):
        add_eps = index.parent(sqrt, 0, "Add")
        var_mean = index.parent(add_eps, 0, "ReduceMean") if add_eps is not None else None
        power = index.parent(var_mean, 0, "Pow") if var_mean is not None else None
        centred = index.parent(power, 0, "Sub") if power is not None else None
        mean = index.parent(centred, 1, "ReduceMean") if centred is not None else None
        if mean is None or mean.input[0] != centred.input[0]:
            continue
        divide = index.only_child(sqrt, "Div")
        if divide is None or divide.input[0] != centred.output[0]:
            continue
        group = [mean, centred, power, var_mean, add_eps, sqrt, divide]
        scale = index.only_child(divide, "Mul")
        if scale is not None:
            group.append(scale)
            shift = index.only_child(scale, "Add")
            if shift is not None:
                group.append(shift)
        groups.append([node.name for node in group])
    return groups


def l2_normalisation_nodes(model: Any) -> list[str]:
    """Nodes computing `x / clamp(sqrt(sum(x*x)))` at the output: everything feeding the final Div's
    denominator back to (not including) the un-normalised embedding x."""
    index = _GraphIndex(model.graph)
    divide = index.producer.get(OUTPUT_NAME)
    if divide is None or divide.op_type != "Div":
        return []
    stop = divide.input[0]
    found: list[str] = [divide.name]
    seen: set[str] = {stop}
    pending = [divide.input[1]]
    while pending:
        tensor = pending.pop()
        node = index.producer.get(tensor)
        if tensor in seen or node is None:
            continue
        seen.add(tensor)
        found.append(node.name)
        pending.extend(name for name in node.input if name)
    return found


def fp32_sensitive_nodes(model: Any) -> list[str]:
    """All node names the TensorRT builder pins to FP32 (decomposed LayerNorms + final L2 norm)."""
    names = [name for group in decomposed_layernorms(model) for name in group]
    names.extend(l2_normalisation_nodes(model))
    return list(dict.fromkeys(names))


def output_tensors_of(model: Any, node_names: Iterable[str]) -> set[str]:
    """Output tensor names of the given nodes: TensorRT's ONNX parser names layer outputs after
    them, which survives even where it renames the layers themselves."""
    wanted = set(node_names)
    return {name for node in model.graph.node if node.name in wanted for name in node.output}
