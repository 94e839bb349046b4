"""ONNX -> TensorRT engine (raw plan + `<engine>.json` sidecar), for TensorRT 8.5, 8.6 and 10.x.

Follows NVIDIA's parser-sample sequence (deployment.md §3): Builder -> network -> OnnxParser ->
builder config -> `build_serialized_network`. Version differences are handled by feature
detection (`hasattr`); `trt.__version__` is parsed only for the EXPLICIT_BATCH network flag
(required before 10) and for matching the calibration-cache header.

Precisions:
- fp32;
- fp16: FP16 flag. LayerNorms that were decomposed for TensorRT 8.5 (opset-16 ONNX) and the final
  L2 normalisation are pinned to FP32 with PREFER_PRECISION_CONSTRAINTS (§6);
- int8-implicit: INT8 + FP16 with a calibration cache fed through a cache-only calibrator
  (no images on the device). Refused on TensorRT >= 11, which removed implicit quantization;
- int8-explicit: a Q/DQ ONNX (`meanloc calibrate`); INT8 + FP16 flags while they exist (weakly
  typed networks, 8.x-10.x).

The build log is captured by a custom ILogger; a build that logs missing INT8 scales or default
quantization parameters fails (TensorRT would otherwise silently guess ranges, #3612). Python 3.8
compatible: engines are built on the Jetson, including JetPack 5.
"""

from __future__ import annotations

import dataclasses
import re
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from meanloc.errors import ArtifactMismatchError, MeanlocError, MissingDependencyError
from meanloc.runtime.artifacts import (
    atomic_write_bytes,
    atomic_write_json,
    ensure_writable_dir,
    new_manifest,
    read_json,
    sha256_bytes,
)
from meanloc.runtime.trt_env import (
    ENGINE_SIDECAR_KIND,
    SIDECAR_ENGINE_SHA256,
    SIDECAR_ENVIRONMENT,
    SIDECAR_IDENTITY,
    describe_environment,
    engine_sidecar_environment,
    engine_sidecar_path,
)

from .engine_cache import (
    CACHE_KEY_FIELD,
    CACHE_KEY_FIELDS,
    EngineCache,
    copy_engine,
    default_timing_cache_path,
    engine_cache_fields,
    engine_cache_key,
    reusable_engine,
)
from .onnx_graph import (
    INPUT_NAME,
    EmbeddingOnnx,
    fp32_sensitive_nodes,
    load_embedding_onnx,
    output_tensors_of,
)

PRECISIONS = ("fp32", "fp16", "int8-implicit", "int8-explicit")
INSTALL_HINT = (
    "TensorRT is not installed: on a Jetson it comes with JetPack (sudo apt install python3-libnvinfer; "
    "create the venv with --system-site-packages); on an x86 GPU machine: pip install 'tensorrt>=10,<11'"
)
# Builder-log lines that mean INT8 ranges are missing and TensorRT guessed them (deployment.md §5.2).
SCALE_FAILURE = re.compile(r"missing scale|default quantization param", re.IGNORECASE)
QDQ_OPS = ("QuantizeLinear", "DequantizeLinear")
# `timing_cache="auto"`: one persistent cache per TensorRT version and GPU (engine_cache.default_timing_cache_path).
AUTO_TIMING_CACHE = "auto"


@dataclass(frozen=True)
class EngineOptions:
    precision: str = "fp16"
    min_batch: int = 1
    opt_batch: int = 1
    max_batch: int = 8
    workspace_mb: int = 1024
    calibration_cache: str | None = None
    timing_cache: str | None = None
    opt_level: int | None = None
    dla_core: int | None = None

    @property
    def profile(self) -> dict[str, int]:
        return {"min": self.min_batch, "opt": self.opt_batch, "max": self.max_batch}

    def validate(self) -> None:
        """Checks that need no TensorRT (so they fail fast, also on a dev box)."""
        if self.precision not in PRECISIONS:
            raise MeanlocError(f"unknown precision '{self.precision}'; choose from {', '.join(PRECISIONS)}")
        if not 1 <= self.min_batch <= self.opt_batch <= self.max_batch:
            raise MeanlocError(
                f"batch profile must satisfy 1 <= min <= opt <= max, got {self.min_batch}/{self.opt_batch}/{self.max_batch}"
            )
        if self.workspace_mb < 1:
            raise MeanlocError(f"workspace must be at least 1 MiB, got {self.workspace_mb}")
        if self.opt_level is not None and not 0 <= self.opt_level <= 5:
            raise MeanlocError(f"builder optimization level must be 0..5, got {self.opt_level}")
        if (self.precision == "int8-implicit") != (self.calibration_cache is not None):
            raise MeanlocError(
                "int8-implicit needs a calibration cache (--calib-cache, from `meanloc calibrate`)"
                if self.precision == "int8-implicit"
                else f"a calibration cache is only used with int8-implicit, not {self.precision}"
            )
        if self.dla_core is not None:
            if self.dla_core < 0:
                raise MeanlocError(f"DLA core must be >= 0, got {self.dla_core}")
            if self.precision not in ("fp16", "int8-implicit"):
                raise MeanlocError(
                    "DLA runs FP16, or INT8 with calibration-cache scales only: use --precision fp16 or int8-implicit"
                )
            if not self.min_batch == self.opt_batch == self.max_batch:
                raise MeanlocError(
                    "DLA engines need a fixed batch: set --min-batch = --opt-batch = --max-batch"
                )


@dataclass
class EngineBuildResult:
    engine_path: Path
    sidecar_path: Path
    sidecar: dict[str, Any]
    reused: bool = False
    warnings: list[str] = field(default_factory=list)

    def summary(self) -> str:
        sidecar = self.sidecar
        env = sidecar[SIDECAR_ENVIRONMENT]
        how = "reused identical build" if self.reused else f"built in {sidecar.get('build_seconds', 0):.1f} s"
        profile = sidecar["profile"]
        return (
            f"{self.engine_path}: {sidecar['precision']} engine, batch {profile['min']}/{profile['opt']}/{profile['max']}, "
            f"TensorRT {env.get('tensorrt_version')} on {env.get('gpu_name') or 'unknown GPU'} ({how}); "
            f"sidecar {self.sidecar_path}"
        )


# --- TensorRT access ------------------------------------------------------------------------------


def import_tensorrt() -> Any:
    try:
        import tensorrt as trt
    except ImportError:
        raise MissingDependencyError(INSTALL_HINT) from None
    except Exception as exc:  # a broken CUDA/numpy install makes the bindings raise other errors
        raise MeanlocError(
            f"TensorRT is installed but does not import ({type(exc).__name__}: {exc})"
        ) from None
    return trt


def trt_version(trt: Any) -> tuple[int, int, int]:
    parts = [int(p) for p in re.findall(r"\d+", str(trt.__version__))[:3]]
    while len(parts) < 3:
        parts.append(0)
    return parts[0], parts[1], parts[2]


def network_flags(trt: Any) -> int:
    # EXPLICIT_BATCH is required before 10 and deprecated/ignored from 10 on.
    if trt_version(trt)[0] < 10:
        return 1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH)
    return 0


def check_supported(trt: Any, options: EngineOptions, onnx: EmbeddingOnnx) -> None:
    """Refuse, in one line, a request the installed TensorRT cannot build (by feature detection)."""
    version = trt.__version__
    if not hasattr(trt, "TensorIOMode"):  # the name-based I/O API the runtime uses arrived in 8.5
        raise MeanlocError(f"TensorRT {version} is too old: meanloc builds with 8.5 (JetPack 5), 8.6 or 10.x")
    if onnx.opset >= 17 and not hasattr(trt, "INormalizationLayer"):  # LayerNormalization parsing: 8.6+
        raise MeanlocError(
            f"TensorRT {version} cannot parse LayerNormalization (opset {onnx.opset}): "
            "export with `meanloc export onnx --opset 16` for TensorRT 8.5 / JetPack 5"
        )
    flags = trt.BuilderFlag
    if options.precision == "int8-implicit" and not (
        hasattr(trt, "IInt8EntropyCalibrator2") and hasattr(flags, "INT8")
    ):
        raise MeanlocError(
            f"TensorRT {version} has no implicit INT8 calibration (removed in 11): build --precision int8-explicit "
            "from the Q/DQ ONNX of `meanloc calibrate`, or use TensorRT 10.x for a calibration-cache engine"
        )
    if options.precision == "fp16" and not hasattr(flags, "FP16"):
        raise MeanlocError(
            f"TensorRT {version} has no FP16 builder flag (strongly typed networks only): use TensorRT 10.x for fp16"
        )
    has_qdq = any(node.op_type in QDQ_OPS for node in onnx.model.graph.node)
    if options.precision == "int8-explicit" and not has_qdq:
        raise MeanlocError(
            f"{onnx.path} has no QuantizeLinear/DequantizeLinear nodes: int8-explicit needs the Q/DQ ONNX "
            "written by `meanloc calibrate`"
        )
    if has_qdq and options.precision != "int8-explicit":
        raise MeanlocError(
            f"{onnx.path} is a Q/DQ (explicitly quantized) model: build it with --precision int8-explicit"
        )
    if options.opt_level is not None and not hasattr(trt.IBuilderConfig, "builder_optimization_level"):
        raise MeanlocError(f"--opt-level needs TensorRT >= 8.6 (this is {version})")


def make_logger(trt: Any, echo: Callable[[str], None] | None = None) -> Any:
    """A trt.ILogger that keeps every message of WARNING or worse (and echoes them if asked)."""

    class CapturingLogger(trt.ILogger):
        def __init__(self) -> None:
            trt.ILogger.__init__(self)
            self.lines: list[str] = []

        def log(self, severity: Any, msg: str) -> None:
            if int(severity) > int(trt.ILogger.Severity.WARNING):
                return
            line = f"[{_enum_name(severity)}] {msg}"
            self.lines.append(line)
            if echo is not None:
                echo(line)

        def scale_failures(self) -> list[str]:
            return [line for line in self.lines if SCALE_FAILURE.search(line)]

    return CapturingLogger()


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


def _enum_name(value: Any) -> str:
    """`DataType.FLOAT` -> 'FLOAT' (pybind11 enums have `.name`)."""
    return str(getattr(value, "name", value)).split(".")[-1]


def _stderr(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


# --- the build ------------------------------------------------------------------------------------


def build_engine(
    onnx_path: str | Path,
    out_path: str | Path,
    precision: str = "fp16",
    min_batch: int = 1,
    opt_batch: int | None = None,
    max_batch: int = 8,
    workspace_mb: int = 1024,
    calibration_cache: str | Path | None = None,
    timing_cache: str | Path | None = None,
    opt_level: int | None = None,
    dla_core: int | None = None,
    cache_dir: str | Path | None = None,
    force: bool = False,
    environment: Mapping[str, Any] | None = None,
    echo: Callable[[str], None] | None = _stderr,
) -> EngineBuildResult:
    """Build (or reuse) `out_path` and its sidecar `<out_path>.json` from a meanloc ONNX.

    `opt_batch` defaults to `max_batch`. `timing_cache` is a file path, "auto" (one per TensorRT
    version and GPU under ~/.cache/meanloc) or None. `cache_dir` is a folder of previous builds to reuse from
    and store into. `environment` overrides `trt_env.describe_environment()` (tests). `echo`
    receives progress and warning lines (None: silent).
    """
    options = EngineOptions(
        precision=precision,
        min_batch=min_batch,
        opt_batch=max_batch if opt_batch is None else opt_batch,
        max_batch=max_batch,
        workspace_mb=workspace_mb,
        calibration_cache=None if calibration_cache is None else str(calibration_cache),
        timing_cache=None if timing_cache is None else str(timing_cache),
        opt_level=opt_level,
        dla_core=dla_core,
    )
    options.validate()
    out_path = Path(out_path)
    if out_path.is_dir():
        raise MeanlocError(f"output {out_path} is a folder; give the engine file name")
    ensure_writable_dir(out_path.parent)
    onnx = load_embedding_onnx(onnx_path)
    trt = import_tensorrt()
    check_supported(trt, options, onnx)
    calibration = _load_calibration(trt, options, onnx)

    env = dict(environment) if environment is not None else describe_environment(probe_dla=False)
    recorded_env = engine_sidecar_environment(env, options.dla_core)
    key_fields = engine_cache_fields(
        onnx.sha256,
        options.precision,
        calibration["sha256"] if calibration else None,
        options.profile,
        options.opt_level,
        options.workspace_mb,
        recorded_env,
    )
    key = engine_cache_key(key_fields)
    if options.timing_cache == AUTO_TIMING_CACHE:
        options = dataclasses.replace(options, timing_cache=str(default_timing_cache_path(recorded_env)))
    cache = EngineCache(cache_dir) if cache_dir is not None else None
    if not force:
        reused = _reuse(out_path, key, cache)
        if reused is not None:
            return reused

    started = time.monotonic()
    logger = make_logger(trt, echo)
    plan, build_info = _build_plan(
        trt, logger, options, onnx, calibration["bytes"] if calibration else None, echo
    )
    sidecar = new_manifest(
        ENGINE_SIDECAR_KIND,
        **{
            SIDECAR_IDENTITY: dataclasses.replace(
                onnx.identity, precision=options.precision, artifact_sha256=sha256_bytes(plan)
            ).to_dict(),
            SIDECAR_ENGINE_SHA256: sha256_bytes(plan),
            SIDECAR_ENVIRONMENT: recorded_env,
            "onnx_identity": onnx.identity.to_dict(),
            "onnx_sha256": onnx.sha256,
            "onnx_file": onnx.path.name,
            "onnx_opset": onnx.opset,
            "precision": options.precision,
            "profile": options.profile,
            "calibration_sha256": calibration["sha256"] if calibration else None,
            "calibration_header": calibration["header"] if calibration else None,
            "calibration_file": Path(options.calibration_cache).name if options.calibration_cache else None,
            "build_environment": {
                k: env.get(k)
                for k in (
                    "cuda_driver_version",
                    "jetson_model",
                    "jetpack_version",
                    "python_version",
                    "machine",
                )
            },
            "build_seconds": round(time.monotonic() - started, 2),
            CACHE_KEY_FIELD: key,
            CACHE_KEY_FIELDS: key_fields,
            **build_info,
        },
    )
    atomic_write_bytes(out_path, plan)
    sidecar_path = Path(engine_sidecar_path(str(out_path)))
    atomic_write_json(sidecar_path, sidecar)
    if cache is not None:
        cache.store(key, out_path)
    return EngineBuildResult(
        out_path, sidecar_path, sidecar, reused=False, warnings=list(build_info["build_warnings"])
    )


def _reuse(out_path: Path, key: str, cache: EngineCache | None) -> EngineBuildResult | None:
    """The identical build at `out_path` or in the cache folder (copied to `out_path`), if any."""
    sidecar_path = Path(engine_sidecar_path(str(out_path)))
    cached = cache.lookup(key) if cache is not None else None
    if reusable_engine(out_path, key):
        if cache is not None and cached is None:
            cache.store(key, out_path)
    elif cached is not None:
        copy_engine(cached, out_path)
    else:
        return None
    return EngineBuildResult(out_path, sidecar_path, read_json(sidecar_path, "engine sidecar"), reused=True)


def _load_calibration(trt: Any, options: EngineOptions, onnx: EmbeddingOnnx) -> dict[str, Any] | None:
    """Read an int8-implicit calibration cache and refuse one this TensorRT would not use for this
    graph: another TensorRT's header (silently ignored by TensorRT, NVIDIA/TensorRT#1378), tensor
    names of another graph, or a manifest naming another ONNX."""
    if options.calibration_cache is None:
        return None
    from meanloc.calibration.cache import (
        check_cache_names,
        manifest_path,
        parse_calibration_cache,
        read_cache_manifest,
        trt_version_code,
    )
    from meanloc.calibration.onnx_tensors import int8_activation_names, value_names

    path = Path(options.calibration_cache)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise MeanlocError(f"cannot read calibration cache {path}: {exc.strerror or exc}") from None
    cache = parse_calibration_cache(data, str(path))
    wanted = trt_version_code(trt.__version__)
    if cache.version_code != wanted:
        raise ArtifactMismatchError(
            f"calibration cache {path} has header {cache.header}, but this TensorRT {trt.__version__} reads only "
            f"TRT-{wanted}-...: rewrite it with `meanloc calibrate --trt-version {trt.__version__}`"
        )
    check_cache_names(cache, value_names(onnx.model), int8_activation_names(onnx.model), str(path))
    if manifest_path(path).exists():
        read_cache_manifest(path, onnx_sha256=onnx.sha256)
    return {"bytes": data, "sha256": sha256_bytes(data), "header": cache.header}


def _build_plan(
    trt: Any,
    logger: Any,
    options: EngineOptions,
    onnx: EmbeddingOnnx,
    calibration_bytes: bytes | None,
    echo: Callable[[str], None] | None,
) -> tuple[bytes, dict[str, Any]]:
    builder = trt.Builder(logger)
    network = builder.create_network(network_flags(trt))
    parser = trt.OnnxParser(network, logger)
    if not parser.parse(onnx.model.SerializeToString()):
        errors = [str(parser.get_error(i)) for i in range(parser.num_errors)]
        raise MeanlocError(
            f"TensorRT {trt.__version__} cannot parse {onnx.path}: "
            + " | ".join(errors or ["unknown parser error"])
        )
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, options.workspace_mb << 20)

    def shape(batch: int) -> tuple[int, int, int, int]:
        return (batch, 3, onnx.input_size, onnx.input_size)

    profile = builder.create_optimization_profile()
    profile.set_shape(
        INPUT_NAME, shape(options.min_batch), shape(options.opt_batch), shape(options.max_batch)
    )
    config.add_optimization_profile(profile)
    if hasattr(trt, "ProfilingVerbosity"):
        config.profiling_verbosity = trt.ProfilingVerbosity.DETAILED  # layer names/precisions for inspection

    warnings: list[str] = []
    flags = _set_precision(trt, builder, config, profile, options, calibration_bytes, warnings)
    pinned = _pin_fp32(trt, network, config, onnx, options, warnings)
    if pinned:
        flags.append("PREFER_PRECISION_CONSTRAINTS")
    if options.opt_level is not None:
        config.builder_optimization_level = options.opt_level
    if options.dla_core is not None:
        _use_dla(trt, builder, config, options)
        flags.append("GPU_FALLBACK")
    timing = _load_timing_cache(config, options, warnings)
    monitor = make_progress_monitor(trt, echo) if echo is not None else None
    if monitor is not None:
        config.progress_monitor = monitor

    serialized = builder.build_serialized_network(network, config)
    failures = logger.scale_failures()
    if failures:
        raise MeanlocError(
            f"INT8 build is missing scales ({len(failures)} builder warnings, first: {failures[0]}); "
            "the calibration cache or Q/DQ model does not cover this graph: recalibrate for this ONNX"
        )
    if serialized is None:
        errors = [line for line in logger.lines if line.startswith(("[ERROR]", "[INTERNAL_ERROR]"))]
        last = (errors or logger.lines or ["no error message"])[-1]
        raise MeanlocError(f"TensorRT {trt.__version__} failed to build the engine: {last}")
    if timing is not None:
        try:
            atomic_write_bytes(options.timing_cache, bytes(memoryview(config.get_timing_cache().serialize())))
        except (MeanlocError, OSError) as exc:  # a lost timing cache only slows the next build
            warnings.append(f"could not save the timing cache {options.timing_cache}: {exc}")
    info = {
        "io": _describe_io(trt, network),
        "build_flags": {
            "builder_flags": flags,
            "network_flags": ["EXPLICIT_BATCH"] if network_flags(trt) else [],
            "workspace_mb": options.workspace_mb,
            "opt_level": options.opt_level,
            "dla_core": options.dla_core,
            "fp32_pinned_layers": pinned,
            "timing_cache": options.timing_cache,
        },
        "build_warnings": warnings,
        "tensorrt_warnings": [line for line in logger.lines if line.startswith("[WARNING]")][:50],
    }
    return bytes(memoryview(serialized)), info


def _set_precision(
    trt: Any,
    builder: Any,
    config: Any,
    profile: Any,
    options: EngineOptions,
    calibration_bytes: bytes | None,
    warnings: list[str],
) -> list[str]:
    """Set the builder flags of the precision; returns their names for the sidecar."""
    flags: list[str] = []
    if options.precision == "fp32":
        return flags
    if not getattr(builder, "platform_has_fast_fp16", True):
        warnings.append("this GPU has no fast FP16: the engine may be slower than FP32")
    if hasattr(trt.BuilderFlag, "FP16"):  # weakly typed networks (TensorRT <= 10.x)
        flags.append("FP16")
    if options.precision.startswith("int8") and hasattr(trt.BuilderFlag, "INT8"):
        flags.append("INT8")  # TensorRT 8.x needs it even with Q/DQ; 10.x weakly typed too
    for name in flags:
        config.set_flag(getattr(trt.BuilderFlag, name))
    if options.precision == "int8-implicit":
        # The cache-only IInt8EntropyCalibrator2 (calibration/trt_calibrator.py), imported late because it needs TensorRT.
        from meanloc.calibration.trt_calibrator import cache_only_calibrator

        config.int8_calibrator = cache_only_calibrator(trt, calibration_bytes, options.opt_batch)
        if hasattr(config, "set_calibration_profile"):
            config.set_calibration_profile(profile)  # required with dynamic shapes on 8.x
    return flags


def _pin_fp32(
    trt: Any, network: Any, config: Any, onnx: EmbeddingOnnx, options: EngineOptions, warnings: list[str]
) -> int:
    """Keep decomposed LayerNorms and the final L2 norm in FP32 under reduced precision (§6).

    Layers are matched by ONNX node name or by output tensor name (the parser keeps both)."""
    if options.precision == "fp32":
        return 0
    nodes = fp32_sensitive_nodes(onnx.model)
    if not nodes:
        return 0
    if not hasattr(trt.BuilderFlag, "PREFER_PRECISION_CONSTRAINTS"):
        warnings.append(
            "this TensorRT has no precision constraints: LayerNorm/L2 layers are not pinned to FP32"
        )
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
    if pinned:
        # PREFER: warn and fall back where a layer has no FP32 kernel (switch to OBEY once validated on device).
        config.set_flag(trt.BuilderFlag.PREFER_PRECISION_CONSTRAINTS)
    else:
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


def _load_timing_cache(config: Any, options: EngineOptions, warnings: list[str]) -> Any | None:
    if options.timing_cache is None:
        return None
    path = Path(options.timing_cache)
    try:
        previous = path.read_bytes() if path.exists() else b""
    except OSError as exc:
        raise MeanlocError(f"cannot read timing cache {path}: {exc.strerror or exc}") from None
    cache = config.create_timing_cache(previous)
    if not config.set_timing_cache(cache, False):
        # Made by another TensorRT version or GPU: start a fresh one rather than mixing.
        warnings.append(f"timing cache {path} was made on another TensorRT/GPU; starting a new one")
        cache = config.create_timing_cache(b"")
        config.set_timing_cache(cache, False)
    return cache


def _describe_io(trt: Any, network: Any) -> list[dict[str, Any]]:
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
                    "dtype": _enum_name(tensor.dtype).lower(),
                }
            )
    return described
