"""`meanloc doctor --selftest`: does TensorRT work here, in every precision meanloc builds? One report.

On a Jetson or CUDA workstation it builds FP32, FP16, INT8-explicit (Q/DQ) and INT8-implicit
(calibration cache) engines from one ONNX with the real builder (export/engine_build.py), runs each
through the TensorRT backend and its ONNX Runtime twin, and reports the cosine to the FP32
reference, latency percentiles, engine sizes, the TensorRT/CUDA/JetPack versions, and what failed
with the TensorRT log lines. Without TensorRT (or a CUDA binding) it says why in one line and runs
the CPU part: the ONNX Runtime twins against the FP32 reference, and the report.

The ONNX is the built-in tiny model (meanloc/selftest_model.py: no torch, no `onnx`, no data), or
the user's own `--onnx` (with `--qdq-onnx` and `--calib-cache` for the INT8 precisions). The FP32
reference is the built-in model's numpy forward pass, else ONNX Runtime on the FP32 ONNX, else the
FP32 engine. The report is written atomically; every failure is recorded, never raised, so the
file always says as much as could be learnt. Python 3.8; never imports torch.
"""

import dataclasses
import platform
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

import numpy as np

from meanloc import __version__
from meanloc.runtime.artifacts import atomic_write_bytes, atomic_write_json, new_manifest, sha256_bytes

REPORT_KIND = "meanloc-selftest"
PRECISIONS = ("fp32", "fp16", "int8-explicit", "int8-implicit")
# deployment.md §6: mean cosine to FP32 embeddings, the project's proposed gates (ONNX Runtime
# twins under their own names: the FP32 ONNX and the Q/DQ ONNX).
GATES = {"fp32": 0.999, "fp16": 0.99, "int8-explicit": 0.97, "int8-implicit": 0.97, "int8-qdq": 0.97}
EVAL_IMAGES = 16
MAX_BATCH = 4
LOG_LINES = 40


@dataclasses.dataclass
class SelftestInputs:
    """One ONNX in its forms: FP32 (required), Q/DQ and a calibration cache (optional)."""

    fp32: Path
    qdq: Optional[Path]
    calibration_cache: Optional[Path]
    source: str
    reference: Optional[Callable[[np.ndarray], np.ndarray]] = None  # FP32 embeddings without any runtime


def run_selftest(
    out: Optional[str] = None,
    onnx: Optional[str] = None,
    qdq_onnx: Optional[str] = None,
    calib_cache: Optional[str] = None,
    iterations: int = 50,
    echo: Callable[[str], None] = print,
) -> Dict[str, Any]:
    """Run the selftest and return its report (also written to `out` when given)."""
    from meanloc.runtime.trt_env import describe_environment, tensorrt_gpu_unavailable_reason

    env = describe_environment(probe_dla=False)
    trt_reason = tensorrt_gpu_unavailable_reason()
    report = new_manifest(
        REPORT_KIND,
        created=time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        versions=_versions(env),
        environment=env,
        onnxruntime={},
        tensorrt={},
    )
    with tempfile.TemporaryDirectory(prefix="meanloc-selftest-") as work:
        usable_trt = env.get("tensorrt_version") if trt_reason is None else None
        inputs = _inputs(Path(work), onnx, qdq_onnx, calib_cache, usable_trt, report)
        images = _eval_images(inputs)
        reference = _reference(inputs, images, report)
        report["onnxruntime"] = _onnxruntime_part(inputs, images, reference, iterations)
        if reference is None:
            reference = (report["onnxruntime"].get("fp32") or {}).get("embeddings")
        if trt_reason is not None:
            report["tensorrt"] = {"status": "skipped", "reason": trt_reason}
        else:
            report["tensorrt"] = _tensorrt_part(inputs, images, reference, report["onnxruntime"], Path(work), iterations)
    for entry in report["onnxruntime"].values():
        entry.pop("embeddings", None)
    report["summary"] = summary_lines(report)
    if out:
        atomic_write_json(out, report)
    for line in report["summary"]:
        echo(line)
    if out:
        echo("wrote {}".format(out))
    return report


def passed(report: Dict[str, Any]) -> bool:
    """True when nothing that ran failed (skipped parts do not count as failures)."""
    parts = list(report["onnxruntime"].values()) + list((report["tensorrt"].get("precisions") or {}).values())
    return all(part.get("status") != "failed" for part in parts)


def _versions(env: Dict[str, Any]) -> Dict[str, Any]:
    keys = ("tensorrt_version", "cuda_runtime_version", "cuda_driver_version", "gpu", "gpu_probe", "jetson_model",
            "l4t_release", "jetpack_version", "python_version", "numpy_version", "onnxruntime_version")
    versions = {key: env.get(key) for key in keys}
    versions["meanloc"] = __version__
    versions["polygraphy"] = _module_version("polygraphy")
    versions["machine"] = platform.machine()
    return versions


def _module_version(name: str) -> Optional[str]:
    from meanloc.runtime.trt_env import module_version

    return module_version(name)


def _inputs(
    work: Path, onnx: Optional[str], qdq: Optional[str], cache: Optional[str], trt_version: Optional[str],
    report: Dict[str, Any],
) -> SelftestInputs:
    if onnx:
        from meanloc.runtime.onnx_file import load_embedding_onnx

        model = load_embedding_onnx(onnx, "FP32 ONNX model")  # one-line error for a file that is not one
        report["model"] = {"source": str(model.path), "sha256": model.sha256, "opset": model.opset,
                           "preset": model.identity.preset, "embed_dim": model.embed_dim}
        return SelftestInputs(model.path, Path(qdq) if qdq else None, Path(cache) if cache else None, "user ONNX")
    from meanloc.runtime.calibration_cache import build_cache, value_names, write_calibration_cache
    from meanloc.runtime.onnx_file import parse_onnx_model
    from meanloc.runtime.trt_api import version_tuple

    from .selftest_model import build_selftest_model

    # TensorRT 8.5 cannot parse LayerNormalization: give it the opset-16 form, as `meanloc export onnx` does.
    opset = 16 if trt_version and version_tuple(trt_version)[:2] < (8, 6) else 17
    model = build_selftest_model(opset)
    fp32, qdq_path = work / "selftest.onnx", work / "selftest.int8-qdq-trt.onnx"
    atomic_write_bytes(fp32, model.fp32_onnx)
    atomic_write_bytes(qdq_path, model.qdq_onnx)
    cache_path = None
    if trt_version:
        names = value_names(parse_onnx_model(model.fp32_onnx))
        cache_path = work / "selftest.cache"
        write_calibration_cache(cache_path, build_cache({k: v for k, v in model.amax.items() if k in names}, trt_version))
    report["model"] = {"source": "built-in selftest-tiny (meanloc/selftest_model.py)", "opset": opset,
                       "sha256": sha256_bytes(model.fp32_onnx), "embed_dim": model.identity.embed_dim,
                       "input_size": model.identity.preprocess.size}
    return SelftestInputs(fp32, qdq_path, cache_path, "built-in", model.reference)


def _eval_images(inputs: SelftestInputs) -> np.ndarray:
    from meanloc.runtime.onnx_file import load_embedding_onnx

    from .selftest_model import sample_inputs

    size = load_embedding_onnx(inputs.fp32).input_size
    images = sample_inputs(EVAL_IMAGES, seed=1234)
    if images.shape[-1] != size:  # a user model: the same kind of input at its size
        rng = np.random.default_rng(1234)
        images = rng.standard_normal((EVAL_IMAGES, 3, size, size)).astype(np.float32)
    return images


def _reference(inputs: SelftestInputs, images: np.ndarray, report: Dict[str, Any]) -> Optional[np.ndarray]:
    if inputs.reference is not None:
        report["reference"] = "numpy FP32 forward pass of the built-in model"
        return inputs.reference(images)
    report["reference"] = "ONNX Runtime FP32 (CPU), else the TensorRT FP32 engine"
    return None


def _cosine(embeddings: np.ndarray, reference: Optional[np.ndarray]) -> Optional[Dict[str, float]]:
    if reference is None:
        return None
    cosine = np.sum(embeddings * reference, axis=1) / (
        np.linalg.norm(embeddings, axis=1) * np.linalg.norm(reference, axis=1)
    )
    return {"mean": float(cosine.mean()), "min": float(cosine.min())}


def _latency(backend: Any, images: np.ndarray, iterations: int) -> Dict[str, Any]:
    from meanloc.runtime.profiling.stats import LatencyStats

    one = images[:1]
    for _ in range(min(10, iterations)):
        backend.embed(one)
    seconds, stages = [], []
    for _ in range(iterations):
        start = time.perf_counter()
        backend.embed(one)
        seconds.append(time.perf_counter() - start)
        stages.append(backend.stage_timings())
    stats = LatencyStats.from_seconds(seconds).to_dict()
    result = {key: stats[key] for key in ("count", "median_ms", "p90_ms", "p95_ms", "p99_ms", "max_ms", "cov")}
    if stages and stages[0]:
        result["device_ms"] = {name: float(np.median([s[name] for s in stages])) * 1e3 for name in stages[0]}
    return result


def _apply_gate(entry: Dict[str, Any], name: str) -> None:
    cosine = entry.get("cosine_to_fp32")
    if cosine is not None and cosine["mean"] < GATES[name]:
        entry.update(status="failed", error="mean cosine to FP32 {:.4f} is below the {} gate {}".format(
            cosine["mean"], name, GATES[name]))


def _failure(exc: BaseException) -> Dict[str, Any]:
    from meanloc.errors import MeanlocError

    text = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
    entry = {"status": "failed", "error": text if isinstance(exc, MeanlocError) else "{}: {}".format(type(exc).__name__, text)}
    if not isinstance(exc, MeanlocError):  # a bug, not an environment problem: keep where it happened
        entry["traceback"] = traceback.format_exc().splitlines()[-6:]
    return entry


def _onnxruntime_part(
    inputs: SelftestInputs, images: np.ndarray, reference: Optional[np.ndarray], iterations: int
) -> Dict[str, Any]:
    """The CPU twins: the FP32 ONNX (twin of fp32, fp16 and int8-implicit) and the Q/DQ ONNX."""
    from meanloc.runtime.trt_env import module_version

    if module_version("onnxruntime") is None:
        return {"fp32": {"status": "skipped", "reason": "onnxruntime is not installed"}}
    from meanloc.runtime.backends import open_backend

    results = {}  # type: Dict[str, Any]
    for name, path in (("fp32", inputs.fp32), ("int8-qdq", inputs.qdq)):
        if path is None:
            results[name] = {"status": "skipped", "reason": "no Q/DQ ONNX given (--qdq-onnx)"}
            continue
        try:
            with open_backend(str(path), providers=["cpu"], max_batch=MAX_BATCH) as backend:
                embeddings = backend.embed(images)
                entry = {"status": "ok", "cosine_to_fp32": _cosine(embeddings, reference)}
                entry["latency_ms"] = _latency(backend, images, iterations)
                entry["embeddings"] = embeddings
            _apply_gate(entry, name)
        except Exception as exc:  # recorded in the report, never raised: see the module docstring
            entry = _failure(exc)
        results[name] = entry
    return results


def _tensorrt_part(
    inputs: SelftestInputs,
    images: np.ndarray,
    reference: Optional[np.ndarray],
    twins: Dict[str, Any],
    work: Path,
    iterations: int,
) -> Dict[str, Any]:
    from meanloc.export.engine_build import build_engine
    from meanloc.runtime.backends import open_backend
    from meanloc.runtime.trt_api import INFO, capture_tensorrt_log

    precisions = {}  # type: Dict[str, Any]
    fp32_engine = None  # type: Optional[np.ndarray]
    for precision in PRECISIONS:
        source = inputs.qdq if precision == "int8-explicit" else inputs.fp32
        cache = inputs.calibration_cache if precision == "int8-implicit" else None
        if source is None or (precision == "int8-implicit" and cache is None):
            what = "--qdq-onnx" if precision == "int8-explicit" else "--calib-cache"
            precisions[precision] = {"status": "skipped", "reason": "no input for it ({})".format(what)}
            continue
        entry = {}  # type: Dict[str, Any]
        with capture_tensorrt_log(min_severity=INFO) as log:
            try:
                engine = work / "selftest.{}.engine".format(precision)
                built = build_engine(source, engine, precision=precision, max_batch=MAX_BATCH,
                                     calibration_cache=cache, timing_cache=None, echo=None)
                entry.update(status="ok", engine_bytes=engine.stat().st_size, build_seconds=built.sidecar.build_seconds,
                             build_warnings=built.sidecar.build_warnings, int8_layers=built.sidecar.int8_layers)
                with open_backend(str(engine), max_batch=MAX_BATCH) as backend:
                    embeddings = backend.embed(images)
                    entry["latency_ms"] = _latency(backend, images, iterations)
                if precision == "fp32":
                    fp32_engine = embeddings
                entry["cosine_to_fp32"] = _cosine(embeddings, reference if reference is not None else fp32_engine)
                twin = twins.get("int8-qdq" if precision == "int8-explicit" else "fp32") or {}
                entry["cosine_to_onnxruntime_twin"] = _cosine(embeddings, twin.get("embeddings"))
                _apply_gate(entry, precision)
            except Exception as exc:  # recorded in the report, never raised: see the module docstring
                entry.update(_failure(exc))
        if entry["status"] == "failed":
            entry["tensorrt_log"] = (log.errors() + log.warnings())[:LOG_LINES] or log.lines[-LOG_LINES:]
        else:
            entry["tensorrt_warnings"] = log.warnings()[:LOG_LINES]
        precisions[precision] = entry
    return {"status": "ran", "precisions": precisions}


def _status_text(entry: Dict[str, Any]) -> str:
    if entry.get("status") == "skipped":
        return "skipped: " + entry["reason"]
    if entry.get("status") == "failed":
        return "FAILED: " + entry["error"]
    parts = []
    cosine = entry.get("cosine_to_fp32")
    if cosine:
        parts.append("cosine to FP32 mean {:.5f} min {:.5f}".format(cosine["mean"], cosine["min"]))
    latency = entry.get("latency_ms")
    if latency:
        parts.append("batch 1 median {:.2f} ms p90 {:.2f} p99 {:.2f}".format(
            latency["median_ms"], latency["p90_ms"], latency["p99_ms"]))
    if entry.get("engine_bytes"):
        parts.append("engine {:.1f} MiB".format(entry["engine_bytes"] / 2**20))
    return "ok: " + ", ".join(parts)


def summary_lines(report: Dict[str, Any]) -> List[str]:
    versions = report["versions"]
    lines = [
        "meanloc selftest ({}) on {}".format(report["model"]["source"], versions.get("gpu") or platform.machine()),
        "  TensorRT {} | CUDA {} | JetPack {} | ONNX Runtime {} | Python {}".format(
            versions.get("tensorrt_version") or "-", versions.get("cuda_runtime_version") or "-",
            versions.get("jetpack_version") or "-", versions.get("onnxruntime_version") or "-",
            versions.get("python_version")),
    ]
    for name, entry in report["onnxruntime"].items():
        lines.append("  onnxruntime {:<14} {}".format(name, _status_text(entry)))
    trt = report["tensorrt"]
    if trt.get("status") == "skipped":
        lines.append("  tensorrt    skipped: {}".format(trt["reason"]))
    for name, entry in (trt.get("precisions") or {}).items():
        lines.append("  tensorrt    {:<14} {}".format(name, _status_text(entry)))
    lines.append("  result: {}".format("PASS" if passed(report) else "FAIL (see the report's errors and TensorRT log lines)"))
    return lines

