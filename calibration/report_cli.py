"""`meanloc report precision`: FP32 vs INT8 (and FP16/INT8 engines on a GPU), as JSON + Markdown."""

from __future__ import annotations

import argparse

from meanloc.cli_args import add_batch_size, add_data, add_out, add_overwrite, add_progress, add_threads


def configure(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="report", metavar="<report>")
    precision = sub.add_parser(
        "precision", help="embedding cosine and R@1/AP of every precision against FP32"
    )
    precision.add_argument("--onnx", required=True, help="the FP32 ONNX (the reference)")
    precision.add_argument(
        "--calib-dir", metavar="DIR", help="folder written by `meanloc calibrate` (INT8 models)"
    )
    add_data(precision, help="dataset root in the University-1652 layout")
    precision.add_argument("--split", default="val", choices=("val", "test"), help="evaluation split")
    precision.add_argument(
        "--engines",
        nargs="*",
        default=[],
        metavar="ENGINE",
        help="TensorRT engines to include (skipped without TensorRT)",
    )
    add_batch_size(precision, 32, help="images per inference batch", old="--batch")
    add_threads(precision, help="ONNX Runtime intra-op threads (default: all)")
    add_out(precision, help="report JSON path; the Markdown table goes next to it (.md)")
    add_overwrite(precision, help="replace an existing report (once the new one is complete)")
    add_progress(precision)
    precision.set_defaults(handler=run_precision)


def run_precision(args: argparse.Namespace) -> int:
    from pathlib import Path

    from meanloc.runtime.artifacts import claim_output

    from .precision_report import build_precision_report, format_precision_table, write_precision_report

    for path in (Path(args.out), Path(args.out).with_suffix(".md")):  # before minutes of inference, not after
        claim_output(path, args.overwrite)
    report = build_precision_report(
        args.onnx,
        args.data,
        calib_dir=args.calib_dir,
        engines=args.engines,
        split=args.split,
        dataset=args.dataset,
        batch_size=args.batch_size,
        threads=args.threads,
        progress=not args.no_progress,
    )
    json_path, table_path = write_precision_report(report, args.out)
    print(format_precision_table(report), end="")
    print(f"wrote {json_path} and {table_path}")
    return 0
