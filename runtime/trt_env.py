"""What this machine is, for `meanloc doctor` and for checking TensorRT engines before loading them.

`engine_environment()` describes what a TensorRT plan depends on (TensorRT, CUDA, GPU, L4T, DLA
cores); the engine builder records it in the sidecar and the backend compares it
(runtime/engine_sidecar.py). The GPU comes from `cuda_device.probe_gpu()`, the same CUDA bindings
the backend runs on, and from nothing else, so a build and a run describe the GPU alike.
`describe_environment()` adds everything else the doctor shows.

Every probe is optional: a missing package, tool or file yields None, never an exception, so the
doctor runs on a laptop without CUDA as well as on a Jetson. Never imports torch. Python 3.8
compatible.
"""

import platform
import re
import subprocess
import sys
from typing import Any, Dict, List, Optional, Tuple

from meanloc import __version__

from .cuda_device import CUDA_DRIVER_VERSION, CUDA_RUNTIME_VERSION, probe_gpu
from .engine_sidecar import (
    ENV_COMPUTE_CAPABILITY,
    ENV_DLA_CORES,
    ENV_GPU_NAME,
    ENV_L4T,
    ENV_TENSORRT,
    describe_gpu,
)

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
    if env[ENV_GPU_NAME] is None:
        # Shown by the doctor only: without pycuda or cuda-python no engine can be built or run here.
        env["nvidia_smi"] = _nvidia_smi()
    env["jetson_model"] = jetson_model()
    env["jetpack_version"] = jetpack_from_l4t(env[ENV_L4T])
    env["onnxruntime_version"], env["onnxruntime_providers"] = _onnxruntime_info()
    env["numpy_version"] = module_version("numpy")
    env["opencv_version"], env["opencv_gstreamer"] = _opencv_info()
    env["pycuda_version"] = module_version("pycuda")
    env["polygraphy_version"] = module_version("polygraphy")  # builds engines (export/trt_build.py)
    env["cuda_python_version"] = distribution_version("cuda-python") or distribution_version("cuda-bindings")
    return env


def engine_environment(probe_dla: bool = False) -> Dict[str, Any]:
    """Only what a TensorRT plan depends on (GPU, CUDA, TensorRT, L4T, DLA cores): the engine
    builder's record and the engine loader's check, without importing onnxruntime or OpenCV."""
    env = {
        ENV_GPU_NAME: None,
        ENV_COMPUTE_CAPABILITY: None,
        CUDA_RUNTIME_VERSION: None,
        CUDA_DRIVER_VERSION: None,
        "gpu_probe": None,
    }  # type: Dict[str, Any]
    env.update(probe_gpu() or {})
    env["gpu"] = describe_gpu(env)
    env[ENV_TENSORRT] = module_version("tensorrt")
    env[ENV_DLA_CORES] = _dla_cores() if probe_dla and env[ENV_TENSORRT] else None
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


def _nvidia_smi() -> Optional[Dict[str, Any]]:
    output = _run_quietly(
        ["nvidia-smi", "--query-gpu=name,compute_cap,driver_version", "--format=csv,noheader"]
    )
    if not output:
        return None
    fields = [field.strip() for field in output.splitlines()[0].split(",")]
    if len(fields) < 3 or not fields[0]:
        return None
    return {"gpu_name": fields[0], "compute_capability": fields[1] or None, "driver_version": fields[2]}


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
    from .trt_api import import_tensorrt, tensorrt_logger

    try:
        trt = import_tensorrt()
        return int(trt.Builder(tensorrt_logger(trt)).num_DLA_cores)
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

    from meanloc.errors import MeanlocError

    from .trt_api import check_supported_version

    if "tensorrt" not in sys.modules and importlib.util.find_spec("tensorrt") is None:
        return "TensorRT is not installed"
    try:
        env = engine_environment(probe_dla=False)
    except Exception as exc:  # any failure to probe means: no usable GPU here
        return "cannot probe CUDA ({})".format(exc)
    if env.get(ENV_TENSORRT) is None:
        return "TensorRT does not import"
    try:
        check_supported_version(env[ENV_TENSORRT])
    except MeanlocError as exc:
        return str(exc)
    if not env.get("gpu"):
        return "no CUDA GPU found through pycuda or cuda-python"
    return None
