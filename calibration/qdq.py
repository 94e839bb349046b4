"""The two quantized ONNX flavours, kept as separate, labelled files (deployment.md §5.3, §7).

- `int8-qdq-trt`: explicit quantization for TensorRT, by TensorRT's Q/DQ rules: symmetric signed
  int8, zero point 0, per-channel weights, per-tensor activations, Q/DQ on the inputs of Conv,
  MatMul and Gemm, float biases. Weights stay FP32 with a Q->DQ pair of their own, and every
  quantized consumer gets a dedicated pair (a residual Add reading the same activation shares its
  DQ; see `TENSORRT_WEIGHT_OPTIONS`). `op_types_to_quantize` is explicit because ORT's default QDQ
  registry also wraps LayerNormalization, Transpose and others; the opset is kept (TensorRT 8.x
  parses <= 17). Given calibration images, the layers the embedding is most sensitive to stay FP32
  until the mean cosine to FP32 reaches 0.99 (`fallback.py`; at most 15 % of the layers).
- `int8-cpu`: the fastest ONNX Runtime CPU variant, recipe `integer-mlp` (default): convolutions
  through ORT's static Q/DQ with quantized outputs (so ORT fuses each into a QLinearConv), and every
  ConvNeXt MLP kept in uint8 (`integer_mlp.py`). Activations are uint8 asymmetric from the
  calibration ranges; weights int8 per channel with `reduce_range` (7 bits), because without VNNI
  ORT's U8S8 kernel sums pairs of u8 x s8 products in int16 (vpmaddubsw) and saturates with
  full-range weights. `dynamic` (no ranges needed) and `static-u8s8` quantize the MatMuls only and
  are kept for other CPUs.

The measurements behind these choices, and what was tried and dropped, are in bench/RESULTS.md
("INT8 model design, from calibration/qdq.py"). Both flavours carry the FP32 model's metadata with
`meanloc.precision` replaced, plus `meanloc.quantization` describing the settings (also copied into
the calibration manifest), so every consumer knows which artifact it holds.
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import json
import logging
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from meanloc.errors import MeanlocError
from meanloc.runtime.artifacts import atomic_path
from meanloc.runtime.calibration_cache import INT8_OP_TYPES
from meanloc.runtime.identity import ModelIdentity
from meanloc.runtime.onnx_contract import QUANTIZATION_KEY, onnx_metadata, write_onnx_metadata

from .fallback import TARGET_COSINE, BuildFn, choose_fp32_fallback, embed_batches, mean_cosine
from .integer_mlp import GELU_SIGMOID_SLOPE, rewrite_mlp_blocks
from .ranges import TensorRanges, ort_method

TRT_PRECISION = "int8-qdq-trt"
CPU_PRECISION = "int8-cpu"
CPU_RECIPES = ("integer-mlp", "dynamic", "static-u8s8")
DEFAULT_CPU_RECIPE = "integer-mlp"
# 7-bit weights: without VNNI, ORT's U8S8 kernel (vpmaddubsw) adds two u8*s8 products in int16,
# which saturates for full-range weights (ORT quantization docs). Measured on the demo model:
# dynamic mean/min cosine 0.99986/0.9969 -> 0.99993/0.9998, per-channel 0.9983/0.978 -> 0.99994/0.9998.
CPU_REDUCE_RANGE = True
# ORT's QDQ default stores INT8 weight initializers behind a lone DequantizeLinear. TensorRT 8.x
# wants FP32 weights that its own IQuantizeLayer quantizes ("Weights of Q/DQ models must be
# specified using FP32 data type", TensorRT 8.6 developer guide, Explicit Quantization >
# Quantized Weights; pre-quantized INT8 weights are accepted only from 10.x, current guide,
# "Quantized Weights"), and a Q/DQ pair on each input of each quantizable layer ("TensorRT
# Processing of Q/DQ Networks"; ORT's qdq_quantizer.py: "In TRT, QDQ pair can't be shared between
# nodes"). NVIDIA's Model-Optimizer passes the same two options to ORT (`trt_guided_options` in
# modelopt/onnx/quantization/ort_utils.py). The CPU flavour keeps INT8 weights: ORT folds them.
TENSORRT_WEIGHT_OPTIONS = {"AddQDQPairToWeight": True, "DedicatedQDQPair": True}


class _DropPreprocessAdvice(logging.Filter):
    """ORT logs "consider to run pre-processing" on every call. Its pre-processing (symbolic shape
    inference, ORT graph optimisation) is skipped on purpose: the exported graph is already
    simplified, and the TensorRT flavour must stay the exported graph plus Q/DQ nodes."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "pre-processing before quantization" not in record.getMessage()


@contextlib.contextmanager
def _quiet_ort_advice() -> Iterator[None]:
    root = logging.getLogger()
    advice_filter = _DropPreprocessAdvice()
    root.addFilter(advice_filter)
    try:
        yield
    finally:
        root.removeFilter(advice_filter)


def _default_opset(model: Any) -> int:
    return next(int(entry.version) for entry in model.opset_import if entry.domain in ("", "ai.onnx"))


def _finish_model(
    tmp_model: Path, out_path: Path, source: Any, identity: ModelIdentity, settings: dict[str, Any]
) -> Path:
    """Copy the FP32 metadata (precision replaced), check the opset, write atomically."""
    import onnx

    model = onnx.load(str(tmp_model))
    if _default_opset(model) != _default_opset(source):
        raise MeanlocError(
            f"quantization changed the opset from {_default_opset(source)} to {_default_opset(model)}; "
            "TensorRT 8.x would no longer parse it"
        )
    props = onnx_metadata(source)
    props.update(
        dataclasses.replace(
            identity, precision=settings["precision"], artifact_sha256=None
        ).to_onnx_metadata()
    )
    props[QUANTIZATION_KEY] = json.dumps(settings, sort_keys=True)
    write_onnx_metadata(model, props)
    onnx.checker.check_model(model)
    with atomic_path(out_path) as tmp:
        onnx.save(model, str(tmp))
    return out_path


def _static_qdq(
    fp32_path: Path,
    out_path: Path,
    ranges: TensorRanges,
    op_types: list[str],
    activation_type: Any,
    symmetric: bool,
    work: Path,
    nodes_to_quantize: Sequence[str] | None = None,
    nodes_to_exclude: Sequence[str] = (),
    reduce_range: bool = False,
    quantize_outputs: bool = False,
    tensorrt_weights: bool = False,
) -> None:
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static

    # The ranges of the calibration pass, reloaded instead of recomputed ("the same calibration ranges").
    cache = work / "ort_ranges.json"
    if not cache.is_file():
        ranges.save_for_ort(cache)
    extra_options: dict[str, Any] = {
        "ActivationSymmetric": symmetric,
        "WeightSymmetric": True,
        # Q/DQ on the inputs of the quantized ops only (TensorRT's placement, and ORT CPU's
        # MatMulIntegerToFloat path). With `quantize_outputs`, Q/DQ on their outputs too: ORT CPU
        # then fuses DQ -> Conv -> Q into one QLinearConv.
        "OpTypesToExcludeOutputQuantization": [] if quantize_outputs else op_types,
        # Biases stay float: TensorRT's DequantizeLinear takes int8 only, and it fuses the bias.
        "QuantizeBias": False,
    }
    if "MatMul" in op_types:
        # MatMul weights are (in, out): quantize per output column.
        extra_options["QDQOpTypePerChannelSupportToAxis"] = {"MatMul": 1}
    if tensorrt_weights:
        extra_options.update(TENSORRT_WEIGHT_OPTIONS)
    with _quiet_ort_advice():
        quantize_static(
            str(fp32_path),
            str(out_path),
            calibration_data_reader=None,
            quant_format=QuantFormat.QDQ,
            op_types_to_quantize=op_types,
            per_channel=True,
            reduce_range=reduce_range,
            activation_type=activation_type,
            weight_type=QuantType.QInt8,
            nodes_to_quantize=list(nodes_to_quantize) if nodes_to_quantize is not None else None,
            nodes_to_exclude=list(nodes_to_exclude),
            calibrate_method=ort_method(ranges.method),
            extra_options=extra_options,
            calibration_cache_path=str(cache),
        )


def quantize_for_tensorrt(
    fp32_path: str | Path,
    out_path: str | Path,
    ranges: TensorRanges,
    identity: ModelIdentity,
    eval_batches: Sequence[Any] | None = None,
    target_cosine: float = TARGET_COSINE,
) -> Path:
    """Q/DQ ONNX for TensorRT explicit quantization (symmetric S8S8, per-channel, Conv/MatMul/Gemm).

    With `eval_batches` (preprocessed calibration images), the layers the embedding is most
    sensitive to stay FP32 until the mean cosine against FP32 reaches `target_cosine` (see
    `fallback.py`); without, every Conv/MatMul/Gemm is quantized.
    """
    import onnx

    source = onnx.load(str(fp32_path), load_external_data=False)
    settings: dict[str, Any] = {
        "precision": TRT_PRECISION,
        "format": "QDQ",
        "activations": "int8 symmetric per-tensor",
        "weights": "int8 symmetric per-channel, FP32 initializers with Q/DQ pairs",
        "op_types": list(INT8_OP_TYPES),
        "calibration_method": ranges.method,
        "calibration_images": ranges.num_images,
    }
    with tempfile.TemporaryDirectory(prefix="meanloc-qdq-") as work:
        build = _trt_builder(Path(fp32_path), ranges, Path(work))
        if eval_batches is None:
            tmp_model = build(None, [])
        else:
            reference = embed_batches(Path(fp32_path), eval_batches)
            choice, tmp_model = choose_fp32_fallback(
                _quantizable_nodes(source),
                build,
                lambda path: mean_cosine(reference, embed_batches(path, eval_batches)),
                target_cosine,
            )
            settings["fp32_fallback"] = choice.describe(len(reference))
        return _finish_model(tmp_model, Path(out_path), source, identity, settings)


def _trt_builder(fp32_path: Path, ranges: TensorRanges, work: Path) -> BuildFn:
    """A `fallback.BuildFn` writing TensorRT-rule Q/DQ models into `work`, one new file per call."""
    from onnxruntime.quantization import QuantType

    counter = itertools.count()

    def build(nodes_to_quantize: Sequence[str] | None, nodes_to_exclude: Sequence[str]) -> Path:
        out = work / f"candidate-{next(counter)}.onnx"
        _static_qdq(
            fp32_path, out, ranges, list(INT8_OP_TYPES), QuantType.QInt8, True, work,
            nodes_to_quantize=nodes_to_quantize, nodes_to_exclude=nodes_to_exclude, tensorrt_weights=True,
        )  # fmt: skip
        return out

    return build


def _quantizable_nodes(model: Any) -> list[str]:
    return [node.name for node in model.graph.node if node.op_type in INT8_OP_TYPES and node.name]


def check_cpu_recipe(recipe: str) -> str:
    if recipe not in CPU_RECIPES:
        raise MeanlocError(f"unknown CPU quantization recipe '{recipe}' (valid: {', '.join(CPU_RECIPES)})")
    return recipe


def quantize_for_cpu(
    fp32_path: str | Path,
    out_path: str | Path,
    identity: ModelIdentity,
    ranges: TensorRanges | None = None,
    recipe: str = DEFAULT_CPU_RECIPE,
) -> Path:
    """The ONNX Runtime CPU flavour (see the module note for the recipes and their measurements)."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    check_cpu_recipe(recipe)
    if recipe != "dynamic" and ranges is None:
        raise MeanlocError(f"the {recipe} CPU recipe needs calibration ranges")
    source = onnx.load(str(fp32_path), load_external_data=False)
    settings: dict[str, Any] = {
        "precision": CPU_PRECISION,
        "recipe": recipe,
        "reduce_range": CPU_REDUCE_RANGE,
    }
    with tempfile.TemporaryDirectory(prefix="meanloc-qdq-") as work:
        tmp_model = Path(work) / "model.onnx"
        if recipe == "integer-mlp":
            settings.update(_integer_mlp(Path(fp32_path), tmp_model, ranges, Path(work)))
        elif recipe == "dynamic":
            settings.update(
                op_types=["MatMul"],
                activations="uint8, range computed per call",
                weights="int8 per-tensor, 7-bit range (reduce_range)",
            )
            with _quiet_ort_advice():
                quantize_dynamic(
                    str(fp32_path),
                    str(tmp_model),
                    op_types_to_quantize=["MatMul"],
                    weight_type=QuantType.QInt8,
                    reduce_range=CPU_REDUCE_RANGE,
                )
        else:
            settings.update(
                op_types=["MatMul"],
                activations="uint8 asymmetric per-tensor",
                weights="int8 symmetric per-channel, 7-bit range (reduce_range)",
                calibration_method=ranges.method,
                calibration_images=ranges.num_images,
            )
            _static_qdq(
                Path(fp32_path), tmp_model, ranges, ["MatMul"], QuantType.QUInt8, False, Path(work),
                reduce_range=CPU_REDUCE_RANGE,
            )  # fmt: skip
        return _finish_model(tmp_model, Path(out_path), source, identity, settings)


def _integer_mlp(fp32_path: Path, out_path: Path, ranges: TensorRanges, work: Path) -> dict[str, Any]:
    """Convolutions through ORT's static Q/DQ (fused to QLinearConv), then every MLP block in uint8."""
    import onnx
    from onnxruntime.quantization import QuantType

    conv_qdq = work / "conv-qdq.onnx"
    _static_qdq(
        fp32_path, conv_qdq, ranges, ["Conv"], QuantType.QUInt8, False, work,
        reduce_range=CPU_REDUCE_RANGE, quantize_outputs=True,
    )  # fmt: skip
    model = onnx.load(str(conv_qdq))
    blocks = rewrite_mlp_blocks(model, ranges.min_max(), weight_bits=7 if CPU_REDUCE_RANGE else 8)
    if blocks == 0:
        raise MeanlocError(
            f"{fp32_path}: no Linear -> GELU -> Linear block for the integer-mlp recipe; use the dynamic recipe"
        )
    onnx.save(model, str(out_path))
    return {
        "op_types": ["Conv", "MatMul"],
        "mlp_blocks": blocks,
        "activations": "uint8 asymmetric per-tensor",
        "weights": "int8 symmetric per-channel, 7-bit range (reduce_range)",
        "gelu": f"a * sigmoid({GELU_SIGMOID_SLOPE} a) in uint8 (QLinearSigmoid, QLinearMul)",
        "calibration_method": ranges.method,
        "calibration_images": ranges.num_images,
    }


def read_quantization_settings(path: str | Path) -> dict[str, Any]:
    """The `meanloc.quantization` settings a quantized model carries (empty for other models)."""
    import onnx

    props = onnx_metadata(onnx.load(str(path), load_external_data=False))
    return json.loads(props[QUANTIZATION_KEY]) if QUANTIZATION_KEY in props else {}
