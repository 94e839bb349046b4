"""`meanloc calibrate`: INT8 calibration on the CPU, writing the TensorRT cache and both Q/DQ models."""

from __future__ import annotations

import argparse
import sys

from meanloc.cli_args import add_batch_size, add_out, add_overwrite, add_progress
from meanloc.errors import MeanlocError

from .qdq import CPU_RECIPES, DEFAULT_CPU_RECIPE
from .ranges import METHODS


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--onnx", required=True, help="FP32 embedding ONNX from `meanloc export onnx`")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument(
        "--images", metavar="DIR", help="folder of calibration images (sub-folders are strata)"
    )
    source.add_argument("--data", metavar="ROOT", help="dataset root in the University-1652 layout")
    parser.add_argument(
        "--split",
        default="train",
        choices=("train", "val", "test"),
        help="dataset split to draw from (with --data)",
    )
    add_out(parser, help="output folder for the cache and the INT8 models")
    parser.add_argument(
        "--num-images", type=int, default=256, help="calibration images (rounded down to whole batches)"
    )
    add_batch_size(parser, 16, help="calibration batch size", old="--batch")
    parser.add_argument("--method", default="entropy", choices=METHODS, help="how ranges are chosen")
    parser.add_argument(
        "--trt-version",
        default="10.3",
        help="TensorRT that will read the cache: 10.3 (JetPack 6.1/6.2), 8.6 (JetPack 6.0), 8.5 (JetPack 5) "
        "or a full version such as 10.7.0",
    )
    parser.add_argument(
        "--cpu-recipe",
        default=DEFAULT_CPU_RECIPE,
        choices=CPU_RECIPES,
        help="how the ONNX Runtime CPU model is quantized (calibration/qdq.py has the measurements)",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the stratified image draw")
    parser.add_argument("--skip-bad-images", action="store_true",
                        help="pass over (and count) damaged, truncated or unreadable images instead of refusing them")
    add_overwrite(parser, help="replace the calibration already in --out (its files are replaced one by one, each "
                  "only once its successor is complete)")
    add_progress(parser)
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from meanloc.runtime.artifacts import remove_orphan_temp_files
    from meanloc.runtime.onnx_file import load_embedding_onnx

    from .calibset import from_dataset, from_folder
    from .pipeline import CACHE_NAME, calibrate

    if (Path(args.out) / CACHE_NAME).exists() and not args.overwrite:
        raise MeanlocError(f"{args.out} already holds a calibration ({CACHE_NAME}); pass --overwrite to replace "
                           "it, or choose another --out")
    remove_orphan_temp_files(args.out)  # left by a calibration killed while writing
    identity = load_embedding_onnx(args.onnx, "FP32 ONNX model").identity
    spec = identity.preprocess
    if args.images:
        calib_set = from_folder(args.images, spec, args.num_images, args.batch_size, args.seed, args.skip_bad_images)
    else:
        calib_set = from_dataset(args.data, spec, args.split, args.num_images, args.batch_size, args.seed,
                                 query_view=identity.query_view, skip_bad_images=args.skip_bad_images)
    print(
        f"calibrating on {calib_set.num_images} images from {calib_set.source} ({args.method}, batch {args.batch_size})"
    )
    if calib_set.bad_images:
        print(f"meanloc calibrate: {calib_set.bad_images.summary()}", file=sys.stderr)
    outputs = calibrate(
        args.onnx, calib_set, args.out, args.method, args.trt_version, progress=not args.no_progress,
        cpu_recipe=args.cpu_recipe,
    )  # fmt: skip
    manifest = outputs.manifest
    print(f"{outputs.cache}: {manifest['num_tensors']} tensor scales, header {manifest['header']}")
    print(f"{outputs.qdq_trt}: Q/DQ model for TensorRT explicit INT8")
    print(f"{outputs.cpu}: INT8 model for ONNX Runtime on CPU ({args.cpu_recipe})")
    return 0
