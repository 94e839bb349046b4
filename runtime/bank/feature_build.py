"""Building a bank's local-feature layer from its orthophoto, resumably; merging layers.

The layer is cut in the bank's local frame: square blocks of `block_cells` x `block_cells` grid
cells are resampled north-up from the orthophoto at the layer's metres per pixel (with a margin,
so detection sees across block edges), described, and each cell keeps its `per_cell` strongest
features. One row of blocks is one shard (`feature-shards/row_NNNNN.npz`, written atomically), so
an interrupted build resumes where it stopped; shards of one row hold whole grid rows, so joining
them in order gives the cell-sorted layer without a global sort. The bank manifest is updated
last, atomically, with the layer's description and file hashes.
Python 3.8 compatible; OpenCV, pyproj (for the orthophoto's CRS) and tqdm are needed here.
"""

import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from meanloc.errors import MeanlocError

from ..artifacts import (
    atomic_path,
    atomic_write_json,
    ensure_writable_dir,
    read_json,
    sha256_bytes,
)
from ..features.extract import FeatureSpec, LocalFeatures, make_extractor, strongest_per_cell
from ..geo.orthophoto import Orthophoto, area_resample
from .feature_layer import (
    CELLS_FILE,
    DESCRIPTORS_FILE,
    FEATURES_DIR,
    KEYPOINT_COLUMNS,
    KEYPOINTS_FILE,
    LAYER_FILES,
    MANIFEST_KEY,
    FeatureLayer,
    Grid,
    LayerMeta,
    has_layer,
)
from .frame import LocalFrame
from .sharding import Ranks, wait_for_shards
from .store import MANIFEST_FILE, manifest_frame, read_manifest, set_manifest_section

SHARDS_DIR = "feature-shards"
PLAN_FILE = "plan.json"
# Features are extracted no finer than this by default: finer costs query time quadratically
# and the drone's far field is coarser anyway (bench/RESULTS.md, "local features").
DEFAULT_MIN_GSD_M = 0.8


@dataclass(frozen=True)
class LayerParams:
    spec: FeatureSpec = field(default_factory=FeatureSpec)
    gsd_m: Optional[float] = None  # None: the orthophoto's, but no finer than DEFAULT_MIN_GSD_M
    cell_m: float = 50.0
    # 64 per 50 m cell: <= 25.6k features per km², ~3.6 MB/km² for SIFT (the budget is 5 MB).
    per_cell: int = 64
    block_cells: int = 16

    def validate(self) -> None:
        self.spec.validate()
        if self.gsd_m is not None and not self.gsd_m > 0:
            raise MeanlocError("--feature-gsd-m must be > 0, got {}".format(self.gsd_m))
        if not self.cell_m > 0 or self.per_cell < 1 or self.block_cells < 1:
            raise MeanlocError("feature cells must be > 0 m, with >= 1 feature per cell")


def build_feature_layer(bank_dir: Path, ortho: Orthophoto, params: LayerParams, resume: bool = False,
                        progress: bool = True, overwrite: bool = False,
                        ranks: Optional[Ranks] = None) -> Optional[LayerMeta]:
    """Extract the layer for the bank in `bank_dir` (built from `ortho`) and register it in its
    manifest. A layer built with the same plan is reused; `overwrite` replaces a different one
    (or an unfinished build of one). Under torchrun (`ranks`, default from the environment) every
    rank extracts its rows of blocks and rank 0 assembles them; the other ranks return None."""
    params.validate()
    bank_dir = Path(bank_dir)
    ranks = Ranks.from_environment() if ranks is None else ranks
    if not ranks.is_main:  # rank 0 writes the bank the layer is expressed in
        wait_for_shards([0], lambda _: (bank_dir / MANIFEST_FILE).exists(), what="bank manifest")
    manifest = read_manifest(bank_dir)
    source = (Path(str(ortho.source)).name or "orthophoto", str(ortho.source_sha256))
    if source not in {(str(s["id"]), str(s["sha256"])) for s in manifest["sources"]}:
        raise MeanlocError("{} was not built from {}: local features must come from the bank's own "
                           "orthophoto".format(bank_dir, ortho.source))
    frame = manifest_frame(manifest)
    gsd = float(params.gsd_m or max(ortho.gsd, DEFAULT_MIN_GSD_M))
    grid = _grid_for(ortho, frame, params.cell_m)
    plan = {"spec": params.spec.to_dict(), "gsd_m": gsd, "per_cell": params.per_cell,
            "block_cells": params.block_cells, "grid": grid.to_dict(), "source": list(source),
            "local_frame": frame.to_dict()}
    plan_sha = sha256_bytes(json.dumps(plan, sort_keys=True).encode("utf-8"))
    if has_layer(manifest) and manifest[MANIFEST_KEY].get("plan_sha256") == plan_sha:
        return LayerMeta.from_manifest(manifest, str(bank_dir / MANIFEST_FILE))
    if has_layer(manifest) and not overwrite:
        raise MeanlocError("{} already has a local feature layer built differently; pass --overwrite to replace "
                           "it".format(bank_dir))
    if overwrite and ranks.distributed:
        raise MeanlocError("--overwrite cannot be used under torchrun; remove {} first".format(bank_dir / SHARDS_DIR))
    if overwrite and not resume and (bank_dir / SHARDS_DIR).exists():
        shutil.rmtree(str(bank_dir / SHARDS_DIR))
    shard_dir = _prepare_shards(bank_dir, plan, plan_sha, resume, ranks)
    extractor = make_extractor(params.spec)
    block_rows = (grid.ny + params.block_cells - 1) // params.block_cells
    rows = [shard_dir / "row_{:05d}.npz".format(r) for r in range(block_rows)]
    from tqdm import tqdm

    own = ranks.own_shards(block_rows)
    with tqdm(total=len(own), unit="row", desc="local features", disable=not progress) as bar:
        for block_row in own:
            if not rows[block_row].exists():
                _write_shard(rows[block_row], _extract_block_row(ortho, frame, grid, gsd, params, extractor, block_row))
            bar.update(1)
    if not ranks.is_main:
        return None
    wait_for_shards(range(block_rows), lambda r: rows[r].exists(), what="local feature rows")
    meta = LayerMeta(params.spec, gsd, params.per_cell, grid, 0, extractor.descriptor_size, (source,))
    meta = _assemble(bank_dir, meta, rows)
    _register(bank_dir, meta, plan_sha)
    shutil.rmtree(str(shard_dir))
    return meta


def _grid_for(ortho: Orthophoto, frame: LocalFrame, cell_m: float) -> Grid:
    """The cell grid covering the orthophoto's extent in the bank's local frame."""
    cols = np.array([0.0, 0.5, 1.0, 1.0, 1.0, 0.5, 0.0, 0.0]) * ortho.width
    rows = np.array([0.0, 0.0, 0.0, 0.5, 1.0, 1.0, 1.0, 0.5]) * ortho.height
    x, y = _pixels_to_local(ortho, frame, cols, rows)
    return Grid.covering((x.min(), y.min()), (x.max(), y.max()), cell_m)


def _pixels_to_local(ortho: Orthophoto, frame: LocalFrame, cols: np.ndarray, rows: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    lon, lat = ortho.world_to_lonlat(*ortho.pixel_to_world(cols, rows))
    return frame.to_xy(lat, lon)


def _local_to_pixel_affine(ortho: Orthophoto, frame: LocalFrame, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """3x3 affine local metres -> orthophoto pixels (corner convention), exact at the 3 points.
    Over a block of a few hundred metres the map projection is affine to well under a millimetre."""
    lat, lon = frame.to_latlon(x, y)
    cols, rows = ortho.world_to_pixel(*ortho.lonlat_to_world(lon, lat))
    src = np.column_stack([x, y, np.ones(3)])
    solution = np.linalg.solve(src, np.column_stack([cols, rows]))
    affine = np.eye(3)
    affine[:2] = solution.T
    return affine


def _extract_block_row(ortho: Orthophoto, frame: LocalFrame, grid: Grid, gsd: float, params: LayerParams,
                       extractor: Any, block_row: int) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(keypoints (n, 3), descriptors (n, D), flat cell (n,)) of one row of blocks, sorted by cell."""
    parts: List[Tuple[np.ndarray, np.ndarray, np.ndarray]] = []
    block_m = params.block_cells * grid.cell_m
    margin_m = 16 * gsd
    row0 = block_row * params.block_cells
    y0 = grid.y0 + row0 * grid.cell_m
    y1 = min(grid.y0 + grid.ny * grid.cell_m, y0 + block_m)
    for col0 in range(0, grid.nx, params.block_cells):
        x0 = grid.x0 + col0 * grid.cell_m
        x1 = min(grid.x0 + grid.nx * grid.cell_m, x0 + block_m)
        found = _extract_block(ortho, frame, gsd, extractor, (x0 - margin_m, y0 - margin_m, x1 + margin_m, y1 + margin_m))
        if found is None:
            continue
        xy, size_m, features = found
        core = (xy[:, 0] >= x0) & (xy[:, 0] < x1) & (xy[:, 1] >= y0) & (xy[:, 1] < y1)
        keep = np.flatnonzero(core)
        keep = keep[strongest_per_cell(xy[keep], features.response[keep], grid.cell_m, params.per_cell,
                                       origin=np.array([grid.x0, grid.y0]))]
        keypoints = np.column_stack([xy[keep], size_m[keep], features.response[keep]]).astype(np.float32)
        parts.append((keypoints, features.descriptors[keep], grid.cell_of(xy[keep])))
    if not parts:
        return (np.zeros((0, KEYPOINT_COLUMNS), np.float32), np.zeros((0, extractor.descriptor_size), np.uint8),
                np.zeros(0, np.int64))
    keypoints, descriptors, cells = (np.concatenate(p) for p in zip(*parts))
    order = np.argsort(cells, kind="stable")
    return keypoints[order], descriptors[order], cells[order]


def _extract_block(ortho: Orthophoto, frame: LocalFrame, gsd: float, extractor: Any,
                   box: Tuple[float, float, float, float]) -> Optional[Tuple[np.ndarray, np.ndarray, LocalFeatures]]:
    """Features of the north-up local-frame box (x0, y0, x1, y1) resampled from the orthophoto at
    `gsd`: (local xy (n, 2), size in metres (n,), features), or None where it has no imagery."""
    import cv2

    x0, y0, x1, y1 = box
    width, height = max(1, round((x1 - x0) / gsd)), max(1, round((y1 - y0) / gsd))
    # block pixel (corner convention) -> local metres: x grows east, rows grow south.
    to_local = np.array([[gsd, 0.0, x0], [0.0, -gsd, y1], [0.0, 0.0, 1.0]])
    anchors = to_local @ np.array([[0.0, width, 0.0], [0.0, 0.0, height], [1.0, 1.0, 1.0]])
    to_pixels = _local_to_pixel_affine(ortho, frame, anchors[0], anchors[1]) @ to_local
    valid = ortho.warp_valid(to_pixels, (width, height))
    if not valid.any():
        return None
    image = area_resample(ortho.image, to_pixels, (width, height))
    # Keep detections away from no-data edges, whose artificial contrast matches nothing real.
    valid = cv2.erode(valid.view(np.uint8), np.ones((5, 5), np.uint8)).astype(bool)
    features = extractor.detect_and_describe(image, valid)
    if len(features) == 0:
        return None
    xy = np.column_stack([x0 + features.xy[:, 0] * gsd, y1 - features.xy[:, 1] * gsd])
    return xy, features.size * gsd, features


def _prepare_shards(bank_dir: Path, plan: Mapping[str, Any], plan_sha: str, resume: bool, ranks: Ranks) -> Path:
    """Rank 0 checks or creates the shard folder and its plan; the other ranks wait for it."""
    shard_dir = bank_dir / SHARDS_DIR
    plan_path = shard_dir / PLAN_FILE
    if not ranks.is_main:
        wait_for_shards([0], lambda _: plan_path.exists() and read_json(plan_path, "feature build plan").get(
            "plan_sha256") == plan_sha, what="local feature plan")
        return shard_dir
    if plan_path.exists():
        if read_json(plan_path, "feature build plan").get("plan_sha256") != plan_sha:
            raise MeanlocError("cannot resume the local features of {}: the unfinished build used other parameters; "
                               "remove {}".format(bank_dir, shard_dir))
        if not resume:
            raise MeanlocError("{} holds an unfinished local feature build; pass --resume to continue it".format(bank_dir))
        return shard_dir
    ensure_writable_dir(shard_dir)
    atomic_write_json(plan_path, dict(plan, plan_sha256=plan_sha))
    return shard_dir


def _write_shard(path: Path, arrays: Tuple[np.ndarray, np.ndarray, np.ndarray]) -> None:
    keypoints, descriptors, cells = arrays
    with atomic_path(path) as tmp, open(str(tmp), "wb") as handle:
        np.savez(handle, keypoints=keypoints, descriptors=descriptors, cells=cells)


def _read_shard(path: Path) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    try:
        with np.load(str(path), allow_pickle=False) as shard:
            return shard["keypoints"], shard["descriptors"], shard["cells"]
    except (OSError, ValueError, KeyError) as exc:
        raise MeanlocError("feature shard {} is damaged ({}); delete it and re-run with --resume".format(path, exc)) from None


def _assemble(bank_dir: Path, meta: LayerMeta, shards: Sequence[Path]) -> LayerMeta:
    """Stream the cell-sorted shards into the layer files; returns the meta with its count."""
    return write_layer(bank_dir, meta, lambda: (_read_shard(path) for path in shards))


PartsFactory = Callable[[], Iterator[Tuple[np.ndarray, np.ndarray, np.ndarray]]]


def write_layer(bank_dir: Path, meta: LayerMeta, parts: PartsFactory) -> LayerMeta:
    """Write the layer files from (keypoints, descriptors, flat cell) parts in cell order. `parts`
    is called twice (count, then copy into memory-mapped files), so nothing is held whole."""
    ensure_writable_dir(bank_dir / FEATURES_DIR)
    counts = np.zeros(meta.grid.cells, dtype=np.int64)
    last_cell = -1
    for _, _, cells in parts():
        if len(cells) and (cells[0] < last_cell or np.any(np.diff(cells) < 0)):
            raise MeanlocError("internal: local feature parts are not in cell order")
        last_cell = int(cells[-1]) if len(cells) else last_cell
        counts += np.bincount(cells, minlength=meta.grid.cells)
    total = int(counts.sum())
    with atomic_path(bank_dir / KEYPOINTS_FILE) as kp_tmp, atomic_path(bank_dir / DESCRIPTORS_FILE) as desc_tmp:
        keypoints = np.lib.format.open_memmap(str(kp_tmp), mode="w+", dtype=np.float32, shape=(total, KEYPOINT_COLUMNS))
        descriptors = np.lib.format.open_memmap(str(desc_tmp), mode="w+", dtype=np.uint8,
                                                shape=(total, meta.descriptor_size))
        filled = 0
        for part_keypoints, part_descriptors, _ in parts():
            keypoints[filled:filled + len(part_keypoints)] = part_keypoints
            descriptors[filled:filled + len(part_keypoints)] = part_descriptors
            filled += len(part_keypoints)
        keypoints.flush()
        descriptors.flush()
        del keypoints, descriptors
    offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    with atomic_path(bank_dir / CELLS_FILE) as tmp, open(str(tmp), "wb") as handle:
        np.save(handle, offsets, allow_pickle=False)
    return LayerMeta(meta.spec, meta.gsd_m, meta.per_cell, meta.grid, total, meta.descriptor_size, meta.sources)


def _register(bank_dir: Path, meta: LayerMeta, plan_sha: Optional[str]) -> None:
    """Add the layer's description and file hashes to the bank manifest (atomic rewrite)."""
    set_manifest_section(bank_dir, MANIFEST_KEY, dict(meta.to_dict(), plan_sha256=plan_sha), LAYER_FILES)


def unmergeable_reason(manifests: Sequence[Mapping[str, Any]]) -> Optional[str]:
    """Why the banks' feature layers cannot be merged into one (None: they can)."""
    if not all(has_layer(m) for m in manifests):
        return "not every input bank has a local feature layer"
    metas = [LayerMeta.from_manifest(m, "bank manifest") for m in manifests]
    keys = {(m.spec, m.gsd_m, m.per_cell, m.grid.cell_m) for m in metas}
    return None if len(keys) == 1 else "the input banks' local feature layers were extracted differently"


def merge_feature_layers(bank_dirs: Sequence[Path], manifests: Sequence[Mapping[str, Any]], out_dir: Path) -> None:
    """Give the merged bank in `out_dir` the union of its inputs' layers (`unmergeable_reason`
    must be None), re-expressed in the merged bank's local frame."""
    layers = [FeatureLayer.open(d, m) for d, m in zip(bank_dirs, manifests)]
    first = layers[0].meta
    frame = manifest_frame(read_manifest(out_dir))
    moved = []
    for layer, manifest in zip(layers, manifests):
        lat, lon = manifest_frame(manifest).to_latlon(layer.keypoints[:, 0], layer.keypoints[:, 1])
        x, y = frame.to_xy(lat, lon)
        moved.append((np.column_stack([x, y, layer.keypoints[:, 2:]]), np.asarray(layer.descriptors)))
    keypoints = np.concatenate([m[0] for m in moved])
    descriptors = np.concatenate([m[1] for m in moved])
    grid = Grid.covering(keypoints[:, :2].min(axis=0), keypoints[:, :2].max(axis=0), first.grid.cell_m)
    cells = grid.cell_of(keypoints[:, :2])
    # Where the inputs overlap, a cell keeps its strongest features: still at most `per_cell`.
    keep = strongest_per_cell(keypoints[:, :2], keypoints[:, 3], grid.cell_m, first.per_cell,
                              origin=np.array([grid.x0, grid.y0]))
    order = keep[np.argsort(cells[keep], kind="stable")]
    sources = tuple(dict.fromkeys(s for layer in layers for s in layer.meta.sources))
    merged = (keypoints[order].astype(np.float32), descriptors[order], cells[order])
    meta = write_layer(out_dir, LayerMeta(first.spec, first.gsd_m, first.per_cell, grid, 0, first.descriptor_size,
                                          sources), lambda: iter([merged]))
    _register(out_dir, meta, None)
