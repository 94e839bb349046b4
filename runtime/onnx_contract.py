"""The contract every meanloc embedding ONNX keeps: tensor names, metadata keys, and the one writer.

Exporter (`export/onnx_export.py`), quantizer (`calibration/qdq.py`), engine builder, backends
and calibration all name the input and output tensors and the `meanloc.*` metadata props from
here, and only `write_onnx_metadata` writes those props. It lives in `runtime/`, the lowest layer,
so export/ and calibration/ share it without importing each other.

Works on any object shaped like `onnx.ModelProto` (it never imports onnx), Python 3.8, torch-free.
"""

from typing import Any, Dict, Mapping

# Interface of the embedder graph: images (N, 3, S, S) float32 -> L2-normalised embedding (N, D).
INPUT_NAME = "images"
OUTPUT_NAME = "embedding"

ONNX_METADATA_PREFIX = "meanloc."
# ModelIdentity.to_onnx_metadata() (runtime/identity.py) writes these.
PRESET_KEY = ONNX_METADATA_PREFIX + "preset"
EMBED_DIM_KEY = ONNX_METADATA_PREFIX + "embed_dim"
CHECKPOINT_SHA256_KEY = ONNX_METADATA_PREFIX + "checkpoint_sha256"
PREPROCESS_KEY = ONNX_METADATA_PREFIX + "preprocess"  # the whole spec (size, colour order, mean, std) as JSON
VERSION_KEY = ONNX_METADATA_PREFIX + "version"
PRECISION_KEY = ONNX_METADATA_PREFIX + "precision"
QUERY_VIEW_KEY = ONNX_METADATA_PREFIX + "query_view"
# The exporter adds these: the opset, how LayerNorm was written, and the nodes TensorRT keeps in FP32.
OPSET_KEY = ONNX_METADATA_PREFIX + "opset"
LAYERNORM_KEY = ONNX_METADATA_PREFIX + "layernorm"
FP32_NODES_KEY = ONNX_METADATA_PREFIX + "fp32_nodes"
# Quantized flavours add their settings (JSON).
QUANTIZATION_KEY = ONNX_METADATA_PREFIX + "quantization"


def onnx_metadata(model: Any) -> Dict[str, str]:
    """The metadata props of a ModelProto (or of `runtime.onnx_file`'s parsed model) as a dict."""
    return {prop.key: prop.value for prop in model.metadata_props}


def write_onnx_metadata(model: Any, props: Mapping[str, str]) -> None:
    """Replace the model's metadata props with `props`, sorted by key so the file is reproducible."""
    del model.metadata_props[:]
    for key, value in sorted(props.items()):
        model.metadata_props.add(key=key, value=str(value))
