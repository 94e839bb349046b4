"""`meanloc data synth`: write a University-1652-layout cross-view dataset.

From the embedded procedural world (default) or from a user's georeferenced orthophoto
(GeoTIFF, or an image plus its four corner coordinates), optionally with a second co-registered
orthophoto for the drone views. Heavy imports happen inside the handler.
"""

from __future__ import annotations

import argparse
import os
import sys
import warnings

from meanloc.cli_args import add_hidden_alias, add_out, add_overwrite
from meanloc.errors import MeanlocError


def configure(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="data_command", metavar="<subcommand>")
    synth = sub.add_parser("synth", help="synthesise a cross-view dataset (University-1652 layout)",
                           description="Render north-up satellite tiles and oblique drone views at the pinned "
                           "default difficulty (datasets-and-metrics.md §5.9) into a University-1652 tree with "
                           "spatially disjoint train/val/test, locations.csv and dataset.json.")
    add_out(synth, help="output folder (written as <out>.partial, renamed when complete)")
    preset = synth.add_argument("--data-preset", default="demo", choices=("demo", "tiny", "paper"),
                                help="size preset: demo (~1-2 min on 2 cores), tiny (seconds, for tests), paper (384 px)")
    add_hidden_alias(synth, "--preset", preset)
    synth.add_argument("--seed", type=int, default=None, help="random seed (world, locations, poses, appearance)")
    synth.add_argument("--orthophoto", default=None,
                       help="use this georeferenced orthophoto instead of the synthetic world (GeoTIFF, or an "
                       "image with --corners)")
    synth.add_argument("--corners", nargs=4, metavar="LAT,LON", default=None,
                       help="corner coordinates of --orthophoto: top-left top-right bottom-right bottom-left")
    synth.add_argument("--drone-orthophoto", default=None,
                       help="second co-registered orthophoto (other date/sensor) to render the drone views from")
    synth.add_argument("--drone-corners", nargs=4, metavar="LAT,LON", default=None,
                       help="corner coordinates of --drone-orthophoto if it is a plain image")
    synth.add_argument("--same-source", action="store_true",
                       help="synthetic world: render drone views from the satellite date too (easier; labelled)")
    synth.add_argument("--views-per-location", type=int, default=None, help="drone views per training location")
    synth.add_argument("--eval-views", type=int, default=None, help="drone views per val/test location")
    synth.add_argument("--tile-px", type=int, default=None,
                       help="saved satellite tile width and drone frame width in pixels")
    synth.add_argument("--view-aspect", type=float, default=None,
                       help="drone frame width/height (default 4/3; a wider frame allows steeper pitch under the "
                       "80 deg corner-ray limit, e.g. 1.778 for 16:9)")
    synth.add_argument("--tile-side-m", type=float, default=None, help="satellite tile side in metres (pinned: 200)")
    synth.add_argument("--spacing-m", type=float, default=None, help="location grid spacing in metres")
    synth.add_argument("--train", type=int, default=None, help="minimum number of training locations (synthetic)")
    synth.add_argument("--val", type=int, default=None, help="minimum number of validation locations (synthetic)")
    synth.add_argument("--test", type=int, default=None, help="minimum number of test query locations (synthetic)")
    synth.add_argument("--distractors", type=int, default=None,
                       help="extra test gallery classes without queries (synthetic)")
    synth.add_argument("--world-gsd-m", type=float, default=None, help="synthetic world ground sampling distance")
    altitude = synth.add_argument("--view-altitude", type=float, nargs=2, metavar=("MIN", "MAX"), default=None,
                                  help="drone altitude range in metres (pinned: 150 300)")
    add_hidden_alias(synth, "--altitude", altitude)
    synth.add_argument("--pitch", type=float, nargs=2, metavar=("MIN", "MAX"), default=None,
                       help="pitch from nadir in degrees (pinned: 30 60)")
    synth.add_argument("--hfov", type=float, default=None, help="horizontal field of view in degrees (pinned: 70)")
    user = synth.add_argument_group("a user's orthophoto (small or odd-shaped areas)")
    user.add_argument("--test-area", default=None, metavar="LAT_MIN,LON_MIN,LAT_MAX,LON_MAX|FILE.geojson",
                      help="hold out this area as the test split: a lat/lon box or a GeoJSON (Multi)Polygon, Feature "
                      "or FeatureCollection in WGS84")
    user.add_argument("--clearance-m", type=float, default=None,
                      help="minimum gap between the tile squares of different splits (default: half a tile side)")
    user.add_argument("--split-layout", default="auto", choices=("auto", "bands", "blocks"),
                      help="without --test-area: train/val/test bands along the longer axis, or a checkerboard of "
                      "blocks (auto: bands, else blocks)")
    user.add_argument("--view-validity", default=None, choices=("frame", "query"),
                      help="what must be valid imagery in a drone view: the whole frame, or only the ground square "
                      "a pose-aware query shows (default: query for --orthophoto, frame for the synthetic world)")
    synth.add_argument("--no-appearance", action="store_true",
                       help="skip the colour/haze/blur/noise/JPEG changes (not the pinned difficulty)")
    synth.add_argument("--workers", type=int, default=None, help="rendering processes (default: all cores)")
    add_overwrite(synth, help="replace an existing output folder")
    synth.set_defaults(handler=_synth)
    parser.set_defaults(handler=lambda args: (parser.print_help(), 2)[1])


def _parse_corners(values: list[str] | None, option: str) -> list[tuple[float, float]] | None:
    if values is None:
        return None
    corners = []
    for value in values:
        try:
            lat, lon = (float(v) for v in value.split(","))
        except ValueError:
            raise MeanlocError(f"{option} expects four LAT,LON pairs, got '{value}'") from None
        corners.append((lat, lon))
    return corners


def _test_area(value: str) -> tuple[tuple[tuple[float, float], ...], ...]:
    """--test-area as rings of (lon, lat): a LAT_MIN,LON_MIN,LAT_MAX,LON_MAX box or a GeoJSON file."""
    parts = value.split(",")
    if len(parts) == 4 and not value.lower().endswith((".json", ".geojson")):
        try:
            lat_min, lon_min, lat_max, lon_max = (float(p) for p in parts)
        except ValueError:
            raise MeanlocError(f"--test-area expects LAT_MIN,LON_MIN,LAT_MAX,LON_MAX or a GeoJSON file, got '{value}'") from None
        if not (lat_min < lat_max and lon_min < lon_max):
            raise MeanlocError(f"--test-area box must have LAT_MIN < LAT_MAX and LON_MIN < LON_MAX, got '{value}'")
        return (((lon_min, lat_min), (lon_max, lat_min), (lon_max, lat_max), (lon_min, lat_max)),)
    import json

    try:
        with open(value, encoding="utf-8") as handle:
            payload = json.load(handle)
    except FileNotFoundError:
        raise MeanlocError(f"--test-area: {value} not found (give a GeoJSON file or LAT_MIN,LON_MIN,LAT_MAX,LON_MAX)") from None
    except (OSError, ValueError) as exc:
        raise MeanlocError(f"--test-area: cannot read {value} as GeoJSON ({exc})") from None
    rings = _geojson_rings(payload)
    if not rings:
        raise MeanlocError(f"--test-area: {value} holds no Polygon or MultiPolygon")
    return rings


def _geojson_rings(payload) -> tuple:
    """Every ring of every (Multi)Polygon in a GeoJSON geometry, Feature or FeatureCollection."""
    if not isinstance(payload, dict):
        return ()
    kind = payload.get("type")
    if kind == "FeatureCollection":
        return tuple(ring for feature in payload.get("features") or [] for ring in _geojson_rings(feature))
    if kind == "Feature":
        return _geojson_rings(payload.get("geometry") or {})
    polygons = {"Polygon": [payload.get("coordinates")], "MultiPolygon": payload.get("coordinates")}.get(kind) or []
    rings = []
    for polygon in polygons:
        for ring in polygon or []:
            try:
                points = tuple((float(p[0]), float(p[1])) for p in ring)
            except (TypeError, ValueError, IndexError):
                raise MeanlocError("--test-area: a GeoJSON ring is not a list of [lon, lat] positions") from None
            if len(points) >= 3:
                rings.append(points)
    return tuple(rings)


def _load_orthophoto(path: str, corners: list[tuple[float, float]] | None):
    from meanloc.runtime.geo.orthophoto import Orthophoto

    if corners is not None:
        return Orthophoto.from_image_and_corners(path, corners)
    return Orthophoto.from_geotiff(path)


def _synth(args: argparse.Namespace) -> int:
    from meanloc.training.data.synth.writer import preset_config

    if args.corners is not None and args.orthophoto is None:
        raise MeanlocError("--corners needs --orthophoto")
    if args.drone_orthophoto is not None and args.orthophoto is None:
        raise MeanlocError("--drone-orthophoto needs --orthophoto (the synthetic world has its own second date)")
    if args.orthophoto is None and (args.test_area or args.clearance_m is not None or args.split_layout != "auto"):
        raise MeanlocError("--test-area, --clearance-m and --split-layout apply to --orthophoto (the synthetic world "
                           "is generated to fit its train/val/test bands)")
    validity = args.view_validity or ("frame" if args.orthophoto is None else "query")
    config = preset_config(
        args.data_preset, seed=args.seed, views_train=args.views_per_location, views_eval=args.eval_views,
        tile_px=args.tile_px, view_aspect=args.view_aspect, tile_side_m=args.tile_side_m, spacing_m=args.spacing_m, n_train=args.train,
        n_val=args.val, n_test=args.test, n_distractors=args.distractors, world_gsd_m=args.world_gsd_m,
        workers=args.workers, cross_source=False if args.same_source else None,
        altitude_m=tuple(args.view_altitude) if args.view_altitude else None,
        pitch_deg=tuple(args.pitch) if args.pitch else None, hfov_deg=args.hfov,
        appearance=False if args.no_appearance else None, validity=validity,
        clearance_m=args.clearance_m, split_layout=args.split_layout,
        test_area_lonlat=_test_area(args.test_area) if args.test_area else None,
    )
    from meanloc.runtime.run_folder import folder_lock, lock_path_for

    # One writer per output: a second run into the same --out stops here, naming the first one's pid.
    with folder_lock(lock_path_for(args.out, inside=False), args.out, "meanloc data synth"):
        return _synth_locked(args, config)


def _synth_locked(args: argparse.Namespace, config) -> int:
    from tqdm import tqdm

    from meanloc.runtime.geo.orthophoto import GeoreferenceWarning
    from meanloc.training.data.synth.writer import synthetic_sources, user_sources, write_dataset

    if os.path.exists(args.out) and not args.overwrite:
        raise MeanlocError(f"{args.out} already exists; pass --overwrite to replace it")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", GeoreferenceWarning)
        if args.orthophoto is None:
            print("meanloc: generating the synthetic world ...", file=sys.stderr)
            sources, plan = synthetic_sources(config)
        else:
            satellite = _load_orthophoto(args.orthophoto, _parse_corners(args.corners, "--corners"))
            drone = None
            if args.drone_orthophoto is not None:
                drone = _load_orthophoto(args.drone_orthophoto, _parse_corners(args.drone_corners, "--drone-corners"))
            sources, plan = user_sources(config, satellite, drone)
    for warning in caught:
        print(f"meanloc: warning: {warning.message}", file=sys.stderr)
    total = plan.count
    with tqdm(total=total, desc="locations", unit="loc") as bar:
        manifest = write_dataset(args.out, config, sources, plan, overwrite=args.overwrite, progress=bar.update)
    counts = manifest["statistics"]["counts"]
    summary = ", ".join(f"{split} {c['query_classes']} (+{c['distractor_classes']} distractors) locations / "
                        f"{c['drone_views']} drone views" for split, c in counts.items())
    print(f"wrote {args.out}: {summary}; {manifest['seconds']} s")
    return 0
