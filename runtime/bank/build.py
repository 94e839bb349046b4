"""Building a bank: embed every tile of a source in batches, in resumable shards, on one process
or on every process torchrun starts.

Candidates are split into shards of `shard_size`. Each finished shard is written atomically as
`shards/NNNNN.npy` (float16 embeddings of the tiles kept) and then `shards/NNNNN.json` (their
metadata rows and the .npy hash); the JSON is the completion mark. A re-run with `resume=True`
checks that the plan (source, model identity, parameters) is unchanged, skips every shard whose
files are complete, and finally concatenates the shards into the bank, adds its search index,
verifies it and removes the shards.

Under torchrun each rank builds its own shards (`sharding.py`) and rank 0 assembles the bank
once every shard is marked complete. A shard's embeddings depend only on its tiles, the model and
the batch size, never on which rank built it, so the bank is byte-identical to a one-process
build (with SOURCE_DATE_EPOCH set, the manifest's creation time too).

Throughput: a thread pool reads, cuts and preprocesses tiles ahead of inference, in order
(OpenCV, rasterio and numpy release the GIL, so it runs while the backend computes); batches are
filled into one reused buffer. bench/bench_bank_build.py compares tiles per second with the
model's own batch throughput.
Python 3.8 compatible; tqdm is imported lazily.
"""

import collections
import json
import os
import shutil
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple

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
from ..preprocess import preprocess_bgr
from .index import build_index, has_index
from .sharding import Ranks, wait_for_shards
from .store import MANIFEST_FILE, read_manifest, write_bank
from .tiles import records_from_rows
from .tiling import FileTileSource, OrthophotoTileSource
from .verify import verify_bank

SHARDS_DIR = "shards"
PLAN_FILE = "plan.json"
DEFAULT_SHARD_SIZE = 4096


@dataclass(frozen=True)
class BuildResult:
    """What a build did. On ranks other than 0 `count` is -1: rank 0 assembles the bank."""

    path: Path
    count: int
    candidates: int
    skipped_invalid: int
    shards_reused: int
    shards_built: int


def default_workers() -> int:
    return min(4, os.cpu_count() or 1)


class TileLoader:
    """Loads and preprocesses tiles of a source for a model, `workers` threads ahead of the
    consumer, in order; `workers=0` loads in the calling thread."""

    def __init__(self, source: Any, spec: Any, workers: int, prefetch: int) -> None:
        self.source = source
        self.spec = spec
        self.prefetch = max(1, int(prefetch))
        self._pool = ThreadPoolExecutor(int(workers), "bank-load") if workers > 0 else None

    def load(self, index: int) -> Optional[Tuple[np.ndarray, Dict[str, Any]]]:
        """(preprocessed (3, S, S) float32, tile row), or None for a skipped tile."""
        loaded = self.source.load(index)
        if loaded is None:
            return None
        return preprocess_bgr(loaded[0], self.spec), loaded[1]

    def iterate(self, indices: Sequence[int]) -> Iterator[Optional[Tuple[np.ndarray, Dict[str, Any]]]]:
        if self._pool is None:
            for index in indices:
                yield self.load(index)
            return
        pending = collections.deque()  # type: collections.deque
        upcoming = iter(indices)

        def submit_next() -> None:
            index = next(upcoming, None)
            if index is not None:
                pending.append(self._pool.submit(self.load, index))

        for _ in range(self.prefetch):
            submit_next()
        try:
            while pending:
                result = pending.popleft().result()
                submit_next()
                yield result
        finally:
            for future in pending:
                future.cancel()

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None


def build_bank(
    source: Any,
    backend: Any,
    out_dir: Path,
    batch: int = 32,
    shard_size: int = DEFAULT_SHARD_SIZE,
    resume: bool = False,
    progress: bool = True,
    overwrite: bool = False,
    index: bool = True,
    workers: Optional[int] = None,
    ranks: Optional[Ranks] = None,
) -> BuildResult:
    """Embed every tile of `source` (a tile source from `tiling.py`) with `backend` (an
    `EmbeddingBackend`) and write a bank, with its search index unless `index` is False, to
    `out_dir`. `overwrite` replaces a bank or unfinished build already there (the old bank stays
    usable until the new one is written). `workers` threads (default `default_workers()`, 0 =
    none) load tiles ahead of inference. `ranks` (default: from torchrun's environment) splits the
    shards between processes.
    """
    if batch < 1 or shard_size < 1:
        raise MeanlocError("--batch and the shard size must be >= 1")
    ranks = Ranks.from_environment() if ranks is None else ranks
    # A torchrun restart after a failure continues the build its group started.
    resume = resume or ranks.restart_count > 0
    out_dir = ensure_writable_dir(out_dir)
    plan = {
        "source": source.describe(),
        "identity": backend.identity.to_dict(),
        "shard_size": int(shard_size),
    }
    plan_sha = sha256_bytes(json.dumps(plan, sort_keys=True).encode("utf-8"))
    if overwrite and ranks.distributed:
        # Rank 0 would remove the shards the other ranks are writing.
        raise MeanlocError("--overwrite cannot be used under torchrun; remove {} first, or build into another "
                           "--out".format(out_dir))
    finished = None if overwrite else _finished_bank(out_dir, plan_sha, resume, index and ranks.is_main)
    if finished is not None:
        return finished
    if overwrite and not resume and (out_dir / SHARDS_DIR).exists():
        shutil.rmtree(str(out_dir / SHARDS_DIR))
    shard_dir = _prepare_shards(out_dir, plan, plan_sha, resume, ranks)
    n_shards = (len(source) + shard_size - 1) // shard_size
    own = ranks.own_shards(n_shards)
    reused = 0
    loader = TileLoader(source, backend.identity.preprocess, default_workers() if workers is None else workers, 2 * batch)
    from tqdm import tqdm

    own_tiles = sum(min((shard + 1) * shard_size, len(source)) - shard * shard_size for shard in own)
    try:
        with tqdm(total=own_tiles, unit="tile", desc=_bar_label(ranks), disable=not progress) as bar:
            for shard in own:
                start, stop = shard * shard_size, min((shard + 1) * shard_size, len(source))
                if _shard_complete(shard_dir, shard, plan_sha):
                    reused += 1
                    bar.update(stop - start)
                else:
                    _build_shard(loader, backend, shard_dir, shard, start, stop, batch, plan_sha, bar)
    finally:
        loader.close()
    if not ranks.is_main:
        return BuildResult(out_dir, -1, len(source), -1, reused, len(own) - reused)
    wait_for_shards(range(n_shards), lambda shard: _shard_complete(shard_dir, shard, plan_sha))
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
    if index:
        build_index(out_dir)
    problems = verify_bank(out_dir)
    if problems:
        raise MeanlocError(
            "the bank written to {} fails verification ({}); its shards are kept in {}".format(
                out_dir, "; ".join(problems), shard_dir
            )
        )
    shutil.rmtree(str(shard_dir))
    return BuildResult(out_dir, kept, len(source), len(source) - kept, reused, len(own) - reused)


def _bar_label(ranks: Ranks) -> str:
    return "bank" if not ranks.distributed else "bank rank {}/{}".format(ranks.rank, ranks.world_size)


def _finished_bank(out_dir: Path, plan_sha: str, resume: bool, index: bool) -> Optional[BuildResult]:
    """The result of an already finished build of this plan (adding its index if it was
    interrupted before), or None when there is none."""
    if not (out_dir / MANIFEST_FILE).exists():
        return None
    manifest = read_manifest(out_dir)
    if resume and manifest.get("build", {}).get("plan_sha256") == plan_sha:
        if index and not has_index(manifest):
            build_index(out_dir)
        build = manifest["build"]
        return BuildResult(
            out_dir, int(manifest["count"]), int(build["candidates"]), int(build["skipped_invalid"]), 0, 0
        )
    raise MeanlocError(
        "{} already holds a bank{}; choose another --out, or pass --overwrite to replace it".format(
            out_dir, " built from a different source/model/parameters" if resume else ""
        )
    )


def _prepare_shards(out_dir: Path, plan: Dict[str, Any], plan_sha: str, resume: bool, ranks: Ranks) -> Path:
    """Rank 0 checks or creates the shard folder and its plan; the other ranks wait for it."""
    shard_dir = out_dir / SHARDS_DIR
    plan_path = shard_dir / PLAN_FILE
    if not ranks.is_main:
        wait_for_shards([0], lambda _: _plan_matches(plan_path, plan_sha), what="build plan")
        return shard_dir
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


def _plan_matches(plan_path: Path, plan_sha: str) -> bool:
    return plan_path.exists() and read_json(plan_path, "build plan").get("plan_sha256") == plan_sha


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
    loader: TileLoader,
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
    size = backend.identity.preprocess.size
    images = np.empty((min(batch, stop - start), 3, size, size), dtype=np.float32)
    filled = 0
    for loaded in loader.iterate(range(start, stop)):
        if loaded is not None:
            images[filled] = loaded[0]
            rows.append(loaded[1])
            filled += 1
        if filled == len(images):
            parts.append(_embed(backend, images[:filled], rows[len(rows) - filled :]))
            filled = 0
        bar.update(1)
    if filled:
        parts.append(_embed(backend, images[:filled], rows[len(rows) - filled :]))
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


def _embed(backend: Any, images: np.ndarray, rows: Sequence[Dict[str, Any]]) -> np.ndarray:
    """Embed a preprocessed batch; float16 rows, refusing non-finite output."""
    embeddings = np.asarray(backend.embed(images), dtype=np.float32)
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
                            overwrite=build_options.get("overwrite", False), ranks=build_options.get("ranks"))
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
