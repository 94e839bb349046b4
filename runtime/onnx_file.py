"""Reading a meanloc embedding ONNX without the `onnx` package (what the engine builder runs on a Jetson).

JetPack ships TensorRT, numpy and OpenCV but not `onnx`, and `pip install onnx` there upgrades
the system numpy that JetPack's TensorRT bindings were built against (deployment.md §1). The
builder only needs the metadata props, the opset and the graph's names and op types; TensorRT's
own OnnxParser reads the weights. So this module decodes just those fields of the protobuf wire
format (https://protobuf.dev/programming-guides/encoding/) by the field numbers of `onnx/onnx.proto`,
and skips everything else (weights are skipped by length, never copied).

The objects it returns have the attribute names of `onnx.ModelProto` for what they carry
(`model.graph.node[i].op_type`, `.input`, `.output`, `.name`; `graph.initializer[i].name`;
`model.metadata_props`; `model.opset_import`), so graph helpers work on either.

`load_embedding_onnx` is the one loader of meanloc ONNX files: it refuses, in one line, a file
that is not a meanloc embedder. Python 3.8, torch-free, onnx-free.
"""

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional, Tuple, Union

from meanloc.errors import ArtifactMismatchError, MeanlocError

from .artifacts import sha256_bytes
from .identity import ModelIdentity
from .onnx_contract import INPUT_NAME, OUTPUT_NAME, onnx_metadata

# Wire types (protobuf encoding): varint, fixed 64-bit, length-delimited, fixed 32-bit.
_VARINT, _FIXED64, _BYTES, _FIXED32 = 0, 1, 2, 5
# onnx.proto field numbers of the fields read here.
_MODEL_GRAPH, _MODEL_OPSET, _MODEL_METADATA = 7, 8, 14
_GRAPH_NODE, _GRAPH_INITIALIZER, _GRAPH_INPUT, _GRAPH_OUTPUT = 1, 5, 11, 12
_NODE_INPUT, _NODE_OUTPUT, _NODE_NAME, _NODE_OP_TYPE, _NODE_DOMAIN = 1, 2, 3, 4, 7
_TENSOR_DIMS, _TENSOR_DATA_TYPE, _TENSOR_NAME = 1, 2, 8
_VALUE_NAME, _VALUE_TYPE = 1, 2
_TYPE_TENSOR, _TENSOR_TYPE_ELEM, _TENSOR_TYPE_SHAPE, _SHAPE_DIM = 1, 1, 2, 1
_DIM_VALUE, _DIM_PARAM = 1, 2
_ENTRY_KEY, _ENTRY_VALUE = 1, 2
_OPSET_DOMAIN, _OPSET_VERSION = 1, 2

Buffer = Union[bytes, memoryview]


class OnnxFormatError(ValueError):
    """The bytes are not a well-formed ONNX protobuf."""


@dataclass
class OnnxNode:
    name: str = ""
    op_type: str = ""
    domain: str = ""
    input: List[str] = field(default_factory=list)
    output: List[str] = field(default_factory=list)


@dataclass
class OnnxInitializer:
    name: str = ""
    data_type: int = 0  # onnx.TensorProto.DataType (1 FLOAT, 3 INT8, ...)
    dims: List[int] = field(default_factory=list)


@dataclass
class OnnxValue:
    """A graph input or output: its name and shape (None for a symbolic or unknown dimension)."""

    name: str = ""
    elem_type: int = 0
    dims: List[Optional[int]] = field(default_factory=list)


@dataclass
class OnnxGraph:
    node: List[OnnxNode] = field(default_factory=list)
    initializer: List[OnnxInitializer] = field(default_factory=list)
    input: List[OnnxValue] = field(default_factory=list)
    output: List[OnnxValue] = field(default_factory=list)


@dataclass
class MetadataProp:
    key: str
    value: str


@dataclass
class OpsetId:
    domain: str
    version: int


@dataclass
class OnnxModel:
    graph: OnnxGraph = field(default_factory=OnnxGraph)
    metadata_props: List[MetadataProp] = field(default_factory=list)
    opset_import: List[OpsetId] = field(default_factory=list)


def _varint(data: Buffer, pos: int) -> Tuple[int, int]:
    result, shift = 0, 0
    while True:
        if pos >= len(data) or shift > 63:
            raise OnnxFormatError("truncated or overlong varint")
        byte = data[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, pos
        shift += 7


def _fields(data: Buffer) -> Iterator[Tuple[int, int, Any]]:
    """(field number, wire type, value) of one message; bytes fields as memoryview slices."""
    data = memoryview(data)
    pos = 0
    while pos < len(data):
        key, pos = _varint(data, pos)
        number, wire = key >> 3, key & 7
        if number == 0:
            raise OnnxFormatError("field number 0")
        if wire == _VARINT:
            value, pos = _varint(data, pos)
        elif wire == _BYTES:
            length, pos = _varint(data, pos)
            if pos + length > len(data):
                raise OnnxFormatError("a field runs past the end of its message (truncated file?)")
            value, pos = data[pos : pos + length], pos + length
        elif wire in (_FIXED64, _FIXED32):
            size = 8 if wire == _FIXED64 else 4
            if pos + size > len(data):
                raise OnnxFormatError("truncated fixed-size field")
            value, pos = None, pos + size
        else:
            raise OnnxFormatError("unsupported wire type {}".format(wire))
        yield number, wire, value


def _text(value: Any) -> str:
    try:
        return bytes(value).decode("utf-8")
    except UnicodeDecodeError:
        raise OnnxFormatError("a string field is not UTF-8") from None


def _signed(value: int) -> int:
    """int64 fields are two's complement varints (a -1 dimension is 10 bytes of 0xFF...)."""
    return value - (1 << 64) if value >= 1 << 63 else value


def _parse(data: Buffer, handlers: Dict[int, Callable[[int, Any], None]]) -> None:
    for number, wire, value in _fields(data):
        handler = handlers.get(number)
        if handler is not None:
            handler(wire, value)


def _string_into(target: List[str]) -> Callable[[int, Any], None]:
    return lambda wire, value: target.append(_text(value))


def _node(data: Buffer) -> OnnxNode:
    node = OnnxNode()

    def set_text(name: str) -> Callable[[int, Any], None]:
        return lambda wire, value: setattr(node, name, _text(value))

    _parse(
        data,
        {
            _NODE_INPUT: _string_into(node.input),
            _NODE_OUTPUT: _string_into(node.output),
            _NODE_NAME: set_text("name"),
            _NODE_OP_TYPE: set_text("op_type"),
            _NODE_DOMAIN: set_text("domain"),
        },
    )
    return node


def _packed_or_single(wire: int, value: Any, into: List[int]) -> None:
    if wire == _VARINT:
        into.append(_signed(value))
        return
    pos = 0
    while pos < len(value):
        number, pos = _varint(value, pos)
        into.append(_signed(number))


def _initializer(data: Buffer) -> OnnxInitializer:
    tensor = OnnxInitializer()
    _parse(
        data,
        {
            _TENSOR_DIMS: lambda wire, value: _packed_or_single(wire, value, tensor.dims),
            _TENSOR_DATA_TYPE: lambda wire, value: setattr(tensor, "data_type", int(value)),
            _TENSOR_NAME: lambda wire, value: setattr(tensor, "name", _text(value)),
        },
    )
    return tensor


def _value(data: Buffer) -> OnnxValue:
    result = OnnxValue()

    def dim(wire: int, value: Any) -> None:
        sizes: List[Optional[int]] = [None]
        _parse(value, {_DIM_VALUE: lambda w, v: sizes.__setitem__(0, _signed(v))})
        result.dims.append(sizes[0])

    def tensor_type(wire: int, value: Any) -> None:
        _parse(
            value,
            {
                _TENSOR_TYPE_ELEM: lambda w, v: setattr(result, "elem_type", int(v)),
                _TENSOR_TYPE_SHAPE: lambda w, v: _parse(v, {_SHAPE_DIM: dim}),
            },
        )

    _parse(
        data,
        {
            _VALUE_NAME: lambda wire, value: setattr(result, "name", _text(value)),
            _VALUE_TYPE: lambda wire, value: _parse(value, {_TYPE_TENSOR: tensor_type}),
        },
    )
    return result


def _graph(data: Buffer) -> OnnxGraph:
    graph = OnnxGraph()
    _parse(
        data,
        {
            _GRAPH_NODE: lambda wire, value: graph.node.append(_node(value)),
            _GRAPH_INITIALIZER: lambda wire, value: graph.initializer.append(_initializer(value)),
            _GRAPH_INPUT: lambda wire, value: graph.input.append(_value(value)),
            _GRAPH_OUTPUT: lambda wire, value: graph.output.append(_value(value)),
        },
    )
    return graph


def _pair(data: Buffer, first: int, second: int) -> Tuple[Any, Any]:
    found: Dict[int, Any] = {}
    _parse(data, {first: lambda w, v: found.__setitem__(first, v), second: lambda w, v: found.__setitem__(second, v)})
    return found.get(first), found.get(second)


def parse_onnx_model(data: Buffer) -> OnnxModel:
    """Metadata, opsets and graph structure of a serialized ModelProto; OnnxFormatError if malformed."""
    model = OnnxModel()

    def metadata(wire: int, value: Any) -> None:
        key, text = _pair(value, _ENTRY_KEY, _ENTRY_VALUE)
        model.metadata_props.append(MetadataProp(_text(key or b""), _text(text or b"")))

    def opset(wire: int, value: Any) -> None:
        domain, version = _pair(value, _OPSET_DOMAIN, _OPSET_VERSION)
        model.opset_import.append(OpsetId(_text(domain or b""), int(version or 0)))

    def graph(wire: int, value: Any) -> None:
        model.graph = _graph(value)

    for number, wire, value in _fields(data):
        handler = {_MODEL_GRAPH: graph, _MODEL_OPSET: opset, _MODEL_METADATA: metadata}.get(number)
        if handler is not None:
            if wire != _BYTES:
                raise OnnxFormatError("field {} has wire type {}".format(number, wire))
            handler(wire, value)
    return model


def default_opset(model: Any) -> int:
    for entry in model.opset_import:
        if entry.domain in ("", "ai.onnx"):
            return int(entry.version)
    raise MeanlocError("ONNX model declares no default-domain opset")


@dataclass(frozen=True)
class EmbeddingOnnx:
    """A validated embedding ONNX: its bytes, parsed structure, file hash, identity and interface."""

    path: Path
    data: bytes
    model: OnnxModel
    sha256: str
    identity: ModelIdentity
    input_size: int
    embed_dim: int
    opset: int

    @property
    def metadata(self) -> Dict[str, str]:
        return onnx_metadata(self.model)


def load_embedding_onnx(path: Union[str, Path], what: str = "ONNX model") -> EmbeddingOnnx:
    """Load and validate a meanloc embedding ONNX, or raise a one-line MeanlocError."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise MeanlocError("{} not found: {}".format(what, path)) from None
    except OSError as exc:
        raise MeanlocError("cannot read {} {}: {}".format(what, path, exc.strerror or exc)) from None
    try:
        model = parse_onnx_model(data)
    except OnnxFormatError as exc:
        raise MeanlocError("{} {} is not a valid ONNX file ({})".format(what, path, exc)) from None
    if not model.graph.node or not model.opset_import:
        raise MeanlocError("{} {} is not a valid ONNX file (empty graph)".format(what, path))
    input_size, embed_dim = _check_interface(model, "{} {}".format(what, path))
    sha = sha256_bytes(data)
    identity = ModelIdentity.from_onnx_metadata(onnx_metadata(model), str(path), artifact_sha256=sha)
    if identity.embed_dim != embed_dim or identity.preprocess.size != input_size:
        raise ArtifactMismatchError(
            "{}: metadata says {}px/{}-d but the graph is {}px/{}-d".format(
                path, identity.preprocess.size, identity.embed_dim, input_size, embed_dim
            )
        )
    return EmbeddingOnnx(path, data, model, sha, identity, input_size, embed_dim, default_opset(model))


def _check_interface(model: OnnxModel, source: str) -> Tuple[int, int]:
    initializers = {init.name for init in model.graph.initializer}
    inputs = [value for value in model.graph.input if value.name not in initializers]
    outputs = list(model.graph.output)
    expected = "input '{}' (N,3,S,S) and output '{}' (N,D)".format(INPUT_NAME, OUTPUT_NAME)
    if len(inputs) != 1 or inputs[0].name != INPUT_NAME or len(outputs) != 1 or outputs[0].name != OUTPUT_NAME:
        raise ArtifactMismatchError(
            "{} is not a meanloc embedder: it has inputs {} and outputs {}, expected {}".format(
                source, [v.name for v in inputs], [v.name for v in outputs], expected
            )
        )
    in_dims, out_dims = inputs[0].dims, outputs[0].dims
    if len(in_dims) != 4 or in_dims[1] != 3 or in_dims[2] is None or in_dims[2] != in_dims[3]:
        raise ArtifactMismatchError("{} input '{}' has shape {}, expected {}".format(source, INPUT_NAME, in_dims, expected))
    if len(out_dims) != 2 or out_dims[1] is None:
        raise ArtifactMismatchError("{} output '{}' has shape {}, expected {}".format(source, OUTPUT_NAME, out_dims, expected))
    return int(in_dims[2]), int(out_dims[1])
