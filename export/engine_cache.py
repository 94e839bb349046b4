"""Reuse a TensorRT engine when an identical build was already made.

A build is identified by everything the plan depends on (deployment.md §3, "cache key and
metadata"): the ONNX sha256, precision, calibration-cache sha256, optimization profile, builder
optimization level, workspace, and the build environment (TensorRT, CUDA, GPU name and compute
capability, L4T release, DLA core). The key is the sha256 of those fields as canonical JSON; it
is stored in the engine's sidecar, so an engine already at the output path, or one in a cache
folder, is reused only when its key and its file hash both match. The timing cache is keyed the
same way minus the model and build options. Python 3.8 compatible (engines are built on Jetsons).
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from meanloc import __version__
from meanloc.errors import MeanlocError
from meanloc.runtime.artifacts import atomic_path, sha256_bytes, sha256_file
from meanloc.runtime.engine_sidecar import EngineSidecar, engine_sidecar_path


def _digest(fields: Mapping[str, Any]) -> str:
    return sha256_bytes(json.dumps(fields, sort_keys=True, separators=(",", ":")).encode("utf-8"))


def engine_cache_fields(
    onnx_sha256: str,
    precision: str,
    calibration_sha256: str | None,
    profile: Mapping[str, int],
    opt_level: int | None,
    workspace_mb: int,
    environment: Mapping[str, Any],
) -> dict:
    """The fields that decide whether two builds give the same engine. `environment` is
    `engine_sidecar.recorded_environment(...)` (TensorRT, CUDA, GPU, SM, L4T, DLA core)."""
    return {
        "builder": "meanloc "
        + __version__,  # the builder's own logic (FP32 pinning, flags) shapes the plan too
        "onnx_sha256": onnx_sha256,
        "precision": precision,
        "calibration_sha256": calibration_sha256,
        "profile": {key: int(profile[key]) for key in ("min", "opt", "max")},
        "opt_level": opt_level,
        "workspace_mb": int(workspace_mb),
        "environment": dict(sorted(environment.items())),
    }


def engine_cache_key(fields: Mapping[str, Any]) -> str:
    return _digest(fields)


def timing_cache_key(environment: Mapping[str, Any]) -> str:
    """Timing caches depend on the device and exact TensorRT version only (not on the model)."""
    return _digest({"timing_cache_environment": dict(sorted(environment.items()))})


def default_timing_cache_path(environment: Mapping[str, Any]) -> Path:
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "meanloc" / "tensorrt" / f"timing-{timing_cache_key(environment)[:16]}.cache"


def reusable_engine(engine_path: str | Path, key: str) -> bool:
    """True if `engine_path` exists with a sidecar recording `key` and its bytes are the recorded ones."""
    engine_path = Path(engine_path)
    sidecar_path = Path(engine_sidecar_path(str(engine_path)))
    if not engine_path.is_file() or not sidecar_path.is_file():
        return False
    try:
        sidecar = EngineSidecar.load(str(engine_path))
    except MeanlocError:
        return False  # unreadable or foreign sidecar: rebuild rather than trust it
    return sidecar.cache_key == key and sidecar.engine_sha256 == sha256_file(engine_path)


class EngineCache:
    """A folder of `<key>.engine` + `<key>.engine.json` pairs (jetson-inference-style reuse)."""

    def __init__(self, directory: str | Path) -> None:
        self.directory = Path(directory)

    def path_for(self, key: str) -> Path:
        return self.directory / f"{key[:32]}.engine"

    def lookup(self, key: str) -> Path | None:
        path = self.path_for(key)
        return path if reusable_engine(path, key) else None

    def store(self, key: str, engine_path: str | Path) -> Path:
        """Copy a freshly built engine and its sidecar into the cache."""
        target = self.path_for(key)
        copy_engine(engine_path, target)
        return target


def copy_engine(source: str | Path, target: str | Path) -> None:
    """Copy an engine and its sidecar atomically (sidecar last: an engine without a matching
    sidecar is never reused)."""
    for src, dst in (
        (Path(source), Path(target)),
        (Path(engine_sidecar_path(str(source))), Path(engine_sidecar_path(str(target)))),
    ):
        if src.resolve() == dst.resolve():
            continue
        with atomic_path(dst) as tmp:
            shutil.copyfile(str(src), str(tmp))
