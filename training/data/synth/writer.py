"""Write a University-1652-layout cross-view dataset from an orthophoto (synthetic or a user's).

```
<out>/train/satellite/<id>/<id>.jpg (+ <id>.json)      <out>/train/drone/<id>/image-01.jpeg (+ .json) ...
<out>/val/{query_drone, gallery_satellite, query_satellite, gallery_drone}/<id>/...
<out>/test/{query_drone, gallery_satellite, query_satellite, gallery_drone}/<id>/...
<out>/locations.csv     id, split, centre E/N and lat/lon, 4 corners lat/lon (clockwise from TL), is_distractor
<out>/dataset.json      manifest: generator version, seed, every parameter, input hashes, statistics, notes
<out>/world/*.tif       the synthetic world GeoTIFFs (synthetic source only; JPEG-compressed at
                        quality 92, so tiles cut from them differ from the dataset's by compression noise)
```

Test galleries include distractor classes (satellite tile and drone views, no query), so both
gallery conventions of §3.4 can be reported. Satellite tiles come from the satellite source;
drone views from the drone source (a second date when there is one: cross-source, §5.6).

The tree is written into `<out>.partial` and renamed to `<out>` only when complete, so an
interrupted run never looks finished. Rendering runs in worker processes started afresh
(forkserver), each sent the orthophotos once; every random draw is seeded per location and
view, so the output does not depend on the number of workers.
"""

from __future__ import annotations

import csv
import io
import multiprocessing
import os
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import cv2
import numpy as np

from meanloc.errors import MeanlocError
from meanloc.runtime.artifacts import atomic_write_json, atomic_write_text, new_manifest, process_alive
from meanloc.runtime.geo.camera import CameraIntrinsics
from meanloc.runtime.geo.orthophoto import CORNER_NAMES, Orthophoto

from .locations import (
    AreaPlan,
    GridPlan,
    Location,
    inside_polygons,
    plan_for_counts,
    plan_user_area,
    split_gap_m,
)
from .views import ViewSampling, sample_view, view_sidecar
from .world import DEFAULT_ORIGIN_LONLAT, GENERATOR_VERSION, WorldSpec, generate_world_pair

DATASET_KIND = "synthetic-crossview-dataset"
WRITER_VERSION = "synth-writer-1"
# Rasters rotated less than this (e.g. meridian convergence of corner-referenced images) are fine.
MAX_ROTATION_DEG = 10.0

FLAT_WORLD_NOTES = [
    "Flat world: drone views are ground-plane homographies of an orthophoto; no facades, parallax, "
    "occlusion changes or relief displacement (real oblique frames and University-1652 have them).",
    "Shadows and lighting are baked into the orthophoto(s); they follow the acquisition date, not the simulated time.",
    "Moving objects are frozen; seasonal change only comes from the second source date, if any.",
    "Orthophoto artefacts (roof lean, seamlines, resampling blur) are inherited by every rendered view.",
    "With a single source (drone views and satellite tiles from one image) the task is far easier than real "
    "cross-view matching; the cross-source setting and real flights are the honest measures.",
    "Results on this data are an optimistic proxy for real-world accuracy.",
]


@dataclass(frozen=True)
class SynthConfig:
    """Every parameter of a synthetic dataset (all recorded in dataset.json)."""

    preset: str = "demo"
    seed: int = 0
    tile_side_m: float = 200.0
    tile_px: int = 256
    view_aspect: float = 4.0 / 3.0  # drone frame width / height (4:3 like a DJI still)
    spacing_m: float = 50.0
    rows: int = 20
    n_train: int = 600
    n_val: int = 60
    n_test: int = 120  # query classes
    n_distractors: int = 40  # extra test gallery classes without queries
    views_train: int = 6
    views_eval: int = 4
    world_gsd_m: float = 1.2
    origin_lonlat: tuple[float, float] = DEFAULT_ORIGIN_LONLAT
    cross_source: bool = True  # drone views from the second date of the synthetic world
    sampling: ViewSampling = field(default_factory=ViewSampling)
    jpeg_quality: int = 95
    workers: int = 0  # 0 = all cores
    # A user's orthophoto (locations.plan_user_area): split layout, clearance between the splits'
    # ground squares (None: half a tile side) and an optional test area (rings of (lon, lat)).
    split_layout: str = "auto"
    clearance_m: float | None = None
    test_area_lonlat: tuple[tuple[tuple[float, float], ...], ...] | None = None

    @property
    def view_size(self) -> tuple[int, int]:
        return self.tile_px, max(8, round(self.tile_px / self.view_aspect))

    def intrinsics(self) -> CameraIntrinsics:
        return self.sampling.intrinsics(*self.view_size)

    def validate(self) -> None:
        if self.tile_px < 16 or self.tile_side_m <= 0:
            raise MeanlocError("tile size must be >= 16 px and the tile side positive")
        if self.views_train < 1 or self.views_eval < 1:
            raise MeanlocError("need at least one drone view per location")
        if self.view_aspect <= 0.2 or self.view_aspect > 5:
            raise MeanlocError("view aspect (width / height) must be within 0.2..5")
        lo, hi = self.sampling.pitch_deg
        if not 0 <= lo <= hi < 89:
            raise MeanlocError(f"pitch range must satisfy 0 <= min <= max < 89, got {self.sampling.pitch_deg}")
        if not 0 < self.sampling.altitude_m[0] <= self.sampling.altitude_m[1]:
            raise MeanlocError(f"altitude range must be positive and ordered, got {self.sampling.altitude_m}")
        if not 1 <= self.jpeg_quality <= 100:
            raise MeanlocError("JPEG quality must be within 1..100")
        if self.clearance_m is not None and self.clearance_m < 0:
            raise MeanlocError(f"clearance must not be negative, got {self.clearance_m} m")
        self.sampling.validate()

    @property
    def clearance(self) -> float:
        return self.tile_side_m / 2.0 if self.clearance_m is None else self.clearance_m

    def to_dict(self) -> dict:
        out = asdict(self)
        out["view_size"] = list(self.view_size)
        return out


PRESETS = {
    # The demo: default world and dataset in about 1-2 minutes on 2 cores; pinned difficulty (§5.9).
    "demo": SynthConfig(),
    # For tests: seconds. Same geometry and difficulty, tiny images and a coarse world.
    "tiny": SynthConfig(preset="tiny", tile_px=48, rows=3, n_train=9, n_val=3, n_test=3, n_distractors=2,
                        views_train=2, views_eval=2, world_gsd_m=4.0, workers=1),
    # The paper's input size (384 px); needs a finer world and more time.
    "paper": SynthConfig(preset="paper", tile_px=384, world_gsd_m=0.5, views_train=8, views_eval=8),
}


def preset_config(name: str, **overrides) -> SynthConfig:
    if name not in PRESETS:
        raise MeanlocError(f"unknown preset '{name}' (valid: {', '.join(PRESETS)})")
    sampling_keys = {f for f in ViewSampling.__dataclass_fields__}
    sampling_over = {k: v for k, v in overrides.items() if k in sampling_keys and v is not None}
    other = {k: v for k, v in overrides.items() if k not in sampling_keys and v is not None}
    base = PRESETS[name]
    config = replace(base, sampling=replace(base.sampling, **sampling_over), **other)
    config.validate()
    return config


@dataclass
class Sources:
    """Where satellite tiles and drone views come from, and how to describe them."""

    satellite: Orthophoto
    drone: Orthophoto
    kind: str  # "synthetic" or "user"
    inputs: dict  # name -> {"path", "sha256"} of every input file


def geometry(config: SynthConfig) -> tuple[float, float, float]:
    """(reach, margin, buffer) in metres for this camera and pose distribution.

    The synthetic world is generated to fit (margin = the footprint reach). On a user's orthophoto
    with `validity="query"` a location only needs its tile square plus the look-at jitter on valid
    imagery (margin = half a tile + the jitter); the buffer is then the splits' centre gap."""
    reach = config.sampling.reach_m(config.intrinsics())
    if config.sampling.validity == "query":
        margin = config.tile_side_m / 2.0 + config.sampling.target_jitter_m
        return reach, margin, config.tile_side_m + 2.0 * config.sampling.target_jitter_m + config.clearance
    margin = max(reach, config.tile_side_m / 2.0 * 1.5) + config.spacing_m / 2.0
    # §5.7 asks for at least one tile side plus the reach (no view touches another split's tiles);
    # twice the reach also keeps the drone footprints of different splits apart.
    buffer = config.tile_side_m + 2.0 * reach
    return reach, margin, buffer


def recommended_input_px(tile_side_m: float, gsd_m: float, floor_mpp: float = 0.8) -> int:
    """Default network input side for a dataset: about two source pixels per input pixel (the
    orthophoto's own detail, not finer than `floor_mpp` m), a multiple of 32 within 64..384.
    A 100 m tile of a 0.5 m orthophoto gets 96 px (1.04 m per pixel), not 64 (1.6 m)."""
    metres_per_px = max(2.0 * gsd_m, floor_mpp)
    return int(min(384, max(64, 32 * round(tile_side_m / metres_per_px / 32.0))))


def synthetic_sources(config: SynthConfig) -> tuple[Sources, GridPlan]:
    """Generate a world just large enough for the requested locations (and its second date)."""
    _, margin, buffer = geometry(config)
    plan = plan_for_counts(config.n_train, config.n_val, config.n_test + config.n_distractors, config.rows,
                           config.spacing_m, buffer, margin)
    width, height = plan.extent_m()
    spec = WorldSpec(seed=config.seed, width_m=round(width + 1), height_m=round(height + 1),
                     gsd_m=config.world_gsd_m, origin_lonlat=tuple(config.origin_lonlat))
    date1, date2 = generate_world_pair(spec, workers=config.workers or (os.cpu_count() or 1))
    drone = date2 if config.cross_source else date1
    return Sources(date1, drone, "synthetic", {}), plan


def user_sources(config: SynthConfig, satellite: Orthophoto, drone: Orthophoto | None) -> tuple[Sources, AreaPlan]:
    """A user's orthophoto (and optionally a co-registered second one for the drone views)."""
    for name, ortho in (("satellite", satellite), ("drone", drone)):
        if ortho is not None and abs(ortho.rotation_deg) > MAX_ROTATION_DEG:
            raise MeanlocError(f"the {name} orthophoto is rotated {ortho.rotation_deg:.1f} deg from north-up; the "
                               "location grid is north-aligned: warp it north-up first (e.g. gdalwarp)")
    if drone is not None and drone.crs != satellite.crs:
        raise MeanlocError(f"the drone orthophoto is in {drone.crs} but the satellite one in {satellite.crs}; "
                           "reproject one so both share a CRS (e.g. gdalwarp -t_srs)")
    second = drone or satellite
    _, margin, _ = geometry(config)
    bounds = _intersection(satellite.bounds_world(), second.bounds_world())
    test_polygons = None
    if config.test_area_lonlat is not None:
        test_polygons = [np.stack(satellite.lonlat_to_world(np.array([p[0] for p in ring]), np.array([p[1] for p in ring])),
                                  axis=1) for ring in config.test_area_lonlat]
    plan = plan_user_area(bounds, lambda x, y: satellite.contains_world(x, y) & second.contains_world(x, y),
                          config.tile_side_m, config.spacing_m, config.clearance, config.sampling.target_jitter_m,
                          margin, config.split_layout, test_polygons)
    inputs = {"satellite": {"path": satellite.source, "sha256": satellite.source_sha256}}
    if drone is not None:
        inputs["drone"] = {"path": drone.source, "sha256": drone.source_sha256}
    return Sources(satellite, second, "user", inputs), plan


def _intersection(a: tuple[float, float, float, float], b: tuple[float, float, float, float]) -> tuple[float, ...]:
    return max(a[0], b[0]), max(a[1], b[1]), min(a[2], b[2]), min(a[3], b[3])


# -- worker side ------------------------------------------------------------------------------
# The job a worker renders for: set in the parent, and sent to each worker once by `_start_worker`.
_JOB: dict = {}


def _start_worker(job: dict) -> None:
    _JOB.update(job)
    cv2.setNumThreads(1)  # one process per core: OpenCV's own threads would oversubscribe


def _encode(image: np.ndarray, quality: int) -> bytes:
    ok, buf = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise MeanlocError("JPEG encoding failed")
    return buf.tobytes()


def _write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


def _json_bytes(payload: dict) -> bytes:
    import json

    return (json.dumps(payload, indent=1, sort_keys=True) + "\n").encode("utf-8")


def _folders(loc: Location) -> tuple[list[str], list[str]]:
    """(satellite folders, drone folders) a location's files go to, relative to the tree root."""
    if loc.split == "train":
        return ["train/satellite"], ["train/drone"]
    gallery_sat, gallery_drone = [f"{loc.split}/gallery_satellite"], [f"{loc.split}/gallery_drone"]
    if loc.is_distractor:
        return gallery_sat, gallery_drone
    return gallery_sat + [f"{loc.split}/query_satellite"], gallery_drone + [f"{loc.split}/query_drone"]


def _place(root: Path, folders: list[str], loc_id: str, name: str, data: bytes) -> None:
    """Write once, hard-link into the other folders (same bytes, no copies on disk)."""
    first = root / folders[0] / loc_id / name
    _write(first, data)
    for folder in folders[1:]:
        other = root / folder / loc_id / name
        other.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.link(first, other)
        except OSError:
            shutil.copyfile(first, other)


def _render_location(loc: Location) -> dict:
    config: SynthConfig = _JOB["config"]
    sources: Sources = _JOB["sources"]
    root: Path = _JOB["root"]
    sat = sources.satellite
    tile, tile_valid = sat.crop_north_up((loc.x, loc.y), config.tile_side_m, config.tile_px)
    result = {"id": loc.id, "tile_valid": tile_valid, "views": 0, "failed_views": 0, "retries": 0,
              "pitch_lowered": 0, "poses": [], "footprints": []}
    if tile_valid < 0.99:
        result["dropped"] = f"satellite tile has {1 - tile_valid:.1%} no-data"
        return result
    sat_folders, drone_folders = _folders(loc)
    intr = config.intrinsics()
    n_views = config.views_train if loc.split == "train" else config.views_eval
    drone_source = "drone" if sources.drone is not sources.satellite else "satellite"
    written = []
    for v in range(n_views):
        seed = [config.seed, loc.index, v]
        sampled = sample_view(sources.drone, (loc.x, loc.y), intr, config.sampling, _JOB["pitch_cap"],
                              np.random.default_rng([*seed, 1]), np.random.default_rng([*seed, 2]),
                              query_side_m=config.tile_side_m)
        if sampled is None:
            result["failed_views"] += 1
            continue
        result["retries"] += sampled.retries
        result["pitch_lowered"] += int(sampled.pose.pitch_deg < sampled.pitch_sampled_deg)
        result["poses"].append([sampled.pose.altitude_m, sampled.pose.pitch_deg, sampled.pose.yaw_deg,
                                sampled.pose.roll_deg, sampled.query_coverage, sampled.view.valid_fraction])
        result["footprints"].append(sampled.view.footprint_xy.tolist())
        name = f"image-{len(written) + 1:02d}"
        written.append((name, _encode(sampled.image_bgr, config.jpeg_quality),
                        view_sidecar(sources.drone, sampled, intr, seed, drone_source)))
    if not written:
        result["dropped"] = "no drone pose fits the valid imagery"
        return result
    for name, jpeg, sidecar in written:
        sidecar["location_id"] = loc.id
        _place(root, drone_folders, loc.id, name + ".jpeg", jpeg)
        _place(root, drone_folders, loc.id, name + ".json", _json_bytes(sidecar))
    _place(root, sat_folders, loc.id, loc.id + ".jpg", _encode(tile, config.jpeg_quality))
    _place(root, sat_folders, loc.id, loc.id + ".json", _json_bytes(_tile_sidecar(sat, loc, config, tile_valid)))
    result["views"] = len(written)
    return result


def tile_corners_latlon(ortho: Orthophoto, x: float, y: float, side_m: float) -> list[list[float]]:
    """(lat, lon) of a north-up tile's corners, clockwise from the top-left."""
    half = side_m / 2.0
    xs = np.array([x - half, x + half, x + half, x - half])
    ys = np.array([y + half, y + half, y - half, y - half])
    lon, lat = ortho.world_to_lonlat(xs, ys)
    return [[float(a), float(o)] for a, o in zip(lat, lon)]


def _tile_sidecar(ortho: Orthophoto, loc: Location, config: SynthConfig, valid: float) -> dict:
    lon, lat = ortho.world_to_lonlat(loc.x, loc.y)
    return {"id": loc.id, "split": loc.split, "is_distractor": loc.is_distractor, "crs": ortho.crs,
            "grid_row": loc.row, "grid_col": loc.col, "zoom_level": 0, "source": ortho.source,
            "source_sha256": ortho.source_sha256,
            "centre_en": [loc.x, loc.y], "centre_latlon": [float(lat), float(lon)],
            "corners_latlon": tile_corners_latlon(ortho, loc.x, loc.y, config.tile_side_m),
            "corner_order": list(CORNER_NAMES), "side_m": config.tile_side_m, "size_px": config.tile_px,
            "gsd_m": config.tile_side_m / config.tile_px, "north_up": True, "valid_fraction": valid}


# -- parent side ------------------------------------------------------------------------------
def _iterate(locations: list[Location], workers: int) -> Iterator[dict]:
    if workers <= 1:
        for loc in locations:
            yield _render_location(loc)
        return
    # Not fork: a parent that has run threads (OpenMP in torch or FAISS, OpenCV's pool, PROJ's
    # database) can fork a child that inherits one of their locks held, and that child waits
    # forever; a full test run hung that way now and then. Fresh workers cost ~1 s and one copy
    # of the orthophotos each (pickled arrays: ~150 MB for the demo world, 0.1 s).
    methods = multiprocessing.get_all_start_methods()
    context = multiprocessing.get_context("forkserver" if "forkserver" in methods else "spawn")
    with context.Pool(workers, initializer=_start_worker, initargs=(dict(_JOB),)) as pool:
        yield from pool.imap_unordered(_render_location, locations, chunksize=4)


def _locations_csv(ortho: Orthophoto, locations: list[Location], results: dict, side_m: float) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    corner_cols = [f"{c}_{k}" for c in ("tl", "tr", "br", "bl") for k in ("lat", "lon")]
    writer.writerow(["id", "split", "centre_e", "centre_n", "lat", "lon", *corner_cols, "is_distractor",
                     "n_drone_views"])
    for loc in locations:
        res = results[loc.id]
        if "dropped" in res:
            continue
        lon, lat = ortho.world_to_lonlat(loc.x, loc.y)
        corners = [f"{v:.8f}" for pair in tile_corners_latlon(ortho, loc.x, loc.y, side_m) for v in pair]
        writer.writerow([loc.id, loc.split, f"{loc.x:.3f}", f"{loc.y:.3f}", f"{float(lat):.8f}", f"{float(lon):.8f}",
                         *corners, int(loc.is_distractor), res["views"]])
    return buf.getvalue()


def _summary(locations: list[Location], results: dict) -> dict:
    kept = [loc for loc in locations if "dropped" not in results[loc.id]]
    poses = np.array([p for r in results.values() for p in r["poses"]]) if kept else np.zeros((0, 6))
    counts = {}
    for split in ("train", "val", "test"):
        in_split = [loc for loc in kept if loc.split == split]
        counts[split] = {"locations": len(in_split),
                         "query_classes": sum(not loc.is_distractor for loc in in_split),
                         "distractor_classes": sum(loc.is_distractor for loc in in_split),
                         "drone_views": sum(results[loc.id]["views"] for loc in in_split)}

    def describe(column: int) -> dict:
        values = poses[:, column] if len(poses) else np.zeros(1)
        return {"min": float(values.min()), "mean": float(values.mean()), "max": float(values.max())}

    return {
        "counts": counts,
        "dropped_locations": {r["id"]: r["dropped"] for r in results.values() if "dropped" in r},
        "views_failed": sum(r["failed_views"] for r in results.values()),
        "pose_retries": sum(r["retries"] for r in results.values()),
        "pitch_lowered_for_ray_limit": sum(r["pitch_lowered"] for r in results.values()),
        "rendered_altitude_m": describe(0), "rendered_pitch_deg": describe(1), "rendered_yaw_deg": describe(2),
        "rendered_roll_deg": describe(3),
        # Share of the look-at ground square (tile side) each view shows: what a pose-aware query covers.
        "query_coverage": {**describe(4), "p10": float(np.percentile(poses[:, 4], 10)) if len(poses) else 0.0},
        "view_valid_fraction": describe(5),
    }


def _footprint_overlap(locations: list[Location], results: dict, tile_side_m: float) -> dict:
    """How often a training view's footprint reaches the tile square centre of a val or test
    location (views see far beyond their query square: the price of small areas)."""
    held_out = {split: np.array([[loc.x, loc.y] for loc in locations if loc.split == split and "dropped" not in
                                 results[loc.id]]) for split in ("val", "test")}
    counts = {"val": 0, "test": 0}
    total = 0
    for loc in locations:
        if loc.split != "train":
            continue
        for polygon in results[loc.id]["footprints"]:
            total += 1
            ring = [np.asarray(polygon)]
            for split, centres in held_out.items():
                if len(centres) and inside_polygons(centres[:, 0], centres[:, 1], ring).any():
                    counts[split] += 1
    return {f"train_views_seeing_{split}_centres": round(count / max(1, total), 4) for split, count in counts.items()}


def write_dataset(out: str | Path, config: SynthConfig, sources: Sources, plan: GridPlan | AreaPlan, overwrite: bool = False,
                  progress: Callable[[int], object] | None = None, save_world: bool = True) -> dict:
    """Render every location into `<out>.partial`, then rename it to `<out>`. Returns the manifest.

    `progress(n)` is called after each finished location (e.g. a tqdm update)."""
    out = Path(out)
    if out.exists() and not overwrite:
        raise MeanlocError(f"{out} already exists; pass --overwrite to replace it")
    partial = out.with_name(out.name + ".partial")
    if partial.exists():
        shutil.rmtree(partial)  # left over from an interrupted run
    for old in out.parent.glob(f"{out.name}.old-*"):  # a run killed inside _commit: its previous tree
        pid = old.name.rsplit("-", 1)[1]
        if old.is_dir() and pid.isdigit() and not process_alive(int(pid)):
            shutil.rmtree(old, ignore_errors=True)
    try:
        partial.mkdir(parents=True)
    except OSError as exc:
        raise MeanlocError(f"cannot create {partial}: {exc.strerror or exc}") from None
    started = time.time()
    rng = np.random.default_rng([config.seed, 11])
    # A user's area sets the number of test locations; a quarter of them become distractors.
    n_distractors = config.n_distractors if sources.kind == "synthetic" else plan.split_count("test") // 4
    locations = plan.place(sources.satellite.bounds_world(), n_distractors, rng)
    reach, margin, buffer = geometry(config)
    intr = config.intrinsics()
    pitch_cap = config.sampling.pitch_cap(intr)
    sources.satellite.pyramid()  # built once, sent to the workers with the rasters
    sources.drone.pyramid()
    _JOB.update(config=config, sources=sources, root=partial, pitch_cap=pitch_cap)
    workers = config.workers or (os.cpu_count() or 1)
    results = {}
    try:
        for res in _iterate(locations, workers):
            results[res["id"]] = res
            if progress is not None:
                progress(1)
    finally:
        _JOB.clear()
    summary = _summary(locations, results)
    for split in ("train", "val", "test"):
        if summary["counts"][split]["query_classes"] == 0:
            failed = sum(1 for loc in locations if loc.split == split and "dropped" in results[loc.id])
            raise MeanlocError(
                f"no usable {split} location: for all {failed} of them no drone pose kept its "
                f"{'whole frame' if config.sampling.validity == 'frame' else f'{config.tile_side_m:g} m query square'} "
                f"on valid imagery within {config.sampling.max_retries} tries (altitude {config.sampling.altitude_m[0]:g}-"
                f"{config.sampling.altitude_m[1]:g} m, pitch {config.sampling.pitch_deg[0]:g}-"
                f"{config.sampling.pitch_deg[1]:g} deg); lower --altitude or --tile-side-m")
    inputs = dict(sources.inputs)
    if sources.kind == "synthetic" and save_world:
        world_dir = partial / "world"
        world_dir.mkdir()
        sources.satellite.save_geotiff(world_dir / "satellite.tif", compress="jpeg")
        from meanloc.runtime.artifacts import sha256_file

        inputs["satellite"] = {"path": "world/satellite.tif", "sha256": sha256_file(world_dir / "satellite.tif"),
                               "generator": sources.satellite.metadata}
        if sources.drone is not sources.satellite:
            sources.drone.save_geotiff(world_dir / "drone.tif", compress="jpeg")
            inputs["drone"] = {"path": "world/drone.tif", "sha256": sha256_file(world_dir / "drone.tif"),
                               "generator": sources.drone.metadata}
    atomic_write_text(partial / "locations.csv", _locations_csv(sources.satellite, locations, results,
                                                               config.tile_side_m))
    manifest = new_manifest(
        DATASET_KIND,
        layout="university-1652",
        generator_version=f"{WRITER_VERSION}+{GENERATOR_VERSION}",
        seed=config.seed,
        parameters=_parameters(config, sources.kind),
        source_kind=sources.kind,
        cross_source=sources.drone is not sources.satellite,
        inputs=inputs,
        crs=sources.satellite.crs,
        satellite_orthophoto=sources.satellite.describe(),
        drone_orthophoto=sources.drone.describe() if sources.drone is not sources.satellite else None,
        recommended_input_px=_input_px(config, sources),
        camera={"width": intr.width, "height": intr.height, "hfov_deg": intr.hfov_deg, "vfov_deg": intr.vfov_deg,
                "pitch_cap_deg": pitch_cap},
        views={"validity": config.sampling.validity,
               "meaning": "the whole frame is valid imagery" if config.sampling.validity == "frame" else
               f"the {config.tile_side_m:g} m ground square around the look-at point is valid imagery; the far "
               "field may leave the orthophoto and is black (fine for pose-aware queries, not for frames as captured)"},
        geometry={"footprint_reach_m": reach, "margin_m": margin, "split_buffer_m": buffer,
                  "min_split_gap_m": split_gap_m(locations), **plan.describe(),
                  **({"footprint_overlap": _footprint_overlap(locations, results, config.tile_side_m)}
                     if sources.kind == "user" else {})},
        difficulty={"tile_side_m": config.tile_side_m, "altitude_m": list(config.sampling.altitude_m),
                    "pitch_deg": list(config.sampling.pitch_deg), "yaw_deg": list(config.sampling.yaw_deg),
                    "hfov_deg": config.sampling.hfov_deg, "appearance": config.sampling.appearance,
                    "pinned_default": _is_pinned(config)},
        statistics=summary,
        seconds=round(time.time() - started, 1),
        notes=FLAT_WORLD_NOTES + _pitch_note(config, intr, pitch_cap),
    )
    atomic_write_json(partial / "dataset.json", manifest)
    _commit(partial, out)
    return manifest


# Parameters that only shape the generated world (a user's orthophoto ignores them).
WORLD_ONLY = ("preset", "rows", "n_train", "n_val", "n_test", "n_distractors", "world_gsd_m", "origin_lonlat",
              "workers")


def _parameters(config: SynthConfig, kind: str) -> dict:
    """The parameters that shaped this dataset: for a user's orthophoto, not the synthetic world's."""
    values = config.to_dict()
    values.pop("workers")
    if kind == "user":
        values = {key: value for key, value in values.items() if key not in WORLD_ONLY}
    values["clearance_m"] = config.clearance
    return values


def _input_px(config: SynthConfig, sources: Sources) -> dict:
    """The network input side training uses by default (see `recommended_input_px`)."""
    if sources.kind == "synthetic":  # the demo's recipe: 64 px for the world's 200 m tiles
        return {"pixels": 64, "metres_per_pixel": round(config.tile_side_m / 64, 3),
                "why": "the synthetic recipe's CPU budget (2 cores)"}
    gsd = max(sources.satellite.gsd, sources.drone.gsd)
    pixels = recommended_input_px(config.tile_side_m, gsd)
    return {"pixels": pixels, "metres_per_pixel": round(config.tile_side_m / pixels, 3),
            "why": f"about two source pixels per input pixel ({gsd:.2f} m orthophoto, {config.tile_side_m:g} m tiles)"}


def _is_pinned(config: SynthConfig) -> bool:
    """True when the drone views follow the default benchmark difficulty of §5.9."""
    s = config.sampling
    return (config.tile_side_m == 200.0 and s.altitude_m == (150.0, 300.0) and s.pitch_deg == (30.0, 60.0)
            and s.yaw_deg == (0.0, 360.0) and 60.0 <= s.hfov_deg <= 80.0 and s.appearance)


def _pitch_note(config: SynthConfig, intr: CameraIntrinsics, cap: float) -> list[str]:
    if cap >= config.sampling.pitch_deg[1]:
        return []
    return [f"Pitches are drawn from {config.sampling.pitch_deg[0]:g}-{config.sampling.pitch_deg[1]:g} deg but lowered "
            f"to {cap:.1f} deg where a corner ray would be more than {config.sampling.max_ray_angle_deg:g} deg from "
            f"nadir ({intr.width}x{intr.height} frame, HFOV {intr.hfov_deg:g}, VFOV {intr.vfov_deg:.1f}); "
            "the sidecars keep both values."]


def _commit(partial: Path, out: Path) -> None:
    """Atomically publish the finished tree; an existing one is replaced only after success."""
    old = None
    if out.exists():
        old = out.with_name(f"{out.name}.old-{os.getpid()}")
        os.replace(out, old)
    os.replace(partial, out)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
