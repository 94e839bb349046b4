"""`meanloc eval`: Recall@K / Recall@top1% / AP of a checkpoint or an ONNX model on a dataset split.

torch, OpenCV and ONNX Runtime are imported inside the handler so `--help` stays instant.
"""

import argparse
import sys
from typing import Any

from meanloc.cli_args import add_batch_size, add_data, add_out, add_overwrite, add_progress
from meanloc.errors import MeanlocError

DIRECTION_CHOICES = {"both": ("d2s", "s2d"), "d2s": ("d2s",), "s2d": ("s2d",)}
PROTOCOL_CHOICES = {
    "both": ("full", "junk_distractors"),
    "full": ("full",),
    "junk_distractors": ("junk_distractors",),
}


def configure(parser: argparse.ArgumentParser) -> None:
    """Add `meanloc eval`'s options."""
    model = parser.add_mutually_exclusive_group(required=True)
    model.add_argument(
        "--checkpoint", help="MEAN checkpoint (meanloc format or official MEAN), run with PyTorch"
    )
    model.add_argument("--onnx", help="exported ONNX model, run with ONNX Runtime")
    add_data(parser, help="dataset root (University-1652 layout, or SUES-200 raw/split)")
    parser.add_argument("--altitude", type=int, help="SUES-200 flight altitude: 150, 200, 250 or 300 (SUES-200 only)")
    parser.add_argument(
        "--direction",
        choices=tuple(DIRECTION_CHOICES),
        default="both",
        help="d2s = drone query vs satellite gallery, s2d = the reverse, or both (default)",
    )
    parser.add_argument(
        "--protocol",
        choices=tuple(PROTOCOL_CHOICES),
        default="both",
        help="gallery convention: full (distractors ranked), junk_distractors (MEAN/Sample4Geo), or both (default)",
    )
    parser.add_argument(
        "--split", choices=("test", "val"), default="test", help="evaluation split (default: test)"
    )
    parser.add_argument(
        "--flip-tta", action="store_true", help="add the horizontally flipped image's embedding"
    )
    add_batch_size(parser, 128, help="images per forward pass (default: 128)")
    parser.add_argument("--workers", type=int, default=2, help="image decoding threads (default: 2)")
    parser.add_argument(
        "--device", default=None, help="torch device for --checkpoint (default: cuda if available, else cpu)"
    )
    add_out(parser, default="eval_report.json", help="JSON report path; a .md table is written next to it")
    add_overwrite(parser, help="replace an existing report (once the new one is complete)")
    add_progress(parser)
    parser.set_defaults(handler=run)


def _open_model(args: argparse.Namespace) -> tuple[Any, dict]:
    """(backend, what to record about the model) for --checkpoint (the exported embedder in PyTorch) or --onnx."""
    if args.checkpoint:
        import torch

        from meanloc.training.torch_backend import TorchBackend

        device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
        return TorchBackend(args.checkpoint, device=device), {"checkpoint": args.checkpoint}
    from meanloc.runtime.backends import open_backend

    return open_backend(args.onnx), {"onnx": args.onnx}


def run(args: argparse.Namespace) -> int:
    """Evaluate, write the JSON report and its Markdown table, print the table."""
    from pathlib import Path

    from meanloc.runtime.artifacts import claim_output
    from meanloc.training.data.splits import load_eval_split
    from meanloc.training.evaluate import evaluate_model, format_report_table, write_report

    if args.workers < 1:
        raise MeanlocError("--workers must be >= 1")
    for path in (Path(args.out), Path(args.out).with_suffix(".md")):
        claim_output(path, args.overwrite)
    # List the data before loading the model, so bad paths or names fail in a fraction of a second.
    for direction in DIRECTION_CHOICES[args.direction]:
        load_eval_split(args.data, args.dataset, direction, args.split, args.altitude)
    backend, model_info = _open_model(args)
    with backend:
        report = evaluate_model(
            backend,
            args.data,
            dataset=args.dataset,
            directions=DIRECTION_CHOICES[args.direction],
            protocols=PROTOCOL_CHOICES[args.protocol],
            split=args.split,
            altitude=args.altitude,
            flip_tta=args.flip_tta,
            batch_size=args.batch_size,
            workers=args.workers,
            progress=not args.no_progress,
            model_info=model_info,
        )
    json_path, table_path = write_report(report, args.out)
    print(format_report_table(report), end="")
    print(f"report: {json_path} (table: {table_path})")
    if report.get("skipped_images"):
        print(f"meanloc eval: {report['skipped_images']}", file=sys.stderr)
    return 0
