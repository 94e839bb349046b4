"""`meanloc export engine`: a meanloc ONNX -> TensorRT plan + `<engine>.json` sidecar, on the target.

The steps, each in its own module:
- what is asked (`engine_options.py`), checked before TensorRT is touched;
- the ONNX, read without the `onnx` package (`runtime/onnx_file.py`), so a Jetson needs only JetPack;
- TensorRT, its version gate and its process-wide logger (`runtime/trt_api.py`);
- this machine, described by the same CUDA probe the runtime uses (`runtime/trt_env.py`); a build
  without one is refused, since its sidecar could not name the GPU the runtime will compare;
- an implicit-INT8 calibration cache, checked against this TensorRT and this graph (here);
- reuse of an identical earlier build (`engine_cache.py`);
- the TensorRT build itself (`trt_build.py`), and the sidecar (`runtime/engine_sidecar.py`).
Python 3.8 compatible: engines are built on the Jetson, including JetPack 5.
"""

from __future__ import annotations

import dataclasses
import platform
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from meanloc.errors import ArtifactMismatchError, MeanlocError, MissingDependencyError
from meanloc.runtime.artifacts import atomic_write_bytes, ensure_writable_dir, sha256_bytes
from meanloc.runtime.cuda_device import available_cuda_libraries
from meanloc.runtime.engine_sidecar import (
    ENV_GPU_NAME,
    ENV_L4T,
    EngineSidecar,
    engine_sidecar_path,
    recorded_environment,
)
from meanloc.runtime.onnx_file import EmbeddingOnnx, load_embedding_onnx
from meanloc.runtime.trt_api import import_tensorrt
from meanloc.runtime.trt_env import engine_environment, jetpack_from_l4t, jetson_model

from .engine_cache import (
    EngineCache,
    copy_engine,
    default_timing_cache_path,
    engine_cache_fields,
    engine_cache_key,
    reusable_engine,
)
from .engine_options import AUTO_TIMING_CACHE, PRECISIONS, EngineOptions, resolve_opt_batch
from .trt_build import build_plan, check_supported

__all__ = ["PRECISIONS", "EngineBuildResult", "build_engine"]


@dataclass
class EngineBuildResult:
    engine_path: Path
    sidecar_path: Path
    sidecar: EngineSidecar
    reused: bool = False
    warnings: list[str] = field(default_factory=list)

    def summary(self) -> str:
        sidecar = self.sidecar
        env = sidecar.environment
        how = "reused identical build" if self.reused else f"built in {sidecar.build_seconds or 0:.1f} s"
        profile = sidecar.profile
        return (
            f"{self.engine_path}: {sidecar.engine_precision} engine, batch {profile['min']}/{profile['opt']}/{profile['max']}, "
            f"TensorRT {env.get('tensorrt_version')} on {env.get('gpu_name') or 'unknown GPU'} ({how}); "
            f"sidecar {self.sidecar_path}"
        )


def _refuse_unidentified_gpu() -> None:
    """The sidecar must name the GPU as the runtime's probe will (cuda_device.probe_gpu): refuse to build
    otherwise. No CUDA binding at all is a missing dependency (exit 4); a binding that finds no GPU is not."""
    bindings = available_cuda_libraries()
    if not bindings:
        raise MissingDependencyError(
            "cannot identify this GPU through pycuda or cuda-python, so the engine's sidecar could not name the "
            "GPU the runtime checks it against; install one of them (the TensorRT backend needs it anyway): "
            "pip install pycuda, or pip install 'cuda-python>=12.6,<13' (JetPack 6) / 'cuda-python>=11.8,<12' (JetPack 5)"
        )
    raise MeanlocError(
        f"cannot identify this GPU: {' and '.join(bindings)} found no CUDA device, so the engine's sidecar could "
        "not name the GPU the runtime checks it against; check the driver (nvidia-smi, or tegrastats on a Jetson)"
    )


def _stderr(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


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

    `opt_batch` defaults to 1 (the onboard loop's batch). `timing_cache` is a file path, "auto" (one
    per TensorRT version and GPU under ~/.cache/meanloc) or None. `cache_dir` is a folder of previous
    builds to reuse from and store into. `environment` overrides `trt_env.engine_environment()`
    (tests). `echo` receives progress and warning lines (None: silent).
    """
    options = EngineOptions(
        precision=precision,
        min_batch=min_batch,
        opt_batch=resolve_opt_batch(min_batch, opt_batch),
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

    env = dict(environment) if environment is not None else engine_environment(probe_dla=False)
    if env.get(ENV_GPU_NAME) is None:
        _refuse_unidentified_gpu()
    recorded_env = recorded_environment(env, options.dla_core)
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
    plan, build_info = build_plan(trt, options, onnx, calibration["bytes"] if calibration else None, echo)
    plan_sha256 = sha256_bytes(plan)
    sidecar = EngineSidecar(
        identity=dataclasses.replace(onnx.identity, precision=options.precision, artifact_sha256=plan_sha256),
        environment=recorded_env,
        engine_sha256=plan_sha256,
        precision=options.precision,
        profile=options.profile,
        onnx_identity=onnx.identity,
        onnx_sha256=onnx.sha256,
        onnx_file=onnx.path.name,
        onnx_opset=onnx.opset,
        calibration_sha256=calibration["sha256"] if calibration else None,
        calibration_header=calibration["header"] if calibration else None,
        calibration_file=Path(options.calibration_cache).name if options.calibration_cache else None,
        build_environment=_build_machine(env),
        build_seconds=round(time.monotonic() - started, 2),
        cache_key=key,
        cache_key_fields=key_fields,
        **build_info,
    )
    atomic_write_bytes(out_path, plan)
    sidecar_path = Path(sidecar.write(str(out_path)))
    if cache is not None:
        cache.store(key, out_path)
    return EngineBuildResult(out_path, sidecar_path, sidecar, reused=False, warnings=list(sidecar.build_warnings))


def _build_machine(env: Mapping[str, Any]) -> dict[str, Any]:
    """What the sidecar keeps about the build machine beyond what the plan depends on (informative)."""
    return {
        "cuda_driver_version": env.get("cuda_driver_version"),
        "gpu_probe": env.get("gpu_probe"),
        "jetson_model": jetson_model(),
        "jetpack_version": jetpack_from_l4t(env.get(ENV_L4T)),
        "python_version": platform.python_version(),
        "machine": platform.machine(),
    }


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
    return EngineBuildResult(out_path, sidecar_path, EngineSidecar.load(str(out_path)), reused=True)


def _load_calibration(trt: Any, options: EngineOptions, onnx: EmbeddingOnnx) -> dict[str, Any] | None:
    """Read an int8-implicit calibration cache and refuse one this TensorRT would not use for this
    graph: another TensorRT's header (silently ignored by TensorRT, NVIDIA/TensorRT#1378), tensor
    names of another graph, or a manifest naming another ONNX."""
    if options.calibration_cache is None:
        return None
    from meanloc.runtime.calibration_cache import (
        check_cache_names,
        int8_activation_names,
        manifest_path,
        parse_calibration_cache,
        read_cache_manifest,
        trt_version_code,
        value_names,
    )

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
