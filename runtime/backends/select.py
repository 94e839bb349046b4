"""Pick and open the backend for a model file, and say which backends this machine has.

The file type decides the family (`.engine` -> TensorRT, `.onnx` -> ONNX Runtime, checkpoints ->
PyTorch); within ONNX Runtime the best available execution provider is chosen (TensorRT EP >
CUDA EP > CPU). The PyTorch reference lives in training/ and is found through the
`meanloc.backends` entry point (pyproject.toml), and availability is probed from package metadata
only, so this module never imports torch and is safe onboard. Python 3.8 compatible.
"""

import os
from typing import Any, Dict, List, Optional, Sequence

from meanloc.errors import MeanlocError, MissingDependencyError

from .base import BACKEND_NAMES, EmbeddingBackend

ENGINE_SUFFIXES = (".engine", ".plan", ".trt")
ONNX_SUFFIXES = (".onnx",)
CHECKPOINT_SUFFIXES = (".pt", ".pth", ".ckpt", ".safetensors")
BACKEND_FOR_SUFFIXES = (
    (ENGINE_SUFFIXES, "tensorrt"),
    (ONNX_SUFFIXES, "onnxruntime"),
    (CHECKPOINT_SUFFIXES, "torch"),
)
INSTALL_HINTS = {
    "tensorrt": "Jetson: sudo apt install python3-libnvinfer + pip install pycuda (or cuda-python); "
    "x86: pip install 'tensorrt>=10,<11' 'cuda-python>=12.6,<13'",
    "onnxruntime": "pip install onnxruntime (CPU) or onnxruntime-gpu (CUDA/TensorRT providers; never both)",
    "torch": "pip install 'meanloc[train]' (only needed to run checkpoints directly)",
}
# Backends above runtime/ (the PyTorch reference, training/torch_backend.py) register here.
BACKEND_ENTRY_POINTS = "meanloc.backends"


def backend_for_path(model_path: str) -> str:
    """The backend family a model file needs, from its suffix."""
    lowered = str(model_path).lower()
    for suffixes, backend in BACKEND_FOR_SUFFIXES:
        if lowered.endswith(suffixes):
            return backend
    known = ", ".join(s for suffixes, _ in BACKEND_FOR_SUFFIXES for s in suffixes)
    raise MeanlocError("don't know how to run {} (expected one of: {})".format(model_path, known))


def open_backend(
    model_path: str,
    backend: str = "auto",
    providers: Optional[Sequence[str]] = None,
    threads: Optional[int] = None,
    max_batch: Optional[int] = None,
    **options: Any
) -> EmbeddingBackend:
    """Open `model_path` with the backend its type needs.

    `backend` may name that family explicitly ("tensorrt", "onnxruntime", "torch"); `providers`
    (ONNX Runtime only) picks execution providers, default: the best available. Extra `options`
    go to the backend class (e.g. `tensorrt=TensorRTProviderSettings(fp16=True)` for ORT,
    `device="cuda"` for torch, `memory=` for TensorRT).
    """
    model_path = str(model_path)
    needed = backend_for_path(model_path)
    if backend not in ("auto", needed):
        if backend not in BACKEND_NAMES:
            raise MeanlocError("unknown backend '{}' (choose auto or one of {})".format(backend, ", ".join(BACKEND_NAMES)))
        raise MeanlocError(
            "{} needs the {} backend, not {}{}".format(
                model_path,
                needed,
                backend,
                " (for ONNX Runtime's TensorRT provider use providers=['tensorrt']; for a native engine "
                "run `meanloc export engine`)" if needed == "onnxruntime" and backend == "tensorrt" else "",
            )
        )
    if not os.path.isfile(model_path):
        raise MeanlocError("model not found: {}".format(model_path))
    if providers and needed != "onnxruntime":
        raise MeanlocError("execution providers only apply to ONNX models, not {}".format(model_path))

    if needed == "tensorrt":
        from .tensorrt_backend import TensorRTBackend

        return TensorRTBackend(model_path, max_batch=max_batch, **options)
    if needed == "onnxruntime":
        from .onnxruntime_backend import OnnxRuntimeBackend

        return OnnxRuntimeBackend(model_path, providers=providers, threads=threads, max_batch=max_batch, **options)
    return _registered_backend(needed)(model_path, max_batch=max_batch, threads=threads, **options)


def _registered_backend(name: str) -> Any:
    """The backend class registered under `name` in the `meanloc.backends` entry points."""
    from importlib.metadata import entry_points

    found = entry_points()
    group = found.select(group=BACKEND_ENTRY_POINTS) if hasattr(found, "select") else found.get(BACKEND_ENTRY_POINTS, ())
    for entry in group:
        if entry.name == name:
            try:
                return entry.load()
            except ImportError as exc:
                raise MissingDependencyError("the {} backend cannot be imported ({}): {}".format(
                    name, exc, INSTALL_HINTS[name])) from None
    raise MissingDependencyError("no {} backend is installed: {}".format(name, INSTALL_HINTS[name]))


def available_backends() -> List[Dict[str, Any]]:
    """One entry per backend: name, available, version, detail, install hint (when missing).

    Cheap and side-effect free apart from importing tensorrt/onnxruntime; never imports torch.
    """
    from ..cuda_device import available_cuda_libraries
    from ..trt_env import distribution_version, module_version

    entries = []  # type: List[Dict[str, Any]]

    from ..trt_api import check_supported_version

    trt_version = module_version("tensorrt")
    cuda_libraries = available_cuda_libraries()
    missing = [] if trt_version else ["tensorrt"]
    if trt_version:
        try:
            check_supported_version(trt_version)
        except MeanlocError:
            missing.append("tensorrt 8.5-10.x (this is {})".format(trt_version))
    if not cuda_libraries:
        missing.append("pycuda or cuda-python")
    entries.append(
        _entry(
            "tensorrt",
            not missing,
            trt_version,
            "CUDA binding: {}".format(", ".join(cuda_libraries)) if cuda_libraries else None,
            missing,
        )
    )

    ort_version = module_version("onnxruntime")
    providers = None  # type: Optional[List[str]]
    if ort_version:
        import onnxruntime

        providers = list(onnxruntime.get_available_providers())
    entries.append(
        _entry(
            "onnxruntime",
            ort_version is not None,
            ort_version,
            "providers: {}".format(", ".join(providers)) if providers else None,
            [] if ort_version else ["onnxruntime"],
        )
    )

    # Only package metadata: importing torch onboard is exactly what runtime/ must never do.
    torch_version = distribution_version("torch")
    entries.append(
        _entry("torch", torch_version is not None, torch_version, "reference for checkpoints", [] if torch_version else ["torch"])
    )
    return entries


def _entry(name: str, available: bool, version: Optional[str], detail: Optional[str], missing: List[str]) -> Dict[str, Any]:
    entry = {"name": name, "available": available, "version": version, "detail": detail}  # type: Dict[str, Any]
    if not available:
        entry["missing"] = missing
        entry["install_hint"] = INSTALL_HINTS[name]
    return entry


def best_backend_for(model_path: str) -> Dict[str, Any]:
    """What `open_backend(model_path)` would use here, without opening anything."""
    needed = backend_for_path(model_path)
    entry = {e["name"]: e for e in available_backends()}[needed]
    choice = {"backend": needed, "available": entry["available"]}  # type: Dict[str, Any]
    if needed == "onnxruntime" and entry["available"]:
        import onnxruntime

        from .onnxruntime_backend import best_available_providers

        choice["providers"] = best_available_providers(onnxruntime.get_available_providers())
    return choice
