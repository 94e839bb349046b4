"""A stand-in `tensorrt` module for testing meanloc's TensorRT WIRING (no TensorRT or GPU here).

It cannot say whether TensorRT accepts our models or computes good embeddings: the `@pytest.mark.gpu`
tests do that on a TensorRT host. It models the API surface meanloc and Polygraphy call, per
TensorRT 8.5 / 8.6 / 10.x / 11 (python/docstrings/infer/pyCoreDoc.h, NvInfer*.h), AND the behaviours
of real TensorRT that a fake sharing the code's assumptions used to hide. Each one with its source:

- One logger per process: a Builder or Runtime made with another logger while one is alive logs
  "TensorRT maintains only a single logger pointer at any given time ... the existing value ... will
  be used instead" and keeps using the first (NVIDIA/TensorRT#1475, #1539).
- Calibrator callbacks run behind `noexcept` trampolines that catch every exception, print
  "[ERROR] Exception caught in get_batch(): ..." to stderr and carry on with "no batch" / no cache /
  -1 (python/src/infer/pyInt8.cpp, release/8.5, release/8.6, v10.3.0; ultralytics#10165).
- A calibration cache whose header is not this TensorRT's version (or not the calibrator's
  algorithm) is ignored without an error and TensorRT calibrates instead (NVIDIA/TensorRT#1378);
  calibrating without any batch fails the build; a cache TensorRT writes names the tensors it made
  itself, "(Unnamed Layer* N) [Constant]_output" etc. (#3131, #3659).
- The ONNX parser turns MatMul weight initializers into Constant layers followed by a Shuffle
  (broadcast), unnamed; after INT8 calibration TensorRT warns "Missing scale and zero-point for
  tensor (Unnamed Layer* N) [Constant]_output ..." and likewise for Shuffle outputs and any other
  tensor without a range, harmlessly (#3659, #3131, #2430, #4058).
- Before 10.0, Q/DQ weights must be FP32 with their own QuantizeLinear: a DequantizeLinear fed by an
  INT8 initializer is refused ("only activation types allowed as input to this layer",
  microsoft/onnxruntime#14229; TensorRT 8.6 developer guide, "Quantized Weights").
- 8.5 has no LayerNormalization importer (onnx-tensorrt 8.5-GA operators.md).
- `create_timing_cache` hands back a null pointer (None) for bytes it cannot read (pyCore.cpp returns
  the ITimingCache* as is); `set_timing_cache(None, ...)` is a pybind11 TypeError; a cache from
  another device is refused with False unless `ignore_mismatch` (set_timing_cache docstring).
- Builder flags only allow reduced precision: a Conv/MatMul runs INT8 only with a scale for its
  input and output (implicit) or a DequantizeLinear feeding it (explicit), else FP16/FP32.
- `IRuntime.DLA_core` picks the core a DLA plan is deserialized for (setDLACore, NvInferRuntime.h).
- IEngineInspector (DETAILED verbosity) reports per layer "Inputs"/"Outputs" with "Format/Datatype"
  strings such as "Int8 NC/32HW32" or "Row major linear FP16 format".
- Version surface: 8.x needs EXPLICIT_BATCH; `builder_optimization_level` and `INormalizationLayer`
  from 8.6; `IProgressMonitor` from 10; 11 has no FP16/INT8/precision-constraint flags and no
  calibrators; config attributes a version lacks raise AttributeError, as pybind11 objects do.
- Runtime side: only the name-based I/O API (bindings API absent); `nptype` fails (it touches
  `np.bool` on 8.5.2 with NumPy >= 1.24). A "plan" is JSON. A plan this fake built computes its
  ONNX with ONNX Runtime on the CPU (so embeddings are the model's, precision aside); a plan a test
  wrote by hand is a fixed random projection of the flattened input. Both run through host memory
  standing in for device memory, so results can be checked against numpy.

The fake parser reads the ONNX with the real `onnx` package and turns every node into a layer named
after the node (or, with `rename_layers`, an opaque name, so matching must use output tensor names).
"""

from __future__ import annotations

import base64
import enum
import json
import re
import sys
import types
import weakref
from dataclasses import dataclass, field

import numpy as np
import onnx

SINGLE_LOGGER_WARNING = (
    "The logger passed into {} differs from one already provided for an existing builder, runtime, or "
    "refitter. TensorRT maintains only a single logger pointer at any given time, so the existing value, "
    "which can be retrieved with getLogger(), will be used instead. In order to use a new logger, first "
    "destroy all existing builder, runner or refitter objects."
)
MISSING_SCALE = (
    "Missing scale and zero-point for tensor {}, expect fall back to non-int8 implementation for any layer "
    "consuming or producing given tensor"
)
FORMATS = {"INT8": "Int8 NC/32HW32", "HALF": "Row major linear FP16 format", "FLOAT": "Row major linear FP32"}
QUANTIZABLE = ("Conv", "MatMul", "Gemm")
ONNX_INT8 = onnx.TensorProto.INT8


class Severity(enum.IntEnum):
    INTERNAL_ERROR = 0
    ERROR = 1
    WARNING = 2
    INFO = 3
    VERBOSE = 4


class DataType(enum.IntEnum):
    FLOAT = 0
    HALF = 1
    INT8 = 2
    INT32 = 3
    BOOL = 4
    BF16 = 7


class LayerType(enum.IntEnum):
    CONVOLUTION = 0
    MATRIX_MULTIPLY = 1
    CONSTANT = 2
    SHUFFLE = 3
    QUANTIZE = 4
    DEQUANTIZE = 5
    SHAPE = 6
    ELEMENTWISE = 7
    NORMALIZATION = 8
    UNARY = 9
    REDUCE = 10
    OTHER = 11


LAYER_TYPES = {
    "Conv": LayerType.CONVOLUTION,
    "MatMul": LayerType.MATRIX_MULTIPLY,
    "Gemm": LayerType.MATRIX_MULTIPLY,
    "Constant": LayerType.CONSTANT,
    "QuantizeLinear": LayerType.QUANTIZE,
    "DequantizeLinear": LayerType.DEQUANTIZE,
    "Shape": LayerType.SHAPE,
    "LayerNormalization": LayerType.NORMALIZATION,
    "Add": LayerType.ELEMENTWISE,
    "Sub": LayerType.ELEMENTWISE,
    "Mul": LayerType.ELEMENTWISE,
    "Div": LayerType.ELEMENTWISE,
    "Pow": LayerType.ELEMENTWISE,
    "Sqrt": LayerType.UNARY,
    "Erf": LayerType.UNARY,
    "ReduceMean": LayerType.REDUCE,
    "ReduceSum": LayerType.REDUCE,
    "Transpose": LayerType.SHUFFLE,
    "Reshape": LayerType.SHUFFLE,
}


@dataclass
class FakeTensor:
    name: str
    shape: tuple
    dtype: DataType = DataType.FLOAT
    is_shape_tensor: bool = False


@dataclass
class FakeLayer:
    name: str
    op_type: str  # the ONNX op it came from ("Constant"/"Shuffle" for parser-made layers)
    inputs: list
    outputs: list
    precision: DataType = DataType.FLOAT
    precision_is_set: bool = False
    output_types: dict = field(default_factory=dict)
    type: LayerType = LayerType.OTHER

    def __post_init__(self) -> None:
        self.__dict__["type"] = LAYER_TYPES.get(self.op_type, LayerType.OTHER)

    @property
    def num_outputs(self) -> int:
        return len(self.outputs)

    @property
    def num_inputs(self) -> int:
        return len(self.inputs)

    def get_output(self, index: int) -> FakeTensor:
        return self.outputs[index]

    def get_input(self, index: int) -> FakeTensor:
        return self.inputs[index]

    def set_output_type(self, index: int, dtype: DataType) -> None:
        self.output_types[index] = dtype

    def __setattr__(self, name, value):
        if name == "precision" and "precision" in self.__dict__:
            self.__dict__["precision_is_set"] = True
        super().__setattr__(name, value)


class FakeDeviceMemory:
    """Host buffers standing in for device (and pinned) memory; tracks what is still allocated."""

    def __init__(self):
        import ctypes

        self._ctypes = ctypes
        self.live = {}

    def alloc(self, nbytes):
        buffer = (self._ctypes.c_byte * max(int(nbytes), 1))()
        address = self._ctypes.addressof(buffer)
        self.live[address] = buffer
        return address

    def free(self, address):
        del self.live[int(address)]

    def view(self, address, shape, dtype):
        count = int(np.prod(shape))
        raw = (self._ctypes.c_byte * (count * np.dtype(dtype).itemsize)).from_address(int(address))
        return np.frombuffer(raw, dtype=dtype, count=count).reshape(shape)


class FakeTensorRTForWiringTests(types.ModuleType):
    """The fake `tensorrt` module; see the module docstring.

    `last_build` records the last build (network, config, builder, calibration); `deserialized`
    every plan handed to a Runtime; `contexts` every execution context; `stderr_lines` what the
    calibrator trampolines printed.
    """

    def __init__(
        self,
        version: str = "10.3.0.26",
        build_log: tuple = (),
        build_fails: bool = False,
        parse_errors: tuple = (),
        num_dla_cores: int = 0,
        rename_layers: bool = False,
        memory: FakeDeviceMemory | None = None,
        device: str = "Fake GPU",
        reject_calibration_cache: bool = False,
    ) -> None:
        super().__init__("tensorrt")
        self.__version__ = version
        major, minor, patch = ([int(p) for p in re.findall(r"\d+", version)] + [0, 0])[:3]
        self.major, self.minor = major, minor
        self.version_code = major * (10000 if major >= 10 else 1000) + minor * 100 + patch
        self.build_log = build_log
        self.build_fails = build_fails
        self.parse_errors = parse_errors
        self.num_dla_cores = num_dla_cores
        self.rename_layers = rename_layers
        self.memory = memory
        self.device = device
        self.reject_calibration_cache = reject_calibration_cache
        self.last_build = None
        self.deserialized: list = []
        self.contexts: list = []
        self.stderr_lines: list = []
        self.logged: list = []
        self._logger = None
        self._logger_holders: weakref.WeakSet = weakref.WeakSet()

        self.float32, self.float16, self.int8, self.int32 = DataType.FLOAT, DataType.HALF, DataType.INT8, DataType.INT32
        self.DataType = DataType
        self.LayerType = LayerType
        flags = ["GPU_FALLBACK", "DIRECT_IO", "TF32"]
        if major < 11:
            flags += ["FP16", "INT8", "PREFER_PRECISION_CONSTRAINTS", "OBEY_PRECISION_CONSTRAINTS"]
        self.BuilderFlag = enum.IntEnum("BuilderFlag", flags, start=0)
        network_flags = ["EXPLICIT_BATCH"] + (["STRONGLY_TYPED"] if major >= 10 else [])
        self.NetworkDefinitionCreationFlag = enum.IntEnum("NetworkDefinitionCreationFlag", network_flags, start=0)
        self.MemoryPoolType = enum.IntEnum("MemoryPoolType", ["WORKSPACE"], start=0)
        self.DeviceType = enum.IntEnum("DeviceType", ["GPU", "DLA"], start=0)
        self.ProfilingVerbosity = enum.IntEnum("ProfilingVerbosity", ["LAYER_NAMES_ONLY", "NONE", "DETAILED"], start=0)
        self.LayerInformationFormat = enum.IntEnum("LayerInformationFormat", ["ONELINE", "JSON"], start=0)
        self.TensorIOMode = enum.IntEnum("TensorIOMode", ["NONE", "INPUT", "OUTPUT"], start=0)
        self.ILogger = _make_ilogger()
        self.Logger = _make_default_logger(self.ILogger)
        if (major, minor) >= (8, 6):
            self.INormalizationLayer = type("INormalizationLayer", (), {})
        if major < 11:
            for name, algorithm in (
                ("IInt8EntropyCalibrator2", "EntropyCalibration2"),
                ("IInt8MinMaxCalibrator", "MinMaxCalibration"),
                ("IInt8EntropyCalibrator", "EntropyCalibration"),
            ):
                setattr(self, name, type(name, (), {"__init__": lambda self: None, "algorithm": algorithm}))
        if major >= 10:
            self.IProgressMonitor = type("IProgressMonitor", (), {"__init__": lambda self: None})
        config_attributes = {"default_device_type", "DLA_core", "int8_calibrator", "profiling_verbosity"}
        if (major, minor) >= (8, 6):
            config_attributes.add("builder_optimization_level")
        if major >= 10:
            config_attributes.add("progress_monitor")
        self.IBuilderConfig = _make_config_class(self, config_attributes)
        module = self

        class Builder:
            def __init__(self, logger) -> None:
                module._take_logger(self, logger, "createInferBuilder")
                self.num_DLA_cores = module.num_dla_cores
                if module.major < 11:
                    self.platform_has_fast_fp16 = True

            def create_network(self, flags: int = 0) -> FakeNetwork:
                return FakeNetwork(flags)

            def create_builder_config(self):
                return module.IBuilderConfig()

            def create_optimization_profile(self) -> FakeProfile:
                return FakeProfile()

            def build_serialized_network(self, network, config):
                return module._build(self, network, config)

        class OnnxParser:
            def __init__(self, network, logger) -> None:
                self.network = network
                self.errors: list[str] = []

            @property
            def num_errors(self) -> int:
                return len(self.errors)

            def get_error(self, index: int) -> str:
                return self.errors[index]

            def parse(self, data: bytes) -> bool:
                if module.major < 10 and not self.network.flags & (
                    1 << int(module.NetworkDefinitionCreationFlag.EXPLICIT_BATCH)
                ):
                    self.errors.append("ModelImporter.cpp: ONNX models need an explicit-batch network")
                    return False
                if module.parse_errors:
                    self.errors.extend(module.parse_errors)
                    return False
                self.errors.extend(self.network.populate(module, onnx.load_model_from_string(bytes(data))))
                self.network.onnx_bytes = bytes(data)
                return not self.errors

        class Runtime:
            def __init__(self, logger) -> None:
                module._take_logger(self, logger, "createInferRuntime")
                self.DLA_core = -1

            def deserialize_cuda_engine(self, plan):
                plan = bytes(plan)
                module.deserialized.append({"plan": plan, "DLA_core": self.DLA_core})
                if not plan.startswith(b"{"):
                    module._log(Severity.ERROR, "1: [runtime.cpp::parsePlan] Error Code 1: Serialization assertion failed")
                    return None  # what TensorRT returns for a plan it cannot read
                return FakeEngine(module, json.loads(plan.decode()))

        self.Builder, self.OnnxParser, self.Runtime = Builder, OnnxParser, Runtime

    # --- the process-wide logger (#1475) -----------------------------------------------------------

    def _take_logger(self, owner, logger, creator: str) -> None:
        alive = list(self._logger_holders)
        if alive and self._logger is not None and logger is not self._logger:
            self._log(Severity.WARNING, SINGLE_LOGGER_WARNING.format(creator))
        elif not alive or self._logger is None:
            self._logger = logger
        self._logger_holders.add(owner)

    def _log(self, severity: Severity, message: str) -> None:
        self.logged.append((severity, message))
        if self._logger is not None:
            self._logger.log(severity, message)

    # --- the calibrator trampolines (pyInt8.cpp) ---------------------------------------------------

    def _callback(self, calibrator, name: str, default, *args):
        try:
            return getattr(calibrator, name)(*args)
        except BaseException as exc:  # that is the point: TensorRT catches everything
            line = f"[ERROR] Exception caught in {name}(): {type(exc).__name__}: {exc}"
            self.stderr_lines.append(line)
            print(line, file=sys.stderr)
            return default

    # --- building ----------------------------------------------------------------------------------

    def _build(self, builder, network, config):
        flags = {flag.name for flag in config.flags}
        calibration = None
        self.last_build = types.SimpleNamespace(network=network, config=config, builder=builder, calibration=None)
        if getattr(config, "progress_monitor", None) is not None:
            config.progress_monitor.phase_start("Building engine", None, 1)
            config.progress_monitor.step_complete("Building engine", 0)
            config.progress_monitor.phase_finish("Building engine")
        explicit = network.has_qdq()
        scales: dict = {}
        if "INT8" in flags and not explicit and config.int8_calibrator is not None:
            calibration = self._calibrate(network, config.int8_calibrator)
            self.last_build.calibration = calibration
            if calibration is None:
                self._log(Severity.ERROR, "Calibration failure occurred with no scaling factors detected.")
                return None
            scales = calibration["scales"]
            for tensor in network.all_tensors():
                if tensor not in scales:
                    self._log(Severity.WARNING, MISSING_SCALE.format(tensor))
        for severity, message in self.build_log:
            self._log(severity, message)
        if self.build_fails:
            self._log(Severity.ERROR, "[network.cpp::validate] Error Code 4: no kernels found")
            return None
        layers = [self._choose_precision(layer, flags, explicit, scales, network) for layer in network.layers]
        profile = config.profiles[0].shapes if config.profiles else {}
        (minimum, optimum, maximum) = next(iter(profile.values()), [[1], [1], [1]])
        plan = {
            "fake_plan": True,
            "flags": sorted(flags),
            "profile": profile,
            "min": minimum[0],
            "opt": optimum[0],
            "max": maximum[0],
            "size": network.inputs[0].shape[-1] if network.inputs else 8,
            "dim": network.outputs[0].shape[-1] if network.outputs else 4,
            "seed": network.seed,
            "layers": layers,
            "verbosity": getattr(config.profiling_verbosity, "name", None),
            "dla_core": config.DLA_core if config.default_device_type == self.DeviceType.DLA else None,
            "onnx": base64.b64encode(network.onnx_bytes).decode(),
        }
        return json.dumps(plan, sort_keys=True).encode()

    def _choose_precision(self, layer, flags, explicit, scales, network) -> dict:
        if layer.op_type in QUANTIZABLE and "INT8" in flags:
            if explicit:
                int8 = any(network.producer_type(t.name) == "DequantizeLinear" for t in layer.inputs)
            else:
                int8 = all(t.name in scales for t in layer.inputs if not network.is_constant(t.name)) and all(
                    t.name in scales for t in layer.outputs
                )
            if int8:
                return {"name": layer.name, "type": layer.op_type, "precision": "INT8"}
        if layer.precision_is_set:
            chosen = layer.precision.name
        else:
            chosen = "HALF" if "FP16" in flags else "FLOAT"
        return {"name": layer.name, "type": layer.op_type, "precision": chosen}

    def _calibrate(self, network, calibrator):
        """TensorRT's implicit-INT8 calibration: use the cache if it accepts it, else run the batches."""
        cache = self._callback(calibrator, "read_calibration_cache", None)
        algorithm = getattr(calibrator, "algorithm", "EntropyCalibration2")
        if cache is not None and not self.reject_calibration_cache:
            text = bytes(cache).decode("ascii", "replace")
            lines = [line for line in text.splitlines() if line.strip()]
            if lines and lines[0] == f"TRT-{self.version_code}-{algorithm}":
                scales = dict(line.rsplit(": ", 1) for line in lines[1:])
                return {"source": "cache", "scales": scales, "batches": 0}
        # The cache was missing or not this TensorRT's (#1378): calibrate, silently.
        batch_size = self._callback(calibrator, "get_batch_size", -1)
        batches = 0
        names = [tensor.name for tensor in network.inputs]
        while True:
            pointers = self._callback(calibrator, "get_batch", None, names)
            if not pointers:
                break
            batches += 1
        if batches == 0 or batch_size < 1:
            return None
        scales = {name: "3c010204" for name in network.calibrated_tensors()}
        text = "\n".join([f"TRT-{self.version_code}-{algorithm}", *(f"{k}: {v}" for k, v in sorted(scales.items()))])
        self._callback(calibrator, "write_calibration_cache", None, memoryview((text + "\n").encode()))
        return {"source": "calibration", "scales": scales, "batches": batches}

    def nptype(self, dtype):
        raise AssertionError("trt.nptype breaks on TensorRT 8.5.2 with NumPy >= 1.24; never call it")


def _make_ilogger():
    class ILogger:
        def __init__(self) -> None:
            pass

    ILogger.Severity = Severity
    for member in Severity:
        setattr(ILogger, member.name, member)
    return ILogger


def _make_default_logger(base):
    """`trt.Logger(min_severity)`: TensorRT's own logger, printing to stdout (pyCore.cpp DefaultLogger)."""

    class Logger(base):
        def __init__(self, min_severity=Severity.WARNING) -> None:
            self.min_severity = min_severity

        def log(self, severity, msg) -> None:
            if severity <= self.min_severity:
                print(f"[TRT] [{Severity(severity).name[0]}] {msg}")

    for member in Severity:
        setattr(Logger, member.name, member)
    return Logger


def _make_config_class(module, attributes: set):
    class FakeConfig:
        def __init__(self) -> None:
            object.__setattr__(self, "flags", {module.BuilderFlag.TF32} if "TF32" in module.BuilderFlag.__members__ else set())
            object.__setattr__(self, "memory_pool_limits", {})
            object.__setattr__(self, "profiles", [])
            object.__setattr__(self, "calibration_profile", None)
            object.__setattr__(self, "timing_cache", None)
            for name in attributes:
                object.__setattr__(self, name, None)
            if "DLA_core" in attributes:
                object.__setattr__(self, "DLA_core", -1)
                object.__setattr__(self, "default_device_type", module.DeviceType.GPU)

        def __setattr__(self, name, value):
            if name not in attributes:
                raise AttributeError(
                    f"'tensorrt.IBuilderConfig' object has no attribute '{name}' (TensorRT {module.__version__})"
                )
            object.__setattr__(self, name, value)

        def set_flag(self, flag) -> None:
            self.flags.add(flag)

        def clear_flag(self, flag) -> None:
            self.flags.discard(flag)

        def get_flag(self, flag) -> bool:
            return flag in self.flags

        def set_memory_pool_limit(self, pool, size: int) -> None:
            self.memory_pool_limits[pool] = size

        def add_optimization_profile(self, profile) -> int:
            self.profiles.append(profile)
            return len(self.profiles) - 1

        def set_calibration_profile(self, profile) -> bool:
            object.__setattr__(self, "calibration_profile", profile)
            return True

        def get_calibration_profile(self):
            return self.calibration_profile

        def create_timing_cache(self, serialized_timing_cache) -> FakeTimingCache | None:
            data = bytes(serialized_timing_cache)
            if not data:
                return FakeTimingCache(module.device, b"")
            match = re.match(rb"^TIMING:([^:]*):(.*)$", data, re.DOTALL)
            if match is None:
                return None  # a null ITimingCache*: pybind11 hands back None
            return FakeTimingCache(match.group(1).decode(), match.group(2))

        def set_timing_cache(self, cache, ignore_mismatch) -> bool:
            if not isinstance(cache, FakeTimingCache):
                raise TypeError(
                    "set_timing_cache(): incompatible function arguments. The following argument types are "
                    "supported: (self: tensorrt.IBuilderConfig, cache: tensorrt.ITimingCache, ignore_mismatch: bool)"
                )
            if cache.device != module.device and not ignore_mismatch:
                module._log(Severity.ERROR, "[timingCache.cpp::verify] timing cache was created on another device")
                return False
            object.__setattr__(self, "timing_cache", cache)
            return True

        def get_timing_cache(self):
            return self.timing_cache

    if "builder_optimization_level" in attributes:
        FakeConfig.builder_optimization_level = None  # class attribute, as pybind properties are
    return FakeConfig


@dataclass
class FakeTimingCache:
    device: str
    data: bytes

    def serialize(self) -> bytes:
        return b"TIMING:" + self.device.encode() + b":" + self.data + b"+timings"


class FakeProfile:
    def __init__(self) -> None:
        self.shapes: dict = {}

    def set_shape(self, name: str, min, opt, max) -> None:
        self.shapes[name] = [list(min), list(opt), list(max)]

    def get_shape(self, name: str):
        return self.shapes[name]

    def __bool__(self) -> bool:  # IOptimizationProfile.__bool__ is isValid()
        return bool(self.shapes)


class FakeNetwork:
    def __init__(self, flags: int) -> None:
        self.flags = flags
        self.layers: list[FakeLayer] = []
        self.inputs: list[FakeTensor] = []
        self.outputs: list[FakeTensor] = []
        self.seed = 0
        self.onnx_bytes = b""
        self._producers: dict = {}
        self._constants: set = set()

    def populate(self, module, model: onnx.ModelProto) -> list[str]:
        """Import the graph like TensorRT's ONNX parser would; returns parser errors."""

        def dims(value):
            return tuple(d.dim_value if d.HasField("dim_value") else -1 for d in value.type.tensor_type.shape.dim)

        initializers = {init.name: init for init in model.graph.initializer}
        for index, node in enumerate(model.graph.node):
            if node.op_type == "LayerNormalization" and (module.major, module.minor) < (8, 6):
                return [f"In node {index} ({node.name}): UNSUPPORTED_NODE: No importer registered for op: LayerNormalization"]
            if (
                node.op_type == "DequantizeLinear"
                and module.major < 10
                and node.input[0] in initializers
                and initializers[node.input[0]].data_type == ONNX_INT8
            ):
                return [f"{node.name}: only activation types allowed as input to this layer."]
        self.seed = sum(ord(c) for c in model.graph.name) + len(model.graph.node)
        self.inputs = [FakeTensor(v.name, dims(v)) for v in model.graph.input if v.name not in initializers]
        self.outputs = [FakeTensor(v.name, dims(v)) for v in model.graph.output]
        self._constants = set(initializers)
        unnamed = 0
        for index, node in enumerate(model.graph.node):
            inputs = []
            for name in node.input:
                if node.op_type == "MatMul" and name in initializers:
                    # MatMul weights become tensors: an unnamed Constant layer, then a broadcast Shuffle.
                    constant = f"(Unnamed Layer* {unnamed}) [Constant]_output"
                    shuffle = f"(Unnamed Layer* {unnamed + 1}) [Shuffle]_output"
                    self._add(f"(Unnamed Layer* {unnamed}) [Constant]", "Constant", [], [constant])
                    self._add(f"(Unnamed Layer* {unnamed + 1}) [Shuffle]", "Shuffle", [constant], [shuffle])
                    self._constants.update((constant, shuffle))
                    unnamed += 2
                    inputs.append(shuffle)
                elif name:
                    inputs.append(name)
            name = f"{node.op_type}_{index}" if module.rename_layers else node.name
            if node.op_type == "Constant" or all(i in self._constants for i in inputs if i):
                self._constants.update(node.output)
            self._add(name, node.op_type, inputs, list(node.output))
        return []

    def _add(self, name, op_type, inputs, outputs) -> None:
        layer = FakeLayer(name, op_type, [FakeTensor(i, ()) for i in inputs], [FakeTensor(o, ()) for o in outputs])
        for out in outputs:
            self._producers[out] = layer
        self.layers.append(layer)

    def producer_type(self, tensor: str) -> str | None:
        layer = self._producers.get(tensor)
        return layer.op_type if layer is not None else None

    def is_constant(self, tensor: str) -> bool:
        return tensor in self._constants

    def has_qdq(self) -> bool:
        return any(layer.op_type in ("QuantizeLinear", "DequantizeLinear") for layer in self.layers)

    def all_tensors(self) -> list[str]:
        names = [t.name for t in self.inputs]
        for layer in self.layers:
            names.extend(t.name for t in layer.outputs)
        return list(dict.fromkeys(names))

    def calibrated_tensors(self) -> list[str]:
        """What TensorRT's own calibration records: every activation and the parser's Shuffle outputs
        (its cache then lists "(Unnamed Layer* N) [Shuffle]_output" names), not the Constant outputs."""
        return [
            name
            for name in self.all_tensors()
            if name.endswith("[Shuffle]_output") or name not in self._constants
        ]

    # The INetworkDefinition surface meanloc and Polygraphy use.
    @property
    def num_layers(self) -> int:
        return len(self.layers)

    def get_layer(self, index: int) -> FakeLayer:
        return self.layers[index]

    def __len__(self) -> int:
        return len(self.layers)

    def __getitem__(self, index: int) -> FakeLayer:
        return self.layers[index]

    @property
    def num_inputs(self) -> int:
        return len(self.inputs)

    @property
    def num_outputs(self) -> int:
        return len(self.outputs)

    def get_input(self, index: int) -> FakeTensor:
        return self.inputs[index]

    def get_output(self, index: int) -> FakeTensor:
        return self.outputs[index]


# --- the runtime side ------------------------------------------------------------------------------


class FakeInspector:
    def __init__(self, engine) -> None:
        self.engine = engine

    def get_engine_information(self, format) -> str:
        spec = self.engine.spec
        layers = spec.get("layers", [])
        if spec.get("verbosity") != "DETAILED":
            return json.dumps({"Layers": [layer["name"] for layer in layers]})
        described = []
        for layer in layers:
            fmt = FORMATS.get(layer["precision"], FORMATS["FLOAT"])
            described.append(
                {
                    "Name": layer["name"],
                    "LayerType": layer["type"],
                    "Inputs": [{"Name": "in", "Format/Datatype": fmt}],
                    "Outputs": [{"Name": "out", "Format/Datatype": fmt}],
                }
            )
        return json.dumps({"Layers": described, "Bindings": ["images", "embedding"]})


class FakeEngine:
    def __init__(self, trt, spec):
        self.trt, self.spec = trt, spec
        self.size, self.dim = int(spec.get("size", 8)), int(spec.get("dim", 4))
        self.weights = np.random.default_rng(spec["seed"]).normal(size=(3 * self.size * self.size, self.dim)).astype(np.float32)
        self.session = None
        if spec.get("onnx"):
            import onnxruntime

            model = base64.b64decode(spec["onnx"])
            self.session = onnxruntime.InferenceSession(model, providers=["CPUExecutionProvider"])
        self.names = [spec.get("input_name", "images"), "embedding"]
        self.num_io_tensors = 2

    def create_engine_inspector(self) -> FakeInspector:
        return FakeInspector(self)

    def get_tensor_name(self, index):
        return self.names[index]

    def get_tensor_mode(self, name):
        return self.trt.TensorIOMode.INPUT if name == self.names[0] else self.trt.TensorIOMode.OUTPUT

    def get_tensor_dtype(self, name):
        return self.trt.DataType[self.spec.get("out_dtype", "FLOAT") if name == "embedding" else "FLOAT"]

    def get_tensor_shape(self, name):
        batch = -1 if self.spec["min"] != self.spec["max"] else self.spec["min"]
        return (batch, 3, self.size, self.size) if name == self.names[0] else (batch, self.dim)

    def get_tensor_profile_shape(self, name, profile_index):
        assert name == self.names[0] and profile_index == 0
        return [(self.spec[key], 3, self.size, self.size) for key in ("min", "opt", "max")]

    def create_execution_context(self):
        context = FakeContext(self)
        self.trt.contexts.append(context)
        return context


class FakeContext:
    def __init__(self, engine):
        self.engine, self.calls, self.addresses, self.batch = engine, [], {}, None

    def set_input_shape(self, name, shape):
        self.calls.append(("set_input_shape", tuple(shape)))
        spec, size = self.engine.spec, self.engine.size
        if name != "images" or not spec["min"] <= shape[0] <= spec["max"] or tuple(shape[1:]) != (3, size, size):
            return False
        self.batch = shape[0]
        return True

    def set_tensor_address(self, name, address):
        self.calls.append(("set_tensor_address", name))
        self.addresses[name] = int(address)
        return True

    def get_tensor_shape(self, name):
        size = self.engine.size
        return (self.batch, self.engine.dim) if name == "embedding" else (self.batch, 3, size, size)

    def execute_async_v3(self, stream_handle):
        self.calls.append(("execute_async_v3", stream_handle))
        if not stream_handle or set(self.addresses) != {"images", "embedding"} or self.engine.spec.get("fail"):
            return False  # default stream, an unbound tensor, or a simulated kernel failure
        memory, size = self.engine.trt.memory, self.engine.size
        images = memory.view(self.addresses["images"], (self.batch, 3, size, size), np.float32)
        out_dtype = np.float16 if self.engine.get_tensor_dtype("embedding").name == "HALF" else np.float32
        output = memory.view(self.addresses["embedding"], (self.batch, self.engine.dim), out_dtype)
        if self.engine.session is not None:
            output[:] = self.engine.session.run(None, {"images": np.array(images)})[0].astype(out_dtype)
        else:
            output[:] = (images.reshape(self.batch, -1) @ self.engine.weights).astype(out_dtype)
        return True


def reference_embeddings(batch, seed, dim=4):
    """What FakeEngine computes for a plan with this seed: L2-normalised random projection."""
    from meanloc.runtime.backends.base import l2_normalise

    weights = np.random.default_rng(seed).normal(size=(batch[0].size, dim)).astype(np.float32)
    return l2_normalise(batch.reshape(len(batch), -1) @ weights)


