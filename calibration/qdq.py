"""The two quantized ONNX flavours, kept as separate, labelled files (deployment.md §5.3, §7).

- `int8-qdq-trt`: explicit quantization for TensorRT. TensorRT's Q/DQ rules: symmetric signed
  int8, zero point 0, per-channel weights, per-tensor activations, Q/DQ on the inputs of Conv,
  MatMul and Gemm (a residual Add reading the same tensor shares its DQ), float biases.
  `op_types_to_quantize` is set explicitly because ORT's default QDQ registry also wraps
  LayerNormalization, Transpose and others. The opset is kept (TensorRT 8.x parses <= 17).
- `int8-cpu`: the fastest ONNX Runtime CPU variant found by measurement. At 384 px the pointwise
  MLP MatMuls take 72 % of FP32 time (ORT profile), so only MatMuls are quantized: dynamic
  quantization, S8 weights. `bench/bench_int8_cpu.py speed --candidates` (mean-paper, batch 1,
  2 threads, median latency / ORT FP32), three runs on a shared 2-vCPU AMD EPYC (AVX2, no VNNI):
  dynamic MatMul S8 0.70-0.79, static U8S8 MatMul 0.73-0.83, static S8S8 MatMul 0.73, static U8S8
  Conv+MatMul 1.01, the TensorRT flavour 0.92-1.10. On an AVX-512 VNNI machine (deployment.md §7)
  dynamic MatMul S8 measured 0.57 and static U8S8 0.76-0.79, hence dynamic. Without VNNI int8 GEMM
  is at best ~2x FP32, which bounds a MatMul-only model near 0.28 + 0.72 / 2 = 0.64. Dynamic
  quantization needs no ranges; `static-u8s8` (from the same calibration ranges) stays available
  for CPUs where it measures faster.

Both carry the FP32 model's metadata with `meanloc.precision` replaced, plus `meanloc.quantization`
describing the settings, so every consumer knows which artifact it holds.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from meanloc.errors import MeanlocError
from meanloc.runtime.artifacts import atomic_path
from meanloc.runtime.identity import ONNX_METADATA_PREFIX, ModelIdentity

from .onnx_tensors import INT8_OP_TYPES
from .ranges import TensorRanges, ort_method

TRT_PRECISION = "int8-qdq-trt"
CPU_PRECISION = "int8-cpu"
CPU_RECIPES = ("dynamic", "static-u8s8")
QUANTIZATION_KEY = ONNX_METADATA_PREFIX + "quantization"


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
    props = {prop.key: prop.value for prop in source.metadata_props}
    props.update(
        dataclasses.replace(
            identity, precision=settings["precision"], artifact_sha256=None
        ).to_onnx_metadata()
    )
    props[QUANTIZATION_KEY] = json.dumps(settings, sort_keys=True)
    del model.metadata_props[:]
    for key, value in sorted(props.items()):
        model.metadata_props.add(key=key, value=value)
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
) -> None:
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static

    # The ranges of the calibration pass, reloaded instead of recomputed ("the same calibration ranges").
    cache = ranges.save_for_ort(work / "ort_ranges.json")
    extra_options: dict[str, Any] = {
        "ActivationSymmetric": symmetric,
        "WeightSymmetric": True,
        # Q/DQ on the inputs of the quantized ops only (TensorRT's placement, and ORT CPU's
        # MatMulIntegerToFloat path); ORT would otherwise also requantize their outputs.
        "OpTypesToExcludeOutputQuantization": op_types,
        # Biases stay float: TensorRT's DequantizeLinear takes int8 only, and it fuses the bias.
        "QuantizeBias": False,
    }
    if "MatMul" in op_types:
        # MatMul weights are (in, out): quantize per output column.
        extra_options["QDQOpTypePerChannelSupportToAxis"] = {"MatMul": 1}
    with _quiet_ort_advice():
        quantize_static(
            str(fp32_path),
            str(out_path),
            calibration_data_reader=None,
            quant_format=QuantFormat.QDQ,
            op_types_to_quantize=op_types,
            per_channel=True,
            activation_type=activation_type,
            weight_type=QuantType.QInt8,
            calibrate_method=ort_method(ranges.method),
            extra_options=extra_options,
            calibration_cache_path=str(cache),
        )


def quantize_for_tensorrt(
    fp32_path: str | Path, out_path: str | Path, ranges: TensorRanges, identity: ModelIdentity
) -> Path:
    """Q/DQ ONNX for TensorRT explicit quantization (symmetric S8S8, per-channel, Conv/MatMul/Gemm)."""
    import onnx
    from onnxruntime.quantization import QuantType

    source = onnx.load(str(fp32_path), load_external_data=False)
    settings = {
        "precision": TRT_PRECISION,
        "format": "QDQ",
        "activations": "int8 symmetric per-tensor",
        "weights": "int8 symmetric per-channel",
        "op_types": list(INT8_OP_TYPES),
        "calibration_method": ranges.method,
        "calibration_images": ranges.num_images,
    }
    with tempfile.TemporaryDirectory(prefix="meanloc-qdq-") as work:
        tmp_model = Path(work) / "model.onnx"
        _static_qdq(
            Path(fp32_path), tmp_model, ranges, list(INT8_OP_TYPES), QuantType.QInt8, True, Path(work)
        )
        return _finish_model(tmp_model, Path(out_path), source, identity, settings)


def quantize_for_cpu(
    fp32_path: str | Path,
    out_path: str | Path,
    identity: ModelIdentity,
    ranges: TensorRanges | None = None,
    recipe: str = "dynamic",
) -> Path:
    """The ONNX Runtime CPU flavour: MatMul-only int8 (see the module note for the measurements)."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    if recipe not in CPU_RECIPES:
        raise MeanlocError(f"unknown CPU quantization recipe '{recipe}' (valid: {', '.join(CPU_RECIPES)})")
    source = onnx.load(str(fp32_path), load_external_data=False)
    settings: dict[str, Any] = {
        "precision": CPU_PRECISION,
        "recipe": recipe,
        "op_types": ["MatMul"],
        "weights": "int8 per-tensor",
    }
    with tempfile.TemporaryDirectory(prefix="meanloc-qdq-") as work:
        tmp_model = Path(work) / "model.onnx"
        if recipe == "dynamic":
            settings["activations"] = "uint8, range computed per call"
            with _quiet_ort_advice():
                quantize_dynamic(
                    str(fp32_path),
                    str(tmp_model),
                    op_types_to_quantize=["MatMul"],
                    weight_type=QuantType.QInt8,
                )
        else:
            if ranges is None:
                raise MeanlocError("the static-u8s8 CPU recipe needs calibration ranges")
            settings.update(
                activations="uint8 asymmetric per-tensor",
                weights="int8 symmetric per-channel",
                calibration_method=ranges.method,
                calibration_images=ranges.num_images,
            )
            _static_qdq(Path(fp32_path), tmp_model, ranges, ["MatMul"], QuantType.QUInt8, False, Path(work))
        return _finish_model(tmp_model, Path(out_path), source, identity, settings)
