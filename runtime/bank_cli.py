"""`meanloc bank build|index|info|verify|merge`: satellite embedding banks.

Heavy imports (onnxruntime, OpenCV, rasterio, pyproj) happen inside the handlers, so `--help`
is instant and nothing here imports torch. Python 3.8 compatible.
"""

import argparse
import contextlib
import json
from typing import Any, Dict, Iterator, List, Optional

from meanloc.cli_args import add_batch_size, add_model, add_out, add_overwrite, add_progress, add_threads
from meanloc.errors import MeanlocError


def configure(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="bank_command", metavar="<action>")

    build = sub.add_parser(
        "build",
        help="embed satellite tiles into a bank (resumable; under `torchrun --nproc-per-node N -m meanloc "
        "bank build ...` the ranks share the work)",
    )
    add_model(build, help="embedding model: .onnx, .engine or a checkpoint")
    source = build.add_mutually_exclusive_group(required=True)
    source.add_argument("--orthophoto", help="georeferenced GeoTIFF to cut into north-up tiles")
    source.add_argument("--tiles-dir", help="folder of ready-made tile images (needs --tiles-csv)")
    build.add_argument(
        "--tiles-csv",
        help="CSV or JSON listing the tiles: id, path, center_lat, center_lon, tl/tr/br/bl _lat/_lon[, gsd]",
    )
    add_out(build, help="bank folder to write")
    build.add_argument(
        "--tile-m", type=float, default=None,
        help="tile side in metres at scale 1 (default: the ground square a pose-aware model was trained on, else 200)"
    )
    build.add_argument(
        "--overlap", type=float, default=0.5, help="tile overlap in [0, 1); stride = side*(1-overlap)"
    )
    build.add_argument(
        "--scales", default="1", help="comma-separated tile side multipliers, e.g. 1,2 (default 1)"
    )
    build.add_argument(
        "--tile-px", type=int, default=None, help="tile image size in pixels (default: model input)"
    )
    build.add_argument(
        "--min-valid", type=float, default=0.5, help="skip tiles with less valid data (default 0.5)"
    )
    add_batch_size(build, 32, help="tiles per inference batch (default 32)", old="--batch")
    build.add_argument(
        "--shard-size", type=int, default=4096, help="tiles per resumable shard (default 4096)"
    )
    build.add_argument("--resume", action="store_true", help="continue an interrupted build in --out")
    add_overwrite(build, help="replace the bank (or unfinished build) in --out; the old bank stays usable until the "
                  "new one is written")
    build.add_argument("--skip-bad-images", action="store_true",
                       help="--tiles-dir: skip (and count) damaged, truncated or unreadable tile images instead of "
                       "refusing to build")
    add_threads(build, help="CPU threads for ONNX Runtime/PyTorch (default: all cores, shared evenly by torchrun's ranks)")
    build.add_argument(
        "--workers", type=int, default=None,
        help="threads that read, cut and preprocess tiles ahead of inference (default: up to 4; 0 = none)",
    )
    build.add_argument(
        "--backend", default="auto", help="inference backend: auto, onnxruntime, tensorrt, torch"
    )
    add_progress(build)
    build.add_argument(
        "--no-index", action="store_true", help="skip the compressed search index (add it later: bank index)"
    )
    build.add_argument("--no-local-features", action="store_true",
                       help="skip the local-feature layer (geometric verification and metre-level fixes need it; "
                       "only --orthophoto builds have one)")
    _local_feature_options(build)
    build.set_defaults(handler=_build)

    features = sub.add_parser("features", help="add the local-feature layer to a bank built from an orthophoto")
    features.add_argument("bank", help="bank folder")
    features.add_argument("--orthophoto", required=True, help="the GeoTIFF the bank was built from")
    features.add_argument("--resume", action="store_true", help="continue an interrupted feature build")
    add_overwrite(features, help="replace a layer extracted differently")
    add_progress(features)
    _local_feature_options(features)
    features.set_defaults(handler=_features)

    index = sub.add_parser(
        "index", help="add the compressed global-search index to a bank (done by build and merge)"
    )
    index.add_argument("bank", help="bank folder")
    add_overwrite(index, help="rebuild an existing index")
    index.set_defaults(handler=_index)

    info = sub.add_parser("info", help="summarise a bank (model, size, area)")
    info.add_argument("bank", help="bank folder")
    info.add_argument("--json", action="store_true", help="print the whole manifest as JSON")
    info.add_argument("--tiles-csv", metavar="FILE", help="also export the tile metadata table as CSV")
    add_overwrite(info, help="replace an existing --tiles-csv file")
    info.set_defaults(handler=_info)

    verify = sub.add_parser("verify", help="check hashes, shapes and metadata of a bank (exit 1 on failure)")
    verify.add_argument("bank", help="bank folder")
    verify.set_defaults(handler=_verify)

    merge = sub.add_parser("merge", help="merge banks of the same model into one (tiles re-numbered)")
    merge.add_argument("banks", nargs="+", help="bank folders, in order")
    add_out(merge, help="merged bank folder to write")
    merge.add_argument("--no-index", action="store_true", help="skip the compressed search index")
    merge.set_defaults(handler=_merge)


def _local_feature_options(parser: argparse.ArgumentParser) -> None:
    from .features.extract import DEFAULT_FEATURE_KIND, FEATURE_KINDS

    group = parser.add_argument_group("local-feature layer (georeferenced orthophoto features for the fine stage)")
    group.add_argument("--local-features", choices=FEATURE_KINDS, default=DEFAULT_FEATURE_KIND,
                       help="detector/descriptor (default %(default)s; bench/RESULTS.md compares them: accuracy "
                       "across dates and cost per frame)")
    group.add_argument("--feature-gsd-m", type=float, default=None, metavar="M",
                       help="metres per pixel to extract at (default: the orthophoto's, but no finer than 0.8)")
    group.add_argument("--feature-cell-m", type=float, default=50.0, metavar="M",
                       help="side of the spatial index cells (default 50)")
    group.add_argument("--features-per-cell", type=int, default=64, metavar="N",
                       help="keep the N strongest features per cell (default 64: ~3.6 MB per km² for SIFT)")


def _layer_params(args: argparse.Namespace) -> Any:
    from .bank.feature_build import LayerParams
    from .features.extract import FeatureSpec

    params = LayerParams(FeatureSpec(args.local_features), args.feature_gsd_m, args.feature_cell_m,
                         args.features_per_cell)
    params.validate()
    return params


def _parse_scales(text: str) -> List[float]:
    try:
        scales = [float(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise MeanlocError(
            "--scales must be comma-separated numbers, e.g. 1,2 (got {!r})".format(text)
        ) from None
    if not scales:
        raise MeanlocError("--scales is empty")
    return scales


def _build(args: argparse.Namespace) -> int:
    from pathlib import Path

    from .bank.build import SHARDS_DIR
    from .bank.sharding import Ranks

    if args.tiles_dir and not args.tiles_csv:
        raise MeanlocError("--tiles-dir needs --tiles-csv (the list of tile centres and corners)")
    if args.orthophoto and args.tiles_csv:
        raise MeanlocError("--tiles-csv goes with --tiles-dir, not with --orthophoto")
    if args.skip_bad_images and not args.tiles_dir:
        raise MeanlocError("--skip-bad-images goes with --tiles-dir (an orthophoto is one image)")
    for name in ("threads", "workers"):
        value = getattr(args, name)
        if value is not None and value < (1 if name == "threads" else 0):
            raise MeanlocError("--{} must be >= {}, got {}".format(name, 1 if name == "threads" else 0, value))
    ranks = Ranks.from_environment()
    ranks.pin_gpu()  # before any CUDA library starts: one GPU per rank
    threads = args.threads if args.threads is not None else (ranks.cpu_threads() if ranks.distributed else None)
    options = {
        "batch": args.batch_size,
        "shard_size": args.shard_size,
        "resume": args.resume,
        "progress": not args.no_progress,
        "overwrite": args.overwrite,
        "index": not args.no_index,
        "workers": args.workers,
        "ranks": ranks,
    }
    with _bank_writer(Path(args.out), "meanloc bank build", ranks, SHARDS_DIR):
        result = _build_locked(args, options, threads)
    if not ranks.is_main:
        print(
            "rank {}/{}: shards built {}, reused {}; rank 0 assembles the bank".format(
                ranks.rank, ranks.world_size, result.shards_built, result.shards_reused
            )
        )
        return 0
    print(
        "bank {}: {} tiles ({} candidates, {} skipped for too little valid data; shards reused {}, built {})".format(
            result.path,
            result.count,
            result.candidates,
            result.skipped_invalid,
            result.shards_reused,
            result.shards_built,
        )
    )
    return 0


def _build_locked(args: argparse.Namespace, options: Dict[str, Any], threads: Optional[int]) -> Any:
    from meanloc.runtime.backends import open_backend

    from .bank import build_bank_from_orthophoto, build_bank_from_tiles

    local_features = None if args.no_local_features or not args.orthophoto else _layer_params(args)
    with open_backend(args.model, backend=args.backend, threads=threads, max_batch=args.batch_size) as backend:
        if args.orthophoto:
            result = build_bank_from_orthophoto(
                args.orthophoto,
                backend,
                args.out,
                tile_m=args.tile_m or _default_tile_m(backend),
                overlap=args.overlap,
                scales=_parse_scales(args.scales),
                min_valid=args.min_valid,
                tile_px=args.tile_px,
                local_features=local_features,
                **options,
            )
        else:
            result = build_bank_from_tiles(args.tiles_dir, args.tiles_csv, backend, args.out,
                                           skip_bad_images=args.skip_bad_images, **options)
    return result


@contextlib.contextmanager
def _bank_writer(bank: Any, command: str, ranks: Any = None, *subfolders: str) -> Iterator[None]:
    """One writer per bank folder: a second build (e.g. two --resume runs) stops here, naming the
    first, after removing the temporary files of a writer killed mid-write. Under torchrun rank 0
    holds the folder's lock and every other rank a lock of its own (ranks write disjoint shards;
    rank 0 alone assembles the bank and cleans up)."""
    from .artifacts import remove_orphan_temp_files
    from .bank.feature_build import SHARDS_DIR as FEATURE_SHARDS_DIR
    from .bank.feature_layer import FEATURES_DIR
    from .run_folder import folder_lock, lock_path_for

    main = ranks is None or ranks.is_main
    lock = lock_path_for(bank) if main else bank / ".meanloc.rank{}.lock".format(ranks.rank)
    with folder_lock(lock, bank, command):
        if main:
            for folder in (bank, *(bank / name for name in (*subfolders, FEATURES_DIR, FEATURE_SHARDS_DIR))):
                remove_orphan_temp_files(folder)
        yield


def _features(args: argparse.Namespace) -> int:
    from pathlib import Path

    from .bank.feature_build import build_feature_layer
    from .geo.orthophoto import Orthophoto

    with _bank_writer(Path(args.bank), "meanloc bank features"):
        meta = build_feature_layer(args.bank, Orthophoto.from_geotiff(args.orthophoto), _layer_params(args),
                                   resume=args.resume, progress=not args.no_progress, overwrite=args.overwrite)
    print("bank {}: local feature layer of {} {} features ({:g} m per pixel, {:g} m cells)".format(
        args.bank, meta.count, meta.spec.kind, meta.gsd_m, meta.grid.cell_m))
    return 0


def _index(args: argparse.Namespace) -> int:
    import time
    from pathlib import Path

    from .bank import build_index
    from .bank.index import has_index
    from .bank.store import read_manifest

    if has_index(read_manifest(args.bank)) and not args.overwrite:
        raise MeanlocError("bank {} already has an index; pass --overwrite to rebuild it".format(args.bank))
    started = time.monotonic()
    with _bank_writer(Path(args.bank), "meanloc bank index"):
        manifest = build_index(args.bank)
    print(
        "bank {}: index of {} tiles written in {:.1f} s ({})".format(
            args.bank, manifest["count"], time.monotonic() - started, _index_summary(args.bank, manifest)
        )
    )
    return 0


def _index_summary(bank_dir: str, manifest: dict) -> str:
    from pathlib import Path

    from .bank.index import INDEX_FILES, INDEX_SECTION, faiss_or_none

    entry = manifest.get(INDEX_SECTION)
    if entry is None:
        return "none: global searches are exact (add one with `meanloc bank index`)"
    size_mb = sum((Path(bank_dir) / name).stat().st_size for name in INDEX_FILES) / 1e6
    return "{} v{}, {} bytes/tile ({:.1f} MB); scan here: {}".format(
        entry.get("kind"),
        entry.get("version"),
        entry.get("code_bytes"),
        size_mb,
        "faiss" if faiss_or_none() is not None else "numpy (pip install faiss-cpu scans several times faster)",
    )


def _info(args: argparse.Namespace) -> int:
    from .bank import SatelliteBank
    from .bank.store import EMBEDDINGS_FILE

    if args.tiles_csv:
        from .artifacts import claim_output

        claim_output(args.tiles_csv, args.overwrite)
    bank = SatelliteBank.open(args.bank, device="cpu", engine="exact", float32_in_memory=False)
    if args.tiles_csv:
        from .artifacts import atomic_write_text
        from .bank.tiles import tiles_csv_text

        atomic_write_text(args.tiles_csv, tiles_csv_text(bank.tiles))
    if args.json:
        print(json.dumps(bank.manifest, indent=2, sort_keys=True))
        return 0
    identity, build, tiles = bank.identity, bank.manifest.get("build", {}), bank.tiles
    size_mb = (bank.directory / EMBEDDINGS_FILE).stat().st_size / 1e6
    lines = [
        "bank:        {}".format(bank.directory),
        "tiles:       {} x {}-d float16 ({:.1f} MB)".format(bank.count, bank.dim, size_mb),
        "model:       {} checkpoint {}... precision {} artifact {}".format(
            identity.preset,
            identity.checkpoint_sha256[:12],
            identity.precision,
            (identity.artifact_sha256 or "-")[:12],
        ),
        "preprocess:  {} px {} {}".format(
            identity.preprocess.size, identity.preprocess.color_order, identity.preprocess.interpolation
        ),
        "area:        lat {:.6f}..{:.6f}  lon {:.6f}..{:.6f}".format(
            tiles.lat.min(), tiles.lat.max(), tiles.lon.min(), tiles.lon.max()
        ),
        "tile sides:  {} m".format(
            ", ".join("{:g}".format(s) for s in sorted(set(tiles.side_m.round(1).tolist())))
        ),
        "built by:    {}".format(
            build.get("type", "?")
            if build.get("type") != "merge"
            else "merge of {} banks".format(len(build.get("merged_from", [])))
        ),
        "sources:     {}{}".format(
            ", ".join(s["id"] for s in tiles.sources[:3]),
            " (+{} more)".format(len(tiles.sources) - 3) if len(tiles.sources) > 3 else "",
        ),
        "created:     {}".format(bank.manifest.get("created_utc", "?")),
        "index:       {}".format(_index_summary(args.bank, bank.manifest)),
        "features:    {}".format(_describe_layer(bank, size_mb)),
    ]
    print("\n".join(lines))
    return 0


def _describe_layer(bank: Any, embeddings_mb: float) -> str:
    layer = bank.features
    if layer is None:
        if bank.manifest.get("build", {}).get("type") == "orthophoto":
            return "none (built with --no-local-features; add them with `meanloc bank features`)"
        return "none (only banks cut from an orthophoto have local features)"
    info = layer.describe()
    area = info["area_km2"] or float("nan")
    return "{count} {kind} at {gsd_m:g} m/px in {area_km2:.2f} km² ({mb:.1f} MB, {per:.2f} MB per km²; embeddings " \
        "{emb:.2f} MB per km²)".format(mb=info["bytes"] / 1e6, per=(info["bytes_per_km2"] or 0) / 1e6,
                                      emb=embeddings_mb / area, **info)


def _verify(args: argparse.Namespace) -> int:
    import sys

    from .bank import verify_bank

    problems = verify_bank(args.bank)
    if problems:
        for problem in problems:
            print("meanloc: bank {}: {}".format(args.bank, problem), file=sys.stderr)
        print("FAILED: {} problem(s)".format(len(problems)))
        return 1
    print("OK: {} (hashes, shapes, norms, tile table and search index match the manifest)".format(args.bank))
    return 0


def _merge(args: argparse.Namespace) -> int:
    from .bank import merge_banks

    manifest = merge_banks(args.banks, args.out, index=not args.no_index)
    layer = manifest.get("local_features")
    print("merged {} banks into {}: {} tiles, {}".format(
        len(args.banks), args.out, manifest["count"],
        "{} local features".format(layer["count"]) if layer else "no local features ({})".format(
            manifest["build"].get("local_features"))))
    return 0


def _default_tile_m(backend: Any) -> float:
    """Tiles the size of the ground square a pose-aware model compares (200 m otherwise)."""
    view = backend.identity.query_view
    return float(view.ground_side_m) if view.rectified else 200.0
