"""The TensorRT half of `meanloc export engine`: a meanloc ONNX -> serialized plan (TensorRT 8.5, 8.6, 10.x).

NVIDIA's parser-sample sequence (deployment.md §3): Builder -> network -> OnnxParser -> builder
config -> `build_serialized_network`, logged through the process-wide logger of runtime/trt_api.py
with a capture for this build. TensorRT's parser reads the ONNX bytes; the `onnx` package is not needed.

Polygraphy (`CreateConfig`, `Profile`: NVIDIA's, exercised across TensorRT 8.x-10.x) makes the builder
config: FP16/INT8/TF32 flags, the optimization profile, the INT8 calibrator and its calibration
profile, the workspace pool, the optimization level, DETAILED profiling verbosity, the progress
monitor and precision constraints, each set only where the installed TensorRT has it. Kept by hand:
- the builder and network: Polygraphy's `network_from_onnx_path` makes its builder with its own
  logger, and TensorRT keeps one logger per process (#1475), so this build's capture would miss it;
- the timing cache: `CreateConfig` ignores `set_timing_cache`'s refusal of another GPU's cache, and
  `EngineBytesFromNetwork` merges old caches with `ignore_mismatch=True`; here a foreign cache, or
  one `create_timing_cache` cannot read (it returns None), is replaced by a fresh one, written atomically;
- the DLA core: `CreateConfig(use_dla=True)` always selects core 0;
- the calibrators (runtime/trt_calibrator.py): Polygraphy's `Calibrator` lets any exception but
  its own reach TensorRT, which swallows it, and rewrites the cache file in place;
- FP32 pinning of the sensitive layers, and the INT8 checks of export/int8_check.py.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from meanloc.errors import MeanlocError, MissingDependencyError
from meanloc.runtime.artifacts import atomic_write_bytes
from meanloc.runtime.onnx_contract import INPUT_NAME
from meanloc.runtime.onnx_file import EmbeddingOnnx
from meanloc.runtime.trt_api import capture_tensorrt_log, enum_name, tensorrt_logger, version_tuple

from .engine_options import EngineOptions
from .int8_check import int8_layer_report, scale_failures
from .onnx_graph import fp32_sensitive_nodes, output_tensors_of

POLYGRAPHY_HINT = (
    "building engines needs Polygraphy: pip install 'polygraphy>=0.49.1' (pure Python, no dependencies: "
    "it leaves JetPack's numpy and TensorRT alone)"
)
QDQ_OPS = ("QuantizeLinear", "DequantizeLinear")
QUANTIZABLE_OPS = ("Conv", "MatMul", "Gemm")


def network_flags(trt: Any) -> int:
    # EXPLICIT_BATCH is required before 10 and deprecated/ignored from 10 on (NvInfer.h, 10.x).
    if version_tuple(trt.__version__)[0] < 10:
        return 1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH)
    return 0


def check_supported(trt: Any, options: EngineOptions, onnx: EmbeddingOnnx) -> None:
    """Refuse, in one line, a request this TensorRT cannot build, with what to do instead.

    The version gate itself (8.5 <= TensorRT < 11) is `trt_api.import_tensorrt`'s."""
    version = trt.__version__
    if onnx.opset >= 17 and not hasattr(trt, "INormalizationLayer"):  # LayerNormalization parsing: 8.6+
        raise MeanlocError(
            f"TensorRT {version} cannot parse LayerNormalization (opset {onnx.opset}): "
            "export with `meanloc export onnx --opset 16` for TensorRT 8.5 / JetPack 5"
        )
    has_qdq = any(node.op_type in QDQ_OPS for node in onnx.model.graph.node)
    if options.precision == "int8-explicit" and not has_qdq:
        raise MeanlocError(
            f"{onnx.path} has no QuantizeLinear/DequantizeLinear nodes: int8-explicit needs the Q/DQ ONNX "
            "written by `meanloc calibrate`"
        )
    if has_qdq and options.precision != "int8-explicit":
        raise MeanlocError(f"{onnx.path} is a Q/DQ (explicitly quantized) model: build it with --precision int8-explicit")
    if options.opt_level is not None and not hasattr(trt.IBuilderConfig, "builder_optimization_level"):
        raise MeanlocError(f"--opt-level needs TensorRT >= 8.6 (this is {version})")


def make_progress_monitor(trt: Any, echo: Callable[[str], None]) -> Any | None:
    """Top-level build phases as they start (TensorRT 10.x `IProgressMonitor`); None before 10."""
    if not hasattr(trt, "IProgressMonitor"):
        return None

    class PhasePrinter(trt.IProgressMonitor):
        def __init__(self) -> None:
            trt.IProgressMonitor.__init__(self)
            self.started = time.monotonic()

        def phase_start(self, phase_name: str, parent_phase: str | None, num_steps: int) -> None:
            if parent_phase is None:
                echo(f"[{time.monotonic() - self.started:6.1f}s] {phase_name} ({num_steps} steps)")

        def step_complete(self, phase_name: str, step: int) -> bool:
            return True  # never cancel

        def phase_finish(self, phase_name: str) -> None:
            pass

    return PhasePrinter()


def build_plan(
    trt: Any,
    options: EngineOptions,
    onnx: EmbeddingOnnx,
    calibration_bytes: bytes | None,
    echo: Callable[[str], None] | None,
) -> tuple[bytes, dict[str, Any]]:
    """Build the plan; returns its bytes and what the sidecar records about the build."""
    logger = tensorrt_logger(trt)
    warnings: list[str] = []
    with capture_tensorrt_log(echo=echo) as log:
        builder = trt.Builder(logger)
        network = builder.create_network(network_flags(trt))
        parser = trt.OnnxParser(network, logger)
        if not parser.parse(onnx.data):
            errors = [str(parser.get_error(i)) for i in range(parser.num_errors)]
            raise MeanlocError(
                f"TensorRT {trt.__version__} cannot parse {onnx.path}: " + " | ".join(errors or ["unknown parser error"])
            )
        pinned = _pin_fp32(trt, network, onnx, options, warnings)
        calibrator = _calibrator(trt, options, calibration_bytes)
        monitor = make_progress_monitor(trt, echo) if echo is not None else None
        config = _create_config(trt, builder, network, options, onnx.input_size, calibrator, monitor, pinned)
        timing = _attach_timing_cache(config, options, warnings)
        if options.dla_core is not None:
            _use_dla(trt, builder, config, options)
        if not getattr(builder, "platform_has_fast_fp16", True) and options.precision != "fp32":
            warnings.append("this GPU has no fast FP16: the engine may be slower than FP32")

        serialized = builder.build_serialized_network(network, config)
        if calibrator is not None:
            from meanloc.runtime.trt_calibrator import raise_callback_error

            raise_callback_error(calibrator)  # TensorRT swallowed it; it decides the outcome
        if serialized is None:
            last = (log.errors() or log.lines or ["no error message"])[-1]
            raise MeanlocError(f"TensorRT {trt.__version__} failed to build the engine: {last}")
        plan = bytes(memoryview(serialized))
        int8 = _check_int8(trt, plan, options, onnx, log.lines) if options.int8 else None
        if timing is not None:
            _save_timing_cache(config, Path(str(options.timing_cache)), warnings)
        info = {
            "io": _describe_io(network),
            "build_flags": {
                "builder_flags": _set_flags(trt, config),
                "network_flags": ["EXPLICIT_BATCH"] if network_flags(trt) else [],
                "workspace_mb": options.workspace_mb,
                "opt_level": options.opt_level,
                "dla_core": options.dla_core,
                "fp32_pinned_layers": pinned,
                "timing_cache": options.timing_cache,
                "config_by": "polygraphy.backend.trt.CreateConfig",
            },
            "build_warnings": warnings,
            "tensorrt_warnings": log.warnings()[:50],
            "int8_layers": int8,
        }
    return plan, info


def _calibrator(trt: Any, options: EngineOptions, calibration_bytes: bytes | None) -> Any | None:
    if options.precision != "int8-implicit":
        return None
    # The cache-only IInt8EntropyCalibrator2 (runtime/trt_calibrator.py), imported late: it needs TensorRT.
    from meanloc.runtime.trt_calibrator import cache_only_calibrator

    return cache_only_calibrator(trt, calibration_bytes or b"", options.opt_batch)


def _create_config(
    trt: Any,
    builder: Any,
    network: Any,
    options: EngineOptions,
    input_size: int,
    calibrator: Any | None,
    monitor: Any | None,
    pinned: int,
) -> Any:
    try:
        from polygraphy.backend.trt import CreateConfig, Profile
        from polygraphy.exception import PolygraphyException
        from polygraphy.logger import G_LOGGER
    except ImportError:
        raise MissingDependencyError(POLYGRAPHY_HINT) from None

    def shape(batch: int) -> tuple[int, int, int, int]:
        return (batch, 3, input_size, input_size)

    try:
        with G_LOGGER.verbosity(G_LOGGER.ERROR):  # Polygraphy's own INFO lines are noise here
            profile = Profile().add(
                INPUT_NAME, min=shape(options.min_batch), opt=shape(options.opt_batch), max=shape(options.max_batch)
            )
            create = CreateConfig(
                tf32=False,
                # FP16 with INT8 too, so layers without an INT8 kernel do not fall back to FP32
                # (NVIDIA/TensorRT#550); TensorRT 8.x needs the INT8 flag even for Q/DQ networks
                # (8.x developer guide, Explicit Quantization).
                fp16=options.precision != "fp32",
                int8=options.int8,
                profiles=[profile],
                calibrator=calibrator,
                # PREFER: warn and fall back where a pinned layer has no FP32 kernel (OBEY once validated on device).
                precision_constraints="prefer" if pinned else None,
                memory_pool_limits={trt.MemoryPoolType.WORKSPACE: options.workspace_mb << 20},
                builder_optimization_level=options.opt_level,
                profiling_verbosity=trt.ProfilingVerbosity.DETAILED,  # layer formats for the INT8 check
                progress_monitor=monitor,
            )
            return create(builder, network)
    except PolygraphyException as exc:
        first = (str(exc).strip().splitlines() or ["unknown error"])[0]
        raise MeanlocError(f"cannot configure the TensorRT {trt.__version__} build: {first}") from None


def _set_flags(trt: Any, config: Any) -> list[str]:
    """The builder flags the config ended with, by name (for the sidecar)."""
    return [name for name, flag in trt.BuilderFlag.__members__.items() if config.get_flag(flag)]


def _pin_fp32(trt: Any, network: Any, onnx: EmbeddingOnnx, options: EngineOptions, warnings: list[str]) -> int:
    """Keep decomposed LayerNorms and the final L2 norm in FP32 under reduced precision (§6).

    Layers are matched by ONNX node name or by output tensor name (the parser keeps both)."""
    if options.precision == "fp32":
        return 0
    nodes = fp32_sensitive_nodes(onnx.model)
    if not nodes:
        return 0
    node_names = set(nodes)
    tensors = output_tensors_of(onnx.model, nodes)
    float_types = (trt.float32, trt.float16)
    pinned = 0
    for index in range(network.num_layers):
        layer = network.get_layer(index)
        outputs = [layer.get_output(j) for j in range(layer.num_outputs)]
        if layer.name not in node_names and not any(out.name in tensors for out in outputs):
            continue
        layer.precision = trt.float32
        for j, out in enumerate(outputs):
            if out.dtype in float_types:
                layer.set_output_type(j, trt.float32)
        pinned += 1
    if not pinned:
        warnings.append(f"none of the {len(nodes)} FP32-sensitive ONNX nodes matched a TensorRT layer")
    return pinned


def _use_dla(trt: Any, builder: Any, config: Any, options: EngineOptions) -> None:
    available = int(getattr(builder, "num_DLA_cores", 0))
    if options.dla_core >= available:
        raise MeanlocError(
            f"DLA core {options.dla_core} requested but this device has {available} DLA cores "
            "(Orin Nano and desktop GPUs have none; AGX Orin has 2)"
        )
    config.default_device_type = trt.DeviceType.DLA
    config.DLA_core = options.dla_core
    # LayerNorm and GELU are not DLA layers: they fall back to the GPU instead of failing the build.
    config.set_flag(trt.BuilderFlag.GPU_FALLBACK)


def _attach_timing_cache(config: Any, options: EngineOptions, warnings: list[str]) -> Any | None:
    if options.timing_cache is None:
        return None
    path = Path(options.timing_cache)
    try:
        previous = path.read_bytes() if path.exists() else b""
    except OSError as exc:
        raise MeanlocError(f"cannot read timing cache {path}: {exc.strerror or exc}") from None
    # `create_timing_cache` returns None (a null ITimingCache*) for bytes it cannot read (pyCore.cpp
    # hands the pointer back as is; Polygraphy's CreateConfig checks for it too); `set_timing_cache`
    # returns False for a cache from another GPU or TensorRT ("A failure will be reported if the
    # CUDA device property in the provided cache is different", its docstring). Either way: start fresh.
    cache = config.create_timing_cache(previous)
    if cache is None or not config.set_timing_cache(cache, False):
        why = "unreadable" if cache is None else "made on another TensorRT/GPU"
        warnings.append(f"timing cache {path} was {why}; starting a new one")
        cache = config.create_timing_cache(b"")
        config.set_timing_cache(cache, False)
    return cache


def _save_timing_cache(config: Any, path: Path, warnings: list[str]) -> None:
    try:
        atomic_write_bytes(path, bytes(memoryview(config.get_timing_cache().serialize())))
    except (MeanlocError, OSError) as exc:  # a lost timing cache only slows the next build
        warnings.append(f"could not save the timing cache {path}: {exc}")


def _quantizable_nodes(onnx: EmbeddingOnnx, explicit: bool) -> list[str]:
    """The Conv/MatMul/Gemm nodes that should run in INT8 (in a Q/DQ model: those fed by a DQ)."""
    graph = onnx.model.graph
    dequantized = {out for node in graph.node if node.op_type == "DequantizeLinear" for out in node.output}
    return [
        node.name
        for node in graph.node
        if node.op_type in QUANTIZABLE_OPS and node.name and (not explicit or dequantized & set(node.input))
    ]


def _check_int8(trt: Any, plan: bytes, options: EngineOptions, onnx: EmbeddingOnnx, log_lines: list[str]) -> dict:
    """Refuse an INT8 engine whose required activations got no scale, or that runs nothing in INT8."""
    if options.precision == "int8-implicit":
        from meanloc.runtime.calibration_cache import int8_activation_names

        failures = scale_failures(log_lines, int8_activation_names(onnx.model))
        if failures:
            raise MeanlocError(
                f"INT8 build is missing scales for {len(failures)} Conv/MatMul activations (first: {failures[0]}); "
                "the calibration cache does not cover this graph: recalibrate for this ONNX"
            )
    explicit = options.precision == "int8-explicit"
    report = int8_layer_report(_engine_information(trt, plan, options), _quantizable_nodes(onnx, explicit))
    if report.get("detailed") and report.get("int8_layers", 0) == 0:
        raise MeanlocError(
            f"TensorRT built no INT8 layer for this {options.precision} engine ({report['layers']} layers, "
            "none with INT8 inputs or outputs): its scales were not used; check the TensorRT warnings above"
        )
    return report


def _engine_information(trt: Any, plan: bytes, options: EngineOptions) -> str:
    """IEngineInspector's JSON for the plan ("" when this TensorRT cannot inspect it)."""
    runtime = trt.Runtime(tensorrt_logger(trt))
    if options.dla_core is not None:
        runtime.DLA_core = options.dla_core
    engine = runtime.deserialize_cuda_engine(plan)
    if engine is None or not hasattr(engine, "create_engine_inspector"):
        return ""
    inspector = engine.create_engine_inspector()
    return str(inspector.get_engine_information(trt.LayerInformationFormat.JSON))


def _describe_io(network: Any) -> list[dict[str, Any]]:
    described = []
    for mode, count, get in (
        ("input", network.num_inputs, network.get_input),
        ("output", network.num_outputs, network.get_output),
    ):
        for index in range(count):
            tensor = get(index)
            described.append(
                {
                    "name": tensor.name,
                    "mode": mode,
                    "shape": [int(d) for d in tensor.shape],
                    "dtype": enum_name(tensor.dtype).lower(),
                }
            )
    return described
