"""`meanloc export onnx|engine`: checkpoint -> ONNX (dev box), ONNX -> TensorRT engine (on the target).

Heavy imports (torch, onnx, tensorrt) happen inside the handlers, so `--help` is instant and
`meanloc export engine` on a Jetson never imports torch. Python 3.8 compatible.
"""

import argparse
import sys
from typing import Any

from meanloc.cli_args import add_out, add_overwrite, add_progress
from meanloc.export.engine_options import PRECISIONS  # light: TensorRT is imported only when building


def configure(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="export_command", metavar="<target>")
    _configure_onnx(
        sub.add_parser("onnx", help="export a checkpoint's inference graph to ONNX (with parity check)")
    )
    _configure_engine(
        sub.add_parser("engine", help="build a TensorRT engine from a meanloc ONNX (run on the target)")
    )


def _configure_onnx(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--checkpoint", required=True, help="meanloc or official MEAN checkpoint (.pt/.pth/.safetensors)"
    )
    add_out(parser, help="ONNX file to write")
    parser.add_argument(
        "--opset",
        type=int,
        choices=(17, 16),
        default=17,
        help="17: native LayerNorm, TensorRT >= 8.6 / JetPack 6 (default); "
        "16: LayerNorm decomposed and marked for FP32, TensorRT 8.5 / JetPack 5",
    )
    parser.add_argument("--no-simplify", action="store_true", help="skip onnxslim graph simplification")
    add_overwrite(parser, help="replace an existing --out (once the new one is complete)")
    parity = parser.add_mutually_exclusive_group()
    parity.add_argument(
        "--parity",
        dest="parity",
        action="store_true",
        default=True,
        help="compare ONNX Runtime with PyTorch on random and aerial-like images and fail if they differ (default)",
    )
    parity.add_argument("--no-parity", dest="parity", action="store_false", help="skip the parity check")
    parser.add_argument(
        "--preset", default=None, help="official MEAN checkpoints only: model preset (default: inferred)"
    )
    parser.add_argument(
        "--img-size", type=int, default=None, help="official MEAN checkpoints only: input size (default 384)"
    )
    parser.set_defaults(handler=run_onnx)


def _configure_engine(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--onnx", required=True, help="ONNX written by `meanloc export onnx` (or its Q/DQ version)"
    )
    add_out(parser, help="engine file to write; its manifest goes to <out>.json")
    parser.add_argument(
        "--precision",
        choices=PRECISIONS,
        default="fp16",
        help="fp16 (default), fp32, int8-implicit (needs --calib-cache; TensorRT <= 10), "
        "int8-explicit (needs the Q/DQ ONNX from `meanloc calibrate`)",
    )
    parser.add_argument("--calib-cache", default=None, help="TensorRT calibration cache for int8-implicit")
    parser.add_argument(
        "--min-batch", type=int, default=1, help="smallest batch of the optimization profile (default 1)"
    )
    parser.add_argument(
        "--opt-batch",
        type=int,
        default=None,
        help="batch TensorRT tunes its kernels for (default 1, the onboard loop's batch; at least --min-batch)",
    )
    parser.add_argument(
        "--max-batch", type=int, default=8, help="largest batch of the optimization profile (default 8)"
    )
    parser.add_argument(
        "--workspace-mb", type=int, default=1024, help="builder workspace limit in MiB (default 1024)"
    )
    parser.add_argument(
        "--timing-cache",
        default="auto",
        help="persistent timing cache file; 'auto' (default) keeps one per TensorRT/GPU under ~/.cache/meanloc, "
        "'none' disables it",
    )
    parser.add_argument(
        "--opt-level",
        type=int,
        default=None,
        help="builder optimization level 0-5 (TensorRT >= 8.6; default: TensorRT's 3)",
    )
    parser.add_argument(
        "--dla-core",
        type=int,
        default=None,
        help="build for this DLA core with GPU fallback (AGX Orin/Xavier; needs a fixed batch and fp16/int8-implicit)",
    )
    parser.add_argument(
        "--cache-dir", default=None, help="folder of earlier builds to reuse identical ones from"
    )
    parser.add_argument("--force", action="store_true", help="rebuild even if an identical engine exists")
    add_progress(parser, old="--quiet", help="do not print build progress and TensorRT warnings")
    parser.set_defaults(handler=run_engine)


def run_onnx(args: argparse.Namespace) -> int:
    from meanloc.export.onnx_export import export_onnx
    from meanloc.runtime.artifacts import claim_output

    claim_output(args.out, args.overwrite)
    result = export_onnx(
        args.checkpoint,
        args.out,
        opset=args.opset,
        decompose_layernorm=args.opset < 17,
        simplify=not args.no_simplify,
        parity=args.parity,
        preset=args.preset,
        img_size=args.img_size,
    )
    print(result.summary())
    return 0


def run_engine(args: argparse.Namespace) -> int:
    from meanloc.export.engine_build import build_engine

    if args.calib_cache:  # a damaged cache is refused the same way with or without TensorRT installed
        from meanloc.runtime.calibration_cache import read_calibration_cache

        read_calibration_cache(args.calib_cache)

    timing_cache = None if args.timing_cache == "none" else args.timing_cache
    result = build_engine(
        args.onnx,
        args.out,
        precision=args.precision,
        min_batch=args.min_batch,
        opt_batch=args.opt_batch,
        max_batch=args.max_batch,
        workspace_mb=args.workspace_mb,
        calibration_cache=args.calib_cache,
        timing_cache=timing_cache,
        opt_level=args.opt_level,
        dla_core=args.dla_core,
        cache_dir=args.cache_dir,
        force=args.force,
        echo=None if args.no_progress else _stderr,
    )
    for warning in result.warnings:
        _stderr("warning: " + warning)
    print(result.summary())
    return 0


def _stderr(line: Any) -> None:
    print(line, file=sys.stderr, flush=True)
