"""Checkpoint -> ONNX embedder (`images` (N,3,S,S) float32 -> `embedding` (N,D), batch axis dynamic).

Two variants (deployment.md §2):
- opset 17 with native `LayerNormalization`, for TensorRT >= 8.6 (JetPack 6), whose normalization
  layer computes in FP32 under any builder flag;
- opset 16 with every LayerNorm decomposed into ReduceMean/Sub/Pow/Add/Sqrt/Div (TensorRT 8.5 /
  JetPack 5 cannot parse LayerNormalization). Those nodes, and the final L2 normalisation, are
  listed in the metadata key `meanloc.fp32_nodes` so the engine builder can pin them to FP32.

Pipeline: trace with the TorchScript exporter (`dynamo=False`; TracerWarnings are errors, since
they mean data-dependent control flow was frozen into the graph) -> onnx.checker -> onnxslim ->
onnx.checker -> interface and LayerNorm assertions -> metadata -> parity against PyTorch on random
and aerial-looking images -> atomic write. Nothing is written when any step fails.
"""

from __future__ import annotations

import dataclasses
import io
import json
import warnings
from dataclasses import dataclass
from pathlib import Path

import onnx
import torch
from torch import nn

from meanloc import __version__
from meanloc.errors import MeanlocError
from meanloc.runtime.artifacts import atomic_write_bytes, ensure_writable_dir, sha256_bytes
from meanloc.runtime.identity import ModelIdentity
from meanloc.runtime.onnx_contract import (
    FP32_NODES_KEY,
    INPUT_NAME,
    LAYERNORM_KEY,
    OPSET_KEY,
    OUTPUT_NAME,
    write_onnx_metadata,
)
from meanloc.training.checkpoint import checkpoint_identity, load_checkpoint
from meanloc.training.model import MEAN

from .onnx_graph import decomposed_layernorms, fp32_sensitive_nodes, op_counts
from .parity import ParityReport, check_parity, torch_reference

SUPPORTED_OPSETS = (16, 17)
# Batch 2 for tracing so the exporter cannot specialise anything to a batch of 1.
TRACE_BATCH = 2


@dataclass(frozen=True)
class ExportResult:
    path: Path
    sha256: str
    identity: ModelIdentity  # artifact_sha256 is the ONNX file's sha256
    opset: int = 17
    op_counts: dict[str, int] = dataclasses.field(default_factory=dict)
    fp32_nodes: tuple[str, ...] = ()
    parity: ParityReport | None = None

    def summary(self) -> str:
        ops = self.op_counts
        lines = [
            f"wrote {self.path} (opset {self.opset}, sha256 {self.sha256[:16]}...)",
            f"  model: {self.identity.preset}, {self.identity.preprocess.size}px -> {self.identity.embed_dim}-d, "
            f"checkpoint {self.identity.checkpoint_sha256[:16]}...",
            f"  graph: {sum(ops.values())} nodes, LayerNormalization {ops.get('LayerNormalization', 0)}, "
            f"MatMul {ops.get('MatMul', 0)}, Conv {ops.get('Conv', 0)}, Erf {ops.get('Erf', 0)}; "
            f"{len(self.fp32_nodes)} nodes marked for FP32 in TensorRT",
        ]
        if self.parity is not None:
            lines.append("  " + self.parity.summary())
        return "\n".join(lines)


def export_onnx(
    checkpoint_path: str | Path,
    out_path: str | Path,
    opset: int = 17,
    decompose_layernorm: bool = False,
    simplify: bool = True,
    parity: bool = True,
    preset: str | None = None,
    img_size: int | None = None,
) -> ExportResult:
    """Export a checkpoint (meanloc or official MEAN; `preset`/`img_size` only for official files)."""
    loaded = load_checkpoint(checkpoint_path, preset=preset, img_size=img_size)
    return export_model_onnx(
        loaded.model, checkpoint_identity(loaded), out_path, opset, decompose_layernorm, simplify, parity
    )


def export_model_onnx(
    model: MEAN,
    identity: ModelIdentity,
    out_path: str | Path,
    opset: int = 17,
    decompose_layernorm: bool = False,
    simplify: bool = True,
    parity: bool = True,
) -> ExportResult:
    """Export an in-memory model whose identity is already known (tests, the training loop)."""
    decomposed = _layernorm_mode(opset, decompose_layernorm)
    out_path = Path(out_path)
    if out_path.is_dir():
        raise MeanlocError(f"output {out_path} is a folder; give the ONNX file name")
    ensure_writable_dir(out_path.parent)  # fail before the work, not after it
    embedder = model.embedder().eval()
    proto = trace_to_onnx(embedder, identity.preprocess.size, opset)
    _check(proto, "traced graph")
    if simplify:
        import onnxslim

        proto = onnxslim.slim(proto)
        _check(proto, "graph after onnxslim")
    _check_dynamic_batch_only(proto)
    _check_layernorms(proto, embedder, decomposed)

    fp32_nodes = fp32_sensitive_nodes(proto)
    _write_metadata(proto, identity, opset, decomposed, fp32_nodes)
    data = proto.SerializeToString()

    report = None
    if parity:
        report = check_parity(data, torch_reference(embedder), identity.preprocess)
        report.raise_if_failed()
    atomic_write_bytes(out_path, data)
    sha = sha256_bytes(data)
    return ExportResult(
        path=out_path,
        sha256=sha,
        identity=dataclasses.replace(identity, precision="fp32", artifact_sha256=sha),
        opset=opset,
        op_counts=op_counts(proto),
        fp32_nodes=tuple(fp32_nodes),
        parity=report,
    )


def _layernorm_mode(opset: int, decompose_layernorm: bool) -> bool:
    """True when LayerNorm is decomposed; opset 16 has no LayerNormalization op, so it implies it."""
    if opset not in SUPPORTED_OPSETS:
        raise MeanlocError(
            f"unsupported opset {opset}: use 17 (native LayerNorm, TensorRT >= 8.6) "
            "or 16 (LayerNorm decomposed, TensorRT 8.5 / JetPack 5)"
        )
    if decompose_layernorm and opset >= 17:
        raise MeanlocError(
            "LayerNorm is decomposed only in the opset-16 export (for TensorRT 8.5); use opset 16"
        )
    return opset < 17


def trace_to_onnx(embedder: nn.Module, size: int, opset: int) -> onnx.ModelProto:
    """The TorchScript ONNX export of the inference graph, with only the batch axis dynamic."""
    dummy = torch.zeros(TRACE_BATCH, 3, size, size)
    buffer = io.BytesIO()
    with warnings.catch_warnings(record=True) as caught, torch.no_grad():
        # A TracerWarning means a Python branch or shape value was frozen into the graph. Recorded
        # rather than raised: raised inside torch's C++ it would surface as a SystemError.
        warnings.simplefilter("always", torch.jit.TracerWarning)
        # dynamo=False is deliberate (deployment.md §2); torch's notices about that path are noise here.
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(
            embedder,
            (dummy,),
            buffer,
            dynamo=False,
            opset_version=opset,
            input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME],
            dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}},
            do_constant_folding=True,
        )
    for warning in caught:
        if issubclass(warning.category, torch.jit.TracerWarning):
            first_line = str(warning.message).splitlines()[0]
            raise MeanlocError(f"the inference graph does not trace cleanly: {first_line}")
        warnings.warn_explicit(warning.message, warning.category, warning.filename, warning.lineno)
    return onnx.load_model_from_string(buffer.getvalue())


def _check(proto: onnx.ModelProto, what: str) -> None:
    try:
        onnx.checker.check_model(proto, full_check=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as exc:
        raise MeanlocError(
            f"ONNX export produced an invalid {what}: {str(exc).strip().splitlines()[0]}"
        ) from None


def _shape(value_info: onnx.ValueInfoProto) -> list[int | str]:
    return [
        dim.dim_value if dim.HasField("dim_value") else dim.dim_param
        for dim in value_info.type.tensor_type.shape.dim
    ]


def _check_dynamic_batch_only(proto: onnx.ModelProto) -> None:
    for value in (*proto.graph.input, *proto.graph.output):
        shape = _shape(value)
        if (
            not shape
            or not isinstance(shape[0], str)
            or not all(isinstance(d, int) and d > 0 for d in shape[1:])
        ):
            raise MeanlocError(
                f"exported '{value.name}' has shape {shape}; expected only the batch axis dynamic"
            )


def _check_layernorms(proto: onnx.ModelProto, embedder: nn.Module, decomposed: bool) -> None:
    expected = sum(isinstance(module, nn.LayerNorm) for module in embedder.modules())
    native = op_counts(proto).get("LayerNormalization", 0)
    if decomposed:
        found = len(decomposed_layernorms(proto))
        if native or found != expected:
            raise MeanlocError(
                f"opset-16 export: expected {expected} decomposed LayerNorms and no LayerNormalization op, "
                f"found {found} decomposed and {native} native"
            )
    elif native != expected:
        raise MeanlocError(f"opset-17 export: expected {expected} LayerNormalization nodes, found {native}")


def _write_metadata(
    proto: onnx.ModelProto, identity: ModelIdentity, opset: int, decomposed: bool, fp32_nodes: list[str]
) -> None:
    props = dict(dataclasses.replace(identity, precision="fp32").to_onnx_metadata())
    props[OPSET_KEY] = str(opset)
    props[LAYERNORM_KEY] = "decomposed" if decomposed else "native"
    props[FP32_NODES_KEY] = json.dumps(fp32_nodes)
    write_onnx_metadata(proto, props)
    proto.producer_name = "meanloc"
    proto.producer_version = __version__
    proto.doc_string = f"MEAN {identity.preset} embedder: {INPUT_NAME} -> L2-normalised {OUTPUT_NAME}"
