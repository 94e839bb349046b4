"""Building a bank: embed every tile of a source in batches, in resumable shards.

Candidates are split into shards of `shard_size`. Each finished shard is written atomically as
`shards/NNNNN.npy` (float16 embeddings of the tiles kept) and then `shards/NNNNN.json` (their
metadata rows and the .npy hash); the JSON is the completion mark. A re-run with `resume=True`
checks that the plan (source, model identity, parameters) is unchanged, skips every shard whose
files are complete, and finally concatenates the shards into the bank and removes them.
Python 3.8 compatible; tqdm is imported lazily.
"""

import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from meanloc.errors import MeanlocError

from ..artifacts import (
    atomic_path,
    atomic_write_json,
    ensure_writable_dir,
    read_json,
    sha256_bytes,
    sha256_file,
)
from .store import MANIFEST_FILE, read_manifest, write_bank
from .tiles import records_from_rows
from .tiling import FileTileSource, OrthophotoTileSource

SHARDS_DIR = "shards"
PLAN_FILE = "plan.json"
DEFAULT_SHARD_SIZE = 4096


@dataclass(frozen=True)
class BuildResult:
    path: Path
    count: int
    candidates: int
    skipped_invalid: int
    shards_reused: int
    shards_built: int


def build_bank(
    source: Any,
    backend: Any,
    out_dir: Path,
    batch: int = 32,
    shard_size: int = DEFAULT_SHARD_SIZE,
    resume: bool = False,
    progress: bool = True,
    overwrite: bool = False,
) -> BuildResult:
    """Embed every tile of `source` (a tile source from `tiling.py`) with `backend` (an
    `EmbeddingBackend`) and write a bank to `out_dir`. `overwrite` replaces a bank or unfinished
    build already there (the old bank stays usable until the new one is written)."""
    if batch < 1 or shard_size < 1:
        raise MeanlocError("--batch and the shard size must be >= 1")
    out_dir = ensure_writable_dir(out_dir)
    plan = {
        "source": source.describe(),
        "identity": backend.identity.to_dict(),
        "shard_size": int(shard_size),
    }
    plan_sha = sha256_bytes(json.dumps(plan, sort_keys=True).encode("utf-8"))
    finished = None if overwrite else _finished_bank(out_dir, plan_sha, resume)
    if finished is not None:
        return finished
    if overwrite and not resume and (out_dir / SHARDS_DIR).exists():
        shutil.rmtree(str(out_dir / SHARDS_DIR))
    shard_dir = _prepare_shards(out_dir, plan, plan_sha, resume)
    n_shards = (len(source) + shard_size - 1) // shard_size
    reused = 0
    from tqdm import tqdm

    with tqdm(total=len(source), unit="tile", desc="bank", disable=not progress) as bar:
        for shard in range(n_shards):
            start, stop = shard * shard_size, min((shard + 1) * shard_size, len(source))
            if _shard_complete(shard_dir, shard, plan_sha):
                reused += 1
                bar.update(stop - start)
            else:
                _build_shard(source, backend, shard_dir, shard, start, stop, batch, plan_sha, bar)
    embeddings, rows = _collect_shards(shard_dir, n_shards)
    kept = len(rows)
    sources = _unique_sources(rows)
    records = records_from_rows(rows, {(s["id"], s["sha256"]): i for i, s in enumerate(sources)})
    build_info = dict(
        plan["source"],
        batch=int(batch),
        shard_size=int(shard_size),
        plan_sha256=plan_sha,
        backend=backend.name,
        skipped_invalid=len(source) - kept,
    )
    write_bank(out_dir, embeddings, records, sources, backend.identity, build_info)
    del embeddings  # release the shard memmaps before removing their files
    shutil.rmtree(str(shard_dir))
    return BuildResult(out_dir, kept, len(source), len(source) - kept, reused, n_shards - reused)


def _finished_bank(out_dir: Path, plan_sha: str, resume: bool) -> Optional[BuildResult]:
    if not (out_dir / MANIFEST_FILE).exists():
        return None
    manifest = read_manifest(out_dir)
    if resume and manifest.get("build", {}).get("plan_sha256") == plan_sha:
        build = manifest["build"]
        return BuildResult(
            out_dir, int(manifest["count"]), int(build["candidates"]), int(build["skipped_invalid"]), 0, 0
        )
    raise MeanlocError(
        "{} already holds a bank{}; choose another --out, or pass --overwrite to replace it".format(
            out_dir, " built from a different source/model/parameters" if resume else ""
        )
    )


def _prepare_shards(out_dir: Path, plan: Dict[str, Any], plan_sha: str, resume: bool) -> Path:
    shard_dir = out_dir / SHARDS_DIR
    plan_path = shard_dir / PLAN_FILE
    if plan_path.exists():
        if not resume:
            raise MeanlocError(
                "{} holds an unfinished build; pass --resume to continue it, --overwrite to start over, or "
                "choose another --out".format(out_dir)
            )
        if read_json(plan_path, "build plan").get("plan_sha256") != plan_sha:
            raise MeanlocError(
                "cannot resume {}: its unfinished build used a different source, model or parameters".format(
                    out_dir
                )
            )
        return shard_dir
    if shard_dir.exists() and any(shard_dir.iterdir()):
        raise MeanlocError(
            "{} exists but has no {}; remove it or choose another --out".format(shard_dir, PLAN_FILE)
        )
    ensure_writable_dir(shard_dir)
    atomic_write_json(plan_path, dict(plan, plan_sha256=plan_sha))
    return shard_dir


def _shard_paths(shard_dir: Path, shard: int) -> Tuple[Path, Path]:
    stem = "{:05d}".format(shard)
    return shard_dir / (stem + ".npy"), shard_dir / (stem + ".json")


def _shard_complete(shard_dir: Path, shard: int, plan_sha: str) -> bool:
    array_path, meta_path = _shard_paths(shard_dir, shard)
    if not (array_path.exists() and meta_path.exists()):
        return False
    meta = read_json(meta_path, "shard metadata")
    return meta.get("plan_sha256") == plan_sha and meta.get("sha256") == sha256_file(array_path)


def _build_shard(
    source: Any,
    backend: Any,
    shard_dir: Path,
    shard: int,
    start: int,
    stop: int,
    batch: int,
    plan_sha: str,
    bar: Any,
) -> None:
    rows = []  # type: List[Dict[str, Any]]
    parts = []  # type: List[np.ndarray]
    images = []  # type: List[np.ndarray]
    for index in range(start, stop):
        loaded = source.load(index)
        if loaded is not None:
            images.append(loaded[0])
            rows.append(loaded[1])
        if len(images) == batch or (index == stop - 1 and images):
            parts.append(_embed(backend, images, rows[len(rows) - len(images) :]))
            images = []
        bar.update(1)
    embeddings = (
        np.concatenate(parts) if parts else np.zeros((0, backend.identity.embed_dim), dtype=np.float16)
    )
    array_path, meta_path = _shard_paths(shard_dir, shard)
    with atomic_path(array_path) as tmp, open(str(tmp), "wb") as handle:
        np.save(handle, embeddings, allow_pickle=False)
    atomic_write_json(
        meta_path,
        {
            "shard": shard,
            "start": start,
            "stop": stop,
            "plan_sha256": plan_sha,
            "count": len(rows),
            "sha256": sha256_file(array_path),
            "tiles": rows,
        },
    )


def _embed(backend: Any, images: Sequence[np.ndarray], rows: Sequence[Dict[str, Any]]) -> np.ndarray:
    embeddings = np.asarray(backend.embed_images(list(images)), dtype=np.float32)
    if embeddings.shape != (len(images), backend.identity.embed_dim):
        raise MeanlocError(
            "backend returned embeddings of shape {} for {} tiles".format(embeddings.shape, len(images))
        )
    bad = ~np.all(np.isfinite(embeddings), axis=1)
    if np.any(bad):
        raise MeanlocError(
            "the model produced NaN/inf for tile {} (bad image or broken model)".format(
                rows[int(np.argmax(bad))]["name"]
            )
        )
    return embeddings.astype(np.float16)


def _unique_sources(rows: Sequence[Dict[str, Any]]) -> List[Dict[str, str]]:
    """The distinct (source_id, source_sha256) pairs of the tiles, in order of first use."""
    seen = {}  # type: Dict[Tuple[str, str], None]
    for row in rows:
        seen.setdefault((row["source_id"], row["source_sha256"]), None)
    return [{"id": source_id, "sha256": sha} for source_id, sha in seen]


def _collect_shards(shard_dir: Path, n_shards: int) -> Tuple[List[np.ndarray], List[Dict[str, Any]]]:
    embeddings, rows = [], []  # type: List[np.ndarray], List[Dict[str, Any]]
    for shard in range(n_shards):
        array_path, meta_path = _shard_paths(shard_dir, shard)
        meta = read_json(meta_path, "shard metadata")
        array = np.load(str(array_path), mmap_mode="r", allow_pickle=False)
        if len(array) != meta["count"] or len(meta["tiles"]) != meta["count"]:
            raise MeanlocError(
                "shard {} is inconsistent; delete it and re-run with --resume".format(array_path)
            )
        embeddings.append(array)
        rows.extend(meta["tiles"])
    return embeddings, rows


def build_bank_from_orthophoto(
    orthophoto_path: Path,
    backend: Any,
    out_dir: Path,
    tile_m: float = 200.0,
    overlap: float = 0.5,
    scales: Sequence[float] = (1.0,),
    min_valid: float = 0.5,
    tile_px: Optional[int] = None,
    local_features: Optional[Any] = None,
    **build_options: Any,
) -> BuildResult:
    """Cut a GeoTIFF into north-up tiles (at the model's input size unless `tile_px`) and build;
    then, unless `local_features` is None, add the local-feature layer (`feature_build.py`) with those
    `LayerParams`, resumable like the embeddings."""
    from ..geo.orthophoto import Orthophoto

    ortho = Orthophoto.from_geotiff(orthophoto_path)
    source = OrthophotoTileSource(
        ortho, tile_m, overlap, scales, tile_px or backend.identity.preprocess.size, min_valid
    )
    result = build_bank(source, backend, out_dir, **build_options)
    if local_features is not None:
        from .feature_build import build_feature_layer

        build_feature_layer(Path(out_dir), ortho, local_features, resume=build_options.get("resume", False),
                            progress=build_options.get("progress", True),
                            overwrite=build_options.get("overwrite", False))
    return result


def build_bank_from_tiles(
    tiles_dir: Path, tiles_list: Path, backend: Any, out_dir: Path, skip_bad_images: bool = False,
    **build_options: Any
) -> BuildResult:
    """Build from tile images listed with their centres and corners in a CSV/JSON file."""
    source = FileTileSource(tiles_dir, tiles_list, skip_bad_images)
    result = build_bank(source, backend, out_dir, **build_options)
    if source.bad_images:
        import sys

        print("meanloc bank build: " + source.bad_images.summary(), file=sys.stderr)
    return result
