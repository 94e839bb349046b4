"""What this machine is, for `meanloc doctor` and for checking TensorRT engines before loading them.

A TensorRT plan only deserializes on the TensorRT version and GPU that built it, and TensorRT
cannot tell which ones those were before trying (NVIDIA/TensorRT#3073). So every engine gets a
JSON sidecar (`<engine>.json`, written by `meanloc export engine`) recording its build
environment, and the TensorRT backend compares it with `engine_environment()` first. This
module owns that sidecar schema; the builder (export/engine_build.py) records
`engine_sidecar_environment(engine_environment(), dla_core)`.

Every probe is optional: a missing package, tool or file yields None, never an exception, so the
doctor runs on a laptop without CUDA as well as on a Jetson. Never imports torch. Python 3.8
compatible.
"""

import os
import platform
import re
import subprocess
from typing import Any, Dict, List, Mapping, Optional, Tuple

from meanloc import __version__
from meanloc.errors import ArtifactMismatchError

from .artifacts import check_manifest_kind, read_json
from .cuda_memory import import_cudart

ENGINE_SIDECAR_KIND = "tensorrt-engine"
ENGINE_SIDECAR_SUFFIX = ".json"

# Sidecar fields (top level), beyond the common manifest ones (kind, format_version, meanloc_version):
#   "identity":      ModelIdentity.to_dict() of the model inside, precision = the engine's precision
#   "engine_sha256": sha256 of the raw plan file next to the sidecar
#   "environment":   engine_sidecar_environment(engine_environment(), dla_core) on the build machine
#   "precision", "profile" {"min","opt","max" batch}, "io", "onnx_sha256", "calibration_sha256",
#   "build_flags", "cache_key":  recorded by the builder, informative for the backend.
SIDECAR_IDENTITY = "identity"
SIDECAR_ENGINE_SHA256 = "engine_sha256"
SIDECAR_ENVIRONMENT = "environment"

# The environment fields a plan depends on (deployment.md §3, "cache key and metadata").
ENV_TENSORRT = "tensorrt_version"
ENV_CUDA_RUNTIME = "cuda_runtime_version"
ENV_GPU_NAME = "gpu_name"
ENV_COMPUTE_CAPABILITY = "compute_capability"
ENV_L4T = "l4t_release"
ENV_DLA_CORE = "dla_core"
ENGINE_ENVIRONMENT_KEYS = (ENV_TENSORRT, ENV_CUDA_RUNTIME, ENV_GPU_NAME, ENV_COMPUTE_CAPABILITY, ENV_L4T)

# L4T release -> JetPack (NVIDIA's JetPack archive; jetson_stats keeps the same table).
# Releases not listed fall back to the major.minor row of deployment.md §1.
JETPACK_BY_L4T = {
    "35.1.0": "5.0.2",
    "35.2.1": "5.1",
    "35.3.1": "5.1.1",
    "35.4.1": "5.1.2",
    "35.5.0": "5.1.3",
    "35.6.0": "5.1.4",
    "36.2.0": "6.0 DP",
    "36.3.0": "6.0",
    "36.4.0": "6.1",
    "36.4.3": "6.2",
    "36.4.4": "6.2.1",
}
JETPACK_BY_L4T_MINOR = {"35.2": "5.1", "35.3": "5.1.1", "35.4": "5.1.2", "35.5": "5.1.3", "36.3": "6.0", "36.4": "6.1/6.2"}

NV_TEGRA_RELEASE = "/etc/nv_tegra_release"
DEVICE_TREE_MODEL = "/proc/device-tree/model"


def engine_sidecar_path(engine_path: str) -> str:
    """`model.engine` -> `model.engine.json` (the suffix is appended, so `.plan` works too)."""
    return str(engine_path) + ENGINE_SIDECAR_SUFFIX


def engine_sidecar_environment(env: Mapping[str, Any], dla_core: Optional[int] = None) -> Dict[str, Any]:
    """The part of `engine_environment()` (or `describe_environment()`) an engine records in its sidecar."""
    recorded = {key: env.get(key) for key in ENGINE_ENVIRONMENT_KEYS}
    recorded[ENV_DLA_CORE] = dla_core
    return recorded


def load_engine_sidecar(engine_path: str) -> Dict[str, Any]:
    """Read and kind-check an engine's sidecar; one-line error if it is missing or foreign."""
    sidecar_path = engine_sidecar_path(engine_path)
    if not os.path.exists(sidecar_path):
        raise ArtifactMismatchError(
            "engine {} has no sidecar manifest {}; engines must be built with `meanloc export engine`".format(
                engine_path, sidecar_path
            )
        )
    sidecar = read_json(sidecar_path, "engine sidecar")
    check_manifest_kind(sidecar, ENGINE_SIDECAR_KIND, sidecar_path)
    for key in (SIDECAR_IDENTITY, SIDECAR_ENVIRONMENT):
        if not isinstance(sidecar.get(key), dict):
            raise ArtifactMismatchError("engine sidecar {} lacks the '{}' section".format(sidecar_path, key))
    return sidecar


def check_engine_sidecar(sidecar: Mapping[str, Any], env: Mapping[str, Any]) -> None:
    """Refuse an engine built for another TensorRT, GPU or L4T release than this machine's.

    `sidecar` is the whole sidecar manifest, `env` is `engine_environment()` or
    `describe_environment()`. Raises
    ArtifactMismatchError naming both sides and the fix.
    """
    built = sidecar.get(SIDECAR_ENVIRONMENT) or {}
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
                "compute capability {} vs {}".format(built.get(ENV_COMPUTE_CAPABILITY), env.get(ENV_COMPUTE_CAPABILITY))
            )
        if built.get(ENV_GPU_NAME) != env.get(ENV_GPU_NAME):
            problems.append("GPU '{}' vs '{}'".format(built.get(ENV_GPU_NAME), env.get(ENV_GPU_NAME)))
    if (built.get(ENV_L4T) or env.get(ENV_L4T)) and built.get(ENV_L4T) != env.get(ENV_L4T):
        problems.append("L4T {} vs {}".format(built.get(ENV_L4T) or "none", env.get(ENV_L4T) or "none"))
    dla_core = built.get(ENV_DLA_CORE)
    if dla_core is not None and int(dla_core) >= int(env.get("dla_cores") or 0):
        problems.append("DLA core {} requested but this machine has {} DLA cores".format(dla_core, env.get("dla_cores") or 0))
    if problems:
        raise ArtifactMismatchError(
            "engine built for {}; this machine has {} ({}); rebuild it here with `meanloc export engine`".format(
                _describe_target(built), _describe_target(env), "; ".join(problems)
            )
        )


def _describe_target(env: Mapping[str, Any]) -> str:
    trt = env.get(ENV_TENSORRT)
    gpu = _describe_gpu(env)
    text = "TensorRT {}".format(trt) if trt else "no TensorRT"
    text += " on {}".format(gpu) if gpu else " and no GPU"
    if env.get(ENV_L4T):
        text += ", L4T {}".format(env[ENV_L4T])
    return text


def describe_environment(probe_dla: bool = True) -> Dict[str, Any]:
    """Everything meanloc cares about on this machine; None wherever a probe finds nothing.

    `probe_dla=False` skips creating a TensorRT builder (a CUDA context) to count DLA cores.
    """
    env = {
        "meanloc_version": __version__,
        "python_version": platform.python_version(),
        "machine": platform.machine(),
        "system": platform.system(),
        "cpu_model": cpu_model(),
    }  # type: Dict[str, Any]
    env.update(engine_environment(probe_dla=probe_dla))
    env["jetson_model"] = jetson_model()
    env["jetpack_version"] = jetpack_from_l4t(env[ENV_L4T])
    env["onnxruntime_version"], env["onnxruntime_providers"] = _onnxruntime_info()
    env["numpy_version"] = module_version("numpy")
    env["opencv_version"], env["opencv_gstreamer"] = _opencv_info()
    env["pycuda_version"] = module_version("pycuda")
    env["cuda_python_version"] = distribution_version("cuda-python") or distribution_version("cuda-bindings")
    return env


def engine_environment(probe_dla: bool = False) -> Dict[str, Any]:
    """Only what a TensorRT plan depends on (GPU, CUDA, TensorRT, L4T, DLA cores): the engine
    loader's check, without importing onnxruntime or OpenCV."""
    env = _gpu_info()
    env["gpu"] = _describe_gpu(env)
    env[ENV_TENSORRT] = module_version("tensorrt")
    env["dla_cores"] = _dla_cores() if probe_dla and env[ENV_TENSORRT] else None
    env[ENV_L4T] = l4t_release()
    return env


def module_version(module_name: str) -> Optional[str]:
    """`module.__version__` if the module imports (any failure, not only ImportError: broken
    CUDA installs raise OSError or RuntimeError from their shared libraries)."""
    try:
        module = __import__(module_name)
    except Exception:
        return None
    return str(getattr(module, "__version__", "unknown"))


def distribution_version(name: str) -> Optional[str]:
    # Reads package metadata only, so it also works for packages we must not import (torch).
    try:
        from importlib import metadata
    except ImportError:  # pragma: no cover - Python < 3.8
        return None
    try:
        return metadata.version(name)
    except Exception:
        return None


def cpu_model() -> Optional[str]:
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as handle:
            text = handle.read()
    except OSError:
        return platform.processor() or None
    for key in ("model name", "Model", "Hardware", "cpu model"):
        match = re.search(r"^{}\s*:\s*(.+)$".format(re.escape(key)), text, re.MULTILINE)
        if match:
            return match.group(1).strip()
    return platform.processor() or None


def parse_nv_tegra_release(text: str) -> Optional[str]:
    """'# R35 (release), REVISION: 4.1, GCID: ...' -> '35.4.1'."""
    match = re.search(r"R(\d+)\s*\(release\),\s*REVISION:\s*(\d+)\.(\d+)", text)
    if not match:
        return None
    return "{}.{}.{}".format(*match.groups())


def l4t_release(path: str = NV_TEGRA_RELEASE) -> Optional[str]:
    try:
        with open(path, encoding="utf-8", errors="replace") as handle:
            return parse_nv_tegra_release(handle.read())
    except OSError:
        return None


def jetson_model(path: str = DEVICE_TREE_MODEL) -> Optional[str]:
    try:
        with open(path, "rb") as handle:
            model = handle.read().replace(b"\x00", b"").decode("utf-8", "replace").strip()
    except OSError:
        return None
    return model or None


def jetpack_from_l4t(release: Optional[str]) -> Optional[str]:
    if not release:
        return None
    if release in JETPACK_BY_L4T:
        return JETPACK_BY_L4T[release]
    minor = ".".join(release.split(".")[:2])
    return JETPACK_BY_L4T_MINOR.get(minor)


def _describe_gpu(env: Mapping[str, Any]) -> Optional[str]:
    """'NVIDIA H100 (sm_90)', or None when no GPU was found."""
    if not env.get(ENV_GPU_NAME):
        return None
    capability = env.get(ENV_COMPUTE_CAPABILITY)
    if not capability:
        return str(env[ENV_GPU_NAME])
    return "{} (sm_{})".format(env[ENV_GPU_NAME], str(capability).replace(".", ""))


def _format_cuda_version(value: int) -> str:
    """CUDA encodes versions as 1000*major + 10*minor (12060 -> '12.6')."""
    return "{}.{}".format(value // 1000, (value % 1000) // 10)


def _gpu_info() -> Dict[str, Any]:
    info = {
        ENV_GPU_NAME: None,
        ENV_COMPUTE_CAPABILITY: None,
        ENV_CUDA_RUNTIME: None,
        "cuda_driver_version": None,
        "gpu_probe": None,
    }  # type: Dict[str, Any]
    for probe in (_gpu_info_cuda_python, _gpu_info_pycuda, _gpu_info_nvidia_smi):
        try:
            found = probe()
        except Exception:  # a half-installed CUDA stack must not stop the doctor
            found = None
        if found:
            info.update(found)
            return info
    return info


def _gpu_info_cuda_python() -> Optional[Dict[str, Any]]:
    cudart = import_cudart()
    if cudart is None:
        return None
    success = cudart.cudaError_t.cudaSuccess
    err, count = cudart.cudaGetDeviceCount()
    if err != success or count < 1:
        return None
    err, props = cudart.cudaGetDeviceProperties(0)
    if err != success:
        return None
    name = props.name
    if isinstance(name, bytes):
        name = name.split(b"\x00", 1)[0].decode("utf-8", "replace")
    info = {
        ENV_GPU_NAME: str(name).strip(),
        ENV_COMPUTE_CAPABILITY: "{}.{}".format(props.major, props.minor),
        "gpu_probe": "cuda-python",
    }  # type: Dict[str, Any]
    err, runtime_version = cudart.cudaRuntimeGetVersion()
    if err == success:
        info[ENV_CUDA_RUNTIME] = _format_cuda_version(runtime_version)
    err, driver_version = cudart.cudaDriverGetVersion()
    if err == success:
        info["cuda_driver_version"] = _format_cuda_version(driver_version)
    return info


def _gpu_info_pycuda() -> Optional[Dict[str, Any]]:
    try:
        import pycuda.driver as cuda
    except ImportError:
        return None
    cuda.init()
    if cuda.Device.count() < 1:
        return None
    device = cuda.Device(0)
    major, minor = device.compute_capability()
    return {
        ENV_GPU_NAME: str(device.name()).strip(),
        ENV_COMPUTE_CAPABILITY: "{}.{}".format(major, minor),
        # pycuda reports the toolkit it was built with, which is what it runs against.
        ENV_CUDA_RUNTIME: ".".join(str(part) for part in cuda.get_version()[:2]),
        "cuda_driver_version": _format_cuda_version(cuda.get_driver_version()),
        "gpu_probe": "pycuda",
    }


def _gpu_info_nvidia_smi() -> Optional[Dict[str, Any]]:
    output = _run_quietly(
        ["nvidia-smi", "--query-gpu=name,compute_cap,driver_version", "--format=csv,noheader"]
    )
    if not output:
        return None
    fields = [field.strip() for field in output.splitlines()[0].split(",")]
    if len(fields) < 3 or not fields[0]:
        return None
    return {
        ENV_GPU_NAME: fields[0],
        ENV_COMPUTE_CAPABILITY: fields[1] or None,
        "cuda_driver_version": None,
        "nvidia_driver_version": fields[2],
        "gpu_probe": "nvidia-smi",
    }


def _run_quietly(command: List[str]) -> Optional[str]:
    try:
        completed = subprocess.run(
            command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, timeout=10, check=False
        )
    except (OSError, subprocess.SubprocessError):
        return None
    if completed.returncode != 0:
        return None
    return completed.stdout.decode("utf-8", "replace").strip()


def _dla_cores() -> Optional[int]:
    try:
        import tensorrt as trt

        builder = trt.Builder(trt.Logger(trt.Logger.ERROR))
        return int(builder.num_DLA_cores)
    except Exception:
        return None


def _onnxruntime_info() -> Tuple[Optional[str], Optional[List[str]]]:
    try:
        import onnxruntime
    except Exception:
        return None, None
    return str(onnxruntime.__version__), list(onnxruntime.get_available_providers())


def _opencv_info() -> Tuple[Optional[str], Optional[bool]]:
    try:
        import cv2
    except Exception:
        return None, None
    return str(cv2.__version__), opencv_has_gstreamer(cv2.getBuildInformation())


def opencv_has_gstreamer(build_information: str) -> bool:
    """True if OpenCV's build information lists GStreamer as 'YES' (JetPack's OpenCV does;
    PyPI's opencv-python does not, which breaks the Jetson CSI camera pipeline)."""
    match = re.search(r"^\s*GStreamer:\s*(\S+)", build_information, re.MULTILINE)
    return bool(match) and match.group(1).upper() == "YES"


def tensorrt_gpu_unavailable_reason() -> Optional[str]:
    """Why TensorRT engines cannot be built or run here, or None when TensorRT and a CUDA GPU answer.

    Shared by the demo (builds engines only when this is None) and the `gpu` test marker.
    """
    import importlib.util

    if importlib.util.find_spec("tensorrt") is None:
        return "TensorRT is not installed"
    try:
        env = engine_environment(probe_dla=False)
    except Exception as exc:  # any failure to probe means: no usable GPU here
        return "cannot probe CUDA ({})".format(exc)
    if not env.get("gpu"):
        return "no CUDA GPU found"
    return None
