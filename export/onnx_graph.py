"""Reading and inspecting meanloc's embedding ONNX graphs (no torch: the engine builder on a
Jetson uses this too, so it stays Python 3.8 compatible).

Three jobs:
- `load_embedding_onnx` opens an ONNX file and refuses, in one line, anything that is not a
  meanloc embedder: unreadable or corrupt protobuf, a graph that fails `onnx.checker`, a foreign
  interface (input other than `images` (N,3,S,S), output other than `embedding` (N,D)), or no
  meanloc metadata.
- `op_counts` summarises a graph by operator type.
- `fp32_sensitive_nodes` finds the nodes TensorRT must keep in FP32 under FP16/INT8 builds: every
  LayerNorm that was decomposed into ReduceMean/Sub/Pow/Add/Sqrt/Div(/Mul/Add) for opset 16, and the
  final L2 normalisation (a sum of D squares that can overflow FP16; deployment.md §6). The graph is
  the single source of truth, so the builder runs the same detection on the file it builds.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from meanloc.errors import ArtifactMismatchError, MeanlocError, MissingDependencyError
from meanloc.runtime.artifacts import sha256_bytes
from meanloc.runtime.identity import ONNX_METADATA_PREFIX, ModelIdentity

INPUT_NAME = "images"
OUTPUT_NAME = "embedding"
# Extra metadata keys written by the exporter, next to ModelIdentity.to_onnx_metadata().
OPSET_KEY = ONNX_METADATA_PREFIX + "opset"
LAYERNORM_KEY = ONNX_METADATA_PREFIX + "layernorm"
FP32_NODES_KEY = ONNX_METADATA_PREFIX + "fp32_nodes"


@dataclass(frozen=True)
class EmbeddingOnnx:
    """A validated embedding ONNX: its proto, file hash, identity and interface."""

    path: Path
    model: Any  # onnx.ModelProto
    sha256: str
    identity: ModelIdentity
    input_size: int
    embed_dim: int
    opset: int

    @property
    def metadata(self) -> dict[str, str]:
        return {prop.key: prop.value for prop in self.model.metadata_props}


def _onnx() -> Any:
    try:
        import onnx
    except ImportError:
        raise MissingDependencyError("the Python package 'onnx' is needed here: pip install onnx") from None
    return onnx


def default_opset(model: Any) -> int:
    for entry in model.opset_import:
        if entry.domain in ("", "ai.onnx"):
            return int(entry.version)
    raise MeanlocError("ONNX model declares no default-domain opset")


def _dims(value_info: Any) -> list[int | None]:
    """Static dims as ints, symbolic/unknown dims as None."""
    shape = value_info.type.tensor_type.shape
    return [dim.dim_value if dim.HasField("dim_value") else None for dim in shape.dim]


def load_embedding_onnx(path: str | Path, what: str = "ONNX model") -> EmbeddingOnnx:
    """Load and validate a meanloc embedding ONNX, or raise a one-line MeanlocError."""
    onnx = _onnx()
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise MeanlocError(f"{what} not found: {path}") from None
    except OSError as exc:
        raise MeanlocError(f"cannot read {what} {path}: {exc.strerror or exc}") from None
    try:
        model = onnx.load_model_from_string(data)
    except Exception as exc:  # protobuf raises DecodeError or RuntimeWarning-ish errors depending on version
        raise MeanlocError(f"{what} {path} is not a valid ONNX file ({type(exc).__name__})") from None
    if not model.graph.node:
        raise MeanlocError(f"{what} {path} is not a valid ONNX file (empty graph)")
    try:
        onnx.checker.check_model(model)
    except onnx.checker.ValidationError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else "invalid graph"
        raise MeanlocError(f"{what} {path} fails onnx.checker: {first}") from None
    input_size, embed_dim = _check_interface(model, f"{what} {path}")
    props = {prop.key: prop.value for prop in model.metadata_props}
    sha = sha256_bytes(data)
    identity = ModelIdentity.from_onnx_metadata(props, str(path), artifact_sha256=sha)
    if identity.embed_dim != embed_dim or identity.preprocess.size != input_size:
        raise ArtifactMismatchError(
            f"{path}: metadata says {identity.preprocess.size}px/{identity.embed_dim}-d but the graph is {input_size}px/{embed_dim}-d"
        )
    return EmbeddingOnnx(path, model, sha, identity, input_size, embed_dim, default_opset(model))


def _check_interface(model: Any, source: str) -> tuple[int, int]:
    initializers = {init.name for init in model.graph.initializer}
    inputs = [value for value in model.graph.input if value.name not in initializers]
    outputs = list(model.graph.output)
    expected = f"input '{INPUT_NAME}' (N,3,S,S) and output '{OUTPUT_NAME}' (N,D)"
    if (
        len(inputs) != 1
        or inputs[0].name != INPUT_NAME
        or len(outputs) != 1
        or outputs[0].name != OUTPUT_NAME
    ):
        raise ArtifactMismatchError(
            f"{source} is not a meanloc embedder: it has inputs {[v.name for v in inputs]} and outputs {[v.name for v in outputs]}, expected {expected}"
        )
    in_dims, out_dims = _dims(inputs[0]), _dims(outputs[0])
    if len(in_dims) != 4 or in_dims[1] != 3 or in_dims[2] is None or in_dims[2] != in_dims[3]:
        raise ArtifactMismatchError(f"{source} input '{INPUT_NAME}' has shape {in_dims}, expected {expected}")
    if len(out_dims) != 2 or out_dims[1] is None:
        raise ArtifactMismatchError(f"{source} output '{OUTPUT_NAME}' has shape {out_dims}, expected {expected}")
    return int(in_dims[2]), int(out_dims[1])


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
