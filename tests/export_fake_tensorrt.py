"""A stand-in `tensorrt` module for testing the engine builder's WIRING only.

It says nothing about whether TensorRT accepts our models, builds good engines or computes correct
embeddings: the `@pytest.mark.gpu` tests do that on a TensorRT host. What it checks here is the
call sequence and the version-dependent surface the builder must feature-detect, modelled on the
TensorRT 8.5 / 8.6 / 10.x / 11 Python API docstrings (deployment.md §3):
- 8.x needs the EXPLICIT_BATCH network flag (the fake parser refuses an implicit-batch network);
- `builder_optimization_level` and `INormalizationLayer` exist from 8.6, `IProgressMonitor` from 10;
- 11 has no FP16/INT8/precision-constraint flags and no INT8 calibrators;
- config attributes a version lacks raise AttributeError, as pybind11 objects do.
The fake parser reads the real ONNX with `onnx` and turns every node into a layer named after the
node (or, with `rename_layers`, an opaque name, so matching must use the output tensor names).
"""

from __future__ import annotations

import enum
import json
import re
import types
from dataclasses import dataclass, field

import onnx


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


@dataclass
class FakeTensor:
    name: str
    shape: tuple
    dtype: DataType = DataType.FLOAT


@dataclass
class FakeLayer:
    name: str
    type: str
    outputs: list
    precision: DataType = DataType.FLOAT
    precision_is_set: bool = False
    output_types: dict = field(default_factory=dict)

    @property
    def num_outputs(self) -> int:
        return len(self.outputs)

    def get_output(self, index: int) -> FakeTensor:
        return self.outputs[index]

    def set_output_type(self, index: int, dtype: DataType) -> None:
        self.output_types[index] = dtype

    def __setattr__(self, name, value):
        if name == "precision" and "precision" in self.__dict__:
            self.__dict__["precision_is_set"] = True
        super().__setattr__(name, value)


class FakeTensorRTForWiringTests(types.ModuleType):
    """The fake `tensorrt` module; see the module docstring. `last_build` records the last build."""

    def __init__(
        self,
        version: str = "10.3.0.26",
        build_log: tuple = (),
        build_fails: bool = False,
        parse_errors: tuple = (),
        num_dla_cores: int = 0,
        rename_layers: bool = False,
    ) -> None:
        super().__init__("tensorrt")
        self.__version__ = version
        major, minor = (int(p) for p in re.findall(r"\d+", version)[:2])
        self.major = major
        self.build_log = build_log
        self.build_fails = build_fails
        self.parse_errors = parse_errors
        self.num_dla_cores = num_dla_cores
        self.rename_layers = rename_layers
        self.last_build = None
        self.float32, self.float16, self.int8, self.int32 = (
            DataType.FLOAT,
            DataType.HALF,
            DataType.INT8,
            DataType.INT32,
        )
        self.DataType = DataType

        flags = ["GPU_FALLBACK", "DIRECT_IO"]
        if major < 11:
            flags += ["FP16", "INT8", "PREFER_PRECISION_CONSTRAINTS", "OBEY_PRECISION_CONSTRAINTS"]
        self.BuilderFlag = enum.IntEnum("BuilderFlag", flags)
        network_flags = ["EXPLICIT_BATCH"] + (["STRONGLY_TYPED"] if major >= 10 else [])
        self.NetworkDefinitionCreationFlag = enum.IntEnum(
            "NetworkDefinitionCreationFlag", network_flags, start=0
        )
        self.MemoryPoolType = enum.IntEnum("MemoryPoolType", ["WORKSPACE"], start=0)
        self.DeviceType = enum.IntEnum("DeviceType", ["GPU", "DLA"], start=0)
        self.ProfilingVerbosity = enum.IntEnum("ProfilingVerbosity", ["LAYER_NAMES_ONLY", "NONE", "DETAILED"])
        self.ILogger = _make_ilogger()
        if (major, minor) >= (8, 5):
            self.TensorIOMode = enum.IntEnum("TensorIOMode", ["NONE", "INPUT", "OUTPUT"], start=0)
        if (major, minor) >= (8, 6):
            self.INormalizationLayer = type("INormalizationLayer", (), {})
        if major < 11:
            self.IInt8EntropyCalibrator2 = type(
                "IInt8EntropyCalibrator2", (), {"__init__": lambda self: None}
            )
        if major >= 10:
            self.IProgressMonitor = type("IProgressMonitor", (), {"__init__": lambda self: None})
        config_attributes = {
            "default_device_type",
            "DLA_core",
            "int8_calibrator",
            "profiling_verbosity",
        }
        if (major, minor) >= (8, 6):
            config_attributes.add("builder_optimization_level")
        if major >= 10:
            config_attributes.add("progress_monitor")
        self.IBuilderConfig = _make_config_class(self, config_attributes)
        module = self

        class Builder:
            def __init__(self, logger) -> None:
                self.logger = logger
                self.num_DLA_cores = module.num_dla_cores
                if module.major < 11:
                    self.platform_has_fast_fp16 = True

            def create_network(self, flags: int) -> FakeNetwork:
                return FakeNetwork(flags)

            def create_builder_config(self):
                return module.IBuilderConfig()

            def create_optimization_profile(self) -> FakeProfile:
                return FakeProfile()

            def build_serialized_network(self, network, config):
                module.last_build = types.SimpleNamespace(network=network, config=config, builder=self)
                if config.int8_calibrator is not None:
                    # What TensorRT does first with a calibrator: a cache skips calibration entirely.
                    config.calibration_cache_read = config.int8_calibrator.read_calibration_cache()
                if getattr(config, "progress_monitor", None) is not None:
                    config.progress_monitor.phase_start("Building engine", None, 1)
                    config.progress_monitor.step_complete("Building engine", 0)
                    config.progress_monitor.phase_finish("Building engine")
                for severity, message in module.build_log:
                    self.logger.log(severity, message)
                if module.build_fails:
                    self.logger.log(Severity.ERROR, "[network.cpp::validate] Error Code 4: no kernels found")
                    return None
                plan = {"flags": sorted(f.name for f in config.flags), "profile": config.profiles[0].shapes}
                return ("FAKEPLAN" + json.dumps(plan, sort_keys=True)).encode()

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
                self.network.populate(onnx.load_model_from_string(data), module.rename_layers)
                return True

        self.Builder = Builder
        self.OnnxParser = OnnxParser


def _make_ilogger():
    class ILogger:
        def __init__(self) -> None:
            pass

    ILogger.Severity = Severity
    return ILogger


def _make_config_class(module, attributes: set):
    class FakeConfig:
        def __init__(self) -> None:
            object.__setattr__(self, "flags", set())
            object.__setattr__(self, "memory_pool_limits", {})
            object.__setattr__(self, "profiles", [])
            object.__setattr__(self, "calibration_profile", None)
            object.__setattr__(self, "timing_cache", None)
            object.__setattr__(self, "calibration_cache_read", None)
            for name in attributes:
                object.__setattr__(self, name, None)

        def __setattr__(self, name, value):
            if name not in attributes and name != "calibration_cache_read":
                raise AttributeError(
                    f"'tensorrt.IBuilderConfig' object has no attribute '{name}' (TensorRT {module.__version__})"
                )
            object.__setattr__(self, name, value)

        def set_flag(self, flag) -> None:
            self.flags.add(flag)

        def set_memory_pool_limit(self, pool, size: int) -> None:
            self.memory_pool_limits[pool] = size

        def add_optimization_profile(self, profile) -> int:
            self.profiles.append(profile)
            return len(self.profiles) - 1

        def set_calibration_profile(self, profile) -> bool:
            object.__setattr__(self, "calibration_profile", profile)
            return True

        def create_timing_cache(self, data: bytes) -> FakeTimingCache:
            return FakeTimingCache(bytes(data))

        def set_timing_cache(self, cache, ignore_mismatch: bool) -> bool:
            if cache.data.startswith(b"OTHER-DEVICE"):
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
    data: bytes

    def serialize(self) -> bytes:
        return b"TIMING:" + self.data[-16:] + b":updated"


class FakeProfile:
    def __init__(self) -> None:
        self.shapes: dict = {}

    def set_shape(self, name: str, minimum, optimum, maximum) -> None:
        self.shapes[name] = [list(minimum), list(optimum), list(maximum)]


class FakeNetwork:
    def __init__(self, flags: int) -> None:
        self.flags = flags
        self.layers: list[FakeLayer] = []
        self.inputs: list[FakeTensor] = []
        self.outputs: list[FakeTensor] = []

    def populate(self, model: onnx.ModelProto, rename_layers: bool) -> None:
        def dims(value):
            return tuple(
                d.dim_value if d.HasField("dim_value") else -1 for d in value.type.tensor_type.shape.dim
            )

        self.inputs = [FakeTensor(v.name, dims(v)) for v in model.graph.input]
        self.outputs = [FakeTensor(v.name, dims(v)) for v in model.graph.output]
        for index, node in enumerate(model.graph.node):
            name = f"{node.op_type}_{index}" if rename_layers else node.name
            self.layers.append(FakeLayer(name, node.op_type, [FakeTensor(out, ()) for out in node.output]))

    @property
    def num_layers(self) -> int:
        return len(self.layers)

    def get_layer(self, index: int) -> FakeLayer:
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
