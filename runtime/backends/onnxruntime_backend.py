"""ONNX Runtime backend: CPU, CUDA and TensorRT execution providers.

The model identity comes from the ONNX metadata props written by `meanloc export onnx`, read
through `InferenceSession.get_modelmeta()`, so the `onnx` package is not needed onboard.
`onnxruntime` and `onnxruntime-gpu` install the same module with different providers, so what
this machine can do is asked from `get_available_providers()` at run time, and a session is
checked afterwards: ONNX Runtime silently falls back to CPU when a GPU provider fails to load
(missing CUDA/cuDNN/TensorRT libraries). Never imports torch. Python 3.8 compatible.
"""

import dataclasses
import os
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from meanloc.errors import ArtifactMismatchError, MeanlocError, MissingDependencyError

from ..artifacts import ensure_writable_dir, sha256_file
from ..identity import ModelIdentity
from ..onnx_contract import INPUT_NAME
from ..trt_env import module_version
from .base import EmbeddingBackend, l2_normalise, pad_batch

DEFAULT_MAX_BATCH = 32

# Short names users type -> ONNX Runtime provider names, best first (the automatic choice order).
PROVIDER_NAMES = {
    "tensorrt": "TensorrtExecutionProvider",
    "cuda": "CUDAExecutionProvider",
    "cpu": "CPUExecutionProvider",
}
PROVIDER_INSTALL_HINTS = {
    "tensorrt": "needs onnxruntime-gpu built with TensorRT plus TensorRT's libraries (on Jetson: a Jetson Zoo / "
    "jetson-ai-lab wheel); or build an engine with `meanloc export engine` and use the tensorrt backend",
    "cuda": "needs onnxruntime-gpu (uninstall onnxruntime first) and CUDA/cuDNN libraries "
    "(on Jetson: a Jetson Zoo / jetson-ai-lab wheel)",
    "cpu": "pip install onnxruntime",
}


@dataclasses.dataclass(frozen=True)
class TensorRTProviderSettings:
    """Options for ONNX Runtime's TensorRT execution provider (`trt_*` provider options)."""

    fp16: bool = False
    int8: bool = False
    # TensorRT builds an engine on first use; caching it makes later sessions start in seconds.
    cache_dir: Optional[str] = None
    calibration_table: Optional[str] = None  # for non-Q/DQ INT8 models only
    workspace_bytes: Optional[int] = None
    builder_optimization_level: Optional[int] = None
    # Keep LayerNorm in FP32 under FP16 (its FP16 overflow is a known ConvNeXt accuracy trap).
    layer_norm_fp32_fallback: bool = True
    dla_core: Optional[int] = None


def default_trt_cache_dir(model_sha256: str, ort_version: str, settings: TensorRTProviderSettings) -> str:
    """One folder per model, ONNX Runtime/TensorRT version and precision: ORT's docs ask to clear
    cached engines whenever one of those changes, and a fresh folder is that, without deleting."""
    precision = "int8" if settings.int8 else "fp16" if settings.fp16 else "fp32"
    name = "{}-ort{}-trt{}-{}".format(model_sha256[:16], ort_version, module_version("tensorrt") or "unknown", precision)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "meanloc", "ort-tensorrt", name)


def tensorrt_provider_options(
    settings: TensorRTProviderSettings, input_size: int, max_batch: int, cache_dir: str
) -> Dict[str, str]:
    """The provider-options dict for `TensorrtExecutionProvider` (ONNX Runtime wants strings).

    `cache_dir` is used when `settings.cache_dir` is not set."""
    shape = "{}:{{}}x3x{s}x{s}".format(INPUT_NAME, s=input_size)
    cache_dir = settings.cache_dir or cache_dir
    options = {
        "trt_engine_cache_enable": "True",
        "trt_engine_cache_path": cache_dir,
        "trt_timing_cache_enable": "True",
        "trt_timing_cache_path": cache_dir,
        # One profile covering every batch the backend will send, so no rebuild at run time, tuned
        # for batch 1 (the onboard loop's batch; "opt" is the shape kernels are chosen for).
        "trt_profile_min_shapes": shape.format(1),
        "trt_profile_opt_shapes": shape.format(1),
        "trt_profile_max_shapes": shape.format(max_batch),
        "trt_fp16_enable": str(bool(settings.fp16)),
        "trt_int8_enable": str(bool(settings.int8)),
    }
    if settings.fp16 and settings.layer_norm_fp32_fallback:
        options["trt_layer_norm_fp32_fallback"] = "True"
    if settings.int8 and settings.calibration_table:
        options["trt_int8_calibration_table_name"] = settings.calibration_table
        # Our calibration caches are in TensorRT's own text format (runtime/calibration_cache.py).
        options["trt_int8_use_native_calibration_table"] = "True"
    if settings.workspace_bytes:
        options["trt_max_workspace_size"] = str(int(settings.workspace_bytes))
    if settings.builder_optimization_level is not None:
        options["trt_builder_optimization_level"] = str(int(settings.builder_optimization_level))
    if settings.dla_core is not None:
        options["trt_dla_enable"] = "True"
        options["trt_dla_core"] = str(int(settings.dla_core))
    return options


def import_onnxruntime() -> Any:
    try:
        import onnxruntime
    except ImportError:
        raise MissingDependencyError(
            "the onnxruntime backend needs ONNX Runtime: pip install onnxruntime (CPU) or onnxruntime-gpu"
        ) from None
    return onnxruntime


def normalise_provider_names(requested: Sequence[str]) -> List[str]:
    """['cuda', 'CPUExecutionProvider'] -> ['cuda', 'cpu']; one-line error for unknown names."""
    by_full_name = {full: short for short, full in PROVIDER_NAMES.items()}
    names = []  # type: List[str]
    for name in requested:
        key = str(name).strip()
        short = key.lower() if key.lower() in PROVIDER_NAMES else by_full_name.get(key)
        if short is None:
            raise MeanlocError(
                "unknown execution provider '{}' (choose from {})".format(name, ", ".join(PROVIDER_NAMES))
            )
        if short not in names:
            names.append(short)
    return names


def best_available_providers(available: Sequence[str]) -> List[str]:
    """The automatic choice: the best provider ONNX Runtime offers here (TensorRT > CUDA > CPU)."""
    for short, full in PROVIDER_NAMES.items():
        if full in available:
            return [short]
    return ["cpu"]


def resolve_providers(requested: Optional[Sequence[str]], available: Sequence[str]) -> List[str]:
    """Short provider names to use, in priority order, each checked against what is available.

    GPU providers get the next ones as fallbacks for nodes they cannot run (TensorRT -> CUDA -> CPU).
    """
    names = best_available_providers(available) if not requested else normalise_provider_names(requested)
    for short in names:
        if PROVIDER_NAMES[short] not in available:
            raise MeanlocError(
                "execution provider '{}' was requested but this ONNX Runtime offers only {} ({})".format(
                    short, ", ".join(available) or "nothing", PROVIDER_INSTALL_HINTS[short]
                )
            )
    order = list(PROVIDER_NAMES)
    fallbacks = [s for s in order[order.index(names[-1]) + 1 :] if PROVIDER_NAMES[s] in available]
    return names + [s for s in fallbacks if s not in names]


class OnnxRuntimeBackend(EmbeddingBackend):
    """`embed` over an exported meanloc ONNX model with ONNX Runtime."""

    name = "onnxruntime"

    def __init__(
        self,
        path: str,
        providers: Optional[Sequence[str]] = None,
        threads: Optional[int] = None,
        max_batch: Optional[int] = None,
        tensorrt: Optional[TensorRTProviderSettings] = None,
        device_id: int = 0,
        io_binding: bool = True,
    ) -> None:
        ort = import_onnxruntime()
        self.path = str(path)
        if not os.path.isfile(self.path):
            raise MeanlocError("ONNX model not found: {}".format(self.path))
        self.providers = resolve_providers(providers, ort.get_available_providers())
        self._sha256 = sha256_file(self.path)
        requested_batch = int(max_batch) if max_batch else DEFAULT_MAX_BATCH
        if requested_batch < 1:
            raise MeanlocError("max_batch must be >= 1, got {}".format(max_batch))
        self._trt_settings = tensorrt or TensorRTProviderSettings()
        self._session = self._create_session(ort, threads, requested_batch, device_id)
        self._check_session_providers()
        self._input_name, fixed_batch, self._output_name = _check_io(self._session, self.path)
        self.identity = self._read_identity()
        _check_input_size(self._session, self.identity, self.path)
        # A model exported with a fixed batch takes exactly that many images: pad smaller chunks.
        self._fixed_batch = fixed_batch
        self.max_batch = fixed_batch or requested_batch
        self._device_id = int(device_id)
        self._binding = self._session.io_binding() if io_binding else None
        # Outputs go straight into a host buffer only when the model declares them as (N, D)
        # float32; anything else is left to ONNX Runtime and refused with a clear error below.
        self._host_outputs = {} if _declares_embedding_output(self._session, self.embed_dim) else None

    def _create_session(self, ort: Any, threads: Optional[int], max_batch: int, device_id: int) -> Any:
        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = int(threads)
            options.inter_op_num_threads = 1
        # Idle intra-op threads would otherwise spin for a while after each run and take the
        # cores the loop's own CPU work (decode, rectification, the fine stage) needs next.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        provider_list = []  # type: List[Tuple[str, Dict[str, str]]]
        for short in self.providers:
            provider_options = {}  # type: Dict[str, str]
            if short == "tensorrt":
                provider_options = tensorrt_provider_options(
                    self._trt_settings,
                    self._peek_input_size(ort),
                    max_batch,
                    default_trt_cache_dir(self._sha256, ort.__version__, self._trt_settings),
                )
                provider_options["device_id"] = str(device_id)
                ensure_writable_dir(provider_options["trt_engine_cache_path"])
            elif short == "cuda":
                provider_options = {"device_id": str(device_id)}
            provider_list.append((PROVIDER_NAMES[short], provider_options))
        return _load_session(ort, self.path, provider_list, options)

    def _peek_input_size(self, ort: Any) -> int:
        """The input size for the TensorRT provider's profile, read before the real session exists."""
        props = _custom_metadata(_load_session(ort, self.path, ["CPUExecutionProvider"]))
        return ModelIdentity.from_onnx_metadata(props, self.path).preprocess.size

    def _check_session_providers(self) -> None:
        active = self._session.get_providers()
        wanted = PROVIDER_NAMES[self.providers[0]]
        if wanted not in active:
            raise MeanlocError(
                "ONNX Runtime could not start the {} execution provider (active: {}); its libraries are "
                "probably missing, see the ONNX Runtime messages above ({})".format(
                    self.providers[0], ", ".join(active), PROVIDER_INSTALL_HINTS[self.providers[0]]
                )
            )

    def _read_identity(self) -> ModelIdentity:
        identity = ModelIdentity.from_onnx_metadata(
            _custom_metadata(self._session), self.path, artifact_sha256=self._sha256
        )
        if self.providers[0] == "tensorrt" and identity.precision == "fp32":
            if self._trt_settings.int8:
                return dataclasses.replace(identity, precision="int8")
            if self._trt_settings.fp16:
                return dataclasses.replace(identity, precision="fp16")
        return identity

    def _embed_chunk(self, batch: np.ndarray) -> np.ndarray:
        count = len(batch)
        if self._fixed_batch:
            batch = pad_batch(batch, self._fixed_batch)
        output = self._run(batch)
        if output.ndim != 2 or output.shape[1] != self.embed_dim:
            raise ArtifactMismatchError(
                "{} produced embeddings of shape {}, but its metadata says dimension {}".format(
                    self.path, output.shape, self.embed_dim
                )
            )
        # Host-side, float32 renormalisation: an FP16 graph may have overflowed in its own L2 norm.
        return l2_normalise(output[:count])

    def _run(self, batch: np.ndarray) -> np.ndarray:
        """One inference. With I/O binding the input is bound where it lies (host memory, no copy
        on the CPU provider) and the output either to a host buffer this backend keeps per batch
        size (CPU: ONNX Runtime allocates nothing per call) or to the GPU (CUDA/TensorRT
        providers: one device-to-host copy of the embeddings). The host buffer is reused: callers
        copy (`l2_normalise` does)."""
        if self._binding is None:
            (output,) = self._session.run([self._output_name], {self._input_name: batch})
            return np.asarray(output)
        binding = self._binding
        binding.bind_cpu_input(self._input_name, batch)
        if self.providers[0] != "cpu" or self._host_outputs is None:
            if self.providers[0] != "cpu":
                binding.bind_output(self._output_name, "cuda", self._device_id)
            else:
                binding.bind_output(self._output_name, "cpu")
            self._session.run_with_iobinding(binding)
            return np.asarray(binding.copy_outputs_to_cpu()[0])
        output = self._host_outputs.get(len(batch))
        if output is None:
            output = self._host_outputs[len(batch)] = np.empty((len(batch), self.embed_dim), dtype=np.float32)
        binding.bind_output(self._output_name, "cpu", 0, np.float32, list(output.shape), output.ctypes.data)
        self._session.run_with_iobinding(binding)
        return output

    def describe(self) -> Dict[str, Any]:
        info = super().describe()
        info.update({"path": self.path, "providers": self._session.get_providers(), "io_binding": self._binding is not None})
        return info

    def close(self) -> None:
        self._binding = None
        self._session = None


def _load_session(ort: Any, path: str, providers: Sequence[Any], options: Any = None) -> Any:
    try:
        return ort.InferenceSession(path, sess_options=options, providers=list(providers))
    except Exception as exc:  # ORT raises its own exception types for corrupt or unsupported models
        raise MeanlocError("cannot load ONNX model {}: {}".format(path, _first_line(exc))) from None


def _custom_metadata(session: Any) -> Dict[str, str]:
    return dict(session.get_modelmeta().custom_metadata_map or {})


def _check_io(session: Any, path: str) -> Tuple[str, Optional[int], str]:
    """Refuse ONNX models that are not a meanloc embedder: one input `images` of rank 4, one output.

    Returns (input name, fixed batch size or None when dynamic, output name).
    """
    inputs = session.get_inputs()
    outputs = session.get_outputs()
    if len(inputs) != 1 or inputs[0].name != INPUT_NAME:
        raise ArtifactMismatchError(
            "{} is not a meanloc embedder: expected one input named '{}', found {}".format(
                path, INPUT_NAME, [i.name for i in inputs]
            )
        )
    shape = list(inputs[0].shape)
    if len(shape) != 4:
        raise ArtifactMismatchError(
            "{} is not a meanloc embedder: input '{}' has rank {} ({}), expected (N, 3, S, S)".format(
                path, INPUT_NAME, len(shape), shape
            )
        )
    if isinstance(shape[1], int) and shape[1] != 3:
        raise ArtifactMismatchError("{}: input '{}' has {} channels, expected 3".format(path, INPUT_NAME, shape[1]))
    if not outputs:
        raise ArtifactMismatchError("{} has no outputs".format(path))
    fixed_batch = shape[0] if isinstance(shape[0], int) and shape[0] > 0 else None
    return inputs[0].name, fixed_batch, outputs[0].name


def _declares_embedding_output(session: Any, embed_dim: int) -> bool:
    output = session.get_outputs()[0]
    shape = list(output.shape or [])
    return (
        output.type == "tensor(float)"
        and len(shape) == 2
        and (not isinstance(shape[1], int) or shape[1] == embed_dim)
    )


def _check_input_size(session: Any, identity: ModelIdentity, path: str) -> None:
    shape = list(session.get_inputs()[0].shape)
    size = identity.preprocess.size
    for dim in shape[2:]:
        if isinstance(dim, int) and dim != size:
            raise ArtifactMismatchError(
                "{}: input is {}x{} but its metadata says preprocessing at {} px".format(path, shape[2], shape[3], size)
            )


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0]
