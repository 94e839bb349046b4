"""TensorRT's INT8 calibration cache: text format, writer, reader, which tensors it must cover, manifest.

`meanloc calibrate` writes it, the engine builder (`meanloc export engine`) reads it: the artifact
contract between the two lives here, below both.

A Jetson builds an implicit-INT8 engine from this cache without recalibrating (deployment.md §5.2,
route C). The format, as TensorRT writes it and ONNX Runtime's `ReadDynamicRange` decodes it:

    TRT-<version code>-<algorithm>
    <tensor name>: <8 hex digits>

where the hex digits are the big-endian float32 bits of scale = amax / 127 and the version code is
major*1000+minor*100+patch on TensorRT 8.x and major*10000+minor*100+patch from 10.x on
(8.5.2 -> 8502, 10.3.0 -> 100300). TensorRT silently ignores a cache whose header does not match
it (NVIDIA/TensorRT#1378), so the header is chosen for the target TensorRT, not the one here.

Read onboard by the engine builder: Python 3.8 compatible, no torch/onnx imports (the graph
walkers take any ONNX-like model: an `onnx.ModelProto` or `runtime.onnx_file`'s reader).
"""

import math
import re
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Iterable, Mapping, Optional, Set, Tuple, Union

from meanloc.errors import ArtifactMismatchError, MeanlocError
from meanloc.runtime.artifacts import (
    atomic_write_json,
    atomic_write_text,
    check_manifest_kind,
    new_manifest,
    read_json,
    sha256_file,
)

PathLike = Union[str, Path]

CACHE_MANIFEST_KIND = "calibration-cache"
ENTROPY_ALGORITHM = "EntropyCalibration2"
MINMAX_ALGORITHM = "MinMaxCalibration"
# Algorithm names TensorRT puts in cache headers, one per calibrator class.
KNOWN_ALGORITHMS = (ENTROPY_ALGORITHM, MINMAX_ALGORITHM, "EntropyCalibration", "LegacyCalibration")
INT8_MAX = 127.0
# A tensor that was constantly zero during calibration still needs a usable (non-zero) scale.
MIN_SCALE = 1e-8

# Short names on the CLI -> the TensorRT release each JetPack ships (deployment.md §1).
TRT_VERSION_ALIASES = {"8.5": "8.5.2", "8.6": "8.6.2", "10.3": "10.3.0"}
_HEADER = re.compile(r"^TRT-(\d+)-(\w+)$")
_ENTRY = re.compile(r"^(.+): ([0-9a-fA-F]{8})$")
# Tensors TensorRT names itself. A cache TensorRT writes on the device lists them next to the
# ONNX value names: "(Unnamed Layer* 139) [Constant]_output" (NVIDIA/TensorRT#3131, #3659,
# ultralytics#10165), parser helpers such as "ONNXTRT_Broadcast_97_output", and ONNX names with a
# suffix, "/embeddings/Constant_2_output_0_output" (#4058) or a uniquifying "_1".
_UNNAMED_LAYER = re.compile(r"^\(Unnamed Layer\* \d+\) \[[^\]]+\]_output(_\d+)?$")
_PARSER_HELPER = "ONNXTRT_"
_DERIVED_SUFFIX = re.compile(r"^(.+)_(output|\d+)$")
# The layers TensorRT runs in INT8 and whose inputs/outputs therefore need a scale.
INT8_OP_TYPES = ("Conv", "MatMul", "Gemm")


def parse_trt_version(version: str) -> Tuple[int, int, int]:
    """'10.3', '8.6.2' or a full `tensorrt.__version__` such as '10.3.0.26' -> (major, minor, patch)."""
    text = TRT_VERSION_ALIASES.get(str(version).strip(), str(version).strip())
    parts = text.split(".")
    try:
        numbers = [int(p) for p in parts[:3]]
    except ValueError:
        numbers = []
    if len(numbers) < 2 or not 8 <= numbers[0] <= 10:
        raise MeanlocError(
            "unsupported TensorRT version '{}' for a calibration cache (use 8.5, 8.6, 10.3 or a full "
            "8.x/10.x version; TensorRT 11 has no implicit INT8)".format(version)
        )
    major, minor = numbers[0], numbers[1]
    patch = numbers[2] if len(numbers) > 2 else 0
    return major, minor, patch


def trt_version_code(version: str) -> int:
    """NV_TENSORRT_VERSION as it appears in cache headers."""
    major, minor, patch = parse_trt_version(version)
    base = 10000 if major >= 10 else 1000
    return major * base + minor * 100 + patch


def cache_header(version: str, algorithm: str = ENTROPY_ALGORITHM) -> str:
    if algorithm not in KNOWN_ALGORITHMS:
        raise MeanlocError(
            "unknown calibration algorithm '{}' (known: {})".format(algorithm, ", ".join(KNOWN_ALGORITHMS))
        )
    return "TRT-{}-{}".format(trt_version_code(version), algorithm)


def scale_to_hex(scale: float) -> str:
    return struct.pack(">f", scale).hex()


def hex_to_scale(text: str) -> float:
    return struct.unpack(">f", bytes.fromhex(text))[0]


def amax_to_scale(amax: float) -> float:
    return max(float(amax) / INT8_MAX, MIN_SCALE)


@dataclass(frozen=True)
class CalibrationCache:
    """A parsed cache: header fields and per-tensor scales (amax / 127)."""

    version_code: int
    algorithm: str
    scales: Dict[str, float]

    @property
    def header(self) -> str:
        return "TRT-{}-{}".format(self.version_code, self.algorithm)

    def amax(self) -> Dict[str, float]:
        return {name: scale * INT8_MAX for name, scale in self.scales.items()}

    def to_text(self) -> str:
        lines = [self.header]
        lines.extend(
            "{}: {}".format(name, scale_to_hex(scale)) for name, scale in sorted(self.scales.items())
        )
        return "\n".join(lines) + "\n"


def build_cache(
    amax: Mapping[str, float], version: str, algorithm: str = ENTROPY_ALGORITHM
) -> CalibrationCache:
    """Per-tensor amax (max |value| seen in calibration) -> cache for TensorRT `version`."""
    if not amax:
        raise MeanlocError("no tensor ranges to write into a calibration cache")
    scales = {}
    for name, value in amax.items():
        value = float(value)
        if not math.isfinite(value) or value < 0:
            raise MeanlocError(
                "tensor '{}' has an invalid calibration range {} (NaN/inf in the model?)".format(name, value)
            )
        if ":" in name or "\n" in name:
            raise MeanlocError(
                "tensor name {!r} cannot be stored in a TensorRT calibration cache".format(name)
            )
        # Round through float32 so that what the reader returns is exactly what was written.
        scales[name] = struct.unpack(">f", struct.pack(">f", amax_to_scale(value)))[0]
    header = cache_header(version, algorithm)
    return CalibrationCache(int(header.split("-")[1]), algorithm, scales)


def parse_calibration_cache(data: bytes, source: str) -> CalibrationCache:
    try:
        text = data.decode("ascii")
    except UnicodeDecodeError:
        raise MeanlocError("{} is not a TensorRT calibration cache (not ASCII text)".format(source)) from None
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    header = _HEADER.match(lines[0]) if lines else None
    if header is None:
        raise MeanlocError(
            "{} is not a TensorRT calibration cache: the first line must look like TRT-100300-EntropyCalibration2".format(
                source
            )
        )
    scales = {}  # type: Dict[str, float]
    for number, line in enumerate(lines[1:], start=2):
        entry = _ENTRY.match(line)
        if entry is None:
            raise MeanlocError(
                "{} line {}: expected '<tensor>: <8 hex digits>', got {!r}".format(source, number, line[:80])
            )
        scales[entry.group(1)] = hex_to_scale(entry.group(2))
    if not scales:
        raise MeanlocError("{} holds no tensor scales".format(source))
    return CalibrationCache(int(header.group(1)), header.group(2), scales)


def read_calibration_cache(path: PathLike) -> CalibrationCache:
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise MeanlocError("calibration cache not found: {}".format(path)) from None
    except OSError as exc:
        raise MeanlocError("cannot read calibration cache {}: {}".format(path, exc.strerror or exc)) from None
    return parse_calibration_cache(data, str(path))


def write_calibration_cache(path: PathLike, cache: CalibrationCache) -> None:
    atomic_write_text(path, cache.to_text())


def _some(names: Iterable[str], limit: int = 5) -> str:
    names = sorted(names)
    shown = ", ".join(names[:limit])
    return shown + (" and {} more".format(len(names) - limit) if len(names) > limit else "")


def made_by_tensorrt(name: str, onnx_names: Set[str]) -> bool:
    """True for a tensor TensorRT created itself (unnamed layers, parser helpers, suffixed ONNX names)."""
    if _UNNAMED_LAYER.match(name) or name.startswith(_PARSER_HELPER):
        return True
    derived = _DERIVED_SUFFIX.match(name)
    while derived:
        name = derived.group(1)
        if name in onnx_names:
            return True
        derived = _DERIVED_SUFFIX.match(name)
    return False


def check_cache_names(
    cache: CalibrationCache, value_names: Iterable[str], required_names: Iterable[str], source: str
) -> None:
    """Refuse a cache made for another graph.

    `value_names` are all tensor names of the ONNX graph: a cache entry outside them, and not a
    tensor TensorRT made itself (`made_by_tensorrt`), belongs to another model. `required_names`
    are the activations INT8 layers need a scale for: without them TensorRT falls back to
    guessed ranges or fails the build.
    """
    known = set(value_names)
    extra = {name for name in set(cache.scales) - known if not made_by_tensorrt(name, known)}
    missing = set(required_names) - set(cache.scales)
    if extra or missing:
        parts = []
        if missing:
            parts.append("{} ONNX tensors have no scale ({})".format(len(missing), _some(missing)))
        if extra:
            parts.append("{} cache tensors are not in the ONNX ({})".format(len(extra), _some(extra)))
        raise ArtifactMismatchError("{} does not match the ONNX model: {}".format(source, "; ".join(parts)))


def manifest_path(cache_path: PathLike) -> Path:
    return Path(str(cache_path) + ".json")


def write_cache_manifest(cache_path: PathLike, cache: CalibrationCache, **fields: Any) -> Dict[str, Any]:
    """`<cache>.json`: what the cache was computed from (ONNX sha256, identity, method, images, ...)."""
    manifest = new_manifest(
        CACHE_MANIFEST_KIND,
        cache_sha256=sha256_file(cache_path),
        header=cache.header,
        algorithm=cache.algorithm,
        trt_version_code=cache.version_code,
        num_tensors=len(cache.scales),
        **fields,
    )
    atomic_write_json(manifest_path(cache_path), manifest)
    return manifest


def read_cache_manifest(cache_path: PathLike, onnx_sha256: Optional[str] = None) -> Dict[str, Any]:
    """Read and check `<cache>.json`; with `onnx_sha256`, refuse a cache made from another ONNX."""
    source = str(manifest_path(cache_path))
    manifest = read_json(source, "calibration cache manifest")
    check_manifest_kind(manifest, CACHE_MANIFEST_KIND, source)
    if manifest.get("cache_sha256") != sha256_file(cache_path):
        raise ArtifactMismatchError(
            "{} does not describe {} (cache changed since it was written)".format(source, cache_path)
        )
    if onnx_sha256 is not None and manifest.get("onnx_sha256") != onnx_sha256:
        raise ArtifactMismatchError(
            "calibration cache {} was computed for another ONNX (sha256 {}... vs {}...)".format(
                cache_path, str(manifest.get("onnx_sha256"))[:12], onnx_sha256[:12]
            )
        )
    return manifest



def value_names(model: Any) -> Set[str]:
    """Every tensor name in the graph: inputs, node outputs and initializers."""
    graph = model.graph
    names = {value.name for value in graph.input} | {init.name for init in graph.initializer}
    for node in graph.node:
        names.update(name for name in node.output if name)
    return names


def _constant_tensors(model: Any) -> Set[str]:
    """Initializers and everything computed from them alone (Constant, Identity-of-weight, ...)."""
    constant = {init.name for init in model.graph.initializer}
    for node in model.graph.node:  # ONNX nodes are topologically sorted
        if node.op_type == "Constant" or all(name in constant for name in node.input if name):
            constant.update(node.output)
    return constant


def int8_activation_names(model: Any) -> Set[str]:
    """The activations feeding or leaving Conv/MatMul/Gemm: they must all have a cache scale."""
    constant = _constant_tensors(model)
    required = set()
    for node in model.graph.node:
        if node.op_type in INT8_OP_TYPES:
            required.update(name for name in (*node.input, *node.output) if name and name not in constant)
    return required
