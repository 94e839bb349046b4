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

from meanloc.errors import MeanlocError


def configure(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="data_command", metavar="<subcommand>")
    synth = sub.add_parser("synth", help="synthesise a cross-view dataset (University-1652 layout)",
                           description="Render north-up satellite tiles and oblique drone views at the pinned "
                           "default difficulty (datasets-and-metrics.md §5.9) into a University-1652 tree with "
                           "spatially disjoint train/val/test, locations.csv and dataset.json.")
    synth.add_argument("--out", required=True, help="output folder (written as <out>.partial, renamed when complete)")
    synth.add_argument("--preset", default="demo", choices=("demo", "tiny", "paper"),
                       help="size preset: demo (~1-2 min on 2 cores), tiny (seconds, for tests), paper (384 px)")
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
    synth.add_argument("--altitude", type=float, nargs=2, metavar=("MIN", "MAX"), default=None,
                       help="drone altitude range in metres (pinned: 150 300)")
    synth.add_argument("--pitch", type=float, nargs=2, metavar=("MIN", "MAX"), default=None,
                       help="pitch from nadir in degrees (pinned: 30 60)")
    synth.add_argument("--hfov", type=float, default=None, help="horizontal field of view in degrees (pinned: 70)")
    synth.add_argument("--no-appearance", action="store_true",
                       help="skip the colour/haze/blur/noise/JPEG changes (not the pinned difficulty)")
    synth.add_argument("--workers", type=int, default=None, help="rendering processes (default: all cores)")
    synth.add_argument("--overwrite", action="store_true", help="replace an existing output folder")
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
    config = preset_config(
        args.preset, seed=args.seed, views_train=args.views_per_location, views_eval=args.eval_views,
        tile_px=args.tile_px, view_aspect=args.view_aspect, tile_side_m=args.tile_side_m, spacing_m=args.spacing_m, n_train=args.train,
        n_val=args.val, n_test=args.test, n_distractors=args.distractors, world_gsd_m=args.world_gsd_m,
        workers=args.workers, cross_source=False if args.same_source else None,
        altitude_m=tuple(args.altitude) if args.altitude else None,
        pitch_deg=tuple(args.pitch) if args.pitch else None, hfov_deg=args.hfov,
        appearance=False if args.no_appearance else None,
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
    total = plan.rows * sum(plan.columns)
    with tqdm(total=total, desc="locations", unit="loc") as bar:
        manifest = write_dataset(args.out, config, sources, plan, overwrite=args.overwrite, progress=bar.update)
    counts = manifest["statistics"]["counts"]
    summary = ", ".join(f"{split} {c['query_classes']} (+{c['distractor_classes']} distractors) locations / "
                        f"{c['drone_views']} drone views" for split, c in counts.items())
    print(f"wrote {args.out}: {summary}; {manifest['seconds']} s")
    return 0
