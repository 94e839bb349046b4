"""Did TensorRT build the INT8 engine that was asked for? Two checks on what TensorRT reports.

1. The build log. TensorRT warns "Missing scale and zero-point for tensor X, expect fall back to
   non-int8 implementation" for every tensor without a range, including tensors that never run in
   INT8: Constant and Shuffle outputs its ONNX parser makes, weights, shape tensors, integer inputs
   (NVIDIA/TensorRT#3659, #3131, #4058; #2430: "not all layers has scale, e.g, for identity
   layer"), even right after its own calibration (ultralytics#10165). So a warning fails an
   implicit-INT8 build only when it names an activation meanloc requires in INT8: an input or
   output of a Conv, MatMul or Gemm (`runtime/calibration_cache.int8_activation_names`). "Setting a
   default quantization params because quantization data is missing for X" (#3612, a cache TensorRT
   ignored) is judged the same way.
2. The engine itself, through IEngineInspector: with DETAILED profiling verbosity every layer lists
   its inputs' and outputs' formats ("Int8 NC/32HW32", "Row major linear FP16 format", ...; the
   strings Polygraphy's `inspect model --show layers` maps the same way). Builder flags only allow
   lower precision: "TensorRT will still choose a higher-precision kernel if it results in overall
   lower runtime" (Developer Guide, Reduced Precision). So a Conv/MatMul that TensorRT timed faster
   in FP16 is reported, not refused; an INT8 build in which none runs in INT8 is refused, because
   then its scales were not used at all.

Pure functions over strings: tested here, fed by export/trt_build.py on the device. Python 3.8.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from typing import Any

_MISSING_SCALE = re.compile(r"Missing scale and zero-point for tensor (.+?), expect fall back", re.IGNORECASE)
_DEFAULT_QUANTIZATION = re.compile(
    r"default quantization param\w* because quantization data is missing for\s*(.*)$", re.IGNORECASE
)
# Split a fused layer name ("/a/Conv + /a/Relu", "{ForeignNode[/a/MatMul.../b/Add]}") into node names.
_NAME_SEPARATORS = re.compile(r" \+ |\.\.\.|[\[\]{}]|, ")
SHOWN = 20


def scale_failures(log_lines: Iterable[str], required: Iterable[str]) -> list[str]:
    """The build-log lines saying a tensor meanloc needs in INT8 got no scale (or a guessed one)."""
    required = set(required)
    failures = []
    for line in log_lines:
        match = _MISSING_SCALE.search(line) or _DEFAULT_QUANTIZATION.search(line)
        if match is None:
            continue
        tensor = match.group(1).strip()
        # A default-parameters line naming no tensor cannot be cleared: count it.
        if not tensor or tensor in required:
            failures.append(line)
    return failures


def _formats(layer: dict[str, Any]) -> list[str]:
    return [
        str(item.get("Format/Datatype", ""))
        for key in ("Inputs", "Outputs")
        for item in layer.get(key) or []
        if isinstance(item, dict)
    ]


def int8_layer_report(engine_information: str, quantizable_nodes: Iterable[str]) -> dict[str, Any]:
    """Which of the Conv/MatMul/Gemm ONNX nodes run in INT8, from `get_engine_information(JSON)`.

    Returns counts and names: `int8_layers` (engine layers with an INT8 input or output),
    `quantizable`, `in_int8`, `not_int8` (names, first SHOWN), `unattributed` (nodes inside a layer
    whose name does not list them, e.g. a Myelin region, which names only its first and last node),
    and `detailed` (False when the engine was not built with DETAILED verbosity: nothing is known).
    """
    quantizable = list(dict.fromkeys(quantizable_nodes))
    try:
        layers = json.loads(engine_information).get("Layers", [])
    except (ValueError, AttributeError):
        layers = []
    detailed = bool(layers) and all(isinstance(layer, dict) for layer in layers)
    report: dict[str, Any] = {"layers": len(layers), "detailed": detailed, "quantizable": len(quantizable)}
    if not detailed:
        return report
    int8_nodes, float_nodes, int8_layers = set(), set(), 0
    for layer in layers:
        is_int8 = any("INT8" in fmt.upper() for fmt in _formats(layer))
        int8_layers += is_int8
        names = {part.strip() for part in _NAME_SEPARATORS.split(str(layer.get("Name", ""))) if part.strip()}
        (int8_nodes if is_int8 else float_nodes).update(names)
    in_int8 = [name for name in quantizable if name in int8_nodes]
    not_int8 = [name for name in quantizable if name in float_nodes and name not in int8_nodes]
    report.update(
        int8_layers=int8_layers,
        in_int8=len(in_int8),
        not_int8_count=len(not_int8),
        not_int8=not_int8[:SHOWN],
        unattributed=len(quantizable) - len(in_int8) - len(not_int8),
    )
    return report
