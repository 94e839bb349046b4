"""The engine sidecar: `<engine>.json` next to every TensorRT plan, as one dataclass.

A TensorRT plan only deserializes on the TensorRT version and GPU that built it, and TensorRT
cannot tell which ones those were before trying (NVIDIA/TensorRT#3073). So the builder
(export/engine_build.py) writes an `EngineSidecar`, and the TensorRT backend reads it back and
`check`s it against this machine before deserializing. The dataclass fields are the JSON keys:
they are defined here and nowhere else.

Python 3.8, torch-free.
"""

import dataclasses
import os
from dataclasses import dataclass, field
from typing import Any, Dict, List, Mapping, Optional

from meanloc.errors import ArtifactMismatchError, MeanlocError

from .artifacts import atomic_write_json, check_manifest_kind, new_manifest, read_json
from .identity import ModelIdentity

ENGINE_SIDECAR_KIND = "tensorrt-engine"
ENGINE_SIDECAR_SUFFIX = ".json"

# The environment fields a plan depends on (deployment.md §3, "cache key and metadata").
ENV_TENSORRT = "tensorrt_version"
ENV_CUDA_RUNTIME = "cuda_runtime_version"
ENV_GPU_NAME = "gpu_name"
ENV_COMPUTE_CAPABILITY = "compute_capability"
ENV_L4T = "l4t_release"
ENV_DLA_CORE = "dla_core"
ENGINE_ENVIRONMENT_KEYS = (ENV_TENSORRT, ENV_CUDA_RUNTIME, ENV_GPU_NAME, ENV_COMPUTE_CAPABILITY, ENV_L4T)
# Where the machine says how many DLA cores it has (runtime/trt_env.py); not recorded in sidecars.
ENV_DLA_CORES = "dla_cores"


def engine_sidecar_path(engine_path: str) -> str:
    """`model.engine` -> `model.engine.json` (the suffix is appended, so `.plan` works too)."""
    return str(engine_path) + ENGINE_SIDECAR_SUFFIX


def recorded_environment(env: Mapping[str, Any], dla_core: Optional[int] = None) -> Dict[str, Any]:
    """The part of a machine description (`trt_env.engine_environment()`) an engine records."""
    recorded = {key: env.get(key) for key in ENGINE_ENVIRONMENT_KEYS}
    recorded[ENV_DLA_CORE] = dla_core
    return recorded


@dataclass(frozen=True)
class EngineSidecar:
    """What a plan is (model identity, precision, profile) and what it needs (TensorRT, GPU, L4T)."""

    identity: ModelIdentity  # precision = the engine's; artifact_sha256 = the plan's sha256
    environment: Dict[str, Any]  # recorded_environment(...) on the build machine
    engine_sha256: Optional[str] = None
    precision: Optional[str] = None
    profile: Dict[str, int] = field(default_factory=dict)  # {"min", "opt", "max"} batch
    io: List[Dict[str, Any]] = field(default_factory=list)
    onnx_identity: Optional[ModelIdentity] = None
    onnx_sha256: Optional[str] = None
    onnx_file: Optional[str] = None
    onnx_opset: Optional[int] = None
    calibration_sha256: Optional[str] = None
    calibration_header: Optional[str] = None
    calibration_file: Optional[str] = None
    build_flags: Dict[str, Any] = field(default_factory=dict)
    build_environment: Dict[str, Any] = field(default_factory=dict)
    build_seconds: Optional[float] = None
    build_warnings: List[str] = field(default_factory=list)
    tensorrt_warnings: List[str] = field(default_factory=list)
    int8_layers: Optional[Dict[str, Any]] = None  # what IEngineInspector says ran in INT8
    cache_key: Optional[str] = None
    cache_key_fields: Optional[Dict[str, Any]] = None

    @property
    def engine_precision(self) -> str:
        return self.precision or self.identity.precision

    @property
    def dla_core(self) -> Optional[int]:
        core = self.environment.get(ENV_DLA_CORE)
        return None if core is None else int(core)

    def to_json(self) -> Dict[str, Any]:
        payload = {}  # type: Dict[str, Any]
        for item in dataclasses.fields(self):
            value = getattr(self, item.name)
            payload[item.name] = value.to_dict() if isinstance(value, ModelIdentity) else value
        return new_manifest(ENGINE_SIDECAR_KIND, **payload)

    @classmethod
    def from_json(cls, payload: Mapping[str, Any], source: str) -> "EngineSidecar":
        """Kind-check and parse a sidecar; one-line ArtifactMismatchError naming `source` if it is not one."""
        check_manifest_kind(payload, ENGINE_SIDECAR_KIND, source)
        for key in ("identity", "environment"):
            if not isinstance(payload.get(key), dict):
                raise ArtifactMismatchError("engine sidecar {} lacks the '{}' section".format(source, key))
        known = {item.name for item in dataclasses.fields(cls)}
        values = {key: value for key, value in payload.items() if key in known and value is not None}
        try:
            values["identity"] = ModelIdentity.from_dict(payload["identity"])
            if isinstance(payload.get("onnx_identity"), dict):
                values["onnx_identity"] = ModelIdentity.from_dict(payload["onnx_identity"])
            return cls(**values)
        except (MeanlocError, TypeError, ValueError) as exc:
            raise ArtifactMismatchError("engine sidecar {}: {}".format(source, exc)) from None

    @classmethod
    def load(cls, engine_path: str) -> "EngineSidecar":
        """The sidecar of `engine_path`; one-line error if it is missing or foreign."""
        sidecar_path = engine_sidecar_path(engine_path)
        if not os.path.exists(sidecar_path):
            raise ArtifactMismatchError(
                "engine {} has no sidecar manifest {}; engines must be built with `meanloc export engine`".format(
                    engine_path, sidecar_path
                )
            )
        return cls.from_json(read_json(sidecar_path, "engine sidecar"), sidecar_path)

    def write(self, engine_path: str) -> str:
        path = engine_sidecar_path(engine_path)
        atomic_write_json(path, self.to_json())
        return path

    def check(self, env: Mapping[str, Any]) -> None:
        """Refuse a plan built for another TensorRT, GPU or L4T release than the machine `env` describes.

        `env` is `trt_env.engine_environment()`. Raises ArtifactMismatchError naming both sides and the fix.
        """
        built = self.environment
        problems = []  # type: List[str]
        if env.get(ENV_TENSORRT) is None:
            problems.append("TensorRT is not installed here")
        elif built.get(ENV_TENSORRT) != env.get(ENV_TENSORRT):
            problems.append("TensorRT {} vs {}".format(built.get(ENV_TENSORRT), env.get(ENV_TENSORRT)))
        if env.get(ENV_GPU_NAME) is None:
            problems.append("no CUDA GPU found here")
        else:
            if built.get(ENV_COMPUTE_CAPABILITY) != env.get(ENV_COMPUTE_CAPABILITY):
                problems.append(
                    "compute capability {} vs {}".format(
                        built.get(ENV_COMPUTE_CAPABILITY), env.get(ENV_COMPUTE_CAPABILITY)
                    )
                )
            if built.get(ENV_GPU_NAME) != env.get(ENV_GPU_NAME):
                problems.append("GPU '{}' vs '{}'".format(built.get(ENV_GPU_NAME), env.get(ENV_GPU_NAME)))
        if (built.get(ENV_L4T) or env.get(ENV_L4T)) and built.get(ENV_L4T) != env.get(ENV_L4T):
            problems.append("L4T {} vs {}".format(built.get(ENV_L4T) or "none", env.get(ENV_L4T) or "none"))
        if self.dla_core is not None and self.dla_core >= int(env.get(ENV_DLA_CORES) or 0):
            problems.append(
                "DLA core {} requested but this machine has {} DLA cores".format(
                    self.dla_core, env.get(ENV_DLA_CORES) or 0
                )
            )
        if problems:
            raise ArtifactMismatchError(
                "engine built for {}; this machine has {} ({}); rebuild it here with `meanloc export engine`".format(
                    describe_target(built), describe_target(env), "; ".join(problems)
                )
            )


def describe_gpu(env: Mapping[str, Any]) -> Optional[str]:
    """'NVIDIA H100 (sm_90)', or None when no GPU was found."""
    if not env.get(ENV_GPU_NAME):
        return None
    capability = env.get(ENV_COMPUTE_CAPABILITY)
    if not capability:
        return str(env[ENV_GPU_NAME])
    return "{} (sm_{})".format(env[ENV_GPU_NAME], str(capability).replace(".", ""))


def describe_target(env: Mapping[str, Any]) -> str:
    trt = env.get(ENV_TENSORRT)
    gpu = describe_gpu(env)
    text = "TensorRT {}".format(trt) if trt else "no TensorRT"
    text += " on {}".format(gpu) if gpu else " and no GPU"
    if env.get(ENV_L4T):
        text += ", L4T {}".format(env[ENV_L4T])
    return text
